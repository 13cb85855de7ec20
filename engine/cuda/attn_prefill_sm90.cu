/* attn_prefill_sm90: causal paged prefill for Hopper (sm_90a), in the
 * manner of FlashAttention-3, and the MSA prefill's selection stage on
 * wgmma (msa_select_sm90_kernel, further down).
 *
 * A CTA owns 128 query rows of one head and runs three warpgroups:
 *  - warpgroup 0 is the producer: one warp issues bulk tensor copies (TMA)
 *    of the Q tile and of each K and V page tile into 128-byte-swizzled
 *    shared memory, completing on mbarriers, two stages deep; the others
 *    exit after giving up their registers (setmaxnreg);
 *  - warpgroups 1 and 2 are consumers of 64 rows each: S = Q K^T is a chain
 *    of wgmma m64n128k16 with both operands in shared memory (K-major), the
 *    online softmax runs on the fp32 accumulators in registers, and
 *    O += P V takes P from registers (bf16, the accumulator layout is the A
 *    fragment layout) and V from shared memory as an MN-major B operand.
 *    The S GEMM of tile j+1 is issued before the P V GEMM of tile j, so the
 *    softmax of tile j+1 overlaps the tensor cores (FA3's intra-warpgroup
 *    pipelining).
 *
 * Key tiles are whole pages (B = 128).  The paged pool is one 3-d tensor
 * per K and V for the copy engine: (dim, row within the page = kvh*B + t,
 * page) with the page stride as the outer stride, so a tile is one copy per
 * 64-column half at coordinates (d0, kvh*128, page) and the page order can
 * be anything.  The page holding the sequence's last token gets its V rows
 * past the end zeroed (copied by the producer warp instead of TMA): P is 0
 * there, but 0 * NaN from stale memory would not be.
 *
 * Split over the keys: a short chunk deep in a long context is too few
 * (tile, head) CTAs to fill the SMs (128 tokens of 16 heads: 16 CTAs, each
 * over every earlier key), so the key tiles are cut into S ranges, a CTA
 * each; the CTAs write their rows normalised, in fp32, with their
 * log2-sum-exp, and prefill_combine (attn_prefill.cu) weighs them.
 *
 * The kernel body exists only in the sm_90a build; cattn_prefill_sm90 asks
 * the runtime which binary it would run and declines otherwise.
 * CATTN_PREFILL_SM90=0 in the environment turns it off (the mma.sync kernel
 * runs), =1 makes a decline an error (CATTN_ESHAPE), for tests;
 * CATTN_SM90_PINGPONG=0 turns off the warpgroup ping-pong.
 */
#include <climits>
#include <cuda.h> /* CUtensorMap and its enums (types only; the encoder comes through the runtime) */
#include <stdlib.h>
#include <string.h>

#include "attn_sm90.h"
#include "attn_util.cuh"
#include "wgmma.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define H_SM90 1
#endif

#define H_ROWS 128                       /* query rows per CTA */
#define H_TILE (128 * 256)               /* a 128 x 128 bf16 tile: two swizzled 128-row x 128-byte halves */
#define H_HALF (128 * 128)               /* bytes of one half */
#define H_STAGES 2
#define H_SMEM (H_TILE * (1 + 2 * H_STAGES) + 1024)
#define H_MAX_LIST 512
#define H_THREADS 384
#define H_PAGE_EXTENT (1u << 24) /* pages the tensor maps admit (coordinates only; no bounds are relied on) */

struct HArgs {
    bf16 *out;
    const char *v;
    long long v_stride;
    const int32_t *table;
    const int32_t *blist;
    int n_q, q_pos0, n_heads, n_kv, ratio, n_qt, blist_w, blist_per_kvh;
    float scale_log2;
    int S;            /* key ranges (1 with blist); above 1 the rows go to part_o, part_lse */
    float *part_o;    /* [S][n_q][n_heads][128] */
    float *part_lse;  /* [S][n_q][n_heads], log2 domain */
};

#ifdef H_SM90
/* ---- mbarriers, bulk tensor copies ---------------------------------------- */

static __device__ __forceinline__ void mb_init(uint32_t bar, int count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
static __device__ __forceinline__ void mb_expect(uint32_t bar, uint32_t bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
static __device__ __forceinline__ void mb_arrive(uint32_t bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
static __device__ __forceinline__ void mb_wait(uint32_t bar, uint32_t parity)
{
    uint32_t done;
    do {
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                     " selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(bar), "r"(parity)
                     : "memory");
    } while (!done);
}
static __device__ __forceinline__ void tma3(uint32_t dst, const CUtensorMap *map, int c0, int c1, int c2,
                                            uint32_t bar)
{
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(dst),
                 "l"((uint64_t)map), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
                 : "memory");
}

/* ---- wgmma ------------------------------------------------------------------
 * K-major descriptors, the fences and wgmma_ss are in wgmma.cuh.  MN-major tile (V:
 * keys are K, 64 dims per 128-byte row): LBO = 16 KB from one 64-column
 * half to the next along N, SBO = 1024 from one 8-key group to the next
 * along K. */
static __device__ __forceinline__ uint64_t desc_mnmaj(uint32_t addr)
{
    return (uint64_t)((addr & 0x3ffff) >> 4) | ((uint64_t)(H_HALF >> 4) << 16) | (64ull << 32) | (1ull << 62);
}
/* D += A (64 x 16, bf16 registers) * B (16 x 128, smem MN-major) */
static __device__ __forceinline__ void wgmma_rs(float (&d)[64], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                uint64_t db)
{
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_R64
                 ", {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n"
                 : WG_D64
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(db));
}

/* Ping-pong between the two consumer warpgroups (FA3): warpgroup w issues
 * its GEMMs only after named barrier 1+w, then hands the turn to the other,
 * so one's softmax runs while the other's GEMMs occupy the tensor cores. */
static __device__ __forceinline__ void turn_wait(int wg)
{
    asm volatile("bar.sync %0, 256;\n" ::"r"(1 + wg) : "memory");
}
static __device__ __forceinline__ void turn_pass(int wg)
{
    asm volatile("bar.arrive %0, 256;\n" ::"r"(2 - wg) : "memory");
}

