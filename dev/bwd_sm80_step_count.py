#!/usr/bin/env python3
"""bwd_sm80_step_count.py -- the instructions one warp issues per query block (a step of the
main loop) in the sm80 backward kernel, counted in its machine code, without a GPU.

    dev/bwd_sm80_step_count.py [--tree DIR] [--head-dim 64,128,256] [--arch 90] [--lines N]

The step has runtime branches (softcap, masked blocks, deterministic turns) that a static count
would add up; the common path (no softcap, no mask, not deterministic) is what runs in every
unmasked block of a plain call. So the kernel sources are copied to a scratch directory, the
three branch conditions are replaced by constants (each replacement must match exactly once,
else the sources changed and this script says so), the head dim's unit is compiled with the
project's flags for one target (sm_90 by default), and nvdisasm's listing is cut to the
kernel's main loop: the backward branch that spans the most instructions. Each instance in the
unit is counted (bf16, uniform batch: the fp16 and packed ones differ in a few instructions),
split into the tensor-core MMAs, ldmatrix, shared-memory loads and stores, MUFU, the other
float work, cp.async, global reductions and loads, branches and barriers, and the integer,
predicate and move instructions that form addresses and indices. --lines N prints the N source
lines with the most integer/control instructions (built with -lineinfo).

A count is not a timing: use it to compare two versions of the kernel (--tree), and time them
on a GPU (dev/bwd_check.cu) before claiming a speed.
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools"))
from cuda_tools import find_tool  # noqa: E402

# (file under csrc/kernels, text, replacement): the common path's branch conditions
COMMON_PATH = [
    ("sm80_bwd_kernel.cuh", "if (p.score.softcap_pre != 0.f)", "if (false)"),
    ("sm80_bwd_kernel.cuh", "const bool masked = fa_row_block_needs_mask(&w.range, m);",
     "const bool masked = false;"),
    ("sm80_bwd_kernel.cuh", "if (p.deterministic)\n        dq_turn_wait(", "if (false)\n        dq_turn_wait("),
    ("sm80_bwd_kernel.cuh", "if (p.deterministic)\n        dq_turn_pass(", "if (false)\n        dq_turn_pass("),
]

WORK = {"HMMA": "mma", "LDSM": "ldmatrix", "LDS": "lds/sts", "STS": "lds/sts", "MUFU": "mufu",
        "FFMA": "float", "FMUL": "float", "FADD": "float", "FMNMX": "float", "FSETP": "float",
        "FSEL": "float", "F2FP": "float", "F2F": "float", "LDGSTS": "cp.async",
        "LDGDEPBAR": "cp.async", "DEPBAR": "cp.async", "RED": "global", "REDG": "global",
        "LDG": "global", "STG": "global", "ATOMG": "global", "BRA": "branch/barrier",
        "BAR": "branch/barrier", "WARPSYNC": "branch/barrier", "BSSY": "branch/barrier",
        "BSYNC": "branch/barrier", "EXIT": "branch/barrier", "NOP": "branch/barrier"}
OVERHEAD = ("int/pred/move", "branch/barrier")


def common_path_sources(tree, scratch):
    """csrc of `tree` copied under scratch with COMMON_PATH applied; raises if a text is not
    found exactly once."""
    dst = os.path.join(scratch, "csrc")
    shutil.copytree(os.path.join(tree, "csrc"), dst)
    for name, text, repl in COMMON_PATH:
        path = os.path.join(dst, "kernels", name)
        with open(path) as f:
            src = f.read()
        n = src.count(text)
        if n != 1:
            raise SystemExit(f"{name}: {text!r} found {n} times, not once: the kernel changed; "
                             "update COMMON_PATH in this script")
        with open(path, "w") as f:
            f.write(src.replace(text, repl))
    return dst


def listing(csrc, head_dim, arch, nvdisasm, lineinfo):
    cubin = os.path.join(os.path.dirname(csrc), f"hd{head_dim}.cubin")
    cmd = ["nvcc", "-cubin", "-O3", "-std=c++17", "--use_fast_math", "-DNDEBUG", "-DFA_WITH_SM80",
           f"-gencode=arch=compute_{arch},code=sm_{arch}", "-I", csrc,
           os.path.join(csrc, "kernels", f"bwd_sm80_hd{head_dim}.cu"), "-o", cubin]
    if lineinfo:
        cmd.insert(1, "-lineinfo")
    subprocess.run(cmd, check=True)
    return subprocess.run([nvdisasm, "-c"] + (["-g"] if lineinfo else []) + [cubin], check=True,
                          capture_output=True, text=True).stdout


def kernels(text):
    """name -> [(instruction, source line or None)] for each kernel; labels -> index."""
    out, cur, src = {}, None, None
    for line in text.splitlines():
        if line.startswith(".text."):
            cur = line[len(".text."):].rstrip(":")
            out[cur] = ([], {})
            continue
        if cur is None:
            continue
        m = re.search(r'File "(.*?)", line (\d+)', line)
        if m:
            src = f"{os.path.basename(m.group(1))}:{m.group(2)}"
            continue
        m = re.match(r"^(\.L_x_\d+):", line)
        if m:
            out[cur][1][m.group(1)] = len(out[cur][0])
            continue
        m = re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", line)
        if m:
            out[cur][0].append((m.group(1), src))
    return out


def main_loop(ins, labels):
    """The instructions of the widest backward branch's loop."""
    best = None
    for i, (s, _) in enumerate(ins):
        m = re.search(r"BRA\s+`?\(?(\.L_x_\d+)", s)
        if m and labels.get(m.group(1), i) < i:
            start = labels[m.group(1)]
            if best is None or i - start > best[1] - best[0]:
                best = (start, i)
    if best is None:
        raise SystemExit("no loop found in the kernel")
    return ins[best[0]:best[1] + 1]


def kind(instruction):
    op = re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0]
    return WORK.get(op.split(".")[0], "int/pred/move")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", default=os.path.join(HERE, ".."), help="the project tree to count")
    ap.add_argument("--head-dim", default="64,128,256")
    ap.add_argument("--arch", default="90")
    ap.add_argument("--lines", type=int, default=0)
    args = ap.parse_args()
    nvdisasm = find_tool("nvdisasm")
    if nvdisasm is None or shutil.which("nvcc") is None:
        raise SystemExit("needs nvcc and nvdisasm (the CUDA toolkit's, or pip install -e '.[sass]')")
    with tempfile.TemporaryDirectory() as scratch:
        csrc = common_path_sources(os.path.abspath(args.tree), scratch)
        for hd in (int(h) for h in args.head_dim.split(",")):
            text = listing(csrc, hd, args.arch, nvdisasm, args.lines > 0)
            for name, (ins, labels) in sorted(kernels(text).items()):
                # bf16 (the BF16 argument true), uniform batch (SEQ false): the last two bools
                if not re.search(r"Lb1ELb0EEEv", name):
                    continue
                loop = main_loop(ins, labels)
                counts = collections.Counter(kind(s) for s, _ in loop)
                mma = counts["mma"] or 1
                print(f"{name}: {len(loop)} instructions a step, {counts['mma']} mma "
                      f"({len(loop) / mma:.2f} per mma); " +
                      ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
                if args.lines:
                    by_line = collections.Counter(src for s, src in loop if kind(s) in OVERHEAD)
                    for src, n in by_line.most_common(args.lines):
                        print(f"    {n:4d}  {src}")


if __name__ == "__main__":
    main()
