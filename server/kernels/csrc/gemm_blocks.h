// GEMM kernels of the GGUF block formats beyond q8_0/q4_1 (Q4_0, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and
// of 16-bit float weights (F16, BF16), float32 activations, and the lane helpers of every GEMM kernel. Included by
// gemm_tiles.h.
//
// Every block format is one scheme: a tile block holds S values (32, or a 256-value K super-block) of 16
// output columns; its integer quants q (2 to 6 bits) are cut into sub-blocks of L values (32; 16 for Q2_K,
// Q3_K and Q6_K), each with a scale and, for the asymmetric formats, a minimum term. Per output element,
// sub-blocks in order:
//   sq  = fma-chain over the sub-block's values j of x[j] * (q[j] - OFF)   (q - OFF is an exact integer)
//   acc = fma(scale, sq, acc)
//   acc = fma(min, s, acc)     (Q5_1, Q2_K, Q4_K, Q5_K; s the sub-block's sum of x added left to right:
//                               block_sums' 32-block sum, or for Q2_K's 16-value sub-blocks the same here)
// where scale = d (Q4_0, Q5_0, Q5_1) or d * sc (K-types: a float16 times an integer of at most 8 bits, exact in
// float32), min = m (Q5_1) or -(dmin * mn) (K types with a minimum; exact). Lanes are output columns, so every
// build gives the same bits. F16/BF16: acc = fma(x[k], w[n,k], acc) for k = 0, 1, ..., each weight widened
// exactly.
//
// Tile block layout (16 columns; server/kernels/packing.py writes it):
//   float16 d[16]; [float16 m[16] (Q5_1) or dmin[16] (K, with a minimum)];
//   [K-types: the sub-block scales (and minima), as many bytes as the GGUF's: gemm_scales.h];
//   per 32 values: the low LO bits of each value, then its H high bits, as bytes [row][16 lanes]:
//     LO = 4: uint8 lo[16][16], value j in row j & 15, bits 4 * (j >> 4) (as q4_1: j low nibble, j+16 high)
//     LO = 2: uint8 lo[8][16], value j in row j & 7, bits 2 * (j >> 3)
//     H > 0:  uint8 hi[4 H][16], value j in row j / (8 / H), bits H * (j % (8 / H))
//   Q6_K (GROUP6) instead: per 32 values 8 groups of four whole 6-bit values (gemm_group6.h); Q4_K (NIBBLE32)
//   and Q4_0 the LO = 4 rows regrouped into 32-bit words of 4 rows per lane (gemm_nibble32.h)
// so that the 16 lanes of one value are one 16-byte row: a 16-bit shift and a mask per part (x86 has no byte
// shift, and the mask drops what a 16-bit shift carries across bytes), an or, then widened and converted.
#pragma once
#include <type_traits>

#include "gemm_formats.h"

// 16 packed quants (one per output column) as floats: exact conversions, so the same on every build.
#if defined(SSK_AVX512)
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

// Where value j of a chunk sits (the layout above): row and shift of its low bits, row and shift of its high.
template <class F>
struct ValueAt {
  int lo_row, lo_shift, hi_row, hi_shift;
  constexpr explicit ValueAt(int j)
      : lo_row(F::LO == 4 ? j & 15 : j & 7), lo_shift(F::LO == 4 ? 4 * (j >> 4) : 2 * (j >> 3)),
        hi_row(F::H ? j / (8 / F::H) : 0), hi_shift(F::H ? F::H * (j % (8 / F::H)) : 0) {}
};

// fn(j) for j = J0 .. J0 + N - 1. The SIMD builds pass std::integral_constant<int, j>: the value index is a
// constant in each unrolled copy, so every shift is an immediate; the portable build a plain int (a loop).
#if defined(SSK_AVX512) || defined(SSK_AVX2)
template <int J0, int N, class Fn>
static inline void for_values(Fn&& fn) {
  if constexpr (N > 0) {
    fn(std::integral_constant<int, J0>{});
    for_values<J0 + 1, N - 1>(fn);
  }
}
#else
template <int J0, int N, class Fn>
static inline void for_values(Fn&& fn) {
  for (int j = J0; j < J0 + N; ++j) fn(j);
}
#endif

