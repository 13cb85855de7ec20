/* OpenAI API: request validation and response shapes.
 *
 * Validation follows OpenAI's rules and messages where they are documented
 * (types, ranges, "This model's maximum context length is ..."), and every
 * failure becomes {"error":{"message","type","param","code"}}.  Unknown
 * fields are ignored, as OpenAI's API does.  Responses are built with cJSON
 * in OpenAI's field order; streams are SSE chunks sharing one id. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "server/internal.h"

#define MAX_N 128
#define MAX_CHOICES 256
#define MAX_PROMPTS 128
#define MAX_STOP_LEN 512
#define MAX_BIAS 1024

/* ---- sbuf ---------------------------------------------------------------- */

int sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->len + n + 1)
            nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np)
            return -1;
        b->p = np;
        b->cap = nc;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

int sb_puts(sbuf *b, const char *s)
{
    return sb_put(b, s, strlen(s));
}

int sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0)
        return -1;
    if ((size_t)k < sizeof tmp)
        return sb_put(b, tmp, (size_t)k);
    char *big = malloc((size_t)k + 1);
    if (!big)
        return -1;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)k + 1, fmt, ap);
    va_end(ap);
    int rc = sb_put(b, big, (size_t)k);
    free(big);
    return rc;
}

void sb_free(sbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- UTF-8 ------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 if invalid. */
static int utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    int len;
    unsigned min;
    if ((c & 0xE0) == 0xC0) {
        len = 2;
        min = 0x80;
        c &= 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3;
        min = 0x800;
        c &= 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4;
        min = 0x10000;
        c &= 0x07;
    } else {
        return 0;
    }
    if ((size_t)len > n)
        return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    return len;
}

int utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        int k = utf8_seq(u + i, n - i);
        if (!k)
            return 0;
        i += (size_t)k;
    }
    return 1;
}

char *utf8_sanitize(const char *s, size_t n)
{
    char *out = malloc(n * 3 + 1);
    if (!out)
        return NULL;
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        int k = utf8_seq(u + i, n - i);
        if (k && !(k == 1 && u[i] == 0)) {
            memcpy(out + o, u + i, (size_t)k);
            o += (size_t)k;
            i += (size_t)k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = 0;
    return out;
}

int token_string(server *srv, int32_t tok, char *out, int cap, unsigned char *raw, int *raw_len)
{
    char buf[256];
    int k = engine_token_bytes(srv->eng, tok, 1, buf, sizeof buf);
    if (k < 0)
        k = 0;
    if (k > (int)sizeof buf)
        k = (int)sizeof buf;
    if (raw) {
        memcpy(raw, buf, (size_t)k);
        *raw_len = k;
    }
    char *s = utf8_sanitize(buf, (size_t)k);
    if (!s) {
        out[0] = 0;
        return 0;
    }
    snprintf(out, (size_t)cap, "%s", s);
    free(s);
    return (int)strlen(out);
}

/* ---- errors ------------------------------------------------------------ */

void apierr_set(apierr *e, int status, const char *param, const char *code, const char *fmt, ...)
{
    e->status = status;
    switch (status) {
    case 401: e->type = "authentication_error"; break;
    case 403: e->type = "permission_error"; break;
    case 404: e->type = "not_found_error"; break;
    case 413: e->type = "invalid_request_error"; break;
    case 429: e->type = "rate_limit_error"; break;
    case 503: e->type = "service_unavailable_error"; break;
    case 504: e->type = "timeout_error"; break;
    default: e->type = status >= 500 ? "server_error" : "invalid_request_error"; break;
    }
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

char *apierr_json(const apierr *e)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *o = cJSON_AddObjectToObject(root, "error");
    char *msg = utf8_sanitize(e->message, strlen(e->message));
    cJSON_AddStringToObject(o, "message", msg ? msg : "error");
    free(msg);
    cJSON_AddStringToObject(o, "type", e->type ? e->type : "invalid_request_error");
    if (e->param[0]) {
        char *p = utf8_sanitize(e->param, strlen(e->param));
        cJSON_AddStringToObject(o, "param", p ? p : "");
        free(p);
    } else {
        cJSON_AddNullToObject(o, "param");
    }
    if (e->code)
        cJSON_AddStringToObject(o, "code", e->code);
    else
        cJSON_AddNullToObject(o, "code");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

/* ---- field readers ----------------------------------------------------- */

/* A field, treating JSON null as absent (OpenAI accepts null for optionals). */
static cJSON *field(const cJSON *o, const char *k)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static const char *json_type(const cJSON *v)
{
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "null";
}

static int get_bool(const cJSON *o, const char *k, int *out, apierr *e)
{
    cJSON *v = field(o, k);
    if (!v)
        return 0;
    if (!cJSON_IsBool(v)) {
        apierr_set(e, 400, k, "invalid_type",
                   "Invalid type for '%s': expected a boolean, but got %s instead.", k, json_type(v));
        return -1;
    }
    *out = cJSON_IsTrue(v);
    return 0;
}

static int is_integer(const cJSON *v)
{
    double d = v->valuedouble;
    return cJSON_IsNumber(v) && isfinite(d) && d == floor(d);
}

static int get_int(const cJSON *o, const char *k, double lo, double hi, long long *out,
                   int *present, apierr *e)
{
    cJSON *v = field(o, k);
    if (present)
        *present = 0;
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || !is_integer(v)) {
        apierr_set(e, 400, k, "invalid_type",
                   "Invalid type for '%s': expected an integer, but got %s instead.", k,
                   cJSON_IsNumber(v) ? "a decimal" : json_type(v));
        return -1;
    }
    double d = v->valuedouble;
    if (d < lo) {
        apierr_set(e, 400, k, "integer_below_min_value",
                   "Invalid '%s': integer below minimum value. Expected a value >= %.0f, but got %.0f instead.",
                   k, lo, d);
        return -1;
    }
    if (d > hi) {
        apierr_set(e, 400, k, "integer_above_max_value",
                   "Invalid '%s': integer above maximum value. Expected a value <= %.0f, but got %.0f instead.",
                   k, hi, d);
        return -1;
    }
    *out = (long long)d;
    if (present)
        *present = 1;
    return 0;
}

static int get_num(const cJSON *o, const char *k, double lo, double hi, int lo_open,
                   float *out, apierr *e)
{
    cJSON *v = field(o, k);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        apierr_set(e, 400, k, "invalid_type",
                   "Invalid type for '%s': expected a decimal, but got %s instead.", k, json_type(v));
        return -1;
    }
    double d = v->valuedouble;
    if (d < lo || (lo_open && d == lo)) {
        apierr_set(e, 400, k, "decimal_below_min_value",
                   "Invalid '%s': decimal below minimum value. Expected a value %s %g, but got %g instead.",
                   k, lo_open ? ">" : ">=", lo, d);
        return -1;
    }
    if (d > hi) {
        apierr_set(e, 400, k, "decimal_above_max_value",
                   "Invalid '%s': decimal above maximum value. Expected a value <= %g, but got %g instead.",
                   k, hi, d);
        return -1;
    }
    *out = (float)d;
    return 0;
}

/* ---- tokenizing --------------------------------------------------------- */

