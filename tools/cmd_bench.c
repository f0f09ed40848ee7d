/*
 * gdn bench: median time of one decode call and its state bandwidth, for a list of batch
 * sizes, beside a copy of the same bytes (SPEC 7). Buffers rotate so that the bytes touched
 * by consecutive calls exceed the L2 cache where memory allows; on the device, calls are
 * replayed from a CUDA graph.
 *
 * Bytes counted per call: the state read and written (2 * N * HV * V * K * size); the
 * activations are under 1% of that at K = V = 128 and are not counted.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/common/numeric.h"
#include "../src/core/backends.h"
#include "buffers.h"
#include "commands.h"
#include "rng.h"
#include "shapes.h"
#include "timing.h"

#define MAX_SETS 64
#define DEVICE_ROTATION_BYTES (256ull << 20) /* > 4x the L2 of an H100 or H200 */
#define HOST_ROTATION_BYTES (64ull << 20)

typedef struct bench_opts {
    gdn_backend backend;
    const shape *shp;
    gdn_dtype act, state;
    gdn_state_layout layout;
    long long ns[16];
    int n_count, csv, reps;
    int tokens, token_slots; /* multi-token decode: T tokens per sequence, a snapshot per token */
    gdn_cuda_kernel kernel;  /* the cuda kernel the calls run (one- or multi-token) */
    int configs[16];         /* its configurations to time (-1: the library's choice) */
    int config_count;
    int pdl;   /* programmatic dependent launch flag of the timed calls */
    int paged; /* pool slots (HV+1)*V*K elements apart, as vLLM's hybrid page lays them out */
} bench_opts;

typedef struct bench_set {
    void *q, *k, *v, *a, *b, *out, *pool, *slots, *token_slots;
} bench_set;

typedef struct bench_ctx {
    gdn_decode_params params;
    bench_set sets[MAX_SETS];
    int count;
    mem_where where;
    size_t pool_bytes;    /* one set's pool: N slots, plus N*T snapshot slots with token slots */
    size_t traffic_bytes; /* state bytes one call reads plus writes */
    void *copy_scratch;   /* destination of the copy baseline when there is one set only */
} bench_ctx;

static void usage(void)
{
    printf("usage: gdn bench [--backend cpu|cuda] [--shape NAME] [--state f32|bf16] [--act f32|f16|bf16]\n"
           "                 [--layout vk|kv] [--n 1,4,16,64,256,1024] [--reps R] [--csv]\n"
           "                 [--tokens T [--token-slots]] [--configs C,C,...] [--pdl] [--paged]\n"
           "  --configs: time these configurations (-1 = the library's choice) of the cuda kernel\n"
           "  the call runs (one-token: 0..%d; multi-token: 0..%d) on the same buffers, impl\n"
           "  gdn-<name> (tuning)\n"
           "  --pdl: set gdn_decode_params.pdl in the timed calls\n"
           "  --paged: a paged pool, slots (HV+1)*V*K elements apart (state_slot_stride; impl gdn-paged)\n"
           "  --tokens T: multi-token decode, T tokens per sequence; --token-slots: the state after\n"
           "  every token saved to its own slot (bytes counted: N tiles read, N*T tiles written)\n"
           "  shapes:",
           gdn_cuda_config_count(GDN_CUDA_ONE_TOKEN) - 1, gdn_cuda_config_count(GDN_CUDA_MULTI_TOKEN) - 1);
    for (const shape *s = model_shapes; s->name; s++)
        printf(" %s", s->name);
    printf(" (default qwen3-next)\n");
}

