"""
The relay as users run it: the C{twistd wsrelay} command line.
"""

from __future__ import annotations

import os
import sys

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def twistd(*args: str, jsonLogs: bool = False) -> list[str]:
    """
    @param jsonLogs: Whether to log JSON lines (C{wsrelay.logs.jsonStdout}).
    @return: The command line of C{twistd wsrelay} in the foreground.
    """
    logger = ["--logger=wsrelay.logs.jsonStdout"] if jsonLogs else []
    return [TWISTD, "--pidfile=", "-n", *logger, "wsrelay", *args]
