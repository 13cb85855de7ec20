/* attn_prefill: paged prefill kernels.
 *
 * prefill_kernel: causal flash-attention 2 over paged K/V.  A CTA owns 128
 * query tokens of one head (4 warps x 32 rows); 64-key K/V tiles stream
 * through a cp.async double buffer.  With a block list it visits only the
 * listed blocks (block-sparse prefill with a mask shared by a query block).
 *
 * MSA prefill runs in two stages:
 *  1. msa_select_kernel: per 128 new tokens x 4 groups (512 rows, two per
 *     thread), index scores iq . ik on tensor cores for every earlier
 *     block, max-pooled per block in registers and folded into a running
 *     per-row top-k in shared memory.  No score matrix reaches memory.
 *     fp8 index keys are widened to bf16 on their way into shared memory
 *     and the index queries rounded to e4m3 (attn_util.cuh), which bf16
 *     holds exactly.
 *  2. KV-block outer sparse attention over a chunk of tokens: bucket the
 *     (token, slot) pairs of the chunk by selected block, let one CTA per
 *     (block, group) load the block's K/V once and run every query that
 *     chose it (two tokens x 16 heads per warp), write a normalised partial
 *     per (token, slot, head); a last kernel merges the partials by their
 *     log-sum-exp.  On Hopper the CTA's rows run on wgmma instead
 *     (sp_attn_sm90_kernel, attn_prefill_sm90.cu).
 *
 * Key splits: a chunk of a few hundred tokens deep in a long context is
 * only a few CTAs of 128 tokens (a head), each streaming every earlier key
 * (a 512-token chunk at 1M: 4 selection CTAs on 132 SMs).  So when the
 * CTAs are below one wave, both stage 1 and dense prefill (here and in
 * attn_prefill_sm90.cu) cut the keys into S ranges, a CTA each: selection
 * ranges keep their own top-k lists, which select_merge merges; dense
 * ranges write normalised fp32 rows with their log2-sum-exp, which
 * prefill_combine weighs together.
 */
#include <climits>

#include "attn_sm90.h"
#include "attn_util.cuh"
#include "cuda_attn.h"

/* ---- key splits --------------------------------------------------------------- */

#define SPLIT_MAX 64

int prefill_splits(int ctas, int per_sm, int tiles, int min_tiles, size_t per_split, size_t ws_bytes,
                   const char *env)
{
    int dev = 0, sms = 0;
    if (per_split == 0 || cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) {
        cudaGetLastError();
        return 1;
    }
    const int fit = ws_bytes / per_split < SPLIT_MAX ? (int)(ws_bytes / per_split) : SPLIT_MAX;
    const char *e = getenv(env);
    if (e && *e) {
        const int n = atoi(e) < fit ? atoi(e) : fit;
        return n < 2 ? 1 : n;
    }
    const int slots = sms * (per_sm > 0 ? per_sm : 1);
    if (ctas >= slots) return 1;
    const int most = tiles / min_tiles < fit ? tiles / min_tiles : fit;
    const int s_min = (slots + ctas - 1) / ctas;
    if (s_min >= most) return most < 2 ? 1 : most;
    int best = 1;
    double best_fill = 0;
    for (int S = s_min; S <= 2 * s_min && S <= most; S++) {
        const int n = ctas * S, waves = (n + slots - 1) / slots;
        const double fill = (double)n / ((double)waves * slots);
        if (fill > best_fill + 1e-9) best = S, best_fill = fill;
    }
    return best < 2 ? 1 : best;
}

/* One thread a row (tok, group). */
__global__ void __launch_bounds__(128) select_merge_kernel(const float *ps, const int32_t *pi, int S, int n_q,
                                                           int q_pos0, int B, int top_k, int local, int32_t *sel)
{
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= n_q * 4) return;
    float ls[32];
    int li[32], cnt = 0;
    float thr = NEG_INF;
    for (int s = 0; s < S; s++) {
        const long long base = ((long long)r * S + s) * top_k;
        for (int i = 0; i < top_k; i++) {
            const float v = ps[base + i];
            const int id = pi[base + i];
            if (id < 0 || !(v > thr)) break; /* the rest of this list is no better */
            top_list_insert<1>(ls, li, top_k, 0, cnt, thr, v, id);
        }
    }
    sel_row_write(sel + (long long)r * (top_k + local), li, 1, cnt, top_k, local, q_pos0 + (r >> 2), B);
}

int select_merge(const float *ps, const int32_t *pi, int S, int n_q, int q_pos0, int B, int top_k, int local,
                 int32_t *sel, void *stream)
{
    if (top_k > 32) return CATTN_ESHAPE;
    select_merge_kernel<<<(n_q * 4 + 127) / 128, 128, 0, (cudaStream_t)stream>>>(ps, pi, S, n_q, q_pos0, B, top_k,
                                                                                  local, sel);
    CUDA_TRY(cudaGetLastError());
    return 0;
}

/* A warp a row (tok, head), four dims a lane. */
__global__ void __launch_bounds__(128) prefill_combine_kernel(const float *part_o, const float *part_lse, int S,
                                                              long long rows, bf16 *out)
{
    const long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    float mx = NEG_INF;
    for (int s = 0; s < S; s++) mx = fmaxf(mx, part_lse[s * rows + r]);
    float acc[4] = {0.f, 0.f, 0.f, 0.f}, wsum = 0.f;
    for (int s = 0; s < S; s++) {
        const float l = part_lse[s * rows + r];
        if (l == NEG_INF) continue;
        const float w = exp2f(l - mx);
        const float4 o = *(const float4 *)(part_o + (s * rows + r) * 128 + 4 * lane);
        acc[0] += w * o.x, acc[1] += w * o.y, acc[2] += w * o.z, acc[3] += w * o.w;
        wsum += w;
    }
    const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
    uint2 v;
    v.x = pack_bf16(acc[0] * inv, acc[1] * inv);
    v.y = pack_bf16(acc[2] * inv, acc[3] * inv);
    *(uint2 *)(out + r * 128 + 4 * lane) = v;
}

int prefill_combine(const float *part_o, const float *part_lse, int S, int n_q, int n_heads, void *out,
                    void *stream)
{
    const long long rows = (long long)n_q * n_heads;
    prefill_combine_kernel<<<(unsigned)((rows * 32 + 127) / 128), 128, 0, (cudaStream_t)stream>>>(part_o, part_lse,
                                                                                                   S, rows,
                                                                                                   (bf16 *)out);
    CUDA_TRY(cudaGetLastError());
    return 0;
}