static __device__ __forceinline__ float ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/* S = Q K^T for this warpgroup's 64 rows and one 128-key tile. */
static __device__ __forceinline__ void gemm_qk(float (&s)[64], uint32_t qa, uint32_t kt)
{
#pragma unroll
    for (int kk = 0; kk < 8; kk++) {
        uint32_t off = (kk >> 2) * H_HALF + (kk & 3) * 32;
        wgmma_ss(s, desc_kmaj(qa + off), desc_kmaj(kt + off), kk > 0);
    }
}
/* O += P V; P as bf16 A fragments (4 registers per 16 keys). */
static __device__ __forceinline__ void gemm_pv(float (&o)[64], const uint32_t (&p)[32], uint32_t vt)
{
#pragma unroll
    for (int kk = 0; kk < 8; kk++)
        wgmma_rs(o, p[4 * kk], p[4 * kk + 1], p[4 * kk + 2], p[4 * kk + 3], desc_mnmaj(vt + kk * 16 * 128));
}

/* Online softmax over one tile of S (fp32 accumulator layout: s[4j + e] is
 * row r0 + 8*(e>>1), key key0 + 8j + 2*(lane&3) + (e&1)).  Leaves P in s,
 * updates m (log2 domain) and the per-thread partial sums l; corr is the
 * factor the previous O must be scaled by. */
static __device__ __forceinline__ void softmax_tile(float (&s)[64], float (&m)[2], float (&l)[2], float (&corr)[2],
                                                    bool need_mask, int key0, int r0, float sl2, int lane)
{
    if (need_mask) {
#pragma unroll
        for (int j = 0; j < 16; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                if (key0 + 8 * j + 2 * (lane & 3) + (e & 1) > r0 + 8 * (e >> 1)) s[4 * j + e] = NEG_INF;
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
        float mx = NEG_INF;
#pragma unroll
        for (int j = 0; j < 16; j++) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        float mnew = fmaxf(m[h], mx * sl2);
        float base = mnew == NEG_INF ? 0.f : mnew;
        corr[h] = ex2(m[h] - base);
        m[h] = mnew;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < 16; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                float pv = ex2(fmaf(s[4 * j + 2 * h + e], sl2, -base));
                s[4 * j + 2 * h + e] = pv;
                sum += pv;
            }
        l[h] = l[h] * corr[h] + sum;
    }
}

