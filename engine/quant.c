/* Tensor element formats, in ggml's byte layouts:
 *
 *   Q4_0  32 values: fp16 d, 16 bytes; byte j holds value j (low nibble) and
 *         j+16 (high nibble); x = d * (q - 8)
 *   Q4_1  32 values: fp16 d, fp16 m, 16 bytes as Q4_0; x = d * q + m
 *   Q5_0  32 values: fp16 d, 4 bytes qh (a little-endian u32: bit j is the
 *         fifth bit of value j), 16 bytes of nibbles as Q4_0;
 *         x = d * (q - 16)
 *   Q5_1  32 values: fp16 d, fp16 m, qh and nibbles as Q5_0; x = d * q + m
 *   Q8_0  32 values: fp16 d, 32 int8; x = d * q
 *   IQ4_NL 32 values: fp16 d, 16 bytes of nibbles as Q4_0, each an index
 *         into a fixed 16-entry non-uniform table; x = d * table[q]
 *   Q2_K  256 values: 16 bytes of scales (low nibble sc, high nibble m, one
 *         byte per sub-block of 16), 64 bytes of 2-bit codes, fp16 d, fp16
 *         dmin; each half of 128 values uses 32 bytes, bit pair k of byte l
 *         being value 32k + l; x = d * sc * q - dmin * m
 *   Q3_K  256 values: 32 bytes hmask, 64 bytes of 2-bit codes laid out as
 *         Q2_K, 12 bytes of 6-bit scales for 16 sub-blocks of 16, fp16 d;
 *         bit k of hmask byte l belongs to value 32k + l and, when clear,
 *         takes 4 off the code; x = d * (sc - 32) * (q - (h ? 0 : 4))
 *   Q4_K  256 values: fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins
 *         for 8 sub-blocks of 32, 128 bytes of nibbles; every 64 values
 *         share 32 bytes (low nibbles first sub-block, high the second);
 *         x = d * sc * q - dmin * m
 *   Q5_K  256 values: fp16 d, fp16 dmin, 12 scale bytes as Q4_K, 32 bytes
 *         qh, 128 bytes of nibbles as Q4_K; bit k of qh byte l is the fifth
 *         bit of value 32k + l; x = d * sc * q - dmin * m
 *   Q6_K  256 values: 128 bytes low nibbles, 64 bytes high 2-bit pairs,
 *         16 int8 scales (one per 16 values), fp16 d; x = d * sc * (q - 32)
 *   IQ4_XS 256 values: fp16 d, 2 bytes scales_h (a little-endian u16: bit
 *         pair j is the top of scale j), 4 bytes scales_l (nibble j: low of
 *         byte j / 2 for even j, high for odd), 128 bytes of nibbles, 16 per
 *         sub-block of 32 as Q4_0; x = d * (sc - 32) * table[q] with
 *         IQ4_NL's table
 *
 * Blocks are read bytewise (fp16 fields through memcpy) so any alignment of
 * the source is fine. */
#include "engine/quant.h"
#include "engine/gguf.h"

#include <math.h>
#include <string.h>

#if defined(SPARSED_X86) && (defined(__x86_64__) || defined(__i386__))
#define QUANT_X86 1
#include <immintrin.h>
#endif

/* ---- fp16 / bf16 --------------------------------------------------------- */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float fp16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in fp32 */
        float v = (float)mant * (1.0f / 16777216.0f);
        return bits_f32(f32_bits(v) | sign);
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | mant << 13);
    return bits_f32(sign | (exp + 112) << 23 | mant << 13);
}

