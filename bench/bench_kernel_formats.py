"""GEMM speed of every weight format the kernels keep as stored: GFLOP/s and GB/s of packed weights read.

Random weights written in each GGUF type (scripts/write_gguf.encode), packed as stored, one `gemm()` call
(best of --repeat) at M = 1 and 8 rows, on the default model's shapes (K-types only where K is a multiple
of 256) and a 2048 x 8192 matrix. Prints the CPU flags first. With --rounds R every cell is measured R times,
the formats of a shape interleaved, and the median of the R bests is printed (a shared machine is noisy); --clock cpu times the process's CPU time
instead of the wall clock (with --threads 1, the core's own time: steadier when other work shares the cores).
--int8 times the formats int8 activations take both ways instead, interleaved, and prints GFLOP/s with float32
and with int8 activations and their ratio, at M = 1 and 8, with the load average before and after.
--shapes picks the shapes (also 1b_attn and 1b_up: Llama-3.2-1B's 2048 x 2048 and 8192 x 2048, timed only when
named); --rows sets the row counts (default 1,8); --against LIBSSK also times another build of the library (e.g.
the cache entry of an older commit's sources), each cell on both in turn, and prints both GFLOP/s and the ratio.
When that build reads another tile layout (an older PACK_LAYOUT), --against-tree DIR names its sources (a copy of
that commit's tree, e.g. `git archive <commit> server | tar -x -C DIR`): its packing.py packs the weights it reads.
Usage: PYTHONPATH=scripts python bench/bench_kernel_formats.py [--threads 2] [--repeat 20] [--rounds 1]
    [--formats q4_1,q5_0] [--shapes big] [--clock wall|cpu] [--int8] [--rows 1,8,64] [--against LIBSSK]
    [--against-tree DIR]
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import write_gguf

from seedstream.server.engine.loader import cache_root
from seedstream.server.kernels import cpu_flags_line, load_kernels, packing
from seedstream.server.kernels.lib import Kernels

FORMATS = ("q4_1", "q8_0", "q4_0", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "f16", "bf16", "f32")
SHAPES = [("gate_up", 3072, 576), ("down", 576, 1536), ("lm_head", 49152, 576), ("big", 2048, 8192)]
# Llama-3.2-1B's other matrix shapes (its down projection is "big"), timed only when --shapes names them.
EXTRA_SHAPES = [("1b_attn", 2048, 2048), ("1b_up", 8192, 2048)]


def _packed(fmt: str, n: int, k: int, packer=packing) -> packing.PackedMatrix:
    """A random [n, k] matrix written as fmt and packed by `packer` (this tree's packing module, or another's)."""
    w = (np.random.default_rng(n + k).standard_normal((n, k)) * 0.05).astype(np.float32)
    if fmt == "f32":
        return packer.pack_f32(w)
    rows = write_gguf.encode(w, fmt)
    return packer.pack_stored(fmt, np.ascontiguousarray(rows).view(np.uint16) if fmt == "bf16" else rows)


def _packing_of(tree: str):
    """The packing module of another tree's sources (its server/kernels loaded as a package of its own)."""
    pkg = types.ModuleType("against_kernels")
    pkg.__path__ = [str(Path(tree) / "server" / "kernels")]
    sys.modules[pkg.__name__] = pkg
    return importlib.import_module("against_kernels.packing")


def _best(kernels, matrix, x, repeat: int, clock) -> float:
    kernels.gemm(matrix, x)
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        kernels.gemm(matrix, x)
        best = min(best, clock() - t0)
    return best


