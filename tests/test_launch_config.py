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


@pytest.mark.parametrize("arch", [(8, 0), (9, 0)])
def test_the_forward_is_planned_as_one_launch_without_workspace(arch):
    cfg = config(arch)
    assert cfg["workspace_bytes"] == 0
    assert len(cfg["launches"]) == 1 and cfg["main_launch"] == 0
    main = dict(cfg)
    del main["launches"], main["workspace_bytes"], main["main_launch"]
    assert cfg["launches"][0] == main


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


# ------------------------------------------------------------------------------------------------
# window_size, softcap and sinks: launch_config names the instance a call would run
# (fwd_<family>_hd<D>_<dtype>[_causal|_window][_softcap][_sinks]), with no GPU.


def family_for(arch):
    if arch == H100 and built("sm90"):
        return "sm90"
    return "sm80" if built("sm80") else None


@pytest.mark.parametrize("arch", [A100, H100])
@pytest.mark.parametrize("kw, suffix", [
    ({}, ""),
    (dict(causal=True), "_causal"),
    (dict(window_size=(64, 0)), "_window"),
    (dict(window_size=[64, 64]), "_window"),
    (dict(window_size=(-1, 0)), "_causal"),            # a window that is exactly causal
    (dict(causal=True, window_size=(-1, 7)), "_causal"),  # causal sets right = 0
    (dict(causal=True, window_size=(256, -1)), "_window"),
    (dict(window_size=(5000, 5000)), ""),              # hides nothing at 1000 x 1000
    (dict(window_size=(-1, -1)), ""),
    (dict(softcap=30.0), "_softcap"),
    (dict(softcap=0), ""),
    (dict(sinks=True), "_sinks"),
    (dict(sinks=False), ""),
    (dict(causal=True, softcap=50, sinks=True), "_causal_softcap_sinks"),
    (dict(window_size=(128, 0), softcap=1.5, sinks=True), "_window_softcap_sinks"),
])
def test_launch_config_names_window_softcap_and_sinks(arch, kw, suffix):
    family = family_for(arch)
    if family is None:
        pytest.skip("no kernel family for this arch in the build")
    cfg = config(arch, **kw)
    assert cfg["family"] == family and cfg["block"] == (384, 1, 1)
    assert cfg["kernel"] == f"fwd_{family}_hd128_bf16{suffix}"


@pytest.mark.parametrize("kw, error, match", [
    (dict(window_size=3), TypeError, r"window_size must be a pair \(left, right\)"),
    (dict(window_size=(1, 2, 3)), TypeError, r"window_size must be a pair"),
    (dict(window_size=(True, 0)), TypeError, r"window_size left must be an int"),
    (dict(window_size=(0, -2)), ValueError, r"window_size right must be an int in \[-1, "),
    (dict(softcap=-1.0), ValueError, r"softcap must be finite and >= 0, got -1"),
    (dict(softcap=float("nan")), ValueError, r"softcap must be finite and >= 0, got nan"),
    (dict(softcap=True), TypeError, r"softcap must be a real number \(int or float\), got bool"),
    (dict(softcap="30"), TypeError, r"softcap must be a real number"),
    (dict(sinks="yes"), TypeError, r"sinks must be a bool, got str"),
    (dict(sinks=None), TypeError, r"sinks must be a bool, got NoneType"),
    (dict(causal="False"), TypeError, r"causal must be a bool, got str"),
    (dict(causal=None), TypeError, r"causal must be a bool, got NoneType"),
])
def test_launch_config_refuses_bad_mask_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        config(H100, **kw)


# ------------------------------------------------------------------------------------------------
# Sizes and dtype spellings (issue 16 items 10 and 14)


@pytest.mark.parametrize("name", ["batch", "seqlen_q", "seqlen_k", "heads_q", "heads_kv",
                                  "head_dim"])
@pytest.mark.parametrize("value", [2**31, 2**64, -1])
def test_launch_config_sizes_out_of_range_name_the_argument(name, value):
    """seqlen_q=2**31 used to be a bare OverflowError from argument parsing."""
    with pytest.raises(ValueError, match=rf"^{name} must be in \[0, 2147483647\], got {value}$"):
        config(H100, **{name: value})


@pytest.mark.parametrize("value, got", [(1.0, "float"), (True, "bool"), ("8", "str"),
                                        (None, "NoneType")])
def test_launch_config_sizes_must_be_ints(value, got):
    with pytest.raises(TypeError, match=rf"^seqlen_q must be an int, got {got}$"):
        config(H100, seqlen_q=value)


def test_launch_config_takes_numpy_int_sizes():
    np = pytest.importorskip("numpy")
    assert config(H100, seqlen_q=np.int64(1000), batch=np.int32(2)) == config(H100)