uint16_t f32_to_fp16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7fffffffu;
    if (x >= 0x7f800000u) /* inf, or NaN kept quiet */
        return sign | 0x7c00 | (x > 0x7f800000u ? 0x200 | ((x >> 13) & 0x3ff) : 0);
    if (x >= 0x477ff000u) return sign | 0x7c00;  /* >= 65520 rounds to inf */
    uint32_t e = x >> 23;
    if (e < 113) {
        /* result is subnormal (or zero): value in units of 2^-24 */
        uint32_t m = (x & 0x7fffff) | (e ? 0x800000u : 0);
        uint32_t shift = 126 - (e ? e : 1);
        if (shift > 24) return sign;
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return sign | (uint16_t)q;
    }
    uint32_t h = (e - 112) << 10 | (x & 0x7fffff) >> 13;
    uint32_t rem = x & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;  /* carry may bump the exponent */
    return sign | (uint16_t)h;
}

float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

float e4m3_round(float x)
{
    float a = fabsf(x);
    if (!(a > 0.0f))
        return x;                       /* zeros, NaN */
    if (a >= 448.0f)
        return copysignf(448.0f, x);
    int ex;
    frexpf(a, &ex);                     /* a in [2^(ex-1), 2^ex) */
    int e = ex - 1 < -6 ? -6 : ex - 1;  /* subnormals: the smallest normals' step */
    float q = ldexpf(1.0f, e - 3);      /* 3 mantissa bits */
    return copysignf(nearbyintf(a / q) * q, x);
}

void fp8_row_round(float *x, int n)
{
    float amax = 0.0f;
    for (int i = 0; i < n; i++)
        amax = fmaxf(amax, fabsf(x[i]));
    if (!(amax > 0.0f))
        return;
    int ex;
    frexpf(amax / 448.0f, &ex);
    const float sc = ldexpf(1.0f, ex), inv = 1.0f / sc;
    for (int i = 0; i < n; i++)
        x[i] = e4m3_round(x[i] * inv) * sc;
}

uint16_t f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);  /* quiet NaN */
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

static float ld_f16(const uint8_t *p)
{
    return fp16_to_f32((uint16_t)(p[0] | p[1] << 8));
}

static void st_f16(uint8_t *p, float v)
{
    uint16_t h = f32_to_fp16(v);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* ---- CPU features ------------------------------------------------------- */

#ifdef QUANT_X86
#include <cpuid.h>

static int cpu_avx2;     /* AVX2 + FMA + F16C: every CPU with AVX2 has all three */
static int have_avx2;    /* cpu_avx2, unless turned off by quant_simd(0) */

__attribute__((constructor)) static void quant_cpu_init(void)
{
    unsigned a, b, c, d;
    __builtin_cpu_init();
    int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
    cpu_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    have_avx2 = cpu_avx2;
}
#endif

int quant_simd(int enable)
{
#ifdef QUANT_X86
    have_avx2 = enable && cpu_avx2;
    return have_avx2;
#else
    (void)enable;
    return 0;
#endif
}

/* ---- dequantization ----------------------------------------------------- */

static void deq_q4_0(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 18, y += 32) {
        float d = ld_f16(b);
        const uint8_t *qs = b + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)((qs[j] & 0xf) - 8);
            y[j + 16] = d * (float)((qs[j] >> 4) - 8);
        }
    }
}

static void deq_q4_1(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 20, y += 32) {
        float d = ld_f16(b), m = ld_f16(b + 2);
        const uint8_t *qs = b + 4;
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)(qs[j] & 0xf) + m;
            y[j + 16] = d * (float)(qs[j] >> 4) + m;
        }
    }
}

static void deq_q8_0(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 34, y += 32) {
        float d = ld_f16(b);
        const int8_t *qs = (const int8_t *)(b + 2);
        for (int j = 0; j < 32; j++) y[j] = d * (float)qs[j];
    }
}

/* little-endian u32 at p: the 32 fifth bits of a Q5_0/Q5_1 block */
static uint32_t ld_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Q5_0/Q5_1: values j and j + 16 take nibble byte j's low and high
 * nibble, and fifth bits j and j + 16. */
static void deq_q5_0(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 22, y += 32) {
        float d = ld_f16(b);
        uint32_t qh = ld_u32(b + 2);
        const uint8_t *qs = b + 6;
        for (int j = 0; j < 16; j++) {
            int q0 = (qs[j] & 0xf) | (int)((qh >> j) & 1) << 4;
            int q1 = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = d * (float)(q0 - 16);
            y[j + 16] = d * (float)(q1 - 16);
        }
    }
}

