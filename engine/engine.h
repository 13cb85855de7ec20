/* engine: model loading, tokenizer, chat template, sampler and the forward
 * pass over a ragged batch.  The one public header of engine/.
 *
 * The batch is plain data: per sequence, the tokens to compute, how many
 * tokens it already has in the KV pool, and its block table.  K/V are read
 * and written only through the pool's pages.
 */
#ifndef SPARSED_ENGINE_H
#define SPARSED_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "kvcache/kvcache.h"

/* ---- attention configuration ------------------------------------------ */

enum attn_mode { ATTN_DENSE = 0, ATTN_SPARSE = 1, ATTN_AUTO = 2 };
enum attn_indexer { IDX_MSA = 0, IDX_MINMAX = 1, IDX_MEAN = 2 };
enum attn_group_reduce { GROUP_MAX = 0, GROUP_SUM = 1 };

/* Every field but mode and group_reduce may be -1: "the model's value or
 * the default", resolved by engine_create (engine_attn gives the result). */
typedef struct attn_config {
    int mode;               /* attn_mode; auto = sparse iff the model has an MSA indexer */
    int indexer;            /* attn_indexer; -1 = msa if the model has one, else minmax */
    int block_size;         /* tokens per KV page (and per selection block) */
    int top_k_blocks;       /* blocks chosen by the indexer, besides the forced ones */
    int local_blocks;       /* newest blocks always kept (the query's own included) */
    int sink_blocks;        /* first blocks always kept */
    int dense_layers;       /* leading layers that stay dense */
    int sparse_min_context; /* dense below this context; -1 = (top_k+local+sink)*B; 0 = always sparse */
    int group_reduce;       /* how a GQA group's heads combine block scores */
} attn_config;

/* Defaults (values chosen by bench/quality; see bench/README.md). */
void attn_config_default(attn_config *c);
/* Parses a name ("dense", "msa", ...) into the enum; -1 if unknown. */
int attn_mode_parse(const char *s);
int attn_indexer_parse(const char *s);
int attn_group_reduce_parse(const char *s);
/* Checks ranges; writes a message naming the field. */
int attn_config_check(const attn_config *c, char *err, size_t errlen);
/* A token at pos sees blocks 0 .. pos / block_size: the first min(sink,
 * seen) and the last `local` are forced, and those between, [*sink,
 * *first_local), are its candidates; returns how many.  It chooses among
 * them (scores blocks) only when they outnumber top_k. */
int attn_candidates(const attn_config *c, int pos, int *sink, int *first_local);

/* ---- engine ----------------------------------------------------------- */

typedef struct engine_opts {
    const char *model_path;
    const char *device;     /* "cpu" (default), "cuda" (the first visible GPU) or "cuda:N" */
    int n_threads;          /* 0 = all cores */
    attn_config attn;
    const char *dtype;      /* cuda: "bf16" (default) or "f32" (weights, activations, K/V) */
    const char *index_keys; /* cuda: MSA index keys in the KV pool, "bf16" (default) or "fp8"
                               (e4m3: half the bytes); ignored by a model without an indexer */
    const char *kv_cache_dtype; /* cuda: K/V in the KV pool, "bf16" (default) or "fp8" (e4m3 with a
                                   scale a row: about half the bytes; the bf16 dtype only) */
    int max_model_len;      /* context length served (0: the model's); at most the model's */
    int kv_fp8_reference;   /* cpu: round each K/V row as an fp8 page holds it, stored in f32 (the
                               cuda fp8 pages' reference in tests; no memory saved) */
} engine_opts;

/* Parses a device name: 0 for "cpu" (or NULL), 1 for "cuda" or "cuda:N"
 * (*ordinal = N, else 0), -1 for anything else. */
int engine_parse_device(const char *s, int *ordinal);

