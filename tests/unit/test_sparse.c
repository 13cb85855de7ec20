/* Sparse attention: block selection against a brute-force reference of the
 * definition (MSA max-pooled index scores, Quest min/max bound, mean key),
 * key summaries, and the engine end to end: sparse with every block chosen
 * equals dense, partial selection drops blocks and stays deterministic. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cpu/cpu.h"
#include "kvcache/kvcache.h"

/* ---- random numbers --------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

/* uniform in [-1, 1) */
static float frand(void)
{
    return (float)rnd() / 1073741824.0f - 1.0f;
}

/* ---- a pool filled with random keys ----------------------------------- */

typedef struct fixture {
    kv_layout lay;
    kv_pool *pool;
    int32_t *blocks;     /* logical block -> page, shuffled */
    int nb;
} fixture;

/* Pages for n_tokens tokens in every slot of every layer: K, V, index keys
 * and the summaries summary_update keeps (all slots written, as in a
 * prefill whose later tokens are already stored). */
static void fixture_make(fixture *f, int layers, int heads, int dim, int B, int idx, int n_tokens)
{
    f->lay = (kv_layout){.n_layers = layers, .n_kv_heads = heads, .head_dim = dim,
                         .block_size = B, .idx_dim = idx, .summaries = 1};
    f->nb = (n_tokens + B - 1) / B;
    char err[256];
    f->pool = kv_pool_create(&f->lay, f->nb + 3, 1, err, sizeof err);
    ck_assert_msg(f->pool != NULL, "%s", err);
    /* take every page, then use them in a shuffled order */
    int np = f->nb + 3;
    int32_t *all = malloc((size_t)np * sizeof *all);
    for (int i = 0; i < np; i++)
        all[i] = kv_page_alloc(f->pool);
    for (int i = np - 1; i > 0; i--) {
        int j = (int)(rnd() % (uint32_t)(i + 1));
        int32_t t = all[i];
        all[i] = all[j];
        all[j] = t;
    }
    f->blocks = all;
    for (int b = 0; b < f->nb; b++)
        for (int l = 0; l < layers; l++) {
            float *K = kv_page_k(f->pool, all[b], l), *S = kv_page_summary(f->pool, all[b], l);
            float *I = kv_page_idx(f->pool, all[b], l);
            for (int h = 0; h < heads; h++)
                for (int s = 0; s < B; s++) {
                    float *k = K + ((size_t)h * B + s) * dim;
                    /* a per-block offset gives blocks distinct typical scores */
                    float off = 0.5f * frand();
                    for (int d = 0; d < dim; d++)
                        k[d] = frand() + off;
                    summary_update(S + (size_t)h * 3 * dim, k, s, dim);
                }
            for (size_t i = 0; i < (size_t)B * idx; i++)
                I[i] = frand();
        }
}

static void fixture_free(fixture *f)
{
    kv_pool_free(f->pool);
    free(f->blocks);
}

/* ---- the definition, brute force, in double --------------------------- */

static double ref_score(fixture *f, const sel_args *a, int b)
{
    int B = a->cfg->block_size, D = a->head_dim;
    int n = b == a->pos / B ? a->pos % B + 1 : B;
    int32_t page = a->blocks[b];
    if (a->cfg->indexer == IDX_MSA) {
        const float *ik = kv_page_idx(f->pool, page, a->layer);
        double best = -INFINITY;
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int d = 0; d < a->idx_dim; d++)
                s += (double)a->iq[d] * ik[(size_t)j * a->idx_dim + d];
            best = s > best ? s : best;
        }
        return best;
    }
    /* training-free: from the keys themselves, not the page's summary */
    const float *K = kv_page_k(f->pool, page, a->layer) + (size_t)a->group * B * D;
    double res = a->cfg->group_reduce == GROUP_SUM ? 0 : -INFINITY;
    for (int h = 0; h < a->n_q; h++) {
        const float *q = a->q + (size_t)h * D;
        double s = 0;
        for (int d = 0; d < D; d++) {
            double mn = INFINITY, mx = -INFINITY, sum = 0;
            for (int j = 0; j < n; j++) {
                double k = K[(size_t)j * D + d];
                mn = k < mn ? k : mn;
                mx = k > mx ? k : mx;
                sum += k;
            }
            if (a->cfg->indexer == IDX_MINMAX)
                s += q[d] * mn > q[d] * mx ? q[d] * mn : q[d] * mx;
            else
                s += q[d] * sum / n;
        }
        if (a->cfg->group_reduce == GROUP_SUM)
            res += s;
        else
            res = s > res ? s : res;
    }
    return res;
}

