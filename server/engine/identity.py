"""The model identity: one SHA-256 over the weights and every file that can change a token.

Which files count. For a model folder: the weight files (every `*.safetensors`, else every `*.bin`, as
transformers picks them) and, where present, each file of TOKEN_FILES and TOKEN_GLOBS below: the config
(architecture, norms, RoPE, vocabulary), the generation config (EOS ids), every tokenizer file
transformers reads (tokenizer.json, vocab/merges, sentencepiece models, added and special tokens), the
chat templates and the shard indexes. For a `.gguf` file: the whole file (it holds the config, the
tokenizer and the chat template), plus the same side files from its folder where present, since
transformers reads e.g. a tokenizer_config.json or generation_config.json found beside it. A file absent
from the list cannot change a token; a file in it that changes nothing only costs a cache miss.

The framing (IDENTITY_SCHEME):

    SHA-256( "seedstream/model-identity/v1\\n"
             || for each file, sorted by name:  u64le(len(name)) || name || u64le(size) || bytes )

`name` is the file's path relative to the model folder in UTF-8 (POSIX separators), except that the GGUF
itself is always framed as "model.gguf": a GGUF renamed is the same model, but a folder's file names are
how transformers finds its parts. Every part is length-prefixed, so moving bytes from one file to another,
renaming a side file or adding an empty one all change the digest.

`model_sha256` (the receipt's older, weights-only hash) stays beside it, unchanged: SHA-256 of the weight
files' bytes concatenated in name order, names excluded. Both come from one read of each file, and are
memoised under `<cache>/hashes/` keyed on the path, size, mtime and inode of every file that feeds them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import struct
from pathlib import Path

from seedstream.server import cachefs

IDENTITY_SCHEME = "seedstream/model-identity/v1"
GGUF_FRAME_NAME = "model.gguf"

# Files beside the weights that can change a token, by exact name.
TOKEN_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)
# ... and by pattern: named chat templates, tiktoken vocabularies, the shard indexes (which shard holds what).
TOKEN_GLOBS = ("additional_chat_templates/*.jinja", "*.tiktoken", "*.safetensors.index.json", "*.bin.index.json")

log = logging.getLogger("seedstream.engine")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_BLOCK = 1 << 22


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """The files one model is made of: what the identity covers, each with the name it is framed under."""

    weights: tuple[tuple[str, Path], ...]  # the shards, or the one GGUF
    others: tuple[tuple[str, Path], ...]  # config, generation config, tokenizer, templates, indexes

    def framed(self) -> list[tuple[str, Path, bool]]:
        """(name, path, is_weights) for every file, in the digest's order (by name)."""
        parts = [(n, p, True) for n, p in self.weights] + [(n, p, False) for n, p in self.others]
        return sorted(parts, key=lambda part: part[0].encode())


@dataclasses.dataclass(frozen=True)
class Digests:
    """The two hex SHA-256 digests of a model (see the module docstring)."""

    model_sha256: str  # the weights' bytes only
    model_identity: str  # weights, config, generation config, tokenizer, chat template


def weight_files(folder: Path) -> list[Path]:
    """The weight files transformers would read from a model folder: safetensors first, else .bin (may be [])."""
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def model_files(source: Path) -> ModelFiles:
    """The files of the model at `source` (a .gguf file or a model folder with weights)."""
    weights: tuple[tuple[str, Path], ...]
    if source.is_file():
        folder, weights = source.parent, ((GGUF_FRAME_NAME, source),)
    else:
        folder = source
        weights = tuple((p.name, p) for p in weight_files(folder))
        if not weights:
            raise FileNotFoundError(f"no .safetensors or .bin weights in {folder}")
    found = {folder / name for name in TOKEN_FILES} | {p for pattern in TOKEN_GLOBS for p in folder.glob(pattern)}
    others = tuple(sorted((p.relative_to(folder).as_posix(), p) for p in found if p.is_file()))
    return ModelFiles(weights, others)


def model_digests(files: ModelFiles, memo_dir: Path) -> Digests:
    """Both digests of `files`: from the memo when every file is unchanged, else read (and memoised)."""
    memo = memo_dir / f"{_stamp(files)}.json"
    known = _read_memo(memo)
    if known is not None:
        return known
    digests = _hash(files)
    _write_memo(memo, digests)
    return digests


def _stamp(files: ModelFiles) -> str:
    """A key that changes when any file feeding the digests may have: path, size, mtime and inode of each."""
    lines = [IDENTITY_SCHEME]
    for name, path, _ in files.framed():
        st = path.stat()  # follows links: a hub snapshot's files link to its blobs
        lines.append(f"{name}\0{os.path.abspath(path)}\0{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _hash(files: ModelFiles) -> Digests:
    weights = hashlib.sha256()
    identity = hashlib.sha256(IDENTITY_SCHEME.encode() + b"\n")
    for name, path, is_weights in files.framed():
        encoded = name.encode()
        size = path.stat().st_size
        identity.update(struct.pack("<Q", len(encoded)) + encoded + struct.pack("<Q", size))
        read = 0
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_BLOCK), b""):
                identity.update(block)
                if is_weights:
                    weights.update(block)
                read += len(block)
        if read != size:  # the framing promised `size` bytes: a file written meanwhile must not be half-hashed
            raise RuntimeError(f"{path} changed while it was hashed ({size} bytes before, {read} read)")
    return Digests(weights.hexdigest(), identity.hexdigest())


def _read_memo(memo: Path) -> Digests | None:
    """The memoised digests, or None when absent or damaged (empty from a full disk, truncated, flipped bytes:
    its check must match), which is logged: the files are then hashed again."""
    try:
        raw = memo.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("hash memo %s cannot be read (%s); hashing the model files again", memo, exc)
        return None
    try:
        data = json.loads(raw.decode())
        digests = Digests(data["model_sha256"], data["model_identity"])
        valid = all(isinstance(d, str) and _HEX64.fullmatch(d) for d in dataclasses.astuple(digests))
        if not valid or data["check"] != _memo_check(digests):
            raise ValueError("its digests do not match its check")
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("hash memo %s is damaged (%d bytes; %s); hashing the model files again", memo, len(raw), exc)
        return None
    return digests


def _memo_check(digests: Digests) -> str:
    """A checksum of a memo's two digests: a flipped hex digit would still look like a digest."""
    return hashlib.sha256(f"{digests.model_sha256}:{digests.model_identity}".encode()).hexdigest()[:16]


def _write_memo(memo: Path, digests: Digests) -> None:
    """Write atomically (temp file, fsync, rename): a full disk or a crash leaves no half-written memo.

    A memo that cannot be written costs only a re-hash at the next start, so it never fails the load.
    """
    data = {**dataclasses.asdict(digests), "check": _memo_check(digests)}
    try:
        cachefs.write_file(memo, json.dumps(data).encode())
    except OSError as exc:
        log.warning("could not memoise the model's digests in %s (%s); they are re-read at the next start", memo, exc)
