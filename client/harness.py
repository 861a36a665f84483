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

import concurrent.futures
import hashlib
import json
import logging
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import lm_eval.models  # noqa: F401  (fills the registry with lm-eval's own models first)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from seedstream.v1 import protocol

from .client import Client
from .errors import InvalidArgumentError, OverloadedError, UnavailableError

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance

    from .types import GenerateResult, Receipt

log = logging.getLogger("seedstream.harness")

MODEL_NAME = "seedstream"
SEED_POLICY = "seedstream-lm-eval/v1"  # changes whenever derive_seed() would give other seeds

T = TypeVar("T")

# A generate_until request as _generate_one takes it: (context, gen_kwargs, request key, sample index).
_Job = tuple[str, dict[str, Any], str, int]

# Generation kwargs that map onto GenerateRequest fields of the same meaning.
_SAMPLING_KWARGS = {
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "repetition_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
}
# Generation kwargs handled separately, or harmless to ignore (they do not change the tokens).
_HANDLED_KWARGS = {
    "until",
    "max_gen_toks",
    "max_new_tokens",
    "max_tokens",
    "max_completion_tokens",
    "do_sample",
    "temperature",
    "seed",
}
_IGNORED_KWARGS = {
    "num_beams",
    "use_cache",
    "return_dict_in_generate",
    "output_scores",
    "skip_special_tokens",
    "spaces_between_special_tokens",
}


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _canonical(value: Any) -> str:
    """A stable JSON text of generation kwargs (keys sorted; anything odd as its str)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def request_key(context: str, gen_kwargs: dict[str, Any]) -> str:
    """Hex SHA-256 naming a generate_until request by its content."""
    return hashlib.sha256(_canonical({"context": context, "gen_kwargs": gen_kwargs}).encode("utf-8")).hexdigest()


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
    until = kwargs.pop("until", None)
    if until is None:
        until = []
    elif isinstance(until, str):
        until = [until]
    until = [u for u in until if isinstance(u, str) and u]
    limit = None
    for name in ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens"):
        value = kwargs.pop(name, None)
        if limit is None and value is not None:
            limit = int(value)
    do_sample = kwargs.pop("do_sample", None)
    temperature = kwargs.pop("temperature", None)
    if do_sample is None:
        temperature = float(temperature or 0.0)
    elif not _as_bool(do_sample):
        temperature = 0.0
    else:
        temperature = 1.0 if temperature is None else float(temperature)
    out: dict[str, Any] = {
        "until": until,
        "max_gen_toks": limit if limit is not None else int(default_max_gen_toks),
        "temperature": temperature,
    }
    seed = kwargs.pop("seed", None)
    if seed is not None:
        out["seed"] = int(seed)
    for name, cast in _SAMPLING_KWARGS.items():
        if kwargs.get(name) is not None:
            out[name] = cast(kwargs.pop(name))
    out["_other"] = kwargs
    return out


def _truncate_at_stops(text: str, until: Sequence[str]) -> str:
    for stop in until:
        cut = text.find(stop)
        if cut >= 0:
            text = text[:cut]
    return text


class _Receipts:
    """Receipts gathered during a run, thread-safe; summarised for lm-eval's results JSON."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.builds: dict[str, dict[str, str]] = {}
        self.sampler_versions: set[str] = set()
        self.generations: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()

    def _build(self, receipt: Receipt) -> None:
        # Score receipts carry no sampler version (no sampling involved); generation receipts do.
        build = {
            name: getattr(receipt, name)
            for name in ("model_id", "model_sha256", "model_identity", "dtype", "device", "engine_version")
        }
        self.builds.setdefault(_canonical(build), build)
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
        with self._lock:
            builds = [self.builds[k] for k in sorted(self.builds)]
            generations = sorted(self.generations, key=lambda g: (g["request"], g["sample_index"], g["digest"]))
            counts = dict(sorted(self.counts.items()))
            samplers = sorted(self.sampler_versions)
        determining = [{k: v for k, v in b.items() if k != "model_id"} for b in builds]
        digest = hashlib.sha256(
            _canonical({"builds": determining, "sampler_versions": samplers, "generations": generations}).encode()
        ).hexdigest()
        return {
            "builds": builds,
            "sampler_versions": samplers,
            "requests": counts,
            "generate_until": generations,
            "receipts_digest": digest,
        }


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
        # lm-eval passes batch_size / max_batch_size / device to every model; they mean nothing here.
        unused = {k: v for k, v in unused.items() if k not in ("batch_size", "max_batch_size", "device")}
        if unused:
            raise ValueError(
                f"seedstream: unknown model_args {sorted(unused)}; see `python -m seedstream.client.harness --help-model`"
            )
        self.concurrency = int(concurrency)
        self.base_seed = int(seed)
        # One Score call per loglikelihood request when recording: one transcript record per request.
        self.score_batch = int(score_batch) if score_batch is not None else (1 if transcript else 32)
        self.max_gen_toks = int(max_gen_toks)
        self.timeout = float(timeout) if timeout is not None else None
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        for name in ("concurrency", "score_batch", "max_gen_toks"):
            if getattr(self, name) < 1:
                raise ValueError(f"seedstream: {name}={getattr(self, name)}; allowed >= 1")
        if not 0 <= self.base_seed < 2**64:
            raise ValueError(f"seedstream: seed={self.base_seed}; allowed [0, 2**64)")
        self._own_client = client is None
        self.client = client or Client(
            target,
            timeout=self.timeout,
            secure=_as_bool(secure),
            root_certificates=root_certificates,
            max_retries=0,  # _retrying() below retries RESOURCE_EXHAUSTED with its own, longer backoff
            transcript=transcript or None,
        )
        self.info = self._retrying(lambda: self.client.model_info())
        limit = self.info.max_context - 1  # a scored pair of max_length + 1 tokens must fit the context
        self.max_length = min(int(max_length), limit) if max_length else limit
        if self.max_length < 2:
            raise ValueError(f"seedstream: max_length={max_length}; allowed >= 2")
        # The server's stop-string limits; stops past them are applied here, after the fact. A server
        # too old to report them (0) has the limits this client was built with.
        self.max_stop_strings = getattr(self.info, "max_stop_strings", 0) or protocol.MAX_STOP_STRINGS
        self.max_stop_chars = getattr(self.info, "max_stop_string_chars", 0) or protocol.MAX_STOP_STRING_CHARS
        self.receipts = _Receipts()
        self._warned: set[str] = set()
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
        """`call()`, retried on UNAVAILABLE and RESOURCE_EXHAUSTED with exponential backoff and jitter."""
        delay = self.backoff
        for attempt in range(self.max_retries + 1):
            try:
                return call()
            except (UnavailableError, OverloadedError) as exc:
                if attempt >= self.max_retries:
                    raise
                wait = min(self.max_backoff, delay) * (0.5 + random.random() / 2)
                log.warning(
                    "seedstream: %s (%s); retry %d/%d in %.1fs",
                    type(exc).__name__,
                    exc,
                    attempt + 1,
                    self.max_retries,
                    wait,
                )
                time.sleep(wait)
                delay *= 2
        raise AssertionError("unreachable")

    def _map(self, fn: Callable[[Any], T], items: Sequence[Any], desc: str) -> list[T]:
        """fn over items with `concurrency` calls in flight; results in the items' order."""
        if not items:
            return []
        progress = _progress(len(items), desc)
        results: list[Any] = [None] * len(items)
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
            try:
                for future in concurrent.futures.as_completed(futures):
                    results[futures[future]] = future.result()
                    progress.update(1)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            finally:
                progress.close()
        return results

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
        kw = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        for name in kw.pop("_other"):
            if name not in _IGNORED_KWARGS:
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
        return _truncate_at_stops(result.text, until)

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


class _Progress(Protocol):
    """What _map uses of a tqdm progress bar."""

    def update(self, n: int) -> object: ...

    def close(self) -> None: ...


def _progress(total: int, desc: str) -> _Progress:
    try:
        from tqdm import tqdm

        bar: _Progress = tqdm(total=total, desc=desc, disable=total < 2)
        return bar
    except ImportError:  # pragma: no cover - tqdm comes with lm-eval

        class _Null:
            def update(self, n: int) -> None:
                pass

            def close(self) -> None:
                pass

        return _Null()


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
