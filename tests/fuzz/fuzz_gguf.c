/* libFuzzer target for the GGUF reader: any input is either refused with
 * an error message or yields a file whose metadata and tensor rows can all
 * be walked within bounds. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/quant.h"

static volatile uint64_t sink;

static void walk(const gguf_kv *kv)
{
    if (kv->type == GGUF_T_STRING) {
        sink += kv->v.str.n + (uint64_t)strlen(kv->v.str.s);
        return;
    }
    if (kv->type != GGUF_T_ARRAY) {
        sink += kv->v.u;
        return;
    }
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        if (kv->arr_type == GGUF_T_STRING) sink += kv->arr_str[i].n + (uint64_t)kv->arr_str[i].s[0];
        else if (kv->arr_type == GGUF_T_ARRAY) walk(&kv->arr_kv[i]);
        else sink += ((const uint64_t *)kv->arr)[i];
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256] = "";
    gguf_file *f = gguf_open_mem(data, size, err, sizeof err);
    if (!f) {
        if (!err[0] || memchr(err, '\n', strlen(err))) __builtin_trap();
        return 0;
    }
    for (uint64_t i = 0; i < gguf_n_kv(f); i++) {
        const gguf_kv *kv = gguf_kv_at(f, i);
        walk(kv);
        if (gguf_find(f, kv->key) == NULL) __builtin_trap();
    }
    uint32_t u;
    int64_t i64;
    float fl;
    int b;
    uint64_t n;
    sink += (uint64_t)gguf_get_u32(f, "llama.block_count", &u) + (uint64_t)gguf_get_i64(f, "x", &i64) +
            (uint64_t)gguf_get_f32(f, "llama.rope.freq_base", &fl) +
            (uint64_t)gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &b) +
            (gguf_get_str(f, "general.architecture") != NULL) +
            (gguf_get_arr_str(f, "tokenizer.ggml.tokens", &n) != NULL);

    /* decode a few rows of every tensor: reads must stay inside nbytes */
    static float row[4096];
    for (uint64_t t = 0; t < gguf_n_tensors(f); t++) {
        const gguf_tensor *ten = gguf_tensor_at(f, t);
        if (gguf_tensor_find(f, ten->name) != ten) __builtin_trap();
        if (ten->ne[0] > 4096) continue;
        size_t rb = ggml_row_size(ten->type, (int64_t)ten->ne[0]);
        uint64_t rows = ten->nbytes / rb;
        for (uint64_t r = 0; r < rows && r < 4; r++) {
            dequant_row(ten->type, (const uint8_t *)ten->data + r * rb, row, (int64_t)ten->ne[0]);
            uint32_t bits;
            memcpy(&bits, &row[ten->ne[0] - 1], 4);
            sink += bits;
        }
    }
    gguf_close(f);
    return 0;
}
