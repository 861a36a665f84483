// The GEMM kernels of the 32-value block formats Q4_0, Q5_0 and Q5_1: their instantiation of gemm_tiles.h.
#include "gemm_tiles.h"

template struct GemmFormat<BlockKernels<FmtQ4_0>>;
template struct GemmFormat<BlockKernels<FmtQ5_0>>;
template struct GemmFormat<BlockKernels<FmtQ5_1>>;
template struct BlockRows<FmtQ4_0>;
template struct BlockRows<FmtQ5_0>;
template struct BlockRows<FmtQ5_1>;
