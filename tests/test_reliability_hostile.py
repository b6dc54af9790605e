"""Hostile input: producers that lie, raise or hand out broken objects, read-only outputs,
arrays on the wrong GPU, non-finite values and float64. Each refusal is checked by its exact
message, and DLPack deleters are counted: a capsule the call consumed is given back exactly once,
one it did not consume is never touched.

Non-finite inputs (documented behavior, tested on the host path everywhere and on the GPU for
both kernel families): the call never crashes and never refuses; rows are independent, so a NaN
reaches only the rows that read it, and every other element is bitwise what the same call gives
without it.
    NaN / Inf in q[b, i, h, :]     out[b, i, h, :] is non-finite (NaN for NaN); lse[b, h, i] too
    NaN in k[b, j, hk, :]          every row of batch b, in the q heads of kv head hk, that sees
                                   key j (all of them without causal; i >= j - (Sk - Sq) with)
    NaN in v[b, j, hk, d]          column d of those rows; lse is unchanged

Runs without a GPU (fake producers from tests/test_interop.py, calls that stop before any CUDA
call); the GPU cases skip with a reason. Calls that may crash the interpreter or poison the CUDA
context run in a child process (run_isolated).

    python -m pytest -q tests/test_reliability_hostile.py
"""
import ctypes

import numpy as np
import pytest

import flashattn_c as fa
from conftest import gpu_unavailable_reason
from test_interop import (FAKE_DEVICE_PTR, KDL_CPU, KDL_CUDA, READ_ONLY, FakeCAI, FakeDLPack,
                          capsule_name, gpu_present, host_dlpack)
from test_reliability_support import run_isolated

Q_SHAPE, KV_SHAPE = (2, 16, 4, 64), (2, 24, 2, 64)
UNUSED_CAPSULE = (r"\.__dlpack__\(\) must return an unused DLPack capsule "
                  r"\(\"dltensor\" or \"dltensor_versioned\"\), got ")
NOT_AN_ARRAY = (r"q must be an array \(an object with __dlpack__ or __cuda_array_interface__, or "
                r"a NumPy array\), got ")

needs_gpu = pytest.mark.skipif(not gpu_present(), reason="no CUDA GPU is available")
needs_torch_gpu = pytest.mark.skipif(gpu_unavailable_reason() is not None,
                                     reason=str(gpu_unavailable_reason()))


def dev_kv():
    return FakeDLPack(KV_SHAPE), FakeDLPack(KV_SHAPE)


# ------------------------------------------------------------------------------------------------
# A DLPack producer whose capsule can be damaged after it is made

_PyCapsule_SetName = ctypes.pythonapi.PyCapsule_SetName
_PyCapsule_SetName.restype = ctypes.c_int
_PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
# Capsule names must outlive the capsules: module constants do.
CAPSULE_NAMES = {name: name.encode() for name in
                 ("used_dltensor", "used_dltensor_versioned", "dltensor_v2", "DLTensor")}


class HostileDLPack(FakeDLPack):
    """A FakeDLPack whose export is altered before it is handed out: `damage(managed)` edits the
    managed tensor in place (ctypes structure), `rename` relabels the capsule, `same_capsule`
    hands out one capsule for every call."""

    def __init__(self, shape, *, damage=None, rename=None, same_capsule=False, **kwargs):
        super().__init__(shape, **kwargs)
        self.damage = damage
        self.rename = rename
        self.same_capsule = same_capsule

    def __dlpack__(self, **kwargs):
        if self.same_capsule and self.capsules:
            return self.capsules[0]
        capsule = super().__dlpack__(**kwargs)
        managed = self._keep[-2]  # FakeDLPack keeps [shape, strides, managed, callback]
        if self.damage:
            self.damage(managed)
        if self.rename:
            assert _PyCapsule_SetName(capsule, CAPSULE_NAMES[self.rename]) == 0
        return capsule


def set_null_shape(managed):
    managed.dl_tensor.shape = None


# ------------------------------------------------------------------------------------------------
# __dlpack__ / __dlpack_device__ that raise or return the wrong thing


class Producer:
    """Configurable __dlpack__ / __dlpack_device__ pair."""

    def __init__(self, device=(KDL_CUDA, 0), export=None, device_fn=None):
        self._device = device
        self._export = export
        self._device_fn = device_fn
        self.calls = []

    def __dlpack_device__(self):
        if self._device_fn:
            return self._device_fn()
        return self._device

    def __dlpack__(self, **kwargs):
        self.calls.append(kwargs)
        return self._export(**kwargs)


