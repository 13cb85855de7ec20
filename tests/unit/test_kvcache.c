/* kvcache: layout validation, page allocation and refcounts, block tables,
 * per-page storage, prefix cache (match, publish, LRU eviction) and a
 * randomized stress run checking the pool's invariants after every op. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache/kvcache.h"

static kv_layout lay(int layers, int heads, int dim, int B, int idx, int summ)
{
    kv_layout l = { .n_layers = layers, .n_kv_heads = heads, .head_dim = dim,
                    .block_size = B, .idx_dim = idx, .summaries = summ };
    return l;
}

static kv_pool *mkpool(kv_layout l, int n_pages, int host)
{
    char err[256] = "";
    kv_pool *p = kv_pool_create(&l, n_pages, host, err, sizeof err);
    ck_assert_msg(p != NULL, "create failed: %s", err);
    return p;
}

static void check_ok(const kv_pool *p)
{
    char err[256] = "";
    ck_assert_msg(kv_pool_check(p, err, sizeof err) == 0, "invariant: %s", err);
}

/* tokens[i] = base + i */
static void fill_tokens(int32_t *t, int n, int32_t base)
{
    for (int i = 0; i < n; i++) t[i] = base + i;
}

START_TEST(layout_validation)
{
    struct { kv_layout l; int n_pages; const char *field; } bad[] = {
        { lay(2, 2, 8, 24, 0, 0), 4, "block_size" },   /* not a power of two */
        { lay(2, 2, 8, 8, 0, 0), 4, "block_size" },    /* too small */
        { lay(2, 2, 8, 512, 0, 0), 4, "block_size" },  /* too large */
        { lay(2, 2, 8, 0, 0, 0), 4, "block_size" },
        { lay(2, 0, 8, 16, 0, 0), 4, "n_kv_heads" },
        { lay(0, 2, 8, 16, 0, 0), 4, "n_layers" },
        { lay(2, 2, 0, 16, 0, 0), 4, "head_dim" },
        { lay(2, 2, 8, 16, -1, 0), 4, "idx_dim" },
        { lay(2, 2, 8, 16, 0, 2), 4, "summaries" },
        { lay(2, 2, 8, 16, 0, 0), 0, "n_pages" },
        { lay(2, 2, 8, 16, 0, 0), -3, "n_pages" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "";
        kv_pool *p = kv_pool_create(&bad[i].l, bad[i].n_pages, 1, err, sizeof err);
        ck_assert_msg(p == NULL, "case %zu accepted", i);
        ck_assert_msg(strstr(err, bad[i].field) != NULL, "case %zu: '%s' lacks %s", i, err,
                      bad[i].field);
    }
    int ok_B[] = { 16, 32, 64, 128, 256 };
    for (int i = 0; i < 5; i++) {
        kv_pool *p = mkpool(lay(1, 1, 4, ok_B[i], 0, 0), 2, 1);
        ck_assert_int_eq(kv_pool_layout(p)->block_size, ok_B[i]);
        ck_assert_int_eq(kv_pool_n_pages(p), 2);
        kv_pool_free(p);
    }
}
END_TEST

START_TEST(page_sizes)
{
    kv_layout l = lay(3, 2, 8, 16, 4, 1);
    /* K+V 2*2*16*8 = 512, idx 16*4 = 64, summaries 2*3*8 = 48: 624 floats. */
    ck_assert_uint_eq(kv_layer_page_floats(&l), 624);
    ck_assert_uint_eq(kv_page_bytes(&l), 624 * 3 * sizeof(float));
    kv_layout odd = lay(1, 1, 3, 16, 0, 1); /* 96 + 9 = 105 -> padded to 112 */
    ck_assert_uint_eq(kv_layer_page_floats(&odd), 112);
    ck_assert_int_eq(kv_pages_for(&l, 0), 0);
    ck_assert_int_eq(kv_pages_for(&l, 1), 1);
    ck_assert_int_eq(kv_pages_for(&l, 16), 1);
    ck_assert_int_eq(kv_pages_for(&l, 17), 2);
    ck_assert_int_eq(kv_pages_for(&l, 0x7fffffff), 0x7fffffff / 16 + 1);
}
END_TEST

START_TEST(alloc_exhaustion_and_reuse)
{
    kv_pool *p = mkpool(lay(1, 1, 4, 16, 0, 0), 8, 1);
    int32_t got[8];
    uint8_t seen[8] = { 0 };
    for (int i = 0; i < 8; i++) {
        got[i] = kv_page_alloc(p);
        ck_assert(got[i] >= 0 && got[i] < 8);
        ck_assert(!seen[got[i]]);
        seen[got[i]] = 1;
        ck_assert_int_eq(kv_page_refcount(p, got[i]), 1);
    }
    ck_assert_int_eq(kv_pool_n_used(p), 8);
    ck_assert_int_eq(kv_pool_n_available(p), 0);
    ck_assert_int_eq(kv_page_alloc(p), -1);
    ck_assert_int_eq(kv_page_alloc(p), -1);
    ck_assert_int_eq(kv_pool_n_used(p), 8);
    check_ok(p);

    kv_page_unref(p, got[5]);
    ck_assert_int_eq(kv_pool_n_available(p), 1);
    ck_assert_int_eq(kv_page_alloc(p), got[5]);
    ck_assert_int_eq(kv_page_alloc(p), -1);
    for (int i = 0; i < 8; i++) kv_page_unref(p, got[i]);
    ck_assert_int_eq(kv_pool_n_used(p), 0);
    ck_assert_int_eq(kv_pool_n_available(p), 8);
    check_ok(p);
    kv_pool_free(p);
}
END_TEST

START_TEST(refcounts)
{
    kv_pool *p = mkpool(lay(1, 1, 4, 16, 0, 0), 4, 1);
    int32_t a = kv_page_alloc(p);
    kv_page_ref(p, a);
    kv_page_ref(p, a);
    ck_assert_int_eq(kv_page_refcount(p, a), 3);
    ck_assert_int_eq(kv_pool_n_used(p), 1);
    kv_page_unref(p, a);
    kv_page_unref(p, a);
    ck_assert_int_eq(kv_page_refcount(p, a), 1);
    ck_assert_int_eq(kv_pool_n_available(p), 3);
    kv_page_unref(p, a);
    ck_assert_int_eq(kv_page_refcount(p, a), 0);
    ck_assert_int_eq(kv_pool_n_available(p), 4);
    /* Misuse is ignored, not corrupting: unref of a free page, ref of a free
     * page, out-of-range ids. */
    kv_page_unref(p, a);
    kv_page_ref(p, a);
    kv_page_ref(p, 99);
    kv_page_unref(p, -1);
    ck_assert_int_eq(kv_page_refcount(p, a), 0);
    ck_assert_int_eq(kv_page_refcount(p, 99), 0);
    ck_assert_int_eq(kv_pool_n_available(p), 4);
    check_ok(p);
    kv_pool_free(p);
}
END_TEST

START_TEST(reserve_all_or_nothing)
{
    kv_pool *p = mkpool(lay(1, 1, 4, 16, 0, 0), 4, 1);
    kv_seq a, b;
    kv_seq_init(&a);
    kv_seq_init(&b);
    ck_assert_int_eq(kv_seq_reserve(p, &a, 40), 0);
    ck_assert_int_eq(a.n_pages, 3);
    ck_assert_int_eq(a.n_tokens, 40);
    ck_assert_int_eq(kv_seq_reserve(p, &a, 48), 0); /* fits in page 3 */
    ck_assert_int_eq(a.n_pages, 3);
    ck_assert_int_eq(a.n_tokens, 48);

    ck_assert_int_eq(kv_seq_reserve(p, &b, 40), -1);
    ck_assert_int_eq(b.n_pages, 0);
    ck_assert_int_eq(b.n_tokens, 0);
    ck_assert_int_eq(kv_pool_n_available(p), 1);
    ck_assert_int_eq(kv_seq_reserve(p, &b, 16), 0);
    ck_assert_int_eq(b.n_pages, 1);

    ck_assert_int_eq(kv_seq_reserve(p, &a, 49), -1);
    ck_assert_int_eq(a.n_pages, 3);
    ck_assert_int_eq(a.n_tokens, 48);
    ck_assert_int_eq(kv_seq_reserve(p, &a, -1), -1);
    ck_assert_int_eq(kv_pool_n_used(p), 4);
    check_ok(p);

    /* Pages of a block table are distinct. */
    ck_assert(a.pages[0] != a.pages[1] && a.pages[1] != a.pages[2] && a.pages[0] != a.pages[2]);
    ck_assert(b.pages[0] != a.pages[0] && b.pages[0] != a.pages[1] && b.pages[0] != a.pages[2]);

    kv_seq_release(p, &a);
    kv_seq_release(p, &a);
    ck_assert_int_eq(a.n_pages, 0);
    ck_assert_int_eq(a.n_tokens, 0);
    ck_assert_int_eq(kv_pool_n_used(p), 1);
    kv_seq_release(p, &b);
    kv_seq_release(p, &b);
    ck_assert_int_eq(kv_pool_n_used(p), 0);
    ck_assert_int_eq(kv_pool_n_available(p), 4);
    /* A released sequence can be used again. */
    ck_assert_int_eq(kv_seq_reserve(p, &a, 64), 0);
    ck_assert_int_eq(a.n_pages, 4);
    kv_seq_release(p, &a);
    check_ok(p);
    kv_pool_free(p);
}
END_TEST

typedef struct { uintptr_t lo, hi; } range;

static int range_cmp(const void *a, const void *b)
{
    const range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

START_TEST(storage_layout)
{
    enum { L = 3, H = 2, D = 5, B = 16, I = 3, NP = 6 };
    kv_layout l = lay(L, H, D, B, I, 1);
    kv_pool *p = mkpool(l, NP, 1);
    size_t kv_n = (size_t)H * B * D, idx_n = (size_t)B * I, sum_n = (size_t)H * 3 * D;
    range r[NP * L * 4];
    int nr = 0;
    for (int pg = 0; pg < NP; pg++) {
        ck_assert_ptr_eq(kv_page_base(p, pg), kv_page_k(p, pg, 0));
        if (pg > 0)
            ck_assert_uint_eq((uintptr_t)kv_page_base(p, pg) - (uintptr_t)kv_page_base(p, pg - 1),
                              kv_page_bytes(&l));
        for (int ly = 0; ly < L; ly++) {
            float *k = kv_page_k(p, pg, ly), *v = kv_page_v(p, pg, ly);
            float *ix = kv_page_idx(p, pg, ly), *sm = kv_page_summary(p, pg, ly);
            ck_assert(k && v && ix && sm);
            ck_assert_uint_eq((uintptr_t)k % 64, 0);
            /* All of a page lies inside [base, base + page bytes). */
            uintptr_t base = (uintptr_t)kv_page_base(p, pg);
            ck_assert((uintptr_t)(sm + sum_n) <= base + kv_page_bytes(&l));
            r[nr++] = (range){ (uintptr_t)k, (uintptr_t)(k + kv_n) };
            r[nr++] = (range){ (uintptr_t)v, (uintptr_t)(v + kv_n) };
            r[nr++] = (range){ (uintptr_t)ix, (uintptr_t)(ix + idx_n) };
            r[nr++] = (range){ (uintptr_t)sm, (uintptr_t)(sm + sum_n) };
        }
    }
    qsort(r, (size_t)nr, sizeof r[0], range_cmp);
    for (int i = 1; i < nr; i++) ck_assert_msg(r[i - 1].hi <= r[i].lo, "ranges overlap");

    /* Write a distinct pattern everywhere, then read it all back. */
    for (int pg = 0; pg < NP; pg++)
        for (int ly = 0; ly < L; ly++) {
            float tag = (float)(pg * 1000 + ly * 100);
            float *k = kv_page_k(p, pg, ly), *v = kv_page_v(p, pg, ly);
            float *ix = kv_page_idx(p, pg, ly), *sm = kv_page_summary(p, pg, ly);
            for (size_t i = 0; i < kv_n; i++) { k[i] = tag + 1 + (float)i / 1024; v[i] = tag + 2 + (float)i / 1024; }
            for (size_t i = 0; i < idx_n; i++) ix[i] = tag + 3 + (float)i / 1024;
            for (size_t i = 0; i < sum_n; i++) sm[i] = tag + 4 + (float)i / 1024;
        }
    for (int pg = 0; pg < NP; pg++)
        for (int ly = 0; ly < L; ly++) {
            float tag = (float)(pg * 1000 + ly * 100);
            float *k = kv_page_k(p, pg, ly), *v = kv_page_v(p, pg, ly);
            float *ix = kv_page_idx(p, pg, ly), *sm = kv_page_summary(p, pg, ly);
            for (size_t i = 0; i < kv_n; i++) {
                ck_assert_float_eq(k[i], tag + 1 + (float)i / 1024);
                ck_assert_float_eq(v[i], tag + 2 + (float)i / 1024);
            }
            for (size_t i = 0; i < idx_n; i++) ck_assert_float_eq(ix[i], tag + 3 + (float)i / 1024);
            for (size_t i = 0; i < sum_n; i++) ck_assert_float_eq(sm[i], tag + 4 + (float)i / 1024);
        }
    /* Out of range gives NULL. */
    ck_assert_ptr_null(kv_page_k(p, NP, 0));
    ck_assert_ptr_null(kv_page_k(p, 0, L));
    ck_assert_ptr_null(kv_page_v(p, -1, 0));
    kv_pool_free(p);

    /* No idx / summaries: those pointers are NULL. */
    p = mkpool(lay(1, 1, 4, 16, 0, 0), 2, 1);
    ck_assert_ptr_nonnull(kv_page_k(p, 1, 0));
    ck_assert_ptr_null(kv_page_idx(p, 1, 0));
    ck_assert_ptr_null(kv_page_summary(p, 1, 0));
    kv_pool_free(p);

    /* Bookkeeping only. */
    p = mkpool(l, NP, 0);
    ck_assert_ptr_null(kv_page_k(p, 0, 0));
    ck_assert_ptr_null(kv_page_base(p, 0));
    ck_assert_int_eq(kv_page_alloc(p), 0);
    kv_pool_free(p);
}
END_TEST

START_TEST(prefix_match_publish)
{
    enum { B = 16 };
    kv_pool *p = mkpool(lay(1, 1, 4, B, 0, 0), 16, 1);
    int32_t t[80];
    fill_tokens(t, 80, 1000);

    kv_seq a, b, c;
    kv_seq_init(&a);
    kv_seq_init(&b);
    kv_seq_init(&c);
    ck_assert_int_eq(kv_seq_match_prefix(p, &a, t, 50), 0);
    ck_assert_int_eq(kv_seq_reserve(p, &a, 50), 0);
    kv_seq_publish(p, &a, t, 50);
    ck_assert_int_eq(a.n_hashed, 3);
    kv_seq_publish(p, &a, t, 50); /* idempotent */
    ck_assert_int_eq(a.n_hashed, 3);
    check_ok(p);

    /* Same prompt: the three full pages are shared. */
    ck_assert_int_eq(kv_seq_match_prefix(p, &b, t, 50), 48);
    ck_assert_int_eq(b.n_pages, 3);
    ck_assert_int_eq(b.n_tokens, 48);
    ck_assert_int_eq(b.n_cached, 48);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(b.pages[i], a.pages[i]);
        ck_assert_int_eq(kv_page_refcount(p, a.pages[i]), 2);
        ck_assert(b.hashes[i] == a.hashes[i]);
    }
    ck_assert_int_eq(kv_page_refcount(p, a.pages[3]), 1);
    /* b grows its own page for the rest. */
    ck_assert_int_eq(kv_seq_reserve(p, &b, 50), 0);
    ck_assert_int_eq(b.n_pages, 4);
    ck_assert(b.pages[3] != a.pages[3]);
    check_ok(p);

    /* Exactly 48 tokens: at least one must be computed, so 32 covered. */
    ck_assert_int_eq(kv_seq_match_prefix(p, &c, t, 48), 32);
    kv_seq_release(p, &c);
    ck_assert_int_eq(kv_seq_match_prefix(p, &c, t, 49), 48);
    kv_seq_release(p, &c);
    ck_assert_int_eq(kv_seq_match_prefix(p, &c, t, 16), 0);
    ck_assert_int_eq(c.n_pages, 0);
    ck_assert_int_eq(kv_seq_match_prefix(p, &c, t, 17), 16);
    /* A non-empty sequence is not matched again. */
    ck_assert_int_eq(kv_seq_match_prefix(p, &c, t, 50), 0);
    ck_assert_int_eq(c.n_pages, 1);
    kv_seq_release(p, &c);

    /* Differs in page 2: pages 0 and 1 match. */
    int32_t u[50];
    memcpy(u, t, sizeof u);
    u[40] = 7;
    ck_assert_int_eq(kv_seq_match_prefix(p, &c, u, 50), 32);
    kv_seq_release(p, &c);
    /* Differs in the last token of page 0: nothing matches, even though
     * later pages hold the same tokens (the chain depends on the prefix). */
    memcpy(u, t, sizeof u);
    u[15] = 7;
    ck_assert_int_eq(kv_seq_match_prefix(p, &c, u, 50), 0);
    ck_assert_int_eq(c.n_pages, 0);
    /* Same tokens shifted by one page do not match either. */
    ck_assert_int_eq(kv_seq_match_prefix(p, &c, t + B, 40), 0);

    /* Publishing a second copy keeps the first page in the table. */
    kv_seq d;
    kv_seq_init(&d);
    ck_assert_int_eq(kv_seq_reserve(p, &d, 32), 0);
    kv_seq_publish(p, &d, t, 32);
    ck_assert_int_eq(d.n_hashed, 2);
    ck_assert(d.hashes[1] == a.hashes[1]);
    kv_seq_release(p, &d);
    ck_assert_int_eq(kv_seq_match_prefix(p, &c, t, 40), 32);
    ck_assert_int_eq(c.pages[0], a.pages[0]);
    ck_assert_int_eq(c.pages[1], a.pages[1]);
    kv_seq_release(p, &c);

    /* Publish clamps to the pages the sequence has. */
    ck_assert_int_eq(kv_seq_reserve(p, &d, 20), 0);
    kv_seq_publish(p, &d, u, 64);
    ck_assert_int_eq(d.n_hashed, 1);
    kv_seq_release(p, &d);
    check_ok(p);

    kv_stats st;
    kv_pool_stats(p, &st);
    /* Queries: 50 + 50 + 48 + 49 + 16 + 17 + 50 + 50 + 40 + 40 (the call on
     * a non-empty sequence is not a query). */
    ck_assert_uint_eq(st.prefix_queries, 50 + 50 + 48 + 49 + 16 + 17 + 50 + 50 + 40 + 40);
    ck_assert_uint_eq(st.prefix_hits, 48 + 32 + 48 + 16 + 32 + 32);
    ck_assert_uint_eq(st.evictions, 0);

    kv_seq_release(p, &a);
    kv_seq_release(p, &b);
    ck_assert_int_eq(kv_pool_n_used(p), 0);
    /* a's three published pages and d's page of u stay cached, findable. */
    ck_assert_int_eq(kv_pool_n_cached(p), 4);
    ck_assert_int_eq(kv_pool_n_available(p), 16);
    ck_assert_int_eq(kv_seq_match_prefix(p, &c, t, 80), 48);
    ck_assert_int_eq(kv_pool_n_cached(p), 1);
    ck_assert_int_eq(kv_pool_n_used(p), 3);
    kv_seq_release(p, &c);
    check_ok(p);
    kv_pool_free(p);
}
END_TEST

/* Runs a one-page prompt (17 tokens: one full page) through a sequence and
 * releases it, leaving the full page cached.  Returns that page. */
static int32_t cache_one(kv_pool *p, int32_t base)
{
    int32_t t[17];
    fill_tokens(t, 17, base);
    kv_seq s;
    kv_seq_init(&s);
    ck_assert_int_eq(kv_seq_match_prefix(p, &s, t, 17), 0);
    ck_assert_int_eq(kv_seq_reserve(p, &s, 17), 0);
    kv_seq_publish(p, &s, t, 17);
    int32_t pg = s.pages[0];
    kv_seq_release(p, &s);
    return pg;
}

static int matches(kv_pool *p, int32_t base)
{
    int32_t t[17];
    fill_tokens(t, 17, base);
    kv_seq s;
    kv_seq_init(&s);
    int n = kv_seq_match_prefix(p, &s, t, 17);
    kv_seq_release(p, &s);
    return n;
}

START_TEST(lru_eviction)
{
    kv_pool *p = mkpool(lay(1, 1, 4, 16, 0, 0), 4, 1);
    int32_t pa = cache_one(p, 100), pb = cache_one(p, 200), pc = cache_one(p, 300);
    ck_assert(pa != pb && pb != pc && pa != pc);
    ck_assert_int_eq(kv_pool_n_cached(p), 3);
    ck_assert_int_eq(kv_pool_n_available(p), 4);
    ck_assert_int_eq(kv_pool_n_used(p), 0);

    /* Touch A: now B is the least recently used, then C, then A. */
    ck_assert_int_eq(matches(p, 100), 16);
    check_ok(p);

    int32_t x[4];
    x[0] = kv_page_alloc(p); /* the free page first */
    ck_assert(x[0] != pa && x[0] != pb && x[0] != pc);
    kv_stats st;
    kv_pool_stats(p, &st);
    ck_assert_uint_eq(st.evictions, 0);

    x[1] = kv_page_alloc(p);
    ck_assert_int_eq(x[1], pb);
    kv_pool_stats(p, &st);
    ck_assert_uint_eq(st.evictions, 1);
    ck_assert_int_eq(matches(p, 200), 0);
    ck_assert_int_eq(matches(p, 300), 16); /* C touched: A is now oldest */
    ck_assert_int_eq(matches(p, 100), 16); /* A touched: C is now oldest */

    x[2] = kv_page_alloc(p);
    ck_assert_int_eq(x[2], pc);
    ck_assert_int_eq(matches(p, 300), 0);
    x[3] = kv_page_alloc(p);
    ck_assert_int_eq(x[3], pa);
    ck_assert_int_eq(matches(p, 100), 0);
    ck_assert_int_eq(kv_page_alloc(p), -1);
    kv_pool_stats(p, &st);
    ck_assert_uint_eq(st.evictions, 3);
    check_ok(p);

    for (int i = 0; i < 4; i++) kv_page_unref(p, x[i]);
    ck_assert_int_eq(kv_pool_n_used(p), 0);
    ck_assert_int_eq(kv_pool_n_cached(p), 0);
    check_ok(p);
    kv_pool_free(p);
}
END_TEST

/* A released chain is evicted from its tail: the head stays matchable. */
START_TEST(lru_chain_tail_first)
{
    kv_pool *p = mkpool(lay(1, 1, 4, 16, 0, 0), 4, 1);
    int32_t t[49];
    fill_tokens(t, 49, 5);
    kv_seq s;
    kv_seq_init(&s);
    ck_assert_int_eq(kv_seq_reserve(p, &s, 49), 0);
    kv_seq_publish(p, &s, t, 49);
    int32_t last = s.pages[3], tail = s.pages[2];
    kv_seq_release(p, &s);
    ck_assert_int_eq(kv_pool_n_cached(p), 3);
    int32_t a = kv_page_alloc(p), b = kv_page_alloc(p);
    ck_assert_int_eq(a, last); /* the unpublished page was simply freed */
    ck_assert_int_eq(b, tail); /* the chain's last page is evicted first */
    ck_assert_int_eq(kv_seq_match_prefix(p, &s, t, 49), 32);
    kv_seq_release(p, &s);
    kv_page_unref(p, a);
    kv_page_unref(p, b);
    check_ok(p);
    kv_pool_free(p);
}
END_TEST

START_TEST(block_hash)
{
    int32_t t[32];
    fill_tokens(t, 32, 0);
    uint64_t h0 = kv_block_hash(0, t, 16);
    ck_assert(h0 == kv_block_hash(0, t, 16));
    ck_assert(h0 != kv_block_hash(1, t, 16));
    ck_assert(h0 != kv_block_hash(0, t + 1, 16));
    ck_assert(h0 != kv_block_hash(0, t, 15));
    /* One changed token anywhere changes the hash; so does a swap. */
    for (int i = 0; i < 16; i++) {
        int32_t u[16];
        memcpy(u, t, sizeof u);
        u[i] ^= 1 << (i % 31);
        ck_assert(kv_block_hash(0, u, 16) != h0);
    }
    int32_t v[16];
    memcpy(v, t, sizeof v);
    v[3] = t[4];
    v[4] = t[3];
    ck_assert(kv_block_hash(0, v, 16) != h0);
    /* Low bits spread: 4096 single-token pages over 256 buckets. */
    int bucket[256] = { 0 };
    for (int32_t i = 0; i < 4096; i++) bucket[kv_block_hash(0, &i, 1) & 255]++;
    for (int i = 0; i < 256; i++) ck_assert_msg(bucket[i] > 0 && bucket[i] < 48, "bucket %d: %d", i, bucket[i]);
}
END_TEST

/* ---- randomized stress ----------------------------------------------- */

static uint64_t rng_state;
static uint32_t rnd(uint32_t n)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng_state >> 33) % n;
}

