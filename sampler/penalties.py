"""Sparse logit edits: repetition/presence/frequency penalties, logit bias and suppressed tokens."""

from __future__ import annotations

import array
import bisect
import itertools
from collections.abc import Sequence

import torch

from .blocks import FLOAT_MAX
from .history import TokenHistory
from .params import SamplingParams
from .select import RADIX_MIN

IdLists = Sequence[Sequence[int]] | None
BIAS, SUP = 1, 2  # kinds of the edits besides the histories' (logit bias, suppression), as bit flags


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
        cached = (array.array("q", [t for t, _ in p.logit_bias]), array.array("d", [bias for _, bias in p.logit_bias]))
        object.__setattr__(p, "_bias_arrays", cached)  # a cache, not a field: equality and hash ignore it
    return cached


def _gather_extra_edits(
    params: Sequence[SamplingParams], suppress_ids: IdLists
) -> tuple[array.array[int], list[tuple[int, int, float, int]], array.array[float]]:
    """Token ids (array), segments [(row, kind, 0, length)] and the biases of the BIAS edits in order
    (array) of the logit bias and suppression edits; marshalling only."""
    token_ids = array.array("q")
    biases = array.array("d")
    segments: list[tuple[int, int, float, int]] = []
    for r, p in enumerate(params):
        if p.logit_bias:
            ids, values = _bias_arrays(p)
            token_ids.extend(ids)
            biases.extend(values)
            segments.append((r, BIAS, 0.0, len(ids)))
        if suppress_ids is not None and len(suppress_ids[r]):
            suppressed = _ids(suppress_ids[r])
            token_ids.extend(suppressed)
            segments.append((r, SUP, 0.0, len(suppressed)))
    return token_ids, segments, biases


