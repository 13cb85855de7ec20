/* attn_flash: the pieces cattn_flash's two kernels share (private to
 * engine/cuda): 32-key K/V tiles loaded from bf16 or fp8 pages into shared
 * memory, and one such tile's step of the flash-attention online softmax
 * for a warp's 16 query rows on mma.sync. */
#ifndef SPARSED_ATTN_FLASH_CUH
#define SPARSED_ATTN_FLASH_CUH

#include "attn_util.cuh"
#include "cuda_attn.h"

#define FL_ROWS 64
#define FL_KT 32

/* Byte offset of 16-byte chunk c of row r in a tile of D-dim bf16 rows,
 * swizzled within each 8 chunks so ldmatrix reads hit 8 banks apart. */
template <int D> static __device__ __forceinline__ uint32_t fswz(int r, int c)
{
    return (uint32_t)(r * (2 * D) + ((c ^ (r & 7)) << 4));
}

/* K and V rows key0 .. key0+31 of KV head g into a stage (zeros past
 * key_end: the next block, or past the table). */
template <int D>
static __device__ __forceinline__ void fl_load(const cattn_flash_args &a, const int32_t *tbl, int g, int key0,
                                               int key_end, uint32_t dst)
{
    constexpr int CH = D / 8;
#pragma unroll
    for (int i = 0; i < FL_KT * CH / 128; i++) {
        const int c = threadIdx.x + 128 * i, r = c / CH, ch = c % CH, key = key0 + r;
        const bool ok = key <= key_end;
        long long off = 0;
        if (ok) off = (long long)tbl[key / a.B] * a.page_bytes + ((long long)g * a.B + key % a.B) * (2 * D) + ch * 16;
        cp16(dst + fswz<D>(r, ch), a.k + off, ok);
        cp16(dst + FL_KT * 2 * D + fswz<D>(r, ch), a.v + off, ok);
    }
}

/* The same from fp8 pages (cuda_attn.h's layout), widened to bf16 on the
 * way (exact: an e4m3 value times its power-of-two scale is a bf16
 * value).  Plain loads and stores: the stage is read after the loop's
 * next barrier.  Keys come in pairs (B and key0 even), as V rows do. */
template <int D>
static __device__ __forceinline__ void fl_load8(const cattn_flash_args &a, const int32_t *tbl, int g, int key0,
                                                int key_end, unsigned char *dst)
{
    const uint4 z = make_uint4(0u, 0u, 0u, 0u);
    unsigned char *vdst = dst + FL_KT * 2 * D;
    for (int c = threadIdx.x; c < FL_KT * D / 16; c += 128) { /* K: row r, dims 16 ch .. */
        const int r = c / (D / 16), ch = c % (D / 16), key = key0 + r;
        uint4 lo = z, hi = z;
        if (key <= key_end) {
            const long long page = tbl[key / a.B];
            const int slot = key % a.B;
            const float sk = ((const float *)(a.kvs + page * a.page_bytes))[(g * 2) * a.B + slot];
            kv8_k_chunk(*(const uint4 *)(a.k + page * a.page_bytes + ((long long)g * a.B + slot) * D + ch * 16), sk,
                        lo, hi);
        }
        *(uint4 *)(dst + fswz<D>(r, 2 * ch)) = lo;
        *(uint4 *)(dst + fswz<D>(r, 2 * ch + 1)) = hi;
    }
    for (int c = threadIdx.x; c < FL_KT / 2 * D / 8; c += 128) { /* V: pair row of keys r0, r0 + 1, dims 8 ch .. */
        const int r0 = 2 * (c / (D / 8)), ch = c % (D / 8), key = key0 + r0;
        uint4 o0 = z, o1 = z;
        if (key <= key_end) {
            const long long page = tbl[key / a.B];
            const int slot = key % a.B;
            const float *sv = (const float *)(a.kvs + page * a.page_bytes) + (g * 2 + 1) * a.B + slot;
            kv8_v_chunk(*(const uint4 *)(a.v + page * a.page_bytes + (long long)g * a.B * D + (long long)slot * D +
                                         ch * 16),
                        sv[0], sv[1], o0, o1);
            if (key + 1 > key_end) o1 = z;
        }
        *(uint4 *)(vdst + fswz<D>(r0, ch)) = o0;
        *(uint4 *)(vdst + fswz<D>(r0 + 1, ch)) = o1;
    }
}

