/* Private to kvcache/: the pool's bookkeeping, shared by pool.c (pages,
 * refcounts, LRU, sequences) and prefix.c (hash table, match, publish). */
#ifndef SPARSED_KVCACHE_INTERNAL_H
#define SPARSED_KVCACHE_INTERNAL_H

#include "kvcache/kvcache.h"

/* A page is in exactly one state:
 *   free    refcnt 0, not hashed, on the free stack
 *   used    refcnt > 0 (hashed or not)
 *   cached  refcnt 0, hashed, on the LRU list
 * "hashed" means the prefix table maps hash[page] to the page. */
struct kv_pool {
    kv_layout l;
    int n_pages;
    size_t layer_floats;      /* stride of one layer inside a page */
    size_t page_floats;       /* stride of one page */
    int16_t *slot;            /* layer -> its place in this group's pages, -1: not here */
    kv_pool *win;             /* the window group (a pool of window pages), or NULL */
    float *data;              /* NULL without host storage */
    size_t data_bytes;

    int32_t *refcnt;
    int n_used;

    int32_t *free_stack;      /* top is the next page handed out */
    int n_free;

    /* Cached pages, oldest first; evicted from the head. */
    int32_t *lru_prev, *lru_next;
    int32_t lru_head, lru_tail;
    int n_cached;

    /* Prefix table: open addressing, linear probing, slots hold page ids
     * (-1 empty); the key is hash[page]. */
    uint64_t *hash;
    uint8_t *hashed;
    int32_t *table;
    uint32_t table_mask;

    kv_stats stats;
};

/* prefix.c */
int32_t kv_table_find(const kv_pool *p, uint64_t h);
void kv_table_insert(kv_pool *p, int32_t page, uint64_t h);
void kv_table_remove(kv_pool *p, int32_t page);

/* pool.c */
int kv_seq_grow(kv_seq *s, int n_pages, int window);
void kv_lru_remove(kv_pool *p, int32_t page);

#endif
