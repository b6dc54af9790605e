"""Every bad input to flashattn_c.attention: the exception type, the message (argument named,
expected vs got), and that nothing was written to `out`.

Runs without a GPU. Host cases use NumPy arrays with device="cpu"; device cases use fake CUDA
producers (tests/test_interop.py: FakeDLPack, FakeCAI) whose memory does not exist, so each
device-side rule is shown to fire before any CUDA call: on a machine with no GPU a CUDA call
would raise CudaError instead of the expected TypeError / ValueError. Zero-size shapes give empty
results without launching anything.

    python -m pytest -q tests/test_api_errors.py
"""
import math
import re

import numpy as np
import pytest

import flashattn_c as fa
from test_interop import (DL_BFLOAT16, DL_FLOAT32, FAKE_DEVICE_PTR, IS_COPIED,
                          KDL_CUDA, READ_ONLY, FakeCAI, FakeDLPack, gpu_present, host_dlpack)

B, SQ, SK, HQ, HKV, D = 2, 16, 24, 4, 2, 64
Q_SHAPE, KV_SHAPE = (B, SQ, HQ, D), (B, SK, HKV, D)
SENTINEL = 3.0


@pytest.fixture
def qkv(rng):
    q = rng.standard_normal(Q_SHAPE).astype(np.float16)
    k = rng.standard_normal(KV_SHAPE).astype(np.float16)
    v = rng.standard_normal(KV_SHAPE).astype(np.float16)
    return q, k, v


def host_out(dtype=np.float16, shape=Q_SHAPE):
    return np.full(shape, SENTINEL, dtype)


def rejects(error, match, *args, out=None, **kwargs):
    """Asserts the call raises `error` matching `match` and leaves `out` untouched."""
    before = None if out is None or not isinstance(out, np.ndarray) else out.copy()
    with pytest.raises(error, match=match) as info:
        fa.attention(*args, out=out, **kwargs)
    if before is not None:
        assert np.array_equal(out, before), "a rejected call wrote to out"
    return info


def dev(shape, **kw):
    return FakeDLPack(shape, **kw)


def dev_qkv(**kw):
    return dev(Q_SHAPE, **kw), dev(KV_SHAPE, **kw), dev(KV_SHAPE, **kw)


# ------------------------------------------------------------------------------------------------
# Shapes


def test_q_must_be_4d(qkv):
    q, k, v = qkv
    rejects(ValueError, r"q must be 4-D \(batch, seqlen_q, heads_q, head_dim\), got 3-D",
            q[0], k, v, out=host_out(), device="cpu")


def test_k_and_v_must_be_4d(qkv):
    q, k, v = qkv
    rejects(ValueError, r"k must be 4-D \(batch, seqlen_k, heads_kv, head_dim\), got 5-D",
            q, k[None], v, out=host_out(), device="cpu")
    rejects(ValueError, r"v must be 4-D \(batch, seqlen_k, heads_kv, head_dim\), got 2-D",
            q, k, v[0, 0], out=host_out(), device="cpu")


def test_k_and_v_must_have_the_same_shape(qkv):
    q, k, v = qkv
    rejects(ValueError,
            r"k and v must have the same shape, got k \(2, 24, 2, 64\) and v \(2, 23, 2, 64\)",
            q, k, v[:, :23], out=host_out(), device="cpu")


def test_heads_q_must_be_a_multiple_of_heads_kv(rng):
    q = rng.standard_normal((2, 8, 6, 64)).astype(np.float16)
    k = rng.standard_normal((2, 8, 4, 64)).astype(np.float16)
    rejects(ValueError, r"heads_q \(6\) must be a multiple of heads_kv \(4\)",
            q, k, k, out=host_out(shape=q.shape), device="cpu")


def test_batch_and_head_dim_must_match(qkv, rng):
    q, k, v = qkv
    rejects(ValueError, r"q and k must have the same batch size, got q 2 and k 1",
            q, k[:1], v[:1], out=host_out(), device="cpu")
    k32 = rng.standard_normal((B, SK, HKV, 32)).astype(np.float16)
    rejects(ValueError, r"q and k must have the same head_dim, got q 64 and k 32",
            q, k32, k32, out=host_out(), device="cpu")


@pytest.mark.parametrize("head_dim", [4, 12, 100, 264])
def test_unsupported_head_dim(rng, head_dim):
    q = rng.standard_normal((1, 4, 1, head_dim)).astype(np.float16)
    rejects(ValueError, rf"head_dim must be a multiple of 8 in \[8, 256\], got {head_dim}",
            q, q, q, out=host_out(shape=q.shape), device="cpu")


