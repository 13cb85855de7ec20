/* Reads the llama-family hyperparameters and tensor directory of a GGUF
 * file and checks every shape, so the forward pass can trust them. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model.h"
#include "engine/quant.h"

typedef struct {
    model *m;
    const gguf_file *f;
    char *err;
    size_t errlen;
    int failed;
} loader;

static void fail(loader *L, const char *fmt, ...)
{
    if (L->failed)
        return;
    L->failed = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(L->err, L->errlen, fmt, ap);
    va_end(ap);
}

static int key_u32(loader *L, const char *suffix, int required, int def)
{
    char key[128];
    uint32_t v;
    snprintf(key, sizeof key, "%s.%s", L->m->arch, suffix);
    if (gguf_get_u32(L->f, key, &v) == 0) {
        if (v > (1u << 30)) {
            fail(L, "model: %s = %u is out of range", key, v);
            return def;
        }
        return (int)v;
    }
    if (required)
        fail(L, "model: missing required key %s", key);
    return def;
}

static float key_f32(loader *L, const char *suffix, float def)
{
    char key[128];
    float v;
    snprintf(key, sizeof key, "%s.%s", L->m->arch, suffix);
    return gguf_get_f32(L->f, key, &v) == 0 ? v : def;
}

static const gguf_tensor *tensor(loader *L, const char *name, int required)
{
    const gguf_tensor *t = gguf_tensor_find(L->f, name);
    if (!t && required)
        fail(L, "model: missing tensor %s", name);
    return t;
}

/* A tensor's data as `rows` rows of `cols` values (its shape checked). */
static wmat tensor_rows(const gguf_tensor *t, int cols, int rows)
{
    wmat w = {t->data, t->type, rows, cols, ggml_row_size(t->type, cols)};
    return w;
}

/* A matrix of `rows` outputs over `cols` inputs (GGUF dims [cols, rows]). */
static wmat matrix(loader *L, const char *name, int cols, int rows, int required)
{
    wmat w = {0};
    const gguf_tensor *t = tensor(L, name, required);
    if (!t)
        return w;
    if (t->n_dims != 2 || t->ne[0] != (uint64_t)cols || t->ne[1] != (uint64_t)rows) {
        fail(L, "model: tensor %s has shape [%llu, %llu], expected [%d, %d]", name,
             (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], cols, rows);
        return w;
    }
    return tensor_rows(t, cols, rows);
}

/* `n` matrices of `rows` x `cols` stacked (GGUF dims [cols, rows, n]: a
 * mixture of experts' weights), as one matrix of n * rows rows. */
static wmat stacked(loader *L, const char *name, int cols, int rows, int n)
{
    wmat w = {0};
    const gguf_tensor *t = tensor(L, name, 1);
    if (!t)
        return w;
    if (t->n_dims != 3 || t->ne[0] != (uint64_t)cols || t->ne[1] != (uint64_t)rows || t->ne[2] != (uint64_t)n) {
        fail(L, "model: tensor %s has shape [%llu, %llu, %llu], expected [%d, %d, %d]", name,
             (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], (unsigned long long)t->ne[2], cols, rows,
             n);
        return w;
    }
    return tensor_rows(t, cols, rows * n);
}

/* A vector of n floats; dequantized into owned memory unless it is F32. */
static const float *vector(loader *L, const char *name, int n, int required)
{
    const gguf_tensor *t = tensor(L, name, required);
    if (!t)
        return NULL;
    if (t->ne[0] != (uint64_t)n || t->ne[1] != 1 || t->ne[2] != 1 || t->ne[3] != 1) {
        fail(L, "model: tensor %s has %llu elements, expected %d", name,
             (unsigned long long)t->ne[0], n);
        return NULL;
    }
    if (t->type == GGML_F32)
        return t->data;
    float *v = malloc((size_t)n * sizeof *v);
    float **o = realloc(L->m->owned, (size_t)(L->m->n_owned + 1) * sizeof *o);
    if (!v || !o) {
        free(v);
        if (o)
            L->m->owned = o;
        fail(L, "model: out of memory");
        return NULL;
    }
    L->m->owned = o;
    o[L->m->n_owned++] = v;
    dequant_row(t->type, t->data, v, n);
    return v;
}

static void layer_name(char *buf, size_t n, int l, const char *what)
{
    snprintf(buf, n, "blk.%d.%s", l, what);
}

