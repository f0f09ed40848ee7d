/*
 * Times llama.cpp's ggml_gated_delta_net (ggml CPU backend) on the decode step gdn's
 * `gdn bench --backend cpu` times, and a memcpy of the same state bytes on the same threads.
 *   ggml_gdn_bench H HV N THREADS REPS      prints CSV rows: shape-less, the caller labels them
 *   N,impl,median_us,gbps    impl: ggml | ggml-cached | memcpy (threads started once, spinning)
 * ggml and memcpy rotate through buffer sets of 64 MiB in all (at most 64 sets), the rule of
 * `gdn bench --backend cpu`, so that no call finds its state in the cache a recent call left it
 * in and both sides read the same level of memory; ggml-cached is the op on one set, every call
 * on the same tensors (the state then stays in cache up to its size).
 * What ggml's call includes: q and k taken as given (llama.cpp l2-normalises them in separate
 * ops), g (log decay) and beta precomputed (separate ops in llama.cpp), one token per sequence,
 * the state read from one tensor and the new state written into the op's output (out of place;
 * llama.cpp copies it back into its cache with another op). Built by build.sh, not committed.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml-cpu.h"
#include "ggml.h"

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *x, int n)
{
    qsort(x, (size_t)n, sizeof *x, cmp);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

static uint64_t rng_state = 88172645463325252ull;
static float uniform(void) /* in [-1, 1), never all zero */
{
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void fill(struct ggml_tensor *t, float scale, float offset)
{
    float *x = t->data;
    for (int64_t i = 0; i < ggml_nelements(t); i++)
        x[i] = offset + scale * uniform();
}

/*
 * The copy reference: memcpy of the state bytes split over `threads` threads (the caller's
 * included) that are started once and spin between copies, so that a copy pays no thread
 * creation and no sleeping wake-up: the most the same threads can move, the bar gdn's
 * bandwidth is held to. (Threads created per copy cost tens of microseconds a call and made the
 * reference look slow at small N.)
 */
static struct {
    pthread_t tid[64];
    int threads;
    unsigned long go; /* generation: a new copy for the workers */
    int done;         /* workers finished with the current copy */
    int quit;
    char *dst;
    const char *src;
    size_t bytes;
} copy_pool;

static void copy_part(int t)
{
    const size_t bytes = copy_pool.bytes, n = (size_t)copy_pool.threads;
    memcpy(copy_pool.dst + bytes * t / n, copy_pool.src + bytes * t / n, bytes * (t + 1) / n - bytes * t / n);
}

static void *copy_worker(void *arg)
{
    const int t = (int)(intptr_t)arg;
    unsigned long seen = 0;
    for (;;) {
        unsigned long go;
        while ((go = __atomic_load_n(&copy_pool.go, __ATOMIC_ACQUIRE)) == seen)
            __builtin_ia32_pause();
        seen = go;
        if (__atomic_load_n(&copy_pool.quit, __ATOMIC_ACQUIRE))
            return NULL;
        copy_part(t);
        __atomic_fetch_add(&copy_pool.done, 1, __ATOMIC_ACQ_REL);
    }
}

static void copy_start(int threads)
{
    copy_pool.threads = threads < 1 ? 1 : threads > 64 ? 64 : threads;
    for (int t = 1; t < copy_pool.threads; t++)
        pthread_create(&copy_pool.tid[t], NULL, copy_worker, (void *)(intptr_t)t);
}

static void copy_threads(char *dst, const char *src, size_t bytes)
{
    copy_pool.dst = dst, copy_pool.src = src, copy_pool.bytes = bytes;
    __atomic_store_n(&copy_pool.done, 0, __ATOMIC_RELAXED);
    __atomic_fetch_add(&copy_pool.go, 1, __ATOMIC_ACQ_REL);
    copy_part(0);
    while (__atomic_load_n(&copy_pool.done, __ATOMIC_ACQUIRE) < copy_pool.threads - 1)
        __builtin_ia32_pause();
}

static void copy_stop(void)
{
    __atomic_store_n(&copy_pool.quit, 1, __ATOMIC_RELEASE);
    __atomic_fetch_add(&copy_pool.go, 1, __ATOMIC_ACQ_REL);
    for (int t = 1; t < copy_pool.threads; t++)
        pthread_join(copy_pool.tid[t], NULL);
}

/* One ggml graph of the op with its own tensors (a buffer set). */
static struct ggml_cgraph *new_set(struct ggml_context *ctx, int64_t H, int64_t HV, int64_t N, int64_t S)
{
    struct ggml_tensor *q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, H, 1, N);
    struct ggml_tensor *k = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, H, 1, N);
    struct ggml_tensor *v = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, HV, 1, N);
    struct ggml_tensor *g = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 1, HV, 1, N);
    struct ggml_tensor *beta = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, 1, HV, 1, N);
    struct ggml_tensor *state = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, S, S, HV, N);
    fill(q, 0.088f, 0.0f), fill(k, 0.088f, 0.0f), fill(v, 1.0f, 0.0f);
    fill(g, 0.05f, -0.1f), fill(beta, 0.4f, 0.5f), fill(state, 0.05f, 0.0f);
    struct ggml_tensor *out = ggml_gated_delta_net(ctx, q, k, v, g, beta, state, 1);
    struct ggml_cgraph *graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(graph, out);
    return graph;
}

