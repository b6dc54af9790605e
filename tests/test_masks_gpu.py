"""Sliding window, softcap and sinks (issue 13) on the GPU: both kernel families against a float64
torch reference on the device, DESIGN.md section 6.

The rule is spelled in csrc/common/mask.h and, in NumPy, in tests/reference.py (visible_mask);
tests/test_masks.py pins it on the host path and in the launch names without a GPU. Here each
case: fresh random inputs (q and k x5 for softcap), out= poisoned with NaN and fully
overwritten, the FA3 tolerance on out, lse within 1e-3 (-inf rows exact), rows that see no key
give out 0 and lse -inf or sinks[h], no NaN, and last_launch() names the instance
fwd_<family>_hd<D>_<dtype>[_causal|_window][_softcap][_sinks].

Skipped with a reason where there is no CUDA GPU or no PyTorch.

    python -m pytest -q tests/test_masks_gpu.py                     # 1408 cases
    python -m pytest -q tests/test_masks_gpu.py -k sm90             # one family
"""
import numpy as np
import pytest

import flashattn_c as fa
from conftest import FAMILIES, GPU_DTYPES, GPU_MARKS, require_family
from reference import (SOFTCAPS, WINDOW_SIDES, assert_empty_rows, check_against_reference,
                       expected_kernel, visible_mask, window_id)

pytestmark = GPU_MARKS
DTYPES = GPU_DTYPES


def gpu_inputs(batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype, q_scale=1.0,
               k_scale=1.0, sdpa_layout=False):
    import torch

    dt = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]

    def rand(s, h, scale):
        if sdpa_layout:
            x = torch.randn(batch, h, s, head_dim, device="cuda") * scale
            return x.to(dt).transpose(1, 2)
        return (torch.randn(batch, s, h, head_dim, device="cuda") * scale).to(dt)

    return rand(seqlen_q, heads_q, q_scale), rand(seqlen_k, heads_kv, k_scale), rand(seqlen_k,
                                                                                     heads_kv, 1.0)


def gpu_sinks(heads_q, scale=2.0):
    import torch

    return torch.randn(heads_q, device="cuda", dtype=torch.float32) * scale


def torch_reference(q, k, v, causal, scale, window, softcap, sinks, upcast):
    """Naive attention with the mask rule, softcap and sinks. upcast=True: float64 (the
    reference). upcast=False: the peer at the input precision (scores, the softcap's tanh and
    the probabilities in the input dtype, softmax in float32), as FlashAttention-3's tests."""
    import torch

    Sq, Hq, Sk, Hk = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
    if upcast:
        q, k, v = q.double(), k.double(), v.double()
    k = k.repeat_interleave(Hq // Hk, dim=2)
    v = v.repeat_interleave(Hq // Hk, dim=2)
    if upcast:
        scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    else:
        scores = torch.einsum("bihd,bjhd->bhij", q * scale, k)
    if softcap > 0:
        scores = torch.tanh(scores / softcap) * softcap
    visible = torch.from_numpy(visible_mask(Sq, Sk, causal, window)).to(q.device)
    work = scores if upcast else scores.float()
    work = work.masked_fill(~visible, float("-inf"))
    if sinks is not None:
        sink_col = sinks.to(work.dtype)[None, :, None, None].expand(*work.shape[:-1], 1)
        lse = torch.logsumexp(torch.cat([work, sink_col], dim=-1), dim=-1)
        probs = torch.exp(work - lse[..., None])
    else:
        lse = torch.logsumexp(work, dim=-1)
        empty = torch.isneginf(lse)[..., None]
        probs = torch.where(empty, torch.zeros_like(work), torch.exp(work - lse[..., None]))
    if not upcast:
        probs = probs.to(v.dtype)
    return torch.einsum("bhij,bjhd->bihd", probs, v), lse


def gpu_check(family, q, k, v, causal=False, window=(-1, -1), softcap=0.0, sinks=None):
    import torch

    scale = q.shape[-1] ** -0.5
    out = torch.full(q.shape, float("nan"), dtype=q.dtype, device="cuda")
    got, lse = fa.attention(q, k, v, causal=causal, window_size=window, softcap=softcap,
                            sinks=sinks, return_lse=True, out=out, kernel=family)
    assert got is out
    torch.cuda.synchronize()
    launch = fa.last_launch()
    dtype = {torch.float16: "float16", torch.bfloat16: "bfloat16"}[q.dtype]
    assert launch["family"] == family and launch["block"] == (384, 1, 1)
    assert launch["kernel"] == expected_kernel(family, launch["head_dim_padded"], dtype,
                                               q.shape[1], k.shape[1], causal, window, softcap,
                                               sinks is not None)
    assert isinstance(lse, torch.Tensor) and lse.dtype == torch.float32
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    ref, ref_lse = torch_reference(q, k, v, causal, scale, window, softcap, sinks, upcast=True)
    peer, _ = torch_reference(q, k, v, causal, scale, window, softcap, sinks, upcast=False)
    check_against_reference(out, lse, ref, ref_lse, peer, launch["kernel"])
    assert_empty_rows(out.float().cpu().numpy(), lse.cpu().numpy(),
                      visible_mask(q.shape[1], k.shape[1], causal, window),
                      None if sinks is None else sinks.cpu().numpy())
    return out, lse


GPU_SIDE_CASES = ([((l, r), False) for l in WINDOW_SIDES for r in WINDOW_SIDES]
                  + [((l, -1), True) for l in WINDOW_SIDES] + [((128, 17), True)])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window, causal", GPU_SIDE_CASES,
                         ids=[window_id(w) + ("-causal" if c else "") for w, c in GPU_SIDE_CASES])
def test_gpu_window_every_side(family, dtype, window, causal):
    """Every (left, right) of {0, 1, 17, 128, 255, 1024, -1}^2 and causal with each left, on
    700 queries x 900 keys (several row and key blocks; 1024 is wider than both), head_dim 64."""
    require_family(family)
    gpu_check(family, *gpu_inputs(1, 700, 900, 2, 1, 64, dtype), causal, window)


GPU_PAIRS = [(113, 203), (239, 1), (1, 239), (1024, 1023), (203, 113)]
GPU_PAIR_WINDOWS = [((0, 0), False), ((1, 17), False), ((17, 1), False), ((128, -1), False),
                    ((-1, 128), False), ((255, 255), False), ((17, 0), True), ((128, 0), True),
                    ((1024, 1024), False), ((1024, 0), True)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256, 96])
