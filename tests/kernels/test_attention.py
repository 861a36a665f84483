"""Attention kernel: a row's bits depend only on its own sequence's keys and position."""

import ctypes

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seedstream.server.kernels import ModelDesc, StepDesc

HEADS, KV_HEADS, D, BLOCK = 9, 3, 64, 32


def _model_desc() -> ModelDesc:
    m = ModelDesc()
    m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim, m.attn_block = 1, HEADS, KV_HEADS, D, BLOCK
    return m


def _attend(kernels, seqs, rows):
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
        0,
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
    return kernels.attention(_model_desc(), step, 0, q).view(len(rows), HEADS, D)


def _sequence(gen: torch.Generator, length: int):
    cap = -(-length // 128) * 128
    k = torch.zeros(1, KV_HEADS, cap, D)
    v = torch.zeros(1, KV_HEADS, cap, D)
    k[:, :, :length] = torch.randn(1, KV_HEADS, length, D, generator=gen)
    v[:, :, :length] = torch.randn(1, KV_HEADS, length, D, generator=gen)
    return k, v


def test_alone_equals_batched_with_others_of_random_lengths(kernels_for):
    gen = torch.Generator().manual_seed(0)
    target = _sequence(gen, 300)
    queries = [(p, torch.randn(HEADS, D, generator=gen)) for p in (0, 31, 32, 33, 150, 299)]
    alone = _attend(kernels_for(threads=1), [target], [(0, p, q) for p, q in queries])
    rng = np.random.default_rng(0)
    for others in (1, 7, 63):
        lengths = [int(n) for n in rng.integers(1, 700, others)]
        seqs = [_sequence(gen, n) for n in lengths]
        rows = [(i, int(rng.integers(0, n)), torch.randn(HEADS, D, generator=gen)) for i, n in enumerate(lengths)]
        at = int(rng.integers(0, others + 1))  # the target's place among the sequences and among the rows
        seqs.insert(at, target)
        rows = [(i + (i >= at), p, q) for i, p, q in rows]
        rows[at:at] = [(at, p, q) for p, q in queries]
        out = _attend(kernels_for(threads=2), seqs, rows)
        assert torch.equal(out[at : at + len(queries)], alone), f"with {others} other sequences"


def test_a_prefill_chunk_equals_one_row_at_a_time(kernels_for):
    gen = torch.Generator().manual_seed(1)
    seq = _sequence(gen, 200)
    rows = [(0, p, torch.randn(HEADS, D, generator=gen)) for p in range(200)]
    chunk = _attend(kernels_for(), [seq], rows)
    for p in (0, 1, 31, 32, 63, 64, 65, 199):
        assert torch.equal(_attend(kernels_for(threads=1), [seq], [rows[p]])[0], chunk[p])


@pytest.mark.parametrize("length", [1, 5, 32, 33, 257])
def test_matches_sdpa(kernels_for, length):
    gen = torch.Generator().manual_seed(length)
    k, v = _sequence(gen, length)
    q = torch.randn(HEADS, D, generator=gen)
    got = _attend(kernels_for(), [(k, v)], [(0, length - 1, q)])[0]
    keys = k[0, :, :length].double().repeat_interleave(HEADS // KV_HEADS, 0)  # [Hq, L, D]
    values = v[0, :, :length].double().repeat_interleave(HEADS // KV_HEADS, 0)
    want = F.scaled_dot_product_attention(q.double()[:, None], keys, values)[:, 0]  # [Hq, D]
    assert (got.double() - want).abs().max() < 2e-6
