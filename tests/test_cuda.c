/*
 * GPU-only tests of the cuda backend (registered only when a CUDA device is present; run on the
 * GPU machine by tests/gpu/run.sh and quick.sh):
 *   - bad slot indices in device memory: the rows they name are skipped (no output, no state
 *     byte written), the other rows are right, and in checked mode (bad_index_rows) the counter
 *     says how many rows were skipped, also across CUDA graph replays;
 *   - a state pool of more than 2^31 elements (4200 f32 slots of HV = 32, 8.8 GB; and bf16 kv),
 *     where the last slots are read and written correctly and nothing else changes;
 *   - four host threads decoding on four CUDA streams at once give the results of one stream;
 *   - a call of 70000 sequences (more than one launch takes) with cu_seqlens.
 * The expected values come from the float64 reference backend, run on the host one good
 * sequence at a time (sequences are independent when their slots are distinct).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gdn.h"
#include "test.h"

#ifdef GDN_TOOLS_CUDA
#include <cuda_runtime.h>

#include "../src/common/numeric.h"
#include "../src/core/backends.h"
#include "rng.h"

enum { MAX_SEQS = 16, MAX_T = 4, POISON = 0xA5, PATTERN = 0x3C };

/* One call's problem: f32 activations; state f32 or bf16; every index array on the host side. */
typedef struct gcase {
    int64_t N, H, HV, K, V, T, num_slots;
    gdn_state_layout layout;
    gdn_dtype state_dtype, index_dtype;
    int varlen, token_slots, accepted, write_slots;
    int64_t slot[MAX_SEQS], write[MAX_SEQS], acc[MAX_SEQS], cu[MAX_SEQS + 1], ts[MAX_SEQS][MAX_T];
    int bad[MAX_SEQS]; /* rows the kernel must skip */
    int64_t gap;       /* paged pool: elements between one slot's end and the next's start */
    int gap_before;    /* the view starts `gap` elements into the storage (storage[:, 1:]) */
    uint64_t seed;
} gcase;

/* Host data and device copies of one problem. The host mirror of the pool holds `tracked`
 * slots only (all of them for small pools; the used ones and a sample for huge pools). */
typedef struct gdata {
    int64_t rows, tile, tracked_count, tracked[256];
    size_t state_size;
    float *q, *k, *v, *a, *b, *A_log, *dt_bias, *out_init;
    unsigned char *pool_init; /* tracked tiles before the call */
    float *d_q, *d_k, *d_v, *d_a, *d_b, *d_A_log, *d_dt_bias, *d_out;
    void *d_pool, *d_slot, *d_write, *d_acc, *d_cu, *d_ts;
    uint32_t *d_counter;
} gdata;

static int cuda_check(cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return 1;
    CHECK_MSG(e == cudaSuccess, "%s: %s", what, cudaGetErrorString(e));
    return 0;
}

static int64_t seq_first(const gcase *c, int64_t n) { return c->varlen ? c->cu[n] : n * c->T; }
static int64_t seq_count(const gcase *c, int64_t n) { return c->varlen ? c->cu[n + 1] - c->cu[n] : c->T; }

/* Byte offset of slot s in the device storage (the pool view starts at tile_at(0)). */
static size_t tile_at(const gcase *c, const gdata *d, int64_t s)
{
    return (size_t)(s * (d->tile + c->gap) + (c->gap_before ? c->gap : 0)) * d->state_size;
}

static int slot_tracked(const gdata *d, int64_t slot)
{
    for (int64_t i = 0; i < d->tracked_count; i++)
        if (d->tracked[i] == slot)
            return (int)i;
    return -1;
}

static void track(gdata *d, int64_t slot, int64_t num_slots)
{
    if (slot >= 0 && slot < num_slots && slot_tracked(d, slot) < 0 && d->tracked_count < 256)
        d->tracked[d->tracked_count++] = slot;
}

/* An index array of the case's index dtype, uploaded. */
static void *upload_index(const gcase *c, const int64_t *values, int64_t count)
{
    size_t size = c->index_dtype == GDN_DTYPE_I32 ? 4 : 8;
    void *host = malloc((size_t)count * size), *dev = NULL;
    for (int64_t i = 0; i < count; i++) {
        if (size == 4) /* int32 keeps the sign and small values; huge ones saturate */
            ((int32_t *)host)[i] = values[i] > INT32_MAX ? INT32_MAX : (int32_t)values[i];
        else
            ((int64_t *)host)[i] = values[i];
    }
    if (cuda_check(cudaMalloc(&dev, (size_t)count * size), "cudaMalloc index"))
        cuda_check(cudaMemcpy(dev, host, (size_t)count * size, cudaMemcpyHostToDevice), "upload index");
    free(host);
    return dev;
}

static float *upload_f32(const float *host, int64_t count)
{
    float *dev = NULL;
    if (cuda_check(cudaMalloc((void **)&dev, (size_t)count * 4), "cudaMalloc"))
        cuda_check(cudaMemcpy(dev, host, (size_t)count * 4, cudaMemcpyHostToDevice), "upload");
    return dev;
}

static float *random_f32(rng *r, int64_t count, double lo, double hi)
{
    float *x = malloc((size_t)count * sizeof(float));
    for (int64_t i = 0; i < count; i++)
        x[i] = (float)(lo + (hi - lo) * rng_uniform(r));
    return x;
}

/* Builds host data and device buffers. The device pool is filled with PATTERN bytes, and the
 * tracked tiles with random states. Returns 0 when an allocation failed (reported). */
