"""Whole steps with no model: the scheduler's plan, a result the test makes up, applied to the sequences.

As vLLM's scheduler tests do: each step is admit, plan_step, a fake StepResult (the tokens each
sampled row "gave"), apply_step, then finished sequences leave, as the engine's step loop does.
"""

import array
import collections
import dataclasses
import enum

import pytest
from sched_helpers import BUDGET, FakePrefixCache, fake_result, gen, runs, sampled, score

from seedstream.server.engine import FinishReason, ParamError, ScoreResult
from seedstream.server.engine.admission import FairQueue
from seedstream.server.engine.apply import apply_step
from seedstream.server.engine.scheduler import admit, plan_step


class Steps:
    """The engine's step loop around a test instead of a model."""

    def __init__(self, *seqs, budget=BUDGET, prefix_cache=None):
        self.budget, self.prefix_cache = budget, prefix_cache
        self.running, self.waiting = [], FairQueue()
        for seq in seqs:
            self.waiting.append(seq.client, seq)

    def step(self, tokens=None, checks=()):
        """One step; tokens: {seq: the token of each of its sampled rows} (default 7s). Returns the plan."""
        admit(self.running, self.waiting, self.budget)
        plan = plan_step(self.running, self.budget, self.prefix_cache)
        self.kept = apply_step(plan, fake_result(plan, tokens, checks))
        self.running = [s for s in self.running if not s.finished]
        return plan


SPEC = dataclasses.replace(BUDGET, speculative_tokens=3, draft_row_cost=0.0)  # every proposed token is drafted


def posted_tokens(seq):
    return [chunk.token_ids for chunk in seq.loop.posted]


def state(seq):
    """What a step may change on a sequence."""
    return (seq.prefilled, list(seq.output_ids), seq.cached_tokens, seq.finished, len(seq.loop.posted))


def drafts(plan):
    return [s.draft for s in plan.samples]


def proposed(plan):
    return [p.tokens for p in plan.proposals]


