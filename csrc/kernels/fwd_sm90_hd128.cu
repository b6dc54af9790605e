/*
 * fwd_sm90_hd128.cu -- the head_dim 128 instances of the sm90 forward (sm90_instances.def),
 * a translation unit of their own so that head dims compile in parallel.
 */
#include "sm90_fwd_launch.cuh"

FA_SM90_DEFINE_HEAD_DIM(128)
