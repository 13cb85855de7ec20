/* CPU decode step time against context length, dense against sparse.
 *
 *   decode --out FILE [--ctx 8192,16384,...] [--steps N] [--threads N] MODEL...
 *
 * Small mkmodel models (bench/cpu/run.sh: 2 layers, 8 query / 2 KV heads of
 * 64, and an M3-proportioned one) so attention dominates the step.  Prefilling 128K tokens would take
 * hours on two cores, so the pages of the first ctx tokens are filled with
 * random K, V and index keys directly (summaries through summary_update, as
 * the forward pass keeps them); only decode steps are timed.  The Llama
 * model runs dense and with the training-free indexer (its resolved
 * defaults), the M3-style ones dense and with MSA (the model's top-k and
 * block size).  Each model's label is its file name.  Prints a table; the
 * last line is the ratio at the largest context.  JSON rows go to --out. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/internal.h"
#include "kvcache/kvcache.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *msg)
{
    fprintf(stderr, "decode: %s\n", msg);
    exit(1);
}

static uint64_t rng = 0x853c49e6748fea9bull;

static float frand(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)(uint32_t)(rng >> 33) / 1073741824.0f - 1.0f;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Fills the pages of tokens [0, n) of every layer with random K, V and
 * index keys, keeping the summaries as store_kv would. */
static void fill(engine *e, kv_pool *p, const kv_seq *s, int n)
{
    const kv_layout *l = kv_pool_layout(p);
    int B = l->block_size, D = l->head_dim;
    for (int b = 0; b * B < n; b++)
        for (int layer = 0; layer < l->n_layers; layer++) {
            int32_t page = s->pages[b];
            float *K = kv_page_k(p, page, layer), *V = kv_page_v(p, page, layer);
            float *S = kv_page_summary(p, page, layer), *I = kv_page_idx(p, page, layer);
            int slots = n - b * B < B ? n - b * B : B;
            for (int h = 0; h < l->n_kv_heads; h++)
                for (int t = 0; t < slots; t++) {
                    float *k = K + ((size_t)h * B + t) * D, *v = V + ((size_t)h * B + t) * D;
                    for (int d = 0; d < D; d++) {
                        k[d] = frand();
                        v[d] = frand();
                    }
                    if (S)
                        summary_update(S + (size_t)h * 3 * D, k, t, D);
                }
            if (I && e->m.layers[layer].has_indexer)
                for (size_t i = 0; i < (size_t)slots * l->idx_dim; i++)
                    I[i] = frand();
        }
}

/* Median seconds of `steps` decode steps after ctx filled tokens (and the
 * fastest in *best: the least disturbed by other work on the machine). */
static double time_decode(engine *e, int ctx, int steps, double *best)
{
    kv_layout l = engine_kv_layout(e);
    char err[256];
    kv_pool *p = kv_pool_create(&l, kv_pages_for(&l, ctx + steps) + 1, 1, err, sizeof err);
    if (!p)
        die(err);
    kv_seq s;
    kv_seq_init(&s);
    if (kv_seq_reserve(p, &s, ctx))
        die("pool");
    fill(e, p, &s, ctx);
    int V = engine_get_info(e)->n_vocab;
    float *logits = malloc((size_t)V * sizeof(float));
    double *t = malloc((size_t)steps * sizeof(double));
    int32_t tok = 3;
    for (int i = 0; i < steps; i++) {
        int pos = ctx + i;
        if (kv_seq_reserve(p, &s, pos + 1))
            die("pool");
        engine_seq es = {.n_past = pos, .n_new = 1, .blocks = s.pages, .n_blocks = s.n_pages, .logits = 1};
        engine_batch b = {.n_tokens = 1, .tokens = &tok, .n_seqs = 1, .seqs = &es};
        double t0 = now();
        if (engine_step(e, p, &b, logits, err, sizeof err) < 0)
            die(err);
        t[i] = now() - t0;
        tok = 3 + (tok * 7 + 1) % (V - 3);
    }
    qsort(t, (size_t)steps, sizeof(double), cmp_d);
    double med = t[steps / 2];
    *best = t[0];
    free(t);
    free(logits);
    kv_seq_release(p, &s);
    kv_pool_free(p);
    return med;
}

static engine *open_engine(const char *path, int mode, int threads)
{
    engine_opts o = {.model_path = path, .n_threads = threads};
    attn_config_default(&o.attn);
    o.attn.mode = mode;
    char err[256];
    engine *e = engine_create(&o, err, sizeof err);
    if (!e)
        die(err);
    return e;
}

