"""The torch path's two shape policies on one device: decode-step time, and whether a row's bits hold under batching.

For each policy (`tiles`: model.py's tile path, the CPU default; `fixed`: server/engine/fixed_shapes.py, the
CUDA default) and each batch, a probe sequence and batch-1 others are prefilled, then decoded for --steps
steps; the probe's logits at every step must be the same bits at every batch. On a GPU this shows whether
the tile path changes bits with the batch there and what the fixed shapes cost. Random weights of
bench/bench_gpu.py's shapes (SmolLM2-135M's layers by default), built at run time: no model file.

    python bench/bench_shapes.py --device cuda --dtype float32 --batches 1 8 32 128
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_gpu import RANDOM_SHAPES

from seedstream.server.engine.arch import ModelConfig, canonical_state_dict
from seedstream.server.engine.model import DecoderModel, Segment


def random_model(shape: str) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = AutoConfig.for_model("llama", **RANDOM_SHAPES[shape])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf, dtype=torch.float32)
    cfg = ModelConfig.from_hf(hf.to_dict())
    return cfg, canonical_state_dict(cfg, {k: v.detach() for k, v in model.state_dict().items()})


def run(model: DecoderModel, batch: int, context: int, steps: int) -> tuple[float, torch.Tensor]:
    """(seconds per decode step, the probe's logits [steps, V]) for `batch` sequences of `context` tokens."""
    dev, vocab = model.device, model.cfg.vocab_size
    caches = [model.new_cache() for _ in range(batch)]
    for i, cache in enumerate(caches):
        ids = torch.randint(3, vocab, (context,), generator=torch.Generator().manual_seed(i)).to(dev)
        model.forward(ids, torch.arange(context, device=dev), [Segment(cache, 0, context)], ids.new_zeros(0))
    probe, spent = [], 0.0
    for step in range(steps):
        pos = context + step
        tokens = torch.tensor([3 + (step * 7 + i) % (vocab - 3) for i in range(batch)], device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        logits = model.forward(
            tokens,
            torch.full((batch,), pos, device=dev),
            [Segment(c, pos, 1) for c in caches],
            torch.arange(batch, device=dev),
        )
        probe.append(logits[0].cpu())
        spent += time.perf_counter() - start if step else 0.0  # the first step warms up
    return spent / max(1, steps - 1), torch.stack(probe)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--shape", default="smollm2", choices=sorted(RANDOM_SHAPES))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--context", type=int, default=200)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    cfg, state = random_model(args.shape)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, {args.dtype}, shape {args.shape}, context {args.context}")
    print(f"{'policy':8} {'batch':>5} {'ms/step':>9} {'tok/s':>9}  probe bits as at batch {args.batches[0]}")
    for policy in ("tiles", "fixed"):
        model = DecoderModel(cfg, state, device, dtype, shapes=policy)
        first = None
        for batch in args.batches:
            seconds, probe = run(model, batch, args.context, args.steps)
            first = probe if first is None else first
            same = "same" if torch.equal(probe, first) else f"DIFFER (max {(probe - first).abs().max().item():.2e})"
            print(f"{policy:8} {batch:5d} {seconds * 1e3:9.2f} {batch / seconds:9.0f}  {same}", flush=True)


if __name__ == "__main__":
    main()
