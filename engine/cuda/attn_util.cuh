/* attn_util: device helpers shared by the attention kernels (private to
 * engine/cuda).  Tensor-core tiles use mma.sync m16n8k16 bf16 with fp32
 * accumulators; operands reach registers through ldmatrix from shared
 * memory tiles of 128-element (256-byte) rows, XOR-swizzled in 16-byte
 * chunks so that eight rows read at one column hit eight different banks.
 */
#ifndef SPARSED_ATTN_UTIL_CUH
#define SPARSED_ATTN_UTIL_CUH

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <stdint.h>

#include "pdl.cuh"
#include "q8.cuh"

typedef __nv_bfloat16 bf16;

#define NEG_INF (-__int_as_float(0x7f800000))
#define LOG2E_F 1.4426950408889634f

/* ---- shared memory, async copies ---------------------------------------- */

static __device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* Copies 16 bytes; when !valid the destination is zero-filled and nothing is
 * read (src must still be a mapped address). */
static __device__ __forceinline__ void cp16(uint32_t dst, const void *src, bool valid = true)
{
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
static __device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N> static __device__ __forceinline__ void cp_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* Byte offset of 16-byte chunk c (0..15) of row r in a swizzled 256-byte-row tile. */
static __device__ __forceinline__ uint32_t swz(int r, int c)
{
    return (uint32_t)(r * 256 + ((c ^ (r & 7)) << 4));
}

/* ---- tensor core ---------------------------------------------------------- */

/* 16 bytes of shared memory into registers */
static __device__ __forceinline__ void lds128(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

static __device__ __forceinline__ void ldsm4(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
static __device__ __forceinline__ void ldsm4t(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
static __device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
static __device__ __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}
static __device__ __forceinline__ float bf_lo(uint32_t v) { return __uint_as_float(v << 16); }
static __device__ __forceinline__ float bf_hi(uint32_t v) { return __uint_as_float(v & 0xffff0000u); }

/* ---- fp8 e4m3 index keys ---------------------------------------------------
 * The MSA prefill selections widen them to bf16 on their way into shared
 * memory (exact: every e4m3 value is a bf16 value), so their MMA loops stay
 * the bf16 ones. */
static __device__ __forceinline__ uint32_t e4m3x2_to_bf16x2(uint32_t v)
{
    __half2 h = __half2(__nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)v, __NV_E4M3));
    float2 f = __half22float2(h);
    return pack_bf16(f.x, f.y);
}
/* 16 e4m3 bytes (a 16-byte chunk) to bf16: elements 0-7 into lo, 8-15 into hi. */
static __device__ __forceinline__ void e4m3x16_to_bf16(const uint4 &raw, uint4 &lo, uint4 &hi)
{
    lo.x = e4m3x2_to_bf16x2(raw.x & 0xffff);
    lo.y = e4m3x2_to_bf16x2(raw.x >> 16);
    lo.z = e4m3x2_to_bf16x2(raw.y & 0xffff);
    lo.w = e4m3x2_to_bf16x2(raw.y >> 16);
    hi.x = e4m3x2_to_bf16x2(raw.z & 0xffff);
    hi.y = e4m3x2_to_bf16x2(raw.z >> 16);
    hi.z = e4m3x2_to_bf16x2(raw.w & 0xffff);
    hi.w = e4m3x2_to_bf16x2(raw.w >> 16);
}

/* ---- fp8 K/V page rows to bf16 (cuda_attn.h's layout) ----------------------
 * Exact: an e4m3 value times a power-of-two scale is a bf16 value.  A K
 * chunk is 16 dims of one row (lo: the first 8); a V chunk is 8 dims of a
 * pair row, keys 2j and 2j + 1 interleaved (o0: key 2j, o1: key 2j + 1). */
static __device__ __forceinline__ uint32_t e4m3x2_scaled(uint32_t pair, float s)
{
    const uint32_t h2 = e4m3x2_to_bf16x2(pair & 0xffff);
    return pack_bf16(bf_lo(h2) * s, bf_hi(h2) * s);
}
static __device__ __forceinline__ void kv8_k_chunk(const uint4 &w, float s, uint4 &lo, uint4 &hi)
{
    lo = make_uint4(e4m3x2_scaled(w.x, s), e4m3x2_scaled(w.x >> 16, s), e4m3x2_scaled(w.y, s),
                    e4m3x2_scaled(w.y >> 16, s));
    hi = make_uint4(e4m3x2_scaled(w.z, s), e4m3x2_scaled(w.z >> 16, s), e4m3x2_scaled(w.w, s),
                    e4m3x2_scaled(w.w >> 16, s));
}
static __device__ __forceinline__ void kv8_v_chunk(const uint4 &w, float s0, float s1, uint4 &o0, uint4 &o1)
{
    const uint32_t ww[4] = {w.x, w.y, w.z, w.w};
    uint32_t a[4], b[4];
#pragma unroll
    for (int j = 0; j < 4; j++) { /* word j: dims 2j, 2j + 1 of both keys, regrouped key by key */
        const uint32_t m = __byte_perm(ww[j], 0u, 0x3120);
        a[j] = e4m3x2_scaled(m, s0);
        b[j] = e4m3x2_scaled(m >> 16, s1);
    }
    o0 = make_uint4(a[0], a[1], a[2], a[3]);
    o1 = make_uint4(b[0], b[1], b[2], b[3]);
}

/* Rows [0, rows) of one KV head's fp8 K and V (K rows of 128 bytes at k,
 * V pair rows of 256 at v, rows even; scales sk[r], sv[r]) to bf16 rows:
 * 16-byte chunk ch (8 dims) of row r at byte pos(r, ch) of ks and vs
 * (shared or global memory).  Rows at or past `valid` are zeros: stale
 * rows may hold anything, and a NaN there would reach the products
 * through P = 0.  Plain stores: the caller syncs (and fences for wgmma). */
template <typename Pos>
static __device__ __forceinline__ void kv8_widen_rows(const char *k, const char *v, const float *sk, const float *sv,
                                                      int rows, int valid, unsigned char *ks, unsigned char *vs,
                                                      Pos pos, int tid, int nthr)
{
    const uint4 z = make_uint4(0u, 0u, 0u, 0u);
    for (int c = tid; c < rows * 8; c += nthr) { /* K: row r, dims 16 ch .. */
        const int r = c >> 3, ch = c & 7;
        uint4 lo = z, hi = z;
        if (r < valid) kv8_k_chunk(*(const uint4 *)(k + r * 128 + ch * 16), sk[r], lo, hi);
        *(uint4 *)(ks + pos(r, 2 * ch)) = lo;
        *(uint4 *)(ks + pos(r, 2 * ch + 1)) = hi;
    }
    for (int c = tid; c < rows * 8; c += nthr) { /* V: pair row, dims 8 ch .. of rows r0, r0 + 1 */
        const int r0 = 2 * (c >> 4), ch = c & 15;
        uint4 o0 = z, o1 = z;
        if (r0 < valid) {
            kv8_v_chunk(*(const uint4 *)(v + r0 * 128 + ch * 16), sv[r0], sv[r0 + 1], o0, o1);
            if (r0 + 1 >= valid) o1 = z;
        }
        *(uint4 *)(vs + pos(r0, ch)) = o0;
        *(uint4 *)(vs + pos(r0 + 1, ch)) = o1;
    }
}

/* ---- the fp8 indexer's queries (q8.cuh) ---------------------------------- */
/* An mma.sync m16k16 A fragment set of two rows, qa[kk][0, 2] row lo and
 * [1, 3] row hi (bf16 pairs), the quad holding a row's 128 dims: rounded
 * in place as q8.cuh says (e4m3 values are exact in bf16). */
static __device__ __forceinline__ void q8_round_frag(uint32_t (&qa)[8][4])
{
    float amax[2] = {0.f, 0.f};
#pragma unroll
    for (int kk = 0; kk < 8; kk++)
#pragma unroll
        for (int r = 0; r < 4; r++)
            amax[r & 1] = fmaxf(amax[r & 1], fmaxf(fabsf(bf_lo(qa[kk][r])), fabsf(bf_hi(qa[kk][r]))));
    const float sc[2] = {q8_quad_scale(amax[0]), q8_quad_scale(amax[1])};
#pragma unroll
    for (int kk = 0; kk < 8; kk++)
#pragma unroll
        for (int r = 0; r < 4; r++)
            qa[kk][r] = pack_bf16(q8_round(bf_lo(qa[kk][r]), sc[r & 1]), q8_round(bf_hi(qa[kk][r]), sc[r & 1]));
}

/* ---- running top-k lists of the MSA prefill selections -------------------
 * Column col's list lives in ls / li at [pos * ROWS + col], descending;
 * inserts v (block kb), keeps at most top_k, and sets thr to the score a
 * newcomer must beat once the list is full. */
template <int ROWS>
static __device__ __forceinline__ void top_list_insert(float *ls, int *li, int top_k, int col, int &cnt, float &thr,
                                                       float v, int kb)
{
    int pos = cnt < top_k ? cnt : top_k - 1;
    while (pos > 0 && ls[(pos - 1) * ROWS + col] < v) {
        ls[pos * ROWS + col] = ls[(pos - 1) * ROWS + col];
        li[pos * ROWS + col] = li[(pos - 1) * ROWS + col];
        pos--;
    }
    ls[pos * ROWS + col] = v;
    li[pos * ROWS + col] = kb;
    if (cnt < top_k) cnt++;
    thr = cnt == top_k ? ls[(top_k - 1) * ROWS + col] : NEG_INF;
}

/* A row's selection for attention: its top_k list (li[i * stride] for
 * i < cnt, -1 after), then the `local` blocks ending at position pos's. */
static __device__ __forceinline__ void sel_row_write(int32_t *o, const int *li, int stride, int cnt, int top_k,
                                                     int local, int pos, int B)
{
    for (int i = 0; i < top_k; i++) o[i] = i < cnt ? li[i * stride] : -1;
    for (int l = 0; l < local; l++) {
        const int blk = pos / B - local + 1 + l;
        o[top_k + l] = blk >= 0 ? blk : -1;
    }
}

/* A selection kernel's result for row (tok, g) of its key range `split`
 * of S: the row itself when the keys are not split, else the range's
 * list to ps/pi [tok][g][S][top_k] (-inf, -1 past cnt) for select_merge.
 * ls/li: the list, entry i at [i * stride]. */
static __device__ __forceinline__ void sel_list_out(int32_t *sel, float *ps, int32_t *pi, int S, int split, int tok,
                                                    int g, const float *ls, const int *li, int stride, int cnt,
                                                    int top_k, int local, int q_pos0, int B)
{
    if (S == 1) {
        sel_row_write(sel + ((long long)tok * 4 + g) * (top_k + local), li, stride, cnt, top_k, local, q_pos0 + tok,
                      B);
        return;
    }
    const long long base = (((long long)tok * 4 + g) * S + split) * top_k;
    for (int i = 0; i < top_k; i++) {
        ps[base + i] = i < cnt ? ls[i * stride] : NEG_INF;
        pi[base + i] = i < cnt ? li[i * stride] : -1;
    }
}

/* ---- a warp's 32 query rows against K/V tiles ------------------------------
 * Q: 32 rows (two m16 tiles) in a swizzled tile at q_s; K, V: 64 rows at
 * k_s, v_s.  Scores are scaled into the log2 domain; a key at position
 * key0+j is masked for row r when need_mask and key0+j > rowpos[r].
 * Keeps the flash-attention state: O (unnormalised), running max m and a
 * per-thread partial row sum l (summed over the quad at the end).
 * Row of (mt, h): mt*16 + lane/4 + 8*h. */
struct AttnState {
    float o[2][16][4];
    float m[2][2];
    float l[2][2];
};

static __device__ __forceinline__ void attn_state_init(AttnState &st)
{
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
#pragma unroll
        for (int n = 0; n < 16; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) st.o[mt][n][e] = 0.f;
        st.m[mt][0] = st.m[mt][1] = NEG_INF;
        st.l[mt][0] = st.l[mt][1] = 0.f;
    }
}

