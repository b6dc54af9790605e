/*
 * fwd_sm80.cu -- FlashAttention forward for Ampere and newer (sm_80, sm_86, sm_89; also runs
 * on sm_90): mma.sync m16n8k16 tensor cores, ldmatrix, a cp.async K/V ring (mbarriers or
 * __syncthreads), online softmax in base 2, 384 threads = 12 warps per CTA.
 *
 *   q, out (batch, seqlen_q, heads_q, head_dim), k, v (batch, seqlen_k, heads_kv, head_dim),
 *   any element strides with unit head_dim stride; fp16 or bf16 in, fp32 accumulation;
 *   optional lse (batch, heads_q, seqlen_q) fp32, natural log; optional sinks (heads_q) fp32.
 *   Masks, score hook and row finalisation come from csrc/common/ (mask.h: a key is visible
 *   when lo <= key <= hi of its row's span, bottom-right aligned; block_range.h: the key
 *   blocks a tile visits and which of them need the mask; score.h: t = raw or
 *   tanh(raw * softcap_pre), softmax exp2(t * scale_log2 - m * scale_log2), and the sink in
 *   the denominator).
 *   grid = (ceil(seqlen_q / BLOCK_M), heads_q, batch), block = 384, dynamic smem from
 *   sm80_tiles.h. Instantiated for head_dim_padded 64, 128, 256 x {fp16, bf16} x mask kind
 *   {none, causal, local (window)} x {softcap, not}; sinks are a runtime pointer. A head_dim
 *   below the padded size is zero-filled on load and only its columns are stored.
 *
 * Build (as the project does):
 *   nvcc -c -O3 -std=c++17 --use_fast_math -Xptxas -v -lineinfo -Xcompiler -fPIC \
 *     -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
 *     -gencode arch=compute_80,code=compute_80 -I csrc csrc/kernels/fwd_sm80_hd128.cu -o fwd_sm80_hd128.o
 *   (and likewise fwd_sm80.cu, fwd_sm80_hd64.cu, fwd_sm80_hd256.cu)
 *
 * One CTA computes BLOCK_M query rows of one (batch, head); each warp owns 16 rows (and, for
 * head_dim 256, one half of the head_dim columns). Q goes to registers once (A fragments);
 * K/V blocks of BLOCK_N keys stream through a ring of smem stages (sm80_load.cuh); within a
 * block, S = Q K^T, the score hook, mask, online softmax and O += P V run per SUB_N keys
 * (sm80_softmax.cuh), with P staying in registers as the A operand; the epilogue finalises
 * the rows and stores (sm80_epilogue.cuh). Key blocks are walked from the last visible one
 * (n_max - 1) down to the first (n_min; above 0 with a left window), so the blocks that need a
 * mask sit at the two ends of the walk: the causal or right-window diagonal and the ragged end
 * of seqlen_k first, the left-window edge last; every block between runs unmasked. In masked
 * blocks a warp skips the sub-blocks none of its rows sees, and a warp whose rows all lie past
 * seqlen_q computes nothing. Blocks outside [n_min, n_max) are never loaded; a tile whose
 * rows see no key stores zeros and the empty-row LSE (-inf, or the sink) and leaves.
 *
 * Parts: sm80_config.cuh (instance constants, Args, index helpers), sm80_load.cuh (Q and the
 * K/V ring), sm80_softmax.cuh (per sub-block maths), sm80_epilogue.cuh (stores),
 * sm80_kernel.cuh (the kernel's skeleton: prologue, the walk over key blocks, key_block for
 * one of them), sm80_instances.cuh (the instance table, compiled per head dim in
 * fwd_sm80_hd<D>.cu); here the kernel arguments and the host entry points.
 */
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "../common/block_range.h"
#include "../common/mask.h"
#include "../common/score.h"
#include "../common/seqlen.h"
#include "../launch_contract.h"
#include "kernels.h"
#include "sm80_config.cuh"
#include "sm80_tiles.h"

#ifndef __CUDA_ARCH_LIST__
#error "fwd_sm80.cu needs nvcc >= 11.5 (__CUDA_ARCH_LIST__ names the compiled targets)"
#endif

namespace fa_sm80 {

typedef void (*fwd_kernel_t)(const Args);

} /* namespace fa_sm80 */

/* One per head dim, defined in fwd_sm80_hd<D>.cu (sm80_instances.cuh). */
extern "C" const void *fa_sm80_hd64_kernel(const fa_params *p);
extern "C" const void *fa_sm80_hd128_kernel(const fa_params *p);
extern "C" const void *fa_sm80_hd256_kernel(const fa_params *p);

namespace fa_sm80 {

fwd_kernel_t select_kernel(const fa_params *p, int head_dim_padded)
{
    const void *fn = nullptr;
    switch (head_dim_padded) {
    case 64: fn = fa_sm80_hd64_kernel(p); break;
    case 128: fn = fa_sm80_hd128_kernel(p); break;
    case 256: fn = fa_sm80_hd256_kernel(p); break;
    }
    return reinterpret_cast<fwd_kernel_t>(const_cast<void *>(fn));
}

/* The kernel's arguments from the (resolved) public params. */
Args make_args(const fa_params *p)
{
    Args a;
    a.q = p->q;
    a.k = p->k;
    a.v = p->v;
    a.out = p->out;
    a.lse = p->lse;
    a.sinks = p->sinks;
    FA_COPY_STRIDES(a, p, q);
    FA_COPY_STRIDES(a, p, k);
    FA_COPY_STRIDES(a, p, v);
    FA_COPY_STRIDES(a, p, o);
    a.seqlen_q = p->seqlen_q;
    a.seqlen_k = p->seqlen_k;
    a.heads_q = p->heads_q;
    a.head_dim = p->head_dim;
    a.heads_per_kv = p->heads_kv > 0 ? p->heads_q / p->heads_kv : 1;
    const fa_mask mask =
        fa_mask_make(p->seqlen_q, p->seqlen_k, p->window_left, p->window_right, p->causal);
    a.window_left = mask.left;
    a.window_right = mask.right;
    a.score = fa_score_make(p->softmax_scale, p->softcap);
    a.layout = fa_seq_layout_of(p);
    return a;
}

} /* namespace fa_sm80 */

extern "C" {

const void *fa_sm80_kernel_fn(const fa_params *p, const fa_tile *t)
{
    if (p == NULL || t == NULL)
        return NULL;
    return reinterpret_cast<const void *>(fa_sm80::select_kernel(p, t->head_dim_padded));
}

cudaError_t fa_sm80_launch(const fa_params *p, const fa_launch *cfg, cudaStream_t stream)
{
    const fa_sm80::fwd_kernel_t kernel = fa_sm80::select_kernel(p, cfg->head_dim_padded);
    if (kernel == nullptr)
        return cudaErrorInvalidDeviceFunction;
    const dim3 grid(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
    const dim3 block(cfg->block[0], cfg->block[1], cfg->block[2]);
    kernel<<<grid, block, cfg->smem_bytes, stream>>>(fa_sm80::make_args(p));
    return cudaGetLastError();
}

int fa_sm80_archs(int *archs, int max)
{
    static const int compiled[] = {__CUDA_ARCH_LIST__};
    int n = 0;
    for (unsigned i = 0; i < sizeof(compiled) / sizeof(compiled[0]); ++i) {
        const int cc = compiled[i] / 10;
        int seen = 0;
        for (int j = 0; j < n; ++j)
            seen |= archs[j] == cc;
        if (!seen && n < max && archs != NULL)
            archs[n++] = cc;
    }
    return n;
}

} /* extern "C" */