@pytest.mark.parametrize("window, causal", GPU_PAIR_WINDOWS,
                         ids=[window_id(w) + ("-causal" if c else "") for w, c in GPU_PAIR_WINDOWS])
@pytest.mark.parametrize("pair", GPU_PAIRS, ids=lambda p: "%dx%d" % p)
def test_gpu_window_seqlen_pairs(family, dtype, head_dim, window, causal, pair):
    require_family(family)
    gpu_check(family, *gpu_inputs(2, pair[0], pair[1], 2, 2, head_dim, dtype), causal, window)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(6, 2), (8, 1)], ids=["gqa6:2", "mqa8:1"])
@pytest.mark.parametrize("window, causal, softcap, use_sinks", [
    ((128, 0), True, 0.0, False), ((17, 17), False, 0.0, False), ((255, 0), True, 30.0, True),
    ((1, 128), False, 5.0, True)], ids=["w128-causal", "w17,17", "w255-causal-cap30-sinks",
                                        "w1,128-cap5-sinks"])
def test_gpu_gqa_batch9(family, dtype, heads, window, causal, softcap, use_sinks):
    require_family(family)
    q, k, v = gpu_inputs(9, 257, 300, heads[0], heads[1], 128, dtype,
                         q_scale=5.0 if softcap else 1.0, k_scale=5.0 if softcap else 1.0)
    gpu_check(family, q, k, v, causal, window, softcap, gpu_sinks(heads[0]) if use_sinks else None)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("window, causal", [((-1, -1), False), ((-1, -1), True),
                                            ((128, 0), True), ((255, 17), False)],
                         ids=["full", "causal", "w128-causal", "w255,17"])
@pytest.mark.parametrize("softcap", SOFTCAPS)
def test_gpu_softcap(family, dtype, head_dim, window, causal, softcap):
    """softcap 5, 30, 50, with and without a window, on q and k scaled by 5."""
    require_family(family)
    q, k, v = gpu_inputs(2, 333, 555, 2, 2, head_dim, dtype, q_scale=5.0, k_scale=5.0)
    gpu_check(family, q, k, v, causal, window, softcap)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gpu_softcap_nan_key_reaches_exactly_the_rows_that_see_it(family, head_dim, causal):
    """NaN in k[0, j, 0, :] makes out NaN in every row of q heads 0-1 that sees key j, and
    nothing else changes, with softcap on: tanh and the softmax must keep a NaN score NaN.
    Keys 5 and 133 sit in the first eight columns of their key block, the columns that take
    exp2_fma in the dev/ variants with exponentials on the FMA pipe (sm90_softmax.cuh)."""
    import torch

    require_family(family)
    q, k, v = gpu_inputs(1, 700, 700, 4, 2, head_dim, "bfloat16", q_scale=5.0, k_scale=5.0)
    clean = fa.attention(q, k, v, causal=causal, softcap=30.0, kernel=family)
    for j in (5, 133):
        bad_k = k.clone()
        bad_k[0, j, 0, :] = float("nan")
        bad = fa.attention(q, bad_k, v, causal=causal, softcap=30.0, kernel=family)
        reached = torch.zeros(bad.shape[:3], dtype=torch.bool, device="cuda")
        reached[0, j if causal else 0:, :2] = True
        assert torch.isnan(bad[reached]).all(), f"a row that sees NaN key {j} is not NaN"
        assert torch.equal(bad[~reached], clean[~reached]), f"NaN key {j} reached other rows"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("window, causal", [((-1, -1), False), ((-1, -1), True),
                                            ((17, 0), True), ((128, 128), False), ((0, 0), False)],
                         ids=["full", "causal", "w17-causal", "w128,128", "w0,0"])
