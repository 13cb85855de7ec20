/* Attention configuration: defaults, names, validation. */
#include <stdio.h>
#include <string.h>

#include "engine/engine.h"

void attn_config_default(attn_config *c)
{
    /* -1 = resolved when the model is loaded (engine_attn shows the result) */
    c->mode = ATTN_AUTO;
    c->indexer = -1;
    c->block_size = -1;
    c->top_k_blocks = -1;
    c->local_blocks = -1;
    c->sink_blocks = -1;
    c->dense_layers = -1;
    c->sparse_min_context = -1;
    /* sum over the group's heads recalls more attention mass than max
     * (bench/quality, bench/README.md) */
    c->group_reduce = GROUP_SUM;
}

static int lookup(const char *s, const char *const *names, int n)
{
    for (int i = 0; s && i < n; i++)
        if (!strcmp(s, names[i]))
            return i;
    return -1;
}

int attn_mode_parse(const char *s)
{
    static const char *const names[] = {"dense", "sparse", "auto"};
    return lookup(s, names, 3);
}

int attn_indexer_parse(const char *s)
{
    static const char *const names[] = {"msa", "minmax", "mean"};
    return lookup(s, names, 3);
}

int attn_group_reduce_parse(const char *s)
{
    static const char *const names[] = {"max", "sum"};
    return lookup(s, names, 2);
}

int attn_config_check(const attn_config *c, char *err, size_t errlen)
{
    if (c->mode < ATTN_DENSE || c->mode > ATTN_AUTO) {
        snprintf(err, errlen, "attention: must be dense, sparse or auto");
        return -1;
    }
    if (c->indexer < -1 || c->indexer > IDX_MEAN) {
        snprintf(err, errlen, "indexer: must be msa, minmax or mean");
        return -1;
    }
    int b = c->block_size;
    if (b != -1 && (b < 16 || b > 256 || (b & (b - 1)))) {
        snprintf(err, errlen, "block-size: must be a power of two from 16 to 256 (got %d)", b);
        return -1;
    }
    if ((c->top_k_blocks < 1 && c->top_k_blocks != -1) || c->top_k_blocks > 1 << 20) {
        snprintf(err, errlen, "top-k-blocks: must be at least 1 (got %d)", c->top_k_blocks);
        return -1;
    }
    if ((c->local_blocks < 1 && c->local_blocks != -1) || c->local_blocks > 1 << 20) {
        snprintf(err, errlen, "local-blocks: must be at least 1 (got %d)", c->local_blocks);
        return -1;
    }
    if (c->sink_blocks < -1 || c->sink_blocks > 1 << 20) {
        snprintf(err, errlen, "sink-blocks: must be 0 or more (got %d)", c->sink_blocks);
        return -1;
    }
    if (c->dense_layers < -1) {
        snprintf(err, errlen, "dense-layers: must be -1 (model's value) or more (got %d)", c->dense_layers);
        return -1;
    }
    if (c->sparse_min_context < -1) {
        snprintf(err, errlen, "sparse-min-context: must be -1 (auto), 0 (always) or more (got %d)",
                 c->sparse_min_context);
        return -1;
    }
    if (c->group_reduce != GROUP_MAX && c->group_reduce != GROUP_SUM) {
        snprintf(err, errlen, "group-reduce: must be max or sum");
        return -1;
    }
    return 0;
}

int attn_candidates(const attn_config *c, int pos, int *sink, int *first_local)
{
    int nb = pos / c->block_size + 1;
    *sink = c->sink_blocks < nb ? c->sink_blocks : nb;
    *first_local = nb - c->local_blocks > 0 ? nb - c->local_blocks : 0;
    return *first_local > *sink ? *first_local - *sink : 0;
}
