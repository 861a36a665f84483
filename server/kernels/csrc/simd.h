// V16: sixteen float lanes with one definition of every operation, for AVX-512, AVX2 and plain C++.
//
// Each lane operation is a single IEEE-754 operation (add, mul, div, fused multiply-add, round to
// nearest even), so a computation written with V16 gives the same bits on every build. Horizontal
// sums use one fixed tree: lane l + lane l+8, then l + l+4, l + l+2, l + l+1.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define SSK_AVX512 1
#include <immintrin.h>
#define SSK_ISA_NAME "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#define SSK_AVX2 1
#include <immintrin.h>
#define SSK_ISA_NAME "avx2"
#else
#define SSK_SCALAR 1
#define SSK_ISA_NAME "scalar"
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void ssk_pause() { _mm_pause(); }
// Ask for the cache lines of [p + ahead, p + ahead + bytes): a hint only, so it may point past the data (the
// address is integer arithmetic, and a prefetch never faults); it changes no result.
static inline void ssk_prefetch(const uint8_t* p, size_t ahead, int bytes) {
  const uintptr_t at = (uintptr_t)p + ahead;
  for (int o = 0; o < bytes; o += 64) _mm_prefetch((const char*)(at + o), _MM_HINT_T0);
}
#else
static inline void ssk_pause() {}
static inline void ssk_prefetch(const uint8_t*, size_t, int) {}
#endif

// float16 bits -> float32, exactly (every float16 value is a float32 value).
static inline float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  float f;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24 is exact in float32
    f = (float)mant * 5.9604644775390625e-8f;
    return sign ? -f : f;
  }
  const uint32_t bits = sign | (exp == 31 ? 0x7F800000u | (mant << 13) : ((exp + 112) << 23) | (mant << 13));
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

