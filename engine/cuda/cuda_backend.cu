/* The CUDA backend: weights upload, device K/V pages, and the forward pass
 * over a ragged batch, mirroring cpu/forward.c step for step (see
 * cuda_backend.h for the data layout). */
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "engine/gguf.h"
#include "engine/internal.h"
#include "engine/quant.h"
}
#include "engine/cuda/cuda_attn.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_kernels.cuh"
#include "engine/cuda/moe.cuh"
#include "engine/cuda/moe_sm90.cuh"
#include "engine/cuda/sample.cuh"

typedef struct dlayer {
    void *wqkv;                 /* [nqkv][E]: Q, K, V, index queries, index key */
    int nqkv;
    void *wo, *wgu, *wdown;     /* [E][QD], [2F][E], [E][F]; experts: [2 X F][E] (gates, ups), [X E][F] */
    void *wrouter;              /* experts: the router [X][E]; NULL for a dense FFN */
    float *attn_norm, *ffn_norm, *q_bias, *k_bias, *v_bias, *q_norm, *k_norm, *iq_norm, *ik_norm;
    float *attn_post, *ffn_post;    /* Gemma's post-norms; NULL if none */
    int has_idx;
} dlayer;

/* A cuBLASLt GEMM shape's descriptors and the heuristic's algorithm for it,
 * planned once and reused (a plan needs no allocation, so it can be made
 * before a graph capture and replayed inside it). */
#define N_PLANS 64
#define BLAS_WS_BYTES ((size_t)32 << 20)
typedef struct gemm_plan {
    int rows, cols, T, ldo, accum, f32;   /* the key; rows == 0: empty slot */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t lw, lx, lo;
    cublasLtMatmulAlgo_t algo;
    unsigned long long used;
} gemm_plan;

/* A captured decode step and what it was captured for. */
#define N_GRAPHS 16
typedef struct graph_slot {
    cudaGraphExec_t exec;
    int T, R, n_seqs, mb, want_ids;
    unsigned gen;
    unsigned long long used;
    unsigned char *modes;       /* [n_layers] */
} graph_slot;

struct cuda_backend {
    const engine *e;
    int f32;                    /* storage type float (1) or bf16 (0) */
    size_t es;                  /* bytes per stored element */
    int idx_fp8;                /* MSA index keys in the pages as fp8 e4m3 (else es bytes) */
    int kv_fp8;                 /* K/V rows in the pages as fp8 e4m3 with a float scale each */
    char name[300];
    int dev;                    /* CUDA ordinal: made current on each entry (the calling thread may change) */
    cudaStream_t st;
    cublasLtHandle_t lt;
    dlayer *L;
    void *emb, *out;            /* [V][E]; out == emb when tied */
    float *out_norm, *rope_freq;
    int use_cattn;              /* tuned attention kernels for dense layers */
    int flash_tpt;              /* tokens a tile of cattn_flash (the other dense layers); 0: generic kernel */
    int fast_msa, fast_quest;   /* ... and for sparse ones (MSA; Quest decode) */
    int force_sparse;           /* sparse kernels even where every block is chosen (tests) */
    int flash_bo;               /* listed prefill tokens through cattn_flash_bo (else a tile each) */
    int score_mma;              /* min/max and mean block scores through cattn_score */
    int moe_mma;                /* experts' products on the tensor cores past MOE_SIMPLE_T tokens (2: always) */
    int moe_wg;                 /* ... on moe_wg_kernel (Hopper) from MOE_WG_ROWS pairs an expert, else moe_mma_kernel */
    int moe_plan;               /* bucket the pairs at decode too (else a tile a pair there) */

    /* device pages: kv holds the main group's, wkv the window group's (kvcache.h), page_bytes and
     * wpage_bytes apart; layer l is at kv_slot[l] * layer_bytes into a page of its group (layer_kv) */
    const kv_pool *kv_owner;
    int kv_pages, kv_wpages;
    char *kv, *wkv;
    int *kv_slot;
    uint8_t *kv_win;
    long long page_bytes, wpage_bytes, layer_bytes, off_k, off_v, off_idx, off_summ, off_kvs;
    /* with kv_fp8: one layer's K/V of a prefilling sequence in bf16, its
     * pages in table order (K at 0, V at wide_v, wide_stride bytes a
     * page), the copy the dense prefill kernel reads (cattn_kv_widen)
     * through the identity table ident */
    char *wide;
    int32_t *ident;
    size_t cap_wide, cap_ident;
    long long wide_stride, wide_v;

    /* activations, grown to the largest batch */
    int cap_t, cap_r;
    float *x, *qkv, *gu, *logits;
    void *xb, *q, *iq, *att, *h, *xl;
    /* mixture of experts (moe.cuh): router logits, each token's choices
     * and weights, the pairs bucketed (rows, slot, tiles), the experts'
     * activations h and outputs y */
    float *moe_logit, *moe_wt, *moe_y;
    int32_t *moe_sel, *moe_rows, *moe_slot, *moe_tiles;
    void *moe_h;
    int32_t *ids;
    size_t cap_meta;
    int32_t *hmeta, *dmeta;     /* pinned host / device batch description */
    size_t cap_sel, cap_sc, cap_ws;
    int32_t *sel, *cnt;
    float *scores;
    void *ws;
    void *blas_ws;              /* cuBLASLt workspace (fixed, so GEMMs can be captured) */
    gemm_plan plans[N_PLANS];
    unsigned long long plan_clock;
    int *modes;                 /* [n_layers] attention mode of the current step */
    size_t cap_srows, cap_sout;
    engine_sample *srows;       /* sampling in the step: rows in, picks out */
    engine_sampled *sout;
    int sk_cluster, n_sm;       /* the sampler's CTAs a row (sample.cuh), SMs */
    int pdl;                    /* the step's small kernels and GEMVs overlap their predecessors (pdl.cuh) */

    /* CUDA graphs of decode steps (default; SPARSED_CUDA_GRAPHS=0 turns them off) */
    int use_graphs;
    unsigned gen;               /* bumped whenever a buffer moves: graphs then go stale */
    graph_slot graphs[N_GRAPHS];
    unsigned long long clock;
    int n_captures;
};

#define CU(call)                                                                              \
    do {                                                                                      \
        cudaError_t rc_ = (call);                                                             \
        if (rc_ != cudaSuccess) {                                                             \
            snprintf(err, errlen, "cuda: %s: %s", #call, cudaGetErrorString(rc_));             \
            return -1;                                                                        \
        }                                                                                     \
    } while (0)

#define LAUNCHED() CU(cudaGetLastError())

const char *cuda_backend_device_name(const cuda_backend *cb) { return cb->name; }

/* ---- weights ---------------------------------------------------------------- */

/* Rows [r0, r0 + n) of a matrix, dequantized into tmp and, unless the
 * engine runs in f32, rounded to bf16 into b16: a task per 16 rows on the
 * engine's threads (a single thread took seconds per GB of weights). */
typedef struct up_job {
    const wmat *w;
    int r0, n;
    float *tmp;
    uint16_t *b16;
} up_job;

static void up_rows(void *ctx, int i, int thread)
{
    (void)thread;
    const up_job *j = (const up_job *)ctx;
    int cols = j->w->cols;
    for (int r = 16 * i; r < 16 * i + 16 && r < j->n; r++) {
        float *row = j->tmp + (size_t)r * cols;
        dequant_row(j->w->type, (const char *)j->w->data + (size_t)(j->r0 + r) * j->w->row_bytes, row, cols);
        if (j->b16)
            for (int c = 0; c < cols; c++)
                j->b16[(size_t)r * cols + c] = f32_to_bf16(row[c]);
    }
}

/* Dequantizes w a chunk of rows at a time and copies it to dst (rows
 * consecutive, stored type), so no full fp32 copy ever exists on the host. */
static int upload_matrix(cuda_backend *cb, void *dst, const wmat *w, char *err, size_t errlen)
{
    int cols = w->cols;
    int chunk = (1 << 22) / cols;
    if (chunk < 1)
        chunk = 1;
    if (chunk > w->rows)
        chunk = w->rows;
    float *tmp = (float *)malloc((size_t)chunk * cols * sizeof(float));
    uint16_t *b16 = cb->f32 ? NULL : (uint16_t *)malloc((size_t)chunk * cols * sizeof(uint16_t));
    if (!tmp || (!cb->f32 && !b16)) {
        free(tmp);
        free(b16);
        snprintf(err, errlen, "cuda: out of host memory while uploading weights");
        return -1;
    }
    int rc = 0;
    for (int r0 = 0; r0 < w->rows && !rc; r0 += chunk) {
        int n = w->rows - r0 < chunk ? w->rows - r0 : chunk;
        up_job job = {w, r0, n, tmp, b16};
        tpool_run(cb->e->pool, up_rows, &job, (n + 15) / 16);
        size_t cnt = (size_t)n * cols;
        const void *src = cb->f32 ? (const void *)tmp : (const void *)b16;
        cudaError_t ce = cudaMemcpy((char *)dst + (size_t)r0 * cols * cb->es, src, cnt * cb->es,
                                    cudaMemcpyHostToDevice);
        if (ce != cudaSuccess) {
            snprintf(err, errlen, "cuda: uploading weights: %s", cudaGetErrorString(ce));
            rc = -1;
        }
    }
    free(tmp);
    free(b16);
    return rc;
}

static int dmalloc(void **p, size_t bytes, char *err, size_t errlen)
{
    *p = NULL;
    cudaError_t ce = cudaMalloc(p, bytes ? bytes : 16);
    if (ce != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        snprintf(err, errlen, "cuda: cannot allocate %zu MiB of device memory (%zu MiB free): %s", bytes >> 20,
                 fr >> 20, cudaGetErrorString(ce));
        *p = NULL;
        return -1;
    }
    return 0;
}

/* A float vector (norm weights, biases) on the device; NULL stays NULL. */
static int upload_vec(float **dst, const float *src, int n, char *err, size_t errlen)
{
    *dst = NULL;
    if (!src)
        return 0;
    if (dmalloc((void **)dst, (size_t)n * sizeof(float), err, errlen))
        return -1;
    CU(cudaMemcpy(*dst, src, (size_t)n * sizeof(float), cudaMemcpyHostToDevice));
    return 0;
}

static int upload_model(cuda_backend *cb, char *err, size_t errlen)
{
    const model *m = &cb->e->m;
    size_t es = cb->es;
    int E = m->n_embd, D = m->head_dim, QD = m->n_heads * D, KD = m->n_kv_heads * D, F = m->n_ff;
    int IQ = m->idx_heads * m->idx_dim;
    if (dmalloc(&cb->emb, (size_t)m->n_vocab * E * es, err, errlen) ||
        upload_matrix(cb, cb->emb, &m->tok_embd, err, errlen))
        return -1;
    if (m->output.data == m->tok_embd.data) {
        cb->out = cb->emb;
    } else if (dmalloc(&cb->out, (size_t)m->n_vocab * E * es, err, errlen) ||
               upload_matrix(cb, cb->out, &m->output, err, errlen)) {
        return -1;
    }
    if (upload_vec(&cb->out_norm, m->out_norm, E, err, errlen) ||
        upload_vec(&cb->rope_freq, cb->e->rope_freq, m->rope_dim > 0 ? m->rope_dim : 0, err, errlen))
        return -1;
    cb->L = (dlayer *)calloc((size_t)m->n_layers, sizeof *cb->L);
    if (!cb->L) {
        snprintf(err, errlen, "cuda: out of host memory");
        return -1;
    }
    for (int l = 0; l < m->n_layers; l++) {
        const layer_w *w = &m->layers[l];
        dlayer *d = &cb->L[l];
        d->has_idx = w->has_indexer;
        d->nqkv = QD + 2 * KD + (w->has_indexer ? IQ + m->idx_dim : 0);
        if (dmalloc(&d->wqkv, (size_t)d->nqkv * E * es, err, errlen) ||
            upload_matrix(cb, d->wqkv, &w->q, err, errlen) ||
            upload_matrix(cb, (char *)d->wqkv + (size_t)QD * E * es, &w->k, err, errlen) ||
            upload_matrix(cb, (char *)d->wqkv + (size_t)(QD + KD) * E * es, &w->v, err, errlen))
            return -1;
        if (w->has_indexer &&
            (upload_matrix(cb, (char *)d->wqkv + (size_t)(QD + 2 * KD) * E * es, &w->iq, err, errlen) ||
             upload_matrix(cb, (char *)d->wqkv + (size_t)(QD + 2 * KD + IQ) * E * es, &w->ik, err, errlen)))
            return -1;
        if (dmalloc(&d->wo, (size_t)E * QD * es, err, errlen) || upload_matrix(cb, d->wo, &w->o, err, errlen))
            return -1;
        /* the FFN: gate and up rows in wgu, then down; with experts each
         * stacked over the experts (FX rows of gate), and the router */
        const wmat *gate = &w->gate, *up = &w->up, *down = &w->down;
        size_t FX = (size_t)F;
        if (m->n_expert) {
            FX = (size_t)m->n_ff_exp * m->n_expert;
            gate = &w->gate_exps, up = &w->up_exps, down = &w->down_exps;
            if (dmalloc(&d->wrouter, (size_t)m->n_expert * E * es, err, errlen) ||
                upload_matrix(cb, d->wrouter, &w->gate_inp, err, errlen))
                return -1;
        }
        if (dmalloc(&d->wgu, 2 * FX * E * es, err, errlen) || upload_matrix(cb, d->wgu, gate, err, errlen) ||
            upload_matrix(cb, (char *)d->wgu + FX * E * es, up, err, errlen) ||
            dmalloc(&d->wdown, FX * E * es, err, errlen) || upload_matrix(cb, d->wdown, down, err, errlen))
            return -1;
        if (upload_vec(&d->attn_norm, w->attn_norm, E, err, errlen) ||
            upload_vec(&d->ffn_norm, w->ffn_norm, E, err, errlen) ||
            upload_vec(&d->attn_post, w->attn_post_norm, E, err, errlen) ||
            upload_vec(&d->ffn_post, w->ffn_post_norm, E, err, errlen) ||
            upload_vec(&d->q_bias, w->q_bias, QD, err, errlen) || upload_vec(&d->k_bias, w->k_bias, KD, err, errlen) ||
            upload_vec(&d->v_bias, w->v_bias, KD, err, errlen) || upload_vec(&d->q_norm, w->q_norm, D, err, errlen) ||
            upload_vec(&d->k_norm, w->k_norm, D, err, errlen) ||
            upload_vec(&d->iq_norm, w->iq_norm, m->idx_dim, err, errlen) ||
            upload_vec(&d->ik_norm, w->ik_norm, m->idx_dim, err, errlen))
            return -1;
    }
    return 0;
}

/* ---- GEMMs (cuBLASLt) ------------------------------------------------------- */

static void plan_clear(gemm_plan *p)
{
    if (p->op)
        cublasLtMatmulDescDestroy(p->op);
    if (p->lw)
        cublasLtMatrixLayoutDestroy(p->lw);
    if (p->lx)
        cublasLtMatrixLayoutDestroy(p->lx);
    if (p->lo)
        cublasLtMatrixLayoutDestroy(p->lo);
    memset(p, 0, sizeof *p);
}

/* Descriptors and the heuristic's first algorithm for one shape; host
 * work only (no device allocation, no synchronization). */
static cublasStatus_t plan_make(const cuda_backend *cb, gemm_plan *p)
{
    cudaDataType_t ty = p->f32 ? CUDA_R_32F : CUDA_R_16BF;
    cublasOperation_t tr = CUBLAS_OP_T;
    size_t ws = BLAS_WS_BYTES;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res;
    int n = 0;
    cublasStatus_t s = cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (!s)
        s = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &tr, sizeof tr);
    if (!s)
        s = cublasLtMatrixLayoutCreate(&p->lw, ty, (uint64_t)p->cols, (uint64_t)p->rows, p->cols);
    if (!s)
        s = cublasLtMatrixLayoutCreate(&p->lx, ty, (uint64_t)p->cols, (uint64_t)p->T, p->cols);
    if (!s)
        s = cublasLtMatrixLayoutCreate(&p->lo, CUDA_R_32F, (uint64_t)p->rows, (uint64_t)p->T, p->ldo);
    if (!s)
        s = cublasLtMatmulPreferenceCreate(&pref);
    if (!s)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    if (!s)
        s = cublasLtMatmulAlgoGetHeuristic(cb->lt, p->op, p->lw, p->lx, p->lo, p->lo, pref, 1, &res, &n);
    if (pref)
        cublasLtMatmulPreferenceDestroy(pref);
    if (!s && n < 1)
        s = CUBLAS_STATUS_NOT_SUPPORTED;
    if (!s)
        p->algo = res.algo;
    return s;
}

