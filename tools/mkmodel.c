/* mkmodel: writes a Llama-shaped GGUF with seeded random weights, for tests
 * and benchmarks of shapes we have no real checkpoint for (Llama-3 8B at
 * full size, M3-style models with QK norm, partial rotary and an MSA
 * indexer).  Weights are normal * 1/sqrt(fan_in) so activations stay O(1);
 * norm weights are 1.  Tensors are generated and written a row at a time,
 * so memory stays small whatever the model size. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/quant.h"
#include "tools/gguf_writer.h"

typedef struct cfg {
    const char *name;
    int layers, embd, heads, kv_heads, head_dim, ff, vocab, ctx;
    uint32_t type;
    float rope_base, eps;
    int qk_norm, neox;
    int rope_dim;           /* 0: head_dim (or head_dim/2 for M3-style) */
    int m3;                 /* M3-style: half rotary, indexer by default */
    int indexer;            /* write indexer tensors and keys */
    int idx_heads, idx_dim, idx_top_k, idx_block, idx_local, dense_layers;
    /* RoPE scaling: rope.scaling.* keys (scaling "linear" or "yarn"), or
     * Llama 3.1's per-pair divisors in rope_freqs.weight (llama3_freqs) */
    const char *rope_scaling;
    float rope_factor;
    int rope_orig_ctx, llama3_freqs;
    const char *arch;       /* "llama", or "phi3": fused QKV and gate-up */
    /* gemma2/gemma3: post-norms, tied embeddings; sliding-window layers
     * (window 0: the loader's default) and soft caps (0: not written) */
    int swa_window, swa_pattern;
    float attn_softcap, logit_softcap;
    /* mixture of experts (llama or qwen3moe): experts, used a token, width */
    int experts, experts_used, expert_ff;
} cfg;

static const cfg presets[] = {
    /* stories260K's shape */
    { .name = "tiny", .layers = 5, .embd = 64, .heads = 8, .kv_heads = 4, .head_dim = 8,
      .ff = 172, .vocab = 512, .ctx = 2048, .type = GGML_F32, .rope_base = 10000, .eps = 1e-5f },
    /* Llama-3.2-1B */
    { .name = "llama-1b-ish", .layers = 16, .embd = 2048, .heads = 32, .kv_heads = 8,
      .head_dim = 64, .ff = 8192, .vocab = 128256, .ctx = 131072, .type = GGML_BF16,
      .rope_base = 500000, .eps = 1e-5f },
    { .name = "llama3-8b", .layers = 32, .embd = 4096, .heads = 32, .kv_heads = 8,
      .head_dim = 128, .ff = 14336, .vocab = 128256, .ctx = 8192, .type = GGML_BF16,
      .rope_base = 500000, .eps = 1e-5f },
    /* M3-style: head_dim != embd/heads, QK norm, rotary on half the head,
     * one index-query head per KV group, first layers dense */
    { .name = "m3-tiny", .layers = 4, .embd = 128, .heads = 8, .kv_heads = 2, .head_dim = 32,
      .ff = 256, .vocab = 512, .ctx = 8192, .type = GGML_F32, .rope_base = 10000, .eps = 1e-6f,
      .qk_norm = 1, .m3 = 1, .indexer = 1, .idx_dim = 32, .idx_top_k = 4, .idx_block = 16,
      .idx_local = 1, .dense_layers = 1 },
    { .name = "m3-1b", .layers = 16, .embd = 2048, .heads = 16, .kv_heads = 4, .head_dim = 128,
      .ff = 5632, .vocab = 32000, .ctx = 131072, .type = GGML_BF16, .rope_base = 1000000,
      .eps = 1e-6f, .qk_norm = 1, .m3 = 1, .indexer = 1, .idx_dim = 128, .idx_top_k = 16,
      .idx_block = 128, .idx_local = 1, .dense_layers = 2 },
};