static int gdata_build(const gcase *c, gdata *d)
{
    memset(d, 0, sizeof *d);
    rng r = {c->seed};
    d->rows = c->N * c->T;
    d->tile = c->HV * c->V * c->K;
    d->state_size = c->state_dtype == GDN_DTYPE_BF16 ? 2 : 4;
    const int64_t qk = d->rows * c->H * c->K, vv = d->rows * c->HV * c->V, ab = d->rows * c->HV;
    d->q = random_f32(&r, qk, -1, 1), d->k = random_f32(&r, qk, -1, 1), d->v = random_f32(&r, vv, -1, 1);
    d->a = random_f32(&r, ab, -2, 2), d->b = random_f32(&r, ab, -3, 3);
    d->A_log = random_f32(&r, c->HV, -2, 0.5), d->dt_bias = random_f32(&r, c->HV, -1, 1);
    d->out_init = malloc((size_t)vv * 4);
    memset(d->out_init, POISON, (size_t)vv * 4);
    /* tracked slots: every slot a small pool has, else what the call names plus a sample */
    const int64_t pool_elems = c->num_slots * (d->tile + c->gap);
    if (pool_elems <= ((int64_t)1 << 24)) {
        for (int64_t s = 0; s < c->num_slots && s < 256; s++)
            track(d, s, c->num_slots);
    } else {
        for (int64_t n = 0; n < c->N; n++) {
            track(d, c->slot[n], c->num_slots), track(d, c->write[n], c->num_slots);
            for (int64_t t = 0; t < c->T; t++)
                track(d, c->ts[n][t], c->num_slots);
            for (int64_t delta = -1; delta <= 1; delta += 2) /* neighbours must stay untouched */
                track(d, c->slot[n] + delta, c->num_slots), track(d, c->write[n] + delta, c->num_slots);
        }
        for (int64_t s = 0; s < 4; s++)
            track(d, s, c->num_slots), track(d, c->num_slots - 1 - s, c->num_slots);
    }
    d->pool_init = malloc((size_t)(d->tracked_count * d->tile) * d->state_size);
    for (int64_t i = 0; i < d->tracked_count * d->tile; i++)
        gdn_store_f64(d->pool_init, c->state_dtype, i, rng_uniform(&r) - 0.5);

    d->d_q = upload_f32(d->q, qk), d->d_k = upload_f32(d->k, qk), d->d_v = upload_f32(d->v, vv);
    d->d_a = upload_f32(d->a, ab), d->d_b = upload_f32(d->b, ab);
    d->d_A_log = upload_f32(d->A_log, c->HV), d->d_dt_bias = upload_f32(d->dt_bias, c->HV);
    d->d_out = upload_f32(d->out_init, vv);
    const size_t pool_bytes = (size_t)pool_elems * d->state_size;
    if (!cuda_check(cudaMalloc(&d->d_pool, pool_bytes), "cudaMalloc state pool") ||
        !cuda_check(cudaMemset(d->d_pool, PATTERN, pool_bytes), "cudaMemset state pool"))
        return 0;
    const size_t tile_bytes = (size_t)d->tile * d->state_size;
    for (int64_t i = 0; i < d->tracked_count; i++)
        cuda_check(cudaMemcpy((char *)d->d_pool + tile_at(c, d, d->tracked[i]),
                              d->pool_init + (size_t)i * tile_bytes, tile_bytes, cudaMemcpyHostToDevice),
                   "upload tile");
    d->d_slot = upload_index(c, c->slot, c->N);
    if (c->write_slots)
        d->d_write = upload_index(c, c->write, c->N);
    if (c->accepted)
        d->d_acc = upload_index(c, c->acc, c->N);
    if (c->varlen)
        d->d_cu = upload_index(c, c->cu, c->N + 1);
    if (c->token_slots)
        d->d_ts = upload_index(c, &c->ts[0][0], MAX_SEQS * MAX_T);
    cuda_check(cudaMalloc((void **)&d->d_counter, 4), "cudaMalloc counter");
    cuda_check(cudaMemset(d->d_counter, 0, 4), "cudaMemset counter");
    return 1;
}

static void gdata_free(gdata *d)
{
    free(d->q), free(d->k), free(d->v), free(d->a), free(d->b), free(d->A_log), free(d->dt_bias);
    free(d->out_init), free(d->pool_init);
    void *dev[] = {d->d_q,    d->d_k,    d->d_v,     d->d_a,   d->d_b,  d->d_A_log, d->d_dt_bias, d->d_out,
                   d->d_pool, d->d_slot, d->d_write, d->d_acc, d->d_cu, d->d_ts,    d->d_counter};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        cudaFree(dev[i]);
}

static gdn_decode_params device_params(const gcase *c, const gdata *d, uint32_t *counter, void *stream)
{
    gdn_decode_params p;
    gdn_decode_params_init(&p);
    p.num_seqs = c->N, p.num_q_heads = c->H, p.num_v_heads = c->HV, p.head_dim_k = c->K, p.head_dim_v = c->V;
    p.act_dtype = GDN_DTYPE_F32;
    p.q = d->d_q, p.k = d->d_k, p.v = d->d_v, p.a = d->d_a, p.b = d->d_b, p.out = d->d_out;
    p.A_log = d->d_A_log, p.dt_bias = d->d_dt_bias;
    p.state_pool = (char *)d->d_pool + tile_at(c, d, 0), p.num_slots = c->num_slots,
    p.state_layout = c->layout;
    p.state_slot_stride = c->gap ? d->tile + c->gap : 0;
    p.state_dtype = c->state_dtype, p.index_dtype = c->index_dtype;
    p.slot_indices = c->accepted ? NULL : d->d_slot;
    p.write_slot_indices = d->d_write;
    p.num_tokens = c->T, p.cu_seqlens = d->d_cu, p.token_slots = d->d_ts;
    p.token_slots_stride = c->token_slots ? MAX_T : 0;
    p.num_accepted = d->d_acc;
    p.bad_index_rows = counter;
    p.backend = GDN_BACKEND_CUDA, p.stream = stream;
    return p;
}

/* Expected out rows and tracked tiles: the reference backend on host copies, one good sequence
 * at a time, with slots renumbered into the tracked mirror. */
