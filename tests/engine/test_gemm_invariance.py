"""Every GEMM shape of the default model gives a row the same bits at any padded row count and position."""

import pytest
import torch

from seedstream.server.engine.model import ROW_TILE, invariant_linear, pad_rows

# (in, out) of the fused GEMMs of SmolLM2-135M: qkv, o, gate_up, down, lm_head.
SHAPES = [
    (576, 960),
    (576, 576),
    (576, 3072),
    (1536, 576),
    pytest.param(576, 49152, marks=pytest.mark.slow),
]  # the lm_head: about a minute per test at every position, so three positions per row count there
EVERY_POSITION_WEIGHTS = 1 << 22  # matrices up to this many weights try each position of the small row counts
MAX_STEP_ROWS = 512 + ROW_TILE  # EngineConfig.max_step_tokens plus padding (scoring asks logits for every row)


@pytest.mark.parametrize("k,n", SHAPES)
def test_row_bits_do_not_depend_on_row_count_or_position(k, n):
    gen = torch.Generator().manual_seed(k * 7 + n)
    weight = torch.randn(n, k, generator=gen) * 0.05
    probe = torch.randn(1, k, generator=gen)
    alone = invariant_linear(pad_rows(probe), weight)[0]
    counts = list(range(ROW_TILE, 69, ROW_TILE)) + [128, 256, 384, 512, MAX_STEP_ROWS]
    for rows in counts:
        every = rows <= 68 and n * k <= EVERY_POSITION_WEIGHTS
        positions = range(rows) if every else [0, rows // 2, rows - 1]
        others = torch.randn(rows, k, generator=gen)
        for pos in positions:
            batch = others.clone()
            batch[pos] = probe[0]
            out = invariant_linear(batch, weight)
            assert torch.equal(out[pos], alone), f"row at {pos} of {rows} differs for shape {k}->{n}"


def test_pad_rows_pads_to_tile_with_zeros():
    x = torch.ones(5, 3)
    padded = pad_rows(x)
    assert padded.shape[0] % ROW_TILE == 0 and padded.shape[0] >= 5
    assert torch.equal(padded[:5], x) and not padded[5:].any()
    assert pad_rows(torch.ones(1, 3)).shape[0] == ROW_TILE


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k,n", SHAPES)
def test_half_precision_rows_are_invariant(dtype, k, n):
    """--dtype bfloat16/float16: a row's bits at fewer row counts."""
    gen = torch.Generator().manual_seed(k * 13 + n)
    weight = (torch.randn(n, k, generator=gen) * 0.05).to(dtype)
    probe = torch.randn(1, k, generator=gen).to(dtype)
    row_alone = invariant_linear(pad_rows(probe), weight)[0]
    for rows in (ROW_TILE, 2 * ROW_TILE, 64, 256):
        others = torch.randn(rows, k, generator=gen).to(dtype)
        for pos in (0, rows // 2, rows - 1):
            batch = others.clone()
            batch[pos] = probe[0]
            assert torch.equal(invariant_linear(batch, weight)[pos], row_alone), f"{rows} rows"
