#include "decode_case.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/common/numeric.h"
#include "../src/common/problem.h"
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

/* One index array on both sides. */
typedef struct index_array {
    unsigned char *host;
    void *dev;
    int64_t count;
} index_array;

/* Host and backend copies of every tensor of one case. */
typedef struct arrays {
    int64_t n, t, h, hv, kd, vd, slots, rows;  /* rows: token rows of the activations */
    int64_t slot_stride, pool_offset;          /* the pool view: slot s at offset + s * stride */
    int64_t qkv_stride, ab_stride, out_stride; /* elements between token rows */
    size_t act_size, state_size, idx_size;
    size_t proj_bytes, ab_bytes, out_bytes, pool_bytes;
    /* host, in the backend's dtypes */
    unsigned char *proj, *ab, *out, *pool, *pool_before;
    float *A_log, *dt_bias;
    float *g;          /* gates_given: g [rows, HV] */
    uint8_t *has_init; /* zero_init: has_initial_state [N] */
    index_array read, write, cu, tokens, accepted;
    /* host, float64 copies for the reference */
    double *proj64, *ab64, *out64, *ref_pool, *rounded_pool;
    /* backend side (== host pointers on host backends) */
    mem_where where;
    void *d_proj, *d_ab, *d_out, *d_pool, *d_A_log, *d_dt_bias, *d_g, *d_has_init;
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
    char tokens[64] = "";
    if (c->num_tokens > 1)
        snprintf(tokens, sizeof tokens, " T=%lld%s%s%s", (long long)c->num_tokens, c->varlen ? " varlen" : "",
                 c->token_slots ? " tslots" : "", c->accepted ? " accepted" : "");
    if (c->zero_init || c->gates_given)
        snprintf(tokens + strlen(tokens), sizeof tokens - strlen(tokens), "%s%s",
                 c->zero_init ? " zero-init" : "", c->gates_given ? " g-beta" : "");
    snprintf(buf, size, "%s N=%lld H=%lld HV=%lld K=%lld V=%lld act=%s state=%s %s %s %s%s%s%s%s%s%s%s",
             c->name ? c->name : "case", (long long)c->num_seqs, (long long)c->num_q_heads,
             (long long)c->num_v_heads, (long long)c->head_dim_k, (long long)c->head_dim_v,
             gdn_dtype_name(c->act_dtype), gdn_dtype_name(c->state_dtype),
             c->layout == GDN_LAYOUT_VK ? "vk" : "kv", gdn_dtype_name(c->index_dtype),
             c->head_map == GDN_HEAD_MAP_TILED ? "tiled" : "grouped", c->qk_l2norm ? "" : " no-l2norm",
             c->padding ? " padding" : "", c->null_slot_zero ? " null0" : "", c->write_slots ? " wslots" : "",
             c->strided ? " strided" : "",
             c->slot_gap == 1   ? " gap-after"
             : c->slot_gap == 2 ? " gap-before"
             : c->slot_gap == 3 ? " gap-odd"
                                : "",
             tokens);
}

static int64_t get_index(const index_array *a, gdn_dtype dtype, int64_t i)
{
    return dtype == GDN_DTYPE_I32 ? ((const int32_t *)a->host)[i] : ((const int64_t *)a->host)[i];
}

static void set_index(index_array *a, gdn_dtype dtype, int64_t i, int64_t value)
{
    if (dtype == GDN_DTYPE_I32)
        ((int32_t *)a->host)[i] = (int32_t)value;
    else
        ((int64_t *)a->host)[i] = value;
}

static int slot_is_null(const decode_case *c, int64_t s) { return s < 0 || (c->null_slot_zero && s == 0); }

static int alloc_index(index_array *a, int64_t count, const arrays *A)
{
    a->count = count;
    a->host = calloc((size_t)(count > 0 ? count : 1), A->idx_size);
    if (!a->host)
        return 0;
    if (A->where == MEM_HOST) {
        a->dev = a->host;
        return 1;
    }
    a->dev = mem_alloc(MEM_DEVICE, (size_t)count * A->idx_size);
    return a->dev != NULL;
}

static void free_index(index_array *a, mem_where where)
{
    if (where == MEM_DEVICE)
        mem_free(MEM_DEVICE, a->dev);
    free(a->host);
}

