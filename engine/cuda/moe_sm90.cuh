/* moe_sm90: the experts' grouped products on Hopper's warpgroup MMA
 * (private to engine/cuda; cuda_backend.cu includes it after moe.cuh).
 *
 * moe_mma_kernel's 64 x 64 tiles on mma.sync ran the prefill's products
 * at ~30% of the card's bf16 peak.  Here a CTA takes 128 rows of one
 * expert (two warpgroups of 64 sharing the weight tile) against 256
 * weight rows (128 gate and 128 up columns with the activation, else 256
 * output columns), both operands in
 * 128-byte-swizzled shared memory fed by a four-stage cp.async pipeline
 * (the A rows are gathered by token, which a tensor map cannot do).  The
 * plan's tiles are MOE_WM rows for this kernel.
 *
 * Only the sm_90a build has a body; moe_wg_probe says whether this device
 * runs it. */
#ifndef SPARSED_MOE_SM90_CUH
#define SPARSED_MOE_SM90_CUH

#include "moe.cuh"
#include "wgmma.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MOE_SM90 1
#endif

#define MOE_WM 128                     /* rows a tile: two warpgroups of 64 */
#define MOE_WN 256                     /* weight rows a CTA */
#define MOE_WS 4                       /* pipeline stages of MOE_BK */
#define MOE_WA (MOE_WM * MOE_BK * 2)   /* bytes of a stage's rows */
#define MOE_WB (MOE_WN * MOE_BK * 2)   /* bytes of a stage's weights */
#define MOE_WSMEM (MOE_WS * (MOE_WA + MOE_WB) + 1024)
#define MOE_WG_ROWS 16 /* pairs an expert on average from which this kernel is used (H200, 128 experts of 768:
                        * 2 a step, 1.52 ms against mma.sync's 1.45; 32, 290.6K tok/s against 274.8K) */

/* Output columns a CTA covers. */
template <bool GLU> static __host__ __device__ constexpr int moe_wg_cols() { return GLU ? MOE_WN / 2 : MOE_WN; }

