"""flashattn_c.integrations.transformers: tiny random models run through the registered backend
and through transformers' own eager attention must agree, in prefill (padded or not), in generate
and in training; what the backend cannot honour raises. On the host path (device="cpu", float32)
everywhere; on the GPU in bfloat16 where there is one.

Skipped with a reason where transformers or PyTorch is missing.

    python -m pytest -q tests/test_transformers_backend.py
"""
import pytest

import flashattn_c as fa
from conftest import GPU_MARKS

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
torch = pytest.importorskip("torch", reason="PyTorch is not installed")
fa_transformers = pytest.importorskip("flashattn_c.integrations.transformers")

NAME = fa_transformers.register()
VOCAB = 97


def tiny(kind="llama", **extra):
    """A two-layer model of `kind` with GQA 4:2 and head_dim 16, random weights (seed 0)."""
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=256, pad_token_id=0, **extra)
    if kind == "mistral":
        config = transformers.MistralConfig(sliding_window=5, **common)
        model_class = transformers.MistralForCausalLM
    elif kind == "gemma2":
        config = transformers.Gemma2Config(sliding_window=6, attn_logit_softcapping=5.0,
                                           final_logit_softcapping=None,
                                           query_pre_attn_scalar=16, **common)
        model_class = transformers.Gemma2ForCausalLM
    elif kind == "gpt_oss":  # sliding and full layers with attention sinks, a mixture of experts
        common.update(max_position_embeddings=131072)  # the YaRN factor its defaults expect
        config = transformers.GptOssConfig(sliding_window=5, num_local_experts=4,
                                           num_experts_per_tok=2, **common)
        model_class = transformers.GptOssForCausalLM
    else:
        config = transformers.LlamaConfig(**common)
        model_class = transformers.LlamaForCausalLM
    torch.manual_seed(0)
    model = model_class(config).eval()
    for layer in model.model.layers:  # sinks start at zero: give them values that matter
        if hasattr(layer.self_attn, "sinks"):
            torch.nn.init.normal_(layer.self_attn.sinks, std=1.0)
    return model


