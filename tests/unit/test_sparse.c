/* Sparse attention: block selection against a brute-force reference of the
 * definition (MSA max-pooled index scores, Quest min/max bound, mean key),
 * key summaries, and the engine end to end: sparse with every block chosen
 * equals dense, partial selection drops blocks and stays deterministic. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/internal.h"
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

/* Whether a selection at pos scores blocks: more candidates than top_k. */
static int needs_scores(const attn_config *c, int pos)
{
    int sink, first_local;
    return attn_candidates(c, pos, &sink, &first_local) > c->top_k_blocks;
}

/* attn_candidates (the rule the CPU and the CUDA backend share) against
 * its definition, block by block: a visible block is a candidate when it
 * is neither one of the first `sink` nor one of the last `local`. */
START_TEST(test_candidates_by_definition)
{
    for (int B = 16; B <= 64; B *= 2)
        for (int sink = 0; sink <= 2; sink++)
            for (int local = 1; local <= 3; local++)
                for (int pos = 0; pos < 12 * B; pos += 5) {
                    attn_config c = cfg_of(IDX_MINMAX, B, 4, local, sink, GROUP_SUM);
                    int nb = pos / B + 1, n = 0, lo = nb, hi = -1;
                    for (int b = 0; b < nb; b++)
                        if (b >= sink && b < nb - local) {
                            n++;
                            lo = b < lo ? b : lo;
                            hi = b;
                        }
                    int s, fl, got = attn_candidates(&c, pos, &s, &fl);
                    ck_assert_int_eq(got, n);
                    if (n) {
                        ck_assert_int_eq(s, lo);
                        ck_assert_int_eq(fl, hi + 1);
                    }
                    ck_assert_int_le(s, nb);
                    ck_assert_int_le(fl, nb);
                }
}
END_TEST

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

/* Scoring every group in one pass over the index keys (in block chunks, as
 * attention.c does ahead of the selections) chooses exactly what each
 * group's own scoring chooses. */
START_TEST(test_msa_scores_ahead_match)
{
    enum { G = 4, IDX = 32 };
    int B = 16, n_tok = B * 40 + 9;
    fixture f;
    fixture_make(&f, 2, G, 16, B, IDX, n_tok);
    float iq[G * IDX];
    int32_t a_out[64], b_out[64];
    float *scores = malloc((size_t)G * 64 * sizeof(float));
    for (int trial = 0; trial < 30; trial++) {
        for (int i = 0; i < G * IDX; i++)
            iq[i] = frand();
        int pos = B * 12 + (int)(rnd() % (uint32_t)(n_tok - B * 12));
        int nb = pos / B + 1;
        attn_config c = cfg_of(IDX_MSA, B, 1 + trial % 7, 1 + trial % 2, trial % 3 == 0, GROUP_MAX);
        sel_args all = {.pool = f.pool, .cfg = &c, .layer = trial % 2, .blocks = f.blocks, .pos = pos,
                        .iq = iq, .idx_dim = IDX};
        ck_assert(needs_scores(&c, pos));
        int cut = nb / 3;
        sparse_score_msa(&all, G, 0, cut, scores);
        sparse_score_msa(&all, G, cut, nb, scores);
        for (int g = 0; g < G; g++) {
            sel_args one = all;
            one.group = g;
            one.iq = iq + g * IDX;
            int n1 = sparse_select(&one, a_out);
            one.scores = scores + (size_t)g * nb;
            int n2 = sparse_select(&one, b_out);
            ck_assert_int_eq(n1, n2);
            for (int i = 0; i < n1; i++)
                ck_assert_int_eq(a_out[i], b_out[i]);
        }
    }
    /* and no scoring is needed when the budget covers every block */
    attn_config c = cfg_of(IDX_MSA, B, 40, 1, 0, GROUP_MAX);
    ck_assert(!needs_scores(&c, n_tok - 1));
    c.top_k_blocks = 39;
    ck_assert(needs_scores(&c, n_tok - 1));
    free(scores);
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


/* ---- the engine end to end -------------------------------------------- */

static char tmpdir[256];

static void tmp_setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sparsed-test-sparse-XXXXXX");
    ck_assert_msg(mkdtemp(tmpdir) != NULL, "mkdtemp failed");
}

static void tmp_teardown(void)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
}

/* Writes a random model with tools/mkmodel into the temp dir (once per
 * argument string) and returns its path. */
