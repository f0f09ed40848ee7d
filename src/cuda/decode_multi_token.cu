/*
 * cuda backend: decode of T = 2..16 tokens per sequence (speculative verify, MTP), vk layout,
 * K = 128; varlen (cu_seqlens), token slots and num_accepted included.
 *
 * Design. The rows of a tile stay in registers across the T tokens, so the state is read once
 * and written once (plus one snapshot per token with token slots) whatever T is; each token
 * costs only its arithmetic: per row two dot products, a reduction over the lanes of the row,
 * u = beta (v - e^g S.k), o = e^g S.q + u (k.q) and the update S' = e^g S + u k. What makes
 * this slow is the chain of a token: dots -> reduction -> u -> update -> the next token's dots.
 * So the chain of one row must never be alone:
 *  - A lane holds 16 bytes of each of SLOTS rows (the one-token kernel's tiling: G = 128 / VEC
 *    lanes per row, q and k at the same K columns in every row), so a warp works on WR rows
 *    at once and reduces their 2 * WR sums with the halving exchange (about 2 * SLOTS shuffles
 *    instead of 2 * SLOTS * log2 G); 16 warps or more per multiprocessor interleave on top.
 *  - Everything that does not depend on the state is computed for all T tokens before the
 *    recurrence, in parallel (warp w takes tokens w, w + 4, ...): q and k l2-normalised (and q
 *    scaled) into shared memory, e^g, beta and k.q per token, the values of the block's rows,
 *    and the snapshot tile of each token. The token loop then reads q and k from shared memory
 *    (lanes of a group read the same 16 bytes: broadcasts) and does nothing else but the chain.
 *  - With BATCHES > 1 a warp loads its next batch of rows (registers, or a cp.async ring in
 *    shared memory) while it runs the T tokens of the current one.
 * The state loads are issued right after the slot index arrives, before the token prologue,
 * so the prologue's loads and arithmetic overlap them.
 *
 * The one-token kernel (decode_one_token.cu) stays separate: it keeps q and k in registers and
 * has no barrier at all; a T-token call pays one block barrier for its shared prologue.
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

/* GDN_MT_SWIZZLE=1 holds the rows in rows_swizzle order (vk128_rows.cuh) in every configuration,
 * =0 in none; by default only the configuration of the smallest batches (r8x1l8) does. Measured on
 * the H200 (bench/ab_builds.sh, fc0b3de with and without, 2 rounds): N = 1 6-7% faster at every
 * T = 2..8 and both state dtypes; at N = 256 2-8% slower (more address registers: each row slot's
 * address depends on the lane), N = 16-64 mixed. */
#ifndef GDN_MT_SWIZZLE
#define GDN_MT_SWIZZLE 2
#endif

/* GDN_MT_LOAD_HINT=1 loads the state with an L2 evict-first policy (the register loads and the
 * cp.async ring alike) instead of .cs / no hint. Measured on the H100 (bench/results/
 * h100-2026-12-07-7156642-at-once/hints-ab.csv): 2-6% faster at N = 16, 1.5-4% slower at
 * N = 256, and no answer to why T = 3 costs more than T = 4; kept as the candidate for a
 * per-size hint. (Stores without .cs, the other switch of that run, lost 4-6% at f32 T = 2 and
 * are gone.) */
#ifndef GDN_MT_LOAD_HINT
#define GDN_MT_LOAD_HINT 0
#endif
constexpr load_hint kLoadHint = GDN_MT_LOAD_HINT == 1 ? load_hint::evict_first : load_hint::streaming;

/* The smallest scale of the rows held in registers (S = c * s) before they are rescaled: u / c
 * then stays below 2^60 |u|, far from the float range, and rescales are rare (60 / log2(1/decay)
 * tokens apart; a typical decay of 0.9-1 never gets there within 16 tokens). */
constexpr float kMinRowScale = 0x1p-60f;

