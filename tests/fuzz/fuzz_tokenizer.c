/* libFuzzer target for both tokenizers, built from real models: the llama
 * (SentencePiece) vocabulary of models/stories260K.gguf and the gpt2
 * (byte-level BPE) one of SmolLM2-135M-Instruct (.cache/models/, or
 * SPARSED_SMOL_GGUF; skipped with a note when absent).
 *
 * Byte 0 picks the tokenizer (bit 0), add_bos (bit 1), parse_special
 * (bit 2) and what to do with the rest (bits 3-4):
 *   0, 1  encode it as text: refused (-1) iff it is not valid UTF-8; the
 *         counting call agrees with the writing one; ids are in range; with
 *         no BOS and no specials, the tokens' bytes give the text back
 *   2     read it as little-endian 16-bit ids (some out of range): token
 *         bytes never overrun, bad ids are refused
 *   3     stream those ids through the detokenizer with a small output
 *         buffer: whatever comes out is valid UTF-8 and within the buffer */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/internal.h"
#include "engine/tokenizer.h"

#ifndef SPARSED_SOURCE_ROOT
#define SPARSED_SOURCE_ROOT "."
#endif

static gguf_file *files[2];
static tokenizer *toks[2];
static int n_toks;
/* Bytes each vocabulary can spell: SmolLM2's byte-level vocabulary lacks
 * a few (control characters, lead bytes of rare planes) and, like the
 * reference tokenizer, encoding drops them. */
static unsigned char spellable[2][256];

/* GPT-2's byte-to-character map: printable Latin-1 bytes stand for
 * themselves, the others for U+0100 onwards in byte order. */
static void byte_char(int b, char *out)
{
    int cp = b, k = 0;
    if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)) {
        cp = 256;
        for (int c = 0; c < b; c++)
            if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE))
                cp++;
    }
    if (cp < 0x80) {
        out[k++] = (char)cp;
    } else {
        out[k++] = (char)(0xC0 | cp >> 6);
        out[k++] = (char)(0x80 | (cp & 0x3F));
    }
    out[k] = 0;
}

