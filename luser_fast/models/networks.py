"""The models: the shallow equilibrium regularizer, LUSER and the LU baseline (one
definition each; ``luser_fast.reference`` binds them to the reference ops).

Both unrolled models run K proximal-gradient steps from x_0 (FBP for CT, A^H y otherwise):

    v_k     = x_k - exp(eta_k) / L * J_A(x_k)^H (A(x_k) - y)     L = ||A||^2 (1 if unknown)
    x_{k+1} = R_k(v_k)

LU's R is a deep residual CNN trained through autograd (its activations are all kept).
LUSER's R solves the equilibrium z* = f(z*, v) of a shallow map f (``ShallowEquilibrium``)
with Anderson acceleration and differentiates it implicitly, so the memory a step keeps
for backward does not depend on the solver's iterations. The equilibrium state lives in
image space (``in_channels`` channels): z* is x_{k+1}, which keeps the state small.

Complex images (MRI, NUFFT) are fed to the networks as 2 real channels (real, imag); use
``in_channels=2`` for them.

Volumes: ``spatial_dims=3`` builds the same networks from ``Conv3d`` (GroupNorm as in 2-D)
for images [B, C, D, H, W] (cone-beam CT, 3-D MRI); the parameters keep their names (a 3-D
checkpoint has the 2-D keys, with [C_out, C_in, k, k, k] kernels). The DEQ core does not
look at shapes. Memory in 3-D: LU keeps every activation of its K regularizers for
backward; LUSER keeps K (|z*| + |v|) image-sized tensors, and with ``chunk=1`` (the
default) its training peak is one sample's graph of f, rebuilt in the implicit backward,
whatever the batch; in 3-D that graph holds only the depth - 1 pre-norm outputs of f
(``luser_fast.ops.shallow``, "Volumes"), so the peak is about 6 ``channels``-channel
volumes of one sample against LU's 11 per unrolled step and sample (``luser-fast
memprofile --dims 3`` measures both).

The operator is physics, supplied at construction: it moves with ``.to()`` but is not
part of ``state_dict`` (a checkpoint holds learned parameters only, so it loads into a
model built with any backend's operator).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core import validate
from ..core.binding import bound
from ..deq import DEQ, jacobian_spectral_radius
from ..ops.shallow import shallow_inject, shallow_map

__all__ = ["ShallowEquilibrium", "DeepRegularizer", "LUSER", "LU"]

_ACTS = {"gelu": nn.GELU, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}
_NORMS = ("group", "none")


def _norm(kind, groups, channels):
    if kind == "none":
        return nn.Identity()
    return nn.GroupNorm(groups, channels)


#: the convolution of each number of spatial dimensions
_CONVS = {2: nn.Conv2d, 3: nn.Conv3d}


def _check_spatial_dims(spatial_dims, fn):
    """``spatial_dims`` as 2 or 3 (TypeError for a non-int, ValueError for another int)."""
    validate.int_arg("spatial_dims", spatial_dims, 1, fn)
    if spatial_dims not in _CONVS:
        raise ValueError(f"{fn}: spatial_dims must be 2 (images) or 3 (volumes), "
                         f"got {spatial_dims}")
    return int(spatial_dims)


def _check_image(x, spatial_dims, fn, name="the image"):
    """x must be [B, C, *spatial] with ``spatial_dims`` spatial axes."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 + spatial_dims:
        layout = "[B, C, H, W]" if spatial_dims == 2 else "[B, C, D, H, W]"
        raise ValueError(f"{fn}: {name} must be {layout} for spatial_dims={spatial_dims}, "
                         f"got shape {tuple(x.shape)}")


def _check_arch(in_channels, channels, depth, kernel_size, norm, groups, act, min_depth):
    validate.int_arg("in_channels", in_channels, 1)
    validate.int_arg("channels", channels, 1)
    validate.int_arg("depth", depth, min_depth)
    validate.int_arg("kernel_size", kernel_size, 1)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")
    if norm == "group":
        validate.int_arg("groups", groups, 1)
        if channels % groups:
            raise ValueError(f"groups ({groups}) must divide channels ({channels})")
    if act not in _ACTS:
        raise ValueError(f"act must be one of {tuple(_ACTS)}, got {act!r}")


