/*
 * cuda backend: decode, one token per sequence.
 *
 * Design. Decode is memory-bound: each (sequence, value head) tile of V x K state is read once
 * and written once, and each state element costs 4 FLOPs (two dot products and one update),
 * so the kernel's whole job is to stream the pool at copy bandwidth. Rows of a tile (value
 * channels) are independent given q, k, g and beta, because
 *     u_j = beta (v_j - e^g S_j.k)      o_j = e^g S_j.q + u_j (k.q)      S'_j = e^g S_j + u_j k
 * all come from the old row S_j. So a block owns a (sequence, head, row range) and nothing is
 * shared between blocks: the grid is (N*HV) x (V / rows per block), enough blocks to fill
 * every SM even at N = 1.
 *
 * Fast path (layout vk, K = 128): 128 threads, 8 lanes per row, 16 rows per block. Lane l of a
 * row loads 16-byte vectors at elements c*8*VEC + l*VEC, so each load instruction of the 8
 * lanes covers one contiguous 128-byte span (coalesced) and the matching q/k reads from shared
 * memory are conflict-free. The state loads are issued first, before q and k are fetched and
 * l2-normalised (block reduction), so their latency overlaps that work. Row sums reduce over the
 * 8 lanes with three shuffles each. Per thread: 64 B (f32) or 32 B (bf16) of state in flight.
 *
 * Generic paths (any K, V up to GDN_CUDA_MAX_HEAD_DIM; vk and kv): scalar, coalesced along the
 * contiguous dimension, rows re-read for the update (an L1/L2 hit). Correct for every size the
 * API accepts; not tuned.
 *
 * Slot indices stay in device memory: a row whose read, write or snapshot slot is >= num_slots,
 * whose num_accepted is out of range or whose cu_seqlens entries are out of order or range, is
 * skipped entirely (nothing written), so a bad index can never write outside the pool; in
 * checked mode (bad_index_rows) such rows are also counted.
 */
#include "device_common.cuh"
#include "kernels.h"

namespace
{

/*
 * Per-token inputs of one (sequence, value head), staged in shared memory by
 * prepare_tokens: raw q and k (the norms are folded into the scalars, so the rows need no
 * rescaled copy), and per token the factors that turn raw dot products into normalised ones.
 */
template <int MAXT, int KMAX> struct token_stage {
    float q[MAXT][KMAX], k[MAXT][KMAX];
    float q_factor[MAXT];   /* scale / ||q||   (scale when l2norm is off) */
    float k_factor[MAXT];   /* 1 / ||k|| */
    float kq[MAXT];         /* k_hat . q_hat * scale */
    float decay[MAXT];      /* exp(g) */
    float beta[MAXT];       /* sigmoid(b) */
    int64_t snapshot[MAXT]; /* tile offset receiving the state after token t, or -1 */
};

/*
 * Block-wide: stages the inputs of tokens 0..T-1 of sequence n (activation rows first..).
 * Warp w takes tokens w, w+4, ...: it loads the token's q and k, reduces the three sums with
 * shuffles, and its lane 0 computes the token's scalars, so no cross-warp reduction is needed.
 * Every thread of the block must call it (it ends with the block's one barrier).
 *
 * GDN_EARLY_GATES (a variant, off by default until measured; bench/NOTES.md, v5): lane 0 issues
 * the gate loads (a, b, A_log, dt_bias) before the q/k loads instead of after the sums, and with
 * KFIXED (the fast path's K = 128) the q/k loop unrolls without remainder paths, so all of a
 * token's loads are in flight together: one memory round trip per block instead of two. With the
 * flag off the code is the measured kernel's, instruction for instruction (bench/NOTES.md).
 */
#ifndef GDN_EARLY_GATES
#define GDN_EARLY_GATES 0
#endif

template <typename Act, int MAXT, int KMAX, int KFIXED = 0>
__device__ void prepare_tokens(const gdn_problem &p, const block_coords &bc, int64_t first, int64_t T,
                               token_stage<MAXT, KMAX> &st)
{
    constexpr bool early = GDN_EARLY_GATES;
    const int64_t K = early && KFIXED > 0 ? KFIXED : p.head_dim_k;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int t = warp; t < T; t += kWarps) {
        const int64_t row = first + t;
        const int64_t q_at = row * p.q_stride + bc.h * K, k_at = row * p.k_stride + bc.h * K;
        gate_inputs early_gates{};
        if (early && lane == 0)
            early_gates = load_gate_inputs<Act>(p, row, bc.hv);
        float qq = 0.0f, kk = 0.0f, qk = 0.0f;
        const auto stage = [&](int64_t i) {
            const float qi = load_elem<Act>(p.q, q_at + i), ki = load_elem<Act>(p.k, k_at + i);
            st.q[t][i] = qi;
            st.k[t][i] = ki;
            qq += qi * qi;
            kk += ki * ki;
            qk += qi * ki;
        };
        if (early) {
#pragma unroll
            for (int64_t i = lane; i < K; i += 32)
                stage(i);
        } else {
            for (int64_t i = lane; i < K; i += 32)
                stage(i);
        }
        qq = row_sum<32>(qq);
        kk = row_sum<32>(kk);
        qk = row_sum<32>(qk);
        if (lane == 0) {
            const float q_factor = (p.qk_l2norm ? inv_sqrt(qq + GDN_L2NORM_EPS) : 1.0f) * p.scale;
            const float k_factor = p.qk_l2norm ? inv_sqrt(kk + GDN_L2NORM_EPS) : 1.0f;
            const gate_inputs gi = early ? early_gates : load_gate_inputs<Act>(p, row, bc.hv);
            st.q_factor[t] = q_factor;
            st.k_factor[t] = k_factor;
            st.kq[t] = qk * q_factor * k_factor;
            st.decay[t] = gate_decay(p, gi);
            st.beta[t] = gate_beta(p, gi);
            const int64_t slot = p.token_slots ? gdn_token_slot(&p, bc.n, t) : -1;
            st.snapshot[t] = slot < 0 ? -1 : gdn_tile_offset(&p, slot, bc.hv);
        }
    }
    __syncthreads();
}

