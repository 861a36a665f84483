"""End-to-end generation through gRPC vs. transformers `generate()` in-process, measured in one run.

Same model (the embedded default), fp32, top-k 50, top-p 0.9, temperature 0.8,
exactly `--new-tokens` new tokens per sequence (EOS ignored on both sides).
Prints a markdown table of tokens/s, time to first token and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how rain forms.",
    "Describe a busy market.",
    "What makes a good friend?",
    "Give advice to a new gardener.",
    "Tell me about the moon.",
    "Describe your favourite meal.",
    "Why do cats purr?",
]
SAMPLING = dict(temperature=0.8, top_k=50, top_p=0.9)


def chat_prompts(tokenizer, count: int) -> list[str]:
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPTS[i % len(PROMPTS)] + f" ({i})"}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for i in range(count)
    ]


def transformers_tok_per_s(model, tokenizer, prompts: list[str], new_tokens: int) -> float:
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **batch,
            do_sample=True,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            **SAMPLING,
        )
    if out.is_cuda:  # the last step's kernels may still be running
        torch.cuda.synchronize(out.device)
    elapsed = time.perf_counter() - start
    assert out.shape[1] - batch["input_ids"].shape[1] == new_tokens
    return len(prompts) * new_tokens / elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def seedstream_run(target: str, prompts: list[str], new_tokens: int) -> tuple[float, float]:
    """Concurrent streams, one per prompt: (aggregate tok/s, median time to first token in s)."""
    from seedstream.client import AsyncClient

    async with AsyncClient(target) as client:

        async def one(i: int, prompt: str) -> float:
            started = time.perf_counter()
            first = None
            count = 0
            async for chunk in client.generate_stream(
                prompt, seed=i, max_new_tokens=new_tokens, ignore_eos=True, **SAMPLING
            ):
                if first is None and chunk.token_ids:
                    first = time.perf_counter() - started
                count += len(chunk.token_ids)
            assert count == new_tokens, count
            return first

        start = time.perf_counter()
        ttfts = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
        elapsed = time.perf_counter() - start
    return len(prompts) * new_tokens / elapsed, statistics.median(ttfts)


def start_server(port: int, threads: int, weights: str | None = None, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """`seedstream serve` on a loopback port; its stderr goes to `server.error_log` (a temporary file)."""
    cmd = [
        sys.executable,
        "-m",
        "seedstream.server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--log-level",
        "WARNING",
    ]
    if weights:  # passed only when asked for: older servers do not know the flag
        cmd += ["--weights", weights]
    cmd += list(extra)
    # stderr to a file, not a pipe: a chatty server must never block on a full pipe buffer
    log = tempfile.TemporaryFile(mode="w+")
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    server.error_log = log
    return server


async def wait_serving(target: str, timeout: float = 300.0) -> None:
    from seedstream.client import AsyncClient

    async with AsyncClient(target) as client:
        await client.wait_until_serving(timeout=timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--streams", default="1,8,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for each measurement")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seedstream.server.engine.loader import default_model_path

    torch.set_num_threads(args.threads)
    path = default_model_path()
    folder, name = os.path.dirname(path), os.path.basename(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    streams = [int(s) for s in args.streams.split(",")]

    baseline = {
        n: max(
            transformers_tok_per_s(model, tokenizer, chat_prompts(tokenizer, n), args.new_tokens)
            for _ in range(args.repeats)
        )
        for n in streams
    }
    del model

    ours = {"seedstream": measure_server(args, tokenizer, streams)}

    print(
        f"\n{args.new_tokens} new tokens, fp32, top-k 50 / top-p 0.9 / T 0.8, {args.threads} threads, "
        f"best of {args.repeats}; seedstream tok/s, ratio to transformers and median TTFT\n"
    )
    head = "| concurrent streams | transformers generate() tok/s (static batch) |"
    rule = "|---|---|"
    for mode in ours:
        head += f" {mode}: tok/s | ratio | TTFT |"
        rule += "---|---|---|"
    print(head + "\n" + rule)
    for n in streams:
        row = f"| {n} | {baseline[n]:.1f} |"
        for mode, results in ours.items():
            tok_s, ttft = results[n]
            row += f" {tok_s:.1f} | {tok_s / baseline[n]:.2f}x | {ttft * 1e3:.0f} ms |"
        print(row)


def measure_server(args, tokenizer, streams: list[int]) -> dict[int, tuple[float, float]]:
    """Best-of-repeats (tok/s, median TTFT) per stream count, through a fresh server process."""
    port = free_port()
    server = start_server(port, args.threads)
    target = f"127.0.0.1:{port}"
    try:
        asyncio.run(wait_serving(target))
        asyncio.run(seedstream_run(target, chat_prompts(tokenizer, 2), 4))  # warm-up
        return {
            n: max(
                asyncio.run(seedstream_run(target, chat_prompts(tokenizer, n), args.new_tokens))
                for _ in range(args.repeats)
            )
            for n in streams
        }
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
