/*
 * The body of the per-item work (decode_item.h), included by decode_item_*.c, each compiled for
 * one instruction set; GDN_CPU_ITEM_FN names the function it defines. The inner loops are
 * unit-stride float loops written for the vectoriser: eight partial sums per dot product (so
 * that it vectorises without reassociating, no -ffast-math), fused multiply-adds where the
 * target has them.
 */
#include <math.h>
#include <string.h>

#include "../common/numeric.h"
#include "decode_item.h"

#if defined(GDN_CPU_AVX512) || defined(GDN_CPU_AVX2)
#include <immintrin.h>
#endif

/*
 * One token, vk rows, written with the target's vectors (the auto-vectorised loops were slower
 * than the SSE build on AVX2 and AVX-512, measured on an Emerald Rapids VM; bench/NOTES.md):
 * each row is read once for both dot products (two accumulators per product), reduced, and
 * written once with s' = decay s + u k. bf16 rows are widened by a shift and narrowed with the
 * same round-to-nearest-even as gdn_f32_to_bf16 (NaN kept quiet), so every variant stores the
 * same bits for the same float. Returns 0 when the variant has no such kernel or K does not fit
 * its vectors; the generic loops then run.
 */
#if defined(GDN_CPU_AVX512)
#define GDN_VEC_W 16
typedef __m512 vec_f;
static inline vec_f vload_f32(const float *p) { return _mm512_loadu_ps(p); }
static inline void vstore_f32(float *p, vec_f x) { _mm512_storeu_ps(p, x); }
static inline vec_f vload_bf16(const uint16_t *p)
{
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
/* gdn_f32_to_bf16 of each float (its bits u), in the low half of each 32-bit lane */
static inline __m512i bf16_bits(__m512i u)
{
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i rounded =
        _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_mask_blend_epi32(nan, rounded, quiet);
}
static inline void vstore_bf16(uint16_t *p, vec_f x)
{
    const __m512i u = _mm512_castps_si512(x);
#if defined(GDN_CPU_AVX512_BF16)
    /* VCVTNEPS2BF16 rounds to nearest even and quiets NaN exactly as below, but flushes
     * denormal inputs to zero: vectors holding one (VFPCLASSPS) take the integer sequence, so
     * every variant stores the same bits. */
    if (!_mm512_fpclass_ps_mask(x, 0x20)) { /* class 0x20: denormal */
        _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(x));
        return;
    }
#endif
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtepi32_epi16(bf16_bits(u)));
}
static inline vec_f vfma(vec_f a, vec_f b, vec_f c) { return _mm512_fmadd_ps(a, b, c); }
static inline vec_f vmul(vec_f a, vec_f b) { return _mm512_mul_ps(a, b); }
static inline vec_f vadd(vec_f a, vec_f b) { return _mm512_add_ps(a, b); }
static inline vec_f vset1(float x) { return _mm512_set1_ps(x); }
static inline vec_f vzero(void) { return _mm512_setzero_ps(); }
static inline float vsum(vec_f x) { return _mm512_reduce_add_ps(x); }
#elif defined(GDN_CPU_AVX2)
#define GDN_VEC_W 8
typedef __m256 vec_f;
static inline vec_f vload_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline void vstore_f32(float *p, vec_f x) { _mm256_storeu_ps(p, x); }
static inline vec_f vload_bf16(const uint16_t *p)
{
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
/* u + 0x7fff + (bit 16 of u): gdn_f32_to_bf16's rounding of a float that is not NaN, the bf16 in
 * the high half of each 32-bit lane */
static inline __m256i bf16_round(__m256i u)
{
    return _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)),
                            _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1)));
}
/* gdn_f32_to_bf16 of each float (its bits u), in the low half of each 32-bit lane */
static inline __m256i bf16_bits(__m256i u)
{
    const __m256i rounded = _mm256_srli_epi32(bf16_round(u), 16);
    /* NaN: |u| > 0x7f800000, as signed compares of non-negative values */
    const __m256i nan =
        _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    return _mm256_blendv_epi8(rounded, quiet, nan);
}
static inline void vstore_bf16(uint16_t *p, vec_f x)
{
    const __m256i h = bf16_bits(_mm256_castps_si256(x));
    /* 8 x 32-bit -> 8 x 16-bit: values are < 2^16, so an unsigned saturating pack is exact */
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    _mm_storeu_si128((__m128i *)p, packed);
}
static inline vec_f vfma(vec_f a, vec_f b, vec_f c) { return _mm256_fmadd_ps(a, b, c); }
static inline vec_f vmul(vec_f a, vec_f b) { return _mm256_mul_ps(a, b); }
static inline vec_f vadd(vec_f a, vec_f b) { return _mm256_add_ps(a, b); }
static inline vec_f vset1(float x) { return _mm256_set1_ps(x); }
static inline vec_f vzero(void) { return _mm256_setzero_ps(); }
static inline float vsum(vec_f x)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

