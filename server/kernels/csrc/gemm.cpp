// GEMM y = x W^T over packed weight tiles: float32 activations, one code path for any row count.
//
// For every output element (m, n) the reduction over k is one fixed sequence, whatever the number of
// rows, the row's position, the thread count or the SIMD width (lanes are output columns, so a lane
// never shares a sum with another element):
//   f32:  acc = fma(x[k], w[n,k], acc) for k = 0, 1, ...
//   q8_0: per 32-block b in order: sq = fma-chain over k of x[k] * q[n,k]; acc = fma(d[n,b], sq, acc)
//   q4_1: the same, then acc = fma(m[n,b], s[b], acc) with s[b] the block's sum of x (block_sums)
// Activations stay float32: quantising them to 8 bits (llama.cpp's Q8_1) changed the default model's
// answers (docs/kernels.md). Weights are expanded to float in registers, except that the many-row kernel of the
// block formats (gemm_blocks.h) expands one chunk of a few tiles at a time into a small L1-resident scratch.
//
// This unit dispatches on the format; the kernels and their tile loop (gemm_tiles.h) are instantiated per
// format family in gemm_plain.cpp, gemm_q32.cpp, gemm_k2.cpp and gemm_k4.cpp, which compile in parallel.
#include "gemm_formats.h"

// Values and bytes of one tile block of a block format (gemm_blocks.h); 0 for the others.
template <class F>
static void geometry(int* values, int* bytes) { *values = F::S, *bytes = F::BLOCK; }
void block_geometry(int format, int* values, int* bytes) {
  *values = *bytes = 0;
  switch (format) {
    case SSK_Q4_0: return geometry<FmtQ4_0>(values, bytes);
    case SSK_Q5_0: return geometry<FmtQ5_0>(values, bytes);
    case SSK_Q5_1: return geometry<FmtQ5_1>(values, bytes);
    case SSK_Q2_K: return geometry<FmtQ2_K>(values, bytes);
    case SSK_Q3_K: return geometry<FmtQ3_K>(values, bytes);
    case SSK_Q4_K: return geometry<FmtQ4_K>(values, bytes);
    case SSK_Q5_K: return geometry<FmtQ5_K>(values, bytes);
    case SSK_Q6_K: return geometry<FmtQ6_K>(values, bytes);
  }
}

size_t tile_bytes(int format, int k) {
  switch (format) {
    case SSK_F32: return (size_t)k * SSK_NR * sizeof(float);
    case SSK_F16:
    case SSK_BF16: return (size_t)k * SSK_NR * sizeof(uint16_t);
    case SSK_Q8_0: return (size_t)(k / SSK_QK) * Q8_0_TILE_BLOCK;
    case SSK_Q4_1: return (size_t)(k / SSK_QK) * Q4_1_TILE_BLOCK;
  }
  int values, bytes;
  block_geometry(format, &values, &bytes);
  return (size_t)(k / values) * bytes;
}

// xp[kk * rows + r] = x[r, kk] for each group of MR_BIG rows (the last group may be shorter).
static void interleave_rows(const float* x, int m, int k, float* xp) {
  for (int m0 = 0; m0 < m; m0 += MR_BIG) {
    const int rows = m - m0 < MR_BIG ? m - m0 : MR_BIG;
    float* out = xp + (size_t)m0 * k;
    for (int kk = 0; kk < k; ++kk)
      for (int r = 0; r < rows; ++r) out[(size_t)kk * rows + r] = x[(size_t)(m0 + r) * k + kk];
  }
}

size_t gemm_scratch_floats(int m, int k) {
  const size_t interleaved = m > MR_BIG / 2 ? (size_t)m * k : 0, ints = i8_scratch_floats(m, k);
  return interleaved > ints ? interleaved : ints;
}

