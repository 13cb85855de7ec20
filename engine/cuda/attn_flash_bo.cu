/* attn_flash_bo: cattn_flash over selection lists, KV-block outer (see
 * cuda_attn.h).  Token by token (the tiles kernel) each (token, group)
 * re-reads its blocks and fills `ratio` of a tile's 64 mma rows, while a
 * prefill chunk's tokens mostly choose the same blocks.  Here the (token,
 * slot) items are bucketed by (group, block): a CTA loads one block's K/V
 * once and runs its items' query heads as packed 16-row mma tiles, writing
 * each row's normalised output and log2-sum-exp over that block; then a
 * warp per (token, head) merges its blocks.  A pass of tokens is five
 * kernels: count the buckets, scan, fill them, attend, merge. */
#include "attn_flash.cuh"

#define BO_MAX_KD 32768 /* B * head_dim: a block's K and V in 128 KB of shared memory */
#define BO_WARPS 4
#define BO_ITEMS 256 /* a bucket's items looked up at a time */

struct BoArgs {
    cattn_flash_bo_args bo;
    int p0, n;                  /* this pass: tokens p0 .. p0 + n - 1 of bo.tok */
    int *bcnt, *boff, *bfill;   /* per (group, entry) bucket */
    int *items;                 /* the buckets' items: pass token * sel_w + slot */
    float *plse;                /* per partial row: log2-sum-exp over its block */
    bf16 *part;                 /* per partial row: normalised output */
};

/* Partial row of (pass token, group, slot, head of the group). */
static __device__ __forceinline__ long long bo_prow(const cattn_flash_args &a, int tl, int g, int j, int hd)
{
    return (((long long)tl * a.n_kv + g) * a.sel_w + j) * (a.n_heads / a.n_kv) + hd;
}

/* A thread per (pass token, group, slot): counts the item into its bucket,
 * or (FILL) places it at the bucket's next free index. */
template <bool FILL> __global__ void __launch_bounds__(256) bo_bucket_kernel(cattn_flash_args a, BoArgs b)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x, per_tok = (long long)a.n_kv * a.sel_w;
    if (i >= b.n * per_tok) return;
    const int tl = (int)(i / per_tok), rem = (int)(i % per_tok), g = rem / a.sel_w, j = rem % a.sel_w;
    const int row = b.bo.tok[b.p0 + tl] * a.n_kv + g;
    if (j >= a.cnt[row]) return;
    const int e = b.bo.seqs[3 * b.bo.seq[b.p0 + tl]] + a.sel[(long long)row * a.sel_w + j];
    const int key = g * b.bo.n_ent + e;
    if (FILL)
        b.items[atomicAdd(&b.bfill[key], 1)] = tl * a.sel_w + j;
    else
        atomicAdd(&b.bcnt[key], 1);
}

__global__ void __launch_bounds__(1024) bo_scan_kernel(const int *cnt, int *off, int *fill, int n)
{
    cta_scan_excl(cnt, off, fill, n);
}

/* The 16 rows of step st of a batch (row r: item r / ratio, head r %
 * ratio) into a warp's Q tile. */
template <int D>
static __device__ __forceinline__ void bo_load_q(const cattn_flash_args &a, const int *s_tok, int rows, int st,
                                                 int g, uint32_t qs)
{
    constexpr int NT = D / 8;
    const int ratio = a.n_heads / a.n_kv;
    for (int c = threadIdx.x & 31; c < 16 * NT; c += 32) {
        const int r = c / NT, ch = c % NT, gr = 16 * st + r;
        const long long qrow = gr < rows ? (long long)s_tok[gr / ratio] * a.n_heads + g * ratio + gr % ratio : 0;
        cp16(qs + fswz<D>(r, ch), (const bf16 *)a.q + qrow * D + ch * 8, gr < rows);
    }
    cp_commit();
}

/* grid (entries, groups, splits of a bucket).  The block's K/V goes to
 * shared memory as B / 32 tiles.  The bucket's items come BO_ITEMS at a
 * time, their tokens and positions looked up by the whole CTA at once;
 * each warp then takes 16-row steps of the batch through two Q tiles, the
 * next step's rows loading while the current one computes. */
