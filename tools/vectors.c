#include "vectors.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "buffers.h"

const char *const vector_case_names[] = {"decode_qwen3next",
                                         "decode_qwen35_27b_tiled",
                                         "mtp_tp4",
                                         "odd_small",
                                         "no_l2norm_small",
                                         "long_horizon",
                                         NULL};

#define VECTOR_TOLERANCE 1e-5
#define MAX_ARRAYS 16

typedef struct array {
    char name[33];
    uint32_t dtype; /* 0 f32, 1 f64, 2 i64 */
    uint32_t ndim;
    int64_t dims[8];
    int64_t count;
    void *data;
} array;

typedef struct vector_file {
    array arrays[MAX_ARRAYS];
    int count;
} vector_file;

static int fail(vector_result *r, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vsnprintf(r->message, sizeof r->message, fmt, args);
    va_end(args);
    r->pass = 0;
    return 0;
}

const char *vectors_dir(void)
{
    const char *env = getenv("GDN_VECTORS");
    if (env && env[0])
        return env;
    struct stat st;
    if (stat("../shared/vectors", &st) == 0 && S_ISDIR(st.st_mode))
        return "../shared/vectors";
    return NULL;
}

static void free_file(vector_file *f)
{
    for (int i = 0; i < f->count; i++)
        free(f->arrays[i].data);
}

static int load_file(const char *path, vector_file *f, vector_result *r)
{
    memset(f, 0, sizeof *f);
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return fail(r, "cannot open %s", path);
    char magic[8];
    uint32_t count = 0;
    int ok = fread(magic, 1, 8, fp) == 8 && memcmp(magic, "GDNVEC01", 8) == 0 &&
             fread(&count, 4, 1, fp) == 1 && count <= MAX_ARRAYS;
    for (uint32_t i = 0; ok && i < count; i++) {
        array *a = &f->arrays[f->count];
        ok = fread(a->name, 1, 32, fp) == 32 && fread(&a->dtype, 4, 1, fp) == 1 &&
             fread(&a->ndim, 4, 1, fp) == 1 && a->ndim <= 8 && a->dtype <= 2 &&
             fread(a->dims, 8, a->ndim, fp) == a->ndim;
        if (!ok)
            break;
        a->count = 1;
        for (uint32_t d = 0; d < a->ndim; d++)
            a->count *= a->dims[d];
        size_t bytes = (size_t)a->count * (a->dtype == 0 ? 4 : 8);
        a->data = malloc(bytes ? bytes : 1);
        ok = a->data && fread(a->data, 1, bytes, fp) == bytes;
        f->count++;
    }
    fclose(fp);
    if (!ok) {
        free_file(f);
        return fail(r, "%s is not a valid GDNVEC01 file", path);
    }
    return 1;
}

static const array *find(const vector_file *f, const char *name)
{
    for (int i = 0; i < f->count; i++)
        if (strcmp(f->arrays[i].name, name) == 0)
            return &f->arrays[i];
    return NULL;
}

/* Host or device copy of a host array. */
static void *place(mem_where where, const void *host, size_t bytes)
{
    if (where == MEM_HOST)
        return (void *)host;
    void *d = mem_alloc(MEM_DEVICE, bytes);
    if (d && mem_upload(MEM_DEVICE, d, host, bytes) != 0) {
        mem_free(MEM_DEVICE, d);
        return NULL;
    }
    return d;
}

static double rel_error(const float *got, const float *ref, int64_t count)
{
    double d2 = 0, r2 = 0;
    for (int64_t i = 0; i < count; i++) {
        double d = (double)got[i] - (double)ref[i];
        d2 += d * d, r2 += (double)ref[i] * ref[i];
    }
    double e = r2 > 0 ? sqrt(d2 / r2) : sqrt(d2);
    return isnan(e) ? INFINITY : e;
}

/*
 * Multi-token mode: all T tokens in one call, the state after each token saved to its own slot
 * (token_slots), checked against token_states and pool_out; the sequences' own slots must stay
 * as pool_in had them.
 */
