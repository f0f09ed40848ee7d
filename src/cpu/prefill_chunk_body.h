/*
 * Long sequences in chunks (varlen prefill), part of decode_item_body.h (compiled once per
 * instruction set). Within a chunk of C tokens with the state S at its start (V x K, row j = S_j),
 * cumulative log-decays G_t = g_0 + .. + g_t, e(t, s) = exp(G_t - G_s) <= 1 for s <= t:
 *     u_t = beta_t (v_t - e^{G_t} S k_t - sum_{s<t} e(t,s) (k_s.k_t) u_s)      (a triangular solve)
 *     o_t = e^{G_t} S q_t + sum_{s<=t} e(t,s) (k_s.q_t) u_s
 *     S'  = e^{G_{C-1}} S + sum_s e(C-1, s) u_s k_s^T
 * which is the token-by-token recurrence rewritten (the WY form of chunked prefill). Every step
 * is a matrix product over the chunk (register-blocked, gemm_nn): K S^T and Q S^T, the C x C
 * Gram entries, the outputs' terms within the chunk, and the update K^T W; only the triangular
 * solve runs row by row. No division: only decay products <= 1 (exp of differences of the
 * cumulative logs), so a decay that underflows is harmless.
 */

/* The state, widened into in->state as S^T (K rows of V floats: the kv orientation, so that
 * both products with it below run along V), from either layout. */
static void load_state_t(const gdn_problem *p, int64_t src, float *ST)
{
    const int64_t K = p->head_dim_k, V = p->head_dim_v;
    if (src < 0)
        memset(ST, 0, (size_t)(V * K) * sizeof ST[0]);
    else if (p->state_layout == GDN_LAYOUT_KV)
        gdn_load_row_f32(p->state_pool, p->state_dtype, src, V * K, ST);
    else {
        float row[GDN_MAX_HEAD_DIM];
        for (int64_t j = 0; j < V; j++) {
            gdn_load_row_f32(p->state_pool, p->state_dtype, src + j * K, K, row);
            for (int64_t i = 0; i < K; i++)
                ST[i * V + j] = row[i];
        }
    }
}

static void store_state_t(const gdn_problem *p, int64_t dst, const float *ST)
{
    const int64_t K = p->head_dim_k, V = p->head_dim_v;
    if (p->state_layout == GDN_LAYOUT_KV) {
        gdn_store_row_f32(p->state_pool, p->state_dtype, dst, V * K, ST);
        return;
    }
    float row[GDN_MAX_HEAD_DIM];
    for (int64_t j = 0; j < V; j++) {
        for (int64_t i = 0; i < K; i++)
            row[i] = ST[i * V + j];
        gdn_store_row_f32(p->state_pool, p->state_dtype, dst + j * K, K, row);
    }
}

/* exp(x) for x <= 0, flushed to zero below the smallest normal float: decay products within a
 * chunk reach e^-300 with strong gates, and arithmetic on denormals runs ~100x slower on x86
 * (measured: 2.0 s instead of ~0.1 s for 1 x 4096 qwen3-next). A product below 1e-38 times O(1)
 * values changes no result that is itself a normal float. */
static float decay_of(float x) { return x < -87.0f ? 0.0f : expf(x); }