#if defined(GDN_VEC_W)
/* Rows of one token; ST is float or uint16_t (bf16). */
#define GDN_ROWS_ONE_TOKEN(NAME, ST, LOAD, STORE)                                                            \
    static void NAME(const gdn_problem *p, int64_t src, int64_t dst, const float *restrict k,                \
                     const float *restrict q, const float *restrict v, float decay, float beta, float kq,    \
                     float *restrict out)                                                                    \
    {                                                                                                        \
        const int64_t K = p->head_dim_k;                                                                     \
        ST *pool = p->state_pool;                                                                            \
        const vec_f vdecay = vset1(decay);                                                                   \
        for (int64_t j = 0; j < p->head_dim_v; j++) {                                                        \
            const ST *from = pool + src + j * K;                                                             \
            /* the row 8 KiB ahead into L2: the hardware prefetchers alone left the f32 rows 12-17%          \
             * slower on the AMD EPYC (Zen 4) VM; 4 and 16 KiB were no better (bench/NOTES.md) */            \
            for (int64_t l = 0; l < K * (int64_t)sizeof(ST); l += 64)                                        \
                _mm_prefetch((const char *)from + 8192 + l, _MM_HINT_T1);                                    \
            vec_f k0 = vzero(), k1 = vzero(), q0 = vzero(), q1 = vzero();                                    \
            for (int64_t i = 0; i < K; i += 2 * GDN_VEC_W) {                                                 \
                const vec_f x0 = LOAD(from + i), x1 = LOAD(from + i + GDN_VEC_W);                            \
                k0 = vfma(x0, vload_f32(k + i), k0), k1 = vfma(x1, vload_f32(k + i + GDN_VEC_W), k1);        \
                q0 = vfma(x0, vload_f32(q + i), q0), q1 = vfma(x1, vload_f32(q + i + GDN_VEC_W), q1);        \
            }                                                                                                \
            const float sk = vsum(k0) + vsum(k1), sq = vsum(q0) + vsum(q1);                                  \
            const float u = beta * (v[j] - decay * sk);                                                      \
            out[j] = decay * sq + u * kq;                                                                    \
            if (dst < 0)                                                                                     \
                continue;                                                                                    \
            ST *to = pool + dst + j * K;                                                                     \
            const vec_f vu = vset1(u);                                                                       \
            for (int64_t i = 0; i < K; i += GDN_VEC_W)                                                       \
                STORE(to + i, vfma(vu, vload_f32(k + i), vmul(vdecay, LOAD(from + i))));                     \
        }                                                                                                    \
    }
GDN_ROWS_ONE_TOKEN(rows_one_token_f32, float, vload_f32, vstore_f32)
GDN_ROWS_ONE_TOKEN(rows_one_token_bf16, uint16_t, vload_bf16, vstore_bf16)
#undef GDN_ROWS_ONE_TOKEN
#endif

#if defined(GDN_CPU_AVX512) || defined(GDN_CPU_AVX2)
/*
 * K = 128 bf16 rows in even/odd form: each vector-wide block of bf16 (32 with AVX-512, 16 with
 * AVX2) is one vector of 32-bit pairs, widened into its even elements (a shift) and its odd
 * ones (a mask) with one instruction each, where widening in order takes two (VPMOVZXWD, a
 * shift) per vector. The dot products do not care about order (k and q are split the same way
 * once per head); the narrowing puts the pairs back together.
 */
#if defined(GDN_CPU_AVX512)
#define GDN_K128_BLOCKS 4 /* vectors of bf16 pairs a row */
#define GDN_K128_SUMS 2   /* sums a dot product (dots2_bf16_k128) */

/* Narrows one row from its even (ye) and odd (yo) elements, 32 of each per block c. The
 * instruction (VCVTNE2PS2BF16) rounds to nearest even and quiets NaN exactly as bf16_bits,
 * but reads denormal inputs as zero. A normal float never rounds to a bf16 zero, so a row whose
 * converted words hold no +-0 had no denormal input; one that does (a denormal, or only a true
 * zero) takes the integer sequence. One test per row: a class test, a mask test and two taken
 * branches per vector (GCC moved the instruction out of line) were ~30 of a row's ~150
 * instructions. */
#if defined(GDN_CPU_AVX512_BF16)
/* VCVTNE2PS2BF16's words (the 16 even elements, then the 16 odd) back in row order */
static inline __m512i bf16_pairs_order(void)
{
    return _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5,
                            20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
}
#endif

/* One block of 32 (even elements ye, odd yo) narrowed by the integer sequence (any float) */
static inline void vstore_bf16_eo1_bits(uint16_t *to, vec_f ye, vec_f yo)
{
    _mm512_storeu_si512(to, _mm512_or_si512(bf16_bits(_mm512_castps_si512(ye)),
                                            _mm512_slli_epi32(bf16_bits(_mm512_castps_si512(yo)), 16)));
}

static inline void vstore_bf16_eo4(uint16_t *to, const vec_f ye[4], const vec_f yo[4])
{
#if defined(GDN_CPU_AVX512_BF16)
    __m512i w[4];
    /* words that are not +-0, chained through the write mask (one test a vector, no mask ORs) */
    __mmask32 nonzero = 0xffffffffu;
    for (int c = 0; c < 4; c++) {
        w[c] = (__m512i)_mm512_cvtne2ps_pbh(yo[c], ye[c]); /* the 16 even words, then the 16 odd */
        nonzero = _mm512_mask_test_epi16_mask(nonzero, w[c], _mm512_set1_epi16(0x7fff));
    }
    if (__builtin_expect(nonzero == 0xffffffffu, 1)) {
        for (int c = 0; c < 4; c++)
            _mm512_storeu_si512(to + 32 * c, _mm512_permutexvar_epi16(bf16_pairs_order(), w[c]));
        return;
    }
#endif
    for (int c = 0; c < 4; c++)
        vstore_bf16_eo1_bits(to + 32 * c, ye[c], yo[c]);
}

/* k and q of the token split even/odd, in registers (AVX-512 has 32) */
typedef struct {
    vec_f ke[4], ko[4], qe[4], qo[4];
} k128_inputs;

/* 32 floats as their even and odd elements */
static inline void split_even_odd(const float *x, vec_f *even, vec_f *odd)
{
    const __m512i e = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const vec_f a = vload_f32(x), b = vload_f32(x + 16);
    *even = _mm512_permutex2var_ps(a, e, b);
    *odd = _mm512_permutex2var_ps(a, _mm512_add_epi32(e, _mm512_set1_epi32(1)), b);
}

static inline void k128_inputs_of(const float *k, const float *q, k128_inputs *in)
{
    for (int c = 0; c < 4; c++)
        split_even_odd(k + 32 * c, &in->ke[c], &in->ko[c]),
            split_even_odd(q + 32 * c, &in->qe[c], &in->qo[c]);
}

/* The totals of four vectors, lane by lane (one shuffle tree for all four instead of four
 * separate reductions, ~17 instructions against ~32): the total of a in s[0], b in s[1]... */