/*
 * The slots and tokens of this block's sequence. Returns false when the block has nothing to
 * compute: a padding row (its outputs in [row0, row0 + rows) are zeroed here), a sequence with
 * no tokens, or invalid indices (skipped: nothing written; counted in checked mode).
 */
template <typename Act>
__device__ bool resolve_sequence(const gdn_problem &p, const block_coords &bc, int64_t row0, int64_t rows,
                                 int64_t *read, int64_t *write, int64_t *first, int64_t *T)
{
    *read = gdn_read_slot(&p, bc.n);
    *write = gdn_write_slot(&p, bc.n);
    *first = gdn_first_token_row(&p, bc.n);
    *T = gdn_seq_tokens(&p, bc.n);
    if (*T < 0 || *first < 0) /* cu_seqlens out of order or range */
        return skip_bad_row(p);
    if (*T == 0)
        return false;
    if (*read < 0) {
        const int64_t V = p.head_dim_v, hi = row0 + rows < V ? row0 + rows : V;
        for (int64_t t = 0; t < *T; t++)
            for (int64_t j = row0 + threadIdx.x; j < hi; j += blockDim.x)
                store_elem<Act>(p.out, (*first + t) * p.out_stride + bc.hv * V + j, 0.0f);
        return false;
    }
    if (*read >= p.num_slots || *write >= p.num_slots) /* GDN_BAD_SLOT: num_accepted out of range */
        return skip_bad_row(p);
    for (int64_t t = 0; p.token_slots && t < *T; t++) /* every snapshot slot inside the pool */
        if (gdn_token_slot(&p, bc.n, t) >= p.num_slots)
            return skip_bad_row(p);
    return true;
}

/* ---- fast path: vk layout, K = 128 -------------------------------------------------------- */

constexpr int kFastK = 128;
constexpr int kLanesPerRow = 8;
constexpr int kFastRows = kThreads / kLanesPerRow;

/*
 * One block: 128 threads = 16 row groups of 8 lanes; each thread owns ROWS rows (row group g
 * owns rows g, g + 16, ...), so a block covers 16 * ROWS rows of one (sequence, head) tile.
 * ROWS trades parallelism at small N (ROWS = 1: most blocks) against per-block overhead and
 * bytes in flight at large N (ROWS = 4: 4 * 64 B of f32 state per thread).
 *
 * Latency chain, which sets the time at small N: every load that does not depend on the slot
 * (slot indices, q, k, v, a, b, A_log, dt_bias) is issued first, together; then the state
 * loads, which need the slot; then one barrier for the q/k norms. q and k stay raw in shared
 * memory and the norms are folded into the row sums and the update.
 */
