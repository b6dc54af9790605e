/*
 * fwd_sm80_seq_check.cu -- standalone check of the sm80 forward (fwd_sm80*.cu) on the sequence
 * layouts of common/seqlen.h: packed (cu_seqlens_q / cu_seqlens_k) ragged batches, seqused_k,
 * kv_batch_idx and paged k/v, alone and combined, against a CPU reference in this file.
 *
 * Build and run (links nothing of the project but the kernel's own translation units):
 *   nvcc -O3 -std=c++17 --use_fast_math -gencode arch=compute_90,code=sm_90 -I csrc \
 *     dev/fwd_sm80_seq_check.cu csrc/kernels/fwd_sm80.cu csrc/kernels/fwd_sm80_hd64.cu \
 *     csrc/kernels/fwd_sm80_hd128.cu csrc/kernels/fwd_sm80_hd256.cu -o fwd_sm80_seq_check
 *   ./fwd_sm80_seq_check        every case; one PASS/FAIL line each; exit status 1 on a failure
 *   (on an A100 or an L4, -gencode arch=compute_80,code=sm_80 or compute_89,code=sm_89)
 *
 * Per case: q, k, v random normal, quantized to the dtype (the reference reads the same
 * values); heads 8:2 (GQA 4:1). The reference: for entry b, row i < len_q and q head h, the
 * logits scale * q.k (softcap: c tanh(x / c)) over mask.h's visible keys of the entry's own
 * lengths, in float64; out = softmax . v, lse = log-sum-exp (with the sink in the
 * denominator), out = 0 and lse = -inf (or the sink) for a row that sees no key. Checked:
 *   - out and lse of every row of every entry: |ours - ref| <= atol + rtol |ref| (bf16 2e-2,
 *     fp16 4e-3 both) for out, 2e-3 for lse, -inf rows exactly -inf, nothing non-finite;
 *   - every out row and lse entry outside all entries (packed: rows before cu_seqlens_q[0]
 *     and after its last entry; unpacked: nothing) still holds the sentinel it was filled
 *     with; rows of k/v that no entry may read hold NaN, so a key read past an entry's keys
 *     would show in out;
 *   - packed q: the batch run again as its prefixes 0..b (batch = b + 1), where every row and
 *     lse entry past entry b must keep the sentinel: a tile writing past its entry's len_q
 *     (into the next entry's rows, where the full run hides it) fails here;
 *   - the full run twice: out and lse bitwise equal (the forward is deterministic).
 * Layouts: q/out (total + guard rows, heads, head_dim) packed or (batch, seqlen_q, heads,
 * head_dim); k/v packed (total_k rows), dense (kv_batches, capacity, heads, head_dim) with
 * kv_batch_idx a permutation of a subset, or paged (pages, page_size, heads, head_dim) with a
 * shuffled block table whose stride exceeds the pages an entry needs.
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
#include <vector>

#include "common/mask.h"
#include "common/seqlen.h"
#include "flashattn.h"
#include "kernels/kernels.h"
#include "kernels/sm80_tiles.h"
#include "dev_check.h"

static const uint16_t kOutSentinel = 0x3c01; /* a finite value no output row is expected to hold */
static const float kLseSentinel = 12345.0f;

/* How k and v are laid out. */
enum KvLayout { KV_PACKED, KV_DENSE, KV_PAGED };

struct Case {
    std::string name;
    int hd = 128, bf16 = 1, hq = 8, hk = 2;
    int causal = 0, wl = -1, wr = -1;
    float softcap = 0.f;
    int sinks = 0;
    std::vector<int> len_q;     /* per entry; unpacked q: all equal */
    std::vector<int> len_k;     /* per entry: the keys it sees (seqused_k or packed lengths) */
    bool packed_q = true;
    KvLayout kv = KV_PACKED;
    bool seqused = false;       /* pass len_k as seqused_k */
    int kv_extra = 0;           /* packed k with seqused: unused rows after each entry's keys */
    bool kv_idx = false;        /* dense: entry b reads k/v entry kv_batch_idx[b] */
    int page_size = 0;          /* paged */
};

struct Geometry {
    int B, Sq, Sk;                        /* seqlen_q, seqlen_k: the maxima (or uniform) */
    std::vector<int32_t> cu_q, cu_k, used, kv_idx, table;
    int total_q_rows, total_q;            /* q/out rows allocated; p.total_q (lse extent) */
    int kv_rows; /* packed total_k, dense batches * capacity, or pages * page_size */
    int kv_batches, cap, pages, table_stride;
};

