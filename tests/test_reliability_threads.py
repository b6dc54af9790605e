"""Threads and streams: concurrent calls give what serial calls give, bit for bit; the GIL is
released while the work runs; last_launch() is per thread.

last_launch() reports the launch the calling thread issued last (thread-local storage in
launch.c): a thread never sees another thread's launch, a thread that has launched nothing sees
None, and calls from other threads do not change what the main thread sees. Kernels are
deterministic, so a result computed on a thread's own stream while seven other threads launch
their own shapes on theirs equals the serial result exactly.

Host-reference cases run everywhere; GPU cases (torch streams, both kernel families) skip with a
reason where there is no GPU.

    python -m pytest -q tests/test_reliability_threads.py
"""
import threading
import time

import numpy as np
import pytest

import flashattn_c as fa
from conftest import gpu_unavailable_reason

needs_torch_gpu = pytest.mark.skipif(gpu_unavailable_reason() is not None,
                                     reason=str(gpu_unavailable_reason()))
THREADS = 8


def run_threads(worker, count=THREADS, timeout=120):
    """Runs worker(index) on `count` threads started together; re-raises the first failure."""
    barrier = threading.Barrier(count)
    errors = [None] * count

    def body(index):
        try:
            barrier.wait(timeout=timeout)
            worker(index)
        except BaseException as exc:  # reported to the main thread below
            errors[index] = exc

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a worker thread hung"
    for exc in errors:
        if exc is not None:
            raise exc


def gil_free_progress(call, record=None, label=""):
    """Fraction of a pure-Python counter thread's free-running speed that it keeps while `call`
    runs on this thread. Near 0 when `call` holds the GIL throughout, near 1 when it releases it
    (given a second core)."""
    count = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            count[0] += 1

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        time.sleep(0.05)  # the spinner is up
        c0, t0 = count[0], time.perf_counter()
        time.sleep(0.2)  # sleeping releases the GIL: the spinner's free-running rate
        free_rate = (count[0] - c0) / (time.perf_counter() - t0)
        c0, t0 = count[0], time.perf_counter()
        call()
        elapsed = time.perf_counter() - t0
        busy_rate = (count[0] - c0) / elapsed
    finally:
        stop.set()
        spinner.join()
    fraction = busy_rate / free_rate
    if record:
        record(label, "counter speed kept during the call (call seconds)",
               f"{fraction:.2f} ({elapsed:.3f} s)")
    return fraction, elapsed


# ------------------------------------------------------------------------------------------------
# Host reference (everywhere)


def host_case(rng, index):
    """A different shape, dtype, causal flag and out= use per thread."""
    batch = 1 + index % 2
    seqlen_q, seqlen_k = 9 + 13 * index, 40 - 3 * index
    heads_kv = 1 + index % 3
    heads_q = heads_kv * (1 + index % 2)
    head_dim = (8, 16, 40, 64)[index % 4]
    dtype = (np.float16, np.float32)[index % 2]
    q = rng.standard_normal((batch, seqlen_q, heads_q, head_dim)).astype(dtype)
    k = rng.standard_normal((batch, seqlen_k, heads_kv, head_dim)).astype(dtype)
    v = rng.standard_normal((batch, seqlen_k, heads_kv, head_dim)).astype(dtype)
    return dict(q=q, k=k, v=v, causal=bool(index % 3 == 0), use_out=index % 2 == 1)


def host_call(case):
    out = np.full_like(case["q"], np.nan) if case["use_out"] else None
    result, lse = fa.attention(case["q"], case["k"], case["v"], causal=case["causal"], out=out,
                               return_lse=True, device="cpu")
    return result, lse


def test_host_threads_own_shapes_equal_serial(rng):
    cases = [host_case(rng, i) for i in range(THREADS)]
    expected = [host_call(c) for c in cases]

    def worker(index):
        for _ in range(5):
            out, lse = host_call(cases[index])
            assert np.array_equal(out, expected[index][0]), f"thread {index}: out differs"
            assert np.array_equal(lse, expected[index][1]), f"thread {index}: lse differs"

    run_threads(worker)


def test_host_reference_releases_the_gil(rng, record_number):
    q = rng.standard_normal((1, 768, 8, 64)).astype(np.float32)
    fraction, elapsed = gil_free_progress(lambda: fa.attention(q, q, q, device="cpu"),
                                          record_number, "threads/GIL host reference")
    assert elapsed > 0.05, "the call is too short to tell"
    assert fraction > 0.25, (f"a Python thread ran at {fraction:.0%} of its speed during a "
                             f"{elapsed:.2f} s host-reference call: the GIL was held")


def test_fresh_thread_has_no_last_launch():
    seen = []
    t = threading.Thread(target=lambda: seen.append(fa.last_launch()))
    t.start()
    t.join()
    assert seen == [None]


# ------------------------------------------------------------------------------------------------
# GPU: 8 threads, 8 streams, 8 shapes


