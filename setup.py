"""Build flashattn_c: one extension module, flashattn_c._C.

C sources (csrc/*.c) go through the C compiler, CUDA sources (csrc/kernels/*.cu) through nvcc,
in parallel; the CUDA runtime is linked statically (libcudart_static), so importing the module
needs neither libcudart nor a driver. ptxas reports (registers, shared memory, spills) are printed
and kept; ptxas performance warnings (C75xx: serialized wgmma, ignored setmaxnreg) are repeated at
the end of the build.

    pip install .                           # a regular install
    pip install -e ".[test]"                # editable, with the tests' dependencies (torch...)
    python setup.py build_ext --inplace     # a build in the checkout
    python -m build                         # an sdist, then a wheel built from that sdist

    # Editable, built with this environment's own setuptools and NumPy instead of an isolated
    # build environment. A fresh venv has neither NumPy nor a setuptools with bdist_wheel
    # built in (70.1 or newer): without the first line pip fails with "invalid command
    # 'bdist_wheel'".
    pip install "setuptools>=70.1" numpy
    pip install --no-build-isolation -e .

Environment:
    CUDA_HOME, CUDA_PATH      the toolkit (else nvcc on PATH, else /usr/local/cuda)
    FLASHATTN_C_ARCHS         targets, default "80;90;90a": the sm80 family gets SASS for each
                              plain arch plus PTX of the lowest; "90a" adds the sm90 family
    FLASHATTN_C_JOBS          parallel compile jobs (default: CPU count)
    FLASHATTN_C_STRICT_PTXAS  "1": fail the build on a C75xx ptxas warning
    FLASHATTN_C_PTXAS_LOG_DIR also copy the ptxas reports there
    FLASHATTN_C_BUILD_TEMP    keep the objects in this folder (pip's isolated builds otherwise
                              use a fresh temporary one): a later build, from any copy of the
                              sources, reuses each kernel object whose digest matches, and
                              tools/build_selftest.sh links from it (as build/obj)
"""
import concurrent.futures
import hashlib
import os
import re
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"  # relative: setup.py runs from the project root, and digests must not hold paths
PTXAS_PERF_WARNING = re.compile(r"C75\d\d")


