"""attention_varlen (packed batches of sequences of different lengths) without a GPU: the host
path (device="cpu", the C reference) against tests/reference.py's attention_varlen_numpy (each
entry's slice through attention_numpy) with the rule of DESIGN.md section 6, out= poisoned with
NaN and lse in FlashAttention's varlen layout (heads_q, total_q); the backward and autograd on
CPU tensors; int32 arrays through every import path; and every bad input, raised before any
GPU work. The GPU matrix is tests/test_varlen_gpu.py.

    python -m pytest -q tests/test_varlen.py
"""
import numpy as np
import pytest

import flashattn_c as fa
from reference import (assert_empty_rows, attention_numpy, attention_varlen_grads_numpy,
                       attention_varlen_numpy, check_against_reference, check_grads,
                       visible_mask)
from test_interop import FAKE_DEVICE_PTR, KDL_CPU, FakeCAI, FakeDLPack

DL_INT32, DL_INT64 = (0, 32), (0, 64)


def offsets(lengths):
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)


def packed(rng, lens_q, lens_k, hq, hk, d, dtype, scale=1.0):
    """q (total_q, hq, d), k, v (total_k, hk, d) and the int32 offsets of the lengths."""
    cu_q, cu_k = offsets(lens_q), offsets(lens_k)
    q = (rng.standard_normal((int(cu_q[-1]), hq, d)) * scale).astype(dtype)
    k = (rng.standard_normal((int(cu_k[-1]), hk, d)) * scale).astype(dtype)
    v = rng.standard_normal((int(cu_k[-1]), hk, d)).astype(dtype)
    return q, k, v, cu_q, cu_k


def run_case(rng, lens_q, lens_k, hq, hk, d, dtype, scale=1.0, max_q=None, max_k=None, **kw):
    """The host path into a NaN-poisoned out=, checked against the float64 reference and the
    peer at the input precision; returns (out, lse, reference out, reference lse)."""
    q, k, v, cu_q, cu_k = packed(rng, lens_q, lens_k, hq, hk, d, dtype, scale)
    max_q = max(lens_q, default=0) if max_q is None else max_q
    max_k = max(lens_k, default=0) if max_k is None else max_k
    out = np.full(q.shape, np.nan, dtype)
    got, lse = fa.attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k, return_lse=True,
                                   out=out, device="cpu", **kw)
    assert got is out
    assert lse.dtype == np.float32 and lse.shape == (hq, q.shape[0])
    ref_kw = dict(window=kw.get("window_size", (-1, -1)), softcap=kw.get("softcap", 0.0),
                  sinks=kw.get("sinks"))
    causal, scale_arg = kw.get("causal", False), kw.get("softmax_scale")
    ref_out, ref_lse = attention_varlen_numpy(q, k, v, cu_q, cu_k, causal, scale_arg,
                                              np.float64, **ref_kw)
    peer, _ = attention_varlen_numpy(q, k, v, cu_q, cu_k, causal, scale_arg, np.dtype(dtype).type,
                                     **ref_kw)
    check_against_reference(out, lse, ref_out, ref_lse, peer)
    return out, lse, ref_out, ref_lse


# ================================================================================================
# The reference itself: per-entry slices of attention_numpy
# ================================================================================================


def test_reference_is_attention_numpy_per_entry(rng):
    q, k, v, cu_q, cu_k = packed(rng, [3, 0, 5], [4, 2, 6], 4, 2, 8, np.float64)
    out, lse = attention_varlen_numpy(q, k, v, cu_q, cu_k, causal=True)
    o, l = attention_numpy(q[None, 3:8], k[None, 6:12], v[None, 6:12], causal=True)
    np.testing.assert_array_equal(out[3:8], o[0])
    np.testing.assert_array_equal(lse[:, 3:8], l[0])
    # Entry 0: 3 queries over 4 keys, bottom-right: query 0 sees keys 0..1.
    assert visible_mask(3, 4, True)[0].tolist() == [True, True, False, False]


# ================================================================================================
# Host path against the reference
# ================================================================================================