/* Tokenizes text into a malloc'd array. */
static int tokenize(server *srv, const char *text, size_t len, int add_bos, int parse_special,
                    int32_t **out, int *n_out, const char *param, apierr *e)
{
    if (!utf8_valid(text, len)) {
        apierr_set(e, 400, param, "invalid_value", "Invalid '%s': the text is not valid UTF-8.", param);
        return -1;
    }
    int cap = (int)(len < (size_t)1 << 28 ? len : (size_t)1 << 28) + 16;
    for (int tries = 0; tries < 3; tries++) {
        int32_t *t = malloc((size_t)cap * sizeof(int32_t));
        if (!t) {
            apierr_set(e, 500, NULL, NULL, "out of memory");
            return -1;
        }
        int n = engine_tokenize(srv->eng, text, len, add_bos, parse_special, t, cap);
        if (n < 0) {
            free(t);
            apierr_set(e, 400, param, "invalid_value", "Invalid '%s': the text could not be tokenized.", param);
            return -1;
        }
        if (n <= cap) {
            *out = t;
            *n_out = n;
            return 0;
        }
        free(t);
        cap = n;
    }
    apierr_set(e, 500, NULL, NULL, "tokenizer did not converge");
    return -1;
}

/* Detokenizes ids (for echo of token prompts and /detokenize). */
static char *detokenize(server *srv, const int32_t *ids, int n, int strip_first)
{
    sbuf b = {0};
    detok d;
    detok_init(&d);
    if (!strip_first)
        d.first = 0;
    char piece[1024];
    for (int i = 0; i < n; i++) {
        int k = detok_push(srv->eng, &d, ids[i], piece, sizeof piece);
        if (k > 0)
            sb_put(&b, piece, (size_t)k);
    }
    int k = detok_flush(&d, piece, sizeof piece);
    if (k > 0)
        sb_put(&b, piece, (size_t)k);
    if (!b.p)
        sb_puts(&b, "");
    return b.p;
}

/* A token-id array: every element an integer id of this vocabulary. */
static int parse_ids(server *srv, const cJSON *arr, int32_t **out, int *n_out, const char *param,
                     apierr *e)
{
    int n = cJSON_GetArraySize(arr);
    int32_t *t = malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    if (!t) {
        apierr_set(e, 500, NULL, NULL, "out of memory");
        return -1;
    }
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, arr) {
        if (!is_integer(v)) {
            free(t);
            apierr_set(e, 400, param, "invalid_type",
                       "Invalid '%s': expected token ids (integers), but got %s.", param, json_type(v));
            return -1;
        }
        if (v->valuedouble < 0 || v->valuedouble >= srv->info->n_vocab) {
            free(t);
            apierr_set(e, 400, param, "invalid_value",
                       "Invalid '%s': token id %.0f is out of range for this model's vocabulary (0..%d).",
                       param, v->valuedouble, srv->info->n_vocab - 1);
            return -1;
        }
        t[i++] = (int32_t)v->valuedouble;
    }
    *out = t;
    *n_out = n;
    return 0;
}

static int add_prompt(gen_req *g, int32_t *toks, int n, char *echo)
{
    int k = g->n_prompts;
    int32_t **np = realloc(g->prompts, (size_t)(k + 1) * sizeof *np);
    if (np)
        g->prompts = np;
    int *nl = realloc(g->prompt_len, (size_t)(k + 1) * sizeof *nl);
    if (nl)
        g->prompt_len = nl;
    char **ne = realloc(g->echo_text, (size_t)(k + 1) * sizeof *ne);
    if (ne)
        g->echo_text = ne;
    if (!np || !nl || !ne) {
        free(toks);
        free(echo);
        return -1;
    }
    g->prompts[k] = toks;
    g->prompt_len[k] = n;
    g->echo_text[k] = echo;
    g->n_prompts = k + 1;
    return 0;
}

static int parse_prompt(server *srv, const cJSON *root, gen_req *g, apierr *e)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (!p || cJSON_IsNull(p)) {
        apierr_set(e, 400, "prompt", "missing_required_parameter",
                   "Missing required parameter: 'prompt'.");
        return -1;
    }
    int add_bos = srv->info->add_bos;
    if (cJSON_IsString(p)) {
        int32_t *t;
        int n;
        if (tokenize(srv, p->valuestring, strlen(p->valuestring), add_bos, 1, &t, &n, "prompt", e))
            return -1;
        char *echo = g->echo ? strdup(p->valuestring) : NULL;
        return add_prompt(g, t, n, echo) ? (apierr_set(e, 500, NULL, NULL, "out of memory"), -1) : 0;
    }
    if (!cJSON_IsArray(p)) {
        apierr_set(e, 400, "prompt", "invalid_type",
                   "Invalid type for 'prompt': expected a string or an array, but got %s instead.",
                   json_type(p));
        return -1;
    }
    int n = cJSON_GetArraySize(p);
    if (n == 0) {
        apierr_set(e, 400, "prompt", "invalid_value", "Invalid 'prompt': must not be an empty array.");
        return -1;
    }
    const cJSON *first = cJSON_GetArrayItem(p, 0);
    if (cJSON_IsNumber(first)) {
        int32_t *t;
        int nt;
        if (parse_ids(srv, p, &t, &nt, "prompt", e))
            return -1;
        char *echo = g->echo ? detokenize(srv, t, nt, 1) : NULL;
        return add_prompt(g, t, nt, echo) ? (apierr_set(e, 500, NULL, NULL, "out of memory"), -1) : 0;
    }
    if (n > MAX_PROMPTS) {
        apierr_set(e, 400, "prompt", "invalid_value",
                   "Invalid 'prompt': at most %d prompts per request, got %d.", MAX_PROMPTS, n);
        return -1;
    }
    int kind = cJSON_IsString(first) ? 1 : cJSON_IsArray(first) ? 2 : 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, p) {
        int32_t *t;
        int nt;
        if (kind == 1 && cJSON_IsString(v)) {
            if (tokenize(srv, v->valuestring, strlen(v->valuestring), add_bos, 1, &t, &nt, "prompt", e))
                return -1;
            char *echo = g->echo ? strdup(v->valuestring) : NULL;
            if (add_prompt(g, t, nt, echo))
                goto oom;
        } else if (kind == 2 && cJSON_IsArray(v)) {
            if (cJSON_GetArraySize(v) == 0) {
                apierr_set(e, 400, "prompt", "invalid_value",
                           "Invalid 'prompt': a token list must not be empty.");
                return -1;
            }
            if (parse_ids(srv, v, &t, &nt, "prompt", e))
                return -1;
            char *echo = g->echo ? detokenize(srv, t, nt, 1) : NULL;
            if (add_prompt(g, t, nt, echo))
                goto oom;
        } else {
            apierr_set(e, 400, "prompt", "invalid_type",
                       "Invalid type for 'prompt': expected a string, an array of strings, an array of "
                       "token ids or an array of token id arrays.");
            return -1;
        }
    }
    return 0;
oom:
    apierr_set(e, 500, NULL, NULL, "out of memory");
    return -1;
}