static int parse(int argc, char **argv, bench_opts *o)
{
    const char *backend = NULL, *ns = "1,4,16,64,256,1024";
    memset(o, 0, sizeof *o);
    o->shp = shape_find("qwen3-next");
    o->act = GDN_DTYPE_BF16, o->state = GDN_DTYPE_F32, o->layout = GDN_LAYOUT_VK;
    o->tokens = 1;
    o->configs[0] = -1;
    o->config_count = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--backend") && next)
            backend = argv[++i];
        else if (!strcmp(a, "--shape") && next) {
            if (!(o->shp = shape_find(argv[++i])))
                return fprintf(stderr, "gdn bench: unknown shape %s\n", argv[i]), -1;
        } else if (!strcmp(a, "--state") && next) {
            if (parse_dtype(argv[++i], &o->state) != 0)
                return fprintf(stderr, "gdn bench: unknown dtype %s\n", argv[i]), -1;
        } else if (!strcmp(a, "--act") && next) {
            if (parse_dtype(argv[++i], &o->act) != 0)
                return fprintf(stderr, "gdn bench: unknown dtype %s\n", argv[i]), -1;
        } else if (!strcmp(a, "--layout") && next) {
            i++;
            o->layout = !strcmp(argv[i], "kv") ? GDN_LAYOUT_KV : GDN_LAYOUT_VK;
        } else if (!strcmp(a, "--n") && next)
            ns = argv[++i];
        else if (!strcmp(a, "--reps") && next)
            o->reps = atoi(argv[++i]);
        else if (!strcmp(a, "--tokens") && next)
            o->tokens = atoi(argv[++i]);
        else if (!strcmp(a, "--configs") && next) {
            o->config_count = 0;
            for (char *p = argv[++i]; *p && o->config_count < 16;) {
                char *end;
                long c = strtol(p, &end, 10);
                if (end == p || c < -1)
                    return fprintf(stderr, "gdn bench: bad --configs list\n"), -1;
                o->configs[o->config_count++] = (int)c;
                p = *end == ',' ? end + 1 : end;
            }
        } else if (!strcmp(a, "--pdl"))
            o->pdl = 1;
        else if (!strcmp(a, "--paged"))
            o->paged = 1;
        else if (!strcmp(a, "--token-slots"))
            o->token_slots = 1;
        else if (!strcmp(a, "--csv"))
            o->csv = 1;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return usage(), 1;
        else
            return fprintf(stderr, "gdn bench: unknown option %s\n", a), usage(), -1;
    }
    if (o->tokens < 1 || o->tokens > GDN_MAX_TOKENS)
        return fprintf(stderr, "gdn bench: --tokens must be 1..%d\n", GDN_MAX_TOKENS), -1;
    o->kernel = o->tokens > 1 || o->token_slots ? GDN_CUDA_MULTI_TOKEN : GDN_CUDA_ONE_TOKEN;
    for (int c = 0; c < o->config_count; c++)
        if (o->configs[c] >= gdn_cuda_config_count(o->kernel))
            return fprintf(stderr, "gdn bench: --configs: the %s kernel has configurations 0..%d\n",
                           o->kernel == GDN_CUDA_MULTI_TOKEN ? "multi-token" : "one-token",
                           gdn_cuda_config_count(o->kernel) - 1),
                   -1;
    for (const char *p = ns; *p && o->n_count < 16;) {
        char *end;
        long long n = strtoll(p, &end, 10);
        if (end == p || n <= 0)
            return fprintf(stderr, "gdn bench: bad --n list \"%s\"\n", ns), -1;
        o->ns[o->n_count++] = n;
        p = *end == ',' ? end + 1 : end;
    }
    return resolve_tool_backend(backend, &o->backend);
}

/* Random contents for a buffer of `count` elements of dtype, uploaded to where. */
static void *random_buffer(mem_where where, gdn_dtype dtype, size_t count, double sigma, rng *g)
{
    size_t bytes = count * gdn_dtype_size(dtype);
    unsigned char *host = malloc(bytes ? bytes : 1);
    if (!host)
        return NULL;
    /* Random blocks of up to 2^20 elements, repeated: timing needs non-zero, varied data, and
     * drawing gigabytes of normals would take longer than the benchmark. */
    size_t block = count < ((size_t)1 << 20) ? count : ((size_t)1 << 20), es = gdn_dtype_size(dtype);
    for (size_t i = 0; i < block; i++)
        gdn_store_f64(host, dtype, (int64_t)i, sigma * rng_normal(g));
    for (size_t i = block; i < count; i += block)
        memcpy(host + i * es, host, (count - i < block ? count - i : block) * es);
    void *buf = mem_alloc(where, bytes);
    if (buf && mem_upload(where, buf, host, bytes) != 0) {
        mem_free(where, buf);
        buf = NULL;
    }
    free(host);
    return buf;
}