LENGTHS = [
    # (lens_q, lens_k): ragged, empty entries on either side, single rows, one entry
    ([5, 17, 1, 33], [5, 17, 1, 33]),
    ([0, 7, 1, 40], [9, 0, 1, 65]),
    ([1, 1, 1], [64, 1, 130]),
    ([70, 3], [2, 90]),
    ([129], [113]),
    ([0, 0], [0, 3]),
]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lens", LENGTHS, ids=lambda l: "q%s_k%s" % ("-".join(map(str, l[0])),
                                                                   "-".join(map(str, l[1]))))
def test_varlen_matches_reference(rng, lens, causal, dtype):
    run_case(rng, lens[0], lens[1], 4, 2, 32, dtype, causal=causal)


@pytest.mark.parametrize("heads", [(6, 2), (8, 1), (3, 3)])
@pytest.mark.parametrize("head_dim", [16, 64, 72])
def test_varlen_gqa_and_head_dims(rng, heads, head_dim):
    run_case(rng, [11, 30, 2], [20, 31, 7], heads[0], heads[1], head_dim, np.float16, causal=True)


def test_varlen_large_magnitudes(rng):
    run_case(rng, [50, 9, 77], [60, 13, 77], 4, 2, 64, np.float16, scale=5.0 ** 0.5, causal=True)


@pytest.mark.parametrize("window,causal", [((0, 0), False), ((5, 2), False), ((-1, 3), False),
                                           ((7, -1), True), ((1, 0), True)])
def test_varlen_window_per_entry(rng, window, causal):
    run_case(rng, [12, 0, 40, 1], [30, 5, 40, 9], 4, 2, 32, np.float32, causal=causal,
             window_size=window)


@pytest.mark.parametrize("softcap", [5.0, 30.0])
def test_varlen_softcap(rng, softcap):
    run_case(rng, [21, 8], [33, 8], 4, 2, 32, np.float16, scale=5.0 ** 0.5, causal=True,
             softcap=softcap)


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_sinks_and_empty_rows(rng, causal):
    # Entry 1 has more queries than keys (its first causal rows see only the sink), entry 2 has
    # no key at all (every row: out 0, lse = sinks[h]).
    lens_q, lens_k = [6, 9, 4], [6, 3, 0]
    sinks = (rng.standard_normal(4) * 2).astype(np.float32)
    out, lse, _, _ = run_case(rng, lens_q, lens_k, 4, 2, 32, np.float32, causal=causal,
                              sinks=sinks)
    cu_q = offsets(lens_q)
    for b in range(3):
        rows = slice(cu_q[b], cu_q[b + 1])
        visible = visible_mask(lens_q[b], lens_k[b], causal)
        assert_empty_rows(out[None, rows], lse[None, :, rows], visible, sinks)


def test_varlen_entries_equal_attention_of_each_slice(rng):
    """The layout rule: entry b of a packed call is attention() of its own slices, bitwise (the
    same host code, rows addressed from the entry's first row)."""
    lens_q, lens_k = [7, 0, 19, 1], [11, 4, 19, 30]
    q, k, v, cu_q, cu_k = packed(rng, lens_q, lens_k, 4, 2, 32, np.float16)
    out, lse = fa.attention_varlen(q, k, v, cu_q, cu_k, 19, 30, causal=True, return_lse=True,
                                   device="cpu")
    for b in range(4):
        qs, ks = slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1])
        if lens_q[b] == 0:
            continue
        o, l = fa.attention(q[None, qs], k[None, ks], v[None, ks], causal=True, return_lse=True,
                            device="cpu")
        np.testing.assert_array_equal(out[qs], o[0])
        np.testing.assert_array_equal(lse[:, qs], l[0])


def test_varlen_larger_max_seqlen_changes_nothing(rng):
    q, k, v, cu_q, cu_k = packed(rng, [9, 14], [10, 3], 2, 1, 16, np.float32)
    a = fa.attention_varlen(q, k, v, cu_q, cu_k, 14, 10, causal=True, device="cpu")
    b = fa.attention_varlen(q, k, v, cu_q, cu_k, 500, 700, causal=True, device="cpu")
    np.testing.assert_array_equal(a, b)