static inline void vsum4(vec_f a, vec_f b, vec_f c, vec_f d, float s[4])
{
    /* 512 -> 256: a's halves added in the low half, b's in the high half */
    const vec_f ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xee));
    const vec_f cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, 0x44), _mm512_shuffle_f32x4(c, d, 0xee));
    /* 128-bit lanes: a's four partial sums, b's, c's, d's */
    vec_f t = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, 0x88), _mm512_shuffle_f32x4(ab, cd, 0xdd));
    t = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4e));
    t = _mm512_add_ps(t, _mm512_permute_ps(t, 0xb1));
    s[0] = _mm512_cvtss_f32(t);
    s[1] = _mm_cvtss_f32(_mm512_extractf32x4_ps(t, 1));
    s[2] = _mm_cvtss_f32(_mm512_extractf32x4_ps(t, 2));
    s[3] = _mm_cvtss_f32(_mm512_extractf32x4_ps(t, 3));
}

static inline __m512i vload_pairs(const uint16_t *p) { return _mm512_loadu_si512(p); }
static inline vec_f pairs_even(__m512i x) { return _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)); }
static inline vec_f pairs_odd(__m512i x)
{
    return _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32((int)0xffff0000u)));
}
static inline vec_f k128_ke(const k128_inputs *in, int c) { return in->ke[c]; }
static inline vec_f k128_ko(const k128_inputs *in, int c) { return in->ko[c]; }
static inline vec_f k128_qe(const k128_inputs *in, int c) { return in->qe[c]; }
static inline vec_f k128_qo(const k128_inputs *in, int c) { return in->qo[c]; }

/* s' = decay s + u k for one K = 128 row from its decayed form (dots2_bf16_k128's output). */
static inline void update_bf16_k128(const float *decayed, uint16_t *to, float u, const k128_inputs *in)
{
    const vec_f vu = vset1(u);
    vec_f ye[4], yo[4];
    for (int c = 0; c < 4; c++) {
        ye[c] = vfma(vu, in->ke[c], _mm512_load_ps(decayed + 32 * c));
        yo[c] = vfma(vu, in->ko[c], _mm512_load_ps(decayed + 32 * c + 16));
    }
    vstore_bf16_eo4(to, ye, yo);
}

/* Block c (32 elements) of that update, narrowed and stored, for the fused step
 * (dots2_update2_bf16_k128). With VCVTNE2PS2BF16 the block is stored as converted and its +-0
 * words clear bits of *nonzero: a row with any is stored again by update_bf16_k128_bits (the
 * instruction reads a denormal as zero; see vstore_bf16_eo4). */
typedef __mmask32 row_check; /* the words that were not +-0 */
enum { kRowCheckInit = -1 }; /* (all 32 bits) */
static inline void update_block_store_bf16_k128(const float *decayed, vec_f vu, const k128_inputs *in, int c,
                                                uint16_t *to, row_check *nonzero)
{
    const vec_f ye = vfma(vu, in->ke[c], _mm512_load_ps(decayed + 32 * c));
    const vec_f yo = vfma(vu, in->ko[c], _mm512_load_ps(decayed + 32 * c + 16));
#if defined(GDN_CPU_AVX512_BF16)
    const __m512i w = (__m512i)_mm512_cvtne2ps_pbh(yo, ye);
    *nonzero = _mm512_mask_test_epi16_mask(*nonzero, w, _mm512_set1_epi16(0x7fff));
    _mm512_storeu_si512(to + 32 * c, _mm512_permutexvar_epi16(bf16_pairs_order(), w));
#else
    (void)nonzero;
    vstore_bf16_eo1_bits(to + 32 * c, ye, yo);
#endif
}

/* The whole update of a row by the integer narrowing, out of line (rare: a row with +-0 words) */
static __attribute__((noinline, cold)) void update_bf16_k128_bits(const float *decayed, uint16_t *to, float u,
                                                                  const k128_inputs *in)
{
    const vec_f vu = vset1(u);
    for (int c = 0; c < 4; c++)
        vstore_bf16_eo1_bits(to + 32 * c, vfma(vu, in->ke[c], _mm512_load_ps(decayed + 32 * c)),
                             vfma(vu, in->ko[c], _mm512_load_ps(decayed + 32 * c + 16)));
}
static inline void restore_row_bf16_k128(const float *decayed, uint16_t *to, float u, const k128_inputs *in,
                                         row_check nonzero)
{
    if (__builtin_expect(nonzero != (row_check)kRowCheckInit, 0))
        update_bf16_k128_bits(decayed, to, u, in);
}
#else /* AVX2 */
#define GDN_K128_BLOCKS 8
#define GDN_K128_SUMS 1

/* k and q of the token split even/odd, in L1: 16 vector registers do not hold them beside a
 * row's work (each vector is loaded once per block, for both rows of a pair) */
typedef struct {
    _Alignas(32) float ke[64], ko[64], qe[64], qo[64];
} k128_inputs;

/* 16 floats as their even and odd elements, in the lane order of a vector of bf16 pairs */
static inline void split_even_odd(const float *x, vec_f *even, vec_f *odd)
{
    const vec_f a = vload_f32(x), b = vload_f32(x + 8);
    /* per 128-bit lane x0 x2 x8 x10 | x4 x6 x12 x14, then the middle 64-bit pieces swapped */
    const __m256d e = _mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88));
    const __m256d o = _mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xdd));
    *even = _mm256_castpd_ps(_mm256_permute4x64_pd(e, 0xd8));
    *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(o, 0xd8));
}

static inline void k128_inputs_of(const float *k, const float *q, k128_inputs *in)
{
    for (int c = 0; c < 8; c++) {
        vec_f e, o;
        split_even_odd(k + 16 * c, &e, &o);
        _mm256_store_ps(in->ke + 8 * c, e), _mm256_store_ps(in->ko + 8 * c, o);
        split_even_odd(q + 16 * c, &e, &o);
        _mm256_store_ps(in->qe + 8 * c, e), _mm256_store_ps(in->qo + 8 * c, o);
    }
}

