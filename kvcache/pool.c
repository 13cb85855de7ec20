/* kvcache pool: layout, page storage, refcounts, LRU reuse of cached pages
 * and per-sequence block tables.  The prefix table lives in prefix.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "kvcache/internal.h"

/* Limits generous enough for any model we load, small enough that page
 * sizes never overflow. */
#define MAX_LAYERS   KV_MAX_LAYERS
#define MAX_HEADS    1024
#define MAX_HEAD_DIM 4096
#define MAX_IDX_DIM  4096
#define MAX_PAGES    (1 << 28)

static int layout_check(const kv_layout *l, char *err, size_t errlen)
{
    const char *what = NULL;
    int v = 0;
    if (!l) {
        snprintf(err, errlen, "kv layout: missing");
        return -1;
    }
    if (l->n_layers < 1 || l->n_layers > MAX_LAYERS) what = "n_layers", v = l->n_layers;
    else if (l->n_kv_heads < 1 || l->n_kv_heads > MAX_HEADS) what = "n_kv_heads", v = l->n_kv_heads;
    else if (l->head_dim < 1 || l->head_dim > MAX_HEAD_DIM) what = "head_dim", v = l->head_dim;
    else if (l->idx_dim < 0 || l->idx_dim > MAX_IDX_DIM) what = "idx_dim", v = l->idx_dim;
    else if (l->summaries != 0 && l->summaries != 1) what = "summaries", v = l->summaries;
    if (what) {
        snprintf(err, errlen, "kv layout: %s = %d is out of range", what, v);
        return -1;
    }
    int b = l->block_size;
    if (b < 16 || b > 256 || (b & (b - 1)) != 0) {
        snprintf(err, errlen, "kv layout: block_size = %d must be a power of two in 16..256", b);
        return -1;
    }
    int n_win = 0;
    for (int i = 0; i < MAX_LAYERS; i++) {
        int w = (int)(l->win_mask[i / 64] >> (i % 64) & 1);
        if (w && i >= l->n_layers) {
            snprintf(err, errlen, "kv layout: window layer %d of %d layers", i, l->n_layers);
            return -1;
        }
        n_win += w;
    }
    if (l->window < 0 || l->window_pages < 0 || l->window_pages > MAX_PAGES ||
        (l->window_pages && (!l->window || !n_win))) {
        snprintf(err, errlen, "kv layout: window = %d, window_pages = %d with %d window layers", l->window,
                 l->window_pages, n_win);
        return -1;
    }
    return 0;
}

int kv_layer_windowed(const kv_layout *l, int layer)
{
    return layer >= 0 && layer < l->n_layers && layer < MAX_LAYERS && (l->win_mask[layer / 64] >> (layer % 64) & 1);
}

/* Layers a page of the window group (window 1) or of the main group holds. */
static int group_layers(const kv_layout *l, int window)
{
    int n = 0;
    for (int i = 0; i < l->n_layers; i++) n += kv_layer_windowed(l, i);
    if (!l->window_pages) return window ? 0 : l->n_layers;
    return window ? n : l->n_layers - n;
}

int kv_window_pages_for(const kv_layout *l, int max_seqs, int max_step_tokens)
{
    /* a sequence stepping t tokens from n_past holds blocks floor((n_past - W + 1) / B) ..
     * ceil((n_past + t) / B) - 1: at most (W - 1 + t) / B + 2, rounded up once more per sequence */
    int B = l->block_size;
    long long n = (long long)max_seqs * ((l->window - 1 + B - 1) / B + 3) + (max_step_tokens + B - 1) / B;
    return n > MAX_PAGES ? MAX_PAGES : (int)n;
}

/* One layer's floats, padded to 16 floats so every layer (and page) starts
 * 64-byte aligned.  A device backend uses the same strides. */
