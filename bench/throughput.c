/* CPU prefill and decode throughput of whole models, at 1 and 2 threads
 * (or those given).  Prints a table whose last line is the headline and
 * writes JSON rows to --out.
 *
 *   throughput --out FILE MODEL[:PREFILL] ...                            */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine.h"
#include "kvcache/kvcache.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct { double prefill_tps, decode_tps; } result;

static int run(const char *path, int threads, int n_prefill, int n_decode, result *r)
{
    engine_opts o = {.model_path = path, .n_threads = threads};
    attn_config_default(&o.attn);
    char err[256];
    engine *e = engine_create(&o, err, sizeof err);
    if (!e) {
        fprintf(stderr, "throughput: %s\n", err);
        return -1;
    }
    const engine_info *in = engine_get_info(e);
    kv_layout l = engine_kv_layout(e);
    kv_pool *p = kv_pool_create(&l, kv_pages_for(&l, n_prefill + n_decode) + 1, 1, err, sizeof err);
    int32_t *toks = malloc((size_t)(n_prefill + n_decode) * sizeof *toks);
    float *logits = malloc((size_t)in->n_vocab * sizeof *logits);
    if (!p || !toks || !logits) {
        fprintf(stderr, "throughput: out of memory\n");
        return -1;
    }
    unsigned s = 1;
    for (int i = 0; i < n_prefill + n_decode; i++) {
        s = s * 1103515245u + 12345u;
        toks[i] = 3 + (int)((s >> 8) % (unsigned)(in->n_vocab - 3));
    }
    kv_seq seq;
    kv_seq_init(&seq);
    kv_seq_reserve(p, &seq, n_prefill + n_decode);
    engine_seq es = {.n_past = 0, .n_new = n_prefill, .blocks = seq.pages, .n_blocks = seq.n_pages,
                     .logits = 1};
    engine_batch b = {.n_tokens = n_prefill, .tokens = toks, .n_seqs = 1, .seqs = &es};
    double t0 = now();
    if (engine_step(e, p, &b, logits, err, sizeof err) < 0)
        fprintf(stderr, "throughput: %s\n", err);
    double t1 = now();
    for (int i = 0; i < n_decode; i++) {
        es.n_past = n_prefill + i;
        es.n_new = 1;
        b.n_tokens = 1;
        b.tokens = toks + n_prefill + i;
        engine_step(e, p, &b, logits, err, sizeof err);
    }
    double t2 = now();
    r->prefill_tps = n_prefill / (t1 - t0);
    r->decode_tps = n_decode / (t2 - t1);
    kv_seq_release(p, &seq);
    kv_pool_free(p);
    free(toks);
    free(logits);
    engine_free(e);
    return 0;
}

int main(int argc, char **argv)
{
    const char *out = NULL;
    int first = 1;
    if (argc > 2 && !strcmp(argv[1], "--out")) {
        out = argv[2];
        first = 3;
    }
    if (first >= argc) {
        fprintf(stderr, "usage: throughput [--out FILE] MODEL[:PREFILL] ...\n");
        return 2;
    }
    FILE *jf = out ? fopen(out, "w") : NULL;
    if (out && !jf) {
        perror(out);
        return 1;
    }
    const char *commit = getenv("SPARSED_COMMIT");
    char host[128] = "";
    gethostname(host, sizeof host);
    time_t t = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%d", gmtime(&t));
    /* the machine may be shared: record how busy it was */
    double load = -1;
    FILE *lf = fopen("/proc/loadavg", "r");
    if (lf) {
        if (fscanf(lf, "%lf", &load) != 1)
            load = -1;
        fclose(lf);
    }
    if (jf)
        fprintf(jf, "{\"bench\":\"cpu-throughput\",\"date\":\"%s\",\"commit\":\"%s\",\"cpus\":%ld,"
                "\"loadavg_1m\":%.2f,\"rows\":[",
                date, commit ? commit : "", sysconf(_SC_NPROCESSORS_ONLN), load);
    printf("%-40s %7s %8s %14s %14s\n", "model", "threads", "prefill", "prefill tok/s", "decode tok/s");
    int rows = 0;
    double head_p = 0, head_d = 0;
    const char *head = "";
    for (int a = first; a < argc; a++) {
        char path[1024];
        snprintf(path, sizeof path, "%s", argv[a]);
        int n_prefill = 128;
        char *colon = strrchr(path, ':');
        if (colon) {
            *colon = 0;
            n_prefill = atoi(colon + 1);
        }
        for (int th = 1; th <= 2; th++) {
            result r;
            if (run(path, th, n_prefill, 64, &r))
                return 1;
            const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
            printf("%-40s %7d %8d %14.1f %14.1f\n", base, th, n_prefill, r.prefill_tps, r.decode_tps);
            if (jf)
                fprintf(jf, "%s{\"model\":\"%s\",\"threads\":%d,\"prefill_tokens\":%d,\"decode_tokens\":64,"
                        "\"prefill_tok_s\":%.2f,\"decode_tok_s\":%.2f}",
                        rows++ ? "," : "", base, th, n_prefill, r.prefill_tps, r.decode_tps);
            head = argv[a];
            head_p = r.prefill_tps;
            head_d = r.decode_tps;
        }
    }
    if (jf) {
        fputs("]}\n", jf);
        fclose(jf);
    }
    printf("headline: %s at 2 threads: prefill %.1f tok/s, decode %.1f tok/s\n", head, head_p, head_d);
    return 0;
}
