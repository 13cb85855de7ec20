/* Tensor formats: fp16/bf16 conversions, hand-built blocks of every
 * quantized type with known values, quantize/dequantize round trips, and
 * the fp32 dot/axpy kernels. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/quant.h"

static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bitsf(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- fp16 / bf16 ------------------------------------------------------------ */

START_TEST(test_fp16_known)
{
    ck_assert_uint_eq(f32_to_fp16(1.0f), 0x3C00);
    ck_assert_uint_eq(f32_to_fp16(-2.0f), 0xC000);
    ck_assert_uint_eq(f32_to_fp16(0.5f), 0x3800);
    ck_assert_uint_eq(f32_to_fp16(0.0f), 0x0000);
    ck_assert_uint_eq(f32_to_fp16(-0.0f), 0x8000);
    ck_assert_uint_eq(f32_to_fp16(65504.0f), 0x7BFF);            /* largest finite */
    ck_assert_uint_eq(f32_to_fp16(65519.0f), 0x7BFF);
    ck_assert_uint_eq(f32_to_fp16(65520.0f), 0x7C00);            /* halfway: to inf */
    ck_assert_uint_eq(f32_to_fp16(1e9f), 0x7C00);
    ck_assert_uint_eq(f32_to_fp16(-INFINITY), 0xFC00);
    ck_assert_uint_eq(f32_to_fp16(ldexpf(1, -14)), 0x0400);      /* smallest normal */
    ck_assert_uint_eq(f32_to_fp16(ldexpf(1, -24)), 0x0001);      /* smallest subnormal */
    ck_assert_uint_eq(f32_to_fp16(ldexpf(1, -25)), 0x0000);      /* tie to even: 0 */
    ck_assert_uint_eq(f32_to_fp16(ldexpf(3, -25)), 0x0002);      /* 1.5 units: to 2 */
    ck_assert_uint_eq(f32_to_fp16(ldexpf(5, -25)), 0x0002);      /* 2.5 units: to 2 */
    ck_assert_uint_eq(f32_to_fp16(ldexpf(1, -26)), 0x0000);
    ck_assert_uint_eq(f32_to_fp16(1.0f + ldexpf(1, -11)), 0x3C00);     /* tie: even */
    ck_assert_uint_eq(f32_to_fp16(1.0f + ldexpf(3, -11)), 0x3C02);     /* tie: even */
    ck_assert_uint_eq(f32_to_fp16(1.0f + ldexpf(1, -11) + ldexpf(1, -20)), 0x3C01);
    ck_assert_uint_eq(f32_to_fp16(ldexpf(2047, -25)), 0x0400);   /* tie rounds up into normals */
    ck_assert_uint_eq(f32_to_fp16(ldexpf(2047, -24)), 0x07FF);
    uint16_t nan = f32_to_fp16(NAN);
    ck_assert_uint_eq(nan & 0x7C00, 0x7C00);
    ck_assert_uint_ne(nan & 0x03FF, 0);

    ck_assert(fp16_to_f32(0x3C00) == 1.0f);
    ck_assert(fp16_to_f32(0xC000) == -2.0f);
    ck_assert(fp16_to_f32(0x7BFF) == 65504.0f);
    ck_assert(fp16_to_f32(0x0001) == ldexpf(1, -24));
    ck_assert(fp16_to_f32(0x03FF) == ldexpf(1023, -24));
    ck_assert(fp16_to_f32(0x3555) == 0.333251953125f);
    ck_assert(isinf(fp16_to_f32(0x7C00)) && fp16_to_f32(0x7C00) > 0);
    ck_assert(isnan(fp16_to_f32(0x7E00)));
    ck_assert_uint_eq(fbits(fp16_to_f32(0x8000)), 0x80000000u);
}
END_TEST

/* Every half converts to float and back unchanged; every float lands on a
 * nearest half. */