/* The plan for a shape: the cached one, or a new one in the least recently
 * used slot.  NULL with err set when cuBLASLt has none. */
static const gemm_plan *plan_get(cuda_backend *cb, int rows, int cols, int T, int ldo, int accum, char *err,
                                 size_t errlen)
{
    gemm_plan *lru = &cb->plans[0];
    for (int i = 0; i < N_PLANS; i++) {
        gemm_plan *p = &cb->plans[i];
        if (p->rows == rows && p->cols == cols && p->T == T && p->ldo == ldo && p->accum == accum &&
            p->f32 == cb->f32) {
            p->used = ++cb->plan_clock;
            return p;
        }
        if (p->used < lru->used)
            lru = p;
    }
    plan_clear(lru);
    lru->rows = rows;
    lru->cols = cols;
    lru->T = T;
    lru->ldo = ldo;
    lru->accum = accum;
    lru->f32 = cb->f32;
    cublasStatus_t s = plan_make(cb, lru);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cuda: cuBLASLt has no GEMM plan for %d x %d x %d (%s): %s", rows, T, cols,
                 cb->f32 ? "f32" : "bf16", cublasLtGetStatusString(s));
        plan_clear(lru);
        return NULL;
    }
    lru->used = ++cb->plan_clock;
    return lru;
}

/* CTAs of the sampler's cluster for a row of V logits: the fewest (a power
 * of two, sm_90 on) that leave each at most SK_SLICE logits and that the
 * card can place; SPARSED_SAMPLE_CLUSTER=n sets it (tests, benchmarks). */
#define SK_SLICE 4096

/* The sampler's launch over R rows, clusters of C CTAs a row; at must
 * outlive cfg. */
static cudaLaunchConfig_t sample_cfg(cudaLaunchAttribute *at, int R, int C, cudaStream_t st)
{
    cudaLaunchConfig_t cfg = {};
    at[0].id = cudaLaunchAttributeClusterDimension;
    at[0].val.clusterDim.x = (unsigned)C;
    at[0].val.clusterDim.y = at[0].val.clusterDim.z = 1;
    cfg.gridDim = dim3((unsigned)(R * C));
    cfg.blockDim = dim3(SK_T);
    cfg.stream = st;
    cfg.attrs = at;
    cfg.numAttrs = C > 1;
    return cfg;
}

static int sample_cluster(const cudaDeviceProp *prop, int V)
{
    if (prop->major < 9)
        return 1;
    int C = 1;
    while (C < SK_MAXC && (V + C - 1) / C > SK_SLICE)
        C *= 2;
    const char *e = getenv("SPARSED_SAMPLE_CLUSTER");
    if (e && atoi(e) >= 1)
        for (C = 1; C * 2 <= atoi(e) && C < SK_MAXC;)
            C *= 2;
    for (; C > 1; C /= 2) {
        cudaLaunchAttribute at[1];
        cudaLaunchConfig_t cfg = sample_cfg(at, 1, C, 0);
        int n = 0;
        if (cudaOccupancyMaxActiveClusters(&n, sample_kernel, &cfg) == cudaSuccess && n > 0)
            break;
        cudaGetLastError();
    }
    return C;
}

/* SPARSED_GEMV=0 sends decode's products to cuBLASLt too (comparisons). */
static int getenv_gemv_off(void)
{
    static int off = -1;
    if (off < 0) {
        const char *e = getenv("SPARSED_GEMV");
        off = e && !strcmp(e, "0");
    }
    return off;
}

/* Decode's products, T <= GEMV_T tokens: a warp per output row. */
template <typename S>
static void gemv(const cuda_backend *cb, const void *W, int rows, int cols, const void *x, int T, float *out,
                 int ldo, float beta)
{
    const unsigned grid = (unsigned)((rows + GEMV_WARPS - 1) / GEMV_WARPS), nt = GEMV_WARPS * 32;
    const S *w = (const S *)W, *xs = (const S *)x;
    if (T == 1)
        launch_pdl_on(cb->pdl, gemv_kernel<S, 1>, grid, nt, 0, cb->st, w, rows, cols, xs, out, ldo, beta);
    else
        launch_pdl_on(cb->pdl, gemv_kernel<S, GEMV_T>, grid, nt, 0, cb->st, w, rows, cols, xs, out, ldo, beta);
}

/* out[T][rows] (+)= x[T][cols] . W[rows][cols]^T, fp32 accumulate: up to
 * GEMV_T tokens on gemv_kernel, more on cuBLASLt.  In cuBLASLt's
 * column-major terms: out (rows x T, ld ldo) = W^T (W stored cols x rows) .
 * x (cols x T).  Compute 32F with 32F scale: fp32 weights (f32 mode) are
 * multiplied in exact fp32, never TF32. */
static int gemm(cuda_backend *cb, const void *W, int rows, int cols, const void *x, int T, float *out, int ldo,
                float beta, char *err, size_t errlen)
{
    const float one = 1.0f;
    const size_t es = cb->f32 ? 4 : 2;
    if (T <= GEMV_T && !((size_t)cols * es % 16) && !((uintptr_t)W & 15) && !((uintptr_t)x & 15) &&
        !getenv_gemv_off()) {
        if (cb->f32)
            gemv<float>(cb, W, rows, cols, x, T, out, ldo, beta);
        else
            gemv<bf16>(cb, W, rows, cols, x, T, out, ldo, beta);
        LAUNCHED();
        return 0;
    }
    const gemm_plan *p = plan_get(cb, rows, cols, T, ldo, beta != 0.0f, err, errlen);
    if (!p)
        return -1;
    cublasStatus_t s = cublasLtMatmul(cb->lt, p->op, &one, W, p->lw, x, p->lx, &beta, out, p->lo, out, p->lo,
                                      &p->algo, cb->blas_ws, BLAS_WS_BYTES, cb->st);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cuda: cublasLtMatmul (%d x %d x %d) failed: %s", rows, T, cols,
                 cublasLtGetStatusString(s));
        return -1;
    }
    return 0;
}

/* ---- lifetime --------------------------------------------------------------- */

static long long al256(long long x) { return (x + 255) & ~255LL; }

static void dfree(void *p)
{
    if (p)
        cudaFree(p);
}

static void free_scratch(cuda_backend *cb)
{
    dfree(cb->x); dfree(cb->qkv); dfree(cb->gu); dfree(cb->xb); dfree(cb->q); dfree(cb->iq);
    dfree(cb->att); dfree(cb->h);
    dfree(cb->moe_logit); dfree(cb->moe_wt); dfree(cb->moe_y); dfree(cb->moe_sel); dfree(cb->moe_rows);
    dfree(cb->moe_slot); dfree(cb->moe_tiles); dfree(cb->moe_h);
    cb->x = cb->qkv = cb->gu = NULL;
    cb->xb = cb->q = cb->iq = cb->att = cb->h = NULL;
    cb->moe_logit = cb->moe_wt = cb->moe_y = NULL;
    cb->moe_sel = cb->moe_rows = cb->moe_slot = cb->moe_tiles = NULL;
    cb->moe_h = NULL;
    cb->cap_t = 0;
}

