/* attn_decode: paged decode (dense, MSA and training-free selection).
 *
 * One kernel serves all three: split-KV flash decoding over a per-(sequence,
 * KV head) page table.  Dense decode passes the sequences' own tables
 * (shared by the KV heads); sparse decode first rewrites, per sequence and
 * KV group, a table of just the selected pages (keys carry RoPE, so their
 * order does not matter; the newest, partial page goes last).
 *
 * A CTA takes one (split, KV head, sequence): its four warps each run the
 * group's query heads as the 16 rows of an m16n8k16 tile against their own
 * 32-key tiles (cp.async double buffer), then merge in shared memory and
 * write one partial (normalised O, log2-sum-exp) per head; a second kernel
 * merges the splits.
 */
#include <stdlib.h>
#include <string.h>

#include "attn_util.cuh"
#include "cuda_attn.h"

#ifdef CATTN_FUSED_PROF /* debug build: phase timestamps (globaltimer), printed by the last CTA */
__device__ unsigned long long g_tp[12];
__device__ unsigned g_tdone;
static __device__ __forceinline__ void tstamp(int i, bool max_all)
{
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    if (threadIdx.x == 0 && (max_all || blockIdx.x == 0)) atomicMax(&g_tp[i], t);
}
#define TSTAMP(i, all) tstamp(i, all)
#else
#define TSTAMP(i, all) ((void)0)
#endif

#define DEC_WARPS 4
#define DEC_STAGES 2
#define DEC_TILE 32
#define DEC_STAGE_BYTES (2 * DEC_TILE * 256)
#define DEC_SMEM (DEC_WARPS * DEC_STAGES * DEC_STAGE_BYTES)

struct DecArgs {
    const bf16 *q;
    const char *k, *v;
    long long k_stride, v_stride;
    const int32_t *tables;
    long long ts_seq;
    int ts_kvh;
    const int32_t *lens;
    int ls_seq, ls_kvh;
    float *part_o, *part_lse;
    int *merge_cnt; /* per (sequence, KV head), zero on entry: the last CTA merges */
    int fixed_per;  /* 0: tiles split evenly; else split s = tiles [s * fixed_per, ...) (fused: one block) */
    bf16 *out;
    int B, n_kv, n_heads, ratio, n_splits;
    float scale_log2;
};

static __device__ __forceinline__ void dec_load(const DecArgs &a, const int32_t *tab, int kvh, int L, int tile,
                                                uint32_t dst, int lane, int page_known = -1)
{
    int key0 = tile * DEC_TILE;
    long long page = page_known >= 0 ? page_known : __ldcg(tab + key0 / a.B);
    int off = key0 % a.B;
    const char *kp = a.k + page * a.k_stride + (long long)(kvh * a.B + off) * 256;
    const char *vp = a.v + page * a.v_stride + (long long)(kvh * a.B + off) * 256;
#pragma unroll
    for (int i = 0; i < DEC_TILE * 16 / 32; i++) {
        int c = lane + 32 * i;
        int r = c >> 4, ch = c & 15;
        bool ok = key0 + r < L;
        cp16(dst + swz(r, ch), kp + r * 256 + ch * 16, ok);
        cp16(dst + DEC_TILE * 256 + swz(r, ch), vp + r * 256 + ch * 16, ok);
    }
}

/* One (split s, KV head, sequence) of the decode, STAGES tiles per warp in
 * flight (the fused MSA kernel runs one tile per warp: STAGES 1, 64 KB).
 * lens and tables are read through L2 (__ldcg): in the fused kernel other
 * CTAs wrote them earlier in the same launch. */
template <int STAGES>
static __device__ __forceinline__ void dec_body(const DecArgs &a, unsigned char *smem, const int s, const int kvh,
                                                const int b)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int32_t *tab = a.tables + b * a.ts_seq + (long long)kvh * a.ts_kvh;
    /* with fixed_per (one block per split) the page is known before L: both loads in one round */
    const int page_known = a.fixed_per ? __ldcg(tab + s * a.fixed_per * DEC_TILE / a.B) : -1;
    const int L = __ldcg(a.lens + (long long)b * a.ls_seq + kvh * a.ls_kvh);
    const int ntiles = (L + DEC_TILE - 1) / DEC_TILE;
    const int per = a.fixed_per ? a.fixed_per : (ntiles + a.n_splits - 1) / a.n_splits;
    const int t0 = s * per, t1 = min(ntiles, t0 + per);

    /* the group's query heads as A fragments (rows >= ratio are zero) */
    uint32_t qa[8][4];
    const int h_lo = lane >> 2, h_hi = h_lo + 8;
    const bf16 *qb = a.q + ((long long)b * a.n_heads + kvh * a.ratio) * 128;
#pragma unroll
    for (int kk = 0; kk < 8; kk++) {
        int c = 16 * kk + 2 * (lane & 3);
        qa[kk][0] = h_lo < a.ratio ? *(const uint32_t *)(qb + h_lo * 128 + c) : 0u;
        qa[kk][1] = h_hi < a.ratio ? *(const uint32_t *)(qb + h_hi * 128 + c) : 0u;
        qa[kk][2] = h_lo < a.ratio ? *(const uint32_t *)(qb + h_lo * 128 + c + 8) : 0u;
        qa[kk][3] = h_hi < a.ratio ? *(const uint32_t *)(qb + h_hi * 128 + c + 8) : 0u;
    }

    float o[16][4];
#pragma unroll
    for (int n = 0; n < 16; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};

    const uint32_t wbase = smem_u32(smem) + warp * STAGES * DEC_STAGE_BYTES;
    const int my_n = t0 + warp < t1 ? (t1 - t0 - warp + DEC_WARPS - 1) / DEC_WARPS : 0;
    const int k_row = (lane >> 4) * 8 + (lane & 7), k_cb = (lane >> 3) & 1;
    const int v_row = ((lane >> 3) & 1) * 8 + (lane & 7), v_cb = lane >> 4;

#pragma unroll
    for (int i = 0; i < STAGES - 1; i++) {
        if (i < my_n)
            dec_load(a, tab, kvh, L, t0 + warp + DEC_WARPS * i, wbase + i * DEC_STAGE_BYTES, lane, page_known);
        cp_commit();
    }
    for (int i = 0; i < my_n; i++) {
        int nx = i + STAGES - 1;
        if (nx < my_n)
            dec_load(a, tab, kvh, L, t0 + warp + DEC_WARPS * nx, wbase + (nx % STAGES) * DEC_STAGE_BYTES, lane,
                     page_known);
        cp_commit();
        cp_wait<STAGES - 1>();
        __syncwarp();
        const uint32_t ks = wbase + (i % STAGES) * DEC_STAGE_BYTES, vs = ks + DEC_TILE * 256;
        const int key0 = (t0 + warp + DEC_WARPS * i) * DEC_TILE;

        float sc[4][4];
#pragma unroll
        for (int n = 0; n < 4; n++) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
#pragma unroll
            for (int np = 0; np < 2; np++) {
                uint32_t bk[4];
                ldsm4(bk, ks + swz(16 * np + k_row, 2 * kk + k_cb));
                mma16816(sc[2 * np], qa[kk], bk[0], bk[1]);
                mma16816(sc[2 * np + 1], qa[kk], bk[2], bk[3]);
            }
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float mx = NEG_INF;
#pragma unroll
            for (int n = 0; n < 4; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float v = sc[n][2 * h + e] * a.scale_log2;
                    if (key0 + 8 * n + 2 * (lane & 3) + e >= L) v = NEG_INF;
                    sc[n][2 * h + e] = v;
                    mx = fmaxf(mx, v);
                }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            float mnew = fmaxf(m[h], mx);
            float base = mnew == NEG_INF ? 0.f : mnew;
            float corr = exp2f(m[h] - base);
            m[h] = mnew;
            float sum = 0.f;
#pragma unroll
            for (int n = 0; n < 4; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float p = exp2f(sc[n][2 * h + e] - base);
                    sc[n][2 * h + e] = p;
                    sum += p;
                }
            l[h] = l[h] * corr + sum;
#pragma unroll
            for (int n = 0; n < 16; n++) {
                o[n][2 * h] *= corr;
                o[n][2 * h + 1] *= corr;
            }
        }
