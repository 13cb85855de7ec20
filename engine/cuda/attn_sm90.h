/* attn_sm90: entry points of the Hopper (sm_90a) kernels, private to
 * engine/cuda.  Each returns 0 when it ran the work, 1 when it does not
 * apply (wrong device, shape or build: the caller falls back to its
 * portable kernel), or an error code like the public functions. */
#ifndef SPARSED_ATTN_SM90_H
#define SPARSED_ATTN_SM90_H

#include <stdint.h>

#include "cuda_attn.h"

/* cattn_prefill on wgmma (FlashAttention-3 style); same arguments, already
 * validated by the caller.  Environment: CATTN_PREFILL_SM90=0 disables it;
 * CATTN_PREFILL_SPLIT (see pick_splits). */
int cattn_prefill_sm90(const cattn_pool *p, const int32_t *table, int n_q, int q_pos0, int n_heads, const void *q,
                       void *out, float scale, const int32_t *blist, int blist_w, int blist_kvh_stride, void *ws,
                       size_t ws_bytes, void *stream);

/* cattn_msa_select_prefill on wgmma; arguments validated by the caller.
 * fp8 index keys are widened to bf16 in shared memory, as the mma.sync
 * kernel does, so the scores are the same; the index queries stay bf16.
 * ws (may be NULL) is scratch for the partial lists when the keys are
 * split over several CTAs a tile (few tokens, long context).
 * Environment: CATTN_SELECT_SM90=0 disables it, =1 makes a decline an
 * error; CATTN_SELECT_SPLIT (see select_splits). */
int cattn_msa_select_prefill_sm90(const cattn_pool *p, const int32_t *table, int n_q, int q_pos0, const void *iq,
                                  int top_k, int local, int32_t *sel, void *ws, size_t ws_bytes, void *stream);

#endif
