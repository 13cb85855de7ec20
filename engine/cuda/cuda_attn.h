/* cuda_attn: attention kernels over the paged KV pool (private to engine/).
 *
 * Every pointer below is a device pointer; bf16 tensors are passed as void*
 * so that C callers need no CUDA headers.  Calls are asynchronous on
 * `stream` (a cudaStream_t, NULL for the default stream) and return 0, a
 * negative CATTN_E* code for bad arguments, or a positive cudaError_t.
 *
 * Page layout (kvcache.h), per page and layer, bf16 on the device:
 *   K, V     [n_kv_heads][B][head_dim]
 *   idx      [B][idx_dim]                 (bf16, or fp8 e4m3 when idx_fp8:
 *                                          the index queries are then scored
 *                                          in e4m3 too, each row scaled by a
 *                                          power of two; attn_util.cuh)
 *   summary  [n_kv_heads][3][head_dim]    (min, max, sum over the page)
 * or, with kv_fp8, K and V in e4m3:
 *   K        [n_kv_heads][B][head_dim]
 *   V        [n_kv_heads][B/2][head_dim][2]  (keys 2j and 2j+1 interleaved
 *                                          by dim, so that one 16-bit word
 *                                          holds the pair of keys that an
 *                                          mma fragment takes)
 *   kv_scale [n_kv_heads][2][B]           (float: a row's K, V = e4m3 x its
 *                                          scale; the decode paths and the
 *                                          MSA prefill read them, dense
 *                                          prefill a bf16 copy made by
 *                                          cattn_kv_widen)
 * Each array has its own base pointer and byte stride from one page to the
 * next, so one interleaved allocation and separate ones both fit.  Keys and
 * index keys already carry RoPE.
 *
 * Tensors of activations are token-major: q and out [tokens][n_heads][hd],
 * index queries iq [tokens][n_kv_heads][idx_dim] (one index head per KV
 * group, as in MiniMax-M3).
 *
 * Selection lists (MSA and training-free) hold `sink + top_k + local` block
 * ids per (token or sequence, KV group): the sink blocks first, then the
 * top_k best other blocks (unordered), then the local blocks, the newest
 * one last; -1 marks an empty slot.  top_k counts blocks besides the forced
 * ones (M3: top_k 15 + local 1 = 16 blocks, 2048 tokens).
 *
 * Supported shapes: head_dim 128; B a multiple of 64 (MSA and block lists:
 * B = 128); idx_dim 128 with n_kv_heads index heads (MSA: n_kv_heads 4);
 * n_heads / n_kv_heads <= 16.  cattn_flash (last section) takes head dims
 * 64, 128 and 256 at any even B, with windows and soft caps.
 */
#ifndef SPARSED_CUDA_ATTN_H
#define SPARSED_CUDA_ATTN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { CATTN_EINVAL = -1, CATTN_ESHAPE = -2, CATTN_EWORKSPACE = -3 };

typedef struct cattn_pool {
    const void *k, *v, *idx, *summ, *kv_scale;
    long long k_stride, v_stride, idx_stride, summ_stride, kv_scale_stride; /* bytes per page */
    int n_kv_heads, head_dim, block_size, idx_dim, idx_fp8, kv_fp8;
} cattn_pool;

/* A batch of sequences for decode: sequence b has lens[b] tokens (the new
 * one included, its K/V/index key already in the pool) and pages
 * tables[b * table_stride + i] for tokens [i*B, (i+1)*B). */
typedef struct cattn_batch {
    const int32_t *tables;
    const int32_t *lens;
    int table_stride;
    int batch;
    int max_len;          /* host-side bound on lens[], sizes the split */
} cattn_batch;

const char *cattn_strerror(int rc);

/* ---- decode: one new token per sequence ---------------------------------- */

/* Dense paged decode (split-KV flash decoding). */
size_t cattn_decode_ws(const cattn_pool *p, int batch, int n_heads, int max_len);
int cattn_decode(const cattn_pool *p, const cattn_batch *b, int n_heads, const void *q, void *out,
                 float scale, void *ws, size_t ws_bytes, void *stream);

/* MSA decode: scores every index key of each sequence with the group's
 * index query, takes block maxima, selects per group on the device and runs
 * the paged decode over the selected pages (on sm_90 the selection, decode
 * and merge are one kernel of thread-block clusters).  sel (optional)
 * receives the lists, [batch][n_kv_heads][top_k + local].  Its first
 * kernel overlaps the stream's previous one (programmatic launch): the
 * tables, lens and index keys of all but each sequence's newest block
 * may be read before that kernel ends; q and iq only after it. */
