"""Transcripts taken through the OpenAI-compatible front replay there: `seedstream verify --target http://...`.

Requests go out as any HTTP client sends them (unary and streamed, completions and chat, n > 1, several
prompts, a seed the server drew, logprobs with alternatives); write_http records them; verify replays
them on the same front and requires the same token ids, logprob bits, text and receipt digests."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import urllib.request

import pytest

from seedstream.client import Client
from seedstream.client import verify as v
from seedstream.client.http_transcript import HttpTarget, write_http
from seedstream.client.transcript import hex_logprob, read_records

REQUESTS = [
    ("/v1/completions", {"prompt": "Once upon a time", "seed": 42, "temperature": 0.8, "max_tokens": 8, "n": 2}),
    (
        "/v1/completions",
        {"prompt": ["Hello", "The sky is"], "seed": 5, "temperature": 1.0, "max_tokens": 6, "logprobs": 2},
    ),
    ("/v1/completions", {"prompt": "Count: 1, 2,", "temperature": 0.7, "max_tokens": 6, "stream": True}),  # seed drawn
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "Say hi."}],
            "seed": 7,
            "temperature": 0.9,
            "max_tokens": 8,
            "logprobs": True,
            "top_logprobs": 2,
            "stream": True,
        },
    ),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "2+2?"}], "temperature": 0, "max_tokens": 6}),
]


def post(url: str, path: str, body: dict):
    """The response JSON, or a stream's event payloads: what an HTTP client gets."""
    request = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        if not body.get("stream"):
            return json.load(response)
        lines = [line.decode().strip() for line in response]
    return [json.loads(line[5:]) for line in lines if line.startswith("data:") and line != "data: [DONE]"]


@pytest.fixture(scope="module")
def transcript(url, tmp_path_factory):
    path = tmp_path_factory.mktemp("http-transcript") / "http.jsonl"
    for route, body in REQUESTS:
        write_http(path, route, body, post(url, route, body))
    return path


def test_records_hold_what_the_front_returned(transcript, url):
    records = [r for _, r in read_records(transcript)]
    assert [len(r["outputs"]) for r in records] == [2, 2, 1, 1, 1]
    assert records[2]["seed_drawn_by_server"] is True and int(records[2]["request"]["seed"]) >= 0
    for r in records:
        assert r["kind"] == "http" and r["system_fingerprint"].startswith("ss-")
        assert r["server"]["model_identity"] == r["outputs"][0]["receipt"]["model_identity"]
        for out in r["outputs"]:
            assert out["token_ids"] and out["receipt"]["seed"] == str(r["request"]["seed"])
    # The logprobs are the bits the front sent (JSON numbers read back as the same doubles).
    route, body = REQUESTS[1]
    again = post(url, route, body)
    values = again["choices"][1]["logprobs"]["token_logprobs"]
    assert [hex_logprob(b) for b in records[1]["outputs"][1]["logprobs"]] == values
    assert len(records[3]["outputs"][0]["top_logprobs"][0]) == 2  # chat alternatives, joined from the stream


@pytest.mark.slow  # the verify CLI in a process of its own
def test_verify_replays_over_http(transcript, url):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "seedstream.client.cli", "verify", str(transcript), "--target", url]
    done = subprocess.run([*cmd, "--concurrency", "3"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": equal") == len(REQUESTS)
    assert "record at line 1 (POST /v1/completions seed=42 n=2): equal" in done.stdout


def _verify(records, target):
    return v.verify_records(list(enumerate(records, 1)), target, concurrency=2, report=lambda o: None)


def test_an_edited_token_or_logprob_differs(transcript, url):
    records = [r for _, r in read_records(transcript)]
    edited = copy.deepcopy(records[:2])
    edited[0]["outputs"][1]["token_ids"][2] += 1
    edited[1]["outputs"][1]["logprobs"][3] = "bf800000"
    first, second = _verify(edited, HttpTarget(url))
    assert first.status == v.DIFFERS and first.detail.startswith("choice 1: token 2: recorded"), first
    assert second.status == v.DIFFERS and "choice 1: token 3:" in second.detail and "bf800000" in second.detail


def test_records_and_targets_must_match(transcript, url, server):
    records = [r for _, r in read_records(transcript)]
    with Client(server.address, timeout=60) as client:
        (outcome,) = _verify(records[:1], client)
    assert outcome.status == v.ERROR and "--target http://HOST:PORT" in outcome.detail
    # and a gRPC record sent to the HTTP front is refused by name:
    fake = {**records[0], "kind": "generate", "rpc": "Generate"}
    (outcome,) = _verify([fake], HttpTarget(url))
    assert outcome.status == v.ERROR and "gRPC record" in outcome.detail
