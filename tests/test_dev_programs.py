"""The dev/ programs (each kernel's check against a host reference, and the kernel variants
that are not the library's) and the CUDA probes in tools/ run only on a GPU, so nothing else
notices when a change to the kernel headers breaks one of them. Each must still compile
against the current headers, for the target its own build line names: front end and NVVM
only (PTX, no ptxas, device code at -O0), so a program costs seconds, not its full build.
The profiler summary that tools/stall_reasons.sh prints is checked on a made-up report.
"""
import os
import re
import shutil
import subprocess
import sys

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


NCU_RAW_CSV = """\
"==PROF== Disconnected from process 1"
"ID","Kernel Name","Grid Size","gpu__time_duration.sum",\
"smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",\
"smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",\
"smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio",\
"sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active",\
"sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active"
"","","","usecond","ratio","ratio","ratio","%","%"
"0","fwd_kernel<two>","(132, 1, 1)","4,512.5","0.40","1.25","0.01","71.2","35.5"
"""


def test_ncu_summary_ranks_stall_reasons_and_pipes(tmp_path):
    """tools/stall_reasons.sh prints what tools/ncu_summary.py reads off ncu's raw CSV: stalls
    largest first, negligible ones (< 0.05 warps per issue) left out, pipes by % of peak."""
    csv_path = tmp_path / "r.csv"
    csv_path.write_text(NCU_RAW_CSV)
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "ncu_summary.py"), str(csv_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("1 launches")
    assert "fwd_kernel<two>" in lines[1] and "(132, 1, 1)" in lines[1] and "4512.5 usecond" in lines[1]
    assert lines[2].endswith("stalls (warps per issue): long_scoreboard 1.25, barrier 0.40")
    assert lines[3].endswith("pipe_tensor_op_gmma_cycles_active 71.2, inst_executed_pipe_xu 35.5")


def test_ncu_summary_refuses_a_file_that_is_not_a_raw_csv(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "ncu_summary.py"), str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "no 'ID' header row" in proc.stderr


def test_ncu_summary_falls_back_to_any_stall_metric(tmp_path):
    """Where ncu names its stall metrics otherwise, they are still printed, not dropped."""
    csv_path = tmp_path / "r.csv"
    csv_path.write_text('"ID","Kernel Name","smsp__pcsamp_warps_issue_stalled_barrier"\n"","",""\n"0","k","17"\n')
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "ncu_summary.py"), str(csv_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "stall metrics: smsp__pcsamp_warps_issue_stalled_barrier 17.00" in proc.stdout


def load_step_count():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "bwd_sm80_step_count", os.path.join(REPO_ROOT, "dev", "bwd_sm80_step_count.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not os.path.isdir(os.path.join(REPO_ROOT, "dev")), reason="no dev/ here (an sdist ships none)")
def test_step_count_still_finds_the_kernels_runtime_branches(tmp_path):
    """dev/bwd_sm80_step_count.py counts the sm80 backward's common path by replacing its
    runtime branch conditions with constants; each must still be in the kernel, once."""
    step_count = load_step_count()
    csrc = step_count.common_path_sources(REPO_ROOT, str(tmp_path))
    with open(os.path.join(csrc, "kernels", "sm80_bwd_kernel.cuh")) as f:
        src = f.read()
    assert "p.score.softcap_pre != 0.f" not in src and "p.deterministic" not in src
    assert "const bool masked = false;" in src


def test_step_count_refuses_a_kernel_it_does_not_recognise(tmp_path):
    step_count = load_step_count()
    tree = tmp_path / "tree"
    (tree / "csrc" / "kernels").mkdir(parents=True)
    (tree / "csrc" / "kernels" / "sm80_bwd_kernel.cuh").write_text("if (p.score.softcap_pre != 0.f)\n" * 2)
    with pytest.raises(SystemExit, match="found 2 times, not once"):
        step_count.common_path_sources(str(tree), str(tmp_path / "scratch"))


def test_step_count_finds_the_widest_loop():
    step_count = load_step_count()
    listing = """\
.text.k:
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
.L_x_1:
        /*0020*/                   IMAD R2, R3, 0x4, RZ ;
        /*0030*/               @P0 BRA `(.L_x_1) ;
        /*0040*/                   LDSM.16.M88.4 R8, [R2] ;
        /*0050*/               @P1 BRA `(.L_x_0) ;
        /*0060*/                   EXIT ;
"""
    ins, labels = step_count.kernels(listing)["k"]
    loop = step_count.main_loop(ins, labels)
    assert [step_count.kind(s) for s, _ in loop] == [
        "mma", "int/pred/move", "branch/barrier", "ldmatrix", "branch/barrier"]


PATCH_DIR = os.path.join(REPO_ROOT, "dev", "patches")
PATCHES = sorted(f for f in os.listdir(PATCH_DIR) if f.endswith(".patch")) if os.path.isdir(PATCH_DIR) else []


def patch_series(name):
    """The patches its header's Apply: line names, in order, ending with this one."""
    with open(os.path.join(PATCH_DIR, name)) as f:
        header = f.read().split("\ndiff --git", 1)[0]
    m = re.search(r"Apply:(.*)", " ".join(header.split()))
    assert m, f"{name}: no 'Apply:' line in its header"
    series = re.findall(r"dev/patches/([\w.-]+\.patch)", m.group(1))
    assert series and series[-1] == name, f"{name}: its Apply: line must end with itself: {series}"
    return series


@pytest.mark.skipif(not PATCHES, reason="no dev/patches here (an sdist ships none)")
@pytest.mark.skipif(shutil.which("git") is None, reason="git is not on PATH")
@pytest.mark.parametrize("name", PATCHES)
def test_pending_patch_still_applies_at_head(name, tmp_path):
    """A patch in dev/patches waits for a GPU to measure it; a commit that touches the lines it
    changes must rebase it (or drop it, saying why in benches/NOTES.md), not leave it to fail
    on the device. Applied in a copy of the sources, after the patches its header names first."""
    tree = tmp_path / "tree"
    shutil.copytree(REPO_ROOT, tree, ignore=shutil.ignore_patterns(".git", "build", ".devrun", "*.so", "__pycache__"))
    for patch in patch_series(name):
        proc = subprocess.run(["git", "apply", os.path.join(PATCH_DIR, patch)], cwd=tree,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{patch} (for {name}) does not apply at HEAD:\n{proc.stderr}"