/* Message content: a string, or text parts joined by newlines. */
static int message_text(const cJSON *m, int i, sbuf *out, apierr *e)
{
    char param[48];
    snprintf(param, sizeof param, "messages[%d].content", i);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (!c || cJSON_IsNull(c))
        return sb_puts(out, "");
    if (cJSON_IsString(c))
        return sb_puts(out, c->valuestring);
    if (!cJSON_IsArray(c)) {
        apierr_set(e, 400, param, "invalid_type",
                   "Invalid type for '%s': expected a string or an array of content parts, but got %s instead.",
                   param, json_type(c));
        return -1;
    }
    int k = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *type = cJSON_IsObject(part) ? cJSON_GetObjectItemCaseSensitive(part, "type") : NULL;
        const cJSON *text = cJSON_IsObject(part) ? cJSON_GetObjectItemCaseSensitive(part, "text") : NULL;
        if (!cJSON_IsString(type)) {
            apierr_set(e, 400, param, "invalid_type",
                       "Invalid '%s[%d]': a content part must be an object with a 'type'.", param, k);
            return -1;
        }
        if (strcmp(type->valuestring, "text")) {
            apierr_set(e, 400, param, "invalid_value",
                       "Invalid '%s[%d]': content part type '%s' is not supported by this model; only 'text' is.",
                       param, k, type->valuestring);
            return -1;
        }
        if (!cJSON_IsString(text)) {
            apierr_set(e, 400, param, "invalid_type",
                       "Invalid '%s[%d].text': expected a string.", param, k);
            return -1;
        }
        if (k++)
            sb_puts(out, "\n");
        sb_puts(out, text->valuestring);
    }
    if (!out->p)
        sb_puts(out, "");
    return 0;
}

static int parse_messages(server *srv, const cJSON *root, gen_req *g, apierr *e)
{
    const cJSON *ms = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!ms || cJSON_IsNull(ms)) {
        apierr_set(e, 400, "messages", "missing_required_parameter",
                   "Missing required parameter: 'messages'.");
        return -1;
    }
    if (!cJSON_IsArray(ms)) {
        apierr_set(e, 400, "messages", "invalid_type",
                   "Invalid type for 'messages': expected an array, but got %s instead.", json_type(ms));
        return -1;
    }
    int n = cJSON_GetArraySize(ms);
    if (n == 0) {
        apierr_set(e, 400, "messages", "empty_array",
                   "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.");
        return -1;
    }
    chat_msg *cm = calloc((size_t)n, sizeof *cm);
    sbuf *texts = calloc((size_t)n, sizeof *texts);
    int rc = -1, i = 0;
    char *rendered = NULL;
    if (!cm || !texts) {
        apierr_set(e, 500, NULL, NULL, "out of memory");
        goto out;
    }
    const cJSON *m;
    cJSON_ArrayForEach(m, ms) {
        char param[48];
        snprintf(param, sizeof param, "messages[%d]", i);
        if (!cJSON_IsObject(m)) {
            apierr_set(e, 400, param, "invalid_type",
                       "Invalid type for '%s': expected an object, but got %s instead.", param, json_type(m));
            goto out;
        }
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        snprintf(param, sizeof param, "messages[%d].role", i);
        if (!cJSON_IsString(role)) {
            apierr_set(e, 400, param, role ? "invalid_type" : "missing_required_parameter",
                       role ? "Invalid type for '%s': expected a string." : "Missing required parameter: '%s'.",
                       param);
            goto out;
        }
        const char *r = role->valuestring;
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant") && strcmp(r, "developer")) {
            apierr_set(e, 400, param, "invalid_value",
                       "Invalid value for '%s': '%s'. Supported values are: 'system', 'developer', 'user' and 'assistant'.",
                       param, r);
            goto out;
        }
        if (message_text(m, i, &texts[i], e))
            goto out;
        cm[i].role = r;
        cm[i].content = texts[i].p;
        i++;
    }
    char err[256] = "";
    rendered = engine_chat_render(srv->eng, cm, n, 1, err, sizeof err);
    if (!rendered) {
        apierr_set(e, 400, "messages", "invalid_value", "Invalid 'messages': %s", err);
        goto out;
    }
    int32_t *t;
    int nt;
    if (tokenize(srv, rendered, strlen(rendered), 0, 1, &t, &nt, "messages", e))
        goto out;
    /* Templates that spell BOS out already start with it. */
    if (srv->info->add_bos && srv->info->bos >= 0 && (nt == 0 || t[0] != srv->info->bos)) {
        int32_t *t2 = realloc(t, (size_t)(nt + 1) * sizeof(int32_t));
        if (!t2) {
            free(t);
            apierr_set(e, 500, NULL, NULL, "out of memory");
            goto out;
        }
        t = t2;
        memmove(t + 1, t, (size_t)nt * sizeof(int32_t));
        t[0] = srv->info->bos;
        nt++;
    }
    if (add_prompt(g, t, nt, NULL)) {
        apierr_set(e, 500, NULL, NULL, "out of memory");
        goto out;
    }
    rc = 0;
out:
    for (int j = 0; texts && j < n; j++)
        sb_free(&texts[j]);
    free(texts);
    free(cm);
    free(rendered);
    return rc;
}

/* What this server cannot honour is refused, not dropped: a client that
 * asks for tool calls, a JSON-constrained reply, an insertion (suffix) or
 * the best n of best_of would otherwise get something it did not ask for.
 * Empty tools, tool_choice "none" or "auto", response_format "text", an
 * empty suffix and best_of equal to n ask for nothing more and pass. */
static int parse_unsupported(const cJSON *root, int n, apierr *e)
{
    const cJSON *sfx = field(root, "suffix");
    if (sfx && !(cJSON_IsString(sfx) && !sfx->valuestring[0])) {
        apierr_set(e, 400, "suffix", "unsupported_parameter",
                   "Unsupported parameter: 'suffix': this server does not insert text (only completes it).");
        return -1;
    }
    long long best_of;
    int has_best;
    if (get_int(root, "best_of", 1, MAX_N, &best_of, &has_best, e))
        return -1;
    if (has_best && best_of != n) {
        apierr_set(e, 400, "best_of", "unsupported_value",
                   "Unsupported value: 'best_of' %lld differs from 'n' %d: this server returns every sequence it "
                   "generates.", best_of, n);
        return -1;
    }
    static const char *const calls[] = {"tools", "functions"};
    for (int i = 0; i < 2; i++) {
        const cJSON *t = field(root, calls[i]);
        if (t && !(cJSON_IsArray(t) && cJSON_GetArraySize(t) == 0)) {
            apierr_set(e, 400, calls[i], "unsupported_parameter",
                       "Unsupported parameter: '%s': this server does not call tools (function calling).", calls[i]);
            return -1;
        }
    }
    const cJSON *tc = field(root, "tool_choice");
    if (tc && !(cJSON_IsString(tc) && (!strcmp(tc->valuestring, "none") || !strcmp(tc->valuestring, "auto")))) {
        apierr_set(e, 400, "tool_choice", "unsupported_value",
                   "Unsupported value: 'tool_choice' can only be 'none' or 'auto': this server calls no tools.");
        return -1;
    }
    const cJSON *rf = field(root, "response_format");
    if (rf) {
        const cJSON *type = cJSON_IsObject(rf) ? field(rf, "type") : NULL;
        if (!cJSON_IsString(type)) {
            apierr_set(e, 400, "response_format", "invalid_type",
                       "Invalid 'response_format': expected an object with a string 'type'.");
            return -1;
        }
        if (strcmp(type->valuestring, "text")) {
            apierr_set(e, 400, "response_format.type", "unsupported_value",
                       "Unsupported value: 'response_format.type' '%s' is not supported by this server; only "
                       "'text' is (no constrained decoding).", type->valuestring);
            return -1;
        }
    }
    return 0;
}