/* Workspace of a dense prefill split: S ranges of n_q x n_heads rows. */
static size_t split_bytes(int S, int n_q, int n_heads) { return (size_t)S * n_q * n_heads * (128 * 4 + 4); }

extern "C" size_t cattn_prefill_ws(void)
{
    int dev = 0, sms = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) !=
                                                  cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    /* splits start below a wave of (tile, head) CTAs and end below two
     * waves of (tile, head, range) plus one range a CTA: under 4 waves of
     * 128-token rows with one CTA an SM (the Hopper kernel; the portable
     * one, two an SM on some cards, may get fewer ranges than it would
     * take) */
    return split_bytes(4 * sms, 128, 1) + 256;
}

/* ---- dense / block-list prefill ------------------------------------------- */

#define PF_ROWS 128
#define PF_KT 64
#define PF_STAGE_BYTES (2 * PF_KT * 256)
#define PF_SMEM (PF_ROWS * 256 + 2 * PF_STAGE_BYTES)
#define PF_MAX_LIST 512

struct PfArgs {
    const bf16 *q;
    bf16 *out;
    const char *k, *v;
    long long k_stride, v_stride;
    const int32_t *table;
    int n_q, q_pos0, n_heads, n_kv, ratio, B;
    const int32_t *blist;
    int blist_w, blist_per_kvh;
    float scale_log2;
    int S;                     /* key ranges (1 with blist); above 1 rows go to part_o, part_lse */
    float *part_o, *part_lse;  /* see prefill_combine */
};

static __device__ __forceinline__ void pf_load(const PfArgs &a, int kvh, int key0, int kv_len, uint32_t dst)
{
    long long page = a.table[key0 / a.B];
    int off = key0 % a.B;
    const char *kp = a.k + page * a.k_stride + (long long)(kvh * a.B + off) * 256;
    const char *vp = a.v + page * a.v_stride + (long long)(kvh * a.B + off) * 256;
#pragma unroll
    for (int i = 0; i < PF_KT * 16 / 128; i++) {
        int c = threadIdx.x + 128 * i;
        int r = c >> 4, ch = c & 15;
        bool ok = key0 + r < kv_len;
        cp16(dst + swz(r, ch), kp + r * 256 + ch * 16, ok);
        cp16(dst + PF_KT * 256 + swz(r, ch), vp + r * 256 + ch * 16, ok);
    }
}

__global__ void __launch_bounds__(128) prefill_kernel(PfArgs a)
{
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ int s_list[PF_MAX_LIST];
    __shared__ int s_n;
    const int qt = gridDim.x / a.S - 1 - blockIdx.x / a.S; /* longest rows first */
    const int split = blockIdx.x % a.S;
    const int h = blockIdx.y, kvh = h / a.ratio;
    const int q0 = qt * PF_ROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint32_t qs = smem_u32(smem), kvs = qs + PF_ROWS * 256;
    const int kv_len = a.q_pos0 + a.n_q;
    const int p_lo = a.q_pos0 + q0, p_hi = a.q_pos0 + min(q0 + PF_ROWS, a.n_q) - 1;

    for (int c = threadIdx.x; c < PF_ROWS * 16; c += 128) {
        int r = c >> 4, ch = c & 15, tok = q0 + r;
        bool ok = tok < a.n_q;
        cp16(qs + swz(r, ch), a.q + ((long long)(ok ? tok : 0) * a.n_heads + h) * 128 + ch * 8, ok);
    }
    cp_commit();

    int n_tiles, it0 = 0;
    if (a.blist) {
        if (threadIdx.x == 0) {
            const int32_t *row = a.blist + ((long long)qt * (a.blist_per_kvh ? a.n_kv : 1) +
                                            (a.blist_per_kvh ? kvh : 0)) * a.blist_w;
            int n = 0;
            for (int i = 0; i < a.blist_w; i++)
                if (row[i] >= 0 && row[i] * a.B <= p_hi) s_list[n++] = row[i];
            s_n = n;
        }
        __syncthreads();
        n_tiles = 2 * s_n;
    } else { /* this CTA's range of the key tiles */
        const int all = (p_hi + PF_KT) / PF_KT, per = (all + a.S - 1) / a.S;
        it0 = min(all, split * per);
        n_tiles = min(all, it0 + per) - it0;
    }
#define PF_KEY0(it) (a.blist ? s_list[(it) >> 1] * a.B + ((it) & 1) * PF_KT : (it0 + (it)) * PF_KT)

    AttnState st;
    attn_state_init(st);
    int rowpos[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++) rowpos[mt][hh] = p_lo + warp * 32 + mt * 16 + (lane >> 2) + 8 * hh;

    if (n_tiles > 0) pf_load(a, kvh, PF_KEY0(0), kv_len, kvs);
    cp_commit();
    for (int it = 0; it < n_tiles; it++) {
        if (it + 1 < n_tiles) pf_load(a, kvh, PF_KEY0(it + 1), kv_len, kvs + ((it + 1) & 1) * PF_STAGE_BYTES);
        cp_commit();
        cp_wait<1>();
        __syncthreads();
        const int key0 = PF_KEY0(it);
        const uint32_t ks = kvs + (it & 1) * PF_STAGE_BYTES;
        attn_tile64(st, qs + warp * 32 * 256, ks, ks + PF_KT * 256, key0, key0 + PF_KT - 1 > p_lo, rowpos,
                    a.scale_log2);
        __syncthreads();
    }
#undef PF_KEY0
    cp_wait<0>();
    attn_state_finish(st);
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
        for (int hh = 0; hh < 2; hh++) {
            int tok = q0 + warp * 32 + mt * 16 + (lane >> 2) + 8 * hh;
            if (tok >= a.n_q) continue;
            float inv = st.l[mt][hh] > 0.f ? 1.f / st.l[mt][hh] : 0.f;
            if (a.S > 1) {
                const long long r = ((long long)split * a.n_q + tok) * a.n_heads + h;
                float2 *po = (float2 *)(a.part_o + r * 128 + 2 * (lane & 3));
#pragma unroll
                for (int n = 0; n < 16; n++)
                    po[4 * n] = make_float2(st.o[mt][n][2 * hh] * inv, st.o[mt][n][2 * hh + 1] * inv);
                if ((lane & 3) == 0)
                    a.part_lse[r] = st.l[mt][hh] > 0.f ? st.m[mt][hh] + __log2f(st.l[mt][hh]) : NEG_INF;
                continue;
            }
            uint32_t *op = (uint32_t *)(a.out + ((long long)tok * a.n_heads + h) * 128 + 2 * (lane & 3));
#pragma unroll
            for (int n = 0; n < 16; n++)
                op[4 * n] = pack_bf16(st.o[mt][n][2 * hh] * inv, st.o[mt][n][2 * hh + 1] * inv);
        }
}

