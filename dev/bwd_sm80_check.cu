/*
 * bwd_sm80_check.cu -- standalone check of the sm80 backward main kernel (bwd_sm80*.cu)
 * against a float64 CPU reference, and a timing of it.
 *
 * Build and run (links nothing of the project but the kernel's own translation units):
 *   nvcc -O3 -std=c++17 --use_fast_math -gencode arch=compute_90,code=sm_90 -I csrc \
 *     dev/bwd_sm80_check.cu csrc/kernels/bwd_sm80.cu csrc/kernels/bwd_sm80_hd64.cu \
 *     csrc/kernels/bwd_sm80_hd128.cu csrc/kernels/bwd_sm80_hd256.cu -o bwd_sm80_check
 *   ./bwd_sm80_check            every case, then the timings
 *   ./bwd_sm80_check check      the cases only;  ./bwd_sm80_check time   the timings only
 *   ./bwd_sm80_check sanity     a few small cases, for compute-sanitizer
 *   ./bwd_sm80_check time1      head_dim 128 at 16k only
 *
 * Per case: random normal q, k, v, dout quantized to the dtype (the reference reads the same
 * quantized values); the reference runs the forward (lse, out) and the backward in float64
 * with plain dense loops over mask.h's visible keys; the kernel gets lse (float32), delta =
 * rowsum(dout * out) from the quantized out (what the preprocess computes), a zeroed
 * workspace, dk/dv poisoned with NaN. dq = softmax_scale * dq_accum on the host. Reported:
 * max |ours - ref| / max |ref| for dq, dk, dv (pass below 2e-2 for bf16, 1e-2 for fp16);
 * every dk/dv element written and finite, the columns past head_dim and the guard past
 * dq_accum untouched; deterministic cases run twice and must match bitwise.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/mask.h"
#include "flashattn.h"
#include "kernels/kernels.h"
#include "kernels/sm80_bwd_tiles.h"

#define CK(x)                                                                                  \
    do {                                                                                       \
        cudaError_t e_ = (x);                                                                  \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));  \
            exit(2);                                                                           \
        }                                                                                      \
    } while (0)

static uint16_t to_bits(float x, bool bf16)
{
    if (bf16) {
        __nv_bfloat16 h = __float2bfloat16_rn(x);
        uint16_t b;
        memcpy(&b, &h, 2);
        return b;
    }
    __half h = __float2half_rn(x);
    uint16_t b;
    memcpy(&b, &h, 2);
    return b;
}

static float from_bits(uint16_t b, bool bf16)
{
    if (bf16) {
        __nv_bfloat16 h;
        memcpy(&h, &b, 2);
        return __bfloat162float(h);
    }
    __half h;
    memcpy(&h, &b, 2);
    return __half2float(h);
}

struct Case {
    const char *name;
    int hd, bf16, batch, hq, hk, sq, sk, causal, wl, wr;
    float softcap;
    int det;
    int sdpa_layout; /* 1: q/k/v/dout stored (batch, heads, seq, dim); dk/dv head stride padded */
};

/* A (batch, seq, heads, dim) tensor with strides; dims padded by pad columns in the layout. */
struct Layout {
    int64_t bs, rs, hs;
    int64_t elems;
};

static Layout make_layout(int batch, int seq, int heads, int dim, bool sdpa, int pad)
{
    Layout l;
    const int64_t d = dim + pad;
    if (sdpa) {
        l.rs = d;
        l.hs = (int64_t)seq * d;
        l.bs = (int64_t)heads * seq * d;
    } else {
        l.hs = d;
        l.rs = (int64_t)heads * d;
        l.bs = (int64_t)seq * heads * d;
    }
    l.elems = (int64_t)batch * l.bs;
    return l;
}

struct Result {
    double err_dq, err_dk, err_dv;
    bool ok;
};

static int g_failures = 0;

