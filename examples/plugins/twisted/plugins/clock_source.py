"""
An example fan-out source: C{source = clock} sends every client of the
route the time (ISO 8601, UTC) every C{clock_interval} seconds, without any
backend. See docs/plugins.md, "Writing a source".
"""

from collections.abc import Mapping
from datetime import UTC, datetime

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from wsrelay.dropins import SourcePlugin
from wsrelay.interfaces import ISource, ISourceChannel, ISourceContext


@implementer(ISource)
class ClockSource:
    """Built for one channel; ticks while started."""

    def __init__(
        self,
        channel: ISourceChannel,
        options: Mapping[str, str],
        context: ISourceContext,
    ):
        try:
            self.interval = float(options.get("clock_interval", "1"))
        except ValueError:
            raise ValueError("clock_interval: expected seconds") from None
        if not 0 < self.interval < 86400:
            raise ValueError(
                "clock_interval: expected more than 0 seconds, less than a day"
            )
        self.channel = channel
        self.reactor = context.reactor  # never the global reactor
        self.loop: LoopingCall | None = None

    def start(self) -> None:
        """Tick now, and every interval until stopped."""
        self.loop = LoopingCall(self.tick)
        self.loop.clock = self.reactor
        self.loop.start(self.interval)
        self.channel.stateChanged("up")

    def tick(self) -> None:
        """One message, text (opcode 1), with no id of its own."""
        now = datetime.fromtimestamp(self.reactor.seconds(), UTC)
        self.channel.deliver([(1, now.isoformat().encode(), None)])

    def stop(self) -> Deferred[None]:
        """Stop ticking; nothing to wait for."""
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self.loop = None
        self.channel.stateChanged("idle")
        return succeed(None)

    def send(self, opcode: int, payload: bytes) -> bool:
        """A clock takes no messages from clients (counted as dropped)."""
        return False


clock = SourcePlugin(
    "clock", ClockSource, "the time, every clock_interval", ("clock_interval",)
)
