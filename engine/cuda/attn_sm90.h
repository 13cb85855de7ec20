/* attn_sm90: entry points of the Hopper (sm_90a) kernels, private to
 * engine/cuda.  Each returns 0 when it ran the work, 1 when it does not
 * apply (wrong device, shape or build: the caller falls back to its
 * portable kernel), or an error code like the public functions.  Also the
 * key-split helpers both prefill paths share (attn_prefill.cu). */
#ifndef SPARSED_ATTN_SM90_H
#define SPARSED_ATTN_SM90_H

#include <stdint.h>

#include <cuda_bf16.h>

#include "cuda_attn.h"

/* cattn_prefill on wgmma (FlashAttention-3 style); same arguments, already
 * validated by the caller.  Environment: CATTN_PREFILL_SM90=0 disables it;
 * CATTN_PREFILL_SPLIT (see prefill_splits). */
int cattn_prefill_sm90(const cattn_pool *p, const int32_t *table, int n_q, int q_pos0, int n_heads, const void *q,
                       void *out, float scale, const int32_t *blist, int blist_w, int blist_kvh_stride, void *ws,
                       size_t ws_bytes, void *stream);

/* cattn_msa_select_prefill on wgmma; arguments validated by the caller.
 * fp8 index keys are scored against e4m3 index queries (q8.cuh) on fp8
 * wgmma, as the mma.sync kernel scores them.  ws (may be NULL) is scratch for the partial lists when the keys are
 * split over several CTAs a tile (few tokens, long context).
 * Environment: CATTN_SELECT_SM90=0 disables it, =1 makes a decline an
 * error; CATTN_SELECT_SPLIT (see prefill_splits). */
int cattn_msa_select_prefill_sm90(const cattn_pool *p, const int32_t *table, int n_q, int q_pos0, const void *iq,
                                  int top_k, int local, int32_t *sel, void *ws, size_t ws_bytes, void *stream);

/* The MSA prefill's stage 2 (attn_prefill.cu): for a chunk of tokens
 * c0.., the (token, slot) items that chose block b of group g are
 * list[off[g nblk + b] ..] (cnt of them; item = token << 6 | slot), and
 * each (item, head) gets a normalised bf16 row in part and its log2-sum-
 * exp in plse, row ((token 4 + g) W + slot) ratio + head. */
struct SpArgs {
    const __nv_bfloat16 *q;
    const char *k, *v, *kvs; /* kvs: fp8 pages' row scales (kv_fp8) */
    long long k_stride, v_stride, kvs_stride;
    int kv_fp8;
    const int32_t *table;
    const int *cnt, *off, *list;
    float *plse;
    __nv_bfloat16 *part;
    int c0, q_pos0, kv_len, n_heads, ratio, B, W, nblk;
    float scale_log2;
};

#ifdef __CUDACC__
#include "attn_util.cuh"

/* The partial row of head hd of item it (group g, ratio heads a group). */
static __device__ __forceinline__ long long sp_prow(const SpArgs &a, int it, int g, int ratio, int hd)
{
    return (((long long)(it >> 6) * 4 + g) * a.W + (it & 63)) * ratio + hd;
}

/* Block blk's K and V (group g, 128 rows) from fp8 pages into shared
 * memory as the kernels' bf16 tiles (kv8_widen_rows: chunk ch of row r at
 * byte pos(r, ch), rows at or past `valid` zeros).  Each block is loaded
 * once per CTA and serves all the items that chose it, so the sequence's
 * pages need no widened copy. */
template <typename Pos>
static __device__ __forceinline__ void sp_load_kv8(const SpArgs &a, int blk, int g, int valid, unsigned char *ks,
                                                   unsigned char *vs, Pos pos, int tid, int nthr)
{
    const long long page = a.table[blk], head = (long long)g * 128 * 128;
    const float *sc = (const float *)(a.kvs + page * a.kvs_stride) + g * 2 * 128;
    kv8_widen_rows(a.k + page * a.k_stride + head, a.v + page * a.v_stride + head, sc, sc + 128, 128, valid, ks, vs,
                   pos, tid, nthr);
}
#endif

/* Stage 2 on wgmma for blocks of 128 and 4, 8 or 16 heads a group: grid
 * (nblk, 4, splits of each block's items).  Returns 1 where it does not
 * apply (CATTN_SP_SM90=0 too) and the caller runs its mma.sync kernel. */
int sp_attn_sm90(const SpArgs &a, int n_tok, void *stream);

/* ---- key splits (attn_prefill.cu) ---------------------------------------- */

#define SELECT_SPLIT_MIN 16 /* index-key blocks a selection range streams at least */

/* Ranges to cut the keys of `ctas` CTAs (per_sm resident on an SM) into,
 * each CTA streaming `tiles` key tiles: none (1) when they fill a wave,
 * else enough to, the count in [S_min, 2 S_min] whose last wave is
 * fullest, at least min_tiles a range, partials of per_split bytes a
 * range within ws_bytes.  Environment variable env = N forces N (only the
 * workspace bounds it; empty ranges are a case to test), 0 or 1: none. */
int prefill_splits(int ctas, int per_sm, int tiles, int min_tiles, size_t per_split, size_t ws_bytes,
                   const char *env);
/* sel [n_q][4][top_k + local] from S partial top-k lists ps/pi
 * [n_q][4][S][top_k] (each best first, -1 ids past its end), merged in
 * range order by top_list_insert's rule: the ranking (score, then the lower
 * block) of one pass over every block. */
int select_merge(const float *ps, const int32_t *pi, int S, int n_q, int q_pos0, int B, int top_k, int local,
                 int32_t *sel, void *stream);
/* out [n_q][n_heads][128] bf16 from S normalised fp32 partial rows
 * part_o [S][n_q][n_heads][128] and their log2-sum-exps part_lse (-inf:
 * no key of that range). */
int prefill_combine(const float *part_o, const float *part_lse, int S, int n_q, int n_heads, void *out,
                    void *stream);

#endif