START_TEST(test_fp16_exhaustive)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float f = fp16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        ck_assert_uint_eq(f32_to_fp16(f), h);
    }
    uint64_t s = 99;
    for (int i = 0; i < 200000; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        float x = bitsf((uint32_t)(s >> 32) & 0x477FFFFFu);   /* |x| < 65536 */
        uint16_t h = f32_to_fp16(x);
        double v = fp16_to_f32(h);
        double up = fp16_to_f32((uint16_t)(h + 1)), dn = (h & 0x7FFF) ? fp16_to_f32((uint16_t)(h - 1)) : v;
        if ((h & 0x7FFF) >= 0x7BFF) continue;
        ck_assert_msg(fabs(v - x) <= fabs(up - x) && fabs(v - x) <= fabs(dn - x),
                      "%a -> %04x is not nearest", (double)x, h);
    }
}
END_TEST

START_TEST(test_bf16)
{
    ck_assert_uint_eq(f32_to_bf16(1.0f), 0x3F80);
    ck_assert_uint_eq(f32_to_bf16(-2.0f), 0xC000);
    ck_assert_uint_eq(f32_to_bf16(bitsf(0x3F808000)), 0x3F80);   /* tie: even */
    ck_assert_uint_eq(f32_to_bf16(bitsf(0x3F818000)), 0x3F82);   /* tie: even */
    ck_assert_uint_eq(f32_to_bf16(bitsf(0x3F808001)), 0x3F81);
    ck_assert_uint_eq(f32_to_bf16(bitsf(0x3F807FFF)), 0x3F80);
    ck_assert_uint_eq(f32_to_bf16(bitsf(0x7F7FFFFF)), 0x7F80);   /* FLT_MAX rounds to inf */
    ck_assert_uint_eq(f32_to_bf16(INFINITY), 0x7F80);
    uint16_t nan = f32_to_bf16(bitsf(0x7F800001));               /* signalling NaN stays NaN */
    ck_assert(isnan(bf16_to_f32(nan)));
    ck_assert(bf16_to_f32(0x3F80) == 1.0f);
    ck_assert(bf16_to_f32(0x4049) == 3.140625f);
    for (uint32_t h = 0; h < 65536; h++) {
        float f = bf16_to_f32((uint16_t)h);
        if (!isnan(f)) ck_assert_uint_eq(f32_to_bf16(f), h);
    }
}
END_TEST

/* e4m3 values from their bits: s eeee mmm, bias 7, subnormals at e = 0 */
static float e4m3_value(int code)
{
    int e = code >> 3 & 15, m = code & 7;
    float v = e ? ldexpf(1.0f + m / 8.0f, e - 7) : ldexpf((float)m, -9);
    return code & 0x80 ? -v : v;
}

START_TEST(test_e4m3)
{
    ck_assert(e4m3_round(0.0f) == 0.0f);
    ck_assert(e4m3_round(1.0f) == 1.0f);
    ck_assert(e4m3_round(1.0625f) == 1.0f);          /* tie: even mantissa */
    ck_assert(e4m3_round(1.1875f) == 1.25f);         /* tie: even mantissa */
    ck_assert(e4m3_round(0.3f) == 0.3125f);
    ck_assert(e4m3_round(-0.3f) == -0.3125f);
    ck_assert(e4m3_round(440.0f) == 448.0f);
    ck_assert(e4m3_round(500.0f) == 448.0f);         /* saturates */
    ck_assert(e4m3_round(-1e9f) == -448.0f);
    ck_assert(e4m3_round(ldexpf(1, -9)) == ldexpf(1, -9));     /* smallest subnormal */
    ck_assert(e4m3_round(ldexpf(1, -10)) == 0.0f);             /* tie with 0: even */
    ck_assert(e4m3_round(ldexpf(3, -10)) == ldexpf(1, -8));    /* tie: even */
    ck_assert(isnan(e4m3_round(NAN)));
    /* every finite code is a fixed point; between two neighbours the
     * nearest one is taken */
    for (int c = 0; c < 256; c++) {
        if ((c & 0x7f) == 0x7f) continue;            /* NaN codes */
        float v = e4m3_value(c);
        ck_assert_msg(e4m3_round(v) == v, "code %02x (%g)", c, v);
        if ((c & 0x80) || c + 1 >= 0x7f) continue;
        float w = e4m3_value(c + 1);
        ck_assert(e4m3_round(v + (w - v) * 0.49f) == v);
        ck_assert(e4m3_round(v + (w - v) * 0.51f) == w);
    }
}
END_TEST