static int parse_stop(const cJSON *root, gen_req *g, apierr *e)
{
    const cJSON *s = field(root, "stop");
    if (!s)
        return 0;
    if (cJSON_IsString(s)) {
        s = NULL;
    } else if (!cJSON_IsArray(s)) {
        apierr_set(e, 400, "stop", "invalid_type",
                   "Invalid type for 'stop': expected a string or an array of strings, but got %s instead.",
                   json_type(s));
        return -1;
    } else if (cJSON_GetArraySize(s) > SCHED_MAX_STOP) {
        apierr_set(e, 400, "stop", "array_above_max_length",
                   "Invalid 'stop': array too long. Expected an array with maximum length %d, but got an array with length %d instead.",
                   SCHED_MAX_STOP, cJSON_GetArraySize(s));
        return -1;
    }
    const cJSON *one = cJSON_GetObjectItemCaseSensitive(root, "stop");
    const cJSON *v;
    int k = 0;
    for (v = s ? s->child : one; v; v = s ? v->next : NULL) {
        if (!cJSON_IsString(v)) {
            apierr_set(e, 400, "stop", "invalid_type",
                       "Invalid type for 'stop[%d]': expected a string, but got %s instead.", k, json_type(v));
            return -1;
        }
        size_t len = strlen(v->valuestring);
        if (len == 0 || len > MAX_STOP_LEN || !utf8_valid(v->valuestring, len)) {
            apierr_set(e, 400, "stop", "invalid_value",
                       "Invalid 'stop[%d]': stop strings must be non-empty UTF-8 of at most %d bytes.",
                       k, MAX_STOP_LEN);
            return -1;
        }
        g->stop[g->n_stop] = strdup(v->valuestring);
        if (!g->stop[g->n_stop]) {
            apierr_set(e, 500, NULL, NULL, "out of memory");
            return -1;
        }
        g->n_stop++;
        k++;
        if (!s)
            break;
    }
    return 0;
}

static int parse_bias(server *srv, const cJSON *root, gen_req *g, apierr *e)
{
    const cJSON *b = field(root, "logit_bias");
    if (!b)
        return 0;
    if (!cJSON_IsObject(b)) {
        apierr_set(e, 400, "logit_bias", "invalid_type",
                   "Invalid type for 'logit_bias': expected an object, but got %s instead.", json_type(b));
        return -1;
    }
    int n = cJSON_GetArraySize(b);
    if (n > MAX_BIAS) {
        apierr_set(e, 400, "logit_bias", "invalid_value",
                   "Invalid 'logit_bias': at most %d entries.", MAX_BIAS);
        return -1;
    }
    g->bias_tok = malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    g->bias_val = malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!g->bias_tok || !g->bias_val) {
        apierr_set(e, 500, NULL, NULL, "out of memory");
        return -1;
    }
    int k = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, b) {
        const char *key = v->string;
        char *end;
        long id = strtol(key, &end, 10);
        if (!*key || *end || id < 0 || id >= srv->info->n_vocab) {
            apierr_set(e, 400, "logit_bias", "invalid_value",
                       "Invalid 'logit_bias': key '%.40s' is not a token id of this model (0..%d).",
                       key, srv->info->n_vocab - 1);
            return -1;
        }
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < -100 ||
            v->valuedouble > 100) {
            apierr_set(e, 400, "logit_bias", "invalid_value",
                       "Invalid 'logit_bias': the bias of token %ld must be a number from -100 to 100.", id);
            return -1;
        }
        g->bias_tok[k] = (int32_t)id;
        g->bias_val[k] = (float)v->valuedouble;
        k++;
    }
    g->sp.sampling.n_bias = k;
    g->sp.sampling.bias_tokens = g->bias_tok;
    g->sp.sampling.bias_values = g->bias_val;
    return 0;
}

