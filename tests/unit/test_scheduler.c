/* Scheduler tests with a fake model over a real KV pool.
 *
 * The fake writes each token's id and position into its page slot and
 * computes the next token from what it reads back through the block table,
 * so a wrong table, a page freed too early, a bad prefix-cache hit or a
 * broken recompute after preemption changes the output.  Every test
 * compares against the same function computed directly on the token list.
 * Token t reads as the letter 'a' + t % 26; token V-1 ends generation.
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "scheduler/scheduler.h"

#define V 64
#define EOG (V - 1)

typedef struct fake {
    int delay_us;       /* per step, to make timeouts observable */
    int fail;           /* step returns an error */
    int steps;
    int max_seqs;       /* largest batch seen */
    int watch_first[2]; /* watch_step[i]: the step (1-based) at which the */
    int watch_len[2];   /* sequence starting with token watch_first[i] first */
    int watch_step[2];  /* reached watch_len[i] tokens (0 = not yet) */
    int ic_budget, ic;  /* interactive_context check: the step's budget and context */
    int ic_over, ic_cut; /* chunks beside a decode over their cap; chunks cut below 256 */
    int chunk_steps;     /* steps with a prefill chunk (a sequence with more than one new token) */
} fake;

/* The model: next token from the whole history (never EOG unless the
 * history ends in 7, 7, 7). */
static int32_t next_of(const int32_t *t, int n)
{
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < n; i++)
        h = (h ^ (uint64_t)(t[i] + 1) * (uint64_t)(i + 1)) * 1099511628211ULL;
    if (n >= 3 && t[n - 1] == 7 && t[n - 2] == 7 && t[n - 3] == 7)
        return EOG;
    return (int32_t)(h % (V - 1));
}

static int fake_step(void *ctx, kv_pool *pool, const engine_batch *b, float *logits,
                     char *err, size_t errlen)
{
    fake *f = ctx;
    if (f->fail) {
        snprintf(err, errlen, "fake failure");
        return -1;
    }
    if (f->delay_us)
        usleep((useconds_t)f->delay_us);
    f->steps++;
    if (b->n_seqs > f->max_seqs)
        f->max_seqs = b->n_seqs;
    for (int s = 0; s < b->n_seqs; s++)
        if (b->seqs[s].n_new > 1) {
            f->chunk_steps++;
            break;
        }
    const kv_layout *l = kv_pool_layout(pool);
    int B = l->block_size, rows = 0;
    if (f->ic) {
        int decoding = 0;
        for (int s = 0; s < b->n_seqs; s++)
            decoding |= b->seqs[s].n_new == 1 && b->seqs[s].logits;
        for (int s = 0; s < b->n_seqs; s++) {
            const engine_seq *q = &b->seqs[s];
            if (!decoding || q->n_new == 1 || q->n_past <= f->ic)
                continue;
            long cap = (long)f->ic_budget * f->ic / q->n_past;
            f->ic_over += q->n_new > (cap < 128 ? 128 : cap);
            f->ic_cut += q->n_new < 256;
        }
    }
    for (int s = 0; s < b->n_seqs; s++) {
        const engine_seq *q = &b->seqs[s];
        int total = q->n_past + q->n_new;
        if (q->n_blocks * B < total) {
            snprintf(err, errlen, "block table too short");
            return -1;
        }
        for (int i = 0; i < q->n_new; i++) {
            int pos = q->n_past + i;
            float *k = kv_page_k(pool, q->blocks[pos / B], 0) + (size_t)(pos % B) * l->head_dim;
            k[0] = (float)b->tokens[q->tok_offset + i];
            k[1] = (float)pos;
        }
        int first = (int)kv_page_k(pool, q->blocks[0], 0)[0];
        for (int w = 0; w < 2; w++)
            if (f->watch_len[w] && !f->watch_step[w] && first == f->watch_first[w] && total >= f->watch_len[w])
                f->watch_step[w] = f->steps;
        if (!q->logits)
            continue;
        int32_t *hist = malloc((size_t)total * sizeof(int32_t));
        for (int pos = 0; pos < total; pos++) {
            const float *k = kv_page_k(pool, q->blocks[pos / B], 0) + (size_t)(pos % B) * l->head_dim;
            if ((int)k[1] != pos) {
                snprintf(err, errlen, "page slot holds position %d, expected %d", (int)k[1], pos);
                free(hist);
                return -1;
            }
            hist[pos] = (int32_t)k[0];
        }
        /* logits 1: the row after the last token; 2: one after each new token */
        for (int k = q->logits == 2 ? 0 : q->n_new - 1; k < q->n_new; k++) {
            float *row = logits + (size_t)rows++ * V;
            for (int v = 0; v < V; v++)
                row[v] = 0;
            row[next_of(hist, q->n_past + k + 1)] = 10;
        }
        free(hist);
    }
    return rows;
}

