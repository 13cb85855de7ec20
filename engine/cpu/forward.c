/* The llama-family forward pass over a ragged batch, on the CPU.  All new
 * tokens of all sequences go through each weight matrix together; K/V go
 * to their pages before attention, which then reads only pages. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/internal.h"
#include "engine/quant.h"
#ifdef SPARSED_CUDA
#include "engine/cuda/cuda_backend.h"
#endif

static int grow(float **p, size_t n)
{
    float *q = realloc(*p, n * sizeof(float));
    if (!q)
        return -1;
    *p = q;
    return 0;
}

static int scratch_reserve(engine *e, int T, int rows)
{
    scratch *s = &e->s;
    const model *m = &e->m;
    if (T > s->cap) {
        size_t E = m->n_embd, QD = (size_t)m->n_heads * m->head_dim,
               KD = (size_t)m->n_kv_heads * m->head_dim, F = m->n_ff > m->n_ff_exp ? m->n_ff : m->n_ff_exp;
        size_t IQ = (size_t)m->idx_heads * m->idx_dim, X = m->n_expert, K = m->n_expert_used;
        if (grow(&s->x, T * E) || grow(&s->xb, T * (E > QD ? E : QD)) || grow(&s->q, T * QD) ||
            grow(&s->k, T * KD) || grow(&s->v, T * KD) || grow(&s->att, T * QD) ||
            grow(&s->ff1, T * F) || grow(&s->ff2, T * F) || grow(&s->iq, T * (IQ ? IQ : 1)) ||
            grow(&s->ik, T * (m->idx_dim ? m->idx_dim : 1)))
            return -1;
        if (X && (grow(&s->moe_logit, T * X) || grow(&s->moe_wt, T * K) || grow(&s->moe_in, T * E) ||
                  grow(&s->moe_out, T * E) || grow(&s->moe_sum, T * E)))
            return -1;
        if (X) {
            int32_t *p = realloc(s->moe_sel, (size_t)T * K * sizeof *p);
            if (!p)
                return -1;
            s->moe_sel = p;
            if (!(p = realloc(s->moe_tok, (size_t)T * K * sizeof *p)))
                return -1;
            s->moe_tok = p;
        }
        int32_t *a = realloc(s->tok_seq, (size_t)T * sizeof *a);
        if (!a)
            return -1;
        s->tok_seq = a;
        a = realloc(s->tok_pos, (size_t)T * sizeof *a);
        if (!a)
            return -1;
        s->tok_pos = a;
        s->cap = T;
    }
    if (rows > s->logit_cap) {
        if (grow(&s->xl, (size_t)rows * m->n_embd))
            return -1;
        s->logit_cap = rows;
    }
    return 0;
}

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    float ss = dot_f32(x, x, n) / (float)n;
    float r = 1.0f / sqrtf(ss + eps);
    for (int i = 0; i < n; i++)
        out[i] = x[i] * r * w[i];
}

/* Rotates the first rope_dim dims of each of n heads at position pos, by
 * the angles of layer l's kind (global or sliding-window). */
static void rope(const engine *e, int l, float *x, int n, int head_dim, int pos)
{
    const model *m = &e->m;
    int half = m->rope_dim / 2, swa = m->layers[l].swa;
    const float *freq = swa ? e->rope_freq_swa : e->rope_freq;
    float ms = swa ? e->rope_mscale_swa : e->rope_mscale;
    for (int i = 0; i < half; i++) {
        float a = (float)pos * freq[i];
        float c = cosf(a) * ms, s = sinf(a) * ms;
        for (int h = 0; h < n; h++) {
            float *v = x + (size_t)h * head_dim;
            int i0 = m->rope_neox ? i : 2 * i, i1 = m->rope_neox ? i + half : 2 * i + 1;
            float x0 = v[i0], x1 = v[i1];
            v[i0] = x0 * c - x1 * s;
            v[i1] = x0 * s + x1 * c;
        }
    }
}

int engine_batch_rows(const engine_batch *b)
{
    int rows = 0;
    for (int i = 0; i < b->n_seqs; i++)
        rows += b->seqs[i].logits == 2 ? b->seqs[i].n_new : b->seqs[i].logits == 1;
    return rows;
}

