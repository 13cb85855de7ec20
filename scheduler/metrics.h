/* scheduler metrics: counters, gauges and fixed-bucket histograms, written
 * on the loop thread and read by /metrics under one mutex.  Private to
 * scheduler/. */
#ifndef SPARSED_SCHED_METRICS_H
#define SPARSED_SCHED_METRICS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define HIST_MAX_BUCKETS 32

typedef struct hist {
    int n;                            /* finite bounds; +Inf is implicit */
    const double *bounds;
    uint64_t counts[HIST_MAX_BUCKETS + 1];  /* per bucket, not cumulative */
    uint64_t count;
    double sum;
} hist;

void hist_init(hist *h, const double *bounds, int n);
void hist_observe(hist *h, double v);

typedef struct sched_metrics_t {
    pthread_mutex_t mu;
    /* gauges */
    int running, waiting;
    int kv_pages, kv_used, kv_cached;
    int kv_wpages, kv_wused;    /* the window group's (kvcache.h); 0 without one */
    /* counters */
    uint64_t steps, prompt_tokens, generation_tokens, preemptions;
    uint64_t prefix_queries, prefix_hits;
    uint64_t finished_stop, finished_length, finished_abort, finished_error;
    uint64_t batch_tokens_total;
    /* histograms */
    hist ttft, itl, e2e, queue, batch_seqs, batch_tokens, req_prompt, req_gen;
} sched_metrics_t;

void metrics_init(sched_metrics_t *m);
void metrics_destroy(sched_metrics_t *m);

/* Growing string helpers shared by the renderer. */
void sbuf_printf(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* What vllm:cache_config_info tells of the pool besides its page count. */
typedef struct metrics_cache {
    int block_size;
    const char *dtype;        /* NULL: "unknown" */
    int prefix_cache;
} metrics_cache;

/* Renders every metric, each vllm:* series labelled with model_name. */
void metrics_render(sched_metrics_t *m, const char *model_name, const metrics_cache *cc,
                    char **buf, size_t *len, size_t *cap);

#endif
