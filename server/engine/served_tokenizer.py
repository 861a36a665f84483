"""The served tokenizer: transformers' fast tokenizer rebuilt from the `tokenizers` library alone at a warm start.

transformers' import and its tokenizer classes cost a served process about 24 MiB that serving never needs:
every call the engine makes on a transformers fast tokenizer (TokenizersBackend) is a call on its Rust
`tokenizers.Tokenizer` plus a few facts (the special tokens, the chat template). The conversion (cold start)
writes that Rust tokenizer exactly as transformers set it up, and those facts, into the cache entry, after
checking on many strings, on every id and on chats that both give the same ids, text and rendered chats; a
tokenizer class that overrides any of the methods involved, or that fails the check, keeps transformers.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2
    import tokenizers
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("seedstream.engine")

BACKEND_FILE = "served_tokenizer.json"  # the Rust tokenizer as transformers configured it
FACTS_FILE = (
    "served_tokenizer_facts.json"  # what else the engine reads of the tokenizer; "served": false = keep transformers
)
# TokenizersBackend's methods the engine's calls go through: a subclass overriding one may encode or decode differently
_PLAIN_METHODS = (
    "__call__",
    "_encode_plus",
    "encode",
    "decode",
    "_decode",
    "_convert_encoding",
    "set_truncation_and_padding",
    "get_added_vocab",
    "apply_chat_template",
    "get_chat_template",
)
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # transformers' aliases of a message's reasoning


class ServedTokenizer:
    """The calls the engine makes on a transformers fast tokenizer (chat.Tokenizer), answered the same way from
    the Rust tokenizer and the facts the conversion wrote."""

    def __init__(self, backend: tokenizers.Tokenizer, facts: Mapping[str, Any], files: Path):
        backend.no_truncation()  # as transformers' call does when not asked to truncate or pad
        backend.no_padding()
        self._backend = backend
        self._lock = threading.Lock()  # encode_special_tokens is a setting of the shared Rust tokenizer
        self._split_special_default = bool(facts["split_special_tokens"])
        self._special_tokens_map: dict[str, str] = dict(facts["special_tokens_map"])
        self._saved_files: list[str] = list(facts["saved_files"])
        self._files = files
        self.chat_template: str | None = facts["chat_template"]
        self.bos_token_id: int | None = facts["bos_token_id"]
        self.eos_token_id: int | None = facts["eos_token_id"]
        self.all_special_ids: list[int] = list(facts["all_special_ids"])

    @property
    def backend_tokenizer(self) -> tokenizers.Tokenizer:
        return self._backend

    def __len__(self) -> int:
        """The vocabulary with the added tokens, as len() of transformers' tokenizer."""
        return int(self._backend.get_vocab_size(with_added_tokens=True))

    def __call__(
        self, text: str, *, add_special_tokens: bool = True, split_special_tokens: bool | None = None
    ) -> dict[str, list[int]]:
        """{"input_ids": ids} of one text, as transformers' `tokenizer(text, ...)` gives them."""
        return {"input_ids": self.encode(text, add_special_tokens, split_special_tokens)}

    def encode(self, text: str, add_special_tokens: bool = True, split_special_tokens: bool | None = None) -> list[int]:
        split = self._split_special_default if split_special_tokens is None else split_special_tokens
        with self._lock:
            self._backend.encode_special_tokens = split
            return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(
        self, token_ids: list[int], *, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False
    ) -> str:
        if clean_up_tokenization_spaces:  # the engine never cleans up (text.py); see served_facts
            raise ValueError("the served tokenizer does not clean up tokenization spaces")
        return str(self._backend.decode(list(token_ids), skip_special_tokens=skip_special_tokens))

    def get_added_vocab(self) -> dict[str, int]:
        decoder = self._backend.get_added_tokens_decoder()
        return {decoder[i].content: i for i in sorted(decoder)}

    def apply_chat_template(
        self, conversation: list[dict[str, Any]], *, add_generation_prompt: bool = False, tokenize: bool = True
    ) -> str:
        """The rendered chat (tokenize=False only), as transformers' apply_chat_template renders one conversation."""
        if tokenize:
            raise ValueError("the served tokenizer renders chats as text only (tokenize=False)")
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        if not conversation:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        messages = _alias_reasoning([{k: v for k, v in m.items() if v is not None} for m in conversation])
        template = _compiled_template(self.chat_template)
        context = {**self._special_tokens_map, "messages": messages, "tools": None, "documents": None}
        return str(template.render(add_generation_prompt=add_generation_prompt, **context))

    def save_pretrained(self, folder: str | Path) -> tuple[str, ...]:
        """The files transformers saved at the conversion (from_pretrained on `folder` gives its tokenizer back)."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        return tuple(str(shutil.copy(self._files / name, Path(folder) / name)) for name in self._saved_files)


def _alias_reasoning(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """transformers' _alias_reasoning_fields: a message's reasoning under any of its names is also under the others
    that templates read."""
    out = []
    for m in messages:
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        out.append(m if reasoning is None else {"thinking": reasoning, **m, "reasoning_content": reasoning})
    return out


@functools.lru_cache(maxsize=8)
def _compiled_template(source: str) -> jinja2.Template:
    """The template compiled in transformers' sandbox (utils/chat_template_utils.py): the same environment options,
    extensions, filters and globals, so a template renders the same text."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_generation_tag_class(), jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _namespace_class()
    return env.from_string(source)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


