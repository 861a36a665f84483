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


def test_https_front(loop_thread, engine, tls_files):
    """--http-tls-cert/--http-tls-key: the OpenAI-compatible front over HTTPS, with the certificate
    checked by the client; its completion is the gRPC one of the same seed; plain HTTP gets nothing."""
    import http.client
    import json
    import ssl
    import urllib.request

    from seedstream.server.rpc.hardening import http_ssl_context

    key, cert = tls_files
    srv = start_server(loop_thread, engine, http_port=0, http_ssl=http_ssl_context(str(cert), str(key), 0))
    try:
        assert srv.http.scheme == "https"
        trusted = ssl.create_default_context(cafile=str(cert))  # verifies the chain and the name "localhost"
        base = f"https://localhost:{srv.http.port}"
        body = {"model": "seedstream", "prompt": "Hello", "max_tokens": 4, "seed": 5, "temperature": 0.7}
        request = urllib.request.Request(
            base + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60, context=trusted) as response:
            assert response.status == 200
            text = json.loads(response.read())["choices"][0]["text"]
        with Client(srv.address, timeout=60) as client:
            assert text == client.generate("Hello", seed=5, temperature=0.7, max_new_tokens=4).text
        with urllib.request.urlopen(base + "/health", timeout=30, context=trusted) as response:
            assert json.loads(response.read()) == {"status": "serving"}
        # Plain HTTP on the HTTPS port: no HTTP answer.
        plain = http.client.HTTPConnection("localhost", srv.http.port, timeout=30)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("GET", "/health")
            plain.getresponse()
        plain.close()
    finally:
        loop_thread.run(srv.shutdown(0, stop_engine=False))


def test_http_tls_settings_are_checked(tls_files):
    from seedstream.server.rpc.hardening import http_ssl_context

    key, cert = tls_files
    assert http_ssl_context(None, None, 0) is None
    with pytest.raises(ValueError, match="go together"):
        http_ssl_context(str(cert), None, 0)
    with pytest.raises(ValueError, match="needs --http-port"):
        http_ssl_context(str(cert), str(key), None)
    with pytest.raises(ValueError, match="--http-tls-key"):  # a key that is not one (tests/service/test_tls_files.py)
        http_ssl_context(str(cert), str(cert), 0)
