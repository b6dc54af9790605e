"""The public functions of flashattn_c over its C extension (flashattn_c._C).

What lives here and not in C: argument spelling (device=, kernel=, dtype=, arch=), stream
discovery (the stream= protocols and each framework's current stream), and output-type matching
(a torch tensor in gives a torch tensor out, CuPy gives CuPy, NumPy gives NumPy). Everything about
the arrays themselves (shapes, dtypes, strides, devices, DLPack and CUDA-array-interface import)
is checked in C, before any GPU work.
"""

import sys

from . import _C
from ._C import CudaError, DeviceArray

_DTYPE_CODES = {"float16": _C.FLOAT16, "bfloat16": _C.BFLOAT16, "float32": _C.FLOAT32}
_KERNEL_CODES = {"auto": _C.KERNEL_AUTO, "sm80": _C.KERNEL_SM80, "sm90": _C.KERNEL_SM90}
_DEVICE_HELP = "None, 'cpu', 'cuda', 'cuda:N' or an int ordinal"


def _parse_kernel(kernel):
    if kernel is None:
        return _C.KERNEL_AUTO
    if isinstance(kernel, str) and kernel.lower() in _KERNEL_CODES:
        return _KERNEL_CODES[kernel.lower()]
    raise ValueError(f"kernel must be None, 'auto', 'sm80' or 'sm90', got {kernel!r}")


def _parse_device(device):
    """(device_kind, ordinal or -1) for _C.forward."""
    if device is None:
        return _C.DEVICE_AUTO, -1
    if isinstance(device, bool):
        raise TypeError(f"device must be {_DEVICE_HELP}, got {device!r}")
    if isinstance(device, int):
        if device < 0:
            raise ValueError(f"device ordinal must be >= 0, got {device}")
        return _C.DEVICE_CUDA, device
    if isinstance(device, str):
        text = device
    elif hasattr(device, "type"):  # torch.device and the like print as 'cuda:0' / 'cpu'
        text = str(device)
    else:
        raise TypeError(f"device must be {_DEVICE_HELP}, got {type(device).__name__}")
    text = text.strip().lower()
    if text == "cpu":
        return _C.DEVICE_CPU, -1
    if text == "cuda":
        return _C.DEVICE_CUDA, -1
    if text.startswith("cuda:") and text[5:].isdigit():
        return _C.DEVICE_CUDA, int(text[5:])
    raise ValueError(f"device must be {_DEVICE_HELP}, got {device!r}")


def _stream_handle(stream):
    """(cudaStream_t as int, object to keep alive or None) from a stream= argument."""
    if isinstance(stream, bool):
        raise TypeError("stream must be an int handle or a stream object, got bool")
    if isinstance(stream, int):
        if stream < 0:
            raise ValueError(f"stream must be a non-negative int handle, got {stream}")
        return stream, None
    protocol = getattr(stream, "__cuda_stream__", None)
    if protocol is not None:
        value = protocol() if callable(protocol) else protocol
        if not (isinstance(value, tuple) and len(value) == 2):
            raise TypeError("stream.__cuda_stream__() must return (version, handle), "
                            f"got {value!r}")
        return int(value[1]), stream
    for attr in ("cuda_stream", "ptr"):  # torch.cuda.Stream, cupy.cuda.Stream
        handle = getattr(stream, attr, None)
        if handle is not None:
            return int(handle), stream
    raise TypeError(
        "stream must be an int handle or an object with __cuda_stream__(), cuda_stream or ptr, "
        f"got {type(stream).__name__}"
    )


def _framework(x):
    """'torch' or 'cupy' when x is one of theirs (only if the caller already imported it)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        return "cupy"
    return None


def _current_stream(q, framework):
    """The stream the input's framework would run on now, else the legacy default stream (0)."""
    if framework == "torch" and q.is_cuda:
        stream = sys.modules["torch"].cuda.current_stream(q.device)
        return stream.cuda_stream, stream
    if framework == "cupy":
        stream = sys.modules["cupy"].cuda.get_current_stream()
        return stream.ptr, stream
    return 0, None