size_t cattn_msa_decode_ws(const cattn_pool *p, int batch, int n_heads, int max_len, int top_k, int local);
int cattn_msa_decode(const cattn_pool *p, const cattn_batch *b, int n_heads, const void *q, const void *iq,
                     void *out, float scale, int top_k, int local, int32_t *sel, void *ws, size_t ws_bytes,
                     void *stream);

/* Training-free decode: Quest upper bound sum_d max(q_d min_d, q_d max_d)
 * from the page summaries, summed over the group's query heads; sink and
 * local blocks forced.  sel: [batch][n_kv_heads][sink + top_k + local]. */
size_t cattn_quest_decode_ws(const cattn_pool *p, int batch, int n_heads, int max_len, int top_k, int local,
                             int sink);
int cattn_quest_decode(const cattn_pool *p, const cattn_batch *b, int n_heads, const void *q, void *out,
                       float scale, int top_k, int local, int sink, int32_t *sel, void *ws, size_t ws_bytes,
                       void *stream);

/* ---- prefill: n_q new tokens of one sequence at positions q_pos0.. ------- */

/* fp8 K/V pages for the dense prefill kernel, which reads bf16: the first
 * n_tokens rows of the sequence's pages table[0 .. ceil(n_tokens / B))
 * widened to bf16 (e4m3 x scale), page table[i] to page i of k_out and
 * v_out (out_stride bytes a page, [n_kv_heads][B][head_dim] each), so the
 * copy takes only the sequence's size; rows past n_tokens in the last
 * page are zeros.  A pool view of k_out and v_out with the identity table
 * then serves cattn_prefill.  (The MSA prefill reads fp8 pages as they
 * are: each CTA widens its block once on the way into shared memory.) */
int cattn_kv_widen(const cattn_pool *p, const int32_t *table, int n_tokens, void *k_out, void *v_out,
                   long long out_stride, void *stream);

/* Causal paged prefill (tensor cores, flash-attention 2 style).  With blist
 * (block-sparse prefill, B = 128, q_pos0 a multiple of 128) query tile t
 * (tokens [128t, 128t+128) of the new ones) and KV head h attend only to
 * the logical blocks blist[(t * n_kv_heads + h) * kvh_stride...]: blist_w
 * entries, -1 = none; kvh_stride 0 shares one list across KV heads, else
 * it must be blist_w.  The diagonal block is masked causally.  ws (NULL,
 * 0: none) lets a short chunk deep in a long context split its keys over
 * more CTAs (without blist); cattn_prefill_ws() bytes on the
 * current device give the full split. */
size_t cattn_prefill_ws(void);
int cattn_prefill(const cattn_pool *p, const int32_t *table, int n_q, int q_pos0, int n_heads, const void *q,
                  void *out, float scale, const int32_t *blist, int blist_w, int blist_kvh_stride, void *ws,
                  size_t ws_bytes, void *stream);

/* MSA prefill.  Stage 1 (fused, no score matrix in memory): per new token
 * and group, tensor-core scores against every earlier block's index keys,
 * block max-pooling and a running top-k, written to sel
 * [n_q][n_kv_heads][top_k + local].  Stage 2: block-sparse attention with
 * exact per-token selection, KV-block outer (each selected block is read
 * once per chunk of tokens), partial results merged per token.  The
 * workspace bounds the chunk; cattn_msa_prefill_ws(.., chunk) gives the
 * bytes for a chunk of `chunk` tokens (at least 128).  Stage 1 alone takes
 * an optional workspace (NULL, 0: none) for its key-split partial lists. */
size_t cattn_msa_prefill_ws(const cattn_pool *p, int n_q, int q_pos0, int n_heads, int top_k, int local,
                            int chunk);
int cattn_msa_select_prefill(const cattn_pool *p, const int32_t *table, int n_q, int q_pos0, const void *iq,
                             int top_k, int local, int32_t *sel, void *ws, size_t ws_bytes, void *stream);
int cattn_msa_attend_prefill(const cattn_pool *p, const int32_t *table, int n_q, int q_pos0, int n_heads,
                             const void *q, void *out, float scale, int n_sel, const int32_t *sel, void *ws,
                             size_t ws_bytes, void *stream);
int cattn_msa_prefill(const cattn_pool *p, const int32_t *table, int n_q, int q_pos0, int n_heads, const void *q,
                      const void *iq, void *out, float scale, int top_k, int local, int32_t *sel, void *ws,
                      size_t ws_bytes, void *stream);

/* ---- any shape: head dims 64, 128, 256; windows, soft caps --------------- */

