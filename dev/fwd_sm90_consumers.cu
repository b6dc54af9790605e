/*
 * fwd_sm90_consumers.cu -- the sm90 forward on its two shapes of 384 threads (sm90_tiles.h):
 * the library's two consumer warpgroups beside a producer (128-row tiles), and three consumer
 * warpgroups whose threads issue the loads (192-row tiles). Variants under test:
 *   hd64 3x128   head_dim 64, three consumers, 128-key blocks (every mask, softcap or not);
 *   hd128 3x64   head_dim 128, three consumers, 64-key blocks (full and causal): with O (64
 *   hd128 3x80   registers) beside S and P only blocks this narrow fit 168 registers a thread;
 *                80 keys fit as well (ptxas, CUDA 13.0: 0 bytes spilled in every one);
 *   hd64 3x128 fma1, fma2
 *                hd64 3x128 (full and causal) with 1/8 or 2/8 of the key loop's exponentials
 *                on the FMA pipe (exp2_fma, sm90_softmax.cuh; issue 17's third step);
 *   hd64 sc fma2..4, hd128 sc fma1..3
 *                the library's two consumers with softcap (causal; full too at head_dim 64)
 *                and that many eighths of the exponentials on the FMA pipe: softcap's tanh runs
 *                on MUFU beside the exponentials, which Nsight Compute found the busiest pipe
 *                there (issue 13's softcap target); measured no faster (benches/NOTES.md).
 * Each is checked against a float reference on dense inputs next to the two-consumer
 * instance of the same problem (the library's tile rule for two consumers), then timed
 * against it.
 *
 * Build on an H100/H200 (any sm_90 GPU), from the repository root; every instance is built
 * here from the kernel headers, nothing of the project is linked:
 *   nvcc -O3 -std=c++17 --use_fast_math -gencode arch=compute_90a,code=sm_90a -I csrc \
 *     dev/fwd_sm90_consumers.cu -o fwd_sm90_consumers
 *   ./fwd_sm90_consumers           check: every case on two consumers and each variant that
 *                                  serves it; exit status 1 on a failure
 *   ./fwd_sm90_consumers --bench [REPEATS]
 *                                  the check, then the fa suite's shapes (batch x seqlen =
 *                                  16384, 2048 / head_dim heads, seqlen 512 .. 16384; full and
 *                                  causal; bfloat16 and float16) at head_dim 64 and 128: each
 *                                  variant's output is first compared with two consumers', then
 *                                  both are timed in turn, REPEATS (default 7) rounds with CUDA
 *                                  events around enough calls for ~2 ms; the medians are
 *                                  printed as TFLOP/s (4 B H S^2 D, half that causal) with
 *                                  variant / two, and the geomean per variant.
 *   ./fwd_sm90_consumers --bench-softcap [REPEATS]
 *                                  the check, then the same shapes in bfloat16 with softcap 30,
 *                                  the softcap variants timed against two consumers, head_dim
 *                                  128 first
 *   ./fwd_sm90_consumers --profile
 *                                  one launch each of two consumers and hd64 3x128 (bfloat16,
 *                                  full 16k and causal 2k), outputs compared, for ncu
 * dev/fwd_sm90_seq_check.cu --consumers 3 runs hd64 3x128 on the packed, cache and paged
 * layouts.
 *
 * Cases (check): GQA 8:2, random normal(0, 1) inputs rounded to the dtype, out with a padded
 * head stride; lengths that end inside, at and past a 192-row tile and a key block, cross
 * lengths, a row with no key (window), head_dim 40 (run as 64 with zero padding), softcap and
 * windows, and CTAs whose tiles alternate between some with keys and some without. Pass rule as in fwd_sm90_seq_check.cu: out within 2e-2 (bfloat16) or 1e-2
 * (float16) of the reference, relative to its largest value; lse within 1e-2; rows that see no
 * key exactly 0 with lse -inf.
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
#include <type_traits>
#include <vector>

#include "common/mask.h"
#include "flashattn.h"
#include "kernels/sm90_fwd_launch.cuh"
#include "kernels/sm90_tiles.h"
#include "dev_check.h"

namespace {

struct Shape {
    int batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim;
    bool bf16;
    int causal, wl, wr;
    float softcap;
};

std::string describe(const Shape &s)
{
    char buf[160];
    snprintf(buf, sizeof buf, "%s B%d S%d/%d H%d/%d D%d%s", s.bf16 ? "bf16" : "fp16", s.batch, s.seqlen_q,
             s.seqlen_k, s.heads_q, s.heads_kv, s.head_dim, s.causal ? " causal" : "");
    std::string d = buf;
    if (s.wl >= 0 || s.wr >= 0)
        d += " window(" + std::to_string(s.wl) + "," + std::to_string(s.wr) + ")";
    if (s.softcap > 0.f)
        d += " softcap";
    return d;
}

/* Device tensors of one shape: q, k, v dense (batch, seq, heads, head_dim); out with 8 padding
   columns per head. */