template <int D, bool F8> __global__ void __launch_bounds__(BO_WARPS * 32) bo_attn_kernel(cattn_flash_args a, BoArgs b)
{
    constexpr int NT = D / 8, STAGE = 2 * FL_KT * 2 * D, QT = 16 * 2 * D;
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ int s_item[BO_ITEMS], s_tok[BO_ITEMS], s_pos[BO_ITEMS];
    const int e = blockIdx.x, g = blockIdx.y, key = g * b.bo.n_ent + e;
    const int n_all = b.bcnt[key], per = (n_all + gridDim.z - 1) / gridDim.z;
    const int first = blockIdx.z * per, n = min(per, n_all - first);
    if (n <= 0) return;
    const int *items = b.items + b.boff[key] + first;
    const int s = b.bo.ent_seq[e], ratio = a.n_heads / a.n_kv, W = a.sel_w;
    const int key0 = (e - b.bo.seqs[3 * s]) * a.B, key_hi = min(key0 + a.B - 1, b.bo.seqs[3 * s + 2]);
    const int32_t *tbl = a.tables + b.bo.seqs[3 * s + 1];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint32_t kv = smem_u32(smem), qs = kv + (a.B / FL_KT) * STAGE + warp * 2 * QT;

    for (int u = 0; u < a.B / FL_KT; u++)
        fl_stage<D, F8>(a, tbl, g, key0 + u * FL_KT, key_hi, smem, kv + u * STAGE);
    cp_commit();

    for (int i0 = 0; i0 < n; i0 += BO_ITEMS) {
        const int ni = min(BO_ITEMS, n - i0), rows = ni * ratio, steps = (rows + 15) / 16;
        __syncthreads(); /* the last batch's rows are done with the lookups */
        for (int i = threadIdx.x; i < ni; i += blockDim.x) {
            const int it = items[i0 + i], t = b.bo.tok[b.p0 + it / W];
            s_item[i] = it;
            s_tok[i] = t;
            s_pos[i] = a.pos[t];
        }
        cp_wait<0>(); /* the K/V, on the first batch */
        __syncthreads();
        if (warp < steps) bo_load_q<D>(a, s_tok, rows, warp, g, qs);
        for (int st = warp, k = 0; st < steps; st += BO_WARPS, k++) {
            const uint32_t q = qs + (k & 1) * QT;
            if (st + BO_WARPS < steps) {
                bo_load_q<D>(a, s_tok, rows, st + BO_WARPS, g, qs + ((k + 1) & 1) * QT);
                cp_wait<1>();
            } else {
                cp_wait<0>();
            }
            __syncwarp();
            int item[2], rpos[2], rlo[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int gr = 16 * st + (lane >> 2) + 8 * h;
                item[h] = gr < rows ? s_item[gr / ratio] : -1;
                rpos[h] = gr < rows ? s_pos[gr / ratio] : -1;
                rlo[h] = a.window && rpos[h] >= a.window ? rpos[h] - a.window + 1 : 0;
            }
            float o[NT][4], m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
#pragma unroll
            for (int nn = 0; nn < NT; nn++) o[nn][0] = o[nn][1] = o[nn][2] = o[nn][3] = 0.f;
            for (int u = 0; u < a.B / FL_KT; u++)
                fl_keys32<D>(q, 0, kv + u * STAGE, kv + u * STAGE + FL_KT * 2 * D, key0 + u * FL_KT, key_hi, rpos,
                             rlo, a.scale, a.softcap, o, m, l);
#pragma unroll
            for (int h = 0; h < 2; h++) {
                l[h] = fl_quad_sum(l[h]);
                if (item[h] < 0) continue;
                const int gr = 16 * st + (lane >> 2) + 8 * h;
                const long long pr = bo_prow(a, item[h] / W, g, item[h] % W, gr % ratio);
                const float inv = l[h] > 0.f ? 1.f / l[h] : 0.f;
                uint32_t *po = (uint32_t *)(b.part + pr * D + 2 * (lane & 3));
#pragma unroll
                for (int nn = 0; nn < NT; nn++) po[4 * nn] = pack_bf16(o[nn][2 * h] * inv, o[nn][2 * h + 1] * inv);
                if ((lane & 3) == 0) b.plse[pr] = l[h] > 0.f ? m[h] + __log2f(l[h]) : NEG_INF;
            }
            __syncwarp(); /* the step after next loads into this tile */
        }
    }
    cp_wait<0>();
}

