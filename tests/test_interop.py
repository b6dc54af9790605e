"""How arrays get in and out of flashattn_c: NumPy, DLPack (legacy and versioned capsules),
__cuda_array_interface__, strided host arrays, stream= and kernel= / device= spellings, and the
DeviceArray output type.

Runs without a GPU: host arrays go through device="cpu", device arrays are simulated by fake
producers (ctypes DLPack capsules, CUDA-array-interface dicts) whose calls stop either at
validation or at a zero-size result, before any CUDA call. The GPU tests at the end (torch
bfloat16 round trip through DeviceArray with the same data pointer, CuPy, CUDA array interface
streams) skip with a reason when there is no GPU or no torch / CuPy.

Also home of the fake producers (FakeDLPack, FakeCAI) that test_api_errors.py and test_leaks.py
import.

    python -m pytest -q tests/test_interop.py
"""
import ctypes
import gc
import sys

import numpy as np
import pytest

import flashattn_c as fa
from flashattn_c import _C

# ------------------------------------------------------------------------------------------------
# A DLPack producer written with ctypes (DLPack v1.1 ABI), to control every field a consumer reads


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]


class _DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [
        ("version", _DLPackVersion),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", _DELETER),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", _DLTensor),
    ]


_PyCapsule_New = ctypes.pythonapi.PyCapsule_New
_PyCapsule_New.restype = ctypes.py_object
_PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_PyCapsule_GetName = ctypes.pythonapi.PyCapsule_GetName
_PyCapsule_GetName.restype = ctypes.c_char_p
_PyCapsule_GetName.argtypes = [ctypes.py_object]

# Capsule names must outlive the capsules: module constants do.
_NAME_LEGACY = b"dltensor"
_NAME_VERSIONED = b"dltensor_versioned"

KDL_CPU, KDL_CUDA = 1, 2
DL_FLOAT16, DL_BFLOAT16, DL_FLOAT32, DL_FLOAT64 = (2, 16), (4, 16), (2, 32), (2, 64)
FAKE_DEVICE_PTR = 0x7F0000000000  # 256-byte aligned; never dereferenced by these tests
READ_ONLY, IS_COPIED = 1, 2


def capsule_name(capsule):
    return _PyCapsule_GetName(capsule).decode()


class FakeDLPack:
    """DLPack producer of any device, dtype, shape, strides and address; records how it was asked
    (self.calls: the __dlpack__ keyword arguments) and counts deleter calls."""

    def __init__(self, shape, *, device=(KDL_CUDA, 0), dtype=DL_FLOAT16, data=FAKE_DEVICE_PTR,
                 strides=None, byte_offset=0, versioned=True, flags=0, knows_max_version=True,
                 owner=None):
        self.shape = tuple(shape)
        self.device = device
        self.dtype = dtype
        self.data = data
        self.strides = strides
        self.byte_offset = byte_offset
        self.versioned = versioned
        self.flags = flags
        self.knows_max_version = knows_max_version
        self.owner = owner  # e.g. the NumPy array `data` points into
        self.calls = []
        self.capsules = []
        self.deleter_calls = 0
        self._keep = []

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, **kwargs):
        if "max_version" in kwargs and not self.knows_max_version:
            raise TypeError("__dlpack__() got an unexpected keyword argument 'max_version'")
        self.calls.append(kwargs)
        max_version = kwargs.get("max_version")
        versioned = self.versioned and max_version is not None and max_version[0] >= 1
        ndim = len(self.shape)
        shape = (ctypes.c_int64 * max(ndim, 1))(*self.shape)
        strides = (ctypes.c_int64 * max(ndim, 1))(*self.strides) if self.strides else None
        managed = _DLManagedTensorVersioned() if versioned else _DLManagedTensor()
        tensor = managed.dl_tensor
        tensor.data = self.data
        tensor.device = _DLDevice(*self.device)
        tensor.ndim = ndim
        tensor.dtype = _DLDataType(self.dtype[0], self.dtype[1], 1)
        tensor.shape = shape
        tensor.strides = strides
        tensor.byte_offset = self.byte_offset
        if versioned:
            managed.version = _DLPackVersion(1, 1)
            managed.flags = self.flags

        def deleter(_address):
            self.deleter_calls += 1

        callback = _DELETER(deleter)
        managed.deleter = callback
        self._keep += [shape, strides, managed, callback]
        capsule = _PyCapsule_New(ctypes.addressof(managed),
                                 _NAME_VERSIONED if versioned else _NAME_LEGACY, None)
        self.capsules.append(capsule)
        return capsule