# ------------------------------------------------------------------------------------------------
# dtypes


def test_q_k_v_must_share_a_dtype(qkv):
    q, k, v = qkv
    rejects(TypeError, r"q, k and v must have the same dtype, got q float16, k float32",
            q, k.astype(np.float32), v, out=host_out(), device="cpu")
    rejects(TypeError, r"q, k and v must have the same dtype, got q float16, v float32",
            q, k, v.astype(np.float32), out=host_out(), device="cpu")


def test_float16_and_bfloat16_do_not_mix(qkv):
    q, k, v = qkv
    k_bf16 = host_dlpack(k.view(np.uint16), dtype=DL_BFLOAT16)
    rejects(TypeError, r"q, k and v must have the same dtype, got q float16, k bfloat16",
            q, k_bf16, v, out=host_out(), device="cpu")
    assert k_bf16.deleter_calls == 1


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.complex64, np.bool_])
def test_unsupported_dtypes(rng, dtype):
    q = np.ones(Q_SHAPE, dtype)
    name = np.dtype(dtype).name
    rejects(TypeError, rf"unsupported dtype {name} for q: expected float16 or bfloat16 "
                       r"\(float32 or float64 on device='cpu'\)", q, q, q, device="cpu")


def test_float32_runs_only_on_the_host_reference(rng):
    q = rng.standard_normal(Q_SHAPE).astype(np.float32)
    # No GPU is touched: the dtype rule fires first (on a machine with no GPU a CUDA call would
    # have raised CudaError instead).
    rejects(TypeError, r"unsupported dtype float32 for q: expected float16 or bfloat16", q, q, q)
    assert fa.attention(q, q, q, device="cpu").dtype == np.float32


def test_float64_runs_only_on_the_host_reference(rng):
    q = rng.standard_normal(Q_SHAPE)
    rejects(TypeError, r"^unsupported dtype float64 for q: expected float16 or bfloat16 "
                       r"\(float64 runs only on device='cpu'\)$", q, q, q)
    rejects(TypeError, r"^unsupported dtype float64 for q: expected float16 or bfloat16 "
                       r"\(float64 runs only on device='cpu'\)$", q, q, q, device="cuda")
    out, lse = fa.attention(q, q, q, return_lse=True, device="cpu")
    assert out.dtype == np.float64 and lse.dtype == np.float32


def test_big_endian_arrays_are_refused(qkv):
    q, k, v = qkv
    swapped = q.astype(q.dtype.newbyteorder(">"))
    rejects(TypeError, r"unsupported dtype >f2 for q", swapped, k, v, device="cpu")


# ------------------------------------------------------------------------------------------------
# out=


def test_out_shape(qkv):
    q, k, v = qkv
    rejects(ValueError, r"out must have shape \(2, 16, 4, 64\) \(q's shape\), got \(2, 16, 4, 32\)",
            q, k, v, out=host_out(shape=(B, SQ, HQ, 32)), device="cpu")
    rejects(ValueError, r"out must have shape \(2, 16, 4, 64\) \(q's shape\), got \(16, 4, 64\)",
            q, k, v, out=host_out(shape=(SQ, HQ, D)), device="cpu")


def test_out_dtype(qkv):
    q, k, v = qkv
    rejects(TypeError, r"out must have dtype float16 \(q's dtype\), got float32",
            q, k, v, out=host_out(np.float32), device="cpu")


def test_out_read_only(qkv):
    q, k, v = qkv
    out = host_out()
    out.flags.writeable = False
    rejects(ValueError, r"out is read-only", q, k, v, out=out, device="cpu")


def test_out_read_only_device_arrays(qkv):
    q, k, v = dev_qkv()
    rejects(ValueError, r"out is read-only", q, k, v, out=FakeCAI(Q_SHAPE, readonly=True))
    flagged = dev(Q_SHAPE, flags=READ_ONLY)
    rejects(ValueError, r"out is read-only", q, k, v, out=flagged)
    assert flagged.deleter_calls == 1


def test_out_exported_as_a_copy_is_refused():
    q, k, v = dev_qkv()
    rejects(ValueError, r"out was exported as a copy", q, k, v, out=dev(Q_SHAPE, flags=IS_COPIED))


