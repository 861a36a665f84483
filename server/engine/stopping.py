"""When a generation ends: stop token ids, EOS, stop strings and length, for one request."""

from __future__ import annotations

from collections.abc import Sequence

from .text import IncrementalText
from .types import FinishReason, GenerationRequest


class StopCondition:
    """A generation's stop rules, and its text so far (a stop string is found in the text).

    Before min_new_tokens no stop applies: EOS and stop tokens are not even sampled
    (suppressed_ids) and stop strings are not looked for. Length always applies.
    """

    def __init__(
        self, request: GenerationRequest, eos_token_ids: frozenset[int], max_context: int, text: IncrementalText
    ):
        self.request = request
        self.eos_token_ids = eos_token_ids
        self.max_context = max_context
        self.text = text

    def suppressed_ids(self, step: int) -> list[int]:
        """Tokens that may not be sampled at `step` (0-based): EOS and stop tokens before min_new_tokens."""
        req = self.request
        if step >= req.min_new_tokens:
            return []
        ids = set(req.stop_token_ids)
        if not req.ignore_eos:
            ids |= self.eos_token_ids
        return sorted(ids)

    def accept(self, token_id: int, generated: int, total: int) -> tuple[str, FinishReason | None]:
        """Take the token just appended (`generated` output tokens, `total` with the prompt): the text
        it settles, and why the stream ends with it (None: it goes on)."""
        req = self.request
        finish = None
        text = ""
        if token_id in req.stop_token_ids:
            finish = FinishReason.STOP_TOKEN
        elif token_id in self.eos_token_ids and not req.ignore_eos:
            finish = FinishReason.EOS
        else:
            text = self.text.add(token_id, check_stop=generated >= req.min_new_tokens)
            if self.text.stopped_at is not None:
                finish = FinishReason.STOP_STRING
        if finish is None and (generated >= req.max_new_tokens or total >= self.max_context):
            finish = FinishReason.LENGTH
        if finish is not None:
            text += self.text.finish()
        return text, finish

    def replay(self, token_ids: Sequence[int]) -> int | None:
        """Feed tokens the caller already holds (a resumed stream) into the text: the index of the first
        one a stop string ends at, or None. Their stop and EOS tokens were refused at validation."""
        for i, token in enumerate(token_ids):
            self.text.add(token, check_stop=i + 1 >= self.request.min_new_tokens)
            if self.text.stopped_at is not None:
                return i
        return None