size_t kv_layer_page_floats(const kv_layout *l)
{
    size_t h = (size_t)l->n_kv_heads, b = (size_t)l->block_size, d = (size_t)l->head_dim;
    size_t n = 2 * h * b * d + b * (size_t)l->idx_dim + (l->summaries ? h * 3 * d : 0);
    return (n + 15) & ~(size_t)15;
}

size_t kv_page_bytes(const kv_layout *l)
{
    return kv_layer_page_floats(l) * (size_t)group_layers(l, 0) * sizeof(float);
}

size_t kv_window_page_bytes(const kv_layout *l)
{
    return kv_layer_page_floats(l) * (size_t)group_layers(l, 1) * sizeof(float);
}

int kv_pages_for(const kv_layout *l, int n_tokens)
{
    if (n_tokens <= 0) return 0;
    return n_tokens / l->block_size + (n_tokens % l->block_size != 0);
}

/* One group of pages: the main one, or (window 1) the window layers'. */
static kv_pool *group_create(const kv_layout *layout, int n_pages, int host_storage, int window, char *err,
                             size_t errlen)
{
    kv_pool *p = calloc(1, sizeof *p);
    if (!p) goto oom;
    p->l = *layout;
    p->n_pages = n_pages;
    p->layer_floats = kv_layer_page_floats(layout);
    p->page_floats = p->layer_floats * (size_t)group_layers(layout, window);
    p->slot = malloc((size_t)layout->n_layers * sizeof *p->slot);
    if (!p->slot) goto oom;
    for (int i = 0, k = 0; i < layout->n_layers; i++)
        p->slot[i] = (int16_t)((layout->window_pages && kv_layer_windowed(layout, i)) == window ? k++ : -1);

    uint32_t tsize = 16;
    while (tsize < 2u * (uint32_t)n_pages) tsize <<= 1;
    p->table_mask = tsize - 1;

    p->refcnt = calloc((size_t)n_pages, sizeof *p->refcnt);
    p->free_stack = malloc((size_t)n_pages * sizeof *p->free_stack);
    p->lru_prev = malloc((size_t)n_pages * sizeof *p->lru_prev);
    p->lru_next = malloc((size_t)n_pages * sizeof *p->lru_next);
    p->hash = calloc((size_t)n_pages, sizeof *p->hash);
    p->hashed = calloc((size_t)n_pages, 1);
    p->table = malloc((size_t)tsize * sizeof *p->table);
    if (!p->refcnt || !p->free_stack || !p->lru_prev || !p->lru_next || !p->hash ||
        !p->hashed || !p->table) goto oom;

    /* Page 0 is handed out first: pushed last. */
    for (int i = 0; i < n_pages; i++) p->free_stack[i] = n_pages - 1 - i;
    p->n_free = n_pages;
    for (int i = 0; i < n_pages; i++) p->lru_prev[i] = p->lru_next[i] = -1;
    p->lru_head = p->lru_tail = -1;
    for (uint32_t i = 0; i < tsize; i++) p->table[i] = -1;

    if (host_storage && p->page_floats) {
        size_t page_bytes = p->page_floats * sizeof(float);
        if (page_bytes > SIZE_MAX / (size_t)n_pages) {
            snprintf(err, errlen, "kv pool: %d pages of %zu bytes overflow", n_pages, page_bytes);
            kv_pool_free(p);
            return NULL;
        }
        p->data_bytes = page_bytes * (size_t)n_pages;
        /* Anonymous mmap: page-aligned and zero-filled lazily by the kernel,
         * so a large pool costs nothing until pages are written. */
        void *m = mmap(NULL, p->data_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            snprintf(err, errlen, "kv pool: cannot map %zu bytes for %d pages: %s",
                     p->data_bytes, n_pages, strerror(errno));
            p->data_bytes = 0;
            kv_pool_free(p);
            return NULL;
        }
        p->data = m;
    }
    return p;

oom:
    snprintf(err, errlen, "kv pool: out of memory for %d pages", n_pages);
    kv_pool_free(p);
    return NULL;
}

