/* attn_flash: paged flash attention for the shapes the tuned kernels do not
 * take: head dims 64, 128 and 256, sliding windows and soft-capped scores
 * (Gemma 2/3, Llama 3.2 1B, Qwen2.5 0.5B, SmolLM2), prefill and decode in
 * one kernel.
 *
 * A CTA takes a tile of one sequence's new tokens and one KV group, and
 * packs the group's query heads as rows: row r is token r / ratio, head r %
 * ratio of the group, 64 rows in all (4 warps of one m16 tile).  So a
 * decode token still fills `ratio` rows, and each K/V tile read from the
 * pages feeds every query head that shares it.  32-key K/V tiles stream
 * through a cp.async double buffer; scores and P V run on mma.sync (bf16 in,
 * f32 out) with the flash-attention online softmax.  Each row masks its own
 * causal and window bounds, so the tiles of a CTA start at its first
 * token's window and end at its last token.
 *
 * When the CTAs are below a wave (decode, short chunks), the keys split into
 * ranges, a CTA each, whose normalised rows and log2-sum-exp a second kernel
 * weighs together. */
#include <stdlib.h>

#include "attn_flash.cuh"

#define FL_MAX_SPLITS 32

template <int D, bool F8>
__global__ void __launch_bounds__(128) flash_kernel(cattn_flash_args a, int S, float *part_o, float *part_lse)
{
    constexpr int NT = D / 8;                 /* n8 tiles of a row of O */
    constexpr int STAGE = 2 * FL_KT * 2 * D;  /* K and V of 32 keys */
    extern __shared__ __align__(128) unsigned char smem[];
    const int tile = blockIdx.x / S, split = blockIdx.x % S, g = blockIdx.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t0 = a.tiles[2 * tile], nt = a.tiles[2 * tile + 1];
    const int ratio = a.n_heads / a.n_kv;
    const uint32_t qs = smem_u32(smem), kvs = qs + FL_ROWS * 2 * D;
    const int32_t *tbl = a.tables + a.tab[t0];
    const int p_lo = a.pos[t0], p_hi = a.pos[t0 + nt - 1];

    /* the rows' queries */
    for (int c = threadIdx.x; c < FL_ROWS * NT; c += 128) {
        const int r = c / NT, ch = c % NT, tk = r / ratio;
        const bool ok = tk < nt;
        const long long row = ok ? (long long)(t0 + tk) * a.n_heads + g * ratio + r % ratio : 0;
        cp16(qs + fswz<D>(r, ch), (const bf16 *)a.q + row * D + ch * 8, ok);
    }
    cp_commit();

    /* this CTA's key tiles: from its first token's window to its last
     * token, or the 32-key pieces of a listed token's blocks (a tile of
     * one token; tiles of several hold only tokens that read every block) */
    const int32_t *lst = NULL;
    int kt0 = 0, all, per_blk = (a.B + FL_KT - 1) / FL_KT;
    if (a.sel && nt == 1 && a.cnt[t0 * a.n_kv + g] >= 0) {
        lst = a.sel + ((long long)t0 * a.n_kv + g) * a.sel_w;
        all = a.cnt[t0 * a.n_kv + g] * per_blk;
    } else {
        const int k_lo = a.window && p_lo >= a.window ? p_lo - a.window + 1 : 0;
        kt0 = k_lo / FL_KT;
        all = p_hi / FL_KT + 1 - kt0;
    }
    const int per = (all + S - 1) / S;
    const int it0 = kt0 + min(all, split * per), n_it = max(0, min(all, split * per + per) - min(all, split * per));
    /* the first key of piece u and the last one it may hold */
#define FL_KEY0(u) (lst ? lst[(u) / per_blk] * a.B + (u) % per_blk * FL_KT : (u) * FL_KT)
#define FL_KEYHI(u) (lst ? min(lst[(u) / per_blk] * a.B + a.B - 1, p_hi) : p_hi)

    /* the two rows this thread holds: their position, first visible key */
    int rpos[2], rlo[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int r = warp * 16 + (lane >> 2) + 8 * h, tk = r / ratio;
        rpos[h] = tk < nt ? a.pos[t0 + tk] : -1;
        rlo[h] = a.window && rpos[h] >= a.window ? rpos[h] - a.window + 1 : 0;
    }
    float o[NT][4], m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < NT; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

    if (n_it > 0) fl_stage<D, F8>(a, tbl, g, FL_KEY0(it0), FL_KEYHI(it0), smem, kvs);
    cp_commit();
    for (int it = 0; it < n_it; it++) {
        if (it + 1 < n_it)
            fl_stage<D, F8>(a, tbl, g, FL_KEY0(it0 + it + 1), FL_KEYHI(it0 + it + 1), smem,
                            kvs + ((it + 1) & 1) * STAGE);
        cp_commit();
        cp_wait<1>();
        __syncthreads();
        const uint32_t ks = kvs + (it & 1) * STAGE;
        fl_keys32<D>(qs, warp * 16, ks, ks + FL_KT * 2 * D, FL_KEY0(it0 + it), FL_KEYHI(it0 + it), rpos, rlo,
                     a.scale, a.softcap, o, m, l);
        __syncthreads();
    }
    cp_wait<0>();
#undef FL_KEY0
#undef FL_KEYHI

#pragma unroll
    for (int h = 0; h < 2; h++) {
        l[h] = fl_quad_sum(l[h]);
        const int r = warp * 16 + (lane >> 2) + 8 * h, tk = r / ratio;
        if (tk >= nt) continue;
        const long long row = (long long)(t0 + tk) * a.n_heads + g * ratio + r % ratio;
        const float inv = l[h] > 0.f ? 1.f / l[h] : 0.f;
        if (S > 1) {
            const long long pr = (long long)split * a.T * a.n_heads + row;
            float2 *po = (float2 *)(part_o + pr * D + 2 * (lane & 3));
#pragma unroll
            for (int n = 0; n < NT; n++) po[4 * n] = make_float2(o[n][2 * h] * inv, o[n][2 * h + 1] * inv);
            if ((lane & 3) == 0) part_lse[pr] = l[h] > 0.f ? m[h] + __log2f(l[h]) : NEG_INF;
            continue;
        }
        uint32_t *op = (uint32_t *)((bf16 *)a.out + row * D + 2 * (lane & 3));
#pragma unroll
        for (int n = 0; n < NT; n++) op[4 * n] = pack_bf16(o[n][2 * h] * inv, o[n][2 * h + 1] * inv);
    }
}