/* The totals of four vectors, lane by lane: the total of a in s[0], b in s[1]... */
static inline void vsum4(vec_f a, vec_f b, vec_f c, vec_f d, float s[4])
{
    const vec_f t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    _mm_storeu_ps(s, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}

static inline __m256i vload_pairs(const uint16_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline vec_f pairs_even(__m256i x) { return _mm256_castsi256_ps(_mm256_slli_epi32(x, 16)); }
static inline vec_f pairs_odd(__m256i x)
{
    return _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32((int)0xffff0000u)));
}
static inline vec_f k128_ke(const k128_inputs *in, int c) { return _mm256_load_ps(in->ke + 8 * c); }
static inline vec_f k128_ko(const k128_inputs *in, int c) { return _mm256_load_ps(in->ko + 8 * c); }
static inline vec_f k128_qe(const k128_inputs *in, int c) { return _mm256_load_ps(in->qe + 8 * c); }
static inline vec_f k128_qo(const k128_inputs *in, int c) { return _mm256_load_ps(in->qo + 8 * c); }

/*
 * Narrows 64 elements that hold no NaN from their even (ye) and odd (yo) elements, 8 of each per
 * block c, with no conversion instruction (AVX2 has none), as gdn_f32_to_bf16 for every float but
 * NaN, in 16-bit words: the high words of the pair (truncated) by one blend, the low words by
 * another, and the round-up of each word from VPAVGW, whose 17-bit sum (lo + (0x7ffe | lsb) + 1)
 * has its top bit set exactly when lo + 0x7fff + lsb carries into the high word. A word of a
 * float that is not NaN is at most 0xff80 (-inf), so adding the carry never overflows it. 9
 * instructions per 16 elements against 10 for rounding each float (bf16_round) and a blend
 * (bf16 rows 3-4% faster on the AMD EPYC VM). Checked once against the scalar rounding for all
 * 2^32 patterns but NaN; numeric/bf16_narrowing_every_isa checks every high word with the low
 * words at the edges of the carry.
 */
static inline void vstore_bf16_eo1_no_nan(uint16_t *to, vec_f ye, vec_f yo)
{
    const __m256i e = _mm256_castps_si256(ye), o = _mm256_castps_si256(yo);
    const __m256i high = _mm256_blend_epi16(_mm256_srli_epi32(e, 16), o, 0xaa);
    const __m256i low = _mm256_blend_epi16(e, _mm256_slli_epi32(o, 16), 0xaa);
    const __m256i bias =
        _mm256_or_si256(_mm256_and_si256(high, _mm256_set1_epi16(1)), _mm256_set1_epi16(0x7ffe));
    const __m256i carry = _mm256_srli_epi16(_mm256_avg_epu16(low, bias), 15);
    _mm256_storeu_si256((__m256i *)to, _mm256_add_epi16(high, carry));
}

static inline void vstore_bf16_eo4_no_nan(uint16_t *to, const vec_f ye[4], const vec_f yo[4])
{
    for (int c = 0; c < 4; c++)
        vstore_bf16_eo1_no_nan(to + 16 * c, ye[c], yo[c]);
}

/* The same for any floats: one unordered compare per pair of vectors finds a NaN in either, and
 * only then do they take bf16_bits. */
static inline void vstore_bf16_eo4(uint16_t *to, const vec_f ye[4], const vec_f yo[4])
{
    vec_f nan = _mm256_cmp_ps(ye[0], yo[0], _CMP_UNORD_Q);
    for (int c = 1; c < 4; c++)
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(ye[c], yo[c], _CMP_UNORD_Q));
    if (__builtin_expect(_mm256_testz_ps(nan, nan), 1)) {
        vstore_bf16_eo4_no_nan(to, ye, yo);
        return;
    }
    for (int c = 0; c < 4; c++)
        _mm256_storeu_si256((__m256i *)(to + 16 * c),
                            _mm256_or_si256(bf16_bits(_mm256_castps_si256(ye[c])),
                                            _mm256_slli_epi32(bf16_bits(_mm256_castps_si256(yo[c])), 16)));
}

/* y = u k + decayed for block b of a row (16 elements): its even elements in *ye, the odd in *yo */
static inline void update_block_bf16_k128(const float *decayed, vec_f vu, const k128_inputs *in, int b,
                                          vec_f *ye, vec_f *yo)
{
    *ye = vfma(vu, k128_ke(in, b), _mm256_load_ps(decayed + 16 * b));
    *yo = vfma(vu, k128_ko(in, b), _mm256_load_ps(decayed + 16 * b + 8));
}

/* The same for half a row (blocks 4 half .. 4 half + 3) */
static inline void update_half_bf16_k128(const float *decayed, vec_f vu, const k128_inputs *in, int half,
                                         vec_f ye[4], vec_f yo[4])
{
    for (int c = 0; c < 4; c++)
        update_block_bf16_k128(decayed, vu, in, 4 * half + c, &ye[c], &yo[c]);
}

/* The row of a u that is not finite, out of line: with the NaN-capable narrowing inlined beside the
 * plain one, GCC kept both halves' ye and yo on the stack (8 stores a half row, every row) */
static __attribute__((noinline, cold)) void update_bf16_k128_any(const float *decayed, uint16_t *to, float u,
                                                                 const k128_inputs *in)
{
    for (int half = 0; half < 2; half++) {
        vec_f ye[4], yo[4];
        update_half_bf16_k128(decayed, vset1(u), in, half, ye, yo);
        vstore_bf16_eo4(to + 64 * half, ye, yo);
    }
}

/*
 * s' = decay s + u k for one K = 128 row from its decayed form (dots2_bf16_k128's output), in
 * two halves of 64 elements (16 vector registers hold no more). A finite u means no NaN can come
 * out, so the row skips the NaN test: u = beta (v - decay (s.k)) is finite only if s.k is, and
 * s.k, a sum of (decay s_i) k_i, is NaN or infinite as soon as one decay s_i or k_i is (inf 0 is
 * NaN, NaN and inf survive every later sum); with every decay s_i, k_i and u finite the
 * multiply-add u k_i + decay s_i is finite or +-inf, never NaN. Testing the vectors instead cost
 * a compare and an OR per pair of vectors, and GCC then computed both narrowings before the
 * branch and spilled the shifts they share (about a dozen stores a half row).
 */
static inline void update_bf16_k128(const float *decayed, uint16_t *to, float u, const k128_inputs *in)
{
    if (__builtin_expect(!isfinite(u), 0)) {
        update_bf16_k128_any(decayed, to, u, in);
        return;
    }
    const vec_f vu = vset1(u);
    for (int half = 0; half < 2; half++) {
        vec_f ye[4], yo[4];
        update_half_bf16_k128(decayed, vu, in, half, ye, yo);
        vstore_bf16_eo4_no_nan(to + 64 * half, ye, yo);
    }
}