static int upload_index(const index_array *a, const arrays *A)
{
    return A->where == MEM_HOST || a->count == 0 ||
           mem_upload(MEM_DEVICE, a->dev, a->host, (size_t)a->count * A->idx_size) == 0;
}

static void free_arrays(arrays *A)
{
    free(A->proj), free(A->ab), free(A->out), free(A->pool), free(A->pool_before);
    free(A->A_log), free(A->dt_bias), free(A->g), free(A->has_init);
    free(A->proj64), free(A->ab64), free(A->out64), free(A->ref_pool), free(A->rounded_pool);
    index_array *idx[] = {&A->read, &A->write, &A->cu, &A->tokens, &A->accepted};
    for (size_t i = 0; i < sizeof idx / sizeof idx[0]; i++)
        free_index(idx[i], A->where);
    if (A->where == MEM_DEVICE) {
        void *dev[] = {A->d_proj,  A->d_ab,      A->d_out, A->d_pool,
                       A->d_A_log, A->d_dt_bias, A->d_g,   A->d_has_init};
        for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
            mem_free(MEM_DEVICE, dev[i]);
    }
}

/* Draws a value of N(0, sigma^2), rounds it to dtype, and stores it in both copies. */
static void draw(rng *g, double sigma, void *typed, gdn_dtype dtype, double *wide, int64_t i)
{
    gdn_store_f64(typed, dtype, i, sigma * rng_normal(g));
    wide[i] = gdn_load_f64(typed, dtype, i);
}

/* Token counts (varlen: 0..T each, the first sequence T) and the row offsets. */
static void assign_tokens(const decode_case *c, arrays *A, rng *g)
{
    int64_t row = 0;
    for (int64_t n = 0; n < A->n; n++) {
        set_index(&A->cu, c->index_dtype, n, row);
        int64_t count = !c->varlen || n == 0 ? A->t : (int64_t)(rng_next(g) % (uint64_t)(A->t + 1));
        row += count;
    }
    set_index(&A->cu, c->index_dtype, A->n, row);
    A->rows = row;
}

