/*
 * The wgmma helpers of src/cuda/wgmma.cuh against a plain product on the host, the three ways the
 * chunked prefill's walk uses them (GPU only, compute capability 9.0; prints one line a check):
 *   ss:   D (64 x 32) = A (64 x 128) B^T, both in the core-matrix layout, by descriptor
 *   rs:   D = A (64 x 64) B^T, A as register fragments (filled element by element from the
 *         documented layout), B (32 x 64) by descriptor
 *   rs-t: D (128 x 32, two tiles) = K^T U, K (64 x 128) in the core-matrix layout read transposed
 *         by ldmatrix.trans (as the walk's state update does), U^T (32 x 64) by descriptor
 * and the forms the head walk (the state as the A operand, prefill_walk_head) uses:
 *   chain: Z^T (64 x 64) = S K^T with S (64 x 128) an m64n128 accumulator given to wgmma as A
 *         fragments (acc_as_a), K (64 x 128) by descriptor; then U^T = bf16(Z^T) T^T with Z^T's
 *         accumulator as the A fragments, T (64 x 64) by descriptor (wgmma_rs_n64)
 *   tb:   S (64 x 128) += X K, X (64 x 64) an accumulator as A, K (64 x 128, t x k) the same
 *         K-major core tile read MN-major (mn_desc, wgmma_rs_n128_tb)
 * Inputs are random bf16; the reference sums the same bf16 values in double, so any layout slip
 * shows as an error of order one against ~1e-6.
 *   wgmma_check            exit 0 when all match
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

/* an m64nN accumulator (R = N / 2 registers) from or to a row-major [64][N] matrix */
template <int R> __device__ void load_acc(float (&d)[R], const float *m)
{
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    for (int i = 0; i < R; i++)
        d[i] = m[(16 * w + g + 8 * ((i >> 1) & 1)) * (2 * R) + 8 * (i >> 2) + 2 * t4 + (i & 1)];
}
template <int R> __device__ void store_acc_n(const float (&d)[R], float *m)
{
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    for (int i = 0; i < R; i++)
        m[(16 * w + g + 8 * ((i >> 1) & 1)) * (2 * R) + 8 * (i >> 2) + 2 * t4 + (i & 1)] = d[i];
}

/* s: 64 x 128 (bf16 values as float), k: 64 x 128 bf16, t: 64 x 64 bf16; z: 64 x 64, u: 64 x 64 */
__global__ void check_chain(const float *s, const bf16 *k, const bf16 *t, float *z_out, float *u_out)
{
    __shared__ __align__(128) unsigned char sk[64 * 128 * 2], st[64 * 64 * 2];
    to_core<128>(k, 64, sk);
    to_core<64>(t, 64, st);
    fence_async_smem();
    __syncthreads();
    float acc_s[64], z[32] = {}, u[32] = {};
    load_acc(acc_s, s);
    unsigned a[8][4], b[4][4];
    for (int ks = 0; ks < 8; ks++)
        acc_as_a(acc_s, ks, a[ks]);
    wg_hold(z);
    wg_fence();
    for (int ks = 0; ks < 8; ks++)
        wgmma_rs_n64(z, a[ks], core_desc<128>(smem_at(sk) + 256 * ks));
    wg_commit();
    wg_wait<0>();
    wg_hold(z);
    wg_hold_a(a);
    store_acc_n(z, z_out);
    for (int ks = 0; ks < 4; ks++)
        acc_as_a(z, ks, b[ks]);
    wg_hold(u);
    wg_fence();
    for (int ks = 0; ks < 4; ks++)
        wgmma_rs_n64(u, b[ks], core_desc<64>(smem_at(st) + 256 * ks));
    wg_commit();
    wg_wait<0>();
    wg_hold(u);
    wg_hold_a(b);
    store_acc_n(u, u_out);
}

/* s0: 64 x 128 float, x: 64 x 64 (bf16 values as float), k: 64 x 128 bf16; out = s0 + x k */
__global__ void check_tb(const float *s0, const float *x, const bf16 *k, float *out)
{
    __shared__ __align__(128) unsigned char sk[64 * 128 * 2];
    to_core<128>(k, 64, sk);
    fence_async_smem();
    __syncthreads();
    float acc[64], xa[32];
    load_acc(acc, s0);
    load_acc(xa, x);
    unsigned a[4][4];
    for (int ks = 0; ks < 4; ks++)
        acc_as_a(xa, ks, a[ks]);
    wg_hold(acc);
    wg_fence();
    for (int ks = 0; ks < 4; ks++) /* k-step ks: rows t = 16 ks.., two core matrices of 16 x 128 bytes */
        wgmma_rs_n128_tb(acc, a[ks], mn_desc(smem_at(sk) + 2 * 16 * 128 * ks, 16 * 128, 128));
    wg_commit();
    wg_wait<0>();
    wg_hold(acc);
    wg_hold_a(a);
    store_acc_n(acc, out);
}

