/*
 * gdn.h - Gated DeltaNet (GDN) kernels for inference engines.
 *
 * This header is the whole public interface and its manual: read it top to bottom.
 *
 * The library computes the recurrent decode step of a Gated DeltaNet layer (Qwen3-Next,
 * Qwen3.5) for a batch of sequences whose states live in a pool, on a CPU backend (always
 * built) or a CUDA backend (built when nvcc was found). Every call takes its arguments in a
 * struct whose first field is its own size, so that fields can be added without breaking
 * programs built against an older header.
 *
 * Math of one token, one sequence, one value head hv (query/key head h):
 *
 *     g    = -exp(A_log[hv]) * softplus(a + dt_bias[hv])
 *     beta = sigmoid(b)
 *     if qk_l2norm:  q = q / sqrt(sum(q*q) + 1e-6);  k = k / sqrt(sum(k*k) + 1e-6)
 *     q    = q * scale
 *     S    = exp(g) * S                 S is V x K (layout "vk": row = value channel)
 *     u    = beta * (v - S k)
 *     S    = S + u k^T
 *     o    = S q
 *
 * All arithmetic is float32 whatever the storage dtypes (float64 on the reference backend).
 *
 * Thread safety: every function may be called from any number of threads at once. The only
 * mutable global state is the last-error message, which is kept per thread.
 */
#ifndef GDN_H
#define GDN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define GDN_API __declspec(dllexport)
#else
#define GDN_API __attribute__((visibility("default")))
#endif

/* ---------------------------------------------------------------------------------------
 * Version
 * ------------------------------------------------------------------------------------- */

#define GDN_VERSION_MAJOR 0
#define GDN_VERSION_MINOR 7
#define GDN_VERSION_PATCH 0
#define GDN_VERSION_NUMBER (GDN_VERSION_MAJOR * 10000 + GDN_VERSION_MINOR * 100 + GDN_VERSION_PATCH)

/* The version of the library actually loaded, as GDN_VERSION_NUMBER and as "0.1.0". */
GDN_API unsigned gdn_version_number(void);
GDN_API const char *gdn_version_string(void);

/* ---------------------------------------------------------------------------------------
 * Status codes
 *
 * Every call returns GDN_OK or one of these. On any error nothing was written: no byte of the
 * state pool or of the outputs changed, and gdn_last_error() says what was wrong with this
 * particular call (e.g. "slot_indices[17] = 4096 but num_slots = 4096").
 * ------------------------------------------------------------------------------------- */

typedef enum gdn_status {
    GDN_OK = 0,
    GDN_ERR_INVALID_ARGUMENT = 1,      /* null params, unknown struct_size, bad enum value, bad scale */
    GDN_ERR_NULL_POINTER = 2,          /* a required tensor pointer is NULL */
    GDN_ERR_INVALID_SHAPE = 3,         /* a size <= 0, HV not a multiple of H, too few slots */
    GDN_ERR_INVALID_STRIDE = 4,        /* a token stride shorter than one token's row */
    GDN_ERR_UNSUPPORTED_DTYPE = 5,     /* dtype not served by this tensor or backend */
    GDN_ERR_UNSUPPORTED_LAYOUT = 6,    /* state layout not vk or kv */
    GDN_ERR_UNSUPPORTED_HEAD_SIZE = 7, /* K or V above GDN_MAX_HEAD_DIM */
    GDN_ERR_SLOT_OUT_OF_RANGE = 8,     /* a slot index >= num_slots (host-visible indices) */
    GDN_ERR_MISALIGNED = 9,            /* a pointer not aligned for its dtype or vector path */
    GDN_ERR_BACKEND_UNAVAILABLE = 10,  /* the backend asked for is not built or has no device */
    GDN_ERR_WRONG_MEMORY = 11,         /* a pointer lives where the backend cannot read it */
    GDN_ERR_OVERLAP = 12,              /* the output overlaps the state pool */
    GDN_ERR_DEVICE = 13                /* the GPU runtime reported an error (launch failure) */
} gdn_status;

/* A constant sentence naming the status ("slot index out of range"). Never NULL. */
GDN_API const char *gdn_status_string(gdn_status status);

/* The message of the last failed call on this thread, or "" if none failed yet. The text stays
 * valid until the next gdn call on this thread. */
GDN_API const char *gdn_last_error(void);

/* ---------------------------------------------------------------------------------------
 * Enumerations
 * ------------------------------------------------------------------------------------- */

