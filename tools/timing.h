/*
 * Timing of many launches (SPEC 7): on the device, calls are captured into a CUDA graph and
 * the graph's replays are timed with events; on the host, calls are timed with the monotonic
 * clock. Either way the result is the median over repetitions of the time of one call.
 */
#ifndef GDN_TOOLS_TIMING_H
#define GDN_TOOLS_TIMING_H

#include "buffers.h"

/* One call of the timed operation; `call` counts up from 0 (for rotating buffers); `stream`
 * is the cudaStream_t to enqueue on (NULL on the host). Returns 0 on success. */
typedef int (*timed_fn)(void *ctx, long call, void *stream);

typedef struct timing {
    double median_us, min_us, max_us;
    int reps;
    char error[256];
} timing;

/* Times fn: `calls` calls per repetition (one graph on the device), `reps` repetitions after
 * one warm-up repetition. Returns 0 on success. */
int time_calls(mem_where where, timed_fn fn, void *ctx, int calls, int reps, timing *t);

#endif