def batch(lengths, total, left=True):
    """Token ids and a padding mask: rows of `lengths` real tokens, padded to `total`."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (len(lengths), total), generator=g)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for row, n in enumerate(lengths):
        if left:
            mask[row, total - n:] = 1
        else:
            mask[row, :n] = 1
    return ids * mask, mask


def logits(model, implementation, ids, mask):
    model.set_attn_implementation(implementation)
    assert model.config._attn_implementation == implementation
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def assert_close_where(ours, eager, mask, atol):
    keep = mask.bool()
    assert torch.isfinite(ours).all()
    err = (ours[keep] - eager[keep]).abs().max().item()
    assert err <= atol, f"max |ours - eager| over real tokens {err:.3e} > {atol:.1e}"


def test_register_refuses_names_transformers_reserves():
    for name in ("flashattn_c", "my_sdpa", "a|b", "org/repo", "", "eager"):
        with pytest.raises(ValueError, match="name must be"):
            fa_transformers.register(name)
    assert NAME == "fa_c" and "flash" not in NAME


@pytest.mark.parametrize("kind", ["llama", "mistral", "gemma2", "gpt_oss"])
@pytest.mark.parametrize("left", [True, False], ids=["left_pad", "right_pad"])
def test_prefill_matches_eager(kind, left):
    """Causal (llama), sliding window 5 (mistral), window 6 with softcap 5 (gemma2), sinks on
    sliding and full layers (gpt-oss); a batch with one unpadded row, two padded ones and a row
    of one token."""
    model = tiny(kind)
    ids, mask = batch([12, 7, 12, 1], 12, left)
    assert_close_where(logits(model, NAME, ids, mask), logits(model, "eager", ids, mask), mask,
                       2e-4)
    full = torch.ones_like(mask)
    assert_close_where(logits(model, NAME, ids, full), logits(model, "eager", ids, full), full,
                       2e-4)


@pytest.mark.parametrize("kind", ["llama", "mistral", "gpt_oss"])
def test_generate_matches_eager(kind):
    """Greedy generate on a left-padded batch: the prefill, then decode steps on the cache."""
    model = tiny(kind)
    ids, mask = batch([9, 4, 6], 9)
    runs = {}
    for implementation in (NAME, "eager"):
        model.set_attn_implementation(implementation)
        runs[implementation] = model.generate(input_ids=ids, attention_mask=mask,
                                              max_new_tokens=8, do_sample=False)
    assert torch.equal(runs[NAME], runs["eager"])


def test_static_cache_generate_matches_eager():
    """A static cache hands attention its whole length; the slots not yet written are masked."""
    model = tiny()
    ids, mask = batch([7, 7], 7)
    runs = {}
    for implementation in (NAME, "eager"):
        model.set_attn_implementation(implementation)
        runs[implementation] = model.generate(input_ids=ids, attention_mask=mask,
                                              max_new_tokens=5, do_sample=False,
                                              cache_implementation="static")
    assert torch.equal(runs[NAME], runs["eager"])


def test_training_gradients_match_eager():
    """Right padding, so that no loss term reads a padded row's output (eager fills a row that
    sees no key with an average of every value, flashattn_c with zeros)."""
    model = tiny()
    ids, mask = batch([10, 6], 10, left=False)
    grads = {}
    for implementation in (NAME, "eager"):
        model.set_attn_implementation(implementation)
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
        out.loss.backward()
        grads[implementation] = {n: p.grad.clone() for n, p in model.named_parameters()
                                 if p.grad is not None}
    assert grads[NAME].keys() == grads["eager"].keys()
    assert any("q_proj" in n for n in grads[NAME])
    for n, g in grads[NAME].items():
        err = (g - grads["eager"][n]).abs().max().item()
        assert err <= 1e-4 * max(1.0, grads["eager"][n].abs().max().item()), n


def test_what_the_backend_cannot_honour_raises():
    model = tiny()
    model.set_attn_implementation(NAME)
    ids, mask = batch([6, 6], 6)
    with pytest.raises(ValueError, match="output_attentions"):
        model(input_ids=ids, attention_mask=mask, output_attentions=True)
    four_d = torch.zeros(2, 1, 6, 6)
    with pytest.raises(ValueError, match="4-D mask cannot be honoured"):
        model(input_ids=ids, attention_mask=four_d)
    # two sequences packed into one row through position_ids, with no attention_mask
    packed = torch.tensor([[0, 1, 2, 0, 1, 2]])
    with pytest.raises(NotImplementedError, match="packed into one row"):
        model(input_ids=ids[:1], position_ids=packed, use_cache=False)
    attention = model.model.layers[0].self_attn
    q = torch.zeros(1, 4, 3, 16)
    with pytest.raises(ValueError, match="dropout"):
        fa_transformers.attention_forward(attention, q, q[:, :2], q[:, :2], None, dropout=0.1)


def test_mask_function_overlays_raise():
    with pytest.raises(NotImplementedError, match="mask overlay"):
        fa_transformers.padding_mask(1, 4, 4, use_vmap=True)
    chunked = transformers.masking_utils.chunked_causal_mask_function(8, torch.zeros(1, dtype=torch.long))
    with pytest.raises(NotImplementedError, match="chunked"):
        fa_transformers.padding_mask(1, 4, 4, mask_function=chunked)


def test_cross_attention_keeps_every_query_and_masks_the_keys():
    """A bidirectional layer whose keys are another sequence's (an encoder's, padded): the mask
    function keeps every key position, and each query sees exactly its row's real keys."""
    bidirectional = transformers.masking_utils.bidirectional_mask_function
    keys = torch.ones(2, 7, dtype=torch.bool)
    keys[1, 5:] = False
    mask = fa_transformers.padding_mask(2, 3, 7, mask_function=bidirectional,
                                        attention_mask=keys)
    assert torch.equal(mask, keys)

    class CrossAttention:
        is_causal = False

    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 3, 16, generator=g)   # (batch, heads_q, decoder tokens, head_dim)
    k = torch.randn(2, 2, 7, 16, generator=g)   # (batch, heads_kv, encoder tokens, head_dim)
    v = torch.randn(2, 2, 7, 16, generator=g)
    out, weights = fa_transformers.attention_forward(CrossAttention(), q, k, v, mask)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask[:, None, None, :])
    assert weights is None and out.shape == (2, 3, 4, 16)
    assert (out - ref.transpose(1, 2)).abs().max().item() <= 1e-5


def test_mask_patterns_are_read_once_per_fingerprint(monkeypatch):
    """transformers makes a fresh mask closure at every forward: the pattern is read once for
    each distinct function and parameters (a sliding window of 5 and one of 6 differ), never
    for a function over per-token tensors, whose pattern can change between calls."""
    probed = []
    probe = fa_transformers._probe_pattern
    monkeypatch.setattr(fa_transformers, "_CHECKED", {})
    monkeypatch.setattr(fa_transformers, "_probe_pattern",
                        lambda f: probed.append(f) or probe(f))
    window = transformers.masking_utils.sliding_window_causal_mask_function
    for w in (5, 5, 6, 5, 6):
        fa_transformers.padding_mask(1, 4, 4, mask_function=window(w))
    assert len(probed) == 2
    chunked = transformers.masking_utils.chunked_causal_mask_function
    for _ in range(2):
        with pytest.raises(NotImplementedError, match="chunked"):
            fa_transformers.padding_mask(1, 4, 4, mask_function=chunked(8, torch.zeros(1).long()))
    assert len(probed) == 4


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_gpu_prefill_and_generate_bf16(kind):
    """On the GPU in bfloat16: logits of real tokens within bf16 noise of eager's, and generate
    runs the padded prefill and the decode steps through the backend's kernels."""
    model = tiny(kind).to("cuda", torch.bfloat16)
    ids, mask = batch([12, 5, 9], 12)
    ids, mask = ids.cuda(), mask.cuda()
    ours, eager = logits(model, NAME, ids, mask), logits(model, "eager", ids, mask)
    assert_close_where(ours.float(), eager.float(), mask, 0.1)
    model.set_attn_implementation(NAME)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert fa.last_launch()["kernel"].split("_")[0] in ("fwd", "decode")


for _mark in GPU_MARKS:
    test_gpu_prefill_and_generate_bf16 = _mark(test_gpu_prefill_and_generate_bf16)