template <int D, bool F8>
static __device__ __forceinline__ void fl_stage(const cattn_flash_args &a, const int32_t *tbl, int g, int key0,
                                                int key_end, unsigned char *smem, uint32_t dst)
{
    if (F8)
        fl_load8<D>(a, tbl, g, key0, key_end, smem + (dst - smem_u32(smem)));
    else
        fl_load<D>(a, tbl, g, key0, key_end, dst);
}

/* acc[0 .. 2 N) += A B^T over the whole head dim: A a warp's 16 rows from
 * row q_row0 of tile qs, B the 8 N rows of tile ks (fswz<D> rows both). */
template <int D, int N>
static __device__ __forceinline__ void fl_mma_abt(float (&acc)[2 * N][4], uint32_t qs, int q_row0, uint32_t ks)
{
    const int lane = threadIdx.x & 31;
    const int a_row = q_row0 + (lane & 7) + ((lane >> 3) & 1) * 8, a_cb = lane >> 4;
    const int k_row = (lane >> 4) * 8 + (lane & 7), k_cb = (lane >> 3) & 1;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        uint32_t qa[4];
        ldsm4(qa, qs + fswz<D>(a_row, 2 * kk + a_cb));
#pragma unroll
        for (int np = 0; np < N; np++) {
            uint32_t b[4];
            ldsm4(b, ks + fswz<D>(16 * np + k_row, 2 * kk + k_cb));
            mma16816(acc[2 * np], qa, b[0], b[1]);
            mma16816(acc[2 * np + 1], qa, b[2], b[3]);
        }
    }
}

/* One 32-key tile for a warp's 16 rows: scores on the tensor cores, scale
 * (or soft cap), masks (a key past the row's position rpos, before its
 * window start rlo, or past key_hi), the online softmax, O += P V.  qs is
 * the Q tile and q_row0 the warp's first row in it; ks/vs the tile's K and
 * V (fswz<D> rows); the thread's rows are q_row0 + lane / 4 and + 8. */
template <int D>
static __device__ __forceinline__ void fl_keys32(uint32_t qs, int q_row0, uint32_t ks, uint32_t vs, int key0,
                                                 int key_hi, const int (&rpos)[2], const int (&rlo)[2], float scale,
                                                 float softcap, float (&o)[D / 8][4], float (&m)[2], float (&l)[2])
{
    constexpr int NT = D / 8;
    const int lane = threadIdx.x & 31;
    const int v_row = ((lane >> 3) & 1) * 8 + (lane & 7), v_cb = lane >> 4;
    const float sl = scale * LOG2E_F;
    float s[4][4];
#pragma unroll
    for (int n = 0; n < 4; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
    fl_mma_abt<D, 2>(s, qs, q_row0, ks);
#pragma unroll
    for (int h = 0; h < 2; h++) {
        float mx = NEG_INF;
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int key = key0 + 8 * n + 2 * (lane & 3) + e;
                float v = s[n][2 * h + e];
                if (softcap > 0.f) v = softcap * tanhf(v * scale / softcap) * LOG2E_F;
                else v *= sl;
                if (key > rpos[h] || key < rlo[h] || key > key_hi) v = NEG_INF;
                s[n][2 * h + e] = v;
                mx = fmaxf(mx, v);
            }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float mnew = fmaxf(m[h], mx), base = mnew == NEG_INF ? 0.f : mnew;
        const float corr = exp2f(m[h] - base);
        m[h] = mnew;
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const float p = exp2f(s[n][2 * h + e] - base);
                s[n][2 * h + e] = p;
                sum += p;
            }
        l[h] = l[h] * corr + sum;
#pragma unroll
        for (int n = 0; n < NT; n++) {
            o[n][2 * h] *= corr;
            o[n][2 * h + 1] *= corr;
        }
    }
#pragma unroll
    for (int kk = 0; kk < 2; kk++) {
        uint32_t pa[4];
        pa[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
        pa[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
        pa[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        pa[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int dp = 0; dp < D / 16; dp++) {
            uint32_t b[4];
            ldsm4t(b, vs + fswz<D>(16 * kk + v_row, 2 * dp + v_cb));
            mma16816(o[2 * dp], pa, b[0], b[1]);
            mma16816(o[2 * dp + 1], pa, b[2], b[3]);
        }
    }
}

/* The rows' sums over the quad that shares them (each lane summed its own
 * columns). */
static __device__ __forceinline__ float fl_quad_sum(float v)
{
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

/* The card's SMs (132 when it cannot be asked). */
static int fl_sms(void)
{
    static int sms = 0;
    int dev = 0;
    if (!sms && (cudaGetDevice(&dev) != cudaSuccess ||
                 cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)) {
        cudaGetLastError();
        sms = 0;
        return 132;
    }
    return sms;
}

#endif