/* ---- MSA stage 1: fused index scoring, block max and top-k ----------------
 * A CTA owns 128 tokens x 4 groups = 512 rows; warp w takes the 64 rows of
 * group w/2, tokens (w&1)*64.., as A fragments in registers, so each B
 * fragment read from shared memory feeds 8 MMAs (32-row warps fed 4, and
 * the ldmatrix traffic matched the tensor rate).  Keys go by quarters of 32
 * to keep the accumulators at 64 registers.  Each thread keeps the top
 * lists of two rows. */

#define IX_TOK 128
#define IX_ROWS 512
#define IX_STAGES 3
#define IX_STAGE_BYTES (128 * 256)

struct IxArgs {
    const bf16 *iq;
    const char *idx;
    long long istride;
    const int32_t *table;
    int n_q, q_pos0, B, top_k, local;
    int32_t *sel;
    int S;          /* key ranges; above 1 the lists go to ps/pi (see select_merge) */
    float *ps;
    int32_t *pi;
};

static __device__ __forceinline__ void ix_load(const IxArgs &a, int kb, uint32_t dst)
{
    const char *src = a.idx + (long long)a.table[kb] * a.istride;
#pragma unroll
    for (int i = 0; i < 128 * 16 / 256; i++) {
        int c = threadIdx.x + 256 * i;
        cp16(dst + swz(c >> 4, c & 15), src + c * 16);
    }
}

/* fp8 e4m3 index keys (128 bytes a row): loaded to registers and widened
 * to bf16 (e4m3x16_to_bf16) into the same swizzled stage ix_load fills, so
 * the MMA loop is the bf16 one.  Synchronous: the stage it fills is two
 * blocks ahead, read after the next barriers. */
static __device__ __forceinline__ void ix_load_fp8(const IxArgs &a, int kb, unsigned char *dst)
{
    const uint4 *src = (const uint4 *)(a.idx + (long long)a.table[kb] * a.istride);
    uint4 raw[128 * 8 / 256];
#pragma unroll
    for (int i = 0; i < 128 * 8 / 256; i++) raw[i] = src[threadIdx.x + 256 * i];
#pragma unroll
    for (int i = 0; i < 128 * 8 / 256; i++) {
        int c = threadIdx.x + 256 * i, r = c >> 3, ch = 2 * (c & 7); /* 16 keys: bf16 chunks ch, ch+1 */
        uint4 lo, hi;
        e4m3x16_to_bf16(raw[i], lo, hi);
        *(uint4 *)(dst + swz(r, ch)) = lo;
        *(uint4 *)(dst + swz(r, ch + 1)) = hi;
    }
}

/* Block kb's index keys into stage s. */
template <bool FP8>
static __device__ __forceinline__ void ix_stage(const IxArgs &a, int kb, unsigned char *smem, int s)
{
    if (FP8)
        ix_load_fp8(a, kb, smem + s * IX_STAGE_BYTES);
    else
        ix_load(a, kb, smem_u32(smem) + s * IX_STAGE_BYTES);
}

template <bool FP8>
__global__ void __launch_bounds__(256, 1) msa_select_kernel(IxArgs a)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int tile = gridDim.x / a.S - 1 - blockIdx.x / a.S; /* most blocks first */
    const int split = blockIdx.x % a.S;
    const int t0 = tile * IX_TOK;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = warp >> 1, tw = t0 + (warp & 1) * 64;

    /* this warp's 64 rows (tokens tw.., group g) as A fragments */
    uint32_t qa[4][8][4];
#pragma unroll
    for (int mt = 0; mt < 4; mt++) {
        int rlo = tw + mt * 16 + (lane >> 2), rhi = rlo + 8;
        const bf16 *plo = a.iq + ((long long)rlo * 4 + g) * 128;
        const bf16 *phi = a.iq + ((long long)rhi * 4 + g) * 128;
#pragma unroll
        for (int kk = 0; kk < 8; kk++) {
            int c = 16 * kk + 2 * (lane & 3);
            qa[mt][kk][0] = rlo < a.n_q ? *(const uint32_t *)(plo + c) : 0u;
            qa[mt][kk][1] = rhi < a.n_q ? *(const uint32_t *)(phi + c) : 0u;
            qa[mt][kk][2] = rlo < a.n_q ? *(const uint32_t *)(plo + c + 8) : 0u;
            qa[mt][kk][3] = rhi < a.n_q ? *(const uint32_t *)(phi + c + 8) : 0u;
        }
        if (FP8) q8_round_frag(qa[mt]); /* the fp8 indexer scores e4m3 queries */
    }
    /* the two rows this thread keeps the lists of: m-tile lane&3, both halves */
    const int my_mt = lane & 3, my_r = my_mt * 16 + (lane >> 2); /* rows my_r, my_r + 8 */
    const int col0 = (warp >> 1) * 128 + (warp & 1) * 64 + my_r;
    int my_cand[2], cnt[2] = {0, 0};
    float thr[2] = {NEG_INF, NEG_INF};
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        int tok = tw + my_r + 8 * hh;
        my_cand[hh] = tok < a.n_q ? max(0, (a.q_pos0 + tok) / a.B - a.local + 1) : 0;
    }
    const int last = min(t0 + IX_TOK, a.n_q) - 1;
    const int nb_all = max(0, (a.q_pos0 + last) / a.B - a.local + 1);
    /* this CTA's blocks kb0 .. kb0 + nb - 1 */
    const int per = (nb_all + a.S - 1) / a.S;
    const int kb0 = min(nb_all, split * per), nb = min(nb_all, kb0 + per) - kb0;

    float *ls = (float *)(smem + IX_STAGES * IX_STAGE_BYTES);
    int *li = (int *)(ls + a.top_k * IX_ROWS);

    const uint32_t base = smem_u32(smem);
    const int k_row = (lane >> 4) * 8 + (lane & 7), k_cb = (lane >> 3) & 1;
