/*
 * fwd_sm80_hd128.cu -- the head_dim 128 instances of the sm80 forward (sm80_instances.cuh),
 * a translation unit of their own so that head dims compile in parallel.
 */
#include "sm80_instances.cuh"

FA_SM80_DEFINE_HEAD_DIM(128)
