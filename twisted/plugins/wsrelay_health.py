"""
wsrelay's built-in health checkers, registered as any third-party checker
is.
"""

from wsrelay.health import http, tcp, websocket

__all__ = ["http", "tcp", "websocket"]