/* The fused step's update of block c (16 elements) of a row with a finite u: nothing to check
 * afterwards (row_check, restore_row_bf16_k128: the AVX-512 narrowing's) */
typedef int row_check;
enum { kRowCheckInit = 0 };
static inline void update_block_store_bf16_k128(const float *decayed, vec_f vu, const k128_inputs *in, int c,
                                                uint16_t *to, row_check *check)
{
    vec_f ye, yo;
    (void)check;
    update_block_bf16_k128(decayed, vu, in, c, &ye, &yo);
    vstore_bf16_eo1_no_nan(to + 16 * c, ye, yo);
}
static inline void restore_row_bf16_k128(const float *decayed, uint16_t *to, float u, const k128_inputs *in,
                                         row_check check)
{
    (void)decayed, (void)to, (void)u, (void)in, (void)check;
}
#endif

/* The sums of dots2_bf16_k128: [0] the even elements' products, [ODD] the odd ones': two sums each
 * with AVX-512's 32 registers (shorter chains), one with AVX2's 16, where eight sums went to the
 * stack and every multiply-add became a load, a multiply-add and a store (perf annotate, AMD EPYC
 * VM) */
enum { ODD = GDN_K128_SUMS - 1 };
typedef struct {
    vec_f ka[2], qa[2], kb[2], qb[2];
} dots2_sums;

/* Block c of rows a and b: widened, multiplied by the decay, stored decayed, and their products
 * with k and q added to the sums */
static inline void dots2_block_bf16_k128(const uint16_t *fa, const uint16_t *fb, vec_f vdecay,
                                         const k128_inputs *in, float *da_out, float *db_out, int c,
                                         dots2_sums *t)
{
    const int w = 2 * GDN_VEC_W * c; /* the block's first element */
    const vec_f ae = vmul(vdecay, pairs_even(vload_pairs(fa + w))),
                ao = vmul(vdecay, pairs_odd(vload_pairs(fa + w)));
    const vec_f be = vmul(vdecay, pairs_even(vload_pairs(fb + w))),
                bo = vmul(vdecay, pairs_odd(vload_pairs(fb + w)));
    vstore_f32(da_out + w, ae), vstore_f32(da_out + w + GDN_VEC_W, ao);
    vstore_f32(db_out + w, be), vstore_f32(db_out + w + GDN_VEC_W, bo);
    const vec_f ke = k128_ke(in, c), ko = k128_ko(in, c), qe = k128_qe(in, c), qo = k128_qo(in, c);
    t->ka[0] = vfma(ae, ke, t->ka[0]), t->qa[0] = vfma(ae, qe, t->qa[0]);
    t->kb[0] = vfma(be, ke, t->kb[0]), t->qb[0] = vfma(be, qe, t->qb[0]);
    t->ka[ODD] = vfma(ao, ko, t->ka[ODD]), t->qa[ODD] = vfma(ao, qo, t->qa[ODD]);
    t->kb[ODD] = vfma(bo, ko, t->kb[ODD]), t->qb[ODD] = vfma(bo, qo, t->qb[ODD]);
}

static inline void dots2_totals(const dots2_sums *t, float s[4])
{
    vsum4(vadd(t->ka[0], t->ka[1]), vadd(t->qa[0], t->qa[1]), vadd(t->kb[0], t->kb[1]),
          vadd(t->qb[0], t->qb[1]), s);
}

/* Rows a and b, K = 128 bf16 in even/odd form, widened and multiplied by the decay once: the
 * decayed rows go to da_out and db_out (even then odd elements of each block) for the update,
 * and s[0] = decay (a.k), s[1] = decay (a.q), s[2] = decay (b.k), s[3] = decay (b.q), one
 * shuffle tree for all four. */
static inline void dots2_bf16_k128(const uint16_t *fa, const uint16_t *fb, vec_f vdecay,
                                   const k128_inputs *in, float *da_out, float *db_out, float s[4])
{
    dots2_sums t = {{vzero(), vzero()}, {vzero(), vzero()}, {vzero(), vzero()}, {vzero(), vzero()}};
#pragma GCC unroll 8
    for (int c = 0; c < GDN_K128_BLOCKS; c++)
        dots2_block_bf16_k128(fa, fb, vdecay, in, da_out, db_out, c, &t);
    dots2_totals(&t, s);
}

/* dots2_bf16_k128 of rows a, b with, block by block beside it, the update of the previous
 * pair (update_bf16_k128 of its decayed rows pa, pb with finite ua, ub into ta, tb), so that the
 * two chains' instructions are interleaved in the out-of-order window instead of following each
 * other (same arithmetic, same bits; with VCVTNE2PS2BF16 a row that came out with a +-0 word is
 * stored again exactly). AVX2 on the AMD EPYC VM (bench/results/cpu-bf16-fuse-*): bf16
 * qwen3-next N = 16 5-9% faster (faster in 17 of 18 interleaved rounds), N = 64 within the
 * noise (12 of 18). AVX-512 on the Zen 4 VM: 5-8% (faster in 8 and 7 of 11 rounds at N = 16 and
 * 64), 1-6% with the L2 prefetch beside it (9 and 7 of 11): small, kept for the one loop both
 * instruction sets share. */
static inline void dots2_update2_bf16_k128(const uint16_t *fa, const uint16_t *fb, vec_f vdecay,
                                           const k128_inputs *in, float *da_out, float *db_out, float s[4],
                                           const float *pa, const float *pb, uint16_t *ta, uint16_t *tb,
                                           float ua, float ub)
{
    dots2_sums t = {{vzero(), vzero()}, {vzero(), vzero()}, {vzero(), vzero()}, {vzero(), vzero()}};
    const vec_f vua = vset1(ua), vub = vset1(ub);
    row_check check_a = (row_check)kRowCheckInit, check_b = (row_check)kRowCheckInit;
#pragma GCC unroll 8
    for (int c = 0; c < GDN_K128_BLOCKS; c++) {
        dots2_block_bf16_k128(fa, fb, vdecay, in, da_out, db_out, c, &t);
        update_block_store_bf16_k128(pa, vua, in, c, ta, &check_a);
        update_block_store_bf16_k128(pb, vub, in, c, tb, &check_b);
    }
    restore_row_bf16_k128(pa, ta, ua, in, check_a);
    restore_row_bf16_k128(pb, tb, ub, in, check_b);
    dots2_totals(&t, s);
}

