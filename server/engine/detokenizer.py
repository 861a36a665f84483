"""Incremental detokenisation with stop strings: emit only text that can never be retracted."""

from __future__ import annotations

from typing import Optional, Sequence

REPLACEMENT_CHAR = "\ufffd"  # what a decoder shows for an incomplete UTF-8 sequence


class IncrementalText:
    """Turns a growing list of token ids into text deltas.

    The emitted text is always a prefix of the final text: a trailing partial
    UTF-8 character, or a suffix that could still become a stop string, is
    held back until it is settled. Stop strings are cut from the text.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.token_ids: list[int] = []
        self.emitted = 0  # characters of the full text already handed out
        self.text = ""  # the full decoded text so far (stop string included, if found)
        self.stopped_at: Optional[int] = None  # index where a stop string begins

    def _decode(self) -> str:
        return self.tokenizer.decode(
            self.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def add(self, token_id: int, check_stop: bool = True) -> str:
        """Append a token; return the newly settled text (maybe empty)."""
        self.token_ids.append(token_id)
        self.text = self._decode()
        if check_stop and self.stop:
            self.stopped_at = self._find_stop()
            if self.stopped_at is not None:
                return self._take(self.stopped_at)
        stable = len(self.text)
        while stable > self.emitted and self.text[stable - 1] == REPLACEMENT_CHAR:
            stable -= 1  # may be completed by the next token
        return self._take(stable - self._stop_prefix_len(stable))

    def finish(self) -> str:
        """The sequence ended: release everything held back (but never a stop string)."""
        end = self.stopped_at if self.stopped_at is not None else len(self.text)
        return self._take(end)

    def _take(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        delta = self.text[self.emitted:end]
        self.emitted = end
        return delta

    def _find_stop(self) -> Optional[int]:
        # A match cannot start inside released text: any prefix of a stop string was held back.
        found = [i for i in (self.text.find(s, self.emitted) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _stop_prefix_len(self, end: int) -> int:
        """Length of the longest suffix of text[:end] that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, end - self.emitted), best, -1):
                if self.text.endswith(s[:n], 0, end):
                    best = n
                    break
        return best