static int check_batch(const engine *e, kv_pool *pool, const engine_batch *b, char *err, size_t errlen)
{
    kv_layout want = engine_kv_layout(e);
    const kv_layout *have = kv_pool_layout(pool);
    want.window_pages = have->window_pages; /* any number, or none */
    if (memcmp(&want, have, sizeof want)) {
        snprintf(err, errlen, "engine: the KV pool's layout does not match the model");
        return -1;
    }
    if (b->n_tokens < 1 || b->n_seqs < 1 || !b->tokens || !b->seqs) {
        snprintf(err, errlen, "engine: empty batch");
        return -1;
    }
    int B = e->attn.block_size, covered = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        const engine_seq *s = &b->seqs[i];
        if (s->n_new < 1 || s->n_past < 0 || s->tok_offset != covered ||
            s->n_past + s->n_new > s->n_blocks * B || !s->blocks || s->logits < 0 || s->logits > 2) {
            snprintf(err, errlen, "engine: sequence %d of the batch is inconsistent", i);
            return -1;
        }
        covered += s->n_new;
        for (int k = 0; k < s->n_blocks; k++)
            if (s->blocks[k] < 0 || s->blocks[k] >= kv_pool_n_pages(pool)) {
                snprintf(err, errlen, "engine: sequence %d has page %d outside the pool", i, s->blocks[k]);
                return -1;
            }
        const kv_pool *wg = kv_pool_window(pool);
        if (!wg)
            continue;
        if (!s->wblocks) {
            snprintf(err, errlen, "engine: sequence %d has no window pages", i);
            return -1;
        }
        /* the window pages the new tokens write and read: from the first one's window on */
        int lo = s->n_past - have->window + 1, k0 = lo > 0 ? lo / B : 0;
        for (int k = k0; k < (s->n_past + s->n_new + B - 1) / B; k++)
            if (s->wblocks[k] < 0 || s->wblocks[k] >= kv_pool_n_pages(wg)) {
                snprintf(err, errlen, "engine: sequence %d has window page %d outside the pool", i, s->wblocks[k]);
                return -1;
            }
    }
    if (covered != b->n_tokens) {
        snprintf(err, errlen, "engine: sequences cover %d tokens, batch has %d", covered, b->n_tokens);
        return -1;
    }
    for (int t = 0; t < b->n_tokens; t++)
        if (b->tokens[t] < 0 || b->tokens[t] >= e->m.n_vocab) {
            snprintf(err, errlen, "engine: token id %d is outside the vocabulary (%d)", b->tokens[t],
                     e->m.n_vocab);
            return -1;
        }
    return 0;
}

/* Writes token t's K, V (and index key / key summaries) into its page. */
static void store_kv(engine *e, kv_pool *pool, const engine_batch *b, int l, int t)
{
    const model *m = &e->m;
    int D = m->head_dim, Hkv = m->n_kv_heads, B = e->attn.block_size;
    const engine_seq *sq = &b->seqs[e->s.tok_seq[t]];
    int pos = e->s.tok_pos[t];
    int32_t page = seq_table(pool, sq, l)[pos / B];
    int slot = pos % B;
    float *K = kv_page_k(pool, page, l), *V = kv_page_v(pool, page, l);
    float *S = kv_page_summary(pool, page, l);
    for (int h = 0; h < Hkv; h++) {
        const float *kh = e->s.k + ((size_t)t * Hkv + h) * D;
        memcpy(K + ((size_t)h * B + slot) * D, kh, (size_t)D * sizeof(float));
        memcpy(V + ((size_t)h * B + slot) * D, e->s.v + ((size_t)t * Hkv + h) * D,
               (size_t)D * sizeof(float));
        if (S)
            summary_update(S + (size_t)h * 3 * D, kh, slot, D);
    }
    float *I = kv_page_idx(pool, page, l);
    if (I && m->layers[l].has_indexer)
        memcpy(I + (size_t)slot * m->idx_dim, e->s.ik + (size_t)t * m->idx_dim,
               (size_t)m->idx_dim * sizeof(float));
}

static void add_bias(float *x, const float *bias, int T, int n)
{
    if (!bias)
        return;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < n; i++)
            x[(size_t)t * n + i] += bias[i];
}

