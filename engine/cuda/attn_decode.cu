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
 * One warp per candidate page: 128 index keys against the 4 groups' index
 * queries, fp32 dots by FFMA (the kernel is bound by reading the keys).
 * bf16: 16 lanes per key (8 dims each); fp8: 8 lanes per key (16 dims).
 * The four dot products of a key are reduce-scattered over its lanes so
 * that each lane ends with the full dot of one group. */

static __device__ __forceinline__ float rs4(float a0, float a1, float a2, float a3, int lane, int x1, int x2)
{
    bool up1 = lane & x1;
    float s0 = up1 ? a0 : a2, s1 = up1 ? a1 : a3;
    float k0 = up1 ? a2 : a0, k1 = up1 ? a3 : a1;
    k0 += __shfl_xor_sync(0xffffffffu, s0, x1);
    k1 += __shfl_xor_sync(0xffffffffu, s1, x1);
    bool up2 = lane & x2;
    float sx = up2 ? k0 : k1, kx = up2 ? k1 : k0;
    return kx + __shfl_xor_sync(0xffffffffu, sx, x2);
}

template <bool FP8>
__global__ void __launch_bounds__(256) msa_score_kernel(const char *idx, long long istride, int B,
                                                        const int32_t *tables, int ts, const int32_t *lens,
                                                        const bf16 *iq, float *scores, int sstride, int local)
{
    const int b = blockIdx.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int len = lens[b];
    const int ncand = (len + B - 1) / B - local;
    constexpr int DPL = FP8 ? 16 : 8;          /* dims per lane */
    const int chunk = FP8 ? (lane & 7) : (lane & 15);
    float q[4][DPL];
    const bf16 *iqb = iq + (long long)b * 4 * 128;
#pragma unroll
    for (int g = 0; g < 4; g++)
#pragma unroll
        for (int j = 0; j < DPL; j++) q[g][j] = __bfloat162float(iqb[g * 128 + chunk * DPL + j]);

    for (int blk = blockIdx.x * 8 + warp; blk < ncand; blk += gridDim.x * 8) {
        const char *base = idx + (long long)tables[(long long)b * ts + blk] * istride;
        float best = NEG_INF;
        constexpr int TPI = FP8 ? 4 : 2;        /* keys per warp load */
        constexpr int U = 8;
        for (int t0 = 0; t0 < B; t0 += TPI * U) {
            uint4 kv[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                int tok = t0 + u * TPI + (FP8 ? (lane >> 3) : (lane >> 4));
                kv[u] = ((const uint4 *)(base + (long long)tok * (FP8 ? 128 : 256)))[chunk];
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                float acc[4] = {0.f, 0.f, 0.f, 0.f};
                const uint32_t w[4] = {kv[u].x, kv[u].y, kv[u].z, kv[u].w};
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    if (FP8) {
                        float2 f0 = e4m3x2_to_f2((uint16_t)(w[i] & 0xffff));
                        float2 f1 = e4m3x2_to_f2((uint16_t)(w[i] >> 16));
#pragma unroll
                        for (int g = 0; g < 4; g++)
                            acc[g] += f0.x * q[g][4 * i] + f0.y * q[g][4 * i + 1] + f1.x * q[g][4 * i + 2] +
                                      f1.y * q[g][4 * i + 3];
                    } else {
                        float x0 = bf_lo(w[i]), x1 = bf_hi(w[i]);
#pragma unroll
                        for (int g = 0; g < 4; g++) acc[g] += x0 * q[g][2 * i] + x1 * q[g][2 * i + 1];
                    }
                }
                float v;
                if (FP8) {
                    v = rs4(acc[0], acc[1], acc[2], acc[3], lane, 4, 2);
                    v += __shfl_xor_sync(0xffffffffu, v, 1);
                } else {
                    v = rs4(acc[0], acc[1], acc[2], acc[3], lane, 8, 4);
                    v += __shfl_xor_sync(0xffffffffu, v, 2);
                    v += __shfl_xor_sync(0xffffffffu, v, 1);
                }
                best = fmaxf(best, v);
            }
        }
        int g;
        if (FP8) {
            best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, 8));
            best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, 16));
            g = ((lane >> 2) & 1) * 2 + ((lane >> 1) & 1);
            if (lane < 8 && (lane & 1) == 0) scores[((long long)b * 4 + g) * sstride + blk] = best;
        } else {
            best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, 16));
            g = ((lane >> 3) & 1) * 2 + ((lane >> 2) & 1);
            if (lane < 16 && (lane & 3) == 0) scores[((long long)b * 4 + g) * sstride + blk] = best;
        }
    }
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
 * (no sort), then the rewritten page table of the selection. */