def test_out_must_be_a_real_array(qkv):
    q, k, v = qkv
    rejects(TypeError, r"out must be an array the result can be written into", q, k, v,
            out=[[0.0]], device="cpu")


def test_out_on_the_device_needs_unit_head_dim_stride():
    q, k, v = dev_qkv()
    strides = (SQ * HQ * 2 * D * 2, HQ * 2 * D * 2, 2 * D * 2, 2 * 2)  # bytes, head_dim stride 2
    rejects(ValueError, r"out must have unit stride on head_dim, got stride 2", q, k, v,
            out=FakeCAI(Q_SHAPE, strides=strides))


# ------------------------------------------------------------------------------------------------
# window_size, softcap, sinks


@pytest.mark.parametrize("window", [5, (1,), (1, 2, 3), "ab", None, {1: 2}, np.array([1, 2])])
def test_window_size_must_be_a_pair(qkv, window):
    q, k, v = qkv
    rejects(TypeError, r"window_size must be a pair \(left, right\) of ints >= -1 "
                       r"\(-1: unbounded\), got ", q, k, v, out=host_out(), window_size=window,
            device="cpu")


@pytest.mark.parametrize("window, side, got", [((1.5, 0), "left", "float"),
                                               ((True, 0), "left", "bool"),
                                               ((0, False), "right", "bool"),
                                               (("1", 0), "left", "str"),
                                               ((0, None), "right", "NoneType")])
def test_window_size_sides_must_be_ints(qkv, window, side, got):
    q, k, v = qkv
    rejects(TypeError, rf"window_size {side} must be an int >= -1 \(-1: unbounded\), got {got}",
            q, k, v, out=host_out(), window_size=window, device="cpu")


@pytest.mark.parametrize("window, side, got", [((-2, 0), "left", -2), ((0, -5), "right", -5),
                                               ((2**31, 0), "left", 2**31)])
def test_window_size_sides_must_be_at_least_minus_one(qkv, window, side, got):
    q, k, v = qkv
    rejects(ValueError, rf"window_size {side} must be an int in \[-1, 2147483647\] "
                        rf"\(-1: unbounded\), got {got}", q, k, v, out=host_out(),
            window_size=window, device="cpu")


@pytest.mark.parametrize("window", [[3, 0], (np.int64(3), np.int32(0)), (-1, 0), (0, -1),
                                    (0, 0)])
def test_window_size_takes_lists_and_numpy_ints(qkv, window):
    q, k, v = qkv
    out = fa.attention(q, k, v, window_size=window, device="cpu")
    assert out.shape == q.shape and np.isfinite(out.astype(np.float32)).all()


@pytest.mark.parametrize("softcap, shown", [(-1.0, "-1"), (math.nan, "nan"), (math.inf, "inf"),
                                            (-math.inf, "-inf")])
def test_softcap_must_be_finite_and_non_negative(qkv, softcap, shown):
    q, k, v = qkv
    rejects(ValueError, rf"softcap must be finite and >= 0, got {re.escape(shown)}$", q, k, v,
            out=host_out(), softcap=softcap, device="cpu")


def test_softcap_must_fit_float32(qkv):
    q, k, v = qkv
    rejects(ValueError, r"softcap must be at most 3\.40282e\+38 \(the largest float32\)", q, k,
            v, out=host_out(), softcap=1e39, device="cpu")
    rejects(ValueError, r"softcap must be at most .*got an int beyond float range", q, k, v,
            out=host_out(), softcap=10**400, device="cpu")


@pytest.mark.parametrize("softcap, got", [("30", "str"), (True, "bool"), (None, "NoneType"),
                                          (np.bool_(False), r"numpy\.bool_?"), (2j, "complex"),
                                          ((30,), "tuple")])
def test_softcap_must_be_a_real_number(qkv, softcap, got):
    q, k, v = qkv
    rejects(TypeError, rf"softcap must be a real number \(int or float\), got {got}", q, k, v,
            out=host_out(), softcap=softcap, device="cpu")


@pytest.mark.parametrize("softcap", [0, 0.0, 30, 50.0, np.float32(20), np.int64(5)])
def test_softcap_takes_ints_floats_and_numpy_scalars(qkv, softcap):
    q, k, v = qkv
    assert fa.attention(q, k, v, softcap=softcap, device="cpu").shape == q.shape