static int fake_eog(void *ctx, int32_t t) { (void)ctx; return t == EOG; }

static int fake_detok(void *ctx, detok *d, int32_t t, char *out, int cap)
{
    (void)ctx;
    (void)d;
    if (cap < 2)
        return 0;
    out[0] = (char)('a' + t % 26);
    out[1] = 0;
    return 1;
}

typedef struct world {
    fake f;
    kv_pool *pool;
    sched *s;
    pthread_t th;
    int running;
} world;

static void *loop_main(void *p)
{
    sched_run(p);
    return NULL;
}

static void world_start(world *w, int pages, sched_opts *o)
{
    memset(&w->f, 0, sizeof w->f);
    kv_layout l = {.n_layers = 1, .n_kv_heads = 1, .head_dim = 2, .block_size = 16};
    char err[256];
    w->pool = kv_pool_create(&l, pages, 1, err, sizeof err);
    ck_assert_msg(w->pool != NULL, "%s", err);
    sched_backend be = {.ctx = &w->f, .n_vocab = V, .n_ctx = 4096, .step = fake_step,
                        .is_eog = fake_eog, .detok = fake_detok};
    o->handle_signals = 0;
    w->s = sched_create(&be, w->pool, o, err, sizeof err);
    ck_assert_msg(w->s != NULL, "%s", err);
    w->running = 0;
}

static void world_run(world *w)
{
    ck_assert_int_eq(pthread_create(&w->th, NULL, loop_main, w->s), 0);
    w->running = 1;
}

static void world_stop(world *w)
{
    if (w->running) {
        sched_drain(w->s);
        pthread_join(w->th, NULL);
    }
    sched_free(w->s);
    ck_assert_int_eq(kv_pool_n_used(w->pool), 0);
    char err[256];
    ck_assert_msg(kv_pool_check(w->pool, err, sizeof err) == 0, "%s", err);
    kv_pool_free(w->pool);
}

/* A request's collected output. */
typedef struct result {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int woken;
    int n_choices;
    int32_t toks[8][600];
    int n_toks[8];
    char text[8][700];
    int finish[8];
    int done, error_status, cached, completion;
    char message[200];
    int keepalives;
} result;

static void on_notify(void *user)
{
    result *r = user;
    pthread_mutex_lock(&r->mu);
    r->woken = 1;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void result_init(result *r, int n_choices)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->n_choices = n_choices;
}

/* Drains events until DONE/ERROR (or the deadline). */
static void collect(sched_req *q, result *r, double timeout_s)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += (time_t)timeout_s + 1;
    while (!r->done) {
        sched_event *ev;
        while ((ev = sched_req_next(q))) {
            int i = ev->index;
            switch (ev->type) {
            case SCHED_EV_TOKEN:
                r->toks[i][r->n_toks[i]++] = ev->token;
                /* fallthrough */
            case SCHED_EV_FINISH:
                strncat(r->text[i], ev->text, sizeof r->text[i] - strlen(r->text[i]) - 1);
                if (ev->type == SCHED_EV_FINISH)
                    r->finish[i] = ev->finish;
                break;
            case SCHED_EV_DONE:
                r->done = 1;
                r->cached = ev->cached_tokens;
                r->completion = ev->completion_tokens;
                break;
            case SCHED_EV_ERROR:
                r->done = 1;
                r->error_status = ev->status;
                snprintf(r->message, sizeof r->message, "%s", ev->message);
                break;
            case SCHED_EV_KEEPALIVE:
                r->keepalives++;
                break;
            }
            sched_event_free(ev);
        }
        if (r->done)
            break;
        pthread_mutex_lock(&r->mu);
        int rc = 0;
        while (!r->woken && rc == 0)
            rc = pthread_cond_timedwait(&r->cv, &r->mu, &dl);
        r->woken = 0;
        pthread_mutex_unlock(&r->mu);
        ck_assert_msg(rc == 0, "timed out waiting for events");
    }
}

