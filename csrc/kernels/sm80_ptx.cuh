/*
 * sm80_ptx.cuh -- inline-PTX wrappers of the sm80 family, one per instruction, named after it.
 * Needs sm_80 or newer (cp.async, bf16 mma, mbarrier; griddepcontrol is sm_90 and compiles to
 * nothing below it); shared-memory operands are 32-bit shared-window addresses
 * (__cvta_generic_to_shared).
 *
 * Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16", 16-bit A/B, f32 C/D), with
 * g = lane / 4 and t = lane % 4; the lower-indexed element sits in the low half of a register:
 *   A (16x16, row): a[0] = (g, 2t..2t+1)  a[1] = (g+8, 2t..)  a[2] = (g, 2t+8..)
 *                   a[3] = (g+8, 2t+8..)
 *   B (16x8, col):  b[0] = (k 2t..2t+1, n g)  b[1] = (k 2t+8..2t+9, n g)
 *   C (16x8):       c[0..1] = (g, 2t..2t+1)  c[2..3] = (g+8, 2t..2t+1)
 * ldmatrix x4: lanes 8i..8i+7 give the row addresses of matrix i; r[i] holds row g, columns
 * 2t..2t+1 of matrix i (with .trans: rows 2t..2t+1 of column g).
 */
#ifndef FA_SM80_PTX_CUH
#define FA_SM80_PTX_CUH

#include <stdint.h>

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 800)
#error "the sm80 kernel family needs sm_80 or newer (cp.async, bf16 mma.sync)"
#endif

namespace fa_sm80 {

__device__ __forceinline__ uint32_t smem_addr(const void *p)
{
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

/* d += a * b, fp16 inputs, fp32 accumulators. */
__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4],
                                                 uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* d += a * b, bf16 inputs, fp32 accumulators. */
__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4],
                                                  uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* volatile: these read shared memory that other warps wrote before a barrier, so they must
   stay on their side of it. */
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

/* 16-byte global -> shared copy bypassing L1; src_bytes 0 writes 16 zero bytes and reads
   nothing, which is how out-of-range rows and padded head_dim columns are filled. */
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void *src, uint32_t src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :
                 : "r"(dst), "l"(src), "r"(src_bytes)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit_group()
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void cp_async_wait_group()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

/* mbarrier (shared-memory 64-bit barrier object, sm_80): a phase completes once `count`
   arrivals have been made; waiters poll for the completion of the phase of a given parity. */
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count)
{
    asm volatile("mbarrier.init.shared.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint32_t bar)
{
    asm volatile("{\n .reg .b64 state;\n mbarrier.arrive.shared.b64 state, [%0];\n}\n" ::"r"(bar)
                 : "memory");
}

/* Returns once the phase of parity `parity` of the barrier has completed: a test_wait poll
   loop (sm_80 has no try_wait). */
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity)
{
    asm volatile("{\n"
                 " .reg .pred done;\n"
                 "wait_%=:\n"
                 " mbarrier.test_wait.parity.shared.b64 done, [%0], %1;\n"
                 " @!done bra wait_%=;\n"
                 "}\n" ::"r"(bar),
                 "r"(parity)
                 : "memory");
}

/* One arrival on the barrier once every cp.async this thread issued so far has landed; the
   barrier's count includes it (.noinc). */
__device__ __forceinline__ void cp_async_mbar_arrive(uint32_t bar)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared.b64 [%0];\n" ::"r"(bar) : "memory");
}

/* tanh(x), hardware approximation (MUFU.TANH, sm_75+): max relative error about 2^-11, the
   precision of the fp16/bf16 P it feeds. Runs on the same unit as ex2. */
__device__ __forceinline__ float tanh_approx_f32(float x)
{
    float y;
    asm("tanh.approx.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/* Barrier over a subset of the block: `threads` (a multiple of 32) threads arrive at `id`. */
__device__ __forceinline__ void bar_sync(uint32_t id, uint32_t threads)
{
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

/* Programmatic dependent launch (sm_90; no-ops before it, where no launch is programmatic).
   launch_dependents: this CTA lets the grid launched after it as a programmatic dependent be
   scheduled (once every CTA has said so or exited). wait: blocks until the grid this one
   depends on has completed and its memory is visible; returns at once when the launch was not
   a programmatic dependent. */
__device__ __forceinline__ void griddepcontrol_launch_dependents()
{
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void griddepcontrol_wait()
{
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

} /* namespace fa_sm80 */

#endif /* FA_SM80_PTX_CUH */
