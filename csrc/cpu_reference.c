/*
 * cpu_reference.c -- the host reference of fa_forward: same semantics, plain C.
 *
 *   q, out: (batch, seqlen_q, heads_q, head_dim); k, v: (batch, seqlen_k, heads_kv, head_dim),
 *   or any sequence layout of common/seqlen.h (packed, used lengths, cache entries, pages);
 *   float16 / bfloat16 / float32 storage with float32 arithmetic, or float64 storage with float64
 *   arithmetic (the same row code over a double scalar type); lse float32 (batch, heads_q,
 *   seqlen_q).
 *
 * It takes every rule from the shared headers of csrc/common/, as the kernels do: the lengths
 * of a batch entry (seqlen.h), the mask (mask.h: bottom-right causal and sliding window), the
 * key-block range of a group of rows (block_range.h), the score hook with the softcap and the
 * row end with a sink (score.h). Rows go in groups of FA_CPU_BLOCK_M; each group visits the
 * key blocks of FA_CPU_BLOCK_N keys that fa_block_range_rows gives it, applies the element
 * mask only on the blocks fa_block_needs_mask names, and runs the kernels' online softmax
 * (running max, rescaled running sum and accumulator; in base 2 as the kernels do, or with
 * natural exponentials in float64). So a wrong block range or a wrong unmasked-block claim
 * shows up here as a wrong answer, in CI, without a GPU.
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
#include "host_elem.h"
#include "kernels/kernels.h"

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

float fa_host_load(const void *base, int64_t idx, fa_dtype dt)
{
    switch (dt) {
    case FA_FLOAT16: return half_to_float(((const uint16_t *)base)[idx]);
    case FA_BFLOAT16: return bf16_to_float(((const uint16_t *)base)[idx]);
    case FA_FLOAT32: return ((const float *)base)[idx];
    case FA_FLOAT64: return (float)((const double *)base)[idx];
    }
    return 0.0f;
}

void fa_host_store(void *base, int64_t idx, fa_dtype dt, float v)
{
    switch (dt) {
    case FA_FLOAT16: ((uint16_t *)base)[idx] = float_to_half(v); break;
    case FA_BFLOAT16: ((uint16_t *)base)[idx] = float_to_bf16(v); break;
    case FA_FLOAT32: ((float *)base)[idx] = v; break;
    case FA_FLOAT64: ((double *)base)[idx] = v; break;
    }
}

double fa_host_load64(const void *base, int64_t idx, fa_dtype dt)
{
    return dt == FA_FLOAT64 ? ((const double *)base)[idx] : (double)fa_host_load(base, idx, dt);
}

void fa_host_store64(void *base, int64_t idx, fa_dtype dt, double v)
{
    if (dt == FA_FLOAT64)
        ((double *)base)[idx] = v;
    else
        fa_host_store(base, idx, dt, (float)v);
}

/* ---- forward ---- */

/* The score hook's constants of one call, for both precisions. The float32 path uses fa_score
 * as the kernels do; the float64 path takes the same rule with its quotient formed in double
 * (softmax_scale / softcap) and its logits as t * row_scale, so that out is exact to float64
 * rounding, as finite differences of it need. */
typedef struct {
    fa_score sc;
    int softcap;          /* the hook applies tanh (softcap > 0) */
    double softcap_pre64; /* softmax_scale / softcap in double; 0 without a softcap */
} row_rules;

/* Per-precision pieces of the row computation below. f32: the kernels' arithmetic (base-2
 * exponentials with the scale folded in, score.h's finalisation), bit for bit what this
 * reference has always computed for 16-bit and float32 inputs. f64: the same steps in double,
 * with natural exponentials of logit differences. */
static inline float hook_f32(float s, const row_rules *k)
{
    return k->softcap ? tanhf(s * k->sc.softcap_pre) : s;
}

static inline double hook_f64(double s, const row_rules *k)
{
    return k->softcap ? tanh(s * k->softcap_pre64) : s;
}

/* exp(logit difference) of a difference diff <= 0 of hook values. */
static inline float weight_f32(float diff, const row_rules *k)
{
    return exp2f(diff * k->sc.scale_log2);
}

