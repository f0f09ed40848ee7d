/*
 * Randomized parity of the cpu backend (and cuda, when a GPU is present) against the float64
 * reference: every activation dtype x state dtype x layout x index dtype, GQA mappings,
 * padding, the null slot, separate write slots, strided activations, odd sizes, and a
 * multi-step run. Fresh seeds every run; a failure prints the seed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../src/common/numeric.h"
#include "../src/common/problem.h"
#include "../src/core/backends.h"
#include "decode_case.h"
#include "rng.h"
#include "test.h"

static uint64_t seed;
static char config_note[64]; /* the forced kernel configuration, for failure messages */
static int pdl_all;          /* gdn_decode_params.pdl of every case */
static int tc_all;           /* decode_case.tc_products of every case */
static int case_workspace;   /* decode_case.workspace of every case */
static int print_errors;     /* print each case's errors (the chunked prefill's accuracy) */

static void expect_pass(decode_case c, gdn_backend backend, int steps)
{
    decode_case_result r;
    c.seed = seed++;
    c.pdl = pdl_all;
    if (tc_all)
        c.tc_products = tc_all;
    if (case_workspace)
        c.workspace = 1;
    int ok = decode_case_run(&c, backend, steps, NULL, NULL, &r);
    char what[256];
    decode_case_describe(&c, what, sizeof what);
    if (print_errors)
        printf(
            "  %s%s%s: out rel %.3g, max abs %.3g (ref max %.3g), state rel %.3g (bf16 round trip %.3g)%s\n",
            config_note, config_note[0] ? ", " : "", what, r.out_rel, r.out_max_abs, r.out_ref_max,
            r.state_rel, r.rounded_rel, ok ? "" : " FAILED");
    CHECK_MSG(ok, "%s on %s%s%s (seed %llu): %s", what, gdn_backend_name(backend), config_note[0] ? " " : "",
              config_note, (unsigned long long)c.seed, r.message);
}

static decode_case base(int64_t n, int64_t h, int64_t hv, int64_t k, int64_t v)
{
    decode_case c;
    memset(&c, 0, sizeof c);
    c.name = "test";
    c.num_seqs = n, c.num_q_heads = h, c.num_v_heads = hv, c.head_dim_k = k, c.head_dim_v = v;
    c.act_dtype = GDN_DTYPE_F32, c.state_dtype = GDN_DTYPE_F32, c.index_dtype = GDN_DTYPE_I64;
    c.layout = GDN_LAYOUT_VK, c.head_map = GDN_HEAD_MAP_GROUPED, c.qk_l2norm = 1;
    return c;
}

/* Every dtype/layout/index combination on a small GQA shape, with every option each way. */
static void every_combination(gdn_backend backend)
{
    const gdn_dtype acts[] = {GDN_DTYPE_F32, GDN_DTYPE_F16, GDN_DTYPE_BF16};
    const gdn_dtype states[] = {GDN_DTYPE_F32, GDN_DTYPE_BF16};
    const gdn_dtype idx[] = {GDN_DTYPE_I64, GDN_DTYPE_I32};
    for (int a = 0; a < 3; a++)
        for (int s = 0; s < 2; s++)
            for (int l = 0; l < 2; l++)
                for (int i = 0; i < 2; i++)
                    for (int opt = 0; opt < 2; opt++) {
                        decode_case c = base(7, 2, 4, 128, 128);
                        c.act_dtype = acts[a], c.state_dtype = states[s], c.index_dtype = idx[i];
                        c.layout = l ? GDN_LAYOUT_KV : GDN_LAYOUT_VK;
                        c.head_map = opt ? GDN_HEAD_MAP_TILED : GDN_HEAD_MAP_GROUPED;
                        c.qk_l2norm = !opt || a == 0;
                        c.padding = 1, c.null_slot_zero = opt, c.write_slots = !opt, c.strided = opt;
                        expect_pass(c, backend, 1);
                    }
}

static void odd_sizes(gdn_backend backend)
{
    const int64_t shapes[][5] = {
        {3, 1, 3, 128, 128}, {3, 1, 3, 32, 16}, {1, 2, 6, 64, 48}, {7, 3, 9, 100, 72}, {2, 2, 4, 128, 40},
        {5, 1, 1, 1, 1},     {4, 1, 2, 7, 130}, {2, 1, 2, 128, 37}}; /* K = 128, odd V: the pairs of rows */
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int l = 0; l < 2; l++)
            for (int st = 0; st < 2; st++) {
                decode_case c = base(shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], shapes[s][4]);
                c.layout = l ? GDN_LAYOUT_KV : GDN_LAYOUT_VK;
                c.state_dtype = st ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
                c.act_dtype = st ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
                c.padding = s % 2, c.strided = l;
                expect_pass(c, backend, 1);
            }
}

static void model_shapes_batch(gdn_backend backend)
{
    const int64_t shapes[][2] = {{16, 32}, {16, 64}, {16, 48}, {4, 8}};
    for (size_t s = 0; s < 4; s++) {
        decode_case c = base(s == 3 ? 33 : 4, shapes[s][0], shapes[s][1], 128, 128);
        c.act_dtype = GDN_DTYPE_BF16, c.padding = 1;
        c.state_dtype = s % 2 ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
        c.head_map = s == 2 ? GDN_HEAD_MAP_TILED : GDN_HEAD_MAP_GROUPED;
        expect_pass(c, backend, 1);
    }
}

/* Consecutive steps: errors must not grow (f32) or grow beyond the bf16 rounding drift. */
static void multi_step(gdn_backend backend)
{
    for (int st = 0; st < 2; st++)
        for (int l = 0; l < 2; l++) {
            decode_case c = base(2, 1, 2, 128, 128);
            c.state_dtype = st ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
            c.act_dtype = GDN_DTYPE_BF16;
            c.layout = l ? GDN_LAYOUT_KV : GDN_LAYOUT_VK;
            c.write_slots = l; /* the state hops between two slots every step */
            expect_pass(c, backend, 64);
        }
}

/* Multi-token decode: T tokens, snapshots per token, rollback via num_accepted, varlen. */
static int cuda_present(void);

static void multi_token(gdn_backend backend)
{
    const int64_t tokens[] = {2, 3, 4, 8, 16};
    for (int i = 0; i < 5; i++)
        for (int l = 0; l < 2; l++)
            for (int st = 0; st < 2; st++) {
                decode_case c = base(5, 2, 4, l && i % 2 ? 64 : 128, 128);
                c.num_tokens = tokens[i];
                c.layout = l ? GDN_LAYOUT_KV : GDN_LAYOUT_VK;
                c.state_dtype = st ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
                c.act_dtype = st ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
                c.index_dtype = i % 2 ? GDN_DTYPE_I32 : GDN_DTYPE_I64;
                c.padding = 1;
                c.varlen = i % 2;
                c.token_slots = i != 1;
                c.accepted = i >= 2 && st == 0;
                c.null_slot_zero = i == 4;
                c.write_slots = i == 1;
                c.strided = l;
                expect_pass(c, backend, 3); /* three steps: each starts from an accepted snapshot */
            }
}