def gpu_cases(torch):
    """Per thread: family, dtype, shape, causal, how the output is delivered."""
    from test_cuda_attention import make_inputs

    families = [f for f in ("sm80", "sm90") if family_runs(f)]
    cases = []
    for i in range(THREADS):
        batch, seqlen_q, seqlen_k = 1 + i % 3, 64 + 97 * i, 700 - 61 * i
        heads_kv = 1 + i % 2
        heads_q = heads_kv * (1 + i % 4)
        head_dim = (64, 128, 256, 40)[i % 4]
        dtype = ("bfloat16", "float16")[i % 2]
        q, k, v = make_inputs(batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype,
                              sdpa_layout=i % 3 == 2)
        cases.append(dict(family=families[i % len(families)], q=q, k=k, v=v, causal=i % 2 == 0,
                          mode=("alloc", "out", "host")[i % 3]))
    return cases


def family_runs(family):
    from test_cuda_attention import require_family

    try:
        require_family(family)
    except pytest.skip.Exception:
        return False
    return True


def gpu_call(torch, case):
    """One call in the case's mode; returns (out, lse) as torch tensors on the GPU."""
    q, k, v = case["q"], case["k"], case["v"]
    kwargs = dict(causal=case["causal"], return_lse=True, kernel=case["family"])
    if case["mode"] == "out":
        out = torch.full_like(q, float("nan"))
        got, lse = fa.attention(q, k, v, out=out, **kwargs)
        assert got is out
        return out, lse
    if case["mode"] == "host":  # NumPy in: copied in and out on the calling thread's stream
        arrays = [t.cpu().numpy() for t in (q, k, v)] if q.dtype == torch.float16 else None
        if arrays is not None:
            out, lse = fa.attention(*arrays, stream=torch.cuda.current_stream(), **kwargs)
            return torch.from_numpy(out).cuda(), torch.from_numpy(lse).cuda()
    return fa.attention(q, k, v, **kwargs)


@needs_torch_gpu
def test_gpu_threads_own_streams_equal_serial(record_number):
    import torch

    cases = gpu_cases(torch)
    torch.cuda.synchronize()
    expected = [gpu_call(torch, c) for c in cases]
    torch.cuda.synchronize()
    iterations = 20

    def worker(index):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.default_stream())
        with torch.cuda.stream(stream):
            for it in range(iterations):
                out, lse = gpu_call(torch, cases[index])
                launch = fa.last_launch()
                assert launch["stream"] == stream.cuda_stream, (
                    f"thread {index}: last_launch() shows stream {launch['stream']:#x}, this "
                    f"thread launched on {stream.cuda_stream:#x}")
                stream.synchronize()
                assert torch.equal(out, expected[index][0]), f"thread {index} it {it}: out"
                assert torch.equal(lse, expected[index][1]), f"thread {index} it {it}: lse"

    start = time.perf_counter()
    run_threads(worker)
    record_number("threads/GPU 8 threads x 20 calls", "wall seconds",
                  f"{time.perf_counter() - start:.2f}")


@needs_torch_gpu
def test_last_launch_is_per_thread():
    import torch

    cases = gpu_cases(torch)
    main_q = cases[0]["q"]
    fa.attention(main_q, cases[0]["k"], cases[0]["v"], kernel=cases[0]["family"])
    main_seen = fa.last_launch()
    barrier = threading.Barrier(THREADS)
    seen = [None] * THREADS
    streams = [None] * THREADS

    def worker(index):
        case = cases[index]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.default_stream())
        streams[index] = stream.cuda_stream
        with torch.cuda.stream(stream):
            before = fa.last_launch()
            assert before is None, f"thread {index} sees a launch before making one: {before}"
            fa.attention(case["q"], case["k"], case["v"], causal=case["causal"],
                         kernel=case["family"])
            barrier.wait(timeout=60)  # every thread has launched before any looks
            seen[index] = fa.last_launch()
            stream.synchronize()

    run_threads(worker)
    for index, case in enumerate(cases):
        q, k = case["q"], case["k"]
        want = fa.launch_config(batch=q.shape[0], seqlen_q=q.shape[1], seqlen_k=k.shape[1],
                                heads_q=q.shape[2], heads_kv=k.shape[2], head_dim=q.shape[3],
                                dtype=str(q.dtype).split(".")[-1], causal=case["causal"],
                                kernel=case["family"])
        got = seen[index]
        assert got["stream"] == streams[index], f"thread {index} sees another thread's stream"
        assert (got["kernel"], got["grid"]) == (want["kernel"], want["grid"]), (
            f"thread {index} sees {got['kernel']} {got['grid']}, it launched "
            f"{want['kernel']} {want['grid']}")
    assert fa.last_launch() == main_seen, "other threads' launches changed the main thread's"


@needs_torch_gpu
def test_gpu_host_path_releases_the_gil(record_number):
    """NumPy inputs on the GPU: copies in, kernel, copies out and a stream synchronize, all with
    the GIL released."""
    rng = np.random.default_rng(7)
    q = rng.standard_normal((1, 32768, 16, 128)).astype(np.float16)
    k = rng.standard_normal((1, 32768, 16, 128)).astype(np.float16)
    fa.attention(q[:, :128], k[:, :128], k[:, :128])  # warm-up: context, kernel attributes
    fraction, elapsed = gil_free_progress(lambda: fa.attention(q, k, k),
                                          record_number, "threads/GIL GPU host path")
    assert elapsed > 0.05, "the call is too short to tell"
    assert fraction > 0.25, (f"a Python thread ran at {fraction:.0%} of its speed during a "
                             f"{elapsed:.2f} s GPU call: the GIL was held")
