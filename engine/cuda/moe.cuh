/* moe: a mixture of experts' FFN on the device (private to engine/cuda),
 * with the semantics of engine/cpu/forward.c's moe_ffn and no host
 * synchronization anywhere, so that a decode step with experts is still
 * one captured graph:
 *   1. moe_route_kernel: each token's n_used experts of highest router
 *      logit (ties to the lower index) and the softmax of those logits;
 *   2. moe_plan_kernel (one CTA): the (token, choice) pairs bucketed by
 *      expert, and each bucket cut into tiles of the product kernel's rows
 *      (at decode of 1-2 tokens each pair is its own tile, with no
 *      bucketing);
 *   3. the grouped products, one CTA a (tile, column block), reading only
 *      the chosen experts' weights: gate and up with the activation into
 *      h, then down into y.  Grids are sized for the most tiles a batch
 *      can have (moe_max_tiles) and the spare CTAs return at once;
 *   4. moe_combine_kernel: each token's weighted sum of its experts' rows
 *      of y, added to the residual stream (or written for a post-norm).
 * Every kernel waits on its predecessor at its start (pdl.cuh) and lets
 * its successor launch early.
 * A row's result does not depend on where in its bucket or tile it lands
 * (each output element is one dot product in a fixed order), so the
 * bucketing's atomics leave the output deterministic.
 *
 * Three kernels do the products: for bf16 with 16-byte aligned rows (both
 * widths multiples of 8) past MOE_SIMPLE_T tokens, moe_wg_kernel on
 * Hopper's wgmma (moe_sm90.cuh) or moe_mma_kernel on mma.sync elsewhere;
 * and moe_simple_kernel, a warp an output column on the CUDA cores, for
 * decode, f32 and other shapes. */
#ifndef SPARSED_MOE_CUH
#define SPARSED_MOE_CUH

#include "attn_util.cuh"
#include "cuda_kernels.cuh"

#define MOE_BM 64   /* rows (token-expert pairs) a tile of moe_mma_kernel and moe_simple_kernel */
#define MOE_BN 64   /* output columns a CTA of moe_mma_kernel */
#define MOE_BK 64   /* inner dimension a pipeline stage */
#define MOE_SIMPLE_T 2 /* batches of up to this many tokens take moe_simple_kernel (H200: 1 token 368 us a step against 393 on
                        * the tensor cores, 8 tokens 982 against 856) */

/* The most tiles of bm rows n pairs over X experts can make: each
 * non-empty bucket adds at most one partial tile. */
static inline int moe_max_tiles(int n, int X, int bm) { return n / bm + (n < X ? n : X); }

/* Each token's K best experts (ties to the lower index) and the softmax
 * of their logits, in one pass: a CTA a token, a thread a logit, whose
 * rank is the number of logits above it (or equal at a lower index).  A
 * warp's K rounds of arg-max took 9.2 us a layer at decode (H200, ncu).
 * NaN ranks as -inf, so the ranks stay a permutation and every choice is
 * an expert.  The weights sum in rank order, as the CPU's do.
 * With direct (decode, the CUDA-core products) the pairs need no buckets:
 * each is a tile of its own (pair i: rows, slot i; tile i = (its expert,
 * i, i + 1)), written here in place of moe_plan_kernel's.  Block: X
 * rounded up to a warp. */
__global__ void __launch_bounds__(1024) moe_route_kernel(const float *__restrict__ logit, int X, int K,
                                                         int32_t *sel, float *wt, int direct, int32_t *rows,
                                                         int32_t *slot, int32_t *tiles, int32_t *n_tiles)
{
    __shared__ float lv[1024], cv[1024];
    __shared__ int cx[1024];
    pdl_trigger();
    pdl_wait();
    const int t = blockIdx.x, x = threadIdx.x;
    float v = NEG_INF;
    if (x < X) {
        v = logit[(size_t)t * X + x];
        v = v == v ? v : NEG_INF;
    }
    lv[x] = v;
    __syncthreads();
    if (x < X) {
        int rank = 0;
        for (int y = 0; y < X; y++) {
            const float u = lv[y];
            rank += u > v || (u == v && y < x);
        }
        if (rank < K) {
            cv[rank] = v;
            cx[rank] = x;
        }
    }
    __syncthreads();
    for (int j = x; j < K; j += blockDim.x) {
        const float mx = cv[0];
        float sum = 0.0f;
        for (int q = 0; q < K; q++)
            sum += expf(cv[q] - mx);
        const int i = t * K + j;
        sel[i] = cx[j];
        wt[i] = expf(cv[j] - mx) / sum;
        if (direct) {
            rows[i] = slot[i] = i;
            tiles[3 * i] = cx[j];
            tiles[3 * i + 1] = i;
            tiles[3 * i + 2] = i + 1;
        }
    }
    if (direct && t == 0 && x == 0)
        *n_tiles = gridDim.x * K;
}