static void deq_q5_1(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 24, y += 32) {
        float d = ld_f16(b), m = ld_f16(b + 2);
        uint32_t qh = ld_u32(b + 4);
        const uint8_t *qs = b + 8;
        for (int j = 0; j < 16; j++) {
            int q0 = (qs[j] & 0xf) | (int)((qh >> j) & 1) << 4;
            int q1 = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = d * (float)q0 + m;
            y[j + 16] = d * (float)q1 + m;
        }
    }
}

/* IQ4_NL and IQ4_XS code points: a fixed non-uniform grid, denser near
 * zero where most weights lie. */
static const int8_t iq4_grid[16] = {
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
};

static void deq_iq4_nl(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 18, y += 32) {
        float d = ld_f16(b);
        const uint8_t *qs = b + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)iq4_grid[qs[j] & 0xf];
            y[j + 16] = d * (float)iq4_grid[qs[j] >> 4];
        }
    }
}

static void deq_iq4_xs(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 136) {
        float d = ld_f16(b);
        unsigned sh = (unsigned)(b[2] | b[3] << 8);
        const uint8_t *sl = b + 4, *qs = b + 8;
        for (int j = 0; j < 8; j++, qs += 16, y += 32) {
            int ls = ((sl[j / 2] >> 4 * (j % 2)) & 0xf) | (int)((sh >> 2 * j) & 3) << 4;
            float dl = d * (float)(ls - 32);
            for (int l = 0; l < 16; l++) {
                y[l] = dl * (float)iq4_grid[qs[l] & 0xf];
                y[l + 16] = dl * (float)iq4_grid[qs[l] >> 4];
            }
        }
    }
}

/* Q2_K: sub-blocks of 16 go through each 32-byte half's bit pairs in
 * order (pair 0 of bytes 0..15, of bytes 16..31, then pair 1, ...), one
 * scale byte each. */
static void deq_q2_k(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 84) {
        const uint8_t *sc = b, *qs = b + 16;
        float d = ld_f16(b + 80), dmin = ld_f16(b + 82);
        for (int n = 0; n < 2; n++, qs += 32)
            for (int shift = 0; shift < 8; shift += 2)
                for (int h = 0; h < 2; h++, sc++, y += 16) {
                    float dl = d * (float)(*sc & 0xf), ml = dmin * (float)(*sc >> 4);
                    const uint8_t *q = qs + 16 * h;
                    for (int l = 0; l < 16; l++) y[l] = dl * (float)((q[l] >> shift) & 3) - ml;
                }
    }
}

/* Scale j (0..15) of Q3_K from its 12 bytes: the low 4 bits are the low
 * (j < 8) or high nibble of byte j % 8, the top 2 bits are bit pair j / 4
 * of byte 8 + j % 4; stored with a bias of 32. */
static int k3_scale(int j, const uint8_t *s)
{
    int lo = j < 8 ? s[j] & 0xf : s[j - 8] >> 4;
    int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (lo | hi << 4) - 32;
}

static void deq_q3_k(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 110) {
        const uint8_t *hm = b, *qs = b + 32, *s = b + 96;
        float d = ld_f16(b + 108);
        int j = 0;      /* sub-block of 16; its 32-value run j / 2 is hmask's bit */
        for (int n = 0; n < 2; n++, qs += 32)
            for (int shift = 0; shift < 8; shift += 2)
                for (int h = 0; h < 2; h++, j++, y += 16) {
                    float dl = d * (float)k3_scale(j, s);
                    const uint8_t *q = qs + 16 * h, *hb = hm + 16 * h;
                    for (int l = 0; l < 16; l++) {
                        int v = ((q[l] >> shift) & 3) - ((hb[l] >> (j / 2)) & 1 ? 0 : 4);
                        y[l] = dl * (float)v;
                    }
                }
    }
}