static void usage(FILE *fp)
{
    fprintf(fp,
        "usage: mkmodel --out FILE [--preset NAME] [--layers N --embd N --heads N\n"
        "               --kv-heads N --head-dim N --ff N --vocab N --ctx N]\n"
        "               [--type f32|f16|bf16|q8_0|q4_0|q4_1|q4_k|q6_k] [--seed S]\n"
        "               [--qk-norm] [--rope-dim N] [--neox] [--rope-base F]\n"
        "               [--indexer-heads N --indexer-dim N --indexer-top-k N\n"
        "                --indexer-block N --indexer-local N --dense-layers N]\n"
        "               [--arch llama|phi3|gemma2|gemma3|qwen3moe] [--rope-scaling linear|yarn | --llama3-rope-freqs]\n"
        "               [--experts N --experts-used K --expert-ff N] (llama, qwen3moe)\n"
        "               [--swa-window N --swa-pattern N --attn-softcap F --logit-softcap F] (gemma2/3)\n"
        "               [--rope-factor F (4; llama3 8) --rope-orig-ctx N (ctx / factor)]\n"
        "presets:");
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        fprintf(fp, " %s", presets[i].name);
    fprintf(fp, " (default tiny)\n");
}

static int parse_type(const char *s, uint32_t *t)
{
    static const struct { const char *n; uint32_t t; } types[] = {
        { "f32", GGML_F32 }, { "f16", GGML_F16 }, { "bf16", GGML_BF16 },
        { "q8_0", GGML_Q8_0 }, { "q4_0", GGML_Q4_0 }, { "q4_1", GGML_Q4_1 },
        { "q4_k", GGML_Q4_K }, { "q6_k", GGML_Q6_K },
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcasecmp(s, types[i].n)) {
            *t = types[i].t;
            return 0;
        }
    return -1;
}

