// Row-wise operations: RMSNorm, RoPE, SiLU/GELU-and-multiply, soft-capping, activation quantisation, row dequantisation.
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "internal.h"
#include "simd.h"

void rmsnorm_row(const float* x, const float* weight, int k, float eps, float* out) {
  // sum of squares in 16 lanes (lane l takes k = l, l+16, ...), then the fixed lane tree
  V16 part = v_mul(v_load(x), v_load(x));
  for (int c = 16; c < k; c += 16) part = v_fma(v_load(x + c), v_load(x + c), part);
  const float mean = v_hsum(part) / (float)k;
  const V16 inv = v_set1(1.0f / std::sqrt(mean + eps));
  for (int c = 0; c < k; c += 16) v_store(out + c, v_mul(v_load(weight + c), v_mul(v_load(x + c), inv)));
}

void rope_heads(float* x, int n_heads, int head_dim, int rotary_dim, const float* cos, const float* sin) {
  // rotate-half RoPE (the Hugging Face Llama layout) on the first rotary_dim dims of each head:
  // out = x*cos + rotate_half(x)*sin; dims from rotary_dim on pass through
  const int half = rotary_dim / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + (size_t)h * head_dim;
    for (int d = 0; d < half; ++d) {
      const float a = v[d], b = v[d + half];
      v[d] = a * cos[d] - b * sin[d];
      v[d + half] = b * cos[d + half] + a * sin[d + half];
    }
  }
}

void silu_mul_row(const float* gate, const float* up, int k, float* out) {
  const V16 one = v_set1(1.0f), zero = v_zero();
  for (int c = 0; c < k; c += 16) {
    const V16 g = v_load(gate + c);
    const V16 silu = v_div(g, v_add(one, v_exp(v_sub(zero, g))));
    v_store(out + c, v_mul(silu, v_load(up + c)));
  }
}

void gelu_tanh_mul_row(const float* gate, const float* up, int k, float* out) {
  // torch's gelu(approximate="tanh") term by term: 0.5*g * (1 + tanh(beta * (g + kappa * g*g*g)))
  const V16 one = v_set1(1.0f), half = v_set1(0.5f);
  const V16 beta = v_set1(0.7978845608028654f), kappa = v_set1(0.044715f);  // sqrt(2/pi)
  for (int c = 0; c < k; c += 16) {
    const V16 g = v_load(gate + c);
    const V16 inner = v_mul(beta, v_add(g, v_mul(kappa, v_mul(v_mul(g, g), g))));
    const V16 gelu = v_mul(v_mul(half, g), v_add(one, v_tanh(inner)));
    v_store(out + c, v_mul(gelu, v_load(up + c)));
  }
}

void softcap_row(float* x, int k, float cap) {
  const V16 c = v_set1(cap);
  for (int i = 0; i < k; i += 16) v_store(x + i, v_mul(v_tanh(v_div(v_load(x + i), c)), c));
}

void block_sums(const float* x, int k, float* s) {
  for (int b = 0; b < k / SSK_QK; ++b) {
    float acc = x[b * SSK_QK];
    for (int j = 1; j < SSK_QK; ++j) acc += x[b * SSK_QK + j];
    s[b] = acc;
  }
}

void dequant_row(const ssk_matrix& w, int row, float* out) {
  const int tile = row / SSK_NR, lane = row % SSK_NR, nb = w.k / SSK_QK;
  const uint8_t* base = w.data + (size_t)tile * tile_bytes(w.format, w.k);
  if (w.format == SSK_F32) {
    const float* t = (const float*)base;
    for (int k = 0; k < w.k; ++k) out[k] = t[(size_t)k * SSK_NR + lane];
    return;
  }
  if (w.format == SSK_F16 || w.format == SSK_BF16) {
    const uint16_t* t = (const uint16_t*)base;
    for (int k = 0; k < w.k; ++k) {
      float v[16];
      v_store(v, w.format == SSK_F16 ? v_load_f16(t + (size_t)k * SSK_NR) : v_load_bf16(t + (size_t)k * SSK_NR));
      out[k] = v[lane];
    }
    return;
  }
  if (w.format != SSK_Q8_0 && w.format != SSK_Q4_1)
    return w.act == SSK_ACT_I8 ? dequant_row_i8(w, row, out) : dequant_row_blocks(w, row, out);
  for (int b = 0; b < nb; ++b) {
    if (w.format == SSK_Q8_0) {
      const uint8_t* blk = base + (size_t)b * Q8_0_TILE_BLOCK;
      const float d = half_to_float(((const uint16_t*)blk)[lane]);
      for (int k = 0; k < SSK_QK; ++k) out[b * SSK_QK + k] = d * (float)(int8_t)blk[Q8_0_QS + quant_offset(w.act, k, lane)];
    } else {
      const uint8_t* blk = base + (size_t)b * Q4_1_TILE_BLOCK;
      const float d = half_to_float(((const uint16_t*)blk)[lane]), m = half_to_float(((const uint16_t*)blk)[16 + lane]);
      for (int k = 0; k < 16; ++k) {
        const uint8_t byte = blk[Q4_1_QS + quant_offset(w.act, k, lane)];
        out[b * SSK_QK + k] = d * (float)(byte & 0x0F) + m;
        out[b * SSK_QK + 16 + k] = d * (float)(byte >> 4) + m;
      }
    }
  }
}

void to_bf16(const float* x, int n, uint16_t* out) {
  for (int i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &x[i], sizeof bits);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN stays a (quiet) NaN
      out[i] = (uint16_t)((bits >> 16) | 0x0040u);
    } else {  // nearest, ties to even, in integer arithmetic: the same on every build (and as torch rounds)
      out[i] = (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    }
  }
}
