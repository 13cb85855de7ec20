#include <stdio.h>
#include "server/server.h"
int serve_main(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "serve: not built yet\n"); return 1; }