START_TEST(test_fp8_row)
{
    float x[128], y[128];
    for (int i = 0; i < 128; i++)
        x[i] = y[i] = sinf(0.37f * i) * 3.0f + (i == 77 ? 9.0f : 0.0f);
    float amax = 0;
    for (int i = 0; i < 128; i++)
        amax = fmaxf(amax, fabsf(x[i]));
    fp8_row_round(y, 128);
    /* the scale: the power of two taking amax into [224, 448) */
    int ex;
    frexpf(amax / 448.0f, &ex);
    float sc = ldexpf(1.0f, ex);
    ck_assert(amax / sc >= 224.0f && amax / sc < 448.0f);
    for (int i = 0; i < 128; i++) {
        ck_assert_msg(e4m3_round(y[i] / sc) == y[i] / sc, "y[%d] = %g is no e4m3 value x %g", i, y[i], sc);
        ck_assert_msg(fabsf(y[i] - x[i]) <= fabsf(x[i]) / 16 + ldexpf(sc, -10), "x[%d] %g -> %g", i, x[i], y[i]);
    }
    float z[4] = {0, 0, 0, 0};
    fp8_row_round(z, 4);
    ck_assert(z[0] == 0 && z[3] == 0);
}
END_TEST

/* ---- hand-built blocks ------------------------------------------------------ */

START_TEST(test_q8_0_block)
{
    uint8_t b[34] = { 0x00, 0x38 };      /* d = 0.5 */
    for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)(j * 8 - 127);
    float y[32];
    dequant_row(GGML_Q8_0, b, y, 32);
    for (int j = 0; j < 32; j++) ck_assert(y[j] == 0.5f * (float)(j * 8 - 127));
}
END_TEST

START_TEST(test_q4_0_block)
{
    /* two blocks, the second at an odd address to show alignment does not matter */
    uint8_t raw[1 + 36];
    uint8_t *b = raw + 1;
    b[0] = 0x00, b[1] = 0x40;            /* d = 2 */
    b[18] = 0x00, b[19] = 0xB8;          /* d = -0.5 */
    for (int j = 0; j < 16; j++) {
        b[2 + j] = (uint8_t)(j | (15 - j) << 4);
        b[20 + j] = (uint8_t)(j | (15 - j) << 4);
    }
    float y[64];
    dequant_row(GGML_Q4_0, b, y, 64);
    for (int j = 0; j < 16; j++) {
        ck_assert(y[j] == 2.0f * (float)(j - 8));
        ck_assert(y[j + 16] == 2.0f * (float)(7 - j));
        ck_assert(y[32 + j] == -0.5f * (float)(j - 8));
        ck_assert(y[48 + j] == -0.5f * (float)(7 - j));
    }
}
END_TEST

START_TEST(test_q4_1_block)
{
    uint8_t b[20] = { 0x00, 0x34, 0x00, 0xBC };   /* d = 0.25, m = -1 */
    for (int j = 0; j < 16; j++) b[4 + j] = (uint8_t)((15 - j) | j << 4);
    float y[32];
    dequant_row(GGML_Q4_1, b, y, 32);
    for (int j = 0; j < 16; j++) {
        ck_assert(y[j] == 0.25f * (float)(15 - j) - 1.0f);
        ck_assert(y[j + 16] == 0.25f * (float)j - 1.0f);
    }
}
END_TEST

/* Q4_K with sub-block scales {1,2,3,4,17,33,49,63} and mins
 * {0,5,10,15,16,32,48,63}, packed by hand per the ggml layout: bytes 0..3
 * scale j | (scale j+4 >> 4) << 6, bytes 4..7 min j | (min j+4 >> 4) << 6,
 * bytes 8..11 (scale j+4 & 15) | (min j+4 & 15) << 4. */