struct Problem {
    Shape s;
    std::vector<uint16_t> q, k, v;   /* as uploaded */
    std::vector<float> qf, kf, vf;   /* the same values in float, for the reference */
    void *dq = nullptr, *dk = nullptr, *dv = nullptr, *dout = nullptr;
    float *dlse = nullptr;
    size_t out_elems = 0, lse_elems = 0;
    fa_params p;

    int out_head_stride() const { return s.head_dim + 8; }

    void init(const Shape &shape, uint64_t seed)
    {
        s = shape;
        std::mt19937_64 rng(seed);
        std::normal_distribution<float> nd(0.f, 1.f);
        auto gen = [&](std::vector<uint16_t> &x, std::vector<float> &xf, size_t n) {
            x.resize(n);
            xf.resize(n);
            for (size_t i = 0; i < n; ++i) {
                x[i] = to_bits(nd(rng), s.bf16);
                xf[i] = from_bits(x[i], s.bf16);
            }
        };
        const size_t D = s.head_dim;
        gen(q, qf, (size_t)s.batch * s.seqlen_q * s.heads_q * D);
        gen(k, kf, (size_t)s.batch * s.seqlen_k * s.heads_kv * D);
        gen(v, vf, (size_t)s.batch * s.seqlen_k * s.heads_kv * D);
        out_elems = (size_t)s.batch * s.seqlen_q * s.heads_q * out_head_stride();
        lse_elems = (size_t)s.batch * s.heads_q * s.seqlen_q;
        auto upload = [](const std::vector<uint16_t> &h, void **d) {
            CK(cudaMalloc(d, std::max<size_t>(h.size() * 2, 16)));
            if (!h.empty())
                CK(cudaMemcpy(*d, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
        };
        upload(q, &dq);
        upload(k, &dk);
        upload(v, &dv);
        CK(cudaMalloc(&dout, std::max<size_t>(out_elems * 2, 16)));
        CK(cudaMalloc(&dlse, std::max<size_t>(lse_elems * 4, 16)));

        memset(&p, 0, sizeof p);
        p.struct_size = sizeof p;
        p.q = dq;
        p.k = dk;
        p.v = dv;
        p.out = dout;
        p.lse = dlse;
        p.batch = s.batch;
        p.seqlen_q = s.seqlen_q;
        p.seqlen_k = s.seqlen_k;
        p.heads_q = s.heads_q;
        p.heads_kv = s.heads_kv;
        p.head_dim = s.head_dim;
        p.dtype = s.bf16 ? FA_BFLOAT16 : FA_FLOAT16;
        p.softmax_scale = 1.0f / sqrtf((float)s.head_dim);
        p.causal = s.causal;
        p.window_left = s.wl;
        p.window_right = s.wr;
        p.softcap = s.softcap;
        p.family = FA_KERNEL_SM90;
        p.q_row_stride = (int64_t)s.heads_q * D;
        p.q_head_stride = D;
        p.q_batch_stride = (int64_t)s.seqlen_q * p.q_row_stride;
        p.k_row_stride = p.v_row_stride = (int64_t)s.heads_kv * D;
        p.k_head_stride = p.v_head_stride = D;
        p.k_batch_stride = p.v_batch_stride = (int64_t)s.seqlen_k * p.k_row_stride;
        p.o_head_stride = out_head_stride();
        p.o_row_stride = (int64_t)s.heads_q * p.o_head_stride;
        p.o_batch_stride = (int64_t)s.seqlen_q * p.o_row_stride;
    }

    void release()
    {
        cudaFree(dq);
        cudaFree(dk);
        cudaFree(dv);
        cudaFree(dout);
        cudaFree(dlse);
    }
};

/* A shape of the kernel: two consumers with the library's key blocks (block_n 0), or three
   consumers with block_n keys a block; fma_eighths of the key loop's exponentials on the FMA
   pipe. Two consumers with fma_eighths > 0 run softcap only, where MUFU computes tanh as well
   as the exponentials. */
struct Variant {
    const char *name;
    int head_dim, consumers, block_n, fma_eighths;
};
const Variant kTwo = {"2 consumers", 0, FA_NUM_CONSUMER_WARPGROUPS, 0, 0};
const Variant kVariants[] = {
    {"hd64 3x128", 64, 3, 128, 0},      {"hd128 3x64", 128, 3, 64, 0},      {"hd128 3x80", 128, 3, 80, 0},
    {"hd64 3x128 fma1", 64, 3, 128, 1}, {"hd64 3x128 fma2", 64, 3, 128, 2},
    {"hd64 sc fma2", 64, FA_NUM_CONSUMER_WARPGROUPS, 0, 2},
    {"hd64 sc fma3", 64, FA_NUM_CONSUMER_WARPGROUPS, 0, 3},
    {"hd64 sc fma4", 64, FA_NUM_CONSUMER_WARPGROUPS, 0, 4},
    {"hd128 sc fma1", 128, FA_NUM_CONSUMER_WARPGROUPS, 0, 1},
    {"hd128 sc fma2", 128, FA_NUM_CONSUMER_WARPGROUPS, 0, 2},
    {"hd128 sc fma3", 128, FA_NUM_CONSUMER_WARPGROUPS, 0, 3}};

bool is_library(const Variant &v) { return v.consumers == FA_NUM_CONSUMER_WARPGROUPS && v.fma_eighths == 0; }

/* Whether v is built as the library's instances are (every mask, softcap or not). */
bool full_set(const Variant &v) { return v.consumers == 3 && v.head_dim == 64 && v.fma_eighths == 0; }

/* Whether v runs problem pr: two consumers and hd64 3x128 run all; the other three-consumer
   variants full and causal without softcap; the softcap ones causal (and full at head_dim 64)
   with it, on the library's long-key blocks. */
bool serves(const Variant &v, const Problem &pr)
{
    const Shape &s = pr.s;
    if (is_library(v))
        return true;
    if (fa_head_dim_padded(s.head_dim) != v.head_dim)
        return false;
    if (full_set(v))
        return true;
    if (s.wl >= 0 || s.wr >= 0)
        return false;
    if (v.consumers == 3)
        return s.softcap == 0.f;
    return s.softcap > 0.f && (s.causal || v.head_dim == 64) && !fa_sm90_short_keys(&pr.p, v.head_dim, s.causal);
}

/* Instance Cfg's kernel (into *fn, when fn is given) or its launch. */
template <class Cfg>
cudaError_t kernel_or_launch(const fa_params *p, const fa_launch *cfg, cudaStream_t stream, const void **fn)
{
    if (fn) {
        *fn = reinterpret_cast<const void *>(&fa_sm90::fwd_kernel<Cfg>);
        return cudaSuccess;
    }
    return fa_sm90::launch_instance<Cfg>(p, cfg, stream);
}

/* f(mask, bf16) with p's mask kind (full or causal) and dtype as compile-time constants;
   cudaErrorInvalidValue for any other mask. */
template <class F>
cudaError_t with_full_or_causal(const fa_params *p, F &&f)
{
    using Full = std::integral_constant<int, FA_MASK_NONE>;
    using Causal = std::integral_constant<int, FA_MASK_CAUSAL>;
    const bool bf16 = p->dtype == FA_BFLOAT16;
    switch (fa_params_mask_kind(p)) {
    case FA_MASK_NONE:
        return bf16 ? f(Full{}, std::true_type{}) : f(Full{}, std::false_type{});
    case FA_MASK_CAUSAL:
        return bf16 ? f(Causal{}, std::true_type{}) : f(Causal{}, std::false_type{});
    default:
        return cudaErrorInvalidValue;
    }
}

/* Three consumers at head_dim kHd, kBlockN keys a block, kFma eighths of the exponentials on
   the FMA pipe; full or causal, no softcap. fn: as kernel_or_launch. */
template <int kHd, int kBlockN, int kFma>
cudaError_t launch_three(const fa_params *p, const fa_launch *cfg, cudaStream_t stream, const void **fn)
{
    if (p->softcap > 0.f)
        return cudaErrorInvalidValue;
    return with_full_or_causal(p, [&](auto mask, auto bf16) {
        using Cfg = fa_sm90::Config<kHd, kBlockN, decltype(mask)::value, false, decltype(bf16)::value, 3, kFma>;
        return kernel_or_launch<Cfg>(p, cfg, stream, fn);
    });
}

/* Whether the softcap variants of head_dim kHd run full attention too: at head_dim 128 its
   176-key blocks spill with the polynomial's registers (ptxas, CUDA 13.0), so causal only. */
template <int kHd>
constexpr bool kSoftcapFmaFull = kHd == 64;

/* Two consumers with softcap at head_dim kHd, the library's key blocks for long keys, kFma
   eighths of the exponentials on the FMA pipe; causal, and full where kSoftcapFmaFull. fn: as
   kernel_or_launch. */
template <int kHd, int kFma>
cudaError_t launch_softcap(const fa_params *p, const fa_launch *cfg, cudaStream_t stream, const void **fn)
{
    if (p->softcap <= 0.f)
        return cudaErrorInvalidValue;
    return with_full_or_causal(p, [&](auto mask, auto bf16) {
        constexpr int kMask = decltype(mask)::value;
        using Cfg = fa_sm90::Config<kHd, FA_SM90_BLOCK_N(kHd, kMask != FA_MASK_NONE, 0), kMask, true,
                                    decltype(bf16)::value, FA_NUM_CONSUMER_WARPGROUPS, kFma>;
        if constexpr (kMask == FA_MASK_NONE && !kSoftcapFmaFull<kHd>)
            return cudaErrorInvalidValue;
        else
            return kernel_or_launch<Cfg>(p, cfg, stream, fn);
    });
}

/* The variants outside the library and full_set (fn: as kernel_or_launch). */
cudaError_t launch_narrow(const Variant &v, const fa_params *p, const fa_launch *cfg, cudaStream_t stream,
                          const void **fn)
{
    if (v.consumers == FA_NUM_CONSUMER_WARPGROUPS) {
        if (v.head_dim == 64)
            return v.fma_eighths == 2   ? launch_softcap<64, 2>(p, cfg, stream, fn)
                   : v.fma_eighths == 3 ? launch_softcap<64, 3>(p, cfg, stream, fn)
                                        : launch_softcap<64, 4>(p, cfg, stream, fn);
        return v.fma_eighths == 1   ? launch_softcap<128, 1>(p, cfg, stream, fn)
               : v.fma_eighths == 2 ? launch_softcap<128, 2>(p, cfg, stream, fn)
                                    : launch_softcap<128, 3>(p, cfg, stream, fn);
    }
    if (v.head_dim == 128)
        return v.block_n == 64 ? launch_three<128, 64, 0>(p, cfg, stream, fn)
                               : launch_three<128, 80, 0>(p, cfg, stream, fn);
    return v.fma_eighths == 1 ? launch_three<64, 128, 1>(p, cfg, stream, fn)
                              : launch_three<64, 128, 2>(p, cfg, stream, fn);
}

/* The tile of v for p, and v's kernel (for its shared-memory attribute). */
bool variant_tile(const Variant &v, const fa_params *p, fa_tile *t, const void **fn)
{
    const int hd = fa_head_dim_padded(p->head_dim);
    if (fa_sm90_tile_of_shape(p, FA_NUM_CONSUMER_WARPGROUPS, t) != 0)
        return false;
    *fn = nullptr;
    if (is_library(v)) {
        *fn = hd == 64    ? fa_sm90::instance_kernel_fn<64, FA_NUM_CONSUMER_WARPGROUPS>(p)
              : hd == 128 ? fa_sm90::instance_kernel_fn<128, FA_NUM_CONSUMER_WARPGROUPS>(p)
                          : nullptr;
        return *fn != nullptr;
    }
    if (v.consumers == 3) {
        t->block_m = FA_SM90_BLOCK_M(v.consumers);
        t->block_n = v.block_n;
        t->stages = FA_SM90_STAGES(v.head_dim, v.consumers);
        t->smem_bytes = FA_SM90_SMEM_BYTES(t->block_m, v.head_dim, t->block_n, t->stages);
    }
    if (full_set(v))
        *fn = fa_sm90::instance_kernel_fn<64, 3>(p);
    else
        launch_narrow(v, p, nullptr, 0, fn);
    return *fn != nullptr;
}

/* v's launch for a problem, set up once (tile, shared-memory attribute, grid) so that a
   timed call does no more host work than the launch itself. */
struct Ready {
    Variant v;
    fa_launch cfg;
    bool ok;
};

Ready prepare(const Problem &pr, const Variant &v, int sm_count)
{
    Ready r{v, {}, false};
    fa_tile t;
    const void *fn = nullptr;
    if (!variant_tile(v, &pr.p, &t, &fn)) {
        printf("%s: no tile or kernel for %s\n", v.name, describe(pr.s).c_str());
        return r;
    }
    CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)t.smem_bytes));
    r.cfg = persistent_launch(pr.p, t, sm_count);
    r.ok = true;
    return r;
}

