/*
 * Validation of gdn_decode: one test per error it can return. Each test builds a small valid
 * problem, breaks exactly one thing, and checks the status, the last-error message and that no
 * byte of the state pool or of any output changed ("validate before writing").
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gdn.h"
#include "test.h"

enum { N = 3, H = 2, HV = 4, K = 16, V = 8, SLOTS = 4 };
enum {
    QK_ELEMS = N * H * K,
    V_ELEMS = N * HV * V,
    AB_ELEMS = N * HV,
    OUT_ELEMS = N * HV * V,
    TILE_ELEMS = HV * V * K, /* one slot of the pool */
    POOL_ELEMS = SLOTS * TILE_ELEMS,
    /* the pool sits in the middle of an arena so that overlap cases can aim out at either edge */
    ARENA_ELEMS = OUT_ELEMS + POOL_ELEMS + OUT_ELEMS
};

#define POISON_BYTE 0xA5

/* Everything a call may write. Snapshotted as a whole so "untouched" is one memcmp. */
typedef struct writable {
    _Alignas(64) float out[OUT_ELEMS];
    _Alignas(64) float arena[ARENA_ELEMS];
    _Alignas(64) double out64[OUT_ELEMS];
    _Alignas(64) double pool64[POOL_ELEMS];
    _Alignas(64) uint32_t counter[2]; /* checked mode's bad_index_rows */
} writable;

typedef struct fixture {
    _Alignas(64) float q[QK_ELEMS + 16]; /* spare room for a deliberately misaligned q */
    _Alignas(64) float k[QK_ELEMS];
    _Alignas(64) float v[V_ELEMS];
    _Alignas(64) float a[AB_ELEMS];
    _Alignas(64) float b[AB_ELEMS];
    _Alignas(64) double q64[QK_ELEMS];
    _Alignas(64) double k64[QK_ELEMS];
    _Alignas(64) double v64[V_ELEMS];
    _Alignas(64) double a64[AB_ELEMS];
    _Alignas(64) double b64[AB_ELEMS];
    float A_log[HV];
    float dt_bias[HV];
    int64_t slots64[N];
    int64_t writes64[N];
    int32_t slots32[N];
    writable w;
    writable saved;
    gdn_decode_params p;
} fixture;

static fixture fx;

static float *pool(void) { return fx.w.arena + OUT_ELEMS; }

static uint32_t rng_state;

/* Non-zero values in [-1, 1] so that a zero-filled buffer never passes for an untouched one. */
static double next_value(void)
{
    rng_state = rng_state * 1664525u + 1013904223u;
    double x = (double)(rng_state >> 8) / (double)(1u << 24) * 2.0 - 1.0;
    return fabs(x) < 1e-3 ? 0.5 : x;
}

static void fill_f32(float *dst, size_t count)
{
    for (size_t i = 0; i < count; i++)
        dst[i] = (float)next_value();
}

static void fill_f64(double *dst, size_t count)
{
    for (size_t i = 0; i < count; i++)
        dst[i] = next_value();
}

static void fill_data(void)
{
    rng_state = 12345u;
    fill_f32(fx.q, QK_ELEMS + 16);
    fill_f32(fx.k, QK_ELEMS);
    fill_f32(fx.v, V_ELEMS);
    fill_f32(fx.a, AB_ELEMS);
    fill_f32(fx.b, AB_ELEMS);
    fill_f64(fx.q64, QK_ELEMS);
    fill_f64(fx.k64, QK_ELEMS);
    fill_f64(fx.v64, V_ELEMS);
    fill_f64(fx.a64, AB_ELEMS);
    fill_f64(fx.b64, AB_ELEMS);
    fill_f32(fx.A_log, HV);
    fill_f32(fx.dt_bias, HV);
    fill_f32(fx.w.arena, ARENA_ELEMS);
    fill_f64(fx.w.pool64, POOL_ELEMS);
    memset(fx.w.out, POISON_BYTE, sizeof fx.w.out);
    memset(fx.w.out64, POISON_BYTE, sizeof fx.w.out64);
    /* rows read and write distinct slots, so the valid call is order-independent */
    const int64_t slots[N] = {2, 0, 3};
    for (int n = 0; n < N; n++) {
        fx.slots64[n] = slots[n];
        fx.writes64[n] = slots[n];
        fx.slots32[n] = (int32_t)slots[n];
    }

    gdn_decode_params *p = &fx.p;
    gdn_decode_params_init(p);
    p->num_seqs = N;
    p->num_q_heads = H;
    p->num_v_heads = HV;
    p->head_dim_k = K;
    p->head_dim_v = V;
    p->act_dtype = GDN_DTYPE_F32;
    p->q = fx.q;
    p->k = fx.k;
    p->v = fx.v;
    p->a = fx.a;
    p->b = fx.b;
    p->out = fx.w.out;
    p->A_log = fx.A_log;
    p->dt_bias = fx.dt_bias;
    p->state_pool = pool();
    p->num_slots = SLOTS;
    p->state_dtype = GDN_DTYPE_F32;
    p->slot_indices = fx.slots64;
    p->index_dtype = GDN_DTYPE_I64;
    /* explicit, so that a GDN_BACKEND in the environment cannot change what is tested */
    p->backend = GDN_BACKEND_CPU;
    p->num_threads = 2;
}

static void snapshot(void) { memcpy(&fx.saved, &fx.w, sizeof fx.w); }

static int untouched(void) { return memcmp(&fx.saved, &fx.w, sizeof fx.w) == 0; }

static int out_is_poison(const void *out, size_t bytes)
{
    const unsigned char *c = out;
    for (size_t i = 0; i < bytes; i++)
        if (c[i] != POISON_BYTE)
            return 0;
    return 1;
}

