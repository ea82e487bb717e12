# -*- test-case-name: tests.test_auth_jwt -*-
"""
The C{jwt} authorizer: a JSON Web Token in a header, a query parameter or
a cookie, checked with PyJWT (signature, C{exp}, C{nbf}, C{aud}, C{iss})
against a key read from C{jwt_key_file} when the route is built (at start
and on reload).  A missing or invalid token gets 401 with
C{WWW-Authenticate: Bearer}.

The key file is read with PyJWT's own loaders (C{PyJWKSet.from_json} for
a JWKS): never C{PyJWKClient}, which fetches with blocking calls.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from zope.interface import implementer

from wsrelay.interfaces import (
    Allow,
    AuthRequest,
    Deny,
    IAuthorizer,
    IAuthorizerContext,
)

#: The HMAC algorithms: a shared secret, never a public key.
_HMAC = frozenset({"HS256", "HS384", "HS512"})

#: A header field name (RFC 9110 5.1: a token), without C{_}.
_NAME = re.compile(r"[!#$%&'*+.^`|~0-9A-Za-z-]+\Z")

_FROM = re.compile(r"(header|query|cookie):(.+)\Z")

_PLAIN = ("Content-Type", "text/plain; charset=utf-8")


def _split(value: str) -> list[str]:
    """
    @return: The words of C{value}, separated by spaces or commas.
    """
    return [w for w in re.split(r"[\s,]+", value) if w]


def _algorithms(options: Mapping[str, str]) -> tuple[str, ...]:
    """
    @raise ValueError: When C{jwt_algorithms} is missing, names C{none} or
        an unknown algorithm, or mixes HMAC and public-key ones.
    """
    given = _split(options.get("jwt_algorithms", ""))
    if not given:
        raise ValueError("jwt_algorithms: required (HS256, RS256, ES256...)")
    known = jwt.algorithms.get_default_algorithms()
    for name in given:
        if name.lower() == "none":
            raise ValueError("jwt_algorithms: 'none' is never accepted")
        if name not in known:
            raise ValueError(
                f"jwt_algorithms: unknown algorithm {name!r}; known: "
                + ", ".join(sorted(n for n in known if n != "none"))
            )
    if len({name in _HMAC for name in given}) > 1:
        raise ValueError("jwt_algorithms: HMAC and public-key algorithms mixed")
    return tuple(given)


def _loadKeys(path: str, hmac: bool) -> tuple[Any, jwt.PyJWKSet | None]:
    """
    Read the key file: an HMAC secret (with HMAC algorithms), else a PEM
    public key or certificate, or a JWKS.

    @return: The key, or L{None} and the key set.
    @raise ValueError: When it cannot be read or used.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"jwt_key_file: cannot read {path!r}: {e.strerror}") from None
    text = data.strip()
    if text.startswith(b"{"):
        try:
            keys = jwt.PyJWKSet.from_json(text.decode("utf-8"))
        except (jwt.PyJWTError, ValueError) as e:
            raise ValueError(f"jwt_key_file: not a usable JWKS: {e}") from None
        for key in keys.keys:
            if (key.key_type == "oct") != hmac:
                raise ValueError(
                    f"jwt_key_file: key {key.key_id!r} of type {key.key_type!r}"
                    " does not suit jwt_algorithms"
                )
        return None, keys
    if hmac:
        secret = data[:-1] if data.endswith(b"\n") else data
        secret = secret[:-1] if secret.endswith(b"\r") else secret
        if not secret or secret.startswith(b"-----BEGIN"):
            raise ValueError("jwt_key_file: expected an HMAC secret")
        return secret, None
    try:
        if b"-----BEGIN CERTIFICATE-----" in text:
            return x509.load_pem_x509_certificate(text).public_key(), None
        return load_pem_public_key(text), None
    except ValueError:
        raise ValueError(
            "jwt_key_file: expected a PEM public key, a certificate or a JWKS"
        ) from None


def _claimHeaders(value: str) -> tuple[tuple[str, str], ...]:
    """
    @return: The C{(claim, header)} pairs of C{jwt_headers}.
    """
    pairs = []
    for item in value.split():
        claim, colon, header = item.partition(":")
        if not colon or not claim or not _NAME.match(header):
            raise ValueError(f"jwt_headers: expected CLAIM:Header, got {item!r}")
        pairs.append((claim, header))
    return tuple(pairs)


