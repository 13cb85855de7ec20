/* Device kernels of the CUDA backend (private to engine/cuda): embedding,
 * RMSNorm, the per-head Q/K/V/index post-processing (bias, QK norm, RoPE,
 * page writes), key summaries, block selection, a generic paged attention,
 * SwiGLU and argmax.  Storage type T is bf16 or float; arithmetic is fp32.
 * Kept simple and general (any head dim up to 1024, any block size): the
 * tuned attention for the common shapes is in cuda_attn.h. */
#ifndef SPARSED_CUDA_KERNELS_CUH
#define SPARSED_CUDA_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <stdint.h>

#include "pdl.cuh"
#include "q8.cuh"

typedef __nv_bfloat16 bf16;

#define CK_INF __int_as_float(0x7f800000)

static __device__ __forceinline__ float tof(float x) { return x; }
static __device__ __forceinline__ float tof(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T fromf(float x);
template <> __device__ __forceinline__ float fromf<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 fromf<bf16>(float x) { return __float2bfloat16_rn(x); }

/* fp8 e4m3 index keys (--index-keys fp8): plain e4m3, no scale; stored
 * with round to nearest and saturation to +-448. */
static __device__ __forceinline__ uint8_t to_e4m3(float x)
{
    return (uint8_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
}

static __device__ __forceinline__ float e4m3_tof(uint8_t v)
{
    return __half2float(__half(__nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)v, __NV_E4M3)));
}

/* Element i of a page's index keys, stored as T or as fp8 e4m3. */
template <typename T>
static __device__ __forceinline__ float idx_key(const char *keys, size_t i, int fp8)
{
    return fp8 ? e4m3_tof((uint8_t)keys[i]) : tof(((const T *)keys)[i]);
}

static __device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block (blockDim a multiple of 32, at most 1024). */
static __device__ float block_sum(float v)
{
    __shared__ float sh[32];
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? sh[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0)
            sh[0] = v;
    }
    __syncthreads();
    v = sh[0];
    __syncthreads();
    return v;
}

/* ---- embedding, norms, FFN ------------------------------------------------ */

/* At decode these kernels run on one row or token, where they are pure
 * latency: each thread issues several independent loads before it uses
 * any (loops that waited on each load in turn took 7.3 us for a 2048-float
 * RMSNorm and 28 us for a 32000-logit argmax in the decode graph of an
 * H100, by ncu). */
static constexpr int CK_ILP = 4;

template <typename T>
__global__ void embed_kernel(const T *__restrict__ emb, int E, const int32_t *tok, float scale,
                             float *__restrict__ x)
{
    int t = blockIdx.x;
    const T *row = emb + (size_t)tok[t] * E;
#pragma unroll CK_ILP
    for (int i = threadIdx.x; i < E; i += blockDim.x)
        x[(size_t)t * E + i] = tof(row[i]) * scale;
}

/* out[r] = x[rows ? rows[r] : r] * rsqrt(mean square + eps) * w, one block
 * per row; float4 loads, CK_ILP of them in flight a thread, when E and w
 * allow. */
template <typename T>
__global__ void rmsnorm_kernel(const float *__restrict__ x, const int32_t *rows, const float *__restrict__ w, int E,
                               float eps, T *__restrict__ out)
{
    pdl_trigger();
    pdl_wait();
    int r = blockIdx.x, nt = blockDim.x;
    const float *xr = x + (size_t)(rows ? rows[r] : r) * E;
    T *o = out + (size_t)r * E;
    float ss = 0.0f;
    if (!(E & 3) && !((uintptr_t)xr & 15) && !((uintptr_t)w & 15)) {
        const float4 *x4 = (const float4 *)xr, *w4 = (const float4 *)w;
        const int n4 = E >> 2;
        for (int i0 = threadIdx.x; i0 < n4; i0 += CK_ILP * nt) {
            float4 v[CK_ILP];
#pragma unroll
            for (int k = 0; k < CK_ILP; k++)
                v[k] = i0 + k * nt < n4 ? x4[i0 + k * nt] : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int k = 0; k < CK_ILP; k++)
                ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
        }
        ss = block_sum(ss);
        const float inv = 1.0f / sqrtf(ss / (float)E + eps);
        for (int i0 = threadIdx.x; i0 < n4; i0 += CK_ILP * nt) {
            float4 v[CK_ILP], g[CK_ILP];
#pragma unroll
            for (int k = 0; k < CK_ILP; k++)
                if (i0 + k * nt < n4) {
                    v[k] = x4[i0 + k * nt];
                    g[k] = w4[i0 + k * nt];
                }
#pragma unroll
            for (int k = 0; k < CK_ILP; k++) {
                const int i = 4 * (i0 + k * nt);
                if (i < E) {
                    o[i] = fromf<T>(v[k].x * inv * g[k].x);
                    o[i + 1] = fromf<T>(v[k].y * inv * g[k].y);
                    o[i + 2] = fromf<T>(v[k].z * inv * g[k].z);
                    o[i + 3] = fromf<T>(v[k].w * inv * g[k].w);
                }
            }
        }
        return;
    }
