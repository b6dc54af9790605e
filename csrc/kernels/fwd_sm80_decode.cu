/*
 * fwd_sm80_decode.cu -- the split-KV decode kernel of the KV-cache op (kernels.h, launch 2):
 * attention of a few query rows over a long K/V cache, bound by reading K and V once.
 * mma.sync m16n8k16 (fp16/bf16 in, fp32 accumulation), ldmatrix, cp.async; sm_80 and newer.
 *
 * Maths (csrc/common/): for packed row r = i * G + g (query row i of entry b, q head
 * h = hk * G + g, G = heads_q / heads_kv) and the keys j < len_k that mask.h shows row i
 * (mask built per entry, bottom-right: fa_mask_make(len_q, len_k, ...)):
 *   t_j = q . k_j, or tanh(q . k_j * softcap_pre)                          (score.h)
 *   m = max_j t_j,  l = sum_j exp2((t_j - m) scale_log2),  O = sum_j exp2(..) v_j
 *   unsplit: out = O inv, lse from fa_row_finalize with the head's sink;
 *   split s: o_s = O / l, lse_s = m row_scale + log l (-inf and 0 for a split that saw no key),
 *            merged by fa_combine (fwd_sm80_kvcache_aux.cu).
 *
 * Work split. grid (num_splits * m_tiles, heads_kv, batch), blockIdx.x = split * m_tiles +
 * m_tile (the m tiles of a split run side by side and share its K/V through L2). A CTA owns
 * the 16 packed rows [16 m_tile, + 16) of (entry b, kv head hk) -- one m16 tile, Q zero past
 * the entry's rows and past head_dim -- and split `split` of the chunks of 16 keys the rows
 * see (block_range.h; n_vis chunks cut at split * n_vis / num_splits). Inside the CTA the
 * chunks are dealt round-robin to S streams: chunk c goes to stream c % S. A stream is one
 * warp (head_dim 64, 128: the warp holds all head_dim columns) or a pair of warps (head_dim
 * 256: each warp holds 128 columns of Q, K, V and O, and the pair adds its two halves of S
 * through shared memory, one 64-thread named barrier per chunk). Each warp streams its own
 * chunks through its own cp.async ring of STAGES slots (K then V of one chunk, its columns
 * only), runs the online softmax of the 16 rows on its own, and meets no other warp in the
 * loop: no CTA barrier between the prologue and the merge. At the end each stream's (m, l)
 * and each warp's O go to shared memory, and the 384 threads combine them per (row, 8
 * columns) and store out/lse (num_splits == 1, sinks included) or the fp32 partials.
 *
 * The copies: a warp instruction copies 4 key rows x 128 contiguous bytes; the chunk's rows
 * are addressed through fa_k_row_offset (dense, kv_batch_idx, or paged with any page size:
 * one block-table lookup per chunk when page_size is a multiple of 16, else one per row),
 * keys past len_k and columns past head_dim are zero-filled.
 *
 * Shared memory (dynamic; W streaming warps, STAGES slots each; bytes):
 *   ring   W * STAGES * SLOT     SLOT = 2 (K, V) * 16 keys * WARP_DIM * 2 = 4096 (hd 64),
 *                                8192 (hd 128, and each 128-column half of hd 256)
 *   Q      16 * hd_padded * 2    2048, 4096, 8192
 *   xchg   hd 256 only: W * 2 buffers * 16 x 16 fp32 = W * 2048
 *   merge (after the loop) the warps' O, W * 16 * WARP_DIM fp32 (= W * SLOT), over the ring;
 *         the streams' m and l (1.5 KB) over Q.
 * The tile (decode_layout) takes the deepest ring of 12 warps up to 4 slots; below 2 slots it
 * takes 2 slots with the most warps if that keeps >= 6 of them, else 1 slot with the most:
 *   smem_optin           hd 64            hd 128           hd 256
 *   227 KB (sm_90)       12 x 4  198656   12 x 2  200704   12 x 2  229376
 *   163 KB (sm_80)       12 x 3  149504    9 x 2  151552    8 x 2  155648
 *    99 KB (sm_86/89)    12 x 2  100352   11 x 1   94208    8 x 1   90112
 * (warps x stages, bytes). The prologue fills every slot and a slot is refilled as soon as
 * its chunk is read, so 12 warps x 2 slots of 8 KB keep 96 to 192 KB of K/V in flight per SM
 * (one CTA per SM: 384 threads of at most 168 registers).
 *
 * Measured on an H200 (dev/decode_check.cu --bench: GQA 32:8, hd 128, bf16, one query row,
 * dense, kvcache.c's splits, CUDA graph): 4.0 to 4.4 TB/s of K + V for caches of 512 MB and
 * more at batch 1, 8 and 64; 3.66 (B 1), 3.89 (B 8), 3.54 (B 64) TB/s at 268 MB; about 12 us
 * per call (decode + combine) for caches up to 8 MB. What remains is a fixed cost of about
 * 3 us per CTA (launch, the first round trip, the merge and the stores: 512 CTAs that see no
 * key take 12.7 us in 4 waves), which one CTA per tile and one CTA per SM cannot overlap.
 *
 * Instances: head_dim_padded 64, 128, 256 x {fp16, bf16}. The mask, softcap, sinks, layout
 * and the ring's shape are run-time (chunk-uniform branches): the kernel streams memory, and
 * the few masked chunks of a split are the ragged end and the window/causal edges.
 *
 * Build (as setup.py does, with the sm80 family):
 *   nvcc -c -O3 -std=c++17 --use_fast_math -Xptxas -v -lineinfo -Xcompiler -fPIC \
 *     -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
 *     -gencode arch=compute_80,code=compute_80 -I csrc csrc/kernels/fwd_sm80_decode.cu
 */
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/mask.h"
#include "../common/score.h"
#include "../common/seqlen.h"
#include "../launch_contract.h"
#include "kernels.h"
#include "sm80_decode_kernel.cuh"

