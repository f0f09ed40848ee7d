/*
 * cuda backend: decode, one token per sequence.
 *
 * Design. Decode is memory-bound: each (sequence, value head) tile of V x K state is read once
 * and written once, and each state element costs 4 FLOPs (two dot products and one update),
 * so the kernel's whole job is to stream the pool at copy bandwidth. Rows of a tile (value
 * channels) are independent given q, k, g and beta, because
 *     u_j = beta (v_j - e^g S_j.k)      o_j = e^g S_j.q + u_j (k.q)      S'_j = e^g S_j + u_j k
 * all come from the old row S_j. So a block owns a (sequence, head, row range) and nothing is
 * shared between blocks: the grid is (N*HV) x (V / rows per block), enough blocks to fill
 * every SM even at N = 1.
 *
 * Fast path (layout vk, K = 128): 128 threads, 8 lanes per row, 16 rows per block. Lane l of a
 * row loads 16-byte vectors at elements c*8*VEC + l*VEC, so each load instruction of the 8
 * lanes covers one contiguous 128-byte span (coalesced) and the matching q/k reads from shared
 * memory are conflict-free. The state loads are issued first, before q and k are fetched and
 * l2-normalised (block reduction), so their latency overlaps that work. Row sums reduce over the
 * 8 lanes with three shuffles each. Per thread: 64 B (f32) or 32 B (bf16) of state in flight.
 *
 * Generic paths (any K, V up to GDN_CUDA_MAX_HEAD_DIM; vk and kv): scalar, coalesced along the
 * contiguous dimension, rows re-read for the update (an L1/L2 hit). Correct for every size the
 * API accepts; not tuned.
 *
 * Slot indices stay in device memory: a row whose read or write slot is >= num_slots is
 * skipped entirely (nothing written), so a bad index can never write outside the pool.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../core/backends.h"

namespace {

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

struct head_scalars {
    float decay, beta, kq; /* exp(g), sigmoid(b), k.q after normalisation and scale */
};

/*
 * Block-wide: loads q and k of row n's head into shared memory (l2-normalised if asked, q
 * scaled) and computes the head's scalars. Every thread of the block must call it.
 * `sums` is shared scratch of 3 * kWarps floats.
 */
template <typename Act>
__device__ head_scalars load_head(const gdn_problem &p, int64_t n, int64_t hv, int64_t h, float *sq, float *sk,
                                  float *sums)
{
    const int64_t K = p.head_dim_k;
    const int64_t q_at = n * p.q_stride + h * K, k_at = n * p.k_stride + h * K;
    float qq = 0.0f, kk = 0.0f, qk = 0.0f;
    for (int64_t i = threadIdx.x; i < K; i += blockDim.x) {
        float qi = load_elem<Act>(p.q, q_at + i), ki = load_elem<Act>(p.k, k_at + i);
        sq[i] = qi;
        sk[i] = ki;
        qq += qi * qi;
        kk += ki * ki;
        qk += qi * ki;
    }
    qq = row_sum<32>(qq);
    kk = row_sum<32>(kk);
    qk = row_sum<32>(qk);
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) {
        sums[3 * warp] = qq;
        sums[3 * warp + 1] = kk;
        sums[3 * warp + 2] = qk;
    }
    __syncthreads();
    qq = kk = qk = 0.0f;
    for (int w = 0; w < kWarps; w++) {
        qq += sums[3 * w];
        kk += sums[3 * w + 1];
        qk += sums[3 * w + 2];
    }
    const float inv_q = p.qk_l2norm ? inv_sqrt(qq + GDN_L2NORM_EPS) : 1.0f;
    const float inv_k = p.qk_l2norm ? inv_sqrt(kk + GDN_L2NORM_EPS) : 1.0f;
    const float q_factor = inv_q * p.scale;
    for (int64_t i = threadIdx.x; i < K; i += blockDim.x) { /* each thread rescales its own i */
        sq[i] *= q_factor;
        sk[i] *= inv_k;
    }
    const float a = load_elem<Act>(p.a, n * p.a_stride + hv);
    const float b = load_elem<Act>(p.b, n * p.b_stride + hv);
    head_scalars s;
    s.decay = expf(gdn_gate_log(p.A_log[hv], a, p.dt_bias[hv]));
    s.beta = sigmoid_fast(b);
    s.kq = qk * q_factor * inv_k;
    __syncthreads();
    return s;
}

