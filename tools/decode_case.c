#include "decode_case.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/common/numeric.h"
#include "buffers.h"
#include "rng.h"

/* Tolerances of SPEC 6 for the output, by activation dtype: on ||out-ref||/||ref|| and on the
 * max abs error relative to max(1, max|ref|). f32: the float32 math alone; f16/bf16: the
 * rounding of the stored output dominates. */
static double out_rel_tol(gdn_dtype act)
{
    return act == GDN_DTYPE_BF16 ? 8e-3 : act == GDN_DTYPE_F16 ? 1e-3 : 1e-5;
}
static double out_abs_tol(gdn_dtype act)
{
    return act == GDN_DTYPE_BF16 ? 1e-2 : act == GDN_DTYPE_F16 ? 2e-3 : 2e-5;
}

/* Host and backend copies of every tensor of one case. */
typedef struct arrays {
    int64_t n, h, hv, kd, vd, slots;
    int64_t qkv_stride, ab_stride, out_stride; /* elements between tokens */
    size_t act_size, state_size, idx_size;
    size_t proj_bytes, ab_bytes, out_bytes, pool_bytes, idx_bytes;
    /* host, in the backend's dtypes */
    unsigned char *proj, *ab, *out, *pool, *pool_before, *read_idx, *write_idx;
    float *A_log, *dt_bias;
    /* host, float64 copies for the reference */
    double *proj64, *ab64, *out64, *ref_pool, *rounded_pool;
    /* backend side (== host pointers on host backends) */
    mem_where where;
    void *d_proj, *d_ab, *d_out, *d_pool, *d_read, *d_write, *d_A_log, *d_dt_bias;
} arrays;

static int fail(decode_case_result *r, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    vsnprintf(r->message, sizeof r->message, fmt, args);
    va_end(args);
    r->pass = 0;
    return 0;
}

void decode_case_describe(const decode_case *c, char *buf, size_t size)
{
    snprintf(buf, size, "%s N=%lld H=%lld HV=%lld K=%lld V=%lld act=%s state=%s %s %s %s%s%s%s%s%s",
             c->name ? c->name : "case", (long long)c->num_seqs, (long long)c->num_q_heads,
             (long long)c->num_v_heads, (long long)c->head_dim_k, (long long)c->head_dim_v,
             gdn_dtype_name(c->act_dtype), gdn_dtype_name(c->state_dtype),
             c->layout == GDN_LAYOUT_VK ? "vk" : "kv", gdn_dtype_name(c->index_dtype),
             c->head_map == GDN_HEAD_MAP_TILED ? "tiled" : "grouped", c->qk_l2norm ? "" : " no-l2norm",
             c->padding ? " padding" : "", c->null_slot_zero ? " null0" : "", c->write_slots ? " wslots" : "",
             c->strided ? " strided" : "");
}

static void free_arrays(arrays *A)
{
    free(A->proj), free(A->ab), free(A->out), free(A->pool), free(A->pool_before);
    free(A->read_idx), free(A->write_idx), free(A->A_log), free(A->dt_bias);
    free(A->proj64), free(A->ab64), free(A->out64), free(A->ref_pool), free(A->rounded_pool);
    if (A->where == MEM_DEVICE) {
        void *dev[] = {A->d_proj, A->d_ab, A->d_out, A->d_pool, A->d_read, A->d_write, A->d_A_log, A->d_dt_bias};
        for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
            mem_free(MEM_DEVICE, dev[i]);
    }
}

static void set_index(const arrays *A, unsigned char *idx, gdn_dtype dtype, int64_t n, int64_t value)
{
    if (dtype == GDN_DTYPE_I32)
        ((int32_t *)idx)[n] = (int32_t)value;
    else
        ((int64_t *)idx)[n] = value;
    (void)A;
}

static int64_t get_index(const unsigned char *idx, gdn_dtype dtype, int64_t n)
{
    return dtype == GDN_DTYPE_I32 ? ((const int32_t *)idx)[n] : ((const int64_t *)idx)[n];
}

/* Draws a value of N(0, sigma^2), rounds it to dtype, and stores it in both copies. */
static void draw(rng *g, double sigma, void *typed, gdn_dtype dtype, double *wide, int64_t i)
{
    gdn_store_f64(typed, dtype, i, sigma * rng_normal(g));
    wide[i] = gdn_load_f64(typed, dtype, i);
}

