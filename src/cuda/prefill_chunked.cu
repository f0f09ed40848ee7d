/*
 * Long sequences in chunks of 64 tokens on tensor cores (varlen prefill; SPEC operation 4),
 * vk layout, K = 128. Within a chunk of C tokens, with the state S (V x K) at its start,
 * cumulative log-decays G_t = g_0 + .. + g_t and e(t, s) = exp(G_t - G_s) <= 1 for s <= t:
 *     u_t = beta_t (v_t - e^{G_t} S k_t) - sum_{s<t} beta_t e(t,s) (k_t.k_s) u_s
 *         i.e. U = (I + A)^{-1} Z with A the strictly lower beta_t e(t,s) k_t.k_s
 *     o_t = e^{G_t} S q_t + sum_{s<=t} e(t,s) (q_t.k_s) u_s
 *     S'  = e^{G_{C-1}} S + sum_s e(C-1, s) u_s k_s^T
 * (the token recurrence rewritten; the cpu backend's prefill_chunk_body.h has the same form).
 *
 * One block of 8 warps per (sequence, value head, slice of 32 state rows) walks the chunks of
 * its sequence in order; the slice's state stays in shared memory as float32 between chunks.
 * State rows are independent, so the slices of a head only repeat the chunk-local products
 * (the Gram matrices and the triangular solve), and a head's 128 rows fill 4 blocks: one
 * 4096-token sequence of qwen3-next (32 heads) keeps 128 multiprocessors busy.
 *
 * Per chunk: (1) the activations, staged by cp.async during the previous chunk, become
 * normalised float32 rows in shared memory, and one warp turns the 64 gates into cumulative
 * decays; (2) every product over K on mma.sync: K K^T and Q K^T (lower triangles only, decays
 * and masks applied), K S^T (into Z) and Q S^T (the outputs' first term, kept in registers);
 * (3) the four 16 x 16 diagonal blocks of I + A inverted by forward substitution; (4) the
 * block-triangular solve for U, each warp on 8 columns of its own (no barrier between blocks);
 * (5) the outputs' second term P U and the state update, both mma.
 *
 * Products take bf16 operands and accumulate in float32. With bf16 activations one bf16 term
 * each (the accuracy of FLA's and FlashInfer's chunked kernels, ~1e-3 relative); with f16 or
 * f32 activations, or GDN_PREFILL_PRECISE=1, each operand is split into two bf16 numbers
 * (hi + lo, 16 significant bits) and a product takes three mma (hi.hi + hi.lo + lo.hi), which
 * keeps the float32 state within ~1e-5 of the float64 reference.
 *
 * Three paths share the math: the three-term one (chunked_sequence, float32 shared memory),
 * the one-term phase-by-phase one (chunked_sequence_tc1, bf16 shared memory;
 * GDN_PREFILL_PIPELINE=0, and float32 activations forced to one term), and the default for
 * bf16 activations, the pipelined one (chunked_sequence_ws): local warps one chunk ahead of the
 * state warps, raw q/k rows, no serial solve. bench/NOTES.md has their measurements.
 */
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include "device_common.cuh"
#include "kernels.h"
#include "vk128_rows.cuh"
#include "wgmma.cuh"

namespace
{

constexpr int kChunk = 64;                /* tokens a chunk */
constexpr int kSlice = 32;                /* state rows a block */
constexpr int kChunkWarps = 8;            /* warps a block */
constexpr int kLdK = kRowK + 8;           /* floats between rows of Q, K and S in shared memory */
constexpr int kLdC = kChunk + 8;          /* floats between rows of the chunk x chunk matrices, U^T, Z^T */
constexpr int kGramTiles = 2 + 4 + 6 + 8; /* 16 x 8 tiles of a 64 x 64 lower triangle */

/* Shared memory, in floats, then the staged activations (raw, in the activation dtype). */
struct chunk_smem {
    static constexpr int q = 0;                    /* [C][kLdK] normalised, scaled q */
    static constexpr int k = q + kChunk * kLdK;    /* [C][kLdK] normalised k */
    static constexpr int s = k + kChunk * kLdK;    /* [kSlice][kLdK] the state slice, float32 */
    static constexpr int a = s + kSlice * kLdK;    /* [C][kLdC] A, then its diagonal blocks inverted */
    static constexpr int pm = a + kChunk * kLdC;   /* [C][kLdC] e(t,s) q_t.k_s, s <= t */
    static constexpr int zt = pm + kChunk * kLdC;  /* [kSlice][kLdC] Z^T */
    static constexpr int ut = zt + kSlice * kLdC;  /* [kSlice][kLdC] U^T */
    static constexpr int gam = ut + kSlice * kLdC; /* [C] e^{G_t} */
    static constexpr int dec = gam + kChunk;       /* [C] e^{G_last - G_t} */
    static constexpr int cum = dec + kChunk;       /* [C] G_t */
    static constexpr int beta = cum + kChunk;      /* [C] beta_t */
    static constexpr int floats = beta + kChunk;
    static constexpr int stage_bytes(int act) { return kChunk * (2 * kRowK + kSlice) * act; }
    static constexpr int bytes(int act) { return floats * 4 + stage_bytes(act); }
};

/* ---- mma.sync m16n8k16, bf16 operands, float32 accumulators ------------------------------- */

/* x0, x1 as one bf16 pair (hi) and, when PRECISE, the pair of what that rounding lost (lo). */
template <bool PRECISE>
__device__ __forceinline__ void split_pair(float x0, float x1, unsigned &hi, unsigned &lo)
{
    hi = pack_bf16(x0, x1);
    if constexpr (PRECISE) {
        __nv_bfloat162 h;
        memcpy(&h, &hi, sizeof h);
        const float2 r = __bfloat1622float2(h);
        lo = pack_bf16(x0 - r.x, x1 - r.y);
    } else {
        lo = 0;
    }
}

struct frag_a {
    unsigned hi[4], lo[4];
};
struct frag_b {
    unsigned hi[2], lo[2];
};

/* A (16 x 16) from row-major float32 rows: A[r][c] = base[(r0 + r) * ld + k0 + c] * sign. */
template <bool PRECISE>
__device__ __forceinline__ frag_a load_a(const float *base, int ld, int r0, int k0, float sign = 1.0f)
{
    const int g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
    const float *p0 = base + (r0 + g) * ld + k0 + 2 * t, *p1 = p0 + 8 * ld;
    const float2 x0 = *reinterpret_cast<const float2 *>(p0), x1 = *reinterpret_cast<const float2 *>(p1);
    const float2 x2 = *reinterpret_cast<const float2 *>(p0 + 8),
                 x3 = *reinterpret_cast<const float2 *>(p1 + 8);
    frag_a f;
    split_pair<PRECISE>(sign * x0.x, sign * x0.y, f.hi[0], f.lo[0]);
    split_pair<PRECISE>(sign * x1.x, sign * x1.y, f.hi[1], f.lo[1]);
    split_pair<PRECISE>(sign * x2.x, sign * x2.y, f.hi[2], f.lo[2]);
    split_pair<PRECISE>(sign * x3.x, sign * x3.y, f.hi[3], f.lo[3]);
    return f;
}

/* B (16 x 8) stored n-major: B[c][n] = base[(n0 + n) * ld + k0 + c]. */
template <bool PRECISE> __device__ __forceinline__ frag_b load_b_nk(const float *base, int ld, int n0, int k0)
{
    const int g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4;
    const float *p = base + (n0 + g) * ld + k0 + 2 * t;
    const float2 x0 = *reinterpret_cast<const float2 *>(p), x1 = *reinterpret_cast<const float2 *>(p + 8);
    frag_b f;
    split_pair<PRECISE>(x0.x, x0.y, f.hi[0], f.lo[0]);
    split_pair<PRECISE>(x1.x, x1.y, f.hi[1], f.lo[1]);
    return f;
}

/* B (16 x 8) stored k-major with a factor per k: B[c][n] = base[(k0 + c) * ld + n0 + n] * scale[k0 + c]. */
template <bool PRECISE>
__device__ __forceinline__ frag_b load_b_kn(const float *base, int ld, int n0, int k0, const float *scale)
{
    const int g = (threadIdx.x % 32) / 4, t = threadIdx.x % 4, c = k0 + 2 * t;
    const float *p = base + c * ld + n0 + g;
    frag_b f;
    split_pair<PRECISE>(p[0] * scale[c], p[ld] * scale[c + 1], f.hi[0], f.lo[0]);
    split_pair<PRECISE>(p[8 * ld] * scale[c + 8], p[9 * ld] * scale[c + 9], f.hi[1], f.lo[1]);
    return f;
}

__device__ __forceinline__ void mma_bf16(float *c, const unsigned *a, const unsigned *b)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* c += A B (the two small cross terms first when PRECISE). */
template <bool PRECISE> __device__ __forceinline__ void mma(float *c, const frag_a &a, const frag_b &b)
{
    if constexpr (PRECISE) {
        mma_bf16(c, a.lo, b.hi);
        mma_bf16(c, a.hi, b.lo);
    }
    mma_bf16(c, a.hi, b.hi);
}

/* ---- the chunk's inputs ---------------------------------------------------------------------- */

/* cp.async needs 16-byte aligned rows; otherwise the stage is filled with plain loads. */
template <typename Act> struct stage_source {
    const Act *q, *k, *v; /* token row `first` of this block's head (v: of its slice) */
    int64_t q_stride, k_stride, v_stride;
    int rows_v; /* columns of v this slice has (< kSlice at the end of V) */
    bool async;
};

/* Tokens [c0, c0 + len) of the sequence into the stage: q and k rows (K each), the slice of v. */
template <typename Act>
__device__ __forceinline__ void stage_chunk(const stage_source<Act> &src, int64_t c0, int len, Act *stage,
                                            int tid, int nthr)
{
    constexpr int per16 = 16 / (int)sizeof(Act); /* elements a 16-byte piece */
    constexpr int row_pieces = kRowK / per16;    /* pieces of a q or k row */
    constexpr int v_pieces = kSlice / per16;     /* pieces of the v slice */
    Act *sq = stage, *sk = stage + kChunk * kRowK, *sv = stage + 2 * kChunk * kRowK;
    if (src.async && src.rows_v == kSlice) {
        for (int i = tid; i < len * row_pieces; i += nthr) {
            const int r = i / row_pieces, c = (i % row_pieces) * per16;
            copy_async16(reinterpret_cast<uint4 *>(sq + r * kRowK + c), src.q + (c0 + r) * src.q_stride + c,
                         true);
            copy_async16(reinterpret_cast<uint4 *>(sk + r * kRowK + c), src.k + (c0 + r) * src.k_stride + c,
                         true);
        }
        for (int i = tid; i < len * v_pieces; i += nthr) {
            const int r = i / v_pieces, c = (i % v_pieces) * per16;
            copy_async16(reinterpret_cast<uint4 *>(sv + r * kSlice + c), src.v + (c0 + r) * src.v_stride + c,
                         true);
        }
    } else {
        for (int i = tid; i < len * kRowK; i += nthr) {
            const int r = i / kRowK, c = i % kRowK;
            sq[r * kRowK + c] = src.q[(c0 + r) * src.q_stride + c];
            sk[r * kRowK + c] = src.k[(c0 + r) * src.k_stride + c];
        }
        for (int i = tid; i < len * kSlice; i += nthr) {
            const int r = i / kSlice, c = i % kSlice;
            sv[r * kSlice + c] = c < src.rows_v ? src.v[(c0 + r) * src.v_stride + c] : from_float<Act>(0.0f);
        }
    }
    copy_async_commit();
}

/* Gate inputs of tokens 2 * lane and 2 * lane + 1 of the chunk at c0 (warp 0 only). */
struct pair_gates {
    gate_inputs x[2];
};
template <typename Act>
__device__ __forceinline__ pair_gates load_pair_gates(const gdn_problem &p, int64_t first, int64_t c0,
                                                      int len, int64_t hv)
{
    pair_gates pg;
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int j = 0; j < 2; j++) {
        const int t = 2 * lane + j;
        if (t < len)
            pg.x[j] = load_gate_inputs<Act>(p, first + c0 + t, hv);
        else
            pg.x[j] = gate_inputs{0.0f, 0.0f, 0.0f, 0.0f};
    }
    return pg;
}

/* The chunk's gates from the inputs warp 0 loaded (lane: tokens 2 lane, 2 lane + 1): cumulative
 * log-decays, e^{G_t}, e^{G_last - G_t} and beta; tokens past len decay by nothing, beta 0. */
template <typename Act>
__device__ __forceinline__ void chunk_gates(const gdn_problem &p, const pair_gates &gates, int len,
                                            float *cum, float *gam, float *dec, float *beta,
                                            float cum_scale = 1.0f)
{
    const int lane = threadIdx.x % 32;
    float lg[2], bt[2];
#pragma unroll
    for (int j = 0; j < 2; j++) {
        const bool real = 2 * lane + j < len;
        lg[j] =
            real ? (p.g ? gates.x[j].A_log : gdn_gate_log(gates.x[j].A_log, gates.x[j].a, gates.x[j].dt_bias))
                 : 0.0f;
        bt[j] = real ? gate_beta(p, gates.x[j]) : 0.0f;
    }
    float incl = lg[0] + lg[1];
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
        const float y = __shfl_up_sync(kFullMask, incl, o);
        if (lane >= o)
            incl += y;
    }
    const float last = __shfl_sync(kFullMask, incl, 31);
    const float G1 = incl, G0 = incl - lg[1];
    cum[2 * lane] = cum_scale * G0, cum[2 * lane + 1] = cum_scale * G1;
    gam[2 * lane] = expf(G0), gam[2 * lane + 1] = expf(G1);
    dec[2 * lane] = expf(last - G0), dec[2 * lane + 1] = expf(last - G1);
    beta[2 * lane] = bt[0], beta[2 * lane + 1] = bt[1];
}

/* ---- the kernel ------------------------------------------------------------------------------ */

/* 1 when sequence n is this kernel's (not left to the multi-token kernel of the same call):
 * more than GDN_MAX_TOKENS tokens, or invalid cu_seqlens (counted here), or any sequence when no
 * multi-token kernel runs beside this one. */
__device__ __forceinline__ bool chunked_owns(const gdn_problem &p, int64_t n)
{
    const int64_t T = gdn_seq_tokens(&p, n);
    return !(p.long_tokens > 0 && T >= 0 && T <= GDN_MAX_TOKENS);
}

/* The block's part of sequence n: its coordinates, tokens, slots and where its staging reads. */
template <typename Act> struct seq_part {
    block_coords bc;
    int64_t V, v0, T, first, read, write;
    int rows_v; /* state rows of this block's slices (fewer at the end of V) */
    stage_source<Act> src;
    __device__ int64_t chunks() const { return (T + kChunk - 1) / kChunk; }
    __device__ int chunk_len(int64_t ci) const
    {
        return (int)(T - ci * kChunk < kChunk ? T - ci * kChunk : kChunk);
    }
};

/* false when the block has nothing more to do for sequence n: no tokens; padding (its outputs
 * zeroed, no state); bad cu_seqlens or slots (counted for the error flag, nothing written). A
 * block holds `slices` consecutive slices of kSlice state rows (rows_v: all of them together). */
template <typename Act>
__device__ __forceinline__ bool open_sequence(const gdn_problem &p, int64_t n, seq_part<Act> &sp,
                                              int slices = 1)
{
    block_coords &bc = sp.bc;
    bc.n = n, bc.hv = blockIdx.y;
    bc.h = p.head_map == GDN_HEAD_MAP_TILED ? bc.hv % p.num_q_heads : bc.hv / (p.num_v_heads / p.num_q_heads);
    const int64_t V = p.head_dim_v, v0 = (int64_t)blockIdx.x * slices * kSlice;
    const int rows_v = (int)(V - v0 < slices * kSlice ? V - v0 : slices * kSlice);
    const int64_t T = gdn_seq_tokens(&p, bc.n), first = gdn_first_token_row(&p, bc.n);
    if (T < 0 || first < 0) {
        skip_bad_row(p);
        return false;
    }
    if (T == 0)
        return false;
    const int64_t read = gdn_read_slot(&p, bc.n), write = gdn_write_slot(&p, bc.n);
    if (read < 0) {
        for (int64_t i = threadIdx.x; i < T * rows_v; i += blockDim.x)
            store_elem<Act>(p.out, (first + i / rows_v) * p.out_stride + bc.hv * V + v0 + i % rows_v, 0.0f);
        return false;
    }
    if (read >= p.num_slots || write >= p.num_slots) {
        skip_bad_row(p);
        return false;
    }
    sp.V = V, sp.v0 = v0, sp.T = T, sp.first = first, sp.read = read, sp.write = write, sp.rows_v = rows_v;
    stage_source<Act> &src = sp.src;
    src.q = static_cast<const Act *>(p.q) + first * p.q_stride + bc.h * kRowK;
    src.k = static_cast<const Act *>(p.k) + first * p.k_stride + bc.h * kRowK;
    src.v = static_cast<const Act *>(p.v) + first * p.v_stride + bc.hv * V + v0;
    src.q_stride = p.q_stride, src.k_stride = p.k_stride, src.v_stride = p.v_stride;
    src.rows_v = rows_v;
    src.async = p.prefill_async != 0;
    return true;
}

/* Sequence n's tokens, chunk after chunk, for this block's value head and slice of rows. */
template <typename Act, typename St, bool PRECISE>
__device__ void chunked_sequence(const gdn_problem &p, int64_t n, float *sm)
{
    float *const Qs = sm + chunk_smem::q, *const Ks = sm + chunk_smem::k, *const Ss = sm + chunk_smem::s;
    float *const Am = sm + chunk_smem::a, *const Pm = sm + chunk_smem::pm;
    float *const Zt = sm + chunk_smem::zt, *const Ut = sm + chunk_smem::ut;
    float *const gam = sm + chunk_smem::gam, *const dec = sm + chunk_smem::dec,
                 *const cum = sm + chunk_smem::cum;
    float *const beta = sm + chunk_smem::beta;
    Act *const stage = reinterpret_cast<Act *>(sm + chunk_smem::floats);

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t4 = lane % 4; /* mma fragment coordinates */
    seq_part<Act> sp;
    if (!open_sequence<Act>(p, n, sp))
        return;
    const block_coords bc = sp.bc;
    const int64_t V = sp.V, v0 = sp.v0, T = sp.T, first = sp.first, read = sp.read, write = sp.write;
    const int rows_v = sp.rows_v;

    const stage_source<Act> &src = sp.src;
    const int len0 = (int)(T < kChunk ? T : kChunk);
    stage_chunk<Act>(src, 0, len0, stage, threadIdx.x, blockDim.x);
    pair_gates next_gates{};
    if (warp == 0)
        next_gates = load_pair_gates<Act>(p, first, 0, len0, bc.hv);

    /* the state slice, float32 in shared memory (zeros past V and without an initial state) */
    {
        const bool zero = gdn_zero_initial_state(&p, bc.n);
        const St *tile =
            static_cast<const St *>(p.state_pool) + gdn_tile_offset(&p, read, bc.hv) + v0 * kRowK;
        for (int i = threadIdx.x; i < kSlice * kRowK; i += blockDim.x) {
            const int r = i / kRowK, c = i % kRowK;
            Ss[r * kLdK + c] = (!zero && r < rows_v) ? to_float<St>(tile[i]) : 0.0f;
        }
    }
    const float scale = p.scale;

    for (int64_t c0 = 0; c0 < T; c0 += kChunk) {
        const int len = (int)(T - c0 < kChunk ? T - c0 : kChunk);
        copy_async_wait<0>();
        __syncthreads(); /* the stage holds this chunk; the last chunk's products are done */

        /* (1) normalised q, k rows; v into Z^T; gates (warp 0) */
        {
            const Act *sq = stage, *sk = stage + kChunk * kRowK, *sv = stage + 2 * kChunk * kRowK;
            /* 8 lanes a row, four rows a warp at a time, all 16 of a warp's rows unrolled so that
             * their shuffle reductions overlap (rows 0-63 are q, 64-127 k) */
            const int sub = lane % 8;
#pragma unroll
            for (int it = 0; it < 4; it++) {
                const int r = warp * 16 + it * 4 + lane / 8, tok = r % kChunk;
                const bool is_q = r < kChunk;
                float x[16];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const Act *row = (is_q ? sq : sk) + tok * kRowK + 32 * j + 4 * sub;
#pragma unroll
                    for (int i = 0; i < 4; i++)
                        x[4 * j + i] = tok < len ? to_float<Act>(row[i]) : 0.0f;
                }
                float f = is_q ? scale : 1.0f;
                if (p.qk_l2norm) {
                    float ss = 0.0f;
#pragma unroll
                    for (int i = 0; i < 16; i++)
                        ss += x[i] * x[i];
                    f *= inv_sqrt(row_sum<8>(ss) + GDN_L2NORM_EPS);
                }
#pragma unroll
                for (int j = 0; j < 4; j++)
                    *reinterpret_cast<float4 *>((is_q ? Qs : Ks) + tok * kLdK + 32 * j + 4 * sub) =
                        make_float4(f * x[4 * j], f * x[4 * j + 1], f * x[4 * j + 2], f * x[4 * j + 3]);
            }
            for (int i = threadIdx.x; i < kChunk * kSlice; i += blockDim.x) {
                const int tok = i / kSlice, col = i % kSlice;
                Zt[col * kLdC + tok] = tok < len ? to_float<Act>(sv[tok * kSlice + col]) : 0.0f;
            }
            if (warp == 0)
                chunk_gates<Act>(p, next_gates, len, cum, gam, dec, beta);
        }
        __syncthreads();

        /* the next chunk's activations and gates load while this one computes */
        if (c0 + kChunk < T) {
            const int next_len = (int)(T - c0 - kChunk < kChunk ? T - c0 - kChunk : kChunk);
            stage_chunk<Act>(src, c0 + kChunk, next_len, stage, threadIdx.x, blockDim.x);
            if (warp == 0)
                next_gates = load_pair_gates<Act>(p, first, c0 + kChunk, next_len, bc.hv);
        }

        /* (2) products over K */
        float o_acc[4][4]; /* warps 0-3: outputs, rows 16 mi.., columns 8 warp.. */
        /* the 40 Gram tiles, 5 a warp, unrolled (branch-free tile coordinates) so that their
         * mma chains interleave */
        static_assert(2 * kGramTiles % kChunkWarps == 0, "Gram tiles spread evenly");
#pragma unroll
        for (int j = 0; j < 2 * kGramTiles / kChunkWarps; j++) {
            const int tile = warp + kChunkWarps * j;
            const bool is_q = tile >= kGramTiles;
            const int i = is_q ? tile - kGramTiles : tile; /* row blocks hold 2, 4, 6, 8 tiles */
            const int mi = (i >= 2) + (i >= 6) + (i >= 12);
            const int nj = i - (mi == 0 ? 0 : mi == 1 ? 2 : mi == 2 ? 6 : 12);
            float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int kk = 0; kk < kRowK; kk += 16)
                mma<PRECISE>(acc, load_a<PRECISE>(is_q ? Qs : Ks, kLdK, 16 * mi, kk),
                             load_b_nk<PRECISE>(Ks, kLdK, 8 * nj, kk));
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int row = 16 * mi + g + (e >= 2 ? 8 : 0), col = 8 * nj + 2 * t4 + (e & 1);
                const float d = col <= row ? expf(cum[row] - cum[col]) : 0.0f;
                const float value = is_q ? d * acc[e] : (col < row ? beta[row] * d * acc[e] : 0.0f);
                (is_q ? Pm : Am)[row * kLdC + col] = value;
            }
        }
        {
            const bool kv = warp >= 4; /* warps 4-7: K S^T into Z; 0-3: Q S^T into the outputs */
            const int nj = warp % 4;
#pragma unroll
            for (int mi = 0; mi < 4; mi++) {
                float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int kk = 0; kk < kRowK; kk += 16)
                    mma<PRECISE>(acc, load_a<PRECISE>(kv ? Ks : Qs, kLdK, 16 * mi, kk),
                                 load_b_nk<PRECISE>(Ss, kLdK, 8 * nj, kk));
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int row = 16 * mi + g + (e >= 2 ? 8 : 0), col = 8 * nj + 2 * t4 + (e & 1);
                    if (kv) {
                        float *z = Zt + col * kLdC + row;
                        *z = beta[row] * (*z - gam[row] * acc[e]);
                    } else {
                        o_acc[mi][e] = gam[row] * acc[e];
                    }
                }
            }
        }
        __syncthreads();

        /* (3) the diagonal 16 x 16 blocks of I + A inverted in place (warps 0-3, lanes 0-15) */
        if (warp < 4) {
            const int j = lane % 16, b0 = 16 * warp;
            float x[16];
#pragma unroll
            for (int i = 0; i < 16; i++) {
                const float *arow = Am + (b0 + i) * kLdC + b0;
                float part[4] = {i == j ? 1.0f : 0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int s = 0; s < i; s++)
                    part[s % 4] -= arow[s] * x[s];
                x[i] = (part[0] + part[1]) + (part[2] + part[3]);
            }
            __syncwarp();
            if (lane < 16) {
#pragma unroll
                for (int i = 0; i < 16; i++)
                    Am[(b0 + i) * kLdC + b0 + j] = x[i];
            }
        }
        __syncthreads();

        /* (4) U = (I + A)^{-1} Z by blocks of 16 tokens; warp w (0-3) owns columns 8w.. of U */
        if (warp < 4) {
            const int n0 = 8 * warp;
            for (int b = 0; b < 4; b++) {
                const int r0 = 16 * b;
                float acc[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int row = r0 + g + (e >= 2 ? 8 : 0), col = n0 + 2 * t4 + (e & 1);
                    acc[e] = Zt[col * kLdC + row];
                }
                for (int kb = 0; kb < b; kb++)
                    mma<PRECISE>(acc, load_a<PRECISE>(Am, kLdC, r0, 16 * kb, -1.0f),
                                 load_b_nk<PRECISE>(Ut, kLdC, n0, 16 * kb));
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int row = r0 + g + (e >= 2 ? 8 : 0), col = n0 + 2 * t4 + (e & 1);
                    Ut[col * kLdC + row] = acc[e];
                }
                __syncwarp();
                float u[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                mma<PRECISE>(u, load_a<PRECISE>(Am, kLdC, r0, r0), load_b_nk<PRECISE>(Ut, kLdC, n0, r0));
                __syncwarp();
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int row = r0 + g + (e >= 2 ? 8 : 0), col = n0 + 2 * t4 + (e & 1);
                    Ut[col * kLdC + row] = u[e];
                }
                __syncwarp();
            }
        }
        __syncthreads();

        /* (5) outputs (warps 0-3) and the state update (all warps) */
        if (warp < 4) {
            const int n0 = 8 * warp;
#pragma unroll
            for (int mi = 0; mi < 4; mi++) {
                for (int kb = 0; kb <= mi; kb++)
                    mma<PRECISE>(o_acc[mi], load_a<PRECISE>(Pm, kLdC, 16 * mi, 16 * kb),
                                 load_b_nk<PRECISE>(Ut, kLdC, n0, 16 * kb));
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int row = 16 * mi + g + (e >= 2 ? 8 : 0), col = n0 + 2 * t4 + (e & 1);
                    if (row < len && col < rows_v)
                        store_elem<Act>(p.out, (first + c0 + row) * p.out_stride + bc.hv * V + v0 + col,
                                        o_acc[mi][e]);
                }
            }
        }
        {
            /* S' = e^{G_last} S + U^T (dec * K): 2 x 16 tiles of 16 x 8; warps 0-3 take 2, 4-7 take 6 */
            const float keep = gam[kChunk - 1];
            const int begin = warp < 4 ? 2 * warp : 8 + 6 * (warp - 4), count = warp < 4 ? 2 : 6;
#pragma unroll
            for (int j = 0; j < 6; j++) {
                if (j >= count)
                    break;
                const int tile = begin + j, mv = tile / 16, nk = tile % 16;
                float acc[4];
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int row = 16 * mv + g + (e >= 2 ? 8 : 0), col = 8 * nk + 2 * t4 + (e & 1);
                    acc[e] = keep * Ss[row * kLdK + col];
                }
#pragma unroll
                for (int kb = 0; kb < kChunk; kb += 16)
                    mma<PRECISE>(acc, load_a<PRECISE>(Ut, kLdC, 16 * mv, kb),
                                 load_b_kn<PRECISE>(Ks, kLdK, 8 * nk, kb, dec));
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int row = 16 * mv + g + (e >= 2 ? 8 : 0), col = 8 * nk + 2 * t4 + (e & 1);
                    Ss[row * kLdK + col] = acc[e];
                }
            }
        }
    }
    __syncthreads();

    if (write >= 0) {
        St *tile = static_cast<St *>(p.state_pool) + gdn_tile_offset(&p, write, bc.hv) + v0 * kRowK;
        for (int i = threadIdx.x; i < rows_v * kRowK; i += blockDim.x)
            tile[i] = from_float<St>(Ss[(i / kRowK) * kLdK + i % kRowK]);
    }
    __syncthreads(); /* the next sequence reuses the shared memory */
}

