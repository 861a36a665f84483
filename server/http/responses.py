"""Engine results -> OpenAI response JSON (completions, chat, their stream chunks, usage)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from seedstream.server.engine.types import FinishReason, GenerationChunk, GenerationRequest, ModelInfo, TopLogprob
from seedstream.server.engine.validation import ValidRequest
from seedstream.server.service.receipts import receipt

if TYPE_CHECKING:
    from seedstream.server.engine import Engine

Json = dict[str, Any]  # a JSON object of a response
# (token texts, logprobs, top alternatives) of a run of tokens; the first prompt token has no logprob
Logprobs = tuple[list[str], list[float | None], list[list[TopLogprob] | None]]

FINISH = {
    FinishReason.LENGTH: "length",
    FinishReason.STOP_STRING: "stop",
    FinishReason.STOP_TOKEN: "stop",
    FinishReason.EOS: "stop",
    FinishReason.CANCELLED: "cancelled",
}


def system_fingerprint(info: ModelInfo) -> str:
    """The build part of the receipt: what must match for a seed to replay (OpenAI's field for it).

    The model is named by its identity (weights, config, tokenizer, chat template), not the weights' hash:
    two servers with the same weights and another template give other tokens and must not share a fingerprint.
    """
    return f"ss-{info.model_identity[:16]}-{info.dtype}-{info.device}-e{info.engine_version}-s{info.sampler_version}"


def receipt_json(info: ModelInfo, request: GenerationRequest) -> Json:
    """The gRPC receipt (same fields, same digest) in the proto's JSON form (uint64 as strings); unsigned."""
    return json_format.MessageToDict(
        receipt(info, request), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


@dataclasses.dataclass
class Echo:
    """The prompt echoed in front of a completion: its text and, with logprobs, its tokens."""

    text: str
    token_ids: list[int]


class Choice:
    """One choice (one prompt, one sample): turns its engine chunks into OpenAI deltas and the whole."""

    def __init__(
        self, index: int, valid: ValidRequest, engine: Engine, *, chat: bool, logprobs: bool, echo: Echo | None = None
    ) -> None:
        self.index = index
        self.valid = valid  # what the engine runs
        self.request = valid.request
        self.engine = engine
        self.chat = chat
        self.want_logprobs = logprobs
        self.echo = echo
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.completion_tokens = 0
        self.finish: FinishReason | None = None
        self.lp_tokens: list[str] = []
        self.lp_values: list[float | None] = []
        self.lp_top: list[list[TopLogprob] | None] = []
        self.receipt: Json | None = None

    def add(self, chunk: GenerationChunk) -> Json:
        """Record a chunk; returns this choice's part of a stream chunk."""
        first = not self.text
        text = chunk.text
        tokens, values, top = self._chunk_logprobs(chunk)
        if first and self.echo is not None:
            text = self.echo.text + text
            if self.want_logprobs and chunk.prompt_logprobs is not None:
                p_tokens, p_values, p_top = self._prompt_logprobs(chunk, self.echo, chunk.prompt_logprobs)
                tokens, values, top = p_tokens + tokens, p_values + values, p_top + top
        self.text.append(text)
        self.token_ids.extend(chunk.token_ids)
        self.completion_tokens = chunk.completion_tokens
        self.lp_tokens += tokens
        self.lp_values += values
        self.lp_top += top
        if chunk.finish_reason is not None:
            self.finish = chunk.finish_reason
            self.receipt = receipt_json(self.engine.info, self.request)
        part: Json = {"index": self.index}
        if self.chat:
            part["delta"] = {"content": text} if text or chunk.finish_reason is None else {}
            part["logprobs"] = self._chat_logprobs(tokens, values, top) if self.want_logprobs else None
        else:
            part["text"] = text
            part["logprobs"] = (
                self._completion_logprobs(tokens, values, top, len("".join(self.text)) - len(text))
                if self.want_logprobs
                else None
            )
        part["finish_reason"] = FINISH[chunk.finish_reason] if chunk.finish_reason is not None else None
        part["token_ids"] = list(chunk.token_ids)
        if self.receipt is not None:
            part["receipt"] = self.receipt
        return part

    def whole(self) -> Json:
        """This choice in a unary response."""
        text = "".join(self.text)
        out: Json = {"index": self.index}
        if self.chat:
            out["message"] = {"role": "assistant", "content": text}
            out["logprobs"] = (
                self._chat_logprobs(self.lp_tokens, self.lp_values, self.lp_top) if self.want_logprobs else None
            )
        else:
            out["text"] = text
            out["logprobs"] = (
                self._completion_logprobs(self.lp_tokens, self.lp_values, self.lp_top, 0)
                if self.want_logprobs
                else None
            )
        out["finish_reason"] = FINISH[self.finish or FinishReason.CANCELLED]
        out["token_ids"] = self.token_ids
        out["receipt"] = self.receipt
        return out

    # --- logprobs

    def _token_text(self, token_id: int) -> str:
        return self.engine.text.token_text(token_id)  # as the engine spells top alternatives

    def _chunk_logprobs(self, chunk: GenerationChunk) -> Logprobs:
        if not self.want_logprobs:
            return [], [], []
        tops = chunk.top_logprobs or [[] for _ in chunk.token_ids]
        return [self._token_text(t) for t in chunk.token_ids], list(chunk.logprobs), list(tops)

    def _prompt_logprobs(self, chunk: GenerationChunk, echo: Echo, prompt_logprobs: Sequence[float | None]) -> Logprobs:
        ids = echo.token_ids
        tops = chunk.prompt_top_logprobs or [None] + [[] for _ in ids[1:]]
        return [self._token_text(t) for t in ids], list(prompt_logprobs), list(tops)

    @staticmethod
    def _completion_logprobs(
        tokens: list[str], values: list[float | None], top: list[list[TopLogprob] | None], offset: int
    ) -> Json:
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t)
        return {
            "tokens": tokens,
            "token_logprobs": values,
            "top_logprobs": [None if row is None else {a.text: a.logprob for a in row} for row in top],
            "text_offset": offsets,
        }

    @staticmethod
    def _chat_logprobs(tokens: list[str], values: list[float | None], top: list[list[TopLogprob] | None]) -> Json:
        def entry(text: str, logprob: float | None) -> Json:
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return {
            "content": [
                {**entry(t, v), "top_logprobs": [entry(a.text, a.logprob) for a in (row or [])]}
                for t, v, row in zip(tokens, values, top)
            ]
        }


def usage(prompt_tokens: int, choices: Sequence[Choice]) -> Json:
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}
