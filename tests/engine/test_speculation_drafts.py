"""Prompt-lookup drafts and the rows the scheduler gives them; no model (test_speculation.py runs one)."""

import dataclasses
import random

from sched_helpers import BUDGET, gen, runs

from seedstream.server.engine.scheduler import draft_threshold, plan_step
from seedstream.server.engine.speculation import MAX_SPECULATING_SEQUENCES, NgramDrafter
from seedstream.server.settings import NGRAM_MAX, NGRAM_MIN

SPEC = dataclasses.replace(BUDGET, speculative_tokens=3, draft_row_cost=0.0)  # every proposed token is worth a row


def drafter(tokens):
    d = NgramDrafter()
    d.extend(tokens)
    return d


def test_a_draft_continues_the_latest_earlier_occurrence_of_the_tail():
    assert drafter([1, 2, 3, 4, 5, 9, 1, 2, 3, 6, 7, 8, 2, 3]).propose(3) == [6, 7, 8]  # latest "2 3"
    assert drafter([1, 2, 3, 4, 5, 9, 1, 2, 3, 6, 7, 8, 2, 3]).propose(1) == [6]
    assert drafter([1, 2, 3, 4, 9, 2, 3, 5, 1, 2, 3]).propose(2) == [4, 9]  # "1 2 3" beats the later "2 3"


def test_no_draft_without_an_earlier_match_of_two_tokens():
    assert drafter([1, 2, 3, 4]).propose(4) == []
    assert drafter([5, 1, 6, 1]).propose(4) == []  # one repeated token is not enough
    assert drafter([1, 2]).propose(4) == [] and drafter([]).propose(4) == []
    assert drafter([1, 2, 9, 1, 2]).propose(0) == []


def test_the_tail_never_matches_itself_and_the_index_follows_new_tokens():
    d = drafter([7, 8, 9])
    assert d.propose(4) == []
    d.extend([7, 8])
    assert d.propose(4) == [9, 7, 8]  # the occurrence at 0 is followed by 9, 7, 8 (up to the tail)
    d.extend([5])
    assert d.propose(4) == []
    d.extend([7, 8])
    assert d.propose(2) == [5, 7]  # the latest "7 8" is now the one followed by 5


def test_a_run_of_one_token_drafts_more_of_it():
    assert drafter([4, 4, 4, 4]).propose(3) == [4]  # the latest earlier "4 4 4" is followed by one 4


def latest_occurrence_reference(tokens, limit):
    """What a proposal is, by brute force: the tokens after the latest earlier occurrence of the longest tail."""
    for n in range(min(NGRAM_MAX, len(tokens)), NGRAM_MIN - 1, -1):
        for end in range(len(tokens) - 1, n - 1, -1):
            if tokens[end - n : end] == tokens[len(tokens) - n :]:
                return tokens[end : end + limit] if limit > 0 else []
    return []


def test_a_proposal_over_tokens_not_indexed_yet_equals_the_indexed_one_and_the_reference():
    rng = random.Random(24)
    for _ in range(400):
        tokens = [rng.randrange(4) for _ in range(rng.randrange(12))]
        split, limit = rng.randrange(len(tokens) + 1), rng.randrange(5)
        d = drafter(tokens[:split])
        before = (list(d.tokens), dict(d.index))
        proposal = d.propose(limit, tokens[split:])
        assert (d.tokens, d.index) == before, "proposing indexed the pending tokens"
        assert proposal == drafter(tokens).propose(limit) == latest_occurrence_reference(tokens, limit), tokens


def test_drafts_are_as_long_as_their_chance_of_being_kept_pays():
    d = drafter([1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2])
    proposal = d.propose(8)
    assert proposal == [3, 4, 5, 6, 7, 8, 9, 1]
    assert d.hit_rate == 0.5
    assert d.worth(8, 0.0) == 8 and d.worth(8, 0.3) == 1 and d.worth(8, 0.2) == 2 and d.worth(8, 0.5) == 0
    d.observe(proposal, [3, 4, 5, 9])  # three right, then a miss: the estimate moves toward 3/4
    assert 0.5 < d.hit_rate < 0.75
    rate = d.hit_rate
    d.extend([3, 4, 5, 9])
    proposal = d.propose(4)
    d.observe(proposal, [7])  # nothing proposed after "5 9": no change
    assert proposal == [] and d.hit_rate == rate


