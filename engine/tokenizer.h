/* Tokenizers built from GGUF metadata: "llama" (SentencePiece BPE with
 * scores and byte fallback) and "gpt2" (byte-level BPE with merges and the
 * model's pre-tokenizer split).  Private to engine/. */
#ifndef SPARSED_TOKENIZER_H
#define SPARSED_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "engine/gguf.h"

typedef struct tokenizer tokenizer;

tokenizer *tokenizer_load(const gguf_file *f, char *err, size_t errlen);
void tokenizer_free(tokenizer *t);

int tokenizer_n_vocab(const tokenizer *t);
int tokenizer_bos(const tokenizer *t);      /* -1 if none */
int tokenizer_eos(const tokenizer *t);
int tokenizer_add_bos(const tokenizer *t);  /* model asks for BOS first */
int tokenizer_is_eog(const tokenizer *t, int32_t tok);
int tokenizer_is_control(const tokenizer *t, int32_t tok);
/* Id of a token given its exact text ("<|im_end|>"), or -1. */
int32_t tokenizer_find(const tokenizer *t, const char *text);

/* Same contract as engine_tokenize. */
int tokenizer_encode(const tokenizer *t, const char *text, size_t len, int add_bos,
                     int parse_special, int32_t *out, int max);
/* Same contract as engine_token_bytes. */
int tokenizer_token_bytes(const tokenizer *t, int32_t tok, int show_special,
                          char *buf, int len);
/* 1 for "llama" (SentencePiece: decoded text of the first token loses its
 * leading space), 0 for "gpt2". */
int tokenizer_is_spm(const tokenizer *t);

/* Token text as stored in the vocabulary (byte-level or U+2581 spelling),
 * NUL-terminated; NULL for an id out of range. */
const char *tokenizer_token_text(const tokenizer *t, int32_t tok);

/* Splits UTF-8 text the way the pre-tokenizer named pre ("gpt2", "smollm",
 * "llama3", "qwen2", ...) does before BPE; writes the byte length of each
 * piece (at most max) and returns the piece count, or -1 for an unknown
 * pre-tokenizer or invalid UTF-8.  For tests. */
int tokenizer_pretok_split(const char *pre, const char *text, size_t len,
                           int *lens, int max);

/* Streaming detokenizer over a tokenizer (detok_push without an engine). */
int detok_push_tok(const tokenizer *t, detok *d, int32_t tok, char *out, int cap);

#endif