/* The body as a JSON object: one value, nothing after it but whitespace. */
static cJSON *json_body(const char *body, size_t len, apierr *e)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (root && end) {
        while (end < body + len && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n'))
            end++;
        if (end != body + len) {
            cJSON_Delete(root);
            root = NULL;
        }
    }
    if (!root) {
        apierr_set(e, 400, NULL, NULL,
                   "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                   "using your HTTP library correctly. The OpenAI API expects a JSON payload.)");
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        apierr_set(e, 400, NULL, NULL, "The request body must be a JSON object, but got %s.",
                   json_type(root));
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

int api_parse_gen(server *srv, const char *body, size_t len, int chat, gen_req *g, apierr *e)
{
    memset(g, 0, sizeof *g);
    g->chat = chat;
    g->logprobs = -1;
    g->n = 1;
    cJSON *root = json_body(body, len, e);
    if (!root)
        return -1;
    int rc = -1;

    const cJSON *model = field(root, "model");
    if (model && !cJSON_IsString(model)) {
        apierr_set(e, 400, "model", "invalid_type",
                   "Invalid type for 'model': expected a string, but got %s instead.", json_type(model));
        goto out;
    }
    if (model && strcmp(model->valuestring, srv->model_name)) {
        apierr_set(e, 404, "model", "model_not_found",
                   "The model '%.200s' does not exist. This server serves '%s'.",
                   model->valuestring, srv->model_name);
        goto out;
    }
    const cJSON *user = field(root, "user");
    if (user && !cJSON_IsString(user)) {
        apierr_set(e, 400, "user", "invalid_type",
                   "Invalid type for 'user': expected a string, but got %s instead.", json_type(user));
        goto out;
    }

    if (get_bool(root, "stream", &g->stream, e) || get_bool(root, "ignore_eos", &g->sp.ignore_eos, e))
        goto out;
    if (!chat && get_bool(root, "echo", &g->echo, e))
        goto out;
    if (get_bool(root, "return_tokens_as_token_ids", &g->token_ids, e))
        goto out;
    const cJSON *so = field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so)) {
            apierr_set(e, 400, "stream_options", "invalid_type",
                       "Invalid type for 'stream_options': expected an object, but got %s instead.",
                       json_type(so));
            goto out;
        }
        if (!g->stream) {
            apierr_set(e, 400, "stream_options", "invalid_value",
                       "Invalid 'stream_options': only allowed when 'stream' is true.");
            goto out;
        }
        if (get_bool(so, "include_usage", &g->include_usage, e))
            goto out;
    }

    long long v;
    int has;
    if (get_int(root, "n", 1, MAX_N, &v, &has, e))
        goto out;
    if (has)
        g->n = (int)v;

    sampler_params_default(&g->sp.sampling);
    sampler_params *sp = &g->sp.sampling;
    sp->temperature = 1.0f;
    sp->top_p = 1.0f;
    if (get_num(root, "temperature", 0, 2, 0, &sp->temperature, e) ||
        get_num(root, "top_p", 0, 1, 0, &sp->top_p, e) ||
        get_num(root, "min_p", 0, 1, 0, &sp->min_p, e) ||
        get_num(root, "presence_penalty", -2, 2, 0, &sp->presence_penalty, e) ||
        get_num(root, "frequency_penalty", -2, 2, 0, &sp->frequency_penalty, e) ||
        get_num(root, "repetition_penalty", 0, 10, 1, &sp->repetition_penalty, e))
        goto out;
    if (sp->top_p == 0) {
        sp->top_p = 1.0f;   /* nucleus of nothing: the single best token */
        sp->temperature = 0;
    }
    if (get_int(root, "top_k", -1, 2147483647.0, &v, &has, e))
        goto out;
    if (has)
        sp->top_k = v <= 0 ? 0 : (int)(v < srv->info->n_vocab ? v : srv->info->n_vocab);
    if (get_int(root, "seed", -9223372036854775808.0, 9223372036854775807.0, &v, &has, e))
        goto out;
    if (has) {
        sp->seed = (uint64_t)v;
    } else {
        uint64_t r = 0;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
            r = (uint64_t)time(NULL) ^ ((uint64_t)atomic_load(&srv->next_id) << 32);
        sp->seed = r;
    }

    if (chat) {
        int lp = 0;
        if (get_bool(root, "logprobs", &lp, e))
            goto out;
        if (get_int(root, "top_logprobs", 0, SCHED_MAX_LOGPROBS, &v, &has, e))
            goto out;
        if (has && !lp) {
            apierr_set(e, 400, "top_logprobs", "invalid_value",
                       "Invalid 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.");
            goto out;
        }
        if (lp)
            g->logprobs = has ? (int)v : 0;
    } else {
        const cJSON *lpv = field(root, "logprobs");
        if (lpv && cJSON_IsBool(lpv)) {
            apierr_set(e, 400, "logprobs", "invalid_type",
                       "Invalid type for 'logprobs': expected an integer, but got a boolean instead.");
            goto out;
        }
        if (get_int(root, "logprobs", 0, SCHED_MAX_LOGPROBS, &v, &has, e))
            goto out;
        if (has)
            g->logprobs = (int)v;
    }

    long long max_tokens = -1;
    int has_mt = 0;
    /* echo with max_tokens 0 scores the prompt alone (logprobs of its tokens) */
    if (get_int(root, "max_tokens", g->echo ? 0 : 1, 2147483647.0, &max_tokens, &has_mt, e))
        goto out;
    if (chat) {
        long long mct;
        int has_mct;
        if (get_int(root, "max_completion_tokens", 1, 2147483647.0, &mct, &has_mct, e))
            goto out;
        if (has_mct) {
            max_tokens = mct;
            has_mt = 1;
        }
    }

    if (parse_unsupported(root, g->n, e) || parse_stop(root, g, e) || parse_bias(srv, root, g, e))
        goto out;
    if (chat ? parse_messages(srv, root, g, e) : parse_prompt(srv, root, g, e))
        goto out;
    if (g->n_prompts * g->n > MAX_CHOICES) {
        apierr_set(e, 400, "n", "invalid_value",
                   "Invalid 'n': %d prompts times n = %d gives more than %d choices.",
                   g->n_prompts, g->n, MAX_CHOICES);
        goto out;
    }

    int n_ctx = srv->info->n_ctx;
    int longest = 0;
    for (int i = 0; i < g->n_prompts; i++) {
        if (g->prompt_len[i] == 0) {
            apierr_set(e, 400, chat ? "messages" : "prompt", "invalid_value",
                       "Invalid '%s': the prompt is empty (no tokens).", chat ? "messages" : "prompt");
            goto out;
        }
        if (g->prompt_len[i] > longest)
            longest = g->prompt_len[i];
    }
    const char *what = chat ? "messages" : "prompt";
    if (!has_mt) {
        long long room = n_ctx - longest;
        max_tokens = chat ? room : (room < 16 ? room : 16);
    }
    /* the operator's cap (--max-tokens) bounds what one request may take */
    int cap = srv->cfg.max_tokens;
    if (cap > 0 && max_tokens > cap) {
        if (has_mt) {
            apierr_set(e, 400, chat && !field(root, "max_tokens") ? "max_completion_tokens" : "max_tokens",
                       "integer_above_max_value",
                       "Invalid 'max_tokens': integer above maximum value. This server generates at "
                       "most %d tokens per choice, but %lld were requested.", cap, max_tokens);
            goto out;
        }
        max_tokens = cap;
    }
    if (longest >= n_ctx || longest + max_tokens > n_ctx) {
        long long mt = max_tokens > 0 ? max_tokens : 1;
        apierr_set(e, 400, what, "context_length_exceeded",
                   "This model's maximum context length is %d tokens. However, you requested %lld tokens "
                   "(%d in the %s, %lld in the completion). Please reduce the length of the %s or completion.",
                   n_ctx, longest + mt, longest, what, mt, what);
        goto out;
    }
    g->max_tokens = (int)max_tokens;
    g->sp.n = g->n;
    g->sp.max_tokens = g->max_tokens;
    g->sp.logprobs = g->logprobs;
    g->sp.prompt_logprobs = -1;
    if (g->echo && g->logprobs >= 0)
        g->sp.prompt_logprobs = g->logprobs;
    else if (g->max_tokens == 0)
        g->sp.prompt_logprobs = 0;   /* nothing to generate: the scheduler still runs the prompt */
    g->sp.stop = (const char *const *)g->stop;
    g->sp.n_stop = g->n_stop;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

void gen_req_free(gen_req *g)
{
    for (int i = 0; i < g->n_prompts; i++) {
        free(g->prompts[i]);
        if (g->echo_text)
            free(g->echo_text[i]);
    }
    free(g->prompts);
    free(g->prompt_len);
    free(g->echo_text);
    for (int i = 0; i < g->n_stop; i++)
        free(g->stop[i]);
    free(g->bias_tok);
    free(g->bias_val);
    memset(g, 0, sizeof *g);
}

/* ---- responses --------------------------------------------------------- */

static const char *finish_name(int f)
{
    return f == SCHED_FINISH_LENGTH ? "length" : "stop";
}

int gen_state_init(gen_state *st, server *srv, int n_choices)
{
    (void)srv;
    st->n_choices = n_choices;
    st->ch = calloc((size_t)n_choices, sizeof *st->ch);
    st->created = time(NULL);
    if (st->g.echo && st->g.logprobs >= 0) {
        st->plp = calloc((size_t)st->g.n_prompts, sizeof *st->plp);
        st->plp_off = calloc((size_t)st->g.n_prompts, sizeof *st->plp_off);
        st->plp_sent = calloc((size_t)n_choices, sizeof *st->plp_sent);
        if (!st->plp || !st->plp_off || !st->plp_sent)
            return -1;
    }
    return st->ch ? 0 : -1;
}

/* Byte offset of each prompt token's text in the detokenized prompt. */
static int *prompt_offsets(server *srv, const int32_t *t, int n)
{
    int *off = malloc((size_t)(n ? n : 1) * sizeof(int));
    if (!off)
        return NULL;
    detok d;
    detok_init(&d);
    char piece[1024];
    int at = 0;
    for (int i = 0; i < n; i++) {
        off[i] = at;
        int k = detok_push(srv->eng, &d, t[i], piece, sizeof piece);
        at += k > 0 ? k : 0;
    }
    return off;
}