static void gemm_part(Pool& pool, const ssk_matrix& w, int m, const float* x, const float* sums, float* y, int ldy,
                      float* scratch) {
  if (w.act == SSK_ACT_I8) return gemm_i8(pool, w, m, x, y, ldy, scratch);
  // Groups of more than MR_BIG / 2 rows take the interleaved kernel: their inputs are interleaved first.
  const int big_rows = m > MR_BIG / 2 ? (m % MR_BIG > MR_BIG / 2 || m % MR_BIG == 0 ? m : m - m % MR_BIG) : 0;
  if (big_rows) {
    parallel(pool, [&](int t, int n) {
      int64_t begin, end;
      Pool::range((big_rows + MR_BIG - 1) / MR_BIG, t, n, &begin, &end);
      for (int64_t g = begin; g < end; ++g) {
        const int m0 = (int)g * MR_BIG, rows = big_rows - m0 < MR_BIG ? big_rows - m0 : MR_BIG;
        interleave_rows(x + (size_t)m0 * w.k, rows, w.k, scratch + (size_t)m0 * w.k);
      }
    });
  }
  switch (w.format) {  // each format's kernels and tile loop: gemm_tiles.h, instantiated in a gemm_*.cpp unit
    case SSK_F32: return GemmFormat<F32Kernels>::run(pool, w, m, big_rows, x, scratch, sums, y, ldy);
    case SSK_Q8_0: return GemmFormat<Q8_0Kernels>::run(pool, w, m, big_rows, x, scratch, sums, y, ldy);
    case SSK_Q4_1: return GemmFormat<Q4_1Kernels>::run(pool, w, m, big_rows, x, scratch, sums, y, ldy);
    case SSK_Q4_0: return GemmFormat<BlockKernels<FmtQ4_0>>::run(pool, w, m, big_rows, x, scratch, sums, y, ldy);
    case SSK_Q5_0: return GemmFormat<BlockKernels<FmtQ5_0>>::run(pool, w, m, big_rows, x, scratch, sums, y, ldy);
    case SSK_Q5_1: return GemmFormat<BlockKernels<FmtQ5_1>>::run(pool, w, m, big_rows, x, scratch, sums, y, ldy);
    case SSK_Q2_K: return GemmFormat<BlockKernels<FmtQ2_K>>::run(pool, w, m, big_rows, x, scratch, sums, y, ldy);
    case SSK_Q3_K: return GemmFormat<BlockKernels<FmtQ3_K>>::run(pool, w, m, big_rows, x, scratch, sums, y, ldy);
    case SSK_Q4_K: return GemmFormat<BlockKernels<FmtQ4_K>>::run(pool, w, m, big_rows, x, scratch, sums, y, ldy);
    case SSK_Q5_K: return GemmFormat<BlockKernels<FmtQ5_K>>::run(pool, w, m, big_rows, x, scratch, sums, y, ldy);
    case SSK_Q6_K: return GemmFormat<BlockKernels<FmtQ6_K>>::run(pool, w, m, big_rows, x, scratch, sums, y, ldy);
    case SSK_F16: return GemmFormat<H16Kernels<false>>::run(pool, w, m, big_rows, x, scratch, sums, y, ldy);
    case SSK_BF16: return GemmFormat<H16Kernels<true>>::run(pool, w, m, big_rows, x, scratch, sums, y, ldy);
  }
}

void add_bias(const ssk_matrix& w, int n0, int tiles, int m, float* y, int ldy) {
  for (int c = n0; c < n0 + SSK_NR * tiles; c += SSK_NR) {
    const V16 bias = v_load(w.bias + c);
    for (int r = 0; r < m; ++r) v_store(y + (size_t)r * ldy + c, v_add(v_load(y + (size_t)r * ldy + c), bias));
  }
}

void gemm(Pool& pool, const ssk_matrix& w, int m, const float* x, const float* sums, float* y, int ldy,
          float* scratch) {
  for (const ssk_matrix* p = &w; p; y += p->n, p = p->next) gemm_part(pool, *p, m, x, sums, y, ldy, scratch);
}

void dequant_row_blocks(const ssk_matrix& w, int row, float* out) {
  switch (w.format) {
    case SSK_Q4_0: return BlockRows<FmtQ4_0>::dequant(w, row, out);
    case SSK_Q5_0: return BlockRows<FmtQ5_0>::dequant(w, row, out);
    case SSK_Q5_1: return BlockRows<FmtQ5_1>::dequant(w, row, out);
    case SSK_Q2_K: return BlockRows<FmtQ2_K>::dequant(w, row, out);
    case SSK_Q3_K: return BlockRows<FmtQ3_K>::dequant(w, row, out);
    case SSK_Q4_K: return BlockRows<FmtQ4_K>::dequant(w, row, out);
    case SSK_Q5_K: return BlockRows<FmtQ5_K>::dequant(w, row, out);
    case SSK_Q6_K: return BlockRows<FmtQ6_K>::dequant(w, row, out);
  }
}
