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
 * write one partial (normalised O, log2-sum-exp) per head; the last CTA of
 * the row (or a second kernel) merges the splits.
 *
 * Sparse decode on sm_90 skips the rewritten table: after the scoring
 * kernel, one kernel of thread-block clusters selects, decodes and merges
 * (sel_decode_kernel below).
 */
#include <stdlib.h>
#include <string.h>

#include "attn_util.cuh"
#include "cuda_attn.h"
#include "wgmma.cuh"

#ifdef CATTN_SD_PROF /* debug build: per-CTA phase times (globaltimer) of the sparse decode */
__device__ unsigned long long g_sd_prof[2][2048][12]; /* [scoring, sel_decode][cta][stamp] */
static __device__ __forceinline__ void sd_stamp(int k, int cta, int i)
{
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    if (threadIdx.x == 0 && cta < 2048) g_sd_prof[k][cta][i] = t;
}
/* the latest of the CTA's warps */
static __device__ __forceinline__ void sd_stamp_w(int k, int cta, int i)
{
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    if ((threadIdx.x & 31) == 0 && cta < 2048) atomicMax(&g_sd_prof[k][cta][i], t);
}
#define SD_STAMP(k, cta, i) sd_stamp(k, cta, i)
#define SD_STAMP_W(k, cta, i) sd_stamp_w(k, cta, i)
#else
#define SD_STAMP(k, cta, i) ((void)0)
#define SD_STAMP_W(k, cta, i) ((void)0)
#endif
#define SD_CTA ((int)(blockIdx.y * gridDim.x + blockIdx.x))
#define DEC_CTA ((int)((blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x))

#define DEC_WARPS 4
#define DEC_STAGES 2
#define DEC_TILE 32
#define DEC_STAGE_BYTES (2 * DEC_TILE * 256)
#define DEC_SMEM (DEC_WARPS * DEC_STAGES * DEC_STAGE_BYTES)
/* fp8 K/V pages: a warp's stages hold the tile as it is in the page (e4m3
 * K rows and V pair rows, then their 32 + 32 scales), and each lane
 * widens its own mma fragments from it to f16 in registers.  Two CTAs an
 * SM: the widening and the f16 products cost a tile more instructions
 * than bf16's, and one warp a scheduler issues at ~0.3 IPC either way
 * (ncu, v19), so it takes two warps a scheduler to go faster than bf16. */
#define DEC_RAW_BYTES (2 * DEC_TILE * 128 + 2 * DEC_TILE * 4)
#define DEC_WARP_BYTES_FP8 (DEC_STAGES * DEC_RAW_BYTES)
#define DEC_SMEM_FP8 (DEC_WARPS * DEC_WARP_BYTES_FP8)

struct DecArgs {
    const bf16 *q;
    const char *k, *v, *kvs; /* kvs: fp8 pages' scales */
    long long k_stride, v_stride, kvs_stride;
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

/* f16 products (fp8 pages and keys: every e4m3 value is an f16 value) */
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

/* The fp8 tile as it is in the page, into the warp's raw stage: K rows
 * of 128 bytes, V pair rows of 256 (keys 2j and 2j+1 interleaved by dim:
 * cuda_attn.h), then the 32 K and 32 V scales.  Keys at or past L are
 * zeros, but for the second key of a pair whose first is in (dec_tile
 * masks it; scales past L are never read).  The 16-byte chunks of a row
 * are permuted (dec_kpos, dec_vpos) so that dec_tile's fragment loads,
 * 8 lanes a phase over 2 K rows or 4 V pair rows, meet no bank twice. */
static __device__ __forceinline__ int dec_kpos(int r, int ch) { return r * 128 + ((ch ^ ((r & 1) << 2)) << 4); }
static __device__ __forceinline__ int dec_vpos(int r, int ch) { return r * 256 + ((ch ^ ((r & 3) << 1)) << 4); }

static __device__ __forceinline__ void dec_load_fp8(const DecArgs &a, const int32_t *tab, int kvh, int L, int tile,
                                                    uint32_t dst, int lane, int page_known = -1)
{
    const int key0 = tile * DEC_TILE;
    const long long page = page_known >= 0 ? page_known : __ldcg(tab + key0 / a.B);
    const int off = key0 % a.B;
    const char *kp = a.k + page * a.k_stride + (long long)(kvh * a.B + off) * 128;
    const char *vp = a.v + page * a.v_stride + (long long)(kvh * a.B + off) * 128;
    const char *sp = a.kvs + page * a.kvs_stride + ((long long)kvh * 2 * a.B + off) * 4;
#pragma unroll
    for (int i = 0; i < DEC_TILE * 8 / 32; i++) {
        const int c = lane + 32 * i;
        const bool ok = key0 + (c >> 3) < L;
        cp16(dst + dec_kpos(c >> 3, c & 7), kp + c * 16, ok);
        cp16(dst + DEC_TILE * 128 + dec_vpos(c >> 4, c & 15), vp + c * 16, key0 + 2 * (c >> 4) < L);
    }
    if (lane < 16) /* K scales in lanes 0-7, V scales in 8-15: 4 keys each */
        cp16(dst + 2 * DEC_TILE * 128 + lane * 16, sp + (lane >> 3) * a.B * 4 + (lane & 7) * 16,
             key0 + (lane & 7) * 4 < L);
}

/* A warp's decode state: the group's query heads as the A fragments of
 * m16n8k16 tiles (rows >= ratio are zero), the unnormalised output of its
 * 16 rows, their running max and partial sums (log2 domain). */
struct DecState {
    uint32_t qa[8][4];
    float o[16][4];
    float m[2], l[2];
    float vr; /* fp8 pages: o holds the output over vr, the last tile's largest V scale */
};

/* F16: the queries as f16 (fp8 pages' products run on f16), clamped to
 * its range, and in dec_tile's order of the dims for fp8 keys: step
 * kk = 4g + j takes, where the mma puts dims 2t, 2t+1 and 2t+8, 2t+9
 * (t = lane % 4), the dims 64g + 16t + 4j + {0, 1} and {2, 3}, the four
 * bytes a lane finds together in a key row.  Any order of the dims, the
 * same for queries and keys, gives the same dot products. */
template <bool F16 = false>
static __device__ __forceinline__ void dec_init(DecState &st, const bf16 *qb, int ratio, int lane)
{
    const int h_lo = lane >> 2, h_hi = h_lo + 8;
    auto pair = [&](int h, int c) -> uint32_t {
        if (h >= ratio) return 0u;
        const uint32_t w = *(const uint32_t *)(qb + h * 128 + c);
        if (!F16) return w;
        return pack_h2(fminf(fmaxf(bf_lo(w), -65504.f), 65504.f), fminf(fmaxf(bf_hi(w), -65504.f), 65504.f));
    };
#pragma unroll
    for (int kk = 0; kk < 8; kk++) {
        const int c = F16 ? 64 * (kk >> 2) + 16 * (lane & 3) + 4 * (kk & 3) : 16 * kk + 2 * (lane & 3);
        const int c2 = F16 ? c + 2 : c + 8;
        st.qa[kk][0] = pair(h_lo, c);
        st.qa[kk][1] = pair(h_hi, c);
        st.qa[kk][2] = pair(h_lo, c2);
        st.qa[kk][3] = pair(h_hi, c2);
    }
    st.vr = 1.f;
#pragma unroll
    for (int n = 0; n < 16; n++) st.o[n][0] = st.o[n][1] = st.o[n][2] = st.o[n][3] = 0.f;
    st.m[0] = st.m[1] = NEG_INF;
    st.l[0] = st.l[1] = 0.f;
}

/* One 32-key tile (bf16: K at ks, V right after it, swizzled rows) of
 * keys key0.. into the state; keys at or past L are masked.  F16 (fp8
 * pages; ks unused): raw is the tile as loaded (dec_load_fp8), from which
 * each lane widens its fragments in registers: K's with the dims in
 * dec_init's order; V's from the pair rows, whose 4-byte words hold both
 * keys of 2 dims, so the output's dims come in dec_store_row's order.
 * kvsc points at the tile's 32 K then 32 V scales.  Each key's scores take its K scale; its
 * probabilities take its V scale over the tile's largest, vm, which then
 * becomes the state's vr (so the f16 probabilities stay in [0, 1]). */
template <bool F16 = false>
static __device__ __forceinline__ void dec_tile(DecState &st, const uint32_t ks, const int key0, const int L,
                                                const float scale_log2, const int lane, const float *kvsc = nullptr,
                                                const uint32_t raw = 0)
{
    const int k_row = (lane >> 4) * 8 + (lane & 7), k_cb = (lane >> 3) & 1;
    const int v_row = ((lane >> 3) & 1) * 8 + (lane & 7), v_cb = lane >> 4;
    const uint32_t vs = ks + DEC_TILE * 256;
    /* F16: the lane's V words, loaded before K's products so that their
     * latency hides behind them: pair rows 8kk + t (keys 16kk + 2t, +1:
     * b0) and 8kk + 4 + t (b1); chunk 8hf + g holds dims 64hf + 8g .. +7,
     * the lane's dims of output blocks 8hf .. 8hf + 7 */
    uint32_t vw[2][2][2][4]; /* [kk][hf][b0, b1][word] */
    if (F16) {
#pragma unroll
        for (int kk = 0; kk < 2; kk++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++)
#pragma unroll
                for (int b = 0; b < 2; b++)
                    lds128(vw[kk][hf][b], raw + DEC_TILE * 128 + dec_vpos(8 * kk + 4 * b + (lane & 3), 8 * hf + (lane >> 2)));
    }
    auto mma = [](float(&c)[4], const uint32_t(&a)[4], uint32_t b0, uint32_t b1) {
        if (F16) mma16816_f16(c, a, b0, b1);
        else mma16816(c, a, b0, b1);
    };
    float sc[4][4];
#pragma unroll
    for (int n = 0; n < 4; n++) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.f;
    if (F16) {
#pragma unroll
        for (int nb = 0; nb < 4; nb++)
#pragma unroll
            for (int g = 0; g < 2; g++) {
                uint32_t w[4];
                lds128(w, raw + dec_kpos(8 * nb + (lane >> 2), 4 * g + (lane & 3)));
#pragma unroll
                for (int j = 0; j < 4; j++)
                    mma(sc[nb], st.qa[4 * g + j], e4m3x2_to_h2(w[j]), e4m3x2_to_h2(w[j] >> 16));
            }
    } else {
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
#pragma unroll
            for (int np = 0; np < 2; np++) {
                uint32_t bk[4];
                ldsm4(bk, ks + swz(16 * np + k_row, 2 * kk + k_cb));
                mma(sc[2 * np], st.qa[kk], bk[0], bk[1]);
                mma(sc[2 * np + 1], st.qa[kk], bk[2], bk[3]);
            }
        }
    }
    float inv_vm = 1.f, vrel = 1.f; /* F16: 1 / vm, and vr / vm for the output */
    if (F16) {
        float vm = key0 + lane < L ? kvsc[DEC_TILE + lane] : 0.f;
#pragma unroll
        for (int x = 16; x; x >>= 1) vm = fmaxf(vm, __shfl_xor_sync(0xffffffffu, vm, x));
        vm = vm > 0.f ? vm : 1.f;
        inv_vm = 1.f / vm;
        vrel = st.vr * inv_vm;
        st.vr = vm;
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
        float mx = NEG_INF;
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                float v = sc[n][2 * h + e] * scale_log2;
                if (F16) v *= kvsc[8 * n + 2 * (lane & 3) + e];
                if (key0 + 8 * n + 2 * (lane & 3) + e >= L) v = NEG_INF;
                sc[n][2 * h + e] = v;
                mx = fmaxf(mx, v);
            }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        float mnew = fmaxf(st.m[h], mx);
        float base = mnew == NEG_INF ? 0.f : mnew;
        float corr = exp2f(st.m[h] - base);
        st.m[h] = mnew;
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int k = 8 * n + 2 * (lane & 3) + e;
                float p = exp2f(sc[n][2 * h + e] - base);
                sum += p;
                if (F16) p = key0 + k < L ? p * (kvsc[DEC_TILE + k] * inv_vm) : 0.f;
                sc[n][2 * h + e] = p;
            }
        st.l[h] = st.l[h] * corr + sum;
        const float oc = corr * vrel;
