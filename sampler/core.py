"""sample(): one token per row, vectorised over rows of any parameters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import one_row
from .blocks import BLOCK, NEG_INF, ProcessedLogits, first_argmax, prepare
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


class DrawnTokens:
    """Per-row results being filled in by the row groups."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens.clone()  # int64 [B]
        self.processed_logprobs = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)

    def put(self, rows: torch.Tensor, tokens: torch.Tensor, token_weight: torch.Tensor, total: torch.Tensor) -> None:
        self.tokens[rows] = tokens
        self.processed_logprobs[rows] = (token_weight.to(torch.float64).log() - total.log()).to(torch.float32)

    def put_one(self, token: int, token_weight: float, total: float) -> None:
        """put() for the only row: token_weight a float32 value, total a float64 one (the same ops on [1] tensors)."""
        self.tokens = torch.tensor([token])
        w, z = torch.tensor([token_weight], dtype=torch.float64), torch.tensor([total], dtype=torch.float64)
        self.processed_logprobs = (w.log() - z.log()).to(torch.float32)


def sample(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    steps: Sequence[int] | torch.Tensor,
    *,
    histories: Sequence[TokenHistory | None] | None = None,
    sample_indices: Sequence[int] | None = None,
    suppress_token_ids: Sequence[Sequence[int]] | None = None,
    top_n: int = 0,
) -> SampleResult:
    """Sample one token per row of logits [B, V]; see the package docstring for the semantics.

    histories: a TokenHistory per row (None for a row without), the prompt and the output so far that
    the penalties read, kept up to date by the caller token by token, so a step sorts nothing; None
    when no row has one. Suppressed id rows may be lists, tuples, int64 tensors or arrays (an int64
    array.array("q") is read without a Python loop).
    """
    batch, vocab = _check(logits, params, steps, sample_indices, top_n)
    device = logits.device
    if batch == 0 or vocab == 0:
        return _empty(batch, min(top_n, vocab), device)
    config = RowConfig.build(params, vocab, device)
    u = _uniforms(params, steps, sample_indices, batch, device)
    x, raw_block_max, raw_max = prepare(logits)
    processed = ProcessedLogits(
        x,
        raw_block_max,
        raw_max,
        edits(x, vocab, params, histories, suppress_token_ids),
    )
    if processed.patch_map is not None and bool((processed.row_max == NEG_INF).any()):
        processed.drop_edits((processed.row_max == NEG_INF).nonzero()[:, 0])
    probs = torch.softmax(x, -1)  # [B, Vp] raw distribution
    all_rows = torch.arange(batch, device=device)
    nb = raw_block_max.shape[1]
    raw_argmax = first_argmax(raw_block_max, raw_max, lambda b: processed.block_rows(all_rows * nb + b))
    argmax = (
        raw_argmax
        if processed.patch_map is None
        else first_argmax(processed.block_max, processed.row_max, lambda b: processed.blocks(all_rows, b))
    )
    out = DrawnTokens(argmax)
    lse = raw_max - probs.gather(1, raw_argmax[:, None])[:, 0].log()  # [B] logsumexp of the raw row
    weights = Weights(processed, config, probs, raw_max, lse)
    total = None if weights.sums is None else chunk_total(weights.sums)  # [B] float64 full-row mass
    if config.support:
        assert weights.sums is not None, "support rows are full rows"  # Weights fills sums when any row is full
        rows = torch.tensor(config.support, device=device)
        c, j, token_weight, mass = inverse_cdf(weights.sums[rows], u[rows], lambda cc: weights.chunk(rows, cc))
        out.put(rows, c * BLOCK + j, token_weight, mass)
    if config.trunc and not (
        batch == 1 and one_row.draw(processed, config, weights, params[0], vocab, total, float(u[0]), out)
    ):
        rows = torch.tensor(config.trunc, device=device)
        trunc_total = None if total is None else total[rows]
        sample_truncated(
            processed,
            config,
            weights,
            rows,
            thresholds(processed, config, weights, rows, argmax, trunc_total),
            trunc_total,
            u,
            out,
        )
    logprobs = x.gather(1, out.tokens[:, None])[:, 0] - lse
    top_token_ids, top_logprobs = _top_alternatives(processed, raw_block_max, lse, min(top_n, vocab))
    return SampleResult(out.tokens, logprobs, out.processed_logprobs, top_token_ids, top_logprobs)


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
    device: torch.device,
) -> torch.Tensor:
    step_list = steps.tolist() if isinstance(steps, torch.Tensor) else list(steps)
    indices = [0] * batch if sample_indices is None else list(sample_indices)
    return uniforms_for([p.seed for p in params], indices, step_list, device)


def _empty(batch: int, top_n: int, device: torch.device) -> SampleResult:
    if batch:
        raise ValueError("logits must have at least one token per row")

    def z(dtype: torch.dtype, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype, device=device)

    return SampleResult(
        z(torch.int64, 0),
        z(torch.float32, 0),
        z(torch.float32, 0),
        z(torch.int64, 0, top_n),
        z(torch.float32, 0, top_n),
    )


def _top_alternatives(
    processed: ProcessedLogits, raw_block_max: torch.Tensor, lse: torch.Tensor, top_n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = raw_block_max.shape[0]
    device = raw_block_max.device
    if top_n == 0:
        return (
            torch.zeros((batch, 0), dtype=torch.int64, device=device),
            torch.zeros((batch, 0), dtype=torch.float32, device=device),
        )
    theta = kth_threshold(raw_block_max, raw_block_max.amax(-1), torch.full((batch,), top_n, device=device))
    nb = raw_block_max.shape[1]
    candidates = extract(lambda r, b: processed.block_rows(r * nb + b), raw_block_max, theta)
    return candidates.token[:, :top_n], candidates.value[:, :top_n] - lse[:, None]
