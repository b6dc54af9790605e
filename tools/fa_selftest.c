/*
 * fa_selftest.c -- flashattn_c's C API from a plain C program (no Python): every kernel family
 * built for this GPU against the host reference (fa_forward_cpu) on awkward shapes, then an
 * optional timing of a few large shapes.
 *
 * Checks per case: no element left unwritten (output poisoned with NaN first), nothing written
 * past the end (guard words), |gpu - ref| within a 16-bit tolerance of the output scale, lse
 * within 1e-3 (and -inf exactly where the reference has it), two runs bitwise equal.
 *
 *   build: tools/build_selftest.sh   (links the objects setup.py compiled into build/)
 *   run:   tools/fa_selftest [--family sm80|sm90] [--bench] [--reps N]
 * Exit status 0 when every case passes.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flashattn.h"

#define CHECK_CUDA(call)                                                                   \
    do {                                                                                   \
        cudaError_t e_ = (call);                                                           \
        if (e_ != cudaSuccess) {                                                           \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                  \
                    cudaGetErrorString(e_));                                               \
            exit(2);                                                                       \
        }                                                                                  \
    } while (0)

typedef struct {
    int batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, causal;
    int sdpa_layout; /* q/k/v stored (batch, heads, seq, dim) and passed with strides */
    float q_scale;   /* inputs x5 stress the softmax */
} test_case;

static const test_case cases[] = {
    {1, 1, 1, 1, 1, 64, 0, 0, 1.f},       {1, 17, 17, 2, 1, 64, 1, 0, 1.f},
    {2, 113, 203, 4, 2, 128, 0, 0, 1.f},  {2, 113, 203, 4, 2, 128, 1, 1, 1.f},
    {1, 239, 1, 2, 2, 64, 1, 0, 1.f},     {1, 1, 239, 2, 2, 64, 1, 0, 1.f},
    {2, 799, 3, 2, 1, 128, 0, 0, 5.f},    {1, 1024, 1023, 2, 2, 128, 1, 0, 1.f},
    {1, 1025, 1025, 2, 1, 256, 1, 1, 1.f}, {3, 129, 129, 6, 2, 256, 0, 0, 5.f},
    {1, 127, 127, 8, 1, 40, 1, 0, 1.f},   {2, 200, 300, 3, 3, 72, 0, 1, 1.f},
    {1, 5, 0, 1, 1, 64, 0, 0, 1.f},       {9, 64, 64, 2, 2, 64, 1, 0, 1.f},
    {1, 300, 200, 2, 1, 128, 1, 0, 1.f},  {2, 257, 257, 4, 4, 200, 1, 0, 1.f},
};

/* ---- host data ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double uniform01(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return ((rng_state >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
static float normal(void)
{
    return (float)(sqrt(-2.0 * log(uniform01())) * cos(6.283185307179586 * uniform01()));
}

static uint16_t to_bits(float f, fa_dtype dt)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if (dt == FA_BFLOAT16)
        return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
    /* float16 for |f| in the normal range of the inputs used here (|f| < 60) */
    uint32_t sign = (x >> 16) & 0x8000, a = x & 0x7fffffff;
    if (a < 0x38800000u)
        return (uint16_t)sign; /* flush tiny values: inputs are N(0,1)-scale */
    uint32_t h = (a >> 13) - (112u << 10), rem = a & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

