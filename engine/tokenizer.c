/* Tokenizers built from GGUF metadata, with the semantics llama.cpp gives a
 * GGUF vocabulary (and that the reference tokenizers agree with, see
 * tools/tokref.py):
 *
 * "llama": SentencePiece BPE.  Spaces become U+2581, a space is prefixed to
 * the text (and after every special token), then adjacent symbols merge,
 * best-scored merged piece first, leftmost on ties; a symbol left that is not
 * a vocabulary piece falls back to its <0xNN> byte tokens.
 *
 * "gpt2": byte-level BPE.  The text is cut by the model's pre-tokenizer regex
 * (written out by hand below), each piece's bytes start as the byte-level
 * tokens, and merges apply lowest rank first, leftmost on ties.
 *
 * Special tokens (CONTROL and UNKNOWN with parse_special, USER_DEFINED
 * always) are matched in the raw text first, longest first. */
#include "engine/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/unicode_tables.h"

enum { TT_UNDEF = 0, TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3,
       TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };
enum { KIND_SPM, KIND_BPE };
enum { PRE_GPT2, PRE_SMOLLM, PRE_LLAMA3, PRE_QWEN2 };

struct tokenizer {
    int kind, pre;
    int n_vocab;
    char *arena;            /* every token text, NUL-terminated */
    uint32_t *off, *len;
    float *score;
    uint8_t *type;
    uint8_t *eog;
    uint8_t *rstrip;        /* whitespace after this special token is dropped; NULL: none */
    int32_t *vh;            /* open-addressed text -> id */
    uint32_t vh_mask;
    uint64_t *mk;           /* open-addressed (left id, right id) -> merge */
    int32_t *mrank, *mres;
    uint32_t mh_mask;
    int32_t byte_tok[256];  /* spm: <0xNN>; bpe: token of the byte's char */
    uint16_t byte_cp[256];  /* gpt2 byte -> code point */
    int16_t cp_byte[324];   /* and back; -1 where none */
    int32_t *special;       /* by first byte, then longest first */
    int sp_first[257];
    int bos, eos, unk;
    int add_bos, add_space_prefix, ignore_merges;
};

/* ---- small helpers ------------------------------------------------------ */

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 16777619u;
    }
    return h;
}

static uint32_t hash_u64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (uint32_t)k;
}

typedef struct ivec {
    int32_t *v;
    int n, cap;
    int oom;
} ivec;