static const char *mkmodel(const char *args)
{
    static char path[512];
    unsigned h = 5381;
    for (const char *c = args; *c; c++)
        h = h * 33 + (unsigned char)*c;
    snprintf(path, sizeof path, "%s/m%08x.gguf", tmpdir, h);
    if (access(path, R_OK) == 0)
        return path;
    const char *build = getenv("SPARSED_BUILD");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s/tools/mkmodel' --out '%s' %s >/dev/null", build ? build : "build",
             path, args);
    ck_assert_msg(system(cmd) == 0, "mkmodel failed: %s", cmd);
    return path;
}

static engine *open_engine(const char *path, const attn_config *c, int threads)
{
    engine_opts o = {.model_path = path, .n_threads = threads, .attn = *c};
    char err[256];
    engine *e = engine_create(&o, err, sizeof err);
    ck_assert_msg(e != NULL, "engine_create(%s): %s", path, err);
    return e;
}

static attn_config dense_cfg(int B)
{
    attn_config c;
    attn_config_default(&c);
    c.mode = ATTN_DENSE;
    c.block_size = B;
    return c;
}

/* Prefills n tokens in two chunks (every row's logits), then decodes
 * n_dec more one at a time; writes (n + n_dec) rows of logits.  The pool is
 * returned with the sequence still in it when keep is non-NULL. */
static void run_seq(engine *e, const int32_t *toks, int n, int n_dec, float *rows, kv_pool **keep,
                    kv_seq *keep_seq)
{
    kv_layout l = engine_kv_layout(e);
    int total = n + n_dec;
    char err[256];
    kv_pool *p = kv_pool_create(&l, kv_pages_for(&l, total) + 1, 1, err, sizeof err);
    ck_assert_msg(p != NULL, "%s", err);
    kv_seq s;
    kv_seq_init(&s);
    int V = engine_get_info(e)->n_vocab;
    int done = 0;
    while (done < total) {
        int n_new = done < n ? (done == 0 ? n / 2 + 1 : n - done) : 1;
        ck_assert_int_eq(kv_seq_reserve(p, &s, done + n_new), 0);
        engine_seq es = {.n_past = done, .n_new = n_new, .blocks = s.pages, .n_blocks = s.n_pages,
                         .logits = 2};
        engine_batch b = {.n_tokens = n_new, .tokens = toks + done, .n_seqs = 1, .seqs = &es};
        int r = engine_step(e, p, &b, rows + (size_t)done * V, err, sizeof err);
        ck_assert_msg(r == n_new, "engine_step: %s", err);
        done += n_new;
    }
    if (keep) {
        *keep = p;
        *keep_seq = s;
        return;
    }
    kv_seq_release(p, &s);
    kv_pool_free(p);
}

static void random_tokens(int32_t *t, int n, int vocab)
{
    for (int i = 0; i < n; i++)
        t[i] = 3 + (int32_t)(rnd() % (uint32_t)(vocab - 3));
}

/* Largest relative error (L2, per row) between two sets of rows. */
static double max_rel_err(const float *a, const float *b, int rows, int V)
{
    double worst = 0;
    for (int r = 0; r < rows; r++) {
        double num = 0, den = 0;
        for (int i = 0; i < V; i++) {
            double d = (double)a[(size_t)r * V + i] - b[(size_t)r * V + i];
            num += d * d;
            den += (double)b[(size_t)r * V + i] * b[(size_t)r * V + i];
        }
        double e = sqrt(num / (den > 0 ? den : 1));
        worst = e > worst ? e : worst;
    }
    return worst;
}

/* Sparse with top_k covering every block against dense on one model:
 * prefill (in two chunks) and decode rows. */
