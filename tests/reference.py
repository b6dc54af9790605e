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


def as_float64(*xs):
    """xs (None stays None) in float64 where they can be compared: torch tensors on their own
    device when all of them are torch tensors (the GPU tests check on the GPU), else NumPy
    arrays. So the rule below is written once for both."""
    if all(x is None or hasattr(x, "detach") for x in xs):
        return [None if x is None else x.detach().double() for x in xs]
    return [None if x is None else
            x.detach().double().cpu().numpy() if hasattr(x, "detach") else
            np.asarray(x, dtype=np.float64) for x in xs]


def _max_abs(x):
    size = x.numel() if hasattr(x, "numel") else x.size
    return float(abs(x).max()) if size else 0.0


def tolerance(ref, peer):
    """The FA3 bound on max|ours - ref| given the float64 reference and the low-precision peer."""
    ref, peer = as_float64(ref, peer)
    if hasattr(ref, "float"):
        ref32, c = ref.float(), 0.3  # a Python float keeps a float32 tensor float32
    else:
        ref32, c = ref.astype(np.float32), np.float32(0.3)
    return 2.0 * _max_abs(peer - ref) + 2.0 * _max_abs((ref32 + c - c) - ref32)


def check_against_reference(out, lse, ref_out, ref_lse, peer_out, label=""):
    """Asserts the DESIGN.md 6 rule (on arrays or torch tensors; lse None: out alone); returns
    (max error, tolerance) for reporting. label: what ran, for the messages."""
    at = f" ({label})" if label else ""
    out, ref_out, peer_out = as_float64(out, ref_out, peer_out)
    assert not (out != out).any(), f"output has NaN (unwritten or computed){at}"
    err = _max_abs(out - ref_out)
    tol = tolerance(ref_out, peer_out)
    assert err <= tol, f"max |ours - ref| = {err:.3e} exceeds the FA3 tolerance {tol:.3e}{at}"
    if lse is not None:
        lse, ref_lse = as_float64(lse, ref_lse)
        assert tuple(lse.shape) == tuple(ref_lse.shape), \
            f"lse has shape {tuple(lse.shape)}, the reference {tuple(ref_lse.shape)}{at}"
        ref_inf = ref_lse == -np.inf
        assert bool(((lse == -np.inf) == ref_inf).all()), \
            f"lse is -inf on different rows than the reference{at}"
        assert not (lse != lse).any(), f"lse has NaN{at}"
        if (~ref_inf).any():
            lse_err = _max_abs(lse[~ref_inf] - ref_lse[~ref_inf])
            assert lse_err <= LSE_ATOL, f"max |lse - ref| = {lse_err:.3e} > {LSE_ATOL}{at}"
    return err, tol


# ---- the mask rule's consequences the tests assert --------------------------------------------

# lse of a row that sees no key, with a sink: the sink's logit, up to the base-2 round trip of
# the kernels' finalisation (z * log2(e) * ln 2 in float32: a few ulps).
SINK_LSE_RTOL, SINK_LSE_ATOL = 4e-7, 2e-6


def normalized_window(seqlen_q, seqlen_k, causal, window):
    """(left, right) as csrc/common/mask.h's fa_mask_make normalises them: causal sets right 0;
    a side that hides nothing for these lengths becomes -1 (empty lengths count as 1)."""
    sq, sk = max(seqlen_q, 1), max(seqlen_k, 1)
    left, right = int(window[0]), int(window[1])
    if causal:
        right = 0
    left = -1 if (left < 0 or left >= sk) else left
    right = -1 if (right < 0 or right >= sq) else right
    return left, right


def expected_kernel(family, head_dim_padded, dtype, seqlen_q, seqlen_k, causal, window,
                    softcap=0.0, sinks=False):
    """fwd_<family>_hd<D>_<dtype>[_causal|_window][_softcap][_sinks]; a window that hides
    nothing for the lengths names the full or causal instance."""
    left, right = normalized_window(seqlen_q, seqlen_k, causal, window)
    if left < 0 and right < 0:
        mask = ""
    elif left < 0 and right == 0:
        mask = "_causal"
    else:
        mask = "_window"
    short = {"float16": "fp16", "bfloat16": "bf16"}[dtype]
    return "fwd_%s_hd%d_%s%s%s%s" % (family, head_dim_padded, short, mask,
                                     "_softcap" if softcap > 0 else "", "_sinks" if sinks else "")


