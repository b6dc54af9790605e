"""launch_config(): the launch contract computed on the host, for nominal sm_80/sm_89/sm_90 devices.

Pure host logic (no GPU): every family launches (384, 1, 1); shared memory fits the device (an L4
for the sm80 family); grids follow each family's scheme; requests a device or build cannot serve
are refused with both sides named.
"""
import math

import pytest

import flashattn_c as fa

A100, L4, H100 = (8, 0), (8, 9), (9, 0)
SMEM_OPTIN = {A100: 166912, L4: 101376, H100: 232448}
SM_COUNT = {A100: 108, L4: 58, H100: 132}


def config(arch, kernel=None, **overrides):
    shape = dict(batch=2, seqlen_q=1000, seqlen_k=1000, heads_q=16, heads_kv=4, head_dim=128,
                 dtype="bfloat16", causal=False)
    shape.update(overrides)
    return fa.launch_config(**shape, arch=arch, kernel=kernel)


def built(family):
    return bool(fa.build_info()["families"].get(family))


needs_sm80 = pytest.mark.skipif(not built("sm80"), reason="sm80 family not in this build")
needs_sm90 = pytest.mark.skipif(not built("sm90"), reason="sm90 family not in this build")


def test_build_info_reports_the_384_thread_contract():
    info = fa.build_info()
    assert info["threads_per_block"] == 384
    assert info["warps_per_block"] == 12
    assert info["warpgroups"] == 3
    assert any(info["families"].values()), "no kernel family in the build"


@needs_sm80
@pytest.mark.parametrize("arch", [A100, L4, H100])
@pytest.mark.parametrize("head_dim", [64, 128, 256, 40, 200])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("causal", [False, True])
def test_sm80_family(arch, head_dim, dtype, causal):
    cfg = config(arch, "sm80", head_dim=head_dim, dtype=dtype, causal=causal)
    assert cfg["family"] == "sm80"
    assert cfg["block"] == (384, 1, 1)
    assert 0 < cfg["smem_bytes"] <= SMEM_OPTIN[L4], "the sm80 family must fit an L4 (99 KB)"
    assert cfg["head_dim_padded"] in (64, 128, 256) and cfg["head_dim_padded"] >= head_dim
    assert cfg["grid"] == (math.ceil(1000 / cfg["block_m"]), 16, 2)
    padded = cfg["head_dim_padded"]
    suffix = "_causal" if causal else ""
    short = "bf16" if dtype == "bfloat16" else "fp16"
    assert cfg["kernel"] == f"fwd_sm80_hd{padded}_{short}{suffix}"
    assert cfg["arch"] == arch and cfg["regs"] is None


@needs_sm90
@pytest.mark.parametrize("head_dim", [64, 128, 256, 40, 200])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlen", [1, 1000, 16384])
def test_sm90_family_is_persistent_on_h100(head_dim, causal, seqlen):
    cfg = config(H100, "sm90", head_dim=head_dim, causal=causal, seqlen_q=seqlen, seqlen_k=seqlen)
    assert cfg["family"] == "sm90"
    assert cfg["block"] == (384, 1, 1)
    assert cfg["block_m"] == 128, "two consumer warpgroups of 64 query rows"
    assert 0 < cfg["smem_bytes"] <= SMEM_OPTIN[H100]
    tiles = math.ceil(seqlen / 128) * 16 * 2
    assert cfg["grid"] == (min(tiles, SM_COUNT[H100]), 1, 1)


@needs_sm90
@pytest.mark.parametrize("seqlen_k, causal, block_n", [
    (1, False, 128), (1024, False, 128), (1025, False, 176), (16384, False, 176),
    (1024, True, 128), (16384, True, 128)])
def test_sm90_head_dim_128_block_follows_seqlen_k(seqlen_k, causal, block_n):
    """Full attention over at most 1024 keys runs 128-key blocks (512 and 1024 keys are whole
    blocks); longer runs 176; causal always 128. Only seqlen_k decides, not seqlen_q."""
    cfg = config(H100, "sm90", head_dim=128, causal=causal, seqlen_q=4096, seqlen_k=seqlen_k)
    assert cfg["block_n"] == block_n
    assert cfg["smem_bytes"] == (197888 if block_n == 128 else 214272)


@needs_sm90
@pytest.mark.parametrize("seqlen_k, causal, block_n", [
    (1, True, 64), (2048, True, 64), (2049, True, 80), (16384, True, 80),
    (512, False, 80), (16384, False, 80)])
def test_sm90_head_dim_256_causal_block_follows_seqlen_k(seqlen_k, causal, block_n):
    """Causal attention over at most 2048 keys runs 64-key blocks (two per 128-row diagonal);
    longer runs 80, as does full attention at every length. Only seqlen_k decides."""
    cfg = config(H100, "sm90", head_dim=256, causal=causal, seqlen_q=4096, seqlen_k=seqlen_k)
    assert cfg["block_n"] == block_n
    assert cfg["smem_bytes"] == (197888 if block_n == 64 else 230656)


def test_auto_picks_the_fastest_family_built_for_the_device():
    expected_h100 = "sm90" if built("sm90") else "sm80"
    assert config(H100)["family"] == expected_h100
    if built("sm80"):
        assert config(A100)["family"] == "sm80"
        assert config(L4)["family"] == "sm80"


@needs_sm90
def test_sm90_on_an_older_gpu_names_both_archs():
    with pytest.raises(RuntimeError, match=r"sm90 is built for sm_90a only; this GPU is sm_80"):
        config(A100, "sm90")


def test_pre_ampere_gpus_are_refused():
    with pytest.raises((RuntimeError, ValueError), match=r"sm_75"):
        config((7, 5))


def test_grid_limit_is_checked_before_launch():
    if not built("sm80"):
        pytest.skip("sm80 family not in this build")
    with pytest.raises(RuntimeError, match=r"grid"):
        config(A100, "sm80", batch=70000, seqlen_q=16, seqlen_k=16)


def test_unsupported_head_dim_is_refused():
    with pytest.raises(ValueError, match=r"head_dim must be a multiple of 8 in \[8, 256\], got 100"):
        config(H100, head_dim=100)
    with pytest.raises(ValueError, match=r"got 512"):
        config(H100, head_dim=512)


def test_float32_is_not_a_gpu_dtype():
    with pytest.raises(TypeError, match=r"float32"):
        config(H100, dtype="float32")
