/*
 * bwd_sm80_aux.cu -- the backward's preprocess (launch 1) and postprocess (launch 3) around the
 * main backward kernel (kernels.h has the three-launch contract). Plain CUDA: nothing here
 * needs tensor cores, so it runs on every target the sm80 family is built for.
 *
 * Both kernels: grid (ceil(seqlen_q / R), heads_q, batch), R = FA_BWD_PRE_ROWS = 64, block 384,
 * static shared memory only; seqlen_q the longest entry. CTA (x, h, b) owns query rows
 * [x R, min(x R + R, len_q)) of head h of batch entry b (len_q and every row address from
 * seqlen.h: out, dout and dq rows through fa_q_row_offset, lse, delta and dq_accum's rows
 * through fa_lse_index, (batch, heads_q, seqlen_q) or, packed, (heads_q, total_q); a row past
 * len_q, in a packed batch the next entry's, is neither read nor written). A row of head_dim
 * elements is head_dim / 8 vectors of 16 bytes (8 fp16/bf16, or two float4 of fp32); the
 * CTA's rows x vectors are one flat list of items, and thread t takes items t, t + 384, ...
 * (at most 6), so all 384 threads issue 16-byte loads whatever head_dim is, and a warp reads
 * whole rows (contiguous 16 * head_dim/8 bytes each) however out, dout and dq are strided.
 *
 *   fa_bwd_pre   delta[b, h, i] = sum_d float(dout[b, i, h, d]) * float(out[b, i, h, d])
 *                (indices as the uniform layout spells them):
 *                each item's 8 products go to a shared slot [row][vector]; thread r < R then
 *                adds row r's slots in vector order (a fixed order: delta is reproducible).
 *                It zeroes dq_accum's rows of the CTA (contiguous: float4 stores over the
 *                flat range) and the dq_lock counters of the query blocks of ws->block_m rows
 *                that start in its rows. With sinks (ws->dsink_part), warp 0 sums
 *                -exp(sinks[h] - lse) * delta over the CTA's rows, lane l holding rows l and
 *                l + 32 and a fixed xor-shuffle tree finishing, into dsink_part[b, h, x].
 *   fa_bwd_post  dq[b, i, h, :] = (dtype)(softmax_scale * dq_accum[b, h, i, :]), per item two
 *                float4 loads and one 16-byte store. With dsinks, CTA (0, h, 0) also sums
 *                dsink_part[:, h, :]: thread t adds the entries t, t + 384, ... of the
 *                (batch, part) list in order, then xor shuffles inside each warp and thread 0
 *                adds the 12 warp sums in warp order: the same shape every run.
 *
 * fp32 accumulation throughout; element offsets are int64 (strides may pass 2^31). The
 * sink weight uses score.h's fa_exp_below, exact 1 where lse equals the sink (a row that
 * sees no key), with no -inf - -inf.
 */
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../common/score.h"
#include "../common/seqlen.h"
#include "../launch_contract.h"
#include "kernels.h"

namespace fa_bwd_aux {

constexpr int kThreads = FA_THREADS_PER_BLOCK;
constexpr int kWarps = FA_NUM_WARPS_PER_BLOCK;
constexpr int kRows = FA_BWD_PRE_ROWS;
constexpr int kMaxHeadDim = 256; /* launch.c's bound on head_dim */
constexpr int kMaxVecs = kMaxHeadDim / 8;
constexpr int kMaxItems = (kRows * kMaxVecs + kThreads - 1) / kThreads;
static_assert(kRows <= kThreads, "one thread per row finishes delta");
static_assert(kRows <= 2 * FA_WARP_SIZE, "warp 0 holds the CTA's rows two per lane for dsink_part");

struct Args {
    const void *out, *dout;
    void *dq;
    const float *lse, *sinks;
    float *delta, *dq_accum, *dsink_part, *dsinks;
    int *dq_lock;
    fa_seq_layout layout; /* seqlen.h: rows of out, dout, dq; the index of lse, delta, dq_accum */
    int64_t o_batch_stride, o_row_stride, o_head_stride;
    int64_t do_batch_stride, do_row_stride, do_head_stride;
    int64_t dq_batch_stride, dq_row_stride, dq_head_stride;
    int batch, seqlen_q, seqlen_k, heads_q, head_dim;
    int block_m;
    float softmax_scale;
};

/* Two 16-bit values packed in a 32-bit word, low half first (memory order). */
template <typename T> struct Pack;

template <> struct Pack<__half> {
    static __device__ __forceinline__ float2 unpack(uint32_t w)
    {
        __half2 h;
        memcpy(&h, &w, sizeof(w));
        return __half22float2(h);
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi)
    {
        const __half2 h = __floats2half2_rn(lo, hi);
        uint32_t w;
        memcpy(&w, &h, sizeof(w));
        return w;
    }
};

template <> struct Pack<__nv_bfloat16> {
    static __device__ __forceinline__ float2 unpack(uint32_t w)
    {
        /* bf16 is the top half of a float32: widening is a shift. */
        return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
    }
    static __device__ __forceinline__ uint32_t pack(float lo, float hi)
    {
        const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        uint32_t w;
        memcpy(&w, &h, sizeof(w));
        return w;
    }
};

template <typename T> __device__ __forceinline__ float dot8(const uint4 &a, const uint4 &b)
{
    const uint32_t wa[4] = {a.x, a.y, a.z, a.w};
    const uint32_t wb[4] = {b.x, b.y, b.z, b.w};
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const float2 fa = Pack<T>::unpack(wa[k]);
        const float2 fb = Pack<T>::unpack(wb[k]);
        s = fmaf(fa.x, fb.x, s);
        s = fmaf(fa.y, fb.y, s);
    }
    return s;
}