def find_cuda():
    """Toolkit root: CUDA_HOME, CUDA_PATH, nvcc on PATH, /usr/local/cuda (in that order)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            for lib in ("lib64", "lib"):
                if os.path.exists(os.path.join(root, lib, "libcudart_static.a")):
                    return root, os.path.join(root, lib)
            raise RuntimeError(f"CUDA toolkit at {root} has no lib64/ or lib/ libcudart_static.a")
    raise RuntimeError(
        "CUDA toolkit not found: set CUDA_HOME (or CUDA_PATH), or put nvcc on PATH. "
        "flashattn_c needs CUDA 12.4 or newer to build."
    )


def parse_archs():
    raw = os.environ.get("FLASHATTN_C_ARCHS", "80;90;90a")
    archs = [a.strip() for a in re.split(r"[;, ]+", raw) if a.strip()]
    plain = sorted({a for a in archs if a.isdigit()}, key=int)
    unknown = [a for a in archs if not a.isdigit() and a != "90a"]
    if unknown:
        raise RuntimeError(f"FLASHATTN_C_ARCHS: unknown targets {unknown} (use e.g. 80;89;90;90a)")
    if any(int(a) < 80 for a in plain):
        raise RuntimeError("FLASHATTN_C_ARCHS: the kernels need sm_80 or newer")
    return plain, "90a" in archs


def kernel_sources():
    """(source, gencode flags, define) per CUDA translation unit of the kernel families selected
    by FLASHATTN_C_ARCHS: every csrc/kernels/{fwd,bwd}_<family>*.cu (one per op and head dim,
    so they compile in parallel)."""
    plain, with_sm90 = parse_archs()
    families = []
    if plain:
        gencodes = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in plain]
        gencodes.append(f"-gencode=arch=compute_{plain[0]},code=compute_{plain[0]}")
        families.append(("sm80", gencodes, "FA_WITH_SM80"))
    if with_sm90:
        families.append(("sm90", ["-gencode=arch=compute_90a,code=sm_90a"], "FA_WITH_SM90"))
    if not families:
        raise RuntimeError("FLASHATTN_C_ARCHS selects no kernel family")
    kernels = os.path.join(CSRC, "kernels")
    return [(os.path.join(kernels, name), gencodes, define)
            for family, gencodes, define in families
            for op in ("fwd", "bwd")
            for name in sorted(os.listdir(kernels))
            if re.fullmatch(rf"{op}_{family}(_\w+)?\.cu", name)]


def source_digest(src, cmd):
    """Hash of the command, the source and every csrc header: an object whose recorded digest
    matches is reused, even when copied to another machine with fresh timestamps."""
    flags = []
    for a, before in zip(cmd[1:], cmd):
        # parallelism and the object's location (absolute under FLASHATTN_C_BUILD_TEMP) are
        # not what is built
        if a.startswith("--threads=") or a == "-o" or before == "-o":
            continue
        flags.append(a)
    h = hashlib.sha256(" ".join(flags).encode())
    paths = [src]
    for root, _, files in os.walk(CSRC):
        paths += [os.path.join(root, f) for f in files if f.endswith((".h", ".cuh"))]
    for path in sorted(paths):
        with open(path, "rb") as f:
            h.update(path.encode() + b"\0" + f.read())
    return h.hexdigest()


def up_to_date(obj, digest):
    try:
        with open(obj + ".sha256") as f:
            return os.path.exists(obj) and f.read().strip() == digest
    except OSError:
        return False


class CudaBuildExt(build_ext):
    """build_ext that compiles .cu with nvcc (in parallel) and links cudart statically."""

    def build_extension(self, ext):
        if os.environ.get("FLASHATTN_C_BUILD_TEMP"):
            self.build_temp = os.path.abspath(os.environ["FLASHATTN_C_BUILD_TEMP"])
        cuda_root, cuda_lib = find_cuda()
        nvcc = os.path.join(cuda_root, "bin", "nvcc")
        import numpy  # a build requirement (pyproject.toml)

        families = kernel_sources()
        defines = [(d, "1") for d in sorted({d for _, _, d in families})]
        include_dirs = [os.path.join(HERE, CSRC), os.path.join(cuda_root, "include"),
                        numpy.get_include()]
        os.makedirs(self.build_temp, exist_ok=True)
        jobs = int(os.environ.get("FLASHATTN_C_JOBS", os.cpu_count() or 1))

        c_objects = self.compiler.compile(
            [s for s in ext.sources if s.endswith(".c")],
            output_dir=self.build_temp,
            macros=defines,
            include_dirs=include_dirs,
            extra_postargs=["-std=c11", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden"],
            depends=[],
        )

        cu_jobs = []
        for src, gencodes, _ in families:
            obj = os.path.join(self.build_temp, src + ".o")
            os.makedirs(os.path.dirname(obj), exist_ok=True)
            threads = max(1, min(len(gencodes), jobs // max(1, len(families))))
            cmd = [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "--use_fast_math",
                   "-lineinfo", "-DNDEBUG", "-Xptxas", "-v", "-Xcompiler", "-fPIC",
                   f"--threads={threads}", f"-I{CSRC}"] + gencodes
            cu_jobs.append((src, obj, cmd))

        reports = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {}
            for src, obj, cmd in cu_jobs:
                digest = source_digest(src, cmd)
                if not self.force and up_to_date(obj, digest):
                    print(f"[flashattn_c] {src}: up to date ({obj})", file=sys.stderr)
                    continue
                print(f"[flashattn_c] nvcc {src}", file=sys.stderr)
                futures[pool.submit(subprocess.run, cmd, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)] = (src, obj, digest)
            for fut in concurrent.futures.as_completed(futures):
                src, obj, digest = futures[fut]
                proc = fut.result()
                reports[src] = proc.stdout
                sys.stderr.write(proc.stdout)
                if proc.returncode != 0:
                    raise RuntimeError(f"nvcc failed on {src} (exit {proc.returncode})")
                with open(obj + ".sha256", "w") as f:
                    f.write(digest + "\n")
        self.keep_ptxas_reports(reports)

        ext_path = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(ext_path), exist_ok=True)
        self.compiler.link_shared_object(
            c_objects + [obj for _, obj, _ in cu_jobs],
            ext_path,
            library_dirs=[cuda_lib],
            libraries=["cudart_static", "dl", "pthread", "rt", "stdc++"],
        )

    def keep_ptxas_reports(self, reports):
        perf_warnings = []
        log_dir = os.environ.get("FLASHATTN_C_PTXAS_LOG_DIR")
        for src, text in reports.items():
            name = os.path.basename(src) + ".ptxas.txt"
            for target in filter(None, [self.build_temp, log_dir]):
                os.makedirs(target, exist_ok=True)
                with open(os.path.join(target, name), "w") as f:
                    f.write(text)
            perf_warnings += [f"{src}: {line}" for line in text.splitlines()
                              if PTXAS_PERF_WARNING.search(line)]
        if perf_warnings:
            banner = "\n".join(["[flashattn_c] ptxas performance warnings:"] + perf_warnings)
            print(banner, file=sys.stderr)
            if os.environ.get("FLASHATTN_C_STRICT_PTXAS") == "1":
                raise RuntimeError("ptxas performance warnings (FLASHATTN_C_STRICT_PTXAS=1)")


def extension():
    c_sources = [os.path.join(CSRC, f) for f in
                 ("module.c", "call_module.c", "attention.c", "attention_backward.c",
                  "attention_varlen.c", "attention_kvcache.c", "tensor.c", "device_array.c",
                  "device_buffer.c", "launch.c", "backward.c", "kvcache.c", "cpu_reference.c",
                  "cpu_backward.c")]
    return Extension("flashattn_c._C", sources=c_sources + [s for s, _, _ in kernel_sources()])


def license_metadata():
    """MIT (LICENSE), in the form this setuptools reads (pyproject.toml lists it as dynamic)."""
    import setuptools

    major = int(re.match(r"\d+", setuptools.__version__).group())
    if major >= 77:
        return {"license_expression": "MIT", "license_files": ["LICENSE"]}
    return {"license": "MIT"}


setup(ext_modules=[extension()], cmdclass={"build_ext": CudaBuildExt}, **license_metadata())