typedef enum gdn_dtype {
    GDN_DTYPE_F32 = 0,
    GDN_DTYPE_F16 = 1,
    GDN_DTYPE_BF16 = 2,
    GDN_DTYPE_F64 = 3, /* activations and state of the float64 reference backend only */
    GDN_DTYPE_I32 = 4, /* slot indices */
    GDN_DTYPE_I64 = 5  /* slot indices */
} gdn_dtype;

/* Size in bytes of one element, 0 for an unknown dtype. */
GDN_API size_t gdn_dtype_size(gdn_dtype dtype);
/* "f32", "f16", "bf16", "f64", "i32", "i64", or "?" */
GDN_API const char *gdn_dtype_name(gdn_dtype dtype);

typedef enum gdn_state_layout {
    GDN_LAYOUT_VK = 0, /* pool [num_slots, HV, V, K]: FlashInfer "pretranspose", FLA state_v_first */
    GDN_LAYOUT_KV = 1  /* pool [num_slots, HV, K, V]: FLA's default */
} gdn_state_layout;

typedef enum gdn_head_map {
    GDN_HEAD_MAP_GROUPED = 0, /* h = hv / (HV / H): vLLM, SGLang, FLA, FlashInfer */
    GDN_HEAD_MAP_TILED = 1    /* h = hv % H: llama.cpp's converted weights */
} gdn_head_map;

typedef enum gdn_backend {
    GDN_BACKEND_AUTO = 0,     /* GDN_BACKEND env var if set, else cuda for device pointers, else cpu */
    GDN_BACKEND_CPU = 1,      /* float32 on host threads; host pointers */
    GDN_BACKEND_CUDA = 2,     /* CUDA kernels; device (or managed) pointers; asynchronous */
    GDN_BACKEND_REFERENCE = 3 /* float64, single thread, host pointers: the oracle for tests */
} gdn_backend;

/* "auto", "cpu", "cuda", "reference", or "?" */
GDN_API const char *gdn_backend_name(gdn_backend backend);
/* Parses the names above; returns 0 and sets *backend, or -1 for an unknown name. */
GDN_API int gdn_backend_from_name(const char *name, gdn_backend *backend);

/* 1 if the backend is compiled into this library (cpu and reference always are). */
GDN_API int gdn_backend_built(gdn_backend backend);

/* Number of CUDA devices the library can use: sm_80 or newer (0 without the CUDA backend, a
 * driver or such a GPU). Devices are numbered as the CUDA runtime numbers them. */
GDN_API int gdn_cuda_device_count(void);

/* Name and compute capability of CUDA device `device`; returns GDN_OK or an error. */
GDN_API gdn_status gdn_cuda_device_info(int device, char *name, size_t name_size, int *cc_major,
                                        int *cc_minor);

