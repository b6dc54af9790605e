"""Property tests: random problems (shapes, GQA groups, head_dim, dtype, causal, scale, strides,
out= layouts, return_lse) against the float64 reference with FlashAttention-3's rule
(tests/reference.py), on the host path and on the GPU for both kernel families.

One strategy (tests/test_reliability_support.py draw_case) drives both: Hypothesis when it is
importable (failures shrink to a minimal case; derandomized, so CI is reproducible), else a seeded
generator over the same choices. Every output buffer starts as NaN, so an element left unwritten
fails the NaN check. Bounded: the host run stays under ~20 s, the GPU run under ~60 s.

    python -m pytest -q tests/test_reliability_properties.py
    FLASHATTN_C_PROPERTY_EXAMPLES=500 python -m pytest -q tests/test_reliability_properties.py
"""
import os

import numpy as np
import pytest

import flashattn_c as fa
from conftest import gpu_unavailable_reason
from reference import check_against_reference
from test_interop import DL_BFLOAT16, host_dlpack
from test_reliability_support import (HypothesisDraw, SeededDraw, bf16_bits, bits_to_float32,
                                      check_host_result, draw_case, round_to_bf16)

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # the seeded generator takes over
    given = None

HOST_EXAMPLES = int(os.environ.get("FLASHATTN_C_PROPERTY_EXAMPLES", "200"))
GPU_EXAMPLES = int(os.environ.get("FLASHATTN_C_PROPERTY_EXAMPLES", "80"))


def run_examples(check, examples, gpu):
    """check(case) over `examples` random cases: by Hypothesis when present (a failure is
    shrunk and its draws printed), else seeds 0 .. examples-1 of the seeded generator."""
    if given is not None:
        @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(data=st.data())
        def run(data):
            check(draw_case(HypothesisDraw(data), gpu=gpu))

        run()
        return
    for seed in range(examples):
        case = draw_case(SeededDraw(seed), gpu=gpu)
        try:
            check(case)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {case}: {exc}") from exc


# ------------------------------------------------------------------------------------------------
# Host path (everywhere)


def host_array(rng, shape, layout, dtype):
    """(exact values as float32, the array handed to flashattn_c), both views of one buffer in
    the requested layout. bfloat16 goes in as a DLPack producer over bit patterns (NumPy has no
    bfloat16)."""
    B, S, H, D = shape
    base_shape, view = {
        "compact": (shape, lambda a: a),
        "sdpa": ((B, H, S, D), lambda a: a.transpose(0, 2, 1, 3)),
        "padded": ((B, S + 3, H + 1, D + 8), lambda a: a[:, :S, :H, :D]),
        "strided_head_dim": ((B, S, H, 2 * D), lambda a: a[..., ::2]),
        "reversed_seq": (shape, lambda a: a[:, ::-1]),
    }[layout]
    values = rng.standard_normal(base_shape).astype(np.float32)
    if dtype == "bfloat16":
        values = round_to_bf16(values)
        return view(values), host_dlpack(view(bf16_bits(values)), dtype=DL_BFLOAT16)
    if dtype == "float16":
        stored = values.astype(np.float16)
        return view(stored.astype(np.float32)), view(stored)
    return view(values), view(values)


def host_out(case, shape):
    np_dtype = {"float16": np.float16, "float32": np.float32, "bfloat16": np.uint16}[case.dtype]
    if case.out_layout == "none" or case.dtype == "bfloat16":
        return None, None
    if case.out_layout == "padded":
        base = np.full(shape[:3] + (shape[3] + 8,), np.nan, np_dtype)
        return base[..., :shape[3]], base
    base = np.full(shape, np.nan, np_dtype)
    return base, base


