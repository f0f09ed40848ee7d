/*
 * One randomized decode check: a backend against the float64 reference backend on the same
 * (dtype-rounded) inputs. Used by `gdn check` and by the test suite.
 *
 * Every run draws fresh inputs with the statistics of trained models (SPEC 6), poisons the
 * outputs, and afterwards checks that every output element was written, that padding rows
 * are exactly zero, that no byte outside the written slots or between output rows changed,
 * and that outputs and written states are within tolerance of the reference.
 */
#ifndef GDN_TOOLS_DECODE_CASE_H
#define GDN_TOOLS_DECODE_CASE_H

#include <stdint.h>

#include "gdn.h"

typedef struct decode_case {
    const char *name;
    int64_t num_seqs, num_q_heads, num_v_heads, head_dim_k, head_dim_v;
    gdn_dtype act_dtype, state_dtype, index_dtype;
    gdn_state_layout layout;
    gdn_head_map head_map;
    int qk_l2norm;
    int padding;        /* every third row is a padding row (-1, or 0 with null_slot_zero) */
    int null_slot_zero; /* slot 0 is the null slot */
    int write_slots;    /* separate write slots (read one slot, write another) */
    int strided;        /* q, k, v slices of one packed projection row; out rows padded */
    int64_t num_tokens; /* tokens per sequence (0 = 1); with varlen, the most (any number on
                           host backends: prefill) */
    int varlen;         /* cu_seqlens with 0..num_tokens tokens per sequence */
    int token_slots;    /* a snapshot slot per token (some not saved) */
    int accepted;       /* with token_slots: start from token_slots[n][num_accepted[n]-1] */
    int pdl;            /* gdn_decode_params.pdl (a launch mode: the results must not change) */
    int slot_gap;       /* paged pool (state_slot_stride): 0 packed; 1 a V*K gap after each slot
                           (storage[:, :HV] of [slots, HV+1, V, K]); 2 the gap before each slot
                           (storage[:, 1:]); 3 a 3-element gap (slots not 16-byte aligned) */
    int zero_init;      /* has_initial_state: about half the sequences start from a zero state */
    int gates_given;    /* g and beta given precomputed instead of a, b, A_log, dt_bias */
    int unit_keys;      /* q, k, v drawn with sigma 1/sqrt(K), so ||k|| is about 1: with the l2
                           norm off the delta rule stays a contraction over long sequences */
    int strong_decay;   /* A in [20, 60] and dt in [0.5, 2]: log-decays of -10 to -120 a token, so
                           a few tokens' decays multiply past 2^-60 and some underflow to 0 in
                           float32 (the rescaling paths of kernels that fold the decay into a
                           running scale) */
    int tc_products;    /* the backend's long sequences take tensor-core products of this many
                           bf16 terms (cuda chunked prefill): 1 (bf16 activations) holds outputs
                           and states to GDN_TC_OUT_REL / GDN_TC_STATE_REL, 3 (f16/f32
                           activations) the states to GDN_TC3_STATE_REL; 0: the usual limits */
    int workspace;      /* cuda: 1 = pass a workspace of gdn_decode_workspace_size's bytes,
                           filled with 0xff before each call (the chunked prefill's split path);
                           2 = 16 bytes short, 3 = off 16-byte alignment: the call must be
                           refused and write nothing */
    uint64_t seed;
} decode_case;

/* Tolerances of one-term bf16 tensor-core products (the accuracy class of FLA's and
 * FlashInfer's chunked prefill): relative L2 error of the outputs and of the states. */
#define GDN_TC_OUT_REL 1.5e-2
#define GDN_TC_STATE_REL 1e-2
/* Three-term products (hi.hi + hi.lo + lo.hi, 16 significant bits an operand): the states of most
 * cases are within 6e-6. The strong-decay cases (log-decays of -10 to -120 a token) reach 4e-5 to
 * 1.5e-4 (H100, e90d3ac and ff2bc39): a chunk's cumulative log-decay G runs to thousands, and
 * e(t,s) = exp(G_t - G_s) takes the float32 rounding of G (~|G| 6e-8 in the exponent). FLA's
 * f32 inputs take tf32 products (~1e-3). */
#define GDN_TC3_STATE_REL 5e-4

typedef struct decode_case_result {
    gdn_status status;   /* of the backend call; GDN_OK when the run could be made */
    char message[256];   /* why the run failed, or the first failed expectation */
    double out_rel;      /* ||out - ref|| / ||ref|| over non-padding rows */
    double out_max_abs;  /* max |out - ref| */
    double out_ref_max;  /* max |ref| */
    double state_rel;    /* ||S - S_ref|| / ||S_ref|| over written tiles */
    double rounded_rel;  /* same for the reference rounded to the state dtype after each step */
    int64_t unwritten;   /* output elements left poisoned */
    int64_t bad_padding; /* padding-row outputs not exactly zero */
    int64_t stray;       /* bytes changed outside written tiles / between output rows */
    int pass;
} decode_case_result;

/* Called after each step of a multi-step run (curves for `gdn check --steps`). */
typedef void (*decode_step_fn)(int step, const decode_case_result *r, void *ctx);

/* Runs `steps` consecutive decode steps of c on backend (cpu, cuda or reference) and checks
 * each. Returns r->pass. */
int decode_case_run(const decode_case *c, gdn_backend backend, int steps, decode_step_fn on_step, void *ctx,
                    decode_case_result *r);

/* "qwen3-next N=16 bf16/f32 vk i64 ..." for tables. */
void decode_case_describe(const decode_case *c, char *buf, size_t size);

#endif
