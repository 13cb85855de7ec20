/* Quality of block-sparse attention on a real model, on the CPU engine.
 *
 *   quality recall  --model M --text FILE [--ctx N] [--positions P]
 *                   [--blocks 16,32,64,128] [--budgets 0.125,0.25,0.5]
 *       One dense prefill of the text (every row's logits: dense perplexity)
 *       that records the queries of P positions in [ctx/2, ctx) at every
 *       layer.  Then for each block size the keys are laid out again in
 *       pages of that size (summaries kept by summary_update, as the engine
 *       does) and, per position, layer and KV group, the exact softmax
 *       attention mass of each block is compared with what sparse_select
 *       picks for every training-free config (indexer, group reduce, sink,
 *       local) at every budget (a fraction of the visible blocks).
 *       Recall = the mass on the chosen blocks, per query head.
 *
 *   quality ppl     --model M --text FILE [--ctx N] [attention options]
 *       Perplexity of the first ctx tokens, prefilled in chunks with every
 *       row's logits, under the given attention config.
 *
 *   quality passkey --model M [--ctx N] [--depths 10] [attention options]
 *       A pass key at evenly spaced depths of a filler text, asked for
 *       through the chat template; greedy answers, dense then sparse.
 *
 * Attention options: --attention --indexer --block-size --top-k-blocks
 * --budget F (top_k from a fraction of ctx) --local-blocks --sink-blocks
 * --group-reduce max|sum; --kv-fp8 rounds K/V as the cuda engine's fp8
 * pages hold them (engine_opts.kv_fp8_reference).  Every task writes a
 * JSON object to --out. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "engine/internal.h"
#include "engine/quant.h"
#include "kvcache/kvcache.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *msg)
{
    fprintf(stderr, "quality: %s\n", msg);
    exit(1);
}

/* ---- options ------------------------------------------------------------ */

typedef struct opts {
    const char *task, *model, *text, *out;
    int ctx, positions, chunk, threads, depths, kv_fp8;
    double budget;          /* > 0: top_k from this fraction of ctx's blocks */
    attn_config attn;
    int blocks[8], n_blocks;
    double budgets[8];
    int n_budgets;
} opts;

static int parse_list_i(const char *s, int *out, int max)
{
    int n = 0;
    for (char *end; *s && n < max; s = *end ? end + 1 : end) {
        out[n++] = (int)strtol(s, &end, 10);
        if (end == s)
            return -1;
    }
    return n;
}

static int parse_list_d(const char *s, double *out, int max)
{
    int n = 0;
    for (char *end; *s && n < max; s = *end ? end + 1 : end) {
        out[n++] = strtod(s, &end);
        if (end == s)
            return -1;
    }
    return n;
}

