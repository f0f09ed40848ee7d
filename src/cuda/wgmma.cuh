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

#include <cuda_bf16.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GDN_WGMMA 1
#endif

/* lo, hi rounded to bf16 as one register (lo in the low half), as mma and wgmma fragments hold them */
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi)
{
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    unsigned w;
    memcpy(&w, &h, sizeof w);
    return w;
}

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

/*
 * The forms a walk with the state as the A operand needs (M = 64 state rows of a warpgroup; the
 * head walk, prefill_walk_head; held to a plain product by tests/gpu/wgmma_check.cu): m64n64k16 and
 * m64n128k16 with A in registers, and a B operand read MN-major (transposed) from a K-major
 * core-matrix tile, e.g. K [t][k] as the B of S += X K (K dimension t, N dimension k).
 */
#define GDN_WG_D32                                                                                           \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "  \
    "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define GDN_WG_D32_OPS(d)                                                                                    \
    GDN_WG_D16_OPS(d), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),         \
        "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),           \
        "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define GDN_WG_D64                                                                                           \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "  \
    "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, "   \
    "%42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, "   \
    "%62, %63}"
#define GDN_WG_D64_OPS(d)                                                                                    \
    GDN_WG_D32_OPS(d), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]),         \
        "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]),           \
        "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]),           \
        "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]),           \
        "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

/* d (64 x 64, float32) += A (64 x 16, register fragment as wgmma_rs) B (by descriptor, K-major) */
__device__ __forceinline__ void wgmma_rs_n64(float (&d)[32], const unsigned (&a)[4], uint64_t b)
{
#ifdef GDN_WGMMA
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " GDN_WG_D32
                 ", {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
                 : GDN_WG_D32_OPS(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
#else
    (void)d, (void)a, (void)b;
    __trap();
#endif
}

/* d (64 x 128, float32) += A (64 x 16, register fragment) B (16 x 128), B by descriptor read
 * MN-major (mn_desc): the transpose of a K-major tile */
__device__ __forceinline__ void wgmma_rs_n128_tb(float (&d)[64], const unsigned (&a)[4], uint64_t b)
{
#ifdef GDN_WGMMA
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " GDN_WG_D64
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : GDN_WG_D64_OPS(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
#else
    (void)d, (void)a, (void)b;
    __trap();
#endif
}

/* The descriptor of an MN-major operand in the core-matrix layout: core matrices of 8 rows along
 * K by 16 contiguous bytes along M or N, `k_step` bytes apart along K (leading offset) and
 * `mn_step` bytes apart along M or N (stride offset). A K-major [t][KD] core tile read with t as
 * the K dimension and its columns as N: mn_desc(at, KD / 8 * 128, 128); a k-step of 16 rows moves
 * `at` by 2 * KD / 8 * 128 bytes. */
__device__ __forceinline__ uint64_t mn_desc(unsigned at, unsigned k_step, unsigned mn_step)
{
    return (uint64_t)((at & 0x3FFFFu) >> 4) | ((uint64_t)(k_step >> 4) << 16) |
           ((uint64_t)(mn_step >> 4) << 32);
}

/* wgmma reads A fragments in registers asynchronously: they stay unmodified until the group that
 * reads them is done (call after its wait) */
template <int N> __device__ __forceinline__ void wg_hold_a(unsigned (&a)[N][4])
{
#pragma unroll
    for (int i = 0; i < N; i++)
        asm volatile("" : "+r"(a[i][0]), "+r"(a[i][1]), "+r"(a[i][2]), "+r"(a[i][3])::"memory");
}

/* Columns 16 ks .. 16 ks + 15 of an accumulator (any N) as the A fragment of the next product's
 * k-step ks (its rows are the same 64; bf16, rounded to nearest): the accumulator layout of
 * columns 8 j .. 8 j + 7 is the A fragment's layout of those columns, as FlashAttention-3 uses
 * it for P V. */
template <int N> __device__ __forceinline__ void acc_as_a(const float (&d)[N], int ks, unsigned (&a)[4])
{
    const int i = 8 * ks;
    a[0] = pack_bf16(d[i], d[i + 1]);
    a[1] = pack_bf16(d[i + 2], d[i + 3]);
    a[2] = pack_bf16(d[i + 4], d[i + 5]);
    a[3] = pack_bf16(d[i + 6], d[i + 7]);
}

#endif
