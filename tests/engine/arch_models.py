"""Tiny random-weight models of every supported architecture, built by transformers, and its reference forward.

Norms are drawn away from 1 and biases away from 0, so a dropped norm or bias shows in the logits. Dimensions
are small but cross every boundary that matters: prompts longer than the windows and than one attention
block of either path, GQA, a head_dim that is not hidden / heads, and a vocabulary that is not a multiple of 16.
"""

from __future__ import annotations

from pathlib import Path

import torch

BASE = dict(
    vocab_size=250,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
WINDOW = 8
_LONG = [1.0 + 0.25 * i for i in range(16)]

# name -> (model_type, config overrides): every option of issue 21, one model each
VARIANTS: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {"tie_word_embeddings": True}),
    "llama-untied-vocab256": ("llama", {"vocab_size": 256}),
    "llama-rope-linear": ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}),
    "llama-rope-dynamic": ("llama", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}}),
    "llama-rope-llama3": (
        "llama",
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
                "rope_theta": 500000.0,
            }
        },
    ),
    "llama-rope-yarn": (
        "llama",
        {
            "rope_parameters": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 64,
                "rope_theta": 10000.0,
            }
        },
    ),
    "llama-rope-longrope": (
        "llama",
        {
            "rope_parameters": {
                "rope_type": "longrope",
                "short_factor": [1.0 + 0.1 * i for i in range(16)],
                "long_factor": _LONG,
                "original_max_position_embeddings": 128,
                "rope_theta": 10000.0,
            }
        },
    ),
    "llama-biases-headdim48": ("llama", {"attention_bias": True, "mlp_bias": True, "head_dim": 48}),
    "mistral-window": ("mistral", {"sliding_window": WINDOW}),
    "qwen2-window": ("qwen2", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
    "qwen3": ("qwen3", {"attention_bias": True}),
    "gemma": ("gemma", {"head_dim": 32}),
    "gemma2": (
        "gemma2",
        {
            "sliding_window": WINDOW,
            "query_pre_attn_scalar": 24,
            "final_logit_softcapping": 3.0,
            "attn_logit_softcapping": 2.0,
        },
    ),
    "gemma3": (
        "gemma3_text",
        {
            "sliding_window": WINDOW,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            "rope_parameters": {
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
            },
            "query_pre_attn_scalar": 48,
        },
    ),
    "phi3-partial-rotary": ("phi3", {"partial_rotary_factor": 0.5, "sliding_window": 2 * WINDOW}),
    "smollm3-nope": ("smollm3", {"no_rope_layers": [1, 0, 1], "tie_word_embeddings": True}),
}

# name -> config overrides under which transformers' GGUF loader rebuilds the same model: it reads no
# head_dim for qwen2/qwen3/phi3 (so it must be hidden / heads, or Qwen3's default 128), no bias flag, no
# partial rotary, no Gemma query_pre_attn_scalar / soft caps / layer types (so these keep its defaults),
# and reads a Mistral as the Llama it is (so no window).
GGUF_ROUND_TRIP = {
    "llama": {},
    "mistral-window": {"sliding_window": None},
    "qwen2-window": {"head_dim": 16, "use_sliding_window": False, "layer_types": None},
    "qwen3": {"head_dim": 128, "attention_bias": False},
    "phi3-partial-rotary": {
        "head_dim": 16,
        "partial_rotary_factor": 1.0,
        "rope_parameters": None,
        "sliding_window": None,
    },
    "gemma2": {"query_pre_attn_scalar": 256, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0},
    "gemma3": {"query_pre_attn_scalar": 256, "layer_types": None, "rope_parameters": None},
}


def hf_config(name: str, **overrides):
    from transformers import AutoConfig

    model_type, extra = VARIANTS[name]
    return AutoConfig.for_model(model_type, **{**BASE, **extra, **overrides})


def build_hf_model(name: str, seed: int = 0, **overrides):
    """The transformers model of VARIANTS[name] (float32, eager attention), with norms and biases perturbed."""
    from transformers import AutoModelForCausalLM

    cfg = hf_config(name, **overrides)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    gemma = cfg.model_type.startswith("gemma")
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if pname.endswith("norm.weight"):  # Gemma stores w of (1 + w): around 0; others around 1
                param.normal_(0.0 if gemma else 1.0, 0.2)
            elif pname.endswith(".bias"):
                param.normal_(0.0, 0.1)
    return model


def save_model_dir(name: str, path: Path, seed: int = 0, **overrides) -> Path:
    """VARIANTS[name] saved as a safetensors folder (config and weights; no tokenizer)."""
    build_hf_model(name, seed, **overrides).save_pretrained(str(path))
    return path


def served_inputs(model) -> tuple:
    """(ModelConfig, canonical state dict) of a transformers model, as the engine reads a checkpoint."""
    from seedstream.server.engine.arch import ModelConfig, canonical_state_dict

    cfg = ModelConfig.from_hf(model.config.to_dict())
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return cfg, canonical_state_dict(cfg, state)


@torch.no_grad()
def hf_logprobs(model, ids: list[int]) -> torch.Tensor:
    """transformers' own forward of one sequence: log-softmax [T, V] float32."""
    logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def prompt(length: int, vocab: int, seed: int = 1) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (length,), generator=g).tolist()
