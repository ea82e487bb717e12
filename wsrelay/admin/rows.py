# -*- test-case-name: tests.test_admin -*-
"""
C{GET /status}: the relay's state and counters as JSON values, and with
several workers one row per worker.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from wsrelay import __version__
from wsrelay.config import redactURL

if TYPE_CHECKING:
    from wsrelay.admin.relay import RelayView, WorkersView
    from wsrelay.fanout import Channel
    from wsrelay.routing import Backend, Route


def _check(check: tuple[float, bool, str] | None) -> dict[str, Any] | None:
    if check is None:
        return None
    time, ok, reason = check
    return {"time": time, "ok": ok, "reason": reason}


def backendStatus(relay: RelayView, route: Route, backend: Backend) -> Any:
    """
    @return: The state and counters of one backend of C{route}, as JSON
        values.
    """
    sent, sentBytes, received, receivedBytes = relay.traffic(route, backend)
    return {
        "name": backend.name,
        "url": redactURL(backend.url),
        "state": backend.state,
        "healthy": backend.healthy,
        "admin": backend.admin,
        "connections": backend.connections,
        "connecting": backend.connecting,
        "maxconn": backend.maxconn,
        "totalConnections": backend.totalConnections,
        "toBackend": {"messages": sent, "bytes": sentBytes},
        "fromBackend": {"messages": received, "bytes": receivedBytes},
        "failures": backend.failures,
        "lastCheck": _check(backend.lastCheck),
        "checks": [_check(c) for c in backend.checks],
    }


def queueStatus(route: Route) -> Any:
    """
    @return: The state and counters of C{route}'s queue, as JSON values:
        as HAProxy's C{qcur}, C{qmax} and C{qtime}, with the handshakes
        queued ever, those that timed out and those that left.
    """
    queue = route.queue
    return {
        "current": len(queue),
        "max": queue.peak,
        "total": queue.total,
        "timeouts": queue.timeouts,
        "abandoned": queue.abandoned,
        "timeout": route.config.queueTimeout,
        "wait": {"count": queue.waits.count, "sum": queue.waits.sum},
    }


def channelStatus(relay: RelayView, channel: Channel) -> Any:
    """
    @return: The state and counters of one fan-out channel, as JSON values,
        with its source's name and own status (L{None} for a source
        without L{wsrelay.interfaces.ISourceStatus}).
    """
    source = relay.sourceStatus(channel)
    return {
        "key": channel.key,
        "source": relay.sourceName(channel),
        "sourceStatus": None if source is None else dict(source),
        "state": channel.state,
        "backend": None if channel.backend is None else channel.backend.name,
        "clients": len(channel.members),
        # With resume, channel.replay is the resume window, which keeps
        # more than a new client gets.
        "replay": min(len(channel.replay), channel.routeConfig.replay),
        "messagesIn": channel.messagesIn,
        "deliveries": channel.deliveries,
        "slowDrops": channel.slowDrops,
        "slowCloses": channel.slowCloses,
        "clientDrops": channel.clientDrops,
        "connects": channel.connects,
    }


def _routes(relay: RelayView) -> list[tuple[Route, bool, list[Channel]]]:
    """
    @return: The routes in force, then those a reload removed whose
        channels still serve clients; each with whether it was removed and
        with its channels, by key.
    """
    channels: dict[str, list[Channel]] = {}
    removed: dict[str, Route] = {}
    routes = relay.routes()
    current = {route.name for route in routes}
    for (name, _), channel in relay.channels():
        channels.setdefault(name, []).append(channel)
        if name not in current:
            removed.setdefault(name, channel.route)
    return [
        *((r, False, channels.get(r.name, [])) for r in routes),
        *((r, True, channels[r.name]) for r in removed.values()),
    ]


def status(relay: RelayView) -> Any:
    """
    @return: What C{GET /status} answers, as JSON values: the relay's
        version, clock (C{time}) and uptime, its listeners, and the state
        and counters of every route, backend and fan-out channel.
    """
    now = relay.now()
    latency = relay.handshakeLatency()
    return {
        "version": __version__,
        "worker": relay.worker(),
        "pid": os.getpid(),
        "time": now,
        "uptime": now - relay.startedAt(),
        "listeners": [
            {"description": description, "port": port}
            for description, port in relay.listeners()
        ],
        "clients": relay.clients(),
        "handshakes": {"count": latency.count, "sum": latency.sum},
        "routes": [
            {
                "name": route.name,
                "removed": removed,
                "mode": route.config.mode,
                "path": route.config.path,
                "host": route.config.host,
                "balancer": route.config.balancer,
                "health": route.config.health,
                "queue": queueStatus(route),
                "backends": [backendStatus(relay, route, b) for b in route.backends],
                "channels": [channelStatus(relay, c) for c in channels],
            }
            for route, removed, channels in _routes(relay)
        ],
    }


def workerRows(
    workers: WorkersView, own: dict[str, Any], answers: Sequence[tuple[int, Any]]
) -> list[dict[str, Any]]:
    """
    @param own: Worker 0's status.
    @param answers: Each other worker's number and status, or the failure
        it gave.
    @return: One row per worker for C{/status}: its number, process id,
        client connections and handshakes, or why it did not answer.
    """
    rows = [_row(0, os.getpid(), own)]
    for index, answer in answers:
        pid = workers.pid(index)
        if isinstance(answer, Failure):
            rows.append(
                {"worker": index, "pid": pid, "error": answer.getErrorMessage()}
            )
        else:
            rows.append(_row(index, pid, answer))
        rows[-1]["restarts"] = workers.restarts(index)
    return rows


def _row(index: int, pid: int | None, status: dict[str, Any]) -> dict[str, Any]:
    return {
        "worker": index,
        "pid": pid,
        "clients": status["clients"],
        "handshakes": status["handshakes"]["count"],
        "uptime": status["uptime"],
    }