def test_sinks_must_have_one_entry_per_query_head(qkv):
    q, k, v = qkv
    for n in (HQ - 1, HQ + 1, HKV, 0):
        rejects(ValueError, rf"sinks must have heads_q = {HQ} entries \(one logit per query "
                            rf"head\), got {n}", q, k, v, out=host_out(),
                sinks=np.zeros(n, np.float32), device="cpu")


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int32, np.bool_])
def test_sinks_must_be_float32(qkv, dtype):
    q, k, v = qkv
    name = np.dtype(dtype).name
    rejects(TypeError, rf"sinks must be float32, got {name}", q, k, v, out=host_out(),
            sinks=np.zeros(HQ, dtype), device="cpu")


def test_sinks_must_be_float32_through_dlpack_too(qkv):
    q, k, v = qkv
    sinks = host_dlpack(np.zeros(HQ, np.uint16), dtype=DL_BFLOAT16)
    rejects(TypeError, r"sinks must be float32, got bfloat16", q, k, v, out=host_out(),
            sinks=sinks, device="cpu")
    assert sinks.deleter_calls == 1


@pytest.mark.parametrize("shape", [(), (1, HQ), (HQ, 1), (2, 2)])
def test_sinks_must_be_1d(qkv, shape):
    q, k, v = qkv
    rejects(ValueError, rf"sinks must be 1-D \(heads_q,\), got {len(shape)}-D", q, k, v,
            out=host_out(), sinks=np.zeros(shape, np.float32), device="cpu")


def test_sinks_must_be_contiguous(qkv):
    q, k, v = qkv
    rejects(ValueError, r"sinks must be contiguous, got stride 2", q, k, v, out=host_out(),
            sinks=np.zeros(2 * HQ, np.float32)[::2], device="cpu")
    rejects(ValueError, r"sinks must be contiguous, got stride -1", q, k, v, out=host_out(),
            sinks=np.zeros(HQ, np.float32)[::-1], device="cpu")


def test_sinks_must_be_an_array(qkv):
    q, k, v = qkv
    rejects(TypeError, r"sinks must be an array", q, k, v, out=host_out(), sinks=object(),
            device="cpu")


def test_device_sinks_are_refused_for_host_inputs(qkv):
    q, k, v = qkv
    sinks = dev((HQ,), dtype=DL_FLOAT32)
    for device in ("cpu", None):
        rejects(ValueError, r"sinks must live where q lives \(a device array on q's GPU, a host "
                            r"array for host q\): q is on cpu, sinks is on cuda:0", q, k, v,
                out=host_out(), sinks=sinks, device=device)


def test_host_sinks_are_refused_for_device_inputs():
    q, k, v = dev_qkv()
    rejects(ValueError, r"sinks must live where q lives .*: q is on cuda:0, sinks is on cpu",
            q, k, v, sinks=np.zeros(HQ, np.float32))


def test_sinks_on_another_gpu_are_refused():
    q, k, v = dev_qkv()
    sinks = dev((HQ,), dtype=DL_FLOAT32, device=(KDL_CUDA, 1))
    rejects(ValueError, r"q and sinks must be on the same device, got cuda:0 and cuda:1", q, k, v,
            sinks=sinks)
    assert sinks.deleter_calls == 1


def test_bad_device_sinks_are_named_before_any_cuda_call():
    q, k, v = dev_qkv()
    rejects(ValueError, r"sinks must have heads_q = 4 entries", q, k, v,
            sinks=dev((HQ + 1,), dtype=DL_FLOAT32))
    rejects(TypeError, r"sinks must be float32, got float16", q, k, v, sinks=dev((HQ,)))
    rejects(ValueError, r"sinks must be contiguous, got stride 2", q, k, v,
            sinks=FakeCAI((HQ,), typestr="<f4", strides=(8,)))


def test_window_softcap_and_sinks_errors_come_before_the_gpu(qkv):
    """Host arrays with device=None would need a GPU: each bad argument is named first (on a
    machine with no GPU, a CUDA call would have raised CudaError instead)."""
    q, k, v = qkv
    rejects(TypeError, r"window_size must be a pair", q, k, v, out=host_out(), window_size=3)
    rejects(ValueError, r"softcap must be finite", q, k, v, out=host_out(), softcap=-2.0)
    rejects(TypeError, r"sinks must be float32", q, k, v, out=host_out(),
            sinks=np.zeros(HQ, np.float64))


# ------------------------------------------------------------------------------------------------
# Flags (issue 16 item 6): causal and return_lse take a bool, not anything truthy


