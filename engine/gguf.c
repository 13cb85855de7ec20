/* GGUF reader.  The whole file is mapped read-only and parsed once: the
 * metadata is decoded into an arena owned by the gguf_file, tensor data
 * stays in the mapping.  Every count, length and offset read from the file
 * is checked against the bytes that remain before it is used, so a hostile
 * file costs at most a few times its own size in memory and yields one
 * error line. */
#include "engine/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_ARRAY_DEPTH 4    /* an array of arrays of arrays of arrays */
#define GGUF_MAX_NAME 65535       /* keys and tensor names */
#define GGUF_MAX_ALIGNMENT (1u << 30)

/* ---- arena: every decoded string and array lives here ------------------ */

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    max_align_t data[];
} arena_chunk;

static void *arena_alloc(arena_chunk **head, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    arena_chunk *c = *head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        c = malloc(sizeof(*c) + cap);
        if (!c) return NULL;
        c->cap = cap;
        c->used = 0;
        c->next = *head;
        *head = c;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    return p;
}

static void arena_free(arena_chunk *c)
{
    while (c) {
        arena_chunk *next = c->next;
        free(c);
        c = next;
    }
}

/* ---- the file ---------------------------------------------------------- */

struct gguf_file {
    const uint8_t *base;
    size_t size;
    void *map;              /* non-NULL when we mmap'd it */
    uint32_t version, alignment;
    uint64_t data_off;
    uint64_t n_kv, n_tensors;
    gguf_kv *kv;
    gguf_tensor *t;
    const gguf_kv **kv_by_key;          /* sorted, for lookups */
    const gguf_tensor **t_by_name;
    arena_chunk *arena;
};

/* ---- cursor over the file bytes ---------------------------------------- */

typedef struct reader {
    const uint8_t *p;
    size_t len, pos;
    gguf_file *f;
    char *err;
    size_t errlen;
    int failed;
} reader;

__attribute__((format(printf, 2, 3)))
static int fail(reader *r, const char *fmt, ...)
{
    if (r->failed) return -1;
    r->failed = 1;
    if (r->err && r->errlen) {
        int k = snprintf(r->err, r->errlen, "gguf: ");
        if (k < 0 || (size_t)k >= r->errlen) k = 0;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->err + k, r->errlen - (size_t)k, fmt, ap);
        va_end(ap);
        /* names from the file may hold control bytes: keep it one line */
        for (char *c = r->err; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
    }
    return -1;
}

static size_t left(const reader *r) { return r->len - r->pos; }

static int rd_u32(reader *r, uint32_t *v, const char *what)
{
    if (left(r) < 4) return fail(r, "truncated file: %s at byte %zu", what, r->pos);
    const uint8_t *b = r->p + r->pos;
    *v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    r->pos += 4;
    return 0;
}

static int rd_u64(reader *r, uint64_t *v, const char *what)
{
    if (left(r) < 8) return fail(r, "truncated file: %s at byte %zu", what, r->pos);
    const uint8_t *b = r->p + r->pos;
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--) x = x << 8 | b[i];
    *v = x;
    r->pos += 8;
    return 0;
}

/* Reads `n` little-endian bytes (1, 2, 4 or 8) into *v. */
static int rd_uint(reader *r, size_t n, uint64_t *v, const char *what)
{
    if (left(r) < n) return fail(r, "truncated file: %s at byte %zu", what, r->pos);
    const uint8_t *b = r->p + r->pos;
    uint64_t x = 0;
    for (size_t i = n; i-- > 0;) x = x << 8 | b[i];
    *v = x;
    r->pos += n;
    return 0;
}

/* A length-prefixed string, copied NUL-terminated into the arena.  `what`
 * names it in errors. */
static int rd_str(reader *r, gguf_str *out, const char *what)
{
    uint64_t n = 0;
    if (rd_u64(r, &n, what)) return -1;
    if (n > left(r))
        return fail(r, "%s: length %llu runs past the end of the file (%zu bytes left)",
                    what, (unsigned long long)n, left(r));
    char *s = arena_alloc(&r->f->arena, (size_t)n + 1);
    if (!s) return fail(r, "out of memory");
    memcpy(s, r->p + r->pos, (size_t)n);
    s[n] = '\0';
    r->pos += (size_t)n;
    out->s = s;
    out->n = n;
    return 0;
}