namespace fa_decode {

/* The shared-memory layout of W streaming warps with `stages` slots each (pure host). */
struct Layout {
    int warps, stages;
    size_t bytes;
};

static int warp_dim_of(int hdp) { return hdp < 128 ? hdp : 128; }

static size_t layout_bytes(int hdp, int warps, int stages)
{
    const size_t slot = 2 * kChunk * warp_dim_of(hdp) * 2;
    const size_t q = kRows * (size_t)hdp * 2;
    const size_t xchg = hdp > 128 ? (size_t)warps * 2 * kRows * kChunk * 4 : 0;
    return (size_t)warps * stages * slot + q + xchg;
}

static_assert(Geom<64>::kSlotBytes == 4096 && Geom<128>::kSlotBytes == 8192 &&
                  Geom<256>::kSlotBytes == 8192,
              "layout_bytes follows Geom");
static_assert(Geom<256>::kXchgBytesPerWarp == 2048 && Geom<64>::kQBytes == 2048,
              "layout_bytes follows Geom");

static int pairs_of(int hdp) { return hdp > 128 ? 2 : 1; }

/* Most warps (a whole number of streams, at most 12) that fit smem_optin with `stages` slots. */
static int warps_fitting(int hdp, int stages, size_t limit)
{
    for (int w = kWarps; w >= pairs_of(hdp); w -= pairs_of(hdp))
        if (layout_bytes(hdp, w, stages) <= limit)
            return w;
    return 0;
}

/* The tile's ring (see the table at the top). */
static Layout decode_layout(int hdp, int smem_optin)
{
    Layout l = {0, 0, 0};
    const size_t limit = smem_optin > 0 ? (size_t)smem_optin : 0;
    for (int s = kMaxStages; s >= 2; --s)
        if (warps_fitting(hdp, s, limit) == kWarps) {
            l.warps = kWarps;
            l.stages = s;
            break;
        }
    if (l.warps == 0) {
        const int w2 = warps_fitting(hdp, 2, limit);
        if (w2 >= 6) {
            l.warps = w2;
            l.stages = 2;
        } else {
            l.warps = warps_fitting(hdp, 1, limit);
            l.stages = 1;
        }
    }
    if (l.warps > 0)
        l.bytes = layout_bytes(hdp, l.warps, l.stages);
    return l;
}

typedef void (*decode_kernel_t)(const Args);

static decode_kernel_t select_kernel(fa_dtype dtype, int hdp)
{
    const bool bf16 = dtype == FA_BFLOAT16;
    if (dtype != FA_BFLOAT16 && dtype != FA_FLOAT16)
        return nullptr;
    switch (hdp) {
    case 64: return bf16 ? decode_kernel<64, true> : decode_kernel<64, false>;
    case 128: return bf16 ? decode_kernel<128, true> : decode_kernel<128, false>;
    case 256: return bf16 ? decode_kernel<256, true> : decode_kernel<256, false>;
    default: return nullptr;
    }
}

static Args make_args(const fa_params *p, const fa_split_workspace *ws, int m_tiles, int warps,
                      int stages)
{
    Args a;
    a.q = p->q;
    a.k = p->k;
    a.v = p->v;
    a.out = p->out;
    a.lse = p->lse;
    a.sinks = p->sinks;
    a.o_partial = ws->o_partial;
    a.lse_partial = ws->lse_partial;
    FA_COPY_STRIDES(a, p, q);
    FA_COPY_STRIDES(a, p, k);
    FA_COPY_STRIDES(a, p, v);
    FA_COPY_STRIDES(a, p, o);
    a.seq = fa_seq_layout_of(p);
    a.batch = p->batch;
    a.heads_q = p->heads_q;
    a.head_dim = p->head_dim;
    a.group = p->heads_q / p->heads_kv;
    a.m_tiles = m_tiles;
    a.num_splits = ws->num_splits;
    a.window_left = p->window_left;
    a.window_right = p->window_right;
    a.causal = p->causal;
    a.score = fa_score_make(p->softmax_scale, p->softcap);
    a.stages = stages;
    a.warps = warps;
    return a;
}

} /* namespace fa_decode */