#ifndef GDN_STREAMING_HINTS
#define GDN_STREAMING_HINTS 0
#endif
#ifndef GDN_USE_PDL
#define GDN_USE_PDL 0
#endif

/* 16-byte state accesses. The state is touched once per call, so "evict first" hints can keep
 * it from displacing the activations in L2 (GDN_STREAMING_HINTS; measured in bench/NOTES.md). */
template <typename St> __device__ __forceinline__ uint4 load_state_vec(const St *at)
{
    const uint4 *p = reinterpret_cast<const uint4 *>(at);
    return GDN_STREAMING_HINTS ? __ldcs(p) : *p;
}

template <typename St> __device__ __forceinline__ void store_state_vec(St *at, uint4 x)
{
    uint4 *p = reinterpret_cast<uint4 *>(at);
    if (GDN_STREAMING_HINTS)
        __stcs(p, x);
    else
        *p = x;
}

/* Programmatic dependent launch (sm_90): the kernel may be launched while the previous kernel
 * on the stream is still running; it waits here, before reading anything, until that kernel has
 * finished and its writes are visible, and lets the next kernel start launching right away.
 * Without the launch attribute both instructions are no-ops. */
__device__ __forceinline__ void wait_for_previous_kernel(void)
{
    if (GDN_USE_PDL)
        wait_for_producer();
}

/*
 * One block: 128 threads = 16 row groups of 8 lanes; each thread owns ROWS rows (row group g
 * owns rows g, g + 16, ...), so a block covers 16 * ROWS rows of one (sequence, head) tile.
 * ROWS trades parallelism at small N (ROWS = 1: most blocks) against per-block overhead and
 * bytes in flight at large N (ROWS = 4: 4 * 64 B of f32 state per thread). MAXT is the most
 * tokens per sequence (1 for plain decode); the rows stay in registers across tokens.
 *
 * Latency chain, which sets the time at small N: the slot and token-count loads first, then
 * the state loads (they need the slot) together with the token inputs, then the block's one
 * barrier, then arithmetic and stores.
 */
template <typename Act, typename St, int ROWS, int MAXT>
__global__ void __launch_bounds__(kThreads) decode_vk_k128(const __grid_constant__ gdn_problem p)
{
    constexpr int VEC = state_vec<St>::n;
    constexpr int CHUNKS = kFastK / (kLanesPerRow * VEC);
    constexpr int BLOCK_ROWS = kFastRows * ROWS;
    __shared__ __align__(16) token_stage<MAXT, kFastK> st;

    const int64_t V = p.head_dim_v;
    const block_coords bc = block_coords_of(p);
    const int64_t row0 = (int64_t)blockIdx.x * BLOCK_ROWS + threadIdx.x / kLanesPerRow;
    const int lane = threadIdx.x % kLanesPerRow;

    wait_for_previous_kernel();
    int64_t read, write, first, T;
    if (!resolve_sequence<Act>(p, bc, (int64_t)blockIdx.x * BLOCK_ROWS, BLOCK_ROWS, &read, &write, &first,
                               &T))
        return;

    /* The state rows, then the values of the rows for every token. */
    uint4 raw[ROWS][CHUNKS];
    const St *src = static_cast<const St *>(p.state_pool) + gdn_tile_offset(&p, read, bc.hv) + lane * VEC;
    const bool zero_init = gdn_zero_initial_state(&p, bc.n);
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int64_t row = row0 + r * kFastRows;
        if (row < V) {
#pragma unroll
            for (int c = 0; c < CHUNKS; c++)
                raw[r][c] = zero_init ? make_uint4(0, 0, 0, 0)
                                      : load_state_vec(src + row * kFastK + c * kLanesPerRow * VEC);
        }
    }
    float v_row[MAXT][ROWS];
#pragma unroll
    for (int t = 0; t < MAXT; t++)
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            const int64_t row = row0 + r * kFastRows;
            v_row[t][r] =
                t < T && row < V ? load_elem<Act>(p.v, (first + t) * p.v_stride + bc.hv * V + row) : 0.0f;
        }
    prepare_tokens<Act, MAXT, kFastK, kFastK>(p, bc, first, T, st);

    St *pool = static_cast<St *>(p.state_pool);
    const int64_t dst = write < 0 ? -1 : gdn_tile_offset(&p, write, bc.hv);
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int64_t row = row0 + r * kFastRows;
        if (row >= V)
            break;
        float s[CHUNKS * VEC];
