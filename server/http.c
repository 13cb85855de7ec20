/* HTTP front end on libmicrohttpd: routing, API keys, body limits, replies,
 * SSE streams and the access log.
 *
 * MHD runs a pool of event-loop threads.  A generation request is handed
 * to the scheduler and its connection suspended; the scheduler's notify
 * resumes it when events are queued.  Streams use a callback response whose
 * reader suspends the connection when it has nothing to send, so neither a
 * long generation nor a slow reader ties up a thread.
 *
 * Wakeups: notify sets `pending` and resumes the connection if it is
 * suspended; a handler clears `pending` before it polls and suspends only if
 * no notify came in between (both under c->mu), so no event is missed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "server/internal.h"

enum route {
    R_NONE, R_COMPLETIONS, R_CHAT, R_MODELS, R_MODEL, R_TOKENIZE, R_DETOKENIZE,
    R_HEALTH, R_READY, R_METRICS, R_ROOT,
};

typedef struct conn {
    server *srv;
    struct MHD_Connection *mc;
    int route;
    int is_post;
    char path[128];
    char id[48];
    double t0;
    int phase;                /* 0 new, 1 receiving body, 2 waiting on the scheduler, 3 replied */
    sbuf body;
    int too_large;
    int status;
    /* generation */
    gen_state st;
    int have_st;
    sched_req *req;
    pthread_mutex_t mu;
    int suspended;
    atomic_int pending;
    /* stream output */
    sbuf out;
    size_t out_off;
    int closed;               /* [DONE] written */
} conn;

/* Random per process, so replicas behind one balancer (and a replica
 * restarted within the second) never hand out the same request id. */
static unsigned id_salt;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- replies ------------------------------------------------------------- */

static enum MHD_Result reply(conn *c, int status, const char *ctype, char *body, int take,
                             const char *retry_after)
{
    size_t len = body ? strlen(body) : 0;
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, body ? body : (char *)"", take ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_MUST_COPY);
    if (!r) {
        if (take)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    MHD_add_response_header(r, "X-Request-Id", c->id);
    if (retry_after)
        MHD_add_response_header(r, "Retry-After", retry_after);
    if (status == 405) {
        const char *allow = c->route == R_COMPLETIONS || c->route == R_CHAT ||
                                    c->route == R_TOKENIZE || c->route == R_DETOKENIZE
                                ? "POST" : "GET, HEAD";
        MHD_add_response_header(r, "Allow", allow);
    }
    if (status == 401)
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    enum MHD_Result ret = MHD_queue_response(c->mc, (unsigned)status, r);
    MHD_destroy_response(r);
    c->status = status;
    c->phase = 3;
    return ret;
}

static enum MHD_Result reply_json(conn *c, int status, char *json)
{
    if (!json) {
        apierr e;
        apierr_set(&e, 500, NULL, NULL, "out of memory");
        return reply(c, 500, "application/json", (char *)"{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}", 0, NULL);
    }
    return reply(c, status, "application/json", json, 1, NULL);
}

static enum MHD_Result reply_err(conn *c, const apierr *e)
{
    const char *retry = e->status == 503 ? "5" : NULL;
    char *j = apierr_json(e);
    if (!j)
        return MHD_NO;
    return reply(c, e->status, "application/json", j, 1, retry);
}

static enum MHD_Result reply_errf(conn *c, int status, const char *param, const char *code,
                                  const char *msg)
{
    apierr e;
    apierr_set(&e, status, param, code, "%s", msg);
    return reply_err(c, &e);
}

/* ---- auth ---------------------------------------------------------------- */

/* Constant time in the key's content: every configured key is compared over
 * the longest key's length whatever the input, and no early exit. */
