/*
 * sm80_instances.cuh -- the sm80 forward's instance table for one head dim: dtype x mask kind
 * x softcap x sequence layout (uniform, or any of seqlen.h; sinks are a runtime pointer, read
 * only by the epilogue).
 *
 * fwd_sm80_hd<D>.cu expands FA_SM80_DEFINE_HEAD_DIM(D): one translation unit per head dim, so
 * they compile in parallel; fwd_sm80.cu routes by head dim and launches.
 */
#ifndef FA_SM80_INSTANCES_CUH
#define FA_SM80_INSTANCES_CUH

#include "kernels.h"
#include "sm80_config.cuh"
#include "sm80_kernel.cuh"

#ifndef __CUDA_ARCH_LIST__
#error "the sm80 forward needs nvcc >= 11.5 (__CUDA_ARCH_LIST__ names the compiled targets)"
#endif

namespace fa_sm80 {

typedef void (*fwd_kernel_t)(const Args);

/* The instance table: head_dim_padded x dtype x mask kind x softcap x sequence layout.
   Sinks are a runtime pointer, read only by the epilogue. */
template <int HDP, bool BF16, fa_mask_kind MASK, bool SEQ>
fwd_kernel_t pick_softcap(bool softcap)
{
    return softcap ? fwd_sm80_kernel<HDP, BF16, MASK, true, SEQ>
                   : fwd_sm80_kernel<HDP, BF16, MASK, false, SEQ>;
}

template <int HDP, bool BF16, bool SEQ>
fwd_kernel_t pick_mask(fa_mask_kind mask, bool softcap)
{
    switch (mask) {
    case FA_MASK_NONE: return pick_softcap<HDP, BF16, FA_MASK_NONE, SEQ>(softcap);
    case FA_MASK_CAUSAL: return pick_softcap<HDP, BF16, FA_MASK_CAUSAL, SEQ>(softcap);
    case FA_MASK_LOCAL: return pick_softcap<HDP, BF16, FA_MASK_LOCAL, SEQ>(softcap);
    }
    return nullptr;
}

template <int HDP, bool SEQ>
fwd_kernel_t pick_dtype(fa_dtype dtype, fa_mask_kind mask, bool softcap)
{
    switch (dtype) {
    case FA_FLOAT16: return pick_mask<HDP, false, SEQ>(mask, softcap);
    case FA_BFLOAT16: return pick_mask<HDP, true, SEQ>(mask, softcap);
    default: return nullptr;
    }
}

/* The SEQ instances serve any layout array of seqlen.h (cu_seqlens, seqused_k, kv_batch_idx,
   block_table); without one, the uniform instances run, whose code is that of the uniform
   batch alone (layout_of): the per-entry bookkeeping in shared memory cost them 1 to 3% on
   an H200 (hd 64/128/256, 16k tokens). */
template <int HDP>
fwd_kernel_t pick_layout(const fa_params *p)
{
    const bool seq = p->cu_seqlens_q != NULL || p->cu_seqlens_k != NULL ||
                     p->seqused_k != NULL || p->kv_batch_idx != NULL || p->block_table != NULL;
    const fa_mask_kind mask = fa_params_mask_kind(p);
    const bool softcap = p->softcap > 0.0f;
    return seq ? pick_dtype<HDP, true>(p->dtype, mask, softcap)
               : pick_dtype<HDP, false>(p->dtype, mask, softcap);
}

} /* namespace fa_sm80 */

/* The kernel of head dim HD that serves p, or NULL. */
#define FA_SM80_DEFINE_HEAD_DIM(HD)                                                              \
    extern "C" const void *fa_sm80_hd##HD##_kernel(const fa_params *p)                          \
    {                                                                                            \
        return reinterpret_cast<const void *>(fa_sm80::pick_layout<HD>(p));                      \
    }

#endif /* FA_SM80_INSTANCES_CUH */
