"""The scheduler: which waiting sequences start, and which rows each step computes. No model here.

plan() is one step's decisions: admission (round-robin over clients, within the batch size and
the KV-cache budget), then one decode row per running sequence, then prefill chunks within the
step's token budget, reusing prompt KV from the prefix cache or from a sequence with the same
prompt. None of it changes a token (prefill equals decode bit for bit, and the sampler's
randomness is keyed by seed, sample index and step), only when each row is computed.

The engine calls the two halves apart, admit() under its queue lock and plan_step() outside it.
plan_step() only decides: it returns a StepPlan (step.py) and changes no sequence and no tensor.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Protocol

from seedstream.server.settings import RESERVED_SLOTS_SHARE

from .admission import FairQueue
from .config import EngineConfig
from .prefix_cache import BLOCK_TOKENS
from .sequence import EngineSequence, SequenceKind
from .speculation import MAX_SPECULATING_SEQUENCES
from .step import PlanBuilder, StepPlan


class PrefixReuse(Protocol):
    """What the scheduler asks of the prefix cache (prefix_cache.PrefixCache)."""

    @property
    def enabled(self) -> bool: ...

    def lookup(self, token_ids: Sequence[int], hashes: Sequence[bytes], start: int, limit: int) -> int: ...


@dataclasses.dataclass(frozen=True)
class StepBudget:
    """The limits a step is planned within."""

    max_batch_size: int  # sequences holding a slot
    max_kv_tokens: int  # KV positions admission may reserve over the running sequences
    max_step_tokens: int  # token rows per forward step
    prefill_chunk: int  # prefill chunks end at multiples of this
    max_context: int  # the model's context: no sequence reserves more
    speculative_tokens: int = 0  # most draft rows per decoding sequence (0: no speculation)
    draft_row_cost: float = 0.25  # one more row, as a fraction of a one-row step (the model's estimate)
    # Slots and KV positions a client already running sequences may not take (kept for newcomers).
    reserved_slots: int = 0
    reserved_kv_tokens: int = 0

    @classmethod
    def from_config(cls, config: EngineConfig, max_context: int, draft_row_cost: float) -> StepBudget:
        slots = (
            config.max_batch_size // RESERVED_SLOTS_SHARE if config.reserved_slots is None else config.reserved_slots
        )
        return cls(
            config.max_batch_size,
            config.max_kv_tokens,
            config.max_step_tokens,
            config.prefill_chunk,
            max_context,
            config.speculative_tokens,
            draft_row_cost,
            slots,
            config.max_kv_tokens * slots // config.max_batch_size,  # the same share of the KV budget
        )


def plan(
    running: list[EngineSequence], waiting: FairQueue, budget: StepBudget, prefix_cache: PrefixReuse | None = None
) -> StepPlan:
    """One step's decisions: admit() moves waiting sequences into `running`, then plan_step()."""
    admit(running, waiting, budget)
    return plan_step(running, budget, prefix_cache)


def kv_tokens(seq: EngineSequence, max_context: int) -> int:
    """KV positions `seq` may come to hold: its prompt plus every token it may generate."""
    new = seq.request.max_new_tokens if seq.request is not None else 0  # a score generates nothing
    return min(len(seq.prompt) + new, max_context)


def admit(running: list[EngineSequence], waiting: FairQueue, budget: StepBudget) -> None:
    """Move waiting sequences into free slots within the KV-cache budget: round-robin over clients,
    oldest first within a client.

    A client already holding a slot may not take the budget's reserve (reserved_slots and
    reserved_kv_tokens): with no preemption, that kept room is what lets a newcomer's request start at
    the next step while one client fills the batch (n samples are n sequences of one client). Such a
    client is passed over, keeping its turn, and the next client is tried.
    """
    waiting.remove_if(lambda s: s.cancelled)
    reserved = sum(kv_tokens(s, budget.max_context) for s in running)
    holding = collections.Counter(s.client for s in running)  # a score has no request, but a client
    passed_over: set[str] = set()
    while len(running) < budget.max_batch_size:
        turn = waiting.next_turn(passed_over)
        if turn is None:
            break
        client, seq = turn
        need = kv_tokens(seq, budget.max_context)
        if budget.reserved_slots and holding[client] and not _within_share(len(running) + 1, reserved + need, budget):
            passed_over.add(client)  # the reserve is for clients with nothing running; no reserve: in turn
            continue
        if running and reserved + need > budget.max_kv_tokens:
            break  # in turn: the next request waits for room rather than being overtaken
        reserved += need
        seq = waiting.pop(client)
        seq.client = client
        running.append(seq)
        holding[client] += 1


def _within_share(slots: int, kv: int, budget: StepBudget) -> bool:
    """Whether `slots` sequences reserving `kv` positions leave the newcomers' reserve free."""
    return (
        slots <= budget.max_batch_size - budget.reserved_slots
        and kv <= budget.max_kv_tokens - budget.reserved_kv_tokens
    )


