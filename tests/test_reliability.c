/*
 * Reliability (docs/errors.md):
 *   - NaN/Inf: a NaN or Inf in one row's q, k, v, a or b reaches that row's outputs and state
 *     only (only the heads that read it), never another row, head or slot, and never crashes;
 *     checked bit for bit against a clean run on the cpu and the reference backends;
 *   - concurrency: four host threads decoding at once on their own pools give bit for bit the
 *     single-threaded results, and each thread's gdn_last_error() names its own error;
 *   - validation of the multi-token arguments (num_tokens, cu_seqlens, token_slots,
 *     num_accepted), with the same "nothing written" check as tests/test_validation.c;
 *   - regression tests for the library bugs tests/fuzz found (all fixed).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/common/numeric.h"
#include "../src/core/backends.h"
#include "gdn.h"
#include "test.h"

/* ---------------------------------------------------------------------------------------
 * A small problem on the heap: every buffer exactly sized, values from a fixed seed
 * ------------------------------------------------------------------------------------- */

typedef struct problem_cfg {
    int64_t N, H, HV, K, V, T, slots;
    gdn_dtype act, state, idx;
    gdn_state_layout layout;
    gdn_head_map head_map;
    int no_l2norm, null_slot_zero, threads;
    gdn_backend backend;
    /* logical index values; NULL = argument absent */
    const int64_t *read, *write, *token_slots, *accepted, *cu;
    uint32_t seed;
} problem_cfg;

typedef struct problem {
    problem_cfg c;
    int64_t rows, T;
    size_t aes, ses, ies;
    unsigned char *q, *k, *v, *a, *b, *out, *pool;
    float *A_log, *dt_bias;
    unsigned char *read, *write, *ts, *acc, *cu;
    size_t qk_bytes, v_bytes, ab_bytes, out_bytes, pool_bytes;
    gdn_decode_params p;
} problem;

/* Elements of any floating dtype are read and written with src/common/numeric.h. */
static int is_finite_at(const unsigned char *base, gdn_dtype dtype, size_t i)
{
    return isfinite(gdn_load_f64(base, dtype, (int64_t)i));
}

static int is_nan_at(const unsigned char *base, gdn_dtype dtype, size_t i)
{
    return isnan(gdn_load_f64(base, dtype, (int64_t)i));
}

static double uniform(uint32_t *s, double lo, double hi)
{
    *s = *s * 1664525u + 1013904223u;
    return lo + (hi - lo) * (double)(*s >> 8) / (double)(1u << 24);
}

static unsigned char *index_array(const problem *pr, const int64_t *values, int64_t count)
{
    if (!values)
        return NULL;
    unsigned char *buf = malloc((size_t)count * pr->ies + 1);
    for (int64_t i = 0; i < count; i++) {
        if (pr->c.idx == GDN_DTYPE_I32) {
            int32_t v = (int32_t)values[i];
            memcpy(buf + 4 * i, &v, 4);
        } else {
            memcpy(buf + 8 * i, &values[i], 8);
        }
    }
    return buf;
}

/* Points pr->p at pr's own buffers (call again after copying a problem). */
static void problem_params(problem *pr)
{
    const problem_cfg *c = &pr->c;
    gdn_decode_params *p = &pr->p;
    gdn_decode_params_init(p);
    p->num_seqs = c->N, p->num_q_heads = c->H, p->num_v_heads = c->HV, p->head_dim_k = c->K,
    p->head_dim_v = c->V;
    p->act_dtype = c->act, p->q = pr->q, p->k = pr->k, p->v = pr->v, p->a = pr->a, p->b = pr->b,
    p->out = pr->out;
    p->A_log = pr->A_log, p->dt_bias = pr->dt_bias;
    p->qk_l2norm = !c->no_l2norm, p->head_map = c->head_map;
    p->state_pool = pr->pool, p->num_slots = c->slots, p->state_layout = c->layout, p->state_dtype = c->state;
    p->slot_indices = pr->read, p->write_slot_indices = pr->write, p->index_dtype = c->idx;
    p->null_slot_zero = c->null_slot_zero;
    p->backend = c->backend, p->num_threads = c->threads;
    p->num_tokens = c->T, p->cu_seqlens = pr->cu, p->token_slots = pr->ts, p->num_accepted = pr->acc;
}

static void problem_make(problem *pr, const problem_cfg *c)
{
    memset(pr, 0, sizeof *pr);
    pr->c = *c;
    pr->T = c->T > 0 ? c->T : 1;
    pr->rows = c->cu ? c->cu[c->N] : c->N * pr->T;
    pr->aes = gdn_dtype_size(c->act), pr->ses = gdn_dtype_size(c->state), pr->ies = gdn_dtype_size(c->idx);
    pr->qk_bytes = (size_t)(pr->rows * c->H * c->K) * pr->aes;
    pr->v_bytes = pr->out_bytes = (size_t)(pr->rows * c->HV * c->V) * pr->aes;
    pr->ab_bytes = (size_t)(pr->rows * c->HV) * pr->aes;
    pr->pool_bytes = (size_t)(c->slots * c->HV * c->V * c->K) * pr->ses;
    pr->q = malloc(pr->qk_bytes + 1), pr->k = malloc(pr->qk_bytes + 1), pr->v = malloc(pr->v_bytes + 1);
    pr->a = malloc(pr->ab_bytes + 1), pr->b = malloc(pr->ab_bytes + 1), pr->out = malloc(pr->out_bytes + 1);
    pr->pool = malloc(pr->pool_bytes + 1);
    pr->A_log = malloc((size_t)c->HV * sizeof(float)), pr->dt_bias = malloc((size_t)c->HV * sizeof(float));
    uint32_t s = c->seed ? c->seed : 1u;
    double qk = c->no_l2norm ? 1.0 / sqrt((double)c->K) : 1.0;
    for (size_t i = 0; i < pr->qk_bytes / pr->aes; i++) {
        gdn_store_f64(pr->q, c->act, i, uniform(&s, -qk, qk));
        gdn_store_f64(pr->k, c->act, i, uniform(&s, -qk, qk));
    }
    for (size_t i = 0; i < pr->v_bytes / pr->aes; i++)
        gdn_store_f64(pr->v, c->act, i, uniform(&s, -1, 1));
    for (size_t i = 0; i < pr->ab_bytes / pr->aes; i++) {
        gdn_store_f64(pr->a, c->act, i, uniform(&s, -2, 2));
        gdn_store_f64(pr->b, c->act, i, uniform(&s, -2, 2));
    }
    for (size_t i = 0; i < pr->out_bytes; i++)
        pr->out[i] = 0xA5;
    for (size_t i = 0; i < pr->pool_bytes / pr->ses; i++)
        gdn_store_f64(pr->pool, c->state, i, uniform(&s, -0.5, 0.5));
    for (int64_t i = 0; i < c->HV; i++) {
        pr->A_log[i] = (float)uniform(&s, -1, 0.5);
        pr->dt_bias[i] = (float)uniform(&s, -1, 1);
    }
    pr->read = index_array(pr, c->read, c->N);
    pr->write = index_array(pr, c->write, c->N);
    pr->ts = index_array(pr, c->token_slots, c->N * pr->T);
    pr->acc = index_array(pr, c->accepted, c->N);
    pr->cu = index_array(pr, c->cu, c->N + 1);
    problem_params(pr);
}

static void problem_free(problem *pr)
{
    unsigned char *all[] = {pr->q,    pr->k,    pr->v,     pr->a,  pr->b,   pr->out,
                            pr->pool, pr->read, pr->write, pr->ts, pr->acc, pr->cu};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i]);
    free(pr->A_log);
    free(pr->dt_bias);
    memset(pr, 0, sizeof *pr);
}

/* A deep copy (same values, its own buffers). */
static void problem_copy(problem *dst, const problem *src)
{
    problem_make(dst, &src->c);
    memcpy(dst->q, src->q, src->qk_bytes);
    memcpy(dst->k, src->k, src->qk_bytes);
    memcpy(dst->v, src->v, src->v_bytes);
    memcpy(dst->a, src->a, src->ab_bytes);
    memcpy(dst->b, src->b, src->ab_bytes);
    memcpy(dst->out, src->out, src->out_bytes);
    memcpy(dst->pool, src->pool, src->pool_bytes);
}

