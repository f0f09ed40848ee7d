/*
 * libFuzzer harness for gdn_decode on the cpu backend (tests/fuzz/README.md).
 *
 * The fuzz input is decoded into a small decode problem: shapes (N 0..6, H 1..3, HV a multiple
 * of H or not, K and V 1..40 and now and then 128, 256 or 300, T 0..17), dtypes including
 * invalid enum values, strides including bad and overflowing ones, slot indices including
 * negative and out-of-range ones, null_slot_zero, write slots, token slots, num_accepted,
 * cu_seqlens (increasing, decreasing, huge), layouts, head maps, scale (NaN and Inf too),
 * l2norm, NULL and misaligned pointers, an out that overlaps or touches the state pool, and a
 * wrong or an older (0.1, shorter) struct_size.
 * Every buffer is allocated with exactly the bytes the documented contract says the call may
 * touch, so AddressSanitizer reports any access beyond them.
 *
 * After the call the harness requires:
 *   - status OK exactly when the documented contract (include/gdn.h) says the call is valid,
 *     computed here independently of the library (contract_ok below);
 *   - on error: a non-empty gdn_last_error(), and every byte of the outputs and of the state
 *     pool as before; gdn_decode_backend_for() agreeing with gdn_decode;
 *   - on success: the same call on the float64 reference backend (GDN_BACKEND_REFERENCE), run on
 *     copies of the same inputs, gives outputs and states within 1e-4 relative per element
 *     (|x - ref| <= 1e-4 (|ref| + max|ref|) plus one rounding step of the storage dtype);
 *     padding rows are exactly zero; every byte the call should not write (other slots, other
 *     tiles, the gaps between strided output rows, rows of empty sequences) is byte-identical;
 *     the read-only inputs are unchanged.
 * Any violation prints what was wrong and aborts, which libFuzzer records as a crash.
 *
 * Input values: "tame" (bounded, finite: numerics compared), "poison" (tame plus a few NaN/Inf
 * in q, k, v, a or b: non-finite results must match non-finite reference results and every
 * finite one must agree) or "wild" (any finite bit pattern: only memory safety, statuses and the
 * untouched bytes are checked, since float32 and float64 overflow differently).
 *
 * GDN_FUZZ_STATS=1 and GDN_FUZZ_DESCRIBE=1 print what the inputs were.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/common/numeric.h"
#include "gdn.h"

#define CAP_BYTES ((int64_t)8 << 20) /* a valid problem needing a bigger buffer is skipped */
#define MAX_N 8                      /* index arrays of rejected huge-N problems hold this many */

/* ---------------------------------------------------------------------------------------
 * Reading the fuzz input
 * ------------------------------------------------------------------------------------- */

typedef struct reader {
    const uint8_t *data;
    size_t size, at;
} reader;

static unsigned u8(reader *r) { return r->at < r->size ? r->data[r->at++] : 0; }

static uint64_t u64(reader *r)
{
    uint64_t x = 0;
    for (int i = 0; i < 8; i++)
        x = x << 8 | u8(r);
    return x;
}

/* splitmix64: the bulk values come from a seed taken from the input */
static uint64_t next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double uniform(uint64_t *s, double lo, double hi)
{
    return lo + (hi - lo) * ((double)(next(s) >> 11) / 9007199254740992.0);
}

#define FAIL(...)                                                                                            \
    do {                                                                                                     \
        fprintf(stderr, "\nfuzz_decode: FAILED at %s:%d: ", __FILE__, __LINE__);                             \
        fprintf(stderr, __VA_ARGS__);                                                                        \
        fprintf(stderr, "\n");                                                                               \
        describe(stderr);                                                                                    \
        abort();                                                                                             \
    } while (0)

#define REQUIRE(cond, ...)                                                                                   \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            fprintf(stderr, "\nfuzz_decode: requirement %s", #cond);                                         \
            FAIL(__VA_ARGS__);                                                                               \
        }                                                                                                    \
    } while (0)

/* GDN_FUZZ_STATS=1: how the inputs split, printed at exit (is the valid path reached?) */
static struct {
    long inputs, skipped, refused, accepted, compared, poison, wild, multi_token, varlen, token_slots, arena,
        threads;
} stats;

static void print_stats(void)
{
    fprintf(stderr,
            "fuzz_decode stats: %ld inputs, %ld skipped, %ld refused, %ld accepted (%ld compared "
            "numerically; %ld poison, %ld wild; %ld multi-token, %ld varlen, %ld token_slots, %ld arena, %ld "
            "multi-threaded)\n",
            stats.inputs, stats.skipped, stats.refused, stats.accepted, stats.compared, stats.poison,
            stats.wild, stats.multi_token, stats.varlen, stats.token_slots, stats.arena, stats.threads);
}

/* ---------------------------------------------------------------------------------------
 * The problem decoded from the input
 * ------------------------------------------------------------------------------------- */

enum { T_Q, T_K, T_V, T_A, T_B, T_OUT, T_ACT }; /* strided tensors */
enum { P_Q, P_K, P_V, P_A, P_B, P_OUT, P_ALOG, P_DT, P_POOL, P_SLOT, P_WRITE, P_CU, P_TS, P_ACC, P_COUNT };
static const char *const ptr_names[P_COUNT] = {"q",
                                               "k",
                                               "v",
                                               "a",
                                               "b",
                                               "out",
                                               "A_log",
                                               "dt_bias",
                                               "state_pool",
                                               "slot_indices",
                                               "write_slot_indices",
                                               "cu_seqlens",
                                               "token_slots",
                                               "num_accepted"};

enum { VALUES_TAME = 0, VALUES_POISON = 1, VALUES_WILD = 2 };
/* where bad_index_rows points: nowhere, a buffer of its own, misaligned, into the pool, into out */
enum { COUNTER_NONE, COUNTER_OWN, COUNTER_MISALIGNED, COUNTER_IN_POOL, COUNTER_IN_OUT };

typedef struct spec {
    int64_t N, H, HV, K, V, T, slots;
    int act, state, idx, layout, head_map, l2norm, null_zero, backend, threads;
    float scale;
    int64_t stride[T_ACT];
    int has_slot, has_write, has_cu, has_ts, has_acc;
    int64_t ts_stride;
    int64_t slot[MAX_N], write[MAX_N], acc[MAX_N], cu[MAX_N + 1];
    int64_t *ts;                         /* [min(N, MAX_N) * ts_cols] */
    int64_t ts_cols;                     /* columns held: the real stride, or at most 64 of a huge one */
    int64_t ts_real;                     /* the real stride: token_slots_stride, or num_tokens when 0 */
    int null_ptr, misalign, misalign_by; /* -1: none */
    int arena;                           /* out and pool in one allocation */
    int64_t arena_shift;                 /* out offset from the pool start, in bytes */
    int bad_struct;                      /* struct_size neither this header's nor an older one's */
    int old_struct;      /* struct_size of a 0.1 header (up to num_threads): no multi-token fields */
    int struct02;        /* struct_size of a 0.2 header (up to num_accepted): no checked mode */
    int struct03;        /* struct_size of a 0.3 header (up to bad_index_rows): no pdl, no slot stride */
    int64_t slot_stride; /* state_slot_stride as handed over (0 = packed) */
    int counter;         /* checked mode's bad_index_rows: one of COUNTER_* */
    int values;
    uint64_t seed;
    int poison_count;
    struct {
        int tensor;
        uint64_t where;
        int kind;
    } poison[3];
} spec;

static spec S; /* the current problem, for messages */

static int64_t teff(const spec *s) { return s->T > 0 ? s->T : 1; }

static int64_t pick_dim(unsigned c)
{
    if (c < 232)
        return 1 + c % 40;
    static const int64_t rare[] = {128, 128, 128, 128, 128, 128, 128, 128,           256, 256, 256, 256,
                                   300, 300, 300, 300, 0,   -1,  257, INT64_MAX / 4, 64,  1,   2,   16};
    return rare[c - 232];
}

static int64_t clamp64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : x > hi ? hi : x; }

/* a + b and a * b without overflow: saturated at the int64 limits (sums) or at 2^100
 * (products of non-negative numbers), which is all the comparisons below need. */
static int64_t sadd(int64_t a, int64_t b)
{
    __int128 x = (__int128)a + b;
    return x > INT64_MAX ? INT64_MAX : x < INT64_MIN ? INT64_MIN : (int64_t)x;
}

