/*
 * The cpu backend's one-token decode with the state in cache: the same call repeated on one
 * set of buffers (no rotation), so that with N = 1 and one thread the 1 MiB bf16 (2 MiB f32)
 * qwen3-next state stays in L2 and the time is the row kernel's instruction cost, apart from
 * the memory system that `gdn bench` measures. Prints one CSV line:
 *   state_dtype,N,threads,best_us_per_call,ns_per_row_per_thread
 * (best of 30 batches of 20 calls). Built and run by bench/cpu_rows_l2.sh.
 *   cpu_rows_l2 N f32|bf16 THREADS
 */
#include <gdn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static float uniform(uint64_t *s) /* [-0.5, 0.5) */
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)(*s >> 40) / (float)(1 << 24) - 0.5f;
}

static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: cpu_rows_l2 N f32|bf16 THREADS\n");
        return 2;
    }
    const int n = atoi(argv[1]), bf16 = !strcmp(argv[2], "bf16"), threads = atoi(argv[3]);
    const int H = 16, HV = 32, K = 128, V = 128;
    const size_t elements = (size_t)n * HV * V * K;
    void *pool = malloc(elements * 4);
    float *q = malloc((size_t)n * H * K * 4), *k = malloc((size_t)n * H * K * 4);
    float *v = malloc((size_t)n * HV * V * 4), *out = malloc((size_t)n * HV * V * 4);
    float *a = malloc((size_t)n * HV * 4), *b = malloc((size_t)n * HV * 4);
    float A_log[32], dt_bias[32];
    int64_t *slots = malloc((size_t)n * sizeof(int64_t));
    uint64_t s = 1;
    for (size_t i = 0; i < elements; i++) {
        const float x = 0.1f * uniform(&s);
        if (bf16)
            ((uint16_t *)pool)[i] = to_bf16(x);
        else
            ((float *)pool)[i] = x;
    }
    for (int i = 0; i < n * H * K; i++)
        q[i] = uniform(&s), k[i] = uniform(&s);
    for (int i = 0; i < n * HV * V; i++)
        v[i] = uniform(&s);
    for (int i = 0; i < n * HV; i++)
        a[i] = 0.1f, b[i] = 0.2f;
    for (int i = 0; i < HV; i++)
        A_log[i] = 0.5f, dt_bias[i] = -1.0f;
    for (int i = 0; i < n; i++)
        slots[i] = i;
    gdn_decode_params p;
    gdn_decode_params_init(&p);
    p.num_seqs = n, p.num_q_heads = H, p.num_v_heads = HV, p.head_dim_k = K, p.head_dim_v = V;
    p.act_dtype = GDN_DTYPE_F32, p.state_dtype = bf16 ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
    p.q = q, p.k = k, p.v = v, p.a = a, p.b = b, p.out = out, p.A_log = A_log, p.dt_bias = dt_bias;
    p.state_pool = pool, p.num_slots = n, p.slot_indices = slots;
    p.backend = GDN_BACKEND_CPU, p.num_threads = threads;
    double best = 1e30;
    for (int r = 0; r < 30; r++) {
        const double t0 = now_ns();
        for (int c = 0; c < 20; c++)
            if (gdn_decode(&p) != GDN_OK) {
                fprintf(stderr, "cpu_rows_l2: %s\n", gdn_last_error());
                return 1;
            }
        const double t = (now_ns() - t0) / 20;
        best = t < best ? t : best;
    }
    printf("%s,%d,%d,%.1f,%.2f\n", bf16 ? "bf16" : "f32", n, threads, best / 1e3,
           best / ((double)n * HV * V / threads));
    return 0;
}
