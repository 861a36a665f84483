"""Decode-step cost of batch invariance, in one run: the engine's forward (rows padded to a multiple of
4, one GEMM path for prefill and decode) vs. plain `F.linear` (not invariant)."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from seedstream.server.engine.loader import load_weights
from seedstream.server.engine.model import DecoderModel, ModelConfig, Segment


def step_time(model: DecoderModel, batch: int, context: int, repeats: int) -> float:
    """Median seconds of one decode step for `batch` sequences that each hold `context` tokens."""
    caches = [model.new_cache() for _ in range(batch)]
    prompt = list(range(1000, 1000 + context))
    for cache in caches:
        model.forward(torch.tensor(prompt), torch.arange(context), [Segment(cache, 0, context)], torch.tensor([context - 1]))
    times = []
    for step in range(repeats):
        pos = context + step
        start = time.perf_counter()
        model.forward(torch.tensor([7] * batch), torch.tensor([pos] * batch),
                      [Segment(c, pos, 1) for c in caches], torch.arange(batch), batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = load_weights(None, progress=lambda msg: None)
    cfg = ModelConfig.from_hf(weights.config)
    invariant = DecoderModel(cfg, weights.state_dict, torch.device("cpu"), torch.float32)
    plain = DecoderModel(cfg, weights.state_dict, torch.device("cpu"), torch.float32, row_tile=1)
    print(f"decode step, context {args.context}, fp32, {args.threads} threads; step time, and its ratio to plain F.linear\n")
    print("| batch | plain, not invariant (ms) | invariant (ms) | invariant / plain | invariant tok/s |")
    print("|---|---|---|---|---|")
    for batch in map(int, args.batches.split(",")):
        # Interleave the two so that machine noise hits them alike.
        times = {name: [] for name in ("plain", "invariant")}
        for _ in range(2):
            for name, model in (("plain", plain), ("invariant", invariant)):
                times[name].append(step_time(model, batch, args.context, args.repeats))
        p, c = (min(times[n]) for n in ("plain", "invariant"))
        print(f"| {batch} | {p * 1e3:.1f} | {c * 1e3:.1f} | {c / p:.2f}x | {batch / c:.0f} |")


if __name__ == "__main__":
    main()
