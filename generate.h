#ifndef SPARSED_GENERATE_H
#define SPARSED_GENERATE_H
/* `sparsed generate ...`; argv[0] is "generate".  Returns the exit code. */
int generate_main(int argc, char **argv);
#endif