@pytest.mark.parametrize("short, long", [("bf16", "bfloat16"), ("fp16", "float16"),
                                         ("BF16", "bfloat16"), ("half", "float16")])
def test_launch_config_takes_the_benchmark_dtype_spellings(short, long):
    """The benchmark spells dtypes bf16 / fp16; launch_config(dtype='bf16') used to be refused."""
    assert config(H100, dtype=short) == config(H100, dtype=long)


def test_launch_config_short_float32_is_still_not_a_gpu_dtype():
    with pytest.raises(TypeError, match=r"float32"):
        config(H100, dtype="fp32")


# ---- attention_with_kvcache's plan (kvcache=True) -------------------------------------------


def kvcache_plan(arch=H100, **overrides):
    shape = dict(batch=1, seqlen_q=1, seqlen_k=8192, heads_q=32, heads_kv=8, head_dim=128,
                 dtype="bfloat16", kvcache=True)
    shape.update(overrides)
    cfg = fa.launch_config(**shape, arch=arch)
    assert all(l["block"] == (384, 1, 1) for l in cfg["launches"])
    assert cfg["launches"][cfg["main_launch"]]["kernel"] == cfg["kernel"]
    return [(l["kernel"], l["grid"]) for l in cfg["launches"]], cfg["workspace_bytes"]


@needs_sm80
def test_kvcache_decode_is_split_by_the_wave_rule():
    """One query row per entry, GQA 32:8: the 4 q heads of a kv head share a decode CTA; 8 CTAs
    leave an H100/H200's 132 SMs idle, so the keys are split in 16 parts (128 CTAs, one wave:
    the plan the H200 ran in benches/NOTES.md, "Serving v2") and merged by the combine kernel
    through the workspace, 12 rows of 128 columns a CTA."""
    launches, workspace = kvcache_plan(seqlen_new=1)
    assert launches == [("kvcache_append_bf16", (1, 8, 1)),
                        ("decode_sm80_hd128_bf16_split", (16, 8, 1)), ("combine_bf16", (3, 1, 1))]
    assert workspace > 0
    assert kvcache_plan(seqlen_k=131072)[0] == [("decode_sm80_hd128_bf16_split", (16, 8, 1)),
                                                ("combine_bf16", (3, 1, 1))]
    assert kvcache_plan(head_dim=64)[0] == [("decode_sm80_hd64_bf16_split", (16, 8, 1)),
                                            ("combine_bf16", (2, 1, 1))]
    assert kvcache_plan(page_size=64)[0] == kvcache_plan()[0]


@needs_sm80
def test_kvcache_num_splits_is_taken_as_asked():
    assert kvcache_plan(num_splits=1) == ([("decode_sm80_hd128_bf16", (1, 8, 1))], 0)
    launches, workspace = kvcache_plan(num_splits=4)
    assert launches == [("decode_sm80_hd128_bf16_split", (4, 8, 1)), ("combine_bf16", (3, 1, 1))]
    assert workspace > 0


@needs_sm80
@pytest.mark.parametrize("head_dim, splits, combine_grid", [
    (128, 32, (3, 1, 1)),    # 12 rows of 32 items, one thread each
    (128, 33, (6, 1, 1)),    # two threads an item: 6 rows a CTA
    (128, 200, (32, 1, 1)),  # eight threads an item: one row a CTA
    (256, 200, (32, 1, 1)),  # 64 items a row: four threads each fill 256 of the 384
    (64, 200, (11, 1, 1)),   # 16 items x 8 threads: three rows a CTA
])
def test_kvcache_combine_covers_every_row_at_any_split_count(head_dim, splits, combine_grid):
    """The combine shares an item among more threads as the splits grow (kernels.h,
    fa_combine_threads_per_item), never so many that a CTA holds no whole row."""
    launches, _ = kvcache_plan(head_dim=head_dim, num_splits=splits, seqlen_k=131072)
    assert launches[-1] == ("combine_bf16", combine_grid)


