"""The keyword options of a generation, for Client and AsyncClient alike: named, typed and documented once."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, TypedDict

from seedstream.v1 import textgen_pb2 as pb

if sys.version_info >= (3, 11):
    from typing import Unpack as Unpack
elif TYPE_CHECKING:  # Python 3.10: only type checkers read it (annotations are never evaluated at run time)
    from typing_extensions import Unpack as Unpack

# One chat turn: {"role": ..., "content": ...}, a (role, content) pair, or a ChatMessage proto.
Message = Mapping[str, str] | Sequence[str] | pb.ChatMessage


class GenerateOptions(TypedDict, total=False):
    """Keyword options of generate(), generate_stream() and generate_batch(), on both clients.

    Every option may be left out; an option left out (or None where None is allowed) takes the
    server's default, which the response's receipt reports filled in. Ranges are the server's
    (proto/seedstream/v1/textgen.proto is normative); a value out of range raises
    InvalidArgumentError naming the option. `_requests.generate_request` turns these into a
    GenerateRequest; nothing else does.
    """

    # --- The input: exactly one of `prompt` (the methods' first argument), messages, prompt_token_ids.

    messages: Iterable[Message] | None
    """A chat, rendered with the model's chat template (add_generation_prompt=True); message
    content is always text. At most 4096 messages."""

    prompt_token_ids: Sequence[int] | None
    """Token ids, fed to the model verbatim (the way to send control tokens). Each in
    [0, vocab_size); at least one."""

    # --- Randomness

    seed: int | None
    """The seed of the completion's random stream, in [0, 2^64). Default: the server draws one and
    reports it (result.seed), so any run can be replayed."""

    # --- Sampling (applied in this order: penalties and logit_bias, temperature, top_k, top_p, min_p)

    temperature: float | None
    """Softmax temperature; 0 = greedy (argmax, lowest token id wins ties). Default 1.0; range [0, 100]."""

    top_k: int | None
    """Keep the k most likely tokens (ties at the k-th all kept); 0 = off. Default 0; range [0, 2^32)."""

    top_p: float | None
    """Nucleus sampling: keep the smallest most-likely set with probability >= top_p; 1.0 = off.
    Default 1.0; range (0, 1]."""

    min_p: float | None
    """Keep tokens at least min_p times as likely as the most likely one; 0 = off. Default 0.0;
    range [0, 1]."""

    repetition_penalty: float | None
    """CTRL/transformers penalty over prompt and generated tokens; 1.0 = off. Default 1.0; range
    (0, +inf), finite."""

    presence_penalty: float | None
    """OpenAI-style: subtracted once from the logit of every token generated so far. Default 0.0;
    range [-2, 2]."""

    frequency_penalty: float | None
    """OpenAI-style: subtracted from a token's logit once per time it was generated. Default 0.0;
    range [-2, 2]."""

    logit_bias: Mapping[int, float] | None
    """Additive bias on raw logits, {token_id: bias}. Keys in [0, vocab_size), values in
    [-100, 100], at most 1024 entries. Default: none."""

    # --- Length and stopping

    max_new_tokens: int | None
    """Most tokens to generate. Default 256; range [1, max_new_tokens_limit] (ModelInfo)."""

    min_new_tokens: int | None
    """Fewest tokens to generate (EOS, stop tokens and stop strings do not end it before). Default 0;
    range [0, max_new_tokens]."""

    stop: str | Sequence[str] | None
    """Stop string(s): generation ends when the text contains one, which the text leaves out.
    Default: none; at most 16 strings of 1 to 256 characters."""

    stop_token_ids: Sequence[int] | None
    """Generation ends after one of these tokens (kept in token_ids, not in the text). Default: none;
    at most 1024 ids, each in [0, vocab_size)."""

    ignore_eos: bool
    """True: end-of-sequence tokens do not end generation. Default False."""

    # --- Logprobs and bookkeeping

    top_logprobs: int
    """Most likely alternatives returned with every token (raw distribution). Default 0; range [0, 20]."""

    sample_index: int
    """Which of the seed's independent streams to draw, keyed by (seed, sample_index). Default 0;
    range [0, 2^32)."""

    request_id: str
    """A label echoed in the response and the server log. Default "": the `x-request-id` metadata,
    else one the server makes up. At most 128 printable characters."""

    # --- Evaluation features

    n: int | None
    """How many samples; sample j draws the stream (seed, sample_index + j), and result.samples holds
    them all. Default 1; range [1, 64], at most the server's max_queue."""

    echo_prompt_logprobs: bool
    """True: the result also carries the prompt's token ids and their raw logprobs. Changes no
    generated token. Default False."""

    logprobs_mode: str
    """The distribution of the returned logprobs: "raw" (the model's) or "processed" (the one the
    token was drawn from). Changes no token. Default "" = "raw"."""

    # --- Resuming a stream

    resume_token_ids: Sequence[int] | None
    """The first tokens of this request's stream, already held (e.g. from a broken stream; the
    request must otherwise be the original one, with the seed it reported). The server checks them
    and goes on with the next token. Default: none (a fresh stream). generate_stream resumes on its
    own (see ResumePolicy); this is for doing it by hand."""


# The option names, for checking keyword arguments at run time.
GENERATE_OPTION_NAMES = frozenset(GenerateOptions.__annotations__)