enum { S_SEQS = 12, S_MAXTOK = 160, S_PAGES = 48, S_B = 16, S_LOOSE = 8 };

typedef struct {
    int live;
    kv_seq s;
    int32_t tok[S_MAXTOK];
    int n_written; /* tokens whose "K" has been written */
} sseq;

/* Page data stands in for K: slot j of a page holds the token id. */
static void write_tokens(kv_pool *p, sseq *q)
{
    for (int i = q->n_written; i < q->s.n_tokens; i++) {
        float *k = kv_page_k(p, q->s.pages[i / S_B], 0);
        k[i % S_B] = (float)q->tok[i];
    }
    q->n_written = q->s.n_tokens;
}

static void gen_prompt(sseq *q, int n)
{
    /* Four families sharing long prefixes, diverging at a random point. */
    int fam = (int)rnd(4), div = (int)rnd(S_MAXTOK);
    for (int i = 0; i < n; i++)
        q->tok[i] = i < div ? fam * 1000 + i : 50000 + (int32_t)rnd(5);
}

static void stress_check(kv_pool *p, sseq *q, int32_t *loose, int n_loose)
{
    check_ok(p);
    int held[S_PAGES] = { 0 };
    long total = 0;
    for (int i = 0; i < S_SEQS; i++) {
        if (!q[i].live) continue;
        ck_assert_int_eq(q[i].s.n_pages, kv_pages_for(kv_pool_layout(p), q[i].s.n_tokens));
        for (int j = 0; j < q[i].s.n_pages; j++) held[q[i].s.pages[j]]++, total++;
    }
    for (int i = 0; i < n_loose; i++) held[loose[i]]++, total++;
    long sum = 0;
    int used = 0;
    for (int pg = 0; pg < S_PAGES; pg++) {
        ck_assert_int_eq(kv_page_refcount(p, pg), held[pg]);
        sum += kv_page_refcount(p, pg);
        used += held[pg] > 0;
    }
    ck_assert_int_eq(sum, total);
    ck_assert_int_eq(kv_pool_n_used(p), used);
    ck_assert_int_eq(kv_pool_n_used(p) + kv_pool_n_available(p), S_PAGES);
}

