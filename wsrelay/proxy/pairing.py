# -*- test-case-name: tests.test_proxy,tests.test_passthrough -*-
"""
The data path of a proxied connection once the client has its 101: the
two legs paired on the message path (each data frame Autobahn parses goes
to the other leg, and each side pauses the other when it cannot keep up),
or the passthrough pipe (L{wsrelay.proxy.pipe.Pipe}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from wsrelay.proxy.pipe import Pipe
from wsrelay.roles import PipeOwner
from wsrelay.ws._autobahn import NONE_IN_USE, compact
from wsrelay.ws.accept import PlainAccept
from wsrelay.ws.legclosing import OPEN
from wsrelay.ws.plainleg import PlainUpstream

if TYPE_CHECKING:
    from wsrelay.ws.frontend import FrontendProtocol
    from wsrelay.ws.upstream import UpstreamProtocol


class PipeHolder(PipeOwner, Protocol):
    """
    The proxy session that holds a passthrough pipe
    (L{wsrelay.proxy.session.ProxySession}).
    """

    pipe: Pipe | None


def pairLegs(
    frontend: FrontendProtocol,
    upstream: UpstreamProtocol,
    direct: bool,
    compacting: bool = True,
) -> None:
    """
    Let each side pause the other when it cannot keep up, and send the
    client's frames to C{upstream} when C{direct} (else a failover's
    buffer keeps getting them).

    @param compacting: Whether the legs are compacted now (else by
        L{startPipe}, which comes next).
    """
    f, up = frontend, upstream
    f.forgetHandshake(compacting)
    up.forgetHandshake(compacting)
    if direct:
        f.target = up
    # Both legs are connected once paired.  Each leg is the producer of
    # what the other's transport writes (LegProducer).
    f.transport.registerProducer(up, True)
    up.transport.registerProducer(f, True)


def compactLegs(*legs: Any) -> None:
    """
    Give each leg that is not L{None} a dictionary sized for what it holds
    (L{compact}), but a client's leg that the relay answered itself
    (L{PlainAccept}, which leaves Autobahn's C{websocket_extensions_in_use}
    at its class default): its dictionary, which then holds few attributes
    at their class defaults, is still the one whose keys Python 3.11 shares
    between the instances of its class (its values only, some 300 bytes),
    which a new dictionary would make larger (464 bytes) and slower to read
    and write.  Its one attribute at its default, the unparsed bytes the
    pipe took, is deleted.  A plain upstream leg (L{PlainUpstream}) stores
    nothing at its class default once open, and has no dictionary to size:
    its attributes are kept in the values Python 3.11 makes with the object
    (L{PlainUpstream.forgetHandshake}), which a dictionary made now would
    only make larger and slower.
    """
    for leg in legs:
        if leg is None:
            continue
        if (
            isinstance(leg, PlainAccept)
            and leg.websocket_extensions_in_use is NONE_IN_USE
        ):
            # (Not through vars(leg): asked for, Python 3.11 makes the
            # dictionary it keeps the values in without, which slows every
            # later attribute access of the leg.)
            if leg.data == b"":
                try:
                    del leg.data
                except AttributeError:
                    # Not set on the leg: its class default.
                    pass
        elif not isinstance(leg, PlainUpstream):
            compact(leg)


def startPipe(
    holder: PipeHolder, frontend: FrontendProtocol, upstream: UpstreamProtocol
) -> None:
    """
    Switch to the passthrough data path: from now on bytes are forwarded
    as they come (see L{wsrelay.proxy.pipe}), starting with those each leg
    holds unparsed; C{holder.pipe} is the pipe before the first byte goes
    through it.  A leg in the middle of a frame, or a close under way, keeps
    the message path (neither happens as the client gets its 101).  Either
    way, both legs are compacted (L{compact}) once it is done.
    """
    f, up = frontend, upstream
    if (
        f.state != OPEN
        or up.state != OPEN
        or f.current_frame is not None
        or up.current_frame is not None
        or f.closeRelayed
        or up.closeRelayed
    ):
        if isinstance(up, PlainUpstream):
            # A plain leg has no message path to fall back on (neither
            # condition holds as the client gets its 101): close both.
            up.closeWith(1011, b"relay error")
            f.closeWith(1011, b"relay error")
        compactLegs(f, up)
        return
    pipe = holder.pipe = Pipe(holder, f, up)
    # A pipe never opens another upstream (a passthrough route has no
    # failover = reconnect): the request's parsed head, a kilobyte per
    # held connection, is no longer needed (it reads as the class's None).
    # (Deleted, not popped from vars(f): see compactLegs.)
    if f.head is not None:
        del f.head
    # (A direction starts outside a message: stored only if not.)
    if f.receivingFragment:
        pipe.fromClient.inMessage = True
    if up.receivingFragment:
        pipe.fromBackend.inMessage = True
    leftovers = (f.data, up.data)
    # What compactLegs does for a client's leg the relay answered itself
    # and a plain upstream leg, now and inline (the common case): the
    # client's leg's bytes, taken by the pipe, read as its class's b"";
    # nothing to do for the plain leg.
    lean = (
        isinstance(f, PlainAccept)
        and f.websocket_extensions_in_use is NONE_IN_USE
        and isinstance(up, PlainUpstream)
    )
    if lean:
        try:
            del f.data
        except AttributeError:
            # Not set on the leg: its class default.
            pass
    else:
        f.data = b""
    if leftovers[1]:
        # (A plain leg's reads as its class's b"" once deleted.)
        del up.data
    pipe.start()
    if not lean:
        # What the pipe dropped or set back to its class default, the
        # legs' dictionaries drop, sized again for what is left: at most
        # 21 entries (some 470 bytes, against 832 as paired;
        # tests/test_plainaccept.py).
        compactLegs(f, up)
    if leftovers[0]:
        pipe.fromClient.dataReceived(leftovers[0])
    if leftovers[1]:
        pipe.fromBackend.dataReceived(leftovers[1])
