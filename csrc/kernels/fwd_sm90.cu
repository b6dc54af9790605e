/*
 * fwd_sm90.cu -- FlashAttention forward for Hopper (sm_90a): warp-specialised TMA + wgmma.
 *
 *   out[b, i, h, :] = softmax_j(hook(scale * q[b, i, h, :] . k[b, j, h/G, :])) v[b, j, h/G, :]
 *   q, out (batch, seqlen_q, heads_q, head_dim); k, v (batch, seqlen_k, heads_kv, head_dim);
 *   any element strides with unit head_dim stride; float16 or bfloat16; head_dim a multiple of
 *   8 up to 256 (run as 64, 128 or 256 with zero padding); lse float32 (batch, heads_q, seqlen_q).
 *   Instances per head dim: mask kind (none, causal, window: common/mask.h, sm90_mask.cuh) x
 *   softcap hook (common/score.h) x dtype; sinks are a runtime pointer read once per tile at the
 *   row end. Key blocks outside a tile's window (common/block_range.h) are never loaded.
 *
 * CTA = 384 threads = 3 warpgroups, persistent over 128-row query tiles (sm90_scheduler.cuh):
 *   warpgroup 0, producer: one thread issues every TMA load -- per tile the two 64-row halves
 *     of Q (one per consumer warpgroup, each with its own full/empty mbarrier pair), K and V
 *     blocks into a ring of FA_SM90_STAGES(head_dim) slots with full/empty mbarriers.
 *     It keeps 24 registers (setmaxnreg) so the consumers can hold 240.
 *   warpgroups 1 and 2, consumers: 64 query rows each. S = Q K^T by wgmma with both operands
 *     in shared memory (K-major, 128-byte swizzle); online softmax in registers; O += P V by
 *     wgmma with P in registers (the S accumulator fragment packed to 16 bit is the A fragment)
 *     and V read transposed (MN-major) straight from its row-major tile. Epilogue: stmatrix
 *     into a staging area, TMA store (sm90_epilogue.cuh). Where shared memory allows (head_dim
 *     64; head_dim 128 causal, and full over at most 1024 keys) O has a staging buffer of its
 *     own and each warpgroup frees its Q rows right after its last Q K^T, so the next tile's Q
 *     load overlaps this tile's tail; head_dim 256 stages O in the V ring instead, which also
 *     frees Q after the last Q K^T; only the next tile's first V load waits for the store to
 *     read the ring. Otherwise O is staged in the warpgroup's Q rows, freed once the store has
 *     read them.
 * Overlaps, chosen per head dim (the measured best, benches/NOTES.md; the variants that lost
 * were removed from this file after 170495f, and NOTES records what each measured):
 *   pingpong (head_dim 128): the consumer warpgroups take turns issuing their GEMMs (named
 *     barriers), so one's softmax runs under the other's GEMMs;
 *   S_next = Q K_{j-1}^T and O += P_j V_j issued together in one turn; the softmax of S_next
 *     follows while P_j V_j is in flight (every head dim);
 *   split softmax wait (head_dim 64, 128): keeps the softmax of S_next ahead of the wait for
 *     P_j V_j in the SASS (ptxas otherwise hoists that wait above the softmax);
 *   O staging (sm90_tiles.h) and O in the V ring (head_dim 256), described above;
 *   lazy rescaling (sm90_softmax.cuh): O rescaled only when a row max outgrows its reference
 *     by 2^8;
 *   per-warpgroup key range (causal without pingpong, 64-key blocks): each consumer warpgroup
 *     skips the key blocks above its own rows' diagonal;
 *   paired tiles (causal, two or more tiles per CTA): tiles run in pairs of equal work per CTA
 *     (sm90_scheduler.cuh).
 *
 * Files: sm90_fwd_config.cuh (arguments, shared-memory layout, per-head-dim choices),
 * sm90_pipeline.cuh (the K/V ring and its TMA loads), sm90_fwd_mainloop.cuh (a warpgroup's
 * key loop), sm90_fwd_kernel.cuh (roles, tile loop, store), sm90_epilogue.cuh, sm90_softmax.cuh,
 * sm90_mask.cuh, sm90_scheduler.cuh, sm90_tensor_map.h (host TMA maps); this file holds the
 * instances and the launcher.
 *
 * Build: nvcc -c -O3 -std=c++17 --use_fast_math -Xptxas -v -lineinfo -Xcompiler -fPIC \
 *          -gencode arch=compute_90a,code=sm_90a -I csrc csrc/kernels/fwd_sm90.cu
 */
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "kernels.h"
#include "sm90_fwd_kernel.cuh"
#include "sm90_tensor_map.h"
#include "sm90_tiles.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "fwd_sm90.cu uses wgmma and setmaxnreg: build it for sm_90a (-gencode arch=compute_90a,code=sm_90a)"
#endif

