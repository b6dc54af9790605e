/*
 * bwd_aux_check.cu -- checks the backward's preprocess and postprocess (bwd_sm80_aux.cu)
 * against a host computation, standalone (no library, no Python).
 *
 *   nvcc -O3 -std=c++17 --use_fast_math -DFA_WITH_SM80 -I csrc \
 *     -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
 *     dev/bwd_aux_check.cu -o bwd_aux_check && ./bwd_aux_check
 *
 * Per case (seqlen_q 1, 17, 113, 4224 x head_dim 64, 72 x fp16, bf16 x {no sinks, sinks} x
 * {atomic, dq_lock}), with out, dout and dq each in its own padded layout:
 *   pre:  delta against a float64 sum; dsink_part against float64 with the same row groups;
 *         dq_accum and dq_lock zeroed where they were poisoned; no write past any buffer.
 *   post: dq bit-exact against the host's fp32 scale-and-round, padding untouched; dsinks
 *         against a float64 sum of the device's dsink_part.
 *   both again: delta, dsink_part, dq and dsinks bitwise the same (fixed reduction order).
 * Then one case whose batch stride passes 2^31 elements (about 13 GB of device memory;
 * skipped when it cannot be allocated), and packed (cu_seqlens_q) batches of ragged lengths
 * (0, 1, 17, 128, 300, 65: run_packed_case), where rows outside every entry must stay
 * untouched. Exit status 0 when everything passes.
 */
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "kernels/bwd_sm80_aux.cu"
#include "dev_check.h"

static const int kCanary = 64; /* elements past the end of every buffer that must stay poisoned */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float urand() /* [0, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / 16777216.0));
}

static uint32_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* A (batch, seqlen, heads, head_dim) tensor in element strides (all multiples of 8). */
struct Layout {
    int64_t bs, rs, hs;
    int64_t span(int S, int H, int D) const { return (int64_t)(S - 1) * rs + (int64_t)(H - 1) * hs + D; }
    int64_t elems(int B, int S, int H, int D) const { return (int64_t)(B - 1) * bs + span(S, H, D); }
};

static const uint16_t kPad16 = 0xFFFF; /* NaN in fp16 and bf16 */

/* A 16-bit device tensor: compact host values v[(b, i, h, d)] placed in layout L, pads poisoned. */
struct Tensor16 {
    Layout L;
    uint16_t *dev = nullptr;
    int64_t dev_elems = 0;
};

static bool alloc16(Tensor16 &t, int B, int S, int H, int D)
{
    t.dev_elems = t.L.elems(B, S, H, D) + kCanary;
    if (cudaMalloc(&t.dev, (size_t)t.dev_elems * 2) != cudaSuccess) {
        cudaGetLastError();
        t.dev = nullptr;
        return false;
    }
    /* Whole-buffer poison only where it is small; a huge buffer gets its spans and canary. */
    if (t.dev_elems < ((int64_t)1 << 28))
        CK(cudaMemset(t.dev, 0xFF, (size_t)t.dev_elems * 2));
    else
        CK(cudaMemset(t.dev + t.dev_elems - kCanary, 0xFF, kCanary * 2));
    return true;
}

static void upload16(const Tensor16 &t, const std::vector<uint16_t> &v, int B, int S, int H, int D)
{
    const int64_t span = t.L.span(S, H, D);
    std::vector<uint16_t> hb((size_t)span);
    for (int b = 0; b < B; ++b) {
        std::fill(hb.begin(), hb.end(), kPad16);
        for (int i = 0; i < S; ++i)
            for (int h = 0; h < H; ++h)
                memcpy(&hb[(size_t)(i * t.L.rs + h * t.L.hs)], &v[(((size_t)b * S + i) * H + h) * D], (size_t)D * 2);
        CK(cudaMemcpy(t.dev + b * t.L.bs, hb.data(), (size_t)span * 2, cudaMemcpyHostToDevice));
    }
}

/* Reads the tensor back compact; counts pad elements inside the spans, and canary elements,
 * that are no longer poisoned. */
