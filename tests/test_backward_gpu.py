"""The backward on the GPU (issue 14): attention_backward and attention() under autograd against
a float64 torch reference on the device, with FlashAttention-3's rule on each of dq, dk, dv and
dsinks: max|ours - ref| <= 2 max|peer - ref| + 2 max|(ref + 0.3 - 0.3) - ref|, where peer is the
same naive attention and its autograd at the input precision, plus reference.GRAD_ATOL (the
float32 rounding of D and dP where both are exactly zero); the tolerances of dq, dk and dsinks
also hold what reading out at the input precision and the float32 sums of D and dP move them
by (dq_dk_rounding, dsinks_out_rounding). Gradient buffers are
poisoned with NaN before each call. last_launch() names the three launches of the plan.

Skipped with a reason where there is no CUDA GPU or no PyTorch.

    python -m pytest -q tests/test_backward_gpu.py
"""
import pytest

import flashattn_c as fa
from conftest import GPU_DTYPES, GPU_MARKS, require_family
from reference import check_grads, visible_mask

pytestmark = GPU_MARKS
BACKWARD_FAMILIES = ["sm80", "sm90"]  # the families with a backward kernel


def require_backward(family, head_dim):
    """require_family: both families' backwards serve every head_dim up to 256."""
    del head_dim
    require_family(family)


def auto_backward_family(head_dim):
    """The family whose backward kernel='auto' runs on this GPU."""
    import torch

    sm90 = (torch.cuda.get_device_capability() == (9, 0) and fa.build_info()["families"].get("sm90"))
    del head_dim  # the sm90 backward serves every head_dim up to 256
    return "sm90" if sm90 else "sm80"


def inputs(batch, sq, sk, hq, hk, d, dtype, scale=1.0, sdpa_layout=False, sinks=False):
    import torch

    dt = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]

    def rand(s, h, x_scale=1.0):
        if sdpa_layout:
            return (torch.randn(batch, h, s, d, device="cuda") * x_scale).to(dt).transpose(1, 2)
        return (torch.randn(batch, s, h, d, device="cuda") * x_scale).to(dt)

    q, k, v = rand(sq, hq, scale), rand(sk, hk, scale), rand(sk, hk)
    dout = rand(sq, hq)
    sink = torch.randn(hq, device="cuda", dtype=torch.float32) * 2 if sinks else None
    return q, k, v, dout, sink