static void run_case(const Case &c)
{
    const bool bf16 = c.bf16 != 0;
    const int D = c.hd, B = c.batch, Hq = c.hq, Hk = c.hk, Sq = c.sq, Sk = c.sk, G = Hq / Hk;
    const float scale = 1.0f / sqrtf((float)D);
    const bool sd = c.sdpa_layout != 0;
    const Layout lq = make_layout(B, Sq, Hq, D, sd, 0), lk = make_layout(B, Sk, Hk, D, sd, 0);
    const Layout lg = make_layout(B, Sk, Hk, D, false, sd ? 8 : 0); /* dk, dv */
    std::mt19937_64 rng(1234 + D * 7 + Sq * 13 + Sk * 17 + Hq * 3 + c.causal + c.wl * 5);
    std::normal_distribution<float> nd(0.f, 1.f);
    auto fill = [&](std::vector<uint16_t> &bits, std::vector<double> &vals, const Layout &l, int seq,
                    int heads, float mult) {
        bits.assign(l.elems, 0);
        vals.assign((size_t)B * seq * heads * D, 0.0);
        for (int b = 0; b < B; ++b)
            for (int s = 0; s < seq; ++s)
                for (int h = 0; h < heads; ++h)
                    for (int d = 0; d < D; ++d) {
                        const uint16_t x = to_bits(nd(rng) * mult, bf16);
                        bits[b * l.bs + s * l.rs + h * l.hs + d] = x;
                        vals[(((size_t)b * seq + s) * heads + h) * D + d] = from_bits(x, bf16);
                    }
    };
    std::vector<uint16_t> q_b, k_b, v_b, do_b;
    std::vector<double> q, k, v, dout;
    fill(q_b, q, lq, Sq, Hq, 1.f);
    fill(k_b, k, lk, Sk, Hk, 1.f);
    fill(v_b, v, lk, Sk, Hk, 1.f);
    fill(do_b, dout, lq, Sq, Hq, 1.f);

    /* ---- reference ---- */
    const fa_mask mask = fa_mask_make(Sq, Sk, c.wl, c.wr, c.causal);
    std::vector<double> dq_ref((size_t)B * Sq * Hq * D, 0.0), dk_ref((size_t)B * Sk * Hk * D, 0.0),
        dv_ref((size_t)B * Sk * Hk * D, 0.0);
    std::vector<float> lse_in((size_t)B * Hq * Sq), delta_in((size_t)B * Hq * Sq);
    const int row_chunk = 64;
    const int chunks = (Sq + row_chunk - 1) / row_chunk;
    const int tasks = B * Hq * chunks;
    std::vector<std::vector<double>> dk_part(tasks), dv_part(tasks);
    auto task = [&](int t) {
        const int b = t / (Hq * chunks), h = t / chunks % Hq, ch = t % chunks;
        const int hkv = h / G;
        std::vector<double> &dkp = dk_part[t], &dvp = dv_part[t];
        dkp.assign((size_t)Sk * D, 0.0);
        dvp.assign((size_t)Sk * D, 0.0);
        std::vector<double> logit(Sk), tt(Sk), p(Sk), o(D), dpv(Sk);
        for (int i = ch * row_chunk; i < std::min(Sq, (ch + 1) * row_chunk); ++i) {
            const double *qi = &q[(((size_t)b * Sq + i) * Hq + h) * D];
            const double *doi = &dout[(((size_t)b * Sq + i) * Hq + h) * D];
            const fa_key_span span = fa_mask_row(&mask, i);
            double mx = -INFINITY;
            for (int j = span.lo; j <= span.hi; ++j) {
                const double *kj = &k[(((size_t)b * Sk + j) * Hk + hkv) * D];
                double s = 0;
                for (int d = 0; d < D; ++d)
                    s += qi[d] * kj[d];
                double l = scale * s;
                if (c.softcap > 0) {
                    tt[j] = tanh(l / c.softcap);
                    l = c.softcap * tt[j];
                }
                logit[j] = l;
                mx = std::max(mx, l);
            }
            double sum = 0;
            for (int j = span.lo; j <= span.hi; ++j)
                sum += exp(logit[j] - mx);
            const double lse = span.hi >= span.lo ? mx + log(sum) : -INFINITY;
            std::fill(o.begin(), o.end(), 0.0);
            for (int j = span.lo; j <= span.hi; ++j) {
                p[j] = exp(logit[j] - lse);
                const double *vj = &v[(((size_t)b * Sk + j) * Hk + hkv) * D];
                for (int d = 0; d < D; ++d)
                    o[d] += p[j] * vj[d];
            }
            double delta_exact = 0, delta_q = 0;
            for (int d = 0; d < D; ++d) {
                delta_exact += doi[d] * o[d];
                delta_q += (double)from_bits(to_bits((float)doi[d], bf16), bf16) *
                           from_bits(to_bits((float)o[d], bf16), bf16);
            }
            lse_in[((size_t)b * Hq + h) * Sq + i] = (float)lse;
            delta_in[((size_t)b * Hq + h) * Sq + i] = (float)delta_q;
            double *dqi = &dq_ref[(((size_t)b * Sq + i) * Hq + h) * D];
            for (int j = span.lo; j <= span.hi; ++j) {
                const double *vj = &v[(((size_t)b * Sk + j) * Hk + hkv) * D];
                const double *kj = &k[(((size_t)b * Sk + j) * Hk + hkv) * D];
                double dp = 0;
                for (int d = 0; d < D; ++d)
                    dp += doi[d] * vj[d];
                double ds = p[j] * (dp - delta_exact);
                if (c.softcap > 0)
                    ds *= 1.0 - tt[j] * tt[j];
                for (int d = 0; d < D; ++d) {
                    dqi[d] += scale * ds * kj[d];
                    dkp[(size_t)j * D + d] += scale * ds * qi[d];
                    dvp[(size_t)j * D + d] += p[j] * doi[d];
                }
            }
        }
    };
    {
        std::vector<std::thread> pool;
        const int nthreads = std::max(1u, std::thread::hardware_concurrency());
        for (int w = 0; w < nthreads; ++w)
            pool.emplace_back([&, w] {
                for (int t = w; t < tasks; t += nthreads)
                    task(t);
            });
        for (auto &th : pool)
            th.join();
    }
    for (int t = 0; t < tasks; ++t) {
        const int b = t / (Hq * chunks), h = t / chunks % Hq, hkv = h / G;
        for (int j = 0; j < Sk; ++j)
            for (int d = 0; d < D; ++d) {
                dk_ref[(((size_t)b * Sk + j) * Hk + hkv) * D + d] += dk_part[t][(size_t)j * D + d];
                dv_ref[(((size_t)b * Sk + j) * Hk + hkv) * D + d] += dv_part[t][(size_t)j * D + d];
            }
    }

    /* ---- device ---- */
    fa_params p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    fa_grad_params g;
    memset(&g, 0, sizeof g);
    g.struct_size = sizeof g;
    p.batch = B;
    p.seqlen_q = Sq;
    p.seqlen_k = Sk;
    p.heads_q = Hq;
    p.heads_kv = Hk;
    p.head_dim = D;
    p.dtype = bf16 ? FA_BFLOAT16 : FA_FLOAT16;
    p.softmax_scale = scale;
    p.causal = c.causal;
    p.window_left = c.wl;
    p.window_right = c.wr;
    p.softcap = c.softcap;
    p.family = FA_KERNEL_SM80;
    p.q_batch_stride = lq.bs, p.q_row_stride = lq.rs, p.q_head_stride = lq.hs;
    p.k_batch_stride = lk.bs, p.k_row_stride = lk.rs, p.k_head_stride = lk.hs;
    p.v_batch_stride = lk.bs, p.v_row_stride = lk.rs, p.v_head_stride = lk.hs;
    g.do_batch_stride = lq.bs, g.do_row_stride = lq.rs, g.do_head_stride = lq.hs;
    g.dk_batch_stride = lg.bs, g.dk_row_stride = lg.rs, g.dk_head_stride = lg.hs;
    g.dv_batch_stride = lg.bs, g.dv_row_stride = lg.rs, g.dv_head_stride = lg.hs;
    g.deterministic = c.det;

    fa_tile t;
    if (fa_sm80_bwd_tile(&p, &g, &t) != 0) {
        printf("%-40s no tile\n", c.name);
        ++g_failures;
        return;
    }
    const void *fn = fa_sm80_bwd_kernel_fn(&p, &g, &t);
    if (!fn) {
        printf("%-40s no kernel\n", c.name);
        ++g_failures;
        return;
    }
    CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)t.smem_bytes));

    auto dev_copy = [](const void *src, size_t bytes) {
        void *d;
        CK(cudaMalloc(&d, bytes));
        CK(cudaMemcpy(d, src, bytes, cudaMemcpyHostToDevice));
        return d;
    };
    void *dq_ = dev_copy(q_b.data(), q_b.size() * 2), *dk_in = dev_copy(k_b.data(), k_b.size() * 2),
         *dv_in = dev_copy(v_b.data(), v_b.size() * 2), *ddo = dev_copy(do_b.data(), do_b.size() * 2);
    float *dlse = (float *)dev_copy(lse_in.data(), lse_in.size() * 4);
    float *ddelta = (float *)dev_copy(delta_in.data(), delta_in.size() * 4);
    const size_t acc_elems = (size_t)B * Hq * Sq * D, guard = 4096;
    float *dacc;
    CK(cudaMalloc(&dacc, (acc_elems + guard) * 4));
    const int lock_n = B * Hq * ((Sq + t.block_m - 1) / t.block_m);
    int *dlock;
    CK(cudaMalloc(&dlock, std::max(lock_n, 1) * 4));
    void *ddk, *ddv;
    CK(cudaMalloc(&ddk, lg.elems * 2));
    CK(cudaMalloc(&ddv, lg.elems * 2));
    p.q = dq_;
    p.k = dk_in;
    p.v = dv_in;
    p.lse = dlse;
    g.dout = ddo;
    g.dk = ddk;
    g.dv = ddv;

    fa_bwd_workspace ws;
    memset(&ws, 0, sizeof ws);
    ws.dq_accum = dacc;
    ws.delta = ddelta;
    ws.dq_lock = c.det ? dlock : nullptr;
    ws.block_m = t.block_m;

    fa_launch cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.grid[0] = (Sk + t.block_n - 1) / t.block_n;
    cfg.grid[1] = Hk;
    cfg.grid[2] = B;
    cfg.block[0] = 384;
    cfg.block[1] = cfg.block[2] = 1;
    cfg.smem_bytes = t.smem_bytes;
    cfg.block_m = t.block_m;
    cfg.block_n = t.block_n;
    cfg.head_dim_padded = t.head_dim_padded;

    std::vector<float> acc(acc_elems + guard), acc_first;
    std::vector<uint16_t> dk_o(lg.elems), dv_o(lg.elems), dk_first, dv_first;
    const int runs = c.det ? 2 : 1;
    bool bitwise = true;
    for (int r = 0; r < runs; ++r) {
        CK(cudaMemset(dacc, 0, (acc_elems + guard) * 4));
        CK(cudaMemset(dlock, 0, std::max(lock_n, 1) * 4));
        CK(cudaMemset(ddk, 0xff, lg.elems * 2));
        CK(cudaMemset(ddv, 0xff, lg.elems * 2));
        CK(fa_sm80_bwd_launch(&p, &g, &ws, &cfg, 0));
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(acc.data(), dacc, acc.size() * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(dk_o.data(), ddk, lg.elems * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(dv_o.data(), ddv, lg.elems * 2, cudaMemcpyDeviceToHost));
        if (r == 0) {
            acc_first = acc;
            dk_first = dk_o;
            dv_first = dv_o;
        } else {
            bitwise = memcmp(acc.data(), acc_first.data(), acc.size() * 4) == 0 && dk_o == dk_first &&
                      dv_o == dv_first;
        }
    }

    /* ---- compare ---- */
    bool ok = true;
    for (size_t i = acc_elems; i < acc_elems + guard; ++i)
        if (acc[i] != 0.f)
            ok = false;
    const bool guard_ok = ok;
    double mq = 0, mk = 0, mv = 0, eq = 0, ek = 0, ev = 0;
    bool finite = true, pad_ok = true;
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < Hq; ++h)
            for (int i = 0; i < Sq; ++i)
                for (int d = 0; d < D; ++d) {
                    const double ref = dq_ref[(((size_t)b * Sq + i) * Hq + h) * D + d];
                    const double ours = (double)scale * acc[(((size_t)b * Hq + h) * Sq + i) * D + d];
                    if (!std::isfinite(ours))
                        finite = false;
                    mq = std::max(mq, fabs(ref));
                    eq = std::max(eq, fabs(ours - ref));
                }
    for (int b = 0; b < B; ++b)
        for (int j = 0; j < Sk; ++j)
            for (int h = 0; h < Hk; ++h) {
                for (int d = 0; d < D + (sd ? 8 : 0); ++d) {
                    const size_t at = b * lg.bs + j * lg.rs + h * lg.hs + d;
                    if (d >= D) {
                        if (dk_o[at] != 0xffff || dv_o[at] != 0xffff)
                            pad_ok = false;
                        continue;
                    }
                    const double rk = dk_ref[(((size_t)b * Sk + j) * Hk + h) * D + d];
                    const double rv = dv_ref[(((size_t)b * Sk + j) * Hk + h) * D + d];
                    const double ok_ = from_bits(dk_o[at], bf16), ov = from_bits(dv_o[at], bf16);
                    if (!std::isfinite(ok_) || !std::isfinite(ov))
                        finite = false;
                    mk = std::max(mk, fabs(rk));
                    mv = std::max(mv, fabs(rv));
                    ek = std::max(ek, fabs(ok_ - rk));
                    ev = std::max(ev, fabs(ov - rv));
                }
            }
    const double tol = bf16 ? 2e-2 : 1e-2;
    auto rel = [](double e, double m) { return m > 0 ? e / m : e; };
    const double rq = rel(eq, mq), rk = rel(ek, mk), rv = rel(ev, mv);
    ok = finite && pad_ok && guard_ok && bitwise && rq <= tol && rk <= tol && rv <= tol;
    printf("%-44s dq %.2e dk %.2e dv %.2e (max|ref| %.1e %.1e %.1e)%s%s%s%s %s\n", c.name, rq, rk,
           rv, mq, mk, mv, finite ? "" : " NONFINITE", pad_ok ? "" : " PAD-WRITTEN",
           guard_ok ? "" : " GUARD-WRITTEN", c.det ? (bitwise ? " bitwise=yes" : " bitwise=NO") : "",
           ok ? "ok" : "FAIL");
    if (!ok)
        ++g_failures;
    cudaFree(dq_);
    cudaFree(dk_in);
    cudaFree(dv_in);
    cudaFree(ddo);
    cudaFree(dlse);
    cudaFree(ddelta);
    cudaFree(dacc);
    cudaFree(dlock);
    cudaFree(ddk);
    cudaFree(ddv);
}

