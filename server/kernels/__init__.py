"""Batch-invariant CPU kernels in C++ (GEMM on packed quantised weights, attention, the whole forward).

`load_kernels()` builds the library for this CPU on first use (cached) and returns a `Kernels`
handle, or None when no compiler or no supported CPU is available; the engine then keeps the torch path.
"""

from .build import KERNEL_VERSION, available_isas, build_library, cpu_flags_line, detect_isa
from .lib import (
    FORMAT_CODES,
    KV_DTYPE_CODES,
    Kernels,
    Matrix,
    ModelDesc,
    StepDesc,
    load_kernels,
)

__all__ = [
    "FORMAT_CODES",
    "KV_DTYPE_CODES",
    "KERNEL_VERSION",
    "Kernels",
    "Matrix",
    "ModelDesc",
    "StepDesc",
    "available_isas",
    "build_library",
    "cpu_flags_line",
    "detect_isa",
    "load_kernels",
]
