// The C ABI: context (thread pool + scratch), the whole decoder forward of one step, test entry points.
#include <cmath>
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

bool valid_matrix(const ssk_matrix& w) {
  return w.data && w.n > 0 && w.n % SSK_NR == 0 && w.k > 0 && w.k % SSK_QK == 0 && w.k % 16 == 0 &&
         (w.format == SSK_F32 || w.format == SSK_Q8_0 || w.format == SSK_Q4_1) &&
         (w.act == SSK_ACT_F32 || (w.act == SSK_ACT_I8 && w.format != SSK_F32));
}

// Run fn on each row, then make the row ready as input of w (its block sums, for Q4_1).
template <class RowFn>
void rows_then_prepare(Pool& pool, int rows, const ssk_matrix& w, const float* x, int k, float* sums, RowFn fn) {
  parallel(pool, [&](int t, int n) {
    int64_t begin, end;
    Pool::range(rows, t, n, &begin, &end);
    for (int64_t i = begin; i < end; ++i) {
      fn((int)i);
      if (w.format == SSK_Q4_1) block_sums(x + (size_t)i * k, k, sums + (size_t)i * (k / SSK_QK));
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
  const float scale = 1.0f / std::sqrt((float)D);
  // Work items: (row, kv head) with the whole group of query heads, or (row, query head) when there are too
  // few rows to keep every thread busy. Either way each head's arithmetic is the same.
  const int per_item = (int64_t)st.n_rows * Hkv >= 4 * pool.size() ? attention_heads_per_item(group) : 1;
  const int items_per_row = Hq / per_item;
  parallel(pool, [&](int t, int n) {
    int64_t begin, end;
    Pool::range((int64_t)st.n_rows * items_per_row, t, n, &begin, &end);
    for (int64_t item = begin; item < end; ++item) {
      const int i = (int)(item / items_per_row), h0 = (int)(item % items_per_row) * per_item, kvh = h0 / group;
      const int seg = st.row_segment[i];
      const size_t cap = (size_t)st.seg_capacity[seg];
      const size_t off = (((size_t)layer * Hkv + kvh) * cap) * D * kv_bytes(st);
      AttnGroup r{q + (size_t)i * ldq + (size_t)h0 * D,
                  (const char*)st.seg_keys[seg] + off,
                  (const char*)st.seg_values[seg] + off,
                  st.kv_dtype == SSK_KV_BF16,
                  st.positions[i],
                  per_item,
                  out + (size_t)i * Hq * D + (size_t)h0 * D};
      attention_group(r, D, md.attn_block, scale);
    }
  });
}

bool valid_head_dim(int d) {
  const int c = d / 16;
  return d % 16 == 0 && ((c >= 1 && c <= 8) || c == 10 || c == 12 || c == 16);  // attention_row's cases
}

bool valid_model(const ssk_model& md) {
  if (!valid_head_dim(md.head_dim) || md.hidden % 16 || md.hidden > 4096 || md.inter % 16 || md.attn_block < 1 ||
      md.attn_block > 256 || md.n_kv_heads < 1 || md.n_heads % md.n_kv_heads)
    return false;
  if (!valid_matrix(md.embed) || !valid_matrix(md.lm_head)) return false;
  for (int l = 0; l < md.n_layers; ++l) {
    const ssk_layer& L = md.layers[l];
    if (!valid_matrix(L.qkv) || !valid_matrix(L.o) || !valid_matrix(L.gate_up) || !valid_matrix(L.down)) return false;
  }
  return true;
}

}  // namespace

extern "C" {

int32_t ssk_abi_version(void) { return SSK_ABI_VERSION; }
const char* ssk_isa(void) { return SSK_ISA_NAME; }
void* ssk_create(int32_t n_threads) { return new Ctx(n_threads); }
void ssk_destroy(void* ctx) { delete static_cast<Ctx*>(ctx); }
int32_t ssk_threads(void* ctx) { return static_cast<Ctx*>(ctx)->pool.size(); }

int32_t ssk_dequant_row(const ssk_matrix* w, int32_t row, float* out) {
  if (!valid_matrix(*w) || row < 0 || row >= w->n) return -1;
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
  gemm(c.pool, *w, m, x, sums, y, w->n, grow(c.gemm_scratch, gemm_scratch_floats(m, w->k) + 1));
  return 0;
}

int32_t ssk_attention(void* vctx, const ssk_model* md, const ssk_step* st, int32_t layer, const float* q, float* out) {
  Ctx& c = *static_cast<Ctx*>(vctx);
  if (!valid_head_dim(md->head_dim) || md->attn_block < 1 || md->attn_block > 256 || md->n_kv_heads < 1 ||
      md->n_heads % md->n_kv_heads || !valid_kv(*st))
    return -1;
  attention_layer(c.pool, *md, *st, layer, q, md->n_heads * md->head_dim, out);
  return 0;
}

int32_t ssk_forward(void* vctx, const ssk_model* mdp, const ssk_step* stp) {
  Ctx& c = *static_cast<Ctx*>(vctx);
  const ssk_model& md = *mdp;
  const ssk_step& st = *stp;
  if (!valid_model(md) || !valid_kv(st)) return -1;
  const int T = st.n_rows, H = md.hidden, I = md.inter, D = md.head_dim;
  const int q_width = md.n_heads * D, kv_width = md.n_kv_heads * D, qkv_width = q_width + 2 * kv_width;
  if (T < 1) return 0;
  // float scratch: hidden, normed x, qkv, attention out / ffn act, projection out, gate_up
  const size_t widest = (size_t)(qkv_width > 2 * I ? qkv_width : 2 * I);
  float* base = grow(c.f32, (size_t)T * (3 * H + q_width + I + widest) + 64);
  float* hidden = base;
  float* xn = hidden + (size_t)T * H;
  float* proj = xn + (size_t)T * H;
  float* attn = proj + (size_t)T * H;           // [T, q_width]
  float* act = attn + (size_t)T * q_width;      // [T, I]
  float* wide = act + (size_t)T * I;            // [T, qkv_width] or [T, 2I]
  const int kmax = H > I ? (H > q_width ? H : q_width) : (I > q_width ? I : q_width);
  float* sums = grow(c.sums, (size_t)T * (kmax / SSK_QK));
  float* scratch = grow(c.gemm_scratch, gemm_scratch_floats(T, kmax) + 1);
  Pool& pool = c.pool;

  parallel(pool, [&](int t, int n) {
    int64_t begin, end;
    Pool::range(T, t, n, &begin, &end);
    for (int64_t i = begin; i < end; ++i) dequant_row(md.embed, st.token_ids[i], hidden + (size_t)i * H);
  });
  for (int layer = 0; layer < md.n_layers; ++layer) {
    const ssk_layer& L = md.layers[layer];
    rows_then_prepare(pool, T, L.qkv, xn, H, sums, [&](int i) {
      if (layer > 0) {  // the previous layer's MLP residual
        float* h = hidden + (size_t)i * H;
        const float* p = proj + (size_t)i * H;
        for (int k = 0; k < H; k += 16) v_store(h + k, v_add(v_load(h + k), v_load(p + k)));
      }
      rmsnorm_row(hidden + (size_t)i * H, L.norm_in, H, md.eps, xn + (size_t)i * H);
    });
    gemm(pool, L.qkv, T, xn, sums, wide, qkv_width, scratch);
    parallel(pool, [&](int t, int n) {  // RoPE, then the row's keys and values into its cache
      int64_t begin, end;
      Pool::range(T, t, n, &begin, &end);
      for (int64_t i = begin; i < end; ++i) {
        float* row = wide + (size_t)i * qkv_width;
        const int pos = st.positions[i], seg = st.row_segment[i];
        const float* cs = md.rope_cos + (size_t)pos * D;
        const float* sn = md.rope_sin + (size_t)pos * D;
        rope_heads(row, md.n_heads, D, cs, sn);
        rope_heads(row + q_width, md.n_kv_heads, D, cs, sn);
        const size_t cap = (size_t)st.seg_capacity[seg];
        for (int h = 0; h < md.n_kv_heads; ++h) {
          const size_t off = ((((size_t)layer * md.n_kv_heads + h) * cap) + pos) * D;
          store_kv(st, st.seg_keys[seg], off, row + q_width + (size_t)h * D, D);
          store_kv(st, st.seg_values[seg], off, row + q_width + kv_width + (size_t)h * D, D);
        }
      }
    });
    attention_layer(pool, md, st, layer, wide, qkv_width, attn);
    rows_then_prepare(pool, T, L.o, attn, q_width, sums, [](int) {});
    gemm(pool, L.o, T, attn, sums, proj, H, scratch);
    rows_then_prepare(pool, T, L.gate_up, xn, H, sums, [&](int i) {
      float* h = hidden + (size_t)i * H;
      const float* p = proj + (size_t)i * H;
      for (int k = 0; k < H; k += 16) v_store(h + k, v_add(v_load(h + k), v_load(p + k)));
      rmsnorm_row(h, L.norm_post, H, md.eps, xn + (size_t)i * H);
    });
    gemm(pool, L.gate_up, T, xn, sums, wide, 2 * I, scratch);
    rows_then_prepare(pool, T, L.down, act, I, sums, [&](int i) {
      silu_mul_row(wide + (size_t)i * 2 * I, wide + (size_t)i * 2 * I + I, I, act + (size_t)i * I);
    });
    gemm(pool, L.down, T, act, sums, proj, H, scratch);
  }
  const int R = st.n_logit_rows;
  if (R < 1) return 0;
  rows_then_prepare(pool, R, md.lm_head, xn, H, sums, [&](int r) {
    const int i = st.logit_rows[r];
    float* h = hidden + (size_t)i * H;
    const float* p = proj + (size_t)i * H;
    float last[4096];
    for (int k = 0; k < H; k += 16) v_store(last + k, v_add(v_load(h + k), v_load(p + k)));
    rmsnorm_row(last, md.norm_final, H, md.eps, xn + (size_t)r * H);
  });
  gemm(pool, md.lm_head, R, xn, sums, st.logits, md.vocab, scratch);
  return 0;
}

}  // extern "C"