static __int128 smul(__int128 a, __int128 b)
{
    const __int128 cap = (__int128)1 << 100;
    if (a <= 0 || b <= 0)
        return a < 0 || b < 0 ? -1 : 0;
    if (a > cap || b > cap || a > cap / b)
        return cap;
    return a * b;
}

static int64_t pick_slot(reader *r, const spec *s, int64_t alloc_slots)
{
    unsigned c = u8(r);
    int i32 = s->idx == GDN_DTYPE_I32;
    if (c < 200)
        return c % alloc_slots;
    switch (c % 10) {
    case 0: return -1;
    case 1: return -2 - (int64_t)(c % 5);
    case 2: return s->slots;
    case 3: return sadd(s->slots, 1 + c % 3);
    case 4: return i32 ? INT32_MAX : INT64_MAX;
    case 5: return i32 ? INT32_MIN : INT64_MIN;
    case 6: return 0;
    case 7: return alloc_slots - 1;
    case 8: return -1;
    default: return c % alloc_slots;
    }
}

/* The element count of one token row of tensor t (from the raw, maybe invalid, dims). */
static __int128 row_width(const spec *s, int t)
{
    switch (t) {
    case T_Q:
    case T_K: return (__int128)s->H * s->K;
    case T_V:
    case T_OUT: return (__int128)s->HV * s->V;
    default: return s->HV;
    }
}

static int fits_i32(int64_t x) { return x >= INT32_MIN && x <= INT32_MAX; }

static int64_t as_index(const spec *s, int64_t x)
{
    if (s->idx != GDN_DTYPE_I32 || fits_i32(x))
        return x;
    return x < 0 ? INT32_MIN : INT32_MAX;
}

static void decode_spec(reader *r, spec *s)
{
    memset(s, 0, sizeof *s);
    unsigned c;
    c = u8(r);
    if (c < 245) {
        s->N = c % 7;
    } else {
        static const int64_t rare[] = {
            -1, (int64_t)1 << 40, INT64_MAX / 8, INT64_MAX / 2, INT64_MAX, (int64_t)1 << 61, 3, 6, 0, 1, 2};
        s->N = rare[c - 245];
    }
    c = u8(r);
    s->H = c < 248 ? 1 + c % 3 : (int64_t[]){0, -1, INT64_MAX, 4, 1, 2, 3, 2}[c - 248];
    c = u8(r);
    if (c < 250)
        s->HV = (c & 1) && s->H >= 1 && s->H <= 3 ? s->H * (1 + (c >> 1) % 3) : 1 + (c >> 1) % 9;
    else
        s->HV = (int64_t[]){0, -2, INT64_MAX / 2, (int64_t)1 << 40, 6, 3}[c - 250];
    s->K = pick_dim(u8(r));
    s->V = pick_dim(u8(r));
    c = u8(r);
    s->T =
        c < 240 ? c % 18 : (int64_t[]){-1, 17, 100, INT64_MAX, 16, 1, 2, 4, 0, 8, 3, 5, 16, 2, 1, 0}[c - 240];
    c = u8(r);
    s->slots =
        c < 240
            ? 1 + c % 8
            : (int64_t[]){
                  0, -1, (int64_t)1 << 40, INT64_MAX / 4, INT64_MAX, INT64_MAX / 64, 3, 4, 5, 6, 7, 8, 1, 2,
                  3, 4}[c - 240];
    c = u8(r);
    s->act = c < 220 ? (int[]){GDN_DTYPE_F32, GDN_DTYPE_F16, GDN_DTYPE_BF16}[c % 3]
                     : (int[]){GDN_DTYPE_F64, GDN_DTYPE_I32, GDN_DTYPE_I64, 6, -1, 99,
                               GDN_DTYPE_F64, GDN_DTYPE_F32}[c % 8];
    c = u8(r);
    s->state = c < 220 ? (int[]){GDN_DTYPE_F32, GDN_DTYPE_BF16}[c % 2]
                       : (int[]){GDN_DTYPE_F64, GDN_DTYPE_F16, GDN_DTYPE_I32, 7, -1,
                                 GDN_DTYPE_F64, GDN_DTYPE_F32, GDN_DTYPE_BF16}[c % 8];
    c = u8(r);
    s->idx = c < 230 ? (int[]){GDN_DTYPE_I64, GDN_DTYPE_I32}[c % 2]
                     : (int[]){GDN_DTYPE_F32, GDN_DTYPE_F16, 9, -1, GDN_DTYPE_BF16, GDN_DTYPE_F64,
                               GDN_DTYPE_I64, GDN_DTYPE_I32}[c % 8];
    c = u8(r);
    s->layout = c < 240 ? (int)(c % 2) : (int[]){2, -1, 7, 1000}[c % 4];
    s->head_map = c < 240 ? (int)((c >> 1) % 2) : (int[]){2, -1, 0, 1}[(c >> 2) % 4];
    c = u8(r);
    s->l2norm = (c & 7) == 7 ? 2 : (int)(c & 1);
    s->null_zero = (c >> 3) & 1;
    s->bad_struct = (c >> 4) == 15;
    s->old_struct = (c >> 4) == 14;
    c = u8(r);
    s->backend = c < 224   ? GDN_BACKEND_CPU
                 : c < 240 ? GDN_BACKEND_AUTO
                 : c < 248 ? GDN_BACKEND_CUDA
                           : (int[]){4, -1, 99, 1000, 4, -1, 5, 6}[c - 248];
    c = u8(r);
    s->threads = c < 200 ? (int)(c % 4) : (int[]){-1, 64, 1000000, -1000, 2, 3, 1, 0}[c % 8];
    c = u8(r);
    if (c < 160)
        s->scale = 0.0f;
    else if (c < 240)
        s->scale = (float)((int)c - 200) / 10.0f;
    else
        s->scale = (float[]){NAN,   INFINITY, -INFINITY, 1e-30f, -NAN, 3.5f, -1.0f, 0.5f,
                             1e30f, 2.0f,     0.125f,    -0.25f, 1.0f, 4.0f, 0.0f,  0.0f}[c - 240];

    for (int t = 0; t < T_ACT; t++) {
        c = u8(r);
        int64_t w = (int64_t)clamp64(
            (int64_t)(row_width(s, t) > INT64_MAX / 4 ? INT64_MAX / 4 : row_width(s, t)), -1, INT64_MAX / 4);
        if (c < 150)
            s->stride[t] = 0;
        else if (c < 210)
            s->stride[t] = w;
        else if (c < 236)
            s->stride[t] = w + 1 + c % 7;
        else
            s->stride[t] = (int64_t[]){
                w - 1, -1, 1, INT64_MAX / 2, INT64_MAX,    (int64_t)1 << 40, 2 * w, INT64_MIN, w - 2, 0, 0,
                0,     w,  w, w + 64,        INT64_MAX / 3}[c - 236 < 16 ? c - 236 : 0];
    }

    c = u8(r);
    s->null_ptr = c >= 240 ? (int)(c - 240) % P_COUNT : -1;
    c = u8(r);
    s->misalign = c >= 240 ? (int)(c - 240) % P_COUNT : -1;
    s->misalign_by = 1 + (int)(c % 7);
    c = u8(r);
    s->arena = c >= 224;
    s->arena_shift = (int64_t)(int8_t)u8(r) * 8 * (int64_t)(1 + (c % 4)) * 4;
    c = u8(r);
    s->values = c < 200 ? VALUES_TAME : c < 236 ? VALUES_POISON : VALUES_WILD;
    s->seed = u64(r);
    s->poison_count = s->values == VALUES_POISON ? 1 + (int)(c % 3) : 0;
    for (int i = 0; i < s->poison_count; i++) {
        s->poison[i].tensor = (int)(u8(r) % 5);
        s->poison[i].where = u64(r);
        s->poison[i].kind = (int)(u8(r) % 3);
    }
    c = u8(r);
    s->has_write = (c & 3) == 1;
    /* (a NULL optional array below simply means the argument is absent: see the end) */
    s->has_ts = ((c >> 2) & 3) == 1;
    s->has_acc = ((c >> 4) & 3) == 1 && ((c >> 2) & 3) != 3; /* mostly with token_slots */
    s->has_cu = ((c >> 6) & 3) == 1;
    s->has_slot = !(s->has_acc && (u8(r) & 1)); /* with num_accepted the read slots may be NULL */
    c = u8(r);
    if (c < 200)
        s->ts_stride = 0;
    else if (c < 240)
        s->ts_stride = sadd(teff(s), c % 3);
    else
        s->ts_stride = (int64_t[]){teff(s) - 1,
                                   -1,
                                   INT64_MAX / 2,
                                   INT64_MAX / 3,
                                   (int64_t)1 << 40,
                                   0,
                                   1,
                                   2,
                                   teff(s),
                                   sadd(teff(s), 1),
                                   17,
                                   32,
                                   0,
                                   0,
                                   0,
                                   0}[c - 240];

    int64_t alloc_slots = clamp64(s->slots, 1, 8);
    int64_t n_gen = clamp64(s->N, 0, MAX_N);
    for (int64_t n = 0; n < n_gen; n++) {
        s->slot[n] = as_index(s, pick_slot(r, s, alloc_slots));
        s->write[n] = as_index(s, pick_slot(r, s, alloc_slots));
        c = u8(r);
        int64_t cols = s->ts_stride > 0 ? s->ts_stride : teff(s);
        if (cols < 1)
            cols = 1;
        s->acc[n] =
            as_index(s, c < 200 ? 1 + (int64_t)(c % (cols < 1000 ? cols : 1000))
                                : (int64_t[]){0, -1, sadd(cols, 1), INT64_MAX, INT64_MIN, cols, 1, 2}[c % 8]);
    }
    /* token slots: an exact array when the stride is small; huge strides keep a short one */
    s->ts_real = s->ts_stride > 0 ? s->ts_stride : teff(s);
    s->ts_cols = clamp64(s->ts_real, 1, 64);
    s->ts = calloc((size_t)(n_gen ? n_gen : 1) * (size_t)s->ts_cols, sizeof(int64_t));
    for (int64_t i = 0; i < n_gen * s->ts_cols; i++)
        s->ts[i] = as_index(s, pick_slot(r, s, alloc_slots));
    /* cu_seqlens: increasing with 0..T tokens each, then maybe one entry broken */
    c = u8(r);
    s->cu[0] = c < 200 ? 0 : c % 4;
    for (int64_t n = 0; n < n_gen; n++)
        s->cu[n + 1] = s->cu[n] + (int64_t)(u8(r) % (unsigned)(teff(s) < 17 ? teff(s) + 1 : 18));
    c = u8(r);
    if (c >= 216) {
        int64_t at = u8(r) % (unsigned)(n_gen + 1);
        int64_t prev = at > 0 ? s->cu[at - 1] : 0;
        static const int64_t extreme[] = {-1,        INT64_MAX,        INT64_MIN,     INT32_MAX,
                                          INT32_MIN, (int64_t)1 << 40, INT64_MAX - 1, (int64_t)1 << 62};
        switch (c % 8) {
        case 0: s->cu[at] = sadd(prev, -1); break;               /* decreasing */
        case 1: s->cu[at] = sadd(sadd(prev, teff(s)), 1); break; /* one sequence too long */
        case 2: s->cu[at] = -1 - (int64_t)(c % 3); break;        /* negative */
        default: s->cu[at] = extreme[u8(r) % 8]; break;
        }
        s->cu[at] = as_index(s, s->cu[at]);
    }
    if ((c & 0x1f) == 3) /* all shifted by a large offset: valid counts, rows far away */
        for (int64_t n = 0; n <= n_gen; n++)
            s->cu[n] = as_index(s, sadd(s->cu[n], INT64_MAX / 2 + 7));
    /* an optional array made NULL is an absent argument, not an error */
    s->has_slot &= s->null_ptr != P_SLOT;
    s->has_write &= s->null_ptr != P_WRITE;
    s->has_cu &= s->null_ptr != P_CU;
    s->has_ts &= s->null_ptr != P_TS;
    s->has_acc &= s->null_ptr != P_ACC;
    /* read last, so that inputs made before these fields existed decode as they did */
    c = u8(r);
    s->counter = c >= 200 ? COUNTER_OWN + (int)(c % 4) : COUNTER_NONE;
    if (s->counter == COUNTER_IN_OUT && s->has_cu) /* out's rows are unknown before the call */
        s->counter = COUNTER_OWN;
    s->struct02 = u8(r) >= 240 && !s->bad_struct && !s->old_struct;
    if (s->struct02 || s->old_struct || s->bad_struct)
        s->counter = COUNTER_NONE; /* older callers have no counter (junk is placed there) */
    if (s->old_struct) {           /* an older caller has none of the multi-token fields: they read as zero */
        s->T = 0, s->ts_stride = 0, s->ts_real = 1;
        s->has_cu = s->has_ts = s->has_acc = 0;
    }
    /* paged pools (0.4): a slot stride, valid or not; an older caller's struct has none */
    c = u8(r);
    /* saturating products only: V and K may be anything here, negative included */
    const __int128 vk = smul(s->V, s->K);
    const int64_t slot = (int64_t)smul(smul(s->HV, s->V), s->K) > INT64_MAX / 4
                             ? INT64_MAX / 4
                             : (int64_t)smul(smul(s->HV, s->V), s->K);
    s->slot_stride = c < 192 ? 0
                             : (int64_t[]){sadd(slot, -1),
                                           -1,
                                           sadd(slot, 1),
                                           sadd(slot, slot),
                                           sadd(slot, vk < 0 || vk > INT64_MAX / 4 ? 0 : (int64_t)vk),
                                           INT64_MAX / 3,
                                           sadd(slot, 3),
                                           slot}[c % 8];
    s->struct03 = u8(r) >= 248 && !s->bad_struct && !s->old_struct && !s->struct02;
    if (s->struct02 || s->old_struct || s->bad_struct || s->struct03)
        s->slot_stride = 0; /* junk is placed there instead: the library must not read it */
}

