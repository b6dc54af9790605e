"""Shared helpers of the reliability tests (tests/test_reliability_*.py), and their self-checks.

What lives here:
  round_to_bf16, bf16_bits, bits_to_float32   bfloat16 on the host (NumPy has no bfloat16)
  peer_attention                             the FA3 rule's "peer": attention at the input
                                             precision (float16 / float32 in NumPy, bfloat16
                                             emulated by rounding where the kernels round)
  check_host_result                          FA3 rule for a host-path result (tests/reference.py)
  sampled_rows_check                         FA3 rule on a few query rows of a huge GPU problem,
                                             float64 on those rows only (torch)
  rss_bytes                                  resident set size of this process (Linux /proc)
  run_isolated                               runs a snippet in a fresh interpreter and reports
                                             how it ended (for calls that may crash the process
                                             or poison its CUDA context)
  SeededDraw, HypothesisDraw, draw_case      one random-case strategy, driven by Hypothesis
                                             when it is importable, else by a seeded generator

The self-checks below run everywhere (no GPU):
    python -m pytest -q tests/test_reliability_support.py
"""
import gc
import json
import os
import random
import subprocess
import sys
import textwrap
import tracemalloc
from dataclasses import dataclass

import numpy as np

from reference import attention_numpy, check_against_reference

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)

# ------------------------------------------------------------------------------------------------
# bfloat16 on the host


def round_to_bf16(x):
    """float32 values rounded to the nearest bfloat16 (ties to even), returned as float32."""
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint32) << 16
    return np.where(np.isnan(x), x, rounded.view(np.float32))


def bf16_bits(x):
    """uint16 bit patterns of x rounded to bfloat16."""
    return (round_to_bf16(x).view(np.uint32) >> 16).astype(np.uint16)


