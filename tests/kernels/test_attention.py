"""Attention kernel: a row's bits depend only on its own sequence's keys and position, with float32 or
bfloat16 keys and values, with or without a sliding window and a soft cap on the scores."""

import ctypes

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seedstream.server.kernels import KV_DTYPE_CODES, ModelDesc, StepDesc, available_isas
from seedstream.server.kernels.lib import LayerDesc

HEADS, KV_HEADS, D, BLOCK = 9, 3, 64, 32
KV_DTYPES = [torch.float32, torch.bfloat16]


def _model_desc(window: int = 0, softcap: float = 0.0) -> ModelDesc:
    m = ModelDesc()
    m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim, m.attn_block = 1, HEADS, KV_HEADS, D, BLOCK
    m.attn_scale, m.attn_softcap = D**-0.5, softcap
    m._layers = (LayerDesc * 1)()  # kept alive by the desc
    m._layers[0].window = window
    m.layers = m._layers
    return m


def _attend(kernels, seqs, rows, window=0, softcap=0.0):
    """seqs: list of (keys, values) [1, Hkv, cap, D]; rows: list of (seq index, position, q [Hq, D])."""
    keys = (ctypes.c_void_p * len(seqs))(*[k.data_ptr() for k, _ in seqs])
    values = (ctypes.c_void_p * len(seqs))(*[v.data_ptr() for _, v in seqs])
    caps = torch.tensor([k.shape[2] for k, _ in seqs], dtype=torch.int32)
    seg = torch.tensor([s for s, _, _ in rows], dtype=torch.int32)
    pos = torch.tensor([p for _, p, _ in rows], dtype=torch.int32)
    step = StepDesc(
        len(rows),
        len(seqs),
        0,
        KV_DTYPE_CODES[seqs[0][0].dtype],
        None,
        pos.data_ptr(),
        seg.data_ptr(),
        ctypes.addressof(keys),
        ctypes.addressof(values),
        caps.data_ptr(),
        None,
        None,
    )
    q = torch.stack([q for _, _, q in rows])
    return kernels.attention(_model_desc(window, softcap), step, 0, q).view(len(rows), HEADS, D)


