/* server configuration: every option as a flag (--max-running N), an
 * environment variable (SPARSED_MAX_RUNNING) and a key of a JSON config file
 * ("max_running"); flag > env > file > default.  Private to server/. */
#ifndef SPARSED_SERVER_CONFIG_H
#define SPARSED_SERVER_CONFIG_H

#include <stdio.h>

typedef struct srv_config {
    char *model;
    char *host;
    int port;
    char *config;
    char *served_model_name;
    char *api_key;
    char *api_key_file;
    char *user;
    /* engine */
    char *device;
    char *index_keys;
    char *kv_cache_dtype;
    int threads;
    char *attention;
    char *indexer;
    char *group_reduce;
    int block_size, top_k_blocks, local_blocks, sink_blocks, dense_layers, sparse_min_context;
    /* KV pool and scheduler */
    int kv_pages;
    long long kv_memory;
    double gpu_memory_utilization;
    int max_running;
    int max_batch_tokens;
    int interactive_context;
    int max_queue;
    int max_tokens;
    int max_model_len;
    long long max_queued_tokens;
    int prefix_cache;
    int window_pages;
    /* HTTP */
    long long body_limit;
    double request_timeout;
    double shutdown_timeout;
    double sse_keepalive;
    int max_connections;
    int max_connections_per_client;
    int connection_timeout;
    int header_timeout;
    long long header_limit;
    int http_threads;
    int access_log;
} srv_config;

/* Parses argv (argv[0] is "serve"), the environment and the config file.
 * Returns 0 to go on, 1 when --help was printed, -1 on an error (printed,
 * naming the option). */
int config_load(srv_config *c, int argc, char **argv);
void config_free(srv_config *c);
void config_help(FILE *f);
/* The source that set an option: 0 default, 1 file, 2 env, 3 flag. */
int config_source(const srv_config *c, const char *name);

#endif