void cuda_backend_free(cuda_backend *cb)
{
    if (!cb)
        return;
    cudaSetDevice(cb->dev);
    if (cb->L) {
        for (int l = 0; l < cb->e->m.n_layers; l++) {
            dlayer *d = &cb->L[l];
            dfree(d->wqkv); dfree(d->wo); dfree(d->wgu); dfree(d->wdown); dfree(d->wrouter);
            dfree(d->attn_norm); dfree(d->ffn_norm); dfree(d->q_bias); dfree(d->k_bias); dfree(d->v_bias);
            dfree(d->q_norm); dfree(d->k_norm); dfree(d->iq_norm); dfree(d->ik_norm);
            dfree(d->attn_post); dfree(d->ffn_post);
        }
        free(cb->L);
    }
    if (cb->out != cb->emb)
        dfree(cb->out);
    dfree(cb->emb); dfree(cb->out_norm); dfree(cb->rope_freq);
    dfree(cb->kv);
    dfree(cb->wkv);
    free(cb->kv_slot);
    free(cb->kv_win);
    dfree(cb->wide);
    dfree(cb->ident);
    free_scratch(cb);
    dfree(cb->xl); dfree(cb->logits); dfree(cb->ids);
    dfree(cb->srows); dfree(cb->sout);
    dfree(cb->dmeta);
    if (cb->hmeta)
        cudaFreeHost(cb->hmeta);
    dfree(cb->sel); dfree(cb->cnt); dfree(cb->scores); dfree(cb->ws); dfree(cb->blas_ws);
    for (int i = 0; i < N_GRAPHS; i++) {
        if (cb->graphs[i].exec)
            cudaGraphExecDestroy(cb->graphs[i].exec);
        free(cb->graphs[i].modes);
    }
    free(cb->modes);
    for (int i = 0; i < N_PLANS; i++)
        plan_clear(&cb->plans[i]);
    if (cb->lt)
        cublasLtDestroy(cb->lt);
    if (cb->st)
        cudaStreamDestroy(cb->st);
    free(cb);
}

cuda_backend *cuda_backend_create(const engine *e, int ordinal, int f32, int idx_fp8, int kv_fp8, char *err,
                                  size_t errlen)
{
    if (kv_fp8 && f32) {
        snprintf(err, errlen, "kv cache dtype: fp8 needs the bf16 engine (f32 keeps K/V in f32)");
        return NULL;
    }
    int n = 0;
    cudaError_t ce = cudaGetDeviceCount(&n);
    if (ce != cudaSuccess || n < 1) {
        snprintf(err, errlen, "device: no CUDA device (%s)",
                 ce != cudaSuccess ? cudaGetErrorString(ce) : "none found");
        return NULL;
    }
    if (ordinal >= n) {
        snprintf(err, errlen, "device: cuda:%d does not exist: %d CUDA device%s visible (cuda:0 to cuda:%d)", ordinal,
                 n, n == 1 ? "" : "s", n - 1);
        return NULL;
    }
    cuda_backend *cb = (cuda_backend *)calloc(1, sizeof *cb);
    if (!cb) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    cb->e = e;
    cb->f32 = f32;
    cb->es = f32 ? 4 : 2;
    cb->idx_fp8 = idx_fp8 && e->m.idx_dim > 0;
    cb->kv_fp8 = kv_fp8;
    cb->wide_v = al256((long long)e->m.n_kv_heads * e->attn.block_size * e->m.head_dim * 2);
    cb->wide_stride = 2 * cb->wide_v;
    const model *m = &e->m;
    cudaDeviceProp prop;
    cb->dev = ordinal;
    if (cudaSetDevice(ordinal) != cudaSuccess || cudaGetDeviceProperties(&prop, ordinal) != cudaSuccess) {
        snprintf(err, errlen, "device: cannot open CUDA device %d", ordinal);
        goto fail;
    }
    snprintf(cb->name, sizeof cb->name, "cuda:%d: %s, %d SMs", ordinal, prop.name, prop.multiProcessorCount);
    cb->n_sm = prop.multiProcessorCount;
    cb->sk_cluster = sample_cluster(&prop, m->n_vocab);
    {
        /* on from sm_90; SPARSED_PDL=0 launches them in plain stream order */
        const char *pv = getenv("SPARSED_PDL");
        cb->pdl = prop.major >= 9 && !(pv && !strcmp(pv, "0"));
    }
    if (m->head_dim > 1024 || m->idx_dim > 1024) {
        snprintf(err, errlen, "device: head dimension %d is not supported on cuda (at most 1024)", m->head_dim);
        goto fail;
    }
    if (cudaStreamCreateWithFlags(&cb->st, cudaStreamNonBlocking) != cudaSuccess ||
        cublasLtCreate(&cb->lt) != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "device: cannot create a CUDA stream or cuBLASLt handle");
        goto fail;
    }
    if (dmalloc(&cb->blas_ws, BLAS_WS_BYTES, err, errlen))
        goto fail;
    cb->modes = (int *)calloc((size_t)m->n_layers, sizeof(int));
    if (!cb->modes) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < N_GRAPHS; i++)
        if (!(cb->graphs[i].modes = (unsigned char *)calloc((size_t)m->n_layers, 1))) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    {
        /* on by default (decode steps are launch-bound); SPARSED_CUDA_GRAPHS=0 for eager launches */
        const char *g = getenv("SPARSED_CUDA_GRAPHS");
        cb->use_graphs = !(g && !strcmp(g, "0"));
    }
    {
        const char *ev = getenv("SPARSED_CUDA_ATTN");
        int hpg = m->n_heads / m->n_kv_heads;
        cb->use_cattn = !f32 && m->head_dim == 128 && e->attn.block_size % 64 == 0 && hpg <= 16 &&
                        m->attn_softcap == 0.0f && !(ev && !strcmp(ev, "generic"));
        int D = m->head_dim;
        cb->flash_tpt = !f32 && (D == 64 || D == 128 || D == 256) && !(ev && !strcmp(ev, "generic"))
                            ? cattn_flash_tile_tokens(m->n_heads, m->n_kv_heads) : 0;
        /* The tuned sparse kernels select exactly as cpu/sparse.c does
         * (ties aside) when their shape holds and no token below
         * sparse_min_context could select fewer blocks than it sees. */
        const attn_config *c = &e->attn;
        const char *sv = getenv("SPARSED_CUDA_SPARSE");
        long long forced = (long long)c->sink_blocks + c->top_k_blocks + c->local_blocks;
        int ok = cb->use_cattn && c->mode == ATTN_SPARSE && c->sparse_min_context <= forced * c->block_size &&
                 c->local_blocks >= 1 && !(sv && !strcmp(sv, "generic"));
        cb->fast_msa = ok && c->indexer == IDX_MSA && c->sink_blocks == 0 && c->block_size == 128 &&
                       m->n_kv_heads == 4 && m->idx_dim == 128 && m->idx_heads == 4 && c->top_k_blocks <= 32 &&
                       c->top_k_blocks + c->local_blocks <= 64;
        cb->fast_quest = ok && c->indexer == IDX_MINMAX && c->group_reduce == GROUP_SUM && forced <= 256;
        cb->force_sparse = sv && !strcmp(sv, "force");
        const char *pv = getenv("SPARSED_CUDA_SPARSE_PREFILL"); /* "token": a tile each (comparisons) */
        cb->flash_bo = cb->flash_tpt && cattn_flash_bo_fits(c->block_size, D) && !(pv && !strcmp(pv, "token"));
        const char *sc = getenv("SPARSED_CUDA_SPARSE_SCORE"); /* "scalar": the CUDA-core kernel (comparisons) */
        cb->score_mma = cb->flash_tpt && c->indexer != IDX_MSA && !(sc && !strcmp(sc, "scalar"));
        const char *mv = getenv("SPARSED_CUDA_MOE");
        /* SPARSED_CUDA_MOE=simple|mma|wgmma: that kernel at every batch; =plan: buckets at decode too (comparisons) */
        cb->moe_mma = !f32 && m->n_embd % 8 == 0 && m->n_ff_exp % 8 == 0 && !(mv && !strcmp(mv, "simple"));
        cb->moe_wg = cb->moe_mma && m->n_expert && !(mv && !strcmp(mv, "mma")) && moe_wg_probe();
        cb->moe_mma += cb->moe_mma && mv && (!strcmp(mv, "mma") || !strcmp(mv, "wgmma"));
        cb->moe_plan = mv && !strcmp(mv, "plan");
    }
    if (upload_model(cb, err, errlen))
        goto fail;
    return cb;
fail:
    cuda_backend_free(cb);
    return NULL;
}

/* ---- per-step resources ----------------------------------------------------- */

/* One layer's share of a device page, each array 256-byte aligned: K and
 * V (one byte an element in fp8), index keys (likewise), summaries, and
 * with kv_fp8 the K/V row scales.  off receives the offsets of V, index
 * keys, summaries and scales (K is at 0). */
static long long layer_page_bytes(const cuda_backend *cb, const kv_layout *l, long long off[4])
{
    long long es = (long long)cb->es;
    long long kvb = al256((long long)l->n_kv_heads * l->block_size * l->head_dim * (cb->kv_fp8 ? 1 : es));
    long long ib = l->idx_dim ? al256((long long)l->block_size * l->idx_dim * (cb->idx_fp8 ? 1 : es)) : 0;
    long long sb = l->summaries ? al256((long long)l->n_kv_heads * 3 * l->head_dim * es) : 0;
    long long cb8 = cb->kv_fp8 ? al256((long long)l->n_kv_heads * 2 * l->block_size * 4) : 0;
    off[0] = kvb;
    off[1] = 2 * kvb;
    off[2] = off[1] + ib;
    off[3] = off[2] + sb;
    return off[3] + cb8;
}

size_t cuda_backend_page_bytes(const cuda_backend *cb, const kv_layout *l)
{
    long long off[4];
    return (size_t)(layer_page_bytes(cb, l, off) * l->n_layers);
}

/* Device pages for this pool: an allocation a group, sized by its page count. */
static int ensure_kv(cuda_backend *cb, const kv_pool *pool, char *err, size_t errlen)
{
    int n_pages = kv_pool_n_pages(pool);
    const kv_pool *wg = kv_pool_window(pool);
    int n_wpages = wg ? kv_pool_n_pages(wg) : 0;
    if (cb->kv && cb->kv_owner == pool && cb->kv_pages == n_pages && cb->kv_wpages == n_wpages)
        return 0;
    dfree(cb->kv);
    dfree(cb->wkv);
    cb->kv = cb->wkv = NULL;
    const kv_layout *l = kv_pool_layout(pool);
    free(cb->kv_slot);
    free(cb->kv_win);
    cb->kv_slot = (int *)malloc((size_t)l->n_layers * sizeof(int));
    cb->kv_win = (uint8_t *)malloc((size_t)l->n_layers);
    if (!cb->kv_slot || !cb->kv_win) {
        snprintf(err, errlen, "out of host memory");
        return -1;
    }
    int n_main = 0, n_win = 0;
    for (int i = 0; i < l->n_layers; i++) {
        cb->kv_win[i] = wg && kv_layer_windowed(l, i);
        cb->kv_slot[i] = cb->kv_win[i] ? n_win++ : n_main++;
    }
    long long off[4];
    cb->layer_bytes = layer_page_bytes(cb, l, off);
    cb->off_k = 0;
    cb->off_v = off[0];
    cb->off_idx = off[1];
    cb->off_summ = off[2];
    cb->off_kvs = off[3];
    cb->page_bytes = cb->layer_bytes * n_main;
    cb->wpage_bytes = cb->layer_bytes * n_win;
    /* (+256: with window layers only, main pages are empty) */
    if (dmalloc((void **)&cb->kv, (size_t)(cb->page_bytes * n_pages + 256), err, errlen) ||
        (n_wpages && dmalloc((void **)&cb->wkv, (size_t)(cb->wpage_bytes * n_wpages), err, errlen)))
        return -1;
    cb->kv_owner = pool;
    cb->kv_pages = n_pages;
    cb->kv_wpages = n_wpages;
    cb->gen++;
    return 0;
}

