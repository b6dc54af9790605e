"""Where an eager attention_with_kvcache call spends its time: the kernels, or the host.

For each decode shape (one query row, bf16, hd128, every entry at the cache's length) it prints
  eager    us per call, CUDA events around `--calls` back-to-back calls (median of --repeats)
  graph    the same calls captured in a CUDA graph and replayed: the kernels alone
  sdpa     SDPA's default dispatch on the same dense cache, eager
and the plan (kernel names and grids). With --profile, the CUDA runtime calls of one eager call
and their host time, from torch.profiler: launches, the workspace's cudaMallocAsync and
cudaFreeAsync, attribute queries. With --host, where the host time of one call goes (wall clock
over calls issued without a synchronisation, so the GPU's speed does not enter): the whole call,
the C op inside it, torch.empty of the output, SDPA's call, and the wrapper's Python functions
by cProfile.

    python dev/kvcache_host_overhead.py
    python dev/kvcache_host_overhead.py --shapes 1:8192,64:8192 --splits 0,1 --profile

Measured numbers go to benches/NOTES.md with the command that made them.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="1:8192,1:131072,64:8192",
                   help="batch:cache_keys pairs, comma-separated")
    p.add_argument("--gqa", default="32:8", help="heads_q:heads_kv")
    p.add_argument("--splits", default="0", help="num_splits values, comma-separated")
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--host", action="store_true")
    return p.parse_args(argv)


def per_call_us(torch, fn, calls, repeats):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3 / calls)
    return sorted(samples)[repeats // 2]


def graph_us(torch, fn, calls, repeats):
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    return per_call_us(torch, graph.replay, 1, repeats) / calls


def runtime_calls(torch, fn):
    """(name, calls, host us) of the CUDA runtime calls one eager call makes."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = [(e.key, e.count, e.cpu_time_total) for e in prof.key_averages()
            if e.key.startswith("cuda")]
    return sorted(rows, key=lambda r: -r[2])


def host_us(torch, fn, calls=200):
    """Host microseconds per call of fn, issued back to back: fewer calls than the launch queue
    holds, so the host never waits for the GPU."""
    import time

    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) * 1e6 / calls)
        torch.cuda.synchronize()
    return sorted(samples)[2]


class TimedOp:
    """_C with its op `name` timed: host seconds spent inside the C call."""

    def __init__(self, c_module, name):
        self._c, self._name, self.seconds = c_module, name, 0.0

    def __getattr__(self, attr):
        value = getattr(self._c, attr)
        if attr != self._name:
            return value

        def timed(*args, **kwargs):
            import time

            start = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return timed


def host_breakdown(torch, fa, call, sdpa, shape_of_out):
    """Prints where one eager call's host time goes."""
    import cProfile
    import pstats

    from flashattn_c import _api

    whole = host_us(torch, call)
    timed = TimedOp(_api._C, "kvcache")
    _api._C = timed
    try:
        host_us(torch, call)
        calls = 20 + 5 * 200
        c_op = timed.seconds * 1e6 / calls
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(2000):
            call()
        profiler.disable()
    finally:
        _api._C = timed._c
    torch.cuda.synchronize()
    empty = host_us(torch, lambda: torch.empty(shape_of_out, dtype=torch.bfloat16,
                                               device="cuda"))
    print(f"    host: call {whole:.1f} us = C op {c_op:.1f} + Python {whole - c_op:.1f} "
          f"(torch.empty of out alone {empty:.1f}); SDPA call {host_us(torch, sdpa):.1f} us")
    stats = pstats.Stats(profiler).sort_stats("tottime")
    for (file, line, fn), (_, ncalls, tottime, _, _) in sorted(
            stats.stats.items(), key=lambda kv: -kv[1][2])[:12]:
        print(f"    {tottime / 2000 * 1e6:6.2f} us/call own  {fn} ({os.path.basename(file)}:{line})"
              f" x{ncalls // 2000}")


def main(argv=None):
    args = parse_args(argv)
    import torch
    import torch.nn.functional as F

    import flashattn_c as fa

    hq, hkv = (int(x) for x in args.gqa.split(":"))
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, GQA {hq}:{hkv}, hd128 bf16")
    for shape in args.shapes.split(","):
        batch, keys = (int(x) for x in shape.split(":"))
        q = torch.randn(batch, 1, hq, 128, device="cuda", dtype=torch.bfloat16)
        k_cache = torch.randn(batch, keys, hkv, 128, device="cuda", dtype=torch.bfloat16)
        v_cache = torch.randn_like(k_cache)
        lengths = torch.full((batch,), keys, device="cuda", dtype=torch.int32)
        qt, kt, vt = q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2)
        sdpa = per_call_us(torch, lambda: F.scaled_dot_product_attention(qt, kt, vt,
                                                                         enable_gqa=True),
                           args.calls, args.repeats)
        mb = 2 * k_cache.numel() * 2 / 1e6
        for splits in (int(x) for x in args.splits.split(",")):
            def call():
                return fa.attention_with_kvcache(q, k_cache, v_cache, cache_seqlens=lengths,
                                                 num_splits=splits)
            eager = per_call_us(torch, call, args.calls, args.repeats)
            plan = " + ".join("%s%s" % (l["kernel"], tuple(l["grid"]))
                              for l in fa.last_launch()["launches"])
            replay = graph_us(torch, call, args.calls, args.repeats)
            print(f"B={batch} keys={keys} ({mb:.0f} MB) splits={splits}: eager {eager:.1f} us, "
                  f"graph {replay:.1f} us ({mb / replay * 1e3:.0f} GB/s), sdpa eager {sdpa:.1f} us; "
                  f"{plan}")
            if args.host:
                host_breakdown(torch, fa, call, lambda: F.scaled_dot_product_attention(
                    qt, kt, vt, enable_gqa=True), q.shape)
            if args.profile:
                for name, count, host_us in runtime_calls(torch, call):
                    print(f"    {name:40s} x{count:<3d} {host_us:8.1f} us host")


if __name__ == "__main__":
    main()
