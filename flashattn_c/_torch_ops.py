"""attention() and attention_varlen() as torch.library ops with autograd: imported by
flashattn_c._api only when a torch caller needs a graph (inputs that require grad, or
torch.compile tracing), so importing flashattn_c never imports torch.

    flashattn_c::attention_fwd(q, k, v, sinks, ...) -> (out, lse)
    flashattn_c::attention_bwd(dout, q, k, v, out, lse, sinks, ...) -> (dq, dk, dv, dsinks)
    flashattn_c::attention_varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, sinks, ...)
    flashattn_c::attention_varlen_bwd(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                      sinks, ...)

Each pair runs the C ops (fa_forward / fa_backward, or the host references for CPU tensors) on
torch's current stream; their fake implementations give torch.compile the output shapes. A
forward's autograd saves q, k, v, out, lse and sinks (and the offsets); lse is not
differentiable, nor are the offsets. dsinks is an empty tensor when there are no sinks (a
custom op returns no None).
"""
from typing import Optional, Tuple

import torch

from . import _C, _api

_KERNEL_NAMES = {_C.KERNEL_AUTO: None, _C.KERNEL_SM80: "sm80", _C.KERNEL_SM90: "sm90"}


def _device(q, device_kind, device_index):
    """The device= of the C call: the host reference for CPU tensors when device='cpu', the
    GPU otherwise (as attention() itself resolves it)."""
    if device_kind == _C.DEVICE_CPU:
        return "cpu"
    if device_kind == _C.DEVICE_CUDA:
        return device_index if device_index >= 0 else "cuda"
    return None


@torch.library.custom_op("flashattn_c::attention_fwd", mutates_args=())
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  sinks: Optional[torch.Tensor], causal: bool, softmax_scale: Optional[float],
                  window_left: int, window_right: int, softcap: float, kernel: int,
                  device_kind: int, device_index: int,
                  deterministic: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    device = _device(q, device_kind, device_index)
    out, lse = _api.attention(q, k, v, causal=causal, softmax_scale=softmax_scale,
                              window_size=(window_left, window_right), softcap=softcap,
                              sinks=sinks, return_lse=True, device=device,
                              kernel=None if device == "cpu" else _KERNEL_NAMES[kernel])
    return out, lse


@attention_fwd.register_fake
def _(q, k, v, sinks, causal, softmax_scale, window_left, window_right, softcap, kernel,
      device_kind, device_index, deterministic):
    return q.new_empty(q.shape), q.new_empty((q.shape[0], q.shape[2], q.shape[1]),
                                             dtype=torch.float32)


@torch.library.custom_op("flashattn_c::attention_bwd", mutates_args=())
def attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  out: torch.Tensor, lse: torch.Tensor, sinks: Optional[torch.Tensor],
                  causal: bool, softmax_scale: Optional[float], window_left: int,
                  window_right: int, softcap: float, kernel: int, device_kind: int,
                  device_index: int, deterministic: bool
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    device = _device(q, device_kind, device_index)
    grads = _api.attention_backward(
        dout, q, k, v, out, lse, causal=causal, softmax_scale=softmax_scale,
        window_size=(window_left, window_right), softcap=softcap, sinks=sinks,
        deterministic=deterministic, device=device,
        kernel=None if device == "cpu" else _KERNEL_NAMES[kernel])
    dsinks = grads[3] if sinks is not None else q.new_empty((0,), dtype=torch.float32)
    return grads[0], grads[1], grads[2], dsinks


@attention_bwd.register_fake
def _(dout, q, k, v, out, lse, sinks, causal, softmax_scale, window_left, window_right, softcap,
      kernel, device_kind, device_index, deterministic):
    dsinks = q.new_empty((q.shape[2] if sinks is not None else 0,), dtype=torch.float32)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dsinks


def _setup_context(ctx, inputs, output):
    q, k, v, sinks = inputs[:4]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, sinks)
    ctx.scalars = inputs[4:]
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, sinks = ctx.saved_tensors
    # Autograd may hand over an expanded or strided gradient; the kernels read rows of
    # head_dim contiguous elements.
    dq, dk, dv, dsinks = attention_bwd(dout.contiguous(), q, k, v, out, lse, sinks,
                                       *ctx.scalars)
    return (dq, dk, dv, dsinks if sinks is not None else None) + (None,) * len(ctx.scalars)


attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---- packed (variable-length) batches: attention_varlen() -----------------------------------

@torch.library.custom_op("flashattn_c::attention_varlen_fwd", mutates_args=())
def attention_varlen_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                         sinks: Optional[torch.Tensor], max_seqlen_q: int, max_seqlen_k: int,
                         causal: bool, softmax_scale: Optional[float], window_left: int,
                         window_right: int, softcap: float, kernel: int, device_kind: int,
                         device_index: int,
                         deterministic: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    device = _device(q, device_kind, device_index)
    out, lse = _api.attention_varlen(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
        softmax_scale=softmax_scale, window_size=(window_left, window_right), softcap=softcap,
        sinks=sinks, return_lse=True, device=device,
        kernel=None if device == "cpu" else _KERNEL_NAMES[kernel])
    return out, lse


@attention_varlen_fwd.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, sinks, max_seqlen_q, max_seqlen_k, causal,
      softmax_scale, window_left, window_right, softcap, kernel, device_kind, device_index,
      deterministic):
    return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@torch.library.custom_op("flashattn_c::attention_varlen_bwd", mutates_args=())
def attention_varlen_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         out: torch.Tensor, lse: torch.Tensor, cu_seqlens_q: torch.Tensor,
                         cu_seqlens_k: torch.Tensor, sinks: Optional[torch.Tensor],
                         max_seqlen_q: int, max_seqlen_k: int, causal: bool,
                         softmax_scale: Optional[float], window_left: int, window_right: int,
                         softcap: float, kernel: int, device_kind: int, device_index: int,
                         deterministic: bool
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    device = _device(q, device_kind, device_index)
    grads = _api.attention_varlen_backward(
        dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
        causal=causal, softmax_scale=softmax_scale, window_size=(window_left, window_right),
        softcap=softcap, sinks=sinks, deterministic=deterministic, device=device,
        kernel=None if device == "cpu" else _KERNEL_NAMES[kernel])
    dsinks = grads[3] if sinks is not None else q.new_empty((0,), dtype=torch.float32)
    return grads[0], grads[1], grads[2], dsinks


@attention_varlen_bwd.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, sinks, max_seqlen_q, max_seqlen_k,
      causal, softmax_scale, window_left, window_right, softcap, kernel, device_kind,
      device_index, deterministic):
    dsinks = q.new_empty((q.shape[1] if sinks is not None else 0,), dtype=torch.float32)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dsinks


def _varlen_setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens_q, cu_seqlens_k, sinks = inputs[:6]
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, sinks)
    ctx.scalars = inputs[6:]
    ctx.mark_non_differentiable(lse)


def _varlen_backward(ctx, dout, _dlse):
    q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, sinks = ctx.saved_tensors
    dq, dk, dv, dsinks = attention_varlen_bwd(dout.contiguous(), q, k, v, out, lse, cu_seqlens_q,
                                              cu_seqlens_k, sinks, *ctx.scalars)
    # No gradient for the offsets (integers) or the scalars.
    return ((dq, dk, dv, None, None, dsinks if sinks is not None else None) +
            (None,) * len(ctx.scalars))


attention_varlen_fwd.register_autograd(_varlen_backward, setup_context=_varlen_setup_context)