static void params(sched_params *p, int n, int max_tokens)
{
    memset(p, 0, sizeof *p);
    p->n = n;
    p->max_tokens = max_tokens;
    p->logprobs = -1;
    p->prompt_logprobs = -1;
    sampler_params_default(&p->sampling);
    p->sampling.temperature = 0;
}

static int make_prompt(int32_t *t, int n, int seed)
{
    for (int i = 0; i < n; i++)
        t[i] = (int32_t)((seed * 31 + i * 7) % (V - 1));
    return n;
}

/* Reference: greedy continuation computed directly. */
static int reference(const int32_t *prompt, int n, int max_tokens, int32_t *out)
{
    int32_t *h = malloc((size_t)(n + max_tokens) * sizeof(int32_t));
    memcpy(h, prompt, (size_t)n * sizeof(int32_t));
    int k = 0;
    while (k < max_tokens) {
        int32_t t = next_of(h, n + k);
        if (t == EOG)
            break;
        h[n + k] = t;
        out[k++] = t;
    }
    free(h);
    return k;
}

static sched_req *submit(world *w, const int32_t *prompt, int n, const sched_params *p, result *r)
{
    sched_prompt sp = {prompt, n};
    sched_req *q = NULL;
    char err[256];
    int rc = sched_submit(w->s, &sp, 1, p, on_notify, r, &q, err, sizeof err);
    ck_assert_msg(rc == SCHED_OK, "submit: %s", err);
    return q;
}

START_TEST(single_request)
{
    world w;
    sched_opts o;
    sched_opts_default(&o);
    world_start(&w, 64, &o);
    world_run(&w);
    int32_t prompt[40], ref[50];
    make_prompt(prompt, 40, 1);
    int nref = reference(prompt, 40, 50, ref);
    sched_params p;
    params(&p, 1, 50);
    result r;
    result_init(&r, 1);
    sched_req *q = submit(&w, prompt, 40, &p, &r);
    collect(q, &r, 10);
    sched_req_release(q);
    ck_assert_int_eq(r.error_status, 0);
    ck_assert_int_eq(r.n_toks[0], nref);
    ck_assert_mem_eq(r.toks[0], ref, (size_t)nref * sizeof(int32_t));
    ck_assert_int_eq(r.finish[0], nref == 50 ? SCHED_FINISH_LENGTH : SCHED_FINISH_STOP);
    ck_assert_int_eq(r.completion, nref);
    for (int i = 0; i < nref; i++)
        ck_assert_int_eq(r.text[0][i], 'a' + ref[i] % 26);
    world_stop(&w);
}
END_TEST

/* More sequences than the pool holds: preemption by recompute, every output
 * exact, the pool empty afterwards. */
START_TEST(preemption_exact)
{
    enum { N = 12, PL = 30, MT = 120 };
    world w;
    sched_opts o;
    sched_opts_default(&o);
    o.max_running = N;
    o.max_batch_tokens = 64;
    /* 20 pages of 16 tokens; each sequence ends at 150 tokens = 10 pages */
    world_start(&w, 20, &o);
    static int32_t prompts[N][PL];
    static result res[N];
    sched_req *qs[N];
    sched_params p;
    params(&p, 1, MT);
    p.ignore_eos = 1;
    for (int i = 0; i < N; i++) {
        make_prompt(prompts[i], PL, 100 + i);
        result_init(&res[i], 1);
        qs[i] = submit(&w, prompts[i], PL, &p, &res[i]);
    }
    world_run(&w);
    for (int i = 0; i < N; i++) {
        collect(qs[i], &res[i], 30);
        sched_req_release(qs[i]);
        ck_assert_int_eq(res[i].error_status, 0);
        ck_assert_int_eq(res[i].n_toks[0], MT);
        /* with ignore_eos the reference runs through EOG tokens too */
        int32_t h[PL + MT];
        memcpy(h, prompts[i], sizeof prompts[i]);
        for (int k = 0; k < MT; k++) {
            h[PL + k] = next_of(h, PL + k);
            ck_assert_int_eq(res[i].toks[0][k], h[PL + k]);
        }
        ck_assert_int_eq(res[i].finish[0], SCHED_FINISH_LENGTH);
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    sched_metrics(w.s, &buf, &len, &cap);
    ck_assert_ptr_nonnull(strstr(buf, "vllm:num_preemptions_total"));
    ck_assert_ptr_null(strstr(buf, "vllm:num_preemptions_total{model_name=\"\"} 0\n"));
    free(buf);
    ck_assert_int_gt(w.f.max_seqs, 1);
    world_stop(&w);
}
END_TEST

START_TEST(prefix_cache_and_n)
{
    world w;
    sched_opts o;
    sched_opts_default(&o);
    world_start(&w, 64, &o);
    world_run(&w);
    int32_t prompt[100], ref[20];
    make_prompt(prompt, 100, 7);
    int nref = reference(prompt, 100, 20, ref);
    sched_params p;
    params(&p, 1, 20);
    result a, b;
    result_init(&a, 1);
    sched_req *qa = submit(&w, prompt, 100, &p, &a);
    collect(qa, &a, 10);
    sched_req_release(qa);
    ck_assert_int_eq(a.cached, 0);
    result_init(&b, 1);
    sched_req *qb = submit(&w, prompt, 100, &p, &b);
    collect(qb, &b, 10);
    sched_req_release(qb);
    ck_assert_int_eq(b.cached, 96);      /* six full pages; the last token is always computed */
    ck_assert_int_eq(b.n_toks[0], nref);
    ck_assert_mem_eq(b.toks[0], ref, (size_t)nref * sizeof(int32_t));

    /* n = 4 greedy: four identical choices, the followers served from the leader's pages */
    int32_t p2[70];
    make_prompt(p2, 70, 9);
    nref = reference(p2, 70, 20, ref);
    params(&p, 4, 20);
    result c;
    result_init(&c, 4);
    sched_req *qc = submit(&w, p2, 70, &p, &c);
    collect(qc, &c, 10);
    sched_req_release(qc);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(c.n_toks[i], nref);
        ck_assert_mem_eq(c.toks[i], ref, (size_t)nref * sizeof(int32_t));
    }
    ck_assert_int_eq(c.completion, 4 * nref);
    world_stop(&w);
}
END_TEST