def check_host_case(case):
    rng = np.random.default_rng(abs(hash((case.batch, case.seqlen_q, case.seqlen_k,
                                          case.head_dim))) % (1 << 32))
    q_shape = (case.batch, case.seqlen_q, case.heads_q, case.head_dim)
    kv_shape = (case.batch, case.seqlen_k, case.heads_kv, case.head_dim)
    (q, q_in), (k, k_in), (v, v_in) = (host_array(rng, s, case.layout, case.dtype)
                                       for s in (q_shape, kv_shape, kv_shape))
    out, out_base = host_out(case, q_shape)
    got = fa.attention(q_in, k_in, v_in, causal=case.causal, softmax_scale=case.softmax_scale,
                       return_lse=case.return_lse, out=out, device="cpu")
    result, lse = got if case.return_lse else (got, None)
    if out is not None:
        assert result is out
        if out_base is not out:
            assert np.isnan(out_base[..., case.head_dim:]).all(), "padding of out was written"
    values = bits_to_float32(result) if case.dtype == "bfloat16" else result.astype(np.float32)
    assert values.shape == q_shape
    if lse is not None:
        assert lse.shape == (case.batch, case.heads_q, case.seqlen_q) and lse.dtype == np.float32
    check_host_result(values, lse, q, k, v, case.causal, case.softmax_scale, case.dtype)


def test_host_path_matches_float64():
    """The host reference (device='cpu') on random problems: FA3 rule, lse within 1e-3, every
    output element written (out= starts as NaN), padding between strided out rows untouched."""
    run_examples(check_host_case, HOST_EXAMPLES, gpu=False)


# ------------------------------------------------------------------------------------------------
# GPU (both families; skipped without a GPU)

FAMILIES = ["sm80", "sm90"]


def gpu_tensor(torch, shape, layout, dtype, gen):
    B, S, H, D = shape
    dt = getattr(torch, dtype)
    if layout == "sdpa":
        return torch.randn(B, H, S, D, device="cuda", generator=gen).to(dt).transpose(1, 2)
    if layout == "padded":
        base = torch.randn(B, S + 3, H + 1, D + 8, device="cuda", generator=gen).to(dt)
        return base[:, :S, :H, :D]
    return torch.randn(shape, device="cuda", generator=gen).to(dt)


def check_gpu_case(case, family):
    import torch

    from test_cuda_attention import reference

    gen = torch.Generator(device="cuda").manual_seed(
        abs(hash((case.batch, case.seqlen_q, case.seqlen_k, case.head_dim))) % (1 << 62))
    q_shape = (case.batch, case.seqlen_q, case.heads_q, case.head_dim)
    kv_shape = (case.batch, case.seqlen_k, case.heads_kv, case.head_dim)
    q, k, v = (gpu_tensor(torch, s, case.layout, case.dtype, gen)
               for s in (q_shape, kv_shape, kv_shape))
    out = out_base = None
    if case.out_layout == "compact":
        out = out_base = torch.full(q_shape, float("nan"), dtype=q.dtype, device="cuda")
    elif case.out_layout == "padded":
        out_base = torch.full(q_shape[:3] + (case.head_dim + 8,), float("nan"), dtype=q.dtype,
                              device="cuda")
        out = out_base[..., :case.head_dim]
    got = fa.attention(q, k, v, causal=case.causal, softmax_scale=case.softmax_scale,
                       return_lse=case.return_lse, out=out, kernel=family)
    result, lse = got if case.return_lse else (got, None)
    torch.cuda.synchronize()
    if out is not None:
        assert result is out
        if out_base is not out:
            assert torch.isnan(out_base[..., case.head_dim:]).all(), "padding of out was written"
    assert not torch.isnan(result).any(), "NaN in the output (unwritten or computed)"
    if q.numel():
        launch = fa.last_launch()
        assert launch["family"] == family and launch["block"] == (384, 1, 1)

    scale = case.softmax_scale if case.softmax_scale is not None else case.head_dim ** -0.5
    ref, ref_lse = reference(q, k, v, case.causal, scale, upcast=True)
    peer, _ = reference(q, k, v, case.causal, scale, upcast=False)
    check_against_reference(result, lse, ref, ref_lse, peer, family)


@pytest.mark.gpu
@pytest.mark.skipif(gpu_unavailable_reason() is not None, reason=str(gpu_unavailable_reason()))
@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_matches_float64(family):
    """A GPU kernel family on random problems: FA3 rule against float64 (torch, on the GPU), lse
    within 1e-3 (-inf rows exact), no NaN (out= starts as NaN), padding of a strided out
    untouched, and the launch was that family's with 384 threads."""
    from test_cuda_attention import require_family

    require_family(family)
    run_examples(lambda case: check_gpu_case(case, family), GPU_EXAMPLES, gpu=True)