def snapshot(value, _open=frozenset()):
    """Everything reachable from `value` as plain data (objects as their fields), to compare before and after."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, enum.Enum)):
        return value
    if id(value) in _open:
        return "<cycle>"
    inner = _open | {id(value)}
    if isinstance(value, (list, tuple, collections.deque, array.array)):
        return [type(value).__name__, [snapshot(v, inner) for v in value]]
    if isinstance(value, (set, frozenset)):
        return [type(value).__name__, sorted(repr(snapshot(v, inner)) for v in value)]
    if isinstance(value, dict):
        return ["dict", [(snapshot(k, inner), snapshot(v, inner)) for k, v in value.items()]]
    slots = [name for cls in type(value).__mro__ for name in getattr(cls, "__slots__", ())]
    fields = {name: getattr(value, name) for name in slots if hasattr(value, name)}
    fields.update(getattr(value, "__dict__", {}))
    return [type(value).__name__, {name: snapshot(v, inner) for name, v in fields.items()}]


def test_a_prompt_is_prefilled_in_chunks_then_decodes_to_its_length():
    seq = gen(70, max_new_tokens=3)
    steps = Steps(seq)
    plans = [steps.step({seq: [t]}) for t in (11, 12, 13, 14, 15)]
    assert [runs(p) for p in plans] == [
        [(seq, 0, 32)],
        [(seq, 32, 32)],
        [(seq, 64, 6)],  # the last chunk samples the first token
        [(seq, 70, 1)],  # then one row a step: the last token at its position
        [(seq, 71, 1)],
    ]
    assert [p.token_ids for p in plans[3:]] == [(13,), (14,)]
    assert posted_tokens(seq) == [[13], [14], [15]] and seq.output_ids == [13, 14, 15]
    assert seq.loop.posted[-1].finish_reason is FinishReason.LENGTH and seq.loop.posted[-1].completion_tokens == 3
    assert steps.running == []


def test_planning_changes_no_sequence_and_applying_does():
    decoding, prefilling, twin, cancelled = gen(5, first=300), gen(20), gen(20), gen(10, first=500)
    decoding.prefilled, decoding.output_ids = 5, [9]
    cancelled.cancelled = True
    seqs = [decoding, prefilling, twin, cancelled]
    before = [state(s) for s in seqs]
    plan = plan_step(seqs, BUDGET, FakePrefixCache(hit=16))
    assert [state(s) for s in seqs] == before
    assert plan.kv_copies == ((prefilling, 0, 16),) and plan.forks == ((prefilling, twin),)
    assert plan.cancelled == (cancelled,) and sampled(plan) == [decoding, prefilling, twin]
    apply_step(plan, fake_result(plan))
    assert [state(s) for s in seqs] == [
        (5, [9, 7], 0, False, 1),
        (20, [7], 16, False, 1),
        (20, [7], 0, False, 1),
        (0, [], 0, True, 1),
    ]


def test_planning_twice_gives_equal_plans_and_changes_no_sequence_and_no_drafter():
    drafting = gen(6, max_new_tokens=40)
    steps = Steps(drafting, budget=SPEC)
    steps.step({drafting: [100]})
    steps.step({drafting: [101]})  # the output repeats the prompt's start: its drafter proposes what followed
    fresh, prefilling, twin, cancelled = gen(5, first=300), gen(20, first=400), gen(20, first=400), gen(10, first=500)
    fresh.prefilled, fresh.output_ids = 5, [300, 301]  # decoding, and never drafted: no drafter yet
    cancelled.cancelled = True
    seqs = [drafting, fresh, prefilling, twin, cancelled]
    before = snapshot(seqs)
    plan = plan_step(seqs, SPEC, FakePrefixCache(hit=16))
    assert snapshot(seqs) == before
    assert plan_step(seqs, SPEC, FakePrefixCache(hit=16)) == plan
    assert snapshot(seqs) == before
    assert [p.seq for p in plan.proposals] == [drafting, fresh] and sampled(plan) == [drafting, fresh, prefilling, twin]
    assert proposed(plan) == drafts(plan)[:2] == [(102, 103, 104), (302, 303, 304)]
    assert fresh._drafter is None and len(drafting._drafter.tokens) == 8
    apply_step(plan, fake_result(plan, {drafting: [102, 103, 9, 9]}))
    assert snapshot(seqs) != before  # what applying changes, the snapshot sees
    assert drafting._drafter.tokens[8:] == [102, 103, 9] and drafting._drafter.hit_rate == pytest.approx(0.5355)
    assert fresh._drafter.tokens == [300, 301, 302, 303, 304, 300, 301, 7] and fresh._drafter.hit_rate == 0.45


def test_a_step_planned_but_never_applied_leaves_no_trace():
    """As when the runner fails: the sequence and its drafter stay as they were, and the steps that follow
    are those of a sequence that never had that plan."""
    dropped, control = gen(6, max_new_tokens=40), gen(6, max_new_tokens=40)
    both = [(Steps(dropped, budget=SPEC), dropped), (Steps(control, budget=SPEC), control)]

    def step(tokens):
        """One step of each; what the steps planned and kept."""
        plans = [steps.step({seq: tokens}) for steps, seq in both]
        return [(drafts(plan), proposed(plan), steps.kept) for plan, (steps, _) in zip(plans, both)]

    step([100])
    step([101])  # the output repeats the prompt's start: its drafter proposes what followed
    before = snapshot(dropped)
    assert plan_step([dropped], SPEC).proposals[0].tokens == (102, 103, 104)  # and never applied
    assert snapshot(dropped) == before
    assert step([102, 103, 7, 7]) == [([(102, 103, 104)], [(102, 103, 104)], 2)] * 2
    assert step([100]) == [([()], [()], 0)] * 2
    assert step([101]) == [([()], [()], 0)] * 2
    assert step([102, 103, 7, 9]) == [([(102, 103, 7)], [(102, 103, 7)], 3)] * 2  # "100 101" was followed by these
    assert snapshot(dropped._drafter) == snapshot(control._drafter) and dropped.output_ids == control.output_ids


def test_a_cancelled_sequence_is_finished_by_the_plan_and_its_slot_goes_to_a_waiting_one():
    budget = dataclasses.replace(BUDGET, max_batch_size=2)
    a, b, c = gen(4), gen(4, first=300), gen(4, first=500)
    steps = Steps(a, b, c, budget=budget)
    assert runs(steps.step()) == [(a, 0, 4), (b, 0, 4)]  # the slots are full: c waits
    assert list(steps.waiting) == [c]
    a.cancelled = True  # the caller left
    plan = steps.step()
    assert plan.cancelled == (a,) and runs(plan) == [(b, 4, 1)]
    assert a.loop.posted[-1].finish_reason is FinishReason.CANCELLED and a.output_ids == [7]
    assert runs(steps.step()) == [(b, 5, 1), (c, 0, 4)]  # a's slot is free: c starts


def test_stop_conditions_end_a_stream_in_the_step_that_samples_the_token():
    eos, stop_token, stop_string = gen(4), gen(4, first=300, stop_token_ids=(9,)), gen(4, first=500, stop=("<8>",))
    steps = Steps(eos, stop_token, stop_string)
    steps.step({eos: [3], stop_token: [3], stop_string: [3]})
    steps.step({eos: [0], stop_token: [9], stop_string: [8]})
    assert [s.loop.posted[-1].finish_reason for s in (eos, stop_token, stop_string)] == [
        FinishReason.EOS,
        FinishReason.STOP_TOKEN,
        FinishReason.STOP_STRING,
    ]
    assert "".join(c.text for c in stop_string.loop.posted) == "<3>"  # the stop string is cut
    assert steps.running == []


def test_a_prefix_cache_hit_is_a_kv_copy_in_the_plan():
    seq = gen(70)
    steps = Steps(seq, prefix_cache=FakePrefixCache(hit=2 * 16))
    plan = steps.step()
    assert plan.kv_copies == ((seq, 0, 32),) and runs(plan) == [(seq, 32, 32)]
    assert seq.cached_tokens == 32 and seq.prefilled == 64
    plan = steps.step()
    assert plan.kv_copies == () and runs(plan) == [(seq, 64, 6)]
    assert seq.loop.posted[0].cached_tokens == 32


def test_same_prompt_samples_share_one_prefill_and_its_row():
    a, b = gen(20, sample_index=0), gen(20, sample_index=1)
    steps = Steps(a, b)
    plan = steps.step({a: [3], b: [4]})
    assert runs(plan) == [(a, 0, 20)] and plan.forks == ((a, b),)
    assert a.output_ids == [3] and b.output_ids == [4] and b.prefilled == 20
    assert runs(steps.step()) == [(a, 20, 1), (b, 20, 1)]


def test_drafted_tokens_are_kept_up_to_the_first_row_that_samples_another():
    spec = dataclasses.replace(BUDGET, speculative_tokens=3, draft_row_cost=0.0)
    seq = gen(6, max_new_tokens=20)
    seq.prefilled, seq.output_ids = 6, [100, 101, 102, 103, 104, 100, 101]  # the output repeats the prompt
    steps = Steps(budget=spec)
    steps.running = [seq]
    plan = steps.step({seq: [102, 103, 50, 51]})
    assert plan.samples[0].draft == (102, 103, 104)
    assert seq.output_ids[7:] == [102, 103, 50] and steps.kept == 2  # 104 was drafted, 50 sampled: 50 ends it
    assert posted_tokens(seq) == [[102], [103], [50]]
    assert runs(steps.step()) == [(seq, 15, 1)]  # the next decode row is the last kept token


def test_a_resumed_token_the_seed_does_not_give_fails_the_request():
    good, bad = gen(10, resume_token_ids=(5, 6)), gen(10, first=300, resume_token_ids=(5, 6))
    steps = Steps(good, bad)
    plan = steps.step({good: [8], bad: [8]}, checks=(5, 6, 5, 9))
    assert [(s, i) for s, _, i in plan.checks] == [(good, 0), (good, 1), (bad, 0), (bad, 1)]
    assert good.output_ids == [5, 6, 8] and posted_tokens(good) == [[8]]
    error = bad.loop.posted[0]
    assert isinstance(error, ParamError) and "resume_token_ids[1] = 6" in str(error) and bad.output_ids == []


def test_a_score_is_posted_in_the_step_that_computes_its_last_row():
    seq = score(40, 2)
    steps = Steps(seq)
    assert runs(steps.step()) == [(seq, 0, 32)] and seq.loop.posted == []
    plan = steps.step()
    assert runs(plan) == [(seq, 32, 10)] and len(plan.scores) == 2
    assert seq.loop.posted == [ScoreResult((-1.0, -1.0), (5, 5), False)]  # the fake rows' greedy token is 5