#pragma unroll CK_ILP
    for (int i = threadIdx.x; i < E; i += nt)
        ss += xr[i] * xr[i];
    ss = block_sum(ss);
    float inv = 1.0f / sqrtf(ss / (float)E + eps);
#pragma unroll CK_ILP
    for (int i = threadIdx.x; i < E; i += nt)
        o[i] = fromf<T>(xr[i] * inv * w[i]);
}

/* ---- matrix-vector products for decode ------------------------------------
 * out[t][r] = beta * out[t][r] + W[r] . x[t] for T <= GEMV_T tokens, one
 * warp per output row, fp32 accumulation.  At decode cuBLASLt's kernels
 * read the weights at ~2.1 TB/s on an H100 (read rate 2.9) and split the
 * down projection's K into a second kernel; this reads each row in 16-byte
 * chunks with GEMV_U of them in flight a lane.  Past 2 tokens cuBLASLt wins
 * (H100, 0.5B Llama: 4 tokens 5,410 tok/s here against 6,190).  The
 * caller checks that rows of W and x start 16-byte aligned. */
#define GEMV_T 2
#define GEMV_U 4
#define GEMV_WARPS 8

static __device__ __forceinline__ void unpack8(const uint4 &v, float (&f)[8], const bf16 *)
{
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}
static __device__ __forceinline__ void unpack8(const uint4 &v, float (&f)[8], const float *)
{
    f[0] = __uint_as_float(v.x), f[1] = __uint_as_float(v.y), f[2] = __uint_as_float(v.z),
    f[3] = __uint_as_float(v.w);
    f[4] = f[5] = f[6] = f[7] = 0.0f;
}

template <typename T, int NT>
__global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_kernel(const T *__restrict__ W, int rows, int cols,
                                                                const T *__restrict__ x, float *out, int ldo,
                                                                float beta)
{
    constexpr int PER = 16 / sizeof(T); /* elements in a 16-byte chunk */
    const int lane = threadIdx.x & 31, r = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    const uint4 *w4 = (const uint4 *)(W + (size_t)r * cols);
    const int n16 = r < rows ? cols / PER : 0;
    pdl_trigger();
    /* the weights are no earlier kernel's output: the first chunks load
     * while the predecessor finishes */
    uint4 wv[GEMV_U];
#pragma unroll
    for (int u = 0; u < GEMV_U; u++)
        if (lane + 32 * u < n16)
            wv[u] = __ldcs(w4 + lane + 32 * u); /* read once: streamed past L2 */
    pdl_wait();
    if (r >= rows)
        return;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
    for (int c0 = lane; c0 < n16; c0 += 32 * GEMV_U) {
        if (c0 != lane)
#pragma unroll
            for (int u = 0; u < GEMV_U; u++)
                if (c0 + 32 * u < n16)
                    wv[u] = __ldcs(w4 + c0 + 32 * u);
#pragma unroll
        for (int u = 0; u < GEMV_U; u++) {
            const int c = c0 + 32 * u;
            if (c >= n16)
                break;
            float wf[8];
            unpack8(wv[u], wf, (const T *)0);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                float xf[8];
                unpack8(__ldg((const uint4 *)(x + (size_t)t * cols) + c), xf, (const T *)0);
#pragma unroll
                for (int i = 0; i < PER; i++)
                    acc[t] = fmaf(wf[i], xf[i], acc[t]);
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float v = warp_sum(acc[t]);
        if (lane == 0) {
            float *o = out + (size_t)t * ldo + r;
            *o = beta != 0.0f ? beta * *o + v : v;
        }
    }
}

static __device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }
/* Gemma's gate: GELU, tanh-approximated */
static __device__ __forceinline__ float gelu_mul(float g, float u)
{
    return 0.5f * g * (1.0f + tanhf(0.7978845608f * (g + 0.044715f * g * g * g))) * u;
}
template <int GELU>
static __device__ __forceinline__ float gate_mul(float g, float u) { return GELU ? gelu_mul(g, u) : silu_mul(g, u); }
static __device__ __forceinline__ void store4(float *p, float a, float b, float c, float d)
{
    *(float4 *)p = make_float4(a, b, c, d);
}
static __device__ __forceinline__ void store4(bf16 *p, float a, float b, float c, float d)
{
    __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
    uint2 v;
    v.x = *(uint32_t *)&lo;
    v.y = *(uint32_t *)&hi;
    *(uint2 *)p = v;
}