def naive_forward(q, k, v, causal, window, softcap, sinks, upcast):
    """The naive attention as a graph: float64 (upcast, the reference) or at the input precision
    (the peer: scores and probabilities in the input dtype, softmax in float32). Returns out, lse,
    the leaves (q, k, v, then the sinks if given), which require grad, and the probabilities
    (batch, heads_q, seqlen_q, seqlen_k)."""
    import torch

    Sq, Hq, Sk, Hk = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
    leaves = [x.detach().double() if upcast else x.detach().clone() for x in (q, k, v)]
    sink = None if sinks is None else sinks.detach().clone().double()
    leaves += [sink] if sink is not None else []
    for x in leaves:
        x.requires_grad_(True)
    ql, kl, vl = leaves[:3]
    scale = q.shape[-1] ** -0.5
    kk = kl.repeat_interleave(Hq // Hk, dim=2)
    vv = vl.repeat_interleave(Hq // Hk, dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", ql * scale if not upcast else ql, kk)
    if upcast:
        scores = scores * scale
    if softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    work = scores if upcast else scores.float()
    visible = torch.from_numpy(visible_mask(Sq, Sk, causal, window)).to(q.device)
    work = work.masked_fill(~visible, float("-inf"))
    if sink is not None:
        col = sink.to(work.dtype)[None, :, None, None].expand(*work.shape[:-1], 1)
        lse = torch.logsumexp(torch.cat([work, col], dim=-1), dim=-1)
    else:
        lse = torch.logsumexp(work, dim=-1)
    safe = torch.where(torch.isneginf(lse), torch.zeros_like(lse), lse)
    probs = torch.exp(work - safe[..., None])
    if not upcast:
        probs = probs.to(v.dtype)
    out = torch.einsum("bhij,bjhd->bihd", probs, vv)
    return out, lse, leaves, probs


def naive_grads(q, k, v, dout, causal, window, softcap, sinks, upcast):
    """Autograd of naive_forward: [dq, dk, dv, dsinks or None]."""
    import torch

    out, _, leaves, _ = naive_forward(q, k, v, causal, window, softcap, sinks, upcast)
    grads = torch.autograd.grad(out, leaves, dout.to(out.dtype))
    return list(grads) + ([None] if sinks is None else [])


def dsinks_out_rounding(q, k, v, dout, causal, window, softcap, sinks):
    """Per head, the most that reading out at the input precision moves dsinks.

    dsinks_h = -sum_i p_i (dout_i . out_i), with p_i = exp(sink_h - lse_i) the sink's share of
    row i. A backward reads out as the forward stored it (FlashAttention's D = rowsum(dout * out)),
    rounded to the input dtype; the peer's autograd never forms that product. The sum over every
    row of a head gives the rounding no chance to average out, so its bound,
    sum_i p_i |dout_i . (round(out_i) - out_i)|, joins dsinks' tolerance."""
    import torch

    with torch.no_grad():
        out, lse, _, _ = naive_forward(q, k, v, causal, window, softcap, sinks, upcast=True)
        share = torch.exp(sinks.double()[None, :, None] - lse)  # (b, h, i); 0 where lse = inf
        moved = (dout.double() * (out.to(q.dtype).double() - out)).sum(-1).abs()  # (b, i, h)
        return (share * moved.transpose(1, 2)).sum(dim=(0, 2))


def dq_dk_rounding(q, k, v, dout, causal, window, softcap, sinks):
    """What the backward's own roundings of D = rowsum(dout * out) and dP = dout v^T move dq
    and dk by, beyond the peer's: {"dq": .., "dk": ..} (reference.rounding_slack has the rule;
    here in torch on the device). Where one key dominates the rows, the peer's errors can be
    nearly zero while the kernel's are not: 239 rows and one key gave dk 1.04e-5 against a
    tolerance of 1.0e-5 (float16, head_dim 64, H200), and a causal 239 x 1 problem with sinks
    dq 4.6e-4 against 3.2e-4."""
    import torch

    with torch.no_grad():
        out, _, _, probs = naive_forward(q, k, v, causal, window, softcap, sinks, upcast=True)
        group = q.shape[2] // k.shape[2]
        vv = v.double().abs().repeat_interleave(group, dim=2)
        kk = k.double().abs().repeat_interleave(group, dim=2)
        moved = (dout.double() * (out.to(q.dtype).double() - out)).sum(-1).abs()  # (b, i, h)
        mag_d = (dout.double().abs() * out.abs()).sum(-1)                          # (b, i, h)
        mag_dp = torch.einsum("bihd,bjhd->bhij", dout.double().abs(), vv)
        ds_moved = probs * ((moved + 2.0 ** -23 * mag_d).transpose(1, 2)[..., None]
                            + 2.0 ** -23 * mag_dp)
        scale = q.shape[-1] ** -0.5
        qa = q.double().abs()
        dq = scale * torch.einsum("bhij,bjhd->bihd", ds_moved, kk)
        dk = scale * torch.einsum("bhij,bihd->bjhd", ds_moved ** 2, qa ** 2).sqrt()
        dk = dk.reshape(*dk.shape[:2], k.shape[2], group, -1).sum(3)
        return {"dq": dq.max().item() if dq.numel() else 0.0,
                "dk": dk.max().item() if dk.numel() else 0.0}


def check(grads, ref, peer, label, dsinks_slack=None, out_slack=None):
    """The rule of the module docstring on each gradient; dsinks_slack (per head, from
    dsinks_out_rounding) widens dsinks' tolerance, out_slack (dq_dk_rounding) dq's and dk's."""
    slack = dict(out_slack or {})
    if dsinks_slack is not None:
        slack["dsinks"] = slack.get("dsinks", 0.0) + dsinks_slack.max().item()
    check_grads(grads, ref, peer, slack=slack, label=label)


def run_backward(family, q, k, v, dout, sinks, causal=False, window=(-1, -1), softcap=0.0,
                 deterministic=False):
    """Forward, then the backward into NaN-poisoned buffers; checks the launch record."""
    import torch

    kw = dict(causal=causal, window_size=window, softcap=softcap, sinks=sinks)
    out, lse = fa.attention(q, k, v, return_lse=True, **kw)
    poison = [torch.full(x.shape, float("nan"), dtype=x.dtype, device="cuda") for x in (q, k, v)]
    dsinks = torch.full(sinks.shape, float("nan"), device="cuda") if sinks is not None else None
    grads = fa.attention_backward(dout, q, k, v, out, lse, dq=poison[0], dk=poison[1],
                                  dv=poison[2], dsinks=dsinks, deterministic=deterministic,
                                  kernel=family, **kw)
    torch.cuda.synchronize()
    assert all(g is p for g, p in zip(grads, poison + [dsinks]))
    launch = fa.last_launch()
    names = [l["kernel"] for l in launch["launches"]]
    assert len(names) == 3 and names[0].startswith("bwd_pre_") and names[2].startswith("bwd_post_")
    assert launch["kernel"] == names[1] and names[1].startswith(f"bwd_{family}_hd")
    assert all(l["block"] == (384, 1, 1) and l["regs"] > 0 for l in launch["launches"])
    assert launch["workspace_bytes"] > 0
    return list(grads) + ([None] if sinks is None else [])


def gpu_case(family, batch, sq, sk, hq, hk, d, dtype, causal=False, window=(-1, -1),
             softcap=0.0, sinks=False, scale=1.0, sdpa_layout=False):
    require_backward(family, d)
    q, k, v, dout, sink = inputs(batch, sq, sk, hq, hk, d, dtype, scale, sdpa_layout, sinks)
    grads = run_backward(family, q, k, v, dout, sink, causal, window, softcap)
    ref = naive_grads(q, k, v, dout, causal, window, softcap, sink, upcast=True)
    peer = naive_grads(q, k, v, dout, causal, window, softcap, sink, upcast=False)
    slack = (None if sink is None
             else dsinks_out_rounding(q, k, v, dout, causal, window, softcap, sink))
    check(grads, ref, peer, fa.last_launch()["kernel"], slack,
          dq_dk_rounding(q, k, v, dout, causal, window, softcap, sink))


@pytest.mark.parametrize("family", BACKWARD_FAMILIES)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256, 72])
@pytest.mark.parametrize("seqlen", [1, 17, 113, 239, 1023])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_backward_head_dims_and_seqlens(family, dtype, head_dim, seqlen, causal):
    gpu_case(family, 2, seqlen, seqlen, 2, 2, head_dim, dtype, causal)


