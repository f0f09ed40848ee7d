/*
 * gdn_decode: validation of every argument, then dispatch to one backend.
 *
 * Validation reads the params and, for host backends, the slot indices; it never writes.
 * A backend is entered only once the whole call is known to be valid, which is what makes
 * "no byte of the pool or output is written on error" hold for every backend at once.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "backends.h"
#include "choose_backend.h"

void gdn_decode_params_init(gdn_decode_params *params)
{
    if (!params)
        return;
    memset(params, 0, sizeof *params);
    params->struct_size = sizeof *params;
    params->act_dtype = GDN_DTYPE_BF16;
    params->qk_l2norm = 1;
    params->head_map = GDN_HEAD_MAP_GROUPED;
    params->state_layout = GDN_LAYOUT_VK;
    params->state_dtype = GDN_DTYPE_F32;
    params->index_dtype = GDN_DTYPE_I64;
    params->backend = GDN_BACKEND_AUTO;
}

/* a * b for non-negative a, b, or -1 when it would not fit in int64. */
static int64_t checked_mul(int64_t a, int64_t b)
{
    if (a != 0 && b > INT64_MAX / a)
        return -1;
    return a * b;
}

/* Elements from the pool's start to the end of its last slot ((num_slots - 1) * stride + one
 * slot), or -1 when that or its size in bytes (up to 8 per element) overflows int64. Sizes are
 * positive here (check_shape checks them first). */
static int64_t pool_elements(const gdn_decode_params *p)
{
    const int64_t slot = p->num_v_heads * p->head_dim_v * p->head_dim_k;
    const int64_t stride = p->state_slot_stride ? p->state_slot_stride : slot;
    const int64_t span = checked_mul(p->num_slots - 1, stride);
    if (span < 0 || span > INT64_MAX - slot || checked_mul(span + slot, 8) < 0)
        return -1;
    return span + slot;
}

static gdn_status check_shape(const gdn_decode_params *p)
{
    if (p->num_seqs < 0)
        return gdn_fail(GDN_ERR_INVALID_SHAPE, "num_seqs = %lld is negative", (long long)p->num_seqs);
    const struct {
        const char *name;
        int64_t value;
    } dims[] = {{"num_q_heads", p->num_q_heads},
                {"num_v_heads", p->num_v_heads},
                {"head_dim_k", p->head_dim_k},
                {"head_dim_v", p->head_dim_v},
                {"num_slots", p->num_slots}};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i].value <= 0)
            return gdn_fail(GDN_ERR_INVALID_SHAPE, "%s = %lld must be positive", dims[i].name,
                            (long long)dims[i].value);
    if (p->num_v_heads % p->num_q_heads != 0)
        return gdn_fail(GDN_ERR_INVALID_SHAPE, "num_v_heads = %lld is not a multiple of num_q_heads = %lld",
                        (long long)p->num_v_heads, (long long)p->num_q_heads);
    int64_t tile = checked_mul(p->head_dim_v, p->head_dim_k);
    int64_t slot = checked_mul(p->num_v_heads, tile);
    if (tile < 0 || slot < 0)
        return gdn_fail(GDN_ERR_INVALID_SHAPE, "num_v_heads * head_dim_v * head_dim_k overflows 64 bits");
    if (p->state_slot_stride < 0 || (p->state_slot_stride > 0 && p->state_slot_stride < slot))
        return gdn_fail(GDN_ERR_INVALID_STRIDE,
                        "state_slot_stride = %lld is shorter than one slot (num_v_heads * head_dim_v * "
                        "head_dim_k = %lld elements)",
                        (long long)p->state_slot_stride, (long long)slot);
    if (pool_elements(p) < 0)
        return gdn_fail(GDN_ERR_INVALID_SHAPE,
                        "num_slots = %lld, state_slot_stride = %lld: the state pool does not fit in 64-bit "
                        "offsets",
                        (long long)p->num_slots, (long long)p->state_slot_stride);
    return GDN_OK;
}

