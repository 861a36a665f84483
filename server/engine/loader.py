"""Find, convert (once, cached) and load model weights and the tokenizer."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from seedstream.server import cachefs
from seedstream.server.cachefs import cache_root
from seedstream.server.phases import phase

from .gguf_tensors import LazyTensors, StoredTensor, read_gguf
from .identity import model_digests, model_files, weight_files
from .sources import default_model_path, resolve_model

log = logging.getLogger("seedstream.engine")

# Bump when the cached layout or its key changes. 2: keyed on the model identity (was the weights' bytes).
# 3: canonical names (arch.canonical_state_dict); a GGUF's entry holds no weights (they are read from the file).
# 4: every entry is sealed with a manifest (seedstream.server.cachefs) and checked at each load.
CACHE_FORMAT = "4"
_GGUF_ENTRY_BYTES = 64 << 20  # an upper estimate of a GGUF entry (config and tokenizer), for a full disk's message

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
    """Everything read from disk: config, tokenizer, and the weights, read lazily (a warm kernel start
    reads none of them: the packed-weights cache holds all it needs)."""

    model_id: str
    source_path: Path  # the .gguf file or the model folder
    content_sha256: str  # the weight files' bytes only (the receipt's model_sha256)
    # Weights, config, generation config, tokenizer and chat template (server/engine/identity.py): what the
    # converted-model cache, and every cache derived from the weights, must be keyed on.
    model_identity: str
    config: dict
    # canonical names (arch.canonical_state_dict), float32; each read (or dequantised) at its access
    state_dict: Mapping[str, torch.Tensor]
    tokenizer: object  # a transformers fast tokenizer
    generation_eos: tuple[int, ...]
    # the matrices as the file stores them (a GGUF's blocks, viewing its mmap); empty for a converted folder
    stored: Mapping[str, StoredTensor] = dataclasses.field(default_factory=dict)


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
    """A model folder: load through transformers and save its canonical float32 state + tokenizer to `out`."""
    from transformers import AutoModelForCausalLM

    from .arch import ModelConfig, canonical_state_dict

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer, config, eos = _metadata(path, model.generation_config)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    state = canonical_state_dict(ModelConfig.from_hf(config), state)
    _write_entry(out, tokenizer, config, eos, path, state)


def _convert_gguf(path: Path, out: Path, progress: ProgressFn) -> None:
    """A GGUF: only its config, EOS ids and tokenizer go to `out`; the weights are read from the file itself."""
    tokenizer, config, eos = _metadata(path, None)
    _write_entry(out, tokenizer, config, eos, path, None)


def _metadata(path: Path, generation) -> tuple[object, dict, tuple[int, ...]]:
    """(tokenizer, config dict, EOS ids) as transformers reads them (for a GGUF: from its metadata). The
    generation config as from_pretrained finds it: a generation_config.json beside, else from the config."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    folder, kwargs = _transformers_args(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    hf_config = AutoConfig.from_pretrained(folder, **kwargs)
    if generation is None:
        try:
            generation = GenerationConfig.from_pretrained(folder, **kwargs)
        except OSError:
            generation = GenerationConfig.from_model_config(hf_config)
    config = hf_config.to_dict()
    config.pop("quantization_config", None)
    return tokenizer, config, _eos_ids(generation.eos_token_id, config.get("eos_token_id"), tokenizer)


def _write_entry(out: Path, tokenizer, config: dict, eos, path: Path, state: dict | None) -> None:
    """Fill the entry's temp folder `out` (cachefs.new_entry seals and renames it)."""
    from safetensors.torch import save_file

    if state is not None:
        save_file(state, str(out / "model.safetensors"))
    tokenizer.save_pretrained(str(out))
    meta = {"config": config, "eos": list(eos), "source": str(path), "gguf": state is None}
    (out / "seedstream.json").write_text(json.dumps(meta))


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
    from .arch import ModelConfig

    report = progress or (lambda msg: log.info(msg))
    started = time.monotonic()
    with phase("resolving the model", report):
        source = resolve_model(model)
    sweep_cache()
    with phase("hashing the model files", report):
        report(f"hashing {source.path}")
        digests = model_digests(model_files(source.path), cache_root() / "hashes")
    _check_identity(digests, source.path)
    entry = cache_root() / f"v{CACHE_FORMAT}-{digests.model_identity[:32]}"
    build = functools.partial(_convert, source.path, entry, report)
    needed = functools.partial(_entry_bytes, source.path)
    meta, tokenizer = cachefs.ensure(entry, build, functools.partial(_read_entry, report), needed)
    if source.path.is_file():
        state, stored = read_gguf(source.path, ModelConfig.from_hf(meta["config"]))
    else:
        state, stored = _lazy_safetensors(entry / "model.safetensors"), {}
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
        stored=stored,
    )


def sweep_cache() -> None:
    """Remove the temp files and folders of starts that no longer run (killed while converting or building)."""
    root = cache_root()
    for folder in (root, root / "hashes", root / "kernels"):
        cachefs.sweep(folder)


