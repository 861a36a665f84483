"""Text in and out of the engine: tokenizing, chat rendering, and the one set of decoding rules.

Two spellings exist, each defined once here: generated text (special tokens left out, as a
reader sees it) and a token on its own (special tokens shown, for logprobs and tokenize).
Neither cleans up spaces, so the text is exactly what the tokens spell.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .chat import Tokenizer, render_chat_ids
from .types import ParamError

REPLACEMENT_CHAR = "\ufffd"  # what a decoder shows for an incomplete UTF-8 sequence
GENERATED_TEXT = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
TOKEN_TEXT = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}


class TextCodec:
    """The model's tokenizer behind the engine's rules for turning text into ids and back."""

    def __init__(self, tokenizer: Tokenizer, eos_token_ids: Iterable[int] = ()):
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.windowed = _byte_level(tokenizer)

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if not self.has_chat_template:
            raise ParamError("messages", "this model has no chat template; send a prompt instead")
        return render_chat_ids(self.tokenizer, messages)  # message content stays text (chat.py)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of a (context, continuation) pair, split the way lm-evaluation-harness does.

        Trailing whitespace of the context moves to the continuation; the pair is
        encoded whole and split at the context's token count, so BPE merges across
        the boundary match what the model sees. An empty context becomes the
        model's prefix token (BOS, else EOS).
        """
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self.prefix_token_id], self.tokenize(continuation)
        whole = self.tokenize(context + continuation)
        split = len(self.tokenize(context))
        return whole[:split], whole[split:]

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context becomes (lm-evaluation-harness's rule): BOS, else the lowest EOS."""
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return bos if bos is not None else min(self.eos_token_ids)

    def decode(self, token_ids: Iterable[int]) -> str:
        """Generated text: what the tokens spell, special tokens left out."""
        return self.tokenizer.decode(list(token_ids), **GENERATED_TEXT)

    def token_text(self, token_id: int) -> str:
        """One token's text on its own, special tokens shown (top alternatives, logprobs, tokenize)."""
        return self.tokenizer.decode([token_id], **TOKEN_TEXT)

    def token_texts(self, token_ids: Iterable[int]) -> list[str]:
        return [self.token_text(t) for t in token_ids]


def _byte_level(tokenizer: Tokenizer) -> bool:
    """Whether decoding is a plain byte concatenation read as UTF-8 (a byte-level BPE decoder): then the
    text of ids[:a] + ids[a:] is the text of ids[:a] followed by that of ids[a:] whenever ids[:a] ends on a
    whole character, and IncrementalText may decode a short window instead of everything."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    return type(decoder).__name__ == "ByteLevel"


class IncrementalText:
    """Turns a growing list of token ids into text deltas.

    The emitted text is always a prefix of the final text: a trailing partial
    UTF-8 character, or a suffix that could still become a stop string, is
    held back until it is settled. Stop strings are cut from the text.
    """

    def __init__(self, codec: TextCodec, stop: Sequence[str] = ()):
        self.codec = codec
        self.stop = tuple(s for s in stop if s)
        self.token_ids: list[int] = []
        self.emitted = 0  # characters of the full text already handed out
        self.text = ""  # the full decoded text so far (stop string included, if found)
        self.stopped_at: int | None = None  # index where a stop string begins
        # Windowed decoding (byte-level codecs): text = the text of token_ids[:read] (settled, ending on a
        # whole character) + what token_ids[prefix:] adds to the text of token_ids[prefix:read]. A token
        # then costs a decode of a few ids, not of the whole output (O(n) per token, O(n^2) per stream).
        self._windowed = bool(getattr(codec, "windowed", False))
        self._prefix = self._read = 0
        self._settled = self._window_head = ""

    def add(self, token_id: int, check_stop: bool = True) -> str:
        """Append a token; return the newly settled text (maybe empty)."""
        self.token_ids.append(token_id)
        self.text = self._decoded()
        if check_stop and self.stop:
            self.stopped_at = self._find_stop()
            if self.stopped_at is not None:
                return self._take(self.stopped_at)
        stable = len(self.text)
        while stable > self.emitted and self.text[stable - 1] == REPLACEMENT_CHAR:
            stable -= 1  # may be completed by the next token
        return self._take(stable - self._stop_prefix_len(stable))

    def _decoded(self) -> str:
        """The text of all token ids so far."""
        if not self._windowed:
            return self.codec.decode(self.token_ids)
        window = self.codec.decode(self.token_ids[self._prefix :])
        text = self._settled + window[len(self._window_head) :]
        if not window.endswith(REPLACEMENT_CHAR):  # ends on a whole character: the next window may start here
            self._prefix, self._read = self._read, len(self.token_ids)
            self._settled, self._window_head = text, window[len(self._window_head) :]
        return text

    def finish(self) -> str:
        """The sequence ended: release everything held back (but never a stop string)."""
        end = self.stopped_at if self.stopped_at is not None else len(self.text)
        return self._take(end)

    def _take(self, end: int) -> str:
        if end <= self.emitted:
            return ""
        delta = self.text[self.emitted : end]
        self.emitted = end
        return delta

    def _find_stop(self) -> int | None:
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
