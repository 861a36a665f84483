// Causal attention of one query row over its own sequence's keys, in fixed blocks at absolute positions.
// Keys and values are cached as float32 or as bfloat16 (widened exactly on load); all arithmetic is float32.
//
// Keys are visited in blocks [0, B), [B, 2B), ... up to the row's position (with a sliding window, from
// the block holding the window's first key; the keys before it in that block are masked), and the blocks
// are combined left to right with an online softmax. The reduction therefore depends only on the row's
// position and its sequence's keys: a token gets the same bits in a prefill chunk of any size as in a
// decode step, alone or beside any other sequences.
//   score_j = hsum16(q * k_j) * scale      (16 lanes over d, then the fixed lane tree)
//   with a soft cap c: score_j = c * tanh(score_j / c)   (v_tanh)
//   per block: m' = max(m, max_j score_j); p_j = exp(score_j - m'); a = exp(m - m')
//              l = l*a + (p_0 + p_1 + ...);  o[d] = o[d]*a + fma-chain_j(p_j, v_j[d])
//   out[d] = o[d] / l
#include "internal.h"

// The kernels of one KV element type (float: float32, uint16_t: bfloat16), attention_kernels.h.
template <class KV>
void attend_kv(const AttnGroup& r, int head_dim, int block, float scale, float softcap);

int attention_heads_per_item(int group) {
  for (int g = MAX_GROUP; g > 1; --g)
    if (group % g == 0) return g;
  return 1;
}

void attention_group(const AttnGroup& r, int head_dim, int block, float scale, float softcap) {
  if (r.kv_bf16) return attend_kv<uint16_t>(r, head_dim, block, scale, softcap);
  attend_kv<float>(r, head_dim, block, scale, softcap);
}