def raiser(exc):
    """An export that raises a fresh copy of exc on every call (re-raising one instance would
    grow its traceback with every call)."""
    def export(**kwargs):
        raise type(exc)(*exc.args)
    return export


@pytest.mark.parametrize("device", [(KDL_CUDA, 0), (KDL_CPU, 0)], ids=["cuda", "cpu"])
@pytest.mark.parametrize("exc", [RuntimeError("Can't export tensors that require grad"),
                                 BufferError("export refused: tensor is conjugated"),
                                 ValueError("bad stream 1")], ids=lambda e: type(e).__name__)
def test_dlpack_export_errors_propagate_unchanged(device, exc):
    producer = Producer(device=device, export=raiser(exc))
    kv = FakeDLPack(KV_SHAPE, device=device)
    with pytest.raises(type(exc), match=f"^{exc}$"):
        fa.attention(producer, kv, kv)


def test_type_error_from_both_export_attempts_propagates():
    """A TypeError with max_version= is read as a pre-2023 producer and the call is retried
    without it; when the retry fails too, that error is the one raised."""
    attempts = iter([TypeError("first: unexpected keyword 'max_version'"),
                     TypeError("second: export impossible")])
    producer = Producer(export=lambda **kw: (_ for _ in ()).throw(next(attempts)))
    with pytest.raises(TypeError, match=r"^second: export impossible$"):
        fa.attention(producer, *dev_kv())
    assert [sorted(c) for c in producer.calls] == [["max_version", "stream"], ["stream"]]


def _device_query_fails():
    raise RuntimeError("device query failed")


@pytest.mark.parametrize("device_fn, error, match", [
    (_device_query_fails, RuntimeError, r"^device query failed$"),
    (lambda: [2, 0], TypeError, r"q\.__dlpack_device__\(\) must return \(device_type, device_id\), "
                                r"got list"),
    (lambda: (2,), TypeError, r"q\.__dlpack_device__\(\) must return \(device_type, device_id\), "
                              r"got tuple"),
    (lambda: ("cuda", 0), TypeError, r"'str' object cannot be interpreted as an integer"),
    (lambda: (7, 0), ValueError, r"q is on DLPack device type 7 \(vulkan\): expected cpu \(1\) or "
                                 r"cuda \(2\)"),
], ids=["raises", "list", "short-tuple", "str-type", "vulkan"])
def test_bad_dlpack_device(device_fn, error, match):
    producer = Producer(device_fn=device_fn, export=raiser(AssertionError("not reached")))
    with pytest.raises(error, match=match):
        fa.attention(producer, *dev_kv())
    assert producer.calls == [], "__dlpack__ must not be called after a bad __dlpack_device__"


@pytest.mark.parametrize("returned, type_name", [(None, "NoneType"), (7, "int"),
                                                 (b"dltensor", "bytes"), ([1], "list")])
def test_dlpack_returning_a_non_capsule(returned, type_name):
    producer = Producer(export=lambda **kw: returned)
    with pytest.raises(TypeError, match="^q" + UNUSED_CAPSULE + type_name + "$"):
        fa.attention(producer, *dev_kv())


@pytest.mark.parametrize("name", ["used_dltensor", "used_dltensor_versioned", "dltensor_v2",
                                  "DLTensor"])
@pytest.mark.parametrize("versioned", [True, False], ids=["versioned", "legacy"])
def test_wrongly_named_or_consumed_capsules_are_refused_and_left_alone(name, versioned):
    producer = HostileDLPack(Q_SHAPE, rename=name, versioned=versioned)
    with pytest.raises(TypeError, match="^q" + UNUSED_CAPSULE + "PyCapsule$"):
        fa.attention(producer, *dev_kv())
    assert capsule_name(producer.capsules[0]) == name
    assert producer.deleter_calls == 0, "a capsule the call did not consume was given back"


def test_one_capsule_handed_out_twice():
    """q consumes the capsule; k gets the same, now used, capsule and is refused. The deleter
    runs once, for q."""
    producer = HostileDLPack(Q_SHAPE, same_capsule=True)
    with pytest.raises(TypeError, match="^k" + UNUSED_CAPSULE + "PyCapsule$"):
        fa.attention(producer, producer, producer)
    assert len(producer.capsules) == 1 and producer.deleter_calls == 1
    assert capsule_name(producer.capsules[0]) == "used_dltensor_versioned"


def _set_version(major, minor):
    def damage(managed):
        managed.version.major, managed.version.minor = major, minor
    return damage


