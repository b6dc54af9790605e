/*
 * sm80_softmax.cuh -- one warp's work on one sub-block of SUB_N keys: S = Q K^T (qk), the
 * head_dim-split exchange (exchange_s), then score hook, mask, online softmax and O += P V in
 * one function (attend) that every call site of the main loop uses.
 *
 *   S[16 x SUB_N]  = Q[16 x WARP_DIM] K[SUB_N x WARP_DIM]^T            (fp32, C fragments)
 *   t              = S, or tanh(S * softcap_pre)                        (score.h, before mask)
 *   t              = -inf where mask.h hides the key (masked blocks only)
 *   m'             = max(m, rowmax t);   O, l *= exp2((m - m') * scale_log2)
 *   P              = exp2(t * scale_log2 - m' * scale_log2);   l += rowsum P (this lane's part)
 *   O             += P V[SUB_N x WARP_DIM]                              (P as 16-bit A operand)
 * Row sums stay per lane until the epilogue (rescaling is linear); a row with no visible key
 * yet keeps m = -inf and subtracts 0 instead, so -inf - -inf never happens.
 */
#ifndef FA_SM80_SOFTMAX_CUH
#define FA_SM80_SOFTMAX_CUH

#include "sm80_config.cuh"

namespace fa_sm80 {

/* A warp's running state: O, running max (in units of t) and partial row sums, for rows g
   ([0]) and g + 8 ([1]). */
template <class C>
struct RowState {
    float o[C::kOTiles][4];
    float m[2], l[2];

    __device__ __forceinline__ void init()
    {
#pragma unroll
        for (int t = 0; t < C::kOTiles; ++t)
            o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
        m[0] = m[1] = -INFINITY;
        l[0] = l[1] = 0.f;
    }
};

/* S = Q K^T over this warp's head_dim columns for the kSubN keys at k_rows. k16 steps
   outermost: every S tile is an independent accumulator chain, so kSTiles mmas are in flight
   between dependent ones. k_lane_off: see the kernel's ldmatrix offsets. */
template <class C, bool BF16>
__device__ __forceinline__ void qk(float (&s)[C::kSTiles][4], const uint32_t (&q)[C::kQSteps][4],
                                   uint32_t k_rows, uint32_t k_lane_off)
{
#pragma unroll
    for (int t = 0; t < C::kSTiles; ++t)
        s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < C::kQSteps; ++ks) {
#pragma unroll
        for (int n = 0; n < C::kSTiles / 2; ++n) {
            uint32_t b[4];
            ldmatrix_x4(b, k_rows + (k_lane_off ^ ((ks & 3) << 5)) + (ks >> 2) * 128 +
                               n * 16 * C::kRowBytes);
            mma_m16n8k16<BF16>(s[2 * n], q[ks], b[0], b[1]);
            mma_m16n8k16<BF16>(s[2 * n + 1], q[ks], b[2], b[3]);
        }
    }
}

/* D_SPLIT 2: each warp of a pair holds S over half of head_dim, in the same fragment layout;
   the halves are swapped through smem. a + b == b + a exactly, so both warps get the same S
   and make identical softmax decisions. The next write to this buffer follows the next
   __syncthreads, by when the partner has read it. */
template <class C>
__device__ __forceinline__ void exchange_s(float (&s)[C::kSTiles][4], unsigned char *smem,
                                           int warp, int lane, int row_group)
{
    if constexpr (C::kDS == 2) {
        float4 *xchg = reinterpret_cast<float4 *>(smem + C::kXchgOffset);
        float4 *mine = xchg + warp * (C::kSTiles * 32);
        const float4 *theirs = xchg + (warp ^ 1) * (C::kSTiles * 32);
#pragma unroll
        for (int t = 0; t < C::kSTiles; ++t)
            mine[t * 32 + lane] = make_float4(s[t][0], s[t][1], s[t][2], s[t][3]);
        bar_sync(1 + row_group, 2 * FA_WARP_SIZE);
#pragma unroll
        for (int t = 0; t < C::kSTiles; ++t) {
            const float4 other = theirs[t * 32 + lane];
            s[t][0] += other.x;
            s[t][1] += other.y;
            s[t][2] += other.z;
            s[t][3] += other.w;
        }
    }
}

/* A pair with nothing to compute in a sub-block still meets at its exchange barrier, so every
   warp passes the same barriers in the same order. Skipping it is harmless on the hardware
   (the pair skips together), but racecheck then pairs accesses across a later __syncthreads
   (it reported the epilogue's O staging racing with its read). */
template <class C>
__device__ __forceinline__ void exchange_skip(int row_group)
{
    if constexpr (C::kDS == 2)
        bar_sync(1 + row_group, 2 * FA_WARP_SIZE);
}

/* The score hook (SOFTCAP: tanh(s * softcap_pre)), then -inf where mask.h hides the key when
   the block is masked (fa_block_needs_mask) for the CTA's batch entry, which `masks`
   (EntryMask) gives here, where it is used; row_lo: this lane's row g (query row within the
   entry), key_lo: this lane's first key column 2t (key within the entry). c0, c1 are keys
   2t, 2t+1 of row g; c2, c3 the same keys of row g + 8. The spans, and the lengths they come
   from, are computed here rather than kept across the loop (or across Q K^T): registers are
   the scarce resource. */