static int parse_int(const char *opt, const char *s, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < 0 || v > 1 << 30) {
        fprintf(stderr, "mkmodel: --%s: '%s' is not a non-negative integer\n", opt, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* ---- random numbers: splitmix64 + Box-Muller ------------------------------ */

typedef struct rng {
    uint64_t s;
    int have;
    float spare;
} rng;

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rng_next(rng *r) { return mix64(r->s += 0x9e3779b97f4a7c15ull); }

static float rng_normal(rng *r)
{
    if (r->have) {
        r->have = 0;
        return r->spare;
    }
    double u1 = ((rng_next(r) >> 11) + 1) * 0x1.0p-53;   /* (0, 1] */
    double u2 = (rng_next(r) >> 11) * 0x1.0p-53;
    double m = sqrt(-2 * log(u1));
    r->spare = (float)(m * sin(2 * M_PI * u2));
    r->have = 1;
    return (float)(m * cos(2 * M_PI * u2));
}

/* ---- the model ------------------------------------------------------------ */

enum { T_WEIGHT, T_NORM, T_ROPE_FREQS, T_ROUTER };

typedef struct tensor_plan {
    char name[96];
    int kind;
    uint64_t ne0, ne1;      /* ne1 == 0 for 1-D */
    uint64_t ne2;           /* stacked experts; 0 for 1-D and 2-D */
    uint32_t type;
} tensor_plan;

typedef struct plan {
    tensor_plan *t;
    int n, cap;
    int fell_back;
} plan;

static int plan_add(plan *p, const cfg *c, int kind, uint64_t ne0, uint64_t ne1, const char *fmt, int layer)
{
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 64;
        tensor_plan *t = realloc(p->t, (size_t)p->cap * sizeof(*t));
        if (!t) return -1;
        p->t = t;
    }
    tensor_plan *t = &p->t[p->n++];
    snprintf(t->name, sizeof t->name, fmt, layer);
    t->kind = kind;
    t->ne0 = ne0;
    t->ne1 = ne1;
    t->ne2 = 0;
    /* the router stays f32, as converters write it */
    t->type = kind != T_WEIGHT ? GGML_F32 : c->type;
    /* rows the block size does not divide stay f32 */
    if (ne0 % (uint64_t)ggml_blck_size(t->type)) {
        t->type = GGML_F32;
        p->fell_back = 1;
    }
    return 0;
}

static int build_plan(const cfg *c, plan *p)
{
    uint64_t e = (uint64_t)c->embd, q = (uint64_t)c->heads * c->head_dim;
    uint64_t kv = (uint64_t)c->kv_heads * c->head_dim, ff = (uint64_t)c->ff;
    int rc = 0;
    rc |= plan_add(p, c, T_WEIGHT, e, (uint64_t)c->vocab, "token_embd.weight", 0);
    rc |= plan_add(p, c, T_NORM, e, 0, "output_norm.weight", 0);
    int gemma = !strncmp(c->arch, "gemma", 5);
    if (!gemma)     /* Gemma ties its output to the embedding */
        rc |= plan_add(p, c, T_WEIGHT, e, (uint64_t)c->vocab, "output.weight", 0);
    if (c->llama3_freqs)
        rc |= plan_add(p, c, T_ROPE_FREQS, (uint64_t)c->rope_dim / 2, 0, "rope_freqs.weight", 0);
    for (int l = 0; l < c->layers; l++) {
        rc |= plan_add(p, c, T_NORM, e, 0, "blk.%d.attn_norm.weight", l);
        if (!strcmp(c->arch, "phi3")) {
            rc |= plan_add(p, c, T_WEIGHT, e, q + 2 * kv, "blk.%d.attn_qkv.weight", l);
        } else {
            rc |= plan_add(p, c, T_WEIGHT, e, q, "blk.%d.attn_q.weight", l);
            rc |= plan_add(p, c, T_WEIGHT, e, kv, "blk.%d.attn_k.weight", l);
            rc |= plan_add(p, c, T_WEIGHT, e, kv, "blk.%d.attn_v.weight", l);
        }
        rc |= plan_add(p, c, T_WEIGHT, q, e, "blk.%d.attn_output.weight", l);
        if (gemma)
            rc |= plan_add(p, c, T_NORM, e, 0, "blk.%d.post_attention_norm.weight", l);
        if (c->qk_norm) {
            rc |= plan_add(p, c, T_NORM, (uint64_t)c->head_dim, 0, "blk.%d.attn_q_norm.weight", l);
            rc |= plan_add(p, c, T_NORM, (uint64_t)c->head_dim, 0, "blk.%d.attn_k_norm.weight", l);
        }
        rc |= plan_add(p, c, T_NORM, e, 0, "blk.%d.ffn_norm.weight", l);
        if (!strcmp(c->arch, "phi3")) {
            rc |= plan_add(p, c, T_WEIGHT, e, 2 * ff, "blk.%d.ffn_up.weight", l);
        } else if (c->experts) {
            uint64_t x = (uint64_t)c->experts, xf = (uint64_t)c->expert_ff;
            rc |= plan_add(p, c, T_ROUTER, e, x, "blk.%d.ffn_gate_inp.weight", l);
            rc |= plan_add(p, c, T_WEIGHT, e, xf, "blk.%d.ffn_gate_exps.weight", l);
            p->t[p->n - 1].ne2 = x;
            rc |= plan_add(p, c, T_WEIGHT, e, xf, "blk.%d.ffn_up_exps.weight", l);
            p->t[p->n - 1].ne2 = x;
            rc |= plan_add(p, c, T_WEIGHT, xf, e, "blk.%d.ffn_down_exps.weight", l);
            p->t[p->n - 1].ne2 = x;
        } else {
            rc |= plan_add(p, c, T_WEIGHT, e, ff, "blk.%d.ffn_gate.weight", l);
            rc |= plan_add(p, c, T_WEIGHT, e, ff, "blk.%d.ffn_up.weight", l);
        }
        if (!c->experts)
            rc |= plan_add(p, c, T_WEIGHT, ff, e, "blk.%d.ffn_down.weight", l);
        if (gemma)
            rc |= plan_add(p, c, T_NORM, e, 0, "blk.%d.post_ffw_norm.weight", l);
        if (c->indexer && l >= c->dense_layers) {
            uint64_t d = (uint64_t)c->idx_dim;
            rc |= plan_add(p, c, T_WEIGHT, e, (uint64_t)c->idx_heads * d, "blk.%d.indexer.q_proj.weight", l);
            rc |= plan_add(p, c, T_WEIGHT, e, d, "blk.%d.indexer.k_proj.weight", l);
            rc |= plan_add(p, c, T_NORM, d, 0, "blk.%d.indexer.q_norm.weight", l);
            rc |= plan_add(p, c, T_NORM, d, 0, "blk.%d.indexer.k_norm.weight", l);
        }
    }
    return rc;
}

/* Filler vocabulary after the specials and byte tokens: "▁", printable
 * ASCII, "▁" + letter, then lowercase strings of growing length, bare and
 * with "▁", so every token is distinct. */
static void filler_token(int k, char *out, size_t cap)
{
    static const char sp[] = "\xe2\x96\x81";
    if (k == 0) {
        snprintf(out, cap, "%s", sp);
        return;
    }
    k--;
    if (k < 94) {
        snprintf(out, cap, "%c", 33 + k);
        return;
    }
    k -= 94;
    if (k < 52) {
        snprintf(out, cap, "%s%c", sp, k < 26 ? 'a' + k : 'A' + k - 26);
        return;
    }
    k -= 52;
    long span = 26 * 26;
    int len = 2;
    while (k >= 2 * span) {
        k -= (int)(2 * span);
        span *= 26;
        len++;
    }
    int prefixed = k % 2;
    long v = k / 2;
    char word[16];
    for (int i = len - 1; i >= 0; i--, v /= 26) word[i] = (char)('a' + v % 26);
    word[len] = '\0';
    snprintf(out, cap, "%s%s", prefixed ? sp : "", word);
}

static int add_tokenizer(gguf_writer *w, int vocab)
{
    char **tok = calloc((size_t)vocab, sizeof(*tok));
    float *score = calloc((size_t)vocab, sizeof(*score));
    int32_t *type = calloc((size_t)vocab, sizeof(*type));
    int rc = -1;
    if (!tok || !score || !type) goto out;
    for (int i = 0; i < vocab; i++) {
        char buf[32];
        if (i == 0) snprintf(buf, sizeof buf, "<unk>"), type[i] = 2;
        else if (i == 1) snprintf(buf, sizeof buf, "<s>"), type[i] = 3;
        else if (i == 2) snprintf(buf, sizeof buf, "</s>"), type[i] = 3;
        else if (i < 259) snprintf(buf, sizeof buf, "<0x%02X>", i - 3), type[i] = 6;
        else {
            filler_token(i - 259, buf, sizeof buf);
            type[i] = 1;
            score[i] = -(float)(i - 259);
        }
        if (!(tok[i] = strdup(buf))) goto out;
    }
    gw_add_str(w, "tokenizer.ggml.model", "llama");
    gw_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok, (uint64_t)vocab);
    gw_add_arr(w, "tokenizer.ggml.scores", GGUF_T_F32, score, (uint64_t)vocab);
    gw_add_arr(w, "tokenizer.ggml.token_type", GGUF_T_I32, type, (uint64_t)vocab);
    gw_add_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    gw_add_u32(w, "tokenizer.ggml.bos_token_id", 1);
    gw_add_u32(w, "tokenizer.ggml.eos_token_id", 2);
    rc = 0;
out:
    if (tok)
        for (int i = 0; i < vocab; i++) free(tok[i]);
    free(tok);
    free(score);
    free(type);
    return rc;
}

