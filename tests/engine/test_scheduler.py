"""The scheduler's decisions, driven with sequences that have no model, KV cache or tokenizer behind them."""

from sched_helpers import BUDGET, FakeLoop, FakePrefixCache, fake_result, gen, runs, sampled, score

from seedstream.sampler import SamplingParams
from seedstream.server.engine import FinishReason, GenerationRequest
from seedstream.server.engine.admission import FairQueue
from seedstream.server.engine.apply import apply_step
from seedstream.server.engine.prefix_cache import BLOCK_TOKENS
from seedstream.server.engine.scheduler import StepBudget, admit, kv_tokens, plan, plan_step
from seedstream.server.engine.sequence import EngineSequence


def test_prefill_is_chunked_at_multiples_of_prefill_chunk_then_decodes():
    seq = gen(80)
    steps = []
    for _ in range(4):
        plan = plan_step([seq], BUDGET)
        steps.append((runs(plan), sampled(plan), plan.prefill_tokens))
        apply_step(plan, fake_result(plan))  # every sampled row gives token 7
    assert steps == [
        ([(seq, 0, 32)], [], 32),
        ([(seq, 32, 32)], [], 32),
        ([(seq, 64, 16)], [seq], 16),  # the last chunk samples the first token
        ([(seq, 80, 1)], [seq], 0),  # then one decode row: the last token at its position
    ]
    assert plan.token_ids == (7,) and plan.positions == (80,)


def test_decode_rows_come_first_and_use_the_step_budget():
    prefilling, decoding = gen(100), gen(5, first=300)
    decoding.prefilled, decoding.output_ids = 5, [9]
    budget = StepBudget(4, 1000, max_step_tokens=32, prefill_chunk=32, max_context=512)
    plan = plan_step([prefilling, decoding], budget)
    assert runs(plan) == [(decoding, 5, 1)]  # 32 prefill rows no longer fit beside the decode row
    assert sampled(plan) == [decoding]
    assert runs(plan_step([prefilling], budget)) == [(prefilling, 0, 32)]


def test_a_chunk_that_does_not_fit_waits_but_smaller_later_ones_go_ahead():
    a, b, c = gen(64), gen(40, first=300), gen(5, first=500)
    budget = StepBudget(4, 1000, max_step_tokens=40, prefill_chunk=32, max_context=512)
    plan = plan_step([a, b, c], budget)
    assert runs(plan) == [(a, 0, 32), (c, 0, 5)]  # b's 32 rows would pass the budget: it waits
    assert plan.prefill_tokens == 37 and plan.prefills == ((a, 0, 32), (c, 0, 5))
    assert sampled(plan) == [c]


def test_scoring_rows_and_targets():
    seq = score(3, 2)
    plan = plan_step([seq], BUDGET)
    assert runs(plan) == [(seq, 0, 5)]
    assert plan.scores == ((seq, 0, 103), (seq, 1, 104))  # logits rows 0 and 1 score tokens 3 and 4
    assert [plan.logit_rows[row] for _, row, _ in plan.scores] == [2, 3]  # packed rows 2 and 3
    assert plan.samples == ()  # a score samples nothing


def test_prompt_logprobs_score_every_prompt_token_and_sample_the_last_row():
    seq = gen(4, prompt_logprobs=True)
    plan = plan_step([seq], BUDGET)
    assert [target for _, _, target in plan.scores] == [101, 102, 103]
    assert plan.logit_rows == (0, 1, 2, 3) and plan.samples == ((seq, 3, ()),)


def test_resumed_tokens_are_prefilled_and_each_is_checked():
    seq = gen(10, resume_token_ids=(5, 6, 7))
    plan = plan_step([seq], BUDGET)
    assert runs(plan) == [(seq, 0, 13)] and plan.token_ids[-3:] == (5, 6, 7)
    assert [(s, plan.logit_rows[row], i) for s, row, i in plan.checks] == [(seq, 9, 0), (seq, 10, 1), (seq, 11, 2)]
    assert sampled(plan) == [seq] and plan.logit_rows[plan.samples[0].row] == 12


def test_same_prompt_shares_one_prefill():
    a, b, c = gen(20), gen(20), gen(20, prompt_logprobs=True)  # c wants its own prompt logprobs
    plan = plan_step([a, b, c], BUDGET)
    assert runs(plan) == [(a, 0, 20), (c, 0, 20)]
    assert plan.forks == ((a, b),)
    assert sampled(plan) == [a, b, c] and plan.samples[0].row == plan.samples[1].row


