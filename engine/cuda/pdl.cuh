/* Programmatic dependent launch (sm_90; no-ops elsewhere), shared by the
 * backend's kernels and the attention kernels (private to engine/cuda).
 *
 * A kernel launched with launch_pdl may start while its predecessor in the
 * stream still runs; it must call pdl_wait() before reading anything that
 * predecessor (or any earlier kernel) writes and before writing anything,
 * and every CTA must call it, so that the grid never ends before its
 * predecessor does.  pdl_trigger() lets the dependent grid's CTAs become
 * resident early (on SMs that have room), so its launch overlaps our tail.
 * In a decode step of small kernels that hides most of each launch's
 * latency, and a product can stream its first weights before its wait. */
#ifndef SPARSED_PDL_CUH
#define SPARSED_PDL_CUH

#include <cuda_runtime.h>

static __device__ __forceinline__ void pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
static __device__ __forceinline__ void pdl_trigger()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/* kern<<<grid, block, smem, st>>>(args), allowed to overlap its
 * predecessor when on (a plain launch otherwise). */
template <typename... Params, typename... Args>
static cudaError_t launch_pdl_on(int on, void (*kern)(Params...), dim3 grid, dim3 block, size_t smem,
                                 cudaStream_t st, Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = on ? 1 : 0;
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cfg.attrs = at;
    cfg.numAttrs = 1;
    return cudaLaunchKernelEx(&cfg, kern, ((Params)args)...);
}

template <typename... Params, typename... Args>
static cudaError_t launch_pdl(void (*kern)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t st,
                              Args... args)
{
#ifdef CATTN_NO_PDL /* build knob: plain stream order, for A/B timing */
    return launch_pdl_on(0, kern, grid, block, smem, st, args...);
#else
    return launch_pdl_on(1, kern, grid, block, smem, st, args...);
#endif
}

#endif