static __device__ __forceinline__ void pack_p(uint32_t (&p)[32], const float (&s)[64])
{
#pragma unroll
    for (int kk = 0; kk < 8; kk++) {
        p[4 * kk + 0] = pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
        p[4 * kk + 1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
        p[4 * kk + 2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
        p[4 * kk + 3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
    }
}
#endif /* H_SM90 */

template <bool PP>
__global__ void __launch_bounds__(H_THREADS, 1)
    prefill_sm90_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
                        const __grid_constant__ CUtensorMap tv, const HArgs a)
{
#ifdef H_SM90
    extern __shared__ unsigned char smem_raw[];
    __shared__ __align__(8) uint64_t bars[1 + 4 * H_STAGES];
    __shared__ int s_list[H_MAX_LIST];
    __shared__ int s_n;

    const int bid = blockIdx.x / a.S, split = blockIdx.x % a.S;
    const int qt = a.n_qt - 1 - bid / a.n_heads; /* longest rows first, heads of one KV group together */
    const int h = bid % a.n_heads, kvh = h / a.ratio;
    const int q0 = qt * H_ROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int kv_len = a.q_pos0 + a.n_q;
    const int p_lo = a.q_pos0 + q0, p_hi = a.q_pos0 + min(q0 + H_ROWS, a.n_q) - 1;

    const uint32_t sbase = (smem_u32(smem_raw) + 1023) & ~1023u;
    const uint32_t qs = sbase, ks0 = sbase + H_TILE, vs0 = sbase + (1 + H_STAGES) * H_TILE;
    unsigned char *vs0_p = smem_raw + (vs0 - smem_u32(smem_raw));
    const uint32_t bar0 = smem_u32(bars);
    const uint32_t q_full = bar0;
#define K_FULL(s) (bar0 + 8 * (1 + (s)))
#define V_FULL(s) (bar0 + 8 * (1 + H_STAGES + (s)))
#define K_EMPTY(s) (bar0 + 8 * (1 + 2 * H_STAGES + (s)))
#define V_EMPTY(s) (bar0 + 8 * (1 + 3 * H_STAGES + (s)))

    if (threadIdx.x == 0) {
        mb_init(q_full, 1);
        for (int s = 0; s < H_STAGES; s++) {
            mb_init(K_FULL(s), 1);
            mb_init(V_FULL(s), 1);
            mb_init(K_EMPTY(s), 8); /* lane 0 of each consumer warp */
            mb_init(V_EMPTY(s), 8);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        if (a.blist) {
            const int32_t *row = a.blist + ((long long)qt * (a.blist_per_kvh ? a.n_kv : 1) +
                                            (a.blist_per_kvh ? kvh : 0)) * a.blist_w;
            int n = 0;
            for (int i = 0; i < a.blist_w; i++)
                if (row[i] >= 0 && row[i] * 128 <= p_hi) s_list[n++] = row[i];
            s_n = n;
        }
    }
    __syncthreads();
    /* key tiles it0 .. it0 + n_tiles - 1 of this CTA's range */
    const int all_tiles = a.blist ? s_n : p_hi / 128 + 1, per = (all_tiles + a.S - 1) / a.S;
    const int it0 = min(all_tiles, split * per), n_tiles = min(all_tiles, it0 + per) - it0;
#define H_KB(it) (a.blist ? s_list[it] : it0 + (it))

    if (warp < 4) {
        /* ---- producer ---- */
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (warp != 0) return;
        if (lane == 0) {
            mb_expect(q_full, H_TILE);
            tma3(qs, &tq, 0, h, q0, q_full);
            tma3(qs + H_HALF, &tq, 64, h, q0, q_full);
        }
        for (int it = 0; it < n_tiles; it++) {
            /* Keeps lanes 1-31 from running ahead of lane 0's waits: a parity wait can only
             * tell the current phase from the one before, so a lane two tiles ahead would
             * see a stage as free and overwrite it in the partial-page copy below. */
            __syncwarp();
            const int st = it % H_STAGES;
            const uint32_t ph = (it / H_STAGES) & 1;
            const int kb = H_KB(it);
            const int page = a.table[kb];
            const uint32_t kst = ks0 + st * H_TILE, vst = vs0 + st * H_TILE;
            if (lane == 0) {
                mb_wait(K_EMPTY(st), ph ^ 1);
                mb_expect(K_FULL(st), H_TILE);
                tma3(kst, &tk, 0, kvh * 128, page, K_FULL(st));
                tma3(kst + H_HALF, &tk, 64, kvh * 128, page, K_FULL(st));
            }
            if (kb * 128 + 128 <= kv_len) {
                if (lane == 0) {
                    mb_wait(V_EMPTY(st), ph ^ 1);
                    mb_expect(V_FULL(st), H_TILE);
                    tma3(vst, &tv, 0, kvh * 128, page, V_FULL(st));
                    tma3(vst + H_HALF, &tv, 64, kvh * 128, page, V_FULL(st));
                }
            } else {
                /* the sequence's last, partial page: rows past the end are zeros */
                mb_wait(V_EMPTY(st), ph ^ 1);
                const int valid = kv_len - kb * 128;
                const char *src = a.v + (long long)page * a.v_stride + (long long)kvh * 128 * 256;
                unsigned char *dst = vs0_p + st * H_TILE;
                for (int i = lane; i < 128 * 16; i += 32) {
                    const int r = i >> 4, c = i & 15;
                    uint4 val = make_uint4(0u, 0u, 0u, 0u);
                    if (r < valid) val = *(const uint4 *)(src + r * 256 + c * 16);
                    *(uint4 *)(dst + (c >> 3) * H_HALF + r * 128 + (((c & 7) ^ (r & 7)) << 4)) = val;
                }
                fence_async_smem();
                __syncwarp();
                if (lane == 0) mb_arrive(V_FULL(st));
            }
        }
        return;
    }

    /* ---- consumers ---- */
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    const int wg = (threadIdx.x >> 7) - 1, wi = warp & 3;
    const int r0 = p_lo + 64 * wg + 16 * wi + (lane >> 2); /* position of this thread's first row */
    const int wg_lo = p_lo + 64 * wg;
    const uint32_t qa = qs + wg * 64 * 128;
    float o[64], s[64], m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f}, corr[2];
    uint32_t p[32];
#pragma unroll
    for (int i = 0; i < 64; i++) o[i] = 0.f;

    mb_wait(q_full, 0); /* even with no tiles: the copy must land before the CTA exits */
    if (n_tiles > 0) {
        if (PP && wg == 1) turn_pass(wg); /* warpgroup 0 goes first */
        {
            const int key0 = H_KB(0) * 128;
            mb_wait(K_FULL(0), 0);
            if (PP) turn_wait(wg);
            wg_fence();
            gemm_qk(s, qa, ks0);
            wg_commit();
            if (PP) turn_pass(wg);
            wg_wait<0>();
            reg_fence(s);
            if (lane == 0) mb_arrive(K_EMPTY(0));
            softmax_tile(s, m, l, corr, key0 + 127 > wg_lo, key0, r0, a.scale_log2, lane);
            pack_p(p, s);
        }
        for (int it = 1; it < n_tiles; it++) {
            const int st = it % H_STAGES, pst = (it - 1) % H_STAGES;
            const uint32_t ph = (it / H_STAGES) & 1, pph = ((it - 1) / H_STAGES) & 1;
            const int key0 = H_KB(it) * 128;
            mb_wait(K_FULL(st), ph);
            mb_wait(V_FULL(pst), pph); /* V(it-1) was copied before K(it): no wait in practice */
            if (PP) turn_wait(wg);
            wg_fence();
            gemm_qk(s, qa, ks0 + st * H_TILE);
            wg_commit();
            gemm_pv(o, p, vs0 + pst * H_TILE);
            wg_commit();
            if (PP) turn_pass(wg);
            wg_wait<1>();
            reg_fence(s);
            if (lane == 0) mb_arrive(K_EMPTY(st));
            softmax_tile(s, m, l, corr, key0 + 127 > wg_lo, key0, r0, a.scale_log2, lane);
            wg_wait<0>();
            reg_fence(o);
            if (lane == 0) mb_arrive(V_EMPTY(pst));
#pragma unroll
            for (int j = 0; j < 16; j++) {
                o[4 * j] *= corr[0];
                o[4 * j + 1] *= corr[0];
                o[4 * j + 2] *= corr[1];
                o[4 * j + 3] *= corr[1];
            }
            pack_p(p, s);
        }
        {
            const int pst = (n_tiles - 1) % H_STAGES;
            const uint32_t pph = ((n_tiles - 1) / H_STAGES) & 1;
            mb_wait(V_FULL(pst), pph);
            if (PP) turn_wait(wg);
            wg_fence();
            gemm_pv(o, p, vs0 + pst * H_TILE);
            wg_commit();
            if (PP && wg == 0) turn_pass(wg); /* balances warpgroup 1's first pass */
            wg_wait<0>();
            reg_fence(o);
        }
    }
#undef H_KB

    /* ---- epilogue: normalise, store bf16 (a split: fp32 and the row's lse) ---- */
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        float v = l[hh];
        v += __shfl_xor_sync(0xffffffffu, v, 1);
        v += __shfl_xor_sync(0xffffffffu, v, 2);
        const float inv = v > 0.f ? 1.f / v : 0.f;
        const int tok = q0 + 64 * wg + 16 * wi + (lane >> 2) + 8 * hh;
        if (tok >= a.n_q) continue;
        if (a.S > 1) {
            const long long r = ((long long)split * a.n_q + tok) * a.n_heads + h;
            float2 *po = (float2 *)(a.part_o + r * 128 + 2 * (lane & 3));
#pragma unroll
            for (int j = 0; j < 16; j++) po[4 * j] = make_float2(o[4 * j + 2 * hh] * inv, o[4 * j + 2 * hh + 1] * inv);
            if ((lane & 3) == 0) a.part_lse[r] = v > 0.f ? m[hh] + __log2f(v) : NEG_INF;
            continue;
        }
        uint32_t *op = (uint32_t *)(a.out + ((long long)tok * a.n_heads + h) * 128 + 2 * (lane & 3));
#pragma unroll
        for (int j = 0; j < 16; j++) op[4 * j] = pack_bf16(o[4 * j + 2 * hh] * inv, o[4 * j + 2 * hh + 1] * inv);
    }
#undef K_FULL
#undef V_FULL
#undef K_EMPTY
#undef V_EMPTY
#endif /* H_SM90 */
}

/* ---- MSA selection (stage 1 of the MSA prefill) on wgmma --------------------
 * Same work as msa_select_kernel in attn_prefill.cu: a CTA owns 128 tokens x
 * 4 groups = 512 index-query rows, scores them against every earlier
 * block's 128 index keys, max-pools per block and keeps a running top-k per
 * row in shared memory.  Here warpgroup 0's first warp streams the index-key
 * pages through TMA (3 stages, 128B swizzle) and warpgroups 1 and 2 own 256
 * rows each: 4 m64 tiles whose A fragments stay in registers (128
 * registers), so each block is 4 x 8 wgmma m64n128k16 (A from registers, B
 * the K-major key tile) per warpgroup, then a row max over the 64-register
 * accumulator.  The two warpgroups' GEMMs and reductions interleave.
 *
 * fp8 (e4m3) keys: the fp8 indexer scores e4m3 queries too (attn_util.cuh:
 * each row scaled by a power of two, so the order of its scores is kept),
 * rounded in registers, and TMA brings each page's 16 KB (a 128-byte row
 * per key, 128B swizzle) straight to wgmma m64n128k32 e4m3: twice bf16's
 * tensor rate and half its bytes (a 128K M3 layer on an H200 selects in
 * 11.6 ms against 16.7 with the keys widened to bf16 for a bf16 wgmma).
 *
 * Split over the keys: a chunk of a few hundred tokens deep in a long
 * context is only a few CTAs of 128 tokens, each streaming every earlier
 * block (a 512-token chunk at 1M: 4 of 132 SMs).  So the blocks are cut
 * into S ranges, one CTA per (tile, range), each keeping its own lists,
 * and select_merge (attn_prefill.cu) merges a row's S lists. */
#define X_ROWS 512
#define X_STAGES 3          /* key tiles the copies fill */
#define X_FTILE (128 * 128) /* an fp8 tile (a bf16 one is H_TILE) */
#define X_LIST_MAX 32
#define X_SMEM (X_STAGES * H_TILE + X_LIST_MAX * X_ROWS * 8 + 1024)

struct XArgs {
    const bf16 *iq;
    const int32_t *table;
    int n_q, q_pos0, B, top_k, local;
    int32_t *sel;
    int S;         /* key ranges; above 1 the lists go to ps/pi, [n_q][4][S][top_k] */
    float *ps;
    int32_t *pi;
};

#ifdef H_SM90
/* D (64 x 128) (+)= A (64 x 16, bf16 registers) * B (16 x 128, smem K-major) */
static __device__ __forceinline__ void wgmma_rs_k(float (&d)[64], const uint32_t (&a)[4], uint64_t db, int accum)
{
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %69, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_R64
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
                 : WG_D64
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accum));
}

