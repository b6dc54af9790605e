"""Repeated calls leak nothing: 1000 calls each, succeeding and failing ones, keep the inputs'
reference counts and the traced Python memory (tracemalloc, which NumPy's data buffers report
to) flat.

Host paths run everywhere (device="cpu"); device paths use zero-size fake CUDA producers and
DeviceArray exports, which need no GPU; host arrays with device=None exercise the GPU round trip
where there is a GPU and the CudaError path where there is none.

    python -m pytest -q tests/test_leaks.py
"""
import gc
import sys

import numpy as np
import pytest

import flashattn_c as fa
from flashattn_c import _C
from test_interop import KDL_CUDA, FakeDLPack, NumpyProducer, host_dlpack
from test_reliability_support import traced_growth

CALLS = 1000
SLACK_BYTES = 64 * 1024  # allocator caches, interned objects; a leak grows with CALLS


def assert_flat(call, watched):
    """Runs call() CALLS times after a warm-up; refcounts of `watched` and traced memory stay."""
    for _ in range(20):
        call()
    gc.collect()
    refcounts = [sys.getrefcount(obj) for obj in watched]
    grown = traced_growth(call, CALLS)
    assert [sys.getrefcount(obj) for obj in watched] == refcounts
    assert grown < SLACK_BYTES, f"traced memory grew by {grown} bytes over {CALLS} calls"


def forget_exports(producer):
    """What a FakeDLPack keeps for inspection would otherwise grow with every call."""
    producer.calls.clear()
    producer.capsules.clear()
    producer._keep.clear()


@pytest.fixture
def qkv(rng):
    q = rng.standard_normal((1, 8, 2, 16)).astype(np.float16)
    k = rng.standard_normal((1, 6, 1, 16)).astype(np.float16)
    v = rng.standard_normal((1, 6, 1, 16)).astype(np.float16)
    return q, k, v


def test_host_reference_calls(qkv):
    q, k, v = qkv
    out = np.empty_like(q)

    def call():
        fa.attention(q, k, v, device="cpu")
        fa.attention(q, k, v, causal=True, return_lse=True, device="cpu")
        fa.attention(q, k, v, out=out, device="cpu")

    assert_flat(call, [q, k, v, out])


def test_strided_host_calls(qkv):
    q, k, v = qkv
    q_strided = np.repeat(q, 2, axis=-1)[..., ::2]
    out = np.zeros((1, 8, 2, 32), np.float16)[..., ::2]

    def call():
        fa.attention(q_strided, k, v, out=out, return_lse=True, device="cpu")

    assert_flat(call, [q_strided, k, v, out])


def test_failing_calls(qkv):
    q, k, v = qkv
    bad_out = np.empty((1, 8, 2, 8), np.float16)
    read_only = np.empty_like(q)
    read_only.flags.writeable = False
    q3 = q[0]
    q64 = q.astype(np.float64)
    failing = [
        (dict(q=q3, k=k, v=v), ValueError),
        (dict(q=q, k=k, v=v, out=bad_out), ValueError),
        (dict(q=q, k=k, v=v, out=read_only), ValueError),
        (dict(q=q64, k=k, v=v), TypeError),
        (dict(q=q, k=k, v=v, softmax_scale=float("nan")), ValueError),
        (dict(q=q, k=k[:, :5], v=v), ValueError),
        (dict(q=q, k=k, v=v, kernel="sm1"), ValueError),
    ]

    def call():
        for kwargs, error in failing:
            with pytest.raises(error):
                fa.attention(device="cpu", **kwargs)

    assert_flat(call, [q, k, v, bad_out, read_only, q3, q64])


@pytest.mark.parametrize("versioned", [True, False], ids=["versioned", "legacy"])
def test_numpy_dlpack_exports(qkv, versioned):
    q, k, v = qkv
    producers = [NumpyProducer(a, versioned) for a in (q, k, v)]
    bad = NumpyProducer(q[0], versioned)

    def call():
        for p in producers + [bad]:
            p.capsules.clear()
        fa.attention(*producers, device="cpu")
        with pytest.raises(ValueError):
            fa.attention(bad, producers[1], producers[2], device="cpu")

    assert_flat(call, [q, k, v, q[0]])