/* Multi-token calls of the vk K = 128 path at value sizes that leave partial row batches and
 * at model head counts, T from 2 to the maximum. */
static void multi_token_odd_sizes(gdn_backend backend)
{
    const int64_t values[] = {1, 7, 72, 100, 129, 256};
    const int64_t tokens[] = {2, 5, 16, 3, 8, 4};
    for (int i = 0; i < 6; i++)
        for (int st = 0; st < 2; st++) {
            decode_case c = base(3 + i, 2, 4, 128, values[i]);
            c.num_tokens = tokens[i];
            c.state_dtype = st ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
            c.act_dtype = i % 3 == 0 ? GDN_DTYPE_F16 : i % 3 == 1 ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
            c.padding = i % 2;
            c.token_slots = i % 3 == 2;
            c.varlen = i == 3;
            c.head_map = i % 2 ? GDN_HEAD_MAP_TILED : GDN_HEAD_MAP_GROUPED;
            /* off with f32 activations, keys of norm about 1: with N(0, 1) keys (norm^2 ~ K) the
             * delta rule grows the state ~60x a token, and 16 such tokens amplified rounding past
             * any tolerance (a CI run's seed 1796230365928869437: max error 1.8e4 > 1.09e4) */
            c.qk_l2norm = i != 2;
            c.unit_keys = i == 2;
            expect_pass(c, backend, 2);
        }
}

/* Decays strong enough that a few tokens' product passes 2^-60 and single decays underflow
 * to 0 in float32: the state must follow the reference there too (kernels that keep the decay
 * as a running scale rescale their rows on the way). */
static void multi_token_strong_decay(gdn_backend backend)
{
    const int64_t tokens[] = {2, 5, 16};
    for (int i = 0; i < 3; i++)
        for (int st = 0; st < 2; st++) {
            decode_case c = base(4, 2, 4, 128, 128);
            c.num_tokens = tokens[i];
            c.strong_decay = 1;
            c.state_dtype = st ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
            c.act_dtype = st ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
            c.token_slots = i != 0;
            c.varlen = i == 1;
            c.padding = i == 2;
            c.zero_init = i == 1;
            c.gates_given = st == 1;
            expect_pass(c, backend, 3);
        }
}

/* The 0.5 inputs at decode and verify lengths (1..16 tokens), so on every kernel of every
 * backend: precomputed g and beta, and has_initial_state (sequences starting from zero), with
 * each activation and state dtype, both layouts, K = 64 / 128 and odd V. */
static void gates_and_initial_state_short(gdn_backend backend)
{
    const gdn_dtype acts[] = {GDN_DTYPE_F32, GDN_DTYPE_F16, GDN_DTYPE_BF16};
    const int64_t tokens[] = {1, 1, 2, 5, 16, 1, 3, 8};
    for (int i = 0; i < 16; i++) {
        decode_case c = base(5 + i % 3, 2, 4, i % 4 == 3 ? 64 : 128, i % 5 == 4 ? 100 : 128);
        c.num_tokens = tokens[i % 8];
        c.varlen = i % 4 == 2;
        c.zero_init = i % 4 != 1;
        c.gates_given = i % 2 == 1 || i % 8 == 0;
        c.act_dtype = acts[i % 3];
        c.state_dtype = i % 4 < 2 ? GDN_DTYPE_F32 : GDN_DTYPE_BF16;
        c.layout = i % 8 == 5 ? GDN_LAYOUT_KV : GDN_LAYOUT_VK;
        c.head_map = i % 3 == 2 ? GDN_HEAD_MAP_TILED : GDN_HEAD_MAP_GROUPED;
        c.padding = i % 3 == 0;
        c.token_slots = c.num_tokens > 1 && i % 2 == 0;
        c.strided = i % 5 == 2;
        expect_pass(c, backend, 2);
    }
}

static void cpu_gates_and_initial_state(void) { gates_and_initial_state_short(GDN_BACKEND_CPU); }

static void cuda_gates_and_initial_state(void)
{
    if (cuda_present())
        gates_and_initial_state_short(GDN_BACKEND_CUDA);
}

static void cpu_multi_token(void)
{
    multi_token(GDN_BACKEND_CPU);
    multi_token_odd_sizes(GDN_BACKEND_CPU);
    multi_token_strong_decay(GDN_BACKEND_CPU);
}

/* Fresh inputs for a hand-built f32 call: q, k [rows, H, K], v [rows, HV, V], a, b [rows, HV] from
 * N(0, 1), gate parameters of trained-model size. */
static void random_f32_inputs(rng *g, int64_t rows, int64_t H, int64_t HV, int64_t K, int64_t V, float *q,
                              float *k, float *v, float *a, float *b, float *A_log, float *dt_bias)
{
    float *all[] = {q, k, v, a, b};
    const int64_t sizes[] = {rows * H * K, rows * H * K, rows * HV * V, rows * HV, rows * HV};
    for (int x = 0; x < 5; x++)
        for (int64_t i = 0; i < sizes[x]; i++)
            all[x][i] = (float)rng_normal(g);
    for (int64_t i = 0; i < HV; i++)
        A_log[i] = (float)(0.5 * rng_uniform(g)), dt_bias[i] = (float)(-2.0 * rng_uniform(g));
}

/* Varlen prefill and mixed batches (0.5): sequences of 0..T tokens (the first T, past
 * GDN_MAX_TOKENS), zero and non-zero initial states, both forms of the gates, every activation
 * and state dtype, both layouts and head maps, against the float64 reference; then one call with
 * lengths up to 5000. (The l2 norm is off only with keys of norm about 1: unnormalised keys of
 * N(0, 1) make the delta rule diverge over hundreds of tokens, in the reference as much as
 * anywhere.) */
