/* A small persistent thread pool.  tpool_run hands out task indices through
 * an atomic counter; the caller works too.  Workers spin briefly before
 * sleeping, since a decode step issues hundreds of short jobs. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "engine/cpu/cpu.h"

#define SPIN_ITERS 20000

struct tpool {
    int n;                      /* threads including the caller */
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_uint gen;            /* bumped for each job */
    atomic_int next;            /* next task index */
    atomic_int busy;            /* workers still in the current job */
    int stop;
    tpool_fn fn;
    void *ctx;
    int ntask;
};

typedef struct { tpool *p; int id; } worker_arg;

static _Thread_local struct { void *p; size_t cap; } scratch[SCRATCH_SLOTS];

void *cpu_scratch(int slot, size_t bytes)
{
    if (bytes > scratch[slot].cap) {
        free(scratch[slot].p);
        scratch[slot].p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
        scratch[slot].cap = scratch[slot].p ? bytes : 0;
        if (!scratch[slot].p)
            abort(); /* out of memory inside a worker: nothing sane to return */
    }
    return scratch[slot].p;
}

static void scratch_release(void)
{
    for (int i = 0; i < SCRATCH_SLOTS; i++) {
        free(scratch[i].p);
        scratch[i].p = NULL;
        scratch[i].cap = 0;
    }
}

static void work(tpool *p, int thread)
{
    for (;;) {
        int i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->ntask)
            break;
        p->fn(p->ctx, i, thread);
    }
}

static void *worker(void *arg)
{
    worker_arg *wa = arg;
    tpool *p = wa->p;
    int id = wa->id;
    free(wa);
    unsigned seen = 0; /* gen at creation: a late-starting worker must still see job 1 */
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&p->gen, memory_order_acquire) == seen && spins < SPIN_ITERS)
            if (++spins % 256 == 0)
                sched_yield(); /* an oversubscribed machine must not lose the slice to us */
        if (atomic_load_explicit(&p->gen, memory_order_acquire) == seen) {
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->gen) == seen && !p->stop)
                pthread_cond_wait(&p->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (p->stop) {
            scratch_release();
            return NULL;
        }
        seen = atomic_load(&p->gen);
        work(p, id);
        atomic_fetch_sub_explicit(&p->busy, 1, memory_order_release);
    }
}

tpool *tpool_create(int n_threads)
{
    tpool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->n = n_threads < 1 ? 1 : n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->th = calloc((size_t)p->n, sizeof *p->th);
    for (int i = 1; i < p->n; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        wa->p = p;
        wa->id = i;
        pthread_create(&p->th[i], NULL, worker, wa);
    }
    return p;
}

void tpool_free(tpool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    atomic_fetch_add(&p->gen, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++)
        pthread_join(p->th[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->th);
    free(p);
}

int tpool_size(const tpool *p) { return p->n; }

void tpool_run(tpool *p, tpool_fn fn, void *ctx, int n)
{
    if (n <= 0)
        return;
    if (p->n == 1 || n == 1) {
        for (int i = 0; i < n; i++)
            fn(ctx, i, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->ntask = n;
    atomic_store(&p->next, 0);
    atomic_store(&p->busy, p->n - 1);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    work(p, 0);
    for (int spins = 0; atomic_load_explicit(&p->busy, memory_order_acquire) > 0;)
        if (++spins % 64 == 0)
            sched_yield();
}
