"""What a new user meets first (issue 16): the quick start, an install that the source tree must
not shadow, the no-GPU message, and the small defects of the first calls.

CPU tests, except where marked: those skip with a reason without a GPU. Subprocess tests copy
the pure-Python package into a temporary folder to play an unbuilt checkout, and hide PyTorch
with a stand-in module that refuses to import.
"""
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import flashattn_c as fa
from conftest import REPO_ROOT, TESTS_DIR, gpu_gate, gpu_probe
from test_reliability_support import run_isolated

PACKAGE_DIR = os.path.dirname(os.path.abspath(fa.__file__))
PACKAGE_PARENT = os.path.dirname(PACKAGE_DIR)
HAS_GPU = gpu_probe() is None
no_gpu_only = pytest.mark.skipif(HAS_GPU, reason="there is a GPU: the no-GPU behaviour cannot "
                                                 "be seen here")
gpu_only = pytest.mark.skipif(not HAS_GPU, reason=str(gpu_probe()))

CUDA_ERROR_INSUFFICIENT_DRIVER = 35
CUDA_ERROR_NO_DEVICE = 100


def driver_installed():
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def run(cmd, cwd=None, env=None, timeout=300):
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run(cmd, cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def hidden_torch(tmp_path):
    """A PYTHONPATH entry whose `torch` refuses to import, as on a machine without PyTorch."""
    stub = tmp_path / "no_torch"
    (stub / "torch").mkdir(parents=True)
    (stub / "torch" / "__init__.py").write_text(
        "raise ImportError('No module named torch (hidden by the test)')\n")
    return str(stub)


@pytest.fixture
def unbuilt_checkout(tmp_path):
    """A folder laid out like a fresh clone: flashattn_c/*.py with no compiled extension, plus
    smoke_test.py and the tests' conftest."""
    root = tmp_path / "checkout"
    (root / "flashattn_c").mkdir(parents=True)
    for name in os.listdir(PACKAGE_DIR):
        if name.endswith(".py"):
            shutil.copy(os.path.join(PACKAGE_DIR, name), root / "flashattn_c" / name)
    shutil.copy(os.path.join(REPO_ROOT, "smoke_test.py"), root / "smoke_test.py")
    (root / "tests").mkdir()
    shutil.copy(os.path.join(TESTS_DIR, "conftest.py"), root / "tests" / "conftest.py")
    return root


# ================================================================================================
# 1. The quick start: one extra brings what the tests and the smoke test need; no GPU is blamed
#    on a missing torch; GPU tests fail, not skip, where a GPU is present but torch is not.


def pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def requirement_names(reqs):
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_the_test_extra_brings_torch_and_what_the_tests_import():
    extras = pyproject()["project"]["optional-dependencies"]
    names = requirement_names(extras["test"])
    assert {"pytest", "numpy", "torch", "ml-dtypes", "jax"} <= names, names
    assert "torch" in requirement_names(extras["bench"])


def test_readme_quick_start_installs_the_test_extra():
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        readme = f.read()
    assert 'pip install -e ".[test]" && python smoke_test.py' in readme
    assert "python -m pytest -q tests" in readme


@no_gpu_only
def test_smoke_test_without_gpu_blames_the_gpu_not_torch(hidden_torch):
    proc = run([sys.executable, os.path.join(REPO_ROOT, "smoke_test.py")], cwd=REPO_ROOT,
               env={"PYTHONPATH": hidden_torch})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "FAIL  no CUDA GPU" in out and "no PyTorch" not in out, out
    if not driver_installed():
        assert "no NVIDIA driver found" in out, out


@gpu_only
def test_smoke_test_with_gpu_and_without_torch_names_torch(hidden_torch):
    proc = run([sys.executable, os.path.join(REPO_ROOT, "smoke_test.py")], cwd=REPO_ROOT,
               env={"PYTHONPATH": hidden_torch})
    assert proc.returncode == 2 and "FAIL  no PyTorch" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("no_gpu, torch_problem, verdict", [
    ("no CUDA GPU is available: no NVIDIA driver found", None, "skip"),
    ("no CUDA GPU is available: no NVIDIA driver found", "PyTorch is not installed", "skip"),
    (None, "PyTorch is not installed", "fail"),
    (None, "PyTorch 2.5 cannot use the GPU", "fail"),
    (None, None, "run"),
])
def test_gpu_gate_skips_only_for_a_missing_gpu(no_gpu, torch_problem, verdict):
    got, reason = gpu_gate(no_gpu, torch_problem)
    assert got == verdict
    if verdict == "skip":
        assert reason == no_gpu
    if verdict == "fail":
        assert torch_problem in reason and 'pip install -e ".[test]"' in reason


@gpu_only
def test_gpu_tests_fail_loudly_with_a_gpu_and_without_torch(hidden_torch):
    proc = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "tests/test_cuda_attention.py", "-x"], cwd=REPO_ROOT,
               env={"PYTHONPATH": hidden_torch})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "a CUDA GPU is present but the GPU tests cannot run" in out, out