@needs_sm80
@needs_sm90
def test_kvcache_long_chunks_run_the_forward_family():
    """512 new queries per entry (x 4 q heads per kv head) are past the decode kernel's 128
    packed rows: the forward family runs over the cache; paged caches whose page size the sm90
    family cannot read (not a multiple of its 128-key blocks) run the sm80 family's. Over a
    dense cache the sm90 kernel appends the new keys itself (one launch, no workspace); over
    pages the append kernel runs first. The appending kernel is the window instance (its lower
    key edge hides the rows below the cache's first key), with a window that hides nothing."""
    chunk = dict(batch=2, seqlen_q=512, seqlen_new=512, causal=True)
    assert kvcache_plan(**chunk) == ([("fwd_sm90_hd128_bf16_window_append", (132, 1, 1))], 0)
    assert kvcache_plan(**chunk, kernel="sm80")[0] == [("kvcache_append_bf16", (8, 8, 2)),
                                                       ("fwd_sm80_hd128_bf16_causal", (3, 32, 2))]
    assert kvcache_plan(**chunk, page_size=128)[0] == [("kvcache_append_bf16", (8, 8, 2)),
                                                       ("fwd_sm90_hd128_bf16_causal", (132, 1, 1))]
    assert kvcache_plan(**chunk, page_size=64)[0][1][0] == "fwd_sm80_hd128_bf16_causal"
    # num_splits > 1 keeps the split decode kernel however long the chunk
    assert kvcache_plan(**chunk, num_splits=4)[0][1][0] == "decode_sm80_hd128_bf16_causal_split"


@needs_sm90
@pytest.mark.parametrize("head_dim, causal, page_size, blocks", [
    (128, False, 160, "176 or 128"), (128, True, 100, "128"), (64, False, 100, "128"),
    (256, True, 100, "80 or 64")])
def test_kvcache_sm90_refusal_names_every_key_block_a_page_may_hold(head_dim, causal, page_size,
                                                                    blocks):
    """Full attention at head_dim 128 has a 176- and a 128-key instance, and a page size that
    either divides runs on sm90 (fa_sm90_short_keys), so the refusal names both."""
    chunk = dict(batch=2, seqlen_q=512, head_dim=head_dim, causal=causal, page_size=page_size)
    with pytest.raises(ValueError, match=f"^kernel family sm90: paged k/v needs page_size a "
                                         f"multiple of {blocks} on sm90 \\(got {page_size}\\)$"):
        kvcache_plan(**chunk, kernel="sm90")
    assert kvcache_plan(**dict(chunk, page_size=256 if head_dim != 256 else 320),
                        kernel="sm90")[0][0][0].startswith("fwd_sm90_")


@pytest.mark.parametrize("kw, error, match", [
    (dict(backward=True), ValueError, "kvcache=True plans attention_with_kvcache.*no backward"),
    (dict(varlen=True), ValueError, "no packed variant"),
    (dict(seqlen_new=-1), ValueError, r"seqlen_new must be in \[0, 2147483647\], got -1"),
    (dict(page_size=-16), ValueError, r"page_size must be in \[0, 2147483647\], got -16"),
    (dict(kernel="sm90"), ValueError, "kernel family sm90 has no split-KV decode kernel"),
])
def test_kvcache_plan_refusals_name_the_argument(kw, error, match):
    with pytest.raises(error, match=match):
        kvcache_plan(**kw)


def documented_splits(ctas, seqlen_k, sm_count):
    """kvcache.c's split rule as its header states it: none when the CTAs fill 80% of the
    SMs; else the smallest s (at least 64 keys a split, at most 128 splits and two waves)
    whose wave efficiency w / ceil(w), w = ctas * s / SMs, is within 95% of the best."""
    if ctas >= sm_count * 4 // 5:
        return 1
    most = min(seqlen_k // 64, 128, 2 * sm_count // ctas)
    if most <= 1:
        return 1
    eff = {s: (ctas * s / sm_count) / math.ceil(ctas * s / sm_count - 1e-6)
           for s in range(1, most + 1)}
    best = max(eff.values())
    return next(s for s in range(1, most + 1) if eff[s] >= 0.95 * best)


@needs_sm80
@pytest.mark.parametrize("arch", [A100, L4, H100])
@pytest.mark.parametrize("batch, heads, seqlen_k", [
    (1, (32, 8), 1024), (1, (32, 8), 8192), (1, (8, 1), 131072), (2, (64, 8), 4096),
    (4, (32, 8), 65536), (8, (8, 1), 2000), (16, (32, 8), 8192), (64, (32, 8), 8192)])
def test_kvcache_split_count_follows_the_documented_rule(arch, batch, heads, seqlen_k):
    hq, hkv = heads
    cfg = fa.launch_config(batch=batch, seqlen_q=1, seqlen_k=seqlen_k, heads_q=hq, heads_kv=hkv,
                           head_dim=128, dtype="bf16", kvcache=True, arch=arch)
    main = cfg["launches"][cfg["main_launch"]]
    ctas = batch * hkv  # one 16-row tile holds the hq / hkv query rows of a kv head
    splits = documented_splits(ctas, seqlen_k, SM_COUNT[arch])
    assert main["grid"] == (splits, hkv, batch)
    assert main["kernel"].endswith("_split") == (splits > 1)
    assert [l["kernel"] for l in cfg["launches"]][1:] == (["combine_bf16"] if splits > 1 else [])
    assert (cfg["workspace_bytes"] > 0) == (splits > 1)
