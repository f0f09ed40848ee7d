/*
 * gdn check: random parity of a backend against the float64 reference backend over a matrix
 * of shapes (every SPEC model shape and odd ones), dtypes, layouts and options, plus the shared
 * reference vectors. `--steps S` instead runs S consecutive steps and reports the state error
 * over time, with the error of the reference itself rounded to the state dtype each step.
 * Exit status 0 only when every case passed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "decode_case.h"
#include "rng.h"
#include "shapes.h"
#include "vectors.h"

typedef struct check_opts {
    gdn_backend backend;
    int steps, csv, quick, vectors;
    const char *only_shape;
    uint64_t seed;
    gdn_dtype act;
    int tokens; /* --tokens T: every matrix case decodes T tokens per sequence */
} check_opts;

static void usage(void)
{
    printf("usage: gdn check [--backend cpu|cuda|reference] [--seed N] [--shape NAME] [--quick]\n"
           "                 [--no-vectors] [--csv] [--steps S [--act f32|f16|bf16]] [--tokens T]\n"
           "  default: the matrix of shapes x dtypes x layouts x options, then ../shared/vectors\n"
           "  (or $GDN_VECTORS); --steps S: S consecutive decode steps of one sequence per state\n"
           "  dtype, state error over time against the float64 reference. --tokens T: multi-token\n"
           "  decode (T per sequence, with token slots, num_accepted and varlen) in every case.\n");
}

static int parse(int argc, char **argv, check_opts *o)
{
    const char *backend = NULL;
    memset(o, 0, sizeof *o);
    o->vectors = 1;
    o->seed = rng_fresh_seed();
    o->act = GDN_DTYPE_BF16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--backend") && next)
            backend = argv[++i];
        else if (!strcmp(a, "--steps") && next)
            o->steps = atoi(argv[++i]);
        else if (!strcmp(a, "--seed") && next)
            o->seed = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(a, "--shape") && next)
            o->only_shape = argv[++i];
        else if (!strcmp(a, "--act") && next) {
            if (parse_dtype(argv[++i], &o->act) != 0)
                return fprintf(stderr, "gdn check: unknown dtype %s\n", argv[i]), -1;
        } else if (!strcmp(a, "--tokens") && next)
            o->tokens = atoi(argv[++i]);
        else if (!strcmp(a, "--quick"))
            o->quick = 1;
        else if (!strcmp(a, "--csv"))
            o->csv = 1;
        else if (!strcmp(a, "--no-vectors"))
            o->vectors = 0;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return usage(), 1;
        else
            return fprintf(stderr, "gdn check: unknown option %s\n", a), usage(), -1;
    }
    if (o->tokens < 0 || o->tokens > GDN_MAX_TOKENS)
        return fprintf(stderr, "gdn check: --tokens must be 1..%d\n", GDN_MAX_TOKENS), -1;
    if (o->only_shape && !shape_find(o->only_shape))
        return fprintf(stderr, "gdn check: unknown shape %s\n", o->only_shape), -1;
    return resolve_tool_backend(backend, &o->backend);
}

static void print_row(const check_opts *o, const decode_case *c, const decode_case_result *r)
{
    char what[300];
    decode_case_describe(c, what, sizeof what);
    if (o->csv)
        printf("\"%s\",%s,%.3e,%.3e,%.3e,%.3e,%s\n", what, gdn_backend_name(o->backend), r->out_rel,
               r->out_max_abs, r->state_rel, r->rounded_rel, r->pass ? "pass" : "FAIL");
    else
        printf("%-100s %9.2e %9.2e %9.2e %9.2e  %s%s%s\n", what, r->out_rel, r->out_max_abs, r->state_rel,
               r->rounded_rel, r->pass ? "ok" : "FAIL: ", r->pass ? "" : r->message, "");
    fflush(stdout);
}

/* Options of case number i: every option is on in some cases and off in others for each
 * dtype/layout combination, without the full cartesian product. */
static void set_options(decode_case *c, unsigned i, int tokens)
{
    unsigned bits = i * 2654435761u >> 7;
    if (tokens > 1) { /* multi-token options: snapshots, rollback, varlen, each on and off */
        c->num_tokens = tokens;
        c->token_slots = (bits & 128) != 0;
        c->accepted = c->token_slots && (bits & 256) != 0;
        c->varlen = (bits & 512) != 0;
    }
    c->index_dtype = bits & 1 ? GDN_DTYPE_I32 : GDN_DTYPE_I64;
    c->head_map = bits & 2 ? GDN_HEAD_MAP_TILED : GDN_HEAD_MAP_GROUPED;
    c->qk_l2norm = (bits & 12) != 12;
    c->null_slot_zero = (bits & 16) != 0;
    c->write_slots = (bits & 32) != 0;
    c->strided = (bits & 64) != 0;
    c->padding = 1;
}

