/*
 * decode_check.cu -- standalone check of the KV-cache kernels: the append and the combine
 * (csrc/kernels/fwd_sm80_kvcache_aux.cu) and the split-KV decode kernel
 * (csrc/kernels/fwd_sm80_decode.cu), against a CPU reference in this file; and a bench.
 *
 * Build and run on an H200 (links nothing of the project but those two translation units):
 *   nvcc -O3 -std=c++17 --use_fast_math -gencode arch=compute_90,code=sm_90 -I csrc \
 *     dev/decode_check.cu csrc/kernels/fwd_sm80_decode.cu csrc/kernels/fwd_sm80_kvcache_aux.cu \
 *     -o decode_check
 *   ./decode_check                 every case: PASS/FAIL per case, exit 1 if any failed
 *   ./decode_check --quick         every 7th case (for compute-sanitizer)
 *   ./decode_check --bench         B = 1, 8, 64 x caches 1k .. 128k, GQA 32:8, head_dim 128,
 *                                  bf16, seqlen_q 1, dense, splits by kvcache.c's rule: us per
 *                                  call (decode + combine) launched on a stream and captured in
 *                                  a CUDA graph, and GB/s of K + V read (graph time). Caches
 *                                  below ~50 MB stay in L2 across the timed calls.
 *   bench options: --splits N (N splits instead of the rule), --page N (a paged cache of page
 *   size N, permuted table), --parts (decode and combine timed apart), --batch B (one batch
 *   size), --keys N (one cache length), --smem BYTES (the ring of a smaller device class),
 *   --carveout (the combine kernel on the decode's L1/shared split), --no-pdl (the combine as
 *   an ordinary launch, not a programmatic dependent of the decode launch)
 * (on an A100 use -gencode arch=compute_80,code=sm_80.)
 *
 * A case: `batch` entries with their own cache lengths (0 and 1 among them), the caches dense
 * (optionally through kv_batch_idx onto a permuted, larger batch) or paged with a permuted
 * block table (page sizes 1, 16, 64, 256; the table's spare column holds an index no page has,
 * so a lookup past an entry's pages faults). Every cache row an entry does not hold, every
 * unused page and every padding column of out hold NaN bits: a kernel reading past len_k or
 * writing outside its rows turns the result NaN or changes them. The case runs, as
 * kvcache.c plans them, the append (seqlen_new = seqlen_q new rows at cache_seqlens[b], or none),
 * the decode kernel (tile from fa_decode_tile for an emulated shared-memory size: 227 KB, 163 KB
 * or 99 KB, so every ring shape runs on one GPU) and, with num_splits > 1, the combine over a
 * NaN-poisoned workspace. Checked: the whole cache bitwise against the expected one (written
 * slots new, everything else unchanged), seqused, out (every q head and query row) and lse
 * against the reference, out's padding columns unchanged.
 *
 * The reference computes from the quantized inputs in double, with the mask rule spelled out
 * here (bottom-right aligned per entry: key j visible to row i when i + d - left <= j <=
 * i + d + right, d = len_k - len_q, -1 unbounded, causal right = 0), softcap c tanh(x / c),
 * sinks in the denominator; an empty row gives out 0 and lse -inf (the sink with sinks).
 * Tolerances: out |ours - ref| <= tol (1 + |ref|) with tol 2e-2 (bf16) or 1e-2 (fp16); lse
 * |ours - ref| <= 2e-3 (5e-3 with softcap, for tanh.approx) + 1e-3 |ref|, infinities exact.
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
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "flashattn.h"
#include "kernels/kernels.h"
#include "dev_check.h"

static const uint16_t kPoison = 0x7fff; /* NaN in fp16 and in bf16 */

struct Case {
    int hd;
    bool bf16;
    int batch, hq, hk, sq;
    int seqlen_new;       /* 0: no append */
    int page;             /* 0: dense */
    bool kv_idx;          /* dense through kv_batch_idx */
    int splits;
    int causal, wl, wr;
    float softcap;
    bool sinks;
    bool uniform;         /* cache_seqlens NULL: starts[0] for every entry */
    int smem_optin;       /* the device class the tile is chosen for */
    int capacity;         /* keys per entry (seqlen_k) */
    std::vector<int> starts;
};

static std::string describe(const Case &c)
{
    char buf[256];
    const char *mask = c.wl >= 0 ? (c.causal ? "local(wl,0)" : "local(wl,-1)") : c.causal ? "causal" : "full";
    snprintf(buf, sizeof buf, "hd%d %s %d:%d sq%d new%d %s%d%s split%d %s%s%s%s smem%dK cap%d",
             c.hd, c.bf16 ? "bf16" : "fp16", c.hq, c.hk, c.sq, c.seqlen_new,
             c.page ? "page" : "dense", c.page, c.kv_idx ? "+kvidx" : "", c.splits, mask,
             c.softcap > 0 ? " softcap" : "", c.sinks ? " sinks" : "", c.uniform ? " uniform" : "",
             c.smem_optin / 1024, c.capacity);
    return buf;
}