def test_a_later_sequence_waits_for_a_same_prompt_prefill_part_way_through():
    a = gen(70)
    plan = plan_step([a], BUDGET)
    apply_step(plan, fake_result(plan))  # a: first chunk done
    b = gen(70)
    plan = plan_step([a, b], BUDGET)
    assert runs(plan) == [(a, 32, 32)] and plan.forks == ()  # b's own first chunk would have fitted
    apply_step(plan, fake_result(plan))
    plan = plan_step([a, b], BUDGET)
    assert runs(plan) == [(a, 64, 6)] and plan.forks == ((a, b),)
    apply_step(plan, fake_result(plan))
    assert a.output_ids == b.output_ids == [7] and b.prefilled == 70


def test_cancelled_sequence_finishes_and_gets_no_rows():
    a, b = gen(10), score(4, 2)
    a.cancelled = b.cancelled = True
    plan = plan_step([a, b], BUDGET)
    assert runs(plan) == [] and plan.cancelled == (a, b) and not a.finished  # the plan only decides
    apply_step(plan, fake_result(plan))
    assert a.finished and a.loop.posted[0].finish_reason is FinishReason.CANCELLED
    assert b.finished and isinstance(b.loop.posted[0], Exception)  # a score has no partial result


def test_prefix_cache_hit_starts_the_prefill_later_and_is_counted():
    seq = gen(70)
    plan = plan_step([seq], BUDGET, FakePrefixCache(hit=2 * BLOCK_TOKENS))
    assert plan.kv_copies == ((seq, 0, 32),) and runs(plan) == [(seq, 32, 32)]
    apply_step(plan, fake_result(plan))
    assert seq.cached_tokens == 32 and seq.prefilled == 64


def test_prefix_cache_reuse_never_covers_rows_whose_logits_are_needed():
    seq = gen(32)  # the last prompt row must be computed to sample from it
    plan = plan_step([seq], BUDGET, FakePrefixCache(hit=32))
    assert plan.kv_copies == ((seq, 0, 16),) and runs(plan) == [(seq, 16, 16)]


def test_a_block_computed_this_step_is_waited_for_and_reused():
    shared = list(range(100, 132))
    a = gen(40)
    b = EngineSequence.generation(
        GenerationRequest(tuple(shared + [7] * 8), SamplingParams(seed=0)), None, FakeLoop(), None, frozenset(), 512
    )
    plan = plan_step([a, b], BUDGET, FakePrefixCache(hit=0))
    assert runs(plan) == [(a, 0, 32)]  # b's first block is a's: b takes it from the cache next step
    apply_step(plan, fake_result(plan))
    assert runs(plan_step([a, b], BUDGET)) == [(a, 32, 8), (b, 0, 32)]  # without a prefix cache nobody waits


def test_admission_is_round_robin_over_clients_up_to_the_batch_size():
    waiting = FairQueue()
    seqs = {name: gen(4, client=name[0]) for name in ["a1", "a2", "a3", "b1", "c1"]}
    for name, seq in seqs.items():
        waiting.append(name[0], seq)
    running = []
    admit(running, waiting, BUDGET)
    assert running == [seqs["a1"], seqs["b1"], seqs["c1"], seqs["a2"]]
    assert list(waiting) == [seqs["a3"]]


def test_admission_within_the_kv_budget_keeps_the_queue_order():
    budget = StepBudget(8, max_kv_tokens=100, max_step_tokens=64, prefill_chunk=32, max_context=512)
    big, small, later = gen(50, max_new_tokens=20), gen(40, max_new_tokens=20), gen(2, max_new_tokens=2)
    waiting = FairQueue()
    for seq in (big, small, later):
        waiting.append("", seq)
    running = []
    admit(running, waiting, budget)
    assert running == [big]  # small would pass the budget, and later does not overtake it
    running.clear()
    huge = gen(300, max_new_tokens=400)
    assert kv_tokens(huge, budget.max_context) == 512  # capped at the context
    waiting.append("", huge)
    admit(running, waiting, budget)
    assert running == [small, later]  # 60 + 4 fit; huge waits
    running.clear()
    admit(running, waiting, budget)
    assert running == [huge]  # with nothing running, one is always admitted


def test_a_score_reserves_only_its_prompt():
    assert kv_tokens(score(30, 5), BUDGET.max_context) == 35
    assert kv_tokens(gen(30, max_new_tokens=5), BUDGET.max_context) == 35


def test_cancelled_waiting_sequences_are_dropped_at_admission():
    waiting, a, b = FairQueue(), gen(4), gen(4)
    waiting.append("x", a)
    waiting.append("x", b)
    a.cancelled = True
    running = []
    admit(running, waiting, BUDGET)
    assert running == [b] and len(waiting) == 0


def test_plan_admits_then_plans():
    waiting = FairQueue()
    a, b = gen(10), gen(10, first=300)
    waiting.append("p", a)
    waiting.append("q", b)
    running = []
    step = plan(running, waiting, BUDGET)
    assert running == [a, b] and runs(step) == [(a, 0, 10), (b, 0, 10)]