/* x += rmsnorm(y) * w over T rows, or x += y without a post-norm. */
static void residual_add(float *x, float *y, const float *w, int T, int E, float eps)
{
    for (int t = 0; t < T; t++) {
        float *yt = y + (size_t)t * E, *xt = x + (size_t)t * E;
        if (w)
            rmsnorm(yt, yt, w, E, eps);
        for (int i = 0; i < E; i++)
            xt[i] += yt[i];
    }
}

/* tanh-approximated GELU, as Gemma is trained with */
static float gelu(float x)
{
    return 0.5f * x * (1.0f + tanhf(0.7978845608f * (x + 0.044715f * x * x * x)));
}

/* The gated FFN on n rows of in (E wide) through gate, up (F rows each)
 * and down into out: out = down (act(gate in) * up in). */
static void ffn(engine *e, const wmat *gate, const wmat *up, const wmat *down, const float *in, int n, int F,
                float *out)
{
    scratch *s = &e->s;
    matmul(e->pool, s->ff1, gate, in, n);
    matmul(e->pool, s->ff2, up, in, n);
    for (size_t i = 0; i < (size_t)n * F; i++) {
        float g = s->ff1[i];
        s->ff1[i] = (e->m.ffn_gelu ? gelu(g) : g / (1.0f + expf(-g))) * s->ff2[i];
    }
    matmul(e->pool, out, down, s->ff1, n);
}

/* A mixture of experts on the T rows of s->xb, in place: each token's
 * n_expert_used experts of highest router logit (ties to the lower one),
 * weighed by the softmax of those logits; each expert then runs once on
 * the rows of all the tokens that chose it. */
static void moe_ffn(engine *e, const layer_w *w, int T)
{
    const model *m = &e->m;
    scratch *s = &e->s;
    int E = m->n_embd, X = m->n_expert, K = m->n_expert_used, F = m->n_ff_exp;
    matmul(e->pool, s->moe_logit, &w->gate_inp, s->xb, T);
    for (int t = 0; t < T; t++) {
        const float *lg = s->moe_logit + (size_t)t * X;
        int32_t *sel = s->moe_sel + (size_t)t * K;
        float *wt = s->moe_wt + (size_t)t * K;
        for (int j = 0; j < K; j++) {   /* K is small: selection by repeated max */
            int best = -1;
            for (int x = 0; x < X; x++) {
                int taken = 0;
                for (int i = 0; i < j; i++)
                    taken |= sel[i] == x;
                if (!taken && (best < 0 || lg[x] > lg[best]))
                    best = x;
            }
            sel[j] = best;
        }
        float mx = lg[sel[0]], sum = 0.0f;
        for (int j = 0; j < K; j++)
            sum += wt[j] = expf(lg[sel[j]] - mx);
        for (int j = 0; j < K; j++)
            wt[j] /= sum;
    }
    memset(s->moe_sum, 0, (size_t)T * E * sizeof(float));
    for (int x = 0; x < X; x++) {
        int n = 0;
        for (int i = 0; i < T * K; i++)
            if (s->moe_sel[i] == x) {
                s->moe_tok[n] = i;
                memcpy(s->moe_in + (size_t)n * E, s->xb + (size_t)(i / K) * E, (size_t)E * sizeof(float));
                n++;
            }
        if (!n)
            continue;
        wmat g = wmat_rows(w->gate_exps, x * F, F), u = wmat_rows(w->up_exps, x * F, F);
        wmat d = wmat_rows(w->down_exps, x * E, E);
        ffn(e, &g, &u, &d, s->moe_in, n, F, s->moe_out);
        for (int r = 0; r < n; r++) {
            int i = s->moe_tok[r];
            float wt = s->moe_wt[i], *acc = s->moe_sum + (size_t)(i / K) * E;
            const float *y = s->moe_out + (size_t)r * E;
            for (int c = 0; c < E; c++)
                acc[c] += wt * y[c];
        }
    }
    memcpy(s->xb, s->moe_sum, (size_t)T * E * sizeof(float));
}

static void head_norm(float *x, const float *w, int n_heads, int D, float eps)
{
    if (!w)
        return;
    for (int h = 0; h < n_heads; h++)
        rmsnorm(x + (size_t)h * D, x + (size_t)h * D, w, D, eps);
}

