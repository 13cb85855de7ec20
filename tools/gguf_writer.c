/* GGUF writer: see gguf_writer.h. */
#include "tools/gguf_writer.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- byte buffer ---------------------------------------------------------- */

void gwb_bytes(gw_buf *b, const void *p, size_t n)
{
    if (b->oom) return;
    if (b->cap - b->n < n) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n < n) cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void gwb_le(gw_buf *b, uint64_t v, int n)
{
    uint8_t t[8];
    for (int i = 0; i < n; i++) t[i] = (uint8_t)(v >> (8 * i));
    gwb_bytes(b, t, (size_t)n);
}

void gwb_u8(gw_buf *b, uint8_t v) { gwb_le(b, v, 1); }
void gwb_u32(gw_buf *b, uint32_t v) { gwb_le(b, v, 4); }
void gwb_u64(gw_buf *b, uint64_t v) { gwb_le(b, v, 8); }

void gwb_f32(gw_buf *b, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    gwb_le(b, u, 4);
}

void gwb_str(gw_buf *b, const char *s)
{
    size_t n = strlen(s);
    gwb_u64(b, n);
    gwb_bytes(b, s, n);
}

void gwb_free(gw_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* ---- writer --------------------------------------------------------------- */

typedef struct gw_tensor {
    char *name;
    uint32_t type, n_dims;
    uint64_t ne[4];
    uint64_t offset, nbytes;
    const void *data;
} gw_tensor;

struct gguf_writer {
    uint32_t version, alignment;
    gw_buf kv;                  /* encoded key/value pairs */
    uint64_t n_kv;
    gw_tensor *t;
    int n_t, cap_t;
    uint64_t data_size;         /* end of the last tensor, relative to data */
    /* streaming state */
    uint64_t pos, data_off;
    int next;                   /* tensor expected by gw_tensor_begin */
    uint64_t left;              /* bytes still owed to the current tensor */
    char err[256];
};

__attribute__((format(printf, 2, 3)))
static int gw_fail(gguf_writer *w, const char *fmt, ...)
{
    if (!w->err[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->err, sizeof w->err, fmt, ap);
        va_end(ap);
    }
    return -1;
}

gguf_writer *gw_new(void)
{
    gguf_writer *w = calloc(1, sizeof(*w));
    if (!w) return NULL;
    w->version = 3;
    w->alignment = 32;
    return w;
}

void gw_free(gguf_writer *w)
{
    if (!w) return;
    gwb_free(&w->kv);
    for (int i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->t);
    free(w);
}

const char *gw_error(const gguf_writer *w) { return w->kv.oom ? "out of memory" : w->err; }

static int gw_bad(const gguf_writer *w) { return w->err[0] || w->kv.oom; }

void gw_set_version(gguf_writer *w, uint32_t version) { w->version = version; }

static void gw_key(gguf_writer *w, const char *key, uint32_t type)
{
    gwb_str(&w->kv, key);
    gwb_u32(&w->kv, type);
    w->n_kv++;
}

void gw_set_alignment(gguf_writer *w, uint32_t alignment)
{
    if (gw_bad(w)) return;
    if (!alignment || (alignment & (alignment - 1))) {
        gw_fail(w, "alignment %u is not a power of two", alignment);
        return;
    }
    if (w->n_t) {
        gw_fail(w, "set the alignment before adding tensors");
        return;
    }
    w->alignment = alignment;
    gw_add_u32(w, "general.alignment", alignment);
}

#define GW_SCALAR(fn, ctype, vtype, bytes, conv)      \
    void fn(gguf_writer *w, const char *key, ctype v) \
    {                                                 \
        if (gw_bad(w)) return;                        \
        gw_key(w, key, vtype);                        \
        gwb_le(&w->kv, conv, bytes);                  \
    }

GW_SCALAR(gw_add_u8, uint8_t, GGUF_T_U8, 1, v)
GW_SCALAR(gw_add_i8, int8_t, GGUF_T_I8, 1, (uint8_t)v)
GW_SCALAR(gw_add_u16, uint16_t, GGUF_T_U16, 2, v)
GW_SCALAR(gw_add_i16, int16_t, GGUF_T_I16, 2, (uint16_t)v)
GW_SCALAR(gw_add_u32, uint32_t, GGUF_T_U32, 4, v)
GW_SCALAR(gw_add_i32, int32_t, GGUF_T_I32, 4, (uint32_t)v)
GW_SCALAR(gw_add_u64, uint64_t, GGUF_T_U64, 8, v)
GW_SCALAR(gw_add_i64, int64_t, GGUF_T_I64, 8, (uint64_t)v)
GW_SCALAR(gw_add_bool, int, GGUF_T_BOOL, 1, (uint8_t)(v != 0))

void gw_add_f32(gguf_writer *w, const char *key, float v)
{
    if (gw_bad(w)) return;
    gw_key(w, key, GGUF_T_F32);
    gwb_f32(&w->kv, v);
}

void gw_add_f64(gguf_writer *w, const char *key, double v)
{
    if (gw_bad(w)) return;
    uint64_t u;
    memcpy(&u, &v, 8);
    gw_key(w, key, GGUF_T_F64);
    gwb_u64(&w->kv, u);
}

void gw_add_str(gguf_writer *w, const char *key, const char *v)
{
    if (gw_bad(w)) return;
    gw_key(w, key, GGUF_T_STRING);
    gwb_str(&w->kv, v);
}

static int elem_size(uint32_t t)
{
    switch (t) {
    case GGUF_T_U8: case GGUF_T_I8: case GGUF_T_BOOL: return 1;
    case GGUF_T_U16: case GGUF_T_I16: return 2;
    case GGUF_T_U32: case GGUF_T_I32: case GGUF_T_F32: return 4;
    case GGUF_T_U64: case GGUF_T_I64: case GGUF_T_F64: return 8;
    default: return 0;
    }
}

void gw_add_arr(gguf_writer *w, const char *key, uint32_t elem_type, const void *vals, uint64_t n)
{
    if (gw_bad(w)) return;
    int es = elem_size(elem_type);
    if (!es) {
        gw_fail(w, "key '%s': %s is not a numeric array type", key, gguf_vtype_name(elem_type));
        return;
    }
    gw_key(w, key, GGUF_T_ARRAY);
    gwb_u32(&w->kv, elem_type);
    gwb_u64(&w->kv, n);
    /* host order is little-endian on every target we build for */
    const uint8_t *p = vals;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t v = 0;
        memcpy(&v, p + i * (size_t)es, (size_t)es);
        if (elem_type == GGUF_T_BOOL) v = v != 0;
        gwb_le(&w->kv, v, es);
    }
}

