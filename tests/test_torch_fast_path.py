"""What each public op hands to torch's fast path (flashattn_c._api._torch_call), checked on the
CPU with that one function replaced by a recorder: which outputs the op asks torch to
allocate, and at what shapes and dtypes (the documented shapes of out, lse and the
gradients); that outputs the caller gave are neither allocated nor replaced but returned as
given; and that a stream= argument keeps the call off the fast path. The real fast path reads
CUDA tensors and runs in the GPU tests (test_cuda_attention.py and the others)."""
import pytest

import flashattn_c as fa
from flashattn_c import _api

torch = pytest.importorskip("torch")

B, SQ, SK, HQ, HKV, D = 2, 5, 7, 4, 2, 16


class Recorder:
    """Stands in for _api._torch_call: records each call and allocates the outputs asked for,
    as the real one does from torch's allocator."""

    def __init__(self):
        self.calls = []

    def __call__(self, c_op, roles, arrays, new_outputs, extra):
        called = dict(arrays)
        allocated = {}
        for name, _, _ in roles:
            if called.get(name) is None and name in new_outputs:
                shape, dtype = new_outputs[name]
                called[name] = allocated[name] = torch.zeros(tuple(shape), dtype=dtype)
        self.calls.append({"op": c_op, "allocated": allocated, "extra": dict(extra),
                           "passed": {n for n, x in arrays.items() if x is not None}})
        return called