/* A fresh valid problem, proven valid (and proven to write) by one real call, then rebuilt
 * byte for byte and snapshotted. */
static gdn_decode_params *fresh(void)
{
    fill_data();
    snapshot();
    gdn_status s = gdn_decode(&fx.p);
    CHECK_MSG(s == GDN_OK, "the unbroken fixture fails: %s (%s)", gdn_status_string(s), gdn_last_error());
    CHECK_MSG(!out_is_poison(fx.w.out, sizeof fx.w.out), "the unbroken fixture wrote no output");
    CHECK_MSG(memcmp(fx.saved.arena, fx.w.arena, sizeof fx.w.arena) != 0,
              "the unbroken fixture wrote no state");
    fill_data();
    snapshot();
    return &fx.p;
}

/* Leaves a known, unrelated message as the last error, so a stale one cannot pass a check. */
static void prime_last_error(void)
{
    gdn_decode_params bad;
    memset(&bad, 0, sizeof bad);
    bad.struct_size = 1;
    gdn_decode(&bad);
}

/* gdn_decode(p) must fail with `want`, name every non-NULL needle in its message, and leave
 * every writable byte as it was. gdn_decode_backend_for must agree, except on slot indices,
 * which only gdn_decode reads. */
static void expect_failure(const gdn_decode_params *p, gdn_status want, const char *needle,
                           const char *needle2)
{
    prime_last_error();
    gdn_status got = gdn_decode(p);
    const char *msg = gdn_last_error();
    CHECK_MSG(got == want, "status %d (%s), want %d (%s); message: %s", (int)got, gdn_status_string(got),
              (int)want, gdn_status_string(want), msg);
    CHECK_MSG(msg && msg[0], "empty last error for want %s", gdn_status_string(want));
    if (msg && needle)
        CHECK_MSG(strstr(msg, needle), "message \"%s\" does not mention \"%s\"", msg, needle);
    if (msg && needle2)
        CHECK_MSG(strstr(msg, needle2), "message \"%s\" does not mention \"%s\"", msg, needle2);
    CHECK_MSG(untouched(), "the failed call (%s) wrote to the state pool or an output",
              needle ? needle : gdn_status_string(want));

    if (want == GDN_ERR_SLOT_OUT_OF_RANGE)
        return;
    gdn_backend backend = (gdn_backend)77;
    got = gdn_decode_backend_for(p, &backend);
    CHECK_MSG(got == want, "gdn_decode_backend_for: status %s, gdn_decode: %s", gdn_status_string(got),
              gdn_status_string(want));
    CHECK_MSG(backend == (gdn_backend)77, "gdn_decode_backend_for set *backend on failure");
    CHECK(untouched());
}

static char *save_env(const char *name)
{
    const char *value = getenv(name);
    return value ? strdup(value) : NULL;
}

static void restore_env(const char *name, char *saved)
{
    if (saved) {
        setenv(name, saved, 1);
        free(saved);
    } else {
        unsetenv(name);
    }
}

/* ---------------------------------------------------------------------------------------
 * params itself
 * ------------------------------------------------------------------------------------- */

static void test_params_null(void)
{
    fresh();
    prime_last_error();
    gdn_status got = gdn_decode(NULL);
    CHECK(got == GDN_ERR_INVALID_ARGUMENT);
    CHECK(strstr(gdn_last_error(), "params"));
    CHECK(gdn_decode_backend_for(NULL, NULL) == GDN_ERR_INVALID_ARGUMENT);
    CHECK(untouched());
}

static void test_struct_size(void)
{
    const size_t sizes[] = {0, sizeof(gdn_decode_params) - 1, sizeof(gdn_decode_params) + 8};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        gdn_decode_params *p = fresh();
        p->struct_size = sizes[i];
        char needle[64];
        snprintf(needle, sizeof needle, "struct_size = %zu", sizes[i]);
        expect_failure(p, GDN_ERR_INVALID_ARGUMENT, needle, NULL);
    }
}

/* A caller built against the 0.1 header passes the shorter struct: accepted, and the fields it
 * does not have (the multi-token ones) are not read, whatever lies beyond its end. */
static void test_struct_size_of_older_header(void)
{
    gdn_decode_params *p = fresh();
    p->struct_size = offsetof(gdn_decode_params, num_tokens);
    p->num_tokens = 99, p->token_slots = (const void *)p; /* junk an older caller never set */
    CHECK_MSG(gdn_decode(p) == GDN_OK, "0.1-sized params refused: %s", gdn_last_error());
}

/* A caller built against the 0.2 header (before checked mode): its struct ends at num_accepted,
 * and whatever lies where bad_index_rows would be is not read (here: a pointer into the pool,
 * which would be refused as an overlap if it were). */
static void test_struct_size_of_02_header(void)
{
    gdn_decode_params *p = fresh();
    p->struct_size = offsetof(gdn_decode_params, bad_index_rows);
    p->bad_index_rows = (uint32_t *)pool();
    CHECK_MSG(gdn_decode(p) == GDN_OK, "0.2-sized params refused: %s", gdn_last_error());
}

/* A caller built against the 0.3 header (before pdl): its struct ends after bad_index_rows, and
 * whatever lies where pdl would be is not read. */
static void test_struct_size_of_03_header(void)
{
    gdn_decode_params *p = fresh();
    p->struct_size = offsetof(gdn_decode_params, bad_index_rows) + sizeof(uint32_t *);
    p->pdl = 12345;
    CHECK_MSG(gdn_decode(p) == GDN_OK, "0.3-sized params refused: %s", gdn_last_error());
}

