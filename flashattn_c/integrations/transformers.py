"""flashattn_c as a transformers attention backend.

    import flashattn_c.integrations.transformers as fa_transformers
    name = fa_transformers.register()                  # "fa_c", in AttentionInterface and
    model.set_attn_implementation(name)                # AttentionMaskInterface
    # or AutoModelForCausalLM.from_pretrained(..., attn_implementation=name)

Prefill, training and generate (with DynamicCache, StaticCache and sliding-window caches) then run
through flashattn_c:
- no padding: attention() on the (batch, seqlen, heads, head_dim) views of transformers' tensors,
  GQA without repeating k and v;
- a padded batch (left or right): the tokens that the 2D padding mask keeps are packed and run
  through attention_varlen, one entry per row; padded query rows come back as zeros (in
  cross-attention, a bidirectional layer over another sequence's keys, every query is kept);
- the layer's own arguments: its causal flag (the `is_causal` keyword, else `module.is_causal`),
  `scaling`, `sliding_window` (a token sees itself and the `sliding_window - 1` before it, as
  transformers' masks say), `softcap` (Gemma 2) and `s_aux`, the attention sinks (gpt-oss).

Nothing is dropped in silence. The mask function checks that the model asks for a pattern these
kernels run (causal, sliding window or bidirectional, plus padding) and raises
NotImplementedError otherwise: mask overlays (or/and mask functions, e.g. bidirectional image
tokens), chunked attention, sequences packed into one row through position_ids. The attention
function raises ValueError for a 4-D or non-boolean attention_mask (one the mask function did not
make), output_attentions=True and dropout > 0.

The name holds no "flash": transformers treats names containing "flash" as its own FlashAttention
kernels (and "sdpa" or "flex_attention" as its others).
"""

import flashattn_c as _fa

NAME = "fa_c"
_RESERVED = ("flash", "sdpa", "flex_attention", "paged", "|", "/", ":")
_PROBE_ROW = 1 << 17  # where a mask function's pattern is read: past any model's window


def register(name=NAME):
    """Register the attention function and its mask function under `name`; returns the name."""
    if not isinstance(name, str) or not name or name == "eager" or any(
            r in name for r in _RESERVED):
        raise ValueError(f"name must be a non-empty string other than 'eager' without any of "
                         f"{_RESERVED} (transformers gives those other meanings), got {name!r}")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, padding_mask)
    return name


# ---- the mask function: a 2-D padding mask or None ---------------------------------------------

def padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                 attention_mask=None, use_vmap=False, **kwargs):
    """transformers' mask-function protocol: returns None when every key of every row is a real
    token, else a bool (batch, n) mask of the layer's first n keys (True = a token to attend to;
    the keys run from position kv_offset). n is kv_length, or, for causal self-attention, fewer
    with a static cache, whose slots past the tokens seen so far hold nothing yet; the attention
    function reads only the mask's keys. Bidirectional masks keep every key: their keys need not
    be the queries' tokens (cross-attention to an encoder's)."""
    import torch

    if use_vmap:
        raise NotImplementedError(
            f"the {NAME} attention backend runs causal, sliding-window and bidirectional masks "
            "with padding; this model adds a mask overlay (or_mask_function / and_mask_function)")
    pattern = _check_pattern(mask_function) if mask_function is not None else "causal"
    seen = int(q_offset) + q_length - int(kv_offset)  # keys holding tokens, from the layer's first
    if pattern == "bidirectional":
        seen = kv_length
    if attention_mask is None:
        if seen >= kv_length:
            return None
        return torch.ones(batch_size, seen, dtype=torch.bool, device=kwargs.get("device"))
    mask = attention_mask[:, -kv_length:][:, :seen].to(torch.bool)
    return None if mask.shape[1] == kv_length and bool(mask.all()) else mask


_CHECKED = {}  # fingerprint of a mask function -> its pattern, read once


