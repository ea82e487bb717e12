# -*- test-case-name: tests.test_operations -*-
"""
Log observers for C{twistd --logger}.

C{twistd --logger=wsrelay.logs.jsonStdout wsrelay ...} writes every log
event as one JSON object per line (Twisted's own format, see
L{twisted.logger.jsonFileLogObserver}), with the events' structured
fields (an access event has C{client}, C{route}, C{backend}, C{duration},
counters, C{closeCode} and C{closedBy}).
"""

from __future__ import annotations

import sys

from twisted.logger import FileLogObserver, jsonFileLogObserver


def jsonStdout() -> FileLogObserver:
    """
    @return: An observer writing JSON lines to standard output.
    """
    return jsonFileLogObserver(sys.stdout)