#pragma unroll
    for (int s = 0; s < IX_STAGES - 1; s++) {
        if (s < nb) ix_stage<FP8>(a, kb0 + s, smem, s);
        cp_commit();
    }
    for (int kb = 0; kb < nb; kb++) {
        cp_wait<IX_STAGES - 2>();
        __syncthreads(); /* block kb landed; everyone is done with block kb-1's stage */
        if (kb + IX_STAGES - 1 < nb)
            ix_stage<FP8>(a, kb0 + kb + IX_STAGES - 1, smem, (kb + IX_STAGES - 1) % IX_STAGES);
        cp_commit();
        const uint32_t ks = base + (kb % IX_STAGES) * IX_STAGE_BYTES;
        float bm[4][2];
#pragma unroll
        for (int mt = 0; mt < 4; mt++) bm[mt][0] = bm[mt][1] = NEG_INF;
#pragma unroll
        for (int qt = 0; qt < 4; qt++) {
            float acc[4][4][4];
#pragma unroll
            for (int mt = 0; mt < 4; mt++)
#pragma unroll
                for (int n = 0; n < 4; n++) acc[mt][n][0] = acc[mt][n][1] = acc[mt][n][2] = acc[mt][n][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < 8; kk++) {
#pragma unroll
                for (int np = 0; np < 2; np++) {
                    uint32_t b[4];
                    ldsm4(b, ks + swz(32 * qt + 16 * np + k_row, 2 * kk + k_cb));
#pragma unroll
                    for (int mt = 0; mt < 4; mt++) {
                        mma16816(acc[mt][2 * np], qa[mt][kk], b[0], b[1]);
                        mma16816(acc[mt][2 * np + 1], qa[mt][kk], b[2], b[3]);
                    }
                }
            }
#pragma unroll
            for (int mt = 0; mt < 4; mt++)
#pragma unroll
                for (int n = 0; n < 4; n++) {
                    bm[mt][0] = fmaxf(bm[mt][0], fmaxf(acc[mt][n][0], acc[mt][n][1]));
                    bm[mt][1] = fmaxf(bm[mt][1], fmaxf(acc[mt][n][2], acc[mt][n][3]));
                }
        }
#pragma unroll
        for (int mt = 0; mt < 4; mt++)
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                bm[mt][hh] = fmaxf(bm[mt][hh], __shfl_xor_sync(0xffffffffu, bm[mt][hh], 1));
                bm[mt][hh] = fmaxf(bm[mt][hh], __shfl_xor_sync(0xffffffffu, bm[mt][hh], 2));
            }
        float v[2] = {bm[0][0], bm[0][1]};
#pragma unroll
        for (int mt = 1; mt < 4; mt++)
            if (my_mt == mt) v[0] = bm[mt][0], v[1] = bm[mt][1];
        if (a.top_k > 0) {
#pragma unroll
            for (int hh = 0; hh < 2; hh++)
                if (kb0 + kb < my_cand[hh] && v[hh] > thr[hh])
                    top_list_insert<IX_ROWS>(ls, li, a.top_k, col0 + 8 * hh, cnt[hh], thr[hh], v[hh], kb0 + kb);
        }
    }
    cp_wait<0>();
#pragma unroll
    for (int hh = 0; hh < 2; hh++) {
        const int tok = tw + my_r + 8 * hh, col = col0 + 8 * hh;
        if (tok < a.n_q)
            sel_list_out(a.sel, a.ps, a.pi, a.S, split, tok, g, ls + col, li + col, IX_ROWS, cnt[hh], a.top_k,
                         a.local, a.q_pos0, a.B);
    }
}

/* ---- MSA stage 2: KV-block outer sparse attention -------------------------- */

/* (sel holds a chunk's tokens x 4 groups x W slots: under 2^31 entries,
 * so the index math is 32-bit; a 64-bit divide costs ~70 instructions) */
__global__ void sp_count_kernel(const int32_t *sel, int n, int W, int nblk, int *cnt)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int b = sel[i];
    if (b >= 0) atomicAdd(&cnt[((i / W) & 3) * nblk + b], 1);
}

__global__ void sp_fill_kernel(const int32_t *sel, int n, int W, int nblk, int *fill, int *list)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int b = sel[i];
    if (b < 0) return;
    const int row = i / W; /* token x 4 + group */
    int pos = atomicAdd(&fill[(row & 3) * nblk + b], 1);
    list[pos] = (row >> 2) * 64 + (i - row * W);
}

/* Exclusive scan of cnt into off and fill (one CTA of 1024 threads). */
__global__ void __launch_bounds__(1024) sp_scan_kernel(const int *cnt, int *off, int *fill, int n)
{
    cta_scan_excl(cnt, off, fill, n);
}

/* A warp takes SP_ROWS query rows a step; the CTA's SP_WARPS warps share
 * the block's K/V. */
#define SP_ROWS 32
#define SP_WARPS 4
#define SP_SMEM (2 * 128 * 256 + SP_WARPS * SP_ROWS * 256)

/* A warp step takes SP_ROWS / ratio (token, slot) items of the block's
 * list, row r = ratio * item + head: with few heads a group the mma tiles
 * still fill (4 heads: 8 tokens in 32 rows, not 2 tokens of which 8 rows
 * count).  Rows past the items are zeros and never stored.  R is the
 * ratio when the kernel is built for one (4, 8 or 16), 0 for any
 * (a.ratio).  Lane j < SP_ROWS / ratio loads item j of the step (`mine`,
 * -1 past the list) and the others read it by shuffle: with R the source
 * lane of a row the lane copies (row lane / 16 + 2 i) is 2 i / R, known at
 * compile time. */
template <int R>
static __device__ __forceinline__ int sp_ratio(const SpArgs &a) { return R ? R : a.ratio; }

static __device__ __forceinline__ int sp_mine(const int *items, int n, int i0, int ipw, int lane)
{
    return lane < ipw && i0 + lane < n ? items[i0 + lane] : -1;
}

/* Item (or -1) of row lane / 16 + 2 i (the rows of the 16-byte copies);
 * every lane must call. */
template <int R>
static __device__ __forceinline__ int sp_copy_item(const SpArgs &a, int mine, int i, int lane)
{
    if constexpr (R > 0) {
        return __shfl_sync(0xffffffffu, mine, 2 * i / R);
    } else {
        const int j = ((lane >> 4) + 2 * i) / a.ratio;
        const int it = __shfl_sync(0xffffffffu, mine, j < 32 ? j : 0);
        return j < SP_ROWS / a.ratio ? it : -1;
    }
}

/* Item (or -1) of the mma row 16 q + 8 h + lane / 4; every lane must call. */
template <int R>
static __device__ __forceinline__ int sp_mma_item(const SpArgs &a, int mine, int q, int h, int lane)
{
    const int j = (16 * q + 8 * h + (lane >> 2)) / sp_ratio<R>(a);
    const int it = __shfl_sync(0xffffffffu, mine, j < 32 ? j : 0);
    return R > 0 || j < SP_ROWS / a.ratio ? it : -1;
}

/* Row of the partial output (or -1) for row r holding item it. */
template <int R>
static __device__ __forceinline__ long long sp_part_row(const SpArgs &a, int it, int g, int r)
{
    const int ratio = sp_ratio<R>(a);
    return it < 0 ? -1 : sp_prow(a, it, g, ratio, r % ratio);
}

