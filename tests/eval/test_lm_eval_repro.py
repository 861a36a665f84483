"""An lm-eval run does not depend on how it was run, and its transcript verifies (issue 23 part 5).

The documented command (docs/eval.md, "A reproducible, verifiable eval") runs on the two local tasks of
`seedstream_repro` (multiple choice, i.e. loglikelihood; sampled generation with the task's seed), at
--batch_size 1 and 16 and at concurrency 1 and 8: the first run through the real lm-eval CLI, the other
three through what that CLI calls (simple_evaluate and its tracker), so that lm-eval's index of its
built-in tasks is not rebuilt for each. Per-sample
results, metrics and the receipts digest must be identical; each run's transcript (`transcript=`) must
hold one record per request, the same records whatever the run, agree with lm-eval's logged samples, and
verify with `seedstream verify` on the same server and on one with other batch, chunk and thread
settings. lm-eval's batch_size never reaches the wire (the backend ignores it), so the batch-16 run at
concurrency 8 also sends 16 pairs per Score call, which the server scores as one batch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow  # an lm-eval CLI run (about 20 s here), three in-process runs, verify

from lm_eval_runs import ENV, run_cli, run_in_process  # noqa: E402

from seedstream.client import Client  # noqa: E402
from seedstream.client import verify as v  # noqa: E402
from seedstream.client.transcript import hex_logprob, read_records  # noqa: E402

# name: (lm-eval --batch_size, backend concurrency, extra model args)
RUNS = {"b1c1": (1, 1, ""), "b1c8": (1, 8, ""), "b16c1": (16, 1, ""), "b16c8": (16, 8, ",score_batch=16")}
TASKS = ("seedstream_repro_gen", "seedstream_repro_mc")


def model_args(target: str, transcript: Path, concurrency: int, extra: str) -> str:
    """The documented command's model arguments, with this run's concurrency."""
    return f"target={target},seed=1234,concurrency={concurrency},transcript={transcript}{extra}"


def _run(folder: Path, target: str, batch_size: int, concurrency: int, extra: str, index=None) -> dict:
    """The documented command itself in a process of its own (index None), or in this process."""
    folder.mkdir()
    transcript = folder / "eval.jsonl"
    args = model_args(target, transcript, concurrency, extra)
    if index is None:
        results, samples = run_cli(folder / "results", args, "seedstream_repro", "--batch_size", str(batch_size))
    else:
        results, samples = run_in_process(folder / "results", args, ["seedstream_repro"], index, batch_size)
    records = [json.loads(line) for line in transcript.read_text().splitlines()]
    return {"results": results, "samples": samples, "transcript": transcript, "records": records}


@pytest.fixture(scope="module")
def runs(server, tmp_path_factory, lm_eval_tasks):
    base = tmp_path_factory.mktemp("lm-eval-repro")
    out = {"b1c1": _run(base / "b1c1", server.address, *RUNS["b1c1"])}
    for name, spec in list(RUNS.items())[1:]:
        out[name] = _run(base / name, server.address, *spec, index=lm_eval_tasks)
    return out


def test_results_do_not_depend_on_batch_size_or_concurrency(runs):
    first = runs["b1c1"]
    assert set(first["samples"]) == set(TASKS)
    assert len(first["samples"]["seedstream_repro_mc"]) == 8 and len(first["samples"]["seedstream_repro_gen"]) == 8
    assert any(s["resps"][0][0].strip() for s in first["samples"]["seedstream_repro_gen"])  # real generations
    for name, run in runs.items():
        assert run["samples"] == first["samples"], f"{name}: per-sample results differ from b1c1"
        assert run["results"]["results"] == first["results"]["results"], f"{name}: metrics differ from b1c1"
        receipts = run["results"]["config"]["seedstream"]["receipts"]
        assert receipts["receipts_digest"] == first["results"]["config"]["seedstream"]["receipts"]["receipts_digest"]
    assert {g["seed"] for g in receipts["generate_until"]} == {2024}  # the task's seed reached the server


def _content(record: dict) -> str:
    """A record without its time: what must not depend on the run."""
    return json.dumps({k: v for k, v in record.items() if k != "recorded_at"}, sort_keys=True)


def test_transcript_has_one_record_per_request_whatever_the_run(runs):
    records = runs["b1c1"]["records"]
    assert sorted(r["rpc"] for r in records) == ["Generate"] * 8 + ["Score"] * 24  # 8 prompts, 8 x 3 choices
    for name in ("b1c8", "b16c1"):
        assert sorted(map(_content, runs[name]["records"])) == sorted(map(_content, records)), name
    batched = runs["b16c8"]["records"]  # score_batch=16: 24 pairs in 2 Score calls
    assert sorted(len(r["outputs"]) for r in batched if r["rpc"] == "Score") == [8, 16]
    generations = sorted(_content(r) for r in batched if r["rpc"] == "Generate")
    assert generations == sorted(_content(r) for r in records if r["rpc"] == "Generate")


def test_transcript_matches_logged_samples(runs):
    """Every logged sample's answer is in the transcript: a loglikelihood is its record's summed logprob
    (bit for bit), a generation its record's text cut at the stop string, under a receipt of seed 2024."""
    run = runs["b1c1"]
    scores, texts = {}, {}
    for r in run["records"]:
        if r["rpc"] == "Score":
            (pair,) = r["request"]["pairs"]
            scores[(pair["text"]["context"], pair["text"]["continuation"])] = r["outputs"][0]
        else:
            (out,) = r["outputs"]
            assert r["request"]["seed"] == "2024" and out["receipt"]["seed"] == "2024"
            texts[r["request"]["prompt"]] = out["text"].split("\n")[0]
    for s in run["samples"]["seedstream_repro_mc"]:
        for arguments, resp in zip(sorted(s["arguments"].items()), s["resps"]):
            args = arguments[1]
            output = scores[(args["arg_0"], args["arg_1"])]
            assert str(hex_logprob(output["logprob"])) == resp[0][0] and str(output["is_greedy"]) == resp[0][1]
    for s in run["samples"]["seedstream_repro_gen"]:
        assert texts[s["arguments"]["gen_args_0"]["arg_0"]] == s["resps"][0][0]
    digests = sorted(r["outputs"][0]["receipt"]["digest"] for r in run["records"] if r["rpc"] == "Generate")
    logged = run["results"]["config"]["seedstream"]["receipts"]["generate_until"]
    assert sorted(g["digest"] for g in logged) == digests


