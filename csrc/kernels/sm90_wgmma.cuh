/*
 * sm90_wgmma.cuh -- wgmma.mma_async m64nNk16 (f32 accumulate, f16/bf16 inputs) as inline PTX,
 * for every N that is a multiple of 16 up to 256:
 *   Wgmma<N>::ss<kBf16>(d, desc_a, desc_b, scale_d)          A and B from shared memory, both K-major
 *   Wgmma<N>::rs<kBf16>(d, a0..a3, desc_b, scale_d)          A from registers, B MN-major (imm-trans-b 1)
 *   Wgmma<N>::ss_mn<kBf16>(d, desc_a, desc_b, scale_d)       both from shared memory, both MN-major
 *                                                             (imm-trans-a 1, imm-trans-b 1)
 *   Wgmma<N>::ss_kmn<kBf16>(d, desc_a, desc_b, scale_d)      both from shared memory, A K-major,
 *                                                             B MN-major (imm-trans-b 1)
 * d is the warpgroup accumulator fragment, N/2 floats per thread; scale_d == 0 computes
 * D = A*B (no accumulator read, so accumulators need no zero fill), otherwise D += A*B.
 *
 * The operand list of an asm statement has to be spelled out, so the accumulator strings and
 * operand lists are built from chunks of 8 registers by the macros below.
 * Device-only; sm_90a.
 */
#ifndef FA_SM90_WGMMA_CUH
#define FA_SM90_WGMMA_CUH

#include <stdint.h>

#include "sm90_ptx.cuh"