/* Buckets the n = T * K pairs by expert: rows[p] is the pair at sorted
 * position p, slot[i] pair i's position; tiles[3 t ..] = (expert, first
 * position, end) of tile t (bm rows at most), n_tiles their count.  One
 * CTA of 1024 (cta_scan_excl's). */
__global__ void __launch_bounds__(1024) moe_plan_kernel(const int32_t *__restrict__ sel, int n, int X, int bm,
                                                        int32_t *rows, int32_t *slot, int32_t *tiles,
                                                        int32_t *n_tiles)
{
    __shared__ int cnt[1024], off[1024], fill[1024], tcnt[1024], toff[1024];
    pdl_trigger();
    pdl_wait();
    for (int e = threadIdx.x; e < X; e += 1024)
        cnt[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += 1024)
        atomicAdd(&cnt[sel[i]], 1);
    __syncthreads();
    cta_scan_excl(cnt, off, fill, X);
    for (int e = threadIdx.x; e < X; e += 1024)
        tcnt[e] = (cnt[e] + bm - 1) / bm;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += 1024) {
        const int p = atomicAdd(&fill[sel[i]], 1);
        rows[p] = i;
        slot[i] = p;
    }
    __syncthreads();
    cta_scan_excl(tcnt, toff, fill, X);
    __syncthreads();
    for (int e = threadIdx.x; e < X; e += 1024)
        for (int k = 0; k < tcnt[e]; k++) {
            int32_t *tt = tiles + 3 * (toff[e] + k);
            tt[0] = e;
            tt[1] = off[e] + k * bm;
            tt[2] = min(off[e] + cnt[e], off[e] + (k + 1) * bm);
        }
    if (threadIdx.x == 0)
        *n_tiles = toff[X - 1] + tcnt[X - 1];
}

/* A grouped product: out[p][N] for the sorted positions p of each tile =
 * A row of p . W_e^T (W_e: expert e's N rows of Kd at row e N of w).  With
 * GLU, A's row is the token's (a: [T][Kd], pair / K) and the output
 * act(. w) * (. w2) in S; else A's row is p's own (a: [pairs][Kd]) and the
 * output fp32. */
template <typename S> struct MoeGemm {
    const S *a, *w, *w2;
    int Kd, N, K;
    const int32_t *rows, *tiles, *n_tiles;
    S *h;
    float *y;
};

/* Byte offset of 16-byte chunk c of row r in a tile of MOE_BK bf16 rows
 * (128 bytes), swizzled so that ldmatrix's eight rows hit eight banks. */
static __device__ __forceinline__ uint32_t moe_swz(int r, int c) { return (uint32_t)(r * 128 + ((c ^ (r & 7)) << 4)); }

/* acc[m][2 np], acc[m][2 np + 1] += the warp's A fragments fa[m] times
 * the 16 weight rows at b (two 8-column output tiles). */
static __device__ __forceinline__ void moe_mma16(float (&acc)[2][4][4], const uint32_t (&fa)[2][4], uint32_t b, int np)
{
    uint32_t w[4];
    ldsm4(w, b);
#pragma unroll
    for (int m = 0; m < 2; m++) {
        mma16816(acc[m][2 * np], fa[m], w[0], w[1]);
        mma16816(acc[m][2 * np + 1], fa[m], w[2], w[3]);
    }
}

/* 64 x 64 output tiles on mma.sync, four warps of 32 x 32, a two-stage
 * cp.async pipeline over the inner dimension (Kd % 8 == 0: a chunk is
 * wholly in or out). */