static int alloc_arrays(const decode_case *c, gdn_backend backend, arrays *A, decode_case_result *r)
{
    memset(A, 0, sizeof *A);
    A->n = c->num_seqs, A->h = c->num_q_heads, A->hv = c->num_v_heads;
    A->kd = c->head_dim_k, A->vd = c->head_dim_v;
    A->slots = (c->write_slots ? 2 * A->n : A->n) + 2; /* two slots no row touches */
    int64_t qk = A->h * A->kd, hvv = A->hv * A->vd;
    A->qkv_stride = c->strided ? 2 * qk + hvv + 8 : 0;
    A->ab_stride = c->strided ? 2 * A->hv + 3 : 0;
    A->out_stride = c->strided ? hvv + 5 : hvv;
    A->act_size = gdn_dtype_size(c->act_dtype);
    A->state_size = gdn_dtype_size(c->state_dtype);
    A->idx_size = gdn_dtype_size(c->index_dtype);
    int64_t proj_elems = c->strided ? A->n * A->qkv_stride : A->n * (2 * qk + hvv);
    int64_t ab_elems = c->strided ? A->n * A->ab_stride : 2 * A->n * A->hv;
    int64_t out_elems = A->n * A->out_stride;
    int64_t pool_elems = A->slots * A->hv * A->vd * A->kd;
    A->proj_bytes = (size_t)proj_elems * A->act_size;
    A->ab_bytes = (size_t)ab_elems * A->act_size;
    A->out_bytes = (size_t)out_elems * A->act_size;
    A->pool_bytes = (size_t)pool_elems * A->state_size;
    A->idx_bytes = (size_t)A->n * A->idx_size;
    A->proj = malloc(A->proj_bytes), A->ab = malloc(A->ab_bytes), A->out = malloc(A->out_bytes);
    A->pool = malloc(A->pool_bytes), A->pool_before = malloc(A->pool_bytes);
    A->read_idx = malloc(A->idx_bytes), A->write_idx = malloc(A->idx_bytes);
    A->A_log = malloc((size_t)A->hv * sizeof(float)), A->dt_bias = malloc((size_t)A->hv * sizeof(float));
    A->proj64 = malloc((size_t)proj_elems * sizeof(double)), A->ab64 = malloc((size_t)ab_elems * sizeof(double));
    A->out64 = malloc((size_t)out_elems * sizeof(double));
    A->ref_pool = malloc((size_t)pool_elems * sizeof(double));
    A->rounded_pool = malloc((size_t)pool_elems * sizeof(double));
    if (!A->proj || !A->ab || !A->out || !A->pool || !A->pool_before || !A->read_idx || !A->write_idx ||
        !A->A_log || !A->dt_bias || !A->proj64 || !A->ab64 || !A->out64 || !A->ref_pool || !A->rounded_pool)
        return fail(r, "host allocation failed (pool of %lld elements)", (long long)pool_elems);
    A->where = backend == GDN_BACKEND_CUDA ? MEM_DEVICE : MEM_HOST;
    if (A->where == MEM_HOST) {
        A->d_proj = A->proj, A->d_ab = A->ab, A->d_out = A->out, A->d_pool = A->pool;
        A->d_read = A->read_idx, A->d_write = A->write_idx, A->d_A_log = A->A_log, A->d_dt_bias = A->dt_bias;
        return 1;
    }
    A->d_proj = mem_alloc(MEM_DEVICE, A->proj_bytes), A->d_ab = mem_alloc(MEM_DEVICE, A->ab_bytes);
    A->d_out = mem_alloc(MEM_DEVICE, A->out_bytes), A->d_pool = mem_alloc(MEM_DEVICE, A->pool_bytes);
    A->d_read = mem_alloc(MEM_DEVICE, A->idx_bytes), A->d_write = mem_alloc(MEM_DEVICE, A->idx_bytes);
    A->d_A_log = mem_alloc(MEM_DEVICE, (size_t)A->hv * 4), A->d_dt_bias = mem_alloc(MEM_DEVICE, (size_t)A->hv * 4);
    if (!A->d_proj || !A->d_ab || !A->d_out || !A->d_pool || !A->d_read || !A->d_write || !A->d_A_log ||
        !A->d_dt_bias)
        return fail(r, "device allocation failed: %s", mem_error());
    return 1;
}

