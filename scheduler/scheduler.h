/* scheduler: continuous batching on one libuv loop thread.  The one public
 * header of scheduler/.
 *
 * Requests come in from any thread (sched_submit); the loop admits them
 * into the running batch when the KV pool has room (after prefix-cache
 * hits), runs one engine step at a time over decode tokens and prefill
 * chunks, samples, detokenizes, checks stop conditions and queues events
 * per request.  Each queued event calls the request's notify callback so
 * the HTTP side can resume the connection that waits for it.
 */
#ifndef SPARSED_SCHEDULER_H
#define SPARSED_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "kvcache/kvcache.h"

/* What the scheduler needs from a model.  sched_backend_engine() fills it
 * for a real engine; tests may fill it with a fake. */
typedef struct sched_backend {
    void *ctx;
    int n_vocab;
    int n_ctx;
    const char *kv_dtype;     /* how the pages hold K/V, for /metrics (NULL: not said) */
    int (*step)(void *ctx, kv_pool *pool, const engine_batch *b, float *logits,
                char *err, size_t errlen);
    int (*is_eog)(void *ctx, int32_t tok);
    int (*detok)(void *ctx, detok *d, int32_t tok, char *out, int cap);
    /* Optional: the step with sampling where the logits are (engine_step_sample),
     * used for batches whose rows need no penalties, bias or prompt logprobs. */
    int (*step_sample)(void *ctx, kv_pool *pool, const engine_batch *b, const engine_sample *rows,
                       engine_sampled *out, char *err, size_t errlen);
} sched_backend;

void sched_backend_engine(sched_backend *b, engine *e);

typedef struct sched_opts {
    int max_running;          /* sequences in the running batch */
    int max_batch_tokens;     /* tokens per engine step (decode + prefill) */
    int interactive_context;  /* with sequences decoding, a prefill chunk at a context
                                 of c > this many tokens shrinks by this / c, so a step's
                                 attention work stays that of a full chunk here; 0 = off
                                 (default 131072) */
    int max_queue;            /* requests waiting for admission */
    long max_queued_tokens;   /* prompt tokens waiting for admission */
    int prefix_cache;         /* match and publish full pages */
    double request_timeout;   /* seconds from submission; 0 = none */
    double shutdown_timeout;  /* seconds a drain waits for in-flight work */
    double keepalive;         /* seconds without events before a keep-alive event; 0 = off */
    int handle_signals;       /* SIGTERM/SIGINT start a drain */
    const char *model_name;   /* label on the metrics */
} sched_opts;

void sched_opts_default(sched_opts *o);
/* The most logit rows one step asks the engine for under o (each running
 * sequence's next token, plus prompt-logprob rows): what engine_reserve
 * sizes the work buffers by. */
int sched_max_rows(const sched_opts *o);

typedef struct sched sched;
typedef struct sched_req sched_req;

/* One request: n sequences for each of its prompts (choice index =
 * prompt * n + j), all with the same sampling and stop rules. */
typedef struct sched_prompt {
    const int32_t *tokens;
    int n;
} sched_prompt;

#define SCHED_MAX_STOP 16
#define SCHED_MAX_LOGPROBS 20

typedef struct sched_params {
    int n;                    /* sequences per prompt, >= 1 */
    int max_tokens;           /* generated tokens per sequence, >= 1 (0 with prompt_logprobs) */
    int ignore_eos;
    int logprobs;             /* -1: off; else alternatives per token, 0..SCHED_MAX_LOGPROBS */
    int prompt_logprobs;      /* -1: off; else logprobs of prompt tokens 1.. (echo), with alternatives */
    sampler_params sampling;  /* seed used as given for sequence 0, seed+j for j; bias arrays copied */
    const char *const *stop;  /* stop strings (copied), not part of the output */
    int n_stop;
} sched_params;

enum sched_finish { SCHED_FINISH_NONE = 0, SCHED_FINISH_STOP, SCHED_FINISH_LENGTH, SCHED_FINISH_ABORT };

enum sched_ev_type {
    SCHED_EV_TOKEN,      /* a generated token and the text it releases (maybe empty) */
    SCHED_EV_FINISH,     /* a sequence ended (finish), with any text still held */
    SCHED_EV_DONE,       /* every sequence ended: usage and timings; the last event */
    SCHED_EV_ERROR,      /* the request failed (status, message); the last event */
    SCHED_EV_KEEPALIVE,  /* nothing happened for a while (long prefill or queue) */
    SCHED_EV_PROMPT_TOKEN, /* logprob of prompt token `pos` (>= 1), for the first choice of its prompt */
};

typedef struct sched_event {
    int type;
    int index;                /* choice index */
    int pos;                  /* PROMPT_TOKEN: position in the prompt */
    int32_t token;
    float logprob;
    int n_top;
    int32_t top_ids[SCHED_MAX_LOGPROBS];
    float top_lp[SCHED_MAX_LOGPROBS];
    int finish;
    /* DONE */
    int prompt_tokens, completion_tokens, cached_tokens;
    double queue_s, ttft_s;   /* submission to first admission, to first token */
    /* ERROR */
    int status;
    char message[200];
    /* text released by this event (NUL-terminated) */
    int text_len;
    char text[];
} sched_event;

enum { SCHED_OK = 0, SCHED_EFULL = -1, SCHED_EDRAIN = -2, SCHED_EINVAL = -3, SCHED_ENOMEM = -4 };

sched *sched_create(const sched_backend *b, kv_pool *pool, const sched_opts *o,
                    char *err, size_t errlen);
/* Runs the loop on the calling thread until a drain finishes. */
int sched_run(sched *s);
/* Starts a graceful drain, from any thread (as SIGTERM does). */
void sched_drain(sched *s);
void sched_free(sched *s);

/* Model loaded, loop running and not draining. */
int sched_ready(sched *s);
/* Loop alive and stepping (heartbeat recent, engine not failing). */
int sched_healthy(sched *s);

/* Queues a request.  notify(user) runs on the loop thread after events are
 * queued, until sched_req_release.  Returns SCHED_OK with *out set, or a
 * negative code with err set (EFULL and EDRAIN mean "retry later"). */
int sched_submit(sched *s, const sched_prompt *prompts, int n_prompts, const sched_params *p,
                 void (*notify)(void *user), void *user, sched_req **out,
                 char *err, size_t errlen);
/* Next queued event (free with sched_event_free), or NULL when none. */
sched_event *sched_req_next(sched_req *r);
void sched_event_free(sched_event *ev);
/* The caller is done with r: no more notify calls after this returns; an
 * unfinished request is cancelled and its pages freed at the next step. */
void sched_req_release(sched_req *r);

/* Prometheus text of the scheduler's metrics, appended to a malloc'd
 * buffer (*buf, *len, *cap as for a growing string). */
void sched_metrics(sched *s, char **buf, size_t *len, size_t *cap);

typedef struct sched_stats {
    int running, waiting;
    int kv_pages, kv_used, kv_cached;
    uint64_t steps;
} sched_stats;
void sched_get_stats(sched *s, sched_stats *st);

#endif