def host_dlpack(array, **kw):
    """A FakeDLPack over a NumPy array's memory (host), with the array's element strides."""
    dtype = {np.dtype(np.float16): DL_FLOAT16, np.dtype(np.float32): DL_FLOAT32,
             np.dtype(np.float64): DL_FLOAT64}.get(array.dtype, DL_BFLOAT16)
    strides = [s // array.itemsize for s in array.strides]
    return FakeDLPack(array.shape, device=(KDL_CPU, 0), dtype=kw.pop("dtype", dtype),
                      data=array.ctypes.data, strides=kw.pop("strides", strides), owner=array,
                      **kw)


class FakeCAI:
    """An object exposing only __cuda_array_interface__ (v3), with a fake device pointer."""

    def __init__(self, shape, *, typestr="<f2", ptr=FAKE_DEVICE_PTR, strides=None,
                 readonly=False, stream=None, mask=None, version=3):
        self.__cuda_array_interface__ = {
            "shape": tuple(shape), "typestr": typestr, "data": (ptr, readonly),
            "strides": strides, "version": version,
        }
        if stream is not None:
            self.__cuda_array_interface__["stream"] = stream
        if mask is not None:
            self.__cuda_array_interface__["mask"] = mask


class NumpyProducer:
    """Forwards NumPy's own DLPack export: versioned capsules (max_version forwarded) or legacy
    ones (a producer from before max_version existed). Keeps the capsules it handed out."""

    def __init__(self, array, versioned):
        self.array = array
        self.versioned = versioned
        self.capsules = []

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()

    def __dlpack__(self, *, stream=None, **kwargs):
        if self.versioned:
            capsule = self.array.__dlpack__(stream=stream, max_version=kwargs.get("max_version"))
        elif "max_version" in kwargs:
            raise TypeError("__dlpack__() got an unexpected keyword argument 'max_version'")
        else:
            capsule = self.array.__dlpack__(stream=stream)
        self.capsules.append(capsule)
        return capsule


def gpu_present():
    """True when the current CUDA device answers (launch_config for it does not raise CudaError)."""
    try:
        fa.launch_config(batch=1, seqlen_q=1, seqlen_k=1, heads_q=1, heads_kv=1, head_dim=64,
                         dtype="float16")
    except fa.CudaError:
        return False
    except Exception:  # a GPU this build has no kernel for is still a GPU
        return True
    return True


def make_qkv(rng, batch=2, seqlen_q=17, seqlen_k=23, heads_q=4, heads_kv=2, head_dim=32,
             dtype=np.float16):
    q = rng.standard_normal((batch, seqlen_q, heads_q, head_dim)).astype(dtype)
    k = rng.standard_normal((batch, seqlen_k, heads_kv, head_dim)).astype(dtype)
    v = rng.standard_normal((batch, seqlen_k, heads_kv, head_dim)).astype(dtype)
    return q, k, v


def invalid_device_call(**kwargs):
    """An attention call on a fake CUDA producer that validation rejects (3-D q) before any CUDA
    call: returns the producer, to inspect how it was asked."""
    producer = FakeDLPack((1, 16, 64))
    with pytest.raises(ValueError, match="q must be 4-D"):
        fa.attention(producer, producer, producer, **kwargs)
    return producer


# ------------------------------------------------------------------------------------------------
# NumPy in, NumPy out


def test_numpy_inputs_give_numpy_outputs(rng):
    q, k, v = make_qkv(rng)
    out, lse = fa.attention(q, k, v, return_lse=True, device="cpu")
    assert type(out) is np.ndarray and out.dtype == np.float16 and out.shape == q.shape
    assert out.flags.c_contiguous
    assert type(lse) is np.ndarray and lse.dtype == np.float32 and lse.shape == (2, 4, 17)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    only_out = fa.attention(q, k, v, device="cpu")
    assert np.array_equal(only_out, out)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_strided_host_inputs_equal_their_contiguous_copies(rng, dtype):
    base_q = rng.standard_normal((2, 4, 17, 32)).astype(dtype)       # SDPA layout (B, H, S, D)
    q = base_q.transpose(0, 2, 1, 3)                                  # (B, S, H, D) view
    wide_k = rng.standard_normal((2, 23, 2, 64)).astype(dtype)
    k = wide_k[..., ::2]                                              # head_dim stride 2
    v = rng.standard_normal((2, 23, 2, 32)).astype(dtype)[:, ::-1]   # negative seq stride
    assert not q.flags.c_contiguous and k.strides[-1] == 2 * k.itemsize and v.strides[1] < 0

    expected, expected_lse = fa.attention(np.ascontiguousarray(q), np.ascontiguousarray(k),
                                          np.ascontiguousarray(v), causal=True, return_lse=True,
                                          device="cpu")
    got, got_lse = fa.attention(q, k, v, causal=True, return_lse=True, device="cpu")
    assert np.array_equal(got, expected) and np.array_equal(got_lse, expected_lse)

    # A strided out= (head_dim stride 2) receives the same values and is returned as given.
    out_base = np.full((2, 17, 4, 64), 7, dtype)
    out = out_base[..., ::2]
    returned = fa.attention(q, k, v, causal=True, out=out, device="cpu")
    assert returned is out
    assert np.array_equal(out, expected)
    assert np.all(out_base[..., 1::2] == 7), "elements between the strided out's were touched"


def test_fortran_order_and_read_only_inputs(rng):
    q, k, v = make_qkv(rng)
    expected = fa.attention(q, k, v, device="cpu")
    qf = np.asfortranarray(q)
    kr = k.copy()
    kr.flags.writeable = False
    assert np.array_equal(fa.attention(qf, kr, v, device="cpu"), expected)


def test_out_buffer_is_filled_and_returned(rng):
    q, k, v = make_qkv(rng)
    expected = fa.attention(q, k, v, device="cpu")
    out = np.full_like(q, np.nan)
    result, lse = fa.attention(q, k, v, out=out, return_lse=True, device="cpu")
    assert result is out and np.array_equal(out, expected) and lse.shape == (2, 4, 17)


def test_array_like_host_inputs_are_viewed_through_numpy(rng):
    q, k, v = make_qkv(rng)

    class ArrayInterfaceOnly:
        def __init__(self, a):
            self.__array_interface__ = a.__array_interface__
            self._a = a

    expected = fa.attention(q, k, v, device="cpu")
    got = fa.attention(ArrayInterfaceOnly(q), k, v, device="cpu")
    assert np.array_equal(got, expected)


def test_concurrent_host_calls_agree(rng):
    """The GIL is released around the host reference: threads run it side by side."""
    from concurrent.futures import ThreadPoolExecutor

    q, k, v = make_qkv(rng, seqlen_q=64, seqlen_k=96)
    expected = fa.attention(q, k, v, causal=True, device="cpu")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: fa.attention(q, k, v, causal=True, device="cpu"),
                                range(16)))
    assert all(np.array_equal(r, expected) for r in results)