/* ---- timing ---- */
__global__ void fill_random(uint16_t *x, size_t n, uint32_t seed, bool bf16, float mult)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        const float u = ((h & 0xffffff) / 16777216.0f - 0.5f) * 2.f * mult;
        if (bf16) {
            __nv_bfloat16 b = __float2bfloat16_rn(u);
            x[i] = *reinterpret_cast<uint16_t *>(&b);
        } else {
            __half b = __float2half_rn(u);
            x[i] = *reinterpret_cast<uint16_t *>(&b);
        }
    }
}

__global__ void fill_value(float *x, size_t n, float v)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] = v;
}

static void time_case(int D, bool bf16, int B, int H, int S, int causal, int det, float softcap)
{
    fa_params p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    fa_grad_params g;
    memset(&g, 0, sizeof g);
    g.struct_size = sizeof g;
    p.batch = B;
    p.seqlen_q = p.seqlen_k = S;
    p.heads_q = p.heads_kv = H;
    p.head_dim = D;
    p.dtype = bf16 ? FA_BFLOAT16 : FA_FLOAT16;
    p.softmax_scale = 1.0f / sqrtf((float)D);
    p.causal = causal;
    p.window_left = p.window_right = -1;
    p.softcap = softcap;
    const int64_t rs = (int64_t)H * D, bs = (int64_t)S * rs;
    p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = bs;
    p.q_row_stride = p.k_row_stride = p.v_row_stride = rs;
    p.q_head_stride = p.k_head_stride = p.v_head_stride = D;
    g.do_batch_stride = g.dk_batch_stride = g.dv_batch_stride = bs;
    g.do_row_stride = g.dk_row_stride = g.dv_row_stride = rs;
    g.do_head_stride = g.dk_head_stride = g.dv_head_stride = D;
    g.deterministic = det;
    fa_tile t;
    fa_sm80_bwd_tile(&p, &g, &t);
    const void *fn = fa_sm80_bwd_kernel_fn(&p, &g, &t);
    CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)t.smem_bytes));
    const size_t n = (size_t)B * bs;
    uint16_t *q, *k, *v, *dout, *dk, *dv;
    float *lse, *delta, *acc;
    int *lock;
    CK(cudaMalloc(&q, n * 2));
    CK(cudaMalloc(&k, n * 2));
    CK(cudaMalloc(&v, n * 2));
    CK(cudaMalloc(&dout, n * 2));
    CK(cudaMalloc(&dk, n * 2));
    CK(cudaMalloc(&dv, n * 2));
    CK(cudaMalloc(&lse, (size_t)B * H * S * 4));
    CK(cudaMalloc(&delta, (size_t)B * H * S * 4));
    CK(cudaMalloc(&acc, n * 4));
    const int lock_n = B * H * ((S + t.block_m - 1) / t.block_m);
    CK(cudaMalloc(&lock, lock_n * 4));
    fill_random<<<1024, 256>>>(q, n, 1, bf16, 1.f);
    fill_random<<<1024, 256>>>(k, n, 2, bf16, 1.f);
    fill_random<<<1024, 256>>>(v, n, 3, bf16, 1.f);
    fill_random<<<1024, 256>>>(dout, n, 4, bf16, 1.f);
    fill_value<<<1024, 256>>>(lse, (size_t)B * H * S, logf((float)S));
    fill_value<<<1024, 256>>>(delta, (size_t)B * H * S, 0.01f);
    CK(cudaMemset(acc, 0, n * 4));
    p.q = q, p.k = k, p.v = v, p.lse = lse;
    g.dout = dout, g.dk = dk, g.dv = dv;
    fa_bwd_workspace ws;
    memset(&ws, 0, sizeof ws);
    ws.dq_accum = acc;
    ws.delta = delta;
    ws.dq_lock = lock;
    ws.block_m = t.block_m;
    fa_launch cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.grid[0] = (S + t.block_n - 1) / t.block_n;
    cfg.grid[1] = H;
    cfg.grid[2] = B;
    cfg.block[0] = 384;
    cfg.block[1] = cfg.block[2] = 1;
    cfg.smem_bytes = t.smem_bytes;
    cfg.block_m = t.block_m;
    cfg.block_n = t.block_n;
    cfg.head_dim_padded = t.head_dim_padded;
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    const int warm = 2, iters = 5;
    float best = 1e30f, total = 0;
    for (int i = 0; i < warm + iters; ++i) {
        if (det)
            CK(cudaMemsetAsync(lock, 0, lock_n * 4, 0));
        CK(cudaEventRecord(e0, 0));
        CK(fa_sm80_bwd_launch(&p, &g, &ws, &cfg, 0));
        CK(cudaEventRecord(e1, 0));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= warm) {
            best = std::min(best, ms);
            total += ms;
        }
    }
    CK(cudaGetLastError());
    const double flops = 10.0 * B * H * (double)S * S * D * (causal ? 0.5 : 1.0);
    printf("time hd%d %s B=%d H=%d S=%d%s%s%s: best %.3f ms mean %.3f ms -> %.1f TFLOP/s (best), "
           "%.1f (mean)\n",
           D, bf16 ? "bf16" : "fp16", B, H, S, causal ? " causal" : "", det ? " det" : "",
           softcap > 0 ? " softcap" : "", best, total / iters, flops / best / 1e9,
           flops / (total / iters) / 1e9);
    cudaFree(q), cudaFree(k), cudaFree(v), cudaFree(dout), cudaFree(dk), cudaFree(dv);
    cudaFree(lse), cudaFree(delta), cudaFree(acc), cudaFree(lock);
}