static void expected(const gcase *c, const gdata *d, float *out, unsigned char *pool)
{
    memcpy(out, d->out_init, (size_t)(d->rows * c->HV * c->V) * 4);
    memcpy(pool, d->pool_init, (size_t)(d->tracked_count * d->tile) * d->state_size);
    for (int64_t n = 0; n < c->N; n++) {
        if (c->bad[n] || seq_count(c, n) == 0)
            continue;
        const int64_t first = seq_first(c, n), T = seq_count(c, n);
        int64_t slot = c->slot[n] < 0 ? -1 : slot_tracked(d, c->slot[n]);
        int64_t write = c->write[n] < 0 ? -1 : slot_tracked(d, c->write[n]);
        int64_t ts[MAX_T], acc = c->acc[n];
        for (int64_t t = 0; t < MAX_T; t++)
            ts[t] = c->ts[n][t] < 0 ? -1 : slot_tracked(d, c->ts[n][t]);
        gdn_decode_params p;
        gdn_decode_params_init(&p);
        p.num_seqs = 1, p.num_q_heads = c->H, p.num_v_heads = c->HV, p.head_dim_k = c->K, p.head_dim_v = c->V;
        p.act_dtype = GDN_DTYPE_F32;
        p.q = d->q + first * c->H * c->K, p.k = d->k + first * c->H * c->K, p.v = d->v + first * c->HV * c->V;
        p.a = d->a + first * c->HV, p.b = d->b + first * c->HV, p.out = out + first * c->HV * c->V;
        p.A_log = d->A_log, p.dt_bias = d->dt_bias;
        p.state_pool = pool, p.num_slots = d->tracked_count, p.state_layout = c->layout;
        p.state_dtype = c->state_dtype, p.index_dtype = GDN_DTYPE_I64;
        p.slot_indices = c->accepted ? NULL : &slot;
        p.write_slot_indices = c->write_slots ? &write : NULL;
        p.num_tokens = T, p.token_slots = c->token_slots ? ts : NULL, p.token_slots_stride = MAX_T;
        p.num_accepted = c->accepted ? &acc : NULL;
        p.backend = GDN_BACKEND_REFERENCE;
        gdn_status s = gdn_decode(&p);
        CHECK_MSG(s == GDN_OK, "reference for row %lld: %s", (long long)n, gdn_last_error());
    }
}

/* Runs the case on the device (checked mode when `checked`), then compares out, the tracked
 * tiles and the counter with what they must be. */
static void run_gcase(const char *what, const gcase *c, int checked)
{
    gdata d;
    if (!gdata_build(c, &d)) {
        gdata_free(&d);
        return;
    }
    gdn_decode_params p = device_params(c, &d, checked ? d.d_counter : NULL, NULL);
    gdn_status s = gdn_decode(&p);
    CHECK_MSG(s == GDN_OK, "%s: %s", what, gdn_last_error());
    cuda_check(cudaDeviceSynchronize(), "kernel");

    const int64_t out_elems = d.rows * c->HV * c->V, tracked_elems = d.tracked_count * d.tile;
    const size_t tile_bytes = (size_t)d.tile * d.state_size;
    float *got_out = malloc((size_t)out_elems * 4), *want_out = malloc((size_t)out_elems * 4);
    unsigned char *got_pool = malloc((size_t)tracked_elems * d.state_size);
    unsigned char *want_pool = malloc((size_t)tracked_elems * d.state_size);
    cuda_check(cudaMemcpy(got_out, d.d_out, (size_t)out_elems * 4, cudaMemcpyDeviceToHost), "download out");
    for (int64_t i = 0; i < d.tracked_count; i++)
        cuda_check(cudaMemcpy(got_pool + (size_t)i * tile_bytes,
                              (char *)d.d_pool + tile_at(c, &d, d.tracked[i]), tile_bytes,
                              cudaMemcpyDeviceToHost),
                   "download tile");
    /* a paged pool: the gap beside every tracked slot still holds the fill pattern */
    int64_t gap_bytes_changed = 0;
    if (c->gap > 0) {
        const size_t gap_bytes = (size_t)c->gap * d.state_size;
        unsigned char *gap = malloc(gap_bytes);
        for (int64_t i = 0; i < d.tracked_count; i++) {
            const size_t at = c->gap_before ? tile_at(c, &d, d.tracked[i]) - gap_bytes
                                            : tile_at(c, &d, d.tracked[i]) + tile_bytes;
            cuda_check(cudaMemcpy(gap, (char *)d.d_pool + at, gap_bytes, cudaMemcpyDeviceToHost),
                       "download gap");
            for (size_t b = 0; b < gap_bytes; b++)
                gap_bytes_changed += gap[b] != PATTERN;
        }
        free(gap);
    }
    uint32_t counter = 0;
    cuda_check(cudaMemcpy(&counter, d.d_counter, 4, cudaMemcpyDeviceToHost), "download counter");
    expected(c, &d, want_out, want_pool);

    /* outputs: good rows near the reference, bad rows still poison */
    double out_max = 0, out_err = 0;
    int64_t bad_rows = 0, bad_row_bytes_changed = 0;
    for (int64_t n = 0; n < c->N; n++) {
        bad_rows += c->bad[n];
        if (seq_count(c, n) <= 0 || seq_first(c, n) < 0)
            continue;
        for (int64_t i = seq_first(c, n) * c->HV * c->V;
             i < (seq_first(c, n) + seq_count(c, n)) * c->HV * c->V && i < out_elems; i++) {
            if (c->bad[n]) {
                bad_row_bytes_changed += memcmp(&got_out[i], &d.out_init[i], 4) != 0;
                continue;
            }
            out_max = fmax(out_max, fabs(want_out[i]));
            out_err = fmax(out_err, fabs((double)got_out[i] - want_out[i]));
        }
    }
    CHECK_MSG(out_err <= 2e-3 * out_max + 1e-6, "%s: out differs from the reference by %g (max |ref| %g)",
              what, out_err, out_max);
    CHECK_MSG(bad_row_bytes_changed == 0, "%s: %lld output elements of skipped rows were written", what,
              (long long)bad_row_bytes_changed);
    /* state: tiles the reference changed near it, every other tracked tile byte-identical */
    int64_t stray_tiles = 0, stray_slot = -1;
    double state_err = 0;
    for (int64_t i = 0; i < d.tracked_count; i++) {
        const unsigned char *init = d.pool_init + (size_t)i * tile_bytes;
        const unsigned char *want = want_pool + (size_t)i * tile_bytes,
                            *got = got_pool + (size_t)i * tile_bytes;
        if (memcmp(want, init, tile_bytes) == 0) {
            if (memcmp(got, init, tile_bytes) != 0)
                stray_tiles++, stray_slot = d.tracked[i];
            continue;
        }
        for (int64_t e = 0; e < d.tile; e++) {
            double w = gdn_load_f64(want, c->state_dtype, e), g = gdn_load_f64(got, c->state_dtype, e);
            double tol = c->state_dtype == GDN_DTYPE_BF16 ? fabs(w) / 128 + 1e-4 : 1e-5 * (1 + fabs(w));
            state_err = fmax(state_err, fabs(g - w) / tol);
        }
    }
    CHECK_MSG(state_err <= 1.0, "%s: written state off by %g tolerances", what, state_err);
    CHECK_MSG(stray_tiles == 0, "%s: %lld tiles changed that no good row writes (e.g. slot %lld)", what,
              (long long)stray_tiles, (long long)stray_slot);
    CHECK_MSG(gap_bytes_changed == 0, "%s: %lld bytes between slots of the paged pool were written", what,
              (long long)gap_bytes_changed);
    uint32_t want_counter = checked ? (uint32_t)bad_rows : 0;
    CHECK_MSG(counter == want_counter, "%s: bad_index_rows = %u, want %u", what, counter, want_counter);
    test_note("%s: out err %.2g (max %.2g), state err %.2f tol, %lld tracked tiles, counter %u", what,
              out_err, out_max, state_err, (long long)d.tracked_count, counter);
    free(got_out), free(want_out), free(got_pool), free(want_pool);
    gdata_free(&d);
}

