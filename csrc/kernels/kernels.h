/*
 * kernels.h -- what a kernel family gives the launch logic (launch.c).
 *
 * Each family (fwd_sm80.cu, fwd_sm90.cu) implements, with C linkage:
 *   fa_<fam>_tile(p, &t)    in <fam>_tiles.h: pure host tile choice + shared-memory bytes
 *   fa_<fam>_kernel_fn(...) the __global__ function a launch would run, NULL if not compiled
 *   fa_<fam>_launch(...)    the one <<<>>> site of the family; returns cudaGetLastError()
 *   fa_<fam>_archs(...)     the SASS targets the file was compiled for (__CUDA_ARCH_LIST__)
 * launch.c validates everything (block, smem, arch, grid) before it calls fa_<fam>_launch.
 */
#ifndef FA_KERNELS_H
#define FA_KERNELS_H

#include "../flashattn.h"
#include "../common/mask.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A family's tile for one problem (its head_dim, dtype, mask kind and, for sm90, seqlen_k). */
typedef struct {
    int block_m;          /* query rows per CTA tile */
    int block_n;          /* key rows per main-loop step */
    int stages;           /* K/V pipeline depth */
    int head_dim_padded;  /* head_dim rounded up to the instantiated size (64, 128, 256) */
    size_t smem_bytes;    /* dynamic shared memory of the launch */
    int persistent;       /* 1: grid = min(tiles, SMs), the kernel loops over tiles */
} fa_tile;

/* The mask an instance is built for. A window that hides nothing for the problem's lengths
 * (mask.h normalises it) runs the full or causal instance; anything else, the local one. */
typedef enum { FA_MASK_NONE = 0, FA_MASK_CAUSAL = 1, FA_MASK_LOCAL = 2 } fa_mask_kind;

static inline fa_mask_kind fa_params_mask_kind(const fa_params *p)
{
    /* Empty lengths launch nothing; counting them as 1 keeps the name of such a config. */
    const fa_mask m = fa_mask_make(p->seqlen_q > 0 ? p->seqlen_q : 1, p->seqlen_k > 0 ? p->seqlen_k : 1,
                                   p->window_left, p->window_right, p->causal);
    if (m.left < 0 && m.right < 0)
        return FA_MASK_NONE;
    return m.left < 0 && m.right == 0 ? FA_MASK_CAUSAL : FA_MASK_LOCAL;
}

const void *fa_sm80_kernel_fn(const fa_params *p, const fa_tile *t);
cudaError_t fa_sm80_launch(const fa_params *p, const fa_launch *cfg, cudaStream_t stream);
int fa_sm80_archs(int *archs, int max);

const void *fa_sm90_kernel_fn(const fa_params *p, const fa_tile *t);
cudaError_t fa_sm90_launch(const fa_params *p, const fa_launch *cfg, cudaStream_t stream);
int fa_sm90_archs(int *archs, int max);

#ifdef __cplusplus
}
#endif
#endif /* FA_KERNELS_H */