static void check_exact(const char *path, int B, int indexer, int reduce, const char *what)
{
    enum { N_DEC = 3 };
    int n = 3 * B + 5;
    attn_config dc = dense_cfg(B);
    attn_config sc = cfg_of(indexer, B, 1 << 20, 1, indexer == IDX_MSA ? 0 : 1, reduce);
    sc.dense_layers = -1;
    engine *de = open_engine(path, &dc, 2), *se = open_engine(path, &sc, 2);
    /* the sparse path is really taken, from the first token on */
    int l_sparse = engine_attn(se)->dense_layers;
    ck_assert_msg(engine_layer_sparse(se, l_sparse, 1), "%s: layer %d is not sparse", what, l_sparse);
    ck_assert(!engine_layer_sparse(de, l_sparse, n));
    int V = engine_get_info(de)->n_vocab;
    int32_t *toks = malloc((size_t)(n + N_DEC) * sizeof *toks);
    random_tokens(toks, n + N_DEC, V);
    float *dr = malloc((size_t)(n + N_DEC) * V * sizeof(float));
    float *sr = malloc((size_t)(n + N_DEC) * V * sizeof(float));
    run_seq(de, toks, n, N_DEC, dr, NULL, NULL);
    run_seq(se, toks, n, N_DEC, sr, NULL, NULL);
    double err = max_rel_err(sr, dr, n + N_DEC, V);
    ck_assert_msg(err < 1e-5, "%s: sparse vs dense relative error %g", what, err);
    free(toks);
    free(dr);
    free(sr);
    engine_free(de);
    engine_free(se);
}

static const int exact_B[] = {16, 32, 64, 128};
static const int exact_kv[] = {8, 4, 2, 1};   /* 8 query heads: GQA 1, 2, 4, 8 */

/* Training-free indexers on Llama-shaped models. */
START_TEST(test_exact_full_budget_llama)
{
    int B = exact_B[_i % 4], kv = exact_kv[_i / 4];
    char args[256], what[128];
    snprintf(args, sizeof args,
             "--preset tiny --layers 2 --embd 64 --heads 8 --kv-heads %d --head-dim 16 --ff 96 "
             "--vocab 300 --seed %d", kv, 11 + kv);
    const char *path = mkmodel(args);
    snprintf(what, sizeof what, "llama B=%d gqa=%d minmax/max", B, 8 / kv);
    check_exact(path, B, IDX_MINMAX, GROUP_MAX, what);
    snprintf(what, sizeof what, "llama B=%d gqa=%d mean/sum", B, 8 / kv);
    check_exact(path, B, IDX_MEAN, GROUP_SUM, what);
}
END_TEST

/* The MSA indexer on M3-style models (QK norm, partial rotary, first layer
 * dense). */
START_TEST(test_exact_full_budget_msa)
{
    int B = exact_B[_i % 4], kv = exact_kv[_i / 4];
    char args[256], what[128];
    snprintf(args, sizeof args, "--preset m3-tiny --layers 3 --kv-heads %d --indexer-block %d --vocab 300 --seed %d",
             kv, B, 21 + kv);
    snprintf(what, sizeof what, "msa B=%d gqa=%d", B, 8 / kv);
    check_exact(mkmodel(args), B, IDX_MSA, GROUP_MAX, what);
}
END_TEST

/* A partial budget really drops blocks: logits move away from dense, and
 * the same run repeated (on another thread count too) is bit-identical. */
START_TEST(test_partial_budget_differs_and_is_deterministic)
{
    int msa = _i;
    int B = 16, n = 12 * B;
    const char *path = msa ? mkmodel("--preset m3-tiny --layers 3 --indexer-block 16 --vocab 300 --seed 5")
                           : mkmodel("--preset tiny --layers 2 --embd 64 --heads 8 --kv-heads 2 "
                                     "--head-dim 16 --ff 96 --vocab 300 --seed 6");
    attn_config dc = dense_cfg(B);
    attn_config sc = cfg_of(msa ? IDX_MSA : IDX_MINMAX, B, 2, 1, msa ? 0 : 1, GROUP_MAX);
    sc.dense_layers = -1;
    engine *de = open_engine(path, &dc, 2), *s1 = open_engine(path, &sc, 1), *s2 = open_engine(path, &sc, 2);
    int V = engine_get_info(de)->n_vocab;
    int32_t toks[12 * 16 + 2];
    random_tokens(toks, n + 2, V);
    size_t sz = (size_t)(n + 2) * V * sizeof(float);
    float *dr = malloc(sz), *a = malloc(sz), *b = malloc(sz);
    kv_pool *pool;
    kv_seq seq;
    run_seq(de, toks, n, 2, dr, NULL, NULL);
    run_seq(s1, toks, n, 2, a, NULL, NULL);
    run_seq(s2, toks, n, 2, b, &pool, &seq);
    ck_assert_msg(memcmp(a, b, sz) == 0, "sparse runs differ between 1 and 2 threads");
    /* rows whose context fits the budget (1 sink + 2 + 1 local blocks) are
     * dense anyway; later rows differ */
    int fit = (msa ? 3 : 4) * B;
    double early = max_rel_err(a, dr, fit, V);
    double late = max_rel_err(a + (size_t)(n + 1) * V, dr + (size_t)(n + 1) * V, 1, V);
    ck_assert_msg(early < 1e-5, "rows within the budget differ from dense: %g", early);
    ck_assert_msg(late > 1e-3, "last row equals dense (%g): no block was dropped", late);
    /* and the selection at the end keeps 4 (msa: 3) of the 13 blocks */
    int32_t out[16];
    float q[8 * 32], iq[32];
    for (int i = 0; i < 8 * 32; i++)
        q[i] = frand();
    for (int i = 0; i < 32; i++)
        iq[i] = frand();
    const attn_config *rc = engine_attn(s2);
    sel_args sa = {.pool = pool, .cfg = rc, .layer = rc->dense_layers, .blocks = seq.pages,
                   .pos = n + 1, .q = q, .n_q = 4, .head_dim = engine_get_info(s2)->head_dim,
                   .iq = iq, .idx_dim = 32};
    ck_assert_int_eq(sparse_select(&sa, out), msa ? 3 : 4);
    kv_seq_release(pool, &seq);
    kv_pool_free(pool);
    free(dr);
    free(a);
    free(b);
    engine_free(de);
    engine_free(s1);
    engine_free(s2);
}
END_TEST

