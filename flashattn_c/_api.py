"""The public functions of flashattn_c over its C extension (flashattn_c._C).

What lives here and not in C: argument spelling (device=, kernel=, dtype=, arch=, window_size=,
the bool flags), stream discovery (the stream= protocols and each framework's current stream),
torch autograd refusal, and output-type matching (a torch tensor in gives a torch tensor out,
CuPy gives CuPy, JAX gives JAX, NumPy gives NumPy). Everything about the arrays themselves
(shapes, dtypes, strides, devices, DLPack and CUDA-array-interface import, sinks) and the real
numbers (softmax_scale, softcap) is checked in C, before any GPU work.
"""

import os
import sys


def _missing_extension_error(exc):
    """An ImportError that says why flashattn_c._C is missing and what to do: most often a
    source checkout that was never built in place, first on sys.path (the current directory,
    or a script's folder), shadowing an installed copy."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    tree = os.path.dirname(package_dir)
    built = [f for f in os.listdir(package_dir) if f.startswith("_C.") and
             f.endswith((".so", ".pyd"))]
    if built:  # the extension is there but does not load: a broken or mismatched build
        return ImportError(
            f"flashattn_c's compiled extension {os.path.join(package_dir, built[0])} failed to "
            f"load ({exc}). Rebuild it for this Python: python setup.py build_ext --inplace "
            "(or pip install -e .)")
    from importlib.machinery import PathFinder

    others = [p for p in sys.path if os.path.abspath(p or os.curdir) != tree]
    spec = PathFinder.find_spec("flashattn_c", others)
    installed = os.path.dirname(spec.origin) if spec and spec.origin else None
    message = (f"flashattn_c was imported from {package_dir}, a source tree whose compiled "
               "extension (flashattn_c._C) is not built.")
    if installed and os.path.abspath(installed) != package_dir:
        message += (f" An installed flashattn_c is at {installed}, but the source tree comes "
                    f"first on sys.path ({tree} is the current directory or the running "
                    "script's folder) and shadows it: run from another directory, or")
    else:
        message += " Either install it (pip install .), or"
    message += (" build the source tree in place: python setup.py build_ext --inplace "
                "(or pip install -e .).")
    return ImportError(message)


try:
    from . import _C
except ImportError as _exc:  # noqa: N816
    raise _missing_extension_error(_exc) from None
from ._C import CudaError, DeviceArray

_DTYPE_CODES = {"float16": _C.FLOAT16, "bfloat16": _C.BFLOAT16, "float32": _C.FLOAT32,
                "float64": _C.FLOAT64}
# The short spellings the benchmark uses (and FlashAttention users write) mean the same dtypes.
_DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32",
                  "float": "float32", "fp64": "float64", "double": "float64"}
_KERNEL_CODES = {"auto": _C.KERNEL_AUTO, "sm80": _C.KERNEL_SM80, "sm90": _C.KERNEL_SM90}
_DEVICE_HELP = "None, 'cpu', 'cuda', 'cuda:N' or an int ordinal"


def _flag(name, value):
    """A bool argument: True / False, numpy.bool_, or a 0-d torch bool tensor. Truthiness is not
    enough (causal="False" is a non-empty string), and None is not False."""
    if isinstance(value, bool):
        return value
    if type(value).__name__ in ("bool_", "bool") and type(value).__module__ == "numpy":
        return bool(value)
    torch = sys.modules.get("torch")
    if (torch is not None and isinstance(value, torch.Tensor) and value.dtype == torch.bool
            and value.dim() == 0):
        return bool(value.item())
    raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _parse_window(window_size):
    """(left, right) ints >= -1 from window_size; -1 means unbounded on that side."""
    if window_size is _NO_WINDOW:
        return _NO_WINDOW
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise TypeError("window_size must be a pair (left, right) of ints >= -1 (-1: unbounded), "
                        f"got {window_size!r}")
    sides = []
    for side, value in zip(("left", "right"), window_size):
        if isinstance(value, bool) or not _is_int(value):
            raise TypeError(f"window_size {side} must be an int >= -1 (-1: unbounded), got "
                            f"{type(value).__name__}")
        value = int(value)
        if value < -1 or value > _INT32_MAX:
            raise ValueError(f"window_size {side} must be an int in [-1, {_INT32_MAX}] "
                             f"(-1: unbounded), got {value}")
        sides.append(value)
    return tuple(sides)


_INT32_MAX = 2**31 - 1


def _is_int(value):
    """An int or an integer NumPy scalar (not a bool)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and \
        value.dtype.kind in "iu" and getattr(value, "ndim", 1) == 0


