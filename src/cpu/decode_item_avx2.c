/* The per-item work for x86-64 CPUs with AVX2 and FMA (Haswell, Zen and later). */
#if defined(__x86_64__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif
#define GDN_CPU_AVX2 1
#define GDN_CPU_ITEM_FN gdn_cpu_decode_item_avx2
#define GDN_CPU_NARROW_FN gdn_cpu_narrow_bf16_avx2
#include "decode_item_body.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
typedef int gdn_no_avx2_here; /* an empty translation unit is not ISO C */
#endif
