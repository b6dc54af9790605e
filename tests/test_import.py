"""Import needs no GPU, no driver and no libcudart: the runtime is linked statically and no CUDA
call happens at import."""
import os
import shutil
import subprocess
import sys

import pytest

import flashattn_c as fa


def test_import_without_any_visible_gpu():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    code = ("import flashattn_c as fa; i = fa.build_info(); "
            "print(i['threads_per_block'], fa.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "384"


@pytest.mark.skipif(not sys.platform.startswith("linux") or not shutil.which("ldd"),
                    reason="ldd is a Linux tool")
def test_extension_has_no_dynamic_cuda_dependency():
    proc = subprocess.run(["ldd", fa._C.__file__], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "libcudart" not in proc.stdout, proc.stdout
    assert "libcuda.so" not in proc.stdout, proc.stdout


def test_public_api_is_complete():
    for name in ("attention", "last_launch", "launch_config", "build_info", "DeviceArray",
                 "CudaError", "__version__"):
        assert hasattr(fa, name), name
    assert issubclass(fa.CudaError, RuntimeError)


def test_device_none_with_host_arrays_and_no_gpu_is_a_clear_error():
    pytest.importorskip("numpy")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    code = (
        "import numpy as np, flashattn_c as fa\n"
        "q = np.ones((1, 4, 1, 64), np.float16)\n"
        "try:\n"
        "    fa.attention(q, q, q)\n"
        "except RuntimeError as e:\n"
        "    print('ERR', e)\n"
        "else:\n"
        "    print('RAN')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ERR"), proc.stdout
    assert "device='cpu'" in proc.stdout or 'device="cpu"' in proc.stdout, proc.stdout