class ShallowEquilibrium(nn.Module):
    """The shallow fixed-point map f(z, v) of LUSER's regularizer.

        h_1 = act(norm_1(conv_in(z) + inject(v)))
        h_i = act(norm_i(hidden_i(h_{i-1})))          i = 2 .. depth-1
        f(z, v) = v + conv_out(h_{depth-1})

    ``depth`` counts the 3x3 convolutions on the path from z to f(z, v) (conv_in, the
    hidden ones, conv_out), so depth=2 is conv_in + conv_out. ``inject`` (U v) does not
    depend on z: a fast solver computes it once per solve. conv_out starts small so f
    starts as a contraction around v (the solver then converges from the first step).

    Args:
        in_channels: image channels C_in (2 for complex images).
        channels: hidden width.
        depth: number of convolutions on the z path (>= 2).
        kernel_size: odd convolution size.
        norm: "group" (GroupNorm with ``groups`` groups) or "none".
        groups: GroupNorm groups.
        act: "gelu", "relu", "elu" or "silu".
        spatial_dims: 2 (images, ``Conv2d``) or 3 (volumes, ``Conv3d``).

    f is evaluated by ``luser_fast.ops.shallow_map`` (the fused Triton kernel where it
    serves, the PyTorch reference elsewhere; the fused kernel is 2-D, so volumes run the
    reference) with U v from ``shallow_inject``.

    Shapes: z, v [B, C_in, H, W] -> [B, C_in, H, W] (spatial_dims=2);
    [B, C_in, D, H, W] -> [B, C_in, D, H, W] (spatial_dims=3).
    """

    #: backend requested for every op (None: ``luser_fast.backends`` chooses)
    backend: str | None = None

    def __init__(self, in_channels=1, channels=64, depth=2, kernel_size=3, norm="group",
                 groups=4, act="gelu", spatial_dims=2):
        super().__init__()
        self.spatial_dims = _check_spatial_dims(spatial_dims, type(self).__name__)
        _check_arch(in_channels, channels, depth, kernel_size, norm, groups, act, 2)
        self.act_name = act
        pad = kernel_size // 2
        conv = _CONVS[self.spatial_dims]
        self.conv_in = conv(in_channels, channels, kernel_size, padding=pad)
        self.inject = conv(in_channels, channels, kernel_size, padding=pad, bias=False)
        self.norms = nn.ModuleList([_norm(norm, groups, channels) for _ in range(depth - 1)])
        self.hidden = nn.ModuleList(
            [conv(channels, channels, kernel_size, padding=pad) for _ in range(depth - 2)])
        self.conv_out = conv(channels, in_channels, kernel_size, padding=pad)
        self.act = _ACTS[act]()
        with torch.no_grad():
            self.conv_out.weight.mul_(0.01)
            self.conv_out.bias.zero_()

    def init_state(self, v):
        """The solver's starting point: the input itself."""
        return v

    def bind(self, v):
        """z -> f(z, v) with the injection U v [B, channels, *spatial] computed once, here."""
        _check_image(v, self.spatial_dims, type(self).__name__, "v")
        injected = shallow_inject(v, self.inject.weight, backend=self.backend)
        return lambda z: self._map(z, v, injected)

    def forward(self, z, v):
        _check_image(v, self.spatial_dims, type(self).__name__, "v")
        return self._map(z, v, shallow_inject(v, self.inject.weight, backend=self.backend))

    def _map(self, z, v, injected):
        norm = isinstance(self.norms[0], nn.GroupNorm)
        return shallow_map(
            z, injected, v, [self.conv_in.weight, *(c.weight for c in self.hidden),
                             self.conv_out.weight],
            [self.conv_in.bias, *(c.bias for c in self.hidden), self.conv_out.bias],
            [n.weight for n in self.norms] if norm else [],
            [n.bias for n in self.norms] if norm else [],
            self.norms[0].num_groups if norm else 1, self.act_name,
            self.norms[0].eps if norm else 1e-5, backend=self.backend)