static fa_launch make_cfg(unsigned gx, unsigned gy, unsigned gz, size_t smem)
{
    fa_launch cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.grid[0] = gx;
    cfg.grid[1] = gy;
    cfg.grid[2] = gz;
    cfg.block[0] = 384;
    cfg.block[1] = cfg.block[2] = 1;
    cfg.smem_bytes = smem;
    return cfg;
}

/* --no-pdl: the combine launched as an ordinary launch (arch 0), to time what the programmatic
   dependent launch saves. */
static bool g_no_pdl = false;

/* The combine's launch as kvcache.c plans it: fa_combine_rows rows a CTA, and the device's
   arch, which makes it a programmatic dependent of the decode launch on sm_90. */
static fa_launch combine_cfg(int rows, int batch, int head_dim, int num_splits)
{
    const int per_cta = fa_combine_rows(head_dim, num_splits);
    fa_launch cfg = make_cfg((rows + per_cta - 1) / per_cta, batch, 1, 0);
    cfg.block_m = per_cta;
    int device = 0;
    CK(cudaGetDevice(&device));
    CK(cudaDeviceGetAttribute(&cfg.arch_major, cudaDevAttrComputeCapabilityMajor, device));
    if (g_no_pdl)
        cfg.arch_major = 0;
    return cfg;
}

