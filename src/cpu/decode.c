/*
 * cpu backend: decode in float32 on host threads.
 *
 * Work item = one (sequence, value head) pair: its state tile (V x K) is independent of every
 * other, so items are split into contiguous ranges, one per thread, with no synchronisation
 * but the final join. Threads are started per call (no pool, hence no global state); calls
 * too small to repay a thread start run on the caller's thread.
 *
 * Per item, the old state is read once and the new one written once: both dot products a row
 * needs (S k and S q) come from the old row, since o = S' q = exp(g) (S q) + u (k . q). The
 * inner loops are plain unit-stride float loops that the compiler vectorises.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/numeric.h"
#include "../core/backends.h"

/* Below this many state elements per thread a thread start (~20 us) costs more than it saves. */
#define MIN_ELEMENTS_PER_THREAD (1 << 18)
#define MAX_THREADS 256

typedef struct head_inputs {
    float q[GDN_HOST_MAX_HEAD_DIM], k[GDN_HOST_MAX_HEAD_DIM], v[GDN_HOST_MAX_HEAD_DIM];
    float decay, beta, kq; /* exp(g), sigmoid(b), k . q */
} head_inputs;

static float dot(const float *restrict x, const float *restrict y, int64_t n)
{
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++)
        s += x[i] * y[i];
    return s;
}

static void l2_normalise(float *x, int64_t n)
{
    float inv = 1.0f / sqrtf(dot(x, x, n) + GDN_L2NORM_EPS);
    for (int64_t i = 0; i < n; i++)
        x[i] *= inv;
}

static void load_head_inputs(const gdn_problem *p, int64_t n, int64_t hv, head_inputs *in)
{
    int64_t K = p->head_dim_k, V = p->head_dim_v, h = gdn_qk_head(p, hv);
    gdn_load_row_f32(p->q, p->act_dtype, n * p->q_stride + h * K, K, in->q);
    gdn_load_row_f32(p->k, p->act_dtype, n * p->k_stride + h * K, K, in->k);
    gdn_load_row_f32(p->v, p->act_dtype, n * p->v_stride + hv * V, V, in->v);
    if (p->qk_l2norm) {
        l2_normalise(in->q, K);
        l2_normalise(in->k, K);
    }
    for (int64_t i = 0; i < K; i++)
        in->q[i] *= p->scale;
    float a = (float)gdn_load_f64(p->a, p->act_dtype, n * p->a_stride + hv);
    float b = (float)gdn_load_f64(p->b, p->act_dtype, n * p->b_stride + hv);
    in->decay = expf(gdn_gate_log(p->A_log[hv], a, p->dt_bias[hv]));
    in->beta = gdn_sigmoid(b);
    in->kq = dot(in->k, in->q, K);
}

/* vk tile: row j is value channel j, K contiguous floats. */
static void update_tile_vk(const gdn_problem *p, const head_inputs *in, int64_t src, int64_t dst,
                           float *out)
{
    int64_t K = p->head_dim_k, V = p->head_dim_v;
    float row[GDN_HOST_MAX_HEAD_DIM], next[GDN_HOST_MAX_HEAD_DIM];
    for (int64_t j = 0; j < V; j++) {
        gdn_load_row_f32(p->state_pool, p->state_dtype, src + j * K, K, row);
        float sk = dot(row, in->k, K), sq = dot(row, in->q, K);
        float u = in->beta * (in->v[j] - in->decay * sk);
        out[j] = in->decay * sq + u * in->kq;
        if (dst < 0)
            continue;
        for (int64_t i = 0; i < K; i++)
            next[i] = in->decay * row[i] + u * in->k[i];
        gdn_store_row_f32(p->state_pool, p->state_dtype, dst + j * K, K, next);
    }
}

