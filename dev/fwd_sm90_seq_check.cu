/*
 * fwd_sm90_seq_check.cu -- standalone check of the sm90 forward (fwd_sm90*.cu) on the sequence
 * layouts of common/seqlen.h, against a float CPU reference.
 *
 * Build on an H200 (any sm_90 GPU), from the repository root; it links nothing of the project
 * but the sm90 forward's own translation units, and it calls fa_sm90_launch directly:
 *   nvcc -O3 -std=c++17 --use_fast_math -gencode arch=compute_90a,code=sm_90a -I csrc \
 *     dev/fwd_sm90_seq_check.cu csrc/kernels/fwd_sm90.cu csrc/kernels/fwd_sm90_hd64.cu \
 *     csrc/kernels/fwd_sm90_hd128.cu csrc/kernels/fwd_sm90_hd256.cu -o fwd_sm90_seq_check
 *   ./fwd_sm90_seq_check           every case; exit status 1 when any fails, 2 on a CUDA error
 *   ./fwd_sm90_seq_check WORD      the cases whose name contains WORD
 *   ./fwd_sm90_seq_check --consumers 3 [WORD]
 *                                  the head_dim 64 cases on the kernel's three-consumer shape
 *                                  (192-row tiles, consumer threads issue the loads;
 *                                  sm90_tiles.h), instantiated here
 *
 * Layouts, each with GQA 4:1 (8 q heads, 2 kv heads), float16 and bfloat16 in turn:
 *   packed     q and k/v packed by cu_seqlens over ragged lengths (0, 1, 17, 128, 300, 1000 in
 *              turn, self-attention and cross lengths), head_dim 64/128/256, causal and not,
 *              a window, softcap, and longer entries that select the 176- and 80-key blocks;
 *   seqused    dense q, a dense k/v cache filled to seqused_k[b];
 *   kvidx      kv_batch_idx into a cache of more entries, with and without seqused_k;
 *   paged      page_size 128 and 256, block_table a permutation of the pages, packed or dense q.
 * Memory no entry may use holds NaN: cache rows at or past seqused_k, a page's unused tail,
 * unused pages and cache entries. A masked key then contributes only if its V row does (0 * NaN).
 *
 * Per case the logical tensors (entry b: len_q[b] x 8 x D queries, len_k[b] x 2 x D keys and
 * values, normal(0, 1) rounded to the dtype) are scattered into the device layout. The
 * reference computes in float from the same rounded values, each entry on its own with the
 * mask rule of common/mask.h (bottom-right aligned per entry): lse = max + log(sum exp), out =
 * sum p v / sum p; a row that sees no key has out 0 and lse -inf. Checked:
 *   out  max |ours - ref| / max |ref| below 2e-2 (bfloat16) or 1e-2 (float16), every value
 *        finite, rows that see no key exactly 0;
 *   lse  |ours - ref| below 1e-2 (abs), -inf exactly where the reference has it;
 *   rows outside every entry untouched: out is filled with a sentinel (0xffff) first, its head
 *        stride has 8 padding columns that must keep it, and packed q has 40 rows past the last
 *        entry (total_q counts them: the map, and the lse's row extent, reach them, so only the
 *        kernel's per-entry store clipping keeps them clean; the C API would insist on
 *        total_q == cu_seqlens_q[batch], the kernel does not need it). Packed cases run a
 *        second time with batch - 1 entries: the last entry's rows then lie outside every entry,
 *        right behind one whose last tile crosses into them.
 * Refusals: fa_sm90_seq_unsupported must refuse a page_size no key block divides and accept the
 * rest. PASS / FAIL per case.
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
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/mask.h"
#include "flashattn.h"
#include "kernels/kernels.h"
#include "kernels/sm90_fwd_launch.cuh"
#include "kernels/sm90_tiles.h"
#include "dev_check.h"

static const int kHq = 8, kHk = 2;
static const int kQPadRows = 40;     /* packed q: rows past the last entry */
static const int kOPadCols = 8;      /* out: head stride head_dim + 8 */
static const int kLseGuard = 256;    /* floats past the lse */
static const uint16_t kOutSentinel = 0xffff;
static const uint32_t kLseSentinel = 0x7fc0beefu; /* a NaN no kernel computes */
static const int kNoPage = 0x3fffffff;            /* block_table slots past an entry's pages */