static int ensure_scratch(cuda_backend *cb, int T, int R, char *err, size_t errlen)
{
    const model *m = &cb->e->m;
    size_t es = cb->es;
    if (T > cb->cap_t || R > cb->cap_r)
        cb->gen++;
    if (T > cb->cap_t) {
        free_scratch(cb);
        int cap = (T + 63) & ~63;
        size_t E = m->n_embd, QD = (size_t)m->n_heads * m->head_dim, F = m->n_ff, NQ = 0;
        size_t IQ = (size_t)m->idx_heads * m->idx_dim;
        for (int l = 0; l < m->n_layers; l++)
            NQ = (size_t)cb->L[l].nqkv > NQ ? (size_t)cb->L[l].nqkv : NQ;
        if (dmalloc((void **)&cb->x, cap * E * 4, err, errlen) || dmalloc((void **)&cb->qkv, cap * NQ * 4, err, errlen) ||
            dmalloc((void **)&cb->gu, cap * (2 * F > E ? 2 * F : E) * 4, err, errlen) || dmalloc(&cb->xb, cap * E * es, err, errlen) ||
            dmalloc(&cb->q, cap * QD * es, err, errlen) || dmalloc(&cb->iq, cap * (IQ ? IQ : 1) * es, err, errlen) ||
            dmalloc(&cb->att, cap * QD * es, err, errlen) || dmalloc(&cb->h, cap * F * es, err, errlen))
            return -1;
        if (m->n_expert) {
            size_t X = m->n_expert, P = (size_t)cap * m->n_expert_used, FX = m->n_ff_exp;
            size_t NT = (size_t)moe_max_tiles((int)P, (int)X, MOE_BM); /* the smallest tiles make the most */
            if (dmalloc((void **)&cb->moe_logit, cap * X * 4, err, errlen) ||
                dmalloc((void **)&cb->moe_wt, P * 4, err, errlen) || dmalloc((void **)&cb->moe_y, P * E * 4, err, errlen) ||
                dmalloc((void **)&cb->moe_sel, P * 4, err, errlen) || dmalloc((void **)&cb->moe_rows, P * 4, err, errlen) ||
                dmalloc((void **)&cb->moe_slot, P * 4, err, errlen) ||
                dmalloc((void **)&cb->moe_tiles, (3 * NT + 1) * 4, err, errlen) || dmalloc(&cb->moe_h, P * FX * es, err, errlen))
                return -1;
        }
        cb->cap_t = cap;
    }
    if (R > cb->cap_r) {
        dfree(cb->xl); dfree(cb->logits); dfree(cb->ids);
        cb->xl = NULL;
        cb->logits = NULL;
        cb->ids = NULL;
        cb->cap_r = 0;
        int cap = (R + 15) & ~15;
        if (dmalloc(&cb->xl, (size_t)cap * m->n_embd * es, err, errlen) ||
            dmalloc((void **)&cb->logits, (size_t)cap * m->n_vocab * 4, err, errlen) ||
            dmalloc((void **)&cb->ids, (size_t)cap * 4, err, errlen))
            return -1;
        cb->cap_r = cap;
    }
    return 0;
}

/* Grows a device buffer to at least `need` bytes (contents dropped). */
static int grow(void **p, size_t *cap, size_t need, char *err, size_t errlen)
{
    if (need <= *cap)
        return 0;
    dfree(*p);
    *p = NULL;
    *cap = 0;
    if (dmalloc(p, need, err, errlen))
        return -1;
    *cap = need;
    return 0;
}

/* ---- the step --------------------------------------------------------------- */

typedef struct meta {
    int T, R, n_fin, n_seqs;
    int mb;                     /* block-table width, a power of two >= every table */
    int max_ctx;
    int n_tiles;                /* cattn_flash's */
    int n_stiles, n_bo, n_bseq, n_ent;  /* sparse layers' (plan_sparse) */
    int32_t *tok, *pos, *tab, *row, *fin, *tables, *lens, *ptab, *tiles;   /* device views */
    int32_t *wtables;           /* the window layers' tables at tables' offsets (the window group's) */
    int32_t *stiles, *bo_tok, *bo_seq, *bo_seqs, *ent_seq;
} meta;

/* GENERIC and SPARSE attend through cattn_flash where it fits (flash_tpt),
 * else the generic kernel; SPARSE selects first (select_blocks). */
enum { MODE_GENERIC = 0, MODE_CATTN = 1, MODE_SPARSE = 2, MODE_FAST_SPARSE = 3 };

/* How layer l attends in this step: sparse only when some token selects
 * fewer blocks than it sees (both conditions grow with the position, so the
 * longest sequence decides), through the tuned kernels of cuda_attn.h when
 * they fit (MSA: decode and prefill; Quest: steps of decode tokens only),
 * else the generic ones; otherwise dense, tuned when the shape allows. */
static int layer_mode(const cuda_backend *cb, int l, int max_ctx, int all_decode)
{
    const attn_config *c = &cb->e->attn;
    int sink, first_local;
    if (engine_layer_sparse(cb->e, l, max_ctx)) {
        if (attn_candidates(c, max_ctx - 1, &sink, &first_local) > c->top_k_blocks || cb->force_sparse)
            return cb->fast_msa || (cb->fast_quest && all_decode) ? MODE_FAST_SPARSE : MODE_SPARSE;
    }
    /* windows and other shapes: cattn_flash, or in f32 the generic kernel */
    return cb->use_cattn && !cb->e->m.layers[l].swa ? MODE_CATTN : MODE_GENERIC;
}

/* cattn_flash's tiles of a batch: runs of at most flash_tpt new tokens of
 * one sequence.  Writes them to tiles (2 ints each) unless NULL. */
static int flash_tiles(const cuda_backend *cb, const engine_batch *b, int32_t *tiles)
{
    int n = 0, tpt = cb->flash_tpt;
    for (int i = 0; tpt && i < b->n_seqs; i++)
        for (int k = 0; k < b->seqs[i].n_new; k += tpt, n++)
            if (tiles) {
                tiles[2 * n] = b->seqs[i].tok_offset + k;
                tiles[2 * n + 1] = b->seqs[i].n_new - k < tpt ? b->seqs[i].n_new - k : tpt;
            }
    return n;
}

/* Whether a token at pos gets a selection list (select_topk_kernel's rule,
 * sel_row): it depends on the position alone. */
static int sel_listed(const cuda_backend *cb, int pos)
{
    const attn_config *c = &cb->e->attn;
    int sink, first_local;
    return pos + 1 >= c->sparse_min_context &&
           (attn_candidates(c, pos, &sink, &first_local) > c->top_k_blocks || cb->force_sparse);
}

/* cattn_flash_bo takes a sequence's listed tokens when there are this many */
#define BO_MIN_TOKENS 16

typedef struct sparse_plan {
    int n_stiles;               /* cattn_flash's tiles */
    int n_bo, n_bseq, n_ent;    /* cattn_flash_bo's tokens, sequences, entries */
} sparse_plan;

/* How a sparse layer of this batch attends through cattn_flash.  Each
 * sequence's unlisted tokens (a prefix: listing grows with the position)
 * go in dense tiles; its listed ones to cattn_flash_bo when there are
 * BO_MIN_TOKENS of them and their lists could name each of its blocks
 * once (else its buckets, three ints a block and group, cost more than
 * the blocks they share save), otherwise a tile each (decode).  Writes
 * the arrays (cuda_attn.h) unless stiles is NULL. */
static sparse_plan plan_sparse(const cuda_backend *cb, const engine_batch *b, int32_t *stiles, int32_t *bo_tok,
                               int32_t *bo_seq, int32_t *bo_seqs, int32_t *ent_seq)
{
    const attn_config *c = &cb->e->attn;
    sparse_plan p = {0, 0, 0, 0};
    int B = c->block_size, tpt = cb->flash_tpt, off = 0;
    long long W = (long long)c->sink_blocks + c->top_k_blocks + c->local_blocks;
    if (!tpt)       /* no cattn_flash: the plan goes unread */
        return p;
    for (int i = 0; i < b->n_seqs; off += b->seqs[i].n_blocks, i++) {
        const engine_seq *s = &b->seqs[i];
        int first = 0, last = s->n_past + s->n_new - 1, n_ent = last / B + 1;
        while (first < s->n_new && !sel_listed(cb, s->n_past + first))
            first++;
        int bo = cb->flash_bo && s->n_new - first >= BO_MIN_TOKENS && (s->n_new - first) * W >= n_ent;
        for (int k = 0; k < s->n_new; p.n_stiles++) {
            int n = k < first ? (first - k < tpt ? first - k : tpt) : 1;
            if (k >= first && bo)
                break;
            if (stiles) {
                stiles[2 * p.n_stiles] = s->tok_offset + k;
                stiles[2 * p.n_stiles + 1] = n;
            }
            k += n;
        }
        if (!bo)
            continue;
        if (stiles) {
            for (int k = first; k < s->n_new; k++) {
                bo_tok[p.n_bo + k - first] = s->tok_offset + k;
                bo_seq[p.n_bo + k - first] = p.n_bseq;
            }
            bo_seqs[3 * p.n_bseq] = p.n_ent;
            bo_seqs[3 * p.n_bseq + 1] = off;
            bo_seqs[3 * p.n_bseq + 2] = last;
            for (int e = 0; e < n_ent; e++)
                ent_seq[p.n_ent + e] = p.n_bseq;
        }
        p.n_bo += s->n_new - first;
        p.n_bseq++;
        p.n_ent += n_ent;
    }
    return p;
}

/* Writes the batch description into pinned memory and sends it over.  The
 * offsets depend only on (T, R, n_seqs, mb), so a captured graph stays
 * valid while those do. */
static int upload_meta(cuda_backend *cb, const engine_batch *b, meta *mt, char *err, size_t errlen)
{
    int T = b->n_tokens, B = cb->e->attn.block_size;
    int R = 0, n_tab = 0, max_blocks = 1;
    for (int i = 0; i < b->n_seqs; i++) {
        const engine_seq *s = &b->seqs[i];
        R += s->logits == 2 ? s->n_new : s->logits == 1;
        n_tab += s->n_blocks;
        max_blocks = s->n_blocks > max_blocks ? s->n_blocks : max_blocks;
    }
    int mb = 1;
    while (mb < max_blocks)
        mb *= 2;
    sparse_plan sp = plan_sparse(cb, b, NULL, NULL, NULL, NULL, NULL);
    /* the window tables take n_seqs * mb entries, so that what follows moves only with (n_seqs, mb) */
    size_t nw = cb->wkv ? (size_t)b->n_seqs * mb : 0;
    size_t need = (size_t)8 * T + R + b->n_seqs + (size_t)b->n_seqs * mb + n_tab + nw + 2 * (size_t)sp.n_bo +
                  3 * (size_t)sp.n_bseq + sp.n_ent;
    if (need > cb->cap_meta) {
        if (cb->hmeta)
            cudaFreeHost(cb->hmeta);
        dfree(cb->dmeta);
        cb->hmeta = NULL;
        cb->dmeta = NULL;
        cb->cap_meta = 0;
        cb->gen++;
        size_t cap = need * 2;
        CU(cudaMallocHost((void **)&cb->hmeta, cap * sizeof(int32_t)));
        if (dmalloc((void **)&cb->dmeta, cap * sizeof(int32_t), err, errlen))
            return -1;
        cb->cap_meta = cap;
    }
    int32_t *h = cb->hmeta;
    int32_t *tok = h, *pos = h + T, *tab = h + 2 * T, *fin = h + 3 * T, *row = fin + T, *lens = row + R;
    int32_t *tiles = lens + b->n_seqs, *stiles = tiles + 2 * T, *ptab = stiles + 2 * T;
    int32_t *wtables = ptab + (size_t)b->n_seqs * mb, *tables = wtables + nw, *bo_tok = tables + n_tab;
    int32_t *bo_seq = bo_tok + sp.n_bo;
    int32_t *bo_seqs = bo_seq + sp.n_bo, *ent_seq = bo_seqs + 3 * sp.n_bseq;
    memcpy(tok, b->tokens, (size_t)T * sizeof(int32_t));
    int r = 0, nf = 0, off = 0;
    mt->max_ctx = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        const engine_seq *s = &b->seqs[i];
        for (int k = 0; k < s->n_new; k++) {
            int t = s->tok_offset + k, p = s->n_past + k;
            pos[t] = p;
            tab[t] = off;
            /* the last token of the batch in each page rebuilds its summary
             * (summary_kernel: when the page is full); n_fin = T in decode,
             * whatever the positions, so decode graphs keep one shape */
            if (p % B == B - 1 || k == s->n_new - 1)
                fin[nf++] = t;
        }
        int first = s->logits == 2 ? 0 : s->n_new - 1;
        if (s->logits)
            for (int k = first; k < s->n_new; k++)
                row[r++] = s->tok_offset + k;
        memcpy(tables + off, s->blocks, (size_t)s->n_blocks * sizeof(int32_t));
        /* trimmed window pages (-1) lie before every window the kernels read: page 0 keeps them in bounds */
        for (int k = 0; nw && k < s->n_blocks; k++)
            wtables[off + k] = s->wblocks && s->wblocks[k] >= 0 ? s->wblocks[k] : 0;
        off += s->n_blocks;
        int ctx = s->n_past + s->n_new;
        lens[i] = ctx;
        mt->max_ctx = ctx > mt->max_ctx ? ctx : mt->max_ctx;
        /* padded copy for the tuned kernels (entries past the end unread) */
        memcpy(ptab + (size_t)i * mb, s->blocks, (size_t)s->n_blocks * sizeof(int32_t));
        for (int k = s->n_blocks; k < mb; k++)
            ptab[(size_t)i * mb + k] = s->blocks[0];
    }
    mt->n_tiles = flash_tiles(cb, b, tiles);
    plan_sparse(cb, b, stiles, bo_tok, bo_seq, bo_seqs, ent_seq);
    mt->n_stiles = sp.n_stiles;
    mt->n_bo = sp.n_bo;
    mt->n_bseq = sp.n_bseq;
    mt->n_ent = sp.n_ent;
    CU(cudaMemcpyAsync(cb->dmeta, h, need * sizeof(int32_t), cudaMemcpyHostToDevice, cb->st));
    int32_t *d = cb->dmeta;
    mt->T = T;
    mt->R = R;
    mt->n_fin = nf;
    mt->n_seqs = b->n_seqs;
    mt->mb = mb;
    mt->tok = d + (tok - h);
    mt->pos = d + (pos - h);
    mt->tab = d + (tab - h);
    mt->fin = d + (fin - h);
    mt->row = d + (row - h);
    mt->lens = d + (lens - h);
    mt->ptab = d + (ptab - h);
    mt->tables = d + (tables - h);
    mt->wtables = nw ? d + (wtables - h) : mt->tables;
    mt->tiles = d + (tiles - h);
    mt->stiles = d + (stiles - h);
    mt->bo_tok = d + (bo_tok - h);
    mt->bo_seq = d + (bo_seq - h);
    mt->bo_seqs = d + (bo_seqs - h);
    mt->ent_seq = d + (ent_seq - h);
    return 0;
}

