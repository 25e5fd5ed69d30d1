"""Reference equilibrium core: solvers against closed forms, per-sample bookkeeping,
robustness, DEQ gradients against the analytic implicit gradient and gradcheck."""
import gc
import math
import weakref

import pytest
import torch
from helpers import (LinearF, contractions, linear_deq_solution, exact_fixed_point,
                     linear_map, poisoned_map, rel_err)
from torch import nn

import luser_fast
from luser_fast.reference import DEQ, SolverInfo, anderson, fixed_point

D = 60
SOLVERS = [anderson, fixed_point]


def _problems(rates, seed=0, dtype=torch.float64):
    return contractions(D, rates, seed, dtype)


@pytest.fixture(autouse=True)
def _one_thread():
    """These problems are tiny: intra-op threads only add synchronisation (10x slower on a
    busy 2-core machine), so run them on one thread and restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_anderson_matches_linear_solve_and_beats_picard():
    W, b = _problems([0.95] * 4)
    f = linear_map(W, b)
    z0 = torch.zeros_like(b)
    # tol 1e-10 is reachable only with the scaled Tikhonov weight (an absolute 1e-4 stalls)
    z, info = anderson(f, z0, tol=1e-10, max_iter=500)
    assert info.converged.all()
    assert (info.residual <= 1e-10).all()
    torch.testing.assert_close(info.residual, info.rel_residual, rtol=0, atol=0)
    assert rel_err(z, exact_fixed_point(W, b)) < 1e-8                         # 1.6e-9 measured
    _, picard = fixed_point(f, z0, tol=1e-10, max_iter=2000)
    assert picard.converged.all()
    assert info.iterations.max() * 2 < picard.iterations.min()  # 164 vs 367 at m=5, measured


@pytest.mark.parametrize("solver", SOLVERS)
def test_per_sample_iterations_and_freezing(solver):
    W, b = _problems([0.1, 0.4, 0.7, 0.9])
    calls = []

    def f(z):
        calls.append(z.clone())
        return linear_map(W, b)(z)

    z, info = solver(f, torch.zeros_like(b), tol=1e-8, max_iter=500)
    its = info.iterations.tolist()
    assert info.converged.all() and (info.residual <= 1e-8).all()
    assert its == sorted(its) and len(set(its)) == 4, its
    assert len(calls) == its[-1]
    # sample i froze at its own evaluation its[i]: the returned z is that iterate, and every
    # later input of f for that sample is bit-identical to it
    for i, k in enumerate(its):
        assert all(torch.equal(c[i], z[i]) for c in calls[k - 1:])
        assert not torch.equal(calls[k - 2][i], z[i])


@pytest.mark.parametrize("solver", SOLVERS)
def test_nan_sample_does_not_poison_others(solver):
    W, b = _problems([0.9] * 4)
    f = poisoned_map(W, b)

    z0 = torch.zeros_like(b)
    z, info = solver(f, z0, tol=1e-8, max_iter=500)
    assert torch.isfinite(z).all()
    assert info.converged.tolist() == [True, False, True, False]
    assert info.iterations[1] == 2 and info.iterations[3] == 1
    assert rel_err(z[[0, 2]], exact_fixed_point(W, b)[[0, 2]]) < 1e-6
    torch.testing.assert_close(z[1], z0[1], rtol=0, atol=0)    # its best (only) finite iterate
    assert torch.isfinite(info.residual[1]) and info.residual[3] == math.inf


@pytest.mark.parametrize("lam", [0.0, 1e-4])
@pytest.mark.parametrize("m", [1, 5])
@pytest.mark.parametrize("f", [
    lambda z: torch.ones_like(z),             # G rank one from the start, then zero
    lambda z: z + 1.0,                        # every residual identical: G G^T singular
    lambda z: torch.zeros_like(z),
    lambda z: z.round(),                      # duplicate iterates once rounding settles
    lambda z: 1e30 * z,                       # blows up: overflow must stay per sample
])
def test_singular_history_is_finite(f, m, lam):
    z, info = anderson(f, torch.randn(3, 7), m=m, tol=1e-6, max_iter=20, lam=lam)
    assert torch.isfinite(z).all() and not torch.isnan(info.residual).any()


def test_solver_info_and_any_shape():
    z, info = anderson(lambda z: 0.5 * z + 1, torch.zeros(2, 3, 4, 5), tol=1e-9, max_iter=100)
    assert isinstance(info, SolverInfo) and z.shape == (2, 3, 4, 5)
    torch.testing.assert_close(z, torch.full_like(z, 2.0))
    assert info.iterations.dtype == torch.int64 and info.iterations.shape == (2,)
    assert info.converged.dtype == torch.bool
    for t in (info.residual, info.abs_residual, info.rel_residual):
        assert t.shape == (2,) and t.dtype == torch.float64
    z, info = anderson(lambda z: 0.5 * z + 1, torch.zeros(2, 3), tol=1e-3, max_iter=100,
                       stop="abs")
    assert (info.abs_residual <= 1e-3).all()
    torch.testing.assert_close(info.residual, info.abs_residual, rtol=0, atol=0)
    # max_iter=1: one evaluation scores z0, which is returned
    z0 = torch.randn(2, 3)
    z, info = fixed_point(lambda z: 0.5 * z + 1, z0, max_iter=1)
    assert torch.equal(z, z0) and info.iterations.tolist() == [1, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex128])
def test_anderson_dtypes(dtype):
    n, tol = 20, (1e-5 if dtype == torch.float32 else 1e-11)
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(2, n, n, dtype=dtype, generator=g))
    W = 0.8 * q                                      # normal, spectral radius 0.8
    b = torch.randn(2, n, dtype=dtype, generator=g)
    z, info = anderson(lambda z: (W @ z[..., None])[..., 0] + b, torch.zeros_like(b), tol=tol,
                       max_iter=300)
    exact = torch.linalg.solve(torch.eye(n, dtype=dtype) - W, b)
    assert z.dtype == dtype and info.converged.all()
    assert rel_err(z, exact) < 10 * tol                 # error <= residual / (1 - 0.8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_anderson_half_inputs(dtype):
    z, info = anderson(lambda z: 0.5 * z + 1, torch.zeros(2, 3, 4, dtype=dtype), tol=1e-2)
    assert z.dtype == dtype and info.converged.all()
    torch.testing.assert_close(z, torch.full_like(z, 2.0))


def test_bad_arguments():
    f = lambda z: z  # noqa: E731
    z0 = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="foo"):
        anderson(f, z0, foo=1)
    with pytest.raises(TypeError, match="m"):
        fixed_point(f, z0, m=3)
    with pytest.raises(TypeError, match="^f must be callable"):
        anderson(None, z0)
    with pytest.raises(TypeError, match="^z0"):
        anderson(f, [0.0, 1.0])
    for kw in [{"m": 0}, {"m": 2.5}, {"m": True}, {"beta": 0.0}, {"beta": 1.5},
               {"lam": -1.0}, {"lam": math.inf}, {"tol": 0.0}, {"tol": math.nan},
               {"max_iter": 0}, {"max_iter": 10.0}, {"stop": "x"}]:
        (name,) = kw
        with pytest.raises(ValueError, match=f"^{name} must"):
            anderson(f, z0, **kw)
    with pytest.raises(ValueError, match="^z0 has shape"):
        anderson(lambda z: z[:1], z0)
    with pytest.raises(ValueError, match="^z0"):
        fixed_point(f, torch.zeros(0, 3))
    with pytest.raises(ValueError, match="^z0"):
        fixed_point(f, torch.zeros(()))
    with pytest.raises(ValueError, match="^z0"):
        fixed_point(f, torch.zeros(2, 3, dtype=torch.int64))

    g = lambda z, v: z  # noqa: E731
    with pytest.raises(TypeError, match="'foo'"):
        DEQ(g, solver_kwargs={"foo": 1})
    with pytest.raises(TypeError, match="'m'"):
        DEQ(g, solver="fixed_point", solver_kwargs={"m": 3})
    with pytest.raises(TypeError, match="'k'"):
        DEQ(g, backward="ift", backward_kwargs={"k": 3})
    with pytest.raises(TypeError, match="'tol'"):
        DEQ(g, backward="jfb", backward_kwargs={"tol": 1e-3})
    with pytest.raises(TypeError, match="solver_kwargs"):
        DEQ(g, solver_kwargs=[("tol", 1e-3)])
    with pytest.raises(TypeError, match="^f must be callable"):
        DEQ(3)
    with pytest.raises(ValueError, match="^solver must"):
        DEQ(g, solver="broyden")
    with pytest.raises(ValueError, match="^backward must"):
        DEQ(g, backward="exact")
    with pytest.raises(ValueError, match="^k must"):
        DEQ(g, backward="phantom", backward_kwargs={"k": 0})
    with pytest.raises(ValueError, match="^lam"):
        DEQ(g, backward="phantom", backward_kwargs={"lam": 1.5})
    with pytest.raises(ValueError, match="^tol must"):
        DEQ(g, solver_kwargs={"tol": -1})
    with pytest.raises(ValueError, match="^max_iter must"):
        DEQ(g, backward_kwargs={"max_iter": 0})
    with pytest.raises(ValueError, match="^v must"):
        DEQ(g)(torch.zeros(0, 3))



TIGHT = {"tol": 1e-12, "max_iter": 500}


@pytest.mark.parametrize("solver", ["anderson", "fixed_point"])
@pytest.mark.parametrize("v_requires_grad", [True, False])
@pytest.mark.parametrize("binding", ["reference", "fast"])
def test_ift_matches_analytic_implicit_gradient(solver, v_requires_grad, binding):
    """Both bindings of DEQ (the reference's graph-keeping backward and the fast one that
    rebuilds f, with deferred host checks) against the closed-form implicit gradient."""
    W = _problems([0.9], seed=1)[0][0]
    f = LinearF(W)
    if binding == "reference":
        layer = DEQ(f, solver=solver, solver_kwargs=TIGHT, backward_kwargs=TIGHT)
    else:
        layer = luser_fast.DEQ(f, solver=solver, solver_kwargs=TIGHT,
                               backward_kwargs={**TIGHT, "check_every": 5})
    v = torch.randn(3, D, dtype=torch.float64, requires_grad=v_requires_grad)
    c = torch.randn(3, D, dtype=torch.float64)
    z = layer(v)
    (z * c).sum().backward()
    z_exact, u = linear_deq_solution(W, v, c)
    torch.testing.assert_close(z.detach(), z_exact, rtol=1e-9, atol=1e-9)
    if v_requires_grad:
        torch.testing.assert_close(v.grad, u, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(f.W.grad, u.T @ z_exact, rtol=1e-6, atol=1e-9)
    assert layer.last_info.converged.all() and layer.last_backward_info.converged.all()


def test_ift_unrolled_steps_share_f_in_one_graph():
    W = _problems([0.8], seed=2)[0][0]
    f = LinearF(W)
    layer = DEQ(f, solver_kwargs=TIGHT)
    x = torch.randn(2, D, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, D, dtype=torch.float64)

    def unrolled(step):
        z = step(x)
        for _ in range(2):
            z = step(0.5 * z + x)
        return (z * c).sum()

    loss = unrolled(layer)
    loss.backward(retain_graph=True)
    grads = [x.grad.clone(), f.W.grad.clone()]
    loss.backward()                                      # a second pass through the hooks
    torch.testing.assert_close(x.grad, 2 * grads[0])
    torch.testing.assert_close(f.W.grad, 2 * grads[1])
    # the same three steps with the closed-form equilibrium, differentiated by autograd
    Wx = W.clone().requires_grad_()
    A = torch.eye(D, dtype=torch.float64) - Wx
    expected = torch.autograd.grad(unrolled(lambda v: torch.linalg.solve(A, v.T).T), (x, Wx))
    torch.testing.assert_close(grads[0], expected[0], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grads[1], expected[1], rtol=1e-6, atol=1e-9)


def test_ift_frees_its_graph_without_gc():
    outputs = []

    def f(z, v):
        out = 0.5 * z + v
        if out.requires_grad:
            outputs.append(weakref.ref(out))
        return out

    layer = DEQ(f)
    v = torch.randn(2, D, dtype=torch.float64, requires_grad=True)
    gc.disable()
    try:
        for backward in (True, False):
            z = layer(v)
            if backward:
                z.sum().backward()
            del z
            assert outputs and all(ref() is None for ref in outputs), \
                "the adjoint closure must not form a reference cycle with f's graph"
    finally:
        gc.enable()


def test_ift_output_can_be_modified_in_place():
    layer = DEQ(LinearF(0.5 * torch.eye(D, dtype=torch.float64)), solver_kwargs=TIGHT)
    v = torch.randn(2, D, dtype=torch.float64, requires_grad=True)
    z = layer(v)
    z.mul_(3.0)
    z.sum().backward()
    torch.testing.assert_close(v.grad, torch.full_like(v, 6.0))     # 3 * 1 / (1 - 0.5)


class ConvF(nn.Module):
    """f(z, v) = tanh(0.3 conv(z) + v)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=True).double()

    def forward(self, z, v):
        return torch.tanh(0.3 * self.conv(z) + v)