/*
 * K = 128, bf16, AVX-512 and AVX2: rows in even/odd form, in pairs so that one shuffle tree reduces both
 * rows' two dot products. The loop is skewed: the dot products of rows j+2, j+3 are issued
 * before the update of rows j, j+1, whose u is known by then. In the plain order each pair's
 * update waited on its own ~90-cycle chain (loads, multiply-adds, the shuffle tree, u, the
 * conversion). The rows are multiplied by the decay once, and the dot products taken on the
 * decayed rows (decay (s.k) as the sum of (decay s_i) k_i: the same float32 math, rounded in
 * another order); the decayed rows wait in a 2 KiB buffer in L1 for the update, which is then
 * one multiply-add per element. The update used to widen and multiply its rows again (16 more
 * vector instructions a row of ~75, the rows being instruction-bound: 8-11% slower at N = 16
 * and 64), and keeping them in registers would need 16 more. Rows are prefetched into L1 eight
 * ahead: 10-11% faster at N = 16 and 64 on the development VM than the hardware prefetchers
 * alone (4 and 16 ahead were no better), and also into L2 32 ahead: bf16 13-19% faster on the AMD
 * EPYC (Zen 4) VM, faster in 38 of 44 interleaved rounds (64 ahead the same, L2 alone the same). The AVX2
 * form is the same loop in 256-bit vectors (the AVX2 rows used to be widened in order and narrowed with a
 * compare and blend per vector, ~380 instructions a row against ~230 now; bench/NOTES.md, fifth 2026-12-06
 * session).
 */
static void rows_one_token_bf16_k128(const gdn_problem *p, int64_t src, int64_t dst, const float *restrict k,
                                     const float *restrict q, const float *restrict v, float decay,
                                     float beta, float kq, float *restrict out)
{
    uint16_t *pool = p->state_pool;
    const int64_t V = p->head_dim_v;
    k128_inputs in;
    k128_inputs_of(k, q, &in);
    const vec_f vdecay = vset1(decay);
    float u[2] = {0.0f, 0.0f}, next[2] = {0.0f, 0.0f};
    _Alignas(64) float decayed[2][2][128]; /* two pairs of decayed rows: the one being updated, the next */
    for (int64_t j = 0; j < V + 2; j += 2) {
        float(*const cur)[128] = decayed[(j >> 1) & 1], (*const prev)[128] = decayed[((j >> 1) & 1) ^ 1];
        int fused = 0; /* the update of rows j-2, j-1 done beside the dot products of j, j+1 */
        if (j < V) {   /* dot products of rows j, j+1 (an odd last row paired with itself) */
            const int two = j + 1 < V;
            const uint16_t *fa = pool + src + j * 128, *fb = two ? fa + 128 : fa;
            float s[4];
            /* rows j+8, j+9 into L1 and j+32, j+33 into L2 (into the next head's tile at the end) */
            for (int l = 0; l < 8; l++)
                _mm_prefetch((const char *)((uintptr_t)fa + 8 * 256 + 64 * l), _MM_HINT_T0),
                    _mm_prefetch((const char *)((uintptr_t)fa + 32 * 256 + 64 * l), _MM_HINT_T1);
            /* (rows j-2 and j-1 exist whenever j < V) */
            fused = j >= 2 && dst >= 0 && isfinite(u[0]) && isfinite(u[1]);
            if (fused)
                dots2_update2_bf16_k128(fa, fb, vdecay, &in, cur[0], cur[1], s, prev[0], prev[1],
                                        pool + dst + (j - 2) * 128, pool + dst + (j - 1) * 128, u[0], u[1]);
            else
                dots2_bf16_k128(fa, fb, vdecay, &in, cur[0], cur[1], s);
            next[0] = beta * (v[j] - s[0]);
            out[j] = s[1] + next[0] * kq;
            if (two) {
                next[1] = beta * (v[j + 1] - s[2]);
                out[j + 1] = s[3] + next[1] * kq;
            }
        }
        if (j >= 2 && dst >= 0 && !fused) { /* the update of rows j-2, j-1 */
            const int64_t r = j - 2;
            update_bf16_k128(prev[0], pool + dst + r * 128, u[0], &in);
            if (r + 1 < V)
                update_bf16_k128(prev[1], pool + dst + (r + 1) * 128, u[1], &in);
        }
        u[0] = next[0], u[1] = next[1];
    }
}
#endif

static int rows_one_token_vectors(const gdn_problem *p, int64_t src, int64_t dst, head_inputs *in)
{
#if defined(GDN_VEC_W)
    if (p->head_dim_k % (2 * GDN_VEC_W) != 0)
        return 0;
#if defined(GDN_CPU_AVX512) || defined(GDN_CPU_AVX2)
    if (p->head_dim_k == 128 && p->state_dtype == GDN_DTYPE_BF16) {
        rows_one_token_bf16_k128(p, src, dst, in->k[0], in->q[0], in->v[0], in->decay[0], in->beta[0],
                                 in->kq[0], in->out[0]);
        return 1;
    }
#endif
    if (p->state_dtype == GDN_DTYPE_F32)
        rows_one_token_f32(p, src, dst, in->k[0], in->q[0], in->v[0], in->decay[0], in->beta[0], in->kq[0],
                           in->out[0]);
    else
        rows_one_token_bf16(p, src, dst, in->k[0], in->q[0], in->v[0], in->decay[0], in->beta[0], in->kq[0],
                            in->out[0]);
    return 1;
#else
    (void)p, (void)src, (void)dst, (void)in;
    return 0;
#endif
}

/* Eight partial sums so the compiler vectorises without reassociating (no -ffast-math). */
static float dot(const float *restrict x, const float *restrict y, int64_t n)
{
    float part[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++)
            part[l] += x[i + l] * y[i + l];
    float s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    for (; i < n; i++)
        s += x[i] * y[i];
    return s;
}

