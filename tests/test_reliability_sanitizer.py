"""The small-shape GPU subset run under compute-sanitizer (marker `sanitizer`; tools/sanitize.sh
runs it under memcheck, racecheck, synccheck and initcheck).

Both kernel families, float16 and bfloat16, causal and not, ragged seqlens (1, 17, 129, 239),
GQA and MQA, padded head_dims (8, 40, 72), head_dim 256, seqlen_k 0, an SDPA-layout (strided)
input, outputs both as fresh DeviceArrays and through out=. The inputs are made on the host and
copied in, and the check runs on the host (NumPy float64 reference, FA3 rule): the only kernels
launched are ours, so a sanitizer report points at them. Every buffer is exactly its size when
run as tools/sanitize.sh does (PYTORCH_NO_CUDA_MEMORY_CACHING=1 for torch, FLASHATTN_C_EXACT_ALLOC=1
for DeviceArrays), so a read or write past the end is an error memcheck can see; initcheck sees
an output element the kernel never wrote when it is copied back (sm80; it does not record the
sm90 family's TMA stores, see tools/tma_store_initcheck.cu), and the NaN-filled out= buffers
show one in the values, for both families.

Also an ordinary GPU test (each case takes milliseconds without a sanitizer); skipped with a
reason where there is no GPU.

    tools/sanitize.sh                                       # all four tools
    python -m pytest -q -m sanitizer tests                  # the subset, no sanitizer
"""
import os

import numpy as np
import pytest

import flashattn_c as fa
from flashattn_c import _C
from conftest import gpu_unavailable_reason
from test_reliability_support import check_host_result, round_to_bf16

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.sanitizer,
    pytest.mark.skipif(gpu_unavailable_reason() is not None, reason=str(gpu_unavailable_reason())),
]

# batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype, causal, layout, output
CASES = [
    (2, 17, 17, 2, 2, 64, "float16", False, "compact", "out"),
    (1, 129, 129, 2, 1, 128, "bfloat16", True, "compact", "alloc"),
    (1, 239, 1, 2, 2, 64, "float16", True, "compact", "alloc"),      # rows with no key
    (1, 1, 239, 4, 2, 256, "bfloat16", False, "compact", "out"),
    (2, 129, 239, 6, 2, 128, "float16", True, "sdpa", "alloc"),      # GQA 6:2, strided q/k/v
    (1, 17, 129, 2, 2, 40, "bfloat16", False, "compact", "out"),     # head_dim padded to 64
    (1, 33, 0, 2, 2, 64, "float16", True, "compact", "alloc"),       # seqlen_k 0
    (1, 1, 1, 1, 1, 8, "bfloat16", True, "compact", "out"),          # head_dim 8
    (1, 239, 17, 8, 1, 72, "bfloat16", True, "compact", "alloc"),    # MQA 8:1, head_dim 72
    (1, 200, 300, 2, 2, 256, "float16", False, "compact", "out"),    # several tiles of 256
    (1, 300, 300, 2, 2, 256, "bfloat16", True, "compact", "alloc"),  # causal 256, short-key blocks
    (1, 130, 2100, 1, 1, 256, "float16", True, "compact", "out"),    # causal 256, long-key blocks
    (1, 130, 70, 140, 140, 256, "bfloat16", True, "compact", "out"),    # 280 tiles: tiles in
    (1, 130, 70, 140, 140, 256, "float16", False, "compact", "alloc"),   # pairs, O handed over
]


def case_id(c):
    return (f"b{c[0]}_q{c[1]}_k{c[2]}_h{c[3]}:{c[4]}_d{c[5]}_{c[6][:4]}"
            f"{'_causal' if c[7] else ''}_{c[8]}_{c[9]}")


def exact_values(rng, shape, dtype):
    x = rng.standard_normal(shape).astype(np.float32)
    return round_to_bf16(x) if dtype == "bfloat16" else x.astype(np.float16).astype(np.float32)