/* D / 32 consecutive bf16 of a partial row as floats. */
template <int D> static __device__ __forceinline__ void bo_load_dims(const bf16 *p, float (&v)[D / 32])
{
    uint32_t w[D / 64];
    if constexpr (D == 64) w[0] = *(const uint32_t *)p;
    else if constexpr (D == 128) *(uint2 *)w = *(const uint2 *)p;
    else *(uint4 *)w = *(const uint4 *)p;
#pragma unroll
    for (int i = 0; i < D / 64; i++) {
        v[2 * i] = bf_lo(w[i]);
        v[2 * i + 1] = bf_hi(w[i]);
    }
}

/* A warp per (pass token, head): its blocks' rows weighed by their sums. */
template <int D> __global__ void __launch_bounds__(128) bo_merge_kernel(cattn_flash_args a, BoArgs b)
{
    constexpr int PL = D / 32;
    const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (w >= (long long)b.n * a.n_heads) return;
    const int tl = (int)(w / a.n_heads), head = (int)(w % a.n_heads), ratio = a.n_heads / a.n_kv;
    const int g = head / ratio, hd = head % ratio, t = b.bo.tok[b.p0 + tl], n = a.cnt[t * a.n_kv + g];
    float M = NEG_INF;
    for (int j = lane; j < n; j += 32) M = fmaxf(M, b.plse[bo_prow(a, tl, g, j, hd)]);
#pragma unroll
    for (int x = 16; x; x >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, x));
    float acc[PL], wsum = 0.f;
#pragma unroll
    for (int i = 0; i < PL; i++) acc[i] = 0.f;
#pragma unroll 4
    for (int j = 0; j < n; j++) {
        const long long pr = bo_prow(a, tl, g, j, hd);
        const float lse = b.plse[pr], wt = lse == NEG_INF ? 0.f : exp2f(lse - M);
        float v[PL];
        bo_load_dims<D>(b.part + pr * D + lane * PL, v);
        wsum += wt;
#pragma unroll
        for (int i = 0; i < PL; i++) acc[i] += wt * v[i];
    }
    const float inv = wsum > 0.f ? 1.f / wsum : 0.f;
    uint32_t out[PL / 2];
#pragma unroll
    for (int i = 0; i < PL / 2; i++) out[i] = pack_bf16(acc[2 * i] * inv, acc[2 * i + 1] * inv);
    bf16 *dst = (bf16 *)a.out + ((long long)t * a.n_heads + head) * D + lane * PL;
    if constexpr (D == 64) *(uint32_t *)dst = out[0];
    else if constexpr (D == 128) *(uint2 *)dst = *(uint2 *)out;
    else *(uint4 *)dst = *(uint4 *)out;
}

static size_t bo_al(size_t x) { return (x + 255) & ~(size_t)255; }

static size_t bo_per_tok(int n_heads, int n_kv, int D, int W)
{
    return (size_t)n_kv * W * sizeof(int) + (size_t)n_heads * W * (2 * D + sizeof(float));
}

extern "C" int cattn_flash_bo_fits(int B, int D)
{
    return (D == 64 || D == 128 || D == 256) && B >= FL_KT && B % FL_KT == 0 && B * D <= BO_MAX_KD;
}

extern "C" size_t cattn_flash_bo_ws(int pass, int n_ent, int n_heads, int n_kv, int D, int W)
{
    return 3 * bo_al((size_t)n_ent * n_kv * sizeof(int)) + (size_t)pass * bo_per_tok(n_heads, n_kv, D, W) + 3 * 256;
}

