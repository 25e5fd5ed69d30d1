"""Reference of LUSER's shallow fixed-point map (``luser_fast.ops.shallow_map``).

The map of ``ShallowEquilibrium`` in plain PyTorch, as a function of its parameters:

    h_1 = act(GN_1(conv_in(z) + U v))     h_i = act(GN_i(hidden_i(h_{i-1})))
    f(z, v) = v + conv_out(h_{L-1})

The one definition of this maths: the module calls it wherever the fused Triton kernel
does not serve, and the kernel is tested against it. Images [B, C, H, W] with k x k
weights use conv2d; volumes [B, C, D, H, W] with k x k x k weights the same code with
conv3d (``conv_nd`` picks by the weights' dimensions).
"""
from __future__ import annotations

import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "conv_nd", "norm_act_ref", "shallow_map_ref"]

#: the activations of the shallow map, by name
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "elu": F.elu}
#: the convolution for weights of each number of dimensions: [C_out, C_in, *kernel]
_CONV = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}


def conv_nd(weight):
    """F.conv2d for [C_out, C_in, k, k] weights, F.conv3d for [C_out, C_in, k, k, k] (and
    F.conv1d for [C_out, C_in, k])."""
    return _CONV[weight.dim()]


def norm_act_ref(y, gamma, beta, groups: int, act: str, eps: float):
    """One layer's GroupNorm and activation: act(GN(y)) with affine (gamma, beta) [C], or
    act(y) when gamma is None (no norm)."""
    if gamma is not None:
        y = F.group_norm(y, groups, gamma, beta, eps)
    return ACTIVATIONS[act](y)


def shallow_map_ref(z, injected, v, weights, biases, gammas, betas, groups: int,
                    act: str, eps: float, *, norm_act=None):
    """The shallow map in plain PyTorch (the maths of ``shallow_map``).

    Args:
        z, v: [B, C_in, H, W], or volumes [B, C_in, D, H, W].
        injected: U v [B, C, H, W] (volumes: [B, C, D, H, W]).
        weights: L conv weights (one odd size k; 3x3 for the fused kernel): [C, C_in, k, k],
            (L - 2) x [C, C, k, k], [C_in, C, k, k]; for volumes one more k each (conv3d).
        biases: L biases [C], ..., [C_in].
        gammas, betas: L - 1 GroupNorm affine parameters [C] each, or empty (no norm).
        groups: GroupNorm groups (ignored without norm).
        act: "gelu", "relu", "silu" or "elu".
        eps: GroupNorm epsilon.
        norm_act: the GroupNorm + activation step, called as ``norm_act_ref`` is (the
            default); ``luser_fast.ops.shallow`` passes an autograd form of the same maths
            that keeps less for backward.

    Returns:
        f(z, v), shaped like z.
    """
    norm_act = norm_act_ref if norm_act is None else norm_act
    conv = conv_nd(weights[0])
    pad = weights[0].shape[-1] // 2
    # a convolution saves its input and weight, not its output, so adding U v in place is
    # safe and saves one [B, C, *spatial] allocation
    h = conv(z, weights[0], biases[0], padding=pad).add_(injected)
    for i in range(1, len(weights)):
        h = norm_act(h, gammas[i - 1] if gammas else None, betas[i - 1] if gammas else None,
                     groups, act, eps)
        h = conv(h, weights[i], biases[i], padding=pad)
    return v + h