#pragma unroll
        for (int kk = 0; kk < 2; kk++) {
            uint32_t pa[4];
            pa[0] = pack_bf16(sc[2 * kk][0], sc[2 * kk][1]);
            pa[1] = pack_bf16(sc[2 * kk][2], sc[2 * kk][3]);
            pa[2] = pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
            pa[3] = pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < 8; dp++) {
                uint32_t bv[4];
                ldsm4t(bv, vs + swz(16 * kk + v_row, 2 * dp + v_cb));
                mma16816(o[2 * dp], pa, bv[0], bv[1]);
                mma16816(o[2 * dp + 1], pa, bv[2], bv[3]);
            }
        }
        __syncwarp();
    }
    cp_wait<0>();
    TSTAMP(9, false);
#pragma unroll
    for (int h = 0; h < 2; h++) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    }

    /* merge the four warps through shared memory */
    __syncthreads();
    float *os = (float *)smem;                     /* [warp][16][128] */
    float *ms = os + DEC_WARPS * 16 * 128;         /* [warp][16] */
    float *ls = ms + DEC_WARPS * 16;
    float *ow = os + warp * 16 * 128;
#pragma unroll
    for (int n = 0; n < 16; n++) {
        int c = 8 * n + 2 * (lane & 3);
        *(float2 *)&ow[h_lo * 128 + c] = make_float2(o[n][0], o[n][1]);
        *(float2 *)&ow[h_hi * 128 + c] = make_float2(o[n][2], o[n][3]);
    }
    if ((lane & 3) == 0) {
        ms[warp * 16 + h_lo] = m[0];
        ms[warp * 16 + h_hi] = m[1];
        ls[warp * 16 + h_lo] = l[0];
        ls[warp * 16 + h_hi] = l[1];
    }
    __syncthreads();
    const int r = threadIdx.x >> 3, d0 = (threadIdx.x & 7) * 16;
    if (r < a.ratio) {
        float M = NEG_INF;
        for (int w = 0; w < DEC_WARPS; w++) M = fmaxf(M, ms[w * 16 + r]);
        float wt[DEC_WARPS], lt = 0.f;
        for (int w = 0; w < DEC_WARPS; w++) {
            wt[w] = M == NEG_INF ? 0.f : exp2f(ms[w * 16 + r] - M);
            lt += wt[w] * ls[w * 16 + r];
        }
        float inv = lt > 0.f ? 1.f / lt : 0.f;
        long long row = ((long long)b * a.n_heads + kvh * a.ratio + r) * a.n_splits + s;
        float *po = a.part_o + row * 128 + d0;
        for (int d = 0; d < 16; d += 4) {
            float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
            for (int w = 0; w < DEC_WARPS; w++) {
                float4 v = *(const float4 *)&os[(w * 16 + r) * 128 + d0 + d];
                acc.x += wt[w] * v.x;
                acc.y += wt[w] * v.y;
                acc.z += wt[w] * v.z;
                acc.w += wt[w] * v.w;
            }
            acc.x *= inv, acc.y *= inv, acc.z *= inv, acc.w *= inv;
            *(float4 *)&po[d] = acc;
        }
        if ((threadIdx.x & 7) == 0) a.part_lse[row] = lt > 0.f ? M + log2f(lt) : NEG_INF;
    }
    if (!a.merge_cnt) return;

    /* the last CTA of this (sequence, KV head) merges the splits */
    __shared__ int s_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int *cnt = a.merge_cnt + (long long)b * a.n_kv + kvh;
        s_last = atomicAdd(cnt, 1) == a.n_splits - 1;
        if (s_last) *cnt = 0;
    }
    __syncthreads();
    TSTAMP(10, false);
    if (!s_last) return;
    TSTAMP(11, true);
    __threadfence();
    /* warp w merges heads w, w + 4, w + 8, w + 12 together, loads issued in
     * rounds (the per-split loop of v6 was a chain of L2 round trips) */
    constexpr int HPW = 16 / DEC_WARPS;
    const int n = a.n_splits;
    long long row0[HPW];
    float M[HPW], wsum[HPW];
    float4 acc[HPW];
#pragma unroll
    for (int h = 0; h < HPW; h++) {
        int r2 = warp + DEC_WARPS * h;
        row0[h] = r2 < a.ratio ? ((long long)b * a.n_heads + kvh * a.ratio + r2) * n : -1;
        M[h] = NEG_INF;
        wsum[h] = 0.f;
        acc[h] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
    for (int x = lane; x < n; x += 32)
#pragma unroll
        for (int h = 0; h < HPW; h++)
            if (row0[h] >= 0) M[h] = fmaxf(M[h], __ldcg(a.part_lse + row0[h] + x));
#pragma unroll
    for (int h = 0; h < HPW; h++)
#pragma unroll
        for (int x = 16; x; x >>= 1) M[h] = fmaxf(M[h], __shfl_xor_sync(0xffffffffu, M[h], x));
    constexpr int MS = 8; /* splits per round: 8 x 4 heads = 32 float4 loads in flight per lane */
    for (int x0 = 0; x0 < n; x0 += MS) {
        float lw[MS][HPW];
        float4 v[MS][HPW];
#pragma unroll
        for (int u = 0; u < MS; u++)
#pragma unroll
            for (int h = 0; h < HPW; h++) {
                bool ok = x0 + u < n && row0[h] >= 0;
                lw[u][h] = ok ? __ldcg(a.part_lse + row0[h] + x0 + u) : NEG_INF;
                v[u][h] = ok ? __ldcg((const float4 *)(a.part_o + (row0[h] + x0 + u) * 128) + lane)
                             : make_float4(0.f, 0.f, 0.f, 0.f);
            }
#pragma unroll
        for (int u = 0; u < MS; u++)
#pragma unroll
            for (int h = 0; h < HPW; h++) {
                float w = M[h] == NEG_INF ? 0.f : exp2f(lw[u][h] - M[h]);
                wsum[h] += w;
                acc[h].x += w * v[u][h].x, acc[h].y += w * v[u][h].y;
                acc[h].z += w * v[u][h].z, acc[h].w += w * v[u][h].w;
            }
    }
#pragma unroll
    for (int h = 0; h < HPW; h++) {
        if (row0[h] < 0) continue;
        float inv = wsum[h] > 0.f ? 1.f / wsum[h] : 0.f;
        uint2 o2;
        o2.x = pack_bf16(acc[h].x * inv, acc[h].y * inv);
        o2.y = pack_bf16(acc[h].z * inv, acc[h].w * inv);
        *(uint2 *)(a.out + (row0[h] / n) * 128 + 4 * lane) = o2;
    }
}

__global__ void __launch_bounds__(DEC_WARPS * 32) decode_kernel(DecArgs a)
{
    extern __shared__ __align__(128) unsigned char smem[];
    pdl_wait(); /* lens and tables may come from topk_kernel */
    dec_body<DEC_STAGES>(a, smem, blockIdx.x, blockIdx.y, blockIdx.z);
}

/* Merges the splits of one (sequence, head): 128 threads, one per dim. */
__global__ void __launch_bounds__(128) decode_combine_kernel(const float *part_o, const float *part_lse,
                                                             int n_splits, bf16 *out)
{
    const long long row = blockIdx.x;
    const float *lse = part_lse + row * n_splits;
    float M = NEG_INF;
    for (int s = 0; s < n_splits; s++) M = fmaxf(M, lse[s]);
    float acc = 0.f, wsum = 0.f;
    if (M != NEG_INF) {
        for (int s = 0; s < n_splits; s++) {
            float w = exp2f(lse[s] - M);
            wsum += w;
            acc += w * part_o[(row * n_splits + s) * 128 + threadIdx.x];
        }
    }
    out[row * 128 + threadIdx.x] = __float2bfloat16(wsum > 0.f ? acc / wsum : 0.f);
}

/* ---- MSA index scoring for decode -----------------------------------------
 * Bound by reading the index keys, so the keys stream through a cp.async
 * pipeline of whole pages (3 stages of 32 KB bf16, or 6 of 16 KB fp8) and
 * the dot products run on tensor cores: each warp takes 32 keys of the page
 * as the A operand (fp8 keys widened to f16 on the way) against the four
 * groups' index queries as an n8 B operand; block maxima are reduced in
 * registers and across the four warps. */

#define SC_THREADS 128
#define SC_MAX_PAGES 512

static __device__ __forceinline__ void mma16816_f16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
static __device__ __forceinline__ uint32_t e4m3x2_to_h2(uint16_t v)
{
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)v, __NV_E4M3);
    return (uint32_t)h.x | ((uint32_t)h.y << 16);
}
static __device__ __forceinline__ uint32_t pack_h2(float lo, float hi)
{
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

/* The index keys are read once: marked evict-first, they leave the rest of
 * L2 (tables, candidate lists, the kernels' code) in place. */
static __device__ __forceinline__ uint64_t policy_evict_first()
{
    uint64_t p;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p));
    return p;
}
static __device__ __forceinline__ void cp16_evict_first(uint32_t dst, const void *src, uint64_t pol)
{
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "l"(pol));
}