/* Keys and tensor names: non-empty, bounded, no embedded NUL. */
static int rd_name(reader *r, const char **out, const char *what, uint64_t idx)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s %llu", what, (unsigned long long)idx);
    gguf_str s;
    if (rd_str(r, &s, buf)) return -1;
    if (s.n == 0) return fail(r, "%s: empty name", buf);
    if (s.n > GGUF_MAX_NAME)
        return fail(r, "%s: name of %llu bytes is too long", buf, (unsigned long long)s.n);
    if (strlen(s.s) != s.n) return fail(r, "%s: name contains a NUL byte", buf);
    *out = s.s;
    return 0;
}

/* Smallest encoding of one value of a type: bounds array counts. */
static size_t vtype_min_size(uint32_t t)
{
    switch (t) {
    case GGUF_T_U8: case GGUF_T_I8: case GGUF_T_BOOL: return 1;
    case GGUF_T_U16: case GGUF_T_I16: return 2;
    case GGUF_T_U32: case GGUF_T_I32: case GGUF_T_F32: return 4;
    case GGUF_T_U64: case GGUF_T_I64: case GGUF_T_F64: return 8;
    case GGUF_T_STRING: return 8;
    case GGUF_T_ARRAY: return 12;
    default: return 0;
    }
}

const char *gguf_vtype_name(uint32_t t)
{
    static const char *const names[] = {
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool",
        "string", "array", "u64", "i64", "f64",
    };
    return t < sizeof names / sizeof names[0] ? names[t] : "?";
}

static int is_uint(uint32_t t)
{
    return t == GGUF_T_U8 || t == GGUF_T_U16 || t == GGUF_T_U32 || t == GGUF_T_U64;
}

static int is_sint(uint32_t t)
{
    return t == GGUF_T_I8 || t == GGUF_T_I16 || t == GGUF_T_I32 || t == GGUF_T_I64;
}

/* One scalar of numeric type t (not string/array). */
static int rd_scalar(reader *r, uint32_t t, uint64_t *u, int64_t *i, double *f, const char *key)
{
    uint64_t x = 0;
    size_t n = vtype_min_size(t);
    if (rd_uint(r, n, &x, key)) return -1;
    if (is_uint(t)) {
        *u = x;
    } else if (is_sint(t)) {
        int sh = 64 - 8 * (int)n;   /* sign-extend */
        *i = sh ? (int64_t)(x << sh) >> sh : (int64_t)x;
    } else if (t == GGUF_T_BOOL) {
        if (x > 1) return fail(r, "key '%s': bool value %llu is neither 0 nor 1", key,
                               (unsigned long long)x);
        *u = x;
    } else if (t == GGUF_T_F32) {
        uint32_t b = (uint32_t)x;
        float v;
        memcpy(&v, &b, 4);
        *f = v;
    } else {
        double v;
        memcpy(&v, &x, 8);
        *f = v;
    }
    return 0;
}

static int rd_value(reader *r, gguf_kv *kv, uint32_t type, const char *key, int depth);

