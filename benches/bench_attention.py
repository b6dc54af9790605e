"""bench_attention.py: flashattn_c's attention (forward, backward, or both) against every
PyTorch SDPA backend.

For each config (q (B, S, Hq, D), k/v (B, S, Hkv, D), bf16 or fp16, causal or not):
  1. inputs are drawn once on the GPU (torch.randn);
  2. each of our kernel families runs once on them and is checked against a float64 reference
     computed on the GPU in chunks (DESIGN.md section 6): max|ours - ref| <= 2 max|peer - ref|
     + 2 max|(ref + 0.3 - 0.3) - ref|, no NaN, where peer is the same attention done naively at
     the input precision (scores and probabilities rounded to the input dtype, as
     FlashAttention-3's tests do). The output buffer is poisoned with NaN first, so an element
     left unwritten fails. A failing impl gets its row and is not timed;
  3. ours, SDPA default dispatch and SDPA pinned to FLASH_ATTENTION, CUDNN_ATTENTION and
     EFFICIENT_ATTENTION (torch.nn.attention.sdpa_kernel) are timed interleaved: every
     repetition runs each impl once, starting from a rotating impl, so clock drift and
     thermal state hit all of them alike. A backend that refuses the shape is skipped with
     its reason. SDPA gets the (B, H, S, D) views q.transpose(1, 2) of the same memory.

Throughput mode (default): CUDA events per repetition. Before each repetition a GPU busy-wait
(torch.cuda._sleep) holds the stream while the host enqueues the repetition's calls, so the
events time back-to-back kernels, not Python's launch rate; short kernels run several calls
per repetition. Repetitions are cut (down to 10) when a config would exceed
--max-seconds-per-config. No L2 flush between repetitions.
Latency mode: time.perf_counter around N calls plus one synchronize, per repetition: the
end-to-end cost of a call from Python, argument handling and launch included.

Statistics: median of the repetitions and a distribution-free 95% confidence interval of the
median from order statistics (binomial, exact; see bench_lib.median_ci). TFLOP/s =
4 B Hq Sq Sk D / time, halved for causal. speedup_vs_X = X's median time / this impl's.

Window, softcap and sinks (the masks suite, or --window L,R / --softcap C / --sinks on any
suite): ours runs with them; SDPA has none of the three, so those configs are timed against
  flex    FlexAttention (torch.compile'd flex_attention): a block mask of the same
          bottom-right window, a tanh score_mod for the softcap, sinks folded in from its
          lse (out * sigmoid(lse - sink)); "skipped: ..." where this torch has no FlexAttention;
  plain   our own kernel at the same shape and causal flag without window, softcap or sinks
          (for a causal window: dense causal), correctness not re-checked here (the fa suite
          and the tests do); tflops_ratio_vs_plain = our TFLOP/s / plain's.
TFLOP/s of a window config counts only the visible (q, k) pairs, exactly:
4 B Hq D * sum_i |{j : i + Sk - Sq - left <= j <= i + Sk - Sq + right, 0 <= j < Sk}| / time
(the flops column holds the count each row used; plain keeps the causal-half convention).
The correctness gate's float64 reference applies the same window, softcap and sinks.

Passes (--pass; fwd, the forward as above, is the default):
  bwd      the backward alone. Ours: flashattn_c.attention_backward(dout, q, k, v, out, lse) on
           the out and lse of one forward of the same family (return_lse=True), per family;
           plain the same without window, softcap or sinks. SDPA (default dispatch and each
           backend pinned) and FlexAttention: their forward runs once on inputs that require
           grad, then torch.autograd.grad(out, (q, k, v[, sinks]), dout, retain_graph=True)
           is timed.
  fwd_bwd  forward and backward together: ours (and plain) through flashattn_c.attention on
           inputs that require grad plus torch.autograd.grad, the baselines the same way.
  Inputs that require grad are leaves sharing q, k, v's memory (SDPA's and FlexAttention's are
  the (B, H, S, D) transposed views, as in the forward); dout is drawn like q (and passed to
  SDPA as its transposed view); sinks, where the config has them, require grad too (gpt-oss
  learns them), so every impl also computes dsinks. TFLOP/s count 2.5x the forward's FLOPs for
  bwd (five matrix products of the forward's size against two: S = Q K^T again, dP = dO V^T,
  dV = P^T dO, dQ = dS K, dK = dS^T Q) and 3.5x for fwd_bwd; windows count visible pairs and
  causal half, as the forward does.
  Correctness gate: each of dq, dk, dv (and dsinks) against a float64 reference: torch autograd
  in float64 of the naive attention on the GPU, in chunks of query rows and q heads (a kv head's
  dk, dv summed over its chunks, so over its GQA group); peer: autograd of the same naive
  attention at the input precision (scores and probabilities rounded to the input dtype as in
  the forward's peer; a kv head's dk, dv of several chunks summed in float32 and rounded once).
  Rule per gradient: max|ours - ref| <= 2 max|peer - ref| + 2 max|(ref + 0.3 - 0.3) - ref|, no
  NaN or inf anywhere in our gradients. Our gradient buffers are NaN-poisoned and passed as
  dq=, dk=, dv= (--no-poison: without); fwd_bwd also checks the gradients autograd returns.
  max_abs_err and tol are those of the gradient nearest its bound; max_abs_err_dq ... tol_dsinks
  hold each one. From seqlen 8192 up the reference covers the first, middle and last kv head
  (each with all its q heads, every batch; the check_scope column names them) because it costs
  float64 matrix products and several float64 copies of each chunk's scores;
  --grad-check-all-heads covers every head. The NaN check always covers the whole buffers.
  --grad-ref-chunk-elems (default 2^28: every suite shape's chunks hold all query rows of a
  head) bounds a chunk and is halved on out-of-memory.
  A family whose backward is not built (or refuses the shape) gets a row "skipped: <reason>".
Peak memory (every pass): torch.cuda.reset_peak_memory_stats, one untimed call,
torch.cuda.max_memory_allocated minus what was allocated before it, plus the high-water mark of
the device's default stream-ordered pool (cudaMallocAsync, which torch's allocator does not
see); the peak_mem_mb column and the MB columns of the printed tables.

Usage (from the repository root, flashattn_c built and importable, torch with CUDA):
    python benches/bench_attention.py --suite all --save-csv --plot
    python benches/bench_attention.py --suite fa --dtype bf16 --causal 0 --impl sm90
    python benches/bench_attention.py --mode latency                    # seed shapes
    python benches/bench_attention.py --suite fa --configs-limit 3      # quick look
    python benches/bench_attention.py --dry-run                         # list configs, no GPU
    python benches/bench_attention.py --report benches/results/X.csv --plot   # re-report a CSV
    python benches/bench_attention.py --suite masks --save-csv --plot   # window/softcap/sinks
    python benches/bench_attention.py --suite fa --causal 1 --window 1024,0 --head-dims 64
    python benches/bench_attention.py --pass bwd --suite fa --save-csv --plot  # backward alone
    python benches/bench_attention.py --pass fwd_bwd --suite llm --impl sm80   # fwd + bwd
    python benches/bench_attention.py --pass bwd --dry-run                     # list bwd configs
    python benches/bench_attention.py --report benches/results/X_bwd.csv --plot

Outputs: progress on stderr; the run header and the summary tables on stdout; with
--save-csv, DIR/fa_<GPU>_<date>.csv (one row per (config, impl); the pass in its `pass` column)
and a sidecar .json header; with --plot, DIR/fa_<GPU>_<date>_<suite>.png per suite fa/llm, and
_masks.png for the window, softcap and sink configs. Passes other than fwd add their name to the
stem: fa_<GPU>_<date>_bwd.csv, fa_<GPU>_<date>_bwd_fa.png, ..._fwd_bwd.csv. Exit status: 0, 1
when one of our impls failed on some config (a "skipped" row, such as a backward that is not
built, is not a failure), 2 when the benchmark cannot run (no torch, GPU or module; --report of
a CSV that cannot be read).
"""
import argparse
import contextlib
import csv
import datetime
import functools
import gc
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import bench_lib as bl  # noqa: E402


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Arguments and the plan
# --------------------------------------------------------------------------------------------