typedef struct engine_info {
    const char *arch;       /* "llama", ... */
    const char *name;       /* general.name or the file's base name */
    int n_vocab;
    int n_ctx;              /* context length served: the model's, or engine_opts.max_model_len */
    int n_layers, n_embd, n_heads, n_kv_heads, head_dim;
    int has_indexer;        /* the GGUF carries MSA indexer weights */
    int bos, eos;           /* -1 if none */
    int add_bos;            /* prompts start with BOS */
    const char *chat_template; /* raw tokenizer.chat_template or NULL */
    const char *device;     /* "cpu", or the GPU ("cuda:0: NVIDIA H100 80GB HBM3, 132 SMs") */
    const char *kv_dtype;   /* how the KV pages hold K/V: "f32" (cpu, and cuda in f32), "bf16", "fp8" */
} engine_info;

typedef struct engine engine;

engine *engine_create(const engine_opts *o, char *err, size_t errlen);
void engine_free(engine *e);
const engine_info *engine_get_info(const engine *e);
/* The page layout this model needs (block size from the attention config). */
kv_layout engine_kv_layout(const engine *e);
/* The attention configuration in force (defaults and model values resolved). */
const attn_config *engine_attn(const engine *e);

typedef struct engine_seq {
    int n_past;             /* tokens already in the pool for this sequence */
    int n_new;              /* tokens of this sequence in the batch */
    int tok_offset;         /* where they start in engine_batch.tokens */
    const int32_t *blocks;  /* block table covering n_past + n_new tokens */
    const int32_t *wblocks; /* with the pool's window group (cpu): the window layers' pages, the same
                             * length, -1 where trimmed (kvcache.h); NULL otherwise */
    int n_blocks;
    int logits;             /* 0: none, 1: last new token, 2: every new token */
} engine_seq;

typedef struct engine_batch {
    int n_tokens;
    const int32_t *tokens;
    int n_seqs;
    const engine_seq *seqs;
} engine_batch;

/* Runs the model over the batch, writing K/V of the new tokens into their
 * pages.  Logit rows (n_vocab floats each) are written in sequence order,
 * then token order.  Returns the number of rows, or -1 with err set. */
int engine_step(engine *e, kv_pool *pool, const engine_batch *b, float *logits,
                char *err, size_t errlen);
/* Logit rows a batch produces. */
int engine_batch_rows(const engine_batch *b);
/* As engine_step, but writes only each row's argmax (lowest id on ties) to
 * ids; on a GPU the logits then never leave the device. */
int engine_step_greedy(engine *e, kv_pool *pool, const engine_batch *b, int32_t *ids,
                       char *err, size_t errlen);
/* Sampling inside the step, where the logits are: one entry per logit row
 * (rows with logits == 2 are not allowed).  The pick is sampler_pick's
 * with the row's u; with n_logprobs >= 0 also the chosen token's logprob
 * and the n_logprobs best (as logprobs_top).  On a GPU only these come
 * back, not the logits. */
#define ENGINE_SAMPLE_MAX_K 1024     /* top_k above this: sample on the host */
#define ENGINE_MAX_LOGPROBS 20
typedef struct engine_sample {
    float temperature, top_p, min_p;
    int top_k;
    double u;               /* sampler_draw's number */
    int n_logprobs;         /* -1: none; else 0..ENGINE_MAX_LOGPROBS */
} engine_sample;
typedef struct engine_sampled {
    int32_t id;
    float logprob;
    int32_t top_ids[ENGINE_MAX_LOGPROBS];
    float top_lp[ENGINE_MAX_LOGPROBS];
} engine_sampled;
int engine_step_sample(engine *e, kv_pool *pool, const engine_batch *b, const engine_sample *rows,
                       engine_sampled *out, char *err, size_t errlen);
/* Whether the KV pool needs host storage (0: the device keeps the pages). */
int engine_kv_host_storage(const engine *e);
/* Bytes one KV page takes where this engine keeps it (host f32, or device
 * bf16/f32): what sizes a pool from a memory budget. */
size_t engine_kv_page_bytes(const engine *e);
/* Device engines: allocates now what serving will need, so that a card
 * too small fails at start instead of on a request: the work buffers of
 * the largest steps (max_tokens tokens, max_rows logit rows, max_seqs
 * sequences, each at the model's context) and, with pool, its pages.  The
 * CPU engine allocates as it goes: 0. */
