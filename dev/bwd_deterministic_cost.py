"""What deterministic=True costs: attention_backward timed with and without it, on one GPU.

Each mode runs its backward (kernel='auto' unless --kernel) on the same inputs: 3 warm-up calls,
then --calls calls timed with CUDA events, median of --repeats. TFLOP/s count 2.5x the forward's
FLOPs (halved causal), as benches/bench_attention.py does. The kernel that ran is read from the
launch record, since auto may pick another family for deterministic=True.

    python dev/bwd_deterministic_cost.py --head-dim 128 --seqlen 16384 --heads 16
"""
import argparse
import statistics

import torch

import flashattn_c as fa


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=16384)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    ap.add_argument("--kernel", default=None)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    dt = getattr(torch, args.dtype)
    shape = (args.batch, args.seqlen, args.heads, args.head_dim)
    q, k, v, dout = (torch.randn(shape, device="cuda", dtype=dt) for _ in range(4))
    print(f"{torch.cuda.get_device_name()}  B={args.batch} H={args.heads} S={args.seqlen} "
          f"D={args.head_dim} {args.dtype}")
    print(f"{'causal':>6} {'deterministic':>13} {'ms':>8} {'TFLOP/s':>8}  kernel")
    for causal in (False, True):
        out, lse = fa.attention(q, k, v, causal=causal, return_lse=True)
        flops = 2.5 * 4 * args.batch * args.heads * args.seqlen ** 2 * args.head_dim
        flops /= 2 if causal else 1
        times = {}
        for det in (False, True):
            def call():
                return fa.attention_backward(dout, q, k, v, out, lse, causal=causal,
                                             deterministic=det, kernel=args.kernel)
            for _ in range(3):
                call()
            kernel = fa.last_launch()["kernel"]
            runs = []
            for _ in range(args.repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(args.calls):
                    call()
                end.record()
                end.synchronize()
                runs.append(start.elapsed_time(end) / args.calls)
            times[det] = statistics.median(runs)
            print(f"{int(causal):>6} {int(det):>13} {times[det]:8.3f} {flops / times[det] / 1e9:8.1f}  {kernel}")
        print(f"{'':>6} deterministic / default speed: {times[False] / times[True]:.2f}x")


if __name__ == "__main__":
    main()
