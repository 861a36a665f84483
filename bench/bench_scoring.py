"""Scoring throughput (pairs/s): seedstream's Score RPC vs transformers in-process, in one run.

Both sides score the same (context, continuation) token pairs on the same model
and dtype: an lm-eval-style multiple-choice workload (each context with four
continuations). seedstream: a real server on a loopback port, the pairs sent as
Score calls of --batch pairs with --concurrency calls in flight. transformers:
the pairs sorted by length and scored in padded batches of --hf-batch (one
forward, log_softmax, gather), both over the continuation positions only and,
as lm-evaluation-harness's HF backend does, over every position. The server's
exact prefix cache is emptied before each timed run, so a run's hits are the
contexts its own pairs share (each context is computed once, its four
continuations reuse it); the hit rate is printed.

    python bench/bench_scoring.py            # 128 pairs, best of 2 runs per side
    python bench/bench_scoring.py --quick    # 32 pairs, a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import random
import statistics
import threading
import time

import torch

WORDS = (
    "the a of and to in is was for on that with as by at from this be are which it an or "
    "river mountain city history science music garden window bridge market ocean forest "
    "computer language theory market village student teacher engine signal harvest winter "
    "summer ancient modern quickly slowly carefully brightly quietly famous hidden golden"
).split()


def make_pairs(n_pairs: int, seed: int = 0) -> list[tuple[str, str]]:
    """Multiple-choice-like text pairs: contexts of 20-200 words, four short continuations each."""
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n_pairs:
        context = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 200))).capitalize() + ". Answer:"
        for _ in range(4):
            pairs.append((context, " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))))
    return pairs[:n_pairs]


class LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 600.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def score_grpc(target: str, pairs, batch: int, concurrency: int):
    """Score every pair through the server; returns (seconds, results in pair order)."""
    from seedstream.client import Client

    chunks = [pairs[i : i + batch] for i in range(0, len(pairs), batch)]
    with Client(target, timeout=600) as client:
        client.score(chunks[0][:2])  # connect and warm up
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            done = list(pool.map(lambda c: client.score(c), chunks))
        seconds = time.perf_counter() - start
    return seconds, [r for resp in done for r in resp]


def hf_model(weights, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(weights.config)
    model_type = config.pop("model_type", "llama")
    cfg = AutoConfig.for_model(model_type, **config)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    missing, unexpected = model.load_state_dict(weights.state_dict, strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing):
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.eval()


def score_hf(model, pairs, batch: int, full_log_softmax: bool = False):
    """Score token pairs in padded batches, longest first; returns (seconds, [(logprobs, is_greedy)]).

    full_log_softmax=False takes log_softmax over the continuation positions only (the cheapest
    correct way); True takes it over every position of the padded batch first, as
    lm-evaluation-harness's HF backend does.
    """
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    out: list = [None] * len(pairs)
    start = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(order), batch):
            idx = order[b : b + batch]
            seqs = [pairs[i][0] + pairs[i][1] for i in idx]
            width = max(len(s) for s in seqs)
            ids = torch.zeros((len(seqs), width), dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits  # [B, T, V]
            if full_log_softmax:
                all_logprobs = torch.log_softmax(logits.float(), dim=-1)
            for r, i in enumerate(idx):
                ctx, cont = pairs[i]
                rows = logits[r, len(ctx) - 1 : len(ctx) + len(cont) - 1].float()
                if full_log_softmax:
                    logprobs = all_logprobs[r, len(ctx) - 1 : len(ctx) + len(cont) - 1]
                else:
                    logprobs = torch.log_softmax(rows, dim=-1)
                target = torch.tensor(cont)
                chosen = logprobs.gather(1, target[:, None])[:, 0]
                out[i] = (chosen.tolist(), bool((rows.argmax(-1) == target).all()))
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=128, help="pairs to score (default 128)")
    parser.add_argument("--batch", type=int, default=32, help="pairs per Score call (default 32)")
    parser.add_argument("--concurrency", type=int, default=4, help="Score calls in flight (default 4)")
    parser.add_argument("--hf-batch", type=int, default=16, help="transformers batch size (default 16)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side, best kept (default 2)")
    parser.add_argument("--quick", action="store_true", help="32 pairs, one timed run per side")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.repeats = 32, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    from seedstream.server.app import SeedstreamServer
    from seedstream.server.engine import Engine, EngineConfig
    from seedstream.server.engine.loader import load_weights

    weights = load_weights(None, progress=lambda msg: None)
    engine = Engine(weights, EngineConfig(dtype=args.dtype))
    text_pairs = make_pairs(args.pairs)
    pairs = [tuple(map(list, engine.encode_pair(c, x))) for c, x in text_pairs]
    tokens = sum(len(c) + len(x) for c, x in pairs)

    loop = LoopThread()
    loop.run(engine.start())
    server = SeedstreamServer(engine, host="127.0.0.1", port=0)
    loop.run(server.start())
    model = hf_model(weights, getattr(torch, args.dtype))
    try:
        score_hf(model, pairs[:4], args.hf_batch)  # warm up
        grpc_runs, hf_runs, lmeval_runs = [], [], []
        hit_rates = []
        for _ in range(args.repeats):  # interleaved, so machine noise hits all alike
            engine.prefix_cache.clear()  # the engine is idle between runs: each run starts cold
            before = dataclasses.replace(engine.prefix_cache.stats)
            grpc_runs.append(score_grpc(server.address, pairs, args.batch, args.concurrency))
            after = engine.prefix_cache.stats
            hits, misses = after.hit_tokens - before.hit_tokens, after.miss_tokens - before.miss_tokens
            hit_rates.append(hits / max(1, hits + misses))
            hf_runs.append(score_hf(model, pairs, args.hf_batch))
            lmeval_runs.append(score_hf(model, pairs, args.hf_batch, full_log_softmax=True))
    finally:
        loop.run(server.shutdown(5.0, stop_engine=True))
        loop.close()

    grpc_s, grpc_res = min(grpc_runs, key=lambda r: r[0])
    hf_s, hf_res = min(hf_runs, key=lambda r: r[0])
    lmeval_s = min(r[0] for r in lmeval_runs)
    diff = max(abs(a - b) for g, (h, _) in zip(grpc_res, hf_res) for a, b in zip(g.logprobs, h))
    greedy_same = sum(g.is_greedy == h for g, (_, h) in zip(grpc_res, hf_res))
    mean_len = statistics.mean(len(c) + len(x) for c, x in pairs)

    print(
        f"\nscoring {len(pairs)} pairs ({tokens} tokens, mean {mean_len:.0f} per pair), {args.dtype}, "
        f"{torch.get_num_threads()} torch threads, best of {args.repeats}"
    )
    print(
        f"seedstream: Score calls of {args.batch} pairs, {args.concurrency} in flight; "
        f"transformers: padded batches of {args.hf_batch}, longest first\n"
    )
    print("| path | seconds | pairs/s | tokens/s | vs transformers |")
    print("|---|---|---|---|---|")
    print(
        f"| seedstream gRPC Score | {grpc_s:.2f} | {len(pairs) / grpc_s:.1f} | {tokens / grpc_s:.0f} | "
        f"{hf_s / grpc_s:.2f}x |"
    )
    print(
        f"| transformers in-process, log_softmax at continuation positions | {hf_s:.2f} | {len(pairs) / hf_s:.1f} | "
        f"{tokens / hf_s:.0f} | 1.00x |"
    )
    print(
        f"| transformers in-process, log_softmax at every position (as lm-eval's HF backend) | {lmeval_s:.2f} | "
        f"{len(pairs) / lmeval_s:.1f} | {tokens / lmeval_s:.0f} | {hf_s / lmeval_s:.2f}x |"
    )
    print(f"\nseedstream vs the lm-eval-style transformers loop: {lmeval_s / grpc_s:.2f}x")
    print(f"\nagreement: max |logprob difference| {diff:.2e}; is_greedy equal on {greedy_same}/{len(pairs)} pairs")
    print(
        f"prefix cache hit rate (positions served from the cache / all prompt positions), per run: "
        f"{', '.join(f'{r:.1%}' for r in hit_rates)}"
    )


if __name__ == "__main__":
    main()
