/* The scheduler loop: admission, batch building, engine steps, sampling,
 * stop checks, preemption, cancellation, timeouts and drain.
 *
 * Threads: sched_submit, sched_req_release, sched_drain and the metric
 * readers run on HTTP threads; everything else runs on the loop thread.
 * Shared state: the incoming and cancel lists and the queue counters (s->mu),
 * each request's event list (r->mu), the metrics (their own mutex).
 *
 * A sequence holds all its tokens (prompt, then generated); n_done of them
 * have K/V in the pool.  A running sequence computes tokens [n_done, n_tok)
 * in chunks; when only the newest token is left it is decoding.  Preemption
 * drops its pages and sends it back to the front of the queue; the next
 * admission recomputes every token (the prefix cache often covers most).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "scheduler/metrics.h"
#include "scheduler/scheduler.h"

_Static_assert(SCHED_MAX_LOGPROBS == ENGINE_MAX_LOGPROBS, "a token's alternatives fit both");

enum { SEQ_WAITING, SEQ_RUNNING, SEQ_DONE };

/* Logit rows a step may spend on prompt logprobs (beyond one per sequence). */
#define PLP_ROWS 64

typedef struct seq {
    struct sched_req *req;
    int index;                /* choice index */
    struct seq *leader;       /* sibling 0 of the same prompt (n > 1), or NULL */
    int32_t *tok;
    int n_tok, cap;
    int n_prompt;
    int n_gen;
    int n_done;               /* tokens with K/V in the pool */
    int plp_next;             /* next prompt position whose logprob is owed (prompt_logprobs) */
    kv_seq kv;
    sampler *smp;
    detok dt;
    char *hold;               /* text held back: it may start a stop string */
    int n_hold, hold_cap;
    int state;
    uint64_t order;           /* admission order; the largest is preempted first */
    double t_last;            /* time of this sequence's last token */
    struct seq *qprev, *qnext; /* waiting queue links */
} seq;

struct sched_req {
    pthread_mutex_t mu;
    atomic_int refs;          /* the caller's and the loop's */
    int released;             /* caller gone: no more notify */
    atomic_int cancelled;
    void (*notify)(void *);
    void *user;
    struct evnode *ev_head, *ev_tail;
    atomic_int n_queued;      /* events not yet taken by the caller */

    /* loop side */
    sched *s;
    uint64_t id;
    int n_seqs, n_live;
    seq *seqs;
    int32_t *prompt_mem;
    int prompt_tokens;
    int completion_tokens;
    int cached_tokens;
    int admitted;             /* left the admission queue counters */
    int ended;                /* DONE or ERROR queued, off the active list */
    sched_params p;
    char **stop;
    int32_t *bias_tok;
    float *bias_val;
    double t_submit, t_admit, t_first, t_event;
    struct sched_req *anext, *aprev;   /* active list (loop) */
    struct sched_req *inext;           /* incoming list */
    struct sched_req *cnext;           /* cancel list (a request may be on both) */
    struct sched_req *dnext;           /* ended, unreferenced after the callback */
};

typedef struct evnode {
    struct evnode *next;
    sched_event *ev;
} evnode;

struct sched {
    sched_backend be;
    kv_pool *pool;
    kv_layout layout;
    sched_opts o;
    char *model_name;

    uv_loop_t loop;
    uv_async_t wake;
    uv_idle_t work;
    uv_timer_t tick;
    uv_timer_t drain_timer;
    uv_signal_t sig_term, sig_int;
    int work_on;

    pthread_mutex_t mu;       /* incoming, cancels, queue counters */
    sched_req *in_head, *in_tail;
    sched_req *cancel_head;
    int queued_reqs;          /* submitted, not yet admitted */
    long queued_tokens;
    uint64_t next_id;

    atomic_int draining;
    atomic_int running_loop;
    atomic_int loop_done;     /* sched_run returned */
    atomic_int stop_now;      /* second signal or drain timeout */
    atomic_int engine_failures;
    _Atomic double heartbeat;

    /* loop-only */
    sched_req *active;
    sched_req *dead;          /* ended this callback; the loop's reference drops in reap() */
    int n_active;
    seq *wait_head, *wait_tail;
    seq **running;
    int n_running;
    uint64_t order;
    int admit_blocked;        /* the queue head did not fit; retry when pages free */
    int n_paused;             /* sequences the last step left out: their output is unread */
    int32_t *btok;
    engine_seq *bseq;
    seq **bmap;
    float *logits;
    float *lpbuf;
    engine_sample *srows;     /* sampling in the step: a row per sequence */
    engine_sampled *sout;