def _fingerprint(obj, depth=0):
    """A key equal for mask functions that compute the same thing: transformers builds a fresh
    closure per forward (sliding_window_causal_mask_function(w), and_masks(...)) from module
    functions and int parameters. None when obj holds anything else (a tensor of positions)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return (type(obj), obj)
    if isinstance(obj, (tuple, list)):
        parts = tuple(_fingerprint(x, depth + 1) for x in obj)
        return None if None in parts else (tuple, parts)
    code = getattr(obj, "__code__", None)
    if code is None or depth > 8:
        return None
    cells = tuple(_fingerprint(c.cell_contents, depth + 1) for c in obj.__closure__ or ())
    defaults = _fingerprint(obj.__defaults__ or (), depth + 1)
    return None if None in cells or defaults is None else (code, cells, defaults)


def _check_pattern(mask_function):
    """The keys that rows _PROBE_ROW and _PROBE_ROW - 1 see must be what one of the kernels' masks
    shows: every key (bidirectional), every key up to the row (causal), or the w keys ending at it
    (sliding window, w the same for both rows); returns which. Read once per fingerprint: the
    probe evaluates the function at 2 x 2^18 positions, and a model makes its masks at every
    forward."""
    key = _fingerprint(mask_function)
    if key is not None and key in _CHECKED:
        return _CHECKED[key]
    pattern = _probe_pattern(mask_function)
    if key is not None:
        _CHECKED[key] = pattern
    return pattern


def _probe_pattern(mask_function):
    import torch

    kv = torch.arange(2 * _PROBE_ROW)
    zero = torch.zeros((), dtype=torch.long)
    spans = []
    for row in (_PROBE_ROW, _PROBE_ROW - 1):
        try:
            seen = mask_function(zero, zero, torch.tensor(row), kv)
        except (IndexError, RuntimeError):  # it indexes per-token data: not a pattern of positions
            seen = torch.zeros(kv.shape, dtype=torch.bool)
        seen = torch.as_tensor(seen).expand(kv.shape).nonzero().flatten()
        contiguous = seen.numel() > 0 and int(seen[-1] - seen[0]) + 1 == seen.numel()
        spans.append((int(seen[0]), int(seen[-1])) if contiguous else None)
    rows = (_PROBE_ROW, _PROBE_ROW - 1)
    bidirectional = all(s == (0, 2 * _PROBE_ROW - 1) for s in spans)
    causal = all(s == (0, row) for s, row in zip(spans, rows))
    window = (all(s is not None and s[1] == row for s, row in zip(spans, rows))
              and spans[0][1] - spans[0][0] == spans[1][1] - spans[1][0])
    if bidirectional or causal or window:
        return "bidirectional" if bidirectional else "causal" if causal else "window"
    raise NotImplementedError(
        f"the {NAME} attention backend runs causal, sliding-window and bidirectional masks "
        f"with padding; this model's mask function ({getattr(mask_function, '__name__', '?')})"
        " makes another pattern (chunked attention, or sequences packed into one row through"
        " position_ids: pass an attention_mask instead)")


# ---- the attention function ----------------------------------------------------------------------

def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                      sliding_window=None, softcap=None, is_causal=None, s_aux=None, **kwargs):
    """transformers' attention-function protocol: query (batch, heads_q, seqlen_q, head_dim),
    key and value (batch, heads_kv, seqlen_k, head_dim), the cache already appended; returns
    (out (batch, seqlen_q, heads_q, head_dim), None)."""
    if kwargs.get("output_attentions"):
        raise ValueError(f"output_attentions=True: the {NAME} attention backend never forms the "
                         "attention weights; use attn_implementation='eager' to inspect them")
    if dropout:
        raise ValueError(f"dropout={dropout}: the {NAME} attention backend has no attention "
                         "dropout (set the model's attention_dropout to 0)")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    window = (-1, -1)
    if sliding_window:
        window = (sliding_window - 1, 0 if causal else sliding_window - 1)
    options = dict(causal=causal, softmax_scale=scaling, window_size=window,
                   softcap=float(softcap or 0.0),
                   sinks=None if s_aux is None else s_aux.float(),
                   device="cpu" if query.device.type == "cpu" else None)
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    if attention_mask is None:
        return _fa.attention(q, k, v, **options), None
    if attention_mask.ndim != 2 or attention_mask.dtype != _torch().bool:
        raise ValueError(
            f"attention_mask of shape {tuple(attention_mask.shape)} and dtype "
            f"{attention_mask.dtype}: the {NAME} attention backend takes the 2-D bool padding mask "
            f"that its own mask function makes (register() installs both under {NAME!r}); a "
            "prepared 4-D mask cannot be honoured")
    return _padded(q, k, v, attention_mask, options), None


def _padded(q, k, v, mask, options):
    """Pack the kept tokens, one varlen entry per row, and scatter the output back. In causal
    self-attention the queries are the last seqlen_q tokens of the keys' mask; a decode step's
    query, and every query of a bidirectional layer whose keys are another sequence's (seqlen_q
    != seqlen_k: cross-attention), is a real token."""
    torch = _torch()
    batch, seqlen_q, heads_q, head_dim = q.shape
    seqlen_k = mask.shape[1]
    k, v = k[:, :seqlen_k], v[:, :seqlen_k]
    causal = options["causal"]
    if causal and seqlen_q > seqlen_k:
        raise ValueError(f"seqlen_q {seqlen_q} exceeds the mask's {seqlen_k} keys")
    if seqlen_q == 1 or (not causal and seqlen_q != seqlen_k):
        rows_q = torch.ones(batch, seqlen_q, dtype=torch.bool, device=mask.device)
    else:
        rows_q = mask[:, -seqlen_q:]
    keep_k = mask.flatten().nonzero().flatten()
    keep_q = rows_q.flatten().nonzero().flatten()
    cu_k = _offsets(mask.sum(1, dtype=torch.int32))
    cu_q = _offsets(rows_q.sum(1, dtype=torch.int32))
    max_k, max_q = int(mask.sum(1).max()), int(rows_q.sum(1).max())
    packed = _fa.attention_varlen(q.reshape(-1, heads_q, head_dim)[keep_q],
                                  k.reshape(-1, *k.shape[2:])[keep_k],
                                  v.reshape(-1, *v.shape[2:])[keep_k],
                                  cu_q, cu_k, max_q, max_k, **options)
    out = packed.new_zeros(batch * seqlen_q, heads_q, packed.shape[-1])
    out = out.index_copy(0, keep_q, packed)
    return out.view(batch, seqlen_q, heads_q, -1)


def _offsets(lengths):
    torch = _torch()
    return torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))


def _torch():
    import torch

    return torch
