"""Reference of the fused Anderson ops (``luser_fast.ops.anderson_step`` / ``anderson_mix``).

The history update with its Gram row, and the mixing, in plain PyTorch: the maths the
Triton kernels implement, and what serves where Triton does not.
"""
from __future__ import annotations

import torch

__all__ = ["anderson_step_ref", "anderson_mix_ref"]


def anderson_step_ref(fz, z, hist_f, hist_g, active, slot: int, n: int):
    """History update and Gram row, plain PyTorch (the maths of ``anderson_step``).

    Args:
        fz: f(z) [B, D].
        z: the iterate [B, D].
        hist_f, hist_g: ring buffers [B, m, D] (work dtype), updated in place at ``slot``
            for active samples.
        active: [B] bool; false rows are frozen (history untouched, zero Gram row).
        slot: history slot to write (0 <= slot < n).
        n: valid slots after this write (1 <= n <= m).

    Returns:
        [B, m + 1] work dtype: columns j < n hold <G_j, g> (column ``slot`` is ||g||^2),
        columns n..m-1 zero, column m holds ||f(z)||^2; zero rows for frozen samples.
    """
    b, m, _ = hist_f.shape
    mask = active.view(b, 1)
    f = fz.to(hist_f.dtype)
    g = f - z.to(hist_f.dtype)
    hist_f[:, slot] = torch.where(mask, f, hist_f[:, slot])
    hist_g[:, slot] = torch.where(mask, g, hist_g[:, slot])
    out = hist_f.new_zeros(b, m + 1)
    out[:, :n] = torch.bmm(hist_g[:, :n], g.unsqueeze(-1)).squeeze(-1)
    out[:, m] = (f * f).sum(-1)
    return torch.where(mask, out, torch.zeros_like(out))


def anderson_mix_ref(hist_f, hist_g, alpha, active, best, beta: float):
    """Next Anderson iterate, plain PyTorch (the maths of ``anderson_mix``).

    Args:
        hist_f, hist_g: ring buffers [B, m, D].
        alpha: weights [B, n] (n <= m valid slots), any floating dtype.
        active: [B] bool; frozen samples take ``best``.
        best: [B, D] frozen iterates, or None (every sample active).
        beta: damping in (0, 1].

    Returns:
        [B, D] in the history dtype.
    """
    n = alpha.shape[1]
    a = alpha.to(hist_f.dtype).unsqueeze(1)
    mixed = torch.bmm(a, hist_f[:, :n]).squeeze(1)
    if beta != 1:
        mixed = mixed - (1 - beta) * torch.bmm(a, hist_g[:, :n]).squeeze(1)
    if best is None:
        return mixed
    return torch.where(active.view(-1, 1), mixed, best.to(mixed.dtype))