@no_gpu_only
def test_the_run_counts_skipped_gpu_tests_and_says_why():
    proc = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "tests/test_cuda_attention.py"], cwd=REPO_ROOT)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    summary = re.search(r"\[flashattn_c\] (\d+) tests skipped, by reason:\n\s+(\d+)\s+(.*)", out)
    assert summary, out
    assert int(summary.group(1)) == int(summary.group(2)) > 0
    assert summary.group(3).startswith("no CUDA GPU is available"), summary.group(3)


# ================================================================================================
# 2. An unbuilt source tree never shadows an installed package, and says so when imported.


# -S: no site-packages, so no editable-install finder either; the checkout is first on sys.path
# (PYTHONSAFEPATH, which conftest sets when this run itself is in an unbuilt checkout, cleared).
def test_an_unbuilt_checkout_says_what_is_wrong(unbuilt_checkout):
    proc = run([sys.executable, "-S", "-c", "import flashattn_c"], cwd=unbuilt_checkout,
               env={"PYTHONPATH": PACKAGE_PARENT, "PYTHONSAFEPATH": ""})
    err = proc.stderr
    assert proc.returncode != 0
    assert "circular import" not in err and "partially initialized" not in err, err
    assert "ImportError: flashattn_c was imported from" in err, err
    assert "compiled extension (flashattn_c._C) is not built" in err, err
    assert f"An installed flashattn_c is at {PACKAGE_DIR}" in err, err
    assert "run from another directory" in err and "build_ext --inplace" in err, err


def test_an_unbuilt_checkout_alone_says_how_to_build(unbuilt_checkout):
    proc = run([sys.executable, "-S", "-c", "import flashattn_c"], cwd=unbuilt_checkout,
               env={"PYTHONPATH": "", "PYTHONSAFEPATH": ""})
    assert proc.returncode != 0
    assert "Either install it (pip install .), or build the source tree in place" in proc.stderr


def test_smoke_test_in_an_unbuilt_checkout_uses_the_installed_package(unbuilt_checkout,
                                                                     hidden_torch):
    proc = run([sys.executable, str(unbuilt_checkout / "smoke_test.py")], cwd=unbuilt_checkout,
               env={"PYTHONPATH": os.pathsep.join([PACKAGE_PARENT, hidden_torch])})
    out = proc.stdout + proc.stderr
    assert f"PASS  import   flashattn_c {fa.__version__} from {PACKAGE_DIR}" in out, out
    assert proc.returncode == 2, out  # no GPU, or no torch: not an import failure


