"""bench_lib: the pure-Python half of the attention benchmark (no torch, no GPU needed).

What lives here: the benchmark suites (attention shapes), the FLOP count, the statistics
(median and its 95% confidence interval), the correctness rule, the timing plan arithmetic,
the CSV schema and I/O, the summary maths and tables, and the plots. bench_attention.py does
the GPU work and calls into this module; tests/test_bench_lib.py checks it without a GPU.

Shapes follow flashattn_c: q (B, Sq, Hq, D), k and v (B, Sk, Hkv, D); Hq % Hkv == 0.
Every suite has Sq == Sk, so bottom-right causal (ours) and top-left causal (SDPA) agree.
A config may add a sliding window (window_left, window_right; -1 unbounded, bottom-right
aligned as causal), a softcap and attention sinks: the masks suite, or the --window,
--softcap and --sinks flags of bench_attention.py on any suite. Those configs are timed against
FlexAttention (a sliding-window block mask, a tanh score_mod, sinks folded in from its lse)
and against our own kernel at the same shape without them ("plain": dense causal for a causal
window), not against SDPA, which has none of the three.

A run times one pass (bench_attention.py --pass): the forward (fwd, the default), the backward
alone (bwd) or both together (fwd_bwd). The backward counts 2.5 times the forward's FLOPs (five
matrix products of the forward's size against two), fwd_bwd 3.5 times; its correctness rule is
the forward's, applied to each of dq, dk, dv (and dsinks) against a float64 reference. Rows carry
the pass in a `pass` column, result files and plots a _bwd / _fwd_bwd suffix, and the summary a
table per pass.

    python -m pytest tests/test_bench_lib.py        # the CPU tests
    python benches/bench_attention.py --dry-run     # list the configs this module defines

Standard library only at import; numpy and matplotlib are imported inside the functions that
need them.
"""
import csv
import dataclasses
import math
import os
import re
import time

# --------------------------------------------------------------------------------------------
# Implementations and the CSV schema
# --------------------------------------------------------------------------------------------

OUR_FAMILIES = ("sm90", "sm80")           # kernel families of flashattn_c, fastest first
OUR_CHOICES = OUR_FAMILIES + ("auto",)    # "auto" = kernel=None: the library picks
SDPA_BACKENDS = ("default", "flash", "cudnn", "efficient")
BASELINES = tuple("sdpa_" + b for b in SDPA_BACKENDS)
FLEX = "flex"                              # FlexAttention (torch.compile'd), mask configs only
MASK_BASELINES = (FLEX, "plain")           # --baselines words for the mask configs
SPEEDUP_BASELINES = BASELINES + (FLEX,)    # speedup_vs_<X> columns: same work, time ratio

PASSES = ("fwd", "bwd", "fwd_bwd")
# The backward recomputes S = Q K^T and adds dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q:
# five matrix products of the forward's size against the forward's two.
PASS_FLOP_FACTORS = {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}
PASS_TITLES = {"fwd": "forward", "bwd": "backward", "fwd_bwd": "forward + backward"}
GRAD_NAMES = ("dq", "dk", "dv", "dsinks")


def plain_impl_name(family):
    """Our kernel at the config's shape and causal flag, without window, softcap or sinks."""
    return "plain_" + family


def is_plain(impl):
    return impl.startswith("plain_")


def our_impl_name(family):
    return "ours_" + family


def is_ours(impl):
    return impl.startswith("ours_")


MODES = ("throughput", "latency")

# The required columns, in order; the columns after them add audit detail.
CSV_FIELDS = (
    "gpu", "sm_count", "driver", "cuda", "torch", "cudnn", "git_commit", "date",
    "suite", "dtype", "B", "Hq", "Hkv", "Sq", "Sk", "D", "causal", "impl", "status",
    "median_ms", "ci95_lo_ms", "ci95_hi_ms", "tflops",
    "speedup_vs_sdpa_default", "speedup_vs_sdpa_flash", "speedup_vs_sdpa_cudnn",
    "speedup_vs_sdpa_efficient",
    "max_abs_err", "tol", "kernel", "block", "grid", "smem_bytes",
    # extras
    "mode", "repeats", "calls_per_rep", "ci95_coverage", "regs", "tile", "stages",
    # masks: the config's window / softcap / sinks, the FLOPs this row's tflops counts
    # (attention_flops: visible (q, k) pairs for a window), and the mask baselines
    "window_left", "window_right", "softcap", "sinks", "flops", "speedup_vs_flex",
    "tflops_ratio_vs_plain",
    # passes: which one the row times, the extra device memory of one call, the op's whole plan
    # of launches ("+"-joined kernel names) and workspace, which heads the gradient check covered,
    # and each gradient's error and tolerance (max_abs_err / tol: the gradient nearest its bound)
    "pass", "peak_mem_mb", "launches", "workspace_bytes", "check_scope",
    "max_abs_err_dq", "tol_dq", "max_abs_err_dk", "tol_dk", "max_abs_err_dv", "tol_dv",
    "max_abs_err_dsinks", "tol_dsinks",
)
ENV_FIELDS = ("gpu", "sm_count", "driver", "cuda", "torch", "cudnn", "git_commit", "date")
INT_FIELDS = ("sm_count", "B", "Hq", "Hkv", "Sq", "Sk", "D", "causal", "smem_bytes",
              "repeats", "calls_per_rep", "regs", "stages", "window_left", "window_right", "sinks",
              "workspace_bytes")
FLOAT_FIELDS = ("median_ms", "ci95_lo_ms", "ci95_hi_ms", "tflops",
                "speedup_vs_sdpa_default", "speedup_vs_sdpa_flash", "speedup_vs_sdpa_cudnn",
                "speedup_vs_sdpa_efficient", "max_abs_err", "tol", "ci95_coverage", "softcap",
                "flops", "speedup_vs_flex", "tflops_ratio_vs_plain", "peak_mem_mb",
                "max_abs_err_dq", "tol_dq", "max_abs_err_dk", "tol_dk", "max_abs_err_dv", "tol_dv",
                "max_abs_err_dsinks", "tol_dsinks")
CONFIG_KEY_FIELDS = ("mode", "suite", "dtype", "B", "Hq", "Hkv", "Sq", "Sk", "D", "causal",
                     "window_left", "window_right", "softcap", "sinks", "pass")

STATUS_OK = "ok"
STATUS_FAILED_CORRECTNESS = "failed-correctness"
# Other statuses: "failed-call: <exception>", "failed-launch: <why>", "skipped: <reason>".

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16"}

