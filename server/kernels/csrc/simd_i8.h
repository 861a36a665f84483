// VI: sixteen int32 lanes (one per output column) for exact dot products of 4- and 8-bit weights with
// int8 activations.
//
// Every operation is exact integer arithmetic: a lane sums products of at most 32 weight/activation
// pairs per block (|sum| <= 255 * 127 * 32 < 2^21, no overflow), and the AVX2 path's 16-bit partial
// sums of two products stay below 2^15 (vpmaddubsw saturates above that, so the weights it sees are
// 4-bit values or magnitudes <= 128). So every build, order and split gives the same lanes, and the
// conversion to float is exact.
//
// Beyond 4 bits (Q5_*, Q6_K), a value's high bits are or-ed into its nibble byte: a 32-bit shift and a byte
// mask (vi_shift, vi_mask_bytes) first move them to bits 4-5 of the same byte.
//
// For quantising the activations: |a|, "every lane finite", the largest lane (a maximum is exact in any
// order), and integral floats in [-127, 127] stored as int8 (an exact conversion).
#pragma once
#include <cfloat>

#include "simd.h"

#if defined(SSK_AVX512)
struct VI { __m512i v; };
static inline VI vi_zero() { return {_mm512_setzero_si512()}; }
static inline VI vi_load(const uint8_t* p) { return {_mm512_loadu_si512((const void*)p)}; }
static inline V16 vi_to_float(VI a) { return {_mm512_cvtepi32_ps(a.v)}; }
// The low / high nibble of every byte, as bytes 0..15.
static inline VI vi_low_nibbles(VI w) { return {_mm512_and_si512(w.v, _mm512_set1_epi8(0x0F))}; }
static inline VI vi_high_nibbles(VI w) {
  return {_mm512_and_si512(_mm512_srli_epi32(w.v, 4), _mm512_set1_epi8(0x0F))};
}
// acc + sum over the lane's 4 bytes of u8(w) * s8(a), with a = one group of 4 activations broadcast.
static inline VI vi_dot_u8(VI acc, VI w, const int8_t* a) {
  int32_t quad;
  std::memcpy(&quad, a, sizeof quad);
  return {_mm512_dpbusd_epi32(acc.v, w.v, _mm512_set1_epi32(quad))};
}
// Signed weights: the unsigned dot product of w + 128 (a bit flip) now; q8_unbias() removes 128 * sum(a).
static inline VI vi_q8_prepare(VI w) { return {_mm512_xor_si512(w.v, _mm512_set1_epi8((char)0x80))}; }
static inline VI vi_dot_q8(VI acc, VI w_prepared, const int8_t* a) { return vi_dot_u8(acc, w_prepared, a); }
static inline VI vi_q8_unbias(VI dot, int32_t a_sum) { return {_mm512_sub_epi32(dot.v, _mm512_set1_epi32(128 * a_sum))}; }
static inline VI vi_or(VI a, VI b) { return {_mm512_or_si512(a.v, b.v)}; }
static inline VI vi_mask_bytes(VI a, uint8_t m) { return {_mm512_and_si512(a.v, _mm512_set1_epi8((char)m))}; }
template <int N>  // each 32-bit lane shifted left by N, right by -N
static inline VI vi_shift(VI a) {
  if constexpr (N > 0) return {_mm512_slli_epi32(a.v, N)};
  else if constexpr (N < 0) return {_mm512_srli_epi32(a.v, -N)};
  else return a;
}
static inline VI vi_sub_i32(VI a, int32_t b) { return {_mm512_sub_epi32(a.v, _mm512_set1_epi32(b))}; }
static inline V16 v_from_i8(const int8_t* p) {
  return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)))};
}
static inline V16 v_abs(V16 a) { return {_mm512_abs_ps(a.v)}; }
static inline bool v_all_finite(V16 a) {
  return _mm512_cmp_ps_mask(_mm512_abs_ps(a.v), _mm512_set1_ps(FLT_MAX), _CMP_LE_OQ) == 0xFFFF;
}
static inline float v_hmax(V16 a) { return _mm512_reduce_max_ps(a.v); }
static inline void v_store_i8(int8_t* p, V16 q) {
  _mm_storeu_si128((__m128i*)p, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q.v)));
}

