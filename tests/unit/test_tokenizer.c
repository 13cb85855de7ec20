/* Tokenizers against reference ids (tests/data/tokenizer/NAME.tsv, written by
 * tools/tokref.py from SentencePiece and HF tokenizers built from the same
 * GGUF files), pre-tokenizer splits against the published regexes, round
 * trips, and the streaming detokenizer. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/tokenizer.h"

static char path_buf[4096];

static const char *root_path(const char *rel)
{
    const char *root = getenv("SPARSED_ROOT");
    snprintf(path_buf, sizeof path_buf, "%s/%s", root ? root : ".", rel);
    return path_buf;
}

#define SMOLLM_REL ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"

/* ---- reading the reference files --------------------------------------- */
/* flags: S parse special tokens, B add BOS, N no round trip (the reference
 * itself drops bytes its vocabulary cannot spell) */

/* Undoes tools/tokref.py's esc(): \\ \t \n \r \xHH. Returns the length. */
static size_t unescape(const char *s, char *out)
{
    size_t n = 0;
    while (*s) {
        if (*s != '\\') {
            out[n++] = *s++;
            continue;
        }
        s++;
        switch (*s) {
        case 't': out[n++] = '\t'; s++; break;
        case 'n': out[n++] = '\n'; s++; break;
        case 'r': out[n++] = '\r'; s++; break;
        case 'x': {
            unsigned v;
            sscanf(s + 1, "%2x", &v);
            out[n++] = (char)v;
            s += 3;
            break;
        }
        default: out[n++] = *s++; break;
        }
    }
    out[n] = 0;
    return n;
}

typedef struct tcase {
    char flags[8];
    char *text;
    size_t len;
    int32_t ids[512];
    int n;
} tcase;

/* Reads "flags TAB text TAB numbers" lines; returns the count. */
static int read_cases(const char *rel, tcase **out)
{
    FILE *f = fopen(root_path(rel), "r");
    ck_assert_msg(f != NULL, "cannot open %s", path_buf);
    tcase *v = NULL;
    int n = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    while ((got = getline(&line, &cap, f)) > 0) {
        if (line[0] == '#') continue;
        if (line[got - 1] == '\n') line[got - 1] = 0;
        char *t1 = strchr(line, '\t');
        ck_assert(t1);
        char *t2 = strchr(t1 + 1, '\t');
        ck_assert(t2);
        *t1 = *t2 = 0;
        v = realloc(v, (size_t)(n + 1) * sizeof(*v));
        tcase *c = &v[n++];
        snprintf(c->flags, sizeof c->flags, "%s", line);
        c->text = malloc(strlen(t1 + 1) + 1);
        c->len = unescape(t1 + 1, c->text);
        c->n = 0;
        for (char *p = t2 + 1, *end; *p; p = end) {
            long x = strtol(p, &end, 10);
            if (end == p) break;
            ck_assert(c->n < 512);
            c->ids[c->n++] = (int32_t)x;
        }
    }
    free(line);
    fclose(f);
    *out = v;
    return n;
}

static void free_cases(tcase *v, int n)
{
    for (int i = 0; i < n; i++) free(v[i].text);
    free(v);
}

static tokenizer *load(const char *path, gguf_file **gf)
{
    char err[256];
    *gf = gguf_open(path, err, sizeof err);
    ck_assert_msg(*gf != NULL, "%s: %s", path, err);
    tokenizer *t = tokenizer_load(*gf, err, sizeof err);
    ck_assert_msg(t != NULL, "%s: %s", path, err);
    return t;
}

/* Text of ids through the streaming detokenizer (SentencePiece space rule
 * included); show_special keeps control tokens' text. */
static size_t decode(const tokenizer *t, const int32_t *ids, int n, int show_special, char *out,
                     size_t cap)
{
    detok d;
    detok_init(&d);
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        if (show_special && tokenizer_is_control(t, ids[i])) {
            int k = tokenizer_token_bytes(t, ids[i], 1, out + o, (int)(cap - o));
            ck_assert(k >= 0 && o + (size_t)k < cap);
            o += (size_t)k;
            d.first = 0;
            continue;
        }
        o += (size_t)detok_push_tok(t, &d, ids[i], out + o, (int)(cap - o));
    }
    o += (size_t)detok_flush(&d, out + o, (int)(cap - o));
    return o;
}