static Geometry make_geometry(const Case &c, std::mt19937_64 &rng)
{
    Geometry g;
    g.B = (int)c.len_q.size();
    g.Sq = *std::max_element(c.len_q.begin(), c.len_q.end());
    g.Sk = *std::max_element(c.len_k.begin(), c.len_k.end());
    if (c.packed_q) {
        /* two rows no entry owns before the first, three after the last */
        g.cu_q.push_back(2);
        for (int b = 0; b < g.B; ++b)
            g.cu_q.push_back(g.cu_q.back() + c.len_q[b]);
        g.total_q = g.cu_q.back() + 3;
        g.total_q_rows = g.total_q;
    } else {
        g.total_q = 0;
        g.total_q_rows = g.B * g.Sq;
    }
    g.kv_batches = g.B;
    g.cap = g.Sk;
    g.pages = 0;
    g.table_stride = 0;
    if (c.seqused)
        g.used.assign(c.len_k.begin(), c.len_k.end());
    if (c.kv == KV_PACKED) {
        g.cu_k.push_back(1); /* a row no entry owns first */
        for (int b = 0; b < g.B; ++b)
            g.cu_k.push_back(g.cu_k.back() + c.len_k[b] + (c.seqused ? c.kv_extra : 0));
        g.kv_rows = g.cu_k.back() + 2;
        /* seqlen_k is the longest packed entry */
        int mx = 0;
        for (int b = 0; b < g.B; ++b)
            mx = std::max(mx, g.cu_k[b + 1] - g.cu_k[b]);
        g.Sk = mx;
    } else if (c.kv == KV_DENSE) {
        g.cap = g.Sk + 5; /* capacity past the longest entry */
        g.Sk = g.cap;
        if (c.kv_idx) {
            g.kv_batches = g.B + 3;
            std::vector<int32_t> perm(g.kv_batches);
            for (int i = 0; i < g.kv_batches; ++i)
                perm[i] = i;
            std::shuffle(perm.begin(), perm.end(), rng);
            g.kv_idx.assign(perm.begin(), perm.begin() + g.B);
        }
        g.kv_rows = g.kv_batches * g.cap;
    } else {
        const int per = std::max(1, (g.Sk + c.page_size - 1) / c.page_size);
        g.table_stride = per + 2;
        g.pages = g.B * per + 3;
        std::vector<int32_t> perm(g.pages);
        for (int i = 0; i < g.pages; ++i)
            perm[i] = i;
        std::shuffle(perm.begin(), perm.end(), rng);
        g.table.assign((size_t)g.B * g.table_stride, -1); /* unused slots: never read */
        for (int b = 0; b < g.B; ++b)
            for (int j = 0; j < per; ++j)
                g.table[(size_t)b * g.table_stride + j] = perm[b * per + j];
        g.kv_batches = g.pages;
        g.Sk = per * c.page_size;
        g.kv_rows = g.pages * c.page_size;
    }
    return g;
}

/* Row of key j of entry b in the (kv_rows, heads, head_dim) view of k and v; seqlen.h's rule
 * spelled out independently. */
static int64_t key_row(const Case &c, const Geometry &g, int b, int j)
{
    if (c.kv == KV_PACKED)
        return g.cu_k[b] + j;
    if (c.kv == KV_DENSE)
        return (int64_t)(c.kv_idx ? g.kv_idx[b] : b) * g.cap + j;
    const int page = g.table[(size_t)b * g.table_stride + j / c.page_size];
    return (int64_t)page * c.page_size + j % c.page_size;
}

static int64_t q_row(const Case &c, const Geometry &g, int b, int i)
{
    return c.packed_q ? g.cu_q[b] + i : (int64_t)b * g.Sq + i;
}

static int64_t lse_at(const Case &c, const Geometry &g, int b, int h, int i)
{
    return c.packed_q ? (int64_t)h * g.total_q + g.cu_q[b] + i
                      : ((int64_t)b * c.hq + h) * g.Sq + i;
}