static gdn_status check_options(const gdn_decode_params *p)
{
    if ((unsigned)p->head_map > GDN_HEAD_MAP_TILED)
        return gdn_fail(GDN_ERR_INVALID_ARGUMENT, "head_map = %d is not a gdn_head_map", (int)p->head_map);
    if ((unsigned)p->state_layout > GDN_LAYOUT_KV)
        return gdn_fail(GDN_ERR_UNSUPPORTED_LAYOUT, "state_layout = %d is neither vk (0) nor kv (1)",
                        (int)p->state_layout);
    if ((unsigned)p->backend > GDN_BACKEND_REFERENCE)
        return gdn_fail(GDN_ERR_INVALID_ARGUMENT, "backend = %d is not a gdn_backend", (int)p->backend);
    if (!isfinite(p->scale))
        return gdn_fail(GDN_ERR_INVALID_ARGUMENT, "scale = %g is not finite", (double)p->scale);
    if (p->num_threads < 0)
        return gdn_fail(GDN_ERR_INVALID_ARGUMENT, "num_threads = %d is negative", p->num_threads);
    return GDN_OK;
}

static gdn_status check_dtypes(const gdn_decode_params *p, gdn_backend backend)
{
    int reference = backend == GDN_BACKEND_REFERENCE;
    gdn_dtype act = p->act_dtype, state = p->state_dtype;
    if (!(act == GDN_DTYPE_F32 || act == GDN_DTYPE_F16 || act == GDN_DTYPE_BF16 ||
          (reference && act == GDN_DTYPE_F64)))
        return gdn_fail(GDN_ERR_UNSUPPORTED_DTYPE,
                        "act_dtype = %s (%d) is not served by the %s backend (f32, f16 or bf16%s)",
                        gdn_dtype_name(act), (int)act, gdn_backend_name(backend), reference ? " or f64" : "");
    if (!(state == GDN_DTYPE_F32 || state == GDN_DTYPE_BF16 || (reference && state == GDN_DTYPE_F64)))
        return gdn_fail(GDN_ERR_UNSUPPORTED_DTYPE,
                        "state_dtype = %s (%d) is not served by the %s backend (f32 or bf16%s)",
                        gdn_dtype_name(state), (int)state, gdn_backend_name(backend),
                        reference ? " or f64" : "");
    if (p->index_dtype != GDN_DTYPE_I32 && p->index_dtype != GDN_DTYPE_I64)
        return gdn_fail(GDN_ERR_UNSUPPORTED_DTYPE, "index_dtype = %s (%d) is neither i32 nor i64",
                        gdn_dtype_name(p->index_dtype), (int)p->index_dtype);
    return GDN_OK;
}

static gdn_status check_head_size(const gdn_decode_params *p)
{
    if (p->head_dim_k > GDN_MAX_HEAD_DIM || p->head_dim_v > GDN_MAX_HEAD_DIM)
        return gdn_fail(GDN_ERR_UNSUPPORTED_HEAD_SIZE,
                        "head_dim_k = %lld, head_dim_v = %lld: head sizes up to %d are served",
                        (long long)p->head_dim_k, (long long)p->head_dim_v, GDN_MAX_HEAD_DIM);
    return GDN_OK;
}

/* Token rows the activations must hold: N*T, or with cu_seqlens total_tokens when given (else
 * N*T, the most there can be). */
static int64_t token_rows(const gdn_decode_params *p)
{
    if (p->cu_seqlens && p->total_tokens > 0)
        return p->total_tokens;
    return p->num_seqs * (p->num_tokens > 0 ? p->num_tokens : 1);
}

