/* Hopper warpgroup MMA helpers shared by the attention kernels (private to
 * engine/cuda).  wgmma is sm_90a only: call these only from code built
 * under __CUDA_ARCH_FEAT_SM90_ALL (the portable paths use mma.sync).
 *
 * Shared-memory descriptors use the 128-byte swizzle (layout type 1 in
 * bits 62-63): a K-major tile is rows of 128 bytes in 8-row atoms of 1024
 * bytes (SBO = 1024, LBO unused), 16-byte chunk c of row r at
 * r * 128 + ((c ^ (r & 7)) << 4) from a 1024-byte aligned base.  Moving
 * along K inside the 128 bytes is adding to the start address. */
#ifndef SPARSED_WGMMA_CUH
#define SPARSED_WGMMA_CUH

#include <stdint.h>

static __device__ __forceinline__ uint64_t desc_kmaj(uint32_t addr)
{
    return (uint64_t)((addr & 0x3ffff) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}
static __device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
static __device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> static __device__ __forceinline__ void wg_wait()
{
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/* shared memory written by threads (st.shared, cp.async) becomes visible
 * to the async proxy wgmma reads through: each writer fences, then a barrier */
static __device__ __forceinline__ void fence_async_smem()
{
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

/* D (64 x 8, fp32) (+)= A (64 x 32, e4m3 smem K-major) * B (32 x 8, e4m3
 * smem K-major).  D's layout is mma.sync m16n8's, warp w holding rows
 * 16 w ..: d[0], d[1] row lane / 4, columns 2 (lane % 4) + 0, 1; d[2],
 * d[3] row lane / 4 + 8. */
static __device__ __forceinline__ void wgmma_n8_e4m3(float (&d)[4], uint64_t da, uint64_t db, int accum)
{
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %6, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n8k32.f32.e4m3.e4m3 {%0, %1, %2, %3}, %4, %5, p, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "l"(da), "l"(db), "r"(accum));
}

#endif
