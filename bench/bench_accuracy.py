"""Accuracy of each weight format (and of int8 activations) against the fp32 torch path on the same file:
max |logit difference|, greedy agreement and perplexity over a few pages of text (this repository's docs)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from seedstream.server.engine.backends import packed_weights
from seedstream.server.engine.kernel_model import KernelModel
from seedstream.server.engine.loader import cache_root, load_weights
from seedstream.server.engine.model import DecoderModel, ModelConfig, Segment
from seedstream.server.kernels import cpu_flags_line, load_kernels

ROOT = Path(__file__).resolve().parent.parent


def windows(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i : i + size] for i in range(0, len(ids) - 1, size) if len(ids[i : i + size]) > 1]


def logits_of(model, window: list[int]) -> torch.Tensor:
    n = len(window)
    cache = model.new_cache()
    return model.forward(torch.tensor(window), torch.arange(n), [Segment(cache, 0, n)], torch.arange(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens of text to score")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = load_weights(None, progress=lambda msg: None)
    cfg = ModelConfig.from_hf(weights.config)
    text = "\n\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    ids = weights.tokenizer(text, add_special_tokens=False)["input_ids"][: args.tokens]
    parts = windows(ids, args.window)
    kernels = load_kernels(args.threads, cache_root() / "kernels")
    models = {"fp32 torch path (reference)": DecoderModel(cfg, weights.state_dict, torch.device("cpu"), torch.float32)}
    for fmt in ("f32", "q4_1", "q8_0"):
        packed, resolved, norms = packed_weights(weights, cfg, fmt)
        models[f"kernels {resolved}"] = KernelModel(cfg, norms, packed, resolved, kernels)
        if resolved != "f32":
            models[f"kernels {resolved} int8 activations"] = KernelModel(
                cfg, norms, packed, resolved, kernels, activations="int8"
            )
    reference = [logits_of(models["fp32 torch path (reference)"], w) for w in parts]
    print(f"{len(ids)} tokens of this repository's docs in windows of {args.window}; {cpu_flags_line()}\n")
    print("| path | max abs logit diff vs fp32 | greedy agreement | perplexity |")
    print("|---|---|---|---|")
    for name, model in models.items():
        diff, agree, nll, count = 0.0, 0, 0.0, 0
        for w, ref in zip(parts, reference):
            got = ref if model is models["fp32 torch path (reference)"] else logits_of(model, w)
            diff = max(diff, float((got - ref).abs().max()))
            agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
            lp = torch.log_softmax(got[:-1].double(), -1).gather(1, torch.tensor(w[1:])[:, None])
            nll -= float(lp.sum())
            count += len(w) - 1
        total = sum(len(w) for w in parts)
        print(f"| {name} | {diff:.2e} | {agree / total:.4f} | {math.exp(nll / count):.4f} |")


if __name__ == "__main__":
    main()