@pytest.mark.parametrize("flag", ["causal", "return_lse"])
@pytest.mark.parametrize("value, got", [("False", "str"), (None, "NoneType"), (1, "int"),
                                        (0.0, "float"), ("no", "str"), ([], "list")])
def test_flags_must_be_bools(qkv, flag, value, got):
    q, k, v = qkv
    rejects(TypeError, rf"{flag} must be a bool, got {got}", q, k, v, out=host_out(),
            device="cpu", **{flag: value})


def test_causal_string_false_no_longer_runs_causal(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="causal must be a bool"):
        fa.attention(q, k, v, causal="False", device="cpu")


def test_numpy_bools_are_flags(qkv):
    q, k, v = qkv
    a = fa.attention(q, k, v, causal=np.bool_(True), device="cpu")
    b = fa.attention(q, k, v, causal=True, device="cpu")
    assert np.array_equal(a, b)
    out, lse = fa.attention(q, k, v, return_lse=np.bool_(True), device="cpu")
    assert lse.shape == (B, HQ, SQ)
    assert isinstance(fa.attention(q, k, v, return_lse=np.False_, device="cpu"), np.ndarray)


def test_low_level_flags_are_bools_too(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match=r"causal must be a bool, got str"):
        fa._C.forward(q, k, v, causal="yes", device_kind=fa._C.DEVICE_CPU)
    with pytest.raises(TypeError, match=r"return_lse must be a bool, got int"):
        fa._C.forward(q, k, v, return_lse=1, device_kind=fa._C.DEVICE_CPU)


# ------------------------------------------------------------------------------------------------
# softmax_scale, device=, kernel=, stream=


@pytest.mark.parametrize("scale, shown", [(math.nan, "nan"), (math.inf, "inf"), (-0.5, "-0.5"),
                                          (-math.inf, "-inf")])
def test_softmax_scale_must_be_finite_and_non_negative(qkv, scale, shown):
    q, k, v = qkv
    rejects(ValueError, rf"softmax_scale must be finite and >= 0, got {re.escape(shown)}$",
            q, k, v, out=host_out(), softmax_scale=scale, device="cpu")


@pytest.mark.parametrize("scale, shown", [
    (1e300, "got 1e+300"), (3.5e38, "got 3.5e+38"), (np.float64(1e39), "got 1e+39"),
    (10**39, "got 1e+39"), (10**400, "got an int beyond float range"),
])
def test_softmax_scale_must_fit_float32(qkv, scale, shown):
    """Issue 16 item 7: a scale the kernels' float cannot hold is refused as out of float32's
    range (10**400 used to be 'must be a float or None, got int', though ints are taken)."""
    q, k, v = qkv
    rejects(ValueError, r"softmax_scale must be at most 3\.40282e\+38 \(the largest float32\), "
            + re.escape(shown), q, k, v, out=host_out(), softmax_scale=scale, device="cpu")


@pytest.mark.parametrize("scale", [0, 1, 0.125, np.float32(0.125), np.float16(2), np.int64(3),
                                   3.4e38, 1e-50])
def test_softmax_scale_takes_ints_floats_and_numpy_scalars(qkv, scale):
    q, k, v = qkv
    out = fa.attention(q, k, v, softmax_scale=scale, device="cpu")
    assert out.shape == q.shape


@pytest.mark.parametrize("scale, got", [("0.1", "str"), (True, "bool"), (False, "bool"),
                                        (np.bool_(True), r"numpy\.bool_?"), (1j, "complex"),
                                        ([0.1], "list")])
def test_softmax_scale_must_be_a_number(qkv, scale, got):
    """Issue 16 item 6: softmax_scale=True used to count as 1.0."""
    q, k, v = qkv
    rejects(TypeError, rf"softmax_scale must be a real number \(int or float\), got {got}",
            q, k, v, out=host_out(), softmax_scale=scale, device="cpu")


@pytest.mark.parametrize("device, error, match", [
    ("tpu", ValueError,
     r"device must be None, 'cpu', 'cuda', 'cuda:N' or an int ordinal, got 'tpu'"),
    ("cuda:x", ValueError, r"device must be None, 'cpu', 'cuda', 'cuda:N' or an int ordinal"),
    (-1, ValueError, r"device ordinal must be >= 0, got -1"),
    (True, TypeError, r"device must be None"),
    (1.5, TypeError, r"device must be None, 'cpu', 'cuda', 'cuda:N' or an int ordinal, got float"),
])
def test_bad_device_arguments(qkv, device, error, match):
    q, k, v = qkv
    rejects(error, match, q, k, v, out=host_out(), device=device)


