/*
 * Hopper's warpgroup MMA (wgmma, sm_90a) for bf16 operands and float32 accumulators, m64n32k16,
 * with the operands read from shared memory in the core-matrix layout without swizzle: 8 x 8
 * blocks of 128 contiguous bytes (8 rows of 16 bytes), row-major over (row / 8, column / 8) of
 * a K-major [rows][KD] tile. A descriptor's leading offset (between core matrices along K) is
 * then 128 bytes and its stride offset (along M or N) KD / 8 * 128 bytes; a k-step of 16 moves
 * the start by two core matrices, 256 bytes. tests/gpu/wgmma_check.cu holds these helpers to a
 * plain product.
 *
 * The accumulator of a warpgroup: warp w (0-3) holds rows 16 w + g and 16 w + g + 8 (g = lane / 4),
 * element 4 j + 2 h + e at row 16 w + g + 8 h, column 8 j + 2 (lane % 4) + e. An A fragment in
 * registers is warp w's rows 16 w.. as mma.m16n8k16's A fragment.
 *
 * Outside sm_90a code (other architectures of a fat binary) the instructions compile to nothing
 * and the products trap: the host chooses them only on compute capability 9.0.
 */
#ifndef GDN_CUDA_WGMMA_CUH
#define GDN_CUDA_WGMMA_CUH

#include <stdint.h>

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GDN_WGMMA 1
#endif

/* Byte offset of element (r, c) of a [rows][KD] bf16 tile in the core-matrix layout. */
template <int KD> __device__ __forceinline__ int core_offset(int r, int c)
{
    return ((r >> 3) * (KD / 8) + (c >> 3)) * 128 + (r & 7) * 16 + (c & 7) * 2;
}

/* The descriptor of a K-major [rows][KD] tile in the core-matrix layout starting at shared address `at`. */
template <int KD> __device__ __forceinline__ uint64_t core_desc(unsigned at)
{
    return (uint64_t)((at & 0x3FFFFu) >> 4) | ((uint64_t)(128 >> 4) << 16) |
           ((uint64_t)((KD / 8) * 128 >> 4) << 32);
}

__device__ __forceinline__ void wg_fence(void)
{
#ifdef GDN_WGMMA
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit(void)
{
#ifdef GDN_WGMMA
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void wg_wait(void)
{
#ifdef GDN_WGMMA
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
#endif
}
/* Generic-proxy writes to shared memory (st.shared, cp.async) made visible to wgmma's reads. */
__device__ __forceinline__ void fence_async_smem(void)
{
#ifdef GDN_WGMMA
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}
/* Keeps the compiler from moving accumulator reads or writes across an asynchronous wgmma. */
template <int N> __device__ __forceinline__ void wg_hold(float (&d)[N])
{
#pragma unroll
    for (int i = 0; i < N; i++)
        asm volatile("" : "+f"(d[i])::"memory");
}

/* Four 8 x 8 bf16 blocks of an accumulator stored transposed (stmatrix .trans, sm_90): lane l
 * holds row l / 4, columns 2 (l % 4) and + 1 of block i as x[i] (a packed pair), and lanes
 * 8 i .. 8 i + 7 give the shared addresses of block i's rows in memory (its columns before). A
 * core matrix is 8 rows of 16 contiguous bytes, so one block lands as one core matrix. */
__device__ __forceinline__ void stsm_x4_t(unsigned at, unsigned x0, unsigned x1, unsigned x2, unsigned x3)
{
#ifdef GDN_WGMMA
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(at), "r"(x0),
                 "r"(x1), "r"(x2), "r"(x3)
                 : "memory");
#else
    (void)at, (void)x0, (void)x1, (void)x2, (void)x3;
    __trap();
#endif
}

#define GDN_WG_D16 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define GDN_WG_D16_OPS(d)                                                                                    \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),          \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])

/* d (64 x 32, float32) += A (64 x 16) B (16 x 32), A and B by descriptor. */
__device__ __forceinline__ void wgmma_ss(float (&d)[16], uint64_t a, uint64_t b)
{
#ifdef GDN_WGMMA
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 " GDN_WG_D16
                 ", %16, %17, p, 1, 1, 0, 0;\n}\n"
                 : GDN_WG_D16_OPS(d)
                 : "l"(a), "l"(b), "r"(1));
#else
    (void)d, (void)a, (void)b;
    __trap();
#endif
}

/* d (64 x 32, float32) += A (64 x 16, this warp's rows 16 w.. as an mma.m16n8k16 A fragment) B (by
 * descriptor). */
__device__ __forceinline__ void wgmma_rs(float (&d)[16], const unsigned (&a)[4], uint64_t b)
{
#ifdef GDN_WGMMA
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 " GDN_WG_D16
                 ", {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
                 : GDN_WG_D16_OPS(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
#else
    (void)d, (void)a, (void)b;
    __trap();
#endif
}

#endif