static int64_t download16(const Tensor16 &t, std::vector<uint16_t> &v, int B, int S, int H, int D)
{
    const int64_t span = t.L.span(S, H, D);
    std::vector<uint16_t> hb((size_t)span);
    std::vector<char> used((size_t)span);
    v.assign((size_t)B * S * H * D, 0);
    int64_t bad = 0;
    for (int b = 0; b < B; ++b) {
        CK(cudaMemcpy(hb.data(), t.dev + b * t.L.bs, (size_t)span * 2, cudaMemcpyDeviceToHost));
        std::fill(used.begin(), used.end(), 0);
        for (int i = 0; i < S; ++i)
            for (int h = 0; h < H; ++h) {
                const size_t o = (size_t)(i * t.L.rs + h * t.L.hs);
                memcpy(&v[(((size_t)b * S + i) * H + h) * D], &hb[o], (size_t)D * 2);
                memset(&used[o], 1, (size_t)D);
            }
        for (int64_t k = 0; k < span; ++k)
            bad += !used[(size_t)k] && hb[(size_t)k] != kPad16;
    }
    uint16_t c[kCanary];
    CK(cudaMemcpy(c, t.dev + t.dev_elems - kCanary, sizeof(c), cudaMemcpyDeviceToHost));
    for (int k = 0; k < kCanary; ++k)
        bad += c[k] != kPad16;
    return bad;
}

template <typename T> static T *dalloc(int64_t n, int fill_byte)
{
    T *p;
    CK(cudaMalloc(&p, (size_t)(n + kCanary) * sizeof(T)));
    CK(cudaMemset(p, fill_byte, (size_t)(n + kCanary) * sizeof(T)));
    return p;
}

