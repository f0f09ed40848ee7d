/* The per-item work for x86-64 CPUs with AVX-512 F/BW/VL (Skylake-SP, Ice Lake, Sapphire and
 * Emerald Rapids, Zen 4 and later). */
#if defined(__x86_64__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma"))),                  \
                             apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,prefer-vector-width=256")
#endif
#define GDN_CPU_AVX512 1
#define GDN_CPU_ITEM_FN gdn_cpu_decode_item_avx512
#define GDN_CPU_NARROW_FN gdn_cpu_narrow_bf16_avx512
#include "decode_item_body.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
typedef int gdn_no_avx512_here; /* an empty translation unit is not ISO C */
#endif
