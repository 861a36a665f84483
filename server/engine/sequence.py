"""One sequence's state inside the engine, and the packed rows of one step."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Optional, Sequence

from .detokenizer import IncrementalText
from .kv_cache import SequenceKVCache
from .model import Segment
from .prefix_cache import BLOCK_TOKENS, chain_hashes
from .types import FinishReason, GenerationChunk, GenerationRequest, NotReady, ScoreResult, TopLogprob


class Sequence_:
    """A request being served: prompt, generated tokens, cache, and its outbox to the caller.

    A generation has a `request`; a scoring sequence has none and only wants
    the logprobs of its prompt from `score_from` on. The engine thread mutates
    it; the caller's event loop only reads `outbox` and sets `cancelled`.
    """

    def __init__(self, prompt: Sequence[int], request: Optional[GenerationRequest], cache: SequenceKVCache,
                 tokenizer, loop: asyncio.AbstractEventLoop, score_from: Optional[int] = None):
        self.request = request
        self.prompt = list(prompt)
        # Tokens the caller already holds (a resumed stream): prefilled after the prompt, each one
        # checked against what the seed produces, then generation goes on at step len(resume_ids).
        self.resume_ids = list(request.resume_token_ids) if request is not None else []
        self.prefill_ids = self.prompt + self.resume_ids  # what the prefill computes
        self.prompt_key = hash(tuple(self.prefill_ids))  # to find other sequences with the same prompt
        self.cached_tokens = 0  # prefill positions copied from the prefix cache
        self._block_hashes: Optional[list[bytes]] = None
        self.output_ids: list[int] = []
        self.cache = cache
        self.tokenizer = tokenizer
        self.text = IncrementalText(tokenizer, request.stop if request else ())
        self.loop = loop
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.prefilled = 0  # prompt tokens already in the cache
        self.score_from = score_from  # first prompt position whose logprob is wanted, or None
        self.prompt_logprobs: list[float] = []  # for positions score_from.. as they are computed
        self.prompt_greedy: list[int] = []
        self.prompt_top: list[tuple[list[int], list[float]]] = []  # (ids, logprobs) when top_logprobs > 0
        self.cancelled = False
        self.finished = False
        self.created = time.monotonic()

    def block_hashes(self) -> list[bytes]:
        if self._block_hashes is None:
            self._block_hashes = chain_hashes(self.prefill_ids, len(self.prefill_ids) // BLOCK_TOKENS)
        return self._block_hashes

    def reuse_limit(self) -> int:
        """Prefill positions that may come from the prefix cache: every row whose logits are needed
        (the first sampled row, scored rows, resumed rows to check) is computed."""
        limit = len(self.prefill_ids) - 1
        if self.score_from is not None:
            limit = min(limit, self.score_from - 1)
        if self.resume_ids:
            limit = min(limit, len(self.prompt) - 1)
        return limit

    def resume_positions(self, start: int, end: int) -> range:
        """Rows p of the chunk [start, end) whose logits sample resumed token p - len(prompt) + 1."""
        if not self.resume_ids:
            return range(0)
        first = len(self.prompt) - 1
        return range(max(start, first), min(end, first + len(self.resume_ids)))

    def start_after_resume(self) -> Optional[str]:
        """The checked resumed tokens become the output so far; None, or why the stream could not go on."""
        self.output_ids = list(self.resume_ids)
        for i, token in enumerate(self.resume_ids):
            self.text.add(token, check_stop=i + 1 >= self.request.min_new_tokens)
            if self.text.stopped_at is not None:
                return f"resume_token_ids[{i}]: a stop string ends the stream there; a finished stream cannot be resumed"
        return None

    def score_positions(self, start: int, end: int) -> range:
        """Rows p of the chunk [start, end) whose logits score prompt token p + 1."""
        if self.score_from is None:
            return range(0)
        return range(max(start, self.score_from - 1), min(end, len(self.prompt) - 1))

    def finish_scoring(self) -> None:
        self.finished = True
        self._post(ScoreResult(tuple(self.prompt_logprobs), tuple(self.prompt_greedy),
                               self.prompt_greedy == self.prompt[self.score_from:], self.cached_tokens))

    @property
    def prefill_done(self) -> bool:
        return self.prefilled >= len(self.prefill_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output_ids)

    def suppressed_ids(self, eos_ids: frozenset[int]) -> list[int]:
        """Tokens that may not be sampled yet: EOS and stop tokens before min_new_tokens."""
        if len(self.output_ids) >= self.request.min_new_tokens:
            return []
        ids = set(self.request.stop_token_ids)
        if not self.request.ignore_eos:
            ids |= eos_ids
        return sorted(ids)

    def accept(self, token_id: int, logprob: float, top_ids: list[int], top_lps: list[float],
               eos_ids: frozenset[int], max_context: int) -> None:
        """Append a sampled token, apply the stop conditions and emit a chunk."""
        req = self.request
        self.output_ids.append(token_id)
        finish = None
        text = ""
        if token_id in req.stop_token_ids:
            finish = FinishReason.STOP_TOKEN
        elif token_id in eos_ids and not req.ignore_eos:
            finish = FinishReason.EOS
        else:
            text = self.text.add(token_id, check_stop=len(self.output_ids) >= req.min_new_tokens)
            if self.text.stopped_at is not None:
                finish = FinishReason.STOP_STRING
        if finish is None and (len(self.output_ids) >= req.max_new_tokens or self.num_tokens >= max_context):
            finish = FinishReason.LENGTH
        if finish is not None:
            text += self.text.finish()
        top = [TopLogprob(t, self.tokenizer.decode([t]), lp) for t, lp in zip(top_ids[: req.top_logprobs], top_lps)]
        chunk = GenerationChunk(
            token_ids=[token_id],
            text=text,
            logprobs=[logprob],
            top_logprobs=[top] if req.top_logprobs else [],
            finish_reason=finish,
            prompt_tokens=len(self.prompt),
            completion_tokens=len(self.output_ids),
            cached_tokens=self.cached_tokens,
        )
        if req.prompt_logprobs and len(self.output_ids) == 1 and not self.resume_ids:
            chunk.prompt_logprobs = [None] + self.prompt_logprobs
            if req.top_logprobs:
                chunk.prompt_top_logprobs = [None] + [
                    [TopLogprob(t, self.tokenizer.decode([t]), lp) for t, lp in zip(ids[: req.top_logprobs], lps)]
                    for ids, lps in self.prompt_top
                ]
        if finish is not None:
            self.finished = True
        self._post(chunk)

    def finish_cancelled(self) -> None:
        if self.request is None:  # a score has no partial result: its caller gets an error instead
            self.fail(NotReady("cancelled by the server (shutting down)"))
            return
        self.finished = True
        self._post(GenerationChunk([], "", [], finish_reason=FinishReason.CANCELLED,
                                   prompt_tokens=len(self.prompt), completion_tokens=len(self.output_ids)))

    def fail(self, error: BaseException) -> None:
        self.finished = True
        self._post(error)

    def _post(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.outbox.put_nowait, item)
        except RuntimeError:  # the caller's event loop is gone
            self.cancelled = True


@dataclasses.dataclass
class StepBatch:
    """Packed rows of one forward step, and which rows' logits are sampled or scored."""

    token_ids: list[int] = dataclasses.field(default_factory=list)
    positions: list[int] = dataclasses.field(default_factory=list)
    segments: list[Segment] = dataclasses.field(default_factory=list)
    logit_rows: list[int] = dataclasses.field(default_factory=list)  # packed row -> logits row
    sampled: list[Sequence_] = dataclasses.field(default_factory=list)
    sample_rows: list[int] = dataclasses.field(default_factory=list)  # index into logits, per sampled seq
    scored: list[Sequence_] = dataclasses.field(default_factory=list)  # one entry per scored row
    score_rows: list[int] = dataclasses.field(default_factory=list)
    score_targets: list[int] = dataclasses.field(default_factory=list)
    decode_rows: int = 0  # the first rows: one decode token per sequence (the model's column path)
    forks: list[tuple[Sequence_, Sequence_]] = dataclasses.field(default_factory=list)  # (donor, child)
    # Resumed tokens to check: (sequence, index into logits, index into its resume_ids).
    checks: list[tuple[Sequence_, int, int]] = dataclasses.field(default_factory=list)
    prefilled: list[Sequence_] = dataclasses.field(default_factory=list)  # sequences with a prefill chunk
    prefill_tokens: int = 0  # prompt tokens computed this step

    def add(self, seq: Sequence_, tokens: list[int], start: int, score: range = range(0), sample: bool = False,
            check: range = range(0)) -> None:
        first_row = len(self.token_ids)
        self.segments.append(Segment(seq.cache, start, len(tokens)))
        self.token_ids.extend(tokens)
        self.positions.extend(range(start, start + len(tokens)))
        for pos in score:
            self.score_rows.append(len(self.logit_rows))
            self.logit_rows.append(first_row + pos - start)
            self.scored.append(seq)
            self.score_targets.append(seq.prompt[pos + 1])
        for pos in check:
            self.checks.append((seq, len(self.logit_rows), pos - len(seq.prompt) + 1))
            self.logit_rows.append(first_row + pos - start)
        if sample:
            self.sample_rows.append(len(self.logit_rows))
            self.logit_rows.append(len(self.token_ids) - 1)
            self.sampled.append(seq)

    def fork(self, donor: Sequence_, child: Sequence_) -> None:
        """`child` has `donor`'s prompt: it takes the donor's cache after this step's forward and
        samples its first token from the donor's last logits row (donor must be the last add())."""
        self.forks.append((donor, child))
        child.prefilled = len(child.prompt)
        self.sample_rows.append(self.sample_rows[self.sampled.index(donor)])
        self.sampled.append(child)