static void parse(opts *o, int argc, char **argv)
{
    enum { O_MODEL = 256, O_TEXT, O_OUT, O_CTX, O_POS, O_CHUNK, O_THREADS, O_DEPTHS, O_BUDGET,
           O_ATTN, O_INDEXER, O_BLOCK, O_TOPK, O_LOCAL, O_SINK, O_REDUCE, O_BLOCKS, O_BUDGETS, O_KVFP8 };
    static const struct option lo[] = {
        {"model", 1, 0, O_MODEL}, {"text", 1, 0, O_TEXT}, {"out", 1, 0, O_OUT},
        {"ctx", 1, 0, O_CTX}, {"positions", 1, 0, O_POS}, {"chunk", 1, 0, O_CHUNK},
        {"threads", 1, 0, O_THREADS}, {"depths", 1, 0, O_DEPTHS}, {"budget", 1, 0, O_BUDGET},
        {"attention", 1, 0, O_ATTN}, {"indexer", 1, 0, O_INDEXER}, {"block-size", 1, 0, O_BLOCK},
        {"top-k-blocks", 1, 0, O_TOPK}, {"local-blocks", 1, 0, O_LOCAL},
        {"sink-blocks", 1, 0, O_SINK}, {"group-reduce", 1, 0, O_REDUCE},
        {"blocks", 1, 0, O_BLOCKS}, {"budgets", 1, 0, O_BUDGETS}, {"kv-fp8", 0, 0, O_KVFP8}, {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    o->ctx = 8192;
    o->positions = 32;
    o->chunk = 512;
    o->depths = 10;
    attn_config_default(&o->attn);
    o->n_blocks = parse_list_i("16,32,64,128", o->blocks, 8);
    o->n_budgets = parse_list_d("0.125,0.25,0.5", o->budgets, 8);
    if (argc < 2)
        die("usage: quality recall|ppl|passkey --model M [--text FILE] [options] (see the source)");
    o->task = argv[1];
    optind = 2;
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case O_MODEL: o->model = optarg; break;
        case O_TEXT: o->text = optarg; break;
        case O_OUT: o->out = optarg; break;
        case O_CTX: o->ctx = atoi(optarg); break;
        case O_POS: o->positions = atoi(optarg); break;
        case O_CHUNK: o->chunk = atoi(optarg); break;
        case O_THREADS: o->threads = atoi(optarg); break;
        case O_DEPTHS: o->depths = atoi(optarg); break;
        case O_BUDGET: o->budget = atof(optarg); break;
        case O_KVFP8: o->kv_fp8 = 1; break;
        case O_ATTN:
            if ((o->attn.mode = attn_mode_parse(optarg)) < 0)
                die("--attention: dense, sparse or auto");
            break;
        case O_INDEXER:
            if ((o->attn.indexer = attn_indexer_parse(optarg)) < 0)
                die("--indexer: msa, minmax or mean");
            break;
        case O_BLOCK: o->attn.block_size = atoi(optarg); break;
        case O_TOPK: o->attn.top_k_blocks = atoi(optarg); break;
        case O_LOCAL: o->attn.local_blocks = atoi(optarg); break;
        case O_SINK: o->attn.sink_blocks = atoi(optarg); break;
        case O_REDUCE:
            if (!strcmp(optarg, "max"))
                o->attn.group_reduce = GROUP_MAX;
            else if (!strcmp(optarg, "sum"))
                o->attn.group_reduce = GROUP_SUM;
            else
                die("--group-reduce: max or sum");
            break;
        case O_BLOCKS:
            if ((o->n_blocks = parse_list_i(optarg, o->blocks, 8)) < 1)
                die("--blocks: a list like 16,32,64");
            break;
        case O_BUDGETS:
            if ((o->n_budgets = parse_list_d(optarg, o->budgets, 8)) < 1)
                die("--budgets: a list like 0.125,0.25");
            break;
        default: die("unknown option");
        }
    }
    if (!o->model)
        die("--model is required");
    if (o->ctx < 256 || o->chunk < 1 || o->positions < 1 || o->depths < 1)
        die("--ctx >= 256, --chunk, --positions and --depths >= 1");
}

static engine *open_engine(const opts *o, const attn_config *c)
{
    engine_opts eo = {.model_path = o->model, .n_threads = o->threads, .attn = *c, .kv_fp8_reference = o->kv_fp8};
    char err[256];
    engine *e = engine_create(&eo, err, sizeof err);
    if (!e)
        die(err);
    return e;
}

/* The sparse config of the options: a --budget fraction of the blocks of
 * ctx tokens sets top_k (after sink and local). */