static void check_cases(const tokenizer *t, const char *rel, int round_trip_special)
{
    tcase *cs;
    int n = read_cases(rel, &cs);
    ck_assert_int_gt(n, 50);
    int32_t got[1024];
    char text[8192];
    for (int i = 0; i < n; i++) {
        tcase *c = &cs[i];
        int special = strchr(c->flags, 'S') != NULL, bos = strchr(c->flags, 'B') != NULL;
        int k = tokenizer_encode(t, c->text, c->len, bos, special, got, 1024);
        ck_assert_msg(k == c->n, "%s case %d \"%s\": %d ids, want %d", rel, i, c->text, k, c->n);
        for (int j = 0; j < k; j++)
            ck_assert_msg(got[j] == c->ids[j], "%s case %d \"%s\": id %d is %d, want %d",
                          rel, i, c->text, j, got[j], c->ids[j]);
        /* decode(encode(s)) == s: with specials shown for gpt2; for
         * SentencePiece on plain text (the dummy prefix goes away) */
        if (bos || strchr(c->flags, 'N') || (special && !round_trip_special && strchr(c->text, '<')))
            continue;
        size_t m = decode(t, got, k, 1, text, sizeof text);
        ck_assert_msg(m == c->len && memcmp(text, c->text, m) == 0,
                      "%s case %d: round trip gave \"%.*s\" for \"%s\"", rel, i, (int)m, text,
                      c->text);
    }
    free_cases(cs, n);
}

/* ---- stories260K (llama / SentencePiece) ------------------------------- */

START_TEST(stories_reference_ids)
{
    gguf_file *gf;
    tokenizer *t = load(root_path("models/stories260K.gguf"), &gf);
    check_cases(t, "tests/data/tokenizer/stories260k.tsv", 0);
    tokenizer_free(t);
    gguf_close(gf);
}
END_TEST

START_TEST(stories_metadata)
{
    gguf_file *gf;
    tokenizer *t = load(root_path("models/stories260K.gguf"), &gf);
    ck_assert_int_eq(tokenizer_n_vocab(t), 512);
    ck_assert_int_eq(tokenizer_bos(t), 1);
    ck_assert_int_eq(tokenizer_eos(t), 2);
    ck_assert_int_eq(tokenizer_add_bos(t), 1);      /* llama default */
    ck_assert(tokenizer_is_spm(t));
    ck_assert(tokenizer_is_eog(t, 2));
    ck_assert(!tokenizer_is_eog(t, 1) && !tokenizer_is_eog(t, 403) && !tokenizer_is_eog(t, -1));
    ck_assert(tokenizer_is_control(t, 1) && !tokenizer_is_control(t, 403));
    ck_assert_int_eq(tokenizer_find(t, "<s>"), 1);
    ck_assert_int_eq(tokenizer_find(t, "\xe2\x96\x81Once"), 403);
    ck_assert_int_eq(tokenizer_find(t, "no such token"), -1);
    ck_assert_str_eq(tokenizer_token_text(t, 403), "\xe2\x96\x81Once");
    ck_assert_ptr_null(tokenizer_token_text(t, 512));

    char buf[32];
    ck_assert_int_eq(tokenizer_token_bytes(t, 403, 0, buf, sizeof buf), 5);
    ck_assert(memcmp(buf, " Once", 5) == 0);
    ck_assert_int_eq(tokenizer_token_bytes(t, 13, 0, buf, sizeof buf), 1);   /* <0x0A> */
    ck_assert_int_eq(buf[0], '\n');
    ck_assert_int_eq(tokenizer_token_bytes(t, 1, 0, buf, sizeof buf), 0);
    ck_assert_int_eq(tokenizer_token_bytes(t, 1, 1, buf, sizeof buf), 3);
    ck_assert(memcmp(buf, "<s>", 3) == 0);
    ck_assert_int_eq(tokenizer_token_bytes(t, 512, 1, buf, sizeof buf), -1);
    ck_assert_int_eq(tokenizer_token_bytes(t, -1, 1, buf, sizeof buf), -1);
    /* a short buffer: the full length comes back, only what fits is written */
    ck_assert_int_eq(tokenizer_token_bytes(t, 403, 0, buf, 2), 5);

    int32_t ids[16];
    ck_assert_int_eq(tokenizer_encode(t, "Once upon a time", 16, 1, 0, ids, 16), 5);
    ck_assert_int_eq(ids[0], 1);
    ck_assert_int_eq(ids[1], 403);
    /* more ids than room: the count, and the first max written */
    ids[2] = -7;
    ck_assert_int_eq(tokenizer_encode(t, "Once upon a time", 16, 0, 0, ids, 2), 4);
    ck_assert_int_eq(ids[1], 407);
    ck_assert_int_eq(ids[2], -7);
    ck_assert_int_eq(tokenizer_encode(t, "Once upon a time", 16, 0, 0, NULL, 0), 4);  /* count only */
    ck_assert_int_eq(tokenizer_encode(t, "", 0, 0, 0, ids, 16), 0);
    ck_assert_int_eq(tokenizer_encode(t, "", 0, 1, 0, ids, 16), 1);
    ck_assert_int_eq(tokenizer_encode(t, NULL, 0, 0, 0, ids, 16), 0);
    /* invalid UTF-8 is refused */
    ck_assert_int_eq(tokenizer_encode(t, "a\xff", 2, 0, 0, ids, 16), -1);
    ck_assert_int_eq(tokenizer_encode(t, "\xe2\x96", 2, 0, 0, ids, 16), -1);
    ck_assert_int_eq(tokenizer_encode(t, "\xed\xa0\x80", 3, 0, 0, ids, 16), -1);  /* surrogate */
    ck_assert_int_eq(tokenizer_encode(t, "\xc0\xaf", 2, 0, 0, ids, 16), -1);      /* overlong */
    /* an embedded NUL is a byte like any other */
    ck_assert_int_eq(tokenizer_encode(t, "a\0b", 3, 0, 0, ids, 16), 3);
    ck_assert_int_eq(ids[1], 3);                     /* <0x00> */
    tokenizer_free(t);
    gguf_close(gf);
}
END_TEST