START_TEST(stop_strings)
{
    world w;
    sched_opts o;
    sched_opts_default(&o);
    world_start(&w, 64, &o);
    world_run(&w);
    int32_t prompt[10], ref[60];
    make_prompt(prompt, 10, 3);
    int nref = reference(prompt, 10, 60, ref);
    ck_assert_int_ge(nref, 30);
    char full[61];
    for (int i = 0; i < nref; i++)
        full[i] = (char)('a' + ref[i] % 26);
    full[nref] = 0;
    /* a three-letter stop string starting at 20, and one that never occurs */
    char stop[4];
    memcpy(stop, full + 20, 3);
    stop[3] = 0;
    const char *stops[] = {"#never#", stop};
    int at = (int)(strstr(full, stop) - full);
    sched_params p;
    params(&p, 1, 60);
    p.stop = stops;
    p.n_stop = 2;
    result r;
    result_init(&r, 1);
    sched_req *q = submit(&w, prompt, 10, &p, &r);
    collect(q, &r, 10);
    sched_req_release(q);
    ck_assert_int_eq(r.finish[0], SCHED_FINISH_STOP);
    ck_assert_int_eq((int)strlen(r.text[0]), at);
    ck_assert(strncmp(r.text[0], full, (size_t)at) == 0);
    /* generation ended at the token that completed the stop string */
    ck_assert_int_eq(r.n_toks[0], at + 3);
    world_stop(&w);
}
END_TEST

START_TEST(eog_stops)
{
    world w;
    sched_opts o;
    sched_opts_default(&o);
    world_start(&w, 64, &o);
    world_run(&w);
    int32_t prompt[5] = {1, 2, 7, 7, 7};   /* the fake answers EOG */
    sched_params p;
    params(&p, 1, 10);
    result r;
    result_init(&r, 1);
    sched_req *q = submit(&w, prompt, 5, &p, &r);
    collect(q, &r, 10);
    sched_req_release(q);
    ck_assert_int_eq(r.finish[0], SCHED_FINISH_STOP);
    ck_assert_int_eq(r.n_toks[0], 0);      /* the EOG token is not output */
    ck_assert_int_eq(r.completion, 1);     /* but it is counted */
    world_stop(&w);
}
END_TEST

