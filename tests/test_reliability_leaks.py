"""Long runs lose nothing: 10,000 iterations, each a mix of succeeding and failing calls, keep
the inputs' reference counts exact and the process's memory flat.

Measured over the 10,000 iterations, after a warm-up (numbers printed at the end of the session,
and written to $OUT/reliability_numbers.txt when $OUT is set):
  - sys.getrefcount of every input, out= buffer and stream object: unchanged
  - resident set size (C allocations: DLPack exports, staging buffers, CUDA runtime objects):
    grows by less than RSS_SLACK (1 MiB on the CPU run, 2 MiB on the GPU run)
  - traced Python memory (tracemalloc, 1,000 more iterations after 1,000 that let the
    interpreter's free lists settle): grows by less than TRACED_SLACK
  - device memory free after a synchronize (GPU run): drops by less than DEVICE_SLACK; a leaked
    DeviceArray per iteration would hold 10,000 x 32 KiB
  - DLPack deleters of consumed exports run exactly once each

The CPU run (everywhere) covers the host reference, NumPy / ctypes DLPack producers, zero-size
DeviceArrays and their exports, and failing calls. The GPU run (skipped without a GPU) covers
torch inputs, DeviceArray outputs, DLPack exports consumed by torch and dropped unconsumed, out=
buffers, __cuda_array_interface__ inputs and failing calls, in under a minute.

    python -m pytest -q -s tests/test_reliability_leaks.py
"""
import gc
import sys
import time

import numpy as np
import pytest

import flashattn_c as fa
from conftest import gpu_unavailable_reason
from flashattn_c import _C
from test_interop import KDL_CUDA, FakeDLPack, NumpyProducer, host_dlpack
from test_reliability_hostile import HostileDLPack, Producer, raiser
from test_reliability_support import rss_bytes, traced_growth

ITERATIONS = 10_000
TRACED_ITERATIONS = 1_000
WARMUP = 500
RSS_SLACK = {"cpu": 1 << 20, "gpu": 2 << 20}  # ~100 / ~200 bytes per iteration; a leaked
                          # DLPack export (>= 144 bytes) in a few of an iteration's calls exceeds it
TRACED_SLACK = 64 << 10   # 64 KiB of traced Python memory: 64 bytes per iteration
DEVICE_SLACK = 16 << 20   # 16 MiB of device memory held by this process



def expect_failure(call, error):
    """A bad call must raise `error` (the leak loops count failing calls too)."""
    try:
        call()
    except error:
        return
    raise AssertionError("a failing call did not fail")

def measure(step, watched, record, label, *, device_held=None, rss_slack=RSS_SLACK["cpu"]):
    """Runs step() WARMUP times, then ITERATIONS times watching RSS (and the device memory this
    process holds when device_held is given), then under tracemalloc: TRACED_ITERATIONS to
    settle, TRACED_ITERATIONS measured. Asserts the bounds and records the numbers."""
    for _ in range(WARMUP):
        step()
    gc.collect()
    refcounts = [sys.getrefcount(obj) for obj in watched]

    dev_before = device_held() if device_held else None
    rss_before = rss_bytes()
    start = time.perf_counter()
    for _ in range(ITERATIONS):
        step()
    gc.collect()
    seconds = time.perf_counter() - start
    rss_growth = rss_bytes() - rss_before if rss_before is not None else None
    dev_growth = device_held() - dev_before if device_held else None

    traced = traced_growth(step, TRACED_ITERATIONS, settle=TRACED_ITERATIONS)

    after = [sys.getrefcount(obj) for obj in watched]  # counted exactly as `refcounts` was
    refcount_change = [a - b for a, b in zip(after, refcounts)]
    record(label, "iterations", ITERATIONS, f"({seconds:.2f} s, {1e6 * seconds / ITERATIONS:.0f} "
                                            "us per iteration)")
    record(label, "RSS growth", rss_growth, f"bytes over {ITERATIONS} iterations")
    record(label, "traced Python memory growth", traced,
           f"bytes over {TRACED_ITERATIONS} iterations")
    if device_held:
        record(label, "device memory held growth", dev_growth,
               f"bytes over {ITERATIONS} iterations")
    record(label, "reference count changes", refcount_change)

    assert refcount_change == [0] * len(watched), f"reference counts moved: {refcount_change}"
    if rss_growth is not None:
        assert rss_growth < rss_slack, (f"RSS grew by {rss_growth} bytes over {ITERATIONS} "
                                        "iterations")
    assert traced < TRACED_SLACK, (f"traced memory grew by {traced} bytes over "
                                          f"{TRACED_ITERATIONS} iterations")
    if device_held:
        assert dev_growth < DEVICE_SLACK, (f"device memory held grew by {dev_growth} bytes over "
                                           f"{ITERATIONS} iterations")