template <bool GLU, int GELU>
__global__ void __launch_bounds__(128) moe_mma_kernel(MoeGemm<bf16> g)
{
    constexpr int NB = GLU ? 3 : 2;             /* tiles a stage: A, W (, W2) */
    constexpr int TB = MOE_BM * MOE_BK * 2;     /* bytes a tile */
    __shared__ __align__(128) unsigned char sm[2 * NB * TB];
    pdl_trigger();
    pdl_wait();
    const int tile = blockIdx.x;
    if (tile >= *g.n_tiles)
        return;
    const int e = g.tiles[3 * tile], r0 = g.tiles[3 * tile + 1], r1 = g.tiles[3 * tile + 2];
    const int n0 = blockIdx.y * MOE_BN, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = warp >> 1, wn = warp & 1;
    const uint32_t s0 = smem_u32(sm);

    /* this thread's four chunks of each tile: row c / 8, chunk c % 8 */
    const bf16 *ap[4], *wp[4], *up[4];
    bool aok[4], wok[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int c = threadIdx.x + 128 * i, r = c >> 3, p = r0 + r, n = n0 + r;
        aok[i] = p < r1;
        wok[i] = n < g.N;
        ap[i] = g.a + (aok[i] ? (size_t)(GLU ? g.rows[p] / g.K : p) * g.Kd : 0) + (c & 7) * 8;
        wp[i] = g.w + (wok[i] ? ((size_t)e * g.N + n) * g.Kd : 0) + (c & 7) * 8;
        up[i] = GLU ? g.w2 + (wok[i] ? ((size_t)e * g.N + n) * g.Kd : 0) + (c & 7) * 8 : NULL;
    }
    auto load = [&](int kt, int stage) {
        const uint32_t base = s0 + stage * NB * TB;
        const int k0 = kt * MOE_BK;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int c = threadIdx.x + 128 * i, r = c >> 3, ch = c & 7;
            const bool kin = k0 + ch * 8 < g.Kd;
            cp16(base + moe_swz(r, ch), ap[i] + (aok[i] && kin ? k0 : 0), aok[i] && kin);
            cp16(base + TB + moe_swz(r, ch), wp[i] + (wok[i] && kin ? k0 : 0), wok[i] && kin);
            if (GLU)
                cp16(base + 2 * TB + moe_swz(r, ch), up[i] + (wok[i] && kin ? k0 : 0), wok[i] && kin);
        }
    };

    float acc[2][4][4] = {}, acc2[2][4][4] = {};

    const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_cb = lane >> 4;
    const int b_row = (lane >> 4) * 8 + (lane & 7), b_cb = (lane >> 3) & 1;
    const int nk = (g.Kd + MOE_BK - 1) / MOE_BK;
    load(0, 0);
    cp_commit();
    for (int kt = 0; kt < nk; kt++) {
        if (kt + 1 < nk)
            load(kt + 1, (kt + 1) & 1);
        cp_commit();
        cp_wait<1>();
        __syncthreads();
        const uint32_t as = s0 + (kt & 1) * NB * TB, ws = as + TB, us = as + 2 * TB;
#pragma unroll
        for (int kk = 0; kk < MOE_BK / 16; kk++) {
            uint32_t fa[2][4];
#pragma unroll
            for (int m = 0; m < 2; m++)
                ldsm4(fa[m], as + moe_swz(32 * wm + 16 * m + a_row, 2 * kk + a_cb));
#pragma unroll
            for (int np = 0; np < 2; np++) {
                const uint32_t bo = moe_swz(32 * wn + 16 * np + b_row, 2 * kk + b_cb);
                moe_mma16(acc, fa, ws + bo, np);
                if (GLU) moe_mma16(acc2, fa, us + bo, np);
            }
        }
        __syncthreads();
    }

    /* fragment element q: row lane / 4 (+ 8 for q >= 2), column 2 (lane % 4) + q % 2 */
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const int p = r0 + 32 * wm + 16 * m + (lane >> 2) + (q >> 1) * 8;
                const int col = n0 + 32 * wn + 8 * n + 2 * (lane & 3) + (q & 1);
                if (p >= r1 || col >= g.N)
                    continue;
                if (GLU)
                    g.h[(size_t)p * g.N + col] = __float2bfloat16_rn(gate_mul<GELU>(acc[m][n][q], acc2[m][n][q]));
                else
                    g.y[(size_t)p * g.N + col] = acc[m][n][q];
            }
}

/* The same product on the CUDA cores, any widths and either storage type:
 * grid (column blocks of 8, tiles), a warp an output column, R rows of the
 * tile at a time (1 at decode, where a tile is a pair).  Rows of 16
 * bytes' multiple are read in 16-byte chunks, MOE_U of each weight row in
 * flight a lane before any is used (as gemv_kernel does): at decode this
 * kernel streams the chosen experts' weights, where the tensor-core one
 * would idle on a 64-row tile. */