/* Width of the selection lists: every forced and chosen block fits. */
static int sel_width(const cuda_backend *cb, const meta *mt)
{
    const attn_config *c = &cb->e->attn;
    long long w = (long long)c->sink_blocks + c->top_k_blocks + c->local_blocks;
    return (int)(w < mt->mb ? w : mt->mb);
}

/* The generic selection's counts, after its lists in cb->sel. */
static int32_t *sel_counts(const cuda_backend *cb, const meta *mt)
{
    return cb->sel + (size_t)mt->T * cb->e->m.n_kv_heads * sel_width(cb, mt);
}

/* Layer l's share of page 0 of its group (at kv_slot[l]) and, in pb, the
 * bytes from one of the group's pages to the next: a window layer's are
 * in the window group's pages, read through the step's window tables. */
static char *layer_kv(const cuda_backend *cb, int l, long long *pb)
{
    int w = cb->kv_win && cb->kv_win[l];
    if (pb)
        *pb = w ? cb->wpage_bytes : cb->page_bytes;
    return (w ? cb->wkv : cb->kv) + (long long)(cb->kv_slot ? cb->kv_slot[l] : l) * cb->layer_bytes;
}

static const int32_t *layer_tables(const cuda_backend *cb, const meta *mt, int l)
{
    return cb->kv_win && cb->kv_win[l] ? mt->wtables : mt->tables;
}

/* The tuned kernels' view of layer l (never a window layer: layer_mode). */
static cattn_pool cattn_layer(const cuda_backend *cb, int l)
{
    const model *m = &cb->e->m;
    char *lay = layer_kv(cb, l, NULL);
    cattn_pool p;
    memset(&p, 0, sizeof(p));
    p.k = lay + cb->off_k;
    p.v = lay + cb->off_v;
    p.idx = lay + cb->off_idx;
    p.summ = lay + cb->off_summ;
    p.k_stride = p.v_stride = p.idx_stride = p.summ_stride = cb->page_bytes;
    if (cb->kv_fp8) {
        p.kv_fp8 = 1;
        p.kv_scale = lay + cb->off_kvs;
        p.kv_scale_stride = cb->page_bytes;
    }
    p.n_kv_heads = m->n_kv_heads;
    p.head_dim = m->head_dim;
    p.block_size = cb->e->attn.block_size;
    p.idx_dim = m->idx_dim;
    p.idx_fp8 = cb->idx_fp8;
    return p;
}

/* fp8 K/V pages for the dense prefill kernel, which reads bf16 (the MSA
 * prefill reads the pages as they are): layer l's
 * pages of a sequence of n_tokens tokens (page table `table`) widened
 * into cb->wide in table order, and *p made a view of that copy, to be
 * read through cb->ident.  The copy holds one sequence's layer at a time:
 * each prefill call widens what it reads. */
static int widen_view(const cuda_backend *cb, int l, const int32_t *table, int n_tokens, cattn_pool *p)
{
    *p = cattn_layer(cb, l);
    int rc = cattn_kv_widen(p, table, n_tokens, cb->wide, cb->wide + cb->wide_v, cb->wide_stride, cb->st);
    p->k = cb->wide;
    p->v = cb->wide + cb->wide_v;
    p->k_stride = p->v_stride = cb->wide_stride;
    p->kv_fp8 = 0;
    p->kv_scale = NULL;
    p->kv_scale_stride = 0;
    return rc;
}

static int fast_sparse_reserve(cuda_backend *cb, const engine_batch *b, const meta *mt, char *err, size_t errlen);

/* The widened copy and identity table for the batch's longest prefilling
 * sequence (kv_fp8 with the tuned kernels; the dense one reads it). */
static int wide_reserve(cuda_backend *cb, const engine_batch *b, char *err, size_t errlen)
{
    int B = cb->e->attn.block_size, pages = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        const engine_seq *s = &b->seqs[i];
        int n = (s->n_past + s->n_new + B - 1) / B;
        if (s->n_new > 1 && n > pages)
            pages = n;
    }
    size_t had = cb->cap_ident / sizeof(int32_t);
    if (!pages || (size_t)pages <= had)
        return 0;
    if (grow((void **)&cb->wide, &cb->cap_wide, (size_t)pages * cb->wide_stride, err, errlen) ||
        grow((void **)&cb->ident, &cb->cap_ident, (size_t)pages * sizeof(int32_t), err, errlen))
        return -1;
    int32_t *h = (int32_t *)malloc((size_t)pages * sizeof(int32_t));
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < pages; i++)
        h[i] = i;
    cudaError_t ce = cudaMemcpy(cb->ident, h, (size_t)pages * sizeof(int32_t), cudaMemcpyHostToDevice);
    free(h);
    CU(ce);
    return 0;
}

/* The GEMM plans of this step's shapes (forward's calls), made before any
 * capture so that the heuristic never runs inside one. */
static int plan_gemms(cuda_backend *cb, const meta *mt, char *err, size_t errlen)
{
    const model *m = &cb->e->m;
    int E = m->n_embd, QD = m->n_heads * m->head_dim, F = m->n_ff, T = mt->T;
    for (int l = 0; l < m->n_layers; l++) {
        int nq = cb->L[l].nqkv;
        int ao = !cb->L[l].attn_post, fo = !cb->L[l].ffn_post;    /* accumulate unless post-normed */
        if (!plan_get(cb, nq, E, T, nq, 0, err, errlen) || !plan_get(cb, E, QD, T, E, ao, err, errlen))
            return -1;
        if (m->n_expert ? !plan_get(cb, m->n_expert, E, T, m->n_expert, 0, err, errlen)
                        : !plan_get(cb, 2 * F, E, T, 2 * F, 0, err, errlen) || !plan_get(cb, E, F, T, E, fo, err, errlen))
            return -1;
    }
    return mt->R && !plan_get(cb, m->n_vocab, E, mt->R, m->n_vocab, 0, err, errlen) ? -1 : 0;
}

/* cattn_flash_bo's workspace: passes of tokens whose partial rows take
 * about BO_PASS_BYTES (fewer passes read the chosen blocks fewer times). */
#define BO_PASS_BYTES ((size_t)256 << 20)

static size_t bo_ws(const cuda_backend *cb, const meta *mt, const sparse_plan *sp)
{
    const model *m = &cb->e->m;
    int W = sel_width(cb, mt);
    size_t per = cattn_flash_bo_ws(1, 0, m->n_heads, m->n_kv_heads, m->head_dim, W) -
                 cattn_flash_bo_ws(0, 0, m->n_heads, m->n_kv_heads, m->head_dim, W);
    size_t pass = BO_PASS_BYTES / per;
    pass = pass < BO_MIN_TOKENS ? BO_MIN_TOKENS : pass;
    pass = pass < (size_t)sp->n_bo ? pass : (size_t)sp->n_bo;
    return cattn_flash_bo_ws((int)pass, sp->n_ent, m->n_heads, m->n_kv_heads, m->head_dim, W);
}

/* Every buffer the step needs, allocated before any kernel runs (nothing
 * may be allocated while a graph is being captured). */
static int reserve(cuda_backend *cb, const engine_batch *b, const meta *mt, const int *modes, char *err,
                   size_t errlen)
{
    const model *m = &cb->e->m;
    int any_sparse = 0, any_cattn = 0, any_fast = 0;
    for (int l = 0; l < m->n_layers; l++) {
        any_sparse |= modes[l] == MODE_SPARSE;
        any_cattn |= modes[l] == MODE_CATTN;
        any_fast |= modes[l] == MODE_FAST_SPARSE;
    }
    size_t c0 = cb->cap_sel, c1 = cb->cap_sc, c2 = cb->cap_ws;
    if (any_sparse) {
        size_t rows = (size_t)mt->T * m->n_kv_heads, W = (size_t)sel_width(cb, mt);
        if (grow((void **)&cb->sel, &cb->cap_sel, rows * W * sizeof(int32_t) + rows * sizeof(int32_t), err, errlen) ||
            grow((void **)&cb->scores, &cb->cap_sc, rows * mt->mb * sizeof(float), err, errlen))
            return -1;
    }
    if (any_cattn) {
        cattn_pool p = cattn_layer(cb, 0);
        int n_dec = 0;
        for (int i = 0; i < b->n_seqs; i++)
            n_dec += b->seqs[i].n_new == 1;
        size_t ws = n_dec ? cattn_decode_ws(&p, n_dec, m->n_heads, mt->mb * cb->e->attn.block_size) : 16;
        if (n_dec < b->n_seqs && cattn_prefill_ws() > ws)
            ws = cattn_prefill_ws();   /* a prefill chunk's key split */
        if (grow(&cb->ws, &cb->cap_ws, ws, err, errlen))
            return -1;
    }
    if (any_fast && fast_sparse_reserve(cb, b, mt, err, errlen))
        return -1;
    sparse_plan sp = plan_sparse(cb, b, NULL, NULL, NULL, NULL, NULL);
    for (int l = 0; l < m->n_layers; l++)     /* cattn_flash's key splits; cattn_flash_bo's passes */
        if (cb->flash_tpt && (modes[l] == MODE_GENERIC || modes[l] == MODE_SPARSE)) {
            int tiles = modes[l] == MODE_GENERIC ? flash_tiles(cb, b, NULL) : sp.n_stiles;
            int S = cattn_flash_splits(tiles, m->n_kv_heads, mt->mb * cb->e->attn.block_size);
            if (grow(&cb->ws, &cb->cap_ws, cattn_flash_ws(S, mt->T, m->n_heads, m->head_dim), err, errlen) ||
                (modes[l] == MODE_SPARSE && sp.n_bo && grow(&cb->ws, &cb->cap_ws, bo_ws(cb, mt, &sp), err, errlen)))
                return -1;
        }
    /* with sparse layers too: at short contexts they run dense (layer_mode),
     * and the start-up reservation must cover that before any request */
    if (cb->kv_fp8 && (any_cattn || any_fast) && wide_reserve(cb, b, err, errlen))
        return -1;
    if (plan_gemms(cb, mt, err, errlen))
        return -1;
    if (cb->cap_sel != c0 || cb->cap_sc != c1 || cb->cap_ws != c2)
        cb->gen++;
    return 0;
}

