"""Fast batched Anderson and fixed-point solvers (per-sample freezing, no per-step sync).

Same maths, arguments, validation and ``SolverInfo`` as ``luser_fast.reference.deq`` (the
textbook version), reorganised so that an iteration touches as little memory as possible:

* History lives in two ring buffers of shape [B, m, D] in the work dtype (float32 or
  better): the images F_i = f(X_i) and the residuals G_i = F_i - X_i. The iterates X_i are
  never stored: for beta = 1 the next iterate is ``alpha @ F``; otherwise
  ``alpha @ F - (1 - beta) alpha @ G`` (since X = F - G).
* The Gram matrix G G^T [B, m, m] is kept and updated incrementally: a new residual
  overwrites one slot and only its m inner products with the stored residuals are
  computed (one batched matrix-vector product, O(mD)), not the O(m^2 D) product. Its
  diagonal entry for the new slot is ||f(z) - z||^2, so the residual norm is free.
* The bordered (m+1)x(m+1) system is solved per sample in float64 with the Tikhonov weight
  ``lam * mean(diag(G G^T))``; both the plain and the retried (``lam`` raised by 1e3)
  systems are solved and the result is chosen per sample with ``torch.where`` (no boolean
  indexing, hence no host sync), falling back to the newest image (a fixed-point step).
* The history update with its Gram row and ||f(z)||^2 is one op,
  ``luser_fast.ops.anderson_step``, and the mixing with the frozen samples' best iterate
  another, ``luser_fast.ops.anderson_mix``, their implementations chosen once per solve
  (``luser_fast.ops.anderson.implementations``, honouring ``backend=``): on CUDA with
  Triton the fused kernels of ``ops/anderson.py`` (one pass over the data each; frozen
  samples read and write nothing, and take their best iterate inside the mix), elsewhere
  their PyTorch twins (``reference/anderson_ops.py``), given every sample as active for
  the update (frozen samples' slots are never read again; on CPU f(z) and g then go
  straight into their slots, no masked copies) and returning the mix itself while
  every sample is live.
* Freezing is applied with masks on the device every iteration, so iteration counts and
  frozen iterates are exactly those of the reference; the host only checks "all samples
  finished?" every ``check_every`` iterations (frozen samples then cost an evaluation of f
  whose result is discarded, never a change of their state).

Bytes moved per iteration, f excluded, in D-vectors read + written per sample (same-dtype
data; m the history size; ``bytes_per_iteration`` below). The textbook version gathers the
active samples' history, forms G = F - X and the full Gram every step:

    reference: residual sub + 2 norms + best (8) + write X, F via masks (8)
               + gather X, F (4m) + G = F - X (3m) + Gram (m) + mix X and F (2m + 9)
               + next iterate (4)                                        = 10m + 29
    torchdeq:  G = F - X (3m) + Gram (m) + mix X and F (2m + 9) + write X (2)
               + residual sub + 2 norms (5) + lowest iterate (3)        = 6m + 19
    fast:      write F, G (5) + Gram row (m) + ||f(z)|| (1) + mix F (m + 1)  = 2m + 7
               + best and next iterate by masks (6), only while some sample is frozen
               or not improving, or when the host is not consulted every iteration

With check_every = 1 (the CPU default) the host sees every iteration whether all samples
are live and improving; then the best iterate and the next iterate are the new tensors
themselves (no masked copies). At m = 5: 17 / 79 = 0.22 of the textbook traffic (0.35
of torchdeq's); 23 / 79 = 0.29 with masked copies.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..core.solver import (REL_EPS, RETRY_FACTOR, SolverInfo, Tracker, check_check_every,
                           check_solver_args, evaluate, flat, work_dtype)
from ..ops import anderson as ops

__all__ = ["anderson", "fixed_point", "bytes_per_iteration"]

def _check_every(value, device):
    """Validate ``check_every``; None picks 1 on CPU (a sync is free) and 4 elsewhere."""
    check_check_every(value)
    if value is None:
        return 1 if device.type == "cpu" else 4
    return int(value)


class _Tracker(Tracker):
    """Per-sample bookkeeping kept on the device: best iterate, residuals, freezing.

    The reference's tracker (same state, same rules), fed with norms the solver already
    has instead of recomputing them in float64, and avoiding masked copies when ``sync``
    (the host may look every iteration).
    """

    def __init__(self, z0, tol, stop, sync):
        super().__init__(z0, tol, stop)
        self.sync = sync
        # best is either this tracker's own buffer (updated in place) or, after an
        # iteration where every live sample improved, the iterate itself (never written)
        self._owned = True
        self._bshape = (z0.shape[0],) + (1,) * (z0.dim() - 1)

    def record(self, z, abs_r, fz_norm):
        """Score iterate z [B, ...] with ||f(z) - z|| and ||f(z)|| ([B] each)."""
        abs_r, fz_norm = abs_r.double(), fz_norm.double()
        rel_r = abs_r / (fz_norm + REL_EPS)
        res = rel_r if self.stop == "rel" else abs_r
        # active and finite (both norms are >= 0, so their sum is finite iff both are)
        live = self.active & torch.isfinite(abs_r + fz_norm)
        better = live & (res < self.residual)
        if self.sync and bool(better.all()):
            self.best, self._owned = z, False                 # no copy: z is never written
        elif not self.sync or bool(better.any()):
            if self._owned:
                torch.where(better.view(self._bshape), z, self.best, out=self.best)
            else:
                self.best, self._owned = torch.where(better.view(self._bshape), z, self.best), True
        self.abs_residual = torch.where(better, abs_r, self.abs_residual)
        self.rel_residual = torch.where(better, rel_r, self.rel_residual)
        self.iterations += self.active
        self.converged |= live & (res <= self.tol)
        self.active = live & ~self.converged
        self.n_active = int(self.active.sum()) if self.sync else None

    def finished(self):
        """True when no sample is active (reads the device: call every check_every)."""
        return self.n_active == 0 if self.sync else not bool(self.active.any())

    def next_iterate(self, proposal):
        """The next input of f: ``proposal`` for active samples, the frozen best otherwise."""
        if self.sync and self.n_active == self.active.shape[0]:
            return proposal
        return torch.where(self.active.view(self._bshape), proposal, self.best)

    def result(self, z0):
        """The best iterates [B, ...], never sharing memory with the caller's z0."""
        if self.best.data_ptr() == z0.data_ptr():
            return self.best.clone()
        return self.best