__device__ __forceinline__ int div_up(int a, int b) { return (a + b - 1) / b; }

/* Thread tid's items tid, tid + kThreads, ... as (row, vector), stepped with two divisions in
 * all rather than one per item, which would sit between the loads and delay them. */
struct ItemWalk {
    int r, v, dr, dv, nvec;
    __device__ __forceinline__ ItemWalk(int tid, int nvec_) : nvec(nvec_)
    {
        r = tid / nvec;
        v = tid - r * nvec;
        dr = kThreads / nvec;
        dv = kThreads - dr * nvec;
    }
    __device__ __forceinline__ void next()
    {
        r += dr;
        v += dv;
        if (v >= nvec) {
            v -= nvec;
            ++r;
        }
    }
};

/* Zeroes the CTA's rows of dq_accum (from stat0, lse's layout times head_dim) and, when
 * deterministic, the turn counters of the main kernel's query blocks that start in them. */
__device__ __forceinline__ void zero_dq_rows(const Args &a, int64_t stat0, int64_t bh, int r0, int rows, int tid)
{
    float4 *acc = reinterpret_cast<float4 *>(a.dq_accum + stat0 * a.head_dim);
    const int n4 = rows * (a.head_dim >> 2);
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int k = tid; k < n4; k += kThreads)
        acc[k] = zero;
    if (a.dq_lock != nullptr) {
        const int bm = a.block_m;
        const int m_lo = div_up(r0, bm), m_hi = div_up(r0 + rows, bm);
        int *lock = a.dq_lock + bh * div_up(a.seqlen_q, bm);
        for (int m = m_lo + tid; m < m_hi; m += kThreads)
            lock[m] = 0;
    }
}

/* -sum over the CTA's rows of exp(sink - lse) * delta (one warp; row_delta in shared memory). */
__device__ __forceinline__ float sink_part(const Args &a, int h, int64_t stat0, int rows, const float *row_delta,
                                           int tid)
{
    const float sink = fa_sink(a.sinks, h);
    const float *lse = a.lse + stat0;
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < 2; ++k) {
        const int r = tid + k * FA_WARP_SIZE;
        if (r < rows)
            s -= fa_exp_below(sink, lse[r]) * row_delta[r];
    }
#pragma unroll
    for (int off = FA_WARP_SIZE / 2; off > 0; off >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, off);
    return s;
}

