"""llama.cpp's llama-server and seedstream on the same GGUF files (issue 22): tok/s, ratio, idle RSS, time to SERVING.

A random-weight model with Llama-3.2-1B's shape (vocab 128256, hidden 2048, intermediate 8192, 16 layers,
32 heads, 8 KV heads, head_dim 64, tied embeddings; plain rope, theta 500000) is written as F16 by
scripts/write_gguf.py into a temporary folder, then turned into each type by llama.cpp's own llama-quantize
(real llama.cpp K-quant files), or, with `--writer`, written in each type by write_gguf.py itself.

Both servers run on one loopback port each, 2 threads, and get the same requests from one OpenAI client
(bench/servers.py's `race`): streamed `/v1/completions` with token-id prompts, temperature 0, exactly
`--new-tokens` tokens (EOS ignored), N requests started together. tok/s is the aggregate over the N streams
(best of `--repeats`, 3 by default, after one warm-up race of 2 tokens at the most streams: llama-server's first
race at 8 streams ran about 10 % slower than the next ones, and a best of 1 left each number to the host's moment).
RSS is read from /proc after the server is ready and before any request (idle), and after the requests, SETTLE_S later (after: a warm seedstream maps its packed weights and pages them in as they are first read); the
bound is the file + 300 MB + the KV cache the run leaves held (seedstream's prefix cache, read from its ModelInfo); time to
SERVING is from process start to llama-server's /health 200 or seedstream's gRPC health SERVING (seedstream: a
cold start, with an empty cache: kernels compiled and blocks packed, then a warm start on that cache, which
serves the requests and whose idle RSS is reported).

    python bench/bench_formats.py --llama-bin /work/llamacpp-build/llama.cpp/build/bin
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_e2e import free_port
from bench_models import SHAPES
from servers import (
    cpu_summary,
    llama_version,
    race,
    run_stamp,
    start_llama_server,
    stop_server,
    wait_llama_ready,
    wait_serving,
)

ROOT = Path(__file__).resolve().parent.parent
# bench_models.py's Llama-3.2-1B with plain rope (no llama3 scaling: same cost per token) and a short context
SHAPE = {
    **SHAPES["Llama-3.2-1B"][1],
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
# write_gguf.py's --type -> llama-quantize's type name
QUANTIZE_NAMES = {
    "q4_k_m": "Q4_K_M",
    "q5_k_m": "Q5_K_M",
    "q6_k": "Q6_K",
    "q4_0": "Q4_0",
    "q5_0": "Q5_0",
    "q8_0": "Q8_0",
}
PROMPT_TOKENS = 32
GREEDY = {"temperature": 0.0}
# RSS "after" is read this long after the last response: both servers idle (seedstream gives back its steps'
# memory after 0.5 s idle, server/engine/engine.py IDLE_RELEASE_S), as the bound is on an idle server.
SETTLE_S = 2.0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


# ---------------------------------------------------------------- the files


def write_model_dir(folder: Path) -> Path:
    """The random-weight Llama-3.2-1B-shaped model as a save_pretrained folder (bf16 on disk: half the bytes)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(ROOT / "scripts"))
    from tiny_tokenizer import save_tiny_tokenizer

    cfg = AutoConfig.for_model("llama", **SHAPE)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(str(folder))
    del model
    save_tiny_tokenizer(folder, vocab_size=512)  # write_gguf pads the vocabulary with unused tokens
    return folder