/* Bytes of slot `slot`, value head hv, in the pool (a V x K tile). */
static size_t tile_bytes(const problem *pr) { return (size_t)(pr->c.V * pr->c.K) * pr->ses; }
static size_t tile_at(const problem *pr, int64_t slot, int64_t hv)
{
    return (size_t)(slot * pr->c.HV + hv) * tile_bytes(pr);
}

/* Element (j, i) of the V x K state of tile (slot, hv), whatever the layout. */
static size_t state_elem(const problem *pr, int64_t slot, int64_t hv, int64_t j, int64_t i)
{
    int64_t within = pr->c.layout == GDN_LAYOUT_VK ? j * pr->c.K + i : i * pr->c.V + j;
    return (size_t)((slot * pr->c.HV + hv) * pr->c.V * pr->c.K + within);
}

/* ---------------------------------------------------------------------------------------
 * NaN / Inf containment
 * ------------------------------------------------------------------------------------- */

enum { POISON_Q, POISON_K, POISON_V, POISON_A, POISON_B };
static const char *const poison_names[] = {"q", "k", "v", "a", "b"};
enum { NAN_VALUE, POS_INF, NEG_INF };
static const char *const value_names[] = {"NaN", "+Inf", "-Inf"};
static const double poison_values[] = {NAN, INFINITY, -INFINITY};

/* What a poisoned element does to the heads that read it (the documented behaviour):
 *   out: the affected outputs are NaN (2), non-finite (1) or all finite (0);
 *   state: the affected state is NaN (2), non-finite (1), all finite (0) or untouched by the poison,
 *          i.e. bit-identical to the clean run (3). */
typedef struct effect {
    int out, state;
    int row_only; /* v: only output j and state row j (of the value head) are affected */
} effect;

static effect poison_effect(int tensor, int kind)
{
    switch (tensor) {
    case POISON_Q: return (effect){kind == NAN_VALUE ? 2 : 1, 3, 0};
    case POISON_K: return (effect){kind == NAN_VALUE ? 2 : 1, kind == NAN_VALUE ? 2 : 1, 0};
    case POISON_V: return (effect){kind == NAN_VALUE ? 2 : 1, kind == NAN_VALUE ? 2 : 1, 1};
    default: /* a, b: NaN poisons the head; +-Inf saturates the gate (decay 0 or 1, beta 0 or 1) */
        return kind == NAN_VALUE ? (effect){2, 2, 0} : (effect){0, 0, 0};
    }
}

/* Does value head hv read the poisoned element? (q/k: through the head map) */
static int head_affected(const problem *pr, int tensor, int64_t poison_head, int64_t hv)
{
    if (tensor == POISON_Q || tensor == POISON_K) {
        int64_t h = pr->c.head_map == GDN_HEAD_MAP_TILED ? hv % pr->c.H : hv / (pr->c.HV / pr->c.H);
        return h == poison_head;
    }
    return hv == poison_head;
}

/* Checks one value's class: 2 NaN, 1 non-finite, 0 finite. */
static int class_ok(int want, const unsigned char *base, gdn_dtype dtype, size_t i)
{
    if (want == 2)
        return is_nan_at(base, dtype, i);
    if (want == 1)
        return !is_finite_at(base, dtype, i);
    return is_finite_at(base, dtype, i);
}

/*
 * N = 4 sequences (the last a padding row), H = 2, HV = 4, each sequence reads slot n and writes
 * slot n + 4, T tokens (snapshots to their own slots when T > 1). Poisons one element of tensor
 * `tensor` in the row of token `ptoken` of sequence 1 and compares with the clean run:
 *   - the other sequences' outputs, and every slot but sequence 1's written ones: bit-identical;
 *   - sequence 1: heads that do not read the element, and tokens before ptoken: bit-identical;
 *     heads that read it: the documented effect (poison_effect), in outputs and written state.
 */
static int nan_case(gdn_backend backend, gdn_dtype act, gdn_dtype state, gdn_state_layout layout,
                    gdn_head_map map, int64_t K, int64_t T, int tensor, int kind, int64_t ptoken)
{
    enum { N = 4, H = 2, HV = 4, V = 8 };
    const int64_t Tn = T > 0 ? T : 1;
    int64_t slots = 8 + (T > 1 ? N * Tn : 0);
    int64_t read[N] = {0, 1, 2, -1}, write[N] = {4, 5, 6, 7};
    int64_t ts[N * 16];
    for (int64_t i = 0; i < N * Tn; i++)
        ts[i] = 8 + i;
    problem_cfg c = {.N = N,
                     .H = H,
                     .HV = HV,
                     .K = K,
                     .V = V,
                     .T = T,
                     .slots = slots,
                     .act = act,
                     .state = state,
                     .idx = GDN_DTYPE_I64,
                     .layout = layout,
                     .head_map = map,
                     .threads = 1,
                     .backend = backend,
                     .read = read,
                     .write = T > 1 ? NULL : write,
                     .token_slots = T > 1 ? ts : NULL,
                     .seed = 77u};
    problem clean, bad;
    problem_make(&clean, &c);
    problem_copy(&bad, &clean);
    const int64_t seq = 1, row = seq * Tn + ptoken;
    int64_t phead = tensor == POISON_Q || tensor == POISON_K ? 1 : 2; /* q/k head 1, value head 2 */
    int64_t pelem = tensor == POISON_V ? 3 : tensor <= POISON_K ? 5 : 0;
    size_t where;
    unsigned char *buf;
    switch (tensor) {
    case POISON_Q: buf = bad.q, where = (size_t)(row * H * K + phead * K + pelem); break;
    case POISON_K: buf = bad.k, where = (size_t)(row * H * K + phead * K + pelem); break;
    case POISON_V: buf = bad.v, where = (size_t)(row * HV * V + phead * V + pelem); break;
    case POISON_A: buf = bad.a, where = (size_t)(row * HV + phead); break;
    default: buf = bad.b, where = (size_t)(row * HV + phead); break;
    }
    gdn_store_f64(buf, act, where, poison_values[kind]);
    /* the padding row's inputs are never read: poison all of them too */
    for (int64_t t = 0; t < Tn; t++)
        for (int64_t i = 0; i < H * K; i++) {
            gdn_store_f64(bad.q, act, (size_t)((3 * Tn + t) * H * K + i), NAN);
            gdn_store_f64(bad.k, act, (size_t)((3 * Tn + t) * H * K + i), INFINITY);
        }

    gdn_status s1 = gdn_decode(&clean.p), s2 = gdn_decode(&bad.p);
    int failures = 0;
    char what[160];
    snprintf(what, sizeof what, "%s: %s in %s (token %lld of %lld), act %s state %s %s %s",
             gdn_backend_name(backend), value_names[kind], poison_names[tensor], (long long)ptoken,
             (long long)Tn, gdn_dtype_name(act), gdn_dtype_name(state), layout ? "kv" : "vk",
             map ? "tiled" : "grouped");
#define EXPECT(cond, ...)                                                                                    \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            if (failures++ < 3)                                                                              \
                CHECK_MSG(cond, __VA_ARGS__);                                                                \
        }                                                                                                    \
    } while (0)
    EXPECT(s1 == GDN_OK && s2 == GDN_OK, "%s: status %s / %s (%s)", what, gdn_status_string(s1),
           gdn_status_string(s2), gdn_last_error());
    effect e = poison_effect(tensor, kind);
    /* outputs */
    size_t row_bytes = (size_t)(HV * V) * bad.aes, head_bytes = (size_t)V * bad.aes;
    for (int64_t n = 0; n < N; n++)
        for (int64_t t = 0; t < Tn; t++) {
            int64_t r = n * Tn + t;
            if (n != seq || t < ptoken) {
                EXPECT(memcmp(bad.out + r * row_bytes, clean.out + r * row_bytes, row_bytes) == 0,
                       "%s: output row %lld (sequence %lld, token %lld) differs from the clean run", what,
                       (long long)r, (long long)n, (long long)t);
                continue;
            }
            for (int64_t hv = 0; hv < HV; hv++) {
                const unsigned char *o = bad.out + r * row_bytes + hv * head_bytes;
                const unsigned char *oc = clean.out + r * row_bytes + hv * head_bytes;
                if (!head_affected(&bad, tensor, phead, hv)) {
                    EXPECT(memcmp(o, oc, head_bytes) == 0,
                           "%s: row %lld head %lld (not reading the poison) changed", what, (long long)r,
                           (long long)hv);
                    continue;
                }
                for (int64_t j = 0; j < V; j++) {
                    int want = e.out;
                    if (e.row_only && j != pelem)
                        want = 3;
                    if (t > ptoken) /* later tokens read the state: clean, or non-finite (NaN or Inf) */
                        want = e.state == 3 || (e.row_only && j != pelem) ? 3 : e.state ? 1 : 0;
                    if (want == 3)
                        EXPECT(memcmp(o + j * bad.aes, oc + j * bad.aes, bad.aes) == 0,
                               "%s: row %lld head %lld output %lld changed", what, (long long)r,
                               (long long)hv, (long long)j);
                    else
                        EXPECT(class_ok(want, o, act, (size_t)j),
                               "%s: row %lld head %lld output %lld: want %s", what, (long long)r,
                               (long long)hv, (long long)j,
                               want == 2   ? "NaN"
                               : want == 1 ? "non-finite"
                                           : "finite");
                }
            }
        }
    /* the padding row: zeros whatever its inputs */
    for (size_t i = 0; i < (size_t)Tn * row_bytes; i++)
        EXPECT(bad.out[3 * Tn * row_bytes + i] == 0, "%s: padding row output byte %zu not zero", what, i);
    /* state: every tile, by slot and head */
    for (int64_t slot = 0; slot < slots; slot++) {
        int64_t token = -1; /* the token whose state this slot holds, for sequence 1's slots */
        if (T > 1 && slot >= 8 && (slot - 8) / Tn == seq)
            token = (slot - 8) % Tn;
        if (T <= 1 && slot == write[seq])
            token = 0;
        for (int64_t hv = 0; hv < HV; hv++) {
            const unsigned char *tb = bad.pool + tile_at(&bad, slot, hv),
                                *tc = clean.pool + tile_at(&clean, slot, hv);
            if (token < ptoken || !head_affected(&bad, tensor, phead, hv) || e.state == 3) {
                EXPECT(memcmp(tb, tc, tile_bytes(&bad)) == 0, "%s: slot %lld head %lld changed", what,
                       (long long)slot, (long long)hv);
                continue;
            }
            for (int64_t j = 0; j < V; j++)
                for (int64_t i = 0; i < K; i++) {
                    size_t at = state_elem(&bad, slot, hv, j, i);
                    if (e.row_only && j != pelem) {
                        EXPECT(memcmp(bad.pool + at * bad.ses, clean.pool + at * bad.ses, bad.ses) == 0,
                               "%s: slot %lld head %lld state row %lld changed", what, (long long)slot,
                               (long long)hv, (long long)j);
                        continue;
                    }
                    int want = token > ptoken && e.state ? 1 : e.state;
                    if (want == 1 && e.row_only)
                        want = 4; /* a row hit by Inf * k: Inf where k != 0, NaN where k == 0 */
                    if (want != 4)
                        EXPECT(class_ok(want, bad.pool, state, at),
                               "%s: slot %lld head %lld state (%lld, %lld): want %s", what, (long long)slot,
                               (long long)hv, (long long)j, (long long)i,
                               want == 2   ? "NaN"
                               : want == 1 ? "non-finite"
                                           : "finite");
                    else
                        EXPECT(!is_finite_at(bad.pool, state, at) || kind != NAN_VALUE,
                               "%s: slot %lld head %lld state (%lld, %lld) finite", what, (long long)slot,
                               (long long)hv, (long long)j, (long long)i);
                }
        }
    }
