/* kvcache prefix cache: a hash chain over full pages and an open-addressing
 * table from chain hash to page.
 *
 * Page i of a prompt is keyed by H(key of page i-1, its B token ids), so a
 * key stands for the whole prefix up to the end of that page.  Hits are not
 * verified against the tokens: a false hit needs a 64-bit collision between
 * two chains, about n^2 / 2^65 for n distinct pages ever cached, which we
 * accept (vLLM and llama.cpp's server take the same trade).
 */
#include "kvcache/internal.h"

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL

static inline uint64_t rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

/* xxh64-style rounds over the previous key and the token ids, then a full
 * avalanche so the low bits index the table well. */
uint64_t kv_block_hash(uint64_t prev, const int32_t *tokens, int n)
{
    uint64_t h = prev * P1 + P4 + (uint64_t)(uint32_t)n * P3;
    for (int i = 0; i < n; i++) {
        uint64_t k = rotl64((uint64_t)(uint32_t)tokens[i] * P2, 31) * P1;
        h = rotl64(h ^ k, 27) * P1 + P4;
    }
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

/* ---- table ------------------------------------------------------------- */

int32_t kv_table_find(const kv_pool *p, uint64_t h)
{
    for (uint32_t i = (uint32_t)h & p->table_mask;; i = (i + 1) & p->table_mask) {
        int32_t pg = p->table[i];
        if (pg < 0) return -1;
        if (p->hash[pg] == h) return pg;
    }
}

/* The table has at least twice as many slots as pages and a page is in it
 * at most once, so an empty slot always exists. */
void kv_table_insert(kv_pool *p, int32_t page, uint64_t h)
{
    uint32_t i = (uint32_t)h & p->table_mask;
    while (p->table[i] >= 0) i = (i + 1) & p->table_mask;
    p->table[i] = page;
    p->hash[page] = h;
    p->hashed[page] = 1;
}

/* Backward-shift deletion keeps probe chains intact without tombstones. */
void kv_table_remove(kv_pool *p, int32_t page)
{
    if (!p->hashed[page]) return;
    uint32_t m = p->table_mask, i = (uint32_t)p->hash[page] & m;
    while (p->table[i] != page) i = (i + 1) & m;
    for (uint32_t j = i;;) {
        j = (j + 1) & m;
        int32_t pg = p->table[j];
        if (pg < 0) break;
        uint32_t home = (uint32_t)p->hash[pg] & m;
        /* pg may fill the hole at i unless its home lies cyclically in (i, j]. */
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            p->table[i] = pg;
            i = j;
        }
    }
    p->table[i] = -1;
    p->hashed[page] = 0;
}

/* ---- match / publish --------------------------------------------------- */

int kv_seq_match_prefix(kv_pool *p, kv_seq *s, const int32_t *tokens, int n)
{
    if (s->n_pages != 0 || !tokens || n <= 0) return 0;
    int B = p->l.block_size;
    p->stats.prefix_queries += (uint64_t)n;

    /* At most floor((n-1)/B) pages: the last token is always computed. */
    int max_pages = (n - 1) / B, hits = 0;
    if (max_pages == 0 || kv_seq_grow(s, max_pages, p->win != NULL)) return 0;
    uint64_t h = 0;
    while (hits < max_pages) {
        h = kv_block_hash(h, tokens + (size_t)hits * B, B);
        if (kv_table_find(p, h) < 0) break;
        s->hashes[hits++] = h;
    }
    /* The window pages the next token reads, blocks from (hits B - W + 1) / B
     * on, must be cached too; a missing one at block j ends the run there. */
    int wfirst = 0;
    while (p->win && hits > 0) {
        int lo = hits * B - p->l.window + 1, j = hits - 1;
        wfirst = lo > 0 ? lo / B : 0;
        while (j >= wfirst && kv_table_find(p->win, s->hashes[j]) >= 0) j--;
        if (j < wfirst) break;
        hits = j;
    }
    if (hits == 0) return 0;

    for (int i = 0; i < hits; i++) {
        int32_t pg = kv_table_find(p, s->hashes[i]);
        kv_page_ref(p, pg);
        s->pages[i] = pg;
        if (p->win) {
            s->wpages[i] = i < wfirst ? -1 : kv_table_find(p->win, s->hashes[i]);
            kv_page_ref(p->win, s->wpages[i]);
        }
    }
    s->n_pages = s->n_hashed = hits;
    s->n_tokens = s->n_cached = hits * B;
    p->stats.prefix_hits += (uint64_t)hits * B;
    return hits * B;
}

void kv_seq_publish(kv_pool *p, kv_seq *s, const int32_t *tokens, int n)
{
    if (!tokens || n <= 0) return;
    /* Tokens past n_tokens cannot have been written. */
    if (n > s->n_tokens) n = s->n_tokens;
    int B = p->l.block_size;
    int full = n / B;
    if (full > s->n_pages) full = s->n_pages;
    for (int i = s->n_hashed; i < full; i++) {
        uint64_t h = kv_block_hash(i ? s->hashes[i - 1] : 0, tokens + (size_t)i * B, B);
        s->hashes[i] = h;
        int32_t pg = s->pages[i];
        /* An equal page published first keeps the entry; ours stays private
         * and is freed with the sequence. */
        if (!p->hashed[pg] && kv_table_find(p, h) < 0) kv_table_insert(p, pg, h);
        int32_t wp = p->win && s->wpages ? s->wpages[i] : -1;
        if (wp >= 0 && !p->win->hashed[wp] && kv_table_find(p->win, h) < 0) kv_table_insert(p->win, wp, h);
    }
    if (full > s->n_hashed) s->n_hashed = full;
}