/* The body of an array value: element type, count, elements. */
static int rd_array(reader *r, gguf_kv *kv, const char *key, int depth)
{
    uint32_t et = 0;
    uint64_t n = 0;
    if (depth >= GGUF_MAX_ARRAY_DEPTH)
        return fail(r, "key '%s': arrays nested deeper than %d levels", key,
                    GGUF_MAX_ARRAY_DEPTH);
    if (rd_u32(r, &et, key) || rd_u64(r, &n, key)) return -1;
    size_t esz = vtype_min_size(et);
    if (!esz) return fail(r, "key '%s': unknown array element type %u", key, et);
    if (n > left(r) / esz)
        return fail(r, "key '%s': array of %llu %s elements cannot fit in the %zu bytes left",
                    key, (unsigned long long)n, gguf_vtype_name(et), left(r));
    kv->arr_type = et;
    kv->arr_n = n;
    if (n == 0) return 0;
    if (et == GGUF_T_STRING) {
        gguf_str *s = arena_alloc(&r->f->arena, (size_t)n * sizeof(*s));
        if (!s) return fail(r, "out of memory");
        for (uint64_t k = 0; k < n; k++)
            if (rd_str(r, &s[k], key)) return -1;
        kv->arr_str = s;
    } else if (et == GGUF_T_ARRAY) {
        gguf_kv *sub = arena_alloc(&r->f->arena, (size_t)n * sizeof(*sub));
        if (!sub) return fail(r, "out of memory");
        memset(sub, 0, (size_t)n * sizeof(*sub));
        for (uint64_t k = 0; k < n; k++)
            if (rd_value(r, &sub[k], GGUF_T_ARRAY, key, depth + 1)) return -1;
        kv->arr_kv = sub;
    } else {
        uint64_t *a = arena_alloc(&r->f->arena, (size_t)n * 8);
        if (!a) return fail(r, "out of memory");
        for (uint64_t k = 0; k < n; k++) {
            uint64_t u = 0;
            int64_t i = 0;
            double f = 0;
            if (rd_scalar(r, et, &u, &i, &f, key)) return -1;
            if (is_sint(et)) memcpy(&a[k], &i, 8);
            else if (et == GGUF_T_F32 || et == GGUF_T_F64) memcpy(&a[k], &f, 8);
            else a[k] = u;
        }
        kv->arr = a;
    }
    return 0;
}

static int rd_value(reader *r, gguf_kv *kv, uint32_t type, const char *key, int depth)
{
    kv->type = type;
    switch (type) {
    case GGUF_T_STRING: {
        char what[96];
        snprintf(what, sizeof what, "key '%.60s': string", key);
        return rd_str(r, &kv->v.str, what);
    }
    case GGUF_T_ARRAY:
        return rd_array(r, kv, key, depth);
    default:
        if (!vtype_min_size(type))
            return fail(r, "key '%s': unknown value type %u", key, type);
        return rd_scalar(r, type, &kv->v.u, &kv->v.i, &kv->v.f, key);
    }
}

/* ---- tensor geometry --------------------------------------------------- */

int ggml_blck_size(uint32_t type)
{
    switch (type) {
    case GGML_F32: case GGML_F16: case GGML_BF16: return 1;
    case GGML_Q4_0: case GGML_Q4_1: case GGML_Q5_0: case GGML_Q5_1:
    case GGML_Q8_0: case GGML_IQ4_NL: return 32;
    case GGML_Q2_K: case GGML_Q3_K: case GGML_Q4_K: case GGML_Q5_K:
    case GGML_Q6_K: case GGML_IQ4_XS: return 256;
    default: return 0;
    }
}

size_t ggml_type_size(uint32_t type)
{
    switch (type) {
    case GGML_F32: return 4;
    case GGML_F16: case GGML_BF16: return 2;
    case GGML_Q4_0: return 18;     /* fp16 d, 16 bytes of nibbles */
    case GGML_Q4_1: return 20;     /* fp16 d, fp16 m, 16 bytes of nibbles */
    case GGML_Q5_0: return 22;     /* fp16 d, 4 bytes of fifth bits, 16 bytes of nibbles */
    case GGML_Q5_1: return 24;     /* fp16 d, fp16 m, 4 bytes of fifth bits, 16 of nibbles */
    case GGML_Q8_0: return 34;     /* fp16 d, 32 int8 */
    case GGML_IQ4_NL: return 18;   /* fp16 d, 16 bytes of nibbles (table indices) */
    case GGML_Q2_K: return 84;     /* 16 scale/min bytes, 64 bytes of 2-bit codes, fp16 d, dmin */
    case GGML_Q3_K: return 110;    /* 32 high-bit bytes, 64 of 2-bit codes, 12 scale bytes, fp16 d */
    case GGML_Q4_K: return 144;    /* fp16 d, dmin, 12 scale bytes, 128 nibble bytes */
    case GGML_Q5_K: return 176;    /* as Q4_K, with 32 high-bit bytes before the nibbles */
    case GGML_Q6_K: return 210;    /* 128 ql, 64 qh, 16 int8 scales, fp16 d */
    case GGML_IQ4_XS: return 136;  /* fp16 d, 2 + 4 scale bytes, 128 nibble bytes */
    default: return 0;
    }
}

