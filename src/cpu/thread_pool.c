/*
 * The cpu backend's worker threads: created on first use, kept between calls, so a call pays
 * a wake-up (a few microseconds) instead of thread creation (~20 us a thread), and allocates no
 * scratch (each participant's scratch is kept with the pool and only grows).
 *
 * Lifecycle (also in gdn.h, gdn_cpu_release_threads):
 *   - created lazily by the first call that wants more than one thread, grown when a call wants
 *     more threads than the pool has (never beyond the largest request), never shrunk;
 *   - one call at a time uses it: a call that finds it busy (another host thread is inside
 *     gdn_decode) gets -1 and runs with threads of its own, as before the pool existed;
 *   - fork: the child starts with no workers (they are not copied) and grows a pool of its own;
 *     the parent's is unaffected (a fork waits for a running call to finish);
 *   - released at unload (a destructor) or by gdn_cpu_release_threads.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "gdn.h"
#include "thread_pool.h"

#define MAX_WORKERS 255

static struct {
    pthread_mutex_t busy; /* held by the call using the pool, and across fork */
    pthread_mutex_t lock; /* the fields below */
    pthread_cond_t start, done;
    pthread_t tid[MAX_WORKERS];
    uint64_t born[MAX_WORKERS]; /* the job generation when worker w was started */
    int workers;                /* started */
    uint64_t job;               /* generation: workers run each new job once */
    int parts;                  /* of the current job; worker w runs part w + 1 */
    int finished;               /* parts of the current job done by workers */
    int shutdown;
    gdn_part_fn fn;
    void *ctx;
    unsigned char *scratch; /* (workers + 1) slices of scratch_bytes */
    size_t scratch_bytes;
    int scratch_slices;
} pool = {.busy = PTHREAD_MUTEX_INITIALIZER,
          .lock = PTHREAD_MUTEX_INITIALIZER,
          .start = PTHREAD_COND_INITIALIZER,
          .done = PTHREAD_COND_INITIALIZER};

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void *worker_main(void *arg)
{
    const int me = (int)(intptr_t)arg;
    pthread_mutex_lock(&pool.lock);
    uint64_t seen = pool.born[me]; /* not pool.job: a job posted before this thread ran is its too */
    for (;;) {
        while (pool.job == seen && !pool.shutdown)
            pthread_cond_wait(&pool.start, &pool.lock);
        if (pool.shutdown)
            break;
        seen = pool.job;
        if (me + 1 >= pool.parts)
            continue;
        gdn_part_fn fn = pool.fn;
        void *ctx = pool.ctx, *scratch = pool.scratch + (size_t)(me + 1) * pool.scratch_bytes;
        const int parts = pool.parts;
        pthread_mutex_unlock(&pool.lock);
        fn(ctx, me + 1, parts, scratch);
        pthread_mutex_lock(&pool.lock);
        if (++pool.finished == parts - 1)
            pthread_cond_signal(&pool.done);
    }
    pthread_mutex_unlock(&pool.lock);
    return NULL;
}

/* Stops and joins every worker; the caller holds busy. */
static void stop_workers(void)
{
    pthread_mutex_lock(&pool.lock);
    pool.shutdown = 1;
    pthread_cond_broadcast(&pool.start);
    const int workers = pool.workers;
    pthread_mutex_unlock(&pool.lock);
    for (int w = 0; w < workers; w++)
        pthread_join(pool.tid[w], NULL);
    pthread_mutex_lock(&pool.lock);
    pool.workers = 0;
    pool.shutdown = 0;
    pthread_mutex_unlock(&pool.lock);
}

static void before_fork(void) { pthread_mutex_lock(&pool.busy); }
static void after_fork_parent(void) { pthread_mutex_unlock(&pool.busy); }
static void after_fork_child(void)
{
    /* the workers were not copied; their scratch was, and stays usable */
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.start, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.workers = 0;
    pool.shutdown = 0;
    pthread_mutex_init(&pool.busy, NULL);
}

static void install_atfork(void) { pthread_atfork(before_fork, after_fork_parent, after_fork_child); }

/* Grows to `parts` participants: workers and scratch. The caller holds busy. 0 or -1. */
static int grow(int parts, size_t scratch_bytes)
{
    if (parts - 1 > MAX_WORKERS)
        return -1;
    if (scratch_bytes > pool.scratch_bytes || parts > pool.scratch_slices) {
        const int slices = parts > pool.scratch_slices ? parts : pool.scratch_slices;
        const size_t bytes = scratch_bytes > pool.scratch_bytes ? scratch_bytes : pool.scratch_bytes;
        unsigned char *fresh = malloc((size_t)slices * bytes);
        if (!fresh)
            return -1;
        free(pool.scratch);
        pool.scratch = fresh, pool.scratch_bytes = bytes, pool.scratch_slices = slices;
    }
    while (pool.workers < parts - 1) {
        pthread_mutex_lock(&pool.lock);
        const int w = pool.workers;
        pool.born[w] = pool.job;
        const int ok = pthread_create(&pool.tid[w], NULL, worker_main, (void *)(intptr_t)w) == 0;
        pool.workers += ok;
        pthread_mutex_unlock(&pool.lock);
        if (!ok)
            return -1;
    }
    return 0;
}

int gdn_pool_run(gdn_part_fn fn, void *ctx, int parts, size_t scratch_bytes)
{
    pthread_once(&atfork_once, install_atfork);
    if (parts < 1 || pthread_mutex_trylock(&pool.busy) != 0)
        return -1;
    if (grow(parts, scratch_bytes) != 0) {
        pthread_mutex_unlock(&pool.busy);
        return -1;
    }
    pthread_mutex_lock(&pool.lock);
    pool.fn = fn, pool.ctx = ctx, pool.parts = parts, pool.finished = 0;
    pool.job++;
    pthread_cond_broadcast(&pool.start);
    pthread_mutex_unlock(&pool.lock);
    fn(ctx, 0, parts, pool.scratch);
    pthread_mutex_lock(&pool.lock);
    while (pool.finished < parts - 1)
        pthread_cond_wait(&pool.done, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    pthread_mutex_unlock(&pool.busy);
    return 0;
}

int gdn_pool_threads(void)
{
    pthread_mutex_lock(&pool.lock);
    const int workers = pool.workers;
    pthread_mutex_unlock(&pool.lock);
    return workers;
}

void gdn_cpu_release_threads(void)
{
    pthread_mutex_lock(&pool.busy);
    stop_workers();
    free(pool.scratch);
    pool.scratch = NULL, pool.scratch_bytes = 0, pool.scratch_slices = 0;
    pthread_mutex_unlock(&pool.busy);
}

__attribute__((destructor)) static void release_at_unload(void)
{
    if (pthread_mutex_trylock(&pool.busy) != 0)
        return; /* a call is running while the library goes away: leave its threads alone */
    stop_workers();
    free(pool.scratch);
    pool.scratch = NULL, pool.scratch_bytes = 0, pool.scratch_slices = 0;
    pthread_mutex_unlock(&pool.busy);
}
