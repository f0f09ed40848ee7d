/*
 * Programmatic dependent launch, measured the way a model runs the decode (issue 9, item 2):
 * a CUDA graph of L layers, each a small producer kernel that writes q, k, v, a, b (standing
 * in for the projection / conv kernel before the GDN step), then gdn_decode on that layer's own
 * state pool. Time per layer = graph time / L, median of replays.
 *
 *   build/pdl_layers [--shape qwen3-next|contest|...] [--state f32|bf16] [--n 1,4,16,64,256]
 *                    [--layers L] [--reps R]
 *
 * Rows (CSV): producer alone, decode alone, producer + decode (pdl 0), producer + decode with
 * pdl = 1 where the producer lets the decode launch at its start (griddepcontrol.
 * launch_dependents first, as a PDL-aware producer would), and pdl = 1 with a producer that
 * never triggers (the decode can then only start as the producer's last blocks exit).
 */
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "gdn.h"

#define CK(x)                                                                                                \
    do {                                                                                                     \
        cudaError_t e_ = (x);                                                                                \
        if (e_ != cudaSuccess) {                                                                             \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));               \
            exit(1);                                                                                         \
        }                                                                                                    \
    } while (0)

/* Writes the activations of one layer: one 16-byte vector per thread, from a source buffer. */
template <bool TRIGGER>
__global__ void producer(const uint4 *__restrict__ src, uint4 *__restrict__ dst, size_t n)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (TRIGGER)
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint4 x = src[i];
        x.x ^= 0x00010001u; /* a change per layer, so the decode reads what this kernel wrote */
        dst[i] = x;
    }
}

struct shape {
    const char *name;
    int64_t h, hv;
};
static const shape shapes[] = {
    {"qwen3-next", 16, 32}, {"qwen3.5-397b", 16, 64}, {"qwen3.5-27b", 16, 48}, {"contest", 4, 8}};

struct layer {
    void *pool;
    int64_t *slots;
};

