"""
Property-based tests (hypothesis) of the relay's handling of arbitrary
bytes: from a client before the upgrade (as its request) and after it (as
frames), and from a backend before its 101 (as its answer) and after it.

Whatever arrives, the relay must not crash (no exception escapes a
protocol, and no error is logged: each example flushes trial's logged
errors and fails on any), must never send the other side anything
malformed (the other side here is a strict parser: HTTP heads with CRLF
lines, token names and field values without control characters; RFC 6455
frames with a valid opcode, RSV bits 0, masking right for the direction,
control frames of at most 125 bytes with FIN, minimal lengths, no frame
after a close, fragments in sequence, text valid UTF-8, close codes that
may be sent), and another connection through the same relay must work
afterwards.

Most examples run in memory (L{tests.support.memory.Network}: iosim and one
L{Clock}, fast enough for hundreds of examples); L{RealSocketTests} runs a
few fixed inputs through a relay on loopback sockets.

The configuration parser has its own fuzzing in
L{tests.test_config.FuzzTests} (any text parses or raises a one-line
L{ConfigError}); L{ConfigFileTests} adds what it leaves out: arbitrary
file bytes through C{twistd wsrelay}'s own option parser.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import os
import re
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import twisted.plugins
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from tests.support.frames import CLOSE, CLOSE_REPLY, frameBytes, goodRequest, unmask
from tests.support.memory import (
    BACKEND_A,
    RELAY_ADDRESS,
    Network,
    RawClient,
    RecordingBackend,
    relayConfig,
)
from wsrelay.tap import Options, StartRefused

#: Examples per property: enough to find the classic mistakes, few enough
#: that the module stays well under a minute.
FUZZ = settings(max_examples=100, deadline=None, database=None)

#: The limits the fuzzed relays run with, small so that examples reach them.
LIMITS = "max_message_size = 300\nmax_frame_size = 200\n"

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: Opcodes RFC 6455 defines.
OPCODES = frozenset({0, 1, 2, 8, 9, 10})

#: Close codes that may be sent (RFC 6455 7.4 and the IANA registry).
SENDABLE = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS = re.compile(rb"HTTP/1\.1 ([0-9]{3}) ")


# A strict reading of what the relay sends.


class Malformed(AssertionError):
    """
    The relay sent something that is not well-formed.
    """


@dataclass
class Frame:
    """
    One frame, as read by L{parseFrames}.
    """

    fin: bool
    opcode: int
    payload: bytes


def parseFrames(data: bytes, masked: bool, utf8: bool = True) -> list[Frame]:
    """
    Read C{data} as a stream of RFC 6455 frames, strictly.

    @param masked: Whether the frames must be masked (sent to a server) or
        must not be (sent to a client).
    @param utf8: Whether text must be UTF-8 (the passthrough data path
        leaves that to the endpoints).
    @raise Malformed: Naming the first thing wrong.
    """
    frames: list[Frame] = []
    fragmented: int | None = None
    text = codecs.getincrementaldecoder("utf-8")()
    closed = False
    i = 0
    while i < len(data):
        where = f"frame {len(frames)} at byte {i}"
        if closed:
            raise Malformed(f"{where}: a frame after the close frame")
        if len(data) - i < 2:
            raise Malformed(f"{where}: truncated header")
        b0, b1 = data[i], data[i + 1]
        fin, rsv, opcode = bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F
        if rsv:
            raise Malformed(f"{where}: RSV bits {rsv >> 4:03b}")
        if opcode not in OPCODES:
            raise Malformed(f"{where}: opcode {opcode}")
        if bool(b1 & 0x80) != masked:
            raise Malformed(f"{where}: mask bit {b1 >> 7}, expected {int(masked)}")
        n = b1 & 0x7F
        j = i + 2
        if n == 126:
            n = int.from_bytes(data[j : j + 2], "big")
            j += 2
            if n < 126:
                raise Malformed(f"{where}: 16-bit length {n} is not minimal")
        elif n == 127:
            n = int.from_bytes(data[j : j + 8], "big")
            j += 8
            if n < 65536 or n >= 2**63:
                raise Malformed(f"{where}: 64-bit length {n}")
        key = b""
        if masked:
            key = data[j : j + 4]
            j += 4
        if len(data) < j + n:
            raise Malformed(f"{where}: truncated, {len(data) - j} of {n} bytes")
        payload = data[j : j + n]
        if masked:
            payload = unmask(key, payload)
        i = j + n
        if opcode >= 8:
            if not fin or n > 125:
                raise Malformed(f"{where}: control frame, FIN {fin}, {n} bytes")
            if opcode == 8:
                checkClose(payload, where)
                closed = True
        elif opcode == 0:
            if fragmented is None:
                raise Malformed(f"{where}: continuation without a message")
        elif fragmented is not None:
            raise Malformed(f"{where}: new message inside a fragmented one")
        else:
            fragmented = opcode
        if opcode < 8:
            try:
                if fragmented == 1 and utf8:
                    text.decode(payload, final=fin)
            except UnicodeDecodeError as e:
                raise Malformed(f"{where}: text not UTF-8: {e}") from None
            if fin:
                fragmented = None
                text.reset()
        frames.append(Frame(fin, opcode, payload))
    return frames


def hasClose(data: bytes) -> bool:
    """
    @return: Whether C{data}, read as frames, holds a complete close frame
        (however wrong the rest is).
    """
    i = 0
    while len(data) - i >= 2:
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        j = i + 2 + {126: 2, 127: 8}.get(n, 0)
        if len(data) < j:
            return False
        if n == 126:
            n = int.from_bytes(data[i + 2 : j], "big")
        elif n == 127:
            n = int.from_bytes(data[i + 2 : j], "big")
        j += 4 if data[i + 1] & 0x80 else 0
        if len(data) < j + n:
            return False
        if opcode == 8:
            return True
        i = j + n
    return False


def checkClose(payload: bytes, where: str) -> None:
    """
    A close frame's payload: empty, or a code that may be sent and a UTF-8
    reason.

    @raise Malformed: When it is not.
    """
    if not payload:
        return
    if len(payload) == 1:
        raise Malformed(f"{where}: close payload of one byte")
    (code,) = struct.unpack("!H", payload[:2])
    if code not in SENDABLE and not 3000 <= code <= 4999:
        raise Malformed(f"{where}: close code {code}")
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed(f"{where}: close reason not UTF-8") from None


def checkFieldLines(lines: list[bytes], what: str) -> None:
    """
    Header field lines: a token, a colon, a value of visible characters,
    spaces and tabs (RFC 9110, 5.5: no CR, LF, NUL or other controls).

    @raise Malformed: Naming the first bad line.
    """
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise Malformed(f"{what}: bad header line {line[:60]!r}")
        if any((c < 0x20 and c != 0x09) or c == 0x7F for c in value):
            raise Malformed(f"{what}: control character in {line[:60]!r}")


def splitHead(data: bytes, what: str) -> tuple[list[bytes], bytes]:
    """
    Split an HTTP message into its head's lines and the rest.

    @raise Malformed: When the head does not end, or a line holds a bare
        CR or LF.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise Malformed(f"{what}: head without an end: {data[:80]!r}")
    lines = data[:end].split(b"\r\n")
    for line in lines:
        if b"\r" in line or b"\n" in line:
            raise Malformed(f"{what}: bare CR or LF in {line[:60]!r}")
    return lines, data[end + 4 :]


