"""The host reference path (device="cpu") against a NumPy float64 reference, DESIGN.md section 6.

Runs everywhere (no GPU). The host path is the C reference that mirrors the kernels' tiled online
softmax; these tests pin its semantics: bottom-right causal, GQA grouping, LSE, scale, empty rows.
"""
import numpy as np
import pytest

import flashattn_c as fa
from reference import attention_numpy, check_against_reference


def make_inputs(rng, batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype, q_scale=1.0):
    q = (rng.standard_normal((batch, seqlen_q, heads_q, head_dim)) * q_scale).astype(dtype)
    k = rng.standard_normal((batch, seqlen_k, heads_kv, head_dim)).astype(dtype)
    v = rng.standard_normal((batch, seqlen_k, heads_kv, head_dim)).astype(dtype)
    return q, k, v


def run_and_check(q, k, v, causal, softmax_scale=None):
    out, lse = fa.attention(q, k, v, causal=causal, softmax_scale=softmax_scale,
                            return_lse=True, device="cpu")
    assert isinstance(out, np.ndarray) and out.dtype == q.dtype and out.shape == q.shape
    assert lse.dtype == np.float32 and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    ref_out, ref_lse = attention_numpy(q, k, v, causal, softmax_scale, np.float64)
    peer_out, _ = attention_numpy(q, k, v, causal, softmax_scale, q.dtype.type)
    return check_against_reference(out, lse, ref_out, ref_lse, peer_out), out, lse


SHAPES = [
    # batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim
    (1, 1, 1, 1, 1, 64),
    (2, 17, 17, 2, 2, 64),
    (1, 113, 203, 6, 2, 128),   # GQA 6:2, seqlen_q < seqlen_k
    (1, 203, 113, 8, 1, 64),    # MQA 8:1, seqlen_q > seqlen_k: causal rows with no key
    (2, 65, 129, 4, 4, 40),     # head_dim padded inside the kernels
    (1, 129, 127, 2, 1, 256),
    (3, 1, 239, 2, 2, 72),
    (1, 239, 1, 2, 2, 64),
    (1, 799, 3, 1, 1, 128),
]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float64_reference(rng, shape, causal, dtype):
    q, k, v = make_inputs(rng, *shape, dtype)
    run_and_check(q, k, v, causal)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_large_magnitude_inputs_stress_the_softmax(rng, dtype):
    q, k, v = make_inputs(rng, 2, 97, 131, 4, 2, 64, dtype, q_scale=5.0)
    k = (k.astype(np.float32) * 3).astype(dtype)
    run_and_check(q, k, v, causal=True)


@pytest.mark.parametrize("scale", [0.0, 0.05, 1.0])
def test_explicit_softmax_scale(rng, scale):
    q, k, v = make_inputs(rng, 1, 33, 47, 2, 1, 64, np.float32)
    run_and_check(q, k, v, causal=False, softmax_scale=scale)


def test_zero_scale_is_the_mean_of_visible_values(rng):
    q, k, v = make_inputs(rng, 1, 4, 6, 1, 1, 8, np.float32)
    out = fa.attention(q, k, v, softmax_scale=0.0, device="cpu")
    np.testing.assert_allclose(out[0, :, 0], np.broadcast_to(v[0, :, 0].mean(0), (4, 8)), rtol=1e-6)


def test_causal_bottom_right_alignment_hides_exactly_the_future(rng):
    # seqlen_q=2, seqlen_k=5: query 0 sees keys 0..3, query 1 sees keys 0..4 (FlashAttention >= 2.1).
    q, k, v = make_inputs(rng, 1, 2, 5, 1, 1, 16, np.float32)
    v[0, 4, 0, :] = 1000.0  # only query 1 may see key 4
    out = fa.attention(q, k, v, causal=True, device="cpu")
    assert np.all(np.abs(out[0, 0, 0]) < 100)
    assert np.all(out[0, 1, 0] > 1)