typedef struct { double s; int b; } scored;

static int by_rank(const void *x, const void *y)
{
    const scored *a = x, *b = y;
    if (a->s != b->s)
        return a->s > b->s ? -1 : 1;
    return a->b - b->b;
}

/* Checks sparse_select's answer for a against the definition: sink and
 * local blocks present, then the top_k best others by the reference score;
 * a block may differ only where its score ties the cut within rounding. */
static void check_selection(fixture *f, const sel_args *a, const char *what)
{
    const attn_config *c = a->cfg;
    int nb = a->pos / c->block_size + 1;
    int32_t *out = malloc((size_t)nb * sizeof *out);
    int n = sparse_select(a, out);
    for (int i = 1; i < n; i++)
        ck_assert_msg(out[i] > out[i - 1], "%s: not ascending at %d", what, i);
    ck_assert_msg(n >= 1 && out[0] >= 0 && out[n - 1] == nb - 1, "%s: bad range", what);

    char *want = calloc((size_t)nb, 1), *got = calloc((size_t)nb, 1);
    for (int i = 0; i < n; i++)
        got[out[i]] = 1;
    scored *cand = malloc((size_t)nb * sizeof *cand);
    int nc = 0;
    for (int b = 0; b < nb; b++) {
        if (b < c->sink_blocks || b >= nb - c->local_blocks)
            want[b] = 1;
        else
            cand[nc++] = (scored){ref_score(f, a, b), b};
    }
    qsort(cand, (size_t)nc, sizeof *cand, by_rank);
    int k = c->top_k_blocks < nc ? c->top_k_blocks : nc;
    for (int i = 0; i < k; i++)
        want[cand[i].b] = 1;
    int n_want = 0;
    for (int b = 0; b < nb; b++)
        n_want += want[b];
    ck_assert_msg(n == n_want, "%s: %d blocks chosen, definition says %d", what, n, n_want);
    if (k < nc) {
        double cut = cand[k - 1].s, next = cand[k].s;
        for (int i = 0; i < nc; i++) {
            int b = cand[i].b;
            if (want[b] == got[b])
                continue;
            double s = cand[i].s, tol = 1e-4 * (1 + fabs(cut));
            ck_assert_msg(fabs(s - cut) <= tol || fabs(s - next) <= tol,
                          "%s: block %d (score %.6f) %s, cut at %.6f", what, b, s,
                          got[b] ? "chosen but not in the top k" : "in the top k but dropped", cut);
        }
    } else {
        for (int b = 0; b < nb; b++)
            ck_assert_msg(got[b], "%s: block %d dropped with everything in budget", what, b);
    }
    free(out);
    free(want);
    free(got);
    free(cand);
}

static attn_config cfg_of(int indexer, int B, int top_k, int local, int sink, int reduce)
{
    attn_config c;
    attn_config_default(&c);
    c.mode = ATTN_SPARSE;
    c.indexer = indexer;
    c.block_size = B;
    c.top_k_blocks = top_k;
    c.local_blocks = local;
    c.sink_blocks = sink;
    c.dense_layers = 0;
    c.sparse_min_context = 0;
    c.group_reduce = reduce;
    return c;
}

/* The summaries summary_update keeps are the min, max and sum of the
 * page's keys. */
