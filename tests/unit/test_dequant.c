/* Dequantization of the formats sparsed only reads (Q5_0, Q5_1, Q2_K,
 * Q3_K, Q5_K, IQ4_NL, IQ4_XS): blocks packed by hand with chosen scales,
 * mins, high bits and codes, checked against the values the ggml layout
 * defines, and the type geometry. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/gguf.h"
#include "engine/quant.h"

/* Dequantizes a row of two copies of block blk (ts bytes, bs values) from
 * an odd address; the second copy has the sign of each fp16 field at
 * f16[0..nf) flipped, which negates every value exactly.  That checks the
 * block stride and where the fp16 fields are; y gets the first block. */
static void deq_pair(uint32_t type, const uint8_t *blk, const int *f16, int nf, float *y)
{
    size_t ts = ggml_type_size(type);
    int bs = ggml_blck_size(type);
    ck_assert_uint_gt(ts, 0);
    uint8_t *buf = malloc(2 * ts + 1), *row = buf + 1;
    float *out = malloc(2 * (size_t)bs * sizeof(float));
    memcpy(row, blk, ts);
    memcpy(row + ts, blk, ts);
    for (int f = 0; f < nf; f++) row[ts + (size_t)f16[f] + 1] ^= 0x80;
    dequant_row(type, row, out, 2 * bs);
    for (int e = 0; e < bs; e++)
        ck_assert_msg(out[bs + e] == -out[e], "%s: block 2 value %d: %g, want %g",
                      ggml_type_name(type), e, out[bs + e], -out[e]);
    memcpy(y, out, (size_t)bs * sizeof(float));
    free(out);
    free(buf);
}

/* fifth bit of value e, written out per value from qh bytes, LSB first */
static int bit_of(const char *bits, int e) { return bits[e] == '1'; }

/* Q5_0: d = 0.5; qh = 13 8E 65 F2 (no byte reads the same bit-reversed,
 * so a swapped bit order shows); nibble byte j holds value j (low) and
 * j + 16 (high); byte j = j | (15 - j) << 4. */
START_TEST(test_q5_0_block)
{
    static const char bits[] = "11001000" "01110001" "10100110" "01001111";
    uint8_t b[22] = { 0x00, 0x38, 0x13, 0x8E, 0x65, 0xF2 };
    for (int j = 0; j < 16; j++) b[6 + j] = (uint8_t)(j | (15 - j) << 4);
    float y[32];
    deq_pair(GGML_Q5_0, b, (const int[]){ 0 }, 1, y);
    for (int e = 0; e < 32; e++) {
        int nib = e < 16 ? e : 15 - (e - 16);
        float want = 0.5f * (float)((nib | bit_of(bits, e) << 4) - 16);
        ck_assert_msg(y[e] == want, "value %d: %g, want %g", e, y[e], want);
    }
    /* 0: code 16; 5: 5; 16: 15 + 16; 24: 7; 30: 1 + 16 */
    ck_assert(y[0] == 0.0f && y[5] == -5.5f && y[16] == 7.5f && y[24] == -4.5f && y[30] == 0.5f);
}
END_TEST

/* Q5_1: d = 0.25, m = -3; qh = 2D C1 07 9A; nibbles as Q5_0. */
START_TEST(test_q5_1_block)
{
    static const char bits[] = "10110100" "10000011" "11100000" "01011001";
    uint8_t b[24] = { 0x00, 0x34, 0x00, 0xC2, 0x2D, 0xC1, 0x07, 0x9A };
    for (int j = 0; j < 16; j++) b[8 + j] = (uint8_t)(j | (15 - j) << 4);
    float y[32];
    deq_pair(GGML_Q5_1, b, (const int[]){ 0, 2 }, 2, y);
    for (int e = 0; e < 32; e++) {
        int nib = e < 16 ? e : 15 - (e - 16);
        float want = 0.25f * (float)(nib | bit_of(bits, e) << 4) - 3.0f;
        ck_assert_msg(y[e] == want, "value %d: %g, want %g", e, y[e], want);
    }
    /* 0: code 16; 1: 1; 12: 12; 16: 15 + 16; 27: 4 + 16 */
    ck_assert(y[0] == 1.0f && y[1] == -2.75f && y[12] == 0.0f && y[16] == 4.75f && y[27] == 2.0f);
}
END_TEST

static const int grid[16] = { -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113 };

/* IQ4_NL: d = 2; byte j = j | (15 - j) << 4, so every table entry appears
 * in each half. */
