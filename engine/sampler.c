/* sampler: logit bias, repetition / presence / frequency penalties,
 * temperature, top-k, top-p, min-p and a seeded draw (see engine.h).
 *
 * Nothing here is O(V log V): top-k is a heap selection (O(V log k)),
 * top-p without top-k a quickselect steered by probability mass (expected
 * O(V)), min-p a threshold on the weights; the draw walks the survivors once
 * (top-k's in rank order, the others in id order: the rule the CUDA engine's
 * sampler follows too, so a seed picks the same tokens from the same logits).
 * Penalties count the history in a per-call hash table, O(history).  A
 * sampler holds no O(V) memory, since a server keeps one per running
 * sequence; scratch is per call.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

typedef struct cand {
    float v;        /* logit after bias and penalties */
    int32_t id;
    float w;        /* exp((v - vmax) / T), unnormalized */
} cand;

struct sampler {
    sampler_params p;
    int32_t *bias_tokens;
    float *bias_values;
    int n_vocab;
    uint64_t rng[4];
};

void sampler_params_default(sampler_params *p)
{
    memset(p, 0, sizeof *p);
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->top_k = 0;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
    p->seed = 0x5eed5eed5eedULL;
}

/* ---- PRNG: xoshiro256**, seeded through splitmix64 ------------------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * 0x1.0p-53;
}

/* ---- create / free ---------------------------------------------------- */

sampler *sampler_create(const sampler_params *p, int n_vocab)
{
    if (!p || n_vocab <= 0 || p->n_bias < 0) return NULL;
    sampler *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = *p;
    s->n_vocab = n_vocab;
    if (p->n_bias > 0) {
        if (!p->bias_tokens || !p->bias_values) goto fail;
        s->bias_tokens = malloc((size_t)p->n_bias * sizeof *s->bias_tokens);
        s->bias_values = malloc((size_t)p->n_bias * sizeof *s->bias_values);
        if (!s->bias_tokens || !s->bias_values) goto fail;
        memcpy(s->bias_tokens, p->bias_tokens, (size_t)p->n_bias * sizeof *s->bias_tokens);
        memcpy(s->bias_values, p->bias_values, (size_t)p->n_bias * sizeof *s->bias_values);
    } else {
        s->p.n_bias = 0;
    }
    s->p.bias_tokens = s->bias_tokens;
    s->p.bias_values = s->bias_values;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    return s;
fail:
    sampler_free(s);
    return NULL;
}

void sampler_free(sampler *s)
{
    if (!s) return;
    free(s->bias_tokens);
    free(s->bias_values);
    free(s);
}

/* ---- selection -------------------------------------------------------- */

/* NaN ranks as -inf so a broken row cannot win. */
static inline float clean(float v)
{
    return v != v ? -INFINITY : v;
}

/* a ranks before b: higher value, then lower id. */
static inline int better(cand a, cand b)
{
    return a.v > b.v || (a.v == b.v && a.id < b.id);
}

/* Min-heap on rank: the root is the worst kept candidate. */
static void sift_down(cand *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && better(h[w], h[l])) w = l;
        if (r < n && better(h[w], h[r])) w = r;
        if (w == i) return;
        cand t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

/* Writes the k best entries of x (above -inf unless keep_inf) to out, best
 * first; returns how many.  O(V log k). */
static int top_k_select(const float *x, int n, int k, int keep_inf, cand *out)
{
    int m = 0;
    for (int i = 0; i < n; i++) {
        cand c = { clean(x[i]), i, 0 };
        if (!keep_inf && c.v == -INFINITY) continue;
        if (m < k) {
            /* sift up */
            int j = m++;
            out[j] = c;
            while (j > 0 && better(out[(j - 1) / 2], out[j])) {
                cand t = out[j];
                out[j] = out[(j - 1) / 2];
                out[(j - 1) / 2] = t;
                j = (j - 1) / 2;
            }
        } else if (better(c, out[0])) {
            out[0] = c;
            sift_down(out, m, 0);
        }
    }
    /* Heap sort: pop the worst to the back, leaving best first. */
    for (int e = m - 1; e > 0; e--) {
        cand t = out[0];
        out[0] = out[e];
        out[e] = t;
        sift_down(out, e, 0);
    }
    return m;
}

static int32_t argmax(const float *x, int n)
{
    int32_t best = 0;
    float bv = -INFINITY;
    for (int i = 0; i < n; i++) {
        float v = clean(x[i]);
        if (v > bv) bv = v, best = i;
    }
    return best;
}

/* Bias, then the penalties over the history's distinct tokens, counted in
 * a per-call hash table: O(history), whatever its length. */