static int alloc_arrays(const decode_case *c, gdn_backend backend, arrays *A, decode_case_result *r, rng *g)
{
    memset(A, 0, sizeof *A);
    A->n = c->num_seqs, A->t = c->num_tokens > 0 ? c->num_tokens : 1;
    A->h = c->num_q_heads, A->hv = c->num_v_heads, A->kd = c->head_dim_k, A->vd = c->head_dim_v;
    /* read slots, write slots, token slots, and two slots no row touches */
    A->slots = A->n + (c->write_slots ? A->n : 0) + (c->token_slots ? A->n * A->t : 0) + 2;
    A->act_size = gdn_dtype_size(c->act_dtype);
    A->state_size = gdn_dtype_size(c->state_dtype);
    A->idx_size = gdn_dtype_size(c->index_dtype);
    A->where = backend == GDN_BACKEND_CUDA ? MEM_DEVICE : MEM_HOST;
    if (!alloc_index(&A->cu, A->n + 1, A) || !alloc_index(&A->read, A->n, A) ||
        !alloc_index(&A->write, A->n, A) || !alloc_index(&A->tokens, A->n * A->t, A) ||
        !alloc_index(&A->accepted, A->n, A))
        return fail(r, "index allocation failed: %s", mem_error());
    assign_tokens(c, A, g);
    int64_t qk = A->h * A->kd, hvv = A->hv * A->vd, rows = A->rows > 0 ? A->rows : 1;
    A->qkv_stride = c->strided ? 2 * qk + hvv + 8 : 0;
    A->ab_stride = c->strided ? 2 * A->hv + 3 : 0;
    A->out_stride = c->strided ? hvv + 5 : hvv;
    int64_t proj_elems = c->strided ? rows * A->qkv_stride : rows * (2 * qk + hvv);
    int64_t ab_elems = c->strided ? rows * A->ab_stride : 2 * rows * A->hv;
    int64_t out_elems = rows * A->out_stride;
    const int64_t tile = A->hv * A->vd * A->kd, gap = c->slot_gap == 3 ? 3 : c->slot_gap ? A->vd * A->kd : 0;
    A->slot_stride = tile + gap;
    A->pool_offset = c->slot_gap == 2 ? gap : 0;
    int64_t pool_elems = A->slots * A->slot_stride; /* the storage, gaps included */
    A->proj_bytes = (size_t)proj_elems * A->act_size;
    A->ab_bytes = (size_t)ab_elems * A->act_size;
    A->out_bytes = (size_t)out_elems * A->act_size;
    A->pool_bytes = (size_t)pool_elems * A->state_size;
    A->proj = malloc(A->proj_bytes), A->ab = malloc(A->ab_bytes), A->out = malloc(A->out_bytes);
    A->pool = malloc(A->pool_bytes), A->pool_before = malloc(A->pool_bytes);
    A->A_log = malloc((size_t)A->hv * sizeof(float)), A->dt_bias = malloc((size_t)A->hv * sizeof(float));
    A->g = calloc((size_t)(rows * A->hv), sizeof(float)), A->has_init = calloc((size_t)(A->n + 1), 1);
    A->proj64 = malloc((size_t)proj_elems * sizeof(double)),
    A->ab64 = malloc((size_t)ab_elems * sizeof(double));
    A->out64 = malloc((size_t)out_elems * sizeof(double));
    A->ref_pool = malloc((size_t)pool_elems * sizeof(double));
    A->rounded_pool = malloc((size_t)pool_elems * sizeof(double));
    if (!A->proj || !A->ab || !A->out || !A->pool || !A->pool_before || !A->A_log || !A->dt_bias || !A->g ||
        !A->has_init || !A->proj64 || !A->ab64 || !A->out64 || !A->ref_pool || !A->rounded_pool)
        return fail(r, "host allocation failed (pool of %lld elements)", (long long)pool_elems);
    if (A->where == MEM_HOST) {
        A->d_proj = A->proj, A->d_ab = A->ab, A->d_out = A->out, A->d_pool = A->pool;
        A->d_A_log = A->A_log, A->d_dt_bias = A->dt_bias, A->d_g = A->g, A->d_has_init = A->has_init;
        return 1;
    }
    A->d_proj = mem_alloc(MEM_DEVICE, A->proj_bytes), A->d_ab = mem_alloc(MEM_DEVICE, A->ab_bytes);
    A->d_out = mem_alloc(MEM_DEVICE, A->out_bytes), A->d_pool = mem_alloc(MEM_DEVICE, A->pool_bytes);
    A->d_A_log = mem_alloc(MEM_DEVICE, (size_t)A->hv * 4),
    A->d_dt_bias = mem_alloc(MEM_DEVICE, (size_t)A->hv * 4);
    A->d_g = mem_alloc(MEM_DEVICE, (size_t)(rows * A->hv) * sizeof(float)),
    A->d_has_init = mem_alloc(MEM_DEVICE, (size_t)(A->n + 1));
    if (!A->d_proj || !A->d_ab || !A->d_out || !A->d_pool || !A->d_A_log || !A->d_dt_bias || !A->d_g ||
        !A->d_has_init)
        return fail(r, "device allocation failed: %s", mem_error());
    return 1;
}