START_TEST(test_summary_is_min_max_sum)
{
    fixture f;
    fixture_make(&f, 2, 3, 24, 16, 0, 16 * 5);
    for (int b = 0; b < f.nb; b++)
        for (int l = 0; l < 2; l++)
            for (int h = 0; h < 3; h++) {
                const float *K = kv_page_k(f.pool, f.blocks[b], l) + (size_t)h * 16 * 24;
                const float *S = kv_page_summary(f.pool, f.blocks[b], l) + (size_t)h * 3 * 24;
                for (int d = 0; d < 24; d++) {
                    float mn = K[d], mx = K[d];
                    double sum = 0;
                    for (int s = 0; s < 16; s++) {
                        float k = K[(size_t)s * 24 + d];
                        mn = k < mn ? k : mn;
                        mx = k > mx ? k : mx;
                        sum += k;
                    }
                    ck_assert(S[d] == mn);
                    ck_assert(S[24 + d] == mx);
                    ck_assert(fabs(S[48 + d] - sum) < 1e-5);
                }
            }
    fixture_free(&f);
}
END_TEST

/* Random pages and queries: every indexer, group reduction, GQA ratio,
 * block size and budget agrees with the brute-force definition. */
START_TEST(test_selection_matches_definition)
{
    static const int Bs[] = {16, 32, 64};
    static const int ratios[] = {1, 2, 4, 8};
    int B = Bs[_i % 3];
    int D = 16, G = 2, idx = 32, n_tok = B * 23 + 5;
    fixture f;
    fixture_make(&f, 2, G, D, B, idx, n_tok);
    float q[8 * 16], iq[32];
    char what[160];
    int checked = 0;
    for (int trial = 0; trial < 60; trial++) {
        int pos = (int)(rnd() % (uint32_t)n_tok);
        int nq = ratios[rnd() % 4];
        int indexer = (int)(rnd() % 3);
        int reduce = (int)(rnd() % 2);
        int top_k = 1 + (int)(rnd() % 8);
        int local = 1 + (int)(rnd() % 3);
        int sink = (int)(rnd() % 3);
        attn_config c = cfg_of(indexer, B, top_k, local, sink, reduce);
        for (int i = 0; i < nq * D; i++)
            q[i] = frand();
        for (int i = 0; i < idx; i++)
            iq[i] = frand();
        sel_args a = {.pool = f.pool, .cfg = &c, .layer = trial % 2, .blocks = f.blocks,
                      .pos = pos, .group = (int)(rnd() % (uint32_t)G), .q = q, .n_q = nq,
                      .head_dim = D, .iq = indexer == IDX_MSA ? iq : NULL, .idx_dim = idx};
        snprintf(what, sizeof what, "B=%d pos=%d nq=%d indexer=%d reduce=%d k=%d local=%d sink=%d", B,
                 pos, nq, indexer, reduce, top_k, local, sink);
        check_selection(&f, &a, what);
        checked++;
    }
    ck_assert_int_eq(checked, 60);
    fixture_free(&f);
}
END_TEST

/* With the budget covering every block the answer is the dense list. */
START_TEST(test_full_budget_is_every_block)
{
    fixture f;
    fixture_make(&f, 1, 1, 16, 16, 16, 16 * 9);
    float q[16], iq[16];
    for (int i = 0; i < 16; i++)
        q[i] = iq[i] = frand();
    int32_t out[9];
    for (int indexer = 0; indexer < 3; indexer++)
        for (int pos = 0; pos < 16 * 9; pos += 7) {
            attn_config c = cfg_of(indexer, 16, 9, 1, indexer == IDX_MSA ? 0 : 1, GROUP_MAX);
            sel_args a = {.pool = f.pool, .cfg = &c, .blocks = f.blocks, .pos = pos, .q = q, .n_q = 1,
                          .head_dim = 16, .iq = iq, .idx_dim = 16};
            int n = sparse_select(&a, out);
            ck_assert_int_eq(n, pos / 16 + 1);
            for (int i = 0; i < n; i++)
                ck_assert_int_eq(out[i], i);
        }
    fixture_free(&f);
}
END_TEST