static float from_bits(uint16_t b, fa_dtype dt)
{
    uint32_t x;
    if (dt == FA_BFLOAT16) {
        x = (uint32_t)b << 16;
    } else {
        uint32_t sign = (uint32_t)(b & 0x8000) << 16, e = (b >> 10) & 0x1f, m = b & 0x3ff;
        if (e == 0x1f)
            x = sign | 0x7f800000u | (m << 13);
        else if (e == 0)
            x = sign; /* subnormals do not occur in outputs checked here beyond tolerance */
        else
            x = sign | ((e + 112) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* Fills the params' strides for contiguous FA layout or SDPA layout storage. */
static void set_strides(int sdpa, int S, int H, int D, int64_t *sb, int64_t *sr, int64_t *sh)
{
    *sb = (int64_t)S * H * D;
    if (sdpa) {
        *sr = D;
        *sh = (int64_t)S * D;
    } else {
        *sr = (int64_t)H * D;
        *sh = D;
    }
}

/* ---- one case ---- */

#define GUARD 64

static int run_case(const test_case *c, fa_dtype dt, fa_kernel_family family)
{
    const int B = c->batch, Sq = c->seqlen_q, Sk = c->seqlen_k, Hq = c->heads_q,
              Hk = c->heads_kv, D = c->head_dim;
    size_t nq = (size_t)B * Sq * Hq * D, nk = (size_t)B * Sk * Hk * D, nl = (size_t)B * Hq * Sq;
    uint16_t *hq = malloc(2 * (nq + 1)), *hk = malloc(2 * (nk + 1)), *hv = malloc(2 * (nk + 1));
    uint16_t *ho = malloc(2 * (nq + GUARD)), *ho2 = malloc(2 * (nq + GUARD)),
             *href = malloc(2 * (nq + 1));
    float *hl = malloc(4 * (nl + 1)), *hlref = malloc(4 * (nl + 1));
    for (size_t i = 0; i < nq; i++)
        hq[i] = to_bits(normal() * c->q_scale, dt);
    for (size_t i = 0; i < nk; i++) {
        hk[i] = to_bits(normal(), dt);
        hv[i] = to_bits(normal(), dt);
    }

    fa_params p;
    fa_params_init(&p);
    p.batch = B; p.seqlen_q = Sq; p.seqlen_k = Sk; p.heads_q = Hq; p.heads_kv = Hk;
    p.head_dim = D; p.dtype = dt; p.causal = c->causal; p.family = family;
    p.softmax_scale = 1.0f / sqrtf((float)D);
    set_strides(c->sdpa_layout, Sq, Hq, D, &p.q_batch_stride, &p.q_row_stride, &p.q_head_stride);
    set_strides(c->sdpa_layout, Sk, Hk, D, &p.k_batch_stride, &p.k_row_stride, &p.k_head_stride);
    set_strides(c->sdpa_layout, Sk, Hk, D, &p.v_batch_stride, &p.v_row_stride, &p.v_head_stride);
    set_strides(0, Sq, Hq, D, &p.o_batch_stride, &p.o_row_stride, &p.o_head_stride);

    /* host reference on the same quantized inputs */
    fa_params pr = p;
    pr.q = hq; pr.k = hk; pr.v = hv; pr.out = href; pr.lse = hlref;
    if (fa_forward_cpu(&pr) != FA_OK) {
        printf("  reference failed: %s\n", fa_last_error());
        return 1;
    }

    void *dq, *dk, *dv, *dout;
    float *dlse;
    CHECK_CUDA(cudaMalloc(&dq, 2 * (nq + 1)));
    CHECK_CUDA(cudaMalloc(&dk, 2 * (nk + 1)));
    CHECK_CUDA(cudaMalloc(&dv, 2 * (nk + 1)));
    CHECK_CUDA(cudaMalloc(&dout, 2 * (nq + GUARD)));
    CHECK_CUDA(cudaMalloc((void **)&dlse, 4 * (nl + GUARD)));
    CHECK_CUDA(cudaMemcpy(dq, hq, 2 * nq, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dk, hk, 2 * nk, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dv, hv, 2 * nk, cudaMemcpyHostToDevice));
    p.q = dq; p.k = Sk ? dk : NULL; p.v = Sk ? dv : NULL; p.out = dout; p.lse = dlse;

    int failures = 0;
    for (int run = 0; run < 2; run++) {
        CHECK_CUDA(cudaMemset(dout, 0xff, 2 * (nq + GUARD))); /* NaN in fp16 and bf16 */
        CHECK_CUDA(cudaMemset(dlse, 0xff, 4 * (nl + GUARD)));
        fa_status s = fa_forward(&p, 0);
        if (s != FA_OK) {
            printf("  fa_forward: %s: %s\n", fa_status_name(s), fa_last_error());
            failures++;
            break;
        }
        CHECK_CUDA(cudaDeviceSynchronize());
        CHECK_CUDA(cudaMemcpy(run ? ho2 : ho, dout, 2 * (nq + GUARD), cudaMemcpyDeviceToHost));
        if (run == 0)
            CHECK_CUDA(cudaMemcpy(hl, dlse, 4 * nl, cudaMemcpyDeviceToHost));
    }
    if (!failures) {
        double max_ref = 0, max_err = 0, max_lse_err = 0;
        size_t unwritten = 0, guard_hit = 0, lse_inf_mismatch = 0;
        for (size_t i = 0; i < nq; i++) {
            float g = from_bits(ho[i], dt), r = from_bits(href[i], dt);
            if (!isfinite(g))
                unwritten++;
            max_ref = fmax(max_ref, fabs(r));
            max_err = fmax(max_err, fabs((double)g - r));
        }
        for (size_t i = nq; i < nq + GUARD; i++)
            guard_hit += ho[i] != 0xffff;
        for (size_t i = 0; i < nl; i++) {
            if (isinf(hlref[i]) || isinf(hl[i]))
                lse_inf_mismatch += !(isinf(hlref[i]) && isinf(hl[i]) && hl[i] < 0);
            else
                max_lse_err = fmax(max_lse_err, fabs((double)hl[i] - hlref[i]));
        }
        int deterministic = memcmp(ho, ho2, 2 * nq) == 0;
        double tol = (dt == FA_BFLOAT16 ? 1.6e-2 : 2.5e-3) * fmax(1.0, max_ref);
        int ok = !unwritten && !guard_hit && !lse_inf_mismatch && max_err <= tol &&
                 max_lse_err <= 1e-3 && deterministic;
        fa_launch last;
        fa_last_launch(&last);
        printf("  %-4s %-30s B=%d Sq=%d Sk=%d Hq=%d Hkv=%d D=%d%s%s: err %.3g (tol %.3g) "
               "lse %.3g%s%s%s%s\n",
               ok ? "ok" : "FAIL", last.kernel, B, Sq, Sk, Hq, Hk, D, c->causal ? " causal" : "",
               c->sdpa_layout ? " sdpa-layout" : "", max_err, tol, max_lse_err,
               unwritten ? " UNWRITTEN" : "", guard_hit ? " WRITE-PAST-END" : "",
               lse_inf_mismatch ? " LSE-INF-MISMATCH" : "", deterministic ? "" : " NONDETERMINISTIC");
        failures += !ok;
    }
    cudaFree(dq); cudaFree(dk); cudaFree(dv); cudaFree(dout); cudaFree(dlse);
    free(hq); free(hk); free(hv); free(ho); free(ho2); free(href); free(hl); free(hlref);
    return failures;
}

/* ---- timing ---- */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void bench(fa_kernel_family family, int reps)
{
    static const int dims[] = {64, 128, 256};
    static const int seqs[] = {1024, 4096, 16384};
    printf("timing %s (bf16, 16k tokens, hidden 2048, median of %d):\n", fa_family_name(family),
           reps);
    for (size_t di = 0; di < 3; di++)
        for (size_t si = 0; si < 3; si++)
            for (int causal = 0; causal < 2; causal++) {
                int D = dims[di], S = seqs[si], H = 2048 / D, B = 16384 / S;
                size_t n = (size_t)B * S * H * D;
                void *q, *k, *v, *o;
                CHECK_CUDA(cudaMalloc(&q, 2 * n));
                CHECK_CUDA(cudaMalloc(&k, 2 * n));
                CHECK_CUDA(cudaMalloc(&v, 2 * n));
                CHECK_CUDA(cudaMalloc(&o, 2 * n));
                uint16_t *h = malloc(2 * n);
                for (size_t i = 0; i < n; i++)
                    h[i] = to_bits(normal(), FA_BFLOAT16);
                CHECK_CUDA(cudaMemcpy(q, h, 2 * n, cudaMemcpyHostToDevice));
                CHECK_CUDA(cudaMemcpy(k, h, 2 * n, cudaMemcpyHostToDevice));
                CHECK_CUDA(cudaMemcpy(v, h, 2 * n, cudaMemcpyHostToDevice));
                free(h);
                fa_params p;
                fa_params_init(&p);
                p.q = q; p.k = k; p.v = v; p.out = o;
                p.batch = B; p.seqlen_q = S; p.seqlen_k = S; p.heads_q = H; p.heads_kv = H;
                p.head_dim = D; p.dtype = FA_BFLOAT16; p.causal = causal; p.family = family;
                p.softmax_scale = 1.0f / sqrtf((float)D);
                set_strides(0, S, H, D, &p.q_batch_stride, &p.q_row_stride, &p.q_head_stride);
                p.k_batch_stride = p.v_batch_stride = p.o_batch_stride = p.q_batch_stride;
                p.k_row_stride = p.v_row_stride = p.o_row_stride = p.q_row_stride;
                p.k_head_stride = p.v_head_stride = p.o_head_stride = p.q_head_stride;
                cudaEvent_t e0, e1;
                CHECK_CUDA(cudaEventCreate(&e0));
                CHECK_CUDA(cudaEventCreate(&e1));
                float *ms = malloc(sizeof(float) * (size_t)reps);
                fa_status s = FA_OK;
                for (int r = -3; r < reps && s == FA_OK; r++) {
                    CHECK_CUDA(cudaEventRecord(e0, 0));
                    s = fa_forward(&p, 0);
                    CHECK_CUDA(cudaEventRecord(e1, 0));
                    CHECK_CUDA(cudaEventSynchronize(e1));
                    if (r >= 0)
                        CHECK_CUDA(cudaEventElapsedTime(&ms[r], e0, e1));
                }
                if (s != FA_OK) {
                    printf("  D=%d S=%d causal=%d: %s\n", D, S, causal, fa_last_error());
                } else {
                    qsort(ms, (size_t)reps, sizeof(float), cmp_float);
                    double flops = 4.0 * B * H * (double)S * S * D / (causal ? 2 : 1);
                    printf("  D=%-3d S=%-5d B=%-2d H=%-2d causal=%d  %8.3f ms  %6.1f TFLOP/s\n", D,
                           S, B, H, causal, ms[reps / 2], flops / (ms[reps / 2] * 1e-3) / 1e12);
                }
                free(ms);
                cudaEventDestroy(e0); cudaEventDestroy(e1);
                cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o);
            }
}

/* Why cudaGetDevice failed, told apart by what the driver says (the runtime is linked
 * statically: with no driver at all, CUDA reports an "insufficient" driver). */
static void no_gpu_reason(cudaError_t err, char *buf, size_t len)
{
    int driver = 0;
    if (cudaDriverGetVersion(&driver) != cudaSuccess)
        driver = 0;
    if (driver == 0)
        snprintf(buf, len, "no NVIDIA driver found (libcuda.so.1 could not be loaded)");
    else if (err == cudaErrorInsufficientDriver)
        snprintf(buf, len,
                 "the NVIDIA driver supports CUDA %d.%d, older than the CUDA %d.%d runtime "
                 "this program links statically",
                 driver / 1000, driver % 1000 / 10, CUDART_VERSION / 1000,
                 CUDART_VERSION % 1000 / 10);
    else
        snprintf(buf, len, "%s: %s (driver for CUDA %d.%d)", cudaGetErrorName(err),
                 cudaGetErrorString(err), driver / 1000, driver % 1000 / 10);
}

int main(int argc, char **argv)
{
    int do_bench = 0, reps = 20;
    const char *only = NULL;
    setvbuf(stdout, NULL, _IOLBF, 0); /* a run killed by a timeout keeps what it printed */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--bench"))
            do_bench = 1;
        else if (!strcmp(argv[i], "--family") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--family sm80|sm90] [--bench] [--reps N]\n", argv[0]);
            return 2;
        }
    }
    int device = 0;
    fa_device dev;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) {
        char reason[512];
        no_gpu_reason(err, reason, sizeof reason);
        fprintf(stderr, "no usable CUDA GPU: %s\n", reason);
        return 2;
    }
    if (fa_device_query(device, &dev) != FA_OK) {
        fprintf(stderr, "no usable CUDA GPU: %s\n", fa_last_error());
        return 2;
    }
    printf("GPU sm_%d%d, %d SMs, smem opt-in %d\n", dev.major, dev.minor, dev.sm_count,
           dev.smem_optin);
    int failures = 0, total = 0;
    const fa_kernel_family families[] = {FA_KERNEL_SM80, FA_KERNEL_SM90};
    for (int f = 0; f < 2; f++) {
        fa_kernel_family fam = families[f];
        int archs[8];
        if (fa_family_archs(fam, archs, 8) == 0 || (only && strcmp(only, fa_family_name(fam))))
            continue;
        if (fam == FA_KERNEL_SM90 && !(dev.major == 9 && dev.minor == 0))
            continue;
        printf("family %s\n", fa_family_name(fam));
        int family_failures = 0;
        for (int dt = 0; dt < 2; dt++)
            for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
                family_failures += run_case(&cases[i], dt ? FA_BFLOAT16 : FA_FLOAT16, fam);
                total++;
            }
        failures += family_failures;
        if (do_bench && family_failures == 0)
            bench(fam, reps);
        else if (do_bench)
            printf("timing %s skipped: a wrong kernel is not timed\n", fa_family_name(fam));
    }
    printf("%d passed, %d failed\n", total - failures, failures);
    return failures ? 1 : 0;
}