void gw_add_arr_str(gguf_writer *w, const char *key, const char *const *vals, uint64_t n)
{
    if (gw_bad(w)) return;
    gw_key(w, key, GGUF_T_ARRAY);
    gwb_u32(&w->kv, GGUF_T_STRING);
    gwb_u64(&w->kv, n);
    for (uint64_t i = 0; i < n; i++) gwb_str(&w->kv, vals[i]);
}

void gw_add_raw(gguf_writer *w, const char *key, uint32_t type, const void *val, size_t n)
{
    if (gw_bad(w)) return;
    gw_key(w, key, type);
    gwb_bytes(&w->kv, val, n);
}

int gw_add_tensor(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                  const uint64_t *ne, const void *data)
{
    if (gw_bad(w)) return -1;
    int bs = ggml_blck_size(type);
    if (!bs) return gw_fail(w, "tensor '%s': unsupported type %u", name, type);
    if (n_dims < 1 || n_dims > 4) return gw_fail(w, "tensor '%s': %u dims", name, n_dims);
    if (ne[0] % (uint64_t)bs)
        return gw_fail(w, "tensor '%s': %llu is not a multiple of the %s block size %d", name,
                       (unsigned long long)ne[0], ggml_type_name(type), bs);
    if (w->n_t == w->cap_t) {
        int cap = w->cap_t ? 2 * w->cap_t : 64;
        gw_tensor *t = realloc(w->t, (size_t)cap * sizeof(*t));
        if (!t) return gw_fail(w, "out of memory");
        w->t = t;
        w->cap_t = cap;
    }
    gw_tensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof(*t));
    t->name = strdup(name);
    if (!t->name) return gw_fail(w, "out of memory");
    t->type = type;
    t->n_dims = n_dims;
    uint64_t nel = 1;
    for (int d = 0; d < 4; d++) {
        t->ne[d] = d < (int)n_dims ? ne[d] : 1;
        nel *= t->ne[d];
    }
    t->nbytes = nel / (uint64_t)bs * ggml_type_size(type);
    uint64_t a = w->alignment;
    t->offset = (w->data_size + a - 1) / a * a;
    w->data_size = t->offset + t->nbytes;
    t->data = data;
    return w->n_t++;
}