/* Elements between slots as the library resolves them. */
static __int128 eff_slot_stride(const spec *s)
{
    return s->slot_stride ? (__int128)s->slot_stride : smul(smul(s->HV, s->V), s->K);
}

/* Elements from the pool's start to the end of slot `slots - 1`. */
static __int128 pool_extent(const spec *s, int64_t slots)
{
    return smul(slots - 1, eff_slot_stride(s)) + smul(smul(s->HV, s->V), s->K);
}

/* ---------------------------------------------------------------------------------------
 * The contract, from include/gdn.h alone
 * ------------------------------------------------------------------------------------- */

static int act_ok(int d) { return d == GDN_DTYPE_F32 || d == GDN_DTYPE_F16 || d == GDN_DTYPE_BF16; }
static int state_ok(int d) { return d == GDN_DTYPE_F32 || d == GDN_DTYPE_BF16; }
static int idx_ok(int d) { return d == GDN_DTYPE_I32 || d == GDN_DTYPE_I64; }

static size_t act_size(int d)
{
    return d == GDN_DTYPE_F16 || d == GDN_DTYPE_BF16 ? 2 : d == GDN_DTYPE_F64 ? 8 : 4;
}
static size_t state_size(int d)
{
    return d == GDN_DTYPE_BF16 || d == GDN_DTYPE_F16 ? 2 : d == GDN_DTYPE_F64 ? 8 : 4;
}
static size_t idx_size(int d) { return d == GDN_DTYPE_I32 ? 4 : 8; }

static int fits(__int128 x) { return x >= INT64_MIN && x <= INT64_MAX; }

static int is_null_slot(const spec *s, int64_t slot) { return slot < 0 || (s->null_zero && slot == 0); }

static int64_t eff_stride(const spec *s, int t)
{
    return s->stride[t] ? s->stride[t] : (int64_t)row_width(s, t);
}

/* Token rows the activations hold: N*T, or cu_seqlens[N] with variable lengths. */
static __int128 rows_needed(const spec *s)
{
    if (s->has_cu)
        return s->N > 0 ? s->cu[s->N] : 0;
    return (__int128)s->N * teff(s);
}

static int64_t seq_tokens(const spec *s, int64_t n) { return s->has_cu ? s->cu[n + 1] - s->cu[n] : teff(s); }
static int64_t first_row(const spec *s, int64_t n) { return s->has_cu ? s->cu[n] : n * teff(s); }
static int64_t ts_at(const spec *s, int64_t n, int64_t t) { return s->ts[n * s->ts_cols + t]; }

