// GEMM over q4_1, q4_0, q8_0, q5_0, q5_1, q4_k, q5_k and q6_k weights with int8 activations (act SSK_ACT_I8):
// integer dot products per 32-block (or 16-value sub-block), then float32 steps in a fixed order.
//
// Activations, per row and 32-value block b (IEEE operations only, so the same on every build):
//   amax = max |x| over the block; s[b] = amax / 127;
//   a[k] = round-to-nearest-even(x[k] * (127 / amax)) clamped to [-127, 127] as int8;
//   s[b] = 0 and a = 0 when s[b] is below FLT_MIN (a zero or negligible block); s[b] = NaN and a = 0 when
//   the block holds a NaN or an infinity (the row's outputs are then NaN, as float arithmetic would make them).
// Per output element (m, n), blocks in order, with I = sum_k q[n,k] * a[m,k] exact in int32:
//   q4_1: acc = fma(d[n,b], float(I) * s[b], acc);  acc = fma(min[n,b], float(A[b]) * s[b], acc)
//   q8_0: acc = fma(d[n,b], float(I) * s[b], acc)
//   q4_0: acc = fma(d[n,b], float(I - 8 A[b]) * s[b], acc)   (q - 8 is the weight; I - 8 A exact in int32)
//   the other block formats of gemm_blocks.h (weight scale * (q - OFF) [+ min] per sub-block j), sub-blocks in
//   order; for 32-value sub-blocks (q5_0, q5_1, q4_k, q5_k; j = b within a K super-block):
//     acc = fma(scale[n,j], float(I - OFF A[b]) * s[b], acc);  [acc = fma(min[n,j], float(A[b]) * s[b], acc)]
//   for q6_k's 16-value sub-blocks, two per 32-block, each with its own I and A over its 16 values:
//     acc = fma(scale[n,j], float(I_j - 32 A_j) * s[b], acc)
//   scale = d (q5_0, q5_1) or d * sc[j] (K types: exact in float32), min = m (q5_1) or -(dmin * mn[j]) (exact),
//   OFF = 16 (q5_0), 32 (q6_k), else 0: the float path's scale and minimum (blk_scale, blk_min: gemm_scales.h).
// where A[b] is the block's sum of a: both terms see the same quantised input, so the output is the dot
// product of the true weights d * q + min with it (with x's exact sum in the minimum term instead, the
// rounding errors meet the uncentred d * q alone and the largest logit error doubles). The integer sums
// have no order, so every row count, thread count and instruction set gives the same bits.
//
// Tile block quants (the float layout's bytes, regrouped by server/kernels/packing.py): group g holds,
// for each of the 16 output columns, 4 consecutive bytes (one 32-bit lane):
//   q4_1, q4_0: 4 groups; byte j of group g holds value 4g + j (low nibble) and value 16 + 4g + j (high nibble)
//   q8_0: 8 groups; byte j of group g holds value 4g + j
// so one load and a mask give 16 columns x 4 values, multiplied with 4 activations broadcast to every lane.
//   q5_0, q5_1, q4_k, q5_k, q6_k: per 32 values (a chunk), the 4 low bits as q4_1's 4 groups; then their high
//   bits, one 32-bit lane per column: one bit (H = 1) hv[16 lanes][4], byte j bit g + 4u the high bit of value
//   16u + 4g + j; two bits (q6_k) hv[u][16 lanes][4], byte j bits 2g, 2g+1 those of value 16u + 4g + j. A
//   32-bit shift and a byte mask put them at bit 4 of the nibble's byte. The scales before the quants stay.
#include <cfloat>
#include <cmath>
#include <type_traits>

#include "gemm_formats.h"
#include "internal.h"
#include "simd_i8.h"

#if defined(SSK_AVX512)
constexpr int I8_MR_MAX = 8;
#elif defined(SSK_AVX2)
constexpr int I8_MR_MAX = 2;
#else
constexpr int I8_MR_MAX = 4;
#endif

// Row inputs, quantised: a [m, k] int8, and per 32-block the scale s, the sum of a (q8_0's unbias on
// AVX-512) and float(sum of a) * s (q4_1's minimum term); for q6_k the sums of a's 16-value halves.
struct I8Rows {
  const int8_t* a;
  const float* s;
  const int32_t* a_sum;
  const float* scaled_sum;
  const int32_t* half_sum;  // [m, 2 nb], or null
  int k, nb;
};