static void free_sets(bench_ctx *b)
{
    for (int s = 0; s < b->count; s++) {
        void *bufs[] = {b->sets[s].q,    b->sets[s].k,     b->sets[s].v,
                        b->sets[s].a,    b->sets[s].b,     b->sets[s].out,
                        b->sets[s].pool, b->sets[s].slots, b->sets[s].token_slots};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            mem_free(b->where, bufs[i]);
    }
    mem_free(b->where, b->copy_scratch);
    b->copy_scratch = NULL;
    mem_free(b->where, (void *)b->params.A_log);
    mem_free(b->where, (void *)b->params.dt_bias);
    b->count = 0;
}

static int make_sets(const bench_opts *o, long long n, bench_ctx *b)
{
    const shape *s = o->shp;
    rng g = {rng_fresh_seed()};
    memset(b, 0, sizeof *b);
    b->where = o->backend == GDN_BACKEND_CUDA ? MEM_DEVICE : MEM_HOST;
    const long long T = o->tokens, slots = o->token_slots ? n * (T + 1) : n, rows = n * T;
    const size_t tile = (size_t)(s->hv * s->v * s->k) * gdn_dtype_size(o->state);
    const size_t slot_bytes = tile + (o->paged ? (size_t)(s->v * s->k) * gdn_dtype_size(o->state) : 0);
    b->pool_bytes = (size_t)slots * slot_bytes;
    b->traffic_bytes = (size_t)n * tile * (o->token_slots ? 1 + T : 2);
    size_t rotation = b->where == MEM_DEVICE ? DEVICE_ROTATION_BYTES : HOST_ROTATION_BYTES;
    int want = (int)((rotation + b->pool_bytes - 1) / b->pool_bytes);
    want = want < 1 ? 1 : want > MAX_SETS ? MAX_SETS : want;
    gdn_decode_params *p = &b->params;
    gdn_decode_params_init(p);
    p->num_seqs = n, p->num_q_heads = s->h, p->num_v_heads = s->hv, p->head_dim_k = s->k,
    p->head_dim_v = s->v;
    p->act_dtype = o->act, p->state_dtype = o->state, p->state_layout = o->layout;
    p->num_slots = slots, p->backend = o->backend;
    if (T > 1 || o->token_slots)
        p->num_tokens = T;
    p->pdl = o->pdl;
    p->state_slot_stride = o->paged ? (s->hv + 1) * s->v * s->k : 0;
    float *A_log = malloc((size_t)s->hv * 4), *dt_bias = malloc((size_t)s->hv * 4);
    for (int64_t h = 0; h < s->hv; h++)
        A_log[h] = (float)log(1.0 + 15.0 * rng_uniform(&g)), dt_bias[h] = (float)(-3.0 + rng_uniform(&g));
    p->A_log = mem_alloc(b->where, (size_t)s->hv * 4), p->dt_bias = mem_alloc(b->where, (size_t)s->hv * 4);
    int ok = p->A_log && p->dt_bias && !mem_upload(b->where, (void *)p->A_log, A_log, (size_t)s->hv * 4) &&
             !mem_upload(b->where, (void *)p->dt_bias, dt_bias, (size_t)s->hv * 4);
    free(A_log), free(dt_bias);
    int64_t *slot_of = malloc((size_t)n * sizeof(int64_t)),
            *token_slots = malloc((size_t)(n * T) * sizeof(int64_t));
    for (long long i = 0; i < n * T; i++) /* snapshot of token t of sequence i: slot n + i*T + t */
        token_slots[i] = n + i;
    for (long long i = 0; i < n; i++)
        slot_of[i] = i;
    for (long long i = n - 1; i > 0; i--) { /* engines hand permuted slots */
        long long j = (long long)(rng_next(&g) % (uint64_t)(i + 1));
        int64_t t = slot_of[i];
        slot_of[i] = slot_of[j], slot_of[j] = t;
    }
    for (int set = 0; ok && set < want; set++) {
        bench_set *bs = &b->sets[set];
        bs->q = random_buffer(b->where, o->act, (size_t)(rows * s->h * s->k), 1.0, &g);
        bs->k = random_buffer(b->where, o->act, (size_t)(rows * s->h * s->k), 1.0, &g);
        bs->v = random_buffer(b->where, o->act, (size_t)(rows * s->hv * s->v), 1.0, &g);
        bs->a = random_buffer(b->where, o->act, (size_t)(rows * s->hv), 1.0, &g);
        bs->b = random_buffer(b->where, o->act, (size_t)(rows * s->hv), 1.0, &g);
        bs->out = mem_alloc(b->where, (size_t)(rows * s->hv * s->v) * gdn_dtype_size(o->act));
        if (o->token_slots) {
            bs->token_slots = mem_alloc(b->where, (size_t)(n * T) * sizeof(int64_t));
            if (bs->token_slots &&
                mem_upload(b->where, bs->token_slots, token_slots, (size_t)(n * T) * 8) != 0)
                bs->token_slots = NULL;
        }
        bs->pool = random_buffer(b->where, o->state, b->pool_bytes / gdn_dtype_size(o->state), 0.05, &g);
        bs->slots = mem_alloc(b->where, (size_t)n * sizeof(int64_t));
        if (!bs->q || !bs->k || !bs->v || !bs->a || !bs->b || !bs->out || !bs->pool || !bs->slots ||
            (o->token_slots && !bs->token_slots) ||
            mem_upload(b->where, bs->slots, slot_of, (size_t)n * sizeof(int64_t)) != 0) {
            if (set == 0)
                ok = 0;
            b->count = set + 1;
            free_sets(b);
            b->count = set; /* keep what fit: fewer sets, still correct */
            break;
        }
        b->count = set + 1;
    }
    free(slot_of), free(token_slots);
    if (ok && b->count == 1 && !(b->copy_scratch = mem_alloc(b->where, b->pool_bytes)))
        ok = 0;
    return ok && b->count > 0 ? 0 : -1;
}

