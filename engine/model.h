/* Model hyperparameters and weights, loaded from a GGUF file.  Weights stay
 * in the mapping in their GGUF types.  Private to engine/. */
#ifndef SPARSED_MODEL_H
#define SPARSED_MODEL_H

#include "engine/cpu/cpu.h"
#include "engine/gguf.h"

typedef struct layer_w {
    const float *attn_norm, *ffn_norm;
    wmat q, k, v, o;
    const float *q_bias, *k_bias, *v_bias;   /* Qwen2-style; NULL if absent */
    const float *q_norm, *k_norm;            /* per-head QK RMSNorm; NULL if absent */
    /* Gemma 2/3: RMSNorm of the attention and FFN outputs before their
     * residual adds; NULL if absent */
    const float *attn_post_norm, *ffn_post_norm;
    int swa;                /* attends only the last model.swa_window tokens */
    wmat gate, up, down;
    /* mixture of experts (model.n_expert > 0): the router's logits over
     * the experts, and each expert's gate, up and down matrices stacked
     * (expert e's rows start at e times one expert's; wmat_rows) */
    wmat gate_inp, gate_exps, up_exps, down_exps;
    /* MSA indexer; has_indexer 0 for dense layers */
    int has_indexer;
    wmat iq, ik;
    const float *iq_norm, *ik_norm;
} layer_w;

enum { ROPE_SCALING_NONE, ROPE_SCALING_LINEAR, ROPE_SCALING_YARN };

typedef struct model {
    char arch[32];
    int n_vocab, n_embd, n_layers, n_heads, n_kv_heads, head_dim, n_ff, n_ctx;
    int rope_dim;           /* rotated dims per head (partial rotary) */
    int rope_neox;          /* 1: pairs (i, i+rope_dim/2); 0: adjacent pairs */
    float rope_base;
    /* RoPE scaling for contexts past training (GGUF rope.scaling.*; Llama
     * 3's per-pair divisors in rope_freqs.weight, Phi-3's long and short
     * ones): model_rope_table turns them into angles, so the forward
     * passes only see the table. */
    int rope_scaling;               /* ROPE_SCALING_* */
    float rope_factor;              /* context extension factor; 1: none */
    float rope_attn_factor;         /* cos and sin scale (rope.scaling.attn_factor) */
    int rope_orig_ctx;              /* YaRN: the context trained before extension */
    float yarn_beta_fast, yarn_beta_slow;
    const float *rope_freq_factors; /* [rope_dim/2] or NULL */
    const float *rope_long_factors, *rope_short_factors;    /* Phi-3's LongRoPE */
    float eps;
    /* Gemma: embeddings scaled by sqrt(n_embd), GELU (tanh) gating, scores
     * scaled by attn_scale (1/sqrt(head_dim) elsewhere) and capped as
     * cap * tanh(x / cap) when a cap is set (0: none) */
    float embd_scale, attn_scale, attn_softcap, logit_softcap;
    int ffn_gelu;
    /* sliding-window layers (layer_w.swa): a window of swa_window tokens,
     * their own RoPE base, scaled as the global layers or not at all */
    int swa_window;
    float rope_base_swa;
    int rope_swa_scaled;
    /* mixture of experts (0: a dense FFN): each token's n_expert_used
     * best experts by router logit, weighed by the softmax of those logits
     * (Mixtral's and Qwen3-MoE's routing); n_ff_exp an expert's width */
    int n_expert, n_expert_used, n_ff_exp;
    /* MSA indexer (idx_dim 0 when the model has none) */
    int idx_heads, idx_dim, idx_top_k, idx_block, idx_local, idx_dense_layers;

    wmat tok_embd, output;
    const float *out_norm;
    layer_w *layers;
    float **owned;          /* dequantized norm vectors we allocated */
    int n_owned;
} model;

int model_load(model *m, const gguf_file *f, char *err, size_t errlen);
void model_free(model *m);
/* Fills freq[rope_dim/2] with each rotated pair's angle per position, for
 * a context of n_ctx tokens served, and returns the factor that scales
 * cos and sin (YaRN's attention factor times rope.scaling.attn_factor; 1
 * for most models), as llama.cpp reads the same keys.  swa: the table of
 * the sliding-window layers. */
float model_rope_table(const model *m, int n_ctx, int swa, float *freq);
/* Row `tok` of the embedding, as floats. */
void model_embed(const model *m, int32_t tok, float *out);

#endif