def _needs_autograd(torch, tensors):
    """True when attention() must record a graph: grad mode is on and an input requires grad,
    or torch.compile is tracing (it then sees the op as one node of its graph)."""
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if compiling is not None and compiling():
        return any(isinstance(x, torch.Tensor) for x in tensors)
    return torch.is_grad_enabled() and any(
        isinstance(x, torch.Tensor) and x.requires_grad for x in tensors)


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
    """'torch', 'cupy' or 'jax' when x is one of theirs (only if the caller already imported
    it)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return "torch"
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        return "cupy"
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, getattr(jax, "Array", ())):
        return "jax"
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
        if framework == "jax":
            return sys.modules["jax"].dlpack.from_dlpack(result)
        return result
    # A host result. NumPy has no bfloat16: _C returns its bit patterns as uint16.
    is_bf16 = result.dtype.kind == "u"
    if framework == "torch":
        torch = sys.modules["torch"]
        tensor = torch.from_numpy(result)
        return tensor.view(torch.bfloat16) if is_bf16 else tensor
    ml_dtypes = sys.modules.get("ml_dtypes")
    if is_bf16 and (ml_dtypes is not None or framework == "jax"):
        import ml_dtypes  # jax depends on it

        result = result.view(ml_dtypes.bfloat16)
    if framework == "jax":
        # On the host: jax copies into its own buffer, as it does for any NumPy array.
        return sys.modules["jax"].numpy.asarray(result)
    return result


_TORCH_DTYPE_CODES = {}


def _torch_layout(torch, t, fixed=None):
    """(data_ptr, shape, strides, dtype code, device) of a CUDA torch tensor of a GPU dtype (or,
    with fixed a dtype code, of that one: float32 for lse and sinks, int32 for index arrays),
    else None. Read at C speed off the tensor: the DLPack exchange costs several microseconds
    of Python per array in torch, more than the kernel itself at small sizes."""
    if not _TORCH_DTYPE_CODES:
        _TORCH_DTYPE_CODES.update({torch.float16: _C.FLOAT16, torch.bfloat16: _C.BFLOAT16,
                                   torch.float32: _C.FLOAT32, torch.int32: _C.INT32})
    if not isinstance(t, torch.Tensor) or not t.is_cuda:
        return None
    code = _TORCH_DTYPE_CODES.get(t.dtype)
    if code is None or (code != fixed if fixed is not None else
                        code != _C.FLOAT16 and code != _C.BFLOAT16):
        return None
    # The C side trusts this device (no driver query), so only CUDA tensors get here;
    # get_device() gives the ordinal as an int, with no torch.device made.
    return (t.data_ptr(), t.shape, t.stride(), code, t.get_device())


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
        error.cuda_error_name = "cudaErrorMemoryAllocation"
        error.cuda_error_string = "out of memory"
        error.call_site = f"torch.empty({tuple(shape)}, dtype={dtype}, device={device})"
        raise error from exc


def _torch_call(c_op, roles, arrays, new_outputs, extra):
    """c_op (an op of _C) on CUDA torch tensors on torch's current stream: layouts read off the
    tensors, new outputs from torch's allocator (so they are ordered on that same stream).

    roles: the op's arrays in order, as _C lists them (_C.forward_roles): (name, is_output,
    fixed dtype code or None for the op's dtype). arrays: role name -> tensor, None or missing
    when absent. new_outputs: role name -> (shape, torch dtype) of each output to allocate, on
    the first role's device. extra: c_op's keyword arguments other than the arrays, stream and
    layouts. Returns role name -> tensor (outputs included), or None when an argument is not
    such a tensor: the general path then takes the call (and names what is wrong). Validation
    is the C layer's, as for every other input."""
    torch = sys.modules["torch"]
    called, layouts = {}, []
    device = None
    for name, _, fixed in roles:  # in role order, as _C allocates its own outputs
        x = arrays.get(name)
        if x is None and name in new_outputs:
            shape, dtype = new_outputs[name]
            x = _torch_empty(torch, shape, dtype, device)
        called[name] = x
        if x is None:
            layouts.append(None)
            continue
        layout = _torch_layout(torch, x, fixed)
        if layout is None:
            return None
        if device is None:  # the first role is a required input
            device = x.device
        layouts.append(layout)
    c_op(**called, stream=_torch_current_stream(torch, device), layouts=tuple(layouts), **extra)
    return called


_NO_WINDOW = (-1, -1)