static void prefill_mixed(gdn_backend backend, int with_5000)
{
    const gdn_dtype acts[] = {GDN_DTYPE_F32, GDN_DTYPE_F16, GDN_DTYPE_BF16};
    for (int i = 0; i < 12; i++) {
        decode_case c =
            base(4 + i % 3, 1 + i % 2, 2 * (1 + i % 2), i % 4 == 3 ? 64 : 128, i % 5 == 4 ? 100 : 64);
        c.num_tokens = 17 + 23 * i;
        c.varlen = 1;
        c.zero_init = i % 2 == 0;
        c.gates_given = i % 3 == 1;
        c.act_dtype = acts[i % 3];
        c.state_dtype = i % 4 < 2 ? GDN_DTYPE_F32 : GDN_DTYPE_BF16;
        c.layout = i % 2 ? GDN_LAYOUT_KV : GDN_LAYOUT_VK;
        c.head_map = i % 3 == 2 ? GDN_HEAD_MAP_TILED : GDN_HEAD_MAP_GROUPED;
        c.index_dtype = i % 2 ? GDN_DTYPE_I32 : GDN_DTYPE_I64;
        c.padding = i % 3 == 0;
        c.write_slots = i % 4 == 1;
        c.null_slot_zero = i % 6 == 5;
        c.strided = i % 5 == 2;
        expect_pass(c, backend, 2);
    }
    /* the l2 norm off over long sequences: keys of norm about 1 (unit_keys) keep the delta rule
     * a contraction, as normalised keys do */
    for (int i = 0; i < 4; i++) {
        decode_case c = base(3 + i, 2, 4, 128, i % 2 ? 100 : 128);
        c.num_tokens = 60 + 110 * i;
        c.varlen = 1, c.qk_l2norm = 0, c.unit_keys = 1;
        c.zero_init = i % 2;
        c.gates_given = i >= 2;
        c.act_dtype = acts[i % 3];
        c.state_dtype = i == 3 ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
        c.layout = i == 1 ? GDN_LAYOUT_KV : GDN_LAYOUT_VK;
        c.head_map = i == 2 ? GDN_HEAD_MAP_TILED : GDN_HEAD_MAP_GROUPED;
        expect_pass(c, backend, 2);
    }
    if (!with_5000)
        return;
    decode_case c = base(6, 1, 2, 64, 64);
    c.num_tokens = 5000, c.varlen = 1, c.zero_init = 1;
    expect_pass(c, backend, 1);
}

/* The cuda chunked prefill (sequences of more than GDN_MAX_TOKENS tokens; vk, K = 128): varlen
 * calls that mix long sequences with decodes and verifies (the short ones go to the multi-token
 * kernel in the same call), every activation and state dtype, odd V, padding, the null slot,
 * write slots, zero initial states, both gate forms, strided activations, the l2 norm off, strong
 * decays, a paged pool whose slots are not 16-byte aligned (the chunked kernel then takes every
 * sequence), and qwen3-next's shape; two consecutive calls each (the state carried). */
static void prefill_chunked_cases(gdn_backend backend)
{
    const gdn_dtype acts[] = {GDN_DTYPE_F32, GDN_DTYPE_F16, GDN_DTYPE_BF16};
    const int64_t values[] = {128, 64, 100, 32, 48, 128};
    for (int i = 0; i < 12; i++) {
        decode_case c = base(3 + i % 3, 1 + i % 2, 2 * (1 + i % 2), 128, values[i % 6]);
        c.num_tokens = 17 + 61 * i;
        c.varlen = 1;
        c.zero_init = i % 2 == 0;
        c.gates_given = i % 3 == 1;
        c.act_dtype = acts[i % 3];
        c.state_dtype = i % 4 < 2 ? GDN_DTYPE_F32 : GDN_DTYPE_BF16;
        c.head_map = i % 3 == 2 ? GDN_HEAD_MAP_TILED : GDN_HEAD_MAP_GROUPED;
        c.index_dtype = i % 2 ? GDN_DTYPE_I32 : GDN_DTYPE_I64;
        c.padding = i % 3 == 0;
        c.write_slots = i % 4 == 1;
        c.null_slot_zero = i % 6 == 5;
        c.strided = i % 5 == 2;
        c.slot_gap = i == 7 ? 3 : i == 9 ? 1 : 0;
        expect_pass(c, backend, 2);
    }
    for (int i = 0; i < 4; i++) {
        decode_case c = base(3 + i, 2, 4, 128, 128);
        c.num_tokens = 60 + 110 * i;
        c.varlen = 1, c.qk_l2norm = 0, c.unit_keys = 1;
        c.zero_init = i % 2;
        c.gates_given = i >= 2;
        c.act_dtype = acts[(i + 2) % 3];
        c.state_dtype = i == 3 ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
        expect_pass(c, backend, 2);
    }
    for (int i = 0; i < 2; i++) {
        decode_case c = base(4, 1, 2, 128, 128);
        c.num_tokens = 150, c.varlen = 1, c.strong_decay = 1, c.gates_given = i;
        c.act_dtype = acts[2 * i];
        expect_pass(c, backend, 2);
    }
    for (int i = 0; i < 2; i++) { /* four value heads a key head, both maps */
        decode_case c = base(3, 2, 8, 128, 64);
        c.num_tokens = 230, c.varlen = 1, c.act_dtype = GDN_DTYPE_BF16;
        c.head_map = i ? GDN_HEAD_MAP_TILED : GDN_HEAD_MAP_GROUPED;
        expect_pass(c, backend, 2);
    }
    decode_case c = base(3, 16, 32, 128, 128);
    c.num_tokens = 1100, c.varlen = 1, c.act_dtype = GDN_DTYPE_BF16, c.zero_init = 1;
    expect_pass(c, backend, 1);
}

/* Whether the prefill path tests run path `path`: GDN_TEST_PREFILL_PATHS (e.g. "4,5,10") names
 * some of them (a GPU run that only needs the new ones); unset: all. */
static int prefill_path_on(int path)
{
    const char *only = getenv("GDN_TEST_PREFILL_PATHS");
    if (!only || !*only)
        return 1;
    for (const char *c = only; *c;) {
        char *end;
        const long named = strtol(c, &end, 10);
        if (end != c && named == path && (*end == ',' || *end == '\0'))
            return 1;
        c = *end ? end + 1 : end;
    }
    return 0;
}

/* Prefill test paths 0 .. kPrefillPaths - 1 (named in cuda_prefill_chunked). */
enum { kPrefillPaths = 15 };

/* The cuda chunked kernel's switches for prefill test path `path` (the list in
 * cuda_prefill_chunked), with a workspace from path 3 on; -1: every switch back to its default,
 * no workspace. */
static void force_prefill_path(int path)
{
    const int any = path < 0;
    gdn_cuda_chunked_force_precise(any ? -1 : path == 0);
    gdn_cuda_chunked_force_pipeline(any ? -1 : path == 1);
    gdn_cuda_chunked_force_split(any ? -1 : path >= 3);
    gdn_cuda_chunked_force_wgmma(any                        ? -1
                                 : path >= 4 && path <= 6   ? 1 << (path - 4)
                                 : path == 10 || path == 12 ? 2
                                                            : 0);
    gdn_cuda_chunked_force_kary(any ? -1 : path != 3); /* (the 32-way search is the default) */
    gdn_cuda_chunked_force_wy(any ? -1 : path == 8);
    gdn_cuda_chunked_force_lean(any ? -1 : path != 3);   /* (running pointers: the default) */
    gdn_cuda_chunked_force_spread(any ? -1 : path != 9); /* (spread: the default) */
    gdn_cuda_chunked_force_wg_late(any ? -1 : path == 10);
    /* (path 7 takes these two as the library chooses them: the default, whichever that is) */
    gdn_cuda_chunked_force_bulk(any || path == 7 ? -1 : path == 11 || path == 12);
    gdn_cuda_chunked_force_local_blocks(any || path == 7 ? -1 : path == 13);
    gdn_cuda_chunked_force_head_walk(any || path == 7 ? -1 : path == 14);
    case_workspace = !any && path >= 3;
}