class DeepRegularizer(nn.Module):
    """LU's feed-forward residual CNN: R(v) = v + CNN(v), ``depth`` convolutions.

        h = act(conv_in(v)); h = act(norm_i(hidden_i(h))) (depth-2 times); R = v + conv_out(h)

    ``spatial_dims``: 2 (``Conv2d``) or 3 (``Conv3d``, volumes).

    Shapes: v [B, C_in, H, W] -> [B, C_in, H, W] (spatial_dims=2);
    [B, C_in, D, H, W] -> [B, C_in, D, H, W] (spatial_dims=3).
    """

    def __init__(self, in_channels=1, channels=64, depth=5, kernel_size=3, norm="group",
                 groups=4, act="gelu", spatial_dims=2):
        super().__init__()
        self.spatial_dims = _check_spatial_dims(spatial_dims, type(self).__name__)
        _check_arch(in_channels, channels, depth, kernel_size, norm, groups, act, 2)
        pad = kernel_size // 2
        conv = _CONVS[self.spatial_dims]
        self.conv_in = conv(in_channels, channels, kernel_size, padding=pad)
        self.hidden = nn.ModuleList(
            [conv(channels, channels, kernel_size, padding=pad) for _ in range(depth - 2)])
        self.norms = nn.ModuleList([_norm(norm, groups, channels) for _ in range(depth - 2)])
        self.conv_out = conv(channels, in_channels, kernel_size, padding=pad)
        self.act = _ACTS[act]()
        with torch.no_grad():
            self.conv_out.weight.mul_(0.01)
            self.conv_out.bias.zero_()

    def forward(self, v):
        # (Conv3d would take a 4-D tensor as one unbatched volume: refuse it by name)
        _check_image(v, self.spatial_dims, type(self).__name__, "v")
        h = self.act(self.conv_in(v))
        for conv, norm in zip(self.hidden, self.norms):
            h = self.act(norm(conv(h)))
        return v + self.conv_out(h)


def _to_channels(x, spatial_dims=2):
    """Complex [B, 1, *spatial] -> real [B, 2, *spatial] (real, imag) for ``spatial_dims``
    spatial axes; real passes through."""
    if x.is_complex():
        axis = -1 - spatial_dims                  # the channel axis
        return torch.view_as_real(x.squeeze(axis)).movedim(-1, axis)
    return x


def _from_channels(x, like, spatial_dims=2):
    """Inverse of ``_to_channels`` for a tensor shaped like ``like``."""
    if like.is_complex():
        axis = -1 - spatial_dims
        return torch.view_as_complex(x.movedim(axis, -1).contiguous()).unsqueeze(axis)
    return x


def _drop_operator_keys(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "operator.")]:
        del state_dict[key]