def attention(q, k, v, *, causal=False, softmax_scale=None, window_size=_NO_WINDOW, softcap=0.0,
              sinks=None, return_lse=False, deterministic=False, out=None, stream=None,
              device=None, kernel=None):
    """Exact softmax attention, forward: out = softmax(softmax_scale * q k^T [masked]) v.

    Shapes (FlashAttention's layout):
        q     (batch, seqlen_q, heads_q, head_dim)
        k, v  (batch, seqlen_k, heads_kv, head_dim), heads_q a multiple of heads_kv: consecutive
              groups of heads_q // heads_kv query heads share one key/value head (GQA, MQA)
        sinks float32 (heads_q,), optional
        out   q's shape and dtype (a new output is contiguous)
        lse   float32 (batch, heads_q, seqlen_q), natural log of the softmax denominator
    head_dim: a multiple of 8 in [8, 256]. Any strides, but device arrays need unit stride on
    head_dim: a PyTorch SDPA-layout tensor x (batch, heads, seq, head_dim) passes as
    x.transpose(1, 2) with no copy. Host arrays with other strides are copied as needed.

    dtypes: float16 and bfloat16 on the GPU (float32 accumulation); device="cpu" also takes
    float32 and float64 (float64 computed in float64, so torch.autograd.gradcheck can run on
    it; lse and sinks stay float32). bfloat16 reaches flashattn_c through DLPack (the CUDA
    array interface has no bfloat16 type string) or, on the host, as an ml_dtypes.bfloat16
    NumPy array.

    Masks are aligned bottom-right, as in FlashAttention >= 2.1: with d = seqlen_k - seqlen_q,
    query i sees key j when i + d - left <= j <= i + d + right. A row that sees no key gets
    out = 0 and lse = -inf (lse = sinks[h] with sinks), never NaN.

    Args:
        causal: a bool. right = 0 (key j is visible to query i when j <= i + seqlen_k -
            seqlen_q). PyTorch SDPA's is_causal is top-left aligned: the two agree only when
            seqlen_q == seqlen_k.
        softmax_scale: a real number, default 1/sqrt(head_dim); finite, >= 0 and at most the
            largest float32 (3.4e38).
        window_size: (left, right), ints >= -1; -1 is unbounded on that side (the default
            (-1, -1) is no window). With causal=True, right is 0 whatever is given.
        softcap: a real number c >= 0; c > 0 replaces each scaled score x by c * tanh(x / c)
            (after softmax_scale, before the mask), as Gemma 2 and Grok do; 0 is off.
        sinks: None, or float32 logits, one per query head (heads_q,), contiguous, where q
            lives (a device array on q's GPU for device inputs, a host array for host inputs):
            gpt-oss attention sinks. Each row's softmax denominator gains exp(sinks[h]) (lse
            includes it) with no value row, so a row's weights sum to less than 1.
        return_lse: a bool; also return lse: the call then returns (out, lse).
        out: an array to write the result into (q's shape and dtype, writable, on q's device,
            sharing no memory with q, k or v: ValueError where it certainly does); it is
            returned as given (a torch tensor's version counter moves, as after an in-place
            op). Nothing is written to it when the call raises.
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
            already be there), or "cpu" (the C reference on host arrays, blocking; Ctrl-C
            stops it). Nothing ever falls back from one to the other: with no usable GPU, a GPU
            call raises CudaError.
        kernel: None or "auto" (the fastest family built for the GPU), "sm80" or "sm90" (that
            family or an error, never a different one). Not valid with device="cpu".

    Returns:
        out, or (out, lse): torch tensors for torch inputs, CuPy arrays for CuPy inputs, JAX
        arrays for JAX inputs, NumPy arrays for host inputs (host bfloat16 from a non-torch
        producer comes back as uint16 bit patterns, or ml_dtypes.bfloat16 when ml_dtypes is
        imported), and a flashattn_c.DeviceArray for other device inputs (Numba, ...): pass it
        to your framework's from_dlpack for a zero-copy view.

    Zero sizes: batch, heads_q or seqlen_q == 0 gives empty outputs and launches nothing;
    seqlen_k == 0 gives out = 0 and lse = -inf (sinks[h] with sinks).

    Training: with torch tensors that require grad (q, k, v, sinks) in grad mode, the call
    records a node of the autograd graph (the torch.library op flashattn_c::attention_fwd,
    whose backward is flashattn_c::attention_bwd, i.e. attention_backward()); torch.compile
    (fullgraph=True) traces it as one op. out is then a new tensor (out= raises) on torch's
    current stream (stream= raises), and lse is returned without a gradient (its
    requires_grad is False). deterministic: a bool, used by that backward (see
    attention_backward). Under torch.no_grad() the inputs are read as detached.

    Raises:
        TypeError / ValueError naming the argument, with expected vs got, before any GPU work.
        flashattn_c.CudaError (a RuntimeError) when a CUDA call fails: the message says what
            failed; attributes cuda_error, cuda_error_name, cuda_error_string and call_site.
        MemoryError when the host runs out of memory (device="cpu", host copies).
        KeyboardInterrupt (or what a signal handler raised) when device="cpu" is interrupted.
        RuntimeError when this build has no kernel for the GPU or a launch would break the
            launch contract (384 threads per block, shared memory and grid limits).
    """
    gpu = _gpu_args(device, kernel, stream)
    device_kind, device_index, kernel_code = gpu
    causal = causal if causal is True or causal is False else _flag("causal", causal)
    return_lse = (return_lse if return_lse is True or return_lse is False
                  else _flag("return_lse", return_lse))
    left, right = _parse_window(window_size)
    deterministic = _flag("deterministic", deterministic)
    framework = _framework(q)
    torch = sys.modules.get("torch")
    if torch is not None and _needs_autograd(torch, (q, k, v, sinks)):
        _refuse_autograd_options(out, stream, "q, k, v or sinks")
        softmax_scale, softcap = _scale_and_softcap(softmax_scale, softcap)
        if kernel_code == _C.KERNEL_SM90 and q.dim() == 4 and k.dim() == 4:
            _refuse_sm90_backward(q, (q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2]),
                                  False, causal, left, right, softcap, sinks, deterministic)
        from . import _torch_ops

        out, lse = _torch_ops.attention_fwd(q, k, v, sinks, causal, softmax_scale, left, right,
                                            softcap, kernel_code, device_kind, device_index,
                                            deterministic)
        return (out, lse) if return_lse else out
    if out is not None:
        _refuse_outputs_that_require_grad(torch, {"out": out})
    # Grad mode off: tensors that require grad are read as detached.
    arrays = _detached(torch, dict(q=q, k=k, v=v, out=out, sinks=sinks))
    extra = _op_keywords(gpu, causal=causal, softmax_scale=softmax_scale, window=(left, right),
                         softcap=softcap, return_lse=return_lse)
    return _forward_result(_C.forward, _C.forward_roles, arrays, extra, out, ndim=4,
                           lse_dims=(0, 2, 1), framework=framework, stream=stream)


def attention_backward(dout, q, k, v, out, lse, *, causal=False, softmax_scale=None,
                       window_size=_NO_WINDOW, softcap=0.0, sinks=None, deterministic=False,
                       dq=None, dk=None, dv=None, dsinks=None, stream=None, device=None,
                       kernel=None):
    """The gradients of attention(): (dq, dk, dv), or (dq, dk, dv, dsinks) when sinks is given.

    dout is the gradient of out, of out's shape and dtype; out and lse are what
    attention(q, k, v, ..., return_lse=True) returned for the same q, k, v and the same causal,
    softmax_scale, window_size, softcap and sinks, which must be passed again. From them, with
    no O(seqlen^2) memory:

        D = rowsum(dout * out),   dS = P * (dout v^T - D)  (times 1 - tanh^2 with a softcap)
        dq = softmax_scale dS k,  dk = softmax_scale dS^T q,  dv = P^T dout,
        dsinks[h] = -sum over batch and rows of exp(sinks[h] - lse) * D

    with dk and dv summed over the q heads that share a kv head. Rows that see no key get
    zero gradients.

    Args (the others as in attention()):
        dout, out: (batch, seqlen_q, heads_q, head_dim) in q's dtype; lse: float32
            (batch, heads_q, seqlen_q), contiguous.
        deterministic: a bool. False (the default): dq is summed with fp32 atomics (sm80) or
            TMA reductions (sm90), in the order the key blocks finish, so its last bits may
            differ between runs. True: every (query block, head) sums its key blocks in a
            fixed order, bitwise reproducible, at the cost of key blocks waiting for their
            turn. Measured on an H200 (sm90 backward, bf16, 16k tokens,
            dev/bwd_deterministic_cost.py; benches/NOTES.md, "Backward v3"): 0.93x the
            default's speed without a mask and 0.88x causal at head_dim 128, 0.89x at 64.
        dq, dk, dv, dsinks: arrays to write the gradients into (like q, k, v, sinks), returned
            as given; nothing is written to them when the call raises.
        kernel: None or "auto" (on sm_90 the sm90 family's backward where it serves the
            problem: head_dim up to 256; else the sm80 family's, which runs
            on sm_80 and newer, sm_90 included), "sm80", or "sm90" (a ValueError that says why
            where its backward does not serve the problem).

    The launches (a preprocess, the main kernel, a postprocess; each (384, 1, 1); with
    seqlen_k == 0 no main kernel, and last_launch() then describes the postprocess) and the
    device workspace they share (fp32 dq accumulator, allocated stream-ordered on the call's
    stream) are reported by last_launch() and planned by launch_config(backward=True).
    """
    gpu = _gpu_args(device, kernel, stream)
    causal = _flag("causal", causal)
    deterministic = _flag("deterministic", deterministic)
    left, right = _parse_window(window_size)
    given = dict(dq=dq, dk=dk, dv=dv, dsinks=dsinks)
    extra = _op_keywords(gpu, causal=causal, softmax_scale=softmax_scale, window=(left, right),
                         softcap=softcap, deterministic=deterministic)
    return _gradients(_C.backward, _C.backward_roles, dict(dout=dout, q=q, k=k, v=v, out=out,
                                                          lse=lse, sinks=sinks),
                      given, extra, ndim=4, stream=stream)