/* One launch; false (with a message) when it cannot. */
bool launch(const Problem &pr, const Ready &r, cudaStream_t stream)
{
    if (!r.ok)
        return false;
    const Variant &v = r.v;
    cudaError_t e;
    if (is_library(v))
        e = r.cfg.head_dim_padded == 64
                ? fa_sm90::instance_launch<64, FA_NUM_CONSUMER_WARPGROUPS>(&pr.p, &r.cfg, stream)
                : fa_sm90::instance_launch<128, FA_NUM_CONSUMER_WARPGROUPS>(&pr.p, &r.cfg, stream);
    else if (full_set(v))
        e = fa_sm90::instance_launch<64, 3>(&pr.p, &r.cfg, stream);
    else
        e = launch_narrow(v, &pr.p, &r.cfg, stream, nullptr);
    if (e != cudaSuccess) {
        printf("%s: launch: %s\n", v.name, cudaGetErrorString(e));
        return false;
    }
    return true;
}

/* out and lse of (batch b, q head h) in float, mask.h's rule, from the rounded inputs. */
void reference_head(const Problem &pr, int b, int h, std::vector<float> &out, std::vector<float> &lse)
{
    const Shape &s = pr.s;
    const int D = s.head_dim, hk = h / (s.heads_q / s.heads_kv);
    const fa_mask mask = fa_mask_make(s.seqlen_q, s.seqlen_k, s.wl, s.wr, s.causal);
    const size_t kv_row = (size_t)s.heads_kv * D;
    const float *k = &pr.kf[(size_t)b * s.seqlen_k * kv_row + (size_t)hk * D];
    const float *v = &pr.vf[(size_t)b * s.seqlen_k * kv_row + (size_t)hk * D];
    std::vector<float> logit(std::max(s.seqlen_k, 1));
    for (int i = 0; i < s.seqlen_q; ++i) {
        const fa_key_span span = fa_mask_row(&mask, i);
        lse[i] = reference_row(&pr.qf[(((size_t)b * s.seqlen_q + i) * s.heads_q + h) * D], k, v, kv_row, D, span.lo,
                               span.hi, pr.p.softmax_scale, s.softcap, logit.data(), &out[(size_t)i * D]);
    }
}