def to_device(torch, values, dtype, layout):
    """A device tensor holding exactly `values`, made by host conversion and one copy (no kernel
    launch): the SDPA layout is a (B, H, S, D) buffer seen transposed."""
    host = torch.from_numpy(values)
    if layout == "sdpa":
        host = host.transpose(1, 2).contiguous()
    device = host.to(getattr(torch, dtype)).cuda()
    return device.transpose(1, 2) if layout == "sdpa" else device


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("family", ["sm80", "sm90"])
def test_small_shapes(rng, family, case):
    import torch

    from test_cuda_attention import require_family

    require_family(family)
    B, Sq, Sk, Hq, Hkv, D, dtype, causal, layout, output = case
    q = exact_values(rng, (B, Sq, Hq, D), dtype)
    k = exact_values(rng, (B, Sk, Hkv, D), dtype)
    v = exact_values(rng, (B, Sk, Hkv, D), dtype)
    dq, dk, dv = (to_device(torch, a, dtype, layout) for a in (q, k, v))
    out = None
    if output == "out":
        out = torch.from_numpy(np.full(q.shape, np.nan, np.float32)).to(getattr(torch, dtype))
        out = out.cuda()
    kernel = {"sm80": _C.KERNEL_SM80, "sm90": _C.KERNEL_SM90}[family]
    stream = torch.cuda.current_stream().cuda_stream
    if output == "alloc":
        arrays = _C.forward(dq, dk, dv, causal=causal, return_lse=True, stream=stream,
                            kernel=kernel)
        exact = os.environ.get("FLASHATTN_C_EXACT_ALLOC") == "1"
        for array in arrays:
            assert array.allocator == ("cudaMalloc" if exact else "cudaMallocFromPoolAsync")
        got, lse = (torch.from_dlpack(a) for a in arrays)
    else:
        got, lse = _C.forward(dq, dk, dv, out, causal=causal, return_lse=True, stream=stream,
                              kernel=kernel)
        assert got is out
        lse = torch.from_dlpack(lse)
    torch.cuda.synchronize()
    launch = fa.last_launch()
    assert launch["family"] == family and launch["block"] == (384, 1, 1)
    values = got.cpu().float().numpy()
    lse_host = lse.cpu().numpy()
    check_host_result(values, lse_host, q, k, v, causal, None, dtype)


# The backward: preprocess, main kernel and postprocess on small float16 shapes (the NumPy peer
# works at float16), gradients into NaN-filled buffers, every workspace an exact allocation
# under tools/sanitize.sh (FLASHATTN_C_EXACT_ALLOC=1).
# batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, causal, window, sinks, deterministic
BACKWARD_CASES = [
    (2, 17, 17, 2, 2, 64, False, (-1, -1), False, False),
    (1, 129, 129, 2, 1, 128, True, (-1, -1), False, True),    # GQA, deterministic turns
    (1, 239, 1, 2, 2, 64, True, (-1, -1), True, False),       # rows with no key, sinks
    (1, 1, 239, 4, 2, 256, False, (-1, -1), False, False),
    (1, 130, 200, 6, 2, 40, False, (17, 3), True, True),      # padded head_dim, window
    (1, 33, 0, 2, 2, 64, True, (-1, -1), False, False),       # seqlen_k 0: dq = 0
]


def backward_case_id(c):
    return (f"b{c[0]}_q{c[1]}_k{c[2]}_h{c[3]}:{c[4]}_d{c[5]}{'_causal' if c[6] else ''}"
            f"_w{c[7][0]},{c[7][1]}{'_sinks' if c[8] else ''}{'_det' if c[9] else ''}")


