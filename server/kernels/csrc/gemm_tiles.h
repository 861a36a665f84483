// The float32-activation GEMM kernels of every weight format and the tile loop that runs them (gemm()'s
// arithmetic: the header of gemm.cpp), as templates over a kernel family; each gemm_*.cpp unit instantiates
// GemmFormat (gemm_formats.h) for its formats, so the formats' kernels compile in parallel.
#pragma once
#include <vector>

#include "gemm_blocks.h"

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

// The kernel families: one format's register kernel tile<MR, NT> (MR rows of NT tiles) and interleaved kernel
// big<MR>, with one signature (sums: the block sums of x, read by the formats with a minimum term only); MANY:
// whether it also has a many-row kernel many(), which takes all the interleaved rows of a tile at once.
struct F32Kernels {
  static constexpr bool MANY = false;
  template <int MR, int NT>
  static void tile(const uint8_t* t, size_t tbytes, const float* x, const float*, int k, float* y, int ldy) {
    tile_f32<MR, NT>(t, tbytes, x, k, y, ldy);
  }
  template <int MR>
  static void big(const uint8_t* t, const float* xp, const float*, int k, float* y, int ldy) {
    big_f32<MR>(t, xp, k, y, ldy);
  }
};
struct Q8_0Kernels {
  static constexpr bool MANY = false;
  template <int MR, int NT>
  static void tile(const uint8_t* t, size_t tbytes, const float* x, const float*, int k, float* y, int ldy) {
    tile_q8_0<MR, NT>(t, tbytes, x, k, y, ldy);
  }
  template <int MR>
  static void big(const uint8_t* t, const float* xp, const float*, int k, float* y, int ldy) {
    big_q8_0<MR>(t, xp, k, y, ldy);
  }
};
struct Q4_1Kernels {
  static constexpr bool MANY = false;
  template <int MR, int NT>
  static void tile(const uint8_t* t, size_t tbytes, const float* x, const float* sums, int k, float* y, int ldy) {
    tile_q4_1<MR, NT>(t, tbytes, x, sums, k, y, ldy);
  }
  template <int MR>
  static void big(const uint8_t* t, const float* xp, const float* sums, int k, float* y, int ldy) {
    big_q4_1<MR>(t, xp, sums, k, y, ldy);
  }
};
template <bool BF>
struct H16Kernels {
  static constexpr bool MANY = false;
  template <int MR, int NT>
  static void tile(const uint8_t* t, size_t tbytes, const float* x, const float*, int k, float* y, int ldy) {
    tile_h16<BF, MR, NT>(t, tbytes, x, k, y, ldy);
  }
  template <int MR>
  static void big(const uint8_t* t, const float* xp, const float*, int k, float* y, int ldy) {
    big_h16<BF, MR>(t, xp, k, y, ldy);
  }
};
template <class F>
struct BlockKernels {
  static constexpr bool MANY = true;
  template <int MR, int NT>
  static void tile(const uint8_t* t, size_t tbytes, const float* x, const float* sums, int k, float* y, int ldy) {
    tile_blk<F, MR, NT>(t, tbytes, x, sums, k, y, ldy);
  }
  template <int MR>
  static void big(const uint8_t* t, const float* xp, const float* sums, int k, float* y, int ldy) {
    big_blk<F, MR>(t, xp, sums, k, y, ldy);
  }
  template <int MR, int NT>  // x: nibble32_scaled_inputs' (SCALED_ROW below)
  static void tile_scaled(const uint8_t* t, size_t tbytes, const float* x, const float* sums, int k, float* y, int ldy) {
    tile_blk<F, MR, NT, true>(t, tbytes, x, sums, k, y, ldy);
  }
  static void many(const uint8_t* t, size_t tbytes, int tiles, const float* xp, const float* sums, int k,
                   int big_rows, float* y, int ldy) {
    many_blk<F>(t, tbytes, tiles, xp, sums, k, big_rows, y, ldy);
  }
};

// Whether family K's one-row kernel takes scaled inputs where they are exact (gemm_nibble32.h: Q4_0, Q4_K; AVX2).
template <class K>
constexpr bool SCALED_ROW = false;
#if defined(SSK_AVX2)
template <class F>
constexpr bool SCALED_ROW<BlockKernels<F>> = F::NIBBLE32;
#endif