def forget(producer):
    """What a fake producer keeps for inspection would otherwise grow with every call."""
    for attr in ("calls", "capsules", "_keep"):
        if hasattr(producer, attr):
            getattr(producer, attr).clear()


# ------------------------------------------------------------------------------------------------
# CPU (everywhere)


def test_cpu_paths_lose_nothing(rng, record_number):
    q = rng.standard_normal((1, 8, 2, 16)).astype(np.float16)
    k = rng.standard_normal((1, 6, 1, 16)).astype(np.float16)
    v = rng.standard_normal((1, 6, 1, 16)).astype(np.float16)
    q32, k32, v32 = (a.astype(np.float32) for a in (q, k, v))
    out = np.empty_like(q)
    strided_out = np.zeros((1, 8, 2, 32), np.float16)[..., ::2]
    producers = [NumpyProducer(a, versioned) for a in (q, k, v) for versioned in (True, False)]
    ctypes_producers = [host_dlpack(a) for a in (q32, k32, v32)]
    bf16 = [host_dlpack((a.view(np.uint32) >> 16).astype(np.uint16), dtype=(4, 16))
            for a in (q32, k32, v32)]
    fake_kv = FakeDLPack((1, 3, 1, 64), device=(KDL_CUDA, 0))
    fake_q = FakeDLPack((1, 0, 2, 64), device=(KDL_CUDA, 0))
    renamed = HostileDLPack((1, 8, 2, 16), rename="used_dltensor")
    refusing = Producer(export=raiser(BufferError("no export")))
    q64 = q.astype(np.float64)
    read_only = np.empty_like(q)
    read_only.flags.writeable = False
    exports = []

    def step():
        for p in producers + ctypes_producers + bf16 + [fake_kv, fake_q, renamed, refusing]:
            forget(p)
        fa.attention(q, k, v, device="cpu")
        fa.attention(q, k, v, causal=True, return_lse=True, out=out, device="cpu")
        fa.attention(q, k, v, out=strided_out, device="cpu")
        fa.attention(producers[0], producers[2], producers[4], device="cpu")
        fa.attention(producers[1], producers[3], producers[5], return_lse=True, device="cpu")
        fa.attention(*ctypes_producers, device="cpu")
        fa.attention(*bf16, device="cpu")
        # zero-size device results: DeviceArrays, exports consumed (fed back) and dropped
        empty, lse = fa.attention(fake_q, fake_kv, fake_kv, return_lse=True)
        empty.__dlpack__()
        exports.append(lse.__dlpack__(max_version=(1, 1)))
        fa.attention(empty, fake_kv, fake_kv)
        empty.to_numpy()
        exports.clear()
        for call, error in [
            (lambda: fa.attention(q64, k, v, device="cpu"), TypeError),
            (lambda: fa.attention(q, k, v, out=read_only, device="cpu"), ValueError),
            (lambda: fa.attention(q[0], k, v, device="cpu"), ValueError),
            (lambda: fa.attention(renamed, fake_kv, fake_kv), TypeError),
            (lambda: fa.attention(refusing, fake_kv, fake_kv), BufferError),
            (lambda: fa.attention(producers[0], k[:, :5], v, device="cpu"), ValueError),
        ]:
            expect_failure(call, error)

    for p in ctypes_producers + bf16:
        p.deleter_calls = 0
    watched = [q, k, v, q32, k32, v32, out, strided_out, q64, read_only]
    measure(step, watched, record_number, "leaks/CPU paths")
    calls = WARMUP + ITERATIONS + 2 * TRACED_ITERATIONS
    assert [p.deleter_calls for p in ctypes_producers + bf16] == [calls] * 6
    assert renamed.deleter_calls == 0, "a capsule the call did not consume was given back"