    sched_metrics_t m;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int sched_max_rows(const sched_opts *o)
{
    int r = o->max_running + PLP_ROWS;
    return r < o->max_batch_tokens ? r : o->max_batch_tokens;
}

void sched_opts_default(sched_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_running = 64;
    o->max_batch_tokens = 512;
    o->max_queue = 256;
    o->max_queued_tokens = 1L << 20;
    o->prefix_cache = 1;
    o->request_timeout = 600;
    o->shutdown_timeout = 30;
    o->keepalive = 5;
    o->interactive_context = 131072;   /* see server/README.md */
    o->handle_signals = 1;
}

/* ---- real engine backend ------------------------------------------------ */

static int be_step(void *ctx, kv_pool *pool, const engine_batch *b, float *logits,
                   char *err, size_t errlen)
{
    return engine_step(ctx, pool, b, logits, err, errlen);
}
static int be_step_sample(void *ctx, kv_pool *pool, const engine_batch *b, const engine_sample *rows,
                          engine_sampled *out, char *err, size_t errlen)
{
    return engine_step_sample(ctx, pool, b, rows, out, err, errlen);
}
static int be_is_eog(void *ctx, int32_t tok) { return engine_is_eog(ctx, tok); }
static int be_detok(void *ctx, detok *d, int32_t tok, char *out, int cap)
{
    return detok_push(ctx, d, tok, out, cap);
}

void sched_backend_engine(sched_backend *b, engine *e)
{
    const engine_info *in = engine_get_info(e);
    b->ctx = e;
    b->n_vocab = in->n_vocab;
    b->n_ctx = in->n_ctx;
    b->kv_dtype = in->kv_dtype;
    b->step = be_step;
    b->step_sample = be_step_sample;
    b->is_eog = be_is_eog;
    b->detok = be_detok;
}

/* ---- requests and events ----------------------------------------------- */

static void req_free(sched_req *r)
{
    for (evnode *n = r->ev_head, *nx; n; n = nx) {
        nx = n->next;
        free(n->ev);
        free(n);
    }
    for (int i = 0; i < r->n_seqs; i++) {
        seq *q = &r->seqs[i];
        free(q->tok);
        free(q->hold);
        if (q->smp)
            sampler_free(q->smp);
    }
    for (int i = 0; i < r->p.n_stop; i++)
        free(r->stop[i]);
    free(r->stop);
    free(r->bias_tok);
    free(r->bias_val);
    free(r->seqs);
    free(r->prompt_mem);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static void req_unref(sched_req *r)
{
    if (atomic_fetch_sub(&r->refs, 1) == 1)
        req_free(r);
}

/* Queues an event and wakes the caller (loop thread). */
static void push_event(sched_req *r, sched_event *ev)
{
    evnode *n = malloc(sizeof *n);
    if (!n) {
        free(ev);
        return;
    }
    n->next = NULL;
    n->ev = ev;
    r->t_event = now_s();
    pthread_mutex_lock(&r->mu);
    if (r->ev_tail)
        r->ev_tail->next = n;
    else
        r->ev_head = n;
    r->ev_tail = n;
    atomic_fetch_add(&r->n_queued, 1);
    if (!r->released && r->notify)
        r->notify(r->user);
    pthread_mutex_unlock(&r->mu);
}

static sched_event *new_event(int type, int index, const char *text, int len)
{
    sched_event *ev = calloc(1, sizeof *ev + (size_t)len + 1);
    if (!ev)
        return NULL;
    ev->type = type;
    ev->index = index;
    if (len > 0)
        memcpy(ev->text, text, (size_t)len);
    ev->text[len] = 0;
    ev->text_len = len;
    return ev;
}

/* A request whose caller leaves this many events unread (a stalled stream
 * reader) gets no more tokens until it catches up: its output buffers
 * stay bounded.  Each sequence may run this far ahead. */
static int queue_limit(const sched_req *r)
{
    return 64 + 8 * r->n_seqs;
}

sched_event *sched_req_next(sched_req *r)
{
    pthread_mutex_lock(&r->mu);
    evnode *n = r->ev_head;
    if (n) {
        r->ev_head = n->next;
        if (!r->ev_head)
            r->ev_tail = NULL;
    }
    pthread_mutex_unlock(&r->mu);
    if (!n)
        return NULL;
    /* halfway down from the limit: wake the loop, which may have paused r */
    if (atomic_fetch_sub(&r->n_queued, 1) == queue_limit(r) / 2 + 1 &&
        !atomic_load(&r->s->loop_done))
        uv_async_send(&r->s->wake);
    sched_event *ev = n->ev;
    free(n);
    return ev;
}

void sched_event_free(sched_event *ev)
{
    free(ev);
}

void sched_req_release(sched_req *r)
{
    if (!r)
        return;
    sched *s = r->s;
    pthread_mutex_lock(&r->mu);
    int first = !r->released;
    r->released = 1;
    r->notify = NULL;
    pthread_mutex_unlock(&r->mu);
    if (!first)
        return;
    /* The loop's reference keeps r alive on the cancel list; cancelling an
     * ended request is a no-op there. */
    atomic_store(&r->cancelled, 1);
    pthread_mutex_lock(&s->mu);
    atomic_fetch_add(&r->refs, 1);
    /* LIFO; order does not matter.  The request may still be on the
     * incoming list too, hence its own link. */
    r->cnext = s->cancel_head;
    s->cancel_head = r;
    pthread_mutex_unlock(&s->mu);
    if (!atomic_load(&s->loop_done))
        uv_async_send(&s->wake);
    req_unref(r);
}

/* ---- submission (any thread) ------------------------------------------- */

int sched_submit(sched *s, const sched_prompt *prompts, int n_prompts, const sched_params *p,
                 void (*notify)(void *user), void *user, sched_req **out,
                 char *err, size_t errlen)
{
    *out = NULL;
    if (n_prompts < 1 || p->n < 1 || p->max_tokens < (p->prompt_logprobs >= 0 ? 0 : 1) ||
        p->n_stop < 0 || p->n_stop > SCHED_MAX_STOP || p->logprobs > SCHED_MAX_LOGPROBS ||
        p->prompt_logprobs > SCHED_MAX_LOGPROBS) {
        snprintf(err, errlen, "invalid scheduling parameters");
        return SCHED_EINVAL;
    }
    long total = 0;
    int max_prompt = 0;
    for (int i = 0; i < n_prompts; i++) {
        if (prompts[i].n < 1) {
            snprintf(err, errlen, "empty prompt");
            return SCHED_EINVAL;
        }
        for (int j = 0; j < prompts[i].n; j++) {
            if (prompts[i].tokens[j] < 0 || prompts[i].tokens[j] >= s->be.n_vocab) {
                snprintf(err, errlen, "token id %d is out of range", prompts[i].tokens[j]);
                return SCHED_EINVAL;
            }
        }
        total += prompts[i].n;
        if (prompts[i].n > max_prompt)
            max_prompt = prompts[i].n;
    }
    int pool_tokens = kv_pool_n_pages(s->pool) * s->layout.block_size;
    if (max_prompt + 1 > pool_tokens) {
        snprintf(err, errlen, "the prompt needs %d tokens of KV cache but the pool holds %d",
                 max_prompt + 1, pool_tokens);
        return SCHED_EINVAL;
    }

    sched_req *r = calloc(1, sizeof *r);
    if (!r)
        goto oom;
    pthread_mutex_init(&r->mu, NULL);
    atomic_init(&r->refs, 2);
    atomic_init(&r->cancelled, 0);
    atomic_init(&r->n_queued, 0);
    r->notify = notify;
    r->user = user;
    r->s = s;
    r->p = *p;
    r->n_seqs = n_prompts * p->n;
    r->n_live = r->n_seqs;
    r->prompt_tokens = (int)total;
    r->t_submit = r->t_event = now_s();
    r->stop = calloc((size_t)(p->n_stop ? p->n_stop : 1), sizeof(char *));
    r->seqs = calloc((size_t)r->n_seqs, sizeof(seq));
    r->prompt_mem = malloc((size_t)total * sizeof(int32_t));
    if (!r->stop || !r->seqs || !r->prompt_mem)
        goto oom_r;
    for (int i = 0; i < p->n_stop; i++) {
        r->stop[i] = strdup(p->stop[i]);
        if (!r->stop[i]) {
            r->p.n_stop = i;
            goto oom_r;
        }
    }
    r->p.stop = NULL;
    if (p->sampling.n_bias > 0) {
        r->bias_tok = malloc((size_t)p->sampling.n_bias * sizeof(int32_t));
        r->bias_val = malloc((size_t)p->sampling.n_bias * sizeof(float));
        if (!r->bias_tok || !r->bias_val)
            goto oom_r;
        memcpy(r->bias_tok, p->sampling.bias_tokens, (size_t)p->sampling.n_bias * sizeof(int32_t));
        memcpy(r->bias_val, p->sampling.bias_values, (size_t)p->sampling.n_bias * sizeof(float));
        r->p.sampling.bias_tokens = r->bias_tok;
        r->p.sampling.bias_values = r->bias_val;
    }
    long off = 0;
    for (int i = 0; i < n_prompts; i++) {
        memcpy(r->prompt_mem + off, prompts[i].tokens, (size_t)prompts[i].n * sizeof(int32_t));
        for (int j = 0; j < p->n; j++) {
            seq *q = &r->seqs[i * p->n + j];
            q->req = r;
            q->index = i * p->n + j;
            q->leader = j ? &r->seqs[i * p->n] : NULL;
            q->n_prompt = prompts[i].n;
            q->cap = prompts[i].n + (p->max_tokens < 256 ? p->max_tokens : 256) + 1;
            q->tok = malloc((size_t)q->cap * sizeof(int32_t));
            if (!q->tok)
                goto oom_r;
            memcpy(q->tok, prompts[i].tokens, (size_t)prompts[i].n * sizeof(int32_t));
            q->n_tok = prompts[i].n;
            /* the first choice of each prompt carries its prompt logprobs */
            q->plp_next = p->prompt_logprobs >= 0 && j == 0 ? 1 : prompts[i].n;
            kv_seq_init(&q->kv);
            detok_init(&q->dt);
            q->dt.first = 0;   /* generated text continues the prompt: keep its leading space */
            sampler_params sp = r->p.sampling;
            sp.seed = p->sampling.seed + (uint64_t)j;
            q->smp = sampler_create(&sp, s->be.n_vocab);
            if (!q->smp)
                goto oom_r;
            q->state = SEQ_WAITING;
        }
        off += prompts[i].n;
    }

    pthread_mutex_lock(&s->mu);
    int rc = SCHED_OK;
    if (atomic_load(&s->draining)) {
        snprintf(err, errlen, "the server is shutting down");
        rc = SCHED_EDRAIN;
    } else if (s->queued_reqs >= s->o.max_queue) {
        snprintf(err, errlen, "the request queue is full (%d requests waiting); retry later",
                 s->queued_reqs);
        rc = SCHED_EFULL;
    } else if (s->queued_reqs > 0 && s->queued_tokens + total > s->o.max_queued_tokens) {
        snprintf(err, errlen, "the request queue is full (%ld prompt tokens waiting); retry later",
                 s->queued_tokens);
        rc = SCHED_EFULL;
    }
    if (rc == SCHED_OK) {
        s->queued_reqs++;
        s->queued_tokens += total;
        r->id = ++s->next_id;
        if (s->in_tail)
            s->in_tail->inext = r;
        else
            s->in_head = r;
        s->in_tail = r;
    }
    pthread_mutex_unlock(&s->mu);
    if (rc != SCHED_OK) {
        req_free(r);
        return rc;
    }
    uv_async_send(&s->wake);
    *out = r;
    return SCHED_OK;

oom_r:
    req_free(r);
oom:
    snprintf(err, errlen, "out of memory");
    return SCHED_ENOMEM;
}

/* ---- queue helpers (loop) ---------------------------------------------- */

static void q_push_back(sched *s, seq *q)
{
    q->qnext = NULL;
    q->qprev = s->wait_tail;
    if (s->wait_tail)
        s->wait_tail->qnext = q;
    else
        s->wait_head = q;
    s->wait_tail = q;
}

static void q_push_front(sched *s, seq *q)
{
    q->qprev = NULL;
    q->qnext = s->wait_head;
    if (s->wait_head)
        s->wait_head->qprev = q;
    else
        s->wait_tail = q;
    s->wait_head = q;
}

static void q_remove(sched *s, seq *q)
{
    if (q->qprev)
        q->qprev->qnext = q->qnext;
    else
        s->wait_head = q->qnext;
    if (q->qnext)
        q->qnext->qprev = q->qprev;
    else
        s->wait_tail = q->qprev;
    q->qprev = q->qnext = NULL;
}

static void running_remove(sched *s, seq *q)
{
    for (int i = 0; i < s->n_running; i++) {
        if (s->running[i] == q) {
            memmove(s->running + i, s->running + i + 1,
                    (size_t)(s->n_running - i - 1) * sizeof(seq *));
            s->n_running--;
            return;
        }
    }
}

/* Leaves the admission-queue counters (first admission, or an end while queued). */
static void req_unqueue(sched *s, sched_req *r)
{
    if (r->admitted)
        return;
    r->admitted = 1;
    pthread_mutex_lock(&s->mu);
    s->queued_reqs--;
    s->queued_tokens -= r->prompt_tokens;
    pthread_mutex_unlock(&s->mu);
}

static void seq_drop_pages(sched *s, seq *q)
{
    if (q->kv.n_pages > 0)
        s->admit_blocked = 0;
    kv_seq_release(s->pool, &q->kv);
    q->n_done = 0;
}

/* Takes a sequence out of the queue or the batch and frees its pages. */
static void seq_retire(sched *s, seq *q)
{
    if (q->state == SEQ_WAITING)
        q_remove(s, q);
    else if (q->state == SEQ_RUNNING)
        running_remove(s, q);
    if (q->state != SEQ_DONE) {
        seq_drop_pages(s, q);
        q->state = SEQ_DONE;
        q->req->n_live--;
    }
}

static void active_remove(sched *s, sched_req *r)
{
    if (r->aprev)
        r->aprev->anext = r->anext;
    else
        s->active = r->anext;
    if (r->anext)
        r->anext->aprev = r->aprev;
    r->anext = r->aprev = NULL;
    s->n_active--;
}

static void update_gauges(sched *s);

/* Ends a request: every sequence retired, a last event queued, the loop's
 * reference dropped. */
static void req_end(sched *s, sched_req *r, int status, const char *msg, int finish_reason)
{
    if (r->ended)
        return;
    for (int i = 0; i < r->n_seqs; i++)
        seq_retire(s, &r->seqs[i]);
    req_unqueue(s, r);
    r->ended = 1;
    double t = now_s();
    pthread_mutex_lock(&s->m.mu);
    if (status) {
        s->m.finished_error++;
    } else if (finish_reason == SCHED_FINISH_ABORT) {
        s->m.finished_abort++;
    } else {
        if (finish_reason == SCHED_FINISH_LENGTH)
            s->m.finished_length++;
        else
            s->m.finished_stop++;
        hist_observe(&s->m.e2e, t - r->t_submit);
        hist_observe(&s->m.req_prompt, r->prompt_tokens);
        hist_observe(&s->m.req_gen, r->completion_tokens);
    }
    pthread_mutex_unlock(&s->m.mu);

    sched_event *ev = new_event(status ? SCHED_EV_ERROR : SCHED_EV_DONE, 0, NULL, 0);
    if (ev) {
        ev->status = status;
        if (msg)
            snprintf(ev->message, sizeof ev->message, "%s", msg);
        ev->prompt_tokens = r->prompt_tokens;
        ev->completion_tokens = r->completion_tokens;
        ev->cached_tokens = r->cached_tokens;
        ev->queue_s = r->t_admit > 0 ? r->t_admit - r->t_submit : t - r->t_submit;
        ev->ttft_s = r->t_first > 0 ? r->t_first - r->t_submit : -1;
    }
    active_remove(s, r);
    /* A client that reads /metrics right after its reply sees r gone. */
    update_gauges(s);
    if (ev)
        push_event(r, ev);
    /* Other sequences of r may still be in this step's batch: drop the
     * loop's reference when the callback is over. */
    r->dnext = s->dead;
    s->dead = r;
}

static void reap(sched *s)
{
    while (s->dead) {
        sched_req *r = s->dead;
        s->dead = r->dnext;
        req_unref(r);
    }
}

/* ---- incoming, cancels, timeouts (loop) -------------------------------- */

static void take_incoming(sched *s)
{
    pthread_mutex_lock(&s->mu);
    sched_req *in = s->in_head, *cn = s->cancel_head;
    s->in_head = s->in_tail = NULL;
    s->cancel_head = NULL;
    pthread_mutex_unlock(&s->mu);

    for (sched_req *r = in, *nx; r; r = nx) {
        nx = r->inext;
        r->inext = NULL;
        r->anext = s->active;
        r->aprev = NULL;
        if (s->active)
            s->active->aprev = r;
        s->active = r;
        s->n_active++;
        for (int i = 0; i < r->n_seqs; i++)
            q_push_back(s, &r->seqs[i]);
    }
    for (sched_req *r = cn, *nx; r; r = nx) {
        nx = r->cnext;
        r->cnext = NULL;
        if (!r->ended)
            req_end(s, r, 0, NULL, SCHED_FINISH_ABORT);
        req_unref(r);   /* the reference sched_req_release took for this list */
    }
}

/* ---- text, stop strings and token events -------------------------------- */

static int hold_append(seq *q, const char *t, int n)
{
    if (q->n_hold + n + 1 > q->hold_cap) {
        int nc = q->hold_cap ? q->hold_cap * 2 : 256;
        while (nc < q->n_hold + n + 1)
            nc *= 2;
        char *nb = realloc(q->hold, (size_t)nc);
        if (!nb)
            return -1;
        q->hold = nb;
        q->hold_cap = nc;
    }
    memcpy(q->hold + q->n_hold, t, (size_t)n);
    q->n_hold += n;
    q->hold[q->n_hold] = 0;
    return 0;
}

/* Earliest stop string in the held text: its offset, or -1. */
static int find_stop(const sched_req *r, const char *h, int n)
{
    int best = -1;
    for (int i = 0; i < r->p.n_stop; i++) {
        const char *st = r->stop[i];
        size_t sl = strlen(st);
        if (sl == 0 || (int)sl > n)
            continue;
        const char *hit = memmem(h, (size_t)n, st, sl);
        if (hit && (best < 0 || hit - h < best))
            best = (int)(hit - h);
    }
    return best;
}

/* Longest suffix of the held text that is a proper prefix of a stop string. */
static int stop_overlap(const sched_req *r, const char *h, int n)
{
    int best = 0;
    for (int i = 0; i < r->p.n_stop; i++) {
        const char *st = r->stop[i];
        int sl = (int)strlen(st);
        for (int k = (sl - 1 < n ? sl - 1 : n); k > best; k--) {
            if (!memcmp(h + n - k, st, (size_t)k)) {
                best = k;
                break;
            }
        }
    }
    return best;
}

static void seq_finish(sched *s, seq *q, int reason)
{
    sched_req *r = q->req;
    char tail[16];
    int k = detok_flush(&q->dt, tail, sizeof tail);
    if (k > 0)
        hold_append(q, tail, k);
    sched_event *ev = new_event(SCHED_EV_FINISH, q->index, q->hold, q->n_hold);
    q->n_hold = 0;
    if (ev) {
        ev->finish = reason;
        push_event(r, ev);
    }
    if (q->state == SEQ_RUNNING && s->o.prefix_cache)
        kv_seq_publish(s->pool, &q->kv, q->tok, q->n_done);
    seq_retire(s, q);
    if (r->n_live == 0)
        req_end(s, r, 0, NULL, reason);
}

/* Handles one sampled token: appends it, releases text, checks stops. */
static void seq_token(sched *s, seq *q, int32_t t, const float *lp_logits, const engine_sampled *lp_done)
{
    sched_req *r = q->req;
    double now = now_s();
    if (q->n_tok == q->cap) {
        int nc = q->cap * 2;
        int32_t *nt = realloc(q->tok, (size_t)nc * sizeof(int32_t));
        if (!nt) {
            req_end(s, r, 500, "out of memory", 0);
            return;
        }
        q->tok = nt;
        q->cap = nc;
    }
    q->tok[q->n_tok++] = t;
    q->n_gen++;
    r->completion_tokens++;
    pthread_mutex_lock(&s->m.mu);
    s->m.generation_tokens++;
    if (r->t_first == 0) {
        r->t_first = now;
        hist_observe(&s->m.ttft, now - r->t_submit);
    } else if (q->t_last > 0) {
        hist_observe(&s->m.itl, now - q->t_last);
    }
    pthread_mutex_unlock(&s->m.mu);
    q->t_last = now;

    int eog = !r->p.ignore_eos && s->be.is_eog(s->be.ctx, t);
    int finish = SCHED_FINISH_NONE;
    char piece[1024];
    int k = 0;
    if (eog) {
        finish = SCHED_FINISH_STOP;
        k = detok_flush(&q->dt, piece, sizeof piece);
    } else {
        k = s->be.detok(s->be.ctx, &q->dt, t, piece, sizeof piece);
    }
    if (k > 0)
        hold_append(q, piece, k);
    if (!finish && r->p.n_stop > 0) {
        int at = find_stop(r, q->hold, q->n_hold);
        if (at >= 0) {
            q->n_hold = at;
            q->hold[at] = 0;
            finish = SCHED_FINISH_STOP;
        }
    }
    if (!finish && (q->n_gen >= r->p.max_tokens || q->n_tok >= s->be.n_ctx)) {
        finish = SCHED_FINISH_LENGTH;
        k = detok_flush(&q->dt, piece, sizeof piece);
        if (k > 0)
            hold_append(q, piece, k);
        /* A stop string completed by the flushed bytes still counts. */
        if (r->p.n_stop > 0) {
            int at = find_stop(r, q->hold, q->n_hold);
            if (at >= 0) {
                q->n_hold = at;
                finish = SCHED_FINISH_STOP;
            }
        }
    }

    int release = q->n_hold;
    if (!finish && r->p.n_stop > 0)
        release -= stop_overlap(r, q->hold, q->n_hold);
    /* The end-of-generation token itself is not part of the output. */
    if (!eog) {
        sched_event *ev = new_event(SCHED_EV_TOKEN, q->index, q->hold, release);
        if (ev) {
            ev->token = t;
            if (lp_logits) {
                int ntop = r->p.logprobs;
                ev->logprob = logprobs_top(lp_logits, s->be.n_vocab, t, ntop, ev->top_ids,
                                           ev->top_lp);
                ev->n_top = ntop;
            } else if (lp_done && r->p.logprobs >= 0) {
                int ntop = r->p.logprobs;
                ev->logprob = lp_done->logprob;
                memcpy(ev->top_ids, lp_done->top_ids, (size_t)ntop * sizeof(int32_t));
                memcpy(ev->top_lp, lp_done->top_lp, (size_t)ntop * sizeof(float));
                ev->n_top = ntop;
            }
            push_event(r, ev);
        }
        if (q->hold) { /* NULL until the first text: no pointer arithmetic on it */
            memmove(q->hold, q->hold + release, (size_t)(q->n_hold - release));
            q->n_hold -= release;
            q->hold[q->n_hold] = 0;
        }
    }
    if (finish)
        seq_finish(s, q, finish);
}

/* ---- admission, preemption, batching ----------------------------------- */

static void preempt(sched *s, seq *q)
{
    running_remove(s, q);
    seq_drop_pages(s, q);
    q->state = SEQ_WAITING;
    q_push_front(s, q);
    pthread_mutex_lock(&s->m.mu);
    s->m.preemptions++;
    pthread_mutex_unlock(&s->m.mu);
}

/* A follower (n > 1) waits until its leader's prompt is in the pool, so the
 * prefix cache hands it the shared pages instead of a second prefill. */
static int seq_gated(const sched *s, const seq *q)
{
    const seq *l = q->leader;
    return s->o.prefix_cache && l && l->state != SEQ_DONE && l->n_done < l->n_prompt;
}

static void admit(sched *s)
{
    if (s->admit_blocked)
        return;
    seq *q = s->wait_head;
    while (q && s->n_running < s->o.max_running) {
        seq *next = q->qnext;
        if (seq_gated(s, q)) {
            q = next;
            continue;
        }
        if (atomic_load(&q->req->n_queued) >= queue_limit(q->req)) {
            s->n_paused++;   /* back when its reader catches up */
            q = next;
            continue;
        }
        sched_req *r = q->req;
        int matched = 0;
        /* prompt logprobs need the logits of every prompt token: no cache */
        if (s->o.prefix_cache && q->kv.n_pages == 0 && q->plp_next >= q->n_prompt)
            matched = kv_seq_match_prefix(s->pool, &q->kv, q->tok, q->n_tok);
        int need = kv_pages_for(&s->layout, q->n_tok + 1) - q->kv.n_pages;
        int avail = kv_pool_n_available(s->pool);
        /* Keep one page per running sequence in reserve for its growth. */
        int reserve = s->n_running < avail / 4 ? s->n_running : avail / 4;
        if (need > avail - reserve && s->n_running > 0) {
            seq_drop_pages(s, q);
            s->admit_blocked = 1;
            break;
        }
        if (need > avail) {
            /* Nothing running and still no room: the cache holds nothing
             * reusable and the sequence cannot grow; end it. */
            seq_drop_pages(s, q);
            q_remove(s, q);
            q->state = SEQ_RUNNING;   /* so seq_finish retires it cleanly */
            seq_finish(s, q, SCHED_FINISH_LENGTH);
            q = next;
            continue;
        }
        q_remove(s, q);
        q->n_done = matched;
        q->state = SEQ_RUNNING;
        q->order = ++s->order;
        s->running[s->n_running++] = q;
        if (q->n_gen == 0 && !q->leader)
            r->cached_tokens += matched;
        double t = now_s();
        pthread_mutex_lock(&s->m.mu);
        if (s->o.prefix_cache) {
            s->m.prefix_queries += (uint64_t)q->n_tok;
            s->m.prefix_hits += (uint64_t)matched;
        }
        pthread_mutex_unlock(&s->m.mu);
        if (r->t_admit == 0) {
            r->t_admit = t;
            req_unqueue(s, r);
            pthread_mutex_lock(&s->m.mu);
            hist_observe(&s->m.queue, t - r->t_submit);
            s->m.prompt_tokens += (uint64_t)r->prompt_tokens;
            pthread_mutex_unlock(&s->m.mu);
        }
        q = next;
    }
}

/* The youngest running sequence (largest admission order). */
static seq *youngest(sched *s)
{
    seq *y = NULL;
    for (int i = 0; i < s->n_running; i++)
        if (!y || s->running[i]->order > y->order)
            y = s->running[i];
    return y;
}

/* Emits the logprob of prompt token `pos` from the row that predicts it. */
static void prompt_logprob(sched *s, seq *q, int pos, const float *row)
{
    if (pos < q->plp_next || pos >= q->n_prompt)
        return;
    sched_event *ev = new_event(SCHED_EV_PROMPT_TOKEN, q->index, NULL, 0);
    if (ev) {
        ev->pos = pos;
        ev->token = q->tok[pos];
        ev->n_top = q->req->p.prompt_logprobs;
        ev->logprob = logprobs_top(row, s->be.n_vocab, q->tok[pos], ev->n_top, ev->top_ids, ev->top_lp);
        push_event(q->req, ev);
    }
    q->plp_next = pos + 1;
}

/* The smallest prefill chunk interactive_context cuts to: below this a
 * step's fixed costs (weights, launches) outweigh its attention. */
#define MIN_CHUNK 128

/* Prompt tokens still to prefill of the sequences after running[i] (whose
 * readers keep up), counted up to cap. */
static int later_prefill(const sched *s, int i, int cap)
{
    int sum = 0;
    for (int j = i + 1; j < s->n_running && sum < cap; j++) {
        const seq *q = s->running[j];
        int remain = q->n_tok - q->n_done;
        if (remain > 1 && atomic_load(&q->req->n_queued) < queue_limit(q->req))
            sum += remain;
    }
    return sum < cap ? sum : cap;
}

/* Builds the batch; returns the number of sequences in it. */
static int build_batch(sched *s, int *n_tokens)
{
    int decodes = 0;
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i]->n_tok - s->running[i]->n_done == 1)
            decodes++;
    int budget = s->o.max_batch_tokens;
    int dec_budget = decodes < budget ? decodes : budget;
    int pre_budget = budget - dec_budget;
    int plp_budget = PLP_ROWS;   /* logit rows for prompt logprobs this step */
    int nt = 0, ns = 0;

