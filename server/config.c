/* Option table, parsing and validation for `sparsed serve`.
 *
 * One table drives the flags, the SPARSED_* environment variables, the
 * JSON config file and --help, so the four cannot drift apart.  Every value
 * is checked when it is read; an error names the option and where the bad
 * value came from. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "server/config.h"
#include "engine/engine.h"

enum { T_STR, T_INT, T_I64, T_SIZE, T_SECS, T_REAL, T_BOOL, T_ENUM };

typedef struct opt {
    const char *name;         /* flag name without "--"; '-' becomes '_' in env and file */
    int type;
    size_t off;
    const char *def;          /* default as text; NULL = none */
    double lo, hi;            /* numeric range */
    const char *choices;      /* T_ENUM: '|'-separated */
    const char *arg;          /* metavariable for --help */
    const char *help;
} opt;

#define O(f) offsetof(srv_config, f)

static const opt opts[] = {
    {"model", T_STR, O(model), NULL, 0, 0, NULL, "PATH",
     "GGUF model file (default: models/stories260K.gguf from the cwd or the source tree)"},
    {"host", T_STR, O(host), "127.0.0.1", 0, 0, NULL, "ADDR", "address to listen on (IPv4 or IPv6)"},
    {"port", T_INT, O(port), "8080", 0, 65535, NULL, "N", "TCP port (0 = any free port; the log says which)"},
    {"config", T_STR, O(config), NULL, 0, 0, NULL, "FILE", "JSON config file: {\"max_running\": 32, ...}"},
    {"served-model-name", T_STR, O(served_model_name), NULL, 0, 0, NULL, "NAME",
     "model id in the API (default: the model file name without .gguf)"},
    {"api-key", T_STR, O(api_key), NULL, 0, 0, NULL, "KEY",
     "require 'Authorization: Bearer KEY' (all routes but /health and /ready)"},
    {"api-key-file", T_STR, O(api_key_file), NULL, 0, 0, NULL, "FILE",
     "file of accepted API keys, one per line ('#' starts a comment line)"},
    {"user", T_STR, O(user), NULL, 0, 0, NULL, "NAME",
     "when started as root: after binding the port and loading the model, run as this user"},
    {"device", T_STR, O(device), "cpu", 0, 0, NULL, "DEV", "compute device: cpu, cuda, or cuda:N (the N-th visible GPU)"},
    {"index-keys", T_ENUM, O(index_keys), "bf16", 0, 0, "bf16|fp8", "TYPE",
     "cuda: MSA index keys in the KV pool, bf16 or fp8 (e4m3: half the bytes, more pages)"},
    {"kv-cache-dtype", T_ENUM, O(kv_cache_dtype), "bf16", 0, 0, "bf16|fp8", "TYPE",
     "cuda: keys and values in the KV pool, bf16 or fp8 (e4m3 + a scale a row: ~half the bytes, more pages)"},
    {"threads", T_INT, O(threads), "0", 0, 4096, NULL, "N", "engine threads (0 = all cores)"},
    {"attention", T_ENUM, O(attention), "auto", 0, 0, "dense|sparse|auto", "MODE",
     "attention: dense, sparse (block-sparse) or auto (sparse iff the model has an MSA indexer)"},
    {"indexer", T_ENUM, O(indexer), "auto", 0, 0, "auto|msa|minmax|mean", "KIND",
     "block selection: msa (model weights), minmax or mean key summaries; auto = msa if present"},
    {"group-reduce", T_ENUM, O(group_reduce), "sum", 0, 0, "sum|max", "HOW",
     "training-free indexer: a GQA group's block score is the sum or the max over its query heads"},
    {"block-size", T_INT, O(block_size), "-1", -1, 256, NULL, "N",
     "tokens per KV page and sparse block, power of two 16..256 (-1 = model's value or 64)"},
    {"top-k-blocks", T_INT, O(top_k_blocks), "-1", -1, 1 << 20, NULL, "N",
     "blocks the indexer selects per query (-1 = model's value, else 4096/block - sink - local)"},
    {"local-blocks", T_INT, O(local_blocks), "-1", -1, 1 << 20, NULL, "N",
     "newest blocks always attended (-1 = model's value or 2)"},
    {"sink-blocks", T_INT, O(sink_blocks), "-1", -1, 1 << 20, NULL, "N",
     "first blocks always attended (-1 = 0 for msa, 1 otherwise)"},
    {"dense-layers", T_INT, O(dense_layers), "-1", -1, 1 << 20, NULL, "N",
     "leading layers kept dense (-1 = model's value or 0)"},
    {"sparse-min-context", T_INT, O(sparse_min_context), "-1", -1, INT_MAX, NULL, "N",
     "contexts shorter than this stay dense (-1 = (top_k+local+sink)*block, 0 = always sparse)"},
    {"kv-pages", T_INT, O(kv_pages), "0", 0, INT_MAX, NULL, "N",
     "pages in the KV pool (0 = from --kv-memory)"},
    {"kv-memory", T_SIZE, O(kv_memory), "1G", 1 << 16, 1e15, NULL, "BYTES",
     "KV pool size when --kv-pages is 0 (suffixes K, M, G; unset on cuda: from --gpu-memory-utilization)"},
    {"gpu-memory-utilization", T_REAL, O(gpu_memory_utilization), "0.9", 0.05, 1, NULL, "F",
     "cuda, --kv-memory unset: share of the card's memory for weights, work buffers and the KV pool"},
    {"max-running", T_INT, O(max_running), "64", 1, 65536, NULL, "N",
     "sequences in the running batch"},
    {"max-batch-tokens", T_INT, O(max_batch_tokens), "512", 1, 1 << 24, NULL, "N",
     "tokens per engine step (decode tokens plus prefill chunks; unset on cuda: 8192 on cards of 70 GiB "
     "or more, else 2048)"},
    {"interactive-context", T_INT, O(interactive_context), "131072", 0, INT_MAX, NULL, "N",
     "while other requests decode, a prompt's prefill chunks past N tokens of context shrink so each step "
     "costs what a full chunk at N does: the other streams keep their pace (0 = off: long prompts first)"},
    {"max-queue", T_INT, O(max_queue), "256", 1, 1 << 24, NULL, "N",
     "requests waiting for admission before 503"},
    {"max-queued-tokens", T_I64, O(max_queued_tokens), "1048576", 1, 1e15, NULL, "N",
     "prompt tokens waiting for admission before 503"},
    {"max-tokens", T_INT, O(max_tokens), "0", 0, INT_MAX, NULL, "N",
     "most tokens one choice may generate (0 = up to the context length)"},
    {"max-model-len", T_INT, O(max_model_len), "0", 0, INT_MAX, NULL, "N",
     "context length served, prompt plus completion (0 = the model's); less sizes the pool's cap and "
     "the cuda work buffers for it"},
    {"prefix-cache", T_BOOL, O(prefix_cache), "true", 0, 0, NULL, NULL,
     "reuse KV pages of shared prompt prefixes (--no-prefix-cache to disable)"},
    {"window-pages", T_BOOL, O(window_pages), "true", 0, 0, NULL, NULL,
     "sliding-window layers (Gemma 2/3) keep only their window's K/V, in pages of their own "
     "(--no-window-pages: every token's, in every page)"},
    {"body-limit", T_SIZE, O(body_limit), "8M", 1024, 1e12, NULL, "BYTES",
     "largest request body (413 above it)"},
    {"request-timeout", T_SECS, O(request_timeout), "600", 0, 1e9, NULL, "SECS",
     "a request still running after this fails with 504 (0 = never)"},
    {"shutdown-timeout", T_SECS, O(shutdown_timeout), "30", 0, 1e9, NULL, "SECS",
     "on SIGTERM/SIGINT, how long in-flight requests may take to finish"},
    {"sse-keepalive", T_SECS, O(sse_keepalive), "5", 0, 1e9, NULL, "SECS",
     "a stream quiet this long (queue, long prefill) gets a ':' comment (0 = never)"},
    {"max-connections", T_INT, O(max_connections), "1024", 1, 1 << 20, NULL, "N",
     "concurrent HTTP connections"},
    {"max-connections-per-client", T_INT, O(max_connections_per_client), "256", 0, 1 << 20, NULL, "N",
     "concurrent HTTP connections from one client address (0 = no limit; raise it behind a proxy)"},
    {"connection-timeout", T_INT, O(connection_timeout), "60", 0, 1 << 24, NULL, "SECS",
     "idle HTTP connections close after this (0 = never)"},
    {"header-timeout", T_INT, O(header_timeout), "10", 0, 1 << 24, NULL, "SECS",
     "a new connection whose request headers stall this long closes (0 = --connection-timeout)"},
    {"header-limit", T_SIZE, O(header_limit), "32K", 4096, 1 << 24, NULL, "BYTES",
     "largest request line plus headers (431 above it)"},
    {"http-threads", T_INT, O(http_threads), "4", 1, 256, NULL, "N", "HTTP worker threads"},
    {"access-log", T_BOOL, O(access_log), "true", 0, 0, NULL, NULL,
     "one stderr line per request (--no-access-log to disable)"},
};