#pragma unroll
        for (int n = 0; n < 16; n++) {
            st.o[n][2 * h] *= oc;
            st.o[n][2 * h + 1] *= oc;
        }
    }
    auto pack = [](float lo, float hi) { return F16 ? pack_h2(lo, hi) : pack_bf16(lo, hi); };
#pragma unroll
    for (int kk = 0; kk < 2; kk++) {
        uint32_t pa[4];
        pa[0] = pack(sc[2 * kk][0], sc[2 * kk][1]);
        pa[1] = pack(sc[2 * kk][2], sc[2 * kk][3]);
        pa[2] = pack(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
        pa[3] = pack(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
        if (F16) {
            const int kv0 = key0 + 16 * kk + 2 * (lane & 3), kv1 = kv0 + 8; /* first keys of the two pairs */
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                uint32_t *w0 = vw[kk][hf][0], *w1 = vw[kk][hf][1];
                if (key0 + DEC_TILE > L) { /* the last tile: a pair's second key past L may hold anything */
                    const uint32_t m0 = kv0 + 1 < L ? ~0u : 0x00ff00ffu, m1 = kv1 + 1 < L ? ~0u : 0x00ff00ffu;
#pragma unroll
                    for (int i = 0; i < 4; i++) w0[i] &= m0, w1[i] &= m1;
                }
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    mma(st.o[8 * hf + 2 * i], pa, e4m3x2_to_h2(w0[i]), e4m3x2_to_h2(w1[i]));
                    mma(st.o[8 * hf + 2 * i + 1], pa, e4m3x2_to_h2(w0[i] >> 16), e4m3x2_to_h2(w1[i] >> 16));
                }
            }
        } else {
#pragma unroll
            for (int dp = 0; dp < 8; dp++) {
                uint32_t bv[4];
                ldsm4t(bv, vs + swz(16 * kk + v_row, 2 * dp + v_cb));
                mma(st.o[2 * dp], pa, bv[0], bv[1]);
                mma(st.o[2 * dp + 1], pa, bv[2], bv[3]);
            }
        }
    }
}

/* A lane's output of head row h (0: rows lane / 4, 1: + 8) to row (128
 * floats, shared or another CTA's shared memory).  Column c of output
 * block n is dim 8n + c, or with fp8 pages (F16) dec_tile's order,
 * 64 (n / 8) + 8c + n % 8: there a lane's 16 values of each (n / 8, c)
 * are 8 adjacent dims, two float4 stores. */
template <bool F16>
static __device__ __forceinline__ void dec_store_row(float *row, const DecState &st, int h, int lane)
{
    const int t = lane & 3;
    if (F16) {
#pragma unroll
        for (int hf = 0; hf < 2; hf++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                float4 *d = (float4 *)&row[64 * hf + 8 * (2 * t + e)];
                const int n = 8 * hf, x = 2 * h + e;
                d[0] = make_float4(st.o[n][x], st.o[n + 1][x], st.o[n + 2][x], st.o[n + 3][x]);
                d[1] = make_float4(st.o[n + 4][x], st.o[n + 5][x], st.o[n + 6][x], st.o[n + 7][x]);
            }
    } else {
#pragma unroll
        for (int n = 0; n < 16; n++) *(float2 *)&row[8 * n + 2 * t] = make_float2(st.o[n][2 * h], st.o[n][2 * h + 1]);
    }
}

/* Merges the CTA's warps through shared memory (smem: 33 KB of scratch;
 * the warps' copies must be complete) and writes, per head r < ratio, the
 * normalised output to po + r * po_stride (128 floats) and its log2-sum-exp
 * to plse[r * lse_stride]: global or shared memory alike. */
template <bool F16>
static __device__ __forceinline__ void dec_cta_merge(DecState &st, unsigned char *smem, const int ratio, float *po,
                                                     const long long po_stride, float *plse,
                                                     const long long lse_stride)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h_lo = lane >> 2, h_hi = h_lo + 8;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        st.l[h] += __shfl_xor_sync(0xffffffffu, st.l[h], 1);
        st.l[h] += __shfl_xor_sync(0xffffffffu, st.l[h], 2);
    }
    __syncthreads();
    float *os = (float *)smem;                     /* [warp][16][128] */
    float *ms = os + DEC_WARPS * 16 * 128;         /* [warp][16] */
    float *ls = ms + DEC_WARPS * 16;
    float *ow = os + warp * 16 * 128;
    dec_store_row<F16>(ow + h_lo * 128, st, 0, lane);
    dec_store_row<F16>(ow + h_hi * 128, st, 1, lane);
    if ((lane & 3) == 0) {
        ms[warp * 16 + h_lo] = st.m[0];
        ms[warp * 16 + h_hi] = st.m[1];
        ls[warp * 16 + h_lo] = st.l[0];
        ls[warp * 16 + h_hi] = st.l[1];
    }
    __syncthreads();
    const int r = threadIdx.x >> 3, d0 = (threadIdx.x & 7) * 16;
    if (r < ratio) {
        float M = NEG_INF;
        for (int w = 0; w < DEC_WARPS; w++) M = fmaxf(M, ms[w * 16 + r]);
        float wt[DEC_WARPS], lt = 0.f;
        for (int w = 0; w < DEC_WARPS; w++) {
            wt[w] = M == NEG_INF ? 0.f : exp2f(ms[w * 16 + r] - M);
            lt += wt[w] * ls[w * 16 + r];
        }
        float inv = lt > 0.f ? 1.f / lt : 0.f;
        float *pr = po + r * po_stride + d0;
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
            *(float4 *)&pr[d] = acc;
        }
        if ((threadIdx.x & 7) == 0) plse[r * lse_stride] = lt > 0.f ? M + log2f(lt) : NEG_INF;
    }
}

/* One (split s, KV head, sequence) of the decode, DEC_STAGES tiles per
 * warp in flight; FP8: from e4m3 pages, widened to f16 for the products
 * in registers. */