/* Attention of a whole ragged batch (prefill and decode tokens) in one
 * call, over bf16 or fp8 K/V pages.  Work comes as tiles: tiles[2 i] is the
 * first batch token of tile i, tiles[2 i + 1] its count, at most
 * cattn_flash_tile_tokens() consecutive new tokens of one sequence.  Token
 * t sits at pos[t] and reads pages tables[tab[t] + pos / B].  A token sees
 * positions pos - window + 1 .. pos (window 0: all); a score s becomes
 * softcap * tanh(s * scale / softcap) when softcap > 0. */
typedef struct cattn_flash_args {
    const void *q;
    void *out;                  /* [T][n_heads][head_dim], as q */
    const char *k, *v;          /* the layer's K and V of page 0 */
    const char *kvs;            /* their row scales when the pages are fp8 (kv_scale); NULL: bf16 */
    long long page_bytes;       /* from one page to the next */
    const int32_t *pos, *tab, *tables, *tiles;
    int n_tiles, T, n_heads, n_kv, head_dim, B;
    float scale, softcap;
    int window;
    /* block-sparse: per (token, KV group) a list of cnt blocks at
     * sel[(t * n_kv + g) * sel_w] (cnt -1: every block); a listed token is
     * a tile of its own, and a tile of several tokens must hold only
     * tokens with cnt -1.  NULL: dense */
    const int32_t *sel, *cnt;
    int sel_w;
} cattn_flash_args;

/* Tokens a tile may hold (0: the head ratio does not fit a tile). */
int cattn_flash_tile_tokens(int n_heads, int n_kv_heads);
/* Key ranges for n_tiles tiles of sequences of at most max_len tokens, and
 * the workspace they take for T tokens. */
int cattn_flash_splits(int n_tiles, int n_kv_heads, int max_len);
size_t cattn_flash_ws(int splits, int T, int n_heads, int head_dim);
int cattn_flash(const cattn_flash_args *a, int splits, void *ws, size_t ws_bytes, void *stream);

/* Listed tokens of prefill chunks, KV-block outer: every selected block's
 * K/V is read once for all the tokens (and query heads) that chose it, and
 * each (token, head)'s per-block results are merged after.  The same
 * arguments as cattn_flash (sel set; tiles unread) plus the tokens: tok[i]
 * is a batch token with lists (cnt >= 0) and seq[i] its sequence's index
 * in seqs, 3 ints each: the first of its entries, its table offset (as
 * tab[]) and its last position.  Entry e of sequence s is its block
 * e - seqs[3 s] (n_ent entries in all; ent_seq[e] = s).  Needs B a multiple
 * of 32 and B * head_dim <= 32768.  The tokens go in passes that fit the
 * workspace; cattn_flash_bo_ws() gives it for a pass of `pass` tokens. */
typedef struct cattn_flash_bo_args {
    const int32_t *tok, *seq, *seqs, *ent_seq;
    int n_tok, n_ent;
} cattn_flash_bo_args;

/* Block scores of the training-free indexers over the pages' summaries
 * (per block and KV head: min, max and sum of the keys, head_dim values
 * each, at summ + page * page_bytes), on the tensor cores.  Tiles as
 * cattn_flash's, at most 64 rows each (a row is a token with group_sum, a
 * token and head otherwise).  For every token t of the tiles and group g,
 * scores[(t * n_kv + g) * nbmax + b] gets the score of each candidate
 * block b: from min(sink, blocks seen) up to the local ones; mean: the
 * group's summed queries (or each head, the group taking the max) dotted
 * with the block's sum over B; else the min/max bound.  A score row holds
 * every block, so nbmax also bounds any sequence's blocks. */
typedef struct cattn_score_args {
    const void *q;              /* bf16 [T][n_heads][head_dim] */
    const char *summ;           /* bf16 summaries of page 0 */
    long long page_bytes;
    const int32_t *pos, *tab, *tables, *tiles;
    int n_tiles, n_heads, n_kv, head_dim, B, sink, local, mean, group_sum, nbmax;
    float *scores;
} cattn_score_args;

int cattn_score(const cattn_score_args *a, void *stream);

int cattn_flash_bo_fits(int B, int head_dim);
size_t cattn_flash_bo_ws(int pass, int n_ent, int n_heads, int n_kv, int head_dim, int sel_w);
int cattn_flash_bo(const cattn_flash_args *a, const cattn_flash_bo_args *bo, void *ws, size_t ws_bytes,
                   void *stream);

#ifdef __cplusplus
}
#endif

#endif