/* On pages the engine filled (real index keys, real keys and the summaries
 * forward.c keeps, prefill and decode), selection agrees with the
 * definition for random queries, and the summaries are min/max/sum. */
START_TEST(test_engine_pages_match_definition)
{
    int msa = _i;
    int B = 16, n = 20 * B + 7;
    const char *path = msa ? mkmodel("--preset m3-tiny --layers 3 --indexer-block 16 --vocab 300 --seed 9")
                           : mkmodel("--preset tiny --layers 2 --embd 64 --heads 8 --kv-heads 2 "
                                     "--head-dim 16 --ff 96 --vocab 300 --seed 10");
    attn_config sc = cfg_of(msa ? IDX_MSA : IDX_MINMAX, B, 3, 1, msa ? 0 : 1, GROUP_MAX);
    sc.dense_layers = -1;
    engine *e = open_engine(path, &sc, 2);
    const engine_info *in = engine_get_info(e);
    int V = in->n_vocab, D = in->head_dim, G = in->n_kv_heads, nq = in->n_heads / G;
    int32_t *toks = malloc((size_t)(n + 3) * sizeof *toks);
    random_tokens(toks, n + 3, V);
    float *rows = malloc((size_t)(n + 3) * V * sizeof(float));
    kv_pool *pool;
    kv_seq seq;
    run_seq(e, toks, n, 3, rows, &pool, &seq);
    fixture f = {.pool = pool, .blocks = seq.pages};
    const attn_config *rc = engine_attn(e);
    float *q = malloc((size_t)nq * D * sizeof(float)), iq[32];
    char what[160];
    for (int trial = 0; trial < 40; trial++) {
        attn_config c = *rc;
        if (!msa) {
            c.indexer = trial % 2 ? IDX_MEAN : IDX_MINMAX;
            c.group_reduce = (trial / 2) % 2 ? GROUP_SUM : GROUP_MAX;
        }
        c.top_k_blocks = 1 + trial % 6;
        for (int i = 0; i < nq * D; i++)
            q[i] = frand();
        for (int i = 0; i < 32; i++)
            iq[i] = frand();
        int pos = B * 4 + (int)(rnd() % (uint32_t)(n + 3 - B * 4));
        sel_args a = {.pool = pool, .cfg = &c, .layer = rc->dense_layers + trial % 2, .blocks = seq.pages,
                      .pos = pos, .group = trial % G, .q = q, .n_q = nq, .head_dim = D,
                      .iq = msa ? iq : NULL, .idx_dim = 32};
        snprintf(what, sizeof what, "%s pos=%d layer=%d indexer=%d reduce=%d k=%d", msa ? "msa" : "llama",
                 pos, a.layer, c.indexer, c.group_reduce, c.top_k_blocks);
        check_selection(&f, &a, what);
    }
    if (!msa) {
        /* summaries over the filled slots, the last page partial */
        int total = n + 3;
        for (int b = 0; b < seq.n_pages; b++)
            for (int l = 0; l < 2; l++)
                for (int h = 0; h < G; h++) {
                    int cnt = b == total / B ? total % B : B;
                    const float *K = kv_page_k(pool, seq.pages[b], l) + (size_t)h * B * D;
                    const float *S = kv_page_summary(pool, seq.pages[b], l) + (size_t)h * 3 * D;
                    for (int d = 0; d < D; d++) {
                        float mn = INFINITY, mx = -INFINITY;
                        double sum = 0;
                        for (int s = 0; s < cnt; s++) {
                            float k = K[(size_t)s * D + d];
                            mn = k < mn ? k : mn;
                            mx = k > mx ? k : mx;
                            sum += k;
                        }
                        ck_assert(S[d] == mn && S[D + d] == mx);
                        ck_assert(fabs(S[2 * D + d] - sum) < 1e-4 * (1 + fabs(sum)));
                    }
                }
    }
    kv_seq_release(pool, &seq);
    kv_pool_free(pool);
    free(q);
    free(toks);
    free(rows);
    engine_free(e);
}
END_TEST

