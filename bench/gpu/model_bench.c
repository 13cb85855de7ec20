/* gpu_model_bench: whole-model throughput of the engine on one device.
 *
 *   gpu_model_bench --model PATH [--device cuda|cpu] [--dtype bf16|f32]
 *                   [--prompt N] [--batches 1,8,32] [--steps N] [--label S]
 *   gpu_model_bench --model PATH --context N [--chunk C] [--attention dense|sparse]
 *                   [--index-keys bf16|fp8] [--kv-cache-dtype bf16|fp8] [--steps N] [--max-seconds S] [--label S]
 *                   [--probe-chunks 128,512,...]
 *
 * For each batch size: that many sequences of N random prompt tokens are
 * prefilled in one ragged batch (run twice: the second is timed, so
 * allocation and first-launch costs stay out), then decoded greedily for
 * `steps` steps, all sequences in each step (engine_step_greedy: on the
 * GPU the argmax runs on the device).  Two untimed decode steps warm up
 * first.
 * Prints a table, then one JSON line per batch size.
 *
 * With --context: one sequence of N random tokens prefilled C tokens per
 * engine_step (as the scheduler chunks a long prompt), then `steps` greedy
 * decode steps at that length.  Prints a progress line per chunk and one
 * JSON line; past --max-seconds of prefill it stops and reports the
 * tokens done (partial: true).  --probe-chunks then times steps that
 * prefill that many more tokens at the end of the context (each repeated,
 * the same positions rewritten): what a chunk of a long prompt costs the
 * step, i.e. the other streams' inter-token time while it is prefilled;
 * one JSON line per size. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "kvcache/kvcache.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what, const char *err)
{
    fprintf(stderr, "gpu_model_bench: %s: %s\n", what, err);
    exit(2);
}

/* Long-context mode: chunked prefill of one sequence, then decode. */
#define MAX_PROBES 16

/* Steps of p new tokens after the n_ctx already in seq, each size timed
 * `reps` times after one untimed step (the positions are rewritten). */
static void probe_chunks(engine *e, kv_seq *seq, kv_pool *pool, int32_t *toks, int n_ctx, const int *probes,
                         int n_probes, const char *label)
{
    char err[512];
    const int reps = 5;
    int32_t id;
    for (int k = 0; k < n_probes; k++) {
        double best = 1e30, sum = 0;
        for (int r = 0; r <= reps; r++) {
            engine_seq es = {.n_past = n_ctx, .n_new = probes[k], .tok_offset = 0, .blocks = seq->pages,
                             .n_blocks = seq->n_pages, .logits = 1};
            engine_batch b = {.n_tokens = probes[k], .tokens = toks + n_ctx, .n_seqs = 1, .seqs = &es};
            double t0 = now();
            if (engine_step_greedy(e, pool, &b, &id, err, sizeof err) != 1)
                die("probe", err);
            double t = now() - t0;
            if (r > 0) {
                sum += t;
                best = t < best ? t : best;
            }
        }
        printf("JSON {\"label\":\"%s\",\"probe_at\":%d,\"chunk\":%d,\"step_ms_mean\":%.3f,\"step_ms_min\":%.3f,"
               "\"tok_s\":%.1f}\n",
               label, n_ctx, probes[k], 1e3 * sum / reps, 1e3 * best, probes[k] * reps / sum);
        fflush(stdout);
    }
}