START_TEST(cancel_frees_pages)
{
    world w;
    sched_opts o;
    sched_opts_default(&o);
    world_start(&w, 64, &o);
    w.f.delay_us = 200;
    world_run(&w);
    int32_t prompt[50];
    make_prompt(prompt, 50, 5);
    sched_params p;
    params(&p, 1, 2000);
    p.ignore_eos = 1;
    result r;
    result_init(&r, 1);
    sched_req *q = submit(&w, prompt, 50, &p, &r);
    /* wait for a few tokens, then walk away */
    while (1) {
        sched_stats st;
        sched_get_stats(w.s, &st);
        if (st.kv_used > 0 && w.f.steps > 5)
            break;
        usleep(1000);
    }
    sched_req_release(q);
    sched_req_release(q);   /* idempotent */
    for (int i = 0; i < 5000; i++) {
        sched_stats st;
        sched_get_stats(w.s, &st);
        if (st.kv_used == 0 && st.running == 0)
            break;
        usleep(1000);
    }
    sched_stats st;
    sched_get_stats(w.s, &st);
    ck_assert_int_eq(st.kv_used, 0);
    ck_assert_int_eq(st.running, 0);
    world_stop(&w);
}
END_TEST

START_TEST(queue_limits)
{
    world w;
    sched_opts o;
    sched_opts_default(&o);
    o.max_queue = 2;
    o.max_queued_tokens = 100;
    world_start(&w, 64, &o);
    int32_t prompt[60];
    make_prompt(prompt, 60, 1);
    sched_params p;
    params(&p, 1, 5);
    result r[4];
    sched_req *q[4];
    char err[256];
    sched_prompt sp = {prompt, 30};
    /* loop not running yet: everything stays queued */
    for (int i = 0; i < 2; i++) {
        result_init(&r[i], 1);
        ck_assert_int_eq(sched_submit(w.s, &sp, 1, &p, on_notify, &r[i], &q[i], err, sizeof err), SCHED_OK);
    }
    result_init(&r[2], 1);
    ck_assert_int_eq(sched_submit(w.s, &sp, 1, &p, on_notify, &r[2], &q[2], err, sizeof err), SCHED_EFULL);
    ck_assert_ptr_null(q[2]);
    /* token-ids out of range, empty prompts, bad parameters */
    int32_t bad = V;
    sched_prompt spb = {&bad, 1};
    ck_assert_int_eq(sched_submit(w.s, &spb, 1, &p, on_notify, &r[2], &q[2], err, sizeof err), SCHED_EINVAL);
    sched_prompt spe = {prompt, 0};
    ck_assert_int_eq(sched_submit(w.s, &spe, 1, &p, on_notify, &r[2], &q[2], err, sizeof err), SCHED_EINVAL);
    world_run(&w);
    for (int i = 0; i < 2; i++) {
        collect(q[i], &r[i], 10);
        sched_req_release(q[i]);
        ck_assert_int_eq(r[i].error_status, 0);
    }
    world_stop(&w);
}
END_TEST

START_TEST(queued_tokens_limit)
{
    world w;
    sched_opts o;
    sched_opts_default(&o);
    o.max_queued_tokens = 100;
    world_start(&w, 64, &o);
    int32_t prompt[80];
    make_prompt(prompt, 80, 1);
    sched_params p;
    params(&p, 1, 5);
    result r[2];
    sched_req *q[2];
    char err[256];
    sched_prompt sp = {prompt, 80};
    result_init(&r[0], 1);
    result_init(&r[1], 1);
    ck_assert_int_eq(sched_submit(w.s, &sp, 1, &p, on_notify, &r[0], &q[0], err, sizeof err), SCHED_OK);
    ck_assert_int_eq(sched_submit(w.s, &sp, 1, &p, on_notify, &r[1], &q[1], err, sizeof err), SCHED_EFULL);
    world_run(&w);
    collect(q[0], &r[0], 10);
    sched_req_release(q[0]);
    world_stop(&w);
}
END_TEST

START_TEST(timeout_and_engine_error)
{
    world w;
    sched_opts o;
    sched_opts_default(&o);
    o.request_timeout = 0.3;
    world_start(&w, 64, &o);
    w.f.delay_us = 2000;
    world_run(&w);
    int32_t prompt[10];
    make_prompt(prompt, 10, 2);
    sched_params p;
    params(&p, 1, 3000);
    p.ignore_eos = 1;
    result r;
    result_init(&r, 1);
    sched_req *q = submit(&w, prompt, 10, &p, &r);
    collect(q, &r, 10);
    sched_req_release(q);
    ck_assert_int_eq(r.error_status, 504);

    w.f.fail = 1;
    result e;
    result_init(&e, 1);
    params(&p, 1, 5);
    q = submit(&w, prompt, 10, &p, &e);
    collect(q, &e, 10);
    sched_req_release(q);
    ck_assert_int_eq(e.error_status, 500);
    ck_assert_ptr_nonnull(strstr(e.message, "fake failure"));
    world_stop(&w);
}
END_TEST