/* The ways of the chunked products: three bf16 terms within the library's output tolerances and
 * GDN_TC3_STATE_REL; one term (the default with bf16 activations), pipelined, phase by phase and
 * split (with a workspace; its walk on mma.sync with the local kernel's binary record search
 * (GDN_PREFILL_KARY=0) and staging by offsets (GDN_PREFILL_LEAN=0), then with the 32-way search
 * and running pointers spread over the two warp groups (the defaults, also on the paths after
 * it), on wgmma with 1, 2 and 4 slices a block where the GPU is sm_90: elsewhere those three are
 * the mma.sync walk again; the mma.sync walk on records in the WY form, GDN_PREFILL_WY; the
 * mma.sync walk with its whole stage at the loop's barrier, GDN_PREFILL_SPREAD=0; and the wgmma
 * walk of 2 slices staging after its first products, GDN_PREFILL_WG_LATE; the mma.sync walk and the
 * wgmma walk of 2 slices with each record by one bulk copy, GDN_PREFILL_BULK; the local kernel at
 * 6 blocks a multiprocessor, GDN_PREFILL_LOCAL6=1; the head walk, GDN_PREFILL_HEAD_WALK=1), within the
 * tensor-core tolerances. */
static void cuda_prefill_chunked(void)
{
    if (!cuda_present())
        return;
    print_errors = 1;
    static const char *const paths[kPrefillPaths] = {
        "3-term products",
        "1-term products, pipelined",
        "1-term products, phase by phase",
        "1-term products, split (workspace), mma.sync walk, binary record search, staged by offsets",
        "1-term products, split, wgmma walk of 1 slice a block",
        "1-term products, split, wgmma walk of 2 slices a block",
        "1-term products, split, wgmma walk of 4 slices a block",
        "1-term products, split, mma.sync walk, 32-way record search, spread stage (default)",
        "1-term products, split, mma.sync walk, WY records",
        "1-term products, split, mma.sync walk, running pointers, all at the loop's barrier",
        "1-term products, split, wgmma walk of 2 slices a block, stage after the first products",
        "1-term products, split, mma.sync walk, spread stage, records by bulk copies",
        "1-term products, split, wgmma walk of 2 slices a block, records by bulk copies",
        "1-term products, split, mma.sync walk, local kernel at 6 blocks a multiprocessor",
        "1-term products, split, head walk (state as wgmma's A operand; V = 128 on sm_90, else the default)"};
    for (int path = 0; path < kPrefillPaths; path++) {
        if (!prefill_path_on(path))
            continue;
        force_prefill_path(path);
        tc_all = path == 0 ? 3 : 1;
        snprintf(config_note, sizeof config_note, "%s", paths[path]);
        prefill_chunked_cases(GDN_BACKEND_CUDA);
    }
    force_prefill_path(-1);
    tc_all = print_errors = 0;
    config_note[0] = '\0';
    /* the defaults: bf16 activations take one term */
    decode_case c = base(2, 2, 4, 128, 128);
    c.num_tokens = 300, c.varlen = 1, c.act_dtype = GDN_DTYPE_BF16, c.tc_products = 1;
    expect_pass(c, GDN_BACKEND_CUDA, 1);
    c.act_dtype = GDN_DTYPE_F32, c.tc_products = 3;
    expect_pass(c, GDN_BACKEND_CUDA, 1);
}

/* A workspace 16 bytes short or off alignment: refused, nothing written (the split path's
 * records would not fit or not be copied whole). */
static void cuda_prefill_workspace_refused(void)
{
    if (!cuda_present())
        return;
    for (int mode = 2; mode <= 3; mode++) {
        decode_case c = base(3, 1, 2, 128, 128);
        c.num_tokens = 100, c.varlen = 1, c.act_dtype = GDN_DTYPE_BF16, c.tc_products = 1;
        c.workspace = mode;
        expect_pass(c, GDN_BACKEND_CUDA, 1);
    }
}

/* A few small chunked calls in both precisions, for compute-sanitizer (the full matrix above
 * takes too long under it): a partial last chunk, a mixed call, padding, bf16 state, V = 48, and
 * sequences of up to 5 chunks (the walks' stages inside the loop). */
static void cuda_sanitize_prefill(void)
{
    if (!cuda_present())
        return;
    for (int path = 0; path < kPrefillPaths; path++) {
        if (!prefill_path_on(path))
            continue;
        const int precise = path == 0;
        force_prefill_path(path);
        for (int i = 0; i < 4; i++) {
            decode_case c = base(3, 1, 2, 128, i == 2 ? 48 : 128);
            c.num_tokens = i == 3 ? 700 : 70 + 30 * i, c.varlen = 1, c.padding = i == 1, c.zero_init = i == 0;
            c.act_dtype = i == 1 ? GDN_DTYPE_F32 : GDN_DTYPE_BF16;
            c.state_dtype = i == 2 ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
            c.tc_products = precise ? 3 : 1;
            expect_pass(c, GDN_BACKEND_CUDA, 1);
        }
    }
    force_prefill_path(-1);
}

/* Both ways the cpu backend computes long sequences: in chunks and token by token. */
static void cpu_prefill_mixed(void)
{
    for (int chunks = 0; chunks < 2; chunks++) {
        gdn_cpu_force_prefill(chunks);
        snprintf(config_note, sizeof config_note, "%s", chunks ? "in chunks" : "token by token");
        prefill_mixed(GDN_BACKEND_CPU, chunks); /* lengths up to 5000: the default path only */
    }
    gdn_cpu_force_prefill(-1);
    config_note[0] = '\0';
}

/* One sequence of 16384 tokens against the float64 reference, f32 and bf16 state: once as one
 * call (the whole sequence in chunks), and as 16 calls of 1024 tokens whose state is carried,
 * printing the error after each (the error curve; bench/results/prefill-16384-curve.txt). */
static void print_curve_point(int step, const decode_case_result *r, void *ctx)
{
    printf("    %s after %5d tokens: out rel %.3g, state rel %.3g (the reference rounded to the state dtype: "
           "%.3g)\n",
           (const char *)ctx, (step + 1) * 1024, r->out_rel, r->state_rel, r->rounded_rel);
}

static void cpu_prefill_16384(void)
{
    for (int st = 0; st < 2; st++) {
        decode_case c = base(1, 1, 1, 128, 128);
        c.state_dtype = st ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
        c.varlen = 1, c.num_tokens = 16384, c.zero_init = st == 0;
        expect_pass(c, GDN_BACKEND_CPU, 1);
        c.num_tokens = 1024;
        decode_case_result r;
        c.seed = seed++;
        CHECK_MSG(
            decode_case_run(&c, GDN_BACKEND_CPU, 16, print_curve_point, st ? "bf16 state" : "f32 state", &r),
            "16 x 1024 tokens, %s state: %s", st ? "bf16" : "f32", r.message);
    }
}