int main(int argc, char **argv)
{
    const shape *shp = &shapes[0];
    gdn_dtype state = GDN_DTYPE_F32;
    std::vector<long long> ns = {1, 4, 16, 64, 256};
    int layers = 36, reps = 30;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : nullptr;
        if (!strcmp(a, "--shape") && next) {
            shp = nullptr;
            for (const shape &s : shapes)
                if (!strcmp(s.name, next))
                    shp = &s;
            if (!shp)
                return fprintf(stderr, "unknown shape %s\n", next), 2;
            i++;
        } else if (!strcmp(a, "--state") && next) {
            state = !strcmp(argv[++i], "bf16") ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
        } else if (!strcmp(a, "--n") && next) {
            ns.clear();
            for (char *p = argv[++i]; *p;) {
                ns.push_back(strtoll(p, &p, 10));
                if (*p == ',')
                    p++;
            }
        } else if (!strcmp(a, "--layers") && next) {
            layers = atoi(argv[++i]);
        } else if (!strcmp(a, "--reps") && next) {
            reps = atoi(argv[++i]);
        } else {
            return fprintf(stderr,
                           "usage: pdl_layers [--shape S] [--state f32|bf16] [--n 1,4,...] [--layers L] "
                           "[--reps R]\n"),
                   2;
        }
    }
    const int64_t H = shp->h, HV = shp->hv, K = 128, V = 128;
    const size_t ssize = state == GDN_DTYPE_BF16 ? 2 : 4;
    printf("shape,state_dtype,N,layers,mode,us_per_layer\n");
    cudaStream_t stream;
    CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float *A_log, *dt_bias;
    std::vector<float> host_gate(HV);
    CK(cudaMalloc(&A_log, HV * 4));
    CK(cudaMalloc(&dt_bias, HV * 4));
    for (int64_t i = 0; i < HV; i++)
        host_gate[i] = 0.5f + 0.01f * (float)i;
    CK(cudaMemcpy(A_log, host_gate.data(), HV * 4, cudaMemcpyHostToDevice));
    for (int64_t i = 0; i < HV; i++)
        host_gate[i] = -2.0f + 0.02f * (float)i;
    CK(cudaMemcpy(dt_bias, host_gate.data(), HV * 4, cudaMemcpyHostToDevice));

    for (long long n : ns) {
        /* one packed activation row per sequence: q | k | v | a | b, bf16, padded to 16 bytes */
        const int64_t row = (2 * H * K + HV * V + 2 * HV + 7) / 8 * 8;
        const size_t act_bytes = (size_t)n * row * 2, tile = (size_t)HV * V * K * ssize;
        std::vector<uint16_t> host_act((size_t)n * row);
        uint32_t x = 12345;
        for (auto &e : host_act) { /* bf16 values in about [-1, 1], never zero */
            x = x * 1664525u + 1013904223u;
            float f = ((float)(x >> 8) / 16777216.0f - 0.5f) * 2.0f + 1e-3f;
            __nv_bfloat16 b = __float2bfloat16(f);
            memcpy(&e, &b, 2);
        }
        void *src, *act, *out;
        CK(cudaMalloc(&src, act_bytes));
        CK(cudaMalloc(&act, act_bytes));
        CK(cudaMalloc(&out, (size_t)n * HV * V * 2));
        CK(cudaMemcpy(src, host_act.data(), act_bytes, cudaMemcpyHostToDevice));
        std::vector<layer> ls(layers);
        std::vector<int64_t> slot_of(n);
        for (long long i = 0; i < n; i++)
            slot_of[i] = (i * 7 + 3) % n; /* permuted */
        bool ok = true;
        for (int l = 0; l < layers && ok; l++) {
            ok = cudaMalloc(&ls[l].pool, (size_t)n * tile) == cudaSuccess &&
                 cudaMalloc(&ls[l].slots, (size_t)n * 8) == cudaSuccess;
            if (ok) {
                CK(cudaMemset(ls[l].pool, 0x3c, (size_t)n * tile)); /* ~0.011 (f32) / ~0.0115 (bf16) */
                CK(cudaMemcpy(ls[l].slots, slot_of.data(), (size_t)n * 8, cudaMemcpyHostToDevice));
            }
        }
        if (!ok) {
            cudaGetLastError();
            printf("# N=%lld: not enough memory for %d layers\n", n, layers);
            for (auto &l : ls)
                cudaFree(l.pool), cudaFree(l.slots);
            cudaFree(src), cudaFree(act), cudaFree(out);
            continue;
        }
        const size_t vecs = act_bytes / 16;
        const int pblocks = (int)std::min<size_t>((vecs + 255) / 256, 132 * 4);
        gdn_decode_params p;
        gdn_decode_params_init(&p);
        p.num_seqs = n, p.num_q_heads = H, p.num_v_heads = HV, p.head_dim_k = K, p.head_dim_v = V;
        p.act_dtype = GDN_DTYPE_BF16;
        const __nv_bfloat16 *base = (const __nv_bfloat16 *)act;
        p.q = base, p.k = base + H * K, p.v = base + 2 * H * K, p.a = base + 2 * H * K + HV * V,
        p.b = base + 2 * H * K + HV * V + HV;
        p.q_stride = p.k_stride = p.v_stride = p.a_stride = p.b_stride = row;
        p.out = out, p.A_log = A_log, p.dt_bias = dt_bias;
        p.state_dtype = state, p.num_slots = n, p.backend = GDN_BACKEND_CUDA, p.stream = stream;

        const char *modes[] = {"producer", "decode", "producer+decode", "producer+decode pdl",
                               "producer(no trigger)+decode pdl"};
        for (int mode = 0; mode < 5; mode++) {
            cudaGraph_t graph;
            cudaGraphExec_t exec;
            CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
            for (int l = 0; l < layers; l++) {
                if (mode == 0 || mode == 2 || mode == 3)
                    producer<true><<<pblocks, 256, 0, stream>>>((const uint4 *)src, (uint4 *)act, vecs);
                if (mode == 4)
                    producer<false><<<pblocks, 256, 0, stream>>>((const uint4 *)src, (uint4 *)act, vecs);
                if (mode >= 1) {
                    p.state_pool = ls[l].pool, p.slot_indices = ls[l].slots, p.pdl = mode >= 3;
                    gdn_status s = gdn_decode(&p);
                    if (s != GDN_OK) {
                        fprintf(stderr, "gdn_decode: %s\n", gdn_last_error());
                        return 1;
                    }
                }
            }
            CK(cudaStreamEndCapture(stream, &graph));
            CK(cudaGraphInstantiate(&exec, graph, 0));
            CK(cudaGraphLaunch(exec, stream));
            CK(cudaStreamSynchronize(stream));
            std::vector<float> t;
            for (int r = 0; r < reps; r++) {
                float ms;
                CK(cudaEventRecord(e0, stream));
                CK(cudaGraphLaunch(exec, stream));
                CK(cudaEventRecord(e1, stream));
                CK(cudaEventSynchronize(e1));
                CK(cudaEventElapsedTime(&ms, e0, e1));
                t.push_back(ms * 1000.0f / layers);
            }
            std::sort(t.begin(), t.end());
            printf("%s,%s,%lld,%d,%s,%.3f\n", shp->name, state == GDN_DTYPE_BF16 ? "bf16" : "f32", n, layers,
                   modes[mode], t[t.size() / 2]);
            fflush(stdout);
            CK(cudaGraphExecDestroy(exec));
            CK(cudaGraphDestroy(graph));
        }
        for (auto &l : ls)
            cudaFree(l.pool), cudaFree(l.slots);
        cudaFree(src), cudaFree(act), cudaFree(out);
    }
    return 0;
}
