/*
 * The wgmma helpers of src/cuda/wgmma.cuh against a plain product on the host, the three ways the
 * chunked prefill's walk uses them (GPU only, compute capability 9.0; prints one line a check):
 *   ss:   D (64 x 32) = A (64 x 128) B^T, both in the core-matrix layout, by descriptor
 *   rs:   D = A (64 x 64) B^T, A as register fragments (filled element by element from the
 *         documented layout), B (32 x 64) by descriptor
 *   rs-t: D (128 x 32, two tiles) = K^T U, K (64 x 128) in the core-matrix layout read transposed
 *         by ldmatrix.trans (as the walk's state update does), U^T (32 x 64) by descriptor
 * Inputs are random bf16; the reference sums the same bf16 values in double, so any layout slip
 * shows as an error of order one against ~1e-6.
 *   wgmma_check            exit 0 when all three match
 */
#include <cuda_bf16.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "wgmma.cuh"

typedef __nv_bfloat16 bf16;

__device__ unsigned smem_at(const void *p) { return (unsigned)__cvta_generic_to_shared(p); }

/* every thread of the warpgroup copies; a row-major [rows][KD] global tile into the core layout */
template <int KD> __device__ void to_core(const bf16 *src, int rows, unsigned char *dst)
{
    for (int i = threadIdx.x; i < rows * KD; i += blockDim.x)
        *reinterpret_cast<bf16 *>(dst + core_offset<KD>(i / KD, i % KD)) = src[i];
}

__device__ void store_acc(const float (&d)[16], float *out, int row0)
{
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    for (int i = 0; i < 16; i++) {
        const int row = row0 + 16 * w + g + 8 * ((i >> 1) & 1), col = 8 * (i >> 2) + 2 * t4 + (i & 1);
        out[row * 32 + col] = d[i];
    }
}

__device__ unsigned pack2(bf16 lo, bf16 hi)
{
    return (unsigned)__bfloat16_as_ushort(lo) | ((unsigned)__bfloat16_as_ushort(hi) << 16);
}

__global__ void check_ss(const bf16 *a, const bf16 *b, float *out)
{
    __shared__ __align__(128) unsigned char sa[64 * 128 * 2], sb[32 * 128 * 2];
    to_core<128>(a, 64, sa);
    to_core<128>(b, 32, sb);
    fence_async_smem();
    __syncthreads();
    float d[16] = {};
    wg_hold(d);
    wg_fence();
    for (int ks = 0; ks < 8; ks++)
        wgmma_ss(d, core_desc<128>(smem_at(sa) + 256 * ks), core_desc<128>(smem_at(sb) + 256 * ks));
    wg_commit();
    wg_wait<0>();
    wg_hold(d);
    store_acc(d, out, 0);
}

__global__ void check_rs(const bf16 *a, const bf16 *b, float *out)
{
    __shared__ __align__(128) unsigned char sb[32 * 64 * 2];
    to_core<64>(b, 32, sb);
    fence_async_smem();
    __syncthreads();
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    unsigned fr[4][4];
    for (int ks = 0; ks < 4; ks++) {
        const bf16 *r0 = a + (16 * w + g) * 64 + 16 * ks + 2 * t4, *r8 = r0 + 8 * 64;
        fr[ks][0] = pack2(r0[0], r0[1]);
        fr[ks][1] = pack2(r8[0], r8[1]);
        fr[ks][2] = pack2(r0[8], r0[9]);
        fr[ks][3] = pack2(r8[8], r8[9]);
    }
    float d[16] = {};
    wg_hold(d);
    wg_fence();
    for (int ks = 0; ks < 4; ks++)
        wgmma_rs(d, fr[ks], core_desc<64>(smem_at(sb) + 256 * ks));
    wg_commit();
    wg_wait<0>();
    wg_hold(d);
    store_acc(d, out, 0);
}