def test_ift_gradcheck_small_conv():
    torch.manual_seed(0)
    tight = {"tol": 1e-14, "max_iter": 200}
    v = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    w = (2 * w / w.abs().sum()).requires_grad_()     # Lipschitz of f in z <= 0.3 * 2 = 0.6

    def fn(v, w):
        f = lambda z, v: torch.tanh(0.3 * nn.functional.conv2d(z, w, padding=1) + v)  # noqa: E731
        return DEQ(f, solver_kwargs=tight, backward_kwargs=tight)(v)

    # Both solves stop at a 1e-14 relative residual, so the implicit gradient is exact to
    # ~1e-13 and the central differences (eps 1e-6: O(eps^2) truncation, O(1e-16/eps)
    # rounding) limit the comparison; tolerances tighter than gradcheck's defaults hold.
    assert torch.autograd.gradcheck(fn, (v, w), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_jfb_and_phantom_gradients():
    torch.manual_seed(0)
    f = ConvF()
    v = torch.randn(2, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    solve = {"tol": 1e-12, "max_iter": 200}
    grads = {}
    for name, backward, kwargs in [("ift", "ift", None), ("jfb", "jfb", None),
                                   ("phantom5", "phantom", None),
                                   ("phantom60", "phantom", {"k": 60, "lam": 1.0})]:
        layer = DEQ(f, backward=backward, solver_kwargs=solve, backward_kwargs=kwargs)
        v.grad = None
        z = layer(v)
        (z * c).sum().backward()
        grads[name] = v.grad.clone()
        assert torch.isfinite(grads[name]).all()
        assert all(torch.isfinite(p.grad).all() for p in f.parameters())
    # jfb: u = g, so dL/dv = (df/dv)^T c = (1 - f^2) c at z*
    with torch.no_grad():
        torch.testing.assert_close(grads["jfb"], (1 - z.square()) * c)
    # phantom: k damped steps approach the implicit gradient as k grows
    err = {k: rel_err(grads[k], grads["ift"]) for k in ("jfb", "phantom5", "phantom60")}
    assert err["phantom60"] < 1e-6 < err["phantom5"] < err["jfb"], err


def test_ift_rejects_double_backward():
    layer = DEQ(ConvF())
    v = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(layer(v).sum(), v, create_graph=True)


class HalfStep(nn.Module):
    """f(z, v) = z / 2 + v (z* = 2 v), starting from init_state = 5."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def init_state(self, v):
        return torch.full_like(v, 5.0)

    def forward(self, z, v):
        return self.scale * z + v


def test_no_grad_returns_equilibrium_and_init_state():
    layer = DEQ(HalfStep(), solver_kwargs={"tol": 1e-10, "max_iter": 100})
    v = torch.ones(2, 3)
    with torch.no_grad():
        z = layer(v)
    expected, _ = anderson(lambda z: 0.5 * z + v, torch.full_like(v, 5.0), tol=1e-10,
                           max_iter=100)
    assert z.grad_fn is None and torch.equal(z, expected)
    torch.testing.assert_close(z, torch.full_like(v, 2.0))
    assert layer.last_info.converged.all()
    # starting at the equilibrium converges at the first evaluation
    with torch.no_grad():
        layer(v, z0=torch.full_like(v, 2.0))
    assert layer.last_info.iterations.tolist() == [1, 1]


def test_eval_mode_keeps_gradients_when_autograd_records():
    layer = DEQ(HalfStep(), solver_kwargs={"tol": 1e-12, "max_iter": 100}).eval()
    v = torch.ones(2, 3, requires_grad=True)
    layer(v).sum().backward()
    torch.testing.assert_close(v.grad, torch.full_like(v, 2.0))     # dz*/dv = 1 / (1 - 0.5)
    assert layer.last_backward_info is not None
