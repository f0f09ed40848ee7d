/*
 * The decode problem after validation: every default resolved, every stride in elements,
 * every enum checked. Backends receive only this struct, so none of them re-validates, and
 * the same struct is passed by value to CUDA kernels.
 *
 * The inline helpers below are the per-head math shared by the CPU backend and the CUDA
 * kernels (GDN_HD marks them host+device under nvcc), so both compute the gate, the beta, the
 * head mapping and the slot resolution with the same expressions.
 */
#ifndef GDN_COMMON_PROBLEM_H
#define GDN_COMMON_PROBLEM_H

#include <math.h>
#include <stdint.h>

#include "gdn.h"

#ifdef __CUDACC__
#define GDN_HD static __host__ __device__ __forceinline__
#else
#define GDN_HD static inline
#endif

typedef struct gdn_problem {
    int64_t num_seqs, num_q_heads, num_v_heads, head_dim_k, head_dim_v;
    gdn_dtype act_dtype;
    const void *q, *k, *v, *a, *b;
    void *out;
    int64_t q_stride, k_stride, v_stride, a_stride, b_stride, out_stride;
    const float *A_log, *dt_bias;
    float scale;
    int qk_l2norm;
    gdn_head_map head_map;
    void *state_pool;
    int64_t num_slots;
    int64_t slot_stride; /* elements between consecutive slots (>= HV*V*K) */
    gdn_state_layout state_layout;
    gdn_dtype state_dtype;
    const void *read_slots, *write_slots;
    gdn_dtype index_dtype;
    int null_slot_zero;
    void *stream;
    int num_threads;
    /* multi-token decode: T >= 1 (the maximum with cu_seqlens), optional arrays */
    int64_t num_tokens;
    const void *cu_seqlens, *token_slots, *num_accepted;
    int64_t token_slots_stride;
    /* token rows the activations hold: num_seqs * num_tokens of the whole call (cu_seqlens may
     * not reach past them); kept by gdn_problem_rows, as cu_seqlens keeps absolute rows */
    int64_t token_rows;
    uint32_t *bad_index_rows;         /* checked mode: rows skipped for a bad device-side index */
    int device;                       /* the CUDA device holding the pool (-1: not device memory) */
    int pdl;                          /* programmatic dependent launch (cuda, one-token kernel) */
    const uint8_t *has_initial_state; /* optional [N]: 0 = start from a zero state */
    const float *g;                   /* optional precomputed gates (with beta): log decay */
    const void *beta;                 /* sigmoid already applied; act_dtype */
    int64_t g_stride, beta_stride;
    /* cuda, long sequences (prefill_chunked.cu): set on the multi-token kernel's copy of a call
     * whose long sequences go to the chunked kernel: sequences of more than num_tokens (and at
     * most long_tokens) tokens are that kernel's (gdn_seq_tokens: GDN_SEQ_ELSEWHERE), and bad
     * cu_seqlens are counted there, not twice */
    int64_t long_tokens;
    int prefill_async; /* chunked kernel: q, k, v rows 16-byte aligned (cp.async staging) */
    int prefill_kary;  /* chunked kernel, split path: the local kernel finds a record's sequence
                          by a 32-way search (the default; GDN_PREFILL_KARY=0: a binary one) */
    int prefill_wy;    /* chunked kernel, split path: records in the WY form (GDN_PREFILL_WY=1,
                          prefill_chunked.cu), set by the launch where the workspace holds them */
    /* cuda mixed calls (decode.cu), set on both copies: the multi-token kernel of the short
     * sequences is launched programmatically after the chunked kernel, which lets it start at
     * once (on the multiprocessors the long sequences leave idle); its last block waits for the
     * chunked kernel before it exits, so that the call ends after both */
    int mixed_overlap;
    void *workspace; /* the caller's scratch (cuda chunked prefill, split path; its size checked by
                        gdn_decode); may be NULL */
    int64_t workspace_bytes;
} gdn_problem;

