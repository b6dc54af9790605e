"""Sliding window, softcap and sinks (issue 13) against float64 references, DESIGN.md section 6.

The rule, spelled once in csrc/common/mask.h and in NumPy in tests/reference.py: with
d = seqlen_k - seqlen_q, query i sees key j when  i + d - left <= j <= i + d + right,
0 <= j < seqlen_k, -1 meaning unbounded; causal=True sets right = 0. softcap c > 0 turns each
scaled score x into c * tanh(x / c) before the mask. sinks (float32, one logit per q head) add
exp(sinks[h]) to each row's denominator and to lse, with no value row. A row that sees no key
gives out = 0 and lse = -inf, or lse = sinks[h] with sinks.

Here, with no GPU (every CI run): the NumPy rule's spot values; the host path (device="cpu",
the C reference) against attention_numpy on small shapes, out= poisoned with NaN, lse checked,
rows that see no key checked; the identities the rule implies, bitwise; bad arguments; and the
instance launch_config names for nominal devices. The GPU matrix is tests/test_masks_gpu.py.

    python -m pytest -q tests/test_masks.py
"""
import math

import numpy as np
import pytest

import flashattn_c as fa
from reference import (SOFTCAPS, WINDOW_SIDES, assert_empty_rows, attention_numpy,
                       check_against_reference, expected_kernel, visible_mask, window_id)

FAMILIES = ["sm80", "sm90"]
GPU_DTYPES = ["float16", "bfloat16"]



# ================================================================================================
# The NumPy rule itself (tests/reference.py): spot values, so the references are not circular
# ================================================================================================


def test_visible_mask_spot_values():
    # Sq=3, Sk=6: d = 3, row i sits on key i + 3.
    m = visible_mask(3, 6, False, (1, 0))
    assert m.tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1]]
    m = visible_mask(3, 6, False, (0, 1))
    assert m.tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 1]]
    # causal forces right = 0 whatever the window says
    assert np.array_equal(visible_mask(3, 6, True, (1, 5)), visible_mask(3, 6, False, (1, 0)))
    assert np.array_equal(visible_mask(3, 6, True), visible_mask(3, 6, False, (-1, 0)))
    # Sq > Sk: leading rows see nothing under a right bound
    m = visible_mask(4, 2, False, (-1, 0))
    assert m.tolist() == [[0, 0], [0, 0], [1, 0], [1, 1]]
    # windows wider than the sequence hide nothing
    assert visible_mask(5, 7, False, (1024, 1024)).all()
    assert visible_mask(5, 7, False).all()


def test_attention_numpy_sinks_and_softcap_spot_values():
    # One query, two keys, head_dim 1, scale 1: logits 0 and 2 (softcap 1: tanh 0, tanh 2).
    q = np.ones((1, 1, 1, 1))
    k = np.array([0.0, 2.0]).reshape(1, 2, 1, 1)
    v = np.array([1.0, 3.0]).reshape(1, 2, 1, 1)
    out, lse = attention_numpy(q, k, v, softmax_scale=1.0, sinks=np.array([1.0], np.float32))
    den = 1 + math.exp(2) + math.exp(1)
    assert out[0, 0, 0, 0] == pytest.approx((1 + 3 * math.exp(2)) / den)
    assert lse[0, 0, 0] == pytest.approx(math.log(den))
    out, lse = attention_numpy(q, k, v, softmax_scale=1.0, softcap=1.0)
    t = math.tanh(2.0)
    assert out[0, 0, 0, 0] == pytest.approx((1 + 3 * math.exp(t)) / (1 + math.exp(t)))
    # 3 queries over 2 keys, causal: query 0 sees no key; with a sink its lse is the sink
    out, lse = attention_numpy(np.ones((1, 3, 1, 1)), k, v, softmax_scale=1.0, causal=True,
                               sinks=np.array([-0.5], np.float32))
    assert out[0, 0, 0, 0] == 0 and lse[0, 0, 0] == pytest.approx(-0.5)
    assert lse[0, 0, 1] == pytest.approx(math.log(math.exp(-0.5) + 1))
    out, lse = attention_numpy(np.ones((1, 3, 1, 1)), k, v, softmax_scale=1.0, causal=True)
    assert out[0, 0, 0, 0] == 0 and lse[0, 0, 0] == -np.inf