def test_varlen_strided_host_inputs(rng):
    """A packed qkv projection (total, 3, heads, head_dim) passes as its three views."""
    lens = [13, 4, 25]
    cu = offsets(lens)
    qkv = rng.standard_normal((int(cu[-1]), 3, 4, 32)).astype(np.float16)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    got = fa.attention_varlen(q, k, v, cu, cu, 25, 25, causal=True, device="cpu")
    want = fa.attention_varlen(*(np.ascontiguousarray(x) for x in (q, k, v)), cu, cu, 25, 25,
                               causal=True, device="cpu")
    np.testing.assert_array_equal(got, want)


def test_varlen_zero_entries_and_zero_rows(rng):
    q = np.zeros((0, 2, 16), np.float32)
    cu = np.zeros(1, np.int32)
    out, lse = fa.attention_varlen(q, q, q, cu, cu, 0, 0, return_lse=True, device="cpu")
    assert out.shape == (0, 2, 16) and lse.shape == (2, 0)


def test_varlen_torch_cpu_tensors_give_torch_tensors(rng):
    torch = pytest.importorskip("torch")
    q, k, v, cu_q, cu_k = packed(rng, [5, 8], [6, 8], 2, 2, 16, np.float32)
    out, lse = fa.attention_varlen(*(torch.from_numpy(x) for x in (q, k, v, cu_q, cu_k)), 8, 8,
                                   return_lse=True, device="cpu")
    assert isinstance(out, torch.Tensor) and isinstance(lse, torch.Tensor)
    want, want_lse = fa.attention_varlen(q, k, v, cu_q, cu_k, 8, 8, return_lse=True, device="cpu")
    np.testing.assert_array_equal(out.numpy(), want)
    np.testing.assert_array_equal(lse.numpy(), want_lse)


# ================================================================================================
# int32 arrays through every import path
# ================================================================================================


def test_int32_offsets_through_dlpack_and_numpy(rng):
    q, k, v, cu_q, cu_k = packed(rng, [3, 4], [5, 2], 2, 1, 16, np.float32)
    want = fa.attention_varlen(q, k, v, cu_q, cu_k, 4, 5, device="cpu")
    as_dlpack = FakeDLPack(cu_q.shape, device=(KDL_CPU, 0), dtype=DL_INT32, data=cu_q.ctypes.data,
                           owner=cu_q)
    np.testing.assert_array_equal(
        fa.attention_varlen(q, k, v, as_dlpack, cu_k, 4, 5, device="cpu"), want)
    assert as_dlpack.deleter_calls == 1


def test_int32_offsets_through_the_cuda_array_interface_and_dlpack_devices():
    """Device int32 arrays are taken through DLPack and the CUDA array interface (a zero-size
    problem: accepted, nothing launched), and their dtype is named when wrong."""
    q, kv = FakeDLPack((0, 2, 64)), FakeDLPack((0, 1, 64))
    cu_q = FakeCAI((3,), typestr="<i4", ptr=FAKE_DEVICE_PTR + 256)
    cu_k = FakeDLPack((3,), dtype=DL_INT32, data=FAKE_DEVICE_PTR + 512)
    out = fa.attention_varlen(q, kv, kv, cu_q, cu_k, 4, 4)
    assert tuple(out.shape) == (0, 2, 64)
    with pytest.raises(TypeError, match="cu_seqlens_q must be int32, got int64"):
        fa.attention_varlen(q, kv, kv, FakeCAI((3,), typestr="<i8"), cu_k, 4, 4)
    with pytest.raises(TypeError, match="cu_seqlens_k must be int32, got int64"):
        fa.attention_varlen(q, kv, kv, cu_q, FakeDLPack((3,), dtype=DL_INT64), 4, 4)