#undef EXPECT
    problem_free(&clean);
    problem_free(&bad);
    return failures;
}

static void nan_inf_containment(gdn_backend backend)
{
    const gdn_dtype acts[] = {GDN_DTYPE_F32, GDN_DTYPE_BF16, GDN_DTYPE_F16};
    const gdn_dtype states[] = {GDN_DTYPE_F32, GDN_DTYPE_BF16};
    int cases = 0, failed = 0;
    for (int a = 0; a < 3; a++)
        for (int s = 0; s < 2; s++)
            for (int l = 0; l < 2; l++)
                for (int tensor = 0; tensor < 5; tensor++)
                    for (int kind = 0; kind < 3; kind++) {
                        gdn_head_map map =
                            (a + tensor + kind) % 2 ? GDN_HEAD_MAP_TILED : GDN_HEAD_MAP_GROUPED;
                        failed += nan_case(backend, acts[a], states[s], l ? GDN_LAYOUT_KV : GDN_LAYOUT_VK,
                                           map, 16, 1, tensor, kind, 0) != 0;
                        cases++;
                    }
    test_note(
        "%d single-token cases (5 tensors x NaN/+Inf/-Inf x 3 act x 2 state dtypes x 2 layouts), %d failed",
        cases, failed);
}

static void nan_inf_multi_token(gdn_backend backend)
{
    int cases = 0, failed = 0;
    for (int tensor = 0; tensor < 5; tensor++)
        for (int kind = 0; kind < 3; kind++)
            for (int64_t ptoken = 0; ptoken < 3; ptoken++) {
                failed += nan_case(backend, GDN_DTYPE_BF16, ptoken == 1 ? GDN_DTYPE_BF16 : GDN_DTYPE_F32,
                                   ptoken == 2 ? GDN_LAYOUT_KV : GDN_LAYOUT_VK, GDN_HEAD_MAP_GROUPED, 16, 3,
                                   tensor, kind, ptoken) != 0;
                cases++;
            }
    test_note("%d three-token cases with a snapshot per token, %d failed", cases, failed);
}

/* K = 128 has rows of its own in the cpu backend (one token, vk layout: the bf16 rows narrow
 * without a NaN test when u is finite, and take another path when it is not), in every
 * instruction-set variant this machine has */
static void nan_inf_k128_on_isa(const char *isa)
{
    int cases = 0, failed = 0;
    for (int s = 0; s < 2; s++)
        for (int tensor = 0; tensor < 5; tensor++)
            for (int kind = 0; kind < 3; kind++) {
                const gdn_dtype state = s ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
                failed += nan_case(GDN_BACKEND_CPU, GDN_DTYPE_BF16, state, GDN_LAYOUT_VK,
                                   GDN_HEAD_MAP_GROUPED, 128, 1, tensor, kind, 0) != 0;
                failed += nan_case(GDN_BACKEND_CPU, GDN_DTYPE_F32, state, GDN_LAYOUT_VK, GDN_HEAD_MAP_TILED,
                                   128, 3, tensor, kind, kind) != 0;
                cases += 2;
            }
    test_note("%s: %d K = 128 cases (one token and three), %d failed", isa, cases, failed);
}
static void nan_inf_k128_every_isa(void) { test_each_cpu_isa(nan_inf_k128_on_isa); }

static void nan_inf_cpu(void) { nan_inf_containment(GDN_BACKEND_CPU); }
static void nan_inf_reference(void) { nan_inf_containment(GDN_BACKEND_REFERENCE); }
static void nan_inf_multi_token_cpu(void) { nan_inf_multi_token(GDN_BACKEND_CPU); }
static void nan_inf_multi_token_reference(void) { nan_inf_multi_token(GDN_BACKEND_REFERENCE); }

