"""API keys (bearer tokens, checked by an interceptor), mutual TLS, reflection off, and the refusal to
serve an exposed plaintext port without keys where that is required (the Docker image)."""

from __future__ import annotations

import logging
import shutil
import subprocess

import grpc
import pytest
from svc_helpers import cli, start_server

from seedstream.client import Client, HealthStatus, UnauthenticatedError, UnavailableError

ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef00"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


@pytest.fixture(scope="module")
def keyed(loop_thread, engine):
    from seedstream.server.rpc.hardening import Security

    srv = start_server(loop_thread, engine, security=Security(api_keys={ALICE: "alice", BOB: "bob"}))
    yield srv
    loop_thread.run(srv.shutdown(0, stop_engine=False))


def _reflection_list(address: str, metadata=None):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        return list(stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=10))


def test_calls_without_a_known_key_are_unauthenticated(keyed):
    for key in (None, "wrong-key-0123456789abcdef", ALICE[:-1]):
        with Client(keyed.address, api_key=key, timeout=30) as client:
            with pytest.raises(UnauthenticatedError):
                client.generate("Hi", max_new_tokens=2)
            with pytest.raises(UnauthenticatedError):
                next(iter(client.generate_stream("Hi", max_new_tokens=2)))
            for call in (client.model_info, lambda: client.tokenize("x"), lambda: client.score_rolling("x")):
                with pytest.raises(UnauthenticatedError):
                    call()
            assert client.health() is HealthStatus.SERVING  # probes need no key
    with pytest.raises(grpc.RpcError) as info:
        _reflection_list(keyed.address)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # The scheme must be Bearer.
    with Client(keyed.address, metadata={"authorization": f"Basic {ALICE}"}, timeout=30) as client:
        with pytest.raises(UnauthenticatedError):
            client.model_info()


def test_known_keys_are_served_and_named_in_the_log(keyed, caplog):
    caplog.set_level(logging.INFO, logger="seedstream")
    with (
        Client(keyed.address, api_key=ALICE, timeout=60) as alice,
        Client(keyed.address, api_key=BOB, timeout=60) as bob,
    ):
        a = alice.generate("Hello", seed=3, max_new_tokens=4, request_id="from-alice")
        b = bob.generate("Hello", seed=3, max_new_tokens=4, request_id="from-bob")
        assert a.token_ids == b.token_ids and a.receipt.digest == b.receipt.digest
        assert [c.text for c in alice.generate_stream("Hello", seed=3, max_new_tokens=4)]
    assert _reflection_list(keyed.address, metadata=(("authorization", f"Bearer {BOB}"),))
    lines = [r.getMessage() for r in caplog.records]
    assert any("id=from-alice " in line and " client=alice " in line for line in lines), lines
    assert any("id=from-bob " in line and " client=bob " in line for line in lines), lines
    assert not any(ALICE in line or BOB in line for line in lines)  # the secret never reaches the log


def test_cli_sends_the_key_from_a_file_or_the_environment(keyed, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(f"# my key\n{ALICE}\n")
    done = cli("tokenize", "hello", "--target", keyed.address, "--api-key-file", str(key_file), "--json")
    assert done.returncode == 0, done.stderr
    done = cli("tokenize", "hello", "--target", keyed.address, "--json", env={"SEEDSTREAM_API_KEY": BOB})
    assert done.returncode == 0, done.stderr
    done = cli("tokenize", "hello", "--target", keyed.address, "--json", env={"SEEDSTREAM_API_KEY": ""})
    assert done.returncode == 1 and b"API key" in done.stderr, done.stderr


def test_key_file_parsing(tmp_path):
    from seedstream.server.rpc.auth import default_name, load_keys

    path = tmp_path / "keys"
    path.write_text(f"# comment\nalice {ALICE}\n\n{BOB}  # unnamed\n")
    keys = load_keys(
        str(path), environ={"SEEDSTREAM_API_KEYS": "carol carol-key-0123456789abcd, dave-key-0123456789abcdef"}
    )
    assert keys == {
        ALICE: "alice",
        BOB: default_name(BOB),
        "carol-key-0123456789abcd": "carol",
        "dave-key-0123456789abcdef": default_name("dave-key-0123456789abcdef"),
    }
    path.write_text("short\n")
    with pytest.raises(ValueError, match="at least 16"):
        load_keys(str(path), environ={})
    assert load_keys(None, environ={}) == {}


def test_reflection_can_be_turned_off(loop_thread, engine):
    from seedstream.server.rpc.hardening import Security

    srv = start_server(loop_thread, engine, security=Security(reflection=False))
    try:
        with pytest.raises(grpc.RpcError) as info:
            _reflection_list(srv.address)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with Client(srv.address, timeout=30) as client:
            assert client.health() is HealthStatus.SERVING
    finally:
        loop_thread.run(srv.shutdown(0, stop_engine=False))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for localhost and a client certificate, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=seedstream test CA",
    )
    for name, ext in (("server", "subjectAltName=DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={'localhost' if name == 'server' else 'client'}",
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
        )
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "rogue.key",
        "-out",
        "rogue.pem",
        "-days",
        "1",
        "-subj",
        "/CN=rogue",
    )
    return d


