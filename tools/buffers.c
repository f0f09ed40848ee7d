#include "buffers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rng.h"

#ifdef GDN_TOOLS_CUDA
#include <cuda_runtime.h>
#endif

static char error_text[256];

const char *mem_error(void) { return error_text; }

uint64_t rng_fresh_seed(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec;
}

#ifdef GDN_TOOLS_CUDA
static int cuda_ok(cudaError_t err, const char *what)
{
    if (err == cudaSuccess)
        return 1;
    snprintf(error_text, sizeof error_text, "%s: %s", what, cudaGetErrorString(err));
    cudaGetLastError();
    return 0;
}

int mem_device_available(void)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return count > 0;
}
#else
int mem_device_available(void) { return 0; }
#endif

void *mem_alloc(mem_where where, size_t bytes)
{
    if (bytes == 0)
        bytes = 1;
    if (where == MEM_HOST) {
        void *p = NULL;
        if (posix_memalign(&p, 256, bytes) != 0) {
            snprintf(error_text, sizeof error_text, "host allocation of %zu bytes failed", bytes);
            return NULL;
        }
        return p;
    }
#ifdef GDN_TOOLS_CUDA
    void *p = NULL;
    if (!cuda_ok(cudaMalloc(&p, bytes), "cudaMalloc"))
        return NULL;
    return p;
#else
    snprintf(error_text, sizeof error_text, "the tools were built without CUDA");
    return NULL;
#endif
}

void mem_free(mem_where where, void *ptr)
{
    if (!ptr)
        return;
    if (where == MEM_HOST) {
        free(ptr);
        return;
    }
#ifdef GDN_TOOLS_CUDA
    cudaFree(ptr);
#endif
}

static int copy(mem_where where, void *dst, const void *src, size_t bytes, int to_device)
{
    if (where == MEM_HOST) {
        memmove(dst, src, bytes);
        return 0;
    }
#ifdef GDN_TOOLS_CUDA
    return cuda_ok(cudaMemcpy(dst, src, bytes, to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost),
                   "cudaMemcpy")
               ? 0
               : -1;
#else
    (void)to_device;
    snprintf(error_text, sizeof error_text, "the tools were built without CUDA");
    return -1;
#endif
}

int mem_upload(mem_where where, void *dst, const void *src, size_t bytes)
{
    return copy(where, dst, src, bytes, 1);
}

int mem_download(mem_where where, void *dst, const void *src, size_t bytes)
{
    return copy(where, dst, src, bytes, 0);
}

int mem_copy_async(mem_where where, void *dst, const void *src, size_t bytes, void *stream)
{
    if (where == MEM_HOST) {
        memmove(dst, src, bytes);
        return 0;
    }
#ifdef GDN_TOOLS_CUDA
    return cuda_ok(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, (cudaStream_t)stream),
                   "cudaMemcpyAsync")
               ? 0
               : -1;
#else
    (void)stream;
    return -1;
#endif
}

int mem_sync(mem_where where)
{
    if (where == MEM_HOST)
        return 0;
#ifdef GDN_TOOLS_CUDA
    return cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize") ? 0 : -1;
#else
    return -1;
#endif
}