int main(int argc, char **argv)
{
    const std::string mode = argc > 1 ? argv[1] : "all";
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, sm_%d%d, %d SMs\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
    if (mode == "sanity") {
        run_case(Case{"hd128 bf16 causal 113x203 6:2", 128, 1, 1, 6, 2, 113, 203, 1, -1, -1, 0.f, 0, 0});
        run_case(Case{"hd64 fp16 win(17,0) 1x239", 64, 0, 1, 2, 2, 1, 239, 0, 17, 0, 0.f, 0, 0});
        run_case(Case{"hd256 bf16 causal 239x1 softcap", 256, 1, 1, 2, 1, 239, 1, 1, -1, -1, 30.f, 0, 1});
        run_case(Case{"hd72 bf16 none 113x113 det", 72, 1, 1, 2, 1, 113, 113, 0, -1, -1, 0.f, 1, 1});
        printf("sanity: %d failed\n", g_failures);
    }
    if (mode == "all" || mode == "check") {
        std::vector<Case> cases;
        char *names = new char[64 * 200];
        int nn = 0;
        auto add = [&](Case c, const char *fmt, auto... args) {
            char *nm = names + 64 * nn++;
            if constexpr (sizeof...(args) == 0)
                snprintf(nm, 64, "%s", fmt);
            else
                snprintf(nm, 64, fmt, args...);
            c.name = nm;
            cases.push_back(c);
        };
        const char *mk[4] = {"none", "causal", "win(17,0)", "win(128,3)"};
        const int mc[4] = {0, 1, 0, 0}, mwl[4] = {-1, -1, 17, 128}, mwr[4] = {-1, -1, 0, 3};
        /* every head dim x dtype x mask, GQA 6:2, batch 2, 239 x 239 */
        for (int hd : {64, 128, 256})
            for (int bf : {1, 0})
                for (int m = 0; m < 4; ++m)
                    add(Case{nullptr, hd, bf, 2, 6, 2, 239, 239, mc[m], mwl[m], mwr[m], 0.f, 0, 0},
                        "hd%d %s %s 6:2 239x239", hd, bf ? "bf16" : "fp16", mk[m]);
        /* padded head dims */
        add(Case{nullptr, 72, 1, 1, 4, 4, 113, 203, 1, -1, -1, 0.f, 0, 1}, "hd72 bf16 causal 113x203 sdpa");
        add(Case{nullptr, 72, 0, 2, 2, 1, 239, 239, 0, -1, -1, 0.f, 0, 0}, "hd72 fp16 none 2:1 239");
        add(Case{nullptr, 8, 1, 1, 2, 2, 113, 113, 1, -1, -1, 0.f, 0, 0}, "hd8 bf16 causal 113");
        add(Case{nullptr, 200, 1, 1, 2, 2, 239, 239, 0, -1, -1, 0.f, 0, 1}, "hd200 bf16 none sdpa");
        /* softcap */
        add(Case{nullptr, 128, 1, 2, 6, 2, 239, 239, 0, -1, -1, 30.f, 0, 0}, "hd128 bf16 none softcap30");
        add(Case{nullptr, 64, 0, 1, 4, 2, 239, 239, 1, -1, -1, 30.f, 0, 0}, "hd64 fp16 causal softcap30");
        add(Case{nullptr, 256, 1, 1, 2, 1, 239, 239, 0, 128, 3, 30.f, 0, 0}, "hd256 bf16 win(128,3) softcap30");
        /* unequal lengths */
        for (int hd : {64, 128, 256}) {
            add(Case{nullptr, hd, 1, 1, 6, 2, 113, 203, 1, -1, -1, 0.f, 0, 0}, "hd%d bf16 causal 113x203", hd);
            add(Case{nullptr, hd, 1, 1, 6, 2, 203, 113, 1, -1, -1, 0.f, 0, 0}, "hd%d bf16 causal 203x113", hd);
            add(Case{nullptr, hd, 0, 1, 2, 2, 1, 239, 0, -1, -1, 0.f, 0, 0}, "hd%d fp16 none 1x239", hd);
            add(Case{nullptr, hd, 0, 1, 2, 2, 1, 239, 1, -1, -1, 0.f, 0, 0}, "hd%d fp16 causal 1x239", hd);
            add(Case{nullptr, hd, 1, 1, 2, 2, 1, 239, 0, 17, 0, 0.f, 0, 0}, "hd%d bf16 win(17,0) 1x239", hd);
            add(Case{nullptr, hd, 1, 1, 2, 2, 239, 1, 1, -1, -1, 0.f, 0, 0}, "hd%d bf16 causal 239x1", hd);
            add(Case{nullptr, hd, 1, 1, 2, 2, 239, 1, 0, -1, -1, 0.f, 0, 0}, "hd%d bf16 none 239x1", hd);
            add(Case{nullptr, hd, 0, 1, 3, 3, 17, 17, 1, -1, -1, 0.f, 0, 0}, "hd%d fp16 causal 17x17", hd);
        }
        /* longer, MQA, strided */
        add(Case{nullptr, 128, 1, 1, 2, 1, 1023, 1023, 1, -1, -1, 0.f, 0, 1}, "hd128 bf16 causal 1023 2:1 sdpa");
        add(Case{nullptr, 128, 0, 1, 8, 1, 1023, 1023, 0, -1, -1, 0.f, 0, 0}, "hd128 fp16 none 1023 8:1");
        add(Case{nullptr, 64, 1, 1, 1, 1, 4224, 4224, 1, -1, -1, 0.f, 0, 0}, "hd64 bf16 causal 4224");
        add(Case{nullptr, 256, 1, 1, 1, 1, 1023, 1023, 0, 128, 3, 0.f, 0, 0}, "hd256 bf16 win(128,3) 1023");
        /* deterministic */
        add(Case{nullptr, 128, 1, 2, 6, 2, 239, 239, 1, -1, -1, 0.f, 1, 0}, "hd128 bf16 causal 6:2 det");
        add(Case{nullptr, 128, 1, 1, 4, 2, 1023, 1023, 0, -1, -1, 0.f, 1, 0}, "hd128 bf16 none 1023 det");
        add(Case{nullptr, 64, 0, 1, 6, 2, 239, 239, 0, 128, 3, 0.f, 1, 0}, "hd64 fp16 win(128,3) det");
        add(Case{nullptr, 256, 1, 1, 2, 1, 203, 113, 1, -1, -1, 30.f, 1, 1}, "hd256 bf16 causal 203x113 sc det");
        for (const Case &c : cases)
            run_case(c);
        printf("%d cases, %d failed\n", (int)cases.size(), g_failures);
    }
    if (mode == "time1") {
        time_case(128, true, 1, 16, 16384, 0, 0, 0.f);
        time_case(128, true, 1, 16, 16384, 1, 0, 0.f);
    }
    if (mode == "all" || mode == "time") {
        time_case(128, true, 1, 16, 16384, 0, 0, 0.f);
        time_case(128, true, 1, 16, 16384, 1, 0, 0.f);
        time_case(128, true, 1, 16, 16384, 0, 1, 0.f);
        time_case(64, true, 1, 16, 16384, 0, 0, 0.f);
        time_case(256, true, 1, 16, 8192, 0, 0, 0.f);
        time_case(128, true, 4, 16, 4096, 0, 0, 30.f);
    }
    return g_failures ? 1 : 0;
}