def bits_to_float32(bits):
    """bfloat16 bit patterns (uint16, or an ml_dtypes.bfloat16 view) widened exactly to float32."""
    bits = np.asarray(bits)
    if bits.dtype != np.uint16:
        bits = bits.view(np.uint16)
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _bf16_peer(q, k, v, causal, scale):
    """Naive attention rounding to bfloat16 where a bfloat16 pipeline does: the scaled q, the
    scores, the probabilities and the output; float32 everywhere else."""
    _, Sq, Hq, _ = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    k = np.repeat(k.astype(np.float32), Hq // Hk, axis=2)
    v = np.repeat(v.astype(np.float32), Hq // Hk, axis=2)
    qs = round_to_bf16(q.astype(np.float32) * np.float32(scale))
    scores = round_to_bf16(np.einsum("bihd,bjhd->bhij", qs, k))
    i = np.arange(Sq)[:, None]
    j = np.arange(Sk)[None, :]
    visible = (j <= i + Sk - Sq) if causal else np.ones((Sq, Sk), bool)
    scores = np.where(visible, scores, np.float32(-np.inf))
    if Sk:
        row_max = scores.max(axis=-1, keepdims=True)
    else:
        row_max = np.full(scores.shape[:-1] + (1,), -np.inf, np.float32)
    empty = ~np.isfinite(row_max)
    p = np.exp(scores - np.where(empty, np.float32(0), row_max)).astype(np.float32)
    row_sum = p.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        probs = round_to_bf16(np.where(empty, 0, p / np.where(empty, 1, row_sum)))
    return round_to_bf16(np.einsum("bhij,bjhd->bihd", probs, v))


def peer_attention(q, k, v, causal, softmax_scale, dtype_name):
    """The FA3 rule's peer for q, k, v holding values of `dtype_name` (given as float arrays)."""
    scale = 1.0 / np.sqrt(q.shape[-1]) if softmax_scale is None else softmax_scale
    if dtype_name == "bfloat16":
        return _bf16_peer(q, k, v, causal, scale)
    dtype = {"float16": np.float16, "float32": np.float32}[dtype_name]
    return attention_numpy(q.astype(dtype), k.astype(dtype), v.astype(dtype), causal,
                           softmax_scale, dtype)[0]


def check_host_result(out, lse, q, k, v, causal, softmax_scale, dtype_name):
    """FA3 rule on a host result; q, k, v as float arrays holding the exact input values."""
    ref_out, ref_lse = attention_numpy(q, k, v, causal, softmax_scale, np.float64)
    peer = peer_attention(q, k, v, causal, softmax_scale, dtype_name)
    return check_against_reference(out, lse, ref_out, ref_lse, peer)


# ------------------------------------------------------------------------------------------------
# Sampled rows of a problem too large for a full reference (torch, on the GPU)


def sampled_rows_check(q, k, v, out, lse, rows, causal, softmax_scale=None):
    """FA3 rule restricted to query rows `rows` = [(batch, head_q, row), ...] of a torch problem
    (q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D), out like q, lse (B, Hq, Sq) or None). The float64
    reference and the input-precision peer are computed for those rows only. Returns
    (max error, tolerance) over all rows."""
    import torch

    Sq, Hq, D = q.shape[1], q.shape[2], q.shape[3]
    Sk, Hk = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else D ** -0.5
    worst_err, worst_tol = 0.0, 0.0
    for b, h, i in rows:
        hk = h // (Hq // Hk)
        kk, vv = k[b, :, hk, :], v[b, :, hk, :]
        qi = q[b, i, h, :]
        visible_end = min(Sk, i + Sk - Sq + 1) if causal else Sk
        visible_end = max(visible_end, 0)
        kk, vv = kk[:visible_end], vv[:visible_end]
        got = out[b, i, h, :].double()
        assert not torch.isnan(got).any(), f"NaN in row (batch {b}, head {h}, row {i})"
        if visible_end == 0:
            assert torch.all(got == 0), f"row {(b, h, i)} sees no key but is not zero"
            if lse is not None:
                assert torch.isneginf(lse[b, h, i]), f"row {(b, h, i)} sees no key, lse not -inf"
            continue
        s64 = (kk.double() @ qi.double()) * scale
        lse64 = torch.logsumexp(s64, 0)
        ref = torch.softmax(s64, 0) @ vv.double()
        # peer: scores and probabilities rounded to the input dtype, accumulation in float32
        s_lp = (kk @ (qi * scale).to(q.dtype)).float()
        p_lp = torch.softmax(s_lp, 0).to(q.dtype)
        peer = (p_lp.float() @ vv.float()).to(q.dtype).double()
        err, tol = check_against_reference(got, None, ref, None, peer,
                                           f"row (batch {b}, head {h}, row {i})")
        if lse is not None:
            lse_err = abs(float(lse[b, h, i]) - float(lse64))
            assert lse_err <= 1e-3, f"row {(b, h, i)}: |lse - ref| {lse_err:.3e}"
        worst_err, worst_tol = max(worst_err, err), max(worst_tol, tol)
    return worst_err, worst_tol


# ------------------------------------------------------------------------------------------------
# Process-level measurements


def traced_growth(step, iterations, settle=0):
    """Bytes of Python memory still traced after `iterations` more calls of step() (garbage
    collected before and after): the tracemalloc half of every leak test. `settle` calls run
    traced first and are not counted: interpreter free lists keep recently freed small objects
    traced where they were first allocated until they fill, whatever the code does."""
    tracemalloc.start()
    try:
        for _ in range(settle):
            step()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(iterations):
            step()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def rss_bytes():
    """Resident set size of this process in bytes, or None where /proc is not available."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _no_core_dump():
    """A child expected to crash must not leave a core file in the repository."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass


def _package_parent():
    """The folder this process imported flashattn_c from: the checkout when it is built in place
    (or installed editable), site-packages after pip install ."""
    import flashattn_c

    return os.path.dirname(os.path.dirname(os.path.abspath(flashattn_c.__file__)))


def run_isolated(code, env=None, timeout=180):
    """Runs `code` in a fresh interpreter (tests/ as cwd and importable; flashattn_c from where
    this process imported it, so an unbuilt checkout never shadows an installed package) and
    returns {"status": "ok" | "raised" | "crashed" | "timeout", "type", "message", "result",
    "returncode", "stderr"}. The snippet reports through two names it is given:
    `result(value)` (JSON-serializable) and `expect_raise(callable)` which records the exception
    the callable raises. A crash (signal, abort) or a CUDA context poisoned by a fault stays in
    the child."""
    prelude = textwrap.dedent(f"""
        import json, sys, traceback
        sys.path.insert(0, {TESTS_DIR!r})
        sys.path.insert(1, {_package_parent()!r})
        _report = {{"status": "ok"}}
        def result(value):
            _report["result"] = value
        def expect_raise(fn):
            try:
                fn()
            except BaseException as exc:  # reported, not judged, here
                _report.update(status="raised", type=type(exc).__name__, message=str(exc))
                return exc
            return None
    """)
    epilogue = '\nprint("@@REPORT@@" + json.dumps(_report), flush=True)\n'
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code) + epilogue],
                              cwd=TESTS_DIR, env=full_env, capture_output=True, text=True,
                              timeout=timeout, preexec_fn=_no_core_dump)
    except subprocess.TimeoutExpired as exc:
        return {"status": "timeout", "returncode": None, "stderr": str(exc.stderr or "")[-2000:]}
    report = {"status": "crashed"}
    for line in proc.stdout.splitlines():
        if line.startswith("@@REPORT@@"):
            report = json.loads(line[len("@@REPORT@@"):])
    if proc.returncode != 0 and report.get("status") != "raised":
        report["status"] = "crashed"
    report["returncode"] = proc.returncode
    report["stderr"] = proc.stderr[-2000:]
    return report