/* D (64 x 128) (+)= A (64 x 32, e4m3 registers) * B (32 x 128, e4m3 smem K-major) */
static __device__ __forceinline__ void wgmma_rs_k8(float (&d)[64], const uint32_t (&a)[4], uint64_t db, int accum)
{
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %69, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 " WG_R64
                 ", {%64, %65, %66, %67}, %68, p, 1, 1;\n}\n"
                 : WG_D64
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accum));
}

#endif

/* F8Q: fp8 keys and queries (else bf16) */
template <bool F8Q>
__global__ void __launch_bounds__(H_THREADS, 1)
    msa_select_sm90_kernel(const __grid_constant__ CUtensorMap tx, const XArgs a)
{
#ifdef H_SM90
    constexpr int TILE = F8Q ? X_FTILE : H_TILE;
    extern __shared__ unsigned char smem_raw[];
    __shared__ __align__(8) uint64_t bars[2 * X_STAGES];
    const int tile = gridDim.x / a.S - 1 - blockIdx.x / a.S; /* most blocks first */
    const int split = blockIdx.x % a.S;
    const int t0 = tile * 128;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int last = min(t0 + 128, a.n_q) - 1;
    const int nb_all = max(0, (a.q_pos0 + last) / a.B - a.local + 1);
    /* this CTA's blocks kb0 .. kb0 + nb - 1 */
    const int per = (nb_all + a.S - 1) / a.S;
    const int kb0 = min(nb_all, split * per), nb = min(nb_all, kb0 + per) - kb0;
    const int32_t *table = a.table + kb0;
    const uint32_t sbase = (smem_u32(smem_raw) + 1023) & ~1023u;
    unsigned char *sbase_p = smem_raw + (sbase - smem_u32(smem_raw));
    unsigned char *lists = sbase_p + X_STAGES * H_TILE;
    const uint32_t bar0 = smem_u32(bars);
#define X_FULL(s) (bar0 + 8 * (s))
#define X_EMPTY(s) (bar0 + 8 * (X_STAGES + (s)))
    if (threadIdx.x == 0) {
        for (int s = 0; s < X_STAGES; s++) {
            mb_init(X_FULL(s), 1);
            mb_init(X_EMPTY(s), 8);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (warp < 4) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (warp != 0 || lane != 0) return; /* one thread issues every copy */
        for (int kb = 0; kb < nb; kb++) {
            const int st = kb % X_STAGES;
            const uint32_t ph = (kb / X_STAGES) & 1;
            const int page = table[kb];
            const uint32_t dst = sbase + st * TILE;
            mb_wait(X_EMPTY(st), ph ^ 1);
            mb_expect(X_FULL(st), TILE);
            tma3(dst, &tx, 0, 0, page, X_FULL(st));
            if (!F8Q) tma3(dst + H_HALF, &tx, 64, 0, page, X_FULL(st));
        }
        return;
    }

    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
    const int wg = (threadIdx.x >> 7) - 1, wi = warp & 3;
    /* m-tile mt of warpgroup wg: group 2*wg + (mt >> 1), tokens t0 + (mt & 1) * 64 + 0..63;
     * this warp's 16 rows of it start at + 16 * wi */
    /* bf16: 8 k16 steps of 4 registers; e4m3 (F8Q): 4 k32 steps in qa[mt][0..3] */
    uint32_t qa[4][8][4];
#pragma unroll
    for (int mt = 0; mt < 4; mt++) {
        const int g = 2 * wg + (mt >> 1);
        const int rlo = t0 + (mt & 1) * 64 + 16 * wi + (lane >> 2), rhi = rlo + 8;
        const bf16 *plo = a.iq + ((long long)rlo * 4 + g) * 128;
        const bf16 *phi = a.iq + ((long long)rhi * 4 + g) * 128;
        if (F8Q) {
            /* k32 step kk: registers 0/1 hold dims 32kk + 4q .. +3 of rows lo/hi,
             * 2/3 the same 16 dims on; the quad holds a row's 128 */
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                const bf16 *pr = hh ? phi : plo;
                const bool in = (hh ? rhi : rlo) < a.n_q;
                float f[4][8], amax = 0.f;
#pragma unroll
                for (int kk = 0; kk < 4; kk++)
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        f[kk][j] = in ? __bfloat162float(pr[32 * kk + 4 * (lane & 3) + (j & 3) + 16 * (j >> 2)]) : 0.f;
                        amax = fmaxf(amax, fabsf(f[kk][j]));
                    }
                const float sc = q8_quad_scale(amax);
#pragma unroll
                for (int kk = 0; kk < 4; kk++) {
                    qa[mt][kk][hh] = e4m3x4(f[kk][0] * sc, f[kk][1] * sc, f[kk][2] * sc, f[kk][3] * sc);
                    qa[mt][kk][2 + hh] = e4m3x4(f[kk][4] * sc, f[kk][5] * sc, f[kk][6] * sc, f[kk][7] * sc);
                }
            }
        } else {
#pragma unroll
            for (int kk = 0; kk < 8; kk++) {
                const int c = 16 * kk + 2 * (lane & 3);
                qa[mt][kk][0] = rlo < a.n_q ? *(const uint32_t *)(plo + c) : 0u;
                qa[mt][kk][1] = rhi < a.n_q ? *(const uint32_t *)(phi + c) : 0u;
                qa[mt][kk][2] = rlo < a.n_q ? *(const uint32_t *)(plo + c + 8) : 0u;
                qa[mt][kk][3] = rhi < a.n_q ? *(const uint32_t *)(phi + c + 8) : 0u;
            }
        }
    }
    /* each quad member keeps the lists of m-tile (lane & 3)'s two rows */
    const int my_mt = lane & 3;
    const int my_g = 2 * wg + (my_mt >> 1);
    const int my_t = (my_mt & 1) * 64 + 16 * wi + (lane >> 2); /* token offset of the first row */
    const int col0 = my_g * 128 + my_t;
    float *ls = (float *)lists;
    int *li = (int *)(ls + a.top_k * X_ROWS);
    int my_cand[2], cnt[2] = {0, 0};
    float thr[2] = {NEG_INF, NEG_INF};
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        const int tok = t0 + my_t + 8 * hh;
        my_cand[hh] = tok < a.n_q ? max(0, (a.q_pos0 + tok) / a.B - a.local + 1) : 0;
    }

    float acc[64];
    for (int kb = 0; kb < nb; kb++) {
        const int st = kb % X_STAGES;
        const uint32_t ph = (kb / X_STAGES) & 1;
        const uint32_t kt = sbase + st * TILE;
        mb_wait(X_FULL(st), ph);
        float v[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int mt = 0; mt < 4; mt++) {
            wg_fence();
            if (F8Q) {
#pragma unroll
                for (int kk = 0; kk < 4; kk++) wgmma_rs_k8(acc, qa[mt][kk], desc_kmaj(kt + kk * 32), kk > 0);
            } else {
#pragma unroll
                for (int kk = 0; kk < 8; kk++)
                    wgmma_rs_k(acc, qa[mt][kk], desc_kmaj(kt + (kk >> 2) * H_HALF + (kk & 3) * 32), kk > 0);
            }
            wg_commit();
            wg_wait<0>();
            reg_fence(acc);
            float m0 = NEG_INF, m1 = NEG_INF;
#pragma unroll
            for (int j = 0; j < 16; j++) {
                m0 = fmaxf(m0, fmaxf(acc[4 * j], acc[4 * j + 1]));
                m1 = fmaxf(m1, fmaxf(acc[4 * j + 2], acc[4 * j + 3]));
            }
            m0 = fmaxf(m0, __shfl_xor_sync(0xffffffffu, m0, 1));
            m0 = fmaxf(m0, __shfl_xor_sync(0xffffffffu, m0, 2));
            m1 = fmaxf(m1, __shfl_xor_sync(0xffffffffu, m1, 1));
            m1 = fmaxf(m1, __shfl_xor_sync(0xffffffffu, m1, 2));
            if (my_mt == mt) v[0] = m0, v[1] = m1;
        }
        if (lane == 0) mb_arrive(X_EMPTY(st));
        if (a.top_k > 0) {
#pragma unroll
            for (int hh = 0; hh < 2; hh++)
                if (kb0 + kb < my_cand[hh] && v[hh] > thr[hh])
                    top_list_insert<X_ROWS>(ls, li, a.top_k, col0 + 8 * hh, cnt[hh], thr[hh], v[hh], kb0 + kb);
        }
    }
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        const int tok = t0 + my_t + 8 * hh, col = col0 + 8 * hh;
        if (tok < a.n_q)
            sel_list_out(a.sel, a.ps, a.pi, a.S, split, tok, my_g, ls + col, li + col, X_ROWS, cnt[hh], a.top_k,
                         a.local, a.q_pos0, a.B);
    }