/* ---- one-term products: bf16 operands in shared memory, fragments by ldmatrix ------------------
 *
 * The path above converts float32 shared memory into fragments for every mma and reloads each
 * operand once per tile: on an H100 (e90d3ac, ncu of 1x4096 qwen3-next) its shared-memory
 * wavefronts were ~13.8 thousand a chunk and a block, about 7 us of the ~13 us a chunk took.
 * With one bf16 term a product the operands can live in shared memory as bf16 (what the mma
 * reads anyway), an ldmatrix delivers a whole fragment, and each warp keeps the operand it
 * shares across tiles in registers: ~2.5 thousand wavefronts a chunk.
 *
 * Work of the 8 warps in a chunk:
 *   warps 0, 1: K K^T row blocks {0, 3} and {1, 2} (10 tiles each), then invert their two
 *               diagonal blocks (no block barrier in between);
 *   warps 2, 3: Q K^T, the same row blocks;
 *   warps 4-7:  K S^T (into Z) and Q S^T (outputs' first term, kept in registers) for row
 *               block warp - 4, all 32 columns;
 *   then the block solve (warps 0-3, 8 columns each), then the outputs (warps 4-7, the rows
 *   of their first term) beside the state update (all warps). */
typedef __nv_bfloat16 bf16;
constexpr int kLdB = kRowK + 8;  /* bf16 between rows of Qb, Kb, Sb: 272 B, ldmatrix rows on distinct banks */
constexpr int kLdP = kChunk + 8; /* bf16 between rows of Ab, Pb: 144 B */
constexpr int kLdU = kSlice + 8; /* bf16 between rows of Ub, Udb (80 B); floats between rows of Zf */
constexpr int kLdD = 16 + 4;     /* floats between rows of a diagonal block */

/* Byte offsets. */
struct tc1_smem {
    static constexpr int qb = 0;                      /* [C][kLdB] normalised, scaled q */
    static constexpr int kb = qb + kChunk * kLdB * 2; /* [C][kLdB] normalised k */
    static constexpr int sb = kb + kChunk * kLdB * 2; /* [kSlice][kLdB] the state slice as bf16 */
    static constexpr int sf = sb + kSlice * kLdB * 2; /* [kSlice][kLdK] the state slice, float32 */
    static constexpr int ab =
        sf + kSlice * kLdK * 4; /* [C][kLdP] A below the diagonal blocks, inverses on them */
    static constexpr int pb = ab + kChunk * kLdP * 2;      /* [C][kLdP] e(t,s) q_t.k_s, s <= t */
    static constexpr int ub = pb + kChunk * kLdP * 2;      /* [C][kLdU] U */
    static constexpr int udb = ub + kChunk * kLdU * 2;     /* [C][kLdU] U scaled by e^{G_last - G_t} */
    static constexpr int zf = udb + kChunk * kLdU * 2;     /* [C][kLdU] Z, float32 */
    static constexpr int diag = zf + kChunk * kLdU * 4;    /* [4][16][kLdD] A's diagonal blocks, float32 */
    static constexpr int gates = diag + 4 * 16 * kLdD * 4; /* gam, dec, cum, beta: [C] floats each */
    static constexpr int stage = gates + 4 * kChunk * 4;
    static constexpr int bytes(int act) { return stage + chunk_smem::stage_bytes(act); }
};
static_assert(tc1_smem::stage % 16 == 0 && tc1_smem::sf % 16 == 0 && tc1_smem::zf % 16 == 0,
              "16-byte aligned parts");

__device__ __forceinline__ unsigned smem_u32(const void *ptr)
{
    return (unsigned)__cvta_generic_to_shared(ptr);
}
/* The memory clobbers keep plain shared stores before a __syncwarp ahead of the ldmatrix. */
__device__ __forceinline__ void ldsm_x4(unsigned *r, const bf16 *ptr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(ptr))
                 : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(unsigned *r, const bf16 *ptr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(ptr))
                 : "memory");
}
__device__ __forceinline__ void ldsm_x2_t(unsigned *r, const bf16 *ptr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(ptr))
                 : "memory");
}

/* Where lane l points its ldmatrix for the fragments of mma.m16n8k16 (rows r0.., columns c0..):
 * A (16 x 16) stored row-major; two B tiles (16 x 16: n0..n0+15) stored n-major (rows are n);
 * two B tiles stored k-major (rows are k, .trans); A stored column-major (rows are c, .trans);
 * one B tile stored k-major (x2, .trans). */
__device__ __forceinline__ const bf16 *frag_a_rows(const bf16 *base, int ld, int r0, int c0)
{
    const int l = threadIdx.x % 32;
    return base + (r0 + l % 16) * ld + c0 + 8 * (l / 16);
}
__device__ __forceinline__ const bf16 *frag_b2_nk(const bf16 *base, int ld, int n0, int k0)
{
    const int l = threadIdx.x % 32;
    return base + (n0 + l % 8 + 8 * (l / 16)) * ld + k0 + 8 * ((l / 8) % 2);
}
__device__ __forceinline__ const bf16 *frag_b2_kn(const bf16 *base, int ld, int n0, int k0)
{
    const int l = threadIdx.x % 32;
    return base + (k0 + l % 8 + 8 * ((l / 8) % 2)) * ld + n0 + 8 * (l / 16);
}
__device__ __forceinline__ const bf16 *frag_a_cols(const bf16 *base, int ld, int r0, int c0)
{
    const int l = threadIdx.x % 32;
    return base + (c0 + l % 8 + 8 * (l / 16)) * ld + r0 + 8 * ((l / 8) % 2);
}
__device__ __forceinline__ const bf16 *frag_b1_kn(const bf16 *base, int ld, int n0, int k0)
{
    return base + (k0 + threadIdx.x % 16) * ld + n0;
}

__device__ __forceinline__ void store_bf16_pair(bf16 *dst, float x0, float x1)
{
    *reinterpret_cast<unsigned *>(dst) = pack_bf16(x0, x1);
}

struct tc1_views {
    bf16 *qb, *kb, *sb, *ab, *pb, *ub, *udb;
    float *sf, *zf, *diag, *gam, *dec, *cum, *beta;
};

/* (I + A_bb)^{-1} of diagonal blocks MA (lanes 0-15) and MB (lanes 16-31) of diag into inv's
 * diagonal blocks, by forward substitution with lane = column; a block's rows are read as float4
 * (one broadcast load for four products). The warp wrote diag just before. */
template <int MA, int MB> __device__ __forceinline__ void invert_diagonal_pair(const float *diag, bf16 *inv)
{
    const int lane = threadIdx.x % 32;
    __syncwarp();
    const int blk = lane < 16 ? MA : MB, j = lane % 16;
    const float *D = diag + blk * 16 * kLdD;
    float x[16];
#pragma unroll
    for (int i = 0; i < 16; i++) {
        float part[4] = {i == j ? 1.0f : 0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int c4 = 0; c4 < i; c4 += 4) {
            const float4 d = *reinterpret_cast<const float4 *>(D + i * kLdD + c4);
            part[0] -= d.x * x[c4];
            if (c4 + 1 < i)
                part[1] -= d.y * x[c4 + 1];
            if (c4 + 2 < i)
                part[2] -= d.z * x[c4 + 2];
            if (c4 + 3 < i)
                part[3] -= d.w * x[c4 + 3];
        }
        x[i] = (part[0] + part[1]) + (part[2] + part[3]);
    }
#pragma unroll
    for (int i = 0; i < 16; i++)
        inv[(16 * blk + i) * kLdP + 16 * blk + j] = __float2bfloat16_rn(x[i]);
}

/* What the Gram row blocks read and write: the tc1 path keeps A and its diagonal inverses in
 * one matrix (ab == inv); the pipelined path keeps A private to the local warps and hands the
 * inverses over in T. */
struct gram_views {
    const bf16 *qb, *kb;
    const float *cum, *beta;
    bf16 *ab, *inv, *pb;
    float *diag;
};

/* Row blocks MA and MB of K K^T (into A: strictly lower, beta and decays applied; the diagonal
 * blocks as float32 and then inverted here) or of Q K^T (into P, decays applied). */
template <int MA, int MB> __device__ __forceinline__ void gram_pair(const gram_views &s, bool is_q)
{
    constexpr int NA = 2 * MA + 2, NB = 2 * MB + 2;
    static_assert(NA <= NB, "the first block has fewer tiles");
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const bf16 *X = is_q ? s.qb : s.kb;
    float acc_a[NA][4], acc_b[NB][4];
#pragma unroll
    for (int e = 0; e < 4; e++) {
#pragma unroll
        for (int j = 0; j < NA; j++)
            acc_a[j][e] = 0.0f;
#pragma unroll
        for (int j = 0; j < NB; j++)
            acc_b[j][e] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < kRowK; kk += 16) {
        unsigned a0[4], a1[4];
        ldsm_x4(a0, frag_a_rows(X, kLdB, 16 * MA, kk));
        ldsm_x4(a1, frag_a_rows(X, kLdB, 16 * MB, kk));
#pragma unroll
        for (int pr = 0; pr < NB / 2; pr++) {
            unsigned b[4];
            ldsm_x4(b, frag_b2_nk(s.kb, kLdB, 16 * pr, kk));
            mma_bf16(acc_b[2 * pr], a1, b);
            mma_bf16(acc_b[2 * pr + 1], a1, b + 2);
            if (2 * pr < NA) {
                mma_bf16(acc_a[2 * pr], a0, b);
                mma_bf16(acc_a[2 * pr + 1], a0, b + 2);
            }
        }
    }
    /* __expf: the exponent is <= 0 and the products are bf16, so its ~2 ulp do not show */
    auto epilogue = [&](int mi, int nj, const float *acc) {
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int row = 16 * mi + g + 8 * half, col = 8 * nj + 2 * t4;
            float v[2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int c = col + i;
                const float d = c <= row ? __expf(s.cum[row] - s.cum[c]) : 0.0f;
                v[i] = is_q ? d * acc[2 * half + i] : (c < row ? s.beta[row] * d * acc[2 * half + i] : 0.0f);
            }
            if (is_q)
                store_bf16_pair(s.pb + row * kLdP + col, v[0], v[1]);
            else if (nj >= 2 * mi)
                *reinterpret_cast<float2 *>(s.diag + (mi * 16 + row - 16 * mi) * kLdD + col - 16 * mi) =
                    make_float2(v[0], v[1]);
            else
                store_bf16_pair(s.ab + row * kLdP + col, v[0], v[1]);
        }
    };
#pragma unroll
    for (int j = 0; j < NA; j++)
        epilogue(MA, j, acc_a[j]);
#pragma unroll
    for (int j = 0; j < NB; j++)
        epilogue(MB, j, acc_b[j]);
    if (!is_q) {
        invert_diagonal_pair<MA, MB>(s.diag, s.inv);
    }
}

/* acc += (U dec)^T K for 2 * PAIRS tiles of 16 x 8: rows 16 mv.., columns 8 nk0.. of the state */
template <int PAIRS>
__device__ __forceinline__ void add_update_products(float (&acc)[2 * PAIRS][4], const bf16 *udb,
                                                    const bf16 *kb, int mv, int nk0)
{
#pragma unroll
    for (int k0 = 0; k0 < kChunk; k0 += 16) {
        unsigned a[4];
        ldsm_x4_t(a, frag_a_cols(udb, kLdU, 16 * mv, k0));
#pragma unroll
        for (int pr = 0; pr < PAIRS; pr++) {
            unsigned b[4];
            ldsm_x4_t(b, frag_b2_kn(kb, kLdB, 8 * (nk0 + 2 * pr), k0));
            mma_bf16(acc[2 * pr], a, b);
            mma_bf16(acc[2 * pr + 1], a, b + 2);
        }
    }
}

/* S' = keep S + (U dec)^T K for 2 * PAIRS tiles of 16 x 8: rows 16 mv.., columns 8 nk0.. */
template <int PAIRS>
__device__ __forceinline__ void state_tiles(const bf16 *udb, const bf16 *kb, float *sf, bf16 *sb, int mv,
                                            int nk0, float keep)
{
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    float acc[2 * PAIRS][4];
#pragma unroll
    for (int j = 0; j < 2 * PAIRS; j++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const float2 x = *reinterpret_cast<const float2 *>(sf + (16 * mv + g + 8 * half) * kLdK +
                                                               8 * (nk0 + j) + 2 * t4);
            acc[j][2 * half] = keep * x.x, acc[j][2 * half + 1] = keep * x.y;
        }
    add_update_products<PAIRS>(acc, udb, kb, mv, nk0);
#pragma unroll
    for (int j = 0; j < 2 * PAIRS; j++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int row = 16 * mv + g + 8 * half, col = 8 * (nk0 + j) + 2 * t4;
            *reinterpret_cast<float2 *>(sf + row * kLdK + col) =
                make_float2(acc[j][2 * half], acc[j][2 * half + 1]);
            store_bf16_pair(sb + row * kLdB + col, acc[j][2 * half], acc[j][2 * half + 1]);
        }
}

/* The outputs' second term P U of row block mi onto the first term in o_acc, then the outputs
 * of tokens < len and columns < rows_v: out row row0 + token, column col0 + column. */
template <typename Act>
__device__ __forceinline__ void finish_outputs(const gdn_problem &p, const bf16 *pb, const bf16 *ub,
                                               float (&o_acc)[4][4], int mi, int len, int rows_v,
                                               int64_t row0, int64_t col0, bool pairs = false)
{
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    for (int kb = 0; kb <= mi; kb++) {
        unsigned a[4];
        ldsm_x4(a, frag_a_rows(pb, kLdP, 16 * mi, 16 * kb));
#pragma unroll
        for (int pr = 0; pr < 2; pr++) {
            unsigned b[4];
            ldsm_x4_t(b, frag_b2_kn(ub, kLdU, 16 * pr, 16 * kb));
            mma_bf16(o_acc[2 * pr], a, b);
            mma_bf16(o_acc[2 * pr + 1], a, b + 2);
        }
    }
    if constexpr (std::is_same<Act, bf16>::value) {
        if (pairs) { /* a whole tile of rows and columns, bf16 pairs 4-byte aligned: one store a pair */
            bf16 *const base =
                static_cast<bf16 *>(p.out) + (row0 + 16 * mi + g) * p.out_stride + col0 + 2 * t4;
#pragma unroll
            for (int half = 0; half < 2; half++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    store_bf16_pair(base + 8 * half * p.out_stride + 8 * j, o_acc[j][2 * half],
                                    o_acc[j][2 * half + 1]);
            return;
        }
    }
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int row = 16 * mi + g + (e >= 2 ? 8 : 0), col = 8 * j + 2 * t4 + (e & 1);
            if (row < len && col < rows_v)
                store_elem<Act>(p.out, (row0 + row) * p.out_stride + col0 + col, o_acc[j][e]);
        }
}

/* Four consecutive activations as floats (one 8- or 16-byte shared load). */
template <typename Act> __device__ __forceinline__ void load4(const Act *src, float *x)
{
    if constexpr (sizeof(Act) == 4) {
        const float4 v = *reinterpret_cast<const float4 *>(src);
        x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
    } else {
        const uint2 w = *reinterpret_cast<const uint2 *>(src);
        Act h[4];
        memcpy(h, &w, sizeof w);
#pragma unroll
        for (int i = 0; i < 4; i++)
            x[i] = to_float<Act>(h[i]);
    }
}

/* q and k rows of the staged chunk, normalised (and q scaled), as bf16 rows of qb and kb: rows
 * 4 ITERS warp.. of the 2C (q then k). The 8 lanes of a row start at different quarters of it,
 * so that the four rows a warp reads at once fall on different banks. */
template <typename Act, int ITERS>
__device__ __forceinline__ void normalise_qk(const Act *stage, bf16 *qb, bf16 *kb, int len, float scale,
                                             bool l2norm)
{
    const Act *sq = stage, *sk = stage + kChunk * kRowK;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, sub = lane % 8;
#pragma unroll
    for (int it = 0; it < ITERS; it++) {
        const int r = warp * 4 * ITERS + it * 4 + lane / 8, tok = r % kChunk;
        const bool is_q = r < kChunk;
        float x[16];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int col = 32 * ((j + lane / 8) % 4) + 4 * sub;
            if (tok < len)
                load4<Act>((is_q ? sq : sk) + tok * kRowK + col, x + 4 * j);
            else
                x[4 * j] = x[4 * j + 1] = x[4 * j + 2] = x[4 * j + 3] = 0.0f;
        }
        float f = is_q ? scale : 1.0f;
        if (l2norm) {
            float ss = 0.0f;
#pragma unroll
            for (int i = 0; i < 16; i++)
                ss += x[i] * x[i];
            f *= inv_sqrt(row_sum<8>(ss) + GDN_L2NORM_EPS);
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int col = 32 * ((j + lane / 8) % 4) + 4 * sub;
            uint2 w;
            w.x = pack_bf16(f * x[4 * j], f * x[4 * j + 1]);
            w.y = pack_bf16(f * x[4 * j + 2], f * x[4 * j + 3]);
            *reinterpret_cast<uint2 *>((is_q ? qb : kb) + tok * kLdB + col) = w;
        }
    }
}