template <bool FP8> struct ScoreCfg {
    static constexpr int PAGE = FP8 ? 128 * 128 : 128 * 256;
    static constexpr int STAGES = FP8 ? 6 : 3;
    static constexpr int SMEM = PAGE * STAGES;
};

/* Scores the pages cta, cta + nct, ... (n_my of them) of sequence b: block
 * maxima per group go to scores[(b * 4 + g) * sstride + block] when scores
 * is set, else to bs[g * SC_MAX_PAGES + i] (shared memory, i-th own page;
 * needs n_my <= SC_MAX_PAGES). */
template <bool FP8>
static __device__ __forceinline__ void msa_score_body(unsigned char *smem, const char *idx, long long istride,
                                                      const int32_t *tables, int ts, const bf16 *iq, int b, int cta,
                                                      int nct, int n_my, float *scores, int sstride, float *bs,
                                                      bool evict_first)
{
    typedef ScoreCfg<FP8> C;
    __shared__ float red[4][4];
    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31;

    /* index queries as the B operand: column n = lane/4 is group n (< 4) */
    uint32_t bq[8][2];
    const int gq = lane >> 2;
    const bf16 *iqb = iq + ((long long)b * 4 + (gq < 4 ? gq : 0)) * 128;
#pragma unroll
    for (int kk = 0; kk < 8; kk++) {
        int c = 16 * kk + 2 * (lane & 3);
        if (gq >= 4) {
            bq[kk][0] = bq[kk][1] = 0u;
        } else if (FP8) {
            bq[kk][0] = pack_h2(__bfloat162float(iqb[c]), __bfloat162float(iqb[c + 1]));
            bq[kk][1] = pack_h2(__bfloat162float(iqb[c + 8]), __bfloat162float(iqb[c + 9]));
        } else {
            bq[kk][0] = *(const uint32_t *)(iqb + c);
            bq[kk][1] = *(const uint32_t *)(iqb + c + 8);
        }
    }

    /* this CTA's page ids up front: no table read on the copy path */
    __shared__ int pid[SC_MAX_PAGES];
    const bool pid_smem = n_my <= SC_MAX_PAGES;
    if (pid_smem)
        for (int i = tid; i < n_my; i += SC_THREADS) pid[i] = tables[(long long)b * ts + cta + (long long)i * nct];
    __syncthreads();
    const uint32_t base = smem_u32(smem);
    const uint64_t pol = evict_first ? policy_evict_first() : 0;
    auto load = [&](int i) {
        long long page = pid_smem ? pid[i] : tables[(long long)b * ts + cta + (long long)i * nct];
        const char *src = idx + page * istride;
        uint32_t dst = base + (i % C::STAGES) * C::PAGE;
#pragma unroll
        for (int j = 0; j < C::PAGE / 16 / SC_THREADS; j++) {
            int c = tid + SC_THREADS * j;
            uint32_t d = FP8 ? dst + (c >> 3) * 128 + (((c & 7) ^ ((c >> 3) & 7)) << 4) : dst + swz(c >> 4, c & 15);
            if (evict_first) cp16_evict_first(d, src + c * 16, pol);
            else cp16(d, src + c * 16);
        }
    };
#pragma unroll
    for (int i = 0; i < C::STAGES - 1; i++) {
        if (i < n_my) load(i);
        cp_commit();
    }
    const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_cb = lane >> 4;
    for (int i = 0; i < n_my; i++) {
        if (i + C::STAGES - 1 < n_my) load(i + C::STAGES - 1);
        cp_commit();
        cp_wait<C::STAGES - 1>();
        __syncthreads();
        const uint32_t st = base + (i % C::STAGES) * C::PAGE;
        float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                uint32_t a[4];
                if (FP8) {
                    int rlo = 32 * warp + 16 * mt + (lane >> 2), rhi = rlo + 8;
                    int o = 2 * (lane & 3);
                    const unsigned char *sp = smem + (st - base);
                    a[0] = e4m3x2_to_h2(*(const uint16_t *)(sp + rlo * 128 + ((kk ^ (rlo & 7)) << 4) + o));
                    a[1] = e4m3x2_to_h2(*(const uint16_t *)(sp + rhi * 128 + ((kk ^ (rhi & 7)) << 4) + o));
                    a[2] = e4m3x2_to_h2(*(const uint16_t *)(sp + rlo * 128 + ((kk ^ (rlo & 7)) << 4) + o + 8));
                    a[3] = e4m3x2_to_h2(*(const uint16_t *)(sp + rhi * 128 + ((kk ^ (rhi & 7)) << 4) + o + 8));
                    mma16816_f16(acc[mt], a, bq[kk][0], bq[kk][1]);
                } else {
                    ldsm4(a, st + swz(32 * warp + 16 * mt + a_row, 2 * kk + a_cb));
                    mma16816(acc[mt], a, bq[kk][0], bq[kk][1]);
                }
            }
        }
        /* columns 2q, 2q+1 (q = lane & 3) of rows lane/4 and lane/4 + 8 */
        float v0 = fmaxf(fmaxf(acc[0][0], acc[0][2]), fmaxf(acc[1][0], acc[1][2]));
        float v1 = fmaxf(fmaxf(acc[0][1], acc[0][3]), fmaxf(acc[1][1], acc[1][3]));
#pragma unroll
        for (int x = 4; x < 32; x <<= 1) {
            v0 = fmaxf(v0, __shfl_xor_sync(0xffffffffu, v0, x));
            v1 = fmaxf(v1, __shfl_xor_sync(0xffffffffu, v1, x));
        }
        if (lane < 2) {
            red[warp][2 * lane] = v0;
            red[warp][2 * lane + 1] = v1;
        }
        __syncthreads();
        if (tid < 4) {
            float m = fmaxf(fmaxf(red[0][tid], red[1][tid]), fmaxf(red[2][tid], red[3][tid]));
            if (scores) scores[((long long)b * 4 + tid) * sstride + cta + (long long)i * nct] = m;
            else bs[tid * SC_MAX_PAGES + i] = m;
        }
    }
    cp_wait<0>();
}

template <bool FP8>
__global__ void __launch_bounds__(SC_THREADS) msa_score_kernel(const char *idx, long long istride, int B,
                                                               const int32_t *tables, int ts, const int32_t *lens,
                                                               const bf16 *iq, float *scores, int sstride, int local,
                                                               int evict_first)
{
    extern __shared__ __align__(128) unsigned char smem[];
    pdl_trigger();
    const int b = blockIdx.y;
    const int ncand = (lens[b] + B - 1) / B - local;
    const int n_my = (int)blockIdx.x < ncand ? (ncand - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
    msa_score_body<FP8>(smem, idx, istride, tables, ts, iq, b, blockIdx.x, gridDim.x, n_my, scores, sstride, NULL,
                        evict_first != 0);
}

/* ---- training-free (Quest) scoring for decode -----------------------------
 * One warp per page: the group's query heads against the page's channel
 * min/max, summed over heads. */
__global__ void __launch_bounds__(256) quest_score_kernel(const char *summ, long long sstride_page, int B,
                                                          const int32_t *tables, int ts, const int32_t *lens,
                                                          const bf16 *q, int n_heads, int n_kv, int ratio,
                                                          float *scores, int sc_stride, int local)
{
    __shared__ float qs[16][128];
    pdl_trigger();
    const int kvh = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int i = threadIdx.x; i < ratio * 128; i += blockDim.x)
        qs[i >> 7][i & 127] = __bfloat162float(q[((long long)b * n_heads + kvh * ratio) * 128 + i]);
    __syncthreads();
    const int len = lens[b];
    const int ncand = (len + B - 1) / B - local;
    for (int blk = blockIdx.x * 8 + warp; blk < ncand; blk += gridDim.x * 8) {
        const char *sp = summ + (long long)tables[(long long)b * ts + blk] * sstride_page + (long long)kvh * 3 * 256;
        uint2 mn = ((const uint2 *)sp)[lane];
        uint2 mx = ((const uint2 *)(sp + 256))[lane];
        float lo[4] = {bf_lo(mn.x), bf_hi(mn.x), bf_lo(mn.y), bf_hi(mn.y)};
        float hi[4] = {bf_lo(mx.x), bf_hi(mx.x), bf_lo(mx.y), bf_hi(mx.y)};
        float acc = 0.f;
        for (int h = 0; h < ratio; h++) {
            float4 qv = *(const float4 *)&qs[h][4 * lane];
            acc += fmaxf(qv.x * lo[0], qv.x * hi[0]) + fmaxf(qv.y * lo[1], qv.y * hi[1]) +
                   fmaxf(qv.z * lo[2], qv.z * hi[2]) + fmaxf(qv.w * lo[3], qv.w * hi[3]);
        }
#pragma unroll
        for (int x = 16; x; x >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, x);
        if (lane == 0) scores[((long long)b * n_kv + kvh) * sc_stride + blk] = acc;
    }
}

