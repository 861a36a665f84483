"""One sequence's state inside the engine, and the packed rows of one step."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from .detokenizer import IncrementalText
from .kv_cache import SequenceKVCache
from .model import Segment
from .types import FinishReason, GenerationChunk, GenerationRequest, TopLogprob


class Sequence_:
    """A request being served: prompt, generated tokens, cache, and its outbox to the caller.

    The engine thread mutates it; the caller's event loop only reads `outbox`
    and sets `cancelled`.
    """

    def __init__(self, request: GenerationRequest, cache: SequenceKVCache, tokenizer, loop: asyncio.AbstractEventLoop):
        self.request = request
        self.prompt = list(request.prompt_token_ids)
        self.output_ids: list[int] = []
        self.cache = cache
        self.tokenizer = tokenizer
        self.text = IncrementalText(tokenizer, request.stop)
        self.loop = loop
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.prefilled = 0  # prompt tokens already in the cache
        self.cancelled = False
        self.finished = False
        self.created = time.monotonic()

    @property
    def prefill_done(self) -> bool:
        return self.prefilled >= len(self.prompt)

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
        )
        if finish is not None:
            self.finished = True
        self._post(chunk)

    def finish_cancelled(self) -> None:
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
    """Packed rows of one forward step."""

    token_ids: list[int] = dataclasses.field(default_factory=list)
    positions: list[int] = dataclasses.field(default_factory=list)
    segments: list[Segment] = dataclasses.field(default_factory=list)
    logit_rows: list[int] = dataclasses.field(default_factory=list)
    sampled: list[Sequence_] = dataclasses.field(default_factory=list)

    def add(self, seq: Sequence_, tokens: list[int], start: int, wants_logits: bool) -> None:
        self.segments.append(Segment(seq.cache, start, len(tokens)))
        self.token_ids.extend(tokens)
        self.positions.extend(range(start, start + len(tokens)))
        if wants_logits:
            self.logit_rows.append(len(self.token_ids) - 1)
            self.sampled.append(seq)
