/*
 * sm90_ptx.cuh -- thin inline-PTX wrappers for the sm90 attention kernel, one per instruction,
 * each named after the PTX it emits: mbarriers, a shared-memory atomic increment, TMA
 * (cp.async.bulk.tensor), proxy fences,
 * 16-byte shared loads and stores, named barriers, setmaxnreg, stmatrix, the wgmma
 * fence/commit/wait, the wgmma shared-memory matrix descriptor, and the TMA reduction the
 * backward adds dQ with.
 *
 * Also two float operations whose NaN behaviour the compiler must keep (max.NaN, fma.rn).
 *
 * Device-only; needs the sm_90a target (-gencode arch=compute_90a,code=sm_90a).
 * Shared-memory operands are 32-bit shared-window addresses (smem_addr()).
 */
#ifndef FA_SM90_PTX_CUH
#define FA_SM90_PTX_CUH

#include <stdint.h>

#define FA_DEV __device__ __forceinline__

namespace fa_sm90 {

FA_DEV uint32_t smem_addr(const void *p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---------------------------------------------------------------- float arithmetic kept as written

// max that returns NaN when either operand is NaN (fmaxf returns the other operand).
FA_DEV float max_nan_f32(float a, float b) {
    float d;
    asm("max.NaN.f32 %0, %1, %2;\n" : "=f"(d) : "f"(a), "f"(b));
    return d;
}

// a * b + c, rounded once; in PTX so that no fast-math rewrite drops a product with 0 (which
// must stay NaN for a NaN a).
FA_DEV float fma_rn_f32(float a, float b, float c) {
    float d;
    asm("fma.rn.f32 %0, %1, %2, %3;\n" : "=f"(d) : "f"(a), "f"(b), "f"(c));
    return d;
}

// ---------------------------------------------------------------- mbarrier

FA_DEV void mbarrier_init(uint32_t bar, uint32_t arrive_count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrive_count) : "memory");
}

// Makes the initialised barriers visible to the async proxy (TMA completes transactions on them).
FA_DEV void fence_mbarrier_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

FA_DEV void mbarrier_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// Arrives only where pred holds, without a branch (a divergent branch inside the main loop
// would cost a convergence barrier there).
FA_DEV void mbarrier_arrive_if(uint32_t bar, bool pred) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %1, 0;\n"
        "@p mbarrier.arrive.shared::cta.b64 _, [%0];\n"
        "}\n" ::"r"(bar),
        "r"((uint32_t)pred)
        : "memory");
}

// A counter modulo bound + 1: the word's value before, the word then 0 where it was bound and
// one more otherwise, so it never wraps (a plain add counted modulo 12 would: 2^32 is not a
// multiple of 12). acq_rel: the caller's earlier reads of shared memory (retired wgmma operands
// included) happen before it, and its later writes (a TMA load into the slot the word counts)
// after every earlier count.
FA_DEV uint32_t atom_inc_acq_rel_shared(uint32_t addr, uint32_t bound) {
    uint32_t old;
    asm volatile("atom.acq_rel.cta.shared::cta.inc.u32 %0, [%1], %2;\n" : "=r"(old) : "r"(addr), "r"(bound) : "memory");
    return old;
}

FA_DEV void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t tx_bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(tx_bytes)
                 : "memory");
}

FA_DEV bool mbarrier_try_wait_parity(uint32_t bar, uint32_t parity) {
    uint32_t done;
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    return done != 0;
}

// Returns once the phase with the given parity has completed. A freshly initialised barrier
// counts its (virtual) previous phase, parity 1, as complete: producers wait on "empty"
// barriers with parity (phase ^ 1) so the first pass through the ring does not block.
FA_DEV void mbarrier_wait(uint32_t bar, uint32_t parity) {
    while (!mbarrier_try_wait_parity(bar, parity)) {
    }
}

// ---------------------------------------------------------------- TMA

FA_DEV void prefetch_tensormap(const void *tensor_map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(tensor_map)) : "memory");
}

// Global -> shared, 4-D box at coordinates (c0 innermost .. c3), completing tx bytes on `bar`.
// Elements outside the tensor are written as zeros and still count towards the transaction.
FA_DEV void cp_async_bulk_tensor_4d_g2s(uint32_t dst, const void *tensor_map, uint32_t bar, int c0, int c1,
                                        int c2, int c3) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%3, %4, %5, %6}], [%2];\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(tensor_map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
        : "memory");
}

// Shared -> global, 4-D box; TMA clips the part of the box outside the tensor.
FA_DEV void cp_async_bulk_tensor_4d_s2g(const void *tensor_map, uint32_t src, int c0, int c1, int c2, int c3) {
    asm volatile(
        "cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
            reinterpret_cast<uint64_t>(tensor_map)),
        "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
        : "memory");
}

// Shared -> global reduction, 4-D box: global += shared elementwise (the map's element type;
// f32 here), rows and columns past the tensor clipped.
FA_DEV void cp_reduce_async_bulk_tensor_4d_add_s2g(const void *tensor_map, uint32_t src, int c0, int c1, int c2,
                                                   int c3) {
    asm volatile(
        "cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
            reinterpret_cast<uint64_t>(tensor_map)),
        "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
        : "memory");
}

FA_DEV void cp_async_bulk_commit_group() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }

