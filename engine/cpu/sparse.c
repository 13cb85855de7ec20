/* Sparse block selection (placeholder until the indexers land: every
 * visible block, which is what dense attention reads). */
#include "engine/cpu/cpu.h"

int sparse_select(const sel_args *a, int32_t *out)
{
    int n = a->pos / a->cfg->block_size + 1;
    for (int i = 0; i < n; i++)
        out[i] = i;
    return n;
}

void summary_update(float *summary, const float *k, int slot, int head_dim)
{
    float *mn = summary, *mx = summary + head_dim, *sum = summary + 2 * head_dim;
    for (int i = 0; i < head_dim; i++) {
        if (slot == 0) {
            mn[i] = mx[i] = sum[i] = k[i];
        } else {
            mn[i] = k[i] < mn[i] ? k[i] : mn[i];
            mx[i] = k[i] > mx[i] ? k[i] : mx[i];
            sum[i] += k[i];
        }
    }
}