template <typename Act, typename St>
__device__ void chunked_sequence_tc1(const gdn_problem &p, int64_t n, unsigned char *smb)
{
    tc1_views s;
    s.qb = reinterpret_cast<bf16 *>(smb + tc1_smem::qb), s.kb = reinterpret_cast<bf16 *>(smb + tc1_smem::kb);
    s.sb = reinterpret_cast<bf16 *>(smb + tc1_smem::sb), s.ab = reinterpret_cast<bf16 *>(smb + tc1_smem::ab);
    s.pb = reinterpret_cast<bf16 *>(smb + tc1_smem::pb), s.ub = reinterpret_cast<bf16 *>(smb + tc1_smem::ub);
    s.udb = reinterpret_cast<bf16 *>(smb + tc1_smem::udb);
    s.sf = reinterpret_cast<float *>(smb + tc1_smem::sf),
    s.zf = reinterpret_cast<float *>(smb + tc1_smem::zf);
    s.diag = reinterpret_cast<float *>(smb + tc1_smem::diag);
    s.gam = reinterpret_cast<float *>(smb + tc1_smem::gates), s.dec = s.gam + kChunk, s.cum = s.dec + kChunk;
    s.beta = s.cum + kChunk;
    Act *const stage = reinterpret_cast<Act *>(smb + tc1_smem::stage);

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t4 = lane % 4;
    seq_part<Act> sp;
    if (!open_sequence<Act>(p, n, sp))
        return;
    const block_coords bc = sp.bc;
    const int64_t V = sp.V, v0 = sp.v0, T = sp.T, first = sp.first, read = sp.read, write = sp.write;
    const int rows_v = sp.rows_v;

    const stage_source<Act> &src = sp.src;
    const int len0 = (int)(T < kChunk ? T : kChunk);
    stage_chunk<Act>(src, 0, len0, stage, threadIdx.x, blockDim.x);
    pair_gates next_gates{};
    if (warp == 0)
        next_gates = load_pair_gates<Act>(p, first, 0, len0, bc.hv);

    {
        const bool zero = gdn_zero_initial_state(&p, bc.n);
        const St *tile =
            static_cast<const St *>(p.state_pool) + gdn_tile_offset(&p, read, bc.hv) + v0 * kRowK;
        for (int i = threadIdx.x; i < kSlice * kRowK; i += blockDim.x) {
            const int r = i / kRowK, c = i % kRowK;
            const float x = (!zero && r < rows_v) ? to_float<St>(tile[i]) : 0.0f;
            s.sf[r * kLdK + c] = x;
            s.sb[r * kLdB + c] = __float2bfloat16_rn(x);
        }
    }
    const float scale = p.scale;

    for (int64_t c0 = 0; c0 < T; c0 += kChunk) {
        const int len = (int)(T - c0 < kChunk ? T - c0 : kChunk);
        copy_async_wait<0>();
        __syncthreads(); /* the stage holds this chunk; the last chunk's products are done */

        /* (1) normalised q, k rows as bf16, v into Z, the chunk's gates */
        {
            normalise_qk<Act, 4>(stage, s.qb, s.kb, len, scale, p.qk_l2norm != 0);
            const Act *sv = stage + 2 * kChunk * kRowK;
            for (int i = threadIdx.x; i < kChunk * kSlice; i += blockDim.x) {
                const int tok = i / kSlice, col = i % kSlice;
                s.zf[tok * kLdU + col] = tok < len ? to_float<Act>(sv[tok * kSlice + col]) : 0.0f;
            }
            if (warp == 0)
                chunk_gates<Act>(p, next_gates, len, s.cum, s.gam, s.dec, s.beta);
        }
        __syncthreads();

        if (c0 + kChunk < T) {
            const int next_len = (int)(T - c0 - kChunk < kChunk ? T - c0 - kChunk : kChunk);
            stage_chunk<Act>(src, c0 + kChunk, next_len, stage, threadIdx.x, blockDim.x);
            if (warp == 0)
                next_gates = load_pair_gates<Act>(p, first, c0 + kChunk, next_len, bc.hv);
        }

        /* (2) Gram row blocks and inverses (warps 0-3); K S^T and Q S^T (warps 4-7) */
        float o_acc[4][4];
        if (warp < 4) {
            const gram_views gv{s.qb, s.kb, s.cum, s.beta, s.ab, s.ab, s.pb, s.diag};
            if (warp % 2 == 0)
                gram_pair<0, 3>(gv, warp >= 2);
            else
                gram_pair<1, 2>(gv, warp >= 2);
        } else {
            const int mi = warp - 4;
            float acc_k[4][4] = {};
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    o_acc[j][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < kRowK; kk += 16) {
                unsigned ak[4], aq[4];
                ldsm_x4(ak, frag_a_rows(s.kb, kLdB, 16 * mi, kk));
                ldsm_x4(aq, frag_a_rows(s.qb, kLdB, 16 * mi, kk));
#pragma unroll
                for (int pr = 0; pr < 2; pr++) {
                    unsigned b[4];
                    ldsm_x4(b, frag_b2_nk(s.sb, kLdB, 16 * pr, kk));
                    mma_bf16(acc_k[2 * pr], ak, b);
                    mma_bf16(acc_k[2 * pr + 1], ak, b + 2);
                    mma_bf16(o_acc[2 * pr], aq, b);
                    mma_bf16(o_acc[2 * pr + 1], aq, b + 2);
                }
            }
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int half = 0; half < 2; half++) {
                    const int row = 16 * mi + g + 8 * half, col = 8 * j + 2 * t4;
                    const float gm = s.gam[row], bt = s.beta[row];
                    float2 *z = reinterpret_cast<float2 *>(s.zf + row * kLdU + col);
                    const float2 zv = *z;
                    *z = make_float2(bt * (zv.x - gm * acc_k[j][2 * half]),
                                     bt * (zv.y - gm * acc_k[j][2 * half + 1]));
                    o_acc[j][2 * half] *= gm, o_acc[j][2 * half + 1] *= gm;
                }
        }
        __syncthreads();

        /* (3) U = (I + A)^{-1} Z by blocks of 16 tokens; warp w (0-3) owns columns 8w.. */
        if (warp < 4) {
            const int n0 = 8 * warp;
            for (int b = 0; b < 4; b++) {
                const int r0 = 16 * b;
                float acc[4];
#pragma unroll
                for (int half = 0; half < 2; half++) {
                    const float2 z =
                        *reinterpret_cast<const float2 *>(s.zf + (r0 + g + 8 * half) * kLdU + n0 + 2 * t4);
                    acc[2 * half] = z.x, acc[2 * half + 1] = z.y;
                }
                for (int kb = 0; kb < b; kb++) {
                    unsigned a[4], bb[2];
                    ldsm_x4(a, frag_a_rows(s.ab, kLdP, r0, 16 * kb));
#pragma unroll
                    for (int i = 0; i < 4; i++)
                        a[i] ^= 0x80008000u; /* -A */
                    ldsm_x2_t(bb, frag_b1_kn(s.ub, kLdU, n0, 16 * kb));
                    mma_bf16(acc, a, bb);
                }
#pragma unroll
                for (int half = 0; half < 2; half++)
                    store_bf16_pair(s.ub + (r0 + g + 8 * half) * kLdU + n0 + 2 * t4, acc[2 * half],
                                    acc[2 * half + 1]);
                __syncwarp();
                unsigned a[4], bb[2];
                ldsm_x4(a, frag_a_rows(s.ab, kLdP, r0, r0));
                ldsm_x2_t(bb, frag_b1_kn(s.ub, kLdU, n0, r0));
                float u[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                mma_bf16(u, a, bb);
                __syncwarp();
#pragma unroll
                for (int half = 0; half < 2; half++) {
                    const int row = r0 + g + 8 * half, col = n0 + 2 * t4;
                    store_bf16_pair(s.ub + row * kLdU + col, u[2 * half], u[2 * half + 1]);
                    store_bf16_pair(s.udb + row * kLdU + col, u[2 * half] * s.dec[row],
                                    u[2 * half + 1] * s.dec[row]);
                }
                __syncwarp();
            }
        }
        __syncthreads();

        /* (4) outputs (warps 4-7) beside the state update (all warps) */
        if (warp >= 4) {
            const int mi = warp - 4;
            finish_outputs<Act>(p, s.pb, s.ub, o_acc, mi, len, rows_v, first + c0, bc.hv * V + v0);
        }
        {
            const float keep = s.gam[kChunk - 1];
            if (warp < 4)
                state_tiles<3>(s.udb, s.kb, s.sf, s.sb, warp / 2, 6 * (warp % 2), keep);
            else
                state_tiles<1>(s.udb, s.kb, s.sf, s.sb, (warp - 4) / 2, 12 + 2 * (warp % 2), keep);
        }
    }
    __syncthreads();

    if (write >= 0) {
        St *tile = static_cast<St *>(p.state_pool) + gdn_tile_offset(&p, write, bc.hv) + v0 * kRowK;
        for (int i = threadIdx.x; i < rows_v * kRowK; i += blockDim.x)
            tile[i] = from_float<St>(s.sf[(i / kRowK) * kLdK + i % kRowK]);
    }
    __syncthreads(); /* the next sequence reuses the shared memory */
}

/* ---- one term, pipelined: the chunk-local work of chunk c + 1 beside the state work of c ------ */

/*
 * The phase-by-phase path (tc1) runs a chunk's steps one after another with the whole block:
 * ~9 us a chunk on an H100 (7ce2851) for ~800 mma that need ~1 us. ncu of a first pipelined
 * version (a4b355d, H100) showed why: the block issues ~12.6 thousand warp instructions a chunk
 * at 0.75 a cycle (two warps a scheduler, each waiting ~10 cycles an instruction), and the most
 * of them were elementwise work, not mma: normalising the q and k rows (a third of them) and
 * the Gram epilogues. So this path
 *   - never normalises a row: q and k reach the mma raw (bf16 activations only), their squared
 *     norms come from the Gram diagonals (K K^T's own, and Q Q^T's two diagonal tiles), and the
 *     norms fold into the per-row and per-column factors the epilogues apply anyway (rq, rk);
 *   - makes everything that depends on the chunk alone (the gates, Gram matrices, A's diagonal
 *     inverses, T = (I + A)^{-1} by column blocks) one chunk ahead in 4 local warps, beside
 *     4 state warps doing only what needs the state: K S^T and Q S^T, Z, U = T Z (no serial
 *     solve), P U, the outputs and the state update;
 *   - keeps the float32 state in the state warps' registers (a warp owns 8 tiles of 16 x 8).
 * Three chunk buffers: the state warps read chunk c, the local warps build c + 1, and cp.async
 * fills c + 2. Named barriers hand a buffer over: FULL[b] (the local warps arrive, the state
 * warps wait) and EMPTY[b] (the other way); LOCAL and STATE order each group's own steps.
 */
constexpr int kBarLocal = 1, kBarState = 2; /* named barriers of the two groups */
constexpr int kBuffers = 3;                 /* (use_of selects among three) */
constexpr int kGroupThreads = 128;
constexpr int kLdV = kSlice + 8; /* bf16 between rows of the raw v slice: 80 B */

__device__ __forceinline__ void named_sync(int id, int threads)
{
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

/* The hand-over between the groups goes through mbarriers (each thread's arrival releases its own
 * writes; compute-sanitizer's racecheck follows them, where it flagged every bar.arrive hand-over
 * of a4b355d and 0c3740a as a race). */
__device__ __forceinline__ void mbar_init(uint64_t *bar, unsigned count)
{
    asm volatile("mbarrier.init.shared.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t *bar)
{
    asm volatile("{\n\t.reg .b64 state;\n\tmbarrier.arrive.shared.b64 state, [%0];\n\t}" ::"r"(smem_u32(bar))
                 : "memory");
}
/* Until the phase of this parity has completed (try_wait, which may suspend the thread, from
 * sm_90; a test_wait loop before). */
__device__ __forceinline__ void mbar_wait(uint64_t *bar, unsigned parity)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("{\n\t.reg .pred done;\n"
                 "WAIT:\n\t"
                 "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n\t"
                 "@!done bra WAIT;\n\t}" ::"r"(smem_u32(bar)),
                 "r"(parity)
                 : "memory");
#else
    asm volatile("{\n\t.reg .pred done;\n"
                 "WAIT:\n\t"
                 "mbarrier.test_wait.parity.shared.b64 done, [%0], %1;\n\t"
                 "@!done bra WAIT;\n\t}" ::"r"(smem_u32(bar)),
                 "r"(parity)
                 : "memory");
#endif
}

/* The bulk copy of a record (GDN_PREFILL_BULK): one thread arms the buffer's mbarrier for `bytes`
 * and starts one cp.async.bulk of them (the copy engine's, not 1232 16-byte cp.async spread over
 * the warps); the phase completes when they have landed. sm_90. */
__device__ __forceinline__ void bulk_copy_armed(void *dst, const void *src, unsigned bytes, uint64_t *bar)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("{\n\t.reg .b64 state;\n\t"
                 "mbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n\t}" ::"r"(smem_u32(bar)),
                 "r"(bytes)
                 : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
            smem_u32(dst)),
        "l"(src), "r"(bytes), "r"(smem_u32(bar))
        : "memory");
#else
    (void)dst, (void)src, (void)bytes, (void)bar;
    __trap(); /* (the host selects the bulk path on compute capability 9.0 only) */
#endif
}
/* The bulk path's mbarriers, one a chunk buffer, initialised and made visible to the copy engine
 * (a block barrier must follow before the first copy). */
__device__ __forceinline__ void bulk_bars_init(uint64_t *bars, int count)
{
    if ((int)threadIdx.x < count)
        mbar_init(bars + threadIdx.x, 1);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}

/* Until buffer b's record has landed; phase holds the parity each buffer waits for next (one bit a
 * buffer, kept across the sequences a block walks). */
__device__ __forceinline__ void bulk_wait(uint64_t *bars, int b, unsigned &phase)
{
    mbar_wait(bars + b, (phase >> b) & 1u);
    phase ^= 1u << b;
}

/* Byte offsets: the chunk buffers, the state warps' part, the local warps' part. */
struct ws_smem {
    static constexpr int qb = 0;                         /* [C][kLdB] raw q */
    static constexpr int kb = qb + kChunk * kLdB * 2;    /* [C][kLdB] raw k */
    static constexpr int vb = kb + kChunk * kLdB * 2;    /* [C][kLdV] raw v slice */
    static constexpr int tb = vb + kChunk * kLdV * 2;    /* [C][kLdP] T = (I + A)^{-1}, lower blocks */
    static constexpr int pb = tb + kChunk * kLdP * 2;    /* [C][kLdP] rq_t e(t,s) q_t.k_s, s <= t */
    static constexpr int gates = pb + kChunk * kLdP * 2; /* gam, dec, beta, rq, rk: [C] floats each */
    static constexpr int buffer = gates + 5 * kChunk * 4;
    static constexpr int sb = kBuffers * buffer;         /* [kSlice][kLdB] the state slice as bf16 */
    static constexpr int zb = sb + kSlice * kLdB * 2;    /* [C][kLdU] Z */
    static constexpr int ub = zb + kChunk * kLdU * 2;    /* [C][kLdU] U */
    static constexpr int udb = ub + kChunk * kLdU * 2;   /* [C][kLdU] U' scaled by e^{G_last - G_t} */
    static constexpr int ab = udb + kChunk * kLdU * 2;   /* [C][kLdP] A below the diagonal blocks */
    static constexpr int diag = ab + kChunk * kLdP * 2;  /* [4][16][kLdD] A's diagonal blocks */
    static constexpr int cum = diag + 4 * 16 * kLdD * 4; /* [C] G_t */
    static constexpr int bars = cum + kChunk * 4;        /* mbarriers: FULL[kBuffers], EMPTY[kBuffers] */
    static constexpr int bytes = bars + 2 * kBuffers * 8;
};
static_assert(ws_smem::buffer % 16 == 0 && ws_smem::vb % 16 == 0 && ws_smem::sb % 16 == 0 &&
                  ws_smem::diag % 16 == 0 && ws_smem::bars % 8 == 0,
              "16-byte aligned parts");
static_assert(ws_smem::bytes + 4096 <= 227 * 1024, "fits a block's shared memory with the static part");

struct ws_buffer {
    bf16 *qb, *kb, *vb, *tb, *pb;
    float *gam, *dec, *beta, *rq, *rk;
};
__device__ __forceinline__ ws_buffer ws_buffer_at(unsigned char *smb, int b)
{
    unsigned char *base = smb + b * ws_smem::buffer;
    ws_buffer w;
    w.qb = reinterpret_cast<bf16 *>(base + ws_smem::qb), w.kb = reinterpret_cast<bf16 *>(base + ws_smem::kb);
    w.vb = reinterpret_cast<bf16 *>(base + ws_smem::vb), w.tb = reinterpret_cast<bf16 *>(base + ws_smem::tb);
    w.pb = reinterpret_cast<bf16 *>(base + ws_smem::pb);
    w.gam = reinterpret_cast<float *>(base + ws_smem::gates), w.dec = w.gam + kChunk, w.beta = w.dec + kChunk;
    w.rq = w.beta + kChunk, w.rk = w.rq + kChunk;
    return w;
}

/* Tokens [c0, c0 + len) of the sequence as raw rows into buffer w (rows past len: zeros), by the
 * 128 local threads; cp.async where rows are 16-byte aligned. */
constexpr float kLog2e = 1.4426950408889634f;
/* 2^x for x <= 0 (MUFU.EX2; ~2 ulp, invisible beside the bf16 products) */
__device__ __forceinline__ float fast_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

static_assert(kGroupThreads == 128 && kRowK == 128 && kSlice == 32, "stage_raw's thread map");
template <bool WITH_V = true>
__device__ __forceinline__ void stage_raw(const stage_source<bf16> &src, int64_t c0, int len,
                                          const ws_buffer &w)
{
    const int tid = threadIdx.x;
    if (src.async && src.rows_v == kSlice) {
        /* thread tid: 16-byte piece tid % 16 of rows tid / 16 + 8 i (q, k); piece tid % 4 of
         * rows tid / 4 + 32 i (v) */
        const int r0 = tid / 16, c = 8 * (tid % 16);
        const bf16 *q = src.q + (c0 + r0) * src.q_stride + c, *k = src.k + (c0 + r0) * src.k_stride + c;
        const int64_t q8 = 8 * src.q_stride, k8 = 8 * src.k_stride;
#pragma unroll
        for (int i = 0; i < kChunk / 8; i++) {
            const int r = r0 + 8 * i;
            const bool real = r < len;
            copy_async16(reinterpret_cast<uint4 *>(w.qb + r * kLdB + c), real ? q + i * q8 : src.q, real);
            copy_async16(reinterpret_cast<uint4 *>(w.kb + r * kLdB + c), real ? k + i * k8 : src.k, real);
        }
        if constexpr (!WITH_V) {
            copy_async_commit();
            return;
        }
        const int rv = tid / 4, cv = 8 * (tid % 4);
        const bf16 *v = src.v + (c0 + rv) * src.v_stride + cv;
#pragma unroll
        for (int i = 0; i < kChunk / 32; i++) {
            const int r = rv + 32 * i;
            const bool real = r < len;
            copy_async16(reinterpret_cast<uint4 *>(w.vb + r * kLdV + cv),
                         real ? v + 32 * i * src.v_stride : src.v, real);
        }
    } else {
        const bf16 zero = __float2bfloat16_rn(0.0f);
        for (int i = tid; i < kChunk * kRowK; i += kGroupThreads) {
            const int r = i / kRowK, c = i % kRowK;
            w.qb[r * kLdB + c] = r < len ? src.q[(c0 + r) * src.q_stride + c] : zero;
            w.kb[r * kLdB + c] = r < len ? src.k[(c0 + r) * src.k_stride + c] : zero;
        }
        for (int i = tid; WITH_V && i < kChunk * kSlice; i += kGroupThreads) {
            const int r = i / kSlice, c = i % kSlice;
            w.vb[r * kLdV + c] = r < len && c < src.rows_v ? src.v[(c0 + r) * src.v_stride + c] : zero;
        }
    }
    copy_async_commit();
}

/* Row blocks MA and MB of the raw K K^T (warps 0, 1) or Q K^T (warps 2, 3), all four local warps
 * at once: products, then the norm factors from the diagonal tiles (K K^T's own; Q Q^T's two
 * tiles for the q warps), a LOCAL barrier, and the epilogues with every factor:
 *   M(t,s) = beta_t rk_t^2 e(t,s) k_t.k_s (s < t; the diagonal blocks as float32, then
 *            inverted into T's diagonal blocks), P(t,s) = rq_t e(t,s) q_t.k_s (s <= t).
 * Only row factors: with D = diag(rk) the normalised A = diag(beta) D K K^T D (decays applied)
 * gives (I + A)^{-1} = D^{-1} (I + M)^{-1} D, so U = D^{-1} U' with U' = (I + M)^{-1} (D Z),
 * and the column factors rk_s cancel against U's D^{-1} in P U and in the state update
 * (U' meets the raw k rows). The exponent of e(t,s) is in base 2: cum holds G_t log2(e). */
template <int MA, int MB, bool is_q>
__device__ __forceinline__ void gram_raw(const ws_buffer &w, const float *cum, bf16 *ab, float *diag,
                                         float scale, bool l2norm)
{
    constexpr int NA = 2 * MA + 2, NB = 2 * MB + 2;
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const bf16 *X = is_q ? w.qb : w.kb;
    float acc_a[NA][4], acc_b[NB][4], qd[2][2][4];
#pragma unroll
    for (int e = 0; e < 4; e++) {
#pragma unroll
        for (int j = 0; j < NA; j++)
            acc_a[j][e] = 0.0f;
#pragma unroll
        for (int j = 0; j < NB; j++)
            acc_b[j][e] = 0.0f;
#pragma unroll
        for (int j = 0; j < 4; j++)
            qd[j / 2][j % 2][e] = 0.0f;
    }
#pragma unroll
    for (int kk = 0; kk < kRowK; kk += 16) {
        unsigned a0[4], a1[4];
        ldsm_x4(a0, frag_a_rows(X, kLdB, 16 * MA, kk));
        ldsm_x4(a1, frag_a_rows(X, kLdB, 16 * MB, kk));
#pragma unroll
        for (int pr = 0; pr < NB / 2; pr++) {
            unsigned b[4];
            ldsm_x4(b, frag_b2_nk(w.kb, kLdB, 16 * pr, kk));
            mma_bf16(acc_b[2 * pr], a1, b);
            mma_bf16(acc_b[2 * pr + 1], a1, b + 2);
            if (2 * pr < NA) {
                mma_bf16(acc_a[2 * pr], a0, b);
                mma_bf16(acc_a[2 * pr + 1], a0, b + 2);
            }
        }
        if (is_q && l2norm) {
            unsigned b[4];
            ldsm_x4(b, frag_b2_nk(w.qb, kLdB, 16 * MA, kk));
            mma_bf16(qd[0][0], a0, b);
            mma_bf16(qd[0][1], a0, b + 2);
            ldsm_x4(b, frag_b2_nk(w.qb, kLdB, 16 * MB, kk));
            mma_bf16(qd[1][0], a1, b);
            mma_bf16(qd[1][1], a1, b + 2);
        }
    }
    /* the diagonal of a 16 x 16 tile: row g col g in the first n-tile (element g % 2 of lanes
     * with g / 2 == t4), row g + 8 col g + 8 in the second (element 2 + g % 2) */
    auto norms = [&](int m, const float *t0, const float *t1, float *dst, float f) {
        if (!l2norm) {
            if (lane < 16)
                dst[16 * m + lane] = f;
        } else if (g / 2 == t4) {
            /* selects, not t0[g % 2]: a runtime index would move the accumulators to the stack */
            const float d0 = g % 2 ? t0[1] : t0[0], d1 = g % 2 ? t1[3] : t1[2];
            dst[16 * m + g] = f * inv_sqrt(d0 + GDN_L2NORM_EPS);
            dst[16 * m + 8 + g] = f * inv_sqrt(d1 + GDN_L2NORM_EPS);
        }
    };
    if constexpr (is_q) {
        norms(MA, qd[0][0], qd[0][1], w.rq, scale);
        norms(MB, qd[1][0], qd[1][1], w.rq, scale);
    } else {
        norms(MA, acc_a[2 * MA], acc_a[2 * MA + 1], w.rk, 1.0f);
        norms(MB, acc_b[2 * MB], acc_b[2 * MB + 1], w.rk, 1.0f);
    }
    named_sync(kBarLocal, kGroupThreads); /* every norm factor, the gates */

    /* __expf: the exponent is <= 0 and the products are bf16, so its ~2 ulp do not show */
    auto epilogue = [&](int mi, int nj, const float *acc) {
        const int col = 8 * nj + 2 * t4;
        const float2 cc = *reinterpret_cast<const float2 *>(cum + col);
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int row = 16 * mi + g + 8 * half;
            const float cr = cum[row], fr = is_q ? w.rq[row] : w.beta[row] * w.rk[row] * w.rk[row];
            const bool in0 = is_q ? col <= row : col < row, in1 = is_q ? col + 1 <= row : col + 1 < row;
            const float v0 = in0 ? fr * fast_exp2(cr - cc.x) * acc[2 * half] : 0.0f;
            const float v1 = in1 ? fr * fast_exp2(cr - cc.y) * acc[2 * half + 1] : 0.0f;
            if constexpr (is_q)
                store_bf16_pair(w.pb + row * kLdP + col, v0, v1);
            else if (nj >= 2 * mi)
                *reinterpret_cast<float2 *>(diag + (mi * 16 + row - 16 * mi) * kLdD + col - 16 * mi) =
                    make_float2(v0, v1);
            else
                store_bf16_pair(ab + row * kLdP + col, v0, v1);
        }
    };
#pragma unroll
    for (int j = 0; j < NA; j++)
        epilogue(MA, j, acc_a[j]);
#pragma unroll
    for (int j = 0; j < NB; j++)
        epilogue(MB, j, acc_b[j]);
    if constexpr (!is_q) {
        invert_diagonal_pair<MA, MB>(diag, w.tb);
    }
}

/* T's column block j below the diagonal, by warp: T_ij = -D_i sum_{j<=k<i} A_ik T_kj with
 * D_i = T_ii already in place. The sum passes through T_ij's own place as bf16. */
