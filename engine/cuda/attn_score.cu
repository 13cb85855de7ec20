/* attn_score: the training-free indexers' block scores on the tensor cores
 * (see cuda_attn.h).  Scoring token by token on CUDA cores read each
 * block's summary again for every (token, group), and at 128K it took
 * about as long as the sparse attention it saves.  Here a CTA takes a tile
 * of one sequence's tokens and one KV group: its rows (a token, or a token
 * and head of the group) hold the query features once, and each chunk of
 * 64 blocks' summaries loaded into shared memory meets all of them in one
 * mma.sync product.
 *
 * Min/max: score = q+ . max + q- . min, with q+ and q- the positive and
 * negative parts of the query (summed over the group's heads, or per
 * head).  Mean: score = q . sum / B.  The features are f32 sums; each is
 * split as hi + lo in bf16 so that the product keeps about 16 bits of
 * them (the summaries are bf16 already), near the CUDA-core scores. */
#include "attn_flash.cuh"

#define SC_ROWS 64
#define SC_BLK 64

/* grid (tiles, groups, chunk strides).  Shared memory: the feature
 * segments (4 for min/max: q+ hi, q+ lo, q- hi, q- lo; 2 for mean), each
 * SC_ROWS x D; the chunk's summaries (max, min; or sum), SC_BLK x D each;
 * with per-head rows a SC_ROWS x SC_BLK staging for the group's max. */