#elif defined(SSK_AVX2)
struct VI { __m256i lo, hi; };
static inline VI vi_zero() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
static inline VI vi_load(const uint8_t* p) {
  return {_mm256_loadu_si256((const __m256i*)p), _mm256_loadu_si256((const __m256i*)(p + 32))};
}
static inline V16 vi_to_float(VI a) { return {_mm256_cvtepi32_ps(a.lo), _mm256_cvtepi32_ps(a.hi)}; }
static inline VI vi_low_nibbles(VI w) {
  const __m256i m = _mm256_set1_epi8(0x0F);
  return {_mm256_and_si256(w.lo, m), _mm256_and_si256(w.hi, m)};
}
static inline VI vi_high_nibbles(VI w) {
  const __m256i m = _mm256_set1_epi8(0x0F);
  return {_mm256_and_si256(_mm256_srli_epi32(w.lo, 4), m), _mm256_and_si256(_mm256_srli_epi32(w.hi, 4), m)};
}
static inline __m256i ssk_dot8(__m256i acc, __m256i w, __m256i a) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1)));
}
static inline VI vi_dot_u8(VI acc, VI w, const int8_t* a) {
  int32_t quad;
  std::memcpy(&quad, a, sizeof quad);
  const __m256i b = _mm256_set1_epi32(quad);
  return {ssk_dot8(acc.lo, w.lo, b), ssk_dot8(acc.hi, w.hi, b)};
}
// Signed weights: |w| times a with w's sign (|w| <= 128, so two products stay below 2^15): exact w * a.
static inline VI vi_q8_prepare(VI w) { return w; }
static inline VI vi_dot_q8(VI acc, VI w, const int8_t* a) {
  int32_t quad;
  std::memcpy(&quad, a, sizeof quad);
  const __m256i b = _mm256_set1_epi32(quad);
  return {ssk_dot8(acc.lo, _mm256_abs_epi8(w.lo), _mm256_sign_epi8(b, w.lo)),
          ssk_dot8(acc.hi, _mm256_abs_epi8(w.hi), _mm256_sign_epi8(b, w.hi))};
}
static inline VI vi_q8_unbias(VI dot, int32_t) { return dot; }
static inline VI vi_or(VI a, VI b) { return {_mm256_or_si256(a.lo, b.lo), _mm256_or_si256(a.hi, b.hi)}; }
static inline VI vi_mask_bytes(VI a, uint8_t m) {
  const __m256i mm = _mm256_set1_epi8((char)m);
  return {_mm256_and_si256(a.lo, mm), _mm256_and_si256(a.hi, mm)};
}
template <int N>
static inline VI vi_shift(VI a) {
  if constexpr (N > 0) return {_mm256_slli_epi32(a.lo, N), _mm256_slli_epi32(a.hi, N)};
  else if constexpr (N < 0) return {_mm256_srli_epi32(a.lo, -N), _mm256_srli_epi32(a.hi, -N)};
  else return a;
}
static inline VI vi_sub_i32(VI a, int32_t b) {
  const __m256i bb = _mm256_set1_epi32(b);
  return {_mm256_sub_epi32(a.lo, bb), _mm256_sub_epi32(a.hi, bb)};
}
static inline V16 v_from_i8(const int8_t* p) {
  const __m128i q = _mm_loadu_si128((const __m128i*)p);
  return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(q, q)))};
}
static inline V16 v_abs(V16 a) {
  const __m256 m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  return {_mm256_and_ps(a.lo, m), _mm256_and_ps(a.hi, m)};
}
static inline bool v_all_finite(V16 a) {
  const V16 m = v_abs(a);
  const __m256 big = _mm256_set1_ps(FLT_MAX);
  return _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(m.lo, big, _CMP_LE_OQ), _mm256_cmp_ps(m.hi, big, _CMP_LE_OQ))) == 0xFF;
}
static inline float v_hmax(V16 a) {
  const __m256 m8 = _mm256_max_ps(a.lo, a.hi);
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  return _mm_cvtss_f32(_mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1)));
}
static inline void v_store_i8(int8_t* p, V16 q) {
  const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(_mm256_cvtps_epi32(q.lo), _mm256_cvtps_epi32(q.hi)), 0xD8);
  _mm_storeu_si128((__m128i*)p, _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
}

