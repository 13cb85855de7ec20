/* Paged attention on the CPU, dense or block-sparse.  One task per (token,
 * KV group): the group's query heads walk the chosen blocks together, so
 * each K/V block is read once per group, with an online softmax updated a
 * block at a time. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/internal.h"
#include "engine/quant.h"

typedef struct {
    engine *e;
    kv_pool *pool;
    const engine_batch *b;
    int l;
    const float *q, *iq;
    float *out;
    /* MSA: block scores of every group, scored ahead for the tokens whose
     * selection needs them (off[t] into scores, SIZE_MAX otherwise) */
    float *scores;
    size_t *off;
    int chunks;             /* scoring tasks per token */
} attn_job;

enum { SCORE_CHUNK = 32 };  /* blocks per scoring task */


static void attn_task(void *ctx, int i, int thread)
{
    (void)thread;
    attn_job *j = ctx;
    engine *e = j->e;
    const model *m = &e->m;
    int Hq = m->n_heads, Hkv = m->n_kv_heads, D = m->head_dim;
    int hpg = Hq / Hkv, B = e->attn.block_size;
    int t = i / Hkv, g = i % Hkv;
    const engine_seq *sq = &j->b->seqs[e->s.tok_seq[t]];
    int pos = e->s.tok_pos[t];
    int last = pos / B;
    const float *q = j->q + (size_t)t * Hq * D + (size_t)g * hpg * D;
    float scale = m->attn_scale, cap = m->attn_softcap;
    /* a sliding-window layer sees positions lo..pos */
    int lo = m->layers[j->l].swa && pos >= m->swa_window ? pos - m->swa_window + 1 : 0;

    /* scratch: block list, per-head running max/sum, accumulators, scores */
    size_t nb = (size_t)last + 1;
    float *buf = cpu_scratch(SCRATCH_ATTN, sizeof(float) * (nb + 2 * (size_t)hpg + (size_t)hpg * D + (size_t)B));
    int32_t *sel = (int32_t *)buf;
    float *mx = buf + nb, *sum = mx + hpg, *acc = sum + hpg, *sc = acc + (size_t)hpg * D;

    int n;
    if (engine_layer_sparse(e, j->l, pos + 1)) {
        sel_args a = {
            .pool = j->pool, .cfg = &e->attn, .layer = j->l, .blocks = sq->blocks,
            .pos = pos, .group = g, .q = q, .n_q = hpg, .head_dim = D,
            .iq = j->iq ? j->iq + (size_t)t * m->idx_heads * m->idx_dim + (size_t)g * m->idx_dim : NULL,
            .idx_dim = m->idx_dim,
            .scores = j->scores && j->off[t] != SIZE_MAX ? j->scores + j->off[t] + (size_t)g * nb : NULL,
        };
        n = sparse_select(&a, sel);
    } else {
        n = last + 1 - lo / B;
        for (int k = 0; k < n; k++)
            sel[k] = lo / B + k;
    }

    for (int h = 0; h < hpg; h++) {
        mx[h] = -INFINITY;
        sum[h] = 0.0f;
    }
    memset(acc, 0, (size_t)hpg * D * sizeof(float));
    const int32_t *table = seq_table(j->pool, sq, j->l);
    for (int k = 0; k < n; k++) {
        int bi = sel[k];
        int32_t page = table[bi];
        const float *K = kv_page_k(j->pool, page, j->l) + (size_t)g * B * D;
        const float *V = kv_page_v(j->pool, page, j->l) + (size_t)g * B * D;
        int slots = bi == last ? pos - bi * B + 1 : B;
        int s0 = lo > bi * B ? lo - bi * B : 0;     /* slots before the window */
        for (int h = 0; h < hpg; h++) {
            const float *qh = q + (size_t)h * D;
            float bm = -INFINITY;
            for (int s = s0; s < slots; s++) {
                sc[s] = dot_f32(qh, K + (size_t)s * D, D) * scale;
                if (cap > 0.0f)
                    sc[s] = cap * tanhf(sc[s] / cap);
                bm = sc[s] > bm ? sc[s] : bm;
            }
            float nm = bm > mx[h] ? bm : mx[h];
            float corr = expf(mx[h] - nm);
            float *ah = acc + (size_t)h * D;
            if (corr != 1.0f) {
                for (int d = 0; d < D; d++)
                    ah[d] *= corr;
                sum[h] *= corr;
            }
            for (int s = s0; s < slots; s++) {
                float p = expf(sc[s] - nm);
                sum[h] += p;
                axpy_f32(ah, p, V + (size_t)s * D, D);
            }
            mx[h] = nm;
        }
    }
    float *o = j->out + (size_t)t * Hq * D + (size_t)g * hpg * D;
    for (int h = 0; h < hpg; h++) {
        float inv = 1.0f / sum[h];
        for (int d = 0; d < D; d++)
            o[(size_t)h * D + d] = acc[(size_t)h * D + d] * inv;
    }
}