class _Unrolled(nn.Module):
    """Shared machinery of LU and LUSER: operator, step sizes, x0, the K-step loop.

    Subclasses define ``_regularize(k, v)``: the regularizer of step k on v [B, C_in, *spatial].
    """

    #: backend requested for every op (None: ``luser_fast.backends`` chooses); the
    #: regularizers and DEQs a model builds are bound the same way
    backend: str | None = None

    def __init__(self, operator, iterations, in_channels, share_weights, step_init,
                 spatial_dims=2):
        super().__init__()
        self.spatial_dims = _check_spatial_dims(spatial_dims, type(self).__name__)
        if not isinstance(operator, nn.Module) or not hasattr(operator, "adjoint"):
            raise TypeError("operator must be an nn.Module with forward and adjoint "
                            "(a luser_fast.physics operator or an Operator subclass)")
        validate.int_arg("iterations", iterations, 1)
        if not isinstance(share_weights, bool):
            raise TypeError("share_weights must be a bool")
        if not isinstance(step_init, (int, float)) or not math.isfinite(step_init):
            raise ValueError(f"step_init must be a finite number, got {step_init!r}")
        self.operator = operator
        self.iterations = iterations
        self.in_channels = in_channels
        self.share_weights = share_weights
        self.eta = nn.Parameter(torch.full((iterations,), float(step_init)))
        self.register_buffer("lipschitz", torch.tensor(self._lipschitz(operator)), persistent=False)
        self._register_state_dict_hook(_drop_operator_keys)

    @staticmethod
    def _lipschitz(operator):
        # ||A||^2 normalises the step so exp(eta) is a dimensionless step in (0, 2).
        example = getattr(operator, "example_input", lambda: None)()
        if example is None:
            return 1.0
        return max(operator.norm(iters=30, x=example) ** 2, 1e-12)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # The operator's buffers are not in checkpoints: keep the ones this model was built with.
        for key, value in self.operator.state_dict(prefix=prefix + "operator.").items():
            state_dict.setdefault(key, value)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing,
                                      unexpected, errors)

    def initial(self, y):
        """x_0: FBP where the operator has one, else A^H y."""
        if hasattr(self.operator, "fbp"):
            return self.operator.fbp(y)
        return self.operator.adjoint(y)

    def _check_inputs(self, y, x0):
        """y a tensor in the model's dtype (its real dtype for complex measurements) on the
        model's device; x0 a point of the operator's domain for y (shape, dtype, device),
        where the operator can tell (``domain_shape``, ``domain_dtype``)."""
        fn = type(self).__name__
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"{fn}: y must be a torch.Tensor, got {type(y).__name__}")
        if y.dim() < 1:
            raise ValueError(f"{fn}: y must have a leading batch dimension, got a 0-d tensor")
        dtype = self.eta.dtype
        if (y.real.dtype if y.is_complex() else y.dtype) != dtype:
            raise TypeError(f"{fn}: y is {y.dtype} but the model's parameters are {dtype}; "
                            f"convert one of them (y.to(...) or model.to(...))")
        if y.device != self.eta.device:
            raise ValueError(f"{fn}: y is on {y.device} but the model is on "
                             f"{self.eta.device}; move one of them (.to())")
        if x0 is None:
            return
        shape = getattr(self.operator, "domain_shape", lambda y: None)(y)
        domain_dtype = getattr(self.operator, "domain_dtype", None)
        validate.tensor_like(x0, "x0", fn, shape=shape,
                             dtype=domain_dtype(y) if callable(domain_dtype) else None,
                             device=y.device, what=f"the operator's domain for y of shape "
                                                   f"{tuple(y.shape)}")

    def forward(self, y, x0=None):
        """Reconstruct x from measurements y.

        Args:
            y: measurements [B, ...], the shape ``operator(x)`` returns, in the model's
                dtype (complex measurements: its complex counterpart) and on its device.
            x0: starting image [B, C, H, W] ([B, C, D, H, W] with ``spatial_dims=3``;
                complex for MRI/NUFFT) of the operator's domain for y; default
                ``initial(y)``.

        Returns:
            x_K, shaped like x0 (an empty batch gives x0 as it is).

        Raises:
            TypeError: y or x0 not a tensor or of another dtype than the model's.
            ValueError: x0 of another shape or device than the operator's domain for y,
                or an image with another number of spatial axes than ``spatial_dims``.
        """
        self._check_inputs(y, x0)
        x = self.initial(y) if x0 is None else x0
        if y.shape[0] == 0:       # an empty batch: nothing to solve (the DEQ takes B >= 1)
            return x
        step = torch.exp(self.eta) / self.lipschitz
        sd = self.spatial_dims
        for k in range(self.iterations):
            v = x - step[k] * self.operator.data_grad(x, y)
            _check_image(v, sd, type(self).__name__)
            vc = _to_channels(v, sd)
            if vc.shape[1] != self.in_channels:
                raise ValueError(
                    f"the image has {vc.shape[1]} channels as network input but in_channels="
                    f"{self.in_channels} (complex images enter as 2 real channels)")
            x = _from_channels(self._regularize(k, vc), v, sd)
        return x