/* ---- block selection -------------------------------------------------------
 * One CTA per (sequence, group): forced sink and local blocks, then the
 * top_k best candidates by a 4-pass radix select on order-preserving keys
 * (no sort) held in shared memory, then the rewritten page table of the
 * selection.  (Pulling the top_k by repeated warp maxima was tried in v6:
 * top_k steps over every key on one SM cost 18 us against 12.) */

#define TOPK_THREADS 1024
#define TOPK_SMEM_KEYS 16384
#define TOPK_MAX_W 256

static __device__ __forceinline__ uint32_t ord_key(float f)
{
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void __launch_bounds__(TOPK_THREADS) topk_kernel(const float *scores, int sstride, const int32_t *lens,
                                                            int B, int rows_per_seq, int sink, int top_k, int local,
                                                            int32_t *sel, const int32_t *tables, int ts,
                                                            int32_t *tab_out, int32_t *len_out, int *merge_cnt)
{
    extern __shared__ uint32_t keys[];
    __shared__ int hist[256];
    __shared__ int s_bin, s_rem, cnt_gt, cnt_eq;
    pdl_trigger();
    pdl_wait(); /* the scores */
    const int row = blockIdx.x, b = row / rows_per_seq, tid = threadIdx.x;
    const int W = sink + top_k + local;
    const int len = lens[b];
    const int nblk = (len + B - 1) / B;
    const int c0 = min(sink, nblk), c1 = max(c0, nblk - local), ncand = c1 - c0;
    __shared__ int o[TOPK_MAX_W]; /* the row's selection, copied out at the end */
    const float *sc = scores + (long long)row * sstride + c0;
    const bool in_smem = ncand <= TOPK_SMEM_KEYS;
#define KEY(i) (in_smem ? keys[i] : ord_key(sc[i]))

    if (tid < sink) o[tid] = tid < c0 ? tid : -1;
    if (tid < local) {
        int blk = nblk - local + tid;
        o[sink + top_k + tid] = blk >= c1 ? blk : -1;
    }
    if (ncand <= top_k) {
        for (int i = tid; i < top_k; i += blockDim.x) o[sink + i] = i < ncand ? c0 + i : -1;
    } else {
        /* keys share their leading bits (block maxima lie close together):
         * find the common prefix of min and max and select on the bits below
         * it, 8 at a time, so the histograms spread over many bins */
        uint32_t kmin = 0xffffffffu, kmax = 0;
        if (in_smem) {
            /* all loads first, in one round (the plain loop waits on each) */
            uint32_t kv[TOPK_SMEM_KEYS / TOPK_THREADS];
#pragma unroll
            for (int j = 0; j < TOPK_SMEM_KEYS / TOPK_THREADS; j++) {
                int i = tid + j * TOPK_THREADS;
                kv[j] = i < ncand ? ord_key(sc[i]) : 0u;
            }
#pragma unroll
            for (int j = 0; j < TOPK_SMEM_KEYS / TOPK_THREADS; j++) {
                int i = tid + j * TOPK_THREADS;
                if (i < ncand) {
                    keys[i] = kv[j];
                    kmin = min(kmin, kv[j]);
                    kmax = max(kmax, kv[j]);
                }
            }
        } else {
            for (int i = tid; i < ncand; i += blockDim.x) {
                uint32_t k = ord_key(sc[i]);
                kmin = min(kmin, k);
                kmax = max(kmax, k);
            }
        }
        kmin = __reduce_min_sync(0xffffffffu, kmin);
        kmax = __reduce_max_sync(0xffffffffu, kmax);
        if ((tid & 31) == 0) {
            hist[tid >> 5] = (int)kmin;
            hist[32 + (tid >> 5)] = (int)kmax;
        }
        __syncthreads();
        if (tid < 32) {
            uint32_t a = (uint32_t)hist[tid], c = (uint32_t)hist[32 + tid];
            if (tid >= (int)(blockDim.x >> 5)) a = 0xffffffffu, c = 0;
            a = __reduce_min_sync(0xffffffffu, a);
            c = __reduce_max_sync(0xffffffffu, c);
            if (tid == 0) s_bin = (int)a, s_rem = (int)c;
        }
        __syncthreads();
        kmin = (uint32_t)s_bin;
        kmax = (uint32_t)s_rem;
        __syncthreads();
        const uint32_t diff = kmin ^ kmax;
        int hi = diff ? 32 - __clz(diff) : 0; /* bits [0, hi) differ */
        uint32_t mask = hi >= 32 ? 0u : ~((1u << hi) - 1u);
        uint32_t prefix = kmax & mask;
        int rem = top_k;
        while (hi > 0) {
            const int width = hi < 8 ? hi : 8, shift = hi - width;
            const uint32_t wmask = (1u << width) - 1u;
            for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
            __syncthreads();
            for (int i = tid; i < ncand; i += blockDim.x) {
                uint32_t k = KEY(i);
                if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & wmask], 1);
            }
            __syncthreads();
            if (tid < 32) {
                int c = 0;
                for (int j = 0; j < 8; j++) c += hist[255 - 8 * tid - j];
                int incl = c;
                for (int x = 1; x < 32; x <<= 1) {
                    int v = __shfl_up_sync(0xffffffffu, incl, x);
                    if (tid >= x) incl += v;
                }
                int excl = incl - c;
                if (excl < rem && rem <= incl) {
                    int acc = excl;
                    for (int j = 0; j < 8; j++) {
                        int bin = 255 - 8 * tid - j;
                        if (acc + hist[bin] >= rem) {
                            s_bin = bin;
                            s_rem = rem - acc;
                            break;
                        }
                        acc += hist[bin];
                    }
                }
            }
            __syncthreads();
            prefix |= (uint32_t)s_bin << shift;
            mask |= wmask << shift;
            rem = s_rem;
            hi = shift;
            __syncthreads();
        }
        if (tid == 0) cnt_gt = cnt_eq = 0;
        __syncthreads();
        const int n_gt = top_k - rem;
        for (int i = tid; i < ncand; i += blockDim.x) {
            uint32_t k = KEY(i);
            if (k > prefix) {
                o[sink + atomicAdd(&cnt_gt, 1)] = c0 + i;
            } else if (k == prefix) {
                int e = atomicAdd(&cnt_eq, 1);
                if (e < rem) o[sink + n_gt + e] = c0 + i;
            }
        }
    }
#undef KEY
    __syncthreads();
    for (int i = tid; i < W; i += blockDim.x) sel[(long long)row * W + i] = o[i];
    if (!tab_out) return;
    /* compact the valid entries (order kept: the newest block stays last)
     * with one warp, 32 entries per step */
    if (tid < 32) {
        int n = 0;
        for (int i0 = 0; i0 < W; i0 += 32) {
            int i = i0 + tid, blk = i < W ? o[i] : -1;
            unsigned v = __ballot_sync(0xffffffffu, blk >= 0);
            if (blk >= 0)
                tab_out[(long long)row * W + n + __popc(v & ((1u << tid) - 1u))] =
                    tables[(long long)b * ts + blk];
            n += __popc(v);
        }
        if (tid == 0) {
            len_out[row] = (n - 1) * B + (len - (nblk - 1) * B);
            if (merge_cnt) merge_cnt[row] = 0;
        }
    }
}

/* ---- fused MSA decode for small batches (sm_90) -----------------------------
 * One cooperative launch instead of score -> top-k -> decode (+ merge):
 *   1. every CTA scores its pages (msa_score_body, block maxima kept in
 *      shared memory) and writes only its own top_k (score, block) per group,
 *      sorted;
 *   2. grid barrier; one CTA per (sequence, group) selects the top_k of
 *      those lists (exact: the global top_k is in their union) by a
 *      threshold (fused_select_fast; a radix select over every list entry
 *      when too many entries reach it) and writes the selection and the
 *      rewritten page table;
 *   3. grid barrier; split-KV decode, one selected block per CTA item (a
 *      32-key tile per warp), the last CTA of each (sequence, KV head) merges.
 * The grid is the co-resident CTA count (cooperative launch), so the
 * barriers are safe; cooperative groups keeps their state per launch, so
 * graph replays need no reset.  Counters (merge_cnt) are zeroed in step 2.
 *
 * Status (v7, gpu-notes.md): exact (attn_bench check), but at batch 1 it
 * is 4-5% slower than the kernel chain (steps 2 and 3 are latency chains on
 * a few CTAs), so it is off by default: CATTN_MSA_FUSED=1 turns it on where
 * it applies (batch <= 4, sm_90), CATTN_MSA_FUSED=0 forces the chain. */

