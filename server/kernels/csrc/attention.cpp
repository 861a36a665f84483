// Causal attention of one query row over its own sequence's keys, in fixed blocks at absolute positions.
//
// Keys are visited in blocks [0, B), [B, 2B), ... up to the row's position, and the blocks are
// combined left to right with an online softmax. The reduction therefore depends only on the row's
// position and its sequence's keys: a token gets the same bits in a prefill chunk of any size as in a
// decode step, alone or beside any other sequences.
//   score_j = hsum16(q * k_j) * scale      (16 lanes over d, then the fixed lane tree)
//   per block: m' = max(m, max_j score_j); p_j = exp(score_j - m'); a = exp(m - m')
//              l = l*a + (p_0 + p_1 + ...);  o[d] = o[d]*a + fma-chain_j(p_j, v_j[d])
//   out[d] = o[d] / l
#include <cmath>
#include <limits>

#include "internal.h"
#include "simd.h"

constexpr int MAX_BLOCK = 256;

// CHUNKS = head_dim / 16, a compile-time constant so that q, o and the partial sums live in registers.
template <int CHUNKS>
static void attend(const AttnRow& r, int block, float scale) {
  constexpr int chunks = CHUNKS;
  const int head_dim = 16 * CHUNKS;
  V16 q[CHUNKS], o[CHUNKS];
  for (int c = 0; c < chunks; ++c) { q[c] = v_load(r.q + 16 * c); o[c] = v_zero(); }
  float m = -std::numeric_limits<float>::infinity(), l = 0.0f;
  alignas(64) float p[MAX_BLOCK + 16];
  for (int j0 = 0; j0 <= r.position; j0 += block) {
    const int j1 = j0 + block - 1 < r.position ? j0 + block : r.position + 1;
    for (int g = j0; g < j1; g += 16) {  // 16 keys' dot products, summed by one network (= v_hsum each)
      V16 part[16];
      for (int t = 0; t < 16; ++t) {
        if (g + t >= j1) { part[t] = v_zero(); continue; }
        const float* k = r.keys + (size_t)(g + t) * head_dim;
        part[t] = v_mul(q[0], v_load(k));
        for (int c = 1; c < chunks; ++c) part[t] = v_fma(q[c], v_load(k + 16 * c), part[t]);
      }
      v_store(p + (g - j0), v_mul(v_hsum16(part), v_set1(scale)));
    }
    float block_max = -std::numeric_limits<float>::infinity();
    for (int j = 0; j < j1 - j0; ++j) block_max = p[j] > block_max ? p[j] : block_max;
    const float m_new = block_max > m ? block_max : m;
    const int n = j1 - j0;
    const V16 mv = v_set1(m_new);
    for (int j = 0; j < n; j += 16) v_store(p + j, v_exp(v_sub(v_load(p + j), mv)));  // lanes past n unused
    float l_block = 0.0f;
    for (int j = 0; j < n; ++j) l_block += p[j];
    V16 ob[CHUNKS];
    for (int c = 0; c < chunks; ++c) ob[c] = v_zero();
    for (int j = 0; j < n; ++j) {
      const float* v = r.values + (size_t)(j0 + j) * head_dim;
      const V16 pj = v_set1(p[j]);
      for (int c = 0; c < chunks; ++c) ob[c] = v_fma(pj, v_load(v + 16 * c), ob[c]);
    }
    if (j0 == 0) {  // first block: nothing to rescale (and exp(-inf - m) would be 0 * inf)
      l = l_block;
      for (int c = 0; c < chunks; ++c) o[c] = ob[c];
    } else {
      const float alpha = s_exp(m - m_new);
      const V16 av = v_set1(alpha);
      l = l * alpha + l_block;
      for (int c = 0; c < chunks; ++c) o[c] = v_add(v_mul(o[c], av), ob[c]);
    }
    m = m_new;
  }
  const V16 lv = v_set1(l);
  for (int c = 0; c < chunks; ++c) v_store(r.out + 16 * c, v_div(o[c], lv));
}

void attention_row(const AttnRow& r, int head_dim, int block, float scale) {
  switch (head_dim / 16) {
    case 4: return attend<4>(r, block, scale);
    case 8: return attend<8>(r, block, scale);
    case 2: return attend<2>(r, block, scale);
    case 5: return attend<5>(r, block, scale);
    case 6: return attend<6>(r, block, scale);
    case 3: return attend<3>(r, block, scale);
    case 1: return attend<1>(r, block, scale);
    case 7: return attend<7>(r, block, scale);
    case 16: return attend<16>(r, block, scale);
    case 12: return attend<12>(r, block, scale);
    case 10: return attend<10>(r, block, scale);
    default: return attend<16>(r, block, scale);  // never: head_dim is checked against the cases above
  }
}
