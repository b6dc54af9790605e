"""bench_serving: the serving ops of flashattn_c against PyTorch's SDPA on one GPU.

Suites (--suite decode,varlen,chunked; all three by default):

decode   attention_with_kvcache on one new query row per sequence (seqlen_q 1), every sequence
         at the cache's length, over the product of --dtype (bf16, fp16), --head-dim (64, 128),
         --gqa (32:8, 64:8, 8:1), --batches (1, 8, 64, 256) and --caches (1k, 8k, 32k, 128k
         keys), skipping caches past --max-cache-gb: the serving issue's suite, 192
         configurations before the skip, each printed as it completes. Dense and paged
         (--page-size, 64 by default). Baselines see the dense cache as (B, Hkv, S, D) and call
         SDPA with enable_gqa=True under each backend (default dispatch, cudnn, flash).
         Reported: microseconds per call and GB/s of K and V read (2 * B * S * Hkv * D *
         itemsize bytes per call), twice: eager calls back to back (host time included where
         it exceeds the GPU's), and replayed from a CUDA graph of the same calls (GPU time, as
         a serving stack that captures its decode step sees it; graph_us, graph_gbs; empty for
         a baseline that cannot be captured).
varlen   attention_varlen on ragged causal batches whose lengths follow a long-tailed
         (log-normal) distribution, 16k tokens, 16 heads, head_dim 128, against SDPA on the
         zero-padded batch (a boolean mask of causal and key padding) and on nested jagged
         tensors (is_causal), and against our own dense call on equal lengths with the same
         tokens. Reported: useful TFLOP/s, sum over sequences of 4 H L^2 D / 2.
chunked  chunked prefill: attention_with_kvcache appending a chunk of 512 or 2048 new keys
         (and as many causal query rows) to a cache of 8k or 32k keys, against attention() on
         the same queries and the full keys (what the call attends to), GQA 32:8, head_dim 128,
         batch 1; and the same call without the append (ours_kvcache_read: the keys already in
         the cache), which splits the gap between the append and the attention over a cache.
         Reported: microseconds and TFLOP/s of the visible (bottom-right causal) pairs, eager,
         and microseconds replayed from a CUDA graph (graph_us: GPU time with no host in it;
         an eager sample also holds time outside the kernels, 5-6 us a call for attention()
         at --calls 10 on an H100, benches/NOTES.md).

Correctness comes first: every config's output is checked against a float32 reference by the
project's rule (max|ours - ref| <= 2 max|peer - ref| + 2 max|(ref + 0.3 - 0.3) - ref|, peer =
SDPA default), and a config that fails is reported as failed, not timed.

Timing: CUDA events around `calls` back-to-back calls, `repeats` times, impls interleaved;
the median and its 95% interval (bench_lib.median_ci). Decode also replays a CUDA graph of
`calls` calls `repeats` times per impl (median). No L2 flush: a decode cache of 4 MB stays
in L2 between calls, as it would between a model's layers only if the cache were that small.

    python benches/bench_serving.py --save-csv --plot
    python benches/bench_serving.py --suite decode --batches 1 --caches 8192 --repeats 20
"""
import argparse
import csv
import datetime
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench_lib as bl  # noqa: E402

FIELDS = ("suite", "impl", "status", "dtype", "B", "Hq", "Hkv", "Sq", "Sk", "D", "layout",
          "page_size", "lengths", "median_us", "ci95_lo_us", "ci95_hi_us", "gbs", "graph_us",
          "graph_gbs", "tflops",
          "max_abs_err", "tol", "kernels", "gpu", "driver", "torch", "git_commit", "date")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="decode,varlen,chunked")
    p.add_argument("--dtype", default="bf16,fp16", help="bf16 and/or fp16, comma-separated")
    p.add_argument("--batches", default="1,8,64,256")
    p.add_argument("--caches", default="1024,8192,32768,131072")
    p.add_argument("--gqa", default="32:8,64:8,8:1",
                   help="heads_q:heads_kv pairs of the decode suite")
    p.add_argument("--head-dim", default="64,128", help="the decode suite's head dims")
    p.add_argument("--page-size", type=int, default=64)
    p.add_argument("--max-cache-gb", type=float, default=40.0,
                   help="skip decode configs whose K+V cache exceeds this")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-csv", action="store_true")
    p.add_argument("--plot", action="store_true")
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--git-commit", default=None)
    args = p.parse_args(argv)
    unknown = set(args.suite.split(",")) - {"decode", "varlen", "chunked"}
    if unknown:
        p.error(f"--suite: decode, varlen and/or chunked, got {sorted(unknown)}")
    args.dtypes = args.dtype.split(",")
    if not args.dtypes or any(d not in ("bf16", "fp16") for d in args.dtypes):
        p.error(f"--dtype: bf16 and/or fp16, comma-separated, got {args.dtype!r}")
    args.head_dims = [int(x) for x in args.head_dim.split(",")]
    return args


