/*
 * Pieces shared by the kernels that stream vk state rows of K = 128 in 16-byte lane vectors
 * (decode_one_token.cu, decode_multi_token.cu): activation vectors, the halving reduction of a
 * lane group's partial sums, explicit 16-byte stores and cp.async copies.
 */
#ifndef GDN_CUDA_VK128_ROWS_CUH
#define GDN_CUDA_VK128_ROWS_CUH

#include "device_common.cuh"

namespace
{

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kRowK = 128;

/* Activation vector of VEC elements at `at` (VEC * sizeof(Act) bytes, aligned to that since
 * the row offset is a multiple of VEC and q/k rows start at multiples of K = 128). */
template <typename Act, int VEC> __device__ __forceinline__ void load_act_vec(const Act *at, float *x)
{
    if constexpr (sizeof(Act) * VEC == 16) {
        const uint4 raw = *reinterpret_cast<const uint4 *>(at);
        const Act *e = reinterpret_cast<const Act *>(&raw);
#pragma unroll
        for (int i = 0; i < VEC; i++)
            x[i] = to_float<Act>(e[i]);
    } else if constexpr (sizeof(Act) * VEC == 8) {
        const uint2 raw = *reinterpret_cast<const uint2 *>(at);
        const Act *e = reinterpret_cast<const Act *>(&raw);
#pragma unroll
        for (int i = 0; i < VEC; i++)
            x[i] = to_float<Act>(e[i]);
    } else { /* 32 bytes: f32 activations with a bf16 state */
        const uint4 lo = *reinterpret_cast<const uint4 *>(at),
                    hi = *reinterpret_cast<const uint4 *>(at + VEC / 2);
        const Act *e0 = reinterpret_cast<const Act *>(&lo), *e1 = reinterpret_cast<const Act *>(&hi);
#pragma unroll
        for (int i = 0; i < VEC / 2; i++) {
            x[i] = to_float<Act>(e0[i]);
            x[i + VEC / 2] = to_float<Act>(e1[i]);
        }
    }
}

/*
 * Halving reduction of M values over the G lanes of a group (M a power of two, 2 <= M <= G).
 * On return x[0] of lane l is the group's sum of value (l % G) / (G / M).
 */
template <int G, int M> __device__ __forceinline__ float reduce_scatter(float (&x)[M], int lane)
{
#pragma unroll
    for (int h = M / 2, offset = G / 2; h >= 1; h /= 2, offset /= 2) {
        const bool upper = (lane & offset) != 0;
#pragma unroll
        for (int i = 0; i < h; i++) {
            const float send = upper ? x[i] : x[i + h];
            const float keep = upper ? x[i + h] : x[i];
            x[i] = keep + __shfl_xor_sync(kFullMask, send, offset);
        }
    }
    return row_sum<G / M>(x[0]); /* the lanes still holding parts of the same value */
}

/*
 * The row order that makes reduce_scatter's halving steps over rows select-free: a lane whose
 * row slot r holds row r ^ rows_swizzle<G, M>(lane) (M = 2 rows' sums, S.k and S.q, a row) has,
 * at every halving step over rows, the half it keeps in x[0 .. h) and the half its partner
 * keeps in x[h .. 2h), as the partner has the reverse; so both send x[i + h] and keep x[i],
 * with no select of which is which (two selects a value sent, ~12 of ~100-170 instructions a
 * token of four rows). The address of each row slot changes, nothing else.
 */
template <int G, int M> __device__ __forceinline__ int rows_swizzle(int lane)
{
    return (lane % G) / (2 * G / M);
}

/* reduce_scatter for rows held in rows_swizzle order: the same result in the same lanes. */
template <int G, int M> __device__ __forceinline__ float reduce_scatter_swizzled(float (&x)[M], int lane)
{
#pragma unroll
    for (int h = M / 2, offset = G / 2; h >= 2; h /= 2, offset /= 2) {
#pragma unroll
        for (int i = 0; i < h; i++)
            x[i] += __shfl_xor_sync(kFullMask, x[i + h], offset);
    }
    constexpr int last = G / M; /* S.k against S.q: the same order in every lane */
    const bool upper = (lane & last) != 0;
    const float send = upper ? x[0] : x[1];
    const float keep = upper ? x[1] : x[0];
    return row_sum<G / M>(keep + __shfl_xor_sync(kFullMask, send, last));
}

/* One 16-byte store. Written out because the compiler split some of the row stores into four
 * 4-byte stores (seen in the sm_90a SASS), four times the store instructions. */
__device__ __forceinline__ void store16(void *at, uint4 x)
{
    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(at), "r"(x.x), "r"(x.y), "r"(x.z),
                 "r"(x.w));
}