    /* Oldest first; a sequence that cannot get pages preempts the youngest,
     * which (being youngest) is not in the batch yet. */
    for (int i = 0; i < s->n_running; i++) {
        seq *q = s->running[i];
        int remain = q->n_tok - q->n_done;
        int take;
        if (atomic_load(&q->req->n_queued) >= queue_limit(q->req)) {
            /* its reader is behind: no tokens now, and its slot and pages
             * go to whoever waits (the prefix cache keeps most of them) */
            s->n_paused++;
            if (s->wait_head) {
                preempt(s, q);
                i--;
            }
            continue;
        }
        if (remain == 1) {
            if (dec_budget == 0)
                continue;
            take = 1;
        } else {
            take = remain < pre_budget ? remain : pre_budget;
            /* a long prompt leaves up to half of the prefill budget to the
             * prompts behind it: a short request arriving during a
             * million-token prefill starts at once, not after it */
            if (take > pre_budget / 2) {
                int later = later_prefill(s, i, pre_budget / 2);
                if (take > pre_budget - later)
                    take = pre_budget - later;
            }
            /* beside decoding sequences, a chunk deep in a long context
             * costs its attention over the whole context: keep the step
             * (the others' inter-token time) to a full chunk's at
             * interactive_context tokens */
            int ic = s->o.interactive_context;
            if (decodes > 0 && ic > 0 && q->n_done > ic) {
                long long cap = (long long)s->o.max_batch_tokens * ic / q->n_done;
                cap = cap < MIN_CHUNK ? MIN_CHUNK : cap;
                if (take > cap)
                    take = (int)cap;
            }
            if (q->plp_next < q->n_prompt && take > plp_budget)
                take = plp_budget;
            if (take == 0)
                continue;
        }
        int plp = q->plp_next < q->n_prompt;
        if (plp && take > plp_budget)
            continue;   /* a decode-sized step of it waits for the next */
        int preempted_self = 0;
        kv_seq_trim(s->pool, &q->kv, q->n_done); /* window pages no token from here reads */
        while (kv_seq_reserve(s->pool, &q->kv, q->n_done + take)) {
            seq *y = youngest(s);
            if (y == q) {
                preempt(s, q);
                preempted_self = 1;
                break;
            }
            preempt(s, y);
        }
        if (preempted_self) {
            i--;
            continue;
        }
        if (remain == 1)
            dec_budget--;
        else
            pre_budget -= take;
        if (plp)
            plp_budget -= take;
        memcpy(s->btok + nt, q->tok + q->n_done, (size_t)take * sizeof(int32_t));
        engine_seq *es = &s->bseq[ns];
        es->n_past = q->n_done;
        es->n_new = take;
        es->tok_offset = nt;
        es->blocks = q->kv.pages;
        es->wblocks = q->kv.wpages;
        es->n_blocks = q->kv.n_pages;
        es->logits = plp ? 2 : take == remain ? 1 : 0;
        s->bmap[ns++] = q;
        nt += take;
    }
    *n_tokens = nt;
    return ns;
}

