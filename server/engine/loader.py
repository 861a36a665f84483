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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch

from seedstream.server import cachefs
from seedstream.server.cachefs import cache_root
from seedstream.server.phases import phase

from .arch import HFConfig, ModelConfig, UnsupportedModel, canonical_state_dict
from .chat import Tokenizer
from .folder_tensors import canonical_tensors, read_folder, readable_as_stored
from .gguf_tensors import LazyTensors, StoredTensor, read_gguf
from .identity import Digests, model_digests, model_files, weight_files
from .served_tokenizer import FACTS_FILE, load_served, write_served
from .sources import default_model_path, resolve_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("seedstream.engine")

# Bump when the cached layout or its key changes. 2: keyed on the model identity (was the weights' bytes).
# 3: canonical names (arch.canonical_state_dict); a GGUF's entry holds no weights (they are read from the file).
# 4: every entry is sealed with a manifest (seedstream.server.cachefs) and checked at each load.
# 5: a safetensors folder's entry holds no weights either (read as stored from its files); it also names the
#    packed-weights entries (backends.packed_weights).
# 6: an entry holds the served tokenizer (served_tokenizer.py): a warm start reads it without transformers.
CACHE_FORMAT = "6"
_METADATA_ENTRY_BYTES = 64 << 20  # an upper estimate of an entry without weights (config and tokenizer)

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
    config: HFConfig
    # canonical names (arch.canonical_state_dict), float32; each read (or dequantised) at its access
    state_dict: Mapping[str, torch.Tensor]
    tokenizer: Tokenizer  # served_tokenizer.ServedTokenizer, or transformers' fast tokenizer where that is needed
    generation_eos: tuple[int, ...]
    # the matrices as the files store them (a GGUF's blocks, a safetensors folder's float32/float16/bfloat16
    # matrices, each viewing its file's map); empty for a folder converted through transformers
    stored: Mapping[str, StoredTensor] = dataclasses.field(default_factory=dict)


def _transformers_args(path: Path) -> tuple[Path, dict[str, Any]]:
    """(folder, kwargs) for transformers' from_pretrained: a GGUF is named by gguf_file inside its folder."""
    return (path.parent, {"gguf_file": path.name}) if path.is_file() else (path, {})


def check_supported(path: str | Path) -> None:
    """Refuse a model the engine cannot serve, from its config alone, before a conversion writes anything."""
    from transformers import AutoConfig

    path = Path(path)
    folder, kwargs = _transformers_args(path)
    try:
        ModelConfig.from_hf(AutoConfig.from_pretrained(folder, **kwargs).to_dict())
    except ValueError as exc:  # from_hf's names what is unsupported and what is; add which model it was
        raise ValueError(f"model {path}: {exc}") from exc


def _convert_folder(path: Path, out: Path) -> None:
    """A model folder: its config, EOS ids and tokenizer go to `out`; its weights only when they cannot be read
    as stored (folder_tensors.py): then loaded through transformers and saved as canonical float32 tensors."""
    tokenizer, config, eos = _metadata(path)
    cfg = ModelConfig.from_hf(config)
    state = None if _reads_as_stored(path, cfg) else _transformers_state(path, cfg)
    _write_entry(out, tokenizer, config, eos, path, state)


def _reads_as_stored(folder: Path, cfg: ModelConfig) -> bool:
    """Whether the folder's weights are served from its own files: safetensors of 16-bit weights under the
    names transformers' state dict gives them (else transformers converts them)."""
    files = weight_files(folder)
    if not readable_as_stored(files):
        return False
    try:
        canonical_tensors(files, cfg)
    except UnsupportedModel as exc:  # names transformers would rename (or drop): its conversion reads them
        log.info("%s: converting through transformers (%s)", folder, exc)
        return False
    return True