def test_kernel_and_stream_have_no_meaning_on_the_host_reference(qkv):
    q, k, v = qkv
    rejects(ValueError, r"kernel='sm90' selects a GPU kernel family; device='cpu' runs the host "
                        r"reference", q, k, v, out=host_out(), device="cpu", kernel="sm90")
    rejects(ValueError, r"stream= orders GPU work; device='cpu'", q, k, v, out=host_out(),
            device="cpu", stream=0)


def test_unknown_kernel(qkv):
    q, k, v = qkv
    rejects(ValueError, r"kernel must be None, 'auto', 'sm80' or 'sm90', got 'sm100'",
            q, k, v, out=host_out(), kernel="sm100")


@pytest.mark.parametrize("bad", [3, "q", None, [[1.0]], object()])
def test_inputs_must_be_arrays(qkv, bad):
    q, k, v = qkv
    rejects(TypeError, r"q must be an array \(an object with __dlpack__ or "
                       r"__cuda_array_interface__, or a NumPy array\), got", bad, k, v,
            device="cpu")


# ------------------------------------------------------------------------------------------------
# Device inputs: every rule fires before any CUDA call


def test_device_inputs_must_share_a_device():
    q = dev(Q_SHAPE, device=(KDL_CUDA, 0))
    k = dev(KV_SHAPE, device=(KDL_CUDA, 1))
    rejects(ValueError, r"q and k must be on the same device, got cuda:0 and cuda:1", q, k, k)
    out = dev(Q_SHAPE, device=(KDL_CUDA, 1))
    kv = dev(KV_SHAPE)
    rejects(ValueError, r"q and out must be on the same device, got cuda:0 and cuda:1",
            q, kv, kv, out=out)


def test_device_argument_must_match_the_inputs():
    q, k, v = dev_qkv()
    rejects(ValueError, r"q is on cuda:0 but device='cuda:1' was given", q, k, v, device="cuda:1")


def test_host_and_device_arrays_do_not_mix(qkv):
    q, k, v = qkv
    rejects(ValueError, r"host arrays cannot be mixed with device arrays: q is on cpu, k is on "
                        r"cuda", q, FakeCAI(KV_SHAPE), v, out=host_out())
    dq, dk, dv = dev_qkv()
    rejects(ValueError, r"host arrays cannot be mixed with device arrays: q is on cuda:0, out is "
                        r"on cpu", dq, dk, dv, out=host_out())


def test_device_arrays_cannot_run_on_the_host_reference():
    q, k, v = dev_qkv()
    rejects(ValueError, r"device='cpu' runs the host reference on host arrays, got q on cuda:0",
            q, k, v, device="cpu")


def test_device_inputs_need_unit_head_dim_stride():
    element_strides = (SQ * HQ * 2 * D, HQ * 2 * D, 2 * D, 2)
    q = dev(Q_SHAPE, strides=element_strides)
    k, v = dev(KV_SHAPE), dev(KV_SHAPE)
    rejects(ValueError, r"q must have unit stride on head_dim, got stride 2", q, k, v)
    byte_strides = tuple(2 * s for s in (SK * HKV * 2 * D, HKV * 2 * D, 2 * D, 2))
    rejects(ValueError, r"k must have unit stride on head_dim, got stride 2",
            dev(Q_SHAPE), FakeCAI(KV_SHAPE, strides=byte_strides), FakeCAI(KV_SHAPE))


def test_device_dtype_rules():
    q, k, v = dev_qkv()
    rejects(TypeError, r"q, k and v must have the same dtype, got q float16, k bfloat16",
            q, dev(KV_SHAPE, dtype=DL_BFLOAT16), v)
    rejects(TypeError, r"unsupported dtype float32 for q", dev(Q_SHAPE, dtype=DL_FLOAT32), k, v)
    rejects(TypeError, r"unsupported dtype <V2 \(raw bytes\) for k", q,
            FakeCAI(KV_SHAPE, typestr="<V2"), FakeCAI(KV_SHAPE, typestr="<V2"))
    rejects(TypeError, r"unsupported dtype float64 for q",
            FakeCAI(Q_SHAPE, typestr="<f8"), k, v)