# ------------------------------------------------------------------------------------------------
# DLPack consumption


@pytest.mark.parametrize("versioned", [True, False], ids=["versioned", "legacy"])
def test_numpy_dlpack_capsules_are_consumed(rng, versioned):
    q, k, v = make_qkv(rng)
    expected = fa.attention(q, k, v, device="cpu")
    refcounts = [sys.getrefcount(a) for a in (q, k, v)]
    producers = [NumpyProducer(a, versioned) for a in (q, k, v)]
    got = fa.attention(*producers, device="cpu")
    assert np.array_equal(got, expected)
    used = "used_dltensor_versioned" if versioned else "used_dltensor"
    for producer in producers:
        assert len(producer.capsules) == 1
        assert capsule_name(producer.capsules[0]) == used
    del producers, producer, got
    gc.collect()
    # NumPy's deleter drops the reference its export took: back to where we started.
    assert [sys.getrefcount(a) for a in (q, k, v)] == refcounts


@pytest.mark.parametrize("versioned", [True, False], ids=["versioned", "legacy"])
def test_dlpack_deleter_runs_exactly_once(rng, versioned):
    q, k, v = make_qkv(rng, dtype=np.float32)
    expected = fa.attention(q, k, v, device="cpu")
    producers = [host_dlpack(a, versioned=versioned) for a in (q, k, v)]
    got = fa.attention(*producers, device="cpu")
    assert np.array_equal(got, expected)
    for p in producers:
        assert p.deleter_calls == 1
        wanted = "used_dltensor_versioned" if versioned else "used_dltensor"
        assert capsule_name(p.capsules[0]) == wanted
        assert p.calls == [{"max_version": (1, 1)}], "host producers get no stream"


