"""A private certificate authority and a server certificate for the local stack.

nginx terminates TLS for the stack so that ``Secure`` and ``__Host-``
cookies work end to end on loopback. The launcher makes a throwaway CA and
one server certificate signed by it, for ``127.0.0.1`` and ``localhost``;
clients trust ``ca.pem`` (``curl --cacert``, ``ssl.create_default_context
(cafile=...)``). The CA's private key is never written anywhere: nothing
else can ever be signed by a CA someone added to a trust store, and when
the server certificate needs renewing both are simply made anew.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

__all__ = ["DEFAULT_HOSTS", "TlsFiles", "ensure_certificate"]

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
VALIDITY = datetime.timedelta(days=365)
# A certificate closer than this to its expiry is replaced at the next `up`.
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class TlsFiles:
    """Where the stack's certificate files live, under one directory."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate clients trust."""
        return self.directory / "ca.pem"

    @property
    def cert(self) -> Path:
        """The server certificate nginx presents."""
        return self.directory / "server.pem"

    @property
    def key(self) -> Path:
        """The server's private key (mode 0600)."""
        return self.directory / "server.key"


def ensure_certificate(
    directory: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    now: datetime.datetime | None = None,
) -> TlsFiles:
    """Make (or keep) a CA and a server certificate for ``hosts`` in ``directory``.

    Existing files are kept while they parse, cover every host, chain to
    the CA and stay valid for at least :data:`RENEW_BEFORE`.
    """
    files = TlsFiles(directory)
    current = now or datetime.datetime.now(datetime.UTC)
    if not _usable(files, hosts, current):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _generate(files, hosts, current)
    return files


def _usable(files: TlsFiles, hosts: Sequence[str], now: datetime.datetime) -> bool:
    try:
        ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    covered = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    covered |= set(names.get_values_for_type(x509.DNSName))
    if not set(hosts) <= covered or cert.not_valid_after_utc - now < RENEW_BEFORE:
        return False
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return key.public_key() == cert.public_key()


def _generate(files: TlsFiles, hosts: Sequence[str], now: datetime.datetime) -> None:
    # trustme (a well-kept library for exactly this): an ECDSA P-256 CA, and a
    # server certificate for ``hosts`` signed by it. Only the CA's certificate
    # is written; its key dies with this function.
    ca = trustme.CA(organization_name="tessera local stack")
    server = ca.issue_cert(
        *hosts,
        not_before=now - datetime.timedelta(minutes=5),  # tolerate small clock skew
        not_after=now + VALIDITY,
    )
    _write(files.key, server.private_key_pem.bytes(), 0o600)
    _write(files.cert, server.cert_chain_pems[0].bytes(), 0o644)
    _write(files.ca_cert, ca.cert_pem.bytes(), 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)