/* 1 / x to about 1 ulp in one MUFU.RCP, for normal x (no range fix-ups, unlike __fdividef) */
__device__ __forceinline__ float reciprocal_approx(float x)
{
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

/* e^g, beta and k_hat.q_hat * scale of one token; the fourth float pads to one 16-byte read. */
struct token_gates {
    float decay, beta, kq, unused;
};

/* Dynamic shared memory of a block for T tokens and BLOCK_ROWS rows: every part a multiple of
 * 16 bytes, so the float4 reads of q and k stay aligned. */
struct stage_layout {
    int64_t gates, snapshot, q, k, v, ring, bytes;
};

__host__ __device__ constexpr stage_layout stage_layout_of(int64_t T, int64_t block_rows, int64_t ring_bytes)
{
    stage_layout s{};
    s.gates = 0;
    s.snapshot = s.gates + 16 * T;
    s.q = s.snapshot + 16 * ((T + 1) / 2);
    s.k = s.q + 4 * kRowK * T;
    s.v = s.k + 4 * kRowK * T;
    s.ring = s.v + 16 * ((T * block_rows + 3) / 4);
    s.bytes = s.ring + ring_bytes;
    return s;
}

/* Bytes of the cp.async ring of a block (none when batches are prefetched into registers). */
template <int SLOTS, int STAGES> __host__ __device__ constexpr int64_t ring_bytes(void)
{
    return STAGES > 0 ? (int64_t)kWarpsPerBlock * STAGES * SLOTS * 32 * sizeof(uint4) : 0;
}

/*
 * Block-wide prologue: stages tokens 0..T-1 of the sequence starting at token row `first`.
 * Returns (to every thread) whether some token's snapshot slot lies outside the pool; ends
 * with the block's one barrier, so every thread must call it.
 */
template <typename Act, int BLOCK_ROWS, bool PLAIN>
__device__ bool stage_tokens(const gdn_problem &p, const block_coords &bc, int64_t first, int T,
                             int64_t block_row0, unsigned char *smem, const stage_layout &at)
{
    token_gates *gates = reinterpret_cast<token_gates *>(smem + at.gates);
    int64_t *snapshot = reinterpret_cast<int64_t *>(smem + at.snapshot);
    float *qs = reinterpret_cast<float *>(smem + at.q), *ks = reinterpret_cast<float *>(smem + at.k);
    float *vs = reinterpret_cast<float *>(smem + at.v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    const int64_t V = p.head_dim_v;
    bool bad_slot = false;
    for (int t = warp; t < T; t += warps) {
        const int64_t row = first + t;
        gate_inputs gi{};
        int64_t slot = -1;
        if (lane == 0) { /* issued with the q and k loads: one memory round trip per token */
            gi = PLAIN ? load_raw_gate_inputs<Act>(p, row, bc.hv) : load_gate_inputs<Act>(p, row, bc.hv);
            slot = p.token_slots ? gdn_token_slot(&p, bc.n, t) : -1;
        }
        float q[kRowK / 32], k[kRowK / 32], qq = 0.0f, kk = 0.0f, qk = 0.0f;
#pragma unroll
        for (int i = 0; i < kRowK / 32; i++) {
            q[i] = load_elem<Act>(p.q, row * p.q_stride + bc.h * kRowK + lane + 32 * i);
            k[i] = load_elem<Act>(p.k, row * p.k_stride + bc.h * kRowK + lane + 32 * i);
        }
#pragma unroll
        for (int i = 0; i < kRowK / 32; i++) {
            qq += q[i] * q[i];
            kk += k[i] * k[i];
            qk += q[i] * k[i];
        }
        qq = row_sum<32>(qq);
        kk = row_sum<32>(kk);
        qk = row_sum<32>(qk);
        const float q_factor = (p.qk_l2norm ? inv_sqrt(qq + GDN_L2NORM_EPS) : 1.0f) * p.scale;
        const float k_factor = p.qk_l2norm ? inv_sqrt(kk + GDN_L2NORM_EPS) : 1.0f;
#pragma unroll
        for (int i = 0; i < kRowK / 32; i++) {
            qs[t * kRowK + lane + 32 * i] = q[i] * q_factor;
            ks[t * kRowK + lane + 32 * i] = k[i] * k_factor;
        }
        if (lane == 0) {
            const float decay = PLAIN ? expf(gdn_gate_log(gi.A_log, gi.a, gi.dt_bias)) : gate_decay(p, gi);
            const float beta = PLAIN ? sigmoid_fast(gi.b) : gate_beta(p, gi);
            gates[t] = token_gates{decay, beta, qk * q_factor * k_factor, 0.0f};
            snapshot[t] = slot < 0 ? -1 : gdn_tile_offset(&p, slot, bc.hv);
            bad_slot |= slot >= p.num_slots;
        }
    }
    for (int i = threadIdx.x; i < T * BLOCK_ROWS; i += blockDim.x) {
        const int t = i / BLOCK_ROWS, r = i % BLOCK_ROWS; /* BLOCK_ROWS: a power of two */
        const int64_t row = block_row0 + r;
        vs[i] = row < V ? load_elem<Act>(p.v, (first + t) * p.v_stride + bc.hv * V + row) : 0.0f;
    }
    return __syncthreads_or(bad_slot) != 0;
}

/*
 * One warp: BATCHES batches of WR consecutive rows of one (sequence, head) tile, each taken
 * through all T tokens; a block is blockDim.x / 32 such warps over consecutive row ranges.
 * SLOTS, G, the reduction and the ring are those of the one-token kernel (decode_one_token.cu),
 * except that with CH > 1 a lane holds CH 16-byte pieces of each of its SLOTS / CH rows: fewer
 * lanes a row (G = 8 with CH = 32 / VEC), so the reduction of a token costs about G / 32 of
 * the shuffles a row that G = 32 (f32) or 16 (bf16) lanes need.
 */
template <typename Act, typename St, int SLOTS, int BATCHES, int STAGES, int CH, bool PLAIN, bool SWIZZLE>
__device__ __forceinline__ void multi_token_tile(const gdn_problem &p)
{
    constexpr int VEC = state_vec<St>::n;
    constexpr int G = kRowK / (VEC * CH); /* lanes per row */
    constexpr int P = 32 / G;             /* rows per warp load instruction */
    constexpr int R = SLOTS / CH;         /* rows per lane per batch */
    constexpr int WR = R * P;             /* rows per batch */
    constexpr int M = 2 * R;              /* partial sums per lane per token */
    constexpr int SPREAD = G / M;         /* lanes holding each reduced value */
    constexpr int KV = CH * VEC;          /* columns of k and q per lane */
    static_assert(SLOTS % CH == 0, "whole rows per lane");
    constexpr int RING = STAGES > 0 ? STAGES : 1;
    constexpr int WARP_ROWS = WR * BATCHES, BLOCK_ROWS = kWarpsPerBlock * WARP_ROWS;
    static_assert(M <= G, "more partial sums than lanes in a row group");
    static_assert((BLOCK_ROWS & (BLOCK_ROWS - 1)) == 0, "rows of a block: a power of two");
    extern __shared__ __align__(16) unsigned char smem[];

    /* the slot first: the state loads wait for it and for nothing else */
    const int64_t read = gdn_read_slot(&p, blockIdx.z), write = gdn_write_slot(&p, blockIdx.z);
    const int64_t first = gdn_first_token_row(&p, blockIdx.z), T64 = gdn_seq_tokens(&p, blockIdx.z);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int hw = lane / G, col = (lane % G) * VEC;
    const block_coords bc = block_coords_of(p);
    const int64_t V = p.head_dim_v;
    const int64_t block_row0 = (int64_t)blockIdx.x * BLOCK_ROWS, warp_row0 = block_row0 + warp * WARP_ROWS;
    const stage_layout at = stage_layout_of(p.num_tokens, BLOCK_ROWS, ring_bytes<SLOTS, STAGES>());

    const int own_value = (lane % G) / SPREAD, own_slot = own_value / 2; /* the row, 0..R-1 */
    const bool own_is_q = own_value & 1, own_stores = !own_is_q && (lane % SPREAD) == 0;

    if (T64 < 0 || first < 0) { /* cu_seqlens out of order or range */
        if (!p.long_tokens)     /* else the chunked kernel of the same call counts it */
            skip_bad_row(p);
        return;
    }
    const int T = (int)T64;
    if (T == 0)
        return;
    const bool padding = read < 0;
    if (padding) { /* outputs of padding rows are zeros; no state is read or written */
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

    const St *src = static_cast<const St *>(p.state_pool) + gdn_tile_offset(&p, read, bc.hv);
    uint4 *const my_ring = reinterpret_cast<uint4 *>(smem + at.ring) + (int64_t)warp * RING * SLOTS * 32;
    /* a sequence without an initial state reads its rows as zeros (as rows past V) */
    const int64_t rows_read = !PLAIN && gdn_zero_initial_state(&p, blockIdx.z) ? 0 : V;
    const int swizzle = SWIZZLE ? rows_swizzle<G, M>(lane) : 0;
    const row_batches<St, SLOTS, BATCHES, RING, P, WR, CH> batches{src, my_ring, warp_row0, rows_read,
                                                                   hw,  col,     lane,      swizzle};
    /* The state's register loads and every state and snapshot store carry the streaming hint
     * (.cs, evict first): on the H100 (daa3466 against b58aff6, the same run) 10-12% faster at
     * N = 1, 0-7% at N = 16 and 64, 0.4-1.4% slower at N = 256 (qwen3-next, T = 2, 4, 8). */
    uint4 raw[2][SLOTS];
    if constexpr (STAGES > 0) {
#pragma unroll
        for (int b = 0; b < STAGES - 1; b++)
            batches.template stage<kLoadHint>(b);
    } else {
        batches.template load<kLoadHint>(0, raw[0]);
    }
    if (GDN_L2_PREFETCH && lane == 0)
        batches.prefetch_l2(STAGES > 0 ? STAGES - 1 : 1);

    if (stage_tokens<Act, BLOCK_ROWS, PLAIN>(p, bc, first, T, block_row0, smem, at)) {
        skip_bad_row(p); /* a snapshot slot outside the pool: nothing written */
        return;
    }
    const token_gates *gates = reinterpret_cast<const token_gates *>(smem + at.gates);
    const int64_t *snapshot = reinterpret_cast<const int64_t *>(smem + at.snapshot);
    const float *qs = reinterpret_cast<const float *>(smem + at.q) + col;
    const float *ks = reinterpret_cast<const float *>(smem + at.k) + col;
    const float *vs = reinterpret_cast<const float *>(smem + at.v) + warp * WARP_ROWS + own_slot * P + hw;
    St *const pool = static_cast<St *>(p.state_pool);
    St *const dst = write < 0 ? nullptr : pool + gdn_tile_offset(&p, write, bc.hv);

#pragma unroll
    for (int b = 0; b < BATCHES; b++) {
        uint4 cur[SLOTS];
        if constexpr (STAGES > 0) {
            batches.template stage<kLoadHint>(b + STAGES - 1);
            copy_async_wait<STAGES - 1>(); /* batch b has landed */
            batches.staged(b, cur);
        } else {
#pragma unroll
            for (int j = 0; j < SLOTS; j++)
                cur[j] = raw[b % 2][j];
            if (b + 1 < BATCHES)
                batches.template load<kLoadHint>(b + 1, raw[(b + 1) % 2]);
        }
        float s[SLOTS][VEC];
#pragma unroll
        for (int j = 0; j < SLOTS; j++)
            state_vec<St>::unpack(cur[j], s[j]);
        const int64_t own_row = warp_row0 + b * WR + own_slot * P + hw;
        /* addresses advanced by a stride a token instead of recomputed in 64 bits */
        const bool stores_out = own_stores && own_row < V;
        Act *out_at = static_cast<Act *>(p.out) + first * p.out_stride + bc.hv * V + own_row;
        const int64_t row0 = warp_row0 + b * WR + hw;
        /* The rows are held as S = c * s: a token's decay multiplies the scalar c instead of
         * every element, so the update is one FFMA an element (s += (u / c) k) rather than a
         * multiply and an FFMA. c is the same in every thread of the block (one head, the same
         * tokens), so the rescale below, when c would leave the range where u / c is safe, is
         * a uniform branch; a decay of exactly 0 goes through it too. */
        float c = 1.0f;
#pragma unroll 1
        for (int t = 0; t < T; t++) {
            float k[KV], q[KV]; /* piece c of a row: columns col + c * 128 / CH .. + VEC */
#pragma unroll
            for (int i = 0; i < KV; i += 4) {
                const int at = t * kRowK + (i / VEC) * (kRowK / CH) + i % VEC;
                const float4 kv = *reinterpret_cast<const float4 *>(ks + at);
                const float4 qv = *reinterpret_cast<const float4 *>(qs + at);
                k[i] = kv.x, k[i + 1] = kv.y, k[i + 2] = kv.z, k[i + 3] = kv.w;
                q[i] = qv.x, q[i + 1] = qv.y, q[i + 2] = qv.z, q[i + 3] = qv.w;
            }
            const token_gates tg = gates[t];
            const float v_own = vs[t * BLOCK_ROWS + b * WR];
            c *= tg.decay;
            if (c < kMinRowScale) {
#pragma unroll
                for (int j = 0; j < SLOTS; j++)
#pragma unroll
                    for (int i = 0; i < VEC; i++)
                        s[j][i] *= c;
                c = 1.0f;
            }
            float sums[M];
#pragma unroll
            for (int r = 0; r < R; r++) {
                float dk = 0.0f, dq = 0.0f;
#pragma unroll
                for (int i = 0; i < KV; i++) {
                    dk += s[r * CH + i / VEC][i % VEC] * k[i];
                    dq += s[r * CH + i / VEC][i % VEC] * q[i];
                }
                sums[2 * r] = dk;
                sums[2 * r + 1] = dq;
            }
            const float mine =
                SWIZZLE ? reduce_scatter_swizzled<G, M>(sums, lane) : reduce_scatter<G, M>(sums, lane);
            const float other = __shfl_xor_sync(kFullMask, mine, SPREAD);
            const float dot_k = c * (own_is_q ? other : mine), dot_q = c * (own_is_q ? mine : other);
            const float u = tg.beta * (v_own - dot_k);
            const float u_scaled = u * reciprocal_approx(c); /* c in [2^-60, 1]: a normal float */
#pragma unroll
            for (int r = 0; r < R; r++) {
                const float ur = __shfl_sync(kFullMask, u_scaled, hw * G + 2 * (r ^ swizzle) * SPREAD);
#pragma unroll
                for (int i = 0; i < KV; i++)
                    s[r * CH + i / VEC][i % VEC] += ur * k[i];
            }
            /* the stores after every shuffle of the token, so no shuffle sits in a branch */
            if (stores_out)
                *out_at = from_float<Act>(dot_q + u * tg.kq);
            out_at += p.out_stride;
            const int64_t snap = snapshot[t];
            if (snap >= 0) {
                St *const snap_row0 = pool + snap + row0 * kRowK + col;
#pragma unroll
                for (int j = 0; j < SLOTS; j++) {
                    float x[VEC];
#pragma unroll
                    for (int i = 0; i < VEC; i++)
                        x[i] = c * s[j][i];
                    if (row0 + batches.row_of(j) < V)
                        store16_streaming(snap_row0 + batches.row_of(j) * kRowK + batches.col_of(j),
                                          state_vec<St>::pack(x));
                }
            }
        }
#pragma unroll
        for (int j = 0; j < SLOTS; j++)
#pragma unroll
            for (int i = 0; i < VEC; i++)
                s[j][i] *= c;
        if (dst) {
#pragma unroll
            for (int j = 0; j < SLOTS; j++) {
                const int64_t row = row0 + batches.row_of(j);
                if (row < V)
                    store16_streaming(dst + row * kRowK + col + batches.col_of(j), state_vec<St>::pack(s[j]));
            }
        }
    }
}

template <typename Act, typename St, int SLOTS, int BATCHES, int STAGES, int CH, bool PLAIN, bool SWIZZLE>
__global__ void __launch_bounds__(kThreads) decode_multi_token_vk128(const __grid_constant__ gdn_problem p)
{
    multi_token_tile<Act, St, SLOTS, BATCHES, STAGES, CH, PLAIN, SWIZZLE>(p);
    /* Beside a mixed call's chunked kernel (decode.cu): one thread of the block scheduled last
     * holds the grid open until that kernel is done, so the stream's next work waits for both
     * (one block a call kept on a multiprocessor, instead of every block) */
    if (p.mixed_overlap && threadIdx.x == 0 && blockIdx.x == gridDim.x - 1 && blockIdx.y == gridDim.y - 1 &&
        blockIdx.z == gridDim.z - 1)
        wait_for_prerequisite();
}

/* Each configuration: rows per batch (f32 rows; bf16 takes two rows per load), batches per
 * warp, the shared-memory ring depth (0 = registers) and the lanes a row (0: one 16-byte
 * piece a lane, 32 lanes an f32 row, 16 a bf16 row; 8: CH pieces a lane). */
constexpr gdn_kernel_shape kShapes[] = {{4, 1, 0, 0, 0},  {8, 1, 0, 0, 0}, {4, 2, 0, 0, 0}, {8, 2, 0, 0, 0},
                                        {4, 4, 0, 0, 0},  {8, 4, 3, 0, 0}, {4, 4, 3, 0, 0}, {4, 8, 4, 0, 0},
                                        {8, 8, 4, 0, 0},  {8, 4, 0, 8, 0}, {8, 4, 3, 8, 0}, {8, 8, 4, 8, 0},
                                        {16, 4, 3, 8, 0}, {8, 1, 0, 8, 0}};
constexpr int kShapeCount = sizeof kShapes / sizeof kShapes[0];

template <typename Act, typename St, int SLOTS, int BATCHES, int STAGES, int CH, bool PLAIN, bool SWIZZLE>
cudaError_t launch_kernel(const gdn_problem &p, cudaStream_t stream)
{
    constexpr int P = 32 / (kRowK / (state_vec<St>::n * CH));
    constexpr int64_t warp_rows = (int64_t)(SLOTS / CH) * P * BATCHES,
                      block_rows = kWarpsPerBlock * warp_rows;
    const stage_layout at = stage_layout_of(p.num_tokens, block_rows, ring_bytes<SLOTS, STAGES>());
    const auto kernel = decode_multi_token_vk128<Act, St, SLOTS, BATCHES, STAGES, CH, PLAIN, SWIZZLE>;
    /* Past the default 48 KiB (T > 12 with the ring) a kernel must opt in (per device, so on
     * every such call); always to the most this instantiation can ask for, so that threads
     * racing with different T never lower each other's limit. */
    constexpr int64_t most = stage_layout_of(GDN_MAX_TOKENS, block_rows, ring_bytes<SLOTS, STAGES>()).bytes;
    if (at.bytes > 48 * 1024) {
        const cudaError_t err =
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)most);
        if (err != cudaSuccess)
            return err;
    }
    /* always 4 warps: the prologue's token loop and the value stage assume BLOCK_ROWS rows */
    const dim3 grid((unsigned)((p.head_dim_v + block_rows - 1) / block_rows), (unsigned)p.num_v_heads,
                    (unsigned)p.num_seqs);
    if (p.mixed_overlap)
        return launch_programmatic(kernel, grid, dim3(kThreads), (size_t)at.bytes, stream, p);
    kernel<<<grid, kThreads, (size_t)at.bytes, stream>>>(p);
    return cudaGetLastError();
}

/* CHOSEN: a configuration choose_config picks, which also gets an instantiation for the plain
 * calls (a, b, A_log, dt_bias gates, every sequence from its slot's state): reading g and
 * has_initial_state, even behind uniform branches, put the has_initial_state load between the
 * slot index and the state loads and a selection between the gate forms in the prologue
 * (2-4% at 23f4455, bench/NOTES.md). The other configurations (tuning) take every call in one. */
template <typename Act, typename St, int SLOTS, int BATCHES, int STAGES, int CH = 1, bool CHOSEN = false,
          bool SWIZZLE = GDN_MT_SWIZZLE == 1>
cudaError_t launch_shape(const gdn_problem &p, cudaStream_t stream)
{
    if (CHOSEN && !p.g && !p.has_initial_state)
        return launch_kernel<Act, St, SLOTS, BATCHES, STAGES, CH, CHOSEN, SWIZZLE>(p, stream);
    return launch_kernel<Act, St, SLOTS, BATCHES, STAGES, CH, false, SWIZZLE>(p, stream);
}

template <typename Act, typename St>
cudaError_t launch_config(const gdn_problem &p, int config, cudaStream_t stream)
{
    constexpr int D = state_vec<St>::n == 8 ? 2 : 1;
    constexpr int CH8 = 16 / state_vec<St>::n; /* pieces a lane for 8 lanes a row */
    switch (config) {                          /* kShapes, in order */
    case 0: return launch_shape<Act, St, 4 / D, 1, 0>(p, stream);
    case 1: return launch_shape<Act, St, 8 / D, 1, 0>(p, stream);
    case 2: return launch_shape<Act, St, 4 / D, 2, 0, 1, true>(p, stream);
    case 3: return launch_shape<Act, St, 8 / D, 2, 0, 1, true>(p, stream);
    case 4: return launch_shape<Act, St, 4 / D, 4, 0, 1, true>(p, stream);
    case 5: return launch_shape<Act, St, 8 / D, 4, 3, 1, true>(p, stream);
    case 6: return launch_shape<Act, St, 4 / D, 4, 3, 1, true>(p, stream);
    case 7: return launch_shape<Act, St, 4 / D, 8, 4>(p, stream);
    case 8: return launch_shape<Act, St, 8 / D, 8, 4>(p, stream);
    case 9: return launch_shape<Act, St, 2 * CH8, 4, 0, CH8>(p, stream);
    case 10: return launch_shape<Act, St, 2 * CH8, 4, 3, CH8, true>(p, stream);
    case 11: return launch_shape<Act, St, 2 * CH8, 8, 4, CH8>(p, stream);
    case 12: return launch_shape<Act, St, 4 * CH8, 4, 3, CH8>(p, stream);
    default: return launch_shape<Act, St, 2 * CH8, 1, 0, CH8, true, GDN_MT_SWIZZLE != 0>(p, stream);
    }
}

/*
 * The configuration for a batch, from the H200 sweep of every configuration at T = 2, 3, 4, 8,
 * N = 1, 16, 64, 256, with and without token slots (qwen3-next;
 * bench/results/h200-2026-12-02-09cac05-mtp/configs.csv). Each choice is within 3.5% of the
 * fastest configuration on average over its points:
 *  - up to 64 rows of state a multiprocessor (N = 1): one batch of 8 rows at 8 lanes a row
 *    (r8x1l8): the most warps and the shortest chain;
 *  - with token slots every token stores the tile, the stores dominate, and one or two batches
 *    a warp keep the most stores in flight: r4x2 (f32), r8x2 (bf16);
 *  - otherwise the token loop's instructions dominate: f32 takes 8 lanes a row (a quarter of the
 *    shuffles a token) with 4 batches through a 3-stage ring (r8x4s3l8) at T = 3..7, 4 batches
 *    of 4 rows at T = 2 (r4x4) and through a 3-stage ring from T = 8 (r4x4s3); bf16 keeps 16
 *    lanes a row, 4 batches of 8 rows through a 3-stage ring (r8x4s3).
 */
int choose_config(const gdn_problem &p)
{
    const int64_t rows_per_sm = p.num_seqs * p.num_v_heads * p.head_dim_v / sm_count();
    const bool bf16 = p.state_dtype == GDN_DTYPE_BF16;
    if (rows_per_sm <= 64)
        return 13; /* r8x1l8 */
    if (p.token_slots)
        return bf16 ? 3 : 2; /* r8x2, r4x2 */
    if (bf16)
        return 5; /* r8x4s3 */
    /* f32 by T (the same sweep, N = 16-256, mean time over the fastest configuration's):
     * T = 2 r4x4 1.002 (r8x4s3l8 1.060), T = 8 r4x4s3 1.035 (1.069), T = 3, 4 r8x4s3l8 */
    return p.num_tokens <= 2 ? 4 : p.num_tokens >= 8 ? 6 : 10; /* r4x4, r4x4s3, r8x4s3l8 */
}

int forced_config = -1;

template <typename Act> cudaError_t launch_act(const gdn_problem &p, cudaStream_t stream)
{
    const int forced = __atomic_load_n(&forced_config, __ATOMIC_RELAXED);
    const int config = forced >= 0 ? forced : choose_config(p);
    return p.state_dtype == GDN_DTYPE_BF16 ? launch_config<Act, __nv_bfloat16>(p, config, stream)
                                           : launch_config<Act, float>(p, config, stream);
}

} // namespace

int gdn_cuda_multi_token_applies(const gdn_problem *p)
{
    const int64_t vec = p->state_dtype == GDN_DTYPE_BF16 ? 8 : 4;
    return p->state_layout == GDN_LAYOUT_VK && p->head_dim_k == kRowK &&
           (p->num_tokens > 1 || p->cu_seqlens || p->token_slots || p->num_accepted || p->g ||
            p->has_initial_state) && /* (one-token calls with these: see gdn_cuda_one_token_applies) */
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