/* Layers 1 and 3 of 4 windowed (W tokens), with a window group of wp pages. */
static kv_layout wlay(int B, int W, int wp)
{
    kv_layout l = lay(4, 2, 8, B, 0, 1);
    l.window = W;
    l.window_pages = wp;
    l.win_mask[0] = (1u << 1) | (1u << 3);
    return l;
}

START_TEST(window_layout)
{
    char err[256] = "";
    kv_layout l = wlay(16, 40, 8);
    l.window = 0; /* window pages but no window */
    ck_assert_ptr_null(kv_pool_create(&l, 4, 1, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "window"));
    l = wlay(16, 40, 8);
    l.win_mask[0] = 0; /* no window layer */
    ck_assert_ptr_null(kv_pool_create(&l, 4, 1, err, sizeof err));
    l = wlay(16, 40, 8);
    l.win_mask[0] |= 1u << 4; /* past n_layers */
    ck_assert_ptr_null(kv_pool_create(&l, 4, 1, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "layer 4"));
    l = wlay(16, 40, -1);
    ck_assert_ptr_null(kv_pool_create(&l, 4, 1, err, sizeof err));

    /* Without window pages every layer stays in the main page. */
    l = wlay(16, 40, 0);
    size_t lf = kv_layer_page_floats(&l) * sizeof(float);
    ck_assert_uint_eq(kv_page_bytes(&l), 4 * lf);
    ck_assert_uint_eq(kv_window_page_bytes(&l), 0);
    kv_pool *p = mkpool(l, 4, 1);
    ck_assert_ptr_null(kv_pool_window(p));
    ck_assert(kv_page_k(p, 1, 1) == kv_page_base(p, 1) + lf / sizeof(float));
    kv_pool_free(p);

    /* With them, main pages hold layers 0 and 2, window pages 1 and 3. */
    l = wlay(16, 40, 6);
    ck_assert_uint_eq(kv_page_bytes(&l), 2 * lf);
    ck_assert_uint_eq(kv_window_page_bytes(&l), 2 * lf);
    ck_assert(kv_layer_windowed(&l, 1) && kv_layer_windowed(&l, 3));
    ck_assert(!kv_layer_windowed(&l, 0) && !kv_layer_windowed(&l, 2) && !kv_layer_windowed(&l, 4));
    p = mkpool(l, 4, 1);
    ck_assert_ptr_nonnull(kv_pool_window(p));
    ck_assert_int_eq(kv_pool_n_pages(kv_pool_window(p)), 6);
    float *m0 = kv_page_k(p, 2, 0), *m2 = kv_page_k(p, 2, 2);
    float *w1 = kv_page_k(p, 5, 1), *w3 = kv_page_k(p, 5, 3);
    ck_assert(m0 == kv_page_base(p, 2));
    ck_assert(m2 == m0 + lf / sizeof(float));
    ck_assert(w3 == w1 + lf / sizeof(float));
    ck_assert_ptr_null(kv_page_k(p, 6, 1)); /* window page ids stop at 6 */
    ck_assert_ptr_nonnull(kv_page_k(p, 5, 1));
    /* writes to one group never land in the other */
    for (int pg = 0; pg < 4; pg++)
        for (int ly = 0; ly < 4; ly += 2) kv_page_summary(p, pg, ly)[0] = (float)(100 + pg * 4 + ly);
    for (int pg = 0; pg < 6; pg++)
        for (int ly = 1; ly < 4; ly += 2) kv_page_summary(p, pg, ly)[0] = (float)(200 + pg * 4 + ly);
    for (int pg = 0; pg < 4; pg++)
        for (int ly = 0; ly < 4; ly += 2) ck_assert(kv_page_summary(p, pg, ly)[0] == (float)(100 + pg * 4 + ly));
    kv_pool_free(p);
}
END_TEST

