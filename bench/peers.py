"""
The benchmark's own WebSocket peers, written with picows so that they are
not what limits a run: an echo backend, a broadcast source, and the client
load generators (closed-loop echo, fan-out subscribers); the connection
storm's client and backend (roles C{storm} and C{hold-server}) are the
plainer ones of L{bench.rawws}.

Each runs in its own process, started by L{bench.run} as::

    python -m bench.peers ROLE [OPTIONS]

A peer speaks JSON lines: it prints one object per line on standard output
(the first says it is ready) and, where it takes commands, reads one object
per line on standard input.  It exits when standard input closes.

Fan-out messages are ASCII text of C{size} bytes: a round tag (one letter),
an 11-digit sequence number, the source's C{CLOCK_MONOTONIC} time in
nanoseconds (20 digits) and padding.  The clock is shared by every process
on the machine, so a client subtracts it from its own to get the latency.

With C{--deflate} the echo backend and the echo clients negotiate
permessage-deflate: the client sends one message deflated once, with RSV1,
and the backend sends every frame back as it came, RSV1 included.  What
comes back is valid permessage-deflate from the server too (the same
deflate stream), and neither peer spends CPU on zlib during the rounds:
the proxy between them sees real compressed traffic both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import struct
import sys
import time
import zlib
from array import array
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_connect,
    ws_create_server,
)

from bench.procstat import cpuSeconds, systemSeconds, waitSeconds

HEADER = 32
"""
Bytes of a fan-out message before its padding: tag, sequence, timestamp.
"""

_DATA = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION)


def emit(obj: dict[str, Any]) -> None:
    """
    Print one JSON line for the controlling process.
    """
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def selfCPU() -> float:
    """
    CPU seconds (user + system) used by this process so far.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """
    The C{q}-th quantile (0 to 1) of sorted values, nearest rank.

    @return: The value, or L{None} for no values.
    """
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def commands() -> AsyncIterator[dict[str, Any]]:
    """
    The JSON commands arriving on standard input, until it closes.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while line := await reader.readline():
        if line.strip():
            yield json.loads(line)


async def nextCommand() -> dict[str, Any] | None:
    """
    Wait for the next JSON command on standard input.

    @return: The command, or L{None} if standard input closes first.
    """
    async for command in commands():
        return command
    return None


async def waitForEOF() -> None:
    """
    Return when standard input closes (the controlling process is done).
    """
    async for _ in commands():
        pass


def closeFrame(transport: WSTransport, frame: WSFrame) -> None:
    """
    Answer a close frame and drop the connection.
    """
    transport.send_close(frame.get_close_code())
    transport.disconnect()


# Servers.


class EchoListener(WSListener):
    """
    Sends every frame back as it came: type, payload and FIN, so that a
    message a proxy split into frames comes back whole.
    """

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """
        Echo a data frame (RSV1 too: a compressed frame goes back
        compressed); answer a close.
        """
        kind = frame.msg_type
        if kind in _DATA:
            transport.send(kind, frame.get_payload_as_bytes(), frame.fin, frame.rsv1)
        elif kind is WSMsgType.CLOSE:
            closeFrame(transport, frame)


class SourceListener(WSListener):
    """
    One connection to the broadcast source: joins the source's set of
    peers while open and ignores what the peer sends.
    """

    def __init__(self, peers: dict[WSTransport, None]) -> None:
        """
        @param peers: The source's open connections, in joining order.
        """
        self.peers = peers

    def on_ws_connected(self, transport: WSTransport) -> None:
        """
        Join the broadcast.
        """
        self.peers[transport] = None

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        """
        Leave the broadcast.
        """
        self.peers.pop(transport, None)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """
        Answer a close; drop anything else.
        """
        if frame.msg_type is WSMsgType.CLOSE:
            closeFrame(transport, frame)


#: What the echo backend answers with C{--deflate} to a client that offers
#: permessage-deflate, and what the echo clients offer.
DEFLATE = "permessage-deflate"


async def serve(factory: Callable[[], WSListener], deflate: bool = False) -> int:
    """
    Listen on an OS-chosen loopback port with a picows server.

    @param deflate: Whether to accept a permessage-deflate offer.
    @return: The port.
    """

    def listener(
        request: WSUpgradeRequest,
    ) -> WSListener | WSUpgradeResponseWithListener:
        offer = request.headers.get("Sec-WebSocket-Extensions", "")
        if deflate and DEFLATE in offer:
            response = WSUpgradeResponse.create_101_response(
                extra_headers={"Sec-WebSocket-Extensions": DEFLATE}
            )
            return WSUpgradeResponseWithListener(response, factory())
        return factory()

    server = await ws_create_server(
        listener,
        "127.0.0.1",
        0,
        backlog=8192,
        websocket_handshake_timeout=30,
        max_frame_size=64 << 20,
    )
    port: int = server.sockets[0].getsockname()[1]
    return port


async def echoServer(options: argparse.Namespace) -> None:
    """
    The echo backend: prints its port, serves until standard input closes.
    """
    emit({"port": await serve(EchoListener, options.deflate)})
    await waitForEOF()


def message(tag: int, seq: int, size: int) -> bytes:
    """
    A fan-out message stamped with the current time.

    @param tag: The round's tag, an ASCII letter's code.
    @param seq: The message's number in its round.
    @param size: The message's size, at least L{HEADER}.
    """
    head = b"%c%011d%020d" % (tag, seq, time.monotonic_ns())
    return head + b"x" * (size - HEADER)


def textFrame(payload: bytes) -> bytes:
    """
    A server's unmasked, final text frame carrying C{payload}.
    """
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + payload


async def broadcast(
    peers: dict[WSTransport, None],
    duration: float,
    rate: float,
    size: int,
    tag: int,
    limit: int,
    tick: float = 0,
) -> dict[str, Any]:
    """
    Send messages at C{rate} per second for C{duration} seconds to every
    open connection, in one of two shapes.

    With C{tick} 0, each message on its own: stamped once when it is due,
    then written to each connection in turn (one write per connection per
    message), so the time a source spends serving many connections shows
    in the latency of the last ones.  When behind schedule it sends at
    once, without skipping, and stops when the duration is over: a source
    that its own connections slow down sends fewer messages.

    With C{tick} above 0 (seconds), the source wakes every C{tick} and
    writes every message due since its last write, each stamped then, as
    one buffer to each connection: one write per connection per tick,
    however many messages it holds.  A source that falls behind finds more
    messages due at its next wake-up and writes them together, so it sends
    every scheduled message, in fewer and larger writes.

    Either way a connection with more than C{limit} bytes waiting to be
    sent skips the message (as wsrelay's C{slow_client = drop}), so that a
    stalled peer cannot grow the source's memory without bound.

    @return: The round's figures: messages sent and scheduled, connections,
        messages skipped for slow connections, writes to one connection
        (messages or ticks), start and end (monotonic seconds) and the
        source's own CPU seconds.
    """
    cpu = selfCPU()
    start = time.monotonic()
    connections = len(peers)
    if tick > 0:
        sent, skipped, writes = await _broadcastTicks(
            peers, start, duration, rate, size, tag, limit, tick
        )
    else:
        sent, skipped = await _broadcastMessages(
            peers, start, duration, rate, size, tag, limit
        )
        writes = sent
    return {
        "sent": sent,
        "scheduled": int(duration * rate),
        "connections": connections,
        "skipped": skipped,
        "writes": writes,
        "start": start,
        "end": time.monotonic(),
        "cpu": selfCPU() - cpu,
    }


async def _broadcastMessages(
    peers: dict[WSTransport, None],
    start: float,
    duration: float,
    rate: float,
    size: int,
    tag: int,
    limit: int,
) -> tuple[int, int]:
    """
    L{broadcast} one message at a time.

    @return: Messages sent, and messages skipped for slow connections.
    """
    stop = start + duration
    send = WSTransport.send
    text = WSMsgType.TEXT
    skipped = 0
    seq = 0
    while True:
        due = start + seq / rate
        now = time.monotonic()
        if due >= stop or now >= stop:
            break
        # Sleep to the schedule; when behind it, still let the loop flush.
        await asyncio.sleep(max(due - now, 0))
        payload = message(tag, seq, size)
        for transport in list(peers):
            if transport.underlying_transport.get_write_buffer_size() > limit:
                skipped += 1
            else:
                send(transport, text, payload)
        seq += 1
    return seq, skipped


async def _broadcastTicks(
    peers: dict[WSTransport, None],
    start: float,
    duration: float,
    rate: float,
    size: int,
    tag: int,
    limit: int,
    tick: float,
) -> tuple[int, int, int]:
    """
    L{broadcast} every C{tick} seconds, each tick's messages in one write
    per connection, until every scheduled message is sent.

    @return: Messages sent, messages skipped for slow connections, and
        ticks that wrote.
    """
    total = int(duration * rate)
    skipped = 0
    seq = 0
    ticks = 0
    wakeups = -1
    while seq < total:
        now = time.monotonic()
        # The next tick, or at once (still letting the loop flush) when
        # writing the last one took longer than a tick.
        wakeups = max(wakeups + 1, int((now - start) / tick))
        await asyncio.sleep(max(start + wakeups * tick - now, 0))
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        if due <= seq:
            continue
        data = b"".join(textFrame(message(tag, n, size)) for n in range(seq, due))
        count = due - seq
        for transport in list(peers):
            underlying = transport.underlying_transport
            if underlying.get_write_buffer_size() > limit:
                skipped += count
            else:
                underlying.write(data)
        seq = due
        ticks += 1
    return seq, skipped, ticks


async def sourceServer(options: argparse.Namespace) -> None:
    """
    The broadcast source: every message goes to each of its connections.

    Commands: C{{"cmd": "count"}} answers the number of connections;
    C{{"cmd": "send", "duration", "rate", "size", "tag", "limit", "tick"}}
    sends a round and answers its figures (see L{broadcast}; C{tick} is
    optional, 0 by default).
    """
    peers: dict[WSTransport, None] = {}
    emit({"port": await serve(lambda: SourceListener(peers))})
    async for command in commands():
        if command["cmd"] == "count":
            emit({"connections": len(peers)})
        elif command["cmd"] == "send":
            emit(
                await broadcast(
                    peers,
                    command["duration"],
                    command["rate"],
                    command["size"],
                    command["tag"],
                    command["limit"],
                    command.get("tick", 0),
                )
            )


# Clients.


async def connectAll(
    url: str,
    factories: Sequence[Callable[[], WSListener]],
    concurrency: int,
    headers: dict[str, str] | None = None,
) -> tuple[list[WSTransport], list[str], float]:
    """
    Open one connection per factory, at most C{concurrency} handshakes at a
    time, with C{headers} added to each request.

    @return: The open transports (in no particular order), the errors of
        those that failed, and the monotonic time the last one opened.
    """
    gate = asyncio.Semaphore(concurrency)
    opened: list[WSTransport] = []
    errors: list[str] = []
    last = time.monotonic()

    async def one(factory: Callable[[], WSListener]) -> None:
        nonlocal last
        async with gate:
            try:
                transport, _ = await ws_connect(
                    factory,
                    url,
                    websocket_handshake_timeout=30,
                    max_frame_size=64 << 20,
                    extra_headers=headers,
                )
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
                return
        opened.append(transport)
        last = time.monotonic()

    await asyncio.gather(*(one(factory) for factory in factories))
    return opened, errors, last


async def closeAll(transports: Sequence[WSTransport], timeout: float = 3) -> None:
    """
    Close connections with a closing handshake (so that a proxy closes its
    upstream cleanly too), and drop those that do not finish in time.
    """
    for transport in transports:
        transport.send_close(WSCloseCode.GOING_AWAY)
    waits = [asyncio.ensure_future(t.wait_disconnected()) for t in transports]
    if waits:
        await asyncio.wait(waits, timeout=timeout)
    for transport in transports:
        transport.disconnect(False)


class EchoStats:
    """
    What the closed-loop echo clients count between two marks.

    @ivar messages: Echoes completed.
    @ivar latencies: Seconds from sending each message to its echo's end.
    """

    def __init__(self) -> None:
        self.messages = 0
        self.latencies = array("d")


class EchoClient(WSListener):
    """
    A closed-loop client: sends a message, waits for its echo, sends again.
    """

    def __init__(
        self, stats: EchoStats, kind: WSMsgType, payload: bytes, rsv1: bool = False
    ) -> None:
        """
        @param stats: Where to count.
        @param kind: C{TEXT} or C{BINARY}.
        @param payload: The message sent each time.
        @param rsv1: Whether C{payload} is compressed (permessage-deflate).
        """
        self.stats = stats
        self.kind = kind
        self.payload = payload
        self.rsv1 = rsv1
        self.sentAt = 0.0
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        """
        Keep the transport until L{go}.
        """
        self.transport = transport

    def go(self) -> None:
        """
        Send the first message.
        """
        assert self.transport is not None
        self.sentAt = time.perf_counter()
        self.transport.send(self.kind, self.payload, True, self.rsv1)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """
        At the end of an echoed message count it and send the next.
        """
        if not frame.fin or frame.msg_type not in _DATA:
            return
        now = time.perf_counter()
        stats = self.stats
        stats.messages += 1
        stats.latencies.append(now - self.sentAt)
        self.sentAt = now
        transport.send(self.kind, self.payload, True, self.rsv1)


def compressible(size: int) -> bytes:
    """
    C{size} bytes of JSON-like text (order-book updates) that deflate
    about fourfold, as a feed's messages do.
    """
    rng = random.Random(size)
    out = bytearray(b"[")
    while len(out) < size:
        out += b'{"id":%d,"sym":"S%03d","px":%d.%02d,"qty":%d,"side":"%s"},' % (
            rng.randrange(10**6),
            rng.randrange(40),
            rng.randrange(50, 500),
            rng.randrange(100),
            rng.randrange(1, 1000),
            rng.choice((b"buy", b"sell")),
        )
    return bytes(out[:size])


def deflated(data: bytes) -> bytes:
    """
    C{data} as one permessage-deflate message: raw deflate, sync-flushed,
    without the flush's last four bytes.
    """
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


async def echoLoad(options: argparse.Namespace) -> None:
    """
    Drive an echo target in closed loop and print one JSON result.

    After C{warmup} seconds, C{rounds} rounds of C{duration} seconds each
    count the echoes completed, their latencies, and the CPU seconds of the
    processes C{--pids} (the proxy) and C{--side-pids} (the backend) read
    from /proc at the same instants.
    """
    stats = EchoStats()
    kind = WSMsgType.BINARY if options.binary else WSMsgType.TEXT
    payload = b"x" * options.size
    headers = None
    if options.deflate:
        payload = deflated(compressible(options.size))
        headers = {"Sec-WebSocket-Extensions": DEFLATE}
    clients = [
        EchoClient(stats, kind, payload, options.deflate)
        for _ in range(options.connections)
    ]
    factories = [(lambda c=c: c) for c in clients]
    transports, errors, _ = await connectAll(options.url, factories, 64, headers)
    if errors:
        emit({"error": f"{len(errors)} connections failed: {errors[0]}"})
        return
    if options.deflate:
        answer = transports[0].response.headers.get("Sec-WebSocket-Extensions", "")
        if DEFLATE not in answer:
            emit({"error": f"permessage-deflate not negotiated: {answer!r}"})
            return
    for client in clients:
        client.go()
    await asyncio.sleep(options.warmup)
    proxy = [int(p) for p in options.pids.split(",") if p]
    side = [int(p) for p in options.side_pids.split(",") if p]
    rounds = []
    load = [*side, os.getpid()]
    for _ in range(options.rounds):
        stats.messages = 0
        stats.latencies = array("d")
        start = (
            cpuSeconds(proxy),
            cpuSeconds(side),
            selfCPU(),
            waitSeconds(proxy),
            waitSeconds(load),
            time.perf_counter(),
            systemSeconds(proxy),
        )
        await asyncio.sleep(options.duration)
        end = (
            cpuSeconds(proxy),
            cpuSeconds(side),
            selfCPU(),
            waitSeconds(proxy),
            waitSeconds(load),
            time.perf_counter(),
            systemSeconds(proxy),
        )
        latencies = sorted(stats.latencies)
        rounds.append(
            {
                "messages": stats.messages,
                "seconds": end[5] - start[5],
                "proxyCPU": end[0] - start[0],
                "proxySystem": end[6] - start[6],
                "sideCPU": end[1] - start[1],
                "loadCPU": end[2] - start[2],
                "proxyWait": end[3] - start[3],
                "loadWait": end[4] - start[4],
                "p50": percentile(latencies, 0.50),
                "p99": percentile(latencies, 0.99),
            }
        )
    emit({"rounds": rounds})
    await closeAll(transports)


class FeedStats:
    """
    What the fan-out clients count in one round.

    @ivar tag: The current round's tag; messages of other rounds are late.
    @ivar frames: Messages of any round received, for the delivery rate.
    @ivar latencies: Nanoseconds from a message's timestamp to its receipt,
        at the sampled clients.
    @ivar last: Monotonic nanoseconds of the current round's latest
        delivery.
    @ivar header: The frame header of a fan-out message of the current
        size, as a server sends it (see L{textFrame}).
    @ivar ours: The header followed by the round's tag: the start of a
        message of the current round.
    @ivar size: The size of the messages.
    """

    def __init__(self) -> None:
        self.frames = 0
        self.latencies = array("q")
        self.last = 0
        self.arm(0, 100)

    def arm(self, tag: int, size: int) -> None:
        """
        Start counting a round's messages of C{size} bytes, C{tag} 0 for
        none.
        """
        self.tag = tag
        self.size = size
        self.header = frameHeader(size)
        self.ours = self.header + bytes((tag,))


def frameHeader(size: int) -> bytes:
    """
    The header of a server's text frame of C{size} bytes.
    """
    return textFrame(b"x" * size)[:-size]


class FeedClient(WSListener):
    """
    A sampled fan-out subscriber: counts the current round's messages and
    records their latency, a frame at a time.
    """

    def __init__(self, stats: FeedStats) -> None:
        """
        @param stats: The shared round figures.
        """
        self.stats = stats
        self.received = 0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """
        Count a message of the current round and record its latency.
        """
        if frame.msg_type is not WSMsgType.TEXT:
            if frame.msg_type is WSMsgType.CLOSE:
                closeFrame(transport, frame)
            return
        payload = frame.get_payload_as_bytes()
        stats = self.stats
        stats.frames += 1
        if payload[0] != stats.tag:
            return
        now = time.monotonic_ns()
        self.received += 1
        stats.last = now
        stats.latencies.append(now - int(payload[12:HEADER]))


class HandOver(WSListener):
    """
    A subscriber that is not sampled, until its handshake is done and a
    L{CountingClient} takes its connection over.
    """

    def __init__(self, opened: list[WSTransport]) -> None:
        """
        @param opened: Where to put the transport once open.
        """
        self.opened = opened

    def on_ws_connected(self, transport: WSTransport) -> None:
        """
        Give the open transport away.
        """
        self.opened.append(transport)


class CountingClient(asyncio.BufferedProtocol):
    """
    A fan-out subscriber that is not sampled: once its opening handshake
    is done it takes over the connection from picows and counts messages
    in the bytes it reads, without parsing frames, so that a million
    deliveries a second do not cost the load side a million Python calls.

    A message is a frame header (L{FeedStats.header}) and a payload of
    ASCII text whose first byte is its round's tag; the header's first
    byte, C{0x81}, is never ASCII, so each occurrence of the header starts
    a message, and of the header followed by the tag a message of the
    current round.  What the server sends besides is its closing frame at
    the end.  The bytes are read into one buffer that every such client
    shares (a read is counted as soon as it is made), and the last bytes
    of a read are kept when a header may start in them (they hold C{0x81}),
    to count a header that straddles two reads.

    @ivar received: The current round's messages received.
    @ivar closed: Fires when the connection is lost.
    """

    def __init__(self, stats: FeedStats, buffer: bytearray, transport: WSTransport):
        """
        @param stats: The shared round figures.
        @param buffer: The buffer every counting client reads into.
        @param transport: The picows transport whose connection this client
            takes over; it still writes the closing handshake.
        """
        self.stats = stats
        self.buffer = buffer
        self.transport = transport
        self.received = 0
        self.tail = b""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        transport.underlying_transport.set_protocol(self)

    def get_buffer(self, sizehint: int) -> bytearray:
        """
        Read into the shared buffer.
        """
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        """
        Count the headers, and the headers with the round's tag, in a read
        and across its start.
        """
        stats = self.stats
        buffer = self.buffer
        header = stats.header
        count = buffer.count(stats.ours, 0, nbytes)
        stats.frames += buffer.count(header, 0, nbytes)
        k = len(header)
        tail = self.tail
        if tail:
            start = bytes(buffer[: min(nbytes, k)])
            stats.frames += (tail[1 - k :] + start[: k - 1]).count(header)
            count += (tail + start).count(stats.ours)
        if count:
            self.received += count
            stats.last = time.monotonic_ns()
        # Keep the end of the read only if a header may start in it.
        if nbytes >= k:
            if buffer.find(0x81, nbytes - k, nbytes) < 0:
                self.tail = b""
            else:
                self.tail = bytes(buffer[nbytes - k : nbytes])
        else:
            tail = (tail + bytes(buffer[:nbytes]))[-k:]
            self.tail = tail if 0x81 in tail else b""

    def connection_lost(self, exc: Exception | None) -> None:
        """
        Fire L{closed}.
        """
        if not self.closed.done():
            self.closed.set_result(None)

    async def close(self, timeout: float = 3) -> None:
        """
        Close with a closing handshake, and drop the connection if the
        server does not close it in time.
        """
        self.transport.send_close(WSCloseCode.GOING_AWAY)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        self.transport.underlying_transport.close()


async def feedClients(options: argparse.Namespace) -> None:
    """
    Hold C{clients} fan-out subscribers and report on each round.  With
    several comma-separated URLs in C{--url} (the relays of a cluster), the
    clients are spread over them in turn, each URL's handshakes C{--concurrency}
    at a time.  C{--sampled} of them, evenly spread, are picows listeners
    that record latencies; the others become L{CountingClient}s once
    connected.

    Commands: C{{"cmd": "arm", "tag", "size"}} starts a round of messages of
    C{size} bytes (100 if not given); C{{"cmd": "collect", "expect",
    "deadline"}} waits until every client has C{expect} messages or the
    monotonic C{deadline} (seconds) passes, then answers the round's
    figures.
    """
    stats = FeedStats()
    every = max(1, options.clients // options.sampled)
    sampled = [FeedClient(stats) for _ in range(0, options.clients, every)]
    unsampled: list[WSTransport] = []
    factories: list[Callable[[], WSListener]] = [
        (
            (lambda c=sampled[i // every]: c)
            if i % every == 0
            else (lambda: HandOver(unsampled))
        )
        for i in range(options.clients)
    ]
    start = time.monotonic()
    urls = options.url.split(",")
    connected = await asyncio.gather(
        *(
            connectAll(url, factories[i :: len(urls)], options.concurrency)
            for i, url in enumerate(urls)
        )
    )
    transports = [t for opened, _, _ in connected for t in opened]
    errors = [e for _, failed, _ in connected for e in failed]
    last = max(at for _, _, at in connected)
    buffer = bytearray(1 << 18)
    counting = [CountingClient(stats, buffer, t) for t in unsampled]
    handedOver = set(unsampled)
    listening = [t for t in transports if t not in handedOver]
    clients: list[FeedClient | CountingClient] = [*sampled, *counting]
    emit(
        {
            "ready": len(transports),
            "failed": len(errors),
            "errors": errors[:3],
            "seconds": last - start,
        }
    )
    expected = len(transports)
    cpu = selfCPU()
    async for command in commands():
        if command["cmd"] == "arm":
            stats.arm(command["tag"], command.get("size", 100))
            stats.frames = 0
            stats.latencies = array("q")
            stats.last = 0
            for client in clients:
                client.received = 0
            cpu = selfCPU()
            emit({"armed": True})
        elif command["cmd"] == "collect":
            want = command["expect"] * expected
            while time.monotonic() < command["deadline"]:
                if sum(c.received for c in clients) >= want:
                    break
                await asyncio.sleep(0.01)
            received = sum(c.received for c in clients)
            latencies = sorted(stats.latencies)
            emit(
                {
                    "received": received,
                    "frames": stats.frames,
                    "now": time.monotonic(),
                    "expected": want,
                    "complete": sum(c.received == command["expect"] for c in clients),
                    "last": stats.last / 1e9,
                    "p50": _seconds(percentile(latencies, 0.50)),
                    "p99": _seconds(percentile(latencies, 0.99)),
                    "samples": len(latencies),
                    "loadCPU": selfCPU() - cpu,
                }
            )
            stats.arm(0, stats.size)
    await asyncio.gather(closeAll(listening), *(client.close() for client in counting))


def _seconds(nanoseconds: float | None) -> float | None:
    """
    Nanoseconds to seconds, keeping L{None}.
    """
    return None if nanoseconds is None else nanoseconds / 1e9


async def holdServer(options: argparse.Namespace) -> None:
    """
    The storm's backend (L{bench.rawws.holdServer}).
    """
    from bench import rawws

    await rawws.holdServer(options)


async def storm(options: argparse.Namespace) -> None:
    """
    The storm's client (L{bench.rawws.storm}).
    """
    from bench import rawws

    await rawws.storm(options)


ROLES: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, None]]] = {
    "echo-server": echoServer,
    "source": sourceServer,
    "echo-load": echoLoad,
    "feed-clients": feedClients,
    "storm": storm,
    "hold-server": holdServer,
}


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    """
    Parse a peer's command line.
    """
    parser = argparse.ArgumentParser(prog="python -m bench.peers")
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--url", default="")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--sampled", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--binary", action="store_true")
    parser.add_argument("--deflate", action="store_true")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--duration", type=float, default=1.0)
    parser.add_argument("--pids", default="")
    parser.add_argument("--side-pids", default="")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run one peer, on uvloop when it is installed.
    """
    options = parseArguments(sys.argv[1:] if argv is None else argv)
    coroutine = ROLES[options.role](options)
    try:
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


if __name__ == "__main__":
    main()