static int apply_penalties(sampler *s, float *logits, const int32_t *history, int n_history)
{
    const sampler_params *p = &s->p;
    int V = s->n_vocab;
    for (int i = 0; i < p->n_bias; i++) {
        int32_t t = p->bias_tokens[i];
        if (t >= 0 && t < V && p->bias_values[i] == p->bias_values[i]) logits[t] += p->bias_values[i];
    }
    float rp = p->repetition_penalty;
    int use_rp = rp > 0 && rp != 1.0f;
    int use_pf = p->presence_penalty != 0 || p->frequency_penalty != 0;
    if (!history || n_history <= 0 || (!use_rp && !use_pf)) return 0;

    int bits = 4;
    while (bits < 31 && (1LL << bits) < 2LL * n_history) bits++;
    uint32_t mask = (1u << bits) - 1;
    int32_t *key = malloc(((size_t)mask + 1) * 2 * sizeof *key), *cnt;
    if (!key) return -1;
    cnt = key + mask + 1;
    memset(key, 0xff, ((size_t)mask + 1) * sizeof *key);
    for (int i = 0; i < n_history; i++) {
        int32_t t = history[i];
        if (t < 0 || t >= V) continue;
        uint32_t h = ((uint32_t)t * 0x9E3779B1u) >> (32 - bits);
        while (key[h] >= 0 && key[h] != t) h = (h + 1) & mask;
        if (key[h] < 0) key[h] = t, cnt[h] = 0;
        cnt[h]++;
    }
    for (uint32_t h = 0; h <= mask; h++) {
        int32_t t = key[h];
        if (t < 0) continue;
        float l = logits[t];
        if (use_rp) l = l > 0 ? l / rp : l * rp;
        if (use_pf) l -= p->presence_penalty + p->frequency_penalty * (float)cnt[h];
        logits[t] = l;
    }
    free(key);
    return 0;
}

/* Draws from candidates c[0..n) by their weights w, in their order. */
static int32_t draw_cands(double u01, const cand *c, int n)
{
    double z = 0;
    for (int i = 0; i < n; i++) z += c[i].w;
    double u = u01 * z, acc = 0;
    int32_t last = c[0].id;
    for (int i = 0; i < n; i++) {
        if (c[i].w <= 0) continue;
        acc += c[i].w;
        last = c[i].id;
        if (u < acc) return c[i].id;
    }
    return last; /* u rounded up to z */
}

static void swap_c(cand *a, cand *b)
{
    cand t = *a;
    *a = *b;
    *b = t;
}

/* Reorders c[0..n) so that its best m entries come first, m the fewest whose
 * weights reach target (all n if they never do); returns m.  Quickselect
 * that steers by mass instead of rank: expected O(n), and nothing outside
 * the kept set is ever sorted. */
static int nucleus(cand *c, int n, double target)
{
    uint64_t rs = 0x9E3779B97F4A7C15ULL; /* pivots only; fixed, so results are */
    int lo = 0, hi = n;                  /* reproducible and the draw stream is */
    double acc = 0;                      /* untouched                            */
    while (hi - lo > 16) {
        rs = rs * 6364136223846793005ULL + 1442695040888963407ULL;
        swap_c(&c[lo + (int)((rs >> 33) % (uint64_t)(hi - lo))], &c[hi - 1]);
        cand pv = c[hi - 1];
        int st = lo;
        double ml = 0;
        for (int i = lo; i < hi - 1; i++)
            if (better(c[i], pv)) {
                ml += c[i].w;
                swap_c(&c[i], &c[st++]);
            }
        swap_c(&c[st], &c[hi - 1]);
        if (acc + ml >= target) {
            hi = st;                      /* the cut is among the better ones */
        } else {
            acc += ml + pv.w;
            if (acc >= target) return st + 1;
            lo = st + 1;
        }
    }
    for (int i = lo + 1; i < hi; i++)     /* insertion sort the last few */
        for (int j = i; j > lo && better(c[j], c[j - 1]); j--) swap_c(&c[j], &c[j - 1]);
    for (int i = lo; i < hi; i++) {
        acc += c[i].w;
        if (acc >= target) return i + 1;
    }
    return hi;
}

/* Whether a pick from p draws a uniform number (the same test wherever the
 * pick runs, so a seed gives one stream of draws). */
static int needs_draw(const sampler_params *p)
{
    return p->temperature > 0 && isfinite((float)(1.0 / p->temperature)) && p->top_p > 0;
}

double sampler_draw(sampler *s)
{
    return needs_draw(&s->p) ? rng_uniform(s->rng) : 0.0;
}

const sampler_params *sampler_get_params(const sampler *s)
{
    return &s->p;
}

int sampler_plain(const sampler *s)
{
    const sampler_params *p = &s->p;
    return p->n_bias == 0 && !(p->repetition_penalty > 0 && p->repetition_penalty != 1.0f) &&
           p->presence_penalty == 0 && p->frequency_penalty == 0;
}

int32_t sampler_sample(sampler *s, float *logits, const int32_t *history, int n_history)
{
    /* Without scratch memory for the penalties we still answer: unpenalized. */
    (void)apply_penalties(s, logits, history, n_history);
    return sampler_pick(&s->p, logits, s->n_vocab, sampler_draw(s));
}