def parse_int_list(text):
    """'512,1k,16k' -> [512, 1024, 16384]."""
    values = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        values.append(int(float(item[:-1]) * 1024) if item.endswith("k") else int(item))
    return values


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="flashattn_c attention forward vs PyTorch SDPA (default dispatch and "
                    "each backend): correctness gate, interleaved timing, CSV, summary, plot.")
    p.add_argument("--suite", default=None,
                   help="seed | fa | llm | masks | all, or a comma list (default: all; seed in "
                        "latency mode)")
    p.add_argument("--dtype", default="both", help="bf16 | fp16 | both (default both)")
    p.add_argument("--causal", default="both", help="0 | 1 | both (default both)")
    p.add_argument("--repeats", type=int, default=30, help="timed repetitions (default 30)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up calls per impl (default 10)")
    p.add_argument("--pass", dest="pass_", choices=bl.PASSES, default="fwd",
                   help="fwd: the forward (default); bwd: the backward alone, from one "
                        "forward's out and lse; fwd_bwd: forward + backward through autograd")
    p.add_argument("--mode", choices=("throughput", "latency", "both"), default="throughput",
                   help="throughput: CUDA events; latency: Python wall clock per call; "
                        "both: throughput for --suite, then latency for the seed shapes")
    p.add_argument("--impl", default=None,
                   help="our kernel families, comma list of sm90, sm80, auto (kernel=None), "
                        "or none (default: every family of this build that runs on this GPU)")
    p.add_argument("--baselines", default="default,flash,cudnn,efficient,flex,plain",
                   help="comma list of SDPA backends default, flash, cudnn, efficient (configs "
                        "without window, softcap or sinks) and flex, plain (configs with them), "
                        "or none (default: all)")
    p.add_argument("--window", default=None, metavar="L,R",
                   help="add a sliding window (left, right; -1 unbounded, bottom-right aligned; "
                        "causal makes right 0) to every config of the chosen suites")
    p.add_argument("--softcap", type=float, default=None,
                   help="add a softcap c > 0 to every config of the chosen suites")
    p.add_argument("--sinks", action="store_true",
                   help="add attention sinks (one random logit per q head) to every config")
    p.add_argument("--save-csv", action="store_true", help="write the CSV and its .json header")
    p.add_argument("--output-dir", default=os.path.join(REPO, "benches", "results"),
                   help="where CSV, JSON and PNG go (default benches/results/)")
    p.add_argument("--plot", action="store_true",
                   help="PNG per suite fa/llm: TFLOP/s vs seqlen, bars per impl (matplotlib)")
    p.add_argument("--configs-limit", "--limit", dest="configs_limit", type=int, default=None,
                   help="at most N configs per suite, for quick runs")
    p.add_argument("--head-dims", default=None, help="only these head dims, e.g. 64,128")
    p.add_argument("--seqlens", default=None, help="only these seqlens, e.g. 512,4k")
    p.add_argument("--max-seconds-per-config", type=float, default=5.0,
                   help="time budget of the timed repetitions of one config; repetitions "
                        "are reduced (to no fewer than 10) to fit (default 5)")
    p.add_argument("--latency-calls", type=int, default=100,
                   help="calls per repetition in latency mode (default 100; fewer for slow "
                        "kernels)")
    p.add_argument("--ref-chunk-elems", type=int, default=1 << 26,
                   help="score elements per float64 reference chunk (bounds its memory)")
    p.add_argument("--grad-ref-chunk-elems", type=int, default=1 << 28,
                   help="score elements per chunk of the backward's float64 reference (it "
                        "holds a few float64 copies of a chunk's scores; halved on "
                        "out-of-memory; default 2^28, one 16k x 16k head)")
    p.add_argument("--grad-check-all-heads", action="store_true",
                   help="backward check: every head at every seqlen (default: the first, middle "
                        "and last kv head from seqlen %d up)" % bl.GRAD_CHECK_SUBSET_FROM)
    p.add_argument("--seed", type=int, default=0, help="input RNG seed (default 0)")
    p.add_argument("--device", type=int, default=0, help="CUDA device ordinal (default 0)")
    p.add_argument("--no-poison", action="store_true",
                   help="check ours without out= (no NaN-poisoned output buffer; for a backward "
                        "no NaN-poisoned dq=, dk=, dv=)")
    p.add_argument("--git-commit", default=None,
                   help="commit to record when the tree has no .git (default: git rev-parse)")
    p.add_argument("--dry-run", action="store_true", help="print the configs and exit")
    p.add_argument("--report", metavar="CSV", default=None,
                   help="print the summary (and --plot) of an existing CSV; needs no GPU")
    args = p.parse_args(argv)
    try:
        args.dtypes = bl.parse_choice_list(args.dtype, ("bf16", "fp16"))
        args.causals = [bool(int(c)) for c in bl.parse_choice_list(args.causal, ("0", "1"))]
        if args.baselines.strip() == "none":
            args.baseline_list = []
        else:
            args.baseline_list = bl.parse_choice_list(
                args.baselines, bl.SDPA_BACKENDS + bl.MASK_BASELINES, all_word="all")
        args.window_pair = None
        if args.window is not None:
            parts = [x.strip() for x in args.window.split(",")]
            if len(parts) != 2:
                raise ValueError("--window takes LEFT,RIGHT, got %r" % args.window)
            args.window_pair = (int(parts[0]), int(parts[1]))
            if min(args.window_pair) < -1:
                raise ValueError("--window sides must be >= -1, got %r" % args.window)
        if args.softcap is not None and not (args.softcap >= 0 and math.isfinite(args.softcap)):
            raise ValueError("--softcap must be finite and >= 0, got %r" % args.softcap)
        if args.impl is None:
            args.families = None
        elif args.impl.strip() == "none":
            args.families = []
        else:
            args.families = bl.parse_choice_list(args.impl, bl.OUR_CHOICES, both_word="",
                                                 all_word="")
        default_suite = "seed" if args.mode == "latency" else "all"
        args.suites = bl.parse_choice_list(args.suite or default_suite, bl.SUITES)
        args.head_dim_filter = parse_int_list(args.head_dims) if args.head_dims else None
        args.seqlen_filter = parse_int_list(args.seqlens) if args.seqlens else None
    except ValueError as e:
        p.error(str(e))
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.grad_ref_chunk_elems < 1:
        p.error("--grad-ref-chunk-elems must be >= 1")
    return args


def build_plan(args):
    """[(mode, Config)] in run order; --window / --softcap / --sinks applied to every config."""
    def configs(suites):
        out = []
        for suite in suites:
            out += bl.suite_configs(suite, args.dtypes, args.causals, args.head_dim_filter,
                                    args.seqlen_filter, args.configs_limit)
        return [c.with_extras(getattr(args, "window_pair", None), getattr(args, "softcap", None),
                              True if getattr(args, "sinks", False) else None) for c in out]
    if args.mode == "both":
        return ([("throughput", c) for c in configs(args.suites)]
                + [("latency", c) for c in configs(["seed"])])
    return [(args.mode, c) for c in configs(args.suites)]


# --------------------------------------------------------------------------------------------
# Environment and header
# --------------------------------------------------------------------------------------------

def run_text(cmd, timeout=15):
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def nvidia_smi_info(props, device_index):
    """driver_version, clocks.sm, clocks.max.sm of this GPU (matched by UUID), or {}."""
    fields = ["uuid", "driver_version", "clocks.sm", "clocks.max.sm"]
    text = run_text(["nvidia-smi", "--query-gpu=" + ",".join(fields),
                     "--format=csv,noheader,nounits"])
    if not text:
        return {}
    lines = [dict(zip(fields, [x.strip() for x in line.split(",")]))
             for line in text.splitlines() if line.strip()]
    uuid = str(getattr(props, "uuid", "") or "").lower()
    for info in lines:
        if uuid and info.get("uuid", "").lower().endswith(uuid):
            return info
    if len(lines) == 1:
        return lines[0]
    if "CUDA_VISIBLE_DEVICES" not in os.environ and device_index < len(lines):
        return lines[device_index]
    return {"driver_version": lines[0].get("driver_version")}