const char *ggml_type_name(uint32_t type)
{
    switch (type) {
    case GGML_F32: return "f32";
    case GGML_F16: return "f16";
    case GGML_BF16: return "bf16";
    case GGML_Q4_0: return "q4_0";
    case GGML_Q4_1: return "q4_1";
    case GGML_Q5_0: return "q5_0";
    case GGML_Q5_1: return "q5_1";
    case GGML_Q8_0: return "q8_0";
    case GGML_Q2_K: return "q2_K";
    case GGML_Q3_K: return "q3_K";
    case GGML_Q4_K: return "q4_K";
    case GGML_Q5_K: return "q5_K";
    case GGML_Q6_K: return "q6_K";
    case GGML_IQ4_NL: return "iq4_nl";
    case GGML_IQ4_XS: return "iq4_xs";
    default: return "unknown";
    }
}

size_t ggml_row_size(uint32_t type, int64_t n)
{
    int bs = ggml_blck_size(type);
    if (!bs || n < 0) return 0;
    return (size_t)(n / bs) * ggml_type_size(type);
}

/* ---- sorting helpers ---------------------------------------------------- */

static int cmp_kv_key(const void *a, const void *b)
{
    return strcmp((*(const gguf_kv *const *)a)->key, (*(const gguf_kv *const *)b)->key);
}

static int cmp_t_name(const void *a, const void *b)
{
    return strcmp((*(const gguf_tensor *const *)a)->name, (*(const gguf_tensor *const *)b)->name);
}

static int cmp_t_offset(const void *a, const void *b)
{
    uint64_t x = (*(const gguf_tensor *const *)a)->offset;
    uint64_t y = (*(const gguf_tensor *const *)b)->offset;
    return x < y ? -1 : x > y;
}

/* ---- the parser --------------------------------------------------------- */

/* Makes room for entry i of a zeroed table of `size`-byte entries; the
 * table (perhaps moved), or NULL when out of memory (tab left as it was). */
static void *grow(void *tab, size_t *cap, size_t i, size_t size)
{
    if (i < *cap) return tab;
    size_t n = *cap ? *cap * 2 : 64;
    char *p = realloc(tab, n * size);
    if (!p) return NULL;
    memset(p + *cap * size, 0, (n - *cap) * size);
    *cap = n;
    return p;
}

static int parse_tensor_info(reader *r, gguf_tensor *t, uint64_t idx)
{
    if (rd_name(r, &t->name, "tensor", idx)) return -1;
    if (rd_u32(r, &t->n_dims, t->name)) return -1;
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return fail(r, "tensor '%s': %u dimensions (1..%d allowed)", t->name, t->n_dims,
                    GGUF_MAX_DIMS);
    for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (rd_u64(r, &t->ne[d], t->name)) return -1;
        if (t->ne[d] == 0 || t->ne[d] > (uint64_t)INT64_MAX)
            return fail(r, "tensor '%s': dimension %u has bad size %llu", t->name, d,
                        (unsigned long long)t->ne[d]);
    }
    if (rd_u32(r, &t->type, t->name) || rd_u64(r, &t->offset, t->name)) return -1;
    if (!ggml_blck_size(t->type))
        return fail(r, "tensor '%s': unknown or unsupported type %u", t->name, t->type);
    return 0;
}

/* Size, alignment and bounds of one tensor against the data section. */
static int check_tensor(reader *r, gguf_tensor *t, uint64_t data_len)
{
    uint64_t nel = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        if (t->ne[d] > (uint64_t)INT64_MAX / nel)
            return fail(r, "tensor '%s': element count overflows", t->name);
        nel *= t->ne[d];
    }
    uint64_t bs = (uint64_t)ggml_blck_size(t->type);
    if (t->ne[0] % bs)
        return fail(r, "tensor '%s': row of %llu elements is not a multiple of the %s block size %llu",
                    t->name, (unsigned long long)t->ne[0], ggml_type_name(t->type),
                    (unsigned long long)bs);
    uint64_t ts = ggml_type_size(t->type);
    uint64_t blocks = nel / bs;
    if (blocks > UINT64_MAX / ts)
        return fail(r, "tensor '%s': byte size overflows", t->name);
    t->nbytes = blocks * ts;
    if (t->offset % r->f->alignment)
        return fail(r, "tensor '%s': offset %llu is not a multiple of the alignment %u",
                    t->name, (unsigned long long)t->offset, r->f->alignment);
    if (t->offset > data_len || t->nbytes > data_len - t->offset)
        return fail(r, "tensor '%s': data [%llu, +%llu) runs past the end of the file "
                    "(data section is %llu bytes)", t->name, (unsigned long long)t->offset,
                    (unsigned long long)t->nbytes, (unsigned long long)data_len);
    t->data = r->p + r->f->data_off + t->offset;
    return 0;
}

