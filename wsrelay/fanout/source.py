# -*- test-case-name: tests.test_fanout_units -*-
"""
A fan-out channel's source: how its bytes are read (L{SourceReader}, the
source leg's data path) and how the channel keeps connecting to it (a
L{twisted.application.internet.ClientService} whose endpoint,
L{SourceEndpoint}, asks the relay for a source each time, waiting between
attempts as L{sourceBackoff} says).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from zope.interface import implementer

if TYPE_CHECKING:
    from wsrelay.upstream import UpstreamProtocol


class SourceChannel(Protocol):
    """
    What of a fan-out channel (L{wsrelay.fanout.channel.Channel}) its source uses.
    """

    #: The channel's members, each with C{send(data, count)}.
    members: dict[Any, None]
    #: Messages written or queued to a client.
    deliveries: int
    #: The framed messages of the read being parsed, or L{None}.
    batch: list[bytes] | None

    @property
    def name(self) -> str:
        """
        The channel's name, for logs.
        """

    def connectSource(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Open a source: one attempt of the channel's L{ClientService}.
        """


def sourceBackoff(
    base: float, cap: float, rng: random.Random
) -> Callable[[int], float]:
    """
    The retry policy of a channel's L{ClientService}: the wait before the
    C{attempt}-th attempt in a row (1: the first after the source was lost
    or after a connected one) lies between half and all of C{base * 2**(attempt
    - 1)}, capped at C{cap} (C{backoff_base}, C{backoff_cap}).
    """
    ceiling = backoffPolicy(initialDelay=base, maxDelay=cap, factor=2.0, jitter=_none)

    def policy(attempt: int) -> float:
        top = ceiling(attempt - 1)
        return top / 2 + rng.uniform(0, top / 2)

    return policy


def _none() -> float:
    """
    No jitter from L{backoffPolicy}: L{sourceBackoff} adds its own, in
    proportion.
    """
    return 0.0


@implementer(IStreamClientEndpoint)
class SourceEndpoint:
    """
    The endpoint of a channel's L{ClientService}: each connection attempt
    asks the relay for a source (L{wsrelay.fanout.channel.Channel.connectSource}).
    """

    def __init__(self, channel: SourceChannel) -> None:
        self._channel = channel

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Open a source.
        """
        return self._channel.connectSource(protocolFactory)

    def __repr__(self) -> str:
        """
        How the service's log lines name it.
        """
        return f"the source of channel {self._channel.name}"


class SourceTransport:
    """
    What the L{ClientService} sees of a source's connection: it only ever
    closes it (when the service stops, after the channel closed the
    upstream with its own code).
    """

    def __init__(self, leg: UpstreamProtocol) -> None:
        self._leg = leg

    def loseConnection(self) -> None:
        """
        Close the upstream, unless it is closing already.
        """
        self._leg.closeWith(1001, b"relay shutting down")


class SourceReader:
    """
    The data path of a channel's source leg (L{RelayLeg.dataPath}):
    Autobahn parses each read from the source (L{RelayLeg.parse}), its
    complete messages reach L{wsrelay.fanout.channel.Channel.forwardFrame}
    (the leg's C{target}) and are framed into the channel's batch, and the
    batch goes to each member in one write.
    """

    def __init__(self, channel: SourceChannel, leg: UpstreamProtocol) -> None:
        self.channel = channel
        self.leg = leg

    def dataReceived(self, data: bytes) -> None:
        """
        Parse one read from the source, then write its messages to every
        member at once.
        """
        channel = self.channel
        batch: list[bytes] = []
        channel.batch = batch
        try:
            self.leg.parse(data)
        finally:
            channel.batch = None
        if not batch:
            return
        count = len(batch)
        chunk = batch[0] if count == 1 else b"".join(batch)
        members = channel.members
        channel.deliveries += count * len(members)
        for member in members:
            member.send(chunk, count)
