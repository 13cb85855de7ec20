/* sampler: greedy, bias, penalties, top-k / top-p / min-p, seeding, the
 * empirical distribution against softmax, and logprobs. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

/* Test-local PRNG for making logits (independent of the sampler's). */
static uint64_t tr_state;
static float trand(void)
{
    tr_state = tr_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((tr_state >> 40) & 0xffffff) / (float)0x1000000;
}

static sampler *mk(float temp, int top_k, float top_p, float min_p, uint64_t seed, int V)
{
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.seed = seed;
    sampler *s = sampler_create(&p, V);
    ck_assert_ptr_nonnull(s);
    return s;
}

/* Samples once from a copy, so the caller's logits stay raw. */
static int32_t draw(sampler *s, const float *logits, int V)
{
    float *x = malloc((size_t)V * sizeof *x);
    memcpy(x, logits, (size_t)V * sizeof *x);
    int32_t t = sampler_sample(s, x, NULL, 0);
    free(x);
    ck_assert(t >= 0 && t < V);
    return t;
}

static int32_t ref_argmax(const float *x, int V)
{
    int32_t b = 0;
    for (int i = 1; i < V; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

START_TEST(defaults_and_create)
{
    sampler_params p;
    sampler_params_default(&p);
    ck_assert_float_eq(p.temperature, 1.0f);
    ck_assert_float_eq(p.top_p, 1.0f);
    ck_assert_int_eq(p.top_k, 0);
    ck_assert_float_eq(p.min_p, 0.0f);
    ck_assert_float_eq(p.repetition_penalty, 1.0f);
    ck_assert_float_eq(p.presence_penalty, 0.0f);
    ck_assert_float_eq(p.frequency_penalty, 0.0f);
    ck_assert_int_eq(p.n_bias, 0);
    ck_assert_ptr_null(sampler_create(&p, 0));
    ck_assert_ptr_null(sampler_create(NULL, 10));
    p.n_bias = 2; /* arrays missing */
    ck_assert_ptr_null(sampler_create(&p, 10));
    sampler_free(NULL);
}
END_TEST

START_TEST(greedy)
{
    enum { V = 5000 };
    static float x[V];
    tr_state = 1;
    sampler *s = mk(0, 0, 1, 0, 1, V);
    for (int r = 0; r < 20; r++) {
        for (int i = 0; i < V; i++) x[i] = trand() * 20 - 10;
        ck_assert_int_eq(draw(s, x, V), ref_argmax(x, V));
    }
    sampler_free(s);
    /* Ties go to the lowest id; NaN never wins. */
    s = mk(0, 0, 1, 0, 1, 6);
    float t[6] = { 1, 3, NAN, 3, -2, 3 };
    ck_assert_int_eq(draw(s, t, 6), 1);
    sampler_free(s);
    s = mk(0, 0, 1, 0, 1, 3);
    float n[3] = { NAN, -1, NAN };
    ck_assert_int_eq(draw(s, n, 3), 1);
    sampler_free(s);
}
END_TEST

START_TEST(logit_bias)
{
    enum { V = 50 };
    float x[V];
    for (int i = 0; i < V; i++) x[i] = (float)i / 10; /* 49 is the argmax */
    int32_t bt[3] = { 7, 49, 9999 /* out of range: ignored */ };
    float bv[3] = { 100, -100, 100 };
    float temps[2] = { 0, 1 };
    for (int ti = 0; ti < 2; ti++) {
        sampler_params p;
        sampler_params_default(&p);
        p.temperature = temps[ti];
        p.n_bias = 3;
        p.bias_tokens = bt;
        p.bias_values = bv;
        sampler *s = sampler_create(&p, V);
        /* The sampler copied the bias: changing ours must not matter. */
        bv[0] = 0;
        for (int r = 0; r < 50; r++) ck_assert_int_eq(draw(s, x, V), 7);
        bv[0] = 100;
        /* The bias is applied in place. */
        float y[V];
        memcpy(y, x, sizeof y);
        sampler_sample(s, y, NULL, 0);
        ck_assert_float_eq_tol(y[7], 100.7f, 1e-4);
        ck_assert_float_eq_tol(y[49], 4.9f - 100, 1e-4);
        sampler_free(s);
    }
    /* Banning alone: greedy picks the next best. */
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0;
    p.n_bias = 1;
    p.bias_tokens = &bt[1];
    p.bias_values = &bv[1];
    sampler *s = sampler_create(&p, V);
    ck_assert_int_eq(draw(s, x, V), 48);
    sampler_free(s);
}
END_TEST

static sampler *mk_pen(float temp, float rep, float pres, float freq)
{
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = temp;
    p.repetition_penalty = rep;
    p.presence_penalty = pres;
    p.frequency_penalty = freq;
    sampler *s = sampler_create(&p, 4);
    ck_assert_ptr_nonnull(s);
    return s;
}

START_TEST(penalties)
{
    /* Repetition: positive logits divided, negative multiplied, once per
     * distinct token however often it repeats. */
    sampler *s = mk_pen(0, 1.25f, 0, 0);
    float x[4] = { 2.0f, 1.9f, -1.0f, 0.5f };
    int32_t h[5] = { 0, 2, 0, 0, 77 /* out of range: ignored */ };
    ck_assert_int_eq(sampler_sample(s, x, h, 5), 1);
    ck_assert_float_eq_tol(x[0], 1.6f, 1e-6);
    ck_assert_float_eq_tol(x[1], 1.9f, 1e-6);
    ck_assert_float_eq_tol(x[2], -1.25f, 1e-6);
    ck_assert_float_eq_tol(x[3], 0.5f, 1e-6);
    float y[4] = { 2.0f, 1.9f, -1.0f, 0.5f };
    ck_assert_int_eq(sampler_sample(s, y, NULL, 0), 0); /* no history: no change */
    sampler_free(s);

    /* Presence: a flat amount for any token seen. */
    s = mk_pen(0, 1, 0.2f, 0);
    float a[4] = { 1.0f, 0.9f, 0, 0 };
    int32_t h3[3] = { 0, 0, 0 };
    ck_assert_int_eq(sampler_sample(s, a, h3, 3), 1);
    ck_assert_float_eq_tol(a[0], 0.8f, 1e-6);
    sampler_free(s);

    /* Frequency: proportional to the count. */
    s = mk_pen(0, 1, 0, 0.05f);
    float b[4] = { 1.0f, 0.9f, 0, 0 };
    ck_assert_int_eq(sampler_sample(s, b, h3, 3), 1);
    ck_assert_float_eq_tol(b[0], 0.85f, 1e-6);
    sampler_free(s);
    s = mk_pen(0, 1, 0, 0.02f);
    float c[4] = { 1.0f, 0.9f, 0, 0 };
    ck_assert_int_eq(sampler_sample(s, c, h3, 3), 0);
    ck_assert_float_eq_tol(c[0], 0.94f, 1e-6);
    sampler_free(s);

    /* All three together: rep first, then presence + frequency * count. */
    s = mk_pen(0, 2.0f, 0.1f, 0.3f);
    float d[4] = { 3.0f, -1.0f, 0.2f, 0.0f };
    int32_t hd[4] = { 0, 1, 1, 0 };
    sampler_sample(s, d, hd, 4);
    ck_assert_float_eq_tol(d[0], 3.0f / 2 - 0.1f - 0.6f, 1e-6);
    ck_assert_float_eq_tol(d[1], -2.0f - 0.1f - 0.6f, 1e-6);
    ck_assert_float_eq_tol(d[2], 0.2f, 1e-6);
    sampler_free(s);

    /* Negative presence encourages a seen token, also when sampling. */
    s = mk_pen(1, 1, -50, 0);
    float e[4] = { 0, 0, 0, 0 };
    int32_t he[1] = { 3 };
    for (int r = 0; r < 20; r++) {
        float f[4];
        memcpy(f, e, sizeof f);
        ck_assert_int_eq(sampler_sample(s, f, he, 1), 3);
    }
    sampler_free(s);
}
END_TEST

/* A long history against a brute-force count of every token. */
START_TEST(penalties_long_history)
{
    enum { V = 300, H = 5000 };
    static float x[V], ref[V];
    static int32_t h[H];
    tr_state = 5;
    for (int i = 0; i < V; i++) x[i] = ref[i] = trand() * 8 - 4;
    for (int i = 0; i < H; i++) h[i] = (int32_t)(trand() * trand() * 250) - (i % 97 == 0 ? 400 : 0);
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 0;
    p.repetition_penalty = 1.3f;
    p.presence_penalty = 0.25f;
    p.frequency_penalty = 0.01f;
    sampler *s = sampler_create(&p, V);
    sampler_sample(s, x, h, H);
    int seen = 0;
    for (int t = 0; t < V; t++) {
        int c = 0;
        for (int i = 0; i < H; i++) c += h[i] == t;
        float l = ref[t];
        if (c > 0) {
            seen++;
            l = l > 0 ? l / 1.3f : l * 1.3f;
            l -= 0.25f + 0.01f * (float)c;
        }
        ck_assert_float_eq_tol(x[t], l, 1e-5);
    }
    ck_assert_int_gt(seen, 100);
    ck_assert_int_lt(seen, 250);
    sampler_free(s);
}
END_TEST

START_TEST(top_k_one_and_tiny_top_p_are_greedy)
{
    enum { V = 3000 };
    static float x[V];
    tr_state = 7;
    float temps[4] = { 0.1f, 1, 3, 100 };
    for (int ti = 0; ti < 4; ti++) {
        sampler *a = mk(temps[ti], 1, 1, 0, 42 + ti, V);
        sampler *b = mk(temps[ti], 0, 1e-6f, 0, 43 + ti, V);
        sampler *c = mk(temps[ti], 0, 0, 0, 44 + ti, V); /* top_p 0: top token only */
        for (int r = 0; r < 30; r++) {
            for (int i = 0; i < V; i++) x[i] = trand() * 4;
            if (r % 3 == 0) x[V - 5] = x[17] = 5; /* a tie: lowest id */
            int32_t g = ref_argmax(x, V);
            ck_assert_int_eq(draw(a, x, V), g);
            ck_assert_int_eq(draw(b, x, V), g);
            ck_assert_int_eq(draw(c, x, V), g);
        }
        sampler_free(a);
        sampler_free(b);
        sampler_free(c);
    }
}
END_TEST

START_TEST(top_k_top_p_min_p_cut)
{
    /* probs at T=1 proportional to 1, e^-1, e^-3, e^-5, e^-8 */
    float x[5] = { 0, -1, -3, -5, -8 };
    int hits[5];

    /* top_k = 2: only the two best. */
    sampler *s = mk(1, 2, 1, 0, 5, 5);
    memset(hits, 0, sizeof hits);
    for (int r = 0; r < 3000; r++) hits[draw(s, x, 5)]++;
    ck_assert(hits[0] > 0 && hits[1] > 0);
    ck_assert_int_eq(hits[2] + hits[3] + hits[4], 0);
    sampler_free(s);

    /* min_p = 0.1: p_i / p_max >= 0.1 keeps ids 0 and 1 (e^-3 = 0.05). */
    s = mk(1, 0, 1, 0.1f, 6, 5);
    memset(hits, 0, sizeof hits);
    for (int r = 0; r < 3000; r++) hits[draw(s, x, 5)]++;
    ck_assert(hits[0] > 0 && hits[1] > 0);
    ck_assert_int_eq(hits[2] + hits[3] + hits[4], 0);
    sampler_free(s);
    /* min_p = 0.04 keeps id 2 too; at T=2 the ratios are e^-1.5 = 0.22
     * for id 2, e^-2.5 = 0.08 for id 3: min_p 0.1 keeps 0..2. */
    s = mk(1, 0, 1, 0.04f, 7, 5);
    memset(hits, 0, sizeof hits);
    for (int r = 0; r < 3000; r++) hits[draw(s, x, 5)]++;
    ck_assert(hits[2] > 0);
    ck_assert_int_eq(hits[3] + hits[4], 0);
    sampler_free(s);
    s = mk(2, 0, 1, 0.1f, 8, 5);
    memset(hits, 0, sizeof hits);
    for (int r = 0; r < 3000; r++) hits[draw(s, x, 5)]++;
    ck_assert(hits[2] > 0);
    ck_assert_int_eq(hits[3] + hits[4], 0);
    sampler_free(s);
    /* min_p with top_k (the sorted path). */
    s = mk(1, 4, 1, 0.1f, 9, 5);
    memset(hits, 0, sizeof hits);
    for (int r = 0; r < 3000; r++) hits[draw(s, x, 5)]++;
    ck_assert(hits[1] > 0);
    ck_assert_int_eq(hits[2] + hits[3] + hits[4], 0);
    sampler_free(s);

    /* top_p: p = {0.4, 0.35, 0.25}: 0.5 needs the first two. */
    float y[3] = { logf(0.4f), logf(0.35f), logf(0.25f) };
    s = mk(1, 0, 0.5f, 0, 10, 3);
    memset(hits, 0, sizeof hits);
    for (int r = 0; r < 3000; r++) hits[draw(s, y, 3)]++;
    ck_assert(hits[0] > 0 && hits[1] > 0);
    ck_assert_int_eq(hits[2], 0);
    sampler_free(s);
    /* 0.39 needs only the first. */
    s = mk(1, 0, 0.39f, 0, 11, 3);
    for (int r = 0; r < 200; r++) ck_assert_int_eq(draw(s, y, 3), 0);
    sampler_free(s);
    /* top_k then top_p over the renormalized top-k: within {0, 1} the
     * first holds 0.4 / 0.75 = 0.53, so top_p 0.5 keeps it alone. */
    s = mk(1, 2, 0.5f, 0, 12, 3);
    for (int r = 0; r < 200; r++) ck_assert_int_eq(draw(s, y, 3), 0);
    sampler_free(s);
}
END_TEST

/* A flat 100K vocabulary: top_p 0.5 keeps exactly the 50000 lowest ids
 * (ties rank by id), which needs the sorted prefix to grow several times. */
START_TEST(top_p_large_vocab)
{
    enum { V = 100000 };
    static float x[V];
    for (int i = 0; i < V; i++) x[i] = 0;
    sampler *s = mk(1, 0, 0.5f, 0, 13, V);
    int32_t lo = V, hi = -1;
    for (int r = 0; r < 60; r++) {
        int32_t t = draw(s, x, V);
        ck_assert_int_lt(t, V / 2);
        if (t < lo) lo = t;
        if (t > hi) hi = t;
    }
    ck_assert_int_lt(lo, 10000);
    ck_assert_int_gt(hi, 40000);
    sampler_free(s);

    /* Peaked: one token holds > 0.9 of the mass. */
    for (int i = 0; i < V; i++) x[i] = -20 + (float)(i % 7);
    x[12345] = 10;
    s = mk(1, 0, 0.9f, 0, 14, V);
    for (int r = 0; r < 50; r++) ck_assert_int_eq(draw(s, x, V), 12345);
    sampler_free(s);
}
END_TEST

START_TEST(seeding)
{
    enum { V = 1000, N = 1000 };
    static float x[V];
    tr_state = 3;
    for (int i = 0; i < V; i++) x[i] = trand() * 3;
    static int32_t a[N], b[N], c[N];
    for (int cfg = 0; cfg < 3; cfg++) {
        int top_k = cfg == 1 ? 50 : 0;
        float top_p = cfg == 2 ? 0.9f : 1;
        sampler *sa = mk(1, top_k, top_p, 0, 1234, V);
        sampler *sb = mk(1, top_k, top_p, 0, 1234, V);
        sampler *sc = mk(1, top_k, top_p, 0, 1235, V);
        for (int i = 0; i < N; i++) {
            a[i] = draw(sa, x, V);
            b[i] = draw(sb, x, V);
            c[i] = draw(sc, x, V);
        }
        int diff = 0;
        for (int i = 0; i < N; i++) {
            ck_assert_int_eq(a[i], b[i]);
            diff += a[i] != c[i];
        }
        ck_assert_int_gt(diff, N / 2);
        sampler_free(sa);
        sampler_free(sb);
        sampler_free(sc);
    }
}
END_TEST

/* sampler_pick's rule with the draw given, as the CUDA engine's sampler
 * follows it: top-k survivors walked best first, every other set (all,
 * min-p, the top-p nucleus) walked in id order. */
START_TEST(pick_rule)
{
    static const double prob[5] = { 0.1, 0.4, 0.05, 0.3, 0.15 };
    float x[5];
    for (int i = 0; i < 5; i++) x[i] = (float)log(prob[i]);
    sampler_params p;
    sampler_params_default(&p);
    p.temperature = 1;
    /* everything, id order: cumulative 0.1 0.5 0.55 0.85 1 */
    ck_assert_int_eq(sampler_pick(&p, x, 5, 0.05), 0);
    ck_assert_int_eq(sampler_pick(&p, x, 5, 0.52), 2);
    ck_assert_int_eq(sampler_pick(&p, x, 5, 0.99), 4);
    /* top-p 0.8: nucleus {1, 3, 4} (0.4 + 0.3 + 0.15), drawn in id order */
    p.top_p = 0.8f;
    ck_assert_int_eq(sampler_pick(&p, x, 5, 0.0), 1);
    ck_assert_int_eq(sampler_pick(&p, x, 5, 0.47), 1);
    ck_assert_int_eq(sampler_pick(&p, x, 5, 0.48), 3);
    ck_assert_int_eq(sampler_pick(&p, x, 5, 0.9), 4);
    /* min-p 0.3 (w >= 0.3 x the best): the same set, the same order */
    p.top_p = 1;
    p.min_p = 0.3f;
    ck_assert_int_eq(sampler_pick(&p, x, 5, 0.9), 4);
    ck_assert_int_eq(sampler_pick(&p, x, 5, 0.48), 3);
    /* top-k 2: {1, 3} walked best first: 0.4 then 0.3 of 0.7 */
    p.min_p = 0;
    p.top_k = 2;
    ck_assert_int_eq(sampler_pick(&p, x, 5, 0.5), 1);
    ck_assert_int_eq(sampler_pick(&p, x, 5, 0.6), 3);
    /* greedy takes no draw */
    p.temperature = 0;
    ck_assert_int_eq(sampler_pick(&p, x, 5, 0.99), 1);
    sampler *g = mk(0, 0, 1, 0, 7, 5);
    ck_assert(sampler_draw(g) == 0.0);
    ck_assert_int_eq(draw(g, x, 5), 1);
    sampler_free(g);
    /* sampler_sample = sampler_pick with sampler_draw's stream */
    sampler *a = mk(1.3f, 0, 0.9f, 0.01f, 99, 5), *b = mk(1.3f, 0, 0.9f, 0.01f, 99, 5);
    for (int i = 0; i < 200; i++) {
        double u = sampler_draw(b);
        ck_assert(u >= 0 && u < 1);
        ck_assert_int_eq(draw(a, x, 5), sampler_pick(sampler_get_params(b), x, 5, u));
    }
    sampler_free(a);
    sampler_free(b);
}
END_TEST

/* Draw counts against softmax(x / T) within 5 standard deviations. */
static void check_dist(sampler *s, const float *x, int V, const double *want, int N)
{
    int hits[8] = { 0 };
    for (int r = 0; r < N; r++) hits[draw(s, x, V)]++;
    for (int i = 0; i < V; i++) {
        double f = (double)hits[i] / N, sd = sqrt(want[i] * (1 - want[i]) / N);
        ck_assert_msg(fabs(f - want[i]) <= 5 * sd + 1e-12, "token %d: %.4f vs %.4f", i, f,
                      want[i]);
    }
}

START_TEST(distribution_matches_softmax)
{
    enum { V = 4, N = 100000 };
    float x[V] = { 1.0f, 0.5f, 0.0f, -1.0f };
    double want[V], z = 0;
    float temps[2] = { 1, 2 };
    for (int ti = 0; ti < 2; ti++) {
        z = 0;
        for (int i = 0; i < V; i++) z += exp(x[i] / temps[ti]);
        for (int i = 0; i < V; i++) want[i] = exp(x[i] / temps[ti]) / z;
        sampler *s = mk(temps[ti], 0, 1, 0, 99, V);           /* one-pass path */
        check_dist(s, x, V, want, N);
        sampler_free(s);
        s = mk(temps[ti], 0, 0.99999f, 0, 98, V);             /* sorted path */
        check_dist(s, x, V, want, N);
        sampler_free(s);
        s = mk(temps[ti], 0, 1, 0.01f, 97, V);                /* min-p, keeps all */
        check_dist(s, x, V, want, N);
        sampler_free(s);
    }
    /* top_k = 3 renormalizes over the three best. */
    z = 0;
    for (int i = 0; i < 3; i++) z += exp(x[i]);
    for (int i = 0; i < 3; i++) want[i] = exp(x[i]) / z;
    want[3] = 0;
    sampler *s = mk(1, 3, 1, 0, 96, V);
    check_dist(s, x, V, want, N);
    sampler_free(s);
}
END_TEST

START_TEST(degenerate_rows)
{
    float x[4] = { -INFINITY, -INFINITY, -INFINITY, -INFINITY };
    sampler *s = mk(1, 0, 1, 0, 1, 4);
    int32_t t = draw(s, x, 4); /* any valid id, no crash */
    ck_assert(t >= 0 && t < 4);
    float y[4] = { NAN, 0, NAN, -INFINITY };
    for (int r = 0; r < 50; r++) ck_assert_int_eq(draw(s, y, 4), 1);
    sampler_free(s);
    s = mk(1, 2, 0.5f, 0.5f, 1, 4);
    for (int r = 0; r < 50; r++) ck_assert_int_eq(draw(s, y, 4), 1);
    sampler_free(s);
    /* A tiny temperature behaves as greedy without overflowing. */
    float w[3] = { 1e30f, 2e30f, -1e30f };
    s = mk(1e-30f, 0, 1, 0, 1, 3);
    for (int r = 0; r < 20; r++) ck_assert_int_eq(draw(s, w, 3), 1);
    sampler_free(s);
    float u[3] = { 0.5f, 1, 0.25f };
    s = mk(1e-40f, 0, 0.9f, 0, 1, 3); /* 1/T overflows a float */
    for (int r = 0; r < 20; r++) ck_assert_int_eq(draw(s, u, 3), 1);
    sampler_free(s);
}
END_TEST

START_TEST(logprobs)
{
    enum { V = 1000 };
    static float x[V];
    tr_state = 11;
    for (int i = 0; i < V; i++) x[i] = trand() * 30 - 15;
    int32_t ids[V];
    float lp[V];
    float chosen = logprobs_top(x, V, 17, V, ids, lp);
    double z = 0, m = x[ref_argmax(x, V)];
    for (int i = 0; i < V; i++) z += exp((double)x[i] - m);
    ck_assert_double_eq_tol(chosen, x[17] - (m + log(z)), 1e-4);
    double sum = 0;
    for (int i = 0; i < V; i++) {
        sum += exp(lp[i]);
        if (i > 0) ck_assert(lp[i] <= lp[i - 1]);
        ck_assert_double_eq_tol(lp[i], x[ids[i]] - (m + log(z)), 1e-4);
    }
    ck_assert_double_eq_tol(sum, 1.0, 1e-4);
    ck_assert_int_eq(ids[0], ref_argmax(x, V));

    /* n = 0 and n larger than the vocabulary. */
    ck_assert_double_eq_tol(logprobs_top(x, V, 17, 0, NULL, NULL), chosen, 1e-6);
    float y[3] = { 2, 2, 1 };
    int32_t id5[5];
    float lp5[5];
    logprobs_top(y, 3, 0, 5, id5, lp5);
    ck_assert_int_eq(id5[0], 0);
    ck_assert_int_eq(id5[1], 1);
    ck_assert_int_eq(id5[2], 2);
    ck_assert_int_eq(id5[3], -1);
    ck_assert(isinf(lp5[4]) && lp5[4] < 0);

    /* Large logits: stable, no inf or NaN. */
    float big[3] = { 10000, 9999, -10000 };
    int32_t bi[2];
    float bl[2];
    float c = logprobs_top(big, 3, 1, 2, bi, bl);
    ck_assert(isfinite(c) && isfinite(bl[0]) && isfinite(bl[1]));
    ck_assert_double_eq_tol(bl[0], -log(1 + exp(-1.0)), 1e-4);
    ck_assert_double_eq_tol(c, -1 - log(1 + exp(-1.0)), 1e-4);
    ck_assert(isinf(logprobs_top(big, 3, 2, 0, NULL, NULL)) == 0);
    /* Bad chosen id: -inf, no crash. */
    ck_assert(isinf(logprobs_top(big, 3, 7, 0, NULL, NULL)));
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("sampler");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, defaults_and_create);
    tcase_add_test(tc, greedy);
    tcase_add_test(tc, logit_bias);
    tcase_add_test(tc, penalties);
    tcase_add_test(tc, penalties_long_history);
    tcase_add_test(tc, top_k_one_and_tiny_top_p_are_greedy);
    tcase_add_test(tc, top_k_top_p_min_p_cut);
    tcase_add_test(tc, top_p_large_vocab);
    tcase_add_test(tc, seeding);
    tcase_add_test(tc, pick_rule);
    tcase_add_test(tc, distribution_matches_softmax);
    tcase_add_test(tc, degenerate_rows);
    tcase_add_test(tc, logprobs);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