int engine_reserve(engine *e, kv_pool *pool, int max_tokens, int max_rows, int max_seqs, char *err,
                   size_t errlen);
/* Free and total bytes of the engine's device memory: 0, or -1 on the CPU. */
int engine_device_memory(const engine *e, size_t *free_bytes, size_t *total_bytes);

/* ---- tokenizer -------------------------------------------------------- */

/* Tokenizes UTF-8 text.  With parse_special, control tokens written in the
 * text ("<|im_start|>") become their ids.  Returns the token count, which
 * may exceed max (then only max were written), or -1 on invalid input. */
int engine_tokenize(const engine *e, const char *text, size_t len, int add_bos,
                    int parse_special, int32_t *out, int max);
/* Raw bytes of one token (byte-fallback tokens give their byte; control
 * tokens give their text only with show_special).  Returns the length. */
int engine_token_bytes(const engine *e, int32_t tok, int show_special,
                       char *buf, int len);
/* End-of-generation tokens (EOS, <|im_end|>, <|eot_id|>, ...). */
int engine_is_eog(const engine *e, int32_t tok);

/* Streaming detokenizer: holds back an incomplete UTF-8 sequence until the
 * bytes that complete it arrive. */
typedef struct detok {
    char pending[8];
    int n_pending;
    int first;              /* strips the SentencePiece leading space once */
} detok;
void detok_init(detok *d);
/* Appends the text of tok to out (cap bytes); returns bytes written. */
int detok_push(const engine *e, detok *d, int32_t tok, char *out, int cap);
/* Flushes what is held back (invalid bytes become U+FFFD). */
int detok_flush(detok *d, char *out, int cap);

/* ---- chat template ---------------------------------------------------- */

typedef struct chat_msg {
    const char *role;       /* system, user, assistant, developer */
    const char *content;
} chat_msg;

/* Renders messages with the model's template family (ChatML, Llama-2,
 * Llama-3, Mistral, Zephyr, Qwen; plain fallback).  Returns a malloc'd
 * string or NULL with err set. */
char *engine_chat_render(const engine *e, const chat_msg *msgs, int n,
                         int add_generation_prompt, char *err, size_t errlen);

/* ---- sampler ---------------------------------------------------------- */

typedef struct sampler_params {
    float temperature;      /* 0 = greedy */
    float top_p;            /* 1 = off */
    int top_k;              /* 0 = off */
    float min_p;            /* 0 = off */
    float repetition_penalty; /* 1 = off */
    float presence_penalty;   /* 0 = off */
    float frequency_penalty;  /* 0 = off */
    uint64_t seed;
    int n_bias;
    const int32_t *bias_tokens;
    const float *bias_values;
} sampler_params;

void sampler_params_default(sampler_params *p);

typedef struct sampler sampler;
sampler *sampler_create(const sampler_params *p, int n_vocab);
void sampler_free(sampler *s);
/* Picks a token from logits (modified in place), given the tokens of the
 * sequence so far for the penalties: the penalties, then sampler_pick with
 * sampler_draw's number. */
int32_t sampler_sample(sampler *s, float *logits, const int32_t *history, int n_history);
/* The next uniform number in [0, 1) of the sampler's stream, or 0 without
 * consuming it when its parameters pick without one (greedy). */
double sampler_draw(sampler *s);
/* The pick itself, without bias or penalties: temperature, top-k, top-p,
 * min-p, and the draw u.  Greedy (and ties to the lowest id) when the
 * temperature is 0.  Top-k survivors are drawn from in rank order, the
 * others in id order. */
int32_t sampler_pick(const sampler_params *p, const float *logits, int n_vocab, double u);
const sampler_params *sampler_get_params(const sampler *s);
/* No logit bias and no penalties: its pick needs the logits alone. */
int sampler_plain(const sampler *s);

/* Log-softmax of raw logits: the chosen token's logprob, and the n best
 * (ids and logprobs, best first).  n may be 0. */
float logprobs_top(const float *logits, int n_vocab, int32_t chosen, int n,
                   int32_t *top_ids, float *top_lp);

#endif
