"""A sequence's penalty history as the sampler reads it: the prompt and the output so far, kept as arrays."""

import asyncio

from seedstream.server.engine.sequence import EngineSequence, SequenceKind


def test_penalty_ids_follow_the_output_as_it_grows_and_when_it_is_replaced():
    loop = asyncio.new_event_loop()
    try:
        seq = EngineSequence(SequenceKind.GENERATE, [5, 6, 7], None, loop)
        prompt, out = seq.penalty_ids()
        assert (list(prompt), list(out)) == ([5, 6, 7], [])
        seq.output_ids += [9, 10]
        again, out = seq.penalty_ids()
        assert again is prompt and list(out) == [9, 10]  # the prompt is converted once
        seq.output_ids.append(11)
        assert list(seq.penalty_ids()[1]) == [9, 10, 11]
        seq.output_ids = [1, 2, 3, 4]  # replaced, as a resumed stream's checked tokens replace it
        assert list(seq.penalty_ids()[1]) == [1, 2, 3, 4]
        seq.output_ids = [8]
        assert list(seq.penalty_ids()[1]) == [8]
        assert prompt.typecode == "q"  # int64: the sampler copies it without a Python loop
    finally:
        loop.close()