def test_a_sequence_whose_guesses_miss_stops_drafting_and_starts_again_when_they_hit():
    seq = decoding([100, 101, 102, 103, 104, 100, 101], max_new_tokens=200)
    proposal, draft = seq.draft(3, 0.35)
    assert proposal == [102, 103, 104] and draft == [102]  # the prior (0.5) pays for one row at 0.35
    for _ in range(6):
        seq.observe_draft(proposal, [1])  # a miss: proposals are scored even when nothing was drafted
    assert seq.draft(3, 0.35) == ([102, 103, 104], [])
    for _ in range(12):
        seq.observe_draft(proposal, [102, 103, 104])
    assert seq.draft(3, 0.35) == ([102, 103, 104], [102, 103, 104])


def drafts(plan):
    return [list(s.draft) for s in plan.samples]


def decoding(output, prompt_len=6, max_new_tokens=16, first=100):
    seq = gen(prompt_len, first=first, max_new_tokens=max_new_tokens)
    seq.prefilled, seq.output_ids = len(seq.prompt), list(output)
    return seq


def test_draft_rows_follow_the_decode_row_and_are_all_sampled():
    seq = decoding([100, 101, 102, 103, 104, 100, 101])  # the output repeats the prompt's start
    plan = plan_step([seq], SPEC)
    assert runs(plan) == [(seq, 12, 4)]
    assert plan.token_ids == (101, 102, 103, 104) and plan.positions == (12, 13, 14, 15)
    assert plan.samples == ((seq, 0, (102, 103, 104)),) and plan.logit_rows == (0, 1, 2, 3)


def test_no_draft_past_max_new_tokens_or_the_context():
    seq = decoding([100, 101, 102, 103, 104, 100, 101], max_new_tokens=9)
    assert drafts(plan_step([seq], SPEC)) == [[102]]  # 2 more tokens: the decode row's and one draft
    seq = decoding([100, 101, 102, 103, 104, 100, 101], max_new_tokens=8)
    assert drafts(plan_step([seq], SPEC)) == [[]]
    seq = decoding([100, 101, 102, 103, 104, 100, 101], max_new_tokens=99)
    seq.stop.max_context = 15  # 13 tokens: the decode row's token and one draft reach 15
    assert drafts(plan_step([seq], SPEC)) == [[102]]


def test_speculation_is_off_at_zero_and_above_the_sequence_limit():
    def repeating(i):
        return decoding([100 + 10 * i, 101 + 10 * i, 100 + 10 * i], prompt_len=2, first=100 + 10 * i)

    assert drafts(plan_step([repeating(0)], BUDGET)) == [[]]
    few = [repeating(i) for i in range(MAX_SPECULATING_SEQUENCES)]
    assert all(d for d in drafts(plan_step(few, SPEC)))
    many = [repeating(i) for i in range(MAX_SPECULATING_SEQUENCES + 1)]
    assert drafts(plan_step(many, SPEC)) == [[]] * len(many)


def test_drafts_leave_a_row_for_every_decoding_sequence():
    budget = dataclasses.replace(SPEC, max_step_tokens=4, prefill_chunk=4)
    a = decoding([100, 101, 102, 103, 104, 100, 101])
    b = decoding([200, 201, 200], prompt_len=2, first=200)
    plan = plan_step([a, b], budget)
    assert drafts(plan) == [[102, 103], []] and len(plan.token_ids) == 4  # a: 4 rows - 1 - 1 for b = 2 drafts
    assert [s.row for s in plan.samples] == [0, 3]


def test_the_bar_for_a_draft_rises_with_the_sequences_sharing_the_step():
    assert draft_threshold(0.15, 1) == 0.15 and draft_threshold(0.0, 3) == 0.0
    bars = [draft_threshold(0.15, b) for b in range(1, 9)]
    assert bars == sorted(bars) and bars[-1] < 1
    assert abs(draft_threshold(0.35, 4) - 1.4 / 2.05) < 1e-12
