/* Private to engine/: the engine object and accessors shared by the
 * engine's own files. */
#ifndef SPARSED_ENGINE_INTERNAL_H
#define SPARSED_ENGINE_INTERNAL_H

#include "engine/cpu/cpu.h"
#include "engine/engine.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/tokenizer.h"

/* Per-step activations, grown to the largest batch seen. */
typedef struct scratch {
    int cap;                /* tokens */
    float *x, *xb, *q, *k, *v, *att, *ff1, *ff2;
    float *iq, *ik;         /* MSA index queries / keys */
    int32_t *tok_seq, *tok_pos;
    /* mixture of experts: router logits [T][n_expert], each token's
     * chosen experts and weights [T][n_expert_used], an expert's tokens,
     * their rows in and out [T][E], the weighted sum [T][E] */
    float *moe_logit, *moe_wt, *moe_in, *moe_out, *moe_sum;
    int32_t *moe_sel, *moe_tok;
    int logit_cap;          /* rows */
    float *xl;              /* final-normed rows that want logits */
    int lg_cap;             /* rows */
    float *lg;              /* logits of the host-side picks (greedy, sample) */
} scratch;

struct engine {
    gguf_file *gf;
    tokenizer *tok;
    model m;
    attn_config attn;       /* resolved: no -1 left but dense_layers as given */
    engine_info info;
    tpool *pool;
    scratch s;
    float *rope_freq;       /* [rope_dim/2] angle per position of each pair */
    float rope_mscale;      /* scales cos and sin (YaRN); 1 for most models */
    float *rope_freq_swa;   /* the same for sliding-window layers (rope_freq + rope_dim/2) */
    float rope_mscale_swa;
    struct cuda_backend *cuda; /* set when the engine runs on a GPU */
    int kv_fp8_ref;         /* cpu: K/V rows rounded as fp8 pages hold them (engine_opts) */
    /* Benchmarks' window on CPU attention (bench/quality): called per layer
     * once the batch's K/V are in the pages, with the post-RoPE queries
     * [T][Hq*D] and MSA index queries (or NULL).  NULL in normal use. */
    void (*attn_probe)(void *ctx, kv_pool *pool, const engine_batch *b, int layer,
                       const float *q, const float *iq);
    void *attn_probe_ctx;
};

const tokenizer *engine_tok(const engine *e);
const gguf_file *engine_gguf(const engine *e);

/* chat.c: engine_chat_render over a template text (NULL: plain) and the
 * BOS/EOS texts; the family it recognises ("chatml", "llama3", ...). */
char *chat_render_template(const char *tmpl, const char *bos, const char *eos,
                           const chat_msg *msgs, int n, int add_generation_prompt,
                           char *err, size_t errlen);
const char *chat_template_family(const char *tmpl);

/* Whether layer l of a sequence with n_ctx visible tokens uses sparse
 * attention under the resolved config. */
int engine_layer_sparse(const engine *e, int l, int n_ctx);

#endif