static gdn_status check_tokens(const gdn_decode_params *p, gdn_backend backend)
{
    if (p->num_tokens < 0 || (p->num_tokens > GDN_MAX_TOKENS && !p->cu_seqlens))
        return gdn_fail(GDN_ERR_INVALID_SHAPE,
                        "num_tokens = %lld is outside 0..%d (longer sequences: give cu_seqlens)",
                        (long long)p->num_tokens, GDN_MAX_TOKENS);
    if (p->num_tokens > GDN_MAX_TOKENS && (p->token_slots || p->num_accepted))
        return gdn_fail(GDN_ERR_INVALID_SHAPE,
                        "num_tokens = %lld with token_slots or num_accepted: those take at most %d tokens "
                        "a sequence",
                        (long long)p->num_tokens, GDN_MAX_TOKENS);
    if (p->num_tokens > GDN_MAX_TOKENS && backend == GDN_BACKEND_CUDA &&
        (p->state_layout == GDN_LAYOUT_KV || p->head_dim_k != 128))
        return gdn_fail(GDN_ERR_INVALID_SHAPE,
                        "num_tokens = %lld: the cuda backend computes sequences of more than %d tokens "
                        "(chunked prefill) for the vk layout with K = 128 only; this call has the %s layout "
                        "and K = %lld (the cpu and reference backends take it)",
                        (long long)p->num_tokens, GDN_MAX_TOKENS,
                        p->state_layout == GDN_LAYOUT_KV ? "kv" : "vk", (long long)p->head_dim_k);
    if (p->total_tokens < 0 || (p->total_tokens > 0 && !p->cu_seqlens))
        return gdn_fail(GDN_ERR_INVALID_ARGUMENT, "total_tokens = %lld needs cu_seqlens (and >= 0)",
                        (long long)p->total_tokens);
    if (p->cu_seqlens && p->num_tokens < 1)
        return gdn_fail(GDN_ERR_INVALID_ARGUMENT,
                        "cu_seqlens is set but num_tokens = %lld: give the largest tokens per sequence",
                        (long long)p->num_tokens);
    int64_t tokens = p->num_tokens > 0 ? p->num_tokens : 1;
    if (checked_mul(p->num_seqs, tokens) < 0)
        return gdn_fail(GDN_ERR_INVALID_SHAPE, "num_seqs = %lld times num_tokens = %lld overflows 64 bits",
                        (long long)p->num_seqs, (long long)tokens);
    if (p->token_slots_stride < 0 || (p->token_slots_stride > 0 && p->token_slots_stride < tokens))
        return gdn_fail(GDN_ERR_INVALID_STRIDE, "token_slots_stride = %lld is shorter than num_tokens = %lld",
                        (long long)p->token_slots_stride, (long long)tokens);
    if (p->token_slots &&
        checked_mul(p->num_seqs, p->token_slots_stride ? p->token_slots_stride : tokens) < 0)
        return gdn_fail(GDN_ERR_INVALID_STRIDE, "token_slots_stride = %lld overflows 64-bit offsets",
                        (long long)p->token_slots_stride);
    if ((p->g != NULL) != (p->beta != NULL))
        return gdn_fail(GDN_ERR_INVALID_ARGUMENT, "g and beta come together (%s is NULL)",
                        p->g ? "beta" : "g");
    if (p->g && (p->a || p->b || p->A_log || p->dt_bias))
        return gdn_fail(GDN_ERR_INVALID_ARGUMENT,
                        "g and beta are given, and so is one of a, b, A_log, dt_bias: give one form of the "
                        "gates, not both");
    if (p->num_accepted && !p->token_slots)
        return gdn_fail(GDN_ERR_INVALID_ARGUMENT,
                        "num_accepted needs token_slots (the slots it selects from)");
    if (p->token_slots && p->write_slot_indices)
        return gdn_fail(GDN_ERR_INVALID_ARGUMENT,
                        "token_slots and write_slot_indices are both set: with token_slots the states go "
                        "to the token slots only");
    return GDN_OK;
}

/* One tensor argument: its name, pointer, element size and token-stride facts. */
typedef struct tensor_arg {
    const char *name;
    const void *ptr;
    size_t elem_size;
    int64_t stride;    /* elements between rows as given (0 = packed) */
    int64_t row_width; /* elements one row needs */
    int has_stride;
} tensor_arg;

static int tensor_args(const gdn_decode_params *p, tensor_arg *t)
{
    size_t act = gdn_dtype_size(p->act_dtype), idx = gdn_dtype_size(p->index_dtype);
    int64_t hk = p->num_q_heads * p->head_dim_k, hvv = p->num_v_heads * p->head_dim_v;
    int n = 0;
    t[n++] = (tensor_arg){"q", p->q, act, p->q_stride, hk, 1};
    t[n++] = (tensor_arg){"k", p->k, act, p->k_stride, hk, 1};
    t[n++] = (tensor_arg){"v", p->v, act, p->v_stride, hvv, 1};
    if (p->g) { /* precomputed gates */
        t[n++] = (tensor_arg){"g", p->g, 4, p->g_stride, p->num_v_heads, 1};
        t[n++] = (tensor_arg){"beta", p->beta, act, p->beta_stride, p->num_v_heads, 1};
    } else {
        t[n++] = (tensor_arg){"a", p->a, act, p->a_stride, p->num_v_heads, 1};
        t[n++] = (tensor_arg){"b", p->b, act, p->b_stride, p->num_v_heads, 1};
        t[n++] = (tensor_arg){"A_log", p->A_log, 4, 0, p->num_v_heads, 0};
        t[n++] = (tensor_arg){"dt_bias", p->dt_bias, 4, 0, p->num_v_heads, 0};
    }
    t[n++] = (tensor_arg){"out", p->out, act, p->out_stride, hvv, 1};
    t[n++] = (tensor_arg){"state_pool", p->state_pool, gdn_dtype_size(p->state_dtype), 0, 0, 0};
    if (p->slot_indices || !p->num_accepted) /* num_accepted picks the read slot instead */
        t[n++] = (tensor_arg){"slot_indices", p->slot_indices, idx, 0, 1, 0};
    if (p->write_slot_indices)
        t[n++] = (tensor_arg){"write_slot_indices", p->write_slot_indices, idx, 0, 1, 0};
    if (p->cu_seqlens)
        t[n++] = (tensor_arg){"cu_seqlens", p->cu_seqlens, idx, 0, 1, 0};
    if (p->token_slots)
        t[n++] = (tensor_arg){"token_slots", p->token_slots, idx, 0, 1, 0};
    if (p->num_accepted)
        t[n++] = (tensor_arg){"num_accepted", p->num_accepted, idx, 0, 1, 0};
    if (p->bad_index_rows)
        t[n++] = (tensor_arg){"bad_index_rows", p->bad_index_rows, 4, 0, 1, 0};
    if (p->has_initial_state)
        t[n++] = (tensor_arg){"has_initial_state", p->has_initial_state, 1, 0, 1, 0};
    return n;
}