static void update_gauges(sched *s)
{
    int running = 0, waiting = 0;
    for (sched_req *r = s->active; r; r = r->anext) {
        int any_run = 0;
        for (int i = 0; i < r->n_seqs; i++)
            if (r->seqs[i].state == SEQ_RUNNING)
                any_run = 1;
        if (any_run)
            running++;
        else
            waiting++;
    }
    pthread_mutex_lock(&s->m.mu);
    s->m.running = running;
    s->m.waiting = waiting;
    s->m.kv_pages = kv_pool_n_pages(s->pool);
    s->m.kv_used = kv_pool_n_used(s->pool);
    s->m.kv_cached = kv_pool_n_cached(s->pool);
    const kv_pool *wg = kv_pool_window(s->pool);
    s->m.kv_wpages = wg ? kv_pool_n_pages(wg) : 0;
    s->m.kv_wused = wg ? kv_pool_n_used(wg) : 0;
    pthread_mutex_unlock(&s->m.mu);
}

/* Fills s->srows when the batch can sample inside the step: a backend that
 * can, and rows that need the logits alone (no penalties, logit bias or
 * prompt logprobs).  Draws each row's number from its sampler, as the
 * host path would right after the step. */
static int sample_in_step(sched *s, int ns)
{
    if (!s->be.step_sample)
        return 0;
    for (int i = 0; i < ns; i++) {
        const engine_seq *es = &s->bseq[i];
        const seq *q = s->bmap[i];
        if (es->logits == 2 || (es->logits && (!q->smp || !sampler_plain(q->smp) ||
                                               sampler_get_params(q->smp)->top_k > ENGINE_SAMPLE_MAX_K)))
            return 0;
    }
    int r = 0;
    for (int i = 0; i < ns; i++) {
        seq *q = s->bmap[i];
        if (!s->bseq[i].logits)
            continue;
        const sampler_params *p = sampler_get_params(q->smp);
        int live = !q->req->ended && q->state == SEQ_RUNNING && q->req->p.max_tokens != 0;
        s->srows[r++] = (engine_sample){.temperature = p->temperature, .top_p = p->top_p, .min_p = p->min_p,
                                        .top_k = p->top_k, .u = live ? sampler_draw(q->smp) : 0.0,
                                        .n_logprobs = q->req->p.logprobs};
    }
    return 1;
}

