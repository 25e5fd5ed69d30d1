"""Loads the compiled parts of luser_fast and says why when they are missing.

Import never raises: a missing or mismatched extension is recorded with its real cause,
logged once, and the pure-PyTorch reference serves. ``build_info()`` reports what exists
(``luser-fast info`` prints it).

CUDA code. The kernels of ``csrc/**/*.cu`` are loaded through CuPy, once per device, and
each kernel object is kept per (name, device) (``cuda_kernel``). They come from:

1. the shipped fatbin ``_cuda/luser_fast.fatbin``, when the manifest written next to it at
   build time (``luser_fast.fatbin.sources``: one ``path sha256`` line per CUDA source and
   header, by CMakeLists.txt) matches the sources it is checked against: ``csrc/`` in a
   development checkout (an editable install, where sources change after the build), else
   the copies shipped in ``_cuda/src``. A fatbin built from other sources (or with no
   manifest) is not used: a warning names the files that differ, and NVRTC compiles the
   current ones;
2. NVRTC, through CuPy's bindings, for a device the fatbin lacks or when it is stale. The
   translation unit is every ``.cu`` with its includes inlined (``cuda_source_text``), and
   the compiled code is cached on disk under ``cache_dir()`` keyed on the SHA-256 of that
   full text, the NVRTC options, the architecture and the NVRTC version, so an upgrade or an
   edited header never reuses a stale binary. CuPy's own ``RawModule(code=...)`` is not used:
   it keys its cache on the text it is given (for an ``#include``-only unit, on the include
   lines) and appends ``-ftz=true`` after the caller's options, which flushes float32
   subnormals the CPU keeps. ``NVRTC_OPTIONS`` are IEEE: ``-ftz=false``, correctly rounded
   division and square root (nvcc's defaults, which the fatbin is built with).

CuPy's import is tried once; a failure is recorded with its cause (``cupy_reason``), so
``cuda_available()`` is False with that reason and ``luser-fast info`` shows it.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import tempfile
import threading
import warnings

_log = logging.getLogger("luser_fast")
_HERE = os.path.dirname(os.path.abspath(__file__))
FATBIN = os.path.join(_HERE, "_cuda", "luser_fast.fatbin")
#: the manifest of the sources the fatbin was built from (written by CMakeLists.txt)
FATBIN_SOURCES = FATBIN + ".sources"
#: the CUDA sources and headers shipped in the package (for NVRTC)
CUDA_SRC_DIR = os.path.join(_HERE, "_cuda", "src")
#: csrc/ of a development checkout holding this package (an editable install)
CHECKOUT_CSRC = os.path.join(os.path.dirname(_HERE), "csrc")
#: what a CUDA source or header is (the files the manifest and the NVRTC unit cover)
CUDA_SOURCE_SUFFIXES = (".cu", ".cuh", ".h")
#: NVRTC options: C++17 and IEEE float32 (no flush to zero, correctly rounded division and
#: square root), as nvcc builds the fatbin by default; the architecture is added per device
NVRTC_OPTIONS = ("-std=c++17", "-ftz=false", "-prec-div=true", "-prec-sqrt=true")

_state = {"loaded": False, "module": None, "reason": None}


def _load():
    if _state["loaded"]:
        return _state["module"]
    _state["loaded"] = True
    try:
        _state["module"] = importlib.import_module("luser_fast._C")
    except ImportError as exc:
        msg = str(exc)
        if "No module named" in msg:
            _state["reason"] = "the C++ extension was not built (no csrc/*.cpp sources, or LUSER_FAST_BUILD_EXT=0)"
        else:
            import torch

            _state["reason"] = f"the C++ extension failed to load ({msg}); torch here is {torch.__version__}"
            _log.warning("luser_fast: %s; the reference implementation serves", _state["reason"])
    return _state["module"]


def extension():
    """The loaded ``luser_fast._C`` module, or None."""
    return _load()


# --- CuPy ------------------------------------------------------------------------------------

_cupy = {"tried": False, "module": None, "reason": None}
_lock = threading.RLock()


def cupy_module():
    """CuPy, imported once; None when it is not installed or fails to import (the cause is
    kept: ``cupy_reason``)."""
    with _lock:
        if not _cupy["tried"]:
            _cupy["tried"] = True
            try:
                _cupy["module"] = importlib.import_module("cupy")
            except ModuleNotFoundError as exc:
                if exc.name == "cupy":
                    _cupy["reason"] = ("CuPy is not installed (pip install 'luser_fast[cuda]', "
                                       "or the cupy-cudaXXx matching the CUDA driver)")
                else:
                    _cupy["reason"] = f"CuPy is installed but failed to import: {type(exc).__name__}: {exc}"
            except Exception as exc:  # a broken install: missing libraries, wrong CUDA major
                _cupy["reason"] = f"CuPy is installed but failed to import: {type(exc).__name__}: {exc}"
        return _cupy["module"]


def cupy_reason() -> str | None:
    """Why ``cupy_module()`` is None (None when CuPy imported, or was not tried yet)."""
    return _cupy["reason"]


# --- CUDA sources ------------------------------------------------------------------------------

def cuda_source_dir() -> str | None:
    """The CUDA sources the kernels are checked against and compiled from: ``csrc/`` of a
    development checkout when this package sits in one, else the copies shipped in the
    package; None when there are none."""
    checkout = (os.path.isfile(os.path.join(os.path.dirname(CHECKOUT_CSRC), "setup.py"))
                and os.path.isfile(os.path.join(CHECKOUT_CSRC, "common", "constants.h")))
    for root in ((CHECKOUT_CSRC,) if checkout else ()) + (CUDA_SRC_DIR,):
        if os.path.isdir(root) and _source_files(root, (".cu",)):
            return root
    return None


def cuda_code_available() -> bool:
    """A fatbin or CUDA sources ship."""
    return os.path.exists(FATBIN) or cuda_source_dir() is not None


def _source_files(root: str, suffixes=CUDA_SOURCE_SUFFIXES) -> list[str]:
    """Relative paths ('/'-separated, sorted) of the CUDA files under ``root``; the
    generated ``all.cu`` of the shipped copy is not a source."""
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(suffixes):
                rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
                if rel != "all.cu":
                    out.append(rel)
    return sorted(out)


def source_manifest(root: str) -> str:
    """One line ``<relative path> <sha256 of the file>`` per CUDA source and header under
    ``root``, sorted by path: what CMakeLists.txt writes next to the fatbin for ``csrc/``."""
    lines = []
    for rel in _source_files(root):
        with open(os.path.join(root, *rel.split("/")), "rb") as fh:
            lines.append(f"{rel} {hashlib.sha256(fh.read()).hexdigest()}\n")
    return "".join(lines)


def _manifest_entries(text: str) -> dict:
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


def fatbin_status() -> dict:
    """Whether the shipped fatbin was built from the current CUDA sources.

    Returns:
        {"path": the fatbin or None, "sources": the directory checked against,
        "current": True / False (None: no fatbin or no sources to check),
        "reason": why it is not current (the files that differ), else None}.
    """
    root = cuda_source_dir()
    out = {"path": FATBIN if os.path.exists(FATBIN) else None, "sources": root,
           "current": None, "reason": None}
    if out["path"] is None or root is None:
        return out
    if not os.path.exists(FATBIN_SOURCES):
        out["current"] = False
        out["reason"] = (f"the fatbin has no manifest of its sources ({os.path.basename(FATBIN_SOURCES)}): "
                         "it was not built by this version's CMakeLists.txt")
        return out
    with open(FATBIN_SOURCES, encoding="utf-8") as fh:
        built = _manifest_entries(fh.read())
    now = _manifest_entries(source_manifest(root))
    changed = sorted(p for p in set(built) | set(now) if built.get(p) != now.get(p))
    out["current"] = not changed
    if changed:
        shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        out["reason"] = f"the fatbin was built from other CUDA sources than {root} (differ: {shown})"
    return out


_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[^\n]*$', re.M)


def cuda_source_text(root: str | None = None) -> str:
    """The one translation unit NVRTC compiles: every ``.cu`` under ``root`` (default
    ``cuda_source_dir()``), sorted, with each quoted ``#include`` of a file under ``root``
    inlined (once per file; ``#line`` directives keep NVRTC's messages pointing at the
    real files). Its text is the whole of what is compiled, so its hash keys the cache."""
    root = root or cuda_source_dir()
    if root is None:
        raise RuntimeError("no CUDA sources: neither csrc/ nor the package's _cuda/src exist")
    seen = set()

    def expand(rel: str) -> str:
        if rel in seen:
            return ""
        seen.add(rel)
        path = os.path.join(root, *rel.split("/"))
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        here = os.path.dirname(rel)
        parts, last = [f'#line 1 "{rel}"\n'], 0
        for m in _INCLUDE.finditer(text):
            name = m.group(1)
            cand = [c for c in (os.path.normpath(os.path.join(here, name)).replace(os.sep, "/"), name)
                    if os.path.isfile(os.path.join(root, *c.split("/")))]
            if not cand:
                continue  # not ours: left to NVRTC
            line = text.count("\n", 0, m.end()) + 1
            parts.append(text[last:m.start()])
            parts.append(expand(cand[0]))
            parts.append(f'#line {line + 1} "{rel}"\n')
            last = m.end() + 1 if m.end() < len(text) and text[m.end()] == "\n" else m.end()
        parts.append(text[last:])
        if not parts[-1].endswith("\n"):
            parts.append("\n")
        return "".join(parts)

    return "".join(expand(rel) for rel in _source_files(root, (".cu",)))


# --- NVRTC and its disk cache ----------------------------------------------------------------------

def cache_dir() -> str:
    """Where NVRTC's compiled kernels are kept: ``$LUSER_FAST_CACHE_DIR/cuda``, else
    ``$XDG_CACHE_HOME/luser_fast/cuda`` (default ``~/.cache``)."""
    base = os.environ.get("LUSER_FAST_CACHE_DIR")
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(
            os.path.expanduser("~"), ".cache"), "luser_fast")
    return os.path.join(base, "cuda")


def nvrtc_version() -> tuple:
    """(major, minor) of the NVRTC CuPy uses."""
    from cupy_backends.cuda.libs import nvrtc

    return tuple(nvrtc.getVersion())


def nvrtc_compile(source: str, options: tuple, arch: int) -> tuple[bytes, str]:
    """Compile ``source`` with NVRTC (CuPy's bindings) for compute capability ``arch``
    (e.g. 90): (cubin, ".cubin") where this NVRTC emits cubins, else (PTX, ".ptx").
    Raises RuntimeError with NVRTC's log."""
    from cupy_backends.cuda.libs import nvrtc

    cubin = hasattr(nvrtc, "getCUBIN")
    target = f"--gpu-architecture={'sm' if cubin else 'compute'}_{arch}"
    prog = nvrtc.createProgram(source, "luser_fast_all.cu", (), ())
    try:
        try:
            nvrtc.compileProgram(prog, tuple(options) + (target,))
        except Exception as exc:
            log = nvrtc.getProgramLog(prog)
            raise RuntimeError(f"NVRTC failed for sm_{arch} ({exc}):\n{log}") from None
        if cubin:
            return bytes(nvrtc.getCUBIN(prog)), ".cubin"
        ptx = nvrtc.getPTX(prog)
        return (ptx.encode() if isinstance(ptx, str) else bytes(ptx)), ".ptx"
    finally:
        nvrtc.destroyProgram(prog)


def nvrtc_cache_key(source: str, options: tuple, arch: int, version) -> str:
    """SHA-256 of everything a compiled kernel depends on: the full source text, the
    options, the architecture and the NVRTC version."""
    h = hashlib.sha256()
    for part in (source, "\0".join(options), f"sm_{arch}", f"nvrtc {tuple(version)}"):
        h.update(part.encode("utf-8"))
        h.update(b"\0\0")
    return h.hexdigest()


def nvrtc_binary(arch: int) -> str:
    """Path of the NVRTC-compiled CUDA code of the current sources for ``arch``, compiled
    now unless the disk cache holds it (written atomically: concurrent processes never
    read a partial file)."""
    source = cuda_source_text()
    options = NVRTC_OPTIONS
    key = nvrtc_cache_key(source, options, arch, nvrtc_version())
    folder = cache_dir()
    for suffix in (".cubin", ".ptx"):
        path = os.path.join(folder, f"{key}{suffix}")
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return path
    code, suffix = nvrtc_compile(source, options, arch)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{key}{suffix}")
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(code)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


# --- modules and kernels ---------------------------------------------------------------------------

#: device index -> (CuPy module, where it came from)
_cuda_modules: dict = {}
#: (kernel name, device index) -> kernel object
_cuda_kernels: dict = {}
_warned: set = set()


def clear_cuda_caches() -> None:
    """Forget loaded CUDA modules and kernels, CuPy's import attempt and the fatbin's
    check (tests; a process never needs it)."""
    with _lock:
        _cuda_modules.clear()
        _cuda_kernels.clear()
        _warned.clear()
        _cupy.update(tried=False, module=None, reason=None)
    for hook in RESET_HOOKS:
        hook()


#: functions ``clear_cuda_caches`` calls (modules that cache what depends on CuPy add theirs)
RESET_HOOKS: list = []


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(f"luser_fast: {msg}", RuntimeWarning, stacklevel=4)


def _load_module(cupy, index: int, name: str):
    """The CUDA module for device ``index`` (already current): the fatbin when it is
    current and holds code for the device, else NVRTC's build of the current sources."""
    errors = []
    status = fatbin_status()
    if status["path"] is not None:
        if status["current"] is False:
            _warn_once(f"{status['reason']}; it is not used: NVRTC compiles the current sources "
                       "(rebuild with pip install --no-build-isolation -e . to refresh it)")
            errors.append(f"fatbin: {status['reason']}")
        else:
            try:
                mod = cupy.RawModule(path=FATBIN)
                mod.get_function(name)  # loads the module: fails when no code fits the device
                return mod, "fatbin"
            except Exception as exc:
                errors.append(f"fatbin: {type(exc).__name__}: {exc}")
    if cuda_source_dir() is None:
        errors.append("NVRTC: no CUDA sources shipped")
    else:
        try:
            # CuPy's compute_capability is a string: "90" for sm_90, "100" for sm_100
            path = nvrtc_binary(int(cupy.cuda.Device(index).compute_capability))
            return cupy.RawModule(path=path), f"nvrtc: {path}"
        except Exception as exc:
            errors.append(f"NVRTC: {type(exc).__name__}: {exc}")
    raise RuntimeError(f"no CUDA code for {name} on cuda:{index}: " + "; ".join(errors))


def cuda_kernel(name: str, device_index: int | None = None):
    """The CUDA kernel ``name`` (an ``extern "C" __global__`` function) for device
    ``device_index`` (None: CuPy's current device), a CuPy kernel object kept per (name,
    device): the module is loaded once per device (the fatbin, else NVRTC; module
    docstring) and each kernel looked up once. Launch it on torch's current stream,
    passing torch data pointers (``luser_fast.ops.cuda_common.launch``).

    Raises:
        RuntimeError: CuPy is not installed or fails to import (the recorded cause), or
            neither the fatbin nor NVRTC gives code for the device.
    """
    cupy = cupy_module()
    if cupy is None:
        raise RuntimeError(f"the CUDA kernels need CuPy: {cupy_reason()}")
    index = int(device_index if device_index is not None else cupy.cuda.runtime.getDevice())
    key = (name, index)
    kernel = _cuda_kernels.get(key)
    if kernel is not None:
        return kernel
    with _lock:
        kernel = _cuda_kernels.get(key)
        if kernel is None:
            with cupy.cuda.Device(index):
                if index not in _cuda_modules:
                    _cuda_modules[index] = _load_module(cupy, index, name)
                kernel = _cuda_modules[index][0].get_function(name)
            _cuda_kernels[key] = kernel
    return kernel


def cuda_module_origin(device_index: int) -> str | None:
    """Where the loaded CUDA module of a device came from ("fatbin" or "nvrtc: <path>"),
    None when none is loaded."""
    entry = _cuda_modules.get(device_index)
    return None if entry is None else entry[1]


def build_info() -> dict:
    """What compiled code is available, and why not when it is missing (tries CuPy's
    import once; never initialises CUDA)."""
    mod = _load()
    fat = fatbin_status()
    cupy = cupy_module()
    return {
        "cpu_extension": mod is not None,
        "cpu_extension_reason": None if mod is not None else _state["reason"],
        "cuda_fatbin": fat["path"],
        "cuda_fatbin_reason": None if fat["path"] else "no fatbin shipped (nvcc was absent at build time, or there are no CUDA sources yet)",
        "cuda_fatbin_current": fat["current"],
        "cuda_fatbin_stale_reason": fat["reason"],
        "cuda_sources": fat["sources"],
        "cupy": getattr(cupy, "__version__", "unknown") if cupy is not None else None,
        "cupy_reason": None if cupy is not None else cupy_reason(),
    }
