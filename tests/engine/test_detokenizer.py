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


def test_windowed_text_is_the_whole_decode_after_every_token(tokenizer):
    """The default tokenizer decodes byte-level: IncrementalText decodes a short window per token, and its
    text must still be the decode of every id so far (split characters, emoji, specials, random ids)."""
    import random

    codec = TextCodec(tokenizer)
    assert codec.windowed
    rng = random.Random(7)
    text_ids = tokenizer("naïve café — 日本語 🎲🎉 done\n\tok", add_special_tokens=False)["input_ids"]
    specials = list(tokenizer.all_special_ids)
    for _ in range(20):
        ids = []
        while len(ids) < 300:
            pick = rng.random()
            if pick < 0.5:
                ids += text_ids[rng.randrange(len(text_ids)) :][: rng.randrange(1, 8)]
            elif pick < 0.9:
                ids.append(rng.randrange(len(tokenizer)))  # any token: partial UTF-8 bytes included
            else:
                ids.append(rng.choice(specials))
        inc = IncrementalText(codec)
        whole = IncrementalText(_Whole(codec))
        for t in ids:
            delta, expected = inc.add(t, check_stop=False), whole.add(t, check_stop=False)
            assert inc.text == codec.decode(inc.token_ids) and delta == expected
        assert inc.finish() == whole.finish()
        assert inc._prefix > len(ids) // 2  # the windows moved along: a short decode per token


class _Whole:
    """The codec without windowing: IncrementalText decodes every id each time (the reference)."""

    def __init__(self, codec):
        self.decode = codec.decode