/* Runs of decode sequences (one new token each, consecutive in the batch)
 * go to the tuned kernels as one batch: [*i, returned end). */
static int decode_run_end(const engine_batch *b, int i)
{
    while (i < b->n_seqs && b->seqs[i].n_new == 1)
        i++;
    return i;
}

/* Prefill chunk of the MSA prefill's stage 2: bounds its workspace (about
 * 70 KB a token for M3's 16 blocks and 4 heads a group). */
#define FAST_PREFILL_CHUNK 4096

/* Workspace and selection lists of the tuned sparse kernels for this batch
 * (the largest any one call needs: the calls run one after another). */
static int fast_sparse_reserve(cuda_backend *cb, const engine_batch *b, const meta *mt, char *err, size_t errlen)
{
    const model *m = &cb->e->m;
    const attn_config *c = &cb->e->attn;
    cattn_pool p = cattn_layer(cb, 0);
    int max_len = mt->mb * c->block_size;
    size_t ws = cb->cap_ws, sel = cb->cap_sel;
    for (int i = 0; i < b->n_seqs;) {
        const engine_seq *s = &b->seqs[i];
        size_t need;
        if (s->n_new == 1) {
            int j = decode_run_end(b, i);
            need = cb->fast_msa ? cattn_msa_decode_ws(&p, j - i, m->n_heads, max_len, c->top_k_blocks, c->local_blocks)
                                : cattn_quest_decode_ws(&p, j - i, m->n_heads, max_len, c->top_k_blocks,
                                                        c->local_blocks, c->sink_blocks);
            i = j;
        } else {
            int chunk = s->n_new < FAST_PREFILL_CHUNK ? s->n_new : FAST_PREFILL_CHUNK;
            need = cattn_msa_prefill_ws(&p, s->n_new, s->n_past, m->n_heads, c->top_k_blocks, c->local_blocks,
                                        chunk);
            size_t ns = (size_t)s->n_new * m->n_kv_heads * (c->top_k_blocks + c->local_blocks) * sizeof(int32_t);
            sel = ns > sel ? ns : sel;
            i++;
        }
        ws = need > ws ? need : ws;
    }
    return grow(&cb->ws, &cb->cap_ws, ws, err, errlen) || grow((void **)&cb->sel, &cb->cap_sel, sel, err, errlen);
}

/* The buffers of the largest steps a server will run, allocated before the
 * first request: one prefill chunk of max_tokens tokens at the end of the
 * model's context, and max_seqs decode tokens each that deep (the buffers
 * of a mixed step are the larger of the two).  With the pool, its pages
 * too.  A card too small then fails at start, and cudaMemGetInfo after
 * this call tells what a pool may still take. */
int cuda_backend_reserve(cuda_backend *cb, kv_pool *pool, int max_tokens, int max_rows, int max_seqs, char *err,
                         size_t errlen)
{
    const model *m = &cb->e->m;
    int n_ctx = cb->e->info.n_ctx, B = cb->e->attn.block_size;
    CU(cudaSetDevice(cb->dev));
    if (max_tokens < 1 || max_rows < 1 || max_seqs < 1) {
        snprintf(err, errlen, "cuda: reserve needs positive sizes");
        return -1;
    }
    if (max_tokens > n_ctx)
        max_tokens = n_ctx;
    if (max_seqs > max_tokens)
        max_seqs = max_tokens;
    if ((pool && ensure_kv(cb, pool, err, errlen)) || ensure_scratch(cb, max_tokens, max_rows, err, errlen))
        return -1;
    engine_seq *seqs = (engine_seq *)calloc((size_t)max_seqs, sizeof *seqs);
    if (!seqs) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    meta mt;
    memset(&mt, 0, sizeof mt);
    mt.max_ctx = n_ctx;
    mt.mb = 1;
    while ((long long)mt.mb * B < n_ctx)
        mt.mb *= 2;
    int rc = 0;
    for (int pass = 0; pass < 2 && !rc; pass++) {
        int prefill = pass == 0;
        mt.n_seqs = prefill ? 1 : max_seqs;
        mt.T = prefill ? max_tokens : max_seqs;
        mt.R = mt.n_seqs < max_rows ? mt.n_seqs : max_rows;
        for (int i = 0; i < mt.n_seqs; i++) {
            seqs[i].n_new = prefill ? max_tokens : 1;
            seqs[i].n_past = n_ctx - seqs[i].n_new;
            seqs[i].tok_offset = i;
            seqs[i].n_blocks = (n_ctx + B - 1) / B;
            seqs[i].logits = 1;
        }
        engine_batch b = {mt.T, NULL, mt.n_seqs, seqs};
        for (int l = 0; l < m->n_layers; l++)
            cb->modes[l] = layer_mode(cb, l, n_ctx, !prefill);
        rc = reserve(cb, &b, &mt, cb->modes, err, errlen);
    }
    free(seqs);
    return rc;
}

int cuda_backend_memory(const cuda_backend *cb, size_t *free_bytes, size_t *total_bytes)
{
    if (cudaSetDevice(cb->dev) != cudaSuccess)
        return -1;
    return cudaMemGetInfo(free_bytes, total_bytes) == cudaSuccess ? 0 : -1;
}

/* Sparse attention through the tuned kernels: MSA (decode runs and
 * prefill chunks, selection on the device) or Quest (decode runs). */
static int attention_fast_sparse(cuda_backend *cb, const engine_batch *b, const meta *mt, int l, char *err,
                                 size_t errlen)
{
    const model *m = &cb->e->m;
    const attn_config *c = &cb->e->attn;
    cattn_pool p = cattn_layer(cb, l);
    size_t QD = (size_t)m->n_heads * m->head_dim, IQ = (size_t)m->idx_heads * m->idx_dim;
    float scale = m->attn_scale;
    for (int i = 0; i < b->n_seqs;) {
        const engine_seq *s = &b->seqs[i];
        const char *q = (const char *)cb->q + (size_t)s->tok_offset * QD * 2;
        const char *iq = (const char *)cb->iq + (size_t)s->tok_offset * IQ * 2;
        char *out = (char *)cb->att + (size_t)s->tok_offset * QD * 2;
        int rc;
        if (s->n_new == 1) {
            int j = decode_run_end(b, i);
            cattn_batch cbt;
            cbt.tables = mt->ptab + (size_t)i * mt->mb;
            cbt.lens = mt->lens + i;
            cbt.table_stride = mt->mb;
            cbt.batch = j - i;
            cbt.max_len = mt->mb * c->block_size;
            rc = cb->fast_msa ? cattn_msa_decode(&p, &cbt, m->n_heads, q, iq, out, scale, c->top_k_blocks,
                                                 c->local_blocks, NULL, cb->ws, cb->cap_ws, cb->st)
                              : cattn_quest_decode(&p, &cbt, m->n_heads, q, out, scale, c->top_k_blocks,
                                                   c->local_blocks, c->sink_blocks, NULL, cb->ws, cb->cap_ws, cb->st);
            i = j;
        } else {
            rc = cattn_msa_prefill(&p, mt->ptab + (size_t)i * mt->mb, s->n_new, s->n_past, m->n_heads, q, iq, out,
                                   scale, c->top_k_blocks, c->local_blocks, cb->sel, cb->ws, cb->cap_ws, cb->st);
            i++;
        }
        if (rc) {
            snprintf(err, errlen, "cuda: sparse attention kernel: %s", cattn_strerror(rc));
            return -1;
        }
    }
    return 0;
}

/* Layer l's selection lists in cb->sel (and counts after them), a row a
 * (token, KV group), for the generic or cattn_flash attention. */
