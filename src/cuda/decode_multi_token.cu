/*
 * cuda backend: decode of T = 2..16 tokens per sequence (speculative verify, MTP), vk layout,
 * K = 128; varlen (cu_seqlens), token slots and num_accepted included.
 *
 * Design. The rows of a tile stay in registers across the T tokens, so the state is read once
 * and written once (plus one snapshot per token with token slots) whatever T is. Token by
 * token, each step is a chain: S.k and S.q, a reduction over the lanes of the row, u, the
 * update, and only then the next token's dot products (the first version of this kernel, and
 * FLA and FlashInfer, work that way; bench/NOTES.md has its numbers). Here the tokens are taken
 * in chunks of C (2 or 4) in closed form instead, the way chunked prefill does, so that within
 * a chunk nothing waits for a reduction. With S the state at the chunk's start, d_i the decay
 * of token i, P_i = d_0..d_i, e(i, j) = d_{j+1}..d_i (e(i, i) = 1), a_i = S.k_i, b_i = S.q_i:
 *     u_i = beta_i (v_i - P_i a_i - sum_{j<i} e(i,j) (k_j.k_i) u_j)
 *     o_i = P_i b_i + sum_{j<=i} e(i,j) (k_j.q_i) u_j
 *     S'  = P_{C-1} S + sum_j e(C-1, j) u_j k_j
 * which is the token-by-token recurrence rewritten, with no division (decay products only).
 * Per chunk a row costs 2C independent dot products, one reduction of all 2C sums together, a
 * C x C scalar recurrence (one lane per row) and one pass of C + 1 operations per element: about
 * half the instructions of the token-by-token chain, and no chain between tokens. With token
 * slots the state after every token is needed, so the last pass runs token by token instead
 * (S <- d_i S + u_i k_i, a snapshot store each), still with every u known in advance.
 *
 * Tiling. G = 8 lanes per row, each holding 16 elements as 16-byte pieces (f32: 4 pieces 32
 * columns apart; bf16: 2 pieces 64 apart), so each load instruction covers 4 rows x 128
 * contiguous bytes; a lane holds R = 2 rows, a warp batch is 8 rows. Few lanes per row keep the
 * reduction short: 2C R sums a lane over 8 lanes in 3 halving exchanges.
 *
 * Prologue (once per block, before the recurrence, while the state loads are in flight): q and k
 * l2-normalised (q scaled) into shared memory, gates, the values of the block's rows and the
 * snapshot tiles for all tokens (warp w takes tokens w, w + 4, ...); then the Gram entries k_j.k_i
 * and k_j.q_i of each chunk with their decay products (4 threads a dot product). Two barriers.
 * Tokens past T fill the last chunk with k = q = 0, beta = 0 and decay 1: they change nothing.
 *
 * The one-token kernel (decode_one_token.cu) stays separate: no shared memory and no barrier.
 *
 * Padding rows write zero outputs for every token; sequences with an invalid device-side index
 * (slot, snapshot slot, num_accepted or cu_seqlens) are skipped whole (counted in checked mode).
 */
#include <stdio.h>

#include "kernels.h"
#include "vk128_rows.cuh"