// x [k] -> a [k], s [k / 32], a_sum [k / 32], [half_sum [k / 16]] (the quantisation in the header comment).
static void quantize_row_i8(const float* x, int k, int8_t* a, float* s, int32_t* a_sum, float* scaled_sum,
                            int32_t* half_sum) {
  for (int b = 0; b < k / SSK_QK; ++b) {
    const V16 lo = v_load(x + b * SSK_QK), hi = v_load(x + b * SSK_QK + 16);
    const float amax = v_hmax(v_max(v_abs(lo), v_abs(hi)));
    const bool finite = v_all_finite(lo) && v_all_finite(hi);
    const float scale = amax / 127.0f;
    if (!finite || scale < FLT_MIN) {  // NaN or infinity: NaN outputs; a tiny or zero block: zero
      std::memset(a + b * SSK_QK, 0, SSK_QK);
      s[b] = finite ? 0.0f : NAN;
      a_sum[b] = 0;
      scaled_sum[b] = s[b];  // 0, or NaN
      if (half_sum) half_sum[2 * b] = half_sum[2 * b + 1] = 0;
      continue;
    }
    const V16 inv = v_set1(127.0f / amax), top = v_set1(127.0f), bottom = v_set1(-127.0f);
    const V16 qlo = v_max(v_min(v_round(v_mul(lo, inv)), top), bottom);
    const V16 qhi = v_max(v_min(v_round(v_mul(hi, inv)), top), bottom);
    v_store_i8(a + b * SSK_QK, qlo);
    v_store_i8(a + b * SSK_QK + 16, qhi);
    s[b] = scale;
    a_sum[b] = (int32_t)v_hsum(v_add(qlo, qhi));  // integers, |sum| <= 4064: exact in any order
    scaled_sum[b] = (float)a_sum[b] * scale;
    if (half_sum) {  // integers, exact
      half_sum[2 * b] = (int32_t)v_hsum(qlo);
      half_sum[2 * b + 1] = (int32_t)v_hsum(qhi);
    }
  }
}

template <int FMT>
struct I8Format;
template <>
struct I8Format<SSK_Q4_1> {
  static constexpr int BLOCK = Q4_1_TILE_BLOCK, QS = Q4_1_QS;
  // dot[r] += I of block b (quants q) with rows' activations ab (row stride k)
  template <int MR>
  static inline void dots(const uint8_t* q, const int8_t* ab, int k, VI* dot) {
    for (int g = 0; g < 4; ++g) {
      const VI w = vi_load(q + 64 * g), lo = vi_low_nibbles(w), hi = vi_high_nibbles(w);
      for (int r = 0; r < MR; ++r) {
        dot[r] = vi_dot_u8(dot[r], lo, ab + (size_t)r * k + 4 * g);
        dot[r] = vi_dot_u8(dot[r], hi, ab + (size_t)r * k + 16 + 4 * g);
      }
    }
  }
  static inline V16 finish(const uint8_t* blk, VI dot, float s, int32_t, float scaled_sum, V16 acc) {
    acc = v_fma(v_load_f16((const uint16_t*)blk), v_mul(vi_to_float(dot), v_set1(s)), acc);
    return v_fma(v_load_f16((const uint16_t*)blk + 16), v_set1(scaled_sum), acc);
  }
};
// Q4_0's tile block (gemm_blocks.h FmtQ4_0): float16 d[16], then q4_1's quants; the unsigned nibbles' dot
// product as q4_1's, less 8 A (float(I) and 8 A are integers below 2^24, so the float subtraction is exact).
template <>
struct I8Format<SSK_Q4_0> : I8Format<SSK_Q4_1> {
  static constexpr int BLOCK = 32 + 256, QS = 32;
  static inline V16 finish(const uint8_t* blk, VI dot, float s, int32_t a_sum, float, V16 acc) {
    const V16 centred = v_sub(vi_to_float(dot), v_set1((float)(8 * a_sum)));
    return v_fma(v_load_f16((const uint16_t*)blk), v_mul(centred, v_set1(s)), acc);
  }
};
template <>
struct I8Format<SSK_Q8_0> {
  static constexpr int BLOCK = Q8_0_TILE_BLOCK, QS = Q8_0_QS;
  template <int MR>
  static inline void dots(const uint8_t* q, const int8_t* ab, int k, VI* dot) {
    for (int g = 0; g < 8; ++g) {
      const VI w = vi_q8_prepare(vi_load(q + 64 * g));
      for (int r = 0; r < MR; ++r) dot[r] = vi_dot_q8(dot[r], w, ab + (size_t)r * k + 4 * g);
    }
  }
  static inline V16 finish(const uint8_t* blk, VI dot, float s, int32_t a_sum, float, V16 acc) {
    return v_fma(v_load_f16((const uint16_t*)blk), v_mul(vi_to_float(vi_q8_unbias(dot, a_sum)), v_set1(s)), acc);
  }
};

