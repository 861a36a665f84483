"""Decode-step time per forward path, in one run: plain `F.linear` (fp32 MKL, not batch-invariant) as the
baseline, the torch batch-invariant path, and the C++ kernels with each weight format (f32, q8_0, q4_1)."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from seedstream.server.engine.backends import packed_weights
from seedstream.server.engine.kernel_model import KernelModel
from seedstream.server.engine.loader import cache_root, load_weights
from seedstream.server.engine.model import DecoderModel, ModelConfig, Segment
from seedstream.server.kernels import cpu_flags_line, load_kernels


def step_time(model, batch: int, context: int, repeats: int) -> float:
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
    parser.add_argument("--formats", default="f32,q8_0,q4_1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = load_weights(None, progress=lambda msg: None)
    cfg = ModelConfig.from_hf(weights.config)
    kernels = load_kernels(args.threads, cache_root() / "kernels")
    models = {
        "plain F.linear": DecoderModel(cfg, weights.state_dict, torch.device("cpu"), torch.float32, row_tile=1),
        "torch invariant": DecoderModel(cfg, weights.state_dict, torch.device("cpu"), torch.float32),
    }
    for fmt in args.formats.split(","):
        packed, resolved = packed_weights(weights, cfg, fmt)
        models[f"kernels {resolved}"] = KernelModel(cfg, weights.state_dict, packed, resolved, kernels)
    names = list(models)
    print(f"decode step, context {args.context}, {args.threads} threads, kernels {kernels.isa}; {cpu_flags_line()}")
    print("step time in ms, and (in brackets) its ratio to plain F.linear; last column: best kernels tok/s\n")
    print("| batch | " + " | ".join(names) + " | kernels tok/s |")
    print("|---|" + "---|" * (len(names) + 1))
    for batch in map(int, args.batches.split(",")):
        times = {name: [] for name in names}
        for _ in range(2):  # interleaved, so that machine noise hits every path alike
            for name in names:
                times[name].append(step_time(models[name], batch, args.context, args.repeats))
        best = {name: min(t) for name, t in times.items()}
        base = best["plain F.linear"]
        cells = [f"{best[n] * 1e3:.1f} ({best[n] / base:.2f}x)" for n in names]
        fastest = min(best[n] for n in names if n.startswith("kernels"))
        print(f"| {batch} | " + " | ".join(cells) + f" | {batch / fastest:.0f} |")


if __name__ == "__main__":
    main()