/* 32 keys per call keeps the score tile at 32 registers; the caller's
 * 64-key stage is two calls. */
static __device__ __forceinline__ void attn_tile32(AttnState &st, uint32_t q_s, uint32_t k_s, uint32_t v_s,
                                                   int key0, bool need_mask, const int (&rowpos)[2][2],
                                                   float scale_log2)
{
    const int lane = threadIdx.x & 31;
    float s[2][4][4];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[mt][n][e] = 0.f;

    const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8;
    const int a_cb = lane >> 4;
    const int k_row = (lane >> 4) * 8 + (lane & 7);
    const int k_cb = (lane >> 3) & 1;
#pragma unroll
    for (int kk = 0; kk < 8; kk++) {
        uint32_t a0[4], a1[4];
        ldsm4(a0, q_s + swz(a_row, 2 * kk + a_cb));
        ldsm4(a1, q_s + swz(16 + a_row, 2 * kk + a_cb));
#pragma unroll
        for (int np = 0; np < 2; np++) {
            uint32_t b[4];
            ldsm4(b, k_s + swz(16 * np + k_row, 2 * kk + k_cb));
            mma16816(s[0][2 * np], a0, b[0], b[1]);
            mma16816(s[0][2 * np + 1], a0, b[2], b[3]);
            mma16816(s[1][2 * np], a1, b[0], b[1]);
            mma16816(s[1][2 * np + 1], a1, b[2], b[3]);
        }
    }

    /* scale, mask, online softmax */
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float mx = NEG_INF;
#pragma unroll
            for (int n = 0; n < 4; n++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float v = s[mt][n][2 * h + e] * scale_log2;
                    if (need_mask && key0 + 8 * n + 2 * (lane & 3) + e > rowpos[mt][h]) v = NEG_INF;
                    s[mt][n][2 * h + e] = v;
                    mx = fmaxf(mx, v);
                }
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            float mnew = fmaxf(st.m[mt][h], mx);
            float base = mnew == NEG_INF ? 0.f : mnew;
            float corr = exp2f(st.m[mt][h] - base);
            st.m[mt][h] = mnew;
            float sum = 0.f;
#pragma unroll
            for (int n = 0; n < 4; n++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float p = exp2f(s[mt][n][2 * h + e] - base);
                    s[mt][n][2 * h + e] = p;
                    sum += p;
                }
            }
            st.l[mt][h] = st.l[mt][h] * corr + sum;
