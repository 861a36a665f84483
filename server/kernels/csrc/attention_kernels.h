// The attention kernels (the algorithm: the header of attention.cpp) as templates over the KV element type, instantiated once per type
// in attention_f32.cpp and attention_bf16.cpp: the two largest units of the build, compiled in parallel
// (server/kernels/build.py).
#pragma once
#include <cmath>
#include <limits>

#include "internal.h"
#include "simd.h"

constexpr int MAX_BLOCK = 256;

static inline V16 kv_load(const float* p) { return v_load(p); }
static inline V16 kv_load(const uint16_t* p) { return v_load_bf16(p); }

// The running state of one query head: output accumulator, running max and running sum.
template <int CHUNKS>
struct HeadState {
  V16 o[CHUNKS];
  float m, l;
};

// p[j - j0] = score of key j for j in [j0, j1), then -inf up to the next multiple of 16.
template <int CHUNKS, class KV>
static inline void block_scores(const float* qp, const KV* keys, int j0, int j1, float scale, float softcap,
                                float* p) {
  const int head_dim = 16 * CHUNKS;
  V16 q[CHUNKS];
  for (int c = 0; c < CHUNKS; ++c) q[c] = v_load(qp + 16 * c);
  for (int g = j0; g < j1; g += 16) {  // 16 keys' dot products, summed by one network (= v_hsum each)
    V16 part[16];
    const int valid = j1 - g < 16 ? j1 - g : 16;
    for (int t = 0; t < 16; ++t) {
      const KV* k = keys + (size_t)(g + (t < valid ? t : 0)) * head_dim;  // lanes past j1: any key, unused
      part[t] = v_mul(q[0], kv_load(k));
      for (int c = 1; c < CHUNKS; ++c) part[t] = v_fma(q[c], kv_load(k + 16 * c), part[t]);
    }
    V16 s = v_mul(v_hsum16(part), v_set1(scale));
    if (softcap != 0.0f) s = v_mul(v_tanh(v_div(s, v_set1(softcap))), v_set1(softcap));
    v_store(p + (g - j0), s);
  }
  for (int j = j1 - j0; j % 16; ++j) p[j] = -std::numeric_limits<float>::infinity();
}

// One block of keys [j0, j1), of which the first `skip` are outside the window, for the G query heads of a group (their q rows contiguous): scores and
// softmax weights per head, then one pass over the values that feeds every head (G * CHUNKS independent
// fma chains). Each head's arithmetic is the same as attending alone:
//   m' = max(m, max_j s_j); p_j = exp(s_j - m'); l = l*exp(m - m') + (p_0 + p_1 + ...) left to right;
//   o = o*exp(m - m') + fma-chain_j(p_j, v_j)
template <int CHUNKS, int G, class KV>
static void attend_block(const float* q, const KV* keys, const KV* values, int j0, int j1, int skip, bool first,
                         float scale, float softcap, float (*p)[MAX_BLOCK + 16], HeadState<CHUNKS>* st) {
  constexpr int head_dim = 16 * CHUNKS;
  const int n = j1 - j0;
  float m_new[G];
  for (int h = 0; h < G; ++h) {
    block_scores<CHUNKS, KV>(q + (size_t)h * head_dim, keys, j0, j1, scale, softcap, p[h]);
    for (int j = 0; j < skip; ++j) p[h][j] = -std::numeric_limits<float>::infinity();
    V16 mx = v_load(p[h]);
    for (int j = 16; j < n; j += 16) mx = v_max(v_load(p[h] + j), mx);
    alignas(64) float lanes[16];
    v_store(lanes, mx);
    float block_max = lanes[0];  // a maximum is exact in any order
    for (int l = 1; l < 16; ++l) block_max = lanes[l] > block_max ? lanes[l] : block_max;
    m_new[h] = block_max > st[h].m ? block_max : st[h].m;
    const V16 mv = v_set1(m_new[h]);
    for (int j = 0; j < n; j += 16) v_store(p[h] + j, v_exp(v_sub(v_load(p[h] + j), mv)));
  }
  V16 ob[G][CHUNKS];
  float l_block[G];
  for (int h = 0; h < G; ++h) {
    l_block[h] = 0.0f;
    for (int c = 0; c < CHUNKS; ++c) ob[h][c] = v_zero();
  }
  for (int j = skip; j < n; ++j) {  // a masked key's p is 0: skipping it changes no bit
    const KV* v = values + (size_t)(j0 + j) * head_dim;
    V16 vj[CHUNKS];
    for (int c = 0; c < CHUNKS; ++c) vj[c] = kv_load(v + 16 * c);
    for (int h = 0; h < G; ++h) {
      const V16 pj = v_set1(p[h][j]);
      for (int c = 0; c < CHUNKS; ++c) ob[h][c] = v_fma(pj, vj[c], ob[h][c]);
      l_block[h] += p[h][j];
    }
  }
  for (int h = 0; h < G; ++h) {
    HeadState<CHUNKS>& s = st[h];
    if (first) {  // first block: nothing to rescale (and exp(-inf - m) would be 0 * inf)
      s.l = l_block[h];
      for (int c = 0; c < CHUNKS; ++c) s.o[c] = ob[h][c];
    } else {
      const float alpha = s_exp(s.m - m_new[h]);
      const V16 av = v_set1(alpha);
      s.l = s.l * alpha + l_block[h];
      for (int c = 0; c < CHUNKS; ++c) s.o[c] = v_add(v_mul(s.o[c], av), ob[h][c]);
    }
    s.m = m_new[h];
  }
}

