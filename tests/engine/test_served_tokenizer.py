"""The served tokenizer (a warm start's, without transformers) gives transformers' ids, text, streamed text and
chats on every tokenizer kind the tests build, and a warm start never imports transformers."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import pytest
import write_gguf
from tiny_tokenizer import SPECIALS

from seedstream.server.engine.chat import render_chat_ids
from seedstream.server.engine.loader import CACHE_FORMAT, cache_root, load_weights
from seedstream.server.engine.served_tokenizer import (
    FACTS_FILE,
    ServedTokenizer,
    load_served,
    mismatch,
    served_facts,
)
from seedstream.server.engine.text import IncrementalText, TextCodec

# characters the random texts are drawn from: ASCII, whitespace of every kind, accents, CJK, emoji and joiners
ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,;:!?'\"()[]{}<>/\\|-_=+*&^%$#@~`"
    " \t\n\r\u00a0\u2003\u200b\u200d\ufeff"
    "éèêëñçßøåœæÉÑ—–…“”‘’€£¥½"
    "日本語中文한국어テキスト"
    "😀👍🏽👨🇫🇷🎲"
    "ЖжΩπשعहไ\ue000"
)


def _random_texts(specials: list[str], n: int = 300) -> list[str]:
    rng = random.Random(0)
    pieces = list(ALPHABET) + specials + ["  ", "\n\n", " the", "ing ", "'s", "<", "</", "|>"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40))) for _ in range(n)]


def _entry(weights):
    return cache_root() / f"v{CACHE_FORMAT}-{weights.model_identity[:32]}"


def _pair(weights):
    """(the served tokenizer, transformers' tokenizer of the same cache entry, as a warm start loaded it before)."""
    from transformers import AutoTokenizer

    assert isinstance(weights.tokenizer, ServedTokenizer), "the conversion found transformers needed"
    return weights.tokenizer, AutoTokenizer.from_pretrained(str(_entry(weights)))


@pytest.fixture(scope="module")
def kinds(weights, tiny_model_dir, tmp_path_factory):
    """kind -> its weights: the default GGUF, a tiny tokenizer's model folder, and that model written as a GGUF
    (write_gguf.py: its tokenizer rebuilt by transformers from the GGUF's lists)."""
    folder = tiny_model_dir()
    gguf = tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf"
    write_gguf.write_gguf(folder, gguf, "f32")
    return {
        "default gguf": weights,
        "tiny folder": load_weights(str(folder), progress=lambda msg: None),
        "tiny gguf": load_weights(str(gguf), progress=lambda msg: None),
    }


KINDS = ["default gguf", "tiny folder", "tiny gguf"]


@pytest.mark.parametrize("kind", KINDS)
def test_probes_every_id_and_chats_equal_transformers(kinds, kind):
    served, reference = _pair(kinds[kind])
    assert mismatch(served, reference) is None


@pytest.mark.parametrize("kind", KINDS)
def test_random_texts_encode_and_decode_as_transformers_does(kinds, kind):
    served, reference = _pair(kinds[kind])
    specials = list(reference.get_added_vocab())
    rng = random.Random(1)
    for text in _random_texts(specials):
        for add in (False, True):
            ids = reference(text, add_special_tokens=add)["input_ids"]
            assert served(text, add_special_tokens=add)["input_ids"] == ids, (text, add)
        ids = [rng.randrange(len(reference)) for _ in range(rng.randrange(0, 24))]
        for skip in (False, True):
            want = reference.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
            assert served.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False) == want


@pytest.mark.parametrize("kind", KINDS)
def test_streamed_text_is_the_same_delta_for_delta(kinds, kind):
    """IncrementalText (windowed on byte-level decoders) over either tokenizer hands out the same deltas, for the
    text's own ids and for random ids that split characters."""
    served, reference = _pair(kinds[kind])
    assert TextCodec(served).windowed == TextCodec(reference).windowed
    rng = random.Random(2)
    for text in _random_texts(list(reference.get_added_vocab()), 60):
        for ids in (reference(text, add_special_tokens=False)["input_ids"], rng.sample(range(len(reference)), 16)):
            streams = []
            for tok in (served, reference):
                inc = IncrementalText(TextCodec(tok), stop=("\n\n", "ing"))
                streams.append([inc.add(t) for t in ids] + [inc.finish()])
            assert streams[0] == streams[1], (text, ids)


@pytest.mark.parametrize("kind", KINDS)
def test_chats_render_to_the_same_ids_even_with_special_token_text(kinds, kind):
    served, reference = _pair(kinds[kind])
    specials = list(reference.get_added_vocab())
    for content in ["hi", "  two  spaces \n", "naïve 😀 日本語", *(f"a {s} b" for s in specials), "".join(specials)]:
        chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]
        assert render_chat_ids(served, chat) == render_chat_ids(reference, chat), content
    assert served.bos_token_id == reference.bos_token_id
    assert served.get_added_vocab() == reference.get_added_vocab()


def test_save_pretrained_gives_back_transformers_own_files(kinds, tmp_path):
    from transformers import AutoTokenizer

    served, reference = _pair(kinds["tiny folder"])
    served.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert again("a <s> b</s>")["input_ids"] == reference("a <s> b</s>")["input_ids"]
    assert again.chat_template == reference.chat_template


def test_a_tokenizer_that_differs_is_caught_and_kept_on_transformers(kinds, tmp_path):
    """The check that decides a conversion's tokenizer: a class of its own, or facts that differ, keep transformers."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    served, reference = _pair(kinds["tiny folder"])

    class OwnDecode(TokenizersBackend):
        def decode(self, token_ids, skip_special_tokens=False, **kwargs):
            return super().decode(token_ids, skip_special_tokens, **kwargs).upper()

    assert served_facts(reference) is not None
    assert served_facts(OwnDecode(tokenizer_object=reference.backend_tokenizer)) is None
    facts = {**served_facts(reference), "saved_files": [], "bos_token_id": SPECIALS.index("</s>")}
    assert mismatch(ServedTokenizer(served.backend_tokenizer, facts, tmp_path), reference) is not None
    (tmp_path / FACTS_FILE).write_text(json.dumps({"served": False, "why": "test"}))
    assert load_served(tmp_path) is None


WARM_START = textwrap.dedent(
    """
    import json, sys
    from seedstream.server.engine import EngineConfig, load_engine
    engine = load_engine(EngineConfig(), progress=lambda msg: None)
    ids = engine.text.render_chat([{"role": "user", "content": "hi <|im_end|>"}])
    text = engine.text.decode(engine.text.tokenize("Hello world"))
    print(json.dumps({"transformers": sorted(m for m in sys.modules if m.split(".")[0] == "transformers"),
                      "ids": ids, "text": text}))
    """
)


def test_a_warm_start_imports_no_transformers(weights):
    """The default model's engine, started warm in a fresh process, tokenizes, renders a chat and decodes without
    transformers imported (about 24 MiB of a served process)."""
    _, reference = _pair(weights)
    done = subprocess.run([sys.executable, "-c", WARM_START], capture_output=True, text=True, check=True)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["transformers"] == []
    chat = [{"role": "user", "content": "hi <|im_end|>"}]
    assert got["ids"] == render_chat_ids(reference, chat)
    assert got["text"] == "Hello world"