def time_impls(torch, impls, repeats, calls):
    """{name: [ms per call, ...]}: impls interleaved, rotating which goes first."""
    names = list(impls)
    for fn in impls.values():
        fn()
    torch.cuda.synchronize()
    samples = {n: [] for n in names}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            fn = impls[n]
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            samples[n].append(start.elapsed_time(end) / calls)
    return samples


def graph_times(torch, fn, repeats, calls):
    """ms per call of fn replayed from a CUDA graph of `calls` calls, `repeats` replays; None
    when fn cannot be captured (a baseline whose kernel synchronises or allocates)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except Exception:  # noqa: BLE001 -- a capture failure of any kind means "not capturable"
        torch.cuda.synchronize()
        return None
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(repeats):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / calls)
    return samples


def summarize(samples_ms):
    lo, hi, _ = bl.median_ci(samples_ms)
    return 1e3 * bl.median(samples_ms), 1e3 * lo, 1e3 * hi


def rule(torch, ours, peer, ref):
    ours_err = float((ours.float() - ref).abs().max())
    peer_err = float((peer.float() - ref).abs().max())
    rounding = float(((ref + 0.3) - 0.3 - ref).abs().max())
    nonfinite = not bool(torch.isfinite(ours.float()).all())
    passed, tol = bl.correctness_verdict(ours_err, peer_err, rounding, nonfinite)
    return passed, ours_err, tol


def launched_kernels(fa):
    """'append+decode+combine'-style names of the launches of this thread's last op."""
    last = fa.last_launch()
    if not last:
        return ""
    return "+".join(l["kernel"] for l in last.get("launches") or [last])


def check_impls(torch, fa, impls, peer, ref, to_ref_layout=lambda name, out: out):
    """Calls each impl once and judges it by the rule: ({name: (passed, err, tol)},
    {name: kernels column}). An impl that raises (a baseline may refuse a shape) is removed
    from impls and recorded with passed None and the error as its kernels column, so the row
    says why it has no time."""
    checked, kernels = {}, {}
    for name in list(impls):
        try:
            checked[name] = rule(torch, to_ref_layout(name, impls[name]()), peer, ref)
            kernels[name] = launched_kernels(fa) if name.startswith("ours") else ""
        except Exception as exc:  # noqa: BLE001 -- recorded in the row, never dropped
            checked[name] = (None, float("nan"), float("nan"))
            kernels[name] = "%s: %s" % (type(exc).__name__, str(exc)[:120])
            del impls[name]
    return checked, kernels


def judged_row(row, verdict, samples, rate):
    """row with its verdict: status error or failed-correctness (no time: a wrong kernel is
    never timed), or ok with the median, its 95% interval and rate(median_us), a dict of the
    suite's throughput columns. True when ok."""
    passed, err, tol = verdict
    row.update(max_abs_err=err, tol=tol)
    if passed is None:
        row["status"] = "error"
    elif not passed:
        row["status"] = "failed-correctness"
    else:
        med, lo, hi = summarize(samples)
        row.update(status="ok", median_us=med, ci95_lo_us=lo, ci95_hi_us=hi, **rate(med))
    return bool(passed)


# --------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------

