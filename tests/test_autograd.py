"""attention() trains: torch inputs that require grad record an autograd node (the torch.library
op flashattn_c::attention_fwd, with flashattn_c::attention_bwd as its backward), on the host
path here (CPU tensors, device="cpu": the C references) so CI checks the wiring without a GPU;
tests/test_backward_gpu.py runs the same on the GPU kernels.

    python -m pytest -q tests/test_autograd.py
"""
import subprocess
import sys

import numpy as np
import pytest

import flashattn_c as fa
from reference import attention_grads_numpy, check_grads

torch = pytest.importorskip("torch")


def leaves(rng, b, sq, sk, hq, hk, d, dtype=torch.float32, with_sinks=False):
    make = lambda *s: torch.from_numpy(rng.standard_normal(s).astype(np.float32)).to(dtype)
    q, k, v = make(b, sq, hq, d), make(b, sk, hk, d), make(b, sk, hk, d)
    sinks = torch.from_numpy((rng.standard_normal(hq) * 2).astype(np.float32)) if with_sinks else None
    for x in (q, k, v, sinks):
        if x is not None:
            x.requires_grad_(True)
    return q, k, v, sinks


@pytest.mark.parametrize("causal,window,softcap,with_sinks", [
    (False, (-1, -1), 0.0, False), (True, (-1, -1), 0.0, True), (False, (20, 3), 0.0, False),
    (True, (-1, -1), 10.0, True)])
def test_backward_through_autograd_matches_the_reference(rng, causal, window, softcap, with_sinks):
    # float16, as on the GPU: float32 inputs would be limited by lse's own float32 rounding.
    q, k, v, sinks = leaves(rng, 2, 70, 90, 4, 2, 16, torch.float16, with_sinks=with_sinks)
    out = fa.attention(q, k, v, causal=causal, window_size=window, softcap=softcap, sinks=sinks,
                       device="cpu")
    assert out.grad_fn is not None
    dout = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float16))
    out.backward(dout)
    args = [x.detach().numpy() for x in (q, k, v)] + [dout.numpy()]
    kw = dict(window=window, softcap=softcap,
              sinks=None if sinks is None else sinks.detach().numpy())
    ref = attention_grads_numpy(*args, causal, None, np.float64, **kw)
    peer = attention_grads_numpy(*args, causal, None, np.float16, **kw)
    grads = [q.grad.numpy(), k.grad.numpy(), v.grad.numpy(),
             None if sinks is None else sinks.grad.numpy()]
    check_grads(grads, ref, peer)


def test_a_training_step_reaches_the_projections(rng):
    """The new-user check of issue 14: gradients flow through attention to the layers before it."""
    torch.manual_seed(0)
    proj = torch.nn.Linear(32, 3 * 32)
    x = torch.randn(2, 10, 32)
    q, k, v = proj(x).view(2, 10, 3, 2, 16).unbind(2)
    out = fa.attention(q, k, v, causal=True, device="cpu")
    out.square().mean().backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


def test_lse_is_returned_without_a_gradient(rng):
    q, k, v, _ = leaves(rng, 1, 8, 8, 2, 2, 8)
    out, lse = fa.attention(q, k, v, return_lse=True, device="cpu")
    assert out.requires_grad and not lse.requires_grad


def test_gradients_are_refused_where_they_cannot_be_recorded(rng):
    q, k, v, _ = leaves(rng, 1, 8, 8, 2, 2, 8)
    with pytest.raises(ValueError, match="out="):
        fa.attention(q, k, v, out=torch.empty(q.shape), device="cpu")
    with pytest.raises(ValueError, match="sm90"):
        fa.attention(q, k, v, kernel="sm90")
    with pytest.raises(ValueError, match="stream="):
        fa.attention(q, k, v, stream=0)


