/*
 * bwd_check.cu -- standalone check of a backward main kernel, the sm80 family's (bwd_sm80*.cu)
 * or the sm90 one (bwd_sm90.cu), against a float64 CPU reference, and a timing of it.
 *
 * Build and run (links nothing of the project but the kernels' own translation units):
 *   nvcc -O3 -std=c++17 --use_fast_math -gencode arch=compute_90a,code=sm_90a -I csrc \
 *     dev/bwd_check.cu csrc/kernels/bwd_sm80.cu csrc/kernels/bwd_sm80_hd64.cu \
 *     csrc/kernels/bwd_sm80_hd128.cu csrc/kernels/bwd_sm80_hd256.cu csrc/kernels/bwd_sm90.cu \
 *     -o bwd_check
 *   ./bwd_check [--family sm80|sm90] [--smem-optin BYTES] [MODE]
 *   --family: the family under test; sm80 by default. --smem-optin: the opt-in shared memory
 *   the sm80 tile table plans for (sm80_bwd_tiles.h picks its tier by it); the device's own by
 *   default, 101376 (sm_86/sm_89's 99 KB) runs the narrow tier on an sm_80 or sm_90 part.
 *   MODE: all (every case, then the timings; the default), check (the cases only), time (the
 *   timings only), sanity (a few small cases, for compute-sanitizer), time1 (head_dim 128 at
 *   16k only). Cases the sm90 backward does not serve (sm90_bwd_tiles.h: seqused_k, for one)
 *   print the reason and are skipped; every other case must pass.
 *
 * Per case: random normal q, k, v, dout quantized to the dtype (the reference reads the same
 * quantized values); the reference runs the forward (lse, out) and the backward in float64
 * with plain dense loops over mask.h's visible keys; the kernel gets lse (float32), delta =
 * rowsum(dout * out) from the quantized out (what the preprocess computes), a zeroed
 * workspace, dk/dv poisoned with NaN. dq = softmax_scale * dq_accum on the host. Reported:
 * max |ours - ref| / max |ref| for dq, dk, dv (pass below 2e-2 for bf16, 1e-2 for fp16);
 * every dk/dv element written and finite, the columns past head_dim and the guard past
 * dq_accum untouched; deterministic cases run twice and must match bitwise. Then packed
 * (cu_seqlens) ragged batches, lengths 0, 1, 17, 128, 300 (run_packed_case), where no row of
 * dq_accum, dk or dv outside every entry may change.
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
#include "kernels/sm90_bwd_tiles.h"
#include "bwd_reference.h"
#include "dev_check.h"

static int g_failures = 0;

/* The sm90 tile takes no tier. */
static int sm90_tile(const fa_params *p, const fa_grad_params *g, int smem_optin, fa_tile *t)
{
    (void)smem_optin;
    return fa_sm90_bwd_tile(p, g, t);
}

/* The backward under test (--family): its tile, kernel and launch (kernels.h). */
struct Backward {
    fa_kernel_family family;
    int (*tile)(const fa_params *, const fa_grad_params *, int smem_optin, fa_tile *);
    const void *(*kernel_fn)(const fa_params *, const fa_grad_params *, const fa_tile *);
    cudaError_t (*launch)(const fa_params *, const fa_grad_params *, const fa_bwd_workspace *, const fa_launch *,
                          cudaStream_t);
};
static Backward g_bwd = {FA_KERNEL_SM80, fa_sm80_bwd_tile, fa_sm80_bwd_kernel_fn, fa_sm80_bwd_launch};
/* what the tile is planned for (--smem-optin, else the device's) */
static int g_smem_optin = 0;

/* The shape of a problem for the family under test: sizes, dtype, scale 1/sqrt(D), mask (mask.h's
 * window, causal folded in by the kernels) and softcap, deterministic mode; strides and
 * pointers are the caller's. */
