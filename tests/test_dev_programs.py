"""The dev/ programs (each kernel's check against a host reference, and the kernel variants
that are not the library's) and the CUDA probes in tools/ run only on a GPU, so nothing else
notices when a change to the kernel headers breaks one of them. Each must still compile
against the current headers, for the target its own build line names: front end and NVVM
only (PTX, no ptxas, device code at -O0), so a program costs seconds, not its full build.
"""
import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT

PROGRAMS = sorted(
    os.path.join(d, f)
    for d in ("dev", "tools")
    if os.path.isdir(os.path.join(REPO_ROOT, d))
    for f in os.listdir(os.path.join(REPO_ROOT, d))
    if f.endswith(".cu"))

NVCC = shutil.which("nvcc")


def target_of(path):
    """The compute target of the program's documented build line (its first gencode)."""
    with open(os.path.join(REPO_ROOT, path)) as f:
        m = re.search(r"arch=compute_(\d+a?)", f.read())
    assert m, f"{path} names no -gencode arch=compute_XX in its build line"
    return m.group(1)


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.skipif(not PROGRAMS, reason="no dev/ or tools/ CUDA programs here (an sdist ships no dev/)")
@pytest.mark.parametrize("path", PROGRAMS)
def test_dev_program_compiles_against_the_current_headers(path, tmp_path):
    arch = target_of(path)
    cmd = [NVCC, "-c", "-std=c++17", "-Xcicc", "-O0", f"-gencode=arch=compute_{arch},code=compute_{arch}",
           "-I", os.path.join(REPO_ROOT, "csrc"), os.path.join(REPO_ROOT, path), "-o", str(tmp_path / "x.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