/* Q rows of the step.  With R each item's rows are copied together and
 * its address worked out once: a lane's copy i is row lane / 16 + 2 i,
 * which for i in [j R / 2, (j + 1) R / 2) is head lane / 16 + 2 i - j R
 * of item j (R even).  Per row, the compiler could not share the item's
 * address between rows, and the kernel of 16 heads a group grew from
 * ~2,860 to ~4,850 instructions (~20% slower, H200); now ~2,800. */
template <int R>
static __device__ __forceinline__ void sp_load_q(const SpArgs &a, int mine, int g, uint32_t dst, int lane)
{
    if constexpr (R > 0) {
#pragma unroll
        for (int j = 0; j < SP_ROWS / R; j++) {
            const int it = __shfl_sync(0xffffffffu, mine, j);
            const bf16 *base = a.q + ((long long)(a.c0 + (it < 0 ? 0 : it >> 6)) * a.n_heads + g * R) * 128;
#pragma unroll
            for (int i = j * R / 2; i < (j + 1) * R / 2; i++) {
                const int c = lane + 32 * i, r = c >> 4, ch = c & 15;
                cp16(dst + swz(r, ch), base + (r - j * R) * 128 + ch * 8, it >= 0);
            }
        }
    } else {
        const int ratio = a.ratio;
#pragma unroll
        for (int i = 0; i < SP_ROWS / 2; i++) {
            int c = lane + 32 * i;
            int r = c >> 4, ch = c & 15, hd = r % ratio;
            int it = sp_copy_item<R>(a, mine, i, lane);
            int tok = a.c0 + (it < 0 ? 0 : it >> 6);
            const bf16 *src = a.q + ((long long)tok * a.n_heads + g * ratio + (it < 0 ? 0 : hd)) * 128 + ch * 8;
            cp16(dst + swz(r, ch), src, it >= 0);
        }
    }
}

/* The step's normalised rows (in its Q buffer) to the partials, 16 bytes
 * a copy, item by item as sp_load_q. */
template <int R>
static __device__ __forceinline__ void sp_store_part(const SpArgs &a, int mine, int g, const unsigned char *src,
                                                     int lane)
{
    if constexpr (R > 0) {
#pragma unroll
        for (int j = 0; j < SP_ROWS / R; j++) {
            const int it = __shfl_sync(0xffffffffu, mine, j);
            if (it < 0) continue;
            bf16 *base = a.part + sp_part_row<R>(a, it, g, 0) * 128;
#pragma unroll
            for (int i = j * R / 2; i < (j + 1) * R / 2; i++) {
                const int c = lane + 32 * i, r = c >> 4;
                *(uint4 *)(base + (r - j * R) * 128 + (c & 15) * 8) = *(const uint4 *)(src + swz(r, c & 15));
            }
        }
    } else {
#pragma unroll
        for (int i = 0; i < SP_ROWS / 2; i++) {
            int c = lane + 32 * i, r = c >> 4;
            long long prow = sp_part_row<R>(a, sp_copy_item<R>(a, mine, i, lane), g, r);
            if (prow >= 0)
                *(uint4 *)(a.part + prow * 128 + (c & 15) * 8) = *(const uint4 *)(src + swz(r, c & 15));
        }
    }
}

template <int R>
__global__ void __launch_bounds__(SP_WARPS * 32) sp_attn_kernel(SpArgs a)
{
    extern __shared__ __align__(128) unsigned char smem[];
    const int blk = blockIdx.x, g = blockIdx.y;
    /* blockIdx.z: this CTA's share of the block's items (a short context
     * has few blocks, each chosen by many tokens) */
    const int n_all = a.cnt[g * a.nblk + blk], per = (n_all + gridDim.z - 1) / gridDim.z;
    const int first = blockIdx.z * per, n = min(per, n_all - first);
    if (n <= 0) return;
    const int *items = a.list + a.off[g * a.nblk + blk] + first;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint32_t ks = smem_u32(smem), vs = ks + 128 * 256;
    const uint32_t qcur = vs + 128 * 256 + warp * SP_ROWS * 256;
    unsigned char *qcur_p = smem + 2 * 128 * 256 + warp * SP_ROWS * 256;
    const int ipw = SP_ROWS / sp_ratio<R>(a);
    const int n_steps = (n + ipw - 1) / ipw;
    int mine = sp_mine(items, n, warp * ipw, ipw, lane);

    {
        const int valid = a.kv_len - blk * a.B; /* rows past the sequence: zeros, not stale data */
        if (a.kv_fp8) {
            sp_load_kv8(a, blk, g, valid, smem, smem + 128 * 256, [](int r, int ch) { return (int)swz(r, ch); },
                        threadIdx.x, SP_WARPS * 32);
        } else {
            long long page = a.table[blk];
            const char *kp = a.k + page * a.k_stride + (long long)g * a.B * 256;
            const char *vp = a.v + page * a.v_stride + (long long)g * a.B * 256;
            for (int c = threadIdx.x; c < 128 * 16; c += SP_WARPS * 32) {
                bool ok = (c >> 4) < valid;
                cp16(ks + swz(c >> 4, c & 15), kp + c * 16, ok);
                cp16(vs + swz(c >> 4, c & 15), vp + c * 16, ok);
            }
        }
        if (warp < n_steps) sp_load_q<R>(a, mine, g, qcur, lane);
        cp_commit();
        cp_wait<0>();
        __syncthreads();
    }

    for (int ip = warp; ip < n_steps; ip += SP_WARPS) {
        if (ip != warp) { /* the first step came with K/V */
            mine = sp_mine(items, n, ip * ipw, ipw, lane);
            sp_load_q<R>(a, mine, g, qcur, lane);
            cp_commit();
            cp_wait<0>();
            __syncwarp();
        }

        /* this thread's rows (lane / 4 and + 8 of each 16-row tile): a
         * token in the diagonal block masks its later keys */
        int rowpos[2][2];
        bool diag = false;
#pragma unroll
        for (int q = 0; q < 2; q++)
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                const int it = sp_mma_item<R>(a, mine, q, hh, lane);
                int pos = a.q_pos0 + a.c0 + (it < 0 ? 0 : it >> 6);
                bool d = it >= 0 && pos / a.B == blk;
                diag |= d;
                rowpos[q][hh] = d ? pos : INT_MAX;
            }
        const bool need_mask = __any_sync(0xffffffffu, diag);
        AttnState st;
        attn_state_init(st);
#pragma unroll 1
        for (int sub = 0; sub < 4; sub++)
            attn_tile32(st, qcur, ks + sub * 32 * 256, vs + sub * 32 * 256, blk * a.B + 32 * sub, need_mask, rowpos,
                        a.scale_log2);
        attn_state_finish(st);

        /* normalised O through this step's Q buffer, then 16-byte stores */
        __syncwarp();
#pragma unroll
        for (int q = 0; q < 2; q++)
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                int r = 16 * q + (lane >> 2) + 8 * hh;
                float inv = 1.f / st.l[q][hh];
#pragma unroll
                for (int nn = 0; nn < 16; nn++)
                    *(uint32_t *)(qcur_p + swz(r, nn) + 4 * (lane & 3)) =
                        pack_bf16(st.o[q][nn][2 * hh] * inv, st.o[q][nn][2 * hh + 1] * inv);
                long long prow = sp_part_row<R>(a, sp_mma_item<R>(a, mine, q, hh, lane), g, r);
                if (prow >= 0 && (lane & 3) == 0)
                    a.plse[prow] = st.m[q][hh] + log2f(st.l[q][hh]);
            }
        __syncwarp();
        sp_store_part<R>(a, mine, g, qcur_p, lane);
        __syncwarp();
    }
    cp_wait<0>();
}

