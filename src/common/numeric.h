/*
 * Host-side conversions between the storage dtypes and float/double. bf16 and fp16 are kept
 * as raw 16-bit patterns so that the library needs no compiler support for _Float16 or
 * __bf16; rounding is to nearest even, as the CUDA intrinsics round, so the CPU and CUDA
 * backends store the same bits for the same float.
 */
#ifndef GDN_COMMON_NUMERIC_H
#define GDN_COMMON_NUMERIC_H

#include <stdint.h>
#include <string.h>

#include "gdn.h"

static inline uint32_t gdn_f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float gdn_bits_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static inline float gdn_bf16_to_f32(uint16_t h) { return gdn_bits_f32((uint32_t)h << 16); }

static inline uint16_t gdn_f32_to_bf16(float x)
{
    uint32_t u = gdn_f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a quiet NaN */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float gdn_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1fu) /* inf or NaN */
        return gdn_bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) { /* zero or subnormal: man * 2^-24 */
        float mag = (float)man * (1.0f / 16777216.0f);
        return sign ? -mag : mag;
    }
    return gdn_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

static inline uint16_t gdn_f32_to_f16(float x)
{
    uint32_t u = gdn_f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) /* NaN */
        return (uint16_t)(sign | 0x7e00u);
    if (abs >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (abs < 0x38800000u) { /* below the smallest normal 2^-14: subnormal or zero */
        /* Adding 0.5 makes the FPU round the mantissa to the 2^-24 grid, ties to even. */
        float mag = gdn_bits_f32(abs) + 0.5f;
        return (uint16_t)(sign | (uint16_t)(gdn_f32_bits(mag) - 0x3f000000u));
    }
    uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
    return (uint16_t)(sign | (uint16_t)((rounded - 0x38000000u) >> 13));
}

/* Element i of a tensor of any floating dtype, widened to double. */
static inline double gdn_load_f64(const void *base, gdn_dtype dtype, int64_t i)
{
    switch (dtype) {
    case GDN_DTYPE_F32: return ((const float *)base)[i];
    case GDN_DTYPE_F16: return gdn_f16_to_f32(((const uint16_t *)base)[i]);
    case GDN_DTYPE_BF16: return gdn_bf16_to_f32(((const uint16_t *)base)[i]);
    case GDN_DTYPE_F64: return ((const double *)base)[i];
    default: return 0.0;
    }
}

/* Stores x into element i of a tensor of any floating dtype, rounding to nearest even. */
static inline void gdn_store_f64(void *base, gdn_dtype dtype, int64_t i, double x)
{
    switch (dtype) {
    case GDN_DTYPE_F32: ((float *)base)[i] = (float)x; break;
    case GDN_DTYPE_F16: ((uint16_t *)base)[i] = gdn_f32_to_f16((float)x); break;
    case GDN_DTYPE_BF16: ((uint16_t *)base)[i] = gdn_f32_to_bf16((float)x); break;
    case GDN_DTYPE_F64: ((double *)base)[i] = x; break;
    default: break;
    }
}

/* Widens n consecutive elements starting at element i into dst. */
static inline void gdn_load_row_f32(const void *base, gdn_dtype dtype, int64_t i, int64_t n, float *dst)
{
    if (dtype == GDN_DTYPE_F32) {
        memcpy(dst, (const float *)base + i, (size_t)n * sizeof(float));
        return;
    }
    if (dtype == GDN_DTYPE_BF16) { /* a shift per element: the compiler vectorises it */
        const uint16_t *src = (const uint16_t *)base + i;
        for (int64_t j = 0; j < n; j++) {
            uint32_t u = (uint32_t)src[j] << 16;
            memcpy(&dst[j], &u, sizeof u);
        }
        return;
    }
    for (int64_t j = 0; j < n; j++)
        dst[j] = (float)gdn_load_f64(base, dtype, i + j);
}

/* Narrows n floats from src into consecutive elements starting at element i. */
static inline void gdn_store_row_f32(void *base, gdn_dtype dtype, int64_t i, int64_t n, const float *src)
{
    if (dtype == GDN_DTYPE_F32) {
        memcpy((float *)base + i, src, (size_t)n * sizeof(float));
        return;
    }
    if (dtype == GDN_DTYPE_BF16) { /* gdn_f32_to_bf16 without branches, so that it vectorises */
        uint16_t *out = (uint16_t *)base + i;
        for (int64_t j = 0; j < n; j++) {
            uint32_t u;
            memcpy(&u, &src[j], sizeof u);
            uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, quiet = (u >> 16) | 0x0040u;
            out[j] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
        }
        return;
    }
    for (int64_t j = 0; j < n; j++)
        gdn_store_f64(base, dtype, i + j, src[j]);
}

#endif
