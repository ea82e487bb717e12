"""
Which Redis client the C{redis} source uses, measured: C{XADD} and
C{XREAD} throughput and the client's CPU per stream entry, on a local
C{redis-server} started here (its own port, persistence off).

Clients, each in its own process:

  - C{wsrelay}: wsrelay's own RESP2 protocol (L{wsrelay.redis.protocol}),
    on Twisted's default (epoll) reactor;
  - C{txredisapi}: Twisted-native, with the C{hiredis} reader when
    installed, on the default reactor;
  - C{redis-py}: C{redis.asyncio} (redis-py), under Twisted's asyncio
    reactor, each coroutine made a Deferred with C{Deferred.fromFuture};

C{+hiredis} / C{-hiredis} say whether the C{hiredis} parser was there
(it is hidden from the process for C{-hiredis}).

Per client: C{XADD} one at a time (each awaited before the next: the
ingest's order-keeping pace on one connection), C{XADD} pipelined 100 at a
time, and C{XREAD COUNT 100} from the stream's start until every entry was
read, each entry taken apart into its id and fields (what the source
does).  Entries carry C{data} (a 100-byte payload) and C{type}.

The two other clients are not wsrelay's dependencies: C{pip install
txredisapi redis} first.  Run: C{python -m bench.redisclient [--entries
N]} (under C{nice}: it measures CPU time, which another busy process does
not change much, but the wall-clock rates suffer).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: The client variants, each run in its own process: (name, hiredis).
VARIANTS = [
    ("wsrelay", True),
    ("wsrelay", False),
    ("txredisapi", True),
    ("txredisapi", False),
    ("redis-py", True),
    ("redis-py", False),
]

PAYLOAD = b"x" * 100

#: Entries per XREAD and per pipelined XADD batch.
BATCH = 100


def cpu() -> float:
    """
    @return: This process's CPU seconds, user and system.
    """
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(
    name: str, run: Callable[[], Awaitable[int]], results: dict[str, Any]
) -> None:
    """
    Time C{run}, which returns how many entries it handled, into
    C{results[name]}: entries/s and CPU microseconds per entry.
    """
    wall, used = time.perf_counter(), cpu()
    count = await run()
    wall, used = time.perf_counter() - wall, cpu() - used
    results[name] = {
        "entries": count,
        "per_s": round(count / wall),
        "cpu_us": round(used / count * 1e6, 1),
    }


def entryCount(reply: Any) -> tuple[int, Any]:
    """
    Take an C{XREAD} reply (RESP2 arrays) apart as the source does.

    @return: The number of entries and the last id.
    """
    if not reply:
        return 0, None
    entries = reply[0][1]
    last = None
    for entryId, fields in entries:
        data = kind = None
        for i in range(0, len(fields), 2):
            if fields[i] == b"data":
                data = fields[i + 1]
            elif fields[i] == b"type":
                kind = fields[i + 1]
        assert data is not None and kind is not None
        last = entryId
    return len(entries), last


async def benchmark(
    execute: Callable[..., Awaitable[Any]],
    pipelined: Callable[[list[tuple[Any, ...]]], Awaitable[Any]],
    xread: Callable[[bytes, Any], Awaitable[Any]],
    entries: int,
) -> dict[str, Any]:
    """
    The measurements, with a client's three operations.

    @param execute: Sends one command, returns its reply.
    @param pipelined: Sends commands without waiting in between, returns
        when every reply came.
    @param xread: C{XREAD COUNT BATCH STREAMS key id}, returning the
        entries as C{entryCount} takes them.
    """
    results: dict[str, Any] = {}
    await execute("DEL", "s1", "s2")

    async def one() -> int:
        for _ in range(entries):
            await execute("XADD", "s1", "*", "data", PAYLOAD, "type", "text")
        return entries

    async def many() -> int:
        command = ("XADD", "s2", "*", "data", PAYLOAD, "type", "text")
        for _ in range(entries // BATCH):
            await pipelined([command] * BATCH)
        return entries // BATCH * BATCH

    async def read() -> int:
        total, last = 0, b"0"
        while True:
            count, newest = entryCount(await xread(b"s2", last))
            if not count:
                return total
            total, last = total + count, newest

    await measure("xadd_one", one, results)
    await measure("xadd_pipelined", many, results)
    await measure("xread", read, results)
    return results


async def ownClient(port: int, entries: int) -> dict[str, Any]:
    """
    wsrelay's RESP2 protocol.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import gatherResults
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    from wsrelay.redis.protocol import RedisProtocol

    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    connection = await connectProtocol(endpoint, RedisProtocol())

    async def pipelined(commands: list[tuple[Any, ...]]) -> Any:
        return await gatherResults([connection.execute(*c) for c in commands])

    async def xread(key: bytes, last: Any) -> Any:
        return await connection.execute("XREAD", "COUNT", BATCH, "STREAMS", key, last)

    return await benchmark(connection.execute, pipelined, xread, entries)


