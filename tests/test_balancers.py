"""
The built-in balancers: in memory (distribution, weights, load, hashing and
how many keys move when backends come and go), as plugins, and over real
loopback sockets with C{websockets} clients and backends.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from random import Random
from typing import cast

from twisted.plugins.wsrelay_balancers import (
    consistentHash,
    first,
    leastConnections,
    randomTwo,
    roundRobin,
)
from twisted.trial.unittest import SynchronousTestCase, TestCase
from websockets.sync.client import ClientConnection
from zope.interface.verify import verifyObject

from tests.support import TIMEOUT, client, inThread, startBackend, startRelay
from tests.support.clients import closedPort
from tests.support.waiting import waitFor
from wsrelay.balancers import (
    HASH_ON_FORMS,
    ConsistentHash,
    First,
    LeastConnections,
    RandomTwo,
    RoundRobin,
    parseHashOn,
)
from wsrelay.config import BackendConfig
from wsrelay.interfaces import IBackend, IBalancer, IBalancerFactory, ILoadListener
from wsrelay.plugins import balancerFactories
from wsrelay.routing import Backend, ConnectionInfo

BUILT_IN = {
    "round_robin": roundRobin,
    "first": first,
    "least_connections": leastConnections,
    "random_two": randomTwo,
    "consistent_hash": consistentHash,
}


def pool(names: str, **weights: int) -> list[Backend]:
    """
    @param names: One letter per backend, in order.
    @param weights: Weights by name; 1 for the others.
    @return: Backends with these names and weights.
    """
    return [
        Backend(
            BackendConfig.fromURL(f"ws://127.0.0.1:{9000 + i}/", n, weights.get(n, 1))
        )
        for i, n in enumerate(names)
    ]


def info(
    peer: str = "192.0.2.1",
    path: str = "/chat",
    query: str = "",
    headers: Sequence[tuple[str, str]] = (),
    cookies: dict[str, str] | None = None,
) -> ConnectionInfo:
    """
    @return: A L{ConnectionInfo} with these fields.
    """
    return ConnectionInfo(peer, path, query, headers, cookies or {})


INFO = info()


def picks(
    balancer: IBalancer, candidates: Sequence[IBackend], count: int, hold: bool = False
) -> str:
    """
    Pick C{count} times.

    @param hold: Whether each pick opens a connection that stays open, as
        the relay would count it.
    @return: The names picked, one letter each.
    """
    names = []
    for _ in range(count):
        chosen = balancer.pick(candidates, INFO)
        assert chosen is not None
        if hold:
            opened(balancer, chosen)
        names.append(chosen.name)
    return "".join(names)


def opened(balancer: IBalancer, backend: IBackend) -> None:
    """
    Do what the relay does when a connection to C{backend} opens.
    """
    backend.connections += 1
    listener = ILoadListener(balancer, None)
    if listener is not None:
        listener.connectionOpened(backend)


def closed(balancer: IBalancer, backend: IBackend) -> None:
    """
    Do what the relay does when a connection to C{backend} closes.
    """
    backend.connections -= 1
    listener = ILoadListener(balancer, None)
    if listener is not None:
        listener.connectionClosed(backend)


def ipKeys(count: int) -> list[str]:
    """
    @return: C{count} different IPv4 addresses.
    """
    return [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(count)]


def ringMap(
    names: str, keys: Iterable[str], down: str = "", **weights: int
) -> dict[str, str]:
    """
    Where a C{consistent_hash} balancer (on the client's address) built
    for backends C{names} sends each key.

    @param down: The names of the backends that are not candidates.
    @return: The backend's name by key.
    """
    backends = pool(names, **weights)
    balancer = consistentHash.build(backends, {})
    candidates = [b for b in backends if b.name not in down]
    result = {}
    for key in keys:
        chosen = balancer.pick(candidates, info(peer=key))
        assert chosen is not None
        result[key] = chosen.name
    return result


class PluginTests(SynchronousTestCase):
    """
    The built-in balancers are plugins like any other.
    """

    def test_discoverable(self) -> None:
        """
        Every built-in balancer is found by name by the plugin loader, as the
        module-level object of L{wsrelay.balancers}.
        """
        found = balancerFactories()
        for name, factory in BUILT_IN.items():
            self.assertIs(found.get(name), factory, name)

    def test_factoriesProvideInterface(self) -> None:
        """
        Every built-in factory provides L{IBalancerFactory}, with its name,
        a description and the options it declares.
        """
        for name, factory in BUILT_IN.items():
            self.assertTrue(verifyObject(IBalancerFactory, factory))
            self.assertEqual(factory.name, name)
            self.assertIsInstance(factory.description, str)
        self.assertEqual(consistentHash.options, ("hash_on",))
        for factory in (roundRobin, first, leastConnections, randomTwo):
            self.assertEqual(factory.options, ())

    def test_balancersProvideInterface(self) -> None:
        """
        Every built-in factory builds an L{IBalancer} of its class from the
        route's backends and no options.
        """
        classes = {
            "round_robin": RoundRobin,
            "first": First,
            "least_connections": LeastConnections,
            "random_two": RandomTwo,
            "consistent_hash": ConsistentHash,
        }
        for name, factory in BUILT_IN.items():
            balancer = factory.build(pool("ab"), {})
            self.assertTrue(verifyObject(IBalancer, balancer))
            self.assertIsInstance(balancer, classes[name])

    def test_noCandidates(self) -> None:
        """
        Every built-in balancer gives L{None} when there is no candidate.
        """
        for factory in BUILT_IN.values():
            self.assertIsNone(factory.build(pool("ab"), {}).pick([], INFO))

    def test_connectionsNotCounted(self) -> None:
        """
        The relay counts connections: no built-in balancer has the optional
        load hooks (L{ILoadListener}), so none changes a backend's count.
        """
        for factory in BUILT_IN.values():
            backends = pool("ab")
            balancer = factory.build(backends, {})
            self.assertFalse(ILoadListener.providedBy(balancer), factory.name)
            opened(balancer, backends[0])
            closed(balancer, backends[0])
            self.assertEqual([b.connections for b in backends], [0, 0])


class RoundRobinTests(SynchronousTestCase):
    """
    C{round_robin}: smooth weighted round robin.
    """

    def test_equalWeights(self) -> None:
        """
        Backends of equal weight take turns in the configured order.
        """
        backends = pool("abc")
        balancer = roundRobin.build(backends, {})
        self.assertEqual(picks(balancer, backends, 9), "abcabcabc")

    def test_smoothOrder(self) -> None:
        """
        Weights 5, 1, 1 give nginx's smooth order, not five a in a row.
        """
        backends = pool("abc", a=5)
        balancer = roundRobin.build(backends, {})
        self.assertEqual(picks(balancer, backends, 7), "aabacaa")

    def test_weightsShare(self) -> None:
        """
        Over many picks each backend's share is its weight's.
        """
        backends = pool("abc", a=3, b=2)
        balancer = roundRobin.build(backends, {})
        self.assertEqual(
            Counter(picks(balancer, backends, 600)), {"a": 300, "b": 200, "c": 100}
        )

    def test_candidatesOnly(self) -> None:
        """
        A backend that is not a candidate is skipped; the others share.
        """
        backends = pool("abc")
        balancer = roundRobin.build(backends, {})
        self.assertEqual(picks(balancer, [backends[0], backends[2]], 4), "acac")

    def test_oneCandidate(self) -> None:
        """
        A lone candidate is picked, and the picks it took leave the smooth
        order of the others as it was: turns among all go on where they
        left off.
        """
        backends = pool("abc", a=5)
        balancer = roundRobin.build(backends, {})
        order = ""
        for _ in range(7):
            for b in backends:
                self.assertIs(balancer.pick([b], info()), b)
            order += picks(balancer, backends, 1)
        self.assertEqual(order, "aabacaa")
        self.assertIsNone(balancer.pick([], info()))


class FirstTests(SynchronousTestCase):
    """
    C{first}: active/standby.
    """

    def test_alwaysFirst(self) -> None:
        """
        The first candidate takes every connection, however loaded.
        """
        backends = pool("abc")
        balancer = first.build(backends, {})
        self.assertEqual(picks(balancer, backends, 5, hold=True), "aaaaa")

    def test_nextWhenFirstOut(self) -> None:
        """
        Without the first backend, the next in configured order.
        """
        backends = pool("abc")
        balancer = first.build(backends, {})
        self.assertEqual(picks(balancer, backends[1:], 3), "bbb")
        self.assertEqual(picks(balancer, [backends[0], backends[2]], 2), "aa")


class LeastConnectionsTests(SynchronousTestCase):
    """
    C{least_connections}: fewest open connections per unit of weight.
    """

    def test_fewest(self) -> None:
        """
        The candidate with the fewest open connections is picked.
        """
        backends = pool("abc")
        for b, n in zip(backends, (3, 1, 2), strict=True):
            b.connections = n
        balancer = leastConnections.build(backends, {})
        self.assertEqual(picks(balancer, backends, 3), "bbb")
        self.assertEqual(picks(balancer, [backends[0], backends[2]], 1), "c")

    def test_perWeight(self) -> None:
        """
        Connections count per unit of weight: 5 on a backend of weight 3
        are fewer than 2 on a backend of weight 1.
        """
        backends = pool("ab", a=3)
        backends[0].connections = 5
        backends[1].connections = 2
        balancer = leastConnections.build(backends, {})
        self.assertEqual(picks(balancer, backends, 1), "a")
        backends[0].connections = 7
        self.assertEqual(picks(balancer, backends, 1), "b")

    def test_tiesTakeTurns(self) -> None:
        """
        Equally loaded candidates take turns (a burst picked before the
        relay counts any of its connections spreads), by weight among
        equals.
        """
        backends = pool("abc")
        balancer = leastConnections.build(backends, {})
        self.assertEqual(picks(balancer, backends, 6), "abcabc")
        weighted = pool("ab", a=2)
        balancer = leastConnections.build(weighted, {})
        self.assertEqual(picks(balancer, weighted, 6), "abaaba")

    def test_tiesAmongLeastOnly(self) -> None:
        """
        Turns are taken among the least loaded only.
        """
        backends = pool("abc")
        backends[1].connections = 4
        balancer = leastConnections.build(backends, {})
        self.assertEqual(picks(balancer, backends, 4), "acac")

    def test_followsConnections(self) -> None:
        """
        As connections open the load stays even per unit of weight; when
        some close, new connections go where they closed until the load is
        even again.
        """
        backends = pool("abc", a=2)
        a, b, c = backends
        balancer = leastConnections.build(backends, {})
        picks(balancer, backends, 40, hold=True)
        self.assertEqual([x.connections for x in backends], [20, 10, 10])
        for _ in range(6):
            closed(balancer, b)
        self.assertEqual(picks(balancer, backends, 6, hold=True), "bbbbbb")
        for _ in range(4):
            closed(balancer, a)
        for _ in range(2):
            closed(balancer, c)
        self.assertEqual(
            Counter(picks(balancer, backends, 6, hold=True)), {"a": 4, "c": 2}
        )
        self.assertEqual([x.connections for x in backends], [20, 10, 10])


class RandomTwoTests(SynchronousTestCase):
    """
    C{random_two}: the less loaded of two backends drawn at random.
    """

    def seeded(self, backends: Sequence[IBackend], seed: int = 1) -> RandomTwo:
        """
        @return: A C{random_two} balancer with a seeded source.
        """
        balancer = cast(RandomTwo, randomTwo.build(backends, {}))
        balancer.random = Random(seed)
        return balancer

    def test_randomSource(self) -> None:
        """
        The source of randomness is a L{Random}, given or made; the same
        seed gives the same picks.
        """
        backends = pool("abcde")
        self.assertIsInstance(
            cast(RandomTwo, randomTwo.build(backends, {})).random, Random
        )
        source = Random(5)
        self.assertIs(RandomTwo(backends, {}, source).random, source)
        self.assertEqual(
            picks(self.seeded(backends, 3), backends, 50),
            picks(self.seeded(backends, 3), backends, 50),
        )

    def test_prefersLessLoaded(self) -> None:
        """
        Of two candidates the less loaded is always taken; of three, the
        most loaded never is, and the least loaded whenever it is drawn,
        which is two times in three.
        """
        backends = pool("abc")
        a, b, c = backends
        a.connections, b.connections, c.connections = 10, 0, 5
        balancer = self.seeded(backends)
        self.assertEqual(picks(balancer, [a, b], 20), "b" * 20)
        counts = Counter(picks(balancer, backends, 3000))
        self.assertNotIn("a", counts)
        self.assertTrue(1800 < counts["b"] < 2200, counts)

    def test_drawsAreRandom(self) -> None:
        """
        Equally loaded candidates are each drawn about as often.
        """
        backends = pool("abcd")
        counts = Counter(picks(self.seeded(backends), backends, 4000))
        for name in "abcd":
            self.assertTrue(850 < counts[name] < 1150, counts)

    def test_spreadsHeldConnections(self) -> None:
        """
        Held connections spread evenly: after 3000 on 5 backends, no
        backend has more than a few connections over another.
        """
        backends = pool("abcde")
        picks(self.seeded(backends), backends, 3000, hold=True)
        loads = [b.connections for b in backends]
        self.assertLessEqual(max(loads) - min(loads), 4, loads)

    def test_weighted(self) -> None:
        """
        Weights draw a backend more often and count its connections per
        unit of weight: held connections share 3 to 1.
        """
        backends = pool("ab", a=3)
        picks(self.seeded(backends), backends, 400, hold=True)
        a, b = backends
        self.assertLessEqual(abs(a.connections - 3 * b.connections), 3)

    def test_oneCandidate(self) -> None:
        """
        A single candidate is taken, however loaded.
        """
        backends = pool("ab")
        backends[1].connections = 100
        self.assertEqual(picks(self.seeded(backends), backends[1:], 3), "bbb")


class HashOnTests(SynchronousTestCase):
    """
    The C{hash_on} option of C{consistent_hash}.
    """

    def test_forms(self) -> None:
        """
        The accepted forms: the kind in any case, a header's name in lower
        case, a cookie's or a query parameter's as written.
        """
        self.assertEqual(parseHashOn("ip"), ("ip", ""))
        self.assertEqual(parseHashOn("PATH"), ("path", ""))
        self.assertEqual(parseHashOn(" Header:X-User "), ("header", "x-user"))
        self.assertEqual(parseHashOn("cookie:Session"), ("cookie", "Session"))
        self.assertEqual(parseHashOn("query: room"), ("query", "room"))

    def test_invalid(self) -> None:
        """
        Anything else is a L{ValueError} whose message lists the accepted
        forms and repeats the value, also from the factory's C{build}.
        """
        for value in [
            "",
            "host",
            "header",
            "header:",
            "cookie: ",
            "query:a b",
            "ip:x",
            "path:/x",
            "uri:x",
        ]:
            e = self.assertRaises(ValueError, parseHashOn, value)
            self.assertEqual(str(e), f"expected {HASH_ON_FORMS}, got {value!r}")
        e = self.assertRaises(
            ValueError, consistentHash.build, pool("ab"), {"hash_on": "cookie"}
        )
        self.assertEqual(
            str(e),
            "expected ip, path, header:NAME, cookie:NAME or query:NAME, got 'cookie'",
        )

    def test_default(self) -> None:
        """
        Without C{hash_on} the balancer hashes on the client's address.
        """
        balancer = cast(ConsistentHash, consistentHash.build(pool("ab"), {}))
        self.assertEqual(balancer.hashOn, "ip")
        self.assertEqual(balancer.key(info(peer="203.0.113.7")), "203.0.113.7")

    def keyOf(self, hashOn: str, connection: ConnectionInfo) -> str:
        """
        @return: What a balancer with this C{hash_on} hashes C{connection}
            on.
        """
        balancer = consistentHash.build(pool("ab"), {"hash_on": hashOn})
        return cast(ConsistentHash, balancer).key(connection)

    def test_keys(self) -> None:
        """
        Each form takes its part of the request: a header by name in any
        case (repeated ones joined), a cookie, the first query parameter of
        that name (decoded), the path.
        """
        c = info(
            peer="198.51.100.4",
            path="/chat/room/7",
            query="b=2&room=r%2F1&room=r2",
            headers=[("x-user", "alice"), ("X-Other", "o"), ("X-USER", "bob")],
            cookies={"sid": "s3cr3t", "SID": "other"},
        )
        self.assertEqual(self.keyOf("ip", c), "198.51.100.4")
        self.assertEqual(self.keyOf("path", c), "/chat/room/7")
        self.assertEqual(self.keyOf("header:X-User", c), "alice, bob")
        self.assertEqual(self.keyOf("header:x-other", c), "o")
        self.assertEqual(self.keyOf("cookie:sid", c), "s3cr3t")
        self.assertEqual(self.keyOf("query:room", c), "r/1")

    def test_missingFallsBackToIP(self) -> None:
        """
        Without the header, cookie or query parameter, or with an empty
        one, the client's address is the key.
        """
        c = info(
            peer="198.51.100.4",
            query="room=&x=1",
            headers=[("X-Empty", "")],
            cookies={"other": "1"},
        )
        for hashOn in [
            "header:X-User",
            "header:X-Empty",
            "cookie:sid",
            "query:room",
            "query:absent",
        ]:
            self.assertEqual(self.keyOf(hashOn, c), "198.51.100.4", hashOn)

    def test_sameRingForEveryForm(self) -> None:
        """
        Whatever the form, a key goes where the same text as a client
        address goes.
        """
        backends = pool("abcde")
        byIP = consistentHash.build(backends, {})
        forms: list[tuple[str, Callable[[str], ConnectionInfo]]] = [
            ("header:X-User", lambda k: info(headers=[("X-User", k)])),
            ("cookie:sid", lambda k: info(cookies={"sid": k})),
            ("query:user", lambda k: info(query=f"user={k}")),
            ("path", lambda k: info(path=k)),
        ]
        for hashOn, make in forms:
            balancer = consistentHash.build(backends, {"hash_on": hashOn})
            for key in [f"/user-{i}" for i in range(200)]:
                self.assertIs(
                    balancer.pick(backends, make(key)),
                    byIP.pick(backends, info(peer=key)),
                    hashOn,
                )


class ConsistentHashTests(SynchronousTestCase):
    """
    C{consistent_hash}: a ring with virtual nodes.
    """

    KEYS = ipKeys(10000)

    def test_sameKeySameBackend(self) -> None:
        """
        The same key goes to the same backend every time, and in another
        balancer built for the same backends.
        """
        keys = self.KEYS[:500]
        once = ringMap("abcde", keys)
        self.assertEqual(ringMap("abcde", keys), once)
        backends = pool("abcde")
        balancer = consistentHash.build(backends, {})
        for key in keys:
            for _ in range(3):
                chosen = balancer.pick(backends, info(peer=key))
                assert chosen is not None
                self.assertEqual(chosen.name, once[key])

    def test_stableAcrossProcesses(self) -> None:
        """
        The ring does not depend on the process (no use of L{hash}, which
        is salted per process): these keys go where they always went.
        Changing the ring moves every user; this test says so.
        """
        got = ringMap(
            "abc",
            ["203.0.113.7", "198.51.100.1", "user-1", "user-2", "2001:db8::1"],
        )
        self.assertEqual(
            got,
            {
                "203.0.113.7": "b",
                "198.51.100.1": "a",
                "user-1": "b",
                "user-2": "a",
                "2001:db8::1": "a",
            },
        )

    def test_evenDistribution(self) -> None:
        """
        Keys spread about evenly over backends of equal weight.
        """
        counts = Counter(ringMap("abcd", self.KEYS).values())
        for name in "abcd":
            self.assertTrue(2000 < counts[name] < 3000, counts)

    def test_weights(self) -> None:
        """
        A backend of weight 2 gets about twice the keys of one of weight 1.
        """
        counts = Counter(ringMap("abc", self.KEYS, a=2).values())
        self.assertTrue(4400 < counts["a"] < 5600, counts)
        for name in "bc":
            self.assertTrue(2000 < counts[name] < 3000, counts)

    def assertMovement(
        self, before: dict[str, str], after: dict[str, str], name: str, n: int
    ) -> float:
        """
        Assert that about 1/C{n} of the keys moved, each to or from
        backend C{name}.

        @return: The fraction of keys that moved.
        """
        moved = [k for k in before if before[k] != after[k]]
        fraction = len(moved) / len(before)
        self.assertTrue(0.5 / n < fraction < 1.5 / n, fraction)
        for key in moved:
            self.assertIn(name, (before[key], after[key]))
        return fraction

    def test_addBackend(self) -> None:
        """
        Adding a sixth backend moves about 1/6 of the keys, all to it.
        """
        before = ringMap("abcde", self.KEYS)
        after = ringMap("abcdef", self.KEYS)
        self.assertMovement(before, after, "f", 6)
        self.assertTrue(all(after[k] == "f" for k in after if before[k] != after[k]))

    def test_removeBackend(self) -> None:
        """
        Removing one of six backends moves about 1/6 of the keys, all from
        it; the others keep theirs.
        """
        before = ringMap("abcdef", self.KEYS)
        after = ringMap("abdef", self.KEYS)
        self.assertMovement(before, after, "c", 6)
        self.assertTrue(all(before[k] == "c" for k in after if before[k] != after[k]))

    def test_downBackend(self) -> None:
        """
        While a backend is not a candidate its keys go where they would
        go without it, the others stay; they all come back when it is a
        candidate again.
        """
        backends = pool("abcdef")
        balancer = consistentHash.build(backends, {})
        up = {k: balancer.pick(backends, info(peer=k)) for k in self.KEYS}
        candidates = [b for b in backends if b.name != "c"]
        down = {k: balancer.pick(candidates, info(peer=k)) for k in self.KEYS}
        withoutC = ringMap("abdef", self.KEYS)
        self.assertEqual({k: b.name for k, b in down.items() if b}, withoutC)
        self.assertMovement({k: b.name for k, b in up.items() if b}, withoutC, "c", 6)
        again = {k: balancer.pick(backends, info(peer=k)) for k in self.KEYS}
        self.assertEqual(again, up)

    def test_newcomerNotOnRing(self) -> None:
        """
        A candidate the balancer was not built with still gets picked
        when it is the only one.
        """
        balancer = consistentHash.build(pool("ab"), {})
        (stranger,) = pool("x")
        self.assertIs(balancer.pick([stranger], INFO), stranger)


def backendPort(c: ClientConnection) -> int:
    """
    @return: The port of the backend behind C{c}, from the C{Host} header
        the relay sent it.
    """
    c.send("headers")
    lines = str(c.recv(TIMEOUT)).split("\n")
    host = dict(line.split(": ", 1) for line in lines)["Host"]
    return int(host.rsplit(":", 1)[1])


def visit(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    """
    Connect to the relay, see which backend answers, and close.

    @return: The backend's port.
    """
    with client(port, path, additional_headers=headers) as c:
        return backendPort(c)


class IntegrationTests(TestCase):
    """
    Each built-in balancer over real loopback sockets, seen from the
    backends a client reaches.
    """

    async def hold(self, port: int, path: str) -> tuple[ClientConnection, int]:
        """
        Open a connection that stays open until the end of the test.

        @return: The client and the port of its backend.
        """
        c = await inThread(client, port, path, legacy=True)
        self.addCleanup(inThread, c.close)
        return c, await inThread(backendPort, c)

    async def test_roundRobin(self) -> None:
        """
        With weights 2 and 1, connections go 2 to 1 in the smooth order.
        """
        a, b = startBackend(self), startBackend(self)
        _, port = await startRelay(
            self,
            "[relay]\n[route:chat]\npath = /chat\nbalancer = round_robin\n"
            f"backends = {a.url} weight=2 {b.url}\n",
        )
        names = {a.port: "a", b.port: "b"}

        def run() -> str:
            return "".join(names[visit(port, "/chat")] for _ in range(9))

        self.assertEqual(await inThread(run), "abaabaaba")

    async def test_leastConnections(self) -> None:
        """
        Held connections spread evenly; when those on one backend close,
        new connections go there.
        """
        a, b = startBackend(self), startBackend(self)
        relay, port = await startRelay(
            self,
            "[relay]\n[route:chat]\npath = /chat\nbalancer = least_connections\n"
            f"backends = {a.url} {b.url}\n",
        )
        names = {a.port: "a", b.port: "b"}
        held = [await self.hold(port, "/chat") for _ in range(4)]
        self.assertEqual(Counter(names[p] for _, p in held), {"a": 2, "b": 2})
        for c, p in held:
            if names[p] == "a":
                await inThread(c.close)
        ra, rb = relay.routes.routes[0].backends
        await waitFor(lambda: ra.connections == 0)
        more = [await self.hold(port, "/chat") for _ in range(2)]
        self.assertEqual([names[p] for _, p in more], ["a", "a"])
        self.assertEqual((ra.connections, rb.connections), (2, 2))

    async def test_randomTwo(self) -> None:
        """
        Held connections spread about evenly over three backends, and
        exactly evenly over two (both are drawn every time, so the less
        loaded always wins), as the relay counts them.
        """
        three = [startBackend(self) for _ in range(3)]
        two = [startBackend(self) for _ in range(2)]
        relay, port = await startRelay(
            self,
            "[relay]\n"
            "[route:three]\npath = /three\nbalancer = random_two\n"
            f"backends = {' '.join(b.url for b in three)}\n"
            "[route:two]\npath = /two\nbalancer = random_two\n"
            f"backends = {' '.join(b.url for b in two)}\n",
        )
        routes = relay.routes.routes
        cast(RandomTwo, routes[0].balancer).random.seed(2)
        for route, backends, count, spread in [
            (routes[0], three, 24, 3),
            (routes[1], two, 6, 0),
        ]:
            held = [await self.hold(port, route.config.path) for _ in range(count)]
            counts = Counter(p for _, p in held)
            loads = [counts[b.port] for b in backends]
            self.assertLessEqual(max(loads) - min(loads), spread, loads)
            self.assertEqual(loads, [b.connections for b in route.backends])

    async def test_consistentHash(self) -> None:
        """
        With C{hash_on = header:X-User}, a user reaches the same backend on
        every connection, different users several backends; clients
        without the header are hashed on their address, all the same here.
        """
        backends = [startBackend(self) for _ in range(3)]
        urls = " ".join(f"{b.url} name=n{i}" for i, b in enumerate(backends))
        _, port = await startRelay(
            self,
            "[relay]\n[route:chat]\npath = /chat\nbalancer = consistent_hash\n"
            f"hash_on = header:X-User\nbackends = {urls}\n",
        )
        users = [f"user-{i}" for i in range(12)]

        def run() -> tuple[dict[str, set[int]], set[int]]:
            seen: dict[str, set[int]] = {u: set() for u in users}
            for _ in range(2):
                for u in users:
                    seen[u].add(visit(port, "/chat", {"X-User": u}))
            anonymous = {visit(port, "/chat") for _ in range(4)}
            return seen, anonymous

        seen, anonymous = await inThread(run)
        for u in users:
            self.assertEqual(len(seen[u]), 1, (u, seen[u]))
        self.assertGreaterEqual(len(set.union(*seen.values())), 2, seen)
        self.assertEqual(len(anonymous), 1)

    async def test_first(self) -> None:
        """
        Every connection reaches the first listed backend; when it is
        unreachable, the second.
        """
        a, b = startBackend(self), startBackend(self)
        _, port = await startRelay(
            self,
            "[relay]\n"
            "[route:one]\npath = /one\nbalancer = first\n"
            f"backends = {a.url} {b.url}\n"
            "[route:two]\npath = /two\nbalancer = first\n"
            f"backends = ws://127.0.0.1:{closedPort()}/ {b.url}\n",
        )

        def run() -> tuple[list[int], list[int]]:
            one = [visit(port, "/one") for _ in range(4)]
            two = [visit(port, "/two") for _ in range(2)]
            return one, two

        one, two = await inThread(run)
        self.assertEqual(one, [a.port] * 4)
        self.assertEqual(two, [b.port] * 2)
