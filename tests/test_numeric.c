/* The host dtype conversions against exhaustive or known values. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../src/common/numeric.h"
#include "../src/core/backends.h"
#include "test.h"

static void bf16_round_trip_is_exact(void)
{
    int64_t bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float x = gdn_bf16_to_f32((uint16_t)h);
        if (!isnan(x) && gdn_f32_to_bf16(x) != h)
            bad++;
    }
    CHECK_MSG(bad == 0, "%lld bf16 values do not survive a round trip", (long long)bad);
}

static void f16_round_trip_is_exact(void)
{
    int64_t bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float x = gdn_f16_to_f32((uint16_t)h);
        if (!isnan(x) && gdn_f32_to_f16(x) != h)
            bad++;
    }
    CHECK_MSG(bad == 0, "%lld f16 values do not survive a round trip", (long long)bad);
}

static void rounding_is_to_nearest_even(void)
{
    /* 1 + 2^-8 lies halfway between bf16 1.0 and 1 + 2^-7: ties go to the even mantissa (1.0). */
    CHECK(gdn_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80);
    CHECK(gdn_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 0x3f81);
    CHECK(gdn_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82); /* tie, odd below: rounds up */
    CHECK(gdn_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00);
    CHECK(gdn_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02);
    CHECK(gdn_f32_to_f16(65520.0f) == 0x7c00); /* overflows to inf */
    CHECK(gdn_f32_to_f16(65504.0f) == 0x7bff);
    CHECK(gdn_f32_to_f16(0x1p-24f) == 0x0001);   /* smallest subnormal */
    CHECK(gdn_f32_to_f16(0x1p-25f) == 0x0000);   /* tie to even: zero */
    CHECK(gdn_f32_to_f16(0x1.8p-24f) == 0x0002); /* tie, odd below: up */
    CHECK(isnan(gdn_bf16_to_f32(gdn_f32_to_bf16(NAN))));
    CHECK(isnan(gdn_f16_to_f32(gdn_f32_to_f16(NAN))));
    CHECK(gdn_f16_to_f32(0x8000) == 0.0f && signbit(gdn_f16_to_f32(0x8000)));
}

/* The row conversions (vectorisable, used on every state row) give the bits of the element-wise
 * ones, for every bf16 pattern widened and for floats around every rounding case narrowed. */
static void bf16_rows_match_elementwise(void)
{
    enum { ROW = 4096 };
    static uint16_t narrow[ROW], expect16[ROW];
    static float wide[ROW], expect32[ROW];
    int64_t mismatches = 0;
    for (uint32_t start = 0; start < 65536; start += ROW) {
        for (int j = 0; j < ROW; j++)
            narrow[j] = (uint16_t)(start + (uint32_t)j);
        gdn_load_row_f32(narrow, GDN_DTYPE_BF16, 0, ROW, wide);
        for (int j = 0; j < ROW; j++) {
            expect32[j] = gdn_bf16_to_f32(narrow[j]);
            mismatches += memcmp(&wide[j], &expect32[j], 4) != 0;
        }
    }
    uint32_t state = 1u;
    const uint32_t tails[] = {0x0000u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu, 0x0001u};
    for (int round = 0; round < 64; round++) {
        for (int j = 0; j < ROW; j++) {
            state = state * 1664525u + 1013904223u;
            /* random high halves (every exponent: zeros, subnormals, inf, NaN) with the tails
             * that decide rounding: exact, just below and at a tie, just above, all ones */
            uint32_t u = (state & 0xffff0000u) | tails[(state >> 3) % 6];
            memcpy(&wide[j], &u, 4);
        }
        gdn_store_row_f32(narrow, GDN_DTYPE_BF16, 0, ROW, wide);
        for (int j = 0; j < ROW; j++) {
            expect16[j] = gdn_f32_to_bf16(wide[j]);
            mismatches += narrow[j] != expect16[j];
        }
    }
    CHECK_MSG(mismatches == 0, "%lld bf16 row conversions differ from the element-wise ones",
              (long long)mismatches);
}

/* Each cpu variant's own bf16 narrowing (avx2, avx512, avx512bf16's VCVTNEPS2BF16) gives the
 * element-wise bits: random high halves (every exponent, so zeros, denormals, inf and NaN; most
 * vectors free of denormals, which the avx512bf16 variant takes through its instruction) with
 * the tails that decide rounding. */
static float narrow_in[1 << 16];
static uint16_t narrow_out[1 << 16];
static int64_t narrow_mismatches;
static void narrowing_on_isa(const char *isa)
{
    (void)isa;
    uint32_t state = 7u;
    const uint32_t tails[] = {0x0000u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu, 0x0001u};
    for (int round = 0; round < 16; round++) {
        for (int j = 0; j < 1 << 16; j++) {
            state = state * 1664525u + 1013904223u;
            uint32_t u = (state & 0xffff0000u) | tails[(state >> 3) % 6];
            memcpy(&narrow_in[j], &u, 4);
        }
        gdn_cpu_narrow_bf16_row(narrow_in, narrow_out, (1 << 16) - round); /* odd tails too */
        for (int j = 0; j < (1 << 16) - round; j++)
            narrow_mismatches += narrow_out[j] != gdn_f32_to_bf16(narrow_in[j]);
    }
    /* then every high half with each low half at the edges of the round-up carry, in order (so
     * most vectors hold no NaN: the avx2 narrowing's 16-bit form) */
    const uint32_t edges[] = {0x0000u, 0x0001u, 0x7ffeu, 0x7fffu, 0x8000u, 0x8001u, 0xfffeu, 0xffffu};
    for (int e = 0; e < 8; e++) {
        for (uint32_t h = 0; h < 1u << 16; h++) {
            uint32_t u = h << 16 | edges[(e + h) % 8];
            memcpy(&narrow_in[h], &u, 4);
        }
        gdn_cpu_narrow_bf16_row(narrow_in, narrow_out, 1 << 16);
        for (int j = 0; j < 1 << 16; j++)
            narrow_mismatches += narrow_out[j] != gdn_f32_to_bf16(narrow_in[j]);
    }
    if (narrow_mismatches)
        test_note("%s: %lld bf16 narrowings differ from gdn_f32_to_bf16", isa, (long long)narrow_mismatches);
}

static void bf16_narrowing_every_isa(void)
{
    narrow_mismatches = 0;
    test_each_cpu_isa(narrowing_on_isa);
    CHECK_MSG(narrow_mismatches == 0, "%lld bf16 narrowings differ from the element-wise ones",
              (long long)narrow_mismatches);
}

void register_numeric_tests(void)
{
    test_add("numeric/bf16_round_trip", bf16_round_trip_is_exact);
    test_add("numeric/f16_round_trip", f16_round_trip_is_exact);
    test_add("numeric/round_to_nearest_even", rounding_is_to_nearest_even);
    test_add("numeric/bf16_rows_match_elementwise", bf16_rows_match_elementwise);
    test_add("numeric/bf16_narrowing_every_isa", bf16_narrowing_every_isa);
}
