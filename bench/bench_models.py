"""First start (cold and warm) and decode steps on random-weight models with the real shapes of popular models,
beside transformers on the same weights, in one run.

Each model is built by transformers from its real config (random weights, rounded to bfloat16 and saved as a
temporary safetensors folder with the default model's tokenizer; nothing is downloaded or kept). seedstream
then starts on that folder through its own loader: cold (empty conversion cache; the kernel library is already
compiled) and warm (cache filled). A decode step is timed at batch 1 and 8, context 128, on the kernels (each
weight format asked for) and on transformers' own forward with a KV cache (float32, a static batch), on the
same weights. Ratio = transformers' step time / seedstream's (above 1: seedstream is faster).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_engine import TransformersStepOf, step_time

from seedstream.server.engine import EngineConfig, backends, load_engine
from seedstream.server.engine.loader import cache_root, load_weights
from seedstream.server.kernels import cpu_flags_line, load_kernels

_LLAMA3 = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_theta": 500000.0,
}
SHAPES = {
    "Llama-3.2-1B": (
        "llama",
        dict(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            max_position_embeddings=131072,
            rope_parameters=_LLAMA3,
            tie_word_embeddings=True,
        ),
    ),
    "Qwen2.5-0.5B": (
        "qwen2",
        dict(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            tie_word_embeddings=True,
        ),
    ),
    "Qwen3-0.6B": (
        "qwen3",
        dict(
            vocab_size=151936,
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=40960,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            tie_word_embeddings=True,
        ),
    ),
    "Gemma-3-1B": (
        "gemma3_text",
        dict(
            vocab_size=262144,
            hidden_size=1152,
            intermediate_size=6912,
            num_hidden_layers=26,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=512,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
        ),
    ),
}


def build(name: str, layers: int | None, folder: Path):
    """The transformers model of SHAPES[name] (float32 values that bfloat16 holds exactly), saved to folder."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, shape = SHAPES[name]
    shape = dict(shape, num_hidden_layers=layers or shape["num_hidden_layers"])
    cfg = AutoConfig.for_model(model_type, **shape)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    model.save_pretrained(str(folder))
    load_weights(None, progress=lambda msg: None).tokenizer.save_pretrained(str(folder))
    return model.float()


def start_time(folder: Path, weights: str) -> tuple[float, object]:
    backends._packed_in_process.clear()  # a new process would not have it
    started = time.perf_counter()
    engine = load_engine(EngineConfig(model=str(folder), weights=weights, backend="kernels"), lambda msg: None)
    return time.perf_counter() - started, engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(SHAPES))
    parser.add_argument("--formats", default="f32,q8_0", help="--weights of seedstream (f32: the same weights)")
    parser.add_argument("--layers", type=int, default=0, help="cut every model to this many layers (0: real depth)")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels_dir = cache_root() / "kernels"
    load_kernels(args.threads, kernels_dir)  # built here once, then copied: the compile is not a model's start
    print(f"{args.threads} threads, context {args.context}, layers {args.layers or 'real'}; {cpu_flags_line()}\n")
    print(
        "| model | seedstream weights | cold start s | warm start s | batch | seedstream step ms "
        "| transformers step ms | transformers / seedstream |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            folder, cache = Path(tmp) / "model", Path(tmp) / "cache"
            model = build(name, args.layers, folder)
            hf = TransformersStepOf(model)
            hf_times = {b: hf.time(b, args.context, args.repeats) for b in (1, 8)}
            del hf, model
            gc.collect()
            os.environ["SEEDSTREAM_CACHE"] = str(cache)
            (cache).mkdir()
            shutil.copytree(kernels_dir, cache / "kernels")  # the compile is once per machine, not per model
            for fmt in args.formats.split(","):
                cold, engine = start_time(folder, fmt)
                del engine
                warm, engine = start_time(folder, fmt)
                for batch in (1, 8):
                    ours = statistics.median(
                        step_time(engine.model, batch, args.context, args.repeats) for _ in range(2)
                    )
                    base = hf_times[batch]
                    print(
                        f"| {name} | {engine.info.weight_format} | {cold:.1f} | {warm:.1f} | {batch} "
                        f"| {ours * 1e3:.1f} | {base * 1e3:.1f} | {base / ours:.2f}x |",
                        flush=True,
                    )
                del engine
                gc.collect()
            os.environ.pop("SEEDSTREAM_CACHE")


if __name__ == "__main__":
    main()