# ------------------------------------------------------------------------------------------------
# GPU


@pytest.mark.skipif(gpu_unavailable_reason() is not None, reason=str(gpu_unavailable_reason()))
def test_gpu_paths_lose_nothing(record_number):
    import torch

    from test_cuda_attention import require_family

    torch.manual_seed(0)
    q = torch.randn(1, 64, 4, 64, device="cuda", dtype=torch.float16)  # out: 32 KiB
    k = torch.randn(1, 80, 2, 64, device="cuda", dtype=torch.float16)
    v = torch.randn(1, 80, 2, 64, device="cuda", dtype=torch.float16)
    k_bf16 = k.to(torch.bfloat16)
    out_buf = torch.empty_like(q)
    wrong_out = torch.empty(1, 64, 4, 32, device="cuda", dtype=torch.float16)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.default_stream())
    handle = stream.cuda_stream
    try:
        require_family("sm80")
        too_many_heads = torch.randn(1, 1, 65536, 64, device="cuda", dtype=torch.float16)
    except pytest.skip.Exception:
        too_many_heads = None

    class CAI:
        def __init__(self, t):
            self.__cuda_array_interface__ = t.__cuda_array_interface__
            self.t = t

    cai_q, cai_k, cai_v = CAI(q), CAI(k), CAI(v)
    expected = fa.attention(q, k, v)
    torch.cuda.synchronize()

    def step():
        with torch.cuda.stream(stream):
            got = fa.attention(q, k, v)                          # DeviceArray -> torch, consumed
            array, lse = _C.forward(q, k, v, return_lse=True, stream=handle)
            array.__dlpack__(stream=handle)                      # exports dropped unconsumed
            array.__dlpack__(max_version=(1, 1), stream=handle)
            torch.from_dlpack(lse)                               # consumed, then dropped
            fa.attention(array, k, v)                            # a DeviceArray fed back in
            fa.attention(q, k, v, out=out_buf, stream=stream)    # out= buffer
            fa.attention(cai_q, cai_k, cai_v)                    # __cuda_array_interface__
            for call, error in [
                (lambda: fa.attention(q, k_bf16, v), TypeError),
                (lambda: fa.attention(q, k, v, out=wrong_out), ValueError),
                (lambda: fa.attention(q[..., :60], k[..., :60], v[..., :60]), ValueError),
                (lambda: fa.attention(q, k[:, :, :1], v), ValueError),
            ] + ([(lambda: fa.attention(too_many_heads, too_many_heads, too_many_heads,
                                        kernel="sm80"), RuntimeError)]
                 if too_many_heads is not None else []):
                expect_failure(call, error)
        return got

    def device_held():
        """What this process holds on the GPU: torch's allocations and the live buffers of
        flashattn_c's pool (every DeviceArray, staging buffer and workspace comes from it).
        Not the GPU's free memory, which other processes move (pytest -n 8 runs the 2^31
        element tests beside this one)."""
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated() + _C._pool_usage(torch.cuda.current_device())[0]

    watched = [q, k, v, k_bf16, out_buf, wrong_out, stream, cai_q, cai_k, cai_v]
    measure(step, watched, record_number, "leaks/GPU paths", device_held=device_held,
            rss_slack=RSS_SLACK["gpu"])
    with torch.cuda.stream(stream):
        last = step()
    torch.cuda.synchronize()
    assert torch.equal(last, expected) and torch.equal(out_buf, expected)
