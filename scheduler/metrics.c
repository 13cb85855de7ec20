/* Scheduler metrics in Prometheus text format (0.0.4).  Names follow vLLM
 * where the meaning matches, so existing dashboards work; the rest are
 * sparsed_*.  Every vllm:* series carries a model_name label as vLLM's do. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/metrics.h"

static const double b_ttft[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
                                640.0, 2560.0};
static const double b_itl[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,
                               0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                               20.0, 40.0, 80.0};
static const double b_e2e[] = {0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0,
                               10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                               480.0, 960.0, 1920.0, 7680.0};
static const double b_batch[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
static const double b_tokens[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096,
                                  8192, 16384, 32768, 65536, 131072, 262144, 524288,
                                  1048576};

#define N(a) ((int)(sizeof(a) / sizeof((a)[0])))

void hist_init(hist *h, const double *bounds, int n)
{
    memset(h, 0, sizeof *h);
    h->bounds = bounds;
    h->n = n < HIST_MAX_BUCKETS ? n : HIST_MAX_BUCKETS;
}

void hist_observe(hist *h, double v)
{
    int i = 0;
    while (i < h->n && v > h->bounds[i])
        i++;
    h->counts[i]++;
    h->count++;
    h->sum += v;
}

void metrics_init(sched_metrics_t *m)
{
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    hist_init(&m->ttft, b_ttft, N(b_ttft));
    hist_init(&m->itl, b_itl, N(b_itl));
    hist_init(&m->e2e, b_e2e, N(b_e2e));
    hist_init(&m->queue, b_e2e, N(b_e2e));
    hist_init(&m->batch_seqs, b_batch, N(b_batch));
    hist_init(&m->batch_tokens, b_tokens, N(b_tokens));
    hist_init(&m->req_prompt, b_tokens, N(b_tokens));
    hist_init(&m->req_gen, b_tokens, N(b_tokens));
}

void metrics_destroy(sched_metrics_t *m)
{
    pthread_mutex_destroy(&m->mu);
}

void sbuf_printf(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    for (;;) {
        size_t room = *cap - *len;
        if (*buf && room > 0) {
            va_list ap;
            va_start(ap, fmt);
            int k = vsnprintf(*buf + *len, room, fmt, ap);
            va_end(ap);
            if (k < 0)
                return;
            if ((size_t)k < room) {
                *len += (size_t)k;
                return;
            }
        }
        size_t nc = *cap ? *cap * 2 : 4096;
        char *nb = realloc(*buf, nc);
        if (!nb)
            return;
        *buf = nb;
        *cap = nc;
    }
}

#define P(...) sbuf_printf(buf, len, cap, __VA_ARGS__)

static void head(char **buf, size_t *len, size_t *cap, const char *name, const char *type,
                 const char *help)
{
    P("# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(char **buf, size_t *len, size_t *cap, const char *name, const char *lbl,
                    const char *help, uint64_t v)
{
    head(buf, len, cap, name, "counter", help);
    P("%s{%s} %llu\n", name, lbl, (unsigned long long)v);
}

static void gauge(char **buf, size_t *len, size_t *cap, const char *name, const char *lbl,
                  const char *help, double v)
{
    head(buf, len, cap, name, "gauge", help);
    P("%s{%s} %.17g\n", name, lbl, v);
}

static void histogram(char **buf, size_t *len, size_t *cap, const char *name, const char *lbl,
                      const char *help, const hist *h)
{
    head(buf, len, cap, name, "histogram", help);
    uint64_t cum = 0;
    for (int i = 0; i < h->n; i++) {
        cum += h->counts[i];
        P("%s_bucket{%s,le=\"%.17g\"} %llu\n", name, lbl, h->bounds[i], (unsigned long long)cum);
    }
    cum += h->counts[h->n];
    P("%s_bucket{%s,le=\"+Inf\"} %llu\n", name, lbl, (unsigned long long)cum);
    P("%s_count{%s} %llu\n", name, lbl, (unsigned long long)h->count);
    P("%s_sum{%s} %.17g\n", name, lbl, h->sum);
}

void metrics_render(sched_metrics_t *m, const char *model_name, const metrics_cache *cc,
                    char **buf, size_t *len, size_t *cap)
{
    /* label value escaping: backslash, quote and newline */
    char lbl[512];
    size_t o = 0;
    o += (size_t)snprintf(lbl, sizeof lbl, "model_name=\"");
    for (const char *c = model_name ? model_name : ""; *c && o < sizeof lbl - 4; c++) {
        if (*c == '\\' || *c == '"') {
            lbl[o++] = '\\';
            lbl[o++] = *c;
        } else if (*c == '\n') {
            lbl[o++] = '\\';
            lbl[o++] = 'n';
        } else {
            lbl[o++] = *c;
        }
    }
    lbl[o++] = '"';
    lbl[o] = 0;

    pthread_mutex_lock(&m->mu);
    sched_metrics_t c = *m;   /* snapshot; render without the lock */
    pthread_mutex_unlock(&m->mu);

    gauge(buf, len, cap, "vllm:num_requests_running", lbl,
          "Number of requests with sequences in the running batch.", c.running);
    gauge(buf, len, cap, "vllm:num_requests_waiting", lbl,
          "Number of requests waiting to be admitted.", c.waiting);
    gauge(buf, len, cap, "vllm:kv_cache_usage_perc", lbl,
          "KV-cache usage: fraction of pages referenced by sequences (1 = full).",
          c.kv_pages ? (double)c.kv_used / c.kv_pages : 0.0);
    counter(buf, len, cap, "vllm:prefix_cache_queries_total", lbl,
            "Prompt tokens looked up in the prefix cache.", c.prefix_queries);
    counter(buf, len, cap, "vllm:prefix_cache_hits_total", lbl,
            "Prompt tokens found in the prefix cache.", c.prefix_hits);
    counter(buf, len, cap, "vllm:prompt_tokens_total", lbl,
            "Prompt tokens of admitted requests.", c.prompt_tokens);
    counter(buf, len, cap, "vllm:generation_tokens_total", lbl,
            "Generated tokens.", c.generation_tokens);
    counter(buf, len, cap, "vllm:num_preemptions_total", lbl,
            "Sequences preempted (pages freed, recomputed later).", c.preemptions);
    head(buf, len, cap, "vllm:request_success_total", "counter",
         "Finished requests by finish reason.");
    P("vllm:request_success_total{%s,finished_reason=\"stop\"} %llu\n", lbl,
      (unsigned long long)c.finished_stop);
    P("vllm:request_success_total{%s,finished_reason=\"length\"} %llu\n", lbl,
      (unsigned long long)c.finished_length);
    P("vllm:request_success_total{%s,finished_reason=\"abort\"} %llu\n", lbl,
      (unsigned long long)c.finished_abort);
    counter(buf, len, cap, "sparsed_request_errors_total", lbl,
            "Requests that failed in the scheduler (engine error, timeout, shutdown).",
            c.finished_error);
    histogram(buf, len, cap, "vllm:time_to_first_token_seconds", lbl,
              "Time from submission to the first generated token.", &c.ttft);
    histogram(buf, len, cap, "vllm:inter_token_latency_seconds", lbl,
              "Time between consecutive tokens of a sequence.", &c.itl);
    histogram(buf, len, cap, "vllm:e2e_request_latency_seconds", lbl,
              "Time from submission to the last token.", &c.e2e);
    histogram(buf, len, cap, "vllm:request_queue_time_seconds", lbl,
              "Time from submission to first admission.", &c.queue);
    histogram(buf, len, cap, "vllm:request_prompt_tokens", lbl,
              "Prompt tokens per request.", &c.req_prompt);
    histogram(buf, len, cap, "vllm:request_generation_tokens", lbl,
              "Generated tokens per request.", &c.req_gen);
    counter(buf, len, cap, "sparsed_engine_steps_total", lbl,
            "Engine steps (forward passes over a batch).", c.steps);
    counter(buf, len, cap, "sparsed_engine_step_tokens_total", lbl,
            "Tokens computed by engine steps.", c.batch_tokens_total);
    histogram(buf, len, cap, "sparsed_batch_size", lbl,
              "Sequences per engine step.", &c.batch_seqs);
    histogram(buf, len, cap, "sparsed_batch_tokens", lbl,
              "Tokens per engine step.", &c.batch_tokens);
    gauge(buf, len, cap, "sparsed_kv_pages_total", lbl, "Pages in the KV pool.", c.kv_pages);
    /* an info metric as vLLM's: the pool's configuration in labels, value 1
     * (vLLM counts pages as blocks; ours live on the device or the host) */
    head(buf, len, cap, "vllm:cache_config_info", "gauge", "Information of the KV cache configuration.");
    P("vllm:cache_config_info{%s,block_size=\"%d\",cache_dtype=\"%s\",enable_prefix_caching=\"%s\","
      "num_gpu_blocks=\"%d\"} 1\n", lbl, cc->block_size, cc->dtype ? cc->dtype : "unknown",
      cc->prefix_cache ? "True" : "False", c.kv_pages);
    gauge(buf, len, cap, "sparsed_kv_pages_used", lbl,
          "KV pages referenced by sequences.", c.kv_used);
    gauge(buf, len, cap, "sparsed_kv_pages_cached", lbl,
          "KV pages held only by the prefix cache (reusable).", c.kv_cached);
    if (c.kv_wpages) {
        gauge(buf, len, cap, "sparsed_kv_window_pages_total", lbl,
              "Pages of the sliding-window layers' group of the KV pool.", c.kv_wpages);
        gauge(buf, len, cap, "sparsed_kv_window_pages_used", lbl,
              "Window pages referenced by sequences.", c.kv_wused);
    }
}