template <int D> __global__ void __launch_bounds__(128) score_kernel(cattn_score_args a)
{
    extern __shared__ __align__(128) unsigned char smem[];
    constexpr int SEG = SC_ROWS * 2 * D, BSEG = SC_BLK * 2 * D;
    const int tile = blockIdx.x, g = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t0 = a.tiles[2 * tile], nt = a.tiles[2 * tile + 1];
    const int ratio = a.n_heads / a.n_kv, nq = a.group_sum ? 1 : ratio, n_seg = a.mean ? 2 : 4;
    const int fl_hi = max(a.pos[t0 + nt - 1] / a.B + 1 - a.local, 0);
    const int first = blockIdx.z * SC_BLK;
    if (first >= fl_hi) return;
    const uint32_t as = smem_u32(smem), bs = as + n_seg * SEG;
    float *stage = (float *)(smem + n_seg * SEG + (a.mean ? 1 : 2) * BSEG);

    /* features: row r is token r / nq, head (r % nq) of the group */
    for (int c = threadIdx.x; c < SC_ROWS * D; c += blockDim.x) {
        const int r = c / D, d = c % D, tk = r / nq;
        float vp = 0.f, vn = 0.f;
        if (tk < nt) {
            const bf16 *q = (const bf16 *)a.q + ((long long)(t0 + tk) * a.n_heads + g * ratio) * D + d;
            for (int h = nq == 1 ? 0 : r % nq; h < (nq == 1 ? ratio : r % nq + 1); h++) {
                const float v = __bfloat162float(q[(long long)h * D]);
                vp += v > 0.f ? v : 0.f;
                vn += v < 0.f ? v : 0.f;
            }
        }
        const uint32_t at = fswz<D>(r, d / 8) + (d % 8) * 2;
        const float f[2] = {a.mean ? vp + vn : vp, vn};
        for (int s = 0; s < n_seg / 2; s++) {
            const bf16 hi = __float2bfloat16(f[s]);
            *(bf16 *)(smem + (2 * s) * SEG + at) = hi;
            *(bf16 *)(smem + (2 * s + 1) * SEG + at) = __float2bfloat16(f[s] - __bfloat162float(hi));
        }
    }

    const int32_t *tbl = a.tables + a.tab[t0];
    for (int b0 = first; b0 < fl_hi; b0 += gridDim.z * SC_BLK) {
        /* the chunk's summaries: max then min (or the sum) of each block */
        for (int c = threadIdx.x; c < SC_BLK * (D / 8) * (a.mean ? 1 : 2); c += blockDim.x) {
            const int part = c / (SC_BLK * (D / 8)), rem = c % (SC_BLK * (D / 8));
            const int r = rem / (D / 8), ch = rem % (D / 8), b = b0 + r;
            const int at = a.mean ? 2 : part == 0 ? 1 : 0; /* summary layout: min, max, sum */
            const char *src = a.summ;
            if (b < fl_hi) src += (long long)tbl[b] * a.page_bytes + (((long long)g * 3 + at) * D + ch * 8) * 2;
            cp16(bs + part * BSEG + fswz<D>(r, ch), src, b < fl_hi);
        }
        cp_commit();
        cp_wait<0>();
        __syncthreads();

        float acc[SC_BLK / 8][4];
#pragma unroll
        for (int n = 0; n < SC_BLK / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
        for (int s = 0; s < n_seg; s++)
            fl_mma_abt<D, SC_BLK / 16>(acc, as + s * SEG, warp * 16, bs + (a.mean ? 0 : s / 2) * BSEG);

        const float mul = a.mean ? 1.f / (float)a.B : 1.f;
#pragma unroll
        for (int n = 0; n < SC_BLK / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = warp * 16 + (lane >> 2) + 8 * (e >> 1), col = 8 * n + 2 * (lane & 3) + (e & 1);
                float v = acc[n][e] * mul;
                v = isnan(v) ? NEG_INF : v;
                if (nq > 1) {
                    stage[r * (SC_BLK + 1) + col] = v;
                    continue;
                }
                const int b = b0 + col;
                if (r >= nt) continue;
                const int nb = a.pos[t0 + r] / a.B + 1, fl = nb - a.local;
                if (b >= min(a.sink, nb) && b < fl)
                    a.scores[((long long)(t0 + r) * a.n_kv + g) * a.nbmax + b] = v;
            }
        if (nq > 1) { /* the group's max over its heads */
            __syncthreads();
            for (int c = threadIdx.x; c < nt * SC_BLK; c += blockDim.x) {
                const int tk = c / SC_BLK, col = c % SC_BLK, b = b0 + col;
                const int nb = a.pos[t0 + tk] / a.B + 1, fl = nb - a.local;
                if (b < min(a.sink, nb) || b >= fl) continue;
                float v = NEG_INF;
                for (int h = 0; h < nq; h++) v = fmaxf(v, stage[(tk * nq + h) * (SC_BLK + 1) + col]);
                a.scores[((long long)(t0 + tk) * a.n_kv + g) * a.nbmax + b] = v;
            }
        }
        __syncthreads(); /* the next chunk overwrites the summaries (and staging) */
    }
}

static size_t score_smem(int D, int mean, int group_sum)
{
    return (size_t)(mean ? 2 : 4) * SC_ROWS * 2 * D + (size_t)(mean ? 1 : 2) * SC_BLK * 2 * D +
           (group_sum ? 0 : (size_t)SC_ROWS * (SC_BLK + 1) * sizeof(float));
}

template <int D> static int score_launch(const cattn_score_args *a, int strides, cudaStream_t st)
{
    const size_t smem = score_smem(D, a->mean, a->group_sum);
    static size_t attr = 0;
    if (smem > attr) {
        CUDA_TRY(cudaFuncSetAttribute(score_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attr = smem;
    }
    score_kernel<D><<<dim3(a->n_tiles, a->n_kv, strides), 128, smem, st>>>(*a);
    return 0;
}

extern "C" int cattn_score(const cattn_score_args *a, void *stream)
{
    const int D = a->head_dim, ratio = a->n_kv > 0 ? a->n_heads / a->n_kv : 0;
    if ((D != 64 && D != 128 && D != 256) || ratio < 1 || ratio > SC_ROWS || a->B < 1 || a->local < 1)
        return CATTN_ESHAPE;
    if (a->n_tiles < 1) return 0;
    /* chunks a CTA strides over: enough CTAs for two an SM, the features
     * built once for as many chunks as that leaves */
    const long long ctas = (long long)a->n_tiles * a->n_kv, want = 2LL * fl_sms();
    const int chunks = (a->nbmax + SC_BLK - 1) / SC_BLK;
    int strides = ctas >= want ? 1 : (int)((want + ctas - 1) / ctas);
    strides = strides < chunks ? strides : chunks;
    strides = strides < 1 ? 1 : strides;
    cudaStream_t st = (cudaStream_t)stream;
    int rc = D == 64 ? score_launch<64>(a, strides, st)
                     : D == 128 ? score_launch<128>(a, strides, st) : score_launch<256>(a, strides, st);
    if (rc) return rc;
    CUDA_TRY(cudaGetLastError());
    return 0;
}