/* h[t][j] = silu(gu[t][j]) * gu[t][F + j] (GELU: gelu): grid (column blocks, tokens),
 * four columns a thread where F % 4 == 0 (16-byte loads of each half, the
 * four outputs stored together; a flat loop with a 64-bit divide per
 * element read 2.2 TB/s at 8192 tokens of F = 5632 on an H200). */
template <typename T, int GELU>
__global__ void swiglu_kernel(const float *gu, int F, int n_tok, T *h)
{
    pdl_trigger();
    pdl_wait();
    const int step = gridDim.x * blockDim.x, j0 = blockIdx.x * blockDim.x + threadIdx.x;
    for (int t = blockIdx.y; t < n_tok; t += gridDim.y) {
        const float *g = gu + (size_t)t * 2 * F, *u = g + F;
        T *o = h + (size_t)t * F;
        if (!(F & 3)) {
            for (int j = j0; j < F >> 2; j += step) {
                const float4 a = ((const float4 *)g)[j], b = ((const float4 *)u)[j];
                store4(o + 4 * j, gate_mul<GELU>(a.x, b.x), gate_mul<GELU>(a.y, b.y), gate_mul<GELU>(a.z, b.z),
                       gate_mul<GELU>(a.w, b.w));
            }
        } else {
            for (int j = j0; j < F; j += step)
                o[j] = fromf<T>(gate_mul<GELU>(g[j], u[j]));
        }
    }
}

/* x[r] += rmsnorm(y[r]) * w, one block per row: Gemma's norm of a
 * sublayer's output before its residual add. */
__global__ void norm_add_kernel(const float *__restrict__ y, const float *__restrict__ w, int E, float eps,
                                float *__restrict__ x)
{
    pdl_trigger();
    pdl_wait();
    const float *yr = y + (size_t)blockIdx.x * E;
    float *xr = x + (size_t)blockIdx.x * E;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < E; i += blockDim.x)
        ss += yr[i] * yr[i];
    ss = block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)E + eps);
    for (int i = threadIdx.x; i < E; i += blockDim.x)
        xr[i] += yr[i] * inv * w[i];
}

/* v = cap * tanh(v / cap) over n values: a soft cap on the logits. */
__global__ void softcap_kernel(float *v, size_t n, float cap)
{
    pdl_trigger();
    pdl_wait();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        v[i] = cap * tanhf(v[i] / cap);
}

/* Per row, the first index of the largest value (NaN never wins). */
#define ARGMAX_T 1024
__global__ void __launch_bounds__(ARGMAX_T) argmax_kernel(const float *__restrict__ logits, int V, int32_t *ids)
{
    pdl_trigger();
    pdl_wait();
    __shared__ float sv[32];
    __shared__ int si[32];
    const float *x = logits + (size_t)blockIdx.x * V;
    const int nt = blockDim.x;
    float bv = -CK_INF;
    int bi = INT_MAX;
    for (int i0 = threadIdx.x; i0 < V; i0 += 2 * CK_ILP * nt) {
        float v[2 * CK_ILP];
#pragma unroll
        for (int k = 0; k < 2 * CK_ILP; k++)
            v[k] = i0 + k * nt < V ? x[i0 + k * nt] : -CK_INF;
#pragma unroll
        for (int k = 0; k < 2 * CK_ILP; k++) {
            const int i = i0 + k * nt;
            if (i < V && (v[k] > bv || (v[k] == bv && i < bi))) {
                bv = v[k];
                bi = i;
            }
        }
    }
    for (int o = 16; o; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
        sv[w] = bv;
        si[w] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int k = 1; k < (int)(blockDim.x >> 5); k++)
            if (sv[k] > bv || (sv[k] == bv && si[k] < bi)) {
                bv = sv[k];
                bi = si[k];
            }
        ids[blockIdx.x] = bi == INT_MAX ? 0 : bi;
    }
}

/* ---- Q/K/V post-processing ------------------------------------------------ */

struct PostArgs {
    const float *qkv;           /* [T][ld]: Q, K, V, index queries, index key */
    int ld;
    const int32_t *pos, *tab, *tables;
    const float *rope_freq;
    float rope_mscale;
    int rope_dim, neox;
    int Hq, Hkv, D, idx_heads, idx_dim, has_idx, idx_fp8, kv_fp8;
    const float *q_bias, *k_bias, *v_bias, *q_norm, *k_norm, *iq_norm, *ik_norm;
    float eps;
    void *q, *iq;               /* [T][Hq][D], [T][idx_heads][idx_dim] */
    char *k, *v, *idx;          /* this layer's arrays in page 0 */
    char *kvs;                  /* ... and its K/V row scales when kv_fp8 */
    long long pb;               /* bytes from one page to the next */
    int B;
};

/* Byte of element d of key slot s in an fp8 page's V rows of dim D: keys
 * 2j and 2j+1 interleaved by dim (cuda_attn.h). */
static __device__ __forceinline__ size_t v8_at(int s, int d, int D)
{
    return (size_t)(s & ~1) * D + 2 * d + (s & 1);
}