/* One warp per (token, head): merges the token's selected-block partials.
 * Lane j holds slots j and j + 32's log2-sum-exp, so the max and the
 * weights are shuffles, and the partial rows load eight at a time (a loop
 * over the slots waited on two L2 round trips a slot). */
__global__ void __launch_bounds__(256) sp_combine_kernel(const int32_t *sel, const float *plse, const bf16 *part,
                                                         int c0, int n_tok, int n_heads, int ratio, int W,
                                                         bf16 *out)
{
    const long long wid = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (wid >= (long long)n_tok * n_heads) return;
    const int tl = (int)(wid / n_heads), head = (int)(wid % n_heads);
    const int g = head / ratio, hd = head % ratio;
    const int32_t *s = sel + ((long long)(c0 + tl) * 4 + g) * W;
    const long long prow0 = ((long long)tl * 4 + g) * W;
    float w[2]; /* W <= 64 */
    float M = NEG_INF;
#pragma unroll
    for (int k = 0; k < 2; k++) {
        const int j = lane + 32 * k;
        w[k] = j < W && s[j] >= 0 ? plse[(prow0 + j) * ratio + hd] : NEG_INF;
        M = fmaxf(M, w[k]);
    }
#pragma unroll
    for (int x = 16; x; x >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, x));
    float wsum = 0.f;
#pragma unroll
    for (int k = 0; k < 2; k++) {
        w[k] = w[k] > NEG_INF ? exp2f(w[k] - M) : 0.f;
        wsum += w[k];
    }
#pragma unroll
    for (int x = 16; x; x >>= 1) wsum += __shfl_xor_sync(0xffffffffu, wsum, x);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int j0 = 0; j0 < W; j0 += 8) {
        float wj[8];
        uint2 v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int j = j0 + u;
            wj[u] = __shfl_sync(0xffffffffu, j < 32 ? w[0] : w[1], j & 31);
            wj[u] = j < W ? wj[u] : 0.f;
            v[u] = wj[u] > 0.f ? *(const uint2 *)(part + ((prow0 + j) * ratio + hd) * 128 + 4 * lane)
                               : make_uint2(0u, 0u);
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            acc[0] += wj[u] * bf_lo(v[u].x);
            acc[1] += wj[u] * bf_hi(v[u].x);
            acc[2] += wj[u] * bf_lo(v[u].y);
            acc[3] += wj[u] * bf_hi(v[u].y);
        }
    }
    float inv = wsum > 0.f ? 1.f / wsum : 0.f;
    uint2 r;
    r.x = pack_bf16(acc[0] * inv, acc[1] * inv);
    r.y = pack_bf16(acc[2] * inv, acc[3] * inv);
    *(uint2 *)(out + ((long long)(c0 + tl) * n_heads + head) * 128 + 4 * lane) = r;
}

/* ---- host side ------------------------------------------------------------ */

static size_t al256(size_t x) { return (x + 255) & ~(size_t)255; }

/* One (page, KV head) a CTA: the page's rows widened (kv8_widen_rows) to
 * bf16 at the page's place in the table, rows past n zeroed. */
__global__ void __launch_bounds__(256) kv_widen_kernel(cattn_pool p, const int32_t *table, int n, char *k_out,
                                                       char *v_out, long long out_stride)
{
    const int pi = blockIdx.x, kvh = blockIdx.y, B = p.block_size;
    const long long page = table[pi], head = (long long)kvh * B * 128;
    const float *sc = (const float *)((const char *)p.kv_scale + page * p.kv_scale_stride) + (long long)kvh * 2 * B;
    kv8_widen_rows((const char *)p.k + page * p.k_stride + head, (const char *)p.v + page * p.v_stride + head, sc,
                   sc + B, B, n - pi * B, (unsigned char *)k_out + pi * out_stride + head * 2,
                   (unsigned char *)v_out + pi * out_stride + head * 2, [](int r, int ch) { return r * 256 + ch * 16; },
                   threadIdx.x, blockDim.x);
}

extern "C" int cattn_kv_widen(const cattn_pool *p, const int32_t *table, int n_tokens, void *k_out, void *v_out,
                              long long out_stride, void *stream)
{
    if (!p || !table || n_tokens <= 0 || !k_out || !v_out || !p->kv_fp8 || !p->kv_scale) return CATTN_EINVAL;
    if (p->head_dim != 128 || p->block_size <= 0) return CATTN_ESHAPE;
    dim3 grid((n_tokens + p->block_size - 1) / p->block_size, p->n_kv_heads);
    kv_widen_kernel<<<grid, 256, 0, (cudaStream_t)stream>>>(*p, table, n_tokens, (char *)k_out, (char *)v_out,
                                                             out_stride);
    CUDA_TRY(cudaGetLastError());
    return 0;
}

