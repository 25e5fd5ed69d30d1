"""Fast equilibrium core (luser_fast.deq) against the reference core and closed forms:
solver results and iteration counts, freezing with deferred host checks, robustness,
implicit gradients (unrolled backprop, analytic, gradcheck) and what the backward saves."""
import gc
import math
import weakref

import pytest
import torch
from helpers import (LinearF, contractions, exact_fixed_point,
                     linear_map, poisoned_map, rel_err)
from torch import nn

from luser_fast import deq as fast
from luser_fast import reference
from luser_fast.deq.solvers import _mixing_weights, bytes_per_iteration
from luser_fast.profile import SavedTensorBytes
from luser_fast.reference.deq import mixing_weights as _mixing_weights_ref

D = 48


def _problems(rates, seed=0, dtype=torch.float64):
    return contractions(D, rates, seed, dtype)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("m, beta, stop", [(5, 1.0, "rel"), (3, 0.7, "rel"), (6, 1.0, "abs"),
                                           (1, 1.0, "rel")])
def test_matches_reference_on_different_contractions(m, beta, stop):
    # Same maths as the reference, so the counts agree to rounding: equal here; at a rate of
    # 0.99 (365+ iterations) m=3, beta=0.7 differs by +-2 either way (X = F - G rounds
    # differently from a stored X).
    W, b = _problems([0.3, 0.6, 0.8, 0.95])
    f = linear_map(W, b)
    z0 = torch.zeros_like(b)
    kwargs = {"m": m, "beta": beta, "tol": 1e-10, "max_iter": 600, "stop": stop}
    z, info = fast.anderson(f, z0, **kwargs)
    z_ref, info_ref = reference.anderson(f, z0, **kwargs)
    assert info.converged.all() and info_ref.converged.all()
    exact = exact_fixed_point(W, b)
    for i in range(len(b)):                                   # same fixed points, per sample
        assert rel_err(z[i], exact[i]) < 1e-7 and rel_err(z[i], z_ref[i]) < 1e-7
    assert (info.iterations <= info_ref.iterations).all(), (info.iterations, info_ref.iterations)
    assert len(set(info.iterations.tolist())) > 1            # each sample keeps its own count


def test_fixed_point_matches_reference():
    W, b = _problems([0.2, 0.5, 0.8])
    f = linear_map(W, b)
    z, info = fast.fixed_point(f, torch.zeros_like(b), tol=1e-10, max_iter=500)
    z_ref, info_ref = reference.fixed_point(f, torch.zeros_like(b), tol=1e-10, max_iter=500)
    assert torch.equal(info.iterations, info_ref.iterations) and info.converged.all()
    torch.testing.assert_close(z, z_ref, rtol=1e-12, atol=1e-12)


def test_mixing_weights_from_incremental_gram_match_reference():
    g = torch.randn(3, 4, 20, dtype=torch.float64)
    g[1, 2] = g[1, 0]                                         # a singular history
    for lam in (0.0, 1e-4):
        alpha = _mixing_weights(g @ g.mT, lam, newest=3)
        alpha_ref = _mixing_weights_ref(g, lam, newest=3)
        torch.testing.assert_close(alpha, alpha_ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(alpha.sum(-1), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("solver", [fast.anderson, fast.fixed_point])
@pytest.mark.parametrize("check_every", [1, 3, 7])
def test_frozen_samples_bit_identical(solver, check_every):
    W, b = _problems([0.1, 0.4, 0.7, 0.9])
    calls = []

    def f(z):
        calls.append(z.clone())
        return linear_map(W, b)(z)

    z, info = solver(f, torch.zeros_like(b), tol=1e-8, max_iter=500, check_every=check_every)
    its = info.iterations.tolist()
    assert info.converged.all() and its == sorted(its) and len(set(its)) == 4
    # the host looks only every check_every iterations, so the last sample's finish is
    # noticed at the next multiple (frozen samples are evaluated, never changed)
    assert len(calls) == math.ceil(its[-1] / check_every) * check_every
    for i, k in enumerate(its):
        assert all(torch.equal(c[i], z[i]) for c in calls[k - 1:])
        assert not torch.equal(calls[k - 2][i], z[i])
    z1, info1 = solver(linear_map(W, b), torch.zeros_like(b), tol=1e-8, max_iter=500, check_every=1)
    assert torch.equal(z, z1) and torch.equal(info.iterations, info1.iterations)


@pytest.mark.parametrize("check_every", [1, 4])
def test_nan_sample_does_not_poison_others(check_every):
    W, b = _problems([0.9] * 4)
    f = poisoned_map(W, b)

    z0 = torch.zeros_like(b)
    z, info = fast.anderson(f, z0, tol=1e-8, max_iter=500, check_every=check_every)
    assert torch.isfinite(z).all()
    assert info.converged.tolist() == [True, False, True, False]
    assert info.iterations[1] == 2 and info.iterations[3] == 1
    assert rel_err(z[[0, 2]], exact_fixed_point(W, b)[[0, 2]]) < 1e-6
    assert torch.equal(z[1], z0[1]) and info.residual[3] == math.inf
    z_alone, _ = fast.anderson(linear_map(W[[0, 2]], b[[0, 2]]), z0[[0, 2]], tol=1e-8, max_iter=500)
    assert torch.equal(z[[0, 2]], z_alone)     # bit-identical to solving them alone


@pytest.mark.parametrize("lam", [0.0, 1e-4])
@pytest.mark.parametrize("m", [1, 2, 5])
@pytest.mark.parametrize("f", [
    lambda z: torch.ones_like(z),             # rank one, then zero residuals
    lambda z: z + 1.0,                        # identical residuals: G G^T singular
    lambda z: torch.zeros_like(z),
    lambda z: z.round(),                      # duplicate iterates
    lambda z: 1e30 * z,                       # overflow stays per sample
])
def test_singular_history_is_finite(f, m, lam):
    z, info = fast.anderson(f, torch.randn(3, 7), m=m, tol=1e-6, max_iter=20, lam=lam)
    assert torch.isfinite(z).all() and not torch.isnan(info.residual).any()


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-11),
                                        (torch.complex128, 1e-11), (torch.bfloat16, 1e-2)])
