// Attention over float32 KV caches: the instantiation of attention_kernels.h for float keys and values.
#include "attention_kernels.h"

template void attend_kv<float>(const AttnGroup& r, int head_dim, int block, float scale, float softcap);
