/*
 * Which backend serves a call. The order is the one engines expect from a --backend flag:
 * the API argument, then the GDN_BACKEND environment variable, then the memory the state
 * pool lives in (device or managed memory -> cuda, host memory -> cpu). Asking for a backend
 * that is not built or has no device is an error, never a silent fallback.
 */
#include <stdlib.h>

#include "choose_backend.h"

gdn_status gdn_choose_backend(gdn_backend requested, gdn_memory_kind pool_kind, gdn_backend *chosen)
{
    gdn_backend backend = requested;
    if (backend == GDN_BACKEND_AUTO) {
        const char *env = getenv("GDN_BACKEND");
        if (env && env[0] && gdn_backend_from_name(env, &backend) != 0)
            return gdn_fail(GDN_ERR_INVALID_ARGUMENT,
                            "GDN_BACKEND=\"%s\" is not a backend (auto, cpu, cuda, reference)", env);
    }
    if (backend == GDN_BACKEND_AUTO)
        backend = (pool_kind == GDN_MEMORY_DEVICE || pool_kind == GDN_MEMORY_MANAGED) ? GDN_BACKEND_CUDA
                                                                                      : GDN_BACKEND_CPU;
    if (backend == GDN_BACKEND_CUDA) {
        if (!gdn_cuda_built())
            return gdn_fail(GDN_ERR_BACKEND_UNAVAILABLE,
                            "the cuda backend is not built into this library (nvcc was not found "
                            "when it was built)");
        if (!gdn_cuda_usable())
            return gdn_fail(GDN_ERR_BACKEND_UNAVAILABLE,
                            "the cuda backend is built but no usable CUDA device was found (no "
                            "driver, no GPU, or a GPU older than sm_80)");
    }
    if ((unsigned)backend > GDN_BACKEND_REFERENCE)
        return gdn_fail(GDN_ERR_INVALID_ARGUMENT, "backend = %d is not a gdn_backend", (int)backend);
    *chosen = backend;
    return GDN_OK;
}