/* Fresh activations for one step (and the gate parameters and pool on step 0). */
static void fill_inputs(const decode_case *c, arrays *A, rng *g, int first)
{
    int64_t proj_elems = (int64_t)(A->proj_bytes / A->act_size), ab_elems = (int64_t)(A->ab_bytes / A->act_size);
    for (int64_t i = 0; i < proj_elems; i++)
        draw(g, 1.0, A->proj, c->act_dtype, A->proj64, i);
    for (int64_t i = 0; i < ab_elems; i++)
        draw(g, 1.0, A->ab, c->act_dtype, A->ab64, i);
    if (!first)
        return;
    for (int64_t hv = 0; hv < A->hv; hv++) {
        A->A_log[hv] = (float)log(1.0 + 15.0 * rng_uniform(g)); /* A in [1, 16] */
        double dt = exp(log(1e-3) + (log(1e-1) - log(1e-3)) * rng_uniform(g));
        A->dt_bias[hv] = (float)(dt + log(-expm1(-dt))); /* softplus^-1(dt) */
    }
    int64_t pool_elems = (int64_t)(A->pool_bytes / A->state_size);
    for (int64_t i = 0; i < pool_elems; i++) {
        draw(g, 0.05, A->pool, c->state_dtype, A->ref_pool, i);
        A->rounded_pool[i] = A->ref_pool[i];
    }
}