/* A string from the file, fit to quote in a one-line message: control
 * bytes become '?', and it is cut at n - 1 bytes. */
static const char *shown(const char *s, char *buf, size_t n)
{
    size_t k = 0;
    for (; s[k] && k < n - 1; k++)
        buf[k] = (unsigned char)s[k] < 0x20 || s[k] == 0x7f ? '?' : s[k];
    buf[k] = 0;
    return buf;
}

/* Per-pair RoPE divisors (rope_dim/2 of them) if the file has them. */
static const float *divisors(loader *L, const char *name, int n)
{
    const float *v = vector(L, name, n, 0);
    for (int i = 0; v && i < n; i++)
        if (!(v[i] >= 1e-6f && v[i] <= 1e6f)) {
            fail(L, "model: %s[%d] = %g is not a divisor in [1e-6, 1e6]", name, i, v[i]);
            return NULL;
        }
    return v;
}

/* rope.scaling.* as llama.cpp reads them: no type key means linear by
 * rope.scaling.factor (or the older rope.scale_linear), which is no
 * scaling when that is absent too. */
static int rope_scaling_load(loader *L)
{
    model *m = L->m;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", m->arch);
    const char *type = gguf_get_str(L->f, key);
    if (!type || !strcmp(type, "linear"))
        m->rope_scaling = ROPE_SCALING_LINEAR;
    else if (!strcmp(type, "none"))
        m->rope_scaling = ROPE_SCALING_NONE;
    else if (!strcmp(type, "yarn"))
        m->rope_scaling = ROPE_SCALING_YARN;
    else {
        char b[64];
        snprintf(L->err, L->errlen, "model: rope scaling '%s' is not supported (none, linear, yarn)",
                 shown(type, b, sizeof b));
        return -1;
    }
    m->rope_factor = key_f32(L, "rope.scaling.factor", key_f32(L, "rope.scale_linear", 0.0f));
    if (m->rope_factor == 0.0f || m->rope_scaling == ROPE_SCALING_NONE)
        m->rope_factor = 1.0f;
    m->rope_attn_factor = key_f32(L, "rope.scaling.attn_factor", 1.0f);
    m->rope_orig_ctx = key_u32(L, "rope.scaling.original_context_length", 0, m->n_ctx);
    m->yarn_beta_fast = key_f32(L, "rope.scaling.yarn_beta_fast", 32.0f);
    m->yarn_beta_slow = key_f32(L, "rope.scaling.yarn_beta_slow", 1.0f);
    /* bounds that keep every angle and the cos/sin scale finite */
    if (!(m->rope_base > 1.0f && m->rope_base <= 1e30f) || !(m->rope_factor >= 1e-6f && m->rope_factor <= 1e6f) ||
        !(m->rope_attn_factor > 0.0f && m->rope_attn_factor <= 1e3f) || m->rope_orig_ctx < 1 ||
        !(m->yarn_beta_fast > 0.0f && m->yarn_beta_fast <= 1e6f) ||
        !(m->yarn_beta_slow > 0.0f && m->yarn_beta_slow <= 1e6f)) {
        snprintf(L->err, L->errlen, "model: rope base %g, scaling factor %g, attention factor %g, original context %d, "
                 "yarn betas %g/%g are not usable", m->rope_base, m->rope_factor, m->rope_attn_factor,
                 m->rope_orig_ctx, m->yarn_beta_fast, m->yarn_beta_slow);
        return -1;
    }
    return L->failed ? -1 : 0;
}

/* Whether layer l slides its window: the file's per-layer list, else
 * every layer but the last of each `pattern` (0: all of them). */
static int swa_layer(const gguf_kv *kv, int pattern, int l)
{
    if (kv && kv->type == GGUF_T_ARRAY)     /* integers or bools, checked */
        return ((const uint64_t *)kv->arr)[l] != 0;
    return pattern == 0 || l % pattern < pattern - 1;
}

/* Gemma's differences from Llama, as llama.cpp reads them: scaled
 * embeddings, GELU, post-norms (Gemma 2 and 3), sliding-window layers
 * and soft caps.  Gemma's RMSNorm multiplies by (1 + w): the converter
 * stores 1 + w, so the norms are plain here. */
