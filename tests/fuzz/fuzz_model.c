/* libFuzzer target for the model loader (engine/model.c) on top of the
 * GGUF reader: any input is either refused, by gguf_open_mem or by
 * model_load, with one non-empty line of error, or it loads a model that
 * the forward pass can trust:
 *   - every weight matrix's rows (rows * row_bytes) and every F32 vector
 *     the loader hands out lie inside the input, and the first and last
 *     row of each matrix dequantize (ASan checks the reads);
 *   - model_rope_table gives rope_dim/2 finite angles and a finite cos/sin
 *     scale, whatever the RoPE scaling keys and divisor tensors
 *     (rope_freqs.weight, Phi-3's rope_factors_long/short) say;
 *   - Gemma's embedding and query scales and soft caps are finite, and a
 *     sliding-window layer has a window;
 *   - model_embed reads the first, a middle and the last vocabulary row;
 *   - model_free releases everything (LeakSanitizer checks).
 * Seeds: tests/fuzz/corpus/model (tests/fuzz/mkcorpus_model.py).  With
 * FUZZ_MODEL_VERBOSE set it says on stderr what became of each input.
 * Its first findings (two-line messages, a 400 GB calloc from one key,
 * int overflows of shape products, RoPE values giving infinite angles)
 * are fixed in model.c and kept as seeds in tests/fuzz/corpus/model. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/quant.h"

/* traps, naming the check that failed */
#define CHECK(c) \
    do { \
        if (!(c)) { \
            fprintf(stderr, "fuzz_model.c:%d: check failed: %s\n", __LINE__, #c); \
            __builtin_trap(); \
        } \
    } while (0)

static volatile uint32_t sink;
static int verbose = -1;
static const uint8_t *in_lo, *in_hi;

static void check_err(const char *err)
{
    if (!err[0] || memchr(err, '\n', strlen(err)))
        fprintf(stderr, "fuzz_model: error message not one non-empty line: \"%s\"\n", err);
    CHECK(err[0] && !memchr(err, '\n', strlen(err)));
}

/* [p, p + n) lies in the input */
static void check_in(const void *p, uint64_t n)
{
    const uint8_t *b = p;
    CHECK(b && b >= in_lo && b <= in_hi && n <= (uint64_t)(in_hi - b));
}

/* A vector the loader returned: F32 data in the input, or its own copy. */
static void check_vec(const float *v, int n)
{
    if (!v) return;
    const uint8_t *b = (const uint8_t *)v;
    if (b >= in_lo && b < in_hi) check_in(v, (uint64_t)n * sizeof *v);
    else sink += *(const uint32_t *)(const void *)&v[n - 1];   /* ASan: n floats allocated */
}

static void check_mat(const wmat *w, int required)
{
    if (!w->data) {
        CHECK(!required);
        return;
    }
    CHECK(w->rows >= 1 && w->cols >= 1 && w->row_bytes == ggml_row_size(w->type, w->cols));
    check_in(w->data, (uint64_t)w->rows * w->row_bytes);
    float *row = malloc((size_t)w->cols * sizeof *row);
    if (!row) return;
    for (int r = 0; r < 2; r++) {
        int i = r ? w->rows - 1 : 0;
        dequant_row(w->type, (const uint8_t *)w->data + (size_t)i * w->row_bytes, row, w->cols);
        uint32_t bits;
        memcpy(&bits, &row[w->cols - 1], 4);
        sink += bits;
    }
    free(row);
}

static void check_model(const model *m)
{
    CHECK(m->n_vocab >= 1 && m->n_embd >= 1 && m->n_layers >= 1 && m->head_dim >= 2 && m->layers);
    CHECK(m->rope_dim >= 0 && m->rope_dim <= m->head_dim && m->rope_dim % 2 == 0);
    int E = m->n_embd, D = m->head_dim;
    check_mat(&m->tok_embd, 1);
    check_mat(&m->output, 1);
    CHECK(m->tok_embd.cols == E && m->tok_embd.rows == m->n_vocab);
    CHECK(m->output.cols == E && m->output.rows == m->n_vocab);
    check_vec(m->out_norm, E);
    check_vec(m->rope_freq_factors, m->rope_dim / 2);
    check_vec(m->rope_long_factors, m->rope_dim / 2);
    check_vec(m->rope_short_factors, m->rope_dim / 2);
    /* Gemma's: finite scales and caps, a window only with a width */
    CHECK(isfinite(m->embd_scale) && isfinite(m->attn_scale) && m->attn_scale > 0);
    CHECK(m->attn_softcap >= 0 && isfinite(m->attn_softcap) && m->logit_softcap >= 0 && isfinite(m->logit_softcap));
    CHECK(m->swa_window >= 0);
    for (int l = 0; l < m->n_layers; l++) {
        const layer_w *w = &m->layers[l];
        CHECK(w->attn_norm && w->ffn_norm);
        check_vec(w->attn_norm, E);
        check_vec(w->ffn_norm, E);
        check_mat(&w->q, 1);
        check_mat(&w->k, 1);
        check_mat(&w->v, 1);
        check_mat(&w->o, 1);
        check_mat(&w->gate, !m->n_expert);
        check_mat(&w->up, !m->n_expert);
        check_mat(&w->down, !m->n_expert);
        /* a mixture of experts: the router, each expert's rows in the file */
        CHECK(!m->n_expert || (m->n_expert_used >= 1 && m->n_expert_used <= m->n_expert && m->n_ff_exp >= 1));
        check_mat(&w->gate_inp, m->n_expert);
        check_mat(&w->gate_exps, m->n_expert);
        check_mat(&w->up_exps, m->n_expert);
        check_mat(&w->down_exps, m->n_expert);
        CHECK(!m->n_expert || (w->gate_inp.rows == m->n_expert && w->gate_inp.cols == E &&
                               w->gate_exps.rows == (int64_t)m->n_expert * m->n_ff_exp &&
                               w->down_exps.rows == (int64_t)m->n_expert * E && w->down_exps.cols == m->n_ff_exp));
        CHECK(w->q.rows == (int64_t)m->n_heads * D && w->k.rows == (int64_t)m->n_kv_heads * D);
        CHECK(w->v.rows == w->k.rows && w->o.cols == w->q.rows && w->o.rows == E);
        check_vec(w->q_bias, w->q.rows);
        check_vec(w->k_bias, w->k.rows);
        check_vec(w->v_bias, w->v.rows);
        check_vec(w->q_norm, D);
        check_vec(w->k_norm, D);
        check_vec(w->attn_post_norm, E);
        check_vec(w->ffn_post_norm, E);
        CHECK(!w->swa || m->swa_window > 0);
        if (w->has_indexer) {
            check_mat(&w->iq, 1);
            check_mat(&w->ik, 1);
            check_vec(w->iq_norm, m->idx_dim);
            check_vec(w->ik_norm, m->idx_dim);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (verbose < 0)
        verbose = getenv("FUZZ_MODEL_VERBOSE") != NULL;
    char err[256] = "";
    gguf_file *f = gguf_open_mem(data, size, err, sizeof err);
    if (!f) {
        if (verbose) fprintf(stderr, "refused: %s\n", err);
        check_err(err);
        return 0;
    }
    in_lo = data;
    in_hi = data + size;
    model m;
    err[0] = '\0';
    if (model_load(&m, f, err, sizeof err) != 0) {
        if (verbose) fprintf(stderr, "refused: %s\n", err);
        check_err(err);
        gguf_close(f);
        return 0;
    }
    check_model(&m);
    if (verbose)
        fprintf(stderr, "loaded: %s, %d layers, embd %d, vocab %d, heads %d/%d x %d, rope %d "
                "scaling %d factor %g attn %g orig ctx %d, divisors %d%d%d\n", m.arch, m.n_layers,
                m.n_embd, m.n_vocab, m.n_heads, m.n_kv_heads, m.head_dim, m.rope_dim, m.rope_scaling,
                m.rope_factor, m.rope_attn_factor, m.rope_orig_ctx, m.rope_freq_factors != NULL,
                m.rope_long_factors != NULL, m.rope_short_factors != NULL);

    /* the table for the context trained and for one past it (Phi-3's
     * long divisors serve the latter) */
    int half = m.rope_dim / 2;
    float *freq = malloc((size_t)(half > 0 ? half : 1) * sizeof *freq);
    if (freq) {
        int ctx[2] = {m.n_ctx, m.rope_orig_ctx < INT32_MAX ? m.rope_orig_ctx + 1 : m.rope_orig_ctx};
        for (int c = 0; c < 4; c++) {     /* global and sliding-window layers */
            float scale = model_rope_table(&m, ctx[c / 2], c & 1, freq);
            CHECK(isfinite(scale));
            for (int i = 0; i < half; i++) CHECK(isfinite(freq[i]));
        }
        free(freq);
    }

    float *row = malloc((size_t)m.n_embd * sizeof *row);
    if (row) {
        int32_t toks[3] = {0, m.n_vocab / 2, m.n_vocab - 1};
        for (int i = 0; i < 3; i++) {
            model_embed(&m, toks[i], row);
            uint32_t bits;
            memcpy(&bits, &row[m.n_embd - 1], 4);
            sink += bits;
        }
        free(row);
    }
    model_free(&m);
    gguf_close(f);
    return 0;
}