/* The same with the streaming cache hint (.cs: evict first, the line is touched once), for
 * state tiles that are read once and written once. */
__device__ __forceinline__ uint4 load16_streaming(const void *at)
{
    uint4 x;
    asm volatile("ld.global.cs.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(x.x), "=r"(x.y), "=r"(x.z), "=r"(x.w)
                 : "l"(at));
    return x;
}
__device__ __forceinline__ void store16_streaming(void *at, uint4 x)
{
    asm volatile("st.global.cs.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(at), "r"(x.x), "r"(x.y), "r"(x.z),
                 "r"(x.w));
}
/* store16_streaming where STREAMING, else store16 */
template <bool STREAMING> __device__ __forceinline__ void store16_hinted(void *at, uint4 x)
{
    if constexpr (STREAMING)
        store16_streaming(at, x);
    else
        store16(at, x);
}

/* The cache hint on a state load (row_batches::load and stage): none, .cs (load16_streaming;
 * cp.async has no such form and takes none), or an L2 evict-first policy. */
enum class load_hint { none, streaming, evict_first };

/* An L2 policy that marks the lines a load brings in evict-first (createpolicy, sm_80+), for
 * state read once: the ld.global.cs hint of load16_streaming does not exist for cp.async. */
__device__ __forceinline__ uint64_t l2_evict_first_policy(void)
{
    uint64_t policy;
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    return policy;
}
__device__ __forceinline__ uint4 load16_evict_first(const void *at, uint64_t policy)
{
    uint4 x;
    asm volatile("ld.global.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
                 : "=r"(x.x), "=r"(x.y), "=r"(x.z), "=r"(x.w)
                 : "l"(at), "l"(policy));
    return x;
}

/* cp.async (sm_80+): 16 bytes global -> shared without passing through registers; `size` 0
 * zero-fills. The bytes a warp keeps in flight then cost shared memory instead of registers. */
__device__ __forceinline__ void copy_async16(uint4 *smem, const void *gmem, bool valid)
{
    const unsigned at = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(at), "l"(gmem), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void copy_async16_evict_first(uint4 *smem, const void *gmem, bool valid,
                                                         uint64_t policy)
{
    const unsigned at = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;" ::"r"(at), "l"(gmem),
                 "r"(valid ? 16 : 0), "l"(policy)
                 : "memory");
}
__device__ __forceinline__ void copy_async_commit(void)
{
    asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int PENDING> __device__ __forceinline__ void copy_async_wait(void)
{
    asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
}

/* GDN_L2_PREFETCH=1: each warp of both row kernels asks the L2 for the rest of its rows (the
 * batches it does not load at once) in one bulk prefetch, right after its first loads. Not the
 * default: built for the next GPU session (bench/NOTES.md, seventh session: the multi-token
 * kernel's warps wait on loads with too few bytes in flight, and neither more warps nor a
 * deeper ring bought them; this asks for the bytes without registers or shared memory). */
#ifndef GDN_L2_PREFETCH
#define GDN_L2_PREFETCH 0
#endif

/* Asks the L2 for `bytes` (a multiple of 16) of global memory from `at` (16-byte aligned),
 * holding no register or shared memory while they come (sm_90's bulk prefetch; nothing
 * before sm_90). */
__device__ __forceinline__ void prefetch_l2_bulk(const void *at, uint32_t bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(at), "r"(bytes) : "memory");
#else
    (void)at, (void)bytes;
#endif
}