/* ---------------------------------------------------------------------------------------
 * Decode: one token per sequence (SPEC operation 1)
 *
 * Tensors (element strides between tokens, innermost dimensions contiguous):
 *   q, k     [N, H, K]   activation dtype; element (n, h, i) at n*q_stride + h*K + i
 *   v        [N, HV, V]  activation dtype; element (n, hv, j) at n*v_stride + hv*V + j
 *   a, b     [N, HV]     activation dtype; element (n, hv) at n*a_stride + hv
 *   out      [N, HV, V]  activation dtype; element (n, hv, j) at n*out_stride + hv*V + j
 *   A_log, dt_bias [HV]  float32
 *   state_pool [num_slots, HV, V, K] (vk) or [num_slots, HV, K, V] (kv), state dtype; the inner
 *                        [HV, V, K] of a slot contiguous, slots state_slot_stride elements apart
 *   slot_indices [N]     int32 or int64
 * A stride of 0 means "packed" (the row width: H*K for q and k, HV*V for v and out, HV for a, b).
 *
 * Sequence n reads the state in slot r = slot_indices[n] and writes the new state to slot
 * w = write_slot_indices[n] (or r when write_slot_indices is NULL). A negative r (or r == 0
 * with null_slot_zero) makes row n a padding row: its outputs are written as zeros and no
 * state is read or written. A negative w (or 0 with null_slot_zero) computes the outputs but
 * saves no state. Slots written in one call must be distinct, and no sequence may write a
 * slot another sequence of the same call reads: each row's result is independent of the
 * order rows are processed in only under that condition (the library does not check it).
 *
 * Host pointers for cpu and reference, device (or managed) pointers for cuda. The cuda backend
 * also needs the state pool 16-byte aligned (cudaMalloc gives 256). On the cuda backend slot
 * indices stay in device memory, so indices >= num_slots cannot be refused before the launch:
 * the kernel skips such rows (no output and no state written for them).
 *
 * The cuda backend enqueues one kernel on `stream` and returns: no allocation, no
 * synchronisation, no host copy, so the call can be captured in a CUDA graph.
 *
 * Multi-token decode (speculative verify, MTP; SPEC operation 2). With num_tokens = T > 1 each
 * sequence applies T tokens in order and the activation tensors have one row per token:
 * token t of sequence n is row n*T + t, or row cu_seqlens[n] + t with variable lengths
 * (cu_seqlens[n+1] - cu_seqlens[n] tokens, at most num_tokens; the strides above are between
 * token rows). out gets one row per token. The state stays on chip between tokens:
 *   - without token_slots, the state after the last token goes to the write slot as above;
 *   - with token_slots, the state after token t goes to token_slots[n][t] (skipped where that
 *     is negative, or 0 with null_slot_zero) and nowhere else; write_slot_indices must then be
 *     NULL. With num_accepted as well, sequence n starts from the state saved after token
 *     num_accepted[n] - 1 of the previous step, token_slots[n][num_accepted[n] - 1] (1..T;
 *     1 = column 0, usually the sequence's own slot), and slot_indices may be NULL.
 * A snapshot is the float32 running state rounded to the state dtype; the running state is not
 * re-read from it. A padding row has zero outputs for all its tokens; a sequence with zero
 * tokens writes nothing. Host backends refuse cu_seqlens that decrease or exceed num_tokens
 * and num_accepted outside 1..token_slots_stride; the cuda kernel skips such rows, and rows
 * whose token slots (the columns it reads) are >= num_slots or whose cu_seqlens[n] < 0.
 *
 * Checked mode (opt-in). Engines keep slot indices in device memory, where the cuda backend
 * cannot check them before the launch; it always skips a sequence whose indices are invalid
 * (read, write or token slot >= num_slots, num_accepted outside 1..token_slots_stride,
 * cu_seqlens negative, decreasing, longer than num_tokens or beyond N * num_tokens rows):
 * none of its outputs and no state is written. With bad_index_rows set, it also adds the
 * number of sequences it skipped to *bad_index_rows (one atomic add per skipped sequence), so
 * that the caller can tell: zero the counter once, run any number of calls (a whole CUDA graph),
 * read it after synchronising. The counter is one uint32 in device or managed memory for cuda,
 * 4-byte aligned, outside every other buffer of the call. Host backends read the indices before
 * computing and refuse a call with a bad index (GDN_ERR_SLOT_OUT_OF_RANGE or
 * GDN_ERR_INVALID_SHAPE, nothing written), so they never add to the counter.
 * ------------------------------------------------------------------------------------- */

/* Most tokens per sequence in one multi-token call. */
#define GDN_MAX_TOKENS 16
/* Largest K and V any backend takes (every released model has 128). */
#define GDN_MAX_HEAD_DIM 256