enum KvMode { KV_PACKED, KV_CACHE, KV_PAGED };

struct Case {
    std::string name;
    int hd;
    bool bf16;
    int causal, wl, wr;
    float softcap;
    std::vector<int> len_q;  /* per entry; dense q: all equal */
    std::vector<int> len_k;  /* keys each entry uses */
    bool q_packed;
    KvMode kv;
    bool seqused;            /* cache / paged: pass seqused_k = len_k */
    bool kv_idx;             /* cache: kv_batch_idx into batch + 2 entries */
    int cap;                 /* cache: rows per entry (seqlen_k) */
    int page_size;           /* paged */
};

static int g_failures = 0;
static int g_consumers = FA_NUM_CONSUMER_WARPGROUPS; /* --consumers 3 */

/* Whether the shape under test runs case c: the library's runs every case, three consumers
   the head_dim 64 ones. */
static bool shape_serves(const Case &c)
{
    return g_consumers == FA_NUM_CONSUMER_WARPGROUPS || c.hd == 64;
}

/* The tile, kernel and launch of the shape under test: the library's (fa_sm90_tile,
   fa_sm90_kernel_fn, fa_sm90_launch), or the three-consumer instances of this file. */
static int shape_tile(const fa_params *p, fa_tile *t)
{
    return fa_sm90_tile_of_shape(p, g_consumers, t);
}

static const void *shape_kernel_fn(const fa_params *p, const fa_tile *t)
{
    return g_consumers == 3 ? fa_sm90::instance_kernel_fn<64, 3>(p) : fa_sm90_kernel_fn(p, t);
}

static cudaError_t shape_launch(const fa_params *p, const fa_launch *cfg)
{
    return g_consumers == 3 ? fa_sm90::instance_launch<64, 3>(p, cfg, 0) : fa_sm90_launch(p, cfg, 0);
}

/* Logical per-entry tensors and the reference. */
struct Entry {
    std::vector<float> q, k, v;  /* [len][heads][D] */
    std::vector<uint16_t> qb, kb, vb;
    std::vector<float> out;      /* [len_q][Hq][D] */
    std::vector<float> lse;      /* [Hq][len_q] */
};

/* One (entry, q head) of the reference; e.out and e.lse are sized by the caller. */
static void reference(const Case &c, Entry &e, int lq, int lk, float scale, int h)
{
    const int D = c.hd, G = kHq / kHk;
    if (lq == 0)
        return;
    const fa_mask mask = fa_mask_make(lq, lk, c.wl, c.wr, c.causal);
    std::vector<float> logit(std::max(lk, 1));
    {
        const int hk = h / G;
        for (int i = 0; i < lq; ++i) {
            if (lk == 0)
                continue;
            const fa_key_span span = fa_mask_row(&mask, i);
            if (span.hi < span.lo)
                continue;
            e.lse[(size_t)h * lq + i] =
                reference_row(&e.q[((size_t)i * kHq + h) * D], &e.k[(size_t)hk * D], &e.v[(size_t)hk * D],
                              (size_t)kHk * D, D, span.lo, span.hi, scale, c.softcap, logit.data(),
                              &e.out[((size_t)i * kHq + h) * D]);
        }
    }
}

static void *dev_copy(const void *src, size_t bytes)
{
    void *d = nullptr;
    CK(cudaMalloc(&d, bytes > 0 ? bytes : 16));
    if (bytes > 0)
        CK(cudaMemcpy(d, src, bytes, cudaMemcpyHostToDevice));
    return d;
}


