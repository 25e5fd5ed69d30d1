"""Reference of the fused Anderson ops (``luser_fast.ops.anderson_step`` / ``anderson_mix``).

The history update with its Gram row, and the mixing, in plain PyTorch: the maths the
Triton kernels implement, and what serves where Triton does not.
"""
from __future__ import annotations

import torch

__all__ = ["anderson_step_ref", "anderson_mix_ref"]


def anderson_step_ref(fz, z, hist_f, hist_g, active, slot: int, n: int, *,
                      everyone: bool = False):
    """History update and Gram row, plain PyTorch (the maths of ``anderson_step``).

    Args:
        fz: f(z) [B, D].
        z: the iterate [B, D].
        hist_f, hist_g: ring buffers [B, m, D] (work dtype), updated in place at ``slot``
            for active samples.
        active: [B] bool; false rows are frozen (history untouched, zero Gram row).
        slot: history slot to write (0 <= slot < n).
        n: valid slots after this write (1 <= n <= m).
        everyone: the caller knows every sample is active (``active`` is then not read).

    Returns:
        [B, m + 1] work dtype: columns j < n hold <G_j, g> (column ``slot`` is ||g||^2),
        columns n..m-1 zero, column m holds ||f(z)||^2; zero rows for frozen samples.

    This is also the CPU implementation of ``luser_fast.deq.anderson``'s inner loop, so
    it avoids copies: the new f and g are written straight into their slots when every
    sample is active (checked on the host for CPU tensors, where that costs nothing;
    masked writes otherwise); the Gram row is one [B, 1, D] x [B, D, n] product (the
    [B, n, D] x [B, D, 1] form of the same sums ran 15x slower in MKL's single-threaded
    GEMV, AMD EPYC, torch 2.13); ||f||^2 is ``vector_norm(f)`` squared.
    """
    b, m, _ = hist_f.shape
    f_slot, g_slot = hist_f[:, slot], hist_g[:, slot]
    everyone = everyone or (active.device.type == "cpu" and bool(active.all()))
    if everyone:
        f = f_slot.copy_(fz)
        g = torch.sub(f_slot, z, out=g_slot)
    else:
        mask = active.view(b, 1)
        f = fz.to(hist_f.dtype)
        g = f - z.to(hist_f.dtype)
        torch.where(mask, f, f_slot, out=f_slot)
        torch.where(mask, g, g_slot, out=g_slot)
    parts = [torch.bmm(g.unsqueeze(1), hist_g[:, :n].transpose(1, 2)).squeeze(1),
             torch.linalg.vector_norm(f, dim=1).square().unsqueeze(1)]
    if n < m:
        parts.insert(1, hist_f.new_zeros(b, m - n))
    out = torch.cat(parts, 1)
    if not everyone:
        out.masked_fill_(~mask, 0)
    return out


def anderson_mix_ref(hist_f, hist_g, alpha, active, best, beta: float):
    """Next Anderson iterate, plain PyTorch (the maths of ``anderson_mix``).

    Args:
        hist_f, hist_g: ring buffers [B, m, D].
        alpha: weights [B, n] (n <= m valid slots), any floating dtype.
        active: [B] bool; frozen samples take ``best``.
        best: [B, D] frozen iterates, or None (every sample active).
        beta: damping in (0, 1].

    Returns:
        [B, D] in the history dtype, a new tensor: sum_j alpha_j F_j
        - (1 - beta) sum_j alpha_j G_j for active samples, ``best`` for the others.
    """
    n = alpha.shape[1]
    a = alpha.to(hist_f.dtype).unsqueeze(1)
    mixed = torch.bmm(a, hist_f[:, :n]).squeeze(1)
    if beta != 1:
        mixed.sub_(torch.bmm(a, hist_g[:, :n]).squeeze(1), alpha=1 - beta)
    if best is None:
        return mixed
    return torch.where(active.view(-1, 1), mixed, best.to(mixed.dtype))
