"""attention_varlen on the GPU: both kernel families against a float64 torch reference computed
entry by entry on the device, with DESIGN.md section 6's rule over the whole packed output (peer:
the same per-entry maths at the input precision), lse within 1e-3 in the (heads_q, total_q)
layout (-inf rows exact), out= poisoned with NaN and fully written; the backward (autograd and
attention_varlen_backward) against float64 gradients by test_backward_gpu's rule; the launch named
in last_launch().

Skipped with a reason where there is no CUDA GPU or no PyTorch.

    python -m pytest -q tests/test_varlen_gpu.py
"""
import numpy as np
import pytest

import flashattn_c as fa
from conftest import FAMILIES, GPU_DTYPES, GPU_MARKS, require_family
from reference import check_against_reference
from test_backward_gpu import (BACKWARD_FAMILIES, check, dsinks_out_rounding, naive_grads,
                               require_backward)
from test_masks_gpu import torch_reference

pytestmark = GPU_MARKS


def offsets(lengths):
    import torch

    return torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32,
                        device="cuda")


def packed(lens_q, lens_k, hq, hk, d, dtype, scale=1.0):
    import torch

    dt = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    tq, tk = int(sum(lens_q)), int(sum(lens_k))
    q = (torch.randn(tq, hq, d, device="cuda") * scale).to(dt)
    k = (torch.randn(tk, hk, d, device="cuda") * scale).to(dt)
    v = torch.randn(tk, hk, d, device="cuda").to(dt)
    return q, k, v, offsets(lens_q), offsets(lens_k)


def entries(cu_q, cu_k):
    bq, bk = cu_q.tolist(), cu_k.tolist()
    return [(slice(bq[b], bq[b + 1]), slice(bk[b], bk[b + 1])) for b in range(len(bq) - 1)]


def reference(q, k, v, cu_q, cu_k, causal, window, softcap, sinks, upcast):
    """torch_reference (test_masks_gpu) on each entry's slices: out (total_q, Hq, D), lse
    (Hq, total_q)."""
    import torch

    scale = q.shape[-1] ** -0.5
    out = torch.zeros(q.shape, dtype=torch.float64 if upcast else q.dtype, device="cuda")
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), dtype=torch.float64, device="cuda")
    for qs, ks in entries(cu_q, cu_k):
        if qs.stop == qs.start:
            continue
        o, l = torch_reference(q[None, qs], k[None, ks], v[None, ks], causal, scale, window,
                               softcap, sinks, upcast)
        out[qs] = o[0].to(out.dtype)
        lse[:, qs] = l[0].double()
    return out, lse


def gpu_check(family, lens_q, lens_k, hq, hk, d, dtype, causal=False, window=(-1, -1),
              softcap=0.0, sinks=False, scale=1.0, max_q=None, max_k=None):
    import torch

    if family is not None:
        require_family(family)
    q, k, v, cu_q, cu_k = packed(lens_q, lens_k, hq, hk, d, dtype, scale)
    sink = torch.randn(hq, device="cuda") * 2 if sinks else None
    out = torch.full(q.shape, float("nan"), dtype=q.dtype, device="cuda")
    got, lse = fa.attention_varlen(q, k, v, cu_q, cu_k, max_q or max(lens_q),
                                   max_k or max(lens_k), causal=causal, window_size=window,
                                   softcap=softcap, sinks=sink, return_lse=True, out=out,
                                   kernel=family)
    assert got is out
    torch.cuda.synchronize()
    launch = fa.last_launch()
    assert launch["block"] == (384, 1, 1)
    if family is not None:
        assert launch["family"] == family and launch["kernel"].startswith(f"fwd_{family}_hd")
    assert lse.shape == (hq, q.shape[0]) and lse.dtype == torch.float32
    ref, ref_lse = reference(q, k, v, cu_q, cu_k, causal, window, softcap, sink, True)
    peer, _ = reference(q, k, v, cu_q, cu_k, causal, window, softcap, sink, False)
    check_against_reference(out, lse, ref, ref_lse, peer, launch["kernel"])
    return out, lse