def _as_framework(result, framework):
    """A _C result (DeviceArray or NumPy array) in the caller's array type, without a copy."""
    if result is None:
        return None
    if isinstance(result, DeviceArray):
        if framework == "torch":
            return sys.modules["torch"].from_dlpack(result)
        if framework == "cupy":
            return sys.modules["cupy"].from_dlpack(result)
        return result
    # A host result. NumPy has no bfloat16: _C returns its bit patterns as uint16.
    is_bf16 = result.dtype.kind == "u"
    if framework == "torch":
        torch = sys.modules["torch"]
        tensor = torch.from_numpy(result)
        return tensor.view(torch.bfloat16) if is_bf16 else tensor
    ml_dtypes = sys.modules.get("ml_dtypes")
    if is_bf16 and ml_dtypes is not None:
        return result.view(ml_dtypes.bfloat16)
    return result


_TORCH_DTYPE_CODES = {}


def _torch_layout(torch, t):
    """(data_ptr, shape, strides, dtype code, device) of a CUDA torch tensor of a GPU dtype, else
    None. Read at C speed off the tensor: the DLPack exchange costs several microseconds of
    Python per array in torch, more than the kernel itself at small sizes."""
    if not _TORCH_DTYPE_CODES:
        _TORCH_DTYPE_CODES.update({torch.float16: _C.FLOAT16, torch.bfloat16: _C.BFLOAT16})
    if not isinstance(t, torch.Tensor) or not t.is_cuda:
        return None
    code = _TORCH_DTYPE_CODES.get(t.dtype)
    if code is None:
        return None
    return (t.data_ptr(), t.shape, t.stride(), code, t.device.index)


def _torch_current_stream(torch, device):
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return raw(device.index) if raw is not None else torch.cuda.current_stream(device).cuda_stream


def _torch_empty(torch, shape, dtype, device):
    """An output from torch's allocator; running out of memory is a CudaError, as it is for
    DeviceArray outputs (cudaErrorMemoryAllocation = 2)."""
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    try:
        return torch.empty(shape, dtype=dtype, device=device)
    except oom as exc:
        error = CudaError(f"allocating a {dtype} output of shape {tuple(shape)} on {device} "
                          f"failed: cudaErrorMemoryAllocation: out of memory ({exc})")
        error.cuda_error = 2
        raise error from exc


def _torch_attention(q, k, v, causal, softmax_scale, return_lse, out, device_kind, device_index,
                     kernel_code):
    """attention() for CUDA torch tensors on torch's current stream: layouts read off the
    tensors, outputs from torch's allocator (so they are ordered on that same stream). Returns
    None when an argument is not such a tensor: the general path then takes the call (and names
    what is wrong). Validation is the C layer's, as for every other input."""
    torch = sys.modules["torch"]
    if q.dim() != 4:
        return None
    arrays = (q, k, v) if out is None else (q, k, v, out)
    layouts = [_torch_layout(torch, a) for a in arrays]
    if None in layouts:
        return None
    device = q.device
    result = out if out is not None else _torch_empty(torch, q.shape, q.dtype, device)
    if out is None:
        layouts.append(_torch_layout(torch, result))
    lse = (_torch_empty(torch, (q.shape[0], q.shape[2], q.shape[1]), torch.float32, device)
           if return_lse else None)
    _C.forward(q, k, v, result, causal=bool(causal), softmax_scale=softmax_scale,
               return_lse=bool(return_lse), stream=_torch_current_stream(torch, device),
               device_kind=device_kind, device_index=device_index, kernel=kernel_code,
               layouts=tuple(layouts), lse_ptr=lse.data_ptr() if lse is not None else 0)
    return (result, lse) if return_lse else result