static void test_struct_size_of_04_header(void)
{
    gdn_decode_params *p = fresh();
    p->struct_size = offsetof(gdn_decode_params, state_slot_stride) + sizeof(int64_t);
    p->total_tokens = -5; /* past a 0.4 struct: must not be read */
    CHECK_MSG(gdn_decode(p) == GDN_OK, "0.4-sized params refused: %s", gdn_last_error());
}

/* A caller built against a 0.5/0.6 header (before the workspace): whatever lies where the
 * workspace would be is not read (here: a misaligned pointer into the pool). */
static void test_struct_size_of_06_header(void)
{
    gdn_decode_params *p = fresh();
    p->struct_size = offsetof(gdn_decode_params, workspace);
    p->workspace = (unsigned char *)pool() + 3, p->workspace_bytes = 1;
    p->backend = GDN_BACKEND_CPU;
    CHECK_MSG(gdn_decode(p) == GDN_OK, "0.6-sized params refused: %s", gdn_last_error());
}

/* ---------------------------------------------------------------------------------------
 * varlen prefill and precomputed gates (0.5)
 * ------------------------------------------------------------------------------------- */

static int64_t cu_rows[N + 1];
static float g_rows[AB_ELEMS], beta_rows[AB_ELEMS];

/* The fixture as a varlen call whose sequences may be longer than GDN_MAX_TOKENS: one token
 * each here, num_tokens 40, total_tokens = N rows; proven valid by fresh(). */
static gdn_decode_params *fresh_varlen(void)
{
    gdn_decode_params *p = fresh();
    for (int n = 0; n <= N; n++)
        cu_rows[n] = n;
    p->cu_seqlens = cu_rows, p->num_tokens = 40, p->total_tokens = N;
    CHECK_MSG(gdn_decode(p) == GDN_OK, "the varlen fixture fails: %s", gdn_last_error());
    fill_data();
    snapshot();
    p->cu_seqlens = cu_rows, p->num_tokens = 40, p->total_tokens = N;
    return p;
}

/* gdn_decode alone (cu_seqlens values are read by gdn_decode only, as slot values are). */
static void expect_decode_failure(const gdn_decode_params *p, gdn_status want, const char *needle)
{
    prime_last_error();
    gdn_status got = gdn_decode(p);
    CHECK_MSG(got == want, "status %s, want %s: %s", gdn_status_string(got), gdn_status_string(want),
              gdn_last_error());
    CHECK_MSG(strstr(gdn_last_error(), needle), "message \"%s\" does not mention \"%s\"", gdn_last_error(),
              needle);
    CHECK_MSG(untouched(), "the failed call (%s) wrote to the state pool or an output", needle);
}

/* The workspace (0.7): its size is 0 where a call uses none and, for a cuda call with long
 * sequences and bf16 activations, one record per 64 token rows (rounded down) plus one per
 * sequence, per value head; the host backends ignore whatever is passed. */
static void test_workspace_size(void)
{
    gdn_decode_params *p = fresh_varlen();
    size_t bytes = 1;
    CHECK(gdn_decode_workspace_size(p, &bytes) == GDN_OK && bytes == 0); /* host memory: cpu */
    p->backend = GDN_BACKEND_CUDA;
    CHECK(gdn_decode_workspace_size(p, &bytes) == GDN_OK && bytes == 0); /* f32 activations */
    gdn_decode_params q = *p;
    q.act_dtype = GDN_DTYPE_BF16, q.head_dim_k = 128, q.head_dim_v = 96, q.num_v_heads = 6, q.num_q_heads = 3;
    q.num_seqs = 5, q.total_tokens = 1000, q.num_tokens = 600;
    q.q_stride = q.k_stride = q.v_stride = q.a_stride = q.b_stride = q.out_stride = 0;
    CHECK_MSG(gdn_decode_workspace_size(&q, &bytes) == GDN_OK, "%s", gdn_last_error());
    CHECK_MSG(bytes == (size_t)(1000 / 64 + 5) * 6 * 19728, "workspace of %zu bytes", bytes);
    q.num_tokens = GDN_MAX_TOKENS; /* no long sequence */
    CHECK(gdn_decode_workspace_size(&q, &bytes) == GDN_OK && bytes == 0);
    q.state_layout = GDN_LAYOUT_KV, q.num_tokens = 600; /* the chunked kernel is vk only */
    CHECK(gdn_decode_workspace_size(&q, &bytes) == GDN_OK && bytes == 0);
    prime_last_error();
    CHECK(gdn_decode_workspace_size(&q, NULL) == GDN_ERR_NULL_POINTER && strstr(gdn_last_error(), "bytes"));
    q.head_dim_k = 0;
    CHECK(gdn_decode_workspace_size(&q, &bytes) == GDN_ERR_INVALID_SHAPE);
    p->backend = GDN_BACKEND_CPU;
    p->workspace = (unsigned char *)pool() + 3, p->workspace_bytes = 1; /* ignored by the cpu backend */
    CHECK_MSG(gdn_decode(p) == GDN_OK, "the cpu backend refused a workspace it ignores: %s",
              gdn_last_error());
}

static void test_long_sequences_need_cu_seqlens(void)
{
    gdn_decode_params *p = fresh();
    p->num_tokens = GDN_MAX_TOKENS + 1;
    expect_failure(p, GDN_ERR_INVALID_SHAPE, "num_tokens", "cu_seqlens");
}

static void test_long_sequences_with_token_slots(void)
{
    gdn_decode_params *p = fresh_varlen();
    p->token_slots = fx.slots64;
    expect_failure(p, GDN_ERR_INVALID_SHAPE, "token_slots", NULL);
}

