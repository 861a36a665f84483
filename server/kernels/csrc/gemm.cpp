// GEMM y = x W^T over packed weight tiles: float32 activations, one code path for any row count.
//
// For every output element (m, n) the reduction over k is one fixed sequence, whatever the number of
// rows, the row's position, the thread count or the SIMD width (lanes are output columns, so a lane
// never shares a sum with another element):
//   f32:  acc = fma(x[k], w[n,k], acc) for k = 0, 1, ...
//   q8_0: per 32-block b in order: sq = fma-chain over k of x[k] * q[n,k]; acc = fma(d[n,b], sq, acc)
//   q4_1: the same, then acc = fma(m[n,b], s[b], acc) with s[b] the block's sum of x (block_sums)
// Activations stay float32: quantising them to 8 bits (llama.cpp's Q8_1) changed the default model's
// answers (docs/kernels.md). Weights are expanded to float in registers, never in memory.
#include <cstring>

#include "internal.h"
#include "simd.h"


// 16 packed quants (one per output column) as floats: exact conversions, so the same on every build.
#if defined(SSK_AVX512)
constexpr int MR_MAX = 8;
constexpr int MR_BIG = 16;
static inline V16 q8_lanes(const uint8_t* p) {
  return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)))};
}
static inline V16 q4_lanes(const uint8_t* p, int shift) {
  const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
  if (shift) idx = _mm512_srli_epi32(idx, 4);
  return {_mm512_permutexvar_ps(idx, table)};  // uses the low 4 bits of each index
}
#elif defined(SSK_AVX2)
constexpr int MR_MAX = 3;
constexpr int MR_BIG = 6;
static inline __m256 q8_8(const uint8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
static inline V16 q8_lanes(const uint8_t* p) { return {q8_8(p), q8_8(p + 8)}; }
static inline __m256 q4_8(const uint8_t* p, int shift) {
  __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p));
  v = shift ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, _mm256_set1_epi32(0x0F));
  return _mm256_cvtepi32_ps(v);
}
static inline V16 q4_lanes(const uint8_t* p, int shift) { return {q4_8(p, shift), q4_8(p + 8, shift)}; }
#else
constexpr int MR_MAX = 4;
constexpr int MR_BIG = 8;
static inline V16 q8_lanes(const uint8_t* p) {
  V16 r;
  for (int l = 0; l < 16; ++l) r.v[l] = (float)(int8_t)p[l];
  return r;
}
static inline V16 q4_lanes(const uint8_t* p, int shift) {
  V16 r;
  for (int l = 0; l < 16; ++l) r.v[l] = (float)(shift ? p[l] >> 4 : p[l] & 0x0F);
  return r;
}
#endif

#include "gemm_blocks.h"

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

