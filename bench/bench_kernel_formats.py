"""GEMM speed of every weight format the kernels keep as stored: GFLOP/s and GB/s of packed weights read.

Random weights written in each GGUF type (scripts/write_gguf.encode), packed as stored, one `gemm()` call
(best of --repeat) at M = 1 and 8 rows, on the default model's shapes (K-types only where K is a multiple
of 256) and a 2048 x 8192 matrix. Prints the CPU flags first. With --rounds R every cell is measured R times,
the formats of a shape interleaved, and the median of the R bests is printed (a shared machine is noisy); --clock cpu times the process's CPU time
instead of the wall clock (with --threads 1, the core's own time: steadier when other work shares the cores).
Usage: PYTHONPATH=scripts python bench/bench_kernel_formats.py [--threads 2] [--repeat 20] [--rounds 1]
    [--formats q4_1,q5_0] [--shapes big] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import write_gguf

from seedstream.server.engine.loader import cache_root
from seedstream.server.kernels import cpu_flags_line, load_kernels, packing

FORMATS = ("q4_1", "q8_0", "q4_0", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "f16", "bf16", "f32")
SHAPES = [("gate_up", 3072, 576), ("down", 576, 1536), ("lm_head", 49152, 576), ("big", 2048, 8192)]


def _packed(fmt: str, n: int, k: int) -> packing.PackedMatrix:
    w = (np.random.default_rng(n + k).standard_normal((n, k)) * 0.05).astype(np.float32)
    if fmt == "f32":
        return packing.pack_f32(w)
    rows = write_gguf.encode(w, fmt)
    return packing.pack_stored(fmt, np.ascontiguousarray(rows).view(np.uint16) if fmt == "bf16" else rows)


def _best(kernels, matrix, x, repeat: int, clock) -> float:
    kernels.gemm(matrix, x)
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        kernels.gemm(matrix, x)
        best = min(best, clock() - t0)
    return best


def _shape_rows(kernels, name: str, n: int, k: int, formats: list[str], args) -> None:
    """Print one table row per format of this shape: medians over the rounds of the best-of-repeat times."""
    fmts = [
        f
        for f in formats
        if packing.BLOCK_FORMATS.get(f, (32,))[0] <= k and k % packing.BLOCK_FORMATS.get(f, (32,))[0] == 0
    ]
    mats = {f: _packed(f, n, k) for f in fmts}
    descs = {f: m.desc() for f, m in mats.items()}
    xs = {rows: torch.randn(rows, k) for rows in (1, 8)}
    times: dict[tuple[str, int], list[float]] = {(f, r): [] for f in fmts for r in xs}
    for _ in range(args.rounds):
        for f in fmts:
            for rows, x in xs.items():
                times[f, rows].append(_best(kernels, descs[f], x, args.repeat, args.clock))
    for f in fmts:
        cells = []
        for rows in xs:
            t = statistics.median(times[f, rows])
            cells += [f"{2 * rows * n * k / t / 1e9:.1f}", f"{mats[f].nbytes / t / 1e9:.1f}"]
        print(f"| {name} {n}x{k} | {f} | {mats[f].nbytes / (n * k):.3f} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1, help="measure each cell this many times; print the median")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = ap.parse_args()
    clock_name, args.clock = args.clock, time.perf_counter if args.clock == "wall" else time.process_time
    kernels = load_kernels(args.threads, cache_root() / "kernels")
    print(
        cpu_flags_line(),
        f"; build {kernels.isa}, {args.threads} threads, median of {args.rounds} rounds, {clock_name} clock",
    )
    print("| matrix | format | bytes/weight | M=1 GFLOP/s | M=1 GB/s | M=8 GFLOP/s | M=8 GB/s |")
    print("|---|---|---|---|---|---|---|")
    formats, shapes = args.formats.split(","), args.shapes.split(",")
    for name, n, k in SHAPES:
        if name in shapes:
            _shape_rows(kernels, name, n, k, formats, args)


if __name__ == "__main__":
    main()