/* The scale of an fp8 K/V row: the power of two that takes its largest
 * |element| to at most 448 (e4m3's largest finite value), so that
 * dividing by it is exact and only the e4m3 rounding loses bits. */
static __device__ __forceinline__ float kv_row_scale(float amax)
{
    int ex = 0;
    if (amax > 0.0f)
        frexpf(amax / 448.0f, &ex);
    return ldexpf(1.0f, ex);
}

/* Grid (tokens, head vectors / 8), one warp per head vector: bias, RMSNorm
 * over the head, RoPE on the first rope_dim dims (adjacent or NEOX pairs),
 * then the store (queries to the activations, keys/values/index key to the
 * page; the index key in fp8 e4m3 when idx_fp8; with kv_fp8 a key or value
 * row is finished in the scratch first, then stored in e4m3 over its
 * kv_row_scale, the scale beside it).  The vectors spread over
 * blocks so that a decode token's ~30 run at once, not 4 to a warp. */
template <typename T>
__global__ void __launch_bounds__(256) qkv_post_kernel(PostArgs a)
{
    pdl_trigger();
    pdl_wait();
    extern __shared__ float post_sm[];
    int t = blockIdx.x, w = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    int maxd = a.D > a.idx_dim ? a.D : a.idx_dim;
    float *s = post_sm + (size_t)w * maxd;
    int pos = a.pos[t];
    long long page = a.tables[a.tab[t] + pos / a.B];
    int slot = pos % a.B;
    int D = a.D, QD = a.Hq * D, KD = a.Hkv * D, IQ = a.idx_heads * a.idx_dim;
    int nu = a.Hq + 2 * a.Hkv + (a.has_idx ? a.idx_heads + 1 : 0);
    const float *row = a.qkv + (size_t)t * a.ld;
    int half = a.rope_dim / 2;
    /* the token's rotations, once for the block's vectors (after the
     * warps' scratch): sincosf of a large angle takes a slow path */
    float *rc = post_sm + (size_t)nw * maxd, *rs = rc + half;
    for (int p = threadIdx.x; p < half; p += blockDim.x)
    {
        float sn, cs;
        sincosf((float)pos * a.rope_freq[p], &sn, &cs);
        rs[p] = sn * a.rope_mscale;
        rc[p] = cs * a.rope_mscale;
    }
    __syncthreads();
    for (int u = blockIdx.y * nw + w; u < nu; u += gridDim.y * nw) {
        const float *src, *bias = NULL, *nrm = NULL;
        int n = D, rope = 1;
        T *dst = NULL;
        uint8_t *dst8 = NULL;
        float *dsc = NULL;          /* an fp8 K/V row's scale */
        int step8 = 1;              /* bytes between an fp8 K/V row's elements */
        if (u < a.Hq) {
            src = row + (size_t)u * D;
            bias = a.q_bias ? a.q_bias + (size_t)u * D : NULL;
            nrm = a.q_norm;
            dst = (T *)a.q + (size_t)t * QD + (size_t)u * D;
        } else if (u < a.Hq + a.Hkv) {
            int h = u - a.Hq;
            src = row + QD + (size_t)h * D;
            bias = a.k_bias ? a.k_bias + (size_t)h * D : NULL;
            nrm = a.k_norm;
            if (a.kv_fp8) {
                dst8 = (uint8_t *)(a.k + page * a.pb) + ((size_t)h * a.B + slot) * D;
                dsc = (float *)(a.kvs + page * a.pb) + (size_t)h * 2 * a.B + slot;
            } else {
                dst = (T *)(a.k + page * a.pb) + ((size_t)h * a.B + slot) * D;
            }
        } else if (u < a.Hq + 2 * a.Hkv) {
            int h = u - a.Hq - a.Hkv;
            src = row + QD + KD + (size_t)h * D;
            bias = a.v_bias ? a.v_bias + (size_t)h * D : NULL;
            rope = 0;
            if (a.kv_fp8) { /* V rows in pairs, interleaved by dim: v8_at */
                dst8 = (uint8_t *)(a.v + page * a.pb) + (size_t)h * a.B * D + v8_at(slot, 0, D);
                dsc = (float *)(a.kvs + page * a.pb) + ((size_t)h * 2 + 1) * a.B + slot;
                step8 = 2;
            } else {
                dst = (T *)(a.v + page * a.pb) + ((size_t)h * a.B + slot) * D;
            }
        } else if (u < a.Hq + 2 * a.Hkv + a.idx_heads) {
            int h = u - a.Hq - 2 * a.Hkv;
            n = a.idx_dim;
            src = row + QD + 2 * KD + (size_t)h * n;
            nrm = a.iq_norm;
            dst = (T *)a.iq + (size_t)t * IQ + (size_t)h * n;
        } else {
            n = a.idx_dim;
            src = row + QD + 2 * KD + IQ;
            nrm = a.ik_norm;
            if (a.idx_fp8)
                dst8 = (uint8_t *)(a.idx + page * a.pb) + (size_t)slot * n;
            else
                dst = (T *)(a.idx + page * a.pb) + (size_t)slot * n;
        }
        float ss = 0.0f;
#pragma unroll CK_ILP
        for (int d = lane; d < n; d += 32) {
            float v = src[d] + (bias ? bias[d] : 0.0f);
            s[d] = v;
            ss += v * v;
        }
        ss = warp_sum(ss);
        if (nrm) {
            float r = 1.0f / sqrtf(ss / (float)n + a.eps);
            for (int d = lane; d < n; d += 32)
                s[d] = s[d] * r * nrm[d];
        }
        __syncwarp();
        auto put = [&](int d, float o) {
            if (dsc)
                s[d] = o;   /* a pair's lane reads both before it writes */
            else if (dst8)
                dst8[d] = to_e4m3(o);
            else
                dst[d] = fromf<T>(o);
        };
        /* RoPE a pair a lane (i1 past n: the pair is not rotated); then
         * every dim no pair rotated, as it is */
        const int nrot = rope ? (a.neox ? min(half, n - half) : min(half, n >> 1)) : 0;
        for (int p = lane; p < nrot; p += 32) {
            const int i0 = a.neox ? p : 2 * p, i1 = a.neox ? p + half : 2 * p + 1;
            const float sn = rs[p], c = rc[p], x0 = s[i0], x1 = s[i1];
            put(i0, x0 * c - x1 * sn);
            put(i1, x0 * sn + x1 * c);
        }
#pragma unroll CK_ILP
        for (int d = lane; d < n; d += 32) {
            const int p = a.neox ? (d < half ? d : d - half) : d >> 1;
            if (!(rope && d < a.rope_dim && p < nrot))
                put(d, s[d]);
        }
        __syncwarp();
        if (dsc) {
            float amax = 0.0f;
            for (int d = lane; d < n; d += 32)
                amax = fmaxf(amax, fabsf(s[d]));
            const float sc = kv_row_scale(warp_max(amax)), inv = 1.0f / sc;
            for (int d = lane; d < n; d += 32)
                dst8[d * step8] = to_e4m3(s[d] * inv);
            if (!lane)
                *dsc = sc;
            __syncwarp();
        }
    }
}

