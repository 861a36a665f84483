"""The fixed-shape policy (CUDA's default): the tile path's bits on CPU, one call shape per GEMM for any batch.

Tiny random-weight models (arch_models.py): a GQA Llama, and Gemma 2 for the soft caps and the sliding window.
The "cuda" cases run where a GPU is present (conftest.DEVICES); there the bits are the GPU's own, so only
invariance is asserted, not equality with CPU.
"""

from __future__ import annotations

import pytest
import torch
from arch_models import build_hf_model, prompt, served_inputs
from device_cases import case_device
from torch.overrides import TorchFunctionMode

from seedstream.server.engine import fixed_shapes
from seedstream.server.engine.fixed_shapes import CALL_ITEMS, GROUP_TILES, policy_tag, resolve_policy
from seedstream.server.engine.model import KEY_BLOCK, ROW_TILE, DecoderModel, Segment

VARIANTS = ["llama", "gemma2"]
COMPANIONS = 69  # other sequences decoding beside the probe: steps of 1, 8, 33 and 70 rows
PROBE_LENGTH = KEY_BLOCK + 5  # the probe's keys span two key blocks

_inputs: dict[str, tuple] = {}


def _model(variant: str, shapes: str, device: str) -> DecoderModel:
    if variant not in _inputs:
        _inputs[variant] = served_inputs(build_hf_model(variant))
    cfg, state = _inputs[variant]
    return DecoderModel(cfg, state, torch.device(case_device(device)), torch.float32, shapes=shapes)


def _step(model: DecoderModel, segments: list[Segment], tokens: list[int]) -> torch.Tensor:
    """One packed step of `segments` (tokens in their order) -> logits of every row [T, V]."""
    positions = [seg.start + i for seg in segments for i in range(seg.length)]
    dev = model.device
    return model.forward(
        torch.tensor(tokens, device=dev),
        torch.tensor(positions, device=dev),
        segments,
        torch.arange(len(tokens), device=dev),
    ).cpu()


class Decoding:
    """A probe sequence and COMPANIONS others, all prefilled in one packed step; decode steps on top."""

    def __init__(self, model: DecoderModel):
        vocab = model.cfg.vocab_size
        self.model = model
        self.prompts = [prompt(PROBE_LENGTH, vocab, seed=1)]
        lengths = [1 + (i * 37) % 150 if i % 8 == 0 else 1 + (i * 7) % 24 for i in range(COMPANIONS)]
        self.prompts += [prompt(n, vocab, seed=100 + i) for i, n in enumerate(lengths)]
        self.caches = [model.new_cache() for _ in self.prompts]
        segments = [Segment(c, 0, len(p)) for c, p in zip(self.caches, self.prompts)]
        self.prefill = _step(model, segments, [t for p in self.prompts for t in p])

    def decode(self, others: int, probe_at: int) -> torch.Tensor:
        """One decode row for the probe, placed at row `probe_at` among `others` companions' rows: logits [1+others, V]."""
        order = list(range(1, others + 1))
        order.insert(probe_at, 0)
        segments = [Segment(self.caches[i], len(self.prompts[i]), 1) for i in order]
        return _step(self.model, segments, [7 + i for i in order])[[order.index(i) for i in sorted(order)]]


_decodings: dict[tuple[str, str, str], Decoding] = {}


def _decoding(variant: str, shapes: str, device: str) -> Decoding:
    key = (variant, shapes, device)
    if key not in _decodings:
        _decodings[key] = Decoding(_model(variant, shapes, device))
    return _decodings[key]