kv_pool *kv_pool_create(const kv_layout *layout, int n_pages, int host_storage,
                        char *err, size_t errlen)
{
    if (layout_check(layout, err, errlen)) return NULL;
    if (n_pages < 1 || n_pages > MAX_PAGES) {
        snprintf(err, errlen, "kv pool: n_pages = %d is out of range 1..%d", n_pages, MAX_PAGES);
        return NULL;
    }
    kv_pool *p = group_create(layout, n_pages, host_storage, 0, err, errlen);
    if (p && layout->window_pages) {
        p->win = group_create(layout, layout->window_pages, host_storage, 1, err, errlen);
        if (!p->win) {
            kv_pool_free(p);
            return NULL;
        }
    }
    return p;
}

void kv_pool_free(kv_pool *p)
{
    if (!p) return;
    kv_pool_free(p->win);
    free(p->slot);
    if (p->data) munmap(p->data, p->data_bytes);
    free(p->refcnt);
    free(p->free_stack);
    free(p->lru_prev);
    free(p->lru_next);
    free(p->hash);
    free(p->hashed);
    free(p->table);
    free(p);
}

const kv_layout *kv_pool_layout(const kv_pool *p) { return &p->l; }
const kv_pool *kv_pool_window(const kv_pool *p) { return p->win; }
int kv_pool_n_pages(const kv_pool *p) { return p->n_pages; }
int kv_pool_n_available(const kv_pool *p) { return p->n_free + p->n_cached; }
int kv_pool_n_used(const kv_pool *p) { return p->n_used; }
int kv_pool_n_cached(const kv_pool *p) { return p->n_cached; }

void kv_pool_stats(const kv_pool *p, kv_stats *out) { *out = p->stats; }

static int valid_page(const kv_pool *p, int32_t page)
{
    return page >= 0 && page < p->n_pages;
}

/* ---- LRU of cached pages -------------------------------------------- */

static void lru_push(kv_pool *p, int32_t page)
{
    p->lru_prev[page] = p->lru_tail;
    p->lru_next[page] = -1;
    if (p->lru_tail >= 0) p->lru_next[p->lru_tail] = page;
    else p->lru_head = page;
    p->lru_tail = page;
    p->n_cached++;
}

void kv_lru_remove(kv_pool *p, int32_t page)
{
    int32_t a = p->lru_prev[page], b = p->lru_next[page];
    if (a >= 0) p->lru_next[a] = b;
    else p->lru_head = b;
    if (b >= 0) p->lru_prev[b] = a;
    else p->lru_tail = a;
    p->lru_prev[page] = p->lru_next[page] = -1;
    p->n_cached--;
}

/* ---- pages ------------------------------------------------------------ */

int32_t kv_page_alloc(kv_pool *p)
{
    int32_t page;
    if (p->n_free > 0) {
        page = p->free_stack[--p->n_free];
    } else if (p->lru_head >= 0) {
        /* Reuse the least recently used cached page: its prefix is lost. */
        page = p->lru_head;
        kv_lru_remove(p, page);
        kv_table_remove(p, page);
        p->stats.evictions++;
    } else {
        return -1;
    }
    p->refcnt[page] = 1;
    p->n_used++;
    return page;
}

/* Taking a reference on a cached page revives it; on a free page it is a
 * caller bug and is ignored rather than corrupting the lists. */
void kv_page_ref(kv_pool *p, int32_t page)
{
    if (!valid_page(p, page)) return;
    if (p->refcnt[page] == 0) {
        if (!p->hashed[page]) return;
        kv_lru_remove(p, page);
        p->n_used++;
    }
    p->refcnt[page]++;
}

void kv_page_unref(kv_pool *p, int32_t page)
{
    if (!valid_page(p, page) || p->refcnt[page] == 0) return;
    if (--p->refcnt[page] > 0) return;
    p->n_used--;
    if (p->hashed[page]) lru_push(p, page);
    else p->free_stack[p->n_free++] = page;
}

