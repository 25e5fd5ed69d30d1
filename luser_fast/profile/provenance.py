"""Where a measurement was taken: CPU model and the git SHA of the code, for the keys
"cpu | torch version | git SHA" under which the demo and the benchmark harness store runs;
``environment``, the versions and build that ``luser-fast info`` reports."""
from __future__ import annotations

import os
import platform
import subprocess


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_sha(path: str | None = None) -> str:
    """Short SHA of the checkout holding ``path`` (default: this package), or "unknown"."""
    cwd = path or os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=cwd, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(cuda: bool = False) -> dict:
    """What ``luser-fast info`` reports: versions (luser_fast, python, torch, triton), the
    platform, the requested backend, the extension's build info and the backend serving
    each op on the CPU.

    Args:
        cuda: also query whether CUDA is available (initialises CUDA when it is there).

    Returns:
        dict of strings, bools, None and (``ops_cpu``) a dict op -> backend.
    """
    import torch

    from .. import __version__, _ext, backends

    info = {
        "luser_fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available() if cuda else "not queried (pass --cuda)",
        "backend_requested": os.environ.get("LUSER_FAST_BACKEND", "auto"),
        **_ext.build_info(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    info["ops_cpu"] = backends.table("cpu")
    return info