/* Held window pages of a sequence: its non-negative wpages entries. */
static int wheld(const kv_seq *s)
{
    int n = 0;
    for (int i = 0; i < s->n_pages; i++) n += s->wpages[i] >= 0;
    return n;
}

START_TEST(window_trim_reserve)
{
    enum { B = 16, W = 40 };
    kv_pool *p = mkpool(wlay(B, W, 8), 64, 1);
    const kv_pool *wg = kv_pool_window(p);
    kv_seq a;
    kv_seq_init(&a);
    /* a first chunk of 100 tokens takes 7 pages of each group */
    kv_seq_trim(p, &a, 0);
    ck_assert_int_eq(kv_seq_reserve(p, &a, 100), 0);
    ck_assert_int_eq(a.n_pages, 7);
    ck_assert_int_eq(wheld(&a), 7);
    ck_assert_int_eq(kv_pool_n_used(wg), 7);
    check_ok(p);
    /* a step from 100 reads tokens 61.. : blocks 3.. stay */
    kv_seq_trim(p, &a, 100);
    ck_assert_int_eq(wheld(&a), 4);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(a.wpages[i], -1);
    ck_assert_int_eq(kv_pool_n_used(wg), 4);
    ck_assert_int_eq(kv_pool_n_used(p), 7);
    kv_seq_trim(p, &a, 100); /* idempotent */
    ck_assert_int_eq(wheld(&a), 4);
    check_ok(p);
    /* decode one token at a time: never more than (W - 1) / B + 2 window pages */
    for (int n = 100; n < 400; n++) {
        kv_seq_trim(p, &a, n);
        ck_assert_int_eq(kv_seq_reserve(p, &a, n + 1), 0);
        ck_assert_int_le(wheld(&a), (W - 1 + B - 1) / B + 2);
        /* the window of token n is held */
        for (int t = n - W + 1 > 0 ? n - W + 1 : 0; t <= n; t++) ck_assert_int_ge(a.wpages[t / B], 0);
    }
    ck_assert_int_eq(a.n_pages, 25);
    check_ok(p);
    /* all or nothing: a step needing more window pages than there are fails and changes nothing */
    int np = a.n_pages, used = kv_pool_n_used(p);
    ck_assert_int_eq(kv_seq_reserve(p, &a, 400 + 6 * B), -1);
    ck_assert_int_eq(a.n_pages, np);
    ck_assert_int_eq(kv_pool_n_used(p), used);
    check_ok(p);
    kv_seq_release(p, &a);
    ck_assert_int_eq(kv_pool_n_used(p), 0);
    ck_assert_int_eq(kv_pool_n_used(wg), 0);
    ck_assert_ptr_null(a.wpages);
    check_ok(p);
    kv_pool_free(p);
}
END_TEST

