"""
The WebSocket legs of a relayed connection, on Autobahn: the client's
(L{frontend}, its requests screened first by L{screening}) and the
backend's (L{upstream}), what both share (L{legs}, L{legclosing}), the
HTTP heads the relay reads and writes (L{handshake}), the frames it writes
itself (L{framing}, L{writes}), and every use of Autobahn's private
attributes (L{_autobahn}).
"""