static void run_case(const Case &c, int sm_count)
{
    const bool bf16 = c.bf16;
    const int D = c.hd, B = (int)c.len_q.size();
    const float scale = 1.0f / sqrtf((float)D);
    std::mt19937_64 rng(std::hash<std::string>()(c.name));
    std::normal_distribution<float> nd(0.f, 1.f);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const uint16_t nan_bits = to_bits(nan, bf16);

    /* ---- logical tensors and the reference ---- */
    std::vector<Entry> ent(B);
    auto gen = [&](std::vector<float> &vals, std::vector<uint16_t> &bits, size_t n) {
        vals.resize(n);
        bits.resize(n);
        for (size_t i = 0; i < n; ++i) {
            bits[i] = to_bits(nd(rng), bf16);
            vals[i] = from_bits(bits[i], bf16);
        }
    };
    for (int b = 0; b < B; ++b) {
        gen(ent[b].q, ent[b].qb, (size_t)c.len_q[b] * kHq * D);
        gen(ent[b].k, ent[b].kb, (size_t)c.len_k[b] * kHk * D);
        gen(ent[b].v, ent[b].vb, (size_t)c.len_k[b] * kHk * D);
    }
    {
        for (int b = 0; b < B; ++b) {
            ent[b].out.assign((size_t)c.len_q[b] * kHq * D, 0.f);
            ent[b].lse.assign((size_t)kHq * c.len_q[b], -INFINITY);
        }
        std::vector<std::thread> pool;
        const int tasks = B * kHq;
        const int workers = std::max(1u, std::min(std::thread::hardware_concurrency(), (unsigned)tasks));
        for (int w = 0; w < workers; ++w)
            pool.emplace_back([&, w] {
                for (int t = w; t < tasks; t += workers)
                    reference(c, ent[t / kHq], c.len_q[t / kHq], c.len_k[t / kHq], scale, t % kHq);
            });
        for (auto &th : pool)
            th.join();
    }

    /* ---- device layout ---- */
    fa_params p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    p.batch = B;
    p.heads_q = kHq;
    p.heads_kv = kHk;
    p.head_dim = D;
    p.dtype = bf16 ? FA_BFLOAT16 : FA_FLOAT16;
    p.softmax_scale = scale;
    p.causal = c.causal;
    p.window_left = c.wl;
    p.window_right = c.wr;
    p.softcap = c.softcap;
    p.family = FA_KERNEL_SM90;
    p.seqlen_q = *std::max_element(c.len_q.begin(), c.len_q.end());

    /* q and out */
    std::vector<int32_t> cu_q(B + 1, 0);
    for (int b = 0; b < B; ++b)
        cu_q[b + 1] = cu_q[b] + c.len_q[b];
    const int64_t qrs = (int64_t)kHq * D, ors = (int64_t)kHq * (D + kOPadCols);
    int q_rows;          /* rows of one q batch */
    int q_batches;
    if (c.q_packed) {
        p.total_q = cu_q[B] + kQPadRows;
        q_rows = p.total_q;
        q_batches = 1;
        p.q_batch_stride = p.o_batch_stride = 0;
    } else {
        q_rows = p.seqlen_q;
        q_batches = B;
        p.q_batch_stride = (int64_t)q_rows * qrs;
        p.o_batch_stride = (int64_t)q_rows * ors;
    }
    p.q_row_stride = qrs;
    p.q_head_stride = D;
    p.o_row_stride = ors;
    p.o_head_stride = D + kOPadCols;
    /* the first row of entry b in q / out (rows of one batch) */
    auto q_row0 = [&](int b) { return c.q_packed ? (int64_t)cu_q[b] : 0; };
    auto q_batch = [&](int b) { return c.q_packed ? 0 : b; };
    std::vector<uint16_t> q_dev((size_t)q_batches * q_rows * qrs);
    for (auto &x : q_dev)
        x = to_bits(nd(rng), bf16); /* finite data also past every entry */
    for (int b = 0; b < B; ++b)
        for (int i = 0; i < c.len_q[b]; ++i)
            memcpy(&q_dev[(size_t)q_batch(b) * q_rows * qrs + (size_t)(q_row0(b) + i) * qrs],
                   &ent[b].qb[(size_t)i * kHq * D], (size_t)kHq * D * 2);
    const size_t out_elems = (size_t)q_batches * q_rows * ors;
    const size_t lse_elems = c.q_packed ? (size_t)kHq * p.total_q : (size_t)B * kHq * p.seqlen_q;

    /* k and v */
    std::vector<int32_t> cu_k(B + 1, 0), seqused(B), kv_idx(B), table;
    for (int b = 0; b < B; ++b)
        cu_k[b + 1] = cu_k[b] + c.len_k[b];
    const int64_t krs = (int64_t)kHk * D;
    std::vector<uint16_t> k_dev, v_dev;
    p.k_row_stride = p.v_row_stride = krs;
    p.k_head_stride = p.v_head_stride = D;
    if (c.kv == KV_PACKED) {
        p.total_k = cu_k[B];
        p.seqlen_k = *std::max_element(c.len_k.begin(), c.len_k.end());
        p.k_batch_stride = p.v_batch_stride = 0;
        k_dev.assign((size_t)std::max(p.total_k, 1) * krs, 0);
        v_dev = k_dev;
        for (int b = 0; b < B; ++b) {
            memcpy(&k_dev[(size_t)cu_k[b] * krs], ent[b].kb.data(), ent[b].kb.size() * 2);
            memcpy(&v_dev[(size_t)cu_k[b] * krs], ent[b].vb.data(), ent[b].vb.size() * 2);
        }
    } else if (c.kv == KV_CACHE) {
        p.seqlen_k = c.cap;
        const int entries = c.kv_idx ? B + 2 : B;
        if (c.kv_idx) {
            std::vector<int> perm(entries);
            std::iota(perm.begin(), perm.end(), 0);
            std::shuffle(perm.begin(), perm.end(), rng);
            for (int b = 0; b < B; ++b)
                kv_idx[b] = perm[b];
            p.kv_batches = entries;
        }
        p.k_batch_stride = p.v_batch_stride = (int64_t)c.cap * krs;
        k_dev.assign((size_t)entries * c.cap * krs, nan_bits);
        v_dev = k_dev;
        for (int b = 0; b < B; ++b) {
            const size_t at = (size_t)(c.kv_idx ? kv_idx[b] : b) * c.cap * krs;
            memcpy(&k_dev[at], ent[b].kb.data(), ent[b].kb.size() * 2);
            memcpy(&v_dev[at], ent[b].vb.data(), ent[b].vb.size() * 2);
        }
    } else {
        const int ps = c.page_size;
        p.page_size = ps;
        p.seqlen_k = *std::max_element(c.len_k.begin(), c.len_k.end());
        const int max_pages = (p.seqlen_k + ps - 1) / ps;
        p.block_table_stride = max_pages + 1;
        int used_pages = 0;
        for (int b = 0; b < B; ++b)
            used_pages += (c.len_k[b] + ps - 1) / ps;
        const int pages = used_pages + 3; /* three pages no entry uses */
        p.kv_batches = pages;
        std::vector<int> perm(pages);
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), rng);
        table.assign((size_t)B * p.block_table_stride, kNoPage);
        p.k_batch_stride = p.v_batch_stride = (int64_t)ps * krs;
        k_dev.assign((size_t)pages * ps * krs, nan_bits);
        v_dev = k_dev;
        int next = 0;
        for (int b = 0; b < B; ++b)
            for (int j0 = 0; j0 < c.len_k[b]; j0 += ps) {
                const int page = perm[next++];
                table[(size_t)b * p.block_table_stride + j0 / ps] = page;
                const int n = std::min(ps, c.len_k[b] - j0);
                memcpy(&k_dev[(size_t)page * ps * krs], &ent[b].kb[(size_t)j0 * krs], (size_t)n * krs * 2);
                memcpy(&v_dev[(size_t)page * ps * krs], &ent[b].vb[(size_t)j0 * krs], (size_t)n * krs * 2);
            }
    }
    for (int b = 0; b < B; ++b)
        seqused[b] = c.len_k[b];
    if (c.kv == KV_CACHE && !c.seqused)
        for (int b = 0; b < B; ++b)
            if (c.len_k[b] != c.cap) {
                printf("%-44s bad case: a cache without seqused_k uses all %d rows\n", c.name.c_str(), c.cap);
                ++g_failures;
                return;
            }
    if (c.kv == KV_PAGED && !c.seqused)
        for (int b = 0; b < B; ++b)
            if (c.len_k[b] != p.seqlen_k) {
                printf("%-44s bad case: paged without seqused_k uses seqlen_k keys\n", c.name.c_str());
                ++g_failures;
                return;
            }

    void *dq = dev_copy(q_dev.data(), q_dev.size() * 2);
    void *dk = dev_copy(k_dev.data(), k_dev.size() * 2);
    void *dv = dev_copy(v_dev.data(), v_dev.size() * 2);
    int32_t *dcu_q = (int32_t *)dev_copy(cu_q.data(), cu_q.size() * 4);
    int32_t *dcu_k = (int32_t *)dev_copy(cu_k.data(), cu_k.size() * 4);
    int32_t *dseq = (int32_t *)dev_copy(seqused.data(), seqused.size() * 4);
    int32_t *didx = (int32_t *)dev_copy(kv_idx.data(), kv_idx.size() * 4);
    int32_t *dtab = (int32_t *)dev_copy(table.data(), table.size() * 4);
    void *dout;
    float *dlse;
    CK(cudaMalloc(&dout, out_elems * 2));
    CK(cudaMalloc(&dlse, (lse_elems + kLseGuard) * 4));
    p.q = dq;
    p.k = dk;
    p.v = dv;
    p.out = dout;
    p.lse = dlse;
    p.cu_seqlens_q = c.q_packed ? dcu_q : nullptr;
    p.cu_seqlens_k = c.kv == KV_PACKED ? dcu_k : nullptr;
    p.seqused_k = c.seqused ? dseq : nullptr;
    p.kv_batch_idx = c.kv_idx ? didx : nullptr;
    p.block_table = c.kv == KV_PAGED ? dtab : nullptr;

    /* ---- plan: from the complete params (paging picks the key block) ---- */
    auto release = [&] {
        cudaFree(dq);
        cudaFree(dk);
        cudaFree(dv);
        cudaFree(dcu_q);
        cudaFree(dcu_k);
        cudaFree(dseq);
        cudaFree(didx);
        cudaFree(dtab);
        cudaFree(dout);
        cudaFree(dlse);
    };
    const char *why = fa_sm90_seq_unsupported(&p);
    fa_tile t;
    if (why || shape_tile(&p, &t) != 0) {
        printf("%-44s FAIL refused: %s\n", c.name.c_str(), why ? why : "no tile");
        ++g_failures;
        release();
        return;
    }
    const void *fn = shape_kernel_fn(&p, &t);
    if (!fn) {
        printf("%-44s FAIL no kernel\n", c.name.c_str());
        ++g_failures;
        release();
        return;
    }
    CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)t.smem_bytes));

    std::vector<uint16_t> out_h(out_elems);
    std::vector<float> lse_h(lse_elems + kLseGuard), lse_init(lse_elems + kLseGuard);
    {
        float s;
        memcpy(&s, &kLseSentinel, 4);
        std::fill(lse_init.begin(), lse_init.end(), s);
    }

    /* Pass 0: every entry. Pass 1 (packed q): the first batch - 1 entries only. */
    const int passes = c.q_packed && B > 1 ? 2 : 1;
    bool ok = true;
    double worst_o = 0, worst_lse = 0;
    std::string notes;
    for (int pass = 0; pass < passes; ++pass) {
        const int nb = pass == 0 ? B : B - 1;
        fa_params pp = p;
        pp.batch = nb;
        std::vector<uint16_t> out_init(out_elems, kOutSentinel);
        CK(cudaMemcpy(dout, out_init.data(), out_elems * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dlse, lse_init.data(), lse_init.size() * 4, cudaMemcpyHostToDevice));
        const fa_launch cfg = persistent_launch(pp, t, sm_count);
        const cudaError_t launched = shape_launch(&pp, &cfg);
        if (launched != cudaSuccess) {
            printf("%-44s FAIL launch: %s\n", c.name.c_str(), cudaGetErrorString(launched));
            ++g_failures;
            release();
            return;
        }
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(out_h.data(), dout, out_elems * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(lse_h.data(), dlse, lse_h.size() * 4, cudaMemcpyDeviceToHost));

        /* Which (batch, row) of out belong to an entry of this launch: every other element
         * must keep the sentinel. */
        std::vector<char> owned((size_t)q_batches * q_rows, 0);
        double max_ref = 0, max_err = 0, max_lse_err = 0;
        bool finite = true, empty_zero = true, lse_inf = true;
        for (int b = 0; b < nb; ++b) {
            const int lq = c.len_q[b];
            for (int i = 0; i < lq; ++i) {
                const size_t row = (size_t)q_batch(b) * q_rows + q_row0(b) + i;
                owned[row] = 1;
                for (int h = 0; h < kHq; ++h) {
                    const float ref_lse = ent[b].lse[(size_t)h * lq + i];
                    const int64_t li = c.q_packed ? (int64_t)h * p.total_q + q_row0(b) + i
                                                  : ((int64_t)b * kHq + h) * p.seqlen_q + i;
                    const float our_lse = lse_h[li];
                    if (std::isinf(ref_lse)) {
                        if (!(std::isinf(our_lse) && our_lse < 0))
                            lse_inf = false;
                    } else {
                        const double err = std::isfinite(our_lse) ? fabs(our_lse - ref_lse) : INFINITY;
                        max_lse_err = std::max(max_lse_err, err);
                    }
                    for (int d = 0; d < D; ++d) {
                        const float ref = ent[b].out[((size_t)i * kHq + h) * D + d];
                        const float ours = from_bits(out_h[row * ors + (size_t)h * (D + kOPadCols) + d], bf16);
                        if (!std::isfinite(ours))
                            finite = false;
                        if (std::isinf(ref_lse) && ours != 0.f)
                            empty_zero = false;
                        max_ref = std::max(max_ref, (double)fabs(ref));
                        max_err = std::max(max_err, (double)fabs(ours - ref));
                    }
                }
            }
        }
        size_t stray_out = 0, stray_lse = 0;
        for (size_t row = 0; row < owned.size(); ++row)
            for (int h = 0; h < kHq; ++h)
                for (int d = 0; d < D + kOPadCols; ++d) {
                    const bool written = owned[row] && d < D;
                    if (!written && out_h[row * ors + (size_t)h * (D + kOPadCols) + d] != kOutSentinel)
                        ++stray_out;
                }
        /* lse: the owned (entry, head, row) indices were compared; every other index, the
         * guard included, keeps the sentinel. */
        std::vector<char> lse_owned(lse_h.size(), 0);
        for (int b = 0; b < nb; ++b)
            for (int h = 0; h < kHq; ++h)
                for (int i = 0; i < c.len_q[b]; ++i)
                    lse_owned[c.q_packed ? (size_t)h * p.total_q + q_row0(b) + i
                                         : ((size_t)b * kHq + h) * p.seqlen_q + i] = 1;
        for (size_t i = 0; i < lse_h.size(); ++i) {
            uint32_t bits;
            memcpy(&bits, &lse_h[i], 4);
            if (!lse_owned[i] && bits != kLseSentinel)
                ++stray_lse;
        }
        const double tol = bf16 ? 2e-2 : 1e-2;
        const double rel = max_ref > 0 ? max_err / max_ref : max_err;
        const bool pass_ok = finite && empty_zero && lse_inf && stray_out == 0 && stray_lse == 0 &&
                             rel <= tol && max_lse_err <= 1e-2;
        worst_o = std::max(worst_o, rel);
        worst_lse = std::max(worst_lse, max_lse_err);
        if (!pass_ok) {
            char buf[256];
            snprintf(buf, sizeof buf, " [%s:%s%s%s%s%s]", pass == 0 ? "all entries" : "batch-1",
                     finite ? "" : " NONFINITE", empty_zero ? "" : " EMPTY-ROW-NONZERO",
                     lse_inf ? "" : " LSE-NOT-INF", stray_out ? " OUT-STRAY-WRITES" : "",
                     stray_lse ? " LSE-STRAY-WRITES" : "");
            notes += buf;
            if (stray_out || stray_lse) {
                snprintf(buf, sizeof buf, " (%zu out, %zu lse elements)", stray_out, stray_lse);
                notes += buf;
            }
        }
        ok = ok && pass_ok;
    }
    printf("%-44s block_n %3d  out %.2e  lse %.2e%s  %s\n", c.name.c_str(), t.block_n, worst_o, worst_lse,
           notes.c_str(), ok ? "PASS" : "FAIL");
    if (!ok)
        ++g_failures;
    release();
}