/* The slot sequence n reads (-1: padding row). Valid calls only. */
static int64_t read_slot(const spec *s, int64_t n)
{
    int64_t slot = s->has_acc ? ts_at(s, n, s->acc[n] - 1) : s->slot[n];
    return is_null_slot(s, slot) ? -1 : slot;
}

static int64_t write_slot(const spec *s, int64_t n)
{
    if (s->has_ts)
        return -1;
    int64_t slot = s->has_write ? s->write[n] : s->slot[n];
    return is_null_slot(s, slot) ? -1 : slot;
}

/* ---------------------------------------------------------------------------------------
 * Buffers
 * ------------------------------------------------------------------------------------- */

typedef struct alloc {
    unsigned char *base;
    size_t size;
} alloc;

typedef struct world {
    alloc a[P_COUNT];                           /* one allocation per tensor; out and pool may share one */
    const unsigned char *ptr[P_COUNT];          /* what the call gets (NULL, misaligned, inside the arena) */
    alloc arena;                                /* out and pool together (s->arena) */
    int64_t rows;                               /* token rows allocated for the activations and out */
    int64_t alloc_slots;                        /* pool slots allocated */
    size_t out_bytes, pool_bytes;               /* bytes of the out and pool regions */
    int clamped;                                /* some buffer is smaller than the call may touch */
    _Alignas(16) unsigned char counter_box[16]; /* COUNTER_OWN and COUNTER_MISALIGNED point here */
    uint32_t *counter;                          /* what bad_index_rows gets */
} world;

static size_t elem_size(const spec *s, int which)
{
    if (which <= P_OUT)
        return act_size(s->act);
    if (which <= P_DT)
        return 4;
    if (which == P_POOL)
        return state_size(s->state);
    return idx_size(s->idx);
}

/* The library's overlap rule: out's first `rows` token rows against the whole claimed pool. */
static int overlaps(const spec *s, const world *w)
{
    __int128 rows = rows_needed(s);
    if (rows <= 0 || !w->ptr[P_OUT] || !w->ptr[P_POOL])
        return 0;
    __int128 out_lo = (__int128)(uintptr_t)w->ptr[P_OUT];
    __int128 out_hi =
        out_lo + ((rows - 1) * eff_stride(s, T_OUT) + row_width(s, T_OUT)) * (__int128)act_size(s->act);
    __int128 pool_lo = (__int128)(uintptr_t)w->ptr[P_POOL];
    __int128 pool_hi = pool_lo + pool_extent(s, s->slots) * (__int128)state_size(s->state);
    return out_lo < pool_hi && pool_lo < out_hi;
}

/* 1 when include/gdn.h says the call must succeed, 0 when it must fail (*why says why), -1
 * when it must succeed but its buffers cannot be built here (skipped). Every element offset the
 * call can form must fit in 64 bits: the library refuses strides that overflow, and the same is
 * required of the rows cu_seqlens names and of N * num_tokens. */
static int contract_ok(const spec *s, const world *w, const char **why)
{
#define NO(reason)                                                                                           \
    do {                                                                                                     \
        *why = reason;                                                                                       \
        return 0;                                                                                            \
    } while (0)
    *why = "";
    if (s->bad_struct)
        NO("struct_size");
    if (s->N < 0)
        NO("N < 0");
    if (s->H <= 0 || s->HV <= 0 || s->K <= 0 || s->V <= 0 || s->slots <= 0)
        NO("a dimension <= 0");
    if (s->HV % s->H)
        NO("HV % H");
    if (!fits(smul(smul(smul(s->HV, s->V), s->K), 8)))
        NO("pool bytes overflow");
    if (s->slot_stride < 0 || (s->slot_stride > 0 && s->slot_stride < smul(smul(s->HV, s->V), s->K)))
        NO("state_slot_stride shorter than a slot");
    if (!fits(smul(pool_extent(s, s->slots), 8)))
        NO("pool bytes overflow");
    if (s->head_map != 0 && s->head_map != 1)
        NO("head_map");
    if (s->layout != 0 && s->layout != 1)
        NO("layout");
    if (s->backend != GDN_BACKEND_CPU && s->backend != GDN_BACKEND_AUTO)
        NO("backend");
    if (!isfinite(s->scale))
        NO("scale");
    if (s->threads < 0)
        NO("num_threads");
    if (s->N > 0 && !w->ptr[P_POOL])
        NO("pool NULL");
    if (!act_ok(s->act) || !state_ok(s->state) || !idx_ok(s->idx))
        NO("dtype");
    if (s->K > GDN_MAX_HEAD_DIM || s->V > GDN_MAX_HEAD_DIM)
        NO("head size");
    if (s->T < 0 || (s->T > GDN_MAX_TOKENS && !s->has_cu))
        NO("num_tokens");
    if (s->T > GDN_MAX_TOKENS && (s->has_ts || s->has_acc)) /* 0.5: longer varlen sequences, no slots */
        NO("num_tokens past GDN_MAX_TOKENS with token slots");
    if (s->has_cu && s->T < 1)
        NO("cu_seqlens without num_tokens");
    if (s->ts_stride < 0 || (s->ts_stride > 0 && s->ts_stride < teff(s)))
        NO("token_slots_stride");
    if (s->has_acc && !s->has_ts)
        NO("num_accepted without token_slots");
    if (s->has_ts && s->has_write)
        NO("token_slots with write_slot_indices");
    if (s->N == 0)
        return 1;
    int present[P_COUNT] = {
        1,         1,         1,         1, 1, 1, 1, 1, 1, s->has_slot || !s->has_acc, s->has_write,
        s->has_cu, s->has_ts, s->has_acc};
    for (int i = 0; i < P_COUNT; i++) {
        if (!present[i])
            continue;
        if (!w->ptr[i])
            NO("NULL pointer");
        if ((uintptr_t)w->ptr[i] % elem_size(s, i))
            NO("misaligned");
    }
    __int128 all_rows = (__int128)s->N * teff(s);
    if (!fits(all_rows))
        NO("N * num_tokens overflows");
    for (int t = 0; t < T_ACT; t++) {
        if (s->stride[t] < 0 || (s->stride[t] > 0 && s->stride[t] < row_width(s, t)))
            NO("stride");
        if (!fits(smul(smul(all_rows, eff_stride(s, t)), (__int128)act_size(s->act))))
            NO("stride overflow (in bytes)");
    }
    if (s->has_ts && !fits((__int128)s->N * s->ts_real))
        NO("N * token_slots_stride overflows");
    if (s->N > MAX_N || (s->has_ts && s->ts_real > s->ts_cols))
        return -1; /* valid as far as we can tell, but the index arrays would be too big */
    for (int64_t n = 0; n < s->N; n++) {
        if (s->has_slot && s->slot[n] >= s->slots)
            NO("slot out of range");
        if (s->has_write && s->write[n] >= s->slots)
            NO("write slot out of range");
        /* the token-slot columns the call can read: all with num_accepted, else the first T */
        for (int64_t t = 0; s->has_ts && t < (s->has_acc ? s->ts_real : teff(s)); t++)
            if (ts_at(s, n, t) >= s->slots)
                NO("token slot out of range");
        if (s->has_acc && (s->acc[n] < 1 || s->acc[n] > s->ts_real))
            NO("num_accepted");
        if (s->has_cu) {
            __int128 count = (__int128)s->cu[n + 1] - s->cu[n];
            /* and every row inside the N * T rows the offsets were checked for */
            if (s->cu[n] < 0 || count < 0 || count > teff(s) || (__int128)s->cu[n + 1] > smul(s->N, teff(s)))
                NO("cu_seqlens");
        }
    }
    if (s->has_cu)
        for (int t = 0; t < T_ACT; t++)
            if (!fits(smul(rows_needed(s), eff_stride(s, t))))
                NO("cu_seqlens rows overflow");
    if (overlaps(s, w))
        NO("overlap");
    if (w->counter) { /* a uint32, 4-aligned, outside the pool and (without cu_seqlens) out's rows */
        __int128 at = (__int128)(uintptr_t)w->counter, pool_lo = (__int128)(uintptr_t)w->ptr[P_POOL];
        __int128 pool_hi = pool_lo + pool_extent(s, s->slots) * (__int128)state_size(s->state);
        if ((uintptr_t)w->counter % 4)
            NO("bad_index_rows misaligned");
        if (at < pool_hi && pool_lo < at + 4)
            NO("bad_index_rows inside the pool");
        __int128 out_lo = (__int128)(uintptr_t)w->ptr[P_OUT], rows = rows_needed(s);
        __int128 out_hi =
            out_lo + ((rows - 1) * eff_stride(s, T_OUT) + row_width(s, T_OUT)) * (__int128)act_size(s->act);
        if (!s->has_cu && rows > 0 && at < out_hi && out_lo < at + 4)
            NO("bad_index_rows inside out");
    }
    /* a huge pool is allocated as its first few slots: skip calls that use a slot beyond them */
    for (int64_t n = 0; n < s->N; n++) {
        if ((s->has_slot && s->slot[n] >= w->alloc_slots) || (s->has_write && s->write[n] >= w->alloc_slots))
            return -1;
        for (int64_t t = 0; s->has_ts && t < s->ts_real; t++)
            if (ts_at(s, n, t) >= w->alloc_slots)
                return -1;
    }
    return 1;
#undef NO
}

