/*
 * dev_check.h -- the host helpers every dev/ check shares: CUDA error exits, the 16-bit float
 * conversions of its inputs and results, the float reference of one forward row, and launch
 * configurations. A dev check is a program, so an error exits.
 */
#ifndef FA_DEV_CHECK_H
#define FA_DEV_CHECK_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "flashattn.h"
#include "kernels/kernels.h"
#include "launch_contract.h"

#define CK(call)                                                                               \
    do {                                                                                       \
        const cudaError_t e_ = (call);                                                         \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(2);                                                                           \
        }                                                                                      \
    } while (0)

/* Waits for all of the device's work, for at most `seconds`. A kernel that never finishes (a
   barrier nobody completes) is reported with `what` and the program exits, which ends the
   kernel: a hang costs seconds of a device session, not the caller's whole time limit. */
static inline void finish_or_exit(const char *what, double seconds = 20.0)
{
    cudaEvent_t done;
    CK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    CK(cudaEventRecord(done, 0));
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
        const cudaError_t e = cudaEventQuery(done);
        if (e == cudaSuccess)
            break;
        if (e != cudaErrorNotReady)
            CK(e);
        const std::chrono::duration<double> waited = std::chrono::steady_clock::now() - start;
        if (waited.count() > seconds) {
            printf("HANG: %s has not finished after %.0f s; exiting\n", what, seconds);
            fflush(stdout);
            _exit(3);
        }
        usleep(200);
    }
    CK(cudaEventDestroy(done));
    CK(cudaDeviceSynchronize()); /* work on other streams, and any error of the kernel */
}

/* A device copy of h (at least one element is allocated, so an empty h still gives a pointer). */
template <class T> static T *dev_upload(const std::vector<T> &h)
{
    T *d = nullptr;
    CK(cudaMalloc(&d, std::max<size_t>(h.size(), 1) * sizeof(T)));
    if (!h.empty())
        CK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

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

/* One query row of the forward in float, over the keys lo..hi it sees (common/mask.h): key j at
   k + j * kv_stride, its value row at v + j * kv_stride, D columns each. Scores scale q.k, then
   softcap c tanh(x / c) when c > 0; out (D floats, zero on entry) gets sum p v / sum p. Returns
   the lse, -inf when the row sees no key (out stays 0). logit holds at least hi + 1 floats. */
static inline float reference_row(const float *q, const float *k, const float *v, size_t kv_stride, int D, int lo,
                                  int hi, float scale, float softcap, float *logit, float *out)
{
    if (hi < lo)
        return -INFINITY;
    float mx = -INFINITY;
    for (int j = lo; j <= hi; ++j) {
        const float *kj = k + j * kv_stride;
        float dot = 0.f;
        for (int d = 0; d < D; ++d)
            dot += q[d] * kj[d];
        float x = scale * dot;
        if (softcap > 0.f)
            x = softcap * tanhf(x / softcap);
        logit[j] = x;
        mx = std::max(mx, x);
    }
    float sum = 0.f;
    for (int j = lo; j <= hi; ++j) {
        const float w = expf(logit[j] - mx);
        sum += w;
        const float *vj = v + j * kv_stride;
        for (int d = 0; d < D; ++d)
            out[d] += w * vj[d];
    }
    for (int d = 0; d < D; ++d)
        out[d] /= sum;
    return mx + logf(sum);
}

/* The SM count of the current device, which must have compute capability major.x; exits
   (status 2) on another. */
static inline int device_sm_count(int major)
{
    int dev = 0, sm_count = 0, got = 0;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, dev));
    CK(cudaDeviceGetAttribute(&got, cudaDevAttrComputeCapabilityMajor, dev));
    if (got != major) {
        fprintf(stderr, "needs an sm_%d0 GPU (compute capability %d.x), got %d.x\n", major, major, got);
        exit(2);
    }
    return sm_count;
}

/* Tile t launched over grid (x, y, z) with the 384-thread block. */
static inline fa_launch tile_launch(const fa_tile &t, unsigned x, unsigned y, unsigned z)
{
    fa_launch cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.grid[0] = x;
    cfg.grid[1] = y;
    cfg.grid[2] = z;
    cfg.block[0] = FA_THREADS_PER_BLOCK;
    cfg.block[1] = cfg.block[2] = 1;
    cfg.smem_bytes = t.smem_bytes;
    cfg.block_m = t.block_m;
    cfg.block_n = t.block_n;
    cfg.stages = t.stages;
    cfg.head_dim_padded = t.head_dim_padded;
    return cfg;
}

/* The persistent sm90 forward's launch of p: one CTA per tile, at most one per SM. */
static inline fa_launch persistent_launch(const fa_params &p, const fa_tile &t, int sm_count)
{
    const long long tiles = (long long)((p.seqlen_q + t.block_m - 1) / t.block_m) * p.heads_q * p.batch;
    return tile_launch(t, (unsigned)std::max(1LL, std::min<long long>(tiles, sm_count)), 1, 1);
}

#endif /* FA_DEV_CHECK_H */