/* Key summaries (channel min, max, sum over the page's slots), recomputed
 * from the stored keys (e4m3 times their row scales when kvs is set) for
 * every page a token of the batch filled last: grid (n_fin, Hkv).  Only a
 * full page's summary is ever read (selection scores blocks before the
 * local ones, and local_blocks >= 1 always holds the newest, partial
 * page), so a token that leaves its page partial skips the work: in
 * decode that is 63 steps in 64, each of which read the page's keys
 * back. */
template <typename T>
__global__ void summary_kernel(const int32_t *fin, const int32_t *pos, const int32_t *tab, const int32_t *tables,
                               const char *k, const char *kvs, char *summ, long long pb, int B, int D)
{
    pdl_trigger();
    pdl_wait();
    int t = fin[blockIdx.x], h = blockIdx.y;
    int p = pos[t];
    if (p % B != B - 1)
        return;
    long long page = tables[tab[t] + p / B];
    int n = B;
    const size_t k0 = (size_t)h * B * D;
    const T *K = (const T *)(k + page * pb) + k0;
    const uint8_t *K8 = (const uint8_t *)(k + page * pb) + k0;
    const float *ks = kvs ? (const float *)(kvs + page * pb) + (size_t)h * 2 * B : NULL;
    T *S = (T *)(summ + page * pb) + (size_t)h * 3 * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float mn = CK_INF, mx = -CK_INF, sum = 0.0f;
        for (int s = 0; s < n; s++) {
            float v = ks ? e4m3_tof(K8[(size_t)s * D + d]) * ks[s] : tof(K[(size_t)s * D + d]);
            mn = fminf(mn, v);
            mx = fmaxf(mx, v);
            sum += v;
        }
        S[d] = fromf<T>(mn);
        S[D + d] = fromf<T>(mx);
        S[2 * D + d] = fromf<T>(sum);
    }
}

/* ---- block selection ------------------------------------------------------- */

enum { SEL_MSA = 0, SEL_MINMAX = 1, SEL_MEAN = 2 };

struct SelArgs {
    const void *q, *iq;
    int Hq, Hkv, D, hpg, idx_dim;
    const int32_t *pos, *tab, *tables;
    const char *idx, *summ;
    long long pb;
    int idx_fp8;                /* index keys in fp8 e4m3, else T */
    int B, sink, local, topk, indexer, group_sum, min_ctx;
    float *scores;              /* [T*Hkv][nbmax] */
    int nbmax;
    int32_t *sel, *cnt;         /* [T*Hkv][W], [T*Hkv]; cnt -1 = every block */
    int W;
    int force;                  /* lists even where every block is chosen (tests) */
};

