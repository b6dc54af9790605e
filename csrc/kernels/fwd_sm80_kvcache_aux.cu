/*
 * fwd_sm80_kvcache_aux.cu -- the KV-cache op's append (launch 1) and combine (launch 3)
 * around the split-KV decode kernel (kernels.h states the three launches; fwd_sm80_decode.cu).
 * Plain CUDA, no tensor cores: built with the sm80 family, runs on each of its targets.
 *
 * fa_append   grid (ceil(seqlen_new / R), heads_kv, batch), R = FA_APPEND_ROWS = 64, block 384,
 *             no shared memory. CTA (x, hk, b) copies rows i in [x R, min(x R + R, seqlen_new))
 *             of k_new[b, i, hk, :] and v_new[b, i, hk, :] to key start_b + i of entry b's
 *             cache, start_b = cache_seqlens[b] (or cache_seqlen), through fa_k_row_offset
 *             (dense, kv_batch_idx, or paged with any page size). A row is head_dim / 8
 *             pieces of 16 bytes; the CTA's (tensor, row, piece) items form one flat list and
 *             thread t takes items t, t + 384, ... (at most 11), all loads first, then all
 *             stores. Bytes are copied as they are: the kernel serves fp16 and bf16 alike.
 *             With cache_seqlens, thread 0 of CTA (0, 0, b) writes seqused[b] = cache_seqlens[b]
 *             + seqlen_new, the entry's key count the decode kernel reads as seqused_k.
 *
 * fa_combine  grid (ceil(seqlen_q * heads_q / C), batch), C = fa_combine_rows(head_dim, n) =
 *             384 / (head_dim / 4 * T), block 384, no shared memory. CTA (x, b) owns the rows
 *             f in [x C, x C + C) of entry b, f = h * seqlen_q + i (the order of the partials, so
 *             the CTA's rows are contiguous in each split's o_partial). With n splits, per row:
 *               top = max(max_s lse_s, sink),  total = sum_s e^(lse_s - top) + e^(sink - top)
 *               lse = top + log(total),          out = sum_s e^(lse_s - lse) o_s
 *             (sink = -inf without sinks; score.h's fa_exp_below is exact at x == top). A row
 *             no split saw has every lse_s = -inf: out 0, lse -inf, or the sink exactly.
 *             Item (row, 4 columns) belongs to T = fa_combine_threads_per_item(hd, n) adjacent
 *             threads; each runs the sum online (running max, rescaled sum and accumulator)
 *             over every T-th batch of 16 splits, all loads of a batch (lse_s, a broadcast
 *             within the row, and a float4 of o_s) issued before any is used, and the T
 *             partial sums meet through warp shuffles: a call costs at most two round trips to
 *             L2 (where the decode launch has just written the partials) up to 128 splits (64
 *             at head_dim 256).
 *             Nothing is staged in shared memory. out in q's dtype and strides (8-byte stores),
 *             and the row's lse (batch, heads_q, seqlen_q) from the item of its first 4
 *             columns when p->lse is set. Where this build carries code for the GPU's own
 *             architecture, sm_90 or later (fa_sass_has_griddepcontrol), the kernel starts
 *             as a programmatic dependent of the decode launch and waits for its memory
 *             (griddepcontrol.wait) before the first load; elsewhere (older GPUs, and a newer one running the
 *             JIT-compiled PTX, which has no griddepcontrol) it starts after the decode
 *             launch as usual.
 *
 * Element offsets are int64 throughout (strides may pass 2^31).
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
#include "sm80_ptx.cuh"

namespace fa_kvcache_aux {

constexpr int kThreads = FA_THREADS_PER_BLOCK;
constexpr int kMaxHeadDim = 256;
constexpr int kAppendRows = FA_APPEND_ROWS;
constexpr int kAppendItems = (2 * kAppendRows * (kMaxHeadDim / 8) + kThreads - 1) / kThreads;

/* ------------------------------------------------------------------------------------------ */
/* Append                                                                                      */

struct AppendArgs {
    const void *k_new, *v_new;
    void *k, *v;                 /* the caches */
    const int32_t *cache_seqlens; /* NULL: cache_seqlen for every entry */
    int32_t *seqused;             /* NULL: not written */
    int64_t kn_batch_stride, kn_row_stride, kn_head_stride;
    int64_t vn_batch_stride, vn_row_stride, vn_head_stride;
    int64_t k_batch_stride, k_row_stride, k_head_stride;
    int64_t v_batch_stride, v_row_stride, v_head_stride;
    fa_seq_layout seq; /* the caches' addressing; seqused_k NULL (this kernel writes it) */
    int seqlen_new, cache_seqlen, head_dim;
};