/* The 256 greedy ids llama2.c documents for stories260K decode to its text. */
START_TEST(stories_greedy_text)
{
    static const char want[] =
        "Once upon a time, there was a little girl named Lily. She loved to play outside in "
        "the park. One day, she saw a big, red ball. She wanted to play with it, but it was "
        "too high.\nLily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't "
        "know what to do. She said, \"I want to play with your ball, but I can't find it.\"\n"
        "Lily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know "
        "what to do.\"\nLily didn't want to help her mom, so she said, \"I'm sorry, mom. I "
        "didn't know what to do.\" Her mom said, \"Don't worry, Lily. We can help you.";
    gguf_file *gf;
    tokenizer *t = load(root_path("models/stories260K.gguf"), &gf);
    FILE *f = fopen(root_path("tests/data/stories260K-greedy.txt"), "r");
    ck_assert(f);
    int32_t ids[300];
    int n = 0;
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        for (char *p = line, *end;; p = end) {
            long x = strtol(p, &end, 10);
            if (end == p) break;
            ck_assert(n < 300);
            ids[n++] = (int32_t)x;
        }
    }
    fclose(f);
    ck_assert_int_eq(n, 256);
    char text[4096];
    size_t m = decode(t, ids, n, 0, text, sizeof text);
    ck_assert_uint_eq(m, strlen(want));
    ck_assert(memcmp(text, want, m) == 0);
    /* and the text encodes back to the same ids (BOS first, as generated) */
    int32_t back[300];
    ck_assert_int_eq(tokenizer_encode(t, want, strlen(want), 0, 0, back, 300), 256);
    for (int i = 0; i < 256; i++) ck_assert_int_eq(back[i], ids[i]);
    tokenizer_free(t);
    gguf_close(gf);
}
END_TEST

/* ---- SmolLM2 (gpt2 byte-level BPE, pre "smollm") ----------------------- */

static int have_smollm(void)
{
    FILE *f = fopen(root_path(SMOLLM_REL), "rb");
    if (!f) {
        printf("test_tokenizer: skipping SmolLM2 cases: %s is absent "
               "(tools/fetch-models.sh fetches it)\n", path_buf);
        return 0;
    }
    fclose(f);
    return 1;
}

START_TEST(smollm_reference_ids)
{
    if (!have_smollm()) return;
    gguf_file *gf;
    tokenizer *t = load(root_path(SMOLLM_REL), &gf);
    check_cases(t, "tests/data/tokenizer/smollm2.tsv", 1);
    tokenizer_free(t);
    gguf_close(gf);
}
END_TEST

