"""scripts/write_gguf.py and scripts/kquants.py: blocks gguf.quants reads back close, GGUF files transformers reads back exactly."""

from __future__ import annotations

import copy

import arch_models
import gguf
import numpy as np
import pytest
import torch
import write_gguf
from tiny_tokenizer import save_tiny_tokenizer

# Relative RMS error bound per type on Gaussian rows (measured, with a margin: docs/gguf.md has the numbers).
REL_RMS_BOUND = {
    "f16": 1e-3,
    "bf16": 5e-3,
    "q8_0": 0.008,
    "q4_0": 0.10,
    "q4_1": 0.09,
    "q5_0": 0.05,
    "q5_1": 0.045,
    "q2_k": 0.40,
    "q3_k": 0.18,
    "q4_k": 0.09,
    "q5_k": 0.045,
    "q6_k": 0.022,
}

# Every row a whole number of 256-value super-blocks, so no matrix falls back from a K-type.
K_SHAPES = dict(vocab_size=256, hidden_size=256, intermediate_size=512, head_dim=64)


def _rows(seed: int = 0) -> np.ndarray:
    """Gaussian rows with the awkward cases: an outlier, an all-positive row, an all-negative row, zeros."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 512)).astype(np.float32) * 0.02
    x[1, 7] = 0.5
    x[2] = np.abs(x[2])
    x[3] = -np.abs(x[3])
    x[4] = 0.0
    return x


@pytest.mark.parametrize("kind", list(REL_RMS_BOUND))
def test_blocks_dequantise_close_to_the_input(kind):
    x = _rows()
    stored = write_gguf.encode(x, kind)
    qtype = gguf.GGMLQuantizationType[kind.upper()]
    block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    assert stored.nbytes == x.size // block * nbytes
    y = gguf.quants.dequantize(stored, qtype)
    assert y.shape == x.shape
    rel = np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2))
    assert rel < REL_RMS_BOUND[kind], rel
    assert np.all(y[4] == 0.0)  # a zero block stays zero
    # per row too, so that a scrambled sub-block or a wrong sign somewhere cannot hide in the mean
    row_rel = np.sqrt(np.mean((y - x) ** 2, axis=1) / np.maximum(np.mean(x**2, axis=1), 1e-30))
    assert np.all(row_rel[np.arange(64) != 4] < 2.5 * REL_RMS_BOUND[kind]), row_rel.max()


def _folder(tmp_path_factory, name: str, **overrides):
    """(transformers model, its save_pretrained folder with the tiny tokenizer) of arch_models' `name`."""
    model = arch_models.build_hf_model(name, **overrides)
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(str(path))
    save_tiny_tokenizer(path)
    return model, path


def _load_gguf(path, file_name: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path), gguf_file=file_name, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def _as_stored(model, written: list[tuple[str, str, str]]):
    """`model` with each weight replaced by what the file holds, decoded: the block types' dequantised
    values (rows quantise alone, so llama.cpp's q/k row permutation commutes with this), Gemma's norms
    as (1 + w) - 1 in float32."""
    ref = copy.deepcopy(model)
    params = dict(ref.named_parameters())
    gemma = model.config.model_type.startswith("gemma")
    with torch.no_grad():
        for hf, _, kind in written:
            if hf not in params:
                continue  # rope_freqs and other extras have no HF parameter
            w = params[hf].detach().numpy()
            if kind != "f32":
                w = write_gguf.decode(write_gguf.encode(w, kind), kind).reshape(w.shape)
            elif gemma and hf.endswith("norm.weight"):
                w = (w + np.float32(1.0)) - np.float32(1.0)
            params[hf].copy_(torch.from_numpy(np.ascontiguousarray(w)))
    return ref


def _check_reader(path, written, cfg) -> None:
    """gguf.GGUFReader reads the file: every tensor, in the type it was written, dequantisable, and the keys
    llama.cpp needs."""
    reader = gguf.GGUFReader(str(path))
    kinds = {t.name: t.tensor_type.name.lower() for t in reader.tensors}
    assert kinds == {name: kind for _, name, kind in written}
    for t in reader.tensors:
        assert gguf.quants.dequantize(t.data, t.tensor_type).size == int(np.prod(t.shape))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    for key in ("context_length", "embedding_length", "block_count", "attention.head_count", "vocab_size"):
        assert f"{arch}.{key}" in reader.fields, key
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == cfg.vocab_size


def _max_logprob_diff(a, b, vocab: int) -> float:
    ids = arch_models.prompt(24, vocab)
    return float((arch_models.hf_logprobs(a, ids) - arch_models.hf_logprobs(b, ids)).abs().max())


@pytest.mark.parametrize("name", list(arch_models.GGUF_ROUND_TRIP))
def test_f32_and_q8_0_files_load_in_transformers_as_the_same_model(tmp_path_factory, name):
    model, path = _folder(tmp_path_factory, name, **arch_models.GGUF_ROUND_TRIP[name])
    for kind in ("f32", "q8_0"):
        written = write_gguf.write_gguf(path, path / f"model-{kind}.gguf", kind)
        _check_reader(path / f"model-{kind}.gguf", written, model.config)
        loaded = _load_gguf(path, f"model-{kind}.gguf")
        reference = model if kind == "f32" else _as_stored(model, written)
        assert _max_logprob_diff(loaded, reference, model.config.vocab_size) <= 1e-4, kind


