/* The CUDA backend of the engine: the whole forward pass on one GPU.
 * Private to engine/.  Plain C at the boundary, so engine.c and forward.c
 * need no CUDA headers.
 *
 * Weights are dequantized from the GGUF mapping a row at a time and kept on
 * the device in bf16 (Q/K/V plus the MSA indexer projections fused into one
 * matrix per layer, gate and up into another); GEMMs are cuBLASLt, bf16 in,
 * fp32 accumulate.  The residual stream stays fp32.
 *
 * K/V live in device memory, one allocation for the whole pool, sized on
 * the first step from the kv_pool's page count; the pool itself is only
 * bookkeeping for this backend (its host storage, if any, is not touched).
 * Per page and layer, as kvcache.h lays them out but in bf16:
 *   K, V [n_kv_heads][B][head_dim] (or fp8 e4m3), idx [B][idx_dim] (or
 *   fp8 e4m3), summary [n_kv_heads][3][head_dim] (min, max, sum of the
 *   page's keys), with fp8 K/V their row scales [n_kv_heads][2][B].
 */
#ifndef SPARSED_CUDA_BACKEND_H
#define SPARSED_CUDA_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

struct engine;
typedef struct cuda_backend cuda_backend;

/* Uploads the model of e (already loaded, attention config resolved) to
 * the GPU of this ordinal among the visible ones (CUDA_VISIBLE_DEVICES), in
 * bf16, or in fp32 with f32 set (weights, activations and K/V: for
 * exactness tests).  idx_fp8 keeps the MSA index keys of the KV pages in
 * fp8 e4m3 (half the bytes of bf16; ignored without an indexer).  kv_fp8
 * keeps K and V in e4m3 with a float scale a row (bf16 only): about half
 * the bytes; decode and MSA prefill read them as they are, dense prefill
 * widens one layer at a time into a bf16 copy that the pool's page bytes
 * include.  NULL with
 * err set when there is no usable GPU or memory runs out. */
cuda_backend *cuda_backend_create(const struct engine *e, int ordinal, int f32, int idx_fp8, int kv_fp8, char *err,
                                  size_t errlen);
void cuda_backend_free(cuda_backend *cb);

/* One engine step on the device for a batch that engine_step has already
 * validated.  logits (rows x n_vocab, may be NULL) and ids (the argmax of
 * each row, may be NULL) are written in engine_step's row order.  Returns
 * the number of rows, or -1 with err set. */
int cuda_backend_step(cuda_backend *cb, kv_pool *pool, const engine_batch *b, float *logits,
                      int32_t *ids, char *err, size_t errlen);

/* As cuda_backend_step, sampling each logit row on the device by rows[r]
 * (engine_step_sample): only the picks and requested logprobs come back. */
int cuda_backend_step_sample(cuda_backend *cb, kv_pool *pool, const engine_batch *b, const engine_sample *rows,
                             engine_sampled *out, char *err, size_t errlen);

/* Allocates now the buffers of the largest steps (see engine_reserve) and,
 * with pool, the pool's pages; -1 with err set when the card is too small. */
int cuda_backend_reserve(cuda_backend *cb, kv_pool *pool, int max_tokens, int max_rows, int max_seqs, char *err,
                         size_t errlen);

/* The card's free and total bytes (cudaMemGetInfo); -1 on an error. */
int cuda_backend_memory(const cuda_backend *cb, size_t *free_bytes, size_t *total_bytes);

/* Device bytes of one KV page of layout l (all layers). */
size_t cuda_backend_page_bytes(const cuda_backend *cb, const kv_layout *l);

/* Decode graphs captured so far (on by default; SPARSED_CUDA_GRAPHS=0 turns them off). */
int cuda_backend_graph_captures(const cuda_backend *cb);

/* Short description of the device ("cuda:0: NVIDIA H100 80GB HBM3, 132 SMs"). */
const char *cuda_backend_device_name(const cuda_backend *cb);

#ifdef __cplusplus
}
#endif

#endif