@pytest.mark.parametrize("case", BACKWARD_CASES, ids=backward_case_id)
@pytest.mark.parametrize("family", ["sm80", "sm90"])
def test_backward_small_shapes(rng, family, case):
    import torch
    from reference import attention_grads_numpy, check_grads, rounding_slack

    from test_cuda_attention import require_family

    B, Sq, Sk, Hq, Hkv, D, causal, window, with_sinks, det = case
    require_family(family)
    host = [exact_values(rng, s, "float16") for s in
            ((B, Sq, Hq, D), (B, Sk, Hkv, D), (B, Sk, Hkv, D), (B, Sq, Hq, D))]
    q, k, v, dout = (to_device(torch, a, "float16", "compact") for a in host)
    sinks = torch.from_numpy((rng.standard_normal(Hq) * 2).astype(np.float32)).cuda() \
        if with_sinks else None
    kw = dict(causal=causal, window_size=window, sinks=sinks)
    out, lse = fa.attention(q, k, v, return_lse=True, **kw)
    nan = lambda x: torch.from_numpy(np.full(x.shape, np.nan, np.float16)).cuda()
    grads = fa.attention_backward(dout, q, k, v, out, lse, dq=nan(q), dk=nan(k), dv=nan(v),
                                  dsinks=torch.full((Hq,), float("nan")).cuda() if with_sinks
                                  else None, deterministic=det, kernel=family, **kw)
    grads = [g.cpu().numpy() for g in grads] + ([] if with_sinks else [None])
    sinks_host = None if sinks is None else sinks.cpu().numpy()
    ref_kw = dict(window=window, sinks=sinks_host)
    ref = attention_grads_numpy(*host[:3], host[3], causal, None, np.float64, **ref_kw)
    peer = attention_grads_numpy(*(a.astype(np.float16) for a in host[:3]),
                                 host[3].astype(np.float16), causal, None, np.float16, **ref_kw)
    to_fp16 = lambda x: x.astype(np.float16).astype(np.float64)
    check_grads(grads, ref, peer, slack=rounding_slack(*host[:3], host[3], to_fp16, causal,
                                                      window=window, sinks=sinks_host))


# A packed backward: entries that end inside both families' query and key blocks, an empty
# one between them, GQA 2:1; gradients into NaN-filled buffers, checked entry by entry.
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("family", ["sm80", "sm90"])
def test_varlen_backward_small_shapes(rng, family, deterministic):
    import torch
    from reference import attention_grads_numpy, check_grads, rounding_slack

    from test_cuda_attention import require_family

    require_family(family)
    lens_q, lens_k, Hq, Hkv, D = [17, 0, 70], [40, 9, 130], 2, 1, 64
    rows = lambda lens: [slice(sum(lens[:b]), sum(lens[:b + 1])) for b in range(len(lens))]
    host = [exact_values(rng, (sum(n), h, D), "float16")
            for n, h in ((lens_q, Hq), (lens_k, Hkv), (lens_k, Hkv), (lens_q, Hq))]
    q, k, v, dout = (to_device(torch, a, "float16", "compact") for a in host)
    cu_q, cu_k = (torch.tensor(np.cumsum([0] + lens), dtype=torch.int32).cuda()
                  for lens in (lens_q, lens_k))
    out, lse = fa.attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=True,
                                   return_lse=True)
    nan = lambda x: torch.from_numpy(np.full(x.shape, np.nan, np.float16)).cuda()
    grads = fa.attention_varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, max(lens_q),
                                         max(lens_k), causal=True, dq=nan(q), dk=nan(k),
                                         dv=nan(v), deterministic=deterministic, kernel=family)
    assert fa.last_launch()["kernel"].startswith(f"bwd_{family}_")
    grads = [g.cpu().numpy() for g in grads] + [None]
    ref = [np.zeros(a.shape) for a in host[:3]] + [None]
    peer = [np.zeros(a.shape) for a in host[:3]] + [None]
    slack = {"dq": 0.0, "dk": 0.0}
    to_fp16 = lambda x: x.astype(np.float16).astype(np.float64)
    for qs, ks in zip(rows(lens_q), rows(lens_k)):
        entry = [host[0][None, qs], host[1][None, ks], host[2][None, ks], host[3][None, qs]]
        if qs.stop == qs.start or ks.stop == ks.start:
            continue  # no rows: nothing; no keys: dq = 0
        for dst, dtype in ((ref, np.float64), (peer, np.float16)):
            g = attention_grads_numpy(*(a.astype(dtype) for a in entry), True, None, dtype)
            dst[0][qs], dst[1][ks], dst[2][ks] = g[0][0], g[1][0], g[2][0]
        for name, value in rounding_slack(*entry, to_fp16, True).items():
            slack[name] = max(slack[name], value)
    check_grads(grads, ref, peer, slack=slack)