/* A batch with good rows, padding and bad indices of every kind one-token decode has. */
static gcase bad_slots_case(int64_t K, int64_t V, gdn_state_layout layout, gdn_dtype state, gdn_dtype index)
{
    gcase c = {.N = 8,
               .H = 2,
               .HV = 4,
               .K = K,
               .V = V,
               .T = 1,
               .num_slots = 12,
               .layout = layout,
               .state_dtype = state,
               .index_dtype = index,
               .write_slots = 1,
               .seed = rng_fresh_seed()};
    const int64_t slot[8] = {3, 12, -1, 5, 7, 9, 1000000, 0};
    const int64_t write[8] = {3, 2, 4, INT64_MAX, 8, -1, 6, 11};
    const int bad[8] = {0, 1, 0, 1, 0, 0, 1, 0};
    for (int n = 0; n < 8; n++)
        c.slot[n] = slot[n], c.write[n] = write[n], c.bad[n] = bad[n];
    if (index == GDN_DTYPE_I32) /* INT64_MAX would saturate to INT32_MAX: still out of range */
        c.write[3] = 12;
    return c;
}

static void cuda_bad_slots_skipped(void)
{
    const struct {
        int64_t K, V;
        gdn_state_layout layout;
        gdn_dtype state, index;
        const char *name;
    } v[] = {{128, 128, GDN_LAYOUT_VK, GDN_DTYPE_F32, GDN_DTYPE_I64, "fast vk f32 i64"},
             {128, 128, GDN_LAYOUT_VK, GDN_DTYPE_BF16, GDN_DTYPE_I32, "fast vk bf16 i32"},
             {96, 80, GDN_LAYOUT_VK, GDN_DTYPE_F32, GDN_DTYPE_I64, "generic vk f32"},
             {64, 48, GDN_LAYOUT_KV, GDN_DTYPE_BF16, GDN_DTYPE_I64, "generic kv bf16"}};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        gcase c = bad_slots_case(v[i].K, v[i].V, v[i].layout, v[i].state, v[i].index);
        char name[96];
        snprintf(name, sizeof name, "%s, checked", v[i].name);
        run_gcase(name, &c, 1);
        snprintf(name, sizeof name, "%s, unchecked", v[i].name);
        run_gcase(name, &c, 0);
    }
}

/* Multi-token: num_accepted out of range, a token slot out of range, cu_seqlens too long and
 * beyond N*T rows. */
static void cuda_bad_multi_token_indices_skipped(void)
{
    for (int layout = 0; layout < 2; layout++) {
        gcase c = {.N = 6,
                   .H = 1,
                   .HV = 2,
                   .K = 128,
                   .V = 64,
                   .T = 3,
                   .num_slots = 40,
                   .layout = layout ? GDN_LAYOUT_KV : GDN_LAYOUT_VK,
                   .state_dtype = GDN_DTYPE_F32,
                   .index_dtype = GDN_DTYPE_I64,
                   .token_slots = 1,
                   .accepted = 1,
                   .seed = rng_fresh_seed()};
        const int64_t acc[6] = {1, 0, 3, 5, 2, 1}; /* 0 and 5: outside 1..token_slots_stride (4) */
        const int bad[6] = {0, 1, 0, 1, 1, 0};
        for (int n = 0; n < 6; n++) {
            c.acc[n] = acc[n], c.bad[n] = bad[n], c.slot[n] = -2, c.write[n] = -2;
            for (int t = 0; t < MAX_T; t++)
                c.ts[n][t] = t < 3 ? 1 + n * 3 + t : -1;
        }
        c.ts[4][2] = 40; /* out of range: row 4 skipped although it starts from column 1 */
        c.ts[5][1] = -1; /* not saved: fine */
        run_gcase(layout ? "mtp kv, checked" : "mtp vk, checked", &c, 1);

        gcase v = {.N = 4,
                   .H = 1,
                   .HV = 2,
                   .K = 128,
                   .V = 64,
                   .T = 3,
                   .num_slots = 8,
                   .layout = c.layout,
                   .state_dtype = GDN_DTYPE_BF16,
                   .index_dtype = GDN_DTYPE_I32,
                   .varlen = 1,
                   .seed = rng_fresh_seed()};
        const int64_t cu[5] = {0, 3, 5, 9, 13}; /* row 2 has 4 > T tokens; row 3 ends past N*T = 12 */
        const int vbad[4] = {0, 0, 1, 1};
        for (int n = 0; n < 4; n++)
            v.slot[n] = 2 * n + 1, v.write[n] = -2, v.bad[n] = vbad[n], v.cu[n] = cu[n];
        v.cu[4] = cu[4];
        run_gcase(layout ? "varlen kv, checked" : "varlen vk, checked", &v, 1);
    }
}

