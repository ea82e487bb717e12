"""
Authorization before the upgrade: the route's authorizer (C{auth = NAME})
is asked about each request before any backend is contacted
(L{wsrelay.auth.gate}); the built-in ones are C{jwt}
(L{wsrelay.auth.jwtauth}) and C{http} (L{wsrelay.auth.httpauth}).

Importing this package imports nothing else: the dropin and the
configuration read the built-ins' option keys from here.
"""

#: The value of C{auth} that turns authorization off (the default).
NO_AUTH = "none"

#: The route keys the C{jwt} authorizer reads.
JWT_OPTIONS = (
    "jwt_key_file",
    "jwt_algorithms",
    "jwt_from",
    "jwt_audience",
    "jwt_issuer",
    "jwt_leeway",
    "jwt_headers",
    "jwt_expiry",
)

#: The route keys the C{http} authorizer reads.
HTTP_OPTIONS = ("auth_url", "auth_headers")
