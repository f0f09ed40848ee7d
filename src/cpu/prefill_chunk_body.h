/*
 * Long sequences in chunks (varlen prefill), part of decode_item_body.h (compiled once per
 * instruction set). Within a chunk of C tokens with the state S at its start (V x K, row j = S_j),
 * cumulative log-decays G_t = g_0 + .. + g_t, e(t, s) = exp(G_t - G_s) <= 1 for s <= t:
 *     u_t = beta_t (v_t - e^{G_t} S k_t - sum_{s<t} e(t,s) (k_s.k_t) u_s)      (a triangular solve)
 *     o_t = e^{G_t} S q_t + sum_{s<=t} e(t,s) (k_s.q_t) u_s
 *     S'  = e^{G_{C-1}} S + sum_s e(C-1, s) u_s k_s^T
 * which is the token-by-token recurrence rewritten (the WY form of chunked prefill). Every step
 * is a matrix product over the chunk: S k_t and S q_t for all t in one pass over the rows, the
 * C x C Gram entries, the solve and the outputs as row operations of length V, and the update as
 * one pass over the rows. No division: only decay products <= 1 (exp of differences of the
 * cumulative logs), so a decay that underflows is harmless.
 */

/* The state, widened into in->state in vk orientation (row j = S_j, K floats), from either layout. */
static void load_state_vk(const gdn_problem *p, int64_t src, float *S)
{
    const int64_t K = p->head_dim_k, V = p->head_dim_v;
    if (src < 0)
        memset(S, 0, (size_t)(V * K) * sizeof S[0]);
    else if (p->state_layout == GDN_LAYOUT_VK)
        gdn_load_row_f32(p->state_pool, p->state_dtype, src, V * K, S);
    else
        for (int64_t i = 0; i < K; i++)
            for (int64_t j = 0; j < V; j++)
                S[j * K + i] = (float)gdn_load_f64(p->state_pool, p->state_dtype, src + i * V + j);
}

static void store_state_vk(const gdn_problem *p, int64_t dst, const float *S)
{
    const int64_t K = p->head_dim_k, V = p->head_dim_v;
    if (p->state_layout == GDN_LAYOUT_VK) {
        gdn_store_row_f32(p->state_pool, p->state_dtype, dst, V * K, S);
        return;
    }
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < V; j++) {
            float x = S[j * K + i];
            gdn_store_row_f32(p->state_pool, p->state_dtype, dst + i * V + j, 1, &x);
        }
}

/* y += a x over n floats (vectorised: no reduction). */
static void axpy(float *restrict y, float a, const float *restrict x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

/* Tokens [first, first + count) of the chunk: inputs staged, then the closed form on S. */
static void chunk_step(const gdn_problem *p, int64_t hv, int64_t first, int64_t count, float *S, chunk_scratch *c)
{
    const int64_t K = p->head_dim_k, V = p->head_dim_v, h = gdn_qk_head(p, hv);
    for (int64_t t = 0; t < count; t++) { /* q, k normalised (q scaled), v into u, gates */
        const int64_t row = first + t;
        gdn_load_row_f32(p->q, p->act_dtype, row * p->q_stride + h * K, K, c->q[t]);
        gdn_load_row_f32(p->k, p->act_dtype, row * p->k_stride + h * K, K, c->k[t]);
        gdn_load_row_f32(p->v, p->act_dtype, row * p->v_stride + hv * V, V, c->u[t]);
        if (p->qk_l2norm) {
            l2_normalise(c->q[t], K);
            l2_normalise(c->k[t], K);
        }
        for (int64_t i = 0; i < K; i++)
            c->q[t][i] *= p->scale;
        float g, beta;
        if (p->g) {
            g = p->g[row * p->g_stride + hv];
            beta = (float)gdn_load_f64(p->beta, p->act_dtype, row * p->beta_stride + hv);
        } else {
            float a = (float)gdn_load_f64(p->a, p->act_dtype, row * p->a_stride + hv);
            g = gdn_gate_log(p->A_log[hv], a, p->dt_bias[hv]);
            beta = gdn_sigmoid((float)gdn_load_f64(p->b, p->act_dtype, row * p->b_stride + hv));
        }
        c->gcum[t] = (t ? c->gcum[t - 1] : 0.0f) + g;
        c->beta[t] = beta;
    }
    /* S k_t and S q_t for every token, one pass over the rows: u_t = beta_t (v_t - e^{G_t} S k_t)
     * (before the solve), o_t = e^{G_t} S q_t (before the intra-chunk terms) */
    for (int64_t t = 0; t < count; t++)
        c->decay[t] = expf(c->gcum[t]);
    for (int64_t j = 0; j < V; j++) {
        const float *row = S + j * K;
        for (int64_t t = 0; t < count; t++) {
            c->u[t][j] = c->beta[t] * (c->u[t][j] - c->decay[t] * dot(c->k[t], row, K));
            c->o[t][j] = c->decay[t] * dot(c->q[t], row, K);
        }
    }
    /* the solve (I + A) u = r, A[t][s] = beta_t e(t,s) k_s.k_t, then the outputs */
    for (int64_t t = 0; t < count; t++) {
        for (int64_t s = 0; s < t; s++)
            axpy(c->u[t], -c->beta[t] * expf(c->gcum[t] - c->gcum[s]) * dot(c->k[s], c->k[t], K), c->u[s], V);
        for (int64_t s = 0; s <= t; s++)
            axpy(c->o[t], expf(c->gcum[t] - c->gcum[s]) * dot(c->k[s], c->q[t], K), c->u[s], V);
        gdn_store_row_f32(p->out, p->act_dtype, (first + t) * p->out_stride + hv * V, V, c->o[t]);
    }
    /* S' = e^{G_end} S + sum_s e(end, s) u_s k_s^T, row by row */
    const float end = c->gcum[count - 1], decay_end = expf(end);
    for (int64_t s = 0; s < count; s++)
        c->decay[s] = expf(end - c->gcum[s]);
    for (int64_t j = 0; j < V; j++) {
        float *row = S + j * K;
        for (int64_t i = 0; i < K; i++)
            row[i] *= decay_end;
        for (int64_t s = 0; s < count; s++)
            axpy(row, c->decay[s] * c->u[s][j], c->k[s], K);
    }
}

/* A long sequence in chunks of GDN_CPU_CHUNK tokens (the last one shorter). */
static void long_sequence_chunked(const gdn_problem *p, int64_t hv, int64_t first, int64_t tokens, int64_t src,
                                  int64_t dst, head_inputs *in)
{
    load_state_vk(p, src, in->state);
    for (int64_t t0 = 0; t0 < tokens; t0 += GDN_CPU_CHUNK)
        chunk_step(p, hv, first + t0, tokens - t0 < GDN_CPU_CHUNK ? tokens - t0 : GDN_CPU_CHUNK, in->state,
                   &in->chunk);
    if (dst >= 0)
        store_state_vk(p, dst, in->state);
}
