/* Block selection for sparse attention.
 *
 * For one query token and one KV group: the sink and local blocks are
 * forced, every other visible block gets a score, and the top_k best of
 * those are kept (ties: the lower block index wins).  Scores come from
 *   - MSA: max over the block's visible tokens of iq . ik (fp32, unscaled);
 *   - minmax (Quest): per query head the upper bound sum_d max(q*min, q*max)
 *     of q . k over the block, from the page's key summary;
 *   - mean (MoBA): per query head q . mean key;
 * the training-free scores of a group's heads combined by max or sum.
 * The result is ascending, so with everything chosen the attention loop
 * reads exactly what dense attention reads, in the same order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cpu/cpu.h"
#include "engine/quant.h"

static void *scratch(size_t bytes)
{
    return cpu_scratch(SCRATCH_SELECT, bytes);
}

/* a ranks before b: higher score, then lower block index (a total order,
 * NaN scores having been replaced by -inf). */
static inline int better(const float *s, int32_t a, int32_t b)
{
    return s[a] > s[b] || (s[a] == s[b] && a < b);
}

static inline void swap32(int32_t *x, int32_t *y)
{
    int32_t t = *x;
    *x = *y;
    *y = t;
}

/* Reorders c[0..n) so that its k best (0 < k < n) come first, in no
 * particular order: quickselect with a median-of-three pivot, O(n) on
 * average and never a full sort. */
static void select_best(int32_t *c, int n, int k, const float *s)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (better(s, c[mid], c[lo]))
            swap32(&c[mid], &c[lo]);
        if (better(s, c[hi], c[lo]))
            swap32(&c[hi], &c[lo]);
        if (better(s, c[hi], c[mid]))
            swap32(&c[hi], &c[mid]);
        /* c[lo] >= c[mid] >= c[hi]: the median becomes the pivot at hi */
        swap32(&c[mid], &c[hi]);
        int32_t pivot = c[hi];
        int st = lo;
        for (int i = lo; i < hi; i++)
            if (better(s, c[i], pivot))
                swap32(&c[i], &c[st++]);
        swap32(&c[st], &c[hi]);
        /* [lo, st) rank before the pivot, (st, hi] after it */
        if (st == k - 1)
            return;
        if (st < k - 1)
            lo = st + 1;
        else
            hi = st - 1;
    }
}

/* Tokens of block b visible to a query at pos (the query's own block may
 * be partial). */
static inline int block_count(int b, int pos, int B)
{
    return b == pos / B ? pos % B + 1 : B;
}

static float score_msa(const sel_args *a, int b)
{
    int B = a->cfg->block_size, n = block_count(b, a->pos, B), d = a->idx_dim;
    const float *ik = kv_page_idx(a->pool, a->blocks[b], a->layer);
    float best = -INFINITY;
    for (int j = 0; j < n; j++) {
        float v = dot_f32(a->iq, ik + (size_t)j * d, d);
        best = v > best ? v : best;
    }
    return best;
}

/* Per-selection query vectors of the training-free scores: with group sum
 * the heads fold into one vector (or one pair), since the scores are linear
 * in q given the sign split. */
typedef struct tf_query {
    int n;              /* vectors per part: 1 (sum) or n_q (max) */
    const float *q;     /* mean: [n][D] */
    const float *qp;    /* minmax: positive parts [n][D] */
    const float *qn;    /* minmax: negative parts [n][D] */
} tf_query;

static float score_tf(const sel_args *a, const tf_query *t, int b)
{
    int D = a->head_dim, minmax = a->cfg->indexer == IDX_MINMAX;
    const float *S = kv_page_summary(a->pool, a->blocks[b], a->layer) + (size_t)a->group * 3 * D;
    const float *mn = S, *mx = S + D, *sum = S + 2 * D;
    float inv = 1.0f / (float)block_count(b, a->pos, a->cfg->block_size);
    float best = -INFINITY;
    for (int h = 0; h < t->n; h++) {
        /* sum_d max(q_d*min_d, q_d*max_d) = q+ . max + q- . min */
        float v = minmax ? dot_f32(t->qp + (size_t)h * D, mx, D) + dot_f32(t->qn + (size_t)h * D, mn, D)
                         : dot_f32(t->q + (size_t)h * D, sum, D) * inv;
        best = v > best ? v : best;
    }
    return best;
}