/* Bytes of tensor t for `rows` token rows (exact: the last row ends at its last element). */
static __int128 tensor_bytes(const spec *s, int t, __int128 rows, int64_t stride)
{
    if (rows <= 0)
        return 0;
    return smul(smul(rows - 1, stride) + row_width(s, t), (__int128)act_size(s->act));
}

/* Sizes of everything, from the dims (clamped where they are invalid anyway). Returns 0 when a
 * buffer the call may touch would exceed CAP_BYTES. */
static int plan(const spec *given, world *w, __int128 bytes[P_COUNT])
{
    spec clamped = *given, *s = &clamped; /* dims <= 0 are refused anyway: size as if 1 */
    s->H = clamp64(s->H, 1, INT64_MAX), s->HV = clamp64(s->HV, 1, INT64_MAX);
    s->K = clamp64(s->K, 1, INT64_MAX), s->V = clamp64(s->V, 1, INT64_MAX);
    __int128 rows;
    if (s->has_cu) {
        rows = 0;
        for (int64_t n = 0; n <= clamp64(s->N, 0, MAX_N); n++)
            rows = s->cu[n] > rows ? s->cu[n] : rows;
    } else {
        rows = smul(clamp64(s->N, 0, INT64_MAX), teff(s));
    }
    w->rows = rows > INT64_MAX ? INT64_MAX : (int64_t)rows;
    int big = 0;
    for (int t = 0; t < T_ACT; t++) {
        int64_t stride = s->stride[t] >= row_width(s, t)
                             ? s->stride[t]
                             : (int64_t)(row_width(s, t) > INT64_MAX ? INT64_MAX : row_width(s, t));
        bytes[t] = tensor_bytes(s, t, rows, stride);
        if (bytes[t] > CAP_BYTES || row_width(s, t) > CAP_BYTES) {
            big = 1;
            bytes[t] = 4096;
        }
    }
    int64_t hv = s->HV;
    bytes[P_ALOG] = bytes[P_DT] = smul(hv, 4);
    if (bytes[P_ALOG] > CAP_BYTES) {
        big = 1;
        bytes[P_ALOG] = bytes[P_DT] = 64;
    }
    w->alloc_slots = clamp64(s->slots, 1, 8);
    bytes[P_POOL] = smul(pool_extent(s, w->alloc_slots), (__int128)state_size(s->state));
    if (bytes[P_POOL] > CAP_BYTES) {
        big = 1;
        bytes[P_POOL] = 4096;
    }
    int64_t n = clamp64(s->N, 0, MAX_N);
    bytes[P_SLOT] = bytes[P_WRITE] = bytes[P_ACC] = (__int128)n * idx_size(s->idx);
    bytes[P_CU] = (__int128)(n + 1) * idx_size(s->idx);
    bytes[P_TS] = (__int128)n * s->ts_cols * idx_size(s->idx);
    w->out_bytes = (size_t)bytes[P_OUT];
    w->pool_bytes = (size_t)bytes[P_POOL];
    return !big;
}

static uint16_t to_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)(u >> 16);
}

static uint16_t to_f16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u)
        return sign | 0x7e00u;
    if (abs >= 0x477ff000u)
        return sign | 0x7c00u;
    if (abs < 0x38800000u)
        return sign;
    return (uint16_t)(sign | ((abs - 0x38000000u) >> 13));
}

static void store(unsigned char *base, int dtype, size_t i, double x)
{
    switch (dtype) {
    case GDN_DTYPE_F16: {
        uint16_t h = to_f16((float)x);
        memcpy(base + 2 * i, &h, 2);
        break;
    }
    case GDN_DTYPE_BF16: {
        uint16_t h = to_bf16((float)x);
        memcpy(base + 2 * i, &h, 2);
        break;
    }
    case GDN_DTYPE_F64: memcpy(base + 8 * i, &x, 8); break;
    default: {
        float f = (float)x;
        memcpy(base + 4 * i, &f, 4);
        break;
    }
    }
}

/* Element i of a buffer of any floating dtype, widened (src/common/numeric.h). */
static double load(const unsigned char *base, int dtype, size_t i)
{
    return gdn_load_f64(base, (gdn_dtype)dtype, (int64_t)i);
}

/* A finite value: bounded ("tame") or any finite bit pattern of the dtype ("wild"). */
static double value(const spec *s, uint64_t *rng, int dtype, double lo, double hi)
{
    uint64_t x = next(rng);
    if (s->values == VALUES_WILD) {
        double d;
        if (dtype == GDN_DTYPE_F64) {
            memcpy(&d, &x, 8);
        } else {
            float f;
            uint32_t u = (uint32_t)x;
            memcpy(&f, &u, 4);
            d = f;
        }
        return isfinite(d) ? d : 0.0;
    }
    if ((x & 63) == 0)
        return 0.0;
    return uniform(rng, lo, hi);
}

static int place(const spec *s, world *w, int which, size_t bytes)
{
    size_t pad = s->misalign == which ? (size_t)s->misalign_by : 0;
    w->a[which].size = bytes + pad;
    w->a[which].base = malloc(w->a[which].size ? w->a[which].size : 1);
    if (!w->a[which].base)
        return 0;
    w->ptr[which] = w->a[which].base + pad;
    return 1;
}

static void free_world(world *w)
{
    for (int i = 0; i < P_COUNT; i++)
        if (!(w->arena.base && (i == P_OUT || i == P_POOL)))
            free(w->a[i].base);
    free(w->arena.base);
}