def test_dlpack_deleter_runs_once_when_validation_fails():
    producer = invalid_device_call()
    assert producer.deleter_calls == 3  # q, k and v were each exported once and given back
    assert all(capsule_name(c) == "used_dltensor_versioned" for c in producer.capsules)


def test_dlpack_producer_without_max_version_is_asked_again(rng):
    q, k, v = make_qkv(rng, dtype=np.float32)
    p = host_dlpack(q, knows_max_version=False)
    got = fa.attention(p, k, v, device="cpu")
    assert np.array_equal(got, fa.attention(q, k, v, device="cpu"))
    assert p.calls == [{}] and p.deleter_calls == 1
    assert capsule_name(p.capsules[0]) == "used_dltensor"


def test_dlpack_byte_offset_and_null_strides(rng):
    q, k, v = make_qkv(rng, dtype=np.float32)
    padded = np.concatenate([np.zeros(5, np.float32), q.ravel()])
    base = padded.ctypes.data
    p = FakeDLPack(q.shape, device=(KDL_CPU, 0), dtype=DL_FLOAT32, data=base,
                   byte_offset=5 * 4, strides=None, owner=padded)
    got = fa.attention(p, k, v, device="cpu")
    assert np.array_equal(got, fa.attention(q, k, v, device="cpu"))
    assert p.deleter_calls == 1


def test_host_bfloat16_through_dlpack(rng):
    """bfloat16 has no NumPy dtype: it arrives as DLPack kDLBfloat and comes back as uint16
    bit patterns (ml_dtypes.bfloat16 when imported; a torch tensor for torch inputs)."""
    q32, k32, v32 = make_qkv(rng, dtype=np.float32)
    as_bits = [(a.view(np.uint32) >> 16).astype(np.uint16) for a in (q32, k32, v32)]
    producers = [host_dlpack(b, dtype=DL_BFLOAT16) for b in as_bits]
    out = fa.attention(*producers, device="cpu")
    if "ml_dtypes" in sys.modules:
        out = out.view(np.uint16)
    assert out.dtype == np.uint16 and out.shape == q32.shape
    widened = (out.astype(np.uint32) << 16).view(np.float32)
    exact = [(b.astype(np.uint32) << 16).view(np.float32) for b in as_bits]
    reference = fa.attention(*exact, device="cpu")
    assert np.max(np.abs(widened - reference)) < 2e-2


# ------------------------------------------------------------------------------------------------
# stream= and the stream a CUDA DLPack producer is handed


class TorchLikeStream:
    cuda_stream = 9


class CupyLikeStream:
    ptr = 11


class ProtocolStream:
    def __cuda_stream__(self):
        return (0, 13)


@pytest.mark.parametrize("stream, handed", [
    (None, 1),             # legacy default stream: DLPack spells it 1, never 0
    (0, 1),
    (7, 7),
    (TorchLikeStream(), 9),
    (CupyLikeStream(), 11),
    (ProtocolStream(), 13),
], ids=["none", "zero", "int", "cuda_stream", "ptr", "__cuda_stream__"])
def test_cuda_producers_are_handed_our_stream(stream, handed):
    producer = invalid_device_call(stream=stream)
    assert producer.calls[0] == {"stream": handed, "max_version": (1, 1)}


@pytest.mark.parametrize("stream, error, match", [
    ("fast", TypeError, "stream must be an int handle or an object with"),
    (-1, ValueError, "stream must be a non-negative int handle, got -1"),
    (True, TypeError, "stream must be an int handle or a stream object, got bool"),
    (object(), TypeError, "stream must be an int handle or an object with"),
])
def test_bad_stream_arguments(rng, stream, error, match):
    q, k, v = make_qkv(rng, batch=0)
    with pytest.raises(error, match=match):
        fa.attention(q, k, v, stream=stream)


