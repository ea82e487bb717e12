# -*- test-case-name: tests.test_tls -*-
"""
Reaching C{wss://} backends: certificate verification against the system's
trust store or a route's C{ca_file}, SNI from the backend URL's host, or no
verification at all with C{verify = off}.

Twisted's C{tls:} endpoint string has no way to turn verification off, so
TLS endpoints are built here from L{HostnameEndpoint} and
L{wrapClientTLS}.
"""

from __future__ import annotations

import math
import re
from typing import Any

from OpenSSL import SSL
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from zope.interface import implementer

_PEM = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


class BadCAFile(ValueError):
    """
    A C{ca_file} holds no usable certificate.
    """


def loadTrust(path: str) -> Any:
    """
    @return: A trust root of every certificate in the PEM file C{path}.
    @raise BadCAFile: When it holds none, or one that cannot be read.
    """
    with open(path, "rb") as f:
        blocks = _PEM.findall(f.read())
    if not blocks:
        raise BadCAFile(f"no PEM certificate in {path}")
    try:
        return trustRootFromCertificates([Certificate.loadPEM(b) for b in blocks])
    except SSL.Error as e:
        raise BadCAFile(f"cannot read a certificate in {path}: {e}") from None


@implementer(IOpenSSLClientConnectionCreator)
class Unverified:
    """
    TLS without verifying the server's certificate (C{verify = off}), still
    sending SNI.
    """

    def __init__(self, hostname: str) -> None:
        self._hostname = hostname
        self._context = CertificateOptions().getContext()

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        A connection for one TLS client.
        """
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if not (isIPAddress(self._hostname) or isIPv6Address(self._hostname)):
            connection.set_tlsext_host_name(self._hostname.encode("idna"))
        return connection


def tlsEndpoint(
    reactor: Any,
    host: str,
    port: int,
    timeout: float,
    verify: bool = True,
    trust: Any = None,
) -> IStreamClientEndpoint:
    """
    @param trust: A trust root (see L{loadTrust}); the system's when
        L{None}.
    @return: An endpoint that reaches C{host} over TLS, checking that its
        certificate is valid for C{host} unless C{verify} is false.
    """
    creator: Any
    if verify:
        creator = optionsForClientTLS(
            host, trustRoot=trust if trust is not None else platformTrust()
        )
    else:
        creator = Unverified(host)
    seconds = max(1, math.ceil(timeout))
    return wrapClientTLS(creator, HostnameEndpoint(reactor, host, port, seconds))