def _gpu_args(device, kernel, stream):
    """(device_kind, device_index, kernel code) of a call; a kernel family or a stream asks for
    GPU work, which device='cpu' (the host reference) does not do."""
    device_kind, device_index = _parse_device(device)
    kernel_code = _parse_kernel(kernel)
    if device_kind == _C.DEVICE_CPU:
        if kernel is not None:
            raise ValueError(f"kernel={kernel!r} selects a GPU kernel family; device='cpu' runs "
                             "the host reference")
        if stream is not None:
            raise ValueError("stream= orders GPU work; device='cpu' runs the host reference")
    return device_kind, device_index, kernel_code


def _op_keywords(gpu, *, causal, softmax_scale, window, softcap, **own):
    """The keywords of an op of _C other than its arrays, stream and layouts: those every op
    takes (gpu: what _gpu_args returned; window: (left, right)), then the op's own."""
    device_kind, device_index, kernel_code = gpu
    return dict(causal=causal, softmax_scale=softmax_scale, device_kind=device_kind,
                device_index=device_index, kernel=kernel_code, window_left=window[0],
                window_right=window[1], softcap=softcap, **own)


def _int_arg(name, value):
    """An int argument in [0, 2**31 - 1] (an int or an integer NumPy scalar, not a bool)."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value <= _INT32_MAX:
        raise ValueError(f"{name} must be in [0, {_INT32_MAX}], got {value}")
    return value


def _detached(torch, arrays):
    """arrays (role name -> array) with torch tensors that require grad read as detached: the
    same memory, so an array the op writes in place is still written."""
    if torch is None:
        return arrays
    Tensor = torch.Tensor
    for x in arrays.values():
        if isinstance(x, Tensor) and x.requires_grad:
            return {n: x.detach() if isinstance(x, Tensor) and x.requires_grad else x
                    for n, x in arrays.items()}
    return arrays  # the common case, on every call: nothing to detach


_OUTPUT_ROLES = {}  # an op's roles (a tuple of _C) -> the names of its outputs


def _call_op(c_op, roles, arrays, extra, *, framework, stream, torch_outputs):
    """c_op (an op of _C) on arrays (role name -> array or None), extra its other keywords:
    through torch's fast path when torch_outputs (role name -> (shape, dtype) of each new output
    to allocate) is given and no stream is, else through the general path. Returns role name ->
    output in the caller's array type for every output role of roles: a given one as it was
    passed here, None for an optional one not asked for."""
    outputs = _OUTPUT_ROLES.get(roles)
    if outputs is None:
        outputs = _OUTPUT_ROLES[roles] = tuple(name for name, is_output, _ in roles if is_output)
    device_kind = extra["device_kind"]
    given = [arrays[n] for n in outputs if arrays.get(n) is not None]
    if torch_outputs is not None and stream is None and device_kind != _C.DEVICE_CPU:
        fast = _torch_call(c_op, roles, arrays, torch_outputs, extra)
        if fast is not None:
            _written_in_place(sys.modules["torch"], given)
            return {n: fast.get(n) for n in outputs}
    if stream is None:
        # framework is q's (every op has q); the first role may be another array (dout).
        handle, owner = (_current_stream(arrays["q"], framework) if device_kind != _C.DEVICE_CPU
                         else (0, None))
    else:
        handle, owner = _stream_handle(stream)
    results = c_op(**arrays, stream=handle, stream_owner=owner, **extra)
    _written_in_place(sys.modules.get("torch"), given)
    return {n: arrays[n] if arrays.get(n) is not None else _as_framework(r, framework)
            for n, r in zip(outputs, results)}


def _forward_result(c_op, roles, arrays, extra, out, *, ndim, lse_dims, framework, stream):
    """A forward op of _C (c_op, its roles) on arrays: out (the caller's out= as given, else a
    new array), or (out, lse) when extra asks for lse. On the torch fast path a new out is
    allocated like q and lse as float32 of q's dims lse_dims (the op's lse layout), when q
    has the op's rank ndim (q's shape is read only then; another rank takes the general
    path, which names what is wrong)."""
    q = arrays["q"]
    return_lse = extra["return_lse"]
    torch_outputs = None
    if framework == "torch" and q.dim() == ndim:
        torch_outputs = {"out": (q.shape, q.dtype)}
        if return_lse:
            torch_outputs["lse"] = (tuple(q.shape[d] for d in lse_dims),
                                    sys.modules["torch"].float32)
    got = _call_op(c_op, roles, arrays, extra, framework=framework, stream=stream,
                   torch_outputs=torch_outputs)
    result = out if out is not None else got["out"]
    return (result, got["lse"]) if return_lse else result


def _gradients(c_op, roles, inputs, given, extra, *, ndim, stream):
    """A backward op of _C (c_op, its roles) on inputs (role name -> array or None) into the
    caller's dq, dk, dv and dsinks where given (else new arrays of the caller's type): (dq, dk,
    dv), plus dsinks when inputs has sinks. ndim: q's rank in the op's layout (the torch fast
    path's new gradients are allocated only when q and k have it)."""
    q, k, v, sinks = inputs["q"], inputs["k"], inputs["v"], inputs["sinks"]
    framework = _framework(q)
    torch = sys.modules.get("torch")
    _refuse_outputs_that_require_grad(torch, given)
    torch_outputs = None
    if framework == "torch" and q.dim() == ndim and k.dim() == ndim:
        torch_outputs = {"dq": (q.shape, q.dtype), "dk": (k.shape, k.dtype),
                         "dv": (v.shape, v.dtype)}
        if sinks is not None:
            torch_outputs["dsinks"] = ((q.shape[-2],), torch.float32)
    # Gradients are computed, never recorded: the inputs are read as detached.
    arrays = _detached(torch, {**inputs, **given})
    got = _call_op(c_op, roles, arrays, extra, framework=framework, stream=stream,
                   torch_outputs=torch_outputs)
    names = ("dq", "dk", "dv", "dsinks") if sinks is not None else ("dq", "dk", "dv")
    return tuple(given[n] if given[n] is not None else got[n] for n in names)


def _refuse_sm90_backward(q, sizes, varlen, causal, left, right, softcap, sinks, deterministic):
    """kernel='sm90' under autograd: the ValueError the backward's plan would raise (the sm90
    backward serves head_dim up to 256), raised at the forward, before any GPU work, rather
    than after it. sizes: (batch, seqlen_q, seqlen_k, heads_q, heads_kv), the maxima when
    varlen."""
    dtype = str(q.dtype).replace("torch.", "")
    if dtype not in _DTYPE_CODES:
        return  # the forward names what is wrong with it
    batch, seqlen_q, seqlen_k, heads_q, heads_kv = sizes
    try:
        _C.launch_config(batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, heads_q=heads_q,
                         heads_kv=heads_kv, head_dim=q.shape[-1], seqlen_new=0, page_size=0,
                         num_splits=0, dtype=_DTYPE_CODES[dtype], causal=causal, arch_major=9,
                         arch_minor=0, kernel=_C.KERNEL_SM90, window_left=left,
                         window_right=right, softcap=softcap, sinks=sinks is not None,
                         backward=True, deterministic=deterministic, varlen=varlen,
                         kvcache=False)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"q, k, v or sinks require grad, and the backward of kernel='sm90' "
                         f"cannot run: {e}. Use kernel='auto' or 'sm80', or torch.no_grad()") from None


