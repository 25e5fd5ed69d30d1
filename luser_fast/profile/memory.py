"""Training-memory measurement: what a step keeps for backward, and its peak.

Two measures, both taken, never estimated:

* **saved bytes** -- every tensor autograd saves for backward passes through
  ``torch.autograd.graph.saved_tensors_hooks``; the bytes of the unique storages seen
  there are the activation memory of the step. Device independent; parameters that an op
  saves (conv weights) are included, as they are in the paper's accounting.
* **peak bytes** -- on CUDA, ``torch.cuda.max_memory_allocated`` over the step minus the
  allocation before it. On CPU, the peak of live tensor bytes allocated during the step,
  tracked by a ``TorchDispatchMode`` that sees every op's outputs (forward and backward)
  and a finaliser on each new storage that sees it freed. Tensors alive before the step
  (parameters, inputs) are not counted; gradients and optimizer-free temporaries are.

On Linux CPUs a third figure cross-checks the second from the operating system's side:
the **peak resident growth** of the process over the step (``ResidentPeak``: the kernel's
peak resident set, reset before the step, minus the resident set before it). It also sees
memory no tensor owns (library workspaces), and it depends on the allocator returning
freed blocks to the system (``ResidentPeak`` asks glibc to serve blocks of 128 KiB and
more by mmap, which it returns on free, so freed tensors do not linger as resident heap).
"""
from __future__ import annotations

import ctypes
import os
import re
import time
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storage_key(t: torch.Tensor):
    st = t.untyped_storage()
    return (t.device.type, t.device.index, st.data_ptr()), st


class SavedTensorBytes:
    """Context manager summing the unique storages autograd saves for backward.

    Example:
        >>> with SavedTensorBytes() as saved:
        ...     loss = model(y).square().mean()
        >>> saved.bytes
    """

    def __init__(self):
        self.bytes = 0
        self.count = 0
        self._seen = set()
        self._ctx = None

    def _pack(self, t):
        if isinstance(t, torch.Tensor) and t.layout == torch.strided:
            key, st = _storage_key(t)
            if key not in self._seen:
                self._seen.add(key)
                self.bytes += st.nbytes()
                self.count += 1
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        return False


class LiveTensorBytes(TorchDispatchMode):
    """Tracks the peak of live tensor bytes allocated while active (any device).

    Only storages created by ops run under the mode are counted; storages an op merely
    returns a view of (its inputs') are not. ``peak`` and ``current`` are in bytes.
    """

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live = {}

    def _free(self, key):
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_key(t)[0] for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.layout == torch.strided}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
                continue
            key, st = _storage_key(t)
            nbytes = st.nbytes()
            if nbytes == 0 or key in inputs or key in self._live:
                continue
            self._live[key] = nbytes
            self.current += nbytes
            weakref.finalize(st, self._free, key)
        self.peak = max(self.peak, self.current)
        return out


class ResidentPeak:
    """Peak resident-set growth of this process over a block, in bytes (Linux).

    On entry the kernel's peak resident set (``VmHWM``) is reset (``/proc/self/clear_refs``)
    and the resident set (``VmRSS``) read; on exit ``bytes`` is the new peak minus that
    base. ``bytes`` stays None where the kernel offers neither (other systems, a
    restricted /proc). Entering also sets glibc's mmap threshold to 128 KiB once
    (``mallopt``), so that large freed blocks go back to the system and a block freed
    before the step cannot hide a later peak.

    Example:
        >>> with ResidentPeak() as rss:
        ...     step()
        >>> rss.bytes
    """

    _tuned = False

    def __init__(self):
        self.bytes = None
        self._base = None

    @staticmethod
    def _status(key):
        with open("/proc/self/status") as fh:
            match = re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.M)
        return int(match.group(1)) * 1024 if match else None

    @classmethod
    def _tune_malloc(cls):
        if cls._tuned:
            return
        cls._tuned = True
        try:
            libc = ctypes.CDLL(None)
            libc.mallopt(-3, 128 * 1024)            # M_MMAP_THRESHOLD: fixed, no drift
        except (OSError, AttributeError):
            pass

    def __enter__(self):
        if os.path.exists("/proc/self/clear_refs"):
            try:
                self._tune_malloc()
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")                    # reset VmHWM to the current VmRSS
                self._base = self._status("VmRSS")
            except OSError:
                self._base = None
        return self

    def __exit__(self, *exc):
        if self._base is not None:
            peak = self._status("VmHWM")
            self.bytes = None if peak is None else max(0, peak - self._base)
        return False


@dataclass
class MemoryReport:
    """Result of ``training_memory``.

    Attributes:
        saved_bytes: bytes of unique storages saved for backward.
        saved_tensors: number of those storages.
        peak_bytes: peak allocator bytes over the step (CUDA) or peak live tensor bytes
            allocated during the step (CPU).
        param_bytes: bytes of the model's parameters (for reference).
        seconds: wall time of forward + backward.
        loss: the loss value.
        device: device type the step ran on.
        resident_peak_bytes: on a Linux CPU, the peak resident growth of the process
            over the step (``ResidentPeak``); None elsewhere.
    """

    saved_bytes: int
    saved_tensors: int
    peak_bytes: int
    param_bytes: int
    seconds: float
    loss: float
    device: str
    resident_peak_bytes: int | None = None


def mse(x_hat, x_true):
    """Mean squared error (complex-aware)."""
    d = x_hat - x_true
    return (d.real.square() + d.imag.square()).mean() if d.is_complex() else d.square().mean()


def training_memory(model, y, x_true, loss=mse, *, zero_grad=True) -> MemoryReport:
    """Measure one training step (forward + loss + backward) of ``model``.

    Args:
        model: a module called as ``model(y)`` returning a reconstruction like ``x_true``.
        y: measurements.
        x_true: target, shaped like ``model(y)``.
        loss: callable (x_hat, x_true) -> scalar.
        zero_grad: clear parameter gradients first (so their allocation is counted).

    Returns:
        MemoryReport.

    Raises:
        TypeError: y or x_true not a tensor, loss not callable.
        ValueError: x_true not shaped like the reconstruction (no broadcasting).
    """
    fn = "training_memory"
    if not callable(loss):
        raise TypeError(f"{fn}: loss must be callable")
    for name, t in (("y", y), ("x_true", x_true)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")

    def step_loss():
        x_hat = model(y)
        if x_hat.shape != x_true.shape:
            raise ValueError(f"{fn}: x_true must have the reconstruction's shape "
                             f"{tuple(x_hat.shape)} (model(y)), got {tuple(x_true.shape)}")
        return loss(x_hat, x_true)

    device = y.device
    if zero_grad:
        model.zero_grad(set_to_none=True)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    if cuda:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with SavedTensorBytes() as saved:
            value = step_loss()
        value.backward()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        resident = None
    else:
        with ResidentPeak() as rss, LiveTensorBytes() as live:
            with SavedTensorBytes() as saved:
                value = step_loss()
            value.backward()
        peak, resident = live.peak, rss.bytes
    seconds = time.perf_counter() - t0
    return MemoryReport(saved_bytes=saved.bytes, saved_tensors=saved.count, peak_bytes=int(peak),
                        param_bytes=params, seconds=seconds, loss=float(value.detach()),
                        device=device.type, resident_peak_bytes=resident)