/* A NaN already in the state of one slot stays in the sequence that reads it. */
static void nan_in_state_slot(void)
{
    const gdn_backend backends[] = {GDN_BACKEND_CPU, GDN_BACKEND_REFERENCE};
    for (int bi = 0; bi < 2; bi++) {
        int64_t read[3] = {0, 1, 2}, write[3] = {3, 4, 5};
        problem_cfg c = {.N = 3,
                         .H = 1,
                         .HV = 2,
                         .K = 16,
                         .V = 8,
                         .T = 1,
                         .slots = 6,
                         .act = GDN_DTYPE_F32,
                         .state = GDN_DTYPE_F32,
                         .idx = GDN_DTYPE_I32,
                         .backend = backends[bi],
                         .threads = 1,
                         .read = read,
                         .write = write,
                         .seed = 5u};
        problem clean, bad;
        problem_make(&clean, &c);
        problem_copy(&bad, &clean);
        gdn_store_f64(bad.pool, GDN_DTYPE_F32, state_elem(&bad, 1, 0, 2, 7),
                      NAN); /* slot 1, head 0, state (2, 7) */
        CHECK(gdn_decode(&clean.p) == GDN_OK && gdn_decode(&bad.p) == GDN_OK);
        size_t row = (size_t)(2 * 8) * 4, head = 8 * 4;
        CHECK(memcmp(bad.out, clean.out, row) == 0);                            /* sequence 0 */
        CHECK(memcmp(bad.out + 2 * row, clean.out + 2 * row, row) == 0);        /* sequence 2 */
        CHECK(memcmp(bad.out + row + head, clean.out + row + head, head) == 0); /* sequence 1, head 1 */
        for (int64_t j = 0; j < 8; j++) /* sequence 1, head 0: output j = 2 only */
            CHECK_MSG(j == 2 ? is_nan_at(bad.out + row, GDN_DTYPE_F32, 2)
                             : memcmp(bad.out + row + 4 * j, clean.out + row + 4 * j, 4) == 0,
                      "%s: sequence 1 head 0 output %lld", gdn_backend_name(backends[bi]), (long long)j);
        for (int64_t slot = 0; slot < 6; slot++)
            for (int64_t hv = 0; hv < 2; hv++) {
                if (slot == 4 &&
                    hv == 0) { /* the new state of the poisoned head: row 2 NaN, the rest clean */
                    for (int64_t j = 0; j < 8; j++)
                        for (int64_t i = 0; i < 16; i++) {
                            size_t at = state_elem(&bad, 4, 0, j, i);
                            CHECK(j == 2 ? is_nan_at(bad.pool, GDN_DTYPE_F32, at)
                                         : memcmp(bad.pool + 4 * at, clean.pool + 4 * at, 4) == 0);
                        }
                    continue;
                }
                int same = memcmp(bad.pool + tile_at(&bad, slot, hv), clean.pool + tile_at(&clean, slot, hv),
                                  tile_bytes(&bad)) == 0;
                CHECK_MSG((slot == 1 && hv == 0) ? !same : same, "%s: slot %lld head %lld",
                          gdn_backend_name(backends[bi]), (long long)slot, (long long)hv);
            }
        problem_free(&clean);
        problem_free(&bad);
    }
}

/* A_log and dt_bias are per value head: a NaN there reaches that head in every row, and only it. */
static void nan_in_gate_params(void)
{
    const gdn_backend backends[] = {GDN_BACKEND_CPU, GDN_BACKEND_REFERENCE};
    for (int bi = 0; bi < 2; bi++)
        for (int which = 0; which < 2; which++) {
            int64_t read[3] = {0, 1, 2}, write[3] = {3, 4, 5};
            problem_cfg c = {.N = 3,
                             .H = 1,
                             .HV = 2,
                             .K = 16,
                             .V = 8,
                             .T = 1,
                             .slots = 6,
                             .act = GDN_DTYPE_BF16,
                             .state = GDN_DTYPE_F32,
                             .idx = GDN_DTYPE_I64,
                             .backend = backends[bi],
                             .threads = 1,
                             .read = read,
                             .write = write,
                             .seed = 8u};
            problem clean, bad;
            problem_make(&clean, &c);
            problem_copy(&bad, &clean);
            memcpy(bad.A_log, clean.A_log, 2 * sizeof(float));
            memcpy(bad.dt_bias, clean.dt_bias, 2 * sizeof(float));
            (which ? bad.dt_bias : bad.A_log)[1] = NAN;
            CHECK(gdn_decode(&clean.p) == GDN_OK && gdn_decode(&bad.p) == GDN_OK);
            size_t head = 8 * 2;
            for (int64_t n = 0; n < 3; n++) {
                const unsigned char *row = bad.out + n * 2 * head, *crow = clean.out + n * 2 * head;
                CHECK_MSG(memcmp(row, crow, head) == 0, "%s: NaN %s[1] changed row %lld head 0",
                          gdn_backend_name(backends[bi]), which ? "dt_bias" : "A_log", (long long)n);
                for (int64_t j = 0; j < 8; j++)
                    CHECK(is_nan_at(row + head, GDN_DTYPE_BF16, (size_t)j));
                CHECK(memcmp(bad.pool + tile_at(&bad, 3 + n, 0), clean.pool + tile_at(&clean, 3 + n, 0),
                             tile_bytes(&bad)) == 0);
                CHECK(is_nan_at(bad.pool + tile_at(&bad, 3 + n, 1), GDN_DTYPE_F32, 0));
            }
            CHECK(memcmp(bad.pool, clean.pool, 3 * 2 * tile_bytes(&bad)) == 0); /* read slots untouched */
            problem_free(&clean);
            problem_free(&bad);
        }
}

/* ---------------------------------------------------------------------------------------
 * Concurrency
 * ------------------------------------------------------------------------------------- */

enum { THREADS = 4, REPEATS = 4 };

typedef struct thread_job {
    problem initial, work, expect;
    pthread_barrier_t *barrier;
    int repeats;
    int mismatches;
    gdn_status status;
} thread_job;

static void *decode_job(void *arg)
{
    thread_job *job = arg;
    for (int r = 0; r < job->repeats; r++) {
        memcpy(job->work.out, job->initial.out, job->initial.out_bytes);
        memcpy(job->work.pool, job->initial.pool, job->initial.pool_bytes);
        pthread_barrier_wait(job->barrier); /* all four calls start together */
        gdn_status s = gdn_decode(&job->work.p);
        if (s != GDN_OK)
            job->status = s;
        if (memcmp(job->work.out, job->expect.out, job->expect.out_bytes) != 0 ||
            memcmp(job->work.pool, job->expect.pool, job->expect.pool_bytes) != 0)
            job->mismatches++;
    }
    return NULL;
}

/* Four different problems (shapes, dtypes, layouts, options; one with two worker threads of
 * its own), each decoded first alone, then by four threads at once, REPEATS times. */
static void threads_decode(void)
{
    static const int64_t read_a[8] = {0, 1, 2, 3, 4, 5, 6, 7}, write_a[8] = {8, 9, 10, 11, 12, 13, 14, 15};
    static const int64_t read_b[5] = {0, 1, 2, 3, 4},
                         ts_b[15] = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19};
    static const int64_t acc_b[5] = {1, 2, 3, 1, 2};
    static const int64_t read_c[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    static const int64_t read_d[6] = {1, 2, 0, 3, 4, 5}, cu_d[7] = {0, 4, 5, 5, 8, 12, 13};
    const problem_cfg cfg[THREADS] = {
        {.N = 8,
         .H = 2,
         .HV = 4,
         .K = 64,
         .V = 64,
         .slots = 16,
         .act = GDN_DTYPE_F32,
         .state = GDN_DTYPE_F32,
         .idx = GDN_DTYPE_I64,
         .threads = 1,
         .backend = GDN_BACKEND_CPU,
         .read = read_a,
         .write = write_a,
         .seed = 1},
        {.N = 5,
         .H = 1,
         .HV = 3,
         .K = 40,
         .V = 24,
         .T = 3,
         .slots = 20,
         .act = GDN_DTYPE_BF16,
         .state = GDN_DTYPE_BF16,
         .idx = GDN_DTYPE_I32,
         .layout = GDN_LAYOUT_KV,
         .head_map = GDN_HEAD_MAP_TILED,
         .threads = 1,
         .backend = GDN_BACKEND_CPU,
         .read = read_b,
         .token_slots = ts_b,
         .accepted = acc_b,
         .seed = 2},
        {.N = 16,
         .H = 4,
         .HV = 8,
         .K = 128,
         .V = 128,
         .slots = 16,
         .act = GDN_DTYPE_F16,
         .state = GDN_DTYPE_F32,
         .idx = GDN_DTYPE_I64,
         .threads = 2,
         .backend = GDN_BACKEND_CPU,
         .read = read_c,
         .seed = 3},
        {.N = 6,
         .H = 2,
         .HV = 2,
         .K = 32,
         .V = 16,
         .T = 4,
         .slots = 6,
         .act = GDN_DTYPE_F32,
         .state = GDN_DTYPE_BF16,
         .idx = GDN_DTYPE_I32,
         .no_l2norm = 1,
         .null_slot_zero = 1,
         .threads = 1,
         .backend = GDN_BACKEND_CPU,
         .read = read_d,
         .cu = cu_d,
         .seed = 4},
    };
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, THREADS);
    thread_job jobs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        problem_make(&jobs[i].initial, &cfg[i]);
        problem_copy(&jobs[i].expect, &jobs[i].initial);
        gdn_status s = gdn_decode(&jobs[i].expect.p); /* alone, on this thread */
        CHECK_MSG(s == GDN_OK, "problem %d alone: %s (%s)", i, gdn_status_string(s), gdn_last_error());
        CHECK_MSG(memcmp(jobs[i].expect.pool, jobs[i].initial.pool, jobs[i].initial.pool_bytes) != 0,
                  "problem %d wrote no state", i);
        if (cfg[i].threads > 1) { /* the cpu backend's own worker threads change no bit either */
            problem one;
            problem_copy(&one, &jobs[i].initial);
            one.p.num_threads = 1;
            CHECK(gdn_decode(&one.p) == GDN_OK);
            CHECK_MSG(memcmp(one.out, jobs[i].expect.out, one.out_bytes) == 0 &&
                          memcmp(one.pool, jobs[i].expect.pool, one.pool_bytes) == 0,
                      "problem %d: num_threads = %d and 1 differ", i, cfg[i].threads);
            problem_free(&one);
        }
        problem_copy(&jobs[i].work, &jobs[i].initial);
        jobs[i].barrier = &barrier;
        jobs[i].repeats = REPEATS;
    }
    pthread_t tid[THREADS];
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_create(&tid[i], NULL, decode_job, &jobs[i]) == 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(tid[i], NULL);
    for (int i = 0; i < THREADS; i++) {
        CHECK_MSG(jobs[i].status == GDN_OK, "problem %d in a thread: %s", i,
                  gdn_status_string(jobs[i].status));
        CHECK_MSG(jobs[i].mismatches == 0, "problem %d: %d of %d concurrent runs differ from the run alone",
                  i, jobs[i].mismatches, REPEATS);
        problem_free(&jobs[i].initial);
        problem_free(&jobs[i].expect);
        problem_free(&jobs[i].work);
    }
    pthread_barrier_destroy(&barrier);
    test_note("%d threads x %d concurrent calls, each bit-identical to the call made alone", THREADS,
              REPEATS);
}