def _flat_view(x):
    """[B, ...] -> [B, D] real view of a contiguous tensor (complex as (re, im) pairs)."""
    return flat(x.contiguous())


def _unflat_like(flat, like):
    """[B, D] real -> the shape and dtype of ``like`` (a view when dtypes agree)."""
    if like.is_complex():
        return torch.view_as_complex(flat.to(like.real.dtype).reshape(*like.shape, 2))
    return flat.to(like.dtype).reshape(like.shape)


def _bordered_solve(gram, scale, reg, border, rhs):
    """alpha [B, n] from [[0, 1^T], [1, gram + reg * scale I]] [mu; alpha] = [1; 0] (float64),
    and ok [B]: the solve succeeded with finite weights. ``border`` [B, n+1, n+1] holds
    the ones of the first row and column, ``rhs`` [B, n+1, 1] is e_0."""
    system = border.clone()
    system[:, 1:, 1:] = gram
    system[:, 1:, 1:].diagonal(dim1=-2, dim2=-1).add_((reg * scale)[:, None])
    sol, status = torch.linalg.solve_ex(system, rhs)
    alpha = sol[:, 1:, 0]
    return alpha, (status == 0) & torch.isfinite(alpha.sum(-1))


def _border(b, n, dtype, device):
    """The constant parts of the bordered system: ([B, n+1, n+1] border, [B, n+1, 1] e_0)."""
    border = torch.zeros(b, n + 1, n + 1, dtype=dtype, device=device)
    border[:, 0, 1:] = 1
    border[:, 1:, 0] = 1
    rhs = torch.zeros(b, n + 1, 1, dtype=dtype, device=device)
    rhs[:, 0] = 1
    return border, rhs


