"""TLS: a server with a certificate, the client trusting it through root_certificates (and metadata)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from svc_helpers import start_server

from seedstream.client import Client, UnavailableError


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


def test_tls_round_trip(loop_thread, engine, tls_files):
    import grpc

    key, cert = tls_files
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    srv = start_server(loop_thread, engine, credentials=credentials)
    try:
        target = f"localhost:{srv.port}"
        with Client(target, root_certificates=str(cert), metadata={"x-request-id": "tls-test"}, timeout=60) as client:
            result = client.generate("Hello", seed=1, max_new_tokens=3)
            assert result.completion_tokens >= 1 and result.request_id == "tls-test"
        with Client(target, timeout=5) as plaintext:  # a plaintext client cannot talk to it
            with pytest.raises(UnavailableError):
                plaintext.generate("Hello", max_new_tokens=1)
    finally:
        loop_thread.run(srv.shutdown(0, stop_engine=False))
