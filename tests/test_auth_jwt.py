"""
The C{jwt} authorizer against real tokens, made with PyJWT in the test and
signed with an HMAC secret, an RSA key (PEM) or EC keys (a JWKS file).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from wsrelay.auth.gate import AuthorizerContext
from wsrelay.auth.jwtauth import INVALID, MISSING, JWTAuthorizer
from wsrelay.interfaces import (
    Allow,
    AuthRequest,
    Deny,
    IAuthorizer,
    IAuthorizerFactory,
)
from wsrelay.plugins import authorizerFactories

SECRET = b"s3cret-of-at-least-32-bytes-for-hs256!"


def request(
    headers: tuple[tuple[str, str], ...] = (),
    query: str = "",
    cookies: Mapping[str, str] | None = None,
) -> AuthRequest:
    """
    @return: A request for C{/chat} with these fields.
    """
    return AuthRequest("GET", "/chat", query, headers, cookies or {}, "10.0.0.1", "r")


def bearer(token: str) -> AuthRequest:
    """
    @return: A request with C{Authorization: Bearer token}.
    """
    return request((("Authorization", f"Bearer {token}"),))


def base64url(data: bytes) -> bytes:
    """
    @return: C{data} in unpadded base64url, as JWTs write it.
    """
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def claims(**extra: Any) -> dict[str, Any]:
    """
    @return: Claims of a token valid for a minute, with C{extra}.
    """
    return {"sub": "alice", "exp": int(time.time()) + 60, **extra}


class JWTAuthorizerTests(SynchronousTestCase):
    """
    L{JWTAuthorizer} built from options and a key file, as a route does.
    """

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.write("secret", SECRET + b"\n")

    def write(self, name: str, data: bytes) -> str:
        """
        Write a file of the test's folder.
        """
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return name

    def build(self, **options: str) -> Any:
        """
        @return: An authorizer from C{options}, by default HS256 with the
            test's secret, built through the installed C{jwt} plugin.
        """
        options.setdefault("jwt_key_file", "secret")
        options.setdefault("jwt_algorithms", "HS256")
        context = AuthorizerContext(None, "r", self.directory)
        return authorizerFactories()["jwt"].build(options, context)

    def test_plugin(self) -> None:
        """
        The C{jwt} plugin is found, declares its keys, and builds an
        L{IAuthorizer}.
        """
        factory = authorizerFactories()["jwt"]
        self.assertTrue(verifyObject(IAuthorizerFactory, factory))
        self.assertIn("jwt_key_file", factory.options)
        self.assertTrue(verifyObject(IAuthorizer, self.build()))

    def test_credentialParameters(self) -> None:
        """
        A token read from the query names its parameter as a credential
        (a fan-out channel is not told apart by it); one read from a header
        or a cookie names none.
        """
        self.assertEqual(
            self.build(jwt_from="query:access_token").credentialParameters,
            ("access_token",),
        )
        self.assertEqual(self.build().credentialParameters, ())
        self.assertEqual(self.build(jwt_from="cookie:t").credentialParameters, ())

    def test_hmacAllows(self) -> None:
        """
        A valid HS256 token is allowed; the claims of C{jwt_headers} become
        upstream header fields (a string as it is, another value as JSON),
        and every field it names is one the client's request loses, also
        that of a claim the token lacks.
        """
        authorizer = self.build(jwt_headers="sub:X-User roles:X-Roles none:X-None")
        token = jwt.encode(claims(roles=["a", "b"]), SECRET, algorithm="HS256")
        answer = authorizer.authorize(bearer(token))
        self.assertEqual(
            answer,
            Allow(
                (("X-User", "alice"), ("X-Roles", '["a", "b"]')),
                None,
                ("X-User", "X-Roles", "X-None"),
            ),
        )

    def test_missing(self) -> None:
        """
        No token, another scheme, or an empty one: 401 with
        C{WWW-Authenticate: Bearer}.
        """
        authorizer = self.build()
        for r in (request(), request((("Authorization", "Basic YWxpY2U6eA=="),))):
            answer = authorizer.authorize(r)
            self.assertEqual(answer, MISSING)
            self.assertEqual(answer.status, 401)
            self.assertIn(("WWW-Authenticate", "Bearer"), answer.headers)

    def test_invalid(self) -> None:
        """
        A token signed with another secret, expired, not yet valid, of
        another algorithm, with the C{none} algorithm, or garbage: 401 with
        an C{invalid_token} challenge.
        """
        authorizer = self.build()
        now = int(time.time())
        bad = [
            jwt.encode(claims(), b"another-secret-of-32-bytes-or-more!!", "HS256"),
            jwt.encode(claims(exp=now - 10), SECRET, "HS256"),
            jwt.encode(claims(nbf=now + 60), SECRET, "HS256"),
            jwt.encode(claims(), SECRET * 2, "HS512"),
            jwt.encode(claims(), None, "none"),
            "not.a.token",
        ]
        for token in bad:
            answer = authorizer.authorize(bearer(token))
            self.assertEqual(answer, INVALID, token)
            self.assertIsInstance(answer, Deny)
            self.assertEqual(
                dict(answer.headers)["WWW-Authenticate"], 'Bearer error="invalid_token"'
            )

    def test_leeway(self) -> None:
        """
        C{jwt_leeway} accepts a token expired that many seconds ago.
        """
        token = jwt.encode(claims(exp=int(time.time()) - 5), SECRET, "HS256")
        self.assertIsInstance(
            self.build(jwt_leeway="30").authorize(bearer(token)), Allow
        )

    def test_audienceIssuer(self) -> None:
        """
        With C{jwt_audience} and C{jwt_issuer}, only a token for that
        audience from that issuer is allowed.
        """
        authorizer = self.build(jwt_audience="a1 a2", jwt_issuer="https://idp/")
        good = jwt.encode(claims(aud="a2", iss="https://idp/"), SECRET, "HS256")
        self.assertIsInstance(authorizer.authorize(bearer(good)), Allow)
        for other in (claims(aud="a3", iss="https://idp/"), claims(aud="a1")):
            token = jwt.encode(other, SECRET, "HS256")
            self.assertEqual(authorizer.authorize(bearer(token)), INVALID)

    def test_from(self) -> None:
        """
        C{jwt_from} takes the token from a query parameter, a cookie or
        another header (with or without C{Bearer}).
        """
        token = jwt.encode(claims(), SECRET, "HS256")
        cases = [
            ("query:access_token", request(query=f"x=1&access_token={token}")),
            ("cookie:jwt", request(cookies={"jwt": token})),
            ("header:X-Token", request((("x-token", token),))),
        ]
        for where, r in cases:
            self.assertIsInstance(self.build(jwt_from=where).authorize(r), Allow)
            self.assertEqual(self.build(jwt_from=where).authorize(request()), MISSING)

    def test_expiryClose(self) -> None:
        """
        With C{jwt_expiry = close} the allow carries the token's C{exp}
        plus the leeway; without it, no expiry.
        """
        exp = int(time.time()) + 60
        token = jwt.encode(claims(exp=exp), SECRET, "HS256")
        answer = self.build(jwt_expiry="close", jwt_leeway="2").authorize(bearer(token))
        self.assertEqual(answer.expires, exp + 2)
        self.assertIsNone(self.build().authorize(bearer(token)).expires)

    def test_rsaPEM(self) -> None:
        """
        An RS256 token is checked with a PEM public key; an HS256 token
        signed with that PEM text as a secret (algorithm confusion) is not
        accepted.
        """
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        authorizer = self.build(
            jwt_key_file=self.write("rsa.pem", pem), jwt_algorithms="RS256"
        )
        token = jwt.encode(claims(), key, "RS256")
        self.assertIsInstance(authorizer.authorize(bearer(token)), Allow)
        # PyJWT refuses to sign so: the forgery is made by hand.
        signing = b".".join(
            base64url(json.dumps(part).encode())
            for part in ({"alg": "HS256", "typ": "JWT"}, claims())
        )
        signature = hmac.new(pem, signing, hashlib.sha256).digest()
        forged = (signing + b"." + base64url(signature)).decode()
        self.assertEqual(authorizer.authorize(bearer(forged)), INVALID)

    def test_jwks(self) -> None:
        """
        With a JWKS file, the key is chosen by the token's C{kid}; an
        unknown C{kid} is refused.
        """
        keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(2)]
        jwks = {
            "keys": [
                {
                    **json.loads(jwt.algorithms.ECAlgorithm.to_jwk(k.public_key())),
                    "kid": f"k{i}",
                    "alg": "ES256",
                }
                for i, k in enumerate(keys)
            ]
        }
        name = self.write("jwks.json", json.dumps(jwks).encode())
        authorizer = self.build(jwt_key_file=name, jwt_algorithms="ES256")
        for i, k in enumerate(keys):
            token = jwt.encode(claims(), k, "ES256", headers={"kid": f"k{i}"})
            self.assertIsInstance(authorizer.authorize(bearer(token)), Allow)
        wrong = jwt.encode(claims(), keys[0], "ES256", headers={"kid": "k1"})
        unknown = jwt.encode(claims(), keys[0], "ES256", headers={"kid": "k9"})
        for token in (wrong, unknown):
            self.assertEqual(authorizer.authorize(bearer(token)), INVALID)

    def test_rereadOnBuild(self) -> None:
        """
        The key file is read when the authorizer is built (at each route
        build, so on SIGHUP): a new secret applies to the next build only.
        """
        old = self.build()
        self.write("secret", b"a-brand-new-secret-of-32-bytes-long!")
        token = jwt.encode(claims(), b"a-brand-new-secret-of-32-bytes-long!", "HS256")
        self.assertEqual(old.authorize(bearer(token)), INVALID)
        self.assertIsInstance(self.build().authorize(bearer(token)), Allow)

    def test_badOptions(self) -> None:
        """
        A bad option raises L{ValueError} whose message starts with its key.
        """
        self.write("pem", b"-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----\n")
        cases: Mapping[str, dict[str, str]] = {
            "jwt_algorithms: required": {"jwt_algorithms": ""},
            "jwt_algorithms: 'none' is never accepted": {
                "jwt_algorithms": "HS256 none"
            },
            "jwt_algorithms: unknown algorithm 'HS999'": {"jwt_algorithms": "HS999"},
            "jwt_algorithms: HMAC and public-key": {"jwt_algorithms": "HS256,RS256"},
            "jwt_key_file: cannot read": {"jwt_key_file": "absent"},
            "jwt_key_file: expected a PEM public key": {
                "jwt_key_file": "secret",
                "jwt_algorithms": "RS256",
            },
            "jwt_key_file: expected an HMAC secret": {"jwt_key_file": "pem"},
            "jwt_key_file: not a usable JWKS": {
                "jwt_key_file": self.write("j", b'{"keys": []}')
            },
            "jwt_from: expected header:NAME": {"jwt_from": "body:x"},
            "jwt_leeway: expected seconds >= 0": {"jwt_leeway": "-1"},
            "jwt_headers: expected CLAIM:Header": {"jwt_headers": "sub:X_User"},
            "jwt_expiry: expected close or ignore": {"jwt_expiry": "later"},
        }
        for message, options in cases.items():
            with self.assertRaises(ValueError) as raised:
                self.build(**options)
            self.assertTrue(str(raised.exception).startswith(message), raised.exception)
        with self.assertRaises(ValueError) as raised:
            JWTAuthorizer(
                {"jwt_algorithms": "HS256"}, AuthorizerContext(None, "r", "/")
            )
        self.assertEqual(str(raised.exception), "jwt_key_file: required")
