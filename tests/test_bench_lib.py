"""CPU tests of benches/bench_lib.py: suites, FLOPs, statistics, the correctness rule, the
timing plan, the CSV schema, the summary maths and the plot grouping. No torch, no GPU.

    python -m pytest tests/test_bench_lib.py -q
"""
import csv
import math
import os
import random
import subprocess
import sys

import pytest

BENCHES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benches")
sys.path.insert(0, BENCHES)
import bench_lib as bl  # noqa: E402


# ---- suites ---------------------------------------------------------------------------------

def test_fa_suite_tokens_and_hidden():
    configs = bl.suite_configs("fa")
    assert len(configs) == 3 * 6 * 2 * 2          # head dims x seqlens x causal x dtype
    for c in configs:
        assert c.B * c.Sq == 16384
        assert c.Hq * c.D == 2048
        assert c.Hq == c.Hkv and c.Sq == c.Sk
    assert sorted({c.D for c in configs}) == [64, 128, 256]
    assert sorted({c.Sq for c in configs}) == [512, 1024, 2048, 4096, 8192, 16384]
    assert {(c.dtype, c.causal) for c in configs} == {("bf16", False), ("bf16", True),
                                                       ("fp16", False), ("fp16", True)}


def test_seed_suite_shapes():
    configs = bl.suite_configs("seed", dtypes=["bf16"], causals=[False])
    shapes = [(c.B, c.Hq, c.Hkv, c.Sq, c.Sk, c.D) for c in configs]
    assert shapes == [(1, 1, 1, s, s, 64) for s in (32, 64, 128, 256, 512)] + [
        (4, 8, 8, 128, 128, 64)]


def test_llm_suite_is_gqa_with_dividing_ratios():
    configs = bl.suite_configs("llm")
    assert configs
    ratios = {(c.Hq, c.Hkv) for c in configs}
    assert {(32, 8), (64, 8), (28, 4)} <= ratios
    for c in configs:
        assert c.Hq % c.Hkv == 0 and c.Hq > c.Hkv
        assert c.Sq == c.Sk
        assert c.B * c.Sq == 16384
        assert 1024 <= c.Sq <= 16384


def test_every_suite_has_equal_seqlens_so_causal_conventions_agree():
    for suite in bl.SUITES:
        for c in bl.suite_configs(suite):
            assert c.Sq == c.Sk, c


def test_suite_filters_and_limit():
    got = bl.suite_configs("fa", dtypes=["fp16"], causals=[True], head_dims=[128],
                           seqlens=[4096])
    assert [(c.dtype, c.causal, c.D, c.Sq, c.B, c.Hq) for c in got] == [
        ("fp16", True, 128, 4096, 4, 16)]
    assert len(bl.suite_configs("fa", limit=5)) == 5
    with pytest.raises(ValueError):
        bl.suite_configs("nope")
    with pytest.raises(ValueError):
        bl.suite_configs("fa", dtypes=["fp32"])


def test_parse_choice_list():
    assert bl.parse_choice_list("both", ("bf16", "fp16")) == ["bf16", "fp16"]
    assert bl.parse_choice_list("fa,llm", bl.SUITES) == ["fa", "llm"]
    assert bl.parse_choice_list("all", bl.SUITES) == list(bl.SUITES)
    with pytest.raises(ValueError):
        bl.parse_choice_list("fa,xyz", bl.SUITES)


# ---- FLOPs ----------------------------------------------------------------------------------

def test_flops_formula_and_causal_half():
    assert bl.attention_flops(2, 3, 5, 7, 11, False) == 4 * 2 * 3 * 5 * 7 * 11
    assert bl.attention_flops(2, 3, 5, 7, 11, True) == 4 * 2 * 3 * 5 * 7 * 11 / 2
    c = bl.Config("fa", "bf16", 1, 16, 16, 16384, 16384, 128, False)
    assert c.flops() == 4 * 16 * 16384 ** 2 * 128
    # 1 ms for 1e12 flops is 1000 TFLOP/s
    assert bl.tflops(1e12, 1.0) == pytest.approx(1000.0)
    assert bl.tflops(1e12, 0.0) is None


def test_tflops_matches_anchor_row():
    # anchors/sdpa_h200.csv: bf16 B=1 H=16 S=16384 D=128 full, cudnn 3.53882 ms -> 621.4
    flops = bl.attention_flops(1, 16, 16384, 16384, 128, False)
    assert bl.tflops(flops, 3.53882) == pytest.approx(621.4, abs=0.1)


# ---- statistics -----------------------------------------------------------------------------

def test_median():
    assert bl.median([3, 1, 2]) == 2
    assert bl.median([4, 1, 3, 2]) == 2.5
    with pytest.raises(ValueError):
        bl.median([])


def test_median_ci_order_statistics_n30():
    # Ranks 10 and 21 of 30 (binomial coverage 0.957), the textbook table value.
    samples = list(range(1, 31))
    random.Random(0).shuffle(samples)
    lo, hi, coverage = bl.median_ci(samples)
    assert (lo, hi) == (10, 21)
    assert coverage == pytest.approx(1 - 2 * sum(math.comb(30, i) for i in range(10)) / 2 ** 30)
    assert 0.95 <= coverage < 0.96