def test_gpu_layout_rules_come_from_the_c_api():
    """Alignment and 16-byte stride rules of fa_check_params, checked before any launch."""
    k, v = dev(KV_SHAPE), dev(KV_SHAPE)
    rejects(ValueError, r"q must be 16-byte aligned for the GPU kernels",
            dev(Q_SHAPE, data=FAKE_DEVICE_PTR + 2), k, v)
    odd_rows = (SQ * (HQ * D + 4), HQ * D + 4, D, 1)
    rejects(ValueError, r"q strides must be multiples of 8 elements",
            dev(Q_SHAPE, strides=odd_rows), k, v)


@pytest.mark.parametrize("fake, match", [
    (lambda: FakeCAI(Q_SHAPE, stream=-5), r"__cuda_array_interface__\['stream'\] must be a "
                                           r"stream handle, got -5"),
    (lambda: FakeCAI(Q_SHAPE, mask=object()), r"masked arrays are not supported"),
    (lambda: FakeCAI(Q_SHAPE, typestr="f2"), r"is not a type string"),
    (lambda: FakeCAI(Q_SHAPE, strides=(1, 1, 1, 1)), r"not a whole number of 2-byte elements"),
    (lambda: FakeDLPack(Q_SHAPE, device=(10, 0)), r"q is on DLPack device type 10 \(rocm\): "
                                                  r"expected cpu \(1\) or cuda \(2\)"),
], ids=["cai-stream", "cai-mask", "cai-typestr", "cai-strides", "rocm"])
def test_malformed_device_arrays(fake, match):
    k, v = dev(KV_SHAPE), dev(KV_SHAPE)
    rejects(ValueError, match, fake(), k, v)


def test_cuda_array_interface_must_be_a_dict():
    class Broken:
        __cuda_array_interface__ = [1, 2]

    rejects(TypeError, r"q.__cuda_array_interface__ must be a dict, got list",
            Broken(), dev(KV_SHAPE), dev(KV_SHAPE))


def test_dlpack_must_return_a_capsule():
    class Broken:
        def __dlpack_device__(self):
            return (KDL_CUDA, 0)

        def __dlpack__(self, **kwargs):
            return "not a capsule"

    rejects(TypeError, r"q.__dlpack__\(\) must return an unused DLPack capsule",
            Broken(), dev(KV_SHAPE), dev(KV_SHAPE))


@pytest.mark.parametrize("device, error, match", [
    ([KDL_CUDA, 0], TypeError, r"q.__dlpack_device__\(\) must return \(device_type, device_id\), got list"),
    ((-1, 0), ValueError, r"q is on DLPack device type -1 .*: expected cpu \(1\) or cuda \(2\)"),
    (("cuda", 0), TypeError, r"integer"),
], ids=["list", "negative", "not-an-int"])
def test_dlpack_device_answers_are_checked_before_any_export(device, error, match):
    class Odd:
        def __dlpack_device__(self):
            return device

        def __dlpack__(self, **kwargs):
            raise AssertionError("__dlpack__ called after a bad __dlpack_device__ answer")

    rejects(error, match, Odd(), dev(KV_SHAPE), dev(KV_SHAPE))


def test_producer_exceptions_propagate():
    class Refuses:
        def __dlpack_device__(self):
            return (KDL_CUDA, 0)

        def __dlpack__(self, **kwargs):
            raise RuntimeError("Can't export tensors that require gradient")

    rejects(RuntimeError, r"require gradient", Refuses(), dev(KV_SHAPE), dev(KV_SHAPE))


# ------------------------------------------------------------------------------------------------
# No GPU: valid calls that need one say so (only where there is none)

no_gpu_only = pytest.mark.skipif(gpu_present(), reason="there is a GPU: the no-GPU errors cannot "
                                                       "be produced here")


@no_gpu_only
def test_host_arrays_without_a_gpu_suggest_device_cpu(qkv):
    q, k, v = qkv
    info = rejects(fa.CudaError, r"no usable GPU: .*pass device='cpu' to run the C reference",
                   q, k, v, out=host_out())
    assert isinstance(info.value, RuntimeError) and info.value.cuda_error != 0
    assert re.fullmatch(r"cudaError\w+", info.value.cuda_error_name)
    assert re.match(r"cudaGetDevice.* failed at .*module\.c:\d+$", info.value.call_site)


