"""Read a 16-bit safetensors model folder's tensors as stored (views of each file's map), under canonical names.

A bfloat16 or float16 matrix is served as the file stores it (a StoredTensor of format bf16 or f16, packed
straight from the map; a float32 one beside them as f32); norms and biases are read as float32. Nothing is
converted or copied into a cache. Any other folder (float32 weights, .bin files, other dtypes, names that
transformers would have to rename) is converted through transformers, as before (loader.py).
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .gguf_tensors import LazyTensors, StoredTensor

if TYPE_CHECKING:
    from .arch import ModelConfig

# safetensors dtype -> (numpy type of its bits, StoredTensor format, torch dtype); bf16's bits as int16 (numpy
# has no bfloat16) and viewed as torch.bfloat16.
_DTYPES = {
    "F32": (np.float32, "f32", torch.float32),
    "F16": (np.float16, "f16", torch.float16),
    "BF16": (np.int16, "bf16", torch.bfloat16),
}
_FORMATS = {torch_type: fmt for _, fmt, torch_type in _DTYPES.values()}


def _header(path: Path) -> tuple[dict[str, Any], int]:
    """(tensor name -> {dtype, shape, data_offsets}, the offset where the data starts) of a safetensors file."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    return header, 8 + size


def readable_as_stored(files: list[Path]) -> bool:
    """Whether `files` are safetensors files of 16-bit weights: float16 or bfloat16 tensors, and float32 ones
    at most beside them (read from the headers only)."""
    if not files or any(f.suffix != ".safetensors" for f in files):
        return False
    try:
        dtypes = {info["dtype"] for f in files for info in _header(f)[0].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error):
        return False  # not a header read here: transformers' conversion reads it, or names what is wrong
    return dtypes <= set(_DTYPES) and bool(dtypes & {"F16", "BF16"})


def _file_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one file as a torch view of its memory map (copy-on-write: nothing is written back)."""
    header, start = _header(path)
    if path.stat().st_size == start:  # no tensor bytes at all (mmap refuses an empty map)
        data = np.zeros(0, np.uint8)
    else:
        data = np.memmap(path, dtype=np.uint8, mode="c", offset=start)
    out = {}
    for name, info in header.items():
        bits, _, torch_type = _DTYPES[info["dtype"]]
        first, end = info["data_offsets"]
        out[name] = torch.from_numpy(data[first:end].view(bits).reshape(info["shape"])).view(torch_type)
    return out


def canonical_tensors(files: list[Path], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The folder's tensors under canonical names (arch.canonical_state_dict, every option folded in), matrices
    as views of the files' maps in their stored dtype. UnsupportedModel when the names do not match cfg."""
    from .arch import canonical_state_dict

    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        tensors.update(_file_tensors(path))
    return canonical_state_dict(cfg, tensors)


def _as_stored(t: torch.Tensor) -> StoredTensor:
    """A 2-D tensor's rows as stored: float32/float16 values, or bfloat16's bits as uint16 (a view, no copy)."""
    fmt = _FORMATS[t.dtype]
    rows = t.view(torch.int16).numpy().view(np.uint16) if fmt == "bf16" else t.numpy()
    return StoredTensor(fmt, rows)


def _as_float(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32, copy=True)  # a copy: never a view of the file's map (bf16/f16 widen exactly)


def read_folder(files: list[Path], cfg: ModelConfig) -> tuple[Mapping[str, torch.Tensor], Mapping[str, StoredTensor]]:
    """(state, stored) of a safetensors folder's weight files, like gguf_tensors.read_gguf: state gives every
    tensor as float32 (a copy at each access), stored every matrix as a StoredTensor viewing the map.
    Nothing is read before the first access."""
    canonical = functools.cache(lambda: canonical_tensors(files, cfg))
    state = LazyTensors(lambda: {n: functools.partial(_as_float, t) for n, t in canonical().items()})
    stored = LazyTensors(lambda: {n: functools.partial(_as_stored, t) for n, t in canonical().items() if t.dim() == 2})
    return state, stored