static int gemma_load(loader *L)
{
    model *m = L->m;
    int g1 = !strcmp(m->arch, "gemma"), g2 = !strcmp(m->arch, "gemma2"), g3 = !strcmp(m->arch, "gemma3");
    m->embd_scale = 1.0f;
    m->attn_scale = 1.0f / sqrtf((float)m->head_dim);
    m->rope_base_swa = m->rope_base;
    m->rope_swa_scaled = 1;
    if (!g1 && !g2 && !g3)
        return 0;
    m->embd_scale = sqrtf((float)m->n_embd);
    m->ffn_gelu = 1;
    /* the 27B models scale by their width per head, not the head dim */
    if ((g2 && m->n_layers == 46) || (g3 && m->n_layers == 62))
        m->attn_scale = 1.0f / sqrtf((float)(m->n_embd / m->n_heads));
    if (g1)
        return 0;
    m->attn_softcap = g2 ? key_f32(L, "attn_logit_softcapping", 50.0f) : 0.0f;
    m->logit_softcap = key_f32(L, "final_logit_softcapping", g2 ? 30.0f : 0.0f);
    m->swa_window = key_u32(L, "attention.sliding_window", 0, g2 ? 4096 : 0);
    m->rope_base_swa = key_f32(L, "rope.freq_base_swa", g2 ? m->rope_base : 10000.0f);
    m->rope_swa_scaled = g2;
    if (!(m->attn_softcap >= 0.0f && m->attn_softcap <= 1e6f) || !(m->logit_softcap >= 0.0f && m->logit_softcap <= 1e6f) ||
        !(m->rope_base_swa > 1.0f && m->rope_base_swa <= 1e30f)) {
        snprintf(L->err, L->errlen, "model: soft caps %g/%g or sliding-window rope base %g are not usable",
                 m->attn_softcap, m->logit_softcap, m->rope_base_swa);
        return -1;
    }
    return L->failed ? -1 : 0;
}

/* A mixture of experts, as llama.cpp reads Mixtral (llama with expert
 * tensors) and Qwen3-MoE: softmax routing over the best n_expert_used,
 * no shared experts. */
static int moe_load(loader *L)
{
    model *m = L->m;
    m->n_expert = key_u32(L, "expert_count", 0, 0);
    if (!m->n_expert)
        return L->failed ? -1 : 0;
    m->n_expert_used = key_u32(L, "expert_used_count", 1, 0);
    m->n_ff_exp = key_u32(L, "expert_feed_forward_length", 0, m->n_ff);
    int shared = key_u32(L, "expert_shared_count", 0, 0);
    int gating = key_u32(L, "expert_gating_func", 0, 1);  /* llama.cpp: 1 softmax, 2 sigmoid */
    if (L->failed)
        return -1;
    if (m->n_expert > 1024 || m->n_expert_used < 1 || m->n_expert_used > m->n_expert || m->n_ff_exp < 1 ||
        (int64_t)m->n_expert * m->n_ff_exp > 1 << 30 || shared || gating != 1) {
        snprintf(L->err, L->errlen, "model: mixture of experts not supported (%d experts, %d used, width %d, "
                 "%d shared, gating %d): softmax routing without shared experts, at most 1024 experts",
                 m->n_expert, m->n_expert_used, m->n_ff_exp, shared, gating);
        return -1;
    }
    return 0;
}

float model_rope_table(const model *m, int n_ctx, int swa, float *freq)
{
    /* Phi-3's LongRoPE: its long divisors serve contexts past the
     * original one, the short ones the rest (llama.cpp's choice, by the
     * context served rather than by the sequence's length) */
    const float *div = m->rope_freq_factors;
    if (!div)
        div = n_ctx > m->rope_orig_ctx && m->rope_long_factors ? m->rope_long_factors : m->rope_short_factors;
    int half = m->rope_dim / 2;
    float fs = 1.0f / m->rope_factor, mscale = m->rope_attn_factor, base = m->rope_base;
    int yarn = m->rope_scaling == ROPE_SCALING_YARN;
    if (swa) {
        base = m->rope_base_swa;
        if (!m->rope_swa_scaled) {  /* Gemma 3's local layers: plain RoPE */
            div = NULL;
            fs = mscale = 1.0f;
            yarn = 0;
        }
    }
    float lo = 0, hi = 0;
    if (yarn) {
        /* YaRN: pairs that turn fewer than beta_slow times over the
         * original context are interpolated, more than beta_fast kept,
         * a linear ramp between; cos and sin grow by 0.1 ln(factor) + 1. */
        float lb = 2.0f * logf(base);
        lo = floorf(m->rope_dim * logf(m->rope_orig_ctx / (m->yarn_beta_fast * 2 * (float)M_PI)) / lb);
        hi = ceilf(m->rope_dim * logf(m->rope_orig_ctx / (m->yarn_beta_slow * 2 * (float)M_PI)) / lb);
        lo = fmaxf(0.0f, lo);
        hi = fminf((float)(m->rope_dim - 1), hi);
        if (m->rope_factor > 1.0f)
            mscale *= 0.1f * logf(m->rope_factor) + 1.0f;
    }
    for (int i = 0; i < half; i++) {
        float f = powf(base, -2.0f * (float)i / (float)m->rope_dim);
        if (div)
            f /= div[i];
        float s = fs;
        if (yarn) {
            float keep = 1.0f - fminf(1.0f, fmaxf(0.0f, (i - lo) / fmaxf(0.001f, hi - lo)));
            s = fs * (1.0f - keep) + keep;
        }
        freq[i] = f * s;
    }
    return mscale;
}

