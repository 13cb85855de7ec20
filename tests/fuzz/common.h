/* Set-up shared by the fuzz targets that run server/api.c over a real
 * engine (fuzz_request, fuzz_sse).  Not a target itself: run.sh takes
 * every tests/fuzz/fuzz_*.c for one, so this file is named otherwise. */
#ifndef SPARSED_FUZZ_COMMON_H
#define SPARSED_FUZZ_COMMON_H

#include "server/internal.h"

/* Loads models/stories260K.gguf (from $SPARSED_ROOT, else the source tree)
 * on the CPU with one thread and the default attention into srv->eng, and
 * sets srv->info and srv->model_name ("stories260K").  On failure prints
 * "TARGET: PATH: why" and aborts. */
void fuzz_server_init(server *srv, const char *target);

#endif