def make_files(args, work: Path) -> dict[str, Path]:
    """{type: .gguf path}, each file alone in its folder."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import write_gguf

    folder = work / "llama-1b"
    if not (folder / "config.json").exists():  # a kept --workdir is reused: writing 1.2B weights takes minutes
        write_model_dir(folder)
    files = {kind: _alone(work, kind) for kind in args.types}
    if args.writer:
        for kind, path in files.items():
            if not path.exists():
                print(f"writing {kind} with write_gguf.py ...", file=sys.stderr, flush=True)
                write_gguf.write_gguf(folder, path, kind)
        return files
    f16 = work / "llama-1b-f16.gguf"
    if not f16.exists():
        print("writing f16 with write_gguf.py ...", file=sys.stderr, flush=True)
        write_gguf.write_gguf(folder, f16, "f16")
    for kind in args.types:
        if files[kind].exists():
            continue
        cmd = [str(args.llama_bin / "llama-quantize"), str(f16), str(files[kind]), QUANTIZE_NAMES[kind], "2"]
        subprocess.run(cmd, check=True, capture_output=True)
    return files


def _alone(work: Path, kind: str) -> Path:
    (work / kind).mkdir(exist_ok=True)
    return work / kind / f"llama-1b-{kind}.gguf"


# ---------------------------------------------------------------- the servers


def start_seedstream(
    args, path: Path, http_port: int, grpc_port: int, cache: Path, activations: str = "float32"
) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "seedstream.server", "--model", str(path), "--host", "127.0.0.1"]
    cmd += ["--activations", activations]
    cmd += ["--port", str(grpc_port), "--http-port", str(http_port), "--threads", str(args.threads)]
    cmd += ["--log-level", "WARNING"]
    log = tempfile.TemporaryFile(mode="w+")
    env = {**os.environ, "SEEDSTREAM_CACHE": str(cache)}
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
    server.error_log = log
    return server


def measure(args, base_url: str, prompts: list[list[int]]) -> dict[int, float]:
    asyncio.run(race(base_url, prompts[: max(args.streams)], 2, GREEDY))  # warm-up, every slot at once
    return {
        n: max(asyncio.run(race(base_url, prompts[:n], args.new_tokens, GREEDY))[0] for _ in range(args.repeats))
        for n in args.streams
    }


def run_llama(args, path: Path, prompts) -> dict:
    port = free_port()
    started = time.perf_counter()
    slots = max(args.streams)
    server = start_llama_server(
        args.llama_bin, path, args.threads, slots, slots * (PROMPT_TOKENS + args.new_tokens + 16), port
    )
    try:
        wait_llama_ready(server, port)
        ready = time.perf_counter() - started
        idle = rss_mib(server.pid)
        tok_s = measure(args, f"http://127.0.0.1:{port}/v1", prompts)
        time.sleep(SETTLE_S)
        return dict(ready_s=ready, rss=idle, rss_after=rss_mib(server.pid), tok_s=tok_s)
    finally:
        stop_server(server)


def run_seedstream(args, path: Path, prompts, cache: Path) -> dict:
    """A cold start (the cache emptied first: kernels compiled, blocks packed), stopped once SERVING; then a warm
    start on that cache per --activations value, whose idle RSS, tok/s and RSS after the requests are reported."""
    shutil.rmtree(cache, ignore_errors=True)
    cold_s, _, server, _, _ = _start_seedstream_ready(args, path, cache, args.activations[0])
    stop_server(server)
    out: dict = {"ready_s": cold_s, "by_activations": {}, "skipped": {}}
    for activations in args.activations:
        try:
            warm_s, idle, server, http, grpc = _start_seedstream_ready(args, path, cache, activations)
        except Exception as exc:  # e.g. a format int8 activations refuse: the other values still count
            out["skipped"][activations] = f"{type(exc).__name__}: {exc}"
            continue
        try:
            tok_s = measure(args, f"http://127.0.0.1:{http}/v1", prompts)
            time.sleep(SETTLE_S)
            rss_after, kv = rss_mib(server.pid), asyncio.run(kv_held_mib(f"127.0.0.1:{grpc}"))
            run = dict(warm_s=warm_s, rss=idle, rss_after=rss_after, kv_mib=kv, tok_s=tok_s)
            out["by_activations"][activations] = run
        finally:
            stop_server(server)
    return out


async def kv_held_mib(target: str) -> float:
    """The KV cache a finished run leaves held, in MiB: the prefix cache's blocks (the running sequences' caches
    are freed when they end). The issue's RSS bound allows the KV budget actually used."""
    from seedstream.client import AsyncClient

    async with AsyncClient(target) as client:
        return (await client.model_info(timeout=10)).prefix_cache_bytes / 2**20


def _start_seedstream_ready(
    args, path: Path, cache: Path, activations: str
) -> tuple[float, float, subprocess.Popen, int, int]:
    """(seconds to SERVING, idle RSS MiB, the server, its HTTP port, its gRPC port)."""
    http, grpc_port = free_port(), free_port()
    started = time.perf_counter()
    server = start_seedstream(args, path, http, grpc_port, cache, activations)
    try:
        asyncio.run(wait_serving(server, f"127.0.0.1:{grpc_port}", timeout=1800))
    except BaseException:
        stop_server(server)
        raise
    return time.perf_counter() - started, rss_mib(server.pid), server, http, grpc_port