enum { ERROR_ROUNDS = 200 };

typedef struct error_job {
    int which;
    pthread_barrier_t *barrier;
    int wrong_status, wrong_message, stale_before;
    char last_bad[256];
} error_job;

static const char *const error_needles[THREADS] = {"num_seqs = -1", "head_dim_k = 1000",
                                                   "slot_indices[1] = 99", "scale = nan"};
static const gdn_status error_status[THREADS] = {GDN_ERR_INVALID_SHAPE, GDN_ERR_UNSUPPORTED_HEAD_SIZE,
                                                 GDN_ERR_SLOT_OUT_OF_RANGE, GDN_ERR_INVALID_ARGUMENT};

static void *error_thread(void *arg)
{
    error_job *job = arg;
    static const int64_t read[2] = {0, 99};
    problem_cfg c = {.N = 2,
                     .H = 1,
                     .HV = 2,
                     .K = 8,
                     .V = 8,
                     .slots = 4,
                     .act = GDN_DTYPE_F32,
                     .state = GDN_DTYPE_F32,
                     .idx = GDN_DTYPE_I64,
                     .threads = 1,
                     .backend = GDN_BACKEND_CPU,
                     .read = read,
                     .seed = 9u + (uint32_t)job->which};
    problem pr;
    problem_make(&pr, &c);
    if (gdn_last_error()[0] != '\0') /* a new thread starts with no message */
        job->stale_before++;
    for (int r = 0; r < ERROR_ROUNDS; r++) {
        gdn_decode_params p = pr.p;
        switch (job->which) {
        case 0: p.num_seqs = -1; break;
        case 1: p.head_dim_k = 1000; break;
        case 2: break; /* slot_indices[1] = 99 */
        default: p.scale = NAN; break;
        }
        pthread_barrier_wait(job->barrier);
        gdn_status s = gdn_decode(&p);
        pthread_barrier_wait(job->barrier); /* every thread has failed before any reads its message */
        const char *msg = gdn_last_error();
        if (s != error_status[job->which])
            job->wrong_status++;
        int mine = strstr(msg, error_needles[job->which]) != NULL;
        for (int o = 0; o < THREADS; o++)
            if (o != job->which && strstr(msg, error_needles[o]))
                mine = 0;
        if (!mine) {
            job->wrong_message++;
            snprintf(job->last_bad, sizeof job->last_bad, "%s", msg);
        }
    }
    problem_free(&pr);
    return NULL;
}