/* Returns the number of sequences stepped. */
static int step(sched *s)
{
    s->n_paused = 0;
    admit(s);
    int nt = 0;
    int ns = build_batch(s, &nt);
    if (ns == 0)
        return 0;
    engine_batch b = {.n_tokens = nt, .tokens = s->btok, .n_seqs = ns, .seqs = s->bseq};
    char err[256] = "";
    int sampled = sample_in_step(s, ns);
    int rows = sampled ? s->be.step_sample(s->be.ctx, s->pool, &b, s->srows, s->sout, err, sizeof err)
                       : s->be.step(s->be.ctx, s->pool, &b, s->logits, err, sizeof err);
    s->heartbeat = now_s();
    if (rows < 0) {
        atomic_fetch_add(&s->engine_failures, 1);
        fprintf(stderr, "sparsed: engine step failed: %s\n", err);
        char msg[300];
        snprintf(msg, sizeof msg, "engine error: %s", err);
        for (int i = 0; i < ns; i++)
            if (!s->bmap[i]->req->ended)
                req_end(s, s->bmap[i]->req, 500, msg, 0);
        return ns;
    }
    atomic_store(&s->engine_failures, 0);
    pthread_mutex_lock(&s->m.mu);
    s->m.steps++;
    s->m.batch_tokens_total += (uint64_t)nt;
    hist_observe(&s->m.batch_seqs, ns);
    hist_observe(&s->m.batch_tokens, nt);
    pthread_mutex_unlock(&s->m.mu);

    int row = 0;
    for (int i = 0; i < ns; i++) {
        seq *q = s->bmap[i];
        const engine_seq *es = &s->bseq[i];
        q->n_done += es->n_new;
        if (s->o.prefix_cache)
            kv_seq_publish(s->pool, &q->kv, q->tok, q->n_done);
        if (!es->logits)
            continue;
        if (es->logits == 2) {
            /* row k predicts the token after position n_past + k */
            if (!q->req->ended && q->state == SEQ_RUNNING)
                for (int k = 0; k < es->n_new; k++)
                    prompt_logprob(s, q, es->n_past + k + 1,
                                   s->logits + (size_t)(row + k) * s->be.n_vocab);
            row += es->n_new - 1;
            if (q->n_done < q->n_tok) {   /* a chunk short of the prompt's end */
                row++;
                continue;
            }
        }
        float *lg = s->logits + (size_t)row * s->be.n_vocab;
        const engine_sampled *done = sampled ? &s->sout[row] : NULL;
        row++;
        if (q->req->ended || q->state != SEQ_RUNNING)
            continue;
        if (q->req->p.max_tokens == 0) {   /* echo scoring: the prompt only */
            seq_finish(s, q, SCHED_FINISH_LENGTH);
            continue;
        }
        const float *lp = NULL;
        int32_t t;
        if (done) {
            t = done->id;
        } else {
            if (q->req->p.logprobs >= 0) {
                memcpy(s->lpbuf, lg, (size_t)s->be.n_vocab * sizeof(float));
                lp = s->lpbuf;
            }
            t = sampler_sample(q->smp, lg, q->tok, q->n_tok);
        }
        if (t < 0 || t >= s->be.n_vocab) {
            req_end(s, q->req, 500, "sampler returned an invalid token", 0);
            continue;
        }
        seq_token(s, q, t, lp, done);
    }
    return ns;
}

