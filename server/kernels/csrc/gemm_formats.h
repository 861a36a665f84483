// The float32-activation GEMM split by weight format: what gemm.cpp dispatches on (declarations only), while
// the kernels (gemm_tiles.h) are instantiated once per format in the gemm_*.cpp units, compiled in parallel
// (server/kernels/build.py): the unrolled block kernels would make one unit the build's critical path.
#pragma once
#include "internal.h"
#include "gemm_scales.h"
#include "simd.h"

// Rows per register kernel (MR_MAX) and per interleaved kernel (MR_BIG): as many accumulators as the ISA's
// vector registers hold.
#if defined(SSK_AVX512)
constexpr int MR_MAX = 8;
constexpr int MR_BIG = 16;
#elif defined(SSK_AVX2)
constexpr int MR_MAX = 3;
constexpr int MR_BIG = 6;
#else
constexpr int MR_MAX = 4;
constexpr int MR_BIG = 8;
#endif

// A GGUF block format's tile block (gemm_blocks.h's header comment): S values per block, L per sub-block, LO
// low and H high bits a value, offset OFF, with a minimum term (MIN); a K-type's sub-block scales (and minima)
// are the ScaleFields SC_ (gemm_scales.h).
template <int S_, int L_, int LO_, int H_, int OFF_, bool MIN_, class SC_ = NoScales>
struct BlockFmt {
  using Scales = SC_;
  static constexpr int S = S_, L = L_, LO = LO_, H = H_, OFF = OFF_, NSUB = S_ / L_, CHUNKS = S_ / 32;
  static constexpr bool HAS_MIN = MIN_, KTYPE = SC_::FIELDS > 0;
  static constexpr bool GROUP6 = LO_ == 4 && H_ == 2;  // Q6_K: quants in groups of four 6-bit values (gemm_group6.h)
  static constexpr bool NIBBLE32 = LO_ == 4 && H_ == 0;  // Q4_0, Q4_K: 32-bit words of nibbles (gemm_nibble32.h)
  static constexpr int SC = 32 + (MIN_ ? 32 : 0);                            // byte offset of the scale fields
  static constexpr int QS = SC + SC_::BYTES;                                 // byte offset of the quants
  static constexpr int HI = 64 * LO_;                                        // the high bits, in a chunk
  static constexpr int CHUNK = 64 * (LO_ + H_);                              // bytes per 32 values
  static constexpr int BLOCK = QS + CHUNKS * CHUNK;
  static_assert(!KTYPE || SC_::FIELDS == NSUB * (MIN_ ? 2 : 1));
};
using FmtQ4_0 = BlockFmt<32, 32, 4, 0, 8, false>;
using FmtQ5_0 = BlockFmt<32, 32, 4, 1, 16, false>;
using FmtQ5_1 = BlockFmt<32, 32, 4, 1, 0, true>;
using FmtQ2_K = BlockFmt<256, 16, 2, 0, 0, true, ScaleFields<32, 4, 0>>;
using FmtQ3_K = BlockFmt<256, 16, 2, 1, 4, false, ScaleFields<16, 6, 32>>;
using FmtQ4_K = BlockFmt<256, 32, 4, 0, 0, true, ScaleFields<16, 6, 0>>;
using FmtQ5_K = BlockFmt<256, 32, 4, 1, 0, true, ScaleFields<16, 6, 0>>;
using FmtQ6_K = BlockFmt<256, 16, 4, 2, 32, false, ScaleFields<16, 8, 0>>;

// The kernel families (gemm_tiles.h): one weight format's register and interleaved kernels.
struct F32Kernels;
struct Q8_0Kernels;
struct Q4_1Kernels;
template <bool BF>
struct H16Kernels;  // float16 (false) or bfloat16 (true) weights
template <class F>
struct BlockKernels;  // a BlockFmt above

// y = x W^T for one part w (float32 activations) in family K's format, gemm()'s arguments; its first big_rows
// rows (a multiple of MR_BIG, or m) take the interleaved kernel, their inputs already interleaved in xp.
template <class K>
struct GemmFormat {
  static void run(Pool& pool, const ssk_matrix& w, int m, int big_rows, const float* x, const float* xp,
                  const float* sums, float* y, int ldy);
};
// Row `row` of a block-format (F) matrix, dequantised with the kernels' scale and minimum.
template <class F>
struct BlockRows {
  static void dequant(const ssk_matrix& w, int row, float* out);
};