def _transformers_state(path: Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A folder's canonical float32 state as transformers loads it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return canonical_state_dict(cfg, {k: v.detach().contiguous() for k, v in model.state_dict().items()})


def _convert_gguf(path: Path, out: Path) -> None:
    """A GGUF: only its config, EOS ids and tokenizer go to `out`; the weights are read from the file itself."""
    tokenizer, config, eos = _metadata(path)
    _write_entry(out, tokenizer, config, eos, path, None)


def _metadata(path: Path) -> tuple[PreTrainedTokenizerBase, HFConfig, tuple[int, ...]]:
    """(tokenizer, config dict, EOS ids) as transformers reads them (for a GGUF: from its metadata). The
    generation config as from_pretrained finds it: a generation_config.json beside, else from the config."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    folder, kwargs = _transformers_args(path)
    with _one_gguf_parse():
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        hf_config = AutoConfig.from_pretrained(folder, **kwargs)
    try:
        generation = GenerationConfig.from_pretrained(folder, **kwargs)
    except OSError:
        generation = GenerationConfig.from_model_config(hf_config)
    config = hf_config.to_dict()
    config.pop("quantization_config", None)
    return tokenizer, config, _eos_ids(generation.eos_token_id, config.get("eos_token_id"), tokenizer)


@contextlib.contextmanager
def _one_gguf_parse() -> Iterator[None]:
    """Within the block, transformers' readings of one GGUF (its tokenizer, then its config) share one parse: each
    builds a new gguf.GGUFReader, which reads every metadata field in Python (seconds for a large vocabulary, ~10 s
    for a 1B model's file). transformers only reads from the reader."""
    import gguf

    if getattr(gguf.GGUFReader, "shares_one_parse", False):  # within an outer block: its readers are shared
        yield
        return
    parse = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def shared(path: Any, mode: Literal["r", "r+", "c"] = "r") -> Any:
        key = (str(path), mode)
        if key not in readers:
            readers[key] = parse(path, mode)
        return readers[key]

    shared.shares_one_parse = True  # type: ignore[attr-defined]
    gguf.GGUFReader = shared  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        gguf.GGUFReader = parse  # type: ignore[misc]


def _write_entry(
    out: Path,
    tokenizer: PreTrainedTokenizerBase,
    config: HFConfig,
    eos: tuple[int, ...],
    path: Path,
    state: dict[str, torch.Tensor] | None,
) -> None:
    """Fill the entry's temp folder `out` (cachefs.new_entry seals and renames it)."""
    from safetensors.torch import save_file

    if state is not None:
        save_file(state, str(out / "model.safetensors"))
    write_served(out, tokenizer.save_pretrained(str(out)))
    meta = {"config": config, "eos": list(eos), "source": str(path), "converted": state is not None}
    (out / "seedstream.json").write_text(json.dumps(meta))


def _eos_ids(*sources: Any) -> tuple[int, ...]:
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
    state, stored = _read_weights(source.path, entry, meta)
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


def _read_weights(
    path: Path, entry: Path, meta: dict[str, Any]
) -> tuple[Mapping[str, torch.Tensor], Mapping[str, StoredTensor]]:
    """(state, stored) of the model: a GGUF's or a folder's files read as stored, or a conversion's tensors."""
    cfg = ModelConfig.from_hf(meta["config"])
    if path.is_file():
        return read_gguf(path, cfg)
    if meta["converted"]:
        return _lazy_safetensors(entry / "model.safetensors"), {}
    return read_folder(weight_files(path), cfg)


def sweep_cache() -> None:
    """Remove the temp files and folders of starts that no longer run (killed while converting or building)."""
    root = cache_root()
    for folder in (root, root / "hashes", root / "kernels"):
        cachefs.sweep(folder)


def _check_identity(digests: Digests, path: Path) -> None:
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
    than starting an interpreter. Either way the entry's files are the same, and an unsupported model is refused
    (check_supported) before anything is written, in the same process and from the same GGUF parse."""
    with _converter(model_bytes(path)) as run, phase("converting weights", report):
        report(f"converting {path} into {entry} (first start only)")
        run(_convert_files, path, out)


CHILD_CONVERSION_BYTES = 64 * 2**20


def model_bytes(path: Path) -> int:
    """The bytes of a model's weight files (a GGUF, or a folder's shards)."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in weight_files(path))


@contextlib.contextmanager
def _converter(size: int) -> Iterator[Callable[..., None]]:
    """A way to run a conversion step: in this process, or in a child interpreter (`python -m` this module:
    a fresh process that imports nothing of its parent's main script, unlike multiprocessing's spawn)."""
    if size < CHILD_CONVERSION_BYTES:
        yield lambda fn, *args: fn(*args)
    else:
        yield run_in_child


def run_in_child(fn: Callable[..., None], *args: str | Path) -> None:
    """fn(*args) in a child interpreter (`python -m <fn's module> <fn's name> ARGS...`, which that module's
    child_main runs; each argument as a string); its exception is raised here, as the same kind where it
    matters (UnsupportedModel, OSError with its errno: a full disk is reported as such)."""
    cmd = [sys.executable, "-m", fn.__module__, fn.__name__, *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode == 0:
        return
    lines = done.stdout.strip().splitlines()
    failure = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    if failure is None:
        what = f"{fn.__name__} {' '.join(map(str, args))}"
        raise RuntimeError(f"{what} in a child process failed: {done.stderr.strip()[-2000:]}")
    if failure["kind"] == "UnsupportedModel":
        raise UnsupportedModel(failure["message"])
    if failure["kind"] == "OSError":
        raise OSError(failure["errno"], failure["message"], failure["filename"])
    raise RuntimeError(failure["message"])


def child_main(steps: list[Callable[..., None]], argv: list[str]) -> int:
    """`python -m <module> STEP ARGS...`: run the step of `steps` so named on ARGS (strings); a failure is one
    JSON line on stdout (kind, message, errno, filename) and exit status 1."""
    (step,) = [fn for fn in steps if fn.__name__ == argv[0]]
    try:
        step(*argv[1:])
    except Exception as exc:  # reported to the parent, which raises it
        kind = "UnsupportedModel" if isinstance(exc, UnsupportedModel) else type(exc).__name__
        kind = "OSError" if isinstance(exc, OSError) else kind
        detail = {"errno": getattr(exc, "errno", None), "filename": getattr(exc, "filename", None)}
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(json.dumps({"kind": kind, "message": message, **detail}))
        return 1
    return 0


def _convert_files(path: str | Path, out: str | Path) -> None:
    with _one_gguf_parse():
        check_supported(path)
        (_convert_gguf if Path(path).is_file() else _convert_folder)(Path(path), Path(out))


def _entry_bytes(path: Path) -> int:
    """About what an entry takes: the config and tokenizer; for a folder converted, its weights as float32 too."""
    if path.is_file() or readable_as_stored(weight_files(path)):
        return _METADATA_ENTRY_BYTES
    return 2 * sum(p.stat().st_size for p in weight_files(path)) + _METADATA_ENTRY_BYTES


def _read_entry(report: ProgressFn, entry: Path) -> tuple[dict[str, Any], Tokenizer]:
    """(the entry's metadata, its tokenizer), after checking every file against the manifest: the served
    tokenizer (served_tokenizer.py), transformers' own only where the conversion found it needed."""
    with phase("loading cached weights", report):
        report(f"checking and loading the config and tokenizer from {entry}")
        cachefs.verify(entry)
        with cachefs.reading(entry / "seedstream.json"):
            meta = json.loads((entry / "seedstream.json").read_text())
            if not isinstance(meta["config"], dict) or not all(isinstance(i, int) for i in meta["eos"]):
                raise ValueError("no config or EOS ids")
        with cachefs.reading(entry / FACTS_FILE):
            tokenizer = load_served(entry) or _transformers_tokenizer(entry)
    return meta, tokenizer


def _transformers_tokenizer(entry: Path) -> Tokenizer:
    from transformers import AutoTokenizer

    with cachefs.reading(entry / "tokenizer.json"):
        # transformers types decode as str | list[str] (a batch); the engine decodes one id list at a time
        return cast("Tokenizer", AutoTokenizer.from_pretrained(str(entry)))


def _lazy_safetensors(path: Path) -> LazyTensors[torch.Tensor]:
    """A safetensors file's tensors, each read at its access (a warm kernel start reads none)."""

    def index() -> dict[str, Callable[[], torch.Tensor]]:
        from safetensors import safe_open

        handle = safe_open(str(path), framework="pt")
        names = handle.keys()  # type: ignore[no-untyped-call]  # safetensors' stub leaves keys() unannotated
        return {name: functools.partial(handle.get_tensor, name) for name in names}

    return LazyTensors(index)


if __name__ == "__main__":
    sys.exit(child_main([_convert_files], sys.argv[1:]))
