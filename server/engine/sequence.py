"""One sequence's state inside the engine: a generation or a score, from admission to its last result."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Sequence

from seedstream.sampler import TokenHistory

from .kv_cache import SequenceKVCache
from .prefix_cache import BLOCK_TOKENS, chain_hashes
from .speculation import NgramDrafter
from .stopping import StopCondition
from .text import IncrementalText, TextCodec
from .types import FinishReason, GenerationChunk, GenerationRequest, NotReady, ScoreRequest, ScoreResult, TopLogprob

Posted = GenerationChunk | ScoreResult | BaseException  # what a sequence's caller reads from its outbox


class SequenceKind(enum.Enum):
    GENERATE = "generate"  # samples tokens after its prompt and streams chunks
    SCORE = "score"  # only wants the logprobs of its prompt from score_from on; one ScoreResult


class EngineSequence:
    """A request being served: prompt, generated tokens, cache, and its outbox to the caller.

    A generation has its `request` and `stop` rules; a score has neither. The engine
    thread mutates it; the caller's event loop only reads `outbox` and sets `cancelled`.
    """

    def __init__(
        self,
        kind: SequenceKind,
        prompt: Sequence[int],
        cache: SequenceKVCache,
        loop: asyncio.AbstractEventLoop,
        request: GenerationRequest | None = None,
        score_from: int | None = None,
        codec: TextCodec | None = None,
        stop: StopCondition | None = None,
    ):
        self.kind = kind
        self.request = request
        self.client = request.client if request is not None else ""  # whose it is (admission sets it too)
        self.stop = stop
        self.codec = codec
        self.prompt = list(prompt)
        # Tokens the caller already holds (a resumed stream): prefilled after the prompt, each one
        # checked against what the seed produces, then generation goes on at step len(resume_ids).
        self.resume_ids = list(request.resume_token_ids) if request is not None else []
        self.prefill_ids = self.prompt + self.resume_ids  # what the prefill computes
        self.prompt_key = hash(tuple(self.prefill_ids))  # to find other sequences with the same prompt
        self.cached_tokens = 0  # prefill positions copied from the prefix cache
        # The prefix cache's key of each whole block (prefix_cache.chain_hashes), fixed with the prompt.
        self.block_hashes = chain_hashes(self.prefill_ids, len(self.prefill_ids) // BLOCK_TOKENS)
        self.output_ids: list[int] = []
        self._penalty_history: tuple[list[int], int, TokenHistory] | None = (
            None  # (output list, its length seen, history)
        )
        self.cache = cache
        self.loop = loop
        self.outbox: asyncio.Queue[Posted] = asyncio.Queue()
        self.prefilled = 0  # prompt tokens already in the cache
        self.score_from = score_from  # first prompt position whose logprob is wanted, or None
        self.prompt_logprobs: list[float] = []  # for positions score_from.. as they are computed
        self.prompt_greedy: list[int] = []
        self.prompt_top: list[tuple[list[int], list[float]]] = []  # (ids, logprobs) when top_logprobs > 0
        self.cancelled = False
        self.finished = False
        self.created = time.monotonic()
        self._drafter: NgramDrafter | None = None  # built at the first applied draft (speculative decoding only)

    @classmethod
    def generation(
        cls,
        request: GenerationRequest,
        cache: SequenceKVCache,
        loop: asyncio.AbstractEventLoop,
        codec: TextCodec,
        eos_token_ids: frozenset[int],
        max_context: int,
    ) -> EngineSequence:
        # A resumed stream already got its prompt logprobs with its first token.
        score_from = 1 if request.prompt_logprobs and not request.resume_token_ids else None
        stop = StopCondition(request, eos_token_ids, max_context, IncrementalText(codec, request.stop))
        return cls(SequenceKind.GENERATE, request.prompt_token_ids, cache, loop, request, score_from, codec, stop)

    @classmethod
    def scoring(cls, request: ScoreRequest, cache: SequenceKVCache, loop: asyncio.AbstractEventLoop) -> EngineSequence:
        prompt = request.context_ids + request.continuation_ids
        return cls(SequenceKind.SCORE, prompt, cache, loop, score_from=len(request.context_ids))

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

    def stream_so_far(self) -> list[int]:
        """The stream's tokens before this step's sample: the output, or before a resumed stream's first
        sample the resumed tokens (prefilled and checked, the output once apply.apply_step starts it)."""
        return self.output_ids if self.output_ids or not self.resume_ids else self.resume_ids

    def penalty_history(self) -> TokenHistory:
        """The prompt and the stream so far as the sampler's penalties read them, built once and then
        updated token by token (a long history is not re-sorted every step); rebuilt when the stream's
        list is replaced, as a resumed stream's output replaces its resumed tokens."""
        stream = self.stream_so_far()
        cached = self._penalty_history
        if cached is None or cached[0] is not stream or cached[1] > len(stream):
            cached = (stream, 0, TokenHistory(self.prompt))
        source, seen, history = cached
        history.extend(source[seen:])
        self._penalty_history = (source, len(source), history)
        return history

    def generation_parts(self) -> tuple[GenerationRequest, StopCondition, TextCodec]:
        """A generation's request, stop rules and codec (a score has none)."""
        if self.request is None or self.stop is None or self.codec is None:
            raise TypeError(f"a {self.kind.value} sequence has no generation request")
        return self.request, self.stop, self.codec

    def start_after_resume(self) -> str | None:
        """The checked resumed tokens become the output so far; None, or why the stream could not go on."""
        self.output_ids = list(self.resume_ids)
        i = self.generation_parts()[1].replay(self.resume_ids)
        if i is not None:
            return f"resume_token_ids[{i}]: a stop string ends the stream there; a finished stream cannot be resumed"
        return None

    def score_positions(self, start: int, end: int) -> range:
        """Rows p of the chunk [start, end) whose logits score prompt token p + 1."""
        if self.score_from is None:
            return range(0)
        return range(max(start, self.score_from - 1), min(end, len(self.prompt) - 1))

    def finish_scoring(self) -> None:
        self.finished = True
        self._post(
            ScoreResult(
                tuple(self.prompt_logprobs),
                tuple(self.prompt_greedy),
                self.prompt_greedy == self.prompt[self.score_from :],
                self.cached_tokens,
            )
        )

    def draft(self, limit: int, bar: float) -> tuple[list[int], list[int]]:
        """(proposal, draft): up to `limit` tokens guessed from this sequence's own n-grams (speculation.py),
        never more than the stream may still produce after the token its decode row samples, and the
        first of them that are each kept with a likelihood above `bar` (scheduler.draft_threshold).
        Only reads: observe_draft() records what the step gave."""
        request, stop, _ = self.generation_parts()
        room = min(request.max_new_tokens - len(self.output_ids), stop.max_context - self.num_tokens) - 1
        drafter = self._drafter or NgramDrafter()  # none yet: an empty one, dropped (observe_draft builds one)
        proposal = drafter.propose(min(limit, room), self._tokens_from(len(drafter.tokens)))
        return proposal, proposal[: drafter.worth(len(proposal), bar)]

    def observe_draft(self, proposal: Sequence[int], produced: Sequence[int]) -> None:
        """A step that proposed `proposal` produced `produced`: its tokens join the n-gram index, and they
        score the proposal (drafted or not)."""
        if self._drafter is None:
            self._drafter = NgramDrafter()
        self._drafter.extend(self._tokens_from(len(self._drafter.tokens)))
        self._drafter.observe(proposal, produced)

    def _tokens_from(self, start: int) -> list[int]:
        """The prompt and the output so far, from position `start` on."""
        if start < len(self.prompt):
            return self.prompt[start:] + self.output_ids
        return self.output_ids[start - len(self.prompt) :]

    @property
    def prefill_done(self) -> bool:
        return self.prefilled >= len(self.prefill_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output_ids)

    def accept(self, token_id: int, logprob: float, top_ids: list[int], top_lps: list[float]) -> None:
        """Append a sampled token, apply the stop conditions and emit a chunk."""
        req, stop, codec = self.generation_parts()
        self.output_ids.append(token_id)
        text, finish = stop.accept(token_id, len(self.output_ids), self.num_tokens)
        top = [TopLogprob(t, codec.token_text(t), lp) for t, lp in zip(top_ids[: req.top_logprobs], top_lps)]
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
                tops: list[list[TopLogprob] | None] = [None]  # the first prompt token has no alternatives
                tops += [
                    [TopLogprob(t, codec.token_text(t), lp) for t, lp in zip(ids[: req.top_logprobs], lps)]
                    for ids, lps in self.prompt_top
                ]
                chunk.prompt_top_logprobs = tops
        if finish is not None:
            self.finished = True
        self._post(chunk)

    def finish_cancelled(self) -> None:
        if self.kind is SequenceKind.SCORE:  # a score has no partial result: its caller gets an error instead
            self.fail(NotReady("cancelled by the server (shutting down)"))
            return
        self.finished = True
        self._post(
            GenerationChunk(
                [],
                "",
                [],
                finish_reason=FinishReason.CANCELLED,
                prompt_tokens=len(self.prompt),
                completion_tokens=len(self.output_ids),
            )
        )

    def fail(self, error: BaseException) -> None:
        self.finished = True
        self._post(error)

    def _post(self, item: Posted) -> None:
        try:
            self.loop.call_soon_threadsafe(self.outbox.put_nowait, item)
        except RuntimeError:  # the caller's event loop is gone
            self.cancelled = True
