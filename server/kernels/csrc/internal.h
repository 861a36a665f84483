// Declarations shared by the kernel sources (not part of the C ABI).
#pragma once
#include <cstddef>
#include <cstdint>

#include "pool.h"
#include "ssk.h"

constexpr int SSK_NR = 16;           // output columns per packed tile
constexpr int SSK_QK = 32;           // values per quantisation block
constexpr int Q8_0_TILE_BLOCK = 544; // float16 d[16], int8 q[32 k][16 lanes]
constexpr int Q4_1_TILE_BLOCK = 320; // float16 d[16], float16 m[16], uint8 q[16 k][16 lanes] (k low, k+16 high nibble)
constexpr int Q8_0_QS = 32;          // byte offset of the quants in a q8_0 tile block
constexpr int Q4_1_QS = 64;          // byte offset of the quants in a q4_1 tile block
// Scales are float16, as GGUF stores them: a one-row step is bound by the bytes it reads, and float16
// widens to float32 exactly (v_load_f16), so the arithmetic is the same as with float32 scales.

size_t tile_bytes(int format, int k);
// Values and bytes of one tile block of the formats of gemm_blocks.h (Q4_0 ... Q6_K); 0 and 0 for others.
void block_geometry(int format, int* values, int* bytes);
// Whether a format's GEMM reads the block sums of its input (a minimum term).
inline bool needs_sums(int format) {
  return format == SSK_Q4_1 || format == SSK_Q5_1 || format == SSK_Q4_K || format == SSK_Q5_K;
}
inline bool chain_needs_sums(const ssk_matrix& w) {
  for (const ssk_matrix* p = &w; p; p = p->next)
    if (needs_sums(p->format)) return true;
  return false;
}
// Output columns of a (chained) matrix.
inline int matrix_rows(const ssk_matrix& w) {
  int n = 0;
  for (const ssk_matrix* p = &w; p; p = p->next) n += p->n;
  return n;
}
// s[b] = x[32b] + x[32b+1] + ... + x[32b+31], added left to right (the Q4_1 minimum term's input).
void block_sums(const float* x, int k, float* s);
// y[m, n] = x[m, :] . W[n, :] (+ bias[n]) over every part of a chained matrix; x [m, k] float32 with row stride k. sums: block_sums of each
// row (stride k/32), needed for Q4_1 only. scratch: gemm_scratch_floats(m, k) floats (the inputs of
// large row counts are interleaved there).
void gemm(Pool& pool, const ssk_matrix& w, int m, const float* x, const float* sums, float* y, int ldy,
          float* scratch);
size_t gemm_scratch_floats(int m, int k);
// y[r, c] += bias[c] for the m rows and the output columns of `tiles` tiles from column n0.
void add_bias(const ssk_matrix& w, int n0, int tiles, int m, float* y, int ldy);
// Threads split the output tiles of w (never k); fn(tile, tiles left in this thread's range) computes one
// or more tiles from there and returns how many; their bias is then added.
template <class TileFn>
void for_tiles(Pool& pool, const ssk_matrix& w, int m, float* y, int ldy, TileFn fn) {
  parallel(pool, [&](int t, int n) {
    int64_t begin, end;
    Pool::range(w.n / SSK_NR, t, n, &begin, &end);
    for (int64_t tile = begin; tile < end;) {
      const int done = fn(tile, end - tile);
      if (w.bias) add_bias(w, (int)tile * SSK_NR, done, m, y, ldy);
      tile += done;
    }
  });
}
// Weights times int8-quantised activations (gemm_i8.cpp), called by gemm() for act SSK_ACT_I8, for the formats
// i8_takes(); dequant_row_i8: a row of Q4_0 ... Q6_K in that layout (q8_0 and q4_1: quant_offset below).
void gemm_i8(Pool& pool, const ssk_matrix& w, int m, const float* x, float* y, int ldy, float* scratch);
size_t i8_scratch_floats(int m, int k);
bool i8_takes(int format);
void dequant_row_i8(const ssk_matrix& w, int row, float* out);
// Byte offset of quant byte j (q4_1: 0..15, q8_0: 0..31) of column `lane` in a tile block's quants.
inline int quant_offset(int act, int j, int lane) {
  return act == SSK_ACT_I8 ? (j / 4) * 64 + lane * 4 + j % 4 : 16 * j + lane;
}
void dequant_row(const ssk_matrix& w, int row, float* out);
void dequant_row_blocks(const ssk_matrix& w, int row, float* out);  // the formats of gemm_blocks.h

void rmsnorm_row(const float* x, const float* weight, int k, float eps, float* out);
void rope_heads(float* x, int n_heads, int head_dim, int rotary_dim, const float* cos, const float* sin);
void silu_mul_row(const float* gate, const float* up, int k, float* out);
void gelu_tanh_mul_row(const float* gate, const float* up, int k, float* out);
// x[i] = cap * tanh(x[i] / cap) for i < k (a multiple of 16)
void softcap_row(float* x, int k, float cap);
// out[i] = x[i] rounded to bfloat16 (nearest, ties to even; NaN stays NaN): a bfloat16 KV cache's entries.
void to_bf16(const float* x, int n, uint16_t* out);

constexpr int MAX_GROUP = 8;  // query heads per attention work item (a divisor of the GQA group)

// n_heads query heads of one row that share one key/value head.
struct AttnGroup {
  const float* q;       // [n_heads, D]
  const void* keys;     // [capacity, D] of this row's sequence, layer and kv head: float32, or bfloat16 (kv_bf16)
  const void* values;   // [capacity, D], the same type
  bool kv_bf16;
  int position;         // attends to keys first_key..position
  int first_key;        // 0, or position - window + 1 with a sliding window
  int n_heads;          // 1..MAX_GROUP, consecutive query heads
  float* out;           // [n_heads, D]
};
// scale multiplies q.k; softcap (0: none) caps the scaled score, cap * tanh(score / cap).
void attention_group(const AttnGroup& r, int head_dim, int block, float scale, float softcap);
// The most query heads of a GQA group of `group` that one work item takes: a divisor, at most MAX_GROUP.
int attention_heads_per_item(int group);