/* Drain: in-flight requests finish, new ones are refused, the loop exits. */
START_TEST(drain_finishes_inflight)
{
    world w;
    sched_opts o;
    sched_opts_default(&o);
    world_start(&w, 64, &o);
    w.f.delay_us = 500;
    world_run(&w);
    int32_t prompt[10];
    make_prompt(prompt, 10, 4);
    sched_params p;
    params(&p, 1, 200);
    p.ignore_eos = 1;
    result r;
    result_init(&r, 1);
    sched_req *q = submit(&w, prompt, 10, &p, &r);
    ck_assert(sched_ready(w.s));
    sched_drain(w.s);
    ck_assert(!sched_ready(w.s));
    sched_req *q2 = NULL;
    char err[256];
    sched_prompt sp = {prompt, 10};
    ck_assert_int_eq(sched_submit(w.s, &sp, 1, &p, on_notify, &r, &q2, err, sizeof err), SCHED_EDRAIN);
    collect(q, &r, 20);
    sched_req_release(q);
    ck_assert_int_eq(r.error_status, 0);
    ck_assert_int_eq(r.n_toks[0], 200);
    pthread_join(w.th, NULL);   /* the loop ends by itself */
    w.running = 0;
    world_stop(&w);
}
END_TEST

START_TEST(keepalive_while_waiting)
{
    world w;
    sched_opts o;
    sched_opts_default(&o);
    o.keepalive = 0.05;
    o.max_running = 1;
    world_start(&w, 64, &o);
    w.f.delay_us = 1000;
    world_run(&w);
    int32_t prompt[10];
    make_prompt(prompt, 10, 4);
    sched_params p;
    params(&p, 1, 400);
    p.ignore_eos = 1;
    result a, b;
    result_init(&a, 1);
    result_init(&b, 1);
    sched_req *qa = submit(&w, prompt, 10, &p, &a);
    params(&p, 1, 2);
    sched_req *qb = submit(&w, prompt, 10, &p, &b);
    collect(qb, &b, 20);
    ck_assert_int_gt(b.keepalives, 0);
    sched_req_release(qb);
    sched_req_release(qa);
    world_stop(&w);
}
END_TEST

/* r holds the model's continuation of prompt h[0..n) for mt tokens, run
 * through end-of-generation tokens (ignore_eos); h has room for them. */
static void expect_continuation(const result *r, int32_t *h, int n, int mt)
{
    ck_assert_int_eq(r->error_status, 0);
    ck_assert_int_eq(r->n_toks[0], mt);
    for (int k = 0; k < mt; k++) {
        h[n + k] = next_of(h, n + k);
        ck_assert_int_eq(r->toks[0][k], h[n + k]);
    }
}

/* A short request behind a long prompt is prefilled beside it and
 * finishes before the long prompt's prefill does, every output exact. */
START_TEST(short_beside_long_prefill)
{
    enum { LONG = 3000, SHORT = 20, MT = 4 };
    world w;
    sched_opts o;
    sched_opts_default(&o);
    o.max_batch_tokens = 64;
    world_start(&w, 256, &o);
    static int32_t lp[LONG + MT];
    int32_t sp[SHORT + MT];
    make_prompt(lp, LONG, 5);
    make_prompt(sp, SHORT, 6);
    ck_assert_int_ne(lp[0], sp[0]);
    /* the short one's last decode step, and the long prompt's last chunk */
    w.f.watch_first[0] = sp[0];
    w.f.watch_len[0] = SHORT + MT - 1;
    w.f.watch_first[1] = lp[0];
    w.f.watch_len[1] = LONG;
    sched_params p;
    params(&p, 1, MT);
    p.ignore_eos = 1;
    static result rl, rs;
    result_init(&rl, 1);
    result_init(&rs, 1);
    sched_req *ql = submit(&w, lp, LONG, &p, &rl);
    sched_req *qs = submit(&w, sp, SHORT, &p, &rs);
    world_run(&w);
    collect(qs, &rs, 30);
    collect(ql, &rl, 60);
    sched_req_release(qs);
    sched_req_release(ql);
    /* 3000 tokens in steps of at most 64 take 47 steps or more; the short
     * request needs a few */
    ck_assert_int_gt(w.f.watch_step[0], 0);
    ck_assert_int_ge(w.f.watch_step[1], LONG / 64);
    ck_assert_int_lt(w.f.watch_step[0], 10);
    expect_continuation(&rs, sp, SHORT, MT);
    expect_continuation(&rl, lp, LONG, MT);
    world_stop(&w);
}
END_TEST