// The block formats of gemm_blocks.h that int8 activations take, by format code (void: not one of them): 4 low bits
// and H high bits a value, their tile blocks' offsets and scale fields those of gemm_formats.h, whose scale bytes
// the regrouping keeps. Q4_0's is for its dequantised row only: its GEMM is I8Format<SSK_Q4_0>.
template <int FMT> struct I8BlkOf { using type = void; };
template <> struct I8BlkOf<SSK_Q4_0> { using type = FmtQ4_0; };
template <> struct I8BlkOf<SSK_Q5_0> { using type = FmtQ5_0; };
template <> struct I8BlkOf<SSK_Q5_1> { using type = FmtQ5_1; };
template <> struct I8BlkOf<SSK_Q4_K> { using type = FmtQ4_K; };
template <> struct I8BlkOf<SSK_Q5_K> { using type = FmtQ5_K; };
template <> struct I8BlkOf<SSK_Q6_K> { using type = FmtQ6_K; };

// Group G of a chunk: values 4G + j (into d0) and 16 + 4G + j (into d1: the second 16-value sub-block; d0 itself
// for 32-value sub-blocks).
template <class F, int G, int MR>
static inline void blk_group(const uint8_t* c, VI hv0, VI hv1, const int8_t* ab, int k, VI* d0, VI* d1) {
  const VI w = vi_load(c + 64 * G);
  VI lo = vi_low_nibbles(w), hi = vi_high_nibbles(w);
  if constexpr (F::H == 1) {  // bits G and G + 4 of each byte to bit 4
    lo = vi_or(lo, vi_mask_bytes(vi_shift<4 - G>(hv0), 0x10));
    hi = vi_or(hi, vi_mask_bytes(vi_shift<-G>(hv0), 0x10));
  } else if constexpr (F::H == 2) {  // bits 2G, 2G + 1 to bits 4, 5
    lo = vi_or(lo, vi_mask_bytes(vi_shift<4 - 2 * G>(hv0), 0x30));
    hi = vi_or(hi, vi_mask_bytes(vi_shift<4 - 2 * G>(hv1), 0x30));
  }
  for (int r = 0; r < MR; ++r) {
    d0[r] = vi_dot_u8(d0[r], lo, ab + (size_t)r * k + 4 * G);
    d1[r] = vi_dot_u8(d1[r], hi, ab + (size_t)r * k + 16 + 4 * G);
  }
}
template <class F, int MR>
static inline void blk_dots(const uint8_t* c, const int8_t* ab, int k, VI* d0, VI* d1) {
  const VI hv0 = F::H >= 1 ? vi_load(c + 256) : vi_zero(), hv1 = F::H == 2 ? vi_load(c + 320) : vi_zero();
  blk_group<F, 0, MR>(c, hv0, hv1, ab, k, d0, d1);
  blk_group<F, 1, MR>(c, hv0, hv1, ab, k, d0, d1);
  blk_group<F, 2, MR>(c, hv0, hv1, ab, k, d0, d1);
  blk_group<F, 3, MR>(c, hv0, hv1, ab, k, d0, d1);
}