/* Allocates and fills every buffer. Returns 0 when the problem is skipped. */
static int build(const spec *s, world *w)
{
    memset(w, 0, sizeof *w);
    __int128 bytes[P_COUNT];
    int small = plan(s, w, bytes);
    w->clamped = !small;
    /* arena: out placed relative to the pool: touching either end, overlapping, or just apart */
    if (s->arena && small && w->out_bytes > 0 && w->pool_bytes > 0) {
        int64_t ob = (int64_t)w->out_bytes, pb = (int64_t)w->pool_bytes, es = (int64_t)act_size(s->act);
        int64_t shift;
        switch ((s->arena_shift / 32 % 8 + 8) % 8) {
        case 0: shift = -ob; break;
        case 1: shift = pb; break;
        case 2: shift = -ob + es; break;
        case 3: shift = pb - es; break;
        case 4: shift = 0; break;
        case 5: shift = -ob - 64; break;
        default: shift = ((s->arena_shift % (ob + pb)) + (ob + pb)) % (ob + pb) - ob; break;
        }
        shift -= shift % es; /* keep out aligned; misalignment is tested on its own */
        int64_t lo = shift < 0 ? shift : 0;
        int64_t pool_off = -lo, out_off = shift - lo;
        int64_t pad = (8 - pool_off % 8) % 8;
        pool_off += pad, out_off += pad;
        int64_t end = pool_off + pb > out_off + ob ? pool_off + pb : out_off + ob;
        w->arena.size = (size_t)end;
        w->arena.base = malloc(w->arena.size);
        if (!w->arena.base)
            return 0;
        w->a[P_POOL] = w->a[P_OUT] = w->arena;
        w->ptr[P_POOL] = w->arena.base + pool_off;
        w->ptr[P_OUT] = w->arena.base + out_off;
    }
    for (int i = 0; i < P_COUNT; i++) {
        if (w->arena.base && (i == P_OUT || i == P_POOL))
            continue;
        if (!place(s, w, i, (size_t)bytes[i]))
            return 0;
    }
    /* values */
    uint64_t rng = s->seed;
    int lo_dtype[P_COUNT];
    for (int i = 0; i < P_COUNT; i++)
        lo_dtype[i] = i <= P_OUT ? s->act : i <= P_DT ? GDN_DTYPE_F32 : i == P_POOL ? s->state : s->idx;
    double qk = s->l2norm ? 2.0 : 1.0 / sqrt((double)clamp64(s->K, 1, 1 << 20));
    const double range[P_COUNT][2] = {{-qk, qk}, {-qk, qk}, {-2, 2}, {-4, 4}, {-4, 4},
                                      {0, 0},    {-3, 1},   {-2, 2}, {-1, 1}};
    for (int i = 0; i <= P_POOL; i++) {
        unsigned char *base = (unsigned char *)w->ptr[i];
        size_t es = elem_size(s, i), count = (size_t)(i == P_OUT    ? w->out_bytes
                                                      : i == P_POOL ? w->pool_bytes
                                                                    : (size_t)bytes[i]) /
                                             es;
        if (i == P_OUT) { /* arbitrary bytes: an unwritten element cannot pass for a written one */
            for (size_t b = 0; b < count * es; b++)
                base[b] = (unsigned char)next(&rng);
            continue;
        }
        for (size_t e = 0; e < count; e++)
            store(base, lo_dtype[i], e, value(s, &rng, lo_dtype[i], range[i][0], range[i][1]));
    }
    if (w->arena.base) /* the arena bytes outside both regions */
        for (size_t b = 0; b < w->arena.size; b++)
            if (w->arena.base + b < w->ptr[P_POOL] || w->arena.base + b >= w->ptr[P_POOL] + w->pool_bytes)
                if (w->arena.base + b < w->ptr[P_OUT] || w->arena.base + b >= w->ptr[P_OUT] + w->out_bytes)
                    w->arena.base[b] = (unsigned char)next(&rng);
    for (int i = 0; i < s->poison_count; i++) {
        int t = s->poison[i].tensor;
        size_t count = (size_t)bytes[t] / act_size(s->act);
        if (!count || !act_ok(s->act))
            continue;
        double bad = s->poison[i].kind == 0 ? NAN : s->poison[i].kind == 1 ? INFINITY : -INFINITY;
        store((unsigned char *)w->ptr[t], s->act, s->poison[i].where % count, bad);
    }
    /* index arrays */
    int64_t n = clamp64(s->N, 0, MAX_N);
    const int64_t *src[P_COUNT] = {0};
    src[P_SLOT] = s->slot, src[P_WRITE] = s->write, src[P_ACC] = s->acc, src[P_CU] = s->cu, src[P_TS] = s->ts;
    int64_t counts[P_COUNT] = {0};
    counts[P_SLOT] = counts[P_WRITE] = counts[P_ACC] = n, counts[P_CU] = n + 1, counts[P_TS] = n * s->ts_cols;
    for (int i = P_SLOT; i < P_COUNT; i++)
        for (int64_t e = 0; e < counts[i]; e++) {
            unsigned char *base = (unsigned char *)w->ptr[i];
            if (s->idx == GDN_DTYPE_I32) {
                int32_t v = (int32_t)src[i][e];
                memcpy(base + 4 * e, &v, 4);
            } else {
                memcpy(base + 8 * e, &src[i][e], 8);
            }
        }
    /* pointers the call gets */
    int present[P_COUNT] = {1,         1,         1,         1, 1, 1, 1, 1, 1, s->has_slot, s->has_write,
                            s->has_cu, s->has_ts, s->has_acc};
    for (int i = 0; i < P_COUNT; i++)
        if (!present[i] || s->null_ptr == i)
            w->ptr[i] = NULL;
    memset(w->counter_box, 0xA5, sizeof w->counter_box);
    switch (s->counter) {
    case COUNTER_OWN: w->counter = (uint32_t *)w->counter_box; break;
    case COUNTER_MISALIGNED: w->counter = (uint32_t *)(void *)(w->counter_box + 2); break;
    case COUNTER_IN_POOL: w->counter = (uint32_t *)(void *)w->ptr[P_POOL]; break;
    case COUNTER_IN_OUT: w->counter = (uint32_t *)(void *)w->ptr[P_OUT]; break;
    default: w->counter = NULL; break;
    }
    return 1;
}

/* ---------------------------------------------------------------------------------------
 * Running and checking
 * ------------------------------------------------------------------------------------- */

static void describe(FILE *f)
{
    const spec *s = &S;
    fprintf(
        f,
        "  problem: N=%lld H=%lld HV=%lld K=%lld V=%lld T=%lld slots=%lld act=%d state=%d idx=%d layout=%d "
        "head_map=%d l2norm=%d null_zero=%d backend=%d threads=%d scale=%g\n"
        "  strides q=%lld k=%lld v=%lld a=%lld b=%lld out=%lld; write=%d cu=%d token_slots=%d (stride %lld) "
        "accepted=%d slot_indices=%d; null=%d misalign=%d(+%d) arena=%d values=%d counter=%d struct=%s\n",
        (long long)s->N, (long long)s->H, (long long)s->HV, (long long)s->K, (long long)s->V, (long long)s->T,
        (long long)s->slots, s->act, s->state, s->idx, s->layout, s->head_map, s->l2norm, s->null_zero,
        s->backend, s->threads, (double)s->scale, (long long)s->stride[0], (long long)s->stride[1],
        (long long)s->stride[2], (long long)s->stride[3], (long long)s->stride[4], (long long)s->stride[5],
        s->has_write, s->has_cu, s->has_ts, (long long)s->ts_stride, s->has_acc, s->has_slot, s->null_ptr,
        s->misalign, s->misalign_by, s->arena, s->values, s->counter,
        s->bad_struct   ? "bad"
        : s->old_struct ? "0.1"
        : s->struct02   ? "0.2"
        : s->struct03   ? "0.3"
                        : "0.4");
    fprintf(f, "  state_slot_stride %lld\n", (long long)s->slot_stride);
    int64_t n = clamp64(s->N, 0, MAX_N);
    for (int64_t i = 0; i < n; i++) {
        fprintf(f, "  seq %lld: slot %lld write %lld accepted %lld cu %lld..%lld token_slots", (long long)i,
                (long long)s->slot[i], (long long)s->write[i], (long long)s->acc[i], (long long)s->cu[i],
                (long long)s->cu[i + 1]);
        for (int64_t t = 0; t < s->ts_cols && t < 20; t++)
            fprintf(f, " %lld", (long long)ts_at(s, i, t));
        fprintf(f, "\n");
    }
}

static gdn_decode_params params_for(const spec *s, const world *w)
{
    gdn_decode_params p;
    gdn_decode_params_init(&p);
    if (s->bad_struct)
        p.struct_size = sizeof p - 4;
    if (s->old_struct) /* junk where an older caller's struct ends: the library must not read it */
        p.struct_size = offsetof(gdn_decode_params, num_tokens);
    if (s->struct02)
        p.struct_size = offsetof(gdn_decode_params, bad_index_rows);
    if (s->struct03)
        p.struct_size = offsetof(gdn_decode_params, pdl);
    /* an older caller's junk in bad_index_rows would be refused (misaligned) if it were read */
    p.bad_index_rows = s->struct02 || s->old_struct ? (uint32_t *)(void *)(w->counter_box + 1) : w->counter;
    p.num_seqs = s->N, p.num_q_heads = s->H, p.num_v_heads = s->HV, p.head_dim_k = s->K, p.head_dim_v = s->V;
    p.act_dtype = (gdn_dtype)s->act;
    p.q = w->ptr[P_Q], p.k = w->ptr[P_K], p.v = w->ptr[P_V], p.a = w->ptr[P_A], p.b = w->ptr[P_B];
    p.out = (void *)w->ptr[P_OUT];
    p.q_stride = s->stride[T_Q], p.k_stride = s->stride[T_K], p.v_stride = s->stride[T_V];
    p.a_stride = s->stride[T_A], p.b_stride = s->stride[T_B], p.out_stride = s->stride[T_OUT];
    p.A_log = (const float *)w->ptr[P_ALOG], p.dt_bias = (const float *)w->ptr[P_DT];
    p.scale = s->scale, p.qk_l2norm = s->l2norm, p.head_map = (gdn_head_map)s->head_map;
    p.state_pool = (void *)w->ptr[P_POOL], p.num_slots = s->slots;
    p.state_layout = (gdn_state_layout)s->layout, p.state_dtype = (gdn_dtype)s->state;
    p.slot_indices = w->ptr[P_SLOT], p.write_slot_indices = w->ptr[P_WRITE];
    p.index_dtype = (gdn_dtype)s->idx, p.null_slot_zero = s->null_zero;
    p.backend = (gdn_backend)s->backend, p.num_threads = s->threads;
    p.num_tokens = s->T, p.cu_seqlens = w->ptr[P_CU], p.token_slots = w->ptr[P_TS];
    p.token_slots_stride = s->ts_stride, p.num_accepted = w->ptr[P_ACC];
    /* an older caller's junk where the slot stride would be: refused (shorter than a slot) if read */
    p.state_slot_stride = s->struct02 || s->old_struct || s->struct03 ? 1 : s->slot_stride;
    return p;
}