def _set(field, value):
    def damage(managed):
        setattr(managed.dl_tensor, field, value)
    return damage


def _set_lanes(lanes):
    def damage(managed):
        managed.dl_tensor.dtype.lanes = lanes
    return damage


@pytest.mark.parametrize("damage, error, match", [
    (_set_version(2, 0), BufferError,
     r"^q: DLPack version 2\.0 is not readable by this build \(DLPack 1\.x\)$"),
    (_set("ndim", -1), ValueError, r"^q: DLPack tensor has ndim -1$"),
    (_set("ndim", 1000), ValueError, r"^q must be 4-D \(batch, seqlen_q, heads_q, head_dim\), got "
                                     r"1000-D$"),
    (_set_lanes(2), TypeError, r"^unsupported dtype float16x2 for q: expected float16 or "
                               r"bfloat16 \(float32 or float64 on device='cpu'\)$"),
    (_set("data", None), ValueError, r"^q, k, v and out pointers must not be NULL$"),
], ids=["major-2", "ndim-negative", "ndim-1000", "lanes-2", "null-data"])
def test_damaged_dlpack_tensors(damage, error, match):
    producer = HostileDLPack(Q_SHAPE, damage=damage)
    with pytest.raises(error, match=match):
        fa.attention(producer, *dev_kv())
    assert producer.deleter_calls == 1, "a consumed capsule is given back exactly once"


@pytest.mark.parametrize("dims, shown", [((2, -3, 4, 64), "dimension 1 is -3"),
                                         ((2, 16, 2 ** 31, 64), "dimension 2 is 2147483648")])
def test_dlpack_sizes_out_of_range(dims, shown):
    producer = FakeDLPack(dims)
    with pytest.raises(ValueError, match=rf"^q {shown}: sizes must be in \[0, 2147483647\]$"):
        fa.attention(producer, *dev_kv())
    assert producer.deleter_calls == 1


def test_null_shape_pointer_is_refused_not_a_crash():
    report = run_isolated("""
        import numpy as np, flashattn_c as fa
        from test_interop import FakeDLPack, KDL_CPU, DL_FLOAT32
        from test_reliability_hostile import HostileDLPack, set_null_shape
        a = np.zeros((1, 4, 1, 8), np.float32)
        q = HostileDLPack(a.shape, device=(KDL_CPU, 0), dtype=DL_FLOAT32, data=a.ctypes.data,
                          owner=a, damage=set_null_shape)
        expect_raise(lambda: fa.attention(q, a, a, device="cpu"))
    """)
    assert report["status"] == "raised", f"child ended {report['status']}: {report['stderr']}"
    assert report["type"] == "ValueError" and "shape" in report["message"]


# ------------------------------------------------------------------------------------------------
# __cuda_array_interface__ with missing keys, wrong types and bad versions


@pytest.mark.parametrize("missing", ["shape", "typestr", "data"])
def test_cuda_array_interface_missing_keys(missing):
    q = FakeCAI(Q_SHAPE)
    del q.__cuda_array_interface__[missing]
    with pytest.raises(TypeError, match=r"^q\.__cuda_array_interface__ must have 'shape', "
                                        r"'typestr' and 'data'$"):
        fa.attention(q, *dev_kv())


@pytest.mark.parametrize("typestr, error, match", [
    ("<i4", TypeError, r"^unsupported dtype int32 for q: expected float16 or bfloat16"),
    ("<f8", TypeError, r"^unsupported dtype float64 for q: expected float16 or bfloat16"),
    ("|b1", TypeError, r"^unsupported dtype bool for q"),
    ("<c8", TypeError, r"^unsupported dtype complex64 for q"),
    (">f2", TypeError, r"^unsupported dtype >f2 \(big-endian\) for q"),
    ("<V2", TypeError, r"^unsupported dtype <V2 \(raw bytes\) for q"),
    ("", ValueError, r"^q\.__cuda_array_interface__\['typestr'\] is not a type string: ''$"),
    ("<f0", ValueError, r"^q\.__cuda_array_interface__\['typestr'\] is not a type string: '<f0'$"),
    ("float16", ValueError, r"is not a type string: 'float16'$"),
    (5, TypeError, r"^q\.__cuda_array_interface__\['typestr'\] must be a str, got int$"),
])
def test_cuda_array_interface_typestr(typestr, error, match):
    with pytest.raises(error, match=match):
        fa.attention(FakeCAI(Q_SHAPE, typestr=typestr), *dev_kv())