static int long_context(engine *e, int n_ctx, int chunk, int steps, double max_s, const char *label,
                        const engine_opts *o, const int *probes, int n_probes)
{
    char err[512];
    const engine_info *in = engine_get_info(e);
    const attn_config *ac = engine_attn(e);
    kv_layout lay = engine_kv_layout(e);
    int len = n_ctx + steps + 3, probe_max = 0;
    for (int k = 0; k < n_probes; k++)
        probe_max = probes[k] > probe_max ? probes[k] : probe_max;
    len = n_ctx + probe_max > len ? n_ctx + probe_max : len;
    double t0 = now();
    kv_pool *pool = kv_pool_create(&lay, kv_pages_for(&lay, len) + 1, engine_kv_host_storage(e), err, sizeof err);
    if (!pool)
        die("kv_pool_create", err);
    kv_seq seq;
    kv_seq_init(&seq);
    if (kv_seq_reserve(pool, &seq, len))
        die("kv_seq_reserve", "pool full");
    int32_t *toks = malloc((size_t)len * sizeof *toks), id = 0;
    if (!toks)
        die("memory", "out of memory");
    uint64_t r = 88172645463325252ull;
    for (int k = 0; k < len; k++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        toks[k] = k == 0 && in->bos >= 0 ? in->bos : 3 + (int32_t)(r % (uint64_t)(in->n_vocab - 3));
    }
    /* the first step allocates the device pages: not timed */
    engine_seq es = {.n_past = 0, .n_new = 1, .tok_offset = 0, .blocks = seq.pages, .n_blocks = seq.n_pages,
                     .logits = 1};
    engine_batch b = {.n_tokens = 1, .tokens = toks, .n_seqs = 1, .seqs = &es};
    if (engine_step_greedy(e, pool, &b, &id, err, sizeof err) != 1)
        die("warm-up", err);
    fprintf(stderr, "%s: pool of %d pages ready in %.1f s\n", label, kv_pool_n_pages(pool), now() - t0);
    double t_pre = 0;
    int done = 0, partial = 0;
    while (done < n_ctx) {
        int n = n_ctx - done < chunk ? n_ctx - done : chunk;
        es = (engine_seq){.n_past = done, .n_new = n, .tok_offset = 0, .blocks = seq.pages, .n_blocks = seq.n_pages,
                          .logits = 1};
        b = (engine_batch){.n_tokens = n, .tokens = toks + done, .n_seqs = 1, .seqs = &es};
        t0 = now();
        if (engine_step_greedy(e, pool, &b, &id, err, sizeof err) != 1)
            die("prefill", err);
        t_pre += now() - t0;
        done += n;
        fprintf(stderr, "%s: prefill %d/%d tokens, %.2f s\n", label, done, n_ctx, t_pre);
        if (t_pre > max_s && done < n_ctx) {
            partial = 1;
            break;
        }
    }
    if (!partial && n_probes)
        probe_chunks(e, &seq, pool, toks, done, probes, n_probes, label);
    double t_dec = 0;
    int pos = done, timed = 0;
    for (int k = 0; k < steps + 2 && !partial; k++) {
        toks[pos] = id;
        es = (engine_seq){.n_past = pos, .n_new = 1, .tok_offset = 0, .blocks = seq.pages, .n_blocks = seq.n_pages,
                          .logits = 1};
        b = (engine_batch){.n_tokens = 1, .tokens = toks + pos, .n_seqs = 1, .seqs = &es};
        t0 = now();
        if (engine_step_greedy(e, pool, &b, &id, err, sizeof err) != 1)
            die("decode", err);
        if (k >= 2) {
            t_dec += now() - t0;
            timed++;
        }
        pos++;
    }
    printf("JSON {\"label\":\"%s\",\"attention\":\"%s\",\"context\":%d,\"chunk\":%d,\"prefilled\":%d,"
           "\"partial\":%s,\"prefill_s\":%.3f,\"prefill_tok_s\":%.1f,\"decode_steps\":%d,"
           "\"decode_tok_s\":%.2f,\"decode_ms_per_token\":%.4f,\"kv_pages\":%d,\"top_k_blocks\":%d,"
           "\"local_blocks\":%d,\"block_size\":%d,\"dense_layers\":%d,\"index_keys\":\"%s\","
           "\"kv_cache_dtype\":\"%s\",\"kv_page_bytes\":%zu}\n",
           label, ac->mode == ATTN_SPARSE ? "sparse" : "dense", n_ctx, chunk, done, partial ? "true" : "false",
           t_pre, done / (t_pre > 0 ? t_pre : 1), timed, timed ? timed / t_dec : 0.0,
           timed ? 1e3 * t_dec / timed : 0.0, kv_pool_n_pages(pool), ac->top_k_blocks, ac->local_blocks,
           ac->block_size, ac->dense_layers, o->index_keys ? o->index_keys : "bf16",
           o->kv_cache_dtype ? o->kv_cache_dtype : "bf16", engine_kv_page_bytes(e));
    fflush(stdout);
    kv_seq_release(pool, &seq);
    kv_pool_free(pool);
    free(toks);
    return partial;
}