class _TemplateDict:
    """`dict` inside a template: calls and fromkeys only (no attribute access to the type)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


@functools.cache
def _namespace_class() -> type:
    """jinja2's Namespace refusing underscore-prefixed names, as transformers' TemplateNamespace does."""
    import jinja2
    import jinja2.utils

    def check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}. "
                "Please rename the attribute."
            )

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:
            self, rest = args[0], args[1:]
            for name in dict(*rest, **kwargs):
                check(name)
            jinja2.utils.Namespace.__init__(self, dict(*rest, **kwargs))

        def __setitem__(self, name: str, value: Any) -> None:
            check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    return TemplateNamespace


@functools.cache
def _generation_tag_class() -> type:
    import jinja2.ext
    import jinja2.nodes

    class GenerationTag(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` renders its body (transformers tracks assistant spans with it)."""

        tags = {"generation"}

        def parse(self, parser: Any) -> jinja2.nodes.CallBlock:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            block = jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body)
            block.set_lineno(lineno)
            return block

        def _body(self, caller: Any) -> str:
            return str(caller())

    return GenerationTag


# ---------------------------------------------------------------- the conversion and the warm start


def served_facts(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any] | None:
    """The facts a ServedTokenizer needs of transformers' `tokenizer`, or None where it cannot stand in for it."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    if not isinstance(tokenizer, TokenizersBackend):
        return None
    if any(getattr(type(tokenizer), m) is not getattr(TokenizersBackend, m) for m in _PLAIN_METHODS):
        return None  # a class of its own encoding, decoding or rendering
    backend = tokenizer.backend_tokenizer
    if tokenizer.clean_up_tokenization_spaces and type(backend.model).__name__ != "BPE":
        return None  # its default decode cleans up spaces (transformers skips that for BPE)
    template = tokenizer.chat_template
    if isinstance(template, dict):
        if "default" not in template:
            return None
        template = template["default"]
    return {
        "split_special_tokens": bool(tokenizer.split_special_tokens),
        "special_tokens_map": dict(tokenizer.special_tokens_map),
        "chat_template": template or None,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "all_special_ids": list(tokenizer.all_special_ids),
    }


def write_served(folder: Path, saved_files: tuple[str, ...]) -> None:
    """Next to the transformers files saved in `folder` (`saved_files`): the served tokenizer's backend and
    facts, from transformers' tokenizer as a warm start would load it, if it passes the equality check."""
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(folder))
    facts = served_facts(reference)
    why: str | None = f"{type(reference).__name__} is not transformers' plain TokenizersBackend"
    if facts is not None:
        facts["saved_files"] = sorted({Path(p).name for p in saved_files if (folder / Path(p).name).is_file()})
        (folder / BACKEND_FILE).write_text(reference.backend_tokenizer.to_str())
        try:
            why = mismatch(ServedTokenizer(_read_backend(folder), facts, folder), reference)
        except Exception as exc:  # a probe that one of them refuses differently: keep transformers
            why = f"the check failed: {type(exc).__name__}: {exc}"
    record = {"served": True, **facts} if facts is not None and why is None else {"served": False, "why": why}
    if not record["served"]:
        (folder / BACKEND_FILE).unlink(missing_ok=True)
        log.info("the tokenizer is served by transformers: %s", why)
    (folder / FACTS_FILE).write_text(json.dumps(record))


def load_served(folder: Path) -> ServedTokenizer | None:
    """The served tokenizer of a cache entry, or None where its conversion found transformers needed."""
    facts = json.loads((folder / FACTS_FILE).read_text())
    if not facts["served"]:
        return None
    return ServedTokenizer(_read_backend(folder), facts, folder)