/* Scale and min of Q4_K sub-block j (0..7) from the 12 packed bytes: the
 * first four sub-blocks keep 6 bits in bytes 0..3 / 4..7, the last four
 * put their low 4 bits in bytes 8..11 and their top 2 bits in the spare
 * top bits of bytes 0..7. */
static void k4_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xf) | (q[j - 4] >> 6) << 4);
        *m = (uint8_t)((q[j + 4] >> 4) | (q[j] >> 6) << 4);
    }
}

static void deq_q4_k(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 144) {
        float d = ld_f16(b), dmin = ld_f16(b + 2);
        const uint8_t *scales = b + 4, *qs = b + 16;
        for (int c = 0; c < 4; c++, qs += 32) {
            uint8_t sc, m;
            k4_scale_min(2 * c, scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            k4_scale_min(2 * c + 1, scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)(qs[l] & 0xf) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)(qs[l] >> 4) - m2;
        }
    }
}

static void deq_q5_k(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 176) {
        float d = ld_f16(b), dmin = ld_f16(b + 2);
        const uint8_t *scales = b + 4, *qh = b + 16, *qs = b + 48;
        for (int c = 0; c < 4; c++, qs += 32) {
            uint8_t sc, m;
            k4_scale_min(2 * c, scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            k4_scale_min(2 * c + 1, scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (float)((qs[l] & 0xf) | ((qh[l] >> (2 * c)) & 1) << 4) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * (float)((qs[l] >> 4) | ((qh[l] >> (2 * c + 1)) & 1) << 4) - m2;
        }
    }
}

static void deq_q6_k(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 210) {
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        float d = ld_f16(b + 208);
        for (int n = 0; n < 2; n++, ql += 64, qh += 32, sc += 8, y += 128) {
            /* two runs of 16 with fixed scales, so the inner loop vectorizes */
            for (int is = 0; is < 2; is++) {
                float s1 = d * sc[is], s2 = d * sc[is + 2], s3 = d * sc[is + 4], s4 = d * sc[is + 6];
                for (int l = 16 * is; l < 16 * is + 16; l++) {
                    int q1 = ((ql[l] & 0xf) | ((qh[l] >> 0) & 3) << 4) - 32;
                    int q2 = ((ql[l + 32] & 0xf) | ((qh[l] >> 2) & 3) << 4) - 32;
                    int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                    int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                    y[l] = s1 * (float)q1;
                    y[l + 32] = s2 * (float)q2;
                    y[l + 64] = s3 * (float)q3;
                    y[l + 96] = s4 * (float)q4;
                }
            }
        }
    }
}

#ifdef QUANT_X86
/* AVX2 versions of the common formats.  Each computes exactly what the
 * scalar code does (one multiply, then one add for Q4_1), so results are
 * bit-identical whichever path runs. */
#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static void deq_f16_avx2(const uint8_t *s, float *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + 2 * i))));
    for (; i < n; i++) y[i] = ld_f16(s + 2 * i);
}

AVX2 static void deq_bf16_avx2(const uint8_t *s, float *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + 2 * i)));
        _mm256_storeu_ps(y + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
    for (; i < n; i++) y[i] = bf16_to_f32((uint16_t)(s[2 * i] | s[2 * i + 1] << 8));
}

/* fp16 at p through F16C: exact, as ld_f16, without the call */
AVX2 static float ld_f16_avx2(const uint8_t *p) { return _cvtsh_ss((uint16_t)(p[0] | p[1] << 8)); }

AVX2 static void deq_q8_0_avx2(const uint8_t *b, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, b += 34, y += 32) {
        __m256 d = _mm256_set1_ps(ld_f16_avx2(b));
        for (int k = 0; k < 32; k += 8) {
            __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + k)));
            _mm256_storeu_ps(y + k, _mm256_mul_ps(d, _mm256_cvtepi32_ps(q)));
        }
    }
}

/* 8 nibble values from the low 8 bytes of v, as floats */
AVX2 static __m256 nib8(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }

