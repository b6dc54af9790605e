"""The combine launch of the KV-cache op is a programmatic dependent of the decode launch only
where the GPU runs code that holds griddepcontrol.wait: code nvcc generated for exactly that
GPU's architecture, at sm_90 or later. Elsewhere the driver runs the JIT-compiled PTX of the build's lowest target,
in which the wait compiles to nothing, and an early start could read the decode grid's partial
results before they are visible. fa_sass_has_griddepcontrol (csrc/kernels/kernels.h) decides
from the targets nvcc compiles a file for; this builds a host program against it, once per
target set, and asks it about each GPU. No GPU is needed: the program makes no CUDA call."""
import os
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT

NVCC = shutil.which("nvcc")

PROBE = r"""
#include <cstdio>
#include "kernels/kernels.h"
int main() {
    const int gpus[][2] = {{8, 0}, {8, 6}, {8, 9}, {9, 0}, {10, 0}, {12, 0}};
    for (const auto &g : gpus)
        std::printf("%d%d %d\n", g[0], g[1], fa_sass_has_griddepcontrol(g[0], g[1]) ? 1 : 0);
    return 0;
}
"""


def answers(tmp_path, gencodes):
    src = tmp_path / "probe.cu"
    src.write_text(PROBE)
    exe = tmp_path / "probe"
    cmd = [NVCC, "-std=c++17", "-I", os.path.join(REPO_ROOT, "csrc"), *gencodes, str(src), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, check=True).stdout
    return {gpu: flag == "1" for gpu, flag in (line.split() for line in out.splitlines())}


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
def test_the_default_sm80_family_build_waits_on_hopper_only(tmp_path):
    """FLASHATTN_C_ARCHS="80;90": SASS for sm_80 and sm_90, PTX of sm_80."""
    got = answers(tmp_path, ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
                             "-gencode=arch=compute_80,code=compute_80"])
    assert got == {"80": False, "86": False, "89": False, "90": True, "100": False, "120": False}


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
def test_a_hopper_gpu_running_ampere_ptx_never_waits(tmp_path):
    """FLASHATTN_C_ARCHS="80;90a": the sm80 family has sm_80 SASS and PTX only, so on an H100
    its kernels are JIT-compiled from sm_80 PTX, where griddepcontrol does not exist."""
    got = answers(tmp_path, ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_80,code=compute_80"])
    assert not any(got.values()), got