static int parse(reader *r)
{
    gguf_file *f = r->f;
    uint32_t magic = 0;
    if (r->len < 4 || memcmp(r->p, GGUF_MAGIC, 4) != 0)
        return fail(r, "not a GGUF file (bad magic)");
    if (rd_u32(r, &magic, "magic") || rd_u32(r, &f->version, "version")) return -1;
    if (f->version == 1)
        return fail(r, "GGUF version 1 is not supported (only 2 and 3)");
    if (f->version != 2 && f->version != 3) {
        if ((f->version & 0xFFFF) == 0)
            return fail(r, "unsupported GGUF version %u (a big-endian file?)", f->version);
        return fail(r, "unsupported GGUF version %u (only 2 and 3)", f->version);
    }
    if (rd_u64(r, &f->n_tensors, "tensor count") || rd_u64(r, &f->n_kv, "metadata count"))
        return -1;
    /* a key is at least 8 (length) + 1 + 4 (type) + 1 (value) bytes;
     * a tensor info at least 8 + 1 + 4 + 8 (one dim) + 4 + 8 */
    if (f->n_kv > left(r) / 14)
        return fail(r, "metadata count %llu is impossible for a file of %zu bytes",
                    (unsigned long long)f->n_kv, r->len);
    if (f->n_tensors > left(r) / 33)
        return fail(r, "tensor count %llu is impossible for a file of %zu bytes",
                    (unsigned long long)f->n_tensors, r->len);

    /* Tables grow as entries parse, so a count that lies costs nothing. */
    size_t cap = 0;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        gguf_kv *tab = grow(f->kv, &cap, (size_t)i, sizeof(*f->kv));
        if (!tab) return fail(r, "out of memory");
        f->kv = tab;
        gguf_kv *kv = &f->kv[i];
        uint32_t type = 0;
        if (rd_name(r, &kv->key, "key", i)) return -1;
        if (rd_u32(r, &type, kv->key)) return -1;
        if (rd_value(r, kv, type, kv->key, 0)) return -1;
    }
    if (f->n_kv) {
        f->kv_by_key = malloc((size_t)f->n_kv * sizeof(*f->kv_by_key));
        if (!f->kv_by_key) return fail(r, "out of memory");
        for (uint64_t i = 0; i < f->n_kv; i++) f->kv_by_key[i] = &f->kv[i];
    }
    if (f->n_kv > 1) {
        qsort(f->kv_by_key, (size_t)f->n_kv, sizeof(*f->kv_by_key), cmp_kv_key);
        for (uint64_t i = 1; i < f->n_kv; i++)
            if (!strcmp(f->kv_by_key[i - 1]->key, f->kv_by_key[i]->key))
                return fail(r, "duplicate key '%s'", f->kv_by_key[i]->key);
    }

    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv *al = gguf_find(f, "general.alignment");
    if (al) {
        uint64_t a;
        if (is_uint(al->type)) a = al->v.u;
        else if (is_sint(al->type) && al->v.i > 0) a = (uint64_t)al->v.i;
        else return fail(r, "general.alignment has type %s, not an unsigned integer",
                         gguf_vtype_name(al->type));
        if (a == 0 || (a & (a - 1)) || a > GGUF_MAX_ALIGNMENT)
            return fail(r, "general.alignment %llu is not a power of two up to 2^30",
                        (unsigned long long)a);
        f->alignment = (uint32_t)a;
    }

    cap = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *tab = grow(f->t, &cap, (size_t)i, sizeof(*f->t));
        if (!tab) return fail(r, "out of memory");
        f->t = tab;
        if (parse_tensor_info(r, &f->t[i], i)) return -1;
    }
    if (f->n_tensors) {
        f->t_by_name = malloc((size_t)f->n_tensors * sizeof(*f->t_by_name));
        if (!f->t_by_name) return fail(r, "out of memory");
        for (uint64_t i = 0; i < f->n_tensors; i++) f->t_by_name[i] = &f->t[i];
    }

    /* The data section starts at the next alignment boundary. */
    uint64_t end = r->pos;
    f->data_off = (end + f->alignment - 1) / f->alignment * f->alignment;
    if (f->n_tensors && f->data_off > r->len)
        return fail(r, "data section would start at byte %llu, past the end of the file (%zu bytes)",
                    (unsigned long long)f->data_off, r->len);
    uint64_t data_len = f->data_off <= r->len ? r->len - f->data_off : 0;
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (check_tensor(r, &f->t[i], data_len)) return -1;

    if (f->n_tensors > 1) {
        qsort(f->t_by_name, (size_t)f->n_tensors, sizeof(*f->t_by_name), cmp_t_name);
        for (uint64_t i = 1; i < f->n_tensors; i++)
            if (!strcmp(f->t_by_name[i - 1]->name, f->t_by_name[i]->name))
                return fail(r, "duplicate tensor name '%s'", f->t_by_name[i]->name);
        /* overlap check on a scratch copy sorted by offset */
        const gguf_tensor **o = malloc((size_t)f->n_tensors * sizeof(*o));
        if (!o) return fail(r, "out of memory");
        memcpy(o, f->t_by_name, (size_t)f->n_tensors * sizeof(*o));
        qsort(o, (size_t)f->n_tensors, sizeof(*o), cmp_t_offset);
        for (uint64_t i = 1; i < f->n_tensors; i++) {
            if (o[i - 1]->offset + o[i - 1]->nbytes > o[i]->offset) {
                fail(r, "tensors '%s' and '%s' overlap", o[i - 1]->name, o[i]->name);
                free(o);
                return -1;
            }
        }
        free(o);
    }
    return 0;
}