# ================================================================================================
# Host path (device="cpu")
# ================================================================================================


def np_inputs(rng, batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype, q_scale=1.0,
              k_scale=1.0):
    q = (rng.standard_normal((batch, seqlen_q, heads_q, head_dim)) * q_scale).astype(dtype)
    k = (rng.standard_normal((batch, seqlen_k, heads_kv, head_dim)) * k_scale).astype(dtype)
    v = rng.standard_normal((batch, seqlen_k, heads_kv, head_dim)).astype(dtype)
    return q, k, v


def cpu_run(q, k, v, causal=False, window=(-1, -1), softcap=0.0, sinks=None, softmax_scale=None):
    """Ours on the host path, out= poisoned with NaN; returns (out, lse) as numpy."""
    out = np.full(q.shape, np.nan, dtype=q.dtype)
    got, lse = fa.attention(q, k, v, causal=causal, softmax_scale=softmax_scale,
                            window_size=window, softcap=softcap, sinks=sinks, return_lse=True,
                            out=out, device="cpu")
    assert got is out or np.shares_memory(got, out)
    assert lse.dtype == np.float32 and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
    assert not np.isnan(out).any(), "output has NaN (unwritten or computed)"
    assert not np.isnan(lse).any(), "lse has NaN"
    return out, lse


def cpu_check(q, k, v, causal=False, window=(-1, -1), softcap=0.0, sinks=None):
    out, lse = cpu_run(q, k, v, causal, window, softcap, sinks)
    kw = dict(window=window, softcap=softcap, sinks=sinks)
    ref, ref_lse = attention_numpy(q, k, v, causal, None, np.float64, **kw)
    peer, _ = attention_numpy(q, k, v, causal, None, q.dtype.type, **kw)
    check_against_reference(out, lse, ref, ref_lse, peer)
    assert_empty_rows(out, lse, visible_mask(q.shape[1], k.shape[1], causal, window), sinks)
    return out, lse


CPU_WINDOWS = ([((l, r), False) for l in WINDOW_SIDES for r in WINDOW_SIDES]
               + [((l, -1), True) for l in WINDOW_SIDES] + [((17, 255), True), ((0, 1), True)])


@pytest.mark.parametrize("window, causal", CPU_WINDOWS,
                         ids=[window_id(w) + ("-causal" if c else "") for w, c in CPU_WINDOWS])
def test_cpu_window_every_side(rng, window, causal):
    """Every (left, right) of {0, 1, 17, 128, 255, 1024, -1}^2, and causal with each left (and
    with a right that causal overrides), on 270 queries x 300 keys (five 64-key blocks, so whole
    blocks fall outside the narrow windows): 1024 is wider than both."""
    cpu_check(*np_inputs(rng, 1, 270, 300, 1, 1, 16, np.float16), causal, window)


CPU_PAIRS = [(113, 203), (239, 1), (1, 239), (203, 113), (799, 3)]
CPU_PAIR_WINDOWS = [((0, 0), False), ((1, 17), False), ((17, 1), False), ((128, -1), False),
                    ((-1, 128), False), ((17, 0), True), ((128, 0), True), ((1024, 1024), False),
                    ((1024, -1), True)]


@pytest.mark.parametrize("window, causal", CPU_PAIR_WINDOWS,
                         ids=[window_id(w) + ("-causal" if c else "") for w, c in CPU_PAIR_WINDOWS])
@pytest.mark.parametrize("pair", CPU_PAIRS, ids=lambda p: "%dx%d" % p)
def test_cpu_window_seqlen_q_differs_from_seqlen_k(rng, pair, window, causal):
    cpu_check(*np_inputs(rng, 1, pair[0], pair[1], 2, 1, 40, np.float16), causal, window)