def checkToClient(data: bytes, fields: bool = True, utf8: bool = True) -> list[Frame]:
    """
    What the relay sent a client: nothing, or a complete HTTP response;
    after a 101, frames that are not masked; after another status, exactly
    the body C{Content-Length} announced.

    @param fields: Whether to check the reason phrase and the header
        fields too (see L{checkFieldLines}).
    @param utf8: See L{parseFrames}.
    @return: The frames, if any.
    @raise Malformed: When it is not so.
    """
    if not data:
        return []
    lines, rest = splitHead(data, "response")
    status = _STATUS.match(lines[0])
    if status is None:
        raise Malformed(f"response: status line {lines[0][:60]!r}")
    code = int(status.group(1))
    if not (code == 101 or 200 <= code <= 599):
        raise Malformed(f"response: status {code} ends a handshake")
    if fields:
        if any(c < 0x20 and c != 0x09 or c == 0x7F for c in lines[0]):
            raise Malformed(f"response: control character in {lines[0]!r}")
        checkFieldLines(lines[1:], "response")
    if code == 101:
        return parseFrames(rest, masked=False, utf8=utf8)
    lengths = [
        line.split(b":", 1)[1].strip()
        for line in lines[1:]
        if line.lower().startswith(b"content-length:")
    ]
    if lengths != [str(len(rest)).encode()]:
        raise Malformed(f"response: Content-Length {lengths}, body {len(rest)}")
    return []


def checkToBackend(data: bytes, utf8: bool = True) -> list[Frame]:
    """
    What the relay sent a backend: nothing, or a complete opening handshake
    request (C{GET}, a target of visible ASCII characters) followed by
    masked frames (see L{parseFrames} for C{utf8}).

    @return: The frames.
    @raise Malformed: When it is not so.
    """
    if not data:
        return []
    lines, rest = splitHead(data, "request")
    parts = lines[0].split(b" ")
    if (
        len(parts) != 3
        or parts[0] != b"GET"
        or parts[2] != b"HTTP/1.1"
        or not parts[1].startswith(b"/")
        or any(not 0x21 <= c <= 0x7E for c in parts[1])
    ):
        raise Malformed(f"request: request line {lines[0][:80]!r}")
    checkFieldLines(lines[1:], "request")
    return parseFrames(rest, masked=True, utf8=utf8)