def test_int32_offsets_through_a_torch_layout_tuple():
    """The torch fast path's layout tuples (data_ptr, shape, strides, dtype code, device) carry
    the int32 code; a float one is named."""
    _C = fa._C
    qv, kvv = FakeDLPack((0, 2, 64)), FakeDLPack((0, 1, 64))

    def lay(shape, code):
        strides = tuple(int(np.prod(shape[d + 1:])) for d in range(len(shape)))
        return (FAKE_DEVICE_PTR, shape, strides, code, 0)

    layouts = [lay((0, 2, 64), _C.FLOAT16), lay((0, 1, 64), _C.FLOAT16),
               lay((0, 1, 64), _C.FLOAT16), lay((3,), _C.INT32), lay((3,), _C.INT32), None, None,
               None]
    args = dict(q=qv, k=kvv, v=kvv, cu_seqlens_q=qv, cu_seqlens_k=qv, max_seqlen_q=4,
                max_seqlen_k=4)
    _C.varlen_forward(**args, layouts=tuple(layouts))
    layouts[3] = lay((3,), _C.FLOAT32)
    with pytest.raises(TypeError, match="cu_seqlens_q must be int32, got float32"):
        _C.varlen_forward(**args, layouts=tuple(layouts))


def test_roles_list_the_arrays_in_order():
    _C = fa._C
    I32, F32 = _C.INT32, _C.FLOAT32
    assert _C.varlen_forward_roles == (
        ("q", False, None), ("k", False, None), ("v", False, None), ("cu_seqlens_q", False, I32),
        ("cu_seqlens_k", False, I32), ("out", True, None), ("lse", True, F32),
        ("sinks", False, F32))
    assert [r[0] for r in _C.varlen_backward_roles] == [
        "dout", "q", "k", "v", "out", "lse", "cu_seqlens_q", "cu_seqlens_k", "sinks", "dq", "dk",
        "dv", "dsinks"]


# ================================================================================================
# Bad inputs: the argument named, before any GPU work
# ================================================================================================


@pytest.fixture
def case(rng):
    return packed(rng, [3, 5], [4, 6], 4, 2, 16, np.float16)


def call(case, **kw):
    q, k, v, cu_q, cu_k = case
    args = dict(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=5,
                max_seqlen_k=6)
    args.update(kw)
    out = np.full(args["q"].shape, 3.0, np.float16) if args["q"].ndim == 3 else None
    device = args.pop("device", "cpu")
    try:
        return fa.attention_varlen(**args, out=out, device=device)
    finally:
        if out is not None:
            assert (out == 3.0).all(), "a rejected call wrote to out"


@pytest.mark.parametrize("kw, error, match", [
    (dict(cu_seqlens_q=np.array([0, 3, 8], np.int64)), TypeError,
     "cu_seqlens_q must be int32, got int64"),
    (dict(cu_seqlens_k=np.array([0, 4, 10], np.float32)), TypeError,
     "cu_seqlens_k must be int32, got float32"),
    (dict(cu_seqlens_k=np.array([0, 4, 6, 10], np.int32)), ValueError,
     r"cu_seqlens_q and cu_seqlens_k must have the same length \(batch \+ 1\), got 3 and 4"),
    (dict(cu_seqlens_q=np.zeros(0, np.int32), cu_seqlens_k=np.zeros(0, np.int32)), ValueError,
     "cu_seqlens_q must have batch \\+ 1 >= 1 entries"),
    (dict(cu_seqlens_q=np.array([[0, 3, 8]], np.int32)), ValueError, "cu_seqlens_q must be 1-D"),
    (dict(cu_seqlens_q=np.array([0, 0, 3, 0, 8], np.int32)[::2]), ValueError,
     "cu_seqlens_q must be contiguous, got stride 2"),
    (dict(cu_seqlens_q=np.array([0, 6, 8], np.int32)), ValueError,
     r"cu_seqlens_q\[0..1\] = \(0, 6\): lengths must be >= 0 and at most max_seqlen_q \(5\)"),
    (dict(cu_seqlens_q=np.array([0, 5, 3], np.int32)), ValueError,
     "cu_seqlens_q must start at 0 and end at total_q"),
    (dict(cu_seqlens_k=np.array([1, 4, 10], np.int32)), ValueError,
     "cu_seqlens_k must start at 0"),
    (dict(cu_seqlens_k=np.array([0, 7, 4], np.int32), max_seqlen_k=100), ValueError,
     "cu_seqlens_k must start at 0 and end at total_k"),
    (dict(max_seqlen_q=3), ValueError,
     r"q has total_q = 8 rows, more than batch \(2, from cu_seqlens_q\) x max_seqlen_q \(3\)"),
    (dict(max_seqlen_q=-1), ValueError, r"max_seqlen_q must be in \[0, 2147483647\], got -1"),
    (dict(max_seqlen_k=6.0), TypeError, "max_seqlen_k must be an int, got float"),
    (dict(max_seqlen_k=True), TypeError, "max_seqlen_k must be an int, got bool"),
])
def test_bad_offsets_and_lengths(case, kw, error, match):
    with pytest.raises(error, match=match):
        call(case, **kw)


