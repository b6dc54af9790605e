/*
 * bwd_sm90.cu -- FlashAttention backward main kernel for Hopper (sm_90a): TMA + wgmma, 384
 * threads = one producer and two consumer warpgroups. The preprocess (delta, zeroed
 * dq_accum) and the dq conversion are bwd_sm80_aux.cu's; kernels.h has the contract of the
 * three launches.
 *
 *   grid = (ceil(seqlen_k / N), heads_kv, batch), block = 384, dynamic smem from
 *   sm90_bwd_tiles.h. CTA (n, hk, b) owns keys [N n, N n + N) of kv head hk (N = 128, 64 per
 *   consumer warpgroup; at head_dim 256 N = 64, shared), and walks every q head of its group
 *   and every query block of 64 rows that sees its keys (fa_block_range_cols); masks, score
 *   hook and lengths come from csrc/common/. Instantiated for head_dim_padded 64, 128 and 256
 *   x {fp16, bf16}; mask kind, softcap and determinism are runtime, as in the sm80 backward.
 *   Uniform and packed (cu_seqlens) batches: fa_sm90_bwd_unsupported (sm90_bwd_tiles.h)
 *   names what runs on the sm80 family's backward instead. Packed boxes read past their
 *   entry's rows and keys into the next entry's (finite: P = 0 there, as in the forward);
 *   dK and dV are stored row by row below len_k, and a query block that crosses its entry's
 *   end adds its dQ rows below len_q without TMA. Deterministic, the dQ warp adds each query
 *   block's dQ in key-block order (dq_turns.cuh).
 *
 * Design (FlashAttention-3's Hopper backward, in its plainest form): K and V stay in shared
 * memory and dK, dV in fp32 registers for the CTA's life; Q and dO stream through a two-slot
 * ring by TMA, with the rows' lse and delta beside them. Each consumer warpgroup computes its
 * keys' S^T and dP^T with wgmma (keys as the M dimension, so P^T and dS^T come out in the
 * A-fragment layout of dV += P^T dO and dK += dS^T Q), writes dS^T to shared memory, and
 * after a meeting of both warpgroups computes its half of dQ = dS K from it, staged in shared
 * memory for a third warp of the producer warpgroup, whose TMA reductions add it into
 * dq_accum. sm90_bwd_kernel.cuh has the step in detail.
 *
 * Build (as the project does):
 *   nvcc -c -O3 -std=c++17 --use_fast_math -Xptxas -v -lineinfo -Xcompiler -fPIC \
 *        -gencode arch=compute_90a,code=sm_90a -DFA_WITH_SM90 -I csrc csrc/kernels/bwd_sm90.cu
 */
#include <cuda_runtime.h>

#include "kernels.h"
#include "sm90_bwd_launch.cuh"
#include "sm90_bwd_tiles.h"
#include "sm90_fwd_launch.cuh"  // built_for_sm90

namespace fa_sm90 {

// Calls f(BwdConfig<...>{}) for the instance that serves p; false when there is none.
template <class F>
bool dispatch_bwd(const fa_params *p, const fa_grad_params *g, F &&f) {
    fa_tile t;
    if (fa_sm90_bwd_tile(p, g, &t) != 0) return false;
    const bool bf16 = p->dtype == FA_BFLOAT16;
    if (t.head_dim_padded == 64) {
        if (bf16) f(BwdConfig<64, true>{});
        else f(BwdConfig<64, false>{});
    } else if (t.head_dim_padded == 128) {
        if (bf16) f(BwdConfig<128, true>{});
        else f(BwdConfig<128, false>{});
    } else {
        if (bf16) f(BwdConfig<256, true>{});
        else f(BwdConfig<256, false>{});
    }
    return true;
}

}  // namespace fa_sm90

extern "C" {

const void *fa_sm90_bwd_kernel_fn(const fa_params *p, const fa_grad_params *g, const fa_tile *t) {
    (void)t;
    const void *fn = nullptr;
    if (p != nullptr && fa_sm90::built_for_sm90())
        fa_sm90::dispatch_bwd(p, g, [&](auto cfg) {
            fn = reinterpret_cast<const void *>(&fa_sm90::bwd_kernel<decltype(cfg)>);
        });
    return fn;
}

cudaError_t fa_sm90_bwd_launch(const fa_params *p, const fa_grad_params *g, const fa_bwd_workspace *ws,
                               const fa_launch *cfg, cudaStream_t stream) {
    fa_sm90_host::EncodeTiledFn encode = fa_sm90_host::encode_tiled_fn();
    if (!fa_sm90::built_for_sm90() || encode == nullptr) return cudaErrorInvalidValue;
    cudaError_t status = cudaErrorInvalidDeviceFunction;
    fa_sm90::dispatch_bwd(p, g, [&](auto tag) {
        status = fa_sm90::launch_bwd<decltype(tag)>(p, g, ws, cfg, encode, stream);
    });
    return status;
}

}  // extern "C"
