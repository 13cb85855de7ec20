/* tools/mkmodel: every preset (shrunk with overrides) written by the real
 * binary and read back with gguf_open: keys, tensor shapes and types,
 * weight statistics, seeding, and refusal of bad options. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "engine/quant.h"

static char mkmodel[1024];
static char dir[64];

static void setup(void)
{
    const char *b = getenv("SPARSED_BUILD");
    snprintf(mkmodel, sizeof mkmodel, "%s/tools/mkmodel", b ? b : "build");
    ck_assert_msg(access(mkmodel, X_OK) == 0, "%s not built", mkmodel);
    snprintf(dir, sizeof dir, "/tmp/sparsed-mkmodel-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
    char p[128];
    const char *names[] = { "a.gguf", "b.gguf", "c.gguf" };
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* Runs mkmodel --out DIR/out with the NULL-terminated args; its exit code. */
static int run(const char *out, const char *const *args)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, out);
    const char *argv[40] = { mkmodel, "--out", path };
    int n = 3;
    for (; *args && n < 38; args++) argv[n++] = *args;
    argv[n] = NULL;
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        /* keep the test log short: mkmodel's one-line summary goes away */
        if (!freopen("/dev/null", "w", stderr)) _exit(127);
        execv(mkmodel, (char *const *)argv);
        _exit(127);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static gguf_file *open_out(const char *out)
{
    char path[128], err[256] = "";
    snprintf(path, sizeof path, "%s/%s", dir, out);
    gguf_file *f = gguf_open(path, err, sizeof err);
    ck_assert_msg(f != NULL, "%s", err);
    return f;
}

static uint32_t u32(const gguf_file *f, const char *key)
{
    uint32_t v = 0;
    ck_assert_msg(gguf_get_u32(f, key, &v) == 0, "missing %s", key);
    return v;
}

