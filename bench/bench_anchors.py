"""seedstream against its anchors in one run: its gRPC server, transformers generate() and llama.cpp, same GGUF file.

All three get the same prompt token ids (chat prompts rendered once by the model's tokenizer), the same
threads and the same sampling (temperature 0.8, top-k 50, top-p 0.9, a seed per sequence), and generate
exactly `--new-tokens` tokens per sequence with EOS ignored:

- seedstream: a real server process on a loopback port, N concurrent GenerateStream calls;
- transformers: generate() in-process on the same GGUF file (dequantised to fp32), one static batch of N;
- llama.cpp: node-llama-cpp's prebuilt CPU binary (bench/llamacpp), one context with N parallel sequences.

Prints one markdown table (aggregate tok/s, the ratios, median time to first token) with the CPU's flags.
A system that cannot run (node or the npm package missing, a server flag rejected) is reported as
skipped with the reason; the others are still measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from bench_e2e import SAMPLING, chat_prompts, free_port, start_server, transformers_tok_per_s

LLAMACPP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llamacpp")
CPU_FLAGS = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_int8"]


class Skipped(Exception):
    """A system could not be measured; the message says why."""


def cpu_summary(threads: int) -> str:
    """One line: CPU model, visible cores, the SIMD flags that decide the kernels (from /proc/cpuinfo)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        return "CPU flags: /proc/cpuinfo not readable"
    avx512 = sorted(f for f in flags if f.startswith("avx512"))
    shown = " ".join(f for f in CPU_FLAGS if f in flags)
    return (
        f"CPU: {model}, {os.cpu_count()} logical cores, {threads} threads used; AVX2: "
        f"{'yes' if 'avx2' in flags else 'no'}, AVX-512: {'yes (' + ' '.join(avx512) + ')' if avx512 else 'no'}; "
        f"flags: {shown or 'none of ' + ', '.join(CPU_FLAGS)}"
    )


# ---------------------------------------------------------------- seedstream (gRPC server process)


async def seedstream_streams(target: str, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[float]]:
    """Concurrent streams, one per prompt, started together: (aggregate tok/s, time to first token per stream in s)."""
    from seedstream.client import AsyncClient

    async with AsyncClient(target) as client:

        async def one(i: int, ids: list[int]) -> float:
            started, first, count = time.perf_counter(), None, 0
            async for chunk in client.generate_stream(
                prompt_token_ids=ids, seed=i, max_new_tokens=new_tokens, ignore_eos=True, **SAMPLING
            ):
                if first is None and chunk.token_ids:
                    first = time.perf_counter() - started
                count += len(chunk.token_ids)
            if count != new_tokens:
                raise RuntimeError(f"stream {i} returned {count} tokens, expected {new_tokens}")
            return first

        start = time.perf_counter()
        ttfts = await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompts)))
        elapsed = time.perf_counter() - start
    return len(prompts) * new_tokens / elapsed, list(ttfts)


def server_errors(server: subprocess.Popen) -> str:
    server.error_log.seek(0)
    return server.error_log.read()


async def wait_serving(server: subprocess.Popen, target: str, timeout: float = 600.0) -> None:
    """Wait for health SERVING; a server that exits first (e.g. a rejected flag) raises Skipped with its error."""
    from seedstream.client import AsyncClient
    from seedstream.client.errors import SeedstreamError

    deadline = time.monotonic() + timeout
    async with AsyncClient(target) as client:
        while True:
            if server.poll() is not None:
                lines = [line for line in server_errors(server).splitlines() if line.strip()]
                raise Skipped(f"server exited with {server.returncode}: {lines[-1] if lines else 'no output'}")
            try:
                await client.wait_until_serving(timeout=2.0)
                return
            except SeedstreamError:
                if time.monotonic() > deadline:
                    raise Skipped(f"server not serving after {timeout:.0f}s") from None