template <bool FP8>
static __device__ __forceinline__ void dec_body(const DecArgs &a, unsigned char *smem, const int s, const int kvh,
                                                const int b)
{
    constexpr int STAGES = DEC_STAGES;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int32_t *tab = a.tables + b * a.ts_seq + (long long)kvh * a.ts_kvh;
    const int L = a.lens[(long long)b * a.ls_seq + kvh * a.ls_kvh];
    const int ntiles = (L + DEC_TILE - 1) / DEC_TILE;
    const int per = (ntiles + a.n_splits - 1) / a.n_splits;
    const int t0 = s * per, t1 = min(ntiles, t0 + per);

    DecState st;
    dec_init<FP8>(st, a.q + ((long long)b * a.n_heads + kvh * a.ratio) * 128, a.ratio, lane);
    constexpr int SB = FP8 ? DEC_RAW_BYTES : DEC_STAGE_BYTES; /* a stage's bytes */
    const uint32_t wbase = smem_u32(smem) + warp * (FP8 ? DEC_WARP_BYTES_FP8 : STAGES * DEC_STAGE_BYTES);
    const int my_n = t0 + warp < t1 ? (t1 - t0 - warp + DEC_WARPS - 1) / DEC_WARPS : 0;
    auto load = [&](int i) {
        const int tile = t0 + warp + DEC_WARPS * i;
        if (FP8) dec_load_fp8(a, tab, kvh, L, tile, wbase + (i % STAGES) * SB, lane);
        else dec_load(a, tab, kvh, L, tile, wbase + (i % STAGES) * SB, lane);
    };
#pragma unroll
    for (int i = 0; i < STAGES - 1; i++) {
        if (i < my_n) load(i);
        cp_commit();
    }
    for (int i = 0; i < my_n; i++) {
        int nx = i + STAGES - 1;
        if (nx < my_n) load(nx);
        cp_commit();
        cp_wait<STAGES - 1>();
        __syncwarp();
        if (i == 0) SD_STAMP_W(1, DEC_CTA, 1);
        const uint32_t stage = wbase + (i % STAGES) * SB;
        if (FP8) {
            dec_tile<true>(st, 0, (t0 + warp + DEC_WARPS * i) * DEC_TILE, L, a.scale_log2, lane,
                           (const float *)(smem + (stage - smem_u32(smem)) + 2 * DEC_TILE * 128), stage);
        } else {
            dec_tile(st, stage, (t0 + warp + DEC_WARPS * i) * DEC_TILE, L, a.scale_log2, lane);
        }
        __syncwarp();
    }
    cp_wait<0>();
    SD_STAMP_W(1, DEC_CTA, 3);
    if (FP8) /* the output over vr back to scale */
#pragma unroll
        for (int n = 0; n < 16; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) st.o[n][e] *= st.vr;
    const long long prow = ((long long)b * a.n_heads + kvh * a.ratio) * a.n_splits + s;
    dec_cta_merge<FP8>(st, smem, a.ratio, a.part_o + prow * 128, (long long)a.n_splits * 128, a.part_lse + prow,
                  a.n_splits);
    SD_STAMP(1, DEC_CTA, 4);
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

template <bool FP8> __global__ void __launch_bounds__(DEC_WARPS * 32) decode_kernel(DecArgs a)
{
    extern __shared__ __align__(128) unsigned char smem[];
    SD_STAMP(1, DEC_CTA, 0);
    pdl_wait(); /* lens and tables may come from topk_kernel */
    dec_body<FP8>(a, smem, blockIdx.x, blockIdx.y, blockIdx.z);
}

/* Merges the splits of one (sequence, head): 128 threads, one per dim. */
__global__ void __launch_bounds__(128) decode_combine_kernel(const float *part_o, const float *part_lse,
                                                             int n_splits, bf16 *out)
{
    const long long row = blockIdx.x;
    SD_STAMP(0, (int)blockIdx.x, 0);
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
    SD_STAMP(0, (int)blockIdx.x, 1);
}

/* ---- MSA index scoring for decode -----------------------------------------
 * Bound by reading the index keys, so the keys stream through a cp.async
 * pipeline of whole pages (3 stages of 32 KB bf16, or 6 of 16 KB fp8) and
 * the dot products run on tensor cores: the page's keys are the A operand
 * against the four groups' index queries as an n8 B operand (fp8: queries
 * rounded to e4m3 as in prefill; on sm_90a both straight to wgmma
 * m64n8k32 e4m3, elsewhere widened to f16 for mma.sync, each warp taking
 * 32 keys); block maxima are reduced in registers and across the four
 * warps. */

#define SC_THREADS 128
#define SC_MAX_PAGES 512

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
/* A block score, marked evict-last: the selection reads it right after the
 * rest of the index stream (v15: MSA decode 0.5-1 us faster; Quest's
 * scores, a shorter stream, gained nothing). */
static __device__ __forceinline__ void st_score_keep(float *p, float v)
{
    uint64_t pol;
    asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
    asm volatile("st.global.L2::cache_hint.f32 [%0], %1, %2;" ::"l"(p), "f"(v), "l"(pol) : "memory");
}

/* fp8 pages go two to a stage: one pair of barriers per 32 KB as for bf16
 * (v9: per-page overheads held fp8 scoring at 2.2 TB/s against bf16's 2.7). */
template <bool FP8> struct ScoreCfg {
    static constexpr int PAGE = FP8 ? 128 * 128 : 128 * 256;
    static constexpr int PPS = FP8 ? 2 : 1; /* pages per stage */
    static constexpr int STAGES = 3;
    static constexpr int QTILE = PAGE * PPS * STAGES; /* fp8 on wgmma: the e4m3 queries, 8 rows of 128 */
    static constexpr int SMEM = QTILE + (FP8 ? 1024 : 0) + 1024; /* + alignment to 1024 (swizzle) */
};

/* Scores the pages cta, cta + nct, ... (n_my of them) of sequence b: block
 * maxima per group go to scores[(b * 4 + g) * sstride + block].  (Taking
 * pages from a shared counter instead, so that CTAs getting more bandwidth
 * take more, evened out the CTAs' end times but not the kernel's: v9,
 * gpu-notes.md.) */
template <bool FP8>
static __device__ __forceinline__ void msa_score_body(unsigned char *smem, const char *idx, long long istride,
                                                      const int32_t *tables, int ts, const bf16 *iq, int b, int cta,
                                                      int nct, int n_my, float *scores, int sstride,
                                                      bool evict_first)
{
    typedef ScoreCfg<FP8> C;
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    constexpr bool WG = FP8; /* fp8 keys on wgmma m64n8k32 e4m3, no widening (v15) */
#else
    constexpr bool WG = false;
#endif
    __shared__ float red[C::PPS][4][4];
    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31;
    const uint32_t base = (smem_u32(smem) + 1023) & ~1023u, qtile = base + C::QTILE;

    /* this CTA's page ids up front: no table read on the copy path */
    __shared__ int pid[SC_MAX_PAGES];
    const bool pid_smem = n_my <= SC_MAX_PAGES;
    if (pid_smem)
        for (int i = tid; i < n_my; i += SC_THREADS) pid[i] = tables[(long long)b * ts + cta + (long long)i * nct];
    __syncthreads();
    const uint64_t pol = evict_first ? policy_evict_first() : 0;
    /* stage i holds this CTA's pages PPS i .. PPS i + PPS - 1 */
    const int n_st = (n_my + C::PPS - 1) / C::PPS;
    auto load = [&](int i) {
#pragma unroll
        for (int pp = 0; pp < C::PPS; pp++) {
            const int k = C::PPS * i + pp;
            if (k >= n_my) break;
            long long page = pid_smem ? pid[k] : tables[(long long)b * ts + cta + (long long)k * nct];
            const char *src = idx + page * istride;
            uint32_t dst = base + ((i % C::STAGES) * C::PPS + pp) * C::PAGE;
#pragma unroll
            for (int j = 0; j < C::PAGE / 16 / SC_THREADS; j++) {
                int c = tid + SC_THREADS * j;
                uint32_t d = FP8 ? dst + (c >> 3) * 128 + (((c & 7) ^ ((c >> 3) & 7)) << 4) : dst + swz(c >> 4, c & 15);
                if (evict_first) cp16_evict_first(d, src + c * 16, pol);
                else cp16(d, src + c * 16);
            }
        }
    };
#pragma unroll
    for (int i = 0; i < C::STAGES - 1; i++) {
        if (i < n_st) load(i);
        cp_commit();
    }
    /* Launched to overlap its predecessor (the Q/K/V post-processing that
     * writes the index queries): the page ids and the first stages above
     * read only earlier steps' index keys (the newest block is local, never
     * scored), so they go out before the wait; the queries after it.  Only
     * then may the selection's launch begin: it reads the attention queries
     * (also the predecessor's) before its own wait. */
    pdl_wait();
    pdl_trigger();

    /* index queries as the B operand: column n = lane/4 is group n (< 4).
     * fp8 keys reach the A operand through ldmatrix, which hands lane q of
     * a row the bytes 4q..4q+3 of its 16-byte chunk: A's k = 2q, 2q+1 and
     * 2q+8, 2q+9 then hold elements 4q, 4q+1 and 4q+2, 4q+3, so the query
     * takes the same order (a dot product does not mind the order of k). */
    uint32_t bq[8][2];
    const int gq = lane >> 2;
    const bf16 *iqb = iq + ((long long)b * 4 + (gq < 4 ? gq : 0)) * 128;
    float sc = 1.f; /* fp8: the queries are scored in e4m3 (attn_util.cuh); the quad holds the row */
    if (WG) {
        /* the queries as wgmma's B (8 x 128 e4m3, K-major, rows 4..7 zero):
         * thread t < 64 converts row t / 8's 16-byte chunk t % 8 */
        if (tid < 64) {
            const int r = tid >> 3, c = tid & 7;
            const bf16 *src = iq + ((long long)b * 4 + (r < 4 ? r : 0)) * 128 + 16 * c;
            float f[16], amax = 0.f;
#pragma unroll
            for (int j = 0; j < 16; j++) {
                f[j] = r < 4 ? __bfloat162float(src[j]) : 0.f;
                amax = fmaxf(amax, fabsf(f[j]));
            }
#pragma unroll
            for (int x = 1; x < 8; x <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, x));
            const float rs = q8_scale(amax);
            uint32_t w[4];
#pragma unroll
            for (int j = 0; j < 4; j++)
                w[j] = e4m3x4(f[4 * j] * rs, f[4 * j + 1] * rs, f[4 * j + 2] * rs, f[4 * j + 3] * rs);
            asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(qtile + r * 128 + ((c ^ r) << 4)),
                         "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3]));
            fence_async_smem();
        }
    } else if (FP8) {
        float amax = 0.f;
        for (int c = 4 * (lane & 3); c < 128; c += 16)
#pragma unroll
            for (int j = 0; j < 4; j++) amax = fmaxf(amax, fabsf(__bfloat162float(iqb[c + j])));
        sc = q8_quad_scale(amax);
    }
#pragma unroll
    for (int kk = 0; kk < 8 && !WG; kk++) {
        int c = 16 * kk + 2 * (lane & 3);
        if (gq >= 4) {
            bq[kk][0] = bq[kk][1] = 0u;
        } else if (FP8) { /* e4m3 values are exact in f16 */
            int c8 = 16 * kk + 4 * (lane & 3);
            bq[kk][0] = pack_h2(q8_round(__bfloat162float(iqb[c8]), sc), q8_round(__bfloat162float(iqb[c8 + 1]), sc));
            bq[kk][1] = pack_h2(q8_round(__bfloat162float(iqb[c8 + 2]), sc), q8_round(__bfloat162float(iqb[c8 + 3]), sc));
        } else {
            bq[kk][0] = *(const uint32_t *)(iqb + c);
            bq[kk][1] = *(const uint32_t *)(iqb + c + 8);
        }
    }

    const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_cb = lane >> 4;
    for (int i = 0; i < n_st; i++) {
        if (i + C::STAGES - 1 < n_st) load(i + C::STAGES - 1);
        cp_commit();
        cp_wait<C::STAGES - 1>();
        if (WG) fence_async_smem(); /* cp.async wrote, wgmma reads */
        __syncthreads();
        /* per page, rows 16 w + lane / 4 (+ 8) of each 64-row half mt:
         * mma.sync m16n8's layout, which the wgmma m64n8 one matches */
        float acc[C::PPS][2][4] = {};
        if (WG) { /* every page of the stage on the async pipe, one wait */
            wg_fence();
#pragma unroll
            for (int pp = 0; pp < C::PPS; pp++)
#pragma unroll
                for (int mt = 0; mt < 2; mt++)
#pragma unroll
                    for (int kk = 0; kk < 4; kk++)
                        wgmma_n8_e4m3(acc[pp][mt],
                                      desc_kmaj(base + ((i % C::STAGES) * C::PPS + pp) * C::PAGE + mt * 8192 + kk * 32),
                                      desc_kmaj(qtile + kk * 32), kk > 0);
            wg_commit();
            wg_wait<0>();
        }
#pragma unroll
        for (int pp = 0; pp < C::PPS; pp++) {
            const uint32_t st = base + ((i % C::STAGES) * C::PPS + pp) * C::PAGE;
#pragma unroll
            for (int kk = 0; kk < (WG ? 0 : 8); kk += FP8 ? 2 : 1) {
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    const int row = 16 * warp + 64 * mt + a_row;
                    if (FP8) { /* chunks kk, kk + 1 of 16 rows: matrices (rows, chunk) */
                        uint32_t r[4], a[4];
                        const int chunk = kk + (lane >> 4);
                        ldsm4(r, st + row * 128 + ((chunk ^ (row & 7)) << 4));
#pragma unroll
                        for (int h = 0; h < 2; h++) {
                            a[0] = e4m3x2_to_h2((uint16_t)r[2 * h]);
                            a[1] = e4m3x2_to_h2((uint16_t)r[2 * h + 1]);
                            a[2] = e4m3x2_to_h2((uint16_t)(r[2 * h] >> 16));
                            a[3] = e4m3x2_to_h2((uint16_t)(r[2 * h + 1] >> 16));
                            mma16816_f16(acc[pp][mt], a, bq[kk + h][0], bq[kk + h][1]);
                        }
                    } else {
                        uint32_t a[4];
                        ldsm4(a, st + swz(row, 2 * kk + a_cb));
                        mma16816(acc[pp][mt], a, bq[kk][0], bq[kk][1]);
                    }
                }
            }
            /* columns 2q, 2q+1 (q = lane & 3) of rows lane/4 and lane/4 + 8 */
            const float(&ac)[2][4] = acc[pp];
            float v0 = fmaxf(fmaxf(ac[0][0], ac[0][2]), fmaxf(ac[1][0], ac[1][2]));
            float v1 = fmaxf(fmaxf(ac[0][1], ac[0][3]), fmaxf(ac[1][1], ac[1][3]));
#pragma unroll
            for (int x = 4; x < 32; x <<= 1) {
                v0 = fmaxf(v0, __shfl_xor_sync(0xffffffffu, v0, x));
                v1 = fmaxf(v1, __shfl_xor_sync(0xffffffffu, v1, x));
            }
            if (lane < 2) {
                red[pp][warp][2 * lane] = v0;
                red[pp][warp][2 * lane + 1] = v1;
            }
        }
        __syncthreads();
        if (tid < 4 * C::PPS) {
            const int pp = tid >> 2, g = tid & 3, k = C::PPS * i + pp;
            float m = fmaxf(fmaxf(red[pp][0][g], red[pp][1][g]), fmaxf(red[pp][2][g], red[pp][3][g]));
            if (k < n_my) st_score_keep(scores + ((long long)b * 4 + g) * sstride + cta + (long long)k * nct, m);
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
    SD_STAMP(0, SD_CTA, 0);
    const int b = blockIdx.y;
    const int ncand = (lens[b] + B - 1) / B - local;
    const int n_my = (int)blockIdx.x < ncand ? (ncand - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
    msa_score_body<FP8>(smem, idx, istride, tables, ts, iq, b, blockIdx.x, gridDim.x, n_my, scores, sstride,
                        evict_first != 0);
    SD_STAMP(0, SD_CTA, 1);
}

/* ---- training-free (Quest) scoring for decode -----------------------------
 * One warp per page: the group's query heads against the page's channel
 * min/max, summed over heads.  Each warp keeps QS_PAGES pages' loads in
 * flight, and the first pages' ids load while the queries are staged: the
 * summaries are read once, so the kernel is a latency chain of table ->
 * summary loads unless many are in flight. */
#define QS_PAGES 8

__global__ void __launch_bounds__(256) quest_score_kernel(const char *summ, long long sstride_page, int B,
                                                          const int32_t *tables, int ts, const int32_t *lens,
                                                          const bf16 *q, int n_heads, int n_kv, int ratio,
                                                          float *scores, int sc_stride, int local)
{
    __shared__ float qs[16][128];
    pdl_trigger();
    SD_STAMP(0, (int)((blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x), 0);
    const int kvh = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int ncand = (lens[b] + B - 1) / B - local;
    const int step = gridDim.x * 8 * QS_PAGES;
    const int32_t *tab = tables + (long long)b * ts;
    int base = (blockIdx.x * 8 + warp) * QS_PAGES, pg[QS_PAGES];
    auto ids = [&](int at) {
#pragma unroll
        for (int u = 0; u < QS_PAGES; u++) pg[u] = at + u < ncand ? __ldg(tab + at + u) : -1;
    };
    ids(base);
    for (int i = threadIdx.x; i < ratio * 128; i += blockDim.x)
        qs[i >> 7][i & 127] = __bfloat162float(q[((long long)b * n_heads + kvh * ratio) * 128 + i]);
    __syncthreads();
    for (; base < ncand; base += step) {
        uint2 mn[QS_PAGES], mx[QS_PAGES];
#pragma unroll
        for (int u = 0; u < QS_PAGES; u++) {
            const char *sp = summ + (long long)(pg[u] >= 0 ? pg[u] : 0) * sstride_page + (long long)kvh * 3 * 256;
            mn[u] = pg[u] >= 0 ? ((const uint2 *)sp)[lane] : make_uint2(0u, 0u);
            mx[u] = pg[u] >= 0 ? ((const uint2 *)(sp + 256))[lane] : make_uint2(0u, 0u);
        }
        if (base + step < ncand) ids(base + step);
        float acc[QS_PAGES];
#pragma unroll
        for (int u = 0; u < QS_PAGES; u++) acc[u] = 0.f;
        for (int h = 0; h < ratio; h++) {
            const float4 qv = *(const float4 *)&qs[h][4 * lane];
#pragma unroll
            for (int u = 0; u < QS_PAGES; u++)
                acc[u] += fmaxf(qv.x * bf_lo(mn[u].x), qv.x * bf_lo(mx[u].x)) +
                          fmaxf(qv.y * bf_hi(mn[u].x), qv.y * bf_hi(mx[u].x)) +
                          fmaxf(qv.z * bf_lo(mn[u].y), qv.z * bf_lo(mx[u].y)) +
                          fmaxf(qv.w * bf_hi(mn[u].y), qv.w * bf_hi(mx[u].y));
        }
#pragma unroll
        for (int u = 0; u < QS_PAGES; u++) {
#pragma unroll
            for (int x = 16; x; x >>= 1) acc[u] += __shfl_xor_sync(0xffffffffu, acc[u], x);
            if (lane == 0 && base + u < ncand) scores[((long long)b * n_kv + kvh) * sc_stride + base + u] = acc[u];
        }
    }
    __syncthreads();
    SD_STAMP(0, (int)((blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x), 1);
}

/* ---- block selection -------------------------------------------------------
 * One CTA per (sequence, group): forced sink and local blocks, then the
 * top_k best candidates by a radix select on order-preserving keys (no
 * sort), then the rewritten page table of the selection.  (Pulling the
 * top_k by repeated warp maxima was tried in v6: top_k steps over every key
 * on one SM cost 18 us against 12.) */

#define TOPK_THREADS 1024
#define TOPK_SMEM_KEYS 16384
#define TOPK_MAX_W 256

static __device__ __forceinline__ uint32_t ord_key(float f)
{
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* The top_k-th largest of the n > top_k keys key(i), and in *rem how many
 * of the keys equal to it the top_k takes.  Keys share their leading bits
 * (block maxima lie close together): the select runs on the bits below the
 * common prefix of min and max, 8 at a time, so the histograms spread over
 * many bins.  Every thread of the CTA (up to 1024) calls it; ends with a
 * barrier. */
template <class Key>
static __device__ uint32_t radix_kth(const Key &key, const int n, const int top_k, int *rem_out)
{
    __shared__ int hist[256];
    __shared__ int s_bin, s_rem;
    const int tid = threadIdx.x, T = blockDim.x;
    uint32_t kmin = 0xffffffffu, kmax = 0;
    for (int i = tid; i < n; i += T) {
        uint32_t k = key(i);
        kmin = min(kmin, k);
        kmax = max(kmax, k);
    }
    kmin = __reduce_min_sync(0xffffffffu, kmin);
    kmax = __reduce_max_sync(0xffffffffu, kmax);
    __syncthreads(); /* hist of an earlier call */
    if ((tid & 31) == 0) {
        hist[tid >> 5] = (int)kmin;
        hist[32 + (tid >> 5)] = (int)kmax;
    }
    __syncthreads();
    if (tid < 32) {
        uint32_t a = (uint32_t)hist[tid], c = (uint32_t)hist[32 + tid];
        if (tid >= (T >> 5)) a = 0xffffffffu, c = 0;
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
        for (int i = tid; i < 256; i += T) hist[i] = 0;
        __syncthreads();
        for (int i = tid; i < n; i += T) {
            uint32_t k = key(i);
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
    *rem_out = rem;
    return prefix;
}

/* Writes base + i for the top_k largest of the n > top_k keys key(i) to
 * o[0 .. top_k), unordered.  Ties at the threshold go to the lowest i (a
 * second select over the tied indices), so every CTA that runs it on the
 * same keys takes the same set.  All threads call it; ends with a barrier. */
template <class Key>
static __device__ void radix_top_k(const Key &key, const int n, const int top_k, const int base, int *o)
{
    __shared__ int cnt_gt, cnt_eq;
    const int tid = threadIdx.x, T = blockDim.x;
    int rem;
    const uint32_t thr = radix_kth(key, n, top_k, &rem);
    if (tid == 0) cnt_gt = cnt_eq = 0;
    __syncthreads();
    int eq = 0;
    for (int i = tid; i < n; i += T) eq += key(i) == thr;
    eq = __reduce_add_sync(0xffffffffu, eq);
    if ((tid & 31) == 0 && eq) atomicAdd(&cnt_eq, eq);
    __syncthreads();
    const bool all_eq = cnt_eq <= rem;
    uint32_t thr2 = 0;
    if (!all_eq) {
        int rem2;
        thr2 = radix_kth([&](int i) { return key(i) == thr ? ~(uint32_t)i : 0u; }, n, rem, &rem2);
    }
    if (tid == 0) cnt_eq = 0;
    __syncthreads();
    const int n_gt = top_k - rem;
    for (int i = tid; i < n; i += T) {
        uint32_t k = key(i);
        if (k > thr) o[atomicAdd(&cnt_gt, 1)] = base + i;
        else if (k == thr && (all_eq || ~(uint32_t)i >= thr2)) o[n_gt + atomicAdd(&cnt_eq, 1)] = base + i;
    }
    __syncthreads();
}

__global__ void __launch_bounds__(TOPK_THREADS) topk_kernel(const float *scores, int sstride, const int32_t *lens,
                                                            int B, int rows_per_seq, int sink, int top_k, int local,
                                                            int32_t *sel, const int32_t *tables, int ts,
                                                            int32_t *tab_out, int32_t *len_out, int *merge_cnt)
{
    extern __shared__ uint32_t keys[];
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

    if (tid < sink) o[tid] = tid < c0 ? tid : -1;
    if (tid < local) {
        int blk = nblk - local + tid;
        o[sink + top_k + tid] = blk >= c1 ? blk : -1;
    }
    if (ncand <= top_k || top_k == 0) {
        for (int i = tid; i < top_k; i += blockDim.x) o[sink + i] = i < ncand ? c0 + i : -1;
    } else {
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
                if (i < ncand) keys[i] = kv[j];
            }
            __syncthreads();
        }
        radix_top_k([&](int i) { return in_smem ? keys[i] : ord_key(sc[i]); }, ncand, top_k, c0, o + sink);
    }
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

/* ---- sparse decode after the scores in one kernel (sm_90) -------------------
 * select -> decode -> merge as one launch of clusters: C CTAs per (sequence,
 * KV group) row.  Every CTA of a cluster selects the row's blocks itself
 * from the block scores (redundant, but no CTA waits on another's
 * selection), runs its share of the selected blocks' 32-key tiles (tile t
 * on warp t mod 4C), and the cluster merges the CTAs' partial results
 * through distributed shared memory: no partials in global memory, no
 * counters, no third kernel.  Launched with PDL behind the scoring kernel,
 * so the query fragments load while the scores are still being written.
 * (v7's single cooperative kernel lost to the chain on the latency of its
 * selection and last-CTA merge; gpu-notes.md.) */

#include <cooperative_groups.h>

#define SD_MAX_CLUSTER 16 /* a power of two: C x 4 warps x ceil(16 / C) heads = 64 records */
#define SD_REC 132        /* floats per record: o[128], m, l, padding */
#define SD_RECS 64
#define SD_THREADS 256 /* the selection's; warps past DEC_WARPS only select */
#define SD_NV 8 /* score float4s per thread in registers: 256 threads x 32 = 8192 blocks */
#define SD_CAP 512 /* scores the threshold pass may gather before the radix fallback */

struct SelDecArgs {
    DecArgs d;           /* q, k, v, strides, B, heads, scale, out */
    const float *scores; /* [rows][sstride], sstride a multiple of 4 */
    int sstride;
    const int32_t *tables, *lens; /* the sequences' own */
    int ts;
    int32_t *sel;
    int sink, top_k, local;
    int cap;  /* <= SD_CAP; CATTN_SD_GATHER lowers it (tests: the radix fallback) */
    int rank_max; /* up to this many candidates: ranked one a thread (CATTN_SD_RANK=n sets it; 0: never) */
    int probe;    /* timing floors only (CATTN_SD_PROBE): 1 ends after the wait, 2 skips the selection */
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 /* clusters; the only caller is sm_90 code */
/* Rank of (x, xi) among the n pairs (v, id) in descending order of v, ties
 * by ascending id (distinct ids: distinct ranks, the same in every CTA).
 * v and id are in shared memory, 16-byte aligned; two float4 and two int4
 * loads per step so that the loads overlap (a plain loop waits ~30 cycles
 * on each). */
static __device__ __forceinline__ int rank_desc(const float *v, const int *id, const int n, const float x,
                                                const int xi)
{
    int r = 0, t = 0;
    for (; t + 8 <= n; t += 8) {
        float4 y[2];
        int4 k[2];
#pragma unroll
        for (int u = 0; u < 2; u++) {
            y[u] = *(const float4 *)(v + t + 4 * u);
            k[u] = *(const int4 *)(id + t + 4 * u);
        }
#pragma unroll
        for (int u = 0; u < 2; u++) {
            r += (y[u].x > x) | ((y[u].x == x) & (k[u].x < xi));
            r += (y[u].y > x) | ((y[u].y == x) & (k[u].y < xi));
            r += (y[u].z > x) | ((y[u].z == x) & (k[u].z < xi));
            r += (y[u].w > x) | ((y[u].w == x) & (k[u].w < xi));
        }
    }
    for (; t < n; t++) r += (v[t] > x) | ((v[t] == x) & (id[t] < xi));
    return r;
}


/* The row's selection into o[0 .. sink + top_k + local): sink blocks, the
 * top_k best candidates (unordered), local blocks; -1 marks an empty slot.
 * Exact by a threshold: each pair of threads holds up to 64 scores, and
 * the top_k-th largest of the pairs' maxima bounds the top_k-th largest
 * score from below, so the top_k are among the scores reaching it, usually
 * a few more than top_k: those are gathered and ranked.  A radix select
 * over all scores when more than cap reach it (ties).  All threads call
 * it; ends with a barrier. */
static __device__ void sd_select(const SelDecArgs &a, const float *sc, const int nblk, int *o)
{
    __shared__ __align__(16) float mx[SD_THREADS / 2];
    __shared__ __align__(16) float gs[SD_CAP];
    __shared__ __align__(16) int gi[SD_CAP];
    __shared__ int s_n;
    __shared__ float s_thr;
    const int tid = threadIdx.x, T = SD_THREADS, sink = a.sink, top_k = a.top_k, local = a.local;
    const int c0 = min(sink, nblk), c1 = max(c0, nblk - local), ncand = c1 - c0;
    for (int i = tid; i < sink; i += T) o[i] = i < c0 ? i : -1;
    for (int i = tid; i < local; i += T) {
        int blk = nblk - local + i;
        o[sink + top_k + i] = blk >= c1 ? blk : -1;
    }
    for (int i = tid; i < top_k; i += T) o[sink + i] = i < ncand && ncand <= top_k ? c0 + i : -1;
    if (ncand <= top_k || top_k == 0) {
        __syncthreads();
        return;
    }
    if (ncand <= a.rank_max) {
        /* few candidates (contexts up to 32K tokens in blocks of 128): one
         * a thread, ranked among all by (score, block) directly, the same
         * order as below; -inf and NaN scores are never chosen, as below.
         * One L2 round trip and one ranking instead of the threshold's
         * five steps (v18: at 32K 0.1-2 us faster than the threshold). */
        const int i = c0 + tid;
        float x = tid < ncand ? __ldcg(sc + i) : NEG_INF;
        x = x > NEG_INF ? x : NEG_INF;
        gs[tid] = x;
        gi[tid] = i;
        SD_STAMP(1, SD_CTA, 8);
        __syncthreads();
        SD_STAMP(1, SD_CTA, 9);
        if (x > NEG_INF) {
            const int r = rank_desc(gs, gi, ncand, x, i);
            if (r < top_k) o[sink + r] = i;
        }
        __syncthreads();
        SD_STAMP(1, SD_CTA, 10);
        return;
    }
    /* scores of blocks 4 (tid + 128 j) .. +3, candidates only (the rest
     * NEG_INF); the first SD_NV float4s in registers, all loads in one
     * round; past them (over 1M tokens) each pass reads them again */
    auto load = [&](int i) {
        float4 x = i < c1 ? __ldcg((const float4 *)(sc + i)) : make_float4(0.f, 0.f, 0.f, 0.f);
        x.x = i >= c0 && i < c1 ? x.x : NEG_INF;
        x.y = i + 1 >= c0 && i + 1 < c1 ? x.y : NEG_INF;
        x.z = i + 2 >= c0 && i + 2 < c1 ? x.z : NEG_INF;
        x.w = i + 3 >= c0 && i + 3 < c1 ? x.w : NEG_INF;
        return x;
    };
    auto tail = [&](auto f) {
        for (int i = 4 * (tid + T * SD_NV); i < c1; i += 4 * T) f(load(i), i);
    };
    float4 v[SD_NV];
#pragma unroll
    for (int j = 0; j < SD_NV; j++) v[j] = load(4 * (tid + T * j));
    float m = NEG_INF;
    auto vmax = [&](float4 x, int) { m = fmaxf(m, fmaxf(fmaxf(x.x, x.y), fmaxf(x.z, x.w))); };
#pragma unroll
    for (int j = 0; j < SD_NV; j++) vmax(v[j], 0);
    tail(vmax);
    SD_STAMP(1, SD_CTA, 8);
    /* a pair of threads' maximum bounds 64 scores, as one thread's did with
     * 4 warps; the pair ranks it against the 128 maxima a half each, so a
     * second warp on each scheduler halves this chain too */
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
    const int pi = tid >> 1, half = (tid & 1) * (T / 4);
    if (!(tid & 1)) {
        mx[pi] = m;
        gi[pi] = pi;
    }
    if (tid == 0) {
        s_n = 0;
        s_thr = NEG_INF;
    }
    __syncthreads();
    int rk = rank_desc(mx + half, gi + half, T / 4, m, pi);
    rk += __shfl_xor_sync(0xffffffffu, rk, 1);
    if (top_k <= T / 2 && !(tid & 1) && rk == top_k - 1) s_thr = m;
    __syncthreads();
    SD_STAMP(1, SD_CTA, 9);
    /* gather: count, one atomic per warp for the warp's slots, then write */
    const float thr = s_thr;
    int cnt = 0;
    auto count = [&](float4 x, int) { /* masked entries are NEG_INF; thr may be too */
        cnt += (x.x >= thr && x.x > NEG_INF) + (x.y >= thr && x.y > NEG_INF) + (x.z >= thr && x.z > NEG_INF) +
               (x.w >= thr && x.w > NEG_INF);
    };
#pragma unroll
    for (int j = 0; j < SD_NV; j++) count(v[j], 0);
    tail(count);
    const int lane = tid & 31;
    int incl = cnt;
#pragma unroll
    for (int x = 1; x < 32; x <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, incl, x);
        if (lane >= x) incl += y;
    }
    int pos = 0;
    if (lane == 31) pos = atomicAdd(&s_n, incl);
    pos = __shfl_sync(0xffffffffu, pos, 31) + incl - cnt;
    auto put1 = [&](float x, int i) {
        if (x >= thr && x > NEG_INF) {
            if (pos < SD_CAP) {
                gs[pos] = x;
                gi[pos] = i;
            }
            pos++;
        }
    };
    auto put = [&](float4 x, int i) {
        put1(x.x, i);
        put1(x.y, i + 1);
        put1(x.z, i + 2);
        put1(x.w, i + 3);
    };
#pragma unroll
    for (int j = 0; j < SD_NV; j++) put(v[j], 4 * (tid + T * j));
    tail(put);
    __syncthreads();
    SD_STAMP(1, SD_CTA, 10);
    const int n = s_n;
    if (n <= a.cap) {
        for (int i = tid; i < n; i += T) {
            const int r = rank_desc(gs, gi, n, gs[i], gi[i]);
            if (r < top_k) o[sink + r] = gi[i];
        }
        __syncthreads();
    } else {
        radix_top_k([&](int i) { return ord_key(__ldcg(sc + c0 + i)); }, ncand, top_k, c0, o + sink);
        /* the atomics left the list in any order: sort it by block, so that
         * every CTA of the cluster splits the same tiles */
        for (int i = tid; i < top_k; i += T) {
            const int x = o[sink + i];
            int r = 0;
            for (int j = 0; j < top_k; j++) r += o[sink + j] < x;
            gi[r] = x;
        }
        __syncthreads();
        for (int i = tid; i < top_k; i += T) o[sink + i] = gi[i];
        __syncthreads();
    }
}
#endif

template <bool FP8> __global__ void __launch_bounds__(SD_THREADS, 1) sel_decode_kernel(SelDecArgs a)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ int o[TOPK_MAX_W], blks[TOPK_MAX_W], bpg[TOPK_MAX_W];
    __shared__ int s_nb;
    __shared__ __align__(16) float recs[SD_RECS * SD_REC]; /* the warps' states of this CTA's heads */
    namespace cg = cooperative_groups;
    cg::cluster_group cl = cg::this_cluster();
    const int C = (int)cl.num_blocks(), rank = (int)cl.block_rank();
    const DecArgs &d = a.d;
    const int row = blockIdx.y, b = row / d.n_kv, kvh = row - b * d.n_kv;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, tid = threadIdx.x;
    const int W = a.sink + a.top_k + a.local;
    SD_STAMP(1, SD_CTA, 0);
    cl.barrier_arrive(); /* every CTA has started before any DSMEM store: waited on below */

    /* inputs of earlier kernels, before waiting on the scores */
    DecState st;
    dec_init<FP8>(st, d.q + ((long long)b * d.n_heads + kvh * d.ratio) * 128, d.ratio, lane);
    const int len = a.lens[b];
    const int nblk = (len + d.B - 1) / d.B;
    const int32_t *tab = a.tables + (long long)b * a.ts;
    pdl_wait();
    SD_STAMP(1, SD_CTA, 1);
    if (a.probe == 1) { /* the floor under any consumer of the scores: zeros out, nothing read */
        cl.barrier_wait();
        for (int r = rank; r < d.ratio; r += C)
            if (tid < 128) d.out[((long long)b * d.n_heads + kvh * d.ratio + r) * 128 + tid] = __float2bfloat16(0.f);
        return;
    }

    if (a.probe == 2) { /* the newest W blocks, no scores read: all but the selection */
        for (int i = tid; i < W; i += SD_THREADS) o[i] = nblk - W + i >= 0 ? nblk - W + i : -1;
        __syncthreads();
    } else {
        sd_select(a, a.scores + (long long)row * a.sstride, nblk, o);
    }
    SD_STAMP(1, SD_CTA, 2);

    if (a.sel && rank == 0)
        for (int i = tid; i < W; i += SD_THREADS) a.sel[(long long)row * W + i] = o[i];
    if (warp == 0) { /* the selected blocks and their pages, compacted */
        int n = 0;
        for (int i0 = 0; i0 < W; i0 += 32) {
            /* (v15: as fast as copying the whole table into shared memory
             * during the selection, and 32 KB less of it) */
            const int i = i0 + lane, blk = i < W ? o[i] : -1;
            const int pg = blk >= 0 ? __ldg(tab + blk) : 0;
            const unsigned bal = __ballot_sync(0xffffffffu, blk >= 0);
            if (blk >= 0) {
                blks[n + __popc(bal & ((1u << lane) - 1u))] = blk;
                bpg[n + __popc(bal & ((1u << lane) - 1u))] = pg;
            }
            n += __popc(bal);
        }
        if (lane == 0) s_nb = n;
    }
    __syncthreads();
    SD_STAMP(1, SD_CTA, 11);

    /* this warp's tiles: t = gw, gw + 4C, ...; keys are numbered by their
     * position in the sequence, so only the newest block has masked keys.
     * Warps past DEC_WARPS only select: a second warp on each scheduler
     * shortens the selection's latency chains, while the tiles' shared
     * memory holds DEC_WARPS warps' stages (v18: Quest 1-1.4 us faster, the
     * rest level or faster) */
    const int tpb = d.B / DEC_TILE, ntiles = s_nb * tpb;
    const int gw = rank * DEC_WARPS + warp, nw = C * DEC_WARPS;
    const int my_n = warp < DEC_WARPS && gw < ntiles ? (ntiles - gw + nw - 1) / nw : 0;
    constexpr int SB = FP8 ? DEC_RAW_BYTES : DEC_STAGE_BYTES; /* a stage's bytes, as in dec_body */
    const uint32_t wbase = smem_u32(smem) + warp * (FP8 ? DEC_WARP_BYTES_FP8 : DEC_STAGES * DEC_STAGE_BYTES);
    auto load = [&](int i) {
        const int t = gw + i * nw, blk = blks[t / tpb];
        if (FP8)
            dec_load_fp8(d, tab, kvh, len, blk * tpb + t % tpb, wbase + (i % DEC_STAGES) * SB, lane, bpg[t / tpb]);
        else
            dec_load(d, tab, kvh, len, blk * tpb + t % tpb, wbase + (i % DEC_STAGES) * SB, lane, bpg[t / tpb]);
    };
#pragma unroll
    for (int i = 0; i < DEC_STAGES - 1; i++) {
        if (i < my_n) load(i);
        cp_commit();
    }
    for (int i = 0; i < my_n; i++) {
        if (i + DEC_STAGES - 1 < my_n) load(i + DEC_STAGES - 1);
        cp_commit();
        cp_wait<DEC_STAGES - 1>();
        __syncwarp();
        const int t = gw + i * nw, key0 = (blks[t / tpb] * tpb + t % tpb) * DEC_TILE;
        const uint32_t stage = wbase + (i % DEC_STAGES) * SB;
        if (FP8)
            dec_tile<true>(st, 0, key0, len, d.scale_log2, lane,
                           (const float *)(smem + (stage - smem_u32(smem)) + 2 * DEC_TILE * 128), stage);
        else
            dec_tile(st, stage, key0, len, d.scale_log2, lane);
        __syncwarp();
    }
    if (FP8) /* the output over vr back to scale */
#pragma unroll
        for (int n = 0; n < 16; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) st.o[n][e] *= st.vr;
    cp_wait<0>();
    SD_STAMP_W(1, SD_CTA, 3);

    /* Each warp pushes its unnormalised state per head into the shared
     * memory of the head's owner, CTA r mod C (remote stores do not wait),
     * and after one cluster barrier each owner merges its heads' 4C records
     * from its own shared memory.  (Pulling CTA-merged partials through
     * DSMEM loads cost 5.4 us for the CTA merge, two barriers and the
     * loads: v9, gpu-notes.md.) */
    const int hpo = (d.ratio + C - 1) / C; /* heads per owner */
    cl.barrier_wait();
#pragma unroll
    for (int h = 0; h < 2 && warp < DEC_WARPS; h++) {
        st.l[h] += __shfl_xor_sync(0xffffffffu, st.l[h], 1);
        st.l[h] += __shfl_xor_sync(0xffffffffu, st.l[h], 2);
        const int r = (lane >> 2) + 8 * h;
        if (r >= d.ratio) continue;
        float *rec = cl.map_shared_rank(recs, r % C) + ((rank * DEC_WARPS + warp) * hpo + r / C) * SD_REC;
        dec_store_row<FP8>(rec, st, h, lane);
        if ((lane & 3) == 0) *(float2 *)&rec[128] = make_float2(st.m[h], st.l[h]);
    }
    SD_STAMP(1, SD_CTA, 4);
    cl.sync(); /* the records are in place */
    SD_STAMP(1, SD_CTA, 5);
    /* a thread per dim of each owned head.  Lane j of every warp holds
     * records j and j + 32's (m, l) and weight, so the maximum is a warp
     * reduction and the weights come by shuffle, not a pass over the
     * records and an exp2f a record in every thread (v17: 0.3-1.1 us less
     * a decode at 32K and 1M on an H100; on an H200 MSA level, Quest 0.6) */
    static_assert(SD_MAX_CLUSTER * DEC_WARPS <= 64, "records of a head: two a lane");
    for (int k = 0; warp < DEC_WARPS && rank + k * C < d.ratio; k++) {
        const int r = rank + k * C, nrec = C * DEC_WARPS;
        float mj[2], lj[2], wj[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int j = lane + 32 * h;
            mj[h] = j < nrec ? recs[(j * hpo + k) * SD_REC + 128] : NEG_INF;
            lj[h] = j < nrec ? recs[(j * hpo + k) * SD_REC + 129] : 0.f;
        }
        float M = fmaxf(mj[0], mj[1]);
#pragma unroll
        for (int x = 16; x; x >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, x));
#pragma unroll
        for (int h = 0; h < 2; h++) wj[h] = M == NEG_INF ? 0.f : exp2f(mj[h] - M); /* exp2f(-inf) = 0 */
        float acc = 0.f, lsum = 0.f;
#pragma unroll 8
        for (int j = 0; j < nrec; j++) {
            const float w = __shfl_sync(0xffffffffu, j < 32 ? wj[0] : wj[1], j & 31);
            const float l = __shfl_sync(0xffffffffu, j < 32 ? lj[0] : lj[1], j & 31);
            lsum = fmaf(w, l, lsum);
            acc = fmaf(w, recs[(j * hpo + k) * SD_REC + tid], acc);
        }
        d.out[((long long)b * d.n_heads + kvh * d.ratio + r) * 128 + tid] =
            __float2bfloat16(lsum > 0.f ? acc / lsum : 0.f);
    }
    SD_STAMP(1, SD_CTA, 6);
    SD_STAMP(1, SD_CTA, 7);
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

/* One wave: at most one CTA per SM in all (one is resident at a time: 128
 * KB of shared memory), each warp with at least min_tiles tiles so its
 * copies pipeline; sparse decode (few keys) takes one tile per warp.  (v15,
 * H100: two CTAs an SM in two waves paid each CTA's start and merge twice,
 * M3 dense decode b1 32K 41.3 -> 34.7 us, 128K 110 -> 100; and rounding
 * the splits up put 4 of L3-8B's 136 CTAs in a second wave.)
 * CATTN_DEC_PER_SM=n: n CTAs per SM in all, for timing. */
static int dec_splits(int rows, int max_len, int min_tiles, int fp8 = 0)
{
    static int per_sm = 0;
    if (!per_sm) {
        const char *e = getenv("CATTN_DEC_PER_SM");
        per_sm = e && atoi(e) > 0 ? atoi(e) : 1;
    }
    int ntiles = (max_len + DEC_TILE - 1) / DEC_TILE;
    int s = per_sm * (fp8 ? 2 : 1) * n_sms() / rows; /* fp8 pages: two CTAs an SM fit and both run */
    int cap = (ntiles + DEC_WARPS * min_tiles - 1) / (DEC_WARPS * min_tiles);
    if (s > cap) s = cap;
    if (s > 1024) s = 1024;
    return s < 1 ? 1 : s;
}

static size_t dec_ws(int batch, int n_heads, int n_kv, int max_len, int min_tiles, int fp8 = 0)
{
    size_t s = (size_t)dec_splits(batch * n_kv, max_len, min_tiles, fp8);
    return (size_t)batch * n_heads * s * (128 + 1) * sizeof(float);
}

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

static int check_pool(const cattn_pool *p, int n_heads)
{
    if (!p || n_heads <= 0 || p->n_kv_heads <= 0 || n_heads % p->n_kv_heads) return CATTN_EINVAL;
    if (p->head_dim != 128 || p->block_size < 64 || p->block_size % 64) return CATTN_ESHAPE;
    if (n_heads / p->n_kv_heads > 16) return CATTN_ESHAPE;
    if (p->kv_fp8 && !p->kv_scale) return CATTN_EINVAL;
    return 0;
}

/* The decode arguments every path shares: pool, heads, query, output. */
static DecArgs dec_args(const cattn_pool *p, int n_heads, const void *q, void *out, float scale)
{
    DecArgs a;
    memset(&a, 0, sizeof(a));
    a.q = (const bf16 *)q;
    a.k = (const char *)p->k;
    a.v = (const char *)p->v;
    a.k_stride = p->k_stride;
    a.v_stride = p->v_stride;
    a.kvs = (const char *)p->kv_scale;
    a.kvs_stride = p->kv_scale_stride;
    a.out = (bf16 *)out;
    a.B = p->block_size;
    a.n_kv = p->n_kv_heads;
    a.n_heads = n_heads;
    a.ratio = n_heads / p->n_kv_heads;
    a.scale_log2 = scale * LOG2E_F;
    return a;
}

/* Split-KV decode over tables with per-KV-head strides. */
static int decode_run(const cattn_pool *p, int batch, int n_heads, const void *q, void *out, float scale,
                      const int32_t *tables, long long ts_seq, int ts_kvh, const int32_t *lens, int ls_seq,
                      int ls_kvh, int max_len, int min_tiles, int *merge_cnt, void *ws, size_t ws_bytes,
                      cudaStream_t st, bool pdl)
{
    static int attr_done = 0;
    if (!attr_done) {
        CUDA_TRY(cudaFuncSetAttribute(decode_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, DEC_SMEM));
        CUDA_TRY(cudaFuncSetAttribute(decode_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      DEC_SMEM_FP8));
        attr_done = 1;
    }
    int n_kv = p->n_kv_heads;
    int splits = dec_splits(batch * n_kv, max_len, min_tiles, p->kv_fp8);
    if (ws_bytes < dec_ws(batch, n_heads, n_kv, max_len, min_tiles, p->kv_fp8)) return CATTN_EWORKSPACE;
    DecArgs a = dec_args(p, n_heads, q, out, scale);
    a.tables = tables;
    a.ts_seq = ts_seq;
    a.ts_kvh = ts_kvh;
    a.lens = lens;
    a.ls_seq = ls_seq;
    a.ls_kvh = ls_kvh;
    a.part_o = (float *)ws;
    a.part_lse = a.part_o + (size_t)batch * n_heads * splits * 128;
    a.merge_cnt = merge_cnt;
    a.n_splits = splits;
    dim3 grid(splits, n_kv, batch);
    auto kern = p->kv_fp8 ? decode_kernel<true> : decode_kernel<false>;
    const int smem = p->kv_fp8 ? DEC_SMEM_FP8 : DEC_SMEM;
    if (pdl) CUDA_TRY(launch_pdl(kern, grid, dim3(DEC_WARPS * 32), smem, st, a));
    else kern<<<grid, DEC_WARPS * 32, smem, st>>>(a);
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
    return dec_ws(batch, n_heads, p->n_kv_heads, max_len, 4, p->kv_fp8);
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

/* The one-kernel sparse decode's CTAs per row, a power of two: n_sms /
 * rows, at most one warp per tile and 16 (8 where clusters of 16 cannot be
 * placed); 0 before sm_90.  CATTN_SD_CLUSTER=n sets n, and 0 the kernel
 * chain (score -> top-k -> split-KV decode), which serves sm_80. */
static int max_c = -1; /* largest cluster that can be placed, 0 before sm_90 */
static int qs_occ = 1; /* Quest scoring CTAs per SM */

/* Attributes and the cluster query, once: called from the workspace
 * queries too, which engines make before capturing a graph (a query made
 * during a capture may fail, which would leave the chain in use). */
static void sd_init(void)
{
    if (max_c < 0) {
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&qs_occ, quest_score_kernel, 256, 0) != cudaSuccess ||
            qs_occ < 1)
            qs_occ = 1;
        int dev = 0, major = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
        max_c = 0;
        /* fp8 pages' instance: the same shared memory (its stages take less) */
        if (major >= 9 &&
            cudaFuncSetAttribute(sel_decode_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, DEC_SMEM) ==
                cudaSuccess &&
            cudaFuncSetAttribute(sel_decode_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, DEC_SMEM) ==
                cudaSuccess) {
            max_c = 8;
            cudaLaunchConfig_t cfg = {};
            cudaLaunchAttribute at[1];
            at[0].id = cudaLaunchAttributeClusterDimension;
            at[0].val.clusterDim.x = SD_MAX_CLUSTER;
            at[0].val.clusterDim.y = at[0].val.clusterDim.z = 1;
            cfg.gridDim = dim3(SD_MAX_CLUSTER);
            cfg.blockDim = dim3(SD_THREADS);
            cfg.dynamicSmemBytes = DEC_SMEM;
            cfg.attrs = at;
            cfg.numAttrs = 1;
            int n = 0;
            if (cudaFuncSetAttribute(sel_decode_kernel<false>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) ==
                    cudaSuccess &&
                cudaFuncSetAttribute(sel_decode_kernel<true>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) ==
                    cudaSuccess &&
                cudaOccupancyMaxActiveClusters(&n, sel_decode_kernel<false>, &cfg) == cudaSuccess && n > 0)
                max_c = SD_MAX_CLUSTER;
        }
        cudaGetLastError();
    }
}

static int sd_cluster(const cattn_pool *p, const cattn_batch *b, int W)
{
    sd_init();
    if (!max_c) return 0;
    const char *e = getenv("CATTN_SD_CLUSTER");
    int c = e ? atoi(e) : n_sms() / (b->batch * p->n_kv_heads);
    const int per_warp = (W * (p->block_size / DEC_TILE) + DEC_WARPS - 1) / DEC_WARPS;
    if (!e && c > per_warp) c = per_warp;
    /* a cluster of 16 takes a whole GPC: past half the SMs in such
     * clusters, some wait for a GPC to drain (v9: Quest's 8 rows, 43 us at 8 against 55 at 16) */
    if (!e && c > 8 && b->batch * p->n_kv_heads * 16 > n_sms() / 2) c = 8;
    if (c > max_c) c = max_c;
    if (c <= 0) return e ? 0 : 1;
    return 1 << (31 - __builtin_clz(c)); /* records per owner: SD_RECS */
}

static int sel_decode(const cattn_pool *p, const cattn_batch *b, int n_heads, const void *q, void *out, float scale,
                      int top_k, int local, int sink, int32_t *sel, const float *scores, int sstride, int C,
                      cudaStream_t st)
{
    SelDecArgs a;
    memset(&a, 0, sizeof(a));
    a.d = dec_args(p, n_heads, q, out, scale);
    a.scores = scores;
    a.sstride = sstride;
    a.tables = b->tables;
    a.lens = b->lens;
    a.ts = b->table_stride;
    a.sel = sel;
    a.sink = sink;
    a.top_k = top_k;
    a.local = local;
    const char *g = getenv("CATTN_SD_GATHER");
    a.cap = g && atoi(g) >= 0 && atoi(g) < SD_CAP ? atoi(g) : SD_CAP;
    const char *rk = getenv("CATTN_SD_RANK");
    a.rank_max = rk ? min(max(atoi(rk), 0), SD_THREADS) : SD_THREADS;
    const char *pr = getenv("CATTN_SD_PROBE"); /* bench/gpu only: outputs are then wrong */
    a.probe = pr ? atoi(pr) : 0;
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[2];
    at[0].id = cudaLaunchAttributeClusterDimension;
    at[0].val.clusterDim.x = C;
    at[0].val.clusterDim.y = at[0].val.clusterDim.z = 1;
    at[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[1].val.programmaticStreamSerializationAllowed = 1;
    cfg.gridDim = dim3(C, b->batch * p->n_kv_heads);
    cfg.blockDim = dim3(SD_THREADS);
    cfg.dynamicSmemBytes = DEC_SMEM;
    cfg.stream = st;
    cfg.attrs = at;
    cfg.numAttrs = 2;
    CUDA_TRY(cudaLaunchKernelEx(&cfg, p->kv_fp8 ? sel_decode_kernel<true> : sel_decode_kernel<false>, a));
    return 0;
}

/* CATTN_SCORE_EF=1: index key loads L2 evict-first (off: a mixed result, v7). */
static int score_evict_first(void)
{
    const char *e = getenv("CATTN_SCORE_EF");
    return e && e[0] == '1';
}

/* CATTN_SCORE_PDL=0: the scoring launches after its predecessor ends, for
 * timing (read per call, as the switches beside it). */
static int score_pdl(void)
{
    const char *e = getenv("CATTN_SCORE_PDL");
    return !(e && e[0] == '0');
}

/* Block scores per row, padded to float4 rows for the selection's loads. */
static int score_stride(int nblk) { return (nblk + 3) & ~3; }

/* Sparse decode workspace: scores, selection, rewritten tables, lengths,
 * merge counters, then the split-KV partials for a selection of W pages. */
static size_t sparse_ws(const cattn_pool *p, int batch, int n_heads, int max_len, int W, size_t *off)
{
    int rows = batch * p->n_kv_heads;
    int nblk = (max_len + p->block_size - 1) / p->block_size;
    size_t o = 0;
    off[0] = o; o += align256((size_t)rows * score_stride(nblk) * sizeof(float));
    off[1] = o; o += align256((size_t)rows * W * sizeof(int32_t));
    off[2] = o; o += align256((size_t)rows * W * sizeof(int32_t));
    off[3] = o; o += align256((size_t)rows * sizeof(int32_t));
    off[5] = o; o += align256((size_t)rows * sizeof(int32_t));
    off[4] = o; o += align256(dec_ws(batch, n_heads, p->n_kv_heads, W * p->block_size, 1, p->kv_fp8));
    return o;
}

extern "C" size_t cattn_msa_decode_ws(const cattn_pool *p, int batch, int n_heads, int max_len, int top_k,
                                      int local)
{
    sd_init();
    size_t off[6];
    return sparse_ws(p, batch, n_heads, max_len, top_k + local, off);
}

extern "C" size_t cattn_quest_decode_ws(const cattn_pool *p, int batch, int n_heads, int max_len, int top_k,
                                        int local, int sink)
{
    sd_init();
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
    const int nblk = (b->max_len + B - 1) / B, sstride = score_stride(nblk);
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
        /* programmatic launch: the scoring starts streaming the index keys
         * while its predecessor finishes, and waits in-kernel for the queries */
        CUDA_TRY(launch_pdl_on(score_pdl(), p->idx_fp8 ? msa_score_kernel<true> : msa_score_kernel<false>, grid,
                               dim3(SC_THREADS), p->idx_fp8 ? ScoreCfg<true>::SMEM : ScoreCfg<false>::SMEM, st,
                               (const char *)p->idx, p->idx_stride, B, b->tables, b->table_stride, b->lens,
                               (const bf16 *)iq, scores, sstride, local, score_evict_first()));
    } else {
        if (!p->summ) return CATTN_ESHAPE;
        /* one wave: as many CTAs as fit at once */
        sd_init();
        const int chunks = (nblk + 8 * QS_PAGES - 1) / (8 * QS_PAGES);
        const int wave = (qs_occ * n_sms() + n_kv * b->batch - 1) / (n_kv * b->batch);
        dim3 grid(chunks < wave ? chunks : wave, n_kv, b->batch);
        quest_score_kernel<<<grid, 256, 0, st>>>((const char *)p->summ, p->summ_stride, B, b->tables,
                                                 b->table_stride, b->lens, (const bf16 *)q, n_heads, n_kv,
                                                 n_heads / n_kv, scores, sstride, local);
    }
    CUDA_TRY(cudaGetLastError());
    const int C = sd_cluster(p, b, W);
    if (C > 0) return sel_decode(p, b, n_heads, q, out, scale, top_k, local, sink, sel, scores, sstride, C, st);
    size_t tk_smem = (size_t)(nblk < TOPK_SMEM_KEYS ? nblk : TOPK_SMEM_KEYS) * 4;
    /* top-k and the decode start early (programmatic dependent launch) and
     * wait in-kernel, so their launches overlap the previous kernel's tail */
    CUDA_TRY(launch_pdl(topk_kernel, dim3(b->batch * n_kv), dim3(TOPK_THREADS), tk_smem, st, scores, sstride,
                        b->lens, B, n_kv, sink, top_k, local, sel ? sel : sel_ws, b->tables, b->table_stride, tab,
                        lens, merge_cnt));
    CUDA_TRY(cudaGetLastError());
    return decode_run(p, b->batch, n_heads, q, out, scale, tab, (long long)n_kv * W, W, lens, n_kv, 1, W * B, 1,
                      merge_cnt, w + off[4], ws_bytes - off[4], st, true);
}

#ifdef CATTN_SD_PROF
/* Prints stamps [k][c][i] (order[] over the names) as min / max over the
 * CTAs that wrote them, in us after t0. */
static void prof_print(const unsigned long long (*h)[2048][12], unsigned long long t0, int k_first,
                       const int *n_cta, const char *const (*names)[12], const int (*order)[12], const int *n_names)
{
    for (int kk = 0; kk < 2; kk++) {
        const int k = kk ? 1 - k_first : k_first;
        for (int oi = 0; oi < n_names[k]; oi++) {
            const int i = order[k][oi];
            double mn = 1e30, mx = -1e30;
            for (int c = 0; c < n_cta[k]; c++) {
                if (!h[k][c][i]) continue; /* CTA not run, or it stopped before */
                double v = ((double)h[k][c][i] - (double)t0) * 1e-3;
                mn = v < mn ? v : mn;
                mx = v > mx ? v : mx;
            }
            printf("PROF %-16s min %8.2f max %8.2f us\n", names[k][i], mn, mx);
        }
    }
}

static unsigned long long (*prof_fetch(void))[2048][12]
{
    static unsigned long long h[2][2048][12];
    cudaDeviceSynchronize();
    cudaMemcpyFromSymbol(h, g_sd_prof, sizeof(h));
    static unsigned long long z[2][2048][12];
    cudaMemcpyToSymbol(g_sd_prof, z, sizeof(z));
    return h;
}

/* The phase stamps of the last sparse decode, in us after the first
 * scoring CTA started. */
extern "C" void cattn_sd_prof_dump(int n_score, int n_sel)
{
    unsigned long long(*h)[2048][12] = prof_fetch(), t0 = ~0ull;
    for (int c = 0; c < n_score; c++) t0 = h[0][c][0] && h[0][c][0] < t0 ? h[0][c][0] : t0;
    static const char *const names[2][12] = {{"score start", "score end"},
                                             {"sd start", "sd waited", "sd selected", "sd tiles", "sd cta merged",
                                              "sd cluster sync", "sd merged", "sd end", "sel loaded",
                                              "sel threshold", "sel gathered", "sd pages"}};
    static const int order[2][12] = {{0, 1}, {0, 1, 8, 9, 10, 2, 11, 3, 4, 5, 6, 7}};
    const int n_cta[2] = {n_score, n_sel}, n_names[2] = {2, 12};
    prof_print(h, t0, 0, n_cta, names, order, n_names);
}

/* The stamps of the last dense (split-KV) decode, in us after its first
 * CTA started: split CTAs, then the combine kernel's. */
extern "C" void cattn_dec_prof_dump(int n_cta_dec, int n_comb)
{
    unsigned long long(*h)[2048][12] = prof_fetch(), t0 = ~0ull;
    for (int c = 0; c < n_cta_dec; c++) t0 = h[1][c][0] && h[1][c][0] < t0 ? h[1][c][0] : t0;
    static const char *const names[2][12] = {{"combine start", "combine end"},
                                             {"split start", "first tile", "", "tiles done", "partial out"}};
    static const int order[2][12] = {{0, 1}, {0, 1, 3, 4}};
    const int n_cta[2] = {n_comb, n_cta_dec}, n_names[2] = {2, 4};
    prof_print(h, t0, 1, n_cta, names, order, n_names);
}
#endif

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