START_TEST(window_prefix)
{
    enum { B = 16, W = 40 };
    kv_pool *p = mkpool(wlay(B, W, 16), 32, 1);
    const kv_pool *wg = kv_pool_window(p);
    int32_t t[200];
    fill_tokens(t, 200, 500);
    kv_seq a, b;
    kv_seq_init(&a);
    kv_seq_init(&b);
    /* a prefills 161 tokens in one step and publishes its 10 full pages, window pages included */
    ck_assert_int_eq(kv_seq_reserve(p, &a, 161), 0);
    kv_seq_publish(p, &a, t, 161);
    ck_assert_int_eq(a.n_hashed, 10);
    kv_seq_trim(p, &a, 161); /* reads 122.. : blocks 7.. stay; 0..6 go to the window LRU */
    ck_assert_int_eq(wheld(&a), 4);
    ck_assert_int_eq(kv_pool_n_cached(wg), 7);
    check_ok(p);

    /* b asks for 170 tokens: 10 pages match; its next token (160) reads 121.. : blocks 7..9 */
    ck_assert_int_eq(kv_seq_match_prefix(p, &b, t, 170), 160);
    ck_assert_int_eq(b.n_pages, 10);
    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq(b.pages[i], a.pages[i]);
        ck_assert_int_eq(b.wpages[i], i < 7 ? -1 : a.wpages[i]);
    }
    ck_assert_int_eq(kv_page_refcount(wg, a.wpages[8]), 2);
    kv_seq_release(p, &b);

    /* a shorter prompt ends in the window LRU's pages: 100 tokens match 6 pages, window blocks 3..5 */
    ck_assert_int_eq(kv_seq_match_prefix(p, &b, t, 100), 96);
    ck_assert_int_eq(b.n_pages, 6);
    ck_assert_int_eq(wheld(&b), 3);
    ck_assert_int_eq(kv_pool_n_cached(wg), 4);
    kv_seq_release(p, &b);
    check_ok(p);

    /* evict window pages: a second sequence takes every free and cached window page */
    kv_seq c;
    kv_seq_init(&c);
    int avail = kv_pool_n_available(wg);
    ck_assert_int_eq(kv_seq_reserve(p, &c, avail * B), 0);
    ck_assert_int_eq(kv_pool_n_cached(wg), 0);
    /* now only a's held window (blocks 7..9 and 10) is cached-or-used: a match must end at 160 or
     * not at all, since every shorter run's window was evicted */
    ck_assert_int_eq(kv_seq_match_prefix(p, &b, t, 100), 0);
    ck_assert_int_eq(b.n_pages, 0);
    ck_assert_int_eq(kv_seq_match_prefix(p, &b, t, 170), 160);
    kv_seq_release(p, &b);
    kv_seq_release(p, &c);
    kv_seq_release(p, &a);
    check_ok(p);
    kv_pool_free(p);
}
END_TEST