def test_median_ci_small_n_falls_back_to_range():
    lo, hi, coverage = bl.median_ci([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (lo, hi) == (1.0, 5.0)
    assert coverage == pytest.approx(1 - 2 / 32)
    lo, hi, coverage = bl.median_ci([2.0, 1.0, 3.0, 5.0, 4.0, 6.0])     # n=6: [min, max] is 96.9%
    assert (lo, hi) == (1.0, 6.0) and coverage >= 0.95


def test_median_ci_contains_median_and_is_narrower_with_more_samples():
    rng = random.Random(1)
    xs = [rng.gauss(1.0, 0.1) for _ in range(200)]
    lo, hi, _ = bl.median_ci(xs)
    assert lo <= bl.median(xs) <= hi
    lo30, hi30, _ = bl.median_ci(xs[:30])
    assert hi - lo < hi30 - lo30


def test_median_ci_empirical_coverage():
    # The true median of U(0,1) is 0.5; the interval must hold it about 95.7% of the time.
    rng = random.Random(2)
    trials, hits = 3000, 0
    for _ in range(trials):
        lo, hi, _ = bl.median_ci([rng.random() for _ in range(30)])
        hits += lo <= 0.5 <= hi
    assert 0.94 <= hits / trials <= 0.975


def test_geomean():
    assert bl.geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert bl.geomean([1.5]) == pytest.approx(1.5)
    assert bl.geomean([]) is None
    assert bl.geomean([None, 4.0, None, 1.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        bl.geomean([1.0, 0.0])


# ---- correctness rule -----------------------------------------------------------------------

def test_correctness_verdict_scalars():
    ok, tol = bl.correctness_verdict(1e-3, 1e-3, 0.0)
    assert ok and tol == pytest.approx(2e-3)
    ok, tol = bl.correctness_verdict(2.1e-3, 1e-3, 0.0)
    assert not ok
    ok, _ = bl.correctness_verdict(2.1e-3, 1e-3, 1e-4)        # rounding term widens it
    assert ok
    assert not bl.correctness_verdict(float("nan"), 1.0, 1.0)[0]
    assert not bl.correctness_verdict(0.0, 1.0, 1.0, nonfinite=True)[0]


def _synthetic(seed=0):
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((2, 64, 4, 32))
    peer = (ref.astype(np.float16)).astype(np.float64)      # rounding error of fp16
    return np, rng, ref, peer


def test_check_arrays_passes_for_output_as_good_as_peer():
    np, rng, ref, peer = _synthetic()
    ours = ref + rng.uniform(-1, 1, ref.shape) * np.abs(peer - ref).max() * 1.5
    passed, err, tol = bl.check_arrays(ours, peer, ref)
    assert passed and err <= tol


def test_check_arrays_fails_for_bad_output():
    np, rng, ref, peer = _synthetic(1)
    ours = ref.copy()
    ours[1, 3, 2, 5] += 10 * np.abs(peer - ref).max()
    passed, err, tol = bl.check_arrays(ours, peer, ref)
    assert not passed and err > tol


def test_check_arrays_fails_on_nan_and_unwritten_poison():
    np, rng, ref, peer = _synthetic(2)
    ours = ref.copy()
    ours[0, 0, 0, 0] = np.nan
    assert not bl.check_arrays(ours, peer, ref)[0]
    ours = ref.copy()
    ours[0, 0, 0, 0] = np.inf
    assert not bl.check_arrays(ours, peer, ref)[0]


def test_rounding_term_matches_definition():
    np, rng, ref, peer = _synthetic(3)
    ref32 = ref.astype(np.float32)
    _, _, rounding, _ = bl.array_errors(ref32, ref32, ref32)
    expected = float(np.max(np.abs((ref32 + np.float32(0.3)) - np.float32(0.3) - ref32)))
    assert rounding == pytest.approx(expected)
    assert rounding > 0                          # float32 does lose bits in +0.3 -0.3


def test_check_arrays_shape_mismatch():
    np, rng, ref, peer = _synthetic(4)
    with pytest.raises(ValueError):
        bl.check_arrays(ref[:1], peer, ref)


def test_reference_chunks_cover_everything_within_budget():
    for (B, Hq, Sq, Sk, budget) in [(2, 3, 17, 19, 100), (1, 32, 16384, 16384, 1 << 26),
                                    (32, 32, 512, 512, 1 << 26), (1, 1, 5, 1000, 10)]:
        chunks = bl.reference_chunks(B, Hq, Sq, Sk, budget)
        covered = set()
        for (b, h0, h1, r0, r1) in chunks:
            assert h1 > h0 and r1 > r0
            assert (h1 - h0) * (r1 - r0) * Sk <= max(budget, Sk)
            if B * Hq * Sq <= 20000:
                for h in range(h0, h1):
                    for r in range(r0, r1):
                        assert (b, h, r) not in covered
                        covered.add((b, h, r))
        if B * Hq * Sq <= 20000:
            assert len(covered) == B * Hq * Sq
        else:
            assert sum((h1 - h0) * (r1 - r0) for (_, h0, h1, r0, r1) in chunks) == B * Hq * Sq


# ---- timing plan ----------------------------------------------------------------------------

def test_calls_per_rep():
    assert bl.calls_per_rep(5.0) == 1
    assert bl.calls_per_rep(0.01) == 30
    assert bl.calls_per_rep(0.001) == 32            # capped
    assert bl.calls_per_rep(0.0) == 32


def test_repeats_within_budget():
    assert bl.repeats_within_budget(30, 10.0, 5.0) == 30        # 300 ms of 5 s
    assert bl.repeats_within_budget(30, 250.0, 5.0) == 20       # 20 rounds fit
    assert bl.repeats_within_budget(30, 5000.0, 5.0) == 10      # floor
    assert bl.repeats_within_budget(5, 5000.0, 5.0) == 5        # never above requested


def test_hold_covers_host_enqueue():
    assert bl.hold_ms(0.02, 30) > 0.02 * 30


# ---- which families run ---------------------------------------------------------------------

BUILT = {"sm80": [80, 90], "sm90": [90]}


def test_resolve_families_default_per_device():
    assert bl.resolve_families(None, BUILT, (9, 0)) == (["sm90", "sm80"], [])
    assert bl.resolve_families(None, BUILT, (8, 9)) == (["sm80"], [])
    assert bl.resolve_families(None, BUILT, (8, 0)) == (["sm80"], [])
    assert bl.resolve_families(None, {"sm80": [80, 90]}, (9, 0)) == (["sm80"], [])
    fams, errors = bl.resolve_families(None, BUILT, (7, 5))
    assert fams == [] and errors


def test_resolve_families_explicit():
    assert bl.resolve_families(["sm80", "sm90"], BUILT, (9, 0)) == (["sm80", "sm90"], [])
    fams, errors = bl.resolve_families(["sm90"], BUILT, (8, 6))
    assert fams == [] and "9.0" in errors[0]
    fams, errors = bl.resolve_families(["sm90"], {"sm80": [80]}, (9, 0))
    assert fams == [] and errors
    assert bl.resolve_families(["auto"], BUILT, (8, 0)) == (["auto"], [])


# ---- result files and CSV -------------------------------------------------------------------

def test_gpu_short_name_and_stem():
    assert bl.gpu_short_name("NVIDIA H100 80GB HBM3") == "H100"
    assert bl.gpu_short_name("NVIDIA H200") == "H200"
    assert bl.gpu_short_name("NVIDIA A100-SXM4-80GB") == "A100"
    assert bl.gpu_short_name("NVIDIA GeForce RTX 4090") == "RTX4090"
    assert bl.result_stem("NVIDIA H100 PCIe", "2026-11-21") == "fa_H100_2026-11-21"
    assert bl.result_stem("NVIDIA H100", "2026-11-21", "latency") == "fa_latency_H100_2026-11-21"


def test_unique_path(tmp_path):
    first = bl.unique_path(str(tmp_path), "fa_X", ".csv")
    open(first, "w").close()
    second = bl.unique_path(str(tmp_path), "fa_X", ".csv")
    assert first != second and second.endswith("fa_X_2.csv")


REQUIRED = ["gpu", "sm_count", "driver", "cuda", "torch", "cudnn", "git_commit", "date", "suite",
            "dtype", "B", "Hq", "Hkv", "Sq", "Sk", "D", "causal", "impl", "status", "median_ms",
            "ci95_lo_ms", "ci95_hi_ms", "tflops", "speedup_vs_sdpa_default",
            "speedup_vs_sdpa_flash", "speedup_vs_sdpa_cudnn", "speedup_vs_sdpa_efficient",
            "max_abs_err", "tol", "kernel", "block", "grid", "smem_bytes"]

ENV = {"gpu": "NVIDIA H100 80GB HBM3", "sm_count": 132, "driver": "580.0", "cuda": "13.0",
       "torch": "2.11.0", "cudnn": "91900", "git_commit": "abc", "date": "2026-11-21T10:00:00"}


def _config_rows(cfg, times, mode="throughput"):
    """Rows of one config from {impl: median ms or a status string}."""
    rows = []
    for impl, t in times.items():
        if isinstance(t, str):
            rows.append(bl.make_row(ENV, cfg, impl, mode, status=t))
        else:
            rows.append(bl.make_row(ENV, cfg, impl, mode, status="ok", median_ms=t,
                                    ci95_lo_ms=t * 0.99, ci95_hi_ms=t * 1.01,
                                    tflops=bl.tflops(cfg.flops(), t)))
    return bl.fill_speedups(rows)


def test_csv_schema_one_row_per_config_and_impl(tmp_path):
    assert list(bl.CSV_FIELDS[:len(REQUIRED)]) == REQUIRED
    configs = bl.suite_configs("fa", dtypes=["bf16"], causals=[False], head_dims=[128])[:3]
    impls = ["ours_sm90", "ours_sm80"] + list(bl.BASELINES)
    rows = []
    for cfg in configs:
        rows += _config_rows(cfg, {i: 1.0 + 0.1 * n for n, i in enumerate(impls)})
    rows[0].update(kernel="fwd_sm90_hd128_bf16", block=(384, 1, 1), grid=(132, 1, 1),
                   smem_bytes=180000)
    path = str(tmp_path / "out.csv")
    bl.write_csv(path, rows)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        body = list(reader)
    assert header == list(bl.CSV_FIELDS)
    assert len(body) == len(configs) * len(impls)
    keys = {(r[header.index("Sq")], r[header.index("impl")]) for r in body}
    assert len(keys) == len(body)                          # one row per (config, impl)
    assert body[0][header.index("block")] == "384x1x1"
    back = bl.read_csv(path)
    assert back[0]["Sq"] == configs[0].Sq and back[0]["smem_bytes"] == 180000
    assert back[0]["median_ms"] == pytest.approx(1.0)
    assert back[1]["kernel"] is None                       # empty for the others
    with pytest.raises(KeyError):
        bl.make_row(ENV, configs[0], "ours_sm90", "throughput", not_a_field=1)


def test_fill_speedups():
    cfg = bl.Config("fa", "bf16", 1, 16, 16, 16384, 16384, 128, False)
    rows = _config_rows(cfg, {"ours_sm90": 2.0, "sdpa_default": 3.0, "sdpa_flash": 5.0,
                              "sdpa_cudnn": 2.0, "sdpa_efficient": "skipped: no"})
    ours = rows[0]
    assert ours["speedup_vs_sdpa_default"] == pytest.approx(1.5)
    assert ours["speedup_vs_sdpa_flash"] == pytest.approx(2.5)
    assert ours["speedup_vs_sdpa_cudnn"] == pytest.approx(1.0)
    assert ours["speedup_vs_sdpa_efficient"] is None
    assert rows[1]["speedup_vs_sdpa_default"] == pytest.approx(1.0)
    failed = _config_rows(cfg, {"ours_sm90": "failed-correctness", "sdpa_default": 3.0})
    assert failed[0]["speedup_vs_sdpa_default"] is None


# ---- summary --------------------------------------------------------------------------------

def test_summary_geomean_and_worst():
    cfgs = bl.suite_configs("fa", dtypes=["bf16"], causals=[False], head_dims=[64])[:3]
    rows = []
    rows += _config_rows(cfgs[0], {"ours_sm90": 1.0, "sdpa_default": 2.0, "sdpa_flash": 3.0})
    rows += _config_rows(cfgs[1], {"ours_sm90": 1.0, "sdpa_default": 0.5, "sdpa_flash": 3.0})
    rows += _config_rows(cfgs[2], {"ours_sm90": "failed-correctness", "sdpa_default": 1.0,
                                   "sdpa_flash": 1.0})
    s = bl.summarize(rows)[("throughput", "fa")]["ours_sm90"]
    assert s["geomean_vs_sdpa_default"] == pytest.approx(1.0)      # sqrt(2 * 0.5)
    assert s["geomean_vs_sdpa_flash"] == pytest.approx(3.0)
    assert s["n_vs_sdpa_default"] == 2
    assert s["worst_speedup"] == pytest.approx(0.5)
    assert s["worst_label"] == cfgs[1].label()
    assert (s["ok"], s["total"]) == (2, 3)
    text = bl.format_summary(rows)
    assert "geomean 1.00x vs sdpa_default" in text and "3.00x vs sdpa_flash" in text
    assert cfgs[1].label() in text and "FAIL" in text


def test_summary_separates_suites_and_modes():
    fa = bl.suite_configs("fa", dtypes=["bf16"], causals=[False])[0]
    seed = bl.suite_configs("seed", dtypes=["bf16"], causals=[False])[0]
    rows = (_config_rows(fa, {"ours_sm80": 1.0, "sdpa_default": 2.0})
            + _config_rows(seed, {"ours_sm80": 1.0, "sdpa_default": 4.0})
            + _config_rows(seed, {"ours_sm80": 1.0, "sdpa_default": 8.0}, mode="latency"))
    s = bl.summarize(rows)
    assert s[("throughput", "fa")]["ours_sm80"]["geomean_vs_sdpa_default"] == pytest.approx(2.0)
    assert s[("throughput", "seed")]["ours_sm80"]["geomean_vs_sdpa_default"] == pytest.approx(4.0)
    assert s[("latency", "seed")]["ours_sm80"]["geomean_vs_sdpa_default"] == pytest.approx(8.0)
    assert "us" in bl.format_summary(rows)


# ---- progress -------------------------------------------------------------------------------

def test_progress_eta_scales_with_work():
    now = [0.0]
    p = bl.Progress([1.0, 1.0, 2.0], clock=lambda: now[0])
    assert p.eta_s(0) is None
    now[0] = 10.0
    assert p.eta_s(1) == pytest.approx(30.0)           # 1 of 4 units took 10 s
    assert "config 2/3" in p.line(1, "x")


# ---- plots ----------------------------------------------------------------------------------

def _plot_rows():
    rows = []
    for cfg in bl.suite_configs("fa", dtypes=["bf16"], head_dims=[64, 128], seqlens=[512, 1024]):
        rows += _config_rows(cfg, {"ours_sm90": 1.0, "sdpa_default": 1.2,
                                   "sdpa_efficient": "skipped: x"})
    return rows


def test_plot_panels_grouping():
    panels, impls = bl.plot_panels(_plot_rows(), "fa")
    assert impls == ["ours_sm90", "sdpa_default"]
    assert len(panels) == 4                          # head_dim {64,128} x causal {0,1}
    titles = [t for t, _ in panels]
    assert "head dim 64, non-causal" in titles and "head dim 128, causal" in titles
    for _, data in panels:
        assert sorted(data) == [512, 1024]
        assert set(data[512]) == {"ours_sm90", "sdpa_default"}


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = bl.plot_suite(_plot_rows(), "fa", str(tmp_path / "p.png"), "NVIDIA H100")
    assert path and os.path.getsize(path) > 1000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ---- the CLI without a GPU ------------------------------------------------------------------

SCRIPT = os.path.join(BENCHES, "bench_attention.py")


def test_cli_dry_run_lists_configs():
    res = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--suite", "fa", "--dtype", "bf16",
                          "--causal", "0"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("18 configs")


def test_cli_report_reprints_a_csv(tmp_path):
    path = str(tmp_path / "r.csv")
    bl.write_csv(path, _plot_rows())
    res = subprocess.run([sys.executable, SCRIPT, "--report", path], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "geomean 1.20x vs sdpa_default" in res.stdout


def test_cli_without_torch_exits_nonzero_with_message():
    """Where torch cannot be imported (blocked in the child: sys.modules["torch"] = None makes
    `import torch` raise ImportError, installed or not), the benchmark says so and fails."""
    child = ("import runpy, sys; sys.modules['torch'] = None; "
             f"sys.argv = [{SCRIPT!r}, '--suite', 'seed']; runpy.run_path({SCRIPT!r}, run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "PyTorch is not importable" in res.stderr


# ---- window, softcap and sinks (the masks suite and the mask baselines) ----------------------

def _visible_pairs_brute(Sq, Sk, causal, window):
    left, right = window
    if causal:
        right = 0
    n = 0
    for i in range(Sq):
        for j in range(Sk):
            d = i + Sk - Sq
            if (left < 0 or j >= d - left) and (right < 0 or j <= d + right):
                n += 1
    return n


@pytest.mark.parametrize("Sq, Sk", [(1, 1), (7, 7), (13, 5), (5, 13), (40, 40)])
@pytest.mark.parametrize("window, causal", [((-1, -1), True), ((0, 0), False), ((3, 0), True),
                                            ((2, 5), False), ((-1, 4), False), ((6, -1), False),
                                            ((100, 100), False), ((4, 9), True)])
def test_visible_pairs_is_exact(Sq, Sk, window, causal):
    assert bl.visible_pairs(Sq, Sk, causal, window) == _visible_pairs_brute(Sq, Sk, causal, window)


def test_window_flops_count_visible_pairs_only():
    # hd128 window 4096 causal at 16k: each row sees min(i, 4096) + 1 keys.
    cfg = bl.Config("masks", "bf16", 1, 16, 16, 16384, 16384, 128, True, 4096, 0)
    pairs = sum(min(i, 4096) + 1 for i in range(16384))
    assert cfg.flops() == 4 * 16 * 128 * pairs
    assert cfg.has_window() and cfg.has_extras()
    # no window: the causal-half convention of the other suites, unchanged
    plain = cfg.plain()
    assert not plain.has_extras() and plain.flops() == 4 * 16 * 16384 * 16384 * 128 / 2
    # a window wider than the sequence counts every visible pair (causal: exactly S(S+1)/2)
    wide = bl.Config("masks", "bf16", 1, 1, 1, 100, 100, 64, True, 1000, 0)
    assert wide.flops() == 4 * 64 * 100 * 101 // 2
    # softcap or sinks alone keep the dense count
    cap = bl.Config("masks", "bf16", 1, 16, 16, 4096, 4096, 128, True, softcap=30.0)
    assert cap.has_extras() and not cap.has_window() and cap.flops() == cap.plain().flops()
    # causal with only a right side is plain causal
    assert not bl.Config("x", "bf16", 1, 1, 1, 8, 8, 64, True, -1, 5).has_window()


def test_masks_suite_has_the_issue_shapes():
    configs = bl.suite_configs("masks", dtypes=["bf16"])
    got = {(c.Hq, c.Sq, c.D, c.causal, c.window_left, c.window_right, c.softcap, c.sinks)
           for c in configs}
    assert (16, 16384, 128, True, 4096, 0, 0.0, False) in got      # hd128 window 4096
    assert (32, 16384, 64, True, 1024, 0, 0.0, False) in got       # hd64 window 1024
    assert (16, 16384, 128, True, -1, -1, 30.0, False) in got      # softcap hd128 causal 16k
    assert any(c.D == 64 and c.softcap > 0 for c in configs)        # softcap hd64
    assert any(c.sinks for c in configs) and any(c.sinks and c.has_window() for c in configs)
    for c in configs:
        assert c.has_extras() and c.Sq == c.Sk and c.Hq % c.Hkv == 0
    assert all(c.causal for c in bl.suite_configs("masks", causals=[True]))
    assert not any(c.causal for c in bl.suite_configs("masks", causals=[False]))
    assert len(bl.suite_configs("masks", head_dims=[64])) < len(bl.suite_configs("masks"))


def test_config_labels_and_flags():
    cfg = bl.Config("fa", "bf16", 2, 8, 8, 4096, 4096, 64, True)
    assert "w=" not in cfg.label() and "cap" not in cfg.label()
    x = cfg.with_extras((1024, 7), 30.0, True)
    assert (x.window_left, x.window_right, x.softcap, x.sinks) == (1024, 7, 30.0, True)
    assert "w=(1024,0)" in x.label() and "cap=30" in x.label() and "sinks" in x.label()
    assert cfg.with_extras(None, None, None) == cfg


def _mask_rows():
    cfg = bl.Config("masks", "bf16", 1, 16, 16, 16384, 16384, 128, True, 4096, 0)
    rows = []
    for impl, t, flops in (("ours_sm90", 1.0, cfg.flops()), ("flex", 2.0, cfg.flops()),
                           ("plain_sm90", 2.5, cfg.plain().flops())):
        rows.append(bl.make_row(ENV, cfg, impl, "throughput", status="ok", median_ms=t,
                                tflops=bl.tflops(flops, t), flops=flops))
    return cfg, bl.fill_speedups(rows)


def test_fill_speedups_flex_and_plain():
    cfg, rows = _mask_rows()
    ours = rows[0]
    assert ours["speedup_vs_flex"] == pytest.approx(2.0)
    assert ours["speedup_vs_sdpa_default"] is None
    # ours does cfg.flops() in 1 ms, plain cfg.plain().flops() in 2.5 ms
    expect = (cfg.flops() / 1.0) / (cfg.plain().flops() / 2.5)
    assert ours["tflops_ratio_vs_plain"] == pytest.approx(expect)
    assert rows[1]["tflops_ratio_vs_plain"] is None          # only ours get the ratio


def test_summary_of_mask_rows_reports_flex_and_plain(tmp_path):
    cfg, rows = _mask_rows()
    s = bl.summarize(rows)[("throughput", "masks")]["ours_sm90"]
    assert s["geomean_vs_flex"] == pytest.approx(2.0) and s["n_vs_flex"] == 1
    assert s["n_vs_plain"] == 1
    text = bl.format_summary(rows)
    assert "geomean 2.00x vs flex" in text and "of plain" in text
    assert "sm90/flex" in text and "sm90/plain" in text and "sm90/default" not in text
    assert cfg.label() in text
    # the mask columns survive a CSV round trip, and the config key keeps configs apart
    path = str(tmp_path / "m.csv")
    bl.write_csv(path, rows + _config_rows(cfg.plain(), {"ours_sm90": 2.5}))
    back = bl.read_csv(path)
    assert back[0]["window_left"] == 4096 and back[0]["window_right"] == 0
    assert back[0]["sinks"] == 0 and back[0]["softcap"] == 0.0
    assert back[0]["flops"] == pytest.approx(cfg.flops())
    assert bl.row_config(back[0]) == cfg
    assert len(bl.group_configs(back)) == 2


def test_csv_without_mask_columns_still_reads(tmp_path):
    """CSVs written before the mask columns: rows get no window, labels as before."""
    cfg = bl.suite_configs("fa", dtypes=["bf16"], causals=[True])[0]
    rows = _config_rows(cfg, {"ours_sm90": 1.0, "sdpa_default": 1.5})
    old_fields = [f for f in bl.CSV_FIELDS if f not in ("window_left", "window_right", "softcap",
                                                         "sinks", "flops", "speedup_vs_flex",
                                                         "tflops_ratio_vs_plain")]
    path = str(tmp_path / "old.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old_fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: bl._fmt(k, r.get(k)) for k in old_fields})
    back = bl.read_csv(path)
    assert bl.row_label(back[0]) == cfg.label()
    assert "geomean 1.50x vs sdpa_default" in bl.format_summary(back)


def test_plot_masks_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    _, rows = _mask_rows()
    path = bl.plot_masks(rows, str(tmp_path / "m.png"), "NVIDIA H200")
    assert path and os.path.getsize(path) > 1000


def test_cli_dry_run_masks_suite_and_flags():
    res = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--suite", "masks", "--dtype",
                          "bf16"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("%d configs" % len(bl.suite_configs("masks", ["bf16"])))
    assert "w=(4096,0)" in res.stdout and "cap=30" in res.stdout and "sinks" in res.stdout
    res = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--suite", "fa", "--dtype", "bf16",
                          "--causal", "1", "--head-dims", "64", "--window", "1024,0",
                          "--softcap", "50", "--sinks"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    lines = [l for l in res.stdout.splitlines() if "throughput" in l]
    assert len(lines) == 6 and all("w=(1024,0) cap=50 sinks" in l for l in lines)
    bad = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--window", "5"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--window" in bad.stderr


# ---- --report of a file that is not there (issue 16, item 13) -------------------------------

def test_cli_report_missing_file_is_a_clear_error(tmp_path):
    path = str(tmp_path / "no_such.csv")
    res = subprocess.run([sys.executable, SCRIPT, "--report", path], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert path in res.stderr and "No such file or directory" in res.stderr


def test_cli_report_of_a_file_that_is_not_a_benchmark_csv(tmp_path):
    for name, text in (("empty.csv", ""), ("other.csv", "a,b\n1,2\n")):
        path = str(tmp_path / name)
        with open(path, "w") as f:
            f.write(text)
        res = subprocess.run([sys.executable, SCRIPT, "--report", path], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 2, (name, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr and path in res.stderr


# ---- passes: backward and forward + backward -------------------------------------------------

def test_pass_flops_factors():
    assert bl.PASSES == ("fwd", "bwd", "fwd_bwd")
    assert bl.pass_flops_factor("fwd") == 1.0
    assert bl.pass_flops_factor("bwd") == 2.5
    assert bl.pass_flops_factor("fwd_bwd") == 3.5
    with pytest.raises(ValueError):
        bl.pass_flops_factor("backward")
    dense = bl.Config("fa", "bf16", 1, 16, 16, 16384, 16384, 128, False)
    assert dense.flops() == dense.flops("fwd") == 4 * 16 * 16384 ** 2 * 128
    assert dense.flops("bwd") == 2.5 * 4 * 16 * 16384 ** 2 * 128
    assert dense.flops("fwd_bwd") == 3.5 * 4 * 16 * 16384 ** 2 * 128
    causal = bl.Config("fa", "bf16", 2, 8, 8, 4096, 4096, 64, True)       # causal half, as today
    assert causal.flops("bwd") == 2.5 * 4 * 2 * 8 * 4096 ** 2 * 64 / 2
    window = bl.Config("masks", "bf16", 1, 16, 16, 16384, 16384, 128, True, 4096, 0)
    pairs = sum(min(i, 4096) + 1 for i in range(16384))                    # visible pairs
    assert window.flops("bwd") == 2.5 * 4 * 16 * 128 * pairs
    assert window.flops("fwd_bwd") == 3.5 * window.flops()
    assert window.plain().flops("bwd") == 2.5 * window.plain().flops()
    # 1 ms for the backward of the anchor shape: 2.5x the forward's TFLOP/s at the same time
    assert bl.tflops(dense.flops("bwd"), 3.53882) == pytest.approx(2.5 * 621.4, abs=0.3)


def test_result_stem_and_plot_paths_distinguish_the_pass():
    assert bl.result_stem("NVIDIA H200", "2026-12-10") == "fa_H200_2026-12-10"
    assert bl.result_stem("NVIDIA H200", "2026-12-10", pass_="fwd") == "fa_H200_2026-12-10"
    assert bl.result_stem("NVIDIA H200", "2026-12-10", pass_="bwd") == "fa_H200_2026-12-10_bwd"
    assert (bl.result_stem("NVIDIA H200", "2026-12-10", "latency", "fwd_bwd")
            == "fa_latency_H200_2026-12-10_fwd_bwd")
    with pytest.raises(ValueError):
        bl.result_stem("NVIDIA H200", "2026-12-10", pass_="back")
    stems = {bl.result_stem("NVIDIA H200", "d", pass_=p) for p in bl.PASSES}
    assert len(stems) == 3
    assert bl.plot_path("r/fa_H200_d", "fa") == "r/fa_H200_d_fa.png"
    assert bl.plot_path("r/fa_H200_d_bwd", "fa", "bwd") == "r/fa_H200_d_bwd_fa.png"
    assert bl.plot_path("r/fa_H200_d_bwd", "masks", "bwd") == "r/fa_H200_d_bwd_masks.png"
    assert bl.plot_path("r/fa_H200_d_bwd_2", "fa", "bwd") == "r/fa_H200_d_bwd_2_fa.png"
    assert (bl.plot_path("r/fa_H200_d_fwd_bwd", "llm", "fwd_bwd")
            == "r/fa_H200_d_fwd_bwd_llm.png")
    assert bl.plot_path("r/fa_H200_2026-12-10_2", "fa") == "r/fa_H200_2026-12-10_2_fa.png"
    # a CSV holding several passes: each pass's plots get their own names, whatever its name
    paths = {bl.plot_path("r/all", "fa", p) for p in bl.PASSES}
    assert paths == {"r/all_fa.png", "r/all_fa_bwd.png", "r/all_fa_fwd_bwd.png"}
    for stem in ("r/x_bwd", "r/x_fwd_bwd", "r/x_bwd_3", "r/x"):
        assert len({bl.plot_path(stem, "fa", p) for p in bl.PASSES}) == 3


def test_unique_path_keeps_forward_and_backward_apart(tmp_path):
    fwd = bl.unique_path(str(tmp_path), bl.result_stem("NVIDIA H200", "d"), ".csv")
    open(fwd, "w").close()
    bwd = bl.unique_path(str(tmp_path), bl.result_stem("NVIDIA H200", "d", pass_="bwd"), ".csv")
    assert bwd.endswith("fa_H200_d_bwd.csv") and bwd != fwd


NEW_COLUMNS = ["pass", "peak_mem_mb", "launches", "workspace_bytes", "check_scope",
               "max_abs_err_dq", "tol_dq", "max_abs_err_dk", "tol_dk", "max_abs_err_dv", "tol_dv",
               "max_abs_err_dsinks", "tol_dsinks"]


def _grad_rows(cfg, times, pass_="bwd", mode="throughput"):
    rows = []
    for impl, t in times.items():
        if isinstance(t, str):
            rows.append(bl.make_row(ENV, cfg, impl, mode, pass_, status=t))
        else:
            flops = cfg.flops(pass_)
            rows.append(bl.make_row(ENV, cfg, impl, mode, pass_, status="ok", median_ms=t,
                                    tflops=bl.tflops(flops, t), flops=flops,
                                    peak_mem_mb=100.0 + t))
    return bl.fill_speedups(rows)


def test_csv_pass_columns_round_trip(tmp_path):
    fields = list(bl.CSV_FIELDS)
    assert fields[:len(REQUIRED)] == REQUIRED             # the required columns stay first
    for col in NEW_COLUMNS:
        assert col in fields
    assert len(set(fields)) == len(fields)
    cfg = bl.Config("fa", "bf16", 1, 16, 16, 16384, 16384, 128, True)
    rows = _grad_rows(cfg, {"ours_sm80": 2.0, "sdpa_default": 3.0})
    rows[0].update(max_abs_err=1.5e-3, tol=4e-3, max_abs_err_dq=1e-3, tol_dq=3e-3,
                   max_abs_err_dk=1.5e-3, tol_dk=4e-3, max_abs_err_dv=5e-4, tol_dv=2e-3,
                   kernel="bwd_sm80_hd128_bf16_causal",
                   launches="bwd_pre_hd128+bwd_sm80_hd128_bf16_causal+bwd_post_hd128",
                   workspace_bytes=134217728, check_scope="heads 0,8,15 of 16, all batches")
    path = str(tmp_path / "b.csv")
    bl.write_csv(path, rows)
    back = bl.read_csv(path)
    assert [r["pass"] for r in back] == ["bwd", "bwd"]
    assert back[0]["peak_mem_mb"] == pytest.approx(102.0)
    assert back[0]["workspace_bytes"] == 134217728
    assert back[0]["tol_dk"] == pytest.approx(4e-3) and back[0]["max_abs_err_dv"] == 5e-4
    assert back[0]["max_abs_err_dsinks"] is None
    assert back[0]["launches"].split("+")[1] == "bwd_sm80_hd128_bf16_causal"
    assert back[0]["check_scope"] == "heads 0,8,15 of 16, all batches"
    assert back[0]["flops"] == pytest.approx(cfg.flops("bwd"))
    assert back[0]["speedup_vs_sdpa_default"] == pytest.approx(1.5)
    with open(path, newline="") as f:
        header = next(csv.reader(f))
    assert header == fields


def test_rows_default_to_the_forward_pass(tmp_path):
    cfg = bl.suite_configs("fa", dtypes=["bf16"], causals=[True])[0]
    row = bl.make_row(ENV, cfg, "ours_sm90", "throughput")
    assert row["pass"] == "fwd" and bl.row_pass(row) == "fwd"
    with pytest.raises(ValueError):
        bl.make_row(ENV, cfg, "ours_sm90", "throughput", "backward")
    # a CSV written before the pass column: its rows timed the forward
    rows = _config_rows(cfg, {"ours_sm90": 1.0, "sdpa_default": 1.5})
    old_fields = [f for f in bl.CSV_FIELDS if f not in NEW_COLUMNS]
    path = str(tmp_path / "old.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old_fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: bl._fmt(k, r.get(k)) for k in old_fields})
    back = bl.read_csv(path)
    assert "pass" not in back[0] and bl.row_pass(back[0]) == "fwd"
    assert bl.config_key(back[0]) == bl.config_key(rows[0])
    assert bl.summary_key(back[0]) == ("throughput", "fa")


def test_passes_are_separate_configs_and_summaries():
    cfg = bl.Config("fa", "bf16", 1, 16, 16, 16384, 16384, 128, False)
    rows = (_config_rows(cfg, {"ours_sm80": 1.0, "sdpa_default": 2.0})
            + _grad_rows(cfg, {"ours_sm80": 3.0, "sdpa_default": 4.5})
            + _grad_rows(cfg, {"ours_sm80": 4.0, "sdpa_default": 4.0}, pass_="fwd_bwd"))
    assert len(bl.group_configs(rows)) == 3
    assert bl.passes_in(rows) == ["fwd", "bwd", "fwd_bwd"]
    assert bl.passes_in(list(reversed(rows))) == ["fwd", "bwd", "fwd_bwd"]
    s = bl.summarize(rows)
    assert set(s) == {("throughput", "fa"), ("throughput", "fa", "bwd"),
                      ("throughput", "fa", "fwd_bwd")}
    assert s[("throughput", "fa")]["ours_sm80"]["geomean_vs_sdpa_default"] == pytest.approx(2.0)
    assert s[("throughput", "fa", "bwd")]["ours_sm80"]["geomean_vs_sdpa_default"] == (
        pytest.approx(1.5))
    assert s[("throughput", "fa", "fwd_bwd")]["ours_sm80"]["geomean_vs_sdpa_default"] == (
        pytest.approx(1.0))


def test_summary_of_a_backward_run():
    cfgs = bl.suite_configs("fa", dtypes=["bf16"], causals=[False], head_dims=[128])[:2]
    rows = []
    for cfg in cfgs:
        rows += _grad_rows(cfg, {"ours_sm90": "skipped: RuntimeError: the sm90 backward is not "
                                              "built", "ours_sm80": 2.0, "sdpa_default": 3.0,
                                 "sdpa_flash": 4.0})
    s = bl.summarize(rows)[("throughput", "fa", "bwd")]
    assert (s["ours_sm90"]["ok"], s["ours_sm90"]["skipped"], s["ours_sm90"]["total"]) == (0, 2, 2)
    assert (s["ours_sm80"]["ok"], s["ours_sm80"]["skipped"]) == (2, 0)
    text = bl.format_summary(rows)
    assert "== suite fa, throughput, backward (TFLOP/s at 2.5x the forward's FLOPs" in text
    assert "fa throughput bwd ours_sm80: geomean 1.50x vs sdpa_default" in text
    assert "2.00x vs sdpa_flash" in text
    assert "0/2 ok (2 skipped)" in text
    assert "MB sm80" in text and "MB sdpa_default" in text and "102" in text
    assert "skip" in text
    # a forward table keeps its title
    fwd = _config_rows(cfgs[0], {"ours_sm80": 1.0, "sdpa_default": 1.5})
    assert "== suite fa, throughput (TFLOP/s; speedup = SDPA time / ours) ==" in (
        bl.format_summary(fwd))
    assert "MB " not in bl.format_summary(fwd)           # rows without peak memory


def test_grad_check_heads_and_scope():
    assert bl.grad_check_kv_heads(16, 4096, 4096) == list(range(16))
    assert bl.grad_check_kv_heads(16, 8192, 8192) == [0, 8, 15]
    assert bl.grad_check_kv_heads(16, 16384, 16384, all_heads=True) == list(range(16))
    assert bl.grad_check_kv_heads(8, 16384, 16384) == [0, 4, 7]
    assert bl.grad_check_kv_heads(1, 16384, 16384) == [0]             # always something
    assert bl.grad_check_kv_heads(2, 16384, 16384) == [0, 1]
    assert bl.grad_check_scope(16, 16, list(range(16))) == "all heads"
    assert bl.grad_check_scope(16, 16, [0, 8, 15]) == "heads 0,8,15 of 16, all batches"
    assert bl.grad_check_scope(64, 8, [0, 4, 7]) == (
        "kv heads 0,4,7 of 8 (q heads 0-7,32-39,56-63 of 64), all batches")
    assert bl.grad_check_scope(28, 4, [0, 2, 3]) == (
        "kv heads 0,2-3 of 4 (q heads 0-6,14-27 of 28), all batches")


@pytest.mark.parametrize("B, Hq, Hkv, Sq, Sk, budget, kv_heads", [
    (2, 8, 2, 17, 19, 10 ** 6, None),        # everything in one chunk per batch
    (2, 8, 2, 17, 19, 1, None),              # one row of one head per chunk
    (1, 8, 2, 17, 19, 3 * 17 * 19, None),    # 3 heads: within one group of 4
    (3, 12, 3, 9, 9, 9 * 9 * 8, None),       # two whole groups of 4
    (1, 6, 6, 20, 20, 7 * 20, [1, 2, 4]),    # MHA, a subset, row splits
    (2, 64, 8, 16, 16, 16 * 16 * 20, [0, 4, 7]),
    (1, 1, 1, 5, 1000, 10, None),            # budget below one row: one row anyway
])
def test_grad_reference_chunks_cover_the_selected_heads(B, Hq, Hkv, Sq, Sk, budget, kv_heads):
    G = Hq // Hkv
    chunks = bl.grad_reference_chunks(B, Hq, Hkv, Sq, Sk, budget, kv_heads)
    selected = list(range(Hkv)) if kv_heads is None else kv_heads
    covered = set()
    for (b, kv0, kv1, g0, g1, r0, r1) in chunks:
        assert kv1 > kv0 and g1 > g0 and r1 > r0
        assert 0 <= g0 and g1 <= G and 0 <= r0 and r1 <= Sq
        if kv1 - kv0 > 1:
            assert (g0, g1) == (0, G)                      # several kv heads: whole groups
        assert all(kv in selected for kv in range(kv0, kv1))
        assert (kv1 - kv0) * (g1 - g0) * (r1 - r0) * Sk <= max(budget, Sk)
        for kv in range(kv0, kv1):
            for g in range(g0, g1):
                for r in range(r0, r1):
                    key = (b, kv * G + g, r)
                    assert key not in covered
                    covered.add(key)
    expect = {(b, kv * G + g, r) for b in range(B) for kv in selected for g in range(G)
              for r in range(Sq)}
    assert covered == expect
    batches = [c[0] for c in chunks]
    assert batches == sorted(batches)                      # a batch's chunks are consecutive


def test_grad_reference_chunks_at_the_default_budget_hold_whole_rows():
    # --grad-ref-chunk-elems 2^28: every suite shape's chunks hold all query rows of a head
    for suite in ("fa", "llm", "masks"):
        for c in bl.suite_configs(suite, dtypes=["bf16"]):
            kv = bl.grad_check_kv_heads(c.Hkv, c.Sq, c.Sk)
            chunks = bl.grad_reference_chunks(c.B, c.Hq, c.Hkv, c.Sq, c.Sk, 1 << 28, kv)
            assert all((r0, r1) == (0, c.Sq) for (*_, r0, r1) in chunks), c


def test_grad_verdict():
    errs = {"dq": 1e-3, "dk": 3e-3, "dv": 1e-3}
    peer = {"dq": 1e-3, "dk": 1e-3, "dv": 2e-3}
    rounding = {"dq": 0.0, "dk": 0.0, "dv": 0.0}
    passed, worst, per = bl.grad_verdict(errs, peer, rounding)
    assert not passed and worst == "dk"                      # 3e-3 > 2 * 1e-3
    assert per["dk"] == (3e-3, pytest.approx(2e-3), False)
    assert per["dq"][2] and per["dv"][2]
    errs["dk"] = 1.9e-3
    passed, worst, per = bl.grad_verdict(errs, peer, rounding)
    assert passed and worst == "dk"                          # nearest its bound: 0.95
    errs["dsinks"], peer["dsinks"], rounding["dsinks"] = 0.0, 0.0, 0.0
    assert bl.grad_verdict(errs, peer, rounding)[0]          # exact dsinks passes
    passed, _, per = bl.grad_verdict(errs, peer, rounding, nonfinite=True)
    assert not passed and not any(ok for (_, _, ok) in per.values())
    errs["dv"] = float("nan")
    passed, worst, _ = bl.grad_verdict(errs, peer, rounding)
    assert not passed and worst == "dv"


def test_plot_panels_by_pass():
    cfgs = bl.suite_configs("fa", dtypes=["bf16"], head_dims=[128], seqlens=[1024])
    rows = []
    for cfg in cfgs:
        rows += _config_rows(cfg, {"ours_sm90": 1.0, "sdpa_default": 1.2})
        rows += _grad_rows(cfg, {"ours_sm80": 2.0, "sdpa_flash": 2.5})
    _, impls = bl.plot_panels(rows, "fa", "bwd")
    assert impls == ["ours_sm80", "sdpa_flash"]
    panels, impls = bl.plot_panels(rows, "fa", "fwd")
    assert impls == ["ours_sm90", "sdpa_default"]
    assert panels[0][1][1024]["ours_sm90"] == pytest.approx(cfgs[0].flops() / 1e9)
    panels, _ = bl.plot_panels(rows, "fa", "bwd")
    assert panels[0][1][1024]["ours_sm80"] == pytest.approx(cfgs[0].flops("bwd") / 2e9)


def test_plot_writes_backward_png(tmp_path):
    pytest.importorskip("matplotlib")
    cfg = bl.suite_configs("fa", dtypes=["bf16"], head_dims=[128], seqlens=[1024])[0]
    rows = _grad_rows(cfg, {"ours_sm80": 2.0, "sdpa_flash": 2.5})
    path = bl.plot_suite(rows, "fa", str(tmp_path / "b.png"), "NVIDIA H200", "bwd")
    assert path and os.path.getsize(path) > 1000
    assert bl.plot_suite(rows, "fa", str(tmp_path / "f.png"), "NVIDIA H200", "fwd") is None


def test_cli_dry_run_lists_the_pass():
    base = [sys.executable, SCRIPT, "--dry-run", "--suite", "fa", "--dtype", "bf16", "--causal",
            "0", "--head-dims", "128"]
    fwd = subprocess.run(base, capture_output=True, text=True, timeout=60)
    bwd = subprocess.run(base + ["--pass", "bwd"], capture_output=True, text=True, timeout=60)
    both = subprocess.run(base + ["--pass", "fwd_bwd"], capture_output=True, text=True,
                          timeout=60)
    for res in (fwd, bwd, both):
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip().endswith("6 configs")
    f_lines = [l for l in fwd.stdout.splitlines() if "throughput" in l]
    b_lines = [l for l in bwd.stdout.splitlines() if "throughput" in l]
    assert all(" fwd " in l for l in f_lines) and all(" bwd " in l for l in b_lines)
    assert all(" fwd_bwd " in l for l in both.stdout.splitlines() if "throughput" in l)

    def gflop(line):
        return float(line.rsplit("(", 1)[1].split()[0])

    for f, b in zip(f_lines, b_lines):
        assert gflop(b) == pytest.approx(2.5 * gflop(f), rel=1e-2)
    bad = subprocess.run(base + ["--pass", "backward"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "--pass" in bad.stderr


def test_cli_report_of_a_backward_csv(tmp_path):
    cfgs = bl.suite_configs("fa", dtypes=["bf16"], causals=[True], head_dims=[64])[:2]
    rows = []
    for cfg in cfgs:
        rows += _grad_rows(cfg, {"ours_sm80": 1.0, "sdpa_default": 1.25, "sdpa_flash": 2.0})
    path = str(tmp_path / "fa_H200_d_bwd.csv")
    bl.write_csv(path, rows)
    res = subprocess.run([sys.executable, SCRIPT, "--report", path], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "backward" in res.stdout and "fa throughput bwd ours_sm80: geomean 1.25x" in res.stdout
    assert "MB sm80" in res.stdout


# ---- bench_serving's decode suite -----------------------------------------------------------

def test_serving_decode_suite_is_the_issues_product():
    """dtypes x head dims x GQA x batches x caches; --dtype names only bf16 and fp16."""
    import bench_serving as bs

    configs = list(bs.decode_configs(bs.parse_args([])))
    assert len(configs) == 2 * 2 * 3 * 4 * 4
    assert {c[0] for c in configs} == {"bf16", "fp16"} and {c[1] for c in configs} == {64, 128}
    assert {(c[3], c[4]) for c in configs} == {(32, 8), (64, 8), (8, 1)}
    assert {c[2] for c in configs} == {1, 8, 64, 256}
    assert {c[5] for c in configs} == {1024, 8192, 32768, 131072}
    narrow = bs.parse_args(["--dtype", "fp16", "--head-dim", "128", "--gqa", "8:1",
                            "--batches", "1", "--caches", "4096"])
    assert list(bs.decode_configs(narrow)) == [("fp16", 128, 1, 8, 1, 4096)]
    with pytest.raises(SystemExit):
        bs.parse_args(["--dtype", "bf16,fp32"])


def test_serving_rows_never_time_a_wrong_or_failed_impl():
    """check_impls drops an impl that raises and records why; judged_row gives a time only to
    an impl that passed the rule."""
    torch = pytest.importorskip("torch")
    import bench_serving as bs

    class NoLaunches:
        @staticmethod
        def last_launch():
            return None

    ref = torch.zeros(4)
    peer = ref + 1e-3

    def refuses():
        raise RuntimeError("shape not supported")

    impls = {"ours_good": lambda: ref + 1e-3, "ours_wrong": lambda: ref + 1.0,
             "sdpa_refuses": refuses}
    checked, kernels = bs.check_impls(torch, NoLaunches, impls, peer, ref)
    assert set(impls) == {"ours_good", "ours_wrong"}
    assert checked["ours_good"][0] and not checked["ours_wrong"][0]
    assert checked["sdpa_refuses"][0] is None
    assert kernels["sdpa_refuses"] == "RuntimeError: shape not supported"

    samples = [0.010, 0.011, 0.012]  # ms per call
    rate = lambda us: {"tflops": 2.0 / us}  # noqa: E731
    rows = {}
    for name, verdict in checked.items():
        rows[name] = {}
        ok = bs.judged_row(rows[name], verdict, samples if verdict[0] else None, rate)
        assert ok == bool(verdict[0])
    assert rows["ours_good"]["status"] == "ok"
    assert rows["ours_good"]["median_us"] == pytest.approx(11.0)
    assert rows["ours_good"]["tflops"] == pytest.approx(2.0 / 11.0)
    assert rows["ours_wrong"]["status"] == "failed-correctness"
    assert rows["sdpa_refuses"]["status"] == "error"
    for name in ("ours_wrong", "sdpa_refuses"):
        assert "median_us" not in rows[name] and "tflops" not in rows[name]
