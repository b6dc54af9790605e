"""flashattn_c: exact softmax attention, forward and backward (FlashAttention), in C and CUDA C.

    import flashattn_c as fa
    out = fa.attention(q, k, v, causal=True)            # q (batch, seqlen_q, heads_q, head_dim)
    out, lse = fa.attention(q, k, v, return_lse=True)   # k, v (batch, seqlen_k, heads_kv, head_dim)
    dq, dk, dv = fa.attention_backward(dout, q, k, v, out, lse)   # the gradients
    out.backward(dout)    # torch inputs that require grad: attention() is differentiable
    out = fa.attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
                          # packed sequences: q (total_q, heads_q, head_dim), int32 offsets
    out = fa.attention_with_kvcache(q, k_cache, v_cache, k, v, cache_seqlens=lengths)
                          # decoding: k, v appended to the caches in place, then attended
    fa.last_launch()      # what this thread last launched (kernel, grid, block (384, 1, 1), ...)
    fa.launch_config(batch=2, seqlen_q=4096, seqlen_k=4096, heads_q=32, heads_kv=8,
                     head_dim=128, dtype="bfloat16", arch=(9, 0))   # the same, without a GPU
    fa.build_info()       # version, the 384-thread contract, compiled kernel families

Inputs may be PyTorch / CuPy / JAX arrays (DLPack), any __cuda_array_interface__ object, or
NumPy arrays; results come back in the input's own type. Importing needs no GPU and no driver.
See help(flashattn_c.attention) for the full contract.
"""

__version__ = "0.1.0"

from ._api import (  # noqa: E402  (the version above must stay a literal for setuptools)
    CudaError,
    DeviceArray,
    attention,
    attention_backward,
    attention_varlen,
    attention_varlen_backward,
    attention_with_kvcache,
    build_info,
    last_launch,
    launch_config,
)

__all__ = [
    "attention",
    "attention_backward",
    "attention_varlen",
    "attention_varlen_backward",
    "attention_with_kvcache",
    "last_launch",
    "launch_config",
    "build_info",
    "DeviceArray",
    "CudaError",
    "__version__",
]
