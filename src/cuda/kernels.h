/*
 * Launchers that one .cu file of the cuda backend offers the others (the dispatcher of
 * decode.cu calls the one-token and multi-token kernels).
 */
#ifndef GDN_CUDA_KERNELS_H
#define GDN_CUDA_KERNELS_H

#include <cuda_runtime.h>

#include "../common/problem.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when the one-token kernel serves p: T = 1 without varlen or token slots, layout vk,
 * K = 128, and q and k rows aligned for its vector loads. */
int gdn_cuda_one_token_applies(const gdn_problem *p);

/* Enqueues the one-token kernel on stream (no synchronisation); returns the launch error. */
cudaError_t gdn_cuda_launch_one_token(const gdn_problem *p, cudaStream_t stream);

/* 1 when the multi-token kernel serves p: layout vk, K = 128, slots 16-byte aligned, and more
 * than a plain one-token call (T > 1, cu_seqlens, token slots or num_accepted). */
int gdn_cuda_multi_token_applies(const gdn_problem *p);

/* Enqueues the multi-token kernel on stream (no synchronisation); returns the launch error. */
cudaError_t gdn_cuda_launch_multi_token(const gdn_problem *p, cudaStream_t stream);

/* Enqueues the chunked kernel on stream. With p->long_tokens set, it leaves sequences of at most
 * GDN_MAX_TOKENS tokens to the multi-token kernel (launched on a copy with num_tokens =
 * GDN_MAX_TOKENS); otherwise it computes every sequence. */
cudaError_t gdn_cuda_launch_chunked(const gdn_problem *p, cudaStream_t stream);

/* The configurations of each kernel (rows per batch, batches per warp, shared-memory stages):
 * *count is set; returns the table. Forcing one: negative = the kernel's own choice. */
typedef struct gdn_kernel_shape {
    int rows, batches, stages, lanes; /* lanes: lanes a state row, 0 = the kernel's default */
    int streaming;                    /* one-token: streaming cache hints on the state (name ending in c) */
} gdn_kernel_shape;
const gdn_kernel_shape *gdn_cuda_one_token_shapes(int *count);
void gdn_cuda_one_token_force(int config);
const gdn_kernel_shape *gdn_cuda_multi_token_shapes(int *count);
void gdn_cuda_multi_token_force(int config);

#ifdef __cplusplus
}
#endif

#endif
