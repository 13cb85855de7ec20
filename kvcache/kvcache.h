/* kvcache: the block-paged KV pool shared by all sequences.
 *
 * A page holds `block_size` consecutive tokens of one sequence, for every
 * layer: K and V per KV head, the MSA index key per token (when the model
 * has an indexer) and per KV head a key summary (channel-wise min, max and
 * sum of the page's keys) for the training-free indexer.
 *
 * Sliding-window layers (Gemma's) read only the last `window` tokens.
 * With window_pages set, their K/V live in a second group of pages of
 * their own (the window group), and a sequence holds window pages only
 * for the tokens a step can still read: kv_seq_trim releases the rest.
 * A page of the main group then holds the other layers only.
 *
 * The pool knows pages and tokens only: no model math, no HTTP.  It keeps
 * refcounts, per-sequence block tables, and a prefix cache keyed by a hash
 * chain over full pages; cached pages nobody references are reused LRU.
 *
 * Not thread-safe: one owner (the scheduler loop, or a CLI) drives it.
 */
#ifndef SPARSED_KVCACHE_H
#define SPARSED_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#define KV_MAX_LAYERS 1024

typedef struct kv_layout {
    int n_layers;
    int n_kv_heads;
    int head_dim;
    int block_size;   /* tokens per page: power of two, 16..256 */
    int idx_dim;      /* MSA index key length per token; 0 = none */
    int summaries;    /* 1: keep per-page key min/max/sum per KV head */
    int window;       /* tokens a window layer reads (its own included); 0: none */
    int window_pages; /* pages of the window group; 0: window layers stay in the main pages */
    uint64_t win_mask[KV_MAX_LAYERS / 64]; /* bit l: layer l is a window layer */
} kv_layout;

/* Whether layer l keeps its K/V in the window group. */
int kv_layer_windowed(const kv_layout *l, int layer);
/* Window pages enough that kv_seq_trim + kv_seq_reserve never run out for
 * max_seqs sequences stepping max_step_tokens tokens in all (pool sizing). */
int kv_window_pages_for(const kv_layout *l, int max_seqs, int max_step_tokens);

typedef struct kv_pool kv_pool;

/* Validates the layout (message in err) and allocates n_pages pages.  With
 * host_storage 0 only the bookkeeping exists: a device backend keeps the
 * page data itself, in the same per-page layout. */
kv_pool *kv_pool_create(const kv_layout *layout, int n_pages, int host_storage,
                        char *err, size_t errlen);
void kv_pool_free(kv_pool *p);

const kv_layout *kv_pool_layout(const kv_pool *p);
int kv_pool_n_pages(const kv_pool *p);
/* Pages that can be handed out now: free ones plus cached, unreferenced ones. */
int kv_pool_n_available(const kv_pool *p);
/* Pages referenced by at least one sequence. */
int kv_pool_n_used(const kv_pool *p);
/* Cached (prefix-cache) pages that nobody references. */
int kv_pool_n_cached(const kv_pool *p);

/* Floats of one page for one layer, and bytes per page over its layers.
 * A page is [its layers][layer floats] (main pages: every layer, or with
 * window_pages the non-window ones; window pages: the window layers), in
 * layer order; each layer is K, V, idx, summary in that order, padded to
 * 16 floats so layers and pages stay 64-byte aligned.  Host storage is one
 * page-aligned block a group: page p starts at p * page bytes. */
size_t kv_layer_page_floats(const kv_layout *l);
size_t kv_page_bytes(const kv_layout *l);
size_t kv_window_page_bytes(const kv_layout *l);
/* The window group (its pages, refcounts and prefix table) as a pool of
 * its own, for inspection (tests, metrics); NULL without one. */
const kv_pool *kv_pool_window(const kv_pool *p);

/* Page allocation.  alloc returns a page with refcount 1, or -1 when the
 * pool is exhausted (the caller decides: wait, preempt, or fail). */
