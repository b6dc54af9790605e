"""The library's machine code, read with cuobjdump from the kernel objects the build left in
build/obj (the CUDA toolkit's cuobjdump and nvdisasm, or those of the sass extra's wheels, which
CI installs), so a change that moves the math off the tensor cores, spills, or drops an architecture
fails here, on any machine, GPU or not (tools/gpu_check.sh's sass step prints the same counts):
  - no kernel spills: no LDL or STL anywhere;
  - every sm90 attention kernel (forward and backward) does its matrix products with HGMMA
    (wgmma) and none with HMMA (mma.sync), in sm_90a code;
  - every sm80-family attention kernel (forward, backward, decode) does them with HMMA, in
    code for each architecture the family is built for (build_info(); sm_80 and sm_90 by
    default).
The scalar path this project replaced would fail the second and third checks.
"""
import glob
import os
import re
import subprocess
import sys

import pytest

import flashattn_c as fa
from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
from cuda_tools import find_tool  # noqa: E402

OBJ_DIR = os.path.join(REPO_ROOT, "build", "obj", "csrc", "kernels")
OBJECTS = sorted(glob.glob(os.path.join(OBJ_DIR, "*.cu.o")))

SM90_ATTENTION = re.compile(r"fa_sm90.*(fwd_kernel|bwd_kernel)")
SM80_ATTENTION = re.compile(r"fwd_sm80_kernel|bwd_sm80_kernel|fa_decode.*decode_kernel")
SPILL = re.compile(r"\b(LDL|STL)\b")


CUOBJDUMP, NVDISASM = find_tool("cuobjdump"), find_tool("nvdisasm")  # cuobjdump runs nvdisasm


def kernels_of(obj):
    """(arch, kernel name) -> the kernel's SASS lines, from cuobjdump --dump-sass."""
    env = dict(os.environ, NVDISASM_PATH=os.path.dirname(NVDISASM))
    proc = subprocess.run([CUOBJDUMP, "--dump-sass", obj], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    kernels, arch, name = {}, None, None
    for line in proc.stdout.splitlines():
        m = re.search(r"arch = (sm_\w+)", line)
        if m:
            arch, name = m.group(1), None
            continue
        m = re.search(r"Function : (\S+)", line)
        if m:
            name = m.group(1)
            kernels[(arch, name)] = []
        elif name is not None:
            kernels[(arch, name)].append(line)
    return kernels


def count(lines, opcode):
    return sum(1 for line in lines if re.search(r"\b%s\b" % opcode, line))


pytestmark = [
    pytest.mark.skipif(CUOBJDUMP is None or NVDISASM is None,
                       reason="no cuobjdump and nvdisasm (the CUDA toolkit's, or pip install -e "
                              "\".[sass]\")"),
    pytest.mark.skipif(not OBJECTS, reason="no kernel objects under build/obj (python setup.py "
                                           "build_ext --inplace --build-temp build/obj)"),
]


@pytest.mark.parametrize("obj", [os.path.basename(o) for o in OBJECTS] or ["none"])
def test_kernels_spill_nothing_and_use_the_tensor_cores(obj):
    kernels = kernels_of(os.path.join(OBJ_DIR, obj))
    if obj in ("fwd_sm80.cu.o", "fwd_sm90.cu.o", "bwd_sm80.cu.o"):
        assert not kernels, f"{obj} holds the family's host code only"
        return
    family = "sm90" if "sm90" in obj else "sm80"
    built = fa.build_info()["families"].get(family)
    if not built:
        pytest.skip(f"this build has no {family} family (FLASHATTN_C_ARCHS)")
    assert kernels, f"{obj}: no kernel in its machine code"
    # The families' architectures as this build made them: sm90 as sm_90a, sm80 as SASS for each.
    want = {"sm_90a"} if family == "sm90" else {f"sm_{a}" for a in built}
    assert {arch for arch, _ in kernels} == want, (obj, sorted(kernels))
    attention = 0
    for (arch, name), lines in kernels.items():
        assert not any(SPILL.search(line) for line in lines), f"{obj}: {name} ({arch}) spills"
        if SM90_ATTENTION.search(name):
            attention += 1
            assert count(lines, "HGMMA[.\\w]*") > 0 and count(lines, "HMMA[.\\w]*") == 0, \
                f"{obj}: {name} does not carry its products on HGMMA alone"
        elif SM80_ATTENTION.search(name):
            attention += 1
            assert count(lines, "HMMA[.\\w]*") > 0, f"{obj}: {name} ({arch}) has no HMMA"
    if not re.match(r"(bwd_sm80_aux|fwd_sm80_kvcache_aux)\.cu\.o$", obj):
        assert attention, f"{obj}: no attention kernel recognised among {sorted(kernels)}"
