// seedstream kernels: C ABI shared by the C++ sources and the Python ctypes wrapper (server/kernels/lib.py).
#pragma once
#include <cstddef>
#include <cstdint>

#define SSK_ABI_VERSION 6

extern "C" {

// Weight formats (ssk_matrix.format): GGUF's block types kept as stored, and 16-bit floats (gemm_blocks.h).
enum {
  SSK_F32 = 0, SSK_Q8_0 = 1, SSK_Q4_1 = 2, SSK_Q4_0 = 3, SSK_Q5_0 = 4, SSK_Q5_1 = 5,
  SSK_Q4_K = 6, SSK_Q5_K = 7, SSK_Q6_K = 8, SSK_F16 = 9, SSK_BF16 = 10, SSK_Q2_K = 11, SSK_Q3_K = 12
};
enum { SSK_KV_F32 = 0, SSK_KV_BF16 = 1 };  // element type of the KV caches of a step
enum { SSK_ACT_F32 = 0, SSK_ACT_I8 = 1 };  // what a GEMM multiplies the weights with (ssk_matrix.act)
enum { SSK_SILU = 0, SSK_GELU_TANH = 1 };  // the MLP's activation of the gate (ssk_model.activation)

// A weight matrix [n, k] (n output columns, k inputs) packed by server/kernels/packing.py into tiles of
// SSK_NR output columns, block-interleaved (see gemm.cpp for each format's tile layout). With act
// SSK_ACT_I8 (q8_0, q4_1, q4_0, q5_0, q5_1, q4_k, q5_k and q6_k) the quants of each tile block are laid out for integer dot products and
// every input row is quantised to int8 per 32-block first (gemm_i8.cpp).
// A fused matrix whose parts are stored in different formats (q/k/v of a Q4_K_M file) is a chain: next holds
// the output columns after this part's n, with the same k; each part is multiplied in its own format.
struct ssk_matrix {
  int32_t format;      // SSK_F32, SSK_Q8_0, ... (the enum above)
  int32_t n;           // output columns, a multiple of SSK_NR
  int32_t k;           // inputs, a multiple of 32
  int32_t act;         // SSK_ACT_F32 or SSK_ACT_I8
  const uint8_t* data; // packed tiles
  const float* bias;   // [n] or null
  const ssk_matrix* next;  // the next part of a fused matrix, or null
};

// Rotary embedding tables of one kind of layer: the first rotary_dim dims of each head rotate (rotate-half
// layout within them), the others pass through.
struct ssk_rope {
  const float* cos;    // [max_context, rotary_dim]
  const float* sin;    // [max_context, rotary_dim]
  int32_t rotary_dim;  // even, 2..head_dim
};

struct ssk_layer {
  ssk_matrix qkv;      // [Hq*D + 2*Hkv*D, H]
  ssk_matrix o;        // [H, Hq*D]
  ssk_matrix gate_up;  // [2*I, H]
  ssk_matrix down;     // [H, I]
  const float* norm_in;    // [H]
  const float* norm_post;  // [H], before the MLP
  const float* q_norm;     // [D] RMSNorm of each query head before RoPE, or null
  const float* k_norm;     // [D] the same for each key head, or null
  const float* attn_out_norm;  // [H] RMSNorm of the attention output before its residual add, or null
  const float* mlp_out_norm;   // [H] the same for the MLP output, or null
  int32_t window;      // 0: full causal; W: a query at p attends keys p-W+1 .. p
  int32_t rope;        // index into ssk_model.ropes, or -1: no RoPE on this layer
};

struct ssk_model {
  int32_t n_layers, hidden, inter, n_heads, n_kv_heads, head_dim, vocab, max_context;
  float eps;
  int32_t attn_block;      // keys per attention block, at absolute positions
  float attn_scale;        // scores = q.k * attn_scale
  float attn_softcap;      // scores -> cap * tanh(scores / cap) before masking; 0: none
  float final_softcap;     // logits -> cap * tanh(logits / cap); 0: none
  float embed_scale;       // the embedding row times this (1: none)
  int32_t activation;      // SSK_SILU or SSK_GELU_TANH
  int32_t n_ropes;
  const ssk_rope* ropes;   // [n_ropes]
  ssk_matrix embed;        // [vocab rounded up to SSK_NR, hidden], rows looked up by token id (< vocab)
  ssk_matrix lm_head;      // [vocab rounded up to SSK_NR, hidden]; the padding rows are zero
  const float* norm_final; // [hidden]
  const ssk_layer* layers; // [n_layers]
};

// One step: packed rows of several sequences. Row i belongs to segment row_segment[i]; a segment's
// KV cache is keys/values [n_layers, Hkv, capacity, D] of kv_dtype, and must have room for every position.
// SSK_KV_BF16 stores each key and value rounded to bfloat16 (nearest even); attention widens them exactly.
struct ssk_step {
  int32_t n_rows, n_segments, n_logit_rows, kv_dtype;
  const int32_t* token_ids;    // [n_rows]
  const int32_t* positions;    // [n_rows]
  const int32_t* row_segment;  // [n_rows]
  void* const* seg_keys;       // [n_segments] float32 or bfloat16 (kv_dtype)
  void* const* seg_values;     // [n_segments]
  const int32_t* seg_capacity; // [n_segments]
  const int32_t* logit_rows;   // [n_logit_rows] row indices
  float* logits;               // [n_logit_rows, lm_head.n] out (columns from vocab on are padding)
};

int32_t ssk_abi_version(void);
const char* ssk_isa(void);
void* ssk_create(int32_t n_threads);
void ssk_destroy(void* ctx);
int32_t ssk_threads(void* ctx);
// 0 if the kernels can run this model, else -1 with the reason in why (NUL-terminated, at most why_len
// bytes). with_weights 0 checks the shapes and options alone (before any packing); 1 also the matrices.
int32_t ssk_check_model(const ssk_model* model, int32_t with_weights, char* why, int32_t why_len);
// Full forward of one step. Returns 0 or a negative error code.
int32_t ssk_forward(void* ctx, const ssk_model* model, const ssk_step* step);
// y[m, n] = x[m, :] . W[n, :] (+ bias), x quantised per row as the forward does. For tests.
int32_t ssk_gemm(void* ctx, const ssk_matrix* w, int32_t m, const float* x, float* y);
// Attention of n_rows query rows q [n_rows, Hq, D] against caches already holding their keys. For tests.
int32_t ssk_attention(void* ctx, const ssk_model* model, const ssk_step* step, int32_t layer,
                      const float* q, float* out);
// Row lookup of a packed matrix: out[k] = W[row, k] dequantised. For tests and the embedding.
int32_t ssk_dequant_row(const ssk_matrix* w, int32_t row, float* out);
// out[i] = x[i] rounded to bfloat16 as a bfloat16 KV cache stores it. For tests.
int32_t ssk_to_bf16(const float* x, int32_t n, uint16_t* out);
// sizeof each struct above, and the value of a tile constant of internal.h by name ("SSK_NR", "Q8_0_TILE_BLOCK",
// ...; -1 for an unknown name): lib.py checks its ctypes structs and packing.py's constants against them at load.
int32_t ssk_sizeof_matrix(void);
int32_t ssk_sizeof_rope(void);
int32_t ssk_sizeof_layer(void);
int32_t ssk_sizeof_model(void);
int32_t ssk_sizeof_step(void);
int32_t ssk_tile_constant(const char* name);
}
