/* `sparsed serve`: configuration, model and pool, scheduler loop, HTTP.
 *
 * The scheduler's libuv loop runs on the main thread (it owns the engine
 * and the pool); libmicrohttpd runs its own threads.  SIGTERM/SIGINT start a
 * drain on the loop; when it ends, open streams get a moment to flush and
 * the HTTP side stops. */
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server/internal.h"
#include "server/server.h"

#ifndef SPARSED_SOURCE_ROOT
#define SPARSED_SOURCE_ROOT "."
#endif

#define DEFAULT_MODEL "models/stories260K.gguf"

static char *default_model(void)
{
    if (access(DEFAULT_MODEL, R_OK) == 0)
        return strdup(DEFAULT_MODEL);
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", SPARSED_SOURCE_ROOT, DEFAULT_MODEL);
    if (access(path, R_OK) == 0)
        return strdup(path);
    /* beside an installed or built binary: <dir>/../models/... */
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            snprintf(path, sizeof path, "%s/../%s", exe, DEFAULT_MODEL);
            if (access(path, R_OK) == 0)
                return strdup(path);
        }
    }
    return strdup(DEFAULT_MODEL);
}

static char *model_name_of(const char *path)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    size_t n = strlen(b);
    if (n > 5 && !strcmp(b + n - 5, ".gguf"))
        n -= 5;
    return strndup(b, n);
}

static int add_key(server *srv, const char *k, size_t n)
{
    while (n && (k[n - 1] == ' ' || k[n - 1] == '\t' || k[n - 1] == '\r' || k[n - 1] == '\n'))
        n--;
    while (n && (*k == ' ' || *k == '\t')) {
        k++;
        n--;
    }
    if (!n || *k == '#')
        return 0;
    char **nk = realloc(srv->keys, (size_t)(srv->n_keys + 1) * sizeof *nk);
    if (!nk)
        return -1;
    srv->keys = nk;
    srv->keys[srv->n_keys] = strndup(k, n);
    if (!srv->keys[srv->n_keys])
        return -1;
    srv->n_keys++;
    if (n > srv->key_max)
        srv->key_max = n;
    return 0;
}

static int load_keys(server *srv)
{
    const srv_config *c = &srv->cfg;
    if (c->api_key && *c->api_key && add_key(srv, c->api_key, strlen(c->api_key)))
        return -1;
    if (c->api_key_file) {
        FILE *f = fopen(c->api_key_file, "r");
        if (!f) {
            fprintf(stderr, "sparsed serve: --api-key-file: cannot open %s: %s\n", c->api_key_file,
                    strerror(errno));
            return -1;
        }
        char line[4096];
        while (fgets(line, sizeof line, f))
            if (add_key(srv, line, strlen(line))) {
                fclose(f);
                return -1;
            }
        fclose(f);
        if (srv->n_keys == 0) {
            fprintf(stderr, "sparsed serve: --api-key-file: %s holds no keys\n", c->api_key_file);
            return -1;
        }
    }
    return 0;
}

static int engine_options(const srv_config *c, engine_opts *eo)
{
    memset(eo, 0, sizeof *eo);
    eo->model_path = c->model;
    eo->device = c->device;
    eo->index_keys = c->index_keys;
    eo->kv_cache_dtype = c->kv_cache_dtype;
    eo->max_model_len = c->max_model_len;
    eo->n_threads = c->threads;
    attn_config_default(&eo->attn);
    if (strcmp(c->attention, "auto"))
        eo->attn.mode = attn_mode_parse(c->attention);
    if (strcmp(c->indexer, "auto"))
        eo->attn.indexer = attn_indexer_parse(c->indexer);
    eo->attn.group_reduce = attn_group_reduce_parse(c->group_reduce);
    /* -1 leaves the engine's default / the model's value */
    if (c->block_size != -1) eo->attn.block_size = c->block_size;
    if (c->top_k_blocks != -1) eo->attn.top_k_blocks = c->top_k_blocks;
    if (c->local_blocks != -1) eo->attn.local_blocks = c->local_blocks;
    if (c->sink_blocks != -1) eo->attn.sink_blocks = c->sink_blocks;
    if (c->dense_layers != -1) eo->attn.dense_layers = c->dense_layers;
    if (c->sparse_min_context != -1) eo->attn.sparse_min_context = c->sparse_min_context;
    char err[256];
    if (attn_config_check(&eo->attn, err, sizeof err)) {
        fprintf(stderr, "sparsed serve: invalid attention options: %s\n", err);
        return -1;
    }
    return 0;
}

/* --user: leaves root for NAME (its groups, then its uid) once the port is
 * bound and the model loaded; fails if a step fails or root comes back. */