/* Same contract as moe_mma_kernel (Kd % 8 == 0, N even). */
template <bool GLU, int GELU>
__global__ void __launch_bounds__(256, 1) moe_wg_kernel(MoeGemm<bf16> g)
{
#ifdef MOE_SM90
    extern __shared__ unsigned char smem_raw[];
    pdl_trigger();
    pdl_wait();
    /* grid (column blocks, tiles): a tile's column blocks run side by side, so its gathered rows come from
     * HBM once and L2 after, and an expert's tiles are in flight together while its weights are in L2 */
    const int tile = blockIdx.y;
    if (tile >= *g.n_tiles)
        return;
    const int e = g.tiles[3 * tile], r0 = g.tiles[3 * tile + 1], r1 = g.tiles[3 * tile + 2];
    const int n0 = blockIdx.x * moe_wg_cols<GLU>(), tid = threadIdx.x, wg = tid >> 7;
    const int ch = tid & 7, rr = tid >> 3; /* this thread copies chunk ch of rows rr + 32 i */
    const uint32_t s0 = (smem_u32(smem_raw) + 1023) & ~1023u;

    const bf16 *ap[MOE_WM / 32];
    bool aok[MOE_WM / 32];
#pragma unroll
    for (int i = 0; i < MOE_WM / 32; i++) {
        const int p = r0 + rr + 32 * i;
        aok[i] = p < r1;
        ap[i] = g.a + (aok[i] ? (size_t)(GLU ? g.rows[p] / g.K : p) * g.Kd : 0) + ch * 8;
    }
    auto load = [&](int kt, int stage) {
        const uint32_t sa = s0 + stage * (MOE_WA + MOE_WB), sb = sa + MOE_WA;
        const int k0 = kt * MOE_BK;
        const bool kin = k0 + ch * 8 < g.Kd;
#pragma unroll
        for (int i = 0; i < MOE_WM / 32; i++)
            cp16(sa + moe_swz(rr + 32 * i, ch), ap[i] + (aok[i] && kin ? k0 : 0), aok[i] && kin);
#pragma unroll
        for (int i = 0; i < MOE_WN / 32; i++) {
            /* with GLU weight rows 0..127 are gate columns n0.., 128..255 the same columns' up rows */
            const int r = rr + 32 * i, n = n0 + (GLU ? r & 127 : r);
            const bool ok = n < g.N && kin;
            const bf16 *w = GLU && r >= 128 ? g.w2 : g.w;
            cp16(sb + moe_swz(r, ch), w + (ok ? ((size_t)e * g.N + n) * g.Kd + k0 : 0) + ch * 8, ok);
        }
    };

    /* acc: gate columns, or output columns 0..127; acc2: up columns, or 128..255 */
    float acc[64], acc2[64];
#pragma unroll
    for (int i = 0; i < 64; i++)
        acc[i] = acc2[i] = 0.0f;
    const int nk = (g.Kd + MOE_BK - 1) / MOE_BK;
#pragma unroll
    for (int s = 0; s < MOE_WS - 2; s++) {
        if (s < nk)
            load(s, s);
        cp_commit();
    }
    for (int kt = 0; kt < nk; kt++) {
        cp_wait<MOE_WS - 3>();
        fence_async_smem();
        /* past this barrier every warpgroup's products of stage kt - 2 are done (wg_wait<1> below), so
         * its buffer takes stage kt + MOE_WS - 2 */
        __syncthreads();
        if (kt + MOE_WS - 2 < nk)
            load(kt + MOE_WS - 2, (kt + MOE_WS - 2) % MOE_WS);
        cp_commit();
        /* a tile's second warpgroup may have no rows: it multiplies zeros rather than branch, since ptxas
         * waits for every wgmma where a branch around them joins */
        const uint32_t sa = s0 + (kt % MOE_WS) * (MOE_WA + MOE_WB), sb = sa + MOE_WA, a = sa + wg * 64 * 128;
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < MOE_BK / 16; kk++) {
            wgmma_ss(acc, desc_kmaj(a + 32 * kk), desc_kmaj(sb + 32 * kk), 1);
            wgmma_ss(acc2, desc_kmaj(a + 32 * kk), desc_kmaj(sb + 128 * 128 + 32 * kk), 1);
        }
        wg_commit();
        wg_wait<1>();
    }
    wg_wait<0>();
    reg_fence(acc);
    reg_fence(acc2);

    /* accumulator 4 j + q: row 16 (warp % 4) + lane / 4 (+ 8 for q >= 2), column 8 j + 2 (lane % 4) + q % 2 */
    const int lane = tid & 31, pr = r0 + 64 * wg + 16 * ((tid >> 5) & 3) + (lane >> 2);
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int p = pr + 8 * h, c = n0 + 8 * j + 2 * (lane & 3), q = 4 * j + 2 * h;
            if (p >= r1)
                continue;
            if (GLU) {
                if (c < g.N)
                    *(uint32_t *)(g.h + (size_t)p * g.N + c) =
                        pack_bf16(gate_mul<GELU>(acc[q], acc2[q]), gate_mul<GELU>(acc[q + 1], acc2[q + 1]));
            } else {
                if (c < g.N)
                    *(float2 *)(g.y + (size_t)p * g.N + c) = make_float2(acc[q], acc[q + 1]);
                if (c + 128 < g.N)
                    *(float2 *)(g.y + (size_t)p * g.N + c + 128) = make_float2(acc2[q], acc2[q + 1]);
            }
        }
#endif
}

/* 1 when this build has moe_wg_kernel's sm_90a code and the current device
 * runs it (its shared memory granted), else 0. */
static int moe_wg_probe(void)
{
    int dev, major, minor;
    cudaFuncAttributes fa;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess || major != 9 ||
        minor != 0 || cudaFuncGetAttributes(&fa, moe_wg_kernel<false, 0>) != cudaSuccess || fa.binaryVersion != 90 ||
        cudaFuncSetAttribute(moe_wg_kernel<false, 0>, cudaFuncAttributeMaxDynamicSharedMemorySize, MOE_WSMEM) !=
            cudaSuccess ||
        cudaFuncSetAttribute(moe_wg_kernel<true, 0>, cudaFuncAttributeMaxDynamicSharedMemorySize, MOE_WSMEM) !=
            cudaSuccess ||
        cudaFuncSetAttribute(moe_wg_kernel<true, 1>, cudaFuncAttributeMaxDynamicSharedMemorySize, MOE_WSMEM) !=
            cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return 1;
}

#endif