/* Resolves row n's slots; false when the block has nothing to compute (padding or bad slot). */
template <typename Act>
__device__ bool resolve_slots(const gdn_problem &p, int64_t n, int64_t hv, int64_t row0,
                              int64_t rows, int64_t *read, int64_t *write)
{
    *read = gdn_read_slot(&p, n);
    *write = gdn_write_slot(&p, n);
    if (*read < 0) { /* padding row: zeros out, state untouched */
        const int64_t out_at = n * p.out_stride + hv * p.head_dim_v;
        for (int64_t j = row0 + threadIdx.x; j < row0 + rows && j < p.head_dim_v; j += blockDim.x)
            store_elem<Act>(p.out, out_at + j, 0.0f);
        return false;
    }
    return *read < p.num_slots && *write < p.num_slots;
}

/* ---- fast path: vk layout, K = 128 -------------------------------------------------------- */

constexpr int kFastK = 128;
constexpr int kLanesPerRow = 8;
constexpr int kFastRows = kThreads / kLanesPerRow;

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

/*
 * One block: 128 threads = 16 row groups of 8 lanes; each thread owns ROWS rows (row group g
 * owns rows g, g + 16, ...), so a block covers 16 * ROWS rows of one (sequence, head) tile.
 * ROWS trades parallelism at small N (ROWS = 1: most blocks) against per-block overhead and
 * bytes in flight at large N (ROWS = 4: 4 * 64 B of f32 state per thread).
 *
 * Latency chain, which sets the time at small N: every load that does not depend on the slot
 * (slot indices, q, k, v, a, b, A_log, dt_bias) is issued first, together; then the state
 * loads, which need the slot; then one barrier for the q/k norms. q and k stay raw in shared
 * memory and the norms are folded into the row sums and the update.
 */
#ifndef GDN_STREAMING_HINTS
#define GDN_STREAMING_HINTS 0
#endif
#ifndef GDN_USE_PDL
#define GDN_USE_PDL 0
#endif

/* 16-byte state accesses. The state is touched once per call, so "evict first" hints can keep
 * it from displacing the activations in L2 (GDN_STREAMING_HINTS; measured in bench/NOTES.md). */
template <typename St> __device__ __forceinline__ uint4 load_state_vec(const St *at)
{
    const uint4 *p = reinterpret_cast<const uint4 *>(at);
    return GDN_STREAMING_HINTS ? __ldcs(p) : *p;
}

template <typename St> __device__ __forceinline__ void store_state_vec(St *at, uint4 x)
{
    uint4 *p = reinterpret_cast<uint4 *>(at);
    if (GDN_STREAMING_HINTS)
        __stcs(p, x);
    else
        *p = x;
}

/* Programmatic dependent launch (sm_90): the kernel may be launched while the previous kernel
 * on the stream is still running; it waits here, before reading anything, until that kernel has
 * finished and its writes are visible, and lets the next kernel start launching right away.
 * Without the launch attribute both instructions are no-ops. */