/* A logprobs entry's token: its text, or "token_id:N" when the request
 * asks for ids (tokens whose text is not valid UTF-8 alone stay exact). */
static void lp_token(server *srv, const gen_req *g, int32_t tok, char *s, int cap, unsigned char *raw,
                     int *raw_len)
{
    token_string(srv, tok, s, cap, raw, raw_len);
    if (g->token_ids)
        snprintf(s, (size_t)cap, "token_id:%d", tok);
}

/* The logprobs object of a prompt so far; created with its first token
 * (which has no logprob: nothing predicts it). */
static cJSON *prompt_lp(server *srv, gen_state *st, int p)
{
    if (st->plp[p])
        return st->plp[p];
    st->plp_off[p] = prompt_offsets(srv, st->g.prompts[p], st->g.prompt_len[p]);
    cJSON *lp = cJSON_CreateObject();
    char s[800];
    lp_token(srv, &st->g, st->g.prompts[p][0], s, sizeof s, NULL, NULL);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(lp, "tokens"), cJSON_CreateString(s));
    cJSON_AddItemToArray(cJSON_AddArrayToObject(lp, "token_logprobs"), cJSON_CreateNull());
    cJSON_AddItemToArray(cJSON_AddArrayToObject(lp, "top_logprobs"), cJSON_CreateNull());
    cJSON_AddItemToArray(cJSON_AddArrayToObject(lp, "text_offset"), cJSON_CreateNumber(0));
    st->plp[p] = lp;
    return lp;
}

void gen_state_free(gen_state *st)
{
    for (int i = 0; st->ch && i < st->n_choices; i++) {
        sb_free(&st->ch[i].text);
        cJSON_Delete(st->ch[i].lp);
    }
    for (int p = 0; p < st->g.n_prompts; p++) {
        if (st->plp)
            cJSON_Delete(st->plp[p]);
        if (st->plp_off)
            free(st->plp_off[p]);
    }
    free(st->plp);
    free(st->plp_off);
    free(st->plp_sent);
    free(st->ch);
    gen_req_free(&st->g);
    memset(st, 0, sizeof *st);
}

static cJSON *bytes_array(const unsigned char *raw, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber(raw[i]));
    return a;
}

/* Chat: one ChatCompletionTokenLogprob. */
static cJSON *chat_token_lp(server *srv, const gen_req *g, const sched_event *ev)
{
    char s[800];
    unsigned char raw[256];
    int rl;
    cJSON *o = cJSON_CreateObject();
    lp_token(srv, g, ev->token, s, sizeof s, raw, &rl);
    cJSON_AddStringToObject(o, "token", s);
    cJSON_AddNumberToObject(o, "logprob", isfinite(ev->logprob) ? ev->logprob : -9999.0);
    cJSON_AddItemToObject(o, "bytes", bytes_array(raw, rl));
    cJSON *top = cJSON_AddArrayToObject(o, "top_logprobs");
    for (int i = 0; i < ev->n_top; i++) {
        cJSON *t = cJSON_CreateObject();
        lp_token(srv, g, ev->top_ids[i], s, sizeof s, raw, &rl);
        cJSON_AddStringToObject(t, "token", s);
        cJSON_AddNumberToObject(t, "logprob", isfinite(ev->top_lp[i]) ? ev->top_lp[i] : -9999.0);
        cJSON_AddItemToObject(t, "bytes", bytes_array(raw, rl));
        cJSON_AddItemToArray(top, t);
    }
    return o;
}

/* Completions: appends one token to a {tokens, token_logprobs, top_logprobs,
 * text_offset} object. */
static void cmpl_token_lp(server *srv, const gen_req *g, cJSON *lp, const sched_event *ev, size_t offset)
{
    char s[800];
    lp_token(srv, g, ev->token, s, sizeof s, NULL, NULL);
    cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "tokens"), cJSON_CreateString(s));
    cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "token_logprobs"),
                         cJSON_CreateNumber(isfinite(ev->logprob) ? ev->logprob : -9999.0));
    cJSON *top = cJSON_CreateObject();
    for (int i = 0; i < ev->n_top; i++) {
        lp_token(srv, g, ev->top_ids[i], s, sizeof s, NULL, NULL);
        if (!cJSON_GetObjectItemCaseSensitive(top, s))
            cJSON_AddNumberToObject(top, s, isfinite(ev->top_lp[i]) ? ev->top_lp[i] : -9999.0);
    }
    cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "top_logprobs"), top);
    cJSON_AddItemToArray(cJSON_GetObjectItem(lp, "text_offset"), cJSON_CreateNumber((double)offset));
}

static cJSON *cmpl_lp_new(void)
{
    cJSON *lp = cJSON_CreateObject();
    cJSON_AddArrayToObject(lp, "tokens");
    cJSON_AddArrayToObject(lp, "token_logprobs");
    cJSON_AddArrayToObject(lp, "top_logprobs");
    cJSON_AddArrayToObject(lp, "text_offset");
    return lp;
}

static cJSON *chunk_new(server *srv, gen_state *st)
{
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "id", st->id);
    cJSON_AddStringToObject(c, "object", st->g.chat ? "chat.completion.chunk" : "text_completion");
    cJSON_AddNumberToObject(c, "created", (double)st->created);
    cJSON_AddStringToObject(c, "model", srv->model_name);
    cJSON_AddStringToObject(c, "system_fingerprint", "sparsed-" SPARSED_VERSION);
    return c;
}

static void sse_json(sbuf *sse, cJSON *c)
{
    char *s = cJSON_PrintUnformatted(c);
    if (s) {
        sb_puts(sse, "data: ");
        sb_puts(sse, s);
        sb_puts(sse, "\n\n");
        free(s);
    }
    cJSON_Delete(c);
}

static cJSON *usage_json(gen_state *st)
{
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", st->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", st->completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", st->prompt_tokens + st->completion_tokens);
    cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", st->cached_tokens);
    return u;
}

/* One streamed choice: text delta, optional logprobs, optional finish. */
static void stream_choice(server *srv, gen_state *st, int index, const char *text,
                          cJSON *lp, const char *finish, sbuf *sse)
{
    cJSON *c = chunk_new(srv, st);
    cJSON *arr = cJSON_AddArrayToObject(c, "choices");
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddNumberToObject(ch, "index", index);
    if (st->g.chat) {
        cJSON *delta = cJSON_AddObjectToObject(ch, "delta");
        if (text)
            cJSON_AddStringToObject(delta, "content", text);
        if (lp) {
            cJSON *l = cJSON_AddObjectToObject(ch, "logprobs");
            cJSON *content = cJSON_AddArrayToObject(l, "content");
            cJSON_AddItemToArray(content, lp);
            cJSON_AddNullToObject(l, "refusal");
        } else {
            cJSON_AddNullToObject(ch, "logprobs");
        }
    } else {
        cJSON_AddStringToObject(ch, "text", text ? text : "");
        if (lp)
            cJSON_AddItemToObject(ch, "logprobs", lp);
        else
            cJSON_AddNullToObject(ch, "logprobs");
    }
    if (finish)
        cJSON_AddStringToObject(ch, "finish_reason", finish);
    else
        cJSON_AddNullToObject(ch, "finish_reason");
    cJSON_AddItemToArray(arr, ch);
    /* chat chunks carry "usage": null until the last (its schema allows
     * null); the completions schema does not, so there it is left out */
    if (st->g.include_usage && st->g.chat)
        cJSON_AddNullToObject(c, "usage");
    sse_json(sse, c);
}

