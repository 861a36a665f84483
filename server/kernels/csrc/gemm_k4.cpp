// The GEMM kernels of Q4_K, Q5_K and Q6_K (K-types with 4 low bits a value): their instantiation of
// gemm_tiles.h.
#include "gemm_tiles.h"

template struct GemmFormat<BlockKernels<FmtQ4_K>>;
template struct GemmFormat<BlockKernels<FmtQ5_K>>;
template struct GemmFormat<BlockKernels<FmtQ6_K>>;
template struct BlockRows<FmtQ4_K>;
template struct BlockRows<FmtQ5_K>;
template struct BlockRows<FmtQ6_K>;
