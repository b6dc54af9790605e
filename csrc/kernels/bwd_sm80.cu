/*
 * bwd_sm80.cu -- FlashAttention backward main kernel for Ampere and newer (sm_80, sm_86,
 * sm_89; also runs on sm_90): mma.sync m16n8k16 tensor cores, ldmatrix, cp.async, 384 threads
 * = 12 warps per CTA. The preprocess (delta, zeroed workspace) and the dq conversion are
 * bwd_sm80_aux.cu's; kernels.h has the contract of the three launches.
 *
 *   grid = (ceil(seqlen_k / BLOCK_N), heads_kv, batch), block = 384, dynamic smem from
 *   sm80_bwd_tiles.h. CTA (n, hk, b) owns keys [n BLOCK_N, (n + 1) BLOCK_N) of kv head hk and
 *   walks every q head of its group and every query block that sees its keys
 *   (fa_block_range_cols); masks, score hook and lengths come from csrc/common/. Instantiated
 *   for head_dim_padded 64, 128, 256 x {fp16, bf16} x {narrow, wide} tiles; mask kind, softcap
 *   and determinism are runtime (see sm80_bwd_kernel.cuh for why and what it costs).
 *
 * Design (FlashAttention-2's Ampere backward, cut for 12 warps): K and V stay in shared memory
 * for the CTA's life, dK and dV in fp32 registers. Per query block, Q, dO, lse and delta arrive
 * by cp.async into one stage of buffers (of two in the wide tier at head_dim 64 and 128); warps
 * tile S = Q K^T and dP = dO V^T, form P and dS in registers and store them as 16-bit rows;
 * then warps re-tile for dK += dS^T Q and dV += P^T dO (A operands through ldmatrix.trans) and
 * dQ = dS K, which is added to the fp32 dq_accum with fp32 reductions (red.global.add, two
 * floats per instruction on sm_90), in key-block order when deterministic. The next block's Q
 * and dO are copied while the current block's later GEMMs run (with two stages, while all of it
 * runs). Tile sizes and the shared-memory map: sm80_bwd_tiles.h; warp layouts, registers and
 * the per-head-dim schedule: sm80_bwd_config.cuh.
 *
 *   tier    hd   BLOCK_M x BLOCK_N  smem (bytes)  registers sm_80 / sm_90  (ptxas, CUDA 13.0; no
 *   narrow  64     48 x 192        100384         168 / 168                  spills, no stack
 *   narrow  128    48 x  96         94240         165-166 / 168              frame, fp16 and bf16
 *   narrow  256    32 x  48         89504         161-163 / 166              alike)
 *   wide    64     64 x 192        134352         168 / 168
 *   wide    128    64 x  96        142544         167-168 / 168
 *   wide    256    64 x  48        129696         166 / 168
 * The tier follows the device's opt-in shared memory (sm80_bwd_tiles.h): wide on sm_80 and
 * sm_90, narrow on the 99 KB parts.
 *
 * Measured (H200, dev/bwd_check.cu, this kernel alone, FLOPs = 10 B H Sq Sk D, halved
 * causal), bf16, B=1, H=16, S=16384, head_dim 128, narrow tier: 174 TFLOP/s, 171 causal
 * (FlashAttention-2's backward is about 310 there, with its 144 KB tiles). The wide tier has
 * not run on a GPU. The 4 compiled files build in 12 s on 2 cores with the project's three
 * gencodes.
 *
 * Build (as the project does):
 *   nvcc -c -O3 -std=c++17 --use_fast_math -Xptxas -v -lineinfo -Xcompiler -fPIC \
 *     -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
 *     -gencode arch=compute_80,code=compute_80 -DFA_WITH_SM80 -I csrc \
 *     csrc/kernels/bwd_sm80_hd128.cu -o bwd_sm80_hd128.o
 *   (and likewise bwd_sm80.cu, bwd_sm80_hd64.cu, bwd_sm80_hd256.cu)
 *
 * Parts: sm80_bwd_config.cuh (instance constants, BwdArgs, operand addressing),
 * sm80_bwd_load.cuh (copies), sm80_bwd_math.cuh (the GEMMs and the elementwise pass),
 * sm80_bwd_epilogue.cuh (dQ adds, dK/dV stores), sm80_bwd_kernel.cuh (the skeleton and the
 * instance table); here the kernel arguments and the host entry points.
 */
#include <cuda_runtime.h>

#include "../common/mask.h"
#include "../common/score.h"
#include "kernels.h"
#include "sm80_bwd_config.cuh"
#include "sm80_bwd_tiles.h"

