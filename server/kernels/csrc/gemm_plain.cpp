// The GEMM kernels of f32, f16, bf16, q8_0 and q4_1 weights (written per format, not the block scheme of
// gemm_blocks.h): their instantiation of gemm_tiles.h.
#include "gemm_tiles.h"

template struct GemmFormat<F32Kernels>;
template struct GemmFormat<H16Kernels<false>>;
template struct GemmFormat<H16Kernels<true>>;
template struct GemmFormat<Q8_0Kernels>;
template struct GemmFormat<Q4_1Kernels>;