#pragma unroll
            for (int n = 0; n < 16; n++) {
                st.o[mt][n][2 * h] *= corr;
                st.o[mt][n][2 * h + 1] *= corr;
            }
        }
    }

    /* O += P V */
    const int v_row = ((lane >> 3) & 1) * 8 + (lane & 7);
    const int v_cb = lane >> 4;
#pragma unroll
    for (int kk = 0; kk < 2; kk++) {
        uint32_t pa[2][4];
#pragma unroll
        for (int mt = 0; mt < 2; mt++) {
            pa[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
            pa[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
            pa[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
            pa[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < 8; dp++) {
            uint32_t b[4];
            ldsm4t(b, v_s + swz(16 * kk + v_row, 2 * dp + v_cb));
            mma16816(st.o[0][2 * dp], pa[0], b[0], b[1]);
            mma16816(st.o[0][2 * dp + 1], pa[0], b[2], b[3]);
            mma16816(st.o[1][2 * dp], pa[1], b[0], b[1]);
            mma16816(st.o[1][2 * dp + 1], pa[1], b[2], b[3]);
        }
    }
}

/* A 64-key tile (rows 0..63 of swizzled K and V tiles). */
static __device__ __forceinline__ void attn_tile64(AttnState &st, uint32_t q_s, uint32_t k_s, uint32_t v_s,
                                                   int key0, bool need_mask, const int (&rowpos)[2][2],
                                                   float scale_log2)
{
#pragma unroll 1
    for (int sub = 0; sub < 2; sub++)
        attn_tile32(st, q_s, k_s + sub * 32 * 256, v_s + sub * 32 * 256, key0 + 32 * sub, need_mask, rowpos,
                    scale_log2);
}

/* Quad-sums the partial row sums; call once after the last tile. */
static __device__ __forceinline__ void attn_state_finish(AttnState &st)
{
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            float v = st.l[mt][h];
            v += __shfl_xor_sync(0xffffffffu, v, 1);
            v += __shfl_xor_sync(0xffffffffu, v, 2);
            st.l[mt][h] = v;
        }
}

/* ---- bucketing ------------------------------------------------------------ */

/* Exclusive scan of cnt[0..n) into off and fill, by one CTA of 1024
 * threads (each sums a run, then the runs' totals are scanned). */
static __device__ __forceinline__ void cta_scan_excl(const int *cnt, int *off, int *fill, int n)
{
    __shared__ int part[1024];
    const int per = (n + 1023) / 1024;
    const int lo = threadIdx.x * per, hi = min(n, lo + per);
    int s = 0;
    for (int i = lo; i < hi; i++) s += cnt[i];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int x = 1; x < 1024; x <<= 1) {
        int v = threadIdx.x >= x ? part[threadIdx.x - x] : 0;
        __syncthreads();
        part[threadIdx.x] += v;
        __syncthreads();
    }
    int run = part[threadIdx.x] - s;
    for (int i = lo; i < hi; i++) {
        off[i] = fill[i] = run;
        run += cnt[i];
    }
}

#define CUDA_TRY(x)                                   \
    do {                                              \
        cudaError_t e_ = (x);                         \
        if (e_ != cudaSuccess) return (int)e_;        \
    } while (0)

#endif
