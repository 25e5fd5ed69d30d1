import math

import pytest
import torch
from torch import nn

from luser_fast.reference import DEQ, SolverInfo, anderson, fixed_point

D = 60


def _contractions(rates, seed=0):
    """Symmetric W_i with eigenvalues in [-rate_i, rate_i] (spectral radius rate_i)."""
    g = torch.Generator().manual_seed(seed)
    Ws = []
    for rate in rates:
        q, _ = torch.linalg.qr(torch.randn(D, D, dtype=torch.float64, generator=g))
        eig = torch.linspace(-rate, rate, D, dtype=torch.float64)
        Ws.append(q @ torch.diag(eig) @ q.T)
    b = torch.randn(len(rates), D, dtype=torch.float64, generator=g)
    return torch.stack(Ws), b


def _linear(W, b):
    return lambda z: (W @ z[..., None])[..., 0] + b


def test_anderson_matches_linear_solve_and_beats_picard():
    W, b = _contractions([0.95] * 4)
    f = _linear(W, b)
    z0 = torch.zeros_like(b)
    z, info = anderson(f, z0, tol=1e-10, max_iter=500)
    exact = torch.linalg.solve(torch.eye(D, dtype=torch.float64) - W, b)
    assert info.converged.all()
    assert (info.residual <= 1e-10).all()
    assert torch.linalg.vector_norm(z - exact) / torch.linalg.vector_norm(exact) < 1e-8
    _, picard = fixed_point(f, z0, tol=1e-10, max_iter=2000)
    assert picard.converged.all()
    assert (info.iterations < picard.iterations).all()
    assert info.iterations.max() * 2 < picard.iterations.min()  # 164 vs 367 at m=5, measured


def test_per_sample_iterations_and_freezing():
    W, b = _contractions([0.1, 0.5, 0.9, 0.99])
    calls = []

    def f(z):
        calls.append(z.clone())
        return _linear(W, b)(z)

    z, info = fixed_point(f, torch.zeros_like(b), tol=1e-8, max_iter=3000)
    its = info.iterations.tolist()
    assert its == sorted(its) and len(set(its)) == 4, its
    # sample 0 froze after its own iterations: every later input of f is bit-identical
    k = its[0]
    assert all(torch.equal(c[0], calls[k - 1][0]) for c in calls[k - 1:])
    torch.testing.assert_close(z[0], calls[k - 1][0], rtol=0, atol=0)
    assert info.converged.all()
    za, ia = anderson(_linear(W, b), torch.zeros_like(b), tol=1e-8, max_iter=3000)
    assert ia.converged.all() and len(set(ia.iterations.tolist())) > 1


def test_nan_sample_does_not_poison_others():
    W, b = _contractions([0.9] * 3)

    def f(z):
        out = _linear(W, b)(z)
        if torch.count_nonzero(z[1]) > 0:      # sample 1 blows up after its first step
            out = out.clone()
            out[1] = float("nan")
        return out

    for solver in (anderson, fixed_point):
        z, info = solver(f, torch.zeros_like(b), tol=1e-8, max_iter=500)
        assert torch.isfinite(z).all()
        assert info.converged.tolist() == [True, False, True]
        exact = torch.linalg.solve(torch.eye(D, dtype=torch.float64) - W[0], b[0])
        assert torch.linalg.vector_norm(z[0] - exact) / torch.linalg.vector_norm(exact) < 1e-6


@pytest.mark.parametrize("f", [
    lambda z: torch.ones_like(z),             # G rank one from the start, then zero
    lambda z: z + 1.0,                        # every residual identical: G G^T singular
    lambda z: torch.zeros_like(z),
])
def test_singular_history_is_finite(f):
    z, info = anderson(f, torch.randn(3, 7), tol=1e-6, max_iter=20, lam=0.0)
    assert torch.isfinite(z).all() and torch.isfinite(info.residual).all()


def test_solver_info_and_any_shape():
    z, info = anderson(lambda z: 0.5 * z + 1, torch.zeros(2, 3, 4, 5), tol=1e-9, max_iter=100)
    assert isinstance(info, SolverInfo) and z.shape == (2, 3, 4, 5)
    torch.testing.assert_close(z, torch.full_like(z, 2.0))
    assert info.iterations.dtype == torch.int64 and info.iterations.shape == (2,)
    z, info = anderson(lambda z: 0.5 * z + 1, torch.zeros(2, 3), tol=1e-3, max_iter=100, stop="abs")
    assert (info.abs_residual <= 1e-3).all()


