/*
 * The cpu backend's persistent worker threads (thread_pool.c has the lifecycle).
 */
#ifndef GDN_CPU_THREAD_POOL_H
#define GDN_CPU_THREAD_POOL_H

#include <stddef.h>

/* One part of a job: part of parts, with scratch_bytes of scratch of its own. */
typedef void (*gdn_part_fn)(void *ctx, int part, int parts, void *scratch);

/* Runs fn on parts 0..parts-1 at once, part 0 on the calling thread, and returns when all are
 * done: 0. Returns -1 without running anything when the pool is in use by another call or cannot
 * grow to `parts` threads and scratches (the caller then runs the parts some other way). */
int gdn_pool_run(gdn_part_fn fn, void *ctx, int parts, size_t scratch_bytes);

/* Worker threads the pool holds now (tests). */
int gdn_pool_threads(void);

#endif
