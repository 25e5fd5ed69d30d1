"""Spectral radius of J_f at the equilibrium: closed forms on linear maps, and LUSER's
per-step diagnostics."""
import pytest
import torch

from luser_fast import LUSER, Blur
from luser_fast.deq import jacobian_spectral_radius


def test_linear_map_radius_matches_eigenvalues():
    g = torch.Generator().manual_seed(0)
    d = 12
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=g))
    rates = [0.3, 0.9]
    W = torch.stack([q @ torch.diag(torch.linspace(-r * 0.5, r, d, dtype=torch.float64)) @ q.T
                     for r in rates])
    b = torch.randn(2, d, dtype=torch.float64, generator=g)
    rho = jacobian_spectral_radius(lambda z: (W @ z[..., None])[..., 0] + b,
                                   torch.zeros(2, d, dtype=torch.float64), iters=200)
    torch.testing.assert_close(rho, torch.tensor(rates, dtype=torch.float64), rtol=1e-6, atol=0)


def test_map_not_depending_on_z_has_radius_zero():
    z = torch.randn(3, 4)
    assert torch.equal(jacobian_spectral_radius(lambda z: torch.ones_like(z) * 2.0, z),
                       torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("iters", [0, 1.5, True])
def test_bad_iters(iters):
    with pytest.raises(ValueError, match="iters"):
        jacobian_spectral_radius(lambda z: z, torch.zeros(1, 2), iters=iters)


def test_luser_diagnostics_shapes_and_growth_with_output_scale():
    op = Blur(sigma=1.0, kernel_size=5)
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = op(x)
    radii = []
    for scale in (1.0, 30.0):
        torch.manual_seed(0)
        model = LUSER(op, iterations=2, channels=8, depth=2)
        with torch.no_grad():
            model.regularizers[0].conv_out.weight.mul_(scale)
        d = model.equilibrium_diagnostics(y, iters=10)
        assert d["iterations"].shape == (2, 3) and d["spectral_radius"].shape == (2, 3)
        assert torch.isfinite(d["spectral_radius"]).all()
        radii.append(d["spectral_radius"].mean().item())
    # f's z-dependence goes through conv_out, so J_f scales with it
    assert radii[1] > 10 * radii[0] > 0
