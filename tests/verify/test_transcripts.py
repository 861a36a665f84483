"""Transcripts taken with the Python clients and the CLI verify against a restarted server and against one
with other batch, chunk and thread settings; hand edits fail naming the record and the index; another
model answers "cannot verify"; signed receipts check offline with the public key."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest
import torch
from svc_helpers import cli

from seedstream.client import AsyncClient, Client
from seedstream.client import verify as v
from seedstream.client.transcript import Transcript, read_records, receipt_digest, receipt_of

pytestmark = pytest.mark.slow  # three engines start (about 20 s here)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric import ed25519

    folder = tmp_path_factory.mktemp("keys")
    key = ed25519.Ed25519PrivateKey.generate()
    private, public = folder / "receipts.pem", folder / "receipts.pub.pem"
    private.write_bytes(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
    other = folder / "other.pub.pem"
    other.write_bytes(
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public, other


async def _async_calls(address: str, path) -> None:
    async with AsyncClient(address, timeout=120, transcript=path) as client:
        await client.generate("The sky is", seed=11, temperature=0.9, top_k=40, max_new_tokens=8)
        async with client.generate_stream("Hi", seed=12, max_new_tokens=6) as stream:
            async for _ in stream:
                pass


@pytest.fixture(scope="module")
def transcripts(serve, keys, tmp_path_factory):
    """Records taken on a first (signing) server, which is then stopped: (python file, CLI file)."""
    from seedstream.server.service.receipts import ReceiptSigner

    folder = tmp_path_factory.mktemp("transcripts")
    py, cli_file = folder / "client.jsonl", folder / "cli.jsonl"
    first = serve(signer=ReceiptSigner.from_file(keys[0]))
    with Client(first.address, timeout=120, transcript=py) as client:
        client.generate("Once upon a time", seed=42, temperature=0.8, top_p=0.9, max_new_tokens=12)
        client.generate(
            "Hello there, my friend", n=2, temperature=1.0, max_new_tokens=6, top_logprobs=2, echo_prompt_logprobs=True
        )
        for _ in client.generate_stream(messages=[{"role": "user", "content": "Hi!"}], seed=7, max_new_tokens=8):
            pass
        client.generate("Count: 1, 2, 3,", seed=5, max_new_tokens=6, resume_token_ids=_first_tokens(client, 2))
        client.score([("The capital of France is", " Paris"), ("2 + 2 =", " 4")])
        client.score_rolling("The quick brown fox jumps over the lazy dog.", max_length=6)
        client.generate("unrecorded", max_new_tokens=2, transcript=None)
    asyncio.run(_async_calls(first.address, py))
    for extra in ([], ["--json"], ["--temperature", "0.7", "--samples", "2", "--json"]):
        done = cli(
            "generate", "A poem:", "--seed", "3", "-n", "8", "--save", str(cli_file), "--target", first.address, *extra
        )
        assert done.returncode == 0, done.stderr
    first.stop()
    return py, cli_file


def _first_tokens(client, k):
    return list(client.generate("Count: 1, 2, 3,", seed=5, max_new_tokens=k, transcript=None).token_ids)


def test_records_hold_what_was_asked(transcripts):
    records = [r for _, r in read_records(transcripts[0])]
    assert [r["rpc"] for r in records] == [
        "Generate", "Generate", "GenerateStream", "Generate", "Score", "ScoreRolling", "Generate", "GenerateStream"
    ]  # fmt: skip
    assert records[1]["seed_drawn_by_server"] and int(records[1]["request"]["seed"]) > 0
    assert len(records[1]["outputs"]) == 2 and records[1]["prompt_echo"]["logprobs"]
    assert all(len(bits) in (8, 16) for r in records for o in r["outputs"] for bits in o["logprobs"])
    assert records[0]["server"]["model_identity"] == records[0]["outputs"][0]["receipt"]["model_identity"]
    assert len([r for _, r in read_records(transcripts[1])]) == 3


@pytest.mark.parametrize("which", ["restarted", "other settings"])
def test_verify_on_another_server(transcripts, serve, default_server, which):
    if which == "restarted":
        target = default_server
    else:
        threads = torch.get_num_threads()
        target = serve(max_batch_size=3, prefill_chunk=32, max_step_tokens=64, num_threads=1)
    try:
        for path in transcripts:
            with Client(target.address, timeout=120) as client:
                outcomes = v.verify_records(list(read_records(path)), client, concurrency=4, report=lambda o: None)
            assert [o.status for o in outcomes] == [v.EQUAL] * len(outcomes), [str(o) for o in outcomes]
    finally:
        if which != "restarted":
            target.stop()
            torch.set_num_threads(threads)


def test_cli_verify(transcripts, default_server, keys):
    done = cli("verify", str(transcripts[1]), "--target", default_server.address, "--concurrency", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.decode().count(": equal") == 3
    offline = cli("verify", str(transcripts[0]), "--public-key", str(keys[1]))
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert offline.stdout.decode().count(": valid") == 8
    wrong = cli("verify", str(transcripts[0]), "--public-key", str(keys[2]))
    assert wrong.returncode == 1 and b"not by the given key" in wrong.stdout


def _edited(path, tmp_path, edit):
    records = [json.loads(line) for line in open(path)]
    edit(records)
    out = tmp_path / "edited.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def _bump_token(records):
    records[2]["outputs"][0]["token_ids"][4] += 1


def _flip_logprob(records):
    bits = records[0]["outputs"][0]["logprobs"][3]
    records[0]["outputs"][0]["logprobs"][3] = f"{int(bits, 16) ^ 1:0{len(bits)}x}"


def _edit_receipt(records):
    records[4]["receipt"]["input_sha256"] = "0" * 64


@pytest.mark.parametrize(
    "edit, line, expect",
    [
        (_bump_token, 3, "sample 0: token 4: recorded"),
        (_flip_logprob, 1, "sample 0: token 3: recorded"),
        (_edit_receipt, 5, "receipt digest"),
    ],
)
def test_a_hand_edit_fails_naming_record_and_index(transcripts, default_server, tmp_path, keys, edit, line, expect):
    edited = _edited(transcripts[0], tmp_path, edit)
    done = cli("verify", str(edited), "--target", default_server.address)
    out = done.stdout.decode()
    assert done.returncode == 1, out
    bad = [row for row in out.splitlines() if "equal" not in row.split(": ")[1]]
    assert len(bad) == 1 and bad[0].startswith(f"record at line {line} ") and expect in bad[0], out
    if edit is not _flip_logprob:  # logprobs are checked by replay; the signature binds tokens and receipts
        offline = cli("verify", str(edited), "--public-key", str(keys[1]))
        assert offline.returncode == 1 and f"record at line {line} " in offline.stdout.decode()


def _other_model(records):
    """Another model's records: its identity in the record and in the receipts, digests recomputed."""
    for r in records:
        r["server"].update(model_identity="ab" * 32, model_id="tiny-llama")
        for receipt in [o["receipt"] for o in r["outputs"] if "receipt" in o] + (
            [r["receipt"]] if "receipt" in r else []
        ):
            receipt["model_identity"] = "ab" * 32
            receipt.pop("signature", None)
            receipt["digest"] = receipt_digest(receipt_of(receipt))


def test_another_model_cannot_verify(transcripts, default_server, tmp_path):
    edited = _edited(transcripts[1], tmp_path, _other_model)
    done = cli("verify", str(edited), "--target", default_server.address)
    out = done.stdout.decode()
    assert done.returncode == 6, out
    assert out.count("cannot verify: model tiny-llama (abababababab), server serves SmolLM2") == 3, out


def test_transcript_file_object_and_progress(tmp_path):
    import io

    buf = io.StringIO()
    Transcript(buf).write({"transcript": 1}, {"model_identity": "x"})
    assert json.loads(buf.getvalue())["server"] == {"model_identity": "x"}
    err = io.StringIO()
    progress = v.Progress(20, err)
    for _ in range(20):
        progress.step({"equal": 1})
    assert err.getvalue().count("\n") == 10 and "20/20 records" in err.getvalue()


def test_copy_is_not_shared(transcripts):
    record = next(r for _, r in read_records(transcripts[0]))
    assert v.first_difference(record, copy.deepcopy(record)) is None
