// The GEMM kernels of Q2_K and Q3_K (K-types with 2 low bits a value): their instantiation of gemm_tiles.h.
#include "gemm_tiles.h"

template struct GemmFormat<BlockKernels<FmtQ2_K>>;
template struct GemmFormat<BlockKernels<FmtQ3_K>>;
template struct BlockRows<FmtQ2_K>;
template struct BlockRows<FmtQ3_K>;
