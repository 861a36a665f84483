"""Incremental text: deltas concatenate to the full decode; stop strings are cut and never leaked."""

import pytest

from seedstream.server.engine.text import IncrementalText, TextCodec


@pytest.fixture(scope="module")
def tokenizer(weights):
    return weights.tokenizer


def _stream(tokenizer, text, stop=()):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    inc = IncrementalText(TextCodec(tokenizer), stop)
    deltas = []
    for t in ids:
        deltas.append(inc.add(t))
        if inc.stopped_at is not None:
            break
    deltas.append(inc.finish())
    return ids, deltas, inc


@pytest.mark.parametrize(
    "text", ["Hello world, how are you?", "naïve café — 日本語のテキスト 🎲🎉 done", "  leading spaces\n\ttabs"]
)
def test_deltas_concatenate_to_full_decode(tokenizer, text):
    ids, deltas, _ = _stream(tokenizer, text)
    assert "".join(deltas) == tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text
    assert all("\ufffd" not in d for d in deltas)


def test_stop_string_is_cut_and_never_shown(tokenizer):
    text = "The answer is 42. END of story"
    _, deltas, inc = _stream(tokenizer, text, stop=("END",))
    assert "".join(deltas) == "The answer is 42. "
    assert inc.stopped_at is not None
    assert not any("E" in d for d in deltas)


def test_partial_stop_prefix_is_released_when_it_does_not_complete(tokenizer):
    _, deltas, inc = _stream(tokenizer, "a b STO c STOP d", stop=("STOP",))
    assert "".join(deltas) == "a b STO c "
    assert inc.stopped_at is not None


def test_earliest_of_several_stop_strings_wins(tokenizer):
    _, deltas, _ = _stream(tokenizer, "one two three four", stop=("four", "two"))
    assert "".join(deltas) == "one "
