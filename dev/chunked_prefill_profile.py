"""Where the chunked-prefill gap goes (issue 15): per call, GPU time between two events around
10 calls, and each kernel's own time (torch.profiler), for the KV-cache call with its append,
the same call without it, attention() after a torch copy of the same rows into the cache, after
an unrelated 4 MB write, and attention() itself. bf16, 32 q heads over 8 kv heads, hd128, one
batch entry, causal. Needs a GPU and torch; run from the repository root after building in
place: python dev/chunked_prefill_profile.py"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import flashattn_c as fa  # noqa: E402

SHORT = {"void fa_sm90::fwd_kernel<": "fwd", "fa_kvcache_aux::append_kernel": "append",
         "void at::native::vectorized_elementwise_": "fill", "Memcpy DtoD": "copy"}


def short(name):
    return next((v for k, v in SHORT.items() if name.startswith(k)), name[:40])


def main():
    B, Hq, Hkv, D = 1, 32, 8, 128
    for S, chunk in ((8192, 512), (32768, 512), (8192, 2048)):
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(B, chunk, Hq, D, device="cuda", dtype=torch.bfloat16, generator=g)
        kc = torch.randn(B, S, Hkv, D, device="cuda", dtype=torch.bfloat16, generator=g)
        vc = torch.randn(B, S, Hkv, D, device="cuda", dtype=torch.bfloat16, generator=g)
        kn, vn = kc[:, S - chunk:].clone(), vc[:, S - chunk:].clone()
        scratch = torch.empty(4 << 20, device="cuda", dtype=torch.uint8)

        def read():
            return fa.attention_with_kvcache(q, kc, vc, cache_seqlens=S, causal=True)

        def copy_read():
            kc[:, S - chunk:].copy_(kn)
            vc[:, S - chunk:].copy_(vn)
            return read()

        def scratch_read():
            scratch.fill_(1)
            return read()

        calls = {"kvcache": lambda: fa.attention_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=S - chunk,
                                                              causal=True),
                 "kvcache_read": read, "copy_read": copy_read, "scratch_read": scratch_read,
                 "attention": lambda: fa.attention(q, kc, vc, causal=True)}
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(2):
            for name, f in calls.items():
                for _ in range(3):
                    f()
                torch.cuda.synchronize()
                start.record()
                for _ in range(10):
                    f()
                end.record()
                end.synchronize()
                per_call = start.elapsed_time(end) / 10 * 1e3
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(10):
                        f()
                    torch.cuda.synchronize()
                kernels = "  ".join(f"{short(e.key)}={e.device_time_total / e.count:.1f}"
                                    for e in prof.key_averages() if e.device_time_total > 0)
                print(f"S={S} chunk={chunk} {name:13s} call_us={per_call:.1f}  {kernels}")


if __name__ == "__main__":
    main()