__device__ __forceinline__ void wait_for_previous_kernel(void)
{
#if GDN_USE_PDL && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

template <typename Act, typename St, int ROWS>
__global__ void __launch_bounds__(kThreads) decode_vk_k128(const __grid_constant__ gdn_problem p)
{
    constexpr int VEC = state_vec<St>::n;
    constexpr int CHUNKS = kFastK / (kLanesPerRow * VEC);
    constexpr int BLOCK_ROWS = kFastRows * ROWS;
    __shared__ __align__(16) float sq[kFastK];
    __shared__ __align__(16) float sk[kFastK];
    __shared__ float sums[3 * kWarps];

    const int64_t V = p.head_dim_v;
    const block_coords bc = block_coords_of(p);
    const int64_t n = bc.n, hv = bc.hv, h = bc.h;
    const int64_t row0 = (int64_t)blockIdx.x * BLOCK_ROWS + threadIdx.x / kLanesPerRow;
    const int lane = threadIdx.x % kLanesPerRow;

    /* 1. Every load that does not depend on the slot. */
    wait_for_previous_kernel();
    const int64_t read = gdn_read_slot(&p, n), write = gdn_write_slot(&p, n);
    const float q_i = load_elem<Act>(p.q, n * p.q_stride + h * kFastK + threadIdx.x);
    const float k_i = load_elem<Act>(p.k, n * p.k_stride + h * kFastK + threadIdx.x);
    float v_row[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int64_t row = row0 + r * kFastRows;
        v_row[r] = row < V ? load_elem<Act>(p.v, n * p.v_stride + hv * V + row) : 0.0f;
    }
    const float a = load_elem<Act>(p.a, n * p.a_stride + hv);
    const float b = load_elem<Act>(p.b, n * p.b_stride + hv);
    const float A_log = p.A_log[hv], dt_bias = p.dt_bias[hv];

    const int64_t out_at = n * p.out_stride + hv * V;
    if (read < 0) { /* padding row: zeros out, state untouched */
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            const int64_t row = row0 + r * kFastRows;
            if (row < V && lane == 0)
                store_elem<Act>(p.out, out_at + row, 0.0f);
        }
        return;
    }
    if (read >= p.num_slots || write >= p.num_slots)
        return;

    /* 2. The state rows. */
    uint4 raw[ROWS][CHUNKS];
    const St *src = static_cast<const St *>(p.state_pool) + gdn_tile_offset(&p, read, hv) + lane * VEC;
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int64_t row = row0 + r * kFastRows;
        if (row < V) {
#pragma unroll
            for (int c = 0; c < CHUNKS; c++)
                raw[r][c] = load_state_vec(src + row * kFastK + c * kLanesPerRow * VEC);
        }
    }

    /* 3. q/k norms: one block reduction while the state loads are in flight. */
    sq[threadIdx.x] = q_i;
    sk[threadIdx.x] = k_i;
    float qq = row_sum<32>(q_i * q_i), kk = row_sum<32>(k_i * k_i), qk = row_sum<32>(q_i * k_i);
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0) {
        sums[3 * warp] = qq;
        sums[3 * warp + 1] = kk;
        sums[3 * warp + 2] = qk;
    }
    __syncthreads();
    qq = kk = qk = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; w++) {
        qq += sums[3 * w];
        kk += sums[3 * w + 1];
        qk += sums[3 * w + 2];
    }
    const float inv_k = p.qk_l2norm ? inv_sqrt(kk + GDN_L2NORM_EPS) : 1.0f;
    const float q_factor = (p.qk_l2norm ? inv_sqrt(qq + GDN_L2NORM_EPS) : 1.0f) * p.scale;
    const float kq = qk * q_factor * inv_k;
    const float decay = expf(gdn_gate_log(A_log, a, dt_bias));
    const float beta = sigmoid_fast(b);
    St *dst = static_cast<St *>(p.state_pool) + (write < 0 ? 0 : gdn_tile_offset(&p, write, hv)) + lane * VEC;

    /* 4. Per row: the two sums, the delta, the output, the new row. */
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int64_t row = row0 + r * kFastRows;
        if (row >= V)
            break;
        float s[CHUNKS * VEC];
        float dot_k = 0.0f, dot_q = 0.0f;
#pragma unroll
        for (int c = 0; c < CHUNKS; c++) {
            state_vec<St>::unpack(raw[r][c], s + c * VEC);
            const int at = c * kLanesPerRow * VEC + lane * VEC;
#pragma unroll
            for (int e = 0; e < VEC; e += 4) {
                const float4 kv = *reinterpret_cast<const float4 *>(sk + at + e);
                const float4 qv = *reinterpret_cast<const float4 *>(sq + at + e);
                const float *x = s + c * VEC + e;
                dot_k += x[0] * kv.x + x[1] * kv.y + x[2] * kv.z + x[3] * kv.w;
                dot_q += x[0] * qv.x + x[1] * qv.y + x[2] * qv.z + x[3] * qv.w;
            }
        }
        dot_k = row_sum<kLanesPerRow>(dot_k) * inv_k;
        dot_q = row_sum<kLanesPerRow>(dot_q) * q_factor;
        const float u = beta * (v_row[r] - decay * dot_k);
        if (lane == 0)
            store_elem<Act>(p.out, out_at + row, decay * dot_q + u * kq);
        if (write < 0)
            continue;
        const float u_k = u * inv_k; /* S' = decay S + u k_hat, k_hat = inv_k k */
