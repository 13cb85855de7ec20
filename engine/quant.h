/* Tensor element formats: dequantization (per row, so weights stay in their
 * GGUF type and are expanded a row at a time), reference quantization (for
 * tests and tools/mkmodel) and the fp32 dot product.  Private to engine/. */
#ifndef SPARSED_QUANT_H
#define SPARSED_QUANT_H

#include <stddef.h>
#include <stdint.h>

/* dst[0..n) = row src of ggml type `type` (n a multiple of its block size). */
void dequant_row(uint32_t type, const void *src, float *dst, int64_t n);
/* Quantizes n floats into dst (ggml_row_size(type, n) bytes).  Round trips
 * within the format's precision; used by tests and mkmodel. */
void quantize_row(uint32_t type, const float *src, void *dst, int64_t n);

/* sum a[i]*b[i]; AVX2/FMA when the CPU has it. */
float dot_f32(const float *a, const float *b, int n);
/* out[i*3+j] = dot(a + i*lda, b + j*ldb) for i < 4, j < 3: twelve dots
 * sharing their loads, the matmul kernel for several tokens at once. */
void dot_f32_4x3(const float *a, size_t lda, const float *b, size_t ldb, int n, float *out);
/* y += a * x */
void axpy_f32(float *y, float a, const float *x, int n);

/* Turns the AVX2 kernels off (0) or back on (1, where the CPU has them);
 * returns whether they are now in use.  For tests and benchmarks. */
int quant_simd(int enable);

/* dot of one Q4_0/Q4_1/Q8_0 row with fp32 x, dequantizing in registers;
 * available where dot_row_fused(type) says so (AVX2). */
int dot_row_fused(uint32_t type);
float dot_row(uint32_t type, const void *row, const float *x, int64_t n);

/* fp8 e4m3 (the CUDA engine's --kv-cache-dtype fp8): x rounded to the
 * nearest e4m3 value, ties to even, saturating at +-448; and a K or V row
 * rounded in place as an fp8 page holds it, e4m3 times the power of two
 * that takes the row's largest |x| to at most 448. */
float e4m3_round(float x);
void fp8_row_round(float *x, int n);

/* fp16 / bf16 conversions */
float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);

#endif