async def txredisapiClient(port: int, entries: int) -> dict[str, Any]:
    """
    txredisapi's connection, replies not decoded (C{charset=None}).
    """
    import txredisapi
    from twisted.internet.defer import gatherResults

    connection = await txredisapi.Connection(
        "127.0.0.1", port, reconnect=False, charset=None, convertNumbers=False
    )

    async def pipelined(commands: list[tuple[Any, ...]]) -> Any:
        return await gatherResults([connection.execute_command(*c) for c in commands])

    async def xread(key: bytes, last: Any) -> Any:
        return await connection.execute_command(
            "XREAD", "COUNT", BATCH, "STREAMS", key, last
        )

    return await benchmark(connection.execute_command, pipelined, xread, entries)


async def redisPyClient(port: int, entries: int) -> dict[str, Any]:
    """
    redis-py's asyncio client, raw replies (C{execute_command}, no
    per-command response callbacks beyond its defaults).
    """
    import asyncio

    import redis.asyncio
    from twisted.internet.defer import Deferred

    client = redis.asyncio.Redis(host="127.0.0.1", port=port)

    def asDeferred(coroutine: Any) -> Any:
        return Deferred.fromFuture(asyncio.ensure_future(coroutine))

    async def execute(*args: Any) -> Any:
        return await asDeferred(client.execute_command(*args))

    async def pipelined(commands: list[tuple[Any, ...]]) -> Any:
        async def run() -> Any:
            async with client.pipeline(transaction=False) as p:
                for c in commands:
                    p.execute_command(*c)
                return await p.execute()

        return await asDeferred(run())

    async def xread(key: bytes, last: Any) -> Any:
        reply = await asDeferred(client.xread({key: last}, count=BATCH))
        # redis-py gives each entry's fields as a dict: back to the flat
        # list the other clients give, counted the same way.
        return [
            [k, [(i, [x for kv in f.items() for x in kv]) for i, f in e]]
            for k, e in reply
        ]

    try:
        return await benchmark(execute, pipelined, xread, entries)
    finally:
        await asDeferred(client.aclose())


CLIENTS = {
    "wsrelay": ownClient,
    "txredisapi": txredisapiClient,
    "redis-py": redisPyClient,
}


def child(name: str, hiredis: bool, port: int, entries: int) -> None:
    """
    Run one client's measurements on its reactor and print them as JSON.
    """
    if not hiredis:
        sys.modules["hiredis"] = None  # type: ignore[assignment]
    if name == "redis-py":
        import asyncio

        from twisted.internet import asyncioreactor

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    out: dict[str, Any] = {}

    def go() -> None:
        d = Deferred.fromCoroutine(CLIENTS[name](port, entries))
        d.addCallback(out.update)
        d.addErrback(lambda f: out.update(error=f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    reactor.callWhenRunning(go)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    print(json.dumps(out))


def main() -> None:
    """
    Start a redis-server, run each client in its own process, print the
    table.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=20000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--hiredis", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, bool(args.hiredis), args.port, args.entries)
        return

    from tests.support.redis import MISSING, REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        sys.exit(MISSING)
    server = RedisServer()
    server.startBlocking()
    try:
        print(
            f"{args.entries} entries of {len(PAYLOAD)} bytes, redis-server"
            f" on 127.0.0.1:{server.port}; client CPU in microseconds per entry"
        )
        print(
            f"{'client':<20}{'XADD 1 by 1':>18}{'XADD pipelined':>20}"
            f"{'XREAD COUNT 100':>20}"
        )
        for name, hiredis in VARIANTS:
            command = [sys.executable, "-m", "bench.redisclient", "--child", name]
            command += ["--hiredis", str(int(hiredis)), "--port", str(server.port)]
            command += ["--entries", str(args.entries)]
            done = subprocess.run(
                command, capture_output=True, text=True, env=dict(os.environ)
            )
            label = f"{name} {'+' if hiredis else '-'}hiredis"
            try:
                r = json.loads(done.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                print(f"{label:<20} failed: {done.stderr[-2000:]}")
                continue
            if "error" in r:
                print(f"{label:<20} failed: {r['error'][-2000:]}")
                continue
            cells = [
                f"{r[k]['per_s']:>8}/s {r[k]['cpu_us']:>5}us"
                for k in ("xadd_one", "xadd_pipelined", "xread")
            ]
            print(f"{label:<20}{cells[0]:>18}{cells[1]:>20}{cells[2]:>20}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