# ------------------------------------------------------------------------------------------------
# kernel= and device= spellings


@pytest.mark.parametrize("kernel", [None, "auto", "sm80", "sm90", "SM90"])
def test_kernel_spellings_are_accepted(rng, kernel):
    q, k, v = make_qkv(rng, batch=0)  # empty: nothing launches, so no GPU is needed
    out = fa.attention(q, k, v, kernel=kernel)
    assert out.shape == q.shape


@pytest.mark.parametrize("kernel", ["sm70", "hopper", 90, ""])
def test_unknown_kernels_are_refused(rng, kernel):
    q, k, v = make_qkv(rng, batch=0)
    with pytest.raises(ValueError, match=r"kernel must be None, 'auto', 'sm80' or 'sm90', got"):
        fa.attention(q, k, v, kernel=kernel)


def test_kernel_names_reach_launch_config():
    shape = dict(batch=1, seqlen_q=256, seqlen_k=256, heads_q=2, heads_kv=2, head_dim=128,
                 dtype="float16", arch=(9, 0))
    families = fa.build_info()["families"]
    for name in ("sm80", "sm90"):
        if families.get(name):
            assert fa.launch_config(kernel=name, **shape)["family"] == name
    with pytest.raises(ValueError, match="kernel must be"):
        fa.launch_config(kernel="sm75", **shape)


class DeviceLike:
    """Prints like torch.device."""

    def __init__(self, text):
        self.type = text.split(":")[0]
        self._text = text

    def __str__(self):
        return self._text


@pytest.mark.parametrize("device", ["cpu", "CPU", DeviceLike("cpu")])
def test_cpu_device_spellings(rng, device):
    q, k, v = make_qkv(rng)
    assert np.array_equal(fa.attention(q, k, v, device=device),
                          fa.attention(q, k, v, device="cpu"))


@pytest.mark.parametrize("device", [None, "cuda", "cuda:0", 0, DeviceLike("cuda:0")])
def test_gpu_device_spellings_parse(rng, device):
    q, k, v = make_qkv(rng, seqlen_q=0)  # empty output: parsed, nothing launched
    assert fa.attention(q, k, v, device=device).shape == q.shape


# ------------------------------------------------------------------------------------------------
# DeviceArray, exercised without a GPU through zero-size results


def empty_device_result(dtype=DL_FLOAT16, device=0, return_lse=True):
    q = FakeDLPack((2, 0, 4, 64), dtype=dtype, device=(KDL_CUDA, device))
    kv = FakeDLPack((2, 5, 2, 64), dtype=dtype, device=(KDL_CUDA, device))
    return fa.attention(q, kv, kv, return_lse=return_lse)


def test_zero_size_device_call_returns_device_arrays_without_cuda():
    out, lse = empty_device_result()
    assert isinstance(out, fa.DeviceArray) and isinstance(lse, fa.DeviceArray)
    assert out.shape == (2, 0, 4, 64) and out.strides == (256, 256, 64, 1)
    assert out.dtype == "float16" and out.device == 0 and out.ptr == 0
    assert out.nbytes == 0 and out.size == 0 and out.ndim == 4 and out.stream == 0
    assert lse.shape == (2, 4, 0) and lse.dtype == "float32"
    assert out.__dlpack_device__() == (2, 0)
    assert "DeviceArray(shape=(2, 0, 4, 64), dtype=float16, device=cuda:0" in repr(out)
    host = out.to_numpy()
    assert host.shape == (2, 0, 4, 64) and host.dtype == np.float16


def test_device_array_cuda_array_interface():
    out, lse = empty_device_result()
    cai = out.__cuda_array_interface__
    assert cai == {"shape": (2, 0, 4, 64), "typestr": "<f2", "data": (0, False),
                   "strides": None, "version": 3, "stream": 1}
    assert lse.__cuda_array_interface__["typestr"] == "<f4"
    bf16, _ = empty_device_result(dtype=DL_BFLOAT16)
    assert bf16.dtype == "bfloat16"
    with pytest.raises(AttributeError, match="use __dlpack__"):
        bf16.__cuda_array_interface__
    assert not hasattr(bf16, "__cuda_array_interface__")


