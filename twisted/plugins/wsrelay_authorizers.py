"""
wsrelay's built-in authorizers, registered as any third-party authorizer
is: lazily, each imported when a route chooses it (C{auth = NAME}).
"""

from wsrelay.auth import HTTP_OPTIONS, JWT_OPTIONS
from wsrelay.dropins import AuthorizerPlugin

jwt = AuthorizerPlugin(
    "jwt",
    "wsrelay.auth.jwtauth.JWTAuthorizer",
    "a JSON Web Token (header, query or cookie) checked with PyJWT",
    JWT_OPTIONS,
)
http = AuthorizerPlugin(
    "http",
    "wsrelay.auth.httpauth.HTTPAuthorizer",
    "a GET to auth_url decides, as nginx's auth_request",
    HTTP_OPTIONS,
)
