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


def check_against(engine, reference, label: str) -> None:
    """The engine's greedy tokens equal transformers' argmax on `reference`, and its prompt and output
    logprobs are within TOLERANCE of transformers'."""
    ids = prompt(40, reference.config.vocab_size, seed=7)
    request = GenerationRequest(
        tuple(ids),
        SamplingParams(temperature=0.0, seed=1),
        max_new_tokens=GREEDY_TOKENS,
        ignore_eos=True,
        prompt_logprobs=True,
    )
    (tokens, logprobs, prompt_logprobs), *_ = _serve(engine, [request])[0]
    assert tokens == hf_greedy(reference, ids, GREEDY_TOKENS), f"{label}: greedy tokens differ"
    expected = hf_logprobs(reference, ids + tokens[:-1])
    chosen = expected[torch.arange(len(ids) + len(tokens) - 1), torch.tensor(ids[1:] + tokens)]
    diff = (torch.tensor(prompt_logprobs[1:] + logprobs) - chosen).abs().max().item()
    assert diff <= TOLERANCE, f"{label}: max |logprob difference| {diff:.2e}"


@pytest.mark.parametrize(("kind", "backend"), CASES)
def test_a_gguf_is_served_as_transformers_reads_it(written, kind, backend):
    name, files = written
    reference = _transformers(files[kind])
    engine = load_engine(EngineConfig(model=str(files[kind]), backend=backend), progress=lambda msg: None)
    if backend == "kernels" and kind == "q8_0":
        assert engine.info.weight_format == "q8_0", "the file's own blocks, not a conversion"
    check_against(engine, reference, f"{name} {kind}/{backend}")


# K-types need rows of whole 256-value super-blocks
K_SHAPES = dict(vocab_size=256, hidden_size=256, intermediate_size=512, head_dim=64, num_hidden_layers=2)


@pytest.mark.parametrize(
    ("kind", "weight_format"), [("q4_k_m", "q4_k,q6_k"), ("mixed", None), ("q3_k", "q3_k"), ("q2_k", "q2_k")]
)
def test_k_quant_files_are_served_as_stored(tmp_path, kind, weight_format):
    """A Q4_K_M file runs on its own Q4_K and Q6_K blocks (weight_format names the mix); a file mixing every
    type runs each matrix in its own; Q3_K and Q2_K files run on their own blocks: all as transformers
    reads the same file."""
    folder = tmp_path / "llama"
    build_hf_model("llama", **K_SHAPES).save_pretrained(str(folder))
    save_tiny_tokenizer(folder)
    out = tmp_path / kind / f"llama-{kind}.gguf"
    out.parent.mkdir()
    write_gguf.write_gguf(folder, out, kind)
    reference = _transformers(out)
    engine = load_engine(EngineConfig(model=str(out), backend="kernels"), progress=lambda msg: None)
    if weight_format:
        assert engine.info.weight_format == weight_format
    else:
        assert len(engine.info.weight_format.split(",")) >= 5, engine.info.weight_format
    check_against(engine, reference, kind)


@pytest.mark.parametrize(("weights", "weight_format"), [("q8_0", "q8_0"), ("q4_1", "q4_1,q6_k")])
def test_a_named_conversion_reports_what_the_layers_are(tmp_path, weights, weight_format):
    """--weights names a conversion that keeps the stored blocks at least as precise: a Q4_K_M file asked for
    q8_0 converts every layer (q8_0); asked for q4_1, its Q6_K blocks stay as stored, and weight_format (so
    engine_version and every receipt) says so instead of claiming q4_1."""
    folder = tmp_path / "llama"
    build_hf_model("llama", **K_SHAPES).save_pretrained(str(folder))
    save_tiny_tokenizer(folder)
    out = tmp_path / "q4_k_m" / "llama-q4_k_m.gguf"
    out.parent.mkdir()
    write_gguf.write_gguf(folder, out, "q4_k_m")
    engine = load_engine(EngineConfig(model=str(out), backend="kernels", weights=weights), progress=lambda m: None)
    assert engine.info.weight_format == weight_format
    assert f".{weight_format}." in engine.info.engine_version