struct Result {
    std::vector<uint16_t> out;
    std::vector<float> lse;
};

Result fetch(const Problem &pr, const std::string &what)
{
    Result r;
    r.out.resize(pr.out_elems);
    r.lse.resize(pr.lse_elems);
    finish_or_exit(what.c_str());
    if (pr.out_elems)
        CK(cudaMemcpy(r.out.data(), pr.dout, pr.out_elems * 2, cudaMemcpyDeviceToHost));
    if (pr.lse_elems)
        CK(cudaMemcpy(r.lse.data(), pr.dlse, pr.lse_elems * 4, cudaMemcpyDeviceToHost));
    return r;
}

/* Checks one shape on both shapes of the kernel against the reference; prints a line per shape. */
bool check(const Shape &shape, int sm_count)
{
    Problem pr;
    pr.init(shape, std::hash<std::string>()(describe(shape)));
    const Shape &s = pr.s;
    const int D = s.head_dim;
    std::vector<std::vector<float>> ref_out(s.batch * s.heads_q), ref_lse(s.batch * s.heads_q);
    {
        std::vector<std::thread> pool;
        const int tasks = s.batch * s.heads_q;
        const int workers = std::max(1u, std::min(std::thread::hardware_concurrency(), (unsigned)tasks));
        for (int w = 0; w < workers; ++w)
            pool.emplace_back([&, w] {
                for (int t = w; t < tasks; t += workers) {
                    ref_out[t].assign((size_t)s.seqlen_q * D, 0.f);
                    ref_lse[t].assign(s.seqlen_q, -INFINITY);
                    reference_head(pr, t / s.heads_q, t % s.heads_q, ref_out[t], ref_lse[t]);
                }
            });
        for (auto &th : pool)
            th.join();
    }
    bool all_ok = true;
    std::vector<Variant> variants = {kTwo};
    for (const Variant &v : kVariants)
        if (serves(v, pr))
            variants.push_back(v);
    for (const Variant &v : variants) {
        CK(cudaMemset(pr.dout, 0xff, pr.out_elems * 2)); /* NaN everywhere a row is not written */
        if (!launch(pr, prepare(pr, v, sm_count), 0)) {
            all_ok = false;
            continue;
        }
        const Result r = fetch(pr, describe(s) + " " + v.name);
        double max_ref = 0, max_err = 0, max_lse = 0;
        bool finite = true, empty_ok = true;
        for (int b = 0; b < s.batch; ++b)
            for (int h = 0; h < s.heads_q; ++h) {
                const std::vector<float> &ro = ref_out[b * s.heads_q + h], &rl = ref_lse[b * s.heads_q + h];
                for (int i = 0; i < s.seqlen_q; ++i) {
                    const float lse = r.lse[((size_t)b * s.heads_q + h) * s.seqlen_q + i];
                    const bool empty = rl[i] == -INFINITY;
                    if (empty && lse != -INFINITY)
                        empty_ok = false;
                    if (!empty)
                        max_lse = std::max(max_lse, std::isfinite(lse) ? (double)fabs(lse - rl[i]) : INFINITY);
                    const uint16_t *o = &r.out[(((size_t)b * s.seqlen_q + i) * s.heads_q + h) * pr.out_head_stride()];
                    for (int d = 0; d < D; ++d) {
                        const float x = from_bits(o[d], s.bf16);
                        finite = finite && std::isfinite(x);
                        if (empty && x != 0.f)
                            empty_ok = false;
                        max_ref = std::max(max_ref, (double)fabs(ro[(size_t)i * D + d]));
                        max_err = std::max(max_err, (double)fabs(x - ro[(size_t)i * D + d]));
                    }
                }
            }
        const double rel = max_ref > 0 ? max_err / max_ref : max_err;
        const bool ok = finite && empty_ok && rel <= (s.bf16 ? 2e-2 : 1e-2) && max_lse <= 1e-2;
        printf("%-56s %-10s: %s (out %.2e rel, lse %.2e%s%s)\n", describe(s).c_str(), v.name,
               ok ? "PASS" : "FAIL", rel, max_lse, finite ? "" : ", non-finite", empty_ok ? "" : ", empty rows");
        all_ok = all_ok && ok;
    }
    pr.release();
    return all_ok;
}

