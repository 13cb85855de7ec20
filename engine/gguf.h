/* GGUF reader (versions 2 and 3): metadata and tensor directory, tensor
 * data mmap'd.  Every length, count and offset is checked against the file;
 * a broken file yields one error message, never an out-of-bounds read.
 * Private to engine/. */
#ifndef SPARSED_GGUF_H
#define SPARSED_GGUF_H

#include <stddef.h>
#include <stdint.h>

enum gguf_vtype {
    GGUF_T_U8 = 0, GGUF_T_I8 = 1, GGUF_T_U16 = 2, GGUF_T_I16 = 3,
    GGUF_T_U32 = 4, GGUF_T_I32 = 5, GGUF_T_F32 = 6, GGUF_T_BOOL = 7,
    GGUF_T_STRING = 8, GGUF_T_ARRAY = 9, GGUF_T_U64 = 10, GGUF_T_I64 = 11,
    GGUF_T_F64 = 12,
};

/* Tensor element types (ggml numbering). */
enum ggml_type {
    GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q4_1 = 3,
    GGML_Q5_0 = 6, GGML_Q5_1 = 7, GGML_Q8_0 = 8, GGML_Q2_K = 10,
    GGML_Q3_K = 11, GGML_Q4_K = 12, GGML_Q5_K = 13, GGML_Q6_K = 14,
    GGML_IQ4_NL = 20, GGML_IQ4_XS = 23, GGML_BF16 = 30,
};

typedef struct gguf_str {
    const char *s;          /* NUL-terminated copy owned by the file */
    uint64_t n;             /* length without the NUL */
} gguf_str;

typedef struct gguf_kv {
    const char *key;
    uint32_t type;          /* gguf_vtype */
    union {
        uint64_t u;         /* U8..U64 and BOOL */
        int64_t i;          /* I8..I64 */
        double f;           /* F32, F64 */
        gguf_str str;
    } v;
    /* arrays: element type and count; numeric elements are decoded into
     * arr (widened: u64/i64/double by type), strings into arr_str */
    uint32_t arr_type;
    uint64_t arr_n;
    const void *arr;        /* uint64_t*, int64_t* or double* by arr_type */
    const gguf_str *arr_str;
    /* arrays of arrays: arr_n entries, each an array value (key NULL) */
    const struct gguf_kv *arr_kv;
} gguf_kv;

typedef struct gguf_tensor {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[4];         /* ne[0] contiguous; unused dims are 1 */
    uint32_t type;          /* ggml_type */
    uint64_t offset;        /* relative to the data section */
    uint64_t nbytes;
    const void *data;       /* into the mapping */
} gguf_tensor;

typedef struct gguf_file gguf_file;

gguf_file *gguf_open(const char *path, char *err, size_t errlen);
/* Parses a buffer the caller keeps alive (fuzzing, tests). */
gguf_file *gguf_open_mem(const void *buf, size_t len, char *err, size_t errlen);
void gguf_close(gguf_file *f);

uint32_t gguf_version(const gguf_file *f);
uint64_t gguf_n_kv(const gguf_file *f);
const gguf_kv *gguf_kv_at(const gguf_file *f, uint64_t i);
const gguf_kv *gguf_find(const gguf_file *f, const char *key);
uint64_t gguf_n_tensors(const gguf_file *f);
const gguf_tensor *gguf_tensor_at(const gguf_file *f, uint64_t i);
const gguf_tensor *gguf_tensor_find(const gguf_file *f, const char *name);

/* Typed getters: 0 on success; -1 if absent or of an incompatible type
 * (integers of any width convert when the value fits). */
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out);
int gguf_get_f32(const gguf_file *f, const char *key, float *out);
int gguf_get_bool(const gguf_file *f, const char *key, int *out);
const char *gguf_get_str(const gguf_file *f, const char *key);
/* A string array: its entries and count; NULL if absent or not strings. */
const gguf_str *gguf_get_arr_str(const gguf_file *f, const char *key, uint64_t *n);

/* Alignment of tensor data (general.alignment, default 32) and the file
 * offset where the data section starts. */
uint32_t gguf_alignment(const gguf_file *f);
uint64_t gguf_data_offset(const gguf_file *f);
/* "u32", "string", ... for messages; "?" if unknown. */
const char *gguf_vtype_name(uint32_t type);

/* Block geometry of a tensor type: elements per block and bytes per block;
 * 0 for an unknown type. */
int ggml_blck_size(uint32_t type);
size_t ggml_type_size(uint32_t type);
const char *ggml_type_name(uint32_t type);
/* Bytes of a row of n elements (n a multiple of the block size). */
size_t ggml_row_size(uint32_t type, int64_t n);

#endif
