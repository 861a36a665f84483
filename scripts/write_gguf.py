"""Write a Hugging Face model folder as a GGUF file, with llama.cpp's names, layout and metadata, in any common type.

    python scripts/write_gguf.py MODEL_DIR OUT.gguf --type q4_k_m

For test files of tiny random-weight models (issues 21 and 22), never for weights anyone downloads: the
K-type quantisers (scripts/kquants.py) are valid but simpler than llama.cpp's. See docs/gguf.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # kquants and tiny_tokenizer, run as a script too

import kquants  # noqa: E402

# transformers model_type -> GGUF architecture (llama.cpp writes a Mistral as a llama)
ARCHS = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
}
_PERMUTED = ("llama", "mistral")  # llama.cpp interleaves these q/k rows for its rope kernel
SINGLE_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
MIXES = ["q4_k_m", "q5_k_m", "mixed"]
FILE_TYPES = SINGLE_TYPES + MIXES
# A matrix whose rows do not split into whole blocks of its type is written as F16 (what llama.cpp's
# quantiser falls back to when no block type fits); 1-D tensors (norms, biases, rope factors) stay F32.
FALLBACK = "f16"


def _qtype(name: str):
    import gguf

    return gguf.GGMLQuantizationType[name.upper()]


def load_folder(model_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, every safetensors tensor as float32 numpy) of a save_pretrained folder."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    state: dict[str, np.ndarray] = {}
    for f in files:
        state.update({k: v.float().numpy() for k, v in load_file(str(f)).items()})
    return cfg, state


def _head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def _rope(cfg: dict, layer_type: str = "full_attention") -> dict:
    """The rope parameters of one layer type, from transformers 5's rope_parameters or the older keys."""
    rope = cfg.get("rope_parameters")
    if rope is None:
        rope = {"rope_theta": cfg.get("rope_theta", 10000.0), **(cfg.get("rope_scaling") or {})}
    if layer_type in rope:  # Gemma 3: one dict per layer type
        rope = rope[layer_type]
    rope = dict(rope)
    rope.setdefault("rope_type", rope.get("type", "default"))
    return rope


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row interleaving (convert_hf_to_gguf.py LlamaModel.permute): HF row (h, t, i) becomes
    row (h, i, t). Works on a weight [rows, K] and a bias [rows]; the inverse is gguf_tensors._unpermute."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_freqs(cfg: dict, rope: dict) -> np.ndarray:
    """The per-frequency divisors llama.cpp stores as rope_freqs.weight for rope_type llama3."""
    dim = _head_dim(cfg)
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = rope["factor"], rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def gguf_tensors(cfg: dict, state: dict[str, np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
    """(HF name, GGUF name, float32 values as the file stores them) for every tensor, in file order.
    Values differ from HF's only where llama.cpp's do: q/k rows permuted (llama, mistral) and Gemma's norms
    stored as 1 + w. A tensor that llama.cpp has no name for is an error, never dropped."""
    import gguf

    model_type = cfg["model_type"]
    arch = ARCHS[model_type]
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg["num_hidden_layers"])
    out = []
    for hf, w in state.items():
        if hf == "lm_head.weight" and cfg.get("tie_word_embeddings"):
            continue  # a tied output is the embedding: llama.cpp writes no output.weight then
        base, _, suffix = hf.rpartition(".")
        name = name_map.get_name(base)
        if name is None:
            raise ValueError(f"{hf}: no GGUF name for it in llama.cpp's {arch} tensor map")
        if model_type in _PERMUTED and name.endswith((".attn_q", ".attn_k")):
            heads = cfg["num_attention_heads"] if name.endswith("q") else cfg["num_key_value_heads"]
            w = _permute(w, heads)
        if model_type.startswith("gemma") and hf.endswith("norm.weight"):
            w = w + np.float32(1.0)
        out.append((hf, f"{name}.{suffix}", np.ascontiguousarray(w, dtype=np.float32)))
    rope = _rope(cfg)
    if rope["rope_type"] == "llama3":
        out.append(("", "rope_freqs.weight", _llama3_rope_freqs(cfg, rope)))
    if rope["rope_type"] == "longrope":
        out.append(("", "rope_factors_long.weight", np.asarray(rope["long_factor"], np.float32)))
        out.append(("", "rope_factors_short.weight", np.asarray(rope["short_factor"], np.float32)))
    return out


def _more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third between."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def _mix_type(file_type: str, name: str, index: int, n_layers: int) -> str:
    """The wanted type of matrix `name` (the index-th matrix of the file) under a mix."""
    if file_type == "mixed":  # every block type in one file, in turn: the "mixed freely" case of issue 22
        cycle = [t for t in SINGLE_TYPES if t != "f32"]
        return cycle[index % len(cycle)]
    base = {"q4_k_m": "q4_k", "q5_k_m": "q5_k"}[file_type]
    if name == "output.weight":
        return "q6_k"
    if name.endswith((".attn_v.weight", ".ffn_down.weight")):  # as llama.cpp's Q4_K_M / Q5_K_M do, roughly
        return "q6_k" if _more_bits(int(name.split(".")[1]), n_layers) else base
    return base


def choose_type(file_type: str, name: str, shape: tuple[int, ...], index: int = 0, n_layers: int = 1) -> str:
    """The type a tensor is written in: 1-D tensors F32; matrices the file type (or its mix's choice), or
    FALLBACK when their rows do not split into whole blocks of it."""
    import gguf

    if len(shape) < 2:
        return "f32"
    want = _mix_type(file_type, name, index, n_layers) if file_type in MIXES else file_type
    block = gguf.GGML_QUANT_SIZES[_qtype(want)][0]
    return want if shape[-1] % block == 0 else FALLBACK


def encode(values: np.ndarray, type_name: str) -> np.ndarray:
    """float32 values [rows, K] as the file stores them in `type_name`: float arrays for F32/F16, uint8
    block bytes [rows, bytes per row] for BF16 and the block types."""
    import gguf

    if type_name.upper() in kquants.QUANTIZERS:
        return kquants.quantize(values, type_name.upper())
    return gguf.quants.quantize(values, _qtype(type_name))


def decode(stored: np.ndarray, type_name: str) -> np.ndarray:
    """The float32 values a reader gets back from `encode`'s output (gguf.quants.dequantize)."""
    import gguf

    return gguf.quants.dequantize(stored, _qtype(type_name)).astype(np.float32)


def _add_rope(w, cfg: dict, arch: str) -> None:
    """rope.freq_base (and the sliding layers' own base) and the rope scaling keys llama.cpp reads.
    A rope_type with no GGUF form is refused rather than written as something else."""
    import gguf

    rope = _rope(cfg)
    w.add_rope_freq_base(float(rope["rope_theta"]))
    if arch == "gemma3":
        w.add_rope_freq_base_swa(float(_rope(cfg, "sliding_attention")["rope_theta"]))
    kind = rope["rope_type"]
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(rope["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif kind == "longrope":
        orig = rope.get("original_max_position_embeddings") or cfg["original_max_position_embeddings"]
        scale = cfg["max_position_embeddings"] / orig
        w.add_rope_scaling_orig_ctx_len(int(orig))
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0)
    elif kind not in ("default", "llama3"):  # llama3's scaling is the rope_freqs tensor
        raise ValueError(f"rope_type {kind!r} has no GGUF form (default, linear, yarn, llama3, longrope)")


def _add_window(w, cfg: dict) -> None:
    """sliding_window, and which layers slide (one bool per layer) where the config says."""
    types = cfg.get("layer_types")
    sliding = [t == "sliding_attention" for t in types] if types else None
    window = cfg.get("sliding_window")
    if cfg["model_type"] == "qwen2" and not cfg.get("use_sliding_window"):
        window = None  # Qwen2 configs carry a window they do not use
    if window and (sliding is None or any(sliding)):
        w.add_sliding_window(int(window))
        if sliding is not None:
            w.add_sliding_window_pattern(sliding)


def add_metadata(w, cfg: dict, arch: str) -> None:
    """The architecture keys llama.cpp and transformers' GGUF loader read."""
    head_dim = _head_dim(cfg)
    w.add_context_length(int(cfg["max_position_embeddings"]))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_block_count(int(cfg["num_hidden_layers"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(int(cfg["num_attention_heads"]))
    w.add_head_count_kv(int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    partial = _rope(cfg).get("partial_rotary_factor") or cfg.get("partial_rotary_factor") or 1.0
    w.add_rope_dimension_count(int(head_dim * partial))
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    w.add_vocab_size(int(cfg["vocab_size"]))
    _add_rope(w, cfg, arch)
    _add_window(w, cfg)
    if arch.startswith("gemma") and cfg.get("query_pre_attn_scalar"):
        w.add_attention_scale(float(cfg["query_pre_attn_scalar"]) ** -0.5)
    if cfg.get("attn_logit_softcapping"):
        w.add_attn_logit_softcapping(float(cfg["attn_logit_softcapping"]))
    if cfg.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))


def _special_id(tok_cfg: dict, vocab: dict[str, int], key: str, cfg: dict) -> int | None:
    """The id of bos/eos/pad/unk: tokenizer_config.json's token, else config.json's id."""
    tok = tok_cfg.get(f"{key}_token")
    if isinstance(tok, dict):
        tok = tok.get("content")
    if tok in vocab:
        return vocab[tok]
    value = cfg.get(f"{key}_token_id")
    return value[0] if isinstance(value, list) else value


def read_tokenizer(model_dir: Path, cfg: dict) -> dict:
    """A byte-level BPE tokenizer.json as GGUF's tokenizer.ggml.* lists: tokens in id order (padded with
    unused [PADn] tokens up to the model's vocab_size, as llama.cpp's converter does), types, merges."""
    import gguf

    tj = json.loads((model_dir / "tokenizer.json").read_text())
    if tj["model"]["type"] != "BPE":
        raise ValueError(f"only byte-level BPE tokenizers are written (this one is {tj['model']['type']})")
    vocab = dict(tj["model"]["vocab"])
    special = {}
    for added in tj.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        special[added["id"]] = added.get("special", False)
    size = max(cfg["vocab_size"], max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for tok, i in vocab.items():
        tokens[i] = tok
        types[i] = gguf.TokenType.NORMAL
        if i in special:
            types[i] = gguf.TokenType.CONTROL if special[i] else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    cfg_path = model_dir / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    template = tok_cfg.get("chat_template")
    if template is None and (model_dir / "chat_template.jinja").exists():
        template = (model_dir / "chat_template.jinja").read_text()
    ids = {k: _special_id(tok_cfg, vocab, k, cfg) for k in ("bos", "eos", "pad", "unk")}
    pre = tj.get("pre_tokenizer") or {}
    gpt2_regex = pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
    return {
        "tokens": tokens,
        "types": types,
        "merges": merges,
        "ids": ids,
        "chat_template": template,
        "add_bos": bool(tok_cfg.get("add_bos_token", False)),
        # llama.cpp's name of GPT-2's pre-tokenisation regex; anything else gets llama.cpp's default
        "pre": "gpt-2" if gpt2_regex else "default",
    }


def add_tokenizer(w, tok: dict) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tok["pre"])
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    w.add_token_merges(tok["merges"])
    adders = {
        "bos": w.add_bos_token_id,
        "eos": w.add_eos_token_id,
        "pad": w.add_pad_token_id,
        "unk": w.add_unk_token_id,
    }
    for key, add in adders.items():
        if tok["ids"][key] is not None:
            add(int(tok["ids"][key]))
    w.add_add_bos_token(tok["add_bos"])
    if tok["chat_template"]:
        w.add_chat_template(tok["chat_template"])


# --type -> general.file_type (llama.cpp's LlamaFileType); a single K-type is llama.cpp's "_S" variant
_FTYPE = {
    "f32": "ALL_F32",
    "q3_k": "MOSTLY_Q3_K_S",
    "q4_k": "MOSTLY_Q4_K_S",
    "q5_k": "MOSTLY_Q5_K_S",
    "mixed": "GUESSED",
}


def write_gguf(model_dir: Path, out: Path, file_type: str = "f32") -> list[tuple[str, str, str]]:
    """Write `model_dir` (config.json, safetensors, tokenizer.json) to `out` in `file_type`.
    Returns (HF name, GGUF name, type) for every tensor written."""
    import gguf

    model_dir, out = Path(model_dir), Path(out)
    if file_type not in FILE_TYPES:
        raise ValueError(f"unknown type {file_type!r}: one of {', '.join(FILE_TYPES)}")
    cfg, state = load_folder(model_dir)
    if cfg["model_type"] not in ARCHS:
        raise ValueError(f"model_type {cfg['model_type']!r} is not written; supported: {', '.join(ARCHS)}")
    if not (model_dir / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer.json in {model_dir} (add one: --tiny-tokenizer)")
    arch = ARCHS[cfg["model_type"]]
    w = gguf.GGUFWriter(str(out), arch)
    # llama.cpp names a file after its folder. transformers would read a Mistral as "mistral" only when the
    # name is exactly that, and then fails (gguf has no mistral arch); so a Mistral reads back as the Llama
    # it is, less its sliding window, which llama.cpp ignores too (the key is written all the same).
    w.add_name(model_dir.name)
    ftype = _FTYPE.get(file_type, f"MOSTLY_{file_type.upper()}")
    w.add_file_type(int(gguf.LlamaFileType[ftype]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_metadata(w, cfg, arch)
    add_tokenizer(w, read_tokenizer(model_dir, cfg))
    written, n_mat = [], 0
    for hf, name, values in gguf_tensors(cfg, state):
        kind = choose_type(file_type, name, values.shape, n_mat, cfg["num_hidden_layers"])
        n_mat += values.ndim >= 2
        stored = encode(values, kind)
        raw = None if kind in ("f32", "f16") else _qtype(kind)
        w.add_tensor(name, stored, raw_dtype=raw)
        written.append((hf, name, kind))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path, help="a save_pretrained folder: config.json, *.safetensors")
    ap.add_argument("out", type=Path, help="the .gguf file to write")
    ap.add_argument("--type", default="f32", choices=FILE_TYPES, help="tensor type, or a mix (default f32)")
    ap.add_argument(
        "--tiny-tokenizer",
        action="store_true",
        help="first save scripts/tiny_tokenizer.py's tokenizer (config vocab_size) into MODEL_DIR",
    )
    args = ap.parse_args(argv)
    if args.tiny_tokenizer:
        from tiny_tokenizer import save_tiny_tokenizer

        save_tiny_tokenizer(args.model_dir)
    written = write_gguf(args.model_dir, args.out, args.type)
    counts: dict[str, int] = {}
    for _, _, kind in written:
        counts[kind] = counts.get(kind, 0) + 1
    mix = ", ".join(f"{k} x{n}" for k, n in sorted(counts.items()))
    print(f"{args.out}: {len(written)} tensors ({mix}), {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