@pytest.fixture(scope="module")
def k_llama(tmp_path_factory):
    """An untied Llama whose every matrix row is whole K-type super-blocks (K_SHAPES)."""
    return _folder(tmp_path_factory, "llama", tie_word_embeddings=False, **K_SHAPES)


def _k_folder(tmp_path_factory, name: str):
    return _folder(tmp_path_factory, name, **{**arch_models.GGUF_ROUND_TRIP[name], **K_SHAPES})


@pytest.mark.parametrize("kind", [k for k in write_gguf.FILE_TYPES if k not in ("f32", "q8_0")])
def test_every_type_loads_in_transformers_as_the_stored_model(k_llama, kind):
    model, path = k_llama
    written = write_gguf.write_gguf(path, path / f"model-{kind}.gguf", kind)
    _check_reader(path / f"model-{kind}.gguf", written, model.config)
    matrices = {k for _, name, k in written if not name.endswith("norm.weight")}
    if kind in write_gguf.SINGLE_TYPES:
        assert matrices == {kind}  # no fallback: K_SHAPES rows are whole blocks of every type
    loaded = _load_gguf(path, f"model-{kind}.gguf")
    assert _max_logprob_diff(loaded, _as_stored(model, written), model.config.vocab_size) <= 1e-4


def test_q4_k_m_mixes_as_llama_cpp_does_roughly(k_llama):
    model, path = k_llama
    kinds = {name: k for _, name, k in write_gguf.write_gguf(path, path / "mix.gguf", "q4_k_m")}
    assert kinds["output.weight"] == "q6_k" and kinds["blk.0.attn_q.weight"] == "q4_k"
    # llama.cpp's use_more_bits over 3 layers picks the last (7 * 3 // 8 = 2) for Q6_K
    assert [kinds[f"blk.{i}.ffn_down.weight"] for i in range(3)] == ["q4_k", "q4_k", "q6_k"]
    assert [kinds[f"blk.{i}.attn_v.weight"] for i in range(3)] == ["q4_k", "q4_k", "q6_k"]
    assert kinds["blk.0.attn_norm.weight"] == "f32"


@pytest.mark.parametrize("name", ["qwen2-window", "gemma3"])
def test_k_mix_files_of_other_architectures_load_in_transformers(tmp_path_factory, name):
    model, path = _k_folder(tmp_path_factory, name)
    for kind in ("q4_k_m", "mixed"):
        written = write_gguf.write_gguf(path, path / f"model-{kind}.gguf", kind)
        loaded = _load_gguf(path, f"model-{kind}.gguf")
        assert _max_logprob_diff(loaded, _as_stored(model, written), model.config.vocab_size) <= 1e-4, kind


def test_rows_that_are_not_whole_blocks_fall_back_to_f16():
    assert write_gguf.choose_type("q4_k", "blk.0.attn_q.weight", (64, 64)) == "f16"
    assert write_gguf.choose_type("q4_0", "blk.0.attn_q.weight", (64, 64)) == "q4_0"
    assert write_gguf.choose_type("q4_0", "blk.0.attn_q.weight", (64, 48)) == "f16"
    assert write_gguf.choose_type("q8_0", "blk.0.attn_norm.weight", (64,)) == "f32"


def test_the_file_s_tokenizer_is_the_folder_s(tmp_path_factory):
    from transformers import AutoTokenizer

    _, path = _folder(tmp_path_factory, "llama")
    alone = tmp_path_factory.mktemp("gguf-alone")  # beside tokenizer.json, transformers would read that one
    write_gguf.write_gguf(path, alone / "model.gguf", "f32")
    folder = AutoTokenizer.from_pretrained(str(path))
    from_file = AutoTokenizer.from_pretrained(str(alone), gguf_file="model.gguf")
    text = "Hello there, the cat sat on the mat. 123 {x: 'y'}\n"
    assert from_file(text)["input_ids"] == folder(text)["input_ids"]
    assert (from_file.bos_token_id, from_file.eos_token_id) == (1, 2)
    chat = [{"role": "user", "content": "hi"}]
    assert from_file.apply_chat_template(chat, tokenize=False) == folder.apply_chat_template(chat, tokenize=False)


def test_what_has_no_gguf_form_is_refused(tmp_path_factory):
    _, path = _folder(tmp_path_factory, "llama-rope-dynamic")
    with pytest.raises(ValueError, match="dynamic"):
        write_gguf.write_gguf(path, path / "model.gguf", "f32")
    _, path = _folder(tmp_path_factory, "smollm3-nope")
    with pytest.raises(ValueError, match="smollm3"):
        write_gguf.write_gguf(path, path / "model.gguf", "f32")


def test_cli_adds_the_tiny_tokenizer_and_writes(tmp_path, capsys):
    path = arch_models.save_model_dir("qwen3", tmp_path / "qwen3")
    assert write_gguf.main([str(path), str(tmp_path / "q.gguf"), "--type", "q5_1", "--tiny-tokenizer"]) == 0
    assert (path / "tokenizer.json").exists()
    assert "q.gguf" in capsys.readouterr().out
    assert {t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "q.gguf")).tensors} == {"F32", "Q5_1"}