def driver_from_libcuda():
    try:
        import ctypes
        lib = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(version)) == 0:
            return "cuda-driver-api %d.%d" % (version.value // 1000, (version.value % 1000) // 10)
    except OSError:
        pass
    return "unknown"


def git_commit(override, build_info):
    if override:
        return override
    head = run_text(["git", "-C", REPO, "rev-parse", "HEAD"])
    if head:
        dirty = run_text(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"])
        return head + ("-dirty" if dirty else "")
    for key in ("git_commit", "commit"):
        if isinstance(build_info, dict) and build_info.get(key):
            return str(build_info[key])
    return "unknown"


def collect_env(torch, fa, args, build_info):
    props = torch.cuda.get_device_properties(args.device)
    smi = nvidia_smi_info(props, args.device)
    now = datetime.datetime.now()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    env = {
        "gpu": props.name,
        "sm_count": props.multi_processor_count,
        "driver": smi.get("driver_version") or driver_from_libcuda(),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "cudnn": str(cudnn) if cudnn is not None else "none",
        "git_commit": git_commit(args.git_commit, build_info),
        "date": now.isoformat(timespec="seconds"),
    }
    header = dict(env)
    header.update({
        "compute_capability": "%d.%d" % (props.major, props.minor),
        "clocks_sm_mhz": smi.get("clocks.sm"),
        "clocks_max_sm_mhz": smi.get("clocks.max.sm"),
        "flashattn_c_file": getattr(fa, "__file__", None),
        "flashattn_c_version": getattr(fa, "__version__", None),
        "build_info": build_info,
        "python": sys.version.split()[0],
        "argv": sys.argv,
        "timing": "throughput: CUDA events per repetition after a GPU busy-wait that lets the "
                  "host enqueue ahead; calls_per_rep back-to-back calls per repetition; impls "
                  "interleaved, rotating start; no L2 flush. latency: perf_counter around N "
                  "calls + one synchronize",
        "ci95": "order statistics of the median, exact binomial(n, 1/2) coverage >= 0.95 "
                "(ci95_coverage column); [min, max] when n <= 5",
        "pass": args.pass_,
        "correctness": "max|ours-ref| <= 2 max|peer-ref| + 2 max|(ref+0.3-0.3)-ref|, no NaN; "
                       "ref float64 on the GPU; peer: scores, softmax and output rounded to "
                       "the input dtype (torch matmul at the input dtype); window, softcap "
                       "and sinks applied to both",
        "flops": "4 B Hq Sq Sk D, halved for causal; with a window 4 B Hq D x the visible "
                 "(q, k) pairs, exactly (bench_lib.visible_pairs); the flops column",
        "peak_mem": "torch.cuda.max_memory_allocated over one untimed call after "
                    "reset_peak_memory_stats, minus memory_allocated before it, plus the "
                    "high-water mark of the device's default cudaMallocAsync pool over the "
                    "call; MiB",
        "mask_baselines": "flex: torch.compile(flex_attention), block mask of the window, tanh "
                          "score_mod, sinks as out * sigmoid(lse - sink); plain: our kernel at "
                          "the shape and causal flag without window, softcap or sinks",
    })
    if args.pass_ != "fwd":
        header["correctness"] = (
            "per gradient (dq, dk, dv, dsinks): max|ours-ref| <= 2 max|peer-ref| + "
            "2 max|(ref+0.3-0.3)-ref|, no NaN or inf in our gradients (NaN-poisoned dq=, dk=, "
            "dv= buffers; fwd_bwd also autograd's gradients); ref: torch autograd in float64 "
            "of the naive attention on the GPU, chunked over query rows and q heads, a kv head's "
            "dk, dv summed over its chunks (its GQA group); peer: autograd of the naive "
            "attention at the input precision (the forward's peer), a kv head's chunk "
            "gradients summed in float32 and rounded once; from seqlen %d up the first, middle "
            "and last kv head unless --grad-check-all-heads (check_scope column)"
            % bl.GRAD_CHECK_SUBSET_FROM)
        header["flops"] = ("%gx the forward's: " % bl.pass_flops_factor(args.pass_)
                           + header["flops"])
        if args.pass_ == "bwd":
            header["grad_timing"] = (
                "ours, plain: attention_backward on one forward's out and lse; SDPA, "
                "FlexAttention: one forward on leaves requiring grad ((B, H, S, D) views of the "
                "same memory), then torch.autograd.grad(out, (q, k, v[, sinks]), dout, "
                "retain_graph=True) timed")
        else:
            header["grad_timing"] = (
                "every impl: its forward on leaves requiring grad (SDPA, FlexAttention: "
                "(B, H, S, D) views of the same memory) and torch.autograd.grad(out, "
                "(q, k, v[, sinks]), dout) timed together")
    return env, header, now.strftime("%Y-%m-%d")


def print_header(header):
    print("# flashattn_c attention benchmark")
    for key, value in header.items():
        if key in ("argv",):
            value = " ".join(value)
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
        print("# %s: %s" % (key, value))
    sys.stdout.flush()


def import_flashattn():
    """The installed module, else the in-tree build (python setup.py build_ext --inplace)."""
    try:
        import flashattn_c
        return flashattn_c, None
    except ImportError as first:
        if REPO not in sys.path:
            sys.path.insert(0, REPO)
            try:
                import flashattn_c
                return flashattn_c, None
            except ImportError as second:
                return None, second
        return None, first


# --------------------------------------------------------------------------------------------
# Impls
# --------------------------------------------------------------------------------------------

class Impl:
    """One thing timed on a config: a call, the context it runs in, and what became of it."""

    def __init__(self, name, call, context=contextlib.nullcontext, family=None, flops=None):
        self.name = name
        self.call = call
        self.context = context
        self.family = family
        self.flops = flops          # FLOPs its tflops counts (None: the config's)
        self.status = bl.STATUS_OK
        self.output = None          # (B, Sq, Hq, D) view of the first call's output
        self.launch = None          # fa.last_launch() after the correctness call
        self.max_abs_err = None
        self.tol = None
        self.samples = []
        self.calls_per_rep = None
        self.est_gpu_ms = None
        self.est_host_ms = None
        self.hold_ms = 0.0
        self.peak_mem_mb = None     # measure_peaks
        self.grads = None           # [{dq, dk, dv[, dsinks]}] in our layout, for check_grads
        self.grad_errs = {}         # gradient name -> max|grad - ref|
        self.grad_tols = {}         # gradient name -> the rule's bound (ours only)
        self.check_scope = None     # which heads the gradient check covered
        self.fwd_launch = None      # fwd_bwd: the forward's last_launch()

    @property
    def ok(self):
        return self.status == bl.STATUS_OK


class GpuHold:
    """A GPU busy-wait on the current stream (torch.cuda._sleep), calibrated in ms."""

    def __init__(self, torch):
        self.torch = torch
        self.sleep = getattr(torch.cuda, "_sleep", None)
        self.cycles_per_ms = None
        if self.sleep is not None:
            self.sleep(10000)
            torch.cuda.synchronize()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            self.sleep(2_000_000)
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
            if ms > 0:
                self.cycles_per_ms = 2_000_000 / ms
        self.available = self.cycles_per_ms is not None

    def __call__(self, ms):
        if self.available and ms > 0:
            self.sleep(int(ms * self.cycles_per_ms))


class PoolPeak:
    """Growth of the device's default stream-ordered memory pool over a call: memory taken with
    cudaMallocAsync (as a C library may take its workspace) is invisible to torch's caching
    allocator, whose statistics measure_peaks reads. Driver API through ctypes; unavailable
    (grown() == 0) without libcuda or when torch itself allocates from a pool
    (PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync), whose memory torch already counts."""

    USED_MEM_CURRENT = 7     # CUmemPool_attribute (cuda.h)
    USED_MEM_HIGH = 8

    def __init__(self, torch, device_index):
        import ctypes
        self.ctypes = ctypes
        self.pool = None
        self.base = 0
        try:
            if torch.cuda.get_allocator_backend() != "native":
                return
            lib = ctypes.CDLL("libcuda.so.1")
            dev = ctypes.c_int()
            pool = ctypes.c_void_p()
            if (lib.cuDeviceGet(ctypes.byref(dev), ctypes.c_int(device_index)) != 0
                    or lib.cuDeviceGetDefaultMemPool(ctypes.byref(pool), dev) != 0):
                return
            self.lib, self.pool = lib, pool
            self._get(self.USED_MEM_HIGH)
        except (OSError, AttributeError, RuntimeError):
            self.pool = None

    def _get(self, attr):
        value = self.ctypes.c_uint64(0)
        if self.lib.cuMemPoolGetAttribute(self.pool, attr, self.ctypes.byref(value)) != 0:
            raise RuntimeError("cuMemPoolGetAttribute(%d) failed" % attr)
        return value.value

    def reset(self):
        """Start a measurement: note the pool's use now and zero its high-water mark (the only
        value the driver lets it be set to), so grown() sees this call's peak alone."""
        if self.pool is None:
            return
        try:
            self.base = self._get(self.USED_MEM_CURRENT)
            zero = self.ctypes.c_uint64(0)
            if self.lib.cuMemPoolSetAttribute(self.pool, self.USED_MEM_HIGH,
                                              self.ctypes.byref(zero)) != 0:
                raise RuntimeError("cuMemPoolSetAttribute failed")
        except RuntimeError:
            self.pool = None

    def grown(self):
        """Bytes the pool's use rose above its level at reset() (0 when unavailable)."""
        if self.pool is None:
            return 0
        try:
            return max(0, self._get(self.USED_MEM_HIGH) - self.base)
        except RuntimeError:
            self.pool = None
            return 0


class Bench:
    def __init__(self, torch, fa, args, env):
        self.torch = torch
        self.fa = fa
        self.args = args
        self.env = env
        self.device = torch.device("cuda", args.device)
        self.hold = GpuHold(torch)
        self.pool = PoolPeak(torch, args.device)
        from torch.nn.attention import SDPBackend, sdpa_kernel
        self.sdpa_kernel = sdpa_kernel
        self.backends = {"flash": SDPBackend.FLASH_ATTENTION,
                         "cudnn": SDPBackend.CUDNN_ATTENTION,
                         "efficient": SDPBackend.EFFICIENT_ATTENTION}
        self.sinks = None            # the current config's sink logits (make_inputs)
        self.flex_compiled = None    # torch.compile(flex_attention), made on first use

    # ---- inputs and impls -------------------------------------------------------------------

    def make_inputs(self, cfg, index):
        torch = self.torch
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.dtype]
        torch.manual_seed(self.args.seed * 1000003 + index)
        q = torch.randn(cfg.B, cfg.Sq, cfg.Hq, cfg.D, device=self.device, dtype=dtype)
        k = torch.randn(cfg.B, cfg.Sk, cfg.Hkv, cfg.D, device=self.device, dtype=dtype)
        v = torch.randn(cfg.B, cfg.Sk, cfg.Hkv, cfg.D, device=self.device, dtype=dtype)
        # One sink logit per q head, float32 on the device (gpt-oss's are learned, of order 1).
        self.sinks = (torch.randn(cfg.Hq, device=self.device, dtype=torch.float32)
                      if cfg.sinks else None)
        return q, k, v

    def extras(self, cfg):
        """The keyword arguments of fa.attention for the config's window, softcap and sinks
        (none for a config without them, so the plain call stays what it was)."""
        if not cfg.has_extras():
            return {}
        return {"window_size": cfg.window, "softcap": cfg.softcap, "sinks": self.sinks}

    def make_impls(self, cfg, q, k, v, families):
        impls = []
        for fam in families:
            kernel = None if fam == "auto" else fam
            call = functools.partial(self.fa.attention, q, k, v, causal=cfg.causal, kernel=kernel,
                                     **self.extras(cfg))
            impls.append(Impl(bl.our_impl_name(fam), call, family=fam))
        if cfg.has_extras():
            return impls + self.make_mask_baselines(cfg, q, k, v, families)
        sdpa = self.torch.nn.functional.scaled_dot_product_attention
        qs, ks, vs = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        kwargs = {"is_causal": cfg.causal}
        if cfg.Hq != cfg.Hkv:
            kwargs["enable_gqa"] = True
        for backend in self.args.baseline_list:
            if backend not in bl.SDPA_BACKENDS:
                continue
            call = functools.partial(sdpa, qs, ks, vs, **kwargs)
            if backend == "default":
                context = contextlib.nullcontext
            else:
                context = functools.partial(self.sdpa_kernel, self.backends[backend])
            impls.append(Impl("sdpa_" + backend, call, context))
        return impls

    def make_mask_baselines(self, cfg, q, k, v, families):
        """FlexAttention and plain for a config with a window, softcap or sinks."""
        impls = []
        if bl.FLEX in self.args.baseline_list:
            impls.append(self.make_flex(cfg, q, k, v))
        if "plain" in self.args.baseline_list:
            plain = cfg.plain()
            for fam in families:
                kernel = None if fam == "auto" else fam
                call = functools.partial(self.fa.attention, q, k, v, causal=cfg.causal,
                                         kernel=kernel)
                impls.append(Impl(bl.plain_impl_name(fam), call, family=fam,
                                  flops=plain.flops()))
        return impls

    def make_flex(self, cfg, q, k, v):
        """FlexAttention on the (B, H, S, D) views: a block mask of the bottom-right window
        (None when it hides nothing), a tanh score_mod for the softcap (FlexAttention scales
        before score_mod, as our softcap does), sinks folded in from its lse. Compiled once
        per process; the block mask is built outside the timed calls."""
        impl = Impl(bl.FLEX, None)
        setup, impl.status = self.flex_setup(cfg, q)
        if setup is None:
            return impl
        flex, kwargs, with_sinks = setup
        qs, ks, vs = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.sinks is None:
            impl.call = functools.partial(flex, qs, ks, vs, **kwargs)
        else:
            impl.call = functools.partial(with_sinks, qs, ks, vs, self.sinks[None, :, None])
        return impl

    def flex_setup(self, cfg, q):
        """((flex, kwargs, with_sinks), STATUS_OK) for the config, or (None, status) where
        FlexAttention is missing or its block mask cannot be built. flex: the compiled
        flex_attention; kwargs: its block mask, score_mod and enable_gqa; with_sinks(qs, ks, vs,
        sink_col): its output with the sinks (sink_col (1, Hq, 1)) in each row's denominator."""
        torch = self.torch
        try:
            from torch.nn.attention import flex_attention as fmod
        except ImportError as e:
            return None, "skipped: FlexAttention is not available in torch %s (%s)" % (
                torch.__version__, one_line(e, 120))
        if self.flex_compiled is None:
            # Every mask config compiles its own graph (its shape, mask_mod and score_mod): past
            # dynamo's recompile limit (8 by default) it would fall back to eager FlexAttention,
            # which materialises the score matrix. Raise the limits for this process.
            dyn = torch._dynamo.config
            for name in ("cache_size_limit", "accumulated_cache_size_limit",
                         "recompile_limit", "accumulated_recompile_limit"):
                if isinstance(getattr(dyn, name, None), int):
                    setattr(dyn, name, max(getattr(dyn, name), 4096))
            self.flex_compiled = torch.compile(fmod.flex_attention, dynamic=False)
        flex = self.flex_compiled
        d, causal = cfg.Sk - cfg.Sq, cfg.causal
        left, right = cfg.window_left, (0 if causal else cfg.window_right)

        def mask_mod(b, h, q_idx, kv_idx):
            diag = q_idx + d
            ok = kv_idx >= 0
            if right >= 0:
                ok = ok & (kv_idx <= diag + right)
            if left >= 0:
                ok = ok & (kv_idx >= diag - left)
            return ok

        score_mod = None
        if cfg.softcap > 0:
            cap = float(cfg.softcap)

            def score_mod(score, b, h, q_idx, kv_idx):
                return cap * torch.tanh(score / cap)

        block_mask = None
        if left >= 0 or right >= 0:
            try:
                block_mask = fmod.create_block_mask(mask_mod, None, None, cfg.Sq, cfg.Sk,
                                                    device=q.device)
            except Exception as e:
                return None, "failed-call: create_block_mask: %s: %s" % (type(e).__name__,
                                                                         one_line(e))
        kwargs = {"score_mod": score_mod, "block_mask": block_mask,
                  "enable_gqa": cfg.Hq != cfg.Hkv}
        aux = getattr(fmod, "AuxRequest", None)

        def with_sinks(qs, ks, vs, sink_col):
            # Each row's denominator gains exp(sink): out * e^lse / (e^lse + e^sink).
            if aux is not None:
                out, extra = flex(qs, ks, vs, return_aux=aux(lse=True), **kwargs)
                lse = extra.lse
            else:
                out, lse = flex(qs, ks, vs, return_lse=True, **kwargs)
            return out * torch.sigmoid(lse - sink_col).unsqueeze(-1).to(out.dtype)

        return (flex, kwargs, with_sinks), bl.STATUS_OK

    # ---- first calls: outputs for the correctness check -------------------------------------

    def first_call_ours(self, impl, cfg, q, k, v):
        torch, fa = self.torch, self.fa
        kernel = None if impl.family == "auto" else impl.family
        try:
            if self.args.no_poison:
                result = fa.attention(q, k, v, causal=cfg.causal, kernel=kernel,
                                      **self.extras(cfg))
                out = result if isinstance(result, torch.Tensor) else torch.from_dlpack(result)
            else:
                out = torch.full_like(q, float("nan"))
                fa.attention(q, k, v, causal=cfg.causal, kernel=kernel, out=out,
                             **self.extras(cfg))
            launch = fa.last_launch()
            torch.cuda.synchronize()
        except Exception as e:  # the library's own errors: a row that says what it raised
            impl.status = "failed-call: %s: %s" % (type(e).__name__, one_line(e))
            return
        impl.launch = dict(launch) if launch else None
        if tuple(out.shape) != tuple(q.shape):
            impl.status = "failed-call: output shape %s, expected %s" % (tuple(out.shape),
                                                                         tuple(q.shape))
            return
        ran = (impl.launch or {}).get("family")
        if kernel is not None and ran != kernel:
            impl.status = "failed-launch: asked for family %s, last_launch() reports %s" % (
                kernel, ran)
            return
        why = self.stream_problem((impl.launch or {}).get("stream"))
        if why:
            impl.status = why
            return
        impl.output = out

    def stream_problem(self, ran_stream):
        """A failed-launch status when a launch ran off torch's current stream, else None.
        The events are recorded on torch's current stream; a kernel on another stream would not
        be inside them. Handles 0 and 1 both name the legacy default stream."""
        torch_stream = self.torch.cuda.current_stream().cuda_stream
        if isinstance(ran_stream, int) and ran_stream != torch_stream and not (
                ran_stream in (0, 1) and torch_stream in (0, 1)):
            return ("failed-launch: ran on stream %#x, torch's current stream is %#x "
                    "(CUDA events would not time it)" % (ran_stream, torch_stream))
        return None

    def first_call_plain(self, impl):
        """Our kernel without the config's extras: run once, record what ran; its output is a
        different attention, so it is not held for the correctness check."""
        torch, fa = self.torch, self.fa
        try:
            impl.call()
            launch = fa.last_launch()
            torch.cuda.synchronize()
        except Exception as e:
            impl.status = "failed-call: %s: %s" % (type(e).__name__, one_line(e))
            return
        impl.launch = dict(launch) if launch else None

    def first_call_sdpa(self, impl):
        torch = self.torch
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with impl.context():
                    out = impl.call()
                torch.cuda.synchronize()
            except Exception as e:
                impl.status = self.baseline_error_status(e, caught)
                return
        impl.output = out.transpose(1, 2)

    def baseline_error_status(self, exc, caught):
        """The row status of a baseline whose first call raised: "skipped: <why>" where the
        backend refuses the shape (with the warnings that say why), else "failed-call: ..."."""
        torch = self.torch
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return "failed-call: OutOfMemoryError: %s" % one_line(exc, 150)
        if isinstance(exc, RuntimeError):
            text = str(exc)
            refusals = ("no available kernel", "no viable backend", "not supported")
            if any(r in text.lower() for r in refusals):
                reasons = [str(w.message) for w in caught] + [text]
                return "skipped: " + one_line("; ".join(reasons))
            return "failed-call: RuntimeError: " + one_line(text)
        # FlexAttention's compiler errors, among others
        return "failed-call: %s: %s" % (type(exc).__name__, one_line(exc))

    # ---- correctness ------------------------------------------------------------------------

    def reference_errors(self, cfg, q, k, v, outputs):
        """max|out - ref| per output, max|peer - ref|, max|(ref+0.3-0.3) - ref|; ref in float64,
        computed chunk by chunk (bl.reference_chunks) so memory stays bounded."""
        torch = self.torch
        B, Sq, Hq, D = q.shape
        Sk, Hkv = k.shape[1], k.shape[2]
        group = Hq // Hkv
        scale = 1.0 / math.sqrt(D)
        zero = torch.zeros((), dtype=torch.float64, device=q.device)
        errs = {name: zero.clone() for name in outputs}
        peer_err, round_err = zero.clone(), zero.clone()
        rows = torch.arange(Sq, device=q.device)
        cols = torch.arange(Sk, device=q.device)
        left, right = cfg.window_left, (0 if cfg.causal else cfg.window_right)
        sinks = self.sinks if cfg.sinks else None

        def softmax_with_sink(s, sink):
            if sink is None:
                return torch.softmax(s, dim=-1)
            # The sink joins each row's denominator: exp(s - lse), lse over keys and sink.
            lse = torch.logaddexp(torch.logsumexp(s, dim=-1, keepdim=True), sink)
            return torch.exp(s - lse)

        kv_key = None
        for (b, h0, h1, r0, r1) in bl.reference_chunks(B, Hq, Sq, Sk, self.args.ref_chunk_elems):
            if kv_key != (b, h0, h1):
                kv_heads = torch.arange(h0, h1, device=q.device) // group
                k_lp = k[b].index_select(1, kv_heads).permute(1, 0, 2)     # (hc, Sk, D)
                v_lp = v[b].index_select(1, kv_heads).permute(1, 0, 2)
                k64, v64 = k_lp.double(), v_lp.double()
                kv_key = (b, h0, h1)
            q_lp = q[b, r0:r1, h0:h1].permute(1, 0, 2)                      # (hc, rows, D)
            # Hidden keys, bottom-right aligned (csrc/common/mask.h): key j is visible to query
            # i when i + Sk - Sq - left <= j <= i + Sk - Sq + right; causal sets right = 0.
            mask = None
            diag = rows[r0:r1, None] + (Sk - Sq)
            if right >= 0:
                mask = cols[None, :] > diag + right
            if left >= 0:
                below = cols[None, :] < diag - left
                mask = below if mask is None else (mask | below)
            sink = None if sinks is None else sinks[h0:h1].double()[:, None, None]
            s64 = torch.matmul(q_lp.double(), k64.transpose(1, 2)).mul_(scale)
            if cfg.softcap > 0:
                s64 = torch.tanh(s64.div_(cfg.softcap)).mul_(cfg.softcap)
            if mask is not None:
                s64.masked_fill_(mask, float("-inf"))
            ref = torch.matmul(softmax_with_sink(s64, sink), v64)          # (hc, rows, D)
            del s64
            s_lp = torch.matmul(q_lp, k_lp.transpose(1, 2)).float().mul_(scale)
            if cfg.softcap > 0:   # the peer's tanh at the input precision, as the tests'
                s_lp = (torch.tanh(s_lp.to(q.dtype) / cfg.softcap) * cfg.softcap).float()
            if mask is not None:
                s_lp.masked_fill_(mask, float("-inf"))
            peer = torch.matmul(softmax_with_sink(s_lp, None if sink is None else sink.float())
                                .to(q.dtype), v_lp)
            del s_lp
            peer_err = torch.maximum(peer_err, (peer.double() - ref).abs().max())
            round_err = torch.maximum(round_err, ((ref + 0.3) - 0.3 - ref).abs().max())
            del peer
            for name, out in outputs.items():
                o = out[b, r0:r1, h0:h1].permute(1, 0, 2).double()
                errs[name] = torch.maximum(errs[name], (o - ref).abs().max())
            del ref
        return ({name: e.item() for name, e in errs.items()}, peer_err.item(), round_err.item())

    def check(self, cfg, q, k, v, impls):
        outputs = {im.name: im.output for im in impls if im.ok and im.output is not None}
        if not outputs:
            return
        errs, peer_err, round_err = self.reference_errors(cfg, q, k, v, outputs)
        for im in impls:
            if im.name not in errs:
                continue
            im.max_abs_err = errs[im.name]
            if bl.is_ours(im.name):
                nonfinite = not bool(self.torch.isfinite(im.output).all().item())
                passed, im.tol = bl.correctness_verdict(im.max_abs_err, peer_err, round_err,
                                                        nonfinite)
                if not passed:
                    im.status = bl.STATUS_FAILED_CORRECTNESS
        for im in impls:
            im.output = None

    # ---- backward passes (--pass bwd, fwd_bwd) ----------------------------------------------

    def make_grad_impls(self, cfg, pass_, q, k, v, dout, families):
        """The impls of a bwd or fwd_bwd config, each through its first call (the forward it
        needs and one backward, whose gradients check_grads reads). Leaves that require grad
        share q, k, v's memory: ours in our layout, SDPA's and FlexAttention's the (B, H, S, D)
        views; the sinks, where the config has them, are one leaf shared by all."""
        sinks_leaf = self.sinks.detach().requires_grad_() if cfg.sinks else None
        ours_leaves = tuple(x.detach().requires_grad_() for x in (q, k, v))
        sdpa_leaves = tuple(x.transpose(1, 2).detach().requires_grad_() for x in (q, k, v))
        impls = [self.ours_grad_impl(bl.our_impl_name(fam), fam, cfg, pass_, q, k, v, dout,
                                     ours_leaves, sinks_leaf, check=True) for fam in families]
        if cfg.has_extras():
            if bl.FLEX in self.args.baseline_list:
                impls.append(self.flex_grad_impl(cfg, pass_, q, sdpa_leaves, sinks_leaf, dout))
            if "plain" in self.args.baseline_list:
                plain = cfg.plain()
                impls += [self.ours_grad_impl(bl.plain_impl_name(fam), fam, plain, pass_, q, k, v,
                                              dout, ours_leaves, None, check=False,
                                              flops=plain.flops(pass_)) for fam in families]
            return impls
        sdpa = self.torch.nn.functional.scaled_dot_product_attention
        kwargs = {"is_causal": cfg.causal}
        if cfg.Hq != cfg.Hkv:
            kwargs["enable_gqa"] = True
        for backend in self.args.baseline_list:
            if backend not in bl.SDPA_BACKENDS:
                continue
            if backend == "default":
                context = contextlib.nullcontext
            else:
                context = functools.partial(self.sdpa_kernel, self.backends[backend])
            forward = functools.partial(sdpa, *sdpa_leaves, **kwargs)
            impls.append(self.autograd_impl("sdpa_" + backend, forward, context, pass_,
                                            sdpa_leaves, dout.transpose(1, 2)))
        return impls

    def grad_dict(self, result, cfg):
        names = bl.GRAD_NAMES[:4 if cfg.sinks else 3]
        result = tuple(result)
        if len(result) < len(names):
            raise ValueError("the backward returned %d gradients, expected %d (%s)"
                             % (len(result), len(names), ", ".join(names)))
        return dict(zip(names, result))

    def ours_error_status(self, exc):
        """A family that cannot run the backward (not built, or refusing the shape) is skipped
        with its reason, as an SDPA backend that refuses a shape; other errors fail the row."""
        text = "%s: %s" % (type(exc).__name__, one_line(exc))
        cuda_error = getattr(self.fa, "CudaError", None)
        if cuda_error is not None and isinstance(exc, cuda_error):
            return "failed-call: " + text
        refusals = ("not built", "not supported", "not implemented", "no backward")
        if (isinstance(exc, (RuntimeError, ValueError, NotImplementedError))
                and not isinstance(exc, self.torch.cuda.OutOfMemoryError)
                and any(r in str(exc).lower() for r in refusals)):
            return "skipped: " + text
        return "failed-call: " + text

    def grad_launch_problem(self, launch, family):
        """A failed-launch status when last_launch() after a backward is not the backward of
        the family asked for, or a launch of its plan ran off torch's stream; else None."""
        if not launch:
            return "failed-launch: last_launch() is empty after the backward"
        kernel = str(launch.get("kernel") or "")
        if not kernel.startswith("bwd_"):
            return ("failed-launch: last_launch() after the backward reports %s, not a backward "
                    "kernel" % kernel)
        if family != "auto" and launch.get("family") != family:
            return "failed-launch: asked for family %s, last_launch() reports %s" % (
                family, launch.get("family"))
        for each in [launch] + list(launch.get("launches") or []):
            why = self.stream_problem(each.get("stream"))
            if why:
                return why
        return None

    def ours_grad_impl(self, name, family, cfg, pass_, q, k, v, dout, leaves, sinks_leaf, check,
                       flops=None):
        """Our family on a bwd or fwd_bwd config. bwd: attention_backward on the out and lse of
        one forward of the family; fwd_bwd: attention on the leaves + torch.autograd.grad. With
        check, the gradients of the first call are kept for check_grads: from NaN-poisoned dq=,
        dk=, dv= buffers (unless --no-poison), and for fwd_bwd also autograd's."""
        torch, fa = self.torch, self.fa
        kernel = "auto" if family == "auto" else family
        extras = self.extras(cfg)
        poison = check and not self.args.no_poison
        im = Impl(name, None, family=family, flops=flops)
        grads = []
        try:
            fwd_launch = None
            out, lse = fa.attention(q, k, v, causal=cfg.causal, kernel=kernel,
                                    return_lse=True, **extras)
            backward = functools.partial(fa.attention_backward, dout, q, k, v, out, lse,
                                         causal=cfg.causal, kernel=kernel, **extras)
            if pass_ == "bwd":
                im.call = backward
                if poison:
                    bufs = {"dq": torch.full_like(q, float("nan")),
                            "dk": torch.full_like(k, float("nan")),
                            "dv": torch.full_like(v, float("nan"))}
                    result = self.grad_dict(backward(**bufs), cfg)
                    grads.append(dict(result, **bufs))
                else:
                    result = self.grad_dict(backward(), cfg)
                    if check:
                        grads.append(result)
                launch = fa.last_launch()
            else:
                ql, kl, vl = leaves
                inputs = leaves + ((sinks_leaf,) if cfg.sinks else ())
                grad_extras = dict(extras)
                if cfg.sinks:
                    grad_extras["sinks"] = sinks_leaf

                def call():
                    out = fa.attention(ql, kl, vl, causal=cfg.causal, kernel=kernel,
                                       **grad_extras)
                    return torch.autograd.grad(out, inputs, dout)

                im.call = call
                out_g = fa.attention(ql, kl, vl, causal=cfg.causal, kernel=kernel, **grad_extras)
                fwd_launch = fa.last_launch()
                result = self.grad_dict(torch.autograd.grad(out_g, inputs, dout), cfg)
                del out_g
                if check:
                    grads.append(result)
                # Autograd ran the backward on its own thread, whose launch record this thread
                # cannot read (last_launch() is per thread): the same backward called here
                # gives the record.
                if poison:
                    bufs = {"dq": torch.full_like(q, float("nan")),
                            "dk": torch.full_like(k, float("nan")),
                            "dv": torch.full_like(v, float("nan"))}
                    grads.append(dict(self.grad_dict(backward(**bufs), cfg), **bufs))
                else:
                    backward()
                launch = fa.last_launch()
            torch.cuda.synchronize()
        except Exception as e:  # the library's own errors: a row that says what it raised
            im.status = self.ours_error_status(e)
            return im
        im.launch = dict(launch) if launch else None
        im.fwd_launch = dict(fwd_launch) if fwd_launch else None
        why = self.grad_launch_problem(im.launch, family)
        if why:
            im.status = why
            return im
        im.grads = grads or None
        return im

    def autograd_impl(self, name, forward, context, pass_, inputs, dout_s, flops=None):
        """A baseline through torch autograd: forward() -> out (B, H, S, D) from the leaves
        `inputs` ((B, H, S, D) views, then the sinks). bwd times
        torch.autograd.grad(out, inputs, dout_s, retain_graph=True) on one forward; fwd_bwd
        times forward and grad together. Runs its first call; refusals as first_call_sdpa."""
        torch = self.torch
        im = Impl(name, None, context, flops=flops)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with context():
                    if pass_ == "bwd":
                        out = forward()
                        im.call = functools.partial(torch.autograd.grad, out, inputs, dout_s,
                                                    retain_graph=True)
                    else:
                        def call():
                            return torch.autograd.grad(forward(), inputs, dout_s)

                        im.call = call
                    result = im.call()
                torch.cuda.synchronize()
            except Exception as e:
                im.status = self.baseline_error_status(e, caught)
                return im
        result = [g.transpose(1, 2) for g in result[:3]] + list(result[3:])
        im.grads = [dict(zip(bl.GRAD_NAMES, result))]
        return im

    def flex_grad_impl(self, cfg, pass_, q, leaves, sinks_leaf, dout):
        setup, status = self.flex_setup(cfg, q)
        if setup is None:
            im = Impl(bl.FLEX, None)
            im.status = status
            return im
        flex, kwargs, with_sinks = setup
        qs, ks, vs = leaves
        if sinks_leaf is None:
            forward = functools.partial(flex, qs, ks, vs, **kwargs)
            inputs = leaves
        else:
            def forward():
                return with_sinks(qs, ks, vs, sinks_leaf[None, :, None])
            inputs = leaves + (sinks_leaf,)
        return self.autograd_impl(bl.FLEX, forward, contextlib.nullcontext, pass_, inputs,
                                  dout.transpose(1, 2))

    def grad_reference_errors(self, cfg, q, k, v, dout, outputs, kv_heads, budget):
        """Per output key and gradient max|grad - ref|, and per gradient max|peer - ref| and
        max|(ref + 0.3 - 0.3) - ref|, over the q heads of kv_heads (every batch and row). ref:
        torch autograd in float64 of the naive attention; peer: autograd of it at the input
        precision (the forward's peer: scores and probabilities rounded to the input dtype,
        softmax in float32). Chunk by chunk (bl.grad_reference_chunks): dq is whole in each
        chunk; a kv head's dk, dv add up over its chunks (its GQA group), the peer's in float32,
        rounded to the input dtype once; dsinks add up over batches and rows."""
        torch = self.torch
        B, Sq, Hq, D = q.shape
        Sk, Hkv = k.shape[1], k.shape[2]
        G = Hq // Hkv
        scale = 1.0 / math.sqrt(D)
        dtype, dev = q.dtype, q.device
        f64 = torch.float64
        cap = float(cfg.softcap)
        sinks = self.sinks if cfg.sinks else None
        names = bl.GRAD_NAMES[:4 if sinks is not None else 3]
        zero = torch.zeros((), dtype=f64, device=dev)
        errs = {key: {g: zero.clone() for g in names} for key in outputs}
        peer_err = {g: zero.clone() for g in names}
        round_err = {g: zero.clone() for g in names}
        rows = torch.arange(Sq, device=dev)
        cols = torch.arange(Sk, device=dev)
        left, right = cfg.window_left, (0 if cfg.causal else cfg.window_right)
        kv_index = torch.tensor(sorted(kv_heads), device=dev)
        q_index = (kv_index[:, None] * G + torch.arange(G, device=dev)[None, :]).flatten()

        def fold(g, ref, peer, ours_of):
            peer_err[g] = torch.maximum(peer_err[g], (peer.double() - ref).abs().max())
            round_err[g] = torch.maximum(round_err[g], ((ref + 0.3) - 0.3 - ref).abs().max())
            for key, grads in outputs.items():
                errs[key][g] = torch.maximum(errs[key][g],
                                             (ours_of(grads).double() - ref).abs().max())

        def attend(qc, kc, vc, sink, mask, low):
            # qc (kvc, gc, rows, D), kc and vc (kvc, Sk, D), sink (kvc, gc) or None
            s = torch.matmul(qc, kc.unsqueeze(1).transpose(2, 3))
            if low:
                s = s.float()
            s = s * scale
            if cap > 0:
                s = ((torch.tanh(s.to(dtype) / cap) * cap).float() if low
                     else torch.tanh(s / cap) * cap)
            if mask is not None:
                s = s.masked_fill(mask, float("-inf"))
            if sink is None:
                p = torch.softmax(s, dim=-1)
            else:   # the sink joins each row's denominator
                lse = torch.logaddexp(torch.logsumexp(s, dim=-1, keepdim=True),
                                      sink[:, :, None, None])
                p = torch.exp(s - lse)
            if low:
                p = p.to(dtype)
            return torch.matmul(p, vc.unsqueeze(1))

        def chunk_of(x, b, kv0, kv1, g0, g1, r0, r1):
            """(kvc, gc, rows, D) piece of a (B, Sq, Hq, D) array."""
            return x[b, r0:r1].unflatten(1, (Hkv, G))[:, kv0:kv1, g0:g1].permute(1, 2, 0, 3)

        def finish(acc):
            b = acc["b"]
            for g in ("dk", "dv"):
                fold(g, acc[g].index_select(0, kv_index),
                     acc[g + "_peer"].index_select(0, kv_index).to(dtype),
                     lambda grads: grads[g][b].index_select(1, kv_index).permute(1, 0, 2))

        if sinks is not None:
            dsink_ref = torch.zeros(Hq, dtype=f64, device=dev)
            dsink_peer = torch.zeros(Hq, dtype=torch.float32, device=dev)
        acc = None
        for chunk in bl.grad_reference_chunks(B, Hq, Hkv, Sq, Sk, budget, kv_heads):
            b, kv0, kv1, g0, g1, r0, r1 = chunk
            if acc is None or acc["b"] != b:
                if acc is not None:
                    finish(acc)
                acc = {"b": b}
                for g in ("dk", "dv"):
                    acc[g] = torch.zeros(Hkv, Sk, D, dtype=f64, device=dev)
                    acc[g + "_peer"] = torch.zeros(Hkv, Sk, D, dtype=torch.float32, device=dev)
            qc = chunk_of(q, *chunk)
            doc = chunk_of(dout, *chunk)
            kc = k[b, :, kv0:kv1].permute(1, 0, 2)
            vc = v[b, :, kv0:kv1].permute(1, 0, 2)
            # Hidden keys, bottom-right aligned (csrc/common/mask.h), as reference_errors.
            mask = None
            diag = rows[r0:r1, None] + (Sk - Sq)
            if right >= 0:
                mask = cols[None, :] > diag + right
            if left >= 0:
                below = cols[None, :] < diag - left
                mask = below if mask is None else (mask | below)
            sink_c = None if sinks is None else sinks.view(Hkv, G)[kv0:kv1, g0:g1]
            ref_in = [x.double().requires_grad_() for x in (qc, kc, vc)]
            peer_in = [x.detach().requires_grad_() for x in (qc, kc, vc)]
            if sink_c is not None:
                ref_in.append(sink_c.double().requires_grad_())
                peer_in.append(sink_c.detach().float().requires_grad_())
            out = attend(*ref_in[:3], ref_in[3] if sink_c is not None else None, mask, False)
            ref_g = torch.autograd.grad(out, ref_in, doc.double())
            del out, ref_in
            out = attend(*peer_in[:3], peer_in[3] if sink_c is not None else None, mask, True)
            peer_g = torch.autograd.grad(out, peer_in, doc)
            del out, peer_in
            fold("dq", ref_g[0], peer_g[0],
                 lambda grads: chunk_of(grads["dq"], *chunk))
            for i, g in ((1, "dk"), (2, "dv")):
                acc[g][kv0:kv1] += ref_g[i]
                acc[g + "_peer"][kv0:kv1] += peer_g[i].float()
            if sink_c is not None:
                dsink_ref.view(Hkv, G)[kv0:kv1, g0:g1] += ref_g[3]
                dsink_peer.view(Hkv, G)[kv0:kv1, g0:g1] += peer_g[3].float()
            del ref_g, peer_g
        if acc is not None:
            finish(acc)
        if sinks is not None:
            fold("dsinks", dsink_ref.index_select(0, q_index), dsink_peer.index_select(0, q_index),
                 lambda grads: grads["dsinks"].index_select(0, q_index))
        return ({key: {g: e.item() for g, e in per.items()} for key, per in errs.items()},
                {g: e.item() for g, e in peer_err.items()},
                {g: e.item() for g, e in round_err.items()})

    def check_grads(self, cfg, q, k, v, dout, impls):
        """The correctness gate of a backward pass: every gradient of every impl that ran
        against the float64 reference (bl.grad_verdict for ours; the others' errors are
        recorded); our gradients must also be finite everywhere (the poisoned buffers)."""
        torch = self.torch
        outputs = {}
        for im in impls:
            if im.ok and im.grads:
                for i, grads in enumerate(im.grads):
                    outputs[(im.name, i)] = grads
        if outputs:
            kv_heads = bl.grad_check_kv_heads(cfg.Hkv, cfg.Sq, cfg.Sk,
                                              self.args.grad_check_all_heads)
            scope = bl.grad_check_scope(cfg.Hq, cfg.Hkv, kv_heads)
            errs, peer_err, round_err = self.grad_reference_retrying(cfg, q, k, v, dout, outputs,
                                                                     kv_heads)
            for im in impls:
                keys = [key for key in outputs if key[0] == im.name]
                if not keys:
                    continue
                per = {g: nan_max(errs[key][g] for key in keys) for g in errs[keys[0]]}
                nonfinite = bl.is_ours(im.name) and any(
                    not bool(torch.isfinite(t).all().item())
                    for key in keys for t in outputs[key].values())
                passed, worst, per_grad = bl.grad_verdict(per, peer_err, round_err, nonfinite)
                im.check_scope = scope
                im.grad_errs = {g: e for g, (e, _, _) in per_grad.items()}
                im.max_abs_err = per_grad[worst][0]
                if bl.is_ours(im.name):
                    im.grad_tols = {g: t for g, (_, t, _) in per_grad.items()}
                    im.tol = per_grad[worst][1]
                    if not passed:
                        im.status = bl.STATUS_FAILED_CORRECTNESS
        for im in impls:
            im.grads = None

    def grad_reference_retrying(self, cfg, q, k, v, dout, outputs, kv_heads):
        """grad_reference_errors at --grad-ref-chunk-elems, halving the chunks on
        out-of-memory (down to one row of one head)."""
        torch = self.torch
        budget = self.args.grad_ref_chunk_elems
        while True:
            try:
                return self.grad_reference_errors(cfg, q, k, v, dout, outputs, kv_heads, budget)
            except torch.cuda.OutOfMemoryError:
                if budget <= cfg.Sk:
                    raise
            # Outside the except block, so the failed attempt's tensors are released first.
            budget = max(cfg.Sk, budget // 2)
            gc.collect()
            torch.cuda.empty_cache()
            log("[bench]   backward reference out of memory; retrying with %d score elements "
                "per chunk" % budget)

    def run_grad_config(self, mode, cfg, index, families, pass_):
        torch = self.torch
        q, k, v = self.make_inputs(cfg, index)
        dout = torch.randn_like(q)
        impls = self.make_grad_impls(cfg, pass_, q, k, v, dout, families)
        self.check_grads(cfg, q, k, v, dout, impls)
        return self.measure(mode, cfg, impls, pass_)

    # ---- peak memory ------------------------------------------------------------------------

    def measure_peaks(self, impls):
        """peak_mem_mb of each impl still running: one untimed call between
        torch.cuda.reset_peak_memory_stats and max_memory_allocated, less what was allocated
        before it, plus what the default cudaMallocAsync pool grew by (PoolPeak)."""
        torch = self.torch
        for im in impls:
            if not im.ok or im.call is None:
                continue
            try:
                with im.context():
                    torch.cuda.synchronize()
                    before = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                    self.pool.reset()
                    result = im.call()
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated() - before + self.pool.grown()
                del result
            except Exception as e:
                self._drop(im, e)
                continue
            im.peak_mem_mb = max(0, peak) / 2 ** 20

    # ---- timing -----------------------------------------------------------------------------

    def _drop(self, impl, exc):
        impl.status = "failed-call: %s: %s" % (type(exc).__name__, one_line(exc))
        impl.samples = []

    def time_throughput(self, impls):
        torch, args = self.torch, self.args
        Event = functools.partial(torch.cuda.Event, enable_timing=True)
        active = [im for im in impls if im.ok]
        for _ in range(args.warmup):
            for im in list(active):
                try:
                    with im.context():
                        im.call()
                except Exception as e:
                    self._drop(im, e)
                    active.remove(im)
        torch.cuda.synchronize()
        est_calls = 3
        for im in list(active):
            try:
                with im.context():
                    self.hold(2.0)
                    start, end = Event(), Event()
                    t0 = time.perf_counter()
                    start.record()
                    for _ in range(est_calls):
                        im.call()
                    end.record()
                    host_s = time.perf_counter() - t0
                torch.cuda.synchronize()
            except Exception as e:
                self._drop(im, e)
                active.remove(im)
                continue
            im.est_gpu_ms = start.elapsed_time(end) / est_calls
            im.est_host_ms = host_s * 1e3 / est_calls
            im.calls_per_rep = bl.calls_per_rep(im.est_gpu_ms)
            im.hold_ms = (bl.hold_ms(im.est_host_ms, im.calls_per_rep)
                          if self.hold.available else 0.0)
        round_ms = sum(im.est_gpu_ms * im.calls_per_rep + im.hold_ms for im in active)
        repeats = bl.repeats_within_budget(args.repeats, round_ms, args.max_seconds_per_config)
        for r in range(repeats):
            if not active:
                break
            shift = r % len(active)
            pending = []
            for im in active[shift:] + active[:shift]:
                try:
                    with im.context():
                        self.hold(im.hold_ms)
                        start, end = Event(), Event()
                        start.record()
                        for _ in range(im.calls_per_rep):
                            im.call()
                        end.record()
                    pending.append((im, start, end))
                except Exception as e:
                    self._drop(im, e)
            torch.cuda.synchronize()
            for im, start, end in pending:
                if im.ok:
                    im.samples.append(start.elapsed_time(end) / im.calls_per_rep)
            active = [im for im in active if im.ok]

    def time_latency(self, impls):
        torch, args = self.torch, self.args
        active = [im for im in impls if im.ok]
        for im in list(active):
            try:
                with im.context():
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    for _ in range(max(1, args.warmup)):
                        im.call()
                    torch.cuda.synchronize()
                    per_call_ms = (time.perf_counter() - t0) * 1e3 / max(1, args.warmup)
            except Exception as e:
                self._drop(im, e)
                active.remove(im)
                continue
            # Slow kernels get fewer calls per repetition: about 20 ms of calls at least 5.
            im.calls_per_rep = int(min(args.latency_calls, max(5, 20.0 / max(per_call_ms, 1e-6))))
            im.est_gpu_ms = per_call_ms
        round_ms = sum(im.est_gpu_ms * im.calls_per_rep for im in active)
        repeats = bl.repeats_within_budget(args.repeats, round_ms, args.max_seconds_per_config)
        for r in range(repeats):
            if not active:
                break
            shift = r % len(active)
            for im in active[shift:] + active[:shift]:
                try:
                    with im.context():
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        for _ in range(im.calls_per_rep):
                            im.call()
                        torch.cuda.synchronize()
                        t1 = time.perf_counter()
                    im.samples.append((t1 - t0) * 1e3 / im.calls_per_rep)
                except Exception as e:
                    self._drop(im, e)
            active = [im for im in active if im.ok]

    # ---- one config -------------------------------------------------------------------------

    def run_config(self, mode, cfg, index, families, pass_="fwd"):
        if pass_ != "fwd":
            return self.run_grad_config(mode, cfg, index, families, pass_)
        q, k, v = self.make_inputs(cfg, index)
        impls = self.make_impls(cfg, q, k, v, families)
        for im in impls:
            if not im.ok:          # a baseline this torch lacks: its row says why
                continue
            if bl.is_ours(im.name):
                self.first_call_ours(im, cfg, q, k, v)
            elif bl.is_plain(im.name):
                self.first_call_plain(im)
            else:
                self.first_call_sdpa(im)
        self.check(cfg, q, k, v, impls)
        return self.measure(mode, cfg, impls)

    def measure(self, mode, cfg, impls, pass_="fwd"):
        """The rows of a checked config: peak memory, then the timings (the collector off, so
        that no collection lands inside a timed window) of each impl still running."""
        self.measure_peaks(impls)
        gc.collect()
        gc.disable()
        try:
            if mode == "latency":
                self.time_latency(impls)
            else:
                self.time_throughput(impls)
        finally:
            gc.enable()
        return self.rows(mode, cfg, impls, pass_)

    def rows(self, mode, cfg, impls, pass_="fwd"):
        rows = []
        for im in impls:
            fields = {"status": im.status, "max_abs_err": im.max_abs_err, "tol": im.tol,
                      "peak_mem_mb": im.peak_mem_mb, "check_scope": im.check_scope}
            for g, err in im.grad_errs.items():
                fields["max_abs_err_" + g] = err
            for g, tol in im.grad_tols.items():
                fields["tol_" + g] = tol
            if im.ok and not im.samples:
                fields["status"] = "failed-call: no timing samples"
            if im.ok and im.samples:
                lo, hi, coverage = bl.median_ci(im.samples)
                med = bl.median(im.samples)
                flops = im.flops if im.flops is not None else cfg.flops(pass_)
                fields.update(median_ms=med, ci95_lo_ms=lo, ci95_hi_ms=hi, ci95_coverage=coverage,
                              tflops=bl.tflops(flops, med), repeats=len(im.samples),
                              calls_per_rep=im.calls_per_rep, flops=flops)
            if im.launch:
                L = im.launch
                fields.update(kernel=L.get("kernel"), block=L.get("block"), grid=L.get("grid"),
                              smem_bytes=L.get("smem_bytes"), regs=L.get("regs"),
                              stages=L.get("stages"))
                if L.get("block_m") is not None and L.get("block_n") is not None:
                    fields["tile"] = "%sx%s" % (L["block_m"], L["block_n"])
                plan = plan_kernels(im.fwd_launch) + plan_kernels(L)
                fields.update(launches="+".join(plan) or None,
                              workspace_bytes=L.get("workspace_bytes"))
            rows.append(bl.make_row(self.env, cfg, im.name, mode, pass_, **fields))
        return bl.fill_speedups(rows)


def nan_max(values):
    """max() that a NaN wins (Python's max keeps whichever comes first)."""
    values = list(values)
    return math.nan if any(math.isnan(x) for x in values) else max(values)


def plan_kernels(launch):
    """The kernel names of a last_launch() dict's plan, in order ([] for None)."""
    if not launch:
        return []
    return [str(each.get("kernel")) for each in (launch.get("launches") or [launch])]


def impl_names(cfg, families, baselines):
    """The impl names a config's rows carry (as Bench.make_impls builds them)."""
    names = [bl.our_impl_name(f) for f in families]
    if not cfg.has_extras():
        return names + ["sdpa_" + b for b in baselines if b in bl.SDPA_BACKENDS]
    if bl.FLEX in baselines:
        names.append(bl.FLEX)
    if "plain" in baselines:
        names += [bl.plain_impl_name(f) for f in families]
    return names


def describe_rows(rows):
    for r in rows:
        if r["status"] == bl.STATUS_OK:
            err = ("  err %.2e" % r["max_abs_err"]) if r.get("max_abs_err") is not None else ""
            tol = (" <= %.2e" % r["tol"]) if r.get("tol") is not None else ""
            mem = ("  %.0f MB" % r["peak_mem_mb"]) if r.get("peak_mem_mb") is not None else ""
            scope = ("  [%s]" % r["check_scope"]) if r.get("check_scope") not in (
                None, "all heads") else ""
            log("    %-15s %9.4f ms  %7.1f TFLOP/s  (%d reps x %d calls)%s%s%s%s"
                % (r["impl"], r["median_ms"], r["tflops"] or 0.0, r["repeats"] or 0,
                   r["calls_per_rep"] or 0, err, tol, mem, scope))
        else:
            extra = ""
            if r.get("max_abs_err") is not None or r.get("tol") is not None:
                extra = "  (err %s, tol %s)" % tuple(
                    "%.3e" % x if x is not None else "-" for x in (r.get("max_abs_err"), r.get("tol")))
            log("    %-15s %s%s" % (r["impl"], r["status"], extra))


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def plot_all(rows, stem_path, gpu_name=""):
    """The plots of rows, per pass: bl.plot_path names them (a pass other than fwd in the
    name)."""
    written = []
    for pass_ in bl.passes_in(rows):
        sel = [r for r in rows if bl.row_pass(r) == pass_]
        for suite in ("fa", "llm"):
            if not any(r.get("suite") == suite for r in sel):
                continue
            path = bl.plot_suite(sel, suite, bl.plot_path(stem_path, suite, pass_), gpu_name,
                                 pass_)
            if path is None:
                if importlib.util.find_spec("matplotlib") is None:
                    log("[bench] --plot: matplotlib is not importable; no plot written "
                        "(pip install matplotlib)")
                    return written
                log("[bench] plot %s %s: no throughput rows with status ok" % (suite, pass_))
            else:
                written.append(path)
        if any(bl.row_config(r).has_extras() for r in sel):
            path = bl.plot_masks(sel, bl.plot_path(stem_path, "masks", pass_), gpu_name, pass_)
            if path is None:
                if importlib.util.find_spec("matplotlib") is None:
                    log("[bench] --plot: matplotlib is not importable; no plot written "
                        "(pip install matplotlib)")
                    return written
                log("[bench] plot masks %s: no throughput rows with status ok" % pass_)
            else:
                written.append(path)
    if not written and not any(r.get("suite") in ("fa", "llm") or bl.row_config(r).has_extras()
                               for r in rows):
        log("[bench] --plot: plots cover the fa and llm suites and the window, softcap and "
            "sink configs; none in this run")
    return written


def report(args):
    try:
        rows = bl.read_csv(args.report)
        if rows:
            missing = [f for f in ("impl", "status", "suite", "dtype", "B", "Hq", "Sq", "D")
                       if f not in rows[0]]
            if missing:
                raise ValueError("not a bench_attention CSV (no column %s)" % ", ".join(missing))
            for r in rows:   # every row must name its config
                bl.row_config(r)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError, TypeError, KeyError) as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else one_line(e)
        log("bench_attention: --report %s: cannot read it: %s" % (args.report, detail))
        return 2
    if not rows:
        log("bench_attention: --report %s: the CSV has no rows" % args.report)
        return 2
    print(bl.format_summary(rows))
    if args.plot:
        for path in plot_all(rows, os.path.splitext(args.report)[0],
                             rows[0].get("gpu", "") if rows else ""):
            print("plot: %s" % path)
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        return report(args)
    plan = build_plan(args)
    if args.dry_run:
        for i, (mode, cfg) in enumerate(plan):
            print("%3d  %-10s %-7s %-5s %s  (%.3g GFLOP)" % (i + 1, mode, args.pass_, cfg.suite,
                                                            cfg.label(),
                                                            cfg.flops(args.pass_) / 1e9))
        print("%d configs" % len(plan))
        return 0
    if not plan:
        log("bench_attention: no config matches the filters")
        return 2

    try:
        import torch
    except ImportError as e:
        log("bench_attention: PyTorch is not importable (%s). The GPU benchmark needs torch with "
            "CUDA for inputs, baselines and timing; --dry-run and --report CSV run without it."
            % e)
        return 2
    if not torch.cuda.is_available():
        log("bench_attention: torch %s sees no CUDA GPU (torch.cuda.is_available() is False). "
            "Run this on a machine with an NVIDIA GPU and a driver." % torch.__version__)
        return 2
    if args.device >= torch.cuda.device_count():
        log("bench_attention: --device %d, but torch sees %d GPU(s)"
            % (args.device, torch.cuda.device_count()))
        return 2
    fa, err = import_flashattn()
    if fa is None:
        log("bench_attention: flashattn_c is not importable (%s). Build it first: pip install . "
            "(or python setup.py build_ext --inplace)." % err)
        return 2
    torch.cuda.set_device(args.device)
    cc = torch.cuda.get_device_capability(args.device)
    build_info = fa.build_info()
    families, errors = bl.resolve_families(args.families, build_info.get("families"), cc)
    if errors and (args.families is None or args.families):
        for e in errors:
            log("bench_attention: %s" % e)
        if args.families is None:
            log("bench_attention: use --impl none to time the SDPA baselines alone")
        return 2

    env, header, date_str = collect_env(torch, fa, args, build_info)
    header["families"] = families
    header["baselines"] = [b if b in bl.MASK_BASELINES else "sdpa_" + b
                           for b in args.baseline_list]
    header["configs"] = len(plan)
    print_header(header)

    csv_writer = json_path = None
    stem_path = None
    if args.save_csv or args.plot:
        os.makedirs(args.output_dir, exist_ok=True)
        tag = "latency" if args.mode == "latency" else ""
        stem = bl.result_stem(env["gpu"], date_str, tag, args.pass_)
        csv_path = bl.unique_path(args.output_dir, stem, ".csv")
        stem_path = os.path.splitext(csv_path)[0]
        if args.save_csv:
            csv_writer = bl.CsvWriter(csv_path)
            json_path = stem_path + ".json"
            with open(json_path, "w") as f:
                json.dump(header, f, indent=2, default=str)
            log("[bench] writing %s (+ %s)" % (csv_path, os.path.basename(json_path)))

    bench = Bench(torch, fa, args, env)
    if not bench.hold.available:
        log("[bench] torch.cuda._sleep is missing: short kernels are timed at the host's "
            "launch rate")
    n_impls = len(families) + len(args.baseline_list)
    progress = bl.Progress([bl.config_cost(cfg, n_impls, args.pass_) for _, cfg in plan])
    all_rows = []
    context_lost = False
    t_start = time.monotonic()
    for index, (mode, cfg) in enumerate(plan):
        what = mode if args.pass_ == "fwd" else "%s %s" % (mode, args.pass_)
        log(progress.line(index, "%s %s %s" % (what, cfg.suite, cfg.label())))
        try:
            rows = bench.run_config(mode, cfg, index, families, args.pass_)
        except Exception as e:   # a dead config must not lose the rows measured so far
            reason = "failed-call: config aborted: %s: %s" % (type(e).__name__, one_line(e))
            names = impl_names(cfg, families, args.baseline_list)
            rows = [bl.make_row(env, cfg, n, mode, args.pass_, status=reason) for n in names]
            try:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            except Exception:
                context_lost = True
        describe_rows(rows)
        all_rows += rows
        if csv_writer:
            csv_writer.write(rows)
        if context_lost:
            log("[bench] the CUDA context is unusable after the error above; stopping")
            break
    elapsed = time.monotonic() - t_start
    if csv_writer:
        csv_writer.close()

    print(bl.format_summary(all_rows))
    print("\n# elapsed %.1f s, %d configs" % (elapsed, len(plan)))
    if json_path:
        header["elapsed_s"] = round(elapsed, 1)
        header["finished"] = not context_lost
        header["summary"] = {"/".join(k): v for k, v in bl.summarize(all_rows).items()}
        with open(json_path, "w") as f:
            json.dump(header, f, indent=2, default=str)
    if args.plot:
        for path in plot_all(all_rows, stem_path, env["gpu"]):
            print("# plot: %s" % path)
    if args.save_csv:
        print("# csv: %s" % csv_writer.path)
    failed_ours = [r for r in all_rows if bl.is_ours(r["impl"]) and r["status"] != bl.STATUS_OK
                   and not r["status"].startswith("skipped")]
    return 1 if (failed_ours or context_lost) else 0


if __name__ == "__main__":
    sys.exit(main())
