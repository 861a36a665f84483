"""GGUF files of the new architectures (written by scripts/write_gguf.py) served by seedstream, against
transformers reading the same file: prompt logprobs within 1e-4 and the same greedy tokens."""

from __future__ import annotations

import pytest
import torch
import write_gguf
from arch_models import GGUF_ROUND_TRIP, build_hf_model, hf_logprobs, prompt
from test_served_architectures import TOLERANCE, _serve, hf_greedy
from tiny_tokenizer import save_tiny_tokenizer

from seedstream.sampler import SamplingParams
from seedstream.server.engine import EngineConfig, GenerationRequest, load_engine

pytestmark = pytest.mark.slow  # a GGUF conversion and an engine per case

GREEDY_TOKENS = 16
# (file type, backend): F32 on both paths; Q8_0 on the kernels (which multiply the file's own blocks) and torch
CASES = [("f32", "torch"), ("f32", "kernels"), ("q8_0", "kernels"), ("q8_0", "torch")]


@pytest.fixture(scope="module", params=sorted(GGUF_ROUND_TRIP))
def written(request, tmp_path_factory):
    """{type: the .gguf path} of one architecture, each file alone in its folder (a tokenizer.json beside a
    GGUF would be read instead of the file's own)."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    build_hf_model(name, **GGUF_ROUND_TRIP[name]).save_pretrained(str(folder))
    save_tiny_tokenizer(folder)
    files = {}
    for kind in ("f32", "q8_0"):
        out = tmp_path_factory.mktemp(f"{name}-{kind}") / f"{name}-{kind}.gguf"
        write_gguf.write_gguf(folder, out, kind)
        files[kind] = out
    return name, files


def _transformers(path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


@pytest.mark.parametrize(("kind", "backend"), CASES)
def test_a_gguf_is_served_as_transformers_reads_it(written, kind, backend):
    name, files = written
    reference = _transformers(files[kind])
    engine = load_engine(EngineConfig(model=str(files[kind]), backend=backend), progress=lambda msg: None)
    if backend == "kernels" and kind == "q8_0":
        assert engine.info.weight_format == "q8_0", "the file's own blocks, not a conversion"
    ids = prompt(40, reference.config.vocab_size, seed=7)
    request = GenerationRequest(
        tuple(ids),
        SamplingParams(temperature=0.0, seed=1),
        max_new_tokens=GREEDY_TOKENS,
        ignore_eos=True,
        prompt_logprobs=True,
    )
    (tokens, logprobs, prompt_logprobs), *_ = _serve(engine, [request])[0]
    assert tokens == hf_greedy(reference, ids, GREEDY_TOKENS), f"{name} {kind}/{backend}: greedy tokens differ"
    expected = hf_logprobs(reference, ids + tokens[:-1])
    chosen = expected[torch.arange(len(ids) + len(tokens) - 1), torch.tensor(ids[1:] + tokens)]
    diff = (torch.tensor(prompt_logprobs[1:] + logprobs) - chosen).abs().max().item()
    assert diff <= TOLERANCE, f"{name} {kind}/{backend}: max |logprob difference| {diff:.2e}"