#define N_OPTS ((int)(sizeof opts / sizeof opts[0]))

/* Which source set each option; kept beside the config, indexed like opts. */
static int sources[N_OPTS];

static const opt *find_opt(const char *name, size_t len)
{
    for (int i = 0; i < N_OPTS; i++) {
        const char *n = opts[i].name;
        if (strlen(n) != len)
            continue;
        size_t j = 0;
        for (; j < len; j++) {
            char a = n[j], b = name[j];
            if (a == '-' && b == '_')
                continue;
            if (a != b)
                break;
        }
        if (j == len)
            return &opts[i];
    }
    return NULL;
}

static void env_name(const opt *o, char *buf, size_t cap)
{
    size_t k = (size_t)snprintf(buf, cap, "SPARSED_");
    for (const char *c = o->name; *c && k + 1 < cap; c++)
        buf[k++] = *c == '-' ? '_' : (char)toupper((unsigned char)*c);
    buf[k] = 0;
}

static const char *src_name(int src)
{
    static const char *const names[] = {"default", "config file", "environment", "command line"};
    return names[src];
}

/* Byte sizes: 123, 64K, 512M, 2G, 1T (powers of 1024), optional "B"/"iB". */
static int parse_size(const char *s, double *out)
{
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (end == s || errno || !isfinite(v) || v < 0)
        return -1;
    double mul = 1;
    switch (toupper((unsigned char)*end)) {
    case 'K': mul = 1024.0; end++; break;
    case 'M': mul = 1024.0 * 1024; end++; break;
    case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: break;
    }
    if (mul > 1 && (*end == 'i' || *end == 'I'))
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end)
        return -1;
    *out = floor(v * mul);
    return 0;
}