static void test_total_tokens_without_cu_seqlens(void)
{
    gdn_decode_params *p = fresh();
    p->total_tokens = N;
    expect_failure(p, GDN_ERR_INVALID_ARGUMENT, "total_tokens", NULL);
}

static void test_cu_seqlens_not_increasing(void)
{
    gdn_decode_params *p = fresh_varlen();
    cu_rows[1] = 2, cu_rows[2] = 1;
    expect_decode_failure(p, GDN_ERR_INVALID_SHAPE, "cu_seqlens[1]");
}

static void test_cu_seqlens_past_total_tokens(void)
{
    gdn_decode_params *p = fresh_varlen();
    cu_rows[N] = N + 1; /* one row more than the tensors hold */
    expect_decode_failure(p, GDN_ERR_INVALID_SHAPE, "total_tokens");
}

static void test_token_count_overflows(void)
{
    gdn_decode_params *p = fresh_varlen();
    p->total_tokens = 0, p->num_tokens = INT64_MAX / 2; /* num_seqs * num_tokens overflows */
    expect_failure(p, GDN_ERR_INVALID_SHAPE, "overflows", NULL);
}

static void test_gates_given_half(void)
{
    gdn_decode_params *p = fresh();
    p->a = p->b = NULL, p->A_log = p->dt_bias = NULL;
    p->g = g_rows;
    expect_failure(p, GDN_ERR_INVALID_ARGUMENT, "beta", NULL);
}

static void test_gates_given_twice(void)
{
    gdn_decode_params *p = fresh();
    p->g = g_rows, p->beta = beta_rows; /* and a, b, A_log, dt_bias still set */
    expect_failure(p, GDN_ERR_INVALID_ARGUMENT, "one form", NULL);
}

static void test_gates_given_stride_short(void)
{
    gdn_decode_params *p = fresh();
    p->a = p->b = NULL, p->A_log = p->dt_bias = NULL;
    p->g = g_rows, p->beta = beta_rows, p->g_stride = HV - 1;
    expect_failure(p, GDN_ERR_INVALID_STRIDE, "g_stride", NULL);
}

/* ---------------------------------------------------------------------------------------
 * paged pools (state_slot_stride)
 * ------------------------------------------------------------------------------------- */

static void test_slot_stride_shorter_than_a_slot(void)
{
    gdn_decode_params *p = fresh();
    p->state_slot_stride = TILE_ELEMS - 1;
    expect_failure(p, GDN_ERR_INVALID_STRIDE, "state_slot_stride = 511", "512");
    p = fresh();
    p->state_slot_stride = -TILE_ELEMS;
    expect_failure(p, GDN_ERR_INVALID_STRIDE, "state_slot_stride", NULL);
}

/* A stride whose last slot would end past 2^63 bytes: refused before any offset is formed. */
static void test_slot_stride_overflows(void)
{
    gdn_decode_params *p = fresh();
    p->state_slot_stride = INT64_MAX / 4;
    expect_failure(p, GDN_ERR_INVALID_SHAPE, "state_slot_stride", "64-bit");
}

/* The pool's extent with a stride reaches past out's start: an overlap, though out lies beyond
 * the packed pool's end (the extent, gaps included, is what the check uses). */
static void test_slot_stride_extent_overlaps_out(void)
{
    gdn_decode_params *p = fresh();
    p->num_slots = 2;
    p->state_slot_stride = TILE_ELEMS * 2;
    p->out = pool() + 3 * TILE_ELEMS; /* after slot 1's tile, before nothing: no overlap */
    gdn_decode_params ok = *p;
    CHECK_MSG(gdn_decode_backend_for(&ok, NULL) == GDN_OK, "%s", gdn_last_error());
    p->out = pool() + 2 * TILE_ELEMS + 8; /* inside slot 1's tile */
    expect_failure(p, GDN_ERR_OVERLAP, "out", "state_pool");
}

/* ---------------------------------------------------------------------------------------
 * checked mode (bad_index_rows)
 * ------------------------------------------------------------------------------------- */

static void test_counter_misaligned(void)
{
    gdn_decode_params *p = fresh();
    p->bad_index_rows = (uint32_t *)((char *)fx.w.counter + 2);
    expect_failure(p, GDN_ERR_MISALIGNED, "bad_index_rows", NULL);
}

static void test_counter_overlaps(void)
{
    gdn_decode_params *p = fresh();
    p->bad_index_rows = (uint32_t *)(pool() + POOL_ELEMS - 1); /* the pool's last element */
    expect_failure(p, GDN_ERR_OVERLAP, "bad_index_rows", "state_pool");
    p = fresh();
    p->bad_index_rows = (uint32_t *)fx.w.out + OUT_ELEMS / 2;
    expect_failure(p, GDN_ERR_OVERLAP, "bad_index_rows", "out");
}

/* Host backends read the indices first: a bad one refuses the whole call, and the counter,
 * like every other byte, is left as it was. A valid call does not touch it either. */
static void test_counter_host_backends(void)
{
    gdn_decode_params *p = fresh();
    fx.w.counter[0] = 7;
    snapshot();
    p->bad_index_rows = fx.w.counter;
    fx.slots64[1] = SLOTS;
    expect_failure(p, GDN_ERR_SLOT_OUT_OF_RANGE, "slot_indices[1]", NULL);

    p = fresh();
    fx.w.counter[0] = 7;
    p->bad_index_rows = fx.w.counter;
    CHECK_MSG(gdn_decode(p) == GDN_OK, "valid call with a counter refused: %s", gdn_last_error());
    CHECK(fx.w.counter[0] == 7);
}