namespace fa_sm90 {

#define FA_WG_ACC_STR_1 "%0, %1, %2, %3, %4, %5, %6, %7"
#define FA_WG_ACC_STR_2 FA_WG_ACC_STR_1 ", %8, %9, %10, %11, %12, %13, %14, %15"
#define FA_WG_ACC_STR_3 FA_WG_ACC_STR_2 ", %16, %17, %18, %19, %20, %21, %22, %23"
#define FA_WG_ACC_STR_4 FA_WG_ACC_STR_3 ", %24, %25, %26, %27, %28, %29, %30, %31"
#define FA_WG_ACC_STR_5 FA_WG_ACC_STR_4 ", %32, %33, %34, %35, %36, %37, %38, %39"
#define FA_WG_ACC_STR_6 FA_WG_ACC_STR_5 ", %40, %41, %42, %43, %44, %45, %46, %47"
#define FA_WG_ACC_STR_7 FA_WG_ACC_STR_6 ", %48, %49, %50, %51, %52, %53, %54, %55"
#define FA_WG_ACC_STR_8 FA_WG_ACC_STR_7 ", %56, %57, %58, %59, %60, %61, %62, %63"
#define FA_WG_ACC_STR_9 FA_WG_ACC_STR_8 ", %64, %65, %66, %67, %68, %69, %70, %71"
#define FA_WG_ACC_STR_10 FA_WG_ACC_STR_9 ", %72, %73, %74, %75, %76, %77, %78, %79"
#define FA_WG_ACC_STR_11 FA_WG_ACC_STR_10 ", %80, %81, %82, %83, %84, %85, %86, %87"
#define FA_WG_ACC_STR_12 FA_WG_ACC_STR_11 ", %88, %89, %90, %91, %92, %93, %94, %95"
#define FA_WG_ACC_STR_13 FA_WG_ACC_STR_12 ", %96, %97, %98, %99, %100, %101, %102, %103"
#define FA_WG_ACC_STR_14 FA_WG_ACC_STR_13 ", %104, %105, %106, %107, %108, %109, %110, %111"
#define FA_WG_ACC_STR_15 FA_WG_ACC_STR_14 ", %112, %113, %114, %115, %116, %117, %118, %119"
#define FA_WG_ACC_STR_16 FA_WG_ACC_STR_15 ", %120, %121, %122, %123, %124, %125, %126, %127"

#define FA_WG_OPS8(d, b) "+f"(d[b + 0]), "+f"(d[b + 1]), "+f"(d[b + 2]), "+f"(d[b + 3]), \
    "+f"(d[b + 4]), "+f"(d[b + 5]), "+f"(d[b + 6]), "+f"(d[b + 7])
#define FA_WG_ACC_OPS_1(d) FA_WG_OPS8(d, 0)
#define FA_WG_ACC_OPS_2(d) FA_WG_ACC_OPS_1(d), FA_WG_OPS8(d, 8)
#define FA_WG_ACC_OPS_3(d) FA_WG_ACC_OPS_2(d), FA_WG_OPS8(d, 16)
#define FA_WG_ACC_OPS_4(d) FA_WG_ACC_OPS_3(d), FA_WG_OPS8(d, 24)
#define FA_WG_ACC_OPS_5(d) FA_WG_ACC_OPS_4(d), FA_WG_OPS8(d, 32)
#define FA_WG_ACC_OPS_6(d) FA_WG_ACC_OPS_5(d), FA_WG_OPS8(d, 40)
#define FA_WG_ACC_OPS_7(d) FA_WG_ACC_OPS_6(d), FA_WG_OPS8(d, 48)
#define FA_WG_ACC_OPS_8(d) FA_WG_ACC_OPS_7(d), FA_WG_OPS8(d, 56)
#define FA_WG_ACC_OPS_9(d) FA_WG_ACC_OPS_8(d), FA_WG_OPS8(d, 64)
#define FA_WG_ACC_OPS_10(d) FA_WG_ACC_OPS_9(d), FA_WG_OPS8(d, 72)
#define FA_WG_ACC_OPS_11(d) FA_WG_ACC_OPS_10(d), FA_WG_OPS8(d, 80)
#define FA_WG_ACC_OPS_12(d) FA_WG_ACC_OPS_11(d), FA_WG_OPS8(d, 88)
#define FA_WG_ACC_OPS_13(d) FA_WG_ACC_OPS_12(d), FA_WG_OPS8(d, 96)
#define FA_WG_ACC_OPS_14(d) FA_WG_ACC_OPS_13(d), FA_WG_OPS8(d, 104)
#define FA_WG_ACC_OPS_15(d) FA_WG_ACC_OPS_14(d), FA_WG_OPS8(d, 112)
#define FA_WG_ACC_OPS_16(d) FA_WG_ACC_OPS_15(d), FA_WG_OPS8(d, 120)

template <int N>
struct Wgmma;

// I0..I5 are the operand numbers that follow the N/2 accumulators (N/2 .. N/2 + 5).
// TRANS: imm-trans-a, imm-trans-b ("0, 0": both K-major).
#define FA_WG_DEFINE_TYPED(N, CH, I0, I1, I2, I3, I4, I5, TYPES, TRANS)                            \
    asm volatile(                                                                                 \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %" #I2 ", 0;\n"                                          \
        "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPES " {" FA_WG_ACC_STR_##CH "}, %" #I0    \
        ", %" #I1 ", p, 1, 1, " TRANS ";\n}\n"                                                       \
        : FA_WG_ACC_OPS_##CH(d)                                                                   \
        : "l"(desc_a), "l"(desc_b), "r"(scale_d)                                                  \
        : "memory")

#define FA_WG_DEFINE_TYPED_RS(N, CH, I0, I1, I2, I3, I4, I5, TYPES)                                \
    asm volatile(                                                                                 \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %" #I5 ", 0;\n"                                          \
        "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TYPES " {" FA_WG_ACC_STR_##CH "}, {%" #I0  \
        ", %" #I1 ", %" #I2 ", %" #I3 "}, %" #I4 ", p, 1, 1, 1;\n}\n"                                  \
        : FA_WG_ACC_OPS_##CH(d)                                                                   \
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc_b), "r"(scale_d)                           \
        : "memory")

// One shared-memory form of Wgmma<N>: NAME<kBf16>(d, desc_a, desc_b, scale_d), operand majors
// TRANS (imm-trans-a, imm-trans-b).
#define FA_WG_DEFINE_SS(NAME, N, CH, I0, I1, I2, I3, I4, I5, TRANS)                                \
    template <bool kBf16>                                                                         \
    static __device__ __forceinline__ void NAME(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, \
                                                int scale_d) {                                    \
        if constexpr (kBf16) {                                                                    \
            FA_WG_DEFINE_TYPED(N, CH, I0, I1, I2, I3, I4, I5, "bf16.bf16", TRANS);                \
        } else {                                                                                  \
            FA_WG_DEFINE_TYPED(N, CH, I0, I1, I2, I3, I4, I5, "f16.f16", TRANS);                  \
        }                                                                                         \
    }

