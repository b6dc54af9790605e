"""profile_cases.py -- one call each of the launches whose stall reasons the open performance
targets wait for (benches/NOTES.md, "Prepared for the next device session"), each checked
against a float32 reference on a small slice of its inputs before the profiled call:
  - the sm90 forward, bf16 causal 16k, without and with softcap 30: head_dim 128 (16 heads)
    and 64 (32 heads);
  - the sm90 and the sm80 backward, bf16 head_dim 128, 16k, 16 heads, no mask.
On an H100/H200 after a build, for Nsight Compute (one launch of each profiled kernel):
    tools/stall_reasons.sh cases 'fwd_kernel|bwd_kernel|bwd_sm80_kernel' python3 dev/profile_cases.py
"""
import math

import torch

import flashattn_c as fa

SEQLEN = 16384
SLICE_KEYS, SLICE_HEADS = 1024, 2


def reference(q, k, v, softcap, causal):
    """softmax(scale q k^T [softcapped, causal]) v in the dtype of q (float32 here)."""
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if causal:
        n, m = s.shape[-2:]
        hidden = torch.ones(n, m, dtype=torch.bool, device=s.device).triu(m - n + 1)
        s = s.masked_fill(hidden, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), v)


def small(t):
    return t[:, :SLICE_KEYS, :SLICE_HEADS].contiguous()


def forward_cases():
    for head_dim, heads in ((128, 16), (64, 32)):
        q, k, v = (torch.randn(1, SEQLEN, heads, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for softcap in (0.0, 30.0):
            got = fa.attention(small(q), small(k), small(v), causal=True, softcap=softcap, kernel="sm90")
            want = reference(small(q).float(), small(k).float(), small(v).float(), softcap, True)
            err = (got.float() - want).abs().max().item()
            assert err < 2e-2, f"forward hd{head_dim} softcap {softcap}: max error {err}"
            torch.cuda.synchronize()
            fa.attention(q, k, v, causal=True, softcap=softcap, kernel="sm90")
            torch.cuda.synchronize()
            print(f"forward hd{head_dim} softcap {softcap}: checked (max error {err:.2e}), profiled", flush=True)


def backward_cases():
    q, k, v, dout = (torch.randn(1, SEQLEN, 16, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    out, lse = fa.attention(q, k, v, return_lse=True, kernel="sm90")
    leaves = [small(t).float().requires_grad_() for t in (q, k, v)]
    reference(*leaves, 0.0, False).backward(small(dout).float())
    out_s, lse_s = fa.attention(small(q), small(k), small(v), return_lse=True, kernel="sm90")
    for kernel in ("sm90", "sm80"):
        grads = fa.attention_backward(small(dout), small(q), small(k), small(v), out_s, lse_s, kernel=kernel)
        errs = [(g.float() - t.grad).abs().max().item() / t.grad.abs().max().item() for g, t in zip(grads, leaves)]
        assert max(errs) < 2e-2, f"backward {kernel}: relative errors dq, dk, dv {errs}"
        torch.cuda.synchronize()
        fa.attention_backward(dout, q, k, v, out, lse, kernel=kernel)
        torch.cuda.synchronize()
        print(f"backward hd128 {kernel}: checked (relative errors {', '.join(f'{e:.1e}' for e in errs)}), profiled",
              flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    forward_cases()
    backward_cases()
