/* Sampling on the device: sampler_pick's rule (engine/sampler.c) and
 * logprobs_top over each logit row, blocks of SK_T threads per row (see
 * below), so only the chosen ids (and requested logprobs) go back to the
 * host.
 *
 * Same rule, same order of the draw: top-k survivors sorted by rank and
 * walked in that order, every other draw walked in id order, each thread
 * owning a contiguous run of ids.  Passes whose result does not depend on
 * id order (maxima, counts, sums, the searches' tests) stride the row
 * instead, so that a warp's loads are coalesced: reading contiguous runs,
 * each load of a warp touched 32 lines, and sampling rows of 32000 logits
 * with top-k or top-p took 0.6-0.8 ms on an H100 (ncu).  Sums are in double like the host's;
 * they differ from it only in association order (and expf in an ulp), so
 * a pick can differ from the host's only when u falls within rounding of a
 * boundary.  Thresholds (the k-th best, the top-p cut) are found by
 * searches over order-preserving 32-bit keys of the logits (sk_search),
 * with ties broken by id as on the host.
 *
 * The passes are bound by instructions (~25 a logit in the searches), so a
 * long row is spread over a cluster of C CTAs (sm_90), each owning a
 * contiguous slice of ids: every block-wide reduction then ends with one
 * cluster step, where each CTA pushes its total into every CTA's shared
 * memory and, after one cluster barrier, all combine them in rank order
 * (the same bits everywhere).  The top-k candidates gather in rank 0, which
 * alone sorts them and writes the row's results.  Included by
 * cuda_backend.cu.
 */
#include <float.h>

#include <cooperative_groups.h>

#define SK_T 1024
#define SK_W (SK_T / 32)
#define SK_P 8 /* keys a round of sk_search tests in one pass over the row */
#define SK_MAXC 8 /* CTAs of a row's cluster */

struct SkShared {
    double d[SK_W];
    float f[SK_W];
    int i[SK_W];
    double dp[SK_W][SK_P]; /* per-warp partials of SK_P sums, then the totals in dp[0] */
    int ip[SK_W][SK_P];
    float cv[SK_T];   /* top-k candidates: value, id, weight */
    int ci[SK_T];
    float cw[SK_T];
    int n_cand;
    int result;
    unsigned long long xb[2][SK_MAXC][SK_P]; /* cluster steps: each CTA's totals, two buffers */
};

/* Where a CTA stands in its row: cluster size and rank (1 and 0 without
 * clusters), the exchange buffer the next cluster step uses, its slice
 * s0 .. s1 - 1 of the ids. */
