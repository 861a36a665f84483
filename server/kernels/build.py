"""Compile the kernel sources into a shared library for one instruction set, once, into the cache.

Why JIT with the system compiler rather than a prebuilt module in the wheel: the library is plain C++
with a C ABI (no torch headers, so no tie to the torch version), it builds in seconds, and building on
the machine lets one pure-Python wheel serve every x86 CPU. The build is keyed by a hash of the
sources, the flags and the compiler version, and written atomically, so concurrent servers share it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from seedstream.server.phases import phase

log = logging.getLogger("seedstream.kernels")

SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
SOURCES = ("ops.cpp", "gemm.cpp", "gemm_i8.cpp", "attention.cpp", "forward.cpp")
HEADERS = ("ssk.h", "internal.h", "simd.h", "simd_i8.h", "pool.h", "gemm_blocks.h")
# Bump when the arithmetic of any kernel changes (it is part of engine_version). The instruction set
# is not: every build gives the same bits (tests/kernels/test_isa_identity.py).
KERNEL_VERSION = "2"

# -ffp-contract=off: no multiply-add contraction the source did not ask for; no -ffast-math: no
# reassociation. Together they keep every build's arithmetic exactly the one written.
COMMON_FLAGS = [
    "-O3",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-Wno-maybe-uninitialized",
    "-pthread",
]
ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mavx2", "-mfma", "-mf16c"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "scalar": [],
}
ISA_CPU_FLAGS = {
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx2", "fma", "f16c"},
    "avx2": {"avx2", "fma", "f16c"},
    "scalar": set(),
}


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def available_isas() -> list[str]:
    """Instruction sets this CPU runs, best first."""
    flags = cpu_flags()
    return [isa for isa in ("avx512", "avx2", "scalar") if ISA_CPU_FLAGS[isa] <= flags]


def detect_isa() -> str:
    """The build to use: SEEDSTREAM_KERNEL_ISA if set (must be supported), else the best available."""
    forced = os.environ.get("SEEDSTREAM_KERNEL_ISA")
    isas = available_isas()
    if forced:
        if forced not in ISA_FLAGS:
            raise ValueError(f"SEEDSTREAM_KERNEL_ISA={forced!r}: allowed {', '.join(ISA_FLAGS)}")
        if forced not in isas:
            raise ValueError(f"SEEDSTREAM_KERNEL_ISA={forced!r}: this CPU supports {', '.join(isas)}")
        return forced
    return isas[0]


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _compiler_id(cxx: str) -> str:
    out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.splitlines()[0] if out.stdout else cxx


def build_library(isa: str, cache_dir: Path) -> Path:
    """Compile (or find cached) the library for `isa`; return its path. Raises on failure."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++, c++ or clang++) on PATH")
    flags = COMMON_FLAGS + ISA_FLAGS[isa]
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    digest.update(" ".join(flags).encode() + _compiler_id(cxx).encode())
    target = cache_dir / f"libssk-{isa}-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir)
    os.close(fd)
    cmd = [cxx, *flags, "-o", tmp, *[str(SOURCE_DIR / s) for s in SOURCES]]
    log.info("building kernels (%s): %s", isa, " ".join(cmd))
    with phase(f"compiling kernels for {isa} (first start only)", log.info):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"kernel build failed ({isa}):\n{proc.stderr[-4000:]}")
    os.replace(tmp, target)  # atomic: a concurrent builder wrote the same bytes
    return target


def cpu_flags_line() -> str:
    """The CPU's vector extensions that matter here, for printing beside benchmark tables."""
    flags = cpu_flags()
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile")
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    return f"CPU: {model or 'unknown'}; flags: {' '.join(f for f in wanted if f in flags) or 'none of ' + ', '.join(wanted)}"