std::vector<Shape> check_shapes()
{
    std::vector<Shape> v;
    int flip = 0;
    auto add = [&](int b, int sq, int sk, int d, int causal, int wl = -1, int wr = -1, float softcap = 0.f) {
        v.push_back(Shape{b, sq, sk, 8, 2, d, (flip++ % 2) == 0, causal, wl, wr, softcap});
    };
    for (int causal : {0, 1}) {
        for (int len : {1, 17, 63, 64, 65, 80, 127, 128, 129, 191, 192, 193, 383, 384, 385, 1000})
            for (int d : {64, 128})
                add(2, len, len, d, causal);
        for (int d : {64, 128}) {
            add(1, 113, 203, d, causal);
            add(1, 1, 239, d, causal);
            add(1, 239, 1, d, causal);
            add(1, 4224, 4224, d, causal);
        }
        add(3, 700, 700, 40, causal);
        add(3, 700, 700, 96, causal);
        add(1, 1000, 1000, 64, causal, -1, -1, 30.f);
        for (int d : {64, 128}) {
            add(2, 1500, 1500, d, causal, -1, -1, 30.f);
            add(1, 777, 2100, d, causal, -1, -1, 5.f);
        }
    }
    add(2, 1000, 1000, 64, 0, 100, 0);   /* sliding window */
    add(1, 600, 1000, 64, 0, 64, 32);
    add(1, 300, 200, 64, 0, 0, 0);       /* rows past the keys see none */
    add(1, 2000, 2000, 64, 1, 1024, 0);
    /* More tiles than SMs, many of them with rows but no key (bottom-right causal with
       len_q - len_k >= 192; a one-key window): CTAs walk keyless tiles between tiles with keys,
       which the three consumers' tile-start count must not count (load_tile_start). */
    add(8, 2048, 256, 64, 1);
    add(8, 2000, 600, 64, 0, 0, 0);
    return v;
}