/* fa_sm90_seq_unsupported: refuses exactly the page sizes no key block of the instance divides. */
static void check_refusals(const char *filter)
{
    struct R {
        const char *name;
        int hd, causal, seqlen_k, page_size;
        bool refused;
    } rs[] = {
        {"refuse paged hd64 page16", 64, 0, 512, 16, true},
        {"refuse paged hd128 page64", 128, 1, 512, 64, true},
        {"refuse paged hd256 full page256", 256, 0, 512, 256, true},
        {"accept paged hd256 causal page256", 256, 1, 4096, 256, false},
        {"accept paged hd128 full page256", 128, 0, 4096, 256, false},
        {"accept paged hd64 page128", 64, 1, 300, 128, false},
    };
    static int32_t fake_table[1];
    for (const R &r : rs) {
        if (filter && !strstr(r.name, filter))
            continue;
        fa_params p;
        memset(&p, 0, sizeof p);
        p.struct_size = sizeof p;
        p.batch = 1;
        p.seqlen_q = 128;
        p.seqlen_k = r.seqlen_k;
        p.heads_q = p.heads_kv = 1;
        p.head_dim = r.hd;
        p.dtype = FA_BFLOAT16;
        p.causal = r.causal;
        p.window_left = p.window_right = -1;
        p.block_table = fake_table;
        p.page_size = r.page_size;
        p.kv_batches = 1;
        const char *why = fa_sm90_seq_unsupported(&p);
        const bool ok = (why != nullptr) == r.refused;
        printf("%-44s %s  %s\n", r.name, why ? why : "(accepted)", ok ? "PASS" : "FAIL");
        if (!ok)
            ++g_failures;
    }
}

