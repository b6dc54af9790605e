"""Limits: sizes at and past what the GPU and 32-bit indices hold are computed correctly or refused
up front with a message that names the limit, and a failed allocation leaves the module working.

  - more than 2^31 elements in q, k, v and out (bfloat16, 4.3 GB each, 17 GB in all): checked
    row by row against float64 on sampled rows, the last row of the last head included, whose
    element offset is past 2^31
  - grid limits: the sm80 family puts heads_q on grid.y and batch on grid.z (65535 each) and
    refuses more with the limit in the message; the sm90 family is persistent and takes them
  - seqlen 128k, one head (sampled rows); batch 1, head 1, seqlen 1
  - a DeviceArray larger than the GPU: CudaError (cudaErrorMemoryAllocation), device memory given
    back, and the next call computes correctly
The launch-configuration cases run everywhere (nominal GPUs, no CUDA call); the rest needs a GPU
(skipped with a reason) and keeps under ~20 GB of device memory and ~20 s per test.

    python -m pytest -q tests/test_reliability_limits.py
"""
import re

import numpy as np
import pytest

import flashattn_c as fa
from conftest import gpu_unavailable_reason
from test_reliability_support import sampled_rows_check

needs_torch_gpu = pytest.mark.skipif(gpu_unavailable_reason() is not None,
                                     reason=str(gpu_unavailable_reason()))
GRID_LIMIT = r"exceeds the device limit \(2147483647,65535,65535\)"


def config(arch, kernel, **sizes):
    shape = dict(batch=1, seqlen_q=1, seqlen_k=1, heads_q=1, heads_kv=1, head_dim=64,
                 dtype="float16")
    shape.update(sizes)
    return fa.launch_config(arch=arch, kernel=kernel, **shape)


# ------------------------------------------------------------------------------------------------
# Grid limits, computed for nominal GPUs (no GPU needed)


@pytest.mark.parametrize("arch, kernel", [((8, 0), None), ((8, 9), None), ((9, 0), "sm80")])
@pytest.mark.parametrize("sizes", [dict(batch=65536), dict(heads_q=65536),
                                   dict(heads_q=65536 * 2, heads_kv=2, batch=3, seqlen_q=300)],
                         ids=["batch", "heads_q", "both"])