AVX2 static void deq_q4_avx2(const uint8_t *b, float *y, int64_t nb, int with_min)
{
    const __m128i mask = _mm_set1_epi8(0x0f);
    const size_t bsz = with_min ? 20 : 18;
    for (int64_t i = 0; i < nb; i++, b += bsz, y += 32) {
        __m256 d = _mm256_set1_ps(ld_f16_avx2(b));
        /* Q4_0: x = d * (q - 8); Q4_1: x = d * q + m */
        __m256 m = _mm256_set1_ps(with_min ? ld_f16_avx2(b + 2) : 0.0f);
        __m256 off = _mm256_set1_ps(with_min ? 0.0f : 8.0f);
        __m128i qs = _mm_loadu_si128((const __m128i *)(b + (with_min ? 4 : 2)));
        __m128i lo = _mm_and_si128(qs, mask), hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
        __m256 v[4] = { nib8(lo), nib8(_mm_srli_si128(lo, 8)), nib8(hi), nib8(_mm_srli_si128(hi, 8)) };
        for (int k = 0; k < 4; k++) {
            __m256 r = with_min ? _mm256_add_ps(_mm256_mul_ps(d, v[k]), m)
                                : _mm256_mul_ps(d, _mm256_sub_ps(v[k], off));
            _mm256_storeu_ps(y + 8 * k, r);
        }
    }
}
#endif

#ifdef QUANT_X86
/* Fused dequantize-and-dot for Q4_0/Q4_1/Q8_0 rows: the same arithmetic
 * as deq_*_avx2 followed by dot_f32, without storing the expanded row. */
AVX2 static float dot_q_avx2(uint32_t type, const uint8_t *b, const float *x, int64_t nb)
{
    const __m128i mask = _mm_set1_epi8(0x0f);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t i = 0; i < nb; i++, x += 32) {
        __m256 d = _mm256_set1_ps(ld_f16_avx2(b));
        __m256 v[4];
        if (type == GGML_Q8_0) {
            for (int k = 0; k < 4; k++) {
                __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 2 + 8 * k)));
                v[k] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(q));
            }
            b += 34;
        } else {
            int with_min = type == GGML_Q4_1;
            __m256 m = _mm256_set1_ps(with_min ? ld_f16_avx2(b + 2) : 0.0f);
            __m256 off = _mm256_set1_ps(8.0f);
            __m128i qs = _mm_loadu_si128((const __m128i *)(b + (with_min ? 4 : 2)));
            __m128i lo = _mm_and_si128(qs, mask), hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
            __m256 n4[4] = {nib8(lo), nib8(_mm_srli_si128(lo, 8)), nib8(hi), nib8(_mm_srli_si128(hi, 8))};
            for (int k = 0; k < 4; k++)
                v[k] = with_min ? _mm256_add_ps(_mm256_mul_ps(d, n4[k]), m)
                                : _mm256_mul_ps(d, _mm256_sub_ps(n4[k], off));
            b += with_min ? 20 : 18;
        }
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_fmadd_ps(v[k], _mm256_loadu_ps(x + 8 * k), acc[k]);
    }
    __m256 t = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}
#endif

int dot_row_fused(uint32_t type)
{
#ifdef QUANT_X86
    return have_avx2 && (type == GGML_Q4_0 || type == GGML_Q4_1 || type == GGML_Q8_0);
#else
    (void)type;
    return 0;
#endif
}

float dot_row(uint32_t type, const void *row, const float *x, int64_t n)
{
#ifdef QUANT_X86
    if (dot_row_fused(type))
        return dot_q_avx2(type, row, x, n / 32);
#endif
    (void)type; (void)row; (void)x; (void)n;
    return 0.0f; /* callers check dot_row_fused first */
}