def _sequence(gen: torch.Generator, length: int, dtype=torch.float32):
    cap = -(-length // 128) * 128
    k = torch.zeros(1, KV_HEADS, cap, D, dtype=dtype)
    v = torch.zeros(1, KV_HEADS, cap, D, dtype=dtype)
    k[:, :, :length] = torch.randn(1, KV_HEADS, length, D, generator=gen)
    v[:, :, :length] = torch.randn(1, KV_HEADS, length, D, generator=gen)
    return k, v


@pytest.mark.parametrize("dtype", KV_DTYPES)
def test_alone_equals_batched_with_others_of_random_lengths(kernels_for, dtype):
    gen = torch.Generator().manual_seed(0)
    target = _sequence(gen, 300, dtype)
    queries = [(p, torch.randn(HEADS, D, generator=gen)) for p in (0, 31, 32, 33, 150, 299)]
    alone = _attend(kernels_for(threads=1), [target], [(0, p, q) for p, q in queries])
    rng = np.random.default_rng(0)
    for others in (1, 7, 63):
        lengths = [int(n) for n in rng.integers(1, 700, others)]
        seqs = [_sequence(gen, n, dtype) for n in lengths]
        rows = [(i, int(rng.integers(0, n)), torch.randn(HEADS, D, generator=gen)) for i, n in enumerate(lengths)]
        at = int(rng.integers(0, others + 1))  # the target's place among the sequences and among the rows
        seqs.insert(at, target)
        rows = [(i + (i >= at), p, q) for i, p, q in rows]
        rows[at:at] = [(at, p, q) for p, q in queries]
        out = _attend(kernels_for(threads=2), seqs, rows)
        assert torch.equal(out[at : at + len(queries)], alone), f"with {others} other sequences"


@pytest.mark.parametrize("dtype", KV_DTYPES)
def test_a_prefill_chunk_equals_one_row_at_a_time(kernels_for, dtype):
    gen = torch.Generator().manual_seed(1)
    seq = _sequence(gen, 200, dtype)
    rows = [(0, p, torch.randn(HEADS, D, generator=gen)) for p in range(200)]
    chunk = _attend(kernels_for(), [seq], rows)
    for p in (0, 1, 31, 32, 63, 64, 65, 199):
        assert torch.equal(_attend(kernels_for(threads=1), [seq], [rows[p]])[0], chunk[p])


@pytest.mark.parametrize("dtype", KV_DTYPES)
@pytest.mark.parametrize("length", [1, 5, 32, 33, 257])
def test_matches_sdpa(kernels_for, length, dtype):
    """Against float64 SDPA on the cached values (bfloat16 ones widen exactly, so the bound is the same)."""
    gen = torch.Generator().manual_seed(length)
    k, v = _sequence(gen, length, dtype)
    q = torch.randn(HEADS, D, generator=gen)
    got = _attend(kernels_for(), [(k, v)], [(0, length - 1, q)])[0]
    keys = k[0, :, :length].double().repeat_interleave(HEADS // KV_HEADS, 0)  # [Hq, L, D]
    values = v[0, :, :length].double().repeat_interleave(HEADS // KV_HEADS, 0)
    want = F.scaled_dot_product_attention(q.double()[:, None], keys, values)[:, 0]  # [Hq, D]
    assert (got.double() - want).abs().max() < 2e-6


@pytest.mark.parametrize("window,softcap", [(1, 0.0), (20, 0.0), (32, 0.0), (45, 3.0), (0, 2.0)])
def test_a_window_and_a_soft_cap_match_the_masked_reference(kernels_for, window, softcap):
    """Key j is attended from position p iff p - window < j <= p; scores s -> cap * tanh(s / cap) first."""
    gen = torch.Generator().manual_seed(window)
    k, v = _sequence(gen, 150, torch.float32)
    positions = (0, 19, 31, 32, 33, 63, 64, 100, 149)
    rows = [(0, p, torch.randn(HEADS, D, generator=gen)) for p in positions]
    got = _attend(kernels_for(), [(k, v)], rows, window, softcap)
    keys = k[0].double().repeat_interleave(HEADS // KV_HEADS, 0)  # [Hq, cap, D]
    values = v[0].double().repeat_interleave(HEADS // KV_HEADS, 0)
    for out, (_, p, q) in zip(got, rows):
        scores = torch.einsum("hd,hjd->hj", q.double(), keys[:, : p + 1]) * D**-0.5
        if softcap:
            scores = softcap * torch.tanh(scores / softcap)
        if window:
            scores[:, : max(0, p - window + 1)] = float("-inf")
        want = torch.einsum("hj,hjd->hd", scores.softmax(-1), values[:, : p + 1])
        assert (out.double() - want).abs().max() < 2e-6, f"position {p}"
    for i, row in enumerate(rows):  # one row alone: the same bits as in the step
        assert torch.equal(_attend(kernels_for(threads=1), [(k, v)], [row], window, softcap)[0], got[i])


@pytest.mark.parametrize("dtype", KV_DTYPES)
def test_every_instruction_set_gives_the_same_bits(kernels_for, dtype):
    gen = torch.Generator().manual_seed(2)
    seqs = [_sequence(gen, n, dtype) for n in (70, 300, 5)]
    rows = [(s, p, torch.randn(HEADS, D, generator=gen)) for s, p in ((0, 69), (1, 0), (1, 150), (1, 299), (2, 4))]
    for window, softcap in ((0, 0.0), (40, 2.5)):
        results = {isa: _attend(kernels_for(isa), seqs, rows, window, softcap) for isa in available_isas()}
        first = next(iter(results.values()))
        for isa, out in results.items():
            assert torch.equal(out, first), f"{isa} differs (window {window}, soft cap {softcap})"


def test_keys_and_values_round_to_bfloat16_as_torch_does(kernels_for):
    """The kernels' rounding (integer arithmetic) is torch's: nearest, ties to even, on every kind of value."""
    gen = torch.Generator().manual_seed(3)
    x = torch.cat(
        [
            torch.randn(10000, generator=gen) * 10.0 ** torch.randint(-40, 38, (10000,), generator=gen).float(),
            torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1e-45, -1e-45, 3.4e38, -3.4e38]),
            # exact ties between two bfloat16 values (low 16 bits 0x8000), odd and even
            torch.tensor([0x3F808000, 0x3F818000, 0xBF808000, 0x7F7F8000], dtype=torch.int64)
            .to(torch.int32)
            .view(torch.float32),
        ]
    )
    for isa in available_isas():
        got = kernels_for(isa).to_bf16(x)
        assert torch.equal(got.view(torch.int16), x.to(torch.bfloat16).view(torch.int16)), isa
    nan = kernels_for().to_bf16(torch.tensor([float("nan")]))
    assert torch.isnan(nan.float()).all()