/*
 * The batches of state rows one warp streams (both row kernels): slot j of batch b holds
 * row warp_row0 + b * WR + (j / CH) * P + hw of the tile at src, 16 bytes at column
 * col + (j % CH) * 128 / CH (CH: the 16-byte pieces of a row each lane holds). Rows past V read
 * as zeros. load(): the batch into registers; stage(): into this warp's cp.async
 * ring of RING batches (one commit group per batch, an empty group past the last batch);
 * staged(): a landed batch back from the ring (each lane reads only the pieces it copied).
 */
template <typename St, int SLOTS, int BATCHES, int RING, int P, int WR, int CH = 1> struct row_batches {
    const St *src;
    uint4 *ring; /* this warp's: [RING][SLOTS][32 lanes] */
    int64_t warp_row0, V;
    int hw, col, lane;
    int swizzle; /* row slot r of this lane holds row r ^ swizzle of a batch (rows_swizzle); 0: in order */

    __device__ __forceinline__ int64_t row_of(int j) const { return ((j / CH) ^ swizzle) * P; }
    static __device__ __forceinline__ int col_of(int j) { return (j % CH) * (kRowK / CH); }

    template <load_hint HINT = load_hint::none>
    __device__ __forceinline__ void load(int b, uint4 (&dst)[SLOTS]) const
    {
        const uint64_t policy = HINT == load_hint::evict_first ? l2_evict_first_policy() : 0;
#pragma unroll
        for (int j = 0; j < SLOTS; j++) {
            const int64_t row = warp_row0 + b * WR + row_of(j) + hw;
            const St *at = src + row * kRowK + col + col_of(j);
            if constexpr (HINT == load_hint::evict_first)
                dst[j] = row < V ? load16_evict_first(at, policy) : make_uint4(0, 0, 0, 0);
            else if constexpr (HINT == load_hint::streaming)
                dst[j] = row < V ? load16_streaming(at) : make_uint4(0, 0, 0, 0);
            else
                dst[j] = row < V ? *reinterpret_cast<const uint4 *>(at) : make_uint4(0, 0, 0, 0);
        }
    }

    template <load_hint HINT = load_hint::none> __device__ __forceinline__ void stage(int b) const
    {
        constexpr bool EVICT_FIRST = HINT == load_hint::evict_first;
        if (b < BATCHES) {
            const uint64_t policy = EVICT_FIRST ? l2_evict_first_policy() : 0;
#pragma unroll
            for (int j = 0; j < SLOTS; j++) {
                const int64_t row = warp_row0 + b * WR + row_of(j) + hw;
                uint4 *const to = ring + ((b % RING) * SLOTS + j) * 32 + lane;
                const St *const from = row < V ? src + row * kRowK + col + col_of(j) : src;
                if constexpr (EVICT_FIRST)
                    copy_async16_evict_first(to, from, row < V, policy);
                else
                    copy_async16(to, from, row < V);
            }
        }
        copy_async_commit();
    }

    /* Batches first..BATCHES-1 (consecutive rows, past V left out; none when first >= BATCHES)
     * asked of the L2 at once; for one lane of the warp to call (GDN_L2_PREFETCH). */
    __device__ __forceinline__ void prefetch_l2(int first) const
    {
        const int64_t row0 = warp_row0 + (int64_t)first * WR, end = warp_row0 + (int64_t)BATCHES * WR;
        const int64_t rows = (end < V ? end : V) - row0;
        if (rows > 0)
            prefetch_l2_bulk(src + row0 * kRowK, (uint32_t)(rows * kRowK * (int64_t)sizeof(St)));
    }

    __device__ __forceinline__ void staged(int b, uint4 (&dst)[SLOTS]) const
    {
#pragma unroll
        for (int j = 0; j < SLOTS; j++)
            dst[j] = ring[((b % RING) * SLOTS + j) * 32 + lane];
    }
};

} // namespace

#endif
