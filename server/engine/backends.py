"""Choose and build the forward pass: the C++ kernels on packed weights, or the torch path."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from seedstream.server import cachefs
from seedstream.server.kernels import Kernels, build_library, detect_isa, load_kernels
from seedstream.server.kernels.packing import PACK_LAYOUT, STORED_FORMATS, PackedMatrix, load_packed, save_packed

from .config import DTYPES, EngineConfig
from .forward import ForwardModel
from .gguf_tensors import StoredTensor
from .kernel_model import (
    KernelModel,
    kernel_shape_problem,
    pack_model_weights,
    packed_format_name,
    resolve_weight_format,
)
from .loader import (
    CACHE_FORMAT,
    CHILD_CONVERSION_BYTES,
    LoadedWeights,
    cache_root,
    child_main,
    load_weights,
    model_bytes,
    run_in_child,
)
from .model import DecoderModel, ModelConfig

log = logging.getLogger("seedstream.engine")

_TORCH_THREADS = torch.get_num_threads()  # torch's own default, before any engine changed it


def build_model(
    weights: LoadedWeights, config: EngineConfig, cfg: ModelConfig, device: torch.device, dtype: torch.dtype
) -> tuple[ForwardModel, str]:
    """The model for this config, and its weight format (f32/q8_0/q4_1, or the torch dtype's name)."""
    if _wants_kernels(config, device, dtype):
        kernels, why_not = _kernels_for(cfg, config)
        if kernels is not None:
            model = _kernel_model(weights, config, cfg, kernels, kv_dtype(config, torch.float32))
            # torch then only runs the sampler's small ops: one intra-op thread. Its fork-joins across the
            # cores the kernel pool uses made sampling ~10x slower under load (the sampler's bits do not
            # depend on the thread count: tests/sampler/test_sampler_invariance.py).
            torch.set_num_threads(1)
            log.info(
                "forward: C++ kernels (%s, %d threads), %s weights, %.0f MB",
                kernels.isa,
                kernels.threads,
                model.weight_format,
                model.weight_bytes / 1e6,
            )
            return model, model.weight_format
        if config.backend == "kernels" or config.weights not in ("auto", "f32") or config.activations != "float32":
            raise RuntimeError(
                f"backend=kernels/weights={config.weights}/activations={config.activations} asked for, but "
                f"{why_not}; use --backend torch"
            )
        log.warning("%s: serving on the torch path", why_not)
    torch.set_num_threads(config.num_threads or _TORCH_THREADS)  # a kernel engine before may have set 1
    torch_model = DecoderModel(cfg, weights.state_dict, device, dtype, kv_dtype=kv_dtype(config, dtype))
    # shapes: "tiles" on CPU; "fixed" on CUDA, where a call's shape picks the kernel (fixed_shapes.py)
    log.info(
        "forward: torch path (%s, %s, %s shapes)", device.type, str(dtype).removeprefix("torch."), torch_model.shapes
    )
    return torch_model, str(dtype).removeprefix("torch.")


def _kernels_for(cfg: ModelConfig, config: EngineConfig) -> tuple[Kernels | None, str]:
    """The kernels for this model, or None and why not: they could not be built, or they cannot serve
    its shapes (checked before any packing, by ssk_forward's own check)."""
    if os.environ.get("SEEDSTREAM_KERNELS", "").lower() not in ("off", "0", "false", "no"):
        try:  # a full disk ends the start; a missing compiler only falls back (load_kernels says why)
            build_library(detect_isa(), cache_root() / "kernels")
        except cachefs.CacheError:
            raise
        except Exception as exc:
            return None, f"the kernels could not be built ({exc})"
    kernels = load_kernels(config.num_threads or _TORCH_THREADS, cache_root() / "kernels")
    if kernels is None:
        return None, "the kernels could not be built (see the warning above)"
    problem = kernel_shape_problem(cfg, kernels)
    if problem:
        return None, f"the C++ kernels cannot serve this model ({problem})"
    return kernels, ""


def kv_dtype(config: EngineConfig, compute: torch.dtype) -> torch.dtype:
    """The KV cache's element type: `auto` is the compute dtype."""
    return compute if config.kv_cache_dtype == "auto" else DTYPES[config.kv_cache_dtype]


def _wants_kernels(config: EngineConfig, device: torch.device, dtype: torch.dtype) -> bool:
    if config.backend == "torch":
        return False
    if device.type != "cpu" or dtype != torch.float32:
        if config.backend == "kernels" or config.activations != "float32":
            raise ValueError(
                f"backend=kernels (and activations={config.activations}) runs on cpu with float32, "
                f"not {device.type}/{dtype}"
            )
        return False
    return True


Packed = tuple[dict[str, PackedMatrix], str, dict[str, torch.Tensor]]  # matrices, their format, the norms
_packed_in_process: dict[str, Packed] = {}  # read-only, shared by engines


def _kernel_model(
    weights: LoadedWeights, config: EngineConfig, cfg: ModelConfig, kernels: Kernels, kv: torch.dtype
) -> KernelModel:
    # int8 activations regroup the blocks into new memory (packing.for_int8_activations): the float layout is
    # not kept in the memo, so its mapped pages, read once to regroup, are unmapped with it.
    packed, fmt, norms = packed_weights(weights, cfg, config.weights, memo=config.activations == "float32")
    return KernelModel(cfg, norms, packed, fmt, kernels, kv, config.activations)


def packed_weights(weights: LoadedWeights, cfg: ModelConfig, requested: str, memo: bool = True) -> Packed:
    """Everything the kernel model reads: the matrices packed (biases included), their resolved format and
    the norm vectors. From this process's memo, else the disk cache (a warm start reads nothing else; checked
    against its manifest), else packed now (from the stored blocks the packer keeps, else dequantised one
    matrix at a time). `memo`: keep the result for the next engine of this process."""
    # what is packed follows the source's reading (CACHE_FORMAT) and the config too
    key = f"packed-v{PACK_LAYOUT}.{CACHE_FORMAT}-{weights.model_identity[:32]}-{requested}"
    if key in _packed_in_process:
        return _packed_in_process[key]
    built: list[Packed] = []

    def build(out: Path) -> None:
        if model_bytes(weights.source_path) >= CHILD_CONVERSION_BYTES:
            # Packed in a child interpreter, then read back as a warm start reads it: the packing's temporaries
            # and a GGUF reader's metadata (tens of thousands of small objects) would stay in this heap.
            run_in_child(_pack_into, weights.source_path, requested, out)
            return
        built.append(_pack(weights, cfg, requested))
        _save(out, built[0])

    def load(entry: Path) -> Packed:
        if built:  # just written and sealed: no need to read it back
            return built[0]
        cachefs.verify(entry)
        with cachefs.reading(entry / "matrices.safetensors"):
            packed, fmt = load_packed(entry / "matrices.safetensors")
        with cachefs.reading(entry / "norms.safetensors"):
            norms = load_file(str(entry / "norms.safetensors"))
        return packed, fmt, norms

    def needed() -> int:  # the packed bytes once packed; before, a guess from the source's size
        if built:
            return sum(m.nbytes for m in built[0][0].values()) + sum(t.nbytes for t in built[0][2].values())
        return model_bytes(weights.source_path) * (8 if requested == "f32" else 2)

    result = cachefs.ensure(cache_root() / key, build, load, needed)
    if memo:
        _packed_in_process[key] = result
    return result


def _save(out: Path, packed: Packed) -> None:
    save_packed(out / "matrices.safetensors", packed[0], packed[1])
    save_file(packed[2], str(out / "norms.safetensors"))


def _pack_into(source: str, requested: str, out: str) -> None:
    """Pack the model at `source` as `requested` into the entry's temp folder `out` (a child's step)."""
    weights = load_weights(source, lambda msg: None)
    _save(Path(out), _pack(weights, ModelConfig.from_hf(weights.config), requested))


def _pack(weights: LoadedWeights, cfg: ModelConfig, requested: str) -> Packed:
    state = weights.state_dict
    kept = _kept_matrices(weights, requested)
    fmt = resolve_weight_format(requested, kept)  # the matrices not kept are dequantised by the packer
    norms = {n: state[n].contiguous() for n in state if n.endswith("norm.weight")}
    packed = pack_model_weights(cfg, state, kept, fmt)
    return packed, packed_format_name(requested, fmt, packed), norms


def _kept_matrices(weights: LoadedWeights, requested: str) -> dict[str, StoredTensor]:
    """The stored matrices the kernels multiply as they are (every GGUF type of STORED_FORMATS); any other type
    (IQ quants, ...) is refused, naming what the kernels take. A folder's
    matrices are kept under 'auto' only: a format named is a conversion of every matrix (as it always was)."""
    if requested != "auto" and not weights.source_path.is_file():
        return {}
    stored = {n: weights.stored[n] for n in weights.stored}
    types = {t.format for t in stored.values()}
    refused = sorted(types - set(STORED_FORMATS))
    if refused:
        raise ValueError(
            f"weight type {', '.join(refused)} in {weights.source_path}: the kernels take {', '.join(STORED_FORMATS)}"
        )
    return {n: t for n, t in stored.items() if t.format in STORED_FORMATS}


if __name__ == "__main__":
    sys.exit(child_main([_pack_into], sys.argv[1:]))
