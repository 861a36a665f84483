"""Decode-step cost of batch invariance: the engine's forward with row padding on vs. off, in one run."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from seedstream.server.engine.loader import load_weights
from seedstream.server.engine.model import ROW_TILE, DecoderModel, ModelConfig, Segment


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
                      [Segment(c, pos, 1) for c in caches], torch.arange(batch))
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
    print(f"decode step, context {args.context}, fp32, {args.threads} threads; row tile {ROW_TILE} vs none\n")
    print("| batch | invariant (ms) | not invariant (ms) | cost of invariance | tok/s invariant |")
    print("|---|---|---|---|---|")
    for batch in map(int, args.batches.split(",")):
        # Interleave the two so that machine noise hits both alike.
        a = min(step_time(invariant, batch, args.context, args.repeats) for _ in range(2))
        b = min(step_time(plain, batch, args.context, args.repeats) for _ in range(2))
        print(f"| {batch} | {a * 1e3:.1f} | {b * 1e3:.1f} | {a / b:.2f}x | {batch / a:.0f} |")


if __name__ == "__main__":
    main()