/* The counter accumulates over CUDA graph replays: zero once, replay, read. */
static void cuda_checked_mode_in_graph(void)
{
    gcase c = bad_slots_case(128, 128, GDN_LAYOUT_VK, GDN_DTYPE_F32, GDN_DTYPE_I64);
    gdata d;
    if (!gdata_build(&c, &d)) {
        gdata_free(&d);
        return;
    }
    cudaStream_t stream;
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
    gdn_decode_params p = device_params(&c, &d, d.d_counter, stream);
    cuda_check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
    gdn_status s = gdn_decode(&p);
    CHECK_MSG(s == GDN_OK, "captured call: %s", gdn_last_error());
    cuda_check(cudaStreamEndCapture(stream, &graph), "end capture");
    cuda_check(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
    for (int i = 0; i < 5; i++)
        cuda_check(cudaGraphLaunch(exec, stream), "replay");
    cuda_check(cudaStreamSynchronize(stream), "sync");
    uint32_t counter = 0;
    cuda_check(cudaMemcpy(&counter, d.d_counter, 4, cudaMemcpyDeviceToHost), "download counter");
    CHECK_MSG(counter == 5 * 3, "bad_index_rows after 5 replays = %u, want 15", counter);
    cudaGraphExecDestroy(exec), cudaGraphDestroy(graph), cudaStreamDestroy(stream);
    gdata_free(&d);
}

/* A pool of more than 2^31 elements: 4200 slots of HV = 32, K = V = 128 (2.2e9 elements;
 * 8.8 GB in f32, 4.4 GB in bf16). Rows read and write the last slots and slots past 2^31
 * elements; their neighbours and the first slots must keep their bytes. */
static void cuda_pool_over_2g_elements(void)
{
    size_t free_bytes = 0, total = 0;
    cudaMemGetInfo(&free_bytes, &total);
    CHECK_MSG(free_bytes > ((size_t)10 << 30), "needs 10 GB of free device memory, has %zu", free_bytes);
    const struct {
        gdn_state_layout layout;
        gdn_dtype state;
        const char *name;
    } v[] = {{GDN_LAYOUT_VK, GDN_DTYPE_F32, "4200 f32 vk slots (8.8 GB)"},
             {GDN_LAYOUT_KV, GDN_DTYPE_BF16, "4200 bf16 kv slots (4.4 GB)"}};
    for (int i = 0; i < 2; i++) {
        gcase c = {.N = 5,
                   .H = 16,
                   .HV = 32,
                   .K = 128,
                   .V = 128,
                   .T = 1,
                   .num_slots = 4200,
                   .layout = v[i].layout,
                   .state_dtype = v[i].state,
                   .index_dtype = GDN_DTYPE_I64,
                   .write_slots = 1,
                   .seed = rng_fresh_seed()};
        /* slot 4096 starts at element 4096 * 524288 = 2^31 */
        const int64_t slot[5] = {4199, 4100, 4096, 3, -1}, write[5] = {4199, 4150, 4097, 4198, -1};
        for (int n = 0; n < 5; n++)
            c.slot[n] = slot[n], c.write[n] = write[n];
        run_gcase(v[i].name, &c, 1);
    }
}

/* Paged pools (state_slot_stride): the bad-slots batch (good rows, padding, bad indices, checked
 * mode) with a V*K gap after or before every slot (vLLM's GDN+conv page), and a 3-element gap
 * whose slots are not 16-byte aligned (the scalar kernels then serve the fast path's shapes);
 * every kernel: one-token, multi-token (token slots), generic vk and kv. */
static void cuda_paged_pool(void)
{
    const int64_t gaps[][2] = {{128 * 128, 0}, {128 * 128, 1}, {3, 0}};
    for (int g = 0; g < 3; g++)
        for (int l = 0; l < 2; l++)
            for (int st = 0; st < 2; st++) {
                gcase c = bad_slots_case(l ? 64 : 128, 128, l ? GDN_LAYOUT_KV : GDN_LAYOUT_VK,
                                         st ? GDN_DTYPE_BF16 : GDN_DTYPE_F32, GDN_DTYPE_I64);
                c.gap = gaps[g][0], c.gap_before = (int)gaps[g][1];
                char what[96];
                snprintf(what, sizeof what, "paged pool, gap %lld%s, %s %s", (long long)c.gap,
                         c.gap_before ? " before" : " after", l ? "kv" : "vk", st ? "bf16" : "f32");
                run_gcase(what, &c, 1);
                /* multi-token with a snapshot per token (slots 16..39); of the bad rows only the one
                 * whose read slot is outside the 64 slots stays bad (write slots are not used) */
                c.T = 3, c.token_slots = 1, c.write_slots = 0, c.num_slots = 64;
                for (int64_t n = 0; n < c.N; n++) {
                    c.bad[n] = c.slot[n] >= c.num_slots;
                    for (int64_t t = 0; t < 3; t++)
                        c.ts[n][t] = c.slot[n] < 0 ? -1 : 16 + 3 * n + t;
                }
                strncat(what, ", T=3 token slots", sizeof what - strlen(what) - 1);
                run_gcase(what, &c, 1);
            }
}

/* The padded layout past 2^31 elements: HV = 32 at vLLM's page stride (HV+1)*V*K = 540672
 * elements; slot 3973 is the first whose offset passes 2^31 (FlashInfer #3230). 4000 slots of f32
 * (8.6 GB). */
static void cuda_paged_pool_over_2g_elements(void)
{
    size_t free_bytes = 0, total = 0;
    cudaMemGetInfo(&free_bytes, &total);
    CHECK_MSG(free_bytes > ((size_t)10 << 30), "needs 10 GB of free device memory, has %zu", free_bytes);
    gcase c = {.N = 5,
               .H = 16,
               .HV = 32,
               .K = 128,
               .V = 128,
               .T = 1,
               .num_slots = 4000,
               .layout = GDN_LAYOUT_VK,
               .state_dtype = GDN_DTYPE_F32,
               .index_dtype = GDN_DTYPE_I64,
               .write_slots = 1,
               .gap = 128 * 128,
               .seed = rng_fresh_seed()};
    const int64_t slot[5] = {3973, 3999, 3972, 2, -1}, write[5] = {3973, 3990, 3975, 3998, -1};
    for (int n = 0; n < 5; n++)
        c.slot[n] = slot[n], c.write[n] = write[n];
    run_gcase("paged pool of 4000 f32 slots at stride 540672 (slot 3973 past 2^31)", &c, 1);
}

/* More sequences than one launch takes (65535): the call is split (gdn_problem_rows), with
 * cu_seqlens keeping absolute rows. 70000 sequences of 0..2 tokens, K = V = 16 (generic vk),
 * against the cpu backend on the host (float32 both, different summation order: 1e-5). */
static void cuda_more_sequences_than_one_launch(void)
{
    const int64_t N = 70000, T = 2, HV = 2, K = 16, V = 16, tile = HV * V * K, slots = N;
    rng r = {rng_fresh_seed()};
    int64_t *cu = malloc((size_t)(N + 1) * 8), *slot = malloc((size_t)N * 8);
    cu[0] = 0;
    for (int64_t n = 0; n < N; n++) {
        cu[n + 1] = cu[n] + (int64_t)(rng_next(&r) % 3);
        slot[n] = n % 97 == 5 ? -1 : N - 1 - n; /* some padding; the last sequences use slot 0.. */
    }
    const int64_t rows = N * T;
    float *q = random_f32(&r, rows * K, -1, 1), *k = random_f32(&r, rows * K, -1, 1);
    float *v = random_f32(&r, rows * HV * V, -1, 1), *a = random_f32(&r, rows * HV, -2, 2);
    float *b = random_f32(&r, rows * HV, -2, 2), *A_log = random_f32(&r, HV, -1, 0.5);
    float *dt_bias = random_f32(&r, HV, -1, 1), *pool = random_f32(&r, slots * tile, -0.5, 0.5);
    float *out = malloc((size_t)(rows * HV * V) * 4), *got_out = malloc((size_t)(rows * HV * V) * 4);
    float *got_pool = malloc((size_t)(slots * tile) * 4);
    memset(out, POISON, (size_t)(rows * HV * V) * 4);
    float *d_q = upload_f32(q, rows * K), *d_k = upload_f32(k, rows * K), *d_v = upload_f32(v, rows * HV * V);
    float *d_a = upload_f32(a, rows * HV), *d_b = upload_f32(b, rows * HV), *d_A = upload_f32(A_log, HV);
    float *d_dt = upload_f32(dt_bias, HV), *d_pool = upload_f32(pool, slots * tile);
    float *d_out = upload_f32(out, rows * HV * V);
    int64_t *d_cu = NULL, *d_slot = NULL;
    cuda_check(cudaMalloc((void **)&d_cu, (size_t)(N + 1) * 8), "cudaMalloc cu");
    cuda_check(cudaMalloc((void **)&d_slot, (size_t)N * 8), "cudaMalloc slots");
    cuda_check(cudaMemcpy(d_cu, cu, (size_t)(N + 1) * 8, cudaMemcpyHostToDevice), "upload cu");
    cuda_check(cudaMemcpy(d_slot, slot, (size_t)N * 8, cudaMemcpyHostToDevice), "upload slots");

    gdn_decode_params p;
    gdn_decode_params_init(&p);
    p.num_seqs = N, p.num_q_heads = 1, p.num_v_heads = HV, p.head_dim_k = K, p.head_dim_v = V;
    p.act_dtype = GDN_DTYPE_F32, p.state_dtype = GDN_DTYPE_F32, p.num_slots = slots, p.num_tokens = T;
    p.q = d_q, p.k = d_k, p.v = d_v, p.a = d_a, p.b = d_b, p.out = d_out, p.A_log = d_A, p.dt_bias = d_dt;
    p.state_pool = d_pool, p.slot_indices = d_slot, p.cu_seqlens = d_cu, p.backend = GDN_BACKEND_CUDA;
    uint32_t *d_counter = NULL, counter = 1;
    cuda_check(cudaMalloc((void **)&d_counter, 4), "cudaMalloc counter");
    cuda_check(cudaMemset(d_counter, 0, 4), "cudaMemset counter");
    p.bad_index_rows = d_counter;
    CHECK_MSG(gdn_decode(&p) == GDN_OK, "cuda: %s", gdn_last_error());
    cuda_check(cudaDeviceSynchronize(), "kernel");
    cuda_check(cudaMemcpy(got_out, d_out, (size_t)(rows * HV * V) * 4, cudaMemcpyDeviceToHost),
               "download out");
    cuda_check(cudaMemcpy(got_pool, d_pool, (size_t)(slots * tile) * 4, cudaMemcpyDeviceToHost),
               "download pool");
    cuda_check(cudaMemcpy(&counter, d_counter, 4, cudaMemcpyDeviceToHost), "download counter");

    p.q = q, p.k = k, p.v = v, p.a = a, p.b = b, p.out = out, p.A_log = A_log, p.dt_bias = dt_bias;
    p.state_pool = pool, p.slot_indices = slot, p.cu_seqlens = cu, p.backend = GDN_BACKEND_CPU;
    p.bad_index_rows = NULL;
    CHECK_MSG(gdn_decode(&p) == GDN_OK, "cpu: %s", gdn_last_error());
    double out_err = 0, state_err = 0;
    int64_t poison_mismatch = 0;
    for (int64_t i = 0; i < rows * HV * V; i++) {
        if (i >= cu[N] * HV * V) /* rows no sequence owns keep their poison */
            poison_mismatch += memcmp(&got_out[i], &out[i], 4) != 0;
        else
            out_err = fmax(out_err, fabs((double)got_out[i] - out[i]));
    }
    for (int64_t i = 0; i < slots * tile; i++)
        state_err = fmax(state_err, fabs((double)got_pool[i] - pool[i]));
    CHECK_MSG(out_err <= 1e-5 && state_err <= 1e-5, "70000 sequences: out err %g, state err %g", out_err,
              state_err);
    CHECK_MSG(poison_mismatch == 0, "%lld output elements past cu_seqlens[N] written",
              (long long)poison_mismatch);
    CHECK_MSG(counter == 0, "bad_index_rows = %u for valid indices", counter);
    test_note("70000 sequences (%lld token rows): out err %.2g, state err %.2g", (long long)cu[N], out_err,
              state_err);
    void *dev[] = {d_q, d_k, d_v, d_a, d_b, d_A, d_dt, d_pool, d_out, d_cu, d_slot, d_counter};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        cudaFree(dev[i]);
    void *host[] = {cu, slot, q, k, v, a, b, A_log, dt_bias, pool, out, got_out, got_pool};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++)
        free(host[i]);
}