#pragma unroll
        for (int c = 0; c < CHUNKS; c++)
            state_vec<St>::unpack(raw[r][c], s + c * VEC);
#pragma unroll
        for (int t = 0; t < MAXT; t++) {
            if (t >= T)
                break;
            float dot_k = 0.0f, dot_q = 0.0f;
#pragma unroll
            for (int c = 0; c < CHUNKS; c++) {
                const int at = c * kLanesPerRow * VEC + lane * VEC;
#pragma unroll
                for (int e = 0; e < VEC; e += 4) {
                    const float4 kv = *reinterpret_cast<const float4 *>(&st.k[t][at + e]);
                    const float4 qv = *reinterpret_cast<const float4 *>(&st.q[t][at + e]);
                    const float *x = s + c * VEC + e;
                    dot_k += x[0] * kv.x + x[1] * kv.y + x[2] * kv.z + x[3] * kv.w;
                    dot_q += x[0] * qv.x + x[1] * qv.y + x[2] * qv.z + x[3] * qv.w;
                }
            }
            const float k_factor = st.k_factor[t], decay = st.decay[t];
            dot_k = row_sum<kLanesPerRow>(dot_k) * k_factor;
            dot_q = row_sum<kLanesPerRow>(dot_q) * st.q_factor[t];
            const float u = st.beta[t] * (v_row[t][r] - decay * dot_k);
            if (lane == 0)
                store_elem<Act>(p.out, (first + t) * p.out_stride + bc.hv * V + row,
                                decay * dot_q + u * st.kq[t]);
            const float u_k = u * k_factor; /* S' = decay S + u k_hat, k_hat = k_factor k */
#pragma unroll
            for (int c = 0; c < CHUNKS; c++) {
                const int at = c * kLanesPerRow * VEC + lane * VEC;
#pragma unroll
                for (int e = 0; e < VEC; e++)
                    s[c * VEC + e] = decay * s[c * VEC + e] + u_k * st.k[t][at + e];
            }
            if (MAXT > 1 && st.snapshot[t] >= 0) {
#pragma unroll
                for (int c = 0; c < CHUNKS; c++)
                    store_state_vec(pool + st.snapshot[t] + row * kFastK + lane * VEC +
                                        c * kLanesPerRow * VEC,
                                    state_vec<St>::pack(s + c * VEC));
            }
        }
        if (dst < 0)
            continue;
#pragma unroll
        for (int c = 0; c < CHUNKS; c++)
            store_state_vec(pool + dst + row * kFastK + lane * VEC + c * kLanesPerRow * VEC,
                            state_vec<St>::pack(s + c * VEC));
    }
}

/* ---- generic paths: any K, V up to GDN_MAX_HEAD_DIM, vk and kv ------------------------------ */

constexpr int kGenericVkRows = 16;                      /* rows per block: 4 per warp */
constexpr int kGenericKvCols = 32;                      /* value columns per block: one per lane */
constexpr int kPerLaneVk = GDN_MAX_HEAD_DIM / 32;       /* row elements per lane (vk) */
constexpr int kPerThreadKv = GDN_MAX_HEAD_DIM / kWarps; /* column elements per thread (kv) */

