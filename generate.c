#include <stdio.h>
#include "generate.h"
int generate_main(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "generate: not built yet\n"); return 1; }
