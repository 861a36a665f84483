"""Every GEMM shape of the default model gives a row the same bits at any padded row count and position."""

import pytest
import torch

from seedstream.server.engine.model import ROW_TILE, column_linear, invariant_linear, pad_rows

# (in, out) of the fused GEMMs of SmolLM2-135M: qkv, o, gate_up, down, lm_head.
SHAPES = [(576, 960), (576, 576), (576, 3072), (1536, 576), (576, 49152)]
MAX_STEP_ROWS = 512 + ROW_TILE  # EngineConfig.max_step_tokens plus padding (scoring asks logits for every row)


@pytest.mark.parametrize("k,n", SHAPES)
def test_row_bits_do_not_depend_on_row_count_or_position(device, k, n):
    gen = torch.Generator().manual_seed(k * 7 + n)
    weight = (torch.randn(n, k, generator=gen) * 0.05).to(device)
    probe = torch.randn(1, k, generator=gen).to(device)
    alone = invariant_linear(pad_rows(probe), weight)[0]
    counts = list(range(ROW_TILE, 69, ROW_TILE)) + [128, 256, 384, 512, MAX_STEP_ROWS]
    for rows in counts:
        positions = range(rows) if rows <= 68 else [0, rows // 2, rows - 1]
        others = torch.randn(rows, k, generator=gen).to(device)
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


@pytest.mark.parametrize("k,n", SHAPES)
def test_decode_column_bits_do_not_depend_on_row_count_or_position(device, k, n):
    """The decode path (weight @ x^T in blocks of COLUMN_BLOCK rows): a row's bits for 1 to 64 decode rows."""
    gen = torch.Generator().manual_seed(k * 11 + n)
    weight = (torch.randn(n, k, generator=gen) * 0.05).to(device)
    bias = torch.randn(n, generator=gen).to(device)
    probe = torch.randn(1, k, generator=gen).to(device)
    alone = column_linear(probe, weight, bias)[0]
    for rows in list(range(1, 13)) + [31, 64]:
        others = torch.randn(rows, k, generator=gen).to(device)
        for pos in sorted({0, rows // 2, rows - 1}):
            batch = others.clone()
            batch[pos] = probe[0]
            assert torch.equal(column_linear(batch, weight, bias)[pos], alone), f"row {pos} of {rows}, {k}->{n}"


def test_decode_column_bits_do_not_depend_on_input_layout():
    """A decode row's input may come from a transposed (column-major) intermediate; same bits either way."""
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(576, 1536, generator=gen) * 0.05
    x = torch.randn(6, 1536, generator=gen)
    column_major = x.t().contiguous().t()
    assert not column_major.is_contiguous()
    assert torch.equal(column_linear(column_major, weight), column_linear(x, weight))
    assert column_linear(x, weight).is_contiguous()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k,n", SHAPES)
def test_half_precision_rows_are_invariant_on_both_paths(device, dtype, k, n):
    """--dtype bfloat16/float16: a row's bits on the prompt path and the decode path, fewer row counts."""
    gen = torch.Generator().manual_seed(k * 13 + n)
    weight = (torch.randn(n, k, generator=gen) * 0.05).to(device, dtype)
    probe = torch.randn(1, k, generator=gen).to(device, dtype)
    row_alone, column_alone = invariant_linear(pad_rows(probe), weight)[0], column_linear(probe, weight)[0]
    for rows in (4, 8, 12, 64, 256):
        others = torch.randn(rows, k, generator=gen).to(device, dtype)
        for pos in (0, rows // 2, rows - 1):
            batch = others.clone()
            batch[pos] = probe[0]
            assert torch.equal(invariant_linear(batch, weight)[pos], row_alone), f"row path, {rows} rows"
            assert torch.equal(column_linear(batch, weight)[pos], column_alone), f"column path, {rows} rows"