/* ---- loop callbacks ---------------------------------------------------- */

static int has_work(sched *s)
{
    return s->n_running > 0 || (s->wait_head && !s->admit_blocked);
}

static void maybe_stop(sched *s);

static void on_work(uv_idle_t *h)
{
    sched *s = h->data;
    take_incoming(s);
    int ns = step(s);
    update_gauges(s);
    /* Only paused sequences left: sleep until a reader catches up (its
     * wakeup), a request comes or goes, or the next tick. */
    if (!has_work(s) || (ns == 0 && s->n_paused > 0)) {
        uv_idle_stop(&s->work);
        s->work_on = 0;
    }
    maybe_stop(s);
    reap(s);
}

static void kick(sched *s)
{
    if (!s->work_on && has_work(s)) {
        uv_idle_start(&s->work, on_work);
        s->work_on = 1;
    }
}

static void on_wake(uv_async_t *h)
{
    sched *s = h->data;
    take_incoming(s);
    update_gauges(s);
    kick(s);
    maybe_stop(s);
    reap(s);
}

static void close_all(sched *s)
{
    uv_idle_stop(&s->work);
    uv_timer_stop(&s->tick);
    uv_timer_stop(&s->drain_timer);
    if (s->o.handle_signals) {
        uv_signal_stop(&s->sig_term);
        uv_signal_stop(&s->sig_int);
    }
    uv_stop(&s->loop);
}

