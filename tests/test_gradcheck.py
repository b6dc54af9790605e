"""torch.autograd.gradcheck on attention() with device="cpu": float64 CPU tensors that require
grad go through the torch.library ops (flashattn_c::attention_fwd and its backward
flashattn_c::attention_bwd) to the C host references. The forward computes in float64, so
gradcheck's central differences of out are accurate enough to judge the analytic gradients of
the C backward (whose only float32 input is the forward's lse).

sinks are float32, the fixed dtype of their role, so gradcheck cannot perturb them in float64:
in the gradcheck cases they are a constant input without requires_grad, and dsinks is checked
on its own against a central difference, in float64, of the output with one sink moved.

    python -m pytest -q tests/test_gradcheck.py
"""
import numpy as np
import pytest

import flashattn_c as fa

torch = pytest.importorskip("torch")

HEADS_Q, HEADS_KV, HEAD_DIM = 2, 1, 8  # GQA 2:1


def qkv(rng, batch, seqlen_q, seqlen_k, requires_grad=True):
    def make(seqlen, heads):
        x = torch.from_numpy(rng.standard_normal((batch, seqlen, heads, HEAD_DIM)))
        return x.requires_grad_(requires_grad)

    return make(seqlen_q, HEADS_Q), make(seqlen_k, HEADS_KV), make(seqlen_k, HEADS_KV)


def sink_logits(rng):
    return torch.from_numpy((rng.standard_normal(HEADS_Q) * 2).astype(np.float32))


CASES = {
    "plain": dict(sizes=(2, 5, 5)),
    "causal-sq<sk": dict(sizes=(1, 7, 9), causal=True),
    # more rows than keys: the leading rows see no key (out = 0, zero gradients)
    "causal-sq>sk": dict(sizes=(2, 9, 4), causal=True),
    "window2,1": dict(sizes=(1, 6, 8), window_size=(2, 1)),
    "softcap2": dict(sizes=(2, 5, 7), softcap=2.0),
    "scale0.7": dict(sizes=(1, 4, 6), softmax_scale=0.7),
    "sinks": dict(sizes=(2, 5, 6), sinks=True),
    "causal-window-softcap-sinks": dict(sizes=(1, 9, 7), causal=True, window_size=(3, -1),
                                        softcap=2.0, sinks=True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradcheck_q_k_v(rng, name):
    case = dict(CASES[name])
    q, k, v = qkv(rng, *case.pop("sizes"))
    if case.pop("sinks", False):
        case["sinks"] = sink_logits(rng)  # a constant here: see the module docstring

    def f(q, k, v):
        return fa.attention(q, k, v, device="cpu", **case)

    assert f(q, k, v).grad_fn is not None, "the call must record the autograd op"
    assert torch.autograd.gradcheck(f, (q, k, v))


@pytest.mark.parametrize("causal,window_size,softcap", [
    (False, (-1, -1), 0.0), (True, (-1, -1), 0.0), (False, (2, 1), 2.0)])
def test_dsinks_matches_a_central_difference(rng, causal, window_size, softcap):
    # Sq > Sk with causal: some rows see only the sink.
    q, k, v = qkv(rng, 2, 7, 5, requires_grad=False)
    sinks = sink_logits(rng).requires_grad_(True)  # alone, it makes the call record the op
    dout = torch.from_numpy(rng.standard_normal(q.shape))
    kw = dict(causal=causal, window_size=window_size, softcap=softcap, device="cpu")
    (fa.attention(q, k, v, sinks=sinks, **kw) * dout).sum().backward()
    assert sinks.grad is not None and sinks.grad.dtype == torch.float32

    def loss(s):
        with torch.no_grad():
            return float((fa.attention(q, k, v, sinks=s, **kw) * dout).sum())

    numeric = np.zeros(HEADS_Q)
    for h in range(HEADS_Q):
        hi, lo = sinks.detach().clone(), sinks.detach().clone()
        hi[h] += 2.0 ** -10
        lo[h] -= 2.0 ** -10
        # divided by the step float32 actually took, should a sum have rounded
        numeric[h] = (loss(hi) - loss(lo)) / (float(hi[h]) - float(lo[h]))
    np.testing.assert_allclose(sinks.grad.numpy(), numeric, rtol=1e-5, atol=1e-6)


def test_float64_torch_cpu_tensors_match_numpy_and_stay_float64(rng):
    """The DLPack import of torch's CPU float64 tensors: the same values as NumPy float64
    arrays, and float64 outputs (lse stays float32)."""
    q, k, v = qkv(rng, 2, 6, 7, requires_grad=False)
    out, lse = fa.attention(q, k, v, causal=True, return_lse=True, device="cpu")
    assert out.dtype == torch.float64 and lse.dtype == torch.float32
    ref, ref_lse = fa.attention(q.numpy(), k.numpy(), v.numpy(), causal=True, return_lse=True,
                                device="cpu")
    assert ref.dtype == np.float64
    assert np.array_equal(out.numpy(), ref) and np.array_equal(lse.numpy(), ref_lse)