int engine_step(engine *e, kv_pool *pool, const engine_batch *b, float *logits,
                char *err, size_t errlen)
{
    if (check_batch(e, pool, b, err, errlen))
        return -1;
#ifdef SPARSED_CUDA
    if (e->cuda)
        return cuda_backend_step(e->cuda, pool, b, logits, NULL, err, errlen);
#endif
    const model *m = &e->m;
    int T = b->n_tokens, rows = engine_batch_rows(b);
    if (scratch_reserve(e, T, rows)) {
        snprintf(err, errlen, "engine: out of memory for a batch of %d tokens", T);
        return -1;
    }
    scratch *s = &e->s;
    for (int i = 0; i < b->n_seqs; i++)
        for (int k = 0; k < b->seqs[i].n_new; k++) {
            s->tok_seq[b->seqs[i].tok_offset + k] = i;
            s->tok_pos[b->seqs[i].tok_offset + k] = b->seqs[i].n_past + k;
        }

    int E = m->n_embd, D = m->head_dim, Hq = m->n_heads, Hkv = m->n_kv_heads;
    int QD = Hq * D, KD = Hkv * D, F = m->n_ff;
    for (int t = 0; t < T; t++) {
        float *xt = s->x + (size_t)t * E;
        model_embed(m, b->tokens[t], xt);
        if (m->embd_scale != 1.0f)
            for (int i = 0; i < E; i++)
                xt[i] *= m->embd_scale;
    }

    for (int l = 0; l < m->n_layers; l++) {
        const layer_w *w = &m->layers[l];
        for (int t = 0; t < T; t++)
            rmsnorm(s->xb + (size_t)t * E, s->x + (size_t)t * E, w->attn_norm, E, m->eps);
        matmul(e->pool, s->q, &w->q, s->xb, T);
        matmul(e->pool, s->k, &w->k, s->xb, T);
        matmul(e->pool, s->v, &w->v, s->xb, T);
        add_bias(s->q, w->q_bias, T, QD);
        add_bias(s->k, w->k_bias, T, KD);
        add_bias(s->v, w->v_bias, T, KD);
        if (w->has_indexer) {
            matmul(e->pool, s->iq, &w->iq, s->xb, T);
            matmul(e->pool, s->ik, &w->ik, s->xb, T);
        }
        for (int t = 0; t < T; t++) {
            int pos = s->tok_pos[t];
            float *qt = s->q + (size_t)t * QD, *kt = s->k + (size_t)t * KD;
            head_norm(qt, w->q_norm, Hq, D, m->eps);
            head_norm(kt, w->k_norm, Hkv, D, m->eps);
            rope(e, l, qt, Hq, D, pos);
            rope(e, l, kt, Hkv, D, pos);
            if (e->kv_fp8_ref)   /* as the cuda engine's fp8 pages hold them */
                for (int h = 0; h < Hkv; h++) {
                    fp8_row_round(kt + (size_t)h * D, D);
                    fp8_row_round(s->v + ((size_t)t * Hkv + h) * D, D);
                }
            if (w->has_indexer) {
                float *iq = s->iq + (size_t)t * m->idx_heads * m->idx_dim;
                float *ik = s->ik + (size_t)t * m->idx_dim;
                head_norm(iq, w->iq_norm, m->idx_heads, m->idx_dim, m->eps);
                head_norm(ik, w->ik_norm, 1, m->idx_dim, m->eps);
                rope(e, l, iq, m->idx_heads, m->idx_dim, pos);
                rope(e, l, ik, 1, m->idx_dim, pos);
            }
            store_kv(e, pool, b, l, t);
        }
        attention_layer(e, pool, b, l, s->q, w->has_indexer ? s->iq : NULL, s->att);
        matmul(e->pool, s->xb, &w->o, s->att, T);
        residual_add(s->x, s->xb, w->attn_post_norm, T, E, m->eps);

        for (int t = 0; t < T; t++)
            rmsnorm(s->xb + (size_t)t * E, s->x + (size_t)t * E, w->ffn_norm, E, m->eps);
        if (m->n_expert)
            moe_ffn(e, w, T);
        else
            ffn(e, &w->gate, &w->up, &w->down, s->xb, T, F, s->xb);
        residual_add(s->x, s->xb, w->ffn_post_norm, T, E, m->eps);
    }

    /* final norm and logits only for the rows that asked */
    int r = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        const engine_seq *sq = &b->seqs[i];
        int first = sq->logits == 2 ? 0 : sq->n_new - 1;
        if (!sq->logits)
            continue;
        for (int k = first; k < sq->n_new; k++, r++)
            rmsnorm(s->xl + (size_t)r * E, s->x + (size_t)(sq->tok_offset + k) * E, m->out_norm, E,
                    m->eps);
    }
    if (rows)
        matmul(e->pool, logits, &m->output, s->xl, rows);
    if (m->logit_softcap > 0.0f)
        for (size_t i = 0; i < (size_t)rows * m->n_vocab; i++)
            logits[i] = m->logit_softcap * tanhf(logits[i] / m->logit_softcap);
    return rows;
}

