// The K-types' sub-block scales and minima in a tile block, in as few bytes as the GGUF stores them, and the
// scale and minimum term of a sub-block that every block-format kernel multiplies by (float32 and int8
// activations: gemm_blocks.h, gemm_i8.cpp).
//
// A K-type's tile block holds FIELDS small integers per output column: Q3_K and Q6_K the scale of sub-block s
// (field s); Q2_K, Q4_K and Q5_K the scale and the minimum of sub-block s (fields 2s and 2s + 1). Each has
// BITS bits (Q6_K 8, Q3_K / Q4_K / Q5_K 6, Q2_K 4), laid out as byte rows of 16 lanes (one per column):
//   BITS = 8:     int8 f[FIELDS][16], field i in row i
//   BITS = 4, 6:  the low 4 bits, uint8 lo[FIELDS / 2][16], field i in row i / 2 at bit 4 (i % 2);
//                 BITS = 6: then the top 2 bits, uint8 hi[FIELDS / 4][16], field i in row i / 4 at bit 2 (i % 4)
// and a field's value is its bits less BIAS (Q3_K: 32; its scales are signed). So a column's fields take
// FIELDS * BITS / 8 bytes, the GGUF's: Q4_K and Q5_K 12 (row s: sc | mn << 4 of sub-block s, their top bits in
// row s / 2 at bits 4 (s % 2) and 4 (s % 2) + 2), Q3_K 12, Q2_K 16 (row s: GGUF's byte sc | mn << 4), Q6_K 16.
// A field's 16 lanes are two 16-byte rows at most: a 16-bit shift and a byte mask per row (the mask drops what
// the shift carries across bytes), an or, then widened and converted, exactly.
#pragma once
#include "simd.h"

template <int FIELDS_, int BITS_, int BIAS_>
struct ScaleFields {
  static constexpr int FIELDS = FIELDS_, BITS = BITS_, BIAS = BIAS_;
  static constexpr int BYTES = FIELDS_ * BITS_ * 16 / 8;  // 16 columns
  static constexpr int HI = FIELDS_ / 2 * 16;             // BITS = 6: byte offset of the top 2 bits
  static_assert(BITS_ == 8 || (BITS_ == 4 && FIELDS_ % 2 == 0) || (BITS_ == 6 && FIELDS_ % 4 == 0));
};
struct NoScales {  // the formats with one scale (and minimum) per block: d (and m) alone
  static constexpr int FIELDS = 0, BYTES = 0;
};

// The 16 lanes of field i of the fields at p, as floats (exact: integers of at most 8 bits).
#if defined(SSK_AVX512) || defined(SSK_AVX2)
static inline __m128i srl16(__m128i v, int n) { return _mm_srl_epi16(v, _mm_cvtsi32_si128(n)); }
template <class SF>
static inline __m128i field_bytes(const uint8_t* p, int i) {
  if constexpr (SF::BITS == 8) return _mm_loadu_si128((const __m128i*)(p + 16 * i));
  const __m128i lo = _mm_loadu_si128((const __m128i*)(p + 16 * (i >> 1)));
  __m128i v = _mm_and_si128(srl16(lo, 4 * (i & 1)), _mm_set1_epi8(0x0F));
  if constexpr (SF::BITS == 6) {  // bits 2 (i % 4) and 2 (i % 4) + 1 of the top row down to bits 0, 1, then up to 4, 5
    const __m128i hi = _mm_loadu_si128((const __m128i*)(p + SF::HI + 16 * (i >> 2)));
    v = _mm_or_si128(v, _mm_and_si128(_mm_slli_epi16(srl16(hi, 2 * (i & 3)), 4), _mm_set1_epi8(0x30)));
  }
  if constexpr (SF::BIAS != 0) v = _mm_sub_epi8(v, _mm_set1_epi8(SF::BIAS));
  return v;
}
#endif
#if defined(SSK_AVX512)
template <class SF>
static inline V16 field_lanes(const uint8_t* p, int i) {
  return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(field_bytes<SF>(p, i)))};
}
#elif defined(SSK_AVX2)
template <class SF>
static inline V16 field_lanes(const uint8_t* p, int i) {
  if constexpr (SF::BITS == 8) {  // int8 from memory: a sign-extending load per 8 lanes
    const auto half = [](const uint8_t* q) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)q))); };
    return {half(p + 16 * i), half(p + 16 * i + 8)};
  }
  const __m128i v = field_bytes<SF>(p, i);
  return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v)))};
}
#else
template <class SF>
static inline V16 field_lanes(const uint8_t* p, int i) {
  V16 r;
  for (int l = 0; l < 16; ++l) {
    int v = SF::BITS == 8 ? (int)(int8_t)p[16 * i + l] : (p[16 * (i >> 1) + l] >> (4 * (i & 1))) & 0x0F;
    if constexpr (SF::BITS == 6) v |= ((p[SF::HI + 16 * (i >> 2) + l] >> (2 * (i & 3))) & 3) << 4;
    r.v[l] = (float)(v - SF::BIAS);
  }
  return r;
}
#endif

// Sub-block s's scale and minimum term of tile block blk of format F (a BlockFmt, gemm_formats.h): scale = d, or
// d * sc[s] for K-types (a float16 times an integer of at most 8 bits: exact in float32); min = m, or
// -(dmin * mn[s]) (exact).
template <class F>
static inline V16 blk_scale(const uint8_t* blk, int s) {
  const V16 d = v_load_f16((const uint16_t*)blk);
  if constexpr (F::KTYPE) return v_mul(d, field_lanes<typename F::Scales>(blk + F::SC, F::HAS_MIN ? 2 * s : s));
  return d;
}
template <class F>
static inline V16 blk_min(const uint8_t* blk, int s) {
  const V16 m = v_load_f16((const uint16_t*)blk + 16);
  if constexpr (F::KTYPE) return v_sub(v_zero(), v_mul(m, field_lanes<typename F::Scales>(blk + F::SC, 2 * s + 1)));
  return m;
}
