"""Compile the kernel sources into a shared library for one instruction set, once, into the cache.

Why JIT with the system compiler rather than a prebuilt module in the wheel: the library is plain C++
with a C ABI (no torch headers, so no tie to the torch version), it builds in under a minute (one object per
source, compiled in parallel, then linked), and building on the machine lets one pure-Python wheel serve
every x86 CPU. The build is keyed by a hash of the
sources, the flags and the compiler version, and is a cache entry (seedstream.server.cachefs): built once
under a lock by concurrent servers, sealed with a manifest, checked and loaded before use.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from seedstream.server import cachefs
from seedstream.server.phases import phase

log = logging.getLogger("seedstream.kernels")

SOURCE_DIR = Path(__file__).resolve().parent / "csrc"
# Longest compile first, so that the short ones fill the other cores meanwhile.
SOURCES = (
    "attention_f32.cpp",
    "attention_bf16.cpp",
    "gemm_k4.cpp",
    "gemm_q32.cpp",
    "gemm_k2.cpp",
    "forward.cpp",
    "gemm_plain.cpp",
    "gemm_i8.cpp",
    "gemm.cpp",
    "ops.cpp",
    "attention.cpp",
    "layout.cpp",
)
HEADERS = (
    "ssk.h",
    "internal.h",
    "simd.h",
    "simd_i8.h",
    "pool.h",
    "gemm_formats.h",
    "gemm_scales.h",
    "gemm_blocks.h",
    "gemm_group6.h",
    "gemm_nibble32.h",
    "gemm_tiles.h",
    "attention_kernels.h",
)
# Bump when the arithmetic of any kernel changes (it is part of engine_version). The instruction set
# is not: every build gives the same bits (tests/kernels/test_gemm.py, tests/engine/test_kernel_model.py).
KERNEL_VERSION = "2"
LIBRARY = "libssk.so"  # inside its cache entry, libssk-<isa>-<hash of sources, flags, compiler>/
BUILD_LOG = "build.log"  # beside LIBRARY: what the compiler said (warnings); empty for a clean build
LIBRARY_BYTES = 16 << 20  # an upper estimate, for a full disk's message (with the objects, removed after linking)

# -ffp-contract=off: no multiply-add contraction the source did not ask for; no -ffast-math: no
# reassociation. Together they keep every build's arithmetic exactly the one written.
COMMON_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Wextra", "-pthread"]
LINK_FLAGS = ["-shared", "-pthread"]
# GCC 12's own AVX-512 headers trip -W(maybe-)uninitialized on their `__Y = __Y` placeholders (GCC bug 105593,
# fixed in 13): thousands of warnings inside avx512fintrin.h, none in our code, which the avx2 and scalar
# builds of the same sources check with both warnings on. Warning flags change no generated code.
GCC12_AVX512_HEADER_WARNINGS = ["-Wno-uninitialized", "-Wno-maybe-uninitialized"]
ISA_FLAGS = {
    "avx512": [
        *("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mavx2", "-mfma", "-mf16c"),
        *GCC12_AVX512_HEADER_WARNINGS,
    ],
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


def library_entry(isa: str, cache_dir: Path, cxx: str) -> Path:
    """The cache entry (a folder: LIBRARY and its manifest) of the build for `isa` with compiler `cxx`."""
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    digest.update(" ".join(COMMON_FLAGS + ISA_FLAGS[isa] + LINK_FLAGS).encode() + _compiler_id(cxx).encode())
    return cache_dir / f"libssk-{isa}-{digest.hexdigest()[:16]}"


def build_library(isa: str, cache_dir: Path) -> Path:
    """Compile (or find cached, checked against its manifest and loadable) the library for `isa`; return its
    path. A damaged one is moved aside and rebuilt once. Raises on failure (CacheError for a full disk)."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++, c++ or clang++) on PATH")
    entry = library_entry(isa, cache_dir, cxx)
    return cachefs.ensure(entry, functools.partial(_compile, cxx, isa, entry), _loadable, lambda: LIBRARY_BYTES)


def _compile(cxx: str, isa: str, entry: Path, out: Path) -> None:
    """Compile each source to an object in parallel and link LIBRARY into `out` (the temp folder of `entry`);
    keep the compiler's messages in BUILD_LOG."""
    objects = out / "obj"
    objects.mkdir()
    compile_cmd = [cxx, *COMMON_FLAGS, *ISA_FLAGS[isa], "-c"]
    log.info("building kernels (%s): %s <source> -o <object>, then linked", isa, " ".join(compile_cmd))
    workers = min(len(SOURCES), len(os.sched_getaffinity(0)))
    objects_of = [str(objects / f"{source}.o") for source in SOURCES]

    def compile_unit(source: str, obj: str) -> str:
        return _run(isa, out, [*compile_cmd, str(SOURCE_DIR / source), "-o", obj])

    with phase(f"compiling kernels for {isa} ({len(SOURCES)} units, {workers} at a time; first start only)", log.info):
        with ThreadPoolExecutor(workers) as pool:
            units = list(pool.map(compile_unit, SOURCES, objects_of))
        link = _run(isa, out, [cxx, *LINK_FLAGS, "-o", str(out / LIBRARY), *objects_of])
    shutil.rmtree(objects)
    messages = "".join(units) + link
    (out / BUILD_LOG).write_text(messages)
    if messages:
        log.warning("the kernel build (%s) had compiler warnings: see %s", isa, entry / BUILD_LOG)


def _run(isa: str, out: Path, cmd: list[str]) -> str:
    """Run one compiler command; return its messages (stderr), or raise with them when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:  # the compiler's own words: a full disk reads "No space left on device" there
        raise RuntimeError(f"kernel build failed ({isa}, into {out.parent}):\n{proc.stderr[-4000:]}")
    return proc.stderr


def _loadable(entry: Path) -> Path:
    """The entry's library, once its bytes match the manifest and the dynamic loader takes it."""
    cachefs.verify(entry)
    path = entry / LIBRARY
    with cachefs.reading(path):
        ctypes.CDLL(str(path))
    return path


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
