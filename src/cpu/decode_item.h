/*
 * The cpu backend's per-item work (one sequence, one value head): its inputs, its math, its
 * state rows. decode_item_body.h is compiled three times, for the baseline x86-64 (or any
 * other) target, for AVX2 + FMA and for AVX-512 (decode_item_*.c), and decode.c picks one at
 * run time from the CPU's features (GDN_CPU_ISA forces one): a distributed library cannot be
 * built for the machine it will run on.
 */
#ifndef GDN_CPU_DECODE_ITEM_H
#define GDN_CPU_DECODE_ITEM_H

#include <stdint.h>

#include "../common/problem.h"

/* Tokens per chunk of the chunked path for long sequences (prefill_chunk_body.h). */
#define GDN_CPU_CHUNK 16

/* A chunk's inputs and intermediates (prefill_chunk_body.h). */
typedef struct chunk_scratch {
    /* q then k, and o then w, back to back: one product with the state serves both */
    float q[GDN_CPU_CHUNK][GDN_MAX_HEAD_DIM], k[GDN_CPU_CHUNK][GDN_MAX_HEAD_DIM]; /* normalised */
    float o[GDN_CPU_CHUNK][GDN_MAX_HEAD_DIM];                                     /* outputs */
    float w[GDN_CPU_CHUNK][GDN_MAX_HEAD_DIM];  /* S k_t, then the update's weighted u */
    float u[GDN_CPU_CHUNK][GDN_MAX_HEAD_DIM];  /* v, then beta (v - ..), then the solved u */
    float kt[GDN_MAX_HEAD_DIM][GDN_CPU_CHUNK]; /* k transposed */
    float kk[GDN_CPU_CHUNK][GDN_CPU_CHUNK], qk[GDN_CPU_CHUNK][GDN_CPU_CHUNK]; /* Gram entries */
    float gcum[GDN_CPU_CHUNK], beta[GDN_CPU_CHUNK], decay[GDN_CPU_CHUNK];
} chunk_scratch;

/* The inputs of one (sequence, value head) for each of its tokens, prepared once. */
typedef struct head_inputs {
    float q[GDN_MAX_TOKENS][GDN_MAX_HEAD_DIM], k[GDN_MAX_TOKENS][GDN_MAX_HEAD_DIM];
    float v[GDN_MAX_TOKENS][GDN_MAX_HEAD_DIM], out[GDN_MAX_TOKENS][GDN_MAX_HEAD_DIM];
    float decay[GDN_MAX_TOKENS], beta[GDN_MAX_TOKENS], kq[GDN_MAX_TOKENS]; /* exp(g), sigmoid(b), k.q */
    int64_t snapshot[GDN_MAX_TOKENS]; /* tile offset that receives the state after token t, or -1 */
    float tile[GDN_MAX_HEAD_DIM * GDN_MAX_HEAD_DIM];  /* kv layout: the K x V tile, widened */
    float state[GDN_MAX_HEAD_DIM * GDN_MAX_HEAD_DIM]; /* a long sequence's state, widened */
    chunk_scratch chunk;
} head_inputs;

/* How sequences longer than GDN_MAX_TOKENS are computed: 1 = in chunks (prefill_chunk_body.h),
 * 0 = token by token in segments of GDN_MAX_TOKENS. decode.c decides (and tests force either). */
int gdn_cpu_use_chunks(int64_t tokens);

typedef void (*gdn_cpu_item_fn)(const gdn_problem *p, int64_t item, head_inputs *in);

void gdn_cpu_decode_item_baseline(const gdn_problem *p, int64_t item, head_inputs *in);
#if defined(__x86_64__)
void gdn_cpu_decode_item_avx2(const gdn_problem *p, int64_t item, head_inputs *in);
void gdn_cpu_decode_item_avx512(const gdn_problem *p, int64_t item, head_inputs *in);
void gdn_cpu_decode_item_avx512bf16(const gdn_problem *p, int64_t item, head_inputs *in);
void gdn_cpu_narrow_bf16_avx2(const float *x, uint16_t *out, int64_t n);
void gdn_cpu_narrow_bf16_avx512(const float *x, uint16_t *out, int64_t n);
void gdn_cpu_narrow_bf16_avx512bf16(const float *x, uint16_t *out, int64_t n);
#endif

#endif
