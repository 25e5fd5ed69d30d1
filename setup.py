"""Build script for luser_fast.

The pure-Python package always installs. The C++ extension (``luser_fast._C``) is built
from ``csrc/**/*.cpp`` with torch's CppExtension when there are sources and
``LUSER_FAST_BUILD_EXT`` is not ``0``; CUDA sources (``csrc/**/*.cu``) are compiled by
CMake + nvcc into a fatbin shipped inside the package when nvcc is on the PATH (the
kernels are launched through CuPy at run time, so no torch/CUDA build match is needed).

Always build with ``pip install --no-build-isolation`` so the extension compiles against
the torch already installed (build isolation would pull a multi-GB CUDA torch).
"""
import glob
import os
import re
import shutil
import subprocess

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_EXT = os.environ.get("LUSER_FAST_BUILD_EXT", "1") != "0"


def _supported_triton():
    """The Triton range the kernels are compiled and tested for, read from its one place
    (luser_fast/ops/triton_common.py, SUPPORTED_TRITON) without importing the package."""
    with open(os.path.join(HERE, "luser_fast", "ops", "triton_common.py")) as fh:
        return re.search(r'^SUPPORTED_TRITON = "([^"]+)"', fh.read(), re.M).group(1)


def _version():
    with open(os.path.join(HERE, "luser_fast", "_version.py")) as fh:
        for line in fh:
            if line.startswith("__version__"):
                return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("luser_fast/_version.py has no __version__")


def _sources(pattern):
    return sorted(glob.glob(os.path.join("csrc", "**", pattern), recursive=True))


def _cap_jobs():
    # ninja defaults to all hardware threads + 2; cap to the cores we actually have.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ.setdefault("MAX_JOBS", str(max(1, cores or 1)))


def _ship_cuda_sources():
    """Copy csrc's CUDA sources and headers into luser_fast/_cuda/src, with an all.cu that
    includes every .cu, so CuPy's NVRTC can compile them on a device the fatbin lacks."""
    cu = _sources("*.cu")
    if not cu:
        return
    dst = os.path.join(HERE, "luser_fast", "_cuda", "src")
    # a fresh copy: a file removed from csrc must not linger in the package, where
    # luser_fast/_ext.py checks the fatbin's manifest against these sources
    shutil.rmtree(dst, ignore_errors=True)
    for path in cu + _sources("*.h") + _sources("*.cuh"):
        rel = os.path.relpath(path, "csrc")
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copyfile(path, os.path.join(dst, rel))
    with open(os.path.join(dst, "all.cu"), "w") as fh:
        fh.writelines(f'#include "{os.path.relpath(p, "csrc")}"\n' for p in cu)


class BuildPyWithFatbin(build_py):
    """build_py that also runs CMake to produce luser_fast/_cuda/luser_fast.fatbin and,
    next to it, luser_fast.fatbin.sources: the manifest (path and SHA-256 of every CUDA
    source and header) that luser_fast/_ext.py checks the fatbin against at load time."""

    def run(self):
        _ship_cuda_sources()
        if BUILD_EXT and _sources("*.cu") and shutil.which("nvcc") and shutil.which("cmake"):
            build_dir = os.path.join(HERE, "build", "cuda")
            os.makedirs(build_dir, exist_ok=True)
            archs = os.environ.get("LUSER_FAST_CUDA_ARCHS", "80;90")
            subprocess.check_call(["cmake", "-S", HERE, "-B", build_dir,
                                   f"-DLUSER_FAST_CUDA_ARCHS={archs}"])
            subprocess.check_call(["cmake", "--build", build_dir, "-j", os.environ.get("MAX_JOBS", "2")])
        super().run()
        if not BUILD_EXT:
            # build/lib outlives builds: drop compiled files an earlier build left there
            pkg = os.path.join(self.build_lib, "luser_fast")
            for path in glob.glob(os.path.join(pkg, "_C*.so")) + glob.glob(
                    os.path.join(pkg, "_cuda", "*.fatbin")) + glob.glob(
                    os.path.join(pkg, "_cuda", "*.fatbin.sources")):
                os.remove(path)


def _ext_modules():
    cpp = _sources("*.cpp")
    if not (BUILD_EXT and cpp):
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    _cap_jobs()
    ext = CppExtension(
        "luser_fast._C",
        cpp,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args=["-O3", "-fopenmp", "-std=c++17"],
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _ext_modules()
cmdclass["build_py"] = BuildPyWithFatbin

setup(
    name="luser_fast",
    version=_version(),
    description="Memory-efficient learned reconstruction (LUSER) with fast physics operators",
    long_description=open(os.path.join(HERE, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["luser_fast", "luser_fast.*"]),
    # a pure-Python install (LUSER_FAST_BUILD_EXT=0) ships no compiled code, not even a
    # fatbin an earlier build left in the tree; the CUDA sources (for NVRTC) always go
    package_data={"luser_fast": (["_cuda/*.fatbin", "_cuda/*.fatbin.sources"] if BUILD_EXT else [])
                  + ["_cuda/src/*", "_cuda/src/*/*"]},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "tqdm",
        "matplotlib",
        "scikit-image",
        "h5py",
        "pydicom",
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "pytest-benchmark", "scipy", "finufft"],
        "triton": ["triton" + _supported_triton()],
        "cuda": ["cupy-cuda12x"],
        # what `make gpu-check` installs when no CuPy works: the CuPy for a CUDA 12 driver
        # (on CUDA 11 / 13 the check installs cupy-cuda11x / cupy-cuda13x instead)
        "gpu": ["cupy-cuda12x"],
        "peers": ["finufft", "torchkbnufft", "torchdeq", "astra-toolbox"],
    },
    entry_points={"console_scripts": ["luser-fast=luser_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
