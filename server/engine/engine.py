"""The engine: the request queues and the step loop (a thread), wiring the scheduler and the runner."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import cast

import torch

from seedstream.sampler import SAMPLER_VERSION
from seedstream.server.phases import phase

from .admission import FairQueue
from .apply import apply_step
from .backends import build_model
from .config import EngineConfig, resolve_device, resolve_dtype
from .loader import LoadedWeights, ProgressFn, load_weights
from .model import ModelConfig, describe
from .prefix_cache import PrefixCache
from .runner import ModelRunner
from .scheduler import StepBudget, admit, kv_tokens, plan_step
from .sequence import EngineSequence
from .speculation import SpeculationStats
from .text import TextCodec
from .types import (
    EngineError,
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    NotReady,
    Overloaded,
    ScoreRequest,
    ScoreResult,
)
from .validation import ValidRequest, ValidScore, require, validate_generation, validate_score

log = logging.getLogger("seedstream.engine")

ENGINE_ALGORITHM = "3"  # bump when any change can alter a sequence's logits
IDLE_RELEASE_S = 0.5  # with no sequence to run for this long, the engine gives back its steps' memory


class Engine:
    """Owns the model, the sequences and the step loop (a background thread)."""

    def __init__(self, weights: LoadedWeights, config: EngineConfig):
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.model_config = ModelConfig.from_hf(weights.config)
        # the loader gives the weights under canonical names, every option folded in (arch.py), read lazily
        self.model, weight_format = build_model(weights, config, self.model_config, self.device, self.dtype)
        # Prefill equals decode bit for bit on both paths: the chunk size and the scheduling are not part of it.
        forward_tag = self.model.version_tag
        self.tokenizer = weights.tokenizer
        self.eos_token_ids = frozenset(weights.generation_eos)
        self.text = TextCodec(self.tokenizer, self.eos_token_ids)
        self.info = ModelInfo(
            model_id=weights.model_id,
            model_sha256=weights.content_sha256,
            model_identity=weights.model_identity,
            dtype=str(self.dtype).removeprefix("torch."),
            device=self.device.type,
            vocab_size=self.model_config.vocab_size,
            max_context=self.model_config.max_context,
            eos_token_ids=tuple(sorted(self.eos_token_ids)),
            engine_version=f"{ENGINE_ALGORITHM}.{forward_tag}",
            weight_format=weight_format,
            sampler_version=SAMPLER_VERSION,
        )
        self._lock = threading.Condition()
        self._waiting = FairQueue()  # per-client FIFOs, admitted round-robin
        self._running: list[EngineSequence] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.failure: BaseException | None = None  # what killed the engine thread, if anything did
        self._death_callbacks: list[Callable[[BaseException], object]] = []
        self.prefix_cache = PrefixCache(int(config.prefix_cache_mib * 2**20))
        self.budget = StepBudget.from_config(config, self.info.max_context, self.model.draft_row_cost)
        self.runner = ModelRunner(self.model, self.device, self.prefix_cache)
        self.draft_tokens = 0  # tokens drafted by speculation so far
        self.accepted_tokens = 0  # of those, the ones the seeded sampler drew too (kept)
        self.memory_releases = 0  # bursts after which the engine, idle, gave back its steps' memory
        # Called on the engine thread after each step with (seconds, token rows): metrics hook in here.
        self.step_listeners: list[Callable[[float, int], None]] = []
        log.info(
            "model %s: %s on %s/%s", self.info.model_id, describe(self.model_config), self.info.device, self.info.dtype
        )
        c = self.model_config
        per_token = 2 * c.num_layers * c.num_kv_heads * c.head_dim * torch.finfo(self.model.kv_dtype).bits // 8
        log.info(
            "KV-cache budget: %d token positions (about %.1f GiB)",
            config.max_kv_tokens,
            config.max_kv_tokens * per_token / 2**30,
        )

    # --- text (the RPC layer turns text and chat into token ids through these; text.py does the work)

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.text.tokenize(text, add_special_tokens)

    def render_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return self.text.render_chat(messages)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of a (context, continuation) pair, split the way lm-evaluation-harness does."""
        return self.text.encode_pair(context, continuation)

    @property
    def prefix_token_id(self) -> int:
        return self.text.prefix_token_id

    def decode(self, token_ids: Iterable[int]) -> str:
        return self.text.decode(token_ids)

    def validate(
        self, request: GenerationRequest, n: int = 1, echo_every_sample: bool = False
    ) -> tuple[ValidRequest, ...]:
        """The n samples of `request`, checked once (validation.validate_generation): what generate() runs."""
        return validate_generation(request, n, self.info, self.config, self.eos_token_ids, echo_every_sample)

    def validate_score(self, request: ScoreRequest) -> ValidScore:
        """`request`, checked once (validation.validate_score): what score() runs."""
        return validate_score(request, self.info)

    # --- lifecycle

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping and self.failure is None

    async def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="seedstream-engine", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def on_death(self, callback: Callable[[BaseException], object]) -> None:
        """Call `callback(exc)` (on the engine thread) if the engine thread dies of an exception."""
        self._death_callbacks.append(callback)

    def cancel_all(self) -> int:
        """Cancel every sequence on the server's behalf (shutdown grace period over): generations end
        with FinishReason.CANCELLED, scoring fails with NotReady. Returns how many were cancelled."""
        with self._lock:
            waiting = self._waiting.remove_if(lambda s: True)
            running = [s for s in self._running if not s.finished]
            for seq in running:
                seq.cancelled = True  # the step loop posts the CANCELLED chunk at its next step
            self._lock.notify_all()
        for seq in waiting:
            seq.finish_cancelled()
        return len(waiting) + len(running)

    def load(self) -> dict[str, int]:
        """Sequences holding a slot and waiting for one (a finished sequence no longer counts, even
        before the engine thread drops it at the end of its step)."""
        with self._lock:
            return {"running": sum(not s.finished for s in self._running), "waiting": len(self._waiting)}

    def kv_usage(self) -> dict[str, int]:
        """KV-cache positions of the running sequences: filled now, reserved by admission (prompt +
        max_new_tokens each), and the admission budget (max_kv_tokens)."""
        with self._lock:
            running = [s for s in self._running if not s.finished]
            return {
                "used": sum(s.cache.length for s in running),
                "reserved": sum(kv_tokens(s, self.info.max_context) for s in running),
                "budget": self.config.max_kv_tokens,
            }

    def speculation(self) -> SpeculationStats:
        """Speculative decoding's setting and its counts since start (read without the lock: two ints)."""
        return SpeculationStats(self.config.speculative_tokens, self.draft_tokens, self.accepted_tokens)

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens computed so far (shared prefills count once)."""
        return self.runner.prefill_tokens

    # --- requests

    async def generate(self, valid: ValidRequest) -> AsyncGenerator[GenerationChunk, None]:
        """Stream a validated request's chunks; closing the iterator early cancels the sequence."""
        request = require(valid, ValidRequest).request
        self._check_running()
        seq = EngineSequence.generation(
            request,
            self.model.new_cache(),
            asyncio.get_running_loop(),
            self.text,
            self.eos_token_ids,
            self.info.max_context,
        )
        async for item in self._follow(seq, request.client):
            chunk = cast(GenerationChunk, item)  # a generation posts chunks
            yield chunk
            if chunk.finish_reason is not None:
                return

    async def score(self, valid: ValidScore) -> ScoreResult:
        """Log-likelihood of a validated continuation given its context, computed in the shared batch."""
        request = require(valid, ValidScore).request
        self._check_running()
        seq = EngineSequence.scoring(request, self.model.new_cache(), asyncio.get_running_loop())
        async for result in self._follow(seq, request.client):
            return cast(ScoreResult, result)  # a score posts its one ScoreResult
        raise EngineError("scoring ended without a result")

    def _check_running(self) -> None:
        if not self.running:
            raise NotReady("the engine is not running")

    async def _follow(self, seq: EngineSequence, client: str) -> AsyncGenerator[GenerationChunk | ScoreResult, None]:
        """Queue `seq` and yield what the engine posts for it; cancel it if the caller leaves."""
        with self._lock:
            if self.failure is not None:
                raise NotReady("the engine stopped after an internal error; restart the server")
            if len(self._waiting) >= self.config.max_queue:
                raise Overloaded(
                    f"queue full: {len(self._waiting)} requests waiting (max_queue={self.config.max_queue})"
                )
            per_client = self.config.max_queue_per_client
            if per_client is not None and self._waiting.count(client) >= per_client:
                raise Overloaded(f"this client has {per_client} requests waiting (max_queue_per_client={per_client})")
            self._waiting.append(client, seq)
            self._lock.notify_all()
        try:
            while True:
                item = await seq.outbox.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not seq.finished:
                seq.cancelled = True  # the loop drops it and frees its cache at the next step
                with self._lock:
                    self._waiting.remove(client, seq)  # a waiting one stops counting against max_queue now
                    self._lock.notify_all()

    # --- the step loop (engine thread)

    def _loop(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # e.g. a bug in admission: never leave callers waiting forever
            self._die(exc)

    def _die(self, exc: BaseException) -> None:
        log.critical("engine thread died: %s: %s; failing every request", type(exc).__name__, exc, exc_info=exc)
        with self._lock:
            self.failure = exc
            victims = list(self._waiting) + [s for s in self._running if not s.finished]
            self._waiting.remove_if(lambda s: True)
            self._running = []
        for seq in victims:
            seq.fail(NotReady(f"the engine stopped after an internal error ({type(exc).__name__}); restart the server"))
        for callback in self._death_callbacks:
            try:
                callback(exc)
            except Exception:
                log.exception("engine death callback failed")

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        stepped = False  # whether a step ran since the memory was last given back
        while True:
            with self._lock:
                self._admit()
                if self._stopping and not self._running and not self._waiting:
                    return
                idle = not self._running
                woken = self._lock.wait(timeout=IDLE_RELEASE_S) if idle else True
            if idle:
                if stepped and not woken:  # nothing to run for IDLE_RELEASE_S: the burst is over
                    self._release_memory()
                    stepped = False
                continue
            stepped = True
            try:
                self._step()
            except Exception as exc:  # never take the server down: fail this batch, keep serving
                log.exception("engine step failed; failing %d sequences", len(self._running))
                for seq in self._running:
                    seq.fail(EngineError(f"internal engine error: {exc}"))
                self._running.clear()

    def _release_memory(self) -> None:
        """Free the model's step scratch and give the heap's free pages back (the finished sequences' KV caches,
        the steps' logits, what the RPC threads freed after the last chunk): after a burst of 8 streams on a 1B
        model about 110 MB. A few milliseconds, once per burst; the next step allocates again what it uses."""
        self.model.release_scratch()
        _trim_heap()
        self.memory_releases += 1

    def _admit(self) -> None:
        """Move waiting sequences into free slots (scheduler.admit); called with the lock held."""
        admit(self._running, self._waiting, self.budget)

    def _step(self) -> None:
        """One step: the scheduler's plan, the runner's result, both applied to the sequences (step.py)."""
        started = time.perf_counter()
        plan = plan_step(self._running, self.budget, self.prefix_cache)
        result = self.runner.execute(plan)
        self.accepted_tokens += apply_step(plan, result)
        self.draft_tokens += plan.draft_tokens
        with self._lock:
            ended = [s for s in self._running if s.finished]
            self._running = [s for s in self._running if not s.finished]
        for seq in ended:  # its caller may hold the sequence a while yet; its KV cache is freed here
            seq.cache.release()
        elapsed = time.perf_counter() - started
        for listener in self.step_listeners:
            try:
                listener(elapsed, len(plan.token_ids))
            except Exception:  # an observer must never fail the batch
                log.exception("step listener failed")


def load_engine(config: EngineConfig | None = None, progress: ProgressFn | None = None) -> Engine:
    """Load the model named by `config` (the default model when None) and build an engine. Blocking."""
    config = config or EngineConfig()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    started = time.monotonic()
    weights = load_weights(config.model, progress)
    with phase("building the forward pass (packing weights, compiling kernels)", progress):
        engine = Engine(weights, config)
    # The weights as read (a GGUF's memory map, a conversion's tensors) are garbage once packed; their
    # reference cycles would otherwise hold that memory until some later collection.
    del weights
    gc.collect()
    _trim_heap()
    (progress or log.info)(f"engine ready in {time.monotonic() - started:.1f}s")
    return engine


def _trim_heap() -> None:
    """Give the heap's free pages back to the system (glibc keeps them after a cold start's packing)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        pass