/* ---------------------------------------------------------------------------------------
 * shape
 * ------------------------------------------------------------------------------------- */

static void test_num_seqs_negative(void)
{
    gdn_decode_params *p = fresh();
    p->num_seqs = -1;
    expect_failure(p, GDN_ERR_INVALID_SHAPE, "num_seqs = -1", NULL);
}

static void test_num_q_heads_zero(void)
{
    gdn_decode_params *p = fresh();
    p->num_q_heads = 0;
    expect_failure(p, GDN_ERR_INVALID_SHAPE, "num_q_heads = 0", NULL);
}

static void test_head_dim_k_zero(void)
{
    gdn_decode_params *p = fresh();
    p->head_dim_k = 0;
    expect_failure(p, GDN_ERR_INVALID_SHAPE, "head_dim_k = 0", NULL);
}

static void test_num_slots_zero(void)
{
    gdn_decode_params *p = fresh();
    p->num_slots = 0;
    expect_failure(p, GDN_ERR_INVALID_SHAPE, "num_slots = 0", NULL);
}

static void test_dims_negative(void)
{
    static const char *const names[] = {"num_v_heads", "head_dim_v", "num_q_heads", "head_dim_k",
                                        "num_slots"};
    for (int i = 0; i < 5; i++) {
        gdn_decode_params *p = fresh();
        int64_t *dims[] = {&p->num_v_heads, &p->head_dim_v, &p->num_q_heads, &p->head_dim_k, &p->num_slots};
        *dims[i] = -3;
        char needle[64];
        snprintf(needle, sizeof needle, "%s = -3", names[i]);
        expect_failure(p, GDN_ERR_INVALID_SHAPE, needle, NULL);
    }
}

static void test_hv_not_multiple_of_h(void)
{
    gdn_decode_params *p = fresh();
    p->num_q_heads = 3; /* HV = 4 */
    expect_failure(p, GDN_ERR_INVALID_SHAPE, "num_v_heads = 4", "num_q_heads = 3");
}

/* The pool's byte size would not fit in 64 bits; refused from the numbers alone. */
static void test_pool_size_overflow(void)
{
    gdn_decode_params *p = fresh();
    p->num_slots = INT64_MAX / 4;
    expect_failure(p, GDN_ERR_INVALID_SHAPE, "2305843009213693951", NULL);
}

/* ---------------------------------------------------------------------------------------
 * pointers, strides, alignment, overlap
 * ------------------------------------------------------------------------------------- */

static const char *const required_pointers[] = {"q",   "k",     "v",       "a",          "b",
                                                "out", "A_log", "dt_bias", "state_pool", "slot_indices"};

static void clear_pointer(gdn_decode_params *p, int which)
{
    switch (which) {
    case 0: p->q = NULL; break;
    case 1: p->k = NULL; break;
    case 2: p->v = NULL; break;
    case 3: p->a = NULL; break;
    case 4: p->b = NULL; break;
    case 5: p->out = NULL; break;
    case 6: p->A_log = NULL; break;
    case 7: p->dt_bias = NULL; break;
    case 8: p->state_pool = NULL; break;
    default: p->slot_indices = NULL; break;
    }
}

static void test_null_pointers(void)
{
    for (int i = 0; i < (int)(sizeof required_pointers / sizeof required_pointers[0]); i++) {
        gdn_decode_params *p = fresh();
        clear_pointer(p, i);
        char needle[64];
        snprintf(needle, sizeof needle, "%s is NULL", required_pointers[i]);
        expect_failure(p, GDN_ERR_NULL_POINTER, needle, NULL);
    }
}

typedef struct stride_field {
    const char *name;
    size_t offset;
    int64_t row; /* elements in one token's row */
} stride_field;

enum { QK_ROW = H * K, V_ROW = HV * V };

static const stride_field stride_fields[] = {
    {"q_stride", offsetof(gdn_decode_params, q_stride), QK_ROW},
    {"k_stride", offsetof(gdn_decode_params, k_stride), QK_ROW},
    {"v_stride", offsetof(gdn_decode_params, v_stride), V_ROW},
    {"a_stride", offsetof(gdn_decode_params, a_stride), HV},
    {"b_stride", offsetof(gdn_decode_params, b_stride), HV},
    {"out_stride", offsetof(gdn_decode_params, out_stride), V_ROW},
};

static void check_bad_strides(int negative)
{
    for (size_t i = 0; i < sizeof stride_fields / sizeof stride_fields[0]; i++) {
        gdn_decode_params *p = fresh();
        int64_t value = negative ? -1 : stride_fields[i].row - 1;
        memcpy((char *)p + stride_fields[i].offset, &value, sizeof value);
        char needle[64];
        snprintf(needle, sizeof needle, "%s = %lld", stride_fields[i].name, (long long)value);
        expect_failure(p, GDN_ERR_INVALID_STRIDE, needle, NULL);
    }
}

static void test_stride_negative(void) { check_bad_strides(1); }

static void test_stride_shorter_than_row(void) { check_bad_strides(0); }

static void test_misaligned(void)
{
    static const char *const names[] = {"q", "slot_indices", "state_pool"};
    for (int i = 0; i < 3; i++) {
        gdn_decode_params *p = fresh();
        if (i == 0)
            p->q = (const char *)fx.q + 1;
        else if (i == 1)
            p->slot_indices = (const char *)fx.slots64 + 4;
        else
            p->state_pool = (char *)pool() + 2;
        char needle[64];
        snprintf(needle, sizeof needle, "%s = ", names[i]);
        expect_failure(p, GDN_ERR_MISALIGNED, needle, NULL);
    }
}