namespace
{

constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int kLanesPerRow = 8;                     /* G */
constexpr int kRowGroups = 32 / kLanesPerRow;       /* rows per load instruction */
constexpr int kLaneElems = kRowK / kLanesPerRow;    /* 16 elements of a row per lane */
constexpr int kRowsPerLane = 2;                     /* R */
constexpr int kBatchRows = kRowGroups * kRowsPerLane; /* rows of a warp batch */

/* The closed form's coefficients of one chunk (see above); [i][j] = token i, earlier token j. */
template <int C> struct chunk_coeffs {
    float P[C];     /* decay from the chunk's start through token i */
    float E[C];     /* e(C-1, j): weight of u_j in the chunk's final state */
    float beta[C];
    float decay[C];
    float Wk[C][C]; /* e(i,j) k_j.k_i for j < i, else 0 */
    float Wq[C][C]; /* e(i,j) k_j.q_i for j <= i, else 0 */
};

/* Dynamic shared memory of a block (byte offsets), for T tokens padded to chunks of C. Every part
 * a multiple of 16 bytes, so the float4 reads stay aligned. */
struct stage_layout {
    int64_t chunks, coeffs, snapshot, q, k, v, ring, scratch, bytes;
};

template <int C> __host__ __device__ constexpr int64_t scratch_floats(void)
{
    return kRowGroups * 2 * C * kRowsPerLane + kBatchRows * C; /* reduced sums, then u or w */
}

template <int C>
__host__ __device__ constexpr stage_layout stage_layout_of(int64_t T, int64_t block_rows, int64_t ring_bytes)
{
    stage_layout s{};
    s.chunks = (T + C - 1) / C;
    const int64_t padded = s.chunks * C;
    s.coeffs = 0;
    s.snapshot = s.coeffs + s.chunks * (int64_t)sizeof(chunk_coeffs<C>);
    s.q = s.snapshot + 16 * ((padded + 1) / 2);
    s.k = s.q + 4 * kRowK * padded;
    s.v = s.k + 4 * kRowK * padded;
    s.ring = s.v + 16 * ((padded * block_rows + 3) / 4);
    s.scratch = s.ring + ring_bytes;
    s.bytes = s.scratch + kWarpsPerBlock * 4 * scratch_floats<C>();
    return s;
}

/* Bytes of the cp.async ring of a block (none when batches are prefetched into registers). */
template <int PIECES, int STAGES> __host__ __device__ constexpr int64_t ring_bytes(void)
{
    return STAGES > 0 ? (int64_t)kWarpsPerBlock * STAGES * PIECES * 32 * sizeof(uint4) : 0;
}

/*
 * Halving reduction of M >= G values over the G lanes of a group: on return x[0..M/G) of lane l
 * are the group's sums of values (l % G) * (M / G) + 0..M/G-1.
 */
template <int G, int M> __device__ __forceinline__ void reduce_scatter_wide(float (&x)[M], int lane)
{
    static_assert(M >= G, "fewer values than lanes: reduce_scatter");
#pragma unroll
    for (int h = M / 2, offset = G / 2; offset >= 1; h /= 2, offset /= 2) {
        const bool upper = (lane & offset) != 0;
#pragma unroll
        for (int i = 0; i < h; i++) {
            const float send = upper ? x[i] : x[i + h];
            const float keep = upper ? x[i + h] : x[i];
            x[i] = keep + __shfl_xor_sync(kFullMask, send, offset);
        }
    }
}

/*
 * Block-wide prologue: stages tokens 0..T-1 of the sequence starting at token row `first`, and
 * the padding tokens up to the chunk boundary. Returns (to every thread) whether some token's
 * snapshot slot lies outside the pool. Every thread must call it (two barriers).
 */
template <typename Act, int C, int BLOCK_ROWS>
__device__ bool stage_tokens(const gdn_problem &p, const block_coords &bc, int64_t first, int T,
                             int64_t block_row0, unsigned char *smem, const stage_layout &at)
{
    chunk_coeffs<C> *coeffs = reinterpret_cast<chunk_coeffs<C> *>(smem + at.coeffs);
    int64_t *snapshot = reinterpret_cast<int64_t *>(smem + at.snapshot);
    float *qs = reinterpret_cast<float *>(smem + at.q), *ks = reinterpret_cast<float *>(smem + at.k);
    float *vs = reinterpret_cast<float *>(smem + at.v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int padded = (int)at.chunks * C;
    const int64_t V = p.head_dim_v;
    bool bad_slot = false;
    for (int t = warp; t < padded; t += kWarpsPerBlock) {
        chunk_coeffs<C> &cf = coeffs[t / C];
        if (t >= T) { /* padding token: no effect on anything */
#pragma unroll
            for (int i = 0; i < kRowK / 32; i++)
                qs[t * kRowK + lane + 32 * i] = ks[t * kRowK + lane + 32 * i] = 0.0f;
            if (lane == 0)
                cf.decay[t % C] = 1.0f, cf.beta[t % C] = 0.0f, snapshot[t] = -1;
            continue;
        }
        const int64_t row = first + t;
        float a = 0.0f, b = 0.0f, A_log = 0.0f, dt_bias = 0.0f;
        int64_t slot = -1;
        if (lane == 0) { /* issued with the q and k loads: one memory round trip per token */
            a = load_elem<Act>(p.a, row * p.a_stride + bc.hv);
            b = load_elem<Act>(p.b, row * p.b_stride + bc.hv);
            A_log = p.A_log[bc.hv];
            dt_bias = p.dt_bias[bc.hv];
            slot = p.token_slots ? gdn_token_slot(&p, bc.n, t) : -1;
        }
        float q[kRowK / 32], k[kRowK / 32], qq = 0.0f, kk = 0.0f;
#pragma unroll
        for (int i = 0; i < kRowK / 32; i++) {
            q[i] = load_elem<Act>(p.q, row * p.q_stride + bc.h * kRowK + lane + 32 * i);
            k[i] = load_elem<Act>(p.k, row * p.k_stride + bc.h * kRowK + lane + 32 * i);
        }
#pragma unroll
        for (int i = 0; i < kRowK / 32; i++) {
            qq += q[i] * q[i];
            kk += k[i] * k[i];
        }
        qq = row_sum<32>(qq);
        kk = row_sum<32>(kk);
        const float q_factor = (p.qk_l2norm ? inv_sqrt(qq + GDN_L2NORM_EPS) : 1.0f) * p.scale;
        const float k_factor = p.qk_l2norm ? inv_sqrt(kk + GDN_L2NORM_EPS) : 1.0f;
#pragma unroll
        for (int i = 0; i < kRowK / 32; i++) {
            qs[t * kRowK + lane + 32 * i] = q[i] * q_factor;
            ks[t * kRowK + lane + 32 * i] = k[i] * k_factor;
        }
        if (lane == 0) {
            cf.decay[t % C] = expf(gdn_gate_log(A_log, a, dt_bias));
            cf.beta[t % C] = sigmoid_fast(b);
            snapshot[t] = slot < 0 ? -1 : gdn_tile_offset(&p, slot, bc.hv);
            bad_slot |= slot >= p.num_slots;
        }
    }
    for (int i = threadIdx.x; i < padded * BLOCK_ROWS; i += blockDim.x) {
        const int t = i / BLOCK_ROWS, r = i % BLOCK_ROWS; /* BLOCK_ROWS: a power of two */
        const int64_t row = block_row0 + r;
        vs[i] = t < T && row < V ? load_elem<Act>(p.v, (first + t) * p.v_stride + bc.hv * V + row) : 0.0f;
    }
    const bool bad = __syncthreads_or(bad_slot) != 0;

    /* The Gram entries of every chunk, 4 threads a dot product (32 columns each): dot d is
     * chunk c, token i, earlier token j, kind (k_j.k_i or k_j.q_i). A warp takes 8 consecutive
     * dot products and 2 * C * C * chunks is a multiple of 8, so the loop is warp-uniform. */
    const int dots = padded * C * 2, quarter = threadIdx.x % 4;
    for (int d = threadIdx.x / 4; d < dots; d += blockDim.x / 4) {
        const int kind = d % 2, j = d / 2 % C, i = d / (2 * C) % C, c = d / (2 * C * C);
        const float *kj = ks + (c * C + j) * kRowK + quarter * 32;
        const float *xi = (kind ? qs : ks) + (c * C + i) * kRowK + quarter * 32;
        float sum = 0.0f;
#pragma unroll
        for (int e = 0; e < 32; e += 4) {
            const float4 x = *reinterpret_cast<const float4 *>(kj + e), y = *reinterpret_cast<const float4 *>(xi + e);
            sum += x.x * y.x + x.y * y.y + x.z * y.z + x.w * y.w;
        }
        sum += __shfl_xor_sync(kFullMask, sum, 1);
        sum += __shfl_xor_sync(kFullMask, sum, 2);
        if (quarter == 0) {
            chunk_coeffs<C> &cf = coeffs[c];
            float e = 1.0f; /* e(i, j) */
            for (int r = j + 1; r <= i; r++)
                e *= cf.decay[r];
            if (kind)
                cf.Wq[i][j] = j <= i ? e * sum : 0.0f;
            else
                cf.Wk[i][j] = j < i ? e * sum : 0.0f;
        }
    }
    for (int x = threadIdx.x; x < padded; x += blockDim.x) {
        chunk_coeffs<C> &cf = coeffs[x / C];
        const int i = x % C;
        float P = 1.0f, E = 1.0f;
        for (int r = 0; r <= i; r++)
            P *= cf.decay[r];
        for (int r = i + 1; r < C; r++)
            E *= cf.decay[r];
        cf.P[i] = P;
        cf.E[i] = E;
    }
    __syncthreads();
    return bad;
}

/* The 16 columns of a row that lane group position g holds: pieces of VEC elements G * VEC apart. */
template <int VEC> __device__ __forceinline__ int lane_column(int g, int e)
{
    return (e / VEC) * (kLanesPerRow * VEC) + g * VEC + e % VEC;
}

/* 16 floats of a staged q or k row at this lane's columns (float4 reads). */
template <int VEC> __device__ __forceinline__ void load_lane_vector(const float *row, int g, float (&x)[kLaneElems])
{
#pragma unroll
    for (int e = 0; e < kLaneElems; e += 4) {
        const float4 v = *reinterpret_cast<const float4 *>(row + lane_column<VEC>(g, e));
        x[e] = v.x, x[e + 1] = v.y, x[e + 2] = v.z, x[e + 3] = v.w;
    }
}

/*
 * One warp: BATCHES batches of 8 rows of one (sequence, head) tile, each taken through all
 * chunks; a block is 4 such warps over consecutive row ranges. STAGES = 0: the next batch is
 * prefetched into registers; STAGES >= 2: a per-warp cp.async ring in shared memory.
 */
template <typename Act, typename St, int C, int BATCHES, int STAGES>
__global__ void __launch_bounds__(kThreads) decode_multi_token_vk128(const __grid_constant__ gdn_problem p)
{
    constexpr int VEC = state_vec<St>::n;
    constexpr int PIECES = kLaneElems / VEC;         /* 16-byte pieces of a row per lane */
    constexpr int LOADS = kRowsPerLane * PIECES;     /* 16-byte loads per lane per batch */
    constexpr int M = 2 * C * kRowsPerLane;          /* sums per lane per chunk */
    constexpr int OWN = M / kLanesPerRow;            /* reduced sums a lane ends with */
    constexpr int RING = STAGES > 0 ? STAGES : 1;
    constexpr int WARP_ROWS = kBatchRows * BATCHES, BLOCK_ROWS = kWarpsPerBlock * WARP_ROWS;
    static_assert((BLOCK_ROWS & (BLOCK_ROWS - 1)) == 0, "rows of a block: a power of two");
    extern __shared__ __align__(16) unsigned char smem[];

    /* the slot first: the state loads wait for it and for nothing else */
    const int64_t read = gdn_read_slot(&p, blockIdx.z), write = gdn_write_slot(&p, blockIdx.z);
    const int64_t first = gdn_first_token_row(&p, blockIdx.z), T64 = gdn_seq_tokens(&p, blockIdx.z);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int hw = lane / kLanesPerRow, g = lane % kLanesPerRow;
    const block_coords bc = block_coords_of(p);
    const int64_t V = p.head_dim_v;
    const int64_t block_row0 = (int64_t)blockIdx.x * BLOCK_ROWS, warp_row0 = block_row0 + warp * WARP_ROWS;
    const stage_layout at = stage_layout_of<C>(p.num_tokens, BLOCK_ROWS, ring_bytes<LOADS, STAGES>());

    if (T64 < 0 || first < 0) { /* cu_seqlens out of order or range */
        skip_bad_row(p);
        return;
    }
    const int T = (int)T64;
    if (T == 0)
        return;
    if (read < 0) { /* padding row: zero outputs; no state is read or written */
        for (int i = threadIdx.x; i < T * BLOCK_ROWS; i += blockDim.x) {
            const int64_t row = block_row0 + i % BLOCK_ROWS;
            if (row < V)
                store_elem<Act>(p.out, (first + i / BLOCK_ROWS) * p.out_stride + bc.hv * V + row, 0.0f);
        }
        return;
    }
    if (read >= p.num_slots || write >= p.num_slots) {
        skip_bad_row(p);
        return;
    }

    /* load l of a batch: row r = l / PIECES of this lane (row r * 4 + hw of the batch), piece l % PIECES */
    const St *src = static_cast<const St *>(p.state_pool) + gdn_tile_offset(&p, read, bc.hv);
    uint4 *const my_ring = reinterpret_cast<uint4 *>(smem + at.ring) + (int64_t)warp * RING * LOADS * 32;
    const auto piece_offset = [&](int b, int l) {
        return (warp_row0 + b * kBatchRows + (l / PIECES) * kRowGroups + hw) * kRowK +
               lane_column<VEC>(g, (l % PIECES) * VEC);
    };
    const auto row_of = [&](int b, int l) { return warp_row0 + b * kBatchRows + (l / PIECES) * kRowGroups + hw; };
    uint4 raw[2][LOADS];
    const auto load_batch = [&](int b, uint4(&dst)[LOADS]) {
#pragma unroll
        for (int l = 0; l < LOADS; l++)
            dst[l] = row_of(b, l) < V ? *reinterpret_cast<const uint4 *>(src + piece_offset(b, l))
                                      : make_uint4(0, 0, 0, 0);
    };
    const auto stage_batch = [&](int b) { /* one commit group per batch, empty past the end */
        if (b < BATCHES) {
#pragma unroll
            for (int l = 0; l < LOADS; l++) {
                const bool valid = row_of(b, l) < V;
                copy_async16(my_ring + ((b % RING) * LOADS + l) * 32 + lane, valid ? src + piece_offset(b, l) : src,
                             valid);
            }
        }
        copy_async_commit();
    };
    if constexpr (STAGES > 0) {
#pragma unroll
        for (int b = 0; b < STAGES - 1; b++)
            stage_batch(b);
    } else {
        load_batch(0, raw[0]);
    }

    if (stage_tokens<Act, C, BLOCK_ROWS>(p, bc, first, T, block_row0, smem, at)) {
        skip_bad_row(p); /* a snapshot slot outside the pool: nothing written */
        return;
    }
    const chunk_coeffs<C> *coeffs = reinterpret_cast<const chunk_coeffs<C> *>(smem + at.coeffs);
    const int64_t *snapshot = reinterpret_cast<const int64_t *>(smem + at.snapshot);
    const float *qs = reinterpret_cast<const float *>(smem + at.q);
    const float *ks = reinterpret_cast<const float *>(smem + at.k);
    const float *vs = reinterpret_cast<const float *>(smem + at.v) + warp * WARP_ROWS;
    float *red = reinterpret_cast<float *>(smem + at.scratch) + warp * scratch_floats<C>(); /* [hw][M] */
    float *ubuf = red + kRowGroups * M;                                                     /* [row][C] */
    St *const pool = static_cast<St *>(p.state_pool);
    St *const dst = write < 0 ? nullptr : pool + gdn_tile_offset(&p, write, bc.hv);
    const bool snapshots = p.token_slots != nullptr;
    const int chunks = (int)at.chunks;

#pragma unroll
    for (int b = 0; b < BATCHES; b++) {
        uint4 cur[LOADS];
        if constexpr (STAGES > 0) {
            stage_batch(b + STAGES - 1);
            copy_async_wait<STAGES - 1>(); /* batch b has landed */
#pragma unroll
            for (int l = 0; l < LOADS; l++)
                cur[l] = my_ring[((b % RING) * LOADS + l) * 32 + lane];
        } else {
#pragma unroll
            for (int l = 0; l < LOADS; l++)
                cur[l] = raw[b % 2][l];
            if (b + 1 < BATCHES)
                load_batch(b + 1, raw[(b + 1) % 2]);
        }
        float s[kRowsPerLane][kLaneElems];
#pragma unroll
        for (int l = 0; l < LOADS; l++)
            state_vec<St>::unpack(cur[l], &s[l / PIECES][(l % PIECES) * VEC]);

#pragma unroll 1
        for (int c = 0; c < chunks; c++) {
            const chunk_coeffs<C> &cf = coeffs[c];
            /* 1. a_i = S.k_i and b_i = S.q_i of both rows, all independent: sums[(r C + i) 2 + kind] */
            float sums[M];
#pragma unroll
            for (int i = 0; i < C; i++) {
                float x[kLaneElems];
                load_lane_vector<VEC>(ks + (c * C + i) * kRowK, g, x);
#pragma unroll
                for (int r = 0; r < kRowsPerLane; r++) {
                    float acc0 = 0.0f, acc1 = 0.0f; /* two chains per sum */
#pragma unroll
                    for (int e = 0; e < kLaneElems; e += 2) {
                        acc0 += s[r][e] * x[e];
                        acc1 += s[r][e + 1] * x[e + 1];
                    }
                    sums[(r * C + i) * 2] = acc0 + acc1;
                }
                load_lane_vector<VEC>(qs + (c * C + i) * kRowK, g, x);
#pragma unroll
                for (int r = 0; r < kRowsPerLane; r++) {
                    float acc0 = 0.0f, acc1 = 0.0f;
#pragma unroll
                    for (int e = 0; e < kLaneElems; e += 2) {
                        acc0 += s[r][e] * x[e];
                        acc1 += s[r][e + 1] * x[e + 1];
                    }
                    sums[(r * C + i) * 2 + 1] = acc0 + acc1;
                }
            }
            /* 2. all of them reduced over the row's 8 lanes at once; lane g keeps sums g*OWN.. */
            reduce_scatter_wide<kLanesPerRow, M>(sums, lane);
#pragma unroll
            for (int x = 0; x < OWN; x++)
                red[hw * M + g * OWN + x] = sums[x];
            __syncwarp();
            /* 3. the C x C recurrence of each row, one lane a row (lane L: row L of the batch,
             *    i.e. lane row r = L / 4 of group hw = L % 4) */
            if (lane < kBatchRows) {
                const int r = lane / kRowGroups, group = lane % kRowGroups;
                const float *ab = red + group * M + r * C * 2;
                const int64_t row = warp_row0 + b * kBatchRows + lane;
                float u[C];
#pragma unroll
                for (int i = 0; i < C; i++) {
                    float acc = vs[(c * C + i) * BLOCK_ROWS + b * kBatchRows + lane] - cf.P[i] * ab[2 * i];
#pragma unroll
                    for (int j = 0; j < i; j++)
                        acc -= cf.Wk[i][j] * u[j];
                    u[i] = cf.beta[i] * acc;
                }
#pragma unroll
                for (int i = 0; i < C; i++) {
                    float o = cf.P[i] * ab[2 * i + 1];
#pragma unroll
                    for (int j = 0; j <= i; j++)
                        o += cf.Wq[i][j] * u[j];
                    if (c * C + i < T && row < V)
                        store_elem<Act>(p.out, (first + c * C + i) * p.out_stride + bc.hv * V + row, o);
                    /* token by token with snapshots; else the weight of u_i in the chunk's end state */
                    ubuf[lane * C + i] = snapshots ? u[i] : cf.E[i] * u[i];
                }
            }
            __syncwarp();
            /* 4. the state update: w_i of both rows, then one pass (or one per token) over the elements */
            float w[kRowsPerLane][C];
#pragma unroll
            for (int r = 0; r < kRowsPerLane; r++)
#pragma unroll
                for (int i = 0; i < C; i++)
                    w[r][i] = ubuf[(r * kRowGroups + hw) * C + i];
            if (!snapshots) {
                const float P = cf.P[C - 1];
#pragma unroll
                for (int r = 0; r < kRowsPerLane; r++)
#pragma unroll
                    for (int e = 0; e < kLaneElems; e++)
                        s[r][e] *= P;
#pragma unroll
                for (int i = 0; i < C; i++) {
                    float x[kLaneElems];
                    load_lane_vector<VEC>(ks + (c * C + i) * kRowK, g, x);
#pragma unroll
                    for (int r = 0; r < kRowsPerLane; r++)
#pragma unroll
                        for (int e = 0; e < kLaneElems; e++)
                            s[r][e] += w[r][i] * x[e];
                }
            } else {
#pragma unroll
                for (int i = 0; i < C; i++) {
                    float x[kLaneElems];
                    load_lane_vector<VEC>(ks + (c * C + i) * kRowK, g, x);
                    const float d = cf.decay[i];
#pragma unroll
                    for (int r = 0; r < kRowsPerLane; r++)
#pragma unroll
                        for (int e = 0; e < kLaneElems; e++)
                            s[r][e] = d * s[r][e] + w[r][i] * x[e];
                    const int64_t snap = c * C + i < T ? snapshot[c * C + i] : -1;
                    if (snap >= 0) {
#pragma unroll
                        for (int l = 0; l < LOADS; l++)
                            if (row_of(b, l) < V)
                                store16(pool + snap + piece_offset(b, l),
                                        state_vec<St>::pack(&s[l / PIECES][(l % PIECES) * VEC]));
                    }
                }
            }
        }
        if (dst) {
#pragma unroll
            for (int l = 0; l < LOADS; l++)
                if (row_of(b, l) < V)
                    store16(dst + piece_offset(b, l), state_vec<St>::pack(&s[l / PIECES][(l % PIECES) * VEC]));
        }
    }
}

/* Each configuration: rows per warp batch (8), batches per warp, and the shared-memory ring
 * depth (0 = registers); the chunk size follows T (2 for T <= 2, else 4). */
constexpr gdn_kernel_shape kShapes[] = {{kBatchRows, 1, 0}, {kBatchRows, 2, 0}, {kBatchRows, 4, 0}, {kBatchRows, 4, 3}};
constexpr int kShapeCount = sizeof kShapes / sizeof kShapes[0];

template <typename Act, typename St, int C, int BATCHES, int STAGES>
cudaError_t launch_shape(const gdn_problem &p, cudaStream_t stream)
{
    constexpr int LOADS = kRowsPerLane * kLaneElems / state_vec<St>::n;
    constexpr int64_t block_rows = (int64_t)kWarpsPerBlock * kBatchRows * BATCHES;
    const stage_layout at = stage_layout_of<C>(p.num_tokens, block_rows, ring_bytes<LOADS, STAGES>());
    const auto kernel = decode_multi_token_vk128<Act, St, C, BATCHES, STAGES>;
    /* Past the default 48 KiB (long T) a kernel must opt in (per device, so on every such call);
     * always to the most this instantiation can ask for, so that threads racing with different T
     * never lower each other's limit. */
    constexpr int64_t most = stage_layout_of<C>(GDN_MAX_TOKENS, block_rows, ring_bytes<LOADS, STAGES>()).bytes;
    if (at.bytes > 48 * 1024) {
        const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)most);
        if (err != cudaSuccess)
            return err;
    }
    /* always 4 warps: the prologue and the value stage assume BLOCK_ROWS rows */
    const dim3 grid((unsigned)((p.head_dim_v + block_rows - 1) / block_rows), (unsigned)p.num_v_heads,
                    (unsigned)p.num_seqs);
    kernel<<<grid, kThreads, (size_t)at.bytes, stream>>>(p);
    return cudaGetLastError();
}