static int decode_call(void *ctx, long call, void *stream)
{
    bench_ctx *b = ctx;
    const bench_set *s = &b->sets[call % b->count];
    gdn_decode_params p = b->params;
    p.q = s->q, p.k = s->k, p.v = s->v, p.a = s->a, p.b = s->b, p.out = s->out;
    p.state_pool = s->pool, p.slot_indices = s->slots, p.token_slots = s->token_slots, p.stream = stream;
    gdn_status st = gdn_decode(&p);
    if (st != GDN_OK)
        fprintf(stderr, "gdn bench: %s: %s\n", gdn_status_string(st), gdn_last_error());
    return st != GDN_OK;
}

/* The copy baseline: the same bytes and rotation as decode_call. It writes the set half a
 * rotation ahead, so no call reads what a recent call wrote (that would be an L2 hit). The bytes
 * go in copies of at most COPY_CHUNK: on the H200 a cudaMemcpy of 512 MiB or more takes a path
 * a third slower than one of 256 MiB (../shared/baselines/h200-2026-12-02/copy-bandwidth.csv),
 * which would make the limit fall off at large N. */
#define COPY_CHUNK ((size_t)128 << 20)
static int copy_call(void *ctx, long call, void *stream)
{
    bench_ctx *b = ctx;
    const char *src = b->sets[call % b->count].pool;
    char *dst = b->count > 1 ? b->sets[(call + b->count / 2) % b->count].pool : b->copy_scratch;
    const size_t bytes = b->traffic_bytes / 2;
    for (size_t at = 0; at < bytes; at += COPY_CHUNK)
        if (mem_copy_async(b->where, dst + at, src + at, bytes - at < COPY_CHUNK ? bytes - at : COPY_CHUNK,
                           stream) != 0)
            return -1;
    return 0;
}