def _denied(header: str, body: bytes) -> Deny:
    """
    @return: A 401 with C{WWW-Authenticate: header}.
    """
    return Deny(401, (("WWW-Authenticate", header), _PLAIN), body)


#: The answer to a request without a token.
MISSING = _denied("Bearer", b"token required\n")

#: The answer to a request with a token that is not accepted.
INVALID = _denied('Bearer error="invalid_token"', b"invalid token\n")


@implementer(IAuthorizer)
class JWTAuthorizer:
    """
    Checks a route's requests' tokens (C{auth = jwt}).
    """

    def __init__(self, options: Mapping[str, str], context: IAuthorizerContext):
        """
        Read the options and the key file.

        @raise ValueError: When an option is invalid; the message starts
            with its key.
        """
        self._algorithms = _algorithms(options)
        if "jwt_key_file" not in options:
            raise ValueError("jwt_key_file: required")
        path = os.path.join(
            context.directory, os.path.expanduser(options["jwt_key_file"])
        )
        self._key, self._keys = _loadKeys(path, self._algorithms[0] in _HMAC)
        found = _FROM.match(options.get("jwt_from", "header:Authorization"))
        if found is None:
            raise ValueError(
                "jwt_from: expected header:NAME, query:NAME or cookie:NAME, got "
                + repr(options["jwt_from"])
            )
        self._where, self._name = found.group(1), found.group(2).strip()
        #: A token in the query names no fan-out channel and never reaches
        #: a shared source (L{wsrelay.interfaces.IAuthorizer}).
        self.credentialParameters = (self._name,) if self._where == "query" else ()
        audience = _split(options.get("jwt_audience", ""))
        self._audience = audience or None
        self._issuer = options.get("jwt_issuer") or None
        try:
            self._leeway = float(options.get("jwt_leeway", "0"))
        except ValueError:
            self._leeway = -1.0
        if not 0 <= self._leeway < float("inf"):
            raise ValueError(
                f"jwt_leeway: expected seconds >= 0, got {options['jwt_leeway']!r}"
            )
        self._claims = _claimHeaders(options.get("jwt_headers", ""))
        #: The fields jwt_headers sets: a client's own never go upstream.
        self._owned = tuple(header for _, header in self._claims)
        expiry = options.get("jwt_expiry", "ignore")
        if expiry not in ("close", "ignore"):
            raise ValueError(f"jwt_expiry: expected close or ignore, got {expiry!r}")
        self._close = expiry == "close"

    def _token(self, request: AuthRequest) -> str | None:
        """
        @return: The request's token, or L{None}.
        """
        if self._where == "query":
            values = parse_qs(request.query).get(self._name)
            return values[0] if values else None
        if self._where == "cookie":
            return request.cookies.get(self._name)
        value = request.header(self._name)
        if value is None:
            return None
        scheme, space, token = value.strip().partition(" ")
        if not space:
            return scheme
        return token.strip() if scheme.lower() == "bearer" else None

    def authorize(self, request: AuthRequest) -> Allow | Deny:
        """
        Allow a request with a valid token, with its claims in the headers
        of C{jwt_headers}; deny others with 401.
        """
        token = self._token(request)
        if not token:
            return MISSING
        try:
            key = self._key
            if self._keys is not None:
                kid = jwt.get_unverified_header(token).get("kid")
                candidates = [k for k in self._keys.keys if k.key_id == kid]
                if kid is None and len(self._keys.keys) == 1:
                    candidates = list(self._keys.keys)
                if len(candidates) != 1:
                    return INVALID
                key = candidates[0].key
            claims = jwt.decode(
                token,
                key,
                algorithms=list(self._algorithms),
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
            )
        except jwt.PyJWTError:
            return INVALID
        headers = []
        for claim, header in self._claims:
            if claim in claims:
                value = claims[claim]
                text = value if isinstance(value, str) else json.dumps(value)
                headers.append((header, text))
        expires = None
        exp = claims.get("exp")
        if self._close and isinstance(exp, (int, float)):
            expires = float(exp) + self._leeway
        return Allow(tuple(headers), expires, self._owned)