START_TEST(test_iq4_nl_block)
{
    uint8_t b[18] = { 0x00, 0x40 };
    for (int j = 0; j < 16; j++) b[2 + j] = (uint8_t)(j | (15 - j) << 4);
    float y[32];
    deq_pair(GGML_IQ4_NL, b, (const int[]){ 0 }, 1, y);
    for (int j = 0; j < 16; j++) {
        ck_assert_msg(y[j] == 2.0f * (float)grid[j], "value %d: %g", j, y[j]);
        ck_assert_msg(y[j + 16] == 2.0f * (float)grid[15 - j], "value %d: %g", j + 16, y[j + 16]);
    }
    ck_assert(y[0] == -254.0f && y[8] == 2.0f && y[16] == 226.0f && y[31] == -254.0f);
}
END_TEST

/* IQ4_XS: d = 0.5; 6-bit scales {0, 1, 17, 32, 33, 47, 62, 63} (minus 32:
 * -32, -31, -15, 0, 1, 15, 30, 31).  Low nibbles in scales_l: 10 01 F1 FE;
 * top bit pairs {0,0,1,2,2,2,3,3} in scales_h = 0xFA90 (bytes 90 FA).
 * Sub-block j's 16 bytes: (l + j) & 15 low, 15 - l high. */
START_TEST(test_iq4_xs_block)
{
    static const int sc[8] = { -32, -31, -15, 0, 1, 15, 30, 31 };
    uint8_t b[136] = { 0x00, 0x38, 0x90, 0xFA, 0x10, 0x01, 0xF1, 0xFE };
    for (int j = 0; j < 8; j++)
        for (int l = 0; l < 16; l++) b[8 + 16 * j + l] = (uint8_t)(((l + j) & 15) | (15 - l) << 4);
    float y[256];
    deq_pair(GGML_IQ4_XS, b, (const int[]){ 0 }, 1, y);
    for (int e = 0; e < 256; e++) {
        int j = e / 32, r = e % 32;
        int idx = r < 16 ? (r + j) & 15 : 15 - (r - 16);
        float want = 0.5f * (float)sc[j] * (float)grid[idx];
        ck_assert_msg(y[e] == want, "value %d: %g, want %g", e, y[e], want);
    }
    ck_assert(y[0] == 2032.0f && y[100] == 0.0f && y[200] == 1335.0f && y[255] == -1968.5f);
}
END_TEST

/* 2-bit code of value e of a 256-value Q2_K/Q3_K block: bit pair k of
 * byte l of its half n is value 128n + 32k + l. */
static int code2(const uint8_t *qs, int e)
{
    int n = e / 128, k = e % 128 / 32, l = e % 32;
    return (qs[32 * n + l] >> (2 * k)) & 3;
}

/* Q2_K: d = 1, dmin = 0.5; scale byte j = j | (15 - j) << 4 (sc j, min
 * 15 - j) for the 16 sub-blocks; codes from bytes i * 37 + 11, which
 * put every pair value in every plane. */
START_TEST(test_q2_k_block)
{
    uint8_t b[84];
    for (int j = 0; j < 16; j++) b[j] = (uint8_t)(j | (15 - j) << 4);
    for (int i = 0; i < 64; i++) b[16 + i] = (uint8_t)(i * 37 + 11);
    b[80] = 0x00, b[81] = 0x3C, b[82] = 0x00, b[83] = 0x38;
    float y[256];
    deq_pair(GGML_Q2_K, b, (const int[]){ 80, 82 }, 2, y);
    for (int e = 0; e < 256; e++) {
        int j = e / 16;
        float want = (float)(j * code2(b + 16, e)) - 0.5f * (float)(15 - j);
        ck_assert_msg(y[e] == want, "value %d: %g, want %g", e, y[e], want);
    }
    /* 0: sub-block 0, code 3 (byte 11); 47: sub-block 2, pair 1 of byte 15
     * (54) = 1; 250: sub-block 15, pair 3 of byte 58 (109) = 1 */
    ck_assert(y[0] == -7.5f && y[47] == -4.5f && y[250] == 15.0f);
}
END_TEST

/* Q3_K: d = 0.5; 6-bit scales (bias 32) S below, packed: low nibbles of
 * sub-blocks 0..7 in bytes 0..7 low, 8..15 in bytes 0..7 high; top bit
 * pairs of j in byte 8 + j % 4 at bit 2 * (j / 4).  Codes as Q2_K; hmask
 * bytes l * 0x45 + 0x3A, bit k of byte l for value 32k + l. */