static void problem_params(int B, int Sq, int Sk, int Hq, int Hk, int D, bool bf16, int causal, int wl, int wr,
                           float softcap, int det, fa_params *p, fa_grad_params *g)
{
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    memset(g, 0, sizeof *g);
    g->struct_size = sizeof *g;
    p->batch = B;
    p->seqlen_q = Sq;
    p->seqlen_k = Sk;
    p->heads_q = Hq;
    p->heads_kv = Hk;
    p->head_dim = D;
    p->dtype = bf16 ? FA_BFLOAT16 : FA_FLOAT16;
    p->softmax_scale = 1.0f / sqrtf((float)D);
    p->causal = causal;
    p->window_left = wl;
    p->window_right = wr;
    p->softcap = softcap;
    p->family = g_bwd.family;
    g->deterministic = det;
}

/* The main kernel's launch for tile t: a CTA per block of keys (seqlen_k: the longest entry's),
 * kv head and batch entry, as backward.c plans it. */
static fa_launch launch_of(const fa_tile &t, int seqlen_k, int heads_kv, int batch)
{
    fa_launch cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.grid[0] = (seqlen_k + t.block_n - 1) / t.block_n;
    cfg.grid[1] = heads_kv;
    cfg.grid[2] = batch;
    cfg.block[0] = 384;
    cfg.block[1] = cfg.block[2] = 1;
    cfg.smem_bytes = t.smem_bytes;
    cfg.block_m = t.block_m;
    cfg.block_n = t.block_n;
    cfg.head_dim_padded = t.head_dim_padded;
    return cfg;
}

/* Fills *t for the case; false, after saying why, where the family under test declines it:
 * a skip for the sm90 backward (it serves a subset), a failure for the sm80 one. */