/* y += a x over n floats (vectorised: no reduction). */
static void axpy(float *restrict y, float a, const float *restrict x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

/*
 * C = keep * C + A B for row-major A [M x D], B [D x N], C [M x N] (keep 0: C is overwritten,
 * never read). Blocks of 4 rows x 16 columns accumulate in registers over all of D, with B's
 * rows as vectors and A's elements broadcast (the target's vectors where it has them); the
 * edges run scalar loops.
 */
#if defined(GDN_VEC_W) && GDN_VEC_W == 16
enum {
    GEMM_MB = 8,
    GEMM_NB = 32
}; /* 16 accumulators (two FMA ports x 4 cycles of latency, x2),
      one vector load of B per 8 FMAs */
#else
enum { GEMM_MB = 6, GEMM_NB = 16 }; /* AVX2: 12 accumulators of the 16 ymm registers */
#endif

static void gemm_block_edge(int64_t mb, int64_t nb, int64_t D, const float *restrict A, int64_t lda,
                            const float *restrict B, int64_t ldb, float *restrict C, int64_t ldc, float keep)
{
    float acc[GEMM_MB][GEMM_NB] = {{0}};
    for (int64_t d = 0; d < D; d++)
        for (int64_t r = 0; r < mb; r++)
            for (int64_t l = 0; l < nb; l++)
                acc[r][l] += A[r * lda + d] * B[d * ldb + l];
    for (int64_t r = 0; r < mb; r++)
        for (int64_t l = 0; l < nb; l++)
            C[r * ldc + l] = (keep != 0.0f ? keep * C[r * ldc + l] : 0.0f) + acc[r][l];
}

static void gemm_block(int64_t D, const float *restrict A, int64_t lda, const float *restrict B, int64_t ldb,
                       float *restrict C, int64_t ldc, float keep)
{
#if defined(GDN_VEC_W)
    enum { NV = GEMM_NB / GDN_VEC_W };
    vec_f acc[GEMM_MB][NV];
    for (int r = 0; r < GEMM_MB; r++)
        for (int v = 0; v < NV; v++)
            acc[r][v] = vzero();
    for (int64_t d = 0; d < D; d++) {
        vec_f b[NV];
        for (int v = 0; v < NV; v++)
            b[v] = vload_f32(B + d * ldb + v * GDN_VEC_W);
        for (int r = 0; r < GEMM_MB; r++) {
            const vec_f a = vset1(A[r * lda + d]);
            for (int v = 0; v < NV; v++)
                acc[r][v] = vfma(a, b[v], acc[r][v]);
        }
    }
    for (int r = 0; r < GEMM_MB; r++)
        for (int v = 0; v < NV; v++) {
            float *c = C + r * ldc + v * GDN_VEC_W;
            vstore_f32(c, keep != 0.0f ? vfma(vset1(keep), vload_f32(c), acc[r][v]) : acc[r][v]);
        }
#else
    gemm_block_edge(GEMM_MB, GEMM_NB, D, A, lda, B, ldb, C, ldc, keep);
#endif
}

/* One vector of columns, GEMM_MB rows: the narrow products (the C x C Gram entries of short chunks). */
static void gemm_block_narrow(int64_t D, const float *restrict A, int64_t lda, const float *restrict B,
                              int64_t ldb, float *restrict C, int64_t ldc, float keep)
{
#if defined(GDN_VEC_W)
    vec_f acc[GEMM_MB];
    for (int r = 0; r < GEMM_MB; r++)
        acc[r] = vzero();
    for (int64_t d = 0; d < D; d++) {
        const vec_f b = vload_f32(B + d * ldb);
        for (int r = 0; r < GEMM_MB; r++)
            acc[r] = vfma(vset1(A[r * lda + d]), b, acc[r]);
    }
    for (int r = 0; r < GEMM_MB; r++) {
        float *c = C + r * ldc;
        vstore_f32(c, keep != 0.0f ? vfma(vset1(keep), vload_f32(c), acc[r]) : acc[r]);
    }
#else
    gemm_block_edge(GEMM_MB, GEMM_NB < 8 ? GEMM_NB : 8, D, A, lda, B, ldb, C, ldc, keep);
#endif
}

static void gemm_nn(int64_t M, int64_t N, int64_t D, const float *restrict A, int64_t lda,
                    const float *restrict B, int64_t ldb, float *restrict C, int64_t ldc, float keep)
{
#if defined(GDN_VEC_W)
    const int64_t narrow = GDN_VEC_W;
#else
    const int64_t narrow = 8;
#endif
    for (int64_t m0 = 0; m0 < M; m0 += GEMM_MB)
        for (int64_t n0 = 0; n0 < N;) {
            const float *a = A + m0 * lda, *b = B + n0;
            float *c = C + m0 * ldc + n0;
            const int64_t step = n0 + GEMM_NB <= N ? GEMM_NB : n0 + narrow <= N ? narrow : N - n0;
            if (m0 + GEMM_MB <= M && step == GEMM_NB)
                gemm_block(D, a, lda, b, ldb, c, ldc, keep);
            else if (m0 + GEMM_MB <= M && step == narrow)
                gemm_block_narrow(D, a, lda, b, ldb, c, ldc, keep);
            else
                gemm_block_edge(M - m0 < GEMM_MB ? M - m0 : GEMM_MB, step, D, a, lda, b, ldb, c, ldc, keep);
            n0 += step;
        }
}

/* Tokens [first, first + count) of the chunk: inputs staged, then the closed form on S^T. */
static void chunk_step(const gdn_problem *p, int64_t hv, int64_t first, int64_t count, float *ST,
                       chunk_scratch *c)
{
    const int64_t K = p->head_dim_k, V = p->head_dim_v, L = GDN_MAX_HEAD_DIM, CC = GDN_CPU_CHUNK;
    for (int64_t t = 0; t < count; t++) { /* q, k normalised (q scaled), v into u, gates */
        const float g = stage_token(p, first + t, hv, c->q[t], c->k[t], c->u[t], &c->beta[t]);
        c->gcum[t] = (t ? c->gcum[t - 1] : 0.0f) + g;
        c->decay[t] = decay_of(c->gcum[t]);
        for (int64_t i = 0; i < K; i++)
            c->kt[i][t] = c->k[t][i];
    }
    /* S k_t and S q_t of every token: K S^T and Q S^T; then u_t = beta_t (v_t - e^{G_t} S k_t)
     * (before the solve) and o_t = e^{G_t} S q_t (before the terms within the chunk) */
    if (count == CC) { /* q and k, o and w are consecutive arrays: one pass over S^T for both */
        gemm_nn(2 * count, V, K, &c->q[0][0], L, ST, V, &c->o[0][0], L, 0.0f);
    } else {
        gemm_nn(count, V, K, &c->k[0][0], L, ST, V, &c->w[0][0], L, 0.0f);
        gemm_nn(count, V, K, &c->q[0][0], L, ST, V, &c->o[0][0], L, 0.0f);
    }
    for (int64_t t = 0; t < count; t++)
        for (int64_t j = 0; j < V; j++) {
            c->u[t][j] = c->beta[t] * (c->u[t][j] - c->decay[t] * c->w[t][j]);
            c->o[t][j] *= c->decay[t];
        }
    /* the Gram entries k_t.k_s and q_t.k_s: K K^T and Q K^T */
    gemm_nn(count, count, K, &c->k[0][0], L, &c->kt[0][0], CC, &c->kk[0][0], CC, 0.0f);
    gemm_nn(count, count, K, &c->q[0][0], L, &c->kt[0][0], CC, &c->qk[0][0], CC, 0.0f);
    /* the solve (I + A) u = r, A[t][s] = beta_t e(t,s) k_s.k_t; the output weights
     * W[t][s] = e(t,s) k_s.q_t (s <= t, else 0), then o += W u */
    for (int64_t t = 0; t < count; t++) {
        for (int64_t s = 0; s < t; s++)
            axpy(c->u[t], -c->beta[t] * decay_of(c->gcum[t] - c->gcum[s]) * c->kk[t][s], c->u[s], V);
        for (int64_t s = 0; s < count; s++)
            c->qk[t][s] = s <= t ? decay_of(c->gcum[t] - c->gcum[s]) * c->qk[t][s] : 0.0f;
    }
    gemm_nn(count, V, count, &c->qk[0][0], CC, &c->u[0][0], L, &c->o[0][0], L, 1.0f);
    for (int64_t t = 0; t < count; t++)
        gdn_store_row_f32(p->out, p->act_dtype, (first + t) * p->out_stride + hv * V, V, c->o[t]);
    /* S'^T = e^{G_end} S^T + K^T W, W[s] = e(end, s) u_s */
    const float end = c->gcum[count - 1];
    for (int64_t s = 0; s < count; s++) {
        const float w = decay_of(end - c->gcum[s]);
        for (int64_t j = 0; j < V; j++)
            c->w[s][j] = w * c->u[s][j];
    }
    gemm_nn(K, V, count, &c->kt[0][0], CC, &c->w[0][0], L, ST, V, decay_of(end));
}

/* Cache lines of q, k, v (this head's slices) and the gate inputs of `count` token rows from
 * `row`. A head's slice of a token row is a few hundred bytes, one token row (every head) apart:
 * the chunk's staging would otherwise wait on DRAM for each (profiled: most of the staging time
 * at 4 x 4096 tokens of qwen3-next, where the activations are far larger than the caches). */
static void prefetch_token_rows(const gdn_problem *p, int64_t hv, int64_t row, int64_t count)
{
    const int64_t act = p->act_dtype == GDN_DTYPE_F32 ? 4 : 2, K = p->head_dim_k, V = p->head_dim_v;
    const int64_t h = gdn_qk_head(p, hv);
    for (int64_t t = row; t < row + count; t++) {
        const char *q = (const char *)p->q + (t * p->q_stride + h * K) * act;
        const char *k = (const char *)p->k + (t * p->k_stride + h * K) * act;
        const char *v = (const char *)p->v + (t * p->v_stride + hv * V) * act;
        for (int64_t b = 0; b < K * act; b += 64) {
            __builtin_prefetch(q + b);
            __builtin_prefetch(k + b);
        }
        for (int64_t b = 0; b < V * act; b += 64)
            __builtin_prefetch(v + b);
        if (p->g) {
            __builtin_prefetch(p->g + t * p->g_stride + hv);
            __builtin_prefetch((const char *)p->beta + (t * p->beta_stride + hv) * act);
        } else {
            __builtin_prefetch((const char *)p->a + (t * p->a_stride + hv) * act);
            __builtin_prefetch((const char *)p->b + (t * p->b_stride + hv) * act);
        }
    }
}

/* Tokens of the chunk that starts with `left` tokens of the sequence to go. */
static int64_t chunk_tokens(int64_t left) { return left < GDN_CPU_CHUNK ? left : GDN_CPU_CHUNK; }

/* A long sequence in chunks of GDN_CPU_CHUNK tokens (the last one shorter); the next chunk's
 * inputs are prefetched while one chunk is computed. */
static void long_sequence_chunked(const gdn_problem *p, int64_t hv, int64_t first, int64_t tokens,
                                  int64_t src, int64_t dst, head_inputs *in)
{
    load_state_t(p, src, in->state);
    prefetch_token_rows(p, hv, first, chunk_tokens(tokens));
    for (int64_t t0 = 0; t0 < tokens; t0 += GDN_CPU_CHUNK) {
        const int64_t next = t0 + GDN_CPU_CHUNK;
        if (next < tokens)
            prefetch_token_rows(p, hv, first + next, chunk_tokens(tokens - next));
        chunk_step(p, hv, first + t0, chunk_tokens(tokens - t0), in->state, &in->chunk);
    }
    if (dst >= 0)
        store_state_t(p, dst, in->state);
}