def test_device_array_dlpack_export():
    out, _ = empty_device_result(dtype=DL_BFLOAT16)
    start = sys.getrefcount(out)
    legacy = out.__dlpack__()
    assert capsule_name(legacy) == "dltensor"
    assert sys.getrefcount(out) == start + 1, "the capsule holds the array"
    versioned = out.__dlpack__(max_version=(1, 1), stream=-1)
    assert capsule_name(versioned) == "dltensor_versioned"
    assert capsule_name(out.__dlpack__(max_version=(0, 8))) == "dltensor"
    del legacy, versioned
    gc.collect()
    assert sys.getrefcount(out) == start, "unconsumed capsules give their reference back"
    assert capsule_name(out.__dlpack__(copy=False, dl_device=(2, 0))) == "dltensor"
    # DLPack disallows stream=0; older consumers sent it for the legacy default stream.
    assert capsule_name(out.__dlpack__(stream=0)) == "dltensor"


def test_cuda_array_interface_inputs_without_a_gpu():
    """Zero-size CUDA-array-interface inputs: accepted (stream 0 read as the legacy default),
    nothing launched; the device is not in the interface, so the result says cuda:0."""
    q = FakeCAI((1, 0, 2, 64), stream=0)
    kv = FakeCAI((1, 3, 2, 64), stream=2, ptr=0)
    out = fa.attention(q, kv, kv)
    assert isinstance(out, fa.DeviceArray) and out.shape == (1, 0, 2, 64) and out.device == 0


@pytest.mark.parametrize("kwargs, error, match", [
    ({"copy": True}, BufferError, "copy=True is not supported"),
    ({"dl_device": (1, 0)}, BufferError, "would need a copy"),
    ({"dl_device": (2, 3)}, BufferError, "would need a copy"),
    ({"stream": -2}, ValueError, "stream must be -1, None or a handle, got -2"),
    ({"stream": "s"}, TypeError, "stream must be an int or None"),
])
def test_device_array_dlpack_refusals(kwargs, error, match):
    out, _ = empty_device_result()
    with pytest.raises(error, match=match):
        out.__dlpack__(**kwargs)


def test_device_array_dlpack_is_keyword_only():
    out, _ = empty_device_result()
    with pytest.raises(TypeError):
        out.__dlpack__(1)


def test_device_array_is_not_constructible():
    with pytest.raises(TypeError):
        fa.DeviceArray()


def test_device_array_feeds_back_through_dlpack():
    """Our own producer and consumer agree: a DeviceArray is a valid (empty) q."""
    out, _ = empty_device_result()
    start = sys.getrefcount(out)
    kv = FakeDLPack((2, 5, 2, 64))
    again = fa.attention(out, kv, kv)
    assert isinstance(again, fa.DeviceArray) and again.shape == out.shape
    del again
    gc.collect()
    assert sys.getrefcount(out) == start, "the consumed capsule's deleter released the array"


def test_device_array_keeps_a_stream_object_alive():
    stream = CupyLikeStream()
    start = sys.getrefcount(stream)
    q = FakeDLPack((1, 0, 2, 64))
    kv = FakeDLPack((1, 3, 2, 64))
    out = fa.attention(q, kv, kv, stream=stream)
    assert out.stream == 11
    assert sys.getrefcount(stream) == start + 1
    del out
    gc.collect()
    assert sys.getrefcount(stream) == start


# ------------------------------------------------------------------------------------------------
# torch tensors on the host (skipped without torch)


def test_torch_cpu_tensors_give_torch_tensors(rng):
    torch = pytest.importorskip("torch")
    q, k, v = make_qkv(rng, dtype=np.float32)
    out, lse = fa.attention(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v),
                            return_lse=True, device="cpu")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert isinstance(lse, torch.Tensor) and lse.dtype == torch.float32
    assert np.array_equal(out.numpy(), fa.attention(q, k, v, device="cpu"))
    tq, tk, tv = (torch.from_numpy(a).to(torch.bfloat16) for a in (q, k, v))
    out_bf16 = fa.attention(tq, tk, tv, device="cpu")
    assert out_bf16.dtype == torch.bfloat16 and out_bf16.shape == tq.shape


