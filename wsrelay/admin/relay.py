# -*- test-case-name: tests.test_admin -*-
"""
The relay as the admin listener sees it: everything the admin package
reads from the relay or asks of it goes through L{RelayView}, so that it
is the one place to change when the relay's parts move.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wsrelay.interfaces import ISourceStatus

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from wsrelay.fanout import Channel
    from wsrelay.operations import RelayStatus
    from wsrelay.routing import Backend, Route
    from wsrelay.stats import Histogram
    from wsrelay.workers import WorkerPool


class WorkersView:
    """
    The other worker processes, as the admin listener of worker 0 sees
    them.
    """

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool

    @property
    def count(self) -> int:
        """
        How many workers there are, worker 0 included.
        """
        return self._pool.count

    def statuses(self) -> Deferred[list[tuple[int, Any]]]:
        """
        @return: A L{Deferred} that fires with each other worker's number
            and status, or the failure it gave.
        """
        return self._pool.status()

    def metricsPages(self) -> Deferred[list[tuple[int, Any]]]:
        """
        @return: A L{Deferred} that fires with each other worker's number
            and metrics page, or the failure it gave.
        """
        return self._pool.metrics()

    def statusOf(self, index: int) -> Deferred[Any] | None:
        """
        @return: A L{Deferred} that fires with worker C{index}'s status, or
            L{None} when that worker is not running.
        """
        worker = self._pool.workers.get(index)
        return None if worker is None else worker.status()

    def pid(self, index: int) -> int | None:
        """
        @return: Worker C{index}'s process id, or L{None} when it is not
            running.
        """
        worker = self._pool.workers.get(index)
        return None if worker is None else worker.pid

    def restarts(self, index: int) -> int:
        """
        @return: How many times worker C{index} was restarted.
        """
        return self._pool.restarted.get(index, 0)


class RelayView:
    """
    What the admin listener reads from a relay and asks of it.
    """

    log = Logger()

    def __init__(self, relay: RelayStatus) -> None:
        self._relay = relay

    # What /status and /metrics read.

    def now(self) -> float:
        """
        @return: The relay's clock.
        """
        seconds: float = self._relay.clock.seconds()
        return seconds

    def clock(self) -> IReactorTime:
        """
        @return: The relay's clock, for timers that read it.
        """
        return self._relay.clock

    def startedAt(self) -> float:
        """
        @return: When the relay started, by its clock.
        """
        startedAt: float = self._relay.startedAt
        return startedAt

    def worker(self) -> int:
        """
        @return: This worker's number (0 without workers).
        """
        return self._relay.worker

    def listeners(self) -> list[tuple[str, int | None]]:
        """
        @return: Each client listener's endpoint description and port, or
            L{None} while it does not listen (or not on a port).
        """
        return [
            (
                listener.description,
                None
                if listener.port is None
                else getattr(listener.port.getHost(), "port", None),
            )
            for listener in self._relay.listeners
        ]

    def clients(self) -> int:
        """
        @return: How many client connections are open.
        """
        return len(self._relay.sessions)

    def handshakeLatency(self) -> Histogram:
        """
        @return: The latency of the clients' handshakes.
        """
        return self._relay.handshakeLatency

    def refused(self) -> Mapping[str, int]:
        """
        @return: How many clients were refused a 101 with a status, by
            route name (C{""} for requests no route matched).
        """
        return self._relay.refused

    def routes(self) -> Sequence[Route]:
        """
        @return: The routes in force.
        """
        return self._relay.routes.routes

    def route(self, name: str) -> Route | None:
        """
        @return: The route in force named C{name}, if any.
        """
        return self._relay.routes.byName(name)

    def channels(self) -> list[tuple[tuple[str, str], Channel]]:
        """
        @return: The open fan-out channels by route name and key, in that
            order (a route a reload removed may still have some).
        """
        return sorted(self._relay.channels.items(), key=lambda i: i[0])

    def sourceName(self, channel: Channel) -> str:
        """
        @return: The name of the source plugin feeding C{channel}
            (C{source =} of its route).
        """
        # Only fan-out routes have channels, and a fan-out route a source.
        source: str = getattr(channel.route.config, "source", "websocket")
        return source

    def sourceStatus(
        self, channel: Channel
    ) -> Mapping[str, int | float | str | None] | None:
        """
        @return: The counters and gauges of C{channel}'s source, when it
            provides L{ISourceStatus}; else, or when its C{status()}
            raised (logged), L{None}.
        """
        provider = ISourceStatus(channel.source, None)
        if provider is None:
            return None
        try:
            values: Mapping[str, int | float | str | None] = provider.status()
        except Exception:
            self.log.failure(
                "channel {channel}: the source's status() failed",
                channel=channel.name,
            )
            return None
        return values

    def traffic(self, route: Route, backend: Backend) -> tuple[int, int, int, int]:
        """
        @return: The messages and bytes relayed to C{backend} of C{route},
            then from it.
        """
        return self._relay.traffic(route, backend)

    def workers(self) -> WorkersView | None:
        """
        @return: The other workers, or L{None} without any (or in a worker
            other than 0).
        """
        pool = self._relay.workerPool
        return None if pool is None else WorkersView(pool)

    # The admin listener's own settings.

    def adminHosts(self) -> Sequence[str]:
        """
        @return: The names of C{admin_hosts}, lower case.
        """
        return self._relay.config.adminHosts

    def adminToken(self) -> str | None:
        """
        @return: The token of C{admin_token_file} as it reads now, or
            L{None} when actions are off.
        """
        return self._relay.operations.adminToken()

    def configPath(self) -> str:
        """
        @return: The configuration file's path.
        """
        return self._relay.config.path

    # The operator's actions.

    def setBackendState(self, route: str, backend: str, action: str) -> Backend:
        """
        Drain, enable or disable C{backend} of C{route}.

        @return: The backend.
        @raise KeyError: For an unknown route or backend, naming it.
        """
        return self._relay.operations.setBackendState(route, backend, action)

    def reload(self) -> Deferred[None]:
        """
        Reload the configuration file, as SIGHUP does.

        @return: A L{Deferred} that fires when the new routes are in force,
            or fails with why not.
        """
        return self._relay.operations.reload()