static int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (!strcasecmp(s, yes[i])) {
            *out = 1;
            return 0;
        }
        if (!strcasecmp(s, no[i])) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

static int choice_ok(const char *choices, const char *v)
{
    size_t n = strlen(v);
    for (const char *c = choices; *c;) {
        const char *bar = strchr(c, '|');
        size_t len = bar ? (size_t)(bar - c) : strlen(c);
        if (len == n && !strncmp(c, v, n))
            return 1;
        if (!bar)
            break;
        c = bar + 1;
    }
    return 0;
}

/* Sets one option from text; prints an error naming it on failure. */
static int set_value(srv_config *c, const opt *o, const char *v, int src)
{
    char *base = (char *)c;
    char env[64];
    env_name(o, env, sizeof env);
    const char *where = src == 2 ? env : src_name(src);
    double d;
    char *end;
    switch (o->type) {
    case T_STR:
    case T_ENUM: {
        if (o->type == T_ENUM && !choice_ok(o->choices, v)) {
            fprintf(stderr, "sparsed serve: invalid value '%s' for --%s (from %s): expected one of %s\n",
                    v, o->name, where, o->choices);
            return -1;
        }
        if (o->type == T_STR && !*v && strcmp(o->name, "api-key")) {
            fprintf(stderr, "sparsed serve: --%s (from %s) must not be empty\n", o->name, where);
            return -1;
        }
        char **p = (char **)(base + o->off);
        char *dup = strdup(v);
        if (!dup)
            return -1;
        free(*p);
        *p = dup;
        break;
    }
    case T_INT:
    case T_I64:
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (end == v || *end || errno || x < o->lo || x > o->hi) {
            fprintf(stderr, "sparsed serve: invalid value '%s' for --%s (from %s): expected an integer from %.0f to %.0f\n",
                    v, o->name, where, o->lo, o->hi);
            return -1;
        }
        if (o->type == T_INT)
            *(int *)(base + o->off) = (int)x;
        else
            *(long long *)(base + o->off) = x;
        break;
    case T_SIZE:
        if (parse_size(v, &d) || d < o->lo || d > o->hi) {
            fprintf(stderr, "sparsed serve: invalid value '%s' for --%s (from %s): expected a size from %.0f bytes (suffixes K, M, G, T)\n",
                    v, o->name, where, o->lo);
            return -1;
        }
        *(long long *)(base + o->off) = (long long)d;
        break;
    case T_SECS:
    case T_REAL:
        errno = 0;
        d = strtod(v, &end);
        if (end == v || *end || errno || !isfinite(d) || d < o->lo || d > o->hi) {
            if (o->type == T_SECS)
                fprintf(stderr, "sparsed serve: invalid value '%s' for --%s (from %s): expected seconds >= %.0f\n",
                        v, o->name, where, o->lo);
            else
                fprintf(stderr, "sparsed serve: invalid value '%s' for --%s (from %s): expected a number from %g to %g\n",
                        v, o->name, where, o->lo, o->hi);
            return -1;
        }
        *(double *)(base + o->off) = d;
        break;
    case T_BOOL: {
        int b;
        if (parse_bool(v, &b)) {
            fprintf(stderr, "sparsed serve: invalid value '%s' for --%s (from %s): expected true or false\n",
                    v, o->name, where);
            return -1;
        }
        *(int *)(base + o->off) = b;
        break;
    }
    }
    sources[o - opts] = src;
    return 0;
}

