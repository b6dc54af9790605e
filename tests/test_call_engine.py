"""The call engine's role table (csrc/call.h, csrc/attention.c) as _C.forward shows it: the
forward's arrays in order, and lse as an output role that a caller may give like out= (what the
torch fast path of flashattn_c._api does, through layouts).

Runs without a GPU: host arrays on device='cpu', and fake device arrays whose every rule fires
before any CUDA call.

    python -m pytest -q tests/test_call_engine.py
"""
import numpy as np
import pytest

import flashattn_c as fa
from test_interop import FakeDLPack

_C = fa._C
SHAPE, LSE_SHAPE = (1, 8, 2, 16), (1, 2, 8)


def host_qkv(rng):
    return [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(3)]


def test_forward_roles_list_the_arrays_in_order():
    assert _C.forward_roles == (("q", False, None), ("k", False, None), ("v", False, None),
                                ("out", True, None), ("lse", True, _C.FLOAT32),
                                ("sinks", False, _C.FLOAT32))


def test_a_given_lse_receives_lse_and_is_returned(rng):
    q, k, v = host_qkv(rng)
    out, lse = np.empty(SHAPE, np.float32), np.full(LSE_SHAPE, 3.0, np.float32)
    got_out, got_lse = _C.forward(q, k, v, out, lse=lse, device_kind=_C.DEVICE_CPU)
    assert got_out is out and got_lse is lse
    want_out, want_lse = _C.forward(q, k, v, return_lse=True, device_kind=_C.DEVICE_CPU)
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(lse, want_lse)


@pytest.mark.parametrize("lse, message", [
    (np.zeros((1, 8, 2), np.float32), r"lse must have shape \(1, 2, 8\), got \(1, 8, 2\)"),
    (np.zeros(LSE_SHAPE, np.float16), "lse must have dtype float32, got float16"),
    (np.zeros((1, 8, 2), np.float32).transpose(0, 2, 1),
     r"lse must be contiguous, got strides \(16, 1, 2\)"),
])
def test_a_given_lse_is_checked_before_anything_is_written(rng, lse, message):
    q, k, v = host_qkv(rng)
    out = np.full(SHAPE, 3.0, np.float32)
    error = TypeError if lse.dtype != np.float32 else ValueError
    with pytest.raises(error, match=message):
        _C.forward(q, k, v, out, lse=lse, device_kind=_C.DEVICE_CPU)
    assert (out == 3.0).all()


def test_layouts_need_one_item_per_role():
    q = FakeDLPack(SHAPE)
    with pytest.raises(TypeError, match="layouts must be None or a 6-tuple"):
        _C.forward(q, q, q, layouts=(None,) * 5)