template <class C, fa_mask_kind MASK, bool SOFTCAP, class Masks>
__device__ __forceinline__ void hook_and_mask(float (&s)[C::kSTiles][4], bool masked, const Args &p,
                                              const Masks &masks, int row_lo, int key_lo)
{
    if constexpr (SOFTCAP) {
#pragma unroll
        for (int t = 0; t < C::kSTiles; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                s[t][e] = tanh_approx_f32(s[t][e] * p.score.softcap_pre);
    }
    if (masked) {
        const fa_mask mask = masks.template get<MASK>(p);
        const fa_key_span span_lo = fa_mask_row(&mask, row_lo);
        const fa_key_span span_hi = fa_mask_row(&mask, row_lo + 8);
#pragma unroll
        for (int t = 0; t < C::kSTiles; ++t) {
            const int key = key_lo + t * 8;
            if (!key_visible<MASK>(span_lo, key)) s[t][0] = -INFINITY;
            if (!key_visible<MASK>(span_lo, key + 1)) s[t][1] = -INFINITY;
            if (!key_visible<MASK>(span_hi, key)) s[t][2] = -INFINITY;
            if (!key_visible<MASK>(span_hi, key + 1)) s[t][3] = -INFINITY;
        }
    }
}

/* The online softmax over one sub-block: the new row max over the quad of lanes sharing a
   row, O and l rescaled when it moved, then s = P = exp2(s scale_log2 - max scale_log2) and
   l += its row sums (this lane's share). */
template <class C>
__device__ __forceinline__ void online_softmax(float (&s)[C::kSTiles][4], RowState<C> &st, float scale_log2)
{
    float mx[2], base[2];
    bool moved = false;
    mx[0] = st.m[0];
    mx[1] = st.m[1];
#pragma unroll
    for (int t = 0; t < C::kSTiles; ++t) {
        mx[0] = fmaxf(mx[0], fmaxf(s[t][0], s[t][1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[t][2], s[t][3]));
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        base[h] = (mx[h] == -INFINITY) ? 0.f : mx[h] * scale_log2;
        moved |= mx[h] != st.m[h];
    }
    /* Once the maxima settle most sub-blocks move none of the warp's rows; the rescale (a
       multiply by exactly 1 then) is skipped warp-uniformly. */
    if (__any_sync(0xffffffffu, moved)) {
        const float corr_lo = exp2f(st.m[0] * scale_log2 - base[0]);
        const float corr_hi = exp2f(st.m[1] * scale_log2 - base[1]);
        st.l[0] *= corr_lo;
        st.l[1] *= corr_hi;
#pragma unroll
        for (int t = 0; t < C::kOTiles; ++t) {
            st.o[t][0] *= corr_lo;
            st.o[t][1] *= corr_lo;
            st.o[t][2] *= corr_hi;
            st.o[t][3] *= corr_hi;
        }
    }
    st.m[0] = mx[0];
    st.m[1] = mx[1];
#pragma unroll
    for (int t = 0; t < C::kSTiles; ++t) {
        s[t][0] = exp2f(fmaf(s[t][0], scale_log2, -base[0]));
        s[t][1] = exp2f(fmaf(s[t][1], scale_log2, -base[0]));
        s[t][2] = exp2f(fmaf(s[t][2], scale_log2, -base[1]));
        s[t][3] = exp2f(fmaf(s[t][3], scale_log2, -base[1]));
        st.l[0] += s[t][0] + s[t][1];
        st.l[1] += s[t][2] + s[t][3];
    }
}

/* O += P V over this warp's head_dim columns, P packed to 16-bit A fragments (key tiles 2k,
   2k+1 of the C layout are the k16 A layout); v_lane_off: see the kernel. */
template <class C, bool BF16>
__device__ __forceinline__ void accumulate_pv(const float (&s)[C::kSTiles][4], RowState<C> &st, uint32_t v_rows,
                                              uint32_t v_lane_off)
{
    uint32_t p_frag[C::kPSteps][4];
#pragma unroll
    for (int k = 0; k < C::kPSteps; ++k) {
        p_frag[k][0] = pack2<BF16>(s[2 * k][0], s[2 * k][1]);
        p_frag[k][1] = pack2<BF16>(s[2 * k][2], s[2 * k][3]);
        p_frag[k][2] = pack2<BF16>(s[2 * k + 1][0], s[2 * k + 1][1]);
        p_frag[k][3] = pack2<BF16>(s[2 * k + 1][2], s[2 * k + 1][3]);
    }
#pragma unroll
    for (int k = 0; k < C::kPSteps; ++k)
#pragma unroll
        for (int n = 0; n < C::kOTiles / 2; ++n) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, v_rows + (v_lane_off ^ ((n & 3) << 5)) + (n >> 2) * 128 +
                                     k * 16 * C::kRowBytes);
            mma_m16n8k16<BF16>(st.o[2 * n], p_frag[k], b[0], b[1]);
            mma_m16n8k16<BF16>(st.o[2 * n + 1], p_frag[k], b[2], b[3]);
        }
}

/* Score hook, mask, online softmax and O += P V for one sub-block (see the top of the file).
   Rows past the entry's len_q get whatever span mask.h gives them and are never stored. */
template <class C, bool BF16, fa_mask_kind MASK, bool SOFTCAP, class Masks>
__device__ __forceinline__ void attend(float (&s)[C::kSTiles][4], RowState<C> &st, bool masked,
                                       const Args &p, const Masks &masks, int row_lo, int key_lo,
                                       uint32_t v_rows, uint32_t v_lane_off)
{
    hook_and_mask<C, MASK, SOFTCAP>(s, masked, p, masks, row_lo, key_lo);
    online_softmax<C>(s, st, p.score.scale_log2);
    accumulate_pv<C, BF16>(s, st, v_rows, v_lane_off);
}

} /* namespace fa_sm80 */

#endif /* FA_SM80_SOFTMAX_CUH */