@no_gpu_only
def test_valid_device_inputs_without_a_gpu_raise_cuda_error():
    q, k, v = dev_qkv()
    info = rejects(fa.CudaError, r"no usable GPU: ", q, k, v)
    assert "device='cpu'" not in str(info.value), "device arrays cannot take the host path"
    assert re.match(r"cudaGetDevice.* failed at .*module\.c:\d+$", info.value.call_site)
    assert q.deleter_calls == 1


@no_gpu_only
def test_launch_config_without_a_gpu_suggests_arch():
    with pytest.raises(fa.CudaError, match=r"no usable GPU: .*pass arch=\(major, minor\)"):
        fa.launch_config(batch=1, seqlen_q=1, seqlen_k=1, heads_q=1, heads_kv=1, head_dim=64,
                         dtype="float16")


def test_cuda_error_is_a_runtime_error():
    assert issubclass(fa.CudaError, RuntimeError)
    assert fa.CudaError.__module__ == "flashattn_c"


# ------------------------------------------------------------------------------------------------
# launch_config arguments


def test_launch_config_arguments():
    base = dict(batch=1, seqlen_q=8, seqlen_k=8, heads_q=2, heads_kv=2, head_dim=64)
    for dtype in ("float64", "fp64", "double", np.float64):
        with pytest.raises(TypeError, match=r"^unsupported dtype float64 for a GPU launch: "
                                            r"expected float16 or bfloat16 \(float64 runs only "
                                            r"on device='cpu'\)$"):
            fa.launch_config(dtype=dtype, arch=(9, 0), **base)
    with pytest.raises(TypeError, match=r"unsupported dtype int32: expected float16 or "
                                        r"bfloat16"):
        fa.launch_config(dtype="int32", arch=(9, 0), **base)
    with pytest.raises(TypeError, match=r"float32"):
        fa.launch_config(dtype=np.float32, arch=(9, 0), **base)
    for arch in (90, "90", (9.7, 0), (9, 0, 0), (9, -1), (True, 0)):
        with pytest.raises(ValueError, match=r"arch must be None or \(major, minor\), two ints >= 0, "
                                             r"got " + re.escape(repr(arch))):
            fa.launch_config(dtype="float16", arch=arch, **base)
    assert fa.launch_config(dtype="float16", arch=[np.int64(9), 0], **base)["arch"] == (9, 0)
    with pytest.raises(ValueError, match=r"no nominal device for sm_75"):
        fa.launch_config(dtype="float16", arch=(7, 5), **base)
    with pytest.raises(ValueError, match=r"heads_q \(2\) must be a multiple of heads_kv \(3\)"):
        fa.launch_config(dtype="float16", arch=(9, 0), **dict(base, heads_kv=3))
    with pytest.raises(TypeError):
        fa.launch_config(dtype="float16", arch=(9, 0))  # sizes are required
    assert fa.launch_config(dtype=np.float16, arch=(9, 0), **base)["block"] == (384, 1, 1)


# ------------------------------------------------------------------------------------------------
# Zero sizes: empty results, nothing launched, no error (no GPU needed)


@pytest.mark.parametrize("shape", [(0, SQ, HQ, D), (B, 0, HQ, D), (B, SQ, 0, D)],
                         ids=["batch0", "seqlen_q0", "heads0"])
@pytest.mark.parametrize("device", [None, "cpu"])
def test_empty_outputs_launch_nothing(rng, shape, device):
    q = rng.standard_normal(shape).astype(np.float16)
    heads_kv = 0 if shape[2] == 0 else HKV
    k = rng.standard_normal((shape[0], SK, heads_kv, D)).astype(np.float16)
    out, lse = fa.attention(q, k, k, return_lse=True, device=device)
    assert out.shape == shape and out.dtype == np.float16
    assert lse.shape == (shape[0], shape[2], shape[1]) and lse.dtype == np.float32


def test_empty_keys_give_zero_output_and_minus_infinity_lse(rng):
    q = rng.standard_normal((B, SQ, HQ, D)).astype(np.float16)
    k = np.zeros((B, 0, HKV, D), np.float16)
    out = np.full_like(q, np.nan)
    result, lse = fa.attention(q, k, k, return_lse=True, out=out, device="cpu")
    assert result is out and np.all(out == 0)
    assert lse.shape == (B, HQ, SQ) and np.all(np.isneginf(lse))


def test_empty_device_output_is_checked_too():
    """Emptiness skips the launch, not the rules."""
    q = dev((0, SQ, HQ, 12))
    k = dev((0, SK, HKV, 12))
    rejects(ValueError, r"head_dim must be a multiple of 8", q, k, k)