def decode_configs(args):
    """(dtype name, head_dim, batch, heads_q, heads_kv, cache keys) of the decode suite."""
    for name in args.dtypes:
        for d in args.head_dims:
            for pair in args.gqa.split(","):
                hq, hkv = (int(x) for x in pair.split(":"))
                for b in (int(x) for x in args.batches.split(",")):
                    for s in (int(x) for x in args.caches.split(",")):
                        yield name, d, b, hq, hkv, s


def decode_reference(F, torch, qt, kt, vt):
    """float32 SDPA, one sequence at a time: the GQA expansion of a whole float32 batch would
    need Hq/Hkv times the cache (128 GB at batch 64, 128k keys)."""
    return torch.cat([F.scaled_dot_product_attention(qt[b:b + 1].float(), kt[b:b + 1].float(),
                                                     vt[b:b + 1].float(), enable_gqa=True)
                      for b in range(qt.shape[0])]).transpose(1, 2)


def run_decode(torch, fa, args, env, writer, rows):
    for config in decode_configs(args):
        run_decode_config(torch, fa, args, env, writer, rows, *config)
        torch.cuda.empty_cache()  # the config's tensors went with its call


def run_decode_config(torch, fa, args, env, writer, rows, dtype_name, D, B, Hq, Hkv, S):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    page = args.page_size
    backends = {"sdpa_default": None, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
                "sdpa_flash": SDPBackend.FLASH_ATTENTION}
    dt = getattr(torch, bl.DTYPE_NAMES[dtype_name])
    kv_bytes = 2 * B * S * Hkv * D * 2
    if kv_bytes > args.max_cache_gb * 1e9:
        return
    g = torch.Generator(device="cuda").manual_seed(args.seed)
    q = torch.randn(B, 1, Hq, D, device="cuda", dtype=dt, generator=g)
    kc = torch.randn(B, S, Hkv, D, device="cuda", dtype=dt, generator=g)
    vc = torch.randn(B, S, Hkv, D, device="cuda", dtype=dt, generator=g)
    lens = torch.full((B,), S, device="cuda", dtype=torch.int32)
    pages_per = S // page
    perm = torch.randperm(B * pages_per, device="cuda", generator=g).to(torch.int32)
    block_table = perm.view(B, pages_per)
    kp = torch.empty(B * pages_per, page, Hkv, D, device="cuda", dtype=dt)
    vp = torch.empty_like(kp)
    kp[block_table.flatten().long()] = kc.reshape(B * pages_per, page, Hkv, D)
    vp[block_table.flatten().long()] = vc.reshape(B * pages_per, page, Hkv, D)
    qt, kt, vt = q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2)

    def sdpa(backend):
        if backend is None:
            return lambda: F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True)
        def call():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True)
        return call

    impls = {
        "ours_dense": lambda: fa.attention_with_kvcache(q, kc, vc, cache_seqlens=lens),
        "ours_paged": lambda: fa.attention_with_kvcache(q, kp, vp, cache_seqlens=lens,
                                                        block_table=block_table),
    }
    for name, backend in backends.items():
        impls[name] = sdpa(backend)
    ref = decode_reference(F, torch, qt, kt, vt)
    peer = impls["sdpa_default"]().transpose(1, 2)
    checked, kernels = check_impls(
        torch, fa, impls, peer, ref,
        lambda name, out: out if name.startswith("ours") else out.transpose(1, 2))
    timed = {n: f for n, f in impls.items() if checked[n][0]}
    samples = time_impls(torch, timed, args.repeats, args.calls) if timed else {}
    graphed = {n: graph_times(torch, f, args.repeats, args.calls) for n, f in timed.items()}
    for name, verdict in checked.items():
        row = dict(env, suite="decode", impl=name, dtype=dtype_name, B=B, Hq=Hq, Hkv=Hkv,
                   Sq=1, Sk=S, D=D, layout="paged" if name == "ours_paged" else "dense",
                   page_size=page if name == "ours_paged" else "", lengths="uniform",
                   kernels=kernels[name])
        gbs = lambda us: {"gbs": kv_bytes / us / 1e3}  # noqa: E731
        if judged_row(row, verdict, samples.get(name), gbs) and graphed[name]:
            g_us = 1e3 * bl.median(graphed[name])
            row.update(graph_us=g_us, graph_gbs=gbs(g_us)["gbs"])
        rows.append(row)
        writer(row)