static int run_multi_token(const vector_file *f, gdn_backend backend, vector_result *r)
{
    const array *q = find(f, "q"), *v = find(f, "v"), *pool_in = find(f, "pool_in"),
                *flags = find(f, "flags");
    const array *tok = find(f, "token_states");
    int64_t N = q->dims[0], T = q->dims[1], H = q->dims[2], K = q->dims[3], HV = v->dims[2], V = v->dims[3];
    int64_t slots = pool_in->dims[0], tile = HV * V * K, all_slots = slots + N * T;
    const int64_t *slot_of = find(f, "slot_indices")->data;
    mem_where where = backend == GDN_BACKEND_CUDA ? MEM_DEVICE : MEM_HOST;
    size_t pool_bytes = (size_t)(all_slots * tile) * 4, out_bytes = (size_t)(N * T * HV * V) * 4;
    float *pool = malloc(pool_bytes), *out = malloc(out_bytes);
    int64_t *token_slots = malloc((size_t)(N * T) * sizeof(int64_t));
    memcpy(pool, pool_in->data, (size_t)(slots * tile) * 4);
    memset(pool + slots * tile, 0xff, (size_t)(N * T * tile) * 4);
    memset(out, 0xff, out_bytes);
    for (int64_t i = 0; i < N * T; i++)
        token_slots[i] = slot_of[i / T] < 0 ? -1 : slots + i;
    void *d_q = place(where, q->data, (size_t)q->count * 4),
         *d_k = place(where, find(f, "k")->data, (size_t)q->count * 4);
    void *d_v = place(where, v->data, (size_t)v->count * 4);
    void *d_a = place(where, find(f, "a")->data, (size_t)(N * T * HV) * 4);
    void *d_b = place(where, find(f, "b")->data, (size_t)(N * T * HV) * 4);
    void *d_A = place(where, find(f, "A_log")->data, (size_t)HV * 4);
    void *d_dt = place(where, find(f, "dt_bias")->data, (size_t)HV * 4);
    void *d_slots = place(where, slot_of, (size_t)N * 8),
         *d_tokens = place(where, token_slots, (size_t)(N * T) * 8);
    void *d_pool = place(where, pool, pool_bytes), *d_out = place(where, out, out_bytes);
    if (!(d_q && d_k && d_v && d_a && d_b && d_A && d_dt && d_slots && d_tokens && d_pool && d_out)) {
        fail(r, "device allocation or upload failed: %s", mem_error());
    } else {
        gdn_decode_params p;
        gdn_decode_params_init(&p);
        p.num_seqs = N, p.num_q_heads = H, p.num_v_heads = HV, p.head_dim_k = K, p.head_dim_v = V;
        p.act_dtype = GDN_DTYPE_F32, p.q = d_q, p.k = d_k, p.v = d_v, p.a = d_a, p.b = d_b, p.out = d_out;
        p.A_log = d_A, p.dt_bias = d_dt;
        p.scale = (float)((const double *)find(f, "scale")->data)[0];
        p.qk_l2norm = (int)((const int64_t *)flags->data)[0];
        p.head_map = ((const int64_t *)flags->data)[1] ? GDN_HEAD_MAP_TILED : GDN_HEAD_MAP_GROUPED;
        p.state_pool = d_pool, p.num_slots = all_slots, p.slot_indices = d_slots,
        p.index_dtype = GDN_DTYPE_I64;
        p.num_tokens = T, p.token_slots = d_tokens, p.backend = backend;
        gdn_status s = gdn_decode(&p);
        if (s != GDN_OK)
            fail(r, "%s: %s", gdn_status_string(s), gdn_last_error());
        else if (where == MEM_DEVICE &&
                 (mem_sync(MEM_DEVICE) || mem_download(MEM_DEVICE, out, d_out, out_bytes) ||
                  mem_download(MEM_DEVICE, pool, d_pool, pool_bytes)))
            fail(r, "device run failed: %s", mem_error());
    }
    if (r->pass) {
        r->out_rel = rel_error(out, find(f, "out")->data, N * T * HV * V);
        r->state_rel = 0;
        for (int64_t n = 0; n < N; n++) {
            if (slot_of[n] < 0)
                continue;
            const float *final = pool + token_slots[n * T + T - 1] * tile;
            double e = rel_error(final, (const float *)find(f, "pool_out")->data + slot_of[n] * tile, tile);
            r->state_rel = e > r->state_rel ? e : r->state_rel;
            for (int64_t t = 0; tok && t < T; t++) {
                e = rel_error(pool + token_slots[n * T + t] * tile,
                              (const float *)tok->data + (n * T + t) * tile, tile);
                r->token_state_rel = e > r->token_state_rel ? e : r->token_state_rel;
            }
        }
        if (memcmp(pool, pool_in->data, (size_t)(slots * tile) * 4) != 0)
            fail(r, "multi-token call with token_slots changed the sequences' own slots");
        else if (!(r->out_rel <= VECTOR_TOLERANCE))
            fail(r, "output rel error %.3g > %.0e", r->out_rel, VECTOR_TOLERANCE);
        else if (!(r->state_rel <= VECTOR_TOLERANCE) || !(r->token_state_rel <= VECTOR_TOLERANCE))
            fail(r, "state rel error %.3g / per-token %.3g > %.0e", r->state_rel, r->token_state_rel,
                 VECTOR_TOLERANCE);
    }
    if (where == MEM_DEVICE) {
        void *dev[] = {d_q, d_k, d_v, d_a, d_b, d_A, d_dt, d_slots, d_tokens, d_pool, d_out};
        for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
            mem_free(MEM_DEVICE, dev[i]);
    }
    free(pool), free(out), free(token_slots);
    return r->pass;
}