/* The writable allocations: out's and the pool's (one when they share the arena). */
static int writables(const world *w, alloc out[2])
{
    if (w->arena.base) {
        out[0] = w->arena;
        return 1;
    }
    out[0] = w->a[P_OUT];
    out[1] = w->a[P_POOL];
    return 2;
}

/* Byte map over a writable allocation: 0 must stay as it was, 1 written, 2 written as zeros. */
typedef struct bytemap {
    alloc a;
    unsigned char *map;
} bytemap;

static void mark(bytemap *m, int count, const unsigned char *from, size_t bytes, unsigned char kind)
{
    for (int i = 0; i < count; i++)
        if (from >= m[i].a.base && from + bytes <= m[i].a.base + m[i].a.size) {
            memset(m[i].map + (from - m[i].a.base), kind, bytes);
            return;
        }
    FAIL("harness: a region outside its allocation");
}

/* Slots whose tiles sequence n writes (write slot or snapshot slots). */
static int written_slots(const spec *s, int64_t n, int64_t *out)
{
    int count = 0;
    if (seq_tokens(s, n) <= 0 || read_slot(s, n) < 0)
        return 0;
    if (s->has_ts) {
        for (int64_t t = 0; t < seq_tokens(s, n); t++)
            if (!is_null_slot(s, ts_at(s, n, t)))
                out[count++] = ts_at(s, n, t);
    } else if (write_slot(s, n) >= 0) {
        out[count++] = write_slot(s, n);
    }
    return count;
}

/* Does any sequence write a slot that another sequence reads or writes? The library's results are
 * then defined only in row order, which one cpu thread and the reference both follow. */
static int aliased(const spec *s)
{
    int64_t wn[GDN_MAX_TOKENS + 1], wm[GDN_MAX_TOKENS + 1];
    for (int64_t n = 0; n < s->N; n++) {
        int cn = written_slots(s, n, wn);
        for (int64_t m = 0; m < s->N; m++) {
            if (m == n || seq_tokens(s, m) <= 0 || read_slot(s, m) < 0)
                continue;
            int cm = written_slots(s, m, wm);
            for (int i = 0; i < cn; i++) {
                if (wn[i] == read_slot(s, m))
                    return 1;
                for (int j = 0; j < cm; j++)
                    if (wn[i] == wm[j])
                        return 1;
            }
        }
    }
    return 0;
}

static double ulp_of(int dtype, double m)
{
    switch (dtype) {
    case GDN_DTYPE_BF16: return m * 0x1p-7;
    case GDN_DTYPE_F16: return fmax(m * 0x1p-10, 0x1p-24);
    case GDN_DTYPE_F32: return m * 0x1p-23;
    default: return 0.0;
    }
}

typedef struct compare {
    const char *what;
    int dtype;
    double rel, max_ref;
    int lenient; /* poison: any non-finite matches any non-finite */
} compare;

static void check_close(const compare *c, double x, double r, const char *where, long long a, long long b)
{
    if (!isfinite(x) || !isfinite(r)) {
        if (c->lenient && !isfinite(x) && !isfinite(r))
            return;
        FAIL("%s %s [%lld, %lld]: cpu %.9g, reference %.9g (non-finite)", c->what, where, a, b, x, r);
    }
    double tol = c->rel * (fabs(r) + c->max_ref) + ulp_of(c->dtype, fmax(fabs(r), fabs(x))) + 1e-37;
    if (fabs(x - r) > tol)
        FAIL("%s %s [%lld, %lld]: cpu %.9g, reference %.9g, |diff| %.3g > tol %.3g", c->what, where, a, b, x,
             r, fabs(x - r), tol);
}

static void check_result(const spec *s, const world *w, const world *ref, const alloc *before, int nw)
{
    alloc cur[2], refw[2];
    writables(w, cur);
    writables(ref, refw);
    bytemap m[2];
    for (int i = 0; i < nw; i++) {
        m[i].a = cur[i];
        m[i].map = calloc(cur[i].size ? cur[i].size : 1, 1);
    }
    size_t aes = act_size(s->act), ses = state_size(s->state);
    int64_t tile = s->HV * s->V * s->K, width = s->HV * s->V, ostride = eff_stride(s, T_OUT);
    const int64_t stride = (int64_t)eff_slot_stride(s);
    /* what the call writes */
    for (int64_t n = 0; n < s->N; n++) {
        int64_t tokens = seq_tokens(s, n), rd = read_slot(s, n);
        for (int64_t t = 0; t < tokens; t++)
            mark(m, nw, w->ptr[P_OUT] + (size_t)((first_row(s, n) + t) * ostride) * aes, (size_t)width * aes,
                 rd < 0 ? 2 : 1);
        int64_t slots[GDN_MAX_TOKENS + 1];
        int count = written_slots(s, n, slots);
        for (int i = 0; i < count; i++) {
            if (slots[i] >= w->alloc_slots)
                FAIL("harness: slot %lld beyond the allocated %lld", (long long)slots[i],
                     (long long)w->alloc_slots);
            mark(m, nw, w->ptr[P_POOL] + (size_t)(slots[i] * stride) * ses, (size_t)tile * ses, 1);
        }
    }
    /* bytes that must not change, and zeros of padding rows, on both backends */
    for (int i = 0; i < nw; i++)
        for (size_t b = 0; b < cur[i].size; b++) {
            if (m[i].map[b] == 0) {
                if (cur[i].base[b] != before[i].base[b])
                    FAIL("cpu changed byte %zu of the %s allocation, which it must not write", b,
                         nw == 1  ? "arena"
                         : i == 0 ? "out"
                                  : "pool");
                if (refw[i].base[b] != before[i].base[b])
                    FAIL("reference changed byte %zu of the %s allocation, which it must not write", b,
                         nw == 1  ? "arena"
                         : i == 0 ? "out"
                                  : "pool");
            } else if (m[i].map[b] == 2) {
                if (cur[i].base[b] != 0 || refw[i].base[b] != 0)
                    FAIL("padding-row output byte %zu not zero (cpu %u, reference %u)", b, cur[i].base[b],
                         refw[i].base[b]);
            }
        }
    for (int i = 0; i < nw; i++)
        free(m[i].map);
    if (s->values == VALUES_WILD || fabsf(s->scale) > 8.0f)
        return; /* float32 and float64 overflow differently: memory and bytes only */
    stats.compared += s->N > 0;
    /* numbers: outputs of non-padding rows, then written tiles */
    double rel = 1e-4;
    if (aliased(s) && s->state == GDN_DTYPE_BF16)
        rel = 1e-2; /* a re-read bf16 state may differ by one rounding between the backends */
    compare co = {"out", s->act, rel, 0.0, s->values == VALUES_POISON};
    for (int pass = 0; pass < 2; pass++)
        for (int64_t n = 0; n < s->N; n++) {
            if (read_slot(s, n) < 0)
                continue;
            for (int64_t t = 0; t < seq_tokens(s, n); t++) {
                size_t row = (size_t)((first_row(s, n) + t) * ostride);
                for (int64_t e = 0; e < width; e++) {
                    double x = load(w->ptr[P_OUT], s->act, row + (size_t)e);
                    double r = load(ref->ptr[P_OUT], s->act, row + (size_t)e);
                    if (pass == 0 && isfinite(r))
                        co.max_ref = fmax(co.max_ref, fabs(r));
                    if (pass == 1)
                        check_close(&co, x, r, "row, element", (long long)(first_row(s, n) + t),
                                    (long long)e);
                }
            }
        }
    compare cs = {"state", s->state, rel, 0.0, s->values == VALUES_POISON};
    int written[8] = {0};
    for (int64_t n = 0; n < s->N; n++) {
        int64_t slots[GDN_MAX_TOKENS + 1];
        int count = written_slots(s, n, slots);
        for (int i = 0; i < count; i++)
            written[slots[i]] = 1;
    }
    for (int pass = 0; pass < 2; pass++)
        for (int64_t slot = 0; slot < w->alloc_slots; slot++) {
            if (!written[slot])
                continue;
            for (int64_t e = 0; e < tile; e++) {
                double x = load(w->ptr[P_POOL], s->state, (size_t)(slot * stride + e));
                double r = load(ref->ptr[P_POOL], s->state, (size_t)(slot * stride + e));
                if (pass == 0 && isfinite(r))
                    cs.max_ref = fmax(cs.max_ref, fabs(r));
                if (pass == 1)
                    check_close(&cs, x, r, "slot, element", (long long)slot, (long long)e);
            }
        }
}

