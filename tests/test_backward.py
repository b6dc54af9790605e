"""The backward (attention_backward, and attention() under autograd) without a GPU: the NumPy
reference against finite differences, the host path (device="cpu", the C reference in float64)
against it with the rule of DESIGN.md section 6 on dq, dk, dv and dsinks, the plan of three
launches for nominal GPUs, and bad arguments. The GPU matrix is tests/test_backward_gpu.py.

    python -m pytest -q tests/test_backward.py
"""
import numpy as np
import pytest

import flashattn_c as fa
from reference import attention_grads_numpy, attention_numpy, check_grads, visible_mask

# ================================================================================================
# The reference itself: its gradients are those of attention_numpy (central differences)
# ================================================================================================


def numeric_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for n in range(flat.size):
        keep = flat[n]
        flat[n] = keep + eps
        hi = f()
        flat[n] = keep - eps
        lo = f()
        flat[n] = keep
        gflat[n] = (hi - lo) / (2 * eps)
    return g


@pytest.mark.parametrize("causal,window,softcap,with_sinks", [
    (False, (-1, -1), 0.0, False), (True, (-1, -1), 0.0, False), (False, (2, 1), 0.0, False),
    (False, (-1, -1), 1.5, False), (True, (1, 0), 0.0, True), (False, (-1, -1), 2.0, True)])
def test_reference_gradients_are_the_derivatives_of_the_reference(rng, causal, window, softcap,
                                                                   with_sinks):
    q = rng.standard_normal((1, 5, 4, 8))
    k = rng.standard_normal((1, 7, 2, 8))
    v = rng.standard_normal((1, 7, 2, 8))
    dout = rng.standard_normal((1, 5, 4, 8))
    sinks = rng.standard_normal(4).astype(np.float32) if with_sinks else None
    sinks64 = None if sinks is None else sinks.astype(np.float64)

    def loss():
        out, _ = attention_numpy(q, k, v, causal, 0.7, window=window, softcap=softcap,
                                 sinks=sinks64)
        return float((out * dout).sum())

    dq, dk, dv, dsinks = attention_grads_numpy(q, k, v, dout, causal, 0.7, window=window,
                                               softcap=softcap, sinks=sinks64)
    for name, x, g in (("dq", q, dq), ("dk", k, dk), ("dv", v, dv)):
        np.testing.assert_allclose(g, numeric_grad(loss, x), rtol=1e-5, atol=1e-7, err_msg=name)
    if with_sinks:
        s = sinks64.copy()

        def loss_s():
            out, _ = attention_numpy(q, k, v, causal, 0.7, window=window, softcap=softcap, sinks=s)
            return float((out * dout).sum())

        # attention_numpy rounds sinks to float32 (as the API takes them): a wider step.
        np.testing.assert_allclose(dsinks, numeric_grad(loss_s, s, eps=1e-3), rtol=1e-3, atol=1e-6)


# ================================================================================================
# Host path (device="cpu")
# ================================================================================================


def host_case(rng, batch, sq, sk, hq, hk, d, dtype, causal=False, window=(-1, -1), softcap=0.0,
              with_sinks=False, scale=None, q_scale=1.0):
    q = (rng.standard_normal((batch, sq, hq, d)) * q_scale).astype(dtype)
    k = (rng.standard_normal((batch, sk, hk, d)) * q_scale).astype(dtype)
    v = rng.standard_normal((batch, sk, hk, d)).astype(dtype)
    dout = rng.standard_normal((batch, sq, hq, d)).astype(dtype)
    sinks = (rng.standard_normal(hq) * 2).astype(np.float32) if with_sinks else None
    kw = dict(causal=causal, softmax_scale=scale, window_size=window, softcap=softcap,
              sinks=sinks)
    out, lse = fa.attention(q, k, v, return_lse=True, device="cpu", **kw)
    poison = [np.full(x.shape, np.nan, dtype) for x in (q, k, v)]
    dsinks = np.full(hq, np.nan, np.float32) if with_sinks else None
    grads = fa.attention_backward(dout, q, k, v, out, lse, device="cpu", dq=poison[0],
                                  dk=poison[1], dv=poison[2], dsinks=dsinks, **kw)
    assert all(g is p for g, p in zip(grads, poison)), "the given gradients are returned as given"
    ref_kw = dict(window=window, softcap=softcap, sinks=sinks)
    ref = attention_grads_numpy(q, k, v, dout, causal, scale, np.float64, **ref_kw)
    # float64 inputs: the backward reads the forward's lse, float32 for every dtype, so its P
    # carries float32 rounding; a float32 computation is the peer (tests/test_gradcheck.py
    # holds the float64 path to torch.autograd.gradcheck instead).
    peer_dtype = np.float32 if dtype == np.float64 else dtype
    peer = attention_grads_numpy(q, k, v, dout, causal, scale, peer_dtype, **ref_kw)
    return check_grads(grads, ref, peer)