def attention(q, k, v, *, causal=False, softmax_scale=None, return_lse=False, out=None,
              stream=None, device=None, kernel=None):
    """Exact softmax attention, forward: out = softmax(softmax_scale * q k^T [masked]) v.

    Shapes (FlashAttention's layout):
        q    (batch, seqlen_q, heads_q, head_dim)
        k, v (batch, seqlen_k, heads_kv, head_dim), heads_q a multiple of heads_kv: consecutive
             groups of heads_q // heads_kv query heads share one key/value head (GQA, MQA)
        out  q's shape and dtype (a new output is contiguous)
        lse  float32 (batch, heads_q, seqlen_q), natural log of the softmax denominator
    head_dim: a multiple of 8 in [8, 256]. Any strides, but device arrays need unit stride on
    head_dim: a PyTorch SDPA-layout tensor x (batch, heads, seq, head_dim) passes as
    x.transpose(1, 2) with no copy. Host arrays with other strides are copied as needed.

    dtypes: float16 and bfloat16 on the GPU (float32 accumulation); device="cpu" also takes
    float32. bfloat16 reaches flashattn_c only through DLPack (the CUDA array interface has no
    bfloat16 type string).

    Args:
        causal: key j is visible to query i when j <= i + seqlen_k - seqlen_q (bottom-right
            aligned, as FlashAttention >= 2.1). PyTorch SDPA's is_causal is top-left aligned:
            the two agree only when seqlen_q == seqlen_k. A row that sees no key (causal with
            seqlen_q > seqlen_k, or seqlen_k == 0) gets out = 0 and lse = -inf, never NaN.
        softmax_scale: default 1/sqrt(head_dim); must be finite and >= 0.
        return_lse: also return lse; the call then returns (out, lse).
        out: an array to write the result into (q's shape and dtype, writable, on q's device,
            sharing no memory with q, k or v: ValueError where it certainly does); it is
            returned as given. Nothing is written to it when the call raises.
        stream: where the GPU work is enqueued: an int cudaStream_t (0 = legacy default
            stream), or an object with __cuda_stream__() -> (version, handle), .cuda_stream
            (torch.cuda.Stream) or .ptr (cupy.cuda.Stream). Default: the current stream of the
            input's framework (torch, CuPy), else the legacy default stream. Device inputs
            imported through DLPack are ordered before this stream by their producer; a
            __cuda_array_interface__ 'stream' is waited on with an event. The call returns
            as soon as the work is enqueued (device inputs). A stream given as an object is
            kept alive by the returned DeviceArray; a raw int handle must outlive it. A stream
            of another GPU than the one the call runs on raises ValueError.
        device: None (where the inputs live: device arrays on their GPU, host arrays are copied
            to the current GPU and back), "cuda" / "cuda:N" / N (that GPU; device inputs must
            already be there), or "cpu" (the C reference on host arrays, blocking). Nothing ever
            falls back from one to the other: with no usable GPU, a GPU call raises CudaError.
        kernel: None or "auto" (the fastest family built for the GPU), "sm80" or "sm90" (that
            family or an error, never a different one). Not valid with device="cpu".

    Returns:
        out, or (out, lse): torch tensors for torch inputs, CuPy arrays for CuPy inputs, NumPy
        arrays for host inputs (host bfloat16 from a non-torch producer comes back as uint16
        bit patterns, or ml_dtypes.bfloat16 when ml_dtypes is imported), and a
        flashattn_c.DeviceArray for other device inputs (JAX, Numba, ...): pass it to your
        framework's from_dlpack for a zero-copy view.

    Zero sizes: batch, heads_q or seqlen_q == 0 gives empty outputs and launches nothing;
    seqlen_k == 0 gives out = 0 and lse = -inf.

    Raises:
        TypeError / ValueError naming the argument, with expected vs got, before any GPU work.
        flashattn_c.CudaError (a RuntimeError) when a CUDA call fails: the message carries the
            call, its source location and the CUDA error name and string.
        RuntimeError when this build has no kernel for the GPU or a launch would break the
            launch contract (384 threads per block, shared memory and grid limits).
    """
    device_kind, device_index = _parse_device(device)
    kernel_code = _parse_kernel(kernel)
    if device_kind == _C.DEVICE_CPU:
        if kernel is not None:
            raise ValueError(f"kernel={kernel!r} selects a GPU kernel family; device='cpu' runs "
                             "the host reference")
        if stream is not None:
            raise ValueError("stream= orders GPU work; device='cpu' runs the host reference")
    framework = _framework(q)
    if framework == "torch" and stream is None and device_kind != _C.DEVICE_CPU:
        fast = _torch_attention(q, k, v, causal, softmax_scale, return_lse, out, device_kind,
                                device_index, kernel_code)
        if fast is not None:
            return fast
    if stream is None:
        handle, owner = _current_stream(q, framework) if device_kind != _C.DEVICE_CPU else (0, None)
    else:
        handle, owner = _stream_handle(stream)

    result, lse = _C.forward(q, k, v, out, causal=bool(causal), softmax_scale=softmax_scale,
                             return_lse=bool(return_lse), stream=handle, device_kind=device_kind,
                             device_index=device_index, kernel=kernel_code, stream_owner=owner)
    if out is None:
        result = _as_framework(result, framework)
    if return_lse:
        return result, _as_framework(lse, framework)
    return result