void gen_stream_open(server *srv, gen_state *st, sbuf *sse)
{
    for (int i = 0; i < st->n_choices; i++) {
        if (st->g.chat) {
            cJSON *c = chunk_new(srv, st);
            cJSON *arr = cJSON_AddArrayToObject(c, "choices");
            cJSON *ch = cJSON_CreateObject();
            cJSON_AddNumberToObject(ch, "index", i);
            cJSON *delta = cJSON_AddObjectToObject(ch, "delta");
            cJSON_AddStringToObject(delta, "role", "assistant");
            cJSON_AddStringToObject(delta, "content", "");
            cJSON_AddNullToObject(ch, "logprobs");
            cJSON_AddNullToObject(ch, "finish_reason");
            cJSON_AddItemToArray(arr, ch);
            if (st->g.include_usage)
                cJSON_AddNullToObject(c, "usage");
            sse_json(sse, c);
        } else if (st->g.echo) {
            const char *echo = st->g.echo_text[i / st->g.n];
            stream_choice(srv, st, i, echo ? echo : "", NULL, NULL, sse);
        }
    }
    st->started = 1;
}

void gen_stream_close(server *srv, gen_state *st, sbuf *sse)
{
    if (st->err.status) {
        char *e = apierr_json(&st->err);
        if (e) {
            sb_puts(sse, "data: ");
            sb_puts(sse, e);
            sb_puts(sse, "\n\n");
            free(e);
        }
    } else if (st->g.include_usage) {
        cJSON *c = chunk_new(srv, st);
        cJSON_AddArrayToObject(c, "choices");
        cJSON_AddItemToObject(c, "usage", usage_json(st));
        sse_json(sse, c);
    }
    sb_puts(sse, "data: [DONE]\n\n");
}

/* Stream, echo + logprobs: the prompt's first token (no logprob) opens a
 * choice's logprobs. */
static void stream_plp_first(server *srv, gen_state *st, int i, sbuf *sse)
{
    if (!st->plp || st->plp_sent[i])
        return;
    st->plp_sent[i] = 1;
    cJSON *first = cJSON_Duplicate(prompt_lp(srv, st, i / st->g.n), 1);
    /* only the first entry: later ones stream as they come */
    const char *keys[] = {"tokens", "token_logprobs", "top_logprobs", "text_offset"};
    for (int k = 0; k < 4; k++) {
        cJSON *a = cJSON_GetObjectItem(first, keys[k]);
        while (cJSON_GetArraySize(a) > 1)
            cJSON_DeleteItemFromArray(a, 1);
    }
    stream_choice(srv, st, i, "", first, NULL, sse);
}

void gen_apply(server *srv, gen_state *st, const sched_event *ev, sbuf *sse)
{
    switch (ev->type) {
    case SCHED_EV_TOKEN:
    case SCHED_EV_FINISH: {
        if (ev->index < 0 || ev->index >= st->n_choices)
            return;
        choice_acc *c = &st->ch[ev->index];
        size_t offset = c->text.len;
        if (st->g.echo) {
            const char *echo = st->g.echo_text[ev->index / st->g.n];
            offset += echo ? strlen(echo) : 0;
        }
        if (sse)
            stream_plp_first(srv, st, ev->index, sse);
        cJSON *lp = NULL;
        if (ev->type == SCHED_EV_TOKEN) {
            c->n_tokens++;
            if (st->g.logprobs >= 0) {
                if (st->g.chat) {
                    lp = chat_token_lp(srv, &st->g, ev);
                } else {
                    lp = cmpl_lp_new();
                    cmpl_token_lp(srv, &st->g, lp, ev, offset);
                }
            }
        } else {
            c->finish = ev->finish;
        }
        if (sse) {
            const char *fin = ev->type == SCHED_EV_FINISH ? finish_name(ev->finish) : NULL;
            if (ev->text_len > 0 || lp) {
                stream_choice(srv, st, ev->index, ev->text, lp, NULL, sse);
                lp = NULL;
            }
            if (fin)
                stream_choice(srv, st, ev->index, st->g.chat ? NULL : "", NULL, fin, sse);
            sb_put(&c->text, ev->text, (size_t)ev->text_len);   /* for the offsets */
        } else {
            sb_put(&c->text, ev->text, (size_t)ev->text_len);
            if (lp) {
                if (st->g.chat) {
                    if (!c->lp)
                        c->lp = cJSON_CreateArray();
                    cJSON_AddItemToArray(c->lp, lp);
                } else {
                    if (!c->lp) {
                        c->lp = lp;
                    } else {
                        const char *keys[] = {"tokens", "token_logprobs", "top_logprobs", "text_offset"};
                        for (int k = 0; k < 4; k++) {
                            cJSON *src = cJSON_GetObjectItem(lp, keys[k]);
                            cJSON *item = cJSON_DetachItemFromArray(src, 0);
                            cJSON_AddItemToArray(cJSON_GetObjectItem(c->lp, keys[k]), item);
                        }
                        cJSON_Delete(lp);
                    }
                }
                lp = NULL;
            }
        }
        cJSON_Delete(lp);
        break;
    }
    case SCHED_EV_DONE:
        st->done = 1;
        st->prompt_tokens = ev->prompt_tokens;
        st->completion_tokens = ev->completion_tokens;
        st->cached_tokens = ev->cached_tokens;
        st->queue_s = ev->queue_s;
        st->ttft_s = ev->ttft_s;
        break;
    case SCHED_EV_ERROR:
        st->done = 1;
        st->prompt_tokens = ev->prompt_tokens;
        st->completion_tokens = ev->completion_tokens;
        st->queue_s = ev->queue_s;
        st->ttft_s = ev->ttft_s;
        apierr_set(&st->err, ev->status ? ev->status : 500, NULL,
                   ev->status == 504 ? "request_timeout" : NULL, "%s", ev->message);
        break;
    case SCHED_EV_KEEPALIVE:
        if (sse)
            sb_puts(sse, ": keep-alive\n\n");
        break;
    case SCHED_EV_PROMPT_TOKEN: {
        int p = ev->index / st->g.n;
        if (!st->plp || p < 0 || p >= st->g.n_prompts || ev->pos < 1 || ev->pos >= st->g.prompt_len[p])
            return;
        cJSON *obj = prompt_lp(srv, st, p);
        size_t off = st->plp_off[p] ? (size_t)st->plp_off[p][ev->pos] : 0;
        if (!sse) {
            cmpl_token_lp(srv, &st->g, obj, ev, off);
            return;
        }
        for (int j = 0; j < st->g.n; j++) {
            int i = p * st->g.n + j;
            stream_plp_first(srv, st, i, sse);
            cJSON *lp = cmpl_lp_new();
            cmpl_token_lp(srv, &st->g, lp, ev, off);
            stream_choice(srv, st, i, "", lp, NULL, sse);
        }
        break;
    }
    }
}

