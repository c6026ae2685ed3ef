"""Self-signed certificates for tests, demos and first runs.

A self-signed certificate lets ``tls://``, ``wss://`` and ``quic://`` work without a certificate
authority: give the certificate and key to the server and the same certificate to the client as
the one to trust (``ca_data`` / ``ca_file``).  Never use one where clients cannot be told which
certificate to trust; that is what a real certificate authority is for.

This module lives outside :mod:`msgtrans.core` because it reads the clock (validity dates) and
writes files.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .core.errors import ConfigurationError

__all__ = ["DEFAULT_HOSTNAMES", "generate_self_signed", "write_self_signed"]

#: The names a local test server is reached by.
DEFAULT_HOSTNAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

_KEY_TYPES = ("ec", "rsa", "ed25519")
# Validity starts a little in the past so that a peer whose clock lags still accepts it.
_BACKDATE = datetime.timedelta(hours=1)

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _san_entry(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        # Certificates carry A-labels: "bücher.example" becomes "xn--bcher-kva.example".
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ConfigurationError("hostnames", f"{name!r} is not a valid host name") from exc
    if not ascii_name or any(c.isspace() for c in ascii_name):
        raise ConfigurationError("hostnames", f"{name!r} is not a valid host name")
    return x509.DNSName(ascii_name)


def _new_key(key_type: str) -> _PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ConfigurationError(
        "key_type", f"must be one of {', '.join(_KEY_TYPES)}, got {key_type!r}"
    )


def generate_self_signed(
    hostnames: Iterable[str] = DEFAULT_HOSTNAMES,
    *,
    days: int = 365,
    key_type: str = "ec",
) -> tuple[bytes, bytes]:
    """Create a self-signed server certificate and its private key.

    The certificate names every entry of *hostnames* in its SubjectAlternativeName (IP
    addresses as such, everything else as DNS names; the first is also the common name), is
    valid from an hour ago for *days* days, and may be used for TLS servers and clients.  The
    default EC P-256 key works with the standard library's ``ssl`` (also under Python 3.13's
    strict verification) and with aioquic.

    Args:
        hostnames: names and addresses the certificate is for
            (default ``("localhost", "127.0.0.1", "::1")``).
        days: how long it is valid (default 365).
        key_type: ``"ec"`` (P-256, default), ``"rsa"`` (2048 bits) or ``"ed25519"``.

    Returns:
        ``(certificate PEM, private key PEM)``; the key is unencrypted PKCS#8.

    Raises:
        ConfigurationError: no host name, an invalid host name, *days* below 1, or an unknown
            *key_type*.
    """
    names = list(hostnames)
    if isinstance(hostnames, str) or not names:
        raise ConfigurationError(
            "hostnames", f"must be a non-empty sequence of names, got {hostnames!r}"
        )
    if days < 1:
        raise ConfigurationError("days", f"must be at least 1, got {days}")
    key = _new_key(key_type)
    san = [_san_entry(name) for name in names]
    # A common name is limited to 64 characters; the SAN is what verifiers check anyway.
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "msgtrans self-signed"),
            x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64]),
        ]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=key_type == "rsa",
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        # Key identifiers keep strict verifiers (Python 3.13's VERIFY_X509_STRICT) content.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False
        )
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(key, algorithm)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def write_self_signed(
    directory: str | os.PathLike[str],
    hostnames: Iterable[str] = DEFAULT_HOSTNAMES,
    *,
    days: int = 365,
    key_type: str = "ec",
) -> tuple[Path, Path]:
    """Create a self-signed certificate and key (see :func:`generate_self_signed`) as files.

    Writes ``cert.pem`` and ``key.pem`` into *directory* (created if missing), replacing files
    of those names.  The key file is readable by its owner only (mode 0600 on POSIX).

    Returns:
        ``(certificate path, key path)``.

    Raises:
        ConfigurationError: as :func:`generate_self_signed`.
        OSError: the files cannot be written.
    """
    cert_pem, key_pem = generate_self_signed(hostnames, days=days, key_type=key_type)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    cert_path = folder / "cert.pem"
    key_path = folder / "key.pem"
    cert_path.write_bytes(cert_pem)
    # Create the key file with its final mode, so the key is never readable by others, even
    # for a moment; chmod as well in case the file existed with a wider mode.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    os.chmod(key_path, 0o600)
    return cert_path, key_path
