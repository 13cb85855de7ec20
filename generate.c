/* `sparsed generate`: one prompt through the engine, printed as text or as
 * one JSON object.  No prompt means start from BOS. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "generate.h"
#include "kvcache/kvcache.h"

static void usage(FILE *f)
{
    fprintf(f,
        "usage: sparsed generate --model PATH [options]\n"
        "  --model PATH             GGUF model (default models/stories260K.gguf)\n"
        "  --prompt TEXT            prompt (default: start from BOS)\n"
        "  --max-tokens N           tokens to generate (default 256)\n"
        "  --temperature T          0 = greedy (default 0)\n"
        "  --top-k N --top-p P --min-p P --repetition-penalty R\n"
        "  --seed S                 sampler seed (default 0)\n"
        "  --threads N              CPU threads (default: all cores)\n"
        "  --json                   print {\"tokens\": [...], \"text\": \"...\"}\n"
        "  --device cpu|cuda        engine backend (default cpu)\n"
        "  --index-keys bf16|fp8  --kv-cache-dtype bf16|fp8   cuda: how the KV pages store them\n"
        "  --attention dense|sparse|auto   --indexer msa|minmax|mean\n"
        "  --block-size N  --top-k-blocks N  --local-blocks N  --sink-blocks N\n"
        "  --dense-layers N  --sparse-min-context N (0 = sparse at any length)\n"
        "  --group-reduce sum|max   training-free block score over a GQA group's heads\n");
}

static int parse_int(const char *name, const char *s, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "sparsed generate: --%s: '%s' is not an integer in [%ld, %ld]\n", name, s, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_float(const char *name, const char *s, float lo, float hi, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "sparsed generate: --%s: '%s' is not a number in [%g, %g]\n", name, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static void json_string(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c == '\r')
            fputs("\\r", f);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

enum { O_MODEL = 256, O_PROMPT, O_MAXTOK, O_TEMP, O_SEED, O_THREADS, O_JSON, O_DEVICE,
       O_ATTN, O_INDEXER, O_BLOCK, O_TOPKB, O_LOCAL, O_SINK, O_DENSE, O_MINCTX,
       O_TOPK, O_TOPP, O_MINP, O_REP, O_GROUP, O_IDXK, O_KVDT, O_HELP };

int generate_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL}, {"prompt", required_argument, 0, O_PROMPT},
        {"max-tokens", required_argument, 0, O_MAXTOK}, {"temperature", required_argument, 0, O_TEMP},
        {"seed", required_argument, 0, O_SEED}, {"threads", required_argument, 0, O_THREADS},
        {"json", no_argument, 0, O_JSON}, {"device", required_argument, 0, O_DEVICE},
        {"attention", required_argument, 0, O_ATTN}, {"indexer", required_argument, 0, O_INDEXER},
        {"block-size", required_argument, 0, O_BLOCK}, {"top-k-blocks", required_argument, 0, O_TOPKB},
        {"local-blocks", required_argument, 0, O_LOCAL}, {"sink-blocks", required_argument, 0, O_SINK},
        {"dense-layers", required_argument, 0, O_DENSE},
        {"group-reduce", required_argument, 0, O_GROUP},
        {"sparse-min-context", required_argument, 0, O_MINCTX},
        {"top-k", required_argument, 0, O_TOPK}, {"top-p", required_argument, 0, O_TOPP},
        {"min-p", required_argument, 0, O_MINP}, {"repetition-penalty", required_argument, 0, O_REP},
        {"index-keys", required_argument, 0, O_IDXK}, {"kv-cache-dtype", required_argument, 0, O_KVDT},
        {"help", no_argument, 0, O_HELP}, {0, 0, 0, 0},
    };
    engine_opts eo = {.model_path = "models/stories260K.gguf", .device = "cpu"};
    attn_config_default(&eo.attn);
    sampler_params sp;
    sampler_params_default(&sp);
    sp.temperature = 0.0f; /* the CLI is for checks and scripts: greedy unless asked */
    const char *prompt = NULL;
    int max_tokens = 256, json = 0, c, seed = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case O_MODEL: eo.model_path = optarg; break;
        case O_PROMPT: prompt = optarg; break;
        case O_MAXTOK: bad = parse_int("max-tokens", optarg, 0, 1 << 24, &max_tokens); break;
        case O_TEMP: bad = parse_float("temperature", optarg, 0, 100, &sp.temperature); break;
        case O_SEED: bad = parse_int("seed", optarg, 0, INT_MAX, &seed); break;
        case O_THREADS: bad = parse_int("threads", optarg, 1, 1024, &eo.n_threads); break;
        case O_JSON: json = 1; break;
        case O_DEVICE: eo.device = optarg; break;
        case O_IDXK: eo.index_keys = optarg; break;     /* checked by engine_create */
        case O_KVDT: eo.kv_cache_dtype = optarg; break;
        case O_ATTN:
            if ((eo.attn.mode = attn_mode_parse(optarg)) < 0) {
                fprintf(stderr, "sparsed generate: --attention: must be dense, sparse or auto\n");
                bad = 1;
            }
            break;
        case O_INDEXER:
            if ((eo.attn.indexer = attn_indexer_parse(optarg)) < 0) {
                fprintf(stderr, "sparsed generate: --indexer: must be msa, minmax or mean\n");
                bad = 1;
            }
            break;
        case O_GROUP:
            if ((eo.attn.group_reduce = attn_group_reduce_parse(optarg)) < 0) {
                fprintf(stderr, "sparsed generate: --group-reduce: must be sum or max\n");
                bad = 1;
            }
            break;
        case O_BLOCK: bad = parse_int("block-size", optarg, 1, 1 << 20, &eo.attn.block_size); break;
        case O_TOPKB: bad = parse_int("top-k-blocks", optarg, 1, 1 << 20, &eo.attn.top_k_blocks); break;
        case O_LOCAL: bad = parse_int("local-blocks", optarg, 1, 1 << 20, &eo.attn.local_blocks); break;
        case O_SINK: bad = parse_int("sink-blocks", optarg, 0, 1 << 20, &eo.attn.sink_blocks); break;
        case O_DENSE: bad = parse_int("dense-layers", optarg, 0, 1 << 20, &eo.attn.dense_layers); break;
        case O_MINCTX: bad = parse_int("sparse-min-context", optarg, 0, INT_MAX, &eo.attn.sparse_min_context); break;
        case O_TOPK: bad = parse_int("top-k", optarg, 0, INT_MAX, &sp.top_k); break;
        case O_TOPP: bad = parse_float("top-p", optarg, 0, 1, &sp.top_p); break;
        case O_MINP: bad = parse_float("min-p", optarg, 0, 1, &sp.min_p); break;
        case O_REP: bad = parse_float("repetition-penalty", optarg, 0.01f, 100, &sp.repetition_penalty); break;
        case O_HELP: usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad)
            return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "sparsed generate: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    sp.seed = (uint64_t)seed;

    char err[512];
    if (attn_config_check(&eo.attn, err, sizeof err)) {
        fprintf(stderr, "sparsed generate: %s\n", err);
        return 2;
    }
    engine *e = engine_create(&eo, err, sizeof err);
    if (!e) {
        fprintf(stderr, "sparsed generate: %s\n", err);
        return 1;
    }
    const engine_info *info = engine_get_info(e);
    int rc = 1;
    int32_t *toks = NULL;
    float *logits = NULL;
    sampler *smp = NULL;
    kv_pool *pool = NULL;
    kv_seq seq;
    kv_seq_init(&seq);

    /* prompt tokens: BOS, then the text */
    size_t plen = prompt ? strlen(prompt) : 0;
    int cap = (int)plen + 2 + max_tokens;
    toks = malloc((size_t)cap * sizeof *toks);
    logits = malloc((size_t)info->n_vocab * sizeof *logits);
    if (!toks || !logits) {
        fprintf(stderr, "sparsed generate: out of memory\n");
        goto out;
    }
    int n = 0;
    if (prompt) {
        n = engine_tokenize(e, prompt, plen, info->add_bos, 0, toks, cap);
        if (n < 0) {
            fprintf(stderr, "sparsed generate: the prompt is not valid UTF-8\n");
            goto out;
        }
    }
    if (n == 0) {
        if (info->bos < 0) {
            fprintf(stderr, "sparsed generate: the model has no BOS token; give a --prompt\n");
            goto out;
        }
        toks[n++] = info->bos;
    }
    int n_prompt = n;

    kv_layout lay = engine_kv_layout(e);
    pool = kv_pool_create(&lay, kv_pages_for(&lay, n_prompt + max_tokens) + 1,
                          engine_kv_host_storage(e), err, sizeof err);
    smp = sampler_create(&sp, info->n_vocab);
    if (!pool || !smp) {
        fprintf(stderr, "sparsed generate: %s\n", pool ? "out of memory" : err);
        goto out;
    }

    detok dt;
    detok_init(&dt);
    char piece[256];
    if (json)
        fputs("{\"tokens\":[", stdout);
    char *text = NULL;
    size_t text_len = 0;
    int pos = 0, produced = 0;
    while (produced < max_tokens) {
        int n_new = n - pos;
        if (kv_seq_reserve(pool, &seq, n)) {
            fprintf(stderr, "sparsed generate: the KV pool is full\n");
            goto out;
        }
        engine_seq es = {.n_past = pos, .n_new = n_new, .tok_offset = 0,
                         .blocks = seq.pages, .n_blocks = seq.n_pages, .logits = 1};
        engine_batch b = {.n_tokens = n_new, .tokens = toks + pos, .n_seqs = 1, .seqs = &es};
        if (engine_step(e, pool, &b, logits, err, sizeof err) < 0) {
            fprintf(stderr, "sparsed generate: %s\n", err);
            goto out;
        }
        pos = n;
        int32_t tok = sampler_sample(smp, logits, toks, n);
        if (engine_is_eog(e, tok))
            break;
        toks[n++] = tok;
        produced++;
        int k = detok_push(e, &dt, tok, piece, sizeof piece);
        if (json) {
            printf("%s%d", produced > 1 ? "," : "", tok);
            char *nt = realloc(text, text_len + (size_t)k + 1);
            if (!nt)
                goto out;
            text = nt;
            memcpy(text + text_len, piece, (size_t)k);
            text_len += (size_t)k;
        } else {
            fwrite(piece, 1, (size_t)k, stdout);
            fflush(stdout);
        }
    }
    int k = detok_flush(&dt, piece, sizeof piece);
    if (json) {
        char *nt = realloc(text, text_len + (size_t)k + 1);
        if (nt) {
            text = nt;
            memcpy(text + text_len, piece, (size_t)k);
            text_len += (size_t)k;
        }
        fputs("],\"text\":", stdout);
        json_string(stdout, text ? text : "", text_len);
        printf(",\"prompt_tokens\":%d}\n", n_prompt);
    } else {
        fwrite(piece, 1, (size_t)k, stdout);
        putchar('\n');
    }
    free(text);
    rc = 0;
out:
    if (pool)
        kv_seq_release(pool, &seq);
    kv_pool_free(pool);
    sampler_free(smp);
    free(toks);
    free(logits);
    engine_free(e);
    return rc;
}