/* The engine's attention output in its last layer, captured after each
 * step, against attention computed here from the pages over the blocks
 * sparse_select names (its own scoring, group by group). */
typedef struct capture {
    int layer, qd, iqd;
    float *q, *iq;
} capture;

static void cap_probe(void *ctx, kv_pool *pool, const engine_batch *b, int layer, const float *q,
                      const float *iq)
{
    (void)pool;
    capture *c = ctx;
    if (layer != c->layer)
        return;
    memcpy(c->q, q, (size_t)b->n_tokens * c->qd * sizeof(float));
    if (iq)
        memcpy(c->iq, iq, (size_t)b->n_tokens * c->iqd * sizeof(float));
}

static void check_attention(engine *e, kv_pool *pool, const capture *c, const int32_t *blocks, int n_past,
                            int T, const char *what)
{
    const engine_info *in = engine_get_info(e);
    const attn_config *ac = engine_attn(e);
    int D = in->head_dim, G = in->n_kv_heads, hpg = in->n_heads / G, B = ac->block_size;
    int nb_max = (n_past + T - 1) / B + 1, dropped = 0;
    int32_t *sel = malloc((size_t)nb_max * sizeof *sel);
    double *w = malloc((size_t)(n_past + T) * sizeof *w);
    for (int t = 0; t < T; t++) {
        int pos = n_past + t, n;
        for (int g = 0; g < G; g++) {
            const float *qg = c->q + (size_t)t * c->qd + (size_t)g * hpg * D;
            if (engine_layer_sparse(e, c->layer, pos + 1)) {
                sel_args a = {.pool = pool, .cfg = ac, .layer = c->layer, .blocks = blocks, .pos = pos,
                              .group = g, .q = qg, .n_q = hpg, .head_dim = D,
                              .iq = c->iqd ? c->iq + (size_t)t * c->iqd + (size_t)g * (c->iqd / G) : NULL,
                              .idx_dim = c->iqd / G};
                n = sparse_select(&a, sel);
            } else {
                n = pos / B + 1;
                for (int i = 0; i < n; i++)
                    sel[i] = i;
            }
            dropped += pos / B + 1 - n;
            for (int h = 0; h < hpg; h++) {
                const float *qh = qg + (size_t)h * D;
                double mx = -INFINITY, sum = 0;
                int m = 0;
                for (int i = 0; i < n; i++)
                    for (int s = 0; s < B && sel[i] * B + s <= pos; s++, m++) {
                        const float *k = kv_page_k(pool, blocks[sel[i]], c->layer) + ((size_t)g * B + s) * D;
                        double d = 0;
                        for (int x = 0; x < D; x++)
                            d += (double)qh[x] * k[x];
                        w[m] = d / sqrt((double)D);
                        mx = w[m] > mx ? w[m] : mx;
                    }
                for (int i = 0; i < m; i++)
                    sum += w[i] = exp(w[i] - mx);
                const float *got = e->s.att + (size_t)t * in->n_heads * D + (size_t)(g * hpg + h) * D;
                for (int x = 0; x < D; x++) {
                    double o = 0;
                    m = 0;
                    for (int i = 0; i < n; i++)
                        for (int s = 0; s < B && sel[i] * B + s <= pos; s++, m++)
                            o += w[m] * kv_page_v(pool, blocks[sel[i]], c->layer)[((size_t)g * B + s) * D + x];
                    o /= sum;
                    ck_assert_msg(fabs(got[x] - o) < 1e-4 * (1 + fabs(o)),
                                  "%s: pos %d group %d head %d dim %d: engine %.7f, reference %.7f", what, pos,
                                  g, h, x, got[x], o);
                }
            }
        }
    }
    /* the budget does drop blocks in the later tokens */
    if (n_past + T > 8 * B)
        ck_assert_msg(dropped > 0, "%s: no block dropped", what);
    free(sel);
    free(w);
}

