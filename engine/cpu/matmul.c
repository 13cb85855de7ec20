/* out = x @ W^T over ggml-typed weights.  Work is split into tiles of
 * ROWS weight rows; a tile is dequantized once into a thread-local fp32
 * buffer and then used against every token of the batch, so quantized
 * weights are never expanded whole and prefill reuses each tile T times. */
#include <stdlib.h>

#include "engine/cpu/cpu.h"
#include "engine/gguf.h"
#include "engine/quant.h"

#define ROWS 16
#define FUSED_MAX_T 2

typedef struct {
    float *out;
    const wmat *w;
    const float *x;
    int T;
} mm_job;


static void mm_tile(void *ctx, int tile, int thread)
{
    (void)thread;
    mm_job *j = ctx;
    const wmat *w = j->w;
    int r0 = tile * ROWS;
    int r1 = r0 + ROWS < w->rows ? r0 + ROWS : w->rows;
    int K = w->cols;
    const float *rows;
    if (j->T <= FUSED_MAX_T && dot_row_fused(w->type)) {
        /* decode: few tokens, so expanding the tile would cost more than it saves */
        for (int t = 0; t < j->T; t++) {
            const float *xt = j->x + (size_t)t * K;
            float *ot = j->out + (size_t)t * w->rows;
            for (int r = r0; r < r1; r++)
                ot[r] = dot_row(w->type, (const char *)w->data + (size_t)r * w->row_bytes, xt, K);
        }
        return;
    }
    if (w->type == GGML_F32) {
        rows = (const float *)((const char *)w->data + (size_t)r0 * w->row_bytes);
    } else {
        float *buf = cpu_scratch(SCRATCH_MATMUL, sizeof(float) * ROWS * (size_t)K);
        for (int r = r0; r < r1; r++)
            dequant_row(w->type, (const char *)w->data + (size_t)r * w->row_bytes,
                        buf + (size_t)(r - r0) * K, K);
        rows = buf;
    }
    for (int t = 0; t < j->T; t++) {
        const float *xt = j->x + (size_t)t * K;
        float *ot = j->out + (size_t)t * w->rows;
        for (int r = r0; r < r1; r++)
            ot[r] = dot_f32(rows + (size_t)(r - r0) * K, xt, K);
    }
}

void matmul(tpool *p, float *out, const wmat *w, const float *x, int T)
{
    mm_job j = {out, w, x, T};
    int tiles = (w->rows + ROWS - 1) / ROWS;
    /* below ~64K multiply-adds a thread hand-off costs more than it saves */
    if ((size_t)w->rows * w->cols * T < 65536) {
        for (int i = 0; i < tiles; i++)
            mm_tile(&j, i, 0);
        return;
    }
    tpool_run(p, mm_tile, &j, tiles);
}