/* vk: a warp per row, lanes along K; the row's elements stay in registers across tokens. */
template <typename Act, typename St, int MAXT>
__global__ void __launch_bounds__(kThreads) decode_vk_generic(const __grid_constant__ gdn_problem p)
{
    __shared__ token_stage<MAXT, GDN_MAX_HEAD_DIM> st;
    const int64_t K = p.head_dim_k, V = p.head_dim_v;
    const block_coords bc = block_coords_of(p);
    const int64_t row0 = (int64_t)blockIdx.x * kGenericVkRows;
    int64_t read, write, first, T;
    if (!resolve_sequence<Act>(p, bc, row0, kGenericVkRows, &read, &write, &first, &T))
        return;
    prepare_tokens<Act>(p, bc, first, T, st);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    St *pool = static_cast<St *>(p.state_pool);
    const int64_t src = gdn_tile_offset(&p, read, bc.hv),
                  dst = write < 0 ? -1 : gdn_tile_offset(&p, write, bc.hv);
    const bool zero_init = gdn_zero_initial_state(&p, bc.n);
    for (int64_t row = row0 + warp; row < row0 + kGenericVkRows && row < V; row += kWarps) {
        float s[kPerLaneVk];
#pragma unroll
        for (int m = 0; m < kPerLaneVk; m++)
            s[m] =
                lane + 32 * m < K && !zero_init ? load_elem<St>(pool, src + row * K + lane + 32 * m) : 0.0f;
        for (int t = 0; t < T; t++) {
            float dot_k = 0.0f, dot_q = 0.0f;
#pragma unroll
            for (int m = 0; m < kPerLaneVk; m++)
                if (lane + 32 * m < K) {
                    dot_k += s[m] * st.k[t][lane + 32 * m];
                    dot_q += s[m] * st.q[t][lane + 32 * m];
                }
            dot_k = row_sum<32>(dot_k) * st.k_factor[t];
            dot_q = row_sum<32>(dot_q) * st.q_factor[t];
            const float decay = st.decay[t];
            const float u = st.beta[t] *
                            (load_elem<Act>(p.v, (first + t) * p.v_stride + bc.hv * V + row) - decay * dot_k);
            if (lane == 0)
                store_elem<Act>(p.out, (first + t) * p.out_stride + bc.hv * V + row,
                                decay * dot_q + u * st.kq[t]);
            const float u_k = u * st.k_factor[t];
#pragma unroll
            for (int m = 0; m < kPerLaneVk; m++)
                if (lane + 32 * m < K) {
                    s[m] = decay * s[m] + u_k * st.k[t][lane + 32 * m];
                    if (st.snapshot[t] >= 0)
                        store_elem<St>(pool, st.snapshot[t] + row * K + lane + 32 * m, s[m]);
                }
        }
#pragma unroll
        for (int m = 0; m < kPerLaneVk; m++)
            if (dst >= 0 && lane + 32 * m < K)
                store_elem<St>(pool, dst + row * K + lane + 32 * m, s[m]);
    }
}

/* kv: lanes along V (one column each, coalesced), warps split K; the column's elements stay in
 * registers across tokens and the per-token sums meet in shared memory (one barrier a token). */
template <typename Act, typename St, int MAXT>
__global__ void __launch_bounds__(kThreads) decode_kv_generic(const __grid_constant__ gdn_problem p)
{
    __shared__ token_stage<MAXT, GDN_MAX_HEAD_DIM> st;
    __shared__ float partial[2][kWarps][2][32]; /* double-buffered by token parity */
    const int64_t K = p.head_dim_k, V = p.head_dim_v;
    const block_coords bc = block_coords_of(p);
    const int64_t col0 = (int64_t)blockIdx.x * kGenericKvCols;
    int64_t read, write, first, T;
    if (!resolve_sequence<Act>(p, bc, col0, kGenericKvCols, &read, &write, &first, &T))
        return;
    prepare_tokens<Act>(p, bc, first, T, st);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t col = col0 + lane;
    const bool has_col = col < V;
    St *pool = static_cast<St *>(p.state_pool);
    const int64_t src = gdn_tile_offset(&p, read, bc.hv),
                  dst = write < 0 ? -1 : gdn_tile_offset(&p, write, bc.hv);
    const bool zero_init = gdn_zero_initial_state(&p, bc.n);
    float s[kPerThreadKv];
#pragma unroll
    for (int m = 0; m < kPerThreadKv; m++) {
        const int64_t i = warp + kWarps * m;
        s[m] = has_col && i < K && !zero_init ? load_elem<St>(pool, src + i * V + col) : 0.0f;
    }
    for (int t = 0; t < T; t++) {
        float dot_k = 0.0f, dot_q = 0.0f;
#pragma unroll
        for (int m = 0; m < kPerThreadKv; m++) {
            const int64_t i = warp + kWarps * m;
            if (i < K) {
                dot_k += s[m] * st.k[t][i];
                dot_q += s[m] * st.q[t][i];
            }
        }
        partial[t & 1][warp][0][lane] = dot_k;
        partial[t & 1][warp][1][lane] = dot_q;
        __syncthreads();
        dot_k = dot_q = 0.0f;
        for (int w = 0; w < kWarps; w++) {
            dot_k += partial[t & 1][w][0][lane];
            dot_q += partial[t & 1][w][1][lane];
        }
        dot_k *= st.k_factor[t];
        dot_q *= st.q_factor[t];
        const float decay = st.decay[t];
        const float v_j = has_col ? load_elem<Act>(p.v, (first + t) * p.v_stride + bc.hv * V + col) : 0.0f;
        const float u = st.beta[t] * (v_j - decay * dot_k);
        if (has_col && warp == 0)
            store_elem<Act>(p.out, (first + t) * p.out_stride + bc.hv * V + col,
                            decay * dot_q + u * st.kq[t]);
        const float u_k = u * st.k_factor[t];
#pragma unroll
        for (int m = 0; m < kPerThreadKv; m++) {
            const int64_t i = warp + kWarps * m;
            if (i < K) {
                s[m] = decay * s[m] + u_k * st.k[t][i];
                if (has_col && st.snapshot[t] >= 0)
                    store_elem<St>(pool, st.snapshot[t] + i * V + col, s[m]);
            }
        }
    }
#pragma unroll
    for (int m = 0; m < kPerThreadKv; m++) {
        const int64_t i = warp + kWarps * m;
        if (dst >= 0 && has_col && i < K)
            store_elem<St>(pool, dst + i * V + col, s[m]);
    }
}