# --------------------------------------------------------------------------------------------
# Suites
# --------------------------------------------------------------------------------------------

FA_TOKENS = 16384          # batch * seqlen, as in the FlashAttention papers' benchmark
FA_HIDDEN = 2048           # heads * head_dim
FA_HEAD_DIMS = (64, 128, 256)
FA_SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
SEED_SHAPES = ((1, 1, 32, 64), (1, 1, 64, 64), (1, 1, 128, 64), (1, 1, 256, 64),
               (1, 1, 512, 64), (4, 8, 128, 64))            # (B, H, S, D)
LLM_TOKENS = 16384
LLM_HEADS = ((32, 8), (64, 8), (28, 4))                      # (heads_q, heads_kv), GQA
LLM_HEAD_DIM = 128
LLM_SEQLENS = (1024, 2048, 4096, 8192, 16384)
# masks: (B, Hq, Hkv, S, D, causal, window_left, window_right, softcap, sinks). Issue 13's
# shapes at 16k tokens (hd128 window 4096 and hd64 window 1024, causal: the anchors' FlexAttention
# rows; softcap at hd128 and hd64 causal), a symmetric window, and sinks at gpt-oss's attention
# (64 q heads over 8 kv heads, head_dim 64, full causal and 128-token window layers).
MASK_SHAPES = (
    (1, 16, 16, 16384, 128, True, 4096, 0, 0.0, False),
    (1, 32, 32, 16384, 64, True, 1024, 0, 0.0, False),
    (4, 16, 16, 4096, 128, True, 1024, 0, 0.0, False),
    (1, 16, 16, 16384, 128, False, 2048, 2048, 0.0, False),
    (1, 16, 16, 16384, 128, True, -1, -1, 30.0, False),
    (1, 32, 32, 16384, 64, True, -1, -1, 30.0, False),
    (1, 16, 16, 16384, 128, False, -1, -1, 30.0, False),
    (1, 16, 16, 16384, 128, True, 4096, 0, 30.0, False),
    (2, 64, 8, 8192, 64, True, -1, -1, 0.0, True),
    (2, 64, 8, 8192, 64, True, 128, 0, 0.0, True),
    (1, 16, 16, 16384, 128, True, -1, -1, 0.0, True),
)
SUITES = ("seed", "fa", "llm", "masks")


@dataclasses.dataclass(frozen=True)
class Config:
    suite: str
    dtype: str        # "bf16" | "fp16"
    B: int
    Hq: int
    Hkv: int
    Sq: int
    Sk: int
    D: int
    causal: bool
    window_left: int = -1      # sliding window, -1 unbounded; causal makes the right side 0
    window_right: int = -1
    softcap: float = 0.0       # > 0: c * tanh(x / c) on the scaled scores
    sinks: bool = False        # one sink logit per q head

    @property
    def window(self):
        return (self.window_left, self.window_right)

    def has_window(self):
        return self.window_left >= 0 or (self.window_right >= 0 and not self.causal)

    def has_extras(self):
        """A window, a softcap or sinks: what SDPA cannot run."""
        return self.has_window() or self.softcap > 0 or self.sinks

    def plain(self):
        """The same shape and causal flag without window, softcap or sinks."""
        return dataclasses.replace(self, window_left=-1, window_right=-1, softcap=0.0,
                                   sinks=False)

    def flops(self, pass_="fwd"):
        """The FLOPs one pass counts: the forward's (attention_flops) times the pass's factor."""
        return attention_flops(self.B, self.Hq, self.Sq, self.Sk, self.D, self.causal,
                               self.window if self.has_window() else None) * pass_flops_factor(
                                   pass_)

    def label(self):
        mask = "causal" if self.causal else "full"
        if self.has_window():
            mask += " w=(%d,%d)" % (self.window_left, 0 if self.causal else self.window_right)
        if self.softcap > 0:
            mask += " cap=%g" % self.softcap
        if self.sinks:
            mask += " sinks"
        heads = str(self.Hq) if self.Hq == self.Hkv else "%d/%d" % (self.Hq, self.Hkv)
        seq = str(self.Sq) if self.Sq == self.Sk else "%dx%d" % (self.Sq, self.Sk)
        return "%s %s B=%d H=%s S=%s D=%d" % (self.dtype, mask, self.B, heads, seq, self.D)

    def with_extras(self, window=None, softcap=None, sinks=None):
        """This config with the --window / --softcap / --sinks flags applied (None: keep)."""
        cfg = self
        if window is not None:
            cfg = dataclasses.replace(cfg, window_left=int(window[0]),
                                      window_right=int(window[1]))
        if softcap is not None:
            cfg = dataclasses.replace(cfg, softcap=float(softcap))
        if sinks is not None:
            cfg = dataclasses.replace(cfg, sinks=bool(sinks))
        return cfg


