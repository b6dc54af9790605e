"""Shared fixtures: a seeded RNG per test and the GPU-availability gate for GPU tests."""
import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/reference.py


def gpu_unavailable_reason():
    """None when a CUDA GPU and PyTorch (the GPU tests' reference) are usable, else why not."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (the GPU tests compute their references with it)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is available"
    return None


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: fresh inputs per test, reproducible per run."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def torch_cuda():
    reason = gpu_unavailable_reason()
    if reason:
        pytest.skip(reason)
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
