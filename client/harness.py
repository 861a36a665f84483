"""lm-evaluation-harness backend: run lm-eval's own CLI against a seedstream server.

lm-eval (0.4.x) has no plugin entry point for models, so this module provides
the supported command instead. `seedstream-lm-eval` (or
`python -m seedstream.client.harness`) registers the model name `seedstream`
with lm-eval's registry and then runs lm-eval's CLI with the remaining
arguments, unchanged:

    seedstream-lm-eval --model seedstream \\
        --model_args target=127.0.0.1:50051,concurrency=8,seed=1234 \\
        --tasks seedstream_tiny --include_path tests/eval/tasks \\
        --log_samples --output_path results/

Model arguments (all optional):

    target          host:port of the server (default $SEEDSTREAM_TARGET, else localhost:50051)
    concurrency     RPCs in flight at once (default 8); results never depend on it
    seed            base seed (default 1234). A generate_until request whose task gives no
                    `seed` gets one derived from the base seed and the request's content
                    (context and generation kwargs), never from its position, so order and
                    concurrency cannot change it. Identical requests (a task's `repeats`)
                    share that seed and draw samples 0, 1, 2, ... of it.
    score_batch     (context, continuation) pairs per Score call (default 32)
    max_gen_toks    default max_gen_toks when a task gives none (default 256)
    max_length      window length of loglikelihood_rolling and the longest scored pair
                    (default: the model's context length minus one)
    timeout         per-call deadline in seconds (default 600)
    max_retries     retries on UNAVAILABLE / RESOURCE_EXHAUSTED (default 8), with
                    exponential backoff from `backoff` seconds (default 0.5) up to
                    `max_backoff` (default 30)
    secure          use TLS with the system roots (default false); root_certificates=PATH
                    for a private CA
    transcript      append one transcript record per request to this file (JSON Lines,
                    docs/transcripts.md; `seedstream verify FILE` replays it). score_batch then
                    defaults to 1, so that each loglikelihood request is a Score call of its own

Receipts: lm-eval writes `get_model_info()` into the results JSON under
`config`; this backend puts a `seedstream` entry there with the server build
(model hash, dtype, device kind, engine and sampler versions), the seed policy,
one receipt per generate_until request (request key, seed, sample index,
receipt digest; sorted, so independent of order and concurrency) and a digest
over all of it. Two runs whose `receipts_digest` are equal were promised
identical generations.

Importing this module imports lm_eval; `seedstream.client` itself never does.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import lm_eval.models  # noqa: F401  (fills the registry with lm-eval's own models first)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from seedstream.v1 import protocol

from ._harness_pool import map_in_order, retrying
from ._harness_receipts import RunReceipts
from ._harness_requests import (
    IGNORED_KWARGS,
    SEED_POLICY,
    as_bool,
    derive_seed,
    normalize_gen_kwargs,
    request_key,
    truncate_at_stops,
)
from .client import Client
from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance

    from .types import GenerateResult

__all__ = ["MODEL_NAME", "SEED_POLICY", "SeedstreamLM", "derive_seed", "main", "normalize_gen_kwargs", "request_key"]

log = logging.getLogger("seedstream.harness")

MODEL_NAME = "seedstream"

T = TypeVar("T")

# A generate_until request as _generate_one takes it: (context, gen_kwargs, request key, sample index).
_Job = tuple[str, dict[str, Any], str, int]
# What lm-eval passes to every model and means nothing here.
_LM_EVAL_ARGS = ("batch_size", "max_batch_size", "device")


@register_model(MODEL_NAME)
class SeedstreamLM(LM):  # type: ignore[misc]  # lm-eval has no type information: LM is Any
    """An lm-eval model that sends every request to a seedstream server over gRPC."""

    def __init__(
        self,
        target: str | None = None,
        concurrency: int = 8,
        seed: int = 1234,
        score_batch: int | None = None,
        max_gen_toks: int = 256,
        max_length: int | None = None,
        timeout: float = 600.0,
        max_retries: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        secure: bool = False,
        root_certificates: str | None = None,
        transcript: str | None = None,
        client: Client | None = None,
        **unused: Any,
    ):
        super().__init__()
        _refuse_unknown(unused)
        self.concurrency = int(concurrency)
        self.base_seed = int(seed)
        # One Score call per loglikelihood request when recording: one transcript record per request.
        self.score_batch = int(score_batch) if score_batch is not None else (1 if transcript else 32)
        self.max_gen_toks = int(max_gen_toks)
        self.timeout = float(timeout) if timeout is not None else None
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._check_settings()
        self._own_client = client is None
        self.client = client or Client(
            target,
            timeout=self.timeout,
            secure=as_bool(secure),
            root_certificates=root_certificates,
            max_retries=0,  # _retrying() below retries RESOURCE_EXHAUSTED with its own, longer backoff
            transcript=transcript or None,
        )
        self.info = self._retrying(lambda: self.client.model_info())
        self._set_server_limits(max_length)
        self.receipts = RunReceipts()
        self._warned: set[str] = set()
        self._log_start()

    def _check_settings(self) -> None:
        for name in ("concurrency", "score_batch", "max_gen_toks"):
            if getattr(self, name) < 1:
                raise ValueError(f"seedstream: {name}={getattr(self, name)}; allowed >= 1")
        if not 0 <= self.base_seed < 2**64:
            raise ValueError(f"seedstream: seed={self.base_seed}; allowed [0, 2**64)")

    def _set_server_limits(self, max_length: int | None) -> None:
        """The scoring window and stop-string limits, from the server's model info."""
        limit = self.info.max_context - 1  # a scored pair of max_length + 1 tokens must fit the context
        self.max_length = min(int(max_length), limit) if max_length else limit
        if self.max_length < 2:
            raise ValueError(f"seedstream: max_length={max_length}; allowed >= 2")
        # The server's stop-string limits; stops past them are applied here, after the fact. A server
        # too old to report them (0) has the limits this client was built with.
        self.max_stop_strings = getattr(self.info, "max_stop_strings", 0) or protocol.MAX_STOP_STRINGS
        self.max_stop_chars = getattr(self.info, "max_stop_string_chars", 0) or protocol.MAX_STOP_STRING_CHARS

    def _log_start(self) -> None:
        log.info(
            "seedstream backend: %s, model %s (%s, %s/%s), concurrency %d, base seed %d",
            self.client.target,
            self.info.model_id,
            self.info.model_sha256[:12],
            self.info.device,
            self.info.dtype,
            self.concurrency,
            self.base_seed,
        )

    # --- plumbing

    def _retrying(self, call: Callable[[], T]) -> T:
        return retrying(call, self.max_retries, self.backoff, self.max_backoff)

    def _map(self, fn: Callable[[Any], T], items: Sequence[Any], desc: str) -> list[T]:
        return map_in_order(fn, items, self.concurrency, desc)

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning(message)

    # --- lm-eval's request types

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [tuple(req.args) for req in requests]
        batches = [pairs[i : i + self.score_batch] for i in range(0, len(pairs), self.score_batch)]

        def score(batch: list[tuple[Any, ...]]) -> list[tuple[float, bool]]:
            result = self._retrying(lambda: self.client.score(batch, truncate_context=True))
            self.receipts.add_scores("loglikelihood", len(batch), result.receipt)
            return [(r.logprob, r.is_greedy) for r in result]

        out = [item for batch in self._map(score, batches, "seedstream loglikelihood") for item in batch]
        for pair, item in zip(pairs, out):
            self.cache_hook.add_partial("loglikelihood", pair, item)
        return out

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        texts = [req.args[0] for req in requests]

        def score(text: str) -> float:
            result = self._retrying(lambda: self.client.score_rolling(text, max_length=self.max_length))
            self.receipts.add_scores("loglikelihood_rolling", 1, result.receipt)
            return result.logprob

        out = self._map(score, texts, "seedstream loglikelihood_rolling")
        for text, value in zip(texts, out):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), value)
        return out

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        jobs: list[_Job] = []
        occurrences: Counter[str] = Counter()
        for req in requests:
            context, gen_kwargs = req.args[0], req.args[1] if len(req.args) > 1 else {}
            key = request_key(context, gen_kwargs)
            # Identical requests (a task's `repeats`) are samples 0, 1, ... of one seed; which of
            # them is which does not matter, since they are the same request.
            sample_index = occurrences[key]
            occurrences[key] += 1
            jobs.append((context, gen_kwargs, key, sample_index))
        out = self._map(self._generate_one, jobs, "seedstream generate_until")
        for (context, gen_kwargs, _, _), text in zip(jobs, out):
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return out

    def _generate_one(self, job: _Job) -> str:
        context, gen_kwargs, key, sample_index = job
        params, until = self._generate_params(context, gen_kwargs, sample_index)

        def call() -> GenerateResult:
            try:
                return self.client.generate(context, **params)
            except InvalidArgumentError as exc:
                if exc.field != "prompt":
                    raise
            # The prompt does not fit: keep its last tokens, as lm-eval's HF backend does.
            ids = self.client.tokenize(context).token_ids
            keep = max(1, self.info.max_context - params["max_new_tokens"])
            return self.client.generate(prompt_token_ids=list(ids[-keep:]), **params)

        result = self._retrying(call)
        self.receipts.add_generation(key, result)
        return truncate_at_stops(result.text, until)

    def _generate_params(
        self, context: str, gen_kwargs: dict[str, Any], sample_index: int
    ) -> tuple[dict[str, Any], list[str]]:
        """`Client.generate`'s kwargs for a generate_until request, and all of its stop strings (the server
        is sent those within its limits)."""
        kw = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        for name in kw.pop("_other"):
            if name not in IGNORED_KWARGS:
                self._warn_once(f"seedstream: generation kwarg {name!r} is not supported and is ignored")
        until = kw.pop("until")
        seed = kw.pop("seed", None)
        if seed is None:
            seed = derive_seed(self.base_seed, context, gen_kwargs)
        stops = [s for s in until if len(s) <= self.max_stop_chars][: self.max_stop_strings]
        limit = getattr(self.info, "max_new_tokens_limit", None)
        max_new = kw.pop("max_gen_toks")
        params = dict(
            seed=seed,
            sample_index=sample_index,
            temperature=kw.pop("temperature"),
            max_new_tokens=min(max_new, limit) if limit else max_new,
            stop=stops or None,
            **kw,
        )
        return params, until

    # --- what lm-eval writes into the results JSON's `config`

    def get_model_info(self) -> dict[str, Any]:
        return {
            "seedstream": {
                "target": self.client.target,
                "model": self.info.to_dict(),
                "base_seed": self.base_seed,
                "seed_policy": SEED_POLICY,
                "max_length": self.max_length,
                "receipts": self.receipts.summary(),
            }
        }

    @property
    def tokenizer_name(self) -> str:
        # lm-eval keys its cache of chat-templated requests on this: the identity covers the tokenizer and
        # template (an older server reports none, and its weights' hash is the best there is).
        return f"seedstream:{self.info.model_identity or self.info.model_sha256}"

    def __del__(self) -> None:
        if getattr(self, "_own_client", False):
            try:
                self.client.close()
            except Exception:
                pass


def _refuse_unknown(model_args: dict[str, Any]) -> None:
    unknown = {k: v for k, v in model_args.items() if k not in _LM_EVAL_ARGS}
    if unknown:
        raise ValueError(
            f"seedstream: unknown model_args {sorted(unknown)}; see `python -m seedstream.client.harness --help-model`"
        )


def main(argv: Sequence[str] | None = None) -> None:
    """`seedstream-lm-eval ARGS`: lm-eval's CLI with the `seedstream` model registered.

    Arguments are lm-eval's own; `--model seedstream` is added when no model is named.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--help-model":
        print(__doc__)
        return
    named = any(a in ("--model", "-M") or a.startswith("--model=") for a in args)
    helping = any(a in ("-h", "--help") for a in args)
    if args and not named and not helping:
        if args[0] == "run":
            args = ["run", "--model", MODEL_NAME] + args[1:]
        elif args[0] not in ("ls", "validate"):
            args = ["--model", MODEL_NAME] + args
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["seedstream-lm-eval"] + args
    cli_evaluate()


if __name__ == "__main__":
    main()