// ------------------------------------------------------------------------------------------ host

namespace {

using fa_sm90::Config;
using fa_sm90::KernelParams;
using fa_sm90_host::encode_map;
using fa_sm90_host::encode_tiled_fn;
using fa_sm90_host::EncodeTiledFn;

// Whether this file carries sm_90a SASS (the kernels are empty stubs for any other target).
constexpr bool built_for_sm90() {
#if defined(__CUDA_ARCH_LIST__)
    constexpr int archs[] = {__CUDA_ARCH_LIST__};
    for (int a : archs)
        if (a == 900) return true;
#endif
    return false;
}

// Calls f(Config<...>{}) for the instantiation that serves (head_dim, dtype, mask kind,
// softcap); returns false when there is none.
template <class F>
bool dispatch(const fa_params *p, F &&f) {
    const int hd = fa_sm90_head_dim_padded(p->head_dim);
    const int mask = fa_params_mask_kind(p);
    const bool softcap = p->softcap > 0.f;
    const bool bf16 = p->dtype == FA_BFLOAT16;
    if (hd == 0 || (p->dtype != FA_FLOAT16 && p->dtype != FA_BFLOAT16)) return false;
    // The block size fa_sm90_tile chose for this problem picks among a head dim's instances.
    const bool masked = mask != FA_MASK_NONE;
    const int block_n = FA_SM90_BLOCK_N(hd, masked, FA_SM90_SHORT_KEYS(hd, masked, p->seqlen_k));
#define FA_SM90_CASE(HD, MASK, SHORT, SOFTCAP, BF16)                                                  \
    if (hd == HD && mask == MASK && softcap == SOFTCAP && bf16 == BF16 &&                             \
        block_n == FA_SM90_BLOCK_N(HD, MASK != FA_MASK_NONE, SHORT)) {                                \
        f(Config<HD, FA_SM90_BLOCK_N(HD, MASK != FA_MASK_NONE, SHORT), MASK, SOFTCAP, BF16>{});       \
        return true;                                                                                  \
    }
#define FA_SM90_CASES(HD, MASK, SHORT)                                                                \
    FA_SM90_CASE(HD, MASK, SHORT, false, false) FA_SM90_CASE(HD, MASK, SHORT, false, true)            \
    FA_SM90_CASE(HD, MASK, SHORT, true, false) FA_SM90_CASE(HD, MASK, SHORT, true, true)
    FA_SM90_CASES(64, FA_MASK_NONE, false)
    FA_SM90_CASES(64, FA_MASK_CAUSAL, false)
    FA_SM90_CASES(64, FA_MASK_LOCAL, false)
    FA_SM90_CASES(128, FA_MASK_NONE, false)
#if FA_SM90_SHORT_SEQLEN_K > 0
    FA_SM90_CASES(128, FA_MASK_NONE, true)
#endif
    FA_SM90_CASES(128, FA_MASK_CAUSAL, false)
    FA_SM90_CASES(128, FA_MASK_LOCAL, false)
    FA_SM90_CASES(256, FA_MASK_NONE, false)
    FA_SM90_CASES(256, FA_MASK_CAUSAL, false)
    FA_SM90_CASES(256, FA_MASK_LOCAL, false)
#if FA_SM90_SHORT_SEQLEN_K_HD256_CAUSAL > 0
    FA_SM90_CASES(256, FA_MASK_CAUSAL, true)
    FA_SM90_CASES(256, FA_MASK_LOCAL, true)
#endif
#undef FA_SM90_CASES
#undef FA_SM90_CASE
    return false;
}

}  // namespace

extern "C" const void *fa_sm90_kernel_fn(const fa_params *p, const fa_tile *t) {
    (void)t;
    if (!built_for_sm90() || p == nullptr) return nullptr;
    const void *fn = nullptr;
    dispatch(p, [&](auto cfg) {
        using Cfg = decltype(cfg);
        fn = reinterpret_cast<const void *>(&fa_sm90::fwd_kernel<Cfg>);
    });
    return fn;
}