def test_bad_arguments():
    f = lambda z: z  # noqa: E731
    z0 = torch.zeros(2, 3)
    with pytest.raises(TypeError):
        anderson(f, z0, foo=1)
    for kw, name in [({"m": 0}, "m"), ({"beta": 0.0}, "beta"), ({"lam": -1.0}, "lam"),
                     ({"tol": 0.0}, "tol"), ({"max_iter": 0}, "max_iter"), ({"stop": "x"}, "stop")]:
        with pytest.raises(ValueError, match=name):
            anderson(f, z0, **kw)
    with pytest.raises(ValueError, match="f\\(z\\)"):
        anderson(lambda z: z[:1], z0)
    with pytest.raises(ValueError, match="z0"):
        fixed_point(f, torch.zeros(0, 3))
    with pytest.raises(TypeError, match="foo"):
        DEQ(lambda z, v: z, solver_kwargs={"foo": 1})
    with pytest.raises(TypeError, match="m"):
        DEQ(lambda z, v: z, solver="fixed_point", solver_kwargs={"m": 3})
    with pytest.raises(ValueError, match="solver"):
        DEQ(lambda z, v: z, solver="broyden")
    with pytest.raises(ValueError, match="backward"):
        DEQ(lambda z, v: z, backward="exact")
    with pytest.raises(ValueError, match="k"):
        DEQ(lambda z, v: z, backward="phantom", backward_kwargs={"k": 0})
    with pytest.raises(ValueError, match="tol"):
        DEQ(lambda z, v: z, solver_kwargs={"tol": -1})


class LinearF(nn.Module):
    def __init__(self, W):
        super().__init__()
        self.W = nn.Parameter(W.clone())

    def forward(self, z, v):
        return z @ self.W.T + v


def test_ift_matches_analytic_implicit_gradient():
    W, _ = _contractions([0.9], seed=1)
    W = W[0]
    f = LinearF(W)
    tight = {"tol": 1e-13, "max_iter": 500}
    layer = DEQ(f, solver_kwargs=tight, backward_kwargs=tight)
    v = torch.randn(3, D, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, D, dtype=torch.float64)
    z = layer(v)
    (z * c).sum().backward()
    A = torch.eye(D, dtype=torch.float64) - W
    z_exact = torch.linalg.solve(A, v.detach().T).T
    u = torch.linalg.solve(A.T, c.T).T                   # (I - W)^-T c per sample
    torch.testing.assert_close(z.detach(), z_exact, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(v.grad, u, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(f.W.grad, u.T @ z_exact, rtol=1e-6, atol=1e-9)
    assert layer.last_backward_info.converged.all()


class ConvF(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=True).double()

    def forward(self, z, v):
        return torch.tanh(0.3 * self.conv(z) + v)


def test_ift_gradcheck_small_conv():
    torch.manual_seed(0)
    tight = {"tol": 1e-14, "max_iter": 200}
    v = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    w = (0.3 * torch.randn(1, 1, 3, 3, dtype=torch.float64)).requires_grad_()

    def fn(v, w):
        f = lambda z, v: torch.tanh(nn.functional.conv2d(z, w, padding=1) + v)  # noqa: E731
        return DEQ(f, solver_kwargs=tight, backward_kwargs=tight)(v)

    # the implicit gradient is exact up to the solves' tolerance (1e-14 relative residual),
    # so gradcheck's finite differences are the limiting error
    assert torch.autograd.gradcheck(fn, (v, w), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_jfb_and_phantom_run_and_phantom_approaches_ift():
    torch.manual_seed(0)
    f = ConvF()
    v = torch.randn(2, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    grads = {}
    for name, bk in [("ift", None), ("jfb", None), ("phantom", {"k": 60, "lam": 1.0})]:
        layer = DEQ(f, backward=name, solver_kwargs={"tol": 1e-12, "max_iter": 200},
                    backward_kwargs=bk)
        v.grad = None
        (layer(v) * c).sum().backward()
        grads[name] = v.grad.clone()
        assert torch.isfinite(grads[name]).all()
    torch.testing.assert_close(grads["phantom"], grads["ift"], rtol=1e-6, atol=1e-8)
    assert not torch.allclose(grads["jfb"], grads["ift"])


def test_ift_rejects_double_backward():
    f = ConvF()
    layer = DEQ(f)
    v = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(layer(v).sum(), v, create_graph=True)


def test_no_grad_returns_equilibrium_and_init_state():
    class F(nn.Module):
        def init_state(self, v):
            return v * 0 + 5.0

        def forward(self, z, v):
            return 0.5 * z + v

    layer = DEQ(F(), solver_kwargs={"tol": 1e-10, "max_iter": 100})
    v = torch.ones(2, 3)
    with torch.no_grad():
        z = layer(v)
    torch.testing.assert_close(z, torch.full_like(v, 2.0))
    assert layer.last_info.iterations.max() < 100 and math.isfinite(layer.last_info.residual.max())