# ---------------------------------------------------------------- report


def print_report(args, files: dict[str, Path], results: dict, llama_version: str) -> None:
    print(f"\n{cpu_summary(args.threads)}\n{run_stamp()}")
    source = "write_gguf.py" if args.writer else "llama-quantize from write_gguf.py's F16"
    print(
        f"Llama-3.2-1B-shaped random weights, files by {source}; {PROMPT_TOKENS}-token prompts, "
        f"{args.new_tokens} new tokens per stream, temperature 0, best of {args.repeats}; llama.cpp: {llama_version}\n"
    )
    print(
        "| type | file MB | streams | seedstream activations | llama.cpp tok/s | seedstream tok/s | ratio "
        "| llama.cpp RSS MB idle / after | seedstream RSS MB idle / after | KV held MB | RSS bound (file + 300 + KV) "
        "| llama.cpp ready s | seedstream SERVING s cold / warm |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, path in files.items():
        size = path.stat().st_size / 2**20
        lc, ss = results[kind].get("llama.cpp"), results[kind].get("seedstream") or {}
        for activations, run in (ss.get("by_activations") or {"—": None}).items():
            for n in args.streams:
                a = lc["tok_s"][n] if lc else None
                b = run["tok_s"][n] if run else None
                print(
                    f"| {kind} | {size:.0f} | {n} | {activations} | {_f(a)} | {_f(b)} | {_ratio(b, a)} "
                    f"| {_pair(lc, 'rss', 'rss_after')} | {_pair(run, 'rss', 'rss_after')} | {_f(run and run['kv_mib'])} "
                    f"| {size + 300 + (run['kv_mib'] if run else 0):.0f} "
                    f"| {_f(lc and lc['ready_s'])} | {_f(ss.get('ready_s'))} / {_f(run and run['warm_s'])} |"
                )
        for activations, why in ss.get("skipped", {}).items():
            print(f"skipped {kind} seedstream --activations {activations}: {why}")
    for kind in files:
        for system, why in results[kind].get("skipped", {}).items():
            print(f"skipped {kind} {system}: {why}")


def _f(value, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pair(run: dict | None, first: str, second: str) -> str:
    return "—" if run is None else f"{run[first]:.0f} / {run[second]:.0f}"


def _ratio(a, b) -> str:
    return "—" if a is None or b is None else f"{a / b:.2f}x"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--llama-bin",
        type=Path,
        default=os.environ.get("LLAMA_CPP_BIN"),
        help="folder with llama-server and llama-quantize (native build; see /work/shared/KERNELS.md)",
    )
    ap.add_argument("--types", default="q4_k_m,q6_k,q4_0,q8_0")
    ap.add_argument("--streams", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="best of N races per stream count")
    ap.add_argument(
        "--activations", default="float32", help="seedstream --activations values, comma-separated (e.g. float32,int8)"
    )
    ap.add_argument("--writer", action="store_true", help="write every type with write_gguf.py, not llama-quantize")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    args = ap.parse_args()
    if args.llama_bin is None:
        ap.error("--llama-bin (or LLAMA_CPP_BIN) is required: a folder with llama-server and llama-quantize")
    args.types = args.types.split(",")
    args.streams = [int(s) for s in args.streams.split(",")]
    args.activations = args.activations.split(",")
    return args


def run_type(args, path: Path, prompts, cache: Path) -> dict:
    out: dict = {"skipped": {}}
    for name, fn, extra in (("llama.cpp", run_llama, ()), ("seedstream", run_seedstream, (cache,))):
        print(f"measuring {name} on {path.name} ...", file=sys.stderr, flush=True)
        try:
            out[name] = fn(args, path, prompts, *extra)
        except Exception as exc:  # one system failing must not cost the other's numbers
            out["skipped"][name] = f"{type(exc).__name__}: {exc}"
            print(f"  skipped: {out['skipped'][name]}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    import random

    args = parse_args()
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 512) for _ in range(PROMPT_TOKENS)] for _ in range(max(args.streams))]
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        files = make_files(args, work)
        results = {kind: run_type(args, path, prompts, work / f"cache-{kind}") for kind, path in files.items()}
        print_report(args, files, results, llama_version(args.llama_bin))


if __name__ == "__main__":
    main()