static void ivec_push(ivec *a, int32_t x)
{
    if (a->n == a->cap) {
        int cap = a->cap ? a->cap * 2 : 64;
        int32_t *v = realloc(a->v, (size_t)cap * sizeof(*v));
        if (!v) {
            a->oom = 1;
            return;
        }
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
}

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static int utf8_len(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    if (c < 0x80) return 1;
    int len;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return 0;
    if ((size_t)len > n) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (int i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

static uint32_t utf8_decode(const uint8_t *s, int len)
{
    switch (len) {
    case 1: return s[0];
    case 2: return (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
    case 3: return (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
    default: return (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 |
                    (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
    }
}

static int utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static int utf8_valid(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        int l = utf8_len((const uint8_t *)s + i, n - i);
        if (!l) return 0;
        i += (size_t)l;
    }
    return 1;
}

/* Unicode class of a code point (letter, number, whitespace, other). */
static int ucls(uint32_t cp)
{
    int lo = 0, hi = (int)(sizeof(ucls_runs) / sizeof(ucls_runs[0])) - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if ((ucls_runs[mid] >> 2) <= cp) lo = mid;
        else hi = mid - 1;
    }
    return (int)(ucls_runs[lo] & 3);
}

/* GPT-2's byte <-> printable code point table: printable Latin-1 bytes map
 * to themselves, the other 68 to U+0100.. in byte order. */
static int byte_is_printable(int b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

static void byte_tables(uint16_t *byte_cp, int16_t *cp_byte)
{
    int extra = 0;
    for (int i = 0; i < 324; i++) cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        byte_cp[b] = (uint16_t)(byte_is_printable(b) ? b : 256 + extra++);
        cp_byte[byte_cp[b]] = (int16_t)b;
    }
}

/* ---- vocabulary lookups ------------------------------------------------- */

static const char *tok_text(const tokenizer *t, int id) { return t->arena + t->off[id]; }

static int32_t vocab_find(const tokenizer *t, const char *s, size_t n)
{
    for (uint32_t h = hash_bytes(s, n) & t->vh_mask;; h = (h + 1) & t->vh_mask) {
        int32_t id = t->vh[h];
        if (id < 0) return -1;
        if (t->len[id] == n && memcmp(tok_text(t, id), s, n) == 0) return id;
    }
}

static int merge_find(const tokenizer *t, int32_t l, int32_t r, int32_t *res)
{
    if (!t->mk || l < 0 || r < 0) return -1;
    uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
    for (uint32_t h = hash_u64(key) & t->mh_mask;; h = (h + 1) & t->mh_mask) {
        if (t->mrank[h] < 0) return -1;
        if (t->mk[h] == key) {
            *res = t->mres[h];
            return t->mrank[h];
        }
    }
}

/* ---- loading ------------------------------------------------------------ */

static double kv_num(const gguf_kv *kv, uint64_t i)
{
    switch (kv->arr_type) {
    case GGUF_T_F32: case GGUF_T_F64: return ((const double *)kv->arr)[i];
    case GGUF_T_I8: case GGUF_T_I16: case GGUF_T_I32: case GGUF_T_I64:
        return (double)((const int64_t *)kv->arr)[i];
    default: return (double)((const uint64_t *)kv->arr)[i];
    }
}

static const gguf_kv *find_array(const gguf_file *f, const char *key, int want_str)
{
    const gguf_kv *kv = gguf_find(f, key);
    if (!kv || kv->type != GGUF_T_ARRAY) return NULL;
    if (want_str != (kv->arr_type == GGUF_T_STRING)) return NULL;
    if (!want_str && (kv->arr_type == GGUF_T_ARRAY || !kv->arr)) return NULL;
    if (want_str && !kv->arr_str && kv->arr_n) return NULL;
    return kv;
}

static int token_id(const gguf_file *f, const char *key, int n)
{
    int64_t v;
    if (gguf_get_i64(f, key, &v) != 0 || v < 0 || v >= n) return -1;
    return (int)v;
}

static uint32_t table_size(uint64_t n)
{
    uint32_t s = 16;
    while (s < 2 * n) s <<= 1;
    return s;
}

static const struct { const char *name; int pre, ignore_merges; } pre_names[] = {
    {"default", PRE_GPT2, 0}, {"gpt2", PRE_GPT2, 0}, {"gpt-2", PRE_GPT2, 0},
    {"smollm", PRE_SMOLLM, 0},
    {"llama3", PRE_LLAMA3, 1}, {"llama-v3", PRE_LLAMA3, 1}, {"llama-bpe", PRE_LLAMA3, 1},
    {"qwen2", PRE_QWEN2, 0}, {"deepseek-r1-qwen", PRE_QWEN2, 0},
};

static int pre_lookup(const char *name, int *ignore_merges)
{
    for (size_t i = 0; i < sizeof(pre_names) / sizeof(pre_names[0]); i++)
        if (strcmp(name, pre_names[i].name) == 0) {
            if (ignore_merges) *ignore_merges = pre_names[i].ignore_merges;
            return pre_names[i].pre;
        }
    return -1;
}

typedef struct sp_ent {
    uint8_t first;
    uint32_t len;
    int32_t id;
} sp_ent;

static int cmp_special(const void *a, const void *b)
{
    const sp_ent *x = a, *y = b;
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int load_merges(tokenizer *t, const gguf_kv *kv, char *err, size_t errlen)
{
    uint64_t n = kv->arr_n;
    t->mh_mask = table_size(n) - 1;
    t->mk = malloc(((size_t)t->mh_mask + 1) * sizeof(*t->mk));
    t->mrank = malloc(((size_t)t->mh_mask + 1) * sizeof(*t->mrank));
    t->mres = malloc(((size_t)t->mh_mask + 1) * sizeof(*t->mres));
    char *buf = NULL;
    size_t bufcap = 0;
    if (!t->mk || !t->mrank || !t->mres) goto oom;
    memset(t->mrank, 0xff, ((size_t)t->mh_mask + 1) * sizeof(*t->mrank));
    for (uint64_t i = 0; i < n; i++) {
        const gguf_str *m = &kv->arr_str[i];
        const char *sp = memchr(m->s, ' ', m->n);
        if (!sp || sp == m->s || sp == m->s + m->n - 1) {
            snprintf(err, errlen, "tokenizer: merge %llu is not \"left right\"",
                     (unsigned long long)i);
            free(buf);
            return -1;
        }
        size_t ln = (size_t)(sp - m->s), rn = m->n - ln - 1;
        int32_t l = vocab_find(t, m->s, ln), r = vocab_find(t, sp + 1, rn);
        if (ln + rn > bufcap) {
            bufcap = (ln + rn) * 2;
            char *nb = realloc(buf, bufcap);
            if (!nb) goto oom;
            buf = nb;
        }
        memcpy(buf, m->s, ln);
        memcpy(buf + ln, sp + 1, rn);
        int32_t res = vocab_find(t, buf, ln + rn);
        if (l < 0 || r < 0 || res < 0) continue;   /* cannot apply; as HF skips */
        uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
        uint32_t h = hash_u64(key) & t->mh_mask;
        while (t->mrank[h] >= 0 && t->mk[h] != key) h = (h + 1) & t->mh_mask;
        if (t->mrank[h] >= 0) continue;             /* duplicate: first rank wins */
        t->mk[h] = key;
        t->mrank[h] = (int32_t)i;
        t->mres[h] = res;
    }
    free(buf);
    return 0;
oom:
    free(buf);
    snprintf(err, errlen, "tokenizer: out of memory");
    return -1;
}

static const char *const eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|eom_id|>", "<EOT>", "</s>", "<|end_of_text|>",
};

/* Phi-3's added tokens strip the whitespace that follows them (rstrip in
 * its tokenizer.json), except <unk>, <s> and <|endoftext|>; GGUF does not
 * record it, so llama.cpp knows the model by its name, and so do we. */
static int phi3_rstrip(tokenizer *t, const gguf_file *f)
{
    const char *name = gguf_get_str(f, "general.name");
    char low[256];
    size_t k = 0;
    for (; name && name[k] && k < sizeof low - 1; k++)
        low[k] = (char)(name[k] >= 'A' && name[k] <= 'Z' ? name[k] + 32 : name[k]);
    low[k] = 0;
    if (!strstr(low, "phi-3") && !strstr(low, "phi3"))
        return 0;
    if (!(t->rstrip = calloc((size_t)t->n_vocab, 1)))
        return -1;
    for (int i = t->sp_first[0]; i < t->sp_first[256]; i++)
        t->rstrip[t->special[i]] = 1;
    static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
        int id = vocab_find(t, keep[i], strlen(keep[i]));
        if (id >= 0)
            t->rstrip[id] = 0;
    }
    return 0;
}

tokenizer *tokenizer_load(const gguf_file *f, char *err, size_t errlen)
{
    const char *model = gguf_get_str(f, "tokenizer.ggml.model");
    if (!model) {
        snprintf(err, errlen, "tokenizer: no tokenizer.ggml.model in the file");
        return NULL;
    }
    int kind;
    if (strcmp(model, "llama") == 0) kind = KIND_SPM;
    else if (strcmp(model, "gpt2") == 0) kind = KIND_BPE;
    else {
        snprintf(err, errlen, "tokenizer: unsupported tokenizer model '%s' (llama and gpt2 are)", model);
        return NULL;
    }
    const gguf_kv *toks = find_array(f, "tokenizer.ggml.tokens", 1);
    if (!toks || toks->arr_n == 0 || toks->arr_n > (1u << 24)) {
        snprintf(err, errlen, "tokenizer: tokenizer.ggml.tokens missing, empty or not strings");
        return NULL;
    }
    int n = (int)toks->arr_n;
    const gguf_kv *scores = find_array(f, "tokenizer.ggml.scores", 0);
    const gguf_kv *types = find_array(f, "tokenizer.ggml.token_type", 0);
    if ((scores && scores->arr_n != (uint64_t)n) || (types && types->arr_n != (uint64_t)n)) {
        snprintf(err, errlen, "tokenizer: scores or token types do not match the %d tokens", n);
        return NULL;
    }
    const gguf_kv *merges = NULL;
    int pre = PRE_GPT2, ignore_merges = 0;
    if (kind == KIND_BPE) {
        merges = find_array(f, "tokenizer.ggml.merges", 1);
        if (!merges) {
            snprintf(err, errlen, "tokenizer: gpt2 tokenizer without tokenizer.ggml.merges");
            return NULL;
        }
        const char *p = gguf_get_str(f, "tokenizer.ggml.pre");
        if (p && (pre = pre_lookup(p, &ignore_merges)) < 0) {
            snprintf(err, errlen, "tokenizer: unsupported pre-tokenizer '%s'", p);
            return NULL;
        }
        if (!p) pre = PRE_GPT2;
    }

    tokenizer *t = calloc(1, sizeof(*t));
    if (!t) goto oom;
    t->kind = kind;
    t->pre = pre;
    t->ignore_merges = ignore_merges;
    t->n_vocab = n;
    size_t total = 0;
    for (int i = 0; i < n; i++) total += toks->arr_str[i].n + 1;
    t->arena = malloc(total);
    t->off = malloc((size_t)n * sizeof(*t->off));
    t->len = malloc((size_t)n * sizeof(*t->len));
    t->score = calloc((size_t)n, sizeof(*t->score));
    t->type = malloc((size_t)n);
    t->eog = calloc((size_t)n, 1);
    t->vh_mask = table_size((uint64_t)n) - 1;
    t->vh = malloc(((size_t)t->vh_mask + 1) * sizeof(*t->vh));
    if (!t->arena || !t->off || !t->len || !t->score || !t->type || !t->eog || !t->vh) goto oom;
    memset(t->vh, 0xff, ((size_t)t->vh_mask + 1) * sizeof(*t->vh));
    size_t pos = 0;
    for (int i = 0; i < n; i++) {
        const gguf_str *s = &toks->arr_str[i];
        if (s->n > UINT32_MAX / 2) {
            snprintf(err, errlen, "tokenizer: token %d is too long", i);
            tokenizer_free(t);
            return NULL;
        }
        memcpy(t->arena + pos, s->s, s->n);
        t->arena[pos + s->n] = 0;
        t->off[i] = (uint32_t)pos;
        t->len[i] = (uint32_t)s->n;
        pos += s->n + 1;
        t->score[i] = scores ? (float)kv_num(scores, (uint64_t)i) : 0.0f;
        double ty = types ? kv_num(types, (uint64_t)i) : TT_NORMAL;
        t->type[i] = (ty >= 0 && ty <= TT_BYTE) ? (uint8_t)ty : TT_NORMAL;
        /* text -> id; a repeated text maps to its last id, as in llama.cpp and HF */
        uint32_t h = hash_bytes(s->s, s->n) & t->vh_mask;
        while (t->vh[h] >= 0 && !(t->len[t->vh[h]] == s->n &&
                                   memcmp(tok_text(t, t->vh[h]), s->s, s->n) == 0))
            h = (h + 1) & t->vh_mask;
        t->vh[h] = i;
    }

    /* byte tokens */
    byte_tables(t->byte_cp, t->cp_byte);
    for (int b = 0; b < 256; b++) {
        char buf[8];
        int len;
        if (kind == KIND_SPM) len = snprintf(buf, sizeof buf, "<0x%02X>", b);
        else len = utf8_encode(t->byte_cp[b], buf);
        t->byte_tok[b] = vocab_find(t, buf, (size_t)len);
    }
    if (kind == KIND_BPE && load_merges(t, merges, err, errlen) != 0) {
        tokenizer_free(t);
        return NULL;
    }

    t->bos = token_id(f, "tokenizer.ggml.bos_token_id", n);
    t->eos = token_id(f, "tokenizer.ggml.eos_token_id", n);
    t->unk = token_id(f, "tokenizer.ggml.unknown_token_id", n);
    int v;
    /* default: llama.cpp's (SentencePiece and Llama-3 vocabularies want BOS) */
    t->add_bos = gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &v) == 0 ? v
                 : kind == KIND_SPM || pre == PRE_LLAMA3;
    if (t->bos < 0) t->add_bos = 0;
    t->add_space_prefix = gguf_get_bool(f, "tokenizer.ggml.add_space_prefix", &v) == 0 ? v
                          : kind == KIND_SPM;

    /* end of generation: EOS, the EOT/EOM ids, and the usual turn enders */
    if (t->eos >= 0) t->eog[t->eos] = 1;
    int id = token_id(f, "tokenizer.ggml.eot_token_id", n);
    if (id >= 0) t->eog[id] = 1;
    id = token_id(f, "tokenizer.ggml.eom_token_id", n);
    if (id >= 0) t->eog[id] = 1;
    for (size_t i = 0; i < sizeof(eog_texts) / sizeof(eog_texts[0]); i++) {
        id = vocab_find(t, eog_texts[i], strlen(eog_texts[i]));
        if (id >= 0 && (t->type[id] == TT_CONTROL || t->type[id] == TT_USER)) t->eog[id] = 1;
    }

    /* special tokens, grouped by first byte, longest first */
    int ns = 0;
    for (int i = 0; i < n; i++)
        if (t->len[i] && (t->type[i] == TT_CONTROL || t->type[i] == TT_USER ||
                          t->type[i] == TT_UNKNOWN)) ns++;
    sp_ent *ents = malloc((size_t)(ns ? ns : 1) * sizeof(*ents));
    t->special = malloc((size_t)(ns ? ns : 1) * sizeof(*t->special));
    if (!ents || !t->special) {
        free(ents);
        goto oom;
    }
    ns = 0;
    for (int i = 0; i < n; i++)
        if (t->len[i] && (t->type[i] == TT_CONTROL || t->type[i] == TT_USER ||
                          t->type[i] == TT_UNKNOWN))
            ents[ns++] = (sp_ent){(uint8_t)tok_text(t, i)[0], t->len[i], i};
    qsort(ents, (size_t)ns, sizeof(*ents), cmp_special);
    for (int i = 0; i < ns; i++) t->special[i] = ents[i].id;
    free(ents);
    int j = 0;
    for (int c = 0; c < 256; c++) {
        t->sp_first[c] = j;
        while (j < ns && (uint8_t)tok_text(t, t->special[j])[0] == c) j++;
    }
    t->sp_first[256] = ns;
    if (phi3_rstrip(t, f))
        goto oom;
    return t;

oom:
    snprintf(err, errlen, "tokenizer: out of memory");
    tokenizer_free(t);
    return NULL;
}

void tokenizer_free(tokenizer *t)
{
    if (!t) return;
    free(t->arena); free(t->off); free(t->len); free(t->score); free(t->type);
    free(t->eog); free(t->rstrip); free(t->vh); free(t->mk); free(t->mrank); free(t->mres);
    free(t->special);
    free(t);
}

int tokenizer_n_vocab(const tokenizer *t) { return t->n_vocab; }
int tokenizer_bos(const tokenizer *t) { return t->bos; }
int tokenizer_eos(const tokenizer *t) { return t->eos; }
int tokenizer_add_bos(const tokenizer *t) { return t->add_bos; }
int tokenizer_is_spm(const tokenizer *t) { return t->kind == KIND_SPM; }

int tokenizer_is_eog(const tokenizer *t, int32_t tok)
{
    return tok >= 0 && tok < t->n_vocab && t->eog[tok];
}

int tokenizer_is_control(const tokenizer *t, int32_t tok)
{
    return tok >= 0 && tok < t->n_vocab && t->type[tok] == TT_CONTROL;
}

int32_t tokenizer_find(const tokenizer *t, const char *text)
{
    return text ? vocab_find(t, text, strlen(text)) : -1;
}

const char *tokenizer_token_text(const tokenizer *t, int32_t tok)
{
    return tok >= 0 && tok < t->n_vocab ? tok_text(t, tok) : NULL;
}

/* ---- the merge loop shared by both BPE flavours ------------------------- */

/* Symbols form a linked list over the text; a candidate merge is keyed so
 * that the smallest key is the one to apply: (rank, left) for gpt2,
 * (-score, left) for SentencePiece.  Entries go stale when a neighbour
 * changes; they are checked when popped. */
typedef struct sym {
    int start, n;           /* bytes of the text it covers; n = 0 once merged away */
    int prev, next;
    int32_t id;
} sym;

typedef struct cand {
    uint64_t key;
    int l, r;
    int32_t lid, rid, res;
} cand;

typedef struct heap {
    cand *v;
    int n, cap, oom;
} heap;

static void heap_push(heap *h, cand c)
{
    if (h->n == h->cap) {
        int cap = h->cap ? h->cap * 2 : 256;
        cand *v = realloc(h->v, (size_t)cap * sizeof(*v));
        if (!v) {
            h->oom = 1;
            return;
        }
        h->v = v;
        h->cap = cap;
    }
    int i = h->n++;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (h->v[p].key <= c.key) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = c;
}

static cand heap_pop(heap *h)
{
    cand top = h->v[0], last = h->v[--h->n];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && h->v[c + 1].key < h->v[c].key) c++;
        if (last.key <= h->v[c].key) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n > 0) h->v[i] = last;
    return top;
}

/* Orders floats as unsigned integers. */
static uint32_t float_key(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static int spm_mergeable(const tokenizer *t, int32_t id)
{
    uint8_t ty = t->type[id];
    return ty == TT_NORMAL || ty == TT_USER || ty == TT_UNDEF;
}

static void try_pair(const tokenizer *t, const char *text, sym *s, heap *h, int l, int r)
{
    if (l < 0 || r < 0) return;
    cand c = {0, l, r, s[l].id, s[r].id, -1};
    if (t->kind == KIND_SPM) {
        int32_t id = vocab_find(t, text + s[l].start, (size_t)(s[l].n + s[r].n));
        if (id < 0 || !spm_mergeable(t, id)) return;
        c.res = id;
        c.key = (uint64_t)float_key(-t->score[id]) << 32 | (uint32_t)l;
    } else {
        int rank = merge_find(t, s[l].id, s[r].id, &c.res);
        if (rank < 0) return;
        c.key = (uint64_t)(uint32_t)rank << 32 | (uint32_t)l;
    }
    heap_push(h, c);
}

/* Merges the symbols of text (already split into n symbols) in place. */
static int run_merges(const tokenizer *t, const char *text, sym *s, int n)
{
    heap h = {0};
    for (int i = 1; i < n; i++) try_pair(t, text, s, &h, i - 1, i);
    while (h.n > 0 && !h.oom) {
        cand c = heap_pop(&h);
        sym *l = &s[c.l], *r = &s[c.r];
        if (l->n == 0 || r->n == 0 || l->next != c.r || l->id != c.lid || r->id != c.rid)
            continue;
        l->n += r->n;
        l->id = c.res;
        l->next = r->next;
        if (r->next >= 0) s[r->next].prev = c.l;
        r->n = 0;
        try_pair(t, text, s, &h, l->prev, c.l);
        try_pair(t, text, s, &h, c.l, l->next);
    }
    int oom = h.oom;
    free(h.v);
    return oom ? -1 : 0;
}

/* ---- SentencePiece ------------------------------------------------------ */

static void spm_encode(const tokenizer *t, const char *text, size_t len, int prefix, ivec *out)
{
    /* escape: optional leading space, then every ' ' as U+2581 */
    size_t cap = 3 * (len + 1);
    char *buf = malloc(cap);
    sym *s = malloc((len + 1) * sizeof(*s));
    if (!buf || !s) {
        out->oom = 1;
        goto done;
    }
    size_t n = 0;
    if (prefix) {
        memcpy(buf, "\xe2\x96\x81", 3);
        n = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(buf + n, "\xe2\x96\x81", 3);
            n += 3;
        } else buf[n++] = text[i];
    }
    int ns = 0;
    for (size_t i = 0; i < n;) {
        int l = utf8_len((const uint8_t *)buf + i, n - i);
        if (!l) l = 1;      /* cannot happen: input was validated */
        s[ns] = (sym){(int)i, l, ns - 1, ns + 1, -1};
        s[ns].id = vocab_find(t, buf + i, (size_t)l);
        ns++;
        i += (size_t)l;
    }
    if (ns == 0) goto done;
    s[ns - 1].next = -1;
    if (run_merges(t, buf, s, ns) != 0) {
        out->oom = 1;
        goto done;
    }
    for (int i = 0; i >= 0; i = s[i].next) {
        int32_t id = s[i].id;
        if (id >= 0 && spm_mergeable(t, id)) {
            ivec_push(out, id);
            continue;
        }
        for (int k = 0; k < s[i].n; k++) {
            int32_t b = t->byte_tok[(uint8_t)buf[s[i].start + k]];
            if (b >= 0) ivec_push(out, b);
            else if (t->unk >= 0) ivec_push(out, t->unk);
        }
    }
done:
    free(buf);
    free(s);
}

/* ---- pre-tokenizers ----------------------------------------------------- */

/* Each matcher returns the end of the piece that starts at i (cp[i..n) is
 * the text the regex sees). */

static int run_of(const uint32_t *cp, int i, int n, int cls)
{
    while (i < n && ucls(cp[i]) == cls) i++;
    return i;
}

static int ws_tail(const uint32_t *cp, int i, int n)
{
    /* \s+(?!\S) then \s+: a run of spaces gives all but its last char to
     * the next piece, unless it ends the text or is a single char */
    int e = run_of(cp, i, n, UCLS_SPACE);
    if (e == n) return n;
    return e - i >= 2 ? e - 1 : e;
}

/* 's|'t|'re|'ve|'m|'ll|'d, optionally case-insensitive; returns the length */
static int contraction(const uint32_t *cp, int i, int n, int icase)
{
    if (cp[i] != '\'' || i + 1 >= n) return 0;
    uint32_t a = cp[i + 1], b = i + 2 < n ? cp[i + 2] : 0;
    if (icase) {
        if (a >= 'A' && a <= 'Z') a += 32;
        if (b >= 'A' && b <= 'Z') b += 32;
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static int match_gpt2(const uint32_t *cp, int i, int n)
{
    int c = contraction(cp, i, n, 0);
    if (c) return i + c;
    int j = (cp[i] == ' ' && i + 1 < n && ucls(cp[i + 1]) != UCLS_SPACE) ? i + 1 : i;
    int k = ucls(cp[j]);
    if (k != UCLS_SPACE) return run_of(cp, j, n, k);
    return ws_tail(cp, i, n);
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}
 * | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * (Llama-3 with D = 3, Qwen2 with D = 1) */
static int match_llama3(const uint32_t *cp, int i, int n, int digits)
{
    int c = contraction(cp, i, n, 1);
    if (c) return i + c;
    int k = ucls(cp[i]);
    if (k == UCLS_LETTER) return run_of(cp, i, n, UCLS_LETTER);
    if (k != UCLS_NUMBER && cp[i] != '\r' && cp[i] != '\n' && i + 1 < n &&
        ucls(cp[i + 1]) == UCLS_LETTER)
        return run_of(cp, i + 1, n, UCLS_LETTER);
    if (k == UCLS_NUMBER) {
        int e = i;
        while (e < n && e - i < digits && ucls(cp[e]) == UCLS_NUMBER) e++;
        return e;
    }
    int j = (cp[i] == ' ' && i + 1 < n && ucls(cp[i + 1]) == UCLS_OTHER) ? i + 1 : i;
    if (ucls(cp[j]) == UCLS_OTHER) {
        j = run_of(cp, j, n, UCLS_OTHER);
        while (j < n && (cp[j] == '\r' || cp[j] == '\n')) j++;
        return j;
    }
    /* whitespace: up to its last newline if it has one */
    int e = run_of(cp, i, n, UCLS_SPACE), nl = -1;
    for (int p = i; p < e; p++)
        if (cp[p] == '\r' || cp[p] == '\n') nl = p;
    if (nl >= 0) return nl + 1;
    return ws_tail(cp, i, n);
}

/* Cuts cp[0..n) into pieces; writes piece ends (code point indices). */
static int pretok(int pre, const uint32_t *cp, int n, int *ends)
{
    int np = 0;
    for (int i = 0; i < n;) {
        int e;
        if (pre == PRE_SMOLLM) {
            /* every number char alone, then GPT-2 on the text between */
            if (ucls(cp[i]) == UCLS_NUMBER) e = i + 1;
            else {
                int seg = i;
                while (seg < n && ucls(cp[seg]) != UCLS_NUMBER) seg++;
                while (i < seg) {
                    i = match_gpt2(cp, i, seg);
                    ends[np++] = i;
                }
                continue;
            }
        } else if (pre == PRE_LLAMA3) e = match_llama3(cp, i, n, 3);
        else if (pre == PRE_QWEN2) e = match_llama3(cp, i, n, 1);
        else e = match_gpt2(cp, i, n);
        ends[np++] = e;
        i = e;
    }
    return np;
}

/* Decodes valid UTF-8 into code points and their byte offsets (off[n] = len). */
static int decode_cps(const char *text, size_t len, uint32_t **cps, int **offs)
{
    uint32_t *cp = malloc((len + 1) * sizeof(*cp));
    int *off = malloc((len + 1) * sizeof(*off));
    if (!cp || !off) {
        free(cp);
        free(off);
        return -1;
    }
    int n = 0;
    for (size_t i = 0; i < len;) {
        int l = utf8_len((const uint8_t *)text + i, len - i);
        if (!l) {
            free(cp);
            free(off);
            return -1;
        }
        cp[n] = utf8_decode((const uint8_t *)text + i, l);
        off[n++] = (int)i;
        i += (size_t)l;
    }
    off[n] = (int)len;
    *cps = cp;
    *offs = off;
    return n;
}

int tokenizer_pretok_split(const char *pre, const char *text, size_t len, int *lens, int max)
{
    int p = pre_lookup(pre, NULL);
    if (p < 0 || len > (size_t)1 << 30) return -1;
    uint32_t *cp;
    int *off;
    int n = decode_cps(text, len, &cp, &off);
    if (n < 0) return -1;
    int *ends = malloc(((size_t)n + 1) * sizeof(*ends));
    if (!ends) {
        free(cp);
        free(off);
        return -1;
    }
    int np = pretok(p, cp, n, ends);
    for (int i = 0; i < np && i < max; i++)
        lens[i] = off[ends[i]] - (i ? off[ends[i - 1]] : 0);
    free(ends);
    free(cp);
    free(off);
    return np;
}

/* ---- byte-level BPE ----------------------------------------------------- */

static void bpe_word(const tokenizer *t, const uint8_t *w, int n, sym *s, char *scratch, ivec *out)
{
    if (t->ignore_merges) {
        /* Llama-3: a piece that is a token is taken whole */
        int m = 0;
        for (int i = 0; i < n; i++) m += utf8_encode(t->byte_cp[w[i]], scratch + m);
        int32_t id = vocab_find(t, scratch, (size_t)m);
        if (id >= 0) {
            ivec_push(out, id);
            return;
        }
    }
    for (int i = 0; i < n; i++) s[i] = (sym){i, 1, i - 1, i + 1, t->byte_tok[w[i]]};
    s[n - 1].next = -1;
    if (run_merges(t, (const char *)w, s, n) != 0) {
        out->oom = 1;
        return;
    }
    /* a byte whose char is not in the vocabulary is dropped (llama.cpp and
     * HF agree; SmolLM2 lacks 21 of the 256) */
    for (int i = 0; i >= 0; i = s[i].next)
        if (s[i].id >= 0) ivec_push(out, s[i].id);
}

static void bpe_encode(const tokenizer *t, const char *text, size_t len, ivec *out)
{
    uint32_t *cp;
    int *off;
    int n = decode_cps(text, len, &cp, &off);
    if (n < 0) {
        out->oom = 1;
        return;
    }
    int *ends = malloc(((size_t)n + 1) * sizeof(*ends));
    sym *s = malloc((len + 1) * sizeof(*s));
    char *scratch = t->ignore_merges ? malloc(2 * len + 1) : NULL;
    if (!ends || !s || (t->ignore_merges && !scratch)) {
        out->oom = 1;
    } else {
        int np = pretok(t->pre, cp, n, ends);
        for (int i = 0, a = 0; i < np && !out->oom; i++) {
            int b = off[ends[i]];
            bpe_word(t, (const uint8_t *)text + a, b - a, s, scratch, out);
            a = b;
        }
    }
    free(scratch);
    free(s);
    free(ends);
    free(cp);
    free(off);
}

/* ---- encode ------------------------------------------------------------- */

/* Longest special token at text[i..len) that may be matched, or -1. */
static int32_t match_special(const tokenizer *t, const char *text, size_t i, size_t len,
                             int parse_special)
{
    uint8_t c = (uint8_t)text[i];
    for (int k = t->sp_first[c]; k < t->sp_first[c + 1]; k++) {
        int32_t id = t->special[k];
        if (!parse_special && t->type[id] != TT_USER) continue;
        if (t->len[id] <= len - i && memcmp(text + i, tok_text(t, id), t->len[id]) == 0)
            return id;
    }
    return -1;
}

static void encode_text(const tokenizer *t, const char *text, size_t len, int after_special,
                        ivec *out)
{
    if (len == 0) return;
    if (t->kind == KIND_SPM) spm_encode(t, text, len, after_special && t->add_space_prefix, out);
    else bpe_encode(t, text, len, out);
}

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_bos,
                     int parse_special, int32_t *out, int max)
{
    if ((!text && len) || len > (size_t)1 << 30 || !utf8_valid(text, len)) return -1;
    if (!out || max < 0) max = 0;
    ivec v = {0};
    if (add_bos && t->bos >= 0) ivec_push(&v, t->bos);
    int after_special = 1;  /* SentencePiece prefixes a space to the first text too */
    size_t start = 0;
    for (size_t i = 0; i < len && !v.oom;) {
        int32_t id = match_special(t, text, i, len, parse_special);
        if (id < 0) {
            i += (size_t)utf8_len((const uint8_t *)text + i, len - i);
            continue;
        }
        if (i > start) {
            encode_text(t, text + start, i - start, after_special, &v);
            after_special = 0;
        }
        ivec_push(&v, id);
        after_special = 1;
        i += t->len[id];
        while (t->rstrip && t->rstrip[id] && i < len && text[i] && strchr(" \t\n\v\f\r", text[i]))
            i++;
        start = i;
    }
    if (start < len) encode_text(t, text + start, len - start, after_special, &v);
    if (v.oom) {
        free(v.v);
        return -1;
    }
    for (int i = 0; i < v.n && i < max; i++) out[i] = v.v[i];
    int n = v.n;
    free(v.v);
    return n;
}

/* ---- decode ------------------------------------------------------------- */

static int put(char *buf, int len, int n, const char *s, int k)
{
    for (int i = 0; i < k; i++)
        if (n + i < len) buf[n + i] = s[i];
    return n + k;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int tokenizer_token_bytes(const tokenizer *t, int32_t tok, int show_special, char *buf, int len)
{
    if (tok < 0 || tok >= t->n_vocab || len < 0 || (!buf && len)) return -1;
    const char *s = tok_text(t, tok);
    int n = (int)t->len[tok];
    switch (t->type[tok]) {
    case TT_CONTROL:
    case TT_UNKNOWN:
        return show_special ? put(buf, len, 0, s, n) : 0;
    case TT_BYTE:
        if (n == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>' &&
            hexval(s[3]) >= 0 && hexval(s[4]) >= 0) {
            char b = (char)(hexval(s[3]) * 16 + hexval(s[4]));
            return put(buf, len, 0, &b, 1);
        }
        return put(buf, len, 0, s, n);
    case TT_USER:
        if (t->kind == KIND_BPE) return put(buf, len, 0, s, n);
        break;
    default:
        break;
    }
    int o = 0;
    if (t->kind == KIND_SPM) {
        /* U+2581 is a space */
        for (int i = 0; i < n;) {
            if (i + 3 <= n && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
                o = put(buf, len, o, " ", 1);
                i += 3;
            } else {
                o = put(buf, len, o, s + i, 1);
                i++;
            }
        }
        return o;
    }
    /* byte-level: each char stands for one byte; others are kept as text */
    for (int i = 0; i < n;) {
        int l = utf8_len((const uint8_t *)s + i, (size_t)(n - i));
        if (!l) {
            o = put(buf, len, o, s + i, 1);
            i++;
            continue;
        }
        uint32_t c = utf8_decode((const uint8_t *)s + i, l);
        int b = c < 324 ? t->cp_byte[c] : -1;
        if (b >= 0) {
            char ch = (char)b;
            o = put(buf, len, o, &ch, 1);
        } else o = put(buf, len, o, s + i, l);
        i += l;
    }
    return o;
}
