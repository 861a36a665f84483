"""TokenHistory: one row's prompt and output as the penalties read them, kept up to date token by token."""

from __future__ import annotations

import array
import bisect
from collections.abc import Iterable


class TokenHistory:
    """The distinct ids of a prompt and its output so far, ascending, each with its count in the output.

    The penalties only need which ids occur (repetition penalty) and how often each occurs in the
    output (frequency and presence penalties). Kept this way, a step reads a few hundred distinct ids
    per row instead of sorting thousands of history ids; adding a token is a binary search and at
    most one insertion.
    """

    __slots__ = ("ids", "counts")

    def __init__(self, prompt: Iterable[int] = ()) -> None:
        self.ids = array.array("q", sorted(set(prompt)))  # ascending, distinct
        self.counts = array.array("q", bytes(8 * len(self.ids)))  # [len(ids)] occurrences in the output

    def add(self, token_id: int) -> None:
        """Count one more output token."""
        i = bisect.bisect_left(self.ids, token_id)
        if i < len(self.ids) and self.ids[i] == token_id:
            self.counts[i] += 1
        else:
            self.ids.insert(i, token_id)
            self.counts.insert(i, 1)

    def extend(self, token_ids: Iterable[int]) -> None:
        for t in token_ids:
            self.add(t)

    def with_output(self, token_ids: Iterable[int]) -> TokenHistory:
        """A copy that has also seen token_ids as output (this history is unchanged)."""
        other = TokenHistory.__new__(TokenHistory)
        other.ids, other.counts = array.array("q", self.ids), array.array("q", self.counts)
        other.extend(token_ids)
        return other

    def __len__(self) -> int:
        return len(self.ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenHistory) and self.ids == other.ids and self.counts == other.counts

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"TokenHistory({len(self.ids)} ids, {sum(self.counts)} output tokens)"
