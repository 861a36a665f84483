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
    histories: Sequence[TokenHistory | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(flat index into x [M] int64, ascending, new value [M] float32) of every edited logit, or None.

    x is the padded float32 [B, Vp] matrix. Per token: repetition penalty (once), then
    s -= frequency * count + presence * (count > 0), then s += bias, then min(s, float32 max);
    suppressed tokens -> -inf.
    Token ids outside [0, vocab) are ignored. `histories` (one TokenHistory per row, or None for a
    row without) replaces prompt_ids and output_ids and gives the same edits.
    """
    if histories is not None:
        return _history_edits(x, vocab, params, histories, suppress_ids)
    toks, segs, biases = _gather_edits(params, prompt_ids, output_ids, suppress_ids)
    if not len(toks):
        return None
    dev, width = x.device, x.shape[1]
    keys, kind, b = _flat_edits(toks, segs, biases, vocab, width, dev)
    if keys.numel() == 0:
        return None
    uniq, inv = _unique(keys, x.shape[0] * width)
    m = uniq.numel()

    def per_slot(v: torch.Tensor) -> torch.Tensor:
        return torch.zeros(m, dtype=v.dtype, device=dev).index_add_(0, inv, v)

    rep, cnt = per_slot(kind & REP) > 0, per_slot(((kind & OUT) > 0).float())
    return uniq, _new_values(x, uniq, rep, cnt, per_slot(b), per_slot(kind & SUP) > 0, params, width)


def _flat_edits(
    toks: array.array[int],
    segs: list[tuple[int, int, float, int]],
    biases: array.array[float],
    vocab: int,
    width: int,
    dev: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flat key row * width + id [N] int64, kind [N] int64, bias [N] float32) of the gathered edits
    whose id is in [0, vocab), in gathering order."""
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
    return keys, kind[ok], b.float()[ok]


def _history_edits(
    x: torch.Tensor,
    vocab: int,
    params: Sequence[SamplingParams],
    histories: Sequence[TokenHistory | None],
    suppress_ids: IdLists,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """edits() from TokenHistory rows: their ids are distinct and ascending, so the penalty edits
    need no sort; only the bias and suppression edits, usually few, are merged in.

    Every history edit takes the repetition penalty: a row without one has repetition_penalty 1,
    and s * 1 and s / 1 are s, bit for bit.
    """
    if len(histories) != len(params):
        raise ValueError(f"histories has {len(histories)} entries for B={len(params)}")
    dev, width = x.device, x.shape[1]
    hkeys, hcnt = _history_keys(params, histories, vocab, width, dev)
    toks, esegs, biases = _gather_edits(params, None, None, suppress_ids)  # bias and suppression only
    ekeys, ekind, eb = _flat_edits(toks, esegs, biases, vocab, width, dev) if len(toks) else (None, None, None)
    if ekeys is None or ekeys.numel() == 0:
        if hkeys.numel() == 0:
            return None
        return hkeys, _new_values(x, hkeys, None, hcnt, None, None, params, width)
    assert ekind is not None and eb is not None, "set with ekeys"
    uniq, hslot, eslot = _merge(hkeys, ekeys, x.shape[0] * width)
    m = uniq.numel()
    rep = torch.zeros(m, dtype=torch.bool, device=dev).index_fill_(0, hslot, True)
    cnt = torch.zeros(m, dtype=torch.float32, device=dev).index_put_((hslot,), hcnt)
    b = torch.zeros(m, dtype=torch.float32, device=dev).index_add_(0, eslot, eb)
    sup = torch.zeros(m, dtype=torch.int64, device=dev).index_add_(0, eslot, ekind & SUP) > 0
    return uniq, _new_values(x, uniq, rep, cnt, b, sup, params, width)


def _history_keys(
    params: Sequence[SamplingParams],
    histories: Sequence[TokenHistory | None],
    vocab: int,
    width: int,
    dev: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat keys row * width + id [N] ascending, output count [N] float32) of the history edits:
    every id in [0, vocab) of a repetition-penalised row, the output ids of a counted row."""
    ids, counts = array.array("q"), array.array("q")
    offsets: list[int] = []  # row * width of each row read
    lengths: list[int] = []  # how many ids it gave
    for r, (p, h) in enumerate(zip(params, histories)):
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
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return empty, empty.float()
    tok = torch.frombuffer(ids, dtype=torch.int64).clone()  # a copy: the row offsets are added in place
    if any(offsets):
        tok += torch.repeat_interleave(torch.tensor(offsets), torch.tensor(lengths))
    cnt = torch.frombuffer(counts, dtype=torch.int64).to(torch.float32)
    return tok.to(dev), cnt.to(dev)


def _merge(h: torch.Tensor, e: torch.Tensor, sentinel: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted union of h and e, slot in it of each h, slot of each e); h ascending and distinct."""
    eu, einv = _unique(e, sentinel)
    n = h.numel()
    pos = torch.searchsorted(h, eu)  # [U] first h >= eu
    found = pos < n
    found[found.clone()] = h[pos[found]] == eu[found]
    new = eu[~found]  # [K] ids not in h
    hslot = torch.arange(n, device=h.device) + torch.searchsorted(new, h)
    nslot = torch.arange(new.numel(), device=h.device) + torch.searchsorted(h, new)
    uniq = torch.empty(n + new.numel(), dtype=h.dtype, device=h.device)
    uniq[hslot], uniq[nslot] = h, new
    euslot = torch.empty_like(eu)
    euslot[found], euslot[~found] = hslot[pos[found]], nslot
    return uniq, hslot, euslot[einv]


def _unique(keys: torch.Tensor, sentinel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.unique(keys, return_inverse=True), padded onto torch's radix sort when that is faster."""
    n = keys.numel()
    if n * 8 < RADIX_MIN or n >= RADIX_MIN:
        uniq, inv = torch.unique(keys, return_inverse=True)
        return uniq, inv
    pad = torch.full((RADIX_MIN - n,), sentinel, dtype=keys.dtype, device=keys.device)
    uniq, inv = torch.unique(torch.cat([keys, pad]), return_inverse=True)
    return uniq[:-1], inv[:n]


def _row_params(params: Sequence[SamplingParams], rows: torch.Tensor) -> torch.Tensor:
    """float32 [M, 3] (repetition, frequency, presence penalty) of the row of each position."""
    vals = [(p.repetition_penalty, p.frequency_penalty, p.presence_penalty) for p in params]
    return torch.tensor(vals, dtype=torch.float32, device=rows.device)[rows]


def _new_values(
    x: torch.Tensor,
    uniq: torch.Tensor,
    rep: torch.Tensor | None,
    cnt: torch.Tensor,
    b: torch.Tensor | None,
    sup: torch.Tensor | None,
    params: Sequence[SamplingParams],
    width: int,
) -> torch.Tensor:
    """float32 [M] edited values of the positions `uniq`, given per position: repetition-penalised
    [M] bool (None: all), output count [M] float32, summed bias [M] float32 (None: none),
    suppressed [M] bool (None: none)."""
    rows = uniq // width
    val = x.view(-1)[uniq]  # [M]
    pen, freq, presence = _row_params(params, rows).unbind(1)  # [M] each
    penalised = torch.where(val < 0, val * pen, val / pen)
    val = penalised if rep is None else torch.where(rep, penalised, val)
    val = val - freq * cnt
    val = val - presence * (cnt > 0).float()
    val = val + (0.0 if b is None else b)  # adding 0 also makes -0.0 +0.0, as the list path's zero bias does
    val = val.clamp(max=FLOAT_MAX)  # an overflow to +inf stays the largest value
    return val if sup is None else val.masked_fill(sup, float("-inf"))