#pragma unroll
        for (int c = 0; c < CHUNKS; c++) {
            const int at = c * kLanesPerRow * VEC + lane * VEC;
            float next[VEC];
#pragma unroll
            for (int e = 0; e < VEC; e++)
                next[e] = decay * s[c * VEC + e] + u_k * sk[at + e];
            store_state_vec(dst + row * kFastK + c * kLanesPerRow * VEC, state_vec<St>::pack(next));
        }
    }
}

/* ---- generic paths ------------------------------------------------------------------------- */

constexpr int kGenericVkRows = 16; /* rows per block: 4 per warp */
constexpr int kGenericKvCols = 32; /* value columns per block: one per lane */

/* vk, any K: a warp per row, lanes along K. */
template <typename Act, typename St>
__global__ void __launch_bounds__(kThreads) decode_vk_generic(const __grid_constant__ gdn_problem p)
{
    extern __shared__ float smem[];
    const int64_t K = p.head_dim_k, V = p.head_dim_v;
    float *sq = smem, *sk = smem + K, *sums = smem + 2 * K;
    const block_coords bc = block_coords_of(p);
    const int64_t n = bc.n, hv = bc.hv;
    const int64_t row0 = (int64_t)blockIdx.x * kGenericVkRows;
    int64_t read, write;
    if (!resolve_slots<Act>(p, n, hv, row0, kGenericVkRows, &read, &write))
        return;
    const head_scalars hs = load_head<Act>(p, n, hv, bc.h, sq, sk, sums);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const St *src = static_cast<const St *>(p.state_pool) + gdn_tile_offset(&p, read, hv);
    St *dst = static_cast<St *>(p.state_pool) + (write < 0 ? 0 : gdn_tile_offset(&p, write, hv));
    for (int64_t row = row0 + warp; row < row0 + kGenericVkRows && row < V; row += kWarps) {
        float dot_k = 0.0f, dot_q = 0.0f;
        for (int64_t i = lane; i < K; i += 32) {
            const float x = load_elem<St>(src, row * K + i);
            dot_k += x * sk[i];
            dot_q += x * sq[i];
        }
        dot_k = row_sum<32>(dot_k);
        dot_q = row_sum<32>(dot_q);
        const float u = hs.beta * (load_elem<Act>(p.v, n * p.v_stride + hv * V + row) - hs.decay * dot_k);
        if (lane == 0)
            store_elem<Act>(p.out, n * p.out_stride + hv * V + row, hs.decay * dot_q + u * hs.kq);
        if (write < 0)
            continue;
        /* All lanes finished reading this row before any writes it (the shuffles above). */
        for (int64_t i = lane; i < K; i += 32)
            store_elem<St>(dst, row * K + i, hs.decay * load_elem<St>(src, row * K + i) + u * sk[i]);
    }
}

