/*
 * sm90_fwd_launch.cuh -- host side of one head dim's sm90 forward instances: find the
 * instance of sm90_instances.def that serves a problem, fill its KernelParams (tensor maps over
 * the sequence layout's extents, score hook, window, sinks, scheduler; the KV-cache op's
 * appended keys) and launch it.
 *
 * fwd_sm90_hd<D>.cu expands FA_SM90_DEFINE_HEAD_DIM(D) into its two C entry points;
 * fwd_sm90.cu routes the family's calls (kernels.h) to them by head dim. launch.c has checked
 * the launch (block, shared memory, grid, arch) before any of this runs.
 */
#ifndef FA_SM90_FWD_LAUNCH_CUH
#define FA_SM90_FWD_LAUNCH_CUH

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "kernels.h"
#include "sm90_fwd_kernel.cuh"
#include "sm90_tensor_map.h"
#include "sm90_tiles.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "the sm90 forward uses wgmma and setmaxnreg: build it for sm_90a (-gencode arch=compute_90a,code=sm_90a)"
#endif

namespace fa_sm90 {

// Whether this translation unit carries sm_90a SASS (the kernels are empty stubs otherwise).
constexpr bool built_for_sm90() {
#if defined(__CUDA_ARCH_LIST__)
    constexpr int archs[] = {__CUDA_ARCH_LIST__};
    for (int a : archs)
        if (a == 900) return true;
#endif
    return false;
}

// Calls f(Config<...>{}) for the instance of head dim kHd that serves p (mask kind, short
// keys, softcap, dtype); false when sm90_instances.def has none. The library's instances have
// FA_NUM_CONSUMER_WARPGROUPS consumers; dev/fwd_sm90_consumers.cu instantiates three.
template <int kHd, int kConsumers = FA_NUM_CONSUMER_WARPGROUPS, class F>
bool dispatch_head_dim(const fa_params *p, F &&f) {
    const int mask = fa_params_mask_kind(p);
    const bool short_keys = fa_sm90_short_keys(p, kHd, mask != FA_MASK_NONE) != 0;
    const bool softcap = p->softcap > 0.f;
    const bool bf16 = p->dtype == FA_BFLOAT16;
    if (p->dtype != FA_FLOAT16 && p->dtype != FA_BFLOAT16) return false;
#define FA_SM90_INSTANCE(HD, MASK, SHORT)                                                  \
    if constexpr (HD == kHd) {                                                             \
        if (mask == MASK && short_keys == (SHORT != 0)) {                                  \
            constexpr int kBlockN = FA_SM90_BLOCK_N(HD, MASK != FA_MASK_NONE, SHORT);      \
            if (softcap && bf16) f(Config<HD, kBlockN, MASK, true, true, kConsumers>{});   \
            if (softcap && !bf16) f(Config<HD, kBlockN, MASK, true, false, kConsumers>{}); \
            if (!softcap && bf16) f(Config<HD, kBlockN, MASK, false, true, kConsumers>{}); \
            if (!softcap && !bf16) f(Config<HD, kBlockN, MASK, false, false, kConsumers>{}); \
            return true;                                                                   \
        }                                                                                  \
    }
#include "sm90_instances.def"
#undef FA_SM90_INSTANCE
    return false;
}

// Rows and batches of a map (sm90_fwd_config.cuh lists them per layout; the kernel's
// coordinates, sm90_scheduler.cuh, address exactly these extents).
struct MapExtent {
    int rows, batches;
};

inline MapExtent q_map_extent(const fa_params *p) {
    return p->cu_seqlens_q ? MapExtent{p->total_q, 1} : MapExtent{p->seqlen_q, p->batch};
}

inline MapExtent kv_map_extent(const fa_params *p) {
    if (p->block_table) return MapExtent{p->page_size, p->kv_batches};
    if (p->cu_seqlens_k) return MapExtent{p->total_k, 1};
    return MapExtent{p->seqlen_k, p->kv_batch_idx ? p->kv_batches : p->batch};
}

// The appended keys' maps and copy (append: the KV-cache op's new keys, with p's k and v the
// dense caches, kernels.h's fa_sm90_launch_appending); false when a map cannot be encoded, or
// when the instance or the layout cannot take them (kvcache.c plans neither).
template <class Cfg>
bool set_appended_keys(const fa_params *p, const fa_kvcache_params *append, fa_sm90_host::EncodeTiledFn encode,
                       CUtensorMapDataType dt, KernelParams *prm) {
    using fa_sm90_host::encode_map;
    const fa_kvcache_params *c = append;
    if (!Cfg::kAppends || p->block_table || p->cu_seqlens_k || c->seqlen_new <= 0) return false;
    fa_seq_layout &seq = prm->sched.seq;
    seq.seqlen_new = c->seqlen_new;
    if (!seq.seqused_k) seq.seqlen_k = p->seqlen_k - c->seqlen_new;  // the cached keys (common/seqlen.h)
    CacheCopy &copy = prm->append;
    const void *src[2] = {c->k_new, c->v_new};
    const void *dst[2] = {p->k, p->v};
    const int64_t src_stride[2][3] = {{c->kn_batch_stride, c->kn_row_stride, c->kn_head_stride},
                                      {c->vn_batch_stride, c->vn_row_stride, c->vn_head_stride}};
    const int64_t dst_stride[2][3] = {{p->k_batch_stride, p->k_row_stride, p->k_head_stride},
                                      {p->v_batch_stride, p->v_row_stride, p->v_head_stride}};
    for (int t = 0; t < 2; ++t) {
        copy.src[t] = static_cast<const uint16_t *>(src[t]);
        copy.dst[t] = static_cast<uint16_t *>(const_cast<void *>(dst[t]));
        for (int d = 0; d < 3; ++d) {
            copy.src_stride[t][d] = src_stride[t][d];
            copy.dst_stride[t][d] = dst_stride[t][d];
        }
    }
    copy.rows = p->batch * c->seqlen_new;  // within an int (kvcache.c)
    copy.pieces = p->head_dim / 8;
    copy.heads_per_pass = FA_WARP_SIZE / copy.pieces;
    return encode_map(encode, &prm->tmap_k_new, dt, c->k_new, p->head_dim, c->seqlen_new, p->heads_kv, p->batch,
                      c->kn_row_stride, c->kn_head_stride, c->kn_batch_stride, Cfg::kBlockN) &&
           encode_map(encode, &prm->tmap_v_new, dt, c->v_new, p->head_dim, c->seqlen_new, p->heads_kv, p->batch,
                      c->vn_row_stride, c->vn_head_stride, c->vn_batch_stride, Cfg::kBlockN);
}

// The kernel's arguments for p (and append, NULL but for the KV-cache op's fused append:
// set_appended_keys); false when a tensor map cannot be encoded.
template <class Cfg>
bool make_kernel_params(const fa_params *p, const fa_kvcache_params *append, const fa_launch *cfg,
                        fa_sm90_host::EncodeTiledFn encode, KernelParams *prm) {
    using fa_sm90_host::encode_map;
    std::memset(prm, 0, sizeof(*prm));
    const CUtensorMapDataType dt = Cfg::kBf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    const MapExtent qx = q_map_extent(p), kvx = kv_map_extent(p);
    // seqlen_k == 0 (no entry has a key) may come with NULL k/v and zero strides. No K/V box is
    // issued then, but the encoder wants a legal map: describe q's memory instead.
    const bool no_keys = p->seqlen_k == 0;
    const bool ok =
        encode_map(encode, &prm->tmap_q, dt, p->q, p->head_dim, qx.rows, p->heads_q, qx.batches,
                   p->q_row_stride, p->q_head_stride, p->q_batch_stride, 64) &&
        (no_keys
             ? encode_map(encode, &prm->tmap_k, dt, p->q, p->head_dim, 1, p->heads_q, qx.batches,
                          p->q_row_stride, p->q_head_stride, p->q_batch_stride, Cfg::kBlockN) &&
                   encode_map(encode, &prm->tmap_v, dt, p->q, p->head_dim, 1, p->heads_q, qx.batches,
                              p->q_row_stride, p->q_head_stride, p->q_batch_stride, Cfg::kBlockN)
             : encode_map(encode, &prm->tmap_k, dt, p->k, p->head_dim, kvx.rows, p->heads_kv,
                          kvx.batches, p->k_row_stride, p->k_head_stride, p->k_batch_stride,
                          Cfg::kBlockN) &&
                   encode_map(encode, &prm->tmap_v, dt, p->v, p->head_dim, kvx.rows, p->heads_kv,
                              kvx.batches, p->v_row_stride, p->v_head_stride, p->v_batch_stride,
                              Cfg::kBlockN)) &&
        encode_map(encode, &prm->tmap_o, dt, p->out, p->head_dim, qx.rows, p->heads_q, qx.batches,
                   p->o_row_stride, p->o_head_stride, p->o_batch_stride, 64);
    if (!ok) return false;
    prm->lse = p->lse;
    prm->out = p->out;
    FA_COPY_STRIDES(*prm, p, o);
    prm->head_dim = p->head_dim;
    prm->score = fa_score_make(p->softmax_scale, p->softcap);
    prm->window_left = p->window_left;
    prm->window_right = p->causal ? 0 : p->window_right;
    prm->sinks = p->sinks;
    SchedulerArgs &s = prm->sched;
    s.batch = p->batch;
    s.heads_q = p->heads_q;
    s.heads_kv = p->heads_kv;
    s.seq = fa_seq_layout_of(p);
    // Tiles by their work (common/tile_order.h), sized by the longest entry.
    const int num_m_blocks = (p->seqlen_q + Cfg::kBlockM - 1) / Cfg::kBlockM;  // tiles fit 32 bits (launch.c)
    const fa_mask longest = fa_mask_make(p->seqlen_q, p->seqlen_k, p->window_left, p->window_right, p->causal);
    s.order = fa_tile_order_make(p->heads_q * p->batch, num_m_blocks,
                                 fa_block_range_plateau(&longest, num_m_blocks, Cfg::kBlockM, Cfg::kBlockN),
                                 cfg->grid[0]);
    return append == nullptr || set_appended_keys<Cfg>(p, append, encode, dt, prm);
}

template <int kHd, int kConsumers = FA_NUM_CONSUMER_WARPGROUPS>
const void *instance_kernel_fn(const fa_params *p) {
    const void *fn = nullptr;
    if (built_for_sm90())
        dispatch_head_dim<kHd, kConsumers>(
            p, [&](auto cfg) { fn = reinterpret_cast<const void *>(&fwd_kernel<decltype(cfg)>); });
    return fn;
}

// Launches instance Cfg for p (and append: make_kernel_params) with cfg, which must describe it
// (launch.c and sm90_tiles.h agree; dev/ programs build their own).
template <class Cfg>
cudaError_t launch_instance(const fa_params *p, const fa_launch *cfg, cudaStream_t stream,
                            const fa_kvcache_params *append = nullptr) {
    fa_sm90_host::EncodeTiledFn encode = fa_sm90_host::encode_tiled_fn();
    if (!built_for_sm90() || encode == nullptr) return cudaErrorInvalidValue;
    if (cfg->block_n != Cfg::kBlockN || cfg->block_m != Cfg::kBlockM || cfg->head_dim_padded != Cfg::kHeadDim ||
        cfg->smem_bytes < Cfg::kSmemBytes)
        return cudaErrorInvalidValue;
    KernelParams prm;
    if (!make_kernel_params<Cfg>(p, append, cfg, encode, &prm)) return cudaErrorInvalidValue;
    const dim3 grid(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
    const dim3 block(cfg->block[0], cfg->block[1], cfg->block[2]);
    fwd_kernel<Cfg><<<grid, block, cfg->smem_bytes, stream>>>(prm);
    return cudaGetLastError();
}

template <int kHd, int kConsumers = FA_NUM_CONSUMER_WARPGROUPS>
cudaError_t instance_launch(const fa_params *p, const fa_launch *cfg, cudaStream_t stream,
                            const fa_kvcache_params *append = nullptr) {
    cudaError_t status = cudaErrorInvalidValue;
    dispatch_head_dim<kHd, kConsumers>(
        p, [&](auto cfg_tag) { status = launch_instance<decltype(cfg_tag)>(p, cfg, stream, append); });
    return status;
}

}  // namespace fa_sm90

// The C entry points of one head dim, routed to by fwd_sm90.cu.
#define FA_SM90_DEFINE_HEAD_DIM(HD)                                                                       \
    extern "C" const void *fa_sm90_hd##HD##_kernel_fn(const fa_params *p) {                              \
        return fa_sm90::instance_kernel_fn<HD>(p);                                                       \
    }                                                                                                     \
    extern "C" cudaError_t fa_sm90_hd##HD##_launch(const fa_params *p, const fa_kvcache_params *append,    \
                                                   const fa_launch *cfg, cudaStream_t s) {                \
        return fa_sm90::instance_launch<HD>(p, cfg, s, append);                                          \
    }

#endif /* FA_SM90_FWD_LAUNCH_CUH */
