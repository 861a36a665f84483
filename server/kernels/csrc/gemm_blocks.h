// GEMM kernels of the GGUF block formats beyond q8_0/q4_1 (Q4_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) and of 16-bit
// float weights (F16, BF16), float32 activations. Included by gemm.cpp only (it uses its lane helpers).
//
// Every block format is one scheme: a tile block holds S values (32, or a 256-value K super-block) of 16
// output columns; its integer quants q (4, 5 or 6 bits) are cut into sub-blocks of L values (32; 16 for Q6_K),
// each with a scale and, for the asymmetric formats, a minimum term. Per output element, sub-blocks in order:
//   sq  = fma-chain over the sub-block's values j of x[j] * (q[j] - OFF)   (q - OFF is an exact integer)
//   acc = fma(scale, sq, acc)
//   acc = fma(min, s[b], acc)       (Q5_1, Q4_K, Q5_K; s[b] the 32-block's sum of x, block_sums)
// where scale = d (Q4_0, Q5_0, Q5_1) or d * sc (K-types: a float16 times an integer of at most 8 bits, exact in
// float32), min = m (Q5_1) or -(dmin * mn) (Q4_K, Q5_K; exact). Lanes are output columns, so every build gives
// the same bits. F16/BF16: acc = fma(x[k], w[n,k], acc) for k = 0, 1, ..., each weight widened exactly.
//
// Tile block layout (16 columns; server/kernels/packing.py writes it):
//   float16 d[16]; [float16 m[16] (Q5_1) or dmin[16] (K, with a minimum)];
//   [K-types: int8 sc[S/L][16]; uint8 mn[S/L][16] with a minimum];
//   per 32 values c: uint8 nib[16 j][16 lanes] (value j low nibble, value j+16 high nibble),
//                    then P planes uint32 bits[16 lanes] (bit j: bit 4+p of value j)
#pragma once

template <int S_, int L_, int P_, int OFF_, bool MIN_, bool K_>
struct BlockFmt {
  static constexpr int S = S_, L = L_, P = P_, OFF = OFF_, NSUB = S_ / L_, CHUNKS = S_ / 32;
  static constexpr bool HAS_MIN = MIN_, KTYPE = K_;
  static constexpr int SC = 32 + (MIN_ ? 32 : 0);                            // byte offset of sc
  static constexpr int MN = SC + (K_ ? NSUB * 16 : 0);                       // byte offset of mn
  static constexpr int QS = MN + (K_ && MIN_ ? NSUB * 16 : 0);              // byte offset of the quants
  static constexpr int CHUNK = 256 + 64 * P_;                                // bytes per 32 values
  static constexpr int BLOCK = QS + CHUNKS * CHUNK;
};
using FmtQ4_0 = BlockFmt<32, 32, 0, 8, false, false>;
using FmtQ5_0 = BlockFmt<32, 32, 1, 16, false, false>;
using FmtQ5_1 = BlockFmt<32, 32, 1, 0, true, false>;
using FmtQ4_K = BlockFmt<256, 32, 0, 0, true, true>;
using FmtQ5_K = BlockFmt<256, 32, 1, 0, true, true>;
using FmtQ6_K = BlockFmt<256, 16, 2, 32, false, true>;

// The planes of one 32-value chunk for 16 lanes; bit j of plane p is moved to bit 4 + p of value j's lane.
#if defined(SSK_AVX512)
struct Planes { __m512i p[2]; };
template <int P>
static inline Planes load_planes(const uint8_t* at) {
  Planes r;
  for (int p = 0; p < P; ++p) r.p[p] = _mm512_loadu_si512((const void*)(at + 64 * p));
  return r;
}
// 16 lanes of value j (0..31) of a chunk as floats: (nibble | high bits) - OFF, exact.
template <int P, int OFF>
static inline V16 blk_lanes(const uint8_t* nib, const Planes& pl, int j) {
  __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(nib + 16 * (j & 15))));
  v = j >= 16 ? _mm512_srli_epi32(v, 4) : _mm512_and_si512(v, _mm512_set1_epi32(0x0F));
  for (int p = 0; p < P; ++p)
    v = _mm512_or_si512(v, _mm512_and_si512(j >= 4 + p ? _mm512_srli_epi32(pl.p[p], j - 4 - p) : _mm512_slli_epi32(pl.p[p], 4 + p - j), _mm512_set1_epi32(16 << p)));
  if (OFF) v = _mm512_sub_epi32(v, _mm512_set1_epi32(OFF));
  return {_mm512_cvtepi32_ps(v)};
}
#elif defined(SSK_AVX2)
struct Planes { __m256i p[2][2]; };
template <int P>
static inline Planes load_planes(const uint8_t* at) {
  Planes r;
  for (int p = 0; p < P; ++p)
    for (int h = 0; h < 2; ++h)
      r.p[p][h] = _mm256_loadu_si256((const __m256i*)(at + 64 * p + 32 * h));
  return r;
}
template <int P, int OFF>
static inline __m256 blk_8(const uint8_t* nib, const Planes& pl, int j, int h) {
  __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(nib + 16 * (j & 15) + 8 * h)));
  v = j >= 16 ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, _mm256_set1_epi32(0x0F));
  for (int p = 0; p < P; ++p)
    v = _mm256_or_si256(v, _mm256_and_si256(j >= 4 + p ? _mm256_srli_epi32(pl.p[p][h], j - 4 - p) : _mm256_slli_epi32(pl.p[p][h], 4 + p - j), _mm256_set1_epi32(16 << p)));
  if (OFF) v = _mm256_sub_epi32(v, _mm256_set1_epi32(OFF));
  return _mm256_cvtepi32_ps(v);
}
template <int P, int OFF>
static inline V16 blk_lanes(const uint8_t* nib, const Planes& pl, int j) {
  return {blk_8<P, OFF>(nib, pl, j, 0), blk_8<P, OFF>(nib, pl, j, 1)};
}
#else
struct Planes { uint32_t p[2][16]; };
template <int P>
static inline Planes load_planes(const uint8_t* at) {
  Planes r;
  for (int p = 0; p < P; ++p)
    for (int l = 0; l < 16; ++l) {
      uint32_t bits;
      std::memcpy(&bits, at + 64 * p + 4 * l, 4);
      r.p[p][l] = bits;
    }
  return r;
}
template <int P, int OFF>
static inline V16 blk_lanes(const uint8_t* nib, const Planes& pl, int j) {
  V16 r;
  for (int l = 0; l < 16; ++l) {
    const uint8_t byte = nib[16 * (j & 15) + l];
    int32_t v = j >= 16 ? byte >> 4 : byte & 0x0F;
    for (int p = 0; p < P; ++p) v |= (int32_t)(((pl.p[p][l] >> j) & 1u) << (4 + p));
    r.v[l] = (float)(v - OFF);
  }
  return r;
}
#endif

