/*
 * reference backend: the float64 oracle for tests and `gdn check`.
 *
 * Written to be read next to SPEC section 1, one statement per line of the math, in the
 * order the spec gives (decay, delta, rank-1 update, then the output from the new state), with
 * none of the reordering the fast backends use. Inputs of any dtype are widened to double;
 * state and outputs are rounded once, on store, to their dtypes (f64 keeps full precision).
 * One thread, scratch from malloc: speed is not its purpose.
 */
#include <stdlib.h>
#include <string.h>

#include "../common/numeric.h"
#include "../core/backends.h"

static double softplus(double x) { return x > 20.0 ? x : log1p(exp(x)); }

/* S[j][i] of a V x K state, whichever layout the pool uses. */
static int64_t state_index(const gdn_problem *p, int64_t j, int64_t i)
{
    return p->state_layout == GDN_LAYOUT_VK ? j * p->head_dim_k + i : i * p->head_dim_v + j;
}

/* Applies one token (row `row` of the activations) to the V x K state S, in place, and
 * stores its output. */
static void reference_token(const gdn_problem *p, int64_t row, int64_t hv, double *q, double *k, double *S,
                            double *o)
{
    int64_t K = p->head_dim_k, V = p->head_dim_v, h = gdn_qk_head(p, hv);
    for (int64_t i = 0; i < K; i++) {
        q[i] = gdn_load_f64(p->q, p->act_dtype, row * p->q_stride + h * K + i);
        k[i] = gdn_load_f64(p->k, p->act_dtype, row * p->k_stride + h * K + i);
    }
    if (p->qk_l2norm) {
        double qq = 0.0, kk = 0.0;
        for (int64_t i = 0; i < K; i++) {
            qq += q[i] * q[i];
            kk += k[i] * k[i];
        }
        for (int64_t i = 0; i < K; i++) {
            q[i] /= sqrt(qq + 1e-6);
            k[i] /= sqrt(kk + 1e-6);
        }
    }
    for (int64_t i = 0; i < K; i++)
        q[i] *= (double)p->scale;

    double g, beta;
    if (p->g) { /* gates given precomputed */
        g = (double)p->g[row * p->g_stride + hv];
        beta = gdn_load_f64(p->beta, p->act_dtype, row * p->beta_stride + hv);
    } else {
        double a = gdn_load_f64(p->a, p->act_dtype, row * p->a_stride + hv);
        double b = gdn_load_f64(p->b, p->act_dtype, row * p->b_stride + hv);
        g = -exp((double)p->A_log[hv]) * softplus(a + (double)p->dt_bias[hv]);
        beta = 1.0 / (1.0 + exp(-b));
    }

    for (int64_t x = 0; x < V * K; x++) /* S = exp(g) S */
        S[x] *= exp(g);
    for (int64_t j = 0; j < V; j++) { /* u = beta (v - S k);  S = S + u k^T */
        double sk = 0.0;
        for (int64_t i = 0; i < K; i++)
            sk += S[j * K + i] * k[i];
        double u = beta * (gdn_load_f64(p->v, p->act_dtype, row * p->v_stride + hv * V + j) - sk);
        for (int64_t i = 0; i < K; i++)
            S[j * K + i] += u * k[i];
    }
    for (int64_t j = 0; j < V; j++) { /* o = S q */
        o[j] = 0.0;
        for (int64_t i = 0; i < K; i++)
            o[j] += S[j * K + i] * q[i];
        gdn_store_f64(p->out, p->act_dtype, row * p->out_stride + hv * V + j, o[j]);
    }
}

static void load_tile(const gdn_problem *p, int64_t slot, int64_t hv, double *S)
{
    int64_t tile = gdn_tile_offset(p, slot, hv);
    for (int64_t j = 0; j < p->head_dim_v; j++)
        for (int64_t i = 0; i < p->head_dim_k; i++)
            S[j * p->head_dim_k + i] =
                gdn_load_f64(p->state_pool, p->state_dtype, tile + state_index(p, j, i));
}

static void store_tile(const gdn_problem *p, int64_t slot, int64_t hv, const double *S)
{
    int64_t tile = gdn_tile_offset(p, slot, hv);
    for (int64_t j = 0; j < p->head_dim_v; j++)
        for (int64_t i = 0; i < p->head_dim_k; i++)
            gdn_store_f64(p->state_pool, p->state_dtype, tile + state_index(p, j, i),
                          S[j * p->head_dim_k + i]);
}

/* One sequence, one value head: its tokens in order, snapshots and the final state. */
static void reference_head(const gdn_problem *p, int64_t n, int64_t hv, double *q, double *k, double *S,
                           double *o)
{
    int64_t first = gdn_first_token_row(p, n), tokens = gdn_seq_tokens(p, n), V = p->head_dim_v;
    int64_t read = gdn_read_slot(p, n), write = gdn_write_slot(p, n);
    if (tokens <= 0) /* a sequence without tokens this step: nothing to compute or move */
        return;
    if (read < 0) { /* padding row: zero outputs, no state touched */
        for (int64_t t = 0; t < tokens; t++)
            for (int64_t j = 0; j < V; j++)
                gdn_store_f64(p->out, p->act_dtype, (first + t) * p->out_stride + hv * V + j, 0.0);
        return;
    }
    if (gdn_zero_initial_state(p, n)) /* has_initial_state[n] = 0: the read slot is not read */
        memset(S, 0, (size_t)(V * p->head_dim_k) * sizeof *S);
    else
        load_tile(p, read, hv, S);
    for (int64_t t = 0; t < tokens; t++) {
        reference_token(p, first + t, hv, q, k, S, o);
        int64_t snapshot = p->token_slots ? gdn_token_slot(p, n, t) : -1;
        if (snapshot >= 0)
            store_tile(p, snapshot, hv, S);
    }
    if (write >= 0)
        store_tile(p, write, hv, S);
}

gdn_status gdn_reference_decode(const gdn_problem *p)
{
    int64_t K = p->head_dim_k, V = p->head_dim_v;
    double *scratch = malloc((size_t)(2 * K + V * K + V) * sizeof(double));
    if (!scratch)
        return gdn_fail(GDN_ERR_INVALID_ARGUMENT, "reference backend: out of host memory");
    /* Heads run one after another; under the documented rule that no row writes a slot
     * another row reads, the order gives the same result as the parallel backends. */
    for (int64_t n = 0; n < p->num_seqs; n++)
        for (int64_t hv = 0; hv < p->num_v_heads; hv++)
            reference_head(p, n, hv, scratch, scratch + K, scratch + 2 * K, scratch + 2 * K + V * K);
    free(scratch);
    return GDN_OK;
}
