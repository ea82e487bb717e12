"""
wsrelay's built-in balancers, registered as any third-party balancer is.
"""

from wsrelay.balancers import first, roundRobin

__all__ = ["first", "roundRobin"]