typedef struct gdn_decode_params {
    size_t struct_size; /* sizeof(gdn_decode_params); set by gdn_decode_params_init. The library
                           also takes the shorter structs of older headers (0.1: up to
                           num_threads; 0.2: up to num_accepted; 0.3: up to bad_index_rows;
                           0.4: up to state_slot_stride);
                           the fields such a caller lacks read as zero. */

    /* shape */
    int64_t num_seqs;    /* N: sequences in the batch (rows), >= 0; 0 is a no-op */
    int64_t num_q_heads; /* H: query/key heads */
    int64_t num_v_heads; /* HV: value heads, a multiple of H */
    int64_t head_dim_k;  /* K */
    int64_t head_dim_v;  /* V */

    /* activations */
    gdn_dtype act_dtype; /* f32, f16 or bf16 (f64 on the reference backend): q, k, v, a, b, out */
    const void *q;
    int64_t q_stride;
    const void *k;
    int64_t k_stride;
    const void *v;
    int64_t v_stride;
    const void *a;
    int64_t a_stride;
    const void *b;
    int64_t b_stride;
    void *out;
    int64_t out_stride;

    /* per-head gate parameters, float32 [HV] */
    const float *A_log;
    const float *dt_bias;

    /* options */
    float scale;           /* q scale; 0 = 1/sqrt(K) */
    int qk_l2norm;         /* 1 = l2-normalise q and k in the kernel (default), 0 = as given */
    gdn_head_map head_map; /* default GDN_HEAD_MAP_GROUPED */

    /* state pool */
    void *state_pool;
    int64_t num_slots;
    gdn_state_layout state_layout; /* default GDN_LAYOUT_VK */
    gdn_dtype state_dtype;         /* f32 or bf16 (f64 on the reference backend) */

    /* slots */
    const void *slot_indices;       /* [N]: slot read (and written) by each sequence */
    const void *write_slot_indices; /* optional [N]: slot written, same dtype; NULL = read slot */
    gdn_dtype index_dtype;          /* GDN_DTYPE_I64 (default) or GDN_DTYPE_I32 */
    int null_slot_zero;             /* 1 = slot 0 is padding too (vLLM NULL_BLOCK_ID) */

    /* execution */
    gdn_backend backend; /* default GDN_BACKEND_AUTO */
    void *stream;        /* cudaStream_t for cuda (NULL = legacy default stream) */
    int num_threads;     /* cpu: worker threads; 0 = GDN_NUM_THREADS env var, else all cores */

    /* multi-token decode (SPEC operation 2); all zero/NULL = one token per sequence */
    int64_t num_tokens;         /* T tokens per sequence, 1..GDN_MAX_TOKENS (0 = 1); with
                                   cu_seqlens: the most tokens any sequence has (any number on
                                   the cpu and reference backends, see total_tokens) */
    const void *cu_seqlens;     /* optional [N+1], index dtype: sequence n owns token rows
                                   cu_seqlens[n] .. cu_seqlens[n+1]-1 (varlen) */
    const void *token_slots;    /* optional [N, token_slots_stride], index dtype: the slot that
                                   receives the state after token t (negative: not saved) */
    int64_t token_slots_stride; /* elements between sequences in token_slots; 0 = num_tokens */
    const void *num_accepted;   /* optional [N], index dtype, with token_slots: the state is read
                                   from token_slots[n][num_accepted[n] - 1] */

    /* checked mode (0.3); NULL = off. See "Checked mode" above. */
    uint32_t *bad_index_rows; /* a counter the backend adds the rows it skipped to */

    /* Programmatic dependent launch (0.4; cuda on sm_90+, one token per sequence, vk, K = 128;
     * ignored elsewhere). 1 = the kernel is launched so that it may start while the kernel
     * before it on the stream is still running: it reads the slot indices and the state tiles
     * at once, and waits for that kernel (griddepcontrol.wait) only before it reads q, k, v, a,
     * b or writes anything. In a model the state read then overlaps the tail of the kernel that
     * produces q, k, v, a, b. Set it only when the kernel launched just before this call on the
     * stream writes neither the state pool, nor the index arrays, nor A_log and dt_bias (e.g. a
     * projection or conv kernel, not another gdn_decode over the same pool). The kernel lets the
     * next kernel begin launching once its own wait is over, so a next kernel launched with PDL
     * must wait (griddepcontrol.wait) before it reads this call's out. 0 = an ordinary launch. */
    int pdl;

    /* Paged pools (0.4): elements between the starts of consecutive slots of state_pool; 0 =
     * packed (HV*V*K). It may exceed one slot, for the view [num_slots, HV, V, K] of a larger
     * page, e.g. vLLM's hybrid cache, which keeps a sequence's GDN state and conv state in one
     * page: stride (HV+1)*V*K, or storage[:, 1:] / storage[:, :HV] of a [slots, HV+1, V, K]
     * tensor. It holds for read, write and token slots on every backend; the bytes between slots
     * are never read or written. A stride shorter than a slot is GDN_ERR_INVALID_STRIDE. On the
     * cuda backend a stride whose slots are not 16-byte aligned is served by the scalar kernels
     * (correct, slower). */
    int64_t state_slot_stride;

    /* ---- varlen prefill and mixed batches (0.5) --------------------------------------------
     * With cu_seqlens a sequence may have any number of tokens: prefills, decodes and verifies
     * in one call. num_tokens is then the most tokens any sequence has, and may exceed
     * GDN_MAX_TOKENS when token_slots and num_accepted are not set. On the cuda backend (0.6)
     * sequences of more than GDN_MAX_TOKENS tokens run in chunks of 64 on tensor cores (vk layout
     * and K = 128 only; other shapes are GDN_ERR_INVALID_SHAPE there, nothing written) and the
     * shorter sequences of the same call on the multi-token kernel, both enqueued by the one
     * call; on compute capability 9.0 and later the second runs beside the first (programmatic
     * dependent launch), on the multiprocessors the long sequences leave idle, and the stream's
     * next work still waits for both (GDN_MIXED_OVERLAP=0 in the environment: one after the
     * other, as on older GPUs). The chunked products take bf16 operands with float32
     * accumulation: with bf16 activations one bf16 term each (the accuracy of FLA's and FlashInfer's chunked
     * prefill, ~1e-3 relative), with f16 or f32 activations, or GDN_PREFILL_PRECISE=1 in the environment,
     * three (hi/lo splits; float32-level results). */
    int64_t total_tokens;             /* with cu_seqlens: token rows q, k, v, a, b (or g, beta) and out hold;
                                         0 = num_seqs * num_tokens. cu_seqlens[N] may not exceed it */
    const uint8_t *has_initial_state; /* optional [N] (torch.bool works): 0 = sequence n starts
                                         from a zero state, its read slot is not read (vLLM's and
                                         FLA's name); the final state still goes to its write
                                         slot. NULL = every sequence reads its slot. Every
                                         backend (cuda since 0.5.1) */

    /* Gates given precomputed (0.5), as FLA's fused_recurrent / chunk_gated_delta_rule take
     * them: instead of a, b, A_log and dt_bias (which must then be NULL), the log-decay g and
     * beta after the sigmoid, per token row and value head. Every backend (cuda since 0.5.1). */
    const float *g;      /* [rows, HV] float32: g = -exp(A_log) softplus(a + dt_bias) */
    int64_t g_stride;    /* elements between token rows; 0 = HV */
    const void *beta;    /* [rows, HV] in act_dtype: beta = sigmoid(b) */
    int64_t beta_stride; /* elements between token rows; 0 = HV */

    /* Workspace (0.7): device scratch the cuda backend may use for the call's long sequences
     * (gdn_decode_workspace_size says how much). With it, bf16 activations and one-term products,
     * the chunk-local work of every 64-token chunk (gates, Gram matrices, the inverse of the
     * chunk's triangular system) runs first for all chunks at once, then the walk over the
     * chunks: faster for long sequences. NULL = the single-kernel path. Its contents before and
     * after a call mean nothing; it must not overlap any other buffer of the call, be 16-byte
     * aligned, and hold at least the size asked for (else GDN_ERR_INVALID_ARGUMENT, nothing
     * written). Calls on one stream may share one workspace; calls that may run concurrently
     * may not. Ignored by the cpu and reference backends. */
    void *workspace;
    size_t workspace_bytes;
} gdn_decode_params;

