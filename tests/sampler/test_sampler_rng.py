"""Counter-based randomness: matches its Python specification, is keyed, uniform, stateless."""

import random

import pytest
import torch
from device_cases import CUDA_CASE_DEVICE, skip_without_cuda
from scipy import stats

from seedstream.sampler import SamplingParams, sample
from seedstream.sampler.rng import PYTHON_HASH_MAX_ROWS, python_uniform, seed_states, uniforms, uniforms_for


def _torch_uniforms(seeds, idx, steps, device="cpu"):
    return uniforms(
        seed_states(seeds, device), torch.tensor(idx, device=device), torch.tensor(steps, device=device)
    ).cpu()


def test_torch_hash_matches_python_integers_bit_for_bit():
    rng = random.Random(7)
    seeds = [rng.randrange(2**64) for _ in range(2000)] + [0, 1, 2**63 - 1, 2**63, 2**64 - 1]
    idx = [rng.randrange(2**31) for _ in seeds]
    steps = [rng.randrange(2**32) for _ in seeds]
    got = _torch_uniforms(seeds, idx, steps)
    want = torch.tensor([python_uniform(s, i, t) for s, i, t in zip(seeds, idx, steps)], dtype=torch.float64)
    assert torch.equal(got, want)


def test_small_batches_hashed_in_python_match_the_torch_hash():
    """uniforms_for() takes Python integers up to PYTHON_HASH_MAX_ROWS rows and torch above: same bits."""
    rng = random.Random(8)
    seeds = [rng.randrange(2**64) for _ in range(600)] + [0, 2**63, 2**64 - 1]
    idx = [rng.randrange(2**31) for _ in seeds[:-1]] + [2**31 - 1]
    steps = [rng.randrange(2**32) for _ in seeds[:-1]] + [2**32 - 1]
    want = _torch_uniforms(seeds, idx, steps)
    assert len(seeds) > PYTHON_HASH_MAX_ROWS  # the torch branch
    assert torch.equal(uniforms_for(seeds, idx, steps, "cpu"), want)
    for lo in range(0, len(seeds), 100):  # the Python branch
        part = slice(lo, lo + 100)
        assert torch.equal(uniforms_for(seeds[part], idx[part], steps[part], "cpu"), want[part])


@pytest.mark.cuda
@skip_without_cuda  # or a dry run on CUDA_CASE_DEVICE=cpu (scripts/cuda_check.sh --device cpu)
def test_cuda_gives_the_same_bits():
    rng = random.Random(8)
    seeds = [rng.randrange(2**64) for _ in range(500)]
    idx, steps = [rng.randrange(8) for _ in seeds], [rng.randrange(4096) for _ in seeds]
    on_device = _torch_uniforms(seeds, idx, steps, CUDA_CASE_DEVICE)
    assert torch.equal(on_device, _torch_uniforms(seeds, idx, steps))


def test_uniform_and_keyed():
    n = 20000
    u = _torch_uniforms([12345] * n, [0] * n, list(range(n)))
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3  # alpha = 1e-3, fixed inputs
    assert ((u >= 0) & (u < 1)).all()
    other_seed = _torch_uniforms([12346] * n, [0] * n, list(range(n)))
    other_index = _torch_uniforms([12345] * n, [1] * n, list(range(n)))
    assert (u != other_seed).all() and (u != other_index).all()
    # Neighbouring keys are uncorrelated.
    for v in (other_seed, other_index, u.roll(1)):
        assert abs(stats.pearsonr(u.numpy(), v.numpy())[0]) < 0.05


def test_different_seeds_give_different_tokens():
    logits = torch.randn(1, 5000, generator=torch.Generator().manual_seed(0)).repeat(64, 1)
    params = [SamplingParams(seed=s) for s in range(64)]
    tokens = sample(logits, params, [0] * 64).token_ids
    assert tokens.unique().numel() > 40


def test_sampler_never_touches_the_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    logits = torch.randn(8, 1000, generator=torch.Generator().manual_seed(1))
    params = [SamplingParams(seed=None), SamplingParams(seed=5, top_p=0.9), SamplingParams(top_k=3)] + [
        SamplingParams(seed=i, min_p=0.1) for i in range(5)
    ]
    sample(logits, params, list(range(8)))
    assert torch.equal(before, torch.get_rng_state())


def test_unseeded_rows_draw_fresh_seeds():
    logits = torch.zeros(1, 1 << 16)
    tokens = {int(sample(logits, [SamplingParams()], [0]).token_ids[0]) for _ in range(20)}
    assert len(tokens) > 15