// Sub-block s's scale and minimum term (see the header comment) of tile block blk.
template <class F>
static inline V16 blk_scale(const uint8_t* blk, int s) {
  const V16 d = v_load_f16((const uint16_t*)blk);
  if constexpr (F::KTYPE) return v_mul(d, q8_lanes(blk + F::SC + 16 * s));
  return d;
}
template <class F>
static inline V16 blk_min(const uint8_t* blk, int s) {
  const V16 m = v_load_f16((const uint16_t*)blk + 16);
  if constexpr (F::KTYPE) return v_sub(v_zero(), v_mul(m, q8_lanes(blk + F::MN + 16 * s)));
  return m;
}

// The register kernel: MR rows (x rows, stride k) of NT adjacent tiles (tbytes apart), as tile_q4_1.
template <class F, int MR, int NT>
static void tile_blk(const uint8_t* tile, size_t tbytes, const float* x, const float* sums, int k, float* y,
                     int ldy) {
  const int nb = k / SSK_QK;
  V16 acc[MR][NT];
  for (int r = 0; r < MR; ++r)
    for (int t = 0; t < NT; ++t) acc[r][t] = v_zero();
  for (int b = 0; b < k / F::S; ++b) {
    for (int c = 0; c < F::CHUNKS; ++c) {
      const int x0 = b * F::S + 32 * c;  // the chunk's first input
      Planes pl[NT];
      for (int t = 0; t < NT; ++t) pl[t] = load_planes<F::P>(tile + t * tbytes + (size_t)b * F::BLOCK + F::QS + c * F::CHUNK + 256);
      for (int j0 = 0; j0 < 32; j0 += F::L) {  // each sub-block of the chunk: an fma chain, then its scale
        V16 sq[MR][NT];
        for (int r = 0; r < MR; ++r)
          for (int t = 0; t < NT; ++t) sq[r][t] = v_zero();
        for (int j = j0; j < j0 + F::L; ++j)
          for (int t = 0; t < NT; ++t) {
            const V16 q = blk_lanes<F::P, F::OFF>(tile + t * tbytes + (size_t)b * F::BLOCK + F::QS + c * F::CHUNK, pl[t], j);
            for (int r = 0; r < MR; ++r) sq[r][t] = v_fma(v_set1(x[(size_t)r * k + x0 + j]), q, sq[r][t]);
          }
        const int s = (32 * c + j0) / F::L;
        for (int t = 0; t < NT; ++t) {
          const uint8_t* blk = tile + t * tbytes + (size_t)b * F::BLOCK;
          const V16 scale = blk_scale<F>(blk, s);
          for (int r = 0; r < MR; ++r) acc[r][t] = v_fma(scale, sq[r][t], acc[r][t]);
          if constexpr (F::HAS_MIN) {
            const V16 mn = blk_min<F>(blk, s);
            for (int r = 0; r < MR; ++r) acc[r][t] = v_fma(mn, v_set1(sums[(size_t)r * nb + x0 / 32]), acc[r][t]);
          }
        }
      }
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
      const uint8_t* nib = blk + F::QS + c * F::CHUNK;
      const Planes pl = load_planes<F::P>(nib + 256);
      for (int j0 = 0; j0 < 32; j0 += F::L) {  // each sub-block of the chunk
        V16 sq[MR];
        for (int r = 0; r < MR; ++r) sq[r] = v_zero();
        for (int j = j0; j < j0 + F::L; ++j) {
          const V16 q = blk_lanes<F::P, F::OFF>(nib, pl, j);
          for (int r = 0; r < MR; ++r) sq[r] = v_fma(v_set1(xp[(size_t)(x0 + j) * MR + r]), q, sq[r]);
        }
        const int s = (32 * c + j0) / F::L;
        const V16 scale = blk_scale<F>(blk, s);
        for (int r = 0; r < MR; ++r) {
          V16 a = v_fma(scale, sq[r], v_load(y + (size_t)r * ldy));
          if constexpr (F::HAS_MIN) a = v_fma(blk_min<F>(blk, s), v_set1(sums[(size_t)r * nb + x0 / 32]), a);
          v_store(y + (size_t)r * ldy, a);
        }
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