# ------------------------------------------------------------------------------------------------
# One random-case strategy for Hypothesis and for a seeded generator


class SeededDraw:
    """The drawing interface of HypothesisDraw over random.Random(seed)."""

    def __init__(self, seed):
        self.random = random.Random(seed)

    def integers(self, lo, hi):
        return self.random.randint(lo, hi)

    def sampled_from(self, values):
        return self.random.choice(list(values))

    def booleans(self):
        return self.random.random() < 0.5


class HypothesisDraw:
    """Draws from a Hypothesis `data` object, so failures shrink."""

    def __init__(self, data):
        from hypothesis import strategies as st

        self.data = data
        self.st = st

    def integers(self, lo, hi):
        return self.data.draw(self.st.integers(lo, hi))

    def sampled_from(self, values):
        return self.data.draw(self.st.sampled_from(list(values)))

    def booleans(self):
        return self.data.draw(self.st.booleans())


@dataclass
class Case:
    batch: int
    seqlen_q: int
    seqlen_k: int
    heads_kv: int
    group: int
    head_dim: int
    dtype: str
    causal: bool
    softmax_scale: object  # None or float
    layout: str            # how q, k, v are laid out, see draw_case
    out_layout: str        # "none" (the call allocates), "compact", "padded"
    return_lse: bool

    @property
    def heads_q(self):
        return self.heads_kv * self.group


HOST_LAYOUTS = ("compact", "sdpa", "padded", "strided_head_dim", "reversed_seq")
GPU_LAYOUTS = ("compact", "sdpa", "padded")