static int load_file(srv_config *c, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "sparsed serve: cannot open config file %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (1u << 24)) {
                fprintf(stderr, "sparsed serve: config file %s is too large\n", path);
                free(buf);
                fclose(f);
                return -1;
            }
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return -1;
            }
            buf = nb;
        }
        size_t k = fread(buf + len, 1, cap - len - 1, f);
        len += k;
        if (k == 0)
            break;
    }
    fclose(f);
    buf[len] = 0;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (!root || !cJSON_IsObject(root)) {
        long at = root ? 0 : (long)((end ? end : buf) - buf);
        fprintf(stderr, "sparsed serve: config file %s: %s (near byte %ld)\n", path,
                root ? "expected a JSON object" : "invalid JSON", at);
        cJSON_Delete(root);
        free(buf);
        return -1;
    }
    int rc = 0;
    cJSON *it;
    cJSON_ArrayForEach(it, root) {
        const opt *o = it->string ? find_opt(it->string, strlen(it->string)) : NULL;
        if (!o || !strcmp(o->name, "config")) {
            fprintf(stderr, "sparsed serve: config file %s: unknown option \"%s\"\n", path,
                    it->string ? it->string : "");
            rc = -1;
            break;
        }
        char num[64];
        const char *v = NULL;
        if (cJSON_IsString(it)) {
            v = it->valuestring;
        } else if (cJSON_IsBool(it)) {
            v = cJSON_IsTrue(it) ? "true" : "false";
        } else if (cJSON_IsNumber(it)) {
            double d = it->valuedouble;
            if (d == floor(d) && fabs(d) < 1e17)
                snprintf(num, sizeof num, "%.0f", d);
            else
                snprintf(num, sizeof num, "%.17g", d);
            v = num;
        } else {
            fprintf(stderr, "sparsed serve: config file %s: \"%s\" must be a string, number or boolean\n",
                    path, it->string);
            rc = -1;
            break;
        }
        if (set_value(c, o, v, 1)) {
            rc = -1;
            break;
        }
    }
    cJSON_Delete(root);
    free(buf);
    return rc;
}

void config_help(FILE *f)
{
    fprintf(f,
        "usage: sparsed serve [options]\n"
        "\n"
        "OpenAI-compatible HTTP server.  Each option also reads the environment\n"
        "variable shown and the same key in the --config JSON file (with '_' or '-');\n"
        "a flag beats the environment, which beats the file, which beats the default.\n"
        "\n");
    for (int i = 0; i < N_OPTS; i++) {
        const opt *o = &opts[i];
        char left[64], env[64];
        env_name(o, env, sizeof env);
        if (o->type == T_BOOL)
            snprintf(left, sizeof left, "--[no-]%s", o->name);
        else
            snprintf(left, sizeof left, "--%s %s", o->name, o->arg);
        fprintf(f, "  %-28s %s\n", left, o->help);
        fprintf(f, "  %-28s [%s", "", env);
        if (o->def)
            fprintf(f, "; default %s", o->def);
        fprintf(f, "]\n");
    }
    fprintf(f, "  %-28s %s\n", "-h, --help", "this help");
}

static void set_defaults(srv_config *c)
{
    memset(c, 0, sizeof *c);
    for (int i = 0; i < N_OPTS; i++)
        if (opts[i].def)
            set_value(c, &opts[i], opts[i].def, 0);
    memset(sources, 0, sizeof sources);
}

int config_source(const srv_config *c, const char *name)
{
    (void)c;
    const opt *o = find_opt(name, strlen(name));
    return o ? sources[o - opts] : 0;
}