/* Fills *params with the defaults above (everything else zero/NULL) and sets struct_size. */
GDN_API void gdn_decode_params_init(gdn_decode_params *params);

/* The workspace a call with these params can use (0.7), in bytes; 0 when it uses none (the cpu
 * and reference backends, calls without sequences longer than GDN_MAX_TOKENS, f16/f32
 * activations). Reads only the shape fields, act_dtype, backend, state_pool (to choose the
 * backend), num_tokens, cu_seqlens (whether set) and total_tokens: the size is an upper bound for
 * every call of that shape and total_tokens, about 19.3 KiB per 64 tokens and value head (for
 * qwen3-next's 32 value heads, 9.4 MiB per 1000 tokens), whatever the sequence lengths. */
GDN_API gdn_status gdn_decode_workspace_size(const gdn_decode_params *params, size_t *bytes);

/* Runs one decode step (T tokens per sequence with num_tokens). Validates every argument before
 * touching memory. */
GDN_API gdn_status gdn_decode(const gdn_decode_params *params);

/* The backend gdn_decode would run these params on (resolving AUTO), without running it.
 * Returns GDN_OK and sets *backend, or the error gdn_decode would return. It checks everything
 * except what needs the values of the index arrays (slot indices, token slots, num_accepted,
 * cu_seqlens, and the output overlap check with cu_seqlens), which gdn_decode checks on host
 * backends. */
GDN_API gdn_status gdn_decode_backend_for(const gdn_decode_params *params, gdn_backend *backend);

/* ---------------------------------------------------------------------------------------
 * cpu backend threads
 *
 * The cpu backend keeps its worker threads (and their scratch, ~460 KiB each) between calls:
 * they are started by the first call that wants more than one thread (num_threads, else
 * GDN_NUM_THREADS, else all cores), grown when a call wants more, and never shrunk. One call at
 * a time uses them; a call made while another host thread is inside gdn_decode on the cpu
 * backend starts threads of its own for that call, as it always did. A forked child starts
 * without them and makes its own. They end when the library is unloaded, or here.
 * ------------------------------------------------------------------------------------- */

/* Stops and joins the cpu backend's worker threads and frees their scratch (0.4). Call it when
 * no gdn_decode runs on the cpu backend; the next call that needs threads starts them again. */
GDN_API void gdn_cpu_release_threads(void);

#ifdef __cplusplus
}
#endif

#endif /* GDN_H */
