"""Float64 references and the correctness rule shared by the tests (DESIGN.md section 6).

Rule (FlashAttention-3's): with ref the float64 attention of the same quantized inputs and peer
the same maths done naively at the input precision,
    max|ours - ref| <= 2 * max|peer - ref| + 2 * max|(ref32 + 0.3 - 0.3) - ref32|
(the last term is the rounding noise of one float32 add at the output's magnitude). LSE within
1e-3 of the reference where finite; -inf exactly where the reference has -inf. No NaN.
"""
import numpy as np

LSE_ATOL = 1e-3


def visible_mask(seqlen_q, seqlen_k, causal, window=(-1, -1)):
    """(Sq, Sk) bool: key j is visible to query i. The NumPy spelling of csrc/common/mask.h.

    Rows and keys are aligned bottom-right (FlashAttention >= 2.1): with d = Sk - Sq, query i
    sees key j when  i + d - left <= j <= i + d + right  (and 0 <= j < Sk), where
    window = (left, right) and -1 is unbounded on that side; causal sets right = 0.
    """
    left, right = (int(window[0]), int(window[1]))
    if causal:
        right = 0
    i = np.arange(seqlen_q, dtype=np.int64)[:, None]
    j = np.arange(seqlen_k, dtype=np.int64)[None, :]
    diag = i + (seqlen_k - seqlen_q)
    visible = np.ones((seqlen_q, seqlen_k), dtype=bool)
    if right >= 0:
        visible &= j <= diag + right
    if left >= 0:
        visible &= j >= diag - left
    return visible


def attention_numpy(q, k, v, causal=False, softmax_scale=None, dtype=np.float64, *,
                    window=(-1, -1), softcap=0.0, sinks=None):
    """Naive attention computed in `dtype`: returns out (B, Sq, Hq, D) and lse (B, Hq, Sq).

    dtype=float64 gives the reference; dtype=q.dtype gives the peer at the input precision.
    window=(left, right): the sliding window of visible_mask. softcap c > 0: each scaled score
    x becomes c * tanh(x / c) before the mask. sinks: one logit per q head added to each row's
    softmax denominator (and to lse) with no value row. Rows that see no key give out 0 and
    lse -inf, or lse = sinks[h] with sinks.
    """
    B, Sq, Hq, D = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    scale = dtype(1.0 / np.sqrt(D) if softmax_scale is None else softmax_scale)
    q = q.astype(dtype)
    k = np.repeat(k.astype(dtype), Hq // Hk, axis=2)
    v = np.repeat(v.astype(dtype), Hq // Hk, axis=2)
    scores = np.einsum("bihd,bjhd->bhij", q, k).astype(dtype) * scale
    if softcap and softcap > 0:
        cap = dtype(softcap)
        scores = (cap * np.tanh(scores / cap)).astype(dtype)
    mask = visible_mask(Sq, Sk, causal, window)
    scores = np.where(mask, scores, dtype(-np.inf))
    row_max = scores.max(axis=-1, keepdims=True) if Sk else np.full((B, Hq, Sq, 1), -np.inf, dtype)
    empty = ~np.isfinite(row_max)
    if sinks is not None:
        sink = np.asarray(sinks, dtype=np.float32).astype(dtype).reshape(1, Hq, 1, 1)
        top = np.where(empty, sink, np.maximum(row_max, sink)).astype(dtype)
        p = np.exp(scores - top).astype(dtype)
        row_sum = (p.sum(axis=-1, keepdims=True) + np.exp(sink - top)).astype(dtype)
        probs = (p / row_sum).astype(dtype)
        lse = (top + np.log(row_sum))[..., 0]
        out = np.einsum("bhij,bjhd->bihd", probs, v).astype(dtype)
        return out, lse
    safe_max = np.where(empty, dtype(0), row_max)
    p = np.exp(scores - safe_max).astype(dtype)
    row_sum = p.sum(axis=-1, keepdims=True).astype(dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        probs = np.where(empty, dtype(0), p / np.where(empty, dtype(1), row_sum)).astype(dtype)
        lse = np.where(empty, -np.inf, safe_max + np.log(np.where(empty, 1, row_sum)))[..., 0]
    out = np.einsum("bhij,bjhd->bihd", probs, v).astype(dtype)
    return out, lse


def tolerance(ref, peer):
    """The FA3 bound on max|ours - ref| given the float64 reference and the low-precision peer."""
    ref = np.asarray(ref, dtype=np.float64)
    peer_err = float(np.max(np.abs(np.asarray(peer, dtype=np.float64) - ref))) if ref.size else 0.0
    ref32 = ref.astype(np.float32)
    noise = float(np.max(np.abs((ref32 + np.float32(0.3) - np.float32(0.3)) - ref32))) if ref.size else 0.0
    return 2.0 * peer_err + 2.0 * noise


def check_against_reference(out, lse, ref_out, ref_lse, peer_out):
    """Asserts the DESIGN.md 6 rule; returns (max error, tolerance) for reporting."""
    out = np.asarray(out, dtype=np.float64)
    assert not np.isnan(out).any(), "output has NaN"
    err = float(np.max(np.abs(out - ref_out))) if out.size else 0.0
    tol = tolerance(ref_out, peer_out)
    assert err <= tol, f"max |ours - ref| = {err:.3e} exceeds the FA3 tolerance {tol:.3e}"
    if lse is not None:
        lse = np.asarray(lse, dtype=np.float64)
        ref_inf = np.isneginf(ref_lse)
        assert np.array_equal(np.isneginf(lse), ref_inf), "lse is -inf on different rows than the reference"
        assert not np.isnan(lse).any(), "lse has NaN"
        if (~ref_inf).any():
            lse_err = float(np.max(np.abs(lse[~ref_inf] - ref_lse[~ref_inf])))
            assert lse_err <= LSE_ATOL, f"max |lse - ref| = {lse_err:.3e} > {LSE_ATOL}"
    return err, tol