@pytest.mark.parametrize("key, value, error, match", [
    ("shape", [2, 16, 4, 64], TypeError, r"\['shape'\] must be a tuple, got list$"),
    ("shape", (2, "16", 4, 64), TypeError, r"\['shape'\] must hold ints, got str$"),
    ("data", (FAKE_DEVICE_PTR,), TypeError, r"\['data'\] must be \(pointer, read_only\)$"),
    ("data", FAKE_DEVICE_PTR, TypeError, r"\['data'\] must be \(pointer, read_only\)$"),
    ("data", (-16, False), TypeError, r"\['data'\]\[0\] must be a non-negative int pointer$"),
    ("data", ("0x10", False), TypeError, r"\['data'\]\[0\] must be a non-negative int pointer$"),
    ("strides", (2, 2, 2), TypeError, r"\['strides'\] must be None or a tuple of 4 ints$"),
    ("strides", [8192, 512, 128, 2], TypeError, r"\['strides'\] must be None or a tuple of 4 "
                                                r"ints$"),
    ("stream", "default", TypeError, r"\['stream'\] must hold ints, got str$"),
])
def test_cuda_array_interface_malformed_fields(key, value, error, match):
    q = FakeCAI(Q_SHAPE)
    q.__cuda_array_interface__[key] = value
    with pytest.raises(error, match=r"^q\.__cuda_array_interface__" + match):
        fa.attention(q, *dev_kv())


@pytest.mark.parametrize("version", [None, 99, "3", -1], ids=["missing", "99", "str", "-1"])
def test_cuda_array_interface_bad_version(version):
    # Zero-size q: a call that passes validation launches nothing, on any machine.
    q = FakeCAI((2, 0, 4, 64), version=3)
    if version is None:
        del q.__cuda_array_interface__["version"]
    else:
        q.__cuda_array_interface__["version"] = version
    with pytest.raises((TypeError, ValueError), match=r"version"):
        fa.attention(q, *dev_kv())


def test_cuda_array_interface_property_that_raises():
    class Raises:
        @property
        def __cuda_array_interface__(self):
            raise RuntimeError("stream is closed")

    class RaisesAttributeError:
        @property
        def __cuda_array_interface__(self):
            raise AttributeError("not on a device")

    with pytest.raises(RuntimeError, match=r"^stream is closed$"):
        fa.attention(Raises(), *dev_kv())
    # AttributeError reads as "no such protocol": the object is then not an array at all.
    with pytest.raises(TypeError, match="^" + NOT_AN_ARRAY + "RaisesAttributeError$"):
        fa.attention(RaisesAttributeError(), *dev_kv())


def test_dlpack_without_dlpack_device_is_not_the_protocol():
    class HalfProtocol:
        def __dlpack__(self, **kwargs):
            raise AssertionError("a __dlpack__ without __dlpack_device__ must not be called")

    with pytest.raises(TypeError, match="^" + NOT_AN_ARRAY + "HalfProtocol$"):
        fa.attention(HalfProtocol(), *dev_kv())


# ------------------------------------------------------------------------------------------------
# Host memory claimed as device memory (child process: a missed check faults the GPU)

HOST_AS_DEVICE = """
    import numpy as np, flashattn_c as fa
    from test_interop import FakeCAI, FakeDLPack, KDL_CUDA, FAKE_DEVICE_PTR
    host = np.zeros((1, 16, 2, 64), np.float16)
    assert host.ctypes.data % 16 == 0
    ptr = {ptr}
    if {dlpack}:
        q = FakeDLPack(host.shape, device=(KDL_CUDA, 0), data=ptr, owner=host)
    else:
        q = FakeCAI(host.shape, ptr=ptr)
    def call():
        out = fa.attention(q, q, q)
        out.to_numpy()  # waits for the kernel: a fault surfaces here at the latest
    expect_raise(call)
"""


@needs_gpu
@pytest.mark.parametrize("ptr", ["host.ctypes.data", "FAKE_DEVICE_PTR"], ids=["numpy", "invented"])
def test_cuda_array_interface_host_pointer_is_refused(ptr):
    report = run_isolated(HOST_AS_DEVICE.format(ptr=ptr, dlpack=False))
    assert report["status"] == "raised", f"child ended {report['status']}: {report['stderr']}"
    assert report["type"] == "ValueError", report
    assert report["message"].startswith("q points to memory that is not on a GPU "
                                        "(cudaMemoryType "), report["message"]