/* ---- open / close ------------------------------------------------------- */

static gguf_file *open_buf(const uint8_t *buf, size_t len, void *map, char *err, size_t errlen)
{
    gguf_file *f = calloc(1, sizeof(*f));
    if (!f) {
        if (map) munmap(map, len);
        if (err && errlen) snprintf(err, errlen, "gguf: out of memory");
        return NULL;
    }
    f->base = buf;
    f->size = len;
    f->map = map;
    reader r = { .p = buf, .len = len, .f = f, .err = err, .errlen = errlen };
    if (parse(&r)) {
        gguf_close(f);
        return NULL;
    }
    return f;
}

gguf_file *gguf_open_mem(const void *buf, size_t len, char *err, size_t errlen)
{
    if (!buf && len) {
        if (err && errlen) snprintf(err, errlen, "gguf: no buffer");
        return NULL;
    }
    static const uint8_t empty[1];
    return open_buf(buf ? buf : empty, len, NULL, err, errlen);
}

gguf_file *gguf_open(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (err && errlen) snprintf(err, errlen, "gguf: %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (err && errlen) snprintf(err, errlen, "gguf: %s: not a regular file", path);
        close(fd);
        return NULL;
    }
    if (st.st_size < 24) {
        if (err && errlen)
            snprintf(err, errlen, "gguf: %s: file of %lld bytes is too small to be GGUF", path,
                     (long long)st.st_size);
        close(fd);
        return NULL;
    }
    size_t len = (size_t)st.st_size;
    void *map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) {
        if (err && errlen) snprintf(err, errlen, "gguf: %s: mmap: %s", path, strerror(e));
        return NULL;
    }
    char msg[512] = "";
    gguf_file *f = open_buf(map, len, map, msg, sizeof msg);
    if (!f && err && errlen) {
        /* put the path after the "gguf: " prefix */
        const char *m = strncmp(msg, "gguf: ", 6) ? msg : msg + 6;
        snprintf(err, errlen, "gguf: %s: %s", path, m);
    }
    return f;
}

