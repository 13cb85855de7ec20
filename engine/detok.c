/* Streaming detokenizer: token bytes in, whole UTF-8 characters out.  A
 * character split over tokens (byte-fallback tokens, byte-level pieces) is
 * held back until it completes; bytes that can never complete come out as
 * U+FFFD, one per maximal invalid subpart as the Unicode standard suggests
 * (and as Python's errors="replace" does). */
#include <stdlib.h>
#include <string.h>

#include "engine/internal.h"

static const char repl[3] = {'\xef', '\xbf', '\xbd'};

void detok_init(detok *d)
{
    memset(d, 0, sizeof(*d));
    d->first = 1;
}

/* How many bytes the sequence starting with lead byte c has, and the range
 * its second byte must be in; 0 for a byte that cannot start one. */
static int seq_len(uint8_t c, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) {
        if (c == 0xE0) *lo = 0xA0;
        if (c == 0xED) *hi = 0x9F;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (c == 0xF0) *lo = 0x90;
        if (c == 0xF4) *hi = 0x8F;
        return 4;
    }
    return 0;
}

/* Copies k bytes if all fit; a character is never split. */
static int emit(char *out, int cap, int *o, const char *s, int k)
{
    if (*o + k > cap) return 0;
    memcpy(out + *o, s, (size_t)k);
    *o += k;
    return 1;
}

/* Emits the complete characters of s[0..n); keeps an unfinished tail in d. */
static int drain(detok *d, const uint8_t *s, int n, char *out, int cap)
{
    int o = 0, i = 0;
    while (i < n) {
        uint8_t lo, hi;
        int len = seq_len(s[i], &lo, &hi);
        if (len == 0) {
            emit(out, cap, &o, repl, 3);
            i++;
            continue;
        }
        int k = 1;
        while (k < len && i + k < n) {
            uint8_t b = s[i + k];
            if (k == 1 ? (b < lo || b > hi) : (b & 0xC0) != 0x80) break;
            k++;
        }
        if (k == len) {
            emit(out, cap, &o, (const char *)s + i, len);
            i += len;
        } else if (i + k == n) {
            /* a valid start that may still finish: keep it */
            memcpy(d->pending, s + i, (size_t)k);
            d->n_pending = k;
            return o;
        } else {
            emit(out, cap, &o, repl, 3);
            i += k;
        }
    }
    d->n_pending = 0;
    return o;
}

int detok_push_tok(const tokenizer *t, detok *d, int32_t tok, char *out, int cap)
{
    char small[256];
    if (!t || cap < 0 || (!out && cap)) return 0;
    int n = tokenizer_token_bytes(t, tok, 0, small, (int)sizeof small);
    if (n <= 0) return 0;
    const char *piece = small;
    char *big = NULL;
    if (n > (int)sizeof small) {
        big = malloc((size_t)n);
        if (!big) return 0;
        tokenizer_token_bytes(t, tok, 0, big, n);
        piece = big;
    }
    if (d->first) {
        /* SentencePiece: the space the tokenizer put before the text */
        if (tokenizer_is_spm(t) && piece[0] == ' ') {
            piece++;
            n--;
        }
        d->first = 0;
    }
    int total = d->n_pending + n;
    uint8_t stack[264];
    uint8_t *buf = total <= (int)sizeof stack ? stack : malloc((size_t)total);
    int o = 0;
    if (buf) {
        memcpy(buf, d->pending, (size_t)d->n_pending);
        memcpy(buf + d->n_pending, piece, (size_t)n);
        o = drain(d, buf, total, out, cap);
        if (buf != stack) free(buf);
    }
    free(big);
    if (o < cap) out[o] = 0;
    return o;
}

int detok_push(const engine *e, detok *d, int32_t tok, char *out, int cap)
{
    return detok_push_tok(engine_tok(e), d, tok, out, cap);
}

int detok_flush(detok *d, char *out, int cap)
{
    int o = 0;
    if (d->n_pending > 0 && (!out || !emit(out, cap, &o, repl, 3))) o = 0;
    d->n_pending = 0;
    if (out && o < cap) out[o] = 0;
    return o;
}
