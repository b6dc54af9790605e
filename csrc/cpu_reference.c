/*
 * cpu_reference.c -- the host reference of fa_forward: same semantics, plain C.
 *
 *   q, out: (batch, seqlen_q, heads_q, head_dim); k, v: (batch, seqlen_k, heads_kv, head_dim);
 *   float16 / bfloat16 / float32 storage, float32 arithmetic; lse float32 (batch, heads_q, seqlen_q).
 *
 * It walks keys in blocks of FA_CPU_BLOCK_N with the online softmax the kernels use (running
 * max, rescaled running sum and accumulator), so it exercises the same recurrence, the same
 * bottom-right causal rule and the same empty-row convention (out = 0, lse = -inf). Blocking,
 * single-threaded; the Python layer releases the GIL around it. Reached only by an explicit
 * device="cpu": it is not a fallback for the GPU.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fa_internal.h"

#define FA_CPU_BLOCK_N 64

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

fa_status fa_forward_cpu(const fa_params *p)
{
    fa_status s = fa_check_params(p, 0);
    if (s != FA_OK)
        return s;
    if (fa_params_empty(p))
        return FA_OK;

    const int D = p->head_dim, Sq = p->seqlen_q, Sk = p->seqlen_k;
    const int group = p->heads_q / p->heads_kv;
    /* One kv head converted to float32 once, shared by the `group` q heads that read it. */
    float *kf = malloc(sizeof(float) * ((size_t)Sk * D + 1));
    float *vf = malloc(sizeof(float) * ((size_t)Sk * D + 1));
    float *qrow = malloc(sizeof(float) * (size_t)D);
    float *acc = malloc(sizeof(float) * (size_t)D);
    float *block_acc = malloc(sizeof(float) * (size_t)D);
    float *scores = malloc(sizeof(float) * FA_CPU_BLOCK_N);
    if (!kf || !vf || !qrow || !acc || !block_acc || !scores) {
        s = fa_fail(FA_ERR_INVALID_ARGUMENT, "host reference: out of memory for %d keys x %d",
                    Sk, D);
        goto done;
    }

    for (int b = 0; b < p->batch; b++) {
        for (int hk = 0; hk < p->heads_kv; hk++) {
            for (int j = 0; j < Sk; j++)
                for (int d = 0; d < D; d++) {
                    kf[(size_t)j * D + d] = load_elem(
                        p->k, b * p->k_batch_stride + j * p->k_row_stride + hk * p->k_head_stride + d,
                        p->dtype);
                    vf[(size_t)j * D + d] = load_elem(
                        p->v, b * p->v_batch_stride + j * p->v_row_stride + hk * p->v_head_stride + d,
                        p->dtype);
                }
            for (int h = hk * group; h < (hk + 1) * group; h++) {
                for (int i = 0; i < Sq; i++) {
                    for (int d = 0; d < D; d++)
                        qrow[d] = load_elem(p->q,
                                            b * p->q_batch_stride + i * p->q_row_stride +
                                                h * p->q_head_stride + d,
                                            p->dtype);
                    /* Bottom-right causal: keys 0 .. i + Sk - Sq are visible. */
                    int64_t last = p->causal ? (int64_t)i + Sk - Sq : (int64_t)Sk - 1;
                    int n_visible = last < 0 ? 0 : (last >= Sk ? Sk : (int)last + 1);
                    float row_max = -INFINITY, row_sum = 0.0f;
                    memset(acc, 0, sizeof(float) * (size_t)D);
                    for (int j0 = 0; j0 < n_visible; j0 += FA_CPU_BLOCK_N) {
                        int jn = n_visible - j0 < FA_CPU_BLOCK_N ? n_visible - j0 : FA_CPU_BLOCK_N;
                        float block_max = -INFINITY;
                        for (int jj = 0; jj < jn; jj++) {
                            scores[jj] = dot(qrow, kf + (size_t)(j0 + jj) * D, D) * p->softmax_scale;
                            if (scores[jj] > block_max)
                                block_max = scores[jj];
                        }
                        float new_max = block_max > row_max ? block_max : row_max;
                        /* As in the kernels: this block's P V is summed on its own, then added
                         * to the running accumulator rescaled to the new max. */
                        float correction = row_max == -INFINITY ? 0.0f : expf(row_max - new_max);
                        float block_sum = 0.0f;
                        memset(block_acc, 0, sizeof(float) * (size_t)D);
                        for (int jj = 0; jj < jn; jj++) {
                            float pj = expf(scores[jj] - new_max);
                            const float *vrow = vf + (size_t)(j0 + jj) * D;
                            block_sum += pj;
                            for (int d = 0; d < D; d++)
                                block_acc[d] += pj * vrow[d];
                        }
                        row_sum = row_sum * correction + block_sum;
                        for (int d = 0; d < D; d++)
                            acc[d] = acc[d] * correction + block_acc[d];
                        row_max = new_max;
                    }
                    int empty = n_visible == 0;
                    float inv = empty ? 0.0f : 1.0f / row_sum;
                    int64_t o = b * p->o_batch_stride + i * p->o_row_stride + h * p->o_head_stride;
                    for (int d = 0; d < D; d++)
                        store_elem(p->out, o + d, p->dtype, empty ? 0.0f : acc[d] * inv);
                    if (p->lse)
                        p->lse[((int64_t)b * p->heads_q + h) * Sq + i] =
                            empty ? -INFINITY : row_max + logf(row_sum);
                }
            }
        }
    }
    s = FA_OK;
done:
    free(kf);
    free(vf);
    free(qrow);
    free(acc);
    free(block_acc);
    free(scores);
    return s;
}