#if defined(SSK_AVX512) || defined(SSK_AVX2)
// p, hidden from the compiler's value numbering: loads through it are not merged with earlier loads of the same
// address (blk_pair: a high row read by two pairs would stay live between them), and what was stored before is
// read back from memory.
template <class T>
static inline const T* opaque(const T* p) {
  __asm__ volatile("" : "+r"(p));  // volatile: two of them with the same input are not merged either
  return p;
}
template <int N>
static inline __m128i shift16(__m128i v) {  // left by N, right by -N (16-bit lanes)
  if constexpr (N > 0) return _mm_slli_epi16(v, N);
  else if constexpr (N < 0) return _mm_srli_epi16(v, -N);
  else return v;
}
// The 16 lanes of value J of the chunk at c: q - OFF as int8.
template <class F, class J>
static inline __m128i blk_bytes(const uint8_t* c) {
  constexpr ValueAt<F> at(J::value);
  const __m128i lo = _mm_loadu_si128((const __m128i*)(c + 16 * at.lo_row));
  __m128i q = _mm_and_si128(shift16<-at.lo_shift>(lo), _mm_set1_epi8((1 << F::LO) - 1));
  if constexpr (F::H > 0) {
    const __m128i hi = _mm_loadu_si128((const __m128i*)(c + F::HI + 16 * at.hi_row));
    q = _mm_or_si128(q, _mm_and_si128(shift16<F::LO - at.hi_shift>(hi), _mm_set1_epi8(((1 << F::H) - 1) << F::LO)));
  }
  if constexpr (F::OFF != 0) q = _mm_sub_epi8(q, _mm_set1_epi8(F::OFF));
  return q;
}
#endif

// The lanes of P consecutive values: one step of the kernels' value loop (blk_step below).
template <int P>
struct StepLanes {
  V16 v[P];
};
#include "gemm_group6.h"    // Q6_K's grouped layout
#include "gemm_nibble32.h"  // Q4_0's and Q4_K's words of nibbles

// 16 lanes of value j (0..31; a for_values index) of the chunk at c as floats: q - OFF, exact. Without high
// bits, the low bits are widened straight from memory and cut in 32-bit lanes (as q4_1; measured faster).
#if defined(SSK_AVX512)
template <class F, bool SX = false, class J>
static inline V16 blk_lanes(const uint8_t* c, J j) {
  if constexpr (F::GROUP6) return group6_lanes<F>(c, j);
  if constexpr (F::NIBBLE32) return nibble32_lanes<F, SX>(c, j);
  if constexpr (F::H == 0) {
    constexpr ValueAt<F> at(J::value);
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(c + 16 * at.lo_row)));
    if constexpr (at.lo_shift != 0) v = _mm512_srli_epi32(v, at.lo_shift);
    if constexpr (at.lo_shift + F::LO < 8) v = _mm512_and_si512(v, _mm512_set1_epi32((1 << F::LO) - 1));
    if constexpr (F::OFF != 0) v = _mm512_sub_epi32(v, _mm512_set1_epi32(F::OFF));
    return {_mm512_cvtepi32_ps(v)};
  }
  return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(blk_bytes<F, J>(c)))};
}
#elif defined(SSK_AVX2)
template <class F, class J>
static inline __m256 blk_8(const uint8_t* c) {  // F::H == 0: lanes 0-7 at c
  constexpr ValueAt<F> at(J::value);
  __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(c + 16 * at.lo_row)));
  if constexpr (at.lo_shift != 0) v = _mm256_srli_epi32(v, at.lo_shift);
  if constexpr (at.lo_shift + F::LO < 8) v = _mm256_and_si256(v, _mm256_set1_epi32((1 << F::LO) - 1));
  if constexpr (F::OFF != 0) v = _mm256_sub_epi32(v, _mm256_set1_epi32(F::OFF));
  return _mm256_cvtepi32_ps(v);
}
template <class F, bool SX = false, class J>
static inline V16 blk_lanes(const uint8_t* c, J j) {
  if constexpr (F::GROUP6) return group6_lanes<F>(c, j);
  if constexpr (F::NIBBLE32) return nibble32_lanes<F, SX>(c, j);
  if constexpr (F::H == 0) return {blk_8<F, J>(c), blk_8<F, J>(c + 8)};
  const __m128i q = blk_bytes<F, J>(c);
  return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(q, q)))};
}
#else
template <class F, bool SX = false>
static inline V16 blk_lanes(const uint8_t* c, int j) {
  if constexpr (F::GROUP6) return group6_lanes<F>(c, j);
  if constexpr (F::NIBBLE32) return nibble32_lanes<F, SX>(c, j);
  const ValueAt<F> at(j);
  V16 r;
  for (int l = 0; l < 16; ++l) {
    int v = (c[16 * at.lo_row + l] >> at.lo_shift) & ((1 << F::LO) - 1);
    if constexpr (F::H > 0) v |= ((c[F::HI + 16 * at.hi_row + l] >> at.hi_shift) & ((1 << F::H) - 1)) << F::LO;
    r.v[l] = (float)(v - F::OFF);
  }
  return r;
}
#endif