def _shape_rows(kernels, name: str, n: int, k: int, formats: list[str], args) -> None:
    """Print one table row per format of this shape: medians over the rounds of the best-of-repeat times. With
    --against, each cell is timed on both libraries in turn and the row gives both GFLOP/s and their ratio."""
    fmts = [
        f
        for f in formats
        if packing.BLOCK_FORMATS.get(f, (32,))[0] <= k and k % packing.BLOCK_FORMATS.get(f, (32,))[0] == 0
    ]
    mats = {f: _packed(f, n, k) for f in fmts}
    descs = {(f, "new"): m.desc() for f, m in mats.items()}
    for f in fmts if args.against else ():  # the old build's weights: its own tree's layout, or these
        old = _packed(f, n, k, args.against_packing).data if args.against_packing else mats[f].data
        descs[f, "old"] = packing.PackedMatrix(f, n, k, old).desc()
    xs = {rows: torch.randn(rows, k) for rows in args.rows}
    libs = {"new": kernels, **({"old": args.against} if args.against else {})}
    times: dict[tuple[str, int, str], list[float]] = {(f, r, lib): [] for f in fmts for r in xs for lib in libs}
    for _ in range(args.rounds):
        for f in fmts:
            for rows, x in xs.items():
                for lib, kern in libs.items():
                    times[f, rows, lib].append(_best(kern, descs[f, lib], x, args.repeat, args.clock))
    for f in fmts:
        cells = []
        for rows in xs:
            t = statistics.median(times[f, rows, "new"])
            if args.against:
                old = statistics.median(times[f, rows, "old"])
                cells += [f"{2 * rows * n * k / old / 1e9:.1f}", f"{2 * rows * n * k / t / 1e9:.1f}", f"{old / t:.2f}"]
            else:
                cells += [f"{2 * rows * n * k / t / 1e9:.1f}", f"{mats[f].nbytes / t / 1e9:.1f}"]
        print(f"| {name} {n}x{k} | {f} | {mats[f].nbytes / (n * k):.3f} | " + " | ".join(cells) + " |", flush=True)


def _int8_rows(kernels, name: str, n: int, k: int, formats: list[str], args) -> None:
    """One row per format int8 activations take: float32- and int8-activation GFLOP/s and their ratio."""
    fmts = [f for f in formats if f in packing.INT8_FORMATS and k % packing.BLOCK_FORMATS.get(f, (32,))[0] == 0]
    descs = {}
    for f in fmts:
        m = _packed(f, n, k)
        descs[f, "f32"], descs[f, "int8"] = m.desc(), packing.for_int8_activations(m).desc()
    xs = {rows: torch.randn(rows, k) for rows in (1, 8)}
    times: dict[tuple[str, str, int], list[float]] = {(f, a, r): [] for f, a in descs for r in xs}
    for _ in range(args.rounds):
        for (f, act), desc in descs.items():
            for rows, x in xs.items():
                times[f, act, rows].append(_best(kernels, desc, x, args.repeat, args.clock))
    for f in fmts:
        cells = []
        for rows in xs:
            t32, t8 = (statistics.median(times[f, a, rows]) for a in ("f32", "int8"))
            cells += [f"{2 * rows * n * k / t32 / 1e9:.1f}", f"{2 * rows * n * k / t8 / 1e9:.1f}", f"{t32 / t8:.2f}"]
        print(f"| {name} {n}x{k} | {f} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1, help="measure each cell this many times; print the median")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--int8", action="store_true", help="float32 against int8 activations, per format")
    ap.add_argument("--rows", default="1,8", help="row counts M to time (without --int8)")
    ap.add_argument("--against", metavar="LIBSSK", help="also time this library build (same ISA), interleaved")
    ap.add_argument("--against-tree", metavar="DIR", help="the sources of --against's build, whose packing it reads")
    args = ap.parse_args()
    clock_name, args.clock = args.clock, time.perf_counter if args.clock == "wall" else time.process_time
    args.rows = [int(r) for r in args.rows.split(",")]
    kernels = load_kernels(args.threads, cache_root() / "kernels")
    if args.against:
        args.against = Kernels(Path(args.against), kernels.isa, args.threads)
    args.against_packing = _packing_of(args.against_tree) if args.against_tree else None
    print(
        cpu_flags_line(),
        f"; build {kernels.isa}, {args.threads} threads, median of {args.rounds} rounds, {clock_name} clock",
    )
    formats, shapes = args.formats.split(","), args.shapes.split(",")
    if args.int8:
        print(f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        print(
            "| matrix | format | M=1 f32-act GFLOP/s | M=1 int8 GFLOP/s | M=1 int8 x | M=8 f32-act | M=8 int8 | M=8 int8 x |"
        )
        print("|---|---|---|---|---|---|---|---|")
    else:
        print(f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        cols = [
            f"M={r} {c}"
            for r in args.rows
            for c in (("old GFLOP/s", "new GFLOP/s", "new x") if args.against else ("GFLOP/s", "GB/s"))
        ]
        print("| matrix | format | bytes/weight | " + " | ".join(cols) + " |")
        print("|---|---|---|" + "---|" * len(cols))
    for name, n, k in SHAPES + EXTRA_SHAPES:
        if name in shapes:
            (_int8_rows if args.int8 else _shape_rows)(kernels, name, n, k, formats, args)
    print(f"load average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