static void test_out_overlaps_pool(void)
{
    /* inside, across the pool's first byte, across its last byte */
    const ptrdiff_t offsets[] = {100, -OUT_ELEMS + 1, POOL_ELEMS - 1};
    for (int i = 0; i < 3; i++) {
        gdn_decode_params *p = fresh();
        p->out = pool() + offsets[i];
        expect_failure(p, GDN_ERR_OVERLAP, "out", "state_pool");
    }
}

/* The boundary of the overlap test: an out that ends where the pool starts (or starts where it
 * ends) shares no byte with it and must be accepted. */
static void test_out_adjacent_to_pool_accepted(void)
{
    const ptrdiff_t offsets[] = {-OUT_ELEMS, POOL_ELEMS};
    for (int i = 0; i < 2; i++) {
        gdn_decode_params *p = fresh();
        p->out = pool() + offsets[i];
        gdn_status s = gdn_decode(p);
        CHECK_MSG(s == GDN_OK, "out at pool%+td: %s (%s)", offsets[i], gdn_status_string(s),
                  gdn_last_error());
    }
}

/* ---------------------------------------------------------------------------------------
 * dtypes, layout, head map, head size
 * ------------------------------------------------------------------------------------- */

static void test_act_dtype_i32(void)
{
    gdn_decode_params *p = fresh();
    p->act_dtype = GDN_DTYPE_I32;
    expect_failure(p, GDN_ERR_UNSUPPORTED_DTYPE, "act_dtype = i32", NULL);
}

static gdn_decode_params *use_f64_activations(gdn_decode_params *p)
{
    p->act_dtype = GDN_DTYPE_F64;
    p->q = fx.q64;
    p->k = fx.k64;
    p->v = fx.v64;
    p->a = fx.a64;
    p->b = fx.b64;
    p->out = fx.w.out64;
    return p;
}

/* f64 is the reference backend's dtype only: the cpu backend refuses the very call the
 * reference backend runs. */
static void test_act_dtype_f64_cpu(void)
{
    gdn_decode_params *p = use_f64_activations(fresh());
    expect_failure(p, GDN_ERR_UNSUPPORTED_DTYPE, "act_dtype = f64", "cpu");

    p->backend = GDN_BACKEND_REFERENCE;
    gdn_status s = gdn_decode(p);
    CHECK_MSG(s == GDN_OK, "f64 on the reference backend: %s (%s)", gdn_status_string(s), gdn_last_error());
    CHECK(!out_is_poison(fx.w.out64, sizeof fx.w.out64));
}

static void test_state_dtype_f64_cpu(void)
{
    gdn_decode_params *p = fresh();
    p->state_dtype = GDN_DTYPE_F64;
    p->state_pool = fx.w.pool64;
    expect_failure(p, GDN_ERR_UNSUPPORTED_DTYPE, "state_dtype = f64", "cpu");

    p->backend = GDN_BACKEND_REFERENCE;
    gdn_status s = gdn_decode(p);
    CHECK_MSG(s == GDN_OK, "f64 state on the reference backend: %s (%s)", gdn_status_string(s),
              gdn_last_error());
    CHECK(memcmp(fx.saved.pool64, fx.w.pool64, sizeof fx.w.pool64) != 0);
}

static void test_state_dtype_f16(void)
{
    gdn_decode_params *p = fresh();
    p->state_dtype = GDN_DTYPE_F16;
    expect_failure(p, GDN_ERR_UNSUPPORTED_DTYPE, "state_dtype = f16", NULL);
}

static void test_index_dtype_f32(void)
{
    gdn_decode_params *p = fresh();
    p->index_dtype = GDN_DTYPE_F32;
    expect_failure(p, GDN_ERR_UNSUPPORTED_DTYPE, "index_dtype = f32", NULL);
}

static void test_state_layout(void)
{
    gdn_decode_params *p = fresh();
    p->state_layout = (gdn_state_layout)7;
    expect_failure(p, GDN_ERR_UNSUPPORTED_LAYOUT, "state_layout = 7", NULL);
}

static void test_head_map(void)
{
    const int values[] = {2, -1};
    for (int i = 0; i < 2; i++) {
        gdn_decode_params *p = fresh();
        p->head_map = (gdn_head_map)values[i];
        char needle[64];
        snprintf(needle, sizeof needle, "head_map = %d", values[i]);
        expect_failure(p, GDN_ERR_INVALID_ARGUMENT, needle, NULL);
    }
}

/* The buffers are sized for K = V = 16 and 8, far short of 2048: this relies on the head size
 * being refused before any tensor is read, which validation does from the numbers alone. */
static void test_head_size_too_big(void)
{
    gdn_decode_params *p = fresh();
    p->head_dim_k = 2048;
    expect_failure(p, GDN_ERR_UNSUPPORTED_HEAD_SIZE, "head_dim_k = 2048", NULL);

    p = fresh();
    p->head_dim_v = 2048;
    expect_failure(p, GDN_ERR_UNSUPPORTED_HEAD_SIZE, "head_dim_v = 2048", NULL);
}

/* ---------------------------------------------------------------------------------------
 * slot indices
 * ------------------------------------------------------------------------------------- */

static void test_slot_i64(void)
{
    gdn_decode_params *p = fresh();
    fx.slots64[2] = SLOTS;
    expect_failure(p, GDN_ERR_SLOT_OUT_OF_RANGE, "slot_indices[2] = 4", "num_slots = 4");

    p = fresh();
    fx.slots64[1] = INT64_MAX;
    expect_failure(p, GDN_ERR_SLOT_OUT_OF_RANGE, "slot_indices[1] = 9223372036854775807", "num_slots = 4");
}