template <int j> __device__ __forceinline__ void inverse_column(const bf16 *ab, bf16 *tb)
{
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
#pragma unroll
    for (int i = j + 1; i < 4; i++) {
        float acc[2][4] = {};
#pragma unroll
        for (int k = j; k < i; k++) {
            unsigned a[4], b[4];
            ldsm_x4(a, frag_a_rows(ab, kLdP, 16 * i, 16 * k));
            ldsm_x4_t(b, frag_b2_kn(tb, kLdP, 16 * j, 16 * k));
            mma_bf16(acc[0], a, b);
            mma_bf16(acc[1], a, b + 2);
        }
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int half = 0; half < 2; half++)
                store_bf16_pair(tb + (16 * i + g + 8 * half) * kLdP + 16 * j + 8 * nt + 2 * t4,
                                acc[nt][2 * half], acc[nt][2 * half + 1]);
        __syncwarp();
        unsigned d[4], b[4];
        ldsm_x4(d, frag_a_rows(tb, kLdP, 16 * i, 16 * i));
#pragma unroll
        for (int e = 0; e < 4; e++)
            d[e] ^= 0x80008000u; /* -D_i */
        ldsm_x4_t(b, frag_b2_kn(tb, kLdP, 16 * j, 16 * i));
        float x[2][4] = {};
        mma_bf16(x[0], d, b);
        mma_bf16(x[1], d, b + 2);
        __syncwarp();
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
#pragma unroll
            for (int half = 0; half < 2; half++)
                store_bf16_pair(tb + (16 * i + g + 8 * half) * kLdP + 16 * j + 8 * nt + 2 * t4,
                                x[nt][2 * half], x[nt][2 * half + 1]);
        __syncwarp();
    }
}

/* ---- the state in registers (pipelined and split walks): 2 PAIRS tiles of 16 x 8 a warp, rows
 * 16 mv + g (+ 8), columns 8 (nk0 + j) + 2 t4 (+ 1) of the slice ---- */

/* The slice's state from slot `read` (zeros without an initial state), and its bf16 copy in sb. */
template <typename St, int PAIRS>
__device__ __forceinline__ void load_state_regs(const gdn_problem &p, const block_coords &bc, int64_t read,
                                                int64_t v0, int rows_v, int mv, int nk0,
                                                float (&st)[2 * PAIRS][4], bf16 *sb)
{
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const bool zero = gdn_zero_initial_state(&p, bc.n);
    const St *tile = static_cast<const St *>(p.state_pool) + gdn_tile_offset(&p, read, bc.hv) + v0 * kRowK;
#pragma unroll
    for (int j = 0; j < 2 * PAIRS; j++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int row = 16 * mv + g + 8 * half, col = 8 * (nk0 + j) + 2 * t4;
            const bool real = !zero && row < rows_v;
            st[j][2 * half] = real ? to_float<St>(tile[row * kRowK + col]) : 0.0f;
            st[j][2 * half + 1] = real ? to_float<St>(tile[row * kRowK + col + 1]) : 0.0f;
            store_bf16_pair(sb + row * kLdB + col, st[j][2 * half], st[j][2 * half + 1]);
        }
}

/* S' = keep S + (U' dec)^T K with the raw k rows, and its bf16 copy in sb for the next chunk. */
template <int PAIRS>
__device__ __forceinline__ void update_state_regs(float (&st)[2 * PAIRS][4], const bf16 *udb, const bf16 *kb,
                                                  bf16 *sb, int mv, int nk0, float keep)
{
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
#pragma unroll
    for (int j = 0; j < 2 * PAIRS; j++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            st[j][e] *= keep;
    add_update_products<PAIRS>(st, udb, kb, mv, nk0);
#pragma unroll
    for (int j = 0; j < 2 * PAIRS; j++)
#pragma unroll
        for (int half = 0; half < 2; half++)
            store_bf16_pair(sb + (16 * mv + g + 8 * half) * kLdB + 8 * (nk0 + j) + 2 * t4, st[j][2 * half],
                            st[j][2 * half + 1]);
}

/* The final state to slot `write`. */
template <typename St, int PAIRS>
__device__ __forceinline__ void store_state_regs(const gdn_problem &p, const block_coords &bc, int64_t write,
                                                 int64_t v0, int rows_v, int mv, int nk0,
                                                 const float (&st)[2 * PAIRS][4])
{
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    St *tile = static_cast<St *>(p.state_pool) + gdn_tile_offset(&p, write, bc.hv) + v0 * kRowK;
#pragma unroll
    for (int j = 0; j < 2 * PAIRS; j++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int row = 16 * mv + g + 8 * half, col = 8 * (nk0 + j) + 2 * t4;
            if (row < rows_v) {
                tile[row * kRowK + col] = from_float<St>(st[j][2 * half]);
                tile[row * kRowK + col + 1] = from_float<St>(st[j][2 * half + 1]);
            }
        }
}

/* Z' = beta rk (v - gam rk K S^T) for token rows 16 tb.. (acc: K S^T for the 32 columns) into zb. */
__device__ __forceinline__ void z_rows(const ws_buffer &w, const float (&acc)[4][4], int tb, bf16 *zb)
{
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int row = 16 * tb + g + 8 * half;
        const float bt = w.beta[row] * w.rk[row], gk = w.gam[row] * w.rk[row];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int col = 8 * j + 2 * t4;
            const float2 v =
                __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(w.vb + row * kLdV + col));
            store_bf16_pair(zb + row * kLdU + col, bt * (v.x - gk * acc[j][2 * half]),
                            bt * (v.y - gk * acc[j][2 * half + 1]));
        }
    }
}

/* Row block mi of U' = T Z' for columns n0.. (zf: Z' as B fragments), into ub and, scaled by
 * e^{G_last - G_t}, udb. */
__device__ __forceinline__ void u_block(const ws_buffer &w, const unsigned (&zf)[4][2], int mi, int n0,
                                        bf16 *ub, bf16 *udb)
{
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    float u[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int kb = 0; kb < 4; kb++) {
        if (kb > mi)
            break;
        unsigned a[4];
        ldsm_x4(a, frag_a_rows(w.tb, kLdP, 16 * mi, 16 * kb));
        mma_bf16(u, a, zf[kb]);
    }
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const int row = 16 * mi + g + 8 * half, col = n0 + 2 * t4;
        const float f = w.dec[row];
        store_bf16_pair(ub + row * kLdU + col, u[2 * half], u[2 * half + 1]);
        store_bf16_pair(udb + row * kLdU + col, u[2 * half] * f, u[2 * half + 1] * f);
    }
}

/* uses[b]: how many chunks buffer b held before this sequence, in this block (the mbarriers' phases). */
template <typename St>
__device__ void chunked_sequence_ws(const gdn_problem &p, int64_t n, unsigned char *smb, unsigned *uses)
{
    uint64_t *const full = reinterpret_cast<uint64_t *>(smb + ws_smem::bars), *const empty = full + kBuffers;
    typedef bf16 Act;
    bf16 *const sb = reinterpret_cast<bf16 *>(smb + ws_smem::sb);

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4;
    seq_part<Act> sp;
    if (!open_sequence<Act>(p, n, sp))
        return;
    const block_coords bc = sp.bc;
    const int64_t V = sp.V, v0 = sp.v0, first = sp.first, read = sp.read, write = sp.write;
    const int rows_v = sp.rows_v;
    const int64_t chunks = sp.chunks();
    auto chunk_len = [&](int64_t ci) { return sp.chunk_len(ci); };
    /* the use of buffer ci % kBuffers that chunk ci is, counted over the block's sequences */
    auto use_of = [&](int64_t ci) {
        const int b = (int)(ci % kBuffers); /* (selects: an indexed uses[] would live on the stack) */
        return (b == 0 ? uses[0] : b == 1 ? uses[1] : uses[2]) + (unsigned)(ci / kBuffers);
    };
    /* before the local warps write chunk ci's buffer: the state warps are done with its last use */
    auto await_empty = [&](int64_t ci) {
        const unsigned u = use_of(ci);
        if (u > 0)
            mbar_wait(empty + ci % kBuffers, (u - 1) & 1);
    };

    if (warp < 4) {
        /* ---- local warps ---- */
        const stage_source<Act> &src = sp.src;
        bf16 *const ab = reinterpret_cast<bf16 *>(smb + ws_smem::ab);
        float *const diag = reinterpret_cast<float *>(smb + ws_smem::diag);
        float *const cum = reinterpret_cast<float *>(smb + ws_smem::cum);
        const bool l2norm = p.qk_l2norm != 0;
        await_empty(0);
        stage_raw(src, 0, chunk_len(0), ws_buffer_at(smb, 0));
        pair_gates next_gates{};
        if (warp == 0)
            next_gates = load_pair_gates<Act>(p, first, 0, chunk_len(0), bc.hv);
        for (int64_t ci = 0; ci < chunks; ci++) {
            const int b = (int)(ci % kBuffers);
            const ws_buffer w = ws_buffer_at(smb, b);
            copy_async_wait<0>();
            named_sync(kBarLocal, kGroupThreads); /* chunk ci's rows have landed */
            const pair_gates gates = next_gates;
            if (ci + 1 < chunks) {
                const int nb = (int)((ci + 1) % kBuffers);
                await_empty(ci + 1); /* (the state warps are done with chunk ci - 2) */
                stage_raw(src, (ci + 1) * kChunk, chunk_len(ci + 1), ws_buffer_at(smb, nb));
                if (warp == 0)
                    next_gates = load_pair_gates<Act>(p, first, (ci + 1) * kChunk, chunk_len(ci + 1), bc.hv);
            }
            if (warp == 0)
                chunk_gates<Act>(p, gates, chunk_len(ci), cum, w.gam, w.dec, w.beta, kLog2e);
            switch (warp) {
            case 0: gram_raw<0, 3, false>(w, cum, ab, diag, p.scale, l2norm); break;
            case 1: gram_raw<1, 2, false>(w, cum, ab, diag, p.scale, l2norm); break;
            case 2: gram_raw<0, 3, true>(w, cum, ab, diag, p.scale, l2norm); break;
            default: gram_raw<1, 2, true>(w, cum, ab, diag, p.scale, l2norm); break;
            }
            named_sync(kBarLocal, kGroupThreads); /* A and the diagonal inverses */
            switch (warp) { /* T's column block 3 - warp: 0, 1, 2, 3 steps down for warps 3, 2, 1, 0 */
            case 3: inverse_column<0>(ab, w.tb); break;
            case 2: inverse_column<1>(ab, w.tb); break;
            case 1: inverse_column<2>(ab, w.tb); break;
            default: break;
            }
            mbar_arrive(full + b);
        }
    } else {
        /* ---- state warps: the slice's rows 16 mv.., columns 8 nk0.. (8 tiles) in registers ---- */
        bf16 *const zb = reinterpret_cast<bf16 *>(smb + ws_smem::zb);
        bf16 *const ub = reinterpret_cast<bf16 *>(smb + ws_smem::ub);
        bf16 *const udb = reinterpret_cast<bf16 *>(smb + ws_smem::udb);
        const int sw = warp - 4, mv = sw / 2, nk0 = 8 * (sw % 2);
        float st[8][4];
        load_state_regs<St, 4>(p, bc, read, v0, rows_v, mv, nk0, st, sb);
        for (int64_t ci = 0; ci < chunks; ci++) {
            const int64_t c0 = ci * kChunk;
            const int len = chunk_len(ci), b = (int)(ci % kBuffers);
            const ws_buffer w = ws_buffer_at(smb, b);
            mbar_wait(full + b, use_of(ci) & 1);
            named_sync(kBarState, kGroupThreads); /* the last chunk's state rows (sb) are complete */

            /* K S^T and Q S^T for row block sw: Z' = D Z, and the outputs' first term in registers */
            float o_acc[4][4], acc_k[4][4];
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    o_acc[j][e] = acc_k[j][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < kRowK; kk += 16) {
                unsigned ak[4], aq[4];
                ldsm_x4(ak, frag_a_rows(w.kb, kLdB, 16 * sw, kk));
                ldsm_x4(aq, frag_a_rows(w.qb, kLdB, 16 * sw, kk));
#pragma unroll
                for (int pr = 0; pr < 2; pr++) {
                    unsigned bb[4];
                    ldsm_x4(bb, frag_b2_nk(sb, kLdB, 16 * pr, kk));
                    mma_bf16(acc_k[2 * pr], ak, bb);
                    mma_bf16(acc_k[2 * pr + 1], ak, bb + 2);
                    mma_bf16(o_acc[2 * pr], aq, bb);
                    mma_bf16(o_acc[2 * pr + 1], aq, bb + 2);
                }
            }
            z_rows(w, acc_k, sw, zb);
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const int row = 16 * sw + g + 8 * half;
                const float gq = w.gam[row] * w.rq[row];
#pragma unroll
                for (int j = 0; j < 4; j++)
                    o_acc[j][2 * half] *= gq, o_acc[j][2 * half + 1] *= gq;
            }
            named_sync(kBarState, kGroupThreads);

            /* U' = (I + M)^{-1} Z': warp sw owns columns 8 sw.., every row block */
            {
                const int n0 = 8 * sw;
                unsigned zf[4][2];
#pragma unroll
                for (int kb = 0; kb < 4; kb++)
                    ldsm_x2_t(zf[kb], frag_b1_kn(zb, kLdU, n0, 16 * kb));
#pragma unroll
                for (int mi = 0; mi < 4; mi++)
                    u_block(w, zf, mi, n0, ub, udb);
            }
            named_sync(kBarState, kGroupThreads);

            /* the outputs' second term P U */
            finish_outputs<Act>(p, w.pb, ub, o_acc, sw, len, rows_v, first + c0, bc.hv * V + v0);

            update_state_regs<4>(st, udb, w.kb, sb, mv, nk0, w.gam[kChunk - 1]);
            mbar_arrive(empty + b);
        }
        if (write >= 0)
            store_state_regs<St, 4>(p, bc, write, v0, rows_v, mv, nk0, st);
    }
    for (int b = 0; b < kBuffers; b++)
        uses[b] += (unsigned)((chunks + kBuffers - 1 - b) / kBuffers);
    __syncthreads(); /* the next sequence reuses the shared memory */
}

/* ---- one term, split: the chunk-local work of every chunk in parallel, then the state walk -----
 *
 * The pipelined path above does the chunk-local work (gates, Gram matrices, T = (I + M)^{-1})
 * in the block that walks the sequence, one chunk ahead, and does it again in each of a head's
 * 4 slices; ncu (H100, 2026-12-05) showed those local warps issuing ~2.6x the state warps'
 * instructions, so the walk waited on them. None of that work depends on the state. With a
 * workspace from the caller this path runs it as its own kernel, one block of 4 warps per
 * (chunk, value head), all chunks at once, and writes each chunk's record:
 *     T (the lower blocks of (I + M)^{-1}, bf16), P (rq_t e(t,s) q_t.k_s, s <= t, bf16),
 *     gam, dec, beta, rq, rk (float32) and a tag naming (sequence, chunk);
 * then the walk (chunked_sequence_split) only streams q, k, v and the records by cp.async
 * and does the state work with all 8 warps.
 *
 * Record r of value head hv sits at (r * HV + hv) * kRecordBytes; chunk ci of sequence n is
 * record floor(first_row(n) / 64) + n + ci, which never collides for valid cu_seqlens and stays
 * below floor(token_rows / 64) + num_seqs (GDN_CHUNK_RECORD_BYTES, gdn_chunk_records). */
struct record_layout {
    static constexpr int t = 0;                         /* [C][kLdP] bf16, upper blocks and padding zero */
    static constexpr int p = t + kChunk * kLdP * 2;     /* [C][kLdP] bf16 */
    static constexpr int gates = p + kChunk * kLdP * 2; /* gam, dec, beta, rq, rk: [C] floats each */
    static constexpr int tag = gates + 5 * kChunk * 4;  /* int64 (sequence << 24) + chunk + 1, padding */
    static constexpr int bytes = tag + 16;
    static constexpr int image = tag; /* the bytes that are a chunk buffer's tb, pb and gates as they are */
};
static_assert(record_layout::bytes == GDN_CHUNK_RECORD_BYTES && record_layout::bytes % 16 == 0,
              "the record size the host sizes workspaces by");
static_assert(ws_smem::pb - ws_smem::tb == record_layout::p &&
                  ws_smem::gates - ws_smem::tb == record_layout::gates,
              "a record is the image of a buffer's tb, pb and gates");

__device__ __forceinline__ int64_t record_tag(int64_t n, int64_t ci) { return n * (1LL << 24) + ci + 1; }

/* The first record of sequence n (its chunk 0). */
__device__ __forceinline__ int64_t first_record(const gdn_problem &p, int64_t n)
{
    return gdn_first_token_row(&p, n) / kChunk + n;
}

/* The WY form of a record (GDN_PREFILL_WY, the mma.sync walk only): P, the gates and the tag as
 * above but without T, then W = T diag(beta rk^2 gam) K and U0 = T diag(beta rk) V, so that the
 * walk's U' = T Z' becomes U' = U0 - W S^T: one product of the state fewer in its serial chain
 * (FLA's chunked kernels keep the same two, w and u, for their recurrence). */
struct record_wy {
    static constexpr int p = 0;                         /* [C][kLdP] bf16 */
    static constexpr int gates = p + kChunk * kLdP * 2; /* gam, dec, beta, rq, rk: [C] floats each */
    static constexpr int tag = gates + 5 * kChunk * 4;  /* as record_layout's */
    static constexpr int w = tag + 16;                  /* [C][128] bf16 */
    static constexpr int u0 = w + kChunk * kRowK * 2;   /* [C][Vp] bf16, Vp = V rounded up to 32 */
    static constexpr int image = tag;                   /* P and the gates as a buffer's pb and gates */
};
static_assert(record_wy::w == 10512 && record_wy::u0 == 10512 + 16384 && record_wy::w % 16 == 0,
              "the WY record size the host sizes workspaces by (gdn_chunk_record_wy_bytes)");

__device__ __forceinline__ int64_t record_bytes(const gdn_problem &p)
{
    return p.prefill_wy ? gdn_chunk_record_wy_bytes(p.head_dim_v) : (int64_t)record_layout::bytes;
}

__device__ __forceinline__ unsigned char *record_at(const gdn_problem &p, int64_t r, int64_t hv)
{
    return static_cast<unsigned char *>(p.workspace) + (r * p.num_v_heads + hv) * record_bytes(p);
}

/* Record r of value head hv (its image: T, P and the gates) into dst by one bulk copy on bar. */
__device__ __forceinline__ void bulk_record(const gdn_problem &p, int64_t r, int64_t hv, void *dst,
                                            uint64_t *bar)
{
    bulk_copy_armed(dst, record_at(p, r, hv), record_layout::image, bar);
}

__device__ __forceinline__ int64_t *record_tag_at(const gdn_problem &p, unsigned char *rec)
{
    return reinterpret_cast<int64_t *>(rec + (p.prefill_wy ? record_wy::tag : record_layout::tag));
}

/*
 * The sequence whose records start at or before record r: the last n with first_record(n) <= r
 * (increasing in n for valid cu_seqlens; for any other order some n in range comes out, and the
 * walk's tag check catches what that maps wrongly). A binary search is ~log2(num_seqs) dependent
 * loads of cu_seqlens (9 for a mixed batch of 257 sequences), paid by every block of the local
 * kernel, also by the blocks of records that belong to no chunk (one a decode of a mixed call),
 * which only exit. With p.prefill_kary each warp probes 32 entries at once: the ballot's highest
 * lane that is still at or before r narrows the range to one 32nd (2 rounds of loads for 257,
 * 3 up to 32768). The default (GDN_PREFILL_KARY=0: the binary search): on the H200 (3a9e806)
 * every prefill case was 0.3-2.3% faster with it, the mixed calls the most (qwen3-next 706 ->
 * 690 us, contest 372 -> 368).
 */
__device__ __forceinline__ int64_t record_sequence(const gdn_problem &p, int64_t r)
{
    int64_t lo = 0, hi = p.num_seqs - 1;
    if (p.prefill_kary) {
        const int lane = threadIdx.x % 32;
        while (lo < hi) { /* (warp-uniform: lo and hi come from the ballot) */
            const int64_t step = (hi - lo + 32) / 32, m = lo + lane * step;
            const bool at_or_before = m <= hi && (lane == 0 || first_record(p, m) <= r);
            const int last = 31 - __clz(__ballot_sync(kFullMask, at_or_before)); /* lane 0: lo itself */
            lo += last * step;
            hi = hi < lo + step - 1 ? hi : lo + step - 1;
        }
        return lo;
    }
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo + 1) / 2;
        if (first_record(p, mid) <= r)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Shared memory of the local kernel, in bytes: q and k rows, the gates and the cumulative decays
 * (no v; 35.5 KiB, so that 5 blocks fit a multiprocessor by registers as well). A below the
 * diagonal blocks, the diagonal blocks, T and P overlay the q and k rows, which are dead once
 * every Gram product is done: gram_raw's barrier comes before its epilogues write any of them
 * (4 blocks at 53.5 KiB with T and P apart: 59 us for 1x4096 qwen3-next on the H100, ncu). */
struct local_smem {
    static constexpr int qb = 0;
    static constexpr int kb = qb + kChunk * kLdB * 2;
    static constexpr int gates = kb + kChunk * kLdB * 2;
    static constexpr int cum = gates + 5 * kChunk * 4;
    static constexpr int bytes = cum + kChunk * 4;
    static constexpr int ab = qb; /* (from here on: overlays the rows) */
    static constexpr int diag = ab + kChunk * kLdP * 2;
    static constexpr int tb = diag + 4 * 16 * kLdD * 4;
    static constexpr int pb = tb + kChunk * kLdP * 2;
};
static_assert(local_smem::pb + kChunk * kLdP * 2 <= local_smem::gates && local_smem::tb % 16 == 0,
              "A, its diagonal blocks, T and P fit over the q and k rows");

/* The record a block of a local kernel works on (chunk ci of sequence n, c0 its first token, len
 * its tokens), or false for a record of no chunk: past a sequence's last chunk, a sequence the
 * multi-token kernel takes, bad cu_seqlens. */
struct local_chunk {
    int64_t r, hv, n, ci, first, c0;
    int len;
};
__device__ __forceinline__ bool open_local_chunk(const gdn_problem &p, local_chunk &lc)
{
    lc.r = blockIdx.x, lc.hv = blockIdx.y;
    lc.n = record_sequence(p, lc.r), lc.ci = lc.r - first_record(p, lc.n);
    const int64_t T = gdn_seq_tokens(&p, lc.n);
    lc.first = gdn_first_token_row(&p, lc.n);
    if (lc.ci < 0 || T <= 0 || lc.first < 0 || lc.ci * kChunk >= T || !chunked_owns(p, lc.n))
        return false;
    lc.c0 = lc.ci * kChunk;
    lc.len = (int)(T - lc.c0 < kChunk ? T - lc.c0 : kChunk);
    return true;
}

/* The q and k rows of the chunk's head (no v: stage_raw<false>). */
__device__ __forceinline__ stage_source<bf16> local_source(const gdn_problem &p, const local_chunk &lc)
{
    const int64_t h = gdn_qk_head(&p, lc.hv);
    stage_source<bf16> src;
    src.q = static_cast<const bf16 *>(p.q) + lc.first * p.q_stride + h * kRowK;
    src.k = static_cast<const bf16 *>(p.k) + lc.first * p.k_stride + h * kRowK;
    src.v = nullptr;
    src.q_stride = p.q_stride, src.k_stride = p.k_stride, src.v_stride = 0;
    src.rows_v = kSlice;
    src.async = p.prefill_async != 0;
    return src;
}

/* A local kernel's rows, T, P and gates in shared memory laid out as L says. */
template <typename L> __device__ __forceinline__ ws_buffer local_buffer(unsigned char *lsm)
{
    ws_buffer w;
    w.qb = reinterpret_cast<bf16 *>(lsm + L::qb), w.kb = reinterpret_cast<bf16 *>(lsm + L::kb);
    w.vb = nullptr, w.tb = reinterpret_cast<bf16 *>(lsm + L::tb),
    w.pb = reinterpret_cast<bf16 *>(lsm + L::pb);
    w.gam = reinterpret_cast<float *>(lsm + L::gates), w.dec = w.gam + kChunk, w.beta = w.dec + kChunk;
    w.rq = w.beta + kChunk, w.rk = w.rq + kChunk;
    return w;
}