def assert_empty_rows(out, lse, visible, sinks):
    """Rows that see no key: out exactly 0, lse -inf (no sinks) or sinks[h]. out (B, Sq, H, D),
    lse (B, H, Sq) as numpy; visible (Sq, Sk)."""
    empty = ~visible.any(axis=1) if visible.shape[1] else np.ones(visible.shape[0], bool)
    if not empty.any():
        return 0
    assert np.all(out[:, empty] == 0), "a row that sees no key has a nonzero output"
    rows = lse[:, :, empty]
    if sinks is None:
        assert np.all(np.isneginf(rows)), "a row that sees no key has lse != -inf"
    else:
        expect = np.broadcast_to(np.asarray(sinks, np.float64)[None, :, None], rows.shape)
        np.testing.assert_allclose(rows, expect, rtol=SINK_LSE_RTOL, atol=SINK_LSE_ATOL,
                                   err_msg="lse of a row that sees no key must be sinks[h]")
    return int(empty.sum())


# The variant matrix of the mask tests (issue 13): window sides, softcaps and how a case names
# its window. Shared by the host-path and the GPU tests.
WINDOW_SIDES = [0, 1, 17, 128, 255, 1024, -1]
SOFTCAPS = [5.0, 30.0, 50.0]


def window_id(w):
    return "w%d,%d" % tuple(w)


# ---- backward -----------------------------------------------------------------------------------

def attention_probs_numpy(q, k, v, causal=False, softmax_scale=None, dtype=np.float64, *,
                          window=(-1, -1), softcap=0.0, sinks=None):
    """The probabilities of attention_numpy, naively in `dtype`: (probs (B, Hq, Sq, Sk), t (the
    tanh of a softcap, or None), denom and e_sink (the row sums and the sink's term, or None))."""
    B, Sq, Hq, D = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    G = Hq // Hk
    scale = dtype(1.0 / np.sqrt(D) if softmax_scale is None else softmax_scale)
    kd = np.repeat(k.astype(dtype), G, axis=2)
    x = (np.einsum("bihd,bjhd->bhij", q.astype(dtype), kd) * scale).astype(dtype)
    if softcap and softcap > 0:
        t = np.tanh(x / dtype(softcap)).astype(dtype)
        logits = (dtype(softcap) * t).astype(dtype)
    else:
        t, logits = None, x
    mask = visible_mask(Sq, Sk, causal, window)
    logits = np.where(mask, logits, dtype(-np.inf))
    top = logits.max(axis=-1, keepdims=True) if Sk else np.full((B, Hq, Sq, 1), -np.inf, dtype)
    e_sink = None
    if sinks is not None:
        sink = np.asarray(sinks, np.float32).astype(dtype).reshape(1, Hq, 1, 1)
        top = np.maximum(top, sink)
    safe = np.where(np.isfinite(top), top, dtype(0))
    e = np.exp(logits - safe).astype(dtype)
    denom = e.sum(axis=-1, keepdims=True)
    if sinks is not None:
        e_sink = np.exp(sink - safe).astype(dtype)
        denom = denom + e_sink
    with np.errstate(divide="ignore", invalid="ignore"):
        probs = np.where(denom > 0, e / np.where(denom > 0, denom, 1), dtype(0)).astype(dtype)
    return probs, t, denom, e_sink


def attention_grads_numpy(q, k, v, dout, causal=False, softmax_scale=None, dtype=np.float64, *,
                          window=(-1, -1), softcap=0.0, sinks=None):
    """The gradients of attention_numpy's out with respect to q, k, v (and sinks), given dout,
    computed naively in `dtype` from the inputs alone: (dq, dk, dv, dsinks or None).

    With P the probabilities, t = tanh(x / c) for a softcap c (x the scaled score) and
    D = rowsum(dout * out):  dS = P (dout v^T - D) (1 - t^2),  dq = scale dS k,
    dk = scale dS^T q and dv = P^T dout summed over the q heads of a kv head,
    dsinks[h] = -sum over batch and rows of P_sink D. float64 gives the reference; the input
    dtype the peer."""
    B, Sq, Hq, D = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    G = Hq // Hk
    scale = dtype(1.0 / np.sqrt(D) if softmax_scale is None else softmax_scale)
    qd, dod = q.astype(dtype), dout.astype(dtype)
    kd = np.repeat(k.astype(dtype), G, axis=2)
    vd = np.repeat(v.astype(dtype), G, axis=2)
    probs, t, denom, e_sink = attention_probs_numpy(q, k, v, causal, softmax_scale, dtype,
                                                    window=window, softcap=softcap, sinks=sinks)
    out = np.einsum("bhij,bjhd->bihd", probs, vd).astype(dtype)
    delta = np.einsum("bihd,bihd->bhi", dod, out).astype(dtype)
    dp = np.einsum("bihd,bjhd->bhij", dod, vd).astype(dtype)
    ds = (probs * (dp - delta[..., None])).astype(dtype)
    if t is not None:
        ds = (ds * (1 - t * t)).astype(dtype)
    dq = (np.einsum("bhij,bjhd->bihd", ds, kd) * scale).astype(dtype)
    dk_h = (np.einsum("bhij,bihd->bjhd", ds, qd) * scale).astype(dtype)
    dv_h = np.einsum("bhij,bihd->bjhd", probs, dod).astype(dtype)
    dk = dk_h.reshape(B, Sk, Hk, G, D).sum(axis=3).astype(dtype)
    dv = dv_h.reshape(B, Sk, Hk, G, D).sum(axis=3).astype(dtype)
    dsinks = None
    if sinks is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            p_sink = np.where(denom > 0, e_sink / np.where(denom > 0, denom, 1), 0)[..., 0]
        dsinks = -(p_sink * delta).sum(axis=(0, 2)).astype(dtype)
    return dq, dk, dv, dsinks


