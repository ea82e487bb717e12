"""
The proxy mode: one backend connection per client.  L{session} owns a
proxied connection's two legs and their life, with L{opening} (the
upstream within the handshake's budget), L{pairing}, L{closing},
L{failover} and L{idle}; the passthrough data path is L{pipe} and
L{direction}, with L{inflate} counting compressed messages against the
limits.
"""