/* Calls gdn_decode (or gdn_decode_backend_for) with the params as the caller hands them: an older
 * caller's struct ends at its struct_size, in an allocation of just that size. */
static gdn_status call(const spec *s, const gdn_decode_params *p, gdn_backend *backend_for)
{
    const gdn_decode_params *given = p;
    void *copy = NULL;
    if (s->old_struct || s->struct02 || s->struct03) {
        copy = malloc(p->struct_size);
        memcpy(copy, p, p->struct_size);
        given = copy;
    }
    gdn_status st = backend_for ? gdn_decode_backend_for(given, backend_for) : gdn_decode(given);
    free(copy);
    return st;
}

static int is_host_index_error(gdn_status st)
{
    return st == GDN_ERR_SLOT_OUT_OF_RANGE || st == GDN_ERR_INVALID_SHAPE || st == GDN_ERR_OVERLAP;
}

static void run(const spec *s, world *w)
{
    const char *why;
    int ok = contract_ok(s, w, &why);
    if (ok < 0 || (ok && w->clamped)) {
        stats.skipped++;
        return; /* valid, but its buffers would be too big to build */
    }
    gdn_decode_params p = params_for(s, w);
    if (ok && aliased(s))
        p.num_threads = 1; /* order-dependent results: compare in row order */
    /* snapshots of everything */
    alloc wr[2], before[2], inputs[P_COUNT];
    int nw = writables(w, wr);
    for (int i = 0; i < nw; i++) {
        before[i].size = wr[i].size;
        before[i].base = malloc(wr[i].size ? wr[i].size : 1);
        memcpy(before[i].base, wr[i].base, wr[i].size);
    }
    for (int i = 0; i < P_COUNT; i++) {
        inputs[i].base = NULL;
        if (i == P_OUT || i == P_POOL)
            continue;
        inputs[i].size = w->a[i].size;
        inputs[i].base = malloc(w->a[i].size ? w->a[i].size : 1);
        memcpy(inputs[i].base, w->a[i].base, w->a[i].size);
    }

    gdn_backend chosen = (gdn_backend)77;
    gdn_status bf = call(s, &p, &chosen);
    for (int i = 0; i < nw; i++)
        REQUIRE(memcmp(wr[i].base, before[i].base, wr[i].size) == 0, "gdn_decode_backend_for wrote memory");
    gdn_status st = call(s, &p, NULL);
    const char *msg = gdn_last_error();
    for (size_t i = 0; i < sizeof w->counter_box; i++) /* host backends never write the counter */
        REQUIRE(w->counter_box[i] == 0xA5, "bad_index_rows written (byte %zu)", i);
    for (int i = 0; i < P_COUNT; i++)
        if (inputs[i].base)
            REQUIRE(memcmp(inputs[i].base, w->a[i].base, w->a[i].size) == 0, "input %s changed",
                    ptr_names[i]);
    if (bf != GDN_OK) {
        REQUIRE(st == bf, "gdn_decode_backend_for says %s, gdn_decode %s (%s)", gdn_status_string(bf),
                gdn_status_string(st), msg);
        REQUIRE(chosen == (gdn_backend)77, "gdn_decode_backend_for set *backend on failure");
    } else {
        REQUIRE(chosen == GDN_BACKEND_CPU, "gdn_decode_backend_for chose %d", (int)chosen);
        REQUIRE(st == GDN_OK || is_host_index_error(st),
                "gdn_decode_backend_for accepted, gdn_decode says %s (%s)", gdn_status_string(st), msg);
    }
    if (st != GDN_OK) {
        stats.refused++;
        REQUIRE(!ok, "refused a valid call: %s (%s)", gdn_status_string(st), msg);
        REQUIRE(msg && msg[0], "empty gdn_last_error() after %s", gdn_status_string(st));
        REQUIRE(strcmp(gdn_status_string(st), "unknown status") != 0, "status %d", (int)st);
        for (int i = 0; i < nw; i++)
            REQUIRE(memcmp(wr[i].base, before[i].base, wr[i].size) == 0,
                    "the failed call (%s: %s) wrote to out or the state pool", gdn_status_string(st), msg);
    } else {
        REQUIRE(ok, "accepted a call the contract refuses (%s)", why);
        stats.accepted++;
        if (s->N > 0) {
            stats.poison += s->values == VALUES_POISON;
            stats.wild += s->values == VALUES_WILD;
            stats.multi_token += s->T > 1;
            stats.varlen += s->has_cu;
            stats.token_slots += s->has_ts;
            stats.arena += w->arena.base != NULL;
            stats.threads += (int64_t)s->N * s->HV * s->V * s->K * teff(s) >= (2 << 18) && p.num_threads != 1;
        }
        /* the reference on copies of out and the pool as they were before the call, in one block
         * with out first: a huge claimed pool (only its first slots allocated) then reaches up from
         * the pool copy, away from out, and cannot overlap it wherever malloc puts the copies */
        world ref = *w;
        alloc copies[2];
        size_t out_room = nw == 2 ? (before[0].size + 63) / 64 * 64 : 0;
        unsigned char *block = malloc(out_room + before[nw - 1].size + 1);
        for (int i = 0; i < nw; i++) {
            copies[i].size = before[i].size;
            copies[i].base = block + (i == nw - 1 ? out_room : 0);
            memcpy(copies[i].base, before[i].base, before[i].size);
        }
        if (nw == 1) {
            ref.arena = copies[0];
            ref.ptr[P_OUT] = copies[0].base + (w->ptr[P_OUT] - w->arena.base);
            ref.ptr[P_POOL] = copies[0].base + (w->ptr[P_POOL] - w->arena.base);
        } else {
            ref.a[P_OUT] = copies[0], ref.a[P_POOL] = copies[1];
            ref.ptr[P_OUT] = w->ptr[P_OUT] ? copies[0].base + (w->ptr[P_OUT] - w->a[P_OUT].base) : NULL;
            ref.ptr[P_POOL] = w->ptr[P_POOL] ? copies[1].base + (w->ptr[P_POOL] - w->a[P_POOL].base) : NULL;
        }
        gdn_decode_params rp = params_for(s, &ref);
        rp.backend = GDN_BACKEND_REFERENCE;
        rp.num_threads = 0;
        gdn_status rs = call(s, &rp, NULL);
        REQUIRE(rs == GDN_OK, "reference: %s (%s)", gdn_status_string(rs), gdn_last_error());
        check_result(s, w, &ref, before, nw);
        free(block);
    }
    for (int i = 0; i < nw; i++)
        free(before[i].base);
    for (int i = 0; i < P_COUNT; i++)
        free(inputs[i].base);
}

static int describe_inputs;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *env = getenv("GDN_FUZZ_DESCRIBE");
    describe_inputs = env && env[0] == '1';
    env = getenv("GDN_FUZZ_STATS");
    if (env && env[0] == '1')
        atexit(print_stats);
    unsetenv("GDN_BACKEND"); /* AUTO must mean cpu here */
    unsetenv("GDN_NUM_THREADS");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size, 0};
    decode_spec(&r, &S);
    stats.inputs++;
    if (describe_inputs) /* GDN_FUZZ_DESCRIBE=1: print each problem (to replay a crash file) */
        describe(stderr);
    world w;
    if (build(&S, &w))
        run(&S, &w);
    free_world(&w);
    free(S.ts);
    S.ts = NULL;
    return 0;
}
