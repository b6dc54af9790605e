/*
 * launch_contract.h -- the thread layout every flashattn_c GPU kernel is written for.
 *
 * 384 threads = 12 warps = 3 warpgroups of 4 warps. On Hopper, warpgroup 0 produces
 * (TMA loads) and warpgroups 1-2 consume (wgmma + softmax), 64 query rows each (the sm90
 * forward also has a shape where all three consume, built only in dev/ so far). The sm80
 * family uses the same 384 threads as 12 mma.sync warps. The host refuses to launch any
 * other block shape (launch.c), and the smoke test reads these numbers back.
 */
#ifndef FA_LAUNCH_CONTRACT_H
#define FA_LAUNCH_CONTRACT_H

#define FA_WARP_SIZE 32
#define FA_WARPS_PER_WARPGROUP 4
#define FA_NUM_WARPGROUPS 3
#define FA_NUM_WARPS_PER_BLOCK 12
#define FA_THREADS_PER_BLOCK 384
#define FA_NUM_PRODUCER_WARPGROUPS 1
#define FA_NUM_CONSUMER_WARPGROUPS 2

#if defined(__cplusplus)
#define FA_STATIC_ASSERT(c, msg) static_assert(c, msg)
#else
#define FA_STATIC_ASSERT(c, msg) _Static_assert(c, msg)
#endif

FA_STATIC_ASSERT(FA_NUM_WARPS_PER_BLOCK * FA_WARP_SIZE == FA_THREADS_PER_BLOCK,
                 "12 warps of 32 threads make the 384-thread block");
FA_STATIC_ASSERT(FA_NUM_WARPGROUPS * FA_WARPS_PER_WARPGROUP == FA_NUM_WARPS_PER_BLOCK,
                 "3 warpgroups of 4 warps make the 12 warps");
FA_STATIC_ASSERT(FA_NUM_PRODUCER_WARPGROUPS + FA_NUM_CONSUMER_WARPGROUPS == FA_NUM_WARPGROUPS,
                 "1 producer + 2 consumer warpgroups");
FA_STATIC_ASSERT(FA_THREADS_PER_BLOCK == 384, "the launch contract is 384 threads");

#endif /* FA_LAUNCH_CONTRACT_H */