def test_bad_shapes(case, rng):
    q, k, v, cu_q, cu_k = case
    with pytest.raises(ValueError, match=r"q must be 3-D \(total_q, heads_q, head_dim\), got 4-D"):
        call(case, q=q[None])
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        call(case, v=v[:, :1])
    with pytest.raises(ValueError, match="q and k must have the same head_dim, got q 16 and k 8"):
        call(case, k=k[..., :8], v=v[..., :8])
    with pytest.raises(ValueError, match="sinks must have heads_q = 4 entries"):
        call(case, sinks=np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="sinks must be float32, got float64"):
        call(case, sinks=np.zeros(4))
    with pytest.raises(ValueError, match="heads_q"):
        call(case, k=k[:, :1].repeat(3, 1), v=v[:, :1].repeat(3, 1))


def test_given_lse_must_have_the_varlen_layout(case):
    q, k, v, cu_q, cu_k = case
    lse = np.zeros((8, 4), np.float32)
    with pytest.raises(ValueError, match=r"lse must have shape \(4, 8\), got \(8, 4\)"):
        fa._C.varlen_forward(q, k, v, cu_q, cu_k, 5, 6, lse=lse, device_kind=fa._C.DEVICE_CPU)
    good = np.full((4, 8), 7.0, np.float32)
    _, got = fa._C.varlen_forward(q, k, v, cu_q, cu_k, 5, 6, lse=good,
                                  device_kind=fa._C.DEVICE_CPU)
    assert got is good and not (good == 7.0).any()


def test_offsets_live_where_q_lives(case):
    q, k, v, cu_q, cu_k = case
    dq, dkv = FakeDLPack((8, 4, 16)), FakeDLPack((10, 2, 16))
    with pytest.raises(ValueError, match="cu_seqlens_q must live where q lives"):
        fa.attention_varlen(dq, dkv, dkv, cu_q, cu_k, 5, 6)


def test_host_offsets_are_checked_before_any_gpu_work(case):
    """NumPy inputs bound for the GPU: wrong offsets are a ValueError before anything is copied
    (on a machine without a GPU, any CUDA call would raise CudaError instead)."""
    with pytest.raises(ValueError, match="cu_seqlens_q must start at 0"):
        call(case, cu_seqlens_q=np.array([2, 3, 8], np.int32), device=None)
    with pytest.raises(ValueError, match="cu_seqlens_k"):
        call(case, cu_seqlens_k=np.array([0, 9, 10], np.int32), device="cuda")


def test_gpu_only_arguments_are_refused_on_the_host(case):
    with pytest.raises(ValueError, match="kernel='sm80' selects a GPU kernel family"):
        fa.attention_varlen(*case, 5, 6, device="cpu", kernel="sm80")
    with pytest.raises(ValueError, match="stream= orders GPU work"):
        fa.attention_varlen(*case, 5, 6, device="cpu", stream=0)