def _real(name, value):
    """softmax_scale or softcap as a float for the autograd path's torch.library ops, whose
    float parameters would take a bool as 1.0 and refuse a str without naming it. The C ops'
    type rule (fa_parse_real: an int, a float or a real NumPy scalar, not a bool), written in
    Python so that torch.compile traces it; its range rule (finite, >= 0, at most the largest
    float32) runs in C on every path, this one included."""
    real = isinstance(value, (int, float)) or _real_numpy_scalar(value)
    if isinstance(value, bool) or not real:
        raise TypeError(f"{name} must be a real number (int or float), got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} must be at most the largest float32, got an int beyond float "
                         "range") from None


def _real_numpy_scalar(value):
    """A NumPy integer or floating scalar (not a 0-d array, not a bool), as C's
    PyArray_IsScalar(obj, Number) takes."""
    t = type(value)
    return (t.__module__ == "numpy" and t.__name__ != "ndarray" and
            getattr(getattr(value, "dtype", None), "kind", None) in ("i", "u", "f"))


def _scale_and_softcap(softmax_scale, softcap):
    """softmax_scale (None: 1/sqrt(head_dim)) and softcap for the autograd path (_real)."""
    return (None if softmax_scale is None else _real("softmax_scale", softmax_scale),
            _real("softcap", softcap))


def _refuse_autograd_options(out, stream, inputs):
    """What a call that autograd records cannot take."""
    if out is not None:
        raise ValueError(f"out= cannot receive an output that autograd records ({inputs} "
                         "require grad): leave out=None")
    if stream is not None:
        raise ValueError(f"stream= is not taken when autograd records the call ({inputs} "
                         "require grad): the op runs on torch's current stream")