def _read_backend(folder: Path) -> tokenizers.Tokenizer:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / BACKEND_FILE))


# ---------------------------------------------------------------- the equality check

PROBE_TEXTS = (
    "",
    " ",
    "  ",
    "\n",
    "\n\n \t",
    "Hello, world!",
    " Hello",
    "hello  world   ",
    "The capital of France is Paris, and the capital of Italy is",
    "naïve café — “quoted” ‘text’ … ½ € ¥",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji 😀👍🏽👨‍👩‍👧 and flags 🇫🇷",
    "Ω≈ç√∫˜µ≤≥÷ Ѐ Ж ע ش ह ไ",
    "def f(x):\n    return x  # comment\n\treturn\r\n",
    "1234567890 3.14159 -42 1e-9 0x1F",
    "don't won't it's I'm y'all 'quoted'",
    "a" * 64 + " " + "ab" * 40,
    "\u200b\u200d\ufeff zero widths \u00a0 nbsp",
    "\ue000 private use \U0010fffd",
    "<s> </s> <pad> <unk> <|endoftext|> <|im_start|>user\nhi<|im_end|>",
    "text<s>glued</s>text<|im_end|><|im_start|>",
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n<|eot_id|>",
    "<<s>> <s<s>> </s/s> < s > [INST] [/INST] <<SYS>>",
)
PROBE_CHATS = (
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "  spaced  \n"},
        {"role": "assistant", "content": "ok <s> </s> <|im_end|>"},
        {"role": "user", "content": "naïve 😀 日本"},
    ],
)


def mismatch(served: ServedTokenizer, reference: Any) -> str | None:
    """Where `served` differs from transformers' `reference`: None when every probe gives the same ids, text
    and rendered chat (every id decoded alone, both ways; the added tokens; BOS and EOS ids)."""
    if served.get_added_vocab() != reference.get_added_vocab():
        return "the added tokens differ"
    facts = (served.bos_token_id, served.eos_token_id, served.all_special_ids, len(served))
    if facts != (reference.bos_token_id, reference.eos_token_id, list(reference.all_special_ids), len(reference)):
        return "the BOS, EOS or special ids or the vocabulary's size differ"
    for text in PROBE_TEXTS + tuple(served.get_added_vocab()):
        why = _text_mismatch(served, reference, text)
        if why is not None:
            return why
    if served.decode(list(range(len(reference)))) != reference.decode(list(range(len(reference)))):
        return "the text of all ids in order differs"
    for i in range(len(reference)):
        for skip in (False, True):
            if served.decode([i], skip_special_tokens=skip) != reference.decode(
                [i], skip_special_tokens=skip, clean_up_tokenization_spaces=False
            ):
                return f"the text of id {i} differs (skip_special_tokens={skip})"
    return _chat_mismatch(served, reference)


def _text_mismatch(served: ServedTokenizer, reference: Any, text: str) -> str | None:
    """Where the two differ on `text`: its ids (with and without special tokens, special-token text matched or
    split) and the text of those ids (special tokens kept or skipped)."""
    for add, split in ((False, None), (True, None), (False, False), (False, True), (True, True)):
        ids = _outcome(served.encode, text, add, split)
        if ids != _outcome(_reference_ids, reference, text, add, split):
            return f"the ids of {text!r} differ (add_special_tokens={add}, split_special_tokens={split})"
        if not isinstance(ids, list):
            continue  # both refused it alike (the backend's own error)
        for skip in (False, True):
            got = served.decode(ids, skip_special_tokens=skip)
            if got != reference.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False):
                return f"the text of {ids} differs (skip_special_tokens={skip})"
    return None


def _reference_ids(reference: Any, text: str, add: bool, split: bool | None) -> list[int]:
    return list(reference(text, add_special_tokens=add, split_special_tokens=split)["input_ids"])


def _outcome(fn: Any, *args: Any) -> Any:
    """fn(*args), or the error it raised as (type name, message): the same refusal counts as the same answer."""
    try:
        return fn(*args)
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def _chat_mismatch(served: ServedTokenizer, reference: Any) -> str | None:
    if bool(served.chat_template) != bool(reference.chat_template):
        return "the chat template differs"
    if not served.chat_template:
        return None
    for chat in PROBE_CHATS:
        for gen in (False, True):
            want = reference.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False)
            if served.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False) != want:
                return f"the rendered chat {chat} differs (add_generation_prompt={gen})"
    return None
