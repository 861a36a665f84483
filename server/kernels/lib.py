"""ctypes binding of the kernel library: the C structs, and a handle that owns the thread pool."""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import torch

from .build import build_library, detect_isa

log = logging.getLogger("seedstream.kernels")

ABI_VERSION = 6
FORMAT_CODES = {
    "f32": 0,
    "q8_0": 1,
    "q4_1": 2,
    "q4_0": 3,
    "q5_0": 4,
    "q5_1": 5,
    "q4_k": 6,
    "q5_k": 7,
    "q6_k": 8,
    "f16": 9,
    "bf16": 10,
    "q2_k": 11,
    "q3_k": 12,
}
ACTIVATION_CODES = {"float32": 0, "int8": 1}  # ssk_matrix.act: what the GEMM multiplies the weights with
KV_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}  # ssk_step.kv_dtype
ACTIVATION_FN_CODES = {"silu": 0, "gelu_tanh": 1}  # ssk_model.activation: the MLP's function of the gate
# The packed tile geometry (csrc/internal.h), which packing.py lays weights out by.
NR = 16  # output columns per tile
QK = 32  # values per quantisation block
Q8_0_TILE_BLOCK, Q8_0_QS = 544, 32  # bytes of a q8_0 tile block; its quants start after float16 d[16]
Q4_1_TILE_BLOCK, Q4_1_QS = 320, 64  # the same for q4_1, after float16 d[16] and m[16]
# By their names in csrc/internal.h: Kernels checks the library's values (ssk_tile_constant) at load.
TILE_CONSTANTS = {
    "SSK_NR": NR,
    "SSK_QK": QK,
    "Q8_0_TILE_BLOCK": Q8_0_TILE_BLOCK,
    "Q8_0_QS": Q8_0_QS,
    "Q4_1_TILE_BLOCK": Q4_1_TILE_BLOCK,
    "Q4_1_QS": Q4_1_QS,
}

_i32, _ptr = ctypes.c_int32, ctypes.c_void_p


class Matrix(ctypes.Structure):
    pass


# next: the following part of a fused matrix whose parts have different formats (ssk.h), or null
Matrix._fields_ = [
    ("format", _i32),
    ("n", _i32),
    ("k", _i32),
    ("act", _i32),
    ("data", _ptr),
    ("bias", _ptr),
    ("next", ctypes.POINTER(Matrix)),
]


class RopeDesc(ctypes.Structure):
    _fields_ = [("cos", _ptr), ("sin", _ptr), ("rotary_dim", _i32)]


class LayerDesc(ctypes.Structure):
    _fields_ = [
        ("qkv", Matrix),
        ("o", Matrix),
        ("gate_up", Matrix),
        ("down", Matrix),
        ("norm_in", _ptr),
        ("norm_post", _ptr),
        ("q_norm", _ptr),  # null: no qk-norm
        ("k_norm", _ptr),
        ("attn_out_norm", _ptr),  # null: no sandwich norms
        ("mlp_out_norm", _ptr),
        ("window", _i32),  # 0: full causal attention
        ("rope", _i32),  # index into ModelDesc.ropes, -1: none
    ]


class ModelDesc(ctypes.Structure):
    _fields_ = [
        ("n_layers", _i32),
        ("hidden", _i32),
        ("inter", _i32),
        ("n_heads", _i32),
        ("n_kv_heads", _i32),
        ("head_dim", _i32),
        ("vocab", _i32),
        ("max_context", _i32),
        ("eps", ctypes.c_float),
        ("attn_block", _i32),
        ("attn_scale", ctypes.c_float),
        ("attn_softcap", ctypes.c_float),
        ("final_softcap", ctypes.c_float),
        ("embed_scale", ctypes.c_float),
        ("activation", _i32),  # ACTIVATION_FN_CODES
        ("n_ropes", _i32),
        ("ropes", ctypes.POINTER(RopeDesc)),
        ("embed", Matrix),
        ("lm_head", Matrix),
        ("norm_final", _ptr),
        ("layers", ctypes.POINTER(LayerDesc)),
    ]


