"""The engine: admission, continuous batching loop, stopping, and streaming results back."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import AsyncIterator, Callable, Optional

import torch

from seedstream.sampler import SAMPLER_VERSION, sample

from .admission import FairQueue
from .backends import build_model
from .chat import render_chat_ids
from .config import EngineConfig, resolve_device, resolve_dtype
from .loader import LoadedWeights, ProgressFn, load_weights
from .model import KEY_BLOCK, QUERY_TILE, ROW_TILE, ModelConfig, describe
from .prefix_cache import BLOCK_TOKENS, PrefixCache
from .resume import check_resumed, validate_resume
from .sequence import Sequence_, StepBatch
from .types import (
    EngineError,
    GenerationChunk,
    GenerationRequest,
    InvalidRequest,
    ModelInfo,
    NotReady,
    Overloaded,
    ScoreRequest,
    ScoreResult,
)
from .validation import validate_request, validate_score

log = logging.getLogger("seedstream.engine")

ENGINE_ALGORITHM = "3"  # bump when any change can alter a sequence's logits


class Engine:
    """Owns the model, the sequences and the step loop (a background thread)."""

    def __init__(self, weights: LoadedWeights, config: EngineConfig):
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.model_config = ModelConfig.from_hf(weights.config)
        self.model, weight_format = build_model(weights, config, self.model_config, self.device, self.dtype)
        # Prefill equals decode bit for bit on both paths: the chunk size and the scheduling are not part of it.
        forward_tag = getattr(self.model, "version_tag", None) or f"tile{ROW_TILE}.attn{QUERY_TILE}x{KEY_BLOCK}"
        self.tokenizer = weights.tokenizer
        self.eos_token_ids = frozenset(weights.generation_eos)
        self.info = ModelInfo(
            model_id=weights.model_id,
            model_sha256=weights.content_sha256,
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
        self._running: list[Sequence_] = []
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self.failure: Optional[BaseException] = None  # what killed the engine thread, if anything did
        self._death_callbacks: list = []
        self.prefill_tokens = 0  # prompt tokens computed so far (shared prefills count once)
        self.prefix_cache = PrefixCache(int(config.prefix_cache_mib * 2**20))
        # Called on the engine thread after each step with (seconds, token rows): metrics hook in here.
        self.step_listeners: list[Callable[[float, int], None]] = []
        log.info("model %s: %s on %s/%s", self.info.model_id, describe(self.model_config), self.info.device, self.info.dtype)
        c = self.model_config
        per_token = 2 * c.num_layers * c.num_kv_heads * c.head_dim * torch.finfo(self.dtype).bits // 8
        log.info("KV-cache budget: %d token positions (about %.1f GiB)", config.max_kv_tokens,
                 config.max_kv_tokens * per_token / 2**30)

    # --- text helpers (the RPC layer turns text and chat into token ids through these)

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def render_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidRequest("messages", "this model has no chat template; send a prompt instead")
        return render_chat_ids(self.tokenizer, messages)  # message content stays text (chat.py)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of a (context, continuation) pair, split the way lm-evaluation-harness does.

        Trailing whitespace of the context moves to the continuation; the pair is
        encoded whole and split at the context's token count, so BPE merges across
        the boundary match what the model sees. An empty context becomes the
        model's prefix token (BOS, else EOS).
        """
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self.prefix_token_id], self.tokenize(continuation)
        whole = self.tokenize(context + continuation)
        split = len(self.tokenize(context))
        return whole[:split], whole[split:]

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context becomes (lm-evaluation-harness's rule): BOS, else the lowest EOS."""
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return bos if bos is not None else min(self.eos_token_ids)

    def decode(self, token_ids) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def validate(self, request: GenerationRequest) -> None:
        validate_request(request, self.info, self.config)
        validate_resume(request, self.eos_token_ids, self.info.vocab_size, self.info.max_context)

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

    def on_death(self, callback) -> None:
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
            return {"used": sum(s.cache.length for s in running),
                    "reserved": sum(self._kv_tokens(s) for s in running),
                    "budget": self.config.max_kv_tokens}

    # --- requests

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream a request's chunks; closing the iterator early cancels the sequence."""
        self.validate(request)
        if request.sampling.seed is None:
            raise InvalidRequest("seed", "must be resolved before the engine (the RPC layer draws one)")
        # A resumed stream already got its prompt logprobs with its first token.
        score_from = 1 if request.prompt_logprobs and not request.resume_token_ids else None
        seq = self._new_sequence(request.prompt_token_ids, request, score_from)
        async for item in self._follow(seq, request.client):
            yield item
            if item.finish_reason is not None:
                return

    async def score(self, request: ScoreRequest) -> ScoreResult:
        """Log-likelihood of a continuation given a context, computed in the shared batch."""
        validate_score(request, self.info)
        return await self.score_validated(request)

    async def score_validated(self, request: ScoreRequest) -> ScoreResult:
        """score() for a request that already passed validate_score (pairs and rolling windows,
        checked once up front with field names of their own)."""
        prompt = request.context_ids + request.continuation_ids
        seq = self._new_sequence(prompt, None, len(request.context_ids))
        async for result in self._follow(seq, request.client):
            return result
        raise EngineError("scoring ended without a result")

    def _new_sequence(self, prompt, request: Optional[GenerationRequest], score_from: Optional[int]) -> Sequence_:
        if not self.running:
            raise NotReady("the engine is not running")
        return Sequence_(prompt, request, self.model.new_cache(), self.tokenizer, asyncio.get_running_loop(), score_from)

    async def _follow(self, seq: Sequence_, client: str):
        """Queue `seq` and yield what the engine posts for it; cancel it if the caller leaves."""
        with self._lock:
            if self.failure is not None:
                raise NotReady("the engine stopped after an internal error; restart the server")
            if len(self._waiting) >= self.config.max_queue:
                raise Overloaded(f"queue full: {len(self._waiting)} requests waiting (max_queue={self.config.max_queue})")
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
        while True:
            with self._lock:
                self._admit()
                if self._stopping and not self._running and not self._waiting:
                    return
                if not self._running:
                    self._lock.wait(timeout=0.5)
                    continue
            try:
                self._step()
            except Exception as exc:  # never take the server down: fail this batch, keep serving
                log.exception("engine step failed; failing %d sequences", len(self._running))
                for seq in self._running:
                    seq.fail(EngineError(f"internal engine error: {exc}"))
                self._running.clear()

    def _admit(self) -> None:
        """Move waiting sequences into free slots within the KV-cache budget: round-robin over clients,
    oldest first within a client."""
        self._waiting.remove_if(lambda s: s.cancelled)
        reserved = sum(self._kv_tokens(s) for s in self._running)
        while self._waiting and len(self._running) < self.config.max_batch_size:
            need = self._kv_tokens(self._waiting.peek())
            if self._running and reserved + need > self.config.max_kv_tokens:
                break  # in turn: the next request waits for room rather than being overtaken
            reserved += need
            self._running.append(self._waiting.pop())

    def _kv_tokens(self, seq: Sequence_) -> int:
        """KV positions `seq` may come to hold: its prompt plus every token it may generate."""
        new = seq.request.max_new_tokens if seq.request is not None else 0
        return min(len(seq.prompt) + new, self.info.max_context)

    def _step(self) -> None:
        started = time.perf_counter()
        batch = self._plan()
        if batch.segments:
            logits = self.model.forward(
                torch.tensor(batch.token_ids, device=self.device),
                torch.tensor(batch.positions, device=self.device),
                batch.segments,
                torch.tensor(batch.logit_rows, device=self.device, dtype=torch.long),
                batch.decode_rows,
            )
            for donor, child in batch.forks:  # after the forward: the donor's cache holds the prompt
                child.cache.copy_from(donor.cache)
            self.prefill_tokens += batch.prefill_tokens
            for seq in batch.prefilled:
                self.prefix_cache.store(seq.prefill_ids, seq.block_hashes(), seq.cache, seq.prefilled)
            if batch.checks:
                check_resumed(logits, batch.checks, self.eos_token_ids)
            for seq in batch.sampled:
                if seq.resume_ids and not seq.output_ids and not seq.finished:
                    problem = seq.start_after_resume()
                    if problem is not None:
                        seq.fail(InvalidRequest("resume_token_ids", problem))
            if batch.scored:
                self._score(logits, batch)
            if batch.sampled:
                self._sample_and_emit(logits[batch.sample_rows], batch)
        for seq in self._running:
            if seq.request is None and seq.prefill_done and not seq.finished:
                seq.finish_scoring()
        with self._lock:
            self._running = [s for s in self._running if not s.finished]
        elapsed = time.perf_counter() - started
        for listener in self.step_listeners:
            try:
                listener(elapsed, len(batch.token_ids))
            except Exception:  # an observer must never fail the batch
                log.exception("step listener failed")

    def _plan(self) -> StepBatch:
        """Pick this step's rows: one per decoding sequence, then fixed prefill chunks within budget."""
        batch = StepBatch()
        budget = self.config.max_step_tokens
        for seq in self._running:
            if seq.cancelled:
                seq.finish_cancelled()
            elif seq.prefill_done:
                batch.add(seq, [seq.output_ids[-1]], seq.num_tokens - 1, sample=True)
                budget -= 1
        batch.decode_rows = len(batch.token_ids)
        prefilling = {s.prompt_key for s in self._running if s.request is not None and 0 < s.prefilled < len(s.prefill_ids)
                      and not s.finished}
        computing: set[bytes] = set()  # prefix blocks this step computes
        for seq in self._running:
            if seq.finished or seq.prefill_done:
                continue
            if seq.prefilled == 0 and _can_fork(seq) and seq.prompt_key in prefilling:
                continue  # a sequence with (probably) this prompt is part way through: wait to fork it
            if self._reuse_prefix(seq, computing):
                continue  # another sequence computes this prefix now: take it from the cache next step
            start = seq.prefilled
            # Chunks end at multiples of prefill_chunk: a tuning knob only (prefill equals decode).
            end = min(len(seq.prefill_ids), (start // self.config.prefill_chunk + 1) * self.config.prefill_chunk)
            if end - start > budget:
                continue  # next step; the chunk itself is the same whenever it runs
            batch.add(seq, seq.prefill_ids[start:end], start, score=seq.score_positions(start, end),
                      sample=(end == len(seq.prefill_ids) and seq.request is not None),
                      check=seq.resume_positions(start, end))
            batch.prefilled.append(seq)
            seq.prefilled = end
            budget -= end - start
            batch.prefill_tokens += end - start
            self.prefix_cache.count(0, end - start)
            computing.update(seq.block_hashes()[start // BLOCK_TOKENS:end // BLOCK_TOKENS])
            if seq.request is not None and end < len(seq.prefill_ids):
                prefilling.add(seq.prompt_key)  # later sequences with this prompt wait for it
            elif seq.request is not None:
                self._fork_same_prompt(seq, batch)
        return batch

    def _reuse_prefix(self, seq: Sequence_, computing: set[bytes]) -> bool:
        """Copy the longest cached prefix of `seq`'s prefill into its cache. True when its next block
        is being computed this step by another sequence (it should wait one step and reuse it)."""
        cache = self.prefix_cache
        if not cache.enabled:
            return False
        start, limit = seq.prefilled, seq.reuse_limit()
        end = cache.lookup(seq.prefill_ids, seq.block_hashes(), start, limit)
        if end > start:
            cache.copy_into(seq.cache, seq.block_hashes(), start, end)
            cache.count(end - start, 0)
            seq.cached_tokens += end - start
            seq.prefilled = end
        nxt = end // BLOCK_TOKENS
        return end % BLOCK_TOKENS == 0 and (nxt + 1) * BLOCK_TOKENS <= limit and seq.block_hashes()[nxt] in computing

    def _fork_same_prompt(self, donor: Sequence_, batch: StepBatch) -> None:
        """Sequences not started yet with exactly `donor`'s prompt share its prefill (e.g. n samples).

        The prefill is deterministic and batch-invariant, so the copied cache and the shared logits
        row are bit for bit what each sequence would have computed itself.
        """
        for other in self._running:
            if (other is not donor and other.prefilled == 0 and not other.finished and _can_fork(other)
                    and other.prompt_key == donor.prompt_key and other.prompt == donor.prompt):
                batch.fork(donor, other)

    def _score(self, logits: torch.Tensor, batch: StepBatch) -> None:
        rows = logits[batch.score_rows]  # [S, V]
        logprobs = torch.log_softmax(rows, dim=-1)
        targets = torch.tensor(batch.score_targets, device=rows.device)
        chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
        greedy = rows.argmax(dim=-1).tolist()  # first maximum: lowest token id on ties
        # Echo with top_logprobs (the OpenAI completions form) also wants the prompt's top alternatives.
        top_n = max((s.request.top_logprobs for s in batch.scored if s.request is not None), default=0)
        top = logprobs.topk(top_n, dim=-1) if top_n else None
        for i, (seq, lp, g) in enumerate(zip(batch.scored, chosen, greedy)):
            seq.prompt_logprobs.append(lp)
            seq.prompt_greedy.append(g)
            if top is not None and seq.request is not None and seq.request.top_logprobs:
                seq.prompt_top.append((top.indices[i].tolist(), top.values[i].tolist()))

    def _sample_and_emit(self, logits: torch.Tensor, batch: StepBatch) -> None:
        keep = [i for i, s in enumerate(batch.sampled) if not s.finished]  # a failed resume check
        seqs = [batch.sampled[i] for i in keep]
        if not seqs:
            return
        logits = logits[keep] if len(keep) < len(batch.sampled) else logits
        penalties = any(_uses_penalties(s.request.sampling) for s in seqs)
        result = sample(
            logits,
            [s.request.sampling for s in seqs],
            [len(s.output_ids) for s in seqs],
            prompt_token_ids=[s.prompt for s in seqs] if penalties else None,
            output_token_ids=[s.output_ids for s in seqs] if penalties else None,
            sample_indices=[s.request.sample_index for s in seqs],
            suppress_token_ids=[s.suppressed_ids(self.eos_token_ids) for s in seqs],
            top_n=max(s.request.top_logprobs for s in seqs),
        )
        token_ids = result.token_ids.tolist()
        logprobs = result.logprobs.tolist()
        if any(s.request.logprobs_mode == "processed" for s in seqs):
            processed = result.processed_logprobs.tolist()
            logprobs = [p if s.request.logprobs_mode == "processed" else r for s, r, p in zip(seqs, logprobs, processed)]
        top_ids = result.top_token_ids.tolist()
        top_lps = result.top_logprobs.tolist()
        for i, seq in enumerate(seqs):
            seq.accept(token_ids[i], logprobs[i], top_ids[i], top_lps[i], self.eos_token_ids, self.info.max_context)


def load_engine(config: Optional[EngineConfig] = None, progress: Optional[ProgressFn] = None) -> Engine:
    """Load the model named by `config` (the default model when None) and build an engine. Blocking."""
    config = config or EngineConfig()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    started = time.monotonic()
    weights = load_weights(config.model, progress)
    engine = Engine(weights, config)
    (progress or log.info)(f"engine ready in {time.monotonic() - started:.1f}s")
    return engine


def _uses_penalties(params) -> bool:
    return params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0


def _can_fork(seq: Sequence_) -> bool:
    """A generation that needs no prompt logprobs of its own can take another's prefill."""
    return seq.request is not None and seq.score_from is None and not seq.resume_ids
