/*
 * cuda backend: what the dispatcher asks of the CUDA runtime outside the kernels: whether a
 * usable device exists, where a pointer lives, and device names for `gdn info`.
 *
 * The runtime is linked statically (libcudart_static), so a machine without a driver loads
 * the library fine and simply reports no device.
 */
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdio.h>

#include "../core/backends.h"
#include "kernels.h"

static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static int usable_devices; /* written once under probe_once, read-only afterwards */

/* The first gdn call initialises this library's own (static) CUDA runtime. If that call comes
 * while the thread captures a CUDA graph, initialisation is a "potentially unsafe" call that
 * would invalidate the capture, so the probe runs with the thread in relaxed capture mode (a
 * no-op when nothing is being captured) and restores the caller's mode afterwards. */
static void probe_devices(void)
{
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    const bool exchanged = cudaThreadExchangeStreamCaptureMode(&mode) == cudaSuccess;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no driver" error for later callers */
        count = 0;
    }
    for (int d = 0; d < count; d++) {
        cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, d) == cudaSuccess && prop.major >= 8)
            usable_devices++;
    }
    if (exchanged)
        cudaThreadExchangeStreamCaptureMode(&mode);
    else
        cudaGetLastError();
}

extern "C" int gdn_cuda_built(void) { return 1; }

extern "C" int gdn_cuda_usable(void)
{
    pthread_once(&probe_once, probe_devices);
    return usable_devices > 0;
}

/* Devices the backend can run on (sm_80 and newer); gdn_cuda_device_info numbers all devices. */
extern "C" int gdn_cuda_device_count(void)
{
    pthread_once(&probe_once, probe_devices);
    return usable_devices;
}

extern "C" gdn_status gdn_cuda_device_info(int device, char *name, size_t name_size, int *cc_major,
                                           int *cc_minor)
{
    cudaDeviceProp prop;
    cudaError_t err = cudaGetDeviceProperties(&prop, device);
    if (err != cudaSuccess)
        return gdn_fail(GDN_ERR_DEVICE, "cudaGetDeviceProperties(%d): %s", device, cudaGetErrorString(err));
    if (name && name_size)
        snprintf(name, name_size, "%s", prop.name);
    if (cc_major)
        *cc_major = prop.major;
    if (cc_minor)
        *cc_minor = prop.minor;
    return GDN_OK;
}

extern "C" gdn_memory_kind gdn_cuda_memory_kind(const void *ptr, int *device)
{
    if (device)
        *device = -1;
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
        cudaGetLastError();
        return GDN_MEMORY_UNKNOWN;
    }
    if (device)
        *device = attr.device;
    switch (attr.type) {
    case cudaMemoryTypeDevice: return GDN_MEMORY_DEVICE;
    case cudaMemoryTypeManaged: return GDN_MEMORY_MANAGED;
    /* Pinned host memory is mapped into the device address space under UVA. */
    case cudaMemoryTypeHost: return attr.devicePointer == ptr ? GDN_MEMORY_MANAGED : GDN_MEMORY_HOST;
    default: return GDN_MEMORY_HOST;
    }
}

static const gdn_kernel_shape *kernel_shapes(gdn_cuda_kernel kernel, int *count)
{
    return kernel == GDN_CUDA_MULTI_TOKEN ? gdn_cuda_multi_token_shapes(count)
                                          : gdn_cuda_one_token_shapes(count);
}

extern "C" int gdn_cuda_config_count(gdn_cuda_kernel kernel)
{
    int count = 0;
    kernel_shapes(kernel, &count);
    return count;
}

extern "C" void gdn_cuda_force_config(gdn_cuda_kernel kernel, int config)
{
    if (kernel == GDN_CUDA_MULTI_TOKEN)
        gdn_cuda_multi_token_force(config);
    else
        gdn_cuda_one_token_force(config);
}

extern "C" void gdn_cuda_config_name(gdn_cuda_kernel kernel, int config, char *buf, size_t size)
{
    int count = 0;
    const gdn_kernel_shape *shapes = kernel_shapes(kernel, &count);
    if (config < 0 || config >= count) {
        snprintf(buf, size, "auto");
        return;
    }
    const gdn_kernel_shape s = shapes[config];
    char stages[16] = "", lanes[16] = "";
    if (s.stages)
        snprintf(stages, sizeof stages, "s%d", s.stages);
    if (s.lanes)
        snprintf(lanes, sizeof lanes, "l%d", s.lanes);
    snprintf(buf, size, "r%dx%d%s%s%s", s.rows, s.batches, stages, lanes, s.streaming ? "c" : "");
}
