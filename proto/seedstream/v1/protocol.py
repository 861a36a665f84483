"""Facts of the seedstream.v1 contract that the server and the client share.

Hand-written, next to the generated modules (scripts/gen_proto.py leaves it alone). The server,
its settings and the client import these names from here; none keeps a copy of its own. Stdlib
only at import time (the settings and the engine import it): the protobuf module is loaded only
to convert a FinishReason to or from the wire.
"""

from __future__ import annotations

import enum
import functools

# The TextGeneration service's full name (health checks, reflection, retry policies);
# tests/client/test_proto_drift.py checks it against the proto's descriptor.
SERVICE_NAME = "seedstream.v1.TextGeneration"
DEFAULT_PORT = 50051

# Message sizes: the largest message anyone sends (responses: long completions with top_logprobs;
# the client sends and receives up to it), and the server's default cap on one request
# (the HTTP front caps a request body the same).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024

# ReproducibilityReceipt.receipt_version that this server writes. 1 was the receipt without model_identity
# (whose model_sha256 covers the weights alone); 2 adds model_identity, and the digest covers both fields.
RECEIPT_VERSION = 2

# Per-request list limits (GenerateRequest's comments state them; GetModelInfo reports the first two, and
# max_top_logprobs: the sampler's MAX_TOP_N, the most alternatives it ranks, which the client never needs).
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_STOP_TOKEN_IDS = 1024
MAX_LOGIT_BIAS = 1024  # entries per request (OpenAI allows 300); each costs sampler work every step

# GenerateRequest's proto3 `optional` fields (absent differs from zero: absent means the server's default).
# The sampling ones are named as SamplingParams names them; tests/client/test_proto_drift.py checks the
# whole list against the proto's descriptor.
OPTIONAL_SAMPLING_FIELDS = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
)
OPTIONAL_GENERATE_FIELDS = ("seed", *OPTIONAL_SAMPLING_FIELDS, "max_new_tokens", "min_new_tokens", "n")


class FinishReason(str, enum.Enum):
    """Why a completion ended. On the wire: the proto's FINISH_REASON_<NAME>."""

    LENGTH = "length"  # max_new_tokens reached, or the model's context is full
    STOP_STRING = "stop_string"  # a stop string appeared (not included in the text)
    STOP_TOKEN = "stop_token"  # a stop token was sampled (in token_ids, not in text)
    EOS = "eos"  # the model's end-of-sequence token was sampled
    CANCELLED = "cancelled"  # the caller went away, its deadline passed, or the server shut down

    def to_pb(self) -> int:
        """This reason's FinishReason value on the wire."""
        return _wire_values()[self]

    @classmethod
    def from_pb(cls, value: int) -> FinishReason | None:
        """The reason for a wire value; None for FINISH_REASON_UNSPECIFIED (not finished) or an unknown one."""
        return _reasons_by_wire_value().get(value)


@functools.cache
def _wire_values() -> dict[FinishReason, int]:
    from . import textgen_pb2 as pb  # here, not at the top: importing this module needs no protobuf

    return {reason: pb.FinishReason.Value(f"FINISH_REASON_{reason.name}") for reason in FinishReason}


@functools.cache
def _reasons_by_wire_value() -> dict[int, FinishReason]:
    return {value: reason for reason, value in _wire_values().items()}


def package_version(default: str = "unknown") -> str:
    """The installed seedstream distribution's version; `default` when it is not installed (a checkout)."""
    try:
        from importlib.metadata import version

        return version("seedstream")
    except Exception:
        return default