class StepDesc(ctypes.Structure):
    _fields_ = [
        ("n_rows", _i32),
        ("n_segments", _i32),
        ("n_logit_rows", _i32),
        ("kv_dtype", _i32),  # KV_DTYPE_CODES
        ("token_ids", _ptr),
        ("positions", _ptr),
        ("row_segment", _ptr),
        ("seg_keys", _ptr),
        ("seg_values", _ptr),
        ("seg_capacity", _ptr),
        ("logit_rows", _ptr),
        ("logits", _ptr),
    ]


# The C structs that the classes above redeclare (ssk_<name>), checked against ssk_sizeof_<name> at load.
STRUCTS: dict[str, type[ctypes.Structure]] = {
    "matrix": Matrix,
    "rope": RopeDesc,
    "layer": LayerDesc,
    "model": ModelDesc,
    "step": StepDesc,
}


def layout_mismatches(
    lib: ctypes.CDLL, structs: dict[str, type[ctypes.Structure]] = STRUCTS, constants: dict[str, int] = TILE_CONSTANTS
) -> list[str]:
    """Where the library's struct sizes and tile constants differ from the declarations here (none: [])."""
    found = []
    for name, struct in structs.items():
        sizeof = getattr(lib, f"ssk_sizeof_{name}")
        sizeof.restype, sizeof.argtypes = _i32, []
        if sizeof() != ctypes.sizeof(struct):
            found.append(
                f"sizeof(ssk_{name}) is {sizeof()} bytes, its ctypes {struct.__name__} {ctypes.sizeof(struct)}"
            )
    lib.ssk_tile_constant.restype, lib.ssk_tile_constant.argtypes = _i32, [ctypes.c_char_p]
    for name, value in constants.items():
        if (got := lib.ssk_tile_constant(name.encode())) != value:
            found.append(f"{name} is {got} in the library (csrc/internal.h), {value} in server/kernels/lib.py")
    return found