// Values 2p and 2p + 1 of the chunk at c (p a for_values index; formats with high bits): blk_lanes of each. Both
// sit in the same sub-block (L is even), their low bits in adjacent rows with one shift, their high bits in one row.
#if defined(SSK_AVX2)
template <int N>
static inline __m256i shift16x2(__m256i v) {  // shift16 on two rows
  if constexpr (N > 0) return _mm256_slli_epi16(v, N);
  else if constexpr (N < 0) return _mm256_srli_epi16(v, -N);
  else return v;
}
static inline __m256 i8_8(const int8_t* p) {  // 8 int8 lanes as floats
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
// With high bits, both values at once in 32 byte lanes: the two low rows in one load, the high row in both halves,
// shifted per half by a 32-bit variable shift (the mask keeps only the bits of the lane's own byte, as shift16).
template <class F, class P>
static inline StepLanes<2> blk_pair(const uint8_t* c, P) {
  static_assert(F::H > 0);
  constexpr int j = 2 * P::value;
  c = opaque(c);  // the high row is shared by two pairs: not merged either
  constexpr ValueAt<F> at(j), at1(j + 1);
  static_assert(at1.lo_row == at.lo_row + 1 && at1.lo_shift == at.lo_shift && at1.hi_row == at.hi_row);
  constexpr int s0 = F::LO - at.hi_shift, s1 = F::LO - at1.hi_shift;  // left shift of each value's high bits
  static_assert((s0 >= 0 && s1 >= 0) || (s0 <= 0 && s1 <= 0));
  const __m256i lo = _mm256_loadu_si256((const __m256i*)(c + 16 * at.lo_row));
  __m256i q = _mm256_and_si256(shift16x2<-at.lo_shift>(lo), _mm256_set1_epi8((1 << F::LO) - 1));
  const __m256i hi = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(c + F::HI + 16 * at.hi_row)));
  const __m256i h = s0 >= 0 && s1 >= 0 ? _mm256_sllv_epi32(hi, _mm256_setr_epi32(s0, s0, s0, s0, s1, s1, s1, s1))
                                       : _mm256_srlv_epi32(hi, _mm256_setr_epi32(-s0, -s0, -s0, -s0, -s1, -s1, -s1, -s1));
  q = _mm256_or_si256(q, _mm256_and_si256(h, _mm256_set1_epi8(((1 << F::H) - 1) << F::LO)));
  if constexpr (F::OFF != 0) q = _mm256_sub_epi8(q, _mm256_set1_epi8(F::OFF));
  alignas(32) int8_t b[32];  // widened from memory: a sign-extending load per 8 lanes, no shuffles to reach them
  _mm256_store_si256((__m256i*)b, q);
  const int8_t* m = opaque(b);
  return {{{i8_8(m), i8_8(m + 8)}, {i8_8(m + 16), i8_8(m + 24)}}};
}
#elif defined(SSK_AVX512)
template <class F, class P>
static inline StepLanes<2> blk_pair(const uint8_t* c, P) {
  return {{blk_lanes<F>(c, std::integral_constant<int, 2 * P::value>{}),
           blk_lanes<F>(c, std::integral_constant<int, 2 * P::value + 1>{})}};
}
#else
template <class F>
static inline StepLanes<2> blk_pair(const uint8_t* c, int p) {
  return {{blk_lanes<F>(c, 2 * p), blk_lanes<F>(c, 2 * p + 1)}};
}
#endif

