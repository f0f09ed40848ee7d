/* Status strings, the per-thread last-error message, version and enum names. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "backends.h"

static _Thread_local char last_error[512];

gdn_status gdn_fail(gdn_status status, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(last_error, sizeof last_error, format, args);
    va_end(args);
    return status;
}

const char *gdn_last_error(void) { return last_error; }

const char *gdn_status_string(gdn_status status)
{
    switch (status) {
    case GDN_OK: return "ok";
    case GDN_ERR_INVALID_ARGUMENT: return "invalid argument";
    case GDN_ERR_NULL_POINTER: return "null pointer";
    case GDN_ERR_INVALID_SHAPE: return "invalid shape";
    case GDN_ERR_INVALID_STRIDE: return "invalid stride";
    case GDN_ERR_UNSUPPORTED_DTYPE: return "unsupported dtype";
    case GDN_ERR_UNSUPPORTED_LAYOUT: return "unsupported state layout";
    case GDN_ERR_UNSUPPORTED_HEAD_SIZE: return "unsupported head size";
    case GDN_ERR_SLOT_OUT_OF_RANGE: return "slot index out of range";
    case GDN_ERR_MISALIGNED: return "misaligned pointer";
    case GDN_ERR_BACKEND_UNAVAILABLE: return "backend unavailable";
    case GDN_ERR_WRONG_MEMORY: return "pointer in the wrong memory for the backend";
    case GDN_ERR_OVERLAP: return "output overlaps the state pool";
    case GDN_ERR_DEVICE: return "GPU runtime error";
    }
    return "unknown status";
}

unsigned gdn_version_number(void) { return GDN_VERSION_NUMBER; }

#define GDN_STR2(x) #x
#define GDN_STR(x) GDN_STR2(x)
const char *gdn_version_string(void)
{
    return GDN_STR(GDN_VERSION_MAJOR) "." GDN_STR(GDN_VERSION_MINOR) "." GDN_STR(GDN_VERSION_PATCH);
}

size_t gdn_dtype_size(gdn_dtype dtype)
{
    switch (dtype) {
    case GDN_DTYPE_F32: return 4;
    case GDN_DTYPE_F16: return 2;
    case GDN_DTYPE_BF16: return 2;
    case GDN_DTYPE_F64: return 8;
    case GDN_DTYPE_I32: return 4;
    case GDN_DTYPE_I64: return 8;
    }
    return 0;
}

const char *gdn_dtype_name(gdn_dtype dtype)
{
    switch (dtype) {
    case GDN_DTYPE_F32: return "f32";
    case GDN_DTYPE_F16: return "f16";
    case GDN_DTYPE_BF16: return "bf16";
    case GDN_DTYPE_F64: return "f64";
    case GDN_DTYPE_I32: return "i32";
    case GDN_DTYPE_I64: return "i64";
    }
    return "?";
}

static const char *const backend_names[] = {"auto", "cpu", "cuda", "reference"};

const char *gdn_backend_name(gdn_backend backend)
{
    if ((unsigned)backend < sizeof backend_names / sizeof backend_names[0])
        return backend_names[backend];
    return "?";
}

int gdn_backend_from_name(const char *name, gdn_backend *backend)
{
    if (!name || !backend)
        return -1;
    for (unsigned i = 0; i < sizeof backend_names / sizeof backend_names[0]; i++) {
        if (strcmp(name, backend_names[i]) == 0) {
            *backend = (gdn_backend)i;
            return 0;
        }
    }
    return -1;
}

int gdn_backend_built(gdn_backend backend)
{
    switch (backend) {
    case GDN_BACKEND_AUTO:
    case GDN_BACKEND_CPU:
    case GDN_BACKEND_REFERENCE: return 1;
    case GDN_BACKEND_CUDA: return gdn_cuda_built();
    }
    return 0;
}
