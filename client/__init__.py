"""seedstream client: talk to a seedstream server over gRPC.

Needs only grpcio and protobuf (no torch):

    from seedstream.client import Client

    with Client("localhost:50051") as client:
        result = client.generate("The capital of France is", seed=42, max_new_tokens=16)
        print(result.text, result.seed, result.finish_reason)

See Client, AsyncClient, GenerateOptions (the generation options, documented once), and the
result types in seedstream.client.types.
"""

from ._resume import ResumePolicy
from .aio import AsyncClient, AsyncGenerateStream
from .client import Client, GenerateStream
from .errors import (
    CancelledError,
    DeadlineExceededError,
    InvalidArgumentError,
    OverloadedError,
    SeedstreamError,
    UnauthenticatedError,
    UnavailableError,
)
from .options import GenerateOptions
from .types import (
    EffectiveSampling,
    FinishReason,
    GenerateChunk,
    GenerateResult,
    HealthStatus,
    ModelInfo,
    Receipt,
    RollingScore,
    ScoreResult,
    ScoreResults,
    TokenizeResult,
    TopLogprob,
    join_chunks,
    receipts_match,
)

__all__ = [
    "AsyncClient",
    "AsyncGenerateStream",
    "Client",
    "GenerateOptions",
    "GenerateStream",
    "ResumePolicy",
    "SeedstreamError",
    "InvalidArgumentError",
    "OverloadedError",
    "UnavailableError",
    "DeadlineExceededError",
    "CancelledError",
    "UnauthenticatedError",
    "EffectiveSampling",
    "FinishReason",
    "GenerateChunk",
    "GenerateResult",
    "HealthStatus",
    "ModelInfo",
    "Receipt",
    "TokenizeResult",
    "TopLogprob",
    "join_chunks",
    "receipts_match",
    "RollingScore",
    "ScoreResult",
    "ScoreResults",
]
