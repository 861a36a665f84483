"""Engine configuration and device/dtype resolution.

EngineConfig is defined, with every setting's default and help text, in
seedstream.server.settings (torch-free, so `seedstream serve --help` is quick).
"""

from __future__ import annotations

import torch

from seedstream.server.settings import DTYPE_NAMES
from seedstream.server.settings import EngineConfig as EngineConfig  # re-exported

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: CUDA is not available on this machine")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    return DTYPES[name]