static int drop_user(const char *name)
{
    struct passwd *pw = getpwnam(name);
    if (!pw) {
        fprintf(stderr, "sparsed serve: --user: no user named '%s'\n", name);
        return -1;
    }
    uid_t uid = pw->pw_uid;
    gid_t gid = pw->pw_gid;
    if (geteuid() != 0) {
        if (uid == geteuid())
            return 0;
        fprintf(stderr, "sparsed serve: --user %s: only root can switch users\n", name);
        return -1;
    }
    if (initgroups(name, gid) || setgid(gid) || setuid(uid)) {
        fprintf(stderr, "sparsed serve: --user %s: %s\n", name, strerror(errno));
        return -1;
    }
    if (uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
        fprintf(stderr, "sparsed serve: --user %s: root could be regained; stopping\n", name);
        return -1;
    }
    fprintf(stderr, "sparsed: running as user %s (uid %u, gid %u)\n", name, (unsigned)uid,
            (unsigned)gid);
    return 0;
}

int serve_main(int argc, char **argv)
{
    server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return 1;
    int rc = config_load(&srv->cfg, argc, argv);
    if (rc) {
        config_free(&srv->cfg);
        free(srv);
        return rc > 0 ? 0 : 2;
    }
    srv_config *cfg = &srv->cfg;
    int exit_code = 1;
    char err[512];
    signal(SIGPIPE, SIG_IGN);

    if (!cfg->model)
        cfg->model = default_model();
    if (load_keys(srv)) {
        exit_code = 2;
        goto out;
    }
    engine_opts eo;
    if (engine_options(cfg, &eo)) {
        exit_code = 2;
        goto out;
    }
    srv->eng = engine_create(&eo, err, sizeof err);
    if (!srv->eng) {
        fprintf(stderr, "sparsed serve: cannot load model %s: %s\n", cfg->model, err);
        goto out;
    }
    srv->info = engine_get_info(srv->eng);
    srv->model_name = cfg->served_model_name ? strdup(cfg->served_model_name)
                                             : model_name_of(cfg->model);
    srv->created = time(NULL);

    size_t dev_free = 0, dev_total = 0;
    int on_card = engine_device_memory(srv->eng, &dev_free, &dev_total) == 0;
    if (on_card && !config_source(cfg, "max-batch-tokens")) {
        /* big cards: chunks long enough for the GEMMs to run at full rate */
        cfg->max_batch_tokens = dev_total >= (70ull << 30) ? 8192 : 2048;
        if (cfg->max_batch_tokens < cfg->max_running)
            cfg->max_batch_tokens = cfg->max_running;
    }
    sched_opts so;
    sched_opts_default(&so);
    so.max_running = cfg->max_running;
    so.max_batch_tokens = cfg->max_batch_tokens;
    if (engine_reserve(srv->eng, NULL, so.max_batch_tokens, sched_max_rows(&so), so.max_running, err,
                       sizeof err)) {
        fprintf(stderr, "sparsed serve: the work buffers of %d-token steps do not fit: %s "
                "(lower --max-batch-tokens or --max-running)\n", cfg->max_batch_tokens, err);
        goto out;
    }

    kv_layout lay = engine_kv_layout(srv->eng);
    size_t page_bytes = engine_kv_page_bytes(srv->eng);
    long long pages = cfg->kv_pages;
    long long kv_memory = cfg->kv_memory;
    int kv_auto = pages == 0 && on_card && !config_source(cfg, "kv-memory");
    if (kv_auto) {
        /* what the weights and work buffers leave of the card's share */
        engine_device_memory(srv->eng, &dev_free, &dev_total);
        double keep = (1.0 - cfg->gpu_memory_utilization) * (double)dev_total;
        kv_memory = (double)dev_free > keep ? (long long)((double)dev_free - keep) : 0;
        fprintf(stderr, "sparsed: KV pool from --gpu-memory-utilization %.2f: %.1f of %.1f GiB free after the "
                "weights and work buffers, %.1f GiB kept back\n", cfg->gpu_memory_utilization,
                dev_free / 1073741824.0, dev_total / 1073741824.0, keep / 1073741824.0);
    }
    if (pages == 0) {
        pages = kv_memory / (long long)(page_bytes ? page_bytes : 1);
        /* more than every running sequence at full context is never used */
        long long useful = (long long)cfg->max_running * kv_pages_for(&lay, srv->info->n_ctx);
        if (pages > useful)
            pages = useful;
    }
    /* Window layers in pages of their own, when fewer pages hold every step's windows than the
     * pool has: their share of the memory goes to the main pages.  Every layer takes the same
     * bytes of a page (either engine's layout). */
    long long wpages = lay.window ? kv_window_pages_for(&lay, so.max_running, so.max_batch_tokens) : 0;
    size_t wpage_bytes = 0;
    if (cfg->window_pages && wpages && wpages < pages) {
        int n_win = 0;
        for (int i = 0; i < lay.n_layers; i++)
            n_win += kv_layer_windowed(&lay, i);
        size_t per_layer = page_bytes / (size_t)lay.n_layers;
        lay.window_pages = (int)wpages;
        wpage_bytes = per_layer * (size_t)n_win;
        size_t main_bytes = per_layer * (size_t)(lay.n_layers - n_win);
        if (!cfg->kv_pages) {
            long long left = (long long)page_bytes * pages - wpages * (long long)wpage_bytes;
            pages = main_bytes ? left / (long long)main_bytes : pages;
            long long useful = (long long)cfg->max_running * kv_pages_for(&lay, srv->info->n_ctx);
            if (pages > useful)
                pages = useful;
        }
        page_bytes = main_bytes;
    }
    if (pages < 2 || pages > INT_MAX) {
        fprintf(stderr, "sparsed serve: %s give%s %lld pages of %zu bytes; need at least 2\n",
                kv_auto ? "the card's free memory and --gpu-memory-utilization" : "--kv-pages/--kv-memory",
                kv_auto ? "" : "s", pages, page_bytes);
        exit_code = 2;
        goto out;
    }
    srv->pool = kv_pool_create(&lay, (int)pages, engine_kv_host_storage(srv->eng), err, sizeof err);
    if (!srv->pool) {
        fprintf(stderr, "sparsed serve: cannot create the KV pool: %s\n", err);
        goto out;
    }
    if (engine_reserve(srv->eng, srv->pool, so.max_batch_tokens, sched_max_rows(&so), so.max_running, err,
                       sizeof err)) {
        fprintf(stderr, "sparsed serve: cannot place the KV pool (%lld pages): %s\n", pages, err);
        goto out;
    }

    sched_backend be;
    sched_backend_engine(&be, srv->eng);
    so.interactive_context = cfg->interactive_context;
    so.max_queue = cfg->max_queue;
    so.max_queued_tokens = (long)cfg->max_queued_tokens;
    so.prefix_cache = cfg->prefix_cache;
    so.request_timeout = cfg->request_timeout;
    so.shutdown_timeout = cfg->shutdown_timeout;
    so.keepalive = cfg->sse_keepalive;
    so.handle_signals = 1;
    so.model_name = srv->model_name;
    srv->sc = sched_create(&be, srv->pool, &so, err, sizeof err);
    if (!srv->sc) {
        fprintf(stderr, "sparsed serve: %s\n", err);
        goto out;
    }

    if (http_start(srv, err, sizeof err)) {
        fprintf(stderr, "sparsed serve: %s\n", err);
        goto out;
    }
    if (cfg->user && drop_user(cfg->user)) {
        exit_code = 2;
        goto out;
    }
    const attn_config *ac = engine_attn(srv->eng);
    char wnote[96] = "";
    if (lay.window_pages)
        snprintf(wnote, sizeof wnote, " + %d window pages (%.1f MiB)", lay.window_pages,
                 (double)lay.window_pages * (double)wpage_bytes / (1024.0 * 1024.0));
    fprintf(stderr,
            "sparsed: model %s (%s, %d layers, vocab %d, context %d) served as '%s' on %s\n"
            "sparsed: attention %s, KV pool %lld pages x %d tokens (%.1f MiB)%s, max running %d, "
            "batch tokens %d, prefix cache %s%s%s\n",
            cfg->model, srv->info->arch, srv->info->n_layers, srv->info->n_vocab, srv->info->n_ctx,
            srv->model_name, srv->info->device, ac->mode == ATTN_SPARSE ? "sparse" : "dense", pages, lay.block_size,
            (double)pages * (double)page_bytes / (1024.0 * 1024.0), wnote, cfg->max_running,
            cfg->max_batch_tokens, cfg->prefix_cache ? "on" : "off",
            strcmp(cfg->kv_cache_dtype, "fp8") ? "" : ", K/V in fp8", srv->n_keys ? ", API keys required" : "");
    const char *h = cfg->host;
    int v6 = strchr(h, ':') != NULL;
    fprintf(stderr, "sparsed: listening on http://%s%s%s:%d\n", v6 ? "[" : "", h, v6 ? "]" : "",
            http_port(srv));
    fflush(stderr);

    sched_run(srv->sc);
    /* The drain is over and the loop no longer handles signals: one more
     * must not kill the process mid-cleanup (exit status 0, leak check). */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);

    /* Finished streams still have their last chunks to send. */
    for (int i = 0; i < 200 && atomic_load(&srv->n_conns) > 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "sparsed: stopped\n");
    exit_code = 0;

out:
    http_stop(srv);
    sched_free(srv->sc);
    kv_pool_free(srv->pool);
    engine_free(srv->eng);
    for (int i = 0; i < srv->n_keys; i++) {
        memset(srv->keys[i], 0, strlen(srv->keys[i]));
        free(srv->keys[i]);
    }
    free(srv->keys);
    free(srv->model_name);
    config_free(cfg);
    free(srv);
    return exit_code;
}
