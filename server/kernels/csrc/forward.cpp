// The C ABI: context (thread pool + scratch), the whole decoder forward of one step, test entry points.
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <vector>

#include "internal.h"
#include "simd.h"

namespace {

struct Ctx {
  explicit Ctx(int threads) : pool(threads) {}
  Pool pool;
  std::vector<float> f32;   // float scratch
  std::vector<float> sums;  // block sums of the current GEMM input rows (Q4_1)
  std::vector<float> gemm_scratch;  // GEMM inputs, interleaved
};

template <class T>
T* grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

bool valid_part(const ssk_matrix& w) {
  int values = SSK_QK, bytes = 0;
  block_geometry(w.format, &values, &bytes);
  const bool known = w.format >= SSK_F32 && w.format <= SSK_Q3_K;
  return w.data && w.n > 0 && w.n % SSK_NR == 0 && w.k > 0 && w.k % SSK_QK == 0 && w.k % 16 == 0 && known &&
         w.k % (values ? values : SSK_QK) == 0 &&
         (w.act == SSK_ACT_F32 || (w.act == SSK_ACT_I8 && i8_takes(w.format)));
}

// Every part valid, with the first part's k; at most 8 parts (q, k, v or gate, up, each maybe split).
bool valid_matrix(const ssk_matrix& w) {
  int parts = 0;
  for (const ssk_matrix* p = &w; p; p = p->next)
    if (!valid_part(*p) || p->k != w.k || ++parts > 8) return false;
  return true;
}

// Run fn on each row, then make the row ready as input of w (its block sums, for Q4_1).
template <class RowFn>
void rows_then_prepare(Pool& pool, int rows, const ssk_matrix& w, const float* x, int k, float* sums, RowFn fn) {
  parallel(pool, [&](int t, int n) {
    int64_t begin, end;
    Pool::range(rows, t, n, &begin, &end);
    for (int64_t i = begin; i < end; ++i) {
      fn((int)i);
      if (chain_needs_sums(w)) block_sums(x + (size_t)i * k, k, sums + (size_t)i * (k / SSK_QK));
    }
  });
}

size_t kv_bytes(const ssk_step& st) { return st.kv_dtype == SSK_KV_BF16 ? sizeof(uint16_t) : sizeof(float); }

// A row's D keys (or values) into its cache at element offset off, in the cache's type.
void store_kv(const ssk_step& st, void* cache, size_t off, const float* x, int D) {
  if (st.kv_dtype == SSK_KV_BF16) {
    to_bf16(x, D, (uint16_t*)cache + off);
  } else {
    std::memcpy((float*)cache + off, x, D * sizeof(float));
  }
}

bool valid_kv(const ssk_step& st) { return st.kv_dtype == SSK_KV_F32 || st.kv_dtype == SSK_KV_BF16; }

void attention_layer(Pool& pool, const ssk_model& md, const ssk_step& st, int layer, const float* q, int ldq,
                     float* out) {
  const int D = md.head_dim, Hq = md.n_heads, Hkv = md.n_kv_heads, group = md.n_heads / md.n_kv_heads;
  const int window = md.layers ? md.layers[layer].window : 0;
  // Work items: (row, kv head) with the whole group of query heads, or (row, query head) when there are too
  // few rows to keep every thread busy. Either way each head's arithmetic is the same.
  const int per_item = (int64_t)st.n_rows * Hkv >= 4 * pool.size() ? attention_heads_per_item(group) : 1;
  const int items_per_row = Hq / per_item;
  parallel(pool, [&](int t, int n) {
    int64_t begin, end;
    Pool::range((int64_t)st.n_rows * items_per_row, t, n, &begin, &end);
    for (int64_t item = begin; item < end; ++item) {
      const int i = (int)(item / items_per_row), h0 = (int)(item % items_per_row) * per_item, kvh = h0 / group;
      const int seg = st.row_segment[i], pos = st.positions[i];
      const size_t cap = (size_t)st.seg_capacity[seg];
      const size_t off = (((size_t)layer * Hkv + kvh) * cap) * D * kv_bytes(st);
      AttnGroup r{q + (size_t)i * ldq + (size_t)h0 * D,
                  (const char*)st.seg_keys[seg] + off,
                  (const char*)st.seg_values[seg] + off,
                  st.kv_dtype == SSK_KV_BF16,
                  pos,
                  window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0,
                  per_item,
                  out + (size_t)i * Hq * D + (size_t)h0 * D};
      attention_group(r, D, md.attn_block, md.attn_scale, md.attn_softcap);
    }
  });
}

bool valid_head_dim(int d) {
  const int c = d / 16;
  return d % 16 == 0 && ((c >= 1 && c <= 8) || c == 10 || c == 12 || c == 16);  // attention_row's cases
}

// false, with the reason in why
bool refuse(char* why, int len, const char* fmt, ...) {
  if (why && len > 0) {
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(why, (size_t)len, fmt, args);
    va_end(args);
  }
  return false;
}

bool valid_attention(const ssk_model& md, char* why, int len) {
  if (!valid_head_dim(md.head_dim))
    return refuse(why, len, "head_dim %d (the kernels' attention supports 16, 32, 48, 64, 80, 96, 112, 128, 160, "
                  "192, 256)", md.head_dim);
  if (md.n_kv_heads < 1 || md.n_heads < 1 || md.n_heads % md.n_kv_heads)
    return refuse(why, len, "%d query heads over %d key/value heads (must be a multiple)", md.n_heads, md.n_kv_heads);
  if (md.attn_block < 1 || md.attn_block > 256) return refuse(why, len, "attention block %d", md.attn_block);
  if (!std::isfinite(md.attn_scale) || !std::isfinite(md.attn_softcap) || md.attn_softcap < 0)
    return refuse(why, len, "attention scale %g / soft cap %g", md.attn_scale, md.attn_softcap);
  return true;
}

bool valid_layer_options(const ssk_model& md, const ssk_layer& L, int l, char* why, int len) {
  if (L.window < 0) return refuse(why, len, "layer %d: window %d", l, L.window);
  if (L.rope < -1 || L.rope >= md.n_ropes) return refuse(why, len, "layer %d: rope %d of %d", l, L.rope, md.n_ropes);
  return true;
}

bool valid_shapes(const ssk_model& md, char* why, int len) {
  if (!valid_attention(md, why, len)) return false;
  if (md.hidden < 32 || md.hidden % 32)
    return refuse(why, len, "hidden size %d (the kernels need a multiple of 32)", md.hidden);
  if (md.inter < 32 || md.inter % 32)
    return refuse(why, len, "intermediate size %d (the kernels need a multiple of 32)", md.inter);
  if ((md.n_heads * md.head_dim) % 32)
    return refuse(why, len, "%d heads x head_dim %d (the kernels need a multiple of 32)", md.n_heads, md.head_dim);
  if (md.n_layers < 1 || md.vocab < 1 || md.max_context < 1)
    return refuse(why, len, "%d layers, vocabulary %d, context %d", md.n_layers, md.vocab, md.max_context);
  if (md.activation != SSK_SILU && md.activation != SSK_GELU_TANH)
    return refuse(why, len, "activation code %d", md.activation);
  if (!std::isfinite(md.embed_scale) || !std::isfinite(md.final_softcap) || md.final_softcap < 0)
    return refuse(why, len, "embedding scale %g / final soft cap %g", md.embed_scale, md.final_softcap);
  if (md.n_ropes < 0 || (md.n_ropes > 0 && !md.ropes)) return refuse(why, len, "%d rope tables", md.n_ropes);
  for (int i = 0; i < md.n_ropes; ++i) {
    const ssk_rope& r = md.ropes[i];
    if (r.rotary_dim < 2 || r.rotary_dim % 2 || r.rotary_dim > md.head_dim)
      return refuse(why, len, "rotary dims %d of head_dim %d", r.rotary_dim, md.head_dim);
  }
  if (md.layers)
    for (int l = 0; l < md.n_layers; ++l)
      if (!valid_layer_options(md, md.layers[l], l, why, len)) return false;
  return true;
}

bool matrix_is(const ssk_matrix& w, int n, int k, const char* name, int l, char* why, int len) {
  if (!valid_matrix(w)) return refuse(why, len, "layer %d: %s: not a packed matrix the kernels take", l, name);
  if (matrix_rows(w) != n || w.k != k)
    return refuse(why, len, "layer %d: %s is [%d, %d], expected [%d, %d]", l, name, matrix_rows(w), w.k, n, k);
  return true;
}

bool valid_weights(const ssk_model& md, char* why, int len) {
  const int H = md.hidden, D = md.head_dim, qw = md.n_heads * D, qkv = qw + 2 * md.n_kv_heads * D;
  const int vocab_rows = (md.vocab + SSK_NR - 1) / SSK_NR * SSK_NR;
  if (!md.layers || !md.norm_final) return refuse(why, len, "no layers or final norm");
  if (!matrix_is(md.embed, vocab_rows, H, "embed", -1, why, len)) return false;
  if (!matrix_is(md.lm_head, vocab_rows, H, "lm_head", -1, why, len)) return false;
  if (md.embed.next || md.lm_head.next) return refuse(why, len, "the embedding and lm_head are one part each");
  for (int i = 0; i < md.n_ropes; ++i)
    if (!md.ropes[i].cos || !md.ropes[i].sin) return refuse(why, len, "rope %d has no tables", i);
  for (int l = 0; l < md.n_layers; ++l) {
    const ssk_layer& L = md.layers[l];
    if (!matrix_is(L.qkv, qkv, H, "qkv", l, why, len) || !matrix_is(L.o, H, qw, "o", l, why, len) ||
        !matrix_is(L.gate_up, 2 * md.inter, H, "gate_up", l, why, len) ||
        !matrix_is(L.down, H, md.inter, "down", l, why, len))
      return false;
    if (!L.norm_in || !L.norm_post || (!L.q_norm) != (!L.k_norm) || (!L.attn_out_norm) != (!L.mlp_out_norm))
      return refuse(why, len, "layer %d: missing norm weights", l);
  }
  return true;
}

bool valid_model(const ssk_model& md, char* why = nullptr, int len = 0) {
  return valid_shapes(md, why, len) && valid_weights(md, why, len);
}

// x[k] += (RMSNorm(p) with weight norm, or p itself without one), for one row of H
void add_residual(float* x, float* p, const float* norm, int H, float eps) {
  if (norm) rmsnorm_row(p, norm, H, eps, p);  // the sandwich norm of Gemma 2/3 (in place: p is used once)
  for (int k = 0; k < H; k += 16) v_store(x + k, v_add(v_load(x + k), v_load(p + k)));
}

// qk-norm and RoPE of one row's heads, then its keys and values into its cache
void prepare_row_kv(const ssk_model& md, const ssk_step& st, const ssk_layer& L, int layer, int i, float* row) {
  const int D = md.head_dim, q_width = md.n_heads * D, kv_width = md.n_kv_heads * D;
  const int pos = st.positions[i], seg = st.row_segment[i];
  if (L.q_norm) {
    for (int h = 0; h < md.n_heads; ++h) rmsnorm_row(row + (size_t)h * D, L.q_norm, D, md.eps, row + (size_t)h * D);
    for (int h = 0; h < md.n_kv_heads; ++h) {
      float* k = row + q_width + (size_t)h * D;
      rmsnorm_row(k, L.k_norm, D, md.eps, k);
    }
  }
  if (L.rope >= 0) {
    const ssk_rope& rp = md.ropes[L.rope];
    const float* cs = rp.cos + (size_t)pos * rp.rotary_dim;
    const float* sn = rp.sin + (size_t)pos * rp.rotary_dim;
    rope_heads(row, md.n_heads, D, rp.rotary_dim, cs, sn);
    rope_heads(row + q_width, md.n_kv_heads, D, rp.rotary_dim, cs, sn);
  }
  const size_t cap = (size_t)st.seg_capacity[seg];
  for (int h = 0; h < md.n_kv_heads; ++h) {
    const size_t off = ((((size_t)layer * md.n_kv_heads + h) * cap) + pos) * D;
    store_kv(st, st.seg_keys[seg], off, row + q_width + (size_t)h * D, D);
    store_kv(st, st.seg_values[seg], off, row + q_width + kv_width + (size_t)h * D, D);
  }
}

}  // namespace