#else
struct VI { int32_t v[16]; };
static inline VI vi_zero() { return VI{}; }
static inline VI vi_load(const uint8_t* p) { VI r; std::memcpy(r.v, p, sizeof r.v); return r; }
static inline V16 vi_to_float(VI a) { V16 r; for (int l = 0; l < 16; ++l) r.v[l] = (float)a.v[l]; return r; }
static inline VI vi_low_nibbles(VI w) {
  VI r;
  for (int l = 0; l < 16; ++l) r.v[l] = (int32_t)((uint32_t)w.v[l] & 0x0F0F0F0Fu);
  return r;
}
static inline VI vi_high_nibbles(VI w) {
  VI r;
  for (int l = 0; l < 16; ++l) r.v[l] = (int32_t)(((uint32_t)w.v[l] >> 4) & 0x0F0F0F0Fu);
  return r;
}
static inline VI vi_dot_u8(VI acc, VI w, const int8_t* a) {
  for (int l = 0; l < 16; ++l)
    for (int j = 0; j < 4; ++j) acc.v[l] += (int32_t)(((uint32_t)w.v[l] >> (8 * j)) & 0xFFu) * a[j];
  return acc;
}
static inline VI vi_q8_prepare(VI w) { return w; }
static inline VI vi_dot_q8(VI acc, VI w, const int8_t* a) {
  for (int l = 0; l < 16; ++l)
    for (int j = 0; j < 4; ++j) acc.v[l] += (int32_t)(int8_t)(((uint32_t)w.v[l] >> (8 * j)) & 0xFFu) * a[j];
  return acc;
}
static inline VI vi_q8_unbias(VI dot, int32_t) { return dot; }
static inline VI vi_or(VI a, VI b) { for (int l = 0; l < 16; ++l) a.v[l] |= b.v[l]; return a; }
static inline VI vi_mask_bytes(VI a, uint8_t m) {
  for (int l = 0; l < 16; ++l) a.v[l] = (int32_t)((uint32_t)a.v[l] & (0x01010101u * m));
  return a;
}
template <int N>
static inline VI vi_shift(VI a) {
  for (int l = 0; l < 16; ++l) {
    const uint32_t u = (uint32_t)a.v[l];
    if constexpr (N >= 0) a.v[l] = (int32_t)(u << N);
    else a.v[l] = (int32_t)(u >> -N);
  }
  return a;
}
static inline VI vi_sub_i32(VI a, int32_t b) { for (int l = 0; l < 16; ++l) a.v[l] -= b; return a; }
static inline V16 v_from_i8(const int8_t* p) { V16 r; for (int l = 0; l < 16; ++l) r.v[l] = (float)p[l]; return r; }
static inline V16 v_abs(V16 a) { V16 r; for (int l = 0; l < 16; ++l) r.v[l] = std::fabs(a.v[l]); return r; }
static inline bool v_all_finite(V16 a) {
  for (int l = 0; l < 16; ++l)
    if (!(std::fabs(a.v[l]) <= FLT_MAX)) return false;
  return true;
}
static inline float v_hmax(V16 a) {
  float m = a.v[0];
  for (int l = 1; l < 16; ++l) m = a.v[l] > m ? a.v[l] : m;
  return m;
}
static inline void v_store_i8(int8_t* p, V16 q) { for (int l = 0; l < 16; ++l) p[l] = (int8_t)q.v[l]; }
#endif