def plan_step(
    running: Sequence[EngineSequence], budget: StepBudget, prefix_cache: PrefixReuse | None = None
) -> StepPlan:
    """This step's plan: cancelled sequences finish, one row per decoding sequence (and its draft),
    then fixed prefill chunks within budget. Changes no sequence, no drafter and no tensor
    (apply.apply_step changes the sequences, their drafters included), and nothing in the prefix cache
    (its lookup only reads; the runner's copy marks the blocks used)."""
    live = [s for s in running if not s.finished]
    plan = PlanBuilder(cancelled=[s for s in live if s.cancelled])  # `cancelled` is set by other threads
    tokens_left = _plan_decodes(plan, [s for s in live if plan.is_live(s) and s.prefill_done], budget)
    _plan_prefills(plan, [s for s in live if plan.is_live(s)], budget, tokens_left, prefix_cache)
    return plan.plan()


def _plan_decodes(plan: PlanBuilder, decoding: list[EngineSequence], budget: StepBudget) -> int:
    """One row per decoding sequence, and its draft where speculation pays; returns the rows left."""
    tokens_left = budget.max_step_tokens
    speculate = budget.speculative_tokens > 0 and len(decoding) <= MAX_SPECULATING_SEQUENCES
    bar = draft_threshold(budget.draft_row_cost, len(decoding))
    for i, seq in enumerate(decoding):
        # Drafts only use rows the other decoding sequences do not need (each needs one).
        limit = min(budget.speculative_tokens, tokens_left - (len(decoding) - i))
        proposal, draft = seq.draft(limit, bar) if speculate else (None, [])
        plan.decode(seq, draft, proposal)
        tokens_left -= 1 + len(draft)
    return tokens_left


def _plan_prefills(
    plan: PlanBuilder,
    live: list[EngineSequence],
    budget: StepBudget,
    tokens_left: int,
    prefix_cache: PrefixReuse | None,
) -> None:
    """Prefill chunks in order within `tokens_left` rows, reusing cached or same-prompt KV."""
    prefilling = {
        s.prompt_key for s in live if s.kind is SequenceKind.GENERATE and 0 < s.prefilled < len(s.prefill_ids)
    }
    computing: set[bytes] = set()  # prefix blocks this step computes
    for seq in live:
        start = plan.prefilled(seq)
        if start >= len(seq.prefill_ids):
            continue
        if start == 0 and _can_fork(seq) and seq.prompt_key in prefilling:
            continue  # a sequence with (probably) this prompt is part way through: wait to fork it
        if _reuse_prefix(plan, seq, computing, prefix_cache):
            continue  # another sequence computes this prefix now: take it from the cache next step
        start = plan.prefilled(seq)
        # Chunks end at multiples of prefill_chunk: a tuning knob only (prefill equals decode).
        end = min(len(seq.prefill_ids), (start // budget.prefill_chunk + 1) * budget.prefill_chunk)
        if end - start > tokens_left:
            continue  # next step; the chunk itself is the same whenever it runs
        generates = seq.kind is SequenceKind.GENERATE
        plan.prefill(seq, start, end, sample=end == len(seq.prefill_ids) and generates)
        tokens_left -= end - start
        computing.update(seq.block_hashes[start // BLOCK_TOKENS : end // BLOCK_TOKENS])
        if generates and end < len(seq.prefill_ids):
            prefilling.add(seq.prompt_key)  # later sequences with this prompt wait for it
        elif generates:
            _fork_same_prompt(plan, seq, live)


def draft_threshold(row_cost: float, decoding: int) -> float:
    """The chance of being kept that a draft row must beat when `decoding` sequences share the step.

    With a step of B rows costing about 1 + row_cost * (B - 1) one-row steps, a kept draft token is
    worth one sequence's share of the step, (1 + row_cost * (B - 1)) / B, and a draft row costs
    row_cost: one sequence alone pays from row_cost, four together need about twice that.
    """
    b = max(decoding, 1)
    return row_cost * b / (1 + row_cost * (b - 1))


def _reuse_prefix(plan: PlanBuilder, seq: EngineSequence, computing: set[bytes], cache: PrefixReuse | None) -> bool:
    """Plan a copy of the longest cached prefix of `seq`'s prefill into its cache. True when its next
    block is being computed this step by another sequence (it should wait one step and reuse it)."""
    if cache is None or not cache.enabled:
        return False
    start, limit = plan.prefilled(seq), seq.reuse_limit()
    end = cache.lookup(seq.prefill_ids, seq.block_hashes, start, limit)
    if end > start:
        plan.copy(seq, start, end)
    nxt = end // BLOCK_TOKENS
    return end % BLOCK_TOKENS == 0 and (nxt + 1) * BLOCK_TOKENS <= limit and seq.block_hashes[nxt] in computing


def _fork_same_prompt(plan: PlanBuilder, donor: EngineSequence, live: Sequence[EngineSequence]) -> None:
    """Sequences not started yet with exactly `donor`'s prompt share its prefill (e.g. n samples).

    The prefill is deterministic and batch-invariant, so the copied cache and the shared logits
    row are bit for bit what each sequence would have computed itself.
    """
    for other in live:
        if (
            other is not donor
            and plan.prefilled(other) == 0
            and _can_fork(other)
            and other.prompt_key == donor.prompt_key
            and other.prompt == donor.prompt
        ):
            plan.fork(donor, other)


def _can_fork(seq: EngineSequence) -> bool:
    """A generation that needs no prompt logprobs of its own can take another's prefill."""
    return seq.kind is SequenceKind.GENERATE and seq.score_from is None and not seq.resume_ids