/* kv_window_pages_for is enough: sequences of random steps, trimmed before
 * each, within the budgets, never find the window group short. */
START_TEST(window_pages_bound)
{
    enum { B = 16, S = 5, T = 300 };
    for (int W = 1; W < 200; W += 37) {
        kv_layout l = wlay(B, W, 1);
        l.window_pages = kv_window_pages_for(&l, S, T);
        kv_pool *p = mkpool(l, 4096, 0);
        kv_seq q[S];
        int n[S] = {0};
        for (int i = 0; i < S; i++) kv_seq_init(&q[i]);
        srand(7 + W);
        for (int step = 0; step < 300; step++) {
            int budget = T;
            for (int i = 0; i < S; i++) {
                int take = 1 + rand() % (budget > 1 ? budget / 2 : 1);
                if (take > budget) take = budget;
                if (take == 0) break;
                budget -= take;
                kv_seq_trim(p, &q[i], n[i]);
                ck_assert_msg(kv_seq_reserve(p, &q[i], n[i] + take) == 0, "W %d step %d seq %d", W, step, i);
                n[i] += take;
            }
            if (step % 50 == 49) { /* a sequence ends, another starts */
                kv_seq_release(p, &q[step % S]);
                n[step % S] = 0;
            }
        }
        check_ok(p);
        for (int i = 0; i < S; i++) kv_seq_release(p, &q[i]);
        kv_pool_free(p);
    }
}
END_TEST