/* No floor on the scale as score.h puts on scale_log2: diff is -inf only next to a +inf score,
 * whose own inf - inf makes the row NaN at any scale. */
static inline double weight_f64(double diff, const row_rules *k)
{
    return exp(diff * (double)k->sc.row_scale);
}

static inline void finalize_f32(float row_max, float row_sum, float sink, const row_rules *k,
                                float *inv, float *lse)
{
    fa_row_finalize(fa_row_max_logit(row_max, &k->sc), row_sum, sink, inv, lse);
}

/* e^(x - top) for x <= top, exact at x == top: fa_exp_below in double. */
static inline double exp_below_f64(double x, double top)
{
    return x == top ? 1.0 : exp(x - top);
}

/* fa_row_finalize's rule (score.h) in double; only lse is rounded, to its float32 storage. */
static inline void finalize_f64(double row_max, double row_sum, float sink, const row_rules *k,
                                double *inv, float *lse)
{
    const double max_logit = row_max == -INFINITY ? -INFINITY : row_max * (double)k->sc.row_scale;
    if (sink == -INFINITY) {
        const int empty = row_sum == 0.0;
        *inv = empty ? 0.0 : 1.0 / row_sum;
        *lse = empty ? -INFINITY : (float)(max_logit + log(row_sum));
        return;
    }
    const double top = max_logit > sink ? max_logit : (double)sink;
    const double keys = row_sum == 0.0 ? 0.0 : exp_below_f64(max_logit, top);
    const double total = row_sum * keys + exp_below_f64(sink, top);
    *inv = keys / total;
    *lse = (float)(top + log(total));
}

/* Scratch of one call, in the precision of the row computation (float, or double for float64
 * inputs): one kv head (shared by the q heads of its group) and one row's working vectors. */
