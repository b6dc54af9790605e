"""The packed-batch backward of both families: attention_varlen_backward timed with kernel='sm90'
and kernel='sm80', and, at equal lengths, the dense sm90 backward on the same tokens.

Cases: benches/bench_serving.py's varlen suite (16k tokens, 16 heads, head_dim 128, causal):
two long-tailed ragged batches and eight sequences of 2048. Every family's dq, dk and dv are
first checked against float32 gradients computed sequence by sequence with SDPA (peer: SDPA's
default dispatch at the input dtype) by the project's rule; one that fails is reported and not
timed. TFLOP/s: 2.5x the forward's useful FLOPs (the sum over sequences of 4 H L^2 D / 2), as
benches/bench_attention.py counts a backward.

    python dev/varlen_bwd_cost.py --dtype bfloat16
"""
import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

import flashattn_c as fa

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benches"))
from bench_serving import ragged_lengths, rule, time_impls  # noqa: E402

H, D, TOTAL = 16, 128, 16384


def sdpa_grads(q, k, v, dout, cu, lens, dtype):
    """dq, dk, dv of causal SDPA per sequence, computed in dtype."""
    grads = [torch.empty(x.shape, device="cuda", dtype=dtype) for x in (q, k, v)]
    for b, n in enumerate(lens):
        s = int(cu[b])
        leaves = [x[s:s + n].transpose(0, 1)[None].to(dtype).requires_grad_(True)
                  for x in (q, k, v)]
        out = F.scaled_dot_product_attention(*leaves, is_causal=True)
        out.backward(dout[s:s + n].transpose(0, 1)[None].to(dtype))
        for g, x in zip(grads, leaves):
            g[s:s + n] = x.grad[0].transpose(0, 1)
    return grads


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    dt = getattr(torch, args.dtype)
    cases = [("ragged_s1", ragged_lengths(args.seed, TOTAL, 8192, 1.0)),
             ("ragged_s2", ragged_lengths(args.seed + 1, TOTAL, 8192, 1.5)),
             ("equal_2k", [2048] * 8)]
    print(f"{torch.cuda.get_device_name()}  H={H} D={D} {args.dtype} causal, {TOTAL} tokens")
    print(f"{'case':>10} {'impl':>12} {'ms':>8} {'TFLOP/s':>8}  {'max err dq/dk/dv':>26}  kernel")
    for tag, lens in cases:
        g = torch.Generator(device="cuda").manual_seed(args.seed)
        q, k, v, dout = (torch.randn(TOTAL, H, D, device="cuda", dtype=dt, generator=g)
                         for _ in range(4))
        cu = torch.tensor([0] + [sum(lens[:i + 1]) for i in range(len(lens))], device="cuda",
                          dtype=torch.int32)
        longest = max(lens)
        flops = 2.5 * sum(4.0 * H * n * n * D / 2 for n in lens)
        out, lse = fa.attention_varlen(q, k, v, cu, cu, longest, longest, causal=True,
                                       return_lse=True)
        ref = sdpa_grads(q, k, v, dout, cu, lens, torch.float32)
        peer = sdpa_grads(q, k, v, dout, cu, lens, dt)
        impls = {f"varlen_{fam}": (lambda fam=fam: fa.attention_varlen_backward(
            dout, q, k, v, out, lse, cu, cu, longest, longest, causal=True, kernel=fam))
            for fam in ("sm90", "sm80")}
        if len(set(lens)) == 1:
            dense = [x.view(len(lens), lens[0], H, D) for x in (q, k, v, dout, out)]
            dense_lse = lse.view(H, len(lens), lens[0]).transpose(0, 1).contiguous()
            impls["dense_sm90"] = lambda: fa.attention_backward(
                dense[3], *dense[:3], dense[4], dense_lse, causal=True, kernel="sm90")
        print(f"{tag:>10}  {len(lens)} sequences, longest {longest}")
        for name, fn in impls.items():
            grads = [x.reshape(TOTAL, x.shape[-2], D) for x in fn()[:3]]
            kernel = fa.last_launch()["kernel"]
            checks = [rule(torch, o, p, r) for o, p, r in zip(grads, peer, ref)]
            errs = "/".join(f"{c[1]:.1e}" for c in checks)
            if not all(c[0] for c in checks):
                print(f"{'':>10} {name:>12} {'FAILED':>8} {'':>8}  {errs:>26}  {kernel}")
                continue
            ms = statistics.median(time_impls(torch, {name: fn}, args.repeats, args.calls)[name])
            print(f"{'':>10} {name:>12} {ms:8.3f} {flops / ms / 1e9:8.1f}  {errs:>26}  {kernel}")


if __name__ == "__main__":
    main()
