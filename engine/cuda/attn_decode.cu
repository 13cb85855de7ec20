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
#include "attn_util.cuh"
#include "cuda_attn.h"

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
    bf16 *out;
    int B, n_kv, n_heads, ratio, n_splits;
    float scale_log2;
};

static __device__ __forceinline__ void dec_load(const DecArgs &a, const int32_t *tab, int kvh, int L, int tile,
                                                uint32_t dst, int lane)
{
    int key0 = tile * DEC_TILE;
    long long page = tab[key0 / a.B];
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

__global__ void __launch_bounds__(DEC_WARPS * 32) decode_kernel(DecArgs a)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int s = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    pdl_wait(); /* lens and tables may come from topk_kernel */
    const int L = a.lens[(long long)b * a.ls_seq + kvh * a.ls_kvh];
    const int32_t *tab = a.tables + b * a.ts_seq + (long long)kvh * a.ts_kvh;
    const int ntiles = (L + DEC_TILE - 1) / DEC_TILE;
    const int per = (ntiles + a.n_splits - 1) / a.n_splits;
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

    const uint32_t wbase = smem_u32(smem) + warp * DEC_STAGES * DEC_STAGE_BYTES;
    const int my_n = t0 + warp < t1 ? (t1 - t0 - warp + DEC_WARPS - 1) / DEC_WARPS : 0;
    const int k_row = (lane >> 4) * 8 + (lane & 7), k_cb = (lane >> 3) & 1;
    const int v_row = ((lane >> 3) & 1) * 8 + (lane & 7), v_cb = lane >> 4;

#pragma unroll
    for (int i = 0; i < DEC_STAGES - 1; i++) {
        if (i < my_n) dec_load(a, tab, kvh, L, t0 + warp + DEC_WARPS * i, wbase + i * DEC_STAGE_BYTES, lane);
        cp_commit();
    }
    for (int i = 0; i < my_n; i++) {
        int nx = i + DEC_STAGES - 1;
        if (nx < my_n)
            dec_load(a, tab, kvh, L, t0 + warp + DEC_WARPS * nx, wbase + (nx % DEC_STAGES) * DEC_STAGE_BYTES, lane);
        cp_commit();
        cp_wait<DEC_STAGES - 1>();
        __syncwarp();
        const uint32_t ks = wbase + (i % DEC_STAGES) * DEC_STAGE_BYTES, vs = ks + DEC_TILE * 256;
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
    if (!s_last) return;
    __threadfence();
    for (int r2 = warp; r2 < a.ratio; r2 += DEC_WARPS) {
        long long row0 = ((long long)b * a.n_heads + kvh * a.ratio + r2) * a.n_splits;
        float M = NEG_INF;
        for (int x = lane; x < a.n_splits; x += 32) M = fmaxf(M, __ldcg(a.part_lse + row0 + x));
#pragma unroll
        for (int x = 16; x; x >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, x));
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        float wsum = 0.f;
        if (M != NEG_INF) {
            for (int x = 0; x < a.n_splits; x++) {
                float w = exp2f(__ldcg(a.part_lse + row0 + x) - M);
                float4 v = __ldcg((const float4 *)(a.part_o + (row0 + x) * 128) + lane);
                wsum += w;
                acc.x += w * v.x, acc.y += w * v.y, acc.z += w * v.z, acc.w += w * v.w;
            }
        }
        float inv = wsum > 0.f ? 1.f / wsum : 0.f;
        uint2 o2;
        o2.x = pack_bf16(acc.x * inv, acc.y * inv);
        o2.y = pack_bf16(acc.z * inv, acc.w * inv);
        *(uint2 *)(a.out + (row0 / a.n_splits) * 128 + 4 * lane) = o2;
    }
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

template <bool FP8> struct ScoreCfg {
    static constexpr int PAGE = FP8 ? 128 * 128 : 128 * 256;
    static constexpr int STAGES = FP8 ? 6 : 3;
    static constexpr int SMEM = PAGE * STAGES;
};

template <bool FP8>
__global__ void __launch_bounds__(SC_THREADS) msa_score_kernel(const char *idx, long long istride, int B,
                                                               const int32_t *tables, int ts, const int32_t *lens,
                                                               const bf16 *iq, float *scores, int sstride, int local)
{
    typedef ScoreCfg<FP8> C;
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ float red[4][4];
    const int b = blockIdx.y, tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31;
    pdl_trigger();
    const int ncand = (lens[b] + B - 1) / B - local;
    const int n_my = (int)blockIdx.x < ncand ? (ncand - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;

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
        for (int i = tid; i < n_my; i += SC_THREADS) pid[i] = tables[(long long)b * ts + blockIdx.x + (long long)i * gridDim.x];
    __syncthreads();
    const uint32_t base = smem_u32(smem);
    auto load = [&](int i) {
        long long page = pid_smem ? pid[i] : tables[(long long)b * ts + blockIdx.x + (long long)i * gridDim.x];
        const char *src = idx + page * istride;
        uint32_t dst = base + (i % C::STAGES) * C::PAGE;
#pragma unroll
        for (int j = 0; j < C::PAGE / 16 / SC_THREADS; j++) {
            int c = tid + SC_THREADS * j;
            if (FP8) {
                int r = c >> 3, ch = c & 7;
                cp16(dst + r * 128 + ((ch ^ (r & 7)) << 4), src + c * 16);
            } else {
                cp16(dst + swz(c >> 4, c & 15), src + c * 16);
            }
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
            scores[((long long)b * 4 + tid) * sstride + blockIdx.x + (long long)i * gridDim.x] = m;
        }
    }
    cp_wait<0>();
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

/* Sparse decode workspace: scores, selection, rewritten tables, lengths,
 * then the split-KV partials for a selection of W pages. */
static size_t sparse_ws(const cattn_pool *p, int batch, int n_heads, int max_len, int W, size_t *off)
{
    int rows = batch * p->n_kv_heads;
    int nblk = (max_len + p->block_size - 1) / p->block_size;
    size_t o = 0;
    off[0] = o; o += align256((size_t)rows * nblk * sizeof(float));
    off[1] = o; o += align256((size_t)rows * W * sizeof(int32_t));
    off[2] = o; o += align256((size_t)rows * W * sizeof(int32_t));
    off[3] = o; o += align256((size_t)rows * sizeof(int32_t));
    off[5] = o; o += align256((size_t)rows * sizeof(int32_t));
    off[4] = o; o += dec_ws(batch, n_heads, p->n_kv_heads, W * p->block_size, 1);
    return o;
}

extern "C" size_t cattn_msa_decode_ws(const cattn_pool *p, int batch, int n_heads, int max_len, int top_k,
                                      int local)
{
    size_t off[6];
    return sparse_ws(p, batch, n_heads, max_len, top_k + local, off);
}

extern "C" size_t cattn_quest_decode_ws(const cattn_pool *p, int batch, int n_heads, int max_len, int top_k,
                                        int local, int sink)
{
    size_t off[6];
    return sparse_ws(p, batch, n_heads, max_len, sink + top_k + local, off);
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
    size_t off[6];
    if (ws_bytes < sparse_ws(p, b->batch, n_heads, b->max_len, W, off)) return CATTN_EWORKSPACE;
    char *w = (char *)ws;
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
                scores, nblk, local);
        else
            msa_score_kernel<false><<<grid, SC_THREADS, ScoreCfg<false>::SMEM, st>>>(
                (const char *)p->idx, p->idx_stride, B, b->tables, b->table_stride, b->lens, (const bf16 *)iq,
                scores, nblk, local);
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
