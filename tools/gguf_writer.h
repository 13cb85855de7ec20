/* A small GGUF writer for tools and tests: metadata of every type (arrays
 * and arrays of arrays included), tensors of any engine type, alignment.
 *
 * Metadata and tensors are written in the order they are added.  The writer
 * writes what it is told (duplicate keys included): validating is the
 * reader's job, and tests use that to build broken files.
 *
 * Tensor data either comes with gw_add_tensor (a pointer kept until the
 * write) or is streamed: gw_write_header, then per tensor in order
 * gw_tensor_begin and gw_write_data, then gw_write_end. */
#ifndef SPARSED_GGUF_WRITER_H
#define SPARSED_GGUF_WRITER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "engine/gguf.h"

/* A growable byte buffer holding little-endian encoded values. */
typedef struct gw_buf {
    uint8_t *p;
    size_t n, cap;
    int oom;
} gw_buf;

void gwb_bytes(gw_buf *b, const void *p, size_t n);
void gwb_u8(gw_buf *b, uint8_t v);
void gwb_u32(gw_buf *b, uint32_t v);
void gwb_u64(gw_buf *b, uint64_t v);
void gwb_f32(gw_buf *b, float v);
void gwb_str(gw_buf *b, const char *s);   /* u64 length + bytes */
void gwb_free(gw_buf *b);

typedef struct gguf_writer gguf_writer;

gguf_writer *gw_new(void);
void gw_free(gguf_writer *w);
/* First error ("" if none); every call after an error does nothing. */
const char *gw_error(const gguf_writer *w);

/* GGUF version written (default 3; 2 has the same layout). */
void gw_set_version(gguf_writer *w, uint32_t version);
/* Adds general.alignment (u32) and pads tensor data to it (default 32). */
void gw_set_alignment(gguf_writer *w, uint32_t alignment);

void gw_add_u8(gguf_writer *w, const char *key, uint8_t v);
void gw_add_i8(gguf_writer *w, const char *key, int8_t v);
void gw_add_u16(gguf_writer *w, const char *key, uint16_t v);
void gw_add_i16(gguf_writer *w, const char *key, int16_t v);
void gw_add_u32(gguf_writer *w, const char *key, uint32_t v);
void gw_add_i32(gguf_writer *w, const char *key, int32_t v);
void gw_add_u64(gguf_writer *w, const char *key, uint64_t v);
void gw_add_i64(gguf_writer *w, const char *key, int64_t v);
void gw_add_f32(gguf_writer *w, const char *key, float v);
void gw_add_f64(gguf_writer *w, const char *key, double v);
void gw_add_bool(gguf_writer *w, const char *key, int v);
void gw_add_str(gguf_writer *w, const char *key, const char *v);
/* A numeric array; vals holds n C values of the element type (uint8_t for
 * bool, float for f32, ...). */
void gw_add_arr(gguf_writer *w, const char *key, uint32_t elem_type, const void *vals, uint64_t n);
void gw_add_arr_str(gguf_writer *w, const char *key, const char *const *vals, uint64_t n);
/* A value already encoded by the caller (nested arrays, odd cases). */
void gw_add_raw(gguf_writer *w, const char *key, uint32_t type, const void *val, size_t n);

/* Adds a tensor (ne[0] contiguous); data may be NULL when streaming.
 * Returns its index, or -1 (bad type, dims, or ne[0] not a multiple of the
 * block size). */
int gw_add_tensor(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                  const uint64_t *ne, const void *data);
uint64_t gw_tensor_nbytes(const gguf_writer *w, int idx);

/* Whole file at once (every tensor added with data); 0 or -1. */
int gw_write(gguf_writer *w, FILE *fp);
int gw_write_file(gguf_writer *w, const char *path);
/* Into a malloc'd buffer the caller frees. */
int gw_write_mem(gguf_writer *w, uint8_t **buf, size_t *len);

/* Streaming. */
int gw_write_header(gguf_writer *w, FILE *fp);
int gw_tensor_begin(gguf_writer *w, FILE *fp, int idx);
int gw_write_data(gguf_writer *w, FILE *fp, const void *p, size_t n);
int gw_write_end(gguf_writer *w, FILE *fp);

#endif