/* "<arch>.<suffix>", for the next gw_add_* call (which copies it) */
static const char *arch_key(const cfg *c, const char *suffix)
{
    static char key[96];
    snprintf(key, sizeof key, "%s.%s", c->arch, suffix);
    return key;
}

static void add_metadata(gguf_writer *w, const cfg *c, const char *name)
{
#define K(suffix) arch_key(c, suffix)
    gw_add_str(w, "general.architecture", c->arch);
    gw_add_str(w, "general.name", name);
    gw_add_u32(w, K("block_count"), (uint32_t)c->layers);
    gw_add_u32(w, K("context_length"), (uint32_t)c->ctx);
    gw_add_u32(w, K("embedding_length"), (uint32_t)c->embd);
    gw_add_u32(w, K("feed_forward_length"), (uint32_t)c->ff);
    gw_add_u32(w, K("attention.head_count"), (uint32_t)c->heads);
    gw_add_u32(w, K("attention.head_count_kv"), (uint32_t)c->kv_heads);
    if (c->head_dim * c->heads != c->embd)
        gw_add_u32(w, K("attention.key_length"), (uint32_t)c->head_dim);
    gw_add_u32(w, K("attention.value_length"), (uint32_t)c->head_dim);
    gw_add_u32(w, K("rope.dimension_count"), (uint32_t)c->rope_dim);
    gw_add_f32(w, K("rope.freq_base"), c->rope_base);
    gw_add_f32(w, K("attention.layer_norm_rms_epsilon"), c->eps);
    gw_add_u32(w, K("vocab_size"), (uint32_t)c->vocab);
    if (c->neox) gw_add_bool(w, "sparsed.rope.neox", 1);
    if (c->rope_scaling) {
        gw_add_str(w, K("rope.scaling.type"), c->rope_scaling);
        gw_add_f32(w, K("rope.scaling.factor"), c->rope_factor);
        gw_add_u32(w, K("rope.scaling.original_context_length"), (uint32_t)c->rope_orig_ctx);
    }
    if (c->swa_window) gw_add_u32(w, K("attention.sliding_window"), (uint32_t)c->swa_window);
    if (c->swa_pattern >= 0) gw_add_u32(w, K("attention.sliding_window_pattern"), (uint32_t)c->swa_pattern);
    if (c->attn_softcap > 0) gw_add_f32(w, K("attn_logit_softcapping"), c->attn_softcap);
    if (c->logit_softcap > 0) gw_add_f32(w, K("final_logit_softcapping"), c->logit_softcap);
    if (c->experts) {
        gw_add_u32(w, K("expert_count"), (uint32_t)c->experts);
        gw_add_u32(w, K("expert_used_count"), (uint32_t)c->experts_used);
        gw_add_u32(w, K("expert_feed_forward_length"), (uint32_t)c->expert_ff);
    }
    if (c->indexer) {
        gw_add_u32(w, K("attention.indexer.head_count"), (uint32_t)c->idx_heads);
        gw_add_u32(w, K("attention.indexer.key_length"), (uint32_t)c->idx_dim);
        gw_add_u32(w, K("attention.indexer.top_k"), (uint32_t)c->idx_top_k);
        gw_add_u32(w, K("attention.indexer.block_size"), (uint32_t)c->idx_block);
        gw_add_u32(w, K("attention.indexer.local_blocks"), (uint32_t)c->idx_local);
        gw_add_u32(w, K("attention.indexer.dense_layers"), (uint32_t)c->dense_layers);
    }
}