void dequant_row(uint32_t type, const void *src, float *dst, int64_t n)
{
    const uint8_t *s = src;
    int bs = ggml_blck_size(type);
    if (bs <= 0 || n <= 0) return;
    int64_t nb = n / bs;
    switch (type) {
    case GGML_F32:
        memcpy(dst, s, (size_t)n * 4);
        break;
    case GGML_F16:
#ifdef QUANT_X86
        if (have_avx2) {
            deq_f16_avx2(s, dst, n);
            break;
        }
#endif
        for (int64_t i = 0; i < n; i++) dst[i] = ld_f16(s + 2 * i);
        break;
    case GGML_BF16:
#ifdef QUANT_X86
        if (have_avx2) {
            deq_bf16_avx2(s, dst, n);
            break;
        }
#endif
        for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32((uint16_t)(s[2 * i] | s[2 * i + 1] << 8));
        break;
#ifdef QUANT_X86
    case GGML_Q4_0: have_avx2 ? deq_q4_avx2(s, dst, nb, 0) : deq_q4_0(s, dst, nb); break;
    case GGML_Q4_1: have_avx2 ? deq_q4_avx2(s, dst, nb, 1) : deq_q4_1(s, dst, nb); break;
    case GGML_Q8_0: have_avx2 ? deq_q8_0_avx2(s, dst, nb) : deq_q8_0(s, dst, nb); break;
#else
    case GGML_Q4_0: deq_q4_0(s, dst, nb); break;
    case GGML_Q4_1: deq_q4_1(s, dst, nb); break;
    case GGML_Q8_0: deq_q8_0(s, dst, nb); break;
#endif
    case GGML_Q5_0: deq_q5_0(s, dst, nb); break;
    case GGML_Q5_1: deq_q5_1(s, dst, nb); break;
    case GGML_IQ4_NL: deq_iq4_nl(s, dst, nb); break;
    case GGML_Q2_K: deq_q2_k(s, dst, nb); break;
    case GGML_Q3_K: deq_q3_k(s, dst, nb); break;
    case GGML_Q4_K: deq_q4_k(s, dst, nb); break;
    case GGML_Q5_K: deq_q5_k(s, dst, nb); break;
    case GGML_Q6_K: deq_q6_k(s, dst, nb); break;
    case GGML_IQ4_XS: deq_iq4_xs(s, dst, nb); break;
    }
}

/* ---- reference quantization --------------------------------------------- */

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

static void q4_0_block(const float *x, uint8_t *b)
{
    /* the value of largest magnitude maps to -8, the asymmetric end */
    float amax = 0, vmax = 0;
    for (int j = 0; j < 32; j++)
        if (fabsf(x[j]) > amax) amax = fabsf(x[j]), vmax = x[j];
    st_f16(b, vmax / -8.0f);
    float d = ld_f16(b), id = d != 0 ? 1.0f / d : 0;
    for (int j = 0; j < 16; j++) {
        int q0 = clampi((int)lrintf(x[j] * id) + 8, 0, 15);
        int q1 = clampi((int)lrintf(x[j + 16] * id) + 8, 0, 15);
        b[2 + j] = (uint8_t)(q0 | q1 << 4);
    }
}

static void q4_1_block(const float *x, uint8_t *b)
{
    float mn = x[0], mx = x[0];
    for (int j = 1; j < 32; j++) {
        if (x[j] < mn) mn = x[j];
        if (x[j] > mx) mx = x[j];
    }
    st_f16(b, (mx - mn) / 15.0f);
    st_f16(b + 2, mn);
    float d = ld_f16(b), m = ld_f16(b + 2), id = d != 0 ? 1.0f / d : 0;
    for (int j = 0; j < 16; j++) {
        int q0 = clampi((int)lrintf((x[j] - m) * id), 0, 15);
        int q1 = clampi((int)lrintf((x[j + 16] - m) * id), 0, 15);
        b[4 + j] = (uint8_t)(q0 | q1 << 4);
    }
}

static void q8_0_block(const float *x, uint8_t *b)
{
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    st_f16(b, amax / 127.0f);
    float d = ld_f16(b), id = d != 0 ? 1.0f / d : 0;
    for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)clampi((int)lrintf(x[j] * id), -127, 127);
}