template <typename Act, typename St, int C> cudaError_t launch_config(const gdn_problem &p, int config, cudaStream_t stream)
{
    switch (config) { /* kShapes, in order */
    case 0: return launch_shape<Act, St, C, 1, 0>(p, stream);
    case 1: return launch_shape<Act, St, C, 2, 0>(p, stream);
    case 2: return launch_shape<Act, St, C, 4, 0>(p, stream);
    default: return launch_shape<Act, St, C, 4, 3>(p, stream);
    }
}

/* The configuration for a batch, by rows of state per multiprocessor (first guess; bench/NOTES.md
 * has the sweep). */
int choose_config(const gdn_problem &p)
{
    const int64_t rows_per_sm = p.num_seqs * p.num_v_heads * p.head_dim_v / sm_count();
    if (rows_per_sm <= 160)
        return 0; /* r8x1 */
    return p.state_dtype == GDN_DTYPE_BF16 ? 3 : 2; /* r8x4s3, r8x4 */
}

int forced_config = -1;

template <typename Act, typename St> cudaError_t launch_state(const gdn_problem &p, cudaStream_t stream)
{
    const int forced = __atomic_load_n(&forced_config, __ATOMIC_RELAXED);
    const int config = forced >= 0 ? forced : choose_config(p);
    return p.num_tokens <= 2 ? launch_config<Act, St, 2>(p, config, stream)
                             : launch_config<Act, St, 4>(p, config, stream);
}

