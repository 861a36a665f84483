"""Decode-step time per forward path, in one run: transformers' own Llama forward (fp32, MKL, KV cache; not
batch-invariant) as the baseline, seedstream's torch path, and the C++ kernels with each weight format,
KV-cache type and activation type."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from seedstream.server.engine.backends import packed_weights
from seedstream.server.engine.kernel_model import KernelModel
from seedstream.server.engine.loader import cache_root, load_weights
from seedstream.server.engine.model import DecoderModel, ModelConfig, Segment
from seedstream.server.kernels import cpu_flags_line, load_kernels


def step_time(model, batch: int, context: int, repeats: int) -> float:
    """Median seconds of one decode step for `batch` sequences that each hold `context` tokens."""
    caches = [model.new_cache() for _ in range(batch)]
    prompt = list(range(1000, 1000 + context))
    for cache in caches:
        model.forward(
            torch.tensor(prompt), torch.arange(context), [Segment(cache, 0, context)], torch.tensor([context - 1])
        )
    times = []
    for step in range(repeats):
        pos = context + step
        start = time.perf_counter()
        model.forward(
            torch.tensor([7] * batch),
            torch.tensor([pos] * batch),
            [Segment(c, pos, 1) for c in caches],
            torch.arange(batch),
            batch,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class TransformersStepOf:
    """A decode step of a transformers model on a static batch with a KV cache (float32, MKL)."""

    def __init__(self, model):
        self.model = model

    @torch.inference_mode()
    def time(self, batch: int, context: int, repeats: int) -> float:
        ids = torch.arange(1000, 1000 + context).repeat(batch, 1)
        out = self.model(ids, use_cache=True)
        cache = out.past_key_values
        times = []
        for step in range(repeats):
            start = time.perf_counter()
            out = self.model(torch.full((batch, 1), 7), past_key_values=cache, use_cache=True)
            times.append(time.perf_counter() - start)
            cache = out.past_key_values
        return statistics.median(times)


class TransformersStep(TransformersStepOf):
    """TransformersStepOf the default model, as transformers reads its GGUF (the old fp32 MKL path)."""

    def __init__(self, weights):
        import os

        from transformers import AutoModelForCausalLM

        from seedstream.server.engine.loader import default_model_path

        path = default_model_path()
        super().__init__(
            AutoModelForCausalLM.from_pretrained(
                os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
            ).eval()
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--formats", default="f32,q8_0,q4_1")
    parser.add_argument("--kv-cache-dtypes", default="float32,bfloat16", help="KV-cache types of the kernels")
    parser.add_argument(
        "--activations", default="float32,int8", help="activation types of the kernels (int8: q8_0/q4_1 only)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = load_weights(None, progress=lambda msg: None)
    cfg = ModelConfig.from_hf(weights.config)
    kernels = load_kernels(args.threads, cache_root() / "kernels")
    models = {
        "transformers fp32": TransformersStep(weights),
        "seedstream torch path": DecoderModel(cfg, weights.state_dict, torch.device("cpu"), torch.float32),
    }
    for fmt in args.formats.split(","):
        packed, resolved, norms = packed_weights(weights, cfg, fmt)
        for kv in args.kv_cache_dtypes.split(","):
            for act in args.activations.split(","):
                if act == "int8" and resolved == "f32":
                    continue
                label = f"kernels {resolved}" + ("" if kv == "float32" else f" kv {kv}")
                label += "" if act == "float32" else f" {act} act"
                kv_dtype = getattr(torch, kv)
                models[label] = KernelModel(cfg, norms, packed, resolved, kernels, kv_dtype, act)
    names = list(models)
    print(f"decode step, context {args.context}, {args.threads} threads, kernels {kernels.isa}; {cpu_flags_line()}")
    print("step time in ms, and (in brackets) its ratio to transformers; last column: best kernels tok/s\n")
    print("| batch | " + " | ".join(names) + " | kernels tok/s |")
    print("|---|" + "---|" * (len(names) + 1))
    for batch in map(int, args.batches.split(",")):
        times = {name: [] for name in names}
        for _ in range(2):  # interleaved, so that machine noise hits every path alike
            for name in names:
                model = models[name]
                timed = (
                    model.time(batch, args.context, args.repeats)
                    if isinstance(model, TransformersStepOf)
                    else step_time(model, batch, args.context, args.repeats)
                )
                times[name].append(timed)
        best = {name: min(t) for name, t in times.items()}
        base = best["transformers fp32"]
        cells = [f"{best[n] * 1e3:.1f} ({best[n] / base:.2f}x)" for n in names]
        fastest = min(best[n] for n in names if n.startswith("kernels"))
        print(f"| {batch} | " + " | ".join(cells) + f" | {batch / fastest:.0f} |")


if __name__ == "__main__":
    main()