START_TEST(test_engine_attention_matches_reference)
{
    int msa = _i / 2, reduce = _i % 2;
    int B = 16, n = 10 * B + 3;
    const char *path = msa ? mkmodel("--preset m3-tiny --layers 3 --kv-heads 4 --indexer-block 16 --vocab 300 --seed 31")
                           : mkmodel("--preset tiny --layers 2 --embd 64 --heads 8 --kv-heads 2 "
                                     "--head-dim 16 --ff 96 --vocab 300 --seed 32");
    attn_config sc = cfg_of(msa ? IDX_MSA : IDX_MINMAX, B, 2, 1, msa ? 0 : 1, reduce);
    sc.dense_layers = -1;
    engine *e = open_engine(path, &sc, 2);
    const engine_info *in = engine_get_info(e);
    capture c = {.layer = in->n_layers - 1, .qd = in->n_heads * in->head_dim,
                 .iqd = msa ? in->n_kv_heads * 32 : 0};
    c.q = malloc((size_t)n * c.qd * sizeof(float));
    c.iq = malloc((size_t)n * (c.iqd ? c.iqd : 1) * sizeof(float));
    e->attn_probe = cap_probe;
    e->attn_probe_ctx = &c;
    kv_layout l = engine_kv_layout(e);
    char err[256], what[64];
    kv_pool *p = kv_pool_create(&l, kv_pages_for(&l, n + 4) + 1, 1, err, sizeof err);
    ck_assert_msg(p != NULL, "%s", err);
    kv_seq s;
    kv_seq_init(&s);
    int32_t toks[10 * 16 + 8];
    random_tokens(toks, n + 4, in->n_vocab);
    float *logits = malloc((size_t)in->n_vocab * sizeof(float));
    /* a prefill in two chunks, then decode steps */
    int steps[] = {n / 2, n - n / 2, 1, 1, 1, 1}, done = 0;
    for (size_t k = 0; k < sizeof steps / sizeof steps[0]; k++) {
        ck_assert_int_eq(kv_seq_reserve(p, &s, done + steps[k]), 0);
        engine_seq es = {.n_past = done, .n_new = steps[k], .blocks = s.pages, .n_blocks = s.n_pages, .logits = 1};
        engine_batch b = {.n_tokens = steps[k], .tokens = toks + done, .n_seqs = 1, .seqs = &es};
        ck_assert_msg(engine_step(e, p, &b, logits, err, sizeof err) == 1, "%s", err);
        snprintf(what, sizeof what, "%s reduce=%d step %zu", msa ? "msa" : "minmax", reduce, k);
        check_attention(e, p, &c, s.pages, done, steps[k], what);
        done += steps[k];
    }
    kv_seq_release(p, &s);
    kv_pool_free(p);
    free(c.q);
    free(c.iq);
    free(logits);
    engine_free(e);
}
END_TEST

static int read_reference(int32_t *ids, int max)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/tests/data/stories260K-greedy.txt",
             getenv("SPARSED_ROOT") ? getenv("SPARSED_ROOT") : ".");
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#')
            continue;
        for (char *s = strtok(line, " \n"); s && n < max; s = strtok(NULL, " \n"))
            ids[n++] = atoi(s);
    }
    fclose(f);
    return n;
}

/* stories260K, sparse from the first token with every block in budget,
 * decodes the published 256 greedy tokens (both training-free indexers,
 * smallest and default-ish block sizes). */