@needs_gpu
def test_dlpack_host_pointer_claimed_as_device_is_refused():
    report = run_isolated(HOST_AS_DEVICE.format(ptr="host.ctypes.data", dlpack=True))
    assert report["status"] == "raised", f"child ended {report['status']}: {report['stderr']}"
    assert report["type"] == "ValueError" and "GPU" in report["message"], report


# ------------------------------------------------------------------------------------------------
# Read-only outputs


@pytest.fixture
def host_qkv(rng):
    q = rng.standard_normal(Q_SHAPE).astype(np.float16)
    k = rng.standard_normal(KV_SHAPE).astype(np.float16)
    return q, k, k.copy()


@pytest.mark.parametrize("device", [None, "cpu"], ids=["gpu-path", "host-reference"])
def test_read_only_numpy_out_is_refused_before_any_work(host_qkv, device):
    q, k, v = host_qkv
    out = np.full(Q_SHAPE, 3.0, np.float16)
    out.flags.writeable = False
    with pytest.raises(ValueError, match=r"^out is read-only$"):
        fa.attention(q, k, v, out=out, device=device)
    assert np.all(out == 3.0)
    broadcast = np.broadcast_to(np.float16(3.0), Q_SHAPE)  # read-only view of one element
    with pytest.raises(ValueError, match=r"^out is read-only$"):
        fa.attention(q, k, v, out=broadcast, device=device)


def test_read_only_dlpack_host_out(host_qkv):
    q, k, v = host_qkv
    target = np.zeros(Q_SHAPE, np.float16)
    out = host_dlpack(target, flags=READ_ONLY)
    with pytest.raises(ValueError, match=r"^out is read-only$"):
        fa.attention(q, k, v, out=out, device="cpu")
    assert out.deleter_calls == 1 and np.all(target == 0)


def test_read_only_device_out_is_refused():
    q = FakeDLPack(Q_SHAPE)
    for out in (FakeCAI(Q_SHAPE, readonly=True), FakeDLPack(Q_SHAPE, flags=READ_ONLY)):
        with pytest.raises(ValueError, match=r"^out is read-only$"):
            fa.attention(q, *dev_kv(), out=out)


# ------------------------------------------------------------------------------------------------
# out sharing memory with an input

OVERLAP = (r"^out overlaps {} in memory: attention cannot write its result over an input it is "
           r"still reading$")