/* One token's MSA scores for all groups over a chunk of its blocks. */
static void score_task(void *ctx, int i, int thread)
{
    (void)thread;
    attn_job *j = ctx;
    engine *e = j->e;
    int t = i / j->chunks, b0 = i % j->chunks * SCORE_CHUNK;
    int pos = e->s.tok_pos[t], nb = pos / e->attn.block_size + 1;
    if (j->off[t] == SIZE_MAX || b0 >= nb)
        return;
    sel_args a = {
        .pool = j->pool, .cfg = &e->attn, .layer = j->l, .blocks = j->b->seqs[e->s.tok_seq[t]].blocks,
        .pos = pos, .iq = j->iq + (size_t)t * e->m.idx_heads * e->m.idx_dim, .idx_dim = e->m.idx_dim,
    };
    sparse_score_msa(&a, e->m.n_kv_heads, b0, nb - b0 < SCORE_CHUNK ? nb : b0 + SCORE_CHUNK,
                     j->scores + j->off[t]);
}

/* MSA scoring ahead of attention: the index keys are read once for all
 * groups (one task per group would read them once per group), in tasks
 * over block ranges so that one decode token still uses every thread.
 * Without memory for it each selection scores its own group. */
static void score_ahead(attn_job *j)
{
    engine *e = j->e;
    int T = j->b->n_tokens, B = e->attn.block_size, max_nb = 0;
    size_t total = 0;
    j->off = malloc((size_t)T * sizeof *j->off);
    if (!j->off)
        return;
    for (int t = 0; t < T; t++) {
        int pos = e->s.tok_pos[t];
        j->off[t] = SIZE_MAX;
        int sink, first_local;
        if (engine_layer_sparse(e, j->l, pos + 1) &&
            attn_candidates(&e->attn, pos, &sink, &first_local) > e->attn.top_k_blocks) {
            j->off[t] = total;
            total += (size_t)e->m.n_kv_heads * (pos / B + 1);
            max_nb = pos / B + 1 > max_nb ? pos / B + 1 : max_nb;
        }
    }
    if (!total || !(j->scores = malloc(total * sizeof(float)))) {
        free(j->off);
        j->off = NULL;
        return;
    }
    j->chunks = (max_nb + SCORE_CHUNK - 1) / SCORE_CHUNK;
    tpool_run(e->pool, score_task, j, T * j->chunks);
}

void attention_layer(engine *e, kv_pool *pool, const engine_batch *b, int l,
                     const float *q, const float *iq, float *out)
{
    attn_job j = {e, pool, b, l, q, iq, out, NULL, NULL, 0};
    if (e->attn_probe)
        e->attn_probe(e->attn_probe_ctx, pool, b, l, q, iq);
    if (iq && e->attn.indexer == IDX_MSA)
        score_ahead(&j);
    tpool_run(e->pool, attn_task, &j, b->n_tokens * e->m.n_kv_heads);
    free(j.scores);
    free(j.off);
}
