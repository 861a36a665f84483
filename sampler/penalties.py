"""Sparse logit edits: repetition/presence/frequency penalties, logit bias and suppressed tokens."""

from __future__ import annotations

import array
from collections.abc import Sequence

import torch

from .blocks import FLOAT_MAX
from .params import SamplingParams
from .select import RADIX_MIN

IdLists = Sequence[Sequence[int]] | None
REP, OUT, BIAS, SUP = 1, 2, 4, 8  # edit kinds, as bit flags


def _ids(seq: Sequence[int] | torch.Tensor) -> Sequence[int]:
    """Ids as array.extend() takes them; an int64 array ("q") is copied as it is, without a Python loop."""
    if isinstance(seq, torch.Tensor):
        return seq.tolist()
    if isinstance(seq, array.array) and seq.typecode != "q":
        return seq.tolist()
    return seq


def _bias_arrays(p: SamplingParams) -> tuple[array.array[int], array.array[float]]:
    """(token ids, biases) of p.logit_bias as flat arrays, built once per SamplingParams object (a
    request passes the same one every step), so a large bias costs no Python loop per step."""
    cached = p.__dict__.get("_bias_arrays")
    if cached is None:
        cached = (array.array("q", [t for t, _ in p.logit_bias]), array.array("d", [b for _, b in p.logit_bias]))
        object.__setattr__(p, "_bias_arrays", cached)  # a cache, not a field: equality and hash ignore it
    return cached


def _gather_edits(
    params: Sequence[SamplingParams], prompt_ids: IdLists, output_ids: IdLists, suppress_ids: IdLists
) -> tuple[array.array[int], list[tuple[int, int, float, int]], array.array[float]]:
    """Token ids (array), segments [(row, kind, 0, length)] and the biases of the BIAS edits in order
    (array); marshalling only."""
    toks = array.array("q")
    biases = array.array("d")
    segs: list[tuple[int, int, float, int]] = []

    def add(r: int, ids: Sequence[int] | torch.Tensor, kind: int) -> None:
        ids = _ids(ids)
        toks.extend(ids)
        segs.append((r, kind, 0.0, len(ids)))

    for r, p in enumerate(params):
        counted = p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
        rep = REP if p.repetition_penalty != 1.0 else 0
        if rep and prompt_ids is not None:
            add(r, prompt_ids[r], REP)
        if output_ids is not None and (counted or rep):
            add(r, output_ids[r], rep | (OUT if counted else 0))
        if p.logit_bias:
            ids, values = _bias_arrays(p)
            toks.extend(ids)
            biases.extend(values)
            segs.append((r, BIAS, 0.0, len(ids)))
        if suppress_ids is not None and len(suppress_ids[r]):
            add(r, suppress_ids[r], SUP)
    return toks, segs, biases


def edits(
    x: torch.Tensor,
    vocab: int,
    params: Sequence[SamplingParams],
    prompt_ids: IdLists,
    output_ids: IdLists,
    suppress_ids: IdLists,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(flat index into x [M] int64, new value [M] float32) of every edited logit, or None.

    x is the padded float32 [B, Vp] matrix. Per token: repetition penalty (once), then
    s -= frequency * count + presence * (count > 0), then s += bias, then min(s, float32 max);
    suppressed tokens -> -inf.
    Token ids outside [0, vocab) are ignored.
    """
    toks, segs, biases = _gather_edits(params, prompt_ids, output_ids, suppress_ids)
    if not len(toks):
        return None
    dev, width = x.device, x.shape[1]
    tok = torch.frombuffer(toks, dtype=torch.int64).clone().to(dev)
    seg = torch.tensor(segs, dtype=torch.float64, device=dev)  # [S, 4]

    def per_edit(col: int) -> torch.Tensor:
        return torch.repeat_interleave(seg[:, col], seg[:, 3].long())

    ok = (tok >= 0) & (tok < vocab)
    keys = (per_edit(0).long() * width + tok)[ok]
    kind = per_edit(1).long()
    b = torch.zeros(tok.numel(), dtype=torch.float64, device=dev)
    if len(biases):  # one scatter: the BIAS edits, in gathering order, take their biases
        b[kind == BIAS] = torch.frombuffer(biases, dtype=torch.float64).clone().to(dev)
    kind, b = kind[ok], b.float()[ok]
    if keys.numel() == 0:
        return None
    uniq, inv = _unique(keys, x.shape[0] * width)
    return uniq, _new_values(x, uniq, inv, kind, b, params, width)


def _unique(keys: torch.Tensor, sentinel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.unique(keys, return_inverse=True), padded onto torch's radix sort when that is faster."""
    n = keys.numel()
    if n * 8 < RADIX_MIN or n >= RADIX_MIN:
        uniq, inv = torch.unique(keys, return_inverse=True)
        return uniq, inv
    pad = torch.full((RADIX_MIN - n,), sentinel, dtype=keys.dtype, device=keys.device)
    uniq, inv = torch.unique(torch.cat([keys, pad]), return_inverse=True)
    return uniq[:-1], inv[:n]


def _row_param(params: Sequence[SamplingParams], name: str, rows: torch.Tensor) -> torch.Tensor:
    vals = torch.tensor([getattr(p, name) for p in params], dtype=torch.float32, device=rows.device)
    return vals[rows]


def _new_values(
    x: torch.Tensor,
    uniq: torch.Tensor,
    inv: torch.Tensor,
    kind: torch.Tensor,
    b: torch.Tensor,
    params: Sequence[SamplingParams],
    width: int,
) -> torch.Tensor:
    """float32 [M] edited values of the unique positions `uniq`; inv maps each edit to its slot."""
    m = uniq.numel()
    rows = uniq // width
    val = x.view(-1)[uniq]  # [M]

    def per_slot(v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(m, dtype=v.dtype, device=x.device).index_add_(0, inv, v)

    pen = _row_param(params, "repetition_penalty", rows)
    val = torch.where(per_slot(kind & REP) > 0, torch.where(val < 0, val * pen, val / pen), val)
    cnt = per_slot(((kind & OUT) > 0).float())
    val = val - _row_param(params, "frequency_penalty", rows) * cnt
    val = val - _row_param(params, "presence_penalty", rows) * (cnt > 0).float()
    val = (val + per_slot(b)).clamp(max=FLOAT_MAX)  # an overflow to +inf stays the largest value
    return val.masked_fill(per_slot(kind & SUP) > 0, float("-inf"))