#include <cooperative_groups.h>

#define FU_THREADS 128
#define FU_SMEM (96 * 1024) /* both score pipelines; >= 64 KB decode stage, selection keys */
#define FU_MAX_BATCH 4
#define FU_LOADS 32 /* candidate loads in flight per thread */
#ifndef FU_DEFAULT
#define FU_DEFAULT 0 /* off by default: slower than the chain at batch 1 (gpu-notes.md, v7) */
#endif


/* Rank of v[i] among v[0..n) in descending order, ties by index (distinct
 * ranks).  v is in shared memory, 16-byte aligned; four float4 loads per
 * step so that the loads overlap (a plain loop waits ~30 cycles on each). */
static __device__ __forceinline__ int rank_desc(const float *v, const int n, const int i)
{
    const float x = v[i];
    int r = 0, t = 0;
    for (; t + 16 <= n; t += 16) {
        float4 y[4];
#pragma unroll
        for (int u = 0; u < 4; u++) y[u] = *(const float4 *)(v + t + 4 * u);
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int k = t + 4 * u;
            r += (y[u].x > x) | ((y[u].x == x) & (k < i));
            r += (y[u].y > x) | ((y[u].y == x) & (k + 1 < i));
            r += (y[u].z > x) | ((y[u].z == x) & (k + 2 < i));
            r += (y[u].w > x) | ((y[u].w == x) & (k + 3 < i));
        }
    }
    for (; t < n; t++) {
        const float y = v[t];
        r += (y > x) | ((y == x) & (t < i));
    }
    return r;
}

struct FusedArgs {
    DecArgs d; /* tables / lens: the rewritten lists */
    const char *idx;
    long long istride;
    const int32_t *tables, *lens; /* the sequences' own */
    int ts;
    const bf16 *iq;
    float *cand_s; /* [batch * 4][per_seq * top_k] */
    int32_t *cand_b;
    int32_t *sel;
    int batch, per_seq, top_k, local;
    int evict_first; /* index key loads marked L2 evict-first */
    int gather_max; /* <= FU_GATHER; CATTN_FUSED_GATHER lowers it (tests: the radix fallback) */
    int stop; /* timing knob (CATTN_FUSED_STOP): end after step 1..4 of 5 (1 score, 2 barrier, 3 select, 4 barrier) */
};

/* Exact top_k of the per-CTA lists by a threshold: the top_k-th largest of
 * the CTAs' maxima (the lists are sorted, entry 0 is the maximum) is a lower
 * bound T on the top_k-th largest score overall, so the top_k is among the
 * list entries >= T, usually a few more than top_k.  Those are gathered
 * (each list is read only while its entries reach T) and ranked.  Writes
 * o[0 .. top_k), or o[0] = -2 when more than gather_max (<= FU_GATHER) reach T.
 * Ends with a barrier. */
#define FU_GATHER 256
static __device__ void fused_select_fast(const FusedArgs &a, const int row, const int ncand, float *sm, int *o)
{
    __shared__ int s_n;
    __shared__ float s_thr;
    const int tid = threadIdx.x, top_k = a.top_k, P = a.per_seq;
    const int nact = min(P, ncand); /* CTAs with at least one page */
    const float *cs = a.cand_s + (long long)row * P * top_k;
    const int32_t *cb = a.cand_b + (long long)row * P * top_k;
    float *mx = sm;                       /* [nact] the CTAs' maxima */
    const int P4 = (P + 3) & ~3;           /* float4 alignment for rank_desc */
    float *gs = sm + P4;                   /* [FU_GATHER] gathered scores */
    int *gi = (int *)(sm + P4 + FU_GATHER); /* [FU_GATHER] their list slots */
    for (int j = tid; j < nact; j += FU_THREADS) mx[j] = __ldcg(cs + (long long)j * top_k);
    if (tid == 0) {
        s_n = 0;
        s_thr = NEG_INF;
    }
    __syncthreads();
    if (nact >= top_k) {
        for (int j = tid; j < nact; j += FU_THREADS)
            if (rank_desc(mx, nact, j) == top_k - 1) s_thr = mx[j];
    }
    __syncthreads();
    TSTAMP(4, false);
    const float thr = s_thr;
    for (int j = tid; j < nact; j += FU_THREADS) {
        const int nj = (ncand - j + P - 1) / P, cnt = nj < top_k ? nj : top_k;
        float x = mx[j];
        for (int r = 0; r < cnt && x >= thr;) {
            int slot = atomicAdd(&s_n, 1);
            if (slot < FU_GATHER) {
                gs[slot] = x;
                gi[slot] = j * top_k + r;
            }
            if (++r < cnt) x = __ldcg(cs + (long long)j * top_k + r);
        }
    }
    __syncthreads();
    TSTAMP(5, false);
    const int n = s_n;
    if (n > a.gather_max) {
        if (tid == 0) o[0] = -2;
    } else {
        for (int i = tid; i < n; i += FU_THREADS) {
            const int r = rank_desc(gs, n, i);
            if (r < top_k) o[r] = __ldcg(cb + gi[i]);
        }
    }
    __syncthreads();
}