/* Llama 3.1's divisor of pair i's frequency (its converter's formula, low
 * 1 and high 4): pairs turning more than orig_ctx / 4 times over the
 * original context keep theirs, fewer than orig_ctx / 1 times divide by
 * the factor, a smooth blend between. */
static float llama3_divisor(const cfg *c, int i)
{
    double wavelen = 2 * M_PI / pow(c->rope_base, -2.0 * i / c->rope_dim);
    double lo = c->rope_orig_ctx / 1.0, hi = c->rope_orig_ctx / 4.0;
    if (wavelen < hi) return 1.0f;
    if (wavelen > lo) return c->rope_factor;
    double s = (c->rope_orig_ctx / wavelen - 1.0) / (4.0 - 1.0);
    return (float)(1.0 / ((1 - s) / c->rope_factor + s));
#undef K
}

static int write_tensor(gguf_writer *w, FILE *fp, int idx, const tensor_plan *t, uint64_t seed,
                        const cfg *c, float *row, uint8_t *qbuf)
{
    /* one stream per tensor, started at an unrelated point of the cycle */
    rng r = { .s = mix64(seed ^ mix64((uint64_t)idx + 1)) };
    uint64_t rows = (t->ne1 ? t->ne1 : 1) * (t->ne2 ? t->ne2 : 1);
    float scale = 1.0f / sqrtf((float)t->ne0);
    size_t rb = ggml_row_size(t->type, (int64_t)t->ne0);
    if (gw_tensor_begin(w, fp, idx)) return -1;
    for (uint64_t i = 0; i < rows; i++) {
        for (uint64_t j = 0; j < t->ne0; j++)
            row[j] = t->kind == T_NORM ? 1.0f : t->kind == T_ROPE_FREQS ? llama3_divisor(c, (int)j)
                                                                       : rng_normal(&r) * scale;
        quantize_row(t->type, row, qbuf, (int64_t)t->ne0);
        if (gw_write_data(w, fp, qbuf, rb)) return -1;
    }
    return 0;
}

