"""smoke_test.py -- the go/no-go before any benchmark (about 30 s on a GPU).

Checks, one PASS/FAIL line each, non-zero exit on any FAIL:
  1. import     flashattn_c imports and reports its build
  2. config     the compiled launch contract is 384 threads / 12 warps / 3 warpgroups, and a kernel
                family is built for this GPU's architecture
  3. launch     one call: last_launch() and the FLASHATTN_C_LOG_LAUNCH line show block=(384,1,1)
                and the expected kernel for this GPU (sm90 family on sm_90 when built)
  4. correct    one small and one medium shape against a float64 reference (FA3 tolerance rule)
  5. backward   autograd through attention(): the log shows the three launches of the backward's
                plan (preprocess, main, postprocess), each block=(384,1,1), and dq, dk, dv
                against float64
  6. speed      a few timed iterations vs PyTorch SDPA's flash backend (FlashAttention-2) on one
                medium shape; FAIL below --floor (default 0.5x)

    python smoke_test.py [--floor 0.5] [--kernel sm80|sm90]
Without a GPU it says so (and why: no driver, an old driver, no device) and exits 2; with a GPU
but without PyTorch it says that and exits 2.
"""
import argparse
import glob
import os
import statistics
import sys
import tempfile

RESULTS = []
HERE = os.path.dirname(os.path.abspath(__file__))


def prefer_installed_package():
    """This script's folder is first on sys.path. When it is a source checkout whose extension
    was never built in place (pip install . builds into site-packages), the unbuilt source
    package would shadow the installed one: drop the folder from sys.path, so the installed
    copy is tested. A checkout built in place (pip install -e ., build_ext --inplace) stays."""
    package = os.path.join(HERE, "flashattn_c")
    if os.path.isdir(package) and not glob.glob(os.path.join(package, "_C.*")):
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]


def report(name, ok, detail):
    RESULTS.append(ok)
    print(f"{'PASS' if ok else 'FAIL'}  {name:8s} {detail}", flush=True)
    return ok