START_TEST(test_q4_k_block)
{
    static const uint8_t scales[12] = { 0x41, 0x82, 0xC3, 0xC4, 0x40, 0x85, 0xCA, 0xCF,
                                        0x01, 0x01, 0x01, 0xFF };
    static const int sc[8] = { 1, 2, 3, 4, 17, 33, 49, 63 };
    static const int mn[8] = { 0, 5, 10, 15, 16, 32, 48, 63 };
    uint8_t b[144] = { 0x00, 0x3C, 0x00, 0x38 };   /* d = 1, dmin = 0.5 */
    memcpy(b + 4, scales, 12);
    /* 32 bytes per 64 values: low nibbles the first sub-block, high the second */
    for (int i = 0; i < 128; i++) b[16 + i] = (uint8_t)((i % 16) | (15 - i % 16) << 4);
    float y[256];
    dequant_row(GGML_Q4_K, b, y, 256);
    for (int e = 0; e < 256; e++) {
        int j = e / 32, l = e % 32;
        int q = j % 2 == 0 ? l % 16 : 15 - l % 16;
        ck_assert_msg(y[e] == (float)(sc[j] * q) - 0.5f * (float)mn[j], "value %d: %g", e, y[e]);
    }
}
END_TEST

/* Q6_K: ql bytes 0x21 and qh bytes 0xE4 give 6-bit codes 1, 17, 34, 50
 * (minus 32: -31, -15, 2, 18) for the four 32-value quarters of each half;
 * one int8 scale per 16 values. */
START_TEST(test_q6_k_block)
{
    uint8_t b[210];
    memset(b, 0x21, 128);
    memset(b + 128, 0xE4, 64);
    for (int j = 0; j < 16; j++) b[192 + j] = (uint8_t)(int8_t)(j - 8);
    b[208] = 0x00, b[209] = 0x38;        /* d = 0.5 */
    static const int qv[4] = { -31, -15, 2, 18 };
    float y[256];
    dequant_row(GGML_Q6_K, b, y, 256);
    for (int e = 0; e < 256; e++) {
        float want = 0.5f * (float)(e / 16 - 8) * (float)qv[(e % 128) / 32];
        ck_assert_msg(y[e] == want, "value %d: %g, want %g", e, y[e], want);
    }
}
END_TEST

START_TEST(test_f16_bf16_rows)
{
    /* more than one SIMD width, with a tail */
    enum { N = 37 };
    uint16_t h[N], bb[N];
    float y[N];
    for (int i = 0; i < N; i++) {
        h[i] = f32_to_fp16((float)i - 18.5f);
        bb[i] = f32_to_bf16((float)i * 0.25f);
    }
    dequant_row(GGML_F16, h, y, N);
    for (int i = 0; i < N; i++) ck_assert(y[i] == (float)i - 18.5f);
    dequant_row(GGML_BF16, bb, y, N);
    for (int i = 0; i < N; i++) ck_assert(y[i] == (float)i * 0.25f);
}
END_TEST

/* ---- round trips -------------------------------------------------------------- */

static float gauss(uint64_t *s)
{
    double u[2];
    for (int k = 0; k < 2; k++) {
        *s = *s * 6364136223846793005ull + 1442695040888963407ull;
        u[k] = ((double)(*s >> 11) + 1) / 9007199254740993.0;
    }
    return (float)(sqrt(-2 * log(u[0])) * cos(2 * M_PI * u[1]));
}

static const struct {
    uint32_t type;
    double rel_rms;     /* relative RMS error bound on gaussian data */
} formats[] = {
    { GGML_F32, 0 }, { GGML_F16, 1e-3 }, { GGML_BF16, 5e-3 }, { GGML_Q8_0, 0.01 },
    { GGML_Q6_K, 0.03 }, { GGML_Q4_0, 0.12 }, { GGML_Q4_1, 0.12 }, { GGML_Q4_K, 0.12 },
};