/* The cuda chunked prefill's split path (prefill_chunked.cu) keeps one record of this many bytes
 * per chunk of 64 tokens and value head in the workspace, at most gdn_chunk_records of them per
 * head: chunk ci of sequence n is record floor(first_row(n) / 64) + n + ci. */
#define GDN_CHUNK_RECORD_BYTES 19728
GDN_HD int64_t gdn_chunk_records(const gdn_problem *p) { return p->token_rows / 64 + p->num_seqs; }
/* A record in the WY form (GDN_PREFILL_WY=1): P, the gates and the tag (10512 bytes), then
 * W = T diag(beta rk^2 gam) K (64 x 128 bf16) and U0 = T diag(beta rk) V (64 x V rounded up to a
 * multiple of 32, bf16). */
GDN_HD int64_t gdn_chunk_record_wy_bytes(int64_t head_dim_v)
{
    return 10512 + 16384 + 128 * ((head_dim_v + 31) / 32 * 32);
}

/* 1 when the cuda backend sends p's sequences of more than GDN_MAX_TOKENS tokens to the chunked
 * kernel (prefill_chunked.cu: vk, K = 128, no token slots). */
GDN_HD int gdn_chunked_applies(const gdn_problem *p)
{
    return p->num_tokens > GDN_MAX_TOKENS && p->state_layout == GDN_LAYOUT_VK && p->head_dim_k == 128 &&
           !p->token_slots && !p->num_accepted;
}

/* Epsilon added to the sum of squares before the square root of the l2 norm (SPEC 1). */
#define GDN_L2NORM_EPS 1e-6f

GDN_HD float gdn_softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

GDN_HD float gdn_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* g = -exp(A_log) * softplus(a + dt_bias): the log of the per-step decay of the state. */
GDN_HD float gdn_gate_log(float A_log, float a, float dt_bias)
{
    return -expf(A_log) * gdn_softplus(a + dt_bias);
}

/* The query/key head that value head hv reads. */
GDN_HD int64_t gdn_qk_head(const gdn_problem *p, int64_t hv)
{
    return p->head_map == GDN_HEAD_MAP_TILED ? hv % p->num_q_heads : hv / (p->num_v_heads / p->num_q_heads);
}

/* Raw index n of an index array of either index dtype. */
GDN_HD int64_t gdn_index_at(const void *indices, gdn_dtype index_dtype, int64_t n)
{
    return index_dtype == GDN_DTYPE_I32 ? (int64_t)((const int32_t *)indices)[n]
                                        : ((const int64_t *)indices)[n];
}

/* A slot that means "no state": negative, or 0 when slot 0 is the null block. */
GDN_HD int gdn_slot_is_null(const gdn_problem *p, int64_t slot)
{
    return slot < 0 || (p->null_slot_zero && slot == 0);
}

/* A slot that no pool has: rows that resolve to it are skipped (bad device-side indices). */
#define GDN_BAD_SLOT INT64_MAX

/* Slot of token t's snapshot for sequence n, or -1 when that state is not saved. */
GDN_HD int64_t gdn_token_slot(const gdn_problem *p, int64_t n, int64_t t)
{
    int64_t slot = gdn_index_at(p->token_slots, p->index_dtype, n * p->token_slots_stride + t);
    return gdn_slot_is_null(p, slot) ? -1 : slot;
}

/* 1 when sequence n starts from a zero state instead of its read slot (has_initial_state). */
GDN_HD int gdn_zero_initial_state(const gdn_problem *p, int64_t n)
{
    return p->has_initial_state && !p->has_initial_state[n];
}

/* Slot whose state sequence n starts from, -1 for a padding row, GDN_BAD_SLOT when
 * num_accepted[n] is outside 1..token_slots_stride. */