def test_ctypes_dlpack_deleters_balance(qkv):
    q, k, v = qkv
    producers = [host_dlpack(a) for a in (q, k, v)]

    def call():
        for p in producers:
            forget_exports(p)
        fa.attention(*producers, device="cpu")

    for p in producers:
        p.deleter_calls = 0
    assert_flat(call, [q, k, v])
    assert [p.deleter_calls for p in producers] == [CALLS + 20] * 3


def test_device_arrays_and_their_exports():
    """Zero-size device results (no GPU needed): DeviceArray objects, capsules consumed and
    unconsumed, and the DeviceArray fed back in as an input."""
    kv = FakeDLPack((1, 3, 1, 64), device=(KDL_CUDA, 0))
    q = FakeDLPack((1, 0, 2, 64), device=(KDL_CUDA, 0))
    keep, _ = fa.attention(q, kv, kv, return_lse=True)

    def call():
        forget_exports(kv)
        forget_exports(q)
        out, lse = fa.attention(q, kv, kv, return_lse=True)
        out.__dlpack__()
        out.__dlpack__(max_version=(1, 1))
        out.__cuda_array_interface__
        out.to_numpy()
        fa.attention(keep, kv, kv)

    assert_flat(call, [keep])


def test_host_arrays_on_the_default_path(qkv):
    """GPU round trip where there is a GPU; the no-GPU CudaError where there is none."""
    q, k, v = qkv

    def call():
        try:
            fa.attention(q, k, v, return_lse=True)
        except fa.CudaError:
            pass

    assert_flat(call, [q, k, v])


def test_backward_host_calls(qkv):
    q, k, v = qkv
    out, lse = fa.attention(q, k, v, causal=True, return_lse=True, device="cpu")
    dout = np.ones_like(q)
    dq = np.empty_like(q)
    sinks = np.zeros(2, np.float32)
    out_s, lse_s = fa.attention(q, k, v, sinks=sinks, return_lse=True, device="cpu")

    def call():
        fa.attention_backward(dout, q, k, v, out, lse, causal=True, device="cpu")
        fa.attention_backward(dout, q, k, v, out, lse, causal=True, device="cpu", dq=dq)
        fa.attention_backward(dout, q, k, v, out_s, lse_s, sinks=sinks, device="cpu")
        with pytest.raises(ValueError):
            fa.attention_backward(dout, q, k, v, out, lse[:, :1], device="cpu")

    assert_flat(call, [q, k, v, out, lse, dout, dq, sinks])


def test_training_steps_keep_gpu_memory_flat():
    """1000 forward + backward steps through autograd: torch's allocated memory and
    flashattn_c's pool, where the backward's workspace comes from, return to where they
    started."""
    from conftest import gpu_unavailable_reason

    if gpu_unavailable_reason() is not None:
        pytest.skip(gpu_unavailable_reason())
    torch = pytest.importorskip("torch")
    q, k, v = (torch.randn(2, 512, 4, 64, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    dout = torch.randn(2, 512, 4, 64, device="cuda", dtype=torch.bfloat16)

    def step():
        q.grad = k.grad = v.grad = None
        fa.attention(q, k, v, causal=True).backward(dout)

    for _ in range(20):
        step()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(CALLS):
        step()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
    device = torch.cuda.current_device()
    used_before, reserved_before = _C._pool_usage(device)
    for _ in range(CALLS):
        step()
    torch.cuda.synchronize()
    # flashattn_c's pool (the backward's workspace) ends with nothing live, and keeps what it
    # reuses without growing with the steps. Its own numbers, not the GPU's free memory, which
    # other processes move.
    used, reserved = _C._pool_usage(device)
    assert used == used_before
    assert reserved <= max(reserved_before, 64 << 20)