template <class T> static std::vector<T> dev_download(const T *d, size_t n)
{
    std::vector<T> h(n);
    if (n)
        CK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

static int g_failures = 0, g_cases = 0;

static void run_case(const Case &c, int index)
{
    const bool bf16 = c.bf16;
    const int D = c.hd, B = c.batch, Hq = c.hq, Hk = c.hk, Sq = c.sq, G = Hq / Hk;
    const int N = c.seqlen_new, cap = c.capacity;
    const float scale = 1.0f / sqrtf((float)D);
    std::mt19937_64 rng(0x5eed + 7919ull * index);
    std::normal_distribution<float> nd(0.f, 1.f);

    std::vector<int> start(B), len(B);
    for (int b = 0; b < B; ++b) {
        start[b] = c.uniform ? c.starts[0] : c.starts[b % c.starts.size()];
        len[b] = start[b] + N;
        if (len[b] > cap) {
            printf("%-96s BAD CASE (length %d > capacity %d)\n", describe(c).c_str(), len[b], cap);
            ++g_failures;
            return;
        }
    }

    /* ---- logical caches [b][j][h][d] (bits): held rows random, the rest poison ---- */
    const size_t row_elems = (size_t)Hk * D;
    std::vector<uint16_t> kl((size_t)B * cap * row_elems, kPoison), vl(kl.size(), kPoison);
    for (int b = 0; b < B; ++b)
        for (int j = 0; j < start[b]; ++j)
            for (size_t x = 0; x < row_elems; ++x) {
                kl[((size_t)b * cap + j) * row_elems + x] = to_bits(nd(rng), bf16);
                vl[((size_t)b * cap + j) * row_elems + x] = to_bits(nd(rng), bf16);
            }
    std::vector<uint16_t> kn((size_t)B * N * row_elems), vn(kn.size());
    for (auto &x : kn)
        x = to_bits(nd(rng), bf16);
    for (auto &x : vn)
        x = to_bits(nd(rng), bf16);
    /* after the append */
    std::vector<uint16_t> kl2 = kl, vl2 = vl;
    for (int b = 0; b < B; ++b)
        for (int i = 0; i < N; ++i)
            for (size_t x = 0; x < row_elems; ++x) {
                kl2[((size_t)b * cap + start[b] + i) * row_elems + x] = kn[((size_t)b * N + i) * row_elems + x];
                vl2[((size_t)b * cap + start[b] + i) * row_elems + x] = vn[((size_t)b * N + i) * row_elems + x];
            }

    /* ---- physical layout ---- */
    std::vector<int32_t> kv_batch_idx, table;
    int64_t bs, rs = (int64_t)Hk * D, hs = D;
    size_t phys_elems;
    int kv_batches = B, table_stride = 0;
    if (c.page) {
        const int ppe = cap / c.page;
        const int pages = B * ppe + 3;
        std::vector<int32_t> perm(pages);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), rng);
        table_stride = ppe + 1;
        table.assign((size_t)B * table_stride, 0x3fffffff); /* spare column: no such page */
        for (int b = 0; b < B; ++b)
            for (int pg = 0; pg < ppe; ++pg)
                table[(size_t)b * table_stride + pg] = perm[(size_t)b * ppe + pg];
        kv_batches = pages;
        bs = (int64_t)c.page * rs;
        phys_elems = (size_t)pages * bs;
    } else {
        if (c.kv_idx) {
            kv_batches = B + 2;
            std::vector<int32_t> perm(kv_batches);
            std::iota(perm.begin(), perm.end(), 0);
            std::shuffle(perm.begin(), perm.end(), rng);
            kv_batch_idx.assign(perm.begin(), perm.begin() + B);
        }
        bs = (int64_t)cap * rs;
        phys_elems = (size_t)kv_batches * bs;
    }
    auto phys_row = [&](int b, int j) -> size_t {
        if (c.page)
            return (size_t)table[(size_t)b * table_stride + j / c.page] * bs + (size_t)(j % c.page) * rs;
        const int kb = c.kv_idx ? kv_batch_idx[b] : b;
        return (size_t)kb * bs + (size_t)j * rs;
    };
    auto scatter = [&](const std::vector<uint16_t> &logical) {
        std::vector<uint16_t> phys(phys_elems, kPoison);
        for (int b = 0; b < B; ++b)
            for (int j = 0; j < cap; ++j)
                memcpy(&phys[phys_row(b, j)], &logical[((size_t)b * cap + j) * row_elems], row_elems * 2);
        return phys;
    };
    const std::vector<uint16_t> kp0 = scatter(kl), vp0 = scatter(vl);
    const std::vector<uint16_t> kp1 = scatter(kl2), vp1 = scatter(vl2);

    /* ---- q (head stride padded by 8), out (same layout, NaN-filled), sinks ---- */
    const int64_t qhs = D + 8, qrs = (int64_t)Hq * qhs, qbs = (int64_t)Sq * qrs;
    std::vector<uint16_t> qb((size_t)B * qbs, kPoison);
    for (int b = 0; b < B; ++b)
        for (int i = 0; i < Sq; ++i)
            for (int h = 0; h < Hq; ++h)
                for (int d = 0; d < D; ++d)
                    qb[b * qbs + i * qrs + h * qhs + d] = to_bits(nd(rng), bf16);
    std::vector<float> sinks(Hq);
    for (auto &s : sinks)
        s = 2.0f * nd(rng) + 1.0f;

    /* ---- reference ---- */
    std::vector<double> out_ref((size_t)B * Sq * Hq * D, 0.0), lse_ref((size_t)B * Hq * Sq);
    {
        std::vector<double> logit(cap);
        for (int b = 0; b < B; ++b)
            for (int h = 0; h < Hq; ++h)
                for (int i = 0; i < Sq; ++i) {
                    const int lk = len[b], dd = lk - Sq, hk = h / G;
                    const int right = c.causal ? 0 : c.wr, left = c.wl;
                    int lo = 0, hi = lk - 1;
                    if (right >= 0)
                        hi = std::min(hi, i + dd + right);
                    if (left >= 0)
                        lo = std::max(lo, i + dd - left);
                    double mx = -INFINITY;
                    for (int j = lo; j <= hi; ++j) {
                        const uint16_t *kr = &kl2[((size_t)b * cap + j) * row_elems + (size_t)hk * D];
                        double s = 0;
                        for (int d = 0; d < D; ++d)
                            s += (double)from_bits(qb[b * qbs + i * qrs + h * qhs + d], bf16) * from_bits(kr[d], bf16);
                        double l = scale * s;
                        if (c.softcap > 0)
                            l = c.softcap * tanh(l / c.softcap);
                        logit[j] = l;
                        mx = std::max(mx, l);
                    }
                    const double sink = c.sinks ? (double)sinks[h] : -INFINITY;
                    const double top = std::max(mx, sink);
                    double lse;
                    if (top == -INFINITY) {
                        lse = -INFINITY;
                    } else {
                        double tot = c.sinks ? exp(sink - top) : 0.0;
                        for (int j = lo; j <= hi; ++j)
                            tot += exp(logit[j] - top);
                        lse = top + log(tot);
                    }
                    lse_ref[((size_t)b * Hq + h) * Sq + i] = lse;
                    double *o = &out_ref[(((size_t)b * Sq + i) * Hq + h) * D];
                    for (int j = lo; j <= hi && lse != -INFINITY; ++j) {
                        const double pj = exp(logit[j] - lse);
                        const uint16_t *vr = &vl2[((size_t)b * cap + j) * row_elems + (size_t)hk * D];
                        for (int d = 0; d < D; ++d)
                            o[d] += pj * from_bits(vr[d], bf16);
                    }
                }
    }

    /* ---- device ---- */
    uint16_t *dk = dev_upload(kp0), *dv = dev_upload(vp0), *dq = dev_upload(qb);
    std::vector<uint16_t> out_init((size_t)B * qbs, kPoison);
    uint16_t *dout = dev_upload(out_init);
    uint16_t *dkn = dev_upload(kn), *dvn = dev_upload(vn);
    std::vector<int32_t> starts32(start.begin(), start.end());
    int32_t *dstarts = dev_upload(starts32);
    int32_t *dseqused = dev_upload(std::vector<int32_t>(B, -7));
    int32_t *dkvidx = c.kv_idx ? dev_upload(kv_batch_idx) : nullptr;
    int32_t *dtable = c.page ? dev_upload(table) : nullptr;
    float *dsinks = dev_upload(sinks);
    float *dlse = dev_upload(std::vector<float>((size_t)B * Hq * Sq, NAN));

    fa_params p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    p.q = dq;
    p.k = dk;
    p.v = dv;
    p.out = dout;
    p.lse = dlse;
    p.q_batch_stride = qbs, p.q_row_stride = qrs, p.q_head_stride = qhs;
    p.o_batch_stride = qbs, p.o_row_stride = qrs, p.o_head_stride = qhs;
    p.k_batch_stride = bs, p.k_row_stride = rs, p.k_head_stride = hs;
    p.v_batch_stride = bs, p.v_row_stride = rs, p.v_head_stride = hs;
    p.batch = B;
    p.seqlen_q = Sq;
    p.seqlen_k = cap;
    p.heads_q = Hq;
    p.heads_kv = Hk;
    p.head_dim = D;
    p.dtype = bf16 ? FA_BFLOAT16 : FA_FLOAT16;
    p.softmax_scale = scale;
    p.causal = c.causal;
    p.window_left = c.wl;
    p.window_right = c.wr;
    p.softcap = c.softcap;
    p.sinks = c.sinks ? dsinks : nullptr;
    p.family = FA_KERNEL_SM80;
    p.kv_batch_idx = dkvidx;
    p.kv_batches = kv_batches;
    p.block_table = dtable;
    p.block_table_stride = table_stride;
    p.page_size = c.page;

    fa_kvcache_params kc;
    memset(&kc, 0, sizeof kc);
    kc.struct_size = sizeof kc;
    kc.k_new = N ? dkn : nullptr;
    kc.v_new = N ? dvn : nullptr;
    kc.seqlen_new = N;
    kc.kn_batch_stride = (int64_t)N * row_elems, kc.kn_row_stride = row_elems, kc.kn_head_stride = D;
    kc.vn_batch_stride = (int64_t)N * row_elems, kc.vn_row_stride = row_elems, kc.vn_head_stride = D;
    kc.cache_seqlens = c.uniform ? nullptr : dstarts;
    kc.cache_seqlen = c.starts[0];
    kc.num_splits = c.splits;

    bool ok = true;
    std::string why;
    if (N > 0) {
        const fa_launch cfg = make_cfg((N + FA_APPEND_ROWS - 1) / FA_APPEND_ROWS, Hk, B, 0);
        CK(fa_append_launch(&p, &kc, c.uniform ? nullptr : dseqused, &cfg, 0));
    }
    /* the attention's params, as kvcache.c derives them */
    fa_params a = p;
    if (!c.uniform)
        a.seqused_k = N > 0 ? dseqused : dstarts;
    else
        a.seqlen_k = c.starts[0] + N;

    fa_tile t;
    if (fa_decode_tile(&a, c.smem_optin, &t) != 0) {
        printf("%-96s FAIL (no tile)\n", describe(c).c_str());
        ++g_failures;
        return;
    }
    const void *fn = fa_decode_kernel_fn(&a, &t);
    if (!fn) {
        printf("%-96s FAIL (no kernel)\n", describe(c).c_str());
        ++g_failures;
        return;
    }
    CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)t.smem_bytes));
    const int m_tiles = (Sq * G + t.block_m - 1) / t.block_m;
    const int key_blocks = (cap + t.block_n - 1) / t.block_n;
    const int ns = std::max(1, std::min(c.splits, key_blocks));
    fa_split_workspace ws;
    ws.num_splits = ns;
    ws.o_partial = nullptr;
    ws.lse_partial = nullptr;
    const size_t prow = (size_t)ns * B * Hq * Sq;
    if (ns > 1) {
        ws.o_partial = dev_upload(std::vector<float>(prow * D, NAN));
        ws.lse_partial = dev_upload(std::vector<float>(prow, NAN));
    }
    {
        fa_launch cfg = make_cfg(ns * m_tiles, Hk, B, t.smem_bytes);
        cfg.block_m = t.block_m;
        cfg.block_n = t.block_n;
        cfg.stages = t.stages;
        cfg.head_dim_padded = t.head_dim_padded;
        CK(fa_decode_launch(&a, &ws, &cfg, 0));
    }
    if (ns > 1) {
        const fa_launch cfg = combine_cfg(Sq * Hq, B, D, ns);
        CK(fa_combine_launch(&a, &ws, &cfg, 0));
    }
    CK(cudaDeviceSynchronize());

    /* ---- compare ---- */
    const std::vector<uint16_t> kp = dev_download(dk, phys_elems), vp = dev_download(dv, phys_elems);
    if (memcmp(kp.data(), kp1.data(), phys_elems * 2) != 0 || memcmp(vp.data(), vp1.data(), phys_elems * 2) != 0) {
        ok = false;
        why += " CACHE";
    }
    if (!c.uniform && N > 0) {
        const std::vector<int32_t> su = dev_download(dseqused, B);
        for (int b = 0; b < B; ++b)
            if (su[b] != len[b]) {
                ok = false;
                why += " SEQUSED";
                break;
            }
    }
    const std::vector<uint16_t> ob = dev_download(dout, (size_t)B * qbs);
    const std::vector<float> lse = dev_download(dlse, (size_t)B * Hq * Sq);
    const double tol = bf16 ? 2e-2 : 1e-2;
    const double lse_tol = c.softcap > 0 ? 5e-3 : 2e-3;
    double max_err = 0, max_lse_err = 0;
    bool pad_ok = true, out_ok = true, lse_ok = true;
    for (int b = 0; b < B; ++b)
        for (int i = 0; i < Sq; ++i)
            for (int h = 0; h < Hq; ++h) {
                for (int d = 0; d < D + 8; ++d) {
                    const uint16_t got = ob[b * qbs + i * qrs + h * qhs + d];
                    if (d >= D) {
                        pad_ok &= got == kPoison;
                        continue;
                    }
                    const double ref = out_ref[(((size_t)b * Sq + i) * Hq + h) * D + d];
                    const double ours = from_bits(got, bf16);
                    const double err = fabs(ours - ref);
                    if (!(err <= tol * (1.0 + fabs(ref))))
                        out_ok = false;
                    if (!(err <= max_err))
                        max_err = std::isnan(err) ? INFINITY : err;
                }
                const double lr = lse_ref[((size_t)b * Hq + h) * Sq + i];
                const double lo = lse[((size_t)b * Hq + h) * Sq + i];
                if (std::isinf(lr) || std::isinf(lo)) {
                    if (lr != lo)
                        lse_ok = false;
                } else {
                    const double err = fabs(lo - lr);
                    if (!(err <= lse_tol + 1e-3 * fabs(lr)))
                        lse_ok = false;
                    if (!(err <= max_lse_err))
                        max_lse_err = std::isnan(err) ? INFINITY : err;
                }
            }
    if (!out_ok)
        why += " OUT";
    if (!lse_ok)
        why += " LSE";
    if (!pad_ok)
        why += " PAD-WRITTEN";
    ok = ok && out_ok && lse_ok && pad_ok;
    ++g_cases;
    if (!ok)
        ++g_failures;
    printf("%-96s S%d %6zuB out %.1e lse %.1e %s%s\n", describe(c).c_str(), t.stages,
           t.smem_bytes, max_err, max_lse_err, ok ? "PASS" : "FAIL", why.c_str());
    fflush(stdout);

    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dq);
    cudaFree(dout);
    cudaFree(dkn);
    cudaFree(dvn);
    cudaFree(dstarts);
    cudaFree(dseqused);
    cudaFree(dkvidx);
    cudaFree(dtable);
    cudaFree(dsinks);
    cudaFree(dlse);
    cudaFree(ws.o_partial);
    cudaFree(ws.lse_partial);
}