/* kv, any K and V: lanes along V (one column each), warps split K, reduced in shared memory. */
template <typename Act, typename St>
__global__ void __launch_bounds__(kThreads) decode_kv_generic(const __grid_constant__ gdn_problem p)
{
    extern __shared__ float smem[];
    const int64_t K = p.head_dim_k, V = p.head_dim_v;
    float *sq = smem, *sk = smem + K, *sums = smem + 2 * K;
    float *partial = sums + 3 * kWarps; /* [kWarps][2][32] */
    const block_coords bc = block_coords_of(p);
    const int64_t n = bc.n, hv = bc.hv;
    const int64_t col0 = (int64_t)blockIdx.x * kGenericKvCols;
    int64_t read, write;
    if (!resolve_slots<Act>(p, n, hv, col0, kGenericKvCols, &read, &write))
        return;
    const head_scalars hs = load_head<Act>(p, n, hv, bc.h, sq, sk, sums);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t col = col0 + lane;
    const bool has_col = col < V;
    const St *src = static_cast<const St *>(p.state_pool) + gdn_tile_offset(&p, read, hv);
    St *dst = static_cast<St *>(p.state_pool) + (write < 0 ? 0 : gdn_tile_offset(&p, write, hv));
    float dot_k = 0.0f, dot_q = 0.0f;
    if (has_col) {
        for (int64_t i = warp; i < K; i += kWarps) {
            const float x = load_elem<St>(src, i * V + col);
            dot_k += x * sk[i];
            dot_q += x * sq[i];
        }
    }
    partial[(warp * 2) * 32 + lane] = dot_k;
    partial[(warp * 2 + 1) * 32 + lane] = dot_q;
    __syncthreads(); /* every partial sum is in, and every read of the old state is done */
    dot_k = dot_q = 0.0f;
    for (int w = 0; w < kWarps; w++) {
        dot_k += partial[(w * 2) * 32 + lane];
        dot_q += partial[(w * 2 + 1) * 32 + lane];
    }
    if (!has_col)
        return;
    const float u = hs.beta * (load_elem<Act>(p.v, n * p.v_stride + hv * V + col) - hs.decay * dot_k);
    if (warp == 0)
        store_elem<Act>(p.out, n * p.out_stride + hv * V + col, hs.decay * dot_q + u * hs.kq);
    if (write < 0)
        return;
    for (int64_t i = warp; i < K; i += kWarps)
        store_elem<St>(dst, i * V + col, hs.decay * load_elem<St>(src, i * V + col) + u * sk[i]);
}

/* ---- launch -------------------------------------------------------------------------------- */

/* Multiprocessors of the current device, read once per device. */
int sm_count(void)
{
    static int cached[64];
    int device = 0;
    cudaGetDevice(&device);
    if (device < 0 || device >= 64)
        return 132;
    if (cached[device] == 0) { /* benign race: every thread stores the same value */
        int count = 0;
        cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
        cached[device] = count > 0 ? count : 132;
    }
    return cached[device];
}

#ifndef GDN_FAST_MAX_ROWS
#define GDN_FAST_MAX_ROWS 4
#endif

template <typename Act, typename St, int ROWS> void launch_fast(const gdn_problem &p, cudaStream_t stream)
{
    const int64_t block_rows = (int64_t)kFastRows * ROWS;
    dim3 grid((unsigned)((p.head_dim_v + block_rows - 1) / block_rows), (unsigned)p.num_v_heads,
              (unsigned)p.num_seqs);
#if GDN_USE_PDL
    cudaLaunchConfig_t config = {};
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    config.gridDim = grid;
    config.blockDim = dim3(kThreads);
    config.stream = stream;
    config.attrs = attr;
    config.numAttrs = 1;
    cudaLaunchKernelEx(&config, decode_vk_k128<Act, St, ROWS>, p);
#else
    decode_vk_k128<Act, St, ROWS><<<grid, kThreads, 0, stream>>>(p);
#endif
}

template <typename Act, typename St> cudaError_t launch(const gdn_problem &p, cudaStream_t stream)
{
    const int64_t V = p.head_dim_v, K = p.head_dim_k, HV = p.num_v_heads, N = p.num_seqs;
    if (p.state_layout == GDN_LAYOUT_VK && K == kFastK) {
        /* The most rows per thread that still leaves 8 blocks per multiprocessor. */
        const int64_t rows = N * HV * V, enough = 8LL * sm_count() * kFastRows;
        if (GDN_FAST_MAX_ROWS >= 4 && rows >= 4 * enough)
            launch_fast<Act, St, 4>(p, stream);
        else if (GDN_FAST_MAX_ROWS >= 2 && rows >= 2 * enough)
            launch_fast<Act, St, 2>(p, stream);
        else
            launch_fast<Act, St, 1>(p, stream);
    } else if (p.state_layout == GDN_LAYOUT_VK) {
        dim3 grid((unsigned)((V + kGenericVkRows - 1) / kGenericVkRows), (unsigned)HV, (unsigned)N);
        size_t smem = (size_t)(2 * K + 3 * kWarps) * sizeof(float);
        decode_vk_generic<Act, St><<<grid, kThreads, smem, stream>>>(p);
    } else {
        dim3 grid((unsigned)((V + kGenericKvCols - 1) / kGenericKvCols), (unsigned)HV, (unsigned)N);
        size_t smem = (size_t)(2 * K + 3 * kWarps + 2 * kWarps * 32) * sizeof(float);
        decode_kv_generic<Act, St><<<grid, kThreads, smem, stream>>>(p);
    }
    return cudaGetLastError();
}