// One step of the kernels' value loop: values P s .. P s + P - 1 of the chunk at c (s a for_values index), P = 4
// for Q6_K's groups (blk_group6), 2 for the other formats with high bits (blk_pair), else 1 (their loads are
// already one per 8 lanes; two values' lanes held at once would spill the interleaved kernel's sums).
template <class F>
constexpr int STEP = F::GROUP6 ? 4 : F::H > 0 ? 2 : 1;
template <class F, bool SX = false, class S>  // SX: the scaled expansion (gemm_nibble32.h)
static inline StepLanes<STEP<F>> blk_step(const uint8_t* c, S s) {
  if constexpr (STEP<F> == 4) return blk_group6<F>(c, s);
  else if constexpr (STEP<F> == 2) return blk_pair<F>(c, s);
  else return {{blk_lanes<F, SX>(c, s)}};
}

// blk_scale and blk_min, sub-block s's scale and minimum term of a tile block: gemm_scales.h.

// The sum of x over a 16-value sub-block (Q2_K's minimum term), added left to right as block_sums does;
// x[i * stride] for i = 0..15.
static inline float sum16(const float* x, int stride) {
  float s = x[0];
  for (int i = 1; i < 16; ++i) s += x[i * stride];
  return s;
}

// The register kernel: MR rows (x rows, stride k) of NT adjacent tiles (tbytes apart), as tile_q4_1. SX: x is
// nibble32_scaled_inputs' scaled inputs (sums still those of the rows themselves).
template <class F, int MR, int NT, bool SX = false>
static void tile_blk(const uint8_t* tile, size_t tbytes, const float* x, const float* sums, int k, float* y,
                     int ldy) {
  const int nb = k / SSK_QK;
  V16 acc[MR][NT];
  for (int r = 0; r < MR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = v_zero();
  for (int b = 0; b < k / F::S; ++b) {
    for (int c = 0; c < F::CHUNKS; ++c) {
      const int x0 = b * F::S + 32 * c;  // the chunk's first input
      const uint8_t* chunk[NT];
      for (int t = 0; t < NT; ++t) chunk[t] = tile + t * tbytes + (size_t)b * F::BLOCK + F::QS + c * F::CHUNK;
      V16 sq[MR][NT] = {};  // zeroed per sub-block below; initialised so no path reads it unset
      constexpr int P = STEP<F>;
      for_values<0, 32 / P>([&](auto sc) {  // values j0 .. j, each tile's fma steps in order
        const int j0 = P * sc, j = j0 + P - 1;
        if (j0 % F::L == 0)
          for (int r = 0; r < MR; ++r)
            for (int t = 0; t < NT; ++t) sq[r][t] = v_zero();
        for (int t = 0; t < NT; ++t) {
          const StepLanes<P> q = blk_step<F, SX>(chunk[t], sc);
          for (int i = 0; i < P; ++i)
            for (int r = 0; r < MR; ++r) sq[r][t] = v_fma(v_set1(x[(size_t)r * k + x0 + j0 + i]), q.v[i], sq[r][t]);
        }
        if (j % F::L == F::L - 1) {
          const int s = (32 * c + j) / F::L;
          float xs[MR];  // the minimum term's sum of x
          if constexpr (F::HAS_MIN)
            for (int r = 0; r < MR; ++r)
              xs[r] = F::L == 16 ? sum16(x + (size_t)r * k + x0 + j - 15, 1) : sums[(size_t)r * nb + x0 / 32];
          for (int t = 0; t < NT; ++t) {
            const uint8_t* blk = tile + t * tbytes + (size_t)b * F::BLOCK;
            const V16 scale = blk_scale<F>(blk, s);
            for (int r = 0; r < MR; ++r) acc[r][t] = v_fma(scale, sq[r][t], acc[r][t]);
            if constexpr (F::HAS_MIN) {
              const V16 mn = blk_min<F>(blk, s);
              for (int r = 0; r < MR; ++r) acc[r][t] = v_fma(mn, v_set1(xs[r]), acc[r][t]);
            }
          }
        }
      });
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int t = 0; t < NT; ++t) v_store(y + (size_t)r * ldy + SSK_NR * t, acc[r][t]);
}

// The interleaved kernel (xp[kk * MR + r]), accumulators in y between sub-blocks, as big_q4_1.
template <class F, int MR>
static void big_blk(const uint8_t* tile, const float* xp, const float* sums, int k, float* y, int ldy) {
  const int nb = k / SSK_QK;
  for (int r = 0; r < MR; ++r) v_store(y + (size_t)r * ldy, v_zero());
  for (int b = 0; b < k / F::S; ++b) {
    const uint8_t* blk = tile + (size_t)b * F::BLOCK;
    for (int c = 0; c < F::CHUNKS; ++c) {
      const int x0 = b * F::S + 32 * c;
      const uint8_t* chunk = blk + F::QS + c * F::CHUNK;
      V16 sq[MR];
      constexpr int P = STEP<F>;
      for_values<0, 32 / P>([&](auto sc) {  // values j0 .. j
        const int j0 = P * sc, j = j0 + P - 1;
        if (j0 % F::L == 0)
          for (int r = 0; r < MR; ++r) sq[r] = v_zero();
        const StepLanes<P> q = blk_step<F>(chunk, sc);
        for (int i = 0; i < P; ++i)
          for (int r = 0; r < MR; ++r) sq[r] = v_fma(v_set1(xp[(size_t)(x0 + j0 + i) * MR + r]), q.v[i], sq[r]);
        if (j % F::L == F::L - 1) {
          const int s = (32 * c + j) / F::L;
          const V16 scale = blk_scale<F>(blk, s);
          for (int r = 0; r < MR; ++r) {
            V16 a = v_fma(scale, sq[r], v_load(y + (size_t)r * ldy));
            if constexpr (F::HAS_MIN) {
              const float xs = F::L == 16 ? sum16(xp + (size_t)(x0 + j - 15) * MR + r, MR) : sums[(size_t)r * nb + x0 / 32];
              a = v_fma(blk_min<F>(blk, s), v_set1(xs), a);
            }
            v_store(y + (size_t)r * ldy, a);
          }
        }
      });
    }
  }
}

// The many-row kernel: all the interleaved rows of one tile, chunk by chunk. Each chunk's 32 values x 16 lanes
// are expanded once into float32 in an L1-resident scratch (2 KiB) with its sub-blocks' scales and minima, then
// every group of MR_BIG rows (xp interleaved per group, its accumulators in y) runs an fma kernel over those
// floats: big_blk expands a tile's weights once per group. Each element's steps are big_blk's, in its order.
template <class F>
struct ChunkFloats {
  static constexpr int NS = 32 / F::L;  // sub-blocks in a chunk
  alignas(64) float q[32 * SSK_NR];    // value j's lanes at q[16 j]
  V16 scale[NS], mn[NS];
};
template <class F>
static inline void expand_chunk(const uint8_t* blk, int c, ChunkFloats<F>& out) {
  const uint8_t* chunk = blk + F::QS + c * F::CHUNK;
  constexpr int P = STEP<F>;
  for_values<0, 32 / P>([&](auto sc) {
    const StepLanes<P> v = blk_step<F>(chunk, sc);
    for (int i = 0; i < P; ++i) v_store(out.q + (P * sc + i) * SSK_NR, v.v[i]);
  });
  for (int s = 0; s < ChunkFloats<F>::NS; ++s) {
    out.scale[s] = blk_scale<F>(blk, (32 * c) / F::L + s);
    if constexpr (F::HAS_MIN) out.mn[s] = blk_min<F>(blk, (32 * c) / F::L + s);
  }
}
// MR rows of one chunk: xc = the group's interleaved inputs of the chunk (xc[j * MR + r]); sums: the group's
// block sums at the chunk's 32-block (stride nb).
template <class F, int MR>
static void chunk_rows(const ChunkFloats<F>& w, const float* xc, const float* sums, int nb, float* y, int ldy) {
  for (int s = 0; s < ChunkFloats<F>::NS; ++s) {
    V16 sq[MR];
    for (int r = 0; r < MR; ++r) sq[r] = v_zero();
    for (int j = s * F::L; j < (s + 1) * F::L; ++j) {
      const V16 q = v_load(w.q + j * SSK_NR);
      for (int r = 0; r < MR; ++r) sq[r] = v_fma(v_set1(xc[j * MR + r]), q, sq[r]);
    }
    for (int r = 0; r < MR; ++r) {
      V16 a = v_fma(w.scale[s], sq[r], v_load(y + (size_t)r * ldy));
      if constexpr (F::HAS_MIN) {
        const float xs = F::L == 16 ? sum16(xc + s * 16 * MR + r, MR) : sums[(size_t)r * nb];
        a = v_fma(w.mn[s], v_set1(xs), a);
      }
      v_store(y + (size_t)r * ldy, a);
    }
  }
}
// rows in (MR_BIG / 2, MR_BIG]: chunk_rows for exactly that many
template <class F, int MR>
static void chunk_group(const ChunkFloats<F>& w, const float* xc, const float* sums, int nb, int rows, float* y,
                        int ldy) {
  if constexpr (MR > MR_BIG / 2 + 1) {
    if (rows < MR) return chunk_group<F, MR - 1>(w, xc, sums, nb, rows, y, ldy);
  }
  chunk_rows<F, MR>(w, xc, sums, nb, y, ldy);
}
// The first big_rows rows (groups of MR_BIG, the last one possibly shorter, interleaved in xp) of `tiles` adjacent
// tiles (at most MANY_TILES, tbytes apart): each group's inputs of a chunk are read from L1 by every tile after the
// first, and the next group's are fetched meanwhile.
constexpr int MANY_TILES = 4;
template <class F>
static void many_blk(const uint8_t* tile, size_t tbytes, int tiles, const float* xp, const float* sums, int k,
                     int big_rows, float* y, int ldy) {
  const int nb = k / SSK_QK;
  for (int r = 0; r < big_rows; ++r)
    for (int t = 0; t < tiles; ++t) v_store(y + (size_t)r * ldy + SSK_NR * t, v_zero());
  const auto group_x = [&](int m0, int x0) {  // the chunk's inputs of the group from row m0
    return xp + (size_t)m0 * k + (size_t)x0 * (big_rows - m0 < MR_BIG ? big_rows - m0 : MR_BIG);
  };
  ChunkFloats<F> w[MANY_TILES];
  for (int b = 0; b < k / F::S; ++b) {
    for (int c = 0; c < F::CHUNKS; ++c) {
      const int x0 = b * F::S + 32 * c;
      for (int t = 0; t < tiles; ++t) expand_chunk<F>(tile + t * tbytes + (size_t)b * F::BLOCK, c, w[t]);
      for (int m0 = 0; m0 < big_rows; m0 += MR_BIG) {
        const int rows = big_rows - m0 < MR_BIG ? big_rows - m0 : MR_BIG;
        if (m0 + MR_BIG < big_rows) ssk_prefetch((const uint8_t*)group_x(m0 + MR_BIG, x0), 0, 32 * MR_BIG * 4);
        const float* xc = group_x(m0, x0);
        const float* gs = sums ? sums + (size_t)m0 * nb + x0 / 32 : nullptr;
        for (int t = 0; t < tiles; ++t)
          chunk_group<F, MR_BIG>(w[t], xc, gs, nb, rows, y + (size_t)m0 * ldy + SSK_NR * t, ldy);
      }
    }
  }
}

// 16-bit float weights: tile = uint16 w[K][16], widened exactly (float16 or bfloat16).
template <bool BF>
static inline V16 h16_lanes(const uint8_t* tile, int kk) {
  const uint16_t* p = (const uint16_t*)tile + (size_t)kk * SSK_NR;
  return BF ? v_load_bf16(p) : v_load_f16(p);
}
template <bool BF, int MR, int NT>
static void tile_h16(const uint8_t* tile, size_t tbytes, const float* x, int k, float* y, int ldy) {
  V16 acc[MR][NT];
  for (int r = 0; r < MR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = v_zero();
  for (int kk = 0; kk < k; ++kk) {
    for (int t = 0; t < NT; ++t) {
      const V16 wk = h16_lanes<BF>(tile + t * tbytes, kk);
      for (int r = 0; r < MR; ++r) acc[r][t] = v_fma(v_set1(x[(size_t)r * k + kk]), wk, acc[r][t]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int t = 0; t < NT; ++t) v_store(y + (size_t)r * ldy + SSK_NR * t, acc[r][t]);
}
template <bool BF, int MR>
static void big_h16(const uint8_t* tile, const float* xp, int k, float* y, int ldy) {
  V16 acc[MR];
  for (int r = 0; r < MR; ++r) acc[r] = v_zero();
  for (int kk = 0; kk < k; ++kk) {
    const V16 wk = h16_lanes<BF>(tile, kk);
    for (int r = 0; r < MR; ++r) acc[r] = v_fma(v_set1(xp[(size_t)kk * MR + r]), wk, acc[r]);
  }
  for (int r = 0; r < MR; ++r) v_store(y + (size_t)r * ldy, acc[r]);
}