@pytest.mark.parametrize("op", ["attention_backward", "attention_varlen_backward"])
def test_gradient_buffers_that_require_grad_are_refused_in_grad_mode(rng, op):
    """Writing the gradients into a given dq (dk, dv, dsinks) that requires grad would bypass
    autograd, as out= would for the forward: refused by name in grad mode, written (in place,
    as given) under torch.no_grad()."""
    q, k, v, _ = leaves(rng, 1, 6, 6, 2, 2, 16)
    q, k, v = q.detach(), k.detach(), v.detach()
    out, lse = fa.attention(q, k, v, return_lse=True, device="cpu")
    dk = torch.zeros_like(k, requires_grad=True)
    if op == "attention_backward":
        call = lambda: fa.attention_backward(torch.ones_like(q), q, k, v, out, lse, dk=dk,
                                             device="cpu")
    else:
        cu = torch.tensor([0, 6], dtype=torch.int32)
        call = lambda: fa.attention_varlen_backward(torch.ones_like(q[0]), q[0], k[0], v[0],
                                                    out[0], lse[0], cu, cu, 6, 6, dk=dk[0],
                                                    device="cpu")
    with pytest.raises(ValueError, match="dk requires grad"):
        call()
    assert dk.abs().sum() == 0
    with torch.no_grad():
        grads = call()
    assert dk.abs().sum() > 0
    if op == "attention_backward":
        assert grads[1] is dk


@pytest.mark.parametrize("op", ["attention", "attention_varlen"])
@pytest.mark.parametrize("name,value,error", [
    ("softcap", "1", TypeError), ("softcap", True, TypeError), ("softcap", None, TypeError),
    ("softcap", -1.0, ValueError), ("softmax_scale", True, TypeError),
    ("softmax_scale", "0.5", TypeError), ("softmax_scale", float("nan"), ValueError),
    ("softcap", np.array(1.0), TypeError), ("softcap", np.bool_(True), TypeError)])
def test_scalars_are_checked_as_strictly_when_autograd_records_the_call(rng, op, name, value,
                                                                        error):
    """The autograd path hands softmax_scale and softcap to torch.library ops, whose float
    parameters would take a bool as 1.0; they are refused by name there as under no_grad."""
    q, k, v, _ = leaves(rng, 1, 8, 8, 2, 2, 8)
    if op == "attention":
        call = lambda: fa.attention(q, k, v, device="cpu", **{name: value})
    else:
        cu = torch.tensor([0, 8], dtype=torch.int32)
        call = lambda: fa.attention_varlen(q[0], k[0], v[0], cu, cu, 8, 8, device="cpu",
                                           **{name: value})
    for mode in (torch.enable_grad, torch.no_grad):
        with mode(), pytest.raises(error, match=f"^{name} must be"):
            call()


def test_no_grad_reads_inputs_as_detached(rng):
    q, k, v, _ = leaves(rng, 1, 8, 8, 2, 2, 8)
    with torch.no_grad():
        out = fa.attention(q, k, v, device="cpu")
    assert out.grad_fn is None and not out.requires_grad


@pytest.mark.parametrize("op", ["attention", "attention_varlen"])
def test_out_written_in_place_is_seen_by_autograd(rng, op):
    """out= is written in place: its version counter moves, as after torch's own in-place ops,
    so a backward that saved its old values raises instead of reading the new ones."""
    q, k, v, _ = leaves(rng, 1, 6, 6, 2, 2, 16)
    q, k, v = q.detach(), k.detach(), v.detach()
    out = torch.zeros_like(q)
    weight = torch.ones_like(q, requires_grad=True)
    saved = weight * out  # autograd keeps out for weight's gradient
    version = out._version
    if op == "attention":
        fa.attention(q, k, v, out=out, device="cpu")
    else:
        cu = torch.tensor([0, 6], dtype=torch.int32)
        fa.attention_varlen(q[0], k[0], v[0], cu, cu, 6, 6, out=out[0], device="cpu")
    assert out._version > version and out.abs().sum() > 0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.sum().backward()


def test_torch_compile_fullgraph_traces_the_op(rng):
    """One graph, no break: the op is opaque to dynamo, its fake kernel gives the shapes."""
    q, k, v, _ = leaves(rng, 1, 16, 16, 2, 2, 8)

    def f(q, k, v):
        return fa.attention(q, k, v, causal=True, device="cpu").sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(q, k, v)
    loss.backward()
    eager = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    f(q, k, v).backward()
    for a, b in zip(eager, (q.grad, k.grad, v.grad)):
        assert torch.equal(a, b)


def test_importing_flashattn_c_does_not_import_torch():
    code = "import sys, flashattn_c; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
