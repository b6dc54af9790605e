"""GPU kernels against a float64 reference (DESIGN.md section 6), for every family this GPU runs.

Skipped with a reason where there is no CUDA GPU or no PyTorch (the reference is computed with
torch on the device). Each case: fresh random inputs (x5 where stated), output poisoned with NaN
through out= and fully overwritten, the FA3 tolerance rule on out, lse within 1e-3 (-inf rows
exact), no NaN.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import flashattn_c as fa
from conftest import FAMILIES, GPU_DTYPES, GPU_MARKS, require_family
from reference import check_against_reference

pytestmark = GPU_MARKS
DTYPES = GPU_DTYPES


def tdtype(name):
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def make_inputs(batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype, q_scale=1.0,
                kv_scale=1.0, sdpa_layout=False):
    """q, k, v on the GPU; sdpa_layout stores (B, H, S, D) and returns the transposed views."""
    import torch

    dt = tdtype(dtype)

    def rand(b, s, h, scale):
        if sdpa_layout:
            x = torch.randn(b, h, s, head_dim, device="cuda", dtype=torch.float32) * scale
            return x.to(dt).transpose(1, 2)
        return (torch.randn(b, s, h, head_dim, device="cuda", dtype=torch.float32) * scale).to(dt)

    return (rand(batch, seqlen_q, heads_q, q_scale), rand(batch, seqlen_k, heads_kv, kv_scale),
            rand(batch, seqlen_k, heads_kv, kv_scale))


def reference(q, k, v, causal, scale, upcast):
    """Naive attention: upcast=True in float64 (the reference), else at the input precision (the
    peer: scores in the input dtype, softmax in float32, probabilities rounded to the input dtype)."""
    import torch

    Sq, Hq, Sk, Hk = q.shape[1], q.shape[2], k.shape[1], k.shape[2]
    if upcast:
        q, k, v = q.double(), k.double(), v.double()
    k = k.repeat_interleave(Hq // Hk, dim=2)
    v = v.repeat_interleave(Hq // Hk, dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", q * scale if not upcast else q, k)
    if upcast:
        scores = scores * scale
    i = torch.arange(Sq, device=q.device)[:, None]
    j = torch.arange(Sk, device=q.device)[None, :]
    visible = (j <= i + Sk - Sq) if causal else torch.ones(Sq, Sk, dtype=torch.bool, device=q.device)
    scores = scores.masked_fill(~visible, float("-inf"))
    work = scores if upcast else scores.float()
    lse = torch.logsumexp(work, dim=-1) if Sk else torch.full(work.shape[:-1], float("-inf"),
                                                               device=q.device, dtype=work.dtype)
    empty = torch.isneginf(lse)[..., None]
    probs = torch.where(empty, torch.zeros_like(work), torch.exp(work - lse[..., None]))
    if not upcast:
        probs = probs.to(v.dtype)
    out = torch.einsum("bhij,bjhd->bihd", probs, v)
    return out, lse


def run_and_check(family, q, k, v, causal, softmax_scale=None):
    import torch

    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    out = torch.full(q.shape, float("nan"), dtype=q.dtype, device="cuda")
    got, lse = fa.attention(q, k, v, causal=causal, softmax_scale=softmax_scale, return_lse=True,
                            out=out, kernel=family)
    assert got is out
    torch.cuda.synchronize()
    launch = fa.last_launch()
    if q.numel():
        assert launch["family"] == family and launch["block"] == (384, 1, 1)
    assert isinstance(lse, torch.Tensor) and lse.dtype == torch.float32
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    ref, ref_lse = reference(q, k, v, causal, scale, upcast=True)
    peer, _ = reference(q, k, v, causal, scale, upcast=False)
    check_against_reference(out, lse, ref, ref_lse, peer, launch["kernel"] if q.numel() else family)
    return out, lse


SEQLENS = [1, 17, 113, 127, 129, 239, 1023, 1025, 4224]
PAIRS = [(113, 203), (239, 1), (1, 239), (799, 3), (1024, 1023)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("seqlen", SEQLENS)
def test_square_seqlens(family, dtype, causal, head_dim, seqlen):
    require_family(family)
    batch = 1 if seqlen > 2048 else 2
    run_and_check(family, *make_inputs(batch, seqlen, seqlen, 2, 2, head_dim, dtype), causal)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}x{p[1]}")
def test_seqlen_q_differs_from_seqlen_k(family, dtype, causal, head_dim, pair):
    require_family(family)
    run_and_check(family, *make_inputs(2, pair[0], pair[1], 2, 2, head_dim, dtype), causal)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [(6, 2), (8, 1)], ids=["gqa6:2", "mqa8:1"])
def test_batch9_gqa(family, dtype, causal, heads):
    require_family(family)
    run_and_check(family, *make_inputs(9, 257, 300, heads[0], heads[1], 128, dtype), causal)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_sdpa_layout_strided_views(family, dtype, causal, head_dim):
    require_family(family)
    q, k, v = make_inputs(2, 333, 333, 4, 2, head_dim, dtype, sdpa_layout=True)
    assert not q.is_contiguous() and q.stride(-1) == 1
    run_and_check(family, q, k, v, causal)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_large_magnitude_inputs(family, dtype, causal):
    require_family(family)
    run_and_check(family, *make_inputs(2, 511, 511, 4, 4, 128, dtype, q_scale=5.0, kv_scale=3.0),
                  causal)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [1e30, 3e38, 3.4e38])
def test_huge_softmax_scale_is_one_hot(family, causal, scale):
    """At scales this large the softmax of distinct scores is one-hot on each row's largest: out
    is that key's v row, never NaN, and lse is the largest logit, +inf where it leaves float32."""
    import torch

    require_family(family)
    q, k, v = make_inputs(1, 200, 300, 2, 2, 64, "bfloat16")
    out, lse = fa.attention(q, k, v, causal=causal, softmax_scale=scale, return_lse=True,
                            kernel=family)
    scores = torch.einsum("bihd,bjhd->bhij", q.double(), k.double())
    if causal:
        i = torch.arange(200, device="cuda")[:, None]
        j = torch.arange(300, device="cuda")[None, :]
        scores = scores.masked_fill(j > i + 100, float("-inf"))
    top = scores.max(dim=-1)
    want = torch.gather(v.double().permute(0, 2, 1, 3), 2,
                        top.indices[..., None].expand(-1, -1, -1, 64)).permute(0, 2, 1, 3)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert torch.equal(out.double(), want)
    want_lse = (top.values * scale).float()  # +-inf where the logit leaves float32
    assert torch.allclose(lse.double(), want_lse.double(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_row_max_rising_across_key_blocks(family, causal, head_dim):
    """Key blocks are visited from the last down; here the lower keys score ever higher, for some
    query rows three times more than for others, so running row maxima move up by far more than
    2^8 in the middle of a row, for some rows of a warp and not for their neighbours (the lazy
    softmax of the sm90 family must then move those rows' maxima and rescale their O)."""
    import torch

    require_family(family)
    q, k, v = make_inputs(2, 700, 700, 2, 2, head_dim, "bfloat16")
    key_ramp = torch.linspace(4.0, 0.25, 700, device="cuda")[None, :, None, None]
    row_gain = torch.where(torch.arange(700, device="cuda") % 128 < 48, 3.0, 1.0)[None, :, None, None]
    k = (k.float() * key_ramp).to(k.dtype)
    q = (q.float() * row_gain).to(q.dtype)
    run_and_check(family, q, k, v, causal)


def assert_several_tiles_per_cta(batch, seqlen_q, heads_q):
    """The sm90 launch just checked gave each CTA at least two 128-row tiles: only then do the
    causal pair order and the hand-over of state from one tile to the next run."""
    tiles = -(-seqlen_q // 128) * heads_q * batch
    grid = fa.last_launch()["grid"][0]
    assert tiles >= 2 * grid, f"{tiles} tiles on {grid} CTAs: fewer than two per CTA"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim, seqlen_q, seqlen_k", [
    (64, 1100, 1100), (64, 1024, 1024), (64, 1100, 1300), (64, 1300, 1100),
    (256, 1100, 1100), (256, 1024, 2100), (256, 1300, 1100)])
def test_sm90_causal_tiles_in_pairs(dtype, head_dim, seqlen_q, seqlen_k):
    """With at least two causal tiles per CTA, each CTA runs a head's longest query block with its
    shortest, the second longest with the second shortest, and so on. 8, 9 or 11 query blocks
    (odd: the middle one is a pair of one tile), 36 (batch, head) pairs in GQA groups of 3, a
    part-filled last round of pairs, keys longer and shorter than the queries (longer: rows that see no
    key), head_dim 256 over at most 2048 keys (64-key blocks) and more (80). Every tile must be
    computed exactly once."""
    require_family("sm90")
    run_and_check("sm90", *make_inputs(3, seqlen_q, seqlen_k, 12, 4, head_dim, dtype), True)
    assert_several_tiles_per_cta(3, seqlen_q, 12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_sm90_head_dim_256_o_in_v_ring_over_many_tiles(dtype, causal):
    """head_dim 256 stages O in the V ring: the next tile's V may only land once both
    warpgroups' O stores have read the ring. Several tiles per CTA, so every CTA hands over."""
    require_family("sm90")
    run_and_check("sm90", *make_inputs(2, 1100, 1100, 16, 8, 256, dtype), causal)
    assert_several_tiles_per_cta(2, 1100, 16)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head_dim", [8, 40, 72, 200])
def test_padded_head_dims(family, head_dim):
    require_family(family)
    run_and_check(family, *make_inputs(2, 150, 170, 2, 1, head_dim, "bfloat16"), True)


@pytest.mark.parametrize("family", FAMILIES)
def test_empty_keys_and_fully_masked_rows(family):
    import torch

    require_family(family)
    q, k, v = make_inputs(1, 9, 0, 2, 2, 64, "float16")
    out, lse = run_and_check(family, q, k, v, False)
    assert torch.all(out == 0) and torch.all(torch.isneginf(lse))
    q, k, v = make_inputs(1, 300, 100, 2, 2, 64, "float16")
    out, lse = run_and_check(family, q, k, v, True)
    assert torch.all(out[:, :200] == 0) and torch.all(torch.isneginf(lse[:, :, :200]))


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_bitwise(family):
    import torch

    require_family(family)
    q, k, v = make_inputs(3, 1000, 1000, 8, 2, 128, "bfloat16")
    o1, l1 = fa.attention(q, k, v, causal=True, return_lse=True, kernel=family)
    o2, l2 = fa.attention(q, k, v, causal=True, return_lse=True, kernel=family)
    assert torch.equal(o1, o2) and torch.equal(l1, l2)


@pytest.mark.parametrize("family", FAMILIES)
def test_non_default_stream(family):
    import torch

    require_family(family)
    q, k, v = make_inputs(2, 700, 700, 4, 4, 64, "float16")
    expected = fa.attention(q, k, v, kernel=family)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = fa.attention(q, k, v, kernel=family)
        assert fa.last_launch()["stream"] == stream.cuda_stream
    explicit = fa.attention(q, k, v, kernel=family, stream=stream)
    stream.synchronize()
    assert torch.equal(got, expected) and torch.equal(explicit, expected)


def test_numpy_host_inputs_run_on_the_gpu(rng):
    q = rng.standard_normal((2, 65, 4, 64)).astype(np.float16)
    k = rng.standard_normal((2, 80, 2, 64)).astype(np.float16)
    v = rng.standard_normal((2, 80, 2, 64)).astype(np.float16)
    out = fa.attention(q, k, v, causal=True)
    assert isinstance(out, np.ndarray) and out.dtype == np.float16
    launch = fa.last_launch()
    assert launch["block"] == (384, 1, 1)
    assert [l["kernel"] for l in launch["launches"]] == [launch["kernel"]]
    assert launch["launches"][0]["regs"] == launch["regs"] > 0 and launch["workspace_bytes"] == 0
    host = fa.attention(q, k, v, causal=True, device="cpu")
    assert np.max(np.abs(out.astype(np.float32) - host.astype(np.float32))) < 5e-3


def test_cupy_inputs_give_cupy_outputs():
    cp = pytest.importorskip("cupy")
    q = cp.random.standard_normal((1, 100, 2, 64)).astype(cp.float16)
    out = fa.attention(q, q, q)
    assert isinstance(out, cp.ndarray) and out.shape == q.shape
    host = fa.attention(cp.asnumpy(q), cp.asnumpy(q), cp.asnumpy(q), device="cpu")
    assert np.max(np.abs(cp.asnumpy(out).astype(np.float32) - host.astype(np.float32))) < 5e-3


def test_auto_dispatch_uses_the_hopper_kernel_on_sm90():
    import torch

    q, k, v = make_inputs(1, 128, 128, 2, 2, 128, "bfloat16")
    fa.attention(q, k, v)
    expected = "sm90" if (torch.cuda.get_device_capability() == (9, 0)
                          and fa.build_info()["families"].get("sm90")) else "sm80"
    assert fa.last_launch()["family"] == expected


def test_launch_log_line_names_kernel_block_and_tile():
    code = (
        "import torch, flashattn_c as fa\n"
        "q = torch.randn(1, 256, 2, 128, device='cuda', dtype=torch.bfloat16)\n"
        "fa.attention(q, q, q, causal=True)\n"
        "torch.cuda.synchronize()\n"
        "l = fa.last_launch()\n"
        "print(f\"tile={l['block_m']}x{l['block_n']}\")\n"
    )
    env = dict(os.environ, FLASHATTN_C_LOG_LAUNCH="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("[flashattn_c] fwd_")]
    assert len(lines) == 1, proc.stderr
    assert "block=(384,1,1)" in lines[0] and "_hd128_bf16_causal" in lines[0]
    tile = proc.stdout.strip()
    assert tile.startswith("tile=") and f" {tile} " in lines[0], (tile, lines[0])