/* The cases: the full product of head_dim x GQA x seqlen_q x cache layout, the other axes
   (dtype, append, splits, mask, softcap, sinks, uniform lengths, shared-memory class) dealt
   by a counter so that each value meets many others; then long caches and padded head_dims. */
static std::vector<Case> make_cases()
{
    std::vector<Case> cases;
    const int hds[] = {64, 128, 256};
    const int gqa[][2] = {{32, 8}, {8, 1}, {4, 4}};
    const int sqs[] = {1, 4};
    const int pages[] = {0, -1, 1, 16, 64, 256}; /* -1: dense through kv_batch_idx */
    const int splits[] = {1, 3, 16};
    const int smems[] = {232448, 166912, 101376};
    int n = 0;
    for (int hd : hds)
        for (auto &g : gqa)
            for (int sq : sqs)
                for (int pg : pages) {
                    Case c;
                    c.hd = hd;
                    c.hq = g[0];
                    c.hk = g[1];
                    c.sq = sq;
                    c.page = pg > 0 ? pg : 0;
                    c.kv_idx = pg < 0;
                    c.batch = 4;
                    c.bf16 = n % 2 == 0;
                    c.seqlen_new = (n / 2) % 3 == 2 ? 0 : sq;
                    c.splits = splits[n % 3];
                    const int mask = (n / 3) % 4; /* full, causal, local(100, -1), local(100, 0) */
                    c.causal = mask == 1 || mask == 3;
                    c.wl = mask >= 2 ? 100 : -1;
                    c.wr = -1;
                    c.softcap = (n / 4) % 2 ? 30.f : 0.f;
                    c.sinks = (n / 5) % 2 == 1;
                    c.uniform = n % 7 == 3;
                    c.smem_optin = smems[(n / 6) % 3];
                    c.capacity = c.page >= 256 ? 512 : 320;
                    c.starts = c.uniform ? std::vector<int>{250} : std::vector<int>{0, 1, 37, 250};
                    if (c.uniform && (n / 7) % 2)
                        c.starts = {1};
                    cases.push_back(c);
                    ++n;
                }
    /* long caches: every split sees many chunks, windows cut inside them; up to 200 splits,
       so that one to eight threads share a combine item */
    const int long_splits[] = {1, 16, 45, 100, 16, 200};
    for (int k = 0; k < 12; ++k) {
        Case c;
        c.hd = hds[k % 3];
        c.hq = gqa[k % 3][0];
        c.hk = gqa[k % 3][1];
        c.sq = k % 2 ? 4 : 1;
        c.batch = 3;
        c.bf16 = k % 4 < 2;
        c.seqlen_new = k % 3 == 0 ? 0 : c.sq;
        c.page = (k / 3) % 2 ? 64 : 0;
        c.kv_idx = k == 7; /* a dense case: kv_batch_idx is not combined with a block table */
        c.splits = long_splits[k % 6];
        c.causal = k % 2;
        c.wl = k % 3 == 1 ? 100 : -1;
        c.wr = -1;
        c.softcap = k % 5 == 0 ? 30.f : 0.f;
        c.sinks = k % 3 == 2;
        c.uniform = false;
        c.smem_optin = smems[k % 3];
        c.capacity = 4160;
        c.starts = {4100, 2999, 1};
        cases.push_back(c);
    }
    /* padded head_dims: 72 and 96 run on the 128 instance, 200 on the 256 one */
    const int odd[] = {72, 96, 200, 40};
    for (int k = 0; k < 8; ++k) {
        Case c;
        c.hd = odd[k % 4];
        c.hq = 8;
        c.hk = 2;
        c.sq = k < 4 ? 1 : 4;
        c.batch = 4;
        c.bf16 = k % 2 == 0;
        c.seqlen_new = c.sq;
        c.page = k % 3 == 0 ? 16 : 0;
        c.kv_idx = false;
        c.splits = k % 2 ? 3 : 1;
        c.causal = 1;
        c.wl = k >= 6 ? 100 : -1;
        c.wr = -1;
        c.softcap = k == 5 ? 30.f : 0.f;
        c.sinks = k % 3 == 1;
        c.uniform = false;
        c.smem_optin = smems[k % 3];
        c.capacity = 320;
        c.starts = {0, 1, 37, 250};
        cases.push_back(c);
    }
    return cases;
}

