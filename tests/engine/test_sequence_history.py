"""A sequence's penalty history as the sampler reads it: the prompt and the output so far, kept up to date."""

import asyncio
from collections import Counter

from seedstream.sampler import TokenHistory
from seedstream.server.engine.sequence import EngineSequence, SequenceKind


def _same(history: TokenHistory, prompt: list[int], output: list[int]) -> bool:
    counts = Counter(output)
    return list(history.ids) == sorted(set(prompt) | set(output)) and list(history.counts) == [
        counts[t] for t in history.ids
    ]


def test_penalty_history_follows_the_output_as_it_grows_and_when_it_is_replaced():
    loop = asyncio.new_event_loop()
    try:
        seq = EngineSequence(SequenceKind.GENERATE, [5, 6, 7, 5], None, loop)
        history = seq.penalty_history()
        assert _same(history, [5, 6, 7], [])
        seq.output_ids += [9, 10, 9]
        again = seq.penalty_history()
        assert again is history and _same(again, [5, 6, 7], [9, 10, 9])  # updated in place, not rebuilt
        seq.output_ids.append(5)
        assert _same(seq.penalty_history(), [5, 6, 7], [9, 10, 9, 5])
        seq.output_ids = [1, 2, 3, 4]  # replaced, as a resumed stream's checked tokens replace it
        assert _same(seq.penalty_history(), [5, 6, 7], [1, 2, 3, 4])
        seq.output_ids = [8]
        assert _same(seq.penalty_history(), [5, 6, 7], [8])
        seq.output_ids.clear()  # the same list, shorter
        assert _same(seq.penalty_history(), [5, 6, 7], [])
    finally:
        loop.close()
