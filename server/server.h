/* server: the HTTP front end (libmicrohttpd + cJSON).  The one public
 * header of server/. */
#ifndef SPARSED_SERVER_H
#define SPARSED_SERVER_H

/* `sparsed serve ...`: parses options, loads the model, runs until drained.
 * argv[0] is "serve".  Returns the process exit code. */
int serve_main(int argc, char **argv);

#endif