int32_t sampler_pick(const sampler_params *p, const float *logits, int V, double u)
{
    float T = p->temperature;
    int32_t best = argmax(logits, V);
    if (!(T > 0)) return best;
    float vmax = clean(logits[best]);
    float fit = (float)(1.0 / T);
    /* Everything banned, or a temperature so small only the max counts. */
    if (vmax == -INFINITY || vmax == INFINITY || !isfinite(fit)) return best;
    if (p->top_p <= 0) return best;

    int k = p->top_k > 0 && p->top_k < V ? p->top_k : 0;
    int use_p = p->top_p < 1.0f;
    /* Weights w = exp((v - vmax) / T) put the max at 1, so min-p is simply
     * w >= min_p.  It keeps a prefix of the ranking, like top-p, so cutting
     * by it first is the same as cutting after top-p. */
    float wmin = p->min_p > 0 ? fminf(p->min_p, 1.0f) : 0.0f;

    if (k) {
        /* Heap selection, sorted best first; top-p and min-p cut the list;
         * the draw walks it in that order. */
        cand *c = malloc((size_t)k * sizeof *c);
        if (!c) return best;
        int n = top_k_select(logits, V, k, 0, c);
        double z = 0;
        for (int i = 0; i < n; i++) z += c[i].w = expf((c[i].v - vmax) * fit);
        double acc = 0, target = use_p ? (double)p->top_p * z : INFINITY;
        int cut = n;
        for (int i = 0; i < n; i++) {
            if (c[i].w < wmin) {
                cut = i;
                break;
            }
            acc += c[i].w;
            if (acc >= target) {
                cut = i + 1;
                break;
            }
        }
        int32_t out = draw_cands(u, c, cut > 0 ? cut : 1);
        free(c);
        return out;
    }

    /* No top-k: one pass of weights over the vocabulary.  The scratch is per
     * call: samplers are per sequence, and O(V) each would add up. */
    float *w = malloc((size_t)V * sizeof *w);
    if (!w) return best;
    double z = 0, zk = 0;
    for (int i = 0; i < V; i++) {
        float x = expf((clean(logits[i]) - vmax) * fit); /* -inf, NaN -> 0 */
        w[i] = x;
        z += x;
        if (x >= wmin) zk += x;
    }
    int32_t out = best;
    float keep = wmin;     /* the draw takes tokens with w >= keep (and w > 0) */
    cand worst = { INFINITY, -1, 0 }; /* ... that rank no lower than worst */
    double zs = zk;
    if (use_p) {
        /* Tokens with w < eps hold less than V * eps <= (1 - top_p) * z
         * together, so the rest reaches the top-p mass without them: drop
         * them before the selection (usually most of the vocabulary). */
        float eps = fmaxf((float)(0.5 * (1.0 - (double)p->top_p) * z / V), wmin);
        cand *c = malloc((size_t)V * sizeof *c);
        if (!c) {
            free(w);
            return best;
        }
        int n = 0;
        for (int i = 0; i < V; i++) { /* branch-free: the test is a coin flip */
            c[n] = (cand){ logits[i], i, w[i] };
            n += w[i] >= eps && w[i] > 0;
        }
        n = nucleus(c, n, (double)p->top_p * z);
        if (n < 1) n = 1;
        worst = c[0];
        zs = 0;
        for (int i = 0; i < n; i++) {
            if (better(worst, c[i])) worst = c[i];
            zs += c[i].w;
        }
        keep = eps;
        free(c);
    }
    /* Walk the kept tokens in id order to the drawn mass. */
    double t = u * zs, acc = 0;
    for (int i = 0; i < V; i++) {
        if (w[i] < keep || w[i] <= 0) continue;
        if (use_p && better(worst, (cand){ logits[i], i, 0 })) continue;
        acc += w[i];
        out = i;
        if (t < acc) break;
    }
    free(w);
    return out;
}

/* ---- logprobs --------------------------------------------------------- */

float logprobs_top(const float *logits, int n_vocab, int32_t chosen, int n,
                   int32_t *top_ids, float *top_lp)
{
    if (!logits || n_vocab <= 0) return -INFINITY;
    float m = clean(logits[argmax(logits, n_vocab)]);
    double lse = m;
    if (isfinite(m)) {
        double z = 0;
        for (int i = 0; i < n_vocab; i++) z += expf(clean(logits[i]) - m);
        lse = m + log(z);
    }
    int ok = isfinite(lse);
    float chosen_lp = -INFINITY;
    if (ok && chosen >= 0 && chosen < n_vocab) chosen_lp = (float)(clean(logits[chosen]) - lse);

    if (n > 0 && top_ids && top_lp) {
        int k = n < n_vocab ? n : n_vocab;
        cand *c = malloc((size_t)k * sizeof *c);
        int got = c ? top_k_select(logits, n_vocab, k, 1, c) : 0;
        for (int i = 0; i < n; i++) {
            top_ids[i] = i < got ? c[i].id : -1;
            top_lp[i] = i < got && ok ? (float)(c[i].v - lse) : -INFINITY;
        }
        free(c);
    }
    return chosen_lp;
}