// Waits until the committed bulk stores have finished reading shared memory.
FA_DEV void cp_async_bulk_wait_group_read_0() {
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}

// Waits until the committed bulk stores have completed.
FA_DEV void cp_async_bulk_wait_group_0() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

// Orders this thread's memory accesses through the generic proxy and the async proxy (TMA)
// against each other, in every state space.
FA_DEV void fence_proxy_async() { asm volatile("fence.proxy.async;\n" ::: "memory"); }

// Orders this thread's generic-proxy shared-memory writes before later async-proxy accesses
// (a TMA store reading them, a TMA load overwriting them).
FA_DEV void fence_proxy_async_shared_cta() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// ---------------------------------------------------------------- shared memory, 16 bytes

FA_DEV void st_shared_v4_zero(uint32_t addr) {
    asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};\n" ::"r"(addr), "r"(0u) : "memory");
}

FA_DEV uint4 ld_shared_v4(uint32_t addr) {
    uint4 v;
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(addr)
                 : "memory");
    return v;
}

FA_DEV uint32_t ld_shared_u32(uint32_t addr) {
    uint32_t v;
    asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr) : "memory");
    return v;
}

FA_DEV void st_shared_u32(uint32_t addr, uint32_t v) {
    asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}

FA_DEV void st_shared_f32(uint32_t addr, float v) {
    asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(addr), "f"(v) : "memory");
}

FA_DEV void st_shared_v2_f32(uint32_t addr, float a, float b) {
    asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(a), "f"(b) : "memory");
}

FA_DEV float2 ld_shared_f32x2(uint32_t addr) {
    float2 v;
    asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n" : "=f"(v.x), "=f"(v.y) : "r"(addr) : "memory");
    return v;
}

// ---------------------------------------------------------------- named barriers

FA_DEV void bar_sync(uint32_t id, uint32_t num_threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(num_threads) : "memory");
}

FA_DEV void bar_arrive(uint32_t id, uint32_t num_threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(num_threads) : "memory");
}

// ---------------------------------------------------------------- register reallocation

template <int kRegs>
FA_DEV void setmaxnreg_inc() {
    static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0, "setmaxnreg takes 24..256 in steps of 8");
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

template <int kRegs>
FA_DEV void setmaxnreg_dec() {
    static_assert(kRegs >= 24 && kRegs <= 256 && kRegs % 8 == 0, "setmaxnreg takes 24..256 in steps of 8");
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// ---------------------------------------------------------------- special functions

// MUFU.TANH, on the unit of the exponentials; the PTX ISA gives a maximum relative error of
// 2^-10.987.
FA_DEV float tanh_approx_f32(float x) {
    float y;
    asm("tanh.approx.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// ---------------------------------------------------------------- stmatrix

// Four 8x8 16-bit matrices; lane L gives the row address of matrix L/8, row L%8; register k
// holds this lane's two elements (row L/4, columns 2*(L%4), +1) of matrix k.
FA_DEV void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0),
                 "r"(r1), "r"(r2), "r"(r3)
                 : "memory");
}

// ---------------------------------------------------------------- wgmma pipeline

// Orders earlier register accesses (accumulators, A fragments) before the next wgmma.mma_async.
FA_DEV void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }

FA_DEV void wgmma_commit_group() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }

// Waits until at most N committed wgmma groups are still pending.
template <int N>
FA_DEV void wgmma_wait_group() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Compiler-only fences: make the compiler treat the registers as read and written at this point,
// so it neither hoists their uses above a wgmma_wait_group nor sinks their definitions below a
// wgmma_fence (the hardware does not track in-flight wgmma registers for ordinary instructions).
template <int N>
FA_DEV void fence_operands(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

template <int N>
FA_DEV void fence_operands(uint32_t (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+r"(r[i])::"memory");
}

// wgmma shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"):
//   bits  0-13  start address >> 4
//   bits 16-29  leading-dimension byte offset >> 4
//   bits 32-45  stride-dimension byte offset >> 4
//   bits 49-51  base offset (0: every swizzled tile here starts on a 1024-byte boundary)
//   bits 62-63  swizzle mode, 1 = 128-byte swizzle
// With the 128-byte swizzle every operand tile here is a stack of [rows][64 elements] chunks,
// one 128-byte line per row, 8-row groups 1024 bytes apart, XOR-swizzled by the address bits
// [7:9] (row % 8) onto bits [4:6] (16-byte unit), which is what TMA's SWIZZLE_128B writes.
//   K-major operand (Q, K): SBO = 1024 (next 8-row group); LBO unused (encoded 1).
//   MN-major operand (V as B of P V, transposed): LBO = byte distance between 64-column
//   chunks; SBO = 1024 (next group of 8 keys along K).
FA_DEV uint64_t make_smem_desc(uint32_t addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
    uint64_t desc = 0;
    desc |= (uint64_t)((addr & 0x3FFFFu) >> 4);
    desc |= (uint64_t)((lbo_bytes & 0x3FFFFu) >> 4) << 16;
    desc |= (uint64_t)((sbo_bytes & 0x3FFFFu) >> 4) << 32;
    desc |= (uint64_t)1 << 62;
    return desc;
}

}  // namespace fa_sm90

#endif /* FA_SM90_PTX_CUH */