void config_free(srv_config *c)
{
    for (int i = 0; i < N_OPTS; i++)
        if (opts[i].type == T_STR || opts[i].type == T_ENUM) {
            char **p = (char **)((char *)c + opts[i].off);
            free(*p);
            *p = NULL;
        }
}

/* Splits "--name=value" / "--name value" / "--no-name"; returns the option
 * or NULL (error printed). *val is NULL for a bare boolean flag. */
static const opt *flag_opt(int argc, char **argv, int *i, const char **val, int *negate)
{
    const char *a = argv[*i];
    *val = NULL;
    *negate = 0;
    if (strncmp(a, "--", 2)) {
        fprintf(stderr, "sparsed serve: unexpected argument '%s' (try sparsed serve --help)\n", a);
        return NULL;
    }
    a += 2;
    const char *eq = strchr(a, '=');
    size_t len = eq ? (size_t)(eq - a) : strlen(a);
    const opt *o = find_opt(a, len);
    if (!o && len > 3 && !strncmp(a, "no-", 3)) {
        o = find_opt(a + 3, len - 3);
        if (o && o->type == T_BOOL && !eq) {
            *negate = 1;
            return o;
        }
        o = NULL;
    }
    if (!o) {
        fprintf(stderr, "sparsed serve: unknown option '--%.*s' (try sparsed serve --help)\n",
                (int)len, a);
        return NULL;
    }
    if (eq) {
        *val = eq + 1;
    } else if (o->type != T_BOOL) {
        if (*i + 1 >= argc) {
            fprintf(stderr, "sparsed serve: --%s needs a value\n", o->name);
            return NULL;
        }
        *val = argv[++*i];
    }
    return o;
}

int config_load(srv_config *c, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            config_help(stdout);
            return 1;
        }
    }
    set_defaults(c);

    /* The config file first: flag, then environment. */
    const char *file = getenv("SPARSED_CONFIG");
    for (int i = 1; i < argc; i++) {
        const char *v;
        int neg;
        const opt *o = flag_opt(argc, argv, &i, &v, &neg);
        if (!o)
            return -1;
        if (!strcmp(o->name, "config"))
            file = v;
    }
    if (file && *file) {
        if (load_file(c, file))
            return -1;
        set_value(c, find_opt("config", 6), file, getenv("SPARSED_CONFIG") ? 2 : 3);
    }
    for (int i = 0; i < N_OPTS; i++) {
        char env[64];
        env_name(&opts[i], env, sizeof env);
        const char *v = getenv(env);
        if (v && strcmp(opts[i].name, "config") && set_value(c, &opts[i], v, 2))
            return -1;
    }
    for (int i = 1; i < argc; i++) {
        const char *v;
        int neg;
        const opt *o = flag_opt(argc, argv, &i, &v, &neg);
        if (!o)
            return -1;
        if (!strcmp(o->name, "config"))
            continue;
        if (o->type == T_BOOL && !v)
            v = neg ? "false" : "true";
        if (set_value(c, o, v, 3))
            return -1;
    }
    /* cross-field checks */
    if (c->block_size != -1 && (c->block_size < 16 || (c->block_size & (c->block_size - 1)))) {
        fprintf(stderr, "sparsed serve: invalid value %d for --block-size: expected a power of two from 16 to 256 (or -1)\n",
                c->block_size);
        return -1;
    }
    int on_cuda = engine_parse_device(c->device, NULL);
    if (on_cuda < 0) {
        fprintf(stderr, "sparsed serve: invalid value '%s' for --device: expected cpu, cuda, or cuda:N for the N-th "
                "visible GPU\n", c->device);
        return -1;
    }
    if (!strcmp(c->index_keys, "fp8") && !on_cuda) {
        fprintf(stderr, "sparsed serve: --index-keys fp8 needs --device cuda\n");
        return -1;
    }
    if (!strcmp(c->kv_cache_dtype, "fp8") && !on_cuda) {
        fprintf(stderr, "sparsed serve: --kv-cache-dtype fp8 needs --device cuda\n");
        return -1;
    }
    /* every running sequence must fit one decode token into a step, or the
     * youngest would wait for the oldest to finish */
    int batch_auto = on_cuda && !config_source(c, "max-batch-tokens");
    if (c->max_batch_tokens < c->max_running && !batch_auto) {
        fprintf(stderr, "sparsed serve: --max-batch-tokens (%d) must be at least --max-running (%d)\n",
                c->max_batch_tokens, c->max_running);
        return -1;
    }
    return 0;
}