def test_any_shape_and_dtype(dtype, tol):
    # [B, C, H, W] with a non-contiguous start; z* = 2
    z0 = torch.zeros(5, 3, 2, 4, dtype=dtype).transpose(1, 3)
    z, info = fast.anderson(lambda z: 0.5 * z + 1, z0, tol=tol, max_iter=100, m=4)
    assert z.dtype == dtype and z.shape == z0.shape and info.converged.all()
    assert info.iterations.shape == (5,) and info.residual.dtype == torch.float64
    torch.testing.assert_close(z, torch.full_like(z, 2.0), rtol=10 * tol, atol=10 * tol)


def test_bad_arguments():
    f, z0 = (lambda z: z), torch.zeros(2, 3)
    with pytest.raises(TypeError, match="foo"):
        fast.anderson(f, z0, foo=1)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="^check_every must"):
            fast.anderson(f, z0, check_every=bad)
        with pytest.raises(ValueError, match="^check_every must"):
            fast.DEQ(lambda z, v: z, solver_kwargs={"check_every": bad})
    with pytest.raises(ValueError, match="^m must"):
        fast.anderson(f, z0, m=0)
    with pytest.raises(TypeError, match="'k'"):
        fast.DEQ(lambda z, v: z, backward_kwargs={"k": 2})
    with pytest.raises(TypeError, match="^z0 must be a torch.Tensor"):
        fast.DEQ(lambda z, v: z)(torch.zeros(2, 3), z0=[0.0])
    with pytest.raises(ValueError, match="implementation"):
        bytes_per_iteration(10, implementation="numpy")


def test_bytes_model():
    for m in (3, 5, 8):
        textbook = bytes_per_iteration(1000, m, implementation="reference")
        assert bytes_per_iteration(1000, m) <= 0.3 * textbook
        assert bytes_per_iteration(1000, m, masked=True) <= 0.4 * textbook
    assert bytes_per_iteration(1000, 5, beta=0.5) > bytes_per_iteration(1000, 5)



class ConvF(nn.Module):
    """f(z, v) = tanh(conv2(gelu(conv1(z))) + v), a small nonlinear contraction."""

    def __init__(self, scale=0.3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1).double()
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1).double()
        with torch.no_grad():
            self.conv2.weight.mul_(scale)

    def forward(self, z, v):
        return torch.tanh(self.conv2(nn.functional.gelu(self.conv1(z))) + v)


class DeepF(nn.Module):
    """f(z, v) = 0.1 convs(z) + v with ``depth`` stacked 8-channel convolutions."""

    def __init__(self, depth):
        super().__init__()
        chans = [1] + [8] * (depth - 1) + [1]
        self.convs = nn.Sequential(*[nn.Conv2d(a, b, 3, padding=1)
                                     for a, b in zip(chans, chans[1:])]).double()

    def forward(self, z, v):
        return 0.1 * self.convs(z) + v


TIGHT = {"tol": 1e-13, "max_iter": 400}


