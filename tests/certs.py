"""Throw-away certificates for TLS tests: a CA, a server certificate for 127.0.0.1/localhost,
and a client certificate, written as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # A second client certificate, with another subject (another principal).
    other_client_cert: Path
    other_client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject, public_key, issuer, issuer_key, *, ca=False, sans=(), usage=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_certificates(directory: Path) -> Certificates:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue(
        _name("sam3-grpc test CA"), ca_key.public_key(), _name("sam3-grpc test CA"), ca_key, ca=True
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        _name("localhost"),
        server_key.public_key(),
        ca_cert.subject,
        ca_key,
        sans=(x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )

    def client(name: str):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(
            _name(name),
            key.public_key(),
            ca_cert.subject,
            ca_key,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        return cert, key

    client_cert, client_key = client("test client")
    other_cert, other_key = client("other client")
    pem = serialization.Encoding.PEM
    return Certificates(
        ca=_write(directory / "ca.pem", ca_cert.public_bytes(pem)),
        server_cert=_write(directory / "server.pem", server_cert.public_bytes(pem)),
        server_key=_write(directory / "server.key", _key_pem(server_key)),
        client_cert=_write(directory / "client.pem", client_cert.public_bytes(pem)),
        client_key=_write(directory / "client.key", _key_pem(client_key)),
        other_client_cert=_write(directory / "other.pem", other_cert.public_bytes(pem)),
        other_client_key=_write(directory / "other.key", _key_pem(other_key)),
    )