static void test_slot_i32(void)
{
    gdn_decode_params *p = fresh();
    p->index_dtype = GDN_DTYPE_I32;
    p->slot_indices = fx.slots32;
    gdn_status s = gdn_decode(p);
    CHECK_MSG(s == GDN_OK, "i32 slot indices: %s (%s)", gdn_status_string(s), gdn_last_error());

    p = fresh();
    p->index_dtype = GDN_DTYPE_I32;
    p->slot_indices = fx.slots32;
    fx.slots32[2] = SLOTS;
    expect_failure(p, GDN_ERR_SLOT_OUT_OF_RANGE, "slot_indices[2] = 4", "num_slots = 4");

    p = fresh();
    p->index_dtype = GDN_DTYPE_I32;
    p->slot_indices = fx.slots32;
    fx.slots32[0] = INT32_MAX;
    expect_failure(p, GDN_ERR_SLOT_OUT_OF_RANGE, "slot_indices[0] = 2147483647", "num_slots = 4");
}

static void test_write_slot(void)
{
    gdn_decode_params *p = fresh();
    p->write_slot_indices = fx.writes64;
    fx.writes64[1] = SLOTS;
    expect_failure(p, GDN_ERR_SLOT_OUT_OF_RANGE, "write_slot_indices[1] = 4", "num_slots = 4");
}

/* A bad index in the last row must be found before row 0 is computed. */
static void test_slot_last_row(void)
{
    gdn_decode_params *p = fresh();
    fx.slots64[N - 1] = SLOTS + 3;
    expect_failure(p, GDN_ERR_SLOT_OUT_OF_RANGE, "slot_indices[2] = 7", "num_slots = 4");
    const float *tile0 = pool() + fx.slots64[0] * TILE_ELEMS;
    const float *saved_tile0 = fx.saved.arena + OUT_ELEMS + fx.slots64[0] * TILE_ELEMS;
    CHECK(memcmp(tile0, saved_tile0, TILE_ELEMS * sizeof(float)) == 0);
    CHECK(out_is_poison(fx.w.out, HV * V * sizeof(float)));
}

/* ---------------------------------------------------------------------------------------
 * options and backends
 * ------------------------------------------------------------------------------------- */

static void test_backend_enum(void)
{
    gdn_decode_params *p = fresh();
    p->backend = (gdn_backend)9;
    expect_failure(p, GDN_ERR_INVALID_ARGUMENT, "backend = 9", NULL);
}

static void test_scale_not_finite(void)
{
    const float scales[] = {NAN, INFINITY, -INFINITY};
    for (int i = 0; i < 3; i++) {
        gdn_decode_params *p = fresh();
        p->scale = scales[i];
        expect_failure(p, GDN_ERR_INVALID_ARGUMENT, "scale", NULL);
    }
}

static void test_num_threads_negative(void)
{
    gdn_decode_params *p = fresh();
    p->num_threads = -1;
    expect_failure(p, GDN_ERR_INVALID_ARGUMENT, "num_threads = -1", NULL);
}

static void test_env_backend_bogus(void)
{
    char *saved = save_env("GDN_BACKEND");
    gdn_decode_params *p = fresh();
    setenv("GDN_BACKEND", "bogus", 1);
    p->backend = GDN_BACKEND_AUTO;
    expect_failure(p, GDN_ERR_INVALID_ARGUMENT, "GDN_BACKEND", "bogus");

    /* the variable only resolves AUTO: an explicit backend ignores it */
    p->backend = GDN_BACKEND_CPU;
    gdn_status s = gdn_decode(p);
    CHECK_MSG(s == GDN_OK, "explicit cpu with GDN_BACKEND=bogus: %s (%s)", gdn_status_string(s),
              gdn_last_error());
    restore_env("GDN_BACKEND", saved);
}

/* With host pointers the cuda backend is either unavailable or refuses the memory; which one
 * depends on the library build and the machine, and both are checked. */
static void test_cuda_on_host_memory(void)
{
    gdn_decode_params *p = fresh();
    p->backend = GDN_BACKEND_CUDA;
    if (!gdn_backend_built(GDN_BACKEND_CUDA)) {
        test_note("cuda backend not built: expecting backend unavailable");
        expect_failure(p, GDN_ERR_BACKEND_UNAVAILABLE, "cuda", "not built");
    } else if (gdn_cuda_device_count() == 0) {
        test_note("cuda backend built, no device: expecting backend unavailable");
        expect_failure(p, GDN_ERR_BACKEND_UNAVAILABLE, "cuda", NULL);
    } else {
        test_note("cuda backend built, %d device(s): expecting wrong memory", gdn_cuda_device_count());
        expect_failure(p, GDN_ERR_WRONG_MEMORY, "q = ", "host memory");
    }
}

/* ---------------------------------------------------------------------------------------
 * non-errors that validation must get right
 * ------------------------------------------------------------------------------------- */

static void test_num_seqs_zero(void)
{
    gdn_decode_params *p = fresh();
    p->num_seqs = 0;
    gdn_status s = gdn_decode(p);
    CHECK_MSG(s == GDN_OK, "num_seqs = 0: %s (%s)", gdn_status_string(s), gdn_last_error());
    CHECK(untouched());
}

static void test_status_strings(void)
{
    const char *seen[14];
    for (int s = 0; s <= GDN_ERR_DEVICE; s++) {
        seen[s] = gdn_status_string((gdn_status)s);
        CHECK_MSG(seen[s] && seen[s][0], "status %d has no string", s);
        if (!seen[s])
            continue;
        for (int t = 0; t < s; t++)
            CHECK_MSG(!seen[t] || strcmp(seen[s], seen[t]) != 0, "statuses %d and %d share \"%s\"", t, s,
                      seen[s]);
    }
    CHECK(gdn_status_string((gdn_status)99) != NULL);
}