#define FA_WG_DEFINE(N, CH, I0, I1, I2, I3, I4, I5)                                                \
    template <>                                                                                   \
    struct Wgmma<N> {                                                                             \
        FA_WG_DEFINE_SS(ss, N, CH, I0, I1, I2, I3, I4, I5, "0, 0")                                \
        FA_WG_DEFINE_SS(ss_mn, N, CH, I0, I1, I2, I3, I4, I5, "1, 1")                             \
        FA_WG_DEFINE_SS(ss_kmn, N, CH, I0, I1, I2, I3, I4, I5, "0, 1")                            \
        template <bool kBf16>                                                                     \
        static __device__ __forceinline__ void rs(float (&d)[N / 2], uint32_t a0, uint32_t a1,    \
                                                  uint32_t a2, uint32_t a3, uint64_t desc_b,      \
                                                  int scale_d) {                                  \
            if constexpr (kBf16) {                                                                \
                FA_WG_DEFINE_TYPED_RS(N, CH, I0, I1, I2, I3, I4, I5, "bf16.bf16");                \
            } else {                                                                              \
                FA_WG_DEFINE_TYPED_RS(N, CH, I0, I1, I2, I3, I4, I5, "f16.f16");                  \
            }                                                                                     \
        }                                                                                         \
    };

FA_WG_DEFINE(16, 1, 8, 9, 10, 11, 12, 13)
FA_WG_DEFINE(32, 2, 16, 17, 18, 19, 20, 21)
FA_WG_DEFINE(48, 3, 24, 25, 26, 27, 28, 29)
FA_WG_DEFINE(64, 4, 32, 33, 34, 35, 36, 37)
FA_WG_DEFINE(80, 5, 40, 41, 42, 43, 44, 45)
FA_WG_DEFINE(96, 6, 48, 49, 50, 51, 52, 53)
FA_WG_DEFINE(112, 7, 56, 57, 58, 59, 60, 61)
FA_WG_DEFINE(128, 8, 64, 65, 66, 67, 68, 69)
FA_WG_DEFINE(144, 9, 72, 73, 74, 75, 76, 77)
FA_WG_DEFINE(160, 10, 80, 81, 82, 83, 84, 85)
FA_WG_DEFINE(176, 11, 88, 89, 90, 91, 92, 93)
FA_WG_DEFINE(192, 12, 96, 97, 98, 99, 100, 101)
FA_WG_DEFINE(208, 13, 104, 105, 106, 107, 108, 109)
FA_WG_DEFINE(224, 14, 112, 113, 114, 115, 116, 117)
FA_WG_DEFINE(240, 15, 120, 121, 122, 123, 124, 125)
FA_WG_DEFINE(256, 16, 128, 129, 130, 131, 132, 133)

#undef FA_WG_DEFINE
#undef FA_WG_DEFINE_SS
#undef FA_WG_DEFINE_TYPED
#undef FA_WG_DEFINE_TYPED_RS

// acc (64 x N) = A (64 rows from a) x B (N rows from b)^T over kDepth columns, both K-major in
// 64-column swizzled chunks (a_chunk_bytes, b_chunk_bytes apart); the first k-step overwrites.
// k-step kk: 16 columns = 32 bytes inside chunk kk / 4. Moving the start address inside a
// swizzle atom is allowed: the swizzle XOR uses address bits [7:9], unchanged.
template <int N, int kDepth, bool kBf16>
__device__ __forceinline__ void wgmma_ss_kmajor(float (&acc)[N / 2], uint32_t a, uint32_t a_chunk_bytes, uint32_t b,
                                                uint32_t b_chunk_bytes) {
#pragma unroll
    for (int kk = 0; kk < kDepth / 16; ++kk) {
        const uint32_t off_a = (kk / 4) * a_chunk_bytes + (kk % 4) * 32;
        const uint32_t off_b = (kk / 4) * b_chunk_bytes + (kk % 4) * 32;
        const uint64_t desc_a = make_smem_desc(a + off_a, 16, 1024);
        const uint64_t desc_b = make_smem_desc(b + off_b, 16, 1024);
        Wgmma<N>::template ss<kBf16>(acc, desc_a, desc_b, kk > 0 ? 1 : 0);
    }
}

}  // namespace fa_sm90

#endif /* FA_SM90_WGMMA_CUH */
