"""The runner: executes a StepPlan (KV copies, the forward pass, scoring and sampling) into a StepResult.

It changes KV caches (the sequences' and the prefix cache's), its own counters and the memo of each sampled
sequence's penalty history (EngineSequence.penalty_history), never what a sequence holds: apply.apply_step
changes that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from seedstream.sampler import SamplingParams, TokenHistory, sample

from .forward import ForwardModel
from .model import Segment
from .prefix_cache import PrefixCache
from .sequence import EngineSequence, SequenceKind
from .speculation import drafted_kept
from .step import Check, Sample, SampledTokens, Score, ScoredToken, StepPlan, StepResult
from .types import GenerationRequest


class ModelRunner:
    """Runs StepPlans on the model and returns what each logits row gave."""

    def __init__(self, model: ForwardModel, device: torch.device, prefix_cache: PrefixCache):
        self.model = model
        self.device = device
        self.prefix_cache = prefix_cache
        self.prefill_tokens = 0  # prompt tokens computed so far (shared prefills count once)

    def execute(self, plan: StepPlan) -> StepResult:
        """Copy the planned prefix KV, run the forward pass over the plan's rows, then score and sample."""
        for seq, start, end in plan.kv_copies:
            self.prefix_cache.copy_into(seq.cache, seq.block_hashes, start, end)
            self.prefix_cache.count(end - start, 0)
        if not plan.runs:
            return StepResult()
        logits = self.model.forward(
            torch.tensor(plan.token_ids, device=self.device),
            torch.tensor(plan.positions, device=self.device),
            [Segment(seq.cache, start, length) for seq, start, length in plan.runs],
            torch.tensor(plan.logit_rows, device=self.device, dtype=torch.long),
        )
        for donor, child in plan.forks:  # after the forward: the donor's cache holds the prompt
            child.cache.copy_from(donor.cache)
        for seq, start, end in plan.prefills:
            self.prefix_cache.store(seq.prefill_ids, seq.block_hashes, seq.cache, end)
            self.prefix_cache.count(0, end - start)
        self.prefill_tokens += plan.prefill_tokens
        checks = tuple(check_resumed(logits, plan.checks)) if plan.checks else ()
        scores = _score(logits, plan.scores) if plan.scores else ()
        samples = _sample(logits, plan.samples) if plan.samples else ()
        for (seq, _, draft), tokens in zip(plan.samples, samples):
            if draft:  # the rows after the first token that differs from the draft are stale
                # The positions before the decode row, the decode row, and each draft row whose token stands.
                seq.cache.length = seq.num_tokens + drafted_kept(draft, tokens.token_ids)
        return StepResult(samples, scores, checks)


def _score(logits: torch.Tensor, scores: Sequence[Score]) -> tuple[ScoredToken, ...]:
    """Each scored row's raw logprob of its target, its argmax, and top alternatives where asked."""
    rows = logits[[row for _, row, _ in scores]]  # [S, V]
    logprobs = torch.log_softmax(rows, dim=-1)
    targets = torch.tensor([target for _, _, target in scores], device=rows.device)
    chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
    greedy = rows.argmax(dim=-1).tolist()  # first maximum: lowest token id on ties
    # Echo with top_logprobs (the OpenAI completions form) also wants the prompt's top alternatives.
    top_n = max((_top_logprobs(seq) for seq, _, _ in scores), default=0)
    top = logprobs.topk(top_n, dim=-1) if top_n else None
    out = []
    for i, ((seq, _, _), lp, g) in enumerate(zip(scores, chosen, greedy)):
        alternatives = None
        if top is not None and _top_logprobs(seq):
            alternatives = (tuple(top.indices[i].tolist()), tuple(top.values[i].tolist()))
        out.append(ScoredToken(lp, g, alternatives))
    return tuple(out)


def _top_logprobs(seq: EngineSequence) -> int:
    return seq.request.top_logprobs if seq.kind is SequenceKind.GENERATE and seq.request is not None else 0


