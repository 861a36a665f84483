"""Exact speculative decoding (--speculative-tokens): tokens/s of one stream (or --streams concurrent
ones) with drafts of each length against the same engine settings without them, measured in one run,
interleaved; and the check that the streams are identical (they must be: speculation changes no token).

Workloads: texts that repeat their prompt (a code edit, a summary, a repetition) and free chat (the
anchors' prompts and sampling), each greedy or sampled as a user would run it.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench_e2e import PROMPTS, SAMPLING

from seedstream.sampler import SamplingParams
from seedstream.server.engine import EngineConfig, GenerationRequest, load_engine
from seedstream.server.kernels import cpu_flags_line

CODE = [
    """def merge(a, b):
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i]); i += 1
        else:
            out.append(b[j]); j += 1
    out.extend(a[i:]); out.extend(b[j:])
    return out""",
    """class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()

    def is_empty(self):
        return len(self.items) == 0""",
    """def count_words(text):
    counts = {}
    for word in text.split():
        word = word.lower()
        counts[word] = counts.get(word, 0) + 1
    return counts""",
]
TEXTS = [
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make glucose "
    "and oxygen. It takes place mainly in the leaves, inside the chloroplasts, which contain chlorophyll.",
]
GREEDY = dict(temperature=0.0)
WORKLOADS = {
    "code edit, greedy": (
        [f"Add a docstring to this Python code and return the whole code:\n{c}" for c in CODE]
        + [f"Add type hints to this Python code and return the whole code:\n{c}" for c in CODE],
        GREEDY,
    ),
    "code edit, sampled": (
        [f"Add comments to this Python code and return the whole code:\n{c}" for c in CODE],
        SAMPLING,
    ),
    "summary, greedy": ([f"Summarize this text: {t}" for t in TEXTS], GREEDY),
    "repetition, sampled": (
        [
            f"Repeat the following sentence three times: {s}"
            for s in ("The quick brown fox jumps over the lazy dog.", "A stitch in time saves nine.")
        ],
        SAMPLING,
    ),
    "chat, sampled": (PROMPTS[:4], SAMPLING),
    "chat, greedy": (PROMPTS[:4], GREEDY),
}


async def run_streams(
    engine, prompts: list[str], sampling: dict, new_tokens: int, streams: int
) -> tuple[float, list[list[int]]]:
    """Seconds for `streams` concurrent streams, each generating every prompt in turn (its own seeds), and
    the token ids of every generation."""

    async def stream(s: int) -> list[list[int]]:
        out = []
        for i, text in enumerate(prompts):
            ids = tuple(engine.render_chat([{"role": "user", "content": text}]))
            params = SamplingParams(seed=1000 * s + i, **sampling)
            request = GenerationRequest(ids, params, max_new_tokens=new_tokens)
            tokens = []
            async for chunk in engine.generate(engine.validate(request)[0]):
                tokens += chunk.token_ids
            out.append(tokens)
        return out

    start = time.perf_counter()
    results = await asyncio.gather(*(stream(s) for s in range(streams)))
    return time.perf_counter() - start, [t for r in results for t in r]


async def measure(engines: dict[int, object], args) -> None:
    for engine in engines.values():
        await engine.start()
    draft_lengths = [k for k in engines if k]
    print(
        "| workload | tokens | "
        + " | ".join(f"k={k} tok/s (x off) | k={k} kept/drafted" for k in draft_lengths)
        + " | off tok/s | identical |"
    )
    print("|---|---|" + "---|---|" * len(draft_lengths) + "---|---|")
    for name, (text, sampling) in WORKLOADS.items():  # text: the prompts, one stream each in turn
        prompts = text
        best: dict[int, float] = {}
        kept: dict[int, tuple[int, int]] = {}
        streams = {}
        for _ in range(args.repeats):  # interleaved, so that machine noise hits every setting alike
            for k, engine in engines.items():
                before = engine.speculation()
                seconds, streams[k] = await run_streams(engine, prompts, sampling, args.new_tokens, args.streams)
                after = engine.speculation()
                best[k] = min(best.get(k, seconds), seconds)
                kept[k] = (after.accepted - before.accepted, after.drafted - before.drafted)
        tokens = sum(len(s) for s in streams[0])
        identical = all(s == streams[0] for s in streams.values())
        cells = [
            f"{tokens / best[k]:.1f} ({best[0] / best[k]:.2f}x) | {kept[k][0]}/{kept[k][1]}" for k in draft_lengths
        ]
        print(
            f"| {name} | {tokens} | "
            + " | ".join(cells)
            + f" | {tokens / best[0]:.1f} | {'yes' if identical else 'NO'} |"
        )
    for engine in engines.values():
        await engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--draft-tokens", default="0,3,5,8", help="comma-separated --speculative-tokens (0: the baseline)"
    )
    parser.add_argument("--activations", default="float32", help="float32 or int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--streams", type=int, default=1, help="concurrent streams (drafts stop above 4)")
    args = parser.parse_args()
    lengths = sorted({0, *map(int, args.draft_tokens.split(","))})
    engines = {
        k: load_engine(
            EngineConfig(speculative_tokens=k, activations=args.activations, num_threads=args.threads),
            progress=lambda msg: None,
        )
        for k in lengths
    }
    print(
        f"{args.streams} stream(s), {args.new_tokens} new tokens per prompt, activations {args.activations}, {args.threads} threads; "
        f"{cpu_flags_line()}\n"
    )
    asyncio.run(measure(engines, args))


if __name__ == "__main__":
    main()
