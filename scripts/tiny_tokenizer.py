"""A tiny byte-level BPE tokenizer with exactly `vocab_size` tokens, saved into a model folder for tests.

The tiny random-weight test models have vocabularies of about 250, fewer than the 256 byte tokens plus the
specials that a lossless byte-level BPE needs. So ids 0..2 are <pad>, <s> and </s> (the ids of
tests/engine/arch_models.py's BASE), then the byte tokens, then a few merges of common letter pairs. Where
the vocabulary is too small for all 256 bytes and eight merges, the rarest bytes are left out (control bytes
first, then bytes >= 0x80, high to low); a left-out byte is dropped from the text it is in (no <unk>). With vocab_size >= 267 every byte is kept, and the merges fill the rest.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
_MIN_MERGES = 8
_LETTERS = "etaoinshrdlcumwfgypbvkjxqz"


def _byte_priority() -> list[int]:
    """All 256 bytes, most useful first: printable ASCII, whitespace, high bytes, then control bytes."""
    printable = list(range(0x20, 0x7F))
    space = [0x0A, 0x09, 0x0D]
    high = list(range(0x80, 0x100))
    rest = [b for b in range(256) if b not in set(printable + space + high)]
    return printable + space + high + rest


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character map (what ByteLevel pre-tokenisation produces)."""
    direct = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in direct else chr(next(extra)) for b in range(256)}


def _merges(count: int, present: set[str]) -> list[tuple[str, str]]:
    """`count` merges of common letter pairs, first " x" (space-prefixed letters), then "xy"."""
    space = _byte_chars()[0x20]
    pairs = [(space, c) for c in _LETTERS] + [(a, b) for a in _LETTERS for b in _LETTERS]
    pairs = [p for p in pairs if p[0] in present and p[1] in present]
    if count > len(pairs):
        raise ValueError(f"the tiny tokenizer makes at most {256 + len(SPECIALS) + len(pairs)} tokens")
    return pairs[:count]


def build_tiny_tokenizer(vocab_size: int):
    """A `tokenizers.Tokenizer` (byte-level BPE, GPT-2 pre-tokenisation) of exactly `vocab_size` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    n_merges = max(_MIN_MERGES, vocab_size - len(SPECIALS) - 256)
    n_bytes = vocab_size - len(SPECIALS) - n_merges
    if n_bytes < 128:
        raise ValueError(f"vocab_size {vocab_size} is too small for the tiny tokenizer (at least 139)")
    chars = _byte_chars()
    kept = sorted(_byte_priority()[:n_bytes])
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for b in kept:
        vocab[chars[b]] = len(vocab)
    merges = _merges(n_merges, set(vocab))
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    assert tok.get_vocab_size() == vocab_size, (tok.get_vocab_size(), vocab_size)
    return tok


def save_tiny_tokenizer(model_dir: Path, vocab_size: int | None = None) -> Path:
    """Save the tiny tokenizer into `model_dir` as a transformers fast tokenizer (tokenizer.json,
    tokenizer_config.json with <s>/</s>/<pad> and a chat template). vocab_size defaults to config.json's."""
    from transformers import PreTrainedTokenizerFast

    model_dir = Path(model_dir)
    if vocab_size is None:
        vocab_size = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_tiny_tokenizer(vocab_size),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(model_dir))
    return model_dir