# Building inputs.


def closePayloads() -> st.SearchStrategy[bytes]:
    """
    Close frame payloads: good, bad codes, bad reasons, one byte.
    """
    return st.one_of(
        st.just(b""),
        st.binary(min_size=1, max_size=1),
        st.builds(
            lambda code, reason: struct.pack("!H", code) + reason,
            st.sampled_from([1000, 1001, 1005, 1006, 1014, 1015, 2999, 3000, 4999])
            | st.integers(0, 65535),
            st.text(max_size=20).map(str.encode) | st.binary(max_size=10),
        ),
    )


@st.composite
def frameStreams(draw: st.DrawFn, masked: bool) -> bytes:
    """
    A few frames, most of them close to valid (so that the relay gets past
    the first one), then perhaps some stray bytes.

    @param masked: Whether frames are usually masked (from a client) or
        not (from a backend).
    """
    out = []
    for _ in range(draw(st.integers(0, 6))):
        opcode = draw(st.sampled_from([0, 1, 1, 2, 2, 8, 9, 10, 3, 7, 11, 15]))
        if opcode == 8:
            payload = draw(closePayloads())
        elif opcode == 1:
            payload = draw(
                st.text(max_size=150).map(str.encode) | st.binary(max_size=20)
            )
        else:
            payload = draw(st.binary(max_size=400))
        isMasked = masked if draw(st.integers(0, 9)) else not masked
        mask = draw(st.binary(min_size=4, max_size=4)) if isMasked else None
        out.append(
            frameBytes(
                draw(st.booleans() | st.just(True)),
                draw(st.sampled_from([0, 0, 0, 0, 1, 2, 4, 7])),
                opcode,
                mask,
                payload,
                draw(
                    st.sampled_from(["min", "min", "min", "16", "64", "short", "long"])
                ),
            )
        )
    out.append(draw(st.binary(max_size=12)))
    return b"".join(out)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """
    Cut C{data} at the given offsets (taken modulo its length).
    """
    if not data:
        return []
    points = sorted({c % len(data) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


#: Characters for header names and values: mostly ordinary, with controls,
#: separators and Latin-1 letters (the relay reads heads as Latin-1).
_HEAD_CHARS = st.sampled_from(
    "aZ09-_:;, /\t\r\n\x00\x01\x7f\x85\xa0\xb2\xe9=\"'()<>@?"
) | st.characters(max_codepoint=255)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """
    Requests from a client: valid ones with odd fields added, mutated
    ones, and arbitrary bytes.
    """
    kind = draw(st.sampled_from(["fields", "fields", "mutated", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "fields":
        fields = draw(
            st.lists(
                st.tuples(
                    st.text(_HEAD_CHARS, min_size=1, max_size=12),
                    st.text(_HEAD_CHARS, max_size=20),
                ),
                max_size=3,
            )
        )
        extra = "".join(f"{n}: {v}\r\n" for n, v in fields)
        path = "/chat" + draw(st.text(_HEAD_CHARS, max_size=8).map(_noSpace))
        return goodRequest(path, extra.encode("latin-1"))
    data = bytearray(goodRequest())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        cut = draw(st.integers(0, 8))
        data[at : at + cut] = draw(st.binary(max_size=8))
    return bytes(data)


def _noSpace(text: str) -> str:
    """
    @return: C{text} without spaces (which would end a request target).
    """
    return text.replace(" ", "")


def switching(request: bytes) -> bytes:
    """
    @return: A valid 101 answer to C{request}.
    """
    match = re.search(rb"(?i)sec-websocket-key: *([^\r\n]*)", request)
    key = match.group(1).strip() if match else b""
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


@st.composite
def answers(draw: st.DrawFn) -> Callable[[bytes], bytes]:
    """
    A backend's answer to the relay's request, as a function of it:
    refusals with odd fields, mutated 101s, a 101 then frames, and
    arbitrary bytes.
    """
    kind = draw(st.sampled_from(["refusal", "mutated", "frames", "bytes"]))
    if kind == "bytes":
        junk = draw(st.binary(max_size=200))
        return lambda request: junk
    if kind == "refusal":
        status = draw(
            st.sampled_from(["403", "200", "100", "204", "503", "000", "\xb2\xb3\xb9"])
            | st.text("0123456789", min_size=3, max_size=3)
        )
        reason = draw(st.text(_HEAD_CHARS, max_size=12))
        fields = draw(
            st.lists(
                st.tuples(
                    st.text(_HEAD_CHARS, min_size=1, max_size=12),
                    st.text(_HEAD_CHARS, max_size=20),
                ),
                max_size=3,
            )
        )
        body = draw(st.binary(max_size=40))
        length = draw(st.sampled_from([None, len(body), len(body) + 5, "x", "\xb2"]))
        head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(
            f"{n}: {v}\r\n" for n, v in fields
        )
        if length is not None:
            head += f"Content-Length: {length}\r\n"
        data = head.encode("latin-1") + b"\r\n" + body
        return lambda request: data
    if kind == "frames":
        frames = draw(frameStreams(masked=False))
        return lambda request: switching(request) + frames
    edits = draw(
        st.lists(
            st.tuples(st.integers(0, 200), st.integers(0, 8), st.binary(max_size=8)),
            min_size=1,
            max_size=3,
        )
    )

    def mutated(request: bytes) -> bytes:
        data = bytearray(switching(request))
        for at, cut, junk in edits:
            at %= len(data) + 1
            data[at : at + cut] = junk
        return bytes(data)

    return mutated


# In-memory rigs.


class RawBackend(Protocol):
    """
    A backend that answers the relay's request with what C{answer} makes
    of it, and keeps every byte it receives.

    @ivar received: The bytes received (the request included).
    @ivar lost: Whether the connection is gone.
    """

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self.answer = answer
        self.received = b""
        self.answered = False
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        """
        Keep the bytes; answer once the request head is complete.
        """
        self.received += data
        if not self.answered and b"\r\n\r\n" in self.received:
            self.answered = True
            assert self.transport is not None
            self.transport.write(self.answer(self.received))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Note that the connection is gone.
        """
        self.lost = True


class _Cleanups:
    """
    Stands in for a test case in L{Network}, so that each example undoes
    its own set-up.
    """

    def __init__(self) -> None:
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def addCleanup(self, f: Callable[..., Any], *args: Any) -> None:
        """
        Call C{f} at the end of the example.
        """
        self._calls.append((f, args))

    def run(self) -> None:
        """
        Undo the set-up, last first.
        """
        while self._calls:
            f, args = self._calls.pop()
            f(*args)


def acceptRaw(network: Network, backend: Protocol) -> IOPump:
    """
    Complete the relay's oldest pending backend connection with C{backend};
    attempts the relay gave up on meanwhile are forgotten.
    """
    reactor = network.reactor
    while reactor.connectors[0].stoppedConnecting:
        reactor.tcpClients.pop(0)
        reactor.connectors.pop(0)
    host, port, factory, _, _ = reactor.tcpClients.pop(0)
    reactor.connectors.pop(0)
    address = IPv4Address("TCP", host, port)
    return network.pair(backend, factory.buildProtocol(address), address, RELAY_ADDRESS)


def rawClient(network: Network) -> tuple[RawClient, FakeTransport]:
    """
    A raw client of the relay.
    """
    return network.connectRaw()


def fanoutConfig() -> str:
    """
    A fan-out route, C{/feed}, whose clients' messages go to the source.
    """
    return (
        f"[relay]\nlisten = tcp:0\nping_interval = 0\n{LIMITS}"
        "[route:feed]\npath = /feed\nmode = fanout\nclient_messages = forward\n"
        "backoff_base = 0.5\nbackoff_cap = 1\n"
        f"backends = ws://{BACKEND_A[0]}:{BACKEND_A[1]}/\n"
    )


class FuzzTestCase(SynchronousTestCase):
    """
    Runs each example on a fresh in-memory relay and checks what every
    example must leave behind.
    """

    def network(self, text: str) -> tuple[Network, _Cleanups]:
        """
        A relay in memory, undone by the returned cleanups.
        """
        cleanups = _Cleanups()
        return Network(cleanups, text), cleanups  # type: ignore[arg-type]

    def settle(self, network: Network) -> None:
        """
        Let every timer of the relay run (handshake, connect and close
        timeouts), and fail on any error it logged.
        """
        network.advance(30, step=2)
        self.assertEqual(self.flushLoggedErrors(), [])

    def assertProxyWorks(self, network: Network) -> None:
        """
        A new client through the same relay exchanges a message each way
        with its backend, and nothing was left connecting.
        """
        self.assertEqual(network.pendingConnects(), [])
        client = network.connectClient()
        network.flush()
        backend, _ = network.acceptUpstream()
        network.flush()
        self.assertTrue(client.opened, client.raw)
        client.sendMessage(b"up")
        network.flush()
        assert isinstance(backend, RecordingBackend)
        backend.sendMessage(b"down")
        network.flush()
        self.assertEqual(backend.messages, [(b"up", False)])
        self.assertEqual(client.messages, [(b"down", False)])

    def assertFanoutWorks(self, network: Network, source: RawBackend) -> None:
        """
        Once C{source} is gone, the channel connects to a new source, and
        a new client of the route gets what that source sends.
        """
        if not source.lost:
            assert source.transport is not None
            source.transport.loseConnection()
            network.flush()
        fresh, transport = rawClient(network)
        transport.write(goodRequest("/feed"))
        network.flush()
        for _ in range(40):
            if network.pendingConnects():
                break
            network.advance(0.25)
        source = RawBackend(switching)
        acceptRaw(network, source)
        network.flush()
        assert source.transport is not None
        source.transport.write(frameBytes(True, 0, 1, None, b"alive", "min"))
        network.flush()
        frames = checkToClient(fresh.received)
        self.assertIn(b"alive", [f.payload for f in frames])
        self.assertEqual(self.flushLoggedErrors(), [])

    def opened(
        self, network: Network
    ) -> tuple[RawClient, FakeTransport, RawBackend, IOPump]:
        """
        A raw client whose handshake went through to a raw backend.

        @return: The client, its transport, the backend and its pump.
        """
        c, transport = rawClient(network)
        transport.write(goodRequest())
        network.flush()
        backend = RawBackend(switching)
        pump = acceptRaw(network, backend)
        network.flush()
        self.assertTrue(c.received.startswith(b"HTTP/1.1 101 "), c.received)
        return c, transport, backend, pump


class ClientBytesTests(FuzzTestCase):
    """
    Arbitrary bytes from a client.
    """

    def sendRequest(
        self, data: bytes, cuts: list[int]
    ) -> tuple[Network, _Cleanups, RawClient, RawBackend | None]:
        """
        Send C{data} as a client's request, in pieces; if it gets through
        to a backend, that backend answers 101.  Let every timer run.

        @return: The relay, its cleanups, the client and the backend.
        """
        network, cleanups = self.network(relayConfig(LIMITS))
        c, transport = rawClient(network)
        for piece in chunked(data, cuts):
            transport.write(piece)
            network.flush()
        backend = None
        if network.pendingConnects():
            backend = RawBackend(switching)
            acceptRaw(network, backend)
            network.flush()
        self.settle(network)
        return network, cleanups, c, backend

    @FUZZ
    @given(requests(), st.lists(st.integers(0, 400), max_size=4))
    @example(b"GET /chat HTTP/1.1\r\n\r\n", [])
    def test_request(self, data: bytes, cuts: list[int]) -> None:
        """
        Any bytes as a client's request, in pieces: the relay answers with a
        well-formed HTTP response (then well-formed frames after a 101) or
        closes, logs no error, and still serves another client.
        """
        network, cleanups, c, _ = self.sendRequest(data, cuts)
        try:
            checkToClient(c.received)
            self.assertProxyWorks(network)
        finally:
            cleanups.run()

    @FUZZ
    @given(requests(), st.lists(st.integers(0, 400), max_size=4))
    @example(goodRequest(extra=b"X-A: 1\nX-Forwarded-For: 6.6.6.6\r\n"), [])
    @example(goodRequest(extra=b"X-A: \x00\x01\r\n"), [])
    @example(goodRequest("/chat?\x80"), [])
    def test_requestForwarded(self, data: bytes, cuts: list[int]) -> None:
        """
        Any bytes as a client's request: when the request gets through to a
        backend, the head the backend gets is well-formed HTTP.  A field
        value holding a bare LF, say, must not reach the backend as a line
        break: with it a client could add a field of its own choosing after
        the relay filtered the fields (C{X-Forwarded-For}, to pass for
        another address).
        """
        network, cleanups, _, backend = self.sendRequest(data, cuts)
        try:
            if backend is not None:
                checkToBackend(backend.received)
        finally:
            cleanups.run()

    @FUZZ
    @given(frameStreams(masked=True), st.lists(st.integers(0, 2000), max_size=4))
    @example(frameBytes(True, 0, 1, b"abcd", b"\xff", "min"), [])
    @example(frameBytes(True, 0, 9, b"abcd", b"x" * 126, "min"), [])
    def test_frames(self, data: bytes, cuts: list[int]) -> None:
        """
        Any bytes from an open client, in pieces: the backend gets only
        well-formed masked frames, the client only well-formed unmasked
        ones, no error is logged, and another client is served.
        """
        network, cleanups = self.network(relayConfig(LIMITS))
        try:
            c, transport, backend, _ = self.opened(network)
            for piece in chunked(data, cuts):
                transport.write(piece)
                network.flush()
            self.settle(network)
            checkToClient(c.received)
            checkToBackend(backend.received)
            self.assertProxyWorks(network)
        finally:
            cleanups.run()

    @FUZZ
    @given(frameStreams(masked=True), st.lists(st.integers(0, 2000), max_size=4))
    def test_fanoutFrames(self, data: bytes, cuts: list[int]) -> None:
        """
        Any bytes from a client of a fan-out route whose messages go to the
        source: the source gets only well-formed masked frames, the
        clients only well-formed unmasked ones, no error is logged, and a
        new client gets what the source sends next.
        """
        network, cleanups = self.network(fanoutConfig())
        try:
            c, transport = rawClient(network)
            transport.write(goodRequest("/feed"))
            network.flush()
            source = RawBackend(switching)
            acceptRaw(network, source)
            network.flush()
            self.assertTrue(c.received.startswith(b"HTTP/1.1 101 "), c.received)
            for piece in chunked(data, cuts):
                transport.write(piece)
                network.flush()
            self.settle(network)
            checkToClient(c.received)
            checkToBackend(source.received)
            self.assertFanoutWorks(network, source)
        finally:
            cleanups.run()


class BackendBytesTests(FuzzTestCase):
    """
    Arbitrary bytes from a backend.
    """

    def answerWith(
        self, answer: Callable[[bytes], bytes], cuts: list[int]
    ) -> tuple[Network, _Cleanups, RawClient, RawBackend]:
        """
        A client's request reaches a backend that answers what C{answer}
        makes of it, in pieces.  Let every timer run.

        @return: The relay, its cleanups, the client and the backend.
        """
        network, cleanups = self.network(relayConfig(LIMITS))
        c, transport = rawClient(network)
        transport.write(goodRequest())
        network.flush()
        pieces: list[bytes] = []

        def inPieces(request: bytes) -> bytes:
            pieces.extend(chunked(answer(request), cuts))
            return pieces.pop(0) if pieces else b""

        backend = RawBackend(inPieces)
        pump = acceptRaw(network, backend)
        network.flush()
        while pieces:
            pump.serverIO.write(pieces.pop(0))
            network.flush()
        self.settle(network)
        return network, cleanups, c, backend

    @FUZZ
    @given(answers(), st.lists(st.integers(0, 400), max_size=4))
    @example(lambda request: b"HTTP/1.1 \xb2\xb3\xb9 Odd\r\n\r\n", [])
    @example(lambda request: b"HTTP/1.1 403 No\r\nContent-Length: \xb2\r\n\r\n", [])
    @example(lambda request: b"HTTP/1.1 000 Zero\r\n\r\n", [])
    @example(lambda request: b"HTTP/1.1 100 Continue\r\n\r\n", [])
    @example(lambda request: switching(request)[:-2] + b"X: \xe9\r\n\r\n", [])
    def test_answer(self, answer: Callable[[bytes], bytes], cuts: list[int]) -> None:
        """
        Any bytes as a backend's answer to the handshake, in pieces: the
        client gets a well-formed HTTP response (the refusal relayed, 502 or
        504: a final status, the body C{Content-Length} says) or, after a
        valid 101, well-formed frames; the backend gets well-formed frames
        after its 101; no error is logged; another client is served.
        """
        network, cleanups, c, backend = self.answerWith(answer, cuts)
        try:
            checkToClient(c.received, fields=False)
            checkToBackend(backend.received)
            self.assertProxyWorks(network)
        finally:
            cleanups.run()

    @FUZZ
    @given(answers(), st.lists(st.integers(0, 400), max_size=4))
    @example(
        lambda request: (
            b"HTTP/1.1 403 No\r\nX: a\nSet-Cookie: b\r\nContent-Length: 0\r\n\r\n"
        ),
        [],
    )
    @example(lambda request: b"HTTP/1.1 403 \x08\r\nContent-Length: 0\r\n\r\n", [])
    def test_answerRelayed(
        self, answer: Callable[[bytes], bytes], cuts: list[int]
    ) -> None:
        """
        Any bytes as a backend's answer: when the relay passes a refusal on
        to the client, its reason phrase and header fields are well-formed
        (no bare CR or LF, no control characters, token names), as the
        client's own parser expects.
        """
        network, cleanups, c, _ = self.answerWith(answer, cuts)
        try:
            checkToClient(c.received)
        finally:
            cleanups.run()

    @FUZZ
    @given(frameStreams(masked=False), st.lists(st.integers(0, 2000), max_size=4))
    @example(frameBytes(True, 0, 8, None, struct.pack("!H", 1005), "min"), [])
    @example(frameBytes(False, 0, 1, None, b"\xe2\x82", "min"), [])
    def test_frames(self, data: bytes, cuts: list[int]) -> None:
        """
        Any bytes from an open backend, in pieces: the client gets only
        well-formed unmasked frames, the backend only well-formed masked
        ones, no error is logged, and another client is served.
        """
        network, cleanups = self.network(relayConfig(LIMITS))
        try:
            c, transport, backend, pump = self.opened(network)
            for piece in chunked(data, cuts):
                pump.serverIO.write(piece)
                network.flush()
            self.settle(network)
            checkToClient(c.received)
            checkToBackend(backend.received)
            self.assertProxyWorks(network)
        finally:
            cleanups.run()

    @FUZZ
    @given(frameStreams(masked=False), st.lists(st.integers(0, 2000), max_size=4))
    def test_fanoutFrames(self, data: bytes, cuts: list[int]) -> None:
        """
        Any bytes from a fan-out source, in pieces, with two clients: both
        get only well-formed unmasked frames (the same ones), the source
        only well-formed masked ones, no error is logged, and a new client
        gets what the (next) source sends.
        """
        network, cleanups = self.network(fanoutConfig())
        try:
            clients = [rawClient(network), rawClient(network)]
            for _, transport in clients:
                transport.write(goodRequest("/feed"))
            network.flush()
            source = RawBackend(switching)
            pump = acceptRaw(network, source)
            network.flush()
            for piece in chunked(data, cuts):
                pump.serverIO.write(piece)
                network.flush()
            self.settle(network)
            first, second = (checkToClient(c.received) for c, _ in clients)
            self.assertEqual(first, second)
            checkToBackend(source.received)
            self.assertFanoutWorks(network, source)
        finally:
            cleanups.run()


class ConfigFileTests(SynchronousTestCase):
    """
    C{twistd wsrelay --config FILE} with any bytes in the file.
    """

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="wsrelay-fuzz-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.path = os.path.join(self.directory, "relay.ini")
        pluginPath = list(twisted.plugins.__path__)

        def restore() -> None:
            twisted.plugins.__path__[:] = pluginPath

        self.addCleanup(restore)

    @settings(max_examples=100, deadline=None, database=None)
    @given(
        st.binary(max_size=200)
        | st.builds(
            lambda value: (
                "[relay]\nlisten = tcp:0\nplugin_path = " + value + "\n"
                "[route:a]\npath = /\nbackends = ws://127.0.0.1:1/\n"
            ).encode("utf-8", "surrogatepass"),
            st.text(max_size=20),
        )
    )
    @example(b"[relay]\nlisten = tcp:0\nplugin_path = a\x00b\n")
    @example(b"\xef\xbb\xbf[relay]\nlisten = tcp:0\n\xff\n")
    def test_anyFile(self, data: bytes) -> None:
        """
        Any bytes as the configuration file: the option parser of
        C{twistd wsrelay} accepts it or raises L{StartRefused} with one
        line naming the file, never anything else (which twistd would show
        as a traceback).
        """
        with open(self.path, "wb") as f:
            f.write(data)
        saved = list(twisted.plugins.__path__)
        try:
            Options().parseOptions(["--config", self.path])
        except StartRefused as e:
            self.assertEqual(str(e).splitlines(), [str(e)])
            self.assertTrue(str(e).startswith(f"wsrelay: {self.path}"), str(e))
        finally:
            twisted.plugins.__path__[:] = saved


# Real sockets.


class RawServer:
    """
    A loopback TCP server in a thread that answers each connection's
    handshake with a valid 101, then sends the next of C{replies}, and
    keeps every byte received until the connection ends (see
    L{exchange}).

    @ivar received: What each connection received, in order.
    """

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = list(replies)
        self.received: list[bytes] = []
        self.served = threading.Semaphore(0)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        for after in self.replies:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return

            def answer(head: bytes, after: bytes = after) -> bytes:
                return switching(head) + after

            with conn:
                conn.settimeout(TIMEOUT)
                self.received.append(exchange(conn, b"", answer, CLOSE_REPLY))
            self.served.release()

    def close(self) -> None:
        """
        Stop listening.
        """
        self.sock.close()


def exchange(
    conn: socket.socket,
    first: bytes,
    then: Callable[[bytes], bytes],
    closeReply: bytes,
) -> bytes:
    """
    One side of a raw WebSocket connection: send C{first}, read the other
    side's head, send what C{then} makes of it, then read until the other
    side closes, answering its close frame with C{closeReply} (so that it
    ends the connection cleanly instead of resetting it, which could lose
    bytes not read yet).  A server (C{first} empty) ends the connection
    itself once it answered, as RFC 6455 wants.

    @return: Every byte received.
    """
    data = b""
    try:
        conn.sendall(first)
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
        conn.sendall(then(data))
        replied = False
        while True:
            if not replied and hasClose(data[data.find(b"\r\n\r\n") + 4 :]):
                replied = True
                conn.sendall(closeReply)
                if not first:
                    return data
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
    except OSError:
        return data


def rawSession(port: int, request: bytes, after: bytes) -> bytes:
    """
    Send a request and then C{after} to the relay, and read until it
    closes.
    """
    with socket.create_connection(("127.0.0.1", port), TIMEOUT) as s:
        return exchange(s, request, lambda head: after, CLOSE)


#: Fixed inputs for the real-socket tests: a frame with RSV bits, an
#: unmasked frame from a client, a long ping, a close with code 1005, a
#: continuation without a message, invalid UTF-8 text, bytes that are no
#: frame at all.
SAMPLES = [
    frameBytes(True, 4, 1, b"abcd", b"rsv", "min"),
    frameBytes(True, 0, 2, None, b"unmasked", "min"),
    frameBytes(True, 0, 9, b"abcd", b"p" * 126, "min"),
    frameBytes(True, 0, 8, b"abcd", struct.pack("!H", 1005), "min"),
    frameBytes(True, 0, 0, b"abcd", b"cont", "min"),
    frameBytes(True, 0, 1, b"abcd", b"\xc3\x28", "min"),
    b"\x00" * 7 + bytes(range(64)),
]


class RealSocketTests(TestCase):
    """
    A few fixed inputs through a relay on loopback sockets, on the message
    path.
    """

    dataPath = "message"
    utf8 = True

    async def relayTo(self, server: RawServer) -> int:
        """
        Start a relay whose C{/chat} route goes to C{server} and whose
        C{/echo} route goes to a C{websockets} echo backend.

        @return: Its port.
        """
        echo = startBackend(self)
        self.addCleanup(server.close)
        _, port = await startRelay(
            self,
            f"[relay]\n{LIMITS}close_timeout = 0.2\n[route:raw]\npath = /chat\n"
            f"backends = ws://127.0.0.1:{server.port}/\n"
            f"[route:echo]\npath = /echo\nbackends = {echo.url}\n",
        )
        return port

    async def test_clientFrames(self) -> None:
        """
        Each sample from an open client, then a close: the backend gets
        only well-formed masked frames, the client only well-formed
        unmasked ones, no error is logged, and a C{websockets} client
        through the same relay still gets its echo.
        """
        server = RawServer([b""] * len(SAMPLES))
        port = await self.relayTo(server)
        for sample in SAMPLES:
            got = await inThread(rawSession, port, goodRequest(), sample + CLOSE)
            self.assertTrue(await inThread(server.served.acquire, True, TIMEOUT))
            checkToClient(got, utf8=self.utf8)
            checkToBackend(server.received[-1], utf8=self.utf8)
            self.assertEqual(await inThread(echoOnce, port), "still here")
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_backendFrames(self) -> None:
        """
        Each sample (unmasked, as a server sends) from an open backend, then
        a close: the client gets only well-formed unmasked frames, the
        backend only well-formed masked ones, no error is logged, and a
        C{websockets} client through the same relay still gets its echo.
        """
        server = RawServer([unmasked(s) + CLOSE_REPLY for s in SAMPLES])
        port = await self.relayTo(server)
        for _ in SAMPLES:
            got = await inThread(rawSession, port, goodRequest(), b"")
            self.assertTrue(await inThread(server.served.acquire, True, TIMEOUT))
            checkToClient(got, utf8=self.utf8)
            checkToBackend(server.received[-1], utf8=self.utf8)
            self.assertEqual(await inThread(echoOnce, port), "still here")
        self.assertEqual(self.flushLoggedErrors(), [])


class PassthroughRealSocketTests(RealSocketTests):
    """
    L{RealSocketTests} on the passthrough path, which forwards text without
    checking its UTF-8.
    """

    dataPath = "passthrough"
    utf8 = False


def unmasked(frame: bytes) -> bytes:
    """
    The same frame as a server would send it: without its mask.
    """
    if len(frame) < 2 or not frame[1] & 0x80:
        return frame
    n = frame[1] & 0x7F
    offset = 2 + {126: 2, 127: 8}.get(n, 0)
    key = frame[offset : offset + 4]
    return (
        bytes([frame[0], frame[1] & 0x7F])
        + frame[2:offset]
        + unmask(key, frame[offset + 4 :])
    )


def echoOnce(port: int) -> str:
    """
    One message to the echo route and back, with a C{websockets} client.
    """
    with client(port, "/echo") as c:
        c.send("still here")
        return str(c.recv(TIMEOUT))
