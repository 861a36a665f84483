"""Engine configuration and device/dtype resolution."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

BACKENDS = ("auto", "kernels", "torch")
WEIGHT_FORMATS = ("auto", "f32", "q8_0", "q4_1")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    model: Optional[str] = None  # transformers folder or .gguf file; None = embedded SmolLM2-135M-Instruct
    device: str = "auto"  # "auto" (cuda when available, else cpu), "cpu", "cuda", "cuda:N"
    dtype: str = "float32"  # one of DTYPES
    max_batch_size: int = 64  # sequences decoding at once
    max_queue: int = 256  # requests waiting for a slot before RESOURCE_EXHAUSTED
    max_queue_per_client: Optional[int] = None  # of those, most from one client (None = max_queue)
    # KV-cache budget in token positions over all running sequences, each counted at its most
    # (prompt + max_new_tokens, capped at the context): a request that would pass it waits in the
    # queue instead of risking the server's memory. One request is always admitted. Scheduling
    # never changes tokens, so the budget is not part of the determinism contract.
    max_kv_tokens: int = 262144
    prefill_chunk: int = 256  # prompt tokens per prefill chunk; a tuning knob, changes no token
    max_step_tokens: int = 512  # token rows per forward step (>= prefill_chunk)
    max_new_tokens_limit: int = 4096  # upper bound a request may ask for
    # Prefix cache budget in MiB (0 = off): prompt KV kept in blocks, reused exactly, LRU-evicted.
    # It changes no token (prefill equals decode bit for bit), so it is not in engine_version.
    prefix_cache_mib: float = 1024.0
    num_threads: Optional[int] = None  # torch intra-op threads; None = torch's default
    # The forward pass: "kernels" = our C++ CPU kernels (built on first start, cached), whose bits are
    # the same for any batch, prefill chunk, thread count and x86 instruction set; "torch" = the torch
    # path (CUDA, bf16/fp16, or no compiler); "auto" = kernels on CPU float32 when they build, else torch.
    backend: str = "auto"
    # Weight format of the kernels: "auto" = the file's own (a GGUF's quantisation, else f32), or
    # f32 / q8_0 / q4_1 (stored blocks are kept when at least as precise, else quantised on load).
    # Part of the determinism contract: named in engine_version and the receipt.
    weights: str = "auto"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: allowed {', '.join(DTYPES)}")
        for name in ("max_batch_size", "max_queue", "max_kv_tokens", "prefill_chunk", "max_step_tokens",
                     "max_new_tokens_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.max_queue_per_client is not None and self.max_queue_per_client < 1:
            raise ValueError(f"max_queue_per_client={self.max_queue_per_client}: must be >= 1")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: allowed {', '.join(BACKENDS)}")
        if self.weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights={self.weights!r}: allowed {', '.join(WEIGHT_FORMATS)}")
        if self.backend == "torch" and self.weights not in ("auto", "f32"):
            raise ValueError(f"weights={self.weights!r} needs backend=kernels (the torch path computes in {self.dtype})")
        if not self.prefix_cache_mib >= 0:
            raise ValueError(f"prefix_cache_mib={self.prefix_cache_mib}: must be >= 0 (0 turns the cache off)")
        if self.max_step_tokens < self.prefill_chunk:
            raise ValueError(f"max_step_tokens={self.max_step_tokens}: must be >= prefill_chunk={self.prefill_chunk}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: CUDA is not available on this machine")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    return DTYPES[name]