#undef X_FULL
#undef X_EMPTY
#endif /* H_SM90 */
}

/* ---- host side ------------------------------------------------------------ */

typedef CUresult (*encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                              const cuuint64_t *, const cuuint32_t *, const cuuint32_t *, CUtensorMapInterleave,
                              CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

/* 3-d map of 128-element rows, 128-byte swizzle: bf16 with box (64, b1, b2),
 * or with fp8 one-byte elements and box (128, b1, b2) (128 bytes either way). */
static int make_map(encode_fn enc, CUtensorMap *m, const void *base, cuuint64_t d1, cuuint64_t d2, cuuint64_t s1,
                    cuuint64_t s2, cuuint32_t b1, cuuint32_t b2, bool fp8 = false)
{
    cuuint64_t dims[3] = {128, d1, d2};
    cuuint64_t strides[2] = {s1, s2};
    cuuint32_t box[3] = {fp8 ? 128u : 64u, b1, b2};
    cuuint32_t estr[3] = {1, 1, 1};
    CUresult r = enc(m, fp8 ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, (void *)base,
                     dims, strides, box, estr,
                     CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                     CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    return r == CUDA_SUCCESS ? 0 : 1;
}

#define H_MAX_DEV 16
static int g_ready[H_MAX_DEV]; /* 0 unknown, 1 usable, -1 not */
static encode_fn g_encode;

static int sm90_probe(void)
{
    int dev, major, minor;
    if (cudaGetDevice(&dev) != cudaSuccess) return -1;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
        return -1;
    if (major != 9 || minor != 0) return -1;
    cudaFuncAttributes fa;
    if (cudaFuncGetAttributes(&fa, prefill_sm90_kernel<false>) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    if (fa.binaryVersion != 90) return -1; /* no sm_90a machine code in this build */
    if (cudaFuncSetAttribute(prefill_sm90_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, H_SMEM) !=
            cudaSuccess ||
        cudaFuncSetAttribute(prefill_sm90_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, H_SMEM) !=
            cudaSuccess ||
        cudaFuncSetAttribute(msa_select_sm90_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, X_SMEM) !=
            cudaSuccess ||
        cudaFuncSetAttribute(msa_select_sm90_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, X_SMEM) !=
            cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    if (!g_encode) {
        void *fn = NULL;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q) !=
                cudaSuccess ||
            q != cudaDriverEntryPointSuccess || !fn) {
            cudaGetLastError();
            return -1;
        }
        g_encode = (encode_fn)fn;
    }
    return 1;
}

int cattn_prefill_sm90(const cattn_pool *p, const int32_t *table, int n_q, int q_pos0, int n_heads,
                       const void *q, void *out, float scale, const int32_t *blist, int blist_w,
                       int blist_kvh_stride, void *ws, size_t ws_bytes, void *stream)
{
    const char *env = getenv("CATTN_PREFILL_SM90"); /* read per call: benchmarks switch it for A/B runs */
    if (env && !strcmp(env, "0")) return 1;
    const int decline = env && !strcmp(env, "1") ? CATTN_ESHAPE : 1; /* "1": required (tests) */
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= H_MAX_DEV) return 1;
    if (!g_ready[dev]) g_ready[dev] = sm90_probe();
    if (g_ready[dev] < 0) return decline;
    if (p->block_size != 128 || p->head_dim != 128 || (blist && blist_w > H_MAX_LIST)) return decline;
    if (((uintptr_t)p->k | (uintptr_t)p->v | (uintptr_t)q) & 15) return decline;
    if ((p->k_stride | p->v_stride) & 15 || p->k_stride <= 0 || p->v_stride <= 0 ||
        p->k_stride >= (1ll << 40) || p->v_stride >= (1ll << 40))
        return decline;
    const int n_kv = p->n_kv_heads;
    CUtensorMap tq, tk, tv;
    if (make_map(g_encode, &tq, q, (cuuint64_t)n_heads, (cuuint64_t)n_q, 256, (cuuint64_t)n_heads * 256, 1,
                 H_ROWS) ||
        make_map(g_encode, &tk, p->k, (cuuint64_t)n_kv * 128, H_PAGE_EXTENT, 256, (cuuint64_t)p->k_stride, 128,
                 1) ||
        make_map(g_encode, &tv, p->v, (cuuint64_t)n_kv * 128, H_PAGE_EXTENT, 256, (cuuint64_t)p->v_stride, 128,
                 1))
        return decline;
    HArgs a;
    a.out = (bf16 *)out;
    a.v = (const char *)p->v;
    a.v_stride = p->v_stride;
    a.table = table;
    a.blist = blist;
    a.n_q = n_q;
    a.q_pos0 = q_pos0;
    a.n_heads = n_heads;
    a.n_kv = n_kv;
    a.ratio = n_heads / n_kv;
    a.n_qt = (n_q + H_ROWS - 1) / H_ROWS;
    a.blist_w = blist_w;
    a.blist_per_kvh = blist_kvh_stride != 0;
    a.scale_log2 = scale * LOG2E_F;
    const size_t rows = (size_t)n_q * n_heads;
    a.S = blist || !ws ? 1
                       : prefill_splits(a.n_qt * n_heads, 1, (q_pos0 + n_q - 1) / 128 + 1, 8, rows * (128 * 4 + 4),
                                        ws_bytes, "CATTN_PREFILL_SPLIT");
    a.part_o = (float *)ws;
    a.part_lse = (float *)((char *)ws + (size_t)a.S * rows * 128 * 4);
    const unsigned grid = (unsigned)(a.n_qt * n_heads * a.S);
    const char *pp = getenv("CATTN_SM90_PINGPONG"); /* on unless "0" */
    if (!pp || strcmp(pp, "0"))
        prefill_sm90_kernel<true><<<grid, H_THREADS, H_SMEM, (cudaStream_t)stream>>>(tq, tk, tv, a);
    else
        prefill_sm90_kernel<false><<<grid, H_THREADS, H_SMEM, (cudaStream_t)stream>>>(tq, tk, tv, a);
    CUDA_TRY(cudaGetLastError());
    if (a.S > 1) return prefill_combine(a.part_o, a.part_lse, a.S, n_q, n_heads, a.out, stream);
    return 0;
}

int cattn_msa_select_prefill_sm90(const cattn_pool *p, const int32_t *table, int n_q, int q_pos0, const void *iq,
                                  int top_k, int local, int32_t *sel, void *ws, size_t ws_bytes, void *stream)
{
    const char *env = getenv("CATTN_SELECT_SM90");
    if (env && !strcmp(env, "0")) return 1;
    const int decline = env && !strcmp(env, "1") ? CATTN_ESHAPE : 1;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= H_MAX_DEV) return 1;
    if (!g_ready[dev]) g_ready[dev] = sm90_probe();
    if (g_ready[dev] < 0) return decline;
    if (p->block_size != 128 || p->idx_dim != 128 || top_k > X_LIST_MAX) return decline;
    if (((uintptr_t)p->idx & 15) || (p->idx_stride & 15) || p->idx_stride <= 0 || p->idx_stride >= (1ll << 40))
        return decline;
    const bool fp8 = p->idx_fp8 != 0;
    CUtensorMap tx;
    if (make_map(g_encode, &tx, p->idx, 128, H_PAGE_EXTENT, fp8 ? 128 : 256, (cuuint64_t)p->idx_stride, 128, 1, fp8))
        return decline;
    XArgs a;
    a.iq = (const bf16 *)iq;
    a.table = table;
    a.n_q = n_q;
    a.q_pos0 = q_pos0;
    a.B = p->block_size;
    a.top_k = top_k;
    a.local = local;
    a.sel = sel;
    const int nb = (q_pos0 + n_q - 1) / p->block_size - local + 1;
    a.S = ws && top_k > 0 ? prefill_splits((n_q + 127) / 128, 1, nb, SELECT_SPLIT_MIN, (size_t)n_q * 4 * top_k * 8,
                                           ws_bytes, "CATTN_SELECT_SPLIT")
                          : 1;
    a.ps = (float *)ws;
    a.pi = (int32_t *)((char *)ws + (size_t)n_q * 4 * a.S * top_k * 4);
    const size_t smem = X_STAGES * H_TILE + (size_t)(top_k > 0 ? top_k : 1) * X_ROWS * 8 + 1024;
    const unsigned grid = (unsigned)((n_q + 127) / 128 * a.S);
    (fp8 ? msa_select_sm90_kernel<true> : msa_select_sm90_kernel<false>)<<<grid, H_THREADS, smem,
                                                                          (cudaStream_t)stream>>>(tx, a);
    CUDA_TRY(cudaGetLastError());
    if (a.S > 1) return select_merge(a.ps, a.pi, a.S, n_q, q_pos0, p->block_size, top_k, local, sel, stream);
    return 0;
}