template <typename Act> cudaError_t launch_act(const gdn_problem &p, cudaStream_t stream)
{
    return p.state_dtype == GDN_DTYPE_BF16 ? launch_state<Act, __nv_bfloat16>(p, stream)
                                           : launch_state<Act, float>(p, stream);
}

} // namespace

int gdn_cuda_multi_token_applies(const gdn_problem *p)
{
    const int64_t vec = p->state_dtype == GDN_DTYPE_BF16 ? 8 : 4;
    return p->state_layout == GDN_LAYOUT_VK && p->head_dim_k == kRowK &&
           (p->num_tokens > 1 || p->cu_seqlens || p->token_slots || p->num_accepted) &&
           (p->slot_stride * (16 / vec)) % 16 == 0; /* each slot's tiles 16-byte aligned */
}

cudaError_t gdn_cuda_launch_multi_token(const gdn_problem *p, cudaStream_t stream)
{
    switch (p->act_dtype) {
    case GDN_DTYPE_F16: return launch_act<__half>(*p, stream);
    case GDN_DTYPE_BF16: return launch_act<__nv_bfloat16>(*p, stream);
    default: return launch_act<float>(*p, stream);
    }
}

const gdn_kernel_shape *gdn_cuda_multi_token_shapes(int *count)
{
    *count = kShapeCount;
    return kShapes;
}

void gdn_cuda_multi_token_force(int config)
{
    __atomic_store_n(&forced_config, config >= 0 && config < kShapeCount ? config : -1, __ATOMIC_RELAXED);
}