# --------------------------------------------------------------------------------------------
# varlen
# --------------------------------------------------------------------------------------------

def ragged_lengths(rng_seed, total, longest, sigma):
    import random
    rng = random.Random(rng_seed)
    lens = []
    while sum(lens) < total:
        lens.append(max(1, min(longest, int(rng.lognormvariate(math.log(longest / 8), sigma)))))
    lens[-1] -= sum(lens) - total
    return [l for l in lens if l > 0]


def run_varlen(torch, fa, args, env, writer, rows):
    import torch.nn.functional as F
    H, D, total = 16, 128, 16384
    cases = [("ragged_s1", ragged_lengths(args.seed, total, 8192, 1.0)),
             ("ragged_s2", ragged_lengths(args.seed + 1, total, 8192, 1.5)),
             ("equal_2k", [2048] * 8)]
    for dtype_name, (tag, lens) in ((d, c) for d in args.dtypes for c in cases):
        dt = getattr(torch, bl.DTYPE_NAMES[dtype_name])
        B, T, L = len(lens), sum(lens), max(lens)
        g = torch.Generator(device="cuda").manual_seed(args.seed)
        q = torch.randn(T, H, D, device="cuda", dtype=dt, generator=g)
        k = torch.randn(T, H, D, device="cuda", dtype=dt, generator=g)
        v = torch.randn(T, H, D, device="cuda", dtype=dt, generator=g)
        cu = torch.tensor([0] + list(itertools_accumulate(lens)), device="cuda", dtype=torch.int32)
        useful = sum(4.0 * H * l * l * D / 2 for l in lens)
        pad = torch.zeros(B, L, H, D, device="cuda", dtype=dt)
        qp, kp, vp = pad.clone(), pad.clone(), pad.clone()
        valid = torch.zeros(B, L, dtype=torch.bool, device="cuda")
        for b, l in enumerate(lens):
            s = int(cu[b])
            qp[b, :l], kp[b, :l], vp[b, :l] = q[s:s + l], k[s:s + l], v[s:s + l]
            valid[b, :l] = True
        causal = torch.ones(L, L, dtype=torch.bool, device="cuda").tril()
        mask = (causal[None] & valid[:, None, :])[:, None]
        qpt, kpt, vpt = qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2)
        impls = {
            "ours_varlen": lambda: fa.attention_varlen(q, k, v, cu, cu, L, L, causal=True),
            "sdpa_padded": lambda: F.scaled_dot_product_attention(qpt, kpt, vpt, attn_mask=mask),
        }
        try:
            offsets = cu.long()
            nq = torch.nested.nested_tensor_from_jagged(q, offsets).transpose(1, 2)
            nk = torch.nested.nested_tensor_from_jagged(k, offsets).transpose(1, 2)
            nv = torch.nested.nested_tensor_from_jagged(v, offsets).transpose(1, 2)
            impls["sdpa_nested"] = lambda: F.scaled_dot_product_attention(nq, nk, nv, is_causal=True)
        except Exception as exc:
            print("# nested jagged SDPA unavailable: %s" % exc)
        if len(set(lens)) == 1:
            qd, kd, vd = (x.view(B, lens[0], H, D) for x in (q, k, v))
            impls["ours_dense"] = lambda: fa.attention(qd, kd, vd, causal=True)
        # Reference: float32 per sequence; the peer is SDPA default per sequence.
        ref = torch.empty(T, H, D, device="cuda", dtype=torch.float32)
        peer = torch.empty(T, H, D, device="cuda", dtype=dt)
        for b, l in enumerate(lens):
            s = int(cu[b])
            sl = [x[s:s + l].transpose(0, 1)[None] for x in (q, k, v)]
            ref[s:s + l] = F.scaled_dot_product_attention(
                *[x.float() for x in sl], is_causal=True)[0].transpose(0, 1)
            peer[s:s + l] = F.scaled_dot_product_attention(*sl, is_causal=True)[0].transpose(0, 1)
        as_packed = {"sdpa_padded": lambda out: out.transpose(1, 2)[valid],
                     "sdpa_nested": lambda out: out.transpose(1, 2).values(),
                     "ours_dense": lambda out: out.reshape(T, H, D)}
        checked, kernels = check_impls(
            torch, fa, impls, peer, ref,
            lambda name, out: as_packed.get(name, lambda o: o)(out))
        timed = {n: f for n, f in impls.items() if checked[n][0]}
        samples = time_impls(torch, timed, args.repeats, max(1, args.calls // 4)) if timed else {}
        for name, verdict in checked.items():
            row = dict(env, suite="varlen", impl=name, dtype=dtype_name, B=B, Hq=H, Hkv=H, Sq=L,
                       Sk=L, D=D, layout=tag, lengths=" ".join(str(l) for l in lens)[:400],
                       kernels=kernels[name])
            judged_row(row, verdict, samples.get(name), lambda us: {"tflops": useful / us / 1e6})
            rows.append(row)
            writer(row)

# --------------------------------------------------------------------------------------------
# chunked prefill
# --------------------------------------------------------------------------------------------

def run_chunked(torch, fa, args, env, writer, rows):
    for dtype_name in args.dtypes:
        for S in (8192, 32768):
            for chunk in (512, 2048):
                run_chunked_config(torch, fa, args, env, writer, rows, dtype_name, S, chunk)
                torch.cuda.empty_cache()  # the config's tensors went with its call


def run_chunked_config(torch, fa, args, env, writer, rows, dtype_name, S, chunk):
    import torch.nn.functional as F
    B, Hq, Hkv, D = 1, 32, 8, 128
    dt = getattr(torch, bl.DTYPE_NAMES[dtype_name])
    g = torch.Generator(device="cuda").manual_seed(args.seed)
    q = torch.randn(B, chunk, Hq, D, device="cuda", dtype=dt, generator=g)
    kc = torch.randn(B, S, Hkv, D, device="cuda", dtype=dt, generator=g)
    vc = torch.randn(B, S, Hkv, D, device="cuda", dtype=dt, generator=g)
    # the chunk's own keys: appended where they already are, so every call is alike
    kn, vn = kc[:, S - chunk:].clone(), vc[:, S - chunk:].clone()
    impls = {
        "ours_kvcache": lambda: fa.attention_with_kvcache(
            q, kc, vc, kn, vn, cache_seqlens=S - chunk, causal=True),
        "ours_kvcache_read": lambda: fa.attention_with_kvcache(
            q, kc, vc, cache_seqlens=S, causal=True),
        "ours_attention": lambda: fa.attention(q, kc, vc, causal=True),
    }
    rows_i = torch.arange(chunk, device="cuda")[:, None]
    visible = torch.arange(S, device="cuda")[None] <= rows_i + (S - chunk)
    qt, kt, vt = q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2)
    ref = F.scaled_dot_product_attention(qt.float(), kt.float(), vt.float(),
                                         attn_mask=visible,
                                         enable_gqa=True).transpose(1, 2)
    peer = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=visible,
                                          enable_gqa=True).transpose(1, 2)
    pairs = int(visible.sum())
    checked, kernels = check_impls(torch, fa, impls, peer, ref)
    timed = {n: f for n, f in impls.items() if checked[n][0]}
    samples = time_impls(torch, timed, args.repeats, args.calls) if timed else {}
    graphed = {n: graph_times(torch, f, args.repeats, args.calls) for n, f in timed.items()}
    flops = 4.0 * B * Hq * D * pairs
    for name, verdict in checked.items():
        row = dict(env, suite="chunked", impl=name, dtype=dtype_name, B=B, Hq=Hq,
                   Hkv=Hkv, Sq=chunk, Sk=S, D=D, layout="dense", page_size="",
                   lengths="uniform", kernels=kernels[name])
        if (judged_row(row, verdict, samples.get(name),
                       lambda us: {"tflops": flops / us / 1e6}) and graphed[name]):
            row.update(graph_us=1e3 * bl.median(graphed[name]))
        rows.append(row)
        writer(row)


