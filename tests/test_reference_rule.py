"""The correctness rule's checker (reference.check_against_reference, check_grads) itself: it
accepts what the rule accepts and rejects what it rejects, on NumPy arrays and on torch
tensors alike (the GPU tests pass it torch tensors of the input dtype). Runs on the CPU."""
import numpy as np
import pytest

from reference import GRAD_ATOL, LSE_ATOL, check_against_reference, check_grads, tolerance


def problem(rng):
    """A float64 reference, a peer off by a known amount, and the rule's bound for them."""
    ref = rng.standard_normal((2, 9, 3, 16))
    peer = ref + 1e-3 * np.sign(rng.standard_normal(ref.shape))
    ref_lse = rng.standard_normal((2, 3, 9))
    ref_lse[0, 1, :4] = -np.inf  # rows that see no key
    return ref, peer, ref_lse, tolerance(ref, peer)


def as_torch(*arrays):
    torch = pytest.importorskip("torch")
    return [None if a is None else torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


@pytest.fixture(params=["numpy", "torch"])
def kind(request):
    if request.param == "torch":
        pytest.importorskip("torch")
    return request.param


def convert(kind, *arrays):
    return list(arrays) if kind == "numpy" else as_torch(*arrays)


def test_the_bound_is_twice_the_peer_error_plus_float32_noise(rng):
    ref, peer, _, tol = problem(rng)
    assert 2e-3 < tol < 2e-3 + 1e-6  # max|peer - ref| = 1e-3; unit-scale float32 noise ~1e-7


def test_an_output_within_the_bound_passes(rng, kind):
    ref, peer, ref_lse, tol = problem(rng)
    out = ref + 0.9 * tol
    lse = ref_lse + 0.5 * LSE_ATOL
    err, got_tol = check_against_reference(*convert(kind, out, lse, ref, ref_lse, peer))
    assert err == pytest.approx(0.9 * tol) and got_tol == pytest.approx(tol)


@pytest.mark.parametrize("fault, message", [
    ("error", "exceeds the FA3 tolerance"),
    ("nan_out", "output has NaN"),
    ("lse_off", "max |lse - ref|"),
    ("lse_inf_row", "-inf on different rows"),
    ("lse_nan", "lse has NaN"),
])
def test_each_broken_rule_fails_with_its_message(rng, kind, fault, message):
    ref, peer, ref_lse, tol = problem(rng)
    out, lse = ref.copy(), ref_lse.copy()
    if fault == "error":
        out[1, 2, 0, 5] += 1.1 * tol
    elif fault == "nan_out":
        out[0, 0, 0, 0] = np.nan
    elif fault == "lse_off":
        lse[1, 0, 3] += 2 * LSE_ATOL
    elif fault == "lse_inf_row":
        lse[0, 1, 0] = 0.0
    else:
        lse[1, 2, 8] = np.nan
    with pytest.raises(AssertionError, match=message.replace("|", r"\|") + ".*kernel_x"):
        check_against_reference(*convert(kind, out, lse, ref, ref_lse, peer), label="kernel_x")


def test_an_lse_of_another_shape_fails_even_where_every_row_is_empty(rng, kind):
    """-inf everywhere in both would compare equal under broadcasting; the shapes must agree."""
    ref, peer, _, _ = problem(rng)
    ref_lse = np.full((2, 1, 9), -np.inf)  # (batch, heads_q, seqlen_q) of one head
    lse = np.full((2, 9, 1), -np.inf)      # (batch, seqlen_q, heads_q): the wrong layout
    with pytest.raises(AssertionError, match=r"lse has shape \(2, 9, 1\), the reference \(2, 1, 9\)"):
        check_against_reference(*convert(kind, ref, lse, ref, ref_lse, peer))


def test_out_alone_is_checked_without_lse(rng, kind):
    ref, peer, _, tol = problem(rng)
    check_against_reference(*convert(kind, ref, None, ref, None, peer))
    with pytest.raises(AssertionError, match="exceeds"):
        check_against_reference(*convert(kind, ref + 2 * tol, None, ref, None, peer))


def test_gradients_get_the_floor_and_their_slack(rng, kind):
    ref, peer, _, tol = problem(rng)
    names = ("dq", "dk")
    ok = [ref + tol + 0.9 * GRAD_ATOL, ref + tol + 0.9 * GRAD_ATOL + 0.5]
    report = check_grads(convert(kind, *ok), [ref, ref], [peer, peer], names=names,
                         slack={"dk": 0.5 + 1e-9})
    assert set(report) == set(names)
    with pytest.raises(AssertionError, match=r"dk: max \|ours - ref\|.*bwd_y"):
        check_grads(convert(kind, *ok), [ref, ref], [peer, peer], names=names, label="bwd_y")


def test_a_gradient_without_a_reference_is_skipped(rng, kind):
    ref, peer, _, _ = problem(rng)
    report = check_grads(convert(kind, ref, ref * np.nan), [ref, None], [peer, None],
                         names=("dq", "dsinks"))
    assert set(report) == {"dq"}
