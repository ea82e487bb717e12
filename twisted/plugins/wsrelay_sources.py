"""
wsrelay's built-in fan-out sources, registered as any third-party source
is: lazily, each imported when a route chooses it (C{source = NAME}).
"""

from wsrelay.dropins import SourcePlugin
from wsrelay.redis import OPTIONS

websocket = SourcePlugin(
    "websocket",
    "wsrelay.fanout.context.websocketSource",
    "the route's backends over WebSocket, with its balancer, health checks and backoff",
)
redis = SourcePlugin(
    "redis",
    "wsrelay.redis.source.RedisSource",
    "a Redis stream, fed by anyone or by one relay of the cluster (ingest)",
    OPTIONS,
)