/* ---- MSA stage 2 (sparse attention) on wgmma ---------------------------------
 * Same work as sp_attn_kernel in attn_prefill.cu: a CTA owns block blk of
 * group g (a share of its items with a split), loads the block's K and V
 * once and runs every (item, head) row that chose it against its 128 keys.
 * Here two warpgroups take 64-row tiles (64 / R items of R heads)
 * alternately, the next tile's Q rows copied while this one computes:
 * S = Q K^T is 8 wgmma m64n128k16 from shared memory, one softmax over the
 * block (a token in the diagonal block masks its later keys), and O = P V
 * takes P from registers, as in prefill_sm90_kernel; each row leaves
 * normalised in bf16 with its log2-sum-exp for sp_combine. */
#define SQ_THREADS 256
#define SQ_SMEM (4 * H_TILE + 1024) /* K, V and two Q tiles (a warpgroup's 64 rows each) */

#ifdef H_SM90
static __device__ __forceinline__ void wg_sync(int wg)
{
    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
}
#endif

template <int R>
__global__ void __launch_bounds__(SQ_THREADS, 1) sp_attn_sm90_kernel(const SpArgs a)
{
#ifdef H_SM90
    constexpr int IPT = 64 / R; /* items a tile */
    extern __shared__ unsigned char smem_raw[];
    const int blk = blockIdx.x, g = blockIdx.y;
    const int n_all = a.cnt[g * a.nblk + blk], per = (n_all + gridDim.z - 1) / gridDim.z;
    const int first = blockIdx.z * per, n = min(per, n_all - first);
    if (n <= 0) return;
    const int *items = a.list + a.off[g * a.nblk + blk] + first;
    const int tid = threadIdx.x, wg = tid >> 7, t = tid & 127, wi = t >> 5, lane = tid & 31;
    const uint32_t sbase = (smem_u32(smem_raw) + 1023) & ~1023u;
    const uint32_t ks = sbase, vs = sbase + H_TILE, qs0 = sbase + 2 * H_TILE;
    const int n_t = (n + IPT - 1) / IPT;

    /* tile ti's rows into this warpgroup's half of Q buffer b: row rr is
     * head rr % R of item rr / R (zeros past the list) */
    auto load_q = [&](int ti, int b) {
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int c = t + 128 * i, rr = c >> 4, ch = c & 15, r = 64 * wg + rr;
            const int ii = ti * IPT + rr / R;
            const int it = ii < n ? items[ii] : -1;
            const __nv_bfloat16 *src =
                a.q + ((long long)(a.c0 + (it < 0 ? 0 : it >> 6)) * a.n_heads + g * R + rr % R) * 128 + ch * 8;
            cp16(qs0 + b * H_TILE + (ch >> 3) * H_HALF + r * 128 + (((ch & 7) ^ (r & 7)) << 4), src, it >= 0);
        }
    };
    {
        const int valid = a.kv_len - blk * 128; /* rows past the sequence: zeros, not stale data */
        if (a.kv_fp8) {
            if (wg < n_t) load_q(wg, 0); /* in flight while the fp8 rows are widened */
            unsigned char *kp = smem_raw + (ks - smem_u32(smem_raw)), *vp = smem_raw + (vs - smem_u32(smem_raw));
            sp_load_kv8(a, blk, g, valid, kp, vp,
                        [](int r, int ch) { return (ch >> 3) * H_HALF + r * 128 + (((ch & 7) ^ (r & 7)) << 4); },
                        tid, SQ_THREADS);
        } else {
            const long long page = a.table[blk];
            const char *kp = a.k + page * a.k_stride + (long long)g * 128 * 256;
            const char *vp = a.v + page * a.v_stride + (long long)g * 128 * 256;
            for (int c = tid; c < 128 * 16; c += SQ_THREADS) {
                const int r = c >> 4, ch = c & 15;
                const uint32_t o = (ch >> 3) * H_HALF + r * 128 + (((ch & 7) ^ (r & 7)) << 4);
                cp16(ks + o, kp + c * 16, r < valid);
                cp16(vs + o, vp + c * 16, r < valid);
            }
            if (wg < n_t) load_q(wg, 0);
        }
        cp_commit();
        cp_wait<0>();
        fence_async_smem(); /* cp.async wrote, wgmma reads */
        __syncthreads();
    }

    const int key0 = blk * 128;
    float s[64], o[64];
    uint32_t p[32];
    for (int ti = wg, k = 0; ti < n_t; ti += 2, k++) {
        const int b = k & 1;
        const bool more = ti + 2 < n_t;
        if (more) {
            load_q(ti + 2, b ^ 1);
            cp_commit();
        }
        wg_fence();
        gemm_qk(s, qs0 + b * H_TILE + wg * 64 * 128, ks);
        wg_commit();

        /* this thread's rows 16 wi + lane / 4 (+ 8): their items and, in the diagonal block, positions */
        int item[2], rowpos[2];
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const int rr = 16 * wi + (lane >> 2) + 8 * hh, ii = ti * IPT + rr / R;
            item[hh] = ii < n ? items[ii] : -1;
            const int pos = a.q_pos0 + a.c0 + (item[hh] < 0 ? 0 : item[hh] >> 6);
            rowpos[hh] = item[hh] >= 0 && pos / 128 == blk ? pos : INT_MAX;
        }
        wg_wait<0>();
        reg_fence(s);

        float m[2], l[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float mx = NEG_INF;
#pragma unroll
            for (int j = 0; j < 16; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    if (key0 + 8 * j + 2 * (lane & 3) + e > rowpos[h]) s[4 * j + 2 * h + e] = NEG_INF;
                    mx = fmaxf(mx, s[4 * j + 2 * h + e]);
                }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            m[h] = mx * a.scale_log2; /* finite: every row keeps key0 */
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < 16; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const float pv = ex2(fmaf(s[4 * j + 2 * h + e], a.scale_log2, -m[h]));
                    s[4 * j + 2 * h + e] = pv;
                    sum += pv;
                }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            l[h] = sum;
        }
        pack_p(p, s);