#define MOE_U 4
template <typename S, bool GLU, int GELU, int R>
__global__ void __launch_bounds__(256) moe_simple_kernel(MoeGemm<S> g)
{
    constexpr int PER = 16 / sizeof(S);
    pdl_trigger();
    pdl_wait();
    const int tile = blockIdx.y, lane = threadIdx.x & 31, n = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (tile >= *g.n_tiles || n >= g.N)
        return;
    const int e = g.tiles[3 * tile], r0 = g.tiles[3 * tile + 1], r1 = g.tiles[3 * tile + 2];
    const S *wr = g.w + ((size_t)e * g.N + n) * g.Kd, *ur = GLU ? g.w2 + ((size_t)e * g.N + n) * g.Kd : NULL;
    for (int p0 = r0; p0 < r1; p0 += R) {
        const S *ar[R];
        float acc[R], acc2[R];
#pragma unroll
        for (int i = 0; i < R; i++) {
            const int p = p0 + i < r1 ? p0 + i : p0;
            ar[i] = g.a + (size_t)(GLU ? g.rows[p] / g.K : p) * g.Kd;
            acc[i] = acc2[i] = 0.0f;
        }
        if (g.Kd % PER == 0) {
            const int n16 = g.Kd / PER;
            for (int c0 = lane; c0 < n16; c0 += 32 * MOE_U) {
                uint4 wv[MOE_U], uv[MOE_U];
#pragma unroll
                for (int u = 0; u < MOE_U; u++)
                    if (c0 + 32 * u < n16) {
                        wv[u] = __ldcs((const uint4 *)wr + c0 + 32 * u);
                        if (GLU) uv[u] = __ldcs((const uint4 *)ur + c0 + 32 * u);
                    }
#pragma unroll
                for (int u = 0; u < MOE_U; u++) {
                    const int c = c0 + 32 * u;
                    if (c >= n16)
                        break;
                    float wf[8], uf[8];
                    unpack8(wv[u], wf, (const S *)0);
                    if (GLU) unpack8(uv[u], uf, (const S *)0);
#pragma unroll
                    for (int i = 0; i < R; i++) {
                        float xf[8];
                        unpack8(__ldg((const uint4 *)ar[i] + c), xf, (const S *)0);
#pragma unroll
                        for (int q = 0; q < PER; q++) {
                            acc[i] = fmaf(wf[q], xf[q], acc[i]);
                            if (GLU) acc2[i] = fmaf(uf[q], xf[q], acc2[i]);
                        }
                    }
                }
            }
        } else {
            for (int k = lane; k < g.Kd; k += 32) {
                const float wv = tof(wr[k]), uv = GLU ? tof(ur[k]) : 0.0f;
#pragma unroll
                for (int i = 0; i < R; i++) {
                    const float xv = tof(ar[i][k]);
                    acc[i] = fmaf(wv, xv, acc[i]);
                    if (GLU) acc2[i] = fmaf(uv, xv, acc2[i]);
                }
            }
        }
#pragma unroll
        for (int i = 0; i < R; i++) {
            const float v = warp_sum(acc[i]), v2 = GLU ? warp_sum(acc2[i]) : 0.0f;
            if (lane == 0 && p0 + i < r1) {
                if (GLU)
                    g.h[(size_t)(p0 + i) * g.N + n] = fromf<S>(gate_mul<GELU>(v, v2));
                else
                    g.y[(size_t)(p0 + i) * g.N + n] = v;
            }
        }
    }
}

/* out[t] (+)= sum over token t's choices j of wt[t K + j] y[slot[t K + j]]:
 * grid (tokens, column blocks of 256), the choices in order. */
__global__ void __launch_bounds__(256) moe_combine_kernel(const float *__restrict__ y, const int32_t *__restrict__ slot,
                                                          const float *__restrict__ wt, int K, int E, float *out,
                                                          int add)
{
    pdl_trigger();
    pdl_wait();
    const int t = blockIdx.x, c = blockIdx.y * 256 + threadIdx.x;
    if (c >= E)
        return;
    const int32_t *s = slot + (size_t)t * K;
    const float *w = wt + (size_t)t * K;
    float acc = 0.0f;
#pragma unroll 8
    for (int j = 0; j < K; j++)
        acc = fmaf(w[j], y[(size_t)s[j] * E + c], acc);
    float *o = out + (size_t)t * E + c;
    *o = add ? *o + acc : acc;
}

#endif
