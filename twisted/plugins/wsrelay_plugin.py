"""
The C{twistd wsrelay} subcommand.

This dropin holds one lazy L{ServiceMaker} and nothing else: C{wsrelay.tap}
is imported only when the subcommand runs, so listing plugins stays cheap
and a broken relay module cannot break C{twistd --help}.
"""

from twisted.application.service import ServiceMaker

wsrelay = ServiceMaker(
    "wsrelay",
    "wsrelay.tap",
    "A WebSocket reverse proxy and fan-out relay.",
    "wsrelay",
)
