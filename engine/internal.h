/* Private to engine/: accessors shared by the engine's own files. */
#ifndef SPARSED_ENGINE_INTERNAL_H
#define SPARSED_ENGINE_INTERNAL_H

#include "engine/engine.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"

const tokenizer *engine_tok(const engine *e);
const gguf_file *engine_gguf(const engine *e);

#endif
