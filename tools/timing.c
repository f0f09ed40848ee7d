#include "timing.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef GDN_TOOLS_CUDA
#include <cuda_runtime.h>
#endif

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void summarise(double *per_call_us, int reps, timing *t)
{
    qsort(per_call_us, (size_t)reps, sizeof(double), compare_double);
    t->reps = reps;
    t->min_us = per_call_us[0];
    t->max_us = per_call_us[reps - 1];
    t->median_us =
        reps % 2 ? per_call_us[reps / 2] : 0.5 * (per_call_us[reps / 2 - 1] + per_call_us[reps / 2]);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static int time_host(timed_fn fn, void *ctx, int calls, int reps, timing *t)
{
    double *samples = malloc((size_t)reps * sizeof(double));
    long call = 0;
    for (int r = -1; r < reps; r++) { /* r = -1 is the warm-up */
        double start = now_us();
        for (int c = 0; c < calls; c++)
            if (fn(ctx, call++, NULL) != 0) {
                snprintf(t->error, sizeof t->error, "the timed call failed");
                free(samples);
                return -1;
            }
        if (r >= 0)
            samples[r] = (now_us() - start) / calls;
    }
    summarise(samples, reps, t);
    free(samples);
    return 0;
}

#ifdef GDN_TOOLS_CUDA
#define CUDA_TRY(expr)                                                                                       \
    do {                                                                                                     \
        cudaError_t err_ = (expr);                                                                           \
        if (err_ != cudaSuccess) {                                                                           \
            snprintf(t->error, sizeof t->error, "%s: %s", #expr, cudaGetErrorString(err_));                  \
            goto done;                                                                                       \
        }                                                                                                    \
    } while (0)

static int time_device(timed_fn fn, void *ctx, int calls, int reps, timing *t)
{
    int status = -1;
    cudaStream_t stream = NULL;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaEvent_t start = NULL, stop = NULL;
    double *samples = malloc((size_t)reps * sizeof(double));
    CUDA_TRY(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    CUDA_TRY(cudaEventCreate(&start));
    CUDA_TRY(cudaEventCreate(&stop));
    for (int c = 0; c < calls; c++) /* eager warm-up: module load, first-touch of buffers */
        if (fn(ctx, c, stream) != 0) {
            snprintf(t->error, sizeof t->error, "the timed call failed");
            goto done;
        }
    CUDA_TRY(cudaStreamSynchronize(stream));
    CUDA_TRY(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int c = 0; c < calls; c++)
        if (fn(ctx, c, stream) != 0) {
            cudaStreamEndCapture(stream, &graph);
            snprintf(t->error, sizeof t->error, "the timed call failed during graph capture");
            goto done;
        }
    CUDA_TRY(cudaStreamEndCapture(stream, &graph));
    CUDA_TRY(cudaGraphInstantiate(&exec, graph, 0));
    CUDA_TRY(cudaGraphLaunch(exec, stream)); /* warm-up replay */
    for (int r = 0; r < reps; r++) {
        float ms = 0;
        CUDA_TRY(cudaEventRecord(start, stream));
        CUDA_TRY(cudaGraphLaunch(exec, stream));
        CUDA_TRY(cudaEventRecord(stop, stream));
        CUDA_TRY(cudaEventSynchronize(stop));
        CUDA_TRY(cudaEventElapsedTime(&ms, start, stop));
        samples[r] = ms * 1e3 / calls;
    }
    summarise(samples, reps, t);
    status = 0;
done:
    if (exec)
        cudaGraphExecDestroy(exec);
    if (graph)
        cudaGraphDestroy(graph);
    if (start)
        cudaEventDestroy(start);
    if (stop)
        cudaEventDestroy(stop);
    if (stream)
        cudaStreamDestroy(stream);
    free(samples);
    return status;
}

#endif

int time_calls(mem_where where, timed_fn fn, void *ctx, int calls, int reps, timing *t)
{
    memset(t, 0, sizeof *t);
    if (where == MEM_HOST)
        return time_host(fn, ctx, calls, reps, t);
#ifdef GDN_TOOLS_CUDA
    return time_device(fn, ctx, calls, reps, t);
#else
    snprintf(t->error, sizeof t->error, "the tools were built without CUDA");
    return -1;
#endif
}
