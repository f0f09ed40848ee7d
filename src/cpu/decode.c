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
#include "decode_item.h"
#include "thread_pool.h"

/* Below this many state elements per thread, waking a thread costs more than it saves: with
 * 2^16 (a guess for the pool) contest N=1 fell from 15.5 to 9.5 GB/s on the 2-core VM
 * (bench/results/cpu-isa-2026-12-02-057b47b.csv), so the thread-per-call threshold stays. */
#define MIN_ELEMENTS_PER_THREAD (1 << 18)
#define MAX_THREADS 256

/* ---- the per-item function for this CPU -------------------------------------------------- */

static const struct {
    const char *name;
    gdn_cpu_item_fn fn;
    void (*narrow_bf16)(const float *x, uint16_t *out, int64_t n); /* NULL: element-wise */
} isas[] = {
#if defined(__x86_64__)
    {"avx512bf16", gdn_cpu_decode_item_avx512bf16, gdn_cpu_narrow_bf16_avx512bf16},
    {"avx512", gdn_cpu_decode_item_avx512, gdn_cpu_narrow_bf16_avx512},
    {"avx2", gdn_cpu_decode_item_avx2, gdn_cpu_narrow_bf16_avx2},
#endif
    {"baseline", gdn_cpu_decode_item_baseline, NULL},
};
enum { ISA_COUNT = sizeof isas / sizeof isas[0] };

static int isa_supported(int i)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (!strcmp(isas[i].name, "avx512bf16"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
    if (!strcmp(isas[i].name, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
    if (!strcmp(isas[i].name, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return !strcmp(isas[i].name, "baseline");
}

/* The table's names, weakest first ("baseline avx2 avx512 avx512bf16"), built once. */
static char list_of_isas[64];
static void build_isa_list(void)
{
    for (int i = ISA_COUNT - 1; i >= 0; i--) {
        strncat(list_of_isas, isas[i].name, sizeof list_of_isas - strlen(list_of_isas) - 1);
        if (i)
            strncat(list_of_isas, " ", sizeof list_of_isas - strlen(list_of_isas) - 1);
    }
}

static int chosen_isa = -1; /* index into isas; -1 until chosen */
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;

/* The best the CPU supports, or GDN_CPU_ISA's (baseline, avx2, avx512, avx512bf16) when the
 * CPU has it. */
static void choose_isa(void)
{
    const char *forced = getenv("GDN_CPU_ISA");
    int best = ISA_COUNT - 1;
    for (int i = ISA_COUNT - 1; i >= 0; i--)
        if (isa_supported(i))
            best = i;
    for (int i = 0; forced && i < ISA_COUNT; i++)
        if (!strcmp(forced, isas[i].name) && isa_supported(i))
            best = i;
    __atomic_store_n(&chosen_isa, best, __ATOMIC_RELEASE);
}

static int current_isa(void)
{
    pthread_once(&isa_once, choose_isa);
    return __atomic_load_n(&chosen_isa, __ATOMIC_ACQUIRE);
}

const char *gdn_cpu_isa_name(void) { return isas[current_isa()].name; }

void gdn_cpu_narrow_bf16_row(const float *x, uint16_t *out, int64_t n)
{
    const int isa = current_isa();
    if (isas[isa].narrow_bf16)
        isas[isa].narrow_bf16(x, out, n);
    else
        gdn_store_row_f32(out, GDN_DTYPE_BF16, 0, n, x);
}

int gdn_cpu_force_isa(const char *name)
{
    current_isa();
    for (int i = 0; i < ISA_COUNT; i++)
        if (!strcmp(name, isas[i].name)) {
            if (!isa_supported(i))
                return -1;
            __atomic_store_n(&chosen_isa, i, __ATOMIC_RELEASE);
            return 0;
        }
    return -1;
}

const char *gdn_cpu_isa_list(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, build_isa_list);
    return list_of_isas;
}

/* ---- long sequences: chunks or token by token ----------------------------------------------- */

/* -1: by length (GDN_CPU_CHUNK_MIN_TOKENS); 0: token by token; 1: chunks (gdn_cpu_force_prefill). */
static int forced_prefill = -1;

/* From this many tokens on a sequence runs in chunks: every sequence too long for the staged
 * token-by-token path. Measured on the 2-core development VM (bench/NOTES.md, prefill): chunks
 * 1.33x the tokens/s of token by token at 24 tokens a sequence, 1.8x at 64 and beyond. */
#define GDN_CPU_CHUNK_MIN_TOKENS (GDN_MAX_TOKENS + 1)

int gdn_cpu_use_chunks(int64_t tokens)
{
    const int forced = __atomic_load_n(&forced_prefill, __ATOMIC_RELAXED);
    return forced >= 0 ? forced : tokens >= GDN_CPU_CHUNK_MIN_TOKENS;
}

void gdn_cpu_force_prefill(int mode)
{
    __atomic_store_n(&forced_prefill, mode < 0 ? -1 : mode > 0, __ATOMIC_RELAXED);
}

/* ---- threads ----------------------------------------------------------------------------- */

typedef struct item_range {
    const gdn_problem *p;
    gdn_cpu_item_fn item;
    int64_t begin, end;
    head_inputs *scratch;
} item_range;

static void *decode_range(void *arg)
{
    const item_range *r = arg;
    for (int64_t item = r->begin; item < r->end; item++)
        r->item(r->p, item, r->scratch);
    return NULL;
}

typedef struct pool_job {
    const gdn_problem *p;
    gdn_cpu_item_fn item;
    int64_t items;
} pool_job;

static void decode_part(void *ctx, int part, int parts, void *scratch)
{
    const pool_job *job = ctx;
    item_range r = {job->p, job->item, job->items * part / parts, job->items * (part + 1) / parts, scratch};
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
    const gdn_cpu_item_fn item = isas[current_isa()].fn;
    pool_job job = {p, item, items};
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
        ranges[t] = (item_range){p, item, items * t / threads, items * (t + 1) / threads, &scratch[t]};
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
