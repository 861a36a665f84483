"""Benchmark of seedstream.sampler.sample() against softmax and a per-row transformers reference.

Usage: python bench/bench_sampler.py [--quick] [--threads 2]

A second table times the penalties over long histories (text-like ids, prompt and output of the
same length): sample() given TokenHistory rows (what the engine keeps), as a ratio to the same call
without penalties. sample() no longer takes id lists, so the id-list column of the tables up to
2026-11-29 in docs/benchmarks.md is gone.

Logits come from a documented heavy-tailed generator (see `zipf_logits`), not from a model.
Each cell is the median time of one sample() call over fresh logits, reported as ratios to one
torch.softmax over the same logits and to the per-row reference, all measured in this run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from seedstream.sampler import SamplingParams, TokenHistory, sample
from seedstream.server.kernels import cpu_flags_line

HISTORY = 128  # prompt tokens and as many generated tokens: a 256-token penalty history
MIXES = {
    "greedy": dict(temperature=0.0),
    "temperature": dict(temperature=0.7),
    "top-k 50": dict(top_k=50),
    "top-p 0.9": dict(top_p=0.9),
    "top-k 50 + top-p 0.95": dict(top_k=50, top_p=0.95),
    "min-p 0.05": dict(min_p=0.05),
    "penalties": dict(repetition_penalty=1.1, presence_penalty=0.3, frequency_penalty=0.3),
}


def zipf_logits(batch: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Heavy-tailed LM-like logits [B, V]: -a * ln(rank) + 0.5 * N(0, 1), ranks a random permutation.

    The slope a is drawn per row from [1.3, 1.8]; at temperature 1 the top-p 0.9 set of a row then
    holds about 10 (10th percentile), 30-40 (median) and 300 (90th percentile) tokens.
    """
    ranks = torch.argsort(torch.rand(batch, vocab, generator=gen), dim=1).float() + 1.0
    slope = 1.3 + 0.5 * torch.rand(batch, 1, generator=gen)
    return -slope * torch.log(ranks) + 0.5 * torch.randn(batch, vocab, generator=gen)


def make_params(mix: str, batch: int, rng: random.Random) -> list[SamplingParams]:
    kinds = list(MIXES) if mix == "mixed" else [mix]
    return [SamplingParams(seed=rng.randrange(2**64), **MIXES[kinds[i % len(kinds)]]) for i in range(batch)]


def make_histories(batch: int, vocab: int, rng: random.Random):
    """(prompt id lists, output id lists, their TokenHistory rows) of HISTORY random ids each."""
    prompt = [[rng.randrange(vocab) for _ in range(HISTORY)] for _ in range(batch)]
    output = [[rng.randrange(vocab) for _ in range(HISTORY)] for _ in range(batch)]
    return prompt, output, [TokenHistory(p).with_output(o) for p, o in zip(prompt, output)]


def reference_row(scores: torch.Tensor, p: SamplingParams, prompt, output, gen) -> int:
    """transformers warpers on one row [1, V], then multinomial with the row's own generator."""
    if p.repetition_penalty != 1.0:
        ids = torch.tensor([prompt + output])
        scores = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(ids, scores)
    if p.presence_penalty or p.frequency_penalty:
        out = torch.tensor(output)
        counts = torch.zeros(scores.shape[1]).index_add_(0, out, torch.ones(len(output)))
        scores = scores - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).float()
    if p.temperature == 0:
        return int(scores.argmax())
    ids = torch.zeros((1, 1), dtype=torch.long)
    scores = TemperatureLogitsWarper(p.temperature)(ids, scores)
    if p.top_k:
        scores = TopKLogitsWarper(p.top_k)(ids, scores)
    if p.top_p < 1:
        scores = TopPLogitsWarper(p.top_p)(ids, scores)
    if p.min_p:
        scores = MinPLogitsWarper(p.min_p)(ids, scores)
    return int(torch.multinomial(torch.softmax(scores, -1), 1, generator=gen))


def run_reference(logits, params, prompt, output) -> None:
    for r, p in enumerate(params):
        gen = torch.Generator().manual_seed(p.seed % 2**63)
        reference_row(logits[r : r + 1], p, prompt[r], output[r], gen)