START_TEST(test_roundtrip)
{
    uint32_t type = formats[_i].type;
    enum { N = 4096 };
    float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float));
    uint8_t *q = malloc(ggml_row_size(type, N));
    uint64_t s = 7 + (uint64_t)_i;
    /* blocks of very different scales, as real weight rows have */
    for (int i = 0; i < N; i++) x[i] = gauss(&s) * (i / 256 % 3 == 0 ? 0.01f : i / 256 % 3 == 1 ? 1 : 30);
    quantize_row(type, x, q, N);
    dequant_row(type, q, y, N);
    int bs = ggml_blck_size(type);
    double e2 = 0, r2 = 0;
    for (int blk = 0; blk < N / 256; blk++) {
        /* measure per 256 so small-scale blocks count as much as large */
        double be = 0, br = 0, amax = 0;
        for (int i = blk * 256; i < blk * 256 + 256; i++) {
            be += (double)(y[i] - x[i]) * (y[i] - x[i]);
            br += (double)x[i] * x[i];
            amax = fmax(amax, fabs(x[i]));
        }
        e2 += be / br;
        r2 += 1;
        for (int i = blk * 256; i < blk * 256 + 256; i++)
            ck_assert_msg(fabs(y[i] - x[i]) <= 0.2 * amax + 1e-6, "%s: value %d: %g vs %g",
                          ggml_type_name(type), i, y[i], x[i]);
    }
    double rel = sqrt(e2 / r2);
    ck_assert_msg(rel <= formats[_i].rel_rms, "%s: relative RMS error %g > %g",
                  ggml_type_name(type), rel, formats[_i].rel_rms);
    if (type == GGML_F32) ck_assert_int_eq(memcmp(x, y, N * sizeof(float)), 0);
    ck_assert(bs >= 1);

    /* zeros and constants survive without NaN */
    for (int i = 0; i < N; i++) x[i] = 0;
    quantize_row(type, x, q, N);
    dequant_row(type, q, y, N);
    for (int i = 0; i < N; i++) ck_assert(y[i] == 0.0f);
    for (int i = 0; i < N; i++) x[i] = -0.75f;
    quantize_row(type, x, q, N);
    dequant_row(type, q, y, N);
    for (int i = 0; i < N; i++) ck_assert_msg(fabsf(y[i] + 0.75f) < 0.05f, "%s: %g", ggml_type_name(type), y[i]);

    /* quantizing the dequantized values again is stable */
    for (int i = 0; i < N; i++) x[i] = gauss(&s);
    quantize_row(type, x, q, N);
    dequant_row(type, q, y, N);
    uint8_t *q2 = malloc(ggml_row_size(type, N));
    float *y2 = malloc(N * sizeof(float));
    quantize_row(type, y, q2, N);
    dequant_row(type, q2, y2, N);
    double d2 = 0, n2 = 0;
    for (int i = 0; i < N; i++) {
        d2 += (double)(y2[i] - y[i]) * (y2[i] - y[i]);
        n2 += (double)y[i] * y[i];
    }
    ck_assert_msg(sqrt(d2 / n2) <= formats[_i].rel_rms, "%s: requantization drift %g",
                  ggml_type_name(type), sqrt(d2 / n2));
    free(q2);
    free(y2);
    free(x);
    free(y);
    free(q);
}
END_TEST

/* The extreme value of a Q8_0/Q4_0 block is represented almost exactly. */
START_TEST(test_block_extremes)
{
    float x[32], y[32];
    uint8_t q[34];
    for (int i = 0; i < 32; i++) x[i] = (float)(i - 10) / 8;
    x[5] = -3.0f;
    quantize_row(GGML_Q8_0, x, q, 32);
    dequant_row(GGML_Q8_0, q, y, 32);
    ck_assert(fabsf(y[5] + 3.0f) < 2e-3f);
    quantize_row(GGML_Q4_0, x, q, 32);
    dequant_row(GGML_Q4_0, q, y, 32);
    ck_assert(fabsf(y[5] + 3.0f) < 2e-3f);
    /* Q4_1 reaches both ends of the range */
    quantize_row(GGML_Q4_1, x, q, 32);
    dequant_row(GGML_Q4_1, q, y, 32);
    ck_assert(fabsf(y[5] + 3.0f) < 2e-3f);
    ck_assert(fabsf(y[31] - 21.0f / 8) < 1e-2f);
}
END_TEST

