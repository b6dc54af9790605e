"""Packaging (issue 16 items 3, 4 and 13): the sdist carries every file a build, the tests and
the tools need; the license is stated; the documented install routes list their prerequisites.

The sdist is made here with the running setuptools (no compiler involved: `setup.py sdist`
only gathers files). Building a wheel from it and installing that into a clean venv takes a
full nvcc build, so .ci/run does that step.
"""
import fcntl
import importlib.metadata
import os
import re
import subprocess
import sys
import tarfile
import tempfile

import pytest

from conftest import REPO_ROOT

# What the sdist must carry beyond the Python package: the build's sources and headers, the
# tests and their helpers, the tools, the smoke test and the benchmark.
SHIPPED_DIRS = ("csrc/", "tests/", "benches/", "tools/")
SHIPPED_FILES = ("LICENSE", "README.md", "pyproject.toml", "setup.py", "smoke_test.py",
                 "MANIFEST.in", "flashattn_c/__init__.py", "flashattn_c/_api.py")


def tracked_files():
    try:
        proc = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return [f for f in proc.stdout.splitlines() if os.path.exists(os.path.join(REPO_ROOT, f))]


@pytest.fixture(scope="module")
def sdist_members(tmp_path_factory):
    pytest.importorskip("setuptools")  # a venv of Python >= 3.12 comes without it
    out = tmp_path_factory.mktemp("sdist")
    # sdist stages the release tree in the repository itself: pytest -n workers that build it
    # at once would remove each other's staging directory, so they take turns.
    with open(os.path.join(tempfile.gettempdir(), "flashattn_c_sdist.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base",
                               str(out), "sdist", "--dist-dir", str(out)], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    archives = [f for f in os.listdir(out) if f.endswith(".tar.gz")]
    assert len(archives) == 1, os.listdir(out)
    with tarfile.open(out / archives[0]) as tar:
        names = tar.getnames()
        prefix = names[0].split("/")[0] + "/"
        pkg_info = tar.extractfile(prefix + "PKG-INFO").read().decode()
    return {n[len(prefix):]: pkg_info for n in names if n.startswith(prefix)}


def test_sdist_carries_the_headers_tests_tools_and_smoke_test(sdist_members):
    """No MANIFEST.in used to mean no headers (device_array.h: No such file or directory), no
    tests/conftest.py, tests/reference.py, smoke_test.py, benches/ or tools/."""
    for name in SHIPPED_FILES + ("csrc/device_array.h", "csrc/flashattn.h", "csrc/tensor.h",
                                 "tests/conftest.py", "tests/reference.py",
                                 "benches/bench_attention.py", "tools/fa_selftest.c",
                                 "tools/build_selftest.sh"):
        assert name in sdist_members, name
    headers = {m for m in sdist_members if m.startswith("csrc/") and m.endswith((".h", ".cuh"))}
    on_disk = {os.path.relpath(os.path.join(d, f), REPO_ROOT)
               for d, _, files in os.walk(os.path.join(REPO_ROOT, "csrc"))
               for f in files if f.endswith((".h", ".cuh"))}
    assert on_disk <= headers, sorted(on_disk - headers)


def test_sdist_carries_every_tracked_file_a_build_or_test_needs(sdist_members):
    tracked = tracked_files()
    if tracked is None:
        pytest.skip("not a git checkout")
    needed = {f for f in tracked if f.startswith(SHIPPED_DIRS) or f in SHIPPED_FILES}
    assert needed - set(sdist_members) == set()


def test_sdist_carries_no_build_output(sdist_members):
    bad = [m for m in sdist_members
           if m.endswith((".so", ".o", ".pyc", ".sha256")) or m.startswith(("build/", "dist/"))
           or "__pycache__" in m or m == "tools/fa_selftest"]
    assert bad == []


def test_license_file_and_metadata(sdist_members):
    with open(os.path.join(REPO_ROOT, "LICENSE")) as f:
        text = f.read()
    assert text.startswith("MIT License") and "flashattn_c authors" in text
    assert "LICENSE" in sdist_members
    pkg_info = sdist_members["LICENSE"]
    assert re.search(r"^(License|License-Expression): MIT$", pkg_info, re.M), pkg_info
    assert re.search(r"^License-File: LICENSE$", pkg_info, re.M), pkg_info


def test_installed_metadata_names_the_license():
    try:
        meta = importlib.metadata.metadata("flashattn_c")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("flashattn_c is not installed (built in place): no metadata to read")
    if meta.get("Version") is None:
        pytest.skip("no installed metadata")
    license_text = meta.get("License-Expression") or meta.get("License") or ""
    assert license_text.strip() == "MIT", dict(meta)


def test_no_build_isolation_route_lists_its_prerequisites():
    """pip install --no-build-isolation -e . in a fresh venv failed with "invalid command
    'bdist_wheel'": the route now says what to install first, wherever it is documented."""
    for path in ("setup.py", "README.md"):
        with open(os.path.join(REPO_ROOT, path)) as f:
            text = f.read()
        route = text.index("--no-build-isolation")
        prereq = text.rfind('pip install "setuptools>=70.1" numpy', 0, route)
        assert prereq != -1 and route - prereq < 300, path
