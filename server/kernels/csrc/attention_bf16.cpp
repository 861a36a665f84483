// Attention over bfloat16 KV caches: the instantiation of attention_kernels.h for uint16_t keys and values.
#include "attention_kernels.h"

template void attend_kv<uint16_t>(const AttnGroup& r, int head_dim, int block, float scale, float softcap);
