"""The devices the determinism tests run on, and the small random-weight model their cuda cases take.

Each device-parametrised test runs a "cpu" case on the real default model and a "cuda" case on TINY_LLAMA, a
Llama-family model that transformers builds from a seed at test time, so a GPU run carries no model file.
SEEDSTREAM_TEST_CUDA_DEVICE names the torch device the "cuda" cases run on: "cuda" (the default; skipped where
torch sees no CUDA device), or "cpu" for a dry run of exactly those cases on a machine without a GPU
(scripts/cuda_check.sh --device cpu). A test taking conftest's `device` fixture gets the case name: its torch
device is case_device(device), and engine_factory(device=device) and case_weights(device) give the case's model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

CUDA_CASE_DEVICE = os.environ.get("SEEDSTREAM_TEST_CUDA_DEVICE", "cuda")

# Overrides of arch_models.BASE (which keeps GQA: 4 heads, 2 KV heads): two layers, a head_dim of 64, room for
# the tests' 900-token prompts, and a vocabulary the tiny byte-level tokenizer can fill (scripts/tiny_tokenizer.py:
# at most 961) that holds the raw prompt ids the tests send (up to 899).
TINY_LLAMA = dict(
    vocab_size=960,
    hidden_size=256,
    intermediate_size=640,
    num_hidden_layers=2,
    head_dim=64,
    max_position_embeddings=2048,
)
TINY_SEED = 27

skip_without_cuda = pytest.mark.skipif(
    CUDA_CASE_DEVICE.startswith("cuda") and not torch.cuda.is_available(),
    reason="no CUDA device (torch.cuda.is_available() is False); scripts/cuda_check.sh runs these on a GPU "
    "machine, or here on the CPU with --device cpu",
)

# "cuda" is skipped at collection, at no cost, where it cannot run.
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, skip_without_cuda])]


def case_device(case: str) -> str:
    """The torch device a test case runs on: "cpu" for the cpu case, CUDA_CASE_DEVICE for the cuda case."""
    return CUDA_CASE_DEVICE if case == "cuda" else case


def save_tiny_llama(folder: Path) -> Path:
    """TINY_LLAMA with its tokenizer and chat template, saved as a model folder the engine loads."""
    from arch_models import build_hf_model
    from tiny_tokenizer import save_tiny_tokenizer

    model = build_hf_model("llama", seed=TINY_SEED, **TINY_LLAMA)
    model.save_pretrained(str(folder))
    save_tiny_tokenizer(folder, model.config.vocab_size)
    return folder