def _sample(logits: torch.Tensor, samples: Sequence[Sample]) -> tuple[SampledTokens, ...]:
    """Sample every row of every Sample, each at its own step (a draft row at the step after the row before)."""
    rows = _SampledRows(samples)
    result = sample(
        _rows_of(logits, rows.logit_rows),
        [r.sampling for r in rows.requests],
        rows.steps,
        histories=rows.histories if rows.penalties else None,
        sample_indices=[r.sample_index for r in rows.requests],
        suppress_token_ids=rows.suppressed,
        top_n=max(r.top_logprobs for r in rows.requests),
    )
    token_ids = result.token_ids.tolist()
    logprobs = result.logprobs.tolist()
    if any(r.logprobs_mode == "processed" for r in rows.requests):
        processed = result.processed_logprobs.tolist()
        modes = [r.logprobs_mode for r in rows.requests]
        logprobs = [p if mode == "processed" else raw for mode, raw, p in zip(modes, logprobs, processed)]
    top_ids = [tuple(ids) for ids in result.top_token_ids.tolist()]
    top_lps = [tuple(lps) for lps in result.top_logprobs.tolist()]
    out, r = [], 0
    for _, _, draft in samples:
        end = r + len(draft) + 1
        out.append(
            SampledTokens(tuple(token_ids[r:end]), tuple(logprobs[r:end]), tuple(top_ids[r:end]), tuple(top_lps[r:end]))
        )
        r = end
    return tuple(out)


class _SampledRows:
    """The rows one sample() call draws, flattened: each Sample's decode row, then its draft rows."""

    def __init__(self, samples: Sequence[Sample]):
        self.logit_rows: list[int] = []
        self.requests: list[GenerationRequest] = []
        self.steps: list[int] = []
        self.suppressed: list[Sequence[int]] = []
        self.histories: list[TokenHistory] = []  # prompt and stream before each row's step (for penalties)
        self.penalties = any(seq.request and _uses_penalties(seq.request.sampling) for seq, _, _ in samples)
        for seq, row, draft in samples:
            request, stop = seq.request, seq.stop
            assert request is not None and stop is not None  # only a generation samples
            before = len(seq.stream_so_far())  # tokens before this step: the decode row samples step `before`
            for j in range(len(draft) + 1):
                self.logit_rows.append(row + j)
                self.requests.append(request)
                self.steps.append(before + j)
                self.suppressed.append(stop.suppressed_ids(before + j))
                if self.penalties:
                    history = seq.penalty_history()
                    self.histories.append(history.with_output(draft[:j]) if j else history)


def check_resumed(logits: torch.Tensor, checks: Sequence[Check]) -> list[int]:
    """Sample each checked row at its own step: the tokens the seed gives there, which apply.apply_step
    compares with the held ones (resume.py says why this holds a resumed stream to its seed).

    checks: (sequence, row of `logits`, index i into its resume_ids), rows sampled as step i.
    """
    seqs = [seq for seq, _, _ in checks]
    steps = [i for _, _, i in checks]
    parts = [seq.generation_parts() for seq in seqs]  # (request, stop rules, codec): resumed streams generate
    histories: list[TokenHistory] | None = None
    if any(_uses_penalties(request.sampling) for request, _, _ in parts):
        # Row i reads the prompt and resume_ids[:i]: one history per sequence, grown along its checks
        # (ascending i) and copied at each, so a long resumed stream is not re-sorted for every row.
        grown: dict[int, tuple[int, TokenHistory]] = {}
        histories = []
        for seq, i in zip(seqs, steps):
            seen, history = grown.get(id(seq), (0, None))
            if history is None or seen > i:
                seen, history = 0, TokenHistory(seq.prompt)
            history = history.with_output(seq.resume_ids[seen:i])
            grown[id(seq)] = (i, history)
            histories.append(history)
    result = sample(
        logits[[row for _, row, _ in checks]],
        [request.sampling for request, _, _ in parts],
        steps,
        histories=histories,
        sample_indices=[request.sample_index for request, _, _ in parts],
        suppress_token_ids=[stop.suppressed_ids(i) for (_, stop, _), i in zip(parts, steps)],
    )
    return list(result.token_ids.tolist())


def _rows_of(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """logits[rows]; consecutive rows (one stream's decode row and its drafts) as a view, where indexing
    with a list copies (tens of microseconds even for one row; the sampler never writes into its input)."""
    if rows and rows == list(range(rows[0], rows[0] + len(rows))):
        return logits[rows[0] : rows[0] + len(rows)]
    return logits[rows]


def _uses_penalties(params: SamplingParams) -> bool:
    return params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
