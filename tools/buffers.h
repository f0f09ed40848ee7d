/*
 * Memory for checks, tests and benchmarks on either side: host (malloc) or CUDA device
 * (cudaMalloc, when the tools were built with CUDA). The library itself never allocates;
 * only these harnesses do.
 */
#ifndef GDN_TOOLS_BUFFERS_H
#define GDN_TOOLS_BUFFERS_H

#include <stddef.h>

typedef enum mem_where { MEM_HOST = 0, MEM_DEVICE = 1 } mem_where;

/* 1 when device memory can be had (tools built with CUDA and a device present). */
int mem_device_available(void);
/* NULL on failure (see mem_error). */
void *mem_alloc(mem_where where, size_t bytes);
void mem_free(mem_where where, void *ptr);
/* Copies host -> where / where -> host; 0 on success. */
int mem_upload(mem_where where, void *dst, const void *src, size_t bytes);
int mem_download(mem_where where, void *dst, const void *src, size_t bytes);
/* Enqueues a copy within `where` on stream (a cudaStream_t; memmove on the host); 0 on success. */
int mem_copy_async(mem_where where, void *dst, const void *src, size_t bytes, void *stream);
/* Waits for all device work (no-op on the host); 0 on success. */
int mem_sync(mem_where where);
const char *mem_error(void);

#endif