/* Equal scores everywhere: the lowest block indices win, every time. */
START_TEST(test_ties_pick_lower_blocks)
{
    fixture f;
    fixture_make(&f, 1, 1, 16, 16, 16, 16 * 12);
    for (int b = 0; b < f.nb; b++) {
        float *I = kv_page_idx(f.pool, f.blocks[b], 0);
        float *K = kv_page_k(f.pool, f.blocks[b], 0), *S = kv_page_summary(f.pool, f.blocks[b], 0);
        for (int s = 0; s < 16; s++)
            for (int d = 0; d < 16; d++) {
                I[s * 16 + d] = d == 0 ? 1.0f : 0.0f;
                K[s * 16 + d] = d == 0 ? 1.0f : 0.0f;
                summary_update(S, K + s * 16, s, 16);
            }
    }
    float q[16] = {2.0f}, iq[16] = {3.0f};
    int32_t out[12];
    for (int indexer = 0; indexer < 3; indexer++) {
        attn_config c = cfg_of(indexer, 16, 3, 2, 1, GROUP_MAX);
        sel_args a = {.pool = f.pool, .cfg = &c, .blocks = f.blocks, .pos = 16 * 12 - 1, .q = q,
                      .n_q = 1, .head_dim = 16, .iq = iq, .idx_dim = 16};
        int n = sparse_select(&a, out);
        static const int want[] = {0, 1, 2, 3, 10, 11};
        ck_assert_int_eq(n, 6);
        for (int i = 0; i < n; i++)
            ck_assert_int_eq(out[i], want[i]);
    }
    fixture_free(&f);
}
END_TEST

/* MSA scores are max-pooled: one planted token far back decides its block. */
START_TEST(test_msa_max_pooling_and_causality)
{
    fixture f;
    int B = 32;
    fixture_make(&f, 1, 1, 16, B, 16, B * 20);
    float iq[16];
    for (int d = 0; d < 16; d++)
        iq[d] = d == 3 ? 1.0f : 0.0f;
    /* the needle: one token of block 4 with a huge matching component */
    kv_page_idx(f.pool, f.blocks[4], 0)[17 * 16 + 3] = 100.0f;
    attn_config c = cfg_of(IDX_MSA, B, 1, 1, 0, GROUP_MAX);
    int32_t out[20];
    sel_args a = {.pool = f.pool, .cfg = &c, .blocks = f.blocks, .pos = B * 19 + 3, .iq = iq,
                  .idx_dim = 16, .head_dim = 16, .n_q = 1};
    int n = sparse_select(&a, out);
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(out[0], 4);
    ck_assert_int_eq(out[1], 19);
    fixture_free(&f);
}
END_TEST

/* NaN scores (a broken model) rank last instead of breaking the order. */
START_TEST(test_nan_scores_rank_last)
{
    fixture f;
    fixture_make(&f, 1, 1, 16, 16, 16, 16 * 8);
    for (int b = 1; b < 7; b++)
        if (b != 5)
            for (int i = 0; i < 16 * 16; i++)
                kv_page_idx(f.pool, f.blocks[b], 0)[i] = NAN;
    float iq[16];
    for (int d = 0; d < 16; d++)
        iq[d] = 1.0f;
    attn_config c = cfg_of(IDX_MSA, 16, 2, 1, 0, GROUP_MAX);
    int32_t out[8];
    sel_args a = {.pool = f.pool, .cfg = &c, .blocks = f.blocks, .pos = 16 * 8 - 1, .iq = iq,
                  .idx_dim = 16, .head_dim = 16, .n_q = 1};
    int n = sparse_select(&a, out);
    ck_assert_int_eq(n, 3);
    /* blocks 0 and 5 have finite scores; 7 is local */
    ck_assert_int_eq(out[0], 0);
    ck_assert_int_eq(out[1], 5);
    ck_assert_int_eq(out[2], 7);
    fixture_free(&f);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("sparse");
    TCase *t = tcase_create("select");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_summary_is_min_max_sum);
    tcase_add_loop_test(t, test_selection_matches_definition, 0, 6);
    tcase_add_test(t, test_full_budget_is_every_block);
    tcase_add_test(t, test_ties_pick_lower_blocks);
    tcase_add_test(t, test_msa_max_pooling_and_causality);
    tcase_add_test(t, test_nan_scores_rank_last);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *r = srunner_create(suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