START_TEST(test_q3_k_block)
{
    static const int S[16] = { 0, 63, 32, 31, 1, 62, 16, 48, 33, 15, 47, 17, 40, 24, 56, 8 };
    static const uint8_t packed[12] = { 0x10, 0xFF, 0xF0, 0x1F, 0x81, 0x8E, 0x80, 0x80,
                                        0xA0, 0x4F, 0xE6, 0x1D };
    uint8_t b[110];
    for (int l = 0; l < 32; l++) b[l] = (uint8_t)(l * 0x45 + 0x3A);
    for (int i = 0; i < 64; i++) b[32 + i] = (uint8_t)(i * 37 + 11);
    memcpy(b + 96, packed, 12);
    b[108] = 0x00, b[109] = 0x38;
    float y[256];
    deq_pair(GGML_Q3_K, b, (const int[]){ 108 }, 1, y);
    for (int e = 0; e < 256; e++) {
        int hbit = (b[e % 32] >> (e / 32)) & 1;
        int q = code2(b + 32, e) - (hbit ? 0 : 4);
        float want = 0.5f * (float)(S[e / 16] - 32) * (float)q;
        ck_assert_msg(y[e] == want, "value %d: %g, want %g", e, y[e], want);
    }
    /* 0: scale -32, code 3, high bit clear: -1; 60: scale -1, code 1,
     * bit 1 of 198 set; 225: scale 24, code 3 (208 >> 6), bit 7 of 127
     * clear: -1 */
    ck_assert(y[0] == 16.0f && y[60] == -0.5f && y[225] == -12.0f);
}
END_TEST

/* Q5_K: d = 1, dmin = 0.5; the scale bytes of test_quant's Q4_K block
 * (scales {1,2,3,4,17,33,49,63}, mins {0,5,10,15,16,32,48,63}); qh bytes
 * l * 0x45 + 0x3A, bit k of byte l the fifth bit of value 32k + l;
 * nibble bytes i * 37 + 11, low nibbles for even sub-blocks, high odd. */
START_TEST(test_q5_k_block)
{
    static const uint8_t scales[12] = { 0x41, 0x82, 0xC3, 0xC4, 0x40, 0x85, 0xCA, 0xCF,
                                        0x01, 0x01, 0x01, 0xFF };
    static const int sc[8] = { 1, 2, 3, 4, 17, 33, 49, 63 };
    static const int mn[8] = { 0, 5, 10, 15, 16, 32, 48, 63 };
    uint8_t b[176] = { 0x00, 0x3C, 0x00, 0x38 };
    memcpy(b + 4, scales, 12);
    for (int l = 0; l < 32; l++) b[16 + l] = (uint8_t)(l * 0x45 + 0x3A);
    for (int i = 0; i < 128; i++) b[48 + i] = (uint8_t)(i * 37 + 11);
    float y[256];
    deq_pair(GGML_Q5_K, b, (const int[]){ 0, 2 }, 2, y);
    for (int e = 0; e < 256; e++) {
        int j = e / 32, l = e % 32;
        uint8_t nb = b[48 + 32 * (j / 2) + l];
        int q = (j % 2 ? nb >> 4 : nb & 15) | ((b[16 + l] >> j) & 1) << 4;
        float want = (float)(sc[j] * q) - 0.5f * (float)mn[j];
        ck_assert_msg(y[e] == want, "value %d: %g, want %g", e, y[e], want);
    }
    /* 0: 11, fifth bit clear; 33: 3 + 16, min 5; 255: 6 + 16, min 63 */
    ck_assert(y[0] == 11.0f && y[33] == 35.5f && y[255] == 1354.5f);
}
END_TEST

START_TEST(test_geometry)
{
    static const struct {
        uint32_t type;
        int bs;
        size_t ts;
        const char *name;
    } t[] = {
        { GGML_Q5_0, 32, 22, "q5_0" },     { GGML_Q5_1, 32, 24, "q5_1" },
        { GGML_Q2_K, 256, 84, "q2_K" },    { GGML_Q3_K, 256, 110, "q3_K" },
        { GGML_Q5_K, 256, 176, "q5_K" },   { GGML_IQ4_NL, 32, 18, "iq4_nl" },
        { GGML_IQ4_XS, 256, 136, "iq4_xs" },
    };
    static const uint32_t ids[] = { 6, 7, 10, 11, 13, 20, 23 };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        ck_assert_uint_eq(t[i].type, ids[i]);
        ck_assert_int_eq(ggml_blck_size(t[i].type), t[i].bs);
        ck_assert_uint_eq(ggml_type_size(t[i].type), t[i].ts);
        ck_assert_str_eq(ggml_type_name(t[i].type), t[i].name);
        ck_assert_uint_eq(ggml_row_size(t[i].type, 4096), 4096 / (size_t)t[i].bs * t[i].ts);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dequant");
    TCase *tc = tcase_create("dequant");
    tcase_add_test(tc, test_q5_0_block);
    tcase_add_test(tc, test_q5_1_block);
    tcase_add_test(tc, test_iq4_nl_block);
    tcase_add_test(tc, test_iq4_xs_block);
    tcase_add_test(tc, test_q2_k_block);
    tcase_add_test(tc, test_q3_k_block);
    tcase_add_test(tc, test_q5_k_block);
    tcase_add_test(tc, test_geometry);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