void gguf_close(gguf_file *f)
{
    if (!f) return;
    if (f->map) munmap(f->map, f->size);
    free(f->kv);
    free(f->kv_by_key);
    free(f->t);
    free(f->t_by_name);
    arena_free(f->arena);
    free(f);
}

/* ---- accessors ---------------------------------------------------------- */

uint32_t gguf_version(const gguf_file *f) { return f->version; }
uint64_t gguf_n_kv(const gguf_file *f) { return f->n_kv; }
uint64_t gguf_n_tensors(const gguf_file *f) { return f->n_tensors; }
uint32_t gguf_alignment(const gguf_file *f) { return f->alignment; }
uint64_t gguf_data_offset(const gguf_file *f) { return f->data_off; }

const gguf_kv *gguf_kv_at(const gguf_file *f, uint64_t i)
{
    return i < f->n_kv ? &f->kv[i] : NULL;
}

const gguf_tensor *gguf_tensor_at(const gguf_file *f, uint64_t i)
{
    return i < f->n_tensors ? &f->t[i] : NULL;
}

const gguf_kv *gguf_find(const gguf_file *f, const char *key)
{
    size_t lo = 0, hi = (size_t)f->n_kv;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(key, f->kv_by_key[mid]->key);
        if (!c) return f->kv_by_key[mid];
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

const gguf_tensor *gguf_tensor_find(const gguf_file *f, const char *name)
{
    size_t lo = 0, hi = (size_t)f->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->t_by_name[mid]->name);
        if (!c) return f->t_by_name[mid];
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

/* Any integer value as a signed 128-bit-free pair: ok=0 if not an integer. */
static int kv_int(const gguf_kv *kv, int *neg, uint64_t *mag)
{
    if (!kv) return 0;
    if (is_uint(kv->type)) {
        *neg = 0;
        *mag = kv->v.u;
        return 1;
    }
    if (is_sint(kv->type)) {
        *neg = kv->v.i < 0;
        *mag = *neg ? (uint64_t)0 - (uint64_t)kv->v.i : (uint64_t)kv->v.i;
        return 1;
    }
    return 0;
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out)
{
    int neg;
    uint64_t m;
    if (!kv_int(gguf_find(f, key), &neg, &m) || neg || m > UINT32_MAX) return -1;
    *out = (uint32_t)m;
    return 0;
}

int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out)
{
    int neg;
    uint64_t m;
    if (!kv_int(gguf_find(f, key), &neg, &m)) return -1;
    if (!neg && m > (uint64_t)INT64_MAX) return -1;
    *out = neg ? (int64_t)(0 - m) : (int64_t)m;
    return 0;
}

int gguf_get_f32(const gguf_file *f, const char *key, float *out)
{
    const gguf_kv *kv = gguf_find(f, key);
    if (!kv) return -1;
    if (kv->type == GGUF_T_F32 || kv->type == GGUF_T_F64) *out = (float)kv->v.f;
    else if (is_uint(kv->type)) *out = (float)kv->v.u;
    else if (is_sint(kv->type)) *out = (float)kv->v.i;
    else return -1;
    return 0;
}

int gguf_get_bool(const gguf_file *f, const char *key, int *out)
{
    const gguf_kv *kv = gguf_find(f, key);
    if (!kv) return -1;
    if (kv->type == GGUF_T_BOOL || is_uint(kv->type)) *out = kv->v.u != 0;
    else if (is_sint(kv->type)) *out = kv->v.i != 0;
    else return -1;
    return 0;
}

const char *gguf_get_str(const gguf_file *f, const char *key)
{
    const gguf_kv *kv = gguf_find(f, key);
    return kv && kv->type == GGUF_T_STRING ? kv->v.str.s : NULL;
}

const gguf_str *gguf_get_arr_str(const gguf_file *f, const char *key, uint64_t *n)
{
    const gguf_kv *kv = gguf_find(f, key);
    if (!kv || kv->type != GGUF_T_ARRAY || kv->arr_type != GGUF_T_STRING) return NULL;
    *n = kv->arr_n;
    static const gguf_str none = { "", 0 };
    return kv->arr_n ? kv->arr_str : &none;
}