int main(int argc, char **argv)
{
    engine_opts o = {.device = "cuda"};
    attn_config_default(&o.attn);
    int prompt = 512, steps = 64, batches[16] = {1, 8, 32}, n_batches = 3;
    int context = 0, chunk = 16384, probes[MAX_PROBES], n_probes = 0;
    double max_s = 1e9;
    const char *label = "";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (!strcmp(a, name) && v && (i++, 1))
        if (OPT("--model")) o.model_path = v;
        else if (OPT("--device")) o.device = v;
        else if (OPT("--dtype")) o.dtype = v;
        else if (OPT("--prompt")) prompt = atoi(v);
        else if (OPT("--steps")) steps = atoi(v);
        else if (OPT("--label")) label = v;
        else if (OPT("--context")) context = atoi(v);
        else if (OPT("--chunk")) chunk = atoi(v);
        else if (OPT("--max-seconds")) max_s = atof(v);
        else if (OPT("--attention")) o.attn.mode = attn_mode_parse(v);
        else if (OPT("--index-keys")) o.index_keys = v;
        else if (OPT("--kv-cache-dtype")) o.kv_cache_dtype = v;
        else if (OPT("--probe-chunks")) {
            for (char *t = strtok(strdup(v), ","); t && n_probes < MAX_PROBES; t = strtok(NULL, ","))
                if ((probes[n_probes++] = atoi(t)) < 1)
                    die("--probe-chunks", "sizes must be positive");
        } else if (OPT("--batches")) {
            n_batches = 0;
            for (char *s = strtok(strdup(v), ","); s && n_batches < 16; s = strtok(NULL, ","))
                batches[n_batches++] = atoi(s);
        } else {
            fprintf(stderr, "gpu_model_bench: unknown or incomplete option %s\n", a);
            return 2;
        }
#undef OPT
    }
    if (!o.model_path || prompt < 1 || steps < 1)
        die("usage", "gpu_model_bench --model PATH [--prompt N] [--batches 1,8,32] [--steps N]");
    char err[512];
    engine *e = engine_create(&o, err, sizeof err);
    if (!e)
        die("engine_create", err);
    const engine_info *in = engine_get_info(e);
    kv_layout lay = engine_kv_layout(e);
    if (context > 0) {
        if (chunk < 1 || chunk > context)
            chunk = context;
        printf("model %s: %d layers, embd %d, heads %d/%d x %d, vocab %d; device %s, context %d in chunks of %d\n",
               in->name, in->n_layers, in->n_embd, in->n_heads, in->n_kv_heads, in->head_dim, in->n_vocab, o.device,
               context, chunk);
        int rc = long_context(e, context, chunk, steps, max_s, label, &o, probes, n_probes);
        engine_free(e);
        return rc;
    }
    printf("model %s: %d layers, embd %d, heads %d/%d x %d, vocab %d; device %s, prompt %d, %d decode steps\n",
           in->name, in->n_layers, in->n_embd, in->n_heads, in->n_kv_heads, in->head_dim, in->n_vocab, o.device,
           prompt, steps);
    printf("%6s %14s %14s %12s\n", "batch", "prefill tok/s", "decode tok/s", "ms/step");
    char lines[16][512];
    for (int bi = 0; bi < n_batches; bi++) {
        int nb = batches[bi], len = prompt + steps + 3;
        kv_pool *pool = kv_pool_create(&lay, nb * kv_pages_for(&lay, len) + 1, engine_kv_host_storage(e), err,
                                       sizeof err);
        if (!pool)
            die("kv_pool_create", err);
        kv_seq *seq = calloc((size_t)nb, sizeof *seq);
        engine_seq *es = calloc((size_t)nb, sizeof *es);
        int32_t *toks = malloc((size_t)nb * len * sizeof *toks), *flat = malloc((size_t)nb * prompt * sizeof *flat);
        int32_t *ids = malloc((size_t)nb * sizeof *ids);
        if (!seq || !es || !toks || !flat || !ids)
            die("memory", "out of memory");
        uint64_t r = 88172645463325252ull + (uint64_t)nb;
        for (int s = 0; s < nb; s++) {
            kv_seq_init(&seq[s]);
            if (kv_seq_reserve(pool, &seq[s], len))
                die("kv_seq_reserve", "pool full");
            for (int k = 0; k < prompt; k++) {
                r ^= r << 13, r ^= r >> 7, r ^= r << 17;
                toks[(size_t)s * len + k] = k == 0 && in->bos >= 0 ? in->bos : 3 + (int32_t)(r % (uint64_t)(in->n_vocab - 3));
            }
            memcpy(flat + (size_t)s * prompt, toks + (size_t)s * len, (size_t)prompt * sizeof *flat);
            es[s] = (engine_seq){.n_past = 0, .n_new = prompt, .tok_offset = s * prompt, .blocks = seq[s].pages,
                                 .n_blocks = seq[s].n_pages, .logits = 1};
        }
        engine_batch b = {.n_tokens = nb * prompt, .tokens = flat, .n_seqs = nb, .seqs = es};
        double t0 = 0;
        for (int rep = 0; rep < 2; rep++) {
            t0 = now();
            if (engine_step_greedy(e, pool, &b, ids, err, sizeof err) != nb)
                die("prefill", err);
        }
        double t_pre = now() - t0;
        int pos = prompt;
        double t_dec = 0;
        for (int k = 0; k < steps + 2; k++) {
            for (int s = 0; s < nb; s++) {
                toks[(size_t)s * len + pos] = ids[s];
                flat[s] = ids[s];
                es[s] = (engine_seq){.n_past = pos, .n_new = 1, .tok_offset = s, .blocks = seq[s].pages,
                                     .n_blocks = seq[s].n_pages, .logits = 1};
            }
            b.n_tokens = nb;
            t0 = now();
            if (engine_step_greedy(e, pool, &b, ids, err, sizeof err) != nb)
                die("decode", err);
            if (k >= 2)
                t_dec += now() - t0;
            pos++;
        }
        double pre_tps = nb * prompt / t_pre, dec_tps = (double)nb * steps / t_dec;
        printf("%6d %14.0f %14.1f %12.3f\n", nb, pre_tps, dec_tps, 1e3 * t_dec / steps);
        snprintf(lines[bi], sizeof lines[bi],
                 "{\"label\":\"%s\",\"batch\":%d,\"prompt\":%d,\"steps\":%d,\"prefill_tok_s\":%.1f,\"decode_tok_s\":%.2f,"
                 "\"decode_ms_per_step\":%.4f}",
                 label, nb, prompt, steps, pre_tps, dec_tps, 1e3 * t_dec / steps);
        for (int s = 0; s < nb; s++)
            kv_seq_release(pool, &seq[s]);
        kv_pool_free(pool);
        free(seq);
        free(es);
        free(toks);
        free(flat);
        free(ids);
    }
    for (int bi = 0; bi < n_batches; bi++)
        printf("JSON %s\n", lines[bi]);
    engine_free(e);
    return 0;
}