@pytest.mark.parametrize("device", [None, "cpu"], ids=["gpu-path", "host-reference"])
def test_out_over_an_input_is_refused_before_any_work(host_qkv, device):
    """out=q, and out half-way into a buffer that also holds k: refused by name, nothing
    written. Disjoint halves of one buffer and interleaved views (gaps between their elements)
    are not refused."""
    q, k, v = host_qkv
    before = q.copy()
    with pytest.raises(ValueError, match=OVERLAP.format("q")):
        fa.attention(q, k, v, out=q, device=device)
    assert np.array_equal(q, before)
    shared = np.zeros(2 * q.size, np.float16)
    k_in_shared = shared[:k.size].reshape(k.shape)
    k_in_shared[...] = k
    with pytest.raises(ValueError, match=OVERLAP.format("k")):
        fa.attention(q, k_in_shared, v, out=shared[k.size // 2:][:q.size].reshape(q.shape),
                     device=device)
    if device == "cpu":
        expected = fa.attention(q, k, v, device="cpu")
        after = shared[-q.size:].reshape(q.shape)
        assert np.array_equal(fa.attention(q, k_in_shared, v, out=after, device="cpu"), expected)
        packed = np.zeros(q.shape[:3] + (2 * q.shape[3],), np.float16)
        packed[..., :q.shape[3]] = q
        got = fa.attention(packed[..., :q.shape[3]], k, v, out=packed[..., q.shape[3]:],
                           device="cpu")
        assert np.array_equal(got, expected)


@pytest.mark.parametrize("op", ["attention_backward", "attention_varlen_backward"])
def test_two_gradients_into_one_buffer_are_refused_before_any_work(rng, op):
    """dk=buf, dv=buf would leave one gradient written over the other: refused by name, the
    buffer untouched. dk and dv in disjoint halves of one buffer are written as given."""
    make = lambda *s: rng.standard_normal(s).astype(np.float32)
    q, k, v = make(1, 5, 2, 8), make(1, 5, 1, 8), make(1, 5, 1, 8)
    out, lse = fa.attention(q, k, v, return_lse=True, device="cpu")
    dout = np.ones_like(q)
    if op == "attention_backward":
        call = lambda **g: fa.attention_backward(dout, q, k, v, out, lse, device="cpu", **g)
        kv_shape = k.shape
    else:
        cu = np.array([0, 5], np.int32)
        call = lambda **g: fa.attention_varlen_backward(dout[0], q[0], k[0], v[0], out[0], lse[0],
                                                        cu, cu, 5, 5, device="cpu", **g)
        kv_shape = k.shape[1:]
    expected = call()
    buf = np.full(kv_shape, 7.0, np.float32)
    with pytest.raises(ValueError, match=r"^d[kv] overlaps d[kv] in memory: \w+ writes both, "
                                         r"so one result would overwrite the other$"):
        call(dk=buf, dv=buf)
    assert np.all(buf == 7.0)
    halves = np.zeros((2,) + kv_shape, np.float32)
    got = call(dk=halves[0], dv=halves[1])
    assert np.array_equal(halves[0], expected[1]) and np.array_equal(halves[1], expected[2])
    assert got[1] is halves[0] or np.shares_memory(got[1], halves[0])


def test_an_empty_view_inside_another_buffer_is_not_an_overlap(rng):
    """seqlen_k == 0: k (forward) and dk (backward) have no element, so where their pointers lie
    (here inside out's and dq's buffer) shares no byte with anything."""
    from numpy.lib.stride_tricks import as_strided

    q = rng.standard_normal((1, 5, 2, 8)).astype(np.float32)
    none = np.zeros((1, 0, 1, 8), np.float32)
    buf = np.full(q.size + 8, 7.0, np.float32)
    # no element, its pointer inside buf
    inside = as_strided(buf[4:], shape=none.shape, strides=(32, 32, 32, 4))
    assert inside.__array_interface__["data"][0] > buf.__array_interface__["data"][0]
    first = buf[:q.size].reshape(q.shape)
    assert np.all(fa.attention(q, inside, none, out=first, device="cpu") == 0)
    out, lse = fa.attention(q, none, none, return_lse=True, device="cpu")
    first[...] = 7.0
    grads = fa.attention_backward(np.ones_like(q), q, none, none, out, lse, dq=first, dk=inside,
                                  device="cpu")
    assert np.all(first == 0) and grads[1].shape == none.shape


def test_out_over_a_device_input_is_refused():
    q = FakeCAI(Q_SHAPE, ptr=FAKE_DEVICE_PTR)
    k = FakeCAI(KV_SHAPE, ptr=FAKE_DEVICE_PTR + 2 ** 20)
    v = FakeCAI(KV_SHAPE, ptr=FAKE_DEVICE_PTR + 2 ** 21)
    with pytest.raises(ValueError, match=OVERLAP.format("v")):
        fa.attention(q, k, v, out=FakeCAI(Q_SHAPE, ptr=FAKE_DEVICE_PTR + 2 ** 21 + 64))


# ------------------------------------------------------------------------------------------------
# float64


def test_float64_is_a_clear_type_error_on_the_gpu_path(host_qkv):
    q, k, v = host_qkv
    with pytest.raises(TypeError, match=r"^unsupported dtype float64 for q: expected float16 or "
                                        r"bfloat16 \(float64 runs only on device='cpu'\)$"):
        fa.attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))
    with pytest.raises(TypeError, match=r"^unsupported dtype float64 for k: expected float16"):
        fa.attention(q, k.astype(np.float64), v)


def test_float64_runs_on_the_host_reference_but_does_not_mix(host_qkv):
    q, k, v = (x.astype(np.float64) for x in host_qkv)
    assert fa.attention(q, k, v, device="cpu").dtype == np.float64
    with pytest.raises(TypeError, match=r"^q, k and v must have the same dtype, got q float16, "
                                        r"k float64$"):
        fa.attention(host_qkv[0], k, v, device="cpu")


@needs_torch_gpu
def test_float64_torch_tensors_on_the_gpu():
    import torch

    q = torch.randn(*Q_SHAPE, device="cuda", dtype=torch.float64)
    k = torch.randn(*KV_SHAPE, device="cuda", dtype=torch.float64)
    with pytest.raises(TypeError, match=r"^unsupported dtype float64 for q: expected float16 or "
                                        r"bfloat16 \(float64 runs only on device='cpu'\)$"):
        fa.attention(q, k, k)


# ------------------------------------------------------------------------------------------------
# Arrays on another GPU than the stream's (needs two GPUs)


def two_gpus():
    if gpu_unavailable_reason() is not None:
        return False
    import torch

    return torch.cuda.device_count() >= 2