/* Selection follows the CPU's rules (cpu/sparse.c): per (token, KV group)
 * row, sink and local blocks forced, the top_k best of the rest by score
 * (ties to the lower block), listed ascending; when every block would be
 * chosen the count is -1 and attention reads them all (unless forced:
 * then the list names them all).  Two kernels: select_score_kernel scores
 * the candidates in chunks of SEL_CHUNK blocks, a CTA each, so that one
 * decode token still spreads over the card; select_topk_kernel finds the
 * k-th best score of a row by radix select and writes the list. */
#define SEL_CHUNK 64
#define SEL_TOPK_T 256

struct SelRow {
    int t, g, pos, nb, sink, fl, ncand;
    bool lists;                 /* the row gets a list (else cnt -1) */
};

static __device__ __forceinline__ SelRow sel_row(const SelArgs &a, int row)
{
    SelRow r;
    r.t = row / a.Hkv;
    r.g = row % a.Hkv;
    r.pos = a.pos[r.t];
    r.nb = r.pos / a.B + 1;
    r.sink = a.sink < r.nb ? a.sink : r.nb;
    r.fl = r.nb - a.local > 0 ? r.nb - a.local : 0;
    r.ncand = r.fl > r.sink ? r.fl - r.sink : 0;
    r.lists = r.pos + 1 >= a.min_ctx && (r.ncand > a.topk || a.force);
    return r;
}

/* grid (rows, chunks of SEL_CHUNK candidates), 128 threads: a warp a block */
template <typename T>
__global__ void __launch_bounds__(128) select_score_kernel(SelArgs a)
{
    extern __shared__ float sel_sm[];
    const SelRow r = sel_row(a, blockIdx.x);
    const int b0 = r.sink + blockIdx.y * SEL_CHUNK;
    if (!r.lists || b0 >= r.fl)
        return;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, t = r.t, g = r.g;
    const int D = a.D, msa = a.indexer == SEL_MSA;
    const int nq = msa ? 0 : a.group_sum ? 1 : a.hpg;
    float *qs = sel_sm;
    if (msa) {
        const T *iq = (const T *)a.iq + ((size_t)t * a.Hkv + g) * a.idx_dim;
        for (int i = tid; i < a.idx_dim; i += blockDim.x)
            qs[i] = tof(iq[i]);
        if (a.idx_fp8) { /* scored in e4m3 as the tuned kernels do (q8.cuh) */
            __syncthreads();
            float amax = 0.0f;
            for (int i = 0; i < a.idx_dim; i++)
                amax = fmaxf(amax, fabsf(qs[i]));
            const float s8 = q8_scale(amax);
            __syncthreads();
            for (int i = tid; i < a.idx_dim; i += blockDim.x)
                qs[i] = q8_round(qs[i], s8);
        }
    } else {
        /* positive and negative parts of the group's queries, per head or summed */
        const T *q = (const T *)a.q + ((size_t)t * a.Hq + (size_t)g * a.hpg) * D;
        for (int d = tid; d < D; d += blockDim.x) {
            for (int hh = 0; hh < nq; hh++)
                qs[hh * D + d] = qs[(nq + hh) * D + d] = 0.0f;
            for (int h = 0; h < a.hpg; h++) {
                float v = tof(q[(size_t)h * D + d]);
                int hh = nq == 1 ? 0 : h;
                qs[hh * D + d] += v > 0 ? v : 0.0f;
                qs[(nq + hh) * D + d] += v < 0 ? v : 0.0f;
            }
            if (a.indexer == SEL_MEAN)
                for (int hh = 0; hh < nq; hh++)
                    qs[hh * D + d] += qs[(nq + hh) * D + d];
        }
    }
    __syncthreads();

    float *sc = a.scores + (size_t)blockIdx.x * a.nbmax;
    const int32_t *tbl = a.tables + a.tab[t];
    const int b1 = b0 + SEL_CHUNK < r.fl ? b0 + SEL_CHUNK : r.fl;
    for (int b = b0 + w; b < b1; b += 4) {
        long long page = tbl[b];
        float best = -CK_INF;
        if (msa) {
            const char *ik = a.idx + page * a.pb;
            for (int j = lane; j < a.B; j += 32) {
                float v = 0.0f;
                for (int d = 0; d < a.idx_dim; d++)
                    v += qs[d] * idx_key<T>(ik, (size_t)j * a.idx_dim + d, a.idx_fp8);
                best = v > best ? v : best;
            }
            best = warp_max(best);
        } else {
            const T *S = (const T *)(a.summ + page * a.pb) + (size_t)g * 3 * D;
            for (int hh = 0; hh < nq; hh++) {
                float v = 0.0f;
                for (int d = lane; d < D; d += 32)
                    v += a.indexer == SEL_MINMAX
                             ? qs[hh * D + d] * tof(S[D + d]) + qs[(nq + hh) * D + d] * tof(S[d])
                             : qs[hh * D + d] * tof(S[2 * D + d]);
                v = warp_sum(v);
                if (a.indexer == SEL_MEAN)
                    v *= 1.0f / (float)a.B;
                best = v > best ? v : best;
            }
        }
        if (lane == 0)
            sc[b] = isnan(best) ? -CK_INF : best;
    }
}