__global__ void __launch_bounds__(kThreads) append_kernel(const AppendArgs a)
{
    const int x = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x;
    const int start = a.cache_seqlens != nullptr ? a.cache_seqlens[b] : a.cache_seqlen;
    if (a.seqused != nullptr && a.cache_seqlens != nullptr && x == 0 && hk == 0 && tid == 0)
        a.seqused[b] = start + a.seqlen_new;

    const int i0 = x * kAppendRows;
    const int rows = min(kAppendRows, a.seqlen_new - i0);
    if (rows <= 0)
        return;
    const fa_seqlen e = fa_seqlen_at(&a.seq, b);
    const int nvec = a.head_dim >> 3;
    const int per_tensor = rows * nvec;

    /* item = tensor * per_tensor + row * nvec + piece */
    uint4 val[kAppendItems];
#pragma unroll
    for (int k = 0; k < kAppendItems; ++k) {
        const int it = tid + k * kThreads;
        if (it < 2 * per_tensor) {
            const bool is_v = it >= per_tensor;
            const int rem = is_v ? it - per_tensor : it;
            const int r = rem / nvec, pc = rem - r * nvec;
            const uint16_t *src = static_cast<const uint16_t *>(is_v ? a.v_new : a.k_new) +
                                  (int64_t)b * (is_v ? a.vn_batch_stride : a.kn_batch_stride) +
                                  (int64_t)(i0 + r) * (is_v ? a.vn_row_stride : a.kn_row_stride) +
                                  (int64_t)hk * (is_v ? a.vn_head_stride : a.kn_head_stride) + pc * 8;
            val[k] = __ldg(reinterpret_cast<const uint4 *>(src));
        }
    }
#pragma unroll
    for (int k = 0; k < kAppendItems; ++k) {
        const int it = tid + k * kThreads;
        if (it < 2 * per_tensor) {
            const bool is_v = it >= per_tensor;
            const int rem = is_v ? it - per_tensor : it;
            const int r = rem / nvec, pc = rem - r * nvec;
            const int64_t row = is_v ? fa_k_row_offset(&a.seq, &e, b, start + i0 + r,
                                                       a.v_batch_stride, a.v_row_stride)
                                     : fa_k_row_offset(&a.seq, &e, b, start + i0 + r,
                                                       a.k_batch_stride, a.k_row_stride);
            uint16_t *dst = static_cast<uint16_t *>(is_v ? a.v : a.k) + row +
                            (int64_t)hk * (is_v ? a.v_head_stride : a.k_head_stride) + pc * 8;
            *reinterpret_cast<uint4 *>(dst) = val[k];
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Combine                                                                                     */

struct CombineArgs {
    const float *o_partial, *lse_partial;
    void *out;
    float *lse;         /* NULL: not written */
    const float *sinks; /* NULL, or one logit per q head */
    int64_t o_batch_stride, o_row_stride, o_head_stride;
    fa_seq_layout seq;
    int num_splits, batch, heads_q, head_dim;
    int rows;             /* of a CTA: fa_combine_rows(head_dim, num_splits), the plan's block_m */
    int threads_per_item; /* fa_combine_threads_per_item(head_dim, num_splits): 1, 2, 4, 8 */
};

template <bool BF16>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi)
{
    uint32_t w;
    if constexpr (BF16) {
        const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        memcpy(&w, &h, sizeof(w));
    } else {
        const __half2 h = __floats2half2_rn(lo, hi);
        memcpy(&w, &h, sizeof(w));
    }
    return w;
}

/* Splits whose loads one thread has in flight at once. */
constexpr int kSplitBatch = 16;

/* The running (top, sum, acc) of another thread of the item, `lane_mask` lanes away, merged
   into this thread's: both sums rescaled to the larger top. */
__device__ __forceinline__ void merge_partner(float &top, float &sum, float4 &acc, int lane_mask)
{
    const float ot = __shfl_xor_sync(0xffffffffu, top, lane_mask);
    const float os = __shfl_xor_sync(0xffffffffu, sum, lane_mask);
    float4 oa;
    oa.x = __shfl_xor_sync(0xffffffffu, acc.x, lane_mask);
    oa.y = __shfl_xor_sync(0xffffffffu, acc.y, lane_mask);
    oa.z = __shfl_xor_sync(0xffffffffu, acc.z, lane_mask);
    oa.w = __shfl_xor_sync(0xffffffffu, acc.w, lane_mask);
    const float mx = fmaxf(top, ot);
    const float mine = fa_exp_below(top, mx), theirs = fa_exp_below(ot, mx);
    sum = sum * mine + os * theirs;
    acc.x = acc.x * mine + oa.x * theirs;
    acc.y = acc.y * mine + oa.y * theirs;
    acc.z = acc.z * mine + oa.z * theirs;
    acc.w = acc.w * mine + oa.w * theirs;
    top = mx;
}

template <bool BF16>
__global__ void __launch_bounds__(kThreads) combine_kernel(const CombineArgs a)
{
    const int x = blockIdx.x, b = blockIdx.y;
    const int seqlen_q = a.seq.seqlen_q;
    const int quads = a.head_dim >> 2;
    const int tpi = a.threads_per_item, part = threadIdx.x % tpi, item = threadIdx.x / tpi;
    const int r = item / quads, pc = item - r * quads;
    const int f = x * a.rows + r, h = f / seqlen_q, i = f - h * seqlen_q;
    const fa_seqlen e = fa_seqlen_at(&a.seq, b);
    /* Past the CTA's rows, the entry's heads, or a shorter entry's query rows: no item. Such
       threads still take part in the shuffles below (an item's threads agree on it). */
    const bool real = r < a.rows && f < a.heads_q * seqlen_q && i < e.len_q;
    const int ns = real ? a.num_splits : 0;
    const int64_t split_stride = (int64_t)a.batch * a.heads_q * seqlen_q; /* rows per split */
    const int64_t row = (int64_t)b * a.heads_q * seqlen_q + f;            /* in split 0 */
    const int64_t o_step = split_stride * quads;                          /* float4s per split */
    const float *ls = a.lse_partial + row;
    const float4 *o = reinterpret_cast<const float4 *>(a.o_partial + row * a.head_dim) + pc;
    fa_sm80::griddepcontrol_wait();

    /* Online over this thread's batches of kSplitBatch splits (batches part, part + tpi, ...),
       all loads of a batch issued before any is used:
       top = running max of lse_s, sum = sum_s e^(lse_s - top), acc = sum_s e^(lse_s - top) o_s.
       A split that saw nothing has lse_s = -inf: weight 0 (its o_s is 0). */
    float top = -INFINITY, sum = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int s0 = part * kSplitBatch; s0 < ns; s0 += tpi * kSplitBatch) {
        float lb[kSplitBatch];
        float4 ob[kSplitBatch];
#pragma unroll
        for (int k = 0; k < kSplitBatch; ++k) {
            if (s0 + k < ns) {
                lb[k] = ls[(s0 + k) * split_stride];
                ob[k] = o[(s0 + k) * o_step];
            } else {
                lb[k] = -INFINITY;
                ob[k] = make_float4(0.f, 0.f, 0.f, 0.f);
            }
        }
        float mx = top;
#pragma unroll
        for (int k = 0; k < kSplitBatch; ++k)
            mx = fmaxf(mx, lb[k]);
        if (mx == -INFINITY)
            continue; /* nothing seen yet */
        const float corr = fa_exp_below(top, mx);
        sum *= corr;
        acc.x *= corr;
        acc.y *= corr;
        acc.z *= corr;
        acc.w *= corr;
#pragma unroll
        for (int k = 0; k < kSplitBatch; ++k) {
            const float w = fa_exp_below(lb[k], mx);
            sum += w;
            acc.x = fmaf(w, ob[k].x, acc.x);
            acc.y = fmaf(w, ob[k].y, acc.y);
            acc.z = fmaf(w, ob[k].z, acc.z);
            acc.w = fmaf(w, ob[k].w, acc.w);
        }
        top = mx;
    }
    for (int lane_mask = 1; lane_mask < tpi; lane_mask <<= 1)
        merge_partner(top, sum, acc, lane_mask);
    if (!real || part != 0)
        return;
    /* The sink joins the denominator: lse = max(top, sink) + log(total). */
    const float sink = fa_sink(a.sinks, h);
    const float t2 = fmaxf(top, sink);
    float lse = -INFINITY, scale = 0.f;
    if (t2 != -INFINITY) {
        const float keys = sum == 0.f ? 0.f : fa_exp_below(top, t2);
        const float total = sum * keys + fa_exp_below(sink, t2);
        lse = t2 + logf(total);
        scale = keys / total;
    }
    uint2 v;
    v.x = pack_pair<BF16>(acc.x * scale, acc.y * scale);
    v.y = pack_pair<BF16>(acc.z * scale, acc.w * scale);
    uint16_t *dst = static_cast<uint16_t *>(a.out) +
                    fa_q_row_offset(&e, b, i, a.o_batch_stride, a.o_row_stride) +
                    (int64_t)h * a.o_head_stride + pc * 4;
    *reinterpret_cast<uint2 *>(dst) = v;
    if (a.lse != nullptr && pc == 0)
        a.lse[fa_lse_index(&a.seq, &e, b, a.heads_q, h, i)] = lse;
}

typedef void (*combine_kernel_t)(const CombineArgs);

static combine_kernel_t combine_of(fa_dtype dtype)
{
    switch (dtype) {
    case FA_FLOAT16: return combine_kernel<false>;
    case FA_BFLOAT16: return combine_kernel<true>;
    default: return nullptr;
    }
}

static bool block_ok(const fa_launch *cfg)
{
    /* the item walks stride by 384 threads */
    return cfg->block[0] == kThreads && cfg->block[1] == 1 && cfg->block[2] == 1;
}

} /* namespace fa_kvcache_aux */

