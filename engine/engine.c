/* Engine lifetime: open the GGUF, build the model, tokenizer and threads,
 * resolve the attention configuration. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/internal.h"
#ifdef SPARSED_CUDA
#include "engine/cuda/cuda_backend.h"
#endif

const tokenizer *engine_tok(const engine *e) { return e->tok; }
const gguf_file *engine_gguf(const engine *e) { return e->gf; }
const engine_info *engine_get_info(const engine *e) { return &e->info; }
const attn_config *engine_attn(const engine *e) { return &e->attn; }

/* Fills the -1 ("model's value / default") fields of the attention config. */
static int resolve_attn(engine *e, const attn_config *in, char *err, size_t errlen)
{
    const model *m = &e->m;
    attn_config *c = &e->attn;
    *c = *in;
    if (attn_config_check(c, err, errlen))
        return -1;
    int msa = m->idx_dim > 0;
    if (c->indexer == -1)
        c->indexer = msa ? IDX_MSA : IDX_MINMAX;
    if (c->indexer == IDX_MSA && !msa) {
        snprintf(err, errlen, "indexer: msa needs a model with indexer weights; use minmax or mean");
        return -1;
    }
    int use_msa = c->indexer == IDX_MSA;
    /* Training-free defaults from bench/quality (bench/README.md): blocks of
     * 64 (32 recalls a little more, but the CUDA kernels want multiples of
     * 64), sink block 0 and 2 local blocks always kept, and a budget of
     * about 4096 tokens in all. */
    if (c->block_size == -1)
        c->block_size = use_msa ? m->idx_block : 64;
    if (use_msa && c->block_size != m->idx_block)
        fprintf(stderr, "sparsed: note: block size %d differs from the indexer's trained %d\n",
                c->block_size, m->idx_block);
    if (c->local_blocks == -1)
        c->local_blocks = use_msa ? m->idx_local : 2;
    if (c->sink_blocks == -1)
        c->sink_blocks = use_msa ? 0 : 1;
    if (c->top_k_blocks == -1) {
        int k = 4096 / c->block_size - c->local_blocks - c->sink_blocks;
        c->top_k_blocks = use_msa ? m->idx_top_k : k > 1 ? k : 1;
    }
    if (c->dense_layers == -1)
        c->dense_layers = use_msa ? m->idx_dense_layers : 0;
    if (c->mode == ATTN_AUTO)
        c->mode = msa ? ATTN_SPARSE : ATTN_DENSE;
    if (c->sparse_min_context == -1)
        c->sparse_min_context = (c->top_k_blocks + c->local_blocks + c->sink_blocks) * c->block_size;
    return attn_config_check(c, err, errlen);
}

int engine_layer_sparse(const engine *e, int l, int n_ctx)
{
    const attn_config *c = &e->attn;
    /* a sliding window is already a short span */
    if (c->mode != ATTN_SPARSE || l < c->dense_layers || n_ctx < c->sparse_min_context || e->m.layers[l].swa)
        return 0;
    /* an MSA model's dense layers carry no indexer weights */
    return c->indexer != IDX_MSA || e->m.layers[l].has_indexer;
}

int engine_parse_device(const char *s, int *ordinal)
{
    if (ordinal)
        *ordinal = 0;
    if (!s || !strcmp(s, "cpu"))
        return 0;
    if (strncmp(s, "cuda", 4))
        return -1;
    if (!s[4])
        return 1;
    /* "cuda:N": digits only, no sign or spaces, within int */
    if (s[4] != ':' || !s[5] || strlen(s + 5) > 6)
        return -1;
    int n = 0;
    for (const char *c = s + 5; *c; c++) {
        if (*c < '0' || *c > '9')
            return -1;
        n = n * 10 + (*c - '0');
    }
    if (ordinal)
        *ordinal = n;
    return 1;
}

/* A KV pool storage option (what: its name in messages): 0 for bf16 or
 * unset, 1 for fp8 (cuda only: the cpu keeps `kept` in f32), -1 with err
 * set otherwise. */
