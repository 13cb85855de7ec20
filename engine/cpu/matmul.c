/* out = x @ W^T over ggml-typed weights, in tiles of ROWS weight rows.
 * Decode (a token or two) dots Q4_0/Q4_1/Q8_0 rows straight from their
 * blocks.  Otherwise a tile is dequantized once into per-thread fp32
 * scratch and used against every token of the batch, four rows by three
 * tokens at a time; quantized weights are never expanded whole. */
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
    int t = 0;
    float o12[12];
    for (; t + 3 <= j->T; t += 3) {
        int r = r0;
        for (; r + 4 <= r1; r += 4) {
            dot_f32_4x3(rows + (size_t)(r - r0) * K, (size_t)K, j->x + (size_t)t * K, (size_t)K, K, o12);
            for (int a = 0; a < 4; a++)
                for (int b = 0; b < 3; b++)
                    j->out[(size_t)(t + b) * w->rows + r + a] = o12[a * 3 + b];
        }
        for (; r < r1; r++)
            for (int b = 0; b < 3; b++)
                j->out[(size_t)(t + b) * w->rows + r] =
                    dot_f32(rows + (size_t)(r - r0) * K, j->x + (size_t)(t + b) * K, K);
    }
    for (; t < j->T; t++) {
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