void sparse_score_msa(const sel_args *a, int n_groups, int b0, int b1, float *scores)
{
    int B = a->cfg->block_size, d = a->idx_dim, nb = a->pos / B + 1;
    for (int b = b0; b < b1; b++) {
        const float *ik = kv_page_idx(a->pool, a->blocks[b], a->layer);
        int n = block_count(b, a->pos, B);
        for (int g = 0; g < n_groups; g++)
            scores[(size_t)g * nb + b] = -INFINITY;
        for (int j = 0; j < n; j++)
            for (int g = 0; g < n_groups; g++) {
                float v = dot_f32(a->iq + (size_t)g * d, ik + (size_t)j * d, d);
                float *s = &scores[(size_t)g * nb + b];
                *s = v > *s ? v : *s;
            }
    }
}

int sparse_select(const sel_args *a, int32_t *out)
{
    const attn_config *c = a->cfg;
    int nb = a->pos / c->block_size + 1, sink, first_local;
    int n_cand = attn_candidates(c, a->pos, &sink, &first_local);
    if (n_cand <= c->top_k_blocks) {
        /* everything visible is chosen: exactly the dense block list */
        for (int i = 0; i < nb; i++)
            out[i] = i;
        return nb;
    }

    int msa = c->indexer == IDX_MSA;
    int D = a->head_dim, nq = msa ? 0 : c->group_reduce == GROUP_SUM ? 1 : a->n_q;
    size_t qfl = (size_t)2 * nq * D;
    char *buf = scratch((size_t)nb * (sizeof(float) + sizeof(int32_t) + 1) + qfl * sizeof(float));
    float *score = (float *)buf;
    float *qv = score + nb;
    int32_t *cand = (int32_t *)(qv + qfl);
    unsigned char *keep = (unsigned char *)(cand + nb);

    tf_query t = {0};
    if (!msa) {
        float *p = qv, *n = qv + (size_t)nq * D;
        memset(qv, 0, qfl * sizeof(float));
        for (int h = 0; h < a->n_q; h++) {
            const float *qh = a->q + (size_t)h * D;
            float *ph = p + (size_t)(nq == 1 ? 0 : h) * D, *nh = n + (size_t)(nq == 1 ? 0 : h) * D;
            for (int d = 0; d < D; d++) {
                ph[d] += qh[d] > 0 ? qh[d] : 0.0f;
                nh[d] += qh[d] < 0 ? qh[d] : 0.0f;
            }
        }
        t.n = nq;
        t.qp = p;
        t.qn = n;
        if (c->indexer == IDX_MEAN) {
            /* q = q+ + q-, folded into the first half */
            for (size_t i = 0; i < (size_t)nq * D; i++)
                p[i] += n[i];
            t.q = p;
        }
    }

    for (int b = sink; b < first_local; b++) {
        float s = msa ? (a->scores ? a->scores[b] : score_msa(a, b)) : score_tf(a, &t, b);
        score[b] = isnan(s) ? -INFINITY : s;
        cand[b - sink] = b;
    }
    int k = c->top_k_blocks;
    select_best(cand, n_cand, k, score);

    memset(keep, 0, (size_t)nb);
    memset(keep, 1, (size_t)sink);
    memset(keep + first_local, 1, (size_t)(nb - first_local));
    for (int i = 0; i < k; i++)
        keep[cand[i]] = 1;
    int n = 0;
    for (int b = 0; b < nb; b++)
        if (keep[b])
            out[n++] = b;
    return n;
}

void summary_update(float *summary, const float *k, int slot, int head_dim)
{
    float *mn = summary, *mx = summary + head_dim, *sum = summary + 2 * head_dim;
    for (int i = 0; i < head_dim; i++) {
        if (slot == 0) {
            mn[i] = mx[i] = sum[i] = k[i];
        } else {
            mn[i] = k[i] < mn[i] ? k[i] : mn[i];
            mx[i] = k[i] > mx[i] ? k[i] : mx[i];
            sum[i] += k[i];
        }
    }
}
