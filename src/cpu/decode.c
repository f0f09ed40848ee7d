/*
 * cpu backend: decode in float32 on host threads.
 *
 * Work item = one (sequence, value head) pair: its state tile (V x K) is independent of every
 * other, so items are split into contiguous ranges, one per thread, with no synchronisation
 * but the final join. The threads and their scratch are the persistent pool of thread_pool.c
 * (no creation, no allocation per call); a call that finds the pool busy (another host thread
 * is inside gdn_decode) starts threads of its own and allocates their scratch, before any
 * output is written. Calls too small to repay a wake-up run on the caller's thread.
 *
 * Per item, the state is read once, carried through the sequence's tokens, and written once
 * (plus once per saved snapshot): row by row in the vk layout, as a whole tile in the kv layout.
 * The inner loops are unit-stride float loops that the compiler vectorises.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/numeric.h"
#include "../core/backends.h"
#include "thread_pool.h"

/* Below this many state elements per thread, waking a thread costs more than it saves (a pool
 * thread wakes in a few microseconds; the 2^18 of the thread-per-call design was for ~20 us). */
#define MIN_ELEMENTS_PER_THREAD (1 << 16)
#define MAX_THREADS 256

/* The inputs of one (sequence, value head) for each of its tokens, prepared once. */
typedef struct head_inputs {
    float q[GDN_MAX_TOKENS][GDN_MAX_HEAD_DIM], k[GDN_MAX_TOKENS][GDN_MAX_HEAD_DIM];
    float v[GDN_MAX_TOKENS][GDN_MAX_HEAD_DIM], out[GDN_MAX_TOKENS][GDN_MAX_HEAD_DIM];
    float decay[GDN_MAX_TOKENS], beta[GDN_MAX_TOKENS], kq[GDN_MAX_TOKENS]; /* exp(g), sigmoid(b), k.q */
    int64_t snapshot[GDN_MAX_TOKENS]; /* tile offset that receives the state after token t, or -1 */
    float tile[GDN_MAX_HEAD_DIM * GDN_MAX_HEAD_DIM]; /* kv layout: the K x V tile, widened */
} head_inputs;

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

static void load_token_inputs(const gdn_problem *p, int64_t row, int64_t hv, int t, head_inputs *in)
{
    int64_t K = p->head_dim_k, V = p->head_dim_v, h = gdn_qk_head(p, hv);
    gdn_load_row_f32(p->q, p->act_dtype, row * p->q_stride + h * K, K, in->q[t]);
    gdn_load_row_f32(p->k, p->act_dtype, row * p->k_stride + h * K, K, in->k[t]);
    gdn_load_row_f32(p->v, p->act_dtype, row * p->v_stride + hv * V, V, in->v[t]);
    if (p->qk_l2norm) {
        l2_normalise(in->q[t], K);
        l2_normalise(in->k[t], K);
    }
    for (int64_t i = 0; i < K; i++)
        in->q[t][i] *= p->scale;
    float a = (float)gdn_load_f64(p->a, p->act_dtype, row * p->a_stride + hv);
    float b = (float)gdn_load_f64(p->b, p->act_dtype, row * p->b_stride + hv);
    in->decay[t] = expf(gdn_gate_log(p->A_log[hv], a, p->dt_bias[hv]));
    in->beta[t] = gdn_sigmoid(b);
    in->kq[t] = dot(in->k[t], in->q[t], K);
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
    for (int64_t j = 0; j < p->head_dim_v; j++) {
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

static void decode_item(const gdn_problem *p, int64_t item, head_inputs *in)
{
    int64_t n = item / p->num_v_heads, hv = item % p->num_v_heads, V = p->head_dim_v;
    int64_t first = gdn_first_token_row(p, n), tokens = gdn_seq_tokens(p, n);
    int64_t read = gdn_read_slot(p, n);
    if (tokens <= 0) /* a sequence without tokens this step: nothing to compute or move */
        return;
    if (read < 0) {
        memset(in->out, 0, sizeof in->out);
    } else {
        int64_t write = gdn_write_slot(p, n);
        for (int64_t t = 0; t < tokens; t++) {
            load_token_inputs(p, first + t, hv, (int)t, in);
            int64_t snap = p->token_slots ? gdn_token_slot(p, n, t) : -1;
            in->snapshot[t] = snap < 0 ? -1 : gdn_tile_offset(p, snap, hv);
        }
        int64_t src = gdn_tile_offset(p, read, hv), dst = write < 0 ? -1 : gdn_tile_offset(p, write, hv);
        if (p->state_layout == GDN_LAYOUT_KV)
            update_tile_kv(p, tokens, src, dst, in);
        else
            update_rows_vk(p, tokens, src, dst, in);
    }
    for (int64_t t = 0; t < tokens; t++)
        gdn_store_row_f32(p->out, p->act_dtype, (first + t) * p->out_stride + hv * V, V, in->out[t]);
}

typedef struct item_range {
    const gdn_problem *p;
    int64_t begin, end;
    head_inputs *scratch;
} item_range;

static void *decode_range(void *arg)
{
    const item_range *r = arg;
    for (int64_t item = r->begin; item < r->end; item++)
        decode_item(r->p, item, r->scratch);
    return NULL;
}

typedef struct pool_job {
    const gdn_problem *p;
    int64_t items;
} pool_job;

static void decode_part(void *ctx, int part, int parts, void *scratch)
{
    const pool_job *job = ctx;
    item_range r = {job->p, job->items * part / parts, job->items * (part + 1) / parts, scratch};
    decode_range(&r);
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
    int64_t elements = items * p->head_dim_v * p->head_dim_k * p->num_tokens;
    int64_t threads = p->num_threads > 0 ? p->num_threads : default_threads();
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    if (threads > elements / MIN_ELEMENTS_PER_THREAD)
        threads = elements / MIN_ELEMENTS_PER_THREAD;
    if (threads > items)
        threads = items;
    if (threads < 1)
        threads = 1;
    pool_job job = {p, items};
    if (gdn_pool_run(decode_part, &job, (int)threads, sizeof(head_inputs)) == 0)
        return GDN_OK;
    /* Per-thread scratch (~460 KiB each, too much for a caller's stack), taken before any work
     * so that running out of memory leaves every output untouched. */
    head_inputs *scratch = malloc((size_t)threads * sizeof *scratch);
    if (!scratch)
        return gdn_fail(GDN_ERR_INVALID_ARGUMENT, "cpu backend: out of host memory for %lld threads' scratch",
                        (long long)threads);
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    item_range ranges[MAX_THREADS];
    for (int64_t t = 0; t < threads; t++) {
        ranges[t] = (item_range){p, items * t / threads, items * (t + 1) / threads, &scratch[t]};
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
    free(scratch);
    return GDN_OK;
}
