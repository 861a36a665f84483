"""bench/bench_gpu.py, the end-to-end GPU check: its comparison catches any difference that breaks the promise,
and the whole script runs on the CPU with a tiny random model and says the three runs were identical."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seedstream.client import FinishReason, GenerateResult, Receipt, TopLogprob
from seedstream.client.types import EffectiveSampling

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import bench_gpu  # noqa: E402


def _result(**changes) -> GenerateResult:
    sampling = EffectiveSampling(0.8, 50, 0.9, 0.0, 1.0, 0.0, 0.0, (), 3, 0, (), (), True)
    receipt = Receipt("m", "sha", "float32", "cuda", "3.x", "s1", 7, 0, sampling, "in", "digest", "f32", "id", 2)
    top = tuple((TopLogprob(t, f"t{t}", -0.25 * t), TopLogprob(t + 1, "u", -4.0)) for t in (5, 6, 7))
    result = GenerateResult("abc", (5, 6, 7), (-0.5, -1.25, 0.0), top, 7, FinishReason.LENGTH, 10, 3, "r1", 0, receipt)
    return dataclasses.replace(result, **changes)


def test_identical_results_pass_even_with_other_request_ids_and_cache_hits():
    assert bench_gpu.first_mismatch(_result(), _result(request_id="r2", cached_tokens=8)) is None


@pytest.mark.parametrize(
    "changes, named",
    [
        (dict(token_ids=(5, 9, 7)), "token_ids differ at 1: 6 vs 9"),
        (dict(token_ids=(5, 6)), "token_ids differ lengths 3 vs 2"),
        (dict(logprobs=(-0.5, math.nextafter(-1.25, 0.0), 0.0)), "logprobs (float64 bytes) differ at 1"),
        (dict(logprobs=(-0.5, -1.25, -0.0)), "logprobs (float64 bytes) differ at 2"),  # equal as floats, not as bits
        (dict(text="abd"), "text differ"),
        (dict(finish_reason=FinishReason.EOS), "finish_reason"),
    ],
)
def test_any_difference_in_tokens_logprob_bits_text_or_ending_is_reported(changes, named):
    found = bench_gpu.first_mismatch(_result(), _result(**changes))
    assert found is not None and found.startswith(named), found


def test_a_top_logprob_one_ulp_apart_is_reported():
    a = _result()
    rows = list(a.top_logprobs)
    rows[2] = (dataclasses.replace(rows[2][0], logprob=math.nextafter(rows[2][0].logprob, -math.inf)), rows[2][1])
    found = bench_gpu.first_mismatch(a, dataclasses.replace(a, top_logprobs=tuple(rows)))
    assert found is not None and found.startswith("top_logprobs") and "at 2" in found


def test_a_receipt_that_differs_or_is_missing_is_reported():
    a = _result()
    other = dataclasses.replace(a, receipt=dataclasses.replace(a.receipt, digest="other", device="cuda:1"))
    assert bench_gpu.first_mismatch(a, other) == "receipt fields differ: device, digest"
    assert bench_gpu.first_mismatch(a, dataclasses.replace(a, receipt=None)) == "receipt missing"


def test_compare_runs_names_the_request_and_the_run():
    same, odd = _result(), _result(token_ids=(5, 6, 8))
    runs = {"alone": [same, same], "together": [same, same], "reversed": [same, odd]}
    assert bench_gpu.compare_runs(runs) == "request 1, reversed vs alone: token_ids differ at 2: 7 vs 8"
    assert bench_gpu.compare_runs({k: [same, same] for k in runs}) is None


def test_a_mismatch_or_a_real_model_without_paris_fails_the_run():
    good = bench_gpu.Served("info", None, "The capital of France is Paris.", {})
    assert bench_gpu.failures(False, {"float32": good}) == []
    wrong = dataclasses.replace(good, answer="Lyon")
    assert bench_gpu.failures(True, {"float32": wrong}) == []  # random weights: no Paris asked for
    assert bench_gpu.failures(False, {"float32": wrong}) == ["float32: the greedy answer does not mention Paris"]
    broken = dataclasses.replace(good, verdict="request 0, together vs alone: text differ at 0: 'a' vs 'b'")
    assert bench_gpu.failures(False, {"bfloat16": broken}) == [f"bfloat16: {broken.verdict}"]


@pytest.mark.slow  # a random model built, a server started, transformers loaded: ~45 s on 2 loaded cores
def test_the_script_runs_on_cpu_with_a_tiny_random_model_and_finds_the_streams_identical():
    cmd = [sys.executable, str(BENCH / "bench_gpu.py"), "--device", "cpu", "--backend", "torch", "--model", "random"]
    cmd += ["--random-shape", "tiny", "--requests", "4", "--streams", "1,2", "--new-tokens", "4", "--dtypes", "float32"]
    cmd += ["--repeats", "1", "--threads", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"4 requests x 4 tokens alone, together, reversed: {bench_gpu.IDENTICAL}" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| float32 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["1", "2"]  # one row per stream count, both measured
    assert "greedy 'What is the capital of France?'" in proc.stdout