template <typename T> __global__ void __launch_bounds__(kThreads) bwd_pre_kernel(const Args a)
{
    /* +1 column: thread r reads row r's slots, 33 words apart, on distinct banks. */
    __shared__ float slot[kRows][kMaxVecs + 1];
    __shared__ float row_delta[kRows];

    const int x = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x;
    const fa_seqlen e = fa_seqlen_at(&a.layout, b);
    const int r0 = x * kRows;
    const int rows = min(kRows, e.len_q - r0);
    const int64_t bh = (int64_t)b * a.heads_q + h;
    const int parts = div_up(a.seqlen_q, kRows);
    if (rows <= 0) {
        /* Only a shorter entry of a variable-length batch gets here; its part must read 0. */
        if (a.dsink_part != nullptr && tid == 0 && x < parts)
            a.dsink_part[bh * parts + x] = 0.0f;
        return;
    }
    /* row r0 + i of the CTA in delta (and lse, and dq_accum's rows): stat0 + i, lse's layout */
    const int64_t stat0 = fa_lse_index(&a.layout, &e, b, a.heads_q, h, r0);

    const int nvec = a.head_dim >> 3;
    const int items = rows * nvec;
    const T *out = static_cast<const T *>(a.out) +
                   fa_q_row_offset(&e, b, r0, a.o_batch_stride, a.o_row_stride) +
                   (int64_t)h * a.o_head_stride;
    const T *dout = static_cast<const T *>(a.dout) +
                    fa_q_row_offset(&e, b, r0, a.do_batch_stride, a.do_row_stride) +
                    (int64_t)h * a.do_head_stride;

    /* Every load first, so each thread has all its bytes in flight at once. */
    uint4 vo[kMaxItems], vd[kMaxItems];
    {
        ItemWalk w(tid, nvec);
#pragma unroll
        for (int k = 0; k < kMaxItems; ++k, w.next()) {
            if (tid + k * kThreads < items) {
                vo[k] = __ldg(reinterpret_cast<const uint4 *>(out + w.r * a.o_row_stride + w.v * 8));
                vd[k] = __ldg(reinterpret_cast<const uint4 *>(dout + w.r * a.do_row_stride + w.v * 8));
            }
        }
    }
    /* The zeroing stores go out while the loads are pending. */
    zero_dq_rows(a, stat0, bh, r0, rows, tid);
    {
        ItemWalk w(tid, nvec);
#pragma unroll
        for (int k = 0; k < kMaxItems; ++k, w.next())
            if (tid + k * kThreads < items)
                slot[w.r][w.v] = dot8<T>(vo[k], vd[k]);
    }
    __syncthreads();

    if (tid < rows) {
        float d = 0.0f;
        for (int v = 0; v < nvec; ++v)
            d += slot[tid][v];
        a.delta[stat0 + tid] = d;
        row_delta[tid] = d;
    }
    if (a.dsink_part == nullptr)
        return;
    __syncthreads();
    if (tid < FA_WARP_SIZE) {
        const float s = sink_part(a, h, stat0, rows, row_delta, tid);
        if (tid == 0)
            a.dsink_part[bh * parts + x] = s;
    }
}

/* dsinks[h] from dsink_part[:, h, :]; the whole block calls it (it synchronises). */
__device__ __forceinline__ void reduce_dsink(const Args &a, int h)
{
    __shared__ float warp_sum[kWarps];
    const int tid = threadIdx.x;
    const int parts = div_up(a.seqlen_q, kRows);
    const int n = a.batch * parts;
    float s = 0.0f;
    for (int k = tid; k < n; k += kThreads) {
        const int bb = k / parts, xx = k - bb * parts;
        s += a.dsink_part[((int64_t)bb * a.heads_q + h) * parts + xx];
    }
#pragma unroll
    for (int off = FA_WARP_SIZE / 2; off > 0; off >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, off);
    if ((tid & (FA_WARP_SIZE - 1)) == 0)
        warp_sum[tid / FA_WARP_SIZE] = s;
    __syncthreads();
    if (tid == 0) {
        float t = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w)
            t += warp_sum[w];
        a.dsinks[h] = t;
    }
}

template <typename T> __global__ void __launch_bounds__(kThreads) bwd_post_kernel(const Args a)
{
    const int x = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x;
    if (a.dsinks != nullptr && a.dsink_part != nullptr && x == 0 && b == 0)
        reduce_dsink(a, h);

    const fa_seqlen e = fa_seqlen_at(&a.layout, b);
    const int r0 = x * kRows;
    const int rows = min(kRows, e.len_q - r0);
    if (rows <= 0)
        return;

    const int nvec = a.head_dim >> 3;
    const int items = rows * nvec;
    const float4 *acc = reinterpret_cast<const float4 *>(
        a.dq_accum + fa_lse_index(&a.layout, &e, b, a.heads_q, h, r0) * a.head_dim);
    T *dq = static_cast<T *>(a.dq) +
            fa_q_row_offset(&e, b, r0, a.dq_batch_stride, a.dq_row_stride) +
            (int64_t)h * a.dq_head_stride;
    const float scale = a.softmax_scale;

    /* Item it covers acc[2 it], acc[2 it + 1]: the CTA's accumulator rows are contiguous. */
    float4 lo[kMaxItems], hi[kMaxItems];
#pragma unroll
    for (int k = 0; k < kMaxItems; ++k) {
        const int it = tid + k * kThreads;
        if (it < items) {
            lo[k] = __ldcs(acc + 2 * it);
            hi[k] = __ldcs(acc + 2 * it + 1);
        }
    }
    ItemWalk w(tid, nvec);
#pragma unroll
    for (int k = 0; k < kMaxItems; ++k, w.next()) {
        if (tid + k * kThreads < items) {
            uint4 o;
            o.x = Pack<T>::pack(scale * lo[k].x, scale * lo[k].y);
            o.y = Pack<T>::pack(scale * lo[k].z, scale * lo[k].w);
            o.z = Pack<T>::pack(scale * hi[k].x, scale * hi[k].y);
            o.w = Pack<T>::pack(scale * hi[k].z, scale * hi[k].w);
            *reinterpret_cast<uint4 *>(dq + w.r * a.dq_row_stride + w.v * 8) = o;
        }
    }
}