def test_rows_with_no_visible_key_give_zero_and_minus_inf(rng):
    q, k, v = make_inputs(rng, 1, 7, 3, 2, 1, 32, np.float32)
    out, lse = fa.attention(q, k, v, causal=True, return_lse=True, device="cpu")
    # seqlen_q - seqlen_k = 4 leading query rows see no key under bottom-right alignment.
    assert np.all(out[0, :4] == 0)
    assert np.all(np.isneginf(lse[0, :, :4]))
    assert np.all(np.isfinite(lse[0, :, 4:]))


def test_empty_keys_give_zero_output_and_minus_inf_lse(rng):
    q = rng.standard_normal((2, 5, 2, 64)).astype(np.float32)
    k = np.zeros((2, 0, 1, 64), np.float32)
    out, lse = fa.attention(q, k, k, return_lse=True, device="cpu")
    assert out.shape == q.shape and np.all(out == 0)
    assert lse.shape == (2, 2, 5) and np.all(np.isneginf(lse))


def test_gqa_consecutive_q_heads_share_a_kv_head(rng):
    q, k, v = make_inputs(rng, 1, 9, 11, 6, 2, 32, np.float32)
    out = fa.attention(q, k, v, device="cpu")
    for h in range(6):
        expected = fa.attention(q[:, :, h:h + 1], k[:, :, h // 3:h // 3 + 1],
                                v[:, :, h // 3:h // 3 + 1], device="cpu")
        np.testing.assert_array_equal(out[:, :, h:h + 1], expected)


def test_deterministic_bitwise(rng):
    q, k, v = make_inputs(rng, 2, 77, 91, 4, 2, 64, np.float16)
    a = fa.attention(q, k, v, causal=True, device="cpu")
    b = fa.attention(q, k, v, causal=True, device="cpu")
    assert a.tobytes() == b.tobytes()


def _run_python(code, timeout=120):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout)


def test_ctrl_c_stops_a_long_host_call():
    """SIGINT during a long device='cpu' call raises KeyboardInterrupt within a poll or two: the
    C reference calls the interrupt hook between groups of rows (a whole call here takes many
    seconds)."""
    proc = _run_python(
        "import os, signal, threading, time\n"
        "import numpy as np, flashattn_c as fa\n"
        "q = np.random.default_rng(0).standard_normal((1, 4096, 8, 64)).astype(np.float32)\n"
        "threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
        "t0 = time.monotonic()\n"
        "try:\n"
        "    fa.attention(q, q, q, device='cpu')\n"
        "    print('FINISHED %.2f' % (time.monotonic() - t0))\n"
        "except KeyboardInterrupt:\n"
        "    print('INTERRUPTED %.2f' % (time.monotonic() - t0))\n")
    assert proc.returncode == 0, proc.stderr
    word, seconds = proc.stdout.split()
    assert word == "INTERRUPTED", proc.stdout
    assert float(seconds) < 3.0, proc.stdout


def test_host_allocation_failure_is_memory_error():
    """The C reference's float32 copy of one kv head (here 2 x 1 GiB of address space, never
    touched) fails under an address-space limit: MemoryError naming the cause, no crash."""
    proc = _run_python(
        "import resource\n"
        "import numpy as np, flashattn_c as fa\n"
        "q = np.zeros((1, 1, 1, 16), np.float16)\n"
        "k = np.zeros((1, 1 << 24, 1, 16), np.float16)\n"   # 512 MiB each, calloc'd: untouched
        "v = np.zeros((1, 1 << 24, 1, 16), np.float16)\n"
        "vm = [l for l in open('/proc/self/status') if l.startswith('VmSize:')][0]\n"
        "now = int(vm.split()[1]) * 1024\n"
        "limit = now + (3 << 29)\n"                          # room for one 1 GiB copy, not two
        "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        "try:\n"
        "    fa.attention(q, k, v, device='cpu')\n"
        "    print('RAN')\n"
        "except MemoryError as e:\n"
        "    print('MEMORYERROR', e)\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("MEMORYERROR"), proc.stdout
    assert "out of memory" in proc.stdout
