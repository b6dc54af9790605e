"""Shared fixtures: a seeded RNG per test (numpy's rng fixture; torch's default generators for
GPU tests) and the GPU-availability gate for GPU tests.

The gate: GPU tests skip, with the reason, where there is no usable GPU (no driver, an old
driver, no device: flashattn_c's own probe says which). Where there is one but a dependency the
GPU tests need (PyTorch, with CUDA) is missing, they fail instead: a green run that ran no GPU
test on a GPU machine is a lie. At the end of every run, the skipped tests are counted by reason.
"""
import collections
import functools
import glob
import os
import sys
import zlib

import numpy as np
import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)


def _prefer_installed_package():
    """`python -m pytest` puts the current directory first on sys.path. From a source checkout
    that was never built in place (pip install . builds into site-packages), its unbuilt
    flashattn_c/ would shadow the installed package: drop the checkout from sys.path, and tell
    child interpreters the same (PYTHONSAFEPATH, Python >= 3.11). A checkout built in place
    (pip install -e ., build_ext --inplace) is the package under test and stays."""
    package = os.path.join(REPO_ROOT, "flashattn_c")
    if not os.path.isdir(package) or glob.glob(os.path.join(package, "_C.*")):
        return
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != REPO_ROOT]
    os.environ["PYTHONSAFEPATH"] = "1"


_prefer_installed_package()
sys.path.insert(0, TESTS_DIR)  # tests/reference.py

TORCH_MISSING = "PyTorch is not installed (the GPU tests compute their references with it)"


@functools.lru_cache(maxsize=None)
def gpu_probe():
    """None when flashattn_c finds a usable CUDA GPU, else why not (no CUDA call at import:
    this asks the driver once, when a test module first needs to know)."""
    import flashattn_c as fa

    try:
        fa.launch_config(batch=1, seqlen_q=1, seqlen_k=1, heads_q=1, heads_kv=1, head_dim=64,
                         dtype="float16")
    except fa.CudaError as exc:
        why = str(exc).split("; pass arch=")[0]
        prefix = "no usable GPU: "
        return "no CUDA GPU is available: " + (why[len(prefix):] if why.startswith(prefix) else why)
    except Exception:  # a GPU this build has no kernel for is still a GPU
        pass
    return None


def _torch_problem():
    """None when PyTorch with CUDA is importable, else what is wrong with it."""
    try:
        import torch
    except ImportError:
        return TORCH_MISSING
    if not torch.cuda.is_available():
        return (f"PyTorch {torch.__version__} cannot use the GPU (torch.cuda.is_available() is "
                "False: a CPU-only build, or one made for a newer driver)")
    return None


def gpu_gate(no_gpu_reason, torch_problem):
    """("run" | "skip" | "fail", reason) for the GPU tests: skip where there is no GPU, fail
    loudly where there is one but a dependency they need is missing."""
    if no_gpu_reason is not None:
        return "skip", no_gpu_reason
    if torch_problem is not None:
        return "fail", ("a CUDA GPU is present but the GPU tests cannot run: " + torch_problem +
                        '. Install the test dependencies: pip install -e ".[test]"')
    return "run", None


@functools.lru_cache(maxsize=None)
def _gate():
    reason = gpu_probe()
    return gpu_gate(reason, None if reason is not None else _torch_problem())


def gpu_unavailable_reason():
    """The reason to skip a GPU test, or None to run it. None also when a GPU is present but
    PyTorch is not usable: those tests then fail (see pytest_runtest_setup below)."""
    verdict, reason = _gate()
    return reason if verdict == "skip" else None


# What a GPU test module starts with: pytestmark = GPU_MARKS, and the families and dtypes its
# cases range over.
GPU_MARKS = [
    pytest.mark.gpu,
    pytest.mark.skipif(gpu_unavailable_reason() is not None, reason=str(gpu_unavailable_reason())),
]
FAMILIES = ["sm80", "sm90"]
GPU_DTYPES = ["float16", "bfloat16"]


def require_family(family):
    """Skips a GPU test whose kernel family this build or this GPU cannot run."""
    import torch

    import flashattn_c as fa

    cc = torch.cuda.get_device_capability()
    if not fa.build_info()["families"].get(family):
        pytest.skip(f"family {family} is not in this build")
    if family == "sm90" and cc != (9, 0):
        pytest.skip(f"family sm90 needs an sm_90 GPU, this one is sm_{cc[0]}{cc[1]}")
    if cc[0] < 8:
        pytest.skip("needs sm_80 or newer")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """GPU tests (the `gpu` marker, or the torch_cuda fixture) fail with the reason where a GPU
    is present but their dependencies are not."""
    if item.get_closest_marker("gpu") is None and "torch_cuda" not in item.fixturenames:
        return
    verdict, reason = _gate()
    if verdict == "fail":
        pytest.fail(reason, pytrace=False)
    if verdict == "run":
        # As the rng fixture: every GPU test draws the same inputs in every run (and on any
        # xdist worker), so a failure reproduces; torch's default generators, CPU and CUDA.
        import torch

        torch.manual_seed(zlib.crc32(item.nodeid.encode()))


_skips = collections.Counter()


def pytest_runtest_logreport(report):
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        _skips[reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason] += 1


def pytest_terminal_summary(terminalreporter):
    """How many tests skipped, and why: on a machine without a GPU, the GPU tests."""
    if _skips:
        write = terminalreporter.write_line
        write(f"[flashattn_c] {sum(_skips.values())} tests skipped, by reason:")
        for reason, count in _skips.most_common():
            write(f"  {count:5d}  {reason}")
    verdict, reason = _gate() if "flashattn_c" in sys.modules else ("run", None)
    if verdict == "fail":
        terminalreporter.write_line(f"[flashattn_c] GPU TESTS FAILED TO RUN: {reason}", red=True)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: fresh inputs per test, reproducible per run."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def torch_cuda():
    verdict, reason = _gate()
    if verdict == "skip":
        pytest.skip(reason)
    if verdict == "fail":
        pytest.fail(reason, pytrace=False)
    import torch

    return torch


# ================================================================================================
# Reliability tests (tests/test_reliability_*.py): measured numbers worth keeping.
# A test calls record_number("leaks/gpu", "device memory growth", 0, "bytes over 10000 calls");
# at the end of the session every recorded line is printed (seen with -s) and, when $OUT is set,
# appended to $OUT/reliability_numbers.txt.
# ================================================================================================


@pytest.fixture(scope="session")
def record_number():
    lines = []

    def record(test, what, value, unit=""):
        lines.append(f"{test}: {what} = {value} {unit}".rstrip())

    yield record
    if not lines:
        return
    text = "\n".join(["[flashattn_c reliability numbers]"] + lines) + "\n"
    sys.stdout.write("\n" + text)
    out_dir = os.environ.get("OUT")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "reliability_numbers.txt"), "a") as f:
            f.write(text)