/* Where the state pool lives, asked of the CUDA runtime once per call (backend choice, the
 * tensor checks and the cuda backend's device all use it). */
typedef struct pool_memory {
    gdn_memory_kind kind;
    int device; /* -1 when not CUDA device memory */
} pool_memory;

static gdn_status check_tensors(const gdn_decode_params *p, gdn_backend backend, pool_memory pool)
{
    tensor_arg t[16];
    int count = tensor_args(p, t);
    const int pool_device = pool.device;
    const gdn_memory_kind pool_kind = pool.kind;
    for (int i = 0; i < count; i++) {
        if (!t[i].ptr)
            return gdn_fail(GDN_ERR_NULL_POINTER, "%s is NULL", t[i].name);
        if ((uintptr_t)t[i].ptr % t[i].elem_size != 0)
            return gdn_fail(GDN_ERR_MISALIGNED, "%s = %p is not aligned to its %zu-byte elements", t[i].name,
                            t[i].ptr, t[i].elem_size);
        if (t[i].has_stride && (t[i].stride < 0 || (t[i].stride > 0 && t[i].stride < t[i].row_width)))
            return gdn_fail(GDN_ERR_INVALID_STRIDE,
                            "%s_stride = %lld is shorter than one token's row of %lld elements", t[i].name,
                            (long long)t[i].stride, (long long)t[i].row_width);
        if (t[i].has_stride &&
            checked_mul(checked_mul(token_rows(p), t[i].stride ? t[i].stride : t[i].row_width),
                        (int64_t)t[i].elem_size) < 0) /* byte offsets, not only element offsets */
            return gdn_fail(GDN_ERR_INVALID_STRIDE, "%s_stride = %lld overflows 64-bit offsets", t[i].name,
                            (long long)t[i].stride);
        if (!gdn_cuda_usable())
            continue;
        int device = pool_device;
        gdn_memory_kind kind =
            t[i].ptr == p->state_pool ? pool_kind : gdn_cuda_memory_kind(t[i].ptr, &device);
        if (backend == GDN_BACKEND_CUDA && kind != GDN_MEMORY_DEVICE && kind != GDN_MEMORY_MANAGED)
            return gdn_fail(GDN_ERR_WRONG_MEMORY,
                            "%s = %p is host memory but the cuda backend needs device or managed "
                            "memory",
                            t[i].name, t[i].ptr);
        if (backend == GDN_BACKEND_CUDA && kind == GDN_MEMORY_DEVICE && pool_kind == GDN_MEMORY_DEVICE &&
            device != pool_device)
            return gdn_fail(GDN_ERR_WRONG_MEMORY, "%s is on CUDA device %d but state_pool is on device %d",
                            t[i].name, device, pool_device);
        if (backend != GDN_BACKEND_CUDA && kind == GDN_MEMORY_DEVICE)
            return gdn_fail(GDN_ERR_WRONG_MEMORY,
                            "%s = %p is CUDA device memory but the %s backend needs host memory", t[i].name,
                            t[i].ptr, gdn_backend_name(backend));
    }
    if (backend == GDN_BACKEND_CUDA && (uintptr_t)p->state_pool % 16 != 0)
        return gdn_fail(GDN_ERR_MISALIGNED,
                        "state_pool = %p is not 16-byte aligned, which the cuda backend's vector "
                        "loads need",
                        p->state_pool);
    return GDN_OK;
}