template <int D, bool F8>
static int bo_attend(const cattn_flash_args *a, const BoArgs &b, int splits, cudaStream_t st)
{
    const int smem = a->B * 4 * D + BO_WARPS * 2 * 16 * 2 * D;
    static int attr = 0;
    if (attr != smem) {
        CUDA_TRY(cudaFuncSetAttribute(bo_attn_kernel<D, F8>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        attr = smem;
    }
    bo_attn_kernel<D, F8><<<dim3(b.bo.n_ent, a->n_kv, splits), BO_WARPS * 32, smem, st>>>(*a, b);
    bo_merge_kernel<D><<<(unsigned)(((long long)b.n * a->n_heads * 32 + 127) / 128), 128, 0, st>>>(*a, b);
    return 0;
}

template <int D> static int bo_attend(const cattn_flash_args *a, const BoArgs &b, int splits, cudaStream_t st)
{
    return a->kvs ? bo_attend<D, true>(a, b, splits, st) : bo_attend<D, false>(a, b, splits, st);
}

extern "C" int cattn_flash_bo(const cattn_flash_args *a, const cattn_flash_bo_args *bo, void *ws, size_t ws_bytes,
                              void *stream)
{
    cudaStream_t st = (cudaStream_t)stream;
    const int D = a->head_dim, W = a->sel_w;
    if (!cattn_flash_bo_fits(a->B, D) || !a->sel || W < 1 || (a->kvs && a->B % 2) ||
        cattn_flash_tile_tokens(a->n_heads, a->n_kv) < 1)
        return CATTN_ESHAPE;
    if (bo->n_tok < 1 || bo->n_ent < 1) return 0;
    const size_t nb = (size_t)bo->n_ent * a->n_kv, fixed = cattn_flash_bo_ws(0, bo->n_ent, a->n_heads, a->n_kv, D, W);
    const size_t per = bo_per_tok(a->n_heads, a->n_kv, D, W);
    if (ws_bytes < fixed + per) return CATTN_EWORKSPACE;
    long long pass = (long long)((ws_bytes - fixed) / per);
    pass = pass < bo->n_tok ? pass : bo->n_tok;
    BoArgs b;
    b.bo = *bo;
    char *p = (char *)ws;
    b.bcnt = (int *)p;
    b.boff = (int *)(p += bo_al(nb * sizeof(int)));
    b.bfill = (int *)(p += bo_al(nb * sizeof(int)));
    b.items = (int *)(p += bo_al(nb * sizeof(int)));
    b.plse = (float *)(p += bo_al((size_t)pass * a->n_kv * W * sizeof(int)));
    b.part = (bf16 *)(p + bo_al((size_t)pass * a->n_heads * W * sizeof(float)));
    /* split a bucket over CTAs when the blocks alone leave SMs idle */
    const long long ctas = (long long)nb, want = 2LL * fl_sms();
    const int splits = ctas >= want ? 1 : (int)((want + ctas - 1) / ctas < 8 ? (want + ctas - 1) / ctas : 8);
    for (b.p0 = 0; b.p0 < bo->n_tok; b.p0 += b.n) {
        b.n = (int)(bo->n_tok - b.p0 < pass ? bo->n_tok - b.p0 : pass);
        const long long n_items = (long long)b.n * a->n_kv * W;
        const unsigned grid = (unsigned)((n_items + 255) / 256);
        CUDA_TRY(cudaMemsetAsync(b.bcnt, 0, nb * sizeof(int), st));
        bo_bucket_kernel<false><<<grid, 256, 0, st>>>(*a, b);
        bo_scan_kernel<<<1, 1024, 0, st>>>(b.bcnt, b.boff, b.bfill, (int)nb);
        bo_bucket_kernel<true><<<grid, 256, 0, st>>>(*a, b);
        int rc = D == 64 ? bo_attend<64>(a, b, splits, st)
                         : D == 128 ? bo_attend<128>(a, b, splits, st) : bo_attend<256>(a, b, splits, st);
        if (rc) return rc;
        CUDA_TRY(cudaGetLastError());
    }
    return 0;
}