/* A score as an unsigned key that orders as the floats do. */
static __device__ __forceinline__ uint32_t sel_key(float v)
{
    uint32_t u = __float_as_uint(v);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}

/* Exclusive prefix sum of v over the CTA's SEL_TOPK_T threads (in thread
 * order); *total gets the sum.  Uses sm[SEL_TOPK_T / 32 + 1]. */
static __device__ __forceinline__ int sel_scan(int v, int *sm, int *total)
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int x = v;
    for (int o = 1; o < 32; o <<= 1) {
        int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o)
            x += y;
    }
    if (lane == 31)
        sm[w] = x;
    __syncthreads();
    if (threadIdx.x == 0) {
        int run = 0;
        for (int i = 0; i < SEL_TOPK_T / 32; i++) {
            int c = sm[i];
            sm[i] = run;
            run += c;
        }
        sm[SEL_TOPK_T / 32] = run;
    }
    __syncthreads();
    const int out = sm[w] + x - v;
    *total = sm[SEL_TOPK_T / 32];
    __syncthreads();
    return out;
}

/* One CTA a row.  The k-th largest key, 8 bits a pass; then every block
 * above it, and the lowest-numbered ones equal to it, in block order (each
 * thread owns a contiguous run of candidates, so a prefix sum places them
 * ascending). */
__global__ void __launch_bounds__(SEL_TOPK_T) select_topk_kernel(SelArgs a)
{
    __shared__ int hist[256];
    __shared__ int scan_sm[SEL_TOPK_T / 32 + 1];
    __shared__ uint32_t s_prefix;
    __shared__ int s_need;
    const int row = blockIdx.x, tid = threadIdx.x;
    const SelRow r = sel_row(a, row);
    int32_t *out = a.sel + (size_t)row * a.W;
    if (!r.lists) {
        if (tid == 0)
            a.cnt[row] = -1;
        return;
    }
    const float *sc = a.scores + (size_t)row * a.nbmax + r.sink;
    const int n = r.ncand, k = n < a.topk ? n : a.topk;
    uint32_t prefix = 0, mask = 0;
    int need = k;
    for (int shift = 24; shift >= 0 && k > 0; shift -= 8) {
        for (int i = tid; i < 256; i += SEL_TOPK_T)
            hist[i] = 0;
        __syncthreads();
        for (int i = tid; i < n; i += SEL_TOPK_T) {
            uint32_t key = sel_key(sc[i]);
            if ((key & mask) == prefix)
                atomicAdd(&hist[(key >> shift) & 255], 1);
        }
        __syncthreads();
        if (tid == 0) {
            int above = 0, d = 255;
            for (; d > 0 && above + hist[d] < need; d--)
                above += hist[d];
            s_prefix = prefix | ((uint32_t)d << shift);
            s_need = need - above;
        }
        __syncthreads();
        prefix = s_prefix;
        need = s_need;
        mask |= 255u << shift;
        __syncthreads();
    }
    /* prefix: the k-th key; need: how many equal to it to take */
    const int per = (n + SEL_TOPK_T - 1) / SEL_TOPK_T, i0 = tid * per, i1 = min(n, i0 + per);
    int gt = 0, eq = 0;
    for (int i = i0; i < i1; i++) {
        uint32_t key = sel_key(sc[i]);
        gt += k > 0 && key > prefix;
        eq += k > 0 && key == prefix;
    }
    int total;
    int eq_before = sel_scan(eq, scan_sm, &total);
    int take_eq = min(eq, max(0, need - eq_before));
    int pos = sel_scan(gt + take_eq, scan_sm, &total);
    for (int i = i0; i < i1; i++) {
        uint32_t key = sel_key(sc[i]);
        bool take = k > 0 && (key > prefix || (key == prefix && take_eq > 0));
        if (key == prefix && take_eq > 0 && k > 0)
            take_eq--;
        if (take)
            out[r.sink + pos++] = r.sink + i;
    }
    if (tid == 0) {
        for (int i = 0; i < r.sink; i++)
            out[i] = i;
        int m = r.sink + k;
        for (int b = r.fl > r.sink ? r.fl : r.sink; b < r.nb; b++)   /* (forced lists: a sink block is not local too) */
            out[m++] = b;
        a.cnt[row] = m;
    }
}