GDN_HD int64_t gdn_read_slot(const gdn_problem *p, int64_t n)
{
    if (p->num_accepted) {
        int64_t accepted = gdn_index_at(p->num_accepted, p->index_dtype, n);
        if (accepted < 1 || accepted > p->token_slots_stride)
            return GDN_BAD_SLOT;
        return gdn_token_slot(p, n, accepted - 1);
    }
    int64_t slot = gdn_index_at(p->read_slots, p->index_dtype, n);
    return gdn_slot_is_null(p, slot) ? -1 : slot;
}

/* Slot sequence n writes its final state to, or -1 when it is not saved there (with
 * token_slots, states go to the token slots only). */
GDN_HD int64_t gdn_write_slot(const gdn_problem *p, int64_t n)
{
    if (p->token_slots)
        return -1;
    int64_t slot = p->write_slots ? gdn_index_at(p->write_slots, p->index_dtype, n)
                                  : gdn_index_at(p->read_slots, p->index_dtype, n);
    return gdn_slot_is_null(p, slot) ? -1 : slot;
}

/* Token row of sequence n's first token. */
GDN_HD int64_t gdn_first_token_row(const gdn_problem *p, int64_t n)
{
    return p->cu_seqlens ? gdn_index_at(p->cu_seqlens, p->index_dtype, n) : n * p->num_tokens;
}

/* gdn_seq_tokens of a sequence that another kernel of the same call computes (long_tokens). */
#define GDN_SEQ_ELSEWHERE (-2)

/* Tokens of sequence n; -1 when cu_seqlens gives a count outside 0..num_tokens or rows beyond
 * the token rows the call may touch (checked before subtracting: no overflow). */
GDN_HD int64_t gdn_seq_tokens(const gdn_problem *p, int64_t n)
{
    if (!p->cu_seqlens)
        return p->num_tokens;
    int64_t lo = gdn_index_at(p->cu_seqlens, p->index_dtype, n);
    int64_t hi = gdn_index_at(p->cu_seqlens, p->index_dtype, n + 1);
    if (lo < 0 || hi < lo || hi > p->token_rows)
        return -1;
    if (hi - lo > p->num_tokens)
        return hi - lo <= p->long_tokens ? GDN_SEQ_ELSEWHERE : -1;
    return hi - lo;
}

/* Sequences [first, first + count) of p as a problem of their own (the cuda backend launches at
 * most 65535 sequences at a time). Index arrays move to the first sequence; activations too,
 * except with cu_seqlens, whose entries stay absolute token rows. */
GDN_HD gdn_problem gdn_problem_rows(const gdn_problem *p, int64_t first, int64_t count)
{
    gdn_problem c = *p;
    const int64_t idx = p->index_dtype == GDN_DTYPE_I32 ? 4 : 8;
    c.num_seqs = count;
    if (p->read_slots)
        c.read_slots = (const char *)p->read_slots + first * idx;
    if (p->write_slots)
        c.write_slots = (const char *)p->write_slots + first * idx;
    if (p->num_accepted)
        c.num_accepted = (const char *)p->num_accepted + first * idx;
    if (p->token_slots)
        c.token_slots = (const char *)p->token_slots + first * p->token_slots_stride * idx;
    if (p->cu_seqlens) {
        c.cu_seqlens = (const char *)p->cu_seqlens + first * idx;
        return c;
    }
    const int64_t act = p->act_dtype == GDN_DTYPE_F32 ? 4 : 2, row = first * p->num_tokens;
    c.q = (const char *)p->q + row * p->q_stride * act;
    c.k = (const char *)p->k + row * p->k_stride * act;
    c.v = (const char *)p->v + row * p->v_stride * act;
    c.a = (const char *)p->a + row * p->a_stride * act;
    c.b = (const char *)p->b + row * p->b_stride * act;
    c.out = (char *)p->out + row * p->out_stride * act;
    c.token_rows = count * p->num_tokens;
    return c;
}

/* Element offset of the state tile (slot, hv) in the pool; 64-bit throughout. */
GDN_HD int64_t gdn_tile_offset(const gdn_problem *p, int64_t slot, int64_t hv)
{
    return slot * p->slot_stride + hv * (p->head_dim_v * p->head_dim_k);
}

#endif