extern "C" cudaError_t fa_sm90_launch(const fa_params *p, const fa_launch *cfg, cudaStream_t stream) {
    if (!built_for_sm90() || p == nullptr || cfg == nullptr) return cudaErrorInvalidValue;
    EncodeTiledFn encode = encode_tiled_fn();
    if (encode == nullptr) return cudaErrorInvalidValue;

    cudaError_t status = cudaErrorInvalidValue;
    const bool found = dispatch(p, [&](auto cfg_tag) {
        using Cfg = decltype(cfg_tag);
        // The launch config must describe this instantiation (launch.c and sm90_tiles.h agree).
        if (cfg->block_n != Cfg::kBlockN || cfg->block_m != Cfg::kBlockM ||
            cfg->head_dim_padded != Cfg::kHeadDim || cfg->smem_bytes < Cfg::kSmemBytes)
            return;
        KernelParams prm;
        std::memset(&prm, 0, sizeof(prm));
        const CUtensorMapDataType dt = Cfg::kBf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
        // seqlen_k == 0 may come with NULL k/v and zero strides. No K/V box is issued then,
        // but the encoder wants a legal map: describe q's memory instead.
        const bool no_keys = p->seqlen_k == 0;
        const bool ok =
            encode_map(encode, &prm.tmap_q, dt, p->q, p->head_dim, p->seqlen_q, p->heads_q, p->batch,
                       p->q_row_stride, p->q_head_stride, p->q_batch_stride, 64) &&
            (no_keys
                 ? encode_map(encode, &prm.tmap_k, dt, p->q, p->head_dim, 1, p->heads_q, p->batch,
                              p->q_row_stride, p->q_head_stride, p->q_batch_stride, Cfg::kBlockN) &&
                       encode_map(encode, &prm.tmap_v, dt, p->q, p->head_dim, 1, p->heads_q, p->batch,
                                  p->q_row_stride, p->q_head_stride, p->q_batch_stride, Cfg::kBlockN)
                 : encode_map(encode, &prm.tmap_k, dt, p->k, p->head_dim, p->seqlen_k, p->heads_kv,
                              p->batch, p->k_row_stride, p->k_head_stride, p->k_batch_stride,
                              Cfg::kBlockN) &&
                       encode_map(encode, &prm.tmap_v, dt, p->v, p->head_dim, p->seqlen_k, p->heads_kv,
                                  p->batch, p->v_row_stride, p->v_head_stride, p->v_batch_stride,
                                  Cfg::kBlockN)) &&
            encode_map(encode, &prm.tmap_o, dt, p->out, p->head_dim, p->seqlen_q, p->heads_q, p->batch,
                       p->o_row_stride, p->o_head_stride, p->o_batch_stride, 64);
        if (!ok) return;
        prm.lse = p->lse;
        prm.score = fa_score_make(p->softmax_scale, p->softcap);
        prm.window_left = p->window_left;
        prm.window_right = p->causal ? 0 : p->window_right;
        prm.sinks = p->sinks;
        fa_sm90::SchedulerArgs &s = prm.sched;
        s.batch = p->batch;
        s.heads_q = p->heads_q;
        s.heads_kv = p->heads_kv;
        s.seqlen_q = p->seqlen_q;
        s.seqlen_k = p->seqlen_k;
        s.cu_seqlens_q = p->cu_seqlens_q;
        s.cu_seqlens_k = p->cu_seqlens_k;
        s.num_m_blocks = (p->seqlen_q + Cfg::kBlockM - 1) / Cfg::kBlockM;
        const int num_tiles = s.num_m_blocks * p->heads_q * p->batch;  // <= INT32_MAX - grid (launch.c)
        s.causal = Cfg::kCausal ? 1 : 0;
        // Pairs need up to 2 * grid more loop indices than tiles; past 32 bits (launch.c keeps
        // num_tiles + grid within them) the tiles go one by one instead.
        const int64_t grid_x = cfg->grid[0];
        const int64_t pairs = (int64_t)((s.num_m_blocks + 1) / 2) * p->heads_q * p->batch;
        const int64_t pair_iters = 2 * grid_x * ((pairs + grid_x - 1) / grid_x);
        s.pair_tiles = Cfg::kCausal && num_tiles >= 2 * grid_x &&
                       pair_iters <= (int64_t)INT32_MAX - grid_x;
        s.num_iters = s.pair_tiles ? (int)pair_iters : num_tiles;

        const dim3 grid(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
        const dim3 block(cfg->block[0], cfg->block[1], cfg->block[2]);
        fa_sm90::fwd_kernel<Cfg><<<grid, block, cfg->smem_bytes, stream>>>(prm);
        status = cudaGetLastError();
    });
    return found ? status : cudaErrorInvalidValue;
}

extern "C" int fa_sm90_archs(int *archs, int max) {
    int n = 0;
#if defined(__CUDA_ARCH_LIST__)
    constexpr int list[] = {__CUDA_ARCH_LIST__};
    for (int a : list)
        if (a == 900 && n < max && archs != nullptr) archs[n++] = a / 10;
#else
    (void)archs;
    (void)max;
#endif
    return n;
}