// MR rows (x rows, stride k) of NT adjacent tiles (tbytes apart); y points at (first row, first column),
// row stride ldy. Several tiles at once only give the core more independent chains when rows are few;
// each element's arithmetic is the same whatever MR and NT are.
template <int MR, int NT>
static void tile_f32(const uint8_t* tile, size_t tbytes, const float* x, int k, float* y, int ldy) {
  V16 acc[MR][NT];
  for (int r = 0; r < MR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = v_zero();
  for (int kk = 0; kk < k; ++kk) {
    for (int t = 0; t < NT; ++t) {
      const V16 wk = v_load((const float*)(tile + t * tbytes) + (size_t)kk * SSK_NR);
      for (int r = 0; r < MR; ++r) acc[r][t] = v_fma(v_set1(x[(size_t)r * k + kk]), wk, acc[r][t]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int t = 0; t < NT; ++t) v_store(y + (size_t)r * ldy + SSK_NR * t, acc[r][t]);
}

template <int MR, int NT>
static void tile_q8_0(const uint8_t* tile, size_t tbytes, const float* x, int k, float* y, int ldy) {
  V16 acc[MR][NT];
  for (int r = 0; r < MR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = v_zero();
  for (int b = 0; b < k / SSK_QK; ++b) {
    const float* xb = x + (size_t)b * SSK_QK;
    V16 sq[MR][NT];
    for (int r = 0; r < MR; ++r)
      for (int t = 0; t < NT; ++t) sq[r][t] = v_zero();
    for (int j = 0; j < SSK_QK; ++j) {
      for (int t = 0; t < NT; ++t) {
        const V16 q = q8_lanes(tile + t * tbytes + (size_t)b * Q8_0_TILE_BLOCK + Q8_0_QS + 16 * j);
        for (int r = 0; r < MR; ++r) sq[r][t] = v_fma(v_set1(xb[(size_t)r * k + j]), q, sq[r][t]);
      }
    }
    for (int t = 0; t < NT; ++t) {
      const V16 d = v_load_f16((const uint16_t*)(tile + t * tbytes + (size_t)b * Q8_0_TILE_BLOCK));
      for (int r = 0; r < MR; ++r) acc[r][t] = v_fma(d, sq[r][t], acc[r][t]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int t = 0; t < NT; ++t) v_store(y + (size_t)r * ldy + SSK_NR * t, acc[r][t]);
}

template <int MR, int NT>
static void tile_q4_1(const uint8_t* tile, size_t tbytes, const float* x, const float* sums, int k, float* y,
                      int ldy) {
  const int nb = k / SSK_QK;
  V16 acc[MR][NT];
  for (int r = 0; r < MR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = v_zero();
  for (int b = 0; b < nb; ++b) {
    const float* xb = x + (size_t)b * SSK_QK;
    V16 sq[MR][NT];
    for (int r = 0; r < MR; ++r)
      for (int t = 0; t < NT; ++t) sq[r][t] = v_zero();
    for (int half = 0; half < 2; ++half) {  // values 0..15 (low nibbles), then 16..31 (high nibbles)
      for (int j = 0; j < 16; ++j) {
        for (int t = 0; t < NT; ++t) {
          const V16 q = q4_lanes(tile + t * tbytes + (size_t)b * Q4_1_TILE_BLOCK + Q4_1_QS + 16 * j, half);
          for (int r = 0; r < MR; ++r) sq[r][t] = v_fma(v_set1(xb[(size_t)r * k + 16 * half + j]), q, sq[r][t]);
        }
      }
    }
    for (int t = 0; t < NT; ++t) {
      const uint16_t* blk = (const uint16_t*)(tile + t * tbytes + (size_t)b * Q4_1_TILE_BLOCK);
      const V16 d = v_load_f16(blk), m = v_load_f16(blk + 16);
      for (int r = 0; r < MR; ++r) {
        acc[r][t] = v_fma(d, sq[r][t], acc[r][t]);
        acc[r][t] = v_fma(m, v_set1(sums[(size_t)r * nb + b]), acc[r][t]);
      }
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int t = 0; t < NT; ++t) v_store(y + (size_t)r * ldy + SSK_NR * t, acc[r][t]);
}

// Many rows: MR rows of one tile, the rows' inputs interleaved (xp[kk * MR + r], one pointer for all rows) and
// the per-element accumulators kept in y between blocks, so that only the block sums sq[] occupy registers
// and each weight vector converted is used by MR rows. The arithmetic of every element is exactly that of
// the register kernels above: the same fma chain per block, then the same fma into the accumulator.
template <int MR>
static void big_f32(const uint8_t* tile, const float* xp, int k, float* y, int ldy) {
  V16 acc[MR];
  for (int r = 0; r < MR; ++r) acc[r] = v_zero();
  for (int kk = 0; kk < k; ++kk) {
    const V16 wk = v_load((const float*)tile + (size_t)kk * SSK_NR);
    for (int r = 0; r < MR; ++r) acc[r] = v_fma(v_set1(xp[(size_t)kk * MR + r]), wk, acc[r]);
  }
  for (int r = 0; r < MR; ++r) v_store(y + (size_t)r * ldy, acc[r]);
}

template <int MR>
static void big_q8_0(const uint8_t* tile, const float* xp, int k, float* y, int ldy) {
  for (int r = 0; r < MR; ++r) v_store(y + (size_t)r * ldy, v_zero());
  for (int b = 0; b < k / SSK_QK; ++b) {
    const float* xb = xp + (size_t)b * SSK_QK * MR;
    const uint8_t* blk = tile + (size_t)b * Q8_0_TILE_BLOCK;
    V16 sq[MR];
    for (int r = 0; r < MR; ++r) sq[r] = v_zero();
    for (int j = 0; j < SSK_QK; ++j) {
      const V16 q = q8_lanes(blk + Q8_0_QS + 16 * j);
      for (int r = 0; r < MR; ++r) sq[r] = v_fma(v_set1(xb[j * MR + r]), q, sq[r]);
    }
    const V16 d = v_load_f16((const uint16_t*)blk);
    for (int r = 0; r < MR; ++r) v_store(y + (size_t)r * ldy, v_fma(d, sq[r], v_load(y + (size_t)r * ldy)));
  }
}

template <int MR>
static void big_q4_1(const uint8_t* tile, const float* xp, const float* sums, int k, float* y, int ldy) {
  const int nb = k / SSK_QK;
  for (int r = 0; r < MR; ++r) v_store(y + (size_t)r * ldy, v_zero());
  for (int b = 0; b < nb; ++b) {
    const float* xb = xp + (size_t)b * SSK_QK * MR;
    const uint8_t* blk = tile + (size_t)b * Q4_1_TILE_BLOCK;
    V16 sq[MR];
    for (int r = 0; r < MR; ++r) sq[r] = v_zero();
    for (int half = 0; half < 2; ++half) {
      for (int j = 0; j < 16; ++j) {
        const V16 q = q4_lanes(blk + Q4_1_QS + 16 * j, half);
        for (int r = 0; r < MR; ++r) sq[r] = v_fma(v_set1(xb[(16 * half + j) * MR + r]), q, sq[r]);
      }
    }
    const V16 d = v_load_f16((const uint16_t*)blk), m = v_load_f16((const uint16_t*)blk + 16);
    for (int r = 0; r < MR; ++r) {
      V16 a = v_fma(d, sq[r], v_load(y + (size_t)r * ldy));
      v_store(y + (size_t)r * ldy, v_fma(m, v_set1(sums[(size_t)r * nb + b]), a));
    }
  }
}

template <int MR>
static void run_big(const ssk_matrix& w, const uint8_t* tile, const float* xp, const float* sums, float* y, int ldy) {
  switch (w.format) {
    case SSK_F32: big_f32<MR>(tile, xp, w.k, y, ldy); break;
    case SSK_Q8_0: big_q8_0<MR>(tile, xp, w.k, y, ldy); break;
    case SSK_Q4_1: big_q4_1<MR>(tile, xp, sums, w.k, y, ldy); break;
    case SSK_Q4_0: big_blk<FmtQ4_0, MR>(tile, xp, sums, w.k, y, ldy); break;
    case SSK_Q5_0: big_blk<FmtQ5_0, MR>(tile, xp, sums, w.k, y, ldy); break;
    case SSK_Q5_1: big_blk<FmtQ5_1, MR>(tile, xp, sums, w.k, y, ldy); break;
    case SSK_Q2_K: big_blk<FmtQ2_K, MR>(tile, xp, sums, w.k, y, ldy); break;
    case SSK_Q3_K: big_blk<FmtQ3_K, MR>(tile, xp, sums, w.k, y, ldy); break;
    case SSK_Q4_K: big_blk<FmtQ4_K, MR>(tile, xp, sums, w.k, y, ldy); break;
    case SSK_Q5_K: big_blk<FmtQ5_K, MR>(tile, xp, sums, w.k, y, ldy); break;
    case SSK_Q6_K: big_blk<FmtQ6_K, MR>(tile, xp, sums, w.k, y, ldy); break;
    case SSK_F16: big_h16<false, MR>(tile, xp, w.k, y, ldy); break;
    case SSK_BF16: big_h16<true, MR>(tile, xp, w.k, y, ldy); break;
  }
}

// rows in (MR_BIG / 2, MR_BIG]: the interleaved kernel for exactly that many rows
template <int MR>
static void run_big_rows(const ssk_matrix& w, const uint8_t* tile, const float* xp, const float* sums, int rows,
                         float* y, int ldy) {
  if constexpr (MR > MR_BIG / 2 + 1) {
    if (rows < MR) return run_big_rows<MR - 1>(w, tile, xp, sums, rows, y, ldy);
  }
  run_big<MR>(w, tile, xp, sums, y, ldy);
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

template <int MR, int NT>
static void run_tile(const ssk_matrix& w, const uint8_t* tile, size_t tbytes, const float* x, const float* sums,
                     float* y, int ldy) {
  switch (w.format) {
    case SSK_F32: tile_f32<MR, NT>(tile, tbytes, x, w.k, y, ldy); break;
    case SSK_Q8_0: tile_q8_0<MR, NT>(tile, tbytes, x, w.k, y, ldy); break;
    case SSK_Q4_1: tile_q4_1<MR, NT>(tile, tbytes, x, sums, w.k, y, ldy); break;
    case SSK_Q4_0: tile_blk<FmtQ4_0, MR, NT>(tile, tbytes, x, sums, w.k, y, ldy); break;
    case SSK_Q5_0: tile_blk<FmtQ5_0, MR, NT>(tile, tbytes, x, sums, w.k, y, ldy); break;
    case SSK_Q5_1: tile_blk<FmtQ5_1, MR, NT>(tile, tbytes, x, sums, w.k, y, ldy); break;
    case SSK_Q2_K: tile_blk<FmtQ2_K, MR, NT>(tile, tbytes, x, sums, w.k, y, ldy); break;
    case SSK_Q3_K: tile_blk<FmtQ3_K, MR, NT>(tile, tbytes, x, sums, w.k, y, ldy); break;
    case SSK_Q4_K: tile_blk<FmtQ4_K, MR, NT>(tile, tbytes, x, sums, w.k, y, ldy); break;
    case SSK_Q5_K: tile_blk<FmtQ5_K, MR, NT>(tile, tbytes, x, sums, w.k, y, ldy); break;
    case SSK_Q6_K: tile_blk<FmtQ6_K, MR, NT>(tile, tbytes, x, sums, w.k, y, ldy); break;
    case SSK_F16: tile_h16<false, MR, NT>(tile, tbytes, x, w.k, y, ldy); break;
    case SSK_BF16: tile_h16<true, MR, NT>(tile, tbytes, x, w.k, y, ldy); break;
  }
}

template <int MR>
static void run_rows(const ssk_matrix& w, const uint8_t* tile, size_t tbytes, const float* x, const float* sums,
                     int rows, float* y, int ldy) {
  if constexpr (MR > 1) {
    if (rows < MR) return run_rows<MR - 1>(w, tile, tbytes, x, sums, rows, y, ldy);
  }
  run_tile<MR, 1>(w, tile, tbytes, x, sums, y, ldy);
}

size_t gemm_scratch_floats(int m, int k) {
  const size_t interleaved = m > MR_BIG / 2 ? (size_t)m * k : 0, ints = i8_scratch_floats(m, k);
  return interleaved > ints ? interleaved : ints;
}

static void gemm_part(Pool& pool, const ssk_matrix& w, int m, const float* x, const float* sums, float* y, int ldy,
                      float* scratch) {
  if (w.act == SSK_ACT_I8) return gemm_i8(pool, w, m, x, y, ldy, scratch);
  const int nb = w.k / SSK_QK;
  const size_t tbytes = tile_bytes(w.format, w.k);
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
  for_tiles(pool, w, m, y, ldy, [&](int64_t tile, int64_t left) {
    const uint8_t* tdata = w.data + (size_t)tile * tbytes;
    const int n0 = (int)tile * SSK_NR;
    if (m == 1 && left >= 4) {  // one row: four tiles' chains in flight
      run_tile<1, 4>(w, tdata, tbytes, x, sums, y + n0, ldy);
      return 4;
    }
    if (m == 2 && left >= 2) {
      run_tile<2, 2>(w, tdata, tbytes, x, sums, y + n0, ldy);
      return 2;
    }
    for (int m0 = 0; m0 < big_rows; m0 += MR_BIG) {
      const int rows = big_rows - m0 < MR_BIG ? big_rows - m0 : MR_BIG;
      run_big_rows<MR_BIG>(w, tdata, scratch + (size_t)m0 * w.k, sums ? sums + (size_t)m0 * nb : nullptr, rows,
                           y + (size_t)m0 * ldy + n0, ldy);
    }
    for (int m0 = big_rows; m0 < m; m0 += MR_MAX) {
      const int rows = m - m0 < MR_MAX ? m - m0 : MR_MAX;
      run_rows<MR_MAX>(w, tdata, tbytes, x + (size_t)m0 * w.k, sums ? sums + (size_t)m0 * nb : nullptr, rows,
                       y + (size_t)m0 * ldy + n0, ldy);
    }
    return 1;
  });
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

// Row `row` of a block-format matrix, dequantised: scale * (q - OFF) (+ min), the kernels' scale and minimum.
template <class F>
static void dequant_blk(const ssk_matrix& w, int row, float* out) {
  const int lane = row % SSK_NR;
  const uint8_t* base = w.data + (size_t)(row / SSK_NR) * tile_bytes(w.format, w.k);
  for (int b = 0; b < w.k / F::S; ++b) {
    const uint8_t* blk = base + (size_t)b * F::BLOCK;
    for (int c = 0; c < F::CHUNKS; ++c) {
      const uint8_t* chunk = blk + F::QS + c * F::CHUNK;
      for_values<0, 32>([&](auto jc) {
        const int j = jc;
        float q[16], scale[16], mn[16];
        v_store(q, blk_lanes<F>(chunk, jc));
        v_store(scale, blk_scale<F>(blk, (32 * c + j) / F::L));
        v_store(mn, F::HAS_MIN ? blk_min<F>(blk, (32 * c + j) / F::L) : v_zero());
        const float v = scale[lane] * q[lane];
        out[b * F::S + 32 * c + j] = F::HAS_MIN ? v + mn[lane] : v;
      });
    }
  }
}

void dequant_row_blocks(const ssk_matrix& w, int row, float* out) {
  switch (w.format) {
    case SSK_Q4_0: return dequant_blk<FmtQ4_0>(w, row, out);
    case SSK_Q5_0: return dequant_blk<FmtQ5_0>(w, row, out);
    case SSK_Q5_1: return dequant_blk<FmtQ5_1>(w, row, out);
    case SSK_Q2_K: return dequant_blk<FmtQ2_K>(w, row, out);
    case SSK_Q3_K: return dequant_blk<FmtQ3_K>(w, row, out);
    case SSK_Q4_K: return dequant_blk<FmtQ4_K>(w, row, out);
    case SSK_Q5_K: return dequant_blk<FmtQ5_K>(w, row, out);
    case SSK_Q6_K: return dequant_blk<FmtQ6_K>(w, row, out);
  }
}