def _refuse_outputs_that_require_grad(torch, outputs):
    """outputs: name -> the caller's array or None. Writing into a tensor that requires grad,
    in grad mode, would bypass autograd."""
    if torch is None:
        return
    for name, x in outputs.items():
        if isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{name} requires grad: writing into it would bypass autograd. "
                             f"Pass {name}.detach(), or call under torch.no_grad()")


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                     causal=False, softmax_scale=None, window_size=_NO_WINDOW, softcap=0.0,
                     sinks=None, return_lse=False, deterministic=False, out=None, stream=None,
                     device=None, kernel=None):
    """attention() on a packed batch of sequences of different lengths (FlashAttention's
    flash_attn_varlen_func): entry b's queries are rows cu_seqlens_q[b] .. cu_seqlens_q[b + 1] - 1
    of q, its keys and values rows cu_seqlens_k[b] .. cu_seqlens_k[b + 1] - 1 of k and v, and
    each entry attends only to its own keys.

    Shapes:
        q, out        (total_q, heads_q, head_dim)
        k, v          (total_k, heads_kv, head_dim), heads_q a multiple of heads_kv (GQA)
        cu_seqlens_q  int32 (batch + 1,): 0, then each entry's end row in q; contiguous, where q
        cu_seqlens_k  lives (a device array on q's GPU for device inputs, a host array for host
                      inputs). Both have batch + 1 entries; an entry may be empty (length 0).
        lse           float32 (heads_q, total_q), natural log (FlashAttention's varlen layout)
        sinks         float32 (heads_q,), optional
    max_seqlen_q, max_seqlen_k: ints >= 0, at least the longest entry of each side (the GPU
    grid is sized by them; a larger bound costs idle blocks, a smaller one is an error).

    Each entry is attention() of its own lengths: causal and the window are aligned
    bottom-right per entry (query i of an entry of lengths (sq, sk) sees key j when
    j <= i + sk - sq with causal), softcap and sinks as in attention(). A row that sees no key
    (an entry with no keys, or masked) gets out = 0 and lse = -inf (sinks[h] with sinks).

    The offsets are checked where they are host memory (host inputs, on either path): they
    must start at 0, ascend, end at total_q (total_k), and no entry may be longer than
    max_seqlen_q (max_seqlen_k); a ValueError names the array. Offsets in device memory are
    not checked, since reading them would synchronise with the GPU: device arrays whose
    offsets break these rules give undefined results (out-of-range reads and rows never
    written), as in FlashAttention. The shapes' part is checked for every input:
    total_q <= batch * max_seqlen_q.

    Training: with torch tensors that require grad (q, k, v or sinks) in grad mode, the call
    records the torch.library op flashattn_c::attention_varlen_fwd, whose backward is
    flashattn_c::attention_varlen_bwd (attention_varlen_backward()); cu_seqlens must then be
    torch tensors, and out= and stream= are refused as in attention(), and kernel='sm90' where
    its backward does not serve the problem, at the forward.

    Other arguments (causal, softmax_scale, window_size, softcap, return_lse, deterministic,
    out, stream, device, kernel) and the returned types are attention()'s; kernel=None or
    "auto" picks the fastest family that runs packed batches on the GPU (the launch log and
    last_launch() name the kernel that ran).

    Raises TypeError / ValueError naming the argument before any GPU work (cu_seqlens_q must
    be int32, lengths that differ, ...), and otherwise what attention() raises.
    """
    gpu = _gpu_args(device, kernel, stream)
    device_kind, device_index, kernel_code = gpu
    causal = _flag("causal", causal)
    return_lse = _flag("return_lse", return_lse)
    deterministic = _flag("deterministic", deterministic)
    left, right = _parse_window(window_size)
    max_seqlen_q = _int_arg("max_seqlen_q", max_seqlen_q)
    max_seqlen_k = _int_arg("max_seqlen_k", max_seqlen_k)
    framework = _framework(q)
    torch = sys.modules.get("torch")
    if torch is not None and _needs_autograd(torch, (q, k, v, sinks)):
        _refuse_autograd_options(out, stream, "q, k, v or sinks")
        softmax_scale, softcap = _scale_and_softcap(softmax_scale, softcap)
        for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
            if not isinstance(cu, torch.Tensor):
                raise TypeError(f"{name} must be a torch tensor when autograd records the call "
                                f"(q, k, v or sinks require grad), got {type(cu).__name__}")
        if (kernel_code == _C.KERNEL_SM90 and q.dim() == 3 and k.dim() == 3 and
                cu_seqlens_q.dim() == 1 and cu_seqlens_q.numel() > 1):
            _refuse_sm90_backward(q, (cu_seqlens_q.numel() - 1, max_seqlen_q, max_seqlen_k,
                                      q.shape[1], k.shape[1]),
                                  True, causal, left, right, softcap, sinks, deterministic)
        from . import _torch_ops

        out, lse = _torch_ops.attention_varlen_fwd(
            q, k, v, cu_seqlens_q, cu_seqlens_k, sinks, max_seqlen_q, max_seqlen_k, causal,
            softmax_scale, left, right, softcap, kernel_code, device_kind, device_index,
            deterministic)
        return (out, lse) if return_lse else out
    if out is not None:
        _refuse_outputs_that_require_grad(torch, {"out": out})
    arrays = _detached(torch, dict(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q,
                                   cu_seqlens_k=cu_seqlens_k, out=out, sinks=sinks))
    extra = _op_keywords(gpu, causal=causal, softmax_scale=softmax_scale, window=(left, right),
                         softcap=softcap, return_lse=return_lse, max_seqlen_q=max_seqlen_q,
                         max_seqlen_k=max_seqlen_k)
    return _forward_result(_C.varlen_forward, _C.varlen_forward_roles, arrays, extra, out, ndim=3,
                           lse_dims=(1, 0), framework=framework, stream=stream)


def attention_varlen_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                              max_seqlen_k, *, causal=False, softmax_scale=None,
                              window_size=_NO_WINDOW, softcap=0.0, sinks=None,
                              deterministic=False, dq=None, dk=None, dv=None, dsinks=None,
                              stream=None, device=None, kernel=None):
    """The gradients of attention_varlen(): (dq, dk, dv), or (dq, dk, dv, dsinks) with sinks.

    attention_backward() on a packed batch: dout and out (total_q, heads_q, head_dim) in q's
    dtype, lse the forward's float32 (heads_q, total_q), and cu_seqlens_q, cu_seqlens_k,
    max_seqlen_q, max_seqlen_k, causal, softmax_scale, window_size, softcap and sinks as the
    forward (attention_varlen(..., return_lse=True)) was given them. dq is shaped like q, dk
    and dv like k and v (summed over the q heads of a kv head); rows of keys no entry owns
    are not written. deterministic, dq=, dk=, dv=, dsinks=, stream, device and kernel as in
    attention_backward(); offsets are checked as attention_varlen() checks them.
    """
    gpu = _gpu_args(device, kernel, stream)
    causal = _flag("causal", causal)
    deterministic = _flag("deterministic", deterministic)
    left, right = _parse_window(window_size)
    given = dict(dq=dq, dk=dk, dv=dv, dsinks=dsinks)
    extra = _op_keywords(gpu, causal=causal, softmax_scale=softmax_scale, window=(left, right),
                         softcap=softcap, deterministic=deterministic,
                         max_seqlen_q=_int_arg("max_seqlen_q", max_seqlen_q),
                         max_seqlen_k=_int_arg("max_seqlen_k", max_seqlen_k))
    return _gradients(_C.varlen_backward, _C.varlen_backward_roles,
                      dict(dout=dout, q=q, k=k, v=v, out=out, lse=lse, cu_seqlens_q=cu_seqlens_q,
                           cu_seqlens_k=cu_seqlens_k, sinks=sinks),
                      given, extra, ndim=3, stream=stream)