/* After the rows are staged (their copies committed): the gates, the Gram products and their
 * epilogues (P, A, the diagonal inverses), then T; ends on a block barrier. */
__device__ __forceinline__ void local_gram_and_t(const gdn_problem &p, const local_chunk &lc,
                                                 const ws_buffer &w, bf16 *ab, float *diag, float *cum)
{
    const int warp = threadIdx.x / 32;
    if (warp == 0) {
        const pair_gates gates = load_pair_gates<bf16>(p, lc.first, lc.c0, lc.len, lc.hv);
        chunk_gates<bf16>(p, gates, lc.len, cum, w.gam, w.dec, w.beta, kLog2e);
    }
    copy_async_wait<0>();
    __syncthreads(); /* the rows and the gates */
    const bool l2norm = p.qk_l2norm != 0;
    switch (warp) {
    case 0: gram_raw<0, 3, false>(w, cum, ab, diag, p.scale, l2norm); break;
    case 1: gram_raw<1, 2, false>(w, cum, ab, diag, p.scale, l2norm); break;
    case 2: gram_raw<0, 3, true>(w, cum, ab, diag, p.scale, l2norm); break;
    default: gram_raw<1, 2, true>(w, cum, ab, diag, p.scale, l2norm); break;
    }
    __syncthreads(); /* A and the diagonal inverses */
    switch (warp) {
    case 3: inverse_column<0>(ab, w.tb); break;
    case 2: inverse_column<1>(ab, w.tb); break;
    case 1: inverse_column<2>(ab, w.tb); break;
    default: break;
    }
    __syncthreads(); /* T */
}

/* One block of 4 warps per (record, value head): the chunk-local work of the pipelined path for
 * the chunk that record belongs to, written to the workspace. Records of no chunk (past a
 * sequence's last chunk, sequences the multi-token kernel takes, bad cu_seqlens) are left alone.
 * BLOCKS a multiprocessor: 5 (94 registers), or 6 (GDN_PREFILL_LOCAL6=1: at most 80
 * registers, 36.4 KB of shared memory each; the kernel waits on latency, so more warps may pay). */
template <int BLOCKS>
__global__ void __launch_bounds__(kGroupThreads, BLOCKS) prefill_chunk_local(const gdn_problem p)
{
    extern __shared__ __align__(16) unsigned char lsm[];
    local_chunk lc;
    if (!open_local_chunk(p, lc))
        return;
    const int64_t r = lc.r, hv = lc.hv, n = lc.n, ci = lc.ci;
    const ws_buffer w = local_buffer<local_smem>(lsm);
    stage_raw<false>(local_source(p, lc), lc.c0, lc.len, w);
    local_gram_and_t(p, lc, w, reinterpret_cast<bf16 *>(lsm + local_smem::ab),
                     reinterpret_cast<float *>(lsm + local_smem::diag),
                     reinterpret_cast<float *>(lsm + local_smem::cum));
    /* the record: T and P row by row in 16-byte pieces (thread: piece tid % 8 of rows tid / 8 +
     * 16 i), the blocks above the diagonal as zeros (their shared memory holds stale rows), then
     * the padding columns. (A loop over every piece with divisions
     * and selects took ~360 instructions a warp, a fifth of the kernel's: ncu of 046a0e6.) */
    static_assert(local_smem::pb - local_smem::tb == record_layout::p, "T and P as in the record");
    unsigned char *rec = record_at(p, r, hv);
    {
        const int piece = threadIdx.x % 8, row0 = threadIdx.x / 8;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int off = (j / 4) * record_layout::p + ((row0 + 16 * (j % 4)) * kLdP + 8 * piece) * 2;
            const uint4 x = piece / 2 <= j % 4 ? *reinterpret_cast<const uint4 *>(lsm + local_smem::tb + off)
                                               : make_uint4(0u, 0u, 0u, 0u);
            *reinterpret_cast<uint4 *>(rec + record_layout::t + off) = x;
        }
        /* the padding columns as zeros too: nothing reads them, but the walks copy the record
         * image whole, and a copy of bytes never written is what compute-sanitizer's initcheck
         * reports (and what a fresh workspace would carry as garbage) */
        static_assert(kGroupThreads == 2 * kChunk && kLdP == kChunk + 8, "a padding piece a thread");
        const int m = threadIdx.x / kChunk, row = threadIdx.x % kChunk;
        *reinterpret_cast<uint4 *>(rec + record_layout::t + m * record_layout::p +
                                   (row * kLdP + kChunk) * 2) = make_uint4(0u, 0u, 0u, 0u);
    }
    if (threadIdx.x < 5 * kChunk / 4)
        reinterpret_cast<uint4 *>(rec + record_layout::gates)[threadIdx.x] =
            reinterpret_cast<const uint4 *>(w.gam)[threadIdx.x];
    if (threadIdx.x == 0)
        *reinterpret_cast<int64_t *>(rec + record_layout::tag) = record_tag(n, ci);
}

/* ---- the WY form: the local kernel also computes W and U0 ------------------------------------
 *
 * Shared memory of the WY local kernel, in bytes: q and k rows, T and P apart from them (k is
 * read again for W after T is done), the gates, and a group of 128 columns of v; A and the
 * diagonal blocks overlay the q rows (dead once the Gram products are done), and the products'
 * results pass through the q rows (W) and the k rows (U0) on their way to the record. */
struct local_wy_smem {
    static constexpr int qb = 0;
    static constexpr int kb = qb + kChunk * kLdB * 2;
    static constexpr int tb = kb + kChunk * kLdB * 2;
    static constexpr int pb = tb + kChunk * kLdP * 2;
    static constexpr int gates = pb + kChunk * kLdP * 2;
    static constexpr int cum = gates + 5 * kChunk * 4;
    static constexpr int xb = cum + kChunk * 4; /* [C][kLdB] v columns 128 g.., scaled by beta rk */
    static constexpr int bytes = xb + kChunk * kLdB * 2;
    static constexpr int ab = qb; /* (overlays the q rows) */
    static constexpr int diag = ab + kChunk * kLdP * 2;
};
static_assert(local_wy_smem::diag + 4 * 16 * kLdD * 4 <= local_wy_smem::kb && local_wy_smem::xb % 16 == 0 &&
                  local_wy_smem::pb - local_wy_smem::tb == kChunk * kLdP * 2,
              "A and its diagonal blocks fit over the q rows");

/* v columns [128 grp, 128 grp + 128) of chunk rows [c0, c0 + len) into xb (zeros past len and V). */
__device__ __forceinline__ void stage_v_group(const gdn_problem &p, int64_t first, int64_t c0, int len,
                                              int64_t hv, int grp, bf16 *xb)
{
    const int64_t V = p.head_dim_v;
    const bf16 *v = static_cast<const bf16 *>(p.v) + (first + c0) * p.v_stride + hv * V;
    for (int i = threadIdx.x; i < kChunk * 16; i += kGroupThreads) {
        const int r = i / 16, c = 128 * grp + 8 * (i % 16);
        bf16 *dst = xb + r * kLdB + 8 * (i % 16);
        if (p.prefill_async && c + 8 <= V) {
            copy_async16(reinterpret_cast<uint4 *>(dst), r < len ? v + r * p.v_stride + c : v, r < len);
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++)
                dst[e] = r < len && c + e < V ? v[r * p.v_stride + c + e] : __float2bfloat16_rn(0.0f);
        }
    }
}

/* Rows of x (C rows of 128 bf16 at stride kLdB) times beta rk, and with_k also rk gam, rounded. */
__device__ __forceinline__ void scale_rows(bf16 *x, const ws_buffer &w, bool with_k)
{
    for (int i = threadIdx.x; i < kChunk * 16; i += kGroupThreads) {
        const int r = i / 16;
        const float s = w.beta[r] * w.rk[r] * (with_k ? w.rk[r] * w.gam[r] : 1.0f);
        uint4 *at = reinterpret_cast<uint4 *>(x + r * kLdB + 8 * (i % 16));
        uint4 u = *at;
        unsigned *pair = reinterpret_cast<unsigned *>(&u);
#pragma unroll
        for (int e = 0; e < 4; e++) {
            __nv_bfloat162 h;
            memcpy(&h, &pair[e], sizeof h);
            const float2 y = __bfloat1622float2(h);
            pair[e] = pack_bf16(s * y.x, s * y.y);
        }
        *at = u;
    }
}

/* Row block `warp` of T X (X: C rows of 128 columns at stride kLdB, T's lower blocks) as bf16 into
 * dst (same layout); T's blocks above the diagonal are stale and never read. */
__device__ __forceinline__ void t_times_rows(const bf16 *tb, const bf16 *x, bf16 *dst)
{
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4, mi = threadIdx.x / 32;
    float acc[16][4];
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            acc[j][e] = 0.0f;
#pragma unroll
    for (int kb = 0; kb < 4; kb++) {
        if (kb > mi)
            break;
        unsigned a[4];
        ldsm_x4(a, frag_a_rows(tb, kLdP, 16 * mi, 16 * kb));
#pragma unroll
        for (int pr = 0; pr < 8; pr++) {
            unsigned b[4];
            ldsm_x4_t(b, frag_b2_kn(x, kLdB, 16 * pr, 16 * kb));
            mma_bf16(acc[2 * pr], a, b);
            mma_bf16(acc[2 * pr + 1], a, b + 2);
        }
    }
    __syncthreads(); /* every warp is done reading x (dst may be another warp's x) */
#pragma unroll
    for (int j = 0; j < 16; j++)
#pragma unroll
        for (int half = 0; half < 2; half++)
            store_bf16_pair(dst + (16 * mi + g + 8 * half) * kLdB + 8 * j + 2 * t4, acc[j][2 * half],
                            acc[j][2 * half + 1]);
}

/* The local kernel of the WY form: the records of prefill_chunk_local without T, with W and U0. */
__global__ void __launch_bounds__(kGroupThreads, 3) prefill_chunk_local_wy(const gdn_problem p)
{
    extern __shared__ __align__(16) unsigned char lsm[];
    typedef local_wy_smem L;
    local_chunk lc;
    if (!open_local_chunk(p, lc))
        return;
    const int64_t r = lc.r, hv = lc.hv, n = lc.n, ci = lc.ci, first = lc.first, c0 = lc.c0;
    const int64_t V = p.head_dim_v, vp = (V + 31) / 32 * 32;
    const int len = lc.len;
    const ws_buffer w = local_buffer<L>(lsm);
    bf16 *const xb = reinterpret_cast<bf16 *>(lsm + L::xb);
    stage_v_group(p, first, c0, len, hv, 0, xb);
    stage_raw<false>(local_source(p, lc), c0, len, w); /* (commits the v group's copies too) */
    local_gram_and_t(p, lc, w, reinterpret_cast<bf16 *>(lsm + L::ab),
                     reinterpret_cast<float *>(lsm + L::diag), reinterpret_cast<float *>(lsm + L::cum));
    /* W = T diag(beta rk^2 gam) K into the q rows (dead since the Gram products) */
    unsigned char *rec = record_at(p, r, hv);
    scale_rows(w.kb, w, true);
    scale_rows(xb, w, false);
    __syncthreads();
    t_times_rows(w.tb, w.kb, w.qb);
    /* U0 = T diag(beta rk) V, 128 columns at a time (through the k rows) */
    const int groups = (int)((vp + 127) / 128);
    for (int grp = 0; grp < groups; grp++) {
        if (grp > 0) {
            stage_v_group(p, first, c0, len, hv, grp, xb);
            copy_async_commit();
            copy_async_wait<0>();
            __syncthreads();
            scale_rows(xb, w, false);
        }
        __syncthreads(); /* xb scaled */
        t_times_rows(w.tb, xb, w.kb);
        __syncthreads(); /* U0's group in the k rows, W in the q rows */
        if (grp == 0)
            for (int i = threadIdx.x; i < kChunk * 16; i += kGroupThreads)
                *reinterpret_cast<uint4 *>(rec + record_wy::w + (i / 16) * 256 + 16 * (i % 16)) =
                    *reinterpret_cast<const uint4 *>(w.qb + (i / 16) * kLdB + 8 * (i % 16));
        const int cols = (int)(vp - 128 * grp < 128 ? vp - 128 * grp : 128), pieces = cols / 8;
        for (int i = threadIdx.x; i < kChunk * pieces; i += kGroupThreads) {
            const int row = i / pieces, pc = i % pieces;
            *reinterpret_cast<uint4 *>(rec + record_wy::u0 + (row * vp + 128 * grp + 8 * pc) * 2) =
                *reinterpret_cast<const uint4 *>(w.kb + row * kLdB + 8 * pc);
        }
        __syncthreads(); /* the k rows are read out before the next group's products write them */
    }

    /* P (its blocks above the diagonal as zeros), the gates, the tag */
    {
        const int piece = threadIdx.x % 8, row0 = threadIdx.x / 8;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int row = row0 + 16 * j, off = (row * kLdP + 8 * piece) * 2;
            const uint4 x = piece / 2 <= j ? *reinterpret_cast<const uint4 *>(lsm + L::pb + off)
                                           : make_uint4(0u, 0u, 0u, 0u);
            *reinterpret_cast<uint4 *>(rec + record_wy::p + off) = x;
        }
        if (threadIdx.x < kChunk) /* P's padding columns, as in prefill_chunk_local */
            *reinterpret_cast<uint4 *>(rec + record_wy::p + (threadIdx.x * kLdP + kChunk) * 2) =
                make_uint4(0u, 0u, 0u, 0u);
    }
    if (threadIdx.x < 5 * kChunk / 4)
        reinterpret_cast<uint4 *>(rec + record_wy::gates)[threadIdx.x] =
            reinterpret_cast<const uint4 *>(w.gam)[threadIdx.x];
    if (threadIdx.x == 0)
        *reinterpret_cast<int64_t *>(rec + record_wy::tag) = record_tag(n, ci);
}

/* Whether every record of sequence n carries its tag, by the whole block (only bad cu_seqlens
 * elsewhere in the call can break that): else the sequence is counted as bad and its walk skipped
 * before anything is written. */
__device__ __forceinline__ bool records_tagged(const gdn_problem &p, int64_t n, int64_t rec0, int64_t chunks,
                                               int64_t hv)
{
    int mismatch = 0;
    for (int64_t ci = threadIdx.x; ci < chunks; ci += blockDim.x)
        mismatch |= *record_tag_at(p, record_at(p, rec0 + ci, hv)) != record_tag(n, ci);
    if (__syncthreads_or(mismatch)) {
        skip_bad_row(p);
        return false;
    }
    return true;
}

/* Shared memory of the walk: three chunk buffers (q, k, the v slice, T, P, the gates), the
 * state slice as bf16, Z', U' and U' scaled by the decays. */
struct split_smem {
    static constexpr int sb = kBuffers * ws_smem::buffer;
    static constexpr int zb = sb + kSlice * kLdB * 2;
    static constexpr int ub = zb + kChunk * kLdU * 2;
    static constexpr int udb = ub + kChunk * kLdU * 2;
    static constexpr int bytes = udb + kChunk * kLdU * 2;
    static constexpr int bars = bytes; /* (GDN_PREFILL_BULK) an mbarrier a buffer */
    static constexpr int bulk_bytes = bars + kBuffers * 8;
};
static_assert(split_smem::sb % 16 == 0 && split_smem::bulk_bytes + 4096 <= 227 * 1024 &&
                  split_smem::bars % 8 == 0,
              "fits a block");

/* Chunk ci's rows and record into buffer w, by all 256 threads (one cp.async group). */
static_assert(kChunkWarps * 32 == 256, "stage_split's thread map");
template <bool RECORD = true> /* false: the record comes by a bulk copy of its own */
__device__ __forceinline__ void stage_split(const stage_source<bf16> &src, int64_t c0, int len,
                                            const unsigned char *rec, const ws_buffer &w)
{
    const int tid = threadIdx.x;
    if (src.async && src.rows_v == kSlice) {
        const int r0 = tid / 16, c = 8 * (tid % 16);
#pragma unroll
        for (int i = 0; i < kChunk / 16; i++) {
            const int r = r0 + 16 * i;
            const bool real = r < len;
            copy_async16(reinterpret_cast<uint4 *>(w.qb + r * kLdB + c),
                         real ? src.q + (c0 + r) * src.q_stride + c : src.q, real);
            copy_async16(reinterpret_cast<uint4 *>(w.kb + r * kLdB + c),
                         real ? src.k + (c0 + r) * src.k_stride + c : src.k, real);
        }
        const int rv = tid / 4, cv = 8 * (tid % 4);
        const bool real = rv < len;
        copy_async16(reinterpret_cast<uint4 *>(w.vb + rv * kLdV + cv),
                     real ? src.v + (c0 + rv) * src.v_stride + cv : src.v, real);
    } else {
        const bf16 zero = __float2bfloat16_rn(0.0f);
        for (int i = tid; i < kChunk * kRowK; i += 256) {
            const int r = i / kRowK, c = i % kRowK;
            w.qb[r * kLdB + c] = r < len ? src.q[(c0 + r) * src.q_stride + c] : zero;
            w.kb[r * kLdB + c] = r < len ? src.k[(c0 + r) * src.k_stride + c] : zero;
        }
        for (int i = tid; i < kChunk * kSlice; i += 256) {
            const int r = i / kSlice, c = i % kSlice;
            w.vb[r * kLdV + c] = r < len && c < src.rows_v ? src.v[(c0 + r) * src.v_stride + c] : zero;
        }
    }
    /* the record, as it is: the image of tb, pb and the gates */
    for (int i = tid; RECORD && i < record_layout::image / 16; i += 256)
        copy_async16(reinterpret_cast<uint4 *>(w.tb) + i, rec + 16 * i, true);
    copy_async_commit();
}

/* acc = X S^T for token rows 16 tb.. of X (C rows of 128 at stride kLdB) and the slice's 32 state
 * rows (sb, bf16): the split walks' product of the state. */
__device__ __forceinline__ void rows_times_state(const bf16 *X, const bf16 *sb, int tb, float (&acc)[4][4])
{
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            acc[j][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kRowK; kk += 16) {
        unsigned a[4];
        ldsm_x4(a, frag_a_rows(X, kLdB, 16 * tb, kk));
#pragma unroll
        for (int pr = 0; pr < 2; pr++) {
            unsigned bb[4];
            ldsm_x4(bb, frag_b2_nk(sb, kLdB, 16 * pr, kk));
            mma_bf16(acc[2 * pr], a, bb);
            mma_bf16(acc[2 * pr + 1], a, bb + 2);
        }
    }
}

/* Pieces first .. first + COUNT - 1 of a record's image (16 bytes each) into the buffer's tb by
 * THREADS threads, thread t taking first + t, first + t + THREADS, ...: the running-pointer
 * stages' record copy. */
template <int THREADS, int COUNT>
__device__ __forceinline__ void copy_record_pieces(bf16 *tb, const unsigned char *rec, int first, int t)
{
#pragma unroll
    for (int j = 0; j < (COUNT + THREADS - 1) / THREADS; j++) {
        const int i = t + THREADS * j;
        if ((j + 1) * THREADS <= COUNT || i < COUNT)
            copy_async16(reinterpret_cast<uint4 *>(tb) + first + i, rec + 16 * (first + i), true);
    }
}

/* Where a thread's staging copies of the next chunk come from (GDN_PREFILL_LEAN, the default): its pieces
 * of q, k and v and the record, advanced by a chunk after each stage. ncu of the split walk (H200,
 * 3a9e806, 1x4096) counted ~586 instructions a warp a chunk, ~250 of them stage_split's: 64-bit
 * products of row and stride for every piece, the record's address and ci % 3 in 64 bits, the
 * problem's fields reloaded; and every warp does them between the block barrier and its first
 * product, inside the serial chain. With running pointers a full chunk's stage is its 14 copies
 * and a few additions (the last, partial chunk and unaligned rows take stage_split). */
struct split_cursor {
    const bf16 *q, *k, *v;    /* row r0 of q and k (piece tid % 16), row tid / 4 of v, of the next chunk */
    const unsigned char *rec; /* the next chunk's record */
    int64_t q16, k16;         /* 16 rows of q and k */
    int64_t q_next, k_next, v_next, rec_next; /* one chunk */
    int64_t c0;                               /* the next chunk's first token */
    int buf;                                  /* and its buffer */
};

__device__ __forceinline__ split_cursor split_cursor_at(const gdn_problem &p, const stage_source<bf16> &src,
                                                        const unsigned char *rec0)
{
    const int tid = threadIdx.x;
    split_cursor cur;
    cur.q = src.q + (int64_t)(tid / 16) * src.q_stride + 8 * (tid % 16);
    cur.k = src.k + (int64_t)(tid / 16) * src.k_stride + 8 * (tid % 16);
    cur.v = src.v + (int64_t)(tid / 4) * src.v_stride + 8 * (tid % 4);
    cur.rec = rec0;
    cur.q16 = 16 * src.q_stride, cur.k16 = 16 * src.k_stride;
    cur.q_next = kChunk * src.q_stride, cur.k_next = kChunk * src.k_stride,
    cur.v_next = kChunk * src.v_stride;
    cur.rec_next = p.num_v_heads * record_bytes(p);
    cur.c0 = 0, cur.buf = 0;
    return cur;
}

/* The next chunk (len tokens) into its buffer, then the cursor one chunk on. */
__device__ __forceinline__ void stage_split_lean(const stage_source<bf16> &src, split_cursor &cur, int len,
                                                 unsigned char *smb)
{
    const ws_buffer w = ws_buffer_at(smb, cur.buf);
    if (src.async && src.rows_v == kSlice && len == kChunk) {
        const int tid = threadIdx.x, r0 = tid / 16, c = 8 * (tid % 16);
        const bf16 *q = cur.q, *k = cur.k;
#pragma unroll
        for (int i = 0; i < kChunk / 16; i++) {
            copy_async16(reinterpret_cast<uint4 *>(w.qb + (r0 + 16 * i) * kLdB + c), q, true);
            copy_async16(reinterpret_cast<uint4 *>(w.kb + (r0 + 16 * i) * kLdB + c), k, true);
            q += cur.q16, k += cur.k16;
        }
        copy_async16(reinterpret_cast<uint4 *>(w.vb + (tid / 4) * kLdV + 8 * (tid % 4)), cur.v, true);
        copy_record_pieces<256, record_layout::image / 16>(w.tb, cur.rec, 0, tid);
        copy_async_commit();
    } else {
        stage_split(src, cur.c0, len, cur.rec, w);
    }
    cur.q += cur.q_next, cur.k += cur.k_next, cur.v += cur.v_next, cur.rec += cur.rec_next;
    cur.c0 += kChunk, cur.buf = cur.buf == kBuffers - 1 ? 0 : cur.buf + 1;
}

/* Staging spread over the warps' slack (GDN_PREFILL_SPREAD, on top of the running pointers; the
 * default).
 * ncu of the lean walk (H100, 012cd2a, qwen3-next 1x4096) put ~25% of its stall samples on the
 * stage itself: every warp issues ~22 cp.async right after the loop's first barrier, and the
 * copies' address registers wait on the memory pipe before the first product can start. Each
 * warp has idle time elsewhere in a chunk: warps 4-7 (Q S^T) wait at the Z' barrier for warps
 * 0-3's z_rows, and warps 0-3 wait at the loop's barrier for warps 4-7's outputs. So warps 4-7
 * copy chunk ci + 2's q rows, v rows and the first half of its record right after their Q S^T,
 * and warps 0-3 its k rows and the record's second half after their state update. Each thread
 * still commits one cp.async group a chunk, so the loop's wait_group<1> is unchanged. */
struct spread_cursor {
    const bf16 *rows;         /* q (warps 4-7) or k (warps 0-3): row t / 16, piece t % 16, t = tid % 128 */
    const bf16 *v;            /* (warps 4-7) v row t / 4, piece t % 4; and 32 rows on */
    const unsigned char *rec; /* the record */
    int64_t rows8, rows_next, v32, v_next, rec_next;
};