/* engine_step into the engine's own logits buffer, kept between steps (a
 * server steps every few ms), for the callers that pick on the host. */
static int step_to_scratch(engine *e, kv_pool *pool, const engine_batch *b, const float **logits, char *err,
                           size_t errlen)
{
    scratch *s = &e->s;
    int rows = engine_batch_rows(b);
    if (rows > s->lg_cap) {
        if (grow(&s->lg, (size_t)rows * e->m.n_vocab)) {
            snprintf(err, errlen, "engine: out of memory for %d logit rows", rows);
            return -1;
        }
        s->lg_cap = rows;
    }
    *logits = s->lg;
    return engine_step(e, pool, b, s->lg, err, errlen);
}

int engine_step_greedy(engine *e, kv_pool *pool, const engine_batch *b, int32_t *ids,
                       char *err, size_t errlen)
{
    if (check_batch(e, pool, b, err, errlen))
        return -1;
#ifdef SPARSED_CUDA
    if (e->cuda)
        return cuda_backend_step(e->cuda, pool, b, NULL, ids, err, errlen);
#endif
    int V = e->m.n_vocab;
    const float *logits;
    int n = step_to_scratch(e, pool, b, &logits, err, errlen);
    for (int r = 0; r < n; r++) {
        const float *x = logits + (size_t)r * V;
        int best = 0;
        for (int i = 1; i < V; i++)
            if (x[i] > x[best])
                best = i;
        ids[r] = best;
    }
    return n;
}

/* Rows must be sampled, not scored: a prompt-logprob row has no draw. */
static int check_sample_rows(const engine_batch *b, const engine_sample *rows, char *err, size_t errlen)
{
    int r = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        if (b->seqs[i].logits == 2) {
            snprintf(err, errlen, "engine: sampling in the step needs one logit row per sequence");
            return -1;
        }
        if (!b->seqs[i].logits)
            continue;
        const engine_sample *p = &rows[r++];
        if (p->top_k > ENGINE_SAMPLE_MAX_K || p->n_logprobs > ENGINE_MAX_LOGPROBS || !(p->u >= 0 && p->u < 1)) {
            snprintf(err, errlen, "engine: sampling row %d: top_k %d, logprobs %d or u %g out of range", r - 1,
                     p->top_k, p->n_logprobs, p->u);
            return -1;
        }
    }
    return 0;
}

int engine_step_sample(engine *e, kv_pool *pool, const engine_batch *b, const engine_sample *rows,
                       engine_sampled *out, char *err, size_t errlen)
{
    if (check_batch(e, pool, b, err, errlen) || check_sample_rows(b, rows, err, errlen))
        return -1;
#ifdef SPARSED_CUDA
    if (e->cuda)
        return cuda_backend_step_sample(e->cuda, pool, b, rows, out, err, errlen);
#endif
    int V = e->m.n_vocab;
    const float *logits;
    int n = step_to_scratch(e, pool, b, &logits, err, errlen);
    for (int r = 0; r < n; r++) {
        const float *x = logits + (size_t)r * V;
        const engine_sample *p = &rows[r];
        sampler_params sp;
        sampler_params_default(&sp);
        sp.temperature = p->temperature;
        sp.top_p = p->top_p;
        sp.top_k = p->top_k;
        sp.min_p = p->min_p;
        out[r].id = sampler_pick(&sp, x, V, p->u);
        if (p->n_logprobs >= 0)
            out[r].logprob = logprobs_top(x, V, out[r].id, p->n_logprobs, out[r].top_ids, out[r].top_lp);
    }
    return n;
}