/* One f32 call of sequences 20, 3 and 17 tokens long (past GDN_MAX_TOKENS and under it) on the
 * cpu backend, with the given gate form and initial-state flags. */
typedef struct prefill_call {
    float q[40 * 32], k[40 * 32], v[40 * 2 * 16], a[40 * 2], b[40 * 2], g[40 * 2], beta[40 * 2];
    float A_log[2], dt_bias[2], out[40 * 2 * 16], pool[4 * 2 * 16 * 32];
    int64_t cu[4], slots[3];
    uint8_t has_init[3];
} prefill_call;

static gdn_status run_prefill_call(prefill_call *c, int gates_given, int with_flags)
{
    gdn_decode_params p;
    gdn_decode_params_init(&p);
    p.num_seqs = 3, p.num_q_heads = 1, p.num_v_heads = 2, p.head_dim_k = 32, p.head_dim_v = 16;
    p.act_dtype = GDN_DTYPE_F32, p.q = c->q, p.k = c->k, p.v = c->v, p.out = c->out;
    if (gates_given)
        p.g = c->g, p.beta = c->beta;
    else
        p.a = c->a, p.b = c->b, p.A_log = c->A_log, p.dt_bias = c->dt_bias;
    p.state_pool = c->pool, p.num_slots = 4, p.slot_indices = c->slots;
    p.num_tokens = 20, p.cu_seqlens = c->cu, p.total_tokens = 40;
    p.has_initial_state = with_flags ? c->has_init : NULL;
    p.backend = GDN_BACKEND_CPU;
    return gdn_decode(&p);
}

/* g and beta given precomputed give the same bits as the raw gates they come from, and a
 * sequence without an initial state the same bits as one whose slot holds zeros. */
static void prefill_gates_and_initial_state(void)
{
    static prefill_call raw, given;
    rng g = {seed++};
    random_f32_inputs(&g, 40, 1, 2, 32, 16, raw.q, raw.k, raw.v, raw.a, raw.b, raw.A_log, raw.dt_bias);
    for (size_t i = 0; i < sizeof raw.pool / sizeof raw.pool[0]; i++)
        raw.pool[i] = (float)(0.05 * rng_normal(&g));
    const int64_t cu[4] = {0, 20, 23, 40}, slots[3] = {2, 0, 3};
    memcpy(raw.cu, cu, sizeof cu), memcpy(raw.slots, slots, sizeof slots);
    raw.has_init[0] = 0, raw.has_init[1] = 1, raw.has_init[2] = 0;
    for (int i = 0; i < 40 * 2; i++) {
        raw.g[i] = gdn_gate_log(raw.A_log[i % 2], raw.a[i], raw.dt_bias[i % 2]);
        raw.beta[i] = gdn_sigmoid(raw.b[i]);
    }
    given = raw;
    CHECK_MSG(run_prefill_call(&raw, 0, 0) == GDN_OK, "raw gates: %s", gdn_last_error());
    CHECK_MSG(run_prefill_call(&given, 1, 0) == GDN_OK, "given gates: %s", gdn_last_error());
    CHECK_MSG(!memcmp(raw.out, given.out, sizeof raw.out) && !memcmp(raw.pool, given.pool, sizeof raw.pool),
              "g and beta given differ from the raw gates they come from");

    static prefill_call flagged, zeroed;
    random_f32_inputs(&g, 40, 1, 2, 32, 16, flagged.q, flagged.k, flagged.v, flagged.a, flagged.b,
                      flagged.A_log, flagged.dt_bias);
    for (size_t i = 0; i < sizeof flagged.pool / sizeof flagged.pool[0]; i++)
        flagged.pool[i] = (float)(0.05 * rng_normal(&g));
    memcpy(flagged.cu, cu, sizeof cu), memcpy(flagged.slots, slots, sizeof slots);
    flagged.has_init[0] = 0, flagged.has_init[1] = 1, flagged.has_init[2] = 0;
    zeroed = flagged;
    const int64_t tile = 2 * 16 * 32;
    memset(zeroed.pool + slots[0] * tile, 0, tile * sizeof(float)); /* sequences 0 and 2: no state */
    memset(zeroed.pool + slots[2] * tile, 0, tile * sizeof(float));
    CHECK_MSG(run_prefill_call(&flagged, 0, 1) == GDN_OK, "has_initial_state: %s", gdn_last_error());
    CHECK_MSG(run_prefill_call(&zeroed, 0, 0) == GDN_OK, "zeroed slots: %s", gdn_last_error());
    CHECK_MSG(!memcmp(flagged.out, zeroed.out, sizeof flagged.out) &&
                  !memcmp(flagged.pool, zeroed.pool, sizeof flagged.pool),
              "has_initial_state = 0 differs from a zeroed slot");
}

/* The defining property of snapshots: the state saved after token t of a T-token call equals
 * the state after t+1 one-token calls, and so do the outputs. */
static void snapshots_match_single_steps(void)
{
    enum { N = 2, H = 1, HV = 2, K = 32, V = 16, T = 4, SLOTS = N * (T + 1) };
    static float q[N * T * H * K], k[N * T * H * K], v[N * T * HV * V], a[N * T * HV], b[N * T * HV];
    static float A_log[HV], dt_bias[HV], pool[SLOTS * HV * V * K], out_multi[N * T * HV * V];
    static float pool_single[SLOTS * HV * V * K], out_single[N * HV * V];
    rng g = {seed++};
    random_f32_inputs(&g, N * T, H, HV, K, V, q, k, v, a, b, A_log, dt_bias);
    for (size_t i = 0; i < sizeof pool / sizeof pool[0]; i++)
        pool[i] = (float)(0.05 * rng_normal(&g));
    memcpy(pool_single, pool, sizeof pool);
    int64_t slot[N] = {0, 1}, token_slots[N * T];
    for (int i = 0; i < N * T; i++)
        token_slots[i] = N + i;

    gdn_decode_params p;
    gdn_decode_params_init(&p);
    p.num_seqs = N, p.num_q_heads = H, p.num_v_heads = HV, p.head_dim_k = K, p.head_dim_v = V;
    p.act_dtype = GDN_DTYPE_F32, p.q = q, p.k = k, p.v = v, p.a = a, p.b = b, p.out = out_multi;
    p.A_log = A_log, p.dt_bias = dt_bias, p.state_pool = pool, p.num_slots = SLOTS;
    p.slot_indices = slot, p.backend = GDN_BACKEND_CPU;
    p.num_tokens = T, p.token_slots = token_slots;
    CHECK(gdn_decode(&p) == GDN_OK);

    for (int t = 0; t < T; t++) { /* the same tokens one call at a time: rows n*T + t */
        gdn_decode_params s = p;
        s.num_tokens = 0, s.token_slots = NULL;
        s.q = q + t * H * K, s.k = k + t * H * K, s.v = v + t * HV * V, s.a = a + t * HV, s.b = b + t * HV;
        s.q_stride = s.k_stride = T * H * K, s.v_stride = T * HV * V, s.a_stride = s.b_stride = T * HV;
        s.out = out_single, s.state_pool = pool_single;
        CHECK(gdn_decode(&s) == GDN_OK);
        double worst = 0;
        for (int n = 0; n < N; n++) {
            for (int i = 0; i < HV * V * K; i++) {
                double d = fabs(pool[token_slots[n * T + t] * HV * V * K + i] -
                                pool_single[slot[n] * HV * V * K + i]);
                worst = d > worst ? d : worst;
            }
            for (int i = 0; i < HV * V; i++) {
                double d = fabs(out_multi[(n * T + t) * HV * V + i] - out_single[n * HV * V + i]);
                worst = d > worst ? d : worst;
            }
        }
        CHECK_MSG(worst < 1e-6, "token %d: snapshot/output differs from one-token calls by %g", t, worst);
    }
    /* The sequences' own slots are untouched: states went to the token slots only. */
    CHECK(memcmp(pool, pool_single, (size_t)N * HV * V * K * sizeof(float)) != 0);
}