@pytest.fixture
def recorder(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(_api, "_torch_call", rec)
    return rec


def dense(*shape):
    return torch.randn(*shape, dtype=torch.float32).to(torch.bfloat16)


def shapes(tensors):
    return {n: (tuple(t.shape), t.dtype) for n, t in tensors.items()}


def test_attention_asks_for_out_and_lse_in_the_documented_shapes(recorder):
    q, k, v = dense(B, SQ, HQ, D), dense(B, SK, HKV, D), dense(B, SK, HKV, D)
    out, lse = fa.attention(q, k, v, causal=True, window_size=(3, 0), softcap=5.0,
                            return_lse=True)
    (call,) = recorder.calls
    assert call["op"] is fa._C.forward
    assert shapes(call["allocated"]) == {"out": ((B, SQ, HQ, D), torch.bfloat16),
                                         "lse": ((B, HQ, SQ), torch.float32)}
    assert out is call["allocated"]["out"] and lse is call["allocated"]["lse"]
    assert (call["extra"]["causal"], call["extra"]["window_left"], call["extra"]["window_right"],
            call["extra"]["softcap"], call["extra"]["return_lse"]) == (True, 3, 0, 5.0, True)


def test_attention_writes_a_given_out_and_returns_it_as_given(recorder):
    q, k, v = dense(B, SQ, HQ, D), dense(B, SK, HKV, D), dense(B, SK, HKV, D)
    given = torch.empty_like(q)
    version = given._version
    assert fa.attention(q, k, v, out=given) is given
    (call,) = recorder.calls
    assert call["allocated"] == {} and "out" in call["passed"]
    assert given._version > version  # written in place, as torch's own in-place ops do


def test_attention_backward_asks_for_each_gradient_in_its_input_shape(recorder):
    q, k, v = dense(B, SQ, HQ, D), dense(B, SK, HKV, D), dense(B, SK, HKV, D)
    dout, out = dense(B, SQ, HQ, D), dense(B, SQ, HQ, D)
    lse = torch.zeros(B, HQ, SQ)
    sinks = torch.zeros(HQ)
    dq, dk, dv, dsinks = fa.attention_backward(dout, q, k, v, out, lse, sinks=sinks,
                                               deterministic=True)
    (call,) = recorder.calls
    assert call["op"] is fa._C.backward
    assert shapes(call["allocated"]) == {"dq": ((B, SQ, HQ, D), torch.bfloat16),
                                         "dk": ((B, SK, HKV, D), torch.bfloat16),
                                         "dv": ((B, SK, HKV, D), torch.bfloat16),
                                         "dsinks": ((HQ,), torch.float32)}
    assert (dq, dk, dv, dsinks) == tuple(call["allocated"][n] for n in ("dq", "dk", "dv",
                                                                         "dsinks"))
    assert call["extra"]["deterministic"] is True


def test_attention_backward_returns_given_gradients_as_given(recorder):
    q, k, v = dense(B, SQ, HQ, D), dense(B, SK, HKV, D), dense(B, SK, HKV, D)
    dout, out, lse = dense(B, SQ, HQ, D), dense(B, SQ, HQ, D), torch.zeros(B, HQ, SQ)
    dk = torch.empty_like(k)
    grads = fa.attention_backward(dout, q, k, v, out, lse, dk=dk)
    (call,) = recorder.calls
    assert len(grads) == 3 and grads[1] is dk
    assert set(call["allocated"]) == {"dq", "dv"}


def test_varlen_ops_ask_for_packed_outputs(recorder):
    total_q, total_k = 9, 11
    q, k, v = dense(total_q, HQ, D), dense(total_k, HKV, D), dense(total_k, HKV, D)
    cu_q = torch.tensor([0, 4, 9], dtype=torch.int32)
    cu_k = torch.tensor([0, 6, 11], dtype=torch.int32)
    out, lse = fa.attention_varlen(q, k, v, cu_q, cu_k, 5, 6, return_lse=True)
    grads = fa.attention_varlen_backward(dense(total_q, HQ, D), q, k, v, out, lse, cu_q, cu_k,
                                         5, 6, sinks=torch.zeros(HQ))
    fwd, bwd = recorder.calls
    assert fwd["op"] is fa._C.varlen_forward and bwd["op"] is fa._C.varlen_backward
    assert shapes(fwd["allocated"]) == {"out": ((total_q, HQ, D), torch.bfloat16),
                                        "lse": ((HQ, total_q), torch.float32)}
    assert (fwd["extra"]["max_seqlen_q"], fwd["extra"]["max_seqlen_k"]) == (5, 6)
    assert shapes(bwd["allocated"]) == {"dq": ((total_q, HQ, D), torch.bfloat16),
                                        "dk": ((total_k, HKV, D), torch.bfloat16),
                                        "dv": ((total_k, HKV, D), torch.bfloat16),
                                        "dsinks": ((HQ,), torch.float32)}
    assert len(grads) == 4


def test_kvcache_asks_for_out_and_lse_as_attention_does(recorder):
    q = dense(B, 1, HQ, D)
    cache = dense(B, 32, HKV, D)
    out = fa.attention_with_kvcache(q, cache, cache.clone(), cache_seqlens=20, num_splits=2)
    out2, lse = fa.attention_with_kvcache(q, cache, cache.clone(), cache_seqlens=20,
                                          return_lse=True)
    first, second = recorder.calls
    assert first["op"] is fa._C.kvcache
    assert shapes(first["allocated"]) == {"out": ((B, 1, HQ, D), torch.bfloat16)}
    assert out is first["allocated"]["out"]
    assert (first["extra"]["cache_seqlen"], first["extra"]["num_splits"]) == (20, 2)
    assert shapes(second["allocated"]) == {"out": ((B, 1, HQ, D), torch.bfloat16),
                                           "lse": ((B, HQ, 1), torch.float32)}
    assert out2 is second["allocated"]["out"] and lse is second["allocated"]["lse"]


def test_the_general_path_takes_the_stream_of_q_framework(monkeypatch):
    """A backward op's first array is dout, which may come from another framework than q:
    the current stream is q's (it was dout's, which a NumPy dout does not have)."""
    seen = []

    class Stop(Exception):
        pass

    def current_stream(x, framework):
        seen.append((x, framework))
        raise Stop

    monkeypatch.setattr(_api, "_current_stream", current_stream)
    q, k, v = dense(B, SQ, HQ, D), dense(B, SK, HKV, D), dense(B, SK, HKV, D)
    dout = dense(B, SQ, HQ, D).float().numpy()
    with pytest.raises(Stop):
        fa.attention_backward(dout, q, k, v, dense(B, SQ, HQ, D), torch.zeros(B, HQ, SQ))
    assert len(seen) == 1 and seen[0][0] is q and seen[0][1] == "torch"


def test_a_given_stream_keeps_the_call_off_the_fast_path(recorder):
    q, k, v = dense(B, SQ, HQ, D), dense(B, SK, HKV, D), dense(B, SK, HKV, D)
    try:
        fa.attention(q, k, v, stream=0)  # the general path: host tensors copied to the GPU
    except fa.CudaError:
        pass  # no GPU to run on
    assert recorder.calls == []
