import pytest
import torch

import luser_fast
from luser_fast import reference
from luser_fast.data import random_ellipses
from luser_fast.physics import MRI, Blur, LinearFunction, Radon
from luser_fast.profile import mse


def test_shallow_equilibrium_shapes_and_keys():
    f = reference.ShallowEquilibrium(in_channels=2, channels=8, depth=3, groups=4)
    z = torch.randn(3, 2, 9, 11)
    assert f(z, z).shape == z.shape
    keys = set(f.state_dict())
    assert {"conv_in.weight", "inject.weight", "hidden.0.weight", "conv_out.weight",
            "norms.0.weight", "norms.1.weight"} <= keys
    assert "inject.bias" not in keys


@pytest.mark.parametrize("kwargs, match", [
    ({"depth": 1}, "depth"), ({"channels": 6, "groups": 4}, "groups"), ({"act": "swish"}, "act"),
    ({"norm": "batch"}, "norm"), ({"kernel_size": 4}, "kernel_size"), ({"in_channels": 0}, "in_channels"),
])
def test_shallow_equilibrium_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        reference.ShallowEquilibrium(**kwargs)


def test_models_bad_args():
    op = Blur(sigma=1.0)
    with pytest.raises(ValueError, match="iterations"):
        reference.LUSER(op, iterations=0)
    with pytest.raises(TypeError, match="operator"):
        reference.LU(lambda x: x)
    with pytest.raises(TypeError):
        reference.LUSER(op, channels=8, unknown=1)
    with pytest.raises(ValueError, match="solver"):
        reference.LUSER(op, channels=8, solver="newton")


def test_public_models_are_drop_in():
    op = Radon(16, angles=10)
    for name in ("LUSER", "LU", "ShallowEquilibrium"):
        assert getattr(luser_fast, name).__init__.__code__.co_varnames[:8] == \
            getattr(reference, name).__init__.__code__.co_varnames[:8]
    torch.manual_seed(0)
    ref = reference.LUSER(op, channels=8, solver_kwargs={"tol": 1e-6, "max_iter": 40})
    fast = luser_fast.LUSER(op, channels=8, solver_kwargs={"tol": 1e-6, "max_iter": 40})
    state = ref.state_dict()
    assert not any(k.startswith("operator.") for k in state), "checkpoints hold learned parameters only"
    assert set(state) == set(fast.state_dict())
    fast.load_state_dict(state)
    y = op(random_ellipses(2, 16, seed=3))
    torch.testing.assert_close(fast(y), ref(y), rtol=1e-5, atol=1e-6)


def test_luser_solver_info_per_step():
    op = Blur(sigma=1.0, image_size=(12, 12))
    model = reference.LUSER(op, iterations=3, channels=8, share_weights=False)
    x = torch.rand(2, 1, 12, 12)
    model(op(x))
    assert len(model.last_solver_info) == 3
    for info in model.last_solver_info:
        assert info.iterations.shape == (2,) and info.converged.dtype == torch.bool
    assert len(model.regularizers) == 3 and model.eta.shape == (3,)


def test_complex_images_enter_as_two_channels():
    torch.manual_seed(0)
    mask = torch.rand(12, 10) < 0.5
    op = MRI(mask)
    x = torch.randn(2, 1, 12, 10, dtype=torch.complex64)
    for cls in (reference.LUSER, reference.LU):
        model = cls(op, iterations=2, in_channels=2, channels=8)
        out = model(op(x))
        assert out.shape == x.shape and out.is_complex()
        mse(out, x).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match="in_channels"):
        reference.LU(op, iterations=1, in_channels=1, channels=8)(op(x))


def test_nonlinear_operator_uses_autograd_vjp():
    blur = Blur(sigma=1.0, image_size=(10, 10))
    op = LinearFunction(lambda x: torch.tanh(blur(x)), linear=False, domain_shape=lambda y: y.shape)
    x = torch.rand(2, 1, 10, 10, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 1, 10, 10, dtype=torch.float64)
    (expected,) = torch.autograd.grad(0.5 * (op(x) - y).square().sum(), x)
    torch.testing.assert_close(op.data_grad(x, y), expected)
    model = reference.LU(op, iterations=2, channels=8, depth=3).double()
    out = model(y, x0=y)
    mse(out, x.detach()).backward()
    assert torch.isfinite(model.eta.grad).all()


def test_linear_function_adjoint_from_autograd():
    w = torch.randn(7, 5, dtype=torch.float64)
    op = LinearFunction(lambda x: x @ w.T, domain_shape=lambda y: y.shape[:-1] + (5,))
    from helpers import adjoint_mismatch
    assert adjoint_mismatch(op, torch.randn(3, 5, dtype=torch.float64),
                            torch.randn(3, 7, dtype=torch.float64)) < 1e-12
    torch.testing.assert_close(op.adjoint(torch.ones(1, 7, dtype=torch.float64)),
                               torch.ones(1, 7, dtype=torch.float64) @ w)
    assert abs(op.norm(iters=200, x=torch.zeros(1, 5, dtype=torch.float64))
               - torch.linalg.matrix_norm(w, 2).item()) < 1e-6
