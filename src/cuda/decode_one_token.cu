/*
 * cuda backend: decode of one token per sequence, vk layout, K = 128 (every released model).
 *
 * Design. The step streams each (sequence, head) tile of the pool once in and once out, so the
 * kernel is a copy with arithmetic in the middle, and what decides its speed is how many state
 * bytes each multiprocessor keeps in flight and how short the chain before the first state load
 * is. Rows of a tile are independent given q, k, g and beta:
 *     u_j = beta (v_j - e^g S_j.k)      o_j = e^g S_j.q + u_j (k.q)      S'_j = e^g S_j + u_j k
 * all from the old row S_j, so one pass over a row computes both dot products, then the update.
 *
 * Tiling. A lane loads 16 bytes of a row (4 f32 or 8 bf16), so G = 128 / VEC lanes cover one
 * row (32 lanes for f32, 16 for bf16: a warp instruction moves 512 contiguous bytes, one f32
 * row or two bf16 rows). Every lane works on the same K columns in every row, so q and k stay
 * in registers (VEC values each): no shared memory and no barrier anywhere. A warp holds SLOTS
 * such loads per lane (a batch of WR = SLOTS * 32 / G rows, 32 f32 registers at WR = 8) and
 * walks BATCHES batches, loading batch b+1 while it computes batch b. A block is 4 independent
 * warps; grid (row blocks, HV, N).
 *
 * Reductions. The 2 * SLOTS partial sums of a lane (S.k and S.q of each row) are reduced over
 * the G lanes by halving exchanges: at each step a lane keeps half of its values and sends the
 * other half to its partner, so 2 * SLOTS sums over G lanes cost about 2 * SLOTS shuffles
 * instead of 2 * SLOTS * log2(G). Lane l ends with the full sum of value (l % G) / (G / 2SLOTS);
 * S.k and S.q of one row sit in neighbouring values, one exchange apart. Each such lane
 * computes u and o of its row, and the update takes u from it with one shuffle per row.
 *
 * Latency chain (what sets the time at small N): the slot index is the first load; the state
 * loads are issued as soon as it arrives; then the activations (q, k, v, a, b, A_log, dt_bias)
 * are loaded, and the q/k norms and gates computed, while the state is in flight. With
 * programmatic dependent launch (gdn_decode_params.pdl) griddepcontrol.wait sits between the
 * state loads and the activation loads, so that in a model the slot and state reads overlap the
 * tail of the kernel that produced q, k, v, a, b.
 *
 * Padding rows write zero outputs; rows with a bad device-side slot are skipped (counted in
 * checked mode), exactly as the other kernels of the backend do.
 */
#include <stdio.h>

#include "kernels.h"
#include "vk128_rows.cuh"