int kv_page_refcount(const kv_pool *p, int32_t page)
{
    return valid_page(p, page) ? p->refcnt[page] : 0;
}

/* A window layer's storage is in the window group's page. */
static float *page_layer(kv_pool *p, int32_t page, int layer)
{
    if (layer < 0 || layer >= p->l.n_layers) return NULL;
    if (p->win && p->slot[layer] < 0) p = p->win;
    if (!p->data || !valid_page(p, page) || p->slot[layer] < 0) return NULL;
    return p->data + (size_t)page * p->page_floats + (size_t)p->slot[layer] * p->layer_floats;
}

float *kv_page_k(kv_pool *p, int32_t page, int layer)
{
    return page_layer(p, page, layer);
}

float *kv_page_v(kv_pool *p, int32_t page, int layer)
{
    float *b = page_layer(p, page, layer);
    return b ? b + (size_t)p->l.n_kv_heads * p->l.block_size * p->l.head_dim : NULL;
}

float *kv_page_idx(kv_pool *p, int32_t page, int layer)
{
    float *b = page_layer(p, page, layer);
    if (!b || p->l.idx_dim == 0) return NULL;
    return b + 2 * (size_t)p->l.n_kv_heads * p->l.block_size * p->l.head_dim;
}

float *kv_page_summary(kv_pool *p, int32_t page, int layer)
{
    float *b = page_layer(p, page, layer);
    if (!b || !p->l.summaries) return NULL;
    return b + 2 * (size_t)p->l.n_kv_heads * p->l.block_size * p->l.head_dim
             + (size_t)p->l.block_size * p->l.idx_dim;
}

float *kv_page_base(kv_pool *p, int32_t page)
{
    return p->data && valid_page(p, page) ? p->data + (size_t)page * p->page_floats : NULL;
}

/* ---- sequences -------------------------------------------------------- */

void kv_seq_init(kv_seq *s)
{
    memset(s, 0, sizeof *s);
}

/* Grows the block table (and hash chain; with window, the window table)
 * to hold n_pages entries. */
int kv_seq_grow(kv_seq *s, int n_pages, int window)
{
    if (n_pages <= s->cap && (!window || s->wpages)) return 0;
    int cap = s->cap ? s->cap : 8;
    while (cap < n_pages) cap = cap > (1 << 29) ? n_pages : cap * 2;
    int32_t *pg = realloc(s->pages, (size_t)cap * sizeof *pg);
    if (!pg) return -1;
    s->pages = pg;
    uint64_t *hs = realloc(s->hashes, (size_t)cap * sizeof *hs);
    if (!hs) return -1;
    s->hashes = hs;
    if (window) {
        int32_t *wp = realloc(s->wpages, (size_t)cap * sizeof *wp);
        if (!wp) return -1;
        s->wpages = wp;
    }
    s->cap = cap;
    return 0;
}

int kv_seq_reserve(kv_pool *p, kv_seq *s, int n_tokens)
{
    if (n_tokens < 0) return -1;
    int need = kv_pages_for(&p->l, n_tokens) - s->n_pages;
    if (need > 0) {
        if (need > kv_pool_n_available(p) || (p->win && need > kv_pool_n_available(p->win))) return -1;
        if (kv_seq_grow(s, s->n_pages + need, p->win != NULL)) return -1;
        for (int i = 0; i < need; i++) {
            if (p->win) s->wpages[s->n_pages] = kv_page_alloc(p->win);
            s->pages[s->n_pages++] = kv_page_alloc(p);
        }
    }
    if (n_tokens > s->n_tokens) s->n_tokens = n_tokens;
    return 0;
}

