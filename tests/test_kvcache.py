"""attention_with_kvcache (FlashAttention's flash_attn_with_kvcache) without a GPU: the host path
(device="cpu", fa_kvcache_cpu) against tests/reference.py's kvcache_numpy (the append into copies
of the caches, then attention_numpy of each entry over its keys) with the rule of DESIGN.md
section 6; the caches compared whole afterwards, so the appended rows are checked and nothing
outside them changed; cache slots no entry uses hold NaN, so a read of one would show. Dense and
paged caches (page sizes 1, 16, 64 with a permuted block table), per-entry lengths and one int,
cache_batch_idx, GQA, masks; every bad input raised before any work. The GPU matrix is
tests/test_kvcache_gpu.py.

    python -m pytest -q tests/test_kvcache.py
"""
import numpy as np
import pytest

import flashattn_c as fa
from reference import check_against_reference, kvcache_numpy
from test_interop import FakeDLPack


class Cache:
    """A KV-cache problem: q, the caches (unused slots NaN), the new k and v, the lengths, and
    the layout's arrays; call() runs the host path, check() compares with the reference."""

    def __init__(self, rng, batch=3, seqlen_q=1, heads_q=8, heads_kv=2, head_dim=32,
                 dtype=np.float16, lens=(5, 0, 17), new=1, capacity=32, page_size=None,
                 batch_cache=None, cache_batch_idx=None, as_int=False):
        self.dtype = dtype
        rand = lambda *s: rng.standard_normal(s).astype(dtype)
        self.q = rand(batch, seqlen_q, heads_q, head_dim)
        self.k = rand(batch, new, heads_kv, head_dim) if new else None
        self.v = rand(batch, new, heads_kv, head_dim) if new else None
        lens = np.asarray(lens, np.int32)
        self.lens = int(lens[0]) if as_int else lens
        used = np.broadcast_to(lens, (batch,)) + new
        self.block_table, self.cache_batch_idx = None, None
        if page_size:
            pages = -(-capacity // page_size)
            num_pages = batch * pages + 3  # spare pages no entry owns
            order = rng.permutation(num_pages)[:batch * pages]
            self.block_table = order.reshape(batch, pages).astype(np.int32)
            self.k_cache = np.full((num_pages, page_size, heads_kv, head_dim), np.nan, dtype)
            for b in range(batch):
                j = np.arange(used[b] - new)  # the cached keys: finite; the rest stays NaN
                self.k_cache[self.block_table[b, j // page_size], j % page_size] = rand(
                    len(j), heads_kv, head_dim)
        else:
            n = batch if batch_cache is None else batch_cache
            self.k_cache = np.full((n, capacity, heads_kv, head_dim), np.nan, dtype)
            idx = np.arange(batch) if cache_batch_idx is None else np.asarray(cache_batch_idx)
            if cache_batch_idx is not None:
                self.cache_batch_idx = np.asarray(cache_batch_idx, np.int32)
            for b in range(batch):
                self.k_cache[idx[b], :used[b] - new] = rand(used[b] - new, heads_kv, head_dim)
        self.v_cache = self.k_cache.copy()
        finite = np.isfinite(self.k_cache)
        self.v_cache[finite] = rand(int(finite.sum()))

    def kwargs(self, **kw):
        args = dict(cache_seqlens=self.lens, cache_batch_idx=self.cache_batch_idx,
                    block_table=self.block_table)
        args.update(kw)
        return args

    def call(self, device="cpu", **kw):
        out = np.full(self.q.shape, np.nan, self.dtype)
        self.before = (self.k_cache.copy(), self.v_cache.copy())
        got, lse = fa.attention_with_kvcache(self.q, self.k_cache, self.v_cache, self.k, self.v,
                                             return_lse=True, out=out, device=device,
                                             **self.kwargs(**kw))
        assert got is out
        assert lse.shape == (self.q.shape[0], self.q.shape[2], self.q.shape[1])
        return out, lse

    def reference(self, dtype=np.float64, **kw):
        kc, vc = self.before
        opts = {key: kw[key] for key in ("causal", "softmax_scale", "softcap", "sinks")
                if key in kw}
        opts["window"] = kw.get("window_size", (-1, -1))
        return kvcache_numpy(self.q, kc, vc, self.lens, self.k, self.v,
                             cache_batch_idx=self.cache_batch_idx, block_table=self.block_table,
                             dtype=dtype, **opts)

    def check(self, device="cpu", **kw):
        out, lse = self.call(device, **kw)
        ref_out, ref_lse, k_after, v_after = self.reference(np.float64, **kw)
        peer = self.reference(np.dtype(self.dtype).type, **kw)[0]
        check_against_reference(out, lse, ref_out, ref_lse, peer)
        # The append is a copy: the caches are bitwise what the reference wrote, NaN included.
        np.testing.assert_array_equal(self.k_cache, k_after)
        np.testing.assert_array_equal(self.v_cache, v_after)
        return out, lse


# ================================================================================================
# The reference itself
# ================================================================================================


def test_reference_appends_then_attends(rng):
    c = Cache(rng, batch=2, lens=(3, 1), new=2, capacity=8, dtype=np.float64)
    kc, vc = c.k_cache.copy(), c.v_cache.copy()
    out, lse, k_after, v_after = kvcache_numpy(c.q, kc, vc, c.lens, c.k, c.v)
    np.testing.assert_array_equal(k_after[0, 3:5], c.k[0])
    np.testing.assert_array_equal(k_after[1, 1:3], c.k[1])
    assert np.isnan(k_after[0, 5:]).all() and np.isnan(kc[0, 3:]).all()  # copies, not in place
    from reference import attention_numpy

    o, l = attention_numpy(c.q[:1], k_after[:1, :5], v_after[:1, :5])
    np.testing.assert_array_equal(out[:1], o)


# ================================================================================================
# Host path against the reference
# ================================================================================================


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("seqlen_q", [1, 4])
@pytest.mark.parametrize("new", [0, 1, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_dense_cache_per_entry_lengths(rng, dtype, seqlen_q, new, causal):
    Cache(rng, seqlen_q=seqlen_q, new=new, dtype=dtype).check(causal=causal)


@pytest.mark.parametrize("new", [0, 2])
def test_dense_cache_one_length_for_all(rng, new):
    Cache(rng, lens=(9,), new=new, as_int=True).check(causal=True)


@pytest.mark.parametrize("page_size", [1, 16, 64])
@pytest.mark.parametrize("seqlen_q", [1, 4])
@pytest.mark.parametrize("new", [0, 2])
def test_paged_cache_permuted_block_table(rng, page_size, seqlen_q, new):
    Cache(rng, seqlen_q=seqlen_q, new=new, capacity=130, lens=(70, 0, 127), page_size=page_size,
          dtype=np.float32).check(causal=True)


def test_paged_cache_one_length_for_all(rng):
    Cache(rng, lens=(40,), new=1, capacity=64, page_size=16, as_int=True).check(causal=True)


def test_cache_batch_idx_selects_entries_of_a_larger_cache(rng):
    c = Cache(rng, batch=3, lens=(4, 11, 0), new=2, batch_cache=5, cache_batch_idx=[4, 0, 2])
    c.check(causal=True)
    # Entries 1 and 3 of the cache belong to no batch entry: untouched (all NaN).
    assert np.isnan(c.k_cache[[1, 3]]).all()


@pytest.mark.parametrize("heads", [(8, 2), (4, 4), (6, 1)])
def test_gqa(rng, heads):
    Cache(rng, seqlen_q=4, heads_q=heads[0], heads_kv=heads[1], new=1).check(causal=True)


@pytest.mark.parametrize("window", [(0, 0), (3, -1), (5, 1)])
def test_window_aligned_on_each_entrys_keys(rng, window):
    Cache(rng, seqlen_q=4, lens=(20, 2, 9), new=2, dtype=np.float32).check(window_size=window)


def test_softcap_and_sinks(rng):
    sinks = (rng.standard_normal(8) * 2).astype(np.float32)
    out, lse = Cache(rng, seqlen_q=4, lens=(12, 0, 3), new=0).check(
        causal=True, softcap=20.0, sinks=sinks)
    # Entry 1 has no key: out 0, lse = the sink (no NaN from its all-NaN cache).
    assert (out[1] == 0).all()
    np.testing.assert_allclose(lse[1], np.broadcast_to(sinks[:, None], (8, 4)), rtol=1e-6)


def test_entry_with_no_key_gives_zero_and_minus_inf(rng):
    out, lse = Cache(rng, lens=(3, 0, 1), new=0).check()
    assert (out[1] == 0).all() and np.isneginf(lse[1]).all()


def test_full_cache_after_the_append(rng):
    Cache(rng, lens=(31, 0, 16), new=1, capacity=32).check(causal=True)
    Cache(rng, lens=(13, 0, 10), new=3, capacity=16, page_size=16).check(causal=True)


def test_strided_q_and_new_keys(rng):
    """Views with gaps (a fused qkv projection) are packed on the host path like attention()'s."""
    c = Cache(rng, seqlen_q=2, new=2)
    fused = rng.standard_normal((3, 2, 3, 8, 32)).astype(np.float16)
    c.q = fused[:, :, 0]
    c.k, c.v = fused[:, :, 1, :2], fused[:, :, 2, :2]
    c.check(causal=True)


def test_read_only_caches_are_read_but_not_written(rng):
    c = Cache(rng, new=0)
    c.k_cache.flags.writeable = False
    c.v_cache.flags.writeable = False
    c.check()  # nothing appended: reading a read-only cache is fine
    c2 = Cache(rng, new=1)
    c2.k_cache.flags.writeable = False
    before = c2.v_cache.copy()
    with pytest.raises(ValueError, match="k_cache is read-only: attention_with_kvcache writes "
                                         "into it in place"):
        c2.call()
    np.testing.assert_array_equal(c2.v_cache, before)


def test_torch_cpu_tensors_are_written_in_place(rng):
    torch = pytest.importorskip("torch")
    c = Cache(rng, new=1, dtype=np.float32)
    kc, vc = torch.from_numpy(c.k_cache.copy()), torch.from_numpy(c.v_cache.copy())
    ref_out, _, k_after, v_after = kvcache_numpy(c.q, c.k_cache, c.v_cache, c.lens, c.k, c.v)
    out = fa.attention_with_kvcache(*(torch.from_numpy(x) for x in (c.q,)), kc, vc,
                                    torch.from_numpy(c.k), torch.from_numpy(c.v),
                                    cache_seqlens=torch.from_numpy(c.lens), device="cpu")
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(kc.numpy(), k_after)
    np.testing.assert_array_equal(vc.numpy(), v_after)


def test_torch_inputs_that_require_grad_are_refused(rng):
    torch = pytest.importorskip("torch")
    c = Cache(rng, new=1, dtype=np.float32)
    q = torch.from_numpy(c.q).requires_grad_(True)
    kc, vc = torch.from_numpy(c.k_cache), torch.from_numpy(c.v_cache)
    with pytest.raises(ValueError, match="inference op with no backward, and q requires grad"):
        fa.attention_with_kvcache(q, kc, vc, cache_seqlens=torch.from_numpy(c.lens),
                                  device="cpu")
    with torch.no_grad():
        out = fa.attention_with_kvcache(q, kc, vc, cache_seqlens=torch.from_numpy(c.lens),
                                        device="cpu")
    assert not out.requires_grad


def test_nothing_to_attend_still_appends(rng):
    """seqlen_q = 0 with new keys: the append alone."""
    c = Cache(rng, seqlen_q=0, new=2)
    kc = c.k_cache.copy()
    fa.attention_with_kvcache(c.q, c.k_cache, c.v_cache, c.k, c.v, cache_seqlens=c.lens,
                              device="cpu")
    _, _, k_after, _ = kvcache_numpy(c.q, kc, c.v_cache, c.lens, c.k, c.v)
    np.testing.assert_array_equal(c.k_cache, k_after)


def test_roles_list_the_arrays_in_order():
    assert [r[0] for r in fa._C.kvcache_roles] == [
        "q", "k_cache", "v_cache", "k", "v", "cache_seqlens", "cache_batch_idx", "block_table",
        "sinks", "out", "lse"]


# ================================================================================================
# Bad inputs: the argument named, before any work
# ================================================================================================


def rejected(c, error, match, device="cpu", **kw):
    """The call raises and writes nothing: not out, not the caches."""
    kc, vc = c.k_cache.copy(), c.v_cache.copy()
    out = np.full(c.q.shape, 3.0, c.dtype)
    args = dict(k=c.k, v=c.v, out=out, device=device, **c.kwargs())
    args.update(kw)
    with pytest.raises(error, match=match):
        fa.attention_with_kvcache(c.q, c.k_cache, c.v_cache, **args)
    assert (out == 3.0).all()
    np.testing.assert_array_equal(c.k_cache, kc)
    np.testing.assert_array_equal(c.v_cache, vc)


def test_cache_seqlens_past_the_cache(rng):
    c = Cache(rng, new=2, capacity=32)
    rejected(c, ValueError, r"cache_seqlens\[2\] = 31: with 2 new keys it must be in \[0, 30\]",
             cache_seqlens=np.array([5, 0, 31], np.int32))
    rejected(c, ValueError, r"cache_seqlens\[0\] = -1", cache_seqlens=np.array([-1, 0, 1],
                                                                               np.int32))
    rejected(c, ValueError, "cache_seqlens = 31 cached keys plus 2 new ones exceed the cache's "
                            "32 keys", cache_seqlens=31)
    rejected(c, ValueError, r"cache_seqlens must be in \[0, 2147483647\], got -3",
             cache_seqlens=-3)
    p = Cache(rng, new=1, capacity=32, page_size=16)
    rejected(p, ValueError, r"cache_seqlens\[1\] = 32", cache_seqlens=np.array([0, 32, 0],
                                                                              np.int32))


def test_host_lengths_are_checked_before_any_gpu_work(rng):
    """NumPy inputs bound for the GPU: a length past the cache is a ValueError before anything
    is copied (without a GPU, any CUDA call would raise CudaError instead)."""
    c = Cache(rng, new=1, capacity=32)
    rejected(c, ValueError, r"cache_seqlens\[0\] = 40", device=None,
             cache_seqlens=np.array([40, 0, 0], np.int32))
    p = Cache(rng, new=1, capacity=32, page_size=16)
    bad = p.block_table.copy()
    bad[2, 1] = 1000
    rejected(p, ValueError, r"block_table\[2, 1\] = 1000 is outside the \d+ pages", device=None,
             block_table=bad)


def test_cache_writes_are_seen_by_autograd(rng):
    """The append writes the caches in place: their version counters move, as after torch's own
    in-place ops, so a backward that saved the old cache raises; a call without new keys writes
    nothing and moves nothing."""
    torch = pytest.importorskip("torch")
    c = Cache(rng, new=1)
    q, kc, vc, k, v = (torch.from_numpy(x) for x in (c.q, c.k_cache, c.v_cache, c.k, c.v))
    lens = torch.from_numpy(c.lens)
    weight = torch.ones(kc.shape, dtype=kc.dtype, requires_grad=True)
    saved = weight * kc  # autograd keeps the cache for weight's gradient
    versions = (kc._version, vc._version)
    fa.attention_with_kvcache(q, kc, vc, cache_seqlens=lens, device="cpu")
    assert (kc._version, vc._version) == versions
    fa.attention_with_kvcache(q, kc, vc, k, v, cache_seqlens=lens, device="cpu")
    assert kc._version > versions[0] and vc._version > versions[1]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.sum().backward()


@pytest.mark.parametrize("device", ["cpu", None])
def test_overlapping_appends_are_refused(rng, device):
    """Two entries that would append into the same cache slot race on the GPU: refused while
    the indices are host values, on both paths; sharing a page only to read it is allowed."""
    c = Cache(rng, new=2, batch_cache=3, cache_batch_idx=[0, 1, 2], lens=(5, 5, 5))
    rejected(c, ValueError, r"entries 1 and 2 would both append into cache entry 1, row 5 "
             r"\(cache_batch_idx repeats it\): appends must not overlap", device=device,
             cache_batch_idx=np.array([0, 1, 1], np.int32))
    p = Cache(rng, new=1, capacity=32, page_size=16, lens=(20, 20, 3))
    shared = p.block_table.copy()
    shared[1, 1] = shared[0, 1]  # entries 0 and 1 both append key 20: row 4 of that page
    rejected(p, ValueError, rf"entries 0 and 1 would both append into page {shared[0, 1]}, row 4 "
             r"\(block_table rows share the page\)", device=device, block_table=shared)
    prefix = p.block_table.copy()
    prefix[1, 0] = prefix[0, 0]  # a shared first page, read by both, written by neither
    p.block_table = prefix
    p.check()


@pytest.mark.parametrize("kw, error, match", [
    (dict(v=None), ValueError, "k and v .* must be given together, got k without v"),
    (dict(k=None), ValueError, "got v without k"),
    (dict(cache_seqlens=np.array([1, 2, 3], np.int64)), TypeError,
     "cache_seqlens must be int32, got int64"),
    (dict(cache_seqlens=np.array([1, 2], np.int32)), ValueError,
     r"cache_seqlens must have batch \(q's\) entries = 3, got 2"),
    (dict(cache_seqlens=None), TypeError, "cache_seqlens must be an int or an int32 array"),
    (dict(cache_seqlens=2.0), TypeError, "cache_seqlens must be an int or an int32 array .*, got "
                                         "float"),
    (dict(cache_seqlens=True), TypeError, "cache_seqlens must be an int .*, got bool"),
    (dict(num_splits=-1), ValueError, r"num_splits must be in \[0, 2147483647\], got -1"),
    (dict(cache_batch_idx=np.array([0, 1], np.int32)), ValueError,
     r"cache_batch_idx must have batch \(q's\) entries = 3, got 2"),
    (dict(cache_batch_idx=np.array([0, 1, 3], np.int32)), ValueError,
     r"cache_batch_idx\[2\] = 3 \(fa_params.kv_batch_idx\) is outside the 3 cache entries"),
])
def test_bad_dense_arguments(rng, kw, error, match):
    rejected(Cache(rng, new=1), error, match, **kw)


def test_bad_new_keys(rng):
    c = Cache(rng, new=2)
    rejected(c, ValueError, "k and v must have the same shape", v=c.v[:, :1])
    rejected(c, ValueError, r"k must have batch \(q's\) = 3, got 2", k=c.k[:2], v=c.v[:2])
    rejected(c, ValueError, r"k must have heads_kv \(k_cache's\) = 2, got 1", k=c.k[:, :, :1],
             v=c.v[:, :, :1])
    rejected(c, TypeError, "must have the same dtype", k=c.k.astype(np.float32),
             v=c.v.astype(np.float32))
    rejected(c, ValueError, "k has seqlen_new = 33 new keys, more than the cache's 32",
             k=np.zeros((3, 33, 2, 32), np.float16), v=np.zeros((3, 33, 2, 32), np.float16))


def test_bad_caches(rng):
    c = Cache(rng, new=1)
    with pytest.raises(ValueError, match="k_cache and v_cache must have the same shape"):
        fa.attention_with_kvcache(c.q, c.k_cache, c.v_cache[:, :16], cache_seqlens=0,
                                  device="cpu")
    with pytest.raises(ValueError, match=r"k_cache must have batch = 3 entries \(q's batch\), "
                                         "got 2: pass cache_batch_idx"):
        fa.attention_with_kvcache(c.q, c.k_cache[:2], c.v_cache[:2], cache_seqlens=0,
                                  device="cpu")
    with pytest.raises(ValueError, match="q and k_cache must have the same head_dim"):
        fa.attention_with_kvcache(c.q, c.k_cache[..., :16], c.v_cache[..., :16], cache_seqlens=0,
                                  device="cpu")
    with pytest.raises(ValueError, match=r"k_cache must be 4-D"):
        fa.attention_with_kvcache(c.q, c.k_cache[0], c.v_cache[0], cache_seqlens=0, device="cpu")


def test_bad_block_tables(rng):
    c = Cache(rng, new=1, capacity=32, page_size=16)
    bt = c.block_table
    rejected(c, ValueError, r"block_table must be 2-D \(batch, max_pages\), got 1-D",
             block_table=bt[0])
    rejected(c, ValueError, r"block_table must have batch \(q's\) = 3, got 2", block_table=bt[:2])
    rejected(c, TypeError, "block_table must be int32, got int64", block_table=bt.astype(np.int64))
    strided = np.zeros((3, 4), np.int32)
    strided[:, ::2] = bt
    rejected(c, ValueError, "block_table must have unit stride on max_pages, got 2",
             block_table=strided[:, ::2])
    rejected(c, ValueError, "cache_batch_idx selects entries of a dense cache",
             cache_batch_idx=np.arange(3, dtype=np.int32))
    bad = bt.copy()
    bad[1, 0] = -1
    rejected(c, ValueError, r"block_table\[1, 0\] = -1 is outside", block_table=bad)


def test_index_arrays_live_where_q_lives(rng):
    q, cache = FakeDLPack((2, 1, 4, 64)), FakeDLPack((2, 32, 2, 64))
    with pytest.raises(ValueError, match="cache_seqlens must live where q lives"):
        fa.attention_with_kvcache(q, cache, cache, cache_seqlens=np.zeros(2, np.int32))


def test_gpu_only_arguments_are_refused_on_the_host(rng):
    c = Cache(rng, new=1)
    rejected(c, ValueError, "kernel='sm90' selects a GPU kernel family", kernel="sm90")
    rejected(c, ValueError, "stream= orders GPU work", stream=0)