extern "C" {

int32_t ssk_abi_version(void) { return SSK_ABI_VERSION; }
const char* ssk_isa(void) { return SSK_ISA_NAME; }
void* ssk_create(int32_t n_threads) { return new Ctx(n_threads); }
void ssk_destroy(void* ctx) { delete static_cast<Ctx*>(ctx); }
int32_t ssk_threads(void* ctx) { return static_cast<Ctx*>(ctx)->pool.size(); }

int32_t ssk_dequant_row(const ssk_matrix* w, int32_t row, float* out) {
  if (!valid_matrix(*w) || w->next || row < 0 || row >= w->n) return -1;
  dequant_row(*w, row, out);
  return 0;
}

int32_t ssk_to_bf16(const float* x, int32_t n, uint16_t* out) {
  if (n < 0) return -1;
  to_bf16(x, n, out);
  return 0;
}

int32_t ssk_gemm(void* vctx, const ssk_matrix* w, int32_t m, const float* x, float* y) {
  Ctx& c = *static_cast<Ctx*>(vctx);
  if (!valid_matrix(*w) || m < 1) return -1;
  const int nb = w->k / SSK_QK;
  float* sums = grow(c.sums, (size_t)m * nb);
  for (int i = 0; i < m; ++i) block_sums(x + (size_t)i * w->k, w->k, sums + (size_t)i * nb);
  gemm(c.pool, *w, m, x, sums, y, matrix_rows(*w), grow(c.gemm_scratch, gemm_scratch_floats(m, w->k) + 1));
  return 0;
}

int32_t ssk_attention(void* vctx, const ssk_model* md, const ssk_step* st, int32_t layer, const float* q, float* out) {
  Ctx& c = *static_cast<Ctx*>(vctx);
  if (!valid_attention(*md, nullptr, 0) || !valid_kv(*st) || (md->layers && md->layers[layer].window < 0)) return -1;
  attention_layer(c.pool, *md, *st, layer, q, md->n_heads * md->head_dim, out);
  return 0;
}

int32_t ssk_check_model(const ssk_model* md, int32_t with_weights, char* why, int32_t why_len) {
  if (why && why_len > 0) why[0] = 0;
  return (with_weights ? valid_model(*md, why, why_len) : valid_shapes(*md, why, why_len)) ? 0 : -1;
}

int32_t ssk_forward(void* vctx, const ssk_model* mdp, const ssk_step* stp) {
  Ctx& c = *static_cast<Ctx*>(vctx);
  const ssk_model& md = *mdp;
  const ssk_step& st = *stp;
  if (!valid_model(md) || !valid_kv(st)) return -1;
  const int T = st.n_rows, R = st.n_logit_rows, H = md.hidden, I = md.inter, D = md.head_dim;
  const int q_width = md.n_heads * D, kv_width = md.n_kv_heads * D, qkv_width = q_width + 2 * kv_width;
  if (T < 1) return 0;
  // float scratch: hidden, normed x, projection out, attention out, ffn act, qkv or gate_up, final rows
  const size_t widest = (size_t)(qkv_width > 2 * I ? qkv_width : 2 * I);
  float* base = grow(c.f32, (size_t)T * (3 * H + q_width + I + widest) + (size_t)R * H + 64);
  float* hidden = base;
  float* xn = hidden + (size_t)T * H;
  float* proj = xn + (size_t)T * H;
  float* attn = proj + (size_t)T * H;           // [T, q_width]
  float* act = attn + (size_t)T * q_width;      // [T, I]
  float* wide = act + (size_t)T * I;            // [T, qkv_width] or [T, 2I]
  float* last = wide + (size_t)T * widest;      // [R, H]
  const int kmax = H > I ? (H > q_width ? H : q_width) : (I > q_width ? I : q_width);
  const int rows = T > R ? T : R;  // GEMM input rows: T, or R for the lm_head
  float* sums = grow(c.sums, (size_t)rows * (kmax / SSK_QK));
  float* scratch = grow(c.gemm_scratch, gemm_scratch_floats(rows, kmax) + 1);
  Pool& pool = c.pool;

  parallel(pool, [&](int t, int n) {
    int64_t begin, end;
    Pool::range(T, t, n, &begin, &end);
    const V16 scale = v_set1(md.embed_scale);
    for (int64_t i = begin; i < end; ++i) {
      float* h = hidden + (size_t)i * H;
      dequant_row(md.embed, st.token_ids[i], h);
      if (md.embed_scale != 1.0f)
        for (int k = 0; k < H; k += 16) v_store(h + k, v_mul(v_load(h + k), scale));
    }
  });
  for (int layer = 0; layer < md.n_layers; ++layer) {
    const ssk_layer& L = md.layers[layer];
    rows_then_prepare(pool, T, L.qkv, xn, H, sums, [&](int i) {
      float* h = hidden + (size_t)i * H;
      if (layer > 0) add_residual(h, proj + (size_t)i * H, md.layers[layer - 1].mlp_out_norm, H, md.eps);
      rmsnorm_row(h, L.norm_in, H, md.eps, xn + (size_t)i * H);
    });
    gemm(pool, L.qkv, T, xn, sums, wide, qkv_width, scratch);
    parallel(pool, [&](int t, int n) {
      int64_t begin, end;
      Pool::range(T, t, n, &begin, &end);
      for (int64_t i = begin; i < end; ++i) prepare_row_kv(md, st, L, layer, (int)i, wide + (size_t)i * qkv_width);
    });
    attention_layer(pool, md, st, layer, wide, qkv_width, attn);
    rows_then_prepare(pool, T, L.o, attn, q_width, sums, [](int) {});
    gemm(pool, L.o, T, attn, sums, proj, H, scratch);
    rows_then_prepare(pool, T, L.gate_up, xn, H, sums, [&](int i) {
      float* h = hidden + (size_t)i * H;
      add_residual(h, proj + (size_t)i * H, L.attn_out_norm, H, md.eps);
      rmsnorm_row(h, L.norm_post, H, md.eps, xn + (size_t)i * H);
    });
    gemm(pool, L.gate_up, T, xn, sums, wide, 2 * I, scratch);
    rows_then_prepare(pool, T, L.down, act, I, sums, [&](int i) {
      const float* g = wide + (size_t)i * 2 * I;
      if (md.activation == SSK_GELU_TANH) {
        gelu_tanh_mul_row(g, g + I, I, act + (size_t)i * I);
      } else {
        silu_mul_row(g, g + I, I, act + (size_t)i * I);
      }
    });
    gemm(pool, L.down, T, act, sums, proj, H, scratch);
  }
  if (R < 1) return 0;
  const float* mlp_out_norm = md.layers[md.n_layers - 1].mlp_out_norm;
  rows_then_prepare(pool, R, md.lm_head, xn, H, sums, [&](int r) {
    const int i = st.logit_rows[r];
    float* x = last + (size_t)r * H;  // the last residual add, here: a row may be asked for twice
    if (mlp_out_norm) {
      rmsnorm_row(proj + (size_t)i * H, mlp_out_norm, H, md.eps, x);
    } else {
      std::memcpy(x, proj + (size_t)i * H, (size_t)H * sizeof(float));
    }
    add_residual(x, hidden + (size_t)i * H, nullptr, H, md.eps);  // p + h: float addition commutes
    rmsnorm_row(x, md.norm_final, H, md.eps, xn + (size_t)r * H);
  });
  const int ld = md.lm_head.n;  // padded columns: zero weights, dropped by the caller
  gemm(pool, md.lm_head, R, xn, sums, st.logits, ld, scratch);
  if (md.final_softcap != 0.0f) {
    parallel(pool, [&](int t, int n) {
      int64_t begin, end;
      Pool::range(R, t, n, &begin, &end);
      for (int64_t r = begin; r < end; ++r) softcap_row(st.logits + (size_t)r * ld, ld, md.final_softcap);
    });
  }
  return 0;
}

}  // extern "C"
