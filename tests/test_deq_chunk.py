"""Chunked equilibrium solves (``DEQ(chunk=n)``, ``LUSER(chunk=n)``): the same values and
gradients as the batched solve (float64), per-sample solver info in batch order, and a
training-step peak that drops with the chunk by a factor growing with the batch."""
import pytest
import torch

from luser_fast import LUSER, Blur, reference
from luser_fast import deq as fast
from luser_fast.models import ShallowEquilibrium
from luser_fast.profile import training_memory


pytestmark = pytest.mark.usefixtures("one_thread")


def _map(depth=3):
    torch.manual_seed(0)
    f = ShallowEquilibrium(1, 8, depth, groups=2).double()
    with torch.no_grad():
        # a map that really depends on z (dozens of iterations), so a chunking error in
        # the adjoint solve could not hide behind J_f ~ 0
        f.conv_out.weight.mul_(30)
    return f


def _run(cls, f, v, backward, chunk, z0=None):
    tight = {"tol": 1e-11, "max_iter": 200}
    layer = cls(f, backward=backward, solver_kwargs=tight,
                backward_kwargs=tight if backward == "ift" else None, chunk=chunk)
    f.zero_grad(set_to_none=True)
    v = v.detach().clone().requires_grad_()
    z = layer(v, z0=z0)
    weights = torch.linspace(-1, 2, z.numel(), dtype=z.dtype).reshape(z.shape)
    (z.sin() * weights).sum().backward()
    return layer, z.detach(), v.grad, [p.grad.clone() for p in f.parameters()]


@pytest.mark.parametrize("cls", [fast.DEQ, reference.DEQ], ids=["fast", "reference"])
@pytest.mark.parametrize("backward", ["ift", "jfb", "phantom"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_chunked_equals_batched(cls, backward, chunk):
    f = _map()
    v = torch.randn(5, 1, 9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layer0, z0, gv0, gp0 = _run(cls, f, v, backward, None)
    layer, z, gv, gp = _run(cls, f, v, backward, chunk)
    assert int(layer0.last_info.iterations.max()) > 8  # the map iterates
    torch.testing.assert_close(z, z0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gv, gv0, rtol=1e-10, atol=1e-12)
    for a, b in zip(gp, gp0):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # per-sample solver info, in batch order, whatever the chunking
    for name in ("iterations", "converged"):
        assert torch.equal(getattr(layer.last_info, name), getattr(layer0.last_info, name))
    assert layer.last_info.iterations.shape == (5,)
    if backward == "ift":
        assert layer.last_backward_info.iterations.shape == (5,)
        assert torch.equal(layer.last_backward_info.converged, layer0.last_backward_info.converged)


def test_chunked_warm_start_and_no_grad():
    f = _map()
    g = torch.Generator().manual_seed(2)
    v = torch.randn(4, 1, 6, 6, dtype=torch.float64, generator=g)
    z_start = torch.randn(4, 1, 6, 6, dtype=torch.float64, generator=g)
    _, a, _, _ = _run(fast.DEQ, f, v, "ift", None, z0=z_start)
    _, b, _, _ = _run(fast.DEQ, f, v, "ift", 3, z0=z_start)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        out = fast.DEQ(f, chunk=1)(v)
    assert out.shape == v.shape and not out.requires_grad


@pytest.mark.parametrize("chunk", [0, -1, 1.5, True, "2"])
def test_bad_chunk_names_the_argument(chunk):
    for cls in (fast.DEQ, reference.DEQ):
        with pytest.raises(ValueError, match="chunk"):
            cls(_map(), chunk=chunk)
    with pytest.raises(ValueError, match="chunk"):
        LUSER(Blur(sigma=1.0, kernel_size=5), channels=8, chunk=chunk)


def test_luser_chunk_same_output_and_gradients():
    op = Blur(sigma=1.0, kernel_size=5)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, 12, 12, dtype=torch.float64, generator=g)
    y = op(x)
    results = []
    for cls, chunk in ((LUSER, None), (LUSER, 1), (reference.LUSER, 3)):
        torch.manual_seed(0)
        model = cls(op, iterations=2, channels=8, depth=3, chunk=chunk,
                    solver_kwargs={"tol": 1e-10, "max_iter": 100}).double()
        out = model(y)
        (out - x).square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    for out, grads in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=1e-10, atol=1e-12)
        for a, b in zip(grads, results[0][1]):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_peak_drops_with_chunk_by_a_factor_growing_with_batch():
    op = Blur(sigma=1.0, kernel_size=5)
    g = torch.Generator().manual_seed(4)
    ratios = {}
    for batch in (2, 8):
        x = torch.rand(batch, 1, 24, 24, generator=g)
        y = op(x)
        peaks = {}
        for chunk in (None, 1):
            torch.manual_seed(0)
            model = LUSER(op, iterations=2, channels=16, depth=4, chunk=chunk)
            peaks[chunk] = training_memory(model, y, x).peak_bytes
        ratios[batch] = peaks[None] / peaks[1]
    assert ratios[2] > 1.3, ratios
    assert ratios[8] > 1.5 * ratios[2], ratios


def test_chunked_backward_for_a_map_that_ignores_v():
    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

        def forward(self, z, v):
            return self.a * z + 1.0

    f = Scale()
    v = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    z = fast.DEQ(f, chunk=1, solver_kwargs={"tol": 1e-12, "max_iter": 100})(v)
    z.sum().backward()
    torch.testing.assert_close(z.detach(), torch.full((3, 2), 2.0, dtype=torch.float64))
    assert torch.equal(v.grad, torch.zeros_like(v))
    # z* = 1 / (1 - a): dz*/da = 1 / (1 - a)^2 = 4 per entry
    torch.testing.assert_close(f.a.grad, torch.tensor(24.0, dtype=torch.float64))