// The query heads of one row that share a key/value head, block by block: each block of keys and values
// is read once, while in L1, for all of them.
template <int CHUNKS, int G, class KV>
static void attend_group(const AttnGroup& r, int block, float scale, float softcap) {
  constexpr int head_dim = 16 * CHUNKS;
  HeadState<CHUNKS> st[G];
  for (int h = 0; h < G; ++h) {  // o is set by the first block; zeroed here so no path reads it unset
    st[h].m = -std::numeric_limits<float>::infinity(), st[h].l = 0.0f;
    for (int c = 0; c < CHUNKS; ++c) st[h].o[c] = v_zero();
  }
  alignas(64) float p[G][MAX_BLOCK + 16];
  const int lo = r.first_key;
  for (int j0 = lo - lo % block; j0 <= r.position; j0 += block) {
    const int j1 = j0 + block - 1 < r.position ? j0 + block : r.position + 1;
    attend_block<CHUNKS, G, KV>(r.q, (const KV*)r.keys, (const KV*)r.values, j0, j1, lo > j0 ? lo - j0 : 0,
                                j0 <= lo, scale, softcap, p, st);
  }
  for (int h = 0; h < G; ++h) {
    const V16 lv = v_set1(st[h].l);
    for (int c = 0; c < CHUNKS; ++c) v_store(r.out + (size_t)h * head_dim + 16 * c, v_div(st[h].o[c], lv));
  }
}

template <int CHUNKS, class KV>
static void attend_heads(const AttnGroup& r, int block, float scale, float softcap) {
  switch (r.n_heads) {
    case 1: return attend_group<CHUNKS, 1, KV>(r, block, scale, softcap);
    case 2: return attend_group<CHUNKS, 2, KV>(r, block, scale, softcap);
    case 3: return attend_group<CHUNKS, 3, KV>(r, block, scale, softcap);
    case 4: return attend_group<CHUNKS, 4, KV>(r, block, scale, softcap);
    case 5: return attend_group<CHUNKS, 5, KV>(r, block, scale, softcap);
    case 6: return attend_group<CHUNKS, 6, KV>(r, block, scale, softcap);
    case 7: return attend_group<CHUNKS, 7, KV>(r, block, scale, softcap);
    default: return attend_group<CHUNKS, 8, KV>(r, block, scale, softcap);  // never more: see attention_heads_per_item
  }
}

template <class KV>
void attend_kv(const AttnGroup& r, int head_dim, int block, float scale, float softcap) {
  switch (head_dim / 16) {
    case 4: return attend_heads<4, KV>(r, block, scale, softcap);
    case 8: return attend_heads<8, KV>(r, block, scale, softcap);
    case 2: return attend_heads<2, KV>(r, block, scale, softcap);
    case 5: return attend_heads<5, KV>(r, block, scale, softcap);
    case 6: return attend_heads<6, KV>(r, block, scale, softcap);
    case 3: return attend_heads<3, KV>(r, block, scale, softcap);
    case 1: return attend_heads<1, KV>(r, block, scale, softcap);
    case 7: return attend_heads<7, KV>(r, block, scale, softcap);
    case 16: return attend_heads<16, KV>(r, block, scale, softcap);
    case 12: return attend_heads<12, KV>(r, block, scale, softcap);
    case 10: return attend_heads<10, KV>(r, block, scale, softcap);
    default: return attend_heads<16, KV>(r, block, scale, softcap);  // never: head_dim is checked against the cases above
  }
}