START_TEST(smollm_metadata)
{
    if (!have_smollm()) return;
    gguf_file *gf;
    tokenizer *t = load(root_path(SMOLLM_REL), &gf);
    ck_assert_int_eq(tokenizer_n_vocab(t), 49152);
    ck_assert(!tokenizer_is_spm(t));
    ck_assert_int_eq(tokenizer_add_bos(t), 0);
    ck_assert_int_eq(tokenizer_bos(t), 1);
    ck_assert_int_eq(tokenizer_eos(t), 2);
    ck_assert_int_eq(tokenizer_find(t, "<|im_end|>"), 2);
    ck_assert(tokenizer_is_eog(t, 2));              /* <|im_end|> */
    ck_assert(tokenizer_is_eog(t, 0));              /* <|endoftext|> */
    ck_assert(!tokenizer_is_eog(t, 1));
    char buf[64];
    int32_t sp = tokenizer_find(t, "\xc4\xa0");     /* "Ġ" is a space */
    ck_assert_int_ge(sp, 0);
    ck_assert_int_eq(tokenizer_token_bytes(t, sp, 0, buf, sizeof buf), 1);
    ck_assert_int_eq(buf[0], ' ');
    ck_assert_int_eq(tokenizer_token_bytes(t, 1, 1, buf, sizeof buf), 12);
    ck_assert(memcmp(buf, "<|im_start|>", 12) == 0);
    ck_assert_int_eq(tokenizer_token_bytes(t, 1, 0, buf, sizeof buf), 0);
    /* an ASCII byte comes back as itself, except the six whose byte-level
     * char SmolLM2's vocabulary lacks: those are dropped, as the references do */
    for (int b = 0; b < 0x80; b++) {
        char in = (char)b;
        int32_t id;
        int k = tokenizer_encode(t, &in, 1, 0, 0, &id, 1);
        if (b == 4 || b == 6 || b == 19 || b == 20 || b == 22 || b == 29) {
            ck_assert_int_eq(k, 0);
            continue;
        }
        ck_assert_int_eq(k, 1);
        ck_assert_msg(tokenizer_token_bytes(t, id, 0, buf, sizeof buf) == 1, "byte %d: id %d",
                      b, id);
        ck_assert_int_eq((uint8_t)buf[0], b);
    }
    tokenizer_free(t);
    gguf_close(gf);
}
END_TEST

/* ---- pre-tokenizer splits ---------------------------------------------- */

START_TEST(pretok_reference_splits)
{
    tcase *cs;
    int n = read_cases("tests/data/tokenizer/pretok.tsv", &cs);
    ck_assert_int_gt(n, 200);
    int lens[512];
    for (int i = 0; i < n; i++) {
        tcase *c = &cs[i];
        int k = tokenizer_pretok_split(c->flags, c->text, c->len, lens, 512);
        ck_assert_msg(k == c->n, "%s \"%s\": %d pieces, want %d", c->flags, c->text, k, c->n);
        for (int j = 0; j < k; j++)
            ck_assert_msg(lens[j] == c->ids[j], "%s \"%s\": piece %d has %d bytes, want %d",
                          c->flags, c->text, j, lens[j], c->ids[j]);
    }
    free_cases(cs, n);
    ck_assert_int_eq(tokenizer_pretok_split("no-such-pre", "a", 1, lens, 4), -1);
    ck_assert_int_eq(tokenizer_pretok_split("gpt2", "\xff", 1, lens, 4), -1);
    /* the Llama-3 split also names llama-bpe, which ignores merges */
    ck_assert_int_eq(tokenizer_pretok_split("llama-bpe", "x 12345", 7, lens, 4), 4);
}
END_TEST

/* ---- streaming detokenizer --------------------------------------------- */