static bool tile_for(const char *name, const fa_params *p, const fa_grad_params *g, fa_tile *t)
{
    if (g_bwd.tile(p, g, g_smem_optin, t) == 0)
        return true;
    if (g_bwd.family == FA_KERNEL_SM90) {
        const char *why = fa_sm90_bwd_unsupported(p, g);
        printf("%-44s skipped: %s\n", name, why ? why : "no sm90 instance");
        return false;
    }
    printf("%-40s no tile\n", name);
    ++g_failures;
    return false;
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
        RowScratch scratch(Sk, D);
        const double *k_rows = &k[((size_t)b * Sk * Hk + hkv) * D], *v_rows = &v[((size_t)b * Sk * Hk + hkv) * D];
        for (int i = ch * row_chunk; i < std::min(Sq, (ch + 1) * row_chunk); ++i) {
            const size_t row = ((size_t)b * Sq + i) * Hq + h;
            const RowStats r = reference_row_backward(&q[row * D], &dout[row * D], k_rows, v_rows, (size_t)Hk * D,
                                                      fa_mask_row(&mask, i), D, scale, c.softcap, bf16,
                                                      &dq_ref[row * D], dkp.data(), dvp.data(), D, scratch);
            lse_in[((size_t)b * Hq + h) * Sq + i] = (float)r.lse;
            delta_in[((size_t)b * Hq + h) * Sq + i] = (float)r.delta;
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
    fa_grad_params g;
    problem_params(B, Sq, Sk, Hq, Hk, D, bf16, c.causal, c.wl, c.wr, c.softcap, c.det, &p, &g);
    p.q_batch_stride = lq.bs, p.q_row_stride = lq.rs, p.q_head_stride = lq.hs;
    p.k_batch_stride = lk.bs, p.k_row_stride = lk.rs, p.k_head_stride = lk.hs;
    p.v_batch_stride = lk.bs, p.v_row_stride = lk.rs, p.v_head_stride = lk.hs;
    g.do_batch_stride = lq.bs, g.do_row_stride = lq.rs, g.do_head_stride = lq.hs;
    g.dk_batch_stride = lg.bs, g.dk_row_stride = lg.rs, g.dk_head_stride = lg.hs;
    g.dv_batch_stride = lg.bs, g.dv_row_stride = lg.rs, g.dv_head_stride = lg.hs;

    fa_tile t;
    if (!tile_for(c.name, &p, &g, &t))
        return;
    const void *fn = g_bwd.kernel_fn(&p, &g, &t);
    if (!fn) {
        printf("%-40s no kernel\n", c.name);
        ++g_failures;
        return;
    }
    CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)t.smem_bytes));

    void *dq_ = dev_upload(q_b), *dk_in = dev_upload(k_b), *dv_in = dev_upload(v_b), *ddo = dev_upload(do_b);
    float *dlse = dev_upload(lse_in), *ddelta = dev_upload(delta_in);
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

    const fa_launch cfg = launch_of(t, Sk, Hk, B);

    std::vector<float> acc(acc_elems + guard), acc_first;
    std::vector<uint16_t> dk_o(lg.elems), dv_o(lg.elems), dk_first, dv_first;
    const int runs = c.det ? 2 : 1;
    bool bitwise = true;
    for (int r = 0; r < runs; ++r) {
        CK(cudaMemset(dacc, 0, (acc_elems + guard) * 4));
        CK(cudaMemset(dlock, 0, std::max(lock_n, 1) * 4));
        CK(cudaMemset(ddk, 0xff, lg.elems * 2));
        CK(cudaMemset(ddv, 0xff, lg.elems * 2));
        CK(g_bwd.launch(&p, &g, &ws, &cfg, 0));
        finish_or_exit(c.name);
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

/* A packed (cu_seqlens_q, cu_seqlens_k) batch of ragged entries: q, dout, dq rows
 * [cu_q[b], cu_q[b+1]) and k, v, dk, dv rows [cu_k[b], cu_k[b] + len_k) of (total, heads,
 * head_dim) tensors, lse, delta and dq_accum's rows (heads, total_q) (seqlen.h). Rows before the
 * first entry and after the last belong to none; with used_k the entries see only their first
 * len_k of len_k + 7 packed keys (seqused_k), and the 7 belong to none. Reference and checks
 * as run_case, per entry; dk/dv rows of no entry must keep their NaN poison, and dq_accum rows
 * of no entry their zeros. */
static void run_packed_case(int D, bool bf16, int causal, int det, bool used_k)
{
    const int Hq = 6, Hk = 2, G = Hq / Hk;
    const std::vector<int> lq = {0, 1, 17, 128, 300}, lk = {5, 1, 300, 128, 17};
    const int B = (int)lq.size(), extra = used_k ? 7 : 0;
    std::vector<int32_t> cu_q(1, 2), cu_k(1, 1), used(lk.begin(), lk.end());
    for (int b = 0; b < B; ++b) {
        cu_q.push_back(cu_q.back() + lq[b]);
        cu_k.push_back(cu_k.back() + lk[b] + extra);
    }
    const int total_q = cu_q.back() + 3, total_k = cu_k.back() + 2;
    int Sq = 0, Sk = 0;
    for (int b = 0; b < B; ++b) {
        Sq = std::max(Sq, lq[b]);
        Sk = std::max(Sk, cu_k[b + 1] - cu_k[b]);
    }
    const float scale = 1.0f / sqrtf((float)D);
    char name[96];
    snprintf(name, sizeof name, "packed hd%d %s %s%s%s (0,1,17,128,300)", D, bf16 ? "bf16" : "fp16",
             causal ? "causal" : "none", det ? " det" : "", used_k ? " seqused_k" : "");
    std::mt19937_64 rng(99 + D + causal * 3 + det * 5 + used_k * 7);
    std::normal_distribution<float> nd(0.f, 1.f);
    const int64_t qrs = (int64_t)Hq * D, krs = (int64_t)Hk * D;
    std::vector<uint16_t> q_b(total_q * qrs), do_b(total_q * qrs);
    std::vector<uint16_t> k_b(total_k * krs), v_b(total_k * krs);
    std::vector<double> q(q_b.size()), dout(q_b.size()), k(k_b.size()), v(k_b.size());
    auto fill = [&](std::vector<uint16_t> &bits, std::vector<double> &vals) {
        for (size_t i = 0; i < bits.size(); ++i) {
            bits[i] = to_bits(nd(rng), bf16);
            vals[i] = from_bits(bits[i], bf16);
        }
    };
    fill(q_b, q);
    fill(do_b, dout);
    fill(k_b, k);
    fill(v_b, v);

    /* ---- reference, per entry ---- */
    std::vector<double> dq_ref(q.size(), 0.0), dk_ref(k.size(), 0.0), dv_ref(k.size(), 0.0);
    std::vector<float> lse_in((size_t)Hq * total_q, 0.f), delta_in((size_t)Hq * total_q, 0.f);
    for (int b = 0; b < B; ++b) {
        const fa_mask mask = fa_mask_make(lq[b], lk[b], -1, -1, causal);
        RowScratch scratch(lk[b], D);
        for (int h = 0; h < Hq; ++h) {
            const size_t kv_col = (size_t)cu_k[b] * krs + (size_t)(h / G) * D;
            for (int i = 0; i < lq[b]; ++i) {
                const size_t qr = (size_t)(cu_q[b] + i) * qrs + (size_t)h * D;
                const fa_key_span span = lk[b] > 0 ? fa_mask_row(&mask, i) : fa_key_span{0, -1};
                const RowStats r = reference_row_backward(&q[qr], &dout[qr], &k[kv_col], &v[kv_col], krs, span, D,
                                                          scale, 0.0, bf16, &dq_ref[qr], &dk_ref[kv_col],
                                                          &dv_ref[kv_col], krs, scratch);
                lse_in[(size_t)h * total_q + cu_q[b] + i] = (float)r.lse;
                delta_in[(size_t)h * total_q + cu_q[b] + i] = (float)r.delta;
            }
        }
    }

    /* ---- device ---- */
    fa_params pp;
    fa_grad_params g;
    problem_params(B, Sq, Sk, Hq, Hk, D, bf16, causal, -1, -1, 0.f, det, &pp, &g);
    pp.total_q = total_q;
    pp.total_k = total_k;
    pp.q_row_stride = qrs, pp.q_head_stride = D;
    pp.k_row_stride = pp.v_row_stride = krs, pp.k_head_stride = pp.v_head_stride = D;
    g.do_row_stride = qrs, g.do_head_stride = D;
    g.dk_row_stride = g.dv_row_stride = krs, g.dk_head_stride = g.dv_head_stride = D;
    /* the layout before the tile: a family may decline it (the sm90 one takes no seqused_k) */
    int32_t *d_cuq = dev_upload(cu_q), *d_cuk = dev_upload(cu_k), *d_used = dev_upload(used);
    pp.cu_seqlens_q = d_cuq, pp.cu_seqlens_k = d_cuk, pp.seqused_k = used_k ? d_used : nullptr;
    fa_tile t;
    if (!tile_for(name, &pp, &g, &t))
        return;
    void *d_q = dev_upload(q_b), *d_k = dev_upload(k_b), *d_v = dev_upload(v_b), *d_do = dev_upload(do_b);
    float *d_lse = dev_upload(lse_in), *d_delta = dev_upload(delta_in);
    const size_t acc_elems = (size_t)Hq * total_q * D, guard = 4096;
    float *d_acc;
    CK(cudaMalloc(&d_acc, (acc_elems + guard) * 4));
    const int lock_n = B * Hq * ((Sq + t.block_m - 1) / t.block_m);
    int *d_lock;
    CK(cudaMalloc(&d_lock, std::max(lock_n, 1) * 4));
    void *d_dk, *d_dv;
    CK(cudaMalloc(&d_dk, k_b.size() * 2));
    CK(cudaMalloc(&d_dv, k_b.size() * 2));
    pp.q = d_q, pp.k = d_k, pp.v = d_v, pp.lse = d_lse;
    g.dout = d_do, g.dk = d_dk, g.dv = d_dv;
    const void *fn = g_bwd.kernel_fn(&pp, &g, &t);
    CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)t.smem_bytes));
    fa_bwd_workspace ws;
    memset(&ws, 0, sizeof ws);
    ws.dq_accum = d_acc;
    ws.delta = d_delta;
    ws.dq_lock = det ? d_lock : nullptr;
    ws.block_m = t.block_m;
    const fa_launch cfg = launch_of(t, Sk, Hk, B);
    std::vector<float> acc(acc_elems + guard), acc_first;
    std::vector<uint16_t> dk_o(k_b.size()), dv_o(k_b.size()), dk_first, dv_first;
    bool bitwise = true;
    for (int r = 0; r < (det ? 2 : 1); ++r) {
        CK(cudaMemset(d_acc, 0, (acc_elems + guard) * 4));
        CK(cudaMemset(d_lock, 0, std::max(lock_n, 1) * 4));
        CK(cudaMemset(d_dk, 0xff, k_b.size() * 2));
        CK(cudaMemset(d_dv, 0xff, k_b.size() * 2));
        CK(g_bwd.launch(&pp, &g, &ws, &cfg, 0));
        finish_or_exit(name);
        CK(cudaMemcpy(acc.data(), d_acc, acc.size() * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(dk_o.data(), d_dk, dk_o.size() * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(dv_o.data(), d_dv, dv_o.size() * 2, cudaMemcpyDeviceToHost));
        if (r == 0) {
            acc_first = acc, dk_first = dk_o, dv_first = dv_o;
        } else {
            bitwise = memcmp(acc.data(), acc_first.data(), acc.size() * 4) == 0 &&
                      dk_o == dk_first && dv_o == dv_first;
        }
    }

    /* ---- compare ---- */
    std::vector<int> q_owner(total_q, -1), k_owner(total_k, -1);
    for (int b = 0; b < B; ++b) {
        for (int i = 0; i < lq[b]; ++i)
            q_owner[cu_q[b] + i] = b;
        for (int j = 0; j < lk[b]; ++j)
            k_owner[cu_k[b] + j] = b;
    }
    double mq = 0, mk = 0, mv = 0, eq = 0, ek = 0, ev = 0;
    int64_t stray = 0;
    bool finite = true;
    for (size_t i = acc_elems; i < acc.size(); ++i)
        stray += acc[i] != 0.f;
    for (int h = 0; h < Hq; ++h)
        for (int r = 0; r < total_q; ++r)
            for (int d = 0; d < D; ++d) {
                const float a = acc[((size_t)h * total_q + r) * D + d];
                if (q_owner[r] < 0) {
                    stray += a != 0.f;
                    continue;
                }
                const double ref = dq_ref[r * qrs + h * D + d], ours = (double)scale * a;
                finite &= std::isfinite(ours);
                mq = std::max(mq, fabs(ref));
                eq = std::max(eq, fabs(ours - ref));
            }
    for (int r = 0; r < total_k; ++r)
        for (int e = 0; e < krs; ++e) {
            const size_t at = (size_t)r * krs + e;
            if (k_owner[r] < 0) {
                stray += dk_o[at] != 0xffff || dv_o[at] != 0xffff;
                continue;
            }
            const double ok_ = from_bits(dk_o[at], bf16), ov = from_bits(dv_o[at], bf16);
            finite &= std::isfinite(ok_) && std::isfinite(ov);
            mk = std::max(mk, fabs(dk_ref[at]));
            mv = std::max(mv, fabs(dv_ref[at]));
            ek = std::max(ek, fabs(ok_ - dk_ref[at]));
            ev = std::max(ev, fabs(ov - dv_ref[at]));
        }
    const double tol = bf16 ? 2e-2 : 1e-2;
    auto rel = [](double e, double m) { return m > 0 ? e / m : e; };
    const double rq = rel(eq, mq), rk = rel(ek, mk), rv = rel(ev, mv);
    const bool ok = finite && stray == 0 && bitwise && rq <= tol && rk <= tol && rv <= tol;
    printf("%-44s dq %.2e dk %.2e dv %.2e (max|ref| %.1e %.1e %.1e)%s%s%s %s\n", name, rq, rk,
           rv, mq, mk, mv, finite ? "" : " NONFINITE", stray ? " STRAY-WRITE" : "",
           det ? (bitwise ? " bitwise=yes" : " bitwise=NO") : "", ok ? "ok" : "FAIL");
    if (!ok)
        ++g_failures;
    cudaFree(d_q), cudaFree(d_k), cudaFree(d_v), cudaFree(d_do), cudaFree(d_lse), cudaFree(d_delta);
    cudaFree(d_cuq), cudaFree(d_cuk), cudaFree(d_used), cudaFree(d_acc), cudaFree(d_lock);
    cudaFree(d_dk), cudaFree(d_dv);
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
    fa_grad_params g;
    problem_params(B, S, S, H, H, D, bf16, causal, -1, -1, softcap, det, &p, &g);
    const int64_t rs = (int64_t)H * D, bs = (int64_t)S * rs;
    p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = bs;
    p.q_row_stride = p.k_row_stride = p.v_row_stride = rs;
    p.q_head_stride = p.k_head_stride = p.v_head_stride = D;
    g.do_batch_stride = g.dk_batch_stride = g.dv_batch_stride = bs;
    g.do_row_stride = g.dk_row_stride = g.dv_row_stride = rs;
    g.do_head_stride = g.dk_head_stride = g.dv_head_stride = D;
    fa_tile t;
    char name[96];
    snprintf(name, sizeof name, "time hd%d S=%d", D, S);
    if (!tile_for(name, &p, &g, &t))
        return;
    const void *fn = g_bwd.kernel_fn(&p, &g, &t);
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
    const fa_launch cfg = launch_of(t, S, H, B);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    const int warm = 2, iters = 5;
    float best = 1e30f, total = 0;
    for (int i = 0; i < warm + iters; ++i) {
        if (det)
            CK(cudaMemsetAsync(lock, 0, lock_n * 4, 0));
        CK(cudaEventRecord(e0, 0));
        CK(g_bwd.launch(&p, &g, &ws, &cfg, 0));
        CK(cudaEventRecord(e1, 0));
        if (i == 0)
            finish_or_exit(name); /* the timed shapes are larger than the checked ones */
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
    std::string mode = "all";
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--family" && i + 1 < argc) {
            const std::string fam = argv[++i];
            if (fam == "sm90")
                g_bwd = Backward{FA_KERNEL_SM90, sm90_tile, fa_sm90_bwd_kernel_fn, fa_sm90_bwd_launch};
            else if (fam != "sm80") {
                fprintf(stderr, "--family takes sm80 or sm90, not %s\n", fam.c_str());
                return 2;
            }
        } else if (arg == "--smem-optin" && i + 1 < argc) {
            g_smem_optin = atoi(argv[++i]);
        } else {
            mode = arg;
        }
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    if (g_smem_optin <= 0 || g_smem_optin > (int)prop.sharedMemPerBlockOptin)
        g_smem_optin = (int)prop.sharedMemPerBlockOptin;
    printf("device %s, sm_%d%d, %d SMs; %s backward, tiles planned for %d bytes of shared memory\n",
           prop.name, prop.major, prop.minor, prop.multiProcessorCount,
           g_bwd.family == FA_KERNEL_SM90 ? "sm90" : "sm80", g_smem_optin);
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
        /* head_dim 256 instances whose last 64-column chunk lies wholly past head_dim */
        add(Case{nullptr, 160, 1, 1, 2, 2, 239, 239, 1, -1, -1, 0.f, 0, 0}, "hd160 bf16 causal 239");
        add(Case{nullptr, 192, 0, 1, 2, 1, 113, 203, 0, -1, -1, 0.f, 0, 1}, "hd192 fp16 none 113x203 sdpa");
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
        /* many key blocks per query block: each waits its turn, while its consumers run ahead */
        add(Case{nullptr, 256, 1, 1, 2, 1, 1023, 1023, 0, -1, -1, 0.f, 1, 0}, "hd256 bf16 none 1023 2:1 det");
        for (const Case &c : cases)
            run_case(c);
        /* packed ragged batches (cu_seqlens), one with seqused_k */
        run_packed_case(64, true, 1, 0, false);
        run_packed_case(128, true, 1, 1, false);
        run_packed_case(128, false, 0, 0, true);
        run_packed_case(256, true, 1, 0, false);
        printf("%d cases, %d failed\n", (int)cases.size() + 4, g_failures);
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