static std::vector<Case> cases()
{
    std::vector<Case> cs;
    const std::vector<int> L = {0, 1, 17, 128, 300, 1000};
    auto rot = [](std::vector<int> v, int k) {
        std::rotate(v.begin(), v.begin() + k % (int)v.size(), v.end());
        return v;
    };
    int flip = 0;
    auto packed = [&](const std::string &name, int hd, int causal, std::vector<int> lq, std::vector<int> lk) {
        Case c{};
        c.name = name;
        c.hd = hd;
        c.bf16 = (flip++ % 2) == 0;
        c.name += c.bf16 ? " bf16" : " fp16";
        c.causal = causal;
        c.wl = c.wr = -1;
        c.len_q = lq;
        c.len_k = lk;
        c.q_packed = true;
        c.kv = KV_PACKED;
        return c;
    };
    for (int hd : {64, 128, 256})
        for (int causal : {0, 1}) {
            const std::string tag = "hd" + std::to_string(hd) + (causal ? " causal" : " full");
            /* self-attention lengths, the last entry differing from case to case */
            cs.push_back(packed("packed self " + tag, hd, causal, rot(L, hd / 64 + causal),
                                rot(L, hd / 64 + causal)));
            /* cross lengths: longer and shorter key sides, empty ones on either side */
            cs.push_back(packed("packed cross " + tag, hd, causal, rot(L, 3 + causal),
                                {300, 1000, 0, 17, 1, 128}));
        }
    /* Longer entries: the 176-key blocks (head_dim 128 full) and the 80-key blocks (head_dim
     * 256 masked past 2048 keys). */
    cs.push_back(packed("packed long hd128 full", 128, 0, {1, 1100, 300, 0, 129}, {17, 1100, 1000, 5, 2000}));
    cs.push_back(packed("packed long hd256 causal", 256, 1, {2100, 17, 300}, {2100, 2100, 40}));
    {
        Case c = packed("packed window(100,0) hd128", 128, 0, rot(L, 2), rot(L, 2));
        c.wl = 100;
        c.wr = 0;
        cs.push_back(c);
        c = packed("packed window(64,32) hd64", 64, 0, rot(L, 4), {300, 1000, 0, 17, 1, 128});
        c.wl = 64;
        c.wr = 32;
        cs.push_back(c);
        c = packed("packed softcap hd128 causal", 128, 1, rot(L, 1), rot(L, 1));
        c.softcap = 30.f;
        cs.push_back(c);
        c = packed("packed window(300,-1) hd256", 256, 0, rot(L, 5), rot(L, 5));
        c.wl = 300;
        cs.push_back(c);
    }
    /* Dense q (every entry seqlen_q rows) over a dense cache filled to seqused_k. */
    auto dense_q = [&](const std::string &name, int hd, int causal, int sq, std::vector<int> lk) {
        Case c{};
        c.name = name;
        c.hd = hd;
        c.bf16 = (flip++ % 2) == 0;
        c.name += c.bf16 ? " bf16" : " fp16";
        c.causal = causal;
        c.wl = c.wr = -1;
        c.len_q.assign(lk.size(), sq);
        c.len_k = lk;
        c.q_packed = false;
        c.kv = KV_CACHE;
        return c;
    };
    for (int hd : {64, 128, 256})
        for (int causal : {0, 1}) {
            const std::string tag = "hd" + std::to_string(hd) + (causal ? " causal" : " full");
            Case c = dense_q("seqused " + tag, hd, causal, causal ? 17 : 200, {1000, 17, 300, 0, 129});
            c.seqused = true;
            c.cap = 1040;
            cs.push_back(c);
        }
    for (int hd : {64, 128, 256}) {
        const std::string tag = "hd" + std::to_string(hd);
        Case c = dense_q("kvidx " + tag, hd, hd == 128, 150, {333, 333, 333, 333});
        c.kv_idx = true;
        c.cap = 333; /* not a multiple of any key block: TMA clips the last one */
        cs.push_back(c);
        c = dense_q("kvidx+seqused " + tag, hd, hd != 128, 64, {500, 1, 0, 260, 77});
        c.kv_idx = true;
        c.seqused = true;
        c.cap = 520;
        cs.push_back(c);
    }
    /* Paged k/v. Without seqused_k every entry uses seqlen_k keys; the last page's tail is
     * NaN. */
    auto paged = [&](const std::string &name, int hd, int causal, int ps, bool q_packed, std::vector<int> lq,
                     std::vector<int> lk, bool seqused) {
        Case c{};
        c.name = name + " page" + std::to_string(ps);
        c.hd = hd;
        c.bf16 = (flip++ % 2) == 0;
        c.name += c.bf16 ? " bf16" : " fp16";
        c.causal = causal;
        c.wl = c.wr = -1;
        c.len_q = lq;
        c.len_k = lk;
        c.q_packed = q_packed;
        c.kv = KV_PAGED;
        c.seqused = seqused;
        c.page_size = ps;
        return c;
    };
    for (int ps : {128, 256}) {
        cs.push_back(paged("paged seqused hd64 full", 64, 0, ps, true, rot(L, 1), {1000, 0, 300, 17, 128, 1}, true));
        cs.push_back(paged("paged seqused hd64 causal", 64, 1, ps, false, {100, 100, 100, 100}, {1000, 300, 17, 100},
                           true));
        cs.push_back(paged("paged seqused hd128 causal", 128, 1, ps, true, rot(L, 2), rot(L, 2), true));
        /* 1300 keys would take 176-key blocks: paging takes the 128-key instance */
        cs.push_back(paged("paged seqused hd128 full long", 128, 0, ps, true, {1, 300, 17}, {1300, 1000, 0}, true));
        cs.push_back(paged("paged seqused hd256 causal", 256, 1, ps, true, rot(L, 3), rot(L, 3), true));
        /* 2300 keys would take 80-key blocks: paging takes the 64-key instance */
        cs.push_back(paged("paged seqused hd256 causal long", 256, 1, ps, false, {300, 300}, {2300, 700}, true));
        cs.push_back(paged("paged uniform hd128 causal", 128, 1, ps, false, {200, 200, 200}, {300, 300, 300}, false));
        cs.push_back(paged("paged uniform hd64 full", 64, 0, ps, true, {1, 300, 0, 129}, {700, 700, 700, 700}, false));
    }
    return cs;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, nullptr, _IOLBF, 0); /* lines in order with CUDA errors on stderr */
    int arg = 1;
    if (argc > 2 && strcmp(argv[1], "--consumers") == 0) {
        g_consumers = atoi(argv[2]);
        arg = 3;
        if (g_consumers != 2 && g_consumers != 3) {
            fprintf(stderr, "--consumers takes 2 or 3\n");
            return 2;
        }
    }
    const char *filter = argc > arg ? argv[arg] : nullptr;
    const int sm_count = device_sm_count(9);
    int ran = 0;
    for (const Case &c : cases()) {
        if ((filter && !strstr(c.name.c_str(), filter)) || !shape_serves(c))
            continue;
        run_case(c, sm_count);
        ++ran;
    }
    check_refusals(filter);
    printf("%d cases, %d failed: %s\n", ran, g_failures, g_failures ? "FAIL" : "PASS");
    return g_failures ? 1 : 0;
}
