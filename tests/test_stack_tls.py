"""The local stack's throwaway CA (trustme): made once, kept while usable, renewed near
expiry, and its private key never written."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from cryptography import x509

from tessera_stack.tls import RENEW_BEFORE, VALIDITY, ensure_certificate


def test_the_certificate_is_made_once_kept_and_renewed_before_it_expires(tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    files = ensure_certificate(tmp_path / "tls", now=now)
    assert sorted(p.name for p in files.directory.iterdir()) == [
        "ca.pem",
        "server.key",
        "server.pem",
    ]
    assert oct(files.key.stat().st_mode & 0o777) == "0o600"
    first = files.cert.read_bytes()

    assert ensure_certificate(files.directory, now=now + datetime.timedelta(days=1)) == files
    assert files.cert.read_bytes() == first  # still usable: kept

    late = now + VALIDITY - RENEW_BEFORE + datetime.timedelta(days=1)
    ensure_certificate(files.directory, now=late)
    renewed = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert files.cert.read_bytes() != first
    assert renewed.not_valid_after_utc > late + RENEW_BEFORE


def test_a_client_that_trusts_the_ca_accepts_the_server_for_both_names(tmp_path: Path) -> None:
    files = ensure_certificate(tmp_path / "tls")
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    context = ssl.create_default_context(cafile=str(files.ca_cert))
    assert context.get_ca_certs()[0]["subject"]  # the CA loads as a trust anchor
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.cert, files.key)  # the key matches the certificate