/* The bytes the pool spans (slot gaps included), and those out's first `rows` token rows span. */
static void pool_range(const gdn_decode_params *p, uintptr_t *lo, uintptr_t *hi)
{
    *lo = (uintptr_t)p->state_pool;
    *hi = *lo + (uintptr_t)pool_elements(p) * gdn_dtype_size(p->state_dtype);
}
static void out_range(const gdn_decode_params *p, int64_t rows, uintptr_t *lo, uintptr_t *hi)
{
    const int64_t width = p->num_v_heads * p->head_dim_v;
    *lo = (uintptr_t)p->out;
    *hi = *lo + (uintptr_t)((rows - 1) * (p->out_stride ? p->out_stride : width) + width) *
                    gdn_dtype_size(p->act_dtype);
}

/* out's first `rows` token rows against the pool. With cu_seqlens the rows are known only where
 * the host can read cu_seqlens (host backends); on the cuda backend that case is not checked,
 * because a bound of N*T rows would refuse valid, adjacent allocations. */
static gdn_status check_overlap(const gdn_decode_params *p, int64_t rows)
{
    if (rows <= 0)
        return GDN_OK;
    uintptr_t out_lo, out_hi, pool_lo, pool_hi;
    out_range(p, rows, &out_lo, &out_hi);
    pool_range(p, &pool_lo, &pool_hi);
    if (out_lo < pool_hi && pool_lo < out_hi)
        return gdn_fail(GDN_ERR_OVERLAP, "out [%p, %p) overlaps state_pool [%p, %p)", (void *)out_lo,
                        (void *)out_hi, (void *)pool_lo, (void *)pool_hi);
    return GDN_OK;
}

/* The checked-mode counter lies outside the pool and (where its rows are known before the call:
 * without cu_seqlens) outside out, so that counting never corrupts a state or an output. */
static gdn_status check_counter(const gdn_decode_params *p)
{
    if (!p->bad_index_rows)
        return GDN_OK;
    uintptr_t at = (uintptr_t)p->bad_index_rows, end = at + sizeof *p->bad_index_rows;
    uintptr_t pool_lo, pool_hi, out_lo, out_hi;
    pool_range(p, &pool_lo, &pool_hi);
    if (at < pool_hi && pool_lo < end)
        return gdn_fail(GDN_ERR_OVERLAP, "bad_index_rows = %p lies inside state_pool [%p, %p)", (void *)at,
                        (void *)pool_lo, (void *)pool_hi);
    if (p->cu_seqlens)
        return GDN_OK;
    out_range(p, token_rows(p), &out_lo, &out_hi);
    if (at < out_hi && out_lo < end)
        return gdn_fail(GDN_ERR_OVERLAP, "bad_index_rows = %p lies inside out [%p, %p)", (void *)at,
                        (void *)out_lo, (void *)out_hi);
    return GDN_OK;
}

/* Bytes of workspace the call can use on `backend` (GDN_CHUNK_RECORD_BYTES per record, or the
 * WY form's size while GDN_PREFILL_WY is on, see src/common/problem.h): only cuda calls that send
 * sequences to the chunked kernel with bf16 activations. */
static size_t workspace_needed(const gdn_decode_params *p, gdn_backend backend)
{
    const gdn_problem pr = gdn_problem_from_params(p);
    if (backend != GDN_BACKEND_CUDA || p->act_dtype != GDN_DTYPE_BF16 || !gdn_chunked_applies(&pr))
        return 0;
    return (size_t)gdn_chunk_records(&pr) * (size_t)p->num_v_heads *
           gdn_cuda_chunk_record_bytes(p->head_dim_v);
}