char *gen_response(server *srv, gen_state *st)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "id", st->id);
    cJSON_AddStringToObject(r, "object", st->g.chat ? "chat.completion" : "text_completion");
    cJSON_AddNumberToObject(r, "created", (double)st->created);
    cJSON_AddStringToObject(r, "model", srv->model_name);
    cJSON_AddStringToObject(r, "system_fingerprint", "sparsed-" SPARSED_VERSION);
    cJSON *arr = cJSON_AddArrayToObject(r, "choices");
    for (int i = 0; i < st->n_choices; i++) {
        choice_acc *c = &st->ch[i];
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddNumberToObject(ch, "index", i);
        const char *text = c->text.p ? c->text.p : "";
        if (st->g.chat) {
            cJSON *m = cJSON_AddObjectToObject(ch, "message");
            cJSON_AddStringToObject(m, "role", "assistant");
            cJSON_AddStringToObject(m, "content", text);
            cJSON_AddNullToObject(m, "refusal");
            if (st->g.logprobs >= 0) {
                cJSON *l = cJSON_AddObjectToObject(ch, "logprobs");
                cJSON_AddItemToObject(l, "content", c->lp ? c->lp : cJSON_CreateArray());
                c->lp = NULL;
                cJSON_AddNullToObject(l, "refusal");
            } else {
                cJSON_AddNullToObject(ch, "logprobs");
            }
        } else {
            if (st->g.echo) {
                const char *echo = st->g.echo_text[i / st->g.n];
                sbuf t = {0};
                sb_puts(&t, echo ? echo : "");
                sb_puts(&t, text);
                cJSON_AddStringToObject(ch, "text", t.p ? t.p : "");
                sb_free(&t);
            } else {
                cJSON_AddStringToObject(ch, "text", text);
            }
            if (st->g.logprobs >= 0) {
                cJSON *gen = c->lp ? c->lp : cmpl_lp_new();
                c->lp = NULL;
                if (st->plp) {
                    /* echo: the prompt's tokens first, then the generated ones */
                    cJSON *all = cJSON_Duplicate(prompt_lp(srv, st, i / st->g.n), 1);
                    const char *keys[] = {"tokens", "token_logprobs", "top_logprobs", "text_offset"};
                    for (int k = 0; k < 4; k++) {
                        cJSON *src = cJSON_GetObjectItem(gen, keys[k]);
                        cJSON *dst = cJSON_GetObjectItem(all, keys[k]);
                        while (cJSON_GetArraySize(src) > 0)
                            cJSON_AddItemToArray(dst, cJSON_DetachItemFromArray(src, 0));
                    }
                    cJSON_Delete(gen);
                    gen = all;
                }
                cJSON_AddItemToObject(ch, "logprobs", gen);
            } else {
                cJSON_AddNullToObject(ch, "logprobs");
            }
        }
        cJSON_AddStringToObject(ch, "finish_reason", finish_name(c->finish));
        cJSON_AddItemToArray(arr, ch);
    }
    cJSON_AddItemToObject(r, "usage", usage_json(st));
    char *s = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    return s;
}

/* ---- models, tokenize, detokenize -------------------------------------- */

static cJSON *model_obj(server *srv)
{
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", srv->model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)srv->created);
    cJSON_AddStringToObject(m, "owned_by", "sparsed");
    cJSON_AddNumberToObject(m, "max_model_len", srv->info->n_ctx);
    return m;
}

char *api_models(server *srv)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "object", "list");
    cJSON *d = cJSON_AddArrayToObject(r, "data");
    cJSON_AddItemToArray(d, model_obj(srv));
    char *s = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    return s;
}

char *api_model(server *srv, const char *id, apierr *e)
{
    if (strcmp(id, srv->model_name)) {
        apierr_set(e, 404, "model", "model_not_found", "The model '%.200s' does not exist.", id);
        return NULL;
    }
    cJSON *m = model_obj(srv);
    char *s = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    return s;
}

static cJSON *parse_object(const char *body, size_t len, apierr *e)
{
    cJSON *root = json_body(body, len, e);
    if (!root)
        return NULL;
    const cJSON *model = field(root, "model");
    if (model && (!cJSON_IsString(model) || strcmp(model->valuestring, "") == 0)) {
        apierr_set(e, 400, "model", "invalid_type", "Invalid type for 'model': expected a string.");
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* vLLM's /tokenize: {"prompt": text} or {"messages": [...]}; optional
 * add_special_tokens (prompt) and add_generation_prompt (messages). */
char *api_tokenize(server *srv, const char *body, size_t len, apierr *e)
{
    cJSON *root = parse_object(body, len, e);
    if (!root)
        return NULL;
    char *out = NULL;
    gen_req g;
    memset(&g, 0, sizeof g);
    int32_t *t = NULL;
    int n = 0;
    const cJSON *prompt = field(root, "prompt");
    const cJSON *msgs = field(root, "messages");
    int add_special = 1;
    if (get_bool(root, "add_special_tokens", &add_special, e))
        goto done;
    if (prompt) {
        if (!cJSON_IsString(prompt)) {
            apierr_set(e, 400, "prompt", "invalid_type",
                       "Invalid type for 'prompt': expected a string, but got %s instead.", json_type(prompt));
            goto done;
        }
        if (tokenize(srv, prompt->valuestring, strlen(prompt->valuestring),
                     add_special && srv->info->add_bos, 1, &t, &n, "prompt", e))
            goto done;
    } else if (msgs) {
        if (parse_messages(srv, root, &g, e))
            goto done;
        t = g.prompts[0];
        n = g.prompt_len[0];
        g.prompts[0] = NULL;
    } else {
        apierr_set(e, 400, "prompt", "missing_required_parameter",
                   "Missing required parameter: 'prompt' (or 'messages').");
        goto done;
    }
    cJSON *r = cJSON_CreateObject();
    cJSON_AddNumberToObject(r, "count", n);
    cJSON_AddNumberToObject(r, "max_model_len", srv->info->n_ctx);
    cJSON *arr = cJSON_AddArrayToObject(r, "tokens");
    for (int i = 0; i < n; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateNumber(t[i]));
    out = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
done:
    free(t);
    gen_req_free(&g);
    cJSON_Delete(root);
    return out;
}

char *api_detokenize(server *srv, const char *body, size_t len, apierr *e)
{
    cJSON *root = parse_object(body, len, e);
    if (!root)
        return NULL;
    char *out = NULL;
    int32_t *t = NULL;
    int n = 0;
    const cJSON *toks = field(root, "tokens");
    if (!toks) {
        apierr_set(e, 400, "tokens", "missing_required_parameter", "Missing required parameter: 'tokens'.");
        goto done;
    }
    if (!cJSON_IsArray(toks)) {
        apierr_set(e, 400, "tokens", "invalid_type",
                   "Invalid type for 'tokens': expected an array of integers, but got %s instead.",
                   json_type(toks));
        goto done;
    }
    if (parse_ids(srv, toks, &t, &n, "tokens", e))
        goto done;
    char *text = detokenize(srv, t, n, 1);
    if (!text) {
        apierr_set(e, 500, NULL, NULL, "out of memory");
        goto done;
    }
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "prompt", text);
    free(text);
    out = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
done:
    free(t);
    cJSON_Delete(root);
    return out;
}