static int check_cfg(const cfg *c)
{
    const char *bad = NULL;
    if (c->layers < 1) bad = "--layers must be >= 1";
    else if (c->embd < 1 || c->heads < 1 || c->kv_heads < 1 || c->head_dim < 1 || c->ff < 1)
        bad = "--embd, --heads, --kv-heads, --head-dim and --ff must be >= 1";
    else if (c->heads % c->kv_heads) bad = "--heads must be a multiple of --kv-heads";
    else if (c->vocab < 259) bad = "--vocab must be >= 259 (3 specials + 256 byte tokens)";
    else if (c->ctx < 1) bad = "--ctx must be >= 1";
    else if (c->rope_dim < 2 || c->rope_dim > c->head_dim || c->rope_dim % 2)
        bad = "--rope-dim must be even and in [2, head-dim]";
    else if (c->indexer && (c->idx_heads < 1 || c->idx_dim < 1 || c->idx_top_k < 1 ||
                            c->idx_block < 1 || c->idx_local < 1))
        bad = "indexer heads, dim, top-k, block and local must be >= 1";
    else if (c->indexer && c->dense_layers > c->layers) bad = "--dense-layers exceeds --layers";
    else if ((c->rope_scaling || c->llama3_freqs) && !(c->rope_factor >= 1.0f && c->rope_orig_ctx >= 1))
        bad = "--rope-factor must be >= 1 and --rope-orig-ctx >= 1";
    else if (c->rope_scaling && c->llama3_freqs) bad = "--rope-scaling and --llama3-rope-freqs exclude each other";
    else if (strncmp(c->arch, "gemma", 5) && (c->swa_window || c->swa_pattern >= 0 || c->attn_softcap || c->logit_softcap))
        bad = "--swa-window, --swa-pattern and the soft caps are for --arch gemma2 or gemma3";
    else if (!strcmp(c->arch, "qwen3moe") && !c->experts) bad = "--arch qwen3moe needs --experts";
    else if (c->experts && strcmp(c->arch, "llama") && strcmp(c->arch, "qwen3moe"))
        bad = "--experts is for --arch llama or qwen3moe";
    else if (c->experts && (c->experts_used < 1 || c->experts_used > c->experts || c->expert_ff < 1))
        bad = "--experts-used must be in [1, --experts] and --expert-ff >= 1";
    if (bad) fprintf(stderr, "mkmodel: %s\n", bad);
    return bad ? -1 : 0;
}