struct SkCtx {
    int C, rank, par, s0, s1;
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define SK_CLUSTERS 1
#endif

/* A barrier of the row's CTAs (of the block without clusters). */
static __device__ __forceinline__ void sk_xsync(const SkCtx &cx)
{
    __syncwarp();
#ifdef SK_CLUSTERS
    if (cx.C > 1) {
        cooperative_groups::this_cluster().sync();
        return;
    }
#endif
    __syncthreads();
}

/* The cluster step: v (N values, the same in every thread of the CTA)
 * becomes op over the CTAs' values in rank order.  A buffer is reused two
 * steps later, when every CTA has passed the barrier of the step between,
 * and so has read it. */
template <typename T, int N, typename Op>
static __device__ void sk_xred(SkShared &sh, SkCtx &cx, T (&v)[N], Op op)
{
    static_assert(sizeof(T) * N <= sizeof sh.xb[0][0], "one exchange slot");
#ifdef SK_CLUSTERS
    if (cx.C == 1)
        return;
    cooperative_groups::cluster_group cl = cooperative_groups::this_cluster();
    if ((int)threadIdx.x < cx.C) {
        T *dst = cl.map_shared_rank((T *)sh.xb[cx.par][cx.rank], (int)threadIdx.x);
#pragma unroll
        for (int j = 0; j < N; j++)
            dst[j] = v[j];
    }
    cl.sync();
#pragma unroll
    for (int j = 0; j < N; j++) {
        T a = ((const T *)sh.xb[cx.par][0])[j];
        for (int r = 1; r < cx.C; r++)
            a = op(a, ((const T *)sh.xb[cx.par][r])[j]);
        v[j] = a;
    }
    cx.par ^= 1;
#endif
}

/* The sum of the values of the CTAs ranked before this one, in rank order. */
static __device__ double sk_xprefix(SkShared &sh, SkCtx &cx, double v)
{
#ifdef SK_CLUSTERS
    if (cx.C > 1) {
        cooperative_groups::cluster_group cl = cooperative_groups::this_cluster();
        if ((int)threadIdx.x < cx.C)
            *cl.map_shared_rank((double *)sh.xb[cx.par][cx.rank], (int)threadIdx.x) = v;
        cl.sync();
        double a = 0;
        for (int r = 0; r < cx.rank; r++)
            a += *(const double *)sh.xb[cx.par][r];
        cx.par ^= 1;
        return a;
    }
#endif
    return 0;
}

static __device__ __forceinline__ double sk_add(double a, double b) { return a + b; }
static __device__ __forceinline__ int sk_addi(int a, int b) { return a + b; }
static __device__ __forceinline__ int sk_mini(int a, int b) { return min(a, b); }
static __device__ __forceinline__ int sk_maxi(int a, int b) { return max(a, b); }

/* A block barrier with each warp converged first: the lanes of a warp
 * split in data-dependent branches, and a barrier reached by a split warp
 * was seen not to order shared memory (H200, CUDA 13). */
static __device__ __forceinline__ void sk_sync()
{
    __syncwarp();
    __syncthreads();
}

static __device__ __forceinline__ float sk_clean(float v) { return v != v ? -INFINITY : v; }

/* a ranks before b: higher value, then lower id */
static __device__ __forceinline__ bool sk_better(float av, int ai, float bv, int bi)
{
    return av > bv || (av == bv && ai < bi);
}

/* Order-preserving key of a float (NaN cleaned to -inf before). */
static __device__ __forceinline__ unsigned sk_key(float f)
{
    unsigned u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static __device__ double sk_sum(SkShared &sh, SkCtx &cx, double v)
{
    for (int o = 16; o; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    sk_sync();
    if (lane == 0)
        sh.d[w] = v;
    sk_sync();
    double t[1] = {0};
    for (int k = 0; k < SK_W; k++)   /* fixed order: every thread gets the same bits */
        t[0] += sh.d[k];
    sk_xred(sh, cx, t, sk_add);
    return t[0];
}

static __device__ int sk_count(SkShared &sh, SkCtx &cx, int v)
{
    v = __reduce_add_sync(0xffffffffu, v);
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    sk_sync();
    if (lane == 0)
        sh.i[w] = v;
    sk_sync();
    int t[1] = {0};
    for (int k = 0; k < SK_W; k++)
        t[0] += sh.i[k];
    sk_xred(sh, cx, t, sk_addi);
    return t[0];
}

struct SkPair {
    float v;
    int i;
};

/* Smallest of the threads' v over the row. */
static __device__ float sk_min(SkShared &sh, SkCtx &cx, float v)
{
    for (int o = 16; o; o >>= 1)
        v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    sk_sync();
    if (lane == 0)
        sh.f[w] = v;
    sk_sync();
    float t[1] = {sh.f[0]};
    for (int k = 1; k < SK_W; k++)
        t[0] = fminf(t[0], sh.f[k]);
    sk_xred(sh, cx, t, [](float a, float b) { return fminf(a, b); });
    return t[0];
}

/* Best (value, id) over the row's CTAs by rank; id INT_MAX when nothing qualified. */
static __device__ void sk_best(SkShared &sh, SkCtx &cx, float &bv, int &bi)
{
    for (int o = 16; o; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        bool t = sk_better(ov, oi, bv, bi);
        bv = t ? ov : bv;
        bi = t ? oi : bi;
    }
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    sk_sync();
    if (lane == 0) {
        sh.f[w] = bv;
        sh.i[w] = bi;
    }
    sk_sync();
    float rv = sh.f[0];
    int ri = sh.i[0];
    for (int k = 1; k < SK_W; k++) {
        float v = sh.f[k];
        int i = sh.i[k];
        bool t = sk_better(v, i, rv, ri);
        rv = t ? v : rv;
        ri = t ? i : ri;
    }
    SkPair x[1] = {{rv, ri}};
    sk_xred(sh, cx, x, [](SkPair a, SkPair b) { return sk_better(b.v, b.i, a.v, a.i) ? b : a; });
    bv = x[0].v;
    bi = x[0].i;
}

/* Exclusive prefix over the row of one double per thread (rank, then
 * thread order). */
static __device__ double sk_scan(SkShared &sh, SkCtx &cx, double v)
{
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    double inc = v;
    for (int o = 1; o < 32; o <<= 1) {
        double y = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o)
            inc += y;
    }
    sk_sync();
    if (lane == 31)
        sh.d[w] = inc;
    sk_sync();
    double before = 0, total = 0;
    for (int k = 0; k < SK_W; k++) {
        before += k < w ? sh.d[k] : 0.0;
        total += sh.d[k];
    }
    return sk_xprefix(sh, cx, total) + before + inc - v;
}

/* The draw over a set in id order: the first id of the set whose running
 * mass passes target, else the set's last id (target rounded up to the
 * total).  in(i, w) says whether id i is in the set, and its weight. */
template <typename In>
static __device__ int sk_walk(SkShared &sh, SkCtx &cx, int lo, int hi, double target, In in)
{
    double mine = 0;
    int last = -1;
    for (int i = lo; i < hi; i++) {
        float w;
        if (in(i, w)) {
            mine += w;
            last = i;
        }
    }
    double acc = sk_scan(sh, cx, mine);
    if (threadIdx.x == 0)
        sh.result = INT_MAX;
    sk_sync();
    if (mine > 0 && target >= acc && target < acc + mine) {
        int r = last;   /* rounding may leave the crossing short of the run's end */
        for (int i = lo; i < hi; i++) {
            float w;
            if (!in(i, w))
                continue;
            acc += w;
            if (target < acc) {
                r = i;
                break;
            }
        }
        atomicMin(&sh.result, r);   /* runs that overlap by rounding: the lowest id */
    }
    sk_sync();
    int r[1] = {sh.result};
    sk_xred(sh, cx, r, sk_mini);
    if (r[0] != INT_MAX)
        return r[0];
    for (int o = 16; o; o >>= 1)
        last = max(last, __shfl_xor_sync(0xffffffffu, last, o));
    sk_sync();
    if ((threadIdx.x & 31) == 0)
        sh.i[threadIdx.x >> 5] = last;
    sk_sync();
    int t[1] = {-1};
    for (int k = 0; k < SK_W; k++)
        t[0] = max(t[0], sh.i[k]);
    sk_xred(sh, cx, t, sk_maxi);
    return t[0];
}

/* SK_P sums over the block at once (of doubles into sh.dp, of counts into
 * sh.ip), in sk_sum's order, so each total has the bits the single
 * reduction gives (counts are exact in any order). */
template <typename T>
static __device__ void sk_sum_p(SkShared &sh, SkCtx &cx, T (*part)[SK_P], T (&v)[SK_P])
{
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < SK_P; j++)
        for (int o = 16; o; o >>= 1)
            v[j] += __shfl_xor_sync(0xffffffffu, v[j], o);
    sk_sync();
    if (lane == 0)
#pragma unroll
        for (int j = 0; j < SK_P; j++)
            part[w][j] = v[j];
    sk_sync();
    T t = 0;
    if (threadIdx.x < SK_P)
        for (int k = 0; k < SK_W; k++)
            t += part[k][threadIdx.x];
    sk_sync();
    if (threadIdx.x < SK_P)
        part[0][threadIdx.x] = t;
    sk_sync();
#pragma unroll
    for (int j = 0; j < SK_P; j++)
        v[j] = part[0][j];
    sk_xred(sh, cx, v, [](T a, T b) { return a + b; });
}

/* The float whose sk_key is k. */
static __device__ __forceinline__ float sk_unkey(unsigned k)
{
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

/* Largest key t in [a, b] with f(t) true, f monotone and true at a.  Each
 * round tests SK_P keys spread over the range left, in one pass over the
 * row (test(t, ok) sets ok[j] = f(t[j])).  The range starts at the row's
 * own values and, while it is wide, the keys are spread evenly in value
 * rather than in key (keys crowd near zero: between -20 and 20 they span
 * half of all 32-bit keys); any keys in (a, b] give the same answer. */
template <typename Test>
static __device__ unsigned sk_search(unsigned a, unsigned b, Test test)
{
    while (a < b) {
        const unsigned long long span = (unsigned long long)b - a;
        const float va = sk_unkey(a), vb = sk_unkey(b);
        const bool lin = span >= (1u << 16) && isfinite(va) && isfinite(vb) && isfinite(vb - va);
        unsigned t[SK_P]; /* a < t[0] <= ... <= t[SK_P - 1] <= b */
        bool ok[SK_P];
        unsigned prev = a + 1;
#pragma unroll
        for (int j = 0; j < SK_P; j++) {
            unsigned k = a + (unsigned)((span * (j + 1) + SK_P - 1) / SK_P);
            if (lin)
                k = sk_key(fminf(va + (vb - va) * ((float)(j + 1) / SK_P), vb));
            k = min(max(k, prev), b);
            t[j] = prev = k;
        }
        test(t, ok);
        int last = -1; /* f holds on a prefix of the keys */
#pragma unroll
        for (int j = 0; j < SK_P; j++)
            if (ok[j])
                last = j;
        if (last < 0) {
            b = t[0] - 1;
        } else {
            a = t[last];
            if (last < SK_P - 1)
                b = t[last + 1] - 1;
        }
    }
    return a;
}

__global__ void __launch_bounds__(SK_T) sample_kernel(const float *logits, int V, const engine_sample *rows,
                                                      engine_sampled *out)
{
    __shared__ SkShared sh;
    SkCtx cx = {1, 0, 0, 0, V};
#ifdef SK_CLUSTERS
    cx.C = (int)cooperative_groups::this_cluster().num_blocks();
    cx.rank = (int)cooperative_groups::this_cluster().block_rank();
#endif
    const int row = (int)blockIdx.x / cx.C, slice = (V + cx.C - 1) / cx.C;
    cx.s0 = min(V, cx.rank * slice);
    cx.s1 = min(V, cx.s0 + slice);
    if (threadIdx.x == 0)
        sh.n_cand = 0;   /* rank 0's, for the top-k gather */
    sk_xsync(cx);        /* every CTA runs before any writes its shared memory */
    const float *x = logits + (size_t)row * V;
    const engine_sample p = rows[row];
    int chunk = (cx.s1 - cx.s0 + SK_T - 1) / SK_T;
    int lo = min(cx.s1, cx.s0 + (int)threadIdx.x * chunk), hi = min(cx.s1, lo + chunk);

    /* argmax, lowest id on ties; all -inf gives 0 like the host; the
     * smallest finite logit (this thread's) bounds the searches below */
    float vmax = -INFINITY, vlo = INFINITY;
    int best = INT_MAX;
    for (int i = cx.s0 + (int)threadIdx.x; i < cx.s1; i += SK_T) {
        float v = sk_clean(x[i]);
        if (sk_better(v, i, vmax, best) && v > -INFINITY) {
            vmax = v;
            best = i;
        }
        if (v > -INFINITY)
            vlo = fminf(vlo, v);
    }
    sk_best(sh, cx, vmax, best);
    if (best == INT_MAX) {
        best = 0;
        vmax = -INFINITY;
    }

    int pick = best;
    float T = p.temperature;
    float fit = (float)(1.0 / T);
    if (T > 0 && vmax != -INFINITY && vmax != INFINITY && isfinite(fit) && p.top_p > 0) {
        float wmin = p.min_p > 0 ? fminf(p.min_p, 1.0f) : 0.0f;
        int k = p.top_k > 0 && p.top_k < V ? p.top_k : 0;
        bool use_p = p.top_p < 1.0f;
        if (k) {
            /* the k best finite logits by rank (fewer when fewer are finite),
             * gathered in rank 0 */
            int *nc0 = &sh.n_cand, *ci0 = sh.ci;
            float *cv0 = sh.cv;
#ifdef SK_CLUSTERS
            if (cx.C > 1) {
                cooperative_groups::cluster_group cl = cooperative_groups::this_cluster();
                nc0 = cl.map_shared_rank(nc0, 0);
                ci0 = cl.map_shared_rank(ci0, 0);
                cv0 = cl.map_shared_rank(cv0, 0);
            }
#endif
            int n_fin = 0;
            for (int i = cx.s0 + (int)threadIdx.x; i < cx.s1; i += SK_T)
                n_fin += sk_clean(x[i]) > -INFINITY;
            n_fin = sk_count(sh, cx, n_fin);
            unsigned thr = 0;
            int need_ties = 0;   /* of the ties at thr, the lowest ids taken */
            bool all = n_fin <= k;
            if (!all) {
                thr = sk_search(sk_key(sk_min(sh, cx, vlo)), sk_key(vmax),
                                [&](const unsigned (&t)[SK_P], bool (&ok)[SK_P]) {
                    int c[SK_P] = {};
                    for (int i = cx.s0 + (int)threadIdx.x; i < cx.s1; i += SK_T) {
                        float v = sk_clean(x[i]);
                        unsigned kk = sk_key(v);
#pragma unroll
                        for (int j = 0; j < SK_P; j++)
                            c[j] += v > -INFINITY && kk >= t[j];
                    }
                    sk_sum_p(sh, cx, sh.ip, c);
#pragma unroll
                    for (int j = 0; j < SK_P; j++)
                        ok[j] = c[j] >= k;
                });
                int gt = 0, eq = 0;
                for (int i = lo; i < hi; i++) {
                    float v = sk_clean(x[i]);
                    if (v > -INFINITY) {
                        gt += sk_key(v) > thr;
                        eq += sk_key(v) == thr;
                    }
                }
                need_ties = k - sk_count(sh, cx, gt);
                /* ties before this thread's run, in id order */
                int tb = (int)sk_scan(sh, cx, (double)eq);
                eq = tb;   /* reuse as the running tie rank */
                for (int i = lo; i < hi; i++) {
                    float v = sk_clean(x[i]);
                    if (!(v > -INFINITY))
                        continue;
                    unsigned kk = sk_key(v);
                    bool take = kk > thr || (kk == thr && eq++ < need_ties);
                    if (take) {
                        int s = atomicAdd(nc0, 1);
                        cv0[s] = v;
                        ci0[s] = i;
                    }
                }
            } else {
                for (int i = cx.s0 + (int)threadIdx.x; i < cx.s1; i += SK_T) {
                    float v = sk_clean(x[i]);
                    if (v > -INFINITY) {
                        int s = atomicAdd(nc0, 1);
                        cv0[s] = v;
                        ci0[s] = i;
                    }
                }
            }
            sk_xsync(cx);
            if (cx.rank == 0) {
                int n = sh.n_cand;
                int t = threadIdx.x;
                if (t >= n) {
                    sh.cv[t] = -INFINITY;
                    sh.ci[t] = INT_MAX;
                }
                sk_sync();
                /* bitonic sort of the candidates padded to a power of two,
                 * best first: 6 barrier stages for top-k 5, not 55 */
                int np2 = 2;
                while (np2 < n)
                    np2 <<= 1;
                for (int size = 2; size <= np2; size <<= 1)
                    for (int stride = size >> 1; stride > 0; stride >>= 1) {
                        int j = t ^ stride;
                        if (j > t && j < np2) {
                            bool up = (t & size) == 0;
                            float av = sh.cv[t], bv = sh.cv[j];
                            int ai = sh.ci[t], bi = sh.ci[j];
                            bool swap = up ? sk_better(bv, bi, av, ai) : sk_better(av, ai, bv, bi);
                            if (swap) {
                                sh.cv[t] = bv;
                                sh.cv[j] = av;
                                sh.ci[t] = bi;
                                sh.ci[j] = ai;
                            }
                        }
                        sk_sync();
                    }
                if (t < n)
                    sh.cw[t] = expf((sh.cv[t] - vmax) * fit);
                sk_sync();
                if (t == 0) {
                    /* the host's loop, in the same order */
                    double z = 0;
                    for (int i = 0; i < n; i++)
                        z += sh.cw[i];
                    double acc = 0, target = use_p ? (double)p.top_p * z : INFINITY;
                    int cut = n;
                    for (int i = 0; i < n; i++) {
                        if (sh.cw[i] < wmin) {
                            cut = i;
                            break;
                        }
                        acc += sh.cw[i];
                        if (acc >= target) {
                            cut = i + 1;
                            break;
                        }
                    }
                    if (cut < 1)
                        cut = 1;
                    double zc = 0;
                    for (int i = 0; i < cut; i++)
                        zc += sh.cw[i];
                    double u = p.u * zc;
                    int r = sh.ci[0];
                    acc = 0;
                    for (int i = 0; i < cut; i++) {
                        if (sh.cw[i] <= 0)
                            continue;
                        acc += sh.cw[i];
                        r = sh.ci[i];
                        if (u < acc)
                            break;
                    }
                    sh.result = r;
                }
                sk_sync();
                pick = sh.result;   /* rank 0's alone: the others write nothing */
            }
        } else {
            double z = 0, zk = 0;
            for (int i = cx.s0 + (int)threadIdx.x; i < cx.s1; i += SK_T) {
                float w = expf((sk_clean(x[i]) - vmax) * fit);
                z += w;
                if (w >= wmin)
                    zk += w;
            }
            z = sk_sum(sh, cx, z);
            zk = sk_sum(sh, cx, zk);
            if (!use_p) {
                pick = sk_walk(sh, cx, lo, hi, p.u * zk, [&](int i, float &w) {
                    w = expf((sk_clean(x[i]) - vmax) * fit);
                    return w >= wmin && w > 0;
                });
            } else {
                float eps = fmaxf((float)(0.5 * (1.0 - (double)p.top_p) * z / V), wmin);
                double target = (double)p.top_p * z;
                auto wt = [&](int i) { return expf((sk_clean(x[i]) - vmax) * fit); };
                /* mass of the candidates (w >= eps, w > 0) with key >= t */
                auto mass = [&](unsigned t) {
                    double m = 0;
                    for (int i = cx.s0 + (int)threadIdx.x; i < cx.s1; i += SK_T) {
                        float v = sk_clean(x[i]), w = wt(i);
                        if (w >= eps && w > 0 && sk_key(v) >= t)
                            m += w;
                    }
                    return sk_sum(sh, cx, m);
                };
                /* the nucleus: the fewest best candidates reaching target,
                 * all of them when none does */
                unsigned thr = 0;
                int tie_cut = INT_MAX;   /* ties at thr kept up to this id */
                if (mass(0) >= target) {
                    thr = sk_search(sk_key(sk_min(sh, cx, vlo)), sk_key(vmax),
                                    [&](const unsigned (&t)[SK_P], bool (&ok)[SK_P]) {
                        double m[SK_P] = {};
                        for (int i = cx.s0 + (int)threadIdx.x; i < cx.s1; i += SK_T) {
                            float v = sk_clean(x[i]), w = wt(i);
                            if (!(w >= eps && w > 0))
                                continue;
                            unsigned kk = sk_key(v);
#pragma unroll
                            for (int j = 0; j < SK_P; j++)
                                if (kk >= t[j])
                                    m[j] += w;
                        }
                        sk_sum_p(sh, cx, sh.dp, m);
#pragma unroll
                        for (int j = 0; j < SK_P; j++)
                            ok[j] = m[j] >= target;
                    });
                    double gt = thr == 0xffffffffu ? 0.0 : mass(thr + 1);
                    double mine = 0;
                    for (int i = lo; i < hi; i++) {
                        float v = sk_clean(x[i]), w = wt(i);
                        if (w >= eps && w > 0 && sk_key(v) == thr)
                            mine += w;
                    }
                    double acc = gt + sk_scan(sh, cx, mine);
                    if (threadIdx.x == 0)
                        sh.result = INT_MAX;
                    sk_sync();
                    if (mine > 0 && acc < target && acc + mine >= target) {
                        for (int i = lo; i < hi; i++) {
                            float v = sk_clean(x[i]), w = wt(i);
                            if (!(w >= eps && w > 0 && sk_key(v) == thr))
                                continue;
                            acc += w;
                            if (acc >= target) {
                                atomicMin(&sh.result, i);
                                break;
                            }
                        }
                    }
                    sk_sync();
                    int tc[1] = {sh.result};
                    sk_xred(sh, cx, tc, sk_mini);
                    tie_cut = tc[0];
                    sk_sync();
                }
                auto in = [&](int i, float &w) {
                    float v = sk_clean(x[i]);
                    w = wt(i);
                    if (!(w >= eps && w > 0))
                        return false;
                    unsigned kk = sk_key(v);
                    return kk > thr || (kk == thr && i <= tie_cut);
                };
                double zn = 0;
                for (int i = cx.s0 + (int)threadIdx.x; i < cx.s1; i += SK_T) {
                    float w;
                    if (in(i, w))
                        zn += w;
                }
                zn = sk_sum(sh, cx, zn);
                pick = sk_walk(sh, cx, lo, hi, p.u * zn, in);
                if (pick < 0)
                    pick = best;
            }
        }
    }

    engine_sampled *o = out + row;
    const bool writer = threadIdx.x == 0 && cx.rank == 0;
    if (writer)
        o->id = pick;
    if (p.n_logprobs < 0)
        return;
    /* logprobs_top: log-softmax of the raw row */
    double lse = vmax;
    if (isfinite(vmax)) {
        double z = 0;
        for (int i = cx.s0 + (int)threadIdx.x; i < cx.s1; i += SK_T)
            z += expf(sk_clean(x[i]) - vmax);
        lse = vmax + log(sk_sum(sh, cx, z));
    }
    bool ok = isfinite(lse);
    if (writer)
        o->logprob = ok && pick >= 0 && pick < V ? (float)(sk_clean(x[pick]) - lse) : -INFINITY;
    /* the n best by rank, -inf entries included, one block max each */
    float pv = INFINITY;
    int pi = -1;
    for (int j = 0; j < p.n_logprobs; j++) {
        float bv = -INFINITY;
        int bi = INT_MAX;
        bool any = false;
        for (int i = cx.s0 + (int)threadIdx.x; i < cx.s1; i += SK_T) {
            float v = sk_clean(x[i]);
            if (sk_better(pv, pi, v, i) && (!any || sk_better(v, i, bv, bi))) {
                bv = v;
                bi = i;
                any = true;
            }
        }
        sk_best(sh, cx, bv, bi);
        if (writer) {
            o->top_ids[j] = bi == INT_MAX ? -1 : bi;
            o->top_lp[j] = bi != INT_MAX && ok ? (float)(bv - lse) : -INFINITY;
        }
        pv = bv;
        pi = bi;
        if (bi == INT_MAX)
            pv = -INFINITY, pi = INT_MAX;   /* nothing left: the rest stay empty */
    }
}