static const gguf_tensor *tensor(const gguf_file *f, const char *name, uint64_t ne0, uint64_t ne1,
                                 uint32_t type)
{
    const gguf_tensor *t = gguf_tensor_find(f, name);
    ck_assert_msg(t != NULL, "tensor %s missing", name);
    ck_assert_msg(t->ne[0] == ne0 && t->ne[1] == ne1, "%s: [%llu, %llu], want [%llu, %llu]", name,
                  (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                  (unsigned long long)ne0, (unsigned long long)ne1);
    ck_assert_uint_eq(t->n_dims, ne1 == 1 ? 1 : 2);
    ck_assert_msg(t->type == type, "%s: type %s, want %s", name, ggml_type_name(t->type),
                  ggml_type_name(type));
    return t;
}

/* Mean and standard deviation of a whole tensor. */
static void stats(const gguf_tensor *t, double *mean, double *sd)
{
    int64_t ne0 = (int64_t)t->ne[0];
    size_t rb = ggml_row_size(t->type, ne0);
    float *row = malloc((size_t)ne0 * sizeof(float));
    double s = 0, s2 = 0, n = 0;
    for (uint64_t r = 0; r < t->ne[1]; r++) {
        dequant_row(t->type, (const uint8_t *)t->data + r * rb, row, ne0);
        for (int64_t j = 0; j < ne0; j++) {
            s += row[j];
            s2 += (double)row[j] * row[j];
            n++;
        }
    }
    free(row);
    *mean = s / n;
    *sd = sqrt(s2 / n - *mean * *mean);
}

struct shape {
    int layers, embd, heads, kv, hd, ff, vocab;
    uint32_t wtype;
    int qk_norm, idx_heads, idx_dim, dense;   /* idx_heads 0: no indexer */
};

static void check_model(const gguf_file *f, const struct shape *s)
{
    ck_assert_str_eq(gguf_get_str(f, "general.architecture"), "llama");
    ck_assert_ptr_nonnull(gguf_get_str(f, "general.name"));
    ck_assert_uint_eq(u32(f, "llama.block_count"), s->layers);
    ck_assert_uint_eq(u32(f, "llama.embedding_length"), s->embd);
    ck_assert_uint_eq(u32(f, "llama.feed_forward_length"), s->ff);
    ck_assert_uint_eq(u32(f, "llama.attention.head_count"), s->heads);
    ck_assert_uint_eq(u32(f, "llama.attention.head_count_kv"), s->kv);
    ck_assert_uint_eq(u32(f, "llama.attention.value_length"), s->hd);
    if (s->hd * s->heads != s->embd) ck_assert_uint_eq(u32(f, "llama.attention.key_length"), s->hd);
    else ck_assert_ptr_null(gguf_find(f, "llama.attention.key_length"));
    ck_assert_ptr_nonnull(gguf_find(f, "llama.context_length"));
    float base = 0, eps = 0;
    ck_assert_int_eq(gguf_get_f32(f, "llama.rope.freq_base", &base), 0);
    ck_assert(base > 0);
    ck_assert_int_eq(gguf_get_f32(f, "llama.attention.layer_norm_rms_epsilon", &eps), 0);
    ck_assert(eps > 0 && eps < 1e-4f);

    /* tokenizer: specials, 256 byte tokens, distinct fillers */
    ck_assert_str_eq(gguf_get_str(f, "tokenizer.ggml.model"), "llama");
    uint64_t n = 0;
    const gguf_str *tok = gguf_get_arr_str(f, "tokenizer.ggml.tokens", &n);
    ck_assert_ptr_nonnull(tok);
    ck_assert_uint_eq(n, s->vocab);
    ck_assert_str_eq(tok[0].s, "<unk>");
    ck_assert_str_eq(tok[1].s, "<s>");
    ck_assert_str_eq(tok[2].s, "</s>");
    ck_assert_str_eq(tok[3].s, "<0x00>");
    ck_assert_str_eq(tok[3 + 0x41].s, "<0x41>");
    ck_assert_str_eq(tok[258].s, "<0xFF>");
    for (uint64_t i = 259; i < n; i++)
        for (uint64_t j = 259; j < i; j++) ck_assert_msg(strcmp(tok[i].s, tok[j].s), "token %llu repeats", (unsigned long long)i);
    const gguf_kv *sc = gguf_find(f, "tokenizer.ggml.scores");
    const gguf_kv *tt = gguf_find(f, "tokenizer.ggml.token_type");
    ck_assert(sc && sc->arr_type == GGUF_T_F32 && sc->arr_n == n);
    ck_assert(tt && tt->arr_type == GGUF_T_I32 && tt->arr_n == n);
    const int64_t *types = tt->arr;
    ck_assert_int_eq(types[0], 2);
    ck_assert_int_eq(types[1], 3);
    ck_assert_int_eq(types[2], 3);
    ck_assert_int_eq(types[100], 6);
    ck_assert_int_eq(types[259], 1);
    ck_assert_uint_eq(u32(f, "tokenizer.ggml.bos_token_id"), 1);
    ck_assert_uint_eq(u32(f, "tokenizer.ggml.eos_token_id"), 2);

    /* tensors, ne0 = input dim; norms f32 */
    uint64_t e = (uint64_t)s->embd, q = (uint64_t)(s->heads * s->hd), kv = (uint64_t)(s->kv * s->hd);
    tensor(f, "token_embd.weight", e, (uint64_t)s->vocab, s->wtype);
    tensor(f, "output_norm.weight", e, 1, GGML_F32);
    tensor(f, "output.weight", e, (uint64_t)s->vocab, s->wtype);
    int expect = 3;
    for (int l = 0; l < s->layers; l++) {
        char nm[96];
#define T(suffix, a, b, ty) (snprintf(nm, sizeof nm, "blk.%d." suffix, l), tensor(f, nm, a, b, ty))
        T("attn_norm.weight", e, 1, GGML_F32);
        T("attn_q.weight", e, q, s->wtype);
        T("attn_k.weight", e, kv, s->wtype);
        T("attn_v.weight", e, kv, s->wtype);
        T("attn_output.weight", q, e, s->wtype);
        T("ffn_norm.weight", e, 1, GGML_F32);
        T("ffn_gate.weight", e, (uint64_t)s->ff, s->wtype);
        T("ffn_up.weight", e, (uint64_t)s->ff, s->wtype);
        T("ffn_down.weight", (uint64_t)s->ff, e, s->wtype);
        expect += 9;
        snprintf(nm, sizeof nm, "blk.%d.attn_q_norm.weight", l);
        if (s->qk_norm) {
            T("attn_q_norm.weight", (uint64_t)s->hd, 1, GGML_F32);
            T("attn_k_norm.weight", (uint64_t)s->hd, 1, GGML_F32);
            expect += 2;
        } else {
            ck_assert_ptr_null(gguf_tensor_find(f, nm));
        }
        snprintf(nm, sizeof nm, "blk.%d.indexer.k_proj.weight", l);
        if (s->idx_heads && l >= s->dense) {
            uint64_t d = (uint64_t)s->idx_dim;
            T("indexer.q_proj.weight", e, (uint64_t)s->idx_heads * d, s->wtype);
            T("indexer.k_proj.weight", e, d, s->wtype);
            T("indexer.q_norm.weight", d, 1, GGML_F32);
            T("indexer.k_norm.weight", d, 1, GGML_F32);
            expect += 4;
        } else {
            ck_assert_ptr_null(gguf_tensor_find(f, nm));
        }
#undef T
    }
    ck_assert_uint_eq(gguf_n_tensors(f), expect);
    if (s->idx_heads) {
        ck_assert_uint_eq(u32(f, "llama.attention.indexer.head_count"), s->idx_heads);
        ck_assert_uint_eq(u32(f, "llama.attention.indexer.key_length"), s->idx_dim);
        ck_assert_uint_eq(u32(f, "llama.attention.indexer.dense_layers"), s->dense);
        ck_assert(u32(f, "llama.attention.indexer.top_k") >= 1);
        ck_assert(u32(f, "llama.attention.indexer.block_size") >= 1);
        ck_assert(u32(f, "llama.attention.indexer.local_blocks") >= 1);
    } else {
        ck_assert_ptr_null(gguf_find(f, "llama.attention.indexer.head_count"));
    }

    /* norms are exactly 1; weights ~ N(0, 1/fan_in) */
    double mean, sd;
    stats(gguf_tensor_find(f, "output_norm.weight"), &mean, &sd);
    ck_assert(mean == 1.0 && sd == 0.0);
    stats(gguf_tensor_find(f, "token_embd.weight"), &mean, &sd);
    double want = 1 / sqrt((double)s->embd);
    ck_assert_msg(fabs(sd / want - 1) < 0.1, "token_embd sd %g, want %g", sd, want);
    ck_assert(fabs(mean) < 0.1 * want);
    char nm[64];
    snprintf(nm, sizeof nm, "blk.%d.ffn_down.weight", s->layers - 1);
    stats(gguf_tensor_find(f, nm), &mean, &sd);
    want = 1 / sqrt((double)s->ff);
    ck_assert_msg(fabs(sd / want - 1) < 0.1, "ffn_down sd %g, want %g", sd, want);
}

START_TEST(test_tiny)
{
    ck_assert_int_eq(run("a.gguf", (const char *[]){ "--preset", "tiny", NULL }), 0);
    gguf_file *f = open_out("a.gguf");
    struct shape s = { 5, 64, 8, 4, 8, 172, 512, GGML_F32, 0, 0, 0, 0 };
    check_model(f, &s);
    ck_assert_uint_eq(u32(f, "llama.rope.dimension_count"), 8);
    ck_assert_ptr_null(gguf_find(f, "sparsed.rope.neox"));
    gguf_close(f);
}
END_TEST

START_TEST(test_llama_1b_ish)
{
    ck_assert_int_eq(run("a.gguf", (const char *[]){ "--preset", "llama-1b-ish", "--layers", "2",
                                                     "--embd", "128", "--heads", "4", "--kv-heads", "2",
                                                     "--ff", "256", "--vocab", "600", NULL }), 0);
    gguf_file *f = open_out("a.gguf");
    /* head dim follows embd/heads; the preset's bf16 stays */
    struct shape s = { 2, 128, 4, 2, 32, 256, 600, GGML_BF16, 0, 0, 0, 0 };
    check_model(f, &s);
    ck_assert_uint_eq(u32(f, "llama.rope.dimension_count"), 32);
    float base = 0;
    gguf_get_f32(f, "llama.rope.freq_base", &base);
    ck_assert_float_eq(base, 500000.0f);
    gguf_close(f);
}
END_TEST

START_TEST(test_llama3_8b)
{
    /* the real 32/8/128 head layout at 1 layer and a small embedding */
    ck_assert_int_eq(run("a.gguf", (const char *[]){ "--preset", "llama3-8b", "--layers", "1",
                                                     "--embd", "256", "--ff", "512", "--vocab", "1000",
                                                     "--head-dim", "128", "--type", "q8_0", NULL }), 0);
    gguf_file *f = open_out("a.gguf");
    struct shape s = { 1, 256, 32, 8, 128, 512, 1000, GGML_Q8_0, 0, 0, 0, 0 };
    check_model(f, &s);
    gguf_close(f);
}
END_TEST

START_TEST(test_m3_tiny)
{
    ck_assert_int_eq(run("a.gguf", (const char *[]){ "--preset", "m3-tiny", "--neox", NULL }), 0);
    gguf_file *f = open_out("a.gguf");
    struct shape s = { 4, 128, 8, 2, 32, 256, 512, GGML_F32, 1, 2, 32, 1 };
    check_model(f, &s);
    ck_assert_uint_eq(u32(f, "llama.rope.dimension_count"), 16);   /* half the head */
    int neox = 0;
    ck_assert_int_eq(gguf_get_bool(f, "sparsed.rope.neox", &neox), 0);
    ck_assert_uint_eq(gguf_find(f, "sparsed.rope.neox")->type, GGUF_T_BOOL);
    ck_assert_int_eq(neox, 1);
    gguf_close(f);
}
END_TEST

START_TEST(test_m3_1b)
{
    ck_assert_int_eq(run("a.gguf", (const char *[]){ "--preset", "m3-1b", "--layers", "3", "--embd", "64",
                                                     "--heads", "4", "--kv-heads", "2", "--head-dim", "32",
                                                     "--ff", "128", "--vocab", "300", "--indexer-dim", "32",
                                                     "--type", "q4_0", NULL }), 0);
    gguf_file *f = open_out("a.gguf");
    struct shape s = { 3, 64, 4, 2, 32, 128, 300, GGML_Q4_0, 1, 2, 32, 2 };
    check_model(f, &s);
    ck_assert_uint_eq(u32(f, "llama.rope.dimension_count"), 16);
    ck_assert_uint_eq(u32(f, "llama.attention.indexer.block_size"), 128);
    gguf_close(f);
}
END_TEST

/* Indexer and rotary options on a plain Llama shape. */
START_TEST(test_options)
{
    ck_assert_int_eq(run("a.gguf", (const char *[]){ "--layers", "3", "--qk-norm", "--rope-dim", "4",
                                                     "--indexer-heads", "3", "--indexer-dim", "16",
                                                     "--indexer-top-k", "8", "--indexer-block", "64",
                                                     "--indexer-local", "2", "--dense-layers", "1",
                                                     "--type", "f16", NULL }), 0);
    gguf_file *f = open_out("a.gguf");
    struct shape s = { 3, 64, 8, 4, 8, 172, 512, GGML_F16, 1, 3, 16, 1 };
    /* ffn_down rows (172) are whole f16 blocks, so nothing falls back */
    check_model(f, &s);
    ck_assert_uint_eq(u32(f, "llama.rope.dimension_count"), 4);
    ck_assert_uint_eq(u32(f, "llama.attention.indexer.top_k"), 8);
    ck_assert_uint_eq(u32(f, "llama.attention.indexer.block_size"), 64);
    ck_assert_uint_eq(u32(f, "llama.attention.indexer.local_blocks"), 2);
    gguf_close(f);

    /* q8_0 cannot hold 172-wide rows: ffn_down alone falls back to f32 */
    ck_assert_int_eq(run("b.gguf", (const char *[]){ "--type", "q8_0", NULL }), 0);
    f = open_out("b.gguf");
    ck_assert_uint_eq(gguf_tensor_find(f, "blk.0.ffn_down.weight")->type, GGML_F32);
    ck_assert_uint_eq(gguf_tensor_find(f, "blk.0.ffn_up.weight")->type, GGML_Q8_0);
    gguf_close(f);
}
END_TEST

static int same_files(const char *a, const char *b)
{
    char pa[128], pb[128];
    snprintf(pa, sizeof pa, "%s/%s", dir, a);
    snprintf(pb, sizeof pb, "%s/%s", dir, b);
    FILE *fa = fopen(pa, "rb"), *fb = fopen(pb, "rb");
    ck_assert(fa && fb);
    int same = 1, ca, cb;
    do {
        ca = fgetc(fa);
        cb = fgetc(fb);
        if (ca != cb) same = 0;
    } while (same && ca != EOF);
    fclose(fa);
    fclose(fb);
    return same;
}

START_TEST(test_seed)
{
    const char *s1[] = { "--layers", "1", "--seed", "7", NULL };
    const char *s2[] = { "--layers", "1", "--seed", "8", NULL };
    ck_assert_int_eq(run("a.gguf", s1), 0);
    ck_assert_int_eq(run("b.gguf", s1), 0);
    ck_assert_int_eq(run("c.gguf", s2), 0);
    ck_assert(same_files("a.gguf", "b.gguf"));
    ck_assert(!same_files("a.gguf", "c.gguf"));
}
END_TEST

START_TEST(test_bad_options)
{
    static const char *const bad[][8] = {
        { "--preset", "nope", NULL },
        { "--heads", "6", "--kv-heads", "4", NULL },
        { "--vocab", "100", NULL },
        { "--type", "q9_9", NULL },
        { "--layers", "0", NULL },
        { "--layers", "-3", NULL },
        { "--layers", "2x", NULL },
        { "--rope-dim", "7", NULL },
        { "--rope-dim", "16", NULL },
        { "--dense-layers", "9", NULL },
        { "--bogus", NULL },
        { "stray", NULL },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(run("a.gguf", bad[i]) == 2, "options %zu (%s %s) accepted", i, bad[i][0],
                      bad[i][1] ? bad[i][1] : "");
        char p[128];
        snprintf(p, sizeof p, "%s/a.gguf", dir);
        ck_assert_msg(access(p, F_OK) != 0, "options %zu left a file", i);
    }
    /* no --out at all */
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(127);
        execl(mkmodel, mkmodel, "--preset", "tiny", (char *)NULL);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("mkmodel");
    TCase *tc = tcase_create("mkmodel");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_tiny);
    tcase_add_test(tc, test_llama_1b_ish);
    tcase_add_test(tc, test_llama3_8b);
    tcase_add_test(tc, test_m3_tiny);
    tcase_add_test(tc, test_m3_1b);
    tcase_add_test(tc, test_options);
    tcase_add_test(tc, test_seed);
    tcase_add_test(tc, test_bad_options);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