@pytest.mark.parametrize("seqlen", [1, 17, 113])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_cpu_backward_seqlens(rng, seqlen, causal, dtype):
    host_case(rng, 2, seqlen, seqlen, 2, 2, 32, dtype, causal)


@pytest.mark.parametrize("pair", [(113, 203), (1, 239), (239, 1), (70, 130)])
@pytest.mark.parametrize("causal", [False, True])
def test_cpu_backward_seqlen_q_differs(rng, pair, causal):
    host_case(rng, 1, pair[0], pair[1], 2, 1, 16, np.float16, causal)


@pytest.mark.parametrize("heads", [(6, 2), (8, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_cpu_backward_gqa_sums_dk_dv_over_the_group(rng, heads, causal):
    host_case(rng, 1, 90, 150, heads[0], heads[1], 16, np.float16, causal)


@pytest.mark.parametrize("window", [(0, 0), (1, 17), (17, 0), (128, 3), (-1, 5), (40, -1)])
@pytest.mark.parametrize("causal", [False, True])
def test_cpu_backward_window(rng, window, causal):
    # 200 x 260 rows and keys: several 64-key blocks, masked at both ends of each range.
    host_case(rng, 1, 200, 260, 2, 1, 16, np.float32, causal, window)


@pytest.mark.parametrize("softcap", [5.0, 30.0])
@pytest.mark.parametrize("window", [(-1, -1), (33, 0)])
def test_cpu_backward_softcap(rng, softcap, window):
    # float16 inputs: with logits near the cap, lse (float32, as the forward stores it) carries
    # ulp(30) ~ 2e-6 into every P, more than a float32 peer's own error; the GPU's dtypes are
    # the contract here.
    host_case(rng, 1, 120, 150, 2, 2, 32, np.float16, True, window, softcap, q_scale=5 ** 0.5)


@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (True, (9, 0))])
def test_cpu_backward_sinks_get_their_gradient(rng, causal, window):
    # (Sq > Sk with causal: the leading rows see no key, only the sink)
    report = host_case(rng, 2, 150, 100, 4, 2, 16, np.float32, causal, window, with_sinks=True)
    assert "dsinks" in report


def test_cpu_backward_rows_that_see_no_key_get_zero_dq(rng):
    q, k, v = (rng.standard_normal(s).astype(np.float32)
               for s in ((1, 9, 1, 8), (1, 3, 1, 8), (1, 3, 1, 8)))
    dout = rng.standard_normal((1, 9, 1, 8)).astype(np.float32)
    out, lse = fa.attention(q, k, v, causal=True, return_lse=True, device="cpu")
    dq, dk, dv = fa.attention_backward(dout, q, k, v, out, lse, causal=True, device="cpu")
    empty = ~visible_mask(9, 3, True).any(axis=1)
    assert empty.sum() == 6 and np.all(dq[:, empty] == 0)
    assert not np.isnan(dq).any() and not np.isnan(dk).any() and not np.isnan(dv).any()


def test_cpu_backward_no_keys_gives_zero_dq(rng):
    q = rng.standard_normal((1, 4, 2, 8)).astype(np.float32)
    kv = np.zeros((1, 0, 2, 8), np.float32)
    out, lse = fa.attention(q, kv, kv, return_lse=True, device="cpu")
    dq, dk, dv = fa.attention_backward(np.ones_like(q), q, kv, kv, out, lse, device="cpu")
    assert np.all(dq == 0) and dk.shape == (1, 0, 2, 8) and dv.shape == (1, 0, 2, 8)


def test_cpu_backward_strided_inputs(rng):
    # SDPA-layout views (batch, heads, seq, head_dim).transpose(1, 2) of every array.
    def sdpa(shape):
        b, s, h, d = shape
        return rng.standard_normal((b, h, s, d)).astype(np.float32).transpose(0, 2, 1, 3)

    q, k, v, dout = sdpa((2, 33, 4, 16)), sdpa((2, 47, 2, 16)), sdpa((2, 47, 2, 16)), sdpa((2, 33, 4, 16))
    out, lse = fa.attention(q, k, v, causal=True, return_lse=True, device="cpu")
    grads = fa.attention_backward(dout, q, k, v, out, lse, causal=True, device="cpu")
    ref = attention_grads_numpy(q, k, v, dout, True)
    peer = attention_grads_numpy(q, k, v, dout, True, dtype=np.float32)
    check_grads(grads, ref, peer)


# ================================================================================================
# The plan: three launches, each of the 384-thread contract, and a workspace
# ================================================================================================

def plan(**kw):
    sizes = dict(batch=2, seqlen_q=1000, seqlen_k=1000, heads_q=8, heads_kv=2, head_dim=128,
                 dtype="bfloat16", arch=(9, 0), backward=True)
    sizes.update(kw)
    return fa.launch_config(**sizes)


sm80_built = pytest.mark.skipif(not fa.build_info()["families"]["sm80"],
                                reason="the backward needs the sm80 family, not in this build")


sm90_built = pytest.mark.skipif(not (fa.build_info()["families"]["sm80"] and
                                     fa.build_info()["families"].get("sm90")),
                                reason="the sm90 backward needs the sm80 and sm90 families")


def auto_family(arch):
    """The family whose backward auto plans on arch for a problem the sm90 backward serves."""
    return "sm90" if arch == (9, 0) and fa.build_info()["families"].get("sm90") else "sm80"


@sm80_built
@pytest.mark.parametrize("arch", [(8, 0), (8, 9), (9, 0)])
def test_backward_plan_is_preprocess_main_postprocess(arch):
    cfg = plan(arch=arch)
    names = [l["kernel"] for l in cfg["launches"]]
    assert names == ["bwd_pre_bf16", f"bwd_{auto_family(arch)}_hd128_bf16", "bwd_post_bf16"]
    assert cfg["main_launch"] == 1 and cfg["kernel"] == names[1]
    assert all(l["block"] == (384, 1, 1) for l in cfg["launches"])
    pre, main, post = cfg["launches"]
    assert pre["grid"] == post["grid"] == (16, 8, 2)  # 64-row blocks, heads_q, batch
    assert main["grid"] == ((1000 + main["block_n"] - 1) // main["block_n"], 2, 2)
    # dq_accum (fp32 rows x head_dim) and delta (fp32 per row), each 256-byte aligned
    rows = 2 * 8 * 1000
    assert cfg["workspace_bytes"] == rows * 128 * 4 + rows * 4


@sm80_built
def test_backward_plan_names_what_it_adds():
    fam = auto_family((9, 0))
    cfg = plan(causal=True, softcap=30.0, sinks=True, deterministic=True)
    assert [l["kernel"] for l in cfg["launches"]] == [
        "bwd_pre_bf16_sinks", f"bwd_{fam}_hd128_bf16_causal_softcap_det", "bwd_post_bf16_sinks"]
    assert plan(window_size=(100, 0))["kernel"] == f"bwd_{fam}_hd128_bf16_window"
    assert plan(window_size=(5000, 0))["kernel"] == f"bwd_{fam}_hd128_bf16_causal"  # hides nothing left
    # sinks add the per-block partials; deterministic adds one turn counter per query block
    base = plan()["workspace_bytes"]
    assert plan(sinks=True)["workspace_bytes"] == base + 2 * 8 * 16 * 4  # a float per row block
    assert plan(deterministic=True)["workspace_bytes"] > base


@sm80_built
def test_sm80_backward_tile_tier_follows_the_device_shared_memory():
    # (block_m, block_n, stages, smem_bytes): the wide tier where the part's opt-in shared memory
    # takes it (A100 163 KB, H100/H200 227 KB), the narrow one on 99 KB parts
    narrow = {64: (48, 192, 1, 100384), 128: (48, 96, 1, 94240), 256: (32, 48, 1, 89504)}
    wide = {64: (64, 192, 2, 134352), 128: (64, 96, 2, 142544), 256: (64, 48, 1, 129696)}
    for arch, tiles in (((8, 0), wide), ((9, 0), wide), ((8, 6), narrow), ((8, 9), narrow),
                        ((12, 0), narrow)):
        for head_dim, padded in ((40, 64), (64, 64), (72, 128), (128, 128), (200, 256), (256, 256)):
            cfg = plan(kernel="sm80", arch=arch, head_dim=head_dim, causal=True)
            main = cfg["launches"][cfg["main_launch"]]
            assert main["kernel"] == f"bwd_sm80_hd{padded}_bf16_causal"
            got = (main["block_m"], main["block_n"], main["stages"], main["smem_bytes"])
            assert got == tiles[padded], (arch, head_dim)
            block_n = tiles[padded][1]
            assert main["grid"] == ((1000 + block_n - 1) // block_n, 2, 2) and main["block"] == (384, 1, 1)


@sm80_built
def test_sm80_deterministic_turn_counters_follow_the_tile():
    # one int per (batch, q head, query block of the planned tile): 48-row blocks on an L4,
    # 64-row ones on an A100, so the A100's workspace holds fewer counters
    base_l4, base_a100 = (plan(kernel="sm80", arch=a)["workspace_bytes"] for a in ((8, 9), (8, 0)))
    assert base_l4 == base_a100
    det_l4 = plan(kernel="sm80", arch=(8, 9), deterministic=True)["workspace_bytes"]
    det_a100 = plan(kernel="sm80", arch=(8, 0), deterministic=True)["workspace_bytes"]
    assert det_l4 - base_l4 >= 2 * 8 * ((1000 + 47) // 48) * 4
    assert det_a100 - base_a100 >= 2 * 8 * ((1000 + 63) // 64) * 4
    assert det_a100 - base_a100 < det_l4 - base_l4


@sm90_built
def test_sm90_backward_plan_tiles():
    for head_dim, padded, block_n, smem in ((64, 64, 128, 116992), (72, 128, 128, 198912),
                                            (128, 128, 128, 198912), (200, 256, 64, 231680),
                                            (256, 256, 64, 231680)):
        cfg = plan(kernel="sm90", head_dim=head_dim, causal=True)
        main = cfg["launches"][cfg["main_launch"]]
        assert main["kernel"] == f"bwd_sm90_hd{padded}_bf16_causal"
        assert (main["block_m"], main["block_n"], main["smem_bytes"]) == (64, block_n, smem)
        assert main["grid"] == ((1000 + block_n - 1) // block_n, 2, 2) and main["block"] == (384, 1, 1)


@sm90_built
@pytest.mark.parametrize("varlen", [False, True])
def test_sm90_backward_serves_head_dim_256_and_auto_takes_it(varlen):
    for kernel in ("sm90", "auto"):
        assert plan(kernel=kernel, head_dim=256, varlen=varlen)["kernel"] == "bwd_sm90_hd256_bf16"


@sm90_built
def test_sm90_backward_serves_packed_batches():
    for kernel in ("sm90", "auto"):
        cfg = plan(kernel=kernel, varlen=True, head_dim=128, deterministic=True)
        main = cfg["launches"][cfg["main_launch"]]
        assert main["kernel"] == "bwd_sm90_hd128_bf16_det"
        assert main["grid"] == (8, 2, 2) and main["block"] == (384, 1, 1)  # maxima: 1000 keys


def test_sm90_backward_is_refused_off_sm90():
    with pytest.raises(RuntimeError, match="sm90"):
        plan(kernel="sm90", arch=(8, 0))


# ================================================================================================
# Bad arguments: errors that name the argument, before any work, nothing written
# ================================================================================================

@pytest.fixture
def problem(rng):
    q = rng.standard_normal((1, 6, 2, 8)).astype(np.float32)
    k = rng.standard_normal((1, 5, 1, 8)).astype(np.float32)
    v = rng.standard_normal((1, 5, 1, 8)).astype(np.float32)
    out, lse = fa.attention(q, k, v, return_lse=True, device="cpu")
    return dict(dout=np.ones_like(q), q=q, k=k, v=v, out=out, lse=lse)


@pytest.mark.parametrize("name,bad,match", [
    ("dout", np.ones((1, 6, 2, 4), np.float32), "dout must have q's shape"),
    ("out", np.ones((1, 7, 2, 8), np.float32), "out must be the forward's output"),
    ("lse", np.ones((1, 6, 2), np.float32), "lse must be the forward's"),
    ("lse", np.ones((1, 2, 6), np.float64), "lse"),
    ("dout", np.ones((1, 6, 2, 8), np.float16), "dout|dtype"),
])
def test_backward_bad_arrays_name_the_argument(problem, name, bad, match):
    dq = np.full(problem["q"].shape, 7.0, np.float32)
    problem[name] = bad
    with pytest.raises((TypeError, ValueError), match=match):
        fa.attention_backward(**problem, device="cpu", dq=dq)
    assert np.all(dq == 7.0), "nothing is written to dq= when the call raises"


def test_backward_sinks_and_dsinks_go_together(problem):
    with pytest.raises(ValueError, match="dsinks"):
        fa.attention_backward(**problem, device="cpu", dsinks=np.zeros(2, np.float32))


def test_backward_bad_scalars(problem):
    with pytest.raises(TypeError, match="deterministic"):
        fa.attention_backward(**problem, device="cpu", deterministic="yes")
    with pytest.raises(TypeError, match="window_size"):
        fa.attention_backward(**problem, device="cpu", window_size=3)
    with pytest.raises(ValueError, match="softcap"):
        fa.attention_backward(**problem, device="cpu", softcap=-1.0)
