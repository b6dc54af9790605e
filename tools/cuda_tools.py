"""Where the CUDA toolkit's binary tools are: on PATH, or in the nvidia-cuda-<name> wheels that
the sass extra installs (pip install -e '.[sass]'; the toolkit on some machines lacks cuobjdump
and nvdisasm). Shared by tests/test_machine_code.py and dev/bwd_sm80_step_count.py."""
import glob
import os
import shutil


def find_tool(name):
    """The CUDA toolkit's `name` on PATH, else the one of the nvidia-cuda-<name> wheel; None."""
    path = shutil.which(name)
    if path:
        return path
    try:
        import nvidia  # the wheels' namespace package
    except ImportError:
        return None
    for base in getattr(nvidia, "__path__", []):
        for candidate in sorted(glob.glob(os.path.join(base, "*", "bin", name))):
            if os.access(candidate, os.X_OK):
                return candidate
    return None