@pytest.mark.parametrize("window, causal", [((255, 0), True), ((17, 17), False),
                                            ((1024, 1024), False)], ids=["w255-causal", "w17,17",
                                                                         "w1024,1024-wider"])
def test_cpu_window_1024x1023(rng, window, causal):
    cpu_check(*np_inputs(rng, 1, 1024, 1023, 1, 1, 16, np.float32), causal, window)


@pytest.mark.parametrize("heads", [(6, 2), (8, 1)], ids=["gqa6:2", "mqa8:1"])
@pytest.mark.parametrize("window, causal, softcap, use_sinks", [
    ((128, 0), True, 0.0, False), ((17, 17), False, 0.0, True), ((1, 255), False, 30.0, False),
    ((255, 0), True, 5.0, True)], ids=["w128-causal", "w17,17-sinks", "w1,255-cap30",
                                       "w255-causal-cap5-sinks"])
def test_cpu_gqa(rng, heads, window, causal, softcap, use_sinks):
    q, k, v = np_inputs(rng, 1, 150, 190, heads[0], heads[1], 16, np.float16,
                        q_scale=5.0 if softcap else 1.0)
    sinks = (rng.standard_normal(heads[0]) * 2).astype(np.float32) if use_sinks else None
    cpu_check(q, k, v, causal, window, softcap, sinks)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("window, causal", [((-1, -1), False), ((-1, -1), True),
                                            ((128, 0), True), ((17, 255), False)],
                         ids=["full", "causal", "w128-causal", "w17,255"])
@pytest.mark.parametrize("softcap", SOFTCAPS)
def test_cpu_softcap(rng, softcap, window, causal, dtype):
    """softcap 5, 30, 50 on q and k scaled by 5: scores far past the cap, tanh saturated."""
    q, k, v = np_inputs(rng, 1, 161, 230, 2, 1, 32, dtype, q_scale=5.0, k_scale=5.0)
    cpu_check(q, k, v, causal, window, softcap)


@pytest.mark.parametrize("pair", [(150, 150), (300, 100), (100, 300)], ids=lambda p: "%dx%d" % p)
@pytest.mark.parametrize("window, causal", [((-1, -1), False), ((-1, -1), True),
                                            ((17, 0), True), ((128, 128), False), ((0, 0), False)],
                         ids=["full", "causal", "w17-causal", "w128,128", "w0,0"])
def test_cpu_sinks(rng, pair, window, causal):
    """Sinks with and without causal and window; 300 queries over 100 keys leave rows that see
    no key under a right bound: their out is 0 and their lse the sink."""
    q, k, v = np_inputs(rng, 1, pair[0], pair[1], 4, 2, 16, np.float16)
    sinks = np.array([0.5, -1.25, 3.0, -20.0], np.float32)
    cpu_check(q, k, v, causal, window, sinks=sinks)