int cmd_bench(int argc, char **argv)
{
    bench_opts o;
    int rc = parse(argc, argv, &o);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    const shape *s = o.shp;
    mem_where where = o.backend == GDN_BACKEND_CUDA ? MEM_DEVICE : MEM_HOST;
    int reps = o.reps > 0 ? o.reps : where == MEM_DEVICE ? 30 : 5;
    const int multi = o.tokens > 1 || o.token_slots;
    char tcol[64] = "";
    if (multi)
        snprintf(tcol, sizeof tcol, ",%d,%s", o.tokens, o.token_slots ? "yes" : "no");
    if (o.csv)
        printf("shape,H,HV,K,V,state_dtype,N,%simpl,median_us,gbps,pct_of_copy\n",
               multi ? "T,token_slots," : "");
    else
        printf("gdn bench: backend %s, shape %s (H=%lld HV=%lld K=%lld V=%lld), act %s, state %s %s, "
               "T=%d%s, median of %d\n%6s %12s %10s %12s %10s %8s\n",
               gdn_backend_name(o.backend), s->name, (long long)s->h, (long long)s->hv, (long long)s->k,
               (long long)s->v, gdn_dtype_name(o.act), gdn_dtype_name(o.state),
               o.layout == GDN_LAYOUT_VK ? "vk" : "kv", o.tokens, o.token_slots ? " with token slots" : "",
               reps, "N", "gdn us", "gdn GB/s", "copy us", "copy GB/s", "% copy");
    int failed = 0;
    for (int i = 0; i < o.n_count; i++) {
        bench_ctx b;
        if (make_sets(&o, o.ns[i], &b) != 0) {
            printf("%6lld  (skipped: could not allocate %zu bytes of state: %s)\n", o.ns[i], b.pool_bytes,
                   mem_error());
            free_sets(&b);
            continue;
        }
        int calls = b.count < 20 ? 20 / b.count * b.count : b.count;
        if (where == MEM_HOST)
            calls = b.count;
        timing tc;
        if (time_calls(where, copy_call, &b, calls, reps, &tc) != 0) {
            printf("%6lld  FAILED: copy: %s\n", o.ns[i], tc.error);
            failed = 1;
            free_sets(&b);
            continue;
        }
        const double bytes = (double)b.traffic_bytes, copy_gbps = bytes / (tc.median_us * 1e3);
        for (int c = 0; c < o.config_count; c++) {
            timing td;
            char impl[48] = "gdn";
            if (o.configs[c] >= 0) {
                char name[32];
                gdn_cuda_config_name(o.kernel, o.configs[c], name, sizeof name);
                snprintf(impl, sizeof impl, "gdn-%s", name);
            }
            if (o.paged)
                strncat(impl, "-paged", sizeof impl - strlen(impl) - 1);
            gdn_cuda_force_config(o.kernel, o.configs[c]);
            int bad = time_calls(where, decode_call, &b, calls, reps, &td) != 0;
            gdn_cuda_force_config(o.kernel, -1);
            if (bad) {
                printf("%6lld  FAILED: %s: %s\n", o.ns[i], impl, td.error);
                failed = 1;
                continue;
            }
            const double gbps = bytes / (td.median_us * 1e3);
            if (o.csv)
                printf("%s,%lld,%lld,%lld,%lld,%s,%lld%s,%s,%.3f,%.1f,%.1f\n", s->name, (long long)s->h,
                       (long long)s->hv, (long long)s->k, (long long)s->v, gdn_dtype_name(o.state), o.ns[i],
                       tcol, impl, td.median_us, gbps, 100.0 * gbps / copy_gbps);
            else
                printf("%6lld %12.2f %10.1f %12.2f %10.1f %7.1f%%%s%s\n", o.ns[i], td.median_us, gbps,
                       tc.median_us, copy_gbps, 100.0 * gbps / copy_gbps, c ? "  " : "", c ? impl : "");
        }
        if (o.csv)
            printf("%s,%lld,%lld,%lld,%lld,%s,%lld%s,copy,%.3f,%.1f,100.0\n", s->name, (long long)s->h,
                   (long long)s->hv, (long long)s->k, (long long)s->v, gdn_dtype_name(o.state), o.ns[i], tcol,
                   tc.median_us, copy_gbps);
        fflush(stdout);
        free_sets(&b);
    }
    return failed;
}