/* Whether a variant's output `mine` is within 2e-2 (bfloat16) or 1e-2 (float16) of two
   consumers' `two`, relative to two's largest value; says so when not. *diff: the largest
   difference. */
bool agrees(const Problem &pr, const Shape &s, const Result &two, const Result &mine, const Variant &v, double *diff)
{
    double peak = 0;
    *diff = 0;
    for (size_t i = 0; i < two.out.size(); ++i) {
        if ((int)(i % pr.out_head_stride()) >= s.head_dim) continue;
        const float a = from_bits(two.out[i], s.bf16), b = from_bits(mine.out[i], s.bf16);
        *diff = std::max(*diff, std::isfinite(b) ? (double)fabs(a - b) : INFINITY);
        peak = std::max(peak, (double)fabs(a));
    }
    if (*diff <= (s.bf16 ? 2e-2 : 1e-2) * peak)
        return true;
    printf("%-40s %-11s outputs differ from two consumers' by %.3e (largest %.3e)\n", describe(s).c_str(),
           v.name, *diff, peak);
    return false;
}

/* The fa suite's configs at head_dim 64 and 128, each variant that serves them timed against
   two consumers. With softcap > 0: bfloat16 only, every config with that softcap, and only the
   two-consumer variants (the three-consumer ones are settled, benches/NOTES.md). */