/* kv tile: row i is key channel i, V contiguous floats; two passes, both unit stride. */
static void update_tile_kv(const gdn_problem *p, const head_inputs *in, int64_t src, int64_t dst,
                           float *out)
{
    int64_t K = p->head_dim_k, V = p->head_dim_v;
    float row[GDN_HOST_MAX_HEAD_DIM], sk[GDN_HOST_MAX_HEAD_DIM], sq[GDN_HOST_MAX_HEAD_DIM];
    float u[GDN_HOST_MAX_HEAD_DIM];
    memset(sk, 0, (size_t)V * sizeof(float));
    memset(sq, 0, (size_t)V * sizeof(float));
    for (int64_t i = 0; i < K; i++) {
        gdn_load_row_f32(p->state_pool, p->state_dtype, src + i * V, V, row);
        float ki = in->k[i], qi = in->q[i];
        for (int64_t j = 0; j < V; j++) {
            sk[j] += row[j] * ki;
            sq[j] += row[j] * qi;
        }
    }
    for (int64_t j = 0; j < V; j++) {
        u[j] = in->beta * (in->v[j] - in->decay * sk[j]);
        out[j] = in->decay * sq[j] + u[j] * in->kq;
    }
    if (dst < 0)
        return;
    for (int64_t i = 0; i < K; i++) {
        gdn_load_row_f32(p->state_pool, p->state_dtype, src + i * V, V, row);
        float ki = in->k[i];
        for (int64_t j = 0; j < V; j++)
            row[j] = in->decay * row[j] + ki * u[j];
        gdn_store_row_f32(p->state_pool, p->state_dtype, dst + i * V, V, row);
    }
}

static void decode_item(const gdn_problem *p, int64_t item, head_inputs *in)
{
    int64_t n = item / p->num_v_heads, hv = item % p->num_v_heads, V = p->head_dim_v;
    int64_t out_at = n * p->out_stride + hv * V;
    float out[GDN_HOST_MAX_HEAD_DIM];
    int64_t read = gdn_read_slot(p, n);
    if (read < 0) {
        memset(out, 0, (size_t)V * sizeof(float));
    } else {
        int64_t write = gdn_write_slot(p, n);
        int64_t src = gdn_tile_offset(p, read, hv), dst = write < 0 ? -1 : gdn_tile_offset(p, write, hv);
        load_head_inputs(p, n, hv, in);
        if (p->state_layout == GDN_LAYOUT_VK)
            update_tile_vk(p, in, src, dst, out);
        else
            update_tile_kv(p, in, src, dst, out);
    }
    gdn_store_row_f32(p->out, p->act_dtype, out_at, V, out);
}

typedef struct item_range {
    const gdn_problem *p;
    int64_t begin, end;
} item_range;

static void *decode_range(void *arg)
{
    const item_range *r = arg;
    head_inputs in;
    for (int64_t item = r->begin; item < r->end; item++)
        decode_item(r->p, item, &in);
    return NULL;
}

static int default_threads(void)
{
    const char *env = getenv("GDN_NUM_THREADS");
    if (env && atoi(env) > 0)
        return atoi(env);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return cores > 0 ? (int)cores : 1;
}

gdn_status gdn_cpu_decode(const gdn_problem *p)
{
    int64_t items = p->num_seqs * p->num_v_heads;
    int64_t elements = items * p->head_dim_v * p->head_dim_k;
    int64_t threads = p->num_threads > 0 ? p->num_threads : default_threads();
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    if (threads > elements / MIN_ELEMENTS_PER_THREAD)
        threads = elements / MIN_ELEMENTS_PER_THREAD;
    if (threads > items)
        threads = items;
    if (threads <= 1) {
        item_range all = {p, 0, items};
        decode_range(&all);
        return GDN_OK;
    }
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    item_range ranges[MAX_THREADS];
    for (int64_t t = 0; t < threads; t++) {
        ranges[t] = (item_range){p, items * t / threads, items * (t + 1) / threads};
        if (t > 0)
            started[t] = pthread_create(&tid[t], NULL, decode_range, &ranges[t]) == 0;
    }
    /* Range 0 runs on the caller, and so does any range whose thread could not start. */
    for (int64_t t = 0; t < threads; t++)
        if (!started[t])
            decode_range(&ranges[t]);
    for (int64_t t = 1; t < threads; t++)
        if (started[t])
            pthread_join(tid[t], NULL);
    return GDN_OK;
}