/* ---- launch -------------------------------------------------------------------------------- */

#ifndef GDN_FAST_MAX_ROWS
#define GDN_FAST_MAX_ROWS 4
#endif

template <typename Act, typename St, int ROWS, int MAXT>
void launch_fast(const gdn_problem &p, cudaStream_t stream)
{
    const int64_t block_rows = (int64_t)kFastRows * ROWS;
    dim3 grid((unsigned)((p.head_dim_v + block_rows - 1) / block_rows), (unsigned)p.num_v_heads,
              (unsigned)p.num_seqs);
#if GDN_USE_PDL
    launch_programmatic(decode_vk_k128<Act, St, ROWS, MAXT>, grid, dim3(kThreads), 0, stream, p);
#else
    decode_vk_k128<Act, St, ROWS, MAXT><<<grid, kThreads, 0, stream>>>(p);
#endif
}

template <typename Act, typename St, int MAXT> void launch_generic(const gdn_problem &p, cudaStream_t stream)
{
    const int64_t V = p.head_dim_v;
    if (p.state_layout == GDN_LAYOUT_VK) {
        dim3 grid((unsigned)((V + kGenericVkRows - 1) / kGenericVkRows), (unsigned)p.num_v_heads,
                  (unsigned)p.num_seqs);
        decode_vk_generic<Act, St, MAXT><<<grid, kThreads, 0, stream>>>(p);
    } else {
        dim3 grid((unsigned)((V + kGenericKvCols - 1) / kGenericKvCols), (unsigned)p.num_v_heads,
                  (unsigned)p.num_seqs);
        decode_kv_generic<Act, St, MAXT><<<grid, kThreads, 0, stream>>>(p);
    }
}

int forced_overlap = -1; /* gdn_cuda_mixed_force_overlap; -1 = by env */

/* The overlap of a mixed call's two kernels, on by default (GDN_MIXED_OVERLAP=0 turns it off;
 * read once): on an H100, contest's mixed case 457-461 -> 368-377 us, qwen3-next's 818-829 ->
 * 786-797 (bench/results/h100-2026-12-07-37f6e36-mixed). */
bool mixed_overlap_on(void)
{
    static int env = -1;
    return forced_switch(&forced_overlap, "GDN_MIXED_OVERLAP", &env, 1) != 0;
}