def measure_seedstream(
    args,
    prompts: list[list[int]],
    streams: list[int],
    weights: str | None,
    kv_cache_dtype: str | None,
    activations: str | None = None,
    speculative_tokens: str | None = None,
) -> dict:
    """Best-of-repeats (tok/s, TTFTs) per stream count, through a fresh server process."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    extra = ("--kv-cache-dtype", kv_cache_dtype) if kv_cache_dtype else ()
    extra += ("--activations", activations) if activations else ()
    extra += ("--speculative-tokens", speculative_tokens) if speculative_tokens else ()
    server = start_server(port, args.threads, weights, extra)

    async def measure() -> dict:  # one event loop for all calls: grpc.aio channels are bound to their loop
        await wait_serving(server, target)
        await seedstream_streams(target, prompts[:2], 2)  # warm-up
        best = {}
        for n in streams:
            runs = [await seedstream_streams(target, prompts[:n], args.new_tokens) for _ in range(args.repeats)]
            best[n] = max(runs, key=lambda r: r[0])
        return best

    try:
        return asyncio.run(measure())
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


# ---------------------------------------------------------------- llama.cpp (node-llama-cpp prebuilt)


def measure_llamacpp(args, model_path: str, prompts: list[list[int]], streams: list[int]) -> tuple[dict, str]:
    """Per stream count (tok/s, TTFTs in s) from bench/llamacpp/bench.mjs, and what llama.cpp says it runs on."""
    node = shutil.which(args.node)
    if node is None:
        raise Skipped(f"'{args.node}' not found: install Node.js >= 20 to measure llama.cpp")
    if not os.path.isdir(os.path.join(LLAMACPP_DIR, "node_modules", "node-llama-cpp")):
        raise Skipped(
            f"node-llama-cpp not installed: cd {os.path.relpath(LLAMACPP_DIR)} && npm install --ignore-scripts"
        )
    job = dict(
        model=model_path,
        prompts=prompts,
        streams=streams,
        new_tokens=args.new_tokens,
        threads=args.threads,
        repeats=args.repeats,
        sampling=SAMPLING,
    )
    proc = subprocess.run(
        [node, os.path.join(LLAMACPP_DIR, "bench.mjs")],
        input=json.dumps(job),
        text=True,
        capture_output=True,
        cwd=LLAMACPP_DIR,
        timeout=3600,
        env={**os.environ, "NODE_LLAMA_CPP_SKIP_DOWNLOAD": "true"},
    )
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        error = next((line for line in lines if "Error" in line), lines[-1] if lines else "no output")
        raise Skipped(f"node exited with {proc.returncode}: {error}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    results = {int(n): (r["tok_s"], [t / 1e3 for t in r["ttft_ms"]]) for n, r in out["results"].items()}
    info = f"node-llama-cpp {out['version']}, {out['build_type']} binary, {out['system_info'].strip(' |')}"
    return results, info


# ---------------------------------------------------------------- transformers generate()


def measure_transformers(args, folder: str, name: str, tokenizer, texts: list[str], streams: list[int]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    transformers_tok_per_s(model, tokenizer, texts[:1], 2)  # warm-up
    return {
        n: max(transformers_tok_per_s(model, tokenizer, texts[:n], args.new_tokens) for _ in range(args.repeats))
        for n in streams
    }


# ---------------------------------------------------------------- report


def run_system(name: str, skipped: dict, fn, *fn_args):
    print(f"measuring {name} ...", file=sys.stderr, flush=True)
    try:
        return fn(*fn_args)
    except Skipped as exc:
        skipped[name] = str(exc)
    except Exception as exc:  # a broken system must not cost the others' numbers
        skipped[name] = f"{type(exc).__name__}: {exc}"
    print(f"  {name} skipped: {skipped[name]}", file=sys.stderr, flush=True)
    return None


def fmt(value, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


def ratio(a, b) -> str:
    return "—" if a is None or b is None else f"{a / b:.2f}x"


def print_report(args, streams, ours: dict, llama, llama_info, hf, skipped: dict) -> None:
    print(f"\n{cpu_summary(args.threads)}")
    print(
        f"{args.new_tokens} new tokens per sequence, {args.threads} threads, temperature {SAMPLING['temperature']}, "
        f"top-k {SAMPLING['top_k']}, top-p {SAMPLING['top_p']}, best of {args.repeats}; the same chat-prompt token "
        "ids for every system; aggregate tok/s; TTFT = median time to first token of streams started together\n"
    )
    print(
        "| streams | seedstream settings | seedstream tok/s | llama.cpp tok/s | transformers tok/s "
        "| seedstream / llama.cpp | seedstream / transformers | seedstream TTFT | llama.cpp TTFT |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in streams:
        lc = llama[n] if llama else (None, None)
        tf = hf[n] if hf else None
        for weights, results in ours.items():
            ss = results[n] if results else (None, None)
            print(
                f"| {n} | {weights} | {fmt(ss[0], '{:.1f}')} | {fmt(lc[0], '{:.1f}')} | {fmt(tf, '{:.1f}')} "
                f"| {ratio(ss[0], lc[0])} | {ratio(ss[0], tf)} | {ttft(ss[1], statistics.median)} "
                f"| {ttft(lc[1], statistics.median)} |"
            )
    n = max(streams)
    print(f"\nTime to first token, {n} chat prompts arriving together (median / max):")
    for weights, results in ours.items():
        s = results[n][1] if results else None
        print(f"  seedstream ({weights}): {ttft(s, statistics.median)} / {ttft(s, max)}")
    print(
        f"  llama.cpp: {ttft(llama[n][1] if llama else None, statistics.median)} / "
        f"{ttft(llama[n][1] if llama else None, max)}"
    )
    if llama_info:
        print(f"\nllama.cpp: {llama_info}")
    if hf:
        print("transformers: generate() on the GGUF file dequantised to float32, one static batch per stream count")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")


def ttft(values, how) -> str:
    return "—" if not values else f"{how(values) * 1e3:.0f} ms"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--streams", default=None, help="concurrent streams, comma-separated (default 1,8,32)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for each measurement")
    parser.add_argument(
        "--weights",
        default=None,
        help="server --weights values to measure, comma-separated (e.g. auto,q8_0); "
        "unset: the flag is not passed and the server uses its default",
    )
    parser.add_argument(
        "--kv-cache-dtypes",
        default=None,
        help="server --kv-cache-dtype values to measure, comma-separated (e.g. auto,bfloat16); unset: not passed",
    )
    parser.add_argument(
        "--activations",
        default=None,
        help="server --activations values to measure, comma-separated (e.g. float32,int8); unset: not passed",
    )
    parser.add_argument(
        "--speculative-tokens",
        default=None,
        help="server --speculative-tokens values to measure, comma-separated (e.g. 0,5); unset: not passed",
    )
    parser.add_argument(
        "--systems", default="seedstream,llamacpp,transformers", help="which systems to measure, comma-separated"
    )
    parser.add_argument("--node", default="node", help="Node.js executable for the llama.cpp anchor")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 4 new tokens, one repeat, streams 1,4 unless --streams is given",
    )
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.repeats = 4, 1
    args.streams = [int(s) for s in (args.streams or ("1,4" if args.quick else "1,8,32")).split(",")]
    args.systems = set(args.systems.split(","))
    return args


def main() -> None:
    args = parse_args()
    import torch
    from transformers import AutoTokenizer

    from seedstream.server.engine.loader import default_model_path

    torch.set_num_threads(args.threads)
    path = default_model_path()
    folder, name = os.path.dirname(path), os.path.basename(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    streams = args.streams
    texts = chat_prompts(tokenizer, max(streams))
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    print(f"model: {path}", file=sys.stderr)

    skipped: dict[str, str] = {}
    hf = llama = llama_info = None
    if "transformers" in args.systems:
        hf = run_system("transformers", skipped, measure_transformers, args, folder, name, tokenizer, texts, streams)
    if "llamacpp" in args.systems:
        got = run_system("llama.cpp", skipped, measure_llamacpp, args, path, prompts, streams)
        llama, llama_info = got if got else (None, None)
    ours = {}
    if "seedstream" in args.systems:
        for weights in args.weights.split(",") if args.weights else [None]:
            for kv in args.kv_cache_dtypes.split(",") if args.kv_cache_dtypes else [None]:
                for act in args.activations.split(",") if args.activations else [None]:
                    for spec in args.speculative_tokens.split(",") if args.speculative_tokens else [None]:
                        parts = (weights, kv and f"kv {kv}", act and f"{act} activations", spec and f"spec {spec}")
                        label = " ".join(x for x in parts if x) or "server default"
                        ours[label] = run_system(
                            f"seedstream ({label})",
                            skipped,
                            measure_seedstream,
                            *(args, prompts, streams, weights, kv, act, spec),
                        )
    print_report(args, streams, ours, llama, llama_info, hf, skipped)


if __name__ == "__main__":
    main()
