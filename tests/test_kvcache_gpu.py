"""attention_with_kvcache on the GPU: the append, the split-KV decode kernel and its combine, and
the forward family's kernels for long query chunks, against a float64 torch reference computed
entry by entry on the device with DESIGN.md section 6's rule (peer: the same maths at the input
precision), lse within 1e-3, out= poisoned with NaN; the caches compared whole afterwards (the
appended rows bitwise, nothing else changed) with every slot no entry uses holding NaN, so a
read of one would show; the plan's launches named by last_launch() and the launch log; and CUDA
graph capture and replay with torch.

Skipped with a reason where there is no CUDA GPU or no PyTorch.

    python -m pytest -q tests/test_kvcache_gpu.py
"""
import numpy as np
import pytest

import flashattn_c as fa
from conftest import FAMILIES, GPU_DTYPES, GPU_MARKS, require_family
from reference import check_against_reference
from test_masks_gpu import torch_reference

pytestmark = GPU_MARKS
SHORT = {"float16": "fp16", "bfloat16": "bf16"}


class GpuCache:
    """Torch tensors on the GPU for one KV-cache call: q, the caches (NaN outside each entry's
    cached keys), new k and v, int32 lengths, and the dense or paged layout's arrays."""

    def __init__(self, batch=3, seqlen_q=1, heads_q=8, heads_kv=2, head_dim=128,
                 dtype="bfloat16", lens=(700, 0, 1500), new=1, capacity=2048, page_size=None,
                 batch_cache=None, cache_batch_idx=None):
        import torch

        dt = {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
        self.dtype = dtype
        rand = lambda *s: torch.randn(*s, device="cuda").to(dt)
        self.q = rand(batch, seqlen_q, heads_q, head_dim)
        self.k = rand(batch, new, heads_kv, head_dim) if new else None
        self.v = rand(batch, new, heads_kv, head_dim) if new else None
        self.lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
        self.new = new
        self.block_table = self.cache_batch_idx = None
        if page_size:
            pages = -(-capacity // page_size)
            num_pages = batch * pages + 5
            order = torch.randperm(num_pages, device="cuda")[:batch * pages]
            self.block_table = order.view(batch, pages).to(torch.int32)
            shape = (num_pages, page_size, heads_kv, head_dim)
        else:
            n = batch if batch_cache is None else batch_cache
            if cache_batch_idx is not None:
                self.cache_batch_idx = torch.tensor(cache_batch_idx, dtype=torch.int32,
                                                    device="cuda")
            shape = (n, capacity, heads_kv, head_dim)
        self.k_cache = torch.full(shape, float("nan"), dtype=dt, device="cuda")
        self.v_cache = torch.full(shape, float("nan"), dtype=dt, device="cuda")
        for b in range(batch):
            where = self.rows(b, torch.arange(int(lens[b]), device="cuda"))
            self.k_cache[where] = rand(int(lens[b]), heads_kv, head_dim)
            self.v_cache[where] = rand(int(lens[b]), heads_kv, head_dim)

    def rows(self, b, j):
        """Index of key positions j of entry b in the caches."""
        if self.block_table is not None:
            page_size = self.k_cache.shape[1]
            return self.block_table[b, j // page_size].long(), j % page_size
        entry = b if self.cache_batch_idx is None else int(self.cache_batch_idx[b])
        return entry, j

    def call(self, family=None, num_splits=0, uniform=False, **kw):
        """uniform: cache_seqlens as one int (every entry's length must be the same)."""
        import torch

        self.before = (self.k_cache.clone(), self.v_cache.clone(), self.lens.clone())
        out = torch.full(self.q.shape, float("nan"), dtype=self.q.dtype, device="cuda")
        lens = int(self.lens[0]) if uniform else self.lens
        got, lse = fa.attention_with_kvcache(
            self.q, self.k_cache, self.v_cache, self.k, self.v, cache_seqlens=lens,
            cache_batch_idx=self.cache_batch_idx, block_table=self.block_table,
            num_splits=num_splits, return_lse=True, out=out, kernel=family, **kw)
        assert got is out
        torch.cuda.synchronize()
        return out, lse

    def expected(self, causal=False, window=(-1, -1), softcap=0.0, sinks=None):
        """(out, lse, peer out, k_cache, v_cache) of the reference, from the caches as they were
        before the call."""
        import torch

        kc, vc, lens = (x.clone() for x in self.before)
        scale = self.q.shape[-1] ** -0.5
        B = self.q.shape[0]
        for b in range(B):
            if self.new:
                where = self.rows(b, int(lens[b]) + torch.arange(self.new, device="cuda"))
                kc[where], vc[where] = self.k[b], self.v[b]
        ref = torch.zeros(self.q.shape, dtype=torch.float64, device="cuda")
        peer = torch.zeros(self.q.shape, dtype=self.q.dtype, device="cuda")
        ref_lse = torch.zeros((B, self.q.shape[2], self.q.shape[1]), dtype=torch.float64,
                              device="cuda")
        for b in range(B):
            where = self.rows(b, torch.arange(int(lens[b]) + self.new, device="cuda"))
            keys, vals = kc[where][None], vc[where][None]
            o, l = torch_reference(self.q[b:b + 1], keys, vals, causal, scale, window, softcap,
                                   sinks, True)
            p, _ = torch_reference(self.q[b:b + 1], keys, vals, causal, scale, window, softcap,
                                   sinks, False)
            ref[b], ref_lse[b], peer[b] = o[0], l[0].double(), p[0]
        return ref, ref_lse, peer, kc, vc

    def check(self, family=None, num_splits=0, causal=False, window=(-1, -1), softcap=0.0,
              sinks=None, uniform=False):
        import torch

        out, lse = self.call(family, num_splits, uniform, causal=causal, window_size=window,
                             softcap=softcap, sinks=sinks)
        launch = fa.last_launch()
        assert all(l["block"] == (384, 1, 1) for l in launch["launches"])
        ref, ref_lse, peer, kc, vc = self.expected(causal, window, softcap, sinks)
        check_against_reference(out, lse, ref, ref_lse, peer, launch["kernel"])
        # The append is a copy: bitwise, NaN slots included (equal_nan).
        assert torch.equal(self.k_cache.isnan(), kc.isnan()), "k_cache changed outside the append"
        assert torch.equal(self.k_cache.nan_to_num(), kc.nan_to_num()), "k_cache differs"
        assert torch.equal(self.v_cache.nan_to_num(), vc.nan_to_num()), "v_cache differs"
        return launch


def names(launch):
    return [l["kernel"] for l in launch["launches"]]


# ================================================================================================
# Decode: the split-KV kernel (sm80 family), its append and its combine
# ================================================================================================


@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("num_splits", [1, 3, 0])
@pytest.mark.parametrize("layout", ["dense", "paged16", "paged256"])
def test_gpu_decode(dtype, head_dim, num_splits, layout):
    require_family("sm80")
    page_size = {"dense": None, "paged16": 16, "paged256": 256}[layout]
    c = GpuCache(head_dim=head_dim, dtype=dtype, page_size=page_size)
    launch = c.check(num_splits=num_splits, causal=True)
    kernels = names(launch)
    assert kernels[0] == f"kvcache_append_{SHORT[dtype]}"
    main = launch["kernel"]
    assert main.startswith(f"decode_sm80_hd{head_dim}_{SHORT[dtype]}"), kernels
    if num_splits == 3:
        assert main.endswith("_split") and kernels[-1].startswith(f"combine_{SHORT[dtype]}")
    if num_splits == 1:
        assert not main.endswith("_split") and len(kernels) == 2


@pytest.mark.parametrize("seqlen_q", [1, 4])
@pytest.mark.parametrize("new", [0, 1, 4])
@pytest.mark.parametrize("heads", [(8, 2), (8, 8), (6, 1)])
def test_gpu_decode_gqa_and_appends(seqlen_q, new, heads):
    require_family("sm80")
    c = GpuCache(seqlen_q=seqlen_q, new=new, heads_q=heads[0], heads_kv=heads[1],
                 lens=(1, 999, 0, 2040 - new), batch=4)
    launch = c.check(causal=True)
    assert (names(launch)[0].startswith("kvcache_append_")) == (new > 0)


@pytest.mark.parametrize("page_size", [1, 16, 64])
def test_gpu_decode_small_pages(page_size):
    require_family("sm80")
    GpuCache(seqlen_q=4, new=2, capacity=512, lens=(300, 0, 509), page_size=page_size,
             dtype="float16").check(num_splits=0, causal=True)


def test_gpu_decode_cache_batch_idx():
    require_family("sm80")
    c = GpuCache(batch=3, batch_cache=6, cache_batch_idx=[5, 0, 3], lens=(100, 1024, 7), new=1)
    c.check(num_splits=3, causal=True)


@pytest.mark.parametrize("window, causal, softcap, sinks", [
    ((256, 0), True, 0.0, False), ((-1, -1), False, 30.0, True), ((100, 0), True, 30.0, True)])
def test_gpu_decode_masks(window, causal, softcap, sinks):
    import torch

    require_family("sm80")
    c = GpuCache(seqlen_q=4, lens=(700, 0, 1500))
    c.check(num_splits=3, causal=causal, window=window, softcap=softcap,
            sinks=torch.randn(8, device="cuda") * 2 if sinks else None)


def test_gpu_decode_refuses_the_sm90_family():
    require_family("sm80")
    c = GpuCache()
    with pytest.raises(ValueError, match="sm90 has no split-KV decode kernel"):
        c.call("sm90")


# ================================================================================================
# Long query chunks: the forward family's kernels over the cache
# ================================================================================================


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("layout", ["dense", "paged256"])
def test_gpu_chunk(family, dtype, head_dim, layout):
    require_family(family)
    page_size = 256 if layout == "paged256" else None
    c = GpuCache(seqlen_q=256, new=256, head_dim=head_dim, dtype=dtype, lens=(700, 0, 1500),
                 page_size=page_size)
    launch = c.check(family, causal=True)
    main = launch["kernel"]
    assert main.startswith(f"fwd_{family}_hd{head_dim}_{SHORT[dtype]}")
    if family == "sm90" and layout == "dense":  # the kernel appends the new keys itself
        assert names(launch) == [main] and main.endswith("_append")
    else:
        assert names(launch) == [f"kvcache_append_{SHORT[dtype]}", main]


# The sm90 kernel that appends: its key blocks start where each entry's cached keys end, so
# the lengths below put that end at a block boundary (0, 128, 256), one past it and one short
# of it, and leave the cache full after the append (2048 - new).
APPEND_LENS = (0, 128, 129, 383, 2048 - 300, 256)


@pytest.mark.parametrize("head_dim", [64, 128, 256, 80])
@pytest.mark.parametrize("seqlen_q, new", [(256, 256), (200, 300), (300, 64), (129, 1)])
def test_gpu_chunk_appends_in_the_main_launch(head_dim, seqlen_q, new):
    """More new keys than query rows, fewer (rows that see only cached keys), one. head_dim 80:
    a padded head (10 pieces of 16 bytes a row, so each copy warp's 32 lanes take 3 heads)."""
    require_family("sm90")
    lens = tuple(min(n, 2048 - new) for n in APPEND_LENS)
    c = GpuCache(batch=len(lens), seqlen_q=seqlen_q, new=new, head_dim=head_dim, lens=lens,
                 heads_q=8, heads_kv=2)
    assert names(c.check("sm90", causal=True))[-1].endswith("_append")


@pytest.mark.parametrize("window, causal, softcap, sinks", [
    ((-1, -1), False, 0.0, False), ((100, 0), True, 0.0, False), ((300, 40), False, 0.0, False),
    ((-1, -1), True, 30.0, True), ((-1, -1), False, 30.0, False)])
@pytest.mark.parametrize("heads", [(8, 8), (8, 1)])
def test_gpu_chunk_appending_masks(window, causal, softcap, sinks, heads):
    import torch

    require_family("sm90")
    c = GpuCache(batch=len(APPEND_LENS), seqlen_q=256, new=300, heads_q=heads[0],
                 heads_kv=heads[1], lens=APPEND_LENS, dtype="float16")
    launch = c.check("sm90", causal=causal, window=window, softcap=softcap,
                     sinks=torch.randn(heads[0], device="cuda") * 2 if sinks else None)
    assert names(launch)[-1].endswith("_append")


@pytest.mark.parametrize("cached", [0, 300, 512])
def test_gpu_chunk_appending_one_length_for_all(cached):
    """cache_seqlens as an int: the cache's key count is one number, not a device array."""
    require_family("sm90")
    c = GpuCache(batch=2, seqlen_q=256, new=256, lens=(cached, cached))
    assert names(c.check("sm90", causal=True, uniform=True))[-1].endswith("_append")


def test_gpu_chunk_appending_cache_batch_idx():
    require_family("sm90")
    c = GpuCache(batch=3, batch_cache=6, cache_batch_idx=[5, 0, 3], seqlen_q=256, new=256,
                 lens=(100, 1024, 7))
    assert names(c.check("sm90", causal=True))[-1].endswith("_append")


def test_gpu_chunk_small_pages_take_sm80():
    """Paged caches with pages below 128 keys: sm90 refuses them by name, auto runs sm80."""
    require_family("sm80")
    c = GpuCache(seqlen_q=256, new=0, page_size=64, lens=(700, 0, 1500))
    if fa.build_info()["families"].get("sm90"):
        import torch

        if torch.cuda.get_device_capability() == (9, 0):
            with pytest.raises(ValueError, match="kernel family sm90: paged k/v needs page_size"):
                c.call("sm90")
    launch = c.check(None, causal=True)
    assert launch["kernel"].startswith("fwd_sm80_")


# ================================================================================================
# Host arrays, the launch log, CUDA graphs
# ================================================================================================


def test_gpu_numpy_caches_come_back_written():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 1, 4, 64)).astype(np.float16)
    kc = rng.standard_normal((2, 256, 2, 64)).astype(np.float16)
    vc = rng.standard_normal((2, 256, 2, 64)).astype(np.float16)
    k = rng.standard_normal((2, 3, 2, 64)).astype(np.float16)
    v = rng.standard_normal((2, 3, 2, 64)).astype(np.float16)
    lens = np.array([10, 200], np.int32)
    host_kc, host_vc = kc.copy(), vc.copy()
    host = fa.attention_with_kvcache(q, host_kc, host_vc, k, v, cache_seqlens=lens, causal=True,
                                     device="cpu")
    gpu = fa.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=lens, causal=True)
    np.testing.assert_array_equal(kc, host_kc)
    np.testing.assert_array_equal(vc, host_vc)
    assert np.max(np.abs(gpu.astype(np.float32) - host.astype(np.float32))) < 5e-3