bool bench(int repeats, int sm_count, float softcap)
{
    cudaStream_t stream;
    CK(cudaStreamCreate(&stream));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    /* median seconds per call of two consumers (med[0]) and of `v` (med[1]), `repeats` rounds interleaved */
    auto time_pair = [&](Problem &pr, const Ready &two, const Ready &mine, double med[2]) {
        CK(cudaEventRecord(e0, stream));
        launch(pr, two, stream);
        CK(cudaEventRecord(e1, stream));
        CK(cudaEventSynchronize(e1));
        float one_ms = 0;
        CK(cudaEventElapsedTime(&one_ms, e0, e1));
        const int calls = std::max(3, (int)(2.0 / std::max(one_ms, 1e-3f)));
        std::vector<double> t[2];
        for (int r = 0; r < repeats; ++r)
            for (int which = 0; which < 2; ++which) {
                const Ready &w = which ? mine : two;
                launch(pr, w, stream); /* warm */
                CK(cudaEventRecord(e0, stream));
                for (int c = 0; c < calls; ++c)
                    launch(pr, w, stream);
                CK(cudaEventRecord(e1, stream));
                CK(cudaEventSynchronize(e1));
                float ms = 0;
                CK(cudaEventElapsedTime(&ms, e0, e1));
                t[which].push_back(ms * 1e-3 / calls);
            }
        for (int w = 0; w < 2; ++w) {
            std::sort(t[w].begin(), t[w].end());
            med[w] = t[w][t[w].size() / 2];
        }
    };
    printf("\n%-40s %-11s %10s %10s %7s %10s\n", "config", "variant", "2 TFLOP/s", "TFLOP/s", "ratio", "max diff");
    std::vector<std::vector<double>> ratios(sizeof kVariants / sizeof kVariants[0]);
    bool ok = true;
    /* with softcap, head_dim 128 (issue 13's softcap target) first */
    for (int d : softcap > 0.f ? std::vector<int>{128, 64} : std::vector<int>{64, 128})
        for (int bf16 : {1, 0})
            for (int causal : {0, 1})
                for (int seqlen : {512, 1024, 2048, 4096, 8192, 16384}) {
                    if (softcap > 0.f && !bf16) continue;
                    const Shape s{16384 / seqlen, seqlen, seqlen, 2048 / d, 2048 / d, d, bf16 != 0, causal, -1, -1, softcap};
                    Problem pr;
                    pr.init(s, 1234 + seqlen + d);
                    const Ready two_ready = prepare(pr, kTwo, sm_count);
                    if (!launch(pr, two_ready, stream)) return false;
                    const Result two = fetch(pr, describe(s) + " " + kTwo.name);
                    for (size_t vi = 0; vi < ratios.size(); ++vi) {
                        const Variant &v = kVariants[vi];
                        if (!serves(v, pr) || (softcap > 0.f && v.consumers != FA_NUM_CONSUMER_WARPGROUPS)) continue;
                        /* correct first: the variant agrees with two consumers before it is timed */
                        const Ready ready = prepare(pr, v, sm_count);
                        if (!launch(pr, ready, stream)) return false;
                        const Result mine = fetch(pr, describe(s) + " " + v.name);
                        double diff;
                        if (!agrees(pr, s, two, mine, v, &diff)) {
                            ok = false;
                            continue;
                        }
                        double med[2];
                        time_pair(pr, two_ready, ready, med);
                        const double flops =
                            4.0 * s.batch * s.heads_q * (double)seqlen * seqlen * d * (causal ? 0.5 : 1.0);
                        ratios[vi].push_back(med[0] / med[1]);
                        printf("%-40s %-11s %10.1f %10.1f %7.3f %10.2e\n", describe(s).c_str(), v.name,
                               flops / med[0] * 1e-12, flops / med[1] * 1e-12, med[0] / med[1], diff);
                    }
                    pr.release();
                }
    for (size_t vi = 0; vi < ratios.size(); ++vi) {
        double log_sum = 0;
        for (double r : ratios[vi])
            log_sum += log(r);
        if (!ratios[vi].empty())
            printf("geomean %s / two consumers over %zu configs: %.4f\n", kVariants[vi].name, ratios[vi].size(),
                   exp(log_sum / ratios[vi].size()));
    }
    CK(cudaStreamDestroy(stream));
    return ok;
}