/* Runs one case for `steps` steps, prints its row; 1 when it failed. */
static int run_one(const check_opts *o, decode_case *c, unsigned i, int steps, int *cases)
{
    c->seed = o->seed + i;
    decode_case_result r;
    int failed = !decode_case_run(c, o->backend, steps, NULL, NULL, &r);
    (*cases)++;
    print_row(o, c, &r);
    return failed;
}

static int run_matrix(const check_opts *o, int *cases)
{
    const gdn_dtype acts[] = {GDN_DTYPE_F32, GDN_DTYPE_F16, GDN_DTYPE_BF16};
    const gdn_dtype states[] = {GDN_DTYPE_F32, GDN_DTYPE_BF16};
    const shape *lists[] = {model_shapes, odd_shapes};
    int failed = 0;
    unsigned i = 0;
    if (o->csv)
        printf("case,backend,out_rel,out_max_abs,state_rel,bf16_roundtrip_rel,result\n");
    else
        printf("%-100s %9s %9s %9s %9s  %s\n", "case", "out_rel", "max_abs", "state_rel", "rt_rel", "result");
    for (int l = 0; l < 2; l++)
        for (const shape *s = lists[l]; s->name; s++) {
            if (o->only_shape && strcmp(o->only_shape, s->name) != 0)
                continue;
            for (int a = 0; a < 3; a++)
                for (int st = 0; st < 2; st++)
                    for (int lay = 0; lay < 2; lay++, i++) {
                        if (o->quick && (i % 3) != 0)
                            continue;
                        decode_case c = {0};
                        c.name = s->name;
                        c.num_seqs = l == 0 ? 5 : 3 + (int64_t)(i % 5);
                        c.num_q_heads = s->h, c.num_v_heads = s->hv, c.head_dim_k = s->k, c.head_dim_v = s->v;
                        c.act_dtype = acts[a], c.state_dtype = states[st];
                        c.layout = lay ? GDN_LAYOUT_KV : GDN_LAYOUT_VK;
                        set_options(&c, i, o->tokens);
                        failed += run_one(o, &c, i, 1, cases);
                    }
        }
    /* Realistic batches: many rows, padding and permuted slots. On the cuda backend these reach
     * the launch configurations that only large batches get (more rows per thread). */
    const struct {
        const char *name;
        int64_t n, h, hv;
    } batches[] = {{"batch64-contest", 64, 4, 8},
                   {"batch24-qwen3-next", 24, 16, 32},
                   {"batch40-qwen3.5-397b", 40, 16, 64}};
    for (int j = 0; j < 12 && !o->only_shape; j++, i++) {
        int bt = j / 4, st = j % 2, lay = (j / 2) % 2;
        if (o->quick && lay)
            continue;
        decode_case c = {0};
        c.name = batches[bt].name;
        c.num_seqs = batches[bt].n, c.num_q_heads = batches[bt].h, c.num_v_heads = batches[bt].hv;
        c.head_dim_k = 128, c.head_dim_v = 128;
        c.act_dtype = GDN_DTYPE_BF16, c.state_dtype = st ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
        c.layout = lay ? GDN_LAYOUT_KV : GDN_LAYOUT_VK;
        set_options(&c, i, o->tokens);
        failed += run_one(o, &c, i, 1, cases);
    }
    /* Multi-token decode in the default matrix too: T = 2, 4 and 16 on both layouts and states. */
    const int64_t tokens[] = {2, 4, 16};
    for (int j = 0; j < 12 && !o->only_shape && o->tokens <= 1; j++, i++) {
        decode_case c = {0};
        c.name = "mtp-contest";
        c.num_seqs = 6, c.num_q_heads = 4, c.num_v_heads = 8, c.head_dim_k = 128, c.head_dim_v = 128;
        c.act_dtype = GDN_DTYPE_BF16, c.state_dtype = j % 2 ? GDN_DTYPE_BF16 : GDN_DTYPE_F32;
        c.layout = (j / 2) % 2 ? GDN_LAYOUT_KV : GDN_LAYOUT_VK;
        set_options(&c, i, (int)tokens[j / 4]);
        c.token_slots = j % 3 != 0, c.accepted = c.token_slots && j % 2 == 0;
        failed += run_one(o, &c, i, 2, cases);
    }
    return failed;
}