// rows in (MR_BIG / 2, MR_BIG]: the interleaved kernel for exactly that many rows
template <class K, int MR>
static void run_big_rows(const uint8_t* tile, const float* xp, const float* sums, int k, int rows, float* y, int ldy) {
  if constexpr (MR > MR_BIG / 2 + 1) {
    if (rows < MR) return run_big_rows<K, MR - 1>(tile, xp, sums, k, rows, y, ldy);
  }
  K::template big<MR>(tile, xp, sums, k, y, ldy);
}

// The first big_rows rows (interleaved in xp per group of MR_BIG) of one tile, or of up to MANY_TILES tiles (of
// `left`) by the family's many-row kernel where it has one and there are several groups; returns the tiles done.
template <class K>
static int run_big(const uint8_t* tile, size_t tbytes, int64_t left, const float* xp, const float* sums, int k,
                   int big_rows, float* y, int ldy) {
  if constexpr (K::MANY) {
    if (big_rows > MR_BIG) {
      const int tiles = left < MANY_TILES ? (int)left : MANY_TILES;
      K::many(tile, tbytes, tiles, xp, sums, k, big_rows, y, ldy);
      return tiles;
    }
  }
  const int nb = k / SSK_QK;
  for (int m0 = 0; m0 < big_rows; m0 += MR_BIG) {
    const int rows = big_rows - m0 < MR_BIG ? big_rows - m0 : MR_BIG;
    run_big_rows<K, MR_BIG>(tile, xp + (size_t)m0 * k, sums ? sums + (size_t)m0 * nb : nullptr, k, rows,
                            y + (size_t)m0 * ldy, ldy);
  }
  return 1;
}

// rows in [1, MR]: the register kernel for exactly that many rows, one tile
template <class K, int MR>
static void run_rows(const uint8_t* tile, size_t tbytes, const float* x, const float* sums, int k, int rows, float* y,
                     int ldy) {
  if constexpr (MR > 1) {
    if (rows < MR) return run_rows<K, MR - 1>(tile, tbytes, x, sums, k, rows, y, ldy);
  }
  K::template tile<MR, 1>(tile, tbytes, x, sums, k, y, ldy);
}

template <class K>
void GemmFormat<K>::run(Pool& pool, const ssk_matrix& w, int m, int big_rows, const float* x, const float* xp,
                        const float* sums, float* y, int ldy) {
  const int nb = w.k / SSK_QK;
  const size_t tbytes = tile_bytes(w.format, w.k);
  const float* scaled = nullptr;  // one row's inputs scaled (SCALED_ROW), where exact
  if constexpr (SCALED_ROW<K>) {
    if (m == 1) {
      static thread_local std::vector<float> xs;  // the calling thread's: the workers read it through `scaled`
      if (xs.size() < (size_t)w.k) xs.resize(w.k);
      if (nibble32_scaled_inputs(x, w.k, xs.data())) scaled = xs.data();
    }
  }
  for_tiles(pool, w, m, y, ldy, [&](int64_t tile, int64_t left) {
    const uint8_t* tdata = w.data + (size_t)tile * tbytes;
    const int n0 = (int)tile * SSK_NR;
    if (m == 1 && left >= 4) {  // one row: four tiles' chains in flight
      if constexpr (SCALED_ROW<K>) {
        if (scaled) {
          K::template tile_scaled<1, 4>(tdata, tbytes, scaled, sums, w.k, y + n0, ldy);
          return 4;
        }
      }
      K::template tile<1, 4>(tdata, tbytes, x, sums, w.k, y + n0, ldy);
      return 4;
    }
    if (m == 2 && left >= 2) {
      K::template tile<2, 2>(tdata, tbytes, x, sums, w.k, y + n0, ldy);
      return 2;
    }
    const int tiles = run_big<K>(tdata, tbytes, left, xp, sums, w.k, big_rows, y + n0, ldy);
    for (int t = 0; t < tiles; ++t) {
      for (int m0 = big_rows; m0 < m; m0 += MR_MAX) {
        const int rows = m - m0 < MR_MAX ? m - m0 : MR_MAX;
        run_rows<K, MR_MAX>(tdata + t * tbytes, tbytes, x + (size_t)m0 * w.k, sums ? sums + (size_t)m0 * nb : nullptr,
                            w.k, rows, y + (size_t)m0 * ldy + n0 + SSK_NR * t, ldy);
      }
    }
    return tiles;
  });
}

// scale * (q - OFF) (+ min), the kernels' scale and minimum.
template <class F>
void BlockRows<F>::dequant(const ssk_matrix& w, int row, float* out) {
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
