"""TLS for the grid and the node's HTTP server: SSL contexts, and a private CA for local clusters.

A node started with a certificate serves everything on its one port over TLS (S3, admin and the
grid), and its grid dials ``wss://`` with a client context that verifies the peer's certificate
against ``tls_ca`` (or the system's trust store), host name or IP address included. The grid
handshake still authenticates both sides with the cluster secret; TLS adds secrecy, integrity
of everything after the handshake, and proof to the dialer that no one is relaying it
(``docs/security.md``, "TLS").

:func:`make_ca` and :func:`issue_certificate` build what ``minigrid cluster up --tls`` needs: a
private CA and one certificate per node, with the ``cryptography`` package. Private keys are
written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Every node certificate also names these, so ``https://localhost:PORT`` works too.
LOCAL_NAMES: Final = ("127.0.0.1", "::1", "localhost")
CA_DAYS: Final = 3650
CERT_DAYS: Final = 825


class TLSConfigError(ValueError):
    """A certificate, key or CA file cannot be used; the message names it and says why."""


def server_context(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    """The context a node serves with: TLS 1.2 or later, its certificate chain and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load certificate {cert} with key {key}: {exc}") from exc
    return context


def client_context(ca: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """The context a node dials peers with: verify the peer's certificate and its name
    against ``ca`` (a PEM bundle), or against the system's trust store when ``ca`` is None."""
    try:
        context = ssl.create_default_context(cafile=os.fspath(ca) if ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load CA file {ca}: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


# --- a private CA -----------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only, atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    # An hour of slack backwards, for clocks a little behind ours.
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(hours=1), now + dt.timedelta(days=days)


_CA_USAGE: Final = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


def make_ca(directory: Path, name: str = "minigrid private CA", days: int = CA_DAYS) -> KeyPair:
    """Create ``directory/ca.crt`` and ``directory/ca.key`` (0600): a self-signed CA that may
    sign end-entity certificates only."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    pair = KeyPair(directory / "ca.crt", directory / "ca.key")
    _write_private(pair.key, _key_pem(key))
    _write_public(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
    return pair


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def issue_certificate(
    ca: KeyPair,
    directory: Path,
    name: str,
    hosts: Iterable[str],
    days: int = CERT_DAYS,
) -> KeyPair:
    """Create ``directory/NAME.crt`` and ``NAME.key`` (0600), signed by ``ca``, for a node that
    answers as any of ``hosts`` (host names or IP addresses, without ports) and the local names.
    It serves TLS and also dials with it, so it is good for both server and client auth."""
    try:
        ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise TLSConfigError(f"cannot read the CA in {ca.cert.parent}: {exc}") from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TLSConfigError(f"{ca.key} is not the EC key this module makes")
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san([*hosts, *LOCAL_NAMES]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    _write_private(pair.key, _key_pem(key))
    _write_public(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
    return pair


__all__ = [
    "LOCAL_NAMES",
    "KeyPair",
    "TLSConfigError",
    "client_context",
    "issue_certificate",
    "make_ca",
    "server_context",
]
