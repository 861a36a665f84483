"""A step as data: the plan the scheduler makes (StepPlan) and what the runner computes for it (StepResult).

One step is three calls, as in vLLM v1 (SchedulerOutput, ModelRunnerOutput, update_from_output):
scheduler.plan_step() decides the rows and changes no sequence (nor its drafter) and no tensor;
runner.execute() copies KV, runs the forward pass and samples, changing only KV caches (and a memo of the
penalties' token history); apply.apply_step() changes the sequences (prefill progress, tokens, stop
conditions, speculative drafters, finishing) and posts what their callers get.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .sequence import EngineSequence


class Run(NamedTuple):
    """Consecutive rows of one sequence: positions start .. start + length - 1."""

    seq: EngineSequence
    start: int
    length: int


class Span(NamedTuple):
    """Prefill positions [start, end) of one sequence: a chunk computed, or KV copied from the prefix cache."""

    seq: EngineSequence
    start: int
    end: int


class Sample(NamedTuple):
    """A sampled sequence: logits rows row .. row + len(draft), sampled at consecutive steps (the last
    tokens of its rows are a draft, speculation.py, checked by sampling the rows before them)."""

    seq: EngineSequence
    row: int  # index into the step's logits
    draft: tuple[int, ...]


class Proposal(NamedTuple):
    """The n-gram proposal a speculating sequence's draft was cut from (speculation.py): apply_step scores
    all of it against the tokens the step produced, drafted or not."""

    seq: EngineSequence
    tokens: tuple[int, ...]


class Score(NamedTuple):
    """A logits row whose log-probability of `target` (prompt token position + 1) is wanted."""

    seq: EngineSequence
    row: int
    target: int


class Check(NamedTuple):
    """A logits row sampled as step `step` of a resumed stream, to check resume_ids[step] (resume.py)."""

    seq: EngineSequence
    row: int
    step: int


class Fork(NamedTuple):
    """`child` has `donor`'s prompt: after the forward it takes a copy of the donor's cache, and it
    samples its first token from the donor's last logits row."""

    donor: EngineSequence
    child: EngineSequence


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """One step's decisions: the packed rows and, per sequence, what is done with them."""

    token_ids: tuple[int, ...] = ()
    positions: tuple[int, ...] = ()
    runs: tuple[Run, ...] = ()
    logit_rows: tuple[int, ...] = ()  # packed row of each logits row, ascending
    samples: tuple[Sample, ...] = ()
    scores: tuple[Score, ...] = ()
    checks: tuple[Check, ...] = ()
    kv_copies: tuple[Span, ...] = ()  # prefix-cache blocks copied into a sequence's cache before the forward
    prefills: tuple[Span, ...] = ()  # prefill chunks computed this step (stored to the prefix cache after)
    forks: tuple[Fork, ...] = ()
    cancelled: tuple[EngineSequence, ...] = ()  # finished as cancelled, with no rows
    proposals: tuple[Proposal, ...] = ()  # one per decoding sequence while speculation is on

    @property
    def prefill_tokens(self) -> int:
        """Prompt positions computed this step."""
        return sum(end - start for _, start, end in self.prefills)

    @property
    def draft_tokens(self) -> int:
        return sum(len(s.draft) for s in self.samples)


class SampledTokens(NamedTuple):
    """What one Sample's rows gave, one entry per row (the decode row, then each draft row)."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # raw or processed, as the request asked
    top_ids: tuple[tuple[int, ...], ...]  # raw top alternatives, the most any sequence of the step asked for
    top_logprobs: tuple[tuple[float, ...], ...]


class ScoredToken(NamedTuple):
    """What one Score row gave."""

    logprob: float  # raw log-probability of the target
    greedy: int  # argmax of the row (lowest id on ties)
    top: tuple[tuple[int, ...], tuple[float, ...]] | None  # a generation's top alternatives, when it asked


@dataclasses.dataclass(frozen=True)
class StepResult:
    """The runner's results for a StepPlan, entry by entry."""

    samples: tuple[SampledTokens, ...] = ()  # per plan.samples
    scores: tuple[ScoredToken, ...] = ()  # per plan.scores
    checks: tuple[int, ...] = ()  # per plan.checks: the token the seed gives at that resumed position