static const char *idx_name(int i)
{
    return i == IDX_MSA ? "msa" : i == IDX_MINMAX ? "minmax" : "mean";
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"out", 1, 0, 'o'}, {"ctx", 1, 0, 'c'}, {"steps", 1, 0, 's'}, {"threads", 1, 0, 't'}, {0, 0, 0, 0},
    };
    const char *out = NULL, *ctxs = "8192,16384,32768,65536,131072";
    int steps = 15, threads = 0, c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'c': ctxs = optarg; break;
        case 's': steps = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        default: die("usage: decode --out FILE [--ctx LIST] [--steps N] [--threads N] MODEL...");
        }
    }
    int n_models = argc - optind;
    if (n_models < 1 || n_models > 8 || steps < 1)
        die("usage: decode --out FILE [--ctx LIST] [--steps N] [--threads N] MODEL... (1 to 8)");
    int ctx[16], nc = 0;
    for (char *s = (char *)ctxs, *end; *s && nc < 16; s = *end ? end + 1 : end) {
        ctx[nc++] = (int)strtol(s, &end, 10);
        if (end == s || ctx[nc - 1] < 1)
            die("--ctx: a list of positive integers");
    }

    FILE *f = out ? fopen(out, "w") : NULL;
    if (out && !f)
        die("cannot write --out");
    struct utsname u;
    uname(&u);
    char cpu[128] = "unknown";
    FILE *ci = fopen("/proc/cpuinfo", "r");
    if (ci) {
        char line[256];
        while (fgets(line, sizeof line, ci))
            if (!strncmp(line, "model name", 10)) {
                char *v = strchr(line, ':');
                if (v) {
                    snprintf(cpu, sizeof cpu, "%s", v + 2);
                    cpu[strcspn(cpu, "\n")] = 0;
                }
                break;
            }
        fclose(ci);
    }
    const char *commit = getenv("SPARSED_COMMIT");
    char date[32];
    time_t tt = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d", gmtime(&tt));
    /* the machine may be shared: record how busy it was */
    double load[1] = {-1};
    getloadavg(load, 1);
    if (f)
        fprintf(f, "{\"bench\": \"cpu-decode\", \"commit\": \"%s\", \"date\": \"%s\", \"machine\": "
                "{\"host\": \"%s\", \"cpu\": \"%s\", \"cores\": %ld, \"threads\": %d, \"load1\": %.2f}, "
                "\"steps\": %d, \"rows\": [",
                commit ? commit : "unknown", date, u.nodename, cpu, sysconf(_SC_NPROCESSORS_ONLN),
                threads ? threads : (int)sysconf(_SC_NPROCESSORS_ONLN), load[0], steps);

    printf("%-12s %-7s %8s %12s %12s %8s\n", "model", "indexer", "context", "dense ms", "sparse ms", "ratio");
    double last_ratio[8] = {0};
    char label[8][64];
    int first = 1;
    for (int m = 0; m < n_models; m++) {
        const char *path = argv[optind + m];
        engine *de = open_engine(path, ATTN_DENSE, threads), *se = open_engine(path, ATTN_SPARSE, threads);
        const attn_config *a = engine_attn(se);
        const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
        snprintf(label[m], sizeof label[m], "%.*s", (int)strcspn(base, "."), base);
        const engine_info *in = engine_get_info(se);
        for (int i = 0; i < nc; i++) {
            double bd, bs;
            double td = time_decode(de, ctx[i], steps, &bd), ts = time_decode(se, ctx[i], steps, &bs);
            printf("%-12s %-7s %8d %12.2f %12.2f %7.2fx\n", label[m], idx_name(a->indexer), ctx[i], td * 1e3,
                   ts * 1e3, td / ts);
            fflush(stdout);
            if (f) {
                fprintf(f, "%s\n  {\"model\": \"%s\", \"heads\": %d, \"kv_heads\": %d, \"head_dim\": %d, "
                        "\"idx_dim\": %d, \"indexer\": \"%s\", \"block_size\": %d, \"top_k_blocks\": %d, "
                        "\"local_blocks\": %d, \"sink_blocks\": %d, \"context\": %d, \"dense_ms\": %.3f, "
                        "\"sparse_ms\": %.3f, \"dense_min_ms\": %.3f, \"sparse_min_ms\": %.3f, \"ratio\": %.3f}",
                        first ? "" : ",", label[m], in->n_heads, in->n_kv_heads, in->head_dim,
                        in->has_indexer ? se->m.idx_dim : 0, idx_name(a->indexer), a->block_size,
                        a->top_k_blocks, a->local_blocks, a->sink_blocks, ctx[i], td * 1e3, ts * 1e3, bd * 1e3,
                        bs * 1e3, td / ts);
                first = 0;
            }
            last_ratio[m] = td / ts;
        }
        engine_free(de);
        engine_free(se);
    }
    if (f) {
        fprintf(f, "\n]}\n");
        fclose(f);
    }
    printf("decode step at %d tokens, dense / sparse time:", ctx[nc - 1]);
    for (int m = 0; m < n_models; m++)
        printf("%s %s %.1fx", m ? "," : "", label[m], last_ratio[m]);
    printf("\n");
    return 0;
}
