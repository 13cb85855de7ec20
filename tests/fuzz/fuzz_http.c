/* libFuzzer target for the HTTP side as a whole: a real daemon (the
 * server/ handler on libmicrohttpd, the scheduler loop on its own thread,
 * models/stories260K.gguf, an API key) listens on loopback, and every
 * input becomes one HTTP request sent over a real socket.
 *
 * Byte 0: method (bits 0-1: GET, POST, HEAD, a fuzzed token), chunked body
 * (bit 2), hang up after the first bytes of the reply (bit 3), send the
 * right API key (bit 4), send the body in two writes (bit 5).  Then three
 * NUL-separated fields: the path, header lines ("Name: value", one per
 * line; framing headers are left out, the request is well formed), the
 * body.  The reply must be a valid status line; JSON replies must parse;
 * and the daemon must survive everything (ASan/UBSan watch its threads). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/internal.h"

#ifndef SPARSED_SOURCE_ROOT
#define SPARSED_SOURCE_ROOT "."
#endif

static server srv;
static int port;

static void *loop_main(void *arg)
{
    sched_run(arg);
    return NULL;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *root = getenv("SPARSED_ROOT");
    static char model[4096];
    snprintf(model, sizeof model, "%s/models/stories260K.gguf", root ? root : SPARSED_SOURCE_ROOT);
    /* the real option table and defaults; small limits keep runs short */
    char *args[] = {"serve", "--model", model, "--port", "0", "--threads", "1",
                    "--http-threads", "2", "--kv-pages", "64", "--max-running", "8",
                    "--body-limit", "65536", "--request-timeout", "5", "--no-access-log",
                    "--connection-timeout", "5", "--max-tokens", "16", NULL};
    if (config_load(&srv.cfg, (int)(sizeof args / sizeof args[0]) - 1, args))
        abort();
    char err[256];
    engine_opts eo;
    memset(&eo, 0, sizeof eo);
    eo.model_path = srv.cfg.model;
    eo.device = "cpu";
    eo.n_threads = 1;
    attn_config_default(&eo.attn);
    srv.eng = engine_create(&eo, err, sizeof err);
    if (!srv.eng) {
        fprintf(stderr, "fuzz_http: %s: %s\n", model, err);
        abort();
    }
    srv.info = engine_get_info(srv.eng);
    srv.model_name = strdup("stories260K");
    static char key[] = "fuzz-key-0123";
    static char *keys[] = {key};
    srv.keys = keys;
    srv.n_keys = 1;
    srv.key_max = strlen(key);
    kv_layout lay = engine_kv_layout(srv.eng);
    srv.pool = kv_pool_create(&lay, srv.cfg.kv_pages, 1, err, sizeof err);
    sched_backend be;
    sched_backend_engine(&be, srv.eng);
    sched_opts so;
    sched_opts_default(&so);
    so.max_running = srv.cfg.max_running;
    so.request_timeout = srv.cfg.request_timeout;
    so.handle_signals = 0;
    so.model_name = srv.model_name;
    srv.sc = srv.pool ? sched_create(&be, srv.pool, &so, err, sizeof err) : NULL;
    if (!srv.sc) {
        fprintf(stderr, "fuzz_http: %s\n", err);
        abort();
    }
    pthread_t th;
    pthread_create(&th, NULL, loop_main, srv.sc);
    pthread_detach(th);
    if (http_start(&srv, err, sizeof err)) {
        fprintf(stderr, "fuzz_http: %s\n", err);
        abort();
    }
    port = http_port(&srv);
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Header lines that change the framing are ours to write. */
static int framing_header(const char *l, size_t n)
{
    static const char *const names[] = {"content-length", "transfer-encoding", "connection",
                                        "expect", "upgrade"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        size_t k = strlen(names[i]);
        if (n >= k && !strncasecmp(l, names[i], k))
            return 1;
    }
    return 0;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static void check_reply(const char *r, size_t n)
{
    if (n == 0)
        return;   /* closed without a reply (a malformed request may be) */
    if (n < 12 || memcmp(r, "HTTP/1.", 7) || r[8] != ' ' || r[9] < '1' || r[9] > '5')
        __builtin_trap();
    const char *eoh = memmem(r, n, "\r\n\r\n", 4);
    if (!eoh)
        return;   /* hung up or timed out early */
    size_t hl = (size_t)(eoh - r);
    const char *ct = memmem(r, hl, "Content-Type: application/json", 30);
    const char *cl = memmem(r, hl, "Content-Length: ", 16);
    if (!ct || !cl)
        return;
    size_t blen = strtoul(cl + 16, NULL, 10);
    const char *body = eoh + 4;
    if ((size_t)(r + n - body) < blen || blen == 0)
        return;   /* HEAD, or cut short */
    cJSON *o = cJSON_ParseWithLength(body, blen);
    if (!cJSON_IsObject(o))
        __builtin_trap();
    cJSON_Delete(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 60000)
        return 0;
    uint8_t fl = data[0];
    const char *f[3] = {"", "", ""};
    size_t fn[3] = {0, 0, 0};
    size_t start = 1;
    int k = 0;
    for (size_t i = 1; i <= size && k < 3; i++) {
        if (i == size || (data[i] == 0 && k < 2)) {
            f[k] = (const char *)data + start;
            fn[k] = i - start;
            k++;
            start = i + 1;
        }
    }
    static const char *const methods[] = {"GET", "POST", "HEAD"};
    sbuf req = {0};
    if ((fl & 3) < 3) {
        sb_puts(&req, methods[fl & 3]);
    } else {
        /* a token of the path's first letters, or something odd */
        size_t m = 0;
        while (m < fn[0] && m < 8 && f[0][m] >= 'A' && f[0][m] <= 'Z')
            m++;
        sb_put(&req, m ? f[0] : "PATCH", m ? m : 5);
    }
    sb_puts(&req, " ");
    if (!fn[0] || f[0][0] != '/')
        sb_puts(&req, "/");
    for (size_t i = 0; i < fn[0]; i++) {
        unsigned char c = (unsigned char)f[0][i];
        if (c <= ' ' || c >= 0x7f)
            sb_printf(&req, "%%%02X", c);
        else
            sb_put(&req, (const char *)&c, 1);
    }
    sb_puts(&req, " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if (fl & 0x10)
        sb_puts(&req, "Authorization: Bearer fuzz-key-0123\r\n");
    for (size_t i = 0; i < fn[1];) {
        const char *l = f[1] + i;
        const char *nl = memchr(l, '\n', fn[1] - i);
        size_t n = nl ? (size_t)(nl - l) : fn[1] - i;
        i += n + 1;
        while (n && l[n - 1] == '\r')
            n--;
        const char *colon = memchr(l, ':', n);
        if (!colon || colon == l || memchr(l, '\r', n) || memchr(l, '\0', n) ||
            memchr(l, ' ', (size_t)(colon - l)) || framing_header(l, n))
            continue;
        sb_put(&req, l, n);
        sb_puts(&req, "\r\n");
    }
    size_t head_len;
    if (fl & 4) {
        sb_puts(&req, "Transfer-Encoding: chunked\r\n\r\n");
        head_len = req.len;
        if (fn[2])
            sb_printf(&req, "%zx\r\n", fn[2]);
        sb_put(&req, f[2], fn[2]);
        sb_puts(&req, fn[2] ? "\r\n0\r\n\r\n" : "0\r\n\r\n");
    } else {
        sb_printf(&req, "Content-Length: %zu\r\n\r\n", fn[2]);
        head_len = req.len;
        sb_put(&req, f[2], fn[2]);
    }

    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* Tens of thousands of connections a minute can run the machine out of
     * ephemeral ports for a moment (a CI run once failed here without the
     * input reproducing it): retry for a few seconds, and only a daemon
     * that stays unreachable is a failure. */
    int fd = -1;
    for (int tries = 0;; tries++) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) {
            fprintf(stderr, "fuzz_http: socket: %s\n", strerror(errno));
            abort();
        }
        if (!connect(fd, (struct sockaddr *)&a, sizeof a))
            break;
        int e = errno;
        close(fd);
        if (tries == 100) {
            fprintf(stderr, "fuzz_http: the daemon is unreachable: connect: %s\n", strerror(e));
            abort();
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    int ok = 0;
    if (fl & 0x20)
        ok = !send_all(fd, req.p, head_len) && !send_all(fd, req.p + head_len, req.len - head_len);
    else
        ok = !send_all(fd, req.p, req.len);
    sb_free(&req);

    char buf[65536];
    size_t got = 0;
    double deadline = now_s() + 6.0;
    while (ok && got < sizeof buf) {
        if (got > 0 && (fl & 8))
            break;   /* hang up mid-reply */
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int ms = (int)((deadline - now_s()) * 1000);
        if (ms <= 0 || poll(&p, 1, ms) <= 0)
            break;
        ssize_t r = recv(fd, buf + got, sizeof buf - got, 0);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    check_reply(buf, got);
    return 0;
}