/* A warp a row (token, head): the S ranges weighed by their sums. */
__global__ void __launch_bounds__(128) flash_combine_kernel(const float *part_o, const float *part_lse, int S,
                                                            long long rows, int D, bf16 *out)
{
    const long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    float mx = NEG_INF;
    for (int s = 0; s < S; s++) mx = fmaxf(mx, part_lse[s * rows + r]);
    for (int d = lane; d < D; d += 32) {
        float acc = 0.f, wsum = 0.f;
        for (int s = 0; s < S; s++) {
            const float lse = part_lse[s * rows + r];
            if (lse == NEG_INF) continue;
            const float w = exp2f(lse - mx);
            acc += w * part_o[(s * rows + r) * D + d];
            wsum += w;
        }
        out[r * D + d] = __float2bfloat16(wsum > 0.f ? acc / wsum : 0.f);
    }
}

extern "C" int cattn_flash_tile_tokens(int n_heads, int n_kv_heads)
{
    const int ratio = n_kv_heads > 0 ? n_heads / n_kv_heads : 0;
    return ratio >= 1 && ratio <= FL_ROWS ? FL_ROWS / ratio : 0;
}

/* Ranges enough for 2 CTAs an SM (CATTN_FLASH_CTAS overrides, for
 * comparisons).  More ranges cost more than they bring: at 128K, head dim
 * 64, decode ran 591 tokens/s at 2 an SM and 520 at 8 (H200, ae08cd0). */
extern "C" int cattn_flash_splits(int n_tiles, int n_kv_heads, int max_len)
{
    static int per_sm = 0;
    if (!per_sm) {
        const char *e = getenv("CATTN_FLASH_CTAS");
        per_sm = e && atoi(e) > 0 ? atoi(e) : 2;
    }
    const int ctas = n_tiles * n_kv_heads, slots = per_sm * fl_sms();
    if (ctas <= 0 || ctas >= slots) return 1;
    int S = (slots + ctas - 1) / ctas;
    const int most = (max_len + FL_KT - 1) / FL_KT / 4; /* at least 4 key tiles a range */
    S = S < most ? S : most;
    S = S < FL_MAX_SPLITS ? S : FL_MAX_SPLITS;
    return S < 2 ? 1 : S;
}

extern "C" size_t cattn_flash_ws(int S, int T, int n_heads, int head_dim)
{
    return S > 1 ? (size_t)S * T * n_heads * (head_dim + 1) * sizeof(float) + 256 : 0;
}

template <int D, bool F8>
static int flash_launch(const cattn_flash_args *a, int S, float *po, float *pl, cudaStream_t st)
{
    const int smem = FL_ROWS * 2 * D + 2 * (2 * FL_KT * 2 * D);
    static int attr_set = 0;
    if (!attr_set) {
        CUDA_TRY(cudaFuncSetAttribute(flash_kernel<D, F8>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        attr_set = 1;
    }
    flash_kernel<D, F8><<<dim3(a->n_tiles * S, a->n_kv), 128, smem, st>>>(*a, S, po, pl);
    return 0;
}

template <int D> static int flash_launch(const cattn_flash_args *a, int S, float *po, float *pl, cudaStream_t st)
{
    return a->kvs ? flash_launch<D, true>(a, S, po, pl, st) : flash_launch<D, false>(a, S, po, pl, st);
}

extern "C" int cattn_flash(const cattn_flash_args *a, int S, void *ws, size_t ws_bytes, void *stream)
{
    cudaStream_t st = (cudaStream_t)stream;
    const int D = a->head_dim;
    if ((D != 64 && D != 128 && D != 256) || a->B < 1 || (a->kvs && a->B % 2) ||
        cattn_flash_tile_tokens(a->n_heads, a->n_kv) < 1 ||
        S < 1 || S > FL_MAX_SPLITS)
        return CATTN_ESHAPE;
    if (a->n_tiles < 1) return 0;
    if (cattn_flash_ws(S, a->T, a->n_heads, D) > ws_bytes) return CATTN_EWORKSPACE;
    const long long rows = (long long)a->T * a->n_heads;
    float *po = S > 1 ? (float *)ws : NULL, *pl = S > 1 ? po + (size_t)S * rows * D : NULL;
    int rc = D == 64 ? flash_launch<64>(a, S, po, pl, st) : D == 128 ? flash_launch<128>(a, S, po, pl, st)
                                                                     : flash_launch<256>(a, S, po, pl, st);
    if (rc) return rc;
    CUDA_TRY(cudaGetLastError());
    if (S > 1) {
        flash_combine_kernel<<<(unsigned)((rows * 32 + 127) / 128), 128, 0, st>>>(po, pl, S, rows, D,
                                                                                   (bf16 *)a->out);
        CUDA_TRY(cudaGetLastError());
    }
    return 0;
}
