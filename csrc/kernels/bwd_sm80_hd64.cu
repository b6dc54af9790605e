/*
 * bwd_sm80_hd64.cu -- the head_dim 64 instances of the sm80 backward main kernel
 * (sm80_bwd_kernel.cuh), a translation unit of their own so that head dims compile in parallel.
 */
#include "sm80_bwd_kernel.cuh"

FA_SM80_BWD_DEFINE_HEAD_DIM(64)
