"""The kernel library builds without compiler warnings, and agrees with lib.py and packing.py on the layout
of what they hand it: the size of every C struct and the packed tile constants are checked at load."""

import ctypes

import numpy as np
import pytest

from seedstream.server.kernels import available_isas, packing
from seedstream.server.kernels.build import BUILD_LOG
from seedstream.server.kernels.lib import STRUCTS, TILE_CONSTANTS, Kernels, Matrix, layout_mismatches


def test_every_instruction_set_builds_without_compiler_warnings(kernels_for):
    """-Wall -Wextra: the build records what the compiler said beside the library, and it said nothing."""
    for isa in available_isas():
        log = (kernels_for(isa).path.parent / BUILD_LOG).read_text()
        assert log == "", f"the {isa} build has compiler warnings:\n{log[:4000]}"


def test_the_library_has_the_struct_sizes_and_tile_constants_of_lib_py(kernels_for):
    library = ctypes.CDLL(str(kernels_for().path))
    assert layout_mismatches(library) == []
    assert set(STRUCTS) == {"matrix", "rope", "layer", "model", "step"}
    assert library.ssk_tile_constant(b"NO_SUCH_CONSTANT") == -1


def test_a_struct_or_constant_that_differs_from_the_library_is_named(kernels_for):
    class MatrixWithExtraField(ctypes.Structure):
        _fields_ = [*Matrix._fields_, ("extra", ctypes.c_int64)]

    library = ctypes.CDLL(str(kernels_for().path))
    found = layout_mismatches(library, {"matrix": MatrixWithExtraField}, {"SSK_NR": 8, "SSK_QK": 32})
    assert found == [
        f"sizeof(ssk_matrix) is {ctypes.sizeof(Matrix)} bytes, its ctypes MatrixWithExtraField "
        f"{ctypes.sizeof(MatrixWithExtraField)}",
        "SSK_NR is 16 in the library (csrc/internal.h), 8 in server/kernels/lib.py",
    ]


def test_a_library_that_disagrees_with_lib_py_is_refused_at_load(kernels_for, monkeypatch):
    kernels = kernels_for()
    monkeypatch.setitem(TILE_CONSTANTS, "Q8_0_TILE_BLOCK", 545)
    with pytest.raises(RuntimeError, match="does not match server/kernels/lib.py: Q8_0_TILE_BLOCK is 544"):
        Kernels(kernels.path, kernels.isa, 1)


@pytest.mark.parametrize(("fmt", "block"), [("q8_0", "Q8_0_TILE_BLOCK"), ("q4_1", "Q4_1_TILE_BLOCK")])
def test_packing_lays_out_tile_blocks_of_the_checked_size(fmt, block):
    """Two tiles of two blocks each: the packed bytes are tiles x blocks x the library's tile block size."""
    n, k = 2 * packing.NR, 2 * packing.QK
    w = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32)
    quantize, pack = getattr(packing, f"quantize_{fmt}"), getattr(packing, f"pack_{fmt}")
    packed = pack(*quantize(w))
    assert packed.data.numel() == (n // packing.NR) * (k // packing.QK) * TILE_CONSTANTS[block]