/* ---- a mixed call's two kernels ---------------------------------------------------------- */

/* A bf16 array of `count` N(0, scale^2) numbers, uploaded. */
static void *upload_bf16_normal(rng *r, int64_t count, double scale)
{
    uint16_t *host = malloc((size_t)count * 2);
    void *dev = NULL;
    for (int64_t i = 0; i < count; i++)
        host[i] = gdn_f32_to_bf16((float)(scale * rng_normal(r)));
    if (cuda_check(cudaMalloc(&dev, (size_t)count * 2), "cudaMalloc bf16"))
        cuda_check(cudaMemcpy(dev, host, (size_t)count * 2, cudaMemcpyHostToDevice), "upload bf16");
    free(host);
    return dev;
}

/* A mixed call (one sequence of 4096 tokens and 64 decodes, contest's heads, bf16 activations,
 * a workspace) with the overlap on runs its two kernels side by side on sm_90 (src/cuda/decode.cu,
 * mixed_overlap): the decodes' kernel starts while the chunked kernel walks the long sequence's
 * chunks, for ~100 us. The stream's next operation must still see both finished: copies of the pool and the
 * outputs enqueued right after the call, on its stream, must equal bit for bit the same bytes
 * read after a full synchronisation; with the overlap on and off (which must also agree bit for
 * bit), called directly and replayed from a CUDA graph. */