/* A workspace large enough, aligned, in device memory, apart from the pool and out. */
static gdn_status check_workspace(const gdn_decode_params *p, gdn_backend backend)
{
    if (!p->workspace || backend != GDN_BACKEND_CUDA)
        return GDN_OK;
    const size_t needed = workspace_needed(p, backend);
    if (p->workspace_bytes < needed)
        return gdn_fail(GDN_ERR_INVALID_ARGUMENT,
                        "workspace_bytes = %zu but this call needs %zu (gdn_decode_workspace_size)",
                        p->workspace_bytes, needed);
    if ((uintptr_t)p->workspace % 16 != 0)
        return gdn_fail(GDN_ERR_MISALIGNED, "workspace = %p is not 16-byte aligned", p->workspace);
    int device = -1;
    const gdn_memory_kind kind = gdn_cuda_memory_kind(p->workspace, &device);
    if (kind != GDN_MEMORY_DEVICE && kind != GDN_MEMORY_MANAGED)
        return gdn_fail(GDN_ERR_WRONG_MEMORY,
                        "workspace = %p is host memory but the cuda backend needs device or managed memory",
                        p->workspace);
    const uintptr_t lo = (uintptr_t)p->workspace, hi = lo + p->workspace_bytes;
    uintptr_t pool_lo, pool_hi, out_lo, out_hi;
    pool_range(p, &pool_lo, &pool_hi);
    if (lo < pool_hi && pool_lo < hi)
        return gdn_fail(GDN_ERR_OVERLAP, "workspace [%p, %p) overlaps state_pool [%p, %p)", (void *)lo,
                        (void *)hi, (void *)pool_lo, (void *)pool_hi);
    const int64_t rows = token_rows(p);
    out_range(p, rows, &out_lo, &out_hi);
    if (rows > 0 && lo < out_hi && out_lo < hi)
        return gdn_fail(GDN_ERR_OVERLAP, "workspace [%p, %p) overlaps out [%p, %p)", (void *)lo, (void *)hi,
                        (void *)out_lo, (void *)out_hi);
    return GDN_OK;
}

/* Host backends can read the indices, so bad ones are refused before any write. */
static gdn_status check_slot(const gdn_problem *pr, const char *name, int64_t at, int64_t slot)
{
    if (slot >= pr->num_slots)
        return gdn_fail(GDN_ERR_SLOT_OUT_OF_RANGE, "%s[%lld] = %lld but num_slots = %lld", name,
                        (long long)at, (long long)slot, (long long)pr->num_slots);
    return GDN_OK;
}

static gdn_status check_host_indices(const gdn_problem *pr)
{
    gdn_status s;
    for (int64_t n = 0; n < pr->num_seqs; n++) {
        if (pr->read_slots &&
            (s = check_slot(pr, "slot_indices", n, gdn_index_at(pr->read_slots, pr->index_dtype, n))))
            return s;
        if (pr->write_slots &&
            (s = check_slot(pr, "write_slot_indices", n, gdn_index_at(pr->write_slots, pr->index_dtype, n))))
            return s;
        /* The columns the call can read: all of them with num_accepted, else the first T. */
        int64_t columns = pr->num_accepted ? pr->token_slots_stride : pr->num_tokens;
        for (int64_t t = 0; pr->token_slots && t < columns; t++) {
            int64_t at = n * pr->token_slots_stride + t;
            if ((s = check_slot(pr, "token_slots", at, gdn_index_at(pr->token_slots, pr->index_dtype, at))))
                return s;
        }
        if (pr->num_accepted && gdn_read_slot(pr, n) == GDN_BAD_SLOT)
            return gdn_fail(GDN_ERR_SLOT_OUT_OF_RANGE, "num_accepted[%lld] = %lld is outside 1..%lld",
                            (long long)n, (long long)gdn_index_at(pr->num_accepted, pr->index_dtype, n),
                            (long long)pr->token_slots_stride);
        if (pr->cu_seqlens && (gdn_first_token_row(pr, n) < 0 || gdn_seq_tokens(pr, n) < 0))
            return gdn_fail(
                GDN_ERR_INVALID_SHAPE,
                "cu_seqlens[%lld] = %lld, cu_seqlens[%lld] = %lld: a sequence needs 0..%lld tokens "
                "(num_tokens), within token rows 0..%lld (total_tokens, else num_seqs * num_tokens)",
                (long long)n, (long long)gdn_index_at(pr->cu_seqlens, pr->index_dtype, n), (long long)(n + 1),
                (long long)gdn_index_at(pr->cu_seqlens, pr->index_dtype, n + 1), (long long)pr->num_tokens,
                (long long)pr->token_rows);
    }
    /* The rows cu_seqlens reaches stay within the N * num_tokens rows every offset was checked for. */
    if (pr->cu_seqlens && gdn_index_at(pr->cu_seqlens, pr->index_dtype, pr->num_seqs) > pr->token_rows)
        return gdn_fail(
            GDN_ERR_INVALID_SHAPE,
            "cu_seqlens[%lld] = %lld exceeds the %lld token rows (total_tokens, else num_seqs * num_tokens)",
            (long long)pr->num_seqs, (long long)gdn_index_at(pr->cu_seqlens, pr->index_dtype, pr->num_seqs),
            (long long)pr->token_rows);
    return GDN_OK;
}