// acc after sub-block j (I its sum of q * a, A its sum of a): fma(scale, float(I - OFF A) * s, acc), then the
// minimum term.
template <class F>
static inline V16 blk_finish(const uint8_t* blk, int j, VI dot, float s, int32_t a_sum, float scaled_sum, V16 acc) {
  if constexpr (F::OFF != 0) dot = vi_sub_i32(dot, F::OFF * a_sum);
  acc = v_fma(blk_scale<F>(blk, j), v_mul(vi_to_float(dot), v_set1(s)), acc);
  if constexpr (F::HAS_MIN) acc = v_fma(blk_min<F>(blk, j), v_set1(scaled_sum), acc);
  return acc;
}

// tile_i8 for the formats of I8BlkOf: 32-block b is chunk b % CHUNKS of tile block b / CHUNKS.
template <class F, int MR, int NT>
static void tile_i8_blk(const uint8_t* tile, size_t tbytes, const I8Rows& in, int m0, float* y, int ldy) {
  static_assert(F::LO == 4 && (F::L == 32 || !F::HAS_MIN), "4 low bits; no 16-value sub-blocks with a minimum (Q2_K)");
  V16 acc[NT][MR];
  for (int t = 0; t < NT; ++t)
    for (int r = 0; r < MR; ++r) acc[t][r] = v_zero();
  for (int b = 0; b < in.nb; ++b) {
    const int c = b % F::CHUNKS;
    const int8_t* ab = in.a + (size_t)m0 * in.k + (size_t)b * SSK_QK;
    for (int t = 0; t < NT; ++t) {
      const uint8_t* blk = tile + t * tbytes + (size_t)(b / F::CHUNKS) * F::BLOCK;
      const uint8_t* chunk = blk + F::QS + c * F::CHUNK;
      if constexpr (MR <= 2) ssk_prefetch(chunk, 2 * F::CHUNK, F::CHUNK);
      VI d0[MR], d1[MR];
      for (int r = 0; r < MR; ++r) d0[r] = d1[r] = vi_zero();
      blk_dots<F, MR>(chunk, ab, in.k, d0, F::L == 32 ? d0 : d1);  // one sum for a 32-value sub-block
      for (int r = 0; r < MR; ++r) {
        const size_t rb = (size_t)(m0 + r) * in.nb + b;
        if constexpr (F::L == 32) {
          acc[t][r] = blk_finish<F>(blk, c, d0[r], in.s[rb], in.a_sum[rb], in.scaled_sum[rb], acc[t][r]);
        } else {
          acc[t][r] = blk_finish<F>(blk, 2 * c, d0[r], in.s[rb], in.half_sum[2 * rb], 0.0f, acc[t][r]);
          acc[t][r] = blk_finish<F>(blk, 2 * c + 1, d1[r], in.s[rb], in.half_sum[2 * rb + 1], 0.0f, acc[t][r]);
        }
      }
    }
  }
  for (int t = 0; t < NT; ++t)
    for (int r = 0; r < MR; ++r) v_store(y + (size_t)r * ldy + SSK_NR * t, acc[t][r]);
}

// MR rows (starting at row m0) of NT adjacent tiles (tbytes apart); y points at (row m0, first column).
// Several tiles at once only give the core independent chains when rows are few; the arithmetic of every
// element is the same whatever MR and NT are.
template <int FMT, int MR, int NT>
static void tile_i8_q(const uint8_t* tile, size_t tbytes, const I8Rows& in, int m0, float* y, int ldy) {
  using F = I8Format<FMT>;
  V16 acc[NT][MR];
  for (int t = 0; t < NT; ++t)
    for (int r = 0; r < MR; ++r) acc[t][r] = v_zero();
  for (int b = 0; b < in.nb; ++b) {
    const int8_t* ab = in.a + (size_t)m0 * in.k + (size_t)b * SSK_QK;
    for (int t = 0; t < NT; ++t) {
      const uint8_t* blk = tile + t * tbytes + (size_t)b * F::BLOCK;
      // One or two rows stream the weights from memory: ask for the block after next (10-15 % faster at one
      // row, measured; near a tile's end that is the next tile's start).
      if constexpr (MR <= 2) ssk_prefetch(blk, 2 * F::BLOCK, F::BLOCK);
      VI dot[MR];
      for (int r = 0; r < MR; ++r) dot[r] = vi_zero();
      F::template dots<MR>(blk + F::QS, ab, in.k, dot);
      for (int r = 0; r < MR; ++r) {
        const size_t rb = (size_t)(m0 + r) * in.nb + b;
        acc[t][r] = F::finish(blk, dot[r], in.s[rb], in.a_sum[rb], in.scaled_sum[rb], acc[t][r]);
      }
    }
  }
  for (int t = 0; t < NT; ++t)
    for (int r = 0; r < MR; ++r) v_store(y + (size_t)r * ldy + SSK_NR * t, acc[t][r]);
}