@pytest.mark.parametrize("family", BACKWARD_FAMILIES)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_backward_long(family, dtype, head_dim, causal):
    gpu_case(family, 1, 4224, 4224, 2, 1, head_dim, dtype, causal)


@pytest.mark.parametrize("family", BACKWARD_FAMILIES)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("pair", [(113, 203), (1, 239), (239, 1), (1024, 1023)])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_backward_seqlen_q_differs(family, dtype, pair, causal):
    gpu_case(family, 1, pair[0], pair[1], 4, 2, 64, dtype, causal)


@pytest.mark.parametrize("family", BACKWARD_FAMILIES)
@pytest.mark.parametrize("heads", [(6, 2), (8, 1)])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_backward_gqa(family, heads, head_dim, causal):
    gpu_case(family, 2, 300, 333, heads[0], heads[1], head_dim, "bfloat16", causal)


@pytest.mark.parametrize("family", BACKWARD_FAMILIES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("window,causal", [((0, 0), False), ((17, 1), False), ((128, -1), False),
                                           ((-1, 33), False), ((255, 0), True), ((1, 0), True)])
def test_gpu_backward_window(family, head_dim, window, causal):
    gpu_case(family, 1, 700, 900, 2, 1, head_dim, "bfloat16", causal, window)


@pytest.mark.parametrize("family", BACKWARD_FAMILIES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("softcap", [5.0, 30.0, 50.0])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_backward_softcap(family, head_dim, softcap, causal):
    gpu_case(family, 1, 400, 400, 2, 2, head_dim, "float16", causal, softcap=softcap,
             scale=5.0 ** 0.5)


@pytest.mark.parametrize("family", BACKWARD_FAMILIES)
@pytest.mark.parametrize("window,causal", [((-1, -1), False), ((-1, -1), True), ((64, 0), True)])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_gpu_backward_sinks(family, window, causal, dtype):
    # Sq > Sk with causal: the leading rows see only the sink.
    gpu_case(family, 2, 300, 200, 4, 2, 64, dtype, causal, window, sinks=True)


@pytest.mark.parametrize("family", BACKWARD_FAMILIES)
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_backward_sdpa_layout_on_a_side_stream(family, causal):
    import torch

    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        gpu_case(family, 2, 257, 257, 4, 2, 128, "bfloat16", causal, sdpa_layout=True)
    side.synchronize()


@pytest.mark.parametrize("family", BACKWARD_FAMILIES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_gpu_backward_deterministic_is_bitwise_reproducible(family, causal, head_dim):
    import torch

    require_backward(family, head_dim)
    q, k, v, dout, _ = inputs(2, 1000, 1000, 4, 2, head_dim, "bfloat16")
    first = None
    for _ in range(10):
        grads = run_backward(family, q, k, v, dout, None, causal, deterministic=True)[:3]
        assert fa.last_launch()["kernel"].endswith("_det")
        if first is None:
            first = [g.clone() for g in grads]
            ref = naive_grads(q, k, v, dout, causal, (-1, -1), 0.0, None, upcast=True)
            peer = naive_grads(q, k, v, dout, causal, (-1, -1), 0.0, None, upcast=False)
            check(grads + [None], ref, peer, "deterministic")
        else:
            assert all(torch.equal(a, b) for a, b in zip(first, grads)), "runs differ bitwise"


def test_gpu_autograd_trains_and_matches_attention_backward(monkeypatch, capfd):
    import torch

    q, k, v, dout, sink = inputs(2, 300, 300, 4, 2, 128, "bfloat16", sinks=True)
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v, sink)]
    monkeypatch.setenv("FLASHATTN_C_LOG_LAUNCH", "1")
    out = fa.attention(*leaves[:3], causal=True, sinks=leaves[3])
    out.backward(dout)
    torch.cuda.synchronize()
    # Autograd runs the backward on its own thread: last_launch() (per thread) does not see it
    # here, the launch log does.
    logged = [l.split()[1] for l in capfd.readouterr().err.splitlines()
              if l.startswith("[flashattn_c] bwd_")]
    assert logged == ["bwd_pre_bf16_sinks", f"bwd_{auto_backward_family(128)}_hd128_bf16_causal",
                      "bwd_post_bf16_sinks"]
    monkeypatch.delenv("FLASHATTN_C_LOG_LAUNCH")
    out2, lse = fa.attention(q, k, v, causal=True, sinks=sink, return_lse=True)
    direct = fa.attention_backward(dout, q, k, v, out2, lse, causal=True, sinks=sink,
                                   deterministic=True)
    leaves2 = [x.detach().clone().requires_grad_(True) for x in (q, k, v, sink)]
    out3 = fa.attention(*leaves2[:3], causal=True, sinks=leaves2[3], deterministic=True)
    out3.backward(dout)
    for a, b in zip(direct, [x.grad for x in leaves2]):
        assert torch.equal(a, b), "autograd's backward is attention_backward's"
    for a, b in zip(leaves, leaves2):
        assert (a.grad.double() - b.grad.double()).abs().max().item() < 5e-2


def test_gpu_torch_compile_fullgraph():
    import torch

    q, k, v, dout, _ = inputs(1, 256, 256, 4, 4, 64, "bfloat16")
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]

    def block(q, k, v):
        return fa.attention(q, k, v, causal=True) * 2.0

    compiled = torch.compile(block, fullgraph=True)
    compiled(*leaves).backward(dout)
    eager = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    block(*eager).backward(dout)
    for a, b in zip(leaves, eager):
        assert (a.grad.double() - b.grad.double()).abs().max().item() < 5e-2


def test_gpu_sm90_backward_serves_head_dim_256_on_every_path():
    import torch

    require_family("sm90")
    q, k, v, dout, _ = inputs(1, 64, 64, 2, 2, 256, "bfloat16")
    out, lse = fa.attention(q, k, v, return_lse=True)
    direct = fa.attention_backward(dout, q, k, v, out, lse, kernel="sm90")
    assert fa.last_launch()["kernel"] == "bwd_sm90_hd256_bf16"
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    fa.attention(*leaves, kernel="sm90").backward(dout)  # autograd
    packed = [x[0].detach().clone().requires_grad_(True) for x in (q, k, v)]
    cu = torch.tensor([0, 64], dtype=torch.int32, device="cuda")
    fa.attention_varlen(*packed, cu, cu, 64, 64, kernel="sm90").backward(dout[0])
    torch.cuda.synchronize()
    for d, a, p in zip(direct, leaves, packed):
        assert torch.isfinite(d).all()
        assert (a.grad.double() - d.double()).abs().max().item() < 5e-2
        assert (p.grad.double() - d[0].double()).abs().max().item() < 5e-2
