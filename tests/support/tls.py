"""
Certificates made for a test (a CA and leaf certificates signed by it)
and the TLS context a C{websockets} client trusts them with.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def makeCertificates(
    directory: str, hosts: list[str], authority: str = "wsrelay test CA"
) -> dict[str, str]:
    """
    Write a CA, and a server certificate signed by it for C{hosts} (names
    or IP addresses), as PEM files in C{directory}.

    @param authority: The CA's name: a client that trusts two CAs tells
        them apart by name.

    @return: Paths by role: C{ca}, C{cert}, C{key}.
    """
    now = datetime.datetime.now(datetime.UTC)
    caKey = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(authority))
        .issuer_name(_name(authority))
        .public_key(caKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(caKey, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), False)
        .sign(caKey, hashes.SHA256())
    )
    paths = {r: os.path.join(directory, f"{r}.pem") for r in ("ca", "cert", "key")}
    with open(paths["ca"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return paths


def websocketsContext(ca: str) -> ssl.SSLContext:
    """
    A client TLS context for C{websockets}' threaded client, trusting
    C{ca}, at most TLS 1.2.

    Over TLS 1.3 that client now and then never sends its opening handshake
    (a few connections in a thousand), whatever the server: a direct
    C{websockets} server too.  Its reading thread is inside C{SSL_read},
    taking in the server's session tickets, while its other thread calls
    C{SSL_write} on the same SSL object, which OpenSSL does not allow; the
    request is lost in the client though C{sendall} returned.  The evidence
    and the command that reproduces it are in docs/reliability.md, "TLS 1.3
    and C{websockets}' threaded client".  A one-thread C{ssl} socket client
    never stalls; L{closeAndWaitForEOF} is such a client, so TLS 1.3 is
    tested too.
    """
    context = ssl.create_default_context(cafile=ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context