static __device__ __forceinline__ uint32_t ord_key(float f)
{
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void __launch_bounds__(512) topk_kernel(const float *scores, int sstride, const int32_t *lens, int B,
                                                   int rows_per_seq, int sink, int top_k, int local, int32_t *sel,
                                                   const int32_t *tables, int ts, int32_t *tab_out, int32_t *len_out)
{
    __shared__ int hist[256];
    __shared__ int s_bin, s_rem, cnt_gt, cnt_eq;
    const int row = blockIdx.x, b = row / rows_per_seq, tid = threadIdx.x;
    const int W = sink + top_k + local;
    const int len = lens[b];
    const int nblk = (len + B - 1) / B;
    const int c0 = min(sink, nblk), c1 = max(c0, nblk - local), ncand = c1 - c0;
    int32_t *o = sel + (long long)row * W;
    const float *sc = scores + (long long)row * sstride + c0;

    if (tid < sink) o[tid] = tid < c0 ? tid : -1;
    if (tid < local) {
        int blk = nblk - local + tid;
        o[sink + top_k + tid] = blk >= c1 ? blk : -1;
    }
    if (ncand <= top_k) {
        for (int i = tid; i < top_k; i += blockDim.x) o[sink + i] = i < ncand ? c0 + i : -1;
    } else {
        uint32_t prefix = 0, mask = 0;
        int rem = top_k;
        for (int pass = 0; pass < 4; pass++) {
            const int shift = 24 - 8 * pass;
            for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
            __syncthreads();
            for (int i = tid; i < ncand; i += blockDim.x) {
                uint32_t k = ord_key(sc[i]);
                if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255], 1);
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
            mask |= 255u << shift;
            rem = s_rem;
            __syncthreads();
        }
        if (tid == 0) cnt_gt = cnt_eq = 0;
        __syncthreads();
        const int n_gt = top_k - rem;
        for (int i = tid; i < ncand; i += blockDim.x) {
            uint32_t k = ord_key(sc[i]);
            if (k > prefix) {
                o[sink + atomicAdd(&cnt_gt, 1)] = c0 + i;
            } else if (k == prefix) {
                int e = atomicAdd(&cnt_eq, 1);
                if (e < rem) o[sink + n_gt + e] = c0 + i;
            }
        }
    }
    if (!tab_out) return;
    __syncthreads();
    if (tid == 0) {
        int n = 0;
        for (int i = 0; i < W; i++) {
            int blk = o[i];
            if (blk >= 0) tab_out[(long long)row * W + n++] = tables[(long long)b * ts + blk];
        }
        len_out[row] = (n - 1) * B + (len - (nblk - 1) * B);
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

static int dec_splits(int rows, int max_len)
{
    int ntiles = (max_len + DEC_TILE - 1) / DEC_TILE;
    int s = (4 * n_sms() + rows - 1) / rows;
    int cap = (ntiles + DEC_WARPS - 1) / DEC_WARPS;
    if (s > cap) s = cap;
    if (s > 1024) s = 1024;
    return s < 1 ? 1 : s;
}

static size_t dec_ws(int batch, int n_heads, int n_kv, int max_len)
{
    size_t s = (size_t)dec_splits(batch * n_kv, max_len);
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
                      int ls_kvh, int max_len, void *ws, size_t ws_bytes, cudaStream_t st)
{
    static int attr_done = 0;
    if (!attr_done) {
        CUDA_TRY(cudaFuncSetAttribute(decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, DEC_SMEM));
        attr_done = 1;
    }
    int n_kv = p->n_kv_heads;
    int splits = dec_splits(batch * n_kv, max_len);
    if (ws_bytes < dec_ws(batch, n_heads, n_kv, max_len)) return CATTN_EWORKSPACE;
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
    a.B = p->block_size;
    a.n_kv = n_kv;
    a.n_heads = n_heads;
    a.ratio = n_heads / n_kv;
    a.n_splits = splits;
    a.scale_log2 = scale * LOG2E_F;
    dim3 grid(splits, n_kv, batch);
    decode_kernel<<<grid, DEC_WARPS * 32, DEC_SMEM, st>>>(a);
    CUDA_TRY(cudaGetLastError());
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
    return dec_ws(batch, n_heads, p->n_kv_heads, max_len);
}

extern "C" int cattn_decode(const cattn_pool *p, const cattn_batch *b, int n_heads, const void *q, void *out,
                            float scale, void *ws, size_t ws_bytes, void *stream)
{
    int rc = check_pool(p, n_heads);
    if (rc) return rc;
    if (!b || b->batch <= 0 || b->max_len <= 0) return CATTN_EINVAL;
    return decode_run(p, b->batch, n_heads, q, out, scale, b->tables, b->table_stride, 0, b->lens, 1, 0,
                      b->max_len, ws, ws_bytes, (cudaStream_t)stream);
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
    off[4] = o; o += dec_ws(batch, n_heads, p->n_kv_heads, W * p->block_size);
    return o;
}

extern "C" size_t cattn_msa_decode_ws(const cattn_pool *p, int batch, int n_heads, int max_len, int top_k,
                                      int local)
{
    size_t off[5];
    return sparse_ws(p, batch, n_heads, max_len, top_k + local, off);
}

extern "C" size_t cattn_quest_decode_ws(const cattn_pool *p, int batch, int n_heads, int max_len, int top_k,
                                        int local, int sink)
{
    size_t off[5];
    return sparse_ws(p, batch, n_heads, max_len, sink + top_k + local, off);
}

static int sparse_decode(const cattn_pool *p, const cattn_batch *b, int n_heads, const void *q, const void *iq,
                         void *out, float scale, int top_k, int local, int sink, int32_t *sel, void *ws,
                         size_t ws_bytes, cudaStream_t st)
{
    int rc = check_pool(p, n_heads);
    if (rc) return rc;
    if (!b || b->batch <= 0 || b->max_len <= 0 || top_k < 0 || local < 1 || sink < 0) return CATTN_EINVAL;
    const int W = sink + top_k + local, B = p->block_size, n_kv = p->n_kv_heads;
    size_t off[5];
    if (ws_bytes < sparse_ws(p, b->batch, n_heads, b->max_len, W, off)) return CATTN_EWORKSPACE;
    char *w = (char *)ws;
    float *scores = (float *)(w + off[0]);
    int32_t *sel_ws = (int32_t *)(w + off[1]);
    int32_t *tab = (int32_t *)(w + off[2]);
    int32_t *lens = (int32_t *)(w + off[3]);
    const int nblk = (b->max_len + B - 1) / B;
    const int chunks = (nblk + 7) / 8;
    if (iq) {
        if (n_kv != 4 || p->idx_dim != 128 || !p->idx) return CATTN_ESHAPE;
        dim3 grid(chunks < 1024 ? chunks : 1024, b->batch);
        if (p->idx_fp8)
            msa_score_kernel<true><<<grid, 256, 0, st>>>((const char *)p->idx, p->idx_stride, B, b->tables,
                                                         b->table_stride, b->lens, (const bf16 *)iq, scores, nblk,
                                                         local);
        else
            msa_score_kernel<false><<<grid, 256, 0, st>>>((const char *)p->idx, p->idx_stride, B, b->tables,
                                                          b->table_stride, b->lens, (const bf16 *)iq, scores, nblk,
                                                          local);
    } else {
        if (!p->summ) return CATTN_ESHAPE;
        dim3 grid(chunks < 256 ? chunks : 256, n_kv, b->batch);
        quest_score_kernel<<<grid, 256, 0, st>>>((const char *)p->summ, p->summ_stride, B, b->tables,
                                                 b->table_stride, b->lens, (const bf16 *)q, n_heads, n_kv,
                                                 n_heads / n_kv, scores, nblk, local);
    }
    CUDA_TRY(cudaGetLastError());
    topk_kernel<<<b->batch * n_kv, 512, 0, st>>>(scores, nblk, b->lens, B, n_kv, sink, top_k, local,
                                                  sel ? sel : sel_ws, b->tables, b->table_stride, tab, lens);
    CUDA_TRY(cudaGetLastError());
    return decode_run(p, b->batch, n_heads, q, out, scale, tab, (long long)n_kv * W, W, lens, n_kv, 1, W * B,
                      w + off[4], ws_bytes - off[4], st);
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
