/* sparsed: entry point.  Subcommands: serve (the daemon) and generate
 * (one prompt through the engine, for checks and scripts). */
#include <stdio.h>
#include <string.h>

#include "server/server.h"
#include "generate.h"

static void usage(FILE *f)
{
    fprintf(f,
        "sparsed %s: OpenAI-compatible LLM server with block-sparse attention\n"
        "\n"
        "usage: sparsed serve [options]      run the HTTP daemon (sparsed serve --help)\n"
        "       sparsed generate [options]   generate from one prompt (sparsed generate --help)\n"
        "       sparsed --version | --help\n", SPARSED_VERSION);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        /* everything in one place: the subcommands, then every serve option */
        usage(stdout);
        putchar('\n');
        fflush(stdout);
        char *help[] = {"serve", "--help", NULL};
        return serve_main(2, help);
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
        printf("sparsed %s\n", SPARSED_VERSION);
        return 0;
    }
    if (!strcmp(cmd, "serve"))
        return serve_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "generate"))
        return generate_main(argc - 1, argv + 1);
    fprintf(stderr, "sparsed: unknown command '%s' (try sparsed --help)\n", cmd);
    return 2;
}
