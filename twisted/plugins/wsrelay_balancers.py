"""
wsrelay's built-in balancers, registered as any third-party balancer is.
"""

from wsrelay.balancers import (
    consistentHash,
    first,
    leastConnections,
    randomTwo,
    roundRobin,
)

__all__ = ["consistentHash", "first", "leastConnections", "randomTwo", "roundRobin"]