static int run_vectors(const check_opts *o, int *cases)
{
    const char *dir = vectors_dir();
    if (!dir) {
        printf("\n!!! reference vectors NOT FOUND: set GDN_VECTORS or run from a checkout beside ../shared.\n"
               "!!! The external oracle was not checked in this run.\n");
        return 0;
    }
    printf("\nreference vectors in %s (%s backend, tolerance 1e-5 relative)\n", dir,
           gdn_backend_name(o->backend));
    int failed = 0;
    for (int i = 0; vector_case_names[i]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s.gdnv", dir, vector_case_names[i]);
        vector_result r;
        failed += !vectors_run_file(path, o->backend, 1, &r);
        (*cases)++;
        printf("%-26s N=%lld T=%-4lld H=%-2lld HV=%-2lld K=%-3lld V=%-3lld out_rel %9.2e state_rel %9.2e "
               "token_state_rel %9.2e  %s%s\n",
               vector_case_names[i], r.n, r.t, r.h, r.hv, r.k, r.v, r.out_rel, r.state_rel, r.token_state_rel,
               r.pass ? "ok" : "FAIL: ", r.message);
    }
    return failed;
}

typedef struct curve_ctx {
    int steps, next_report;
    double worst_ratio;
} curve_ctx;

static void report_step(int step, const decode_case_result *r, void *ctx)
{
    curve_ctx *cc = ctx;
    int n = step + 1;
    double ratio = r->rounded_rel > 0 ? r->state_rel / r->rounded_rel : 0;
    if (ratio > cc->worst_ratio)
        cc->worst_ratio = ratio;
    if (n == cc->next_report || n == cc->steps || !r->pass) {
        printf("  step %6d  state_rel %9.3e  reference_rounded_rel %9.3e  ratio %5.2f  out_rel %9.3e%s%s\n",
               n, r->state_rel, r->rounded_rel, ratio, r->out_rel,
               r->pass ? "" : "  FAIL: ", r->pass ? "" : r->message);
        fflush(stdout);
        while (cc->next_report <= n)
            cc->next_report *= 2;
    }
}

static int run_steps(const check_opts *o, int *cases)
{
    const shape *s = shape_find(o->only_shape ? o->only_shape : "contest");
    const gdn_dtype states[] = {GDN_DTYPE_F32, GDN_DTYPE_BF16};
    int failed = 0;
    for (int st = 0; st < 2; st++) {
        decode_case c = {0};
        c.name = s->name;
        c.num_seqs = 1, c.num_q_heads = s->h, c.num_v_heads = s->hv, c.head_dim_k = s->k, c.head_dim_v = s->v;
        c.act_dtype = o->act, c.state_dtype = states[st], c.index_dtype = GDN_DTYPE_I64;
        c.layout = GDN_LAYOUT_VK, c.qk_l2norm = 1;
        c.seed = o->seed + (uint64_t)st;
        char what[256];
        decode_case_describe(&c, what, sizeof what);
        printf("%d steps, %s backend: %s\n", o->steps, gdn_backend_name(o->backend), what);
        printf("  (state_rel: backend vs float64 reference; reference_rounded_rel: the float64 reference\n"
               "   rounded to the state dtype after every step, vs the float64 reference)\n");
        curve_ctx cc = {o->steps, 1, 0};
        decode_case_result r;
        int ok = decode_case_run(&c, o->backend, o->steps, report_step, &cc, &r);
        failed += !ok;
        (*cases)++;
        printf("  %s after %d steps (worst backend/rounded-reference ratio %.2f)\n\n", ok ? "ok" : "FAIL",
               o->steps, cc.worst_ratio);
    }
    return failed;
}

int cmd_check(int argc, char **argv)
{
    check_opts o;
    int rc = parse(argc, argv, &o);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    printf("gdn check: backend %s, seed %llu\n", gdn_backend_name(o.backend), (unsigned long long)o.seed);
    int cases = 0, failed = 0;
    if (o.steps > 0) {
        failed = run_steps(&o, &cases);
    } else {
        failed = run_matrix(&o, &cases);
        if (o.vectors)
            failed += run_vectors(&o, &cases);
    }
    printf("\n%d cases, %d passed, %d failed (backend %s, seed %llu)\n", cases, cases - failed, failed,
           gdn_backend_name(o.backend), (unsigned long long)o.seed);
    return failed ? 1 : 0;
}