def time_calls(fns, inputs, repeats: int) -> list[float]:
    """Median seconds of each fn(x), calls interleaved over the inputs so that noise hits all alike."""
    for fn in fns:
        fn(inputs[-1])  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for k in range(repeats):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            fn(inputs[k % len(inputs)])
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def bench_cell(logits, mix, args, rng) -> dict:
    batch, vocab = logits[0].shape
    params = make_params(mix, batch, rng)
    prompt, output, histories = make_histories(batch, vocab, rng)
    steps = list(range(batch))

    def do_sample(x):
        return sample(x, params, steps, histories=histories)

    t_soft, t_samp = time_calls([lambda x: torch.softmax(x, -1), do_sample], logits, args.repeats)
    (t_ref,) = time_calls([lambda x: run_reference(x, params, prompt, output)], logits, args.ref_repeats)
    return dict(softmax=t_soft, sample=t_samp, reference=t_ref)


def text_like_ids(n: int, vocab: int, rng: random.Random) -> list[int]:
    """n ids with a heavy-tailed frequency (rank r drawn with weight ~ 1 / r), as in text: a few
    hundred distinct ids per thousand tokens."""
    perm = rng.sample(range(vocab), vocab)
    return [perm[min(int(rng.paretovariate(0.7)) - 1, vocab - 1)] for _ in range(n)]


def history_cell(logits, length: int, args, rng: random.Random) -> dict:
    """Median seconds of sample() without penalties and with TokenHistory rows."""
    batch, vocab = logits[0].shape
    params = [
        SamplingParams(seed=i, top_k=50, top_p=0.9, repetition_penalty=1.1, frequency_penalty=0.2) for i in range(batch)
    ]
    plain = [SamplingParams(seed=i, top_k=50, top_p=0.9) for i in range(batch)]
    steps = list(range(batch))
    prompt = [text_like_ids(length // 2, vocab, rng) for _ in range(batch)]
    output = [text_like_ids(length // 2, vocab, rng) for _ in range(batch)]
    hist = [TokenHistory(p) for p in prompt]
    for h, o in zip(hist, output):
        h.extend(o)
    times = time_calls(
        [
            lambda x: sample(x, plain, steps),
            lambda x: sample(x, params, steps, histories=hist),
        ],
        logits,
        args.repeats,
    )
    return dict(zip(("plain", "hist"), times), distinct=statistics.mean(len(h) for h in hist))


def bench_histories(args, gen: torch.Generator, rng: random.Random) -> None:
    """sample() with repetition and frequency penalties over long histories (TokenHistory rows)."""
    print(
        "\n| V | B | history (prompt + output) | distinct ids per row | no penalties ms | "
        "TokenHistory ms | TokenHistory / no penalties |"
    )
    print("|---|---|---|---|---|---|---|")
    vocab = 49152
    for batch in (1, 32):
        logits = [zipf_logits(batch, vocab, gen) for _ in range(args.variants)]
        for length in (256, 2048, 8192):
            c = history_cell(logits, length, args, rng)
            print(
                f"| {vocab} | {batch} | {length} | {c['distinct']:.0f} | {c['plain'] * 1e3:.2f} | "
                f"{c['hist'] * 1e3:.2f} | {c['hist'] / c['plain']:.2f}× |",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="B in {1, 32}, fewer repeats")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.repeats, args.ref_repeats, args.variants = (7, 1, 3) if args.quick else (21, 3, 4)
    batches = (1, 32) if args.quick else (1, 8, 32, 128)
    gen, rng = torch.Generator().manual_seed(args.seed), random.Random(args.seed)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, quick={args.quick}; {cpu_flags_line()}\n")
    print("| V | B | mix | softmax ms | sample ms | × softmax | reference ms | faster than reference |")
    print("|---|---|---|---|---|---|---|---|")
    for vocab in (49152, 151936):
        for batch in batches:
            logits = [zipf_logits(batch, vocab, gen) for _ in range(args.variants)]
            for mix in ["mixed", *MIXES]:
                c = bench_cell(logits, mix, args, rng)
                print(
                    f"| {vocab} | {batch} | {mix} | {c['softmax'] * 1e3:.3f} | {c['sample'] * 1e3:.3f} | "
                    f"{c['sample'] / c['softmax']:.1f}× | {c['reference'] * 1e3:.1f} | "
                    f"{c['reference'] / c['sample']:.0f}× |",
                    flush=True,
                )
    bench_histories(args, gen, rng)


if __name__ == "__main__":
    main()
