/*
 * dev_check.h -- the host helpers every dev/ check shares: CUDA error exits and the 16-bit
 * float conversions of its inputs and results. A dev check is a program, so an error exits.
 */
#ifndef FA_DEV_CHECK_H
#define FA_DEV_CHECK_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "flashattn.h"

#define CK(call)                                                                               \
    do {                                                                                       \
        const cudaError_t e_ = (call);                                                         \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(2);                                                                           \
        }                                                                                      \
    } while (0)

/* x rounded to the nearest bf16 or fp16, as bits */
static inline uint16_t to_bits(float x, bool bf16)
{
    uint16_t b;
    if (bf16) {
        const __nv_bfloat16 h = __float2bfloat16_rn(x);
        memcpy(&b, &h, 2);
    } else {
        const __half h = __float2half_rn(x);
        memcpy(&b, &h, 2);
    }
    return b;
}

static inline float from_bits(uint16_t b, bool bf16)
{
    if (bf16) {
        __nv_bfloat16 h;
        memcpy(&h, &b, 2);
        return __bfloat162float(h);
    }
    __half h;
    memcpy(&h, &b, 2);
    return __half2float(h);
}

static inline uint16_t to_bits(float x, fa_dtype dtype) { return to_bits(x, dtype == FA_BFLOAT16); }
static inline float from_bits(uint16_t b, fa_dtype dtype) { return from_bits(b, dtype == FA_BFLOAT16); }

#endif /* FA_DEV_CHECK_H */