/* Host backends with cu_seqlens: the overlap check over the rows the call really writes. */
static gdn_status check_varlen_overlap(const gdn_decode_params *p, const gdn_problem *pr)
{
    if (!pr->cu_seqlens)
        return GDN_OK;
    return check_overlap(p, gdn_index_at(pr->cu_seqlens, pr->index_dtype, pr->num_seqs));
}

gdn_problem gdn_problem_from_params(const gdn_decode_params *p)
{
    gdn_problem pr;
    memset(&pr, 0, sizeof pr);
    pr.num_seqs = p->num_seqs;
    pr.num_q_heads = p->num_q_heads;
    pr.num_v_heads = p->num_v_heads;
    pr.head_dim_k = p->head_dim_k;
    pr.head_dim_v = p->head_dim_v;
    pr.act_dtype = p->act_dtype;
    pr.q = p->q;
    pr.k = p->k;
    pr.v = p->v;
    pr.a = p->a;
    pr.b = p->b;
    pr.out = p->out;
    int64_t hk = p->num_q_heads * p->head_dim_k, hvv = p->num_v_heads * p->head_dim_v;
    pr.q_stride = p->q_stride ? p->q_stride : hk;
    pr.k_stride = p->k_stride ? p->k_stride : hk;
    pr.v_stride = p->v_stride ? p->v_stride : hvv;
    pr.a_stride = p->a_stride ? p->a_stride : p->num_v_heads;
    pr.b_stride = p->b_stride ? p->b_stride : p->num_v_heads;
    pr.out_stride = p->out_stride ? p->out_stride : hvv;
    pr.A_log = p->A_log;
    pr.dt_bias = p->dt_bias;
    pr.scale = p->scale != 0.0f ? p->scale : 1.0f / sqrtf((float)p->head_dim_k);
    pr.qk_l2norm = p->qk_l2norm != 0;
    pr.head_map = p->head_map;
    pr.state_pool = p->state_pool;
    pr.num_slots = p->num_slots;
    pr.slot_stride =
        p->state_slot_stride ? p->state_slot_stride : p->num_v_heads * p->head_dim_v * p->head_dim_k;
    pr.state_layout = p->state_layout;
    pr.state_dtype = p->state_dtype;
    pr.read_slots = p->slot_indices;
    pr.write_slots = p->write_slot_indices;
    pr.index_dtype = p->index_dtype;
    pr.null_slot_zero = p->null_slot_zero != 0;
    pr.stream = p->stream;
    pr.num_threads = p->num_threads;
    pr.num_tokens = p->num_tokens > 0 ? p->num_tokens : 1;
    pr.cu_seqlens = p->cu_seqlens;
    pr.token_slots = p->token_slots;
    pr.token_slots_stride = p->token_slots_stride > 0 ? p->token_slots_stride : pr.num_tokens;
    pr.num_accepted = p->num_accepted;
    pr.token_rows = token_rows(p);
    pr.bad_index_rows = p->bad_index_rows;
    pr.device = -1; /* gdn_decode sets it from the pool's memory */
    pr.pdl = p->pdl != 0;
    pr.has_initial_state = p->has_initial_state;
    pr.g = p->g;
    pr.beta = p->beta;
    pr.g_stride = p->g_stride ? p->g_stride : p->num_v_heads;
    pr.beta_stride = p->beta_stride ? p->beta_stride : p->num_v_heads;
    pr.workspace = p->workspace;
    pr.workspace_bytes = (int64_t)p->workspace_bytes;
    return pr;
}

/* The params as this library knows them: a caller built against an older header (0.1, before
 * the multi-token fields) passes a shorter struct; the fields it does not have read as zero. */
