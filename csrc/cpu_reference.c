/*
 * cpu_reference.c -- the host reference of fa_forward: same semantics, plain C.
 *
 *   q, out: (batch, seqlen_q, heads_q, head_dim); k, v: (batch, seqlen_k, heads_kv, head_dim);
 *   float16 / bfloat16 / float32 storage, float32 arithmetic; lse float32 (batch, heads_q, seqlen_q).
 *
 * It takes every rule from the shared headers of csrc/common/, as the kernels do: the lengths
 * of a batch entry (seqlen.h), the mask (mask.h: bottom-right causal and sliding window), the
 * key-block range of a group of rows (block_range.h), the score hook with the softcap and the
 * row end with a sink (score.h). Rows go in groups of FA_CPU_BLOCK_M; each group visits the
 * key blocks of FA_CPU_BLOCK_N keys that fa_block_range_rows gives it, applies the element
 * mask only on the blocks fa_block_needs_mask names, and runs the kernels' online softmax in
 * base 2 (running max, rescaled running sum and accumulator). So a wrong block range or a
 * wrong unmasked-block claim shows up here as a wrong answer, in CI, without a GPU.
 *
 * Blocking, single-threaded; the Python layer releases the GIL around it and may stop it
 * through p->interrupt, polled before each group of rows. Reached only by an explicit
 * device="cpu": it is not a fallback for the GPU.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/block_range.h"
#include "common/mask.h"
#include "common/score.h"
#include "common/seqlen.h"
#include "fa_internal.h"

#define FA_CPU_BLOCK_M 64 /* rows per group: one interrupt poll and one block range each */
#define FA_CPU_BLOCK_N 64 /* keys per online-softmax step */

/* ---- 16-bit float conversions (round to nearest even, NaN kept quiet) ---- */

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: renormalize */
            int e = -1;
            do {
                e++;
                mant <<= 1;
            } while (!(mant & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
        }
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static uint16_t float_to_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan */
        return sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0);
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return sign | 0x7c00;
    if (absx < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        if (absx < 0x33000000u)
            return sign;
        uint32_t e = absx >> 23;
        uint32_t m = (absx & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* value = m * 2^(e-150), subnormal unit 2^-24 */
        uint32_t h = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (h & 1)))
            h++;
        return sign | (uint16_t)h;
    }
    uint32_t h = ((absx >> 13) - ((127 - 15) << 10));
    uint32_t rem = absx & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++;
    return sign | (uint16_t)h;
}

