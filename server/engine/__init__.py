"""The seedstream engine: model, KV caches, continuous batching; knows nothing of gRPC."""

from .config import EngineConfig
from .engine import Engine, load_engine
from .types import (
    EngineError,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    NotReady,
    Overloaded,
    ParamError,
    ScoreRequest,
    ScoreResult,
    TopLogprob,
)

__all__ = [
    "Engine",
    "EngineConfig",
    "load_engine",
    "EngineError",
    "FinishReason",
    "GenerationChunk",
    "GenerationRequest",
    "ModelInfo",
    "NotReady",
    "Overloaded",
    "ParamError",
    "ScoreRequest",
    "ScoreResult",
    "TopLogprob",
]
