/* See common.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/common.h"

#ifndef SPARSED_SOURCE_ROOT
#define SPARSED_SOURCE_ROOT "."
#endif

void fuzz_server_init(server *srv, const char *target)
{
    const char *root = getenv("SPARSED_ROOT");
    char path[4096], err[256];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", root ? root : SPARSED_SOURCE_ROOT);
    engine_opts eo;
    memset(&eo, 0, sizeof eo);
    eo.model_path = path;
    eo.device = "cpu";
    eo.n_threads = 1;
    attn_config_default(&eo.attn);
    srv->eng = engine_create(&eo, err, sizeof err);
    if (!srv->eng) {
        fprintf(stderr, "%s: %s: %s\n", target, path, err);
        abort();
    }
    srv->info = engine_get_info(srv->eng);
    srv->model_name = (char *)"stories260K";
}
