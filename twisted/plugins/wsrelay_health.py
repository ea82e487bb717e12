"""
wsrelay's built-in health checkers, registered as any third-party checker
is: lazily, each imported from L{wsrelay.health.checkers} when a route chooses it.
"""

from wsrelay.dropins import HealthCheckerPlugin

tcp = HealthCheckerPlugin(
    "tcp", "wsrelay.health.checkers.TCPChecker", "a TCP connection opens"
)
websocket = HealthCheckerPlugin(
    "websocket",
    "wsrelay.health.checkers.WebSocketChecker",
    "a WebSocket handshake on health_path completes and closes cleanly",
    ("health_path",),
)
http = HealthCheckerPlugin(
    "http",
    "wsrelay.health.checkers.HTTPChecker",
    "GET health_path answers with a status in health_status",
    ("health_path", "health_status"),
)