template <typename Act, typename St> cudaError_t launch(const gdn_problem &p, cudaStream_t stream)
{
    const int64_t V = p.head_dim_v, K = p.head_dim_k, HV = p.num_v_heads, N = p.num_seqs;
    const bool single = p.num_tokens == 1;
    if (gdn_chunked_applies(&p)) {
        /* Sequences longer than GDN_MAX_TOKENS in chunks; the others (decodes, verifies) on the
         * multi-token kernel, launched after it, when that kernel takes this pool. A few long
         * sequences leave most multiprocessors idle for the whole walk over their chunks (one
         * of contest's 8 heads x 4 slices: 32 blocks), so from sm_90 on the multi-token kernel
         * runs beside the chunked kernel (mixed_overlap; GDN_MIXED_OVERLAP=0 turns that off). */
        gdn_problem shorts = p, longs = p;
        shorts.num_tokens = GDN_MAX_TOKENS, shorts.long_tokens = p.num_tokens;
        const bool split = gdn_cuda_multi_token_applies(&shorts);
        longs.long_tokens = split ? p.num_tokens : 0;
        shorts.mixed_overlap = longs.mixed_overlap = split && mixed_overlap_on() && cc_major() >= 9;
        const cudaError_t err = gdn_cuda_launch_chunked(&longs, stream);
        return err == cudaSuccess && split ? gdn_cuda_launch_multi_token(&shorts, stream) : err;
    }
    if (gdn_cuda_one_token_applies(&p))
        return gdn_cuda_launch_one_token(&p, stream);
    if (gdn_cuda_multi_token_applies(&p))
        return gdn_cuda_launch_multi_token(&p, stream);
    /* the vector kernels read 16-byte pieces of each tile: every slot must start 16-byte aligned */
    const int64_t state_size = p.state_dtype == GDN_DTYPE_BF16 ? 2 : 4;
    const bool slots_aligned = (p.slot_stride * state_size) % 16 == 0;
    if (single && p.state_layout == GDN_LAYOUT_VK && K == kFastK && slots_aligned) {
        /* One token with q or k rows the one-token kernel cannot read as vectors (multi-token
         * calls of this layout all take decode_multi_token.cu). The most rows per thread that
         * still leaves 8 blocks per multiprocessor. */
        const int64_t rows = N * HV * V, enough = 8LL * sm_count() * kFastRows;
        if (GDN_FAST_MAX_ROWS >= 4 && rows >= 4 * enough)
            launch_fast<Act, St, 4, 1>(p, stream);
        else if (GDN_FAST_MAX_ROWS >= 2 && rows >= 2 * enough)
            launch_fast<Act, St, 2, 1>(p, stream);
        else
            launch_fast<Act, St, 1, 1>(p, stream);
    } else if (single) {
        launch_generic<Act, St, 1>(p, stream);
    } else {
        launch_generic<Act, St, GDN_MAX_TOKENS>(p, stream);
    }
    return cudaGetLastError();
}

template <typename Act> cudaError_t launch_act(const gdn_problem &p, cudaStream_t stream)
{
    return p.state_dtype == GDN_DTYPE_BF16 ? launch<Act, __nv_bfloat16>(p, stream)
                                           : launch<Act, float>(p, stream);
}

/* Grid y and z (value heads, sequences) are limited to 65535 per launch. */
constexpr int64_t kMaxGridYZ = 65535;

cudaError_t launch_rows(const gdn_problem &p, cudaStream_t stream)
{
    switch (p.act_dtype) {
    case GDN_DTYPE_F16: return launch_act<__half>(p, stream);
    case GDN_DTYPE_BF16: return launch_act<__nv_bfloat16>(p, stream);
    default: return launch_act<float>(p, stream);
    }
}

} // namespace

extern "C" gdn_status gdn_cuda_decode(const gdn_problem *p)
{
    if (p->num_v_heads > kMaxGridYZ)
        return gdn_fail(GDN_ERR_INVALID_SHAPE, "num_v_heads = %lld exceeds the cuda backend's limit of %lld",
                        (long long)p->num_v_heads, (long long)kMaxGridYZ);
    /* Launch on the device that holds the pool (found during validation), whatever device the
     * calling thread has current. */
    const int pool_device = p->device;
    int current = -1;
    cudaGetDevice(&current);
    const bool switch_device = pool_device >= 0 && pool_device != current;
    if (switch_device)
        cudaSetDevice(pool_device);
    cudaStream_t stream = static_cast<cudaStream_t>(p->stream);
    cudaError_t err = cudaSuccess;
    for (int64_t first = 0; first < p->num_seqs && err == cudaSuccess; first += kMaxGridYZ) {
        const int64_t count = p->num_seqs - first < kMaxGridYZ ? p->num_seqs - first : kMaxGridYZ;
        err = launch_rows(gdn_problem_rows(p, first, count), stream);
    }
    if (switch_device)
        cudaSetDevice(current);
    if (err != cudaSuccess)
        return gdn_fail(GDN_ERR_DEVICE, "decode kernel launch failed: %s", cudaGetErrorString(err));
    return GDN_OK;
}

extern "C" void gdn_cuda_mixed_force_overlap(int overlap)
{
    __atomic_store_n(&forced_overlap, overlap >= 0 ? (overlap != 0) : -1, __ATOMIC_RELAXED);
}