def test_gpu_launch_log_names_each_launch(monkeypatch, capfd):
    require_family("sm80")
    c = GpuCache(head_dim=128, dtype="bfloat16")
    monkeypatch.setenv("FLASHATTN_C_LOG_LAUNCH", "1")
    c.call(num_splits=3)
    logged = [l.split()[1] for l in capfd.readouterr().err.splitlines()
              if l.startswith("[flashattn_c] ")]
    assert logged[0] == "kvcache_append_bf16"
    assert logged[1].startswith("decode_sm80_hd128_bf16") and logged[1].endswith("_split")
    assert logged[2].startswith("combine_bf16") and len(logged) == 3


@pytest.mark.parametrize("num_splits, seqlen_q, layout", [
    (1, 1, "dense"), (3, 1, "dense"), (1, 1, "paged16"), (3, 1, "paged16"), (0, 256, "dense")])
def test_gpu_cuda_graph_capture_and_replay(num_splits, seqlen_q, layout):
    """Captured once, replayed with new q, new cache contents and new lengths written into the
    captured tensors: each replay computes on what the tensors hold then. seqlen_q 256: the
    forward family's kernel (on sm90 with a dense cache, appending itself)."""
    import torch

    require_family("sm80")
    c = GpuCache(page_size=16 if layout == "paged16" else None, lens=(700, 0, 1500),
                 seqlen_q=seqlen_q, new=seqlen_q)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture, as torch's docs ask
        c.call(num_splits=num_splits)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fa.attention_with_kvcache(c.q, c.k_cache, c.v_cache, c.k, c.v,
                                        cache_seqlens=c.lens, block_table=c.block_table,
                                        num_splits=num_splits, causal=True)
    for step, lens in enumerate([(1, 64, 2048 - seqlen_q), (1023, 5, 0)]):
        fresh = GpuCache(page_size=16 if layout == "paged16" else None, lens=lens,
                         seqlen_q=seqlen_q, new=seqlen_q)
        if c.block_table is not None:
            fresh.block_table = c.block_table  # the captured table; remap fresh's pages to it
            fresh.k_cache.fill_(float("nan"))
            fresh.v_cache.fill_(float("nan"))
            for b, n in enumerate(lens):
                where = fresh.rows(b, torch.arange(n, device="cuda"))
                fresh.k_cache[where] = torch.randn(n, 2, 128, device="cuda").to(torch.bfloat16)
                fresh.v_cache[where] = torch.randn(n, 2, 128, device="cuda").to(torch.bfloat16)
        for name in ("q", "k_cache", "v_cache", "k", "v", "lens"):
            getattr(c, name).copy_(getattr(fresh, name))
        c.before = (c.k_cache.clone(), c.v_cache.clone(), c.lens.clone())
        graph.replay()
        torch.cuda.synchronize()
        ref, ref_lse, peer, kc, vc = c.expected(causal=True)
        check_against_reference(out, None, ref, None, peer, f"replay {step}")
        assert torch.equal(c.k_cache.nan_to_num(), kc.nan_to_num()), f"replay {step}: k_cache"
        assert torch.equal(c.v_cache.nan_to_num(), vc.nan_to_num()), f"replay {step}: v_cache"
