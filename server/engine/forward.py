"""ForwardModel: what the engine and the runner call on a model (model.DecoderModel, kernel_model.KernelModel)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from .kv_cache import SequenceKVCache
from .model import Segment


class ForwardModel(Protocol):
    """A forward pass over packed rows of many sequences, each with its own KV cache; checked by mypy
    structurally against both models (backends.build_model returns either as this)."""

    @property
    def version_tag(self) -> str:
        """engine_version's model part: what determines the bits of its logits."""
        ...

    @property
    def kv_dtype(self) -> torch.dtype: ...

    @property
    def draft_row_cost(self) -> float:
        """One more row's price, as a fraction of a one-row step (scheduler.draft_threshold)."""
        ...

    def new_cache(self) -> SequenceKVCache: ...

    def release_scratch(self) -> None:
        """Free what the steps so far keep for the next one (called when no sequence is running); the logits of
        later steps are the same bits."""
        ...

    def forward(
        self, token_ids: torch.Tensor, positions: torch.Tensor, segments: Sequence[Segment], logit_rows: torch.Tensor
    ) -> torch.Tensor:
        """token_ids, positions: [T]; segments: each sequence's run of rows, in row order; logit_rows: [R]
        ascending -> logits [R, V] float32. Each row's bits do not depend on the others in the step."""
        ...