def _ptr_of(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class Kernels:
    """A loaded library plus its context (thread pool and scratch). Calls must not overlap."""

    def __init__(self, path: Path, isa: str, threads: int):
        self.path, self.isa = path, isa
        self._lib = lib = ctypes.CDLL(str(path))
        lib.ssk_abi_version.restype = _i32
        lib.ssk_isa.restype = ctypes.c_char_p
        lib.ssk_create.restype = _ptr
        lib.ssk_create.argtypes = [_i32]
        lib.ssk_destroy.argtypes = [_ptr]
        lib.ssk_threads.restype = _i32
        lib.ssk_threads.argtypes = [_ptr]
        for name, args in (
            ("ssk_forward", [_ptr, ctypes.POINTER(ModelDesc), ctypes.POINTER(StepDesc)]),
            ("ssk_gemm", [_ptr, ctypes.POINTER(Matrix), _i32, _ptr, _ptr]),
            ("ssk_attention", [_ptr, ctypes.POINTER(ModelDesc), ctypes.POINTER(StepDesc), _i32, _ptr, _ptr]),
            ("ssk_dequant_row", [ctypes.POINTER(Matrix), _i32, _ptr]),
            ("ssk_to_bf16", [_ptr, _i32, _ptr]),
            ("ssk_check_model", [ctypes.POINTER(ModelDesc), _i32, ctypes.c_char_p, _i32]),
        ):
            getattr(lib, name).restype = _i32
            getattr(lib, name).argtypes = args
        if lib.ssk_abi_version() != ABI_VERSION:
            raise RuntimeError(f"{path}: ABI {lib.ssk_abi_version()}, expected {ABI_VERSION}")
        if lib.ssk_isa().decode() != isa:
            raise RuntimeError(f"{path}: built for {lib.ssk_isa().decode()}, expected {isa}")
        if mismatches := layout_mismatches(lib):
            raise RuntimeError(f"{path} does not match server/kernels/lib.py: {'; '.join(mismatches)}")
        self._ctx = lib.ssk_create(threads)
        self.threads = lib.ssk_threads(self._ctx)

    def __del__(self) -> None:
        ctx, self._ctx = getattr(self, "_ctx", None), None
        if ctx:
            self._lib.ssk_destroy(ctx)

    def release_scratch(self) -> None:
        """Give back the context's scratch, which grows to the largest step run and is kept (a 256-row prefill of
        a 1B model leaves about 40 MB): the context is replaced by a new one, thread pool included (about a
        millisecond). Only between calls; the results of later calls are the same bits."""
        self._lib.ssk_destroy(self._ctx)
        self._ctx = self._lib.ssk_create(self.threads)

    def check_model(self, model: ModelDesc, with_weights: bool = True) -> str | None:
        """None if the kernels can run `model` (ssk_forward's own check), else why not. Without weights
        only the shapes and options are checked (the matrices may be null)."""
        why = ctypes.create_string_buffer(256)
        if self._lib.ssk_check_model(ctypes.byref(model), int(with_weights), why, len(why)) == 0:
            return None
        return why.value.decode() or "unsupported model"

    def forward(self, model: ModelDesc, step: StepDesc) -> None:
        rc = self._lib.ssk_forward(self._ctx, ctypes.byref(model), ctypes.byref(step))
        if rc != 0:
            raise RuntimeError(f"ssk_forward failed ({rc}): {self.check_model(model) or 'bad step'}")

    def gemm(self, matrix: Matrix, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] float32 -> [M, N], computed as the forward computes it."""
        x = x.contiguous()
        assert x.dtype == torch.float32 and x.dim() == 2 and x.shape[1] == matrix.k
        n = 0
        part: Matrix | None = matrix
        while part is not None:  # the columns of every part of a chain
            n, part = n + part.n, (part.next.contents if part.next else None)
        y = torch.empty(x.shape[0], n, dtype=torch.float32)
        if self._lib.ssk_gemm(self._ctx, ctypes.byref(matrix), x.shape[0], x.data_ptr(), y.data_ptr()) != 0:
            raise ValueError("ssk_gemm: bad matrix or row count")
        return y

    def attention(self, model: ModelDesc, step: StepDesc, layer: int, q: torch.Tensor) -> torch.Tensor:
        """q [T, Hq, D] -> [T, Hq*D] against the step's caches (which must hold the keys)."""
        q = q.contiguous()
        out = torch.empty(q.shape[0], q.shape[1] * q.shape[2], dtype=torch.float32)
        if (
            self._lib.ssk_attention(
                self._ctx, ctypes.byref(model), ctypes.byref(step), layer, q.data_ptr(), out.data_ptr()
            )
            != 0
        ):
            raise ValueError("ssk_attention: unsupported shape")
        return out

    def to_bf16(self, x: torch.Tensor) -> torch.Tensor:
        """x [N] float32 rounded to bfloat16 as a bfloat16 KV cache stores it."""
        x = x.contiguous()
        assert x.dtype == torch.float32 and x.dim() == 1
        out = torch.empty(x.shape[0], dtype=torch.bfloat16)
        if self._lib.ssk_to_bf16(x.data_ptr(), x.shape[0], out.data_ptr()) != 0:
            raise ValueError("ssk_to_bf16: bad length")
        return out

    def dequant_row(self, matrix: Matrix, row: int) -> torch.Tensor:
        out = torch.empty(matrix.k, dtype=torch.float32)
        if self._lib.ssk_dequant_row(ctypes.byref(matrix), row, out.data_ptr()) != 0:
            raise ValueError("ssk_dequant_row: bad matrix or row")
        return out


def load_kernels(threads: int, cache_dir: Path, isa: str | None = None) -> Kernels | None:
    """A new handle (its own thread pool and scratch) on the kernels for `isa` (default: this CPU's
    best), built into `cache_dir` on first use. None if they cannot be had (no compiler, a failed
    build, or SEEDSTREAM_KERNELS=off): the caller then uses the torch path."""
    if os.environ.get("SEEDSTREAM_KERNELS", "").lower() in ("off", "0", "false", "no"):
        log.warning("kernels disabled by SEEDSTREAM_KERNELS; using the torch path")
        return None
    try:
        isa = isa or detect_isa()
        return Kernels(build_library(isa, cache_dir), isa, threads)
    except Exception as exc:  # the torch path still serves; engine_version says which one runs
        log.warning("kernels unavailable (%s); using the torch path", exc)
        return None
