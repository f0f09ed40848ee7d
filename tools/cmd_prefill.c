/*
 * gdn prefill: varlen prefill on the cpu backend, tokens per second (issue 12). For each case
 * (sequences x tokens) and shape it times, in interleaved rounds on the same buffers:
 *   chunks          one call, long sequences in chunks of 64 (the default from 64 tokens on)
 *   token-by-token  one call, long sequences token by token (in segments of GDN_MAX_TOKENS)
 *   calls           the same tokens as one decode call per token position (what an engine
 *                   without a prefill path does): `tokens` calls of N sequences, one token each
 * bf16 activations, f32 vk state, l2norm in the call, a, b gates; fresh random inputs.
 *   gdn prefill [--cases 1x4096,4x4096] [--shapes qwen3-next,contest] [--impls ...] [--rounds 3] [--csv]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../src/common/numeric.h"
#include "../src/core/backends.h"
#include "commands.h"
#include "rng.h"
#include "shapes.h"

typedef struct prefill_buffers {
    int64_t n, len, rows;
    const shape *s;
    uint16_t *q, *k, *v, *a, *b, *out;
    float *A_log, *dt_bias, *pool, *pool_start;
    int64_t *cu, *slots;
} prefill_buffers;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint16_t *random_bf16(rng *g, int64_t count, double sigma)
{
    uint16_t *x = malloc((size_t)count * sizeof *x);
    for (int64_t i = 0; x && i < count; i++)
        x[i] = gdn_f32_to_bf16((float)(sigma * rng_normal(g)));
    return x;
}

static int make_buffers(prefill_buffers *B, const shape *s, int64_t n, int64_t len, rng *g)
{
    memset(B, 0, sizeof *B);
    B->s = s, B->n = n, B->len = len, B->rows = n * len;
    const int64_t rows = B->rows, tile = s->hv * s->v * s->k;
    B->q = random_bf16(g, rows * s->h * s->k, 1.0), B->k = random_bf16(g, rows * s->h * s->k, 1.0);
    B->v = random_bf16(g, rows * s->hv * s->v, 1.0);
    B->a = random_bf16(g, rows * s->hv, 1.0), B->b = random_bf16(g, rows * s->hv, 1.0);
    B->out = malloc((size_t)(rows * s->hv * s->v) * sizeof *B->out);
    B->A_log = malloc((size_t)s->hv * sizeof(float)), B->dt_bias = malloc((size_t)s->hv * sizeof(float));
    B->pool = malloc((size_t)(n * tile) * sizeof(float)),
    B->pool_start = malloc((size_t)(n * tile) * sizeof(float));
    B->cu = malloc((size_t)(n + 1) * sizeof(int64_t)), B->slots = malloc((size_t)n * sizeof(int64_t));
    if (!B->q || !B->k || !B->v || !B->a || !B->b || !B->out || !B->A_log || !B->dt_bias || !B->pool ||
        !B->pool_start || !B->cu || !B->slots)
        return -1;
    for (int64_t h = 0; h < s->hv; h++)
        B->A_log[h] = (float)log(1.0 + 15.0 * rng_uniform(g)), B->dt_bias[h] = (float)(-4.0 * rng_uniform(g));
    for (int64_t i = 0; i < n * tile; i++)
        B->pool_start[i] = (float)(0.05 * rng_normal(g));
    for (int64_t i = 0; i <= n; i++)
        B->cu[i] = i * len;
    for (int64_t i = 0; i < n; i++)
        B->slots[i] = i;
    return 0;
}

static void free_buffers(prefill_buffers *B)
{
    void *all[] = {B->q,     B->k,       B->v,    B->a,          B->b,  B->out,
                   B->A_log, B->dt_bias, B->pool, B->pool_start, B->cu, B->slots};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i]);
}

static gdn_decode_params base_params(const prefill_buffers *B)
{
    gdn_decode_params p;
    gdn_decode_params_init(&p);
    const shape *s = B->s;
    p.num_seqs = B->n, p.num_q_heads = s->h, p.num_v_heads = s->hv, p.head_dim_k = s->k, p.head_dim_v = s->v;
    p.act_dtype = GDN_DTYPE_BF16, p.q = B->q, p.k = B->k, p.v = B->v, p.a = B->a, p.b = B->b, p.out = B->out;
    p.A_log = B->A_log, p.dt_bias = B->dt_bias;
    p.state_pool = B->pool, p.num_slots = B->n, p.slot_indices = B->slots;
    p.backend = GDN_BACKEND_CPU;
    return p;
}

/* One timed run of impl (0 chunks, 1 token by token, 2 a call per token); seconds, < 0 on error. */
static double run_impl(prefill_buffers *B, int impl)
{
    const shape *s = B->s;
    memcpy(B->pool, B->pool_start, (size_t)(B->n * s->hv * s->v * s->k) * sizeof(float));
    gdn_decode_params p = base_params(B);
    const double t0 = now_s();
    if (impl < 2) {
        gdn_cpu_force_prefill(impl == 0 ? 1 : 0);
        p.num_tokens = B->len, p.cu_seqlens = B->cu, p.total_tokens = B->rows;
        gdn_status st = gdn_decode(&p);
        gdn_cpu_force_prefill(-1);
        if (st != GDN_OK)
            return fprintf(stderr, "gdn prefill: %s\n", gdn_last_error()), -1.0;
    } else { /* token t of every sequence: rows n * len + t, i.e. row stride len */
        const int64_t qk = s->h * s->k, hvv = s->hv * s->v;
        p.q_stride = p.k_stride = B->len * qk, p.v_stride = p.out_stride = B->len * hvv;
        p.a_stride = p.b_stride = B->len * s->hv;
        for (int64_t t = 0; t < B->len; t++) {
            p.q = B->q + t * qk, p.k = B->k + t * qk, p.v = B->v + t * hvv, p.out = B->out + t * hvv;
            p.a = B->a + t * s->hv, p.b = B->b + t * s->hv;
            if (gdn_decode(&p) != GDN_OK)
                return fprintf(stderr, "gdn prefill: %s\n", gdn_last_error()), -1.0;
        }
    }
    return now_s() - t0;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

int cmd_prefill(int argc, char **argv)
{
    const char *cases = "1x4096,4x4096", *shapes = "qwen3-next,contest",
               *impls = "chunks,token-by-token,calls";
    int rounds = 3, csv = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--cases") && i + 1 < argc)
            cases = argv[++i];
        else if (!strcmp(argv[i], "--shapes") && i + 1 < argc)
            shapes = argv[++i];
        else if (!strcmp(argv[i], "--impls") && i + 1 < argc)
            impls = argv[++i];
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--csv"))
            csv = 1;
        else {
            printf("usage: gdn prefill [--cases NxLEN,...] [--shapes a,b] [--impls "
                   "chunks,token-by-token,calls]\n"
                   "                   [--rounds R] [--csv]\n");
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    if (rounds < 1 || rounds > 99)
        return fprintf(stderr, "gdn prefill: --rounds 1..99\n"), 2;
    static const char *names[] = {"chunks", "token-by-token", "calls"};
    printf(csv ? "shape,num_seqs,seq_tokens,total_tokens,impl,median_ms,tokens_per_s\n"
               : "gdn prefill: cpu backend (isa %s), bf16 activations, f32 vk state, %d interleaved rounds\n",
           gdn_cpu_isa_name(), rounds);
    rng g = {rng_fresh_seed()};
    char shape_list[256];
    snprintf(shape_list, sizeof shape_list, "%s", shapes);
    for (char *sn = strtok(shape_list, ","); sn; sn = strtok(NULL, ",")) {
        const shape *s = shape_find(sn);
        if (!s)
            return fprintf(stderr, "gdn prefill: unknown shape %s\n", sn), 2;
        for (const char *c = cases; *c;) {
            long long n = 0, len = 0;
            int used = 0;
            if (sscanf(c, "%lldx%lld%n", &n, &len, &used) != 2 || n < 1 || len < 1)
                return fprintf(stderr, "gdn prefill: bad case list %s\n", cases), 2;
            c += used + (c[used] == ',');
            prefill_buffers B;
            if (make_buffers(&B, s, n, len, &g) != 0) {
                free_buffers(&B);
                return fprintf(stderr, "gdn prefill: out of memory for %lldx%lld\n", n, len), 1;
            }
            double times[3][99];
            for (int r = 0; r < rounds; r++)
                for (int impl = 0; impl < 3; impl++)
                    if (strstr(impls, names[impl]) && (times[impl][r] = run_impl(&B, impl)) < 0)
                        return free_buffers(&B), 1;
            for (int impl = 0; impl < 3; impl++) {
                if (!strstr(impls, names[impl]))
                    continue;
                qsort(times[impl], (size_t)rounds, sizeof(double), cmp_double);
                const double med = times[impl][rounds / 2];
                if (csv)
                    printf("%s,%lld,%lld,%lld,%s,%.3f,%.0f\n", s->name, n, len, n * len, names[impl],
                           1e3 * med, (double)(n * len) / med);
                else
                    printf("%-12s %lldx%-6lld %-15s %10.1f ms %10.0f tokens/s\n", s->name, n, len,
                           names[impl], 1e3 * med, (double)(n * len) / med);
            }
            free_buffers(&B);
        }
    }
    return 0;
}
