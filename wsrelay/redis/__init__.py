"""
Redis for wsrelay: a small Twisted-native RESP2 client (L{protocol}), a
connection kept up from a C{redis://} or C{rediss://} URL (L{client}), and
the C{redis} fan-out source reading a stream (L{source}).
"""
