// Q4_0's and Q4_K's quants as 32-bit words of nibbles (BlockFmt::NIBBLE32): their lanes as floats, q - OFF.
// Included by gemm_blocks.h.
//
// Per 32 values (a chunk, 256 bytes): 4 groups g of 64 bytes, lane l's word at 64 g + 4 l, its byte b holding
// value 4g + b in the low nibble and value 16 + 4g + b in the high one (the int8 kernels' layout), so one plain
// load gives a value's bits for 8 lanes: value j sits at bit nibble_bit(j) of its word. Exact expansion: a shift
// and a mask. Scaled expansion (the one-row kernel, where its inputs allow): the mask alone, (q - OFF) * 2^e(j)
// with e(j) the nibble's bit (0 for the top nibble, shifted down), against inputs x[j] * 2^-e(j): the same
// products, so the same bits, with no shift (the core's scarce shift and shuffle slots bound the one-row kernel).
#pragma once

constexpr int nibble_bit(int j) { return 8 * (j & 3) + 4 * (j >> 4); }
constexpr int nibble_scale_bit(int j) { return nibble_bit(j) == 28 ? 0 : nibble_bit(j); }  // e(j)

#if defined(SSK_AVX512)
template <class F, bool SX, class J>
static inline V16 nibble32_lanes(const uint8_t* c, J) {
  static_assert(!SX, "the scaled expansion is AVX2's only");
  constexpr int j = J::value, p = nibble_bit(j);
  __m512i v = _mm512_loadu_si512((const void*)(c + 64 * ((j & 15) / 4)));
  if constexpr (p != 0) v = _mm512_srli_epi32(v, p);
  if constexpr (p != 28) v = _mm512_and_si512(v, _mm512_set1_epi32(15));
  if constexpr (F::OFF != 0) v = _mm512_sub_epi32(v, _mm512_set1_epi32(F::OFF));
  return {_mm512_cvtepi32_ps(v)};
}
#elif defined(SSK_AVX2)
template <int OFF, bool SX, int J>
static inline __m256 nibble32_8(const uint8_t* w) {  // 8 lanes' words at w: (q - OFF) * 2^e
  constexpr int p = nibble_bit(J), e = SX ? nibble_scale_bit(J) : 0;
  __m256i v = _mm256_loadu_si256((const __m256i*)w);
  if constexpr (p != e) v = _mm256_srli_epi32(v, p - e);
  if constexpr (p != 28) v = _mm256_and_si256(v, _mm256_set1_epi32(15 << e));
  if constexpr (OFF != 0) v = _mm256_sub_epi32(v, _mm256_set1_epi32(OFF << e));
  return _mm256_cvtepi32_ps(v);
}
template <class F, bool SX, class J>
static inline V16 nibble32_lanes(const uint8_t* c, J) {
  const uint8_t* w = c + 64 * ((J::value & 15) / 4);
  return {nibble32_8<F::OFF, SX, J::value>(w), nibble32_8<F::OFF, SX, J::value>(w + 32)};
}
#else
template <class F, bool SX>
static inline V16 nibble32_lanes(const uint8_t* c, int j) {
  static_assert(!SX, "the scaled expansion is AVX2's only");
  V16 r;
  for (int l = 0; l < 16; ++l) r.v[l] = (float)(((c[64 * ((j & 15) / 4) + 4 * l + (j & 3)] >> 4 * (j >> 4)) & 15) - F::OFF);
  return r;
}
#endif

// The one-row kernel's scaled inputs: xs[j] = x[j] * 2^-e(j mod 32). False where some x[j] is not exactly
// xs[j] * 2^e (too small for the scaled value to keep its bits, or not a number): then the exact expansion.
static inline bool nibble32_scaled_inputs(const float* x, int k, float* xs) {
  float down[32], up[32];
  for (int j = 0; j < 32; ++j) {
    up[j] = (float)(1 << nibble_scale_bit(j));
    down[j] = 1.0f / up[j];
  }
  bool exact = true;
  for (int j0 = 0; j0 < k; j0 += 32)
    for (int j = 0; j < 32; ++j) {
      xs[j0 + j] = x[j0 + j] * down[j];
      exact &= xs[j0 + j] * up[j] == x[j0 + j];
    }
  return exact;
}