/* The cursor at chunk 2 (chunks 0 and 1 are staged before the loop). */
__device__ __forceinline__ spread_cursor spread_cursor_at(const gdn_problem &p, const stage_source<bf16> &src,
                                                          const unsigned char *rec0, bool qwarp)
{
    const int t = threadIdx.x % 128;
    const int64_t stride = qwarp ? src.q_stride : src.k_stride;
    spread_cursor cur;
    cur.rows = (qwarp ? src.q : src.k) + (2 * kChunk + t / 16) * stride + 8 * (t % 16);
    cur.v = src.v + (2 * kChunk + t / 4) * src.v_stride + 8 * (t % 4);
    cur.rows8 = 8 * stride, cur.rows_next = kChunk * stride;
    cur.v32 = 32 * src.v_stride, cur.v_next = kChunk * src.v_stride;
    cur.rec_next = p.num_v_heads * record_bytes(p);
    cur.rec = rec0 + 2 * cur.rec_next;
    return cur;
}

/* This warp group's half of a full chunk into buffer w (one cp.async group), then the cursor one
 * chunk on. */
static_assert(record_layout::image % 32 == 0 && kSlice == 32, "the record in two halves; v rows of 4 pieces");
template <bool RECORD = true> /* false: the record comes by a bulk copy of its own */
__device__ __forceinline__ void stage_spread(spread_cursor &cur, bool qwarp, const ws_buffer &w)
{
    const int t = threadIdx.x % 128;
    bf16 *const dst = (qwarp ? w.qb : w.kb) + (t / 16) * kLdB + 8 * (t % 16);
    const bf16 *src = cur.rows;
#pragma unroll
    for (int i = 0; i < kChunk / 8; i++) {
        copy_async16(reinterpret_cast<uint4 *>(dst + 8 * i * kLdB), src, true);
        src += cur.rows8;
    }
    if (qwarp) {
        bf16 *const vd = w.vb + (t / 4) * kLdV + 8 * (t % 4);
        copy_async16(reinterpret_cast<uint4 *>(vd), cur.v, true);
        copy_async16(reinterpret_cast<uint4 *>(vd + 32 * kLdV), cur.v + cur.v32, true);
    }
    constexpr int half = record_layout::image / 32; /* 16-byte pieces a group */
    if constexpr (RECORD)
        copy_record_pieces<128, half>(w.tb, cur.rec, qwarp ? 0 : half, t);
    copy_async_commit();
    cur.rows += cur.rows_next, cur.v += cur.v_next, cur.rec += cur.rec_next;
}

/* Sequence n's walk over its chunks with the records of prefill_chunk_local, all 8 warps on the
 * state work. Warp w: K S^T (w < 4) or Q S^T (w >= 4) for token block w % 4; U' = T Z' for
 * columns 8 (w % 4).. and row blocks {0, 3} or {1, 2}; the outputs (w >= 4, its token block);
 * the state's rows 16 (w / 4).., columns 32 (w % 4).. in registers. Three block barriers a chunk;
 * cp.async fills chunk ci + 2 while ci is computed. */
template <typename St, int STAGING> /* 0: stage_split; 1: running pointers; 2: and spread; 3: and
                                        the records by bulk copies (bulk_phase: the parity each
                                        buffer's mbarrier waits for next, across sequences) */
__device__ void chunked_sequence_split(const gdn_problem &p, int64_t n, unsigned char *smb,
                                       unsigned &bulk_phase)
{
    typedef bf16 Act;
    bf16 *const sb = reinterpret_cast<bf16 *>(smb + split_smem::sb);
    bf16 *const zb = reinterpret_cast<bf16 *>(smb + split_smem::zb);
    bf16 *const ub = reinterpret_cast<bf16 *>(smb + split_smem::ub);
    bf16 *const udb = reinterpret_cast<bf16 *>(smb + split_smem::udb);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4;
    seq_part<Act> sp;
    if (!open_sequence<Act>(p, n, sp))
        return;
    const block_coords bc = sp.bc;
    const int64_t V = sp.V, v0 = sp.v0, first = sp.first, read = sp.read, write = sp.write;
    const int rows_v = sp.rows_v;
    const int64_t chunks = sp.chunks(), rec0 = first_record(p, n);
    auto chunk_len = [&](int64_t ci) { return sp.chunk_len(ci); };

    if (!records_tagged(p, n, rec0, chunks, bc.hv))
        return;

    /* chunk ci into buffer ci % 3 by cp.async, one group a chunk (bulk copies of the rows by one
     * warp were 2.3x slower on the H100, 046a0e6: the lanes' copies are issued one after another) */
    constexpr bool LEAN = STAGING == 1, BULK = STAGING == 3;
    uint64_t *const bars = reinterpret_cast<uint64_t *>(smb + split_smem::bars);
    /* (BULK) chunk ci's record into buffer b by thread `by` */
    auto record_by = [&](int64_t ci, int b, int by) {
        if (BULK && threadIdx.x == by)
            bulk_record(p, rec0 + ci, bc.hv, ws_buffer_at(smb, b).tb, bars + b);
    };
    split_cursor cur = split_cursor_at(p, sp.src, record_at(p, rec0, bc.hv));
    auto stage = [&](int64_t ci) {
        if constexpr (LEAN)
            stage_split_lean(sp.src, cur, chunk_len(ci), smb);
        else
            stage_split<!BULK>(sp.src, ci * kChunk, chunk_len(ci), record_at(p, rec0 + ci, bc.hv),
                               ws_buffer_at(smb, (int)(ci % kBuffers)));
        record_by(ci, (int)(ci % kBuffers), 0);
    };
    spread_cursor spread = spread_cursor_at(p, sp.src, record_at(p, rec0, bc.hv), warp >= 4);
    const bool spread_rows = STAGING >= 2 && sp.src.async && rows_v == kSlice;
    stage(0);
    if (chunks > 1)
        stage(1);
    else
        copy_async_commit();
    /* output stores by bf16 pairs where every pair is 4-byte aligned and the slice is whole */
    const bool pairs = rows_v == kSlice && reinterpret_cast<uintptr_t>(p.out) % 4 == 0 &&
                       p.out_stride % 2 == 0 && (bc.hv * V + v0) % 2 == 0;

    const int tb_ = warp % 4, mv = warp / 4, nk0 = 4 * (warp % 4);
    const bool kwarp = warp < 4;
    float st[4][4];
    load_state_regs<St, 2>(p, bc, read, v0, rows_v, mv, nk0, st, sb);
    int b = 0; /* ci % kBuffers */
    for (int64_t ci = 0; ci < chunks; ci++) {
        const int64_t c0 = ci * kChunk;
        const int len = chunk_len(ci);
        const ws_buffer w = ws_buffer_at(smb, STAGING ? b : (int)(ci % kBuffers));
        const int b2 = b == 0 ? kBuffers - 1 : b - 1;
        const ws_buffer w2 = ws_buffer_at(smb, b2); /* chunk ci + 2's */
        if constexpr (BULK)
            bulk_wait(bars, b, bulk_phase);
        b = b == kBuffers - 1 ? 0 : b + 1;
        const bool spread_now = spread_rows && ci + 2 < chunks && chunk_len(ci + 2) == kChunk;
        copy_async_wait<1>();
        __syncthreads(); /* chunk ci has landed, sb holds the state, buffer (ci + 2) % 3 is free */
        if (spread_now)
            ; /* (staged by the two warp groups below) */
        else if (ci + 2 < chunks)
            stage(ci + 2);
        else
            copy_async_commit();

        /* K S^T (Z' = beta rk (v - gam rk K S^T)) or Q S^T (the outputs' first term) */
        float acc[4][4];
        rows_times_state(kwarp ? w.kb : w.qb, sb, tb_, acc);
        if (kwarp)
            z_rows(w, acc, tb_, zb);
        else
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const int row = 16 * tb_ + g + 8 * half;
                const float gq = w.gam[row] * w.rq[row];
#pragma unroll
                for (int j = 0; j < 4; j++)
                    acc[j][2 * half] *= gq, acc[j][2 * half + 1] *= gq;
            }
        if (spread_now && !kwarp) {
            stage_spread<!BULK>(spread, true, w2);
            record_by(ci + 2, b2, 4 * 32);
        }
        __syncthreads(); /* Z' */

        /* U' = T Z': columns 8 (w % 4).., row blocks {0, 3} (w < 4) or {1, 2} */
        {
            const int n0 = 8 * (warp % 4);
            unsigned zf[4][2];
#pragma unroll
            for (int kb = 0; kb < 4; kb++)
                ldsm_x2_t(zf[kb], frag_b1_kn(zb, kLdU, n0, 16 * kb));
            if (kwarp) {
                u_block(w, zf, 0, n0, ub, udb);
                u_block(w, zf, 3, n0, ub, udb);
            } else {
                u_block(w, zf, 1, n0, ub, udb);
                u_block(w, zf, 2, n0, ub, udb);
            }
        }
        __syncthreads(); /* U', U' dec */

        if (!kwarp)
            finish_outputs<Act>(p, w.pb, ub, acc, tb_, len, rows_v, first + c0, bc.hv * V + v0,
                                pairs && len == kChunk);

        update_state_regs<2>(st, udb, w.kb, sb, mv, nk0, w.gam[kChunk - 1]);
        if (spread_now && kwarp)
            stage_spread<!BULK>(spread, false, w2);
    }
    copy_async_wait<0>();
    if (write >= 0)
        store_state_regs<St, 2>(p, bc, write, v0, rows_v, mv, nk0, st);
    __syncthreads(); /* the next sequence reuses the shared memory */
}

/* ---- the WY form's walk: U' = U0 - W S^T, then the outputs and the state update ---------------
 *
 * The split walk's serial chain a chunk is K S^T, Z', a block barrier, U' = T Z', a barrier, then
 * the state update; with W and U0 from the WY records it is W S^T, U', a barrier, the state
 * update: one product, one barrier and the v rows fewer. Warps 0-3: W S^T for token block w % 4,
 * then U' and U' dec into shared memory; warps 4-7: Q S^T (the outputs' first term), then P U'
 * and the outputs; all: the state's rows 16 (w / 4).., columns 32 (w % 4).. in registers. */
struct wy_buffer_layout {
    static constexpr int qb = 0;                         /* [C][kLdB] raw q */
    static constexpr int kb = qb + kChunk * kLdB * 2;    /* [C][kLdB] raw k */
    static constexpr int wb = kb + kChunk * kLdB * 2;    /* [C][kLdB] W */
    static constexpr int u0b = wb + kChunk * kLdB * 2;   /* [C][kLdV] U0's columns of the slice */
    static constexpr int pb = u0b + kChunk * kLdV * 2;   /* [C][kLdP] P */
    static constexpr int gates = pb + kChunk * kLdP * 2; /* gam, dec, beta, rq, rk */
    static constexpr int buffer = gates + 5 * kChunk * 4;
};
struct split_wy_smem {
    static constexpr int sb = kBuffers * wy_buffer_layout::buffer; /* [kSlice][kLdB] S as bf16 */
    static constexpr int ub = sb + kSlice * kLdB * 2;              /* [C][kLdU] U' */
    static constexpr int udb = ub + kChunk * kLdU * 2;             /* [C][kLdU] U' dec */
    static constexpr int bytes = udb + kChunk * kLdU * 2;
};
static_assert(wy_buffer_layout::buffer % 16 == 0 && wy_buffer_layout::u0b % 16 == 0 &&
                  wy_buffer_layout::gates - wy_buffer_layout::pb == record_wy::gates &&
                  split_wy_smem::bytes + 4096 <= 227 * 1024,
              "a WY buffer's pb and gates are the record's image; the block fits");

/* Chunk ci's rows and its WY record (W, the slice's columns of U0 from v0, P and the gates) into
 * the buffer at buf, by all 256 threads (one cp.async group). */
__device__ __forceinline__ void stage_wy(const stage_source<bf16> &src, int64_t c0, int len,
                                         const unsigned char *rec, int64_t v0, int64_t vp, unsigned char *buf)
{
    typedef wy_buffer_layout B;
    const int tid = threadIdx.x;
    bf16 *const qb = reinterpret_cast<bf16 *>(buf + B::qb), *const kb = reinterpret_cast<bf16 *>(buf + B::kb);
    const int r0 = tid / 16, c = 8 * (tid % 16);
    if (src.async) {
#pragma unroll
        for (int i = 0; i < kChunk / 16; i++) {
            const int r = r0 + 16 * i;
            const bool real = r < len;
            copy_async16(reinterpret_cast<uint4 *>(qb + r * kLdB + c),
                         real ? src.q + (c0 + r) * src.q_stride + c : src.q, real);
            copy_async16(reinterpret_cast<uint4 *>(kb + r * kLdB + c),
                         real ? src.k + (c0 + r) * src.k_stride + c : src.k, real);
        }
    } else {
        const bf16 zero = __float2bfloat16_rn(0.0f);
        for (int i = tid; i < kChunk * kRowK; i += 256) {
            const int r = i / kRowK, cc = i % kRowK;
            qb[r * kLdB + cc] = r < len ? src.q[(c0 + r) * src.q_stride + cc] : zero;
            kb[r * kLdB + cc] = r < len ? src.k[(c0 + r) * src.k_stride + cc] : zero;
        }
    }
    /* the record is 16-byte aligned whatever the activations */
#pragma unroll
    for (int i = 0; i < kChunk / 16; i++) {
        const int r = r0 + 16 * i;
        copy_async16(reinterpret_cast<uint4 *>(buf + B::wb + (r * kLdB + c) * 2),
                     rec + record_wy::w + r * 256 + 2 * c, true);
    }
    {
        const int rv = tid / 4, cv = 8 * (tid % 4);
        copy_async16(reinterpret_cast<uint4 *>(buf + B::u0b + (rv * kLdV + cv) * 2),
                     rec + record_wy::u0 + (rv * vp + v0 + cv) * 2, true);
    }
    for (int i = tid; i < record_wy::image / 16; i += 256)
        copy_async16(reinterpret_cast<uint4 *>(buf + B::pb) + i, rec + record_wy::p + 16 * i, true);
    copy_async_commit();
}

template <typename St>
__device__ void chunked_sequence_wy(const gdn_problem &p, int64_t n, unsigned char *smb)
{
    typedef bf16 Act;
    typedef wy_buffer_layout B;
    bf16 *const sb = reinterpret_cast<bf16 *>(smb + split_wy_smem::sb);
    bf16 *const ub = reinterpret_cast<bf16 *>(smb + split_wy_smem::ub);
    bf16 *const udb = reinterpret_cast<bf16 *>(smb + split_wy_smem::udb);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t4 = lane % 4;
    seq_part<Act> sp;
    if (!open_sequence<Act>(p, n, sp))
        return;
    const block_coords bc = sp.bc;
    const int64_t V = sp.V, v0 = sp.v0, first = sp.first, read = sp.read, write = sp.write;
    const int64_t vp = (V + 31) / 32 * 32;
    const int rows_v = sp.rows_v;
    const int64_t chunks = sp.chunks(), rec0 = first_record(p, n);
    auto chunk_len = [&](int64_t ci) { return sp.chunk_len(ci); };

    if (!records_tagged(p, n, rec0, chunks, bc.hv))
        return;
    auto stage = [&](int64_t ci) {
        stage_wy(sp.src, ci * kChunk, chunk_len(ci), record_at(p, rec0 + ci, bc.hv), v0, vp,
                 smb + (ci % kBuffers) * B::buffer);
    };
    stage(0);
    if (chunks > 1)
        stage(1);
    else
        copy_async_commit();
    const bool pairs = rows_v == kSlice && reinterpret_cast<uintptr_t>(p.out) % 4 == 0 &&
                       p.out_stride % 2 == 0 && (bc.hv * V + v0) % 2 == 0;

    const int tb_ = warp % 4, mv = warp / 4, nk0 = 4 * (warp % 4);
    const bool wwarp = warp < 4;
    float st[4][4];
    load_state_regs<St, 2>(p, bc, read, v0, rows_v, mv, nk0, st, sb);
    for (int64_t ci = 0; ci < chunks; ci++) {
        const int64_t c0 = ci * kChunk;
        const int len = chunk_len(ci);
        unsigned char *const buf = smb + (ci % kBuffers) * B::buffer;
        const bf16 *const qb = reinterpret_cast<const bf16 *>(buf + B::qb);
        const bf16 *const kb = reinterpret_cast<const bf16 *>(buf + B::kb);
        const bf16 *const wb = reinterpret_cast<const bf16 *>(buf + B::wb);
        const bf16 *const u0b = reinterpret_cast<const bf16 *>(buf + B::u0b);
        const bf16 *const pb = reinterpret_cast<const bf16 *>(buf + B::pb);
        const float *const gam = reinterpret_cast<const float *>(buf + B::gates), *const dec = gam + kChunk,
                           *const rq = gam + 3 * kChunk;
        copy_async_wait<1>();
        __syncthreads(); /* chunk ci has landed, sb holds the state, buffer (ci + 2) % 3 is free */
        if (ci + 2 < chunks)
            stage(ci + 2);
        else
            copy_async_commit();

        /* W S^T (U' = U0 - W S^T) or Q S^T (the outputs' first term) */
        float acc[4][4];
        rows_times_state(wwarp ? wb : qb, sb, tb_, acc);
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int row = 16 * tb_ + g + 8 * half;
            if (wwarp) {
                const float f = dec[row];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const int col = 8 * j + 2 * t4;
                    const float2 u0 =
                        __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(u0b + row * kLdV + col));
                    const float x0 = u0.x - acc[j][2 * half], x1 = u0.y - acc[j][2 * half + 1];
                    store_bf16_pair(ub + row * kLdU + col, x0, x1);
                    store_bf16_pair(udb + row * kLdU + col, x0 * f, x1 * f);
                }
            } else {
                const float gq = gam[row] * rq[row];
#pragma unroll
                for (int j = 0; j < 4; j++)
                    acc[j][2 * half] *= gq, acc[j][2 * half + 1] *= gq;
            }
        }
        __syncthreads(); /* U', U' dec */

        if (!wwarp)
            finish_outputs<Act>(p, pb, ub, acc, tb_, len, rows_v, first + c0, bc.hv * V + v0,
                                pairs && len == kChunk);
        update_state_regs<2>(st, udb, kb, sb, mv, nk0, gam[kChunk - 1]);
    }
    copy_async_wait<0>();
    if (write >= 0)
        store_state_regs<St, 2>(p, bc, write, v0, rows_v, mv, nk0, st);
    __syncthreads(); /* the next sequence reuses the shared memory */
}

/* ---- the walk on wgmma (sm_90a): one warpgroup per slice of 32 state rows ------------------
 *
 * The split path's walk issues ~610 instructions a warp a chunk on mma.sync, most of them to move
 * the B fragments (the state, Z', U') from shared memory into registers and to issue one mma per
 * 16 x 8 tile. Hopper's wgmma reads B straight from shared memory through a descriptor and does a
 * 64 x 32 x 16 product in one instruction for the whole warpgroup, so each warpgroup here carries
 * the complete chunk of its slice in ~32 wgmma and a few dozen other instructions:
 * with the state transposed (S^T, k x v, is the accumulator):
 *     Z  = K S^T                 (A = K rows by descriptor, B = S as bf16, 8 k-steps)
 *     O  = Q S^T                 (the outputs' first term, issued with Z)
 *     Z' = beta rk (v - gam rk Z) -> shared memory as B
 *     U' = T Z'                  (A = T from the record by ldmatrix, 4 k-steps)
 *     O  = gam rq O + P U'       (A = P by ldmatrix)
 *     S^T = e^{G_last} S^T + K^T (U' e^{G_last - G_t})  (A = K^T by ldmatrix.trans, M = 128 as two tiles)
 * A block holds WGS warpgroups on WGS consecutive slices of the same head; they share the staged
 * chunk (q, k, the record) and keep their own chains apart (named barrier per warpgroup, one
 * block barrier a chunk for the staging buffers). WGS = 1 puts one slice on each multiprocessor
 * (few sequences: latency decides), WGS = 4 a whole head (many sequences: the staging and the
 * tensor cores decide).
 *
 * Every B operand (and the A operands read by descriptor: q and k) lies in shared memory in the
 * core-matrix layout of wgmma.cuh. */

/* Shared memory of the wgmma walk, in bytes: the chunk buffers (q and k in the core-matrix layout,
 * the v columns of the block's slices, the record's image), then per warpgroup S, Z', U' and
 * U' e^{G_last - G_t} as bf16 B operands. Three buffers but two with four warpgroups (227 KiB). */
template <int WGS> struct wg_smem {
    static constexpr int buffers = WGS == 4 ? 2 : 3;
    static constexpr int ldv = kSlice * WGS + 8; /* bf16 between rows of v */
    static constexpr int qb = 0;                 /* [C][128] core */
    static constexpr int kb = qb + kChunk * kRowK * 2;
    static constexpr int vb = kb + kChunk * kRowK * 2; /* [C][ldv] */
    static constexpr int tb = vb + kChunk * ldv * 2;   /* the record's T, P and gates */
    static constexpr int buffer = tb + record_layout::image;
    static constexpr int groups = buffers * buffer;
    static constexpr int sv = 0;                        /* [32][128] core: S (v x k) */
    static constexpr int zv = sv + kSlice * kRowK * 2;  /* [32][64] core: Z' (v x t) */
    static constexpr int uv = zv + kSlice * kChunk * 2; /* [32][64] core: U' */
    static constexpr int udv = uv + kSlice * kChunk * 2;
    static constexpr int group = udv + kSlice * kChunk * 2;
    static constexpr int bytes = groups + WGS * group;
};
static_assert(wg_smem<1>::buffer % 128 == 0 && wg_smem<2>::buffer % 128 == 0 && wg_smem<4>::buffer % 128 == 0,
              "buffers on 128-byte boundaries");

/* An accumulator tile (rows r0 + 16 w + g (+ 8) of the warpgroup's 64, columns 8 j + 2 t4 (+ 1) of
 * 32; x: the 16 values of this thread as bf16 pairs, x[2 j + h] = (row + 8 h, columns 8 j + 2 t4..))
 * stored transposed into a core-matrix tile [32][KD] at shared address `at`: element (column,
 * row) = (v, t) of Z', U' or (v, k) of S. Two stmatrix.x4: blocks (h, j) = (0, 2 s), (1, 2 s),
 * (0, 2 s + 1), (1, 2 s + 1) for s = 0, 1. */
template <int KD>
__device__ __forceinline__ void store_transposed(unsigned at, int r0, const unsigned (&x)[8])
{
    const int lane = threadIdx.x % 32, wq = (threadIdx.x / 32) % 4;
    const int i = lane / 8, r = lane % 8;
#pragma unroll
    for (int s = 0; s < 2; s++) {
        const int j = 2 * s + i / 2, h = i % 2;
        stsm_x4_t(at + core_offset<KD>(8 * j + r, r0 + 16 * wq + 8 * h), x[4 * s], x[4 * s + 1], x[4 * s + 2],
                  x[4 * s + 3]);
    }
}

/* Chunk rows [c0, c0 + len) and the record into the buffer at `buf`, by the block's THREADS
 * threads (the head walk: the layout of 4 slices, 256 threads). */
template <int WGS, bool RECORD = true, /* false: the record comes by a bulk copy of its own */
          int THREADS = 128 * WGS>