def itertools_accumulate(values):
    total = 0
    for v in values:
        total += v
        yield total


# --------------------------------------------------------------------------------------------

def plot(rows, stem):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dec = [r for r in rows if r["suite"] == "decode" and r["status"] == "ok"]
    if dec:
        key = lambda r: (r["dtype"], r["D"], r["Hq"], r["Hkv"], r["B"])
        groups = sorted({key(r) for r in dec})
        cols = min(6, len(groups))
        rows_n = (len(groups) + cols - 1) // cols
        fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.4 * rows_n), squeeze=False)
        for ax in axes.flat[len(groups):]:
            ax.set_visible(False)
        for ax, group in zip(axes.flat, groups):
            for i, impl in enumerate(sorted({r["impl"] for r in dec})):
                mine = [r for r in dec if r["impl"] == impl and key(r) == group]
                for field, style, label in (("graph_gbs", "-", impl + " (graph)"),
                                            ("gbs", ":", impl + " (eager)")):
                    pts = sorted((r["Sk"], r[field]) for r in mine if r.get(field))
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o",
                                markersize=3, color="C%d" % i, label=label)
            ax.set_xscale("log", base=2)
            ax.set_title("%s hd%d %d:%d B=%d" % group, fontsize=9)
            ax.set_xlabel("cache keys")
            ax.set_ylabel("GB/s of K+V")
        axes.flat[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(stem + "_decode.png", dpi=110)
    var = [r for r in rows if r["suite"] == "varlen" and r["status"] == "ok"]
    if var:
        fig, ax = plt.subplots(figsize=(8, 3.6))
        cases = sorted({(r["dtype"], r["layout"]) for r in var})
        impls = sorted({r["impl"] for r in var})
        width = 0.8 / max(1, len(impls))
        for i, impl in enumerate(impls):
            ys = [next((r["tflops"] for r in var
                        if r["impl"] == impl and (r["dtype"], r["layout"]) == c), 0) for c in cases]
            ax.bar([j + i * width for j in range(len(cases))], ys, width, label=impl)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))],
                      ["%s\n%s" % c for c in cases], fontsize=7)
        ax.set_ylabel("useful TFLOP/s")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(stem + "_varlen.png", dpi=110)