namespace
{

constexpr int kWarpsPerBlock = kThreads / 32;

/* Per-token scalars of this (sequence, head), every lane holding its own copy. */
struct token_scalars {
    float q_factor, k_factor, kq, decay, beta;
};

template <typename Act, int VEC, int G> struct token_inputs {
    float q[VEC], k[VEC]; /* raw q and k at this lane's K columns */
    float a, b, A_log, dt_bias;

    __device__ __forceinline__ void load(const gdn_problem &p, int64_t n, int64_t hv, int64_t h, int col)
    {
        load_act_vec<Act, VEC>(static_cast<const Act *>(p.q) + n * p.q_stride + h * kRowK + col, q);
        load_act_vec<Act, VEC>(static_cast<const Act *>(p.k) + n * p.k_stride + h * kRowK + col, k);
        a = load_elem<Act>(p.a, n * p.a_stride + hv);
        b = load_elem<Act>(p.b, n * p.b_stride + hv);
        A_log = p.A_log[hv];
        dt_bias = p.dt_bias[hv];
    }

    __device__ __forceinline__ token_scalars scalars(const gdn_problem &p) const
    {
        float qq = 0.0f, kk = 0.0f, qk = 0.0f;
#pragma unroll
        for (int i = 0; i < VEC; i++) {
            qq += q[i] * q[i];
            kk += k[i] * k[i];
            qk += q[i] * k[i];
        }
        qq = row_sum<G>(qq);
        kk = row_sum<G>(kk);
        qk = row_sum<G>(qk);
        token_scalars s;
        s.q_factor = (p.qk_l2norm ? inv_sqrt(qq + GDN_L2NORM_EPS) : 1.0f) * p.scale;
        s.k_factor = p.qk_l2norm ? inv_sqrt(kk + GDN_L2NORM_EPS) : 1.0f;
        s.kq = qk * s.q_factor * s.k_factor;
        s.decay = expf(gdn_gate_log(A_log, a, dt_bias));
        s.beta = sigmoid_fast(b);
        return s;
    }
};

/*
 * One warp: BATCHES batches of WR consecutive rows of one (sequence, head) tile; a block is
 * blockDim.x / 32 such warps over consecutive row ranges of the tile.
 * SLOTS = 16-byte loads per lane per batch; rows of load j: lanes of group hw take row
 * base + j * (32 / G) + hw.
 * STAGES = 0: the next batch is prefetched into registers (a ring of two).
 * STAGES >= 2: batches stream through a per-warp ring of STAGES batches in shared memory
 * (cp.async), STAGES - 1 of them in flight while one is computed; each lane reads back only
 * the 16-byte pieces it copied itself, so no barrier is needed.
 */
template <typename Act, typename St, int SLOTS, int BATCHES, int STAGES, bool STREAMING, bool PDL>
__global__ void __launch_bounds__(kThreads) decode_one_token_vk128(const __grid_constant__ gdn_problem p)
{
    constexpr int VEC = state_vec<St>::n;
    constexpr int G = kRowK / VEC; /* lanes per row */
    constexpr int P = 32 / G;      /* rows per warp load instruction */
    constexpr int WR = SLOTS * P;  /* rows per batch */
    constexpr int M = 2 * SLOTS;   /* partial sums per lane per batch */
    constexpr int SPREAD = G / M;  /* lanes holding each reduced value */
    constexpr int RING = STAGES > 0 ? STAGES : 1;
    constexpr load_hint kHint = STREAMING ? load_hint::streaming : load_hint::none; /* register loads */
    static_assert(M <= G, "more partial sums than lanes in a row group");
    extern __shared__ uint4 ring[]; /* STAGES >= 2: [warp][stage][slot][lane] */

    /* the slot first: everything else of the state's load chain waits for it */
    const int64_t read = gdn_read_slot(&p, blockIdx.z), write = gdn_write_slot(&p, blockIdx.z);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int hw = lane / G, col = (lane % G) * VEC;
    const block_coords bc = block_coords_of(p);
    const int64_t V = p.head_dim_v;
    const int64_t warp_row0 = ((int64_t)blockIdx.x * (blockDim.x / 32) + warp) * (WR * BATCHES);

    /* This lane's reduced value: row slot `own_slot`, S.k (own_is_q = 0) or S.q. */
    const int own_value = (lane % G) / SPREAD, own_slot = own_value / 2;
    const bool own_is_q = own_value & 1, own_stores = !own_is_q && (lane % SPREAD) == 0;

    token_inputs<Act, VEC, G> in;
    float v_own[BATCHES];
    const auto load_activations = [&]() {
        in.load(p, bc.n, bc.hv, bc.h, col);
#pragma unroll
        for (int b = 0; b < BATCHES; b++) {
            const int64_t row = warp_row0 + b * WR + own_slot * P + hw;
            v_own[b] = row < V ? load_elem<Act>(p.v, bc.n * p.v_stride + bc.hv * V + row) : 0.0f;
        }
    };
    const bool padding = read < 0;
    const bool bad = !padding && (read >= p.num_slots || write >= p.num_slots);
    const bool active = !padding && !bad;
    const St *src = static_cast<const St *>(p.state_pool) + (active ? gdn_tile_offset(&p, read, bc.hv) : 0);
    uint4 *const my_ring = ring + (int64_t)warp * RING * SLOTS * 32;
    const row_batches<St, SLOTS, BATCHES, RING, P, WR> batches{src, my_ring, warp_row0, V, hw, col, lane, 0};
    uint4 raw[2][SLOTS];
    if (active) {
        if constexpr (STAGES > 0) {
#pragma unroll
            for (int b = 0; b < STAGES - 1; b++)
                batches.stage(b);
        } else {
            batches.template load<kHint>(0, raw[0]);
        }
        if (GDN_L2_PREFETCH && lane == 0)
            batches.prefetch_l2(STAGES > 0 ? STAGES - 1 : 1);
    }

    /* The activations are loaded after the state loads are issued, not with the slot: the
     * compiler converts q and k as soon as they are loaded, which stalled the warp on them
     * before it issued the state loads, so the state waited for the slower of the two first
     * loads (the activations: five more pages) instead of the slot alone. With PDL they must
     * wait for the producer anyway. */
    if (PDL)
        wait_for_producer();
    load_activations();
    if constexpr (STAGES == 0) {
        /* ... and the compiler also unpacks the state right after its loads, which would stall
         * the warp there before it issues the activation loads. An empty asm that "changes" the
         * loaded words and clobbers memory keeps the activation loads above the unpacking. */
#pragma unroll
        for (int j = 0; j < SLOTS; j++)
            asm volatile(""
                         : "+r"(raw[0][j].x), "+r"(raw[0][j].y), "+r"(raw[0][j].z),
                           "+r"(raw[0][j].w)::"memory");
    }
    if (padding) { /* outputs of padding rows are zeros; no state is read or written */
#pragma unroll
        for (int b = 0; b < BATCHES; b++) {
            const int64_t row = warp_row0 + b * WR + own_slot * P + hw;
            if (own_stores && row < V)
                store_elem<Act>(p.out, bc.n * p.out_stride + bc.hv * V + row, 0.0f);
        }
        return;
    }
    if (bad) {
        skip_bad_row(p);
        return;
    }

    const token_scalars ts = in.scalars(p);
    St *dst = write < 0 ? nullptr : static_cast<St *>(p.state_pool) + gdn_tile_offset(&p, write, bc.hv);
#pragma unroll
    for (int b = 0; b < BATCHES; b++) {
        uint4 cur[SLOTS];
        if constexpr (STAGES > 0) {
            batches.stage(b + STAGES - 1);
            copy_async_wait<STAGES - 1>(); /* batch b has landed */
            batches.staged(b, cur);
        } else {
#pragma unroll
            for (int j = 0; j < SLOTS; j++)
                cur[j] = raw[b % 2][j];
            if (b + 1 < BATCHES)
                batches.template load<kHint>(b + 1, raw[(b + 1) % 2]);
        }
        float s[SLOTS][VEC];
        float sums[M];
#pragma unroll
        for (int j = 0; j < SLOTS; j++) {
            state_vec<St>::unpack(cur[j], s[j]);
            float dk = 0.0f, dq = 0.0f;
#pragma unroll
            for (int i = 0; i < VEC; i++) {
                dk += s[j][i] * in.k[i];
                dq += s[j][i] * in.q[i];
            }
            sums[2 * j] = dk;
            sums[2 * j + 1] = dq;
        }
        const float mine = reduce_scatter<G, M>(sums, lane);
        const float other = __shfl_xor_sync(kFullMask, mine, SPREAD);
        const float dot_k = (own_is_q ? other : mine) * ts.k_factor;
        const float dot_q = (own_is_q ? mine : other) * ts.q_factor;
        const float u = ts.beta * (v_own[b] - ts.decay * dot_k);
        const int64_t own_row = warp_row0 + b * WR + own_slot * P + hw;
        if (own_stores && own_row < V)
            store_elem<Act>(p.out, bc.n * p.out_stride + bc.hv * V + own_row, ts.decay * dot_q + u * ts.kq);
        const float u_k = u * ts.k_factor; /* S' = decay S + u k_hat, k_hat = k_factor k */
#pragma unroll
        for (int j = 0; j < SLOTS; j++) {
            const float uj = __shfl_sync(kFullMask, u_k, hw * G + 2 * j * SPREAD);
            const int64_t row = warp_row0 + b * WR + j * P + hw;
#pragma unroll
            for (int i = 0; i < VEC; i++)
                s[j][i] = ts.decay * s[j][i] + uj * in.k[i];
            if (dst && row < V)
                store16_hinted<STREAMING>(dst + row * kRowK + col, state_vec<St>::pack(s[j]));
        }
    }
}

/* Each configuration: rows per batch (f32 rows; bf16 takes two rows per load), batches per
 * warp, the shared-memory ring depth (0 = registers), lanes (the default) and 1 for streaming
 * cache hints on the state (name ending in c). */
constexpr gdn_kernel_shape kShapes[] = {{2, 1, 0, 0, 0}, {4, 1, 0, 0, 0}, {8, 1, 0, 0, 0},  {4, 2, 0, 0, 0},
                                        {4, 4, 0, 0, 0}, {8, 2, 0, 0, 0}, {8, 4, 0, 0, 0},  {8, 4, 3, 0, 0},
                                        {4, 8, 4, 0, 0}, {8, 8, 3, 0, 0}, {8, 16, 3, 0, 0}, {4, 16, 4, 0, 0},
                                        {4, 1, 0, 0, 1}, {8, 1, 0, 0, 1}, {8, 2, 0, 0, 1}};
constexpr int kShapeCount = sizeof kShapes / sizeof kShapes[0];

template <typename Act, typename St, int SLOTS, int BATCHES, int STAGES, bool PDL, bool STREAMING = false>
cudaError_t launch_shape(const gdn_problem &p, cudaStream_t stream)
{
    constexpr int P = 32 / (kRowK / state_vec<St>::n);
    constexpr int64_t warp_rows = (int64_t)SLOTS * P * BATCHES;
    /* up to 4 warps a block, no more than the tile has rows for */
    int64_t warps = (p.head_dim_v + warp_rows - 1) / warp_rows;
    warps = warps < 1 ? 1 : warps > kWarpsPerBlock ? kWarpsPerBlock : warps;
    const int64_t block_rows = warps * warp_rows;
    const size_t smem = STAGES > 0 ? (size_t)warps * STAGES * SLOTS * 32 * sizeof(uint4) : 0;
    const dim3 grid((unsigned)((p.head_dim_v + block_rows - 1) / block_rows), (unsigned)p.num_v_heads,
                    (unsigned)p.num_seqs);
    const dim3 block((unsigned)(32 * warps));
    if (!PDL) {
        decode_one_token_vk128<Act, St, SLOTS, BATCHES, STAGES, STREAMING, false>
            <<<grid, block, smem, stream>>>(p);
        return cudaGetLastError();
    }
    return launch_programmatic(decode_one_token_vk128<Act, St, SLOTS, BATCHES, STAGES, STREAMING, true>, grid,
                               block, smem, stream, p);
}

template <typename Act, typename St, bool PDL>
cudaError_t launch_config(const gdn_problem &p, int config, cudaStream_t stream)
{
    /* SLOTS = rows per batch for f32 (one row per load), half of it for bf16 (two rows per load) */
    constexpr int D = state_vec<St>::n == 8 ? 2 : 1;
    switch (config) { /* kShapes, in order */
    case 0: return launch_shape<Act, St, 2 / D, 1, 0, PDL>(p, stream);
    case 1: return launch_shape<Act, St, 4 / D, 1, 0, PDL>(p, stream);
    case 2: return launch_shape<Act, St, 8 / D, 1, 0, PDL>(p, stream);
    case 3: return launch_shape<Act, St, 4 / D, 2, 0, PDL>(p, stream);
    case 4: return launch_shape<Act, St, 4 / D, 4, 0, PDL>(p, stream);
    case 5: return launch_shape<Act, St, 8 / D, 2, 0, PDL>(p, stream);
    case 6: return launch_shape<Act, St, 8 / D, 4, 0, PDL>(p, stream);
    case 7: return launch_shape<Act, St, 8 / D, 4, 3, PDL>(p, stream);
    case 8: return launch_shape<Act, St, 4 / D, 8, 4, PDL>(p, stream);
    case 9: return launch_shape<Act, St, 8 / D, 8, 3, PDL>(p, stream);
    case 10: return launch_shape<Act, St, 8 / D, 16, 3, PDL>(p, stream);
    case 11: return launch_shape<Act, St, 4 / D, 16, 4, PDL>(p, stream);
    /* streaming cache hints on the state's loads and stores */
    case 12: return launch_shape<Act, St, 4 / D, 1, 0, PDL, true>(p, stream);
    case 13: return launch_shape<Act, St, 8 / D, 1, 0, PDL, true>(p, stream);
    default: return launch_shape<Act, St, 8 / D, 2, 0, PDL, true>(p, stream);
    }
}

/*
 * The configuration for a batch, by rows of state per multiprocessor, from the H200
 * configuration sweeps over three head counts (bench/results/h200-2026-12-02-*, bench/NOTES.md):
 * at small batches short warps (4 rows) and many blocks, so that every multiprocessor has its
 * loads in flight at once; then 8 rows a warp, then warps that prefetch their next batch; for
 * large pools a shared-memory ring (bf16, cp.async: twice the bytes in flight per warp without
 * the registers) or 4 batches of 4 rows (f32). Up to 2000 (f32) or 4000 (bf16) rows a
 * multiprocessor the state moves with the streaming cache hint (the "c" configurations): on the
 * H100 sweep of 7801cd4 (bench/results/h100-2026-12-06-7801cd4-tune/) 10-13% faster at N = 1
 * (qwen3-next f32 4.82 -> 4.17 us, bf16 4.06 -> 3.54), 1-10% up to those sizes, and 0.5-2%
 * slower beyond them.
 */
int choose_config(const gdn_problem &p)
{
    const int64_t rows_per_sm = p.num_seqs * p.num_v_heads * p.head_dim_v / sm_count();
    if (p.state_dtype == GDN_DTYPE_BF16) {
        if (rows_per_sm <= 160)
            return 12; /* r4x1c */
        if (rows_per_sm <= 4000)
            return 14; /* r8x2c */
        return 7;      /* r8x4s3 */
    }
    if (rows_per_sm <= 64)
        return 12; /* r4x1c */
    if (rows_per_sm <= 160)
        return 13; /* r8x1c */
    if (rows_per_sm <= 320)
        return 14; /* r8x2c */
    if (rows_per_sm <= 2000)
        return 12; /* r4x1c */
    if (rows_per_sm <= 4000)
        return 2; /* r8x1 */
    if (rows_per_sm <= 10000)
        return 4; /* r4x4: r8x2 fell 7% behind at 7944 rows (qwen3-next N=256, contest N=1024) */
    return 5;     /* r8x2 */
}

/* Forced configuration for benchmarks and tests (gdn_cuda_force_one_token_config); -1 = chosen. */
int forced_config = -1;

template <typename Act, typename St> cudaError_t launch_state(const gdn_problem &p, cudaStream_t stream)
{
    const int forced = __atomic_load_n(&forced_config, __ATOMIC_RELAXED);
    const int config = forced >= 0 ? forced : choose_config(p);
    /* programmatic dependent launch exists from sm_90 on; elsewhere pdl is an ordinary launch */
    return p.pdl && cc_major() >= 9 ? launch_config<Act, St, true>(p, config, stream)
                                    : launch_config<Act, St, false>(p, config, stream);
}

template <typename Act> cudaError_t launch_act(const gdn_problem &p, cudaStream_t stream)
{
    return p.state_dtype == GDN_DTYPE_BF16 ? launch_state<Act, __nv_bfloat16>(p, stream)
                                           : launch_state<Act, float>(p, stream);
}

} // namespace