template <typename T> static std::vector<T> dread(const T *p, int64_t n)
{
    std::vector<T> v((size_t)(n + kCanary));
    CK(cudaMemcpy(v.data(), p, v.size() * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
}

template <typename T> static int canary_bad(const std::vector<T> &v, int64_t n, int fill_byte)
{
    T want;
    memset(&want, fill_byte, sizeof(T));
    int bad = 0;
    for (int k = 0; k < kCanary; ++k)
        bad += memcmp(&v[(size_t)(n + k)], &want, sizeof(T)) != 0;
    return bad;
}

struct Case {
    int B, H, S, D;
    fa_dtype dt;
    int sinks, lock, block_m;
    int64_t min_batch_stride; /* 0: just the padded size */
};

static int failures = 0;

static void report(const Case &c, const char *what, int64_t bad, const char *detail = "")
{
    if (bad == 0)
        return;
    ++failures;
    printf("  FAIL B=%d H=%d S=%d D=%d %s sinks=%d lock=%d(bm %d): %s: %lld %s\n", c.B, c.H, c.S, c.D,
           c.dt == FA_FLOAT16 ? "fp16" : "bf16", c.sinks, c.lock, c.block_m, what, (long long)bad, detail);
}

static void run_case(const Case &c)
{
    const int B = c.B, H = c.H, S = c.S, D = c.D, R = FA_BWD_PRE_ROWS;
    const int parts = (S + R - 1) / R;
    const int64_t rows_total = (int64_t)B * H * S;
    const int failures_before = failures;

    /* Layouts: out (b, s, h, d) padded; dout (b, h, s, d) padded; dq (b, s, h, d) compact. */
    Tensor16 out, dout, dq;
    out.L.hs = D + 8;
    out.L.rs = H * out.L.hs + 16;
    out.L.bs = S * out.L.rs + 24;
    dout.L.rs = D + 8;
    dout.L.hs = (int64_t)S * dout.L.rs + 8;
    dout.L.bs = H * dout.L.hs + 8;
    dq.L.hs = D;
    dq.L.rs = (int64_t)H * D;
    dq.L.bs = (int64_t)S * H * D;
    if (c.min_batch_stride) {
        out.L.bs = c.min_batch_stride;
        dout.L.bs = c.min_batch_stride + 8;
        dq.L.bs = c.min_batch_stride + 16;
    }
    if (!alloc16(out, B, S, H, D) || !alloc16(dout, B, S, H, D) || !alloc16(dq, B, S, H, D)) {
        printf("  SKIP B=%d S=%d D=%d batch stride %lld: not enough device memory\n", B, S, D,
               (long long)c.min_batch_stride);
        cudaFree(out.dev);
        cudaFree(dout.dev);
        cudaFree(dq.dev);
        return;
    }

    /* Inputs. With sinks the last head's sink is -inf (no sink weight); rows i % 7 == 3 see no
     * key: out = 0 and lse = the sink. */
    std::vector<float> sinks(H);
    for (int h = 0; h < H; ++h)
        sinks[h] = (h == H - 1 && H > 1) ? -INFINITY : 4.0f * urand() - 2.0f;
    std::vector<float> lse((size_t)rows_total);
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
            for (int i = 0; i < S; ++i) {
                float v;
                if (!c.sinks)
                    v = 6.0f * urand() - 1.0f;
                else if (i % 7 == 3)
                    v = sinks[h];
                else if (i % 11 == 5)
                    v = (sinks[h] == -INFINITY ? 0.0f : sinks[h]) + 200.0f;
                else
                    v = (sinks[h] == -INFINITY ? 2.0f * urand() : sinks[h] + 3.0f * urand());
                lse[((size_t)b * H + h) * S + i] = v;
            }
    const size_t n_elem = (size_t)B * S * H * D;
    std::vector<uint16_t> h_out(n_elem), h_dout(n_elem);
    for (int b = 0; b < B; ++b)
        for (int i = 0; i < S; ++i)
            for (int h = 0; h < H; ++h)
                for (int d = 0; d < D; ++d) {
                    const size_t k = (((size_t)b * S + i) * H + h) * D + d;
                    const bool empty = c.sinks && i % 7 == 3;
                    h_out[k] = to_bits(empty ? 0.0f : 2.0f * urand() - 1.0f, c.dt);
                    h_dout[k] = to_bits(4.0f * urand() - 2.0f, c.dt);
                }
    upload16(out, h_out, B, S, H, D);
    upload16(dout, h_dout, B, S, H, D);

    float *d_lse = dalloc<float>(rows_total, 0);
    CK(cudaMemcpy(d_lse, lse.data(), lse.size() * 4, cudaMemcpyHostToDevice));
    float *d_sinks = nullptr, *d_dsinks = nullptr;
    if (c.sinks) {
        d_sinks = dalloc<float>(H, 0);
        CK(cudaMemcpy(d_sinks, sinks.data(), (size_t)H * 4, cudaMemcpyHostToDevice));
        d_dsinks = dalloc<float>(H, 0xFF);
    }
    const int64_t n_acc = rows_total * D;
    const int n_lock_per = c.lock ? (S + c.block_m - 1) / c.block_m : 0;
    const int64_t n_lock = (int64_t)B * H * n_lock_per;
    const int64_t n_part = (int64_t)B * H * parts;
    float *d_acc = dalloc<float>(n_acc, 0xFF);
    float *d_delta = dalloc<float>(rows_total, 0xFF);
    float *d_part = c.sinks ? dalloc<float>(n_part, 0xFF) : nullptr;
    int *d_lock = c.lock ? dalloc<int>(n_lock, 0x7F) : nullptr;

    fa_params p;
    memset(&p, 0, sizeof(p));
    p.struct_size = sizeof(p);
    p.out = out.dev;
    p.lse = d_lse;
    p.o_batch_stride = out.L.bs;
    p.o_row_stride = out.L.rs;
    p.o_head_stride = out.L.hs;
    p.batch = B;
    p.seqlen_q = S;
    p.seqlen_k = S;
    p.heads_q = H;
    p.heads_kv = H;
    p.head_dim = D;
    p.dtype = c.dt;
    p.softmax_scale = 1.0f / sqrtf((float)D);
    p.window_left = p.window_right = -1;
    p.sinks = d_sinks;
    fa_grad_params g;
    memset(&g, 0, sizeof(g));
    g.struct_size = sizeof(g);
    g.dout = dout.dev;
    g.dq = dq.dev;
    g.dsinks = d_dsinks;
    g.do_batch_stride = dout.L.bs;
    g.do_row_stride = dout.L.rs;
    g.do_head_stride = dout.L.hs;
    g.dq_batch_stride = dq.L.bs;
    g.dq_row_stride = dq.L.rs;
    g.dq_head_stride = dq.L.hs;
    g.deterministic = c.lock;
    fa_bwd_workspace ws;
    ws.dq_accum = d_acc;
    ws.delta = d_delta;
    ws.dsink_part = d_part;
    ws.dq_lock = d_lock;
    ws.block_m = c.block_m;
    fa_launch cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.grid[0] = (unsigned)parts;
    cfg.grid[1] = (unsigned)H;
    cfg.grid[2] = (unsigned)B;
    cfg.block[0] = 384;
    cfg.block[1] = cfg.block[2] = 1;
    cfg.smem_bytes = 0;

    /* ---- preprocess ---- */
    CK(fa_bwd_pre_launch(&p, &g, &ws, &cfg, 0));
    CK(cudaDeviceSynchronize());

    std::vector<double> delta_ref((size_t)rows_total), delta_mag((size_t)rows_total);
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h)
            for (int i = 0; i < S; ++i) {
                double s = 0.0, m = 0.0;
                const size_t k = (((size_t)b * S + i) * H + h) * D;
                for (int d = 0; d < D; ++d) {
                    const double t = (double)from_bits(h_dout[k + d], c.dt) * from_bits(h_out[k + d], c.dt);
                    s += t;
                    m += fabs(t);
                }
                delta_ref[((size_t)b * H + h) * S + i] = s;
                delta_mag[((size_t)b * H + h) * S + i] = m;
            }
    const std::vector<float> delta = dread(d_delta, rows_total);
    {
        int64_t bad = 0;
        for (int64_t k = 0; k < rows_total; ++k)
            bad += !(fabs(delta[(size_t)k] - delta_ref[(size_t)k]) <= 1e-5 * delta_mag[(size_t)k] + 1e-6);
        report(c, "delta", bad);
        report(c, "delta canary", canary_bad(delta, rows_total, 0xFF));
    }
    {
        const std::vector<float> acc = dread(d_acc, n_acc);
        int64_t bad = 0;
        for (int64_t k = 0; k < n_acc; ++k)
            bad += fbits(acc[(size_t)k]) != 0u;
        report(c, "dq_accum not zeroed", bad);
        report(c, "dq_accum canary", canary_bad(acc, n_acc, 0xFF));
    }
    if (c.lock) {
        const std::vector<int> lock = dread(d_lock, n_lock);
        int64_t bad = 0;
        for (int64_t k = 0; k < n_lock; ++k)
            bad += lock[(size_t)k] != 0;
        report(c, "dq_lock not zeroed", bad);
        report(c, "dq_lock canary", canary_bad(lock, n_lock, 0x7F));
    }
    std::vector<float> part;
    if (c.sinks) {
        part = dread(d_part, n_part);
        int64_t bad = 0;
        char detail[160] = "";
        for (int b = 0; b < B; ++b)
            for (int h = 0; h < H; ++h)
                for (int x = 0; x < parts; ++x) {
                    double s = 0.0, m = 0.0;
                    for (int i = x * R; i < S && i < (x + 1) * R; ++i) {
                        const size_t r = ((size_t)b * H + h) * S + i;
                        const double w = lse[r] == sinks[h] ? 1.0 : exp((double)sinks[h] - lse[r]);
                        s -= w * delta_ref[r];
                        m += w * delta_mag[r];
                    }
                    const float got = part[((size_t)b * H + h) * parts + x];
                    if (!(fabs(got - s) <= 2e-5 * m + 1e-6)) {
                        if (!bad)
                            snprintf(detail, sizeof(detail), "(first at b %d h %d x %d: %g vs %g)", b, h, x,
                                     (double)got, s);
                        ++bad;
                    }
                }
        report(c, "dsink_part", bad, detail);
        report(c, "dsink_part canary", canary_bad(part, n_part, 0xFF));
    }

    /* ---- postprocess, from a random accumulator ---- */
    std::vector<float> acc((size_t)n_acc);
    for (auto &v : acc)
        v = 8.0f * urand() - 4.0f;
    CK(cudaMemcpy(d_acc, acc.data(), (size_t)n_acc * 4, cudaMemcpyHostToDevice));
    CK(fa_bwd_post_launch(&p, &g, &ws, &cfg, 0));
    CK(cudaDeviceSynchronize());

    std::vector<uint16_t> got_dq;
    report(c, "dq padding/canary written", download16(dq, got_dq, B, S, H, D));
    {
        int64_t bad = 0;
        for (int b = 0; b < B; ++b)
            for (int i = 0; i < S; ++i)
                for (int h = 0; h < H; ++h)
                    for (int d = 0; d < D; ++d) {
                        const float a = acc[(((size_t)b * H + h) * S + i) * D + d];
                        const uint16_t want = to_bits(p.softmax_scale * a, c.dt);
                        bad += got_dq[(((size_t)b * S + i) * H + h) * D + d] != want;
                    }
        report(c, "dq", bad);
    }
    std::vector<float> dsinks;
    if (c.sinks) {
        dsinks = dread(d_dsinks, H);
        int64_t bad = 0;
        for (int h = 0; h < H; ++h) {
            double s = 0.0, m = 0.0;
            for (int b = 0; b < B; ++b)
                for (int x = 0; x < parts; ++x) {
                    const double v = part[((size_t)b * H + h) * parts + x];
                    s += v;
                    m += fabs(v);
                }
            bad += !(fabs(dsinks[(size_t)h] - s) <= 1e-5 * m + 1e-6);
        }
        report(c, "dsinks", bad);
        report(c, "dsinks canary", canary_bad(dsinks, H, 0xFF));
    }

    /* ---- again: bitwise the same ---- */
    CK(fa_bwd_pre_launch(&p, &g, &ws, &cfg, 0));
    CK(cudaDeviceSynchronize());
    {
        const std::vector<float> delta2 = dread(d_delta, rows_total);
        report(c, "delta not reproducible", memcmp(delta.data(), delta2.data(), (size_t)rows_total * 4) != 0);
        if (c.sinks) {
            const std::vector<float> part2 = dread(d_part, n_part);
            report(c, "dsink_part not reproducible", memcmp(part.data(), part2.data(), (size_t)n_part * 4) != 0);
        }
    }
    CK(cudaMemcpy(d_acc, acc.data(), (size_t)n_acc * 4, cudaMemcpyHostToDevice));
    CK(fa_bwd_post_launch(&p, &g, &ws, &cfg, 0));
    CK(cudaDeviceSynchronize());
    {
        std::vector<uint16_t> got_dq2;
        download16(dq, got_dq2, B, S, H, D);
        report(c, "dq not reproducible", got_dq != got_dq2);
        if (c.sinks) {
            const std::vector<float> dsinks2 = dread(d_dsinks, H);
            report(c, "dsinks not reproducible", memcmp(dsinks.data(), dsinks2.data(), (size_t)H * 4) != 0);
        }
    }

    if (failures == failures_before)
        printf("  ok   B=%d H=%d S=%d D=%d %s sinks=%d lock=%d(bm %d)%s\n", B, H, S, D,
               c.dt == FA_FLOAT16 ? "fp16" : "bf16", c.sinks, c.lock, c.block_m,
               c.min_batch_stride ? " (batch stride > 2^31)" : "");

    cudaFree(out.dev);
    cudaFree(dout.dev);
    cudaFree(dq.dev);
    cudaFree(d_lse);
    cudaFree(d_sinks);
    cudaFree(d_dsinks);
    cudaFree(d_acc);
    cudaFree(d_delta);
    cudaFree(d_part);
    cudaFree(d_lock);
}

/* A packed (varlen) batch: entries of ragged lengths own the rows [cu[b], cu[b + 1]) of
 * (total, heads, head_dim) out, dout and dq, with 2 rows before the first entry and 3 after the
 * last that no entry owns; lse, delta and dq_accum's rows are (heads, total_q) (fa_lse_index).
 * Checked: delta, dq_accum zeroed and dq_lock counters zeroed for the entries' own rows and
 * blocks, dsink_part per entry and part (0 past an entry's rows), dq bit-exact; every row and
 * counter outside them (and the canaries) still poisoned. */
static void run_packed_case(int D, fa_dtype dt, int sinks_on, int lock, int block_m)
{
    const int H = 3, R = FA_BWD_PRE_ROWS;
    const std::vector<int> lens = {0, 1, 17, 128, 300, 65};
    const int B = (int)lens.size();
    std::vector<int32_t> cu(1, 2);
    for (int b = 0; b < B; ++b)
        cu.push_back(cu.back() + lens[b]);
    const int total = cu.back() + 3, S = *std::max_element(lens.begin(), lens.end());
    const int parts = (S + R - 1) / R;
    const int failures_before = failures;
    const Case c = {B, H, S, D, dt, sinks_on, lock, block_m, 0};
    std::vector<int> owner(total, -1);
    for (int b = 0; b < B; ++b)
        for (int r = cu[b]; r < cu[b + 1]; ++r)
            owner[r] = b;

    /* one batch of `total` rows: out (total, H, D + 8 | row pad 16), dout (total, H, D | pad 8),
       dq compact; packed, the batch strides are 0 (the host passes 0, seqlen.h) */
    Tensor16 out, dout, dq;
    out.L.hs = D + 8;
    out.L.rs = H * out.L.hs + 16;
    dout.L.hs = D;
    dout.L.rs = (int64_t)H * D + 8;
    dq.L.hs = D;
    dq.L.rs = (int64_t)H * D;
    out.L.bs = dout.L.bs = dq.L.bs = 0;
    const Layout lo = out.L, ldo = dout.L, ldq = dq.L;
    alloc16(out, 1, total, H, D);
    alloc16(dout, 1, total, H, D);
    alloc16(dq, 1, total, H, D);

    std::vector<float> sinks(H);
    for (int h = 0; h < H; ++h)
        sinks[h] = (h == H - 1) ? -INFINITY : 4.0f * urand() - 2.0f;
    const int64_t n_stat = (int64_t)H * total;
    std::vector<float> lse((size_t)n_stat, 0.f);
    for (int h = 0; h < H; ++h)
        for (int r = 0; r < total; ++r) {
            if (owner[r] < 0)
                continue;
            const int i = r - cu[owner[r]];
            float v;
            if (!sinks_on)
                v = 6.0f * urand() - 1.0f;
            else if (i % 7 == 3)
                v = sinks[h];
            else
                v = (sinks[h] == -INFINITY ? 2.0f * urand() : sinks[h] + 3.0f * urand());
            lse[(size_t)h * total + r] = v;
        }
    const size_t n_elem = (size_t)total * H * D;
    std::vector<uint16_t> h_out(n_elem), h_dout(n_elem);
    for (size_t k = 0; k < n_elem; ++k) {
        const int r = (int)(k / ((size_t)H * D));
        const bool poison = owner[r] < 0; /* rows no entry owns: NaN, never read */
        h_out[k] = poison ? kPad16 : to_bits(2.0f * urand() - 1.0f, dt);
        h_dout[k] = poison ? kPad16 : to_bits(4.0f * urand() - 2.0f, dt);
    }
    upload16(out, h_out, 1, total, H, D);
    upload16(dout, h_dout, 1, total, H, D);

    float *d_lse = dalloc<float>(n_stat, 0);
    CK(cudaMemcpy(d_lse, lse.data(), lse.size() * 4, cudaMemcpyHostToDevice));
    float *d_sinks = nullptr, *d_dsinks = nullptr;
    if (sinks_on) {
        d_sinks = dalloc<float>(H, 0);
        CK(cudaMemcpy(d_sinks, sinks.data(), (size_t)H * 4, cudaMemcpyHostToDevice));
        d_dsinks = dalloc<float>(H, 0xFF);
    }
    int32_t *d_cu = dalloc<int32_t>(B + 1, 0);
    CK(cudaMemcpy(d_cu, cu.data(), cu.size() * 4, cudaMemcpyHostToDevice));
    const int64_t n_acc = n_stat * D;
    const int lock_per = (S + block_m - 1) / block_m;
    const int64_t n_lock = (int64_t)B * H * lock_per, n_part = (int64_t)B * H * parts;
    float *d_acc = dalloc<float>(n_acc, 0xFF);
    float *d_delta = dalloc<float>(n_stat, 0xFF);
    float *d_part = sinks_on ? dalloc<float>(n_part, 0xFF) : nullptr;
    int *d_lock = lock ? dalloc<int>(n_lock, 0x7F) : nullptr;

    fa_params p;
    memset(&p, 0, sizeof(p));
    p.struct_size = sizeof(p);
    p.out = out.dev;
    p.lse = d_lse;
    p.o_batch_stride = lo.bs;
    p.o_row_stride = lo.rs;
    p.o_head_stride = lo.hs;
    p.batch = B;
    p.seqlen_q = S;
    p.seqlen_k = S;
    p.heads_q = H;
    p.heads_kv = H;
    p.head_dim = D;
    p.dtype = dt;
    p.softmax_scale = 1.0f / sqrtf((float)D);
    p.window_left = p.window_right = -1;
    p.sinks = d_sinks;
    p.cu_seqlens_q = d_cu;
    p.cu_seqlens_k = d_cu;
    p.total_q = p.total_k = total;
    fa_grad_params g;
    memset(&g, 0, sizeof(g));
    g.struct_size = sizeof(g);
    g.dout = dout.dev;
    g.dq = dq.dev;
    g.dsinks = d_dsinks;
    g.do_batch_stride = ldo.bs;
    g.do_row_stride = ldo.rs;
    g.do_head_stride = ldo.hs;
    g.dq_batch_stride = ldq.bs;
    g.dq_row_stride = ldq.rs;
    g.dq_head_stride = ldq.hs;
    g.deterministic = lock;
    fa_bwd_workspace ws;
    ws.dq_accum = d_acc;
    ws.delta = d_delta;
    ws.dsink_part = d_part;
    ws.dq_lock = d_lock;
    ws.block_m = block_m;
    fa_launch cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.grid[0] = (unsigned)parts;
    cfg.grid[1] = (unsigned)H;
    cfg.grid[2] = (unsigned)B;
    cfg.block[0] = 384;
    cfg.block[1] = cfg.block[2] = 1;

    CK(fa_bwd_pre_launch(&p, &g, &ws, &cfg, 0));
    CK(cudaDeviceSynchronize());
    std::vector<double> delta_ref((size_t)n_stat, 0.0), delta_mag((size_t)n_stat, 0.0);
    for (int r = 0; r < total; ++r)
        for (int h = 0; h < H; ++h) {
            if (owner[r] < 0)
                continue;
            double sum = 0.0, m = 0.0;
            const size_t k = ((size_t)r * H + h) * D;
            for (int d = 0; d < D; ++d) {
                const double t = (double)from_bits(h_dout[k + d], dt) * from_bits(h_out[k + d], dt);
                sum += t;
                m += fabs(t);
            }
            delta_ref[(size_t)h * total + r] = sum;
            delta_mag[(size_t)h * total + r] = m;
        }
    {
        const std::vector<float> delta = dread(d_delta, n_stat);
        const std::vector<float> acc = dread(d_acc, n_acc);
        int64_t bad = 0, stray = 0, acc_bad = 0;
        for (int h = 0; h < H; ++h)
            for (int r = 0; r < total; ++r) {
                const size_t k = (size_t)h * total + r;
                if (owner[r] < 0) {
                    stray += fbits(delta[k]) != 0xFFFFFFFFu;
                    for (int d = 0; d < D; ++d)
                        stray += fbits(acc[k * D + d]) != 0xFFFFFFFFu;
                    continue;
                }
                bad += !(fabs(delta[k] - delta_ref[k]) <= 1e-5 * delta_mag[k] + 1e-6);
                for (int d = 0; d < D; ++d)
                    acc_bad += fbits(acc[k * D + d]) != 0u;
            }
        report(c, "packed delta", bad);
        report(c, "packed dq_accum not zeroed", acc_bad);
        report(c, "packed delta/dq_accum written outside the entries", stray);
        report(c, "packed delta canary", canary_bad(delta, n_stat, 0xFF));
        report(c, "packed dq_accum canary", canary_bad(acc, n_acc, 0xFF));
    }
    if (lock) {
        const std::vector<int> lk = dread(d_lock, n_lock);
        int64_t bad = 0;
        for (int b = 0; b < B; ++b)
            for (int h = 0; h < H; ++h)
                for (int m = 0; m < lock_per; ++m) {
                    const int v = lk[((size_t)b * H + h) * lock_per + m];
                    bad += m * block_m < lens[b] ? v != 0 : v != 0x7F7F7F7F;
                }
        report(c, "packed dq_lock", bad);
        report(c, "packed dq_lock canary", canary_bad(lk, n_lock, 0x7F));
    }
    std::vector<float> part;
    if (sinks_on) {
        part = dread(d_part, n_part);
        int64_t bad = 0;
        for (int b = 0; b < B; ++b)
            for (int h = 0; h < H; ++h)
                for (int x = 0; x < parts; ++x) {
                    double sum = 0.0, m = 0.0;
                    for (int i = x * R; i < lens[b] && i < (x + 1) * R; ++i) {
                        const size_t k = (size_t)h * total + cu[b] + i;
                        const double w = lse[k] == sinks[h] ? 1.0 : exp((double)sinks[h] - lse[k]);
                        sum -= w * delta_ref[k];
                        m += w * delta_mag[k];
                    }
                    bad += !(fabs(part[((size_t)b * H + h) * parts + x] - sum) <= 2e-5 * m + 1e-6);
                }
        report(c, "packed dsink_part", bad);
    }

    std::vector<float> acc((size_t)n_acc);
    for (auto &v : acc)
        v = 8.0f * urand() - 4.0f;
    CK(cudaMemcpy(d_acc, acc.data(), (size_t)n_acc * 4, cudaMemcpyHostToDevice));
    CK(fa_bwd_post_launch(&p, &g, &ws, &cfg, 0));
    CK(cudaDeviceSynchronize());
    std::vector<uint16_t> got_dq;
    report(c, "packed dq padding/canary written", download16(dq, got_dq, 1, total, H, D));
    {
        int64_t bad = 0, stray = 0;
        for (int r = 0; r < total; ++r)
            for (int h = 0; h < H; ++h)
                for (int d = 0; d < D; ++d) {
                    const uint16_t got = got_dq[((size_t)r * H + h) * D + d];
                    if (owner[r] < 0) {
                        stray += got != kPad16;
                        continue;
                    }
                    const float a = acc[((size_t)h * total + r) * D + d];
                    bad += got != to_bits(p.softmax_scale * a, dt);
                }
        report(c, "packed dq", bad);
        report(c, "packed dq written outside the entries", stray);
    }
    if (sinks_on) {
        const std::vector<float> dsinks = dread(d_dsinks, H);
        int64_t bad = 0;
        for (int h = 0; h < H; ++h) {
            double sum = 0.0, m = 0.0;
            for (int b = 0; b < B; ++b)
                for (int x = 0; x < parts; ++x) {
                    const double v = part[((size_t)b * H + h) * parts + x];
                    sum += v;
                    m += fabs(v);
                }
            bad += !(fabs(dsinks[(size_t)h] - sum) <= 1e-5 * m + 1e-6);
        }
        report(c, "packed dsinks", bad);
    }
    if (failures == failures_before)
        printf("  ok   packed lengths (0,1,17,128,300,65) H=%d D=%d %s sinks=%d lock=%d(bm %d)\n",
               H, D, dt == FA_FLOAT16 ? "fp16" : "bf16", sinks_on, lock, block_m);
    cudaFree(out.dev);
    cudaFree(dout.dev);
    cudaFree(dq.dev);
    cudaFree(d_lse);
    cudaFree(d_sinks);
    cudaFree(d_dsinks);
    cudaFree(d_cu);
    cudaFree(d_acc);
    cudaFree(d_delta);
    cudaFree(d_part);
    cudaFree(d_lock);
}

int main()
{
    fa_params p;
    memset(&p, 0, sizeof(p));
    const fa_dtype dts[2] = {FA_FLOAT16, FA_BFLOAT16};
    for (fa_dtype dt : dts) {
        p.dtype = dt;
        cudaFuncAttributes fa;
        CK(cudaFuncGetAttributes(&fa, fa_bwd_pre_kernel_fn(&p)));
        printf("pre  %s: %d registers, %zu bytes static smem\n", dt == FA_FLOAT16 ? "fp16" : "bf16",
               fa.numRegs, fa.sharedSizeBytes);
        CK(cudaFuncGetAttributes(&fa, fa_bwd_post_kernel_fn(&p)));
        printf("post %s: %d registers, %zu bytes static smem\n", dt == FA_FLOAT16 ? "fp16" : "bf16",
               fa.numRegs, fa.sharedSizeBytes);
    }
    p.dtype = FA_FLOAT32;
    if (fa_bwd_pre_kernel_fn(&p) != nullptr || fa_bwd_post_kernel_fn(&p) != nullptr) {
        printf("  FAIL: a float32 aux kernel exists\n");
        ++failures;
    }

    const int seqlens[4] = {1, 17, 113, 4224};
    const int dims[2] = {64, 72};
    const int block_ms[3] = {128, 64, 80};
    int n = 0;
    for (int S : seqlens)
        for (int D : dims)
            for (fa_dtype dt : dts)
                for (int sinks = 0; sinks < 2; ++sinks)
                    for (int lock = 0; lock < 2; ++lock) {
                        const Case c = {2, 3, S, D, dt, sinks, lock, block_ms[n++ % 3], 0};
                        run_case(c);
                    }
    const Case big = {2, 2, 113, 64, FA_BFLOAT16, 1, 1, 128, ((int64_t)1 << 31) + 64};
    run_case(big);
    run_packed_case(64, FA_BFLOAT16, 1, 1, 48);
    run_packed_case(72, FA_FLOAT16, 0, 0, 64);
    run_packed_case(64, FA_FLOAT16, 1, 0, 128);

    printf(failures ? "FAILED: %d checks\n" : "all passed\n", failures);
    return failures ? 1 : 0;
}