def _mixing_weights(gram, lam, newest, sync=False, cache=None, needed=None):
    """Anderson weights from the Gram matrices ``gram`` [B, n, n] (work dtype).

    Solves [[0, 1^T], [1, G G^T + lam' I]] [mu; alpha] = [1; 0] in float64 with
    lam' = lam * mean(diag(G G^T)); where that fails (singular or non-finite) the retry
    with lam' * 1e3 is taken, and where that fails too, alpha is one-hot on ``newest``.
    The choice is made per sample with ``torch.where``; the retry is solved for every
    sample, except with ``sync`` (the host may look), where it is solved only if a sample
    in ``needed`` ([B] bool, default all; frozen samples, whose Gram rows are zeroed,
    need no weights) failed. ``cache`` (a dict kept by the caller across iterations)
    keeps the constant border.

    Returns:
        alpha [B, n] float64, rows summing to 1.
    """
    gram = gram.double()
    b, n = gram.shape[0], gram.shape[-1]
    if n == 1:
        return gram.new_ones(b, 1)
    scale = gram.diagonal(dim1=-2, dim2=-1).mean(-1)
    cache = {} if cache is None else cache
    if n not in cache:
        cache[n] = _border(b, n, gram.dtype, gram.device)
    alpha, ok = _bordered_solve(gram, scale, lam, *cache[n])
    if sync and bool((ok if needed is None else ok | ~needed).all()):
        return alpha
    retry, ok_retry = _bordered_solve(
        gram, scale, RETRY_FACTOR * max(lam, torch.finfo(torch.float64).eps), *cache[n])
    fallback = gram.new_zeros(b, n)
    fallback[:, newest] = 1
    fallback = torch.where(ok_retry[:, None], retry, fallback)
    return torch.where(ok[:, None], alpha, fallback)


def anderson(f: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, *, m: int = 5,
             beta: float = 1.0, lam: float = 1e-4, tol: float = 1e-3, max_iter: int = 50,
             stop: str = "rel", check_every: int | None = None, backend: str | None = None
             ) -> tuple[torch.Tensor, SolverInfo]:
    """Solve z = f(z) per sample with Anderson acceleration (type II), batched.

    The maths, arguments and results of ``luser_fast.reference.anderson`` (see there and
    this module's docstring for the memory layout): next iterate
    ``beta * sum alpha_i F_i + (1 - beta) * sum alpha_i X_i`` with alpha minimising
    ||sum alpha_i G_i||^2 + lam' ||alpha||^2, sum alpha_i = 1, lam' = lam * mean diag(G G^T).
    Residuals use norms accumulated in the work dtype (float32 or better), so a sample
    whose squared residual overflows it counts as non-finite.

    Args:
        f: the map [B, ...] -> [B, ...]; must treat samples independently.
        z0: starting point [B, ...], floating or complex, any shape and device.
        m: history size (>= 1).
        beta: mixing (damping) weight in (0, 1].
        lam: relative Tikhonov weight (>= 0).
        tol: stopping tolerance on the residual (> 0).
        max_iter: most evaluations of f (>= 1).
        stop: "rel" (||f(z) - z|| / (||f(z)|| + REL_EPS)) or "abs" (||f(z) - z||).
        check_every: iterations between host checks of "every sample finished" (None: 1 on
            CPU, 4 on other devices). Iteration counts and results do not depend on it.
        backend: the backend requested for the history update and the mixing
            (``luser_fast.ops.anderson_step`` / ``anderson_mix``; None: the environment's
            preference, i.e. the fused Triton kernels on CUDA when Triton is installed,
            their PyTorch twins elsewhere).

    Returns:
        (z, info): z [B, ...] the best iterate per sample, z0's dtype, detached;
        info a ``SolverInfo`` with per-sample [B] tensors.

    Example:
        >>> z, info = anderson(lambda z: 0.5 * z + 1, torch.zeros(2, 3), tol=1e-8)
        >>> bool(info.converged.all())
        True
    """
    check_solver_args(f, z0, m=m, beta=beta, lam=lam, tol=tol, max_iter=max_iter, stop=stop)
    check_every = _check_every(check_every, z0.device)
    # the history update and the mixing: chosen once (the arguments are built here, so
    # the per-call checks of ops.anderson_step / anderson_mix are not repeated each step)
    step, mix = ops.implementations(z0.device.type, backend)
    # the fused kernel skips frozen samples (their history is never read again, so this
    # only saves bandwidth); the PyTorch twin is cheapest writing every sample's slot
    twin = step is ops.anderson_step_ref
    beta = float(beta)
    with torch.no_grad():
        z = z0.detach()
        tracker = _Tracker(z, tol, stop, sync=check_every == 1)
        work = work_dtype(z)
        b = z.shape[0]
        dim = z[0].numel() * (2 if z.is_complex() else 1)
        m = min(m, max_iter)            # never more slots than iterations (same k % m)
        # uninitialised: iteration k writes slot k % m before anything reads [:, :min(k+1, m)]
        hist_f = torch.empty(b, m, dim, dtype=work, device=z.device)
        hist_g = torch.empty_like(hist_f)
        gram = torch.zeros(b, m, m, dtype=work, device=z.device)
        borders = {}
        every = torch.ones(b, dtype=torch.bool, device=z.device) if twin else None
        for k in range(max_iter):
            fz = evaluate(f, z)
            slot, n = k % m, min(k + 1, m)
            # history slot, Gram row and ||f(z)||^2 in one op
            if twin:
                row = step(_flat_view(fz), _flat_view(z), hist_f, hist_g, every, slot, n,
                           everyone=True)
            else:
                row = step(_flat_view(fz), _flat_view(z), hist_f, hist_g, tracker.active,
                           slot, n)
            gram[:, slot, :n] = row[:, :n]
            gram[:, :n, slot] = row[:, :n]
            abs_r = row[:, slot].clamp_min(0).sqrt()
            tracker.record(z, abs_r, row[:, m].sqrt())         # a sum of squares: >= 0
            if k + 1 == max_iter:
                break
            if (k + 1) % check_every == 0 and tracker.finished():
                break
            alpha = _mixing_weights(gram[:, :n, :n], lam, slot, tracker.sync, borders,
                                    None if twin else tracker.active)
            # the next iterate (a fresh tensor: it may become z and best), frozen samples
            # taking their best in the same pass; with the host looking and every sample
            # live, the mix is the iterate itself
            everyone = tracker.sync and tracker.n_active == b
            best = None if everyone else _flat_view(tracker.best)
            z = _unflat_like(mix(hist_f, hist_g, alpha, tracker.active, best, beta), z)
        return tracker.result(z0), tracker.info()