/* Ends the loop once draining and nothing is in flight. */
static void maybe_stop(sched *s)
{
    if (!atomic_load(&s->draining))
        return;
    if (atomic_load(&s->stop_now)) {
        for (sched_req *r = s->active, *nx; r; r = nx) {
            nx = r->anext;
            req_end(s, r, 503, "the server shut down before the request finished", 0);
        }
    }
    pthread_mutex_lock(&s->mu);
    int pending = s->in_head != NULL;
    pthread_mutex_unlock(&s->mu);
    if (s->n_active == 0 && !pending)
        close_all(s);
}

static void on_tick(uv_timer_t *h)
{
    sched *s = h->data;
    double t = now_s();
    s->heartbeat = t;
    take_incoming(s);
    for (sched_req *r = s->active, *nx; r; r = nx) {
        nx = r->anext;
        if (s->o.request_timeout > 0 && t - r->t_submit > s->o.request_timeout) {
            req_end(s, r, 504, "the request timed out", 0);
            continue;
        }
        if (s->o.keepalive > 0 && t - r->t_event >= s->o.keepalive &&
            atomic_load(&r->n_queued) == 0) {
            sched_event *ev = new_event(SCHED_EV_KEEPALIVE, 0, NULL, 0);
            if (ev)
                push_event(r, ev);
        }
    }
    /* Pages may have come back through the cache's LRU: retry admission. */
    s->admit_blocked = 0;
    update_gauges(s);
    kick(s);
    maybe_stop(s);
    reap(s);
}

static void on_drain_timeout(uv_timer_t *h)
{
    sched *s = h->data;
    fprintf(stderr, "sparsed: shutdown timeout: cancelling %d request(s)\n", s->n_active);
    atomic_store(&s->stop_now, 1);
    maybe_stop(s);
    reap(s);
}

static void start_drain(sched *s)
{
    if (!uv_is_active((uv_handle_t *)&s->drain_timer) && !atomic_load(&s->stop_now)) {
        fprintf(stderr, "sparsed: draining: %d request(s) in flight, waiting up to %.0f s\n",
                s->n_active, s->o.shutdown_timeout);
        uv_timer_start(&s->drain_timer, on_drain_timeout,
                       (uint64_t)(s->o.shutdown_timeout * 1000.0), 0);
    }
    maybe_stop(s);
}