static int key_ok(server *srv, const char *hdr)
{
    if (srv->n_keys == 0)
        return 1;
    if (!hdr || strncasecmp(hdr, "Bearer ", 7))
        return 0;
    const char *tok = hdr + 7;
    while (*tok == ' ')
        tok++;
    size_t tl = strlen(tok);
    while (tl > 0 && (tok[tl - 1] == ' ' || tok[tl - 1] == '\t'))
        tl--;
    int ok = 0;
    for (int k = 0; k < srv->n_keys; k++) {
        const char *key = srv->keys[k];
        size_t kl = strlen(key);
        unsigned diff = (unsigned)(kl ^ tl);
        for (size_t i = 0; i < srv->key_max; i++) {
            unsigned char a = i < kl ? (unsigned char)key[i] : 0;
            unsigned char b = i < tl ? (unsigned char)tok[i] : 0;
            diff |= (unsigned)(a ^ b);
        }
        ok |= diff == 0;
    }
    return ok;
}

/* ---- routing ------------------------------------------------------------- */

static int route_of(const char *url, char *model_id, size_t idcap)
{
    if (!strcmp(url, "/v1/completions")) return R_COMPLETIONS;
    if (!strcmp(url, "/v1/chat/completions")) return R_CHAT;
    if (!strcmp(url, "/v1/models")) return R_MODELS;
    if (!strncmp(url, "/v1/models/", 11) && url[11]) {
        snprintf(model_id, idcap, "%s", url + 11);
        return R_MODEL;
    }
    if (!strcmp(url, "/tokenize")) return R_TOKENIZE;
    if (!strcmp(url, "/detokenize")) return R_DETOKENIZE;
    if (!strcmp(url, "/health")) return R_HEALTH;
    if (!strcmp(url, "/ready")) return R_READY;
    if (!strcmp(url, "/metrics")) return R_METRICS;
    if (!strcmp(url, "/")) return R_ROOT;
    return R_NONE;
}

static int route_is_post(int r)
{
    return r == R_COMPLETIONS || r == R_CHAT || r == R_TOKENIZE || r == R_DETOKENIZE;
}

/* ---- generation ---------------------------------------------------------- */

static void on_notify(void *user)
{
    conn *c = user;
    atomic_store(&c->pending, 1);
    pthread_mutex_lock(&c->mu);
    if (c->suspended) {
        c->suspended = 0;
        MHD_resume_connection(c->mc);
    }
    pthread_mutex_unlock(&c->mu);
}

/* Suspends unless a notify arrived since pending was cleared; 1 if suspended. */
static int suspend_if_idle(conn *c)
{
    pthread_mutex_lock(&c->mu);
    if (atomic_load(&c->pending)) {
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
    c->suspended = 1;
    MHD_suspend_connection(c->mc);
    pthread_mutex_unlock(&c->mu);
    return 1;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    conn *c = cls;
    for (;;) {
        if (c->out_off < c->out.len) {
            size_t n = c->out.len - c->out_off;
            if (n > max)
                n = max;
            memcpy(buf, c->out.p + c->out_off, n);
            c->out_off += n;
            if (c->out_off == c->out.len)
                c->out_off = c->out.len = 0;
            return (ssize_t)n;
        }
        if (c->closed)
            return MHD_CONTENT_READER_END_OF_STREAM;
        atomic_store(&c->pending, 0);
        int got = 0;
        sched_event *ev;
        while (c->out.len < max && (ev = sched_req_next(c->req))) {
            got = 1;
            gen_apply(c->srv, &c->st, ev, &c->out);
            sched_event_free(ev);
            if (c->st.done) {
                gen_stream_close(c->srv, &c->st, &c->out);
                c->closed = 1;
                break;
            }
        }
        if (got)
            continue;
        if (suspend_if_idle(c))
            return 0;
    }
}

static enum MHD_Result start_stream(conn *c)
{
    gen_stream_open(c->srv, &c->st, &c->out);
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384,
                                                               stream_reader, c, NULL);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "text/event-stream; charset=utf-8");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    MHD_add_response_header(r, "X-Accel-Buffering", "no");
    MHD_add_response_header(r, "X-Request-Id", c->id);
    enum MHD_Result ret = MHD_queue_response(c->mc, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    c->status = 200;
    c->phase = 3;
    return ret;
}

/* Whether the client has gone: MHD does not watch a connection that waits
 * for its reply, so a non-streaming request looks for itself (a peek that
 * sees end of file or an error; bytes of a pipelined request are left). */