def fixed_point(f: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, *,
                tol: float = 1e-3, max_iter: int = 50, stop: str = "rel",
                check_every: int | None = None) -> tuple[torch.Tensor, SolverInfo]:
    """Solve z = f(z) per sample by Picard iteration z <- f(z), batched.

    Same results and rules as ``luser_fast.reference.fixed_point``; like ``anderson`` here,
    the host checks for completion only every ``check_every`` iterations.

    Args:
        f: the map [B, ...] -> [B, ...]; must treat samples independently.
        z0: starting point [B, ...], floating or complex.
        tol: stopping tolerance on the residual (> 0).
        max_iter: most evaluations of f (>= 1).
        stop: "rel" or "abs", as in ``anderson``.
        check_every: as in ``anderson``.

    Returns:
        (z, info): z [B, ...] the best iterate per sample, detached; info a ``SolverInfo``.
    """
    check_solver_args(f, z0, tol=tol, max_iter=max_iter, stop=stop)
    check_every = _check_every(check_every, z0.device)
    with torch.no_grad():
        z = z0.detach()
        tracker = _Tracker(z, tol, stop, sync=check_every == 1)
        work = work_dtype(z)
        for k in range(max_iter):
            fz = evaluate(f, z)
            fz_flat = _flat_view(fz).to(work)
            abs_r = torch.linalg.vector_norm(fz_flat - _flat_view(z), dim=1)
            tracker.record(z, abs_r, torch.linalg.vector_norm(fz_flat, dim=1))
            if k + 1 == max_iter:
                break
            if (k + 1) % check_every == 0 and tracker.finished():
                break
            z = tracker.next_iterate(fz)
        return tracker.result(z0), tracker.info()


def bytes_per_iteration(dim: int, m: int = 5, *, beta: float = 1.0, itemsize: int = 8,
                        implementation: str = "fast", masked: bool = False) -> int:
    """Bytes one Anderson iteration moves per sample, f excluded (the model in this
    module's docstring).

    Every D-vector read or written counts once; the small [m, m] systems are ignored.
    ``"fast"`` is this module, ``"reference"`` the textbook
    ``luser_fast.reference.anderson`` and ``"torchdeq"`` torchdeq 0.1's ``anderson_solver``.

    Args:
        dim: D, elements per sample.
        m: history size.
        beta: damping (beta < 1 costs the fast version a pass over G: m + 4 vectors).
        itemsize: bytes per element.
        implementation: "fast", "reference" or "torchdeq".
        masked: "fast" only: the best and next iterates go through masked copies (some
            sample frozen or not improving, or ``check_every`` > 1): 6 vectors more.

    Returns:
        bytes per sample per iteration.
    """
    vectors = {"fast": 2 * m + 7 + (6 if masked else 0) + (0 if beta == 1 else m + 4),
               "reference": 10 * m + 29,
               "torchdeq": 6 * m + 19}
    if implementation not in vectors:
        raise ValueError(f"implementation must be one of {tuple(vectors)}, got "
                         f"{implementation!r}")
    return vectors[implementation] * dim * itemsize