static float bf16_to_float(uint16_t b)
{
    uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static uint16_t float_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

static float load_elem(const void *base, int64_t idx, fa_dtype dt)
{
    switch (dt) {
    case FA_FLOAT16: return half_to_float(((const uint16_t *)base)[idx]);
    case FA_BFLOAT16: return bf16_to_float(((const uint16_t *)base)[idx]);
    case FA_FLOAT32: return ((const float *)base)[idx];
    }
    return 0.0f;
}

static void store_elem(void *base, int64_t idx, fa_dtype dt, float v)
{
    switch (dt) {
    case FA_FLOAT16: ((uint16_t *)base)[idx] = float_to_half(v); break;
    case FA_BFLOAT16: ((uint16_t *)base)[idx] = float_to_bf16(v); break;
    case FA_FLOAT32: ((float *)base)[idx] = v; break;
    }
}

/* ---- forward ---- */

/* q . k with eight partial sums: the shape of a SIMD or tensor-core reduction, and float32
 * rounding that grows with head_dim / 8 rather than head_dim. */
static float dot(const float *a, const float *b, int n)
{
    float part[8] = {0};
    int d = 0;
    for (; d + 8 <= n; d += 8)
        for (int i = 0; i < 8; i++)
            part[i] += a[d + i] * b[d + i];
    for (; d < n; d++)
        part[0] += a[d] * b[d];
    return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

/* Scratch of one call: one kv head in float32 (shared by the q heads of its group) and one
 * row's working vectors. */
typedef struct {
    float *kf, *vf, *qrow, *acc, *block_acc, *t;
} cpu_scratch;

static void scratch_free(cpu_scratch *w)
{
    free(w->kf);
    free(w->vf);
    free(w->qrow);
    free(w->acc);
    free(w->block_acc);
    free(w->t);
}

/* One query row over the key blocks [r->n_min, r->n_max) of its group. Scores are kept as
 * the hook's t (score.h): logit * log2(e) = t * scale_log2. softcap says whether the hook
 * applies tanh (softcap_pre is 0 both without a softcap and with one at softmax_scale 0).
 * Writes out and lse. */
static void forward_row(const fa_params *p, const cpu_scratch *w, const fa_mask *m,
                        const fa_block_range *r, fa_score sc, int softcap, float sink,
                        int len_k, int b, int h, int i)
{
    const int D = p->head_dim;
    const fa_key_span span = fa_mask_row(m, i);
    float row_max = -INFINITY, row_sum = 0.0f; /* row_max in units of t */
    memset(w->acc, 0, sizeof(float) * (size_t)D);
    for (int n = r->n_min; n < r->n_max; n++) {
        const int j0 = n * FA_CPU_BLOCK_N;
        const int jn = len_k - j0 < FA_CPU_BLOCK_N ? len_k - j0 : FA_CPU_BLOCK_N;
        const int masked = fa_block_needs_mask(r, n);
        float block_max = -INFINITY;
        int any_visible = 0; /* a score that is not -inf (NaN included: it must propagate) */
        for (int jj = 0; jj < jn; jj++) {
            const int j = j0 + jj;
            float t;
            if (masked && (j < span.lo || j > span.hi)) {
                t = -INFINITY; /* after the hook: a masked score is never tanh(-inf) */
            } else {
                const float s = dot(w->qrow, w->kf + (size_t)j * D, D);
                t = softcap ? tanhf(s * sc.softcap_pre) : s;
            }
            w->t[jj] = t;
            any_visible |= t != -INFINITY;
            if (t > block_max)
                block_max = t;
        }
        if (!any_visible)
            continue; /* every key of this block is hidden from this row */
        const float new_max = block_max > row_max ? block_max : row_max;
        /* Differences first, then the scale: (t - m) * scale_log2 <= 0 cannot overflow at any
         * finite scale. As in the kernels, this block's P V is summed on its own, then added
         * to the running accumulator rescaled to the new max. */
        const float correction =
            row_max == -INFINITY ? 0.0f : exp2f((row_max - new_max) * sc.scale_log2);
        float block_sum = 0.0f;
        memset(w->block_acc, 0, sizeof(float) * (size_t)D);
        for (int jj = 0; jj < jn; jj++) {
            if (w->t[jj] == -INFINITY)
                continue;
            const float pj = exp2f((w->t[jj] - new_max) * sc.scale_log2);
            const float *vrow = w->vf + (size_t)(j0 + jj) * D;
            block_sum += pj;
            for (int d = 0; d < D; d++)
                w->block_acc[d] += pj * vrow[d];
        }
        row_sum = row_sum * correction + block_sum;
        for (int d = 0; d < D; d++)
            w->acc[d] = w->acc[d] * correction + w->block_acc[d];
        row_max = new_max;
    }
    float inv, lse;
    fa_row_finalize(fa_row_max_logit(row_max, &sc), row_sum, sink, &inv, &lse);
    const int64_t o = b * p->o_batch_stride + i * p->o_row_stride + h * p->o_head_stride;
    for (int d = 0; d < D; d++)
        store_elem(p->out, o + d, p->dtype, w->acc[d] * inv); /* empty row: 0 * 0 */
    if (p->lse)
        p->lse[((int64_t)b * p->heads_q + h) * p->seqlen_q + i] = lse;
}

fa_status fa_forward_cpu(const fa_params *caller)
{
    fa_params resolved;
    fa_status s = fa_params_resolve(caller, &resolved);
    if (s != FA_OK)
        return s;
    const fa_params *p = &resolved;
    if ((s = fa_check_params(p, 0)) != FA_OK)
        return s;
    if (fa_params_empty(p))
        return FA_OK;

    const int D = p->head_dim;
    const int group = p->heads_q / p->heads_kv;
    const fa_score sc = fa_score_make(p->softmax_scale, p->softcap);
    cpu_scratch w;
    w.kf = malloc(sizeof(float) * ((size_t)p->seqlen_k * D + 1));
    w.vf = malloc(sizeof(float) * ((size_t)p->seqlen_k * D + 1));
    w.qrow = malloc(sizeof(float) * (size_t)D);
    w.acc = malloc(sizeof(float) * (size_t)D);
    w.block_acc = malloc(sizeof(float) * (size_t)D);
    w.t = malloc(sizeof(float) * FA_CPU_BLOCK_N);
    if (!w.kf || !w.vf || !w.qrow || !w.acc || !w.block_acc || !w.t) {
        s = fa_fail(FA_ERR_OUT_OF_MEMORY,
                    "host reference: out of memory for one kv head of %d keys x %d (float32 k "
                    "and v, %zu bytes)",
                    p->seqlen_k, D, 2 * sizeof(float) * (size_t)p->seqlen_k * D);
        goto done;
    }

    for (int b = 0; b < p->batch; b++) {
        const fa_seqlen len = fa_seqlen_of(b, p->seqlen_q, p->seqlen_k, p->cu_seqlens_q,
                                           p->cu_seqlens_k);
        const fa_mask m = fa_mask_make(len.len_q, len.len_k, p->window_left, p->window_right,
                                       p->causal);
        for (int hk = 0; hk < p->heads_kv; hk++) {
            if (p->interrupt && p->interrupt(p->interrupt_ctx)) {
                s = fa_fail(FA_ERR_INTERRUPTED, "host reference: interrupted");
                goto done;
            }
            for (int j = 0; j < len.len_k; j++)
                for (int d = 0; d < D; d++) {
                    w.kf[(size_t)j * D + d] = load_elem(
                        p->k, b * p->k_batch_stride + j * p->k_row_stride + hk * p->k_head_stride + d,
                        p->dtype);
                    w.vf[(size_t)j * D + d] = load_elem(
                        p->v, b * p->v_batch_stride + j * p->v_row_stride + hk * p->v_head_stride + d,
                        p->dtype);
                }
            for (int h = hk * group; h < (hk + 1) * group; h++) {
                const float sink = fa_sink(p->sinks, h);
                for (int i0 = 0; i0 < len.len_q; i0 += FA_CPU_BLOCK_M) {
                    const int i1 = fa_imin(len.len_q, i0 + FA_CPU_BLOCK_M);
                    if (p->interrupt && p->interrupt(p->interrupt_ctx)) {
                        s = fa_fail(FA_ERR_INTERRUPTED, "host reference: interrupted");
                        goto done;
                    }
                    /* The key blocks this group of rows visits, as a kernel's row block would. */
                    const fa_block_range r = fa_block_range_rows(&m, i0, i1, FA_CPU_BLOCK_N);
                    for (int i = i0; i < i1; i++) {
                        for (int d = 0; d < D; d++)
                            w.qrow[d] = load_elem(p->q,
                                                  b * p->q_batch_stride + i * p->q_row_stride +
                                                      h * p->q_head_stride + d,
                                                  p->dtype);
                        forward_row(p, &w, &m, &r, sc, p->softcap > 0.0f, sink, len.len_k, b,
                                    h, i);
                    }
                }
            }
        }
    }
    s = FA_OK;
done:
    scratch_free(&w);
    return s;
}