/* Median us of `reps` calls, call r on graph[r % count], after one call of each (warm-up). */
static double time_graphs(struct ggml_context *ctx, struct ggml_cgraph **graph, int count, int threads,
                          int reps, double *t)
{
    for (int i = 0; i < count; i++)
        ggml_graph_compute_with_ctx(ctx, graph[i], threads);
    for (int r = 0; r < reps; r++) {
        double t0 = now_us();
        ggml_graph_compute_with_ctx(ctx, graph[r % count], threads);
        t[r] = now_us() - t0;
    }
    return median(t, reps);
}

int main(int argc, char **argv)
{
    if (argc != 6)
        return fprintf(stderr, "usage: ggml_gdn_bench H HV N THREADS REPS\n"), 2;
    const int64_t H = atoll(argv[1]), HV = atoll(argv[2]), N = atoll(argv[3]), S = 128;
    const int threads = atoi(argv[4]), reps = atoi(argv[5]);
    const size_t state_bytes = (size_t)(S * S * HV * N) * sizeof(float);
    const size_t rotation = 64u << 20;
    int sets = (int)((rotation + state_bytes - 1) / state_bytes);
    sets = sets < 1 ? 1 : sets > 64 ? 64 : sets;
    const size_t per_set = 2 * state_bytes + (size_t)(N * (2 * H + 2 * HV + 3) * S) * sizeof(float) +
                           ggml_graph_overhead() + 16 * ggml_tensor_overhead() + 4096;
    const size_t mem = (size_t)sets * per_set + (64u << 20);
    struct ggml_init_params ip = {mem, NULL, false};
    struct ggml_context *ctx = ggml_init(ip);
    if (!ctx)
        return fprintf(stderr, "ggml_init(%zu bytes) failed\n", mem), 1;
    struct ggml_cgraph **set = malloc((size_t)sets * sizeof *set);
    for (int i = 0; i < sets; i++)
        set[i] = new_set(ctx, H, HV, N, S);
    double *t = malloc((size_t)reps * sizeof *t);
    const double us = time_graphs(ctx, set, sets, threads, reps, t);
    printf("%lld,ggml,%.3f,%.1f\n", (long long)N, us, 2.0 * state_bytes / (us * 1e3));
    const double cached = time_graphs(ctx, set, 1, threads, reps, t);
    printf("%lld,ggml-cached,%.3f,%.1f\n", (long long)N, cached, 2.0 * state_bytes / (cached * 1e3));
    /* the copy: sets pairs of buffers, one pair a call, as gdn bench's copy rotates */
    char **a = malloc((size_t)sets * sizeof *a), **b = malloc((size_t)sets * sizeof *b);
    for (int i = 0; i < sets; i++) {
        a[i] = malloc(state_bytes), b[i] = malloc(state_bytes);
        if (!a[i] || !b[i])
            return fprintf(stderr, "out of memory for the copy's buffers\n"), 1;
        memset(a[i], 1, state_bytes), memset(b[i], 2, state_bytes);
    }
    copy_start(threads);
    copy_threads(b[0], a[0], state_bytes); /* warm-up */
    for (int r = 0; r < reps; r++) {
        double t0 = now_us();
        copy_threads(b[r % sets], a[r % sets], state_bytes);
        t[r] = now_us() - t0;
    }
    copy_stop();
    const double cu = median(t, reps);
    printf("%lld,memcpy,%.3f,%.1f\n", (long long)N, cu, 2.0 * state_bytes / (cu * 1e3));
    for (int i = 0; i < sets; i++)
        free(a[i]), free(b[i]);
    free(a), free(b), free(t), free(set);
    ggml_free(ctx);
    return 0;
}