int32_t kv_page_alloc(kv_pool *p);
void kv_page_ref(kv_pool *p, int32_t page);
void kv_page_unref(kv_pool *p, int32_t page);
int kv_page_refcount(const kv_pool *p, int32_t page);

/* Host storage of a page for one layer (NULL without host storage; for a
 * window layer with window_pages, `page` is a window page).
 *   K, V:     [n_kv_heads][block_size][head_dim]
 *   idx:      [block_size][idx_dim]
 *   summary:  [n_kv_heads][3][head_dim]  (min, max, sum over filled slots) */
float *kv_page_k(kv_pool *p, int32_t page, int layer);
float *kv_page_v(kv_pool *p, int32_t page, int layer);
float *kv_page_idx(kv_pool *p, int32_t page, int layer);
float *kv_page_summary(kv_pool *p, int32_t page, int layer);
/* Start of a main page (its first layer's K): kv_page_bytes of it move as one unit.
 * Contents of a freshly allocated page are stale, not zero. */
float *kv_page_base(kv_pool *p, int32_t page);

/* A sequence's block table: pages[i] holds tokens [i*B, (i+1)*B); with a
 * window group wpages[i] holds them for the window layers, or is -1 once
 * trimmed (and before a matched prefix's window). */
typedef struct kv_seq {
    int32_t *pages;
    int32_t *wpages;  /* NULL without a window group */
    int n_pages;
    int cap;
    int n_tokens;     /* tokens whose K/V are (or are being) written */
    int n_cached;     /* leading tokens that came from the prefix cache */
    uint64_t *hashes; /* hash chain of the full pages published so far */
    int n_hashed;
} kv_seq;

void kv_seq_init(kv_seq *s);
/* Makes room for n_tokens in total and raises s->n_tokens to it.  Returns 0,
 * or -1 with nothing changed when the pool has too few pages. */
int kv_seq_reserve(kv_pool *p, kv_seq *s, int n_tokens);
/* Before a step that computes from token n_past: releases the window pages
 * no token from n_past on reads (those wholly before n_past - window + 1).
 * A no-op without a window group. */
void kv_seq_trim(kv_pool *p, kv_seq *s, int n_past);
/* Drops every page reference (newest page first, so chain tails are evicted
 * before their heads) and frees the table; safe to call twice.  The
 * sequence is empty afterwards and may be reused. */
void kv_seq_release(kv_pool *p, kv_seq *s);
/* Pages a sequence of n_tokens needs. */
int kv_pages_for(const kv_layout *l, int n_tokens);

/* Prefix cache.  match attaches the cached pages of the longest run of full
 * pages that starts `tokens` (refcounts taken) to an empty sequence and
 * returns the number of tokens covered (a multiple of B, at most n-1 so the
 * caller always computes at least one token); with a window group the run
 * ends where the window pages its next token reads are cached too.
 * publish registers the full pages of a sequence whose K/V for
 * tokens[0..n) are written (window pages too, while held). */
int kv_seq_match_prefix(kv_pool *p, kv_seq *s, const int32_t *tokens, int n);
void kv_seq_publish(kv_pool *p, kv_seq *s, const int32_t *tokens, int n);
/* Hash of one full page given the previous page's hash (0 for the first). */
uint64_t kv_block_hash(uint64_t prev, const int32_t *tokens, int n);

typedef struct kv_stats {
    uint64_t prefix_queries;   /* prompt tokens looked up (all n of each match) */
    uint64_t prefix_hits;      /* tokens found */
    uint64_t evictions;        /* cached pages reused for new data */
} kv_stats;
void kv_pool_stats(const kv_pool *p, kv_stats *out);

/* Checks the pool's internal invariants (every page exactly one of free,
 * referenced, cached; lists, counters and prefix table consistent).
 * Returns 0, or -1 with a message.  O(n_pages): for tests and debugging. */
int kv_pool_check(const kv_pool *p, char *err, size_t errlen);

#endif