static __device__ void fused_select(const FusedArgs &a, const int row, uint32_t *keys)
{
    __shared__ int hist[256];
    __shared__ int s_bin, s_rem, cnt_gt, cnt_eq;
    __shared__ int o[TOPK_MAX_W];
    const int tid = threadIdx.x;
    const int b = row >> 2, B = a.d.B, top_k = a.top_k, local = a.local, W = top_k + local, P = a.per_seq;
    const int len = a.lens[b];
    const int nblk = (len + B - 1) / B;
    const int ncand = max(0, nblk - local);
    __syncthreads(); /* o, hist and keys of an earlier row */
    for (int i = tid; i < local; i += FU_THREADS) {
        int blk = nblk - local + i;
        o[top_k + i] = blk >= ncand ? blk : -1;
    }
    if (ncand <= top_k) {
        for (int i = tid; i < top_k; i += FU_THREADS) o[i] = i < ncand ? i : -1;
        __syncthreads();
    } else {
        fused_select_fast(a, row, ncand, (float *)keys, o);
    }
    if (ncand > top_k && o[0] == -2) { /* the fast path gave up: radix select over every list entry */
        __syncthreads();
        const int nslot = P * top_k;
        const float *cs = a.cand_s + (long long)row * nslot;
        const int32_t *cb = a.cand_b + (long long)row * nslot;
        /* slot (j, r) holds CTA j's r-th best; valid for r < min(pages of j, top_k).
         * Invalid slots get key 0, below every finite score's key. */
        uint32_t kmin = 0xffffffffu, kmax = 0;
        for (int i0 = 0; i0 < nslot; i0 += FU_THREADS * FU_LOADS) {
            float v[FU_LOADS];
#pragma unroll
            for (int u = 0; u < FU_LOADS; u++) {
                int i = i0 + tid + u * FU_THREADS;
                v[u] = i < nslot ? __ldcg(cs + i) : 0.f;
            }
#pragma unroll
            for (int u = 0; u < FU_LOADS; u++) {
                int i = i0 + tid + u * FU_THREADS;
                if (i < nslot) {
                    int j = i / top_k, r = i - j * top_k;
                    int nj = j < ncand ? (ncand - j + P - 1) / P : 0;
                    uint32_t k = 0;
                    if (r < nj) {
                        k = ord_key(v[u]);
                        kmin = min(kmin, k);
                        kmax = max(kmax, k);
                    }
                    keys[i] = k;
                }
            }
        }
        TSTAMP(4, false);
        kmin = __reduce_min_sync(0xffffffffu, kmin);
        kmax = __reduce_max_sync(0xffffffffu, kmax);
        if ((tid & 31) == 0) {
            hist[tid >> 5] = (int)kmin;
            hist[32 + (tid >> 5)] = (int)kmax;
        }
        __syncthreads();
        if (tid < 32) {
            uint32_t x = (uint32_t)hist[tid], y = (uint32_t)hist[32 + tid];
            if (tid >= FU_THREADS / 32) x = 0xffffffffu, y = 0;
            x = __reduce_min_sync(0xffffffffu, x);
            y = __reduce_max_sync(0xffffffffu, y);
            if (tid == 0) s_bin = (int)x, s_rem = (int)y;
        }
        __syncthreads();
        kmin = (uint32_t)s_bin;
        kmax = (uint32_t)s_rem;
        __syncthreads();
        const uint32_t diff = kmin ^ kmax;
        int hi = diff ? 32 - __clz(diff) : 0;
        uint32_t mask = hi >= 32 ? 0u : ~((1u << hi) - 1u);
        uint32_t prefix = kmax & mask;
        int rem = top_k;
        while (hi > 0) {
            const int width = hi < 8 ? hi : 8, shift = hi - width;
            const uint32_t wmask = (1u << width) - 1u;
            for (int i = tid; i < 256; i += FU_THREADS) hist[i] = 0;
            __syncthreads();
            for (int i = tid; i < nslot; i += FU_THREADS) {
                uint32_t k = keys[i];
                if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & wmask], 1);
            }
            __syncthreads();
            if (tid < 32) {
                int c = 0;
                for (int j = 0; j < 8; j++) c += hist[255 - 8 * tid - j];
                int incl = c;
                for (int x = 1; x < 32; x <<= 1) {
                    int y = __shfl_up_sync(0xffffffffu, incl, x);
                    if (tid >= x) incl += y;
                }
                int excl = incl - c;
                if (excl < rem && rem <= incl) {
                    int acc = excl;
                    for (int j = 0; j < 8; j++) {
                        int bin = 255 - 8 * tid - j;
                        if (acc + hist[bin] >= rem) {
                            s_bin = bin;
                            s_rem = rem - acc;
                            break;
                        }
                        acc += hist[bin];
                    }
                }
            }
            __syncthreads();
            prefix |= (uint32_t)s_bin << shift;
            mask |= wmask << shift;
            rem = s_rem;
            hi = shift;
            __syncthreads();
        }
        TSTAMP(5, false);
        if (tid == 0) cnt_gt = cnt_eq = 0;
        __syncthreads();
        const int n_gt = top_k - rem;
        for (int i = tid; i < nslot; i += FU_THREADS) {
            uint32_t k = keys[i];
            if (k > prefix) {
                o[atomicAdd(&cnt_gt, 1)] = __ldcg(cb + i);
            } else if (k == prefix) {
                int e = atomicAdd(&cnt_eq, 1);
                if (e < rem) o[n_gt + e] = __ldcg(cb + i);
            }
        }
    }
    __syncthreads();
    if (a.sel)
        for (int i = tid; i < W; i += FU_THREADS) a.sel[(long long)row * W + i] = o[i];
    /* the selected pages, compacted in order (the newest block stays last) */
    if (tid < 32) {
        int32_t *tab_out = (int32_t *)a.d.tables + (long long)row * W;
        int n = 0;
        for (int i0 = 0; i0 < W; i0 += 32) {
            int i = i0 + tid, blk = i < W ? o[i] : -1;
            unsigned v = __ballot_sync(0xffffffffu, blk >= 0);
            if (blk >= 0) tab_out[n + __popc(v & ((1u << tid) - 1u))] = a.tables[(long long)b * a.ts + blk];
            n += __popc(v);
        }
        if (tid == 0) {
            ((int32_t *)a.d.lens)[row] = (n - 1) * B + (len - (nblk - 1) * B);
            a.d.merge_cnt[row] = 0;
        }
    }
}

template <bool FP8>
__global__ void __launch_bounds__(FU_THREADS, 2) msa_fused_kernel(FusedArgs a)
{
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ __align__(16) float bs[4 * SC_MAX_PAGES];
    cooperative_groups::grid_group grid = cooperative_groups::this_grid();
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int top_k = a.top_k, P = a.per_seq, B = a.d.B;

    TSTAMP(0, false);
    /* 1. scoring, and this CTA's own top_k per group (sorted: entry 0 is the maximum) */
    if ((int)blockIdx.x < P * a.batch) {
        const int b = blockIdx.x / P, j = blockIdx.x - b * P;
        const int ncand = max(0, (a.lens[b] + B - 1) / B - a.local);
        const int n_my = j < ncand ? (ncand - j + P - 1) / P : 0;
        msa_score_body<FP8>(smem, a.idx, a.istride, a.tables, a.ts, a.iq, b, j, P, n_my, NULL, 0, bs,
                            a.evict_first != 0);
        TSTAMP(1, true);
        if (ncand > top_k && n_my > 0) { /* else the selection takes every candidate */
            __syncthreads();
            const float *v = bs + warp * SC_MAX_PAGES; /* warp g ranks group g */
            const long long o = ((long long)(b * 4 + warp) * P + j) * top_k;
            for (int i = lane; i < n_my; i += 32) {
                const int r = rank_desc(v, n_my, i);
                if (r < top_k) {
                    a.cand_s[o + r] = v[i];
                    a.cand_b[o + r] = j + i * P;
                }
            }
        }
    }
    /* the decode step's query rows into L2 meanwhile (4 KB per item) */
    {
        const int W = top_k + a.local;
        if ((int)blockIdx.x < W * 4 * a.batch && tid < 32) {
            const int kvh = (blockIdx.x / W) & 3, b = blockIdx.x / (4 * W);
            const char *qp = (const char *)(a.d.q + ((long long)b * a.d.n_heads + kvh * a.d.ratio) * 128);
            if (tid * 128 < a.d.ratio * 256) asm volatile("prefetch.global.L2 [%0];" ::"l"(qp + tid * 128));
        }
    }
    TSTAMP(2, true);
    if (a.stop == 1) return;
    grid.sync();
    TSTAMP(3, false);
    if (a.stop == 2) return;

    /* 2. selection per (sequence, group) */
    for (int row = blockIdx.x; row < a.batch * 4; row += gridDim.x) fused_select(a, row, (uint32_t *)smem);
    TSTAMP(6, false);
    if (a.stop == 3) return;
    grid.sync();
    TSTAMP(7, false);
    if (a.stop == 4) return;

    /* 3. sparse decode: item = (selected slot, KV head, sequence) */
    const int W = top_k + a.local, items = W * 4 * a.batch;
    for (int it = blockIdx.x; it < items; it += gridDim.x) {
        __syncthreads(); /* shared memory of the previous item */
        dec_body<1>(a.d, smem, it % W, (it / W) & 3, it / (4 * W));
    }
#ifdef CATTN_FUSED_PROF
    TSTAMP(8, true);
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        if (atomicAdd(&g_tdone, 1) == gridDim.x - 1) {
            unsigned long long t0 = g_tp[0];
            printf("PROF fp8=%d b=%d us: score %.2f rank %.2f sync1 %.2f sel-a %.2f sel-b %.2f sel-c %.2f (total %.2f) "
                   "sync2 %.2f | decode: tile %.2f part %.2f last-merge-start %.2f end %.2f\n",
                   (int)FP8, a.batch, (g_tp[1] - t0) * 1e-3, (g_tp[2] - g_tp[1]) * 1e-3,
                   (g_tp[3] - g_tp[2]) * 1e-3, (g_tp[4] - g_tp[3]) * 1e-3, (g_tp[5] - g_tp[4]) * 1e-3,
                   (g_tp[6] - g_tp[5]) * 1e-3, (g_tp[6] - g_tp[3]) * 1e-3, (g_tp[7] - g_tp[6]) * 1e-3,
                   (g_tp[9] - g_tp[7]) * 1e-3, (g_tp[10] - g_tp[9]) * 1e-3, (g_tp[11] - g_tp[7]) * 1e-3,
                   (g_tp[8] - g_tp[7]) * 1e-3);
            for (int i = 0; i < 12; i++) g_tp[i] = 0;
            g_tdone = 0;
        }
    }
#endif
}

/* ---- host side ------------------------------------------------------------ */

static int n_sms(void)
{
    static int n = 0;
    if (!n) {
        int dev = 0;
        cudaGetDevice(&dev);
        if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) n = 132;
    }
    return n;
}

/* Two CTAs per SM in all (one is resident at a time: 128 KB of shared
 * memory), each warp with at least min_tiles tiles so its copies pipeline;
 * sparse decode (few keys) takes one tile per warp. */
static int dec_splits(int rows, int max_len, int min_tiles)
{
    int ntiles = (max_len + DEC_TILE - 1) / DEC_TILE;
    int s = (2 * n_sms() + rows - 1) / rows;
    int cap = (ntiles + DEC_WARPS * min_tiles - 1) / (DEC_WARPS * min_tiles);
    if (s > cap) s = cap;
    if (s > 1024) s = 1024;
    return s < 1 ? 1 : s;
}