/* q and k rows are read as vectors of VEC activations (VEC = the state elements in 16 bytes):
 * an engine may hand rows at any element stride, so the vectors must be checked for alignment
 * (the other kernels read q and k element by element and take any stride). */
static bool rows_aligned(const void *base, int64_t stride, int64_t align, int64_t act_size)
{
    return (uintptr_t)base % (uintptr_t)align == 0 && (stride * act_size) % align == 0;
}

int gdn_cuda_one_token_applies(const gdn_problem *p)
{
    /* Precomputed gates and has_initial_state go to the multi-token kernel (decode_multi_token.cu
     * takes T = 1 too, a little slower): reading either here, even behind a uniform branch, let
     * the compiler reorder this kernel's loads into one more memory round trip on its chain
     * (23f4455: f32 N = 1 4.34 -> 4.92 us, N = 64 70.8 -> 80.3 us) for every call. */
    if (!(p->num_tokens == 1 && !p->cu_seqlens && !p->token_slots && !p->num_accepted && !p->g &&
          !p->has_initial_state && p->state_layout == GDN_LAYOUT_VK && p->head_dim_k == kRowK))
        return 0;
    const int64_t act = p->act_dtype == GDN_DTYPE_F32 ? 4 : 2, vec = p->state_dtype == GDN_DTYPE_BF16 ? 8 : 4;
    if ((p->slot_stride * (16 / vec)) % 16 != 0) /* each slot's tiles 16-byte aligned */
        return 0;
    const int64_t align = vec * act < 16 ? vec * act : 16;
    return rows_aligned(p->q, p->q_stride, align, act) && rows_aligned(p->k, p->k_stride, align, act);
}

cudaError_t gdn_cuda_launch_one_token(const gdn_problem *p, cudaStream_t stream)
{
    switch (p->act_dtype) {
    case GDN_DTYPE_F16: return launch_act<__half>(*p, stream);
    case GDN_DTYPE_BF16: return launch_act<__nv_bfloat16>(*p, stream);
    default: return launch_act<float>(*p, stream);
    }
}

const gdn_kernel_shape *gdn_cuda_one_token_shapes(int *count)
{
    *count = kShapeCount;
    return kShapes;
}

void gdn_cuda_one_token_force(int config)
{
    __atomic_store_n(&forced_config, config >= 0 && config < kShapeCount ? config : -1, __ATOMIC_RELAXED);
}