static int utf8_ok(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        int len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (!len || i + (size_t)len > n)
            return 0;
        unsigned cp = len == 1 ? c : c & (0x7F >> len);
        for (int k = 1; k < len; k++) {
            if ((u[i + k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (u[i + k] & 0x3F);
        }
        static const unsigned min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += (size_t)len;
    }
    return 1;
}

static void load(const char *path)
{
    char err[256] = "";
    gguf_file *f = gguf_open(path, err, sizeof err);
    if (!f) {
        fprintf(stderr, "fuzz_tokenizer: skipping %s: %s\n", path, err);
        return;
    }
    tokenizer *t = tokenizer_load(f, err, sizeof err);
    if (!t) {
        fprintf(stderr, "fuzz_tokenizer: %s: %s\n", path, err);
        abort();
    }
    for (int c = 0; c < 256; c++) {
        char s[8];
        if (tokenizer_is_spm(t))
            snprintf(s, sizeof s, "<0x%02X>", c);
        else
            byte_char(c, s);
        spellable[n_toks][c] = tokenizer_find(t, s) >= 0;
    }
    files[n_toks] = f;
    toks[n_toks++] = t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *root = getenv("SPARSED_ROOT");
    if (!root)
        root = SPARSED_SOURCE_ROOT;
    char path[4096];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", root);
    load(path);
    const char *smol = getenv("SPARSED_SMOL_GGUF");
    snprintf(path, sizeof path, "%s/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf", root);
    load(smol ? smol : path);
    if (n_toks == 0)
        abort();
    return 0;
}

static void check_encode(int which, const char *text, size_t len, int add_bos, int special)
{
    const tokenizer *t = toks[which];
    int nv = tokenizer_n_vocab(t);
    int n = tokenizer_encode(t, text, len, add_bos, special, NULL, 0);
    if (n < 0) {
        if (utf8_ok(text, len))
            __builtin_trap();     /* valid text must tokenize */
        return;
    }
    if (!utf8_ok(text, len))
        __builtin_trap();
    int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
    if (!ids)
        return;
    /* a buffer one short gets the first n-1 and the same count back */
    if (n > 0 && tokenizer_encode(t, text, len, add_bos, special, ids, n - 1) != n)
        __builtin_trap();
    if (tokenizer_encode(t, text, len, add_bos, special, ids, n) != n)
        __builtin_trap();
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= nv)
            __builtin_trap();
        int k = tokenizer_token_bytes(t, ids[i], 0, NULL, 0);
        if (k < 0)
            __builtin_trap();
        total += (size_t)k;
    }
    int spell = 1;
    for (size_t i = 0; i < len; i++)
        if (!spellable[which][(unsigned char)text[i]])
            spell = 0;
    if (!add_bos && !special && spell) {
        /* round trip: the bytes of the tokens are the text (SentencePiece
         * adds the one leading space that its decoder strips) */
        char *back = malloc(total + 1);
        if (back) {
            size_t o = 0;
            for (int i = 0; i < n; i++) {
                int k = tokenizer_token_bytes(t, ids[i], 0, back + o, (int)(total - o));
                o += (size_t)k;
            }
            /* SentencePiece spells a space U+2581, so one in the text
             * comes back as a space, as with the reference */
            char *want = malloc(len + 1);
            size_t wn = 0;
            for (size_t i = 0; want && i < len; i++) {
                if (tokenizer_is_spm(t) && i + 3 <= len && !memcmp(text + i, "\xe2\x96\x81", 3)) {
                    want[wn++] = ' ';
                    i += 2;
                } else {
                    want[wn++] = text[i];
                }
            }
            const char *b = back;
            if (tokenizer_is_spm(t) && o > 0 && b[0] == ' ' && o == wn + 1) {
                b++;
                o--;
            }
            if (want && (o != wn || memcmp(b, want, wn)))
                __builtin_trap();
            free(want);
            free(back);
        }
    }
    free(ids);
}

static void check_ids(const tokenizer *t, const uint8_t *d, size_t size, int stream)
{
    int nv = tokenizer_n_vocab(t);
    detok dt;
    detok_init(&dt);
    char out[16];
    for (size_t i = 0; i + 1 < size; i += 2) {
        int32_t id = (int32_t)(d[i] | d[i + 1] << 8);
        if (d[i + 1] & 0x80)
            id = id % (nv + 8) - 4;   /* near and past both ends */
        else
            id %= nv;
        if (!stream) {
            char buf[8];
            memset(buf, 0x5A, sizeof buf);
            int k = tokenizer_token_bytes(t, id, d[i] & 1, buf, 4);
            if ((id < 0 || id >= nv) != (k < 0))
                __builtin_trap();
            if (buf[4] != 0x5A || buf[7] != 0x5A)
                __builtin_trap();   /* wrote past the 4 bytes it was given */
            continue;
        }
        /* a buffer of 4 bytes to 15 */
        int cap = 4 + d[i] % 12;
        out[cap] = 0x5A;
        int k = detok_push_tok(t, &dt, id, out, cap);
        if (k < 0 || k > cap || out[cap] != 0x5A || !utf8_ok(out, (size_t)k))
            __builtin_trap();
    }
    int k = detok_flush(&dt, out, 3);
    if (k != 0 && !(k == 3 && !memcmp(out, "\xef\xbf\xbd", 3)))
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t ctl = data[0];
    int which = (ctl & 1) % n_toks;
    const tokenizer *t = toks[which];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    switch ((ctl >> 3) & 3) {
    case 0:
    case 1:
        check_encode(which, text, len, ctl >> 1 & 1, ctl >> 2 & 1);
        break;
    case 2:
        check_ids(t, data + 1, len, 0);
        break;
    default:
        check_ids(t, data + 1, len, 1);
        break;
    }
    return 0;
}