/* The SIMD decoders give bit-identical rows to the scalar ones, on random
 * quantized bytes (scales kept finite). */
START_TEST(test_simd_matches_scalar)
{
    uint32_t type = formats[_i].type;
    enum { N = 1024 + 256 };
    size_t rb = ggml_row_size(type, N), ts = ggml_type_size(type);
    uint8_t *b = malloc(rb + 1);
    float *y0 = malloc(N * sizeof(float)), *y1 = malloc(N * sizeof(float));
    uint64_t s = 41 + (uint64_t)_i;
    for (size_t i = 0; i < rb + 1; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        b[i] = (uint8_t)(s >> 56);
    }
    uint8_t *row = b + 1;    /* odd address on purpose */
    if (type == GGML_F16 || type == GGML_BF16 || type == GGML_F32) {
        /* every bit pattern except NaNs */
        for (int i = 0; i < N; i++) {
            uint16_t h = (uint16_t)(row[2 * i] | row[2 * i + 1] << 8);
            if (type != GGML_F32 && (h & 0x7f80) == 0x7f80) row[2 * i + 1] &= 0xbf;
            if (type == GGML_F16 && (h & 0x7c00) == 0x7c00) row[2 * i + 1] &= 0xbb;
        }
        if (type == GGML_F32) memset(row, 0x3f, rb);
    } else {
        for (size_t k = 0; k < rb / ts; k++) {
            uint8_t *blk = row + k * ts;
            /* fp16 fields: small finite values */
            size_t pos[2] = { 0, 2 };
            int nf = type == GGML_Q4_1 || type == GGML_Q4_K ? 2 : 1;
            if (type == GGML_Q6_K) pos[0] = 208;
            for (int f = 0; f < nf; f++) blk[pos[f] + 1] &= 0x3b;
        }
    }
    quant_simd(0);
    dequant_row(type, row, y0, N);
    quant_simd(1);
    dequant_row(type, row, y1, N);
    for (int i = 0; i < N; i++) ck_assert(isfinite(y0[i]));
    ck_assert_msg(memcmp(y0, y1, N * sizeof(float)) == 0, "%s: paths differ", ggml_type_name(type));
    free(b);
    free(y0);
    free(y1);
}
END_TEST

/* ---- fp32 kernels --------------------------------------------------------- */

/* _i = 0: the scalar kernels, 1: SIMD where the CPU has it */
START_TEST(test_dot_axpy)
{
    quant_simd(_i);
    enum { N = 301 };
    float a[N], b[N], y[N], y0[N];
    uint64_t s = 3;
    for (int i = 0; i < N; i++) {
        a[i] = gauss(&s);
        b[i] = gauss(&s);
        y[i] = y0[i] = gauss(&s);
    }
    for (int n = 0; n <= N; n += (n < 40 ? 1 : 37)) {
        double ref = 0, mag = 0;
        for (int i = 0; i < n; i++) {
            ref += (double)a[i] * b[i];
            mag += fabs((double)a[i] * b[i]);
        }
        float got = dot_f32(a, b, n);
        ck_assert_msg(fabs(got - ref) <= 1e-5 * mag + 1e-6, "n=%d: %g vs %g", n, got, ref);
    }
    ck_assert(dot_f32(a, b, 0) == 0.0f);
    /* exact small integers: every path must give the exact sum */
    for (int i = 0; i < N; i++) a[i] = (float)(i % 7), b[i] = (float)(i % 5 - 2);
    long exact = 0;
    for (int i = 0; i < N; i++) exact += (i % 7) * (i % 5 - 2);
    ck_assert(dot_f32(a, b, N) == (float)exact);

    axpy_f32(y, 0.5f, a, N - 3);
    for (int i = 0; i < N; i++) {
        float want = i < N - 3 ? y0[i] + 0.5f * a[i] : y0[i];
        ck_assert_msg(fabsf(y[i] - want) <= 1e-6f * (1 + fabsf(want)), "axpy %d", i);
    }

    /* f16 rows decode the same on both paths */
    uint16_t h[N];
    for (int i = 0; i < N; i++) h[i] = f32_to_fp16(a[i] * 0.3f - 1);
    dequant_row(GGML_F16, h, y, N);
    for (int i = 0; i < N; i++) ck_assert(y[i] == fp16_to_f32(h[i]));
    quant_simd(1);
}
END_TEST

