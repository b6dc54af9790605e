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
