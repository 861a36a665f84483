"""Resumed streams: check the tokens a caller already holds against what its seed produces.

The sampler is stateless (its randomness is keyed by seed, sample index and step) and prefill
equals decode bit for bit, so the logits row that prefill computes for a resumed position is the
row the uninterrupted stream sampled from. Sampling it again at the same step must give the same
token; the first that does not is reported as INVALID_ARGUMENT on `resume_token_ids[i]`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from seedstream.sampler import sample

from .types import GenerationRequest, ParamError


def validate_resume(req: GenerationRequest, eos_ids: frozenset[int], vocab: int, max_context: int) -> None:
    """Checks that need no model: ids in range, room left, and no token that would have ended the stream."""
    resume = req.resume_token_ids
    if not resume:
        return
    bad = next((i for i, t in enumerate(resume) if not 0 <= t < vocab), None)
    if bad is not None:
        raise ParamError("resume_token_ids", f"resume_token_ids[{bad}] = {resume[bad]} out of range: allowed [0, {vocab})")
    if len(resume) >= req.max_new_tokens:
        raise ParamError("resume_token_ids", f"{len(resume)} tokens; allowed at most max_new_tokens - 1 = "
                             f"{req.max_new_tokens - 1} (a stream of max_new_tokens tokens is already complete)")
    if len(req.prompt_token_ids) + len(resume) >= max_context:
        raise ParamError("resume_token_ids", f"prompt + resume_token_ids is {len(req.prompt_token_ids) + len(resume)} "
                             f"tokens; allowed at most {max_context - 1} (the stream already filled the context)")
    for i, token in enumerate(resume):
        if token in req.stop_token_ids or (token in eos_ids and not req.ignore_eos):
            raise ParamError("resume_token_ids", f"resume_token_ids[{i}] = {token} ends the stream; "
                                 "a finished stream cannot be resumed")


def check_resumed(logits: torch.Tensor, checks: Sequence[tuple], eos_ids: frozenset[int]) -> None:
    """Sample each checked row at its own step and fail a sequence at its first token that differs.

    checks: (sequence, row of `logits`, index i into its resume_ids), rows sampled as step i.
    """
    seqs = [seq for seq, _, _ in checks]
    steps = [i for _, _, i in checks]
    penalties = any(_uses_penalties(seq.request.sampling) for seq in seqs)
    result = sample(
        logits[[row for _, row, _ in checks]],
        [seq.request.sampling for seq in seqs],
        steps,
        prompt_token_ids=[seq.prompt for seq in seqs] if penalties else None,
        output_token_ids=[seq.resume_ids[:i] for seq, i in zip(seqs, steps)] if penalties else None,
        sample_indices=[seq.request.sample_index for seq in seqs],
        suppress_token_ids=[_suppressed(seq.request, i, eos_ids) for seq, i in zip(seqs, steps)],
    )
    for seq, i, token in zip(seqs, steps, result.token_ids.tolist()):
        if not seq.finished and token != seq.resume_ids[i]:
            seq.fail(ParamError("resume_token_ids", (
                f"resume_token_ids[{i}] = {seq.resume_ids[i]}, but this request's stream has {token} there "
                "(same prompt, sampling settings, seed and sample_index are needed to resume)")))


def _suppressed(req: GenerationRequest, step: int, eos_ids: frozenset[int]) -> list[int]:
    """What Sequence_.suppressed_ids gives at `step` (EOS and stop tokens before min_new_tokens)."""
    if step >= req.min_new_tokens:
        return []
    ids = set(req.stop_token_ids)
    if not req.ignore_eos:
        ids |= eos_ids
    return sorted(ids)


def _uses_penalties(params) -> bool:
    return params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