def rounding_slack(q, k, v, dout, to_input, causal=False, softmax_scale=None, *,
                   window=(-1, -1), softcap=0.0, sinks=None):
    """What a backward's own roundings move dq and dk by, beyond what the peer's errors bound:
    {"dq": .., "dk": ..}, added to their tolerances.

    A backward forms D_i = dout_i . out_i from out as the forward stored it (to_input: an array
    at that precision, e.g. rounded to float16), and D_i and dP_ij = dout_i . v_j as float32
    sums. dS_ij = P_ij (dP_ij - D_i) (times 1 - t^2 <= 1 with softcap) then moves by
      P_ij (|dout_i . (to_input(out_i) - out_i)| + 2^-23 sum_d |dout_id out_id|)   (D: shared by
                                                                     the row's keys)
      P_ij 2^-23 sum_d |dout_id v_jd|                                (dP: its own per key)
    taken as about two float32 ulps of each sum's magnitude. dq_i = scale sum_j dS_ij k_j adds
    them linearly (D_i's error is the same for every key); dk_j = scale sum_i dS_ij q_i adds
    them in quadrature, as the rows round independently (and sums over the q heads of its kv
    head).
    Where one key dominates the rows, the peer's errors can be nearly zero while the kernel's
    are not (239 rows, one key: dk 1.04e-5 against a tolerance of 1.0e-5 on the H200)."""
    B, Sq, Hq, D = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    G = Hq // Hk
    scale = 1.0 / np.sqrt(D) if softmax_scale is None else softmax_scale
    probs, _, _, _ = attention_probs_numpy(q, k, v, causal, softmax_scale, np.float64,
                                           window=window, softcap=softcap, sinks=sinks)
    vv = np.repeat(v.astype(np.float64), G, axis=2)
    kk = np.abs(np.repeat(k.astype(np.float64), G, axis=2))
    out = np.einsum("bhij,bjhd->bihd", probs, vv)
    do = dout.astype(np.float64)
    moved = np.abs((do * (to_input(out) - out)).sum(-1)) + 2.0 ** -23 * np.abs(do * out).sum(-1)
    ds_moved = probs * (moved.transpose(0, 2, 1)[..., None]                 # (b, h, i, j)
                        + 2.0 ** -23 * np.einsum("bihd,bjhd->bhij", np.abs(do), np.abs(vv)))
    qa = np.abs(q.astype(np.float64))
    dq = scale * np.einsum("bhij,bjhd->bihd", ds_moved, kk)
    dk = scale * np.sqrt(np.einsum("bhij,bihd->bjhd", ds_moved ** 2, qa ** 2))
    dk = dk.reshape(B, Sk, Hk, G, D).sum(axis=3)
    return {"dq": float(dq.max()) if dq.size else 0.0, "dk": float(dk.max()) if dk.size else 0.0}


# The gradients' absolute floor. Where a gradient is exactly zero in both the reference and the
# peer (a row that sees one key: P = 1 and dP - D = 0 exactly), the FA3 bound is 0, but a kernel
# forms D = dout . out and dP = dout . v as separate float32 sums of head_dim unit-scale terms,
# so dS keeps their rounding: a few 1e-6 at head_dim 256 (measured on the H200: at most 5.1e-6).
GRAD_ATOL = 1e-5


def check_grads(grads, ref, peer, names=("dq", "dk", "dv", "dsinks"), slack=None, label=""):
    """The FA3 rule on each gradient (arrays or torch tensors) against the float64 reference
    and the low-precision peer, plus GRAD_ATOL and slack.get(name) (rounding_slack, for a
    kernel); returns {name: (error, tolerance)}. label: what ran, for the messages."""
    at = f" ({label})" if label else ""
    report = {}
    for name, ours, r, pe in zip(names, grads, ref, peer):
        if r is None:
            continue
        ours, r, pe = as_float64(ours, r, pe)
        assert not (ours != ours).any(), f"{name} has NaN{at}"
        err = _max_abs(ours - r)
        tol = tolerance(r, pe) + GRAD_ATOL + (slack or {}).get(name, 0.0)
        assert err <= tol, \
            f"{name}: max |ours - ref| = {err:.3e} exceeds the FA3 tolerance {tol:.3e}{at}"
        report[name] = (err, tol)
    return report