template <class T>
static T *to_device(const std::vector<T> &v)
{
    if (v.empty())
        return nullptr;
    T *d;
    CK(cudaMalloc(&d, v.size() * sizeof(T)));
    CK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

static int g_failures = 0;

static void run_case(const Case &c)
{
    const bool bf16 = c.bf16 != 0;
    const int D = c.hd, Hq = c.hq, Hk = c.hk, G = Hq / Hk;
    std::mt19937_64 rng(std::hash<std::string>{}(c.name));
    const Geometry g = make_geometry(c, rng);
    const int B = g.B;
    const float scale = 1.0f / sqrtf((float)D);
    std::normal_distribution<float> nd(0.f, 1.f);

    /* q (rows, Hq, D); k, v (kv_rows, Hk, D): rows no entry may read hold NaN */
    const int64_t q_elems = (int64_t)g.total_q_rows * Hq * D;
    const int64_t kv_elems = (int64_t)g.kv_rows * Hk * D;
    const uint16_t nan_bits = bf16 ? 0x7fc0 : 0x7e00;
    std::vector<uint16_t> q_b(q_elems, nan_bits), k_b(kv_elems, nan_bits), v_b(kv_elems, nan_bits);
    std::vector<float> q(q_elems, NAN), k(kv_elems, NAN), v(kv_elems, NAN);
    auto fill_row = [&](std::vector<uint16_t> &bits, std::vector<float> &vals, int64_t row,
                        int heads) {
        for (int64_t e = row * heads * D; e < (row + 1) * heads * D; ++e) {
            bits[e] = to_bits(nd(rng), bf16);
            vals[e] = from_bits(bits[e], bf16);
        }
    };
    for (int b = 0; b < B; ++b) {
        for (int i = 0; i < c.len_q[b]; ++i)
            fill_row(q_b, q, q_row(c, g, b, i), Hq);
        for (int j = 0; j < c.len_k[b]; ++j) {
            fill_row(k_b, k, key_row(c, g, b, j), Hk);
            fill_row(v_b, v, key_row(c, g, b, j), Hk);
        }
    }
    std::vector<float> sinks(Hq);
    for (int h = 0; h < Hq; ++h)
        sinks[h] = nd(rng);

    /* ---- reference ---- */
    std::vector<double> out_ref(q_elems, 0.0), lse_ref;
    const int64_t lse_elems = c.packed_q ? (int64_t)Hq * g.total_q : (int64_t)B * Hq * g.Sq;
    lse_ref.assign(lse_elems, 0.0);
    for (int b = 0; b < B; ++b) {
        const fa_mask mask = fa_mask_make(c.len_q[b], c.len_k[b], c.wl, c.wr, c.causal);
        std::vector<double> logit(std::max(1, c.len_k[b]));
        for (int h = 0; h < Hq; ++h)
            for (int i = 0; i < c.len_q[b]; ++i) {
                const float *qi = &q[(q_row(c, g, b, i) * Hq + h) * D];
                const fa_key_span span =
                    c.len_k[b] > 0 ? fa_mask_row(&mask, i) : fa_key_span{0, -1};
                double mx = c.sinks ? (double)sinks[h] : -INFINITY;
                for (int j = span.lo; j <= span.hi; ++j) {
                    const float *kj = &k[(key_row(c, g, b, j) * Hk + h / G) * D];
                    double s = 0;
                    for (int d = 0; d < D; ++d)
                        s += (double)qi[d] * kj[d];
                    s *= scale;
                    if (c.softcap > 0)
                        s = c.softcap * tanh(s / c.softcap);
                    logit[j] = s;
                    mx = std::max(mx, s);
                }
                double sum = c.sinks ? exp((double)sinks[h] - mx) : 0.0;
                for (int j = span.lo; j <= span.hi; ++j)
                    sum += exp(logit[j] - mx);
                double *o = &out_ref[(q_row(c, g, b, i) * Hq + h) * D];
                for (int j = span.lo; j <= span.hi; ++j) {
                    const double pj = exp(logit[j] - mx) / sum;
                    const float *vj = &v[(key_row(c, g, b, j) * Hk + h / G) * D];
                    for (int d = 0; d < D; ++d)
                        o[d] += pj * vj[d];
                }
                lse_ref[lse_at(c, g, b, h, i)] = sum > 0 ? mx + log(sum) : -INFINITY;
            }
    }

    /* ---- device ---- */
    fa_params p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    p.batch = B;
    p.seqlen_q = g.Sq;
    p.seqlen_k = g.Sk;
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
    const int64_t q_rs = (int64_t)Hq * D, kv_rs = (int64_t)Hk * D;
    p.q_row_stride = p.o_row_stride = q_rs;
    p.q_head_stride = p.o_head_stride = D;
    p.q_batch_stride = p.o_batch_stride = c.packed_q ? 0 : (int64_t)g.Sq * q_rs;
    p.k_row_stride = p.v_row_stride = kv_rs;
    p.k_head_stride = p.v_head_stride = D;
    const int64_t kv_bs = c.kv == KV_PACKED  ? 0
                          : c.kv == KV_DENSE ? (int64_t)g.cap * kv_rs
                                             : (int64_t)c.page_size * kv_rs;
    p.k_batch_stride = p.v_batch_stride = kv_bs;
    p.total_q = g.total_q;
    p.total_k = c.kv == KV_PACKED ? g.kv_rows : 0;
    p.kv_batches = g.kv_batches;
    p.block_table_stride = g.table_stride;
    p.page_size = c.page_size;

    uint16_t *dq = to_device(q_b), *dk = to_device(k_b), *dv = to_device(v_b);
    int32_t *dcu_q = to_device(g.cu_q), *dcu_k = to_device(g.cu_k), *dused = to_device(g.used);
    int32_t *didx = to_device(g.kv_idx), *dtable = to_device(g.table);
    float *dsinks = c.sinks ? to_device(sinks) : nullptr;
    uint16_t *dout;
    float *dlse;
    CK(cudaMalloc(&dout, q_elems * 2));
    CK(cudaMalloc(&dlse, lse_elems * 4));
    p.q = dq;
    p.k = dk;
    p.v = dv;
    p.out = dout;
    p.lse = dlse;
    p.sinks = dsinks;
    p.cu_seqlens_q = dcu_q;
    p.cu_seqlens_k = dcu_k;
    p.seqused_k = dused;
    p.kv_batch_idx = didx;
    p.block_table = dtable;

    /* the kernel depends on the layout arrays (the SEQ instances serve them): pick it now */
    fa_tile t;
    const void *fn = fa_sm80_tile(&p, &t) == 0 ? fa_sm80_kernel_fn(&p, &t) : nullptr;
    if (fn == nullptr) {
        printf("FAIL %-58s no kernel\n", c.name.c_str());
        ++g_failures;
        return;
    }
    CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)t.smem_bytes));

    const std::vector<uint16_t> out_poison(q_elems, kOutSentinel);
    const std::vector<float> lse_poison(lse_elems, kLseSentinel);
    auto launch = [&](int batch) {
        fa_params pb = p;
        pb.batch = batch;
        const fa_launch cfg = tile_launch(t, (g.Sq + t.block_m - 1) / t.block_m, Hq, batch);
        CK(cudaMemcpy(dout, out_poison.data(), q_elems * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dlse, lse_poison.data(), lse_elems * 4, cudaMemcpyHostToDevice));
        if (cfg.grid[0] > 0 && batch > 0)
            CK(fa_sm80_launch(&pb, &cfg, 0));
        CK(cudaDeviceSynchronize());
    };
    std::vector<uint16_t> out(q_elems), out2(q_elems);
    std::vector<float> lse(lse_elems), lse2(lse_elems);
    launch(B);
    CK(cudaMemcpy(out.data(), dout, q_elems * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(lse.data(), dlse, lse_elems * 4, cudaMemcpyDeviceToHost));
    launch(B);
    CK(cudaMemcpy(out2.data(), dout, q_elems * 2, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(lse2.data(), dlse, lse_elems * 4, cudaMemcpyDeviceToHost));
    const bool bitwise = out == out2 && memcmp(lse.data(), lse2.data(), lse_elems * 4) == 0;

    /* ---- compare ---- */
    const double tol = bf16 ? 2e-2 : 4e-3;
    std::vector<char> owned(g.total_q_rows, 0), lse_owned(lse_elems, 0);
    double err_o = 0, err_l = 0;
    int64_t bad_o = 0, bad_l = 0, nonfinite = 0, inf_mismatch = 0;
    for (int b = 0; b < B; ++b)
        for (int i = 0; i < c.len_q[b]; ++i) {
            const int64_t r = q_row(c, g, b, i);
            owned[r] = 1;
            for (int h = 0; h < Hq; ++h) {
                for (int d = 0; d < D; ++d) {
                    const int64_t at = (r * Hq + h) * D + d;
                    const double ours = from_bits(out[at], bf16), ref = out_ref[at];
                    if (!std::isfinite(ours))
                        ++nonfinite;
                    const double e = fabs(ours - ref);
                    err_o = std::max(err_o, e);
                    if (e > tol + tol * fabs(ref))
                        ++bad_o;
                }
                const int64_t li = lse_at(c, g, b, h, i);
                lse_owned[li] = 1;
                const double ours = lse[li], ref = lse_ref[li];
                if (std::isinf(ref) || std::isinf(ours)) {
                    if (!(std::isinf(ref) && std::isinf(ours) && ref < 0 && ours < 0))
                        ++inf_mismatch;
                } else {
                    if (std::isnan(ours))
                        ++nonfinite;
                    err_l = std::max(err_l, fabs(ours - ref));
                    if (!(fabs(ours - ref) <= 2e-3))
                        ++bad_l;
                }
            }
        }
    int64_t stray = 0;
    for (int64_t r = 0; r < g.total_q_rows; ++r)
        if (!owned[r])
            for (int64_t e = r * Hq * D; e < (r + 1) * Hq * D; ++e)
                stray += out[e] != kOutSentinel;
    for (int64_t i = 0; i < lse_elems; ++i)
        if (!lse_owned[i])
            stray += lse[i] != kLseSentinel;

    /* prefixes: entries 0..b only; nothing past entry b's rows may change */
    int64_t overrun = 0;
    if (c.packed_q)
        for (int b = 0; b < B; ++b) {
            launch(b + 1);
            CK(cudaMemcpy(out2.data(), dout, q_elems * 2, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(lse2.data(), dlse, lse_elems * 4, cudaMemcpyDeviceToHost));
            const int end = g.cu_q[b + 1];
            for (int64_t r = 0; r < g.total_q_rows; ++r)
                if (r < g.cu_q[0] || r >= end)
                    for (int64_t e = r * Hq * D; e < (r + 1) * Hq * D; ++e)
                        overrun += out2[e] != kOutSentinel;
            for (int h = 0; h < Hq; ++h)
                for (int r = 0; r < g.total_q; ++r)
                    if (r < g.cu_q[0] || r >= end)
                        overrun += lse2[(int64_t)h * g.total_q + r] != kLseSentinel;
        }

    const bool ok = bad_o == 0 && bad_l == 0 && nonfinite == 0 && inf_mismatch == 0 &&
                    stray == 0 && overrun == 0 && bitwise;
    printf("%s %-58s out %.2e lse %.2e%s%s%s%s%s%s%s\n", ok ? "PASS" : "FAIL", c.name.c_str(),
           err_o, err_l, bad_o ? " OUT-MISMATCH" : "", bad_l ? " LSE-MISMATCH" : "",
           nonfinite ? " NONFINITE" : "", inf_mismatch ? " INF-MISMATCH" : "",
           stray ? " STRAY-WRITE" : "", overrun ? " OVERRUN" : "",
           bitwise ? "" : " NONDETERMINISTIC");
    if (!ok)
        ++g_failures;
    cudaFree(dq);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dcu_q);
    cudaFree(dcu_k);
    cudaFree(dused);
    cudaFree(didx);
    cudaFree(dtable);
    cudaFree(dsinks);
    cudaFree(dout);
    cudaFree(dlse);
}

int main()
{
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, sm_%d%d\n", prop.name, prop.major, prop.minor);
    std::vector<Case> cases;
    char nm[128];
    const std::vector<int> rag_q = {0, 1, 17, 128, 300}, rag_k = {5, 1, 300, 128, 17};
    const std::vector<int> rag_q2 = {300, 128, 17, 1, 0}, rag_k2 = {0, 128, 300, 17, 1};

    /* packed q and k, ragged, every head dim x mask x dtype */
    for (int hd : {64, 128, 256})
        for (int causal : {0, 1})
            for (int bf : {1, 0}) {
                Case c;
                c.hd = hd, c.bf16 = bf, c.causal = causal;
                c.len_q = rag_q, c.len_k = rag_k;
                snprintf(nm, sizeof nm, "packed hd%d %s %s q(0,1,17,128,300)", hd,
                         bf ? "bf16" : "fp16", causal ? "causal" : "full");
                c.name = nm;
                cases.push_back(c);
                c.len_q = rag_q2, c.len_k = rag_k2;
                snprintf(nm, sizeof nm, "packed hd%d %s %s q(300,128,17,1,0) k0", hd,
                         bf ? "bf16" : "fp16", causal ? "causal" : "full");
                c.name = nm;
                cases.push_back(c);
            }
    /* packed with a window, softcap, sinks, a padded head_dim */
    {
        Case c;
        c.len_q = rag_q, c.len_k = rag_k, c.wl = 40, c.wr = 7;
        c.name = "packed hd128 bf16 window(40,7)";
        cases.push_back(c);
        c.wl = c.wr = -1, c.causal = 1, c.sinks = 1, c.softcap = 30.f;
        c.len_q = rag_q2, c.len_k = rag_k2;
        c.name = "packed hd128 bf16 causal softcap sinks k0";
        cases.push_back(c);
        c.hd = 72, c.sinks = 0, c.softcap = 0.f, c.bf16 = 0;
        c.name = "packed hd72 fp16 causal";
        cases.push_back(c);
    }
    /* packed q, packed k with seqused_k (keys past it belong to no one: NaN) */
    for (int hd : {64, 128, 256}) {
        Case c;
        c.hd = hd, c.causal = 1, c.len_q = rag_q, c.len_k = {3, 0, 250, 128, 17};
        c.seqused = true, c.kv_extra = 9;
        snprintf(nm, sizeof nm, "packed+seqused_k hd%d bf16 causal", hd);
        c.name = nm;
        cases.push_back(c);
    }
    /* uniform q, dense k/v with seqused_k, with and without kv_batch_idx */
    for (int hd : {64, 128, 256})
        for (int idx : {0, 1})
            for (int causal : {0, 1}) {
                Case c;
                c.hd = hd, c.causal = causal, c.packed_q = false, c.bf16 = idx;
                c.len_q = std::vector<int>(5, 37), c.len_k = {0, 1, 17, 128, 300};
                c.kv = KV_DENSE, c.seqused = true, c.kv_idx = idx != 0;
                snprintf(nm, sizeof nm, "seqused_k%s hd%d %s %s q37", idx ? "+kv_batch_idx" : "",
                         hd, idx ? "bf16" : "fp16", causal ? "causal" : "full");
                c.name = nm;
                cases.push_back(c);
            }
    /* packed q over a dense cache: kv_batch_idx with seqused_k */
    {
        Case c;
        c.len_q = rag_q, c.len_k = {7, 1, 300, 64, 200}, c.causal = 1;
        c.kv = KV_DENSE, c.seqused = true, c.kv_idx = true;
        c.name = "packed q + seqused_k + kv_batch_idx hd128 causal";
        cases.push_back(c);
    }
    /* paged k/v, page sizes 1, 16, 64 (and 3: blocks span pages at odd offsets) */
    for (int ps : {1, 3, 16, 64})
        for (int hd : {64, 128, 256})
            for (int causal : {0, 1}) {
                Case c;
                c.hd = hd, c.causal = causal, c.bf16 = (ps + hd) % 2 == 0;
                c.kv = KV_PAGED, c.page_size = ps, c.seqused = true;
                c.len_q = std::vector<int>(5, 29), c.len_k = {0, 1, 17, 128, 300};
                c.packed_q = false;
                snprintf(nm, sizeof nm, "paged ps%d seqused_k hd%d %s q29", ps, hd,
                         causal ? "causal" : "full");
                c.name = nm;
                cases.push_back(c);
            }
    for (int ps : {16, 64}) {
        Case c;
        c.kv = KV_PAGED, c.page_size = ps, c.seqused = true, c.causal = 1;
        c.len_q = rag_q, c.len_k = {5, 1, 300, 128, 17};
        snprintf(nm, sizeof nm, "paged ps%d + packed q + seqused_k hd128 causal", ps);
        c.name = nm;
        cases.push_back(c);
    }
    {
        /* paged without seqused_k: every entry sees seqlen_k = its pages * page_size keys */
        Case c;
        c.kv = KV_PAGED, c.page_size = 16, c.packed_q = false;
        c.len_q = std::vector<int>(3, 200), c.len_k = std::vector<int>(3, 208);
        c.name = "paged ps16 uniform hd64 full q200 k208";
        c.hd = 64;
        cases.push_back(c);
    }
    for (const Case &c : cases)
        run_case(c);
    printf("%d cases, %d failed\n", (int)cases.size(), g_failures);
    return g_failures ? 1 : 0;
}