extern "C" {

int fa_decode_tile(const fa_params *p, int smem_optin, fa_tile *t)
{
    if (p == NULL || t == NULL)
        return -1;
    const int hdp = fa_head_dim_padded(p->head_dim);
    if (hdp == 0)
        return -1;
    const fa_decode::Layout l = fa_decode::decode_layout(hdp, smem_optin);
    if (l.warps == 0)
        return -1;
    t->block_m = fa_decode::kRows;
    t->block_n = fa_decode::kChunk;
    t->stages = l.stages;
    t->head_dim_padded = hdp;
    t->smem_bytes = l.bytes;
    t->persistent = 0;
    return 0;
}

const void *fa_decode_kernel_fn(const fa_params *p, const fa_tile *t)
{
    if (p == NULL || t == NULL)
        return NULL;
    return reinterpret_cast<const void *>(fa_decode::select_kernel(p->dtype, t->head_dim_padded));
}

cudaError_t fa_decode_launch(const fa_params *p, const fa_split_workspace *ws,
                             const fa_launch *cfg, cudaStream_t stream)
{
    using namespace fa_decode;
    if (p == NULL || ws == NULL || cfg == NULL || ws->num_splits < 1 || p->heads_kv <= 0 ||
        p->heads_q % p->heads_kv != 0)
        return cudaErrorInvalidValue;
    const int hdp_needed = fa_head_dim_padded(p->head_dim); /* 0: no instance serves head_dim */
    if (hdp_needed == 0 || hdp_needed > cfg->head_dim_padded)
        return cudaErrorInvalidValue;
    if (ws->num_splits > 1 && (ws->o_partial == NULL || ws->lse_partial == NULL))
        return cudaErrorInvalidValue;
    const decode_kernel_t kernel = select_kernel(p->dtype, cfg->head_dim_padded);
    if (kernel == nullptr)
        return cudaErrorInvalidDeviceFunction;
    /* Every warp strides by its lane and the merge by 384 threads. */
    if (cfg->block[0] != kThreads || cfg->block[1] != 1 || cfg->block[2] != 1)
        return cudaErrorInvalidConfiguration;
    /* The ring the tile sized: its stages, and as many warps as its bytes hold. */
    const int hdp = cfg->head_dim_padded;
    const int stages = cfg->stages;
    if (stages < 1 || stages > kMaxStages)
        return cudaErrorInvalidConfiguration;
    const int warps = warps_fitting(hdp, stages, cfg->smem_bytes);
    if (warps == 0)
        return cudaErrorInvalidConfiguration;
    const int64_t rows = (int64_t)p->seqlen_q * (p->heads_q / p->heads_kv);
    const int64_t m_tiles = rows > 0 ? (rows + kRows - 1) / kRows : 1;
    if (m_tiles > INT32_MAX)
        return cudaErrorInvalidValue;
    const dim3 grid(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
    const dim3 block(cfg->block[0], cfg->block[1], cfg->block[2]);
    kernel<<<grid, block, cfg->smem_bytes, stream>>>(
        make_args(p, ws, (int)m_tiles, warps, stages));
    return cudaGetLastError();
}

} /* extern "C" */