/* Paged pools (state_slot_stride): a gap after each slot, before it, and an odd gap, on every
 * layout and state dtype, one token and multi-token with snapshots and rollback; the harness
 * checks every gap element is left as it was. */
static void paged_pool(gdn_backend backend)
{
    for (int gap = 1; gap <= 3; gap++)
        for (int l = 0; l < 2; l++)
            for (int st = 0; st < 2; st++)
                for (int multi = 0; multi < 2; multi++) {
                    decode_case c = base(5, 2, 4, l && gap == 3 ? 64 : 128, gap == 3 ? 48 : 128);
                    c.slot_gap = gap;
                    c.layout = l ? GDN_LAYOUT_KV : GDN_LAYOUT_VK;
                    c.state_dtype = st ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
                    c.act_dtype = st ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
                    c.padding = 1, c.null_slot_zero = gap == 2;
                    if (multi)
                        c.num_tokens = 3, c.token_slots = 1, c.accepted = 1, c.varlen = gap == 1;
                    else
                        c.write_slots = 1;
                    expect_pass(c, backend, 2);
                }
}

static void cpu_paged_pool(void) { paged_pool(GDN_BACKEND_CPU); }
static void reference_paged_pool(void) { paged_pool(GDN_BACKEND_REFERENCE); }

/* The same call on a packed pool and on a paged view of the same states: bit-identical outputs
 * and states (cpu backend), and the gaps untouched. */
static void paged_pool_matches_packed(void)
{
    enum { N = 3, H = 2, HV = 4, K = 128, V = 32, SLOTS = 6, TILE = HV * V * K, GAP = V * K + 5 };
    static float q[N * H * K], k[N * H * K], v[N * HV * V], a[N * HV], b[N * HV], A_log[HV], dt_bias[HV];
    static float packed[SLOTS * TILE], paged[SLOTS * (TILE + GAP)], out_packed[N * HV * V],
        out_paged[N * HV * V];
    rng g = {seed++};
    random_f32_inputs(&g, N, H, HV, K, V, q, k, v, a, b, A_log, dt_bias);
    for (size_t i = 0; i < sizeof paged / sizeof paged[0]; i++)
        paged[i] = (float)(0.05 * rng_normal(&g));
    for (int s = 0; s < SLOTS; s++) /* the view starts GAP elements in: storage[:, 1:]-like */
        memcpy(packed + s * TILE, paged + GAP + s * (TILE + GAP), TILE * sizeof(float));
    static float before[SLOTS * (TILE + GAP)];
    memcpy(before, paged, sizeof paged);
    int64_t slot[N] = {4, -1, 1}, write[N] = {0, 3, 5};

    gdn_decode_params p;
    gdn_decode_params_init(&p);
    p.num_seqs = N, p.num_q_heads = H, p.num_v_heads = HV, p.head_dim_k = K, p.head_dim_v = V;
    p.act_dtype = GDN_DTYPE_F32, p.q = q, p.k = k, p.v = v, p.a = a, p.b = b, p.out = out_packed;
    p.A_log = A_log, p.dt_bias = dt_bias, p.state_pool = packed, p.num_slots = SLOTS;
    p.slot_indices = slot, p.write_slot_indices = write, p.backend = GDN_BACKEND_CPU;
    CHECK(gdn_decode(&p) == GDN_OK);
    p.state_pool = paged + GAP, p.state_slot_stride = TILE + GAP, p.out = out_paged;
    CHECK_MSG(gdn_decode(&p) == GDN_OK, "%s", gdn_last_error());
    CHECK(memcmp(out_packed, out_paged, sizeof out_packed) == 0);
    int64_t tiles_differ = 0, gap_changed = 0;
    for (int s = 0; s < SLOTS; s++) {
        tiles_differ += memcmp(packed + s * TILE, paged + GAP + s * (TILE + GAP), TILE * sizeof(float)) != 0;
        gap_changed += memcmp(paged + s * (TILE + GAP), before + s * (TILE + GAP), GAP * sizeof(float)) != 0;
    }
    CHECK_MSG(tiles_differ == 0, "%lld slots differ between the packed and the paged pool",
              (long long)tiles_differ);
    CHECK_MSG(gap_changed == 0, "%lld gaps of the paged pool were written", (long long)gap_changed);
    CHECK(memcmp(packed + 4 * TILE, paged + GAP + 4 * (TILE + GAP), TILE * sizeof(float)) == 0);
}

/* vLLM's padded layout past 2^31 elements on the cpu backend: HV = 32 at page stride
 * (HV+1)*V*K = 540672 elements, 4000 f32 slots (8.6 GB of address space, mapped without
 * reserving it: only the pages the test touches become memory). Slot 3973 is the first whose
 * element offset passes 2^31. The rows must equal the same call on a small packed pool bit for
 * bit, and every other touched byte must still be zero. */