def verify(transcript: Path, target: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "seedstream.client.cli", "verify", str(transcript), "--target", target, *extra]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def test_transcripts_verify_on_the_same_server(runs, server):
    run = runs["b1c1"]  # the documented command's transcript, through the documented verify command
    done = verify(run["transcript"], server.address, "--concurrency", "4")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert done.stdout.count(": equal") == len(run["records"]), done.stdout
    with Client(server.address, timeout=120) as client:  # the others through the same checks, as a library
        for name in ("b1c8", "b16c1", "b16c8"):
            outcomes = v.verify_records(
                list(read_records(runs[name]["transcript"])), client, concurrency=8, report=lambda o: None
            )
            assert [o.status for o in outcomes] == [v.EQUAL] * len(runs[name]["records"]), (
                name,
                [str(o) for o in outcomes],
            )


def test_transcript_verifies_on_a_server_with_other_settings(runs, other_settings_server):
    done = verify(runs["b16c8"]["transcript"], other_settings_server.address, "--concurrency", "8")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": equal") == len(runs["b16c8"]["records"])


def test_an_edited_generation_fails_verify(runs, server, tmp_path):
    records = runs["b1c1"]["records"]
    line = next(i for i, r in enumerate(records) if r["rpc"] == "Generate" and len(r["outputs"][0]["token_ids"]) > 1)
    records = json.loads(json.dumps(records))
    records[line]["outputs"][0]["token_ids"][1] += 1
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(r) + "\n" for r in records))
    done = verify(edited, server.address)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"record at line {line + 1} (Generate seed=2024): DIFFERS: sample 0: token 1: recorded" in done.stdout