class PlanBuilder:
    """A StepPlan as the scheduler decides it, row by row, with each sequence's planned prefill progress."""

    def __init__(self, cancelled: Sequence[EngineSequence] = ()) -> None:
        self.token_ids: list[int] = []
        self.positions: list[int] = []
        self.runs: list[Run] = []
        self.logit_rows: list[int] = []
        self.samples: list[Sample] = []
        self.scores: list[Score] = []
        self.checks: list[Check] = []
        self.kv_copies: list[Span] = []
        self.prefills: list[Span] = []
        self.forks: list[Fork] = []
        self.proposals: list[Proposal] = []
        self.cancelled = tuple(cancelled)
        self._skipped = set(cancelled)
        self._progress: dict[EngineSequence, int] = {}  # prefill positions after this step, where planned

    def prefilled(self, seq: EngineSequence) -> int:
        """Prefill positions `seq` will hold after the rows and copies planned so far."""
        return self._progress.get(seq, seq.prefilled)

    def is_live(self, seq: EngineSequence) -> bool:
        """Not finished, and not finished by this plan."""
        return not seq.finished and seq not in self._skipped

    def add(
        self,
        seq: EngineSequence,
        tokens: Sequence[int],
        start: int,
        score: range = range(0),
        sample: bool = False,
        check: range = range(0),
        draft: Sequence[int] = (),
    ) -> None:
        """Rows for `tokens` at positions start..; the last 1 + len(draft) of them are sampled when `sample`."""
        first_row = len(self.token_ids)
        self.runs.append(Run(seq, start, len(tokens)))
        self.token_ids.extend(tokens)
        self.positions.extend(range(start, start + len(tokens)))
        for pos in score:
            self.scores.append(Score(seq, len(self.logit_rows), seq.prompt[pos + 1]))
            self.logit_rows.append(first_row + pos - start)
        for pos in check:
            self.checks.append(Check(seq, len(self.logit_rows), pos - len(seq.prompt) + 1))
            self.logit_rows.append(first_row + pos - start)
        if sample:
            self.samples.append(Sample(seq, len(self.logit_rows), tuple(draft)))
            self.logit_rows.extend(range(len(self.token_ids) - 1 - len(draft), len(self.token_ids)))

    def decode(self, seq: EngineSequence, draft: Sequence[int] = (), proposal: Sequence[int] | None = None) -> None:
        """`seq`'s decode row (its last token) and a row per draft token, all sampled; `proposal` is what
        the draft was cut from, where the sequence speculates this step."""
        self.add(seq, [seq.output_ids[-1], *draft], seq.num_tokens - 1, sample=True, draft=draft)
        if proposal is not None:
            self.proposals.append(Proposal(seq, tuple(proposal)))

    def prefill(self, seq: EngineSequence, start: int, end: int, sample: bool) -> None:
        """Compute prefill positions [start, end) of `seq`, with the logits rows its request needs."""
        tokens = seq.prefill_ids[start:end]
        self.add(seq, tokens, start, seq.score_positions(start, end), sample, seq.resume_positions(start, end))
        self.prefills.append(Span(seq, start, end))
        self._progress[seq] = end

    def copy(self, seq: EngineSequence, start: int, end: int) -> None:
        """Take `seq`'s prefill positions [start, end) from the prefix cache."""
        self.kv_copies.append(Span(seq, start, end))
        self._progress[seq] = end

    def fork(self, donor: EngineSequence, child: EngineSequence) -> None:
        """`child` shares `donor`'s prefill and its sampled row (donor must be the last add())."""
        self.forks.append(Fork(donor, child))
        self._progress[child] = len(child.prefill_ids)
        donor_row = next(s.row for s in self.samples if s.seq is donor)
        self.samples.append(Sample(child, donor_row, ()))

    def plan(self) -> StepPlan:
        return StepPlan(
            tuple(self.token_ids),
            tuple(self.positions),
            tuple(self.runs),
            tuple(self.logit_rows),
            tuple(self.samples),
            tuple(self.scores),
            tuple(self.checks),
            tuple(self.kv_copies),
            tuple(self.prefills),
            tuple(self.forks),
            self.cancelled,
            tuple(self.proposals),
        )