/* The fused dequantize-and-dot equals dequant_row then dot_f32 up to
 * summation order. */
START_TEST(test_dot_row)
{
    static const uint32_t types[] = {GGML_Q4_0, GGML_Q4_1, GGML_Q8_0};
    enum { N = 576 };
    uint64_t s = 5;
    float x[N], w[N], wd[N];
    uint8_t row[N * 2];
    for (int k = 0; k < 3; k++) {
        if (!dot_row_fused(types[k]))
            return; /* no AVX2 here: the fused path does not exist */
        for (int i = 0; i < N; i++) {
            x[i] = gauss(&s);
            w[i] = gauss(&s) + (types[k] == GGML_Q4_1 ? 0.5f : 0.0f);
        }
        quantize_row(types[k], w, row, N);
        dequant_row(types[k], row, wd, N);
        double ref = 0, mag = 0;
        for (int i = 0; i < N; i++) {
            ref += (double)wd[i] * x[i];
            mag += fabs((double)wd[i] * x[i]);
        }
        float got = dot_row(types[k], row, x, N);
        ck_assert_msg(fabs(got - ref) <= 1e-5 * mag, "type %u: %g vs %g", types[k], got, ref);
    }
}
END_TEST

/* The 4x3 tile equals twelve dot_f32 calls up to summation order, for
 * lengths with and without a tail, on both paths. */
START_TEST(test_dot_4x3)
{
    enum { N = 203 };
    uint64_t s = 9;
    float a[4 * N], b[3 * N], out[12];
    for (int i = 0; i < 4 * N; i++) a[i] = gauss(&s);
    for (int i = 0; i < 3 * N; i++) b[i] = gauss(&s);
    for (int simd = 0; simd < 2; simd++) {
        quant_simd(simd);
        for (int n = 1; n <= N; n += 29) {
            dot_f32_4x3(a, N, b, N, n, out);
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 3; j++) {
                    double ref = 0, mag = 0;
                    for (int k = 0; k < n; k++) {
                        ref += (double)a[i * N + k] * b[j * N + k];
                        mag += fabs((double)a[i * N + k] * b[j * N + k]);
                    }
                    ck_assert_msg(fabs(out[i * 3 + j] - ref) <= 1e-5 * mag + 1e-6,
                                  "simd %d n %d (%d,%d): %g vs %g", simd, n, i, j, out[i * 3 + j], ref);
                }
        }
    }
    quant_simd(1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("quant");
    TCase *tc = tcase_create("quant");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_fp16_known);
    tcase_add_test(tc, test_fp16_exhaustive);
    tcase_add_test(tc, test_bf16);
    tcase_add_test(tc, test_e4m3);
    tcase_add_test(tc, test_fp8_row);
    tcase_add_test(tc, test_q8_0_block);
    tcase_add_test(tc, test_q4_0_block);
    tcase_add_test(tc, test_q4_1_block);
    tcase_add_test(tc, test_q4_k_block);
    tcase_add_test(tc, test_q6_k_block);
    tcase_add_test(tc, test_f16_bf16_rows);
    tcase_add_loop_test(tc, test_roundtrip, 0, sizeof formats / sizeof formats[0]);
    tcase_add_test(tc, test_block_extremes);
    tcase_add_loop_test(tc, test_simd_matches_scalar, 0, sizeof formats / sizeof formats[0]);
    tcase_add_loop_test(tc, test_dot_axpy, 0, 2);
    tcase_add_test(tc, test_dot_row);
    tcase_add_test(tc, test_dot_4x3);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
