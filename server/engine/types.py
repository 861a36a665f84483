"""Domain types shared by the engine and the layers that call it (no gRPC here)."""

from __future__ import annotations

import dataclasses

from seedstream.sampler import SamplingParams
from seedstream.v1.protocol import FinishReason as FinishReason  # the contract's reasons, shared with the client


class EngineError(Exception):
    """Base class for errors the engine reports to its callers."""


class ParamError(EngineError, ValueError):
    """A request field is out of range or unusable.

    `field` names it ("temperature", "messages[0].role", ...): callers report it as a typed field
    (a gRPC BadRequest FieldViolation, an OpenAI `param`), never by parsing the message. The message
    starts with the field's name and says what is allowed.
    """

    def __init__(self, field: str, message: str):
        super().__init__(message if message.startswith(field) else f"{field}: {message}")
        self.field = field


class Overloaded(EngineError):
    """The admission queue is full; retry later."""


class NotReady(EngineError):
    """The engine is still loading, or is shutting down."""


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """One generation: token ids in, a seeded token stream out."""

    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams  # seed always resolved (never None) by the time it reaches the engine
    max_new_tokens: int = 256
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    top_logprobs: int = 0  # number of top alternatives per generated token, 0..20
    sample_index: int = 0  # j of n samples: the random stream is keyed by (seed, j)
    prompt_logprobs: bool = False  # echo: return each prompt token's logprob (the first has none)
    request_id: str = ""
    # Chosen-token logprobs under the "raw" model distribution (log_softmax of the logits) or the
    # "processed" one the token was drawn from (penalties, bias, temperature, truncation applied;
    # 0.0 when greedy). Top alternatives are always raw. Does not change the tokens.
    logprobs_mode: str = "raw"
    # Who asked (an API key's name, or a peer address; opaque to the engine): waiting requests are
    # admitted round-robin over clients. Scheduling only: never changes a token, not in the receipt.
    client: str = ""
    # Resuming a stream: the first tokens of this request's stream, which the caller already holds.
    # The engine checks each against what the seed produces and continues after the last one; the
    # stream and its receipt are those of the uninterrupted run. Empty: a fresh stream.
    resume_token_ids: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class ScoreRequest:
    """Log-likelihood of `continuation_ids` given `context_ids` (the harness's loglikelihood)."""

    context_ids: tuple[int, ...]  # at least one token
    continuation_ids: tuple[int, ...]  # at least one token
    request_id: str = ""
    client: str = ""  # see GenerationRequest.client


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    logprobs: tuple[float, ...]  # per continuation token, under the raw model distribution
    greedy_ids: tuple[int, ...]  # argmax at each continuation position (lowest id on ties)
    is_greedy: bool  # greedy decoding would have produced exactly the continuation
    cached_tokens: int = 0  # context positions taken from the prefix cache instead of computed

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))


@dataclasses.dataclass(frozen=True)
class TopLogprob:
    token_id: int
    text: str
    logprob: float


@dataclasses.dataclass
class GenerationChunk:
    """A delta of a stream; the last one has finish_reason set.

    Concatenating every chunk's `text` gives exactly the unary text; likewise
    for `token_ids` and `logprobs`.
    """

    token_ids: list[int]
    text: str
    logprobs: list[float]
    top_logprobs: list[list[TopLogprob]] = dataclasses.field(default_factory=list)
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # running total of generated tokens, including this chunk
    prompt_logprobs: list[float | None] | None = None  # first chunk only, when asked: None for token 0
    cached_tokens: int = 0  # prompt positions taken from the prefix cache instead of computed
    # With prompt_logprobs and top_logprobs > 0: each prompt token's top alternatives (raw), None for token 0.
    prompt_top_logprobs: list[list[TopLogprob] | None] | None = None


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a harness needs to know to replay a run."""

    model_id: str
    model_sha256: str  # content hash of the weights as loaded
    dtype: str
    device: str  # device kind: "cpu" or "cuda"
    vocab_size: int
    max_context: int
    eos_token_ids: tuple[int, ...]
    engine_version: str
    sampler_version: str
    weight_format: str = "float32"  # f32, q8_0 or q4_1 on the kernels; the torch dtype's name on the torch path
    # Hex SHA-256 over the weights, config, generation config, tokenizer and chat template (engine/identity.py).
    model_identity: str = ""