int model_load(model *m, const gguf_file *f, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    loader L = {m, f, err, errlen, 0};
    const char *arch = gguf_get_str(f, "general.architecture");
    if (!arch) {
        snprintf(err, errlen, "model: missing required key general.architecture");
        return -1;
    }
    static const char *const archs[] = {"llama", "qwen2", "qwen3", "qwen3moe", "mistral", "phi3", "gemma", "gemma2",
                                        "gemma3"};
    int known = 0;
    for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++)
        known |= !strcmp(arch, archs[i]);
    if (!known) {
        char b[64];
        snprintf(err, errlen, "model: architecture '%s' is not supported (llama, qwen2, qwen3, qwen3moe, mistral, "
                 "phi3, gemma, gemma2, gemma3)", shown(arch, b, sizeof b));
        return -1;
    }
    snprintf(m->arch, sizeof m->arch, "%s", arch);

    m->n_layers = key_u32(&L, "block_count", 1, 0);
    m->n_embd = key_u32(&L, "embedding_length", 1, 0);
    m->n_ff = key_u32(&L, "feed_forward_length", 1, 0);
    m->n_heads = key_u32(&L, "attention.head_count", 1, 0);
    m->n_kv_heads = key_u32(&L, "attention.head_count_kv", 0, m->n_heads);
    m->n_ctx = key_u32(&L, "context_length", 0, 2048);
    if (L.failed)
        return -1;
    if (m->n_layers < 1 || m->n_embd < 1 || m->n_ff < 1 || m->n_heads < 1 || m->n_kv_heads < 1 ||
        m->n_heads % m->n_kv_heads) {
        snprintf(err, errlen, "model: inconsistent shape (layers %d, embd %d, ff %d, heads %d, kv heads %d)",
                 m->n_layers, m->n_embd, m->n_ff, m->n_heads, m->n_kv_heads);
        return -1;
    }
    m->head_dim = key_u32(&L, "attention.key_length", 0, m->n_embd / m->n_heads);
    int vdim = key_u32(&L, "attention.value_length", 0, m->head_dim);
    if (m->head_dim < 2 || m->head_dim % 2 || vdim != m->head_dim || m->head_dim > 1024) {
        snprintf(err, errlen, "model: head dimension %d (value %d) is not supported", m->head_dim, vdim);
        return -1;
    }
    /* every layer has its tensors, and no product of the shape overflows
     * an int (each value alone is at most 2^30) */
    if ((uint64_t)m->n_layers > gguf_n_tensors(f) ||
        (int64_t)(m->n_heads + 2 * (int64_t)m->n_kv_heads) * m->head_dim > 1 << 30 ||
        2 * (int64_t)m->n_ff > 1 << 30) {
        snprintf(err, errlen, "model: shape too large for the file (layers %d, ff %d, heads %d, kv heads %d, head dim %d)",
                 m->n_layers, m->n_ff, m->n_heads, m->n_kv_heads, m->head_dim);
        return -1;
    }
    m->rope_dim = key_u32(&L, "rope.dimension_count", 0, m->head_dim);
    if (m->rope_dim < 0 || m->rope_dim > m->head_dim || m->rope_dim % 2) {
        snprintf(err, errlen, "model: rope.dimension_count %d does not fit head dim %d", m->rope_dim,
                 m->head_dim);
        return -1;
    }
    m->rope_base = key_f32(&L, "rope.freq_base", 10000.0f);
    if (rope_scaling_load(&L))
        return -1;
    m->eps = key_f32(&L, "attention.layer_norm_rms_epsilon", 1e-5f);
    if (gemma_load(&L))
        return -1;
    /* GGUF llama files rotate adjacent pairs (the converter permutes Q/K);
     * Qwen layouts rotate halves. */
    int neox = strcmp(arch, "llama") && strcmp(arch, "mistral");
    gguf_get_bool(f, "sparsed.rope.neox", &neox);
    m->rope_neox = neox;

    if (moe_load(&L))
        return -1;

    m->idx_dim = key_u32(&L, "attention.indexer.key_length", 0, 0);
    if (m->idx_dim) {
        m->idx_heads = key_u32(&L, "attention.indexer.head_count", 0, m->n_kv_heads);
        m->idx_top_k = key_u32(&L, "attention.indexer.top_k", 0, 16);
        m->idx_block = key_u32(&L, "attention.indexer.block_size", 0, 128);
        m->idx_local = key_u32(&L, "attention.indexer.local_blocks", 0, 1);
        m->idx_dense_layers = key_u32(&L, "attention.indexer.dense_layers", 0, 0);
        if ((int64_t)m->idx_heads * m->idx_dim > 1 << 30) {
            snprintf(err, errlen, "model: indexer shape too large (%d heads x %d)", m->idx_heads, m->idx_dim);
            return -1;
        }
        if (m->idx_heads != m->n_kv_heads || m->idx_dim % 2) {
            snprintf(err, errlen, "model: indexer needs one head per KV group (%d heads for %d groups) and an even key length",
                     m->idx_heads, m->n_kv_heads);
            return -1;
        }
    }

    const gguf_tensor *te = tensor(&L, "token_embd.weight", 1);
    if (L.failed)
        return -1;
    m->n_vocab = (int)te->ne[1];
    m->tok_embd = matrix(&L, "token_embd.weight", m->n_embd, m->n_vocab, 1);
    m->out_norm = vector(&L, "output_norm.weight", m->n_embd, 1);
    if (m->rope_dim >= 2) {
        m->rope_freq_factors = divisors(&L, "rope_freqs.weight", m->rope_dim / 2);
        m->rope_long_factors = divisors(&L, "rope_factors_long.weight", m->rope_dim / 2);
        m->rope_short_factors = divisors(&L, "rope_factors_short.weight", m->rope_dim / 2);
    }
    if (gguf_tensor_find(f, "output.weight"))
        m->output = matrix(&L, "output.weight", m->n_embd, m->n_vocab, 1);
    else
        m->output = m->tok_embd; /* tied embeddings */

    m->layers = calloc((size_t)m->n_layers, sizeof *m->layers);
    if (!m->layers) {
        snprintf(err, errlen, "model: out of memory");
        return -1;
    }
    int E = m->n_embd, D = m->head_dim, Hq = m->n_heads, Hkv = m->n_kv_heads;
    char nm[96];
    char swa_key[128];
    snprintf(swa_key, sizeof swa_key, "%s.attention.sliding_window_pattern", arch);
    const gguf_kv *swa_kv = gguf_find(f, swa_key);
    if (swa_kv && swa_kv->type == GGUF_T_ARRAY && (swa_kv->arr_n != (uint64_t)m->n_layers || swa_kv->arr_type == GGUF_T_STRING ||
                                                  swa_kv->arr_type == GGUF_T_ARRAY || swa_kv->arr_type == GGUF_T_F32 ||
                                                  swa_kv->arr_type == GGUF_T_F64)) {
        snprintf(err, errlen, "model: %s must list a flag for each of the %d layers", swa_key, m->n_layers);
        model_free(m);
        return -1;
    }
    int swa_pattern = key_u32(&L, "attention.sliding_window_pattern", 0, !strcmp(arch, "gemma2") ? 2 : 6);
    for (int l = 0; l < m->n_layers && !L.failed; l++) {
        layer_w *w = &m->layers[l];
#define NAME(s) (layer_name(nm, sizeof nm, l, s), nm)
        w->attn_norm = vector(&L, NAME("attn_norm.weight"), E, 1);
        w->ffn_norm = vector(&L, NAME("ffn_norm.weight"), E, 1);
        if (gguf_tensor_find(f, NAME("attn_qkv.weight"))) {
            /* fused: Q's rows, then K's, then V's */
            wmat qkv = matrix(&L, NAME("attn_qkv.weight"), E, (Hq + 2 * Hkv) * D, 1);
            w->q = wmat_rows(qkv, 0, Hq * D);
            w->k = wmat_rows(qkv, Hq * D, Hkv * D);
            w->v = wmat_rows(qkv, (Hq + Hkv) * D, Hkv * D);
            const float *b = vector(&L, NAME("attn_qkv.bias"), (Hq + 2 * Hkv) * D, 0);
            if (b) {
                w->q_bias = b;
                w->k_bias = b + Hq * D;
                w->v_bias = b + (Hq + Hkv) * D;
            }
        } else {
            w->q = matrix(&L, NAME("attn_q.weight"), E, Hq * D, 1);
            w->k = matrix(&L, NAME("attn_k.weight"), E, Hkv * D, 1);
            w->v = matrix(&L, NAME("attn_v.weight"), E, Hkv * D, 1);
        }
        w->o = matrix(&L, NAME("attn_output.weight"), Hq * D, E, 1);
        if (!w->q_bias) {
            w->q_bias = vector(&L, NAME("attn_q.bias"), Hq * D, 0);
            w->k_bias = vector(&L, NAME("attn_k.bias"), Hkv * D, 0);
            w->v_bias = vector(&L, NAME("attn_v.bias"), Hkv * D, 0);
        }
        w->q_norm = vector(&L, NAME("attn_q_norm.weight"), D, 0);
        w->k_norm = vector(&L, NAME("attn_k_norm.weight"), D, 0);
        w->attn_post_norm = vector(&L, NAME("post_attention_norm.weight"), E, 0);
        w->ffn_post_norm = vector(&L, NAME("post_ffw_norm.weight"), E, 0);
        w->swa = m->swa_window > 0 && swa_layer(swa_kv, swa_pattern, l);
        if (!strcmp(arch, "phi3")) {
            /* fused: the gate's rows, then the up projection's */
            wmat gu = matrix(&L, NAME("ffn_up.weight"), E, 2 * m->n_ff, 1);
            w->gate = wmat_rows(gu, 0, m->n_ff);
            w->up = wmat_rows(gu, m->n_ff, m->n_ff);
        } else if (m->n_expert) {
            int X = m->n_expert, F = m->n_ff_exp;
            w->gate_inp = matrix(&L, NAME("ffn_gate_inp.weight"), E, X, 1);
            w->gate_exps = stacked(&L, NAME("ffn_gate_exps.weight"), E, F, X);
            w->up_exps = stacked(&L, NAME("ffn_up_exps.weight"), E, F, X);
            w->down_exps = stacked(&L, NAME("ffn_down_exps.weight"), F, E, X);
        } else {
            w->gate = matrix(&L, NAME("ffn_gate.weight"), E, m->n_ff, 1);
            w->up = matrix(&L, NAME("ffn_up.weight"), E, m->n_ff, 1);
        }
        if (!m->n_expert)
            w->down = matrix(&L, NAME("ffn_down.weight"), m->n_ff, E, 1);
        if (m->idx_dim && gguf_tensor_find(f, NAME("indexer.k_proj.weight"))) {
            w->has_indexer = 1;
            w->iq = matrix(&L, NAME("indexer.q_proj.weight"), E, m->idx_heads * m->idx_dim, 1);
            w->ik = matrix(&L, NAME("indexer.k_proj.weight"), E, m->idx_dim, 1);
            w->iq_norm = vector(&L, NAME("indexer.q_norm.weight"), m->idx_dim, 1);
            w->ik_norm = vector(&L, NAME("indexer.k_norm.weight"), m->idx_dim, 1);
        }
#undef NAME
    }
    if (L.failed) {
        model_free(m);
        return -1;
    }
    return 0;
}

void model_free(model *m)
{
    for (int i = 0; i < m->n_owned; i++)
        free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    memset(m, 0, sizeof *m);
}

void model_embed(const model *m, int32_t tok, float *out)
{
    const wmat *w = &m->tok_embd;
    dequant_row(w->type, (const char *)w->data + (size_t)tok * w->row_bytes, out, w->cols);
}
