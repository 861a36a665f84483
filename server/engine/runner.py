"""The runner: one planned step through the model, then the scoring and sampling of its logits rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from seedstream.sampler import TokenHistory, sample

from .model import Segment
from .prefix_cache import PrefixCache
from .scheduler import StepBatch
from .sequence import SequenceKind
from .types import ParamError


class ModelRunner:
    """Runs StepBatches on the model; each sequence gets its rows' results (tokens, logprobs, KV)."""

    def __init__(self, model, device: torch.device, prefix_cache: PrefixCache):
        self.model = model
        self.device = device
        self.prefix_cache = prefix_cache
        self.prefill_tokens = 0  # prompt tokens computed so far (shared prefills count once)
        self.draft_tokens = 0  # tokens drafted by speculation so far
        self.accepted_tokens = 0  # of those, the ones the seeded sampler drew too (kept)

    def run(self, batch: StepBatch) -> None:
        """The forward pass over the batch's rows, then what each sequence asked of its logits rows."""
        logits = self.model.forward(
            torch.tensor(batch.token_ids, device=self.device),
            torch.tensor(batch.positions, device=self.device),
            [Segment(seq.cache, start, length) for seq, start, length in batch.runs],
            torch.tensor(batch.logit_rows, device=self.device, dtype=torch.long),
            batch.decode_rows,
        )
        for donor, child in batch.forks:  # after the forward: the donor's cache holds the prompt
            child.cache.copy_from(donor.cache)
        self.prefill_tokens += batch.prefill_tokens
        for seq in batch.prefilled:
            self.prefix_cache.store(seq.prefill_ids, seq.block_hashes(), seq.cache, seq.prefilled)
        if batch.checks:
            check_resumed(logits, batch.checks)
        for seq in batch.sampled:
            if seq.resume_ids and not seq.output_ids and not seq.finished:
                problem = seq.start_after_resume()
                if problem is not None:
                    seq.fail(ParamError("resume_token_ids", problem))
        if batch.scored:
            self._score(logits, batch)
        if batch.sampled:
            self._sample_and_emit(logits, batch)

    def _score(self, logits: torch.Tensor, batch: StepBatch) -> None:
        rows = logits[batch.score_rows]  # [S, V]
        logprobs = torch.log_softmax(rows, dim=-1)
        targets = torch.tensor(batch.score_targets, device=rows.device)
        chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
        greedy = rows.argmax(dim=-1).tolist()  # first maximum: lowest token id on ties
        # Echo with top_logprobs (the OpenAI completions form) also wants the prompt's top alternatives.
        generations = [s for s in batch.scored if s.kind is SequenceKind.GENERATE]
        top_n = max((s.request.top_logprobs for s in generations), default=0)
        top = logprobs.topk(top_n, dim=-1) if top_n else None
        for i, (seq, lp, g) in enumerate(zip(batch.scored, chosen, greedy)):
            seq.prompt_logprobs.append(lp)
            seq.prompt_greedy.append(g)
            if top is not None and seq.kind is SequenceKind.GENERATE and seq.request.top_logprobs:
                seq.prompt_top.append((top.indices[i].tolist(), top.values[i].tolist()))

    def _sample_and_emit(self, logits: torch.Tensor, batch: StepBatch) -> None:
        """Sample every sampled row, each at its own step; a drafted token is kept while the row
        before it samples exactly that token, and the first row that samples another ends the run."""
        keep = [i for i, s in enumerate(batch.sampled) if not s.finished]  # a failed resume check
        if not keep:
            return
        rows = _SampledRows(batch, keep)
        result = sample(
            _rows_of(logits, rows.logit_rows),
            [s.request.sampling for s in rows.seqs],
            rows.steps,
            histories=rows.histories if rows.penalties else None,
            sample_indices=[s.request.sample_index for s in rows.seqs],
            suppress_token_ids=[s.stop.suppressed_ids(step) for s, step in zip(rows.seqs, rows.steps)],
            top_n=max(s.request.top_logprobs for s in rows.seqs),
        )
        token_ids = result.token_ids.tolist()
        logprobs = result.logprobs.tolist()
        if any(s.request.logprobs_mode == "processed" for s in rows.seqs):
            processed = result.processed_logprobs.tolist()
            logprobs = [
                p if s.request.logprobs_mode == "processed" else r for s, r, p in zip(rows.seqs, logprobs, processed)
            ]
        top_ids = result.top_token_ids.tolist()
        top_lps = result.top_logprobs.tolist()
        r = 0
        for i in keep:
            seq, draft = batch.sampled[i], batch.drafts[i]
            for j in range(len(draft) + 1):
                token = token_ids[r + j]
                seq.accept(token, logprobs[r + j], top_ids[r + j], top_lps[r + j])
                if seq.finished or j == len(draft) or token != draft[j]:
                    break
            seq.observe_draft(token_ids[r : r + j + 1])
            if draft:
                self.draft_tokens += len(draft)
                self.accepted_tokens += j + (j < len(draft) and token == draft[j])
                seq.cache.length = seq.num_tokens - 1  # the rows after the last kept token are stale
            r += len(draft) + 1


class _SampledRows:
    """The rows one sample() call draws, flattened: each kept sequence's decode row, then its draft rows."""

    def __init__(self, batch: StepBatch, keep: Sequence[int]):
        self.logit_rows: list[int] = []
        self.seqs: list = []
        self.steps: list[int] = []
        self.histories: list[TokenHistory] = []  # prompt and output before each row's step (for penalties)
        self.penalties = any(_uses_penalties(batch.sampled[i].request.sampling) for i in keep)
        for i in keep:
            seq, draft = batch.sampled[i], batch.drafts[i]
            for j in range(len(draft) + 1):
                self.logit_rows.append(batch.sample_rows[i] + j)
                self.seqs.append(seq)
                self.steps.append(len(seq.output_ids) + j)
                if self.penalties:
                    history = seq.penalty_history()
                    self.histories.append(history.with_output(draft[:j]) if j else history)


def check_resumed(logits: torch.Tensor, checks: Sequence[tuple]) -> None:
    """Sample each checked row at its own step and fail a sequence at its first token that differs
    (resume.py says why this holds a resumed stream to its seed).

    checks: (sequence, row of `logits`, index i into its resume_ids), rows sampled as step i.
    """
    seqs = [seq for seq, _, _ in checks]
    steps = [i for _, _, i in checks]
    histories: list[TokenHistory] | None = None
    if any(_uses_penalties(seq.request.sampling) for seq in seqs):
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
        [seq.request.sampling for seq in seqs],
        steps,
        histories=histories,
        sample_indices=[seq.request.sample_index for seq in seqs],
        suppress_token_ids=[seq.stop.suppressed_ids(i) for seq, i in zip(seqs, steps)],
    )
    for seq, i, token in zip(seqs, steps, result.token_ids.tolist()):
        if not seq.finished and token != seq.resume_ids[i]:
            seq.fail(
                ParamError(
                    "resume_token_ids",
                    (
                        f"resume_token_ids[{i}] = {seq.resume_ids[i]}, but this request's stream has {token} there "
                        "(same prompt, sampling settings, seed and sample_index are needed to resume)"
                    ),
                )
            )


def _rows_of(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """logits[rows]; consecutive rows (one stream's decode row and its drafts) as a view, where indexing
    with a list copies (tens of microseconds even for one row; the sampler never writes into its input)."""
    if rows and rows == list(range(rows[0], rows[0] + len(rows))):
        return logits[rows[0] : rows[0] + len(rows)]
    return logits[rows]


def _uses_penalties(params) -> bool:
    return params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
