/*
 * The interface between the dispatcher (src/core) and the backends. The dispatcher is the
 * only code that knows every backend; a backend sees only a validated gdn_problem.
 */
#ifndef GDN_CORE_BACKENDS_H
#define GDN_CORE_BACKENDS_H

#include "../common/problem.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Records a formatted message as this thread's last error and returns status. */
gdn_status gdn_fail(gdn_status status, const char *format, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* The problem of validated params: defaults resolved, strides in elements (src/core/decode.c). */
gdn_problem gdn_problem_from_params(const gdn_decode_params *p);

/* cpu backend: float32, host threads (src/cpu/decode.c). */
gdn_status gdn_cpu_decode(const gdn_problem *p);
/* The instruction set of the cpu backend's inner loops (src/cpu/decode.c): the best the CPU
 * has, or GDN_CPU_ISA's. gdn_cpu_force_isa switches it process-wide (tests, benchmarks): 0, or
 * -1 for a name this build or CPU lacks. gdn_cpu_isa_list: the names this build has. */
const char *gdn_cpu_isa_name(void);
int gdn_cpu_force_isa(const char *name);
/* The current variant's float -> bf16 narrowing of n values (the vector code the state rows are
 * stored with), for tests that hold each variant to gdn_f32_to_bf16. */
void gdn_cpu_narrow_bf16_row(const float *x, uint16_t *out, int64_t n);
const char *gdn_cpu_isa_list(void);
/* How the cpu backend computes sequences longer than GDN_MAX_TOKENS, process-wide (tests,
 * benchmarks): 1 in chunks, 0 token by token, -1 by length (the default). */
void gdn_cpu_force_prefill(int mode);
/* reference backend: float64, one thread (src/cpu/decode_reference.c). */
gdn_status gdn_reference_decode(const gdn_problem *p);

/* Where a pointer lives, as far as the CUDA runtime knows. */
typedef enum gdn_memory_kind {
    GDN_MEMORY_HOST = 0,    /* ordinary host memory (or no CUDA backend built) */
    GDN_MEMORY_DEVICE = 1,  /* device memory: only kernels may touch it */
    GDN_MEMORY_MANAGED = 2, /* managed or mapped pinned: both sides may touch it */
    GDN_MEMORY_UNKNOWN = 3
} gdn_memory_kind;

/* cuda backend (src/cuda/); stubs in src/core/cuda_absent.c when nvcc was not found. */
int gdn_cuda_built(void);
int gdn_cuda_usable(void); /* built, a driver and at least one device of a built architecture */
gdn_memory_kind gdn_cuda_memory_kind(const void *ptr, int *device);
gdn_status gdn_cuda_decode(const gdn_problem *p);

/* Tuning hooks of the cuda kernels that have several configurations (src/cuda/decode_one_token.cu,
 * src/cuda/decode_multi_token.cu) for `gdn bench` and the tests; not part of the public API.
 * Configurations 0..count-1 fix the rows a warp covers (named r<rows>x<batches>[s<stages>]); a
 * negative number returns to the built-in choice. Process-wide. */
typedef enum gdn_cuda_kernel { GDN_CUDA_ONE_TOKEN = 0, GDN_CUDA_MULTI_TOKEN = 1 } gdn_cuda_kernel;
int gdn_cuda_config_count(gdn_cuda_kernel kernel);
void gdn_cuda_force_config(gdn_cuda_kernel kernel, int config);
void gdn_cuda_config_name(gdn_cuda_kernel kernel, int config, char *buf, size_t size);

/* The chunked prefill kernel's products (src/cuda/prefill_chunked.cu): 1 = three bf16 terms each
 * (the default for f16/f32 activations and with GDN_PREFILL_PRECISE=1), 0 = one term (the default
 * for bf16 activations), negative = the default. Process-wide; tests and benchmarks. */
void gdn_cuda_chunked_force_precise(int precise);
/* Its one-term products: 1 = pipelined (the local warps one chunk ahead of the state warps; the
 * default, GDN_PREFILL_PIPELINE=0 turns it off; bf16 activations on a GPU that gives a block
 * ~215 KiB of shared memory only, the rest take the other), 0 = phase by phase with the whole
 * block, negative = the default. */
void gdn_cuda_chunked_force_pipeline(int pipelined);
/* With a workspace: 1 = the split path (the chunk-local work of every chunk in its own kernel
 * first, then the walk over the chunks; the default, GDN_PREFILL_SPLIT=0 turns it off), 0 = as
 * without a workspace, negative = the default. */
void gdn_cuda_chunked_force_split(int split);
/* The split path's walk on a GPU of compute capability 9.0: 1, 2 or 4 = on wgmma with that many
 * warpgroups (slices of 32 state rows) a block, 0 = on mma.sync (the only walk elsewhere),
 * negative = the default (GDN_PREFILL_WGMMA=0/1/2/4, else by the call's token count). */
void gdn_cuda_chunked_force_wgmma(int slices);
/* The split path's local kernel finds each record's sequence by 1 = a 32-way search of cu_seqlens
 * a warp (the default), 0 = a binary search (GDN_PREFILL_KARY=0), negative = the default. */
void gdn_cuda_chunked_force_kary(int kary);
/* The split path with the mma.sync walk keeps its records in the WY form: 1 = on (the local kernel
 * also computes W = T diag(beta rk^2 gam) K and U0 = T diag(beta rk) V, and the walk's chain is
 * U' = U0 - W S^T then the state update), 0 = off (the default; GDN_PREFILL_WY=1 turns it on),
 * negative = the default. */
void gdn_cuda_chunked_force_wy(int wy);
/* The split path's mma.sync walk stages each chunk by running pointers: 1 = on (the default;
 * GDN_PREFILL_LEAN=0 turns it off), 0 = off, negative = the default. */
void gdn_cuda_chunked_force_lean(int lean);
/* With the running pointers, the stage split between the walk's two warp groups at their idle
 * points: 1 = on (the default; GDN_PREFILL_SPREAD=0 turns it off), 0 = off, negative = the
 * default. */
void gdn_cuda_chunked_force_spread(int spread);
/* On sm_90, the mma.sync walk with the spread staging and the wgmma walk of 2 slices copy each
 * record by one bulk copy on an mbarrier: 1 = on, 0 = off (the default; GDN_PREFILL_BULK=1 turns
 * it on), negative = the default. */
void gdn_cuda_chunked_force_bulk(int bulk);
/* The split path's local kernel at 6 blocks a multiprocessor (at most 80 registers) instead of 5:
 * 1 = on, 0 = off (the default; GDN_PREFILL_LOCAL6=1 turns it on), negative = the default. */
void gdn_cuda_chunked_force_local_blocks(int six);
/* On sm_90 with V = 128, the split path's walk as one block a value head with the state as
 * wgmma's A operand (prefill_walk_head): 1 = on, 0 = off (the default; GDN_PREFILL_HEAD_WALK=1
 * turns it on), negative = the default. */
void gdn_cuda_chunked_force_head_walk(int on);
/* The wgmma walk of 2 slices a block stages after issuing its first products: 1 = on, 0 = off
 * (the default; GDN_PREFILL_WG_LATE=1 turns it on), negative = the default. */
void gdn_cuda_chunked_force_wg_late(int late);
/* Bytes of one record of the split path (the workspace holds one a chunk and value head): the WY
 * form's while that is on, else GDN_CHUNK_RECORD_BYTES. */
size_t gdn_cuda_chunk_record_bytes(int64_t head_dim_v);
/* A mixed call (long sequences beside short ones, src/cuda/decode.cu) on sm_90: 1 = the short
 * sequences' kernel runs beside the chunked kernel (the default), 0 = after it
 * (GDN_MIXED_OVERLAP=0), negative = the default. */
void gdn_cuda_mixed_force_overlap(int overlap);

#ifdef __cplusplus
}
#endif

#endif