extern "C" int cattn_prefill(const cattn_pool *p, const int32_t *table, int n_q, int q_pos0, int n_heads,
                             const void *q, void *out, float scale, const int32_t *blist, int blist_w,
                             int blist_kvh_stride, void *ws, size_t ws_bytes, void *stream)
{
    static int attr_done = 0, per_sm = 1;
    if (!p || !table || n_q <= 0 || q_pos0 < 0 || n_heads <= 0 || p->n_kv_heads <= 0 || n_heads % p->n_kv_heads)
        return CATTN_EINVAL;
    if (p->head_dim != 128 || p->block_size < 64 || p->block_size % 64 || p->kv_fp8) return CATTN_ESHAPE;
    if (blist && (p->block_size != 128 || q_pos0 % 128 || blist_w <= 0 || blist_w > PF_MAX_LIST))
        return CATTN_ESHAPE;
    /* Hopper: the wgmma kernel (attn_prefill_sm90.cu) when this build has it and the shape fits */
    int rc = cattn_prefill_sm90(p, table, n_q, q_pos0, n_heads, q, out, scale, blist, blist_w, blist_kvh_stride,
                                ws, ws_bytes, stream);
    if (rc != 1) return rc;
    if (!attr_done) {
        CUDA_TRY(cudaFuncSetAttribute(prefill_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, PF_SMEM));
        CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, prefill_kernel, 128, PF_SMEM));
        attr_done = 1;
    }
    PfArgs a;
    a.q = (const bf16 *)q;
    a.out = (bf16 *)out;
    a.k = (const char *)p->k;
    a.v = (const char *)p->v;
    a.k_stride = p->k_stride;
    a.v_stride = p->v_stride;
    a.table = table;
    a.n_q = n_q;
    a.q_pos0 = q_pos0;
    a.n_heads = n_heads;
    a.n_kv = p->n_kv_heads;
    a.ratio = n_heads / p->n_kv_heads;
    a.B = p->block_size;
    a.blist = blist;
    a.blist_w = blist_w;
    a.blist_per_kvh = blist_kvh_stride != 0;
    a.scale_log2 = scale * LOG2E_F;
    const int n_qt = (n_q + PF_ROWS - 1) / PF_ROWS;
    a.S = blist || !ws ? 1
                       : prefill_splits(n_qt * n_heads, per_sm, (q_pos0 + n_q - 1) / PF_KT + 1, 16,
                                        split_bytes(1, n_q, n_heads), ws_bytes, "CATTN_PREFILL_SPLIT");
    a.part_o = (float *)ws;
    a.part_lse = (float *)((char *)ws + (size_t)a.S * n_q * n_heads * 128 * 4);
    dim3 grid(n_qt * a.S, n_heads);
    prefill_kernel<<<grid, 128, PF_SMEM, (cudaStream_t)stream>>>(a);
    CUDA_TRY(cudaGetLastError());
    if (a.S > 1) return prefill_combine(a.part_o, a.part_lse, a.S, n_q, n_heads, out, stream);
    return 0;
}

static int msa_check(const cattn_pool *p, int n_q, int q_pos0, int n_heads, int top_k, int local)
{
    if (!p || n_q <= 0 || q_pos0 < 0 || top_k < 0 || local < 1 || top_k + local > 64 || n_heads <= 0)
        return CATTN_EINVAL;
    if (p->n_kv_heads != 4 || p->head_dim != 128 || p->block_size != 128 || p->idx_dim != 128 || n_heads % 4 ||
        n_heads / 4 > 16 || top_k > 32)
        return CATTN_ESHAPE;
    return 0;
}

extern "C" int cattn_msa_select_prefill(const cattn_pool *p, const int32_t *table, int n_q, int q_pos0,
                                        const void *iq, int top_k, int local, int32_t *sel, void *ws,
                                        size_t ws_bytes, void *stream)
{
    int rc = msa_check(p, n_q, q_pos0, 4, top_k, local);
    if (rc) return rc;
    if (!table || !iq || !sel || !p->idx) return CATTN_EINVAL;
    /* Hopper: the wgmma selection (attn_prefill_sm90.cu) when this build has it */
    rc = cattn_msa_select_prefill_sm90(p, table, n_q, q_pos0, iq, top_k, local, sel, ws, ws_bytes, stream);
    if (rc != 1) return rc;
    static int attr_done = 0;
    size_t smem = IX_STAGES * IX_STAGE_BYTES + (size_t)(top_k > 0 ? top_k : 1) * IX_ROWS * 8;
    if (!attr_done) {
        CUDA_TRY(cudaFuncSetAttribute(msa_select_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      IX_STAGES * IX_STAGE_BYTES + 32 * IX_ROWS * 8));
        CUDA_TRY(cudaFuncSetAttribute(msa_select_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      IX_STAGES * IX_STAGE_BYTES + 32 * IX_ROWS * 8));
        attr_done = 1;
    }
    IxArgs a;
    a.iq = (const bf16 *)iq;
    a.idx = (const char *)p->idx;
    a.istride = p->idx_stride;
    a.table = table;
    a.n_q = n_q;
    a.q_pos0 = q_pos0;
    a.B = p->block_size;
    a.top_k = top_k;
    a.local = local;
    a.sel = sel;
    const int nb = (q_pos0 + n_q - 1) / a.B - local + 1;
    a.S = ws && top_k > 0 ? prefill_splits((n_q + IX_TOK - 1) / IX_TOK, 1, nb, SELECT_SPLIT_MIN,
                                           (size_t)n_q * 4 * top_k * 8, ws_bytes, "CATTN_SELECT_SPLIT")
                          : 1;
    a.ps = (float *)ws;
    a.pi = (int32_t *)((char *)ws + (size_t)n_q * 4 * a.S * top_k * 4);
    const unsigned grid = (n_q + IX_TOK - 1) / IX_TOK * a.S;
    if (p->idx_fp8)
        msa_select_kernel<true><<<grid, 256, smem, (cudaStream_t)stream>>>(a);
    else
        msa_select_kernel<false><<<grid, 256, smem, (cudaStream_t)stream>>>(a);
    CUDA_TRY(cudaGetLastError());
    if (a.S > 1) return select_merge(a.ps, a.pi, a.S, n_q, q_pos0, a.B, top_k, local, sel, stream);
    return 0;
}

/* Workspace of stage 2 for a chunk of `chunk` tokens. */
static size_t sp_ws(int nblk, int W, int ratio, long long chunk, size_t *off)
{
    size_t o = 0;
    off[0] = o; o += al256((size_t)4 * nblk * sizeof(int));       /* cnt */
    off[1] = o; o += al256((size_t)4 * nblk * sizeof(int));       /* off */
    off[2] = o; o += al256((size_t)4 * nblk * sizeof(int));       /* fill */
    off[3] = o; o += al256((size_t)chunk * 4 * W * sizeof(int));  /* list */
    off[4] = o; o += al256((size_t)chunk * 4 * W * ratio * sizeof(float));
    off[5] = o; o += al256((size_t)chunk * 4 * W * ratio * 128 * sizeof(bf16));
    return o;
}

