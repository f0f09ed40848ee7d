/*
 * The cpu backend's persistent worker threads (src/cpu/thread_pool.c): kept and reused across
 * calls, the same results as one thread, released and started again, and usable in a forked
 * child (which does not inherit them).
 */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../src/cpu/thread_pool.h"
#include "gdn.h"
#include "rng.h"
#include "test.h"

enum { N = 8, H = 2, HV = 8, K = 128, V = 128, SLOTS = 8, TILE = HV * V * K };

typedef struct pool_problem {
    float q[N * H * K], k[N * H * K], v[N * HV * V], a[N * HV], b[N * HV], A_log[HV], dt_bias[HV];
    float pool[SLOTS * TILE], out[N * HV * V];
    int64_t slots[N];
} pool_problem;

static pool_problem *make_problem(uint64_t seed)
{
    pool_problem *pp = malloc(sizeof *pp);
    rng g = {seed};
    float *all[] = {pp->q, pp->k, pp->v, pp->a, pp->b, pp->pool};
    size_t sizes[] = {N * H * K, N * H * K, N * HV * V, N * HV, N * HV, SLOTS * TILE};
    for (int x = 0; x < 6; x++)
        for (size_t i = 0; i < sizes[x]; i++)
            all[x][i] = (float)((x == 5 ? 0.05 : 1.0) * rng_normal(&g));
    for (int i = 0; i < HV; i++)
        pp->A_log[i] = (float)(0.5 * rng_uniform(&g)), pp->dt_bias[i] = (float)(-2.0 * rng_uniform(&g));
    for (int n = 0; n < N; n++)
        pp->slots[n] = (n * 3 + 1) % SLOTS;
    memset(pp->out, 0xff, sizeof pp->out);
    return pp;
}

static gdn_status run(pool_problem *pp, int threads)
{
    gdn_decode_params p;
    gdn_decode_params_init(&p);
    p.num_seqs = N, p.num_q_heads = H, p.num_v_heads = HV, p.head_dim_k = K, p.head_dim_v = V;
    p.act_dtype = GDN_DTYPE_F32, p.q = pp->q, p.k = pp->k, p.v = pp->v, p.a = pp->a, p.b = pp->b;
    p.out = pp->out, p.A_log = pp->A_log, p.dt_bias = pp->dt_bias;
    p.state_pool = pp->pool, p.num_slots = SLOTS, p.slot_indices = pp->slots;
    p.backend = GDN_BACKEND_CPU, p.num_threads = threads;
    return gdn_decode(&p);
}

static int same_results(const pool_problem *x, const pool_problem *y)
{
    return memcmp(x->out, y->out, sizeof x->out) == 0 && memcmp(x->pool, y->pool, sizeof x->pool) == 0;
}

/* 20 steps on 4 threads: the pool's threads are started once and reused; bit-identical to one
 * thread (items are independent, so the split cannot change a result). */
static void threads_kept_between_calls(void)
{
    uint64_t seed = rng_fresh_seed();
    pool_problem *one = make_problem(seed), *four = make_problem(seed);
    CHECK(run(four, 4) == GDN_OK);
    const int workers = gdn_pool_threads();
    CHECK_MSG(workers >= 3, "the pool holds %d workers after a 4-thread call", workers);
    CHECK(run(one, 1) == GDN_OK);
    for (int step = 1; step < 20; step++) {
        CHECK(run(four, 4) == GDN_OK);
        CHECK(run(one, 1) == GDN_OK);
    }
    CHECK_MSG(gdn_pool_threads() == workers, "workers %d -> %d: threads were started again", workers,
              gdn_pool_threads());
    CHECK_MSG(same_results(one, four), "4 pooled threads and 1 thread disagree after 20 steps");
    free(one), free(four);
}

static void threads_released_and_restarted(void)
{
    uint64_t seed = rng_fresh_seed();
    pool_problem *one = make_problem(seed), *two = make_problem(seed);
    CHECK(run(two, 2) == GDN_OK);
    gdn_cpu_release_threads();
    CHECK_MSG(gdn_pool_threads() == 0, "%d workers left after gdn_cpu_release_threads", gdn_pool_threads());
    CHECK(run(two, 2) == GDN_OK);
    CHECK(gdn_pool_threads() >= 1);
    CHECK(run(one, 1) == GDN_OK);
    CHECK(run(one, 1) == GDN_OK);
    CHECK(same_results(one, two));
    free(one), free(two);
}

/* A child forked after the pool exists has none of its threads: its calls must start its own
 * (not wait forever on the parent's), and compute the same thing. */
static void threads_in_forked_child(void)
{
    uint64_t seed = rng_fresh_seed();
    pool_problem *want = make_problem(seed), *got = make_problem(seed);
    CHECK(run(want, 2) == GDN_OK); /* the parent's pool exists from here on */
    CHECK(run(want, 1) == GDN_OK);
    fflush(NULL);
    pid_t child = fork();
    if (child == 0) {
        int ok = run(got, 2) == GDN_OK && run(got, 2) == GDN_OK && same_results(want, got);
        _exit(ok ? 0 : 1);
    }
    CHECK(child > 0);
    int status = -1;
    for (int waited = 0; child > 0 && waited < 200; waited++) { /* 20 s */
        if (waitpid(child, &status, WNOHANG) == child)
            break;
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
        status = -1;
    }
    if (status == -1 && child > 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    }
    CHECK_MSG(status == 0, "the forked child's 2-thread decode %s",
              status == -1 ? "did not finish in 20 s" : "failed or disagreed with the parent's");
    CHECK(run(got, 2) == GDN_OK); /* the parent's pool still works */
    free(want), free(got);
}

void register_cpu_threads_tests(void)
{
    test_add("cpu_threads/kept_between_calls", threads_kept_between_calls);
    test_add("cpu_threads/released_and_restarted", threads_released_and_restarted);
    test_add("cpu_threads/in_forked_child", threads_in_forked_child);
}