def main(argv=None):
    args = parse_args(argv)
    import torch
    sys.path.insert(0, REPO)
    import flashattn_c as fa
    props = torch.cuda.get_device_properties(0)
    now = datetime.datetime.now()
    commit = args.git_commit or os.popen("git -C %s rev-parse --short HEAD 2>/dev/null" % REPO).read().strip()
    smi = os.popen("nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null")
    env = {"gpu": props.name, "driver": (smi.read().split("\n") or ["unknown"])[0] or "unknown",
           "torch": torch.__version__, "git_commit": commit or "unknown",
           "date": now.isoformat(timespec="seconds")}
    print("# flashattn_c serving benchmark: %s" % env)
    rows = []
    out = None
    stem = None
    if args.save_csv or args.plot:
        os.makedirs(args.out_dir, exist_ok=True)
        stem_name = "serving_%s_%s" % (bl.gpu_short_name(props.name), now.strftime("%Y-%m-%d"))
        stem = bl.unique_path(args.out_dir, stem_name, ".csv")[:-4]
    if args.save_csv:
        out = open(stem + ".csv", "w", newline="")
        w = csv.DictWriter(out, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()

    def writer(row):
        keys = ("suite", "impl", "status", "dtype", "D", "B", "Hq", "Hkv", "Sk", "layout",
                "median_us", "gbs", "graph_us", "graph_gbs", "tflops", "kernels")
        print(" ".join("%s=%s" % (k, ("%.4g" % row[k]) if isinstance(row.get(k), float) else row.get(k, ""))
                       for k in keys), flush=True)
        if out:
            w.writerow(row)
            out.flush()

    runners = {"decode": run_decode, "varlen": run_varlen, "chunked": run_chunked}
    for suite in args.suite.split(","):  # in the order asked
        runners[suite](torch, fa, args, env, writer, rows)
    if out:
        out.close()
        print("# wrote %s.csv" % stem)
    if args.plot and stem:
        plot(rows, stem)
        print("# wrote %s_*.png" % stem)


if __name__ == "__main__":
    main()
