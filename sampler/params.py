"""Sampling parameters of one request: a frozen value type with range checks."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SEED_LIMIT = 2**64
TEMPERATURE_MAX = 100.0
PENALTY_LIMIT = 2.0
BIAS_LIMIT = 100.0


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class SamplingParamError(ValueError):
    """A parameter out of range. `field` is the SamplingParams field at fault; the message starts
    with it (or with the entry, e.g. `logit_bias[7]`), then the value and what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _out_of_range(name: str, value: object, allowed: str, field: str | None = None) -> SamplingParamError:
    return SamplingParamError(field or name, f"{name}={value!r} is out of range: allowed {allowed}")


def _check_real(
    name: str, value: Any, lo: float, hi: float, lo_open: bool, hi_open: bool, text: str, field: str | None = None
) -> None:
    """Raise unless `value` is a finite real number inside the interval."""
    if not _is_real(value) or not math.isfinite(value):
        raise _out_of_range(name, value, text, field)
    above = value > lo if lo_open else value >= lo
    below = value < hi if hi_open else value <= hi
    if not (above and below):
        raise _out_of_range(name, value, text, field)


def _normalise_bias(bias: Any) -> tuple[Any, ...]:
    """Mapping or pairs -> tuple of (token_id, bias) pairs sorted by token id (left as is if not sortable)."""
    if bias is None:
        return ()
    items = list(bias.items()) if isinstance(bias, Mapping) else list(bias)
    try:
        pairs = [(k, float(v)) if _is_real(v) else (k, v) for k, v in items]
        return tuple(sorted(pairs, key=lambda kv: kv[0]))
    except (TypeError, ValueError):
        return tuple(tuple(kv) if isinstance(kv, (list, tuple)) else kv for kv in items)


@dataclass(frozen=True)
class SamplingParams:
    """How one row is sampled; see the package docstring for the exact semantics."""

    temperature: float = 1.0  # 0 => greedy (argmax, lowest token id wins ties)
    top_k: int = 0  # 0 => off
    top_p: float = 1.0  # 1.0 => off, allowed (0, 1]
    min_p: float = 0.0  # 0 => off, allowed [0, 1]
    repetition_penalty: float = 1.0  # CTRL/transformers semantics over prompt + generated tokens
    presence_penalty: float = 0.0  # OpenAI semantics over generated tokens, [-2, 2]
    frequency_penalty: float = 0.0  # OpenAI semantics over generated tokens, [-2, 2]
    logit_bias: tuple[tuple[int, float], ...] = ()  # also accepts a Mapping[int, float]
    seed: int | None = None  # [0, 2**64); None => the sampler draws one from `secrets`

    def __post_init__(self) -> None:
        object.__setattr__(self, "logit_bias", _normalise_bias(self.logit_bias))

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise SamplingParamError (a ValueError) naming the field, its value and the allowed range."""
        _check_real(
            "temperature", self.temperature, 0.0, TEMPERATURE_MAX, False, False, f"[0, {TEMPERATURE_MAX:g}], finite"
        )
        if not _is_int(self.top_k) or self.top_k < 0:
            raise _out_of_range("top_k", self.top_k, "an integer >= 0 (0 = off)")
        _check_real("top_p", self.top_p, 0.0, 1.0, True, False, "(0, 1], finite")
        _check_real("min_p", self.min_p, 0.0, 1.0, False, False, "[0, 1], finite")
        _check_real("repetition_penalty", self.repetition_penalty, 0.0, math.inf, True, True, "(0, inf), finite")
        for field in ("presence_penalty", "frequency_penalty"):
            _check_real(
                field,
                getattr(self, field),
                -PENALTY_LIMIT,
                PENALTY_LIMIT,
                False,
                False,
                f"[-{PENALTY_LIMIT:g}, {PENALTY_LIMIT:g}], finite",
            )
        self._validate_bias(vocab_size)
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < SEED_LIMIT):
            raise _out_of_range("seed", self.seed, "None or an integer in [0, 2**64)")

    def _validate_bias(self, vocab_size: int | None) -> None:
        ids_allowed = f"[0, {vocab_size})" if vocab_size is not None else "[0, vocab_size)"
        seen = set()
        for pair in self.logit_bias:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise SamplingParamError("logit_bias", f"logit_bias entry {pair!r} is not a (token_id, bias) pair")
            token, bias = pair
            if not _is_int(token) or token < 0 or (vocab_size is not None and token >= vocab_size):
                raise _out_of_range("logit_bias token id", token, f"integers in {ids_allowed}", "logit_bias")
            if token in seen:
                raise SamplingParamError(
                    "logit_bias", f"logit_bias token id {token} appears twice: allowed once per token"
                )
            seen.add(token)
            _check_real(
                f"logit_bias[{token}]",
                bias,
                -BIAS_LIMIT,
                BIAS_LIMIT,
                False,
                False,
                f"[-{BIAS_LIMIT:g}, {BIAS_LIMIT:g}], finite",
                "logit_bias",
            )