#pragma unroll
        for (int i = 0; i < 64; i++) o[i] = 0.f;
        wg_fence();
        gemm_pv(o, p, vs);
        wg_commit();
        wg_wait<0>();
        reg_fence(o);

        /* normalised O through this tile's Q rows (free since S), then
         * each row's 256 bytes out in 16-byte copies */
        unsigned char *qb = smem_raw + (qs0 + b * H_TILE - smem_u32(smem_raw));
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            const int r = 64 * wg + 16 * wi + (lane >> 2) + 8 * hh;
            const float inv = 1.f / l[hh];
#pragma unroll
            for (int j = 0; j < 16; j++)
                *(uint32_t *)(qb + (j >> 3) * H_HALF + r * 128 + (((j & 7) ^ (r & 7)) << 4) + 4 * (lane & 3)) =
                    pack_bf16(o[4 * j + 2 * hh] * inv, o[4 * j + 2 * hh + 1] * inv);
            if (item[hh] >= 0 && (lane & 3) == 0) {
                const int rr = r - 64 * wg;
                a.plse[sp_prow(a, item[hh], g, R, rr % R)] = m[hh] + __log2f(l[hh]);
            }
        }
        wg_sync(wg);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int c = t + 128 * i, rr = c >> 4, ch = c & 15, r = 64 * wg + rr;
            const int ii = ti * IPT + rr / R;
            const int it = ii < n ? items[ii] : -1;
            if (it < 0) continue;
            *(uint4 *)(a.part + sp_prow(a, it, g, R, rr % R) * 128 + ch * 8) =
                *(const uint4 *)(qb + (ch >> 3) * H_HALF + r * 128 + (((ch & 7) ^ (r & 7)) << 4));
        }
        if (more) {
            cp_wait<0>();
            fence_async_smem();
        }
        wg_sync(wg); /* the next tile's rows landed for all; this tile's buffer is free */
    }
