"""GEMM speed of every weight format the kernels keep as stored: GFLOP/s and GB/s of packed weights read.

Random weights written in each GGUF type (scripts/write_gguf.encode), packed as stored, one `gemm()` call
(best of --repeat) at M = 1 and 8 rows, on the default model's shapes (K-types only where K is a multiple
of 256) and a 2048 x 8192 matrix. Prints the CPU flags first.
Usage: PYTHONPATH=scripts python bench/bench_kernel_formats.py [--threads 2] [--repeat 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import write_gguf

from seedstream.server.engine.loader import cache_root
from seedstream.server.kernels import cpu_flags_line, load_kernels, packing

FORMATS = ("q4_1", "q8_0", "q4_0", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "f16", "bf16", "f32")
SHAPES = [("gate_up", 3072, 576), ("down", 576, 1536), ("lm_head", 49152, 576), ("big", 2048, 8192)]


def _packed(fmt: str, n: int, k: int) -> packing.PackedMatrix:
    w = (np.random.default_rng(n + k).standard_normal((n, k)) * 0.05).astype(np.float32)
    if fmt == "f32":
        return packing.pack_f32(w)
    rows = write_gguf.encode(w, fmt)
    return packing.pack_stored(fmt, np.ascontiguousarray(rows).view(np.uint16) if fmt == "bf16" else rows)


def _best(kernels, matrix, x, repeat: int) -> float:
    kernels.gemm(matrix, x)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        kernels.gemm(matrix, x)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    kernels = load_kernels(args.threads, cache_root() / "kernels")
    print(cpu_flags_line(), f"; build {kernels.isa}, {args.threads} threads")
    print("| matrix | format | bytes/weight | M=1 GFLOP/s | M=1 GB/s | M=8 GFLOP/s | M=8 GB/s |")
    print("|---|---|---|---|---|---|---|")
    for name, n, k in SHAPES:
        for fmt in FORMATS:
            size = packing.BLOCK_FORMATS.get(fmt, (32,))[0]
            if k % size:
                continue
            m = _packed(fmt, n, k)
            desc, cells = m.desc(), []
            for rows in (1, 8):
                x = torch.randn(rows, k)
                t = _best(kernels, desc, x, args.repeat)
                cells += [f"{2 * rows * n * k / t / 1e9:.1f}", f"{m.nbytes / t / 1e9:.1f}"]
            print(f"| {name} {n}x{k} | {fmt} | {m.nbytes / (n * k):.3f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