static attn_config sparse_config(const opts *o, int ctx)
{
    attn_config c = o->attn;
    if (o->budget > 0) {
        int B = c.block_size > 0 ? c.block_size : 64;
        int sink = c.sink_blocks >= 0 ? c.sink_blocks : 1, local = c.local_blocks > 0 ? c.local_blocks : 2;
        int total = (int)lround(o->budget * ctx / B);
        c.block_size = B;
        c.sink_blocks = sink;
        c.local_blocks = local;
        c.top_k_blocks = total - sink - local > 0 ? total - sink - local : 1;
    }
    return c;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (!s || fread(s, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(s);
        return NULL;
    }
    fclose(f);
    s[n] = 0;
    *len = (size_t)n;
    return s;
}

/* The first ctx tokens of the text (fewer if it is shorter). */
static int32_t *tokenize_text(engine *e, const char *path, int ctx, int *n)
{
    size_t len;
    char *text = read_file(path, &len);
    if (!text)
        die("cannot read --text");
    const engine_info *in = engine_get_info(e);
    int cap = (int)len + 2;
    int32_t *t = malloc((size_t)cap * sizeof *t);
    int k = engine_tokenize(e, text, len, in->add_bos, 0, t, cap);
    free(text);
    if (k < 0)
        die("the text does not tokenize");
    *n = k < ctx ? k : ctx;
    return t;
}

/* ---- prefill with every row's logits: NLL of each next token ------------ */

typedef struct nll_acc {
    double sum, sum_late;   /* late: targets at positions >= from */
    long n, n_late;
    int from;
} nll_acc;

static double row_nll(const float *row, int V, int target)
{
    float mx = row[0];
    for (int i = 1; i < V; i++)
        mx = row[i] > mx ? row[i] : mx;
    double s = 0;
    for (int i = 0; i < V; i++)
        s += exp((double)row[i] - mx);
    return log(s) + mx - row[target];
}

/* Prefills toks[0..n) in chunks into a fresh sequence of pool; adds the
 * NLL of toks[1..n) to acc (when acc is given). */
static void prefill(engine *e, kv_pool *pool, kv_seq *s, const int32_t *toks, int n, int chunk,
                    nll_acc *acc)
{
    int V = engine_get_info(e)->n_vocab;
    float *rows = acc ? malloc((size_t)chunk * V * sizeof(float)) : malloc((size_t)V * sizeof(float));
    if (!rows)
        die("out of memory for logits");
    char err[256];
    for (int done = 0; done < n;) {
        int k = n - done < chunk ? n - done : chunk;
        if (kv_seq_reserve(pool, s, done + k))
            die("KV pool too small");
        engine_seq es = {.n_past = done, .n_new = k, .blocks = s->pages, .n_blocks = s->n_pages,
                         .logits = acc ? 2 : 1};
        engine_batch b = {.n_tokens = k, .tokens = toks + done, .n_seqs = 1, .seqs = &es};
        if (engine_step(e, pool, &b, rows, err, sizeof err) < 0)
            die(err);
        if (acc)
            for (int r = 0; r < k; r++) {
                int pos = done + r;
                if (pos + 1 >= n)
                    break;
                double l = row_nll(rows + (size_t)r * V, V, toks[pos + 1]);
                acc->sum += l;
                acc->n++;
                if (pos + 1 >= acc->from) {
                    acc->sum_late += l;
                    acc->n_late++;
                }
            }
        done += k;
        fprintf(stderr, "\r  prefill %d/%d", done, n);
    }
    fprintf(stderr, "\n");
    free(rows);
}

static kv_pool *make_pool(const kv_layout *l, int n_tokens)
{
    char err[256];
    kv_pool *p = kv_pool_create(l, kv_pages_for(l, n_tokens) + 1, 1, err, sizeof err);
    if (!p)
        die(err);
    return p;
}

static FILE *open_out(const opts *o)
{
    if (!o->out)
        return NULL;
    FILE *f = fopen(o->out, "w");
    if (!f)
        die("cannot write --out");
    return f;
}

static const char *indexer_name(int i)
{
    return i == IDX_MSA ? "msa" : i == IDX_MINMAX ? "minmax" : "mean";
}

/* ---- recall ------------------------------------------------------------- */

typedef struct cfgp {
    int indexer, reduce, sink, local;
    int budget;             /* index into opts.budgets */
} cfgp;

typedef struct recall_ctx {
    const opts *o;
    engine *e;
    int L, Hq, Hkv, D, n;
    int np, *pos;           /* sampled positions */
    float *q;               /* [np][L][Hq*D] captured queries */
    /* analysis of one block size */
    kv_pool *pool;
    int32_t *blocks;
    int B;
    cfgp *cf;
    int ncf;
    float *res;             /* [np*L][Hkv][ncf] recall; then oracle [n_budgets] */
    float *frac;            /* [np*L][Hkv][ncf] fraction of tokens attended */
} recall_ctx;

static void capture(void *ctx, kv_pool *pool, const engine_batch *b, int layer, const float *q,
                    const float *iq)
{
    (void)pool;
    (void)iq;
    recall_ctx *r = ctx;
    const engine_seq *s = &b->seqs[0];
    int QD = r->Hq * r->D;
    for (int i = 0; i < r->np; i++) {
        int t = r->pos[i] - s->n_past;
        if (t >= 0 && t < s->n_new)
            memcpy(r->q + ((size_t)i * r->L + layer) * QD, q + (size_t)(s->tok_offset + t) * QD,
                   (size_t)QD * sizeof(float));
    }
}

static int by_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static int budget_topk(double f, int nb, int sink, int local)
{
    int total = (int)lround(f * nb);
    int k = total - sink - local;
    return k > 0 ? k : 1;
}

/* One (position, layer): exact attention mass per block of every query
 * head, then every config's selection. */
static void recall_task(void *ctx, int task, int thread)
{
    (void)thread;
    recall_ctx *r = ctx;
    const opts *o = r->o;
    int pi = task / r->L, l = task % r->L;
    int pos = r->pos[pi], B = r->B, nb = pos / B + 1;
    int hpg = r->Hq / r->Hkv, D = r->D, nbud = o->n_budgets;
    float scale = 1.0f / sqrtf((float)D);
    double *mass = malloc((size_t)(hpg + 2) * nb * sizeof(double));
    double *gm = mass + (size_t)hpg * nb, *sorted = gm + nb;
    float *sc = malloc((size_t)(pos + 1) * sizeof(float));
    int32_t *sel = malloc((size_t)nb * sizeof(int32_t));
    if (!mass || !sc || !sel)
        abort();
    const float *qa = r->q + ((size_t)pi * r->L + l) * r->Hq * D;
    for (int g = 0; g < r->Hkv; g++) {
        const float *qg = qa + (size_t)g * hpg * D;
        for (int h = 0; h < hpg; h++) {
            float mx = -INFINITY;
            for (int j = 0; j <= pos; j++) {
                const float *k = kv_page_k(r->pool, r->blocks[j / B], l) + ((size_t)g * B + j % B) * D;
                sc[j] = dot_f32(qg + (size_t)h * D, k, D) * scale;
                mx = sc[j] > mx ? sc[j] : mx;
            }
            double tot = 0;
            double *mh = mass + (size_t)h * nb;
            memset(mh, 0, (size_t)nb * sizeof(double));
            for (int j = 0; j <= pos; j++) {
                double p = exp((double)sc[j] - mx);
                mh[j / B] += p;
                tot += p;
            }
            for (int b = 0; b < nb; b++)
                mh[b] /= tot;
        }
        for (int b = 0; b < nb; b++) {
            gm[b] = 0;
            for (int h = 0; h < hpg; h++)
                gm[b] += mass[(size_t)h * nb + b] / hpg;
        }
        size_t base = ((size_t)task * r->Hkv + g) * (r->ncf + nbud);
        for (int c = 0; c < r->ncf; c++) {
            const cfgp *p = &r->cf[c];
            attn_config ac = r->e->attn;
            ac.mode = ATTN_SPARSE;
            ac.indexer = p->indexer;
            ac.group_reduce = p->reduce;
            ac.block_size = B;
            ac.sink_blocks = p->sink;
            ac.local_blocks = p->local;
            ac.top_k_blocks = budget_topk(o->budgets[p->budget], nb, p->sink, p->local);
            sel_args a = {.pool = r->pool, .cfg = &ac, .layer = l, .blocks = r->blocks, .pos = pos,
                          .group = g, .q = qg, .n_q = hpg, .head_dim = D};
            int n = sparse_select(&a, sel);
            double rec = 0;
            int toks = 0;
            for (int i = 0; i < n; i++) {
                rec += gm[sel[i]];
                toks += sel[i] == nb - 1 ? pos % B + 1 : B;
            }
            r->res[base + c] = (float)rec;
            r->frac[base + c] = (float)toks / (float)(pos + 1);
        }
        /* oracle: the best shared choice of as many blocks as sink 1 +
         * local 2 + top_k (the grid's largest forced set) */
        memcpy(sorted, gm, (size_t)nb * sizeof(double));
        qsort(sorted, (size_t)nb, sizeof(double), by_desc);
        for (int bi = 0; bi < nbud; bi++) {
            int cnt = 3 + budget_topk(o->budgets[bi], nb, 1, 2);
            double rec = 0;
            for (int i = 0; i < cnt && i < nb; i++)
                rec += sorted[i];
            r->res[base + r->ncf + bi] = (float)rec;
        }
    }
    free(mass);
    free(sc);
    free(sel);
}

static int by_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

static void task_recall(const opts *o)
{
    if (!o->text)
        die("recall needs --text");
    /* dense prefill in the smallest pages; summaries on so the layout has them */
    attn_config dc = o->attn;
    dc.mode = ATTN_DENSE;
    dc.indexer = IDX_MINMAX;
    dc.block_size = 16;
    engine *e = open_engine(o, &dc);
    const engine_info *in = engine_get_info(e);
    recall_ctx r = {.o = o, .e = e, .L = in->n_layers, .Hq = in->n_heads, .Hkv = in->n_kv_heads,
                    .D = in->head_dim};
    int32_t *toks = tokenize_text(e, o->text, o->ctx, &r.n);
    r.np = o->positions;
    r.pos = malloc((size_t)r.np * sizeof(int));
    int from = r.n / 2;
    for (int i = 0; i < r.np; i++)
        r.pos[i] = r.np == 1 ? r.n - 1 : from + (int)((long)i * (r.n - 1 - from) / (r.np - 1));
    r.q = calloc((size_t)r.np * r.L * r.Hq * r.D, sizeof(float));
    kv_layout l16 = engine_kv_layout(e);
    kv_pool *p16 = make_pool(&l16, r.n);
    kv_seq s16;
    kv_seq_init(&s16);
    e->attn_probe = capture;
    e->attn_probe_ctx = &r;
    nll_acc dense = {.from = from};
    double t0 = now();
    fprintf(stderr, "recall: dense prefill of %d tokens, %d positions in [%d, %d)\n", r.n, r.np, from, r.n);
    prefill(e, p16, &s16, toks, r.n, o->chunk, &dense);
    double t_prefill = now() - t0;
    e->attn_probe = NULL;

    /* the config grid */
    r.ncf = 0;
    r.cf = malloc((size_t)2 * 2 * 2 * 2 * o->n_budgets * sizeof(cfgp));
    for (int ix = IDX_MINMAX; ix <= IDX_MEAN; ix++)
        for (int red = 0; red < 2; red++)
            for (int sink = 0; sink < 2; sink++)
                for (int local = 1; local <= 2; local++)
                    for (int bu = 0; bu < o->n_budgets; bu++)
                        r.cf[r.ncf++] = (cfgp){ix, red, sink, local, bu};
    int ntask = r.np * r.L;
    size_t per = (size_t)ntask * r.Hkv * (r.ncf + o->n_budgets);
    r.res = malloc(per * sizeof(float));
    r.frac = malloc(per * sizeof(float));
    float *tmp = malloc((size_t)ntask * r.Hkv * sizeof(float));

    FILE *out = open_out(o);
    if (out)
        fprintf(out, "{\"task\": \"recall\", \"model\": \"%s\", \"tokens\": %d, \"positions\": %d, "
                "\"from\": %d, \"layers\": %d, \"dense_ppl\": %.4f, \"dense_ppl_late\": %.4f, "
                "\"prefill_s\": %.1f, \"rows\": [", in->name, r.n, r.np, from, r.L,
                exp(dense.sum / dense.n), exp(dense.sum_late / dense.n_late), t_prefill);
    printf("dense perplexity %.4f (positions >= %d: %.4f), prefill %.0f s\n",
           exp(dense.sum / dense.n), from, exp(dense.sum_late / dense.n_late), t_prefill);
    printf("%5s %7s %7s %6s %5s %6s %8s %8s %8s %8s\n", "B", "budget", "indexer", "reduce", "sink",
           "local", "recall", "p10", "tokens", "oracle");
    int first_row = 1;
    for (int bi = 0; bi < o->n_blocks; bi++) {
        int B = o->blocks[bi];
        kv_layout lb = l16;
        lb.block_size = B;
        kv_pool *pb = make_pool(&lb, r.n);
        kv_seq sb;
        kv_seq_init(&sb);
        if (kv_seq_reserve(pb, &sb, r.n))
            die("pool");
        /* K laid out again in pages of B, summaries as the engine keeps them */
        for (int l = 0; l < r.L; l++)
            for (int j = 0; j < r.n; j++)
                for (int g = 0; g < r.Hkv; g++) {
                    const float *k = kv_page_k(p16, s16.pages[j / 16], l) + ((size_t)g * 16 + j % 16) * r.D;
                    float *dst = kv_page_k(pb, sb.pages[j / B], l) + ((size_t)g * B + j % B) * r.D;
                    memcpy(dst, k, (size_t)r.D * sizeof(float));
                    summary_update(kv_page_summary(pb, sb.pages[j / B], l) + (size_t)g * 3 * r.D, k, j % B, r.D);
                }
        r.pool = pb;
        r.blocks = sb.pages;
        r.B = B;
        t0 = now();
        tpool_run(e->pool, recall_task, &r, ntask);
        fprintf(stderr, "recall: B=%d analysed in %.0f s\n", B, now() - t0);
        for (int c = 0; c < r.ncf + o->n_budgets; c++) {
            int oracle = c >= r.ncf;
            int bud = oracle ? c - r.ncf : r.cf[c].budget;
            double sum = 0, fsum = 0, osum = 0;
            int m = 0;
            for (int t = 0; t < ntask; t++)
                for (int g = 0; g < r.Hkv; g++) {
                    size_t at = ((size_t)t * r.Hkv + g) * (r.ncf + o->n_budgets);
                    float v = r.res[at + c];
                    sum += v;
                    fsum += oracle ? 0 : r.frac[at + c];
                    osum += r.res[at + r.ncf + bud];
                    tmp[m++] = v;
                }
            qsort(tmp, (size_t)m, sizeof(float), by_float);
            double mean = sum / m, p10 = tmp[m / 10], ftok = fsum / m, orc = osum / m;
            if (oracle) {
                printf("%5d %7.3f %7s %6s %5s %6s %8.4f %8.4f %8s %8.4f\n", B, o->budgets[bud], "oracle",
                       "-", "1", "2", mean, p10, "-", orc);
            } else {
                const cfgp *p = &r.cf[c];
                printf("%5d %7.3f %7s %6s %5d %6d %8.4f %8.4f %8.4f %8.4f\n", B, o->budgets[bud],
                       indexer_name(p->indexer), p->reduce ? "sum" : "max", p->sink, p->local, mean, p10,
                       ftok, orc);
            }
            if (out) {
                fprintf(out, "%s\n  {\"block_size\": %d, \"budget\": %g, \"indexer\": \"%s\", "
                        "\"group_reduce\": \"%s\", \"sink\": %d, \"local\": %d, \"recall\": %.5f, "
                        "\"recall_p10\": %.5f, \"tokens_frac\": %.5f, \"oracle\": %.5f}",
                        first_row ? "" : ",", B, o->budgets[bud],
                        oracle ? "oracle" : indexer_name(r.cf[c].indexer),
                        oracle ? "-" : r.cf[c].reduce ? "sum" : "max", oracle ? 1 : r.cf[c].sink,
                        oracle ? 2 : r.cf[c].local, mean, p10, oracle ? 0 : ftok, orc);
                first_row = 0;
            }
        }
        kv_seq_release(pb, &sb);
        kv_pool_free(pb);
    }
    if (out) {
        fprintf(out, "\n]}\n");
        fclose(out);
    }
    free(tmp);
    free(r.res);
    free(r.frac);
    free(r.cf);
    free(r.q);
    free(r.pos);
    free(toks);
    kv_seq_release(p16, &s16);
    kv_pool_free(p16);
    engine_free(e);
}

/* ---- perplexity ----------------------------------------------------------- */

static void print_config(FILE *f, const attn_config *c)
{
    fprintf(f, "{\"mode\": \"%s\", \"indexer\": \"%s\", \"block_size\": %d, \"top_k_blocks\": %d, "
            "\"local_blocks\": %d, \"sink_blocks\": %d, \"group_reduce\": \"%s\", "
            "\"sparse_min_context\": %d}",
            c->mode == ATTN_SPARSE ? "sparse" : "dense", indexer_name(c->indexer), c->block_size,
            c->top_k_blocks, c->local_blocks, c->sink_blocks, c->group_reduce ? "sum" : "max",
            c->sparse_min_context);
}

static void task_ppl(const opts *o)
{
    if (!o->text)
        die("ppl needs --text");
    attn_config c = sparse_config(o, o->ctx);
    engine *e = open_engine(o, &c);
    int n;
    int32_t *toks = tokenize_text(e, o->text, o->ctx, &n);
    kv_layout l = engine_kv_layout(e);
    kv_pool *p = make_pool(&l, n);
    kv_seq s;
    kv_seq_init(&s);
    nll_acc acc = {.from = n / 2};
    double t0 = now();
    prefill(e, p, &s, toks, n, o->chunk, &acc);
    double t = now() - t0;
    const attn_config *rc = engine_attn(e);
    double ppl = exp(acc.sum / acc.n), late = exp(acc.sum_late / acc.n_late);
    printf("%-6s %-6s B=%-3d top_k=%-4d local=%d sink=%d reduce=%s%s  ppl %.4f  (positions >= %d: %.4f)  %.0f s\n",
           rc->mode == ATTN_SPARSE ? "sparse" : "dense", indexer_name(rc->indexer), rc->block_size,
           rc->top_k_blocks, rc->local_blocks, rc->sink_blocks, rc->group_reduce ? "sum" : "max",
           o->kv_fp8 ? " kv fp8" : "", ppl, acc.from, late, t);
    FILE *out = open_out(o);
    if (out) {
        fprintf(out, "{\"task\": \"ppl\", \"model\": \"%s\", \"tokens\": %d, \"config\": ",
                engine_get_info(e)->name, n);
        print_config(out, rc);
        fprintf(out, ", \"kv_fp8\": %s, \"budget\": %g, \"ppl\": %.5f, \"ppl_late\": %.5f, \"late_from\": %d, "
                "\"seconds\": %.1f}\n", o->kv_fp8 ? "true" : "false", o->budget, ppl, late, acc.from, t);
        fclose(out);
    }
    kv_seq_release(p, &s);
    kv_pool_free(p);
    free(toks);
    engine_free(e);
}

/* ---- passkey -------------------------------------------------------------- */

/* The prompt is built from token pieces (header, filler sentence, needle,
 * question), so every depth's prompt starts with the same header + filler
 * tokens and the filler before the needle is prefilled once per engine. */
typedef struct pk_pieces {
    int32_t *head, *fill, *tail;
    int n_head, n_fill, n_tail;
} pk_pieces;

static int32_t *tok_piece(engine *e, const char *text, int bos, int *n)
{
    int cap = (int)strlen(text) + 8;
    int32_t *t = malloc((size_t)cap * sizeof *t);
    *n = engine_tokenize(e, text, strlen(text), bos, 1, t, cap);
    if (*n < 0 || *n > cap)
        die("passkey text does not tokenize");
    return t;
}

static void pk_make(engine *e, pk_pieces *pp)
{
    chat_msg m = {.role = "user",
                  .content = "There is an important piece of information hidden inside a lot of irrelevant "
                             "text. Find it and memorize it. I will ask you about it.\n\n\x01\n\n"
                             "What is the pass key?"};
    char err[256];
    char *chat = engine_chat_render(e, &m, 1, 1, err, sizeof err);
    if (!chat)
        die(err);
    char *cut = strchr(chat, '\x01');
    if (!cut)
        die("chat template lost the placeholder");
    *cut = 0;
    pp->head = tok_piece(e, chat, engine_get_info(e)->add_bos, &pp->n_head);
    /* start the answer so a small model stays on format */
    size_t tl = strlen(cut + 1);
    char *tail = malloc(tl + 32);
    sprintf(tail, "%sThe pass key is", cut + 1);
    pp->tail = tok_piece(e, tail, 0, &pp->n_tail);
    pp->fill = tok_piece(e, "The grass is green. The sky is blue. The sun is yellow. Here we go. "
                            "There and back again. ", 0, &pp->n_fill);
    free(tail);
    free(chat);
}

static void pk_free(pk_pieces *pp)
{
    free(pp->head);
    free(pp->fill);
    free(pp->tail);
}

/* dst shares src's full pages of its first n tokens and copies the partial one. */
static void fork_seq(kv_pool *p, const kv_seq *src, int n, kv_seq *dst)
{
    const kv_layout *l = kv_pool_layout(p);
    kv_seq_init(dst);
    if (kv_seq_reserve(p, dst, n))
        die("pool");
    int full = n / l->block_size;
    for (int i = 0; i < full; i++) {
        kv_page_unref(p, dst->pages[i]);
        kv_page_ref(p, src->pages[i]);
        dst->pages[i] = src->pages[i];
    }
    if (n % l->block_size)
        memcpy(kv_page_base(p, dst->pages[full]), kv_page_base(p, src->pages[full]), kv_page_bytes(l));
}

/* Runs toks[0..n) after n_past tokens already in s; returns the last row's
 * greedy token. */
static int32_t feed(engine *e, kv_pool *p, kv_seq *s, int n_past, const int32_t *toks, int n, int chunk,
                    float *logits)
{
    char err[256];
    int V = engine_get_info(e)->n_vocab;
    for (int done = 0; done < n;) {
        int k = n - done < chunk ? n - done : chunk;
        if (kv_seq_reserve(p, s, n_past + done + k))
            die("pool");
        engine_seq es = {.n_past = n_past + done, .n_new = k, .blocks = s->pages, .n_blocks = s->n_pages,
                         .logits = 1};
        engine_batch b = {.n_tokens = k, .tokens = toks + done, .n_seqs = 1, .seqs = &es};
        if (engine_step(e, p, &b, logits, err, sizeof err) < 0)
            die(err);
        done += k;
    }
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

typedef struct pk_run {
    engine *e;
    kv_pool *pool;
    kv_seq base;            /* header + filler before the current depth */
    int n_base;
    float *logits;
} pk_run;

/* The greedy answer to the prompt with the key after `depth` of `total`
 * filler sentences (depths come in increasing order): its first number. */
static int pk_answer(pk_run *r, const pk_pieces *pp, int total, int depth, int key, int chunk,
                     char *text, int cap, int *n_prompt)
{
    if (!r->n_base) {
        feed(r->e, r->pool, &r->base, 0, pp->head, pp->n_head, chunk, r->logits);
        r->n_base = pp->n_head;
    }
    while (r->n_base < pp->n_head + depth * pp->n_fill) {
        feed(r->e, r->pool, &r->base, r->n_base, pp->fill, pp->n_fill, chunk, r->logits);
        r->n_base += pp->n_fill;
    }
    /* the rest of the prompt: needle, remaining filler, question */
    char needle[128];
    snprintf(needle, sizeof needle, "The pass key is %d. Remember it. %d is the pass key. ", key, key);
    int n_needle;
    int32_t *nt = tok_piece(r->e, needle, 0, &n_needle);
    int n_rest = n_needle + (total - depth) * pp->n_fill + pp->n_tail;
    int32_t *rest = malloc((size_t)n_rest * sizeof *rest);
    int k = 0;
    memcpy(rest, nt, (size_t)n_needle * sizeof *rest);
    k += n_needle;
    for (int i = depth; i < total; i++, k += pp->n_fill)
        memcpy(rest + k, pp->fill, (size_t)pp->n_fill * sizeof *rest);
    memcpy(rest + k, pp->tail, (size_t)pp->n_tail * sizeof *rest);
    free(nt);

    kv_seq s;
    fork_seq(r->pool, &r->base, r->n_base, &s);
    int32_t tok = feed(r->e, r->pool, &s, r->n_base, rest, n_rest, chunk, r->logits);
    int pos = r->n_base + n_rest;
    *n_prompt = pos;
    int len = 0;
    for (int i = 0; i < 10 && !engine_is_eog(r->e, tok); i++) {
        len += engine_token_bytes(r->e, tok, 0, text + len, cap - len - 1);
        tok = feed(r->e, r->pool, &s, pos++, &tok, 1, 1, r->logits);
    }
    text[len] = 0;
    kv_seq_release(r->pool, &s);
    free(rest);
    const char *d = text;
    while (*d && (*d < '0' || *d > '9'))
        d++;
    return *d ? atoi(d) : -1;
}

static void pk_open(pk_run *r, const opts *o, const attn_config *c)
{
    memset(r, 0, sizeof *r);
    r->e = open_engine(o, c);
    kv_layout l = engine_kv_layout(r->e);
    /* the base, one fork and room for the answer */
    int pages = 2 * kv_pages_for(&l, o->ctx + 64) + 4;
    char err[256];
    r->pool = kv_pool_create(&l, pages, 1, err, sizeof err);
    if (!r->pool)
        die(err);
    kv_seq_init(&r->base);
    r->logits = malloc((size_t)engine_get_info(r->e)->n_vocab * sizeof(float));
}

static void pk_close(pk_run *r)
{
    kv_seq_release(r->pool, &r->base);
    kv_pool_free(r->pool);
    free(r->logits);
    engine_free(r->e);
}

static void task_passkey(const opts *o)
{
    attn_config dc = o->attn;
    dc.mode = ATTN_DENSE;
    attn_config sc = sparse_config(o, o->ctx);
    sc.mode = ATTN_SPARSE;
    pk_run dr, sr;
    pk_open(&dr, o, &dc);
    pk_open(&sr, o, &sc);
    pk_pieces pp;
    pk_make(dr.e, &pp);
    int needle_est = 24;
    int total = (o->ctx - pp.n_head - pp.n_tail - needle_est) / pp.n_fill;
    const attn_config *rc = engine_attn(sr.e);
    printf("passkey: %d filler sentences, sparse %s B=%d top_k=%d local=%d sink=%d reduce=%s\n", total,
           indexer_name(rc->indexer), rc->block_size, rc->top_k_blocks, rc->local_blocks, rc->sink_blocks,
           rc->group_reduce ? "sum" : "max");
    printf("%6s %7s %7s %10s %10s\n", "depth", "tokens", "key", "dense", "sparse");
    FILE *out = open_out(o);
    if (out) {
        fprintf(out, "{\"task\": \"passkey\", \"model\": \"%s\", \"config\": ", engine_get_info(sr.e)->name);
        print_config(out, rc);
        fprintf(out, ", \"kv_fp8\": %s, \"budget\": %g, \"runs\": [", o->kv_fp8 ? "true" : "false", o->budget);
    }
    uint64_t seed = 0x5eed;
    int ok_d = 0, ok_s = 0, n_tok = 0;
    double t0 = now();
    for (int i = 0; i < o->depths; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        int key = 10000 + (int)((seed >> 33) % 90000);
        int depth = (int)((long)total * i / o->depths);
        char td[256], ts[256];
        int ad = pk_answer(&dr, &pp, total, depth, key, o->chunk, td, sizeof td, &n_tok);
        int as = pk_answer(&sr, &pp, total, depth, key, o->chunk, ts, sizeof ts, &n_tok);
        ok_d += ad == key;
        ok_s += as == key;
        printf("%5d%% %7d %7d %10d %10d\n", 100 * i / o->depths, n_tok, key, ad, as);
        fflush(stdout);
        if (out)
            fprintf(out, "%s\n  {\"depth\": %.2f, \"tokens\": %d, \"key\": %d, \"dense\": %d, \"sparse\": %d}",
                    i ? "," : "", (double)i / o->depths, n_tok, key, ad, as);
    }
    printf("passkey at %d tokens: dense %d/%d, sparse %d/%d (%.0f s)\n", n_tok, ok_d, o->depths, ok_s,
           o->depths, now() - t0);
    if (out) {
        fprintf(out, "\n], \"tokens\": %d, \"dense_ok\": %d, \"sparse_ok\": %d, \"depths\": %d}\n", n_tok,
                ok_d, ok_s, o->depths);
        fclose(out);
    }
    pk_free(&pp);
    pk_close(&dr);
    pk_close(&sr);
}

int main(int argc, char **argv)
{
    opts o;
    parse(&o, argc, argv);
    if (!strcmp(o.task, "recall"))
        task_recall(&o);
    else if (!strcmp(o.task, "ppl"))
        task_ppl(&o);
    else if (!strcmp(o.task, "passkey"))
        task_passkey(&o);
    else
        die("task: recall, ppl or passkey");
    return 0;
}
