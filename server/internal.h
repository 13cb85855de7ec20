/* server internals: shared by serve.c (lifecycle), http.c (libmicrohttpd
 * glue, routing, auth, streaming) and api.c (OpenAI request parsing and
 * response shapes).  Private to server/. */
#ifndef SPARSED_SERVER_INTERNAL_H
#define SPARSED_SERVER_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "engine/engine.h"
#include "kvcache/kvcache.h"
#include "scheduler/scheduler.h"
#include "server/config.h"

/* ---- growing byte buffer ---- */
typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;
int sb_put(sbuf *b, const char *s, size_t n);
int sb_puts(sbuf *b, const char *s);
int sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_free(sbuf *b);

/* ---- the daemon ---- */
typedef struct server {
    srv_config cfg;
    engine *eng;
    const engine_info *info;
    kv_pool *pool;
    sched *sc;
    struct MHD_Daemon *d;
    char *model_name;
    time_t created;
    char **keys;
    int n_keys;
    size_t key_max;
    atomic_ulong next_id;
    atomic_int n_conns;
    /* HTTP counters for /metrics, by status class */
    atomic_ulong http_2xx, http_4xx, http_5xx;
} server;

/* ---- API errors ---- */
typedef struct apierr {
    int status;
    const char *type;         /* invalid_request_error, authentication_error, ... */
    const char *code;         /* NULL = null */
    char param[64];           /* "" = null */
    char message[512];
} apierr;

void apierr_set(apierr *e, int status, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* {"error":{...}} as a malloc'd string. */
char *apierr_json(const apierr *e);

/* ---- generation requests ---- */
typedef struct gen_req {
    int chat;
    int stream, include_usage, echo;
    int logprobs;             /* -1 off, else alternatives per token */
    int token_ids;            /* logprobs name tokens "token_id:N" (vLLM's return_tokens_as_token_ids) */
    int n;
    int n_prompts;
    int32_t **prompts;
    int *prompt_len;
    char **echo_text;         /* per prompt, when echo */
    int max_tokens;
    char *stop[SCHED_MAX_STOP];
    int n_stop;
    int32_t *bias_tok;
    float *bias_val;
    sched_params sp;
} gen_req;

/* Parses and validates a /v1/completions (chat 0) or /v1/chat/completions
 * body, renders the chat template and tokenizes.  0, or -1 with e set. */
int api_parse_gen(server *srv, const char *body, size_t len, int chat, gen_req *g, apierr *e);
void gen_req_free(gen_req *g);

/* Response assembly, shared by streams and whole responses. */
typedef struct choice_acc {
    sbuf text;
    int finish;
    int n_tokens;
    cJSON *lp;                /* completions: {tokens,...}; chat: content array */
} choice_acc;

typedef struct gen_state {
    gen_req g;
    cJSON **plp;              /* completions echo + logprobs: per prompt, its tokens' logprobs */
    int **plp_off;            /* per prompt, each token's byte offset in the echoed text */
    int *plp_sent;            /* stream: per choice, whether the prompt's first token went out */
    char id[48];
    time_t created;
    int n_choices;
    choice_acc *ch;
    int started;              /* stream: first chunks written */
    int done;                 /* DONE or ERROR seen */
    int prompt_tokens, completion_tokens, cached_tokens;
    double queue_s, ttft_s;
    apierr err;               /* err.status != 0: the request failed */
} gen_state;

int gen_state_init(gen_state *st, server *srv, int n_choices);
void gen_state_free(gen_state *st);
/* Applies one event; for streams, appends the SSE bytes it produces. */
void gen_apply(server *srv, gen_state *st, const sched_event *ev, sbuf *sse);
/* Opening SSE bytes (chat role deltas, echo) and closing ones (usage, [DONE]). */
void gen_stream_open(server *srv, gen_state *st, sbuf *sse);
void gen_stream_close(server *srv, gen_state *st, sbuf *sse);
/* The whole JSON response body (malloc'd). */
char *gen_response(server *srv, gen_state *st);

/* ---- other endpoints (JSON bodies; status in *status) ---- */
char *api_models(server *srv);
char *api_model(server *srv, const char *id, apierr *e);
char *api_tokenize(server *srv, const char *body, size_t len, apierr *e);
char *api_detokenize(server *srv, const char *body, size_t len, apierr *e);

/* Token text for logprobs: valid UTF-8 (invalid bytes become U+FFFD). */
int token_string(server *srv, int32_t tok, char *out, int cap, unsigned char *raw, int *raw_len);
/* Replaces invalid UTF-8 in place-copy; returns malloc'd valid UTF-8. */
char *utf8_sanitize(const char *s, size_t n);
int utf8_valid(const char *s, size_t n);

/* ---- HTTP ---- */
int http_start(server *srv, char *err, size_t errlen);
int http_port(server *srv);
void http_stop(server *srv);

#endif
