/*
 * Device helpers shared by the cuda kernels (one operation per .cu file): dtype conversions,
 * lane reductions, the block's (sequence, head) coordinates, 16-byte state vectors, the
 * checked-mode counter and the multiprocessor count. Everything here is internal to a
 * translation unit (anonymous namespace), so each .cu file gets its own copy.
 */
#ifndef GDN_CUDA_DEVICE_COMMON_CUH
#define GDN_CUDA_DEVICE_COMMON_CUH

#include <stdlib.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../core/backends.h"

namespace
{

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

template <typename T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x)
{
    return __bfloat162float(x);
}

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}

template <typename T> __device__ __forceinline__ float load_elem(const void *base, int64_t i)
{
    return to_float<T>(static_cast<const T *>(base)[i]);
}

template <typename T> __device__ __forceinline__ void store_elem(void *base, int64_t i, float x)
{
    static_cast<T *>(base)[i] = from_float<T>(x);
}

/* Sum over the `width` consecutive lanes that share a row (width a power of two <= 32). */
template <int width> __device__ __forceinline__ float row_sum(float x)
{
#pragma unroll
    for (int offset = width / 2; offset > 0; offset /= 2)
        x += __shfl_xor_sync(0xffffffffu, x, offset);
    return x;
}

/*
 * The (sequence, value head) of this block: grid y = value head, grid z = sequence, so no
 * 64-bit division sits in front of the first load (a division is a ~100-instruction call, and
 * at small N every instruction before the first load is latency). The query/key head uses
 * 32-bit arithmetic: HV and N per launch are < 2^16.
 */
struct block_coords {
    int64_t n, hv, h;
};

__device__ __forceinline__ block_coords block_coords_of(const gdn_problem &p)
{
    block_coords c;
    const unsigned hv = blockIdx.y, H = (unsigned)p.num_q_heads, HV = (unsigned)p.num_v_heads;
    c.n = blockIdx.z;
    c.hv = hv;
    c.h = p.head_map == GDN_HEAD_MAP_TILED ? hv % H : hv / (HV / H);
    return c;
}

/* 1/sqrt(x) and sigmoid without the IEEE division and square-root subroutines (calls that sit
 * on the latency chain at small N); both are within 2 ulp. */
__device__ __forceinline__ float inv_sqrt(float x) { return rsqrtf(x); }
__device__ __forceinline__ float sigmoid_fast(float x) { return __fdividef(1.0f, 1.0f + expf(-x)); }

/*
 * The gate inputs of one (token row, value head), in either form the call gives: the raw
 * projections a, b with A_log and dt_bias, or the precomputed log decay g (float32) and beta
 * (after the sigmoid, activation dtype). Loaded early, turned into e^g and beta late. The four
 * loads are unconditional, from addresses chosen by the form, so that no branch sits between
 * them and the q/k loads (an if/else here let the compiler convert q and k before the branch
 * and hold the gate loads behind them, one more memory round trip, in the one-token kernel of
 * 23f4455; that kernel now leaves both forms' calls to the others, gdn_cuda_one_token_applies).
 */
struct gate_inputs {
    float a, b, A_log, dt_bias; /* precomputed: A_log = g, b = beta (a and dt_bias unused) */
};
template <typename Act>
__device__ __forceinline__ gate_inputs load_gate_inputs(const gdn_problem &p, int64_t row, int64_t hv)
{
    const bool given = p.g != nullptr;
    const float *g_or_A_log = given ? p.g + row * p.g_stride + hv : p.A_log + hv;
    const float *dt_bias = given ? g_or_A_log : p.dt_bias + hv;
    const void *beta_or_b = given ? p.beta : p.b, *a = given ? p.beta : p.a;
    const int64_t b_at = row * (given ? p.beta_stride : p.b_stride) + hv;
    const int64_t a_at = given ? b_at : row * p.a_stride + hv;
    gate_inputs x;
    x.A_log = *g_or_A_log;
    x.dt_bias = *dt_bias;
    x.b = load_elem<Act>(beta_or_b, b_at);
    x.a = load_elem<Act>(a, a_at);
    return x;
}
/* The raw-projection form alone, for kernels specialised to calls without precomputed gates. */
template <typename Act>
__device__ __forceinline__ gate_inputs load_raw_gate_inputs(const gdn_problem &p, int64_t row, int64_t hv)
{
    gate_inputs x;
    x.A_log = p.A_log[hv];
    x.dt_bias = p.dt_bias[hv];
    x.b = load_elem<Act>(p.b, row * p.b_stride + hv);
    x.a = load_elem<Act>(p.a, row * p.a_stride + hv);
    return x;
}
__device__ __forceinline__ float gate_decay(const gdn_problem &p, const gate_inputs &x)
{
    const float raw = gdn_gate_log(x.A_log, x.a, x.dt_bias);
    return expf(p.g ? x.A_log : raw);
}
__device__ __forceinline__ float gate_beta(const gdn_problem &p, const gate_inputs &x)
{
    const float raw = sigmoid_fast(x.b);
    return p.g ? x.b : raw;
}