/* Q4_K: per sub-block of 32 an affine range [min(0, lo), hi] in 15 steps;
 * the 8 step sizes and offsets are then coded as 6-bit multiples of two
 * fp16 super-scales. */
static void q4_k_block(const float *x, uint8_t *b)
{
    float scale[8], mins[8], smax = 0, mmax = 0;
    for (int j = 0; j < 8; j++) {
        float lo = 0, hi = x[32 * j];
        for (int l = 0; l < 32; l++) {
            lo = fminf(lo, x[32 * j + l]);
            hi = fmaxf(hi, x[32 * j + l]);
        }
        scale[j] = (hi - lo) / 15.0f;
        mins[j] = -lo;
        smax = fmaxf(smax, scale[j]);
        mmax = fmaxf(mmax, mins[j]);
    }
    st_f16(b, smax / 63.0f);
    st_f16(b + 2, mmax / 63.0f);
    float d = ld_f16(b), dmin = ld_f16(b + 2);
    uint8_t sc[8], m[8];
    for (int j = 0; j < 8; j++) {
        /* round the step up so the top of the range stays reachable */
        sc[j] = d > 0 ? (uint8_t)clampi((int)ceilf(scale[j] / d - 1e-4f), 0, 63) : 0;
        m[j] = dmin > 0 ? (uint8_t)clampi((int)lrintf(mins[j] / dmin), 0, 63) : 0;
    }
    uint8_t *s = b + 4;
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
        s[j + 4] = (uint8_t)(m[j] | (m[j + 4] >> 4) << 6);
        s[j + 8] = (uint8_t)((sc[j + 4] & 0xf) | (m[j + 4] & 0xf) << 4);
    }
    uint8_t *qs = b + 16;
    for (int c = 0; c < 4; c++) {
        int q[2][32];
        for (int h = 0; h < 2; h++) {
            int j = 2 * c + h;
            float dj = d * sc[j], mj = dmin * m[j], id = dj > 0 ? 1.0f / dj : 0;
            for (int l = 0; l < 32; l++)
                q[h][l] = clampi((int)lrintf((x[32 * j + l] + mj) * id), 0, 15);
        }
        for (int l = 0; l < 32; l++) qs[32 * c + l] = (uint8_t)(q[0][l] | q[1][l] << 4);
    }
}

/* Q6_K: per 16 values a signed scale that maps the largest magnitude to
 * -32; the 16 scales are int8 multiples of one fp16 d. */
static void q6_k_block(const float *x, uint8_t *b)
{
    float scale[16], amax_s = 0, vmax_s = 0;
    for (int j = 0; j < 16; j++) {
        float amax = 0, vmax = 0;
        for (int l = 0; l < 16; l++)
            if (fabsf(x[16 * j + l]) > amax) amax = fabsf(x[16 * j + l]), vmax = x[16 * j + l];
        scale[j] = vmax / -32.0f;
        if (fabsf(scale[j]) > amax_s) amax_s = fabsf(scale[j]), vmax_s = scale[j];
    }
    uint8_t *ql = b, *qh = b + 128;
    int8_t *sc = (int8_t *)(b + 192);
    st_f16(b + 208, vmax_s / -128.0f);
    float d = ld_f16(b + 208), id = d != 0 ? 1.0f / d : 0;
    uint8_t L[256];
    for (int j = 0; j < 16; j++) {
        sc[j] = (int8_t)clampi((int)lrintf(scale[j] * id), -128, 127);
        float dj = d * sc[j], idj = dj != 0 ? 1.0f / dj : 0;
        for (int l = 0; l < 16; l++)
            L[16 * j + l] = (uint8_t)(clampi((int)lrintf(x[16 * j + l] * idj), -32, 31) + 32);
    }
    for (int n = 0; n < 2; n++) {
        const uint8_t *Ln = L + 128 * n;
        for (int l = 0; l < 32; l++) {
            int q1 = Ln[l], q2 = Ln[l + 32], q3 = Ln[l + 64], q4 = Ln[l + 96];
            ql[64 * n + l] = (uint8_t)((q1 & 0xf) | (q3 & 0xf) << 4);
            ql[64 * n + l + 32] = (uint8_t)((q2 & 0xf) | (q4 & 0xf) << 4);
            qh[32 * n + l] = (uint8_t)(q1 >> 4 | (q2 >> 4) << 2 | (q3 >> 4) << 4 | (q4 >> 4) << 6);
        }
    }
}