/* Fresh activations for one step (and the gate parameters and pool on step 0). */
static void fill_inputs(const decode_case *c, arrays *A, rng *g, int first)
{
    int64_t proj_elems = (int64_t)(A->proj_bytes / A->act_size),
            ab_elems = (int64_t)(A->ab_bytes / A->act_size);
    const double sigma = c->unit_keys ? 1.0 / sqrt((double)A->kd) : 1.0;
    for (int64_t i = 0; i < proj_elems; i++)
        draw(g, sigma, A->proj, c->act_dtype, A->proj64, i);
    for (int64_t i = 0; i < ab_elems; i++)
        draw(g, 1.0, A->ab, c->act_dtype, A->ab64, i);
    for (int64_t n = 0; n < A->n; n++)
        A->has_init[n] = (uint8_t)(rng_next(g) % 2);
    if (first) {
        for (int64_t hv = 0; hv < A->hv; hv++) {
            A->A_log[hv] = c->strong_decay ? (float)log(20.0 + 40.0 * rng_uniform(g))
                                           : (float)log(1.0 + 15.0 * rng_uniform(g)); /* A in [1, 16] */
            double dt = c->strong_decay ? 0.5 + 1.5 * rng_uniform(g)
                                        : exp(log(1e-3) + (log(1e-1) - log(1e-3)) * rng_uniform(g));
            A->dt_bias[hv] = (float)(dt + log(-expm1(-dt))); /* softplus^-1(dt) */
        }
        int64_t pool_elems = (int64_t)(A->pool_bytes / A->state_size);
        for (int64_t i = 0; i < pool_elems; i++) {
            draw(g, 0.05, A->pool, c->state_dtype, A->ref_pool, i);
            A->rounded_pool[i] = A->ref_pool[i];
        }
    }
    if (!c->gates_given)
        return;
    /* g from the drawn a (float32, what a model's gate kernel would hand over); b's place holds
     * beta = sigmoid(b), rounded to the activation dtype, for both runs */
    for (int64_t row = 0; row < A->rows; row++)
        for (int64_t hv = 0; hv < A->hv; hv++) {
            int64_t a_at = c->strided ? row * A->ab_stride + hv : row * A->hv + hv;
            int64_t b_at = c->strided ? row * A->ab_stride + A->hv + hv : (A->rows + row) * A->hv + hv;
            A->g[row * A->hv + hv] = gdn_gate_log(A->A_log[hv], (float)A->ab64[a_at], A->dt_bias[hv]);
            gdn_store_f64(A->ab, c->act_dtype, b_at, 1.0 / (1.0 + exp(-A->ab64[b_at])));
            A->ab64[b_at] = gdn_load_f64(A->ab, c->act_dtype, b_at);
        }
}

static int64_t null_slot(const decode_case *c, int64_t n)
{
    return (c->null_slot_zero && n % 2 == 0) ? 0 : -1;
}

/* Slots: a random permutation of the usable slots; every third row is padding; every third
 * token's snapshot is not saved (except the one num_accepted starts from). */
