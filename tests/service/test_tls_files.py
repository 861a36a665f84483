"""TLS files at start: a missing, garbage, encrypted or mismatched file is refused naming the flag, the file
and the reason (not grpc-core's "Failed to bind"); an expired or not-yet-valid certificate logs a warning."""

from __future__ import annotations

import datetime
import logging

import pytest
from cryptography import x509  # the server extra's (receipts, TLS files)
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from svc_helpers import cli

from seedstream.server.rpc.hardening import http_ssl_context, server_credentials
from seedstream.server.rpc.tls import TlsFileError, date_problems, load_pair

DAY = datetime.timedelta(days=1)


def _write_pair(folder, name: str, start: datetime.timedelta = -DAY, end: datetime.timedelta = DAY):
    """A self-signed EC certificate for localhost valid from now+start to now+end, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + start)
        .not_valid_after(now + end)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    plain = serialization.NoEncryption()
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, plain))
    encrypted = serialization.BestAvailableEncryption(b"secret")
    (folder / f"{name}.enc.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encrypted)
    )
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tlsfiles")
    files = {"good": _write_pair(folder, "good"), "other": _write_pair(folder, "other")}
    files["expired"] = _write_pair(folder, "expired", start=-10 * DAY, end=-DAY)
    files["future"] = _write_pair(folder, "future", start=5 * DAY, end=10 * DAY)
    (folder / "garbage.pem").write_bytes(b"this is not a certificate\n")
    (folder / "empty.pem").write_bytes(b"")
    files["folder"] = folder
    return files


def test_a_good_pair_loads_for_grpc_and_https_without_warnings(pki, caplog):
    cert, key = pki["good"]
    with caplog.at_level(logging.WARNING, logger="seedstream"):
        assert server_credentials(cert, key, None) is not None
        assert server_credentials(cert, key, cert) is not None  # its own CA for mTLS
        assert http_ssl_context(cert, key, 0) is not None
    assert not caplog.records


@pytest.mark.parametrize(
    "cert_name, key_name, flag, reason",
    [
        ("good.pem", "other.key", "--tls-key", "is not the private key of"),
        ("garbage.pem", "good.key", "--tls-cert", "no PEM certificate in the file"),
        ("empty.pem", "good.key", "--tls-cert", "no PEM certificate in the file"),
        ("good.key", "good.key", "--tls-cert", "a private key, not a certificate"),
        ("good.pem", "garbage.pem", "--tls-key", "not a usable private key"),
        ("good.pem", "good.pem", "--tls-key", "a certificate, not a usable private key"),
        ("good.pem", "good.enc.key", "--tls-key", "the private key is encrypted"),
        ("missing.pem", "good.key", "--tls-cert", "no such file"),
        ("good.pem", "missing.key", "--tls-key", "no such file"),
    ],
)
def test_a_bad_file_is_named_with_its_flag_and_reason(pki, cert_name, key_name, flag, reason):
    folder = pki["folder"]
    cert, key = str(folder / cert_name), str(folder / key_name)
    named = key if flag == "--tls-key" else cert
    with pytest.raises(TlsFileError, match=reason) as grpc_error:
        server_credentials(cert, key, None)
    assert f"{flag} {named}" in str(grpc_error.value)
    with pytest.raises(TlsFileError, match=reason) as http_error:  # the HTTP front: the same check, its own flags
        http_ssl_context(cert, key, 0)
    assert f"--http-tls-{flag[6:]} {named}" in str(http_error.value)


def test_a_bad_client_ca_is_named(pki):
    cert, key = pki["good"]
    folder = pki["folder"]
    for name, reason in (("missing.pem", "no such file"), ("garbage.pem", "no PEM certificate in the file")):
        with pytest.raises(TlsFileError, match=f"--tls-client-ca {folder / name}: {reason}"):
            server_credentials(cert, key, str(folder / name))


def test_expired_and_not_yet_valid_certificates_warn(pki, caplog):
    for name, words in (("expired", "expired on"), ("future", "is not valid before")):
        cert, key = pki[name]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="seedstream"):
            assert server_credentials(cert, key, None) is not None  # served: a warning, not a refusal
            http_ssl_context(cert, key, 0)
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(line.startswith(f"--tls-cert {cert}: the certificate (CN=localhost) {words}") for line in lines)
        assert any(line.startswith(f"--http-tls-cert {cert}:") and words in line for line in lines), lines


def test_date_problems_read_the_validity_window(pki):
    now = datetime.datetime.now(datetime.timezone.utc)
    with open(pki["good"][0], "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    assert date_problems([cert], now) == []
    assert "expired on" in date_problems([cert], now + 2 * DAY)[0]
    assert "not valid before" in date_problems([cert], now - 2 * DAY)[0]
    assert load_pair(*pki["good"])[0].startswith(b"-----BEGIN CERTIFICATE-----")


@pytest.mark.slow  # starts `seedstream serve` (it stops before loading the model)
def test_serve_names_the_file_and_reason_not_failed_to_bind(pki):
    cert, _ = pki["good"]
    _, other_key = pki["other"]
    done = cli("serve", "--port", "0", "--tls-cert", cert, "--tls-key", other_key, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"cannot start: --tls-key {other_key} is not the private key of --tls-cert {cert}".encode() in done.stderr
    assert b"Failed to bind" not in done.stderr
    missing = str(pki["folder"] / "missing.pem")
    done = cli(
        "serve", "--port", "0", "--http-port", "0", "--http-tls-cert", missing, "--http-tls-key", other_key, timeout=120
    )
    assert done.returncode == 2 and f"--http-tls-cert {missing}: no such file".encode() in done.stderr