def draw_case(draw, *, gpu):
    """A random attention problem. Host cases stay small (the host reference and the NumPy
    float64 reference are both naive loops); GPU cases reach past one tile in every dimension.
    Layouts: compact; sdpa (a (B, H, S, D) buffer seen transposed); padded (rows and heads
    spaced wider than head_dim, 8-element aligned); strided_head_dim and reversed_seq (host
    only: the GPU kernels need unit head_dim stride and accept what torch can make)."""
    if gpu:
        seqlen_q = draw.sampled_from([1, 2, 17, 63, 64, 65, 127, 128, 129, 191, 255, 300, 513])
        seqlen_k = draw.sampled_from([0, 1, 3, 17, 64, 127, 128, 129, 200, 256, 383, 640])
        head_dim = draw.sampled_from([8, 32, 40, 64, 72, 96, 128, 136, 192, 200, 256])
        batch = draw.integers(1, 3)
        heads_kv = draw.integers(1, 3)
        group = draw.sampled_from([1, 2, 3, 4])
        dtype = draw.sampled_from(["float16", "bfloat16"])
        layout = draw.sampled_from(GPU_LAYOUTS)
    else:
        seqlen_q = draw.integers(0, 48)
        seqlen_k = draw.integers(0, 48)
        head_dim = draw.sampled_from([8, 16, 24, 40, 64, 72, 128, 256])
        batch = draw.integers(1, 2)
        heads_kv = draw.integers(1, 2)
        group = draw.integers(1, 3)
        dtype = draw.sampled_from(["float16", "bfloat16", "float32"])
        layout = draw.sampled_from(HOST_LAYOUTS)
    causal = draw.booleans()
    scale = draw.sampled_from([None, None, 0.0, 0.02, 0.3, 1.0])
    out_layout = draw.sampled_from(["none", "compact", "padded"])
    return_lse = draw.booleans()
    return Case(batch, seqlen_q, seqlen_k, heads_kv, group, head_dim, dtype, causal, scale,
                layout, out_layout, return_lse)


# ------------------------------------------------------------------------------------------------
# Self-checks of the helpers (CPU only)


def test_round_to_bf16_ties_to_even_and_keeps_specials():
    one_ulp = 2.0 ** -7  # spacing of bfloat16 just above 1.0
    x = np.array([1.0, 1.0 + one_ulp / 2, 1.0 + 1.5 * one_ulp, 1.0 + one_ulp / 4, -2.5, np.inf,
                  -np.inf, 3.4e38, 0.0], np.float32)
    got = round_to_bf16(x)
    want = np.array([1.0, 1.0, 1.0 + 2 * one_ulp, 1.0, -2.5, np.inf, -np.inf, np.inf, 0.0],
                    np.float32)
    assert np.array_equal(got, want)
    assert np.isnan(round_to_bf16(np.float32(np.nan)))
    assert np.array_equal(bits_to_float32(bf16_bits(x)), got)


def test_bf16_peer_matches_the_float64_reference_to_bf16_precision(rng):
    q = round_to_bf16(rng.standard_normal((1, 9, 2, 16)))
    k = round_to_bf16(rng.standard_normal((1, 11, 1, 16)))
    v = round_to_bf16(rng.standard_normal((1, 11, 1, 16)))
    ref, _ = attention_numpy(q, k, v, True, None, np.float64)
    peer = peer_attention(q, k, v, True, None, "bfloat16")
    err = np.max(np.abs(peer - ref))
    assert 0 < err < 2e-2, f"bf16 peer error {err} is not that of bfloat16 rounding"


def test_rss_reader_sees_an_allocation():
    before = rss_bytes()
    if before is None:
        import pytest

        pytest.skip("no /proc/self/statm on this platform")
    # A fresh anonymous mapping, every page touched: the heap may hand a large array memory an
    # earlier test freed and left resident, which the reader rightly does not count as growth.
    import mmap

    size = 64 * 1024 * 1024
    block = mmap.mmap(-1, size)
    try:
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1
        grown = rss_bytes() - before
    finally:
        block.close()
    assert grown >= 32 * 1024 * 1024


def test_run_isolated_reports_results_exceptions_and_crashes():
    ok = run_isolated("result(6 * 7)")
    assert ok["status"] == "ok" and ok["result"] == 42
    raised = run_isolated("expect_raise(lambda: int('x'))")
    assert raised["status"] == "raised" and raised["type"] == "ValueError"
    crashed = run_isolated("import os; os.abort()")
    assert crashed["status"] == "crashed" and crashed["returncode"] != 0


def test_both_drawers_give_valid_cases():
    for gpu in (False, True):
        for seed in range(50):
            case = draw_case(SeededDraw(seed), gpu=gpu)
            assert case.head_dim % 8 == 0 and 8 <= case.head_dim <= 256
            assert case.layout in (GPU_LAYOUTS if gpu else HOST_LAYOUTS)
            assert case.heads_q % case.heads_kv == 0