static void assign_slots(const decode_case *c, arrays *A, rng *g)
{
    int64_t first = c->null_slot_zero ? 1 : 0, count = A->slots - first, next = 0;
    int64_t *perm = malloc((size_t)count * sizeof(int64_t));
    for (int64_t i = 0; i < count; i++)
        perm[i] = first + i;
    for (int64_t i = count - 1; i > 0; i--) {
        int64_t j = (int64_t)(rng_next(g) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int64_t n = 0; n < A->n; n++) {
        int padding = c->padding && n % 3 == 1;
        int64_t read = perm[next++], write = c->write_slots ? perm[next++] : read;
        int64_t accepted = 1 + (int64_t)(rng_next(g) % (uint64_t)A->t);
        for (int64_t t = 0; t < A->t; t++) {
            int64_t slot = c->token_slots ? perm[next++] : -1;
            if ((t % 3 == 1 && t != accepted - 1) || (padding && c->accepted))
                slot = null_slot(c, n);
            set_index(&A->tokens, c->index_dtype, n * A->t + t, c->token_slots ? slot : -1);
        }
        if (padding)
            read = write = null_slot(c, n);
        set_index(&A->read, c->index_dtype, n, read);
        set_index(&A->write, c->index_dtype, n, write);
        set_index(&A->accepted, c->index_dtype, n, accepted);
    }
    free(perm);
}

static int64_t seq_tokens(const decode_case *c, const arrays *A, int64_t n)
{
    return get_index(&A->cu, c->index_dtype, n + 1) - get_index(&A->cu, c->index_dtype, n);
}

static int64_t read_slot_of(const decode_case *c, const arrays *A, int64_t n)
{
    if (c->accepted)
        return get_index(&A->tokens, c->index_dtype,
                         n * A->t + get_index(&A->accepted, c->index_dtype, n) - 1);
    return get_index(&A->read, c->index_dtype, n);
}

/* Slots this step writes: snapshots (token slots) or the final write slot of each live row. */
static int64_t written_slots(const decode_case *c, const arrays *A, int64_t *out)
{
    int64_t count = 0;
    for (int64_t n = 0; n < A->n; n++) {
        if (slot_is_null(c, read_slot_of(c, A, n)))
            continue;
        int64_t tokens = seq_tokens(c, A, n);
        if (c->token_slots) {
            for (int64_t t = 0; t < tokens; t++) {
                int64_t s = get_index(&A->tokens, c->index_dtype, n * A->t + t);
                if (!slot_is_null(c, s))
                    out[count++] = s;
            }
        } else if (tokens > 0) {
            int64_t s = c->write_slots ? get_index(&A->write, c->index_dtype, n) : read_slot_of(c, A, n);
            if (!slot_is_null(c, s))
                out[count++] = s;
        }
    }
    return count;
}

static gdn_decode_params make_params(const decode_case *c, const arrays *A, void *proj, void *ab, void *out,
                                     void *pool, int device_side, const float *A_log, const float *dt_bias,
                                     gdn_dtype act, gdn_dtype state, gdn_backend backend)
{
    gdn_decode_params p;
    gdn_decode_params_init(&p);
    size_t es = gdn_dtype_size(act);
    int64_t qk = A->h * A->kd, rows = A->rows;
    p.num_seqs = A->n, p.num_q_heads = A->h, p.num_v_heads = A->hv, p.head_dim_k = A->kd,
    p.head_dim_v = A->vd;
    p.act_dtype = act;
    unsigned char *pb = proj, *abb = ab;
    if (c->strided) { /* one projection row per token: q | k | v | pad, and a | b | pad */
        p.q = pb, p.k = pb + (size_t)qk * es, p.v = pb + (size_t)(2 * qk) * es;
        p.q_stride = p.k_stride = p.v_stride = A->qkv_stride;
        p.a = abb, p.b = abb + (size_t)A->hv * es;
        p.a_stride = p.b_stride = A->ab_stride;
    } else { /* packed tensors one after another */
        p.q = pb, p.k = pb + (size_t)(rows * qk) * es, p.v = pb + (size_t)(2 * rows * qk) * es;
        p.a = abb, p.b = abb + (size_t)(rows * A->hv) * es;
    }
    p.out = out, p.out_stride = A->out_stride;
    p.A_log = A_log, p.dt_bias = dt_bias;
    p.qk_l2norm = c->qk_l2norm, p.head_map = c->head_map;
    p.state_pool = (unsigned char *)pool + (size_t)A->pool_offset * gdn_dtype_size(state);
    p.state_slot_stride = c->slot_gap ? A->slot_stride : 0;
    p.num_slots = A->slots, p.state_layout = c->layout, p.state_dtype = state;
    p.index_dtype = c->index_dtype, p.null_slot_zero = c->null_slot_zero;
    p.slot_indices = c->accepted ? NULL : device_side ? A->read.dev : A->read.host;
    p.write_slot_indices = !c->write_slots ? NULL : device_side ? A->write.dev : A->write.host;
    if (c->num_tokens > 1 || c->varlen || c->token_slots) {
        p.num_tokens = A->t;
        p.cu_seqlens = !c->varlen ? NULL : device_side ? A->cu.dev : A->cu.host;
        p.token_slots = !c->token_slots ? NULL : device_side ? A->tokens.dev : A->tokens.host;
        p.num_accepted = !c->accepted ? NULL : device_side ? A->accepted.dev : A->accepted.host;
    }
    if (c->varlen)
        p.total_tokens = A->rows;
    if (c->zero_init)
        p.has_initial_state = device_side ? A->d_has_init : A->has_init;
    if (c->gates_given) {
        p.g = device_side ? A->d_g : A->g, p.beta = p.b, p.beta_stride = p.b_stride;
        p.a = p.b = NULL, p.A_log = p.dt_bias = NULL, p.a_stride = p.b_stride = 0;
    }
    p.backend = backend;
    p.pdl = c->pdl;
    return p;
}

/* Storage element where slot s's tiles begin. */
static int64_t tile_start(const arrays *A, int64_t s) { return A->pool_offset + s * A->slot_stride; }

/* Rounds the written tiles of the rounded-reference pool to the state dtype (bf16 drift). */
static void round_written(const decode_case *c, arrays *A, const int64_t *written, int64_t count)
{
    int64_t tile = A->hv * A->vd * A->kd;
    for (int64_t w = 0; w < count; w++)
        for (int64_t i = tile_start(A, written[w]); i < tile_start(A, written[w]) + tile; i++) {
            unsigned char tmp[8];
            gdn_store_f64(tmp, c->state_dtype, 0, A->rounded_pool[i]);
            A->rounded_pool[i] = gdn_load_f64(tmp, c->state_dtype, 0);
        }
}

/* Outputs: every row of a live sequence written and close, padding rows zero, gaps intact. */
static void check_outputs(const decode_case *c, arrays *A, decode_case_result *r)
{
    int64_t hvv = A->hv * A->vd;
    double diff2 = 0, ref2 = 0;
    for (int64_t n = 0; n < A->n; n++) {
        int padding = slot_is_null(c, read_slot_of(c, A, n));
        int64_t first = get_index(&A->cu, c->index_dtype, n), tokens = seq_tokens(c, A, n);
        for (int64_t row = first; row < first + tokens; row++)
            for (int64_t e = 0; e < A->out_stride; e++) {
                int64_t i = row * A->out_stride + e;
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
}

/* States: written tiles against the reference; every other byte of the storage (unwritten
 * slots, and the gaps of a paged pool) unchanged. */
static void check_states(const decode_case *c, arrays *A, const int64_t *list, int64_t count,
                         decode_case_result *r)
{
    int64_t tile = A->hv * A->vd * A->kd, elems = (int64_t)(A->pool_bytes / A->state_size);
    unsigned char *written = calloc((size_t)elems, 1);
    double sd2 = 0, sr2 = 0, rd2 = 0;
    for (int64_t w = 0; w < count; w++) {
        if (written[tile_start(A, list[w])])
            continue; /* a slot listed twice */
        for (int64_t i = tile_start(A, list[w]); i < tile_start(A, list[w]) + tile; i++) {
            written[i] = 1;
            double got = gdn_load_f64(A->pool, c->state_dtype, i), ref = A->ref_pool[i];
            double rounded = A->rounded_pool[i];
            sd2 += (got - ref) * (got - ref), sr2 += ref * ref;
            rd2 += (rounded - ref) * (rounded - ref);
        }
    }
    for (int64_t i = 0; i < elems; i++)
        if (!written[i])
            r->stray += memcmp(A->pool + (size_t)i * A->state_size,
                               A->pool_before + (size_t)i * A->state_size, A->state_size) != 0;
    free(written);
    r->state_rel = sr2 > 0 ? sqrt(sd2 / sr2) : sqrt(sd2);
    r->rounded_rel = sr2 > 0 ? sqrt(rd2 / sr2) : sqrt(rd2);
    if (isnan(r->state_rel))
        r->state_rel = INFINITY;
}

static int verdict(const decode_case *c, decode_case_result *r)
{
    double out_rel_limit = out_rel_tol(c->act_dtype);
    double state_limit = c->state_dtype == GDN_DTYPE_F32 ? 1e-5 : 2.0 * r->rounded_rel + 1e-6;
    if (c->state_dtype != GDN_DTYPE_F32) /* outputs inherit the state's storage error */
        out_rel_limit = fmax(out_rel_limit, 4.0 * r->rounded_rel);
    if (c->tc_products == 1) {
        out_rel_limit = fmax(out_rel_limit, GDN_TC_OUT_REL);
        state_limit = fmax(state_limit, GDN_TC_STATE_REL);
    } else if (c->tc_products == 3) {
        state_limit = fmax(state_limit, GDN_TC3_STATE_REL);
    }
    double abs_limit = fmax(out_abs_tol(c->act_dtype), out_rel_limit) * fmax(1.0, r->out_ref_max);
    if (r->unwritten)
        return fail(r, "%lld output elements were never written", (long long)r->unwritten);
    if (r->bad_padding)
        return fail(r, "%lld padding-row outputs are not zero", (long long)r->bad_padding);
    if (r->stray)
        return fail(r, "%lld elements changed outside the rows and slots written", (long long)r->stray);
    if (!(r->out_rel <= out_rel_limit))
        return fail(r, "output rel error %.3g > %.3g", r->out_rel, out_rel_limit);
    if (!(r->out_max_abs <= abs_limit))
        return fail(r, "output max abs error %.3g > %.3g", r->out_max_abs, abs_limit);
    if (!(r->state_rel <= state_limit))
        return fail(r, "state rel error %.3g > %.3g (round trip of the reference to the state dtype: %.3g)",
                    r->state_rel, state_limit, r->rounded_rel);
    return 1;
}

static int upload_step(arrays *A)
{
    if (A->where == MEM_HOST)
        return 1;
    return mem_upload(MEM_DEVICE, A->d_proj, A->proj, A->proj_bytes) == 0 &&
           mem_upload(MEM_DEVICE, A->d_ab, A->ab, A->ab_bytes) == 0 &&
           mem_upload(MEM_DEVICE, A->d_out, A->out, A->out_bytes) == 0 &&
           mem_upload(MEM_DEVICE, A->d_g, A->g, (size_t)(A->rows * A->hv) * sizeof(float)) == 0 &&
           mem_upload(MEM_DEVICE, A->d_has_init, A->has_init, (size_t)(A->n + 1)) == 0 &&
           upload_index(&A->read, A) && upload_index(&A->write, A) && upload_index(&A->cu, A) &&
           upload_index(&A->tokens, A) && upload_index(&A->accepted, A);
}

static int run_step(const decode_case *c, gdn_backend backend, arrays *A, decode_case_result *r)
{
    memcpy(A->pool_before, A->pool, A->pool_bytes);
    memset(A->out, 0xff, A->out_bytes); /* NaN in every float dtype: unwritten outputs show */
    if (!upload_step(A))
        return fail(r, "upload failed: %s", mem_error());
    gdn_decode_params p = make_params(c, A, A->d_proj, A->d_ab, A->d_out, A->d_pool, 1, A->d_A_log,
                                      A->d_dt_bias, c->act_dtype, c->state_dtype, backend);
    void *workspace = NULL;
    if (c->workspace && A->where == MEM_DEVICE) {
        size_t bytes = 0;
        if (gdn_decode_workspace_size(&p, &bytes) != GDN_OK)
            return fail(r, "gdn_decode_workspace_size: %s", gdn_last_error());
        if (bytes > 0) {
            unsigned char *poison = malloc(bytes + 16);
            workspace = mem_alloc(MEM_DEVICE, bytes + 16); /* (room for the misaligned case) */
            if (!poison || !workspace) {
                free(poison);
                mem_free(MEM_DEVICE, workspace);
                return fail(r, "no memory for a workspace of %zu bytes", bytes);
            }
            memset(poison, 0xff, bytes + 16);
            const int up = mem_upload(MEM_DEVICE, workspace, poison, bytes + 16);
            free(poison);
            if (up != 0) {
                mem_free(MEM_DEVICE, workspace);
                return fail(r, "upload failed: %s", mem_error());
            }
            p.workspace = workspace, p.workspace_bytes = bytes;
            if (c->workspace == 2) /* 16 bytes short */
                p.workspace_bytes = bytes - 16;
            if (c->workspace == 3) /* off 16-byte alignment */
                p.workspace = (unsigned char *)workspace + 8;
        }
    }
    r->status = gdn_decode(&p);
    if (workspace) {
        mem_sync(MEM_DEVICE);
        mem_free(MEM_DEVICE, workspace);
    }
    if (c->workspace >= 2 && A->where == MEM_DEVICE) {
        /* the call must be refused and write nothing */
        const gdn_status want = c->workspace == 2 ? GDN_ERR_INVALID_ARGUMENT : GDN_ERR_MISALIGNED;
        if (r->status != want)
            return fail(r, "a bad workspace gave %s, want %s", gdn_status_string(r->status),
                        gdn_status_string(want));
        unsigned char *out_after = malloc(A->out_bytes), *pool_after = malloc(A->pool_bytes);
        int same = out_after && pool_after && mem_sync(MEM_DEVICE) == 0 &&
                   mem_download(MEM_DEVICE, out_after, A->d_out, A->out_bytes) == 0 &&
                   mem_download(MEM_DEVICE, pool_after, A->d_pool, A->pool_bytes) == 0 &&
                   memcmp(out_after, A->out, A->out_bytes) == 0 &&
                   memcmp(pool_after, A->pool_before, A->pool_bytes) == 0;
        free(out_after);
        free(pool_after);
        if (!same)
            return fail(r, "a call refused for its workspace wrote to out or the pool");
        r->status = GDN_OK;
        return 1;
    }
    if (r->status != GDN_OK)
        return fail(r, "%s backend: %s: %s", gdn_backend_name(backend), gdn_status_string(r->status),
                    gdn_last_error());
    if (A->where == MEM_DEVICE &&
        (mem_sync(MEM_DEVICE) || mem_download(MEM_DEVICE, A->out, A->d_out, A->out_bytes) ||
         mem_download(MEM_DEVICE, A->pool, A->d_pool, A->pool_bytes)))
        return fail(r, "device run or download failed: %s", mem_error());

    gdn_decode_params ref = make_params(c, A, A->proj64, A->ab64, A->out64, A->ref_pool, 0, A->A_log,
                                        A->dt_bias, GDN_DTYPE_F64, GDN_DTYPE_F64, GDN_BACKEND_REFERENCE);
    if (gdn_decode(&ref) != GDN_OK)
        return fail(r, "reference backend: %s", gdn_last_error());
    ref.state_pool = A->rounded_pool;
    ref.out = malloc((A->out_bytes / A->act_size) * sizeof(double));
    gdn_status s = gdn_decode(&ref);
    free(ref.out);
    if (s != GDN_OK)
        return fail(r, "reference backend (rounded pool): %s", gdn_last_error());
    int64_t *written = malloc((size_t)(A->n * A->t + 1) * sizeof(int64_t));
    int64_t count = written_slots(c, A, written);
    round_written(c, A, written, count);
    r->out_max_abs = r->out_ref_max = 0;
    r->unwritten = r->bad_padding = r->stray = 0;
    check_outputs(c, A, r);
    check_states(c, A, written, count, r);
    free(written);
    return verdict(c, r);
}

/* Between steps: the states moved (to the write slots, or into snapshots) and the next step
 * continues from there. */
static void advance_slots(const decode_case *c, arrays *A, rng *g)
{
    if (c->write_slots)
        for (size_t i = 0; i < (size_t)A->n * A->idx_size; i++) {
            unsigned char t = A->read.host[i];
            A->read.host[i] = A->write.host[i], A->write.host[i] = t;
        }
    if (c->accepted) /* accept a random saved token of the previous step */
        for (int64_t n = 0; n < A->n; n++)
            for (int tries = 0; tries < 8; tries++) {
                int64_t t = (int64_t)(rng_next(g) % (uint64_t)A->t);
                if (!slot_is_null(c, get_index(&A->tokens, c->index_dtype, n * A->t + t))) {
                    set_index(&A->accepted, c->index_dtype, n, t + 1);
                    break;
                }
            }
}

int decode_case_run(const decode_case *spec, gdn_backend backend, int steps, decode_step_fn on_step,
                    void *ctx, decode_case_result *r)
{
    decode_case normalised = *spec, *c = &normalised;
    if (c->token_slots) /* states go to the token slots only: no separate write slots */
        c->write_slots = 0;
    if (!c->token_slots)
        c->accepted = 0;
    memset(r, 0, sizeof *r);
    r->pass = 1;
    arrays A;
    rng g = {c->seed};
    if (alloc_arrays(c, backend, &A, r, &g)) {
        fill_inputs(c, &A, &g, 1);
        assign_slots(c, &A, &g);
        if (A.where == MEM_DEVICE && (mem_upload(MEM_DEVICE, A.d_pool, A.pool, A.pool_bytes) ||
                                      mem_upload(MEM_DEVICE, A.d_A_log, A.A_log, (size_t)A.hv * 4) ||
                                      mem_upload(MEM_DEVICE, A.d_dt_bias, A.dt_bias, (size_t)A.hv * 4)))
            fail(r, "upload failed: %s", mem_error());
        for (int step = 0; r->pass && step < steps; step++) {
            if (step > 0) {
                fill_inputs(c, &A, &g, 0);
                advance_slots(c, &A, &g);
            }
            run_step(c, backend, &A, r);
            if (on_step)
                on_step(step, r, ctx);
        }
    }
    free_arrays(&A);
    return r->pass;
}