void kv_seq_trim(kv_pool *p, kv_seq *s, int n_past)
{
    if (!p->win || !s->wpages) return;
    int lo = n_past - p->l.window + 1; /* the first token a step from n_past reads */
    int end = lo > 0 ? lo / p->l.block_size : 0;
    if (end > s->n_pages) end = s->n_pages;
    /* newest first, down to the part trimmed before */
    for (int i = end - 1; i >= 0 && s->wpages[i] >= 0; i--) {
        kv_page_unref(p->win, s->wpages[i]);
        s->wpages[i] = -1;
    }
}

/* Pages are dropped newest first, so the tail of a prefix chain enters the
 * LRU before its head and is evicted first: a chain stays matchable from
 * its start for as long as possible. */
void kv_seq_release(kv_pool *p, kv_seq *s)
{
    for (int i = s->n_pages - 1; i >= 0; i--) {
        if (p->win && s->wpages && s->wpages[i] >= 0) kv_page_unref(p->win, s->wpages[i]);
        kv_page_unref(p, s->pages[i]);
    }
    free(s->pages);
    free(s->wpages);
    free(s->hashes);
    kv_seq_init(s);
}

/* ---- invariants (tests, debugging) ------------------------------------ */

int kv_pool_check(const kv_pool *p, char *err, size_t errlen)
{
    int n = p->n_pages;
    uint8_t *seen = calloc((size_t)n, 1);
    if (!seen) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = -1, used = 0, hashed = 0;
#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); goto out; } while (0)
    for (int i = 0; i < p->n_free; i++) {
        int32_t pg = p->free_stack[i];
        if (!valid_page(p, pg)) FAIL("free stack holds bad page %d", pg);
        if (seen[pg]++) FAIL("page %d twice on the free stack", pg);
        if (p->refcnt[pg] || p->hashed[pg]) FAIL("free page %d is referenced or hashed", pg);
    }
    int nc = 0;
    for (int32_t pg = p->lru_head, prev = -1; pg >= 0; prev = pg, pg = p->lru_next[pg]) {
        if (!valid_page(p, pg)) FAIL("LRU holds bad page %d", pg);
        if (p->lru_prev[pg] != prev) FAIL("LRU back link broken at page %d", pg);
        if (seen[pg]++) FAIL("page %d both free and cached, or cached twice", pg);
        if (p->refcnt[pg] || !p->hashed[pg]) FAIL("cached page %d is referenced or unhashed", pg);
        if (++nc > n) FAIL("LRU has a cycle");
        if (p->lru_next[pg] < 0 && p->lru_tail != pg) FAIL("LRU tail mismatch");
    }
    if (nc != p->n_cached) FAIL("n_cached %d but LRU holds %d", p->n_cached, nc);
    for (int pg = 0; pg < n; pg++) {
        if (p->refcnt[pg] < 0) FAIL("page %d has refcount %d", pg, p->refcnt[pg]);
        if (p->refcnt[pg] > 0) {
            used++;
            if (seen[pg]) FAIL("referenced page %d is also free or cached", pg);
        } else if (!seen[pg]) {
            FAIL("page %d is neither free, cached nor referenced", pg);
        }
        if (p->hashed[pg]) {
            hashed++;
            if (kv_table_find(p, p->hash[pg]) != pg) FAIL("hashed page %d not found by its hash", pg);
        }
    }
    if (used != p->n_used) FAIL("n_used %d but %d pages referenced", p->n_used, used);
    int entries = 0;
    for (uint32_t i = 0; i <= p->table_mask; i++) {
        int32_t pg = p->table[i];
        if (pg < 0) continue;
        entries++;
        if (!valid_page(p, pg) || !p->hashed[pg]) FAIL("table slot %u holds unhashed page %d", i, pg);
    }
    if (entries != hashed) FAIL("table has %d entries, %d pages hashed", entries, hashed);
    if (p->win && kv_pool_check(p->win, err, errlen)) {
        char sub[200];
        snprintf(sub, sizeof sub, "%s", err);
        FAIL("window group: %s", sub);
    }
    rc = 0;
#undef FAIL
out:
    free(seen);
    return rc;
}
