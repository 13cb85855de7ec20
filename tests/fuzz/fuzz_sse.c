/* libFuzzer target for the response side of a generation (server/api.c):
 * scheduler events turned into SSE chunks (gen_stream_open, gen_apply,
 * gen_stream_close) or into one JSON body (gen_response), over a real
 * engine (models/stories260K.gguf) for the logprob token texts.
 *
 * Bytes 0-2 shape the request (chat or completions, stream, include_usage,
 * echo, logprobs and how many, prompts x n choices); the rest is a list of
 * events as the scheduler would queue them, with arbitrary text bytes,
 * indexes, token ids and logprobs (NaN and infinities included).  A stream
 * must be a sequence of "data: <one line of JSON>" events and keep-alive
 * comments ending in "data: [DONE]"; a whole response must be JSON. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/internal.h"
#include "tests/fuzz/common.h"

static server srv;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_server_init(&srv, "fuzz_sse");
    return 0;
}

/* Every event is ": comment" or "data: X" with X one line of JSON or [DONE],
 * each followed by a blank line; [DONE] comes last and only once. */
static void check_stream(const sbuf *b, int closed)
{
    const char *p = b->p ? b->p : "", *end = p + b->len;
    int done = 0;
    while (p < end) {
        const char *sep = strstr(p, "\n\n");
        if (!sep || done)
            __builtin_trap();
        size_t n = (size_t)(sep - p);
        if (memchr(p, '\n', n) || memchr(p, '\r', n))
            __builtin_trap();
        if (p[0] == ':') {
            /* comment */
        } else if (n > 6 && !memcmp(p, "data: ", 6)) {
            if (n == 12 && !memcmp(p + 6, "[DONE]", 6)) {
                done = 1;
            } else {
                cJSON *o = cJSON_ParseWithLength(p + 6, n - 6);
                if (!cJSON_IsObject(o))
                    __builtin_trap();
                cJSON_Delete(o);
            }
        } else {
            __builtin_trap();
        }
        p = sep + 2;
    }
    if (closed != done)
        __builtin_trap();
}

static const float lp_values[] = {0.0f, -0.5f, -1e30f, NAN, INFINITY, -INFINITY};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    gen_state st;
    memset(&st, 0, sizeof st);
    gen_req *g = &st.g;
    uint8_t f = data[0];
    g->chat = f & 1;
    g->stream = f >> 1 & 1;
    g->include_usage = g->stream && (f >> 2 & 1);
    g->echo = !g->chat && (f >> 3 & 1);
    g->logprobs = f >> 4 & 1 ? data[2] % (SCHED_MAX_LOGPROBS + 1) : -1;
    g->n = 1 + (data[1] & 3);
    int n_prompts = 1 + (data[1] >> 2 & 3);
    int plen = 1 + (data[2] >> 5);   /* prompt tokens, for echo scoring */
    for (int i = 0; i < n_prompts; i++) {
        int32_t *t = malloc((size_t)plen * sizeof *t);
        char **pp = realloc(g->prompts, (size_t)(i + 1) * sizeof *pp);
        int *pl = realloc(g->prompt_len, (size_t)(i + 1) * sizeof *pl);
        char **pe = realloc(g->echo_text, (size_t)(i + 1) * sizeof *pe);
        if (pp) g->prompts = (int32_t **)pp;
        if (pl) g->prompt_len = pl;
        if (pe) g->echo_text = pe;
        if (!t || !pp || !pl || !pe) {
            free(t);
            gen_req_free(g);
            return 0;
        }
        for (int k = 0; k < plen; k++)
            t[k] = 1 + (int32_t)(k * 37 + i) % (srv.info->n_vocab - 1);
        g->prompts[i] = t;
        g->prompt_len[i] = plen;
        g->echo_text[i] = g->echo ? strdup(data[1] & 0x40 ? "Once\xc3\xa9 \"upon\"\n" : "") : NULL;
        g->n_prompts = i + 1;
    }
    snprintf(st.id, sizeof st.id, "cmpl-fuzz");
    if (gen_state_init(&st, &srv, n_prompts * g->n)) {
        gen_req_free(g);
        return 0;
    }
    sbuf sse = {0};
    sbuf *out = g->stream ? &sse : NULL;
    if (g->stream)
        gen_stream_open(&srv, &st, &sse);

    size_t i = 3;
    while (i + 6 <= size && !st.done) {
        const uint8_t *h = data + i;
        size_t tl = h[5] % 64;
        if (i + 6 + tl > size)
            tl = size - i - 6;
        sched_event *ev = calloc(1, sizeof *ev + tl + 1);
        if (!ev)
            break;
        ev->type = h[0] % 6;
        ev->pos = h[3] % 10;
        ev->index = (int)(int8_t)h[1] % (st.n_choices + 2);
        ev->token = (int32_t)(h[2] | h[3] << 8) % (srv.info->n_vocab + 4) - 2;
        ev->logprob = lp_values[h[4] % 6];
        if (g->logprobs >= 0 && (ev->type == SCHED_EV_TOKEN || ev->type == SCHED_EV_PROMPT_TOKEN)) {
            ev->n_top = g->logprobs;
            for (int k = 0; k < ev->n_top; k++) {
                ev->top_ids[k] = (ev->token + k * 7) % srv.info->n_vocab;
                if (ev->top_ids[k] < 0)
                    ev->top_ids[k] = 0;
                ev->top_lp[k] = lp_values[(h[4] + k) % 6];
            }
        }
        ev->finish = h[4] % 4;
        ev->status = h[4] & 1 ? 504 : 0;
        memcpy(ev->text, h + 6, tl);
        ev->text[tl] = 0;
        ev->text_len = (int)strlen(ev->text);
        if (ev->type == SCHED_EV_ERROR)
            snprintf(ev->message, sizeof ev->message, "%s", ev->text);
        gen_apply(&srv, &st, ev, out);
        free(ev);
        i += 6 + tl;
    }
    if (g->stream) {
        check_stream(&sse, 0);
        gen_stream_close(&srv, &st, &sse);
        check_stream(&sse, 1);
    } else {
        char *body = st.err.status ? apierr_json(&st.err) : gen_response(&srv, &st);
        cJSON *o = body ? cJSON_Parse(body) : NULL;
        if (!cJSON_IsObject(o))
            __builtin_trap();
        cJSON_Delete(o);
        free(body);
    }
    sb_free(&sse);
    gen_state_free(&st);
    return 0;
}