def edits(
    x: torch.Tensor,
    vocab: int,
    params: Sequence[SamplingParams],
    histories: Sequence[TokenHistory | None] | None,
    suppress_ids: IdLists,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(flat index into x [M] int64, ascending, new value [M] float32) of every edited logit, or None.

    x is the padded float32 [B, Vp] matrix. Per token: repetition penalty (once), then
    s -= frequency * count + presence * (count > 0), then s += bias, then min(s, float32 max);
    suppressed tokens -> -inf. Token ids outside [0, vocab) are ignored.

    histories: one TokenHistory per row (None for a row without; None for no row), the prompt and
    output the penalties read. Their ids are distinct and ascending, so the penalty edits need no
    sort; only the bias and suppression edits, usually few, are merged in. Every history edit takes
    the repetition penalty: a row without one has repetition_penalty 1, and s * 1 and s / 1 are s,
    bit for bit.
    """
    if histories is not None and len(histories) != len(params):
        raise ValueError(f"histories has {len(histories)} entries for B={len(params)}")
    device, width = x.device, x.shape[1]
    history_keys, history_counts = _history_keys(params, histories, vocab, width, device)
    token_ids, extra_segments, biases = _gather_extra_edits(params, suppress_ids)
    extra_keys, extra_kinds, extra_bias = (
        _flat_edits(token_ids, extra_segments, biases, vocab, width, device) if len(token_ids) else (None, None, None)
    )
    if extra_keys is None or extra_keys.numel() == 0:
        if history_keys.numel() == 0:
            return None
        return history_keys, _new_values(x, history_keys, None, history_counts, None, None, params, width)
    assert extra_kinds is not None and extra_bias is not None, "set with extra_keys"
    positions, history_slot, extra_slot = _merge(history_keys, extra_keys, x.shape[0] * width)
    n_slots = positions.numel()
    repeated = torch.zeros(n_slots, dtype=torch.bool, device=device).index_fill_(0, history_slot, True)
    counts = torch.zeros(n_slots, dtype=torch.float32, device=device).index_put_((history_slot,), history_counts)
    bias = torch.zeros(n_slots, dtype=torch.float32, device=device).index_add_(0, extra_slot, extra_bias)
    suppressed = torch.zeros(n_slots, dtype=torch.int64, device=device).index_add_(0, extra_slot, extra_kinds & SUP) > 0
    return positions, _new_values(x, positions, repeated, counts, bias, suppressed, params, width)


def _flat_edits(
    token_ids: array.array[int],
    segments: list[tuple[int, int, float, int]],
    biases: array.array[float],
    vocab: int,
    width: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flat key row * width + id [N] int64, kind [N] int64, bias [N] float32) of the gathered edits
    whose id is in [0, vocab), in gathering order."""
    tokens = torch.frombuffer(token_ids, dtype=torch.int64).clone().to(device)
    segment_table = torch.tensor(segments, dtype=torch.float64, device=device)  # [S, 4]

    def per_edit(col: int) -> torch.Tensor:
        return torch.repeat_interleave(segment_table[:, col], segment_table[:, 3].long())

    ok = (tokens >= 0) & (tokens < vocab)
    keys = (per_edit(0).long() * width + tokens)[ok]
    kind = per_edit(1).long()
    bias = torch.zeros(tokens.numel(), dtype=torch.float64, device=device)
    if len(biases):  # one scatter: the BIAS edits, in gathering order, take their biases
        bias[kind == BIAS] = torch.frombuffer(biases, dtype=torch.float64).clone().to(device)
    return keys, kind[ok], bias.float()[ok]


def _history_keys(
    params: Sequence[SamplingParams],
    histories: Sequence[TokenHistory | None] | None,
    vocab: int,
    width: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat keys row * width + id [N] ascending, output count [N] float32) of the history edits:
    every id in [0, vocab) of a repetition-penalised row, the output ids of a counted row."""
    ids, counts = array.array("q"), array.array("q")
    offsets: list[int] = []  # row * width of each row read
    lengths: list[int] = []  # how many ids it gave
    for r, (p, h) in enumerate(zip(params, histories or [None] * len(params))):
        counted = p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
        if h is None or not (counted or p.repetition_penalty != 1.0):
            continue
        start = len(ids)
        lo, hi = bisect.bisect_left(h.ids, 0), bisect.bisect_left(h.ids, vocab)  # ids ascending
        if p.repetition_penalty != 1.0:
            ids.extend(h.ids[lo:hi])
            counts.extend(h.counts[lo:hi])
        else:  # the output's ids only
            ids.extend(itertools.compress(h.ids[lo:hi], h.counts[lo:hi]))
            counts.extend(c for c in h.counts[lo:hi] if c)
        offsets.append(r * width)
        lengths.append(len(ids) - start)
    if not ids:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty.float()
    tokens = torch.frombuffer(ids, dtype=torch.int64).clone()  # a copy: the row offsets are added in place
    if any(offsets):
        tokens += torch.repeat_interleave(torch.tensor(offsets), torch.tensor(lengths))
    output_counts = torch.frombuffer(counts, dtype=torch.int64).to(torch.float32)
    return tokens.to(device), output_counts.to(device)


def _merge(h: torch.Tensor, e: torch.Tensor, sentinel: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted union of h and e, slot in it of each h, slot of each e); h ascending and distinct."""
    unique_extra, extra_inverse = _unique(e, sentinel)
    n = h.numel()
    first_at_or_above = torch.searchsorted(h, unique_extra)  # [U] first h >= each unique e
    found = first_at_or_above < n
    found[found.clone()] = h[first_at_or_above[found]] == unique_extra[found]
    new = unique_extra[~found]  # [K] ids not in h
    history_slot = torch.arange(n, device=h.device) + torch.searchsorted(new, h)
    new_slot = torch.arange(new.numel(), device=h.device) + torch.searchsorted(h, new)
    unique_keys = torch.empty(n + new.numel(), dtype=h.dtype, device=h.device)
    unique_keys[history_slot], unique_keys[new_slot] = h, new
    extra_slot = torch.empty_like(unique_extra)
    extra_slot[found], extra_slot[~found] = history_slot[first_at_or_above[found]], new_slot
    return unique_keys, history_slot, extra_slot[extra_inverse]


def _unique(keys: torch.Tensor, sentinel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.unique(keys, return_inverse=True), padded onto torch's radix sort when that is faster."""
    n = keys.numel()
    if n * 8 < RADIX_MIN or n >= RADIX_MIN:
        unique_keys, slot_of_key = torch.unique(keys, return_inverse=True)
        return unique_keys, slot_of_key
    pad = torch.full((RADIX_MIN - n,), sentinel, dtype=keys.dtype, device=keys.device)
    unique_keys, slot_of_key = torch.unique(torch.cat([keys, pad]), return_inverse=True)
    return unique_keys[:-1], slot_of_key[:n]


def _row_params(params: Sequence[SamplingParams], rows: torch.Tensor) -> torch.Tensor:
    """float32 [M, 3] (repetition, frequency, presence penalty) of the row of each position."""
    values = [(p.repetition_penalty, p.frequency_penalty, p.presence_penalty) for p in params]
    return torch.tensor(values, dtype=torch.float32, device=rows.device)[rows]


def _new_values(
    x: torch.Tensor,
    positions: torch.Tensor,
    repeated: torch.Tensor | None,
    counts: torch.Tensor,
    bias: torch.Tensor | None,
    suppressed: torch.Tensor | None,
    params: Sequence[SamplingParams],
    width: int,
) -> torch.Tensor:
    """float32 [M] edited values of the flat positions [M] into x, given per position: repetition-penalised
    [M] bool (None: all), output count [M] float32, summed bias [M] float32 (None: none),
    suppressed [M] bool (None: none)."""
    rows = positions // width
    values = x.view(-1)[positions]  # [M]
    repetition, frequency, presence = _row_params(params, rows).unbind(1)  # [M] each
    penalised = torch.where(values < 0, values * repetition, values / repetition)
    values = penalised if repeated is None else torch.where(repeated, penalised, values)
    values = values - frequency * counts
    values = values - presence * (counts > 0).float()
    # Adding 0 turns -0.0 into +0.0 as a zero bias does: an edit's bits do not depend on the batch holding a bias.
    values = values + (0.0 if bias is None else bias)
    values = values.clamp(max=FLOAT_MAX)  # an overflow to +inf stays the largest value
    return values if suppressed is None else values.masked_fill(suppressed, float("-inf"))
