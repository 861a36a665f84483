"""TLS files read and checked at start: an error names the flag, the file and the real reason; dates are warned about.

grpc-core reports a bad certificate or key only as "Failed to bind to address", so every file is parsed
here first (with `cryptography`), and the pair is loaded into an `ssl` context (OpenSSL's own check that
the key belongs to the certificate) before grpc or aiohttp sees it.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509

log = logging.getLogger("seedstream.server")

GRPC_FLAGS = ("--tls-cert", "--tls-key")
HTTP_FLAGS = ("--http-tls-cert", "--http-tls-key")


class TlsFileError(ValueError):
    """A TLS file that cannot serve; `seedstream serve` prints it after "cannot start:"."""


def read_file(path: str, flag: str) -> bytes:
    """The file's bytes; a missing or unreadable file names the flag and the path."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise TlsFileError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise TlsFileError(f"{flag} {path}: is a directory, not a PEM file") from None
    except OSError as exc:
        raise TlsFileError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None


def parse_certificates(pem: bytes, flag: str, path: str) -> list[x509.Certificate]:
    """The certificates of a PEM chain (leaf first), or TlsFileError saying why there are none."""
    from cryptography import x509

    if b"-----BEGIN CERTIFICATE-----" not in pem:
        if b"PRIVATE KEY-----" in pem:
            raise TlsFileError(f"{flag} {path}: a private key, not a certificate (are the two files swapped?)")
        raise TlsFileError(f'{flag} {path}: no PEM certificate in the file (no "-----BEGIN CERTIFICATE-----" block)')
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise TlsFileError(f"{flag} {path}: not a valid PEM certificate ({exc})") from None


def check_private_key(pem: bytes, flag: str, path: str) -> None:
    """TlsFileError unless the file holds one unencrypted PEM private key."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # cryptography's "Password was not given but private key is encrypted"
        raise TlsFileError(
            f"{flag} {path}: the private key is encrypted, and a server cannot ask for its passphrase; "
            f"decrypt it (openssl pkey -in KEY -out KEY.plain) and keep the file private"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        what = "a certificate" if b"-----BEGIN CERTIFICATE-----" in pem else "not a PEM private key"
        raise TlsFileError(f"{flag} {path}: {what}, not a usable private key ({exc})") from None


def date_problems(certificates: list[x509.Certificate], now: datetime.datetime | None = None) -> list[str]:
    """One line per certificate that is expired or not yet valid at `now` (UTC)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    problems = []
    for index, cert in enumerate(certificates):
        which = "the certificate" if index == 0 else f"certificate {index} of the chain"
        subject = cert.subject.rfc4514_string() or "(no subject)"
        if cert.not_valid_after_utc < now:
            problems.append(f"{which} ({subject}) expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        elif cert.not_valid_before_utc > now:
            problems.append(f"{which} ({subject}) is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    return problems


def _warn_dates(certificates: list[x509.Certificate], flag: str, path: str) -> None:
    # A warning, not a refusal: a clock that is wrong, or a client that pins the key, can still work;
    # clients that check dates will fail their handshakes, so say it now, not in their logs.
    for problem in date_problems(certificates):
        log.warning("%s %s: %s; clients that check dates will refuse the handshake", flag, path, problem)


def _load_into_ssl(cert: str, key: str, flags: tuple[str, str]) -> ssl.SSLContext:
    """A server-side SSLContext holding the pair; OpenSSL's check that the key belongs to the certificate."""

    def no_passphrase() -> bytes:  # never OpenSSL's interactive prompt on a server's terminal
        raise TlsFileError(f"{flags[1]} {key}: the private key is encrypted")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # a server's context: no client certificates
    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsFileError(
                f"{flags[1]} {key} is not the private key of {flags[0]} {cert} (OpenSSL: key values mismatch)"
            ) from None
        raise TlsFileError(f"{flags[0]} {cert} with {flags[1]} {key}: OpenSSL refused the pair ({exc})") from None
    return context


def load_pair(cert: str, key: str, flags: tuple[str, str] = GRPC_FLAGS) -> tuple[bytes, bytes, ssl.SSLContext]:
    """The certificate chain's and the key's PEM bytes and an SSLContext serving them, each file checked;
    TlsFileError names the flag, the file and the reason. Dates outside the validity window are logged."""
    cert_pem, key_pem = read_file(cert, flags[0]), read_file(key, flags[1])
    certificates = parse_certificates(cert_pem, flags[0], cert)
    check_private_key(key_pem, flags[1], key)
    context = _load_into_ssl(cert, key, flags)
    _warn_dates(certificates, flags[0], cert)
    return cert_pem, key_pem, context


def load_client_ca(path: str, flag: str = "--tls-client-ca") -> bytes:
    """The CA bundle's PEM bytes, with at least one certificate; its dates are checked as a server certificate's."""
    pem = read_file(path, flag)
    certificates = parse_certificates(pem, flag, path)
    _warn_dates(certificates, flag, path)
    return pem
