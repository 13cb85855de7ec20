/* flush_probe: what the L2 flush before a timed run costs the run.
 *
 * Reads the Quest summaries' pattern (512 of every 768 bytes: one KV
 * head's min and max of a page, 8192 shuffled pages x 8 heads = 33.5 MB)
 * after three flushes: a 256 MB memset (the L2 is left full of dirty lines
 * that the timed read must write back), the memset then a 256 MB read
 * (clean lines), and none (the data partly in L2).  attn_bench and
 * torch_bench flush by reading since 2026-11-26 (v10) because of this.
 *
 *   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o flush_probe bench/gpu/flush_probe.cu
 */
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#define CK(x)                                                                                   \
    do {                                                                                        \
        cudaError_t e_ = (x);                                                                   \
        if (e_) {                                                                               \
            fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_));          \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)

/* warp w reads 512 bytes of units 4w..4w+3 (unit u: page perm[u / 8], head u % 8) */
__global__ void read_units(const char *base, const int *perm, int n_units, unsigned long long *sink)
{
    const int lane = threadIdx.x & 31;
    const int gw = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, nw = (gridDim.x * blockDim.x) >> 5;
    unsigned long long acc = 0;
    for (int u0 = gw * 4; u0 < n_units; u0 += nw * 4) {
        uint4 x[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int u = u0 + k;
            x[k] = u < n_units ? __ldg((const uint4 *)(base + (long long)perm[u / 8] * 8 * 768 + (u % 8) * 768) + lane)
                               : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int k = 0; k < 4; k++) acc += x[k].x ^ x[k].w;
    }
    if (acc == 1) *sink = acc; /* keeps the loads */
}

__global__ void read_all(const uint4 *p, size_t n, unsigned long long *sink)
{
    unsigned long long a = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        a += p[i].x;
    if (a == 1) *sink = a;
}

int main()
{
    const int n_pages = 8192, n_units = n_pages * 8;
    const size_t flush_bytes = (size_t)256 << 20;
    char *summ, *fl;
    unsigned long long *sink;
    int *perm;
    CK(cudaMalloc(&summ, (size_t)n_pages * 8 * 768));
    CK(cudaMalloc(&fl, flush_bytes));
    CK(cudaMalloc(&sink, 8));
    CK(cudaMalloc(&perm, sizeof(int) * n_pages));
    CK(cudaMemset(summ, 1, (size_t)n_pages * 8 * 768));
    std::vector<int> pp(n_pages);
    for (int i = 0; i < n_pages; i++) pp[i] = i;
    std::shuffle(pp.begin(), pp.end(), std::mt19937(1));
    CK(cudaMemcpy(perm, pp.data(), sizeof(int) * n_pages, cudaMemcpyHostToDevice));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    const int sms = prop.multiProcessorCount;
    printf("device: %s\n", prop.name);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    static const char *names[3] = {"33.5 MB in 512 B chunks after a memset flush", "... after a memset + read flush",
                                   "... without a flush"};
    for (int mode = 0; mode < 4; mode++) {
        float best = 1e9f;
        for (int r = 0; r < 9; r++) {
            if (mode < 2) CK(cudaMemset(fl, r, flush_bytes));
            if (mode == 1) read_all<<<sms * 8, 256>>>((const uint4 *)fl, flush_bytes / 16, sink);
            CK(cudaEventRecord(e0));
            if (mode < 3) read_units<<<sms * 8, 256>>>(summ, perm, n_units, sink);
            else read_all<<<sms * 8, 256>>>((const uint4 *)fl, flush_bytes / 16, sink);
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            best = std::min(best, ms);
        }
        const double bytes = mode < 3 ? (double)n_units * 512 : (double)flush_bytes;
        printf("%-48s %8.2f us  %.2f TB/s\n",
               mode < 3 ? names[mode] : "(reference: 256 MB contiguous read, no flush)", best * 1e3,
               bytes / (best * 1e-3) / 1e12);
    }
    return 0;
}