/* ---- generic paged attention ---------------------------------------------- */

struct AttnArgs {
    const void *q;
    void *out;
    int T, Hq, Hkv, D, hpg;
    const int32_t *pos, *tab, *tables;
    const char *k, *v;
    const char *kvs;            /* K/V row scales (fp8 e4m3 pages); NULL: K/V in T */
    long long pb;
    int B;
    const int32_t *sel, *cnt;   /* NULL: every visible block */
    int W;
    float scale;
    float softcap;              /* scores capped as softcap * tanh(s / softcap); 0: not */
    int window;                 /* a token sees its last `window` positions; 0: all */
};

/* One warp per (token, query head): 32 keys at a time, one per lane, with an
 * online softmax; the lanes then share the 32 probabilities to update the
 * output, which they own by dimension. */
template <typename T>
__global__ void __launch_bounds__(128) attn_kernel(AttnArgs a)
{
    extern __shared__ float attn_sm[];
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int item = blockIdx.x * 4 + w;
    if (item >= a.T * a.Hq)
        return;
    int D = a.D, t = item / a.Hq, h = item % a.Hq, g = h / a.hpg;
    float *qs = attn_sm + (size_t)w * (2 * D + 32), *acc = qs + D, *ps = acc + D;
    const T *qp = (const T *)a.q + (size_t)item * D;
    for (int d = lane; d < D; d += 32) {
        qs[d] = tof(qp[d]);
        acc[d] = 0.0f;
    }
    __syncwarp();
    int pos = a.pos[t], last = pos / a.B;
    const int32_t *tbl = a.tables + a.tab[t];
    int lo = a.window && pos >= a.window ? pos - a.window + 1 : 0;  /* first visible position */
    int n = last + 1 - lo / a.B;
    const int32_t *lst = NULL;
    if (a.sel) {
        int c = a.cnt[t * a.Hkv + g];
        if (c >= 0) {
            n = c;
            lst = a.sel + ((size_t)t * a.Hkv + g) * a.W;
        }
    }
    float m = -CK_INF, l = 0.0f;
    for (int k = 0; k < n; k++) {
        int bi = lst ? lst[k] : lo / a.B + k;
        long long page = tbl[bi];
        const size_t ho = (size_t)g * a.B * D;
        const T *K = (const T *)(a.k + page * a.pb) + ho, *V = (const T *)(a.v + page * a.pb) + ho;
        const uint8_t *K8 = (const uint8_t *)(a.k + page * a.pb) + ho, *V8 = (const uint8_t *)(a.v + page * a.pb) + ho;
        const float *ks = a.kvs ? (const float *)(a.kvs + page * a.pb) + (size_t)g * 2 * a.B : NULL;
        int slots = bi == last ? pos - bi * a.B + 1 : a.B;
        int first = lo > bi * a.B ? lo - bi * a.B : 0;     /* slots before the window stay out */
        /* from the 32 holding `first`: a chunk with no visible key would
         * make the running max -inf - -inf */
        for (int s0 = first & ~31; s0 < slots; s0 += 32) {
            int s = s0 + lane;
            float sc = -CK_INF;
            if (s < slots && s >= first) {
                float dot = 0.0f;
                if (ks) {
                    for (int d = 0; d < D; d++)
                        dot += qs[d] * e4m3_tof(K8[(size_t)s * D + d]);
                    dot *= ks[s];
                } else {
                    for (int d = 0; d < D; d++)
                        dot += qs[d] * tof(K[(size_t)s * D + d]);
                }
                sc = dot * a.scale;
                if (a.softcap > 0.0f)
                    sc = a.softcap * tanhf(sc / a.softcap);
            }
            float nm = fmaxf(m, warp_max(sc));
            float corr = expf(m - nm);
            float p = s < slots && s >= first ? expf(sc - nm) : 0.0f;
            l = l * corr + warp_sum(p);
            ps[lane] = ks && s < slots ? p * ks[a.B + s] : p;   /* a value row's scale rides on its weight */
            __syncwarp();
            int nj = slots - s0 < 32 ? slots - s0 : 32;
            for (int d = lane; d < D; d += 32) {
                float av = acc[d] * corr;
                if (ks)
                    for (int j = 0; j < nj; j++)
                        av += ps[j] * e4m3_tof(V8[v8_at(s0 + j, d, D)]);
                else
                    for (int j = 0; j < nj; j++)
                        av += ps[j] * tof(V[(size_t)(s0 + j) * D + d]);
                acc[d] = av;
            }
            __syncwarp();
            m = nm;
        }
    }
    T *o = (T *)a.out + (size_t)item * D;
    float inv = 1.0f / l;
    for (int d = lane; d < D; d += 32)
        o[d] = fromf<T>(acc[d] * inv);
}

#endif