template <int FMT, int MR, int NT>
static void tile_i8(const uint8_t* tile, size_t tbytes, const I8Rows& in, int m0, float* y, int ldy) {
  if constexpr (FMT == SSK_Q8_0 || FMT == SSK_Q4_1 || FMT == SSK_Q4_0) tile_i8_q<FMT, MR, NT>(tile, tbytes, in, m0, y, ldy);
  else tile_i8_blk<typename I8BlkOf<FMT>::type, MR, NT>(tile, tbytes, in, m0, y, ldy);
}

template <int FMT, int MR>
static void rows_i8(const uint8_t* tile, size_t tbytes, const I8Rows& in, int m0, int rows, float* y, int ldy) {
  if constexpr (MR > 1) {
    if (rows < MR) return rows_i8<FMT, MR - 1>(tile, tbytes, in, m0, rows, y, ldy);
  }
  tile_i8<FMT, MR, 1>(tile, tbytes, in, m0, y, ldy);
}

size_t i8_scratch_floats(int m, int k) { return (size_t)m * k / 4 + 5 * (size_t)m * (k / SSK_QK) + 16; }

template <int FMT>
static void gemm_int8(Pool& pool, const ssk_matrix& w, int m, const float* x, float* y, int ldy, float* scratch) {
  const int k = w.k, nb = k / SSK_QK;
  const size_t tbytes = tile_bytes(w.format, k);
  float* s = scratch;                                             // [m, nb]
  float* scaled_sum = s + (size_t)m * nb;                         // [m, nb]
  int32_t* a_sum = (int32_t*)(scaled_sum + (size_t)m * nb);       // [m, nb]
  int32_t* halves = a_sum + (size_t)m * nb;                       // [m, 2 nb]
  int32_t* half_sum = FMT == SSK_Q6_K ? halves : nullptr;
  int8_t* a = (int8_t*)(halves + 2 * (size_t)m * nb);             // [m, k]
  parallel(pool, [&](int t, int n) {
    int64_t begin, end;
    Pool::range(m, t, n, &begin, &end);
    for (int64_t i = begin; i < end; ++i)
      quantize_row_i8(x + (size_t)i * k, k, a + (size_t)i * k, s + (size_t)i * nb, a_sum + (size_t)i * nb,
                      scaled_sum + (size_t)i * nb, half_sum ? half_sum + 2 * (size_t)i * nb : nullptr);
  });
  const I8Rows in{a, s, a_sum, scaled_sum, half_sum, k, nb};
  // Formats with high bits expand them once per group of rows: on AVX2 take 4 rows at a time.
  constexpr int MRX = I8_MR_MAX == 2 && !std::is_void_v<typename I8BlkOf<FMT>::type> && FMT != SSK_Q4_0 ? 4 : I8_MR_MAX;
  for_tiles(pool, w, m, y, ldy, [&](int64_t tile, int64_t left) {
    const uint8_t* tdata = w.data + (size_t)tile * tbytes;
    const int n0 = (int)tile * SSK_NR;
    if (m == 1 && left >= 4) {  // one row: four tiles' chains in flight
      tile_i8<FMT, 1, 4>(tdata, tbytes, in, 0, y + n0, ldy);
      return 4;
    }
    if (m == 2 && left >= 2) {
      tile_i8<FMT, 2, 2>(tdata, tbytes, in, 0, y + n0, ldy);
      return 2;
    }
    for (int m0 = 0; m0 < m; m0 += MRX) {
      const int rows = m - m0 < MRX ? m - m0 : MRX;
      rows_i8<FMT, MRX>(tdata, tbytes, in, m0, rows, y + (size_t)m0 * ldy + n0, ldy);
    }
    return 1;
  });
}