static int run_loaded(const vector_file *f, gdn_backend backend, vector_result *r)
{
    const char *required[] = {
        "q",     "k",     "v",       "a",   "b",       "A_log", "dt_bias", "slot_indices",
        "flags", "scale", "pool_in", "out", "pool_out"};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
        if (!find(f, required[i]))
            return fail(r, "array %s missing", required[i]);
    const array *q = find(f, "q"), *v = find(f, "v"), *pool_in = find(f, "pool_in"),
                *flags = find(f, "flags");
    const array *tok = find(f, "token_states");
    int64_t N = q->dims[0], T = q->dims[1], H = q->dims[2], K = q->dims[3], HV = v->dims[2], V = v->dims[3];
    int64_t slots = pool_in->dims[0], tile = HV * V * K;
    r->n = N, r->t = T, r->h = H, r->hv = HV, r->k = K, r->v = V;
    mem_where where = backend == GDN_BACKEND_CUDA ? MEM_DEVICE : MEM_HOST;
    size_t pool_bytes = (size_t)(slots * tile) * 4, out_bytes = (size_t)(N * HV * V) * 4;
    float *pool = malloc(pool_bytes), *out = malloc(out_bytes);
    memcpy(pool, pool_in->data, pool_bytes);
    void *d_q = place(where, q->data, (size_t)q->count * 4);
    void *d_k = place(where, find(f, "k")->data, (size_t)q->count * 4);
    void *d_v = place(where, v->data, (size_t)v->count * 4);
    void *d_a = place(where, find(f, "a")->data, (size_t)(N * T * HV) * 4);
    void *d_b = place(where, find(f, "b")->data, (size_t)(N * T * HV) * 4);
    void *d_A = place(where, find(f, "A_log")->data, (size_t)HV * 4);
    void *d_dt = place(where, find(f, "dt_bias")->data, (size_t)HV * 4);
    void *d_slots = place(where, find(f, "slot_indices")->data, (size_t)N * 8);
    void *d_pool = place(where, pool, pool_bytes);
    void *d_out = where == MEM_HOST ? out : mem_alloc(MEM_DEVICE, out_bytes);
    int ok = d_q && d_k && d_v && d_a && d_b && d_A && d_dt && d_slots && d_pool && d_out;
    if (!ok)
        fail(r, "device allocation or upload failed: %s", mem_error());
    const float *ref_out = find(f, "out")->data;
    const int64_t *slot_of = find(f, "slot_indices")->data;
    double d2 = 0, r2 = 0;
    r->token_state_rel = 0;
    for (int64_t t = 0; ok && t < T; t++) {
        gdn_decode_params p;
        gdn_decode_params_init(&p);
        p.num_seqs = N, p.num_q_heads = H, p.num_v_heads = HV, p.head_dim_k = K, p.head_dim_v = V;
        p.act_dtype = GDN_DTYPE_F32;
        p.q = (const float *)d_q + t * H * K, p.q_stride = T * H * K;
        p.k = (const float *)d_k + t * H * K, p.k_stride = T * H * K;
        p.v = (const float *)d_v + t * HV * V, p.v_stride = T * HV * V;
        p.a = (const float *)d_a + t * HV, p.a_stride = T * HV;
        p.b = (const float *)d_b + t * HV, p.b_stride = T * HV;
        p.out = d_out;
        p.A_log = d_A, p.dt_bias = d_dt;
        p.scale = (float)((const double *)find(f, "scale")->data)[0];
        p.qk_l2norm = (int)((const int64_t *)flags->data)[0];
        p.head_map = ((const int64_t *)flags->data)[1] ? GDN_HEAD_MAP_TILED : GDN_HEAD_MAP_GROUPED;
        p.state_pool = d_pool, p.num_slots = slots, p.state_dtype = GDN_DTYPE_F32;
        p.slot_indices = d_slots, p.index_dtype = GDN_DTYPE_I64;
        p.backend = backend;
        memset(out, 0xff, out_bytes);
        if (where == MEM_DEVICE && mem_upload(MEM_DEVICE, d_out, out, out_bytes) != 0) {
            ok = fail(r, "upload failed: %s", mem_error());
            break;
        }
        gdn_status s = gdn_decode(&p);
        if (s != GDN_OK) {
            ok = fail(r, "token %lld: %s: %s", (long long)t, gdn_status_string(s), gdn_last_error());
            break;
        }
        if (where == MEM_DEVICE && (mem_sync(MEM_DEVICE) || mem_download(MEM_DEVICE, out, d_out, out_bytes) ||
                                    mem_download(MEM_DEVICE, pool, d_pool, pool_bytes))) {
            ok = fail(r, "device run failed: %s", mem_error());
            break;
        }
        for (int64_t n = 0; n < N; n++) {
            for (int64_t j = 0; j < HV * V; j++) {
                double got = out[n * HV * V + j], ref = ref_out[(n * T + t) * HV * V + j];
                if (isnan(got))
                    ok = fail(r, "token %lld row %lld: output element %lld not written", (long long)t,
                              (long long)n, (long long)j);
                d2 += (got - ref) * (got - ref), r2 += ref * ref;
            }
            if (tok && slot_of[n] >= 0) {
                double e =
                    rel_error(pool + slot_of[n] * tile, (const float *)tok->data + (n * T + t) * tile, tile);
                if (e > r->token_state_rel)
                    r->token_state_rel = e;
            }
        }
    }
    if (ok) {
        r->out_rel = r2 > 0 ? sqrt(d2 / r2) : sqrt(d2);
        r->state_rel = rel_error(pool, find(f, "pool_out")->data, slots * tile);
        if (!(r->out_rel <= VECTOR_TOLERANCE))
            fail(r, "output rel error %.3g > %.0e", r->out_rel, VECTOR_TOLERANCE);
        else if (!(r->state_rel <= VECTOR_TOLERANCE))
            fail(r, "final pool rel error %.3g > %.0e", r->state_rel, VECTOR_TOLERANCE);
        else if (!(r->token_state_rel <= VECTOR_TOLERANCE))
            fail(r, "per-token state rel error %.3g > %.0e", r->token_state_rel, VECTOR_TOLERANCE);
    }
    if (where == MEM_DEVICE) {
        void *dev[] = {d_q, d_k, d_v, d_a, d_b, d_A, d_dt, d_slots, d_pool, d_out};
        for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
            mem_free(MEM_DEVICE, dev[i]);
    }
    free(pool), free(out);
    return r->pass;
}

int vectors_run_file(const char *path, gdn_backend backend, int multi_token, vector_result *r)
{
    memset(r, 0, sizeof *r);
    r->pass = 1;
    vector_file f;
    if (!load_file(path, &f, r))
        return 0;
    run_loaded(&f, backend, r);
    if (multi_token && r->pass && r->t > 1 && r->t <= GDN_MAX_TOKENS) {
        vector_result m = *r;
        m.out_rel = m.state_rel = m.token_state_rel = 0;
        run_multi_token(&f, backend, &m);
        *r = m;
    }
    free_file(&f);
    return r->pass;
}