static int peer_closed(conn *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return 0;
    char b;
    ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* Non-streaming: drains events; replies once the request is done. */
static enum MHD_Result poll_whole(conn *c)
{
    for (;;) {
        atomic_store(&c->pending, 0);
        sched_event *ev;
        while ((ev = sched_req_next(c->req))) {
            gen_apply(c->srv, &c->st, ev, NULL);
            sched_event_free(ev);
        }
        if (c->st.done) {
            if (c->st.err.status)
                return reply_err(c, &c->st.err);
            return reply_json(c, 200, gen_response(c->srv, &c->st));
        }
        if (peer_closed(c)) {
            /* cancel now; MHD closes the connection and logs it */
            sched_req_release(c->req);
            c->req = NULL;
            c->status = 499;
            return MHD_NO;
        }
        if (suspend_if_idle(c))
            return MHD_YES;
    }
}

static enum MHD_Result start_generation(conn *c)
{
    server *srv = c->srv;
    apierr e;
    int chat = c->route == R_CHAT;
    if (!sched_ready(srv->sc)) {
        apierr_set(&e, 503, NULL, "server_draining", "The server is shutting down; retry on another instance.");
        return reply_err(c, &e);
    }
    if (api_parse_gen(srv, c->body.p ? c->body.p : "", c->body.len, chat, &c->st.g, &e)) {
        gen_req_free(&c->st.g);
        return reply_err(c, &e);
    }
    gen_req *g = &c->st.g;
    snprintf(c->st.id, sizeof c->st.id, "%s", c->id);
    if (gen_state_init(&c->st, srv, g->n_prompts * g->n)) {
        gen_req_free(g);
        return reply_errf(c, 500, NULL, NULL, "out of memory");
    }
    c->have_st = 1;
    sched_prompt *ps = calloc((size_t)g->n_prompts, sizeof *ps);
    if (!ps)
        return reply_errf(c, 500, NULL, NULL, "out of memory");
    for (int i = 0; i < g->n_prompts; i++) {
        ps[i].tokens = g->prompts[i];
        ps[i].n = g->prompt_len[i];
    }
    char err[256];
    int rc = sched_submit(srv->sc, ps, g->n_prompts, &g->sp, on_notify, c, &c->req, err, sizeof err);
    free(ps);
    if (rc == SCHED_EFULL || rc == SCHED_EDRAIN) {
        apierr_set(&e, 503, NULL, rc == SCHED_EFULL ? "queue_full" : "server_draining", "%s", err);
        return reply_err(c, &e);
    }
    if (rc == SCHED_EINVAL) {
        apierr_set(&e, 400, chat ? "messages" : "prompt", "context_length_exceeded", "%s", err);
        return reply_err(c, &e);
    }
    if (rc) {
        apierr_set(&e, 500, NULL, NULL, "%s", err);
        return reply_err(c, &e);
    }
    c->phase = 2;
    if (g->stream)
        return start_stream(c);
    return poll_whole(c);
}

/* ---- simple endpoints ---------------------------------------------------- */

static enum MHD_Result do_metrics(conn *c)
{
    server *srv = c->srv;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    sched_metrics(srv->sc, &buf, &len, &cap);
    sbuf b = {.p = buf, .len = len, .cap = cap};
    sb_printf(&b, "# HELP sparsed_http_responses_total HTTP responses by status class.\n"
                  "# TYPE sparsed_http_responses_total counter\n"
                  "sparsed_http_responses_total{code=\"2xx\"} %lu\n"
                  "sparsed_http_responses_total{code=\"4xx\"} %lu\n"
                  "sparsed_http_responses_total{code=\"5xx\"} %lu\n",
              atomic_load(&srv->http_2xx), atomic_load(&srv->http_4xx), atomic_load(&srv->http_5xx));
    sb_printf(&b, "# HELP sparsed_http_requests_in_flight HTTP requests being handled.\n"
                  "# TYPE sparsed_http_requests_in_flight gauge\n"
                  "sparsed_http_requests_in_flight %d\n", atomic_load(&srv->n_conns));
    if (!b.p)
        return reply_errf(c, 500, NULL, NULL, "out of memory");
    return reply(c, 200, "text/plain; version=0.0.4; charset=utf-8", b.p, 1, NULL);
}

static enum MHD_Result dispatch(conn *c, const char *model_id)
{
    server *srv = c->srv;
    apierr e;
    char *j;
    switch (c->route) {
    case R_COMPLETIONS:
    case R_CHAT:
        return start_generation(c);
    case R_MODELS:
        return reply_json(c, 200, api_models(srv));
    case R_MODEL:
        j = api_model(srv, model_id, &e);
        return j ? reply_json(c, 200, j) : reply_err(c, &e);
    case R_TOKENIZE:
        j = api_tokenize(srv, c->body.p ? c->body.p : "", c->body.len, &e);
        return j ? reply_json(c, 200, j) : reply_err(c, &e);
    case R_DETOKENIZE:
        j = api_detokenize(srv, c->body.p ? c->body.p : "", c->body.len, &e);
        return j ? reply_json(c, 200, j) : reply_err(c, &e);
    case R_HEALTH:
        if (sched_healthy(srv->sc))
            return reply(c, 200, "application/json", (char *)"{\"status\":\"ok\"}", 0, NULL);
        return reply_errf(c, 503, NULL, "unhealthy", "The engine is not answering.");
    case R_READY:
        if (sched_ready(srv->sc))
            return reply(c, 200, "application/json", (char *)"{\"status\":\"ready\"}", 0, NULL);
        return reply_errf(c, 503, NULL, "not_ready", "The server is not ready (draining or loading).");
    case R_METRICS:
        return do_metrics(c);
    case R_ROOT:
        return reply(c, 200, "application/json", (char *)"{\"name\":\"sparsed\",\"version\":\"" SPARSED_VERSION "\"}", 0, NULL);
    }
    return reply_errf(c, 404, NULL, "not_found", "Not found.");
}

/* ---- request head size --------------------------------------------------- */

/* libmicrohttpd answers a request head that does not fit the connection's
 * memory itself, with an HTML page.  So its memory is HEAD_MEM_FACTOR times
 * --header-limit, and the limit is enforced here, with our JSON error: a
 * head over the limit by up to about that factor (less 64 bytes per header
 * line, which libmicrohttpd keeps beside the text) reaches on_request.
 * The cost: libmicrohttpd clears and so touches all of it between requests,
 * so each kept-alive connection holds 4 x 32K = 128 KiB at the default. */
#define HEAD_MEM_FACTOR 4

static enum MHD_Result add_header_size(void *cls, enum MHD_ValueKind kind, const char *key,
                                       size_t key_size, const char *value, size_t value_size)
{
    (void)kind;
    (void)key;
    (void)value;
    *(size_t *)cls += key_size + value_size + 4;   /* "Key: value\r\n" */
    return MHD_YES;
}

/* 0 when the request line plus headers fit --header-limit; else 414 when the
 * request line alone is over it, 431 otherwise. */
static int head_over_limit(struct MHD_Connection *mc, const char *method, const char *url,
                           size_t limit)
{
    size_t hdrs = 0;
    MHD_get_connection_values_n(mc, MHD_HEADER_KIND, add_header_size, &hdrs);
    size_t total;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (ci) {
        total = ci->header_size;
    } else {
        /* not expected once headers are in; the parsed parts then */
        size_t query = 0;
        MHD_get_connection_values_n(mc, MHD_GET_ARGUMENT_KIND, add_header_size, &query);
        total = strlen(method) + strlen(url) + query + 12 + hdrs + 2;
    }
    if (total <= limit)
        return 0;
    /* the request line: what is not a header line nor the final CRLF */
    size_t line = total > hdrs + 2 ? total - hdrs - 2 : 0;
    return line > limit ? 414 : 431;
}

/* ---- MHD callbacks --------------------------------------------------------- */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls)
{
    (void)version;
    server *srv = cls;
    conn *c = *con_cls;
    char model_id[256] = "";

    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c)
            return MHD_NO;
        c->srv = srv;
        c->mc = mc;
        c->t0 = now_s();
        pthread_mutex_init(&c->mu, NULL);
        atomic_init(&c->pending, 0);
        *con_cls = c;
        atomic_fetch_add(&srv->n_conns, 1);
        /* headers are in: from now on the connection's idle limit applies */
        if (srv->cfg.header_timeout && srv->cfg.header_timeout != srv->cfg.connection_timeout)
            MHD_set_connection_option(mc, MHD_CONNECTION_OPTION_TIMEOUT,
                                      (unsigned)srv->cfg.connection_timeout);
        snprintf(c->path, sizeof c->path, "%s", url);
        c->route = route_of(url, model_id, sizeof model_id);
        unsigned long n = atomic_fetch_add(&srv->next_id, 1) + 1;
        unsigned r = (unsigned)(n * 2654435761u) ^ id_salt;
        snprintf(c->id, sizeof c->id, "%s%08lx%08x",
                 c->route == R_CHAT ? "chatcmpl-" : c->route == R_COMPLETIONS ? "cmpl-" : "req-", n, r);

        int big = head_over_limit(mc, method, url, (size_t)srv->cfg.header_limit);
        if (big) {
            char msg[160];
            snprintf(msg, sizeof msg, "Request %s too large: the limit for the request line and "
                     "headers together is %lld bytes.", big == 414 ? "line (URI)" : "headers",
                     srv->cfg.header_limit);
            return reply_errf(c, big, NULL, big == 414 ? "uri_too_long" : "request_headers_too_large",
                              msg);
        }
        int open_route = c->route == R_HEALTH || c->route == R_READY;
        if (!open_route &&
            !key_ok(srv, MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Authorization")))
            return reply_errf(c, 401, NULL, "invalid_api_key",
                              "Incorrect API key provided. Send 'Authorization: Bearer <key>'.");
        if (c->route == R_NONE)
            return reply_errf(c, 404, NULL, "not_found", "Not found: no route for this path.");
        c->is_post = !strcmp(method, "POST");
        int is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
        if (route_is_post(c->route) ? !c->is_post : !is_get)
            return reply_errf(c, 405, NULL, "method_not_allowed", "Method not allowed for this path.");
        const char *cl = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > (unsigned long long)srv->cfg.body_limit) {
            char msg[128];
            snprintf(msg, sizeof msg, "Request body too large: the limit is %lld bytes.",
                     srv->cfg.body_limit);
            return reply_errf(c, 413, NULL, "request_too_large", msg);
        }
        c->phase = 1;
        return MHD_YES;
    }

    if (c->phase == 1) {
        if (*upload_size) {
            if (!c->too_large && c->body.len + *upload_size > (size_t)srv->cfg.body_limit) {
                c->too_large = 1;
                sb_free(&c->body);
            }
            if (!c->too_large && sb_put(&c->body, upload_data, *upload_size))
                c->too_large = 1;
            *upload_size = 0;
            return MHD_YES;
        }
        if (c->too_large) {
            char msg[128];
            snprintf(msg, sizeof msg, "Request body too large: the limit is %lld bytes.",
                     srv->cfg.body_limit);
            return reply_errf(c, 413, NULL, "request_too_large", msg);
        }
        if (c->route == R_MODEL)
            route_of(url, model_id, sizeof model_id);
        return dispatch(c, model_id);
    }
    if (c->phase == 2) {
        /* resumed: a non-streaming generation has events */
        return poll_whole(c);
    }
    /* a reply is queued: discard anything more */
    *upload_size = 0;
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    server *srv = cls;
    conn *c = *con_cls;
    if (!c)
        return;
    *con_cls = NULL;
    if (c->req) {
        sched_req_release(c->req);
        c->req = NULL;
    }
    int status = c->status;
    const union MHD_ConnectionInfo *ci;
    if (!status && (ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_HTTP_STATUS)))
        status = (int)ci->http_status;   /* libmicrohttpd's own error (a malformed chunked body) */
    else if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && c->phase != 3)
        status = 499;   /* client went away before the reply */
    if (status >= 200 && status < 300)
        atomic_fetch_add(&srv->http_2xx, 1);
    else if (status >= 400 && status < 500)
        atomic_fetch_add(&srv->http_4xx, 1);
    else if (status >= 500)
        atomic_fetch_add(&srv->http_5xx, 1);
    if (srv->cfg.access_log && c->route != R_HEALTH && c->route != R_READY && c->route != R_METRICS) {
        double total = (now_s() - c->t0) * 1000.0;
        const char *how = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "ok"
                          : toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT ? "client_abort"
                          : toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? "timeout"
                          : toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN ? "shutdown" : "error";
        /* token counts and scheduler timings only for generation routes */
        char toks[96] = "prompt_tokens=- output_tokens=- queue_ms=- ttft_ms=-";
        if (c->have_st) {
            int pt = c->st.prompt_tokens, ot = c->st.completion_tokens;
            if (!c->st.done) {   /* cut short: count what was submitted and streamed */
                for (int i = 0; i < c->st.g.n_prompts; i++)
                    pt += c->st.g.prompt_len[i];
                for (int i = 0; i < c->st.n_choices; i++)
                    ot += c->st.ch[i].n_tokens;
            }
            char ttft[24] = "-";
            if (c->st.done && c->st.ttft_s >= 0)
                snprintf(ttft, sizeof ttft, "%.1f", c->st.ttft_s * 1000.0);
            snprintf(toks, sizeof toks, "prompt_tokens=%d output_tokens=%d queue_ms=%.1f ttft_ms=%s",
                     pt, ot, c->st.queue_s * 1000.0, ttft);
        }
        char line[512];
        snprintf(line, sizeof line, "sparsed: access id=%s route=%s status=%d %s total_ms=%.1f end=%s\n",
                 c->id, c->route == R_NONE ? "-" : c->path, status, toks, total, how);
        fputs(line, stderr);
    }
    atomic_fetch_sub(&srv->n_conns, 1);
    if (c->have_st)
        gen_state_free(&c->st);
    else
        gen_req_free(&c->st.g);
    sb_free(&c->body);
    sb_free(&c->out);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n'))
        msg[--n] = 0;
    fprintf(stderr, "sparsed: http: %s\n", msg);
}