void gemm_i8(Pool& pool, const ssk_matrix& w, int m, const float* x, float* y, int ldy, float* scratch) {
  switch (w.format) {
    case SSK_Q4_1: return gemm_int8<SSK_Q4_1>(pool, w, m, x, y, ldy, scratch);
    case SSK_Q4_0: return gemm_int8<SSK_Q4_0>(pool, w, m, x, y, ldy, scratch);
    case SSK_Q5_0: return gemm_int8<SSK_Q5_0>(pool, w, m, x, y, ldy, scratch);
    case SSK_Q5_1: return gemm_int8<SSK_Q5_1>(pool, w, m, x, y, ldy, scratch);
    case SSK_Q4_K: return gemm_int8<SSK_Q4_K>(pool, w, m, x, y, ldy, scratch);
    case SSK_Q5_K: return gemm_int8<SSK_Q5_K>(pool, w, m, x, y, ldy, scratch);
    case SSK_Q6_K: return gemm_int8<SSK_Q6_K>(pool, w, m, x, y, ldy, scratch);
    default: return gemm_int8<SSK_Q8_0>(pool, w, m, x, y, ldy, scratch);
  }
}

bool i8_takes(int format) {
  switch (format) {
    case SSK_Q8_0: case SSK_Q4_1: case SSK_Q4_0: case SSK_Q5_0: case SSK_Q5_1: case SSK_Q4_K: case SSK_Q5_K:
    case SSK_Q6_K: return true;
    default: return false;
  }
}

// Row `row` of a matrix of I8BlkOf's formats in the int8 layout, dequantised as dequant_row_blocks does the float
// layout (scale * (q - OFF) [+ min]): the same values, so the embedding lookup does not change.
template <class F>
static void dequant_i8_blk(const ssk_matrix& w, int row, float* out) {
  const int lane = row % SSK_NR;
  const uint8_t* base = w.data + (size_t)(row / SSK_NR) * tile_bytes(w.format, w.k);
  for (int b = 0; b < w.k / SSK_QK; ++b) {
    const int c = b % F::CHUNKS;
    const uint8_t* blk = base + (size_t)(b / F::CHUNKS) * F::BLOCK;
    const uint8_t* chunk = blk + F::QS + c * F::CHUNK;
    for (int i = 0; i < SSK_QK; ++i) {
      const int u = i / 16, g = (i % 16) / 4, j = i % 4, at = 4 * lane + j;
      int q = (chunk[64 * g + at] >> (4 * u)) & 15;
      if constexpr (F::H == 1) q |= ((chunk[256 + at] >> (g + 4 * u)) & 1) << 4;
      if constexpr (F::H == 2) q |= ((chunk[256 + 64 * u + at] >> (2 * g)) & 3) << 4;
      const int sub = (32 * c + i) / F::L;
      float scale[16], mn[16];
      v_store(scale, blk_scale<F>(blk, sub));
      v_store(mn, F::HAS_MIN ? blk_min<F>(blk, sub) : v_zero());
      const float v = scale[lane] * (float)(q - F::OFF);
      out[b * SSK_QK + i] = F::HAS_MIN ? v + mn[lane] : v;
    }
  }
}

void dequant_row_i8(const ssk_matrix& w, int row, float* out) {
  switch (w.format) {
    case SSK_Q4_0: return dequant_i8_blk<I8BlkOf<SSK_Q4_0>::type>(w, row, out);
    case SSK_Q5_0: return dequant_i8_blk<I8BlkOf<SSK_Q5_0>::type>(w, row, out);
    case SSK_Q5_1: return dequant_i8_blk<I8BlkOf<SSK_Q5_1>::type>(w, row, out);
    case SSK_Q4_K: return dequant_i8_blk<I8BlkOf<SSK_Q4_K>::type>(w, row, out);
    case SSK_Q5_K: return dequant_i8_blk<I8BlkOf<SSK_Q5_K>::type>(w, row, out);
    case SSK_Q6_K: return dequant_i8_blk<I8BlkOf<SSK_Q6_K>::type>(w, row, out);
  }
}