static double worst_error(const char *name, const float *got, const double *want, int n)
{
    double worst = 0.0;
    for (int i = 0; i < n; i++) {
        const double e = fabs(want[i] - got[i]);
        worst = e > worst ? e : worst;
    }
    printf("%-5s max abs error %.3g (%s)\n", name, worst, worst < 1e-3 ? "ok" : "WRONG");
    return worst;
}

static float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

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

    /* chain and tb: S = a (64 x 128), K (64 x 128) and T (64 x 64) fresh, X = a's first 64 x 64
     * values, S0 = a shifted by a row */
    {
        static float s[64 * 128], z[64 * 64], u[64 * 64], s0[64 * 128], x[64 * 64], out[64 * 128];
        static bf16 hk[64 * 128], ht[64 * 64];
        static float fk[64 * 128], ft[64 * 64];
        static double want_z[64 * 64], want_u[64 * 64], want_s[64 * 128];
        fill(hk, fk, 64 * 128, &seed);
        fill(ht, ft, 64 * 64, &seed);
        for (int i = 0; i < 64 * 128; i++)
            s[i] = fa[i], s0[i] = fa[(i + 128) % (64 * 128)];
        for (int i = 0; i < 64 * 64; i++)
            x[i] = fa[i];
        float *ds, *dz, *du, *ds0, *dx, *dres;
        bf16 *dk, *dt;
        cudaMalloc(&ds, sizeof s), cudaMalloc(&dz, sizeof z), cudaMalloc(&du, sizeof u);
        cudaMalloc(&ds0, sizeof s0), cudaMalloc(&dx, sizeof x), cudaMalloc(&dres, sizeof out);
        cudaMalloc(&dk, sizeof hk), cudaMalloc(&dt, sizeof ht);
        cudaMemcpy(ds, s, sizeof s, cudaMemcpyHostToDevice);
        cudaMemcpy(ds0, s0, sizeof s0, cudaMemcpyHostToDevice);
        cudaMemcpy(dx, x, sizeof x, cudaMemcpyHostToDevice);
        cudaMemcpy(dk, hk, sizeof hk, cudaMemcpyHostToDevice);
        cudaMemcpy(dt, ht, sizeof ht, cudaMemcpyHostToDevice);
        check_chain<<<1, 128>>>(ds, dk, dt, dz, du);
        cudaMemcpy(z, dz, sizeof z, cudaMemcpyDeviceToHost);
        cudaMemcpy(u, du, sizeof u, cudaMemcpyDeviceToHost);
        for (int r = 0; r < 64; r++)
            for (int c = 0; c < 64; c++) {
                double wz = 0.0, wu = 0.0;
                for (int i = 0; i < 128; i++)
                    wz += (double)s[r * 128 + i] * fk[c * 128 + i];
                for (int i = 0; i < 64; i++) /* the product takes the GPU's Z rounded to bf16 */
                    wu += (double)round_bf16(z[r * 64 + i]) * ft[c * 64 + i];
                want_z[r * 64 + c] = wz, want_u[r * 64 + c] = wu;
            }
        bad |= worst_error("chain-z", z, want_z, 64 * 64) >= 1e-3;
        bad |= worst_error("chain-u", u, want_u, 64 * 64) >= 1e-3;
        check_tb<<<1, 128>>>(ds0, dx, dk, dres);
        cudaMemcpy(out, dres, sizeof out, cudaMemcpyDeviceToHost);
        for (int r = 0; r < 64; r++)
            for (int c = 0; c < 128; c++) {
                double w = s0[r * 128 + c];
                for (int t = 0; t < 64; t++)
                    w += (double)x[r * 64 + t] * fk[t * 128 + c];
                want_s[r * 128 + c] = w;
            }
        bad |= worst_error("tb", out, want_s, 64 * 128) >= 1e-3;
    }

    const cudaError_t err = cudaDeviceSynchronize();
    if (err != cudaSuccess) {
        printf("CUDA error: %s\n", cudaGetErrorString(err));
        return 1;
    }
    printf("%s\n", bad ? "FAILED" : "all match");
    return bad;
}