enum {
    O_OUT = 256, O_PRESET, O_LAYERS, O_EMBD, O_HEADS, O_KV, O_HD, O_FF, O_VOCAB, O_CTX, O_TYPE,
    O_SEED, O_QKN, O_ROPE_DIM, O_NEOX, O_ROPE_BASE, O_IH, O_ID, O_ITOP, O_IBLK, O_ILOC, O_DENSE,
    O_ROPE_SCALING, O_ROPE_FACTOR, O_ROPE_ORIG, O_LLAMA3, O_ARCH, O_SWA, O_SWA_PATTERN, O_ATTN_CAP, O_LOGIT_CAP,
    O_EXPERTS, O_EXPERTS_USED, O_EXPERT_FF, O_HELP,
};

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "out", required_argument, 0, O_OUT }, { "preset", required_argument, 0, O_PRESET },
        { "layers", required_argument, 0, O_LAYERS }, { "embd", required_argument, 0, O_EMBD },
        { "heads", required_argument, 0, O_HEADS }, { "kv-heads", required_argument, 0, O_KV },
        { "head-dim", required_argument, 0, O_HD }, { "ff", required_argument, 0, O_FF },
        { "vocab", required_argument, 0, O_VOCAB }, { "ctx", required_argument, 0, O_CTX },
        { "type", required_argument, 0, O_TYPE }, { "seed", required_argument, 0, O_SEED },
        { "qk-norm", no_argument, 0, O_QKN }, { "rope-dim", required_argument, 0, O_ROPE_DIM },
        { "neox", no_argument, 0, O_NEOX }, { "rope-base", required_argument, 0, O_ROPE_BASE },
        { "indexer-heads", required_argument, 0, O_IH }, { "indexer-dim", required_argument, 0, O_ID },
        { "indexer-top-k", required_argument, 0, O_ITOP },
        { "indexer-block", required_argument, 0, O_IBLK },
        { "indexer-local", required_argument, 0, O_ILOC },
        { "dense-layers", required_argument, 0, O_DENSE }, { "help", no_argument, 0, O_HELP },
        { "rope-scaling", required_argument, 0, O_ROPE_SCALING },
        { "rope-factor", required_argument, 0, O_ROPE_FACTOR },
        { "rope-orig-ctx", required_argument, 0, O_ROPE_ORIG },
        { "llama3-rope-freqs", no_argument, 0, O_LLAMA3 },
        { "arch", required_argument, 0, O_ARCH },
        { "swa-window", required_argument, 0, O_SWA }, { "swa-pattern", required_argument, 0, O_SWA_PATTERN },
        { "attn-softcap", required_argument, 0, O_ATTN_CAP }, { "logit-softcap", required_argument, 0, O_LOGIT_CAP },
        { "experts", required_argument, 0, O_EXPERTS }, { "experts-used", required_argument, 0, O_EXPERTS_USED },
        { "expert-ff", required_argument, 0, O_EXPERT_FF },
        { 0, 0, 0, 0 },
    };
    /* -1 = not given; applied over the preset after all options are read */
    int set[O_HELP + 1];
    for (int i = 0; i <= O_HELP; i++) set[i] = -1;
    const char *out = NULL, *preset = "tiny", *type = NULL;
    unsigned long long seed = 1;
    float rope_base = 0, rope_factor = 0, attn_cap = 0, logit_cap = 0;
    const char *rope_scaling = NULL, *arch = "llama";
    int opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case O_OUT: out = optarg; break;
        case O_PRESET: preset = optarg; break;
        case O_TYPE: type = optarg; break;
        case O_SEED: seed = strtoull(optarg, NULL, 0); break;
        case O_QKN: case O_NEOX: case O_LLAMA3: set[opt] = 1; break;
        case O_ROPE_SCALING:
            if (strcmp(optarg, "linear") && strcmp(optarg, "yarn")) {
                fprintf(stderr, "mkmodel: --rope-scaling must be linear or yarn\n");
                return 2;
            }
            rope_scaling = optarg;
            break;
        case O_ROPE_FACTOR: rope_factor = strtof(optarg, NULL); break;
        case O_ARCH:
            if (strcmp(optarg, "llama") && strcmp(optarg, "phi3") && strcmp(optarg, "gemma2") &&
                strcmp(optarg, "gemma3") && strcmp(optarg, "qwen3moe")) {
                fprintf(stderr, "mkmodel: --arch must be llama, phi3, gemma2, gemma3 or qwen3moe\n");
                return 2;
            }
            arch = optarg;
            break;
        case O_ROPE_BASE:
            rope_base = strtof(optarg, NULL);
            if (!(rope_base > 0)) {
                fprintf(stderr, "mkmodel: --rope-base must be > 0\n");
                return 2;
            }
            break;
        case O_ATTN_CAP: case O_LOGIT_CAP: {
            float v = strtof(optarg, NULL);
            if (!(v > 0 && v < 1e6f)) {
                fprintf(stderr, "mkmodel: --%s must be > 0\n", opt == O_ATTN_CAP ? "attn-softcap" : "logit-softcap");
                return 2;
            }
            *(opt == O_ATTN_CAP ? &attn_cap : &logit_cap) = v;
            break;
        }
        case O_HELP: usage(stdout); return 0;
        case '?': usage(stderr); return 2;
        default: {
            const char *oname = "?";
            for (const struct option *o = opts; o->name; o++)
                if (o->val == opt) oname = o->name;
            if (parse_int(oname, optarg, &set[opt])) return 2;
        }
        }
    }
    if (optind < argc || !out) {
        if (!out) fprintf(stderr, "mkmodel: --out is required\n");
        else fprintf(stderr, "mkmodel: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    const cfg *p = NULL;
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (!strcmp(preset, presets[i].name)) p = &presets[i];
    if (!p) {
        fprintf(stderr, "mkmodel: unknown preset '%s'\n", preset);
        usage(stderr);
        return 2;
    }
    cfg c = *p;
    /* head_dim follows embd/heads when the preset ties them */
    int hd_tied = p->head_dim * p->heads == p->embd;
#define OVR(field, o) if (set[o] >= 0) c.field = set[o]
    OVR(layers, O_LAYERS); OVR(embd, O_EMBD); OVR(heads, O_HEADS); OVR(kv_heads, O_KV);
    OVR(ff, O_FF); OVR(vocab, O_VOCAB); OVR(ctx, O_CTX);
    OVR(idx_dim, O_ID); OVR(idx_top_k, O_ITOP); OVR(idx_block, O_IBLK); OVR(idx_local, O_ILOC);
    OVR(dense_layers, O_DENSE); OVR(idx_heads, O_IH);
#undef OVR
    if (set[O_HD] >= 0) c.head_dim = set[O_HD];
    else if (hd_tied && c.heads > 0) c.head_dim = c.embd / c.heads;
    if (set[O_QKN] > 0) c.qk_norm = 1;
    if (set[O_NEOX] > 0) c.neox = 1;
    if (rope_base > 0) c.rope_base = rope_base;
    c.rope_scaling = rope_scaling;
    c.arch = arch;
    c.swa_window = set[O_SWA] > 0 ? set[O_SWA] : 0;
    c.swa_pattern = set[O_SWA_PATTERN];
    c.attn_softcap = attn_cap;
    c.logit_softcap = logit_cap;
    if (!strcmp(arch, "gemma3") || !strcmp(arch, "qwen3moe")) c.qk_norm = 1;
    c.experts = set[O_EXPERTS] > 0 ? set[O_EXPERTS] : 0;
    c.experts_used = set[O_EXPERTS_USED] >= 0 ? set[O_EXPERTS_USED] : c.experts < 2 ? c.experts : 2;
    c.expert_ff = set[O_EXPERT_FF] > 0 ? set[O_EXPERT_FF] : c.ff;
    c.llama3_freqs = set[O_LLAMA3] > 0;
    c.rope_factor = rope_factor > 0 ? rope_factor : c.llama3_freqs ? 8.0f : 4.0f;
    c.rope_orig_ctx = set[O_ROPE_ORIG] >= 0 ? set[O_ROPE_ORIG] : (int)(c.ctx / c.rope_factor);
    c.rope_dim = set[O_ROPE_DIM] >= 0 ? set[O_ROPE_DIM] : c.m3 ? c.head_dim / 2 : c.head_dim;
    if (set[O_IH] >= 0 || set[O_ID] >= 0 || set[O_ITOP] >= 0 || set[O_IBLK] >= 0 ||
        set[O_ILOC] >= 0 || set[O_DENSE] >= 0)
        c.indexer = 1;
    if (c.indexer) {
        if (set[O_IH] < 0) c.idx_heads = c.kv_heads;
        if (!c.idx_dim) c.idx_dim = 128;
        if (!c.idx_top_k) c.idx_top_k = 16;
        if (!c.idx_block) c.idx_block = 128;
        if (!c.idx_local) c.idx_local = 1;
    }
    if (type && parse_type(type, &c.type)) {
        fprintf(stderr, "mkmodel: unknown --type '%s'\n", type);
        return 2;
    }
    if (check_cfg(&c)) return 2;

    plan pl = { 0 };
    gguf_writer *w = gw_new();
    if (!w || build_plan(&c, &pl)) {
        fprintf(stderr, "mkmodel: out of memory\n");
        return 1;
    }
    if (pl.fell_back)
        fprintf(stderr, "mkmodel: note: tensors whose rows %s blocks do not divide are written as f32\n",
                ggml_type_name(c.type));
    char name[64];
    snprintf(name, sizeof name, "sparsed-%s", c.name);
    add_metadata(w, &c, name);
    if (add_tokenizer(w, c.vocab)) {
        fprintf(stderr, "mkmodel: out of memory\n");
        return 1;
    }
    uint64_t max_ne0 = 0;
    for (int i = 0; i < pl.n; i++) {
        uint64_t ne[3] = { pl.t[i].ne0, pl.t[i].ne1, pl.t[i].ne2 };
        gw_add_tensor(w, pl.t[i].name, pl.t[i].type, pl.t[i].ne2 ? 3 : pl.t[i].ne1 ? 2 : 1, ne, NULL);
        if (ne[0] > max_ne0) max_ne0 = ne[0];
    }
    float *row = malloc(max_ne0 * sizeof(float));
    uint8_t *qbuf = malloc(max_ne0 * sizeof(float));
    FILE *fp = fopen(out, "wb");
    if (!row || !qbuf || !fp) {
        fprintf(stderr, "mkmodel: %s: cannot create\n", out);
        return 1;
    }
    setvbuf(fp, NULL, _IOFBF, 1 << 20);
    int rc = gw_write_header(w, fp);
    for (int i = 0; i < pl.n && !rc; i++) rc = write_tensor(w, fp, i, &pl.t[i], seed, &c, row, qbuf);
    if (!rc) rc = gw_write_end(w, fp);
    if (fclose(fp) && !rc) rc = -1;
    if (rc) {
        fprintf(stderr, "mkmodel: %s: %s\n", out, gw_error(w)[0] ? gw_error(w) : "write failed");
        remove(out);
    } else {
        uint64_t params = 0;
        for (int i = 0; i < pl.n; i++)
            params += pl.t[i].ne0 * (pl.t[i].ne1 ? pl.t[i].ne1 : 1) * (pl.t[i].ne2 ? pl.t[i].ne2 : 1);
        fprintf(stderr, "mkmodel: wrote %s: preset %s, %d layers, %d tensors, %.1fM params, %s\n",
                out, c.name, c.layers, pl.n, (double)params / 1e6, ggml_type_name(c.type));
    }
    free(row);
    free(qbuf);
    free(pl.t);
    gw_free(w);
    return rc ? 1 : 0;
}