def test_sm80_grid_limits_are_refused_with_the_limit_named(arch, kernel, sizes):
    query_blocks = -(-sizes.get("seqlen_q", 1) // config(arch, kernel, seqlen_q=300)["block_m"])
    grid = f"({query_blocks},{sizes.get('heads_q', 1)},{sizes.get('batch', 1)})"
    with pytest.raises(RuntimeError, match=rf"^fwd_sm80_hd64_fp16: grid {re.escape(grid)} = "
                                           rf"\(query blocks, heads_q, batch\) {GRID_LIMIT}$"):
        config(arch, kernel, **sizes)


@pytest.mark.parametrize("arch, kernel", [((8, 0), None), ((9, 0), "sm80")])
def test_sm80_takes_exactly_the_grid_limit(arch, kernel):
    cfg = config(arch, kernel, batch=65535, heads_q=65535, heads_kv=65535, seqlen_q=129)
    assert cfg["grid"][1:] == (65535, 65535) and cfg["family"] == "sm80"


@pytest.mark.parametrize("sizes", [dict(batch=65536), dict(heads_q=65536),
                                   dict(batch=65535 * 4, heads_q=4096, heads_kv=1)],
                         ids=["batch", "heads_q", "both"])
def test_sm90_is_persistent_and_takes_any_grid(sizes):
    cfg = config((9, 0), "sm90", **sizes)
    assert cfg["grid"] == (132, 1, 1) and cfg["family"] == "sm90"


@pytest.mark.parametrize("sizes", [dict(batch=65536, heads_q=32768),
                                   dict(seqlen_q=2 ** 31 - 1)], ids=["tiles", "seqlen_q"])
def test_sm90_tile_count_past_int32_is_refused(sizes):
    with pytest.raises((RuntimeError, ValueError)):
        config((9, 0), "sm90", head_dim=8, **sizes)


def test_sm90_tile_count_stops_one_grid_short_of_int32():
    """The persistent loop steps its 32-bit tile index by the grid (132 CTAs here), so the
    last tile it may take is 2^31 - 1 - 132."""
    cfg = config((9, 0), "sm90", head_dim=8, batch=5, heads_q=429496703, heads_kv=1)  # 2^31 - 1 - 132
    assert cfg["grid"] == (132, 1, 1)
    with pytest.raises(RuntimeError, match=r"2147483516 tiles .* limit of 2147483515"):
        config((9, 0), "sm90", head_dim=8, batch=4, heads_q=536870879, heads_kv=1)


# ------------------------------------------------------------------------------------------------
# More than 2^31 elements (GPU)

HUGE = dict(batch=2, seqlen=1024, heads=8256, head_dim=128)  # 2 164 260 864 elements per tensor


@pytest.fixture(scope="module")
def huge_qkv():
    reason = gpu_unavailable_reason()
    if reason:
        pytest.skip(reason)
    import torch

    free, _ = torch.cuda.mem_get_info()
    shape = (HUGE["batch"], HUGE["seqlen"], HUGE["heads"], HUGE["head_dim"])
    need = 4 * 2 * int(np.prod(shape)) + (1 << 30)
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free device memory, {free / 2**30:.1f} free")
    gen = torch.Generator(device="cuda").manual_seed(1234)
    tensors = [torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
               for _ in range(3)]
    assert tensors[0].numel() > 2 ** 31
    yield tensors
    del tensors
    torch.cuda.empty_cache()


def huge_rows(rng):
    B, S, H = HUGE["batch"], HUGE["seqlen"], HUGE["heads"]
    rows = [(B - 1, H - 1, S - 1), (B - 1, H - 1, 0), (0, 0, 0), (B - 1, H // 2, S // 2)]
    rows += [(int(rng.integers(B)), int(rng.integers(H)), int(rng.integers(S))) for _ in range(6)]
    return rows


@needs_torch_gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("family", ["sm80", "sm90"])
def test_more_than_2_31_elements(huge_qkv, rng, record_number, family, causal):
    import torch

    from test_cuda_attention import require_family

    require_family(family)
    q, k, v = huge_qkv
    last = q[HUGE["batch"] - 1, HUGE["seqlen"] - 1, HUGE["heads"] - 1]
    offset = (last.data_ptr() - q.data_ptr()) // q.element_size()
    assert offset >= 2 ** 31, "the sampled last row must sit past 2^31 elements"
    out, lse = fa.attention(q, k, v, causal=causal, return_lse=True, kernel=family)
    torch.cuda.synchronize()
    assert fa.last_launch()["family"] == family
    err, tol = sampled_rows_check(q, k, v, out, lse, huge_rows(rng), causal)
    record_number(f"limits/2^31+ elements/{family}/causal={causal}",
                  "max sampled-row error (tolerance)", f"{err:.3e} ({tol:.3e})")
    del out, lse
    torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------
# Grid limits on a real GPU


@needs_torch_gpu
@pytest.mark.parametrize("sizes", [dict(batch=65536, heads=1), dict(batch=1, heads=65536)],
                         ids=["batch", "heads_q"])
def test_sm80_refuses_past_the_grid_limit_and_keeps_working(sizes):
    import torch

    from test_cuda_attention import make_inputs, require_family, run_and_check

    require_family("sm80")
    q = torch.randn(sizes["batch"], 3, sizes["heads"], 64, device="cuda", dtype=torch.float16)
    with pytest.raises(RuntimeError, match=rf"grid \(1,{sizes['heads']},{sizes['batch']}\) = "
                                           rf"\(query blocks, heads_q, batch\) {GRID_LIMIT}"):
        fa.attention(q, q, q, kernel="sm80")
    run_and_check("sm80", *make_inputs(2, 129, 129, 2, 1, 64, "float16"), True)


@needs_torch_gpu
@pytest.mark.parametrize("sizes", [dict(batch=65536, heads=1), dict(batch=1, heads=65536),
                                   dict(batch=65535, heads=1)], ids=["batch", "heads_q", "65535"])
def test_batch_and_heads_past_65535(rng, sizes):
    """sm90 (persistent) computes them; sm80 takes exactly 65535."""
    import torch

    from test_cuda_attention import require_family

    family = "sm90" if sizes["batch"] + sizes["heads"] > 65536 else "sm80"
    require_family(family)
    B, H = sizes["batch"], sizes["heads"]
    q = torch.randn(B, 17, H, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, 33, H, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, 33, H, 64, device="cuda", dtype=torch.bfloat16)
    out, lse = fa.attention(q, k, v, causal=True, return_lse=True, kernel=family)
    torch.cuda.synchronize()
    rows = [(B - 1, H - 1, 16), (B - 1, H - 1, 0), (0, 0, 5)]
    rows += [(int(rng.integers(B)), int(rng.integers(H)), int(rng.integers(17))) for _ in range(8)]
    sampled_rows_check(q, k, v, out, lse, rows, causal=True)


# ------------------------------------------------------------------------------------------------
# Long and tiny sequences


@needs_torch_gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("family", ["sm80", "sm90"])
def test_seqlen_128k_single_head(rng, record_number, family, causal, dtype):
    import torch

    from test_cuda_attention import require_family

    require_family(family)
    S = 128 * 1024
    gen = torch.Generator(device="cuda").manual_seed(int(rng.integers(1 << 30)))
    q, k, v = (torch.randn(1, S, 1, 128, device="cuda", dtype=getattr(torch, dtype),
                           generator=gen) for _ in range(3))
    out, lse = fa.attention(q, k, v, causal=causal, return_lse=True, kernel=family)
    torch.cuda.synchronize()
    rows = [(0, 0, i) for i in (0, 1, 127, 128, S // 2 - 1, S // 2, S - 129, S - 1)]
    rows += [(0, 0, int(i)) for i in rng.integers(0, S, 8)]
    err, tol = sampled_rows_check(q, k, v, out, lse, rows, causal)
    record_number(f"limits/seqlen 128k/{family}/{dtype}/causal={causal}",
                  "max sampled-row error (tolerance)", f"{err:.3e} ({tol:.3e})")


@needs_torch_gpu
@pytest.mark.parametrize("head_dim", [8, 64, 256])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("family", ["sm80", "sm90"])
def test_batch_1_head_1_seqlen_1(family, causal, dtype, head_dim):
    from test_cuda_attention import make_inputs, require_family, run_and_check

    require_family(family)
    run_and_check(family, *make_inputs(1, 1, 1, 1, 1, head_dim, dtype), causal)


# ------------------------------------------------------------------------------------------------
# Allocation failure


@needs_torch_gpu
@pytest.mark.parametrize("exact", [False, True], ids=["pool", "exact-alloc"])
def test_allocation_failure_raises_and_the_module_keeps_working(monkeypatch, record_number,
                                                                exact):
    """q is one row broadcast (stride 0) to (64, 2^20, 16, 128): a few bytes of input whose
    output, a fresh DeviceArray, would take 256 GiB."""
    import torch

    from test_cuda_attention import make_inputs, require_family, run_and_check

    if exact:
        monkeypatch.setenv("FLASHATTN_C_EXACT_ALLOC", "1")
    else:
        monkeypatch.delenv("FLASHATTN_C_EXACT_ALLOC", raising=False)
    torch.cuda.synchronize()
    free_before, total = torch.cuda.mem_get_info()
    row = torch.randn(1, 1, 1, 128, device="cuda", dtype=torch.float16)
    q = row.expand(64, 2 ** 20, 16, 128)
    kv = row.expand(64, 7, 16, 128)
    out_bytes = q.numel() * 2
    assert out_bytes > total, "the output must not fit the GPU"
    with pytest.raises(fa.CudaError, match=r"cudaErrorMemoryAllocation") as info:
        fa.attention(q, kv, kv, return_lse=True)
    assert info.value.cuda_error == 2  # cudaErrorMemoryAllocation
    assert isinstance(info.value, RuntimeError)
    torch.cuda.synchronize()
    free_after, _ = torch.cuda.mem_get_info()
    record_number(f"limits/allocation failure/{'exact' if exact else 'pool'}",
                  "device free memory before -> after (MiB)",
                  f"{free_before >> 20} -> {free_after >> 20}")
    assert free_after >= free_before - (64 << 20), "the failed call kept device memory"
    # The next calls work, on both families this GPU runs.
    for family in ("sm80", "sm90"):
        try:
            require_family(family)
        except pytest.skip.Exception:
            continue
        run_and_check(family, *make_inputs(2, 129, 140, 4, 2, 128, "bfloat16"), True)
