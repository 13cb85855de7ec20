/* Hopper warpgroup MMA helpers shared by the attention and MoE kernels (private to
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

/* keeps the compiler from moving accesses of accumulators across a wait */
static __device__ __forceinline__ void reg_fence(float (&d)[64])
{
#pragma unroll
    for (int i = 0; i < 64; i++) asm volatile("" : "+f"(d[i])::"memory");
}

#define WG_D8(i) \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define WG_D64 WG_D8(0), WG_D8(8), WG_D8(16), WG_D8(24), WG_D8(32), WG_D8(40), WG_D8(48), WG_D8(56)
#define WG_R64                                                                                                      \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
    "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "  \
    "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

/* D (64 x 128, fp32) (+)= A (64 x 16, smem K-major) * B (16 x 128, smem K-major) */
static __device__ __forceinline__ void wgmma_ss(float (&d)[64], uint64_t da, uint64_t db, int accum)
{
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %66, 0;\n"
                 " wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_R64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : WG_D64
                 : "l"(da), "l"(db), "r"(accum));
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