/* One launch each of two consumers and of hd64 3x128 at bfloat16 head_dim 64, full 16k keys
   and causal 2k (the shapes where three consumers lost least and most per tile), for a
   profiler's stall reasons: `ncu -k regex:fa_sm90 ./fwd_sm90_consumers --profile`. The outputs
   are compared as --bench does. */
bool profile(int sm_count)
{
    cudaStream_t stream;
    CK(cudaStreamCreate(&stream));
    bool ok = true;
    for (const Shape &s : {Shape{1, 16384, 16384, 32, 32, 64, true, 0, -1, -1, 0.f},
                           Shape{8, 2048, 2048, 32, 32, 64, true, 1, -1, -1, 0.f}}) {
        Problem pr;
        pr.init(s, 1234);
        const Variant &three = kVariants[0];
        if (!launch(pr, prepare(pr, kTwo, sm_count), stream)) return false;
        const Result two = fetch(pr, describe(s) + " " + kTwo.name);
        if (!launch(pr, prepare(pr, three, sm_count), stream)) return false;
        const Result mine = fetch(pr, describe(s) + " " + three.name);
        double diff;
        ok = agrees(pr, s, two, mine, three, &diff) && ok;
        printf("%-40s profiled: %s then %s (max diff %.2e)\n", describe(s).c_str(), kTwo.name, three.name, diff);
        pr.release();
    }
    CK(cudaStreamDestroy(stream));
    return ok;
}

} /* namespace */

int main(int argc, char **argv)
{
    setvbuf(stdout, nullptr, _IOLBF, 0);
    const int sm_count = device_sm_count(9);
    if (argc > 1 && strcmp(argv[1], "--profile") == 0)
        return profile(sm_count) ? 0 : 1;
    const bool softcap_bench = argc > 1 && strcmp(argv[1], "--bench-softcap") == 0;
    const bool do_bench = softcap_bench || (argc > 1 && strcmp(argv[1], "--bench") == 0);
    const int repeats = do_bench && argc > 2 ? std::max(1, atoi(argv[2])) : 7;
    int failed = 0, ran = 0;
    for (const Shape &s : check_shapes()) {
        ++ran;
        failed += check(s, sm_count) ? 0 : 1;
    }
    printf("%d shapes, %d failed: %s\n", ran, failed, failed ? "FAIL" : "PASS");
    if (failed)
        return 1;
    if (do_bench && !bench(repeats, sm_count, softcap_bench ? 30.f : 0.f))
        return 1;
    return 0;
}
