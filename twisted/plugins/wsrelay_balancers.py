"""
wsrelay's built-in balancers, registered as any third-party balancer is:
lazily, each imported from L{wsrelay.balancers} when a route chooses it.
"""

from wsrelay.dropins import BalancerPlugin

roundRobin = BalancerPlugin(
    "round_robin",
    "wsrelay.balancers.RoundRobin",
    "smooth weighted round robin (nginx's order)",
)
first = BalancerPlugin(
    "first",
    "wsrelay.balancers.First",
    "active/standby: the first healthy backend in listed order",
)
leastConnections = BalancerPlugin(
    "least_connections",
    "wsrelay.balancers.LeastConnections",
    "fewest open connections per unit of weight; equals take turns",
)
randomTwo = BalancerPlugin(
    "random_two",
    "wsrelay.balancers.RandomTwo",
    "the less loaded of two backends drawn at random (power of two choices)",
)
consistentHash = BalancerPlugin(
    "consistent_hash",
    "wsrelay.balancers.ConsistentHash",
    "consistent hash ring on hash_on (ip, path, header:, cookie: or query:)",
    ("hash_on",),
)