def _dtype_name(dtype):
    if isinstance(dtype, str):
        return dtype
    if type(dtype).__module__ == "torch":  # torch.float16 prints as "torch.float16"
        return str(dtype).rsplit(".", 1)[-1]
    try:
        import numpy

        return numpy.dtype(dtype).name
    except TypeError:
        return str(dtype)


def launch_config(*, batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype, causal=False,
                  arch=None, kernel=None):
    """The launch attention() would make for these sizes, computed without launching.

    arch=(major, minor) computes it for a nominal GPU of that compute capability (pure host, no
    GPU needed: e.g. (8, 0) A100, (8, 9) L4, (9, 0) H100/H200); arch=None for the current GPU
    (CudaError when there is none). dtype: "float16" / "bfloat16" (or a NumPy / torch dtype).
    kernel: as in attention().

    Returns a dict: kernel (name), family, grid, block (always (384, 1, 1)), smem_bytes (dynamic
    shared memory), regs (None: known only once launched), arch, device (-1 for a nominal GPU),
    stream, block_m, block_n, stages, head_dim_padded.
    """
    name = _dtype_name(dtype)
    if name not in _DTYPE_CODES:
        raise TypeError(f"unsupported dtype {name}: expected float16 or bfloat16")
    if arch is None:
        major, minor = -1, 0
    else:
        try:
            major, minor = (int(x) for x in arch)
        except (TypeError, ValueError):
            raise ValueError(f"arch must be None or (major, minor), got {arch!r}") from None
        if major < 0 or minor < 0:
            raise ValueError(f"arch must be None or (major, minor), got {arch!r}")
    return _C.launch_config(batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, heads_q=heads_q,
                            heads_kv=heads_kv, head_dim=head_dim, dtype=_DTYPE_CODES[name],
                            causal=bool(causal), arch_major=major, arch_minor=minor,
                            kernel=_parse_kernel(kernel))


def last_launch():
    """The launch this thread issued last, or None: kernel, family, grid, block, smem_bytes,
    regs, arch, device, stream, block_m, block_n, stages, head_dim_padded."""
    return _C.last_launch()


def build_info():
    """version, threads_per_block (384), warps_per_block (12), warpgroups (3), families (kernel
    family -> compute capabilities it was compiled for, e.g. {"sm80": [80, 90], "sm90": [90]}),
    cuda_runtime_version (of the statically linked CUDA runtime, e.g. 13000). No CUDA call."""
    from . import __version__

    return {"version": __version__, **_C.build_info()}