# ------------------------------------------------------------------------------------------------
# GPU (skipped with a reason without a GPU and torch / CuPy)


def test_torch_bfloat16_round_trip_through_device_array(torch_cuda):
    torch = torch_cuda
    q = torch.randn(2, 129, 4, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 77, 2, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    stream = torch.cuda.current_stream()
    array, lse = _C.forward(q, k, v, causal=True, return_lse=True, stream=stream.cuda_stream)
    assert isinstance(array, fa.DeviceArray) and array.dtype == "bfloat16"
    tensor = torch.from_dlpack(array)
    assert tensor.data_ptr() == array.ptr, "torch.from_dlpack must not copy"
    assert tensor.dtype == torch.bfloat16 and tuple(tensor.shape) == array.shape
    assert torch.from_dlpack(lse).data_ptr() == lse.ptr
    public = fa.attention(q, k, v, causal=True)
    assert isinstance(public, torch.Tensor) and torch.equal(public, tensor)
    widened = array.to_numpy()
    assert widened.dtype == np.float32
    assert np.array_equal(widened, tensor.float().cpu().numpy())


def test_torch_out_buffer_and_other_stream(torch_cuda):
    torch = torch_cuda
    q = torch.randn(1, 64, 2, 64, device="cuda", dtype=torch.float16)
    expected = fa.attention(q, q, q)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    out = torch.empty_like(q)
    assert fa.attention(q, q, q, out=out, stream=side) is out
    assert fa.last_launch()["stream"] == side.cuda_stream
    # A DeviceArray made on `side` and consumed on the current stream is ordered by an event.
    array = _C.forward(q, q, q, stream=side.cuda_stream)[0]
    consumed = torch.from_dlpack(array)
    torch.cuda.synchronize()
    assert torch.equal(out, expected) and torch.equal(consumed, expected)


def test_cuda_array_interface_inputs(torch_cuda):
    torch = torch_cuda
    q = torch.randn(1, 100, 2, 64, device="cuda", dtype=torch.float16)

    class Wrapped:
        def __init__(self, t, stream=None):
            self.__cuda_array_interface__ = dict(t.__cuda_array_interface__)
            if stream is not None:
                self.__cuda_array_interface__["stream"] = stream
            self.t = t

    expected = fa.attention(q, q, q)
    got = fa.attention(Wrapped(q), Wrapped(q), Wrapped(q))
    assert isinstance(got, fa.DeviceArray) and got.device == q.device.index
    assert torch.equal(torch.from_dlpack(got), expected)
    side = torch.cuda.Stream()
    with_stream = fa.attention(Wrapped(q, side.cuda_stream), Wrapped(q), Wrapped(q))
    assert torch.equal(torch.from_dlpack(with_stream), expected)


def test_numpy_inputs_on_the_gpu_match_the_host_reference(torch_cuda, rng):
    q, k, v = make_qkv(rng, seqlen_q=65, seqlen_k=80, head_dim=64)
    q_strided = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    out, lse = fa.attention(q_strided, k, v, causal=True, return_lse=True)
    assert isinstance(out, np.ndarray) and out.dtype == np.float16
    host, host_lse = fa.attention(q, k, v, causal=True, return_lse=True, device="cpu")
    assert np.max(np.abs(out.astype(np.float32) - host.astype(np.float32))) < 5e-3
    assert np.max(np.abs(lse - host_lse)) < 1e-3


def test_cupy_round_trip():
    if not gpu_present():
        pytest.skip("no CUDA GPU is available")
    cp = pytest.importorskip("cupy")
    q = cp.random.standard_normal((1, 100, 2, 64)).astype(cp.float16)
    out = fa.attention(q, q, q)
    assert isinstance(out, cp.ndarray)
    array = _C.forward(q, q, q, stream=cp.cuda.get_current_stream().ptr)[0]
    assert cp.from_dlpack(array).data.ptr == array.ptr
    assert cp.array_equal(cp.from_dlpack(array), out)


# ------------------------------------------------------------------------------------------------
# window_size, softcap and sinks through every input route


def test_host_sinks_window_and_softcap_on_the_host_reference(rng):
    """device='cpu' reads host sinks in place; the same call through DLPack-exported NumPy
    arrays gives the same bits."""
    q, k, v = make_qkv(rng, dtype=np.float32)
    sinks = rng.standard_normal(q.shape[2]).astype(np.float32)
    kw = dict(window_size=(5, 2), softcap=3.0, return_lse=True, device="cpu")
    out, lse = fa.attention(q, k, v, sinks=sinks, **kw)
    out2, lse2 = fa.attention(NumpyProducer(q, True), NumpyProducer(k, False), v,
                              sinks=NumpyProducer(sinks, True), **kw)
    assert np.array_equal(out, out2) and np.array_equal(lse, lse2)
    plain = fa.attention(q, k, v, **kw)[0]
    assert not np.array_equal(out, plain), "sinks must change the result"


def test_torch_cpu_sinks(rng):
    torch = pytest.importorskip("torch")
    q, k, v = make_qkv(rng, dtype=np.float32)
    sinks = rng.standard_normal(q.shape[2]).astype(np.float32)
    expected = fa.attention(q, k, v, sinks=sinks, causal=True, device="cpu")
    got = fa.attention(*(torch.from_numpy(a) for a in (q, k, v)), sinks=torch.from_numpy(sinks),
                       causal=True, device="cpu")
    assert isinstance(got, torch.Tensor) and np.array_equal(got.numpy(), expected)


def _torch_masked_case(torch, rng):
    q, k, v = make_qkv(rng, seqlen_q=70, seqlen_k=90, heads_q=4, heads_kv=2, head_dim=64)
    sinks = rng.standard_normal(4).astype(np.float32)
    kw = dict(window_size=(20, 3), softcap=5.0, return_lse=True)
    host = fa.attention(q, k, v, sinks=sinks, device="cpu", **kw)
    tq, tk, tv = (torch.from_numpy(a).cuda() for a in (q, k, v))
    return (tq, tk, tv), torch.from_numpy(sinks).cuda(), kw, host


def test_torch_fast_path_takes_cuda_sinks(torch_cuda, rng):
    torch = torch_cuda
    (tq, tk, tv), tsinks, kw, (host_out, host_lse) = _torch_masked_case(torch, rng)
    out, lse = fa.attention(tq, tk, tv, sinks=tsinks, **kw)
    assert isinstance(out, torch.Tensor) and out.is_cuda
    assert fa.last_launch()["kernel"].endswith("_window_softcap_sinks")
    assert np.max(np.abs(out.float().cpu().numpy() - host_out.astype(np.float32))) < 5e-3
    assert np.max(np.abs(lse.cpu().numpy() - host_lse)) < 1e-3
    # The general (DLPack) path, taken with an explicit stream, gives the same bits.
    out2, lse2 = fa.attention(tq, tk, tv, sinks=tsinks, stream=torch.cuda.current_stream(), **kw)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


def test_torch_fast_path_refuses_bad_sinks_by_name(torch_cuda, rng):
    torch = torch_cuda
    (tq, tk, tv), tsinks, kw, _ = _torch_masked_case(torch, rng)
    with pytest.raises(TypeError, match=r"sinks must be float32, got float16"):
        fa.attention(tq, tk, tv, sinks=tsinks.half(), **kw)
    with pytest.raises(ValueError, match=r"sinks must live where q lives"):
        fa.attention(tq, tk, tv, sinks=tsinks.cpu(), **kw)
    with pytest.raises(ValueError, match=r"sinks must be contiguous"):
        fa.attention(tq, tk, tv, sinks=torch.cat([tsinks, tsinks])[::2], **kw)


def test_host_sinks_are_staged_to_the_gpu(torch_cuda, rng):
    q, k, v = make_qkv(rng, seqlen_q=70, seqlen_k=90, heads_q=4, heads_kv=2, head_dim=64)
    sinks = rng.standard_normal(4).astype(np.float32)
    kw = dict(causal=True, window_size=(16, -1), return_lse=True)
    out, lse = fa.attention(q, k, v, sinks=sinks, **kw)
    host_out, host_lse = fa.attention(q, k, v, sinks=sinks, device="cpu", **kw)
    assert np.max(np.abs(out.astype(np.float32) - host_out.astype(np.float32))) < 5e-3
    assert np.max(np.abs(lse - host_lse)) < 1e-3