typedef void (*aux_kernel_t)(const Args);

aux_kernel_t pre_kernel(const fa_params *p)
{
    switch (p->dtype) {
    case FA_FLOAT16: return bwd_pre_kernel<__half>;
    case FA_BFLOAT16: return bwd_pre_kernel<__nv_bfloat16>;
    default: return nullptr;
    }
}

aux_kernel_t post_kernel(const fa_params *p)
{
    switch (p->dtype) {
    case FA_FLOAT16: return bwd_post_kernel<__half>;
    case FA_BFLOAT16: return bwd_post_kernel<__nv_bfloat16>;
    default: return nullptr;
    }
}

/* The kernels' shape assumptions; backward.c has checked them, this keeps a bad call from
 * reaching out of bounds. */
bool args_ok(const fa_params *p, const fa_grad_params *g, const fa_bwd_workspace *ws)
{
    if (p == nullptr || g == nullptr || ws == nullptr || ws->dq_accum == nullptr ||
        ws->delta == nullptr)
        return false;
    if (fa_head_dim_padded(p->head_dim) == 0)
        return false;
    if (p->batch < 0 || p->heads_q < 0 || p->seqlen_q < 0)
        return false;
    return ws->dq_lock == nullptr || ws->block_m > 0;
}

Args make_args(const fa_params *p, const fa_grad_params *g, const fa_bwd_workspace *ws)
{
    Args a;
    a.out = p->out;
    a.dout = g->dout;
    a.dq = g->dq;
    a.lse = p->lse;
    a.sinks = p->sinks;
    a.delta = ws->delta;
    a.dq_accum = ws->dq_accum;
    a.dsink_part = ws->dsink_part;
    a.dsinks = g->dsinks;
    a.dq_lock = ws->dq_lock;
    a.layout = fa_seq_layout_of(p);
    FA_COPY_STRIDES(a, p, o);
    FA_COPY_STRIDES(a, g, do);
    FA_COPY_STRIDES(a, g, dq);
    a.batch = p->batch;
    a.seqlen_q = p->seqlen_q;
    a.seqlen_k = p->seqlen_k;
    a.heads_q = p->heads_q;
    a.head_dim = p->head_dim;
    a.block_m = ws->block_m;
    a.softmax_scale = p->softmax_scale;
    return a;
}

cudaError_t launch(aux_kernel_t kernel, const fa_params *p, const fa_grad_params *g,
                   const fa_bwd_workspace *ws, const fa_launch *cfg, cudaStream_t stream)
{
    if (cfg == nullptr || !args_ok(p, g, ws))
        return cudaErrorInvalidValue;
    if (kernel == nullptr)
        return cudaErrorInvalidDeviceFunction;
    /* The thread mapping strides by kThreads: any other block would skip or repeat items. */
    if (cfg->block[0] != kThreads || cfg->block[1] != 1 || cfg->block[2] != 1)
        return cudaErrorInvalidConfiguration;
    const dim3 grid(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
    const dim3 block(cfg->block[0], cfg->block[1], cfg->block[2]);
    kernel<<<grid, block, cfg->smem_bytes, stream>>>(make_args(p, g, ws));
    return cudaGetLastError();
}

} /* namespace fa_bwd_aux */

extern "C" {

const void *fa_bwd_pre_kernel_fn(const fa_params *p)
{
    if (p == NULL)
        return NULL;
    return reinterpret_cast<const void *>(fa_bwd_aux::pre_kernel(p));
}

cudaError_t fa_bwd_pre_launch(const fa_params *p, const fa_grad_params *g,
                              const fa_bwd_workspace *ws, const fa_launch *cfg,
                              cudaStream_t stream)
{
    if (p == NULL)
        return cudaErrorInvalidValue;
    return fa_bwd_aux::launch(fa_bwd_aux::pre_kernel(p), p, g, ws, cfg, stream);
}

const void *fa_bwd_post_kernel_fn(const fa_params *p)
{
    if (p == NULL)
        return NULL;
    return reinterpret_cast<const void *>(fa_bwd_aux::post_kernel(p));
}

cudaError_t fa_bwd_post_launch(const fa_params *p, const fa_grad_params *g,
                               const fa_bwd_workspace *ws, const fa_launch *cfg,
                               cudaStream_t stream)
{
    if (p == NULL)
        return cudaErrorInvalidValue;
    return fa_bwd_aux::launch(fa_bwd_aux::post_kernel(p), p, g, ws, cfg, stream);
}

} /* extern "C" */
