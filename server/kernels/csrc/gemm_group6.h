// Q6_K's quants in groups of four 6-bit values (the grouped layout, BlockFmt::GROUP6): their lanes as floats.
// Included by gemm_blocks.h.
//
// Per 32 values (a chunk, 384 bytes): 8 groups g of the values 4g .. 4g + 3, 48 bytes each; column l's 24 bits at
// bytes 48 g + 3 l .. 48 g + 3 l + 2 (little-endian), value 4g + i in bits 6i .. 6i + 5 as q - 32 in 6-bit two's
// complement (q xor 32). One byte shuffle gathers a column's 3 bytes into its 32-bit lane for 8 columns and four
// values, each then sign-extended by shifts and converted: a quarter of the shuffles of widening bytes per value
// (the core's scarce shuffle and shift slots bound the one-row kernel). Same integers q - 32 on every build.
#pragma once

#if defined(SSK_AVX512) || defined(SSK_AVX2)
// Columns 0-7 (lo) and 8-15 (hi) of group g, each 32-bit lane [0, byte 0, byte 1, byte 2] of its column's 24
// bits. The 16-byte halves of a 32-byte load feed the shuffle: columns 0-3 lie in [48g - 4, 48g + 12) (4 bytes of
// the block header or of the chunk before: in bounds), 4-7 in [48g + 12, 48g + 28), 8-11 in [48g + 20, 48g + 36),
// 12-15 in [48g + 36, 48g + 52); the last group's columns 12-15 are read as [48g + 32, 48g + 48) instead, so
// that no load passes the chunk's end.
template <int G>
static inline void group6_words(const uint8_t* c, __m256i& lo, __m256i& hi) {
  const __m256i at4 = _mm256_setr_epi8(-1, 4, 5, 6, -1, 7, 8, 9, -1, 10, 11, 12, -1, 13, 14, 15,  //
                                       -1, 0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11);
  lo = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i*)(c + 48 * G - 4)), at4);
  if constexpr (G < 7) {
    hi = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i*)(c + 48 * G + 20)), at4);
  } else {
    const __m256i both4 = _mm256_setr_epi8(-1, 4, 5, 6, -1, 7, 8, 9, -1, 10, 11, 12, -1, 13, 14, 15,  //
                                           -1, 4, 5, 6, -1, 7, 8, 9, -1, 10, 11, 12, -1, 13, 14, 15);
    hi = _mm256_shuffle_epi8(_mm256_loadu2_m128i((const __m128i*)(c + 48 * G + 32), (const __m128i*)(c + 48 * G + 20)),
                             both4);
  }
}
#endif

// The lanes of values 4g .. 4g + 3 (g a for_values index) of the chunk at c.
#if defined(SSK_AVX2)
template <int I>
static inline __m256 field6_8(__m256i w) {  // value I of 8 lanes: bits 8 + 6I .. 13 + 6I, sign-extended
  const __m256i top = I == 3 ? w : _mm256_slli_epi32(w, 18 - 6 * I);
  return _mm256_cvtepi32_ps(_mm256_srai_epi32(top, 26));
}
template <class F, class G>
static inline StepLanes<4> blk_group6(const uint8_t* c, G) {
  __m256i lo, hi;
  group6_words<G::value>(c, lo, hi);
  return {{{field6_8<0>(lo), field6_8<0>(hi)},
           {field6_8<1>(lo), field6_8<1>(hi)},
           {field6_8<2>(lo), field6_8<2>(hi)},
           {field6_8<3>(lo), field6_8<3>(hi)}}};
}
template <class F, class J>
static inline V16 group6_lanes(const uint8_t* c, J) {
  return blk_group6<F>(c, std::integral_constant<int, J::value / 4>{}).v[J::value % 4];
}
#elif defined(SSK_AVX512)
template <class F, class J>
static inline V16 group6_lanes(const uint8_t* c, J) {
  __m256i lo, hi;
  group6_words<J::value / 4>(c, lo, hi);
  const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
  constexpr int i = J::value % 4;
  const __m512i top = i == 3 ? w : _mm512_slli_epi32(w, 18 - 6 * i);
  return {_mm512_cvtepi32_ps(_mm512_srai_epi32(top, 26))};
}
template <class F, class G>
static inline StepLanes<4> blk_group6(const uint8_t* c, G) {
  constexpr int j = 4 * G::value;
  return {{group6_lanes<F>(c, std::integral_constant<int, j>{}), group6_lanes<F>(c, std::integral_constant<int, j + 1>{}),
           group6_lanes<F>(c, std::integral_constant<int, j + 2>{}), group6_lanes<F>(c, std::integral_constant<int, j + 3>{})}};
}
#else
template <class F>
static inline V16 group6_lanes(const uint8_t* c, int j) {
  V16 r;
  for (int l = 0; l < 16; ++l) {
    const uint8_t* p = c + 48 * (j / 4) + 3 * l;
    const uint32_t bits = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
    r.v[l] = (float)((int)(((bits >> 6 * (j % 4)) & 63u) ^ 32u) - 32);
  }
  return r;
}
template <class F>
static inline StepLanes<4> blk_group6(const uint8_t* c, int g) {
  return {{group6_lanes<F>(c, 4 * g), group6_lanes<F>(c, 4 * g + 1), group6_lanes<F>(c, 4 * g + 2),
           group6_lanes<F>(c, 4 * g + 3)}};
}
#endif