typedef struct {
    void *kf, *vf, *qrow, *acc, *block_acc, *t;
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

/*
 * The row computation over a scalar type T (suffix SFX: the hook_, weight_ and finalize_
 * pieces above, and LOAD / STORE the element access of that precision), defined once and
 * instantiated for float and double:
 *
 * dot_SFX: q . k with eight partial sums: the shape of a SIMD or tensor-core reduction, and
 * rounding that grows with head_dim / 8 rather than head_dim.
 *
 * forward_row_SFX: one query row over the key blocks [r->n_min, r->n_max) of its group. Scores
 * are kept as the hook's t (score.h): logit = t * row_scale. Writes out and lse.
 *
 * forward_kv_head_SFX: kv head hk of batch entry b and the q heads of its group, in groups of
 * FA_CPU_BLOCK_M rows, each visiting the key blocks fa_block_range_rows gives it (as a
 * kernel's row block would); p->interrupt is polled before each group of rows.
 */
#define FA_DEFINE_FORWARD(T, SFX, LOAD, STORE)                                                     \
    static T dot_##SFX(const T *a, const T *b, int n)                                              \
    {                                                                                              \
        T part[8] = {0};                                                                           \
        int d = 0;                                                                                 \
        for (; d + 8 <= n; d += 8)                                                                 \
            for (int i = 0; i < 8; i++)                                                            \
                part[i] += a[d + i] * b[d + i];                                                    \
        for (; d < n; d++)                                                                         \
            part[0] += a[d] * b[d];                                                                \
        return ((part[0] + part[1]) + (part[2] + part[3])) +                                       \
               ((part[4] + part[5]) + (part[6] + part[7]));                                        \
    }                                                                                              \
                                                                                                   \
    static void forward_row_##SFX(const fa_params *p, const cpu_scratch *w, const fa_mask *m,      \
                                  const fa_block_range *r, const row_rules *k, float sink,         \
                                  const fa_seq_layout *L, const fa_seqlen *e, int b, int h, int i) \
    {                                                                                              \
        const int D = p->head_dim, len_k = e->len_k;                                               \
        const fa_key_span span = fa_mask_row(m, i);                                                \
        const T *qrow = w->qrow, *kf = w->kf, *vf = w->vf;                                         \
        T *acc = w->acc, *block_acc = w->block_acc, *tv = w->t;                                    \
        T row_max = -INFINITY, row_sum = 0; /* row_max in units of t */                            \
        memset(acc, 0, sizeof(T) * (size_t)D);                                                     \
        for (int n = r->n_min; n < r->n_max; n++) {                                                \
            const int j0 = n * FA_CPU_BLOCK_N;                                                     \
            const int jn = len_k - j0 < FA_CPU_BLOCK_N ? len_k - j0 : FA_CPU_BLOCK_N;              \
            const int masked = fa_block_needs_mask(r, n);                                          \
            T block_max = -INFINITY;                                                               \
            int any_visible = 0; /* a score that is not -inf (NaN included: it propagates) */      \
            for (int jj = 0; jj < jn; jj++) {                                                      \
                const int j = j0 + jj;                                                             \
                T t;                                                                               \
                if (masked && (j < span.lo || j > span.hi))                                        \
                    t = -INFINITY; /* after the hook: a masked score is never tanh(-inf) */        \
                else                                                                               \
                    t = hook_##SFX(dot_##SFX(qrow, kf + (size_t)j * D, D), k);                     \
                tv[jj] = t;                                                                        \
                any_visible |= t != -INFINITY;                                                     \
                if (t > block_max)                                                                 \
                    block_max = t;                                                                 \
            }                                                                                      \
            if (!any_visible)                                                                      \
                continue; /* every key of this block is hidden from this row */                    \
            const T new_max = block_max > row_max ? block_max : row_max;                           \
            /* Differences first, then the scale: (t - m) * scale <= 0 cannot overflow at any      \
             * finite scale. As in the kernels, this block's P V is summed on its own, then        \
             * added to the running accumulator rescaled to the new max. */                        \
            const T correction =                                                                   \
                row_max == -INFINITY ? (T)0 : weight_##SFX(row_max - new_max, k);                  \
            T block_sum = 0;                                                                       \
            memset(block_acc, 0, sizeof(T) * (size_t)D);                                           \
            for (int jj = 0; jj < jn; jj++) {                                                      \
                if (tv[jj] == -INFINITY)                                                           \
                    continue;                                                                      \
                const T pj = weight_##SFX(tv[jj] - new_max, k);                                    \
                const T *vrow = vf + (size_t)(j0 + jj) * D;                                        \
                block_sum += pj;                                                                   \
                for (int d = 0; d < D; d++)                                                        \
                    block_acc[d] += pj * vrow[d];                                                  \
            }                                                                                      \
            row_sum = row_sum * correction + block_sum;                                            \
            for (int d = 0; d < D; d++)                                                            \
                acc[d] = acc[d] * correction + block_acc[d];                                       \
            row_max = new_max;                                                                     \
        }                                                                                          \
        T inv;                                                                                     \
        float lse;                                                                                 \
        finalize_##SFX(row_max, row_sum, sink, k, &inv, &lse);                                     \
        const int64_t o = fa_q_row_offset(e, b, i, p->o_batch_stride, p->o_row_stride) +           \
                          h * p->o_head_stride;                                                    \
        for (int d = 0; d < D; d++)                                                                \
            STORE(p->out, o + d, p->dtype, acc[d] * inv); /* empty row: 0 * 0 */                   \
        if (p->lse)                                                                                \
            p->lse[fa_lse_index(L, e, b, p->heads_q, h, i)] = lse;                                 \
    }                                                                                              \
                                                                                                   \
    static fa_status forward_kv_head_##SFX(const fa_params *p, const cpu_scratch *w,               \
                                           const fa_mask *m, const row_rules *k,                   \
                                           const fa_seq_layout *L, const fa_seqlen *e, int b,      \
                                           int hk)                                                 \
    {                                                                                              \
        const int D = p->head_dim, group = p->heads_q / p->heads_kv;                               \
        T *kf = w->kf, *vf = w->vf, *qrow = w->qrow;                                               \
        for (int j = 0; j < m->len_k; j++)                                                         \
            for (int d = 0; d < D; d++) {                                                          \
                kf[(size_t)j * D + d] = LOAD(                                                      \
                    p->k,                                                                          \
                    fa_k_row_offset(L, e, b, j, p->k_batch_stride, p->k_row_stride) +              \
                        hk * p->k_head_stride + d,                                                 \
                    p->dtype);                                                                     \
                vf[(size_t)j * D + d] = LOAD(                                                      \
                    p->v,                                                                          \
                    fa_k_row_offset(L, e, b, j, p->v_batch_stride, p->v_row_stride) +              \
                        hk * p->v_head_stride + d,                                                 \
                    p->dtype);                                                                     \
            }                                                                                      \
        for (int h = hk * group; h < (hk + 1) * group; h++) {                                      \
            const float sink = fa_sink(p->sinks, h);                                               \
            for (int i0 = 0; i0 < m->len_q; i0 += FA_CPU_BLOCK_M) {                                \
                const int i1 = fa_imin(m->len_q, i0 + FA_CPU_BLOCK_M);                             \
                if (p->interrupt && p->interrupt(p->interrupt_ctx))                                \
                    return fa_fail(FA_ERR_INTERRUPTED, "host reference: interrupted");             \
                const fa_block_range r = fa_block_range_rows(m, i0, i1, FA_CPU_BLOCK_N);           \
                for (int i = i0; i < i1; i++) {                                                    \
                    for (int d = 0; d < D; d++)                                                    \
                        qrow[d] = LOAD(p->q,                                                       \
                                       fa_q_row_offset(e, b, i, p->q_batch_stride,                 \
                                                       p->q_row_stride) +                          \
                                           h * p->q_head_stride + d,                               \
                                       p->dtype);                                                  \
                    forward_row_##SFX(p, w, m, &r, k, sink, L, e, b, h, i);                        \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        return FA_OK;                                                                              \
    }

FA_DEFINE_FORWARD(float, f32, fa_host_load, fa_host_store)
FA_DEFINE_FORWARD(double, f64, fa_host_load64, fa_host_store64)

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
    const int wide = p->dtype == FA_FLOAT64; /* float64 inputs compute in double */
    const size_t es = wide ? sizeof(double) : sizeof(float);
    row_rules k;
    k.sc = fa_score_make(p->softmax_scale, p->softcap);
    k.softcap = p->softcap > 0.0f;
    k.softcap_pre64 = k.softcap ? (double)p->softmax_scale / (double)p->softcap : 0.0;
    cpu_scratch w;
    w.kf = malloc(es * ((size_t)p->seqlen_k * D + 1));
    w.vf = malloc(es * ((size_t)p->seqlen_k * D + 1));
    w.qrow = malloc(es * (size_t)D);
    w.acc = malloc(es * (size_t)D);
    w.block_acc = malloc(es * (size_t)D);
    w.t = malloc(es * FA_CPU_BLOCK_N);
    if (!w.kf || !w.vf || !w.qrow || !w.acc || !w.block_acc || !w.t) {
        s = fa_fail(FA_ERR_OUT_OF_MEMORY,
                    "host reference: out of memory for one kv head of %d keys x %d (%s k "
                    "and v, %zu bytes)",
                    p->seqlen_k, D, wide ? "float64" : "float32",
                    2 * es * (size_t)p->seqlen_k * D);
        goto done;
    }

    const fa_seq_layout layout = fa_seq_layout_of(p);
    for (int b = 0; b < p->batch; b++) {
        const fa_seqlen len = fa_seqlen_at(&layout, b);
        const fa_mask m = fa_mask_make(len.len_q, len.len_k, p->window_left, p->window_right,
                                       p->causal);
        for (int hk = 0; hk < p->heads_kv; hk++) {
            if (p->interrupt && p->interrupt(p->interrupt_ctx)) {
                s = fa_fail(FA_ERR_INTERRUPTED, "host reference: interrupted");
                goto done;
            }
            s = wide ? forward_kv_head_f64(p, &w, &m, &k, &layout, &len, b, hk)
                     : forward_kv_head_f32(p, &w, &m, &k, &layout, &len, b, hk);
            if (s != FA_OK)
                goto done;
        }
    }
    s = FA_OK;
done:
    scratch_free(&w);
    return s;
}
