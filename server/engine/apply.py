"""Applying a step: a StepPlan and the runner's StepResult become each sequence's new state and chunks.

The only place the step changes sequences: prefill progress, resumed streams checked and started,
prompt logprobs, sampled tokens kept through the stop conditions, the speculative drafters (the new
tokens indexed, the proposals scored), finished sequences posted.
"""

from __future__ import annotations

from collections.abc import Sequence

from .resume import resume_mismatch
from .sequence import SequenceKind
from .speculation import drafted_kept
from .step import Check, Sample, SampledTokens, Score, ScoredToken, StepPlan, StepResult
from .types import ParamError


def apply_step(plan: StepPlan, result: StepResult) -> int:
    """Apply one step's plan and results to its sequences; returns how many drafted tokens were kept."""
    for seq in plan.cancelled:
        seq.finish_cancelled()
    _advance_prefills(plan)
    _check_resumed(plan.checks, result.checks)
    _start_resumed(plan.samples)
    _record_scores(plan.scores, result.scores)
    kept = _accept_samples(plan, result)
    for seq in {span.seq: None for span in plan.prefills}:  # a score's result is whole once its prefill is
        if seq.kind is SequenceKind.SCORE and seq.prefill_done and not seq.finished:
            seq.finish_scoring()
    return kept


def _advance_prefills(plan: StepPlan) -> None:
    """Prefill positions now in each sequence's cache: copied from the prefix cache, computed, or forked."""
    for seq, start, end in plan.kv_copies:
        seq.cached_tokens += end - start
        seq.prefilled = end
    for seq, _, end in plan.prefills:
        seq.prefilled = end
    for _, child in plan.forks:
        child.prefilled = len(child.prefill_ids)


def _check_resumed(checks: Sequence[Check], tokens: Sequence[int]) -> None:
    """Fail a resumed stream at its first held token that its seed does not give."""
    for (seq, _, step), token in zip(checks, tokens, strict=True):
        problem = resume_mismatch(seq.resume_ids, step, token)
        if problem is not None and not seq.finished:
            seq.fail(ParamError("resume_token_ids", problem))


def _start_resumed(samples: Sequence[Sample]) -> None:
    """A resumed stream sampling its first new token: its checked tokens become its output so far."""
    for seq, _, _ in samples:
        if seq.resume_ids and not seq.output_ids and not seq.finished:
            problem = seq.start_after_resume()
            if problem is not None:
                seq.fail(ParamError("resume_token_ids", problem))


def _record_scores(scores: Sequence[Score], results: Sequence[ScoredToken]) -> None:
    for (seq, _, _), scored in zip(scores, results, strict=True):
        seq.prompt_logprobs.append(scored.logprob)
        seq.prompt_greedy.append(scored.greedy)
        if scored.top is not None:
            seq.prompt_top.append((list(scored.top[0]), list(scored.top[1])))


def _accept_samples(plan: StepPlan, result: StepResult) -> int:
    """Each sample's tokens kept, and the proposals scored against them; returns the drafted tokens kept."""
    proposals = {seq: proposal for seq, proposal in plan.proposals}
    kept = 0
    for sample, tokens in zip(plan.samples, result.samples, strict=True):
        produced = _accept(sample, tokens)
        kept += drafted_kept(sample.draft, produced)
        if produced and sample.seq in proposals:
            sample.seq.observe_draft(proposals[sample.seq], produced)
    return kept


def _accept(sample: Sample, tokens: SampledTokens) -> tuple[int, ...]:
    """Keep a sample's tokens: each drafted token is kept while the row before it sampled exactly that
    token, and the first row that sampled another ends the run (that token is kept too), as does a
    stop condition. Returns the tokens kept."""
    seq, _, draft = sample
    if seq.finished:  # a resumed stream that failed its check
        return ()
    for j in range(len(draft) + 1):
        token = tokens.token_ids[j]
        seq.accept(token, tokens.logprobs[j], list(tokens.top_ids[j]), list(tokens.top_logprobs[j]))
        if seq.finished or j == len(draft) or token != draft[j]:
            break
    return tokens.token_ids[: j + 1]