/* ------------------------------------------------------------------------------------------ */
/* Bench                                                                                       */

__global__ void fill_random(uint16_t *x, size_t n, uint32_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        /* bf16 in [-1, 1): sign, exponent 126 or less, random mantissa */
        x[i] = (uint16_t)((h & 0x8000u) | (((h >> 16) % 3 + 124) << 7) | (h & 0x7fu));
    }
}

static void bench(int force_splits, int page, bool carveout, bool parts, int only_b, int optin_force, int only_keys)
{
    fa_params probe;
    memset(&probe, 0, sizeof probe);
    probe.dtype = FA_BFLOAT16;
    int device;
    CK(cudaGetDevice(&device));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, device));
    int optin;
    CK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (optin_force > 0)
        optin = optin_force; /* the ring of a smaller device class */
    printf("bench on %s (%d SMs, %d KB smem opt-in): GQA 32:8, head_dim 128, bf16, seqlen_q 1, %s\n",
           prop.name, prop.multiProcessorCount, optin / 1024, page ? "paged" : "dense");
    if (page)
        printf("page size %d, permuted block table\n", page);
    printf("%5s %8s %6s %10s %10s %10s %10s\n", "B", "keys", "splits", "KV MB", "us(stream)",
           "us(graph)", "GB/s");
    cudaStream_t stream;
    CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    if (carveout) {
        /* every kernel of a call on the same L1/shared split: no reconfiguration between them */
        CK(cudaFuncSetAttribute(fa_combine_kernel_fn(&probe), cudaFuncAttributePreferredSharedMemoryCarveout,
                                cudaSharedmemCarveoutMaxShared));
        printf("combine kernel: preferred carveout max shared\n");
    }
    const int Hq = 32, Hk = 8, D = 128, cap = 131072;
    const int lens[] = {1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072};
    for (int B : {1, 8, 64}) {
        if (only_b > 0 && B != only_b)
            continue;
        const size_t elems = (size_t)B * cap * Hk * D;
        uint16_t *k, *v, *q, *out;
        CK(cudaMalloc(&k, elems * 2));
        CK(cudaMalloc(&v, elems * 2));
        fill_random<<<4096, 256>>>(k, elems, 1);
        fill_random<<<4096, 256>>>(v, elems, 2);
        CK(cudaMalloc(&q, (size_t)B * Hq * D * 2));
        CK(cudaMalloc(&out, (size_t)B * Hq * D * 2));
        fill_random<<<64, 256>>>(q, (size_t)B * Hq * D, 3);
        float *lse, *o_part, *lse_part;
        CK(cudaMalloc(&lse, (size_t)B * Hq * 4));
        CK(cudaMalloc(&o_part, (size_t)128 * B * Hq * D * 4));
        CK(cudaMalloc(&lse_part, (size_t)128 * B * Hq * 4));
        int32_t *table = nullptr;
        if (page) {
            const int ppe = cap / page;
            std::vector<int32_t> perm((size_t)B * ppe);
            std::iota(perm.begin(), perm.end(), 0);
            std::mt19937 rng(5);
            std::shuffle(perm.begin(), perm.end(), rng);
            table = dev_upload(perm);
        }
        CK(cudaDeviceSynchronize());
        for (int L : lens) {
            if (only_keys >= 0 && L != lens[0])
                break;
            if (only_keys >= 0)
                L = only_keys;
            fa_params p;
            memset(&p, 0, sizeof p);
            p.struct_size = sizeof p;
            p.q = q;
            p.k = k;
            p.v = v;
            p.out = out;
            p.lse = lse;
            p.q_row_stride = p.o_row_stride = (int64_t)Hq * D;
            p.q_batch_stride = p.o_batch_stride = (int64_t)Hq * D;
            p.q_head_stride = p.o_head_stride = D;
            p.k_row_stride = p.v_row_stride = (int64_t)Hk * D;
            p.k_head_stride = p.v_head_stride = D;
            p.k_batch_stride = p.v_batch_stride = page ? (int64_t)page * Hk * D : (int64_t)cap * Hk * D;
            p.batch = B;
            p.seqlen_q = 1;
            p.seqlen_k = L;
            p.heads_q = Hq;
            p.heads_kv = Hk;
            p.head_dim = D;
            p.dtype = FA_BFLOAT16;
            p.softmax_scale = 1.0f / sqrtf((float)D);
            p.window_left = p.window_right = -1;
            p.block_table = table;
            p.block_table_stride = page ? cap / page : 0;
            p.page_size = page;
            p.kv_batches = page ? B * (cap / page) : B;
            fa_tile t;
            if (fa_decode_tile(&p, optin, &t) != 0) {
                printf("no tile\n");
                exit(1);
            }
            const void *fn = fa_decode_kernel_fn(&p, &t);
            CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)t.smem_bytes));
            const int m_tiles = (Hq / Hk + t.block_m - 1) / t.block_m;
            const long long ctas = (long long)m_tiles * Hk * B;
            int ns = force_splits > 0 ? force_splits : fa_kvcache_splits(ctas, L, prop.multiProcessorCount);
            ns = std::max(1, std::min(ns, (L + t.block_n - 1) / t.block_n));
            fa_split_workspace ws;
            ws.num_splits = ns;
            ws.o_partial = o_part;
            ws.lse_partial = lse_part;
            fa_launch dcfg = make_cfg(ns * m_tiles, Hk, B, t.smem_bytes);
            dcfg.block_m = t.block_m;
            dcfg.block_n = t.block_n;
            dcfg.stages = t.stages;
            dcfg.head_dim_padded = t.head_dim_padded;
            const fa_launch ccfg = combine_cfg(Hq, B, 128, ns);
            auto call = [&]() {
                CK(fa_decode_launch(&p, &ws, &dcfg, stream));
                if (ns > 1)
                    CK(fa_combine_launch(&p, &ws, &ccfg, stream));
            };
            for (int w = 0; w < 3; ++w)
                call();
            CK(cudaStreamSynchronize(stream));
            cudaEvent_t e0, e1;
            CK(cudaEventCreate(&e0));
            CK(cudaEventCreate(&e1));
            /* enough calls for about 50 ms, at least 20 */
            CK(cudaEventRecord(e0, stream));
            call();
            CK(cudaEventRecord(e1, stream));
            CK(cudaEventSynchronize(e1));
            float one;
            CK(cudaEventElapsedTime(&one, e0, e1));
            const int iters = std::max(20, std::min(2000, (int)(50.0f / std::max(one, 1e-3f))));
            /* Stream launches (host launch rate included), then the same calls captured in a
               CUDA graph, as a decode loop runs them: the kernels' own time. */
            CK(cudaEventRecord(e0, stream));
            for (int it = 0; it < iters; ++it)
                call();
            CK(cudaEventRecord(e1, stream));
            CK(cudaEventSynchronize(e1));
            float ms_stream;
            CK(cudaEventElapsedTime(&ms_stream, e0, e1));
            cudaGraph_t graph;
            cudaGraphExec_t exec;
            CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
            for (int it = 0; it < iters; ++it)
                call();
            CK(cudaStreamEndCapture(stream, &graph));
            CK(cudaGraphInstantiate(&exec, graph, 0));
            CK(cudaGraphLaunch(exec, stream));
            CK(cudaStreamSynchronize(stream));
            CK(cudaEventRecord(e0, stream));
            CK(cudaGraphLaunch(exec, stream));
            CK(cudaEventRecord(e1, stream));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            CK(cudaGraphExecDestroy(exec));
            CK(cudaGraphDestroy(graph));
            const double us = 1000.0 * ms / iters, us_stream = 1000.0 * ms_stream / iters;
            if (parts) {
                /* each kernel alone, captured the same way */
                float part_ms[2] = {0.f, 0.f};
                for (int which = 0; which < (ns > 1 ? 2 : 1); ++which) {
                    CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
                    for (int it = 0; it < iters; ++it) {
                        if (which == 0)
                            CK(fa_decode_launch(&p, &ws, &dcfg, stream));
                        else
                            CK(fa_combine_launch(&p, &ws, &ccfg, stream));
                    }
                    CK(cudaStreamEndCapture(stream, &graph));
                    CK(cudaGraphInstantiate(&exec, graph, 0));
                    CK(cudaGraphLaunch(exec, stream));
                    CK(cudaEventRecord(e0, stream));
                    CK(cudaGraphLaunch(exec, stream));
                    CK(cudaEventRecord(e1, stream));
                    CK(cudaEventSynchronize(e1));
                    CK(cudaEventElapsedTime(&part_ms[which], e0, e1));
                    CK(cudaGraphExecDestroy(exec));
                    CK(cudaGraphDestroy(graph));
                }
                printf("      decode %.2f us, combine %.2f us\n", 1000.0 * part_ms[0] / iters,
                       1000.0 * part_ms[1] / iters);
            }
            const double bytes = 2.0 * B * (double)L * Hk * D * 2;
            printf("%5d %8d %6d %10.1f %10.2f %10.2f %10.1f\n", B, L, ns, bytes / 1e6, us_stream, us,
                   bytes / (us * 1e3));
            fflush(stdout);
            cudaEventDestroy(e0);
            cudaEventDestroy(e1);
        }
        cudaFree(k);
        cudaFree(v);
        cudaFree(q);
        cudaFree(out);
        cudaFree(lse);
        cudaFree(o_part);
        cudaFree(lse_part);
        cudaFree(table);
    }
}