def test_mutual_tls_requires_a_client_certificate_from_the_ca(loop_thread, engine, pki):
    from seedstream.server.rpc.hardening import server_credentials

    creds = server_credentials(str(pki / "server.pem"), str(pki / "server.key"), str(pki / "ca.pem"))
    srv = start_server(loop_thread, engine, credentials=creds)
    target = f"localhost:{srv.port}"
    try:
        with Client(
            target,
            root_certificates=str(pki / "ca.pem"),
            certificate_chain=str(pki / "client.pem"),
            private_key=str(pki / "client.key"),
            timeout=60,
        ) as client:
            assert client.generate("Hi", seed=1, max_new_tokens=2).completion_tokens >= 1
        for cert, key in ((None, None), ("rogue.pem", "rogue.key")):
            kwargs = dict(certificate_chain=str(pki / cert), private_key=str(pki / key)) if cert else {}
            with Client(target, root_certificates=str(pki / "ca.pem"), timeout=10, **kwargs) as client:
                with pytest.raises(UnavailableError):
                    client.model_info()
    finally:
        loop_thread.run(srv.shutdown(0, stop_engine=False))
    with pytest.raises(ValueError, match="needs --tls-cert"):
        server_credentials(None, None, str(pki / "ca.pem"))


def test_exposed_plaintext_without_keys_is_refused_where_required(tmp_path):
    """What the Docker image sets: SEEDSTREAM_REFUSE_INSECURE=1 and 0.0.0.0. Refused before loading."""
    env = {"SEEDSTREAM_REFUSE_INSECURE": "1", "SEEDSTREAM_API_KEYS": ""}
    done = cli("serve", "--host", "0.0.0.0", "--port", "0", env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert b"--insecure" in done.stderr and b"API keys" in done.stderr


def test_exposure_check(caplog):
    from seedstream.server.rpc.hardening import check_exposure

    refuse = {"SEEDSTREAM_REFUSE_INSECURE": "1"}
    with pytest.raises(ValueError):
        check_exposure("0.0.0.0", has_keys=False, tls=False, insecure=False, environ=refuse)
    for host, keys, tls, insecure in (
        ("127.0.0.1", False, False, False),
        ("::1", False, False, False),
        ("0.0.0.0", True, False, False),
        ("0.0.0.0", False, True, False),
        ("0.0.0.0", False, False, True),
    ):
        check_exposure(host, keys, tls, insecure, environ=refuse)
    caplog.set_level(logging.WARNING, logger="seedstream")
    check_exposure("0.0.0.0", False, False, False, environ={})  # elsewhere: a warning, not a refusal
    assert any("anyone who reaches the port" in r.getMessage() for r in caplog.records)


def test_the_http_front_takes_the_same_keys(loop_thread, engine):
    import json
    import urllib.error
    import urllib.request

    from seedstream.server.rpc.hardening import Security

    srv = start_server(loop_thread, engine, security=Security(api_keys={ALICE: "alice"}), http_port=0)
    try:
        base = f"http://127.0.0.1:{srv.http.port}"
        body = json.dumps({"model": "seedstream", "prompt": "Hi", "max_tokens": 2, "seed": 1}).encode()

        def post(key=None):
            headers = {"Content-Type": "application/json"}
            if key:
                headers["Authorization"] = f"Bearer {key}"
            request = urllib.request.Request(base + "/v1/completions", data=body, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read())

        for key in (None, BOB, ALICE[:-1]):
            status, payload = post(key)
            assert status == 401 and payload["error"]["code"] == "invalid_api_key"
        status, payload = post(ALICE)
        assert status == 200 and payload["choices"][0]["text"]
        with urllib.request.urlopen(base + "/health", timeout=30) as response:  # health stays open
            assert response.status == 200
    finally:
        loop_thread.run(srv.shutdown(0, stop_engine=False))