static void l2_normalise(float *x, int64_t n)
{
    float inv = 1.0f / sqrtf(dot(x, x, n) + GDN_L2NORM_EPS);
    for (int64_t i = 0; i < n; i++)
        x[i] *= inv;
}

/* Token `row` of value head hv: q and k l2-normalised (q scaled) and v widened into the given
 * rows; returns the log-decay g, and beta in *beta, from whichever form the gates come in. Both
 * the staged token-by-token path and the chunks take their inputs from here. */
static float stage_token(const gdn_problem *p, int64_t row, int64_t hv, float *q, float *k, float *v,
                         float *beta)
{
    int64_t K = p->head_dim_k, V = p->head_dim_v, h = gdn_qk_head(p, hv);
    gdn_load_row_f32(p->q, p->act_dtype, row * p->q_stride + h * K, K, q);
    gdn_load_row_f32(p->k, p->act_dtype, row * p->k_stride + h * K, K, k);
    gdn_load_row_f32(p->v, p->act_dtype, row * p->v_stride + hv * V, V, v);
    if (p->qk_l2norm) {
        l2_normalise(q, K);
        l2_normalise(k, K);
    }
    for (int64_t i = 0; i < K; i++)
        q[i] *= p->scale;
    if (p->g) { /* gates given precomputed */
        *beta = (float)gdn_load_f64(p->beta, p->act_dtype, row * p->beta_stride + hv);
        return p->g[row * p->g_stride + hv];
    }
    float a = (float)gdn_load_f64(p->a, p->act_dtype, row * p->a_stride + hv);
    *beta = gdn_sigmoid((float)gdn_load_f64(p->b, p->act_dtype, row * p->b_stride + hv));
    return gdn_gate_log(p->A_log[hv], a, p->dt_bias[hv]);
}

static void load_token_inputs(const gdn_problem *p, int64_t row, int64_t hv, int t, head_inputs *in)
{
    in->decay[t] = expf(stage_token(p, row, hv, in->q[t], in->k[t], in->v[t], &in->beta[t]));
    in->kq[t] = dot(in->k[t], in->q[t], p->head_dim_k);
}

/*
 * vk layout: row j of the V x K tile is contiguous. Rows are independent given the per-token
 * inputs, so each row is read once, taken through every token in registers/L1, and written once
 * (plus once per saved snapshot). Both dot products a token needs come from the row before that
 * token's update: o = S' q = exp(g) (S q) + u (k . q).
 */
static void store_row_vk(const gdn_problem *p, int64_t tile, int64_t j, const float *row)
{
    gdn_store_row_f32(p->state_pool, p->state_dtype, tile + j * p->head_dim_k, p->head_dim_k, row);
}

static void update_rows_vk(const gdn_problem *p, int64_t tokens, int64_t src, int64_t dst, head_inputs *in)
{
    int64_t K = p->head_dim_k;
    float row[GDN_MAX_HEAD_DIM];
    if (src >= 0 && tokens == 1 && in->snapshot[0] < 0 && rows_one_token_vectors(p, src, dst, in))
        return;

    for (int64_t j = 0; j < p->head_dim_v; j++) {
        if (src < 0) /* a zero initial state */
            memset(row, 0, (size_t)K * sizeof row[0]);
        else
            gdn_load_row_f32(p->state_pool, p->state_dtype, src + j * K, K, row);
        for (int64_t t = 0; t < tokens; t++) {
            float sk = dot(row, in->k[t], K), sq = dot(row, in->q[t], K);
            float u = in->beta[t] * (in->v[t][j] - in->decay[t] * sk);
            in->out[t][j] = in->decay[t] * sq + u * in->kq[t];
            for (int64_t i = 0; i < K; i++)
                row[i] = in->decay[t] * row[i] + u * in->k[t][i];
            if (in->snapshot[t] >= 0)
                store_row_vk(p, in->snapshot[t], j, row);
        }
        if (dst >= 0)
            store_row_vk(p, dst, j, row);
    }
}

/*
 * kv layout: the tile is K rows of V contiguous values. Working in that order keeps every inner
 * loop unit-stride (a row-major walk of a [K][V] tile for the vk algorithm would gather columns):
 * per token, S^T k and S^T q accumulate row by row, then every row is updated with the same
 * u vector. The widened tile (at most 256 KiB) stays in cache across the token's two passes; the
 * pool is read once and written once (plus once per saved snapshot), as in the vk path.
 */
static void store_tile_kv(const gdn_problem *p, int64_t tile_at, const float *tile)
{
    int64_t K = p->head_dim_k, V = p->head_dim_v;
    for (int64_t i = 0; i < K; i++)
        gdn_store_row_f32(p->state_pool, p->state_dtype, tile_at + i * V, V, tile + i * V);
}

static void update_tile_kv(const gdn_problem *p, int64_t tokens, int64_t src, int64_t dst, head_inputs *in)
{
    int64_t K = p->head_dim_k, V = p->head_dim_v;
    float *tile = in->tile, sk[GDN_MAX_HEAD_DIM], sq[GDN_MAX_HEAD_DIM], u[GDN_MAX_HEAD_DIM];
    if (src < 0) /* a zero initial state */
        memset(tile, 0, (size_t)(K * V) * sizeof tile[0]);
    else
        for (int64_t i = 0; i < K; i++)
            gdn_load_row_f32(p->state_pool, p->state_dtype, src + i * V, V, tile + i * V);
    for (int64_t t = 0; t < tokens; t++) {
        const float decay = in->decay[t], beta = in->beta[t], kq = in->kq[t];
        for (int64_t j = 0; j < V; j++)
            sk[j] = sq[j] = 0.0f;
        for (int64_t i = 0; i < K; i++) {
            const float ki = in->k[t][i], qi = in->q[t][i], *row = tile + i * V;
            for (int64_t j = 0; j < V; j++) {
                sk[j] += ki * row[j];
                sq[j] += qi * row[j];
            }
        }
        for (int64_t j = 0; j < V; j++) {
            u[j] = beta * (in->v[t][j] - decay * sk[j]);
            in->out[t][j] = decay * sq[j] + u[j] * kq;
        }
        for (int64_t i = 0; i < K; i++) {
            const float ki = in->k[t][i];
            float *row = tile + i * V;
            for (int64_t j = 0; j < V; j++)
                row[j] = decay * row[j] + ki * u[j];
        }
        if (in->snapshot[t] >= 0)
            store_tile_kv(p, in->snapshot[t], tile);
    }
    if (dst >= 0)
        store_tile_kv(p, dst, tile);
}