void quantize_row(uint32_t type, const float *src, void *dst, int64_t n)
{
    uint8_t *d = dst;
    int bs = ggml_blck_size(type);
    if (bs <= 0 || n <= 0) return;
    int64_t nb = n / bs;
    size_t ts = ggml_type_size(type);
    switch (type) {
    case GGML_F32:
        memcpy(d, src, (size_t)n * 4);
        return;
    case GGML_F16:
    case GGML_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = type == GGML_F16 ? f32_to_fp16(src[i]) : f32_to_bf16(src[i]);
            d[2 * i] = (uint8_t)h;
            d[2 * i + 1] = (uint8_t)(h >> 8);
        }
        return;
    }
    for (int64_t i = 0; i < nb; i++, src += bs, d += ts) {
        switch (type) {
        case GGML_Q4_0: q4_0_block(src, d); break;
        case GGML_Q4_1: q4_1_block(src, d); break;
        case GGML_Q8_0: q8_0_block(src, d); break;
        case GGML_Q4_K: q4_k_block(src, d); break;
        case GGML_Q6_K: q6_k_block(src, d); break;
        }
    }
}

/* ---- fp32 vector kernels ------------------------------------------------ */

#ifdef QUANT_X86
AVX2 static float dot_avx2(const float *a, const float *b, int n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    float r = _mm_cvtss_f32(h);
    for (; i < n; i++) r += a[i] * b[i];
    return r;
}

AVX2 static void axpy_avx2(float *y, float a, const float *x, int n)
{
    __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}
#endif

float dot_f32(const float *a, const float *b, int n)
{
#ifdef QUANT_X86
    if (have_avx2) return dot_avx2(a, b, n);
#endif
    /* four partial sums, like the SIMD path, for similar rounding */
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

#ifdef QUANT_X86
AVX2 static void dot4x3_avx2(const float *a, size_t lda, const float *b, size_t ldb, int n, float *out)
{
    /* 12 accumulators + 3 columns + 1 row: the 16 ymm registers, no spills */
    __m256 acc[4][3];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++)
            acc[i][j] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256 bv[3];
        for (int j = 0; j < 3; j++)
            bv[j] = _mm256_loadu_ps(b + j * ldb + k);
        for (int i = 0; i < 4; i++) {
            __m256 av = _mm256_loadu_ps(a + i * lda + k);
            for (int j = 0; j < 3; j++)
                acc[i][j] = _mm256_fmadd_ps(av, bv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++) {
            __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc[i][j]), _mm256_extractf128_ps(acc[i][j], 1));
            r = _mm_add_ps(r, _mm_movehl_ps(r, r));
            r = _mm_add_ss(r, _mm_movehdup_ps(r));
            float s = _mm_cvtss_f32(r);
            for (int kk = k; kk < n; kk++)
                s += a[i * lda + kk] * b[j * ldb + kk];
            out[i * 3 + j] = s;
        }
}
#endif

void dot_f32_4x3(const float *a, size_t lda, const float *b, size_t ldb, int n, float *out)
{
#ifdef QUANT_X86
    if (have_avx2) {
        dot4x3_avx2(a, lda, b, ldb, n, out);
        return;
    }
#endif
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++)
            out[i * 3 + j] = dot_f32(a + i * lda, b + j * ldb, n);
}

void axpy_f32(float *y, float a, const float *x, int n)
{
#ifdef QUANT_X86
    if (have_avx2) {
        axpy_avx2(y, a, x, n);
        return;
    }
#endif
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}