static int pool_fp8(const char *what, const char *kept, const char *v, int cuda, char *err, size_t errlen)
{
    if (!v || !strcmp(v, "bf16"))
        return 0;
    if (strcmp(v, "fp8")) {
        snprintf(err, errlen, "%s: '%s' is not known (bf16, fp8)", what, v);
        return -1;
    }
    if (!cuda) {
        snprintf(err, errlen, "%s: fp8 needs the cuda device (the cpu keeps %s in f32)", what, kept);
        return -1;
    }
    return 1;
}

engine *engine_create(const engine_opts *o, char *err, size_t errlen)
{
    int ordinal = 0, cuda = engine_parse_device(o->device, &ordinal);
    if (cuda < 0) {
        snprintf(err, errlen, "device: '%s' is not known (cpu, cuda, or cuda:N for the N-th visible GPU)", o->device);
        return NULL;
    }
    int f32 = o->dtype && !strcmp(o->dtype, "f32");
#ifndef SPARSED_CUDA
    (void)ordinal;
    (void)f32;
    if (cuda) {
        snprintf(err, errlen, "device: cuda is not available in this build (cpu)");
        return NULL;
    }
#endif
    if (o->dtype && strcmp(o->dtype, "bf16") && strcmp(o->dtype, "f32")) {
        snprintf(err, errlen, "dtype: '%s' is not known (bf16, f32)", o->dtype);
        return NULL;
    }
    int idx_fp8 = pool_fp8("index keys", "them", o->index_keys, cuda, err, errlen);
    int kv_fp8 = idx_fp8 < 0 ? -1 : pool_fp8("kv cache dtype", "K/V", o->kv_cache_dtype, cuda, err, errlen);
    if (kv_fp8 < 0)
        return NULL;
    engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->gf = gguf_open(o->model_path, err, errlen);
    if (!e->gf)
        goto fail;
    if (model_load(&e->m, e->gf, err, errlen))
        goto fail;
    e->tok = tokenizer_load(e->gf, err, errlen);
    if (!e->tok)
        goto fail;
    if (tokenizer_n_vocab(e->tok) > e->m.n_vocab) {
        snprintf(err, errlen, "model: tokenizer has %d tokens but the embedding only %d",
                 tokenizer_n_vocab(e->tok), e->m.n_vocab);
        goto fail;
    }
    if (resolve_attn(e, &o->attn, err, errlen))
        goto fail;
    if (o->max_model_len < 0 || o->max_model_len > e->m.n_ctx) {
        snprintf(err, errlen, "max model len: %d is outside 1 to %d, the model's context length (0: all of it)",
                 o->max_model_len, e->m.n_ctx);
        goto fail;
    }

    int nt = o->n_threads > 0 ? o->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    e->pool = tpool_create(nt > 0 ? nt : 1);
    int half = e->m.rope_dim / 2;
    e->rope_freq = malloc((size_t)(half > 0 ? 2 * half : 1) * sizeof(float));
    if (!e->pool || !e->rope_freq) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    int served = o->max_model_len ? o->max_model_len : e->m.n_ctx;
    e->rope_freq_swa = e->rope_freq + half;
    e->rope_mscale = model_rope_table(&e->m, served, 0, e->rope_freq);
    e->rope_mscale_swa = model_rope_table(&e->m, served, 1, e->rope_freq_swa);
#ifdef SPARSED_CUDA
    if (cuda) {
        e->cuda = cuda_backend_create(e, ordinal, f32, idx_fp8, kv_fp8, err, errlen);
        if (!e->cuda)
            goto fail;
    }
#endif

    engine_info *in = &e->info;
    in->arch = e->m.arch;
    in->name = gguf_get_str(e->gf, "general.name");
    if (!in->name) {
        const char *slash = strrchr(o->model_path, '/');
        in->name = slash ? slash + 1 : o->model_path;
    }
    in->n_vocab = e->m.n_vocab;
    in->n_ctx = o->max_model_len ? o->max_model_len : e->m.n_ctx;
    in->n_layers = e->m.n_layers;
    in->n_embd = e->m.n_embd;
    in->n_heads = e->m.n_heads;
    in->n_kv_heads = e->m.n_kv_heads;
    in->head_dim = e->m.head_dim;
    in->has_indexer = e->m.idx_dim > 0;
    in->device = "cpu";
    in->kv_dtype = "f32";
    e->kv_fp8_ref = !cuda && o->kv_fp8_reference;
#ifdef SPARSED_CUDA
    if (e->cuda) {
        in->device = cuda_backend_device_name(e->cuda);
        in->kv_dtype = f32 ? "f32" : kv_fp8 ? "fp8" : "bf16";
    }
#endif
    in->bos = tokenizer_bos(e->tok);
    in->eos = tokenizer_eos(e->tok);
    in->add_bos = tokenizer_add_bos(e->tok);
    in->chat_template = gguf_get_str(e->gf, "tokenizer.chat_template");
    return e;
fail:
    engine_free(e);
    return NULL;
}