uint64_t gw_tensor_nbytes(const gguf_writer *w, int idx)
{
    return idx >= 0 && idx < w->n_t ? w->t[idx].nbytes : 0;
}

/* ---- output ------------------------------------------------------------- */

static int put(gguf_writer *w, FILE *fp, const void *p, size_t n)
{
    if (n && fwrite(p, 1, n, fp) != n) return gw_fail(w, "write failed");
    w->pos += n;
    return 0;
}

static int pad_to(gguf_writer *w, FILE *fp, uint64_t target)
{
    static const uint8_t zero[256];
    while (w->pos < target) {
        uint64_t k = target - w->pos;
        if (put(w, fp, zero, k < sizeof zero ? (size_t)k : sizeof zero)) return -1;
    }
    return 0;
}

int gw_write_header(gguf_writer *w, FILE *fp)
{
    if (gw_bad(w)) return -1;
    gw_buf h = { 0 };
    gwb_bytes(&h, "GGUF", 4);
    gwb_u32(&h, w->version);
    gwb_u64(&h, (uint64_t)w->n_t);
    gwb_u64(&h, w->n_kv);
    gwb_bytes(&h, w->kv.p, w->kv.n);
    for (int i = 0; i < w->n_t; i++) {
        const gw_tensor *t = &w->t[i];
        gwb_str(&h, t->name);
        gwb_u32(&h, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) gwb_u64(&h, t->ne[d]);
        gwb_u32(&h, t->type);
        gwb_u64(&h, t->offset);
    }
    if (h.oom) {
        gwb_free(&h);
        return gw_fail(w, "out of memory");
    }
    w->pos = 0;
    w->next = 0;
    w->left = 0;
    int rc = put(w, fp, h.p, h.n);
    gwb_free(&h);
    if (rc) return -1;
    uint64_t a = w->alignment;
    w->data_off = (w->pos + a - 1) / a * a;
    if (w->n_t) return pad_to(w, fp, w->data_off);
    return 0;
}

int gw_tensor_begin(gguf_writer *w, FILE *fp, int idx)
{
    if (gw_bad(w)) return -1;
    if (w->left) return gw_fail(w, "tensor '%s' is %llu bytes short", w->t[w->next - 1].name,
                                (unsigned long long)w->left);
    if (idx != w->next || idx >= w->n_t) return gw_fail(w, "tensor %d written out of order", idx);
    if (pad_to(w, fp, w->data_off + w->t[idx].offset)) return -1;
    w->left = w->t[idx].nbytes;
    w->next++;
    return 0;
}

int gw_write_data(gguf_writer *w, FILE *fp, const void *p, size_t n)
{
    if (gw_bad(w)) return -1;
    if (n > w->left) return gw_fail(w, "more data than the tensor holds");
    w->left -= n;
    return put(w, fp, p, n);
}

int gw_write_end(gguf_writer *w, FILE *fp)
{
    if (gw_bad(w)) return -1;
    if (w->left || w->next != w->n_t) return gw_fail(w, "not every tensor was written");
    if (fflush(fp)) return gw_fail(w, "write failed");
    return 0;
}

int gw_write(gguf_writer *w, FILE *fp)
{
    if (gw_write_header(w, fp)) return -1;
    for (int i = 0; i < w->n_t; i++) {
        if (!w->t[i].data) return gw_fail(w, "tensor '%s' has no data", w->t[i].name);
        if (gw_tensor_begin(w, fp, i) || gw_write_data(w, fp, w->t[i].data, w->t[i].nbytes))
            return -1;
    }
    return gw_write_end(w, fp);
}

int gw_write_file(gguf_writer *w, const char *path)
{
    FILE *fp = fopen(path, "wb");
    if (!fp) return gw_fail(w, "%s: cannot create", path);
    int rc = gw_write(w, fp);
    if (fclose(fp) && !rc) rc = gw_fail(w, "%s: write failed", path);
    return rc;
}

int gw_write_mem(gguf_writer *w, uint8_t **buf, size_t *len)
{
    char *p = NULL;
    size_t n = 0;
    FILE *fp = open_memstream(&p, &n);
    if (!fp) return gw_fail(w, "out of memory");
    int rc = gw_write(w, fp);
    fclose(fp);
    if (rc) {
        free(p);
        return -1;
    }
    *buf = (uint8_t *)p;
    *len = n;
    return 0;
}
