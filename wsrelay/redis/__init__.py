"""
Redis for wsrelay: a small Twisted-native RESP2 client (L{protocol}), a
connection kept up from a C{redis://} or C{rediss://} URL (L{client}), and
the C{redis} fan-out source reading a stream (L{source}).

Importing this package imports nothing else: the C{redis} dropin and the
configuration read L{OPTIONS} from here.
"""

#: The route keys the C{redis} source reads.
OPTIONS = (
    "redis",
    "redis_password_file",
    "redis_ca_file",
    "stream",
    "history",
    "ingest",
    "lease",
)