static void threads_last_error(void)
{
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, THREADS);
    error_job jobs[THREADS];
    pthread_t tid[THREADS];
    gdn_decode_params primer;
    gdn_decode_params_init(&primer);
    primer.struct_size = 3; /* a message on this thread, which the others must not see or change */
    CHECK(gdn_decode(&primer) == GDN_ERR_INVALID_ARGUMENT);
    for (int i = 0; i < THREADS; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].which = i;
        jobs[i].barrier = &barrier;
        CHECK(pthread_create(&tid[i], NULL, error_thread, &jobs[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(tid[i], NULL);
    for (int i = 0; i < THREADS; i++) {
        CHECK_MSG(jobs[i].stale_before == 0, "thread %d started with a last error set", i);
        CHECK_MSG(jobs[i].wrong_status == 0, "thread %d: %d wrong statuses", i, jobs[i].wrong_status);
        CHECK_MSG(jobs[i].wrong_message == 0,
                  "thread %d: %d of %d messages not its own (\"%s\", want \"%s\")", i, jobs[i].wrong_message,
                  ERROR_ROUNDS, jobs[i].last_bad, error_needles[i]);
    }
    CHECK_MSG(strstr(gdn_last_error(), "struct_size = 3") != NULL,
              "the main thread's message changed to \"%s\"", gdn_last_error());
    pthread_barrier_destroy(&barrier);
    test_note("%d threads x %d simultaneous failures, each message its own thread's", THREADS, ERROR_ROUNDS);
}

/* ---------------------------------------------------------------------------------------
 * Validation of the multi-token arguments (tests/test_validation.c covers the rest)
 * ------------------------------------------------------------------------------------- */

/* gdn_decode(p) must fail with `want`, name `needle`, and leave out and the pool as they were.
 * gdn_decode_backend_for must agree, except for the errors only gdn_decode finds, from the
 * values in the index arrays (values = 1): it reads none of them. */
static void expect_refused(const char *what, problem *pr, const gdn_decode_params *p, gdn_status want,
                           const char *needle, int values)
{
    unsigned char *out = malloc(pr->out_bytes + 1), *pool = malloc(pr->pool_bytes + 1);
    memcpy(out, pr->out, pr->out_bytes);
    memcpy(pool, pr->pool, pr->pool_bytes);
    gdn_decode_params primer;
    gdn_decode_params_init(&primer);
    primer.struct_size = 1;
    gdn_decode(&primer); /* a stale message cannot pass for this call's */
    gdn_status got = gdn_decode(p);
    const char *msg = gdn_last_error();
    CHECK_MSG(got == want, "%s on %s: status %s, want %s (%s)", what, gdn_backend_name(p->backend),
              gdn_status_string(got), gdn_status_string(want), msg);
    CHECK_MSG(strstr(msg, needle) != NULL, "%s: message \"%s\" does not mention \"%s\"", what, msg, needle);
    CHECK_MSG(memcmp(out, pr->out, pr->out_bytes) == 0 && memcmp(pool, pr->pool, pr->pool_bytes) == 0,
              "%s: the failed call wrote to out or the state pool", what);
    gdn_backend chosen = (gdn_backend)77;
    gdn_status bf = gdn_decode_backend_for(p, &chosen);
    if (values)
        CHECK_MSG(bf == GDN_OK, "%s: gdn_decode_backend_for: %s (it reads no index values)", what,
                  gdn_status_string(bf));
    else
        CHECK_MSG(bf == want && chosen == (gdn_backend)77, "%s: gdn_decode_backend_for: %s, want %s", what,
                  gdn_status_string(bf), gdn_status_string(want));
    free(out);
    free(pool);
}

/* N = 3 sequences of T = 2 tokens, snapshots to slots 3..8, started from num_accepted. */
static const int64_t mt_read[3] = {0, 1, 2}, mt_ts[6] = {3, 4, 5, 6, 7, 8}, mt_acc[3] = {1, 2, 1};
static const int64_t mt_cu[4] = {0, 2, 3, 4};

static problem_cfg multi_token_cfg(gdn_backend backend)
{
    return (problem_cfg){.N = 3,
                         .H = 1,
                         .HV = 2,
                         .K = 8,
                         .V = 8,
                         .T = 2,
                         .slots = 12,
                         .act = GDN_DTYPE_F32,
                         .state = GDN_DTYPE_F32,
                         .idx = GDN_DTYPE_I64,
                         .threads = 1,
                         .backend = backend,
                         .read = mt_read,
                         .token_slots = mt_ts,
                         .accepted = mt_acc,
                         .seed = 3u};
}

static void set_index(problem *pr, unsigned char *array, int64_t at, int64_t value)
{
    if (pr->c.idx == GDN_DTYPE_I32) {
        int32_t v = (int32_t)value;
        memcpy(array + 4 * at, &v, 4);
    } else {
        memcpy(array + 8 * at, &value, 8);
    }
}

static void multi_token_validation(gdn_backend backend)
{
    problem_cfg c = multi_token_cfg(backend);
    problem pr;
    problem_make(&pr, &c);
    gdn_decode_params p = pr.p;
    {
        problem ok;
        problem_copy(&ok, &pr);
        gdn_status s = gdn_decode(&ok.p);
        CHECK_MSG(s == GDN_OK, "the unbroken multi-token problem: %s (%s)", gdn_status_string(s),
                  gdn_last_error());
        problem_free(&ok);
    }

    p = pr.p, p.num_tokens = GDN_MAX_TOKENS + 1;
    expect_refused("num_tokens = 17", &pr, &p, GDN_ERR_INVALID_SHAPE, "num_tokens = 17", 0);
    p = pr.p, p.num_tokens = -1;
    expect_refused("num_tokens = -1", &pr, &p, GDN_ERR_INVALID_SHAPE, "num_tokens = -1", 0);
    p = pr.p, p.num_tokens = 0, p.token_slots = NULL, p.num_accepted = NULL, p.cu_seqlens = mt_cu;
    expect_refused("cu_seqlens with num_tokens = 0", &pr, &p, GDN_ERR_INVALID_ARGUMENT, "cu_seqlens is set",
                   0);
    p = pr.p, p.token_slots_stride = 1;
    expect_refused("token_slots_stride = 1", &pr, &p, GDN_ERR_INVALID_STRIDE, "token_slots_stride = 1", 0);
    p = pr.p, p.token_slots_stride = -1;
    expect_refused("token_slots_stride = -1", &pr, &p, GDN_ERR_INVALID_STRIDE, "token_slots_stride = -1", 0);
    p = pr.p, p.token_slots = NULL;
    expect_refused("num_accepted without token_slots", &pr, &p, GDN_ERR_INVALID_ARGUMENT,
                   "num_accepted needs token_slots", 0);
    p = pr.p, p.write_slot_indices = mt_read;
    expect_refused("token_slots and write_slot_indices", &pr, &p, GDN_ERR_INVALID_ARGUMENT,
                   "token_slots and write_slot_indices are both set", 0);
    p = pr.p, p.q_stride = INT64_MAX / 2;
    expect_refused("q_stride overflow", &pr, &p, GDN_ERR_INVALID_STRIDE,
                   "q_stride = 4611686018427387903 overflows", 0);
    p = pr.p, p.cu_seqlens = (const char *)pr.read + 4; /* any index array: aligned to its dtype */
    expect_refused("misaligned cu_seqlens", &pr, &p, GDN_ERR_MISALIGNED, "cu_seqlens = ", 0);
    p = pr.p, p.num_accepted = (const char *)pr.acc + 2;
    expect_refused("misaligned num_accepted", &pr, &p, GDN_ERR_MISALIGNED, "num_accepted = ", 0);
    p = pr.p, p.slot_indices = NULL, p.num_accepted = NULL;
    expect_refused("slot_indices NULL without num_accepted", &pr, &p, GDN_ERR_NULL_POINTER,
                   "slot_indices is NULL", 0);

    /* values only gdn_decode reads */
    set_index(&pr, pr.ts, 3, 12);
    expect_refused("token_slots[3] = num_slots", &pr, &pr.p, GDN_ERR_SLOT_OUT_OF_RANGE, "token_slots[3] = 12",
                   1);
    set_index(&pr, pr.ts, 3, 6);
    set_index(&pr, pr.acc, 1, 0);
    expect_refused("num_accepted[1] = 0", &pr, &pr.p, GDN_ERR_SLOT_OUT_OF_RANGE,
                   "num_accepted[1] = 0 is outside 1..2", 1);
    set_index(&pr, pr.acc, 1, 3);
    expect_refused("num_accepted[1] = 3", &pr, &pr.p, GDN_ERR_SLOT_OUT_OF_RANGE,
                   "num_accepted[1] = 3 is outside 1..2", 1);
    set_index(&pr, pr.acc, 1, 2);
    problem_free(&pr);

    /* token_slots_stride 3 > num_tokens 2: with num_accepted every column can be read and is
     * checked; without, only the first num_tokens columns are read and checked */
    static const int64_t wide_ts[9] = {3, 4, 9, 5, 6, 10, 7, 8, 99};
    problem_make(&pr, &c);
    unsigned char *wide = index_array(&pr, wide_ts, 9);
    p = pr.p, p.token_slots = wide, p.token_slots_stride = 3;
    expect_refused("token_slots[8] = 99 (a column beyond num_tokens, with num_accepted)", &pr, &p,
                   GDN_ERR_SLOT_OUT_OF_RANGE, "token_slots[8] = 99", 1);
    p.num_accepted = NULL;
    gdn_status s = gdn_decode(&p);
    CHECK_MSG(s == GDN_OK, "token_slots[8] = 99 in a column beyond num_tokens, without num_accepted: %s (%s)",
              gdn_status_string(s), gdn_last_error());
    free(wide);
    problem_free(&pr);

    /* cu_seqlens: decreasing, a sequence longer than num_tokens, a negative start */
    c = multi_token_cfg(backend);
    c.token_slots = NULL, c.accepted = NULL;
    problem_make(&pr, &c);
    const int64_t bad_cu[3][4] = {{0, 2, 1, 3}, {0, 3, 4, 5}, {-1, 0, 1, 2}};
    const char *const bad_cu_needles[3] = {"cu_seqlens[1] = 2, cu_seqlens[2] = 1",
                                           "cu_seqlens[0] = 0, cu_seqlens[1] = 3", "cu_seqlens[0] = -1"};
    for (int i = 0; i < 3; i++) {
        unsigned char *cu = index_array(&pr, bad_cu[i], 4);
        p = pr.p, p.cu_seqlens = cu;
        expect_refused(bad_cu_needles[i], &pr, &p, GDN_ERR_INVALID_SHAPE, bad_cu_needles[i], 1);
        free(cu);
    }
    problem_free(&pr);
}

/* With cu_seqlens the overlap check covers the rows the call writes (cu_seqlens[N]), not N*T. */
static void varlen_overlap(gdn_backend backend)
{
    problem_cfg c = multi_token_cfg(backend);
    c.token_slots = NULL, c.accepted = NULL;
    problem pr;
    problem_make(&pr, &c);
    size_t row = (size_t)(c.HV * c.V) * pr.aes;
    /* an arena: [4 rows of out room][the pool][4 rows of out room] */
    unsigned char *arena = malloc(pr.pool_bytes + 8 * row);
    memcpy(arena + 4 * row, pr.pool, pr.pool_bytes);
    unsigned char *saved_pool = pr.pool;
    pr.pool = arena + 4 * row;
    static const int64_t one_row[4] = {0, 1, 1, 1}, three_rows[4] = {0, 1, 2, 3};
    unsigned char *cu1 = index_array(&pr, one_row, 4), *cu3 = index_array(&pr, three_rows, 4);
    gdn_decode_params p = pr.p;
    p.state_pool = pr.pool, p.cu_seqlens = cu3;
    p.out = pr.pool + pr.pool_bytes - 4; /* its first row starts on the pool's last float */
    unsigned char *saved_out = pr.out;
    pr.out = arena, pr.out_bytes = pr.pool_bytes + 8 * row, pr.pool_bytes = 0; /* snapshot the whole arena */
    expect_refused("varlen out over the pool's end", &pr, &p, GDN_ERR_OVERLAP, "overlaps state_pool", 1);
    /* out ending one row before the pool: N*T = 6 rows would overlap it, cu_seqlens[N] = 1 does not */
    p.cu_seqlens = cu1;
    p.out = arena + 3 * row;
    gdn_status s = gdn_decode(&p);
    CHECK_MSG(s == GDN_OK, "varlen with 1 row right before the pool: %s (%s)", gdn_status_string(s),
              gdn_last_error());
    p.cu_seqlens = NULL; /* the same placement with N*T rows overlaps */
    gdn_status s2 = gdn_decode(&p);
    CHECK_MSG(s2 == GDN_ERR_OVERLAP, "6 rows right before the pool: %s", gdn_status_string(s2));
    free(cu1);
    free(cu3);
    free(arena);
    pr.pool = saved_pool, pr.out = saved_out;
    problem_free(&pr);
}

/* num_accepted without slot_indices reads the same state as with them. */
static void accepted_without_slot_indices(gdn_backend backend)
{
    problem_cfg c = multi_token_cfg(backend);
    problem a, b;
    problem_make(&a, &c);
    problem_copy(&b, &a);
    b.p.slot_indices = NULL;
    CHECK(gdn_decode(&a.p) == GDN_OK);
    gdn_status s = gdn_decode(&b.p);
    CHECK_MSG(s == GDN_OK, "slot_indices NULL with num_accepted: %s (%s)", gdn_status_string(s),
              gdn_last_error());
    CHECK(memcmp(a.out, b.out, a.out_bytes) == 0 && memcmp(a.pool, b.pool, a.pool_bytes) == 0);
    problem_free(&a);
    problem_free(&b);
}

/* N = 0 is a no-op that needs no tensor at all, not even the pool. */
static void num_seqs_zero_no_pointers(void)
{
    gdn_decode_params p;
    gdn_decode_params_init(&p);
    p.num_q_heads = 1, p.num_v_heads = 1, p.head_dim_k = 8, p.head_dim_v = 8, p.num_slots = 1;
    p.backend = GDN_BACKEND_CPU;
    gdn_status s = gdn_decode(&p);
    CHECK_MSG(s == GDN_OK, "%s (%s)", gdn_status_string(s), gdn_last_error());
    p.backend = GDN_BACKEND_REFERENCE;
    CHECK(gdn_decode(&p) == GDN_OK);
}

static void multi_token_validation_cpu(void)
{
    multi_token_validation(GDN_BACKEND_CPU);
    varlen_overlap(GDN_BACKEND_CPU);
    accepted_without_slot_indices(GDN_BACKEND_CPU);
}

static void multi_token_validation_reference(void)
{
    multi_token_validation(GDN_BACKEND_REFERENCE);
    varlen_overlap(GDN_BACKEND_REFERENCE);
    accepted_without_slot_indices(GDN_BACKEND_REFERENCE);
}

/* The cuda backend launches at most 65535 sequences at a time, each launch a problem of its own
 * made by gdn_problem_rows (src/common/problem.h). That split is host code, so it is checked here
 * with the cpu backend: the whole call against the same call made three sequences at a time,
 * bit for bit, with cu_seqlens (whose entries stay absolute rows), with token slots and
 * num_accepted, and plain. */
static void row_pieces_match_whole_call(void)
{
    static const int64_t read[7] = {0, 1, 2, 3, 4, 5, 6}, write[7] = {7, 8, -1, 9, 10, 11, 12};
    static const int64_t cu[8] = {0, 3, 4, 4, 7, 9, 12, 13}; /* 3, 1, 0, 3, 2, 3, 1 tokens */
    static const int64_t accepted[7] = {1, 2, 3, 1, 2, 3, 1};
    static int64_t token_slots[21];
    for (int i = 0; i < 21; i++)
        token_slots[i] = i == 4 ? -1 : 14 + i;
    const problem_cfg base = {.N = 7,
                              .H = 2,
                              .HV = 4,
                              .K = 16,
                              .V = 8,
                              .T = 3,
                              .slots = 40,
                              .act = GDN_DTYPE_BF16,
                              .state = GDN_DTYPE_F32,
                              .idx = GDN_DTYPE_I32,
                              .threads = 1,
                              .backend = GDN_BACKEND_CPU,
                              .seed = 11u};
    problem_cfg cfg[3] = {base, base, base};
    cfg[0].read = read, cfg[0].write = write, cfg[0].cu = cu;
    cfg[1].token_slots = token_slots, cfg[1].accepted = accepted, cfg[1].state = GDN_DTYPE_BF16;
    cfg[1].idx = GDN_DTYPE_I64, cfg[1].act = GDN_DTYPE_F32;
    cfg[2].read = read, cfg[2].T = 1, cfg[2].layout = GDN_LAYOUT_KV, cfg[2].act = GDN_DTYPE_F16;
    for (int i = 0; i < 3; i++) {
        problem whole, pieces;
        problem_make(&whole, &cfg[i]);
        problem_copy(&pieces, &whole);
        gdn_status s = gdn_decode(&whole.p);
        CHECK_MSG(s == GDN_OK, "config %d, whole call: %s", i, gdn_last_error());
        const gdn_problem pr = gdn_problem_from_params(&pieces.p);
        for (int64_t first = 0; first < pr.num_seqs && s == GDN_OK; first += 3) {
            const gdn_problem piece =
                gdn_problem_rows(&pr, first, pr.num_seqs - first < 3 ? pr.num_seqs - first : 3);
            s = gdn_cpu_decode(&piece);
            CHECK_MSG(s == GDN_OK, "config %d, sequences from %lld: %s", i, (long long)first,
                      gdn_last_error());
        }
        CHECK_MSG(memcmp(whole.out, pieces.out, whole.out_bytes) == 0, "config %d: out differs", i);
        CHECK_MSG(memcmp(whole.pool, pieces.pool, whole.pool_bytes) == 0, "config %d: the pool differs", i);
        problem_free(&whole), problem_free(&pieces);
    }
}

/* ---------------------------------------------------------------------------------------
 * Bugs found by tests/fuzz, fixed (docs/errors.md, "Bugs the fuzzer found"). Each is a minimal
 * call that must be refused with nothing written; the comments say what went wrong before.
 * ------------------------------------------------------------------------------------- */

/* One sequence, one token, one head of size 1: the smallest call. */
static problem tiny(void)
{
    static const int64_t read[1] = {0};
    problem_cfg c = {.N = 1,
                     .H = 1,
                     .HV = 1,
                     .K = 1,
                     .V = 1,
                     .T = 1,
                     .slots = 2,
                     .act = GDN_DTYPE_F32,
                     .state = GDN_DTYPE_F32,
                     .idx = GDN_DTYPE_I64,
                     .threads = 1,
                     .backend = GDN_BACKEND_CPU,
                     .read = read,
                     .seed = 11u};
    problem pr;
    problem_make(&pr, &c);
    return pr;
}

/* src/core/decode.c token_rows(): num_seqs * num_tokens is formed unchecked. With num_seqs =
 * INT64_MAX / 2 and num_tokens = 4 that is a signed overflow (UB; UBSan aborts); without the
 * sanitizer it wraps and the call happens to be refused by the stride check. */
static void fuzz_bug_token_rows_overflow(void)
{
    problem pr = tiny();
    gdn_decode_params p = pr.p;
    p.num_seqs = INT64_MAX / 2, p.num_tokens = 4;
    gdn_status s = gdn_decode(&p);
    CHECK_MSG(s == GDN_ERR_INVALID_SHAPE || s == GDN_ERR_INVALID_STRIDE, "status %s", gdn_status_string(s));
    problem_free(&pr);
}

/* src/common/problem.h gdn_seq_tokens(): cu_seqlens[n+1] - cu_seqlens[n] is formed unchecked,
 * before the check that cu_seqlens[n] >= 0: cu_seqlens = {INT64_MIN, 0} is a signed overflow. */
static void fuzz_bug_cu_difference_overflow(void)
{
    problem pr = tiny();
    static const int64_t cu[2] = {INT64_MIN, 0};
    gdn_decode_params p = pr.p;
    p.cu_seqlens = cu;
    CHECK(gdn_decode(&p) == GDN_ERR_INVALID_SHAPE);
    problem_free(&pr);
}

/* The tiny call with cu_seqlens = cu: refused as an invalid shape, nothing written. */
static void expect_cu_refused(const int64_t cu[2], const char *what)
{
    problem pr = tiny();
    gdn_decode_params p = pr.p;
    p.cu_seqlens = cu;
    unsigned char out[4], pool[8];
    memcpy(out, pr.out, 4);
    memcpy(pool, pr.pool, 8);
    gdn_status s = gdn_decode(&p);
    CHECK_MSG(s == GDN_ERR_INVALID_SHAPE, "%s: status %s (%s)", what, gdn_status_string(s), gdn_last_error());
    CHECK_MSG(strstr(gdn_last_error(), "cu_seqlens") != NULL, "%s: message %s", what, gdn_last_error());
    CHECK_MSG(memcmp(out, pr.out, 4) == 0 && memcmp(pool, pr.pool, 8) == 0,
              "%s: the call wrote out row 0 or the state of slot 0", what);
    problem_free(&pr);
}

/* src/core/decode.c check_host_indices() accepts any cu_seqlens that increase by 0..num_tokens,
 * however far the rows are: cu_seqlens = {2^62, 2^62 + 1} passes, check_overlap() computes
 * (rows - 1) * out_stride * 4 bytes, which wraps, and the cpu backend reads q, k, v, a, b and
 * writes out at row 2^62, 2^64 bytes away: back at row 0 here (with {2^61, 2^61 + 1} the
 * address is wild and the call crashes). Should be refused: cu_seqlens[N] <= N * num_tokens
 * (the bound token_rows() already assumes), or at least rows whose offsets fit in 64 bits. */
static void fuzz_bug_cu_rows_overflow(void)
{
    static const int64_t cu[2] = {(int64_t)1 << 62, ((int64_t)1 << 62) + 1};
    expect_cu_refused(cu, "cu_seqlens = {2^62, 2^62 + 1}");
}

/* A sequence of valid length whose rows lie past the N * num_tokens rows the activations were
 * checked for (cu_seqlens = {1, 2} with N = 1, T = 1). The fuzz harness once missed this rule
 * (tests/fuzz/regressions/cu_rows_beyond_n_t.bin). */
static void fuzz_bug_cu_rows_beyond_n_t(void)
{
    static const int64_t cu[2] = {1, 2};
    expect_cu_refused(cu, "cu_seqlens = {1, 2}, N = T = 1");
}

/* src/core/decode.c check_host_indices() (and gdn_token_slot() in the backends) form
 * n * token_slots_stride + t unchecked: token_slots_stride = 2^62 with N = 3 passes validation
 * (it only has to be >= num_tokens), n = 2 overflows (UB), and without the sanitizer the reads
 * wrap back to token_slots[0] and the call succeeds. Should be refused like an overflowing
 * activation stride (GDN_ERR_INVALID_STRIDE, "overflows 64-bit offsets"). */
static void fuzz_bug_token_slots_stride_overflow(void)
{
    static const int64_t read[3] = {0, 1, 2};
    problem_cfg c = {.N = 3,
                     .H = 1,
                     .HV = 1,
                     .K = 1,
                     .V = 1,
                     .T = 1,
                     .slots = 4,
                     .act = GDN_DTYPE_F32,
                     .state = GDN_DTYPE_F32,
                     .idx = GDN_DTYPE_I64,
                     .threads = 1,
                     .backend = GDN_BACKEND_CPU,
                     .read = read,
                     .seed = 12u};
    problem pr;
    problem_make(&pr, &c);
    static const int64_t ts[1] = {3};
    gdn_decode_params p = pr.p;
    p.token_slots = ts, p.token_slots_stride = (int64_t)1 << 62;
    unsigned char pool[16];
    memcpy(pool, pr.pool, 16);
    gdn_status s = gdn_decode(&p);
    CHECK_MSG(s == GDN_ERR_INVALID_STRIDE, "token_slots_stride = 2^62 with 3 sequences: status %s (%s)",
              gdn_status_string(s), gdn_last_error());
    CHECK_MSG(memcmp(pool, pr.pool, 16) == 0, "the call wrote the state pool");
    problem_free(&pr);
}

/* src/core/decode.c check_tensors() checks N * T * stride against int64 in elements, but the
 * library forms byte addresses: out_stride = 2^62 - 1 with N = 2 passes (2^63 - 2 elements),
 * check_overlap() computes out's end in wrapping uintptr arithmetic (so it overlaps nothing),
 * and the cpu backend stores row 1 at out + (2^62 - 1) * 4 bytes, which wraps to out - 4: a
 * write of 4 bytes before the buffer. Should be refused (GDN_ERR_INVALID_STRIDE) once
 * N * T * stride * element size does not fit. Here out sits inside an arena, so the stray write
 * lands in it. */
static void fuzz_bug_stride_bytes_overflow(void)
{
    static const int64_t read[2] = {0, 1};
    problem_cfg c = {.N = 2,
                     .H = 1,
                     .HV = 1,
                     .K = 1,
                     .V = 1,
                     .T = 1,
                     .slots = 2,
                     .act = GDN_DTYPE_F32,
                     .state = GDN_DTYPE_F32,
                     .idx = GDN_DTYPE_I64,
                     .threads = 1,
                     .backend = GDN_BACKEND_CPU,
                     .read = read,
                     .seed = 13u};
    problem pr;
    problem_make(&pr, &c);
    float arena[16], before[16];
    for (int i = 0; i < 16; i++)
        arena[i] = before[i] = (float)i;
    gdn_decode_params p = pr.p;
    p.out = arena + 8, p.out_stride = INT64_MAX / 2;
    gdn_status s = gdn_decode(&p);
    CHECK_MSG(s == GDN_ERR_INVALID_STRIDE, "out_stride = 2^62 - 1 with 2 rows: status %s (%s)",
              gdn_status_string(s), gdn_last_error());
    CHECK_MSG(memcmp(arena, before, sizeof arena) == 0,
              "the call wrote out[0] and 4 bytes before out (arena[7] = %g)", (double)arena[7]);
    problem_free(&pr);
}

void register_reliability_tests(void)
{
    test_add("reliability/nan_inf_rows_cpu", nan_inf_cpu);
    test_add("reliability/nan_inf_rows_reference", nan_inf_reference);
    test_add("reliability/nan_inf_multi_token_cpu", nan_inf_multi_token_cpu);
    test_add("reliability/nan_inf_multi_token_reference", nan_inf_multi_token_reference);
    test_add("reliability/nan_in_state_slot", nan_in_state_slot);
    test_add("reliability/nan_inf_k128_every_isa", nan_inf_k128_every_isa);
    test_add("reliability/nan_in_gate_params", nan_in_gate_params);
    test_add("reliability/threads_decode", threads_decode);
    test_add("reliability/row_pieces_match_whole_call", row_pieces_match_whole_call);
    test_add("reliability/threads_last_error", threads_last_error);
    test_add("reliability/validation_multi_token_cpu", multi_token_validation_cpu);
    test_add("reliability/validation_multi_token_reference", multi_token_validation_reference);
    test_add("reliability/num_seqs_zero_no_pointers", num_seqs_zero_no_pointers);
    test_add("reliability/fuzz_bug_token_rows_overflow", fuzz_bug_token_rows_overflow);
    test_add("reliability/fuzz_bug_cu_difference_overflow", fuzz_bug_cu_difference_overflow);
    test_add("reliability/fuzz_bug_cu_rows_overflow", fuzz_bug_cu_rows_overflow);
    test_add("reliability/fuzz_bug_cu_rows_beyond_n_t", fuzz_bug_cu_rows_beyond_n_t);
    test_add("reliability/fuzz_bug_token_slots_stride_overflow", fuzz_bug_token_slots_stride_overflow);
    test_add("reliability/fuzz_bug_stride_bytes_overflow", fuzz_bug_stride_bytes_overflow);
}