@pytest.mark.parametrize("sink", [-30.0, 0.0, 12.0])
def test_cpu_sink_dominant_and_negligible(rng, sink):
    """A sink far above every logit leaves out ~ 0 and lse ~ sink; far below, no sink."""
    q, k, v = np_inputs(rng, 1, 90, 120, 2, 2, 64, np.float32)
    sinks = np.full(2, sink, np.float32)
    out, lse = cpu_check(q, k, v, True, (33, 0), sinks=sinks)
    plain, plain_lse = cpu_run(q, k, v, True, (33, 0))
    if sink <= -30.0:
        np.testing.assert_allclose(out, plain, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(lse, plain_lse, rtol=1e-6, atol=1e-6)
    if sink >= 12.0:
        assert np.all(lse >= sink) and np.max(np.abs(out)) < 1e-2


@pytest.mark.parametrize("head_dim", [64, 128, 256, 40, 96])
@pytest.mark.parametrize("causal", [False, True])
def test_cpu_every_head_dim_all_three(rng, head_dim, causal):
    """Window, softcap and sinks together at each head_dim (40 and 96 are padded in kernels)."""
    q, k, v = np_inputs(rng, 1, 97, 140, 3, 1, head_dim, np.float16, q_scale=5.0)
    sinks = (rng.standard_normal(3) * 2).astype(np.float32)
    cpu_check(q, k, v, causal, (40, 9), 30.0, sinks)


# ---- identities the mask rule implies: bitwise on the host path ---------------------------------


def test_cpu_window_minus1_0_is_causal(rng):
    q, k, v = np_inputs(rng, 2, 97, 131, 2, 1, 32, np.float16)
    a, la = cpu_run(q, k, v, causal=True)
    b, lb = cpu_run(q, k, v, causal=False, window=(-1, 0))
    assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()


@pytest.mark.parametrize("right", [-1, 0, 5, 1000])
def test_cpu_causal_ignores_the_right_side(rng, right):
    q, k, v = np_inputs(rng, 1, 80, 100, 2, 2, 32, np.float16)
    a, la = cpu_run(q, k, v, causal=True, window=(20, 0))
    b, lb = cpu_run(q, k, v, causal=True, window=(20, right))
    assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_window_wider_than_the_sequence_is_no_window(rng, causal):
    q, k, v = np_inputs(rng, 1, 70, 90, 2, 1, 32, np.float16)
    a, la = cpu_run(q, k, v, causal=causal)
    for window in [(90, 70), (1024, 1024), (89, -1), (-1, 69)]:
        b, lb = cpu_run(q, k, v, causal=causal, window=window)
        assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes(), window


def test_cpu_huge_softcap_is_almost_no_softcap(rng):
    q, k, v = np_inputs(rng, 1, 64, 64, 2, 2, 32, np.float32)
    a, la = cpu_run(q, k, v, causal=True)
    b, lb = cpu_run(q, k, v, causal=True, softcap=1e6)
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lb, la, rtol=1e-5, atol=1e-5)


def test_cpu_window_0_0_on_square_is_the_diagonal_value(rng):
    """window (0, 0) with Sq == Sk: each query sees only its own key, so out = v[i]."""
    q, k, v = np_inputs(rng, 1, 50, 50, 2, 2, 16, np.float32)
    out, lse = cpu_run(q, k, v, window=(0, 0))
    np.testing.assert_allclose(out, v, rtol=1e-6, atol=1e-6)


def test_cpu_deterministic_bitwise(rng):
    q, k, v = np_inputs(rng, 2, 120, 150, 4, 2, 64, np.float16, q_scale=5.0)
    sinks = np.array([0.1, -2.0, 1.0, 4.0], np.float32)
    a, la = cpu_run(q, k, v, True, (31, 0), 30.0, sinks)
    b, lb = cpu_run(q, k, v, True, (31, 0), 30.0, sinks)
    assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()


def test_cpu_zero_scale_with_softcap_is_the_mean(rng):
    """softmax_scale 0 with a softcap: every logit is c * tanh(0) = 0, so out is the mean of the
    visible values (the softcap must not fall back to the raw q . k)."""
    q, k, v = np_inputs(rng, 1, 4, 6, 1, 1, 8, np.float32)
    out, _ = cpu_run(q, k, v, softcap=5.0, softmax_scale=0.0)
    np.testing.assert_allclose(out[0, :, 0], np.broadcast_to(v[0, :, 0].mean(0), (4, 8)),
                               rtol=1e-6, atol=1e-7)


# ---- bad arguments: refused before anything is written -------------------------------------------


@pytest.mark.parametrize("window", [(-2, 0), (0, -2), (1,), (1, 2, 3), "ab", 5, (1.5, 2), None],
                         ids=repr)
def test_bad_window_size_is_refused(rng, window):
    q, k, v = np_inputs(rng, 1, 8, 8, 1, 1, 16, np.float32)
    out = np.full(q.shape, 7.0, np.float32)
    with pytest.raises((TypeError, ValueError), match="window_size"):
        fa.attention(q, k, v, window_size=window, out=out, device="cpu")
    assert np.all(out == 7.0)