static void test_backend_for_host_auto(void)
{
    char *saved = save_env("GDN_BACKEND");
    unsetenv("GDN_BACKEND");
    gdn_decode_params *p = fresh();
    p->backend = GDN_BACKEND_AUTO;
    gdn_backend backend = GDN_BACKEND_AUTO;
    gdn_status s = gdn_decode_backend_for(p, &backend);
    CHECK_MSG(s == GDN_OK, "%s (%s)", gdn_status_string(s), gdn_last_error());
    CHECK_MSG(backend == GDN_BACKEND_CPU, "AUTO with host pointers chose %s", gdn_backend_name(backend));
    CHECK(untouched());

    /* an empty variable counts as unset; a valid one decides */
    setenv("GDN_BACKEND", "", 1);
    backend = GDN_BACKEND_AUTO;
    CHECK(gdn_decode_backend_for(p, &backend) == GDN_OK && backend == GDN_BACKEND_CPU);
    setenv("GDN_BACKEND", "reference", 1);
    backend = GDN_BACKEND_AUTO;
    CHECK(gdn_decode_backend_for(p, &backend) == GDN_OK && backend == GDN_BACKEND_REFERENCE);
    restore_env("GDN_BACKEND", saved);
}

void register_validation_tests(void)
{
    test_add("validation/params_null", test_params_null);
    test_add("validation/struct_size", test_struct_size);
    test_add("validation/struct_size_of_older_header", test_struct_size_of_older_header);
    test_add("validation/struct_size_of_02_header", test_struct_size_of_02_header);
    test_add("validation/struct_size_of_03_header", test_struct_size_of_03_header);
    test_add("validation/struct_size_of_04_header", test_struct_size_of_04_header);
    test_add("validation/long_sequences_need_cu_seqlens", test_long_sequences_need_cu_seqlens);
    test_add("validation/long_sequences_with_token_slots", test_long_sequences_with_token_slots);
    test_add("validation/total_tokens_without_cu_seqlens", test_total_tokens_without_cu_seqlens);
    test_add("validation/cu_seqlens_not_increasing", test_cu_seqlens_not_increasing);
    test_add("validation/cu_seqlens_past_total_tokens", test_cu_seqlens_past_total_tokens);
    test_add("validation/token_count_overflows", test_token_count_overflows);
    test_add("validation/gates_given_half", test_gates_given_half);
    test_add("validation/gates_given_twice", test_gates_given_twice);
    test_add("validation/gates_given_stride_short", test_gates_given_stride_short);
    test_add("validation/slot_stride_shorter_than_a_slot", test_slot_stride_shorter_than_a_slot);
    test_add("validation/slot_stride_overflows", test_slot_stride_overflows);
    test_add("validation/slot_stride_extent_overlaps_out", test_slot_stride_extent_overlaps_out);
    test_add("validation/counter_misaligned", test_counter_misaligned);
    test_add("validation/counter_overlaps", test_counter_overlaps);
    test_add("validation/counter_host_backends", test_counter_host_backends);
    test_add("validation/num_seqs_negative", test_num_seqs_negative);
    test_add("validation/num_q_heads_zero", test_num_q_heads_zero);
    test_add("validation/head_dim_k_zero", test_head_dim_k_zero);
    test_add("validation/num_slots_zero", test_num_slots_zero);
    test_add("validation/dims_negative", test_dims_negative);
    test_add("validation/hv_not_multiple_of_h", test_hv_not_multiple_of_h);
    test_add("validation/pool_size_overflow", test_pool_size_overflow);
    test_add("validation/null_pointers", test_null_pointers);
    test_add("validation/stride_negative", test_stride_negative);
    test_add("validation/stride_shorter_than_row", test_stride_shorter_than_row);
    test_add("validation/misaligned", test_misaligned);
    test_add("validation/out_overlaps_pool", test_out_overlaps_pool);
    test_add("validation/out_adjacent_to_pool_accepted", test_out_adjacent_to_pool_accepted);
    test_add("validation/act_dtype_i32", test_act_dtype_i32);
    test_add("validation/act_dtype_f64_cpu", test_act_dtype_f64_cpu);
    test_add("validation/state_dtype_f64_cpu", test_state_dtype_f64_cpu);
    test_add("validation/state_dtype_f16", test_state_dtype_f16);
    test_add("validation/index_dtype_f32", test_index_dtype_f32);
    test_add("validation/state_layout", test_state_layout);
    test_add("validation/head_map", test_head_map);
    test_add("validation/head_size_too_big", test_head_size_too_big);
    test_add("validation/slot_out_of_range_i64", test_slot_i64);
    test_add("validation/slot_out_of_range_i32", test_slot_i32);
    test_add("validation/write_slot_out_of_range", test_write_slot);
    test_add("validation/slot_out_of_range_last_row", test_slot_last_row);
    test_add("validation/backend_enum", test_backend_enum);
    test_add("validation/scale_not_finite", test_scale_not_finite);
    test_add("validation/num_threads_negative", test_num_threads_negative);
    test_add("validation/env_backend_bogus", test_env_backend_bogus);
    test_add("validation/cuda_on_host_memory", test_cuda_on_host_memory);
    test_add("validation/num_seqs_zero", test_num_seqs_zero);
    test_add("validation/status_strings", test_status_strings);
    test_add("validation/backend_for_host_auto", test_backend_for_host_auto);
    test_add("validation/struct_size_of_06_header", test_struct_size_of_06_header);
    test_add("validation/workspace_size", test_workspace_size);
}