def _check_identity(digests, path: Path) -> None:
    """Never serve under an empty or partial identity (it names the cache folders and every receipt)."""
    for name, value in dataclasses.asdict(digests).items():
        if not re.fullmatch("[0-9a-f]{64}", value or ""):
            raise cachefs.CacheError(
                f"the {name} of {path} came out as {value!r}, not 64 hex digits; refusing to serve under it. "
                f"Remove {cache_root() / 'hashes'} and start again"
            )


def _convert(path: Path, entry: Path, report: ProgressFn, out: Path) -> None:
    """Fill the temp folder `out` of the cache entry `entry` from the model at `path`.

    A model of CHILD_CONVERSION_BYTES or more is read in a child process: transformers' reading (a GGUF's
    tokenizer built from its metadata, a folder's float32 model) leaves hundreds of MB in the heap that the
    server would otherwise keep for good. Small models (the tests' tiny ones) convert here, where it is cheaper
    than starting an interpreter. Either way the entry's files are the same."""
    with _converter(_model_bytes(path)) as run:
        with phase("reading the model's config", report):
            run(check_supported, path)
        with phase("converting weights", report):
            report(f"converting {path} into {entry} (first start only)")
            run(_convert_files, path, out)


CHILD_CONVERSION_BYTES = 64 * 2**20


def _model_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in weight_files(path))


@contextlib.contextmanager
def _converter(size: int):
    """A way to run a conversion step: in this process, or in a child interpreter (`python -m` this module:
    a fresh process that imports nothing of its parent's main script, unlike multiprocessing's spawn)."""
    if size < CHILD_CONVERSION_BYTES:
        yield lambda fn, *args: fn(*args)
    else:
        yield _in_child


def _in_child(fn: Callable, *paths: Path) -> None:
    """fn(*paths) in a child interpreter; its exception is raised here, as the same kind where it matters
    (UnsupportedModel, OSError with its errno: a full disk is reported as such)."""
    from .arch import UnsupportedModel

    cmd = [sys.executable, "-m", __name__, fn.__name__, *map(str, paths)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode == 0:
        return
    lines = done.stdout.strip().splitlines()
    failure = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    if failure is None:
        raise RuntimeError(f"converting {paths[0]} in a child process failed: {done.stderr.strip()[-2000:]}")
    if failure["kind"] == "UnsupportedModel":
        raise UnsupportedModel(failure["message"])
    if failure["kind"] == "OSError":
        raise OSError(failure["errno"], failure["message"], failure["filename"])
    raise RuntimeError(failure["message"])


def _child_main(argv: list[str]) -> int:
    """`python -m seedstream.server.engine.loader STEP PATH...`: run one conversion step; a failure is one
    JSON line on stdout (kind, message, errno, filename) and exit status 1."""
    step = {"check_supported": check_supported, "_convert_files": _convert_files}[argv[0]]
    try:
        step(*map(Path, argv[1:]))
    except Exception as exc:  # reported to the parent, which raises it
        kind = "UnsupportedModel" if type(exc).__name__ == "UnsupportedModel" else type(exc).__name__
        kind = "OSError" if isinstance(exc, OSError) else kind
        detail = {"errno": getattr(exc, "errno", None), "filename": getattr(exc, "filename", None)}
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(json.dumps({"kind": kind, "message": message, **detail}))
        return 1
    return 0


def _convert_files(path: Path, out: Path) -> None:
    (_convert_gguf if path.is_file() else _convert_with_transformers)(path, out, lambda msg: None)


def _entry_bytes(path: Path) -> int:
    """About what an entry takes: a GGUF's config and tokenizer; a folder's weights widened to float32."""
    if path.is_file():
        return _GGUF_ENTRY_BYTES
    return 2 * sum(p.stat().st_size for p in weight_files(path)) + _GGUF_ENTRY_BYTES


def _read_entry(report: ProgressFn, entry: Path) -> tuple[dict, object]:
    """(the entry's metadata, its tokenizer), after checking every file against the manifest."""
    from transformers import AutoTokenizer

    with phase("loading cached weights", report):
        report(f"checking and loading the config and tokenizer from {entry}")
        cachefs.verify(entry)
        with cachefs.reading(entry / "seedstream.json"):
            meta = json.loads((entry / "seedstream.json").read_text())
            if not isinstance(meta["config"], dict) or not all(isinstance(i, int) for i in meta["eos"]):
                raise ValueError("no config or EOS ids")
        with cachefs.reading(entry / "tokenizer.json"):
            tokenizer = AutoTokenizer.from_pretrained(str(entry))
    return meta, tokenizer


def _lazy_safetensors(path: Path) -> LazyTensors:
    """A safetensors file's tensors, each read at its access (a warm kernel start reads none)."""

    def index():
        from safetensors import safe_open

        handle = safe_open(str(path), framework="pt")
        return {name: functools.partial(handle.get_tensor, name) for name in handle.keys()}

    return LazyTensors(index)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