@pytest.mark.parametrize("softcap", [-1.0, float("nan"), float("inf"), -0.5])
def test_bad_softcap_is_refused(rng, softcap):
    q, k, v = np_inputs(rng, 1, 8, 8, 1, 1, 16, np.float32)
    out = np.full(q.shape, 7.0, np.float32)
    with pytest.raises((TypeError, ValueError), match="softcap"):
        fa.attention(q, k, v, softcap=softcap, out=out, device="cpu")
    assert np.all(out == 7.0)


@pytest.mark.parametrize("sinks", [np.zeros(3, np.float32), np.zeros(2, np.float64),
                                   np.zeros((2, 1), np.float32), np.zeros(2, np.float16)],
                         ids=["length3", "float64", "2d", "float16"])
def test_bad_sinks_are_refused(rng, sinks):
    q, k, v = np_inputs(rng, 1, 8, 8, 2, 1, 16, np.float32)
    out = np.full(q.shape, 7.0, np.float32)
    with pytest.raises((TypeError, ValueError), match="sinks"):
        fa.attention(q, k, v, sinks=sinks, out=out, device="cpu")
    assert np.all(out == 7.0)


# ================================================================================================
# Launch names for nominal devices (no GPU)
# ================================================================================================


def built(family):
    return bool(fa.build_info()["families"].get(family))


NAME_CASES = [
    # seqlen_q, seqlen_k, causal, window, softcap, sinks
    (1000, 1000, False, (-1, -1), 0.0, False),
    (1000, 1000, True, (-1, -1), 0.0, False),
    (1000, 1000, False, (128, 128), 0.0, False),
    (1000, 1000, True, (128, -1), 0.0, False),
    (1000, 1000, True, (128, 7), 0.0, False),        # causal overrides the right side
    (1000, 1000, False, (-1, 0), 0.0, False),        # the causal mask spelled as a window
    (1000, 1000, False, (0, -1), 0.0, False),
    (1000, 1000, False, (1000, 1000), 0.0, False),   # wider than the sequence: full instance
    (1000, 1000, False, (999, 999), 0.0, False),     # mask.h keeps left = len_k - 1: window
    (1000, 1000, True, (1000, -1), 0.0, False),      # wider than the sequence: causal instance
    (500, 2000, False, (1024, 600), 0.0, False),     # right >= seqlen_q: only the left bound
    (500, 2000, False, (2048, 600), 0.0, False),     # both wider: full
    (1000, 1000, False, (-1, -1), 30.0, False),
    (1000, 1000, True, (-1, -1), 0.0, True),
    (1000, 1000, True, (255, 0), 50.0, True),
    (1000, 1000, False, (17, 17), 5.0, False),
    (1000, 1000, False, (-1, -1), 0.0, True),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head_dim", [64, 128, 256, 40])
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("case", NAME_CASES, ids=lambda c: "%dx%d-%s%s-cap%g%s" % (
    c[0], c[1], window_id(c[3]), "-causal" if c[2] else "", c[4], "-sinks" if c[5] else ""))
def test_launch_config_names_the_instance(family, head_dim, dtype, case):
    if not built(family):
        pytest.skip("family %s is not in this build" % family)
    sq, sk, causal, window, softcap, sinks = case
    cfg = fa.launch_config(batch=2, seqlen_q=sq, seqlen_k=sk, heads_q=8, heads_kv=2,
                           head_dim=head_dim, dtype=dtype, causal=causal, window_size=window,
                           softcap=softcap, sinks=sinks, arch=(9, 0), kernel=family)
    assert cfg["family"] == family and cfg["block"] == (384, 1, 1)
    assert cfg["kernel"] == expected_kernel(family, cfg["head_dim_padded"], dtype, sq, sk, causal,
                                            window, softcap, sinks)