def test_ift_matches_backprop_through_long_unrolled_solve():
    torch.manual_seed(0)
    f = ConvF()
    v = torch.randn(3, 1, 7, 6, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 1, 7, 6, dtype=torch.float64)
    layer = fast.DEQ(f, solver_kwargs=TIGHT, backward_kwargs=TIGHT)
    (layer(v) * c).sum().backward()
    grads = [v.grad.clone()] + [p.grad.clone() for p in f.parameters()]
    assert layer.last_info.converged.all() and layer.last_backward_info.converged.all()
    z = torch.zeros_like(v)
    for _ in range(300):                                   # plain autograd, every step kept
        z = f(z, v)
    expected = torch.autograd.grad((z * c).sum(), [v, *f.parameters()])
    for got, want in zip(grads, expected):
        assert rel_err(got, want) < 1e-6


def test_ift_gradcheck_small_conv():
    torch.manual_seed(0)
    f = ConvF(scale=0.5)
    tight = {"tol": 1e-14, "max_iter": 200}
    layer = fast.DEQ(f, solver_kwargs=tight, backward_kwargs=tight)
    v = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    # gradcheck perturbs its inputs in place, and the parameters are f's own tensors
    assert torch.autograd.gradcheck(lambda v, w1, b2: layer(v), (v, f.conv1.weight, f.conv2.bias),
                                    eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("backward, kwargs", [("ift", None), ("jfb", None),
                                              ("phantom", {"k": 4, "lam": 0.7})])
def test_backward_modes_match_reference_and_save_only_z_and_v(backward, kwargs):
    torch.manual_seed(0)
    f = ConvF()
    solve = {"tol": 1e-12, "max_iter": 200}
    v = torch.randn(2, 1, 6, 5, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 1, 6, 5, dtype=torch.float64)
    grads, outs = {}, {}
    for name, cls in (("fast", fast.DEQ), ("ref", reference.DEQ)):
        layer = cls(f, backward=backward, solver_kwargs=solve,
                    backward_kwargs=kwargs if backward != "ift" else solve)
        f.zero_grad()
        v.grad = None
        with SavedTensorBytes() as saved:
            out = layer(v)
        (out * c).sum().backward()
        outs[name] = out.detach()
        grads[name] = [v.grad.clone()] + [p.grad.clone() for p in f.parameters()]
        if name == "fast":
            assert saved.bytes == 2 * v.numel() * v.element_size() and saved.count == 2
    torch.testing.assert_close(outs["fast"], outs["ref"], rtol=1e-10, atol=1e-11)
    for got, want in zip(grads["fast"], grads["ref"]):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_saved_bytes_independent_of_iterations_and_depth():
    torch.manual_seed(0)
    v = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    sizes = []
    for depth in (1, 4):
        f = DeepF(depth)
        for max_iter in (2, 50):
            layer = fast.DEQ(f, solver_kwargs={"tol": 1e-30, "max_iter": max_iter})
            with SavedTensorBytes() as saved:
                out = layer(v)
            out.sum().backward()
            assert (layer.last_info.iterations == max_iter).all()
            sizes.append(saved.bytes)
    assert set(sizes) == {2 * v.numel() * 8}


def test_backward_info_and_separate_backward_limits():
    torch.manual_seed(0)
    layer = fast.DEQ(ConvF(), solver_kwargs={"tol": 1e-10, "max_iter": 100},
                     backward_kwargs={"tol": 1e-30, "max_iter": 3})
    v = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    layer(v).sum().backward()
    assert layer.last_info.converged.all()
    info = layer.last_backward_info
    assert isinstance(info, fast.SolverInfo) and (info.iterations == 3).all()
    assert not info.converged.any() and torch.isfinite(info.residual).all()


def test_double_backward_and_inplace_parameter_update_raise():
    layer = fast.DEQ(ConvF())
    v = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(layer(v).sum(), v, create_graph=True)
    out = layer(v)
    with torch.no_grad():
        layer.f.conv1.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()


def test_graph_freed_without_gc_and_reusable_twice():
    outputs = []

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

        def forward(self, z, v):
            out = self.a * z + v
            if out.requires_grad:
                outputs.append(weakref.ref(out))
            return out

    layer = fast.DEQ(Recording(), solver_kwargs={"tol": 1e-12, "max_iter": 100})
    v = torch.randn(2, D, dtype=torch.float64, requires_grad=True)
    gc.disable()
    try:
        z = layer(v)
        loss = z.sum()
        loss.backward(retain_graph=True)
        first = v.grad.clone()
        loss.backward()
        torch.testing.assert_close(v.grad, 2 * first)
        torch.testing.assert_close(first, torch.full_like(v, 2.0))     # 1 / (1 - 0.5)
        del z, loss
        assert outputs and all(ref() is None for ref in outputs)
    finally:
        gc.enable()


def test_no_grad_and_z0():
    layer = fast.DEQ(LinearF(0.5 * torch.eye(3)), solver_kwargs={"tol": 1e-10, "max_iter": 100})
    v = torch.ones(2, 3)
    with torch.no_grad():
        z = layer(v)
        assert z.grad_fn is None
        torch.testing.assert_close(z, torch.full_like(v, 2.0))
        layer(v, z0=torch.full_like(v, 2.0))
    assert layer.last_info.iterations.tolist() == [1, 1]


# ---------------------------------------------------------------- the solver runs the ops


def test_anderson_runs_the_history_and_mixing_ops(monkeypatch):
    """The solver's history update and mixing are the ops' implementations chosen once per
    solve (ops.anderson.implementations, as ops.anderson_step / anderson_mix choose per
    call): on CPU the PyTorch twins, one update per iteration and one mix per iteration
    but the last (on CUDA the fused Triton kernels: tests/test_triton_kernels.py runs
    this solver through them under the interpreter)."""
    from luser_fast.ops import anderson as ops
    assert ops.implementations("cpu") == (ops.anderson_step_ref, ops.anderson_mix_ref)
    assert ops.implementations("cpu", "reference") == (ops.anderson_step_ref,
                                                      ops.anderson_mix_ref)
    calls = []
    for name in ("anderson_step_ref", "anderson_mix_ref"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _real=real, _name=name, **kw:
                            (calls.append(_name), _real(*a, **kw))[1])
    W, b = _problems([0.3, 0.6, 0.9])
    z, info = fast.anderson(linear_map(W, b), torch.zeros_like(b), tol=1e-10, max_iter=200,
                            backend="reference")
    its = int(info.iterations.max())
    assert calls.count("anderson_step_ref") == its
    assert calls.count("anderson_mix_ref") == its - 1
    z_again, _ = fast.anderson(linear_map(W, b), torch.zeros_like(b), tol=1e-10, max_iter=200)
    assert torch.equal(z, z_again)


def test_anderson_backend_request_is_checked():
    """backend= is a request: one that cannot serve on this device raises naming the op."""
    from luser_fast.ops import triton_common
    W, b = _problems([0.5])
    if "cpu" in triton_common.devices():
        pytest.skip("Triton serves CPU tensors in this process (interpreter)")
    with pytest.raises(RuntimeError, match="anderson_step"):
        fast.anderson(linear_map(W, b), torch.zeros_like(b), backend="triton")
    with pytest.raises(ValueError, match="backend"):
        fast.anderson(linear_map(W, b), torch.zeros_like(b), backend="gpu")


def test_cpu_twins_make_no_masked_copies_while_every_sample_is_live(monkeypatch):
    """The CPU path of the history update writes f and g straight into their slots (the
    solver gives the twin every sample as active: frozen samples' slots are never read
    again) and the mix is the iterate itself while every sample is live: no torch.where
    over the data, no extra copies (no slowdown against the former inline code); once a
    sample is frozen, the mix takes its best by torch.where (as the former code did)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from luser_fast.ops import anderson as ops

    big = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = str(func)
            if ("where" in name or "masked" in name) and isinstance(out, torch.Tensor) \
                    and out.numel() >= D:
                big.append(name)
            return out

    for name in ("anderson_step_ref", "anderson_mix_ref"):
        real = getattr(ops, name)

        def counted(*a, _real=real, **kw):
            with Count():
                return _real(*a, **kw)
        monkeypatch.setattr(ops, name, counted)
    W, b = _problems([0.5, 0.5])                 # equal rates: both finish together
    b[1] = b[0]
    W[1] = W[0]
    fast.anderson(linear_map(W, b), torch.zeros_like(b), tol=1e-10, max_iter=100)
    assert big == []
    W, b = _problems([0.2, 0.9])                 # sample 0 freezes first
    fast.anderson(linear_map(W, b), torch.zeros_like(b), tol=1e-10, max_iter=100)
    assert big and all("where" in n or "masked" in n for n in big)


def test_mixing_weights_retry_only_for_needed_samples():
    """With the host looking (sync), the retry solve is skipped when only samples that
    need no weights (frozen: zeroed Gram rows) failed; the needed weights are unchanged."""
    g = torch.randn(3, 4, 20, dtype=torch.float64)
    gram = g @ g.mT
    gram[1] = 0                                   # a frozen sample's zeroed rows
    needed = torch.tensor([True, False, True])
    a_all = _mixing_weights(gram, 0.0, 3, sync=True)
    a_needed = _mixing_weights(gram, 0.0, 3, sync=True, needed=needed)
    torch.testing.assert_close(a_needed[needed], a_all[needed], rtol=0, atol=0)
    assert torch.isfinite(a_all).all()