#endif /* H_SM90 */
}

int sp_attn_sm90(const SpArgs &a, int n_tok, void *stream)
{
    const char *env = getenv("CATTN_SP_SM90");
    if (env && !strcmp(env, "0")) return 1;
    if (a.B != 128 || (a.ratio != 4 && a.ratio != 8 && a.ratio != 16)) return 1;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= H_MAX_DEV) return 1;
    if (!g_ready[dev]) g_ready[dev] = sm90_probe();
    if (g_ready[dev] < 0) return 1;
    static int attr_done = 0;
    if (!attr_done) {
        void (*const ks[])(const SpArgs) = {sp_attn_sm90_kernel<4>, sp_attn_sm90_kernel<8>, sp_attn_sm90_kernel<16>};
        for (auto k : ks) CUDA_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, SQ_SMEM));
        attr_done = 1;
    }
    /* split the blocks' item lists while the grid is under a wave (one
     * CTA an SM), at least 2 tiles a CTA; CATTN_SP_SPLIT=N forces N */
    const long long tiles = (long long)n_tok * a.W / a.nblk / (64 / a.ratio);
    const dim3 grid(a.nblk, 4, prefill_splits(a.nblk * 4, 1, (int)(tiles < INT_MAX ? tiles : INT_MAX), 2, 1, SIZE_MAX,
                                              "CATTN_SP_SPLIT"));
    cudaStream_t st = (cudaStream_t)stream;
    if (a.ratio == 4) sp_attn_sm90_kernel<4><<<grid, SQ_THREADS, SQ_SMEM, st>>>(a);
    else if (a.ratio == 8) sp_attn_sm90_kernel<8><<<grid, SQ_THREADS, SQ_SMEM, st>>>(a);
    else sp_attn_sm90_kernel<16><<<grid, SQ_THREADS, SQ_SMEM, st>>>(a);
    CUDA_TRY(cudaGetLastError());
    return 0;
}