template <typename S>
static int select_blocks(cuda_backend *cb, const meta *mt, int l, char *err, size_t errlen)
{
    const engine *e = cb->e;
    const model *m = &e->m;
    const attn_config *c = &e->attn;
    int Hkv = m->n_kv_heads, D = m->head_dim, hpg = m->n_heads / Hkv;
    char *lay = layer_kv(cb, l, NULL); /* sparse layers are never window layers */
    int W = sel_width(cb, mt);
    size_t rows = (size_t)mt->T * Hkv;
    SelArgs s;
    s.q = cb->q;
    s.iq = cb->iq;
    s.Hq = m->n_heads;
    s.Hkv = Hkv;
    s.D = D;
    s.hpg = hpg;
    s.idx_dim = m->idx_dim;
    s.pos = mt->pos;
    s.tab = mt->tab;
    s.tables = mt->tables;
    s.idx = lay + cb->off_idx;
    s.idx_fp8 = cb->idx_fp8;
    s.summ = lay + cb->off_summ;
    s.pb = cb->page_bytes;
    s.B = c->block_size;
    s.sink = c->sink_blocks;
    s.local = c->local_blocks;
    s.topk = c->top_k_blocks;
    s.indexer = c->indexer == IDX_MSA ? SEL_MSA : c->indexer == IDX_MINMAX ? SEL_MINMAX : SEL_MEAN;
    s.group_sum = c->group_reduce == GROUP_SUM;
    s.min_ctx = c->sparse_min_context;
    s.scores = cb->scores;
    s.nbmax = mt->mb;
    s.sel = cb->sel;
    s.cnt = sel_counts(cb, mt);
    s.W = W;
    s.force = cb->force_sparse;
    if (cb->score_mma) {
        cattn_score_args a = {cb->q, s.summ, cb->page_bytes, mt->pos, mt->tab, mt->tables, mt->tiles,
                              mt->n_tiles, m->n_heads, Hkv, D, c->block_size, c->sink_blocks, c->local_blocks,
                              c->indexer == IDX_MEAN, s.group_sum, mt->mb, cb->scores};
        int rc = cattn_score(&a, cb->st);
        if (rc) {
            snprintf(err, errlen, "cuda: block scores: %s", cattn_strerror(rc));
            return -1;
        }
    } else {
        size_t smem = (size_t)(c->indexer == IDX_MSA ? m->idx_dim : 2 * hpg * D) * sizeof(float);
        if (smem > 48 * 1024)
            CU(cudaFuncSetAttribute(select_score_kernel<S>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        select_score_kernel<S><<<dim3((unsigned)rows, (mt->mb + SEL_CHUNK - 1) / SEL_CHUNK), 128, smem, cb->st>>>(s);
        LAUNCHED();
    }
    select_topk_kernel<<<(unsigned)rows, SEL_TOPK_T, 0, cb->st>>>(s);
    LAUNCHED();
    return 0;
}

/* The generic kernel (f32 runs, shapes cattn_flash does not take), dense or
 * over the selection lists. */
template <typename S>
static int attention_generic(cuda_backend *cb, const meta *mt, int l, int sparse, char *err, size_t errlen)
{
    const engine *e = cb->e;
    const model *m = &e->m;
    const attn_config *c = &e->attn;
    int Hkv = m->n_kv_heads, D = m->head_dim, hpg = m->n_heads / Hkv;
    long long pb;
    char *lay = layer_kv(cb, l, &pb);
    int W = sparse ? sel_width(cb, mt) : 0;
    AttnArgs a;
    a.q = cb->q;
    a.out = cb->att;
    a.T = mt->T;
    a.Hq = m->n_heads;
    a.Hkv = Hkv;
    a.D = D;
    a.hpg = hpg;
    a.pos = mt->pos;
    a.tab = mt->tab;
    a.tables = layer_tables(cb, mt, l);
    a.k = lay + cb->off_k;
    a.v = lay + cb->off_v;
    a.kvs = cb->kv_fp8 ? lay + cb->off_kvs : NULL;
    a.pb = pb;
    a.B = c->block_size;
    a.sel = sparse ? cb->sel : NULL;
    a.cnt = sparse ? sel_counts(cb, mt) : NULL;
    a.W = W;
    a.scale = m->attn_scale;
    a.softcap = m->attn_softcap;
    a.window = m->layers[l].swa ? m->swa_window : 0;
    size_t items = (size_t)mt->T * m->n_heads;
    size_t smem = (size_t)4 * (2 * D + 32) * sizeof(float);
    if (smem > 48 * 1024)
        CU(cudaFuncSetAttribute(attn_kernel<S>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    attn_kernel<S><<<(unsigned)((items + 3) / 4), 128, smem, cb->st>>>(a);
    LAUNCHED();
    return 0;
}

/* Attention of the whole batch through cattn_flash (windows, soft caps,
 * head dims 64 and 256), dense or over the selection lists in cb->sel. */
static int attention_flash(cuda_backend *cb, const meta *mt, int l, int sparse, char *err, size_t errlen)
{
    const model *m = &cb->e->m;
    long long pb;
    char *lay = layer_kv(cb, l, &pb);
    cattn_flash_args a;
    a.q = cb->q;
    a.out = cb->att;
    a.k = lay + cb->off_k;
    a.v = lay + cb->off_v;
    a.kvs = cb->kv_fp8 ? lay + cb->off_kvs : NULL;
    a.page_bytes = pb;
    a.pos = mt->pos;
    a.tab = mt->tab;
    a.tables = layer_tables(cb, mt, l);
    a.tiles = mt->tiles;
    a.n_tiles = mt->n_tiles;
    a.T = mt->T;
    a.n_heads = m->n_heads;
    a.n_kv = m->n_kv_heads;
    a.head_dim = m->head_dim;
    a.B = cb->e->attn.block_size;
    a.scale = m->attn_scale;
    a.softcap = m->attn_softcap;
    a.window = m->layers[l].swa ? m->swa_window : 0;
    a.sel = sparse ? cb->sel : NULL;
    a.sel_w = sparse ? sel_width(cb, mt) : 0;
    a.cnt = sparse ? sel_counts(cb, mt) : NULL;
    if (sparse) {
        a.tiles = mt->stiles;
        a.n_tiles = mt->n_stiles;
    }
    int S = cattn_flash_splits(a.n_tiles, m->n_kv_heads, mt->mb * a.B);
    int rc = cattn_flash(&a, S, cb->ws, cb->cap_ws, cb->st);
    if (!rc && sparse && mt->n_bo) {
        cattn_flash_bo_args bo = {mt->bo_tok, mt->bo_seq, mt->bo_seqs, mt->ent_seq, mt->n_bo, mt->n_ent};
        rc = cattn_flash_bo(&a, &bo, cb->ws, cb->cap_ws, cb->st);
    }
    if (rc) {
        snprintf(err, errlen, "cuda: attention kernel: %s", cattn_strerror(rc));
        return -1;
    }
    return 0;
}

/* Dense attention through the tuned kernels of cuda_attn.h: runs of decode
 * sequences (one new token each, consecutive in the batch) in one call,
 * every prefill chunk in its own. */
static int attention_cattn(cuda_backend *cb, const engine_batch *b, const meta *mt, int l, char *err,
                           size_t errlen)
{
    const model *m = &cb->e->m;
    cattn_pool p = cattn_layer(cb, l);
    int QD = m->n_heads * m->head_dim;
    float scale = m->attn_scale;
    for (int i = 0; i < b->n_seqs;) {
        const engine_seq *s = &b->seqs[i];
        size_t off = (size_t)s->tok_offset * QD * 2;
        int rc;
        if (s->n_new == 1) {
            int j = i;
            while (j < b->n_seqs && b->seqs[j].n_new == 1)
                j++;
            cattn_batch cbt;
            cbt.tables = mt->ptab + (size_t)i * mt->mb;
            cbt.lens = mt->lens + i;
            cbt.table_stride = mt->mb;
            cbt.batch = j - i;
            cbt.max_len = mt->mb * cb->e->attn.block_size; /* a bound, fixed while mb is */
            rc = cattn_decode(&p, &cbt, m->n_heads, (const char *)cb->q + off, (char *)cb->att + off, scale, cb->ws,
                              cb->cap_ws, cb->st);
            i = j;
        } else {
            const int32_t *table = mt->ptab + (size_t)i * mt->mb;
            cattn_pool pv = p;
            rc = cb->kv_fp8 ? widen_view(cb, l, table, s->n_past + s->n_new, &pv) : 0;
            if (!rc)
                rc = cattn_prefill(&pv, cb->kv_fp8 ? cb->ident : table, s->n_new, s->n_past, m->n_heads,
                                   (const char *)cb->q + off, (char *)cb->att + off, scale, NULL, 0, 0, cb->ws,
                                   cb->cap_ws, cb->st);
            i++;
        }
        if (rc) {
            snprintf(err, errlen, "cuda: attention kernel: %s", cattn_strerror(rc));
            return -1;
        }
    }
    return 0;
}

/* x += in . W^T, a sublayer's output added to the residual stream; with a
 * post-norm (Gemma) the product goes to gu (free outside the FFN's gate)
 * and x += rmsnorm(it) * post. */
static int residual_add(cuda_backend *cb, const void *W, int cols, const void *in, int T, const float *post,
                        char *err, size_t errlen)
{
    const model *m = &cb->e->m;
    int E = m->n_embd;
    if (!post)
        return gemm(cb, W, E, cols, in, T, cb->x, E, 1.0f, err, errlen);
    if (gemm(cb, W, E, cols, in, T, cb->gu, E, 0.0f, err, errlen))
        return -1;
    launch_pdl_on(cb->pdl, norm_add_kernel, T, 256, 0, cb->st, (const float *)cb->gu, post, E, m->eps, cb->x);
    LAUNCHED();
    return 0;
}

/* A mixture of experts on the T rows of xb into the residual stream
 * (moe.cuh): router, choices, buckets, the two grouped products, the
 * weighted sum. */
template <typename S>
static int moe_ffn(cuda_backend *cb, const dlayer *d, int T, char *err, size_t errlen)
{
    const model *m = &cb->e->m;
    const int E = m->n_embd, X = m->n_expert, K = m->n_expert_used, F = m->n_ff_exp, P = T * K;
    const int mma = cb->moe_mma == 2 || (cb->moe_mma == 1 && T > MOE_SIMPLE_T);
    const int hop = mma && cb->moe_wg && (cb->moe_mma == 2 || P >= MOE_WG_ROWS * X);
    const int bm = hop ? MOE_WM : MOE_BM, NT = moe_max_tiles(P, X, bm), on = cb->pdl;
    cudaStream_t st = cb->st;
    if (gemm(cb, d->wrouter, X, E, cb->xb, T, cb->moe_logit, X, 0.0f, err, errlen))
        return -1;
    const int direct = !mma && T <= MOE_SIMPLE_T && P <= NT && !cb->moe_plan; /* a tile a pair, no buckets */
    int32_t *n_tiles = cb->moe_tiles + 3 * NT;
    launch_pdl_on(on, moe_route_kernel, T, (X + 31) & ~31, 0, st, (const float *)cb->moe_logit, X, K, cb->moe_sel,
                  cb->moe_wt, direct, cb->moe_rows, cb->moe_slot, cb->moe_tiles, n_tiles);
    LAUNCHED();
    if (!direct) {
        launch_pdl_on(on, moe_plan_kernel, 1, 1024, 0, st, (const int32_t *)cb->moe_sel, P, X, bm,
                      cb->moe_rows, cb->moe_slot, cb->moe_tiles, n_tiles);
        LAUNCHED();
    }
    const S *wg = (const S *)d->wgu, *wu = wg + (size_t)X * F * E;
    MoeGemm<S> up = {(const S *)cb->xb, wg, wu, E, F, K, cb->moe_rows, cb->moe_tiles, n_tiles, (S *)cb->moe_h, NULL};
    MoeGemm<S> down = {(const S *)cb->moe_h, (const S *)d->wdown, NULL, F, E, K, cb->moe_rows, cb->moe_tiles, n_tiles,
                       NULL, cb->moe_y};
    if constexpr (sizeof(S) == 2) {
        if (hop) {
            launch_pdl_on(on, m->ffn_gelu ? moe_wg_kernel<true, 1> : moe_wg_kernel<true, 0>,
                          dim3((F + moe_wg_cols<true>() - 1) / moe_wg_cols<true>(), NT), 256, MOE_WSMEM, st, up);
            LAUNCHED();
            launch_pdl_on(on, moe_wg_kernel<false, 0>, dim3((E + moe_wg_cols<false>() - 1) / moe_wg_cols<false>(), NT),
                          256, MOE_WSMEM, st, down);
            LAUNCHED();
        } else if (mma) {
            launch_pdl_on(on, m->ffn_gelu ? moe_mma_kernel<true, 1> : moe_mma_kernel<true, 0>,
                          dim3(NT, (F + MOE_BN - 1) / MOE_BN), 128, 0, st, up);
            LAUNCHED();
            launch_pdl_on(on, moe_mma_kernel<false, 0>, dim3(NT, (E + MOE_BN - 1) / MOE_BN), 128, 0, st, down);
            LAUNCHED();
        }
    }
    if (!mma) {
        if (direct) {
            launch_pdl_on(on, m->ffn_gelu ? moe_simple_kernel<S, true, 1, 1> : moe_simple_kernel<S, true, 0, 1>,
                          dim3((F + 7) / 8, P), 256, 0, st, up);
            LAUNCHED();
            launch_pdl_on(on, moe_simple_kernel<S, false, 0, 1>, dim3((E + 7) / 8, P), 256, 0, st, down);
        } else {
            launch_pdl_on(on, m->ffn_gelu ? moe_simple_kernel<S, true, 1, 4> : moe_simple_kernel<S, true, 0, 4>,
                          dim3((F + 7) / 8, NT), 256, 0, st, up);
            LAUNCHED();
            launch_pdl_on(on, moe_simple_kernel<S, false, 0, 4>, dim3((E + 7) / 8, NT), 256, 0, st, down);
        }
        LAUNCHED();
    }
    launch_pdl_on(on, moe_combine_kernel, dim3(T, (E + 255) / 256), 256, 0, st, (const float *)cb->moe_y,
                  (const int32_t *)cb->moe_slot, (const float *)cb->moe_wt, K, E, d->ffn_post ? cb->gu : cb->x,
                  !d->ffn_post);
    LAUNCHED();
    if (d->ffn_post) {
        launch_pdl_on(on, norm_add_kernel, T, 256, 0, st, (const float *)cb->gu, (const float *)d->ffn_post, E,
                      m->eps, cb->x);
        LAUNCHED();
    }
    return 0;
}

/* Every kernel and GEMM of one step, on cb->st: no allocation, no host
 * synchronization, so that it can be captured into a graph. */
template <typename S>
static int forward(cuda_backend *cb, const engine_batch *b, const meta *mt, const int *modes, int want_ids,
                   char *err, size_t errlen)
{
    const engine *e = cb->e;
    const model *m = &e->m;
    int T = mt->T, E = m->n_embd, D = m->head_dim, QD = m->n_heads * D, F = m->n_ff;
    cudaStream_t st = cb->st;

    embed_kernel<S><<<T, 128, 0, st>>>((const S *)cb->emb, E, mt->tok, m->embd_scale, cb->x);
    LAUNCHED();
    for (int l = 0; l < m->n_layers; l++) {
        const dlayer *d = &cb->L[l];
        long long pb;
        char *lay = layer_kv(cb, l, &pb);
        const int32_t *tables = layer_tables(cb, mt, l);
        launch_pdl_on(cb->pdl, rmsnorm_kernel<S>, T, 256, 0, st, cb->x, (const int32_t *)NULL, d->attn_norm, E,
                      m->eps, (S *)cb->xb);
        LAUNCHED();
        if (gemm(cb, d->wqkv, d->nqkv, E, cb->xb, T, cb->qkv, d->nqkv, 0.0f, err, errlen))
            return -1;

        PostArgs pa;
        pa.qkv = cb->qkv;
        pa.ld = d->nqkv;
        pa.pos = mt->pos;
        pa.tab = mt->tab;
        pa.tables = tables;
        pa.rope_freq = m->layers[l].swa ? cb->rope_freq + m->rope_dim / 2 : cb->rope_freq;
        pa.rope_mscale = m->layers[l].swa ? e->rope_mscale_swa : e->rope_mscale;
        pa.rope_dim = m->rope_dim;
        pa.neox = m->rope_neox;
        pa.Hq = m->n_heads;
        pa.Hkv = m->n_kv_heads;
        pa.D = D;
        pa.idx_heads = m->idx_heads;
        pa.idx_dim = m->idx_dim;
        pa.has_idx = d->has_idx;
        pa.idx_fp8 = cb->idx_fp8;
        pa.kv_fp8 = cb->kv_fp8;
        pa.kvs = lay + cb->off_kvs;
        pa.q_bias = d->q_bias;
        pa.k_bias = d->k_bias;
        pa.v_bias = d->v_bias;
        pa.q_norm = d->q_norm;
        pa.k_norm = d->k_norm;
        pa.iq_norm = d->iq_norm;
        pa.ik_norm = d->ik_norm;
        pa.eps = m->eps;
        pa.q = cb->q;
        pa.iq = cb->iq;
        pa.k = lay + cb->off_k;
        pa.v = lay + cb->off_v;
        pa.idx = lay + cb->off_idx;
        pa.pb = pb;
        pa.B = e->attn.block_size;
        int maxd = D > m->idx_dim ? D : m->idx_dim;
        int nu = m->n_heads + 2 * m->n_kv_heads + (d->has_idx ? m->idx_heads + 1 : 0);
        launch_pdl_on(cb->pdl, qkv_post_kernel<S>, dim3(T, (nu + 7) / 8), 256,
                      ((size_t)8 * maxd + (size_t)(m->rope_dim / 2) * 2) * sizeof(float), st, pa);
        LAUNCHED();
        if (cb->off_summ < cb->off_kvs) {
            launch_pdl_on(cb->pdl, summary_kernel<S>, dim3(mt->n_fin, m->n_kv_heads), 128, 0, st,
                          (const int32_t *)mt->fin, (const int32_t *)mt->pos, (const int32_t *)mt->tab,
                          tables, (const char *)(lay + cb->off_k),
                          (const char *)(cb->kv_fp8 ? lay + cb->off_kvs : NULL), lay + cb->off_summ, pb,
                          e->attn.block_size, D);
            LAUNCHED();
        }

        if (modes[l] == MODE_CATTN) {
            if (attention_cattn(cb, b, mt, l, err, errlen))
                return -1;
        } else if (modes[l] == MODE_FAST_SPARSE) {
            if (attention_fast_sparse(cb, b, mt, l, err, errlen))
                return -1;
        } else {    /* generic selection, then cattn_flash or the generic kernel */
            int sparse = modes[l] == MODE_SPARSE;
            if ((sparse && select_blocks<S>(cb, mt, l, err, errlen)) ||
                (cb->flash_tpt ? attention_flash(cb, mt, l, sparse, err, errlen)
                               : attention_generic<S>(cb, mt, l, sparse, err, errlen)))
                return -1;
        }
        if (residual_add(cb, d->wo, QD, cb->att, T, d->attn_post, err, errlen))
            return -1;
        launch_pdl_on(cb->pdl, rmsnorm_kernel<S>, T, 256, 0, st, cb->x, (const int32_t *)NULL, d->ffn_norm, E,
                      m->eps, (S *)cb->xb);
        LAUNCHED();
        if (m->n_expert) {
            if (moe_ffn<S>(cb, d, T, err, errlen))
                return -1;
            continue;
        }
        if (gemm(cb, d->wgu, 2 * F, E, cb->xb, T, cb->gu, 2 * F, 0.0f, err, errlen))
            return -1;
        const int per_tok = F & 3 ? F : F / 4; /* threads a token needs */
        const dim3 sg((per_tok + 255) / 256, T < 65535 ? T : 65535);
        launch_pdl_on(cb->pdl, m->ffn_gelu ? swiglu_kernel<S, 1> : swiglu_kernel<S, 0>, sg, 256, 0, st,
                      (const float *)cb->gu, F, T, (S *)cb->h);
        LAUNCHED();
        if (residual_add(cb, d->wdown, F, cb->h, T, d->ffn_post, err, errlen))
            return -1;
    }
    if (mt->R) {
        launch_pdl_on(cb->pdl, rmsnorm_kernel<S>, mt->R, 256, 0, st, cb->x, (const int32_t *)mt->row, cb->out_norm,
                      E, m->eps, (S *)cb->xl);
        LAUNCHED();
        if (gemm(cb, cb->out, m->n_vocab, E, cb->xl, mt->R, cb->logits, m->n_vocab, 0.0f, err, errlen))
            return -1;
        if (m->logit_softcap > 0.0f) {
            size_t n = (size_t)mt->R * m->n_vocab;
            launch_pdl_on(cb->pdl, softcap_kernel, (unsigned)((n + 255) / 256 < 1024 ? (n + 255) / 256 : 1024), 256, 0,
                          st, cb->logits, n, m->logit_softcap);
            LAUNCHED();
        }
        if (want_ids) {
            launch_pdl_on(cb->pdl, argmax_kernel, mt->R, ARGMAX_T, 0, st, (const float *)cb->logits, m->n_vocab,
                          cb->ids);
            LAUNCHED();
        }
    }
    return 0;
}

/* ---- decode graphs ---------------------------------------------------------- */

/* A captured step is valid for the same shape, layer modes and buffers. */
static int graph_key_eq(const graph_slot *g, const meta *mt, const int *modes, int n_layers, int want_ids,
                        unsigned gen)
{
    if (!g->exec || g->T != mt->T || g->R != mt->R || g->n_seqs != mt->n_seqs || g->mb != mt->mb ||
        g->want_ids != want_ids || g->gen != gen)
        return 0;
    for (int l = 0; l < n_layers; l++)
        if (g->modes[l] != (unsigned char)modes[l])
            return 0;
    return 1;
}

template <typename S>
static int run_graph(cuda_backend *cb, const engine_batch *b, const meta *mt, const int *modes, int want_ids,
                     char *err, size_t errlen)
{
    int L = cb->e->m.n_layers;
    graph_slot *slot = NULL, *lru = &cb->graphs[0];
    for (int i = 0; i < N_GRAPHS; i++) {
        graph_slot *g = &cb->graphs[i];
        if (graph_key_eq(g, mt, modes, L, want_ids, cb->gen)) {
            slot = g;
            break;
        }
        if (g->used < lru->used)
            lru = g;
    }
    if (!slot) {
        slot = lru;
        if (slot->exec)
            cudaGraphExecDestroy(slot->exec);
        slot->exec = NULL;
        CU(cudaStreamBeginCapture(cb->st, cudaStreamCaptureModeRelaxed));
        int rc = forward<S>(cb, b, mt, modes, want_ids, err, errlen);
        cudaGraph_t g = NULL;
        cudaError_t ce = cudaStreamEndCapture(cb->st, &g);
        if (rc || ce != cudaSuccess) {
            if (g)
                cudaGraphDestroy(g);
            if (!rc)
                snprintf(err, errlen, "cuda: graph capture failed: %s", cudaGetErrorString(ce));
            return -1;
        }
        ce = cudaGraphInstantiate(&slot->exec, g, 0);
        cudaGraphDestroy(g);
        if (ce != cudaSuccess) {
            slot->exec = NULL;
            snprintf(err, errlen, "cuda: graph instantiation failed: %s", cudaGetErrorString(ce));
            return -1;
        }
        slot->T = mt->T;
        slot->R = mt->R;
        slot->n_seqs = mt->n_seqs;
        slot->mb = mt->mb;
        slot->want_ids = want_ids;
        slot->gen = cb->gen;
        for (int l = 0; l < L; l++)
            slot->modes[l] = (unsigned char)modes[l];
        cb->n_captures++;
    }
    slot->used = ++cb->clock;
    CU(cudaGraphLaunch(slot->exec, cb->st));
    return 0;
}

/* Samples each logit row on the device (sample.cuh), a cluster of CTAs a
 * row while the rows' clusters fit on the SMs at once, and brings back
 * the picks, with the logprobs only when some row asked. */
static int sample_rows(cuda_backend *cb, int R, const engine_sample *rows, engine_sampled *out, char *err,
                       size_t errlen)
{
    int V = cb->e->m.n_vocab, lp = 0;
    for (int r = 0; r < R; r++)
        lp |= rows[r].n_logprobs >= 0;
    CU(cudaMemcpyAsync(cb->srows, rows, (size_t)R * sizeof *rows, cudaMemcpyHostToDevice, cb->st));
    int C = cb->sk_cluster;
    while (C > 1 && R * C > cb->n_sm)
        C /= 2;
    cudaLaunchAttribute at[1];
    cudaLaunchConfig_t cfg = sample_cfg(at, R, C, cb->st);
    CU(cudaLaunchKernelEx(&cfg, sample_kernel, (const float *)cb->logits, V, (const engine_sample *)cb->srows,
                          cb->sout));
    if (lp) {
        CU(cudaMemcpyAsync(out, cb->sout, (size_t)R * sizeof *out, cudaMemcpyDeviceToHost, cb->st));
    } else {   /* the ids alone: a strided copy of one int per row */
        CU(cudaMemcpy2DAsync(out, sizeof *out, cb->sout, sizeof *out, sizeof(int32_t), (size_t)R,
                             cudaMemcpyDeviceToHost, cb->st));
    }
    return 0;
}

template <typename S>
static int step(cuda_backend *cb, kv_pool *pool, const engine_batch *b, float *logits, int32_t *ids,
                const engine_sample *srows, engine_sampled *sout, char *err, size_t errlen)
{
    const model *m = &cb->e->m;
    meta mt;
    CU(cudaSetDevice(cb->dev));
    if (ensure_kv(cb, pool, err, errlen) || upload_meta(cb, b, &mt, err, errlen) ||
        ensure_scratch(cb, b->n_tokens, mt.R, err, errlen))
        return -1;
    for (int l = 0; l < m->n_layers; l++)
        cb->modes[l] = layer_mode(cb, l, mt.max_ctx, mt.T == mt.n_seqs);
    if (reserve(cb, b, &mt, cb->modes, err, errlen))
        return -1;
    if (srows && (grow((void **)&cb->srows, &cb->cap_srows, (size_t)(mt.R ? mt.R : 1) * sizeof *srows, err, errlen) ||
                  grow((void **)&cb->sout, &cb->cap_sout, (size_t)(mt.R ? mt.R : 1) * sizeof *sout, err, errlen)))
        return -1;
    int want_ids = ids != NULL;
    /* decode steps (one token per sequence) replay a captured graph */
    int rc = cb->use_graphs && mt.T == mt.n_seqs
                 ? run_graph<S>(cb, b, &mt, cb->modes, want_ids, err, errlen)
                 : forward<S>(cb, b, &mt, cb->modes, want_ids, err, errlen);
    if (rc)
        return -1;
    if (mt.R && ids)
        CU(cudaMemcpyAsync(ids, cb->ids, (size_t)mt.R * sizeof(int32_t), cudaMemcpyDeviceToHost, cb->st));
    if (mt.R && srows && sample_rows(cb, mt.R, srows, sout, err, errlen))
        return -1;
    if (mt.R && logits)
        CU(cudaMemcpyAsync(logits, cb->logits, (size_t)mt.R * m->n_vocab * sizeof(float), cudaMemcpyDeviceToHost,
                           cb->st));
    CU(cudaStreamSynchronize(cb->st));
    CU(cudaGetLastError());
    return mt.R;
}

int cuda_backend_step(cuda_backend *cb, kv_pool *pool, const engine_batch *b, float *logits, int32_t *ids,
                      char *err, size_t errlen)
{
    return cb->f32 ? step<float>(cb, pool, b, logits, ids, NULL, NULL, err, errlen)
                   : step<bf16>(cb, pool, b, logits, ids, NULL, NULL, err, errlen);
}

int cuda_backend_step_sample(cuda_backend *cb, kv_pool *pool, const engine_batch *b, const engine_sample *rows,
                             engine_sampled *out, char *err, size_t errlen)
{
    return cb->f32 ? step<float>(cb, pool, b, NULL, NULL, rows, out, err, errlen)
                   : step<bf16>(cb, pool, b, NULL, NULL, rows, out, err, errlen);
}

int cuda_backend_graph_captures(const cuda_backend *cb) { return cb->n_captures; }