START_TEST(stress)
{
    kv_pool *p = mkpool(lay(1, 1, 1, S_B, 0, 0), S_PAGES, 1);
    static sseq q[S_SEQS];
    memset(q, 0, sizeof q);
    int32_t loose[S_LOOSE];
    int n_loose = 0;
    rng_state = 12345;
    long n_match = 0, n_hit_tokens = 0, n_fail = 0;

    for (int op = 0; op < 20000; op++) {
        int i = (int)rnd(S_SEQS);
        sseq *x = &q[i];
        switch (rnd(6)) {
        case 0: /* start: match the prefix, then reserve the prompt */
            if (x->live) break;
            kv_seq_init(&x->s);
            x->live = 1;
            int n = 1 + (int)rnd(S_MAXTOK - 40);
            gen_prompt(x, n);
            int got = kv_seq_match_prefix(p, &x->s, x->tok, n);
            ck_assert(got % S_B == 0 && got <= ((n - 1) / S_B) * S_B);
            ck_assert_int_eq(x->s.n_tokens, got);
            ck_assert_int_eq(x->s.n_cached, got);
            /* Matched pages hold exactly the prompt's tokens. */
            for (int t = 0; t < got; t++)
                ck_assert_float_eq(kv_page_k(p, x->s.pages[t / S_B], 0)[t % S_B], (float)x->tok[t]);
            n_match++;
            n_hit_tokens += got;
            x->n_written = got;
            int avail = kv_pool_n_available(p), np = x->s.n_pages;
            if (kv_seq_reserve(p, &x->s, n) == 0) {
                write_tokens(p, x);
            } else {
                n_fail++;
                ck_assert_int_eq(kv_pool_n_available(p), avail);
                ck_assert_int_eq(x->s.n_pages, np);
                ck_assert_int_eq(x->s.n_tokens, got);
            }
            break;
        case 1: /* decode a few tokens */
            if (!x->live || x->s.n_tokens >= S_MAXTOK) break;
            int add = 1 + (int)rnd(20), from = x->s.n_tokens;
            if (from + add > S_MAXTOK) add = S_MAXTOK - from;
            for (int t = from; t < from + add; t++) x->tok[t] = 60000 + (int32_t)rnd(3);
            if (kv_seq_reserve(p, &x->s, from + add) == 0) write_tokens(p, x);
            else ck_assert_int_eq(x->s.n_tokens, from);
            break;
        case 2: /* publish what is written */
            if (!x->live) break;
            kv_seq_publish(p, &x->s, x->tok, x->n_written);
            ck_assert_int_eq(x->s.n_hashed, x->n_written / S_B);
            break;
        case 3: /* release (sometimes twice) */
            if (!x->live) break;
            kv_seq_release(p, &x->s);
            if (rnd(2)) kv_seq_release(p, &x->s);
            x->live = 0;
            break;
        case 4: /* loose page alloc / share / drop */
            if (n_loose < S_LOOSE && rnd(2)) {
                int avail = kv_pool_n_available(p);
                int32_t pg = kv_page_alloc(p);
                if (avail == 0) ck_assert_int_eq(pg, -1);
                else loose[n_loose++] = pg;
            } else if (n_loose > 0) {
                int j = (int)rnd((uint32_t)n_loose);
                kv_page_unref(p, loose[j]);
                loose[j] = loose[--n_loose];
            }
            break;
        case 5: /* another holder of a sequence page */
            if (x->live && x->s.n_pages > 0 && n_loose < S_LOOSE) {
                int32_t pg = x->s.pages[rnd((uint32_t)x->s.n_pages)];
                kv_page_ref(p, pg);
                loose[n_loose++] = pg;
            }
            break;
        }
        stress_check(p, q, loose, n_loose);
    }
    /* The run must have exercised hits, evictions and exhaustion. */
    kv_stats st;
    kv_pool_stats(p, &st);
    ck_assert_uint_eq(st.prefix_hits, (uint64_t)n_hit_tokens);
    ck_assert(n_hit_tokens > 1000);
    ck_assert(st.evictions > 100);
    ck_assert(n_fail > 10);
    ck_assert(n_match > 1000);

    for (int i = 0; i < S_SEQS; i++)
        if (q[i].live) kv_seq_release(p, &q[i].s);
    for (int i = 0; i < n_loose; i++) kv_page_unref(p, loose[i]);
    ck_assert_int_eq(kv_pool_n_used(p), 0);
    ck_assert_int_eq(kv_pool_n_available(p), S_PAGES);
    check_ok(p);
    kv_pool_free(p);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("kvcache");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, layout_validation);
    tcase_add_test(tc, page_sizes);
    tcase_add_test(tc, alloc_exhaustion_and_reuse);
    tcase_add_test(tc, refcounts);
    tcase_add_test(tc, reserve_all_or_nothing);
    tcase_add_test(tc, storage_layout);
    tcase_add_test(tc, prefix_match_publish);
    tcase_add_test(tc, lru_eviction);
    tcase_add_test(tc, lru_chain_tail_first);
    tcase_add_test(tc, block_hash);
    tcase_add_test(tc, window_layout);
    tcase_add_test(tc, window_trim_reserve);
    tcase_add_test(tc, window_prefix);
    tcase_add_test(tc, window_pages_bound);
    tcase_add_test(tc, stress);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