static void cuda_mixed_call_ordering(void)
{
    enum { N = 65, H = 4, HV = 8, K = 128, V = 128, L = 4096 };
    const int64_t rows = L + N - 1, tile = (int64_t)HV * V * K;
    const size_t pool_bytes = (size_t)(N * tile) * 4, out_bytes = (size_t)(rows * HV * V) * 2;
    rng r = {rng_fresh_seed()};
    void *d_q = upload_bf16_normal(&r, rows * H * K, 1.0), *d_k = upload_bf16_normal(&r, rows * H * K, 1.0);
    void *d_v = upload_bf16_normal(&r, rows * HV * V, 1.0), *d_a = upload_bf16_normal(&r, rows * HV, 1.0);
    void *d_b = upload_bf16_normal(&r, rows * HV, 1.0);
    float *A_log = random_f32(&r, HV, 0.0, 0.5), *dt_bias = random_f32(&r, HV, -2.0, 0.0);
    float *pool = random_f32(&r, N * tile, -0.5, 0.5);
    float *d_A = upload_f32(A_log, HV), *d_dt = upload_f32(dt_bias, HV), *d_pool = upload_f32(pool, N * tile);
    int64_t cu[N + 1], slot[N];
    cu[0] = 0;
    for (int n = 0; n < N; n++)
        cu[n + 1] = cu[n] + (n == 0 ? L : 1), slot[n] = N - 1 - n;
    int64_t *d_cu = NULL, *d_slot = NULL;
    void *d_out = NULL, *d_ws = NULL, *seen = NULL, *final = NULL, *first = NULL;
    cuda_check(cudaMalloc((void **)&d_cu, sizeof cu), "cudaMalloc cu");
    cuda_check(cudaMalloc((void **)&d_slot, sizeof slot), "cudaMalloc slots");
    cuda_check(cudaMemcpy(d_cu, cu, sizeof cu, cudaMemcpyHostToDevice), "upload cu");
    cuda_check(cudaMemcpy(d_slot, slot, sizeof slot, cudaMemcpyHostToDevice), "upload slots");
    cuda_check(cudaMalloc(&d_out, out_bytes), "cudaMalloc out");
    cuda_check(cudaMallocHost(&seen, pool_bytes + out_bytes), "cudaMallocHost");
    final = malloc(pool_bytes + out_bytes), first = malloc(pool_bytes + out_bytes);
    cudaStream_t stream;
    cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");

    gdn_decode_params p;
    gdn_decode_params_init(&p);
    p.num_seqs = N, p.num_q_heads = H, p.num_v_heads = HV, p.head_dim_k = K, p.head_dim_v = V;
    p.act_dtype = GDN_DTYPE_BF16, p.state_dtype = GDN_DTYPE_F32, p.num_slots = N, p.num_tokens = L;
    p.q = d_q, p.k = d_k, p.v = d_v, p.a = d_a, p.b = d_b, p.out = d_out, p.A_log = d_A, p.dt_bias = d_dt;
    p.state_pool = d_pool, p.slot_indices = d_slot, p.cu_seqlens = d_cu;
    p.backend = GDN_BACKEND_CUDA, p.stream = stream;
    size_t ws_bytes = 0;
    CHECK_MSG(gdn_decode_workspace_size(&p, &ws_bytes) == GDN_OK && ws_bytes > 0, "workspace size: %s",
              gdn_last_error());
    cuda_check(cudaMalloc(&d_ws, ws_bytes), "cudaMalloc workspace");
    p.workspace = d_ws, p.workspace_bytes = ws_bytes;

    int mismatches = 0, runs = 0;
    for (int mode = 0; mode < 4; mode++) { /* overlap on, off; direct, graph */
        const int overlap = mode % 2 == 0, graph = mode >= 2;
        gdn_cuda_mixed_force_overlap(overlap);
        cuda_check(cudaMemcpy(d_pool, pool, pool_bytes, cudaMemcpyHostToDevice), "reset pool");
        cuda_check(cudaMemset(d_out, POISON, out_bytes), "poison out");
        memset(seen, 0, pool_bytes + out_bytes);
        cudaGraph_t g = NULL;
        cudaGraphExec_t exec = NULL;
        if (graph)
            cuda_check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture");
        CHECK_MSG(gdn_decode(&p) == GDN_OK, "mixed call: %s", gdn_last_error());
        cuda_check(cudaMemcpyAsync(seen, d_pool, pool_bytes, cudaMemcpyDeviceToHost, stream), "copy pool");
        cuda_check(
            cudaMemcpyAsync((char *)seen + pool_bytes, d_out, out_bytes, cudaMemcpyDeviceToHost, stream),
            "copy out");
        if (graph) {
            cuda_check(cudaStreamEndCapture(stream, &g), "end capture");
            cuda_check(cudaGraphInstantiate(&exec, g, 0), "instantiate");
            cuda_check(cudaGraphLaunch(exec, stream), "replay");
        }
        cuda_check(cudaStreamSynchronize(stream), "sync");
        cuda_check(cudaMemcpy(final, d_pool, pool_bytes, cudaMemcpyDeviceToHost), "download pool");
        cuda_check(cudaMemcpy((char *) final + pool_bytes, d_out, out_bytes, cudaMemcpyDeviceToHost),
                   "download out");
        if (exec)
            cudaGraphExecDestroy(exec);
        if (g)
            cudaGraphDestroy(g);
        const int same = memcmp(seen, final, pool_bytes + out_bytes) == 0;
        CHECK_MSG(same, "overlap %d, %s: the copy enqueued after the call saw other bytes than the call left",
                  overlap, graph ? "graph" : "direct");
        mismatches += !same;
        if (runs++ == 0)
            memcpy(first, final, pool_bytes + out_bytes);
        else
            CHECK_MSG(memcmp(first, final, pool_bytes + out_bytes) == 0,
                      "overlap %d, %s: results differ from the first run's", overlap,
                      graph ? "graph" : "direct");
    }
    gdn_cuda_mixed_force_overlap(-1);
    /* the call did its work: the long sequence's tile (slot N - 1) and a decode's (slot 0) changed */
    CHECK_MSG(memcmp(first, pool, (size_t)tile * 4) != 0 &&
                  memcmp((float *)first + (N - 1) * tile, pool + (N - 1) * tile, (size_t)tile * 4) != 0,
              "the mixed call left its states unchanged");
    test_note("%d runs, %d copies that saw the call unfinished", runs, mismatches);
    cudaStreamDestroy(stream);
    void *dev[] = {d_q, d_k, d_v, d_a, d_b, d_A, d_dt, d_pool, d_cu, d_slot, d_out, d_ws};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        cudaFree(dev[i]);
    cudaFreeHost(seen);
    free(final), free(first), free(A_log), free(dt_bias), free(pool);
}