/* With a sequence decoding, a long prompt's chunks shrink as its context
 * grows past interactive_context (so the decoding one's steps stay short);
 * outputs exact. */
START_TEST(interactive_context_chunks)
{
    enum { LONG = 3000, SHORT = 20, MT_LONG = 4, MT_SHORT = 300 };
    world w;
    sched_opts o;
    sched_opts_default(&o);
    o.max_batch_tokens = 1024;
    o.interactive_context = 256;
    world_start(&w, 256, &o);
    w.f.ic_budget = 1024;
    w.f.ic = 256;
    static int32_t lp[LONG + MT_LONG], sp[SHORT + MT_SHORT];
    make_prompt(lp, LONG, 8);
    make_prompt(sp, SHORT, 9);
    sched_params p;
    params(&p, 1, MT_SHORT);
    p.ignore_eos = 1;
    static result rl, rs;
    result_init(&rl, 1);
    result_init(&rs, 1);
    sched_req *qs = submit(&w, sp, SHORT, &p, &rs);   /* decoding first */
    params(&p, 1, MT_LONG);
    p.ignore_eos = 1;
    sched_req *ql = submit(&w, lp, LONG, &p, &rl);
    world_run(&w);
    collect(ql, &rl, 60);
    collect(qs, &rs, 60);
    sched_req_release(qs);
    sched_req_release(ql);
    ck_assert_int_eq(w.f.ic_over, 0);
    ck_assert_int_gt(w.f.ic_cut, 0);
    expect_continuation(&rs, sp, SHORT, MT_SHORT);
    expect_continuation(&rl, lp, LONG, MT_LONG);
    world_stop(&w);
}
END_TEST

/* Alone, a long prompt keeps full chunks however long its context: the
 * rule only protects sequences that decode beside it. */
START_TEST(interactive_context_alone)
{
    enum { LONG = 3000, MT = 4 };
    world w;
    sched_opts o;
    sched_opts_default(&o);
    o.max_batch_tokens = 1024;
    o.interactive_context = 256;
    world_start(&w, 256, &o);
    static int32_t lp[LONG + MT];
    make_prompt(lp, LONG, 8);
    sched_params p;
    params(&p, 1, MT);
    p.ignore_eos = 1;
    static result rl;
    result_init(&rl, 1);
    sched_req *ql = submit(&w, lp, LONG, &p, &rl);
    world_run(&w);
    collect(ql, &rl, 60);
    sched_req_release(ql);
    ck_assert_int_eq(w.f.chunk_steps, (LONG + 1023) / 1024);
    expect_continuation(&rl, lp, LONG, MT);
    world_stop(&w);
}
END_TEST

/* Released while still on the incoming list (the client left at once):
 * the requests around it are unaffected and nothing stays behind. */
START_TEST(release_before_pickup)
{
    world w;
    sched_opts o;
    sched_opts_default(&o);
    world_start(&w, 64, &o);
    int32_t prompt[20], ref[12];
    make_prompt(prompt, 20, 8);
    int nref = reference(prompt, 20, 12, ref);
    sched_params p;
    params(&p, 1, 12);
    enum { N = 6 };
    static result r[N];
    sched_req *q[N];
    for (int i = 0; i < N; i++) {
        result_init(&r[i], 1);
        q[i] = submit(&w, prompt, 20, &p, &r[i]);
    }
    sched_req_release(q[1]);
    sched_req_release(q[4]);
    world_run(&w);
    for (int i = 0; i < N; i++) {
        if (i == 1 || i == 4)
            continue;
        collect(q[i], &r[i], 10);
        sched_req_release(q[i]);
        ck_assert_int_eq(r[i].n_toks[0], nref);
        ck_assert_mem_eq(r[i].toks[0], ref, (size_t)nref * sizeof(int32_t));
    }
    /* and again with the loop running */
    for (int i = 0; i < N; i++) {
        result_init(&r[i], 1);
        q[i] = submit(&w, prompt, 20, &p, &r[i]);
        if (i % 2)
            sched_req_release(q[i]);
    }
    for (int i = 0; i < N; i += 2) {
        collect(q[i], &r[i], 10);
        sched_req_release(q[i]);
        ck_assert_int_eq(r[i].n_toks[0], nref);
    }
    for (int i = 0; i < 2000; i++) {
        sched_stats st;
        sched_get_stats(w.s, &st);
        if (st.running == 0 && st.waiting == 0 && st.kv_used == 0)
            break;
        usleep(1000);
    }
    sched_stats st;
    sched_get_stats(w.s, &st);
    ck_assert_int_eq(st.running + st.waiting, 0);
    ck_assert_int_eq(st.kv_used, 0);
    world_stop(&w);
}
END_TEST

