/* libFuzzer target for request parsing and validation: the functions the
 * HTTP handler calls on a request body (server/api.c: api_parse_gen for
 * /v1/completions and /v1/chat/completions, api_tokenize, api_detokenize)
 * over a real engine, models/stories260K.gguf.
 *
 * Byte 0 picks the route (completions, chat, tokenize, detokenize); the
 * rest is the body.  Every body is either refused with an OpenAI error
 * (4xx/5xx, a message, a JSON error object) or gives a request whose every
 * field is inside the limits the scheduler and engine rely on. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/internal.h"
#include "tests/fuzz/common.h"

static server srv;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_server_init(&srv, "fuzz_request");
    return 0;
}

static void check_error(const apierr *e)
{
    if (e->status < 400 || e->status > 599 || !e->message[0] || !e->type)
        __builtin_trap();
    char *j = apierr_json(e);
    cJSON *o = j ? cJSON_Parse(j) : NULL;
    if (!o || !cJSON_IsString(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "error"), "message")))
        __builtin_trap();
    cJSON_Delete(o);
    free(j);
}

static void check_request(const gen_req *g)
{
    const engine_info *in = srv.info;
    /* max_tokens 0 only with echo (the prompt is scored, nothing generated) */
    if (g->n_prompts < 1 || g->n < 1 || g->n_prompts * g->n > 256 || g->max_tokens < !g->echo)
        __builtin_trap();
    if (g->n_stop < 0 || g->n_stop > SCHED_MAX_STOP || g->logprobs > SCHED_MAX_LOGPROBS)
        __builtin_trap();
    for (int i = 0; i < g->n_stop; i++)
        if (!g->stop[i] || !g->stop[i][0])
            __builtin_trap();
    for (int i = 0; i < g->n_prompts; i++) {
        if (g->prompt_len[i] < 1 || g->prompt_len[i] + g->max_tokens > in->n_ctx)
            __builtin_trap();
        for (int k = 0; k < g->prompt_len[i]; k++)
            if (g->prompts[i][k] < 0 || g->prompts[i][k] >= in->n_vocab)
                __builtin_trap();
        if (g->echo && !g->echo_text[i])
            __builtin_trap();
    }
    const sampler_params *s = &g->sp.sampling;
    if (!(s->temperature >= 0 && s->temperature <= 2) || !(s->top_p > 0 && s->top_p <= 1) ||
        s->top_k < 0 || s->top_k > in->n_vocab || !isfinite(s->min_p) ||
        !isfinite(s->presence_penalty) || !isfinite(s->frequency_penalty) ||
        !(s->repetition_penalty > 0))
        __builtin_trap();
    for (int i = 0; i < s->n_bias; i++)
        if (s->bias_tokens[i] < 0 || s->bias_tokens[i] >= in->n_vocab || !isfinite(s->bias_values[i]))
            __builtin_trap();
    if (g->sp.n != g->n || g->sp.max_tokens != g->max_tokens || g->sp.n_stop != g->n_stop)
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    apierr e;
    memset(&e, 0, sizeof e);
    int route = data[0] & 3;
    if (route < 2) {
        gen_req g;
        if (api_parse_gen(&srv, body, len, route == 1, &g, &e))
            check_error(&e);
        else
            check_request(&g);
        gen_req_free(&g);
        return 0;
    }
    char *out = route == 2 ? api_tokenize(&srv, body, len, &e) : api_detokenize(&srv, body, len, &e);
    if (!out) {
        check_error(&e);
        return 0;
    }
    cJSON *o = cJSON_Parse(out);
    if (!cJSON_IsObject(o))
        __builtin_trap();
    cJSON_Delete(o);
    free(out);
    return 0;
}