# ---- packed batches and KV caches: per-entry slices of attention_numpy --------------------------

def attention_varlen_numpy(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=False, softmax_scale=None,
                           dtype=np.float64, *, window=(-1, -1), softcap=0.0, sinks=None):
    """attention_numpy on each entry of a packed batch: entry b is rows cu_seqlens_q[b] ..
    cu_seqlens_q[b + 1] - 1 of q (total_q, Hq, D) against rows cu_seqlens_k[b] .. of k and v
    (total_k, Hk, D), with the mask aligned bottom-right on the entry's own lengths. Returns out
    (total_q, Hq, D) and lse (Hq, total_q), FlashAttention's varlen layout."""
    total_q, Hq, D = q.shape
    scale = 1.0 / np.sqrt(D) if softmax_scale is None else softmax_scale
    out = np.zeros((total_q, Hq, D), dtype)
    lse = np.full((Hq, total_q), -np.inf, np.float64)
    for b in range(len(cu_seqlens_q) - 1):
        q0, q1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        k0, k1 = int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1])
        if q1 == q0:
            continue
        o, l = attention_numpy(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], causal, scale,
                               dtype, window=window, softcap=softcap, sinks=sinks)
        out[q0:q1] = o[0]
        lse[:, q0:q1] = l[0]
    return out, lse


def attention_varlen_grads_numpy(q, k, v, dout, cu_seqlens_q, cu_seqlens_k, causal=False,
                                 softmax_scale=None, dtype=np.float64, *, window=(-1, -1),
                                 softcap=0.0, sinks=None):
    """attention_grads_numpy on each entry of a packed batch: (dq, dk, dv, dsinks or None), dq
    shaped like q, dk and dv like k and v (keys no entry owns get 0)."""
    D = q.shape[2]
    scale = 1.0 / np.sqrt(D) if softmax_scale is None else softmax_scale
    dq = np.zeros(q.shape, dtype)
    dk, dv = np.zeros(k.shape, dtype), np.zeros(v.shape, dtype)
    dsinks = None if sinks is None else np.zeros(q.shape[1], dtype)
    for b in range(len(cu_seqlens_q) - 1):
        q0, q1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        k0, k1 = int(cu_seqlens_k[b]), int(cu_seqlens_k[b + 1])
        g = attention_grads_numpy(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1],
                                  dout[None, q0:q1], causal, scale, dtype, window=window,
                                  softcap=softcap, sinks=sinks)
        dq[q0:q1], dk[k0:k1], dv[k0:k1] = g[0][0], g[1][0], g[2][0]
        if sinks is not None:
            dsinks = (dsinks + g[3]).astype(dtype)
    return dq, dk, dv, dsinks


def kvcache_numpy(q, k_cache, v_cache, cache_seqlens, k=None, v=None, *, cache_batch_idx=None,
                  block_table=None, causal=False, softmax_scale=None, dtype=np.float64,
                  window=(-1, -1), softcap=0.0, sinks=None):
    """flash_attn_with_kvcache in NumPy: the new k, v (B, S_new, Hk, D) written into copies of
    the caches at rows cache_seqlens[b] .., then attention_numpy of each entry's q over its first
    cache_seqlens[b] + S_new keys. Dense caches (B_cache, S_max, Hk, D), entry b reading cache
    entry cache_batch_idx[b] (or b); paged caches (num_pages, page_size, Hk, D) with key j of
    entry b in row j % page_size of page block_table[b, j // page_size].

    Returns (out (B, Sq, Hq, D), lse (B, Hq, Sq), k_cache after, v_cache after)."""
    B, Sq, Hq, D = q.shape
    k_after, v_after = k_cache.copy(), v_cache.copy()
    lens = np.broadcast_to(np.asarray(cache_seqlens, np.int64), (B,))
    new = 0 if k is None else k.shape[1]

    def rows(b, j):  # (entry or page index, row) of key positions j of entry b
        if block_table is not None:
            page_size = k_cache.shape[1]
            return np.asarray(block_table)[b, j // page_size], j % page_size
        entry = b if cache_batch_idx is None else int(cache_batch_idx[b])
        return np.full_like(j, entry), j

    for b in range(B):
        where = rows(b, lens[b] + np.arange(new))
        if new:
            k_after[where] = k[b]
            v_after[where] = v[b]
    out = np.zeros((B, Sq, Hq, D), dtype)
    lse = np.zeros((B, Hq, Sq), np.float64)
    for b in range(B):
        where = rows(b, np.arange(lens[b] + new))
        o, l = attention_numpy(q[b:b + 1], k_after[where][None], v_after[where][None], causal,
                               softmax_scale, dtype, window=window, softcap=softcap, sinks=sinks)
        out[b], lse[b] = o[0], l[0]
    return out, lse, k_after, v_after
