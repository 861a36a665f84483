"""Resumed streams: check the tokens a caller already holds against what its seed produces.

The sampler is stateless (its randomness is keyed by seed, sample index and step) and prefill
equals decode bit for bit, so the logits row that prefill computes for a resumed position is the
row the uninterrupted stream sampled from. Sampling it again at the same step must give the same
token; the first that does not is reported as INVALID_ARGUMENT on `resume_token_ids[i]`
(runner.check_resumed, in the step that prefills them).
"""

from __future__ import annotations

from collections.abc import Sequence

from .types import GenerationRequest, ParamError


def validate_resume(req: GenerationRequest, eos_ids: frozenset[int], vocab: int, max_context: int) -> None:
    """Checks that need no model: ids in range, room left, and no token that would have ended the stream."""
    resume = req.resume_token_ids
    if not resume:
        return
    bad = next((i for i, t in enumerate(resume) if not 0 <= t < vocab), None)
    if bad is not None:
        raise ParamError(
            "resume_token_ids", f"resume_token_ids[{bad}] = {resume[bad]} out of range: allowed [0, {vocab})"
        )
    if len(resume) >= req.max_new_tokens:
        raise ParamError(
            "resume_token_ids",
            f"{len(resume)} tokens; allowed at most max_new_tokens - 1 = "
            f"{req.max_new_tokens - 1} (a stream of max_new_tokens tokens is already complete)",
        )
    if len(req.prompt_token_ids) + len(resume) >= max_context:
        raise ParamError(
            "resume_token_ids",
            f"prompt + resume_token_ids is {len(req.prompt_token_ids) + len(resume)} "
            f"tokens; allowed at most {max_context - 1} (the stream already filled the context)",
        )
    for i, token in enumerate(resume):
        if token in req.stop_token_ids or (token in eos_ids and not req.ignore_eos):
            raise ParamError(
                "resume_token_ids",
                f"resume_token_ids[{i}] = {token} ends the stream; a finished stream cannot be resumed",
            )


def resume_mismatch(resume_ids: Sequence[int], i: int, token: int) -> str | None:
    """None when the seed gives `token` at resumed position i, as the caller holds; else what differs."""
    if token == resume_ids[i]:
        return None
    return (
        f"resume_token_ids[{i}] = {resume_ids[i]}, but this request's stream has {token} there "
        "(same prompt, sampling settings, seed and sample_index are needed to resume)"
    )
