"""The `seedstream` command against a real server, and `seedstream serve` as a process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from svc_helpers import ROOT, cli

from seedstream.client import Client, FinishReason, HealthStatus


def test_generate_streams_exact_text(server, client):
    args = [
        "generate",
        "Once upon a time",
        "--seed",
        "42",
        "--temperature",
        "0.8",
        "--top-k",
        "40",
        "--max-new-tokens",
        "20",
        "--stop",
        "\n\n",
    ]
    done = cli(*args, env={"SEEDSTREAM_TARGET": server.address})
    assert done.returncode == 0, done.stderr.decode()
    expected = client.generate("Once upon a time", seed=42, temperature=0.8, top_k=40, max_new_tokens=20, stop=["\n\n"])
    assert done.stdout == expected.text.encode("utf-8")
    assert re.search(rb"\[seed=42 finish=\w+ prompt_tokens=\d+ completion_tokens=\d+", done.stderr)


def test_generate_json_and_drawn_seed(server, client):
    done = cli(
        "generate", "Hello", "--max-new-tokens", "6", "--json", "--top-logprobs", "2", "--target", server.address
    )
    assert done.returncode == 0, done.stderr.decode()
    data = json.loads(done.stdout)
    assert data["finish_reason"] in {r.value for r in FinishReason}
    assert len(data["token_ids"]) == data["completion_tokens"] == len(data["top_logprobs"])
    assert data["receipt"]["seed"] == data["seed"]
    replay = client.generate("Hello", seed=data["seed"], max_new_tokens=6)
    assert list(replay.token_ids) == data["token_ids"] and replay.text == data["text"]


def test_generate_samples_json(server, client):
    done = cli(
        "generate",
        "Once upon a time",
        "--seed",
        "9",
        "-n",
        "5",
        "--samples",
        "3",
        "--logprobs-mode",
        "processed",
        "--json",
        "--target",
        server.address,
    )
    assert done.returncode == 0, done.stderr.decode()
    samples = json.loads(done.stdout)["samples"]
    assert [s["sample_index"] for s in samples] == [0, 1, 2]
    for s in samples:
        alone = client.generate(
            "Once upon a time", seed=9, max_new_tokens=5, sample_index=s["sample_index"], logprobs_mode="processed"
        )
        assert s["token_ids"] == list(alone.token_ids) and s["logprobs"] == list(alone.logprobs)
    done = cli("generate", "Hi", "--samples", "2", "--target", server.address)
    assert done.returncode != 0 and b"--json" in done.stderr


def test_generate_chat_and_token_ids(server, client):
    done = cli(
        "generate",
        "What is the capital of France?",
        "--chat",
        "--temperature",
        "0",
        "-n",
        "12",
        "--quiet",
        "--target",
        server.address,
    )
    assert done.returncode == 0 and b"Paris" in done.stdout and done.stderr == b""
    ids = client.tokenize("The sky is").token_ids
    done = cli("generate", "--token-ids", ",".join(map(str, ids)), "--seed", "3", "-n", "5", "--target", server.address)
    assert done.stdout == client.generate("The sky is", seed=3, max_new_tokens=5).text.encode()


@pytest.mark.slow  # one CLI process per case
def test_cli_errors_and_exit_codes(server):
    done = cli("generate", "Hi", "--top-p", "5", "--target", server.address)
    assert done.returncode == 2 and b"top_p" in done.stderr
    done = cli("generate", "Hi", "--target", "127.0.0.1:1", "--timeout", "5")
    assert done.returncode == 3 and b"unavailable" in done.stderr


def test_tokenize_info_health(server, client):
    done = cli("tokenize", "Hello world", "--target", server.address)
    assert done.returncode == 0
    assert [int(t) for t in done.stdout.split()] == list(client.tokenize("Hello world").token_ids)
    done = cli("info", "--json", "--target", server.address)
    assert json.loads(done.stdout)["model_sha256"] == client.model_info().model_sha256
    done = cli("health", "--target", server.address)
    assert done.returncode == 0 and done.stdout.strip() == b"SERVING"


def test_help():
    for args in (["--help"], ["serve", "--help"], ["generate", "--help"], ["tokenize", "--help"], ["info", "--help"]):
        done = cli(*args)
        assert done.returncode == 0 and b"usage: seedstream" in done.stdout
    assert b"SEEDSTREAM_PORT" in cli("serve", "--help").stdout


class _ServerProcess:
    """`python -m seedstream.server` with its stderr collected on a thread (so the pipe never fills)."""

    def __init__(self, env: dict):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seedstream.server"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def port(self, timeout: float = 120.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            match = re.search(r"listening on [^:]+:(\d+)", self.log)
            if match:
                return int(match.group(1))
            time.sleep(0.05)
        raise AssertionError("server did not report its port:\n" + self.log)


@pytest.mark.slow
def test_serve_process_sigterm_drains_and_exits_zero():
    """`seedstream serve`: SERVING once loaded, SIGTERM lets the in-flight stream finish, exit 0."""
    env = {**os.environ, "SEEDSTREAM_PORT": "0", "SEEDSTREAM_GRACE_PERIOD": "120", "SEEDSTREAM_MAX_QUEUE": "4"}
    server = _ServerProcess(env)
    try:
        port = server.port()
        with Client(f"127.0.0.1:{port}", timeout=120) as client:
            client.wait_until_serving(timeout=120)
            assert client.model_info().max_queue == 4, server.log  # env configuration reached the engine
            stream = client.generate_stream(
                "Count slowly:", seed=9, temperature=0.0, max_new_tokens=40, ignore_eos=True
            )
            next(stream)
            server.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while client.health() is not HealthStatus.NOT_SERVING and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.health() is HealthStatus.NOT_SERVING, server.log
            rest = list(stream)
            assert rest[-1].finish_reason is FinishReason.LENGTH and rest[-1].completion_tokens == 40, server.log
        assert server.proc.wait(120) == 0, server.log
        server.reader.join(10)
        assert "SIGTERM" in server.log and "stopped" in server.log, server.log
        assert re.search(
            r"rpc=GenerateStream id=\S+ seed=9 prompt_tokens=\d+ completion_tokens=40 finish=length", server.log
        ), server.log
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


@pytest.mark.slow  # starts `seedstream serve`
def test_serve_reports_a_bad_model_and_exits_one(tmp_path):
    missing = tmp_path / "no-such-model.gguf"
    done = cli("serve", "--port", "0", "--model", str(missing), timeout=120)
    assert done.returncode == 1
    assert b"model loading failed" in done.stderr and str(missing).encode() in done.stderr


@pytest.mark.slow  # starts `seedstream serve`
def test_serve_rejects_a_taken_port(server):
    done = cli("serve", "--port", str(server.port), timeout=120)
    assert done.returncode == 2 and b"cannot start" in done.stderr