/* Stages tokens [first, first + count) of sequence n (count <= GDN_MAX_TOKENS) into `in`. */
static void stage_tokens(const gdn_problem *p, int64_t n, int64_t hv, int64_t first, int64_t t0,
                         int64_t count, head_inputs *in)
{
    for (int64_t t = 0; t < count; t++) {
        load_token_inputs(p, first + t, hv, (int)t, in);
        int64_t snap = p->token_slots ? gdn_token_slot(p, n, t0 + t) : -1;
        in->snapshot[t] = snap < 0 ? -1 : gdn_tile_offset(p, snap, hv);
    }
}

static void store_outputs(const gdn_problem *p, int64_t hv, int64_t first, int64_t count, head_inputs *in)
{
    for (int64_t t = 0; t < count; t++)
        gdn_store_row_f32(p->out, p->act_dtype, (first + t) * p->out_stride + hv * p->head_dim_v,
                          p->head_dim_v, in->out[t]);
}

static void update_state(const gdn_problem *p, int64_t tokens, int64_t src, int64_t dst, head_inputs *in)
{
    if (p->state_layout == GDN_LAYOUT_KV)
        update_tile_kv(p, tokens, src, dst, in);
    else
        update_rows_vk(p, tokens, src, dst, in);
}

#include "prefill_chunk_body.h"

/*
 * A sequence longer than GDN_MAX_TOKENS (varlen prefill), token by token: its state is widened once into
 * in->state (f32, the pool's layout), taken through the tokens GDN_MAX_TOKENS at a time by the
 * same row code (the rows stay in L1 across each segment), and stored once, rounded once, to
 * the write slot. Token slots are refused for such calls, so no segment saves snapshots.
 */
static void long_sequence(const gdn_problem *p, int64_t n, int64_t hv, int64_t first, int64_t tokens,
                          int64_t src, int64_t dst, head_inputs *in)
{
    const int64_t K = p->head_dim_k, V = p->head_dim_v, tile = V * K;
    if (src < 0)
        memset(in->state, 0, (size_t)tile * sizeof in->state[0]);
    else
        gdn_load_row_f32(p->state_pool, p->state_dtype, src, tile, in->state);
    gdn_problem local = *p; /* the same rows, on the widened tile at offset 0 */
    local.state_pool = in->state;
    local.state_dtype = GDN_DTYPE_F32;
    local.token_slots = NULL;
    for (int64_t t0 = 0; t0 < tokens; t0 += GDN_MAX_TOKENS) {
        const int64_t count = tokens - t0 < GDN_MAX_TOKENS ? tokens - t0 : GDN_MAX_TOKENS;
        stage_tokens(&local, n, hv, first + t0, t0, count, in);
        update_state(&local, count, 0, 0, in);
        store_outputs(p, hv, first + t0, count, in);
    }
    if (dst >= 0)
        gdn_store_row_f32(p->state_pool, p->state_dtype, dst, tile, in->state);
}

void GDN_CPU_ITEM_FN(const gdn_problem *p, int64_t item, head_inputs *in)
{
    int64_t n = item / p->num_v_heads, hv = item % p->num_v_heads;
    int64_t first = gdn_first_token_row(p, n), tokens = gdn_seq_tokens(p, n);
    int64_t read = gdn_read_slot(p, n);
    if (tokens <= 0) /* a sequence without tokens this step: nothing to compute or move */
        return;
    if (read < 0) { /* padding row: zero outputs, no state touched */
        memset(in->out, 0, sizeof in->out);
        for (int64_t t0 = 0; t0 < tokens; t0 += GDN_MAX_TOKENS)
            store_outputs(p, hv, first + t0, tokens - t0 < GDN_MAX_TOKENS ? tokens - t0 : GDN_MAX_TOKENS, in);
        return;
    }
    int64_t write = gdn_write_slot(p, n);
    int64_t src = gdn_zero_initial_state(p, n) ? -1 : gdn_tile_offset(p, read, hv);
    int64_t dst = write < 0 ? -1 : gdn_tile_offset(p, write, hv);
    if (tokens > GDN_MAX_TOKENS) {
        if (gdn_cpu_use_chunks(tokens))
            long_sequence_chunked(p, hv, first, tokens, src, dst, in);
        else
            long_sequence(p, n, hv, first, tokens, src, dst, in);
        return;
    }
    stage_tokens(p, n, hv, first, 0, tokens, in);
    update_state(p, tokens, src, dst, in);
    store_outputs(p, hv, first, tokens, in);
}

#if defined(GDN_VEC_W) && defined(GDN_CPU_NARROW_FN)
/* This variant's narrowing of float rows to bf16 over whole vectors (the tail element-wise): a
 * hook for tests/test_numeric.c, which holds every variant to gdn_f32_to_bf16 bit for bit. */
void GDN_CPU_NARROW_FN(const float *x, uint16_t *out, int64_t n)
{
    int64_t i = 0;
#if defined(GDN_K128_BLOCKS)
    for (; i + 8 * GDN_VEC_W <= n; i += 8 * GDN_VEC_W) { /* the K = 128 rows' narrowing */
        vec_f ye[4], yo[4];
        for (int c = 0; c < 4; c++)
            split_even_odd(x + i + 2 * GDN_VEC_W * c, &ye[c], &yo[c]);
        vstore_bf16_eo4(out + i, ye, yo);
    }
#endif
    for (; i + GDN_VEC_W <= n; i += GDN_VEC_W)
        vstore_bf16(out + i, vload_f32(x + i));
    gdn_store_row_f32(out, GDN_DTYPE_BF16, i, n - i, x + i);
}
#endif