def _shapes(suite):
    """(B, Hq, Hkv, S, D) tuples of one suite."""
    if suite == "seed":
        return [(b, h, h, s, d) for (b, h, s, d) in SEED_SHAPES]
    if suite == "fa":
        return [(FA_TOKENS // s, FA_HIDDEN // d, FA_HIDDEN // d, s, d)
                for d in FA_HEAD_DIMS for s in FA_SEQLENS]
    if suite == "llm":
        return [(LLM_TOKENS // s, hq, hkv, s, LLM_HEAD_DIM)
                for (hq, hkv) in LLM_HEADS for s in LLM_SEQLENS]
    if suite == "masks":
        return [shape[:5] for shape in MASK_SHAPES]
    raise ValueError("unknown suite %r, expected one of %s" % (suite, ", ".join(SUITES)))


def suite_configs(suite, dtypes=("bf16", "fp16"), causals=(False, True),
                  head_dims=None, seqlens=None, limit=None):
    """The configs of one suite, ordered dtype, causal, shape; optional filters and a cap."""
    configs = []
    for dtype in dtypes:
        if dtype not in DTYPE_NAMES:
            raise ValueError("unknown dtype %r, expected bf16 or fp16" % (dtype,))
        if suite == "masks":   # each mask shape carries its own causal flag
            for (b, hq, hkv, s, d, causal, left, right, cap, sinks) in MASK_SHAPES:
                if causal not in [bool(c) for c in causals]:
                    continue
                if (head_dims and d not in head_dims) or (seqlens and s not in seqlens):
                    continue
                configs.append(Config(suite, dtype, b, hq, hkv, s, s, d, causal, left, right,
                                      cap, sinks))
            continue
        for causal in causals:
            for (b, hq, hkv, s, d) in _shapes(suite):
                if head_dims and d not in head_dims:
                    continue
                if seqlens and s not in seqlens:
                    continue
                cfg = Config(suite, dtype, b, hq, hkv, s, s, d, bool(causal))
                # Bottom-right and top-left causal masks coincide only when Sq == Sk.
                assert cfg.Sq == cfg.Sk, cfg
                assert cfg.Hq % cfg.Hkv == 0, cfg
                configs.append(cfg)
    if limit is not None and limit >= 0:
        configs = configs[:limit]
    return configs


def parse_choice_list(text, choices, both_word="both", all_word="all"):
    """'a,b' -> ['a', 'b'] checked against choices; 'both'/'all' -> all choices."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if len(items) == 1 and items[0] in (both_word, all_word):
        return list(choices)
    for item in items:
        if item not in choices:
            raise ValueError("%r is not one of %s" % (item, ", ".join(map(str, choices))))
    return items


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------

def visible_pairs(Sq, Sk, causal, window):
    """The (query, key) pairs a bottom-right aligned mask shows: query i sees key j when
    i + Sk - Sq - left <= j <= i + Sk - Sq + right and 0 <= j < Sk, -1 unbounded, causal
    setting right = 0 (csrc/common/mask.h). Exact, summed over rows."""
    left, right = int(window[0]), int(window[1])
    if causal:
        right = 0
    total = 0
    for i in range(Sq):
        diag = i + Sk - Sq
        lo = max(0, diag - left) if left >= 0 else 0
        hi = min(Sk - 1, diag + right) if right >= 0 else Sk - 1
        if hi >= lo:
            total += hi - lo + 1
    return total


def attention_flops(B, Hq, Sq, Sk, D, causal, window=None):
    """Two matrix products of 2*D flops per (query, key) pair and head.

    No window: Sq * Sk pairs, causal counting half (the convention of the FlashAttention
    benchmarks, exact only in the limit of long sequences). A window (left, right): only the
    visible pairs, exactly (visible_pairs): 4 * B * Hq * D * visible_pairs(Sq, Sk, causal,
    window), so a sliding window's TFLOP/s is the work it needs, not the dense work it skips."""
    if window is not None and (window[0] >= 0 or (window[1] >= 0 and not causal)):
        return float(4 * B * Hq * D * visible_pairs(Sq, Sk, causal, window))
    flops = 4 * B * Hq * Sq * Sk * D
    return flops / 2 if causal else float(flops)


def pass_flops_factor(pass_):
    """The pass's FLOPs in units of the forward's: 1, 2.5 (bwd) or 3.5 (fwd_bwd)."""
    if pass_ not in PASS_FLOP_FACTORS:
        raise ValueError("unknown pass %r, expected one of %s" % (pass_, ", ".join(PASSES)))
    return PASS_FLOP_FACTORS[pass_]


def tflops(flops, ms):
    if ms is None or not ms > 0:
        return None
    return flops / (ms * 1e-3) / 1e12


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------

def median(samples):
    xs = sorted(samples)
    n = len(xs)
    if n == 0:
        raise ValueError("median of no samples")
    mid = n // 2
    return xs[mid] if n % 2 else 0.5 * (xs[mid - 1] + xs[mid])


def _binom_half_cdf(k, n):
    """P(X <= k) for X ~ Binomial(n, 1/2), exact in integers."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(0, min(k, n) + 1)) / 2 ** n


def median_ci(samples, confidence=0.95):
    """Distribution-free confidence interval of the median from order statistics.

    With x(1) <= ... <= x(n), the interval [x(j), x(n+1-j)] contains the true median with
    probability P(j <= X <= n-j), X ~ Binomial(n, 1/2), for any continuous distribution:
    the median lies below x(j) only if fewer than j samples fall below it. The largest j
    whose coverage is >= confidence is used. Exact and deterministic (no resampling, no
    seed). With n <= 5 no j reaches 95%; then the interval is [min, max] and the coverage
    returned says how far short it falls.

    Returns (lo, hi, coverage).
    """
    xs = sorted(samples)
    n = len(xs)
    if n == 0:
        raise ValueError("confidence interval of no samples")
    best_j, best_cov = 1, 1.0 - 2.0 * _binom_half_cdf(0, n)
    for j in range(1, n // 2 + 1):
        coverage = 1.0 - 2.0 * _binom_half_cdf(j - 1, n)
        if coverage >= confidence:
            best_j, best_cov = j, coverage
        else:
            break
    return xs[best_j - 1], xs[n - best_j], best_cov


def geomean(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if any(not v > 0 for v in vals):
        raise ValueError("geometric mean needs positive values, got %r" % (vals,))
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


# --------------------------------------------------------------------------------------------
# Correctness (DESIGN.md section 6, FlashAttention-3's rule)
# --------------------------------------------------------------------------------------------

def correctness_tolerance(peer_err, rounding_err):
    """2 * max|peer - ref| + 2 * max|(ref + 0.3 - 0.3) - ref|."""
    return 2.0 * peer_err + 2.0 * rounding_err


def correctness_verdict(ours_err, peer_err, rounding_err, nonfinite=False):
    """(passed, tol). NaN anywhere (a NaN error, or nonfinite=True) fails."""
    tol = correctness_tolerance(peer_err, rounding_err)
    if nonfinite or math.isnan(ours_err) or math.isnan(tol):
        return False, tol
    return ours_err <= tol, tol


def array_errors(ours, peer, ref):
    """The rule's three maxima and a non-finite flag from numpy arrays of one shape.

    ref should be float64 (or float32); ours and peer are upcast to ref's dtype."""
    import numpy as np
    ref = np.asarray(ref)
    ours = np.asarray(ours).astype(ref.dtype)
    peer = np.asarray(peer).astype(ref.dtype)
    if ours.shape != ref.shape or peer.shape != ref.shape:
        raise ValueError("shapes differ: ours %s, peer %s, ref %s"
                         % (ours.shape, peer.shape, ref.shape))
    nonfinite = bool(not np.isfinite(ours).all())
    ours_err = float(np.max(np.abs(ours - ref))) if ours.size else 0.0
    peer_err = float(np.max(np.abs(peer - ref))) if ref.size else 0.0
    rounding_err = float(np.max(np.abs((ref + 0.3) - 0.3 - ref))) if ref.size else 0.0
    return ours_err, peer_err, rounding_err, nonfinite


def check_arrays(ours, peer, ref):
    """(passed, ours_err, tol) of the correctness rule on numpy arrays."""
    ours_err, peer_err, rounding_err, nonfinite = array_errors(ours, peer, ref)
    passed, tol = correctness_verdict(ours_err, peer_err, rounding_err, nonfinite)
    return passed, ours_err, tol


def reference_chunks(B, Hq, Sq, Sk, budget_elems):
    """Chunks (b, h0, h1, r0, r1) covering (B, Hq, Sq) so that one chunk's score matrix,
    (h1-h0) * (r1-r0) * Sk elements, stays within budget_elems (at least one row)."""
    rows = max(1, min(Sq, budget_elems // max(1, Sk)))
    heads = max(1, min(Hq, budget_elems // max(1, rows * Sk)))
    chunks = []
    for b in range(B):
        for h0 in range(0, Hq, heads):
            for r0 in range(0, Sq, rows):
                chunks.append((b, h0, min(Hq, h0 + heads), r0, min(Sq, r0 + rows)))
    return chunks


# The backward's float64 reference costs several float64 copies of a chunk's score matrix and
# float64 matrix products over every (q head, query, key): from this sequence length up it checks
# a few kv heads (grad_check_kv_heads) unless asked for all.
GRAD_CHECK_SUBSET_FROM = 8192


def grad_check_kv_heads(Hkv, Sq, Sk, all_heads=False):
    """The kv heads whose gradients the backward's check covers, each with all the q heads of
    its group and every batch: all of them below GRAD_CHECK_SUBSET_FROM, else the first, the
    middle and the last (both ends of the head indexing and one inside)."""
    if all_heads or max(Sq, Sk) < GRAD_CHECK_SUBSET_FROM:
        return list(range(Hkv))
    return sorted({0, Hkv // 2, Hkv - 1})


def _ranges(values):
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    out, values = [], sorted(values)
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else "%d-%d" % (values[i], values[j]))
        i = j + 1
    return ",".join(out)


def grad_check_scope(Hq, Hkv, kv_heads):
    """The check_scope note of a backward row: which heads its max_abs_err covers."""
    if sorted(kv_heads) == list(range(Hkv)):
        return "all heads"
    G = Hq // Hkv
    q_heads = [h for kv in kv_heads for h in range(kv * G, (kv + 1) * G)]
    if G == 1:
        return "heads %s of %d, all batches" % (_ranges(q_heads), Hq)
    return "kv heads %s of %d (q heads %s of %d), all batches" % (
        _ranges(kv_heads), Hkv, _ranges(q_heads), Hq)


def grad_reference_chunks(B, Hq, Hkv, Sq, Sk, budget_elems, kv_heads=None):
    """Chunks (b, kv0, kv1, g0, g1, r0, r1) of the backward reference: batch b, kv heads
    kv0..kv1-1 and, of each one's group of G = Hq // Hkv q heads, members g0..g1-1, query rows
    r0..r1-1. A chunk spans several kv heads only with whole groups (g0, g1 = 0, G), so a kv
    head's gradient is a sum over its chunks; its score elements (kv1-kv0) (g1-g0) (r1-r0) Sk
    stay within budget_elems (at least one row of one head). Only kv_heads (default all) are
    covered; a chunk never spans a kv head outside them."""
    G = Hq // Hkv
    selected = sorted(set(range(Hkv) if kv_heads is None else kv_heads))
    rows = max(1, min(Sq, budget_elems // max(1, Sk)))
    heads = max(1, budget_elems // max(1, rows * Sk))       # q heads per chunk
    runs = []                                                # consecutive selected kv heads
    for kv in selected:
        if runs and runs[-1][1] == kv:
            runs[-1][1] = kv + 1
        else:
            runs.append([kv, kv + 1])
    chunks = []
    for b in range(B):
        for lo, hi in runs:
            if heads >= G:
                per = heads // G
                spans = [(kv, min(hi, kv + per), 0, G) for kv in range(lo, hi, per)]
            else:
                spans = [(kv, kv + 1, g, min(G, g + heads)) for kv in range(lo, hi)
                         for g in range(0, G, heads)]
            for (kv0, kv1, g0, g1) in spans:
                for r0 in range(0, Sq, rows):
                    chunks.append((b, kv0, kv1, g0, g1, r0, min(Sq, r0 + rows)))
    return chunks


def grad_verdict(errs, peer_errs, rounding_errs, nonfinite=False):
    """The correctness rule for each gradient: errs, peer_errs, rounding_errs map a gradient's
    name (dq, dk, dv, dsinks) to max|ours - ref|, max|peer - ref|, max|(ref + 0.3 - 0.3) - ref|.
    NaN anywhere (nonfinite) fails every gradient.

    Returns (passed, worst, per_grad): passed when every gradient passes; worst the gradient
    with the largest err / tol (a failing one first); per_grad {name: (err, tol, passed)}."""
    per_grad = {}
    for name in errs:
        ok, tol = correctness_verdict(errs[name], peer_errs[name], rounding_errs[name], nonfinite)
        per_grad[name] = (errs[name], tol, ok)

    def badness(name):
        err, tol, ok = per_grad[name]
        ratio = err / tol if tol > 0 else (0.0 if err == 0 else math.inf)
        return (not ok, ratio if not math.isnan(ratio) else math.inf)

    worst = max(per_grad, key=badness) if per_grad else None
    passed = bool(per_grad) and all(ok for (_, _, ok) in per_grad.values())
    return passed, worst, per_grad


# --------------------------------------------------------------------------------------------
# Timing plan
# --------------------------------------------------------------------------------------------

def calls_per_rep(est_gpu_ms, target_ms=0.3, max_calls=32):
    """How many back-to-back calls one timed repetition holds, so that a short kernel's
    repetition is long against the event timer's resolution."""
    if not est_gpu_ms or est_gpu_ms <= 0 or math.isnan(est_gpu_ms):
        return max_calls
    return int(max(1, min(max_calls, math.ceil(target_ms / est_gpu_ms))))


def hold_ms(host_ms_per_call, calls):
    """GPU busy-wait before a timed repetition: long enough for the host to enqueue all its
    calls, so the events time back-to-back kernels, not the Python launch rate."""
    return 1.25 * host_ms_per_call * calls + 0.05


def repeats_within_budget(requested, round_ms, budget_s, min_repeats=10):
    """Repetitions that fit the per-config time budget, never fewer than min_repeats (or the
    requested count, if that is smaller)."""
    floor = min(requested, min_repeats)
    if round_ms <= 0:
        return requested
    fit = int(budget_s * 1e3 // round_ms)
    return max(floor, min(requested, fit))


# --------------------------------------------------------------------------------------------
# Which of our kernel families run here
# --------------------------------------------------------------------------------------------

def family_runs_on(family, compiled_archs, cc):
    """(runs, reason). sm90: wgmma/TMA kernels built for sm_90a run only on cc 9.0.
    sm80: mma.sync kernels, SASS per arch plus PTX of the lowest, run on any cc >= 8.0."""
    major, minor = cc
    cc_num = 10 * major + minor
    if compiled_archs is not None and len(compiled_archs) == 0:
        return False, "family %s is not in this build" % family
    if family == "sm90":
        if (major, minor) != (9, 0):
            return False, "sm90 kernels need compute capability 9.0, this GPU is %d.%d" % cc
        if compiled_archs is not None and 90 not in compiled_archs:
            return False, "sm90 kernels were not compiled for arch 90 (build has %s)" % (
                compiled_archs,)
        return True, ""
    if family == "sm80":
        if cc_num < 80:
            return False, "sm80 kernels need compute capability >= 8.0, this GPU is %d.%d" % cc
        return True, ""
    if family == "auto":
        return True, ""
    return False, "unknown family %r" % (family,)


def resolve_families(requested, built_families, cc):
    """Our families to run: requested (a list, or None for every family that runs here).

    built_families: build_info()["families"], e.g. {"sm80": [80, 90], "sm90": [90]}, or None
    when the build does not say. Returns (families, errors); an explicitly requested family
    that cannot run is an error, never silently dropped."""
    def archs_of(fam):
        if fam == "auto" or built_families is None:
            return None
        return list(built_families.get(fam, []))

    if requested is None:
        chosen = [f for f in OUR_FAMILIES if family_runs_on(f, archs_of(f), cc)[0]]
        errors = [] if chosen else ["no kernel family of this build runs on compute capability "
                                    "%d.%d (build: %s)" % (cc[0], cc[1], built_families)]
        return chosen, errors
    chosen, errors = [], []
    for fam in requested:
        runs, why = family_runs_on(fam, archs_of(fam), cc)
        if runs:
            if fam not in chosen:
                chosen.append(fam)
        else:
            errors.append(why)
    return chosen, errors


# --------------------------------------------------------------------------------------------
# Result files
# --------------------------------------------------------------------------------------------

def gpu_short_name(name):
    """'NVIDIA H100 80GB HBM3' -> 'H100', 'NVIDIA A100-SXM4-80GB' -> 'A100',
    'NVIDIA GeForce RTX 4090' -> 'RTX4090'. Letters and digits only."""
    words = [w for w in re.split(r"\s+", name.strip()) if w]
    words = [w for w in words if w.upper() not in ("NVIDIA", "GEFORCE", "TESLA")]
    picked = []
    for w in words:
        picked.append(w.split("-")[0])
        if any(c.isdigit() for c in w):
            break
    short = re.sub(r"[^A-Za-z0-9]", "", "".join(picked))
    return short or "GPU"


def result_stem(gpu_name, date_str, mode_tag="", pass_="fwd"):
    """File name stem carrying GPU, date and pass: fa_H100_2026-11-21 for the forward
    (fa_latency_... etc.), fa_H100_2026-11-21_bwd / _fwd_bwd for the others, so a backward run
    never takes a forward run's name."""
    pass_flops_factor(pass_)
    tag = ("_" + mode_tag) if mode_tag else ""
    suffix = "" if pass_ == "fwd" else "_" + pass_
    return "fa%s_%s_%s%s" % (tag, gpu_short_name(gpu_name), date_str, suffix)


def plot_path(stem_path, name, pass_="fwd"):
    """STEM_<name>.png for a plot of one suite (or "masks") and pass. The pass a stem names
    (result_stem's _bwd / _fwd_bwd tag, unique_path's _N after it; none: fwd) adds nothing;
    any other pass adds _<pass>, so each pass of a CSV gets its own plots whatever its name."""
    tag = re.search(r"_(fwd_bwd|bwd)(_\d+)?$", os.path.basename(stem_path))
    suffix = "" if pass_ == (tag.group(1) if tag else "fwd") else "_" + pass_
    return "%s_%s%s.png" % (stem_path, name, suffix)


def unique_path(directory, stem, ext):
    """directory/stem.ext, or stem_2.ext, stem_3.ext... so no earlier run is overwritten."""
    path = os.path.join(directory, stem + ext)
    n = 2
    while os.path.exists(path):
        path = os.path.join(directory, "%s_%d%s" % (stem, n, ext))
        n += 1
    return path


def _fmt(field, value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if field == "tflops":
            return "%.2f" % value
        if field.startswith(("max_abs_err", "tol")):
            return "%.3e" % value
        if field == "peak_mem_mb":
            return "%.1f" % value
        if field == "ci95_coverage":
            return "%.4f" % value
        return "%.6g" % value
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value)
    return str(value)


class CsvWriter:
    """Appends rows as configs finish (so a cut-off run keeps what it measured)."""

    def __init__(self, path):
        self.path = path
        self._file = open(path, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=CSV_FIELDS, extrasaction="raise")
        self._writer.writeheader()
        self._file.flush()

    def write(self, rows):
        for row in rows:
            self._writer.writerow({f: _fmt(f, row.get(f)) for f in CSV_FIELDS})
        self._file.flush()

    def close(self):
        self._file.close()


def write_csv(path, rows):
    writer = CsvWriter(path)
    try:
        writer.write(rows)
    finally:
        writer.close()


def _parse(field, text):
    if text == "":
        return None
    if field in INT_FIELDS:
        try:
            return int(text)
        except ValueError:
            return text
    if field in FLOAT_FIELDS:
        return float(text)
    return text


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return [{k: _parse(k, v) for k, v in row.items()} for row in reader]


def make_row(env, cfg, impl, mode, pass_="fwd", **fields):
    """One CSV row: the run's environment, the config, the impl, the pass, and measured
    fields."""
    pass_flops_factor(pass_)
    row = {f: None for f in CSV_FIELDS}
    row.update({f: env.get(f) for f in ENV_FIELDS})
    row.update(suite=cfg.suite, dtype=cfg.dtype, B=cfg.B, Hq=cfg.Hq, Hkv=cfg.Hkv, Sq=cfg.Sq,
               Sk=cfg.Sk, D=cfg.D, causal=int(cfg.causal), impl=impl, mode=mode,
               window_left=cfg.window_left, window_right=cfg.window_right,
               softcap=float(cfg.softcap), sinks=int(bool(cfg.sinks)))
    row["pass"] = pass_
    for key, value in fields.items():
        if key not in row:
            raise KeyError("not a CSV field: %s" % key)
        row[key] = value
    return row


def row_pass(row):
    """The pass a row timed; rows of CSVs older than the pass column timed the forward."""
    return row.get("pass") or "fwd"


def passes_in(rows):
    """The passes rows hold, in PASSES order."""
    present = {row_pass(r) for r in rows}
    return [p for p in PASSES if p in present] + sorted(present - set(PASSES))


def config_key(row):
    return tuple(row_pass(row) if f == "pass" else row.get(f) for f in CONFIG_KEY_FIELDS)


def summary_key(row):
    """(mode, suite) for a forward row, as before the passes, else (mode, suite, pass)."""
    pass_ = row_pass(row)
    return (row["mode"], row["suite"]) if pass_ == "fwd" else (row["mode"], row["suite"], pass_)


def _or(value, default):
    return default if value is None else value


def row_config(row):
    """The Config of a CSV row (rows of CSVs older than the mask columns get no mask)."""
    return Config(row["suite"], row["dtype"], int(row["B"]), int(row["Hq"]), int(row["Hkv"]),
                  int(row["Sq"]), int(row["Sk"]), int(row["D"]), bool(row["causal"]),
                  int(_or(row.get("window_left"), -1)), int(_or(row.get("window_right"), -1)),
                  float(_or(row.get("softcap"), 0.0)), bool(_or(row.get("sinks"), 0)))


def row_label(row):
    return row_config(row).label()


def fill_speedups(rows):
    """For the rows of one config: speedup_vs_<baseline> = baseline median time / this impl's
    median time (the baselines doing the same work: SDPA backends, FlexAttention); and for our
    impls, tflops_ratio_vs_plain = this impl's TFLOP/s / the same family's plain row's (our
    kernel at that shape without window, softcap or sinks: a different FLOP count, so a
    throughput ratio, not a time ratio). Empty where either side has no time."""
    by_impl = {r["impl"]: r for r in rows}

    def ok_value(r, field):
        return r.get(field) if r is not None and r.get("status") == STATUS_OK else None

    for row in rows:
        mine = ok_value(row, "median_ms")
        for base in SPEEDUP_BASELINES:
            theirs = ok_value(by_impl.get(base), "median_ms")
            row["speedup_vs_" + base] = (theirs / mine) if (mine and theirs) else None
        row["tflops_ratio_vs_plain"] = None
        if is_ours(row["impl"]):
            mine_t = ok_value(row, "tflops")
            plain_t = ok_value(by_impl.get(plain_impl_name(row["impl"][len("ours_"):])),
                               "tflops")
            if mine_t and plain_t:
                row["tflops_ratio_vs_plain"] = mine_t / plain_t
    return rows


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------

def group_configs(rows):
    """{config key: {impl: row}} in first-seen order."""
    groups = {}
    for row in rows:
        groups.setdefault(config_key(row), {})[row["impl"]] = row
    return groups


def summarize(rows, baseline="sdpa_default"):
    """Per (mode, suite) (plus the pass, for passes other than fwd: summary_key) and per our
    impl: geometric-mean speedup vs SDPA default and vs SDPA flash, the worst config (lowest
    speedup vs `baseline`) and ok/skipped/total counts.

    Returns {(mode, suite[, pass]): {impl: {"geomean_vs_sdpa_default", "geomean_vs_sdpa_flash",
    "n_vs_sdpa_default", "n_vs_sdpa_flash", "worst_label", "worst_speedup", "ok", "skipped",
    "total"}}}, plus "geomean_vs_flex" / "n_vs_flex" (time ratio) and "geomean_vs_plain" /
    "n_vs_plain" (TFLOP/s ratio) where the suite's configs have those baselines (the mask
    configs)."""
    out = {}
    for key, impls in group_configs(rows).items():
        per_suite = out.setdefault(summary_key(next(iter(impls.values()))), {})
        for impl, row in impls.items():
            if not is_ours(impl):
                continue
            s = per_suite.setdefault(impl, {"vs_sdpa_default": [], "vs_sdpa_flash": [],
                                            "vs_flex": [], "vs_plain": [],
                                            "worst_label": None, "worst_speedup": None,
                                            "ok": 0, "skipped": 0, "total": 0})
            s["total"] += 1
            if row.get("status") == STATUS_OK:
                s["ok"] += 1
            elif (row.get("status") or "").startswith("skipped"):
                s["skipped"] += 1
            for base in ("sdpa_default", "sdpa_flash", FLEX):
                v = row.get("speedup_vs_" + base)
                if v is not None:
                    s["vs_" + base].append(v)
            if row.get("tflops_ratio_vs_plain") is not None:
                s["vs_plain"].append(row["tflops_ratio_vs_plain"])
            w = row.get("speedup_vs_" + baseline)
            if w is not None and (s["worst_speedup"] is None or w < s["worst_speedup"]):
                s["worst_speedup"], s["worst_label"] = w, row_label(row)
    for per_suite in out.values():
        for s in per_suite.values():
            for base in ("sdpa_default", "sdpa_flash", FLEX, "plain"):
                vals = s.pop("vs_" + base)
                s["geomean_vs_" + base] = geomean(vals)
                s["n_vs_" + base] = len(vals)
    return out


def _cell(row, mode):
    if row is None:
        return "-"
    status = row.get("status") or ""
    if status == STATUS_OK:
        if mode == "latency":
            return "%.1fus" % (row["median_ms"] * 1e3)
        t = row.get("tflops")
        return "%.1f" % t if t is not None else "-"
    if status.startswith("skipped"):
        return "skip"
    return "FAIL"


def _table(header, body):
    widths = [max(len(str(r[i])) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in [header] + body]
    return lines


def _x(v):
    return "%.2fx" % v if v is not None else "-"


def _mem(row):
    value = None if row is None else row.get("peak_mem_mb")
    return "%.0f" % value if value is not None else "-"


def _suite_title(mode, suite, pass_, present):
    unit = "us per call, Python wall clock" if mode == "latency" else "TFLOP/s"
    if pass_ != "fwd" and mode != "latency":
        unit += " at %gx the forward's FLOPs" % pass_flops_factor(pass_)
    what = "%s, %s" % (suite, mode)
    if pass_ != "fwd":
        what += ", " + PASS_TITLES.get(pass_, pass_)
    if any(i == FLEX or is_plain(i) for i in present):
        return ("== suite %s (%s, visible pairs for a window; speedup = baseline time / ours; "
                "/plain = our TFLOP/s / plain's) ==" % (what, unit))
    return "== suite %s (%s; speedup = SDPA time / ours) ==" % (what, unit)


def _ratio_columns(present):
    """(column name, row field) of our speedups: against SDPA where the suite has SDPA rows,
    FlexAttention and plain where it has those."""
    columns = []
    if any(i in BASELINES for i in present) or not any(
            i == FLEX or is_plain(i) for i in present):
        columns += [("default", "speedup_vs_sdpa_default"), ("flash", "speedup_vs_sdpa_flash")]
    if FLEX in present:
        columns.append(("flex", "speedup_vs_flex"))
    if any(is_plain(i) for i in present):
        columns.append(("plain", "tflops_ratio_vs_plain"))
    return columns


def _suite_table(groups, keys, present, mode):
    """The table of one suite: a row per config, a column per impl, our speedups, and each
    impl's peak memory where the rows have it."""
    ours = [i for i in present if is_ours(i)]
    ratio_cols = _ratio_columns(present)
    mem_impls = [i for i in present if any((groups[k].get(i) or {}).get("peak_mem_mb")
                                           is not None for k in keys)]
    header = ["config"] + present
    for o in ours:
        header += ["%s/%s" % (o[5:], name) for name, _ in ratio_cols]
    header += ["MB %s" % (i[5:] if is_ours(i) else i) for i in mem_impls]
    body = []
    for k in keys:
        impls = groups[k]
        line = [row_label(next(iter(impls.values())))] + [_cell(impls.get(i), mode)
                                                          for i in present]
        for o in ours:
            r = impls.get(o) or {}
            line += [_x(r.get(field)) for _, field in ratio_cols]
        line += [_mem(impls.get(i)) for i in mem_impls]
        body.append(line)
    lines = _table(header, body)
    if mem_impls:
        lines.append("(MB: peak device memory of one call above what was allocated before it)")
    return lines


def _geomean_line(prefix, impl, s):
    """One of our impls over a suite: its geomean speedups and its worst config."""
    worst = ("worst %s (%s vs sdpa_default)" % (s["worst_label"], _x(s["worst_speedup"]))
             if s["worst_label"] else "worst: -")
    extra = ""
    if s.get("n_vs_flex"):
        extra += "; geomean %s vs flex (%d configs)" % (_x(s["geomean_vs_flex"]), s["n_vs_flex"])
    if s.get("n_vs_plain"):
        extra += "; TFLOP/s geomean %s of plain (%d configs)" % (_x(s["geomean_vs_plain"]),
                                                                 s["n_vs_plain"])
    skipped = " (%d skipped)" % s["skipped"] if s.get("skipped") else ""
    return ("%s %s: geomean %s vs sdpa_default (%d configs), %s vs sdpa_flash (%d configs); "
            "%d/%d ok%s; %s%s"
            % (prefix, impl, _x(s["geomean_vs_sdpa_default"]), s["n_vs_sdpa_default"],
               _x(s["geomean_vs_sdpa_flash"]), s["n_vs_sdpa_flash"], s["ok"], s["total"],
               skipped, worst, extra))


def format_summary(rows):
    """The printed report: per (mode, suite) and pass a table (TFLOP/s or latency per impl, our
    speedups, and each impl's peak memory where the rows have it), then one line per our impl
    with the geometric-mean speedups and the worst config."""
    lines = []
    groups = group_configs(rows)
    summary = summarize(rows)
    impl_order = ([our_impl_name(f) for f in OUR_CHOICES] + list(BASELINES) + [FLEX]
                  + [plain_impl_name(f) for f in OUR_CHOICES])
    seen, skey_of = [], {}
    for key, impls in groups.items():
        skey_of[key] = summary_key(next(iter(impls.values())))
        if skey_of[key] not in seen:
            seen.append(skey_of[key])
    for skey in seen:
        mode, suite = skey[0], skey[1]
        pass_ = skey[2] if len(skey) > 2 else "fwd"
        keys = [k for k in groups if skey_of[k] == skey]
        present = [i for i in impl_order if any(i in groups[k] for k in keys)]
        present += sorted({i for k in keys for i in groups[k]} - set(present))
        lines += ["", _suite_title(mode, suite, pass_, present)]
        lines += _suite_table(groups, keys, present, mode)
        prefix = "%s %s" % (suite, mode) + ("" if pass_ == "fwd" else " " + pass_)
        for o in present:
            s = summary.get(skey, {}).get(o)
            if is_ours(o) and s is not None:
                lines.append(_geomean_line(prefix, o, s))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------

def config_cost(cfg, n_impls, pass_="fwd"):
    """Relative wall-time weight of a config for the ETA: work plus a fixed per-config part
    (correctness, warm-up, launch-bound repetitions of tiny shapes)."""
    return n_impls * (cfg.flops(pass_) + 2e10)


class Progress:
    """'config i/N, elapsed, ETA' lines; the ETA scales elapsed time by remaining work."""

    def __init__(self, costs, clock=time.monotonic):
        self.costs = list(costs)
        self.total = float(sum(self.costs)) or 1.0
        self.done = 0.0
        self.clock = clock
        self.start = clock()

    def eta_s(self, finished):
        done = sum(self.costs[:finished])
        elapsed = self.clock() - self.start
        if done <= 0:
            return None
        return elapsed * (self.total - done) / done

    def line(self, index, label):
        """Line for config number index (0-based) about to start."""
        elapsed = self.clock() - self.start
        eta = self.eta_s(index)
        eta_txt = "%.0fs" % eta if eta is not None else "?"
        return "[bench] config %d/%d %s | elapsed %.0fs, ETA %s" % (
            index + 1, len(self.costs), label, elapsed, eta_txt)


# --------------------------------------------------------------------------------------------
# Plots (FlashAttention papers' style: TFLOP/s vs seqlen, grouped bars per impl)
# --------------------------------------------------------------------------------------------

IMPL_COLORS = {
    "ours_sm90": "#d62728", "ours_sm80": "#ff7f0e", "ours_auto": "#8c564b",
    "sdpa_default": "#1f77b4", "sdpa_flash": "#2ca02c", "sdpa_cudnn": "#9467bd",
    "sdpa_efficient": "#7f7f7f", "flex": "#17becf", "plain_sm90": "#f7b6d2",
    "plain_sm80": "#ffbb78", "plain_auto": "#c49c94",
}


def plot_panels(rows, suite, pass_=None):
    """Throughput rows of one suite (and of one pass, when pass_ is given) grouped for plotting.

    Returns (panels, impls): panels is an ordered list of (title, {seqlen: {impl: tflops}}),
    one panel per head_dim (fa) or head ratio (llm) x causal, and x dtype when both appear."""
    sel = [r for r in rows if r.get("suite") == suite and r.get("mode", "throughput") ==
           "throughput" and r.get("status") == STATUS_OK and r.get("tflops") is not None
           and (pass_ is None or row_pass(r) == pass_)]
    dtypes = sorted({r["dtype"] for r in sel})
    impl_order = [our_impl_name(f) for f in OUR_CHOICES] + list(BASELINES)
    impls = [i for i in impl_order if any(r["impl"] == i for r in sel)]
    impls += sorted({r["impl"] for r in sel} - set(impls))
    panels = {}
    for r in sel:
        if suite == "llm":
            group = (r["Hq"], r["Hkv"], r["D"])
            gtxt = "%d/%d heads, head dim %d" % group
        else:
            group = (r["D"],)
            gtxt = "head dim %d" % r["D"]
        mask = "causal" if r["causal"] else "non-causal"
        title = gtxt + ", " + mask + ((", " + r["dtype"]) if len(dtypes) > 1 else "")
        key = (r["dtype"], int(bool(r["causal"])), group)
        panel = panels.setdefault(key, (title, {}))
        panel[1].setdefault(int(r["Sq"]), {})[r["impl"]] = float(r["tflops"])
    ordered = [panels[k] for k in sorted(panels)]
    return ordered, impls


def _seq_label(s):
    return "%dk" % (s // 1024) if s >= 1024 and s % 1024 == 0 else str(s)


def plot_suite(rows, suite, path, gpu_name="", pass_="fwd"):
    """Write one PNG for a suite's rows of one pass. Returns the path, or None when matplotlib
    is missing or there is nothing to plot."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels, impls = plot_panels(rows, suite, pass_)
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = int(math.ceil(len(panels) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.2 * nrows + 0.9),
                             squeeze=False)
    width = 0.8 / max(1, len(impls))
    for idx, (title, data) in enumerate(panels):
        ax = axes[idx // ncols][idx % ncols]
        seqs = sorted(data)
        for j, impl in enumerate(impls):
            xs, ys = [], []
            for i, s in enumerate(seqs):
                if impl in data[s]:
                    xs.append(i + (j - (len(impls) - 1) / 2) * width)
                    ys.append(data[s][impl])
            bars = ax.bar(xs, ys, width, label=impl, color=IMPL_COLORS.get(impl))
            for bar, y in zip(bars, ys):
                ax.text(bar.get_x() + bar.get_width() / 2, y, "%.0f" % y, ha="center",
                        va="bottom", fontsize=6, rotation=90)
        ax.set_xticks(range(len(seqs)))
        ax.set_xticklabels([_seq_label(s) for s in seqs])
        ax.set_xlabel("sequence length")
        ax.set_ylabel("TFLOP/s")
        ax.set_title(title, fontsize=10)
        top = max((v for d in data.values() for v in d.values()), default=1.0)
        ax.set_ylim(0, top * 1.18)
    for idx in range(len(panels), nrows * ncols):
        axes[idx // ncols][idx % ncols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    top_in = 4.2 * nrows + 0.9                    # figure height in inches
    fig.suptitle("Attention %s, suite %s%s" % (PASS_TITLES.get(pass_, pass_), suite,
                                                (", " + gpu_name) if gpu_name else ""),
                 y=1 - 0.12 / top_in, va="top", fontsize=11)
    fig.legend(handles, labels, loc="upper center", ncol=len(impls), fontsize=9,
               bbox_to_anchor=(0.5, 1 - 0.42 / top_in))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.85 / top_in))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_masks(rows, path, gpu_name="", pass_="fwd"):
    """One PNG for the mask configs (window, softcap, sinks) of a run's pass, any suite: TFLOP/s
    per config (visible pairs for windows), bars for ours, FlexAttention and plain; one panel
    per dtype. Returns the path, or None when matplotlib is missing or nothing is to plot."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sel = [r for r in rows if r.get("mode", "throughput") == "throughput"
           and r.get("status") == STATUS_OK and r.get("tflops") is not None
           and row_config(r).has_extras() and row_pass(r) == pass_]
    if not sel:
        return None
    dtypes = sorted({r["dtype"] for r in sel})
    order = [our_impl_name(f) for f in OUR_CHOICES] + [FLEX] + [plain_impl_name(f)
                                                               for f in OUR_CHOICES]
    impls = [i for i in order if any(r["impl"] == i for r in sel)]
    impls += sorted({r["impl"] for r in sel} - set(impls))
    n_configs = max(len({config_key(r) for r in sel if r["dtype"] == d}) for d in dtypes)
    fig, axes = plt.subplots(len(dtypes), 1, figsize=(max(8.0, 1.25 * n_configs),
                                                      5.2 * len(dtypes)), squeeze=False)
    width = 0.8 / max(1, len(impls))
    for ax, dtype in zip(axes[:, 0], dtypes):
        labels, data = [], {}
        for r in sel:
            if r["dtype"] != dtype:
                continue
            label = row_label(r)[len(dtype) + 1:]
            if label not in data:
                labels.append(label)
            data.setdefault(label, {})[r["impl"]] = float(r["tflops"])
        for j, impl in enumerate(impls):
            xs = [i + (j - (len(impls) - 1) / 2) * width for i, lab in enumerate(labels)
                  if impl in data[lab]]
            ys = [data[lab][impl] for lab in labels if impl in data[lab]]
            bars = ax.bar(xs, ys, width, label=impl, color=IMPL_COLORS.get(impl))
            for bar, y in zip(bars, ys):
                ax.text(bar.get_x() + bar.get_width() / 2, y, "%.0f" % y, ha="center",
                        va="bottom", fontsize=6, rotation=90)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=7)
        ax.set_ylabel("TFLOP/s (visible pairs)")
        ax.set_title("%s; plain = our kernel at the shape without window/softcap/sinks" % dtype,
                     fontsize=9)
        top = max((v for d in data.values() for v in d.values()), default=1.0)
        ax.set_ylim(0, top * 1.18)
        ax.legend(fontsize=8, ncol=len(impls))
    fig.suptitle("Attention %s, window / softcap / sinks%s"
                 % (PASS_TITLES.get(pass_, pass_), (", " + gpu_name) if gpu_name else ""),
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