template <typename Act> cudaError_t launch_act(const gdn_problem &p, cudaStream_t stream)
{
    return p.state_dtype == GDN_DTYPE_BF16 ? launch<Act, __nv_bfloat16>(p, stream)
                                           : launch<Act, float>(p, stream);
}


/* Grid y and z (value heads, sequences) are limited to 65535 per launch. */
constexpr int64_t kMaxGridYZ = 65535;

/* The rows [first, first + count) of p as a problem of their own. */
gdn_problem rows_of(const gdn_problem &p, int64_t first, int64_t count)
{
    gdn_problem c = p;
    const size_t act = p.act_dtype == GDN_DTYPE_F32 ? 4 : 2, idx = p.index_dtype == GDN_DTYPE_I32 ? 4 : 8;
    c.num_seqs = count;
    c.q = static_cast<const char *>(p.q) + first * p.q_stride * act;
    c.k = static_cast<const char *>(p.k) + first * p.k_stride * act;
    c.v = static_cast<const char *>(p.v) + first * p.v_stride * act;
    c.a = static_cast<const char *>(p.a) + first * p.a_stride * act;
    c.b = static_cast<const char *>(p.b) + first * p.b_stride * act;
    c.out = static_cast<char *>(p.out) + first * p.out_stride * act;
    c.read_slots = static_cast<const char *>(p.read_slots) + first * idx;
    if (p.write_slots)
        c.write_slots = static_cast<const char *>(p.write_slots) + first * idx;
    return c;
}

cudaError_t launch_rows(const gdn_problem &p, cudaStream_t stream)
{
    switch (p.act_dtype) {
    case GDN_DTYPE_F16: return launch_act<__half>(p, stream);
    case GDN_DTYPE_BF16: return launch_act<__nv_bfloat16>(p, stream);
    default: return launch_act<float>(p, stream);
    }
}

} // namespace

extern "C" gdn_status gdn_cuda_decode(const gdn_problem *p)
{
    if (p->num_v_heads > kMaxGridYZ)
        return gdn_fail(GDN_ERR_INVALID_SHAPE, "num_v_heads = %lld exceeds the cuda backend's limit of %lld",
                        (long long)p->num_v_heads, (long long)kMaxGridYZ);
    /* Launch on the device that holds the pool, whatever device the calling thread has current. */
    int pool_device = -1, current = -1;
    gdn_cuda_memory_kind(p->state_pool, &pool_device);
    cudaGetDevice(&current);
    const bool switch_device = pool_device >= 0 && pool_device != current;
    if (switch_device)
        cudaSetDevice(pool_device);
    cudaStream_t stream = static_cast<cudaStream_t>(p->stream);
    cudaError_t err = cudaSuccess;
    for (int64_t first = 0; first < p->num_seqs && err == cudaSuccess; first += kMaxGridYZ) {
        const int64_t count = p->num_seqs - first < kMaxGridYZ ? p->num_seqs - first : kMaxGridYZ;
        err = launch_rows(rows_of(*p, first, count), stream);
    }
    if (switch_device)
        cudaSetDevice(current);
    if (err != cudaSuccess)
        return gdn_fail(GDN_ERR_DEVICE, "decode kernel launch failed: %s", cudaGetErrorString(err));
    return GDN_OK;
}