# ================================================================================================
# Backward: attention_varlen_backward and autograd (host path)
# ================================================================================================


def grad_case(rng, lens_q, lens_k, hq, hk, d, dtype, causal=False, window=(-1, -1),
              softcap=0.0, with_sinks=False):
    q, k, v, cu_q, cu_k = packed(rng, lens_q, lens_k, hq, hk, d, dtype)
    dout = rng.standard_normal(q.shape).astype(dtype)
    sinks = (rng.standard_normal(hq) * 2).astype(np.float32) if with_sinks else None
    kw = dict(causal=causal, window_size=window, softcap=softcap, sinks=sinks)
    mq, mk = max(lens_q), max(lens_k)
    out, lse = fa.attention_varlen(q, k, v, cu_q, cu_k, mq, mk, return_lse=True, device="cpu",
                                   **kw)
    poison = [np.full(x.shape, np.nan, dtype) for x in (q, k, v)]
    dsinks = np.full(hq, np.nan, np.float32) if with_sinks else None
    grads = fa.attention_varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, mq, mk,
                                         dq=poison[0], dk=poison[1], dv=poison[2], dsinks=dsinks,
                                         device="cpu", **kw)
    assert all(g is p for g, p in zip(grads, poison + [dsinks]))
    ref_kw = dict(window=window, softcap=softcap, sinks=sinks)
    ref = attention_varlen_grads_numpy(q, k, v, dout, cu_q, cu_k, causal, None, np.float64,
                                       **ref_kw)
    peer = attention_varlen_grads_numpy(q, k, v, dout, cu_q, cu_k, causal, None,
                                        np.dtype(dtype).type, **ref_kw)
    check_grads(list(grads) + ([None] if not with_sinks else []), ref, peer)
    return grads


@pytest.mark.parametrize("causal,window,softcap,with_sinks", [
    (False, (-1, -1), 0.0, False), (True, (-1, -1), 0.0, False), (False, (6, 2), 0.0, False),
    (True, (-1, -1), 10.0, True), (False, (-1, -1), 0.0, True)])
@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_varlen_backward_matches_reference(rng, causal, window, softcap, with_sinks, dtype):
    grad_case(rng, [9, 0, 23, 1], [12, 5, 23, 30], 4, 2, 16, dtype, causal, window, softcap,
              with_sinks)


def test_varlen_backward_keys_of_empty_entries_get_zero(rng):
    # Entry 1 has keys but no queries: its dk and dv rows are zero.
    dq, dk, dv = grad_case(rng, [4, 0, 6], [5, 7, 6], 2, 2, 16, np.float32)
    assert not dk[5:12].any() and not dv[5:12].any()


def test_varlen_backward_bad_lse(case, rng):
    q, k, v, cu_q, cu_k = case
    with pytest.raises(ValueError, match=r"lse must be the forward's, \(heads_q, total_q\) = "
                                         r"\(4, 8\), got \(8, 4\)"):
        fa.attention_varlen_backward(q, q, k, v, q, np.zeros((8, 4), np.float32), cu_q, cu_k,
                                     5, 6, device="cpu")


def test_varlen_autograd_matches_reference(rng):
    torch = pytest.importorskip("torch")
    lens_q, lens_k = [7, 1, 20], [9, 4, 20]
    q, k, v, cu_q, cu_k = packed(rng, lens_q, lens_k, 4, 2, 16, np.float16)
    sinks = (rng.standard_normal(4) * 2).astype(np.float32)
    leaves = [torch.from_numpy(x).requires_grad_(True) for x in (q, k, v, sinks)]
    cu = [torch.from_numpy(x) for x in (cu_q, cu_k)]
    out, lse = fa.attention_varlen(*leaves[:3], *cu, 20, 20, causal=True, sinks=leaves[3],
                                   return_lse=True, device="cpu")
    assert out.grad_fn is not None and not lse.requires_grad
    dout = rng.standard_normal(q.shape).astype(np.float16)
    out.backward(torch.from_numpy(dout))
    kw = dict(sinks=sinks)
    ref = attention_varlen_grads_numpy(q, k, v, dout, cu_q, cu_k, True, None, np.float64, **kw)
    peer = attention_varlen_grads_numpy(q, k, v, dout, cu_q, cu_k, True, None, np.float16, **kw)
    check_grads([x.grad.numpy() for x in leaves], ref, peer)


