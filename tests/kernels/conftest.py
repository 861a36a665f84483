"""Kernel fixtures: the library built for each instruction set this CPU runs, and random packed weights."""

import numpy as np
import pytest

from seedstream.server.engine.loader import cache_root
from seedstream.server.kernels import available_isas, load_kernels, packing

# Every GEMM shape of the default model (N outputs, K inputs): qkv, o, gate_up, down, lm_head.
MODEL_SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576)]
FORMATS = ("f32", "q8_0", "q4_1")


@pytest.fixture(scope="session")
def kernels_for():
    """kernels_for(isa, threads) -> a Kernels handle (built once per ISA into the cache)."""
    made = {}

    def get(isa=None, threads=2):
        isa = isa or available_isas()[0]
        if (isa, threads) not in made:
            k = load_kernels(threads, cache_root() / "kernels", isa)
            if k is None:
                pytest.fail(f"the {isa} kernels did not build (see the log)")
            made[isa, threads] = k
        return made[isa, threads]

    return get


def random_weights(n: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, k)) * 0.05).astype(np.float32)


def reference_weights(w: np.ndarray, fmt: str) -> np.ndarray:
    """What the packed matrix holds, dequantised (float32)."""
    if fmt == "q8_0":
        return packing.dequantize_q8_0(*packing.quantize_q8_0(w))
    if fmt == "q4_1":
        return packing.dequantize_q4_1(*packing.quantize_q4_1(w))
    return w