RAGGED = [
    ([1, 17, 0, 113, 239, 1], [1, 17, 5, 203, 239, 0]),
    ([129, 64, 1025], [127, 300, 1023]),
    ([300] * 9, [400] * 9),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lens", RAGGED, ids=["ragged", "long", "batch9"])
def test_gpu_varlen(family, dtype, head_dim, causal, lens):
    gpu_check(family, lens[0], lens[1], 4, 2, head_dim, dtype, causal)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("heads", [(8, 2), (6, 2), (8, 1)])
def test_gpu_varlen_gqa(family, heads):
    gpu_check(family, [70, 1, 250], [90, 33, 250], heads[0], heads[1], 128, "bfloat16", True)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("window, causal, softcap, sinks", [
    ((64, 0), True, 0.0, False), ((17, 17), False, 0.0, False), ((-1, -1), True, 30.0, True),
    ((128, 0), True, 30.0, True), ((-1, -1), False, 0.0, True)])
def test_gpu_varlen_masks(family, window, causal, softcap, sinks):
    # Entry 1 has more queries than keys: its first causal rows see only the sink.
    gpu_check(family, [200, 90, 1, 333], [250, 30, 7, 333], 4, 2, 128, "bfloat16", causal,
              window, softcap, sinks, scale=5.0 ** 0.5 if softcap else 1.0)


def test_gpu_varlen_auto_and_loose_bounds():
    """kernel=None picks a family that runs packed batches; max_seqlen larger than every entry
    only adds idle blocks."""
    gpu_check(None, [40, 7, 300], [41, 9, 280], 4, 4, 64, "float16", True, max_q=1000,
              max_k=2000)


@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_varlen_packed_qkv_views(family):
    """q, k, v as views of one (total, 3, heads, head_dim) projection: strided rows."""
    import torch

    require_family(family)
    lens = [33, 1, 190]
    cu = offsets(lens)
    qkv = torch.randn(sum(lens), 3, 4, 128, device="cuda").to(torch.bfloat16)
    q, k, v = qkv.unbind(1)
    got = fa.attention_varlen(q, k, v, cu, cu, 190, 190, causal=True, kernel=family)
    want = fa.attention_varlen(*(x.contiguous() for x in (q, k, v)), cu, cu, 190, 190,
                               causal=True, kernel=family)
    assert torch.equal(got, want)


def test_gpu_varlen_numpy_inputs_match_the_host_reference():
    rng = np.random.default_rng(7)
    lens_q, lens_k = [5, 0, 70], [9, 3, 70]
    cu_q = np.concatenate([[0], np.cumsum(lens_q)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(lens_k)]).astype(np.int32)
    q = rng.standard_normal((75, 4, 64)).astype(np.float16)
    k = rng.standard_normal((82, 2, 64)).astype(np.float16)
    v = rng.standard_normal((82, 2, 64)).astype(np.float16)
    gpu, gpu_lse = fa.attention_varlen(q, k, v, cu_q, cu_k, 70, 70, causal=True, return_lse=True)
    host, host_lse = fa.attention_varlen(q, k, v, cu_q, cu_k, 70, 70, causal=True,
                                         return_lse=True, device="cpu")
    assert np.max(np.abs(gpu.astype(np.float32) - host.astype(np.float32))) < 5e-3
    finite = np.isfinite(host_lse)
    assert np.array_equal(finite, np.isfinite(gpu_lse))
    assert np.max(np.abs(gpu_lse[finite] - host_lse[finite])) < 1e-3


def test_gpu_varlen_bad_device_offsets_are_the_callers():
    """Device offsets are not read on the host: only their dtype, length and placement are
    checked (a host array is named when q is on the GPU)."""
    import torch

    q, k, v, cu_q, cu_k = packed([3, 4], [3, 4], 2, 2, 64, "float16")
    with pytest.raises(TypeError, match="cu_seqlens_q must be int32, got int64"):
        fa.attention_varlen(q, k, v, cu_q.long(), cu_k, 4, 4)
    with pytest.raises(ValueError, match="cu_seqlens_k must live where q lives"):
        fa.attention_varlen(q, k, v, cu_q, cu_k.cpu(), 4, 4)
    assert torch.isfinite(fa.attention_varlen(q, k, v, cu_q, cu_k, 4, 4)).all()


# ================================================================================================
# Backward
# ================================================================================================


def reference_grads(q, k, v, dout, cu_q, cu_k, causal, window, softcap, sinks, upcast):
    """naive_grads (test_backward_gpu) per entry, assembled into packed gradients."""
    import torch

    dq, dk, dv = (torch.zeros(x.shape, dtype=torch.float64, device="cuda") for x in (q, k, v))
    dsinks = None if sinks is None else torch.zeros(sinks.shape, dtype=torch.float64,
                                                    device="cuda")
    for qs, ks in entries(cu_q, cu_k):
        if qs.stop == qs.start or ks.stop == ks.start:
            continue
        g = naive_grads(q[None, qs], k[None, ks], v[None, ks], dout[None, qs], causal, window,
                        softcap, sinks, upcast)
        dq[qs], dk[ks], dv[ks] = g[0][0].double(), g[1][0].double(), g[2][0].double()
        if sinks is not None:
            dsinks += g[3].double()
    return dq, dk, dv, dsinks


def dsinks_slack(q, k, v, dout, cu_q, cu_k, causal, window, softcap, sinks):
    """dsinks_out_rounding (test_backward_gpu) summed over the entries, as dsinks is."""
    import torch

    slack = torch.zeros(sinks.shape, dtype=torch.float64, device="cuda")
    for qs, ks in entries(cu_q, cu_k):
        if qs.stop > qs.start and ks.stop > ks.start:
            slack += dsinks_out_rounding(q[None, qs], k[None, ks], v[None, ks], dout[None, qs],
                                         causal, window, softcap, sinks)
    return slack


@pytest.mark.parametrize("family", BACKWARD_FAMILIES)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("causal, window, softcap, sinks", [
    (False, (-1, -1), 0.0, False), (True, (-1, -1), 0.0, False), (True, (64, 0), 30.0, True)])
def test_gpu_varlen_autograd(monkeypatch, capfd, family, dtype, head_dim, causal, window, softcap,
                             sinks):
    """attention_varlen under autograd against float64 gradients. Entries end inside query and
    key blocks of both families (130 and 257 rows, 5, 9 and 300 keys), and an empty one sits
    between them."""
    import torch

    require_backward(family, head_dim)
    monkeypatch.setenv("FLASHATTN_C_LOG_LAUNCH", "1")
    lens_q, lens_k = [1, 130, 0, 257], [5, 130, 9, 300]
    q, k, v, cu_q, cu_k = packed(lens_q, lens_k, 4, 2, head_dim, dtype)
    sink = torch.randn(4, device="cuda") * 2 if sinks else None
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    sink_leaf = sink.clone().requires_grad_(True) if sinks else None
    out = fa.attention_varlen(*leaves, cu_q, cu_k, 257, 300, causal=causal, window_size=window,
                              softcap=softcap, sinks=sink_leaf, kernel=family)
    dout = torch.randn_like(out)
    out.backward(dout)
    torch.cuda.synchronize()
    # Autograd runs the backward on its own thread: the launch log, not last_launch(), sees it.
    logged = [l.split()[1] for l in capfd.readouterr().err.splitlines()
              if l.startswith("[flashattn_c] bwd_")]
    assert logged[1].startswith(f"bwd_{family}_hd"), logged
    grads = [x.grad for x in leaves] + [sink_leaf.grad if sinks else None]
    ref = reference_grads(q, k, v, dout, cu_q, cu_k, causal, window, softcap, sink, True)
    peer = reference_grads(q, k, v, dout, cu_q, cu_k, causal, window, softcap, sink, False)
    slack = (dsinks_slack(q, k, v, dout, cu_q, cu_k, causal, window, softcap, sink)
             if sinks else None)
    check(grads, ref, peer, f"varlen autograd hd{head_dim}", slack)


@pytest.mark.parametrize("family", BACKWARD_FAMILIES)
def test_gpu_varlen_backward_deterministic_and_buffers(family):
    import torch

    require_backward(family, 128)
    q, k, v, cu_q, cu_k = packed([100, 3, 400], [120, 30, 400], 8, 2, 128, "bfloat16")
    out, lse = fa.attention_varlen(q, k, v, cu_q, cu_k, 400, 400, causal=True, return_lse=True)
    dout = torch.randn_like(out)
    poison = [torch.full(x.shape, float("nan"), dtype=x.dtype, device="cuda") for x in (q, k, v)]
    first = fa.attention_varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, 400, 400,
                                         causal=True, deterministic=True, dq=poison[0],
                                         dk=poison[1], dv=poison[2], kernel=family)
    assert all(g is p for g, p in zip(first, poison))
    first = [g.clone() for g in first]
    launch = fa.last_launch()
    assert len(launch["launches"]) == 3
    assert launch["kernel"].startswith(f"bwd_{family}_") and launch["kernel"].endswith("_det")
    for _ in range(3):
        again = fa.attention_varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, 400, 400,
                                             causal=True, deterministic=True, kernel=family)
        assert all(torch.equal(a, b) for a, b in zip(first, again)), "runs differ bitwise"
    ref = reference_grads(q, k, v, dout, cu_q, cu_k, True, (-1, -1), 0.0, None, True)
    peer = reference_grads(q, k, v, dout, cu_q, cu_k, True, (-1, -1), 0.0, None, False)
    check(first + [None], ref, peer, "deterministic")


@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_varlen_cuda_graph_capture_and_replay(family):
    """Captured once, replayed with new tokens and new offsets (the same totals, within the
    captured max_seqlen) written into the captured tensors: each replay computes on what the
    tensors hold then."""
    import torch

    require_family(family)
    lens = [(300, 0, 212), (1, 500, 11), (256, 256, 0)]
    q, k, v, cu_q, cu_k = packed(lens[0], lens[0], 4, 2, 128, "bfloat16")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture, as torch's docs ask
        fa.attention_varlen(q, k, v, cu_q, cu_k, 500, 500, causal=True, kernel=family)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fa.attention_varlen(q, k, v, cu_q, cu_k, 500, 500, causal=True, kernel=family)
    for step, entry_lens in enumerate(lens[1:]):
        fresh = packed(entry_lens, entry_lens, 4, 2, 128, "bfloat16")
        for captured, new in zip((q, k, v, cu_q, cu_k), fresh):
            captured.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        ref, _ = reference(q, k, v, cu_q, cu_k, True, (-1, -1), 0.0, None, True)
        peer, _ = reference(q, k, v, cu_q, cu_k, True, (-1, -1), 0.0, None, False)
        check_against_reference(out, None, ref, None, peer, f"replay {step}")