extern "C" {

const void *fa_append_kernel_fn(const fa_params *p)
{
    if (p == NULL || (p->dtype != FA_FLOAT16 && p->dtype != FA_BFLOAT16))
        return NULL;
    return reinterpret_cast<const void *>(fa_kvcache_aux::append_kernel);
}

cudaError_t fa_append_launch(const fa_params *p, const fa_kvcache_params *c, int32_t *seqused,
                             const fa_launch *cfg, cudaStream_t stream)
{
    using namespace fa_kvcache_aux;
    if (p == NULL || c == NULL || cfg == NULL || c->k_new == NULL || c->v_new == NULL ||
        fa_head_dim_padded(p->head_dim) == 0 || fa_append_kernel_fn(p) == NULL)
        return cudaErrorInvalidValue;
    if (!block_ok(cfg))
        return cudaErrorInvalidConfiguration;
    AppendArgs a;
    a.k_new = c->k_new;
    a.v_new = c->v_new;
    a.k = const_cast<void *>(p->k);
    a.v = const_cast<void *>(p->v);
    a.cache_seqlens = c->cache_seqlens;
    a.seqused = seqused;
    FA_COPY_STRIDES(a, c, kn);
    FA_COPY_STRIDES(a, c, vn);
    FA_COPY_STRIDES(a, p, k);
    FA_COPY_STRIDES(a, p, v);
    a.seq = fa_seq_layout_of(p);
    a.seq.seqused_k = NULL; /* the lengths are what this launch writes; it needs none */
    a.seqlen_new = c->seqlen_new;
    a.cache_seqlen = c->cache_seqlen;
    a.head_dim = p->head_dim;
    const dim3 grid(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
    const dim3 block(cfg->block[0], cfg->block[1], cfg->block[2]);
    append_kernel<<<grid, block, cfg->smem_bytes, stream>>>(a);
    return cudaGetLastError();
}

const void *fa_combine_kernel_fn(const fa_params *p)
{
    if (p == NULL)
        return NULL;
    return reinterpret_cast<const void *>(fa_kvcache_aux::combine_of(p->dtype));
}

cudaError_t fa_combine_launch(const fa_params *p, const fa_split_workspace *ws,
                              const fa_launch *cfg, cudaStream_t stream)
{
    using namespace fa_kvcache_aux;
    if (p == NULL || ws == NULL || cfg == NULL || ws->o_partial == NULL ||
        ws->lse_partial == NULL || ws->num_splits < 1 || fa_head_dim_padded(p->head_dim) == 0)
        return cudaErrorInvalidValue;
    const combine_kernel_t kernel = combine_of(p->dtype);
    if (kernel == nullptr)
        return cudaErrorInvalidDeviceFunction;
    if (!block_ok(cfg))
        return cudaErrorInvalidConfiguration;
    CombineArgs a;
    a.o_partial = ws->o_partial;
    a.lse_partial = ws->lse_partial;
    a.out = p->out;
    a.lse = p->lse;
    a.sinks = p->sinks;
    FA_COPY_STRIDES(a, p, o);
    a.seq = fa_seq_layout_of(p);
    a.num_splits = ws->num_splits;
    a.batch = p->batch;
    a.heads_q = p->heads_q;
    a.head_dim = p->head_dim;
    a.rows = cfg->block_m;
    a.threads_per_item = fa_combine_threads_per_item(p->head_dim, ws->num_splits);
    if (a.rows < 1 || a.rows > fa_combine_rows(p->head_dim, ws->num_splits))
        return cudaErrorInvalidConfiguration;
    cudaLaunchConfig_t launch;
    memset(&launch, 0, sizeof launch);
    launch.gridDim = dim3(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
    launch.blockDim = dim3(cfg->block[0], cfg->block[1], cfg->block[2]);
    launch.dynamicSmemBytes = cfg->smem_bytes;
    launch.stream = stream;
    /* Scheduled while the decode grid drains, where the kernel can wait for its memory. */
    cudaLaunchAttribute dependent;
    dependent.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    dependent.val.programmaticStreamSerializationAllowed = 1;
    if (fa_sass_has_griddepcontrol(cfg->arch_major, cfg->arch_minor)) {
        launch.attrs = &dependent;
        launch.numAttrs = 1;
    }
    return cudaLaunchKernelEx(&launch, kernel, a);
}

} /* extern "C" */