class LUSER(_Unrolled):
    """Loop Unrolled Shallow Equilibrium Regularizer (Guan et al., arXiv 2210.04987).

    K proximal-gradient steps; the regularizer of step k is the equilibrium of
    ``ShallowEquilibrium`` solved by a ``DEQ`` layer (Anderson + implicit backward).

    Args:
        operator: forward model (a ``luser_fast.physics`` operator or any ``Operator``).
        iterations: K, unrolled steps.
        in_channels: image channels seen by the network (2 for complex images).
        channels, depth: width and depth of the shallow map (default 4: in the
            design-space study, depth carried PSNR and width did not; ``chunk=1`` keeps
            the training peak at ~1/15 of LU depth 5's all the same).
        share_weights: one shallow map for all K steps (True) or one per step (False, the
            default: untied maps cost parameters, not activation memory, and gained PSNR).
        step_init: initial eta of every step (step = exp(eta) / ||A||^2).
        solver, solver_kwargs, backward, backward_kwargs: passed to ``DEQ``; the solver
            defaults are m=5, beta=1, lam=1e-4, tol=1e-3, max_iter=50.
        chunk: samples per chunk of each equilibrium solve and implicit backward (None:
            the whole batch); the result does not depend on it (``DEQ``). The default 1
            bounds the training peak by one sample's graph of f; on a GPU with large
            batches, a larger chunk trades memory for speed.
        warm_start: start the solve of step k >= 1 from the equilibrium of step k - 1
            (x_k) instead of ``init_state(v_k) = v_k``.
        spatial_dims: 2 (images [B, C, H, W]) or 3 (volumes [B, C, D, H, W]: ``Conv3d``
            maps, evaluated by the reference map, as the fused kernel is 2-D, keeping only
            its pre-norm outputs for backward). In 3-D, ``chunk=1`` matters most: the
            training peak is then one sample's graph of f (rebuilt in the implicit
            backward) plus the saved K (|z*| + |v|), whatever the batch; LU's grows with
            the batch and keeps every activation.

    Attributes:
        last_solver_info: list of ``SolverInfo``, one per unrolled step of the last call.

    Example:
        >>> model = LUSER(Radon(64, angles=60), channels=32)
        >>> x_hat = model(sinogram)
    """

    def __init__(self, operator, iterations=5, in_channels=1, channels=64, depth=4,
                 share_weights=False, step_init=-1.0, solver="anderson", solver_kwargs=None,
                 backward="ift", backward_kwargs=None, chunk=1, warm_start=False,
                 spatial_dims=2):
        super().__init__(operator, iterations, in_channels, share_weights, step_init,
                         spatial_dims)
        if not isinstance(warm_start, bool):
            raise TypeError("warm_start must be a bool")
        n = 1 if share_weights else iterations
        self.regularizers = nn.ModuleList(
            [bound(ShallowEquilibrium, self.backend)(in_channels, channels, depth,
                                                     spatial_dims=spatial_dims)
             for _ in range(n)])
        self.deqs = [bound(DEQ, self.backend)(f, solver=solver, backward=backward, solver_kwargs=solver_kwargs,
                         backward_kwargs=backward_kwargs, chunk=chunk)
                     for f in self.regularizers]
        self.warm_start = warm_start
        self.last_solver_info = []
        self._previous = None
        self._probe = None

    def forward(self, y, x0=None):
        """x_K from measurements y (``_Unrolled.forward``); shaped like x0."""
        self.last_solver_info = []
        self._previous = None
        try:
            return super().forward(y, x0)
        finally:
            self._previous = None

    def _regularize(self, k, v):
        deq = self.deqs[0 if self.share_weights else k]
        z0 = self._previous if self.warm_start else None
        z = deq(v, z0=z0)
        self._previous = z.detach()
        self.last_solver_info.append(deq.last_info)
        if self._probe is not None:
            self._probe.append((deq.f, v.detach(), z.detach()))
        return z

    @torch.no_grad()
    def equilibrium_diagnostics(self, y, iters=20):
        """How much each unrolled step's equilibrium iterates, on measurements y.

        Runs a forward (no gradients) and, at each step's equilibrium z*_k, estimates the
        spectral radius of J_f(z*_k) by power iteration
        (``luser_fast.deq.jacobian_spectral_radius``). A radius near 0 means the
        equilibrium is reached in one or two steps and adds no depth beyond one pass of f.

        Args:
            y: measurements [B, ...].
            iters: power iterations per step.

        Returns:
            dict: ``iterations`` [K, B] float (solver iterations per step and sample) and
            ``spectral_radius`` [K, B] float64.
        """
        self._probe = []
        try:
            self(y)
            probes = self._probe
        finally:
            self._probe = None
        rho = torch.stack([jacobian_spectral_radius(lambda z, f=f, v=v: f(z, v), z, iters=iters)
                           for f, v, z in probes])
        its = torch.stack([info.iterations.float() for info in self.last_solver_info])
        return {"iterations": its, "spectral_radius": rho}


class LU(_Unrolled):
    """Loop unrolling with a deep residual CNN regularizer (the memory-hungry baseline).

    Args:
        operator, iterations, in_channels, share_weights, step_init, spatial_dims: as in
            ``LUSER``.
        channels, depth: width and number of convolutions of each ``DeepRegularizer``.
    """

    def __init__(self, operator, iterations=5, in_channels=1, channels=64, depth=5,
                 share_weights=True, step_init=-1.0, spatial_dims=2):
        super().__init__(operator, iterations, in_channels, share_weights, step_init,
                         spatial_dims)
        n = 1 if share_weights else iterations
        self.regularizers = nn.ModuleList(
            [DeepRegularizer(in_channels, channels, depth, spatial_dims=spatial_dims)
             for _ in range(n)])

    def _regularize(self, k, v):
        return self.regularizers[0 if self.share_weights else k](v)
