"""lm-eval's requests as seedstream requests: request keys, seeds derived from content, generation kwargs.

Needs no lm-eval: client/harness.py registers the backend that uses these.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

SEED_POLICY = "seedstream-lm-eval/v1"  # changes whenever derive_seed() would give other seeds

# Generation kwargs that map onto GenerateRequest fields of the same meaning.
SAMPLING_KWARGS = {
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "repetition_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
}
# Generation kwargs harmless to ignore (they do not change the tokens); others unknown are warned about.
IGNORED_KWARGS = {
    "num_beams",
    "use_cache",
    "return_dict_in_generate",
    "output_scores",
    "skip_special_tokens",
    "spaces_between_special_tokens",
}
# lm-eval's names for the token limit, in the order they are looked up.
_LIMIT_NAMES = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens")


def as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def canonical(value: Any) -> str:
    """A stable JSON text of generation kwargs (keys sorted; anything odd as its str)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def request_key(context: str, gen_kwargs: dict[str, Any]) -> str:
    """Hex SHA-256 naming a generate_until request by its content."""
    return hashlib.sha256(canonical({"context": context, "gen_kwargs": gen_kwargs}).encode("utf-8")).hexdigest()


def derive_seed(base_seed: int, context: str, gen_kwargs: dict[str, Any]) -> int:
    """The seed of a request whose task gave none: a function of the base seed and the content only."""
    material = f"{SEED_POLICY}\x00{int(base_seed)}\x00{request_key(context, gen_kwargs)}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "little")


def normalize_gen_kwargs(gen_kwargs: dict[str, Any], default_max_gen_toks: int) -> dict[str, Any]:
    """Generation kwargs as this backend uses them, following lm-eval's conventions.

    - `until`: a string or list of stop strings (empty strings dropped);
    - the token limit: max_gen_toks, else max_new_tokens, max_tokens, max_completion_tokens;
    - `do_sample` false means greedy (temperature 0); without `do_sample`, a temperature > 0
      means sampling; `do_sample` true without a temperature samples at temperature 1.0.
    """
    kwargs = dict(gen_kwargs or {})
    until = _stop_strings(kwargs.pop("until", None))
    limit = None
    for name in _LIMIT_NAMES:
        value = kwargs.pop(name, None)
        if limit is None and value is not None:
            limit = int(value)
    temperature = _temperature(kwargs.pop("do_sample", None), kwargs.pop("temperature", None))
    out: dict[str, Any] = {
        "until": until,
        "max_gen_toks": limit if limit is not None else int(default_max_gen_toks),
        "temperature": temperature,
    }
    seed = kwargs.pop("seed", None)
    if seed is not None:
        out["seed"] = int(seed)
    for name, cast in SAMPLING_KWARGS.items():
        if kwargs.get(name) is not None:
            out[name] = cast(kwargs.pop(name))
    out["_other"] = kwargs
    return out


def _stop_strings(until: Any) -> list[str]:
    if until is None:
        return []
    if isinstance(until, str):
        until = [until]
    return [u for u in until if isinstance(u, str) and u]


def _temperature(do_sample: Any, temperature: Any) -> float:
    if do_sample is None:
        return float(temperature or 0.0)
    if not as_bool(do_sample):
        return 0.0
    return 1.0 if temperature is None else float(temperature)


def truncate_at_stops(text: str, until: Sequence[str]) -> str:
    """`text` cut at the first of each stop string in turn (stops the server was not sent apply here)."""
    for stop in until:
        cut = text.find(stop)
        if cut >= 0:
            text = text[:cut]
    return text