/* Slot assignment: a random permutation of the usable slots; padding rows every third row. */
static void assign_slots(const decode_case *c, arrays *A, rng *g)
{
    int64_t first = c->null_slot_zero ? 1 : 0, count = A->slots - first;
    int64_t *perm = malloc((size_t)count * sizeof(int64_t));
    for (int64_t i = 0; i < count; i++)
        perm[i] = first + i;
    for (int64_t i = count - 1; i > 0; i--) {
        int64_t j = (int64_t)(rng_next(g) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int64_t n = 0; n < A->n; n++) {
        int64_t read = perm[n], write = c->write_slots ? perm[A->n + n] : read;
        if (c->padding && n % 3 == 1)
            read = write = (c->null_slot_zero && n % 2 == 0) ? 0 : -1;
        set_index(A, A->read_idx, c->index_dtype, n, read);
        set_index(A, A->write_idx, c->index_dtype, n, write);
    }
    free(perm);
}

static gdn_decode_params make_params(const decode_case *c, const arrays *A, void *proj, void *ab, void *out,
                                     void *pool, const void *read_idx, const void *write_idx,
                                     const float *A_log, const float *dt_bias, gdn_dtype act, gdn_dtype state,
                                     gdn_backend backend)
{
    gdn_decode_params p;
    gdn_decode_params_init(&p);
    size_t es = gdn_dtype_size(act);
    int64_t qk = A->h * A->kd, hvv = A->hv * A->vd;
    p.num_seqs = A->n, p.num_q_heads = A->h, p.num_v_heads = A->hv, p.head_dim_k = A->kd, p.head_dim_v = A->vd;
    p.act_dtype = act;
    unsigned char *pb = proj, *abb = ab;
    if (c->strided) { /* one projection row per token: q | k | v | pad, and a | b | pad */
        p.q = pb, p.k = pb + (size_t)qk * es, p.v = pb + (size_t)(2 * qk) * es;
        p.q_stride = p.k_stride = p.v_stride = A->qkv_stride;
        p.a = abb, p.b = abb + (size_t)A->hv * es;
        p.a_stride = p.b_stride = A->ab_stride;
    } else { /* packed tensors one after another */
        p.q = pb, p.k = pb + (size_t)(A->n * qk) * es, p.v = pb + (size_t)(2 * A->n * qk) * es;
        p.a = abb, p.b = abb + (size_t)(A->n * A->hv) * es;
    }
    p.out = out, p.out_stride = A->out_stride;
    (void)hvv;
    p.A_log = A_log, p.dt_bias = dt_bias;
    p.qk_l2norm = c->qk_l2norm, p.head_map = c->head_map;
    p.state_pool = pool, p.num_slots = A->slots, p.state_layout = c->layout, p.state_dtype = state;
    p.slot_indices = read_idx, p.index_dtype = c->index_dtype, p.null_slot_zero = c->null_slot_zero;
    p.write_slot_indices = c->write_slots ? write_idx : NULL;
    p.backend = backend;
    return p;
}

/* Rounds the written tiles of the rounded-reference pool to the state dtype (bf16 drift). */
static void round_written(const decode_case *c, arrays *A, const int64_t *written, int64_t count)
{
    int64_t tile = A->hv * A->vd * A->kd;
    for (int64_t w = 0; w < count; w++)
        for (int64_t i = written[w] * tile; i < (written[w] + 1) * tile; i++) {
            unsigned char tmp[8];
            gdn_store_f64(tmp, c->state_dtype, 0, A->rounded_pool[i]);
            A->rounded_pool[i] = gdn_load_f64(tmp, c->state_dtype, 0);
        }
}

static int slot_is_null(const decode_case *c, int64_t s) { return s < 0 || (c->null_slot_zero && s == 0); }

static int check_step(const decode_case *c, arrays *A, decode_case_result *r)
{
    int64_t hvv = A->hv * A->vd, tile = A->hv * A->vd * A->kd;
    double diff2 = 0, ref2 = 0;
    r->out_max_abs = r->out_ref_max = 0;
    r->unwritten = r->bad_padding = r->stray = 0;
    for (int64_t n = 0; n < A->n; n++) {
        int padding = slot_is_null(c, get_index(A->read_idx, c->index_dtype, n));
        for (int64_t e = 0; e < A->out_stride; e++) {
            int64_t i = n * A->out_stride + e;
            const unsigned char *bytes = A->out + (size_t)i * A->act_size;
            if (e >= hvv) { /* gap between rows: must still hold the poison */
                for (size_t b = 0; b < A->act_size; b++)
                    r->stray += bytes[b] != 0xff;
                continue;
            }
            double got = gdn_load_f64(A->out, c->act_dtype, i);
            if (padding) {
                r->bad_padding += got != 0.0;
                continue;
            }
            double ref = A->out64[i];
            if (isnan(got) && !isnan(ref)) {
                r->unwritten++;
                continue;
            }
            double d = fabs(got - ref);
            diff2 += d * d, ref2 += ref * ref;
            if (d > r->out_max_abs || isnan(d))
                r->out_max_abs = isnan(d) ? INFINITY : d;
            if (fabs(ref) > r->out_ref_max)
                r->out_ref_max = fabs(ref);
        }
    }
    r->out_rel = ref2 > 0 ? sqrt(diff2 / ref2) : sqrt(diff2);

    /* States: written tiles against the reference; every other byte unchanged. */
    unsigned char *written = calloc((size_t)A->slots, 1);
    for (int64_t n = 0; n < A->n; n++) {
        int64_t rd = get_index(A->read_idx, c->index_dtype, n);
        int64_t wr = c->write_slots ? get_index(A->write_idx, c->index_dtype, n) : rd;
        if (!slot_is_null(c, rd) && !slot_is_null(c, wr))
            written[wr] = 1;
    }
    double sd2 = 0, sr2 = 0, rd2 = 0;
    for (int64_t s = 0; s < A->slots; s++) {
        size_t lo = (size_t)(s * tile) * A->state_size, bytes = (size_t)tile * A->state_size;
        if (!written[s]) {
            r->stray += memcmp(A->pool + lo, A->pool_before + lo, bytes) != 0;
            continue;
        }
        for (int64_t i = s * tile; i < (s + 1) * tile; i++) {
            double got = gdn_load_f64(A->pool, c->state_dtype, i), ref = A->ref_pool[i];
            double rounded = A->rounded_pool[i];
            sd2 += (got - ref) * (got - ref), sr2 += ref * ref;
            rd2 += (rounded - ref) * (rounded - ref);
        }
    }
    free(written);
    r->state_rel = sr2 > 0 ? sqrt(sd2 / sr2) : sqrt(sd2);
    r->rounded_rel = sr2 > 0 ? sqrt(rd2 / sr2) : sqrt(rd2);
    if (isnan(r->state_rel))
        r->state_rel = INFINITY;

    double out_rel_limit = out_rel_tol(c->act_dtype);
    double state_limit = c->state_dtype == GDN_DTYPE_F32 ? 1e-5 : 2.0 * r->rounded_rel + 1e-6;
    if (c->state_dtype != GDN_DTYPE_F32) /* outputs inherit the state's storage error */
        out_rel_limit = fmax(out_rel_limit, 4.0 * r->rounded_rel);
    double abs_limit = fmax(out_abs_tol(c->act_dtype), out_rel_limit) * fmax(1.0, r->out_ref_max);
    if (r->unwritten)
        return fail(r, "%lld output elements were never written", (long long)r->unwritten);
    if (r->bad_padding)
        return fail(r, "%lld padding-row outputs are not zero", (long long)r->bad_padding);
    if (r->stray)
        return fail(r, "%lld bytes/tiles changed outside the rows and slots written", (long long)r->stray);
    if (!(r->out_rel <= out_rel_limit))
        return fail(r, "output rel error %.3g > %.3g", r->out_rel, out_rel_limit);
    if (!(r->out_max_abs <= abs_limit))
        return fail(r, "output max abs error %.3g > %.3g", r->out_max_abs, abs_limit);
    if (!(r->state_rel <= state_limit))
        return fail(r, "state rel error %.3g > %.3g (bf16 round trip of the reference: %.3g)", r->state_rel,
                    state_limit, r->rounded_rel);
    return 1;
}

static int run_step(const decode_case *c, gdn_backend backend, arrays *A, decode_case_result *r)
{
    memcpy(A->pool_before, A->pool, A->pool_bytes);
    memset(A->out, 0xff, A->out_bytes); /* NaN in every float dtype: unwritten outputs show */
    if (A->where == MEM_DEVICE &&
        (mem_upload(MEM_DEVICE, A->d_proj, A->proj, A->proj_bytes) || mem_upload(MEM_DEVICE, A->d_ab, A->ab, A->ab_bytes) ||
         mem_upload(MEM_DEVICE, A->d_out, A->out, A->out_bytes) ||
         mem_upload(MEM_DEVICE, A->d_read, A->read_idx, A->idx_bytes) ||
         mem_upload(MEM_DEVICE, A->d_write, A->write_idx, A->idx_bytes)))
        return fail(r, "upload failed: %s", mem_error());
    gdn_decode_params p = make_params(c, A, A->d_proj, A->d_ab, A->d_out, A->d_pool, A->d_read, A->d_write,
                                      A->d_A_log, A->d_dt_bias, c->act_dtype, c->state_dtype, backend);
    r->status = gdn_decode(&p);
    if (r->status != GDN_OK)
        return fail(r, "%s backend: %s: %s", gdn_backend_name(backend), gdn_status_string(r->status),
                    gdn_last_error());
    if (A->where == MEM_DEVICE &&
        (mem_sync(MEM_DEVICE) || mem_download(MEM_DEVICE, A->out, A->d_out, A->out_bytes) ||
         mem_download(MEM_DEVICE, A->pool, A->d_pool, A->pool_bytes)))
        return fail(r, "device run or download failed: %s", mem_error());

    gdn_decode_params ref = make_params(c, A, A->proj64, A->ab64, A->out64, A->ref_pool, A->read_idx,
                                        A->write_idx, A->A_log, A->dt_bias, GDN_DTYPE_F64, GDN_DTYPE_F64,
                                        GDN_BACKEND_REFERENCE);
    if (gdn_decode(&ref) != GDN_OK)
        return fail(r, "reference backend: %s", gdn_last_error());
    ref.state_pool = A->rounded_pool;
    ref.out = malloc((size_t)(A->n * A->out_stride) * sizeof(double));
    gdn_status s = gdn_decode(&ref);
    free(ref.out);
    if (s != GDN_OK)
        return fail(r, "reference backend (rounded pool): %s", gdn_last_error());
    int64_t *written = malloc((size_t)A->n * sizeof(int64_t)), count = 0;
    for (int64_t n = 0; n < A->n; n++) {
        int64_t rd = get_index(A->read_idx, c->index_dtype, n);
        int64_t wr = c->write_slots ? get_index(A->write_idx, c->index_dtype, n) : rd;
        if (!slot_is_null(c, rd) && !slot_is_null(c, wr))
            written[count++] = wr;
    }
    round_written(c, A, written, count);
    free(written);
    return check_step(c, A, r);
}

int decode_case_run(const decode_case *c, gdn_backend backend, int steps, decode_step_fn on_step, void *ctx,
                    decode_case_result *r)
{
    memset(r, 0, sizeof *r);
    r->pass = 1;
    arrays A;
    rng g = {c->seed};
    if (alloc_arrays(c, backend, &A, r)) {
        fill_inputs(c, &A, &g, 1);
        assign_slots(c, &A, &g);
        if (A.where == MEM_DEVICE &&
            (mem_upload(MEM_DEVICE, A.d_pool, A.pool, A.pool_bytes) ||
             mem_upload(MEM_DEVICE, A.d_A_log, A.A_log, (size_t)A.hv * 4) ||
             mem_upload(MEM_DEVICE, A.d_dt_bias, A.dt_bias, (size_t)A.hv * 4)))
            fail(r, "upload failed: %s", mem_error());
        for (int step = 0; r->pass && step < steps; step++) {
            if (step > 0) {
                fill_inputs(c, &A, &g, 0);
                if (c->write_slots) /* the state moved to the write slots: continue from there */
                    for (size_t i = 0; i < A.idx_bytes; i++) {
                        unsigned char t = A.read_idx[i];
                        A.read_idx[i] = A.write_idx[i], A.write_idx[i] = t;
                    }
            }
            run_step(c, backend, &A, r);
            if (on_step)
                on_step(step, r, ctx);
        }
    }
    free_arrays(&A);
    return r->pass;
}