#if defined(SSK_AVX512)
struct V16 { __m512 v; };
static inline V16 v_load(const float* p) { return {_mm512_loadu_ps(p)}; }
static inline V16 v_load_f16(const uint16_t* p) { return {_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p))}; }
// 16 bfloat16 values widened to float32: exact, the bfloat16 bits are the float's top 16 bits.
static inline V16 v_load_bf16(const uint16_t* p) {
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16))};
}
static inline void v_store(float* p, V16 a) { _mm512_storeu_ps(p, a.v); }
static inline V16 v_set1(float x) { return {_mm512_set1_ps(x)}; }
static inline V16 v_add(V16 a, V16 b) { return {_mm512_add_ps(a.v, b.v)}; }
static inline V16 v_sub(V16 a, V16 b) { return {_mm512_sub_ps(a.v, b.v)}; }
static inline V16 v_mul(V16 a, V16 b) { return {_mm512_mul_ps(a.v, b.v)}; }
static inline V16 v_div(V16 a, V16 b) { return {_mm512_div_ps(a.v, b.v)}; }
static inline V16 v_fma(V16 a, V16 b, V16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
static inline V16 v_min(V16 a, V16 b) { return {_mm512_min_ps(a.v, b.v)}; }
static inline V16 v_max(V16 a, V16 b) { return {_mm512_max_ps(a.v, b.v)}; }
static inline V16 v_round(V16 a) { return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
// 2^n for integral n in [-126, 127]
static inline V16 v_pow2(V16 n) {
  __m512i i = _mm512_add_epi32(_mm512_cvtps_epi32(n.v), _mm512_set1_epi32(127));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(i, 23))};
}
// a < b ? x : y
static inline V16 v_select_lt(V16 a, V16 b, V16 x, V16 y) {
  return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ), y.v, x.v)};
}
static inline float v_hsum(V16 a) {
  __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(a.v), _mm512_extractf32x8_ps(a.v, 1));
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}
static inline float v_first(V16 a) { return _mm512_cvtss_f32(a.v); }
// scores[t] = v_hsum(part[t]) for t < 16, as one vector: a transpose-and-add network that performs
// exactly the additions of v_hsum (lane l + l+8, then l + l+4, l + l+2, l + l+1) for all 16 at once.
static inline V16 v_hsum16(const V16* part) {
  __m512 v1[8], v2[4], v3[2];
  for (int i = 0; i < 8; ++i) {  // [a lanes 0-7 | b lanes 0-7] + [a 8-15 | b 8-15]
    const __m512 a = part[2 * i].v, b = part[2 * i + 1].v;
    v1[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  }
  for (int i = 0; i < 4; ++i) {  // 4 keys x (lanes 0-3 + lanes 4-7)
    const __m512 c = v1[2 * i], d = v1[2 * i + 1];
    v2[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x88), _mm512_shuffle_f32x4(c, d, 0xDD));
  }
  for (int i = 0; i < 2; ++i) {  // in each 128-bit lane L: key 8i+L and key 8i+4+L, (0 + 2) and (1 + 3)
    const __m512 e = v2[2 * i], f = v2[2 * i + 1];
    v3[i] = _mm512_add_ps(_mm512_shuffle_ps(e, f, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(e, f, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  const __m512 g = v3[0], h = v3[1];  // lane L: keys L, 4+L, 8+L, 12+L at positions 4L..4L+3
  const __m512 s = _mm512_add_ps(_mm512_shuffle_ps(g, h, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_ps(g, h, _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return {_mm512_permutexvar_ps(order, s)};
}

#elif defined(SSK_AVX2)
struct V16 { __m256 lo, hi; };
static inline V16 v_load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
static inline V16 v_load_f16(const uint16_t* p) {
  return {_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p + 8)))};
}
static inline __m256 bf16_8(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
static inline V16 v_load_bf16(const uint16_t* p) { return {bf16_8(p), bf16_8(p + 8)}; }
static inline void v_store(float* p, V16 a) { _mm256_storeu_ps(p, a.lo); _mm256_storeu_ps(p + 8, a.hi); }
static inline V16 v_set1(float x) { __m256 s = _mm256_set1_ps(x); return {s, s}; }
#define SSK_V2(OP) {OP(a.lo, b.lo), OP(a.hi, b.hi)}
static inline V16 v_add(V16 a, V16 b) { return SSK_V2(_mm256_add_ps); }
static inline V16 v_sub(V16 a, V16 b) { return SSK_V2(_mm256_sub_ps); }
static inline V16 v_mul(V16 a, V16 b) { return SSK_V2(_mm256_mul_ps); }
static inline V16 v_div(V16 a, V16 b) { return SSK_V2(_mm256_div_ps); }
static inline V16 v_min(V16 a, V16 b) { return SSK_V2(_mm256_min_ps); }
static inline V16 v_max(V16 a, V16 b) { return SSK_V2(_mm256_max_ps); }
#undef SSK_V2
static inline V16 v_fma(V16 a, V16 b, V16 c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
static inline V16 v_round(V16 a) {
  const int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  return {_mm256_round_ps(a.lo, mode), _mm256_round_ps(a.hi, mode)};
}
static inline __m256 ssk_pow2_8(__m256 n) {
  __m256i i = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  return _mm256_castsi256_ps(_mm256_slli_epi32(i, 23));
}
static inline V16 v_pow2(V16 n) { return {ssk_pow2_8(n.lo), ssk_pow2_8(n.hi)}; }
static inline V16 v_select_lt(V16 a, V16 b, V16 x, V16 y) {
  return {_mm256_blendv_ps(y.lo, x.lo, _mm256_cmp_ps(a.lo, b.lo, _CMP_LT_OQ)),
          _mm256_blendv_ps(y.hi, x.hi, _mm256_cmp_ps(a.hi, b.hi, _CMP_LT_OQ))};
}
static inline float v_hsum(V16 a) {
  __m256 s8 = _mm256_add_ps(a.lo, a.hi);
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}
static inline float v_first(V16 a) { return _mm256_cvtss_f32(a.lo); }
// scores[t] = v_hsum(part[t]) for t < 16, with exactly v_hsum's additions (see the AVX-512 version).
static inline __m256 ssk_hsum8x8(const __m256* s8) {  // 8 keys' 8-lane partials -> 8 scores
  __m256 v2[4], v3[2];
  for (int i = 0; i < 4; ++i)  // keys 2i, 2i+1: lanes 0-3 + lanes 4-7
    v2[i] = _mm256_add_ps(_mm256_permute2f128_ps(s8[2 * i], s8[2 * i + 1], 0x20),
                          _mm256_permute2f128_ps(s8[2 * i], s8[2 * i + 1], 0x31));
  for (int i = 0; i < 2; ++i)
    v3[i] = _mm256_add_ps(_mm256_shuffle_ps(v2[2 * i], v2[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                          _mm256_shuffle_ps(v2[2 * i], v2[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m256 s = _mm256_add_ps(_mm256_shuffle_ps(v3[0], v3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm256_shuffle_ps(v3[0], v3[1], _MM_SHUFFLE(3, 1, 3, 1)));
  // s = keys [0, 2, 4, 6, 1, 3, 5, 7]
  return _mm256_permutevar8x32_ps(s, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}
static inline V16 v_hsum16(const V16* part) {
  __m256 s8[16];
  for (int t = 0; t < 16; ++t) s8[t] = _mm256_add_ps(part[t].lo, part[t].hi);
  return {ssk_hsum8x8(s8), ssk_hsum8x8(s8 + 8)};
}

#else
struct V16 { float v[16]; };
#define SSK_EACH(EXPR) V16 r; for (int l = 0; l < 16; ++l) r.v[l] = (EXPR); return r
static inline V16 v_load(const float* p) { V16 r; std::memcpy(r.v, p, sizeof r.v); return r; }
static inline V16 v_load_f16(const uint16_t* p) {
  V16 r;
  for (int l = 0; l < 16; ++l) r.v[l] = half_to_float(p[l]);
  return r;
}
static inline V16 v_load_bf16(const uint16_t* p) {
  V16 r;
  for (int l = 0; l < 16; ++l) {
    const uint32_t bits = (uint32_t)p[l] << 16;
    std::memcpy(&r.v[l], &bits, sizeof(float));
  }
  return r;
}
static inline void v_store(float* p, V16 a) { std::memcpy(p, a.v, sizeof a.v); }
static inline V16 v_set1(float x) { SSK_EACH(x); }
static inline V16 v_add(V16 a, V16 b) { SSK_EACH(a.v[l] + b.v[l]); }
static inline V16 v_sub(V16 a, V16 b) { SSK_EACH(a.v[l] - b.v[l]); }
static inline V16 v_mul(V16 a, V16 b) { SSK_EACH(a.v[l] * b.v[l]); }
static inline V16 v_div(V16 a, V16 b) { SSK_EACH(a.v[l] / b.v[l]); }
static inline V16 v_fma(V16 a, V16 b, V16 c) { SSK_EACH(std::fma(a.v[l], b.v[l], c.v[l])); }
// minps semantics: the second operand when either is NaN
static inline V16 v_min(V16 a, V16 b) { SSK_EACH(a.v[l] < b.v[l] ? a.v[l] : b.v[l]); }
// maxps semantics: the second operand when either is NaN or both are zero
static inline V16 v_max(V16 a, V16 b) { SSK_EACH(a.v[l] > b.v[l] ? a.v[l] : b.v[l]); }
static inline V16 v_round(V16 a) { SSK_EACH(std::nearbyint(a.v[l])); }
static inline V16 v_pow2(V16 n) {
  V16 r;
  for (int l = 0; l < 16; ++l) {
    uint32_t bits = (uint32_t)((int32_t)n.v[l] + 127) << 23;
    std::memcpy(&r.v[l], &bits, 4);
  }
  return r;
}
static inline V16 v_select_lt(V16 a, V16 b, V16 x, V16 y) { SSK_EACH(a.v[l] < b.v[l] ? x.v[l] : y.v[l]); }
#undef SSK_EACH
static inline float v_hsum(V16 a) {
  float s8[8], s4[4], s2[2];
  for (int l = 0; l < 8; ++l) s8[l] = a.v[l] + a.v[l + 8];
  for (int l = 0; l < 4; ++l) s4[l] = s8[l] + s8[l + 4];
  for (int l = 0; l < 2; ++l) s2[l] = s4[l] + s4[l + 2];
  return s2[0] + s2[1];
}
static inline float v_first(V16 a) { return a.v[0]; }
static inline V16 v_hsum16(const V16* part) {
  V16 r;
  for (int t = 0; t < 16; ++t) r.v[t] = v_hsum(part[t]);
  return r;
}

#endif

static inline V16 v_zero() { return v_set1(0.0f); }

// Cody-Waite reduction x = n*ln2 + r, |r| <= ln2/2, and (e^r - 1) / r by a degree-5 Taylor polynomial: the
// shared start of v_exp and v_tanh (e^r = fma(poly, r, 1), e^r - 1 = poly * r).
static inline V16 v_exp_reduce(V16 x, V16* n, V16* r) {
  *n = v_round(v_mul(x, v_set1(1.44269504088896341f)));
  *r = v_fma(*n, v_set1(-0.693359375f), x);
  *r = v_fma(*n, v_set1(2.12194440e-4f), *r);
  V16 p = v_set1(1.0f / 720.0f);
  p = v_fma(p, *r, v_set1(1.0f / 120.0f));
  p = v_fma(p, *r, v_set1(1.0f / 24.0f));
  p = v_fma(p, *r, v_set1(1.0f / 6.0f));
  p = v_fma(p, *r, v_set1(0.5f));
  return v_fma(p, *r, v_set1(1.0f));
}

// exp(x), the same bits on every build. x above 88 is clamped to 88; x below -87 gives 0.
// v_exp_reduce, then e^r = degree-6 polynomial (rel. err ~3e-8), times 2^n.
static inline V16 v_exp(V16 x) {
  x = v_min(x, v_set1(88.0f));
  V16 n, r;
  const V16 p = v_fma(v_exp_reduce(x, &n, &r), r, v_set1(1.0f));
  V16 low = v_set1(-87.0f);
  V16 safe_n = v_select_lt(x, low, v_zero(), n);  // keep the exponent trick in range for masked lanes
  return v_select_lt(x, low, v_zero(), v_mul(p, v_pow2(safe_n)));
}

static inline float s_exp(float x) { return v_first(v_exp(v_set1(x))); }

// tanh(x), the same bits on every build. |x| is clamped to 20 (tanh rounds to 1 from 9.1 on), then
// t = expm1(-2|x|) = fma(2^n, e^r - 1, 2^n - 1) by v_exp_reduce (e^r - 1 without adding 1 first, so small
// |x| keep their relative accuracy); tanh|x| = -t / (2 + t), with x's sign.
static inline V16 v_tanh(V16 x) {
  const V16 zero = v_zero();
  const V16 ax = v_min(v_max(x, v_sub(zero, x)), v_set1(20.0f));
  V16 n, r;
  const V16 em1_r = v_mul(v_exp_reduce(v_mul(ax, v_set1(-2.0f)), &n, &r), r);
  const V16 s = v_pow2(n);  // n in [-58, 0]
  const V16 t = v_fma(s, em1_r, v_sub(s, v_set1(1.0f)));
  const V16 th = v_div(v_sub(zero, t), v_add(v_set1(2.0f), t));
  return v_select_lt(x, zero, v_sub(zero, th), th);
}