START_TEST(test_stories_sparse_full_budget_greedy)
{
    static const struct { int indexer, B; } cases[] = {{IDX_MINMAX, 16}, {IDX_MEAN, 64}};
    int32_t ref[256];
    ck_assert_int_eq(read_reference(ref, 256), 256);
    char path[1024];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf",
             getenv("SPARSED_ROOT") ? getenv("SPARSED_ROOT") : ".");
    attn_config c = cfg_of(cases[_i].indexer, cases[_i].B, 1 << 20, 1, 1, GROUP_MAX);
    engine *e = open_engine(path, &c, 2);
    ck_assert(engine_layer_sparse(e, 0, 1));
    kv_layout l = engine_kv_layout(e);
    char err[256];
    kv_pool *p = kv_pool_create(&l, kv_pages_for(&l, 260), 1, err, sizeof err);
    ck_assert_msg(p != NULL, "%s", err);
    kv_seq s;
    kv_seq_init(&s);
    int32_t toks[260];
    float logits[512];
    toks[0] = engine_get_info(e)->bos;
    for (int k = 0; k < 256; k++) {
        ck_assert_int_eq(kv_seq_reserve(p, &s, k + 1), 0);
        engine_seq es = {.n_past = k, .n_new = 1, .blocks = s.pages, .n_blocks = s.n_pages, .logits = 1};
        engine_batch b = {.n_tokens = 1, .tokens = toks + k, .n_seqs = 1, .seqs = &es};
        ck_assert_msg(engine_step(e, p, &b, logits, err, sizeof err) == 1, "%s", err);
        int best = 0;
        for (int i = 1; i < 512; i++)
            if (logits[i] > logits[best])
                best = i;
        toks[k + 1] = best;
        ck_assert_msg(best == ref[k], "token %d: got %d, published %d", k, best, ref[k]);
    }
    kv_seq_release(p, &s);
    kv_pool_free(p);
    engine_free(e);
}
END_TEST

/* Runs toks[0..n) in steps of `chunk`, then n_dec decode steps, every row's
 * logits into rows, on a pool whose window layers have wp window pages of
 * their own (0: none), trimming before each step as the scheduler does.
 * With match, a second sequence first publishes the prompt's first m
 * tokens, and this one starts from its cached prefix (rows before the
 * match are left alone).  Returns the most window pages held at once. */
static int run_windowed(engine *e, const int32_t *toks, int n, int n_dec, int chunk, int wp, int m, float *rows)
{
    kv_layout l = engine_kv_layout(e);
    l.window_pages = wp;
    int total = n + n_dec, peak = 0, V = engine_get_info(e)->n_vocab;
    char err[256];
    kv_pool *p = kv_pool_create(&l, 2 * kv_pages_for(&l, total) + 2, 1, err, sizeof err);
    ck_assert_msg(p != NULL, "%s", err);
    kv_seq s;
    kv_seq_init(&s);
    int done = 0;
    if (m) {
        float *junk = malloc((size_t)m * V * sizeof(float));
        kv_seq a;
        kv_seq_init(&a);
        for (int d = 0; d < m;) {
            int k = m - d < chunk ? m - d : chunk;
            kv_seq_trim(p, &a, d);
            ck_assert_int_eq(kv_seq_reserve(p, &a, d + k), 0);
            engine_seq es = {.n_past = d, .n_new = k, .blocks = a.pages, .wblocks = a.wpages,
                             .n_blocks = a.n_pages, .logits = 2};
            engine_batch b = {.n_tokens = k, .tokens = toks + d, .n_seqs = 1, .seqs = &es};
            ck_assert_msg(engine_step(e, p, &b, junk, err, sizeof err) == k, "engine_step: %s", err);
            d += k;
            kv_seq_publish(p, &a, toks, d);
            kv_seq_trim(p, &a, d);
        }
        kv_seq_release(p, &a);
        free(junk);
        done = kv_seq_match_prefix(p, &s, toks, n);
        ck_assert_int_eq(done, (m / l.block_size) * l.block_size);
    }
    while (done < total) {
        int n_new = done < n ? (n - done < chunk ? n - done : chunk) : 1;
        kv_seq_trim(p, &s, done);
        ck_assert_int_eq(kv_seq_reserve(p, &s, done + n_new), 0);
        if (kv_pool_window(p) && kv_pool_n_used(kv_pool_window(p)) > peak)
            peak = kv_pool_n_used(kv_pool_window(p));
        engine_seq es = {.n_past = done, .n_new = n_new, .blocks = s.pages, .wblocks = s.wpages,
                         .n_blocks = s.n_pages, .logits = 2};
        engine_batch b = {.n_tokens = n_new, .tokens = toks + done, .n_seqs = 1, .seqs = &es};
        int r = engine_step(e, p, &b, rows + (size_t)done * V, err, sizeof err);
        ck_assert_msg(r == n_new, "engine_step: %s", err);
        done += n_new;
    }
    char perr[256];
    ck_assert_msg(kv_pool_check(p, perr, sizeof perr) == 0, "%s", perr);
    kv_seq_release(p, &s);
    kv_pool_free(p);
    return peak;
}