/* ---- four streams ----------------------------------------------------------------------- */

enum { STREAM_THREADS = 4, STREAM_STEPS = 16 };

typedef struct stream_job {
    gcase c;
    gdata d;
    int use_own_stream;
    unsigned char *pool_after;
    float *out_after;
    int ok;
} stream_job;

static void *stream_worker(void *arg)
{
    stream_job *j = arg;
    cudaStream_t stream = NULL;
    if (j->use_own_stream && cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess)
        return NULL;
    gdn_decode_params p = device_params(&j->c, &j->d, NULL, stream);
    j->ok = 1;
    for (int step = 0; step < STREAM_STEPS; step++)
        j->ok &= gdn_decode(&p) == GDN_OK;
    j->ok &= cudaStreamSynchronize(stream) == cudaSuccess;
    const size_t pool_bytes = (size_t)(j->c.num_slots * j->d.tile) * j->d.state_size;
    const size_t out_bytes = (size_t)(j->d.rows * j->c.HV * j->c.V) * 4;
    j->pool_after = malloc(pool_bytes), j->out_after = malloc(out_bytes);
    j->ok &= cudaMemcpy(j->pool_after, j->d.d_pool, pool_bytes, cudaMemcpyDeviceToHost) == cudaSuccess;
    j->ok &= cudaMemcpy(j->out_after, j->d.d_out, out_bytes, cudaMemcpyDeviceToHost) == cudaSuccess;
    if (stream)
        cudaStreamDestroy(stream);
    return NULL;
}

static gcase stream_case(int i, uint64_t seed)
{
    gcase c = {.N = 16,
               .H = 4,
               .HV = 8,
               .K = 128,
               .V = 128,
               .T = 1,
               .num_slots = 20,
               .layout = GDN_LAYOUT_VK,
               .state_dtype = i % 2 ? GDN_DTYPE_BF16 : GDN_DTYPE_F32,
               .index_dtype = GDN_DTYPE_I64,
               .seed = seed + (uint64_t)i};
    for (int n = 0; n < 16; n++)
        c.slot[n] = n % 5 == 4 ? -1 : (n * 7 + i) % 20, c.write[n] = -2;
    return c;
}

/* Four host threads, each on its own CUDA stream, STREAM_STEPS steps on its own pool, all at
 * once, against the same four jobs run one after another on the legacy stream: bit for bit. */
static void cuda_four_streams(void)
{
    static stream_job serial[STREAM_THREADS], parallel[STREAM_THREADS];
    const uint64_t seed = rng_fresh_seed();
    for (int i = 0; i < STREAM_THREADS; i++) {
        serial[i].c = parallel[i].c = stream_case(i, seed);
        if (!gdata_build(&serial[i].c, &serial[i].d) || !gdata_build(&parallel[i].c, &parallel[i].d))
            return;
        parallel[i].use_own_stream = 1;
        stream_worker(&serial[i]);
    }
    pthread_t threads[STREAM_THREADS];
    for (int i = 0; i < STREAM_THREADS; i++)
        pthread_create(&threads[i], NULL, stream_worker, &parallel[i]);
    for (int i = 0; i < STREAM_THREADS; i++)
        pthread_join(threads[i], NULL);
    for (int i = 0; i < STREAM_THREADS; i++) {
        const size_t pool_bytes = (size_t)(serial[i].c.num_slots * serial[i].d.tile) * serial[i].d.state_size;
        const size_t out_bytes = (size_t)(serial[i].d.rows * serial[i].c.HV * serial[i].c.V) * 4;
        CHECK_MSG(serial[i].ok && parallel[i].ok, "job %d: a call or copy failed", i);
        if (!serial[i].pool_after || !parallel[i].pool_after)
            continue;
        CHECK_MSG(memcmp(serial[i].pool_after, parallel[i].pool_after, pool_bytes) == 0,
                  "job %d: the state pool differs between four streams and one", i);
        CHECK_MSG(memcmp(serial[i].out_after, parallel[i].out_after, out_bytes) == 0,
                  "job %d: out differs between four streams and one", i);
        /* and the calls did run: the pool (all of it mirrored here) moved from its start */
        CHECK_MSG(memcmp(serial[i].pool_after, serial[i].d.pool_init, pool_bytes) != 0,
                  "job %d: the state pool never changed", i);
    }
    for (int i = 0; i < STREAM_THREADS; i++) {
        free(serial[i].pool_after), free(serial[i].out_after), free(parallel[i].pool_after);
        free(parallel[i].out_after);
        gdata_free(&serial[i].d), gdata_free(&parallel[i].d);
    }
}

void register_cuda_tests(void)
{
    if (!gdn_backend_built(GDN_BACKEND_CUDA) || gdn_cuda_device_count() == 0)
        return; /* GPU-only tests: nothing to register on a machine without a device */
    test_add("cuda/bad_slots_skipped", cuda_bad_slots_skipped);
    test_add("cuda/bad_multi_token_indices_skipped", cuda_bad_multi_token_indices_skipped);
    test_add("cuda/checked_mode_in_graph", cuda_checked_mode_in_graph);
    test_add("cuda/four_streams", cuda_four_streams);
    test_add("cuda/mixed_call_ordering", cuda_mixed_call_ordering);
    test_add("cuda/more_sequences_than_one_launch", cuda_more_sequences_than_one_launch);
    test_add("cuda/huge_pool_over_2g_elements", cuda_pool_over_2g_elements);
    test_add("cuda/paged_pool", cuda_paged_pool);
    test_add("cuda/huge_paged_pool_over_2g_elements", cuda_paged_pool_over_2g_elements);
}

#else

void register_cuda_tests(void) {}

#endif