/* One per head dim, defined in bwd_sm80_hd<D>.cu (sm80_bwd_kernel.cuh). */
extern "C" const void *fa_sm80_bwd_hd64_kernel(const fa_params *p, const fa_tile *t);
extern "C" const void *fa_sm80_bwd_hd128_kernel(const fa_params *p, const fa_tile *t);
extern "C" const void *fa_sm80_bwd_hd256_kernel(const fa_params *p, const fa_tile *t);

namespace fa_sm80 {

typedef void (*bwd_kernel_t)(const BwdArgs);

/* The instance of tile t (its head dim and tier) for p, or nullptr. */
static bwd_kernel_t select_bwd_kernel(const fa_params *p, const fa_tile *t)
{
    const void *fn = nullptr;
    switch (t->head_dim_padded) {
    case 64: fn = fa_sm80_bwd_hd64_kernel(p, t); break;
    case 128: fn = fa_sm80_bwd_hd128_kernel(p, t); break;
    case 256: fn = fa_sm80_bwd_hd256_kernel(p, t); break;
    }
    return reinterpret_cast<bwd_kernel_t>(const_cast<void *>(fn));
}

static BwdArgs make_bwd_args(const fa_params *p, const fa_grad_params *g,
                             const fa_bwd_workspace *ws)
{
    BwdArgs a;
    a.q = p->q;
    a.k = p->k;
    a.v = p->v;
    a.dout = g->dout;
    a.dk = g->dk;
    a.dv = g->dv;
    a.lse = p->lse;
    a.delta = ws->delta;
    a.dq_accum = ws->dq_accum;
    a.dq_lock = ws->dq_lock;
    FA_COPY_STRIDES(a, p, q);
    FA_COPY_STRIDES(a, p, k);
    FA_COPY_STRIDES(a, p, v);
    FA_COPY_STRIDES(a, g, do);
    FA_COPY_STRIDES(a, g, dk);
    FA_COPY_STRIDES(a, g, dv);
    a.seqlen_q = p->seqlen_q;
    a.seqlen_k = p->seqlen_k;
    a.heads_q = p->heads_q;
    a.head_dim = p->head_dim;
    a.heads_per_kv = p->heads_kv > 0 ? p->heads_q / p->heads_kv : 1;
    const fa_mask mask =
        fa_mask_make(p->seqlen_q, p->seqlen_k, p->window_left, p->window_right, p->causal);
    a.window_left = mask.left;
    a.window_right = mask.right;
    a.lock_blocks = ws->block_m > 0 ? (p->seqlen_q + ws->block_m - 1) / ws->block_m : 0;
    a.deterministic = g->deterministic ? 1 : 0;
    a.score = fa_score_make(p->softmax_scale, p->softcap);
    a.softmax_scale = p->softmax_scale;
    a.layout = fa_seq_layout_of(p);
    return a;
}

} /* namespace fa_sm80 */

extern "C" {

const void *fa_sm80_bwd_kernel_fn(const fa_params *p, const fa_grad_params *g, const fa_tile *t)
{
    (void)g;
    if (p == NULL || t == NULL)
        return NULL;
    return reinterpret_cast<const void *>(fa_sm80::select_bwd_kernel(p, t));
}

cudaError_t fa_sm80_bwd_launch(const fa_params *p, const fa_grad_params *g,
                               const fa_bwd_workspace *ws, const fa_launch *cfg,
                               cudaStream_t stream)
{
    fa_tile t = {};
    t.head_dim_padded = cfg->head_dim_padded;
    t.block_m = cfg->block_m;
    t.block_n = cfg->block_n;
    const fa_sm80::bwd_kernel_t kernel = fa_sm80::select_bwd_kernel(p, &t);
    if (kernel == nullptr)
        return cudaErrorInvalidDeviceFunction;
    /* the turn counters are indexed by the kernel's own query blocks */
    if (g->deterministic && (ws->dq_lock == NULL || ws->block_m != cfg->block_m))
        return cudaErrorInvalidValue;
    const dim3 grid(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
    const dim3 block(cfg->block[0], cfg->block[1], cfg->block[2]);
    fa_sm80::BwdArgs args = fa_sm80::make_bwd_args(p, g, ws);
    args.key_blocks = fa_key_block_order_of(g->deterministic, (int)cfg->grid[0]);
    kernel<<<grid, block, cfg->smem_bytes, stream>>>(args);
    return cudaGetLastError();
}

} /* extern "C" */