int http_start(server *srv, char *err, size_t errlen)
{
    const srv_config *cfg = &srv->cfg;
    if (getrandom(&id_salt, sizeof id_salt, 0) != (ssize_t)sizeof id_salt)
        id_salt = (unsigned)time(NULL) ^ ((unsigned)getpid() << 16);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, cfg->host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)cfg->port);
    } else if (inet_pton(AF_INET6, cfg->host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)cfg->port);
        flags |= MHD_USE_IPv6;
    } else if (!strcmp(cfg->host, "localhost")) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)cfg->port);
        a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else {
        snprintf(err, errlen, "--host: '%s' is not an IPv4 or IPv6 address", cfg->host);
        return -1;
    }
    /* epoll where available, so thousands of idle streams cost nothing */
    flags |= MHD_USE_AUTO;
    srv->d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, on_request, srv,
                              MHD_OPTION_EXTERNAL_LOGGER, mhd_log, srv,
                              MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                              MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->http_threads,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
                              MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                              (unsigned)cfg->max_connections_per_client,
                              /* until a request's headers are in (slow-header clients) */
                              MHD_OPTION_CONNECTION_TIMEOUT,
                              (unsigned)(cfg->header_timeout ? cfg->header_timeout
                                                             : cfg->connection_timeout),
                              /* room for heads over --header-limit: on_request answers them */
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                              (size_t)cfg->header_limit * HEAD_MEM_FACTOR,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
                              MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024,
                              MHD_OPTION_END);
    if (!srv->d) {
        snprintf(err, errlen, "cannot listen on %s port %d: %s", cfg->host, cfg->port,
                 errno ? strerror(errno) : "libmicrohttpd failed to start");
        return -1;
    }
    return 0;
}

int http_port(server *srv)
{
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(srv->d, MHD_DAEMON_INFO_BIND_PORT);
    return i ? i->port : srv->cfg.port;
}

void http_stop(server *srv)
{
    if (!srv->d)
        return;
    MHD_stop_daemon(srv->d);
    srv->d = NULL;
}