@pytest.mark.parametrize("pair", [(239, 239), (300, 100), (100, 300)], ids=lambda p: "%dx%d" % p)
def test_gpu_sinks(family, dtype, head_dim, window, causal, pair):
    """Sinks with and without causal and window; 300 queries over 100 keys leave rows that see
    no key under a right bound (causal, w17, w0,0): out 0 and lse == sinks[h] there."""
    require_family(family)
    q, k, v = gpu_inputs(2, pair[0], pair[1], 4, 2, head_dim, dtype)
    gpu_check(family, q, k, v, causal, window, sinks=gpu_sinks(4))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sink", [-30.0, 12.0])
def test_gpu_sink_dominant_and_negligible(family, sink):
    import torch

    require_family(family)
    q, k, v = gpu_inputs(1, 400, 400, 2, 2, 128, "bfloat16")
    gpu_check(family, q, k, v, True, (100, 0), sinks=torch.full((2,), sink, device="cuda"))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head_dim", [40, 96])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("window, causal, softcap, use_sinks", [
    ((128, 0), True, 30.0, True), ((17, 17), False, 0.0, False), ((-1, -1), False, 50.0, True)],
    ids=["w128-causal-cap30-sinks", "w17,17", "cap50-sinks"])
def test_gpu_padded_head_dims(family, head_dim, dtype, window, causal, softcap, use_sinks):
    require_family(family)
    q, k, v = gpu_inputs(2, 150, 170, 2, 1, head_dim, dtype, q_scale=5.0 if softcap else 1.0)
    gpu_check(family, q, k, v, causal, window, softcap, gpu_sinks(2) if use_sinks else None)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("window, causal, softcap, use_sinks", [
    ((255, 0), True, 0.0, False), ((128, 128), False, 0.0, False), ((511, 0), True, 30.0, True),
    ((-1, -1), True, 30.0, True)], ids=["w255-causal", "w128,128", "w511-causal-cap30-sinks",
                                        "causal-cap30-sinks"])
def test_gpu_many_tiles_per_cta(family, dtype, head_dim, window, causal, softcap, use_sinks):
    """3 x 8 heads x 2048 rows = 384 row tiles of 128: each sm90 CTA (132 SMs) runs two or
    three, so the persistent scheduler hands window state from tile to tile; key blocks wholly
    left of the window are skipped in the middle of long rows."""
    require_family(family)
    q, k, v = gpu_inputs(3, 2048, 2048, 8, 2, head_dim, dtype)
    gpu_check(family, q, k, v, causal, window, softcap, gpu_sinks(8) if use_sinks else None)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_sdpa_layout_strided_views(family, causal):
    require_family(family)
    q, k, v = gpu_inputs(2, 333, 333, 4, 2, 128, "bfloat16", sdpa_layout=True)
    assert not q.is_contiguous() and q.stride(-1) == 1
    gpu_check(family, q, k, v, causal, (64, 32), 30.0, gpu_sinks(4))


@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_deterministic_bitwise(family):
    import torch

    require_family(family)
    q, k, v = gpu_inputs(3, 1000, 1000, 8, 2, 128, "bfloat16")
    sinks = gpu_sinks(8)
    kw = dict(causal=True, window_size=(300, 0), softcap=30.0, sinks=sinks, return_lse=True,
              kernel=family)
    o1, l1 = fa.attention(q, k, v, **kw)
    o2, l2 = fa.attention(q, k, v, **kw)
    assert torch.equal(o1, o2) and torch.equal(l1, l2)


@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_matches_the_host_reference(family):
    """The C reference and the kernels agree on one call with every feature (numpy in)."""
    require_family(family)
    rng = np.random.default_rng(13)
    q = (rng.standard_normal((2, 130, 4, 64)) * 3).astype(np.float16)
    k = rng.standard_normal((2, 150, 2, 64)).astype(np.float16)
    v = rng.standard_normal((2, 150, 2, 64)).astype(np.float16)
    sinks = np.array([0.0, 1.0, -1.0, 2.0], np.float32)
    kw = dict(causal=True, window_size=(37, 0), softcap=20.0, return_lse=True)
    host, host_lse = fa.attention(q, k, v, sinks=sinks, device="cpu", **kw)
    import torch

    dev, dev_lse = fa.attention(torch.from_numpy(q).cuda(), torch.from_numpy(k).cuda(),
                                torch.from_numpy(v).cuda(), sinks=torch.from_numpy(sinks).cuda(),
                                kernel=family, **kw)
    assert np.max(np.abs(dev.float().cpu().numpy() - host.astype(np.float32))) < 5e-3
    assert np.max(np.abs(dev_lse.cpu().numpy() - host_lse)) < 1e-3