/* Echo scoring: every prompt token's logprob from the row before it, over
 * several chunks (more than a step's prompt-logprob rows), with
 * max_tokens 0 (no generation) and with generation after. */
START_TEST(prompt_logprobs)
{
    world w;
    sched_opts o;
    sched_opts_default(&o);
    o.max_batch_tokens = 100;
    world_start(&w, 64, &o);
    world_run(&w);
    enum { PL = 150 };
    int32_t prompt[PL];
    make_prompt(prompt, PL, 11);
    /* make some prompt tokens the model's own prediction */
    for (int i = 1; i < PL; i += 3)
        prompt[i] = next_of(prompt, i);
    const float hit = 10.0f - logf(expf(10.0f) + (V - 1)), miss = -logf(expf(10.0f) + (V - 1));
    for (int mt = 0; mt <= 5; mt += 5) {
        sched_params p;
        params(&p, 2, mt);
        p.prompt_logprobs = 1;
        result r;
        result_init(&r, 2);
        sched_prompt sp = {prompt, PL};
        sched_req *q = NULL;
        char err[256];
        ck_assert_int_eq(sched_submit(w.s, &sp, 1, &p, on_notify, &r, &q, err, sizeof err), SCHED_OK);
        int seen = 0;
        while (!r.done) {
            sched_event *ev = sched_req_next(q);
            if (!ev) {
                usleep(500);
                continue;
            }
            if (ev->type == SCHED_EV_PROMPT_TOKEN) {
                ck_assert_int_eq(ev->index, 0);
                ck_assert_int_eq(ev->pos, seen + 1);
                ck_assert_int_eq(ev->token, prompt[ev->pos]);
                float want = next_of(prompt, ev->pos) == prompt[ev->pos] ? hit : miss;
                ck_assert_float_eq_tol(ev->logprob, want, 1e-4);
                ck_assert_int_eq(ev->n_top, 1);
                ck_assert_int_eq(ev->top_ids[0], next_of(prompt, ev->pos));
                seen++;
            } else if (ev->type == SCHED_EV_TOKEN) {
                ck_assert_int_eq(seen, PL - 1);   /* the prompt's logprobs come first */
                r.n_toks[ev->index]++;
            } else if (ev->type == SCHED_EV_DONE || ev->type == SCHED_EV_ERROR) {
                r.done = 1;
                r.error_status = ev->status;
                r.completion = ev->completion_tokens;
            }
            sched_event_free(ev);
        }
        sched_req_release(q);
        ck_assert_int_eq(r.error_status, 0);
        ck_assert_int_eq(seen, PL - 1);
        ck_assert_int_eq(r.completion, 2 * mt);
        ck_assert_int_eq(r.n_toks[0], mt);
        ck_assert_int_eq(r.n_toks[1], mt);
    }
    /* max_tokens 0 needs prompt logprobs */
    sched_params p;
    params(&p, 1, 0);
    sched_prompt sp = {prompt, 10};
    sched_req *q = NULL;
    char err[256];
    result r;
    result_init(&r, 1);
    ck_assert_int_eq(sched_submit(w.s, &sp, 1, &p, on_notify, &r, &q, err, sizeof err), SCHED_EINVAL);
    world_stop(&w);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("scheduler");
    TCase *t = tcase_create("core");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, single_request);
    tcase_add_test(t, preemption_exact);
    tcase_add_test(t, prefix_cache_and_n);
    tcase_add_test(t, stop_strings);
    tcase_add_test(t, eog_stops);
    tcase_add_test(t, cancel_frees_pages);
    tcase_add_test(t, queue_limits);
    tcase_add_test(t, queued_tokens_limit);
    tcase_add_test(t, timeout_and_engine_error);
    tcase_add_test(t, drain_finishes_inflight);
    tcase_add_test(t, keepalive_while_waiting);
    tcase_add_test(t, short_beside_long_prefill);
    tcase_add_test(t, interactive_context_chunks);
    tcase_add_test(t, interactive_context_alone);
    tcase_add_test(t, release_before_pickup);
    tcase_add_test(t, prompt_logprobs);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *r = srunner_create(suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