static void on_signal(uv_signal_t *h, int signum)
{
    sched *s = h->data;
    if (atomic_exchange(&s->draining, 1)) {
        /* a second signal: stop now */
        fprintf(stderr, "sparsed: signal %d again: stopping now\n", signum);
        atomic_store(&s->stop_now, 1);
        maybe_stop(s);
        reap(s);
        return;
    }
    fprintf(stderr, "sparsed: signal %d: not ready, no new requests\n", signum);
    start_drain(s);
    reap(s);
}

static void on_drain_async(sched *s)
{
    if (atomic_load(&s->draining))
        start_drain(s);
}

static void on_wake_all(uv_async_t *h)
{
    on_wake(h);
    on_drain_async(h->data);
    reap(h->data);
}

/* ---- lifecycle --------------------------------------------------------- */

sched *sched_create(const sched_backend *b, kv_pool *pool, const sched_opts *o,
                    char *err, size_t errlen)
{
    if (o->max_running < 1 || o->max_batch_tokens < 1 || o->max_queue < 1 || o->interactive_context < 0 ||
        o->max_queued_tokens < 1) {
        snprintf(err, errlen, "scheduler limits must be >= 1 (interactive_context >= 0)");
        return NULL;
    }
    sched *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->be = *b;
    s->pool = pool;
    s->layout = *kv_pool_layout(pool);
    s->o = *o;
    s->model_name = strdup(o->model_name ? o->model_name : "");
    s->o.model_name = s->model_name;
    pthread_mutex_init(&s->mu, NULL);
    metrics_init(&s->m);
    atomic_init(&s->draining, 0);
    atomic_init(&s->running_loop, 0);
    atomic_init(&s->loop_done, 0);
    atomic_init(&s->stop_now, 0);
    atomic_init(&s->engine_failures, 0);
    s->heartbeat = now_s();
    int rows = o->max_running;
    s->running = calloc((size_t)o->max_running, sizeof(seq *));
    s->btok = malloc((size_t)o->max_batch_tokens * sizeof(int32_t));
    s->bseq = calloc((size_t)o->max_running, sizeof(engine_seq));
    s->bmap = calloc((size_t)o->max_running, sizeof(seq *));
    s->logits = malloc((size_t)(rows + PLP_ROWS) * (size_t)b->n_vocab * sizeof(float));
    s->lpbuf = malloc((size_t)b->n_vocab * sizeof(float));
    s->srows = malloc((size_t)rows * sizeof *s->srows);
    s->sout = malloc((size_t)rows * sizeof *s->sout);
    if (!s->model_name || !s->running || !s->btok || !s->bseq || !s->bmap || !s->logits ||
        !s->lpbuf || !s->srows || !s->sout || uv_loop_init(&s->loop)) {
        snprintf(err, errlen, "out of memory");
        sched_free(s);
        return NULL;
    }
    uv_async_init(&s->loop, &s->wake, on_wake_all);
    uv_idle_init(&s->loop, &s->work);
    uv_timer_init(&s->loop, &s->tick);
    uv_timer_init(&s->loop, &s->drain_timer);
    s->wake.data = s->work.data = s->tick.data = s->drain_timer.data = s;
    if (o->handle_signals) {
        uv_signal_init(&s->loop, &s->sig_term);
        uv_signal_init(&s->loop, &s->sig_int);
        s->sig_term.data = s->sig_int.data = s;
        /* Caught from now on (the loop handles them once it runs), so a
         * signal during startup drains instead of killing. */
        uv_signal_start(&s->sig_term, on_signal, SIGTERM);
        uv_signal_start(&s->sig_int, on_signal, SIGINT);
    }
    update_gauges(s);
    return s;
}

int sched_run(sched *s)
{
    uv_timer_start(&s->tick, on_tick, 250, 250);
    atomic_store(&s->running_loop, 1);
    s->heartbeat = now_s();
    if (atomic_load(&s->draining))
        start_drain(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    atomic_store(&s->loop_done, 1);
    atomic_store(&s->running_loop, 0);
    return 0;
}

void sched_drain(sched *s)
{
    atomic_store(&s->draining, 1);
    if (!atomic_load(&s->loop_done))
        uv_async_send(&s->wake);
}

static void close_cb(uv_handle_t *h) { (void)h; }

void sched_free(sched *s)
{
    if (!s)
        return;
    if (s->wake.data) {
        /* Requests still held by the loop (shutdown): drop them. */
        take_incoming(s);
        while (s->active)
            req_end(s, s->active, 503, "the server shut down", 0);
        reap(s);
        uv_close((uv_handle_t *)&s->wake, close_cb);
        uv_close((uv_handle_t *)&s->work, close_cb);
        uv_close((uv_handle_t *)&s->tick, close_cb);
        uv_close((uv_handle_t *)&s->drain_timer, close_cb);
        if (s->o.handle_signals) {
            uv_close((uv_handle_t *)&s->sig_term, close_cb);
            uv_close((uv_handle_t *)&s->sig_int, close_cb);
        }
        uv_run(&s->loop, UV_RUN_DEFAULT);
        uv_loop_close(&s->loop);
    }
    metrics_destroy(&s->m);
    pthread_mutex_destroy(&s->mu);
    free(s->running);
    free(s->btok);
    free(s->bseq);
    free(s->bmap);
    free(s->logits);
    free(s->lpbuf);
    free(s->srows);
    free(s->sout);
    free(s->model_name);
    free(s);
}

/* Requests submitted before the loop starts wait in the incoming list. */
int sched_ready(sched *s)
{
    return s && !atomic_load(&s->loop_done) && !atomic_load(&s->draining);
}

int sched_healthy(sched *s)
{
    if (!s || atomic_load(&s->loop_done))
        return 0;
    if (atomic_load(&s->engine_failures) >= 3)
        return 0;
    /* The tick timer beats every 250 ms unless a step blocks the loop. */
    return now_s() - s->heartbeat < 60.0;
}

void sched_metrics(sched *s, char **buf, size_t *len, size_t *cap)
{
    metrics_cache cc = {kv_pool_layout(s->pool)->block_size, s->be.kv_dtype, s->o.prefix_cache};
    metrics_render(&s->m, s->model_name, &cc, buf, len, cap);
}

void sched_get_stats(sched *s, sched_stats *st)
{
    pthread_mutex_lock(&s->m.mu);
    st->running = s->m.running;
    st->waiting = s->m.waiting;
    st->kv_pages = s->m.kv_pages;
    st->kv_used = s->m.kv_used;
    st->kv_cached = s->m.kv_cached;
    st->steps = s->m.steps;
    pthread_mutex_unlock(&s->m.mu);
}
