"""sample(): one token per row, vectorised over rows of any parameters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import one_row
from .blocks import BLOCK, NEG_INF, Processed, first_argmax, prepare
from .chunks import chunk_total, inverse_cdf
from .history import TokenHistory
from .params import SamplingParams
from .penalties import edits
from .rng import uniforms_for
from .rows import RowConfig, kth_threshold
from .select import extract
from .truncate import sample_truncated, thresholds
from .weights import Weights

MAX_TOP_N = 20


@dataclass
class SampleResult:
    """What sample() returns; every tensor is on the logits' device."""

    token_ids: torch.Tensor  # int64 [B]
    logprobs: torch.Tensor  # float32 [B] log_softmax of the raw logits at the chosen token
    processed_logprobs: torch.Tensor  # float32 [B] log-prob under the processed distribution (0 greedy)
    top_token_ids: torch.Tensor  # int64 [B, top_n] raw distribution, probability desc then id asc
    top_logprobs: torch.Tensor  # float32 [B, top_n]


class _Out:
    """Per-row results being filled in by the row groups."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens.clone()  # int64 [B]
        self.plp = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)

    def put(self, rows: torch.Tensor, tokens: torch.Tensor, w_tok: torch.Tensor, total: torch.Tensor) -> None:
        self.tokens[rows] = tokens
        self.plp[rows] = (w_tok.to(torch.float64).log() - total.log()).to(torch.float32)

    def put_one(self, token: int, w_tok: float, total: float) -> None:
        """put() for the only row: w_tok a float32 value, total a float64 one (the same ops on [1] tensors)."""
        self.tokens = torch.tensor([token])
        w, z = torch.tensor([w_tok], dtype=torch.float64), torch.tensor([total], dtype=torch.float64)
        self.plp = (w.log() - z.log()).to(torch.float32)


def sample(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    steps: Sequence[int] | torch.Tensor,
    *,
    prompt_token_ids: Sequence[Sequence[int]] | None = None,
    output_token_ids: Sequence[Sequence[int]] | None = None,
    sample_indices: Sequence[int] | None = None,
    suppress_token_ids: Sequence[Sequence[int]] | None = None,
    histories: Sequence[TokenHistory | None] | None = None,
    top_n: int = 0,
) -> SampleResult:
    """Sample one token per row of logits [B, V]; see the package docstring for the semantics.

    Id rows may be lists, tuples, int64 tensors or arrays; an int64 array (array.array("q")) is read
    without a Python loop, so a caller that keeps long histories as arrays pays little per step.
    `histories` (a TokenHistory per row, kept up to date by the caller) gives the penalties the same
    prompt and output in a form that costs no sort per step; it replaces prompt_token_ids and
    output_token_ids.
    """
    batch, vocab = _check(logits, params, steps, sample_indices, top_n)
    if histories is not None and (prompt_token_ids is not None or output_token_ids is not None):
        raise ValueError("give histories or prompt_token_ids/output_token_ids, not both")
    dev = logits.device
    if batch == 0 or vocab == 0:
        return _empty(batch, min(top_n, vocab), dev)
    cfg = RowConfig.build(params, vocab, dev)
    u = _uniforms(params, steps, sample_indices, batch, dev)
    x, bm_raw, m_raw = prepare(logits)
    proc = Processed(
        x, bm_raw, m_raw, edits(x, vocab, params, prompt_token_ids, output_token_ids, suppress_token_ids, histories)
    )
    if proc.patch_map is not None and bool((proc.m == NEG_INF).any()):
        proc.drop_edits((proc.m == NEG_INF).nonzero()[:, 0])
    probs = torch.softmax(x, -1)  # [B, Vp] raw distribution
    all_rows = torch.arange(batch, device=dev)
    nb = bm_raw.shape[1]
    arg_raw = first_argmax(bm_raw, m_raw, lambda b: proc.block_rows(all_rows * nb + b))
    arg = arg_raw if proc.patch_map is None else first_argmax(proc.bm, proc.m, lambda b: proc.blocks(all_rows, b))
    out = _Out(arg)
    lse = m_raw - probs.gather(1, arg_raw[:, None])[:, 0].log()  # [B] logsumexp of the raw row
    wts = Weights(proc, cfg, probs, m_raw, lse)
    total = None if wts.sums is None else chunk_total(wts.sums)  # [B] float64 full-row mass
    if cfg.support:
        assert wts.sums is not None, "support rows are full rows"  # Weights fills sums when any row is full
        rows = torch.tensor(cfg.support, device=dev)
        c, j, w_tok, mass = inverse_cdf(wts.sums[rows], u[rows], lambda cc: wts.chunk(rows, cc))
        out.put(rows, c * BLOCK + j, w_tok, mass)
    if cfg.trunc and not (batch == 1 and one_row.draw(proc, cfg, wts, params[0], vocab, total, float(u[0]), out)):
        rows = torch.tensor(cfg.trunc, device=dev)
        tot = None if total is None else total[rows]
        sample_truncated(proc, cfg, wts, rows, thresholds(proc, cfg, wts, rows, arg, tot), tot, u, out)
    logprobs = x.gather(1, out.tokens[:, None])[:, 0] - lse
    top_ids, top_lps = _top_alternatives(proc, bm_raw, lse, min(top_n, vocab))
    return SampleResult(out.tokens, logprobs, out.plp, top_ids, top_lps)


def _check(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    steps: Sequence[int] | torch.Tensor,
    sample_indices: Sequence[int] | None,
    top_n: int,
) -> tuple[int, int]:
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating [B, V] tensor, got {tuple(logits.shape)} {logits.dtype}")
    batch, vocab = logits.shape
    if len(params) != batch or len(steps) != batch:
        raise ValueError(
            f"need one params and one step per row: B={batch}, len(params)={len(params)}, len(steps)={len(steps)}"
        )
    if sample_indices is not None and len(sample_indices) != batch:
        raise ValueError(f"sample_indices has {len(sample_indices)} entries for B={batch}")
    if not 0 <= top_n <= MAX_TOP_N:
        raise ValueError(f"top_n={top_n!r} is out of range: allowed [0, {MAX_TOP_N}]")
    return batch, vocab


def _uniforms(
    params: Sequence[SamplingParams],
    steps: Sequence[int] | torch.Tensor,
    sample_indices: Sequence[int] | None,
    batch: int,
    dev: torch.device,
) -> torch.Tensor:
    step_list = steps.tolist() if isinstance(steps, torch.Tensor) else list(steps)
    idx = [0] * batch if sample_indices is None else list(sample_indices)
    return uniforms_for([p.seed for p in params], idx, step_list, dev)


def _empty(batch: int, top_n: int, dev: torch.device) -> SampleResult:
    if batch:
        raise ValueError("logits must have at least one token per row")

    def z(dtype: torch.dtype, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype, device=dev)

    return SampleResult(
        z(torch.int64, 0),
        z(torch.float32, 0),
        z(torch.float32, 0),
        z(torch.int64, 0, top_n),
        z(torch.float32, 0, top_n),
    )


def _top_alternatives(
    proc: Processed, bm_raw: torch.Tensor, lse: torch.Tensor, top_n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = bm_raw.shape[0]
    dev = bm_raw.device
    if top_n == 0:
        return (
            torch.zeros((batch, 0), dtype=torch.int64, device=dev),
            torch.zeros((batch, 0), dtype=torch.float32, device=dev),
        )
    theta = kth_threshold(bm_raw, bm_raw.amax(-1), torch.full((batch,), top_n, device=dev))
    nb = bm_raw.shape[1]
    cand = extract(lambda r, b: proc.block_rows(r * nb + b), bm_raw, theta)
    return cand.token[:, :top_n], cand.vals[:, :top_n] - lse[:, None]
