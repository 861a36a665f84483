"""The real lm-eval CLI, through `python -m seedstream.client.harness`, against a real server on the
default model, on the tiny local tasks in tests/eval/tasks (nothing downloaded).

Three runs: concurrency 8 twice, and concurrency 1: the first through the CLI, the other two through what
that CLI calls (lm_eval_runs.run_in_process: the same requests, without rebuilding lm-eval's index of its
built-in tasks for each). Per-sample outputs, metrics and the receipts digest must be identical; the recorded
seeds and scores must be what the client gives directly.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow  # an lm-eval CLI run and two in-process runs

from lm_eval_runs import run_cli, run_in_process  # noqa: E402

from seedstream.client.harness import derive_seed  # noqa: E402

BASE_SEED = 1234


def model_args(target: str, concurrency: int) -> str:
    return f"target={target},concurrency={concurrency},seed={BASE_SEED},score_batch=4"


@pytest.fixture(scope="module")
def runs(server, tmp_path_factory, lm_eval_tasks):
    out = tmp_path_factory.mktemp("lm-eval")
    return {
        "a8": run_cli(out / "a8", model_args(server.address, 8), "seedstream_tiny"),
        "b8": run_in_process(out / "b8", model_args(server.address, 8), ["seedstream_tiny"], lm_eval_tasks),
        "c1": run_in_process(out / "c1", model_args(server.address, 1), ["seedstream_tiny"], lm_eval_tasks),
    }


TASK_NAMES = {"seedstream_tiny_gen", "seedstream_tiny_gen_seeded", "seedstream_tiny_mc", "seedstream_tiny_ppl"}


def test_runs_are_identical_across_repeats_and_concurrency(runs):
    (ra, sa), (rb, sb), (rc, sc) = runs["a8"], runs["b8"], runs["c1"]
    assert set(sa) == TASK_NAMES
    assert len(sa["seedstream_tiny_gen"]) == 6 and len(sa["seedstream_tiny_mc"]) == 6
    assert sa == sb, "two identical runs gave different per-sample outputs"
    assert sa == sc, "concurrency 1 and 8 gave different per-sample outputs"
    assert ra["results"] == rb["results"] == rc["results"]
    digests = {r["config"]["seedstream"]["receipts"]["receipts_digest"] for r in (ra, rb, rc)}
    assert len(digests) == 1


def _args(sample: dict) -> list[tuple]:
    """A logged sample's request arguments, in order: [(arg_0, arg_1, ...), ...]."""
    return [
        tuple(a[f"arg_{i}"] for i in range(len(a)))
        for _, a in sorted(sample["arguments"].items(), key=lambda kv: int(kv[0].split("_")[-1]))
    ]


def test_outputs_are_real(runs):
    results, samples = runs["a8"]
    gens = [s["resps"][0][0] for s in samples["seedstream_tiny_gen"]]
    assert any(g.strip() for g in gens), gens
    assert all("\n" not in g and "." not in g for g in gens)  # stop strings cut the text
    seeded = [s for s in samples["seedstream_tiny_gen_seeded"] if s["filter"] == "first"]
    assert len(seeded) == 6 and {len(s["resps"][0]) for s in seeded} == {2}  # repeats: 2
    for s in samples["seedstream_tiny_mc"]:
        lls = [float(r[0][0]) for r in s["resps"]]
        assert all(math.isfinite(x) and x < 0 for x in lls)
    assert results["results"]["seedstream_tiny_mc"]["acc,none"] >= 0.5  # easy questions
    ppl = results["results"]["seedstream_tiny_ppl"]
    assert math.isfinite(ppl["word_perplexity,none"]) and ppl["word_perplexity,none"] > 1


def test_receipts_are_recorded(runs, server):
    results, samples = runs["a8"]
    info = results["config"]["seedstream"]
    engine = server.state.engine
    (build,) = info["receipts"]["builds"]
    assert build["model_sha256"] == engine.info.model_sha256 and build["dtype"] == "float32"
    assert build["device"] == "cpu" and build["engine_version"] == engine.info.engine_version
    assert info["receipts"]["sampler_versions"] == [engine.info.sampler_version]
    assert info["receipts"]["requests"] == {"generate_until": 18, "loglikelihood": 18, "loglikelihood_rolling": 3}
    generations = info["receipts"]["generate_until"]
    assert len(generations) == 18
    # The seeded task's 6 prompts each ran as samples 0 and 1 of seed 7.
    sevens = [g for g in generations if g["seed"] == 7]
    assert sorted(g["sample_index"] for g in sevens) == [0] * 6 + [1] * 6
    # The other task's seeds are derived from content: all different, none 7.
    derived = [g["seed"] for g in generations if g["seed"] != 7]
    assert len(set(derived)) == 6


def test_backend_outputs_equal_direct_client_calls(runs, client):
    _, samples = runs["a8"]
    for s in samples["seedstream_tiny_gen"][:2]:
        ((context, gen_kwargs),) = _args(s)
        direct = client.generate(
            context,
            seed=derive_seed(BASE_SEED, context, gen_kwargs),
            temperature=gen_kwargs["temperature"],
            top_k=gen_kwargs["top_k"],
            top_p=gen_kwargs["top_p"],
            max_new_tokens=gen_kwargs["max_gen_toks"],
            stop=gen_kwargs["until"],
        )
        assert direct.text == s["resps"][0][0]
    for s in [s for s in samples["seedstream_tiny_gen_seeded"] if s["filter"] == "first"][:2]:
        ((context, gen_kwargs),) = _args(s)
        direct = client.generate(context, seed=7, temperature=1.0, max_new_tokens=8, stop=["\n"], n=2)
        assert [d.text for d in direct.samples] == s["resps"][0]
    s = samples["seedstream_tiny_mc"][0]
    scores = client.score(_args(s))
    assert [[str(r.logprob), str(r.is_greedy)] for r in scores] == [r[0] for r in s["resps"]]
    s = samples["seedstream_tiny_ppl"][0]
    ((text,),) = _args(s)
    assert str(client.score_rolling(text).logprob) == s["resps"][0][0]