def attention_with_kvcache(q, k_cache, v_cache, k=None, v=None, *, cache_seqlens,
                           cache_batch_idx=None, block_table=None, causal=False,
                           softmax_scale=None, window_size=_NO_WINDOW, softcap=0.0, sinks=None,
                           num_splits=0, return_lse=False, out=None, stream=None, device=None,
                           kernel=None):
    """Attention over a KV cache, for decoding (FlashAttention's flash_attn_with_kvcache).

    Each batch entry b holds cache_seqlens[b] keys and values in its cache. When k and v are
    given, entry b's seqlen_new new keys and values are first written into its cache, in
    place, at positions cache_seqlens[b] .. cache_seqlens[b] + seqlen_new - 1; then q attends
    to the entry's first cache_seqlens[b] + seqlen_new keys, with causal and the window
    aligned bottom-right on those keys (the last query row sees the last key). cache_seqlens
    itself is not updated: advance it for the next step.

    Shapes:
        q, out            (batch, seqlen_q, heads_q, head_dim)
        k_cache, v_cache  dense: (batch_cache, max_seqlen, heads_kv, head_dim), one entry per
                          batch entry (batch_cache = batch), or any number with
                          cache_batch_idx; paged: (num_pages, page_size, heads_kv, head_dim)
                          with block_table. q's dtype; written in place when k and v are given,
                          so they must be writable (a read-only array raises ValueError) and
                          host (NumPy) caches come back written after a GPU call.
        k, v              (batch, seqlen_new, heads_kv, head_dim): new keys and values, both or
                          neither (None: nothing is appended, the caches are only read)
        cache_seqlens     an int (every entry's cached keys) or int32 (batch,) where q lives
        cache_batch_idx   None or int32 (batch,): entry b uses dense cache entry
                          cache_batch_idx[b] (with k and v, no two entries may append into
                          the same cache rows)
        block_table       None or int32 (batch, max_pages), unit stride on max_pages: entry b's
                          key j lives in row j % page_size of page block_table[b, j // page_size];
                          each entry holds up to max_pages * page_size keys, and every page
                          index must be in [0, num_pages)
        sinks             float32 (heads_q,), optional
        lse               float32 (batch, heads_q, seqlen_q)
    heads_q a multiple of heads_kv (GQA: the decode kernel packs the q heads that share a kv
    head into one tile, so each key and value is read once per kv head).

    Values in host memory are checked before anything runs (cache_seqlens[b] + seqlen_new
    within the entry's keys, cache_batch_idx within batch_cache, page indices within
    num_pages, no cache slot appended to by two entries): ValueError naming the array. Values in device memory are not checked (that
    would synchronise with the GPU): out-of-range ones read and write outside the caches, as
    in FlashAttention.

    Args (the others as in attention()):
        num_splits: an int >= 0. The decode kernel may split each entry's keys into num_splits
            parts that run in parallel, then merge them by their lse (launch "combine_..."):
            0 lets the plan choose from the grid size and the GPU, 1 runs without a split, n
            asks for n (fewer when the cache has fewer key blocks). With 0 or 1, long query
            chunks (more than 128 query rows x q heads per kv head) run on the forward kernel
            family instead, without a split; n > 1 keeps the split decode kernel.
        kernel: None or "auto" (the decode kernel and the append are the sm80 family's, the
            forward family the fastest that runs the layout: a paged cache whose page_size is
            not a multiple of one of the sm90 key blocks of its head dim, as the error of
            kernel="sm90" names them, takes sm80), "sm80", or "sm90" (an error where the sm90
            family cannot run the call: the decode path, or a paged cache it cannot read).

    No autograd: an inference op. A torch input that requires grad in grad mode raises
    ValueError; under torch.no_grad() the inputs are read as detached (the caches' memory is
    still written). With torch tensors on torch's current stream the call launches without a
    host synchronisation and allocates only stream-ordered memory, so it can be captured in a
    CUDA graph (torch.cuda.graph) and replayed: a replay reads the arrays' contents then
    (q, the caches, cache_seqlens) at the addresses captured.

    Returns out, or (out, lse) with return_lse, in the input's array type. last_launch()
    lists the plan's launches: the append ("kvcache_append_<dtype>", when k and v are given),
    the attention kernel ("decode_sm80_hd<D>_<dtype>..." or the forward family's), and the
    split-KV combine ("combine_<dtype>", when the keys were split).
    """
    gpu = _gpu_args(device, kernel, stream)
    causal = _flag("causal", causal)
    return_lse = _flag("return_lse", return_lse)
    left, right = _parse_window(window_size)
    num_splits = _int_arg("num_splits", num_splits)
    cache_seqlen = 0
    if _is_int(cache_seqlens):
        cache_seqlen, cache_seqlens = _int_arg("cache_seqlens", cache_seqlens), None
    elif cache_seqlens is None or isinstance(cache_seqlens, (bool, float, complex)):
        raise TypeError("cache_seqlens must be an int or an int32 array (batch,) of each "
                        f"entry's cached keys, got {type(cache_seqlens).__name__}")
    framework = _framework(q)
    torch = sys.modules.get("torch")
    arrays = dict(q=q, k_cache=k_cache, v_cache=v_cache, k=k, v=v, cache_seqlens=cache_seqlens,
                  cache_batch_idx=cache_batch_idx, block_table=block_table, sinks=sinks, out=out)
    if torch is not None and any(isinstance(x, torch.Tensor) and x.requires_grad
                                 for x in arrays.values()):
        if torch.is_grad_enabled():
            name = next(n for n, x in arrays.items()
                        if isinstance(x, torch.Tensor) and x.requires_grad)
            raise ValueError(f"attention_with_kvcache is an inference op with no backward, "
                             f"and {name} requires grad: call it under torch.no_grad() or "
                             f"pass {name}.detach()")
        arrays = _detached(torch, arrays)
    extra = _op_keywords(gpu, causal=causal, softmax_scale=softmax_scale, window=(left, right),
                         softcap=softcap, return_lse=return_lse, cache_seqlen=cache_seqlen,
                         num_splits=num_splits)
    result = _forward_result(_C.kvcache, _C.kvcache_roles, arrays, extra, out, ndim=4,
                             lse_dims=(0, 2, 1), framework=framework, stream=stream)
    if k is not None:
        _written_in_place(torch, (k_cache, v_cache))
    return result


