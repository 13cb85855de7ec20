/* The CPU backend's private interface: thread pool, matmul, attention and
 * sparse block selection.  Private to engine/. */
#ifndef SPARSED_CPU_H
#define SPARSED_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"

/* ---- thread pool: run fn(ctx, i) for i in [0, n) on all threads ------ */
typedef struct tpool tpool;
typedef void (*tpool_fn)(void *ctx, int i, int thread);
tpool *tpool_create(int n_threads);
void tpool_free(tpool *p);
int tpool_size(const tpool *p);
void tpool_run(tpool *p, tpool_fn fn, void *ctx, int n);

/* Per-thread scratch that grows as needed, 64-byte aligned; one buffer per
 * slot so nested users (attention calling selection) don't collide.  Pool
 * workers free theirs when they exit. */
enum { SCRATCH_MATMUL, SCRATCH_ATTN, SCRATCH_SELECT, SCRATCH_SLOTS };
void *cpu_scratch(int slot, size_t bytes);

/* ---- weights ---------------------------------------------------------- */
typedef struct wmat {
    const void *data;       /* ggml-typed rows, in the mapping */
    uint32_t type;
    int rows;               /* outputs (ne1) */
    int cols;               /* inputs (ne0), contiguous */
    size_t row_bytes;
} wmat;

/* Rows [r0, r0 + n) of w, in place (the parts of fused or stacked
 * matrices are whole rows). */
static inline wmat wmat_rows(wmat w, int r0, int n)
{
    if (w.data)
        w.data = (const char *)w.data + (size_t)r0 * w.row_bytes;
    w.rows = n;
    return w;
}

/* The block table layer l's K/V pages are in: with the pool's window group
 * a window layer's, else the main one. */
static inline const int32_t *seq_table(const kv_pool *pool, const engine_seq *s, int l)
{
    return kv_pool_window(pool) && kv_layer_windowed(kv_pool_layout(pool), l) ? s->wblocks : s->blocks;
}

/* out[t][r] = sum_c W[r][c] * x[t][c] for t < T, all rows. */
void matmul(tpool *p, float *out, const wmat *w, const float *x, int T);


/* ---- sparse block selection (cpu/sparse.c) ---------------------------- */

/* One query token's selection for one KV group in one layer. */
typedef struct sel_args {
    kv_pool *pool;
    const attn_config *cfg;   /* resolved */
    int layer;
    const int32_t *blocks;    /* the sequence's block table */
    int pos;                  /* query position: tokens 0..pos are visible */
    int group;                /* KV head */
    const float *q;           /* the group's query heads after RoPE, [n_q][head_dim] */
    int n_q, head_dim;
    const float *iq;          /* MSA: the group's index query [idx_dim], else NULL */
    int idx_dim;
    const float *scores;      /* MSA: this group's block scores from sparse_score_msa
                               * (indexed by block), or NULL to score here */
} sel_args;

/* Writes the logical block indices (into the block table) the query
 * attends to, ascending and distinct, and returns their count.  out has room
 * for pos / block_size + 1 entries. */
int sparse_select(const sel_args *a, int32_t *out);

/* MSA block scores of one query token for n_groups KV groups at once, so
 * the index keys are read once for all groups: a->iq holds the groups'
 * index queries [n_groups][idx_dim]; scores[g * (pos / B + 1) + b] for the
 * blocks b in [b0, b1). */
void sparse_score_msa(const sel_args *a, int n_groups, int b0, int b1, float *scores);

/* Keeps a page's key summary current after K of `slot` was written:
 * slot 0 starts it, later slots widen min/max and add to the sum. */
void summary_update(float *summary, const float *k, int slot, int head_dim);

/* ---- attention (cpu/attention.c) -------------------------------------- */

struct engine;
/* Attention of every new token of the batch in layer l, reading the pages
 * (whose K/V for the batch are already written).  Q is [T][Hq*D] after
 * RoPE; the result goes to out [T][Hq*D]. */
void attention_layer(struct engine *e, kv_pool *pool, const engine_batch *b, int l,
                     const float *q, const float *iq, float *out);

#endif