__global__ void check_rs_t(const bf16 *k, const bf16 *ut, float *out)
{
    __shared__ __align__(128) unsigned char sk[64 * 128 * 2], su[32 * 64 * 2];
    to_core<128>(k, 64, sk);
    to_core<64>(ut, 32, su);
    fence_async_smem();
    __syncthreads();
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int mt = 0; mt < 2; mt++) {
        unsigned fr[4][4];
        for (int ks = 0; ks < 4; ks++) {
            const int t = 16 * ks + lane % 8 + 8 * (lane / 16), kk = 64 * mt + 16 * w + 8 * ((lane / 8) % 2);
            asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                         : "=r"(fr[ks][0]), "=r"(fr[ks][1]), "=r"(fr[ks][2]), "=r"(fr[ks][3])
                         : "r"(smem_at(sk + core_offset<128>(t, kk))));
        }
        float d[16] = {};
        wg_hold(d);
        wg_fence();
        for (int ks = 0; ks < 4; ks++)
            wgmma_rs(d, fr[ks], core_desc<64>(smem_at(su) + 256 * ks));
        wg_commit();
        wg_wait<0>();
        wg_hold(d);
        store_acc(d, out, 64 * mt);
    }
}

static void fill(bf16 *h, float *f, int n, unsigned *seed)
{
    for (int i = 0; i < n; i++) {
        *seed = *seed * 1664525u + 1013904223u;
        h[i] = __float2bfloat16((float)((*seed >> 8) & 0xffff) / 32768.0f - 1.0f);
        f[i] = __bfloat162float(h[i]);
    }
}

/* max |got - want| over rows x 32, want(r, c) = sum_i x(r, i) y(c, i) (x_t: x stored [i][r]) */
static double compare(const char *name, const float *got, const float *x, const float *y, int rows, int inner,
                      int x_t)
{
    double worst = 0.0;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < 32; c++) {
            double want = 0.0;
            for (int i = 0; i < inner; i++)
                want += (double)(x_t ? x[i * rows + r] : x[r * inner + i]) * y[c * inner + i];
            const double e = fabs(want - got[r * 32 + c]);
            worst = e > worst ? e : worst;
        }
    printf("%-5s max abs error %.3g (%s)\n", name, worst, worst < 1e-3 ? "ok" : "WRONG");
    return worst;
}

int main(void)
{
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) {
        printf("no CUDA device\n");
        return 1;
    }
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (major != 9 || minor != 0) {
        printf("compute capability %d.%d: wgmma needs 9.0\n", major, minor);
        return 1;
    }
    enum { NA = 64 * 128, NB = 32 * 128 };
    static bf16 ha[NA], hb[NB];
    static float fa[NA], fb[NB], got[128 * 32];
    unsigned seed = 12345u;
    fill(ha, fa, NA, &seed);
    fill(hb, fb, NB, &seed);
    bf16 *da, *db;
    float *dout;
    cudaMalloc(&da, sizeof ha);
    cudaMalloc(&db, sizeof hb);
    cudaMalloc(&dout, sizeof got);
    cudaMemcpy(da, ha, sizeof ha, cudaMemcpyHostToDevice);
    cudaMemcpy(db, hb, sizeof hb, cudaMemcpyHostToDevice);
    int bad = 0;

    check_ss<<<1, 128>>>(da, db, dout);
    cudaMemcpy(got, dout, 64 * 32 * 4, cudaMemcpyDeviceToHost);
    bad |= compare("ss", got, fa, fb, 64, 128, 0) >= 1e-3;

    /* rs: A = the first 64 x 64 of a (row-major, ld 64), B = 32 x 64 */
    check_rs<<<1, 128>>>(da, db, dout);
    cudaMemcpy(got, dout, 64 * 32 * 4, cudaMemcpyDeviceToHost);
    bad |= compare("rs", got, fa, fb, 64, 64, 0) >= 1e-3;

    /* rs-t: K = a as 64 x 128 (t x k), U^T = b as 32 x 64 (n x t): D(k, n) = sum_t K(t, k) U^T(n, t) */
    check_rs_t<<<1, 128>>>(da, db, dout);
    cudaMemcpy(got, dout, 128 * 32 * 4, cudaMemcpyDeviceToHost);
    bad |= compare("rs-t", got, fa, fb, 128, 64, 1) >= 1e-3;

    const cudaError_t err = cudaDeviceSynchronize();
    if (err != cudaSuccess) {
        printf("CUDA error: %s\n", cudaGetErrorString(err));
        return 1;
    }
    printf("%s\n", bad ? "FAILED" : "all match");
    return bad;
}