@pytest.mark.parametrize("variant", VARIANTS)
def test_fixed_shapes_give_the_tile_path_bits_on_cpu(variant):
    """The same bits as the tile path for a 1,400-row packed prefill and decode steps of 1 to 70 rows."""
    tiles, fixed = _decoding(variant, "tiles", "cpu"), _decoding(variant, "fixed", "cpu")
    assert torch.equal(fixed.prefill, tiles.prefill)
    for a, b in zip(fixed.caches, tiles.caches):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    for others in (0, 7, 32, 69):
        assert torch.equal(fixed.decode(others, others // 2), tiles.decode(others, others // 2)), f"{others + 1} rows"


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_decode_row_is_the_same_bits_at_any_batch_and_position(variant, device):
    run = _decoding(variant, "fixed", device)
    alone = run.decode(0, 0)[0]
    for others in (7, 32, 69):
        for probe_at in sorted({0, others // 2, others}):
            logits = run.decode(others, probe_at)
            assert torch.equal(logits[0], alone), f"probe at row {probe_at} of {others + 1}"
    assert torch.isfinite(alone).all()


GEMMS = {
    torch.mm,
    torch.bmm,
    torch.matmul,
    torch.baddbmm,
    torch.addmm,
    torch.nn.functional.linear,
    torch.nn.functional.scaled_dot_product_attention,
    torch.Tensor.mm,
    torch.Tensor.bmm,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
}
REDUCTIONS = {torch.sum, torch.mean, torch.Tensor.sum, torch.Tensor.mean}  # those whose order can change bits


class CallShapes(TorchFunctionMode):
    """Records (function, shapes of its tensor arguments, out included) of every GEMM and sum/mean call."""

    def __init__(self) -> None:
        super().__init__()
        self.gemms: set[tuple] = set()
        self.reductions: set[tuple] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        record = self.gemms if func in GEMMS else self.reductions if func in REDUCTIONS else None
        if record is not None:
            shapes = tuple(tuple(a.shape) for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor))
            record.add((getattr(func, "__name__", str(func)), shapes))
        return func(*args, **kwargs)


def _shapes(run: Decoding, others: int) -> CallShapes:
    with CallShapes() as calls:
        run.decode(others, others // 2)
    return calls


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_gemm_and_reduction_shape_is_the_same_for_any_batch(variant):
    """Under the fixed-shape policy the set of call shapes of a decode step of 1, 8, 33 or 70 rows, and of
    a step with a 100-token prefill chunk, is one set; under the tile path it is not (the test can fail)."""
    fixed = _decoding(variant, "fixed", "cpu")
    seen = {others: _shapes(fixed, others) for others in (0, 7, 32, 69)}
    cache = fixed.model.new_cache()
    with CallShapes() as chunk:
        _step(fixed.model, [Segment(cache, 0, 100)], prompt(100, fixed.model.cfg.vocab_size, seed=5))
    seen[-1] = chunk
    gemms, reductions = seen[0].gemms, seen[0].reductions
    assert any(shapes[0] == (GROUP_TILES, ROW_TILE, fixed.model.cfg.hidden_size) for _, shapes in gemms)
    assert any(shapes[0][0] == CALL_ITEMS * fixed.model.cfg.num_kv_heads for _, shapes in gemms)
    for others, calls in seen.items():
        assert calls.gemms == gemms, f"GEMM shapes of a step of {others + 1} rows differ from one row's"
        assert calls.reductions == reductions, f"sum/mean shapes of a step of {others + 1} rows differ"
    tiles = _decoding(variant, "tiles", "cpu")
    assert _shapes(tiles, 0).gemms != _shapes(tiles, 69).gemms, "the tile path's shapes follow the batch"


@pytest.mark.parametrize("variant", VARIANTS)
def test_prefill_chunks_equal_decode_rows(variant, device, monkeypatch):
    """Under the fixed-shape policy a sequence's logits and KV bits do not depend on how it was split into
    steps: decode rows across the first key block's end, prefill chunks of 7, 64 and all 150 tokens, and a
    decode row beside another sequence's chunk. Attention calls of 8 items and passes of 16 here, so a
    chunk spans several of each (and a decode step is quick)."""
    monkeypatch.setattr(fixed_shapes, "CALL_ITEMS", 8)
    monkeypatch.setattr(fixed_shapes, "PASS_ITEMS", 16)
    model = _model(variant, "fixed", device)
    ids = prompt(150, model.cfg.vocab_size, seed=3)

    def run(chunks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        cache, rows, start = model.new_cache(), [], 0
        for n in chunks:
            rows.append(_step(model, [Segment(cache, start, n)], ids[start : start + n]))
            start += n
        return torch.cat(rows), cache.keys[:, :, : len(ids)].cpu()

    ref_logits, ref_keys = run([120] + [1] * 30)  # decode rows at positions 120..149
    for chunk in (7, 64, 150):
        logits, keys = run([chunk] * (len(ids) // chunk) + [len(ids) % chunk] * (len(ids) % chunk > 0))
        assert torch.equal(logits, ref_logits), f"chunk {chunk}"
        assert torch.equal(keys, ref_keys), f"chunk {chunk}"
    other, probe = model.new_cache(), model.new_cache()
    _step(model, [Segment(probe, 0, 140)], ids[:140])
    mixed = _step(model, [Segment(other, 0, 90), Segment(probe, 140, 1)], prompt(90, model.cfg.vocab_size) + [ids[140]])
    assert torch.equal(mixed[90], ref_logits[140])


def test_the_policy_follows_the_device_and_names_itself():
    assert resolve_policy("auto", torch.device("cuda")) == "fixed"
    assert resolve_policy("auto", torch.device("cpu")) == "tiles"
    assert resolve_policy("fixed", torch.device("cpu")) == "fixed"
    with pytest.raises(ValueError):
        resolve_policy("fast", torch.device("cpu"))
    assert _model("llama", "fixed", "cpu").version_tag.endswith(policy_tag())
    assert policy_tag() not in _model("llama", "tiles", "cpu").version_tag


def test_cuda_start_up_turns_off_what_changes_bits(monkeypatch):
    """configure_cuda_determinism (run by every CUDA DecoderModel) sets the global switches; run here on
    CPU for the flags themselves, each put back afterwards (CUBLAS_WORKSPACE_CONFIG by monkeypatch)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    names = ["allow_tf32", "allow_fp16_reduced_precision_reduction", "allow_bf16_reduced_precision_reduction"]
    flags = [(matmul, n, getattr(matmul, n)) for n in names]
    flags += [(cudnn, n, getattr(cudnn, n)) for n in ("benchmark", "deterministic")]
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    blas, precision = torch.backends.cuda.preferred_blas_library(), torch.get_float32_matmul_precision()
    try:
        settings = fixed_shapes.configure_cuda_determinism()
        fp16, bf16 = matmul.allow_fp16_reduced_precision_reduction, matmul.allow_bf16_reduced_precision_reduction
    finally:
        for obj, name, value in flags:
            setattr(obj, name, value)
        torch.backends.cuda.preferred_blas_library(blas)
        torch.set_float32_matmul_precision(precision)
    assert settings["matmul.allow_tf32"] is False and settings["float32_matmul_precision"] == "highest"
    assert fp16 is False and bf16 is False
    assert settings["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and "ublas" in str(settings["blas"]).lower()