extern "C" size_t cattn_msa_prefill_ws(const cattn_pool *p, int n_q, int q_pos0, int n_heads, int top_k, int local,
                                       int chunk)
{
    size_t off[6];
    int nblk = (q_pos0 + n_q + p->block_size - 1) / p->block_size;
    if (chunk < 128) chunk = 128;
    return sp_ws(nblk, top_k + local, n_heads / 4, chunk, off);
}

/* The build of sp_attn_kernel for this ratio. */
static void (*sp_kernel(int ratio))(SpArgs)
{
    return ratio == 4 ? sp_attn_kernel<4> : ratio == 8 ? sp_attn_kernel<8> : ratio == 16 ? sp_attn_kernel<16>
                                                                                       : sp_attn_kernel<0>;
}

extern "C" int cattn_msa_attend_prefill(const cattn_pool *p, const int32_t *table, int n_q, int q_pos0,
                                        int n_heads, const void *q, void *out, float scale, int n_sel,
                                        const int32_t *sel, void *ws, size_t ws_bytes, void *stream)
{
    static int attr_done = 0;
    int rc = msa_check(p, n_q, q_pos0, n_heads, 0, 1);
    if (rc) return rc;
    if (p->kv_fp8 && !p->kv_scale) return CATTN_EINVAL;
    if (!table || !q || !out || !sel || n_sel < 1 || n_sel > 64) return CATTN_EINVAL;
    cudaStream_t st = (cudaStream_t)stream;
    if (!attr_done) {
        void (*const ks[])(SpArgs) = {sp_attn_kernel<0>, sp_attn_kernel<4>, sp_attn_kernel<8>, sp_attn_kernel<16>};
        for (auto k : ks) CUDA_TRY(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, SP_SMEM));
        attr_done = 1;
    }
    const int B = p->block_size, W = n_sel, ratio = n_heads / 4;
    const int nblk = (q_pos0 + n_q + B - 1) / B;
    size_t off[6];
    /* largest chunk (multiple of 128 tokens) the workspace holds */
    size_t fixed = sp_ws(nblk, W, ratio, 0, off);
    size_t per_tok = sp_ws(nblk, W, ratio, 128, off) - fixed;
    if (ws_bytes < fixed + per_tok) return CATTN_EWORKSPACE;
    long long chunk = (long long)((ws_bytes - fixed) / per_tok) * 128;
    while (chunk > 128 && sp_ws(nblk, W, ratio, chunk, off) > ws_bytes) chunk -= 128;
    if (chunk > n_q) chunk = n_q;
    if (chunk > (1 << 23)) chunk = 1 << 23; /* chunk x 4 x W stays an int */
    sp_ws(nblk, W, ratio, chunk, off);
    char *w = (char *)ws;
    int *cnt = (int *)(w + off[0]), *offs = (int *)(w + off[1]), *fill = (int *)(w + off[2]);
    int *list = (int *)(w + off[3]);

    SpArgs a;
    a.q = (const bf16 *)q;
    a.k = (const char *)p->k;
    a.v = (const char *)p->v;
    a.k_stride = p->k_stride;
    a.v_stride = p->v_stride;
    a.kvs = (const char *)p->kv_scale;
    a.kvs_stride = p->kv_scale_stride;
    a.kv_fp8 = p->kv_fp8;
    a.table = table;
    a.cnt = cnt;
    a.off = offs;
    a.list = list;
    a.plse = (float *)(w + off[4]);
    a.part = (bf16 *)(w + off[5]);
    a.q_pos0 = q_pos0;
    a.kv_len = q_pos0 + n_q;
    a.n_heads = n_heads;
    a.ratio = ratio;
    a.B = B;
    a.W = W;
    a.scale_log2 = scale * LOG2E_F;
    for (int c0 = 0; c0 < n_q; c0 += (int)chunk) {
        int c1 = (int)(c0 + chunk < n_q ? c0 + chunk : n_q);
        int nb = (q_pos0 + c1 + B - 1) / B; /* blocks this chunk can select */
        const int n = (c1 - c0) * 4 * W;
        const int32_t *s = sel + (long long)c0 * 4 * W;
        CUDA_TRY(cudaMemsetAsync(cnt, 0, (size_t)4 * nb * sizeof(int), st));
        int nthr = 256;
        long long nblocks = (n + nthr - 1) / nthr;
        sp_count_kernel<<<(unsigned)nblocks, nthr, 0, st>>>(s, n, W, nb, cnt);
        sp_scan_kernel<<<1, 1024, 0, st>>>(cnt, offs, fill, 4 * nb);
        sp_fill_kernel<<<(unsigned)nblocks, nthr, 0, st>>>(s, n, W, nb, fill, list);
        a.c0 = c0;
        a.nblk = nb;
        rc = sp_attn_sm90(a, c1 - c0, st); /* Hopper: wgmma */
        if (rc > 1) return rc;
        if (rc == 1) {
            const long long steps = (long long)(c1 - c0) * W / nb / (SP_ROWS / ratio);
            /* split the blocks' item lists while the grid is under a wave
             * (two CTAs an SM; past it a split's K/V load costs more than
             * the fuller last wave gives), at least 4 warp steps a CTA;
             * CATTN_SP_SPLIT=N forces N */
            const dim3 grid(nb, 4, prefill_splits(nb * 4, 2, (int)(steps < INT_MAX ? steps : INT_MAX), 4, 1,
                                                  SIZE_MAX, "CATTN_SP_SPLIT"));
            sp_kernel(ratio)<<<grid, SP_WARPS * 32, SP_SMEM, st>>>(a);
        }
        long long warps = (long long)(c1 - c0) * n_heads;
        sp_combine_kernel<<<(unsigned)((warps * 32 + 255) / 256), 256, 0, st>>>(sel, a.plse, a.part, c0, c1 - c0,
                                                                               n_heads, ratio, W, (bf16 *)out);
        CUDA_TRY(cudaGetLastError());
    }
    return 0;
}

extern "C" int cattn_msa_prefill(const cattn_pool *p, const int32_t *table, int n_q, int q_pos0, int n_heads,
                                 const void *q, const void *iq, void *out, float scale, int top_k, int local,
                                 int32_t *sel, void *ws, size_t ws_bytes, void *stream)
{
    int rc = msa_check(p, n_q, q_pos0, n_heads, top_k, local);
    if (rc) return rc;
    /* stage 1 borrows the workspace stage 2 then reuses (same stream) */
    rc = cattn_msa_select_prefill(p, table, n_q, q_pos0, iq, top_k, local, sel, ws, ws_bytes, stream);
    if (rc) return rc;
    return cattn_msa_attend_prefill(p, table, n_q, q_pos0, n_heads, q, out, scale, top_k + local, sel, ws, ws_bytes,
                                    stream);
}