static void cpu_paged_pool_over_2g_elements(void)
{
    enum { N = 3, H = 16, HV = 32, K = 128, V = 128, TILE = HV * V * K, STRIDE = (HV + 1) * V * K };
    const int64_t slots = 4000;
    const size_t bytes = (size_t)slots * STRIDE * sizeof(float);
    float *big =
        mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (big == MAP_FAILED) {
        test_note("could not map 8.6 GB of address space: the >2^31-element paged pool is checked on the GPU "
                  "(tests/test_cuda.c) only");
        return;
    }
    static float q[N * H * K], k[N * H * K], v[N * HV * V], a[N * HV], b[N * HV], A_log[HV], dt_bias[HV];
    static float small[4 * TILE], out_big[N * HV * V], out_small[N * HV * V];
    rng g = {seed++};
    random_f32_inputs(&g, N, H, HV, K, V, q, k, v, a, b, A_log, dt_bias);
    /* big slots 3973, 2, 3999 (read) and 3998 (a write target) <-> small slots 0, 1, 2, 3 */
    const int64_t big_slot[4] = {3973, 2, 3999, 3998};
    for (int s = 0; s < 4; s++)
        for (int64_t i = 0; i < TILE; i++)
            small[s * TILE + i] = big[big_slot[s] * (int64_t)STRIDE + i] = (float)(0.05 * rng_normal(&g));
    int64_t read_big[N] = {3973, 2, 3999}, write_big[N] = {3973, 3998, -1};
    int64_t read_small[N] = {0, 1, 2}, write_small[N] = {0, 3, -1};

    gdn_decode_params p;
    gdn_decode_params_init(&p);
    p.num_seqs = N, p.num_q_heads = H, p.num_v_heads = HV, p.head_dim_k = K, p.head_dim_v = V;
    p.act_dtype = GDN_DTYPE_F32, p.q = q, p.k = k, p.v = v, p.a = a, p.b = b;
    p.A_log = A_log, p.dt_bias = dt_bias, p.backend = GDN_BACKEND_CPU;
    p.out = out_small, p.state_pool = small, p.num_slots = 4;
    p.slot_indices = read_small, p.write_slot_indices = write_small;
    CHECK(gdn_decode(&p) == GDN_OK);
    p.out = out_big, p.state_pool = big, p.num_slots = slots, p.state_slot_stride = STRIDE;
    p.slot_indices = read_big, p.write_slot_indices = write_big;
    gdn_status st = gdn_decode(&p);
    CHECK_MSG(st == GDN_OK, "%s", gdn_last_error());
    CHECK(memcmp(out_small, out_big, sizeof out_small) == 0);
    int64_t differ = 0, stray = 0;
    for (int s = 0; s < 4; s++)
        differ += memcmp(small + s * TILE, big + big_slot[s] * (int64_t)STRIDE, TILE * sizeof(float)) != 0;
    for (int s = 0; s < 4; s++) /* the page gap after each touched slot, and the slot before 3973 */
        for (int64_t i = TILE; i < STRIDE; i++)
            stray += big[big_slot[s] * (int64_t)STRIDE + i] != 0.0f;
    for (int64_t i = 0; i < STRIDE; i++)
        stray += big[3972 * (int64_t)STRIDE + i] != 0.0f;
    CHECK_MSG(differ == 0, "%lld slots differ from the packed run", (long long)differ);
    CHECK_MSG(stray == 0, "%lld elements written outside the slots the call names", (long long)stray);
    munmap(big, bytes);
}

static void cpu_every_combination(void) { every_combination(GDN_BACKEND_CPU); }
static void cpu_odd_sizes(void) { odd_sizes(GDN_BACKEND_CPU); }
static void cpu_model_shapes(void) { model_shapes_batch(GDN_BACKEND_CPU); }
static void cpu_multi_step(void) { multi_step(GDN_BACKEND_CPU); }

static int cuda_present(void)
{
    if (gdn_backend_built(GDN_BACKEND_CUDA) && gdn_cuda_device_count() > 0)
        return 1;
    test_note("no CUDA device here: the cuda backend is checked on the GPU machine (tests/gpu/run.sh)");
    return 0;
}

static void cuda_all(void)
{
    if (!cuda_present())
        return;
    every_combination(GDN_BACKEND_CUDA);
    odd_sizes(GDN_BACKEND_CUDA);
    model_shapes_batch(GDN_BACKEND_CUDA);
    multi_step(GDN_BACKEND_CUDA);
    multi_token(GDN_BACKEND_CUDA);
    paged_pool(GDN_BACKEND_CUDA);
}

/* Every configuration of the cuda one-token kernel (the library picks one by batch size, so
 * the default run above meets only some of them), each also launched with pdl = 1. */
static void one_token_cases(gdn_backend backend)
{
    every_combination(backend);
    odd_sizes(backend);
    model_shapes_batch(backend);
    multi_step(backend);
}

/* $GDN_TEST_CONFIGS ("3,10,13"): only those configurations in the configuration tests, for
 * sanitizer runs that cannot afford all of them in one call; unset: every configuration. */
static int config_selected(int config)
{
    const char *list = getenv("GDN_TEST_CONFIGS");
    if (!list || !*list)
        return 1;
    for (const char *at = list; *at;) {
        char *end;
        const long v = strtol(at, &end, 10);
        if (end == at)
            break;
        if (v == config)
            return 1;
        at = *end == ',' ? end + 1 : end;
    }
    return 0;
}

static void cuda_one_token_configs(void)
{
    if (!cuda_present())
        return;
    for (int config = 0; config < gdn_cuda_config_count(GDN_CUDA_ONE_TOKEN); config++)
        for (int pdl = 0; pdl < 2 && config_selected(config); pdl++) {
            gdn_cuda_force_config(GDN_CUDA_ONE_TOKEN, config);
            pdl_all = pdl;
            char name[32];
            gdn_cuda_config_name(GDN_CUDA_ONE_TOKEN, config, name, sizeof name);
            snprintf(config_note, sizeof config_note, "config %s%s", name, pdl ? " pdl" : "");
            one_token_cases(GDN_BACKEND_CUDA);
        }
    gdn_cuda_force_config(GDN_CUDA_ONE_TOKEN, -1);
    pdl_all = 0;
    config_note[0] = '\0';
}

/* Every configuration of the cuda multi-token kernel, through the multi-token matrix (varlen,
 * token slots, num_accepted, padding) and odd value sizes. */
static void cuda_multi_token_configs(void)
{
    if (!cuda_present())
        return;
    for (int config = 0; config < gdn_cuda_config_count(GDN_CUDA_MULTI_TOKEN); config++) {
        if (!config_selected(config))
            continue;
        gdn_cuda_force_config(GDN_CUDA_MULTI_TOKEN, config);
        char name[32];
        gdn_cuda_config_name(GDN_CUDA_MULTI_TOKEN, config, name, sizeof name);
        snprintf(config_note, sizeof config_note, "multi-token config %s", name);
        multi_token(GDN_BACKEND_CUDA);
        multi_token_odd_sizes(GDN_BACKEND_CUDA);
        multi_token_strong_decay(GDN_BACKEND_CUDA);
    }
    gdn_cuda_force_config(GDN_CUDA_MULTI_TOKEN, -1);
    config_note[0] = '\0';
}

/* Every instruction-set variant of the cpu backend's inner loops this machine has (GDN_CPU_ISA),
 * through the whole randomized matrix. */