static size_t dec_ws(int batch, int n_heads, int n_kv, int max_len, int min_tiles)
{
    size_t s = (size_t)dec_splits(batch * n_kv, max_len, min_tiles);
    return (size_t)batch * n_heads * s * (128 + 1) * sizeof(float);
}

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

static int check_pool(const cattn_pool *p, int n_heads)
{
    if (!p || n_heads <= 0 || p->n_kv_heads <= 0 || n_heads % p->n_kv_heads) return CATTN_EINVAL;
    if (p->head_dim != 128 || p->block_size < 64 || p->block_size % 64) return CATTN_ESHAPE;
    if (n_heads / p->n_kv_heads > 16) return CATTN_ESHAPE;
    return 0;
}

/* Split-KV decode over tables with per-KV-head strides. */
static int decode_run(const cattn_pool *p, int batch, int n_heads, const void *q, void *out, float scale,
                      const int32_t *tables, long long ts_seq, int ts_kvh, const int32_t *lens, int ls_seq,
                      int ls_kvh, int max_len, int min_tiles, int *merge_cnt, void *ws, size_t ws_bytes,
                      cudaStream_t st, bool pdl)
{
    static int attr_done = 0;
    if (!attr_done) {
        CUDA_TRY(cudaFuncSetAttribute(decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, DEC_SMEM));
        attr_done = 1;
    }
    int n_kv = p->n_kv_heads;
    int splits = dec_splits(batch * n_kv, max_len, min_tiles);
    if (ws_bytes < dec_ws(batch, n_heads, n_kv, max_len, min_tiles)) return CATTN_EWORKSPACE;
    DecArgs a;
    memset(&a, 0, sizeof(a));
    a.q = (const bf16 *)q;
    a.k = (const char *)p->k;
    a.v = (const char *)p->v;
    a.k_stride = p->k_stride;
    a.v_stride = p->v_stride;
    a.tables = tables;
    a.ts_seq = ts_seq;
    a.ts_kvh = ts_kvh;
    a.lens = lens;
    a.ls_seq = ls_seq;
    a.ls_kvh = ls_kvh;
    a.part_o = (float *)ws;
    a.part_lse = a.part_o + (size_t)batch * n_heads * splits * 128;
    a.merge_cnt = merge_cnt;
    a.out = (bf16 *)out;
    a.B = p->block_size;
    a.n_kv = n_kv;
    a.n_heads = n_heads;
    a.ratio = n_heads / n_kv;
    a.n_splits = splits;
    a.scale_log2 = scale * LOG2E_F;
    dim3 grid(splits, n_kv, batch);
    if (pdl) CUDA_TRY(launch_pdl(decode_kernel, grid, dim3(DEC_WARPS * 32), DEC_SMEM, st, a));
    else decode_kernel<<<grid, DEC_WARPS * 32, DEC_SMEM, st>>>(a);
    CUDA_TRY(cudaGetLastError());
    if (merge_cnt) return 0;
    decode_combine_kernel<<<batch * n_heads, 128, 0, st>>>(a.part_o, a.part_lse, splits, (bf16 *)out);
    CUDA_TRY(cudaGetLastError());
    return 0;
}

extern "C" const char *cattn_strerror(int rc)
{
    switch (rc) {
    case 0: return "ok";
    case CATTN_EINVAL: return "invalid argument";
    case CATTN_ESHAPE: return "unsupported shape";
    case CATTN_EWORKSPACE: return "workspace too small";
    default: return rc > 0 ? cudaGetErrorString((cudaError_t)rc) : "unknown error";
    }
}

extern "C" size_t cattn_decode_ws(const cattn_pool *p, int batch, int n_heads, int max_len)
{
    return dec_ws(batch, n_heads, p->n_kv_heads, max_len, 4);
}

extern "C" int cattn_decode(const cattn_pool *p, const cattn_batch *b, int n_heads, const void *q, void *out,
                            float scale, void *ws, size_t ws_bytes, void *stream)
{
    int rc = check_pool(p, n_heads);
    if (rc) return rc;
    if (!b || b->batch <= 0 || b->max_len <= 0) return CATTN_EINVAL;
    return decode_run(p, b->batch, n_heads, q, out, scale, b->tables, b->table_stride, 0, b->lens, 1, 0,
                      b->max_len, 4, NULL, ws, ws_bytes, (cudaStream_t)stream, false);
}

/* The fused MSA kernel's grid: co-resident CTAs (cooperative launch), 0 when
 * it cannot run here (before sm_90, no cooperative launch, no occupancy). */
static int fused_grid(bool fp8)
{
    static int g[2] = {-1, -1};
    int &n = g[fp8 ? 1 : 0];
    if (n < 0) {
        n = 0;
        int dev = 0, major = 0, coop = 0, occ = 0;
        if (cudaGetDevice(&dev) != cudaSuccess) return 0;
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
        cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev);
        if (major < 9 || !coop) return 0;
        void (*k)(FusedArgs) = fp8 ? msa_fused_kernel<true> : msa_fused_kernel<false>;
        if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, FU_SMEM) != cudaSuccess ||
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, k, FU_THREADS, FU_SMEM) != cudaSuccess) {
            cudaGetLastError();
            return 0;
        }
        n = occ * n_sms();
    }
    return n;
}

/* Scoring CTAs per sequence of the fused kernel; CATTN_FUSED_CTAS caps it
 * (tests: many pages per CTA on short sequences). */
static int fused_per_seq(int grid, int batch)
{
    int p = grid / batch;
    const char *e = getenv("CATTN_FUSED_CTAS");
    if (e && atoi(e) > 0 && atoi(e) < p) p = atoi(e);
    return p;
}

/* CATTN_SCORE_EF=0/1 overrides SCORE_EF_DEFAULT (index key loads L2 evict-first). */
#ifndef SCORE_EF_DEFAULT
#define SCORE_EF_DEFAULT 0
#endif
static int score_evict_first(void)
{
    const char *e = getenv("CATTN_SCORE_EF");
    return e ? e[0] == '1' : SCORE_EF_DEFAULT;
}

/* Sparse decode workspace: scores, selection, rewritten tables, lengths,
 * then the split-KV partials for a selection of W pages (W splits for the
 * fused kernel), then the fused kernel's per-CTA candidate lists. */
static size_t sparse_ws(const cattn_pool *p, int batch, int n_heads, int max_len, int W, int cand_top_k,
                        size_t *off)
{
    int rows = batch * p->n_kv_heads;
    int nblk = (max_len + p->block_size - 1) / p->block_size;
    size_t o = 0;
    off[0] = o; o += align256((size_t)rows * nblk * sizeof(float));
    off[1] = o; o += align256((size_t)rows * W * sizeof(int32_t));
    off[2] = o; o += align256((size_t)rows * W * sizeof(int32_t));
    off[3] = o; o += align256((size_t)rows * sizeof(int32_t));
    off[5] = o; o += align256((size_t)rows * sizeof(int32_t));
    size_t part = dec_ws(batch, n_heads, p->n_kv_heads, W * p->block_size, 1);
    size_t part_fused = (size_t)batch * n_heads * W * (128 + 1) * sizeof(float);
    off[4] = o; o += align256(part > part_fused ? part : part_fused);
    off[6] = o;
    if (cand_top_k > 0 && batch <= FU_MAX_BATCH) {
        int g = fused_grid(p->idx_fp8 != 0);
        size_t slots = (size_t)rows * (g / batch) * cand_top_k;
        o += align256(slots * sizeof(float));
        off[7] = o;
        o += align256(slots * sizeof(int32_t));
    } else {
        off[7] = o;
    }
    return o;
}

extern "C" size_t cattn_msa_decode_ws(const cattn_pool *p, int batch, int n_heads, int max_len, int top_k,
                                      int local)
{
    size_t off[8];
    return sparse_ws(p, batch, n_heads, max_len, top_k + local, top_k, off);
}

extern "C" size_t cattn_quest_decode_ws(const cattn_pool *p, int batch, int n_heads, int max_len, int top_k,
                                        int local, int sink)
{
    size_t off[8];
    return sparse_ws(p, batch, n_heads, max_len, sink + top_k + local, 0, off);
}

/* The fused path (batch <= FU_MAX_BATCH, sm_90): returns 1 when it does not
 * apply (the caller runs the kernel chain), else 0 or an error. */