START_TEST(detok_streaming)
{
    gguf_file *gf;
    tokenizer *t = load(root_path("models/stories260K.gguf"), &gf);
    detok d;
    char out[64];
    /* U+1F600 arrives as four byte tokens: nothing shows until the last */
    detok_init(&d);
    int32_t smile[4] = {3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80};
    for (int i = 0; i < 3; i++) ck_assert_int_eq(detok_push_tok(t, &d, smile[i], out, 64), 0);
    ck_assert_int_eq(detok_push_tok(t, &d, smile[3], out, 64), 4);
    ck_assert(memcmp(out, "\xf0\x9f\x98\x80", 4) == 0);
    ck_assert_int_eq(detok_flush(&d, out, 64), 0);

    /* a broken sequence: U+FFFD for the bytes that cannot finish, then the rest */
    detok_init(&d);
    ck_assert_int_eq(detok_push_tok(t, &d, 3 + 0xE2, out, 64), 0);
    int k = detok_push_tok(t, &d, 403, out, 64);      /* "▁Once" */
    ck_assert_int_eq(k, 8);
    ck_assert(memcmp(out, "\xef\xbf\xbd Once", 8) == 0);   /* not first any more: space kept */
    /* a stray continuation byte, and a lead byte left at the end */
    ck_assert_int_eq(detok_push_tok(t, &d, 3 + 0x80, out, 64), 3);
    ck_assert(memcmp(out, "\xef\xbf\xbd", 3) == 0);
    ck_assert_int_eq(detok_push_tok(t, &d, 3 + 0xF0, out, 64), 0);
    ck_assert_int_eq(detok_push_tok(t, &d, 3 + 0x9F, out, 64), 0);
    ck_assert_int_eq(detok_flush(&d, out, 64), 3);
    ck_assert(memcmp(out, "\xef\xbf\xbd", 3) == 0);
    ck_assert_int_eq(detok_flush(&d, out, 64), 0);

    /* the first text's SentencePiece space goes, once; BOS shows nothing */
    detok_init(&d);
    ck_assert_int_eq(detok_push_tok(t, &d, 1, out, 64), 0);
    ck_assert_int_eq(detok_push_tok(t, &d, 403, out, 64), 4);
    ck_assert(memcmp(out, "Once", 4) == 0);
    ck_assert_int_eq(detok_push_tok(t, &d, 407, out, 64), 5);
    ck_assert(memcmp(out, " upon", 5) == 0);
    /* never past cap, never half a character */
    detok_init(&d);
    ck_assert_int_eq(detok_push_tok(t, &d, 403, out, 2), 2);
    ck_assert(memcmp(out, "On", 2) == 0);
    detok_init(&d);
    for (int i = 0; i < 3; i++) detok_push_tok(t, &d, smile[i], out, 64);
    ck_assert_int_eq(detok_push_tok(t, &d, smile[3], out, 3), 0);
    ck_assert_int_eq(detok_push_tok(t, &d, -5, out, 64), 0);     /* bad id: nothing */
    tokenizer_free(t);
    gguf_close(gf);
}
END_TEST

/* ---- bad metadata ------------------------------------------------------- */

/* A GGUF v3 buffer holding only string key/values (and no tensors). */
static size_t mini_gguf(uint8_t *buf, const char *const *kv, int n)
{
    size_t o = 0;
#define PUT(p, k) (memcpy(buf + o, (p), (k)), o += (k))
    uint32_t v = 3, ty = GGUF_T_STRING;
    uint64_t nt = 0, nkv = (uint64_t)n;
    PUT("GGUF", 4);
    PUT(&v, 4);
    PUT(&nt, 8);
    PUT(&nkv, 8);
    for (int i = 0; i < n; i++) {
        uint64_t kl = strlen(kv[2 * i]), vl = strlen(kv[2 * i + 1]);
        PUT(&kl, 8);
        PUT(kv[2 * i], kl);
        PUT(&ty, 4);
        PUT(&vl, 8);
        PUT(kv[2 * i + 1], vl);
    }
#undef PUT
    return o;
}

START_TEST(bad_metadata)
{
    uint8_t buf[1024];
    char err[256];
    static const char *const cases[][4] = {
        {"general.architecture", "llama", "x.y", "z"},
        {"tokenizer.ggml.model", "bert", "x.y", "z"},
        {"tokenizer.ggml.model", "llama", "x.y", "z"},
        {"tokenizer.ggml.model", "gpt2", "tokenizer.ggml.tokens", "not an array"},
    };
    static const char *const want[] = {"tokenizer.ggml.model", "bert", "tokens", "tokens"};
    for (int i = 0; i < 4; i++) {
        size_t n = mini_gguf(buf, cases[i], 2);
        gguf_file *gf = gguf_open_mem(buf, n, err, sizeof err);
        ck_assert_msg(gf != NULL, "%s", err);
        err[0] = 0;
        ck_assert_ptr_null(tokenizer_load(gf, err, sizeof err));
        ck_assert_msg(strstr(err, want[i]) != NULL, "case %d: \"%s\"", i, err);
        gguf_close(gf);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("tokenizer");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, stories_reference_ids);
    tcase_add_test(tc, stories_metadata);
    tcase_add_test(tc, stories_greedy_text);
    tcase_add_test(tc, smollm_reference_ids);
    tcase_add_test(tc, smollm_metadata);
    tcase_add_test(tc, pretok_reference_splits);
    tcase_add_test(tc, detok_streaming);
    tcase_add_test(tc, bad_metadata);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