@pytest.mark.skipif(not two_gpus(), reason="needs two CUDA GPUs and PyTorch")
def test_inputs_on_another_gpu_than_the_stream():
    """Inputs on cuda:1 run on cuda:1; device='cuda:0' is refused by name; a stream of cuda:0 is
    refused before anything is enqueued: torch tensors by torch's own DLPack export (its
    BufferError, passed on unchanged), other device arrays and host inputs computed on cuda:1 by
    name; the same call on the inputs' own stream still works afterwards. In a child process:
    were the check missing, a launch into the wrong device's context could poison it."""
    report = run_isolated("""
        import torch, flashattn_c as fa
        q = torch.randn(1, 64, 2, 64, device="cuda:1", dtype=torch.float16)
        expected = fa.attention(q, q, q)
        torch.cuda.synchronize(1)
        facts = {"device": str(expected.device), "launch_device": fa.last_launch()["device"]}
        exc = expect_raise(lambda: fa.attention(q, q, q, device="cuda:0"))
        facts["named"] = (type(exc).__name__, str(exc))
        stream0 = torch.cuda.Stream(device="cuda:0")
        exc = expect_raise(lambda: fa.attention(q, q, q, stream=stream0))
        facts["wrong_stream_torch"] = None if exc is None else type(exc).__name__
        class CudaArrayView:  # the same memory through __cuda_array_interface__ (no stream rules)
            def __init__(self, t):
                self.__cuda_array_interface__ = t.__cuda_array_interface__
        view = CudaArrayView(q)
        exc = expect_raise(lambda: fa.attention(view, view, view, stream=stream0))
        facts["wrong_stream"] = None if exc is None else [type(exc).__name__, str(exc)]
        host = q.cpu().numpy()
        exc = expect_raise(lambda: fa.attention(host, host, host, device="cuda:1",
                                                stream=stream0))
        facts["wrong_stream_host"] = None if exc is None else [type(exc).__name__, str(exc)]
        again = fa.attention(q, q, q)
        torch.cuda.synchronize(1)
        facts["again_equal"] = bool(torch.equal(again, expected))
        result(facts)
    """)
    assert "result" in report, f"child ended {report['status']}: {report['stderr']}"
    facts = report["result"]
    assert facts["device"] == "cuda:1" and facts["launch_device"] == 1
    assert facts["named"] == ["ValueError", "q is on cuda:1 but device='cuda:0' was given"]
    assert facts["wrong_stream_torch"] == "BufferError"
    assert facts["wrong_stream"] == ["ValueError", "stream belongs to cuda:0 but q is on cuda:1"]
    assert facts["wrong_stream_host"] == [
        "ValueError", "stream belongs to cuda:0 but device= selects cuda:1"]
    assert facts["again_equal"], "the module stopped working after the wrong-stream call"


# ------------------------------------------------------------------------------------------------
# NaN and Inf: reach only the rows that read them


B, SQ, SK, HQ, HKV = 2, 40, 56, 4, 2
GROUP = HQ // HKV


def poison(kind, causal, seqlen_q, seqlen_k):
    """(where to write the bad value, what value, affected out mask, affected lse mask)."""
    out_mask = np.zeros((B, seqlen_q, HQ, 1), bool)
    lse_mask = np.zeros((B, HQ, seqlen_q), bool)
    rows = np.arange(seqlen_q)
    if kind in ("q_nan", "q_inf"):
        b, i, h = 1, seqlen_q // 2, 3
        out_mask[b, i, h] = True
        lse_mask[b, h, i] = True
        value = np.nan if kind == "q_nan" else np.inf
        return ("q", (b, i, h, 7) if kind == "q_inf" else (b, i, h)), value, out_mask, lse_mask
    j = seqlen_k // 2 if kind == "k_nan" else seqlen_k // 3
    b, hk = (0, 1) if kind == "k_nan" else (1, 0)
    sees = rows >= j - (seqlen_k - seqlen_q) if causal else np.ones(seqlen_q, bool)
    heads = slice(hk * GROUP, (hk + 1) * GROUP)
    if kind == "k_nan":
        out_mask[b, sees, heads] = True
        lse_mask[b, heads, :] = sees
        return ("k", (b, j, hk)), np.nan, out_mask, lse_mask
    d = 5
    full = np.zeros(out_mask.shape[:3] + (64,), bool)
    full[b, sees, heads, d] = True
    return ("v", (b, j, hk, d)), np.nan, full, lse_mask  # lse does not read v


