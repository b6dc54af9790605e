/*
 * sm90_bwd_launch.cuh -- the host side of one sm90 backward instance: its kernel arguments
 * (the TMA maps over q, k, v, dout and dq_accum; the walk's mask, score hook and lengths) and
 * its launch, checked against the launch config the plan recorded. bwd_sm90.cu dispatches to
 * it.
 */
#ifndef FA_SM90_BWD_LAUNCH_CUH
#define FA_SM90_BWD_LAUNCH_CUH

#include <cuda_runtime.h>

#include <cstring>

#include "kernels.h"
#include "sm90_bwd_kernel.cuh"
#include "sm90_fwd_launch.cuh"  // q_map_extent, kv_map_extent
#include "sm90_tensor_map.h"

namespace fa_sm90 {

template <class Cfg>
bool make_bwd_params(const fa_params *p, const fa_grad_params *g, const fa_bwd_workspace *ws,
                     fa_sm90_host::EncodeTiledFn encode, BwdParams *prm) {
    using fa_sm90_host::encode_map;
    std::memset(prm, 0, sizeof(*prm));
    const CUtensorMapDataType dt = Cfg::kBf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    const MapExtent qx = q_map_extent(p), kvx = kv_map_extent(p);
    // dq_accum: the lse's layout times head_dim, fp32 (kernels.h), in boxes of 32 columns.
    auto encode_dq = [&](CUtensorMap *map, int box_rows) {
        return fa_sm90_host::encode_map_box(encode, map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, ws->dq_accum,
                                            p->head_dim, qx.rows, p->heads_q, qx.batches, p->head_dim,
                                            (int64_t)qx.rows * p->head_dim,
                                            (int64_t)p->heads_q * qx.rows * p->head_dim, 32, box_rows);
    };
    const bool ok =
        encode_map(encode, &prm->tmap_q, dt, p->q, p->head_dim, qx.rows, p->heads_q, qx.batches, p->q_row_stride,
                   p->q_head_stride, p->q_batch_stride, Cfg::kBlockM) &&
        encode_map(encode, &prm->tmap_do, dt, g->dout, p->head_dim, qx.rows, p->heads_q, qx.batches,
                   g->do_row_stride, g->do_head_stride, g->do_batch_stride, Cfg::kBlockM) &&
        encode_map(encode, &prm->tmap_k, dt, p->k, p->head_dim, kvx.rows, p->heads_kv, kvx.batches, p->k_row_stride,
                   p->k_head_stride, p->k_batch_stride, Cfg::kBlockN) &&
        encode_map(encode, &prm->tmap_v, dt, p->v, p->head_dim, kvx.rows, p->heads_kv, kvx.batches, p->v_row_stride,
                   p->v_head_stride, p->v_batch_stride, Cfg::kBlockN) &&
        encode_dq(&prm->tmap_dq, Cfg::kBlockM) && encode_dq(&prm->tmap_dq_row, 1);
    if (!ok) return false;
    prm->lse = p->lse;
    prm->delta = ws->delta;
    prm->dk = g->dk;
    prm->dv = g->dv;
    FA_COPY_STRIDES(*prm, g, dk);
    FA_COPY_STRIDES(*prm, g, dv);
    prm->seq = fa_seq_layout_of(p);
    prm->heads_q = p->heads_q;
    prm->heads_per_kv = p->heads_q / p->heads_kv;
    prm->head_dim = p->head_dim;
    const fa_mask mask = fa_mask_make(p->seqlen_q, p->seqlen_k, p->window_left, p->window_right, p->causal);
    prm->window_left = mask.left;
    prm->window_right = mask.right;
    prm->score = fa_score_make(p->softmax_scale, p->softcap);
    prm->softmax_scale = p->softmax_scale;
    prm->deterministic = g->deterministic ? 1 : 0;
    prm->dq_lock = ws->dq_lock;
    prm->lock_blocks = (p->seqlen_q + Cfg::kBlockM - 1) / Cfg::kBlockM;
    return true;
}

// Launches instance Cfg for p and g on stream: cudaErrorInvalidValue where cfg does not
// describe the instance (backward.c and sm90_bwd_tiles.h agree on it) or a map cannot be
// encoded. The turn counters are indexed by the kernel's own query blocks.
template <class Cfg>
cudaError_t launch_bwd(const fa_params *p, const fa_grad_params *g, const fa_bwd_workspace *ws, const fa_launch *cfg,
                       fa_sm90_host::EncodeTiledFn encode, cudaStream_t stream) {
    if (cfg->block_n != Cfg::kBlockN || cfg->block_m != Cfg::kBlockM || cfg->head_dim_padded != Cfg::kHeadDim ||
        cfg->smem_bytes < Cfg::kSmemBytes ||
        (g->deterministic && (ws->dq_lock == nullptr || ws->block_m != Cfg::kBlockM)))
        return cudaErrorInvalidValue;
    BwdParams prm;
    if (!make_bwd_params<Cfg>(p, g, ws, encode, &prm)) return cudaErrorInvalidValue;
    prm.key_blocks = fa_key_block_order_of(g->deterministic, (int)cfg->grid[0]);
    const dim3 grid(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
    const dim3 block(cfg->block[0], cfg->block[1], cfg->block[2]);
    bwd_kernel<Cfg><<<grid, block, cfg->smem_bytes, stream>>>(prm);
    return cudaGetLastError();
}

}  // namespace fa_sm90

#endif /* FA_SM90_BWD_LAUNCH_CUH */