static gdn_status read_params(const gdn_decode_params *given, gdn_decode_params *p)
{
    const size_t v01 = offsetof(gdn_decode_params, num_tokens),
                 v02 = offsetof(gdn_decode_params, bad_index_rows), v03 = offsetof(gdn_decode_params, pdl),
                 v04 = offsetof(gdn_decode_params, total_tokens),
                 v06 = offsetof(gdn_decode_params, workspace);
    if (!given)
        return gdn_fail(GDN_ERR_INVALID_ARGUMENT, "params is NULL");
    if (given->struct_size != v01 && given->struct_size != v02 && given->struct_size != v03 &&
        given->struct_size != v04 && given->struct_size != v06 && given->struct_size != sizeof *p)
        return gdn_fail(GDN_ERR_INVALID_ARGUMENT,
                        "params->struct_size = %zu but this library takes %zu (0.7 headers), %zu (0.5, 0.6), "
                        "%zu (0.4), %zu (0.3), %zu (0.2) or %zu (0.1) bytes (call gdn_decode_params_init)",
                        given->struct_size, sizeof *p, v06, v04, v03, v02, v01);
    memset(p, 0, sizeof *p);
    memcpy(p, given, given->struct_size);
    return GDN_OK;
}

static gdn_status validate(const gdn_decode_params *p, gdn_backend *backend, pool_memory *pool)
{
    gdn_status s;
    if ((s = check_shape(p)) || (s = check_options(p)))
        return s;
    if (p->num_seqs > 0 && !p->state_pool)
        return gdn_fail(GDN_ERR_NULL_POINTER, "state_pool is NULL");
    pool->kind = GDN_MEMORY_HOST, pool->device = -1;
    if (gdn_cuda_usable())
        pool->kind = gdn_cuda_memory_kind(p->state_pool, &pool->device);
    if ((s = gdn_choose_backend(p->backend, pool->kind, backend)))
        return s;
    if ((s = check_dtypes(p, *backend)) || (s = check_head_size(p)) || (s = check_tokens(p, *backend)))
        return s;
    if (p->num_seqs == 0)
        return GDN_OK;
    if ((s = check_tensors(p, *backend, *pool)) ||
        (!p->cu_seqlens && (s = check_overlap(p, token_rows(p)))) || (s = check_counter(p)) ||
        (s = check_workspace(p, *backend)))
        return s;
    return GDN_OK;
}

gdn_status gdn_decode_backend_for(const gdn_decode_params *given, gdn_backend *backend)
{
    gdn_decode_params params;
    gdn_backend chosen;
    pool_memory pool;
    gdn_status s = read_params(given, &params);
    if (s == GDN_OK)
        s = validate(&params, &chosen, &pool);
    if (s == GDN_OK && backend)
        *backend = chosen;
    return s;
}

gdn_status gdn_decode_workspace_size(const gdn_decode_params *given, size_t *bytes)
{
    gdn_decode_params p;
    gdn_status s = read_params(given, &p);
    if (s != GDN_OK)
        return s;
    if (!bytes)
        return gdn_fail(GDN_ERR_NULL_POINTER, "bytes is NULL");
    if ((s = check_shape(&p)))
        return s;
    /* an explicit backend as given (the size is known without a device); auto as gdn_decode
     * chooses it, GDN_BACKEND included */
    gdn_backend backend = p.backend;
    if (backend == GDN_BACKEND_AUTO) {
        int device = -1;
        const gdn_memory_kind kind =
            gdn_cuda_usable() && p.state_pool ? gdn_cuda_memory_kind(p.state_pool, &device) : GDN_MEMORY_HOST;
        if ((s = gdn_choose_backend(GDN_BACKEND_AUTO, kind, &backend)))
            return s;
    }
    *bytes = workspace_needed(&p, backend);
    return GDN_OK;
}

gdn_status gdn_decode(const gdn_decode_params *given)
{
    gdn_decode_params copy, *params = &copy;
    gdn_backend backend;
    pool_memory pool;
    gdn_status s = read_params(given, params);
    if (s == GDN_OK)
        s = validate(params, &backend, &pool);
    if (s != GDN_OK || params->num_seqs == 0)
        return s;
    gdn_problem pr = gdn_problem_from_params(params);
    pr.device = pool.device;
    switch (backend) {
    case GDN_BACKEND_CUDA: return gdn_cuda_decode(&pr);
    case GDN_BACKEND_REFERENCE:
        if ((s = check_host_indices(&pr)) || (s = check_varlen_overlap(params, &pr)))
            return s;
        return gdn_reference_decode(&pr);
    default:
        if ((s = check_host_indices(&pr)) || (s = check_varlen_overlap(params, &pr)))
            return s;
        return gdn_cpu_decode(&pr);
    }
}