def test_pytest_in_an_unbuilt_checkout_uses_the_installed_package(unbuilt_checkout):
    (unbuilt_checkout / "tests" / "test_which.py").write_text(textwrap.dedent(f"""
        import subprocess, sys
        import flashattn_c

        def test_the_installed_package_is_tested():
            assert flashattn_c.__file__.startswith({PACKAGE_DIR!r})

        def test_child_interpreters_do_not_see_the_checkout_first():
            out = subprocess.run([sys.executable, "-c", "import flashattn_c; "
                                  "print(flashattn_c.__file__)"], capture_output=True,
                                 text=True)
            if sys.version_info >= (3, 11):  # PYTHONSAFEPATH
                assert out.stdout.startswith({PACKAGE_DIR!r}), out.stderr
    """))
    proc = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
               cwd=unbuilt_checkout, env={"PYTHONPATH": PACKAGE_PARENT})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_run_isolated_does_not_put_the_repo_root_first():
    report = run_isolated("import os, sys, flashattn_c\n"
                          "result([os.getcwd(), sys.path, flashattn_c.__file__])")
    assert report["status"] == "ok", report
    cwd, path, imported = report["result"]
    assert os.path.abspath(cwd) != REPO_ROOT
    first = [os.path.abspath(p or cwd) for p in path[:1]]
    assert REPO_ROOT not in first, path[:3]
    assert imported == fa.__file__, "the child must test the package this process tests"


# ================================================================================================
# 5. No GPU: a missing driver is told apart from an old one.


def runtime_version():
    return fa.build_info()["cuda_runtime_version"]


def test_no_driver_is_not_called_an_old_driver():
    reason = fa._C._no_gpu_reason(CUDA_ERROR_INSUFFICIENT_DRIVER, 0)
    assert reason.startswith("no NVIDIA driver found"), reason
    assert "insufficient" not in reason.lower() and "version" not in reason.lower(), reason