def test_varlen_autograd_refusals_and_no_grad(rng):
    torch = pytest.importorskip("torch")
    q, k, v, cu_q, cu_k = packed(rng, [3, 4], [3, 4], 2, 2, 8, np.float32)
    q = torch.from_numpy(q).requires_grad_(True)
    tk, tv, tcq, tck = (torch.from_numpy(x) for x in (k, v, cu_q, cu_k))
    with pytest.raises(TypeError, match="cu_seqlens_q must be a torch tensor"):
        fa.attention_varlen(q, tk, tv, cu_q, tck, 4, 4, device="cpu")
    with pytest.raises(ValueError, match="out="):
        fa.attention_varlen(q, tk, tv, tcq, tck, 4, 4, out=torch.empty(q.shape), device="cpu")
    with pytest.raises(ValueError, match="sm90"):
        fa.attention_varlen(q, tk, tv, tcq, tck, 4, 4, kernel="sm90")
    with torch.no_grad():
        out = fa.attention_varlen(q, tk, tv, tcq, tck, 4, 4, device="cpu")
    assert out.grad_fn is None


def test_varlen_torch_compile_fullgraph(rng):
    torch = pytest.importorskip("torch")
    q, k, v, cu_q, cu_k = packed(rng, [5, 11], [8, 11], 2, 2, 8, np.float32)
    leaves = [torch.from_numpy(x).requires_grad_(True) for x in (q, k, v)]
    cu = [torch.from_numpy(x) for x in (cu_q, cu_k)]

    def f(q, k, v):
        return fa.attention_varlen(q, k, v, *cu, 11, 11, causal=True, device="cpu").sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    compiled(*leaves).backward()
    eager = [x.grad.clone() for x in leaves]
    for x in leaves:
        x.grad = None
    f(*leaves).backward()
    for a, b in zip(eager, (x.grad for x in leaves)):
        assert torch.equal(a, b)


# ================================================================================================
# launch_config(varlen=True): the packed plan for a nominal GPU
# ================================================================================================


@pytest.mark.parametrize("arch, family", [((9, 0), "sm90"), ((8, 0), "sm80")])
@pytest.mark.parametrize("causal", [False, True])
def test_launch_config_plans_packed_batches(arch, family, causal):
    sizes = dict(batch=5, seqlen_q=700, seqlen_k=900, heads_q=8, heads_kv=2, head_dim=128,
                 dtype="bf16", causal=causal, arch=arch)
    if not fa.build_info()["families"].get(family):
        pytest.skip(f"family {family} is not in this build")
    packed_plan = fa.launch_config(**sizes, varlen=True)
    assert packed_plan["kernel"] == fa.launch_config(**sizes)["kernel"]
    assert packed_plan["kernel"].startswith(f"fwd_{family}_hd128_bf16")
    assert packed_plan["block"] == (384, 1, 1)
    bwd = fa.launch_config(**sizes, varlen=True, backward=True)
    names = [l["kernel"] for l in bwd["launches"]]
    assert len(names) == 3 and names[1].startswith(f"bwd_{family}_hd128_bf16")


def test_launch_config_refuses_packed_rows_past_int32():
    with pytest.raises(ValueError, match="varlen: batch x seqlen_q"):
        fa.launch_config(batch=70000, seqlen_q=70000, seqlen_k=1, heads_q=1, heads_kv=1,
                         head_dim=64, dtype="fp16", arch=(9, 0), varlen=True)
    with pytest.raises(TypeError, match="varlen must be a bool"):
        fa.launch_config(batch=1, seqlen_q=1, seqlen_k=1, heads_q=1, heads_kv=1, head_dim=64,
                         dtype="fp16", arch=(9, 0), varlen=1)