static void matrix_on_isa(const char *isa)
{
    snprintf(config_note, sizeof config_note, "isa %s", isa);
    every_combination(GDN_BACKEND_CPU);
    odd_sizes(GDN_BACKEND_CPU);
    model_shapes_batch(GDN_BACKEND_CPU);
    multi_step(GDN_BACKEND_CPU);
    multi_token(GDN_BACKEND_CPU);
    paged_pool(GDN_BACKEND_CPU);
    gdn_cpu_force_prefill(1); /* the chunked path's products have per-instruction-set kernels */
    prefill_mixed(GDN_BACKEND_CPU, 0);
    gdn_cpu_force_prefill(-1);
    config_note[0] = '\0';
}

static void cpu_every_isa(void) { test_each_cpu_isa(matrix_on_isa); }

/* A step with g = 0 and beta = 0 (decay 1, u = 0) stores every bf16 state word as it read it, on
 * every instruction set. The K = 128 rows narrow with VCVTNE2PS2BF16 where the CPU has it, which
 * reads a denormal as zero, so a row that holds a denormal must be stored again by the exact
 * sequence: rows of normal words, rows with one denormal or one zero among normal ones, and rows
 * of denormals only, in heads of V = 7 (an odd last row, paired with itself) and V = 128, one and
 * two steps (the second reads the first's stores). */
static int64_t identity_changed;
static void bf16_identity_step_on_isa(const char *isa)
{
    enum { N = 2, HV = 2, K = 128, VMAX = 128 };
    static uint16_t pool[N * HV * VMAX * K], before[N * HV * VMAX * K];
    static float q[N * K], k[N * K], v[N * HV * VMAX], g[N * HV], beta[N * HV], out[N * HV * VMAX];
    rng r = {seed++};
    int64_t changed = 0;
    for (int case_v = 0; case_v < 2; case_v++) {
        const int64_t V = case_v ? 128 : 7, rows = N * HV * V;
        for (int i = 0; i < N * K; i++)
            q[i] = (float)rng_normal(&r), k[i] = (float)rng_normal(&r);
        for (int64_t i = 0; i < N * HV * V; i++)
            v[i] = (float)rng_normal(&r);
        for (int i = 0; i < N * HV; i++)
            g[i] = 0.0f, beta[i] = 0.0f;
        for (int64_t row = 0; row < rows; row++)
            for (int64_t i = 0; i < K; i++) {
                uint16_t w = gdn_f32_to_bf16((float)(0.5 * rng_normal(&r)));
                const int64_t odd_one = (row * 37) % K;
                const uint16_t sign = (uint16_t)((uint32_t)rng_next(&r) & 0x8000u);
                const uint16_t denormal = (uint16_t)(sign | (1u + (uint32_t)rng_next(&r) % 0x7fu));
                if ((row % 4 == 1 && i == odd_one) || row % 4 == 3)
                    w = denormal;
                else if (row % 4 == 2 && i == odd_one)
                    w = 0x0000u;
                else if ((w & 0x7fffu) == 0)
                    w = 0x3f80u; /* no -0: 0 k + (-0) is +0 */
                pool[row * K + i] = w;
            }
        memcpy(before, pool, sizeof pool);
        gdn_decode_params p;
        gdn_decode_params_init(&p);
        const int64_t slots[N] = {1, 0};
        p.num_seqs = N, p.num_q_heads = 1, p.num_v_heads = HV, p.head_dim_k = K, p.head_dim_v = V;
        p.act_dtype = GDN_DTYPE_F32, p.q = q, p.k = k, p.v = v, p.out = out, p.g = g, p.beta = beta;
        p.state_pool = pool, p.num_slots = N, p.state_dtype = GDN_DTYPE_BF16, p.slot_indices = slots;
        p.backend = GDN_BACKEND_CPU, p.num_threads = 1;
        for (int step = 0; step < 2; step++) {
            CHECK_MSG(gdn_decode(&p) == GDN_OK, "%s: %s", isa, gdn_last_error());
            for (int64_t i = 0; i < rows * K; i++)
                changed += pool[i] != before[i];
        }
    }
    if (changed)
        test_note("%s: %lld bf16 state words changed by an identity step", isa, (long long)changed);
    identity_changed += changed;
}

static void cpu_bf16_identity_step_every_isa(void)
{
    identity_changed = 0;
    test_each_cpu_isa(bf16_identity_step_on_isa);
    CHECK_MSG(identity_changed == 0, "%lld bf16 state words changed by identity steps",
              (long long)identity_changed);
}

/* The cpu backend with several threads must give bit-identical results to one thread. */
static void cpu_threads_agree(void)
{
    /* Large enough that the thread split engages (>= 2^18 state elements per thread). */
    decode_case c = base(16, 4, 8, 128, 128);
    c.act_dtype = GDN_DTYPE_BF16, c.padding = 1;
    expect_pass(c, GDN_BACKEND_CPU, 2);
}

void register_decode_tests(void)
{
    seed = rng_fresh_seed();
    printf("decode tests: first seed %llu\n", (unsigned long long)seed);
    test_add("decode/cpu_every_combination", cpu_every_combination);
    test_add("decode/cpu_odd_sizes", cpu_odd_sizes);
    test_add("decode/cpu_model_shapes", cpu_model_shapes);
    test_add("decode/cpu_multi_step", cpu_multi_step);
    test_add("decode/cpu_threads", cpu_threads_agree);
    test_add("decode/cpu_multi_token", cpu_multi_token);
    test_add("decode/cpu_prefill_mixed", cpu_prefill_mixed);
    test_add("decode/prefill_gates_and_initial_state", prefill_gates_and_initial_state);
    test_add("decode/cpu_prefill_16384", cpu_prefill_16384);
    test_add("decode/cpu_every_isa", cpu_every_isa);
    test_add("decode/cpu_bf16_identity_step_every_isa", cpu_bf16_identity_step_every_isa);
    test_add("decode/snapshots_match_single_steps", snapshots_match_single_steps);
    test_add("decode/cpu_paged_pool", cpu_paged_pool);
    test_add("decode/reference_paged_pool", reference_paged_pool);
    test_add("decode/paged_pool_matches_packed", paged_pool_matches_packed);
    test_add("decode/cpu_paged_pool_over_2g_elements", cpu_paged_pool_over_2g_elements);
    test_add("decode/cuda_all", cuda_all);
    test_add("decode/cuda_one_token_configs", cuda_one_token_configs);
    test_add("decode/cuda_multi_token_configs", cuda_multi_token_configs);
    test_add("decode/cpu_gates_and_initial_state", cpu_gates_and_initial_state);
    test_add("decode/cuda_gates_and_initial_state", cuda_gates_and_initial_state);
    test_add("decode/cuda_prefill_chunked", cuda_prefill_chunked);
    test_add("decode/cuda_sanitize_prefill", cuda_sanitize_prefill);
    test_add("decode/cuda_prefill_workspace_refused", cuda_prefill_workspace_refused);
}