/* Gemma-3-style layers (every second one a window of 40 tokens): keeping
 * window layers in pages of their own, trimmed behind the window, gives the
 * same logits bit for bit as keeping every token, in steps shorter and
 * longer than the window, and from a prefix the cache matched. */
START_TEST(test_window_pages_same_logits)
{
    const char *path = mkmodel("--arch gemma3 --layers 4 --embd 64 --heads 4 --kv-heads 2 --head-dim 16 "
                               "--ff 128 --vocab 300 --ctx 1024 --swa-window 40 --swa-pattern 2 --seed 21");
    attn_config c = dense_cfg(16);
    engine *e = open_engine(path, &c, 2);
    kv_layout l = engine_kv_layout(e);
    ck_assert_int_eq(l.window, 40);
    ck_assert(kv_layer_windowed(&l, 0) && !kv_layer_windowed(&l, 1)); /* gemma3: every 2nd layer global */
    enum { N = 300, DEC = 20 };
    int V = engine_get_info(e)->n_vocab;
    int32_t toks[N + DEC];
    random_tokens(toks, N + DEC, V);
    size_t bytes = (size_t)(N + DEC) * V * sizeof(float);
    float *ref = malloc(bytes), *got = malloc(bytes);
    const int chunks[] = {7, 64, 130};
    for (int ci = 0; ci < 3; ci++) {
        int ch = chunks[ci];
        run_windowed(e, toks, N, DEC, ch, 0, 0, ref);
        int wp = kv_window_pages_for(&l, 1, ch);
        memset(got, 0, bytes);
        int peak = run_windowed(e, toks, N, DEC, ch, wp, 0, got);
        ck_assert_msg(memcmp(ref, got, bytes) == 0, "chunks of %d: logits differ", ch);
        ck_assert_int_le(peak, (40 - 1 + ch) / 16 + 2);
        /* from a cached prefix of 200 tokens (12 pages: 192 match), against the same steps without
         * window pages (the steps' sizes change the rounding) */
        run_windowed(e, toks, N, DEC, ch, 0, 200, ref);
        memset(got, 0, bytes);
        run_windowed(e, toks, N, DEC, ch, 4 * wp, 200, got);
        size_t from = (size_t)192 * V;
        ck_assert_msg(memcmp(ref + from, got + from, bytes - from * sizeof(float)) == 0,
                      "chunks of %d after a prefix match: logits differ", ch);
    }
    free(ref);
    free(got);
    engine_free(e);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("sparse");
    TCase *t = tcase_create("select");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_summary_is_min_max_sum);
    tcase_add_test(t, test_candidates_by_definition);
    tcase_add_loop_test(t, test_selection_matches_definition, 0, 6);
    tcase_add_test(t, test_full_budget_is_every_block);
    tcase_add_test(t, test_ties_pick_lower_blocks);
    tcase_add_test(t, test_msa_max_pooling_and_causality);
    tcase_add_test(t, test_nan_scores_rank_last);
    tcase_add_test(t, test_msa_scores_ahead_match);
    suite_add_tcase(s, t);

    TCase *en = tcase_create("engine");
    tcase_set_timeout(en, 300);
    tcase_add_unchecked_fixture(en, tmp_setup, tmp_teardown);
    tcase_add_loop_test(en, test_exact_full_budget_llama, 0, 16);
    tcase_add_test(en, test_window_pages_same_logits);
    tcase_add_loop_test(en, test_exact_full_budget_msa, 0, 16);
    tcase_add_loop_test(en, test_partial_budget_differs_and_is_deterministic, 0, 2);
    tcase_add_loop_test(en, test_engine_pages_match_definition, 0, 2);
    tcase_add_loop_test(en, test_engine_attention_matches_reference, 0, 4);
    tcase_add_loop_test(en, test_stories_sparse_full_budget_greedy, 0, 2);
    suite_add_tcase(s, en);
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
