"""What this machine allows a one-row (decode) GEMM: memory read bandwidth, fma throughput, and the kernels' rate.

Issue 22 asks the float32 kernels for 0.9x llama.cpp at one stream. Whether a one-row GEMM is bound by memory
or by the core decides what can help, so this prints, in one run:
  1. read bandwidth from DRAM (a 1 GiB buffer of distinct values, contiguous part per thread), 1 and N threads;
  2. fma throughput (12 independent chains of 8-wide fmas per thread), 1 and N threads;
  3. the kernels' one-row GEMM (float32 activations) on Q4_K and Q6_K weights, from cache (one 512 x 2048 matrix
     again and again) and from DRAM (2048 x 2048 matrices of --dram-mib in all, each read once a pass), 1 and N
     threads, in GFLOP/s and GB/s of packed weights, and that rate as a fraction of the DRAM bandwidth at as
     many threads.
A one-row GEMM that runs as fast from DRAM as from cache, at well under the bandwidth, is bound by the core's
work per weight, not by memory.
C parts are compiled with the machine's gcc (-O3 -march=native -fopenmp). Prints the CPU flags first.

    PYTHONPATH=scripts python bench/bench_ceiling.py [--threads 2] [--dram-mib 512]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import write_gguf

from seedstream.server.engine.loader import cache_root
from seedstream.server.kernels import cpu_flags_line, load_kernels, packing

PROBES_C = r"""
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
typedef float f8 __attribute__((vector_size(32)));
typedef unsigned u8 __attribute__((vector_size(32)));
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static double bandwidth(const unsigned* a, size_t words, int threads) {  /* GB/s, best of 4 */
  double best = 1e9; unsigned sink = 0;
  for (int rep = 0; rep < 4; ++rep) {
    double t = now();
#pragma omp parallel num_threads(threads) reduction(^:sink)
    {
      size_t part = words / threads / 32 * 32; const unsigned* p = a + omp_get_thread_num() * part;
      u8 s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
      for (size_t i = 0; i < part; i += 32) {
        u8 v0, v1, v2, v3;
        memcpy(&v0, p + i, 32); memcpy(&v1, p + i + 8, 32); memcpy(&v2, p + i + 16, 32); memcpy(&v3, p + i + 24, 32);
        s0 ^= v0; s1 ^= v1; s2 ^= v2; s3 ^= v3;
      }
      u8 s = s0 ^ s1 ^ s2 ^ s3; for (int l = 0; l < 8; ++l) sink ^= s[l];
    }
    t = now() - t; if (t < best) best = t;
  }
  if (sink == 12345) printf("#");
  return words * 4.0 / best / 1e9;
}
static double fma_rate(int threads) {  /* GFLOP/s, best of 3 */
  double best = 1e9; float sink = 0; const long iters = 50000000;
  for (int rep = 0; rep < 3; ++rep) {
    double t = now();
#pragma omp parallel num_threads(threads) reduction(+:sink)
    {
      f8 acc[12], x, y;
      for (int i = 0; i < 12; ++i) for (int l = 0; l < 8; ++l) acc[i][l] = 1e-3f * (i + l);
      for (int l = 0; l < 8; ++l) { x[l] = 0.999f; y[l] = 1e-4f; }
      for (long it = 0; it < iters; ++it)
        for (int i = 0; i < 12; ++i) acc[i] = acc[i] * x + y;
      for (int i = 0; i < 12; ++i) sink += acc[i][0];
    }
    t = now() - t; if (t < best) best = t;
  }
  if (sink == 12345) printf("#");
  return threads * iters * 12 * 16.0 / best / 1e9;
}
int main(int argc, char** argv) {
  int threads = atoi(argv[1]); size_t words = (size_t)1 << 28;
  unsigned* a = aligned_alloc(64, words * 4);
  for (size_t i = 0; i < words; ++i) a[i] = (unsigned)(i * 2654435761u);  /* distinct pages: none merged */
  for (int t = 1; t <= threads; t = t < threads && 2 * t > threads ? threads : 2 * t)
    printf("bandwidth %d %.2f\nfma %d %.2f\n", t, bandwidth(a, words, t), t, fma_rate(t));
  return 0;
}
"""


def run_probes(threads: int) -> dict[tuple[str, int], float]:
    """{(probe, threads): GB/s or GFLOP/s} from the compiled C probes."""
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "probes.c", Path(tmp) / "probes"
        src.write_text(PROBES_C)
        cmd = ["gcc", "-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", str(src), "-o", str(exe)]
        subprocess.run(cmd, check=True)
        out = subprocess.run([str(exe), str(threads)], check=True, capture_output=True, text=True).stdout
    probes = {}
    for name, t, value in (line.split() for line in out.strip().splitlines()):
        probes[(name, int(t))] = float(value)
    return probes


def stored_rows(fmt: str, n: int, k: int) -> np.ndarray:
    """A random [n, k] matrix as a GGUF stores it in fmt (block bytes per row)."""
    w = (np.random.default_rng(n + k).standard_normal((n, k)) * 0.05).astype(np.float32)
    return write_gguf.encode(w, fmt)


def gemm_rate(kernels, matrices: list[packing.PackedMatrix], passes: int) -> float:
    """Seconds per pass of one-row GEMMs over `matrices` (median of `passes`, after one warm-up pass)."""
    descs = [(m.desc(), torch.randn(1, m.k)) for m in matrices]
    times = []
    for i in range(passes + 1):
        t = time.perf_counter()
        for d, x in descs:
            kernels.gemm(d, x)
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dram-mib", type=int, default=512, help="packed weights read once a pass (well over L3)")
    ap.add_argument("--passes", type=int, default=7)
    args = ap.parse_args()
    print(cpu_flags_line())
    probes = run_probes(args.threads)
    threads = sorted({t for _, t in probes})
    kernels = {t: load_kernels(t, cache_root() / "kernels") for t in threads}
    print("\n| threads | DRAM read GB/s | fma GFLOP/s |\n|---|---|---|")
    for t in threads:
        print(f"| {t} | {probes[('bandwidth', t)]:.1f} | {probes[('fma', t)]:.1f} |")
    print(
        "\n| format | threads | weights from | GFLOP/s | GB/s of weights | of the DRAM bandwidth |\n|---|---|---|---|---|---|"
    )
    for fmt in ("q4_k", "q6_k"):
        rows = stored_rows(fmt, 2048, 2048)
        # 512 x 2048 again and again: cache-resident (about 0.3 MiB a thread at 2 threads, within L2), and large
        # enough that each call is not mostly the thread pool's hand-off
        one = [packing.pack_stored(fmt, rows[:512])] * 32
        copies = max(1, args.dram_mib * 2**20 // rows.nbytes)
        dram = [packing.pack_stored(fmt, np.roll(rows, i, axis=0)) for i in range(copies)]  # distinct bytes each
        for t in threads:
            for label, mats in (("cache", one), ("DRAM", dram)):
                sec = gemm_rate(kernels[t], mats, args.passes)
                flops = sum(2 * m.n * m.k for m in mats)
                nbytes = sum(m.data.numel() * m.data.element_size() for m in mats)
                share = nbytes / sec / 1e9 / probes[("bandwidth", t)]
                print(f"| {fmt} | {t} | {label} | {flops / sec / 1e9:.1f} | {nbytes / sec / 1e9:.1f} | {share:.2f} |")


if __name__ == "__main__":
    main()