static void scratch_free(scratch *s)
{
    free(s->x); free(s->xb); free(s->q); free(s->k); free(s->v); free(s->att);
    free(s->ff1); free(s->ff2); free(s->iq); free(s->ik);
    free(s->tok_seq); free(s->tok_pos); free(s->xl); free(s->lg);
    free(s->moe_logit); free(s->moe_wt); free(s->moe_in); free(s->moe_out); free(s->moe_sum);
    free(s->moe_sel); free(s->moe_tok);
    memset(s, 0, sizeof *s);
}

void engine_free(engine *e)
{
    if (!e)
        return;
#ifdef SPARSED_CUDA
    cuda_backend_free(e->cuda);
#endif
    scratch_free(&e->s);
    tpool_free(e->pool);
    free(e->rope_freq);
    tokenizer_free(e->tok);
    model_free(&e->m);
    gguf_close(e->gf);
    free(e);
}

kv_layout engine_kv_layout(const engine *e)
{
    kv_layout l = {
        .n_layers = e->m.n_layers,
        .n_kv_heads = e->m.n_kv_heads,
        .head_dim = e->m.head_dim,
        .block_size = e->attn.block_size,
        .idx_dim = e->m.idx_dim,
        .summaries = e->attn.indexer != IDX_MSA,
    };
    /* window layers are marked; whether they get pages of their own (window_pages) is the pool's call */
    for (int i = 0; i < e->m.n_layers && i < KV_MAX_LAYERS; i++)
        if (e->m.layers[i].swa && e->m.swa_window > 0) {
            l.window = e->m.swa_window;
            l.win_mask[i / 64] |= 1ull << (i % 64);
        }
    return l;
}

int engine_kv_host_storage(const engine *e)
{
    return e->cuda == NULL;
}

size_t engine_kv_page_bytes(const engine *e)
{
    kv_layout l = engine_kv_layout(e);
#ifdef SPARSED_CUDA
    if (e->cuda)
        return cuda_backend_page_bytes(e->cuda, &l);
#endif
    return kv_page_bytes(&l);
}

int engine_reserve(engine *e, kv_pool *pool, int max_tokens, int max_rows, int max_seqs, char *err,
                   size_t errlen)
{
#ifdef SPARSED_CUDA
    if (e->cuda)
        return cuda_backend_reserve(e->cuda, pool, max_tokens, max_rows, max_seqs, err, errlen);
#endif
    (void)e, (void)pool, (void)max_tokens, (void)max_rows, (void)max_seqs, (void)err, (void)errlen;
    return 0;
}

int engine_device_memory(const engine *e, size_t *free_bytes, size_t *total_bytes)
{
#ifdef SPARSED_CUDA
    if (e->cuda)
        return cuda_backend_memory(e->cuda, free_bytes, total_bytes);
#endif
    (void)e, (void)free_bytes, (void)total_bytes;
    return -1;
}

int engine_tokenize(const engine *e, const char *text, size_t len, int add_bos,
                    int parse_special, int32_t *out, int max)
{
    return tokenizer_encode(e->tok, text, len, add_bos, parse_special, out, max);
}

int engine_token_bytes(const engine *e, int32_t tok, int show_special, char *buf, int len)
{
    return tokenizer_token_bytes(e->tok, tok, show_special, buf, len);
}

int engine_is_eog(const engine *e, int32_t tok)
{
    return tokenizer_is_eog(e->tok, tok);
}