def capture_stderr(fn):
    """Runs fn() with the process's fd 2 redirected to a file (the C launch log writes there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            result = fn()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return result, tmp.read()


def expected_family(fa, cc, forced):
    if forced:
        return forced
    return "sm90" if cc == (9, 0) and fa.build_info()["families"].get("sm90") else "sm80"


def check_correct(fa, torch, family, shape, causal):
    batch, seqlen, heads, head_dim = shape
    q, k, v = (torch.randn(batch, seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    out = torch.full_like(q, float("nan"))
    fa.attention(q, k, v, causal=causal, out=out, kernel=family)
    scale = head_dim ** -0.5
    i = torch.arange(seqlen, device="cuda")
    mask = (i[None, :] <= i[:, None]) if causal else torch.ones(seqlen, seqlen, dtype=torch.bool,
                                                                   device="cuda")

    def naive(q, k, v, upcast):
        s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
        s = s.masked_fill(~mask, float("-inf"))
        p = torch.softmax(s if upcast else s.float(), -1)
        return torch.einsum("bhij,bjhd->bihd", p if upcast else p.to(v.dtype), v)

    ref = naive(q.double(), k.double(), v.double(), True)
    peer = naive(q, k, v, False)
    ref32 = ref.float()
    tol = 2 * (peer.double() - ref).abs().max().item() + \
        2 * ((ref32 + 0.3 - 0.3) - ref32).abs().max().item()
    err = (out.double() - ref).abs().max().item()
    ok = not torch.isnan(out).any().item() and err <= tol
    return report("correct", ok, f"B={batch} S={seqlen} H={heads} D={head_dim} causal={causal}: "
                                 f"max err {err:.2e} <= tol {tol:.2e}" if ok else
                  f"B={batch} S={seqlen} H={heads} D={head_dim}: max err {err:.2e} > tol {tol:.2e}"
                  " or NaN")


def check_backward(fa, torch):
    batch, seqlen, heads, head_dim = 1, 300, 4, 128
    q, k, v, dout = (torch.randn(batch, seqlen, heads, head_dim, device="cuda",
                                 dtype=torch.bfloat16) for _ in range(4))
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    os.environ["FLASHATTN_C_LOG_LAUNCH"] = "1"
    try:
        _, log = capture_stderr(lambda: (fa.attention(*leaves, causal=True).backward(dout),
                                         torch.cuda.synchronize()))
    except Exception as exc:
        return report("backward", False, f"{type(exc).__name__}: {exc}")
    finally:
        os.environ.pop("FLASHATTN_C_LOG_LAUNCH", None)
    # Autograd runs the backward on its own thread, so this thread's last_launch() shows the
    # forward; the log has every launch, and the backward's plan says what it should be.
    plan = fa.launch_config(batch=batch, seqlen_q=seqlen, seqlen_k=seqlen, heads_q=heads,
                            heads_kv=heads, head_dim=head_dim, dtype="bf16", causal=True,
                            backward=True)
    launches = plan["launches"]
    lines = [l for l in log.splitlines() if l.startswith("[flashattn_c] bwd_")]
    shaped = (len(launches) == 3 == len(lines) and all(l["block"] == (384, 1, 1) for l in launches)
              and all(l.split()[1] == p["kernel"] and "block=(384,1,1)" in l
                      for l, p in zip(lines, launches)))
    scale = head_dim ** -0.5
    i = torch.arange(seqlen, device="cuda")
    mask = i[None, :] <= i[:, None]

    def grads(upcast):
        xs = [x.detach().double() if upcast else x.detach().clone() for x in (q, k, v)]
        for x in xs:
            x.requires_grad_(True)
        s = torch.einsum("bihd,bjhd->bhij", xs[0], xs[1]) * scale
        s = s.masked_fill(~mask, float("-inf"))
        p = torch.softmax(s if upcast else s.float(), -1)
        o = torch.einsum("bhij,bjhd->bihd", p if upcast else p.to(v.dtype), xs[2])
        return torch.autograd.grad(o, xs, dout.to(o.dtype))

    ref, peer = grads(True), grads(False)
    worst = []
    for name, ours, r, pe in zip(("dq", "dk", "dv"), (x.grad for x in leaves), ref, peer):
        r32 = r.float()
        tol = 2 * (pe.double() - r).abs().max().item() + \
            2 * ((r32 + 0.3 - 0.3) - r32).abs().max().item() + 1e-5  # tests/reference.py GRAD_ATOL
        err = (ours.double() - r).abs().max().item()
        worst.append((name, err, tol, bool(torch.isnan(ours).any())))
    ok = shaped and all(err <= tol and not nan for _, err, tol, nan in worst)
    names = " + ".join(l["kernel"] for l in launches)
    errs = ", ".join(f"{n} {e:.2e} <= {t:.2e}" if e <= t else f"{n} {e:.2e} > {t:.2e}"
                     for n, e, t, _ in worst)
    return report("backward", ok, f"{names}, each block=(384,1,1): {errs}" if shaped else
                  f"expected the plan's 3 launches {[l['kernel'] for l in launches]} with block "
                  f"(384,1,1) in the log, got {lines}")


def time_ms(torch, fn, iters):
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def load_package():
    """The import check: (flashattn_c, its build_info()), or None when it fails."""
    prefer_installed_package()
    try:
        import flashattn_c as fa
        info = fa.build_info()
    except Exception as exc:  # a broken build is the finding here
        report("import", False, f"{type(exc).__name__}: {exc}")
        return None
    report("import", True, f"flashattn_c {fa.__version__} from {os.path.dirname(fa.__file__)}, "
                           f"families {info['families']}")
    return fa, info


def torch_on_a_gpu(fa):
    """torch, when there is a GPU that both flashattn_c and torch can use; else None after
    saying which is missing. The GPU first: on a machine without one, that is the reason to
    give, not a missing torch."""
    try:
        fa.launch_config(batch=1, seqlen_q=1, seqlen_k=1, heads_q=1, heads_kv=1, head_dim=64,
                         dtype="float16")
    except fa.CudaError as exc:
        reason = str(exc).split("; pass arch=")[0]  # the hint is launch_config's, not ours
        print(f"FAIL  no CUDA GPU: the smoke test checks GPU kernels and needs one ({reason})")
        return None
    except Exception:  # a GPU this build has no kernel for: the config check says so
        pass
    try:
        import torch
    except ImportError:
        print("FAIL  no PyTorch: the smoke test needs torch for references and the SDPA baseline "
              "(pip install -e \".[test]\" installs it)")
        return None
    if not torch.cuda.is_available():
        print(f"FAIL  no CUDA GPU for PyTorch {torch.__version__}: flashattn_c sees a GPU but "
              "this torch build cannot use it (a CPU-only torch, or one built for a newer driver)")
        return None
    return torch


def check_config(info, torch, family):
    cc = torch.cuda.get_device_capability()
    contract = (info["threads_per_block"], info["warps_per_block"], info["warpgroups"])
    archs = info["families"].get(family) or []
    runs_here = bool(archs) and (cc == (9, 0) if family == "sm90" else cc[0] >= 8)
    report("config", contract == (384, 12, 3) and runs_here,
           f"threads/warps/warpgroups {contract}, family {family} built for {archs}, "
           f"GPU {torch.cuda.get_device_name()} sm_{cc[0]}{cc[1]}")


def check_launch(fa, torch, kernel, family):
    """One call with the launch log on: one line, block=(384,1,1), the expected family, and the
    kernel last_launch() names. False when the call itself raised."""
    q = torch.randn(2, 512, 8, 128, device="cuda", dtype=torch.bfloat16)
    os.environ["FLASHATTN_C_LOG_LAUNCH"] = "1"
    try:
        _, log = capture_stderr(lambda: (fa.attention(q, q, q, kernel=kernel),
                                         torch.cuda.synchronize()))
    except Exception as exc:
        report("launch", False, f"{type(exc).__name__}: {exc}")
        return False
    finally:
        os.environ.pop("FLASHATTN_C_LOG_LAUNCH", None)
    last = fa.last_launch() or {}
    lines = [l for l in log.splitlines() if l.startswith("[flashattn_c] ")]
    ok = (last.get("block") == (384, 1, 1) and last.get("family") == family and len(lines) == 1
          and "block=(384,1,1)" in lines[0] and last.get("kernel", "?") in lines[0])
    report("launch", ok, lines[0] if lines else f"no launch log line; last_launch={last}")
    return True


def check_speed(fa, torch, kernel, floor):
    """Ours against SDPA's flash backend on one medium shape, interleaved, median of 5."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    batch, seqlen, heads, head_dim = 4, 2048, 16, 128
    q, k, v = (torch.randn(batch, seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))

    def ours():
        fa.attention(q, k, v, kernel=kernel)

    def flash():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(qt, kt, vt)

    for fn in (ours, flash, ours, flash):
        fn()
    torch.cuda.synchronize()
    t_ours, t_flash = [], []
    for _ in range(5):
        t_ours.append(time_ms(torch, ours, 5))
        t_flash.append(time_ms(torch, flash, 5))
    ms_ours, ms_flash = statistics.median(t_ours), statistics.median(t_flash)
    timed = (fa.last_launch() or {}).get("kernel", "?")
    flops = 4 * batch * heads * seqlen * seqlen * head_dim
    ratio = ms_flash / ms_ours
    report("speed", ratio >= floor,
           f"B={batch} S={seqlen} H={heads} D={head_dim} bf16: ours {ms_ours:.3f} ms "
           f"({flops / ms_ours / 1e9:.0f} TFLOP/s, {timed}), "
           f"SDPA flash {ms_flash:.3f} ms ({flops / ms_flash / 1e9:.0f} TFLOP/s): "
           f"{ratio:.2f}x (floor {floor}x)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--floor", type=float, default=0.5,
                    help="minimum speed ratio vs SDPA's flash backend (default 0.5)")
    ap.add_argument("--kernel", choices=["sm80", "sm90"], default=None,
                    help="force a kernel family (default: what attention() picks)")
    args = ap.parse_args()

    loaded = load_package()
    if loaded is None:
        return 1
    fa, info = loaded
    torch = torch_on_a_gpu(fa)
    if torch is None:
        return 2
    family = expected_family(fa, torch.cuda.get_device_capability(), args.kernel)
    check_config(info, torch, family)
    if not check_launch(fa, torch, args.kernel, family):
        return 1
    check_correct(fa, torch, args.kernel, (1, 77, 2, 64), causal=True)
    check_correct(fa, torch, args.kernel, (2, 1024, 8, 128), causal=False)
    check_backward(fa, torch)
    check_speed(fa, torch, args.kernel, args.floor)
    failed = RESULTS.count(False)
    print(f"smoke test: {len(RESULTS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