def test_an_old_driver_is_named_with_both_versions():
    rt = runtime_version()
    old = (rt // 1000 - 1) * 1000 + 20
    reason = fa._C._no_gpu_reason(CUDA_ERROR_INSUFFICIENT_DRIVER, old)
    expect = (f"the NVIDIA driver supports CUDA {old // 1000}.2, older than the CUDA "
              f"{rt // 1000}.{rt % 1000 // 10} runtime this build links statically")
    assert reason.startswith(expect), reason
    branch = {12: "R525", 13: "R580"}.get(rt // 1000)
    if branch:
        assert f"install a {branch} or newer driver" in reason, reason


def test_no_visible_device_names_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    reason = fa._C._no_gpu_reason(CUDA_ERROR_NO_DEVICE, runtime_version())
    assert "sees no GPU (CUDA_VISIBLE_DEVICES='')" in reason, reason


def test_readme_says_which_driver_a_build_needs():
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        readme = f.read()
    assert "R580" in readme and "CUDA 13" in readme


@pytest.mark.skipif(driver_installed(), reason="an NVIDIA driver is installed here")
def test_the_repro_without_a_driver_says_there_is_no_driver():
    code = ("import numpy as np, flashattn_c as fa; q = np.ones((1, 4, 1, 64), 'f2')\n"
            "try:\n    fa.attention(q, q, q)\n"
            "except fa.CudaError as e:\n"
            "    print(e); print(e.cuda_error_name); print(e.call_site)\n")
    proc = run([sys.executable, "-c", code], cwd=TESTS_DIR, env={"PYTHONPATH": PACKAGE_PARENT})
    message, name, site = proc.stdout.splitlines()[:3]
    assert message.startswith("no usable GPU: no NVIDIA driver found"), message
    assert "insufficient" not in message.lower(), message
    assert message.endswith("pass device='cpu' to run the C reference on the host instead")
    assert name == "cudaErrorInsufficientDriver" and re.search(r"module\.c:\d+$", site)


# ================================================================================================
# 7. softmax_scale: the accepted range never gives NaN on finite inputs


@pytest.mark.parametrize("scale", [1e37, 3e38, 3.4e38])
def test_huge_accepted_scales_give_no_nan(rng, scale):
    q = rng.standard_normal((1, 8, 1, 64)).astype(np.float32)
    out, lse = fa.attention(q, q, q, softmax_scale=scale, return_lse=True, device="cpu")
    assert not np.isnan(out).any() and not np.isnan(lse).any()


# ================================================================================================
# 8. NumPy bfloat16 (ml_dtypes) on the host paths


def test_ml_dtypes_bfloat16_on_the_host_reference(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    q32 = rng.standard_normal((2, 9, 2, 64)).astype(np.float32)
    k32 = rng.standard_normal((2, 11, 1, 64)).astype(np.float32)
    q, k = q32.astype(ml_dtypes.bfloat16), k32.astype(ml_dtypes.bfloat16)
    out, lse = fa.attention(q, k, k, causal=True, return_lse=True, device="cpu")
    assert out.dtype == ml_dtypes.bfloat16 and out.shape == q.shape
    ref = fa.attention(q.astype(np.float32), k.astype(np.float32), k.astype(np.float32),
                       causal=True, device="cpu")
    assert np.max(np.abs(out.astype(np.float32) - ref)) < 2e-2
    buf = np.zeros_like(q)
    assert fa.attention(q, k, k, causal=True, out=buf, device="cpu") is buf
    assert np.array_equal(buf.view(np.uint16), out.view(np.uint16))
    # Strided bfloat16 host arrays are copied as needed, like every host array.
    strided = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    again = fa.attention(strided, k, k, causal=True, device="cpu")
    assert np.array_equal(again.view(np.uint16), out.view(np.uint16))


def test_ml_dtypes_bfloat16_does_not_mix_with_float16(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    q = rng.standard_normal((1, 4, 1, 64)).astype(ml_dtypes.bfloat16)
    with pytest.raises(TypeError, match=r"q, k and v must have the same dtype, got q bfloat16, "
                                        r"k float16"):
        fa.attention(q, q.astype(np.float16), q, device="cpu")


@gpu_only
def test_ml_dtypes_bfloat16_host_arrays_run_on_the_gpu(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    q = rng.standard_normal((1, 70, 2, 64)).astype(ml_dtypes.bfloat16)
    out = fa.attention(q, q, q)
    host = fa.attention(q, q, q, device="cpu")
    assert out.dtype == ml_dtypes.bfloat16
    assert np.max(np.abs(out.astype(np.float32) - host.astype(np.float32))) < 2e-2


# ================================================================================================
# 9. torch tensors that require grad: recorded for autograd, never silently detached


def test_requires_grad_gives_an_output_that_carries_the_gradient():
    torch = pytest.importorskip("torch")
    q = torch.randn(1, 8, 2, 64)
    k = torch.randn(1, 8, 2, 64, requires_grad=True)
    out = fa.attention(q, k, k.detach(), device="cpu")
    assert out.requires_grad and out.grad_fn is not None
    out.sum().backward()
    assert k.grad is not None and k.grad.shape == k.shape and bool(k.grad.abs().sum() > 0)
    with torch.no_grad():  # no graph to record: read as detached
        out = fa.attention(q, k, k, device="cpu")
    assert isinstance(out, torch.Tensor) and not out.requires_grad


def test_an_out_that_requires_grad_is_refused_by_name():
    torch = pytest.importorskip("torch")
    q = torch.randn(1, 8, 2, 64)
    out = torch.zeros(1, 8, 2, 64, requires_grad=True)
    with pytest.raises(ValueError, match=r"^out requires grad"):
        fa.attention(q, q, q, out=out, device="cpu")
    with torch.no_grad():
        assert fa.attention(q, q, q, out=out, device="cpu") is out
    assert torch.equal(out.detach(), fa.attention(q, q, q, device="cpu"))


@gpu_only
def test_requires_grad_on_the_gpu_gives_an_output_that_carries_the_gradient():
    torch = pytest.importorskip("torch")
    q = torch.randn(1, 64, 2, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = q.detach()
    out = fa.attention(q, k, k)
    assert out.grad_fn is not None
    out.float().sum().backward()
    assert q.grad is not None and bool(torch.isfinite(q.grad).all())
    with torch.no_grad():
        assert not fa.attention(q, k, k).requires_grad


def test_zero_dim_torch_bools_are_flags():
    torch = pytest.importorskip("torch")
    q = torch.randn(1, 8, 2, 64)
    a = fa.attention(q, q, q, causal=torch.tensor(True), device="cpu")
    assert torch.equal(a, fa.attention(q, q, q, causal=True, device="cpu"))
    with pytest.raises(TypeError, match=r"causal must be a bool, got Tensor"):
        fa.attention(q, q, q, causal=torch.tensor([True]), device="cpu")
    with pytest.raises(TypeError, match=r"causal must be a bool, got Tensor"):
        fa.attention(q, q, q, causal=torch.tensor(1), device="cpu")


# ================================================================================================
# 10. The host path: out of memory is MemoryError; Ctrl-C stops a long call


def test_host_out_of_memory_is_memory_error():
    """A problem whose key/value scratch cannot be allocated under a 1 GiB address-space
    allowance above what the child already uses (the inputs are stride-0 views: no memory)."""
    code = textwrap.dedent("""
        import resource
        import numpy as np
        import flashattn_c as fa
        d = 64
        k = np.lib.stride_tricks.as_strided(np.ones(d, np.float32), (1, 2**26, 1, d),
                                            (0, 0, 0, 4))
        q = np.ones((1, 1, 1, d), np.float32)
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + 2**30, resource.RLIM_INFINITY))
        expect_raise(lambda: fa.attention(q, k, k, device="cpu"))
    """)
    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_AS and /proc/self/statm are Linux's")
    report = run_isolated(code)
    assert report["status"] == "raised", report
    assert report["type"] == "MemoryError", report
    assert report["message"], "the message says what could not be allocated"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child is POSIX")
def test_ctrl_c_stops_a_long_host_call():
    code = textwrap.dedent("""
        import sys, time
        import numpy as np
        import flashattn_c as fa
        s, d = 8192, 64
        q = np.lib.stride_tricks.as_strided(np.ones(d, np.float32), (1, s, 8, d), (0, 0, 0, 4))
        print("started", flush=True)
        t0 = time.monotonic()
        try:
            fa.attention(q, q, q, device="cpu")
        except KeyboardInterrupt:
            print(f"interrupted after {time.monotonic() - t0:.2f} s", flush=True)
            sys.exit(0)
        print(f"ran to the end in {time.monotonic() - t0:.2f} s", flush=True)
        sys.exit(1)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=TESTS_DIR, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=PACKAGE_PARENT))
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        waited = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and out.startswith("interrupted"), out + err
    assert waited < 5, f"the call took {waited:.1f} s to stop after SIGINT"


# ================================================================================================
# 11. CudaError carries the CUDA error name, its text and the call site


def test_cuda_error_attributes_exist_on_the_class():
    for name in ("cuda_error", "cuda_error_name", "cuda_error_string", "call_site"):
        assert getattr(fa.CudaError, name) is None
    assert "call_site" in fa.CudaError.__doc__


@no_gpu_only
def test_cuda_error_attributes_are_filled():
    q = np.ones((1, 4, 1, 64), np.float16)
    with pytest.raises(fa.CudaError) as info:
        fa.attention(q, q, q)
    e = info.value
    assert isinstance(e.cuda_error, int) and e.cuda_error != 0
    assert re.fullmatch(r"cudaError\w+", e.cuda_error_name)
    assert e.cuda_error_string and e.cuda_error_string != e.cuda_error_name
    assert re.fullmatch(r"cudaGetDevice\(&previous\) failed at \S*module\.c:\d+", e.call_site)
    with pytest.raises(fa.CudaError) as info:
        fa.launch_config(batch=1, seqlen_q=1, seqlen_k=1, heads_q=1, heads_kv=1, head_dim=64,
                         dtype="fp16")
    assert re.fullmatch(r"cudaGetDevice\(&device\) failed at \S*module\.c:\d+",
                        info.value.call_site)


# ================================================================================================
# 12. JAX arrays in, JAX arrays out


def test_jax_host_arrays_give_jax_arrays():
    """In a child interpreter: JAX is multithreaded, and the other tests fork."""
    pytest.importorskip("jax")
    report = run_isolated(textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        import flashattn_c as fa
        q = np.random.default_rng(0).standard_normal((1, 9, 2, 64)).astype(np.float32)
        out, lse = fa.attention(jnp.asarray(q), jnp.asarray(q), jnp.asarray(q), return_lse=True,
                                device="cpu")
        qb = jnp.asarray(q, dtype=jnp.bfloat16)
        outb = fa.attention(qb, qb, qb, device="cpu")
        result([isinstance(out, jax.Array), isinstance(lse, jax.Array),
                bool(np.array_equal(np.asarray(out), fa.attention(q, q, q, device="cpu"))),
                isinstance(outb, jax.Array), str(outb.dtype)])
    """), env={"JAX_PLATFORMS": "cpu"})
    assert report["status"] == "ok", report
    assert report["result"] == [True, True, True, True, "bfloat16"]


@gpu_only
def test_jax_device_arrays_give_jax_arrays():
    jax = pytest.importorskip("jax")
    try:
        gpu = jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("this jax has no GPU backend")
    q = jax.device_put(jax.numpy.ones((1, 64, 2, 64), jax.numpy.float16), gpu)
    out = fa.attention(q, q, q)
    assert isinstance(out, jax.Array) and out.devices() == {gpu}


# ================================================================================================
# 13. The C self-test says why it has no GPU


def selftest_objects():
    """Whether build/ holds the objects tools/build_selftest.sh links (as it looks for them)."""
    import glob

    return any(os.path.exists(os.path.join(d, "csrc", "launch.o"))
               for d in glob.glob(os.path.join(REPO_ROOT, "build", "obj")) +
               glob.glob(os.path.join(REPO_ROOT, "build", "temp.*")))


@no_gpu_only
@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")
def test_fa_selftest_without_gpu_names_the_reason(tmp_path):
    if not selftest_objects():
        pytest.skip("no build objects under build/ (python setup.py build_ext --inplace "
                    "--build-temp build/obj makes them)")
    build = run(["bash", os.path.join(REPO_ROOT, "tools", "build_selftest.sh")], cwd=REPO_ROOT)
    assert build.returncode == 0, build.stderr
    proc = run([os.path.join(REPO_ROOT, "tools", "fa_selftest")], cwd=REPO_ROOT)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"no usable CUDA GPU: \S.+", line), line
    if not driver_installed():
        assert line == "no usable CUDA GPU: no NVIDIA driver found (libcuda.so.1 could not be " \
                       "loaded)"


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")
def test_c_callers_of_an_older_fa_params_keep_working(tmp_path):
    """tools/fa_api_host_check, a plain C program on the host path: a caller built against the
    first fa_params (before the window) is served and the bytes past its struct_size are never
    read; sizes outside the accepted range and NULL structs are refused, naming the field and
    its initialiser, for fa_params, fa_grad_params and fa_kvcache_params."""
    if not selftest_objects():
        pytest.skip("no build objects under build/ (python setup.py build_ext --inplace "
                    "--build-temp build/obj makes them)")
    build = run(["bash", os.path.join(REPO_ROOT, "tools", "build_selftest.sh"), str(tmp_path)],
                cwd=REPO_ROOT)
    assert build.returncode == 0, build.stderr
    proc = run([str(tmp_path / "fa_api_host_check")], cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.fullmatch(r"\d+ passed, 0 failed", proc.stdout.strip().splitlines()[-1]), proc.stdout


# ================================================================================================
# 14. The README says which rule holds where, and where the GPU tests are


def readme():
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        return f.read()


def test_readme_names_every_file_with_gpu_tests():
    """It used to say the GPU tests are tests/test_cuda_*.py; they live in several files."""
    text = readme()
    assert "tests/test_cuda_*.py" not in text
    gated = re.compile(r"gpu_unavailable_reason|torch_cuda|@gpu_only|needs_gpu|needs_torch_gpu")
    for name in sorted(os.listdir(TESTS_DIR)):
        if not (name.startswith("test_") and name.endswith(".py")):
            continue
        with open(os.path.join(TESTS_DIR, name)) as f:
            if not gated.search(f.read()):
                continue
        stem = name[:-3]
        named = f"tests/{name}" in text or (stem.startswith("test_reliability_") and
                                            "tests/test_reliability_*.py" in text)
        assert named, f"README's Tests section does not name {name}, which has GPU tests"
    assert "-m gpu" in text


def test_readme_states_the_copy_rule_per_path():
    """'other layouts are refused (never copied silently)' held for device arrays only: host
    arrays are copied (as the docstring said)."""
    text = readme()
    assert "other layouts are refused with a message (never copied silently)" not in text
    assert "Device arrays are never copied" in text
    assert "Host (NumPy) arrays may have any strides" in text