def nan_inputs(rng, dtype, seqlen_q, seqlen_k, head_dim):
    q = rng.standard_normal((B, seqlen_q, HQ, head_dim)).astype(np.float32)
    k = rng.standard_normal((B, seqlen_k, HKV, head_dim)).astype(np.float32)
    v = rng.standard_normal((B, seqlen_k, HKV, head_dim)).astype(np.float32)
    return [a.astype(dtype) for a in (q, k, v)]


def check_nan_propagation(kind, out_clean, lse_clean, out_bad, lse_bad, out_mask, lse_mask,
                          strict_lse):
    mask = np.broadcast_to(out_mask, out_bad.shape)
    assert mask.any() and (~mask).any()
    if kind == "q_inf":
        assert not np.isfinite(out_bad[mask]).any(), "the row that read Inf stayed finite"
    else:
        assert np.isnan(out_bad[mask]).all(), "a row that read NaN is not NaN"
    assert np.array_equal(out_bad[~mask], out_clean[~mask]), "NaN / Inf reached another row"
    assert np.isfinite(out_clean).all()
    if lse_mask.any():
        if strict_lse:
            assert np.isnan(lse_bad[lse_mask]).all(), "lse of a row that read NaN is not NaN"
        else:
            assert not np.isfinite(lse_bad[lse_mask]).any()
    assert np.array_equal(lse_bad[~lse_mask], lse_clean[~lse_mask])


KINDS = ["q_nan", "q_inf", "k_nan", "v_nan"]
CAUSAL_KINDS = [(kind, causal) for kind in KINDS for causal in (False, True)
                if not (kind == "v_nan" and causal)]  # causal v: see the module docstring


@pytest.mark.parametrize("kind, causal", CAUSAL_KINDS, ids=lambda x: str(x))
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_host_nan_and_inf_reach_only_the_rows_that_read_them(rng, kind, causal, dtype):
    q, k, v = nan_inputs(rng, dtype, SQ, SK, 64)
    out_clean, lse_clean = fa.attention(q, k, v, causal=causal, return_lse=True, device="cpu")
    (name, index), value, out_mask, lse_mask = poison(kind, causal, SQ, SK)
    arrays = {"q": q.copy(), "k": k.copy(), "v": v.copy()}
    arrays[name][index] = value
    out_bad, lse_bad = fa.attention(arrays["q"], arrays["k"], arrays["v"], causal=causal,
                                    return_lse=True, device="cpu")
    check_nan_propagation(kind, out_clean, lse_clean, out_bad, lse_bad, out_mask, lse_mask,
                          strict_lse=kind != "q_inf")


def run_gpu_nan_case(rng, family, dtype, kind, causal):
    import torch

    from test_cuda_attention import require_family

    require_family(family)
    seqlen_q, seqlen_k = 200, 300  # several query and key tiles
    q, k, v = (torch.from_numpy(a).to("cuda", getattr(torch, dtype))
               for a in nan_inputs(rng, np.float32, seqlen_q, seqlen_k, 64))
    out_clean, lse_clean = fa.attention(q, k, v, causal=causal, return_lse=True, kernel=family)
    (name, index), value, out_mask, lse_mask = poison(kind, causal, seqlen_q, seqlen_k)
    arrays = {"q": q.clone(), "k": k.clone(), "v": v.clone()}
    arrays[name][index] = value
    out_bad, lse_bad = fa.attention(arrays["q"], arrays["k"], arrays["v"], causal=causal,
                                    return_lse=True, kernel=family)
    torch.cuda.synchronize()
    as_np = lambda t: t.float().cpu().numpy()  # noqa: E731 (exact: bf16/fp16 widen exactly)
    return (as_np(out_clean), as_np(lse_clean), as_np(out_bad), as_np(lse_bad), out_mask,
            lse_mask)


@needs_torch_gpu
@pytest.mark.parametrize("kind, causal", CAUSAL_KINDS, ids=lambda x: str(x))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("family", ["sm80", "sm90"])
def test_gpu_nan_and_inf_reach_only_the_rows_that_read_them(rng, family, dtype, kind, causal):
    results = run_gpu_nan_case(rng, family, dtype, kind, causal)
    check_nan_propagation(kind, *results, strict_lse=False)


@needs_torch_gpu
@pytest.mark.parametrize("family", ["sm80", "sm90"])
def test_gpu_nan_row_lse_is_nan(rng, family):
    results = run_gpu_nan_case(rng, family, "bfloat16", "q_nan", False)
    check_nan_propagation("q_nan", *results, strict_lse=True)
