"""
Health checking: the built-in checkers (L{wsrelay.health.checkers}),
imported only when a route chooses one, and the monitor that keeps each
backend's state (L{wsrelay.health.monitor}).
"""