__device__ __forceinline__ void stage_wg(const stage_source<bf16> &src, int64_t c0, int len, int cols_v,
                                         const unsigned char *rec, unsigned char *buf)
{
    typedef wg_smem<WGS> L;
    constexpr int threads = THREADS;
    const int tid = threadIdx.x;
    unsigned char *const qb = buf + L::qb, *const kb = buf + L::kb;
    bf16 *const vb = reinterpret_cast<bf16 *>(buf + L::vb);
    if (src.async && cols_v == kSlice * WGS) {
        /* thread tid: 16-byte piece tid % 16 of q and k rows tid / 16 + rstep j (each rstep rows
         * further: rstep * 256 bytes in the core layout), piece tid % (4 WGS) of v rows
         * tid / (4 WGS) + vstep j */
        constexpr int rstep = threads / 16;
        const int r0 = tid / 16, c = 8 * (tid % 16);
        const bf16 *q = src.q + (c0 + r0) * src.q_stride + c, *k = src.k + (c0 + r0) * src.k_stride + c;
        const int64_t qj = (int64_t)rstep * src.q_stride, kj = (int64_t)rstep * src.k_stride;
        unsigned char *const qd = qb + core_offset<kRowK>(r0, c), *const kd = kb + core_offset<kRowK>(r0, c);
#pragma unroll
        for (int j = 0; j < kChunk / rstep; j++) {
            const bool real = r0 + rstep * j < len;
            copy_async16(reinterpret_cast<uint4 *>(qd + rstep * 256 * j), real ? q + j * qj : src.q, real);
            copy_async16(reinterpret_cast<uint4 *>(kd + rstep * 256 * j), real ? k + j * kj : src.k, real);
        }
        constexpr int vstep = threads / (4 * WGS); /* v rows a pass */
        const int rv = tid / (4 * WGS), cv = 8 * (tid % (4 * WGS));
        const bf16 *v = src.v + (c0 + rv) * src.v_stride + cv;
#pragma unroll
        for (int j = 0; j < kChunk / vstep; j++) {
            const bool real = rv + vstep * j < len;
            copy_async16(reinterpret_cast<uint4 *>(vb + (rv + vstep * j) * L::ldv + cv),
                         real ? v + vstep * j * src.v_stride : src.v, real);
        }
    } else {
        const bf16 zero = __float2bfloat16_rn(0.0f);
        for (int i = tid; i < kChunk * kRowK; i += threads) {
            const int r = i / kRowK, c = i % kRowK;
            *reinterpret_cast<bf16 *>(qb + core_offset<kRowK>(r, c)) =
                r < len ? src.q[(c0 + r) * src.q_stride + c] : zero;
            *reinterpret_cast<bf16 *>(kb + core_offset<kRowK>(r, c)) =
                r < len ? src.k[(c0 + r) * src.k_stride + c] : zero;
        }
        for (int i = tid; i < kChunk * kSlice * WGS; i += threads) {
            const int r = i / (kSlice * WGS), c = i % (kSlice * WGS);
            vb[r * L::ldv + c] = r < len && c < cols_v ? src.v[(c0 + r) * src.v_stride + c] : zero;
        }
    }
    for (int i = tid; RECORD && i < record_layout::image / 16; i += threads)
        copy_async16(reinterpret_cast<uint4 *>(buf + L::tb) + i, rec + 16 * i, true);
    copy_async_commit();
}

/* Sequence n's walk for the block's WGS slices, warpgroup wg on slice blockIdx.x * WGS + wg. The
 * state of the slice is the accumulator of S^T (k x v): st[mt] holds rows k = 64 mt + 16 w + g (+ 8),
 * columns v = 8 j + 2 t4 (+ 1) for warp w of the warpgroup, as wgmma's accumulator layout has it. */
template <typename St, int WGS, bool LATE, bool BULK> /* LATE: the stage after the first products'
                                                        issue; BULK: each record by a bulk copy on
                                                        its buffer's mbarrier (bars; bulk_phase: the
                                                        parities they wait for next) */
__device__ void chunked_sequence_wgmma(const gdn_problem &p, int64_t n, unsigned char *smb, uint64_t *bars,
                                       unsigned &bulk_phase)
{
    typedef wg_smem<WGS> L;
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int wg = threadIdx.x / 128, wq = (threadIdx.x / 32) % 4;
    seq_part<bf16> sp;
    if (!open_sequence<bf16>(p, n, sp, WGS))
        return;
    const block_coords bc = sp.bc;
    const int64_t V = sp.V, first = sp.first, read = sp.read, write = sp.write;
    const int64_t v0 = sp.v0 + kSlice * wg;                    /* this warpgroup's first state row */
    const int rows = (int)(V - v0 < kSlice ? V - v0 : kSlice); /* (<= 0: a warpgroup past V, all zeros) */
    const int64_t chunks = sp.chunks(), rec0 = first_record(p, n);

    if (!records_tagged(p, n, rec0, chunks, bc.hv))
        return;
    auto stage = [&](int64_t ci) {
        unsigned char *const buf = smb + (ci % L::buffers) * L::buffer;
        stage_wg<WGS, !BULK>(sp.src, ci * kChunk, sp.chunk_len(ci), sp.rows_v, record_at(p, rec0 + ci, bc.hv),
                             buf);
        if (BULK && threadIdx.x == 0)
            bulk_record(p, rec0 + ci, bc.hv, buf + L::tb, bars + ci % L::buffers);
    };
    stage(0);
    if (L::buffers > 2 && chunks > 1)
        stage(1);
    else
        copy_async_commit();

    unsigned char *const grp = smb + L::groups + wg * L::group;
    const unsigned sv_at = smem_u32(grp + L::sv), zv_at = smem_u32(grp + L::zv);
    const unsigned uv_at = smem_u32(grp + L::uv), udv_at = smem_u32(grp + L::udv);
    const bool pairs = rows == kSlice && reinterpret_cast<uintptr_t>(p.out) % 4 == 0 &&
                       p.out_stride % 2 == 0 && (bc.hv * V + v0) % 2 == 0;

    /* the initial state (zeros without one) and its bf16 image */
    float st[2][16];
    {
        const bool zero = gdn_zero_initial_state(&p, bc.n);
        const St *tile =
            static_cast<const St *>(p.state_pool) + gdn_tile_offset(&p, read, bc.hv) + v0 * kRowK;
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int i = 0; i < 16; i++) {
                const int k = 64 * mt + 16 * wq + g + 8 * ((i >> 1) & 1), v = 8 * (i >> 2) + 2 * t4 + (i & 1);
                st[mt][i] = !zero && v < rows ? to_float<St>(tile[v * kRowK + k]) : 0.0f;
            }
    }
    /* S as bf16 in sv (the B operand of K S^T and Q S^T) */
    auto state_image = [&]() {
#pragma unroll
        for (int mt = 0; mt < 2; mt++) {
            unsigned x[8];
#pragma unroll
            for (int b = 0; b < 8; b++)
                x[b] = pack_bf16(st[mt][2 * b], st[mt][2 * b + 1]);
            store_transposed<kRowK>(sv_at, 64 * mt, x);
        }
    };
    state_image();
    const int pipe = L::buffers - 1; /* chunks staged ahead */
    for (int64_t ci = 0; ci < chunks; ci++) {
        const int64_t c0 = ci * kChunk;
        const int len = sp.chunk_len(ci);
        unsigned char *const buf = smb + (ci % L::buffers) * L::buffer;
        if constexpr (BULK)
            bulk_wait(bars, (int)(ci % L::buffers), bulk_phase);
        if (L::buffers > 2)
            copy_async_wait<1>();
        else
            copy_async_wait<0>();
        fence_async_smem(); /* the staged rows and this warpgroup's S image, for wgmma */
        __syncthreads();    /* chunk ci has landed; buffer (ci + pipe) % buffers is free */
        auto stage_next = [&]() {
            if (ci + pipe < chunks)
                stage(ci + pipe);
            else
                copy_async_commit();
        };
        if constexpr (!LATE)
            stage_next();
        const unsigned qb_at = smem_u32(buf + L::qb), kb_at = smem_u32(buf + L::kb);
        const bf16 *const vb = reinterpret_cast<const bf16 *>(buf + L::vb) + kSlice * wg;
        const bf16 *const tb = reinterpret_cast<const bf16 *>(buf + L::tb);
        const bf16 *const pb = tb + kChunk * kLdP;
        const float *const gam = reinterpret_cast<const float *>(buf + L::tb + record_layout::gates);
        const float *const dec = gam + kChunk, *const beta = dec + kChunk, *const rq = beta + kChunk,
                           *const rk = rq + kChunk;

        /* Z = K S^T and O = Q S^T */
        float z[16], o[16];
#pragma unroll
        for (int i = 0; i < 16; i++)
            z[i] = 0.0f, o[i] = 0.0f;
        wg_hold(z), wg_hold(o);
        wg_fence();
#pragma unroll
        for (int ks = 0; ks < kRowK / 16; ks++)
            wgmma_ss(z, core_desc<kRowK>(kb_at + 256 * ks), core_desc<kRowK>(sv_at + 256 * ks));
        wg_commit();
#pragma unroll
        for (int ks = 0; ks < kRowK / 16; ks++)
            wgmma_ss(o, core_desc<kRowK>(qb_at + 256 * ks), core_desc<kRowK>(sv_at + 256 * ks));
        wg_commit();
        /* (GDN_PREFILL_WG_LATE: the copies of chunk ci + pipe issue while the tensor cores run
         * Z and O; ncu of the default, H100 012cd2a qwen3-next 4x4096, had ~29% of the walk's
         * stall samples on the stage's cp.async issued before them; but moving them here
         * changed nothing, 498e0df) */
        if constexpr (LATE)
            stage_next();
        wg_wait<1>();
        wg_hold(z);

        /* Z' = beta rk (v - gam rk Z) as the B operand of U' = T Z' */
        {
            unsigned x[8];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int t = 16 * wq + g + 8 * h;
                const float bt = beta[t] * rk[t], gk = gam[t] * rk[t];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const float2 y = __bfloat1622float2(
                        *reinterpret_cast<const __nv_bfloat162 *>(vb + t * L::ldv + 8 * j + 2 * t4));
                    x[2 * j + h] =
                        pack_bf16(bt * (y.x - gk * z[4 * j + 2 * h]), bt * (y.y - gk * z[4 * j + 2 * h + 1]));
                }
            }
            store_transposed<kChunk>(zv_at, 0, x);
        }
        fence_async_smem();
        named_sync(1 + wg, 128);

        /* U' = T Z' */
        float u[16];
#pragma unroll
        for (int i = 0; i < 16; i++)
            u[i] = 0.0f;
        unsigned ta[4][4];
#pragma unroll
        for (int ks = 0; ks < 4; ks++)
            ldsm_x4(ta[ks], frag_a_rows(tb, kLdP, 16 * wq, 16 * ks));
        wg_hold(u);
        wg_fence();
#pragma unroll
        for (int ks = 0; ks < 4; ks++)
            wgmma_rs(u, ta[ks], core_desc<kChunk>(zv_at + 256 * ks));
        wg_commit();
        wg_wait<0>();
        wg_hold(u), wg_hold(o);

        /* U' and U' e^{G_last - G_t} as B operands; the first output term and the state decayed */
        {
            unsigned xu[8], xd[8];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int t = 16 * wq + g + 8 * h;
                const float f = dec[t], gq = gam[t] * rq[t];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const int i = 4 * j + 2 * h;
                    xu[2 * j + h] = pack_bf16(u[i], u[i + 1]);
                    xd[2 * j + h] = pack_bf16(u[i] * f, u[i + 1] * f);
                    o[i] *= gq, o[i + 1] *= gq;
                }
            }
            store_transposed<kChunk>(uv_at, 0, xu);
            store_transposed<kChunk>(udv_at, 0, xd);
        }
        const float keep = gam[kChunk - 1];
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int i = 0; i < 16; i++)
                st[mt][i] *= keep;
        fence_async_smem();
        named_sync(1 + wg, 128);

        /* O += P U' and S^T += K^T (U' dec); the A fragments stay live until their group is
         * done, so four warpgroups (128 registers) take the two halves of k one after the other */
        constexpr int halves = WGS == 4 ? 2 : 1;
#pragma unroll
        for (int part = 0; part < halves; part++) {
            constexpr int per = 2 / halves;
            unsigned pa[4][4], ka[per][4][4];
#pragma unroll
            for (int ks = 0; ks < 4; ks++) {
                if (part == 0)
                    ldsm_x4(pa[ks], frag_a_rows(pb, kLdP, 16 * wq, 16 * ks));
#pragma unroll
                for (int m = 0; m < per; m++) {
                    /* K^T rows k = 64 mt + 16 wq.., columns t = 16 ks..: k's 16-byte pieces, transposed */
                    const int mt = part * per + m;
                    const int t = 16 * ks + lane % 8 + 8 * (lane / 16),
                              k = 64 * mt + 16 * wq + 8 * ((lane / 8) % 2);
                    ldsm_x4_t(ka[m][ks],
                              reinterpret_cast<const bf16 *>(buf + L::kb + core_offset<kRowK>(t, k)));
                }
            }
            wg_hold(o), wg_hold(st[0]), wg_hold(st[1]);
            wg_fence();
            if (part == 0)
#pragma unroll
                for (int ks = 0; ks < 4; ks++)
                    wgmma_rs(o, pa[ks], core_desc<kChunk>(uv_at + 256 * ks));
#pragma unroll
            for (int m = 0; m < per; m++)
#pragma unroll
                for (int ks = 0; ks < 4; ks++)
                    wgmma_rs(st[part * per + m], ka[m][ks], core_desc<kChunk>(udv_at + 256 * ks));
            wg_commit();
            wg_wait<0>();
            wg_hold(o), wg_hold(st[0]), wg_hold(st[1]);
        }

        /* the outputs of tokens < len, rows < rows; S as bf16 for the next chunk */
        bf16 *const orow = static_cast<bf16 *>(p.out) + (first + c0) * p.out_stride + bc.hv * V + v0;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int t = 16 * wq + g + 8 * h;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int v = 8 * j + 2 * t4, i = 4 * j + 2 * h;
                if (pairs && t < len)
                    store_bf16_pair(orow + t * p.out_stride + v, o[i], o[i + 1]);
                else if (t < len) {
                    if (v < rows)
                        orow[t * p.out_stride + v] = __float2bfloat16_rn(o[i]);
                    if (v + 1 < rows)
                        orow[t * p.out_stride + v + 1] = __float2bfloat16_rn(o[i + 1]);
                }
            }
        }
        state_image();
    }
    copy_async_wait<0>();
    if (write >= 0) {
        St *tile = static_cast<St *>(p.state_pool) + gdn_tile_offset(&p, write, bc.hv) + v0 * kRowK;
#pragma unroll
        for (int mt = 0; mt < 2; mt++)
#pragma unroll
            for (int i = 0; i < 16; i++) {
                const int k = 64 * mt + 16 * wq + g + 8 * ((i >> 1) & 1), v = 8 * (i >> 2) + 2 * t4 + (i & 1);
                if (v < rows)
                    tile[v * kRowK + k] = from_float<St>(st[mt][i]);
            }
    }
    __syncthreads(); /* the next sequence reuses the shared memory */
}

/*
 * Grid: x = slice of state rows, y = value head, z = a group of sequences. The host cannot see
 * which sequences are long (cu_seqlens stays on the device), and a grid of one z per sequence
 * would schedule a block with ~180 KiB of shared memory for every decode of a mixed batch only
 * to have it exit. So gridDim.z is small (about two waves of blocks) and group z takes every
 * gridDim.z-th of this kernel's sequences in order (ranked 256 at a time by a block-wide count).
 */
/* How a kernel computes its chunks: three-term products, one term phase by phase, one term pipelined. */
enum chunk_path {
    kPathPrecise = 0,
    kPathTc1 = 1,
    kPathPipelined = 2,
    kPathSplit = 3,
    kPathSplitWy = 4,
    kPathSplitLean = 5,
    kPathSplitSpread = 6,
    kPathSplitBulk = 7
};

/* One round of the ranking: sequences n0 .. n0 + blockDim.x - 1 that this kernel owns, ranked in
 * order after the ranked_before of earlier rounds; the block's (rank % gridDim.z == blockIdx.z)
 * land in mine. Returns their count. */
template <int WARPS>
__device__ __forceinline__ int rank_round(const gdn_problem &p, int64_t n0, int64_t &ranked_before,
                                          int64_t *mine, int *warp_counts, int &mine_count)
{
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int64_t n = n0 + threadIdx.x;
    const bool owned = n < p.num_seqs && chunked_owns(p, n);
    const unsigned ballot = __ballot_sync(kFullMask, owned);
    if (lane == 0)
        warp_counts[warp] = __popc(ballot);
    if (threadIdx.x == 0)
        mine_count = 0;
    __syncthreads();
    int64_t rank = ranked_before + __popc(ballot & ((1u << lane) - 1u)), total = 0;
    for (int w = 0; w < WARPS; w++) {
        rank += w < warp ? warp_counts[w] : 0;
        total += warp_counts[w];
    }
    if (owned && rank % gridDim.z == blockIdx.z)
        mine[atomicAdd(&mine_count, 1)] = n;
    ranked_before += total;
    __syncthreads();
    return mine_count;
}

template <typename Act, typename St, int PATH>
__global__ void __launch_bounds__(kChunkWarps * 32, 1) prefill_chunked_vk128(const gdn_problem p)
{
    extern __shared__ __align__(16) float sm[];
    __shared__ int64_t mine[kChunkWarps * 32];
    __shared__ int warp_counts[kChunkWarps], mine_count;
    int64_t ranked_before = 0;
    unsigned uses[kBuffers] = {0, 0, 0}; /* (the pipelined path's buffers) */
    unsigned bulk_phase = 0;             /* (the bulk path's mbarriers, a parity bit each) */
    /* the short sequences' kernel of a mixed call may start now (decode.cu) */
    if (p.mixed_overlap)
        let_dependents_launch();
    if constexpr (PATH == kPathPipelined && std::is_same<Act, bf16>::value) {
        if (threadIdx.x < 2 * kBuffers) /* FULL: the local threads arrive; EMPTY: the state threads */
            mbar_init(reinterpret_cast<uint64_t *>(reinterpret_cast<unsigned char *>(sm) + ws_smem::bars) +
                          threadIdx.x,
                      kGroupThreads);
        /* (the ranking below passes a __syncthreads before any sequence) */
    }
    if constexpr (PATH == kPathSplitBulk &&
                  std::is_same<Act, bf16>::value) /* (the ranking's barrier follows) */
        bulk_bars_init(reinterpret_cast<uint64_t *>(reinterpret_cast<unsigned char *>(sm) + split_smem::bars),
                       kBuffers);
    for (int64_t n0 = 0; n0 < p.num_seqs; n0 += blockDim.x) {
        const int count = rank_round<kChunkWarps>(p, n0, ranked_before, mine, warp_counts, mine_count);
        for (int i = 0; i < count; i++)
            if constexpr (PATH == kPathPrecise)
                chunked_sequence<Act, St, true>(p, mine[i], sm);
            else if constexpr (PATH == kPathPipelined && std::is_same<Act, bf16>::value)
                chunked_sequence_ws<St>(p, mine[i], reinterpret_cast<unsigned char *>(sm), uses);
            else if constexpr ((PATH == kPathSplit || PATH == kPathSplitLean || PATH == kPathSplitSpread ||
                                PATH == kPathSplitBulk) &&
                               std::is_same<Act, bf16>::value)
                chunked_sequence_split<St, PATH == kPathSplitBulk     ? 3
                                           : PATH == kPathSplitSpread ? 2
                                                                      : PATH == kPathSplitLean>(
                    p, mine[i], reinterpret_cast<unsigned char *>(sm), bulk_phase);
            else if constexpr (PATH == kPathSplitWy && std::is_same<Act, bf16>::value)
                chunked_sequence_wy<St>(p, mine[i], reinterpret_cast<unsigned char *>(sm));
            else
                chunked_sequence_tc1<Act, St>(p, mine[i], reinterpret_cast<unsigned char *>(sm));
        __syncthreads(); /* mine and the counts are rewritten by the next round */
    }
}

/* The wgmma walk's kernel: WGS warpgroups a block on WGS slices of a head; the grid as above. */
template <typename St, int WGS, bool LATE, bool BULK>
__global__ void __launch_bounds__(128 * WGS, 1) prefill_walk_wgmma(const gdn_problem p)
{
    extern __shared__ __align__(128) unsigned char wsm[];
    __shared__ int64_t mine[128 * WGS];
    __shared__ int warp_counts[4 * WGS], mine_count;
    __shared__ uint64_t bars[BULK ? wg_smem<WGS>::buffers : 1];
    int64_t ranked_before = 0;
    unsigned bulk_phase = 0;
    /* the short sequences' kernel of a mixed call may start now (decode.cu) */
    if (p.mixed_overlap)
        let_dependents_launch();
    if constexpr (BULK) /* (the ranking's barrier follows) */
        bulk_bars_init(bars, wg_smem<WGS>::buffers);
    for (int64_t n0 = 0; n0 < p.num_seqs; n0 += blockDim.x) {
        const int count = rank_round<4 * WGS>(p, n0, ranked_before, mine, warp_counts, mine_count);
        for (int i = 0; i < count; i++)
            chunked_sequence_wgmma<St, WGS, LATE, BULK>(p, mine[i], wsm, bars, bulk_phase);
        __syncthreads(); /* mine and the counts are rewritten by the next round */
    }
}

/*
 * The head walk (GDN_PREFILL_HEAD_WALK=1, off; written without a GPU, bench/NOTES.md "The next
 * walk"): a block of two warpgroups walks a whole head (V = 128) with the state as wgmma's A
 * operand. Warpgroup wg holds S (v x k) for value rows 64 wg .. 64 wg + 63 as an m64n128
 * accumulator (st[4 j + 2 h + e]: row 64 wg + 16 wq + g + 8 h, column 8 j + 2 t4 + e), and a
 * chunk is, every B operand from shared memory and every A from registers:
 *   Z^T = S K^T, O^T = S Q^T                  (m64n64, A = bf16(S))
 *   Z'^T = beta rk (v^T - gam rk Z^T), U'^T = Z'^T T^T       (B = T in the core layout)
 *   O^T = gam rq O^T + U'^T P^T, S = dec_last S + (U' dec)^T K  (B = K read MN-major)
 * so no register value goes through shared memory (gdn's wgmma walk stores S, Z' and U' there
 * every chunk). This first version keeps the wgmma walk's staging by every thread and a block
 * barrier a chunk; T and P come in the record as padded rows and are re-laid into the core
 * layout after each chunk lands.
 */
/* Shared memory: two chunk buffers of the wgmma walk's 4-slice layout (q, k, all 128 columns of
 * v, the record), then T and P as [C][C] core tiles. */
struct hw_smem {
    typedef wg_smem<4> chunks;
    static constexpr int tc = chunks::groups;
    static constexpr int pc = tc + kChunk * kChunk * 2;
    static constexpr int bytes = pc + kChunk * kChunk * 2;
};
static_assert(wg_smem<4>::buffers == 2 && wg_smem<4>::ldv == kRowK + 8, "the head walk's chunk buffers");

