"""StopCondition on its own: which token ends a stream and why, and the text it lets out (no model)."""

from seedstream.sampler import SamplingParams
from seedstream.server.engine import FinishReason, GenerationRequest
from seedstream.server.engine.stopping import StopCondition
from seedstream.server.engine.text import IncrementalText

EOS = 0
PIECES = {0: "</s>", 1: "a", 2: "b", 3: " ", 4: "EN", 5: "D", 6: "x", 7: "!"}


class PieceCodec:
    """Decodes each id to a fixed piece; EOS spells nothing, as generated text leaves specials out."""

    def decode(self, token_ids):
        return "".join(PIECES[t] for t in token_ids if t != EOS)


def _stop(max_context=100, **fields):
    request = GenerationRequest((1, 2), SamplingParams(seed=0), **fields)
    return StopCondition(request, frozenset({EOS}), max_context, IncrementalText(PieceCodec(), request.stop))


def _feed(stop, tokens, prompt_len=2):
    """(text, finish) per token, as EngineSequence.accept calls it."""
    return [stop.accept(t, i + 1, prompt_len + i + 1) for i, t in enumerate(tokens)]


def test_stop_token_and_eos_end_the_stream_without_text():
    assert _feed(_stop(stop_token_ids=(7,)), [1, 7]) == [("a", None), ("", FinishReason.STOP_TOKEN)]
    assert _feed(_stop(), [1, EOS]) == [("a", None), ("", FinishReason.EOS)]


def test_ignore_eos_treats_eos_as_text():
    assert _feed(_stop(ignore_eos=True, max_new_tokens=3), [1, EOS, 2]) == [
        ("a", None),
        ("", None),
        ("b", FinishReason.LENGTH),
    ]


def test_stop_string_is_cut_and_held_back_until_settled():
    out = _feed(_stop(stop=("END",)), [1, 3, 4, 5])
    assert out[:2] == [("a", None), (" ", None)]
    assert out[2] == ("", None)  # "EN" could begin the stop string: held back
    assert out[3] == ("", FinishReason.STOP_STRING)
    assert "".join(text for text, _ in out[:4]) == "a "


def test_length_releases_held_back_text():
    out = _feed(_stop(stop=("END",), max_new_tokens=3), [1, 3, 4])
    assert out == [("a", None), (" ", None), ("EN", FinishReason.LENGTH)]


def test_length_at_max_context_counts_the_prompt():
    stop = _stop(max_context=4, max_new_tokens=10)
    assert _feed(stop, [1, 2]) == [("a", None), ("b", FinishReason.LENGTH)]


def test_a_stop_token_wins_over_length():
    assert _feed(_stop(stop_token_ids=(2,), max_new_tokens=2), [1, 2])[-1] == ("", FinishReason.STOP_TOKEN)


def test_min_new_tokens_suppresses_eos_and_stop_tokens_and_defers_stop_strings():
    stop = _stop(min_new_tokens=3, stop_token_ids=(7, 5), stop=("ab",))
    assert stop.suppressed_ids(0) == [EOS, 5, 7]
    assert stop.suppressed_ids(2) == [EOS, 5, 7]
    assert stop.suppressed_ids(3) == []
    assert _stop(min_new_tokens=1, ignore_eos=True, stop_token_ids=(7,)).suppressed_ids(0) == [7]
    # "ab" is complete at token 2, before min_new_tokens: it is text, and only a later match stops.
    out = _feed(stop, [1, 2, 6, 1, 2])
    assert [finish for _, finish in out] == [None, None, None, None, FinishReason.STOP_STRING]
    assert "".join(text for text, _ in out) == "abx"


def test_replay_reports_the_resumed_token_a_stop_string_ends_at():
    assert _stop(stop=("b",)).replay([1, 6, 2, 1]) == 2
    assert _stop(stop=("b",)).replay([1, 6]) is None
    assert _stop(stop=("b",), min_new_tokens=4).replay([2, 1, 1]) is None  # before min_new_tokens: no stop
