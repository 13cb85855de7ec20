/* The fp8 indexer's queries, shared by the backend's generic kernels and
 * the attention kernels (private to engine/cuda).
 *
 * With fp8 index keys an index query row is scored in e4m3 too, as the
 * wgmma fp8 x fp8 selection needs: the row times the power of two that
 * takes its largest |element| to at most 448 (positive, so the order of
 * the row's block scores is kept), rounded to e4m3.  Every path (prefill
 * selection on wgmma or mma.sync, decode scoring, the generic kernels)
 * rounds the same way, so they select alike. */
#ifndef SPARSED_Q8_CUH
#define SPARSED_Q8_CUH

#include <cuda_fp8.h>
#include <cuda_runtime.h>

/* the scale of a row whose largest |element| is amax */
static __device__ __forceinline__ float q8_scale(float amax)
{
    int ex = 1;
    if (amax > 0.f) frexpf(448.f / amax, &ex);
    return ldexpf(1.f, ex - 1);
}
/* The scale of a row spread over a quad of lanes (4k .. 4k + 3), from
 * this lane's part_amax; every lane of the warp must call. */
static __device__ __forceinline__ float q8_quad_scale(float part_amax)
{
    part_amax = fmaxf(part_amax, __shfl_xor_sync(0xffffffffu, part_amax, 1));
    part_amax = fmaxf(part_amax, __shfl_xor_sync(0xffffffffu, part_amax, 2));
    return q8_scale(part_amax);
}
/* an element of that row as scored: e4m3, nearest, saturating */
static __device__ __forceinline__ float q8_round(float v, float sc)
{
    return float(__nv_fp8_e4m3(v * sc));
}
/* four floats to e4m3 bytes by that rule, the first in the low byte */
static __device__ __forceinline__ uint32_t e4m3x4(float a, float b, float c, float d)
{
    const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
    const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(c, d), __NV_SATFINITE, __NV_E4M3);
    return lo | (hi << 16);
}

#endif