int main(int argc, char **argv)
{
    bool do_bench = false, quick = false, carveout = false, parts = false;
    int only_b = 0, optin_force = 0, only_keys = -1;
    int splits = 0, page = 0;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--bench"))
            do_bench = true;
        else if (!strcmp(argv[i], "--quick"))
            quick = true;
        else if (!strcmp(argv[i], "--splits") && i + 1 < argc)
            splits = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--carveout"))
            carveout = true;
        else if (!strcmp(argv[i], "--parts"))
            parts = true;
        else if (!strcmp(argv[i], "--no-pdl"))
            g_no_pdl = true;
        else if (!strcmp(argv[i], "--keys") && i + 1 < argc)
            only_keys = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            only_b = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--smem") && i + 1 < argc)
            optin_force = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--page") && i + 1 < argc)
            page = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--quick] [--bench [--splits N] [--page N] [--carveout] [--parts]\n"
                    "        [--batch B] [--keys N] [--smem BYTES] [--no-pdl]]\n",
                    argv[0]);
            return 2;
        }
    }
    if (do_bench) {
        bench(splits, page, carveout, parts, only_b, optin_force, only_keys);
        return 0;
    }
    const std::vector<Case> cases = make_cases();
    for (size_t i = 0; i < cases.size(); ++i)
        if (!quick || i % 7 == 0)
            run_case(cases[i], (int)i);
    printf("%d of %d cases failed\n", g_failures, g_cases);
    return g_failures ? 1 : 0;
}
