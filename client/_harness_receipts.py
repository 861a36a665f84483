"""The receipts of an lm-eval run, gathered from every call and summarised for lm-eval's results JSON."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any

from ._harness_requests import canonical

if TYPE_CHECKING:
    from .types import GenerateResult, Receipt

# The receipt fields that name the server's build (model, dtype, device, engine).
_BUILD_FIELDS = ("model_id", "model_sha256", "model_identity", "dtype", "device", "engine_version")


class RunReceipts:
    """Receipts gathered during a run, thread-safe; summarised for lm-eval's results JSON."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.builds: dict[str, dict[str, str]] = {}
        self.sampler_versions: set[str] = set()
        self.generations: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()

    def _build(self, receipt: Receipt) -> None:
        # Score receipts carry no sampler version (no sampling involved); generation receipts do.
        build = {name: getattr(receipt, name) for name in _BUILD_FIELDS}
        self.builds.setdefault(canonical(build), build)
        if receipt.sampler_version:
            self.sampler_versions.add(receipt.sampler_version)

    def add_generation(self, key: str, result: GenerateResult) -> None:
        receipt = result.receipt
        with self._lock:
            self.counts["generate_until"] += 1
            if receipt is None:
                return
            self._build(receipt)
            self.generations.append(
                {"request": key, "seed": receipt.seed, "sample_index": receipt.sample_index, "digest": receipt.digest}
            )

    def add_scores(self, kind: str, count: int, receipt: Receipt | None) -> None:
        with self._lock:
            self.counts[kind] += count
            if receipt is not None:
                self._build(receipt)

    def summary(self) -> dict[str, Any]:
        """The builds, sampler versions, request counts and generation receipts (sorted: independent of
        order and concurrency), and a digest over what decides the tokens (all but the model's name)."""
        with self._lock:
            builds = [self.builds[k] for k in sorted(self.builds)]
            generations = sorted(self.generations, key=lambda g: (g["request"], g["sample_index"], g["digest"]))
            counts = dict(sorted(self.counts.items()))
            samplers = sorted(self.sampler_versions)
        determining = [{k: v for k, v in b.items() if k != "model_id"} for b in builds]
        digest = hashlib.sha256(
            canonical({"builds": determining, "sampler_versions": samplers, "generations": generations}).encode()
        ).hexdigest()
        return {
            "builds": builds,
            "sampler_versions": samplers,
            "requests": counts,
            "generate_until": generations,
            "receipts_digest": digest,
        }
