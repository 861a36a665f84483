"""Find, convert (once, cached) and load model weights and the tokenizer."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from seedstream.server.phases import phase

from .identity import model_digests, model_files
from .sources import default_model_path, resolve_model

log = logging.getLogger("seedstream.engine")

# Bump when the cached layout or its key changes. 2: keyed on the model identity (was the weights' bytes).
CACHE_FORMAT = "2"

ProgressFn = Callable[[str], None]

# default_model_path is re-exported: tests and benchmarks import it from here.
__all__ = [
    "CACHE_FORMAT",
    "LoadedWeights",
    "ProgressFn",
    "cache_root",
    "check_supported",
    "default_model_path",
    "load_weights",
]


@dataclasses.dataclass
class LoadedWeights:
    """Everything read from disk: config, fp32/bf16 state dict, tokenizer."""

    model_id: str
    source_path: Path  # the .gguf file or the model folder
    content_sha256: str  # the weight files' bytes only (the receipt's model_sha256)
    # Weights, config, generation config, tokenizer and chat template (server/engine/identity.py): what the
    # converted-model cache, and every cache derived from the weights, must be keyed on.
    model_identity: str
    config: dict
    state_dict: dict[str, torch.Tensor]
    tokenizer: object  # a transformers fast tokenizer
    generation_eos: tuple[int, ...]


def cache_root() -> Path:
    root = os.environ.get("SEEDSTREAM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "seedstream"
    )
    return Path(root)


def _transformers_args(path: Path) -> tuple[Path, dict]:
    """(folder, kwargs) for transformers' from_pretrained: a GGUF is named by gguf_file inside its folder."""
    return (path.parent, {"gguf_file": path.name}) if path.is_file() else (path, {})


def check_supported(path: Path) -> None:
    """Refuse a model the engine cannot serve, from its config alone, before a conversion writes anything."""
    from transformers import AutoConfig

    from .model import ModelConfig

    folder, kwargs = _transformers_args(path)
    try:
        ModelConfig.from_hf(AutoConfig.from_pretrained(folder, **kwargs).to_dict())
    except ValueError as exc:  # from_hf's names what is unsupported and what is; add which model it was
        raise ValueError(f"model {path}: {exc}") from exc


def _convert_with_transformers(path: Path, out: Path, progress: ProgressFn) -> None:
    """Load through transformers (dequantising GGUF) and save safetensors + tokenizer to `out`."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, kwargs = _transformers_args(path)
    progress(f"converting {path} (first start only; cached in {out})")
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    config = AutoConfig.from_pretrained(folder, **kwargs).to_dict()
    config.pop("quantization_config", None)
    eos = _eos_ids(model.generation_config.eos_token_id, config.get("eos_token_id"), tokenizer)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)  # shared storage; rebuilt from the embedding on load
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        save_file(state, str(tmp / "model.safetensors"))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "seedstream.json").write_text(json.dumps({"config": config, "eos": list(eos), "source": str(path)}))
        with contextlib.suppress(OSError):  # atomic; fails when a concurrent converter won the race
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; else a failed or losing attempt


def _eos_ids(*sources) -> tuple[int, ...]:
    ids: set[int] = set()
    for src in sources[:-1]:
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(i) for i in src)
    tokenizer = sources[-1]
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return tuple(sorted(ids))


def load_weights(model: str | None, progress: ProgressFn | None = None) -> LoadedWeights:
    """Resolve `model` (None = default), convert once into the cache, load from the cache.

    Each phase is reported through `progress` with its time, and named in server.phases for the start-up
    heartbeat. The cache entry is keyed on the model identity, so an edited config, tokenizer or template
    is converted afresh, and two folders with the same weights never share an entry.
    """
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    report = progress or (lambda msg: log.info(msg))
    started = time.monotonic()
    with phase("resolving the model", report):
        source = resolve_model(model)
    with phase("hashing the model files", report):
        report(f"hashing {source.path}")
        digests = model_digests(model_files(source.path), cache_root() / "hashes")
    cached = cache_root() / f"v{CACHE_FORMAT}-{digests.model_identity[:32]}"
    if not (cached / "seedstream.json").exists():
        with phase("reading the model's config", report):
            check_supported(source.path)
        with phase("converting weights", report):
            _convert_with_transformers(source.path, cached, report)
    with phase("loading cached weights", report):
        report(f"loading cached weights from {cached}")
        meta = json.loads((cached / "seedstream.json").read_text())
        state = load_file(str(cached / "model.safetensors"))
        tokenizer = AutoTokenizer.from_pretrained(str(cached))
    report(f"weights loaded in {time.monotonic() - started:.1f}s (model identity {digests.model_identity[:16]})")
    return LoadedWeights(
        model_id=source.model_id,
        source_path=source.path,
        content_sha256=digests.model_sha256,
        model_identity=digests.model_identity,
        config=meta["config"],
        state_dict=state,
        tokenizer=tokenizer,
        generation_eos=tuple(meta["eos"]),
    )