/* Checked mode: one block of the sequence (the first row block of its first head) counts it. */
__device__ __forceinline__ bool skip_bad_row(const gdn_problem &p)
{
    if (p.bad_index_rows && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0)
        atomicAdd(p.bad_index_rows, 1u);
    return false;
}

template <typename St> struct state_vec;
template <> struct state_vec<float> {
    static constexpr int n = 4;
    static __device__ __forceinline__ void unpack(uint4 raw, float *x)
    {
        x[0] = __uint_as_float(raw.x);
        x[1] = __uint_as_float(raw.y);
        x[2] = __uint_as_float(raw.z);
        x[3] = __uint_as_float(raw.w);
    }
    static __device__ __forceinline__ uint4 pack(const float *x)
    {
        return make_uint4(__float_as_uint(x[0]), __float_as_uint(x[1]), __float_as_uint(x[2]),
                          __float_as_uint(x[3]));
    }
};
template <> struct state_vec<__nv_bfloat16> {
    static constexpr int n = 8;
    static __device__ __forceinline__ float2 pair(unsigned w)
    {
        __nv_bfloat162 h;
        memcpy(&h, &w, sizeof w);
        return __bfloat1622float2(h);
    }
    static __device__ __forceinline__ unsigned word(float lo, float hi)
    {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        unsigned w;
        memcpy(&w, &h, sizeof w);
        return w;
    }
    static __device__ __forceinline__ void unpack(uint4 raw, float *x)
    {
        float2 p0 = pair(raw.x), p1 = pair(raw.y), p2 = pair(raw.z), p3 = pair(raw.w);
        x[0] = p0.x, x[1] = p0.y, x[2] = p1.x, x[3] = p1.y;
        x[4] = p2.x, x[5] = p2.y, x[6] = p3.x, x[7] = p3.y;
    }
    static __device__ __forceinline__ uint4 pack(const float *x)
    {
        return make_uint4(word(x[0], x[1]), word(x[2], x[3]), word(x[4], x[5]), word(x[6], x[7]));
    }
};

/* A device attribute of the current device, read once per device: the library's one cache of
 * the runtime's answers, shared by all threads. Relaxed atomics: threads that race all store
 * the same value. `fallback` where the runtime gives none (and for device numbers past 63). */
template <cudaDeviceAttr ATTR> int device_attribute(int fallback)
{
    static int cached[64];
    int device = 0;
    cudaGetDevice(&device);
    if (device < 0 || device >= 64)
        return fallback;
    int value = __atomic_load_n(&cached[device], __ATOMIC_RELAXED);
    if (value == 0) {
        cudaDeviceGetAttribute(&value, ATTR, device);
        value = value > 0 ? value : fallback;
        __atomic_store_n(&cached[device], value, __ATOMIC_RELAXED);
    }
    return value;
}

/* An environment switch read once ('1' on, '0' off, unset: fallback); racing threads store the
 * same value. */
[[maybe_unused]] int env_switch(const char *name, int *cache, int fallback)
{
    int e = __atomic_load_n(cache, __ATOMIC_RELAXED);
    if (e < 0) {
        const char *s = getenv(name);
        e = s && (s[0] == '0' || s[0] == '1') ? s[0] == '1' : fallback;
        __atomic_store_n(cache, e, __ATOMIC_RELAXED);
    }
    return e;
}

/* A switch that a test hook may force: *forced when it is 0 or 1 (gdn_cuda_*_force_*), else the
 * environment's (env_switch). */
[[maybe_unused]] int forced_switch(const int *forced, const char *name, int *cache, int fallback)
{
    const int f = __atomic_load_n(forced, __ATOMIC_RELAXED);
    return f >= 0 ? f != 0 : env_switch(name, cache, fallback);
}

/* Multiprocessors of the current device (132 when the runtime cannot say). */
[[maybe_unused]] int sm_count(void) { return device_attribute<cudaDevAttrMultiProcessorCount>(132); }

/* Compute capability (major) of the current device (0 when the runtime cannot say). */
[[maybe_unused]] int cc_major(void) { return device_attribute<cudaDevAttrComputeCapabilityMajor>(0); }

/* Programmatic dependent launch (sm_90), kernel side: wait until the previous kernel of the stream
 * has finished and its writes are visible, then let the next kernel begin launching. No-ops
 * without the launch attribute. */
__device__ __forceinline__ void wait_for_prerequisite(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void let_dependents_launch(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Both halves, in this order. Used apart by a kernel that runs beside the one before it (a
 * mixed call's short sequences beside the chunked kernel, decode.cu): the chunked kernel lets
 * the next one launch at once, and one thread of the next kernel waits for it at the end, so
 * the stream's next work still follows both. */
__device__ __forceinline__ void wait_for_producer(void)
{
    wait_for_prerequisite();
    let_dependents_launch();
}

/* Launch side: `kernel` launched with programmatic stream serialization, so that it may start
 * while the previous kernel on the stream is still running (it must call wait_for_producer
 * before reading what that kernel wrote). */
template <typename... Params>
cudaError_t launch_programmatic(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                cudaStream_t stream, Params... params)
{
    cudaLaunchConfig_t config = {};
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    config.attrs = attr;
    config.numAttrs = 1;
    return cudaLaunchKernelEx(&config, kernel, params...);
}

} // namespace

#endif