template <typename St>
__device__ void chunked_sequence_head(const gdn_problem &p, int64_t n, unsigned char *smb)
{
    typedef hw_smem L;
    typedef hw_smem::chunks C;
    const int lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int wg = threadIdx.x / 128, wq = (threadIdx.x / 32) % 4;
    seq_part<bf16> sp;
    if (!open_sequence<bf16>(p, n, sp, kRowK / kSlice)) /* one block: all V = 128 rows */
        return;
    const block_coords bc = sp.bc;
    const int64_t V = sp.V, first = sp.first, read = sp.read, write = sp.write;
    const int64_t chunks = sp.chunks(), rec0 = first_record(p, n);
    if (!records_tagged(p, n, rec0, chunks, bc.hv))
        return;
    const int vw = 64 * wg; /* this warpgroup's first value row */
    auto stage = [&](int64_t ci) {
        stage_wg<4, true, 256>(sp.src, ci * kChunk, sp.chunk_len(ci), sp.rows_v,
                               record_at(p, rec0 + ci, bc.hv), smb + (ci % C::buffers) * C::buffer);
    };
    stage(0);

    /* the initial state (zeros without one) */
    float st[64];
    {
        const bool zero = gdn_zero_initial_state(&p, bc.n);
        const St *tile = static_cast<const St *>(p.state_pool) + gdn_tile_offset(&p, read, bc.hv);
#pragma unroll
        for (int i = 0; i < 64; i++) {
            const int v = vw + 16 * wq + g + 8 * ((i >> 1) & 1), k = 8 * (i >> 2) + 2 * t4 + (i & 1);
            st[i] = zero ? 0.0f : to_float<St>(tile[(int64_t)v * kRowK + k]);
        }
    }
    const unsigned tc_at = smem_u32(smb + L::tc), pc_at = smem_u32(smb + L::pc);
    for (int64_t ci = 0; ci < chunks; ci++) {
        const int64_t c0 = ci * kChunk;
        const int len = sp.chunk_len(ci);
        unsigned char *const buf = smb + (ci % C::buffers) * C::buffer;
        copy_async_wait<0>();
        __syncthreads(); /* chunk ci has landed; the other buffer and T, P's core images are free */
        if (ci + 1 < chunks)
            stage(ci + 1);
        else
            copy_async_commit();
        /* T and P into the core layout (B operands: row t holds the k dimension t') */
        {
            const bf16 *const rt = reinterpret_cast<const bf16 *>(buf + C::tb);
            for (int i = threadIdx.x; i < 2 * kChunk * 8; i += 256) {
                const int m = i / (kChunk * 8), r = (i / 8) % kChunk, c = 8 * (i % 8);
                const uint4 x = *reinterpret_cast<const uint4 *>(rt + m * kChunk * kLdP + r * kLdP + c);
                *reinterpret_cast<uint4 *>(smb + (m ? L::pc : L::tc) + core_offset<kChunk>(r, c)) = x;
            }
        }
        fence_async_smem(); /* the staged rows and the core images, for wgmma */
        __syncthreads();
        const unsigned qb_at = smem_u32(buf + C::qb), kb_at = smem_u32(buf + C::kb);
        const bf16 *const vb = reinterpret_cast<const bf16 *>(buf + C::vb);
        const float *const gam = reinterpret_cast<const float *>(buf + C::tb + record_layout::gates);
        const float *const dec = gam + kChunk, *const beta = dec + kChunk, *const rq = beta + kChunk,
                           *const rk = rq + kChunk;

        /* Z^T = S K^T and O^T = S Q^T */
        float z[32], o[32];
#pragma unroll
        for (int i = 0; i < 32; i++)
            z[i] = 0.0f, o[i] = 0.0f;
        unsigned sa[8][4];
#pragma unroll
        for (int ks = 0; ks < 8; ks++)
            acc_as_a(st, ks, sa[ks]);
        wg_hold(z), wg_hold(o);
        wg_fence();
#pragma unroll
        for (int ks = 0; ks < 8; ks++)
            wgmma_rs_n64(z, sa[ks], core_desc<kRowK>(kb_at + 256 * ks));
#pragma unroll
        for (int ks = 0; ks < 8; ks++)
            wgmma_rs_n64(o, sa[ks], core_desc<kRowK>(qb_at + 256 * ks));
        wg_commit();
        wg_wait<0>();
        wg_hold(z), wg_hold(o);
        wg_hold_a(sa);

        /* Z'^T = beta rk (v^T - gam rk Z^T) (column t = 8 j + 2 t4 + e), then U'^T = Z'^T T^T */
#pragma unroll
        for (int i = 0; i < 32; i++) {
            const int v = vw + 16 * wq + g + 8 * ((i >> 1) & 1), t = 8 * (i >> 2) + 2 * t4 + (i & 1);
            const float y = __bfloat162float(vb[t * C::ldv + v]);
            z[i] = beta[t] * rk[t] * (y - gam[t] * rk[t] * z[i]);
        }
        float u[32];
#pragma unroll
        for (int i = 0; i < 32; i++)
            u[i] = 0.0f;
        unsigned za[4][4];
#pragma unroll
        for (int ks = 0; ks < 4; ks++)
            acc_as_a(z, ks, za[ks]);
        wg_hold(u);
        wg_fence();
#pragma unroll
        for (int ks = 0; ks < 4; ks++)
            wgmma_rs_n64(u, za[ks], core_desc<kChunk>(tc_at + 256 * ks));
        wg_commit();
        wg_wait<0>();
        wg_hold(u);
        wg_hold_a(za);

        /* O^T = gam rq O^T + U'^T P^T; S = dec_last S + (U' dec)^T K */
        unsigned ua[4][4], uda[4][4];
#pragma unroll
        for (int ks = 0; ks < 4; ks++)
            acc_as_a(u, ks, ua[ks]);
#pragma unroll
        for (int i = 0; i < 32; i++) {
            const int t = 8 * (i >> 2) + 2 * t4 + (i & 1);
            o[i] *= gam[t] * rq[t];
            u[i] *= dec[t];
        }
#pragma unroll
        for (int ks = 0; ks < 4; ks++)
            acc_as_a(u, ks, uda[ks]);
        const float keep = gam[kChunk - 1];
#pragma unroll
        for (int i = 0; i < 64; i++)
            st[i] *= keep;
        wg_hold(o), wg_hold(st);
        wg_fence();
#pragma unroll
        for (int ks = 0; ks < 4; ks++)
            wgmma_rs_n64(o, ua[ks], core_desc<kChunk>(pc_at + 256 * ks));
#pragma unroll
        for (int ks = 0; ks < 4; ks++) /* k-step ks: tokens 16 ks.., two core matrices of K's rows */
            wgmma_rs_n128_tb(st, uda[ks],
                             mn_desc(kb_at + 2 * (kRowK / 8) * 128 * ks, (kRowK / 8) * 128, 128));
        wg_commit();
        wg_wait<0>();
        wg_hold(o), wg_hold(st);
        wg_hold_a(ua), wg_hold_a(uda);

        /* the outputs of tokens < len */
        bf16 *const orow = static_cast<bf16 *>(p.out) + (first + c0) * p.out_stride + bc.hv * V;
#pragma unroll
        for (int i = 0; i < 32; i++) {
            const int v = vw + 16 * wq + g + 8 * ((i >> 1) & 1), t = 8 * (i >> 2) + 2 * t4 + (i & 1);
            if (t < len)
                orow[t * p.out_stride + v] = __float2bfloat16_rn(o[i]);
        }
    }
    copy_async_wait<0>();
    if (write >= 0) {
        St *tile = static_cast<St *>(p.state_pool) + gdn_tile_offset(&p, write, bc.hv);
#pragma unroll
        for (int i = 0; i < 64; i++) {
            const int v = vw + 16 * wq + g + 8 * ((i >> 1) & 1), k = 8 * (i >> 2) + 2 * t4 + (i & 1);
            tile[(int64_t)v * kRowK + k] = from_float<St>(st[i]);
        }
    }
    __syncthreads(); /* the next sequence reuses the shared memory */
}

/* The head walk's kernel: one block a value head, the grid's y; z = a group of sequences. */
template <typename St> __global__ void __launch_bounds__(256, 1) prefill_walk_head(const gdn_problem p)
{
    extern __shared__ __align__(128) unsigned char hsm[];
    __shared__ int64_t mine[256];
    __shared__ int warp_counts[8], mine_count;
    int64_t ranked_before = 0;
    if (p.mixed_overlap)
        let_dependents_launch();
    for (int64_t n0 = 0; n0 < p.num_seqs; n0 += blockDim.x) {
        const int count = rank_round<8>(p, n0, ranked_before, mine, warp_counts, mine_count);
        for (int i = 0; i < count; i++)
            chunked_sequence_head<St>(p, mine[i], hsm);
        __syncthreads(); /* mine and the counts are rewritten by the next round */
    }
}

template <typename Act, typename St, int PATH>
cudaError_t launch_typed(const gdn_problem &p, cudaStream_t stream)
{
    const auto kernel = prefill_chunked_vk128<Act, St, PATH>;
    constexpr bool one_term_bf16 = std::is_same<Act, bf16>::value;
    int bytes = tc1_smem::bytes((int)sizeof(Act));
    if (PATH == kPathPrecise)
        bytes = chunk_smem::bytes((int)sizeof(Act));
    else if (PATH == kPathPipelined && one_term_bf16)
        bytes = ws_smem::bytes;
    else if ((PATH == kPathSplit || PATH == kPathSplitLean || PATH == kPathSplitSpread) && one_term_bf16)
        bytes = split_smem::bytes;
    else if (PATH == kPathSplitBulk && one_term_bf16)
        bytes = split_smem::bulk_bytes;
    else if (PATH == kPathSplitWy && one_term_bf16)
        bytes = split_wy_smem::bytes;
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (err != cudaSuccess)
        return err;
    /* about two waves of blocks at one block a multiprocessor; never more groups than sequences */
    const int64_t slices = (p.head_dim_v + kSlice - 1) / kSlice, per_group = slices * p.num_v_heads;
    int64_t groups = (2 * sm_count() + per_group - 1) / per_group;
    groups = groups < 1 ? 1 : groups > p.num_seqs ? p.num_seqs : groups;
    const dim3 grid((unsigned)slices, (unsigned)p.num_v_heads, (unsigned)groups);
    kernel<<<grid, kChunkWarps * 32, (size_t)bytes, stream>>>(p);
    return cudaGetLastError();
}

int local_blocks(void);

/* The chunk-local kernel over every record of the call (bf16 activations only). */
cudaError_t launch_chunk_local(const gdn_problem &p, cudaStream_t stream)
{
    const auto kernel = local_blocks() == 6 ? prefill_chunk_local<6> : prefill_chunk_local<5>;
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, local_smem::bytes);
    if (err != cudaSuccess)
        return err;
    const dim3 grid((unsigned)gdn_chunk_records(&p), (unsigned)p.num_v_heads);
    kernel<<<grid, kGroupThreads, local_smem::bytes, stream>>>(p);
    return cudaGetLastError();
}

/* The WY form's local kernel over every record of the call. */
cudaError_t launch_chunk_local_wy(const gdn_problem &p, cudaStream_t stream)
{
    const cudaError_t err = cudaFuncSetAttribute(
        prefill_chunk_local_wy, cudaFuncAttributeMaxDynamicSharedMemorySize, local_wy_smem::bytes);
    if (err != cudaSuccess)
        return err;
    const dim3 grid((unsigned)gdn_chunk_records(&p), (unsigned)p.num_v_heads);
    prefill_chunk_local_wy<<<grid, kGroupThreads, local_wy_smem::bytes, stream>>>(p);
    return cudaGetLastError();
}

/* The wgmma walk with WGS slices a block, after the chunk-local kernel. */
template <typename St, int WGS, bool LATE = false, bool BULK = false>
cudaError_t launch_wgmma_walk(const gdn_problem &p, cudaStream_t stream)
{
    const auto kernel = prefill_walk_wgmma<St, WGS, LATE, BULK>;
    const int bytes = wg_smem<WGS>::bytes;
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (err != cudaSuccess)
        return err;
    const int64_t slices = (p.head_dim_v + kSlice - 1) / kSlice, blocks = (slices + WGS - 1) / WGS;
    const int64_t per_group = blocks * p.num_v_heads;
    int64_t groups = (2 * sm_count() + per_group - 1) / per_group;
    groups = groups < 1 ? 1 : groups > p.num_seqs ? p.num_seqs : groups;
    const dim3 grid((unsigned)blocks, (unsigned)p.num_v_heads, (unsigned)groups);
    kernel<<<grid, 128 * WGS, (size_t)bytes, stream>>>(p);
    return cudaGetLastError();
}

/* Compute capability 9.0 exactly (both attributes cached per device): the build's sm_90a code,
 * with wgmma and the bulk copies; another device runs the compute_80 PTX, where they trap. */
bool sm90a_device(void)
{
    return 10 * cc_major() + device_attribute<cudaDevAttrComputeCapabilityMinor>(0) == 90;
}

/* The head walk after the chunk-local kernel: one block a value head of each sequence group. */
template <typename St> cudaError_t launch_head_walk(const gdn_problem &p, cudaStream_t stream)
{
    const auto kernel = prefill_walk_head<St>;
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, hw_smem::bytes);
    if (err != cudaSuccess)
        return err;
    int64_t groups = (2 * sm_count() + p.num_v_heads - 1) / p.num_v_heads;
    groups = groups < 1 ? 1 : groups > p.num_seqs ? p.num_seqs : groups;
    const dim3 grid(1u, (unsigned)p.num_v_heads, (unsigned)groups);
    kernel<<<grid, 256, (size_t)hw_smem::bytes, stream>>>(p);
    return cudaGetLastError();
}

int forced_precise = -1;  /* gdn_cuda_chunked_force_precise; -1 = by dtype and env */
int forced_wgmma = -1;    /* gdn_cuda_chunked_force_wgmma; -1 = by env and the call's shape */
int forced_split = -1;    /* gdn_cuda_chunked_force_split; -1 = by env */
int forced_pipeline = -1; /* gdn_cuda_chunked_force_pipeline; -1 = by env */
int forced_kary = -1;     /* gdn_cuda_chunked_force_kary; -1 = by env */
int forced_wy = -1;       /* gdn_cuda_chunked_force_wy; -1 = by env */
int wy_env = -1;

bool wy_switch(void) { return forced_switch(&forced_wy, "GDN_PREFILL_WY", &wy_env, 0) != 0; }

int forced_bulk = -1;      /* gdn_cuda_chunked_force_bulk; -1 = by env */
int forced_local6 = -1;    /* gdn_cuda_chunked_force_local_blocks; -1 = by env */
int forced_lean = -1;      /* gdn_cuda_chunked_force_lean; -1 = by env */
int forced_spread = -1;    /* gdn_cuda_chunked_force_spread; -1 = by env */
int forced_wg_late = -1;   /* gdn_cuda_chunked_force_wg_late; -1 = by env */
int forced_head_walk = -1; /* gdn_cuda_chunked_force_head_walk; -1 = by env */

/* The head walk (prefill_walk_head) for a split call with V = 128 on compute capability 9.0: off
 * until a GPU has tested and timed it (GDN_PREFILL_HEAD_WALK=1 turns it on). */
bool head_walk_for(const gdn_problem &p)
{
    static int env = -1;
    return p.head_dim_v == 128 && sm90a_device() &&
           forced_switch(&forced_head_walk, "GDN_PREFILL_HEAD_WALK", &env, 0) != 0;
}

/* The split path's mma.sync walk stages its chunks by running pointers (split_cursor): the
 * default since it won every case it runs on an H100 by 2-5% (012cd2a, bench/results). */
bool lean_staging(void)
{
    static int env = -1;
    return forced_switch(&forced_lean, "GDN_PREFILL_LEAN", &env, 1) != 0;
}

/* With the running pointers: the stage spread over the warps' slack (spread_cursor). The
 * default since it won every case the mma.sync walk runs on an H100 by 1.5-8% (498e0df). */
bool spread_staging(void)
{
    static int env = -1;
    return forced_switch(&forced_spread, "GDN_PREFILL_SPREAD", &env, 1) != 0;
}

/* Blocks of the local kernel a multiprocessor: 5, or 6 with GDN_PREFILL_LOCAL6=1 (off until it
 * wins on a GPU). */
int local_blocks(void)
{
    static int env = -1;
    return forced_switch(&forced_local6, "GDN_PREFILL_LOCAL6", &env, 0) ? 6 : 5;
}

/* Each record by one bulk copy on an mbarrier instead of 16-byte cp.async pieces spread over the
 * threads, in the mma.sync walk with the spread staging (kPathSplitBulk) and the wgmma walk of 2
 * slices: off until it wins on a GPU. */
bool bulk_records(void)
{
    static int env = -1;
    return sm90a_device() && forced_switch(&forced_bulk, "GDN_PREFILL_BULK", &env, 0) != 0;
}

/* The wgmma walk of 2 slices stages after its first products' issue: off, it changed nothing on
 * an H100 (qwen3-next 4x4096 697 us either way, 498e0df). */
bool wg_late_staging(void)
{
    static int env = -1;
    return forced_switch(&forced_wg_late, "GDN_PREFILL_WG_LATE", &env, 0) != 0;
}

bool precise_for(const gdn_problem &p)
{
    const int forced = __atomic_load_n(&forced_precise, __ATOMIC_RELAXED);
    if (forced >= 0)
        return forced != 0;
    if (p.act_dtype != GDN_DTYPE_BF16)
        return true;
    static int env = -1;
    return env_switch("GDN_PREFILL_PRECISE", &env, 0) != 0;
}

bool pipelined(void)
{
    static int env = -1;
    return forced_switch(&forced_pipeline, "GDN_PREFILL_PIPELINE", &env, 1) != 0;
}

/* The split path: bf16 activations, one term, a workspace that holds the call's records. */
bool split_for(const gdn_problem &p)
{
    if (p.act_dtype != GDN_DTYPE_BF16 || !p.workspace) /* (its size: checked by gdn_decode) */
        return false;
    static int env = -1;
    return forced_switch(&forced_split, "GDN_PREFILL_SPLIT", &env, 1) != 0;
}

/* Slices a block of the wgmma walk for a split call (0: the mma.sync walk). wgmma is sm_90a code:
 * compute capability 9.0 only. By default the mma.sync walk while its blocks (one a slice) fit in
 * two waves, else wgmma with two slices a block. The sequences are counted as the most that
 * could be as long as the longest (num_tokens) within token_rows: the host cannot read cu_seqlens.
 * (H100, af32b77, qwen3-next: 1x4096 mma.sync 228 us, wgmma 1/2/4 slices 291/334/566; 4x4096
 * 882 against 1124/779/780; 1x32768 1750 against 2131/2484/4326.) */
int wgmma_slices(const gdn_problem &p)
{
    if (!sm90a_device())
        return 0;
    int wgs = __atomic_load_n(&forced_wgmma, __ATOMIC_RELAXED);
    if (wgs < 0) {
        static int env = -2; /* -1: unset or unreadable */
        int e = __atomic_load_n(&env, __ATOMIC_RELAXED);
        if (e == -2) {
            const char *s = getenv("GDN_PREFILL_WGMMA");
            e = s && (s[0] == '0' || s[0] == '1' || s[0] == '2' || s[0] == '4') && !s[1] ? s[0] - '0' : -1;
            __atomic_store_n(&env, e, __ATOMIC_RELAXED);
        }
        wgs = e;
    }
    if (wgs >= 0)
        return wgs == 1 || wgs == 2 || wgs == 4 ? wgs : 0;
    int64_t seqs = p.token_rows / (p.num_tokens > 0 ? p.num_tokens : 1);
    seqs = seqs < 1 ? 1 : seqs > p.num_seqs ? p.num_seqs : seqs;
    const int64_t blocks = seqs * p.num_v_heads * ((p.head_dim_v + kSlice - 1) / kSlice), sms = sm_count();
    return blocks <= 2 * sms ? 0 : 2;
}

template <typename Act, typename St> cudaError_t launch_state(const gdn_problem &p, cudaStream_t stream)
{
    if (precise_for(p))
        return launch_typed<Act, St, kPathPrecise>(p, stream);
    if constexpr (std::is_same<Act, bf16>::value) {
        if (split_for(p) && p.prefill_wy) { /* (set only where the mma.sync walk is chosen) */
            const cudaError_t err = launch_chunk_local_wy(p, stream);
            return err != cudaSuccess ? err : launch_typed<Act, St, kPathSplitWy>(p, stream);
        }
        if (split_for(p)) {
            cudaError_t err = launch_chunk_local(p, stream);
            if (err != cudaSuccess)
                return err;
            if (head_walk_for(p))
                return launch_head_walk<St>(p, stream);
            switch (wgmma_slices(p)) {
            case 1: return launch_wgmma_walk<St, 1>(p, stream);
            case 2:
                if (wg_late_staging())
                    return launch_wgmma_walk<St, 2, true>(p, stream);
                return bulk_records() ? launch_wgmma_walk<St, 2, false, true>(p, stream)
                                      : launch_wgmma_walk<St, 2>(p, stream);
            case 4: return launch_wgmma_walk<St, 4>(p, stream);
            default:
                if (!lean_staging())
                    return launch_typed<Act, St, kPathSplit>(p, stream);
                if (!spread_staging())
                    return launch_typed<Act, St, kPathSplitLean>(p, stream);
                return bulk_records() ? launch_typed<Act, St, kPathSplitBulk>(p, stream)
                                      : launch_typed<Act, St, kPathSplitSpread>(p, stream);
            }
        }
    }
    /* the pipelined path needs ~215 KiB of shared memory a block: Hopper's 227, not an A100's 163
     * (there the phase-by-phase one) */
    const int optin = device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(0);
    const bool fits = ws_smem::bytes + (int)sizeof(int64_t) * (kChunkWarps * 32 + 8) <= optin;
    return pipelined() && fits ? launch_typed<Act, St, kPathPipelined>(p, stream)
                               : launch_typed<Act, St, kPathTc1>(p, stream);
}

template <typename Act> cudaError_t launch_act(const gdn_problem &p, cudaStream_t stream)
{
    if (p.state_dtype == GDN_DTYPE_BF16)
        return launch_state<Act, __nv_bfloat16>(p, stream);
    return launch_state<Act, float>(p, stream);
}

bool aligned16(const void *ptr, int64_t stride_bytes)
{
    return ((uintptr_t)ptr % 16) == 0 && stride_bytes % 16 == 0;
}

} // namespace

cudaError_t gdn_cuda_launch_chunked(const gdn_problem *p_in, cudaStream_t stream)
{
    gdn_problem p = *p_in;
    const int64_t act = p.act_dtype == GDN_DTYPE_F32 ? 4 : 2;
    p.prefill_async = aligned16(p.q, p.q_stride * act) && aligned16(p.k, p.k_stride * act) &&
                      aligned16(p.v, p.v_stride * act) && (p.head_dim_v * act) % 16 == 0;
    static int kary_env = -1;
    p.prefill_kary = forced_switch(&forced_kary, "GDN_PREFILL_KARY", &kary_env, 1);
    /* the WY form: bf16 activations on the split path's mma.sync walk, with a workspace sized for
     * its records (gdn_decode sized it by gdn_cuda_chunk_record_bytes while the switch was on) */
    p.prefill_wy = 0;
    if (wy_switch() && p.act_dtype == GDN_DTYPE_BF16 && !precise_for(p) && split_for(p) &&
        wgmma_slices(p) == 0 &&
        p.workspace_bytes / gdn_chunk_record_wy_bytes(p.head_dim_v) >= gdn_chunk_records(&p) * p.num_v_heads)
        p.prefill_wy = 1;
    switch (p.act_dtype) {
    case GDN_DTYPE_F16: return launch_act<__half>(p, stream);
    case GDN_DTYPE_BF16: return launch_act<__nv_bfloat16>(p, stream);
    default: return launch_act<float>(p, stream);
    }
}

void gdn_cuda_chunked_force_precise(int precise)
{
    __atomic_store_n(&forced_precise, precise >= 0 ? (precise != 0) : -1, __ATOMIC_RELAXED);
}

void gdn_cuda_chunked_force_split(int split)
{
    __atomic_store_n(&forced_split, split >= 0 ? (split != 0) : -1, __ATOMIC_RELAXED);
}

void gdn_cuda_chunked_force_wgmma(int slices)
{
    __atomic_store_n(&forced_wgmma, slices >= 0 ? slices : -1, __ATOMIC_RELAXED);
}

void gdn_cuda_chunked_force_lean(int lean)
{
    __atomic_store_n(&forced_lean, lean >= 0 ? (lean != 0) : -1, __ATOMIC_RELAXED);
}

void gdn_cuda_chunked_force_local_blocks(int six)
{
    __atomic_store_n(&forced_local6, six >= 0 ? (six != 0) : -1, __ATOMIC_RELAXED);
}

void gdn_cuda_chunked_force_bulk(int bulk)
{
    __atomic_store_n(&forced_bulk, bulk >= 0 ? (bulk != 0) : -1, __ATOMIC_RELAXED);
}

void gdn_cuda_chunked_force_spread(int spread)
{
    __atomic_store_n(&forced_spread, spread >= 0 ? (spread != 0) : -1, __ATOMIC_RELAXED);
}

void gdn_cuda_chunked_force_wg_late(int late)
{
    __atomic_store_n(&forced_wg_late, late >= 0 ? (late != 0) : -1, __ATOMIC_RELAXED);
}

void gdn_cuda_chunked_force_head_walk(int on)
{
    __atomic_store_n(&forced_head_walk, on >= 0 ? (on != 0) : -1, __ATOMIC_RELAXED);
}

void gdn_cuda_chunked_force_wy(int wy)
{
    __atomic_store_n(&forced_wy, wy >= 0 ? (wy != 0) : -1, __ATOMIC_RELAXED);
}

size_t gdn_cuda_chunk_record_bytes(int64_t head_dim_v)
{
    return wy_switch() ? (size_t)gdn_chunk_record_wy_bytes(head_dim_v) : (size_t)GDN_CHUNK_RECORD_BYTES;
}

void gdn_cuda_chunked_force_kary(int kary)
{
    __atomic_store_n(&forced_kary, kary >= 0 ? (kary != 0) : -1, __ATOMIC_RELAXED);
}

void gdn_cuda_chunked_force_pipeline(int pipelined)
{
    __atomic_store_n(&forced_pipeline, pipelined >= 0 ? (pipelined != 0) : -1, __ATOMIC_RELAXED);
}