static int msa_fused(const cattn_pool *p, const cattn_batch *b, int n_heads, const void *q, const void *iq,
                     void *out, float scale, int top_k, int local, int32_t *sel, char *w, const size_t *off,
                     cudaStream_t st)
{
    const char *e = getenv("CATTN_MSA_FUSED"); /* 0: never, 1: where it applies, unset: FU_DEFAULT */
    if (e ? e[0] == '0' : !FU_DEFAULT) return 1;
    const int B = p->block_size, n_kv = p->n_kv_heads, W = top_k + local, batch = b->batch;
    if (batch > FU_MAX_BATCH) return 1;
    const bool fp8 = p->idx_fp8 != 0;
    const int grid = fused_grid(fp8);
    if (grid < batch) return 1;
    const int P = fused_per_seq(grid, batch);
    const int ncand = (b->max_len + B - 1) / B - local;
    if ((ncand + P - 1) / P > SC_MAX_PAGES) return 1;
    if ((size_t)P * top_k * 4 > FU_SMEM || (size_t)(P + 4 + 2 * FU_GATHER) * 4 > FU_SMEM) return 1;
    if (off[7] - off[6] < align256((size_t)batch * n_kv * P * top_k * sizeof(float))) return 1;
    FusedArgs a;
    memset(&a, 0, sizeof(a));
    DecArgs &d = a.d;
    d.q = (const bf16 *)q;
    d.k = (const char *)p->k;
    d.v = (const char *)p->v;
    d.k_stride = p->k_stride;
    d.v_stride = p->v_stride;
    d.tables = (const int32_t *)(w + off[2]);
    d.ts_seq = (long long)n_kv * W;
    d.ts_kvh = W;
    d.lens = (const int32_t *)(w + off[3]);
    d.ls_seq = n_kv;
    d.ls_kvh = 1;
    d.part_o = (float *)(w + off[4]);
    d.part_lse = d.part_o + (size_t)batch * n_heads * W * 128;
    d.merge_cnt = (int *)(w + off[5]);
    d.out = (bf16 *)out;
    d.B = B;
    d.n_kv = n_kv;
    d.n_heads = n_heads;
    d.ratio = n_heads / n_kv;
    d.n_splits = W;
    d.fixed_per = B / DEC_TILE;
    d.scale_log2 = scale * LOG2E_F;
    a.idx = (const char *)p->idx;
    a.istride = p->idx_stride;
    a.tables = b->tables;
    a.lens = b->lens;
    a.ts = b->table_stride;
    a.iq = (const bf16 *)iq;
    a.cand_s = (float *)(w + off[6]);
    a.cand_b = (int32_t *)(w + off[7]);
    a.sel = sel;
    a.batch = batch;
    a.per_seq = P;
    a.top_k = top_k;
    a.local = local;
    a.evict_first = score_evict_first();
    const char *gm = getenv("CATTN_FUSED_GATHER");
    a.gather_max = gm && atoi(gm) > 0 && atoi(gm) < FU_GATHER ? atoi(gm) : FU_GATHER;
    const char *stop = getenv("CATTN_FUSED_STOP");
    a.stop = stop ? atoi(stop) : 0;
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeCooperative;
    at[0].val.cooperative = 1;
    cfg.gridDim = dim3(grid);
    cfg.blockDim = dim3(FU_THREADS);
    cfg.dynamicSmemBytes = FU_SMEM;
    cfg.stream = st;
    cfg.attrs = at;
    cfg.numAttrs = 1;
    if (fp8) CUDA_TRY(cudaLaunchKernelEx(&cfg, msa_fused_kernel<true>, a));
    else CUDA_TRY(cudaLaunchKernelEx(&cfg, msa_fused_kernel<false>, a));
    CUDA_TRY(cudaGetLastError());
    return 0;
}

static int sparse_decode(const cattn_pool *p, const cattn_batch *b, int n_heads, const void *q, const void *iq,
                         void *out, float scale, int top_k, int local, int sink, int32_t *sel, void *ws,
                         size_t ws_bytes, cudaStream_t st)
{
    int rc = check_pool(p, n_heads);
    if (rc) return rc;
    if (!b || b->batch <= 0 || b->max_len <= 0 || top_k < 0 || local < 1 || sink < 0) return CATTN_EINVAL;
    if (sink + top_k + local > TOPK_MAX_W) return CATTN_ESHAPE;
    const int W = sink + top_k + local, B = p->block_size, n_kv = p->n_kv_heads;
    size_t off[8];
    if (ws_bytes < sparse_ws(p, b->batch, n_heads, b->max_len, W, iq ? top_k : 0, off)) return CATTN_EWORKSPACE;
    char *w = (char *)ws;
    if (iq && sink == 0 && n_kv == 4 && p->idx_dim == 128 && B == 128 && p->idx) {
        rc = msa_fused(p, b, n_heads, q, iq, out, scale, top_k, local, sel, w, off, st);
        if (rc != 1) return rc;
    }
    float *scores = (float *)(w + off[0]);
    int32_t *sel_ws = (int32_t *)(w + off[1]);
    int32_t *tab = (int32_t *)(w + off[2]);
    int32_t *lens = (int32_t *)(w + off[3]);
    int *merge_cnt = (int *)(w + off[5]);
    const int nblk = (b->max_len + B - 1) / B;
    static int attr_done = 0;
    if (!attr_done) {
        CUDA_TRY(cudaFuncSetAttribute(msa_score_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      ScoreCfg<false>::SMEM));
        CUDA_TRY(cudaFuncSetAttribute(msa_score_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      ScoreCfg<true>::SMEM));
        CUDA_TRY(cudaFuncSetAttribute(topk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      TOPK_SMEM_KEYS * 4));
        attr_done = 1;
    }
    if (iq) {
        if (n_kv != 4 || p->idx_dim != 128 || B != 128 || !p->idx) return CATTN_ESHAPE;
        int per_seq = (2 * n_sms() + b->batch - 1) / b->batch;
        dim3 grid(nblk < per_seq ? nblk : per_seq, b->batch);
        if (p->idx_fp8)
            msa_score_kernel<true><<<grid, SC_THREADS, ScoreCfg<true>::SMEM, st>>>(
                (const char *)p->idx, p->idx_stride, B, b->tables, b->table_stride, b->lens, (const bf16 *)iq,
                scores, nblk, local, score_evict_first());
        else
            msa_score_kernel<false><<<grid, SC_THREADS, ScoreCfg<false>::SMEM, st>>>(
                (const char *)p->idx, p->idx_stride, B, b->tables, b->table_stride, b->lens, (const bf16 *)iq,
                scores, nblk, local, score_evict_first());
    } else {
        if (!p->summ) return CATTN_ESHAPE;
        const int chunks = (nblk + 7) / 8;
        dim3 grid(chunks < 256 ? chunks : 256, n_kv, b->batch);
        quest_score_kernel<<<grid, 256, 0, st>>>((const char *)p->summ, p->summ_stride, B, b->tables,
                                                 b->table_stride, b->lens, (const bf16 *)q, n_heads, n_kv,
                                                 n_heads / n_kv, scores, nblk, local);
    }
    CUDA_TRY(cudaGetLastError());
    size_t tk_smem = (size_t)(nblk < TOPK_SMEM_KEYS ? nblk : TOPK_SMEM_KEYS) * 4;
    /* top-k and the decode start early (programmatic dependent launch) and
     * wait in-kernel, so their launches overlap the previous kernel's tail */
    CUDA_TRY(launch_pdl(topk_kernel, dim3(b->batch * n_kv), dim3(TOPK_THREADS), tk_smem, st, scores, nblk, b->lens, B,
                        n_kv, sink, top_k, local, sel ? sel : sel_ws, b->tables, b->table_stride, tab, lens,
                        merge_cnt));
    CUDA_TRY(cudaGetLastError());
    return decode_run(p, b->batch, n_heads, q, out, scale, tab, (long long)n_kv * W, W, lens, n_kv, 1, W * B, 1,
                      merge_cnt, w + off[4], ws_bytes - off[4], st, true);
}

extern "C" int cattn_msa_decode(const cattn_pool *p, const cattn_batch *b, int n_heads, const void *q,
                                const void *iq, void *out, float scale, int top_k, int local, int32_t *sel,
                                void *ws, size_t ws_bytes, void *stream)
{
    if (!iq) return CATTN_EINVAL;
    return sparse_decode(p, b, n_heads, q, iq, out, scale, top_k, local, 0, sel, ws, ws_bytes,
                         (cudaStream_t)stream);
}

extern "C" int cattn_quest_decode(const cattn_pool *p, const cattn_batch *b, int n_heads, const void *q, void *out,
                                  float scale, int top_k, int local, int sink, int32_t *sel, void *ws,
                                  size_t ws_bytes, void *stream)
{
    return sparse_decode(p, b, n_heads, q, NULL, out, scale, top_k, local, sink, sel, ws, ws_bytes,
                         (cudaStream_t)stream);
}
