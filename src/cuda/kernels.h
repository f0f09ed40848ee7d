/*
 * Launchers that one .cu file of the cuda backend offers the others (the dispatcher of
 * decode.cu calls the one-token kernel of decode_one_token.cu).
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

#ifdef __cplusplus
}
#endif

#endif