def _written_in_place(torch, arrays):
    """Bump the version counter of the torch tensors among arrays, which an op wrote in place
    (an out= buffer, a KV cache), as torch's own in-place ops do: autograd then refuses a
    backward that saved their old values, instead of computing it from the new ones."""
    if torch is None:
        return
    for x in arrays:
        if isinstance(x, torch.Tensor):
            torch.autograd.graph.increment_version(x)  # one tensor a call: older torch


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
                  window_size=_NO_WINDOW, softcap=0.0, sinks=False, arch=None, kernel=None,
                  backward=False, deterministic=False, varlen=False, kvcache=False, seqlen_new=0,
                  page_size=0, num_splits=0):
    """The launch attention() would make for these sizes, computed without launching; with
    backward=True, attention_backward()'s plan (deterministic as there); with varlen=True,
    attention_varlen()'s (or attention_varlen_backward()'s) for batch packed entries of
    seqlen_q queries and seqlen_k keys each (the plan depends on the longest entries,
    max_seqlen_q and max_seqlen_k, not on the offsets); with kvcache=True,
    attention_with_kvcache()'s for caches of seqlen_k keys per entry (dense, or paged with
    page_size keys per page when page_size > 0), seqlen_new new keys appended (0: none) and
    num_splits as there, cache_seqlens an array (the plan then depends on the caches'
    capacity, not on the lengths; an int cache_seqlens plans for that length instead).

    arch=(major, minor) computes it for a nominal GPU of that compute capability (pure host, no
    GPU needed: e.g. (8, 0) A100, (8, 9) L4, (9, 0) H100/H200); arch=None for the current GPU
    (CudaError when there is none). Sizes are ints in [0, 2**31 - 1]. dtype: "float16" /
    "bfloat16" (or "fp16" / "bf16", or a NumPy / torch dtype). causal, window_size, softcap
    and kernel: as in attention(); sinks: a bool, whether attention() would be given sinks.

    Returns a dict: kernel (name: fwd_<family>_hd<padded head_dim>_<fp16|bf16>, then _causal or
    _window for a mask, _softcap, _sinks), family, grid, block (always (384, 1, 1)), smem_bytes
    (dynamic shared memory), regs (None: known only once launched), arch, device (-1 for a
    nominal GPU), stream, block_m, block_n, stages, head_dim_padded; launches, main_launch and
    workspace_bytes as in last_launch(). A backward's main kernel is named
    bwd_<family>_hd<padded head_dim>_<fp16|bf16>, then _causal or _window, _softcap, _det
    (deterministic); its preprocess bwd_pre_<dtype> and postprocess bwd_post_<dtype> (each
    with _sinks when sinks are given). A KV-cache plan's launches: kvcache_append_<dtype> (with
    seqlen_new > 0), the attention kernel (decode_sm80_hd<padded head_dim>_<dtype>, then _causal
    or _window, _softcap, _split; or the forward family's), combine_<dtype> (split runs).
    """
    sizes = dict(batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, heads_q=heads_q,
                 heads_kv=heads_kv, head_dim=head_dim, seqlen_new=seqlen_new,
                 page_size=page_size, num_splits=num_splits)
    for name, value in sizes.items():
        if not _is_int(value):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if not 0 <= value <= _INT32_MAX:
            raise ValueError(f"{name} must be in [0, {_INT32_MAX}], got {value}")
        sizes[name] = int(value)
    name = _dtype_name(dtype).lower()
    name = _DTYPE_ALIASES.get(name, name)
    if name not in _DTYPE_CODES:
        raise TypeError(f"unsupported dtype {name}: expected float16 or bfloat16 "
                        "(or fp16 / bf16)")
    if arch is None:
        major, minor = -1, 0
    else:
        # Two ints, not any pair int() accepts: "90" would read as (9, 0), (9.7, 0) as (9, 0).
        if not (isinstance(arch, (tuple, list)) and len(arch) == 2 and all(_is_int(x) for x in arch)
                and arch[0] >= 0 and arch[1] >= 0):
            raise ValueError(f"arch must be None or (major, minor), two ints >= 0, got {arch!r}")
        major, minor = int(arch[0]), int(arch[1])
    left, right = _parse_window(window_size)
    return _C.launch_config(**sizes, dtype=_DTYPE_CODES[name], causal=_flag("causal", causal),
                            arch_major=major, arch_minor=minor, kernel=_parse_kernel(kernel),
                            window_left=left, window_right=right, softcap=softcap,
                            sinks=_flag("sinks", sinks), backward=_flag("backward", backward),
                            deterministic=_flag("deterministic", deterministic),
                            varlen=_flag("varlen", varlen), kvcache=_flag("kvcache", kvcache))


def last_launch():
    """The main launch of the op this thread issued last, or None: kernel, family, grid, block,
    smem_bytes, regs, arch, device, stream, block_m, block_n, stages, head_dim_padded; plus
    launches (every launch of the op's plan in the order they ran, each a dict of the same
    keys), main_launch (the main one's index there) and workspace_bytes (the device scratch the
    plan used). The forward is one launch with no workspace; the backward three (preprocess,
    main, postprocess; no main kernel when seqlen_k == 0) with an fp32 workspace."""
    return _C.last_launch()


def build_info():
    """version, threads_per_block (384), warps_per_block (12), warpgroups (3), families (kernel
    family -> compute capabilities it was compiled for, e.g. {"sm80": [80, 90], "sm90": [90]}),
    cuda_runtime_version (of the statically linked CUDA runtime, e.g. 13000). No CUDA call."""
    from . import __version__

    return {"version": __version__, **_C.build_info()}
