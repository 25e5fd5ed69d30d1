"""LU and LUSER on volumes (``spatial_dims=3``): Conv3d networks, the 3-D shallow map
(reference conv3d, the fused kernel being 2-D), the reference binding, complex volumes as
two channels, validation, and the chunked training peak of LUSER in 3-D."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import excite, outputs_and_gradients

from luser_fast import backends, reference
from luser_fast.core.operator import Operator
from luser_fast.models import LU, LUSER, DeepRegularizer, ShallowEquilibrium
from luser_fast.models.networks import _from_channels, _to_channels
from luser_fast.ops import shallow as S
from luser_fast.physics import ConeBeam
from luser_fast.profile import mse, training_memory

pytestmark = pytest.mark.usefixtures("one_thread")

TIGHT = {"tol": 1e-13, "max_iter": 200}


def _conebeam(n):
    """A small cone-beam geometry (detector distance > 0, non-square detector)."""
    return ConeBeam((n, n, n), 8, (n, n + 4), source_distance=3.0 * n,
                    detector_distance=1.5 * n)


class Blur3D(Operator):
    """A 3-D Gaussian blur (5^3 taps, zero padding): symmetric, so its own adjoint."""

    def __init__(self, size, sigma=1.0):
        super().__init__()
        r = torch.arange(-2, 3, dtype=torch.float64)
        g = torch.exp(-r ** 2 / (2 * sigma ** 2))
        g = g / g.sum()
        self.register_buffer("kernel", (g[:, None, None] * g[None, :, None] * g[None, None, :])
                             [None, None].float())
        self.size = tuple(size)

    def forward(self, x):
        out = F.conv3d(x.reshape(-1, 1, *x.shape[-3:]), self.kernel.to(x.dtype), padding=2)
        return out.reshape(x.shape)

    def adjoint(self, y, x=None):
        return self.forward(y)

    def domain_shape(self, y):
        return y.shape

    def example_input(self):
        return torch.zeros(1, 1, *self.size, dtype=self.kernel.dtype)


class MaskedFFT3D(Operator):
    """Undersampled orthonormal 3-D FFT (complex volumes [B, 1, D, H, W])."""

    complex_domain = True

    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask.float())

    def forward(self, x):
        return torch.fft.fftn(x, dim=(-3, -2, -1), norm="ortho") * self.mask

    def adjoint(self, y, x=None):
        return torch.fft.ifftn(y * self.mask, dim=(-3, -2, -1), norm="ortho")

    def domain_shape(self, y):
        return y.shape


def _volume_op(n):
    return _conebeam(n)


def _volumes(b, n, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, n, n, n, generator=g, dtype=torch.float64)
    return F.avg_pool3d(x, 3, 1, 1).to(dtype)          # smooth enough to reconstruct


@pytest.mark.parametrize("cls", [LU, LUSER])
def test_forward_backward_on_a_volume_operator(cls):
    n = 10
    op = _volume_op(n)
    x = _volumes(2, n)
    y = op(x)
    torch.manual_seed(0)
    model = cls(op, iterations=2, channels=8, spatial_dims=3)
    assert model.spatial_dims == 3
    assert all(isinstance(m, torch.nn.Conv3d) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
    out = model(y)
    assert out.shape == x.shape
    mse(out, x).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_reference_binding_same_output_and_gradients_3d():
    n = 8
    op = _volume_op(n).double()
    x = _volumes(2, n, torch.float64, seed=1)
    y = op(x)
    kwargs = {"iterations": 2, "channels": 4, "depth": 3, "spatial_dims": 3,
              "solver_kwargs": TIGHT, "backward_kwargs": TIGHT}
    torch.manual_seed(0)
    ref = reference.LUSER(op, **kwargs).double()
    excite(ref, 5.0)
    fast = LUSER(op, **kwargs).double()
    fast.load_state_dict(ref.state_dict())
    outs, grads = outputs_and_gradients((ref, fast), y, x)
    assert max(int(i.iterations.max()) for i in fast.last_solver_info) > 5
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-11)
    for k, g in grads[0].items():
        torch.testing.assert_close(grads[1][k], g, rtol=1e-7, atol=1e-10, msg=k)


def _strong_map_and_inputs(shape, **kwargs):
    """A float64 3-D ShallowEquilibrium(**kwargs) with conv_out scaled 30x (so that z
    matters), and z, v (requiring grad) and a cotangent u of ``shape``, drawn in that
    order."""
    f = ShallowEquilibrium(spatial_dims=3, **kwargs).double()
    with torch.no_grad():
        f.conv_out.weight.mul_(30)
    z = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    v = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    u = torch.randn(shape, dtype=torch.float64)
    return f, z, v, u


def _plain_map(f, z, v):
    """f(z, v) of a 3-D ShallowEquilibrium written with its modules (conv3d, GroupNorm,
    GELU), independently of ``shallow_map_ref``."""
    h = f.conv_in(z) + f.inject(v)
    convs = [*f.hidden, f.conv_out]
    for norm, conv in zip(f.norms, convs):
        h = conv(F.gelu(norm(h)))
    return v + h


@pytest.mark.parametrize("depth", [2, 3])
def test_shallow_map_3d_gradients_match_plain_conv3d(depth):
    torch.manual_seed(depth)
    f, z, v, u = _strong_map_and_inputs((2, 2, 6, 5, 7), in_channels=2, channels=4,
                                        depth=depth, groups=2)
    params = list(f.parameters())
    results = []
    for fn in (lambda: f(z, v), lambda: f.bind(v)(z), lambda: _plain_map(f, z, v)):
        out = fn()
        results.append((out.detach(), torch.autograd.grad(out, [z, v, *params], u)))
    for out, grads in results[:2]:
        torch.testing.assert_close(out, results[2][0], rtol=1e-12, atol=1e-12)
        for g, g_ref in zip(grads, results[2][1]):
            torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    # the op itself, with the weights as a list (what the model passes)
    inj = S.shallow_inject(v, f.inject.weight)
    assert inj.shape == (2, 4, 6, 5, 7)


def test_the_fused_kernel_is_2d_and_says_so(monkeypatch):
    """A volume with Triton requested runs the reference map and warns once with the
    reason; a 2-D call keeps its path (here: the same reference maths)."""
    f = ShallowEquilibrium(channels=4, groups=2, spatial_dims=3)
    z = torch.randn(1, 1, 5, 5, 5)
    assert S._unfused(z, [f.conv_in.weight]) == S.NOT_2D == "the fused kernel is 2-D"
    monkeypatch.setattr(S.backends, "select", lambda op, device, backend=None: "triton")
    for key in [k for k in backends._warned if k[1] == S.NOT_2D]:
        backends._warned.discard(key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = f(z, z)
    said = {str(w.message) for w in caught if w.category is RuntimeWarning}
    assert said == {f"luser_fast: {op} runs its reference: the fused kernel is 2-D"
                    for op in ("shallow_inject", "shallow_map")}
    expected = _plain_map(f, z, z)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # once per (op, reason)
        f(z, z)


def test_2d_unchanged_and_keys_shared():
    """spatial_dims=2 is the default: the same modules, keys and outputs; the 3-D model has
    the same state_dict keys with one more kernel axis."""
    f2 = ShallowEquilibrium(channels=4, depth=3, groups=2)
    torch.manual_seed(0)
    a = ShallowEquilibrium(channels=4, depth=3, groups=2, spatial_dims=2)
    torch.manual_seed(0)
    b = ShallowEquilibrium(channels=4, depth=3, groups=2)
    z = torch.randn(2, 1, 7, 6)
    assert torch.equal(a(z, z), b(z, z))
    assert isinstance(f2.conv_in, torch.nn.Conv2d)
    f3 = ShallowEquilibrium(channels=4, depth=3, groups=2, spatial_dims=3)
    s2, s3 = f2.state_dict(), f3.state_dict()
    assert list(s2) == list(s3)
    for k in s2:
        shape = s2[k].shape
        assert s3[k].shape == (shape + (3,) if len(shape) == 4 else shape), k
    from luser_fast.physics import Blur

    op2, op3 = Blur(sigma=1.0, image_size=(6, 6)), Blur3D((6, 6, 6))
    for cls in (LU, LUSER):
        assert list(cls(op3, channels=4, spatial_dims=3).state_dict()) == \
            list(cls(op2, channels=4).state_dict())
    assert list(DeepRegularizer(channels=4, spatial_dims=3).state_dict()) == \
        list(DeepRegularizer(channels=4).state_dict())


def test_complex_volumes_enter_as_two_channels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 4, 5, 6, dtype=torch.complex64, generator=g)
    c = _to_channels(x, 3)
    assert c.shape == (2, 2, 4, 5, 6)
    assert torch.equal(c[:, 0], x[:, 0].real) and torch.equal(c[:, 1], x[:, 0].imag)
    assert torch.equal(_from_channels(c, x, 3), x)
    x2 = x[:, :, 0]
    assert torch.equal(_to_channels(x2), _to_channels(x2, 2))      # 2-D as before
    assert _to_channels(x2).shape == (2, 2, 5, 6)
    mask = torch.rand(6, 6, 6, generator=g) < 0.5
    op = MaskedFFT3D(mask)
    xc = torch.polar(_volumes(2, 6)[:, :, :], torch.full((2, 1, 6, 6, 6), 0.3))
    torch.manual_seed(0)
    model = LUSER(op, iterations=2, in_channels=2, channels=4, spatial_dims=3)
    out = model(op(xc))
    assert out.shape == xc.shape and out.is_complex()
    mse(out, xc).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bad_spatial_dims():
    op = Blur3D((6, 6, 6))
    for cls in (LU, LUSER):
        for bad in (1, 4):
            with pytest.raises(ValueError, match="spatial_dims must be 2 .* or 3"):
                cls(op, channels=4, spatial_dims=bad)
        with pytest.raises(TypeError, match="spatial_dims must be an int"):
            cls(op, channels=4, spatial_dims="3")
    for cls in (ShallowEquilibrium, DeepRegularizer):
        with pytest.raises(ValueError, match="spatial_dims"):
            cls(channels=4, spatial_dims=0)
    # a 3-D model on 2-D images and the other way round: the image's dims are checked
    from luser_fast.physics import Blur

    op2 = Blur(sigma=1.0, image_size=(8, 8))
    y2 = op2(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, C, D, H, W\] for spatial_dims=3"):
        LU(op2, channels=4, spatial_dims=3)(y2)
    with pytest.raises(ValueError, match=r"\[B, C, D, H, W\] for spatial_dims=3"):
        LUSER(op2, channels=4, spatial_dims=3)(y2)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\] for spatial_dims=2"):
        LUSER(op, channels=4)(op(torch.rand(1, 1, 6, 6, 6)))
    with pytest.raises(ValueError, match="DeepRegularizer: v must be"):
        DeepRegularizer(channels=4, spatial_dims=3)(torch.rand(1, 6, 6, 6))
    f = ShallowEquilibrium(channels=4, spatial_dims=3)
    with pytest.raises(ValueError, match="ShallowEquilibrium: v must be"):
        f.bind(torch.rand(1, 1, 6, 6))
    # the op: weights of another rank than the image
    f2 = ShallowEquilibrium(channels=4)
    z = torch.rand(1, 1, 5, 5, 5)
    inj = torch.rand(1, 4, 5, 5, 5)
    with pytest.raises(ValueError, match="k x k x k convolutions"):
        S.shallow_map(z, inj, z, [f2.conv_in.weight, f2.conv_out.weight],
                      [f2.conv_in.bias, f2.conv_out.bias])
    with pytest.raises(ValueError, match="z must be"):
        S.shallow_map(z[0, 0], inj[0, 0], z[0, 0], [f.conv_in.weight, f.conv_out.weight],
                      [f.conv_in.bias, f.conv_out.bias])


def test_chunked_training_peak_does_not_grow_with_the_batch_3d():
    """chunk=1 (LUSER's default): the solve and the implicit backward run one sample at a
    time, so a larger batch adds only the saved |z*| + |v| per step and sample, while LU's
    peak grows by a whole sample's activations; the result does not depend on the chunk.
    (A blur as the operator, so that only the networks' bytes are compared.)"""
    n = 10
    op = Blur3D((n, n, n))
    x = _volumes(3, n, seed=2)
    y = op(x)
    peaks = {}
    for name, cls in (("LU", LU), ("LUSER", LUSER)):
        for b in (1, 3):
            torch.manual_seed(0)
            model = cls(op, iterations=3, channels=8, spatial_dims=3)
            peaks[name, b] = training_memory(model, y[:b], x[:b]).peak_bytes
    lu_growth = peaks["LU", 3] - peaks["LU", 1]
    luser_growth = peaks["LUSER", 3] - peaks["LUSER", 1]
    assert lu_growth > 1.5 * peaks["LU", 1], peaks
    assert luser_growth < 0.1 * lu_growth, peaks
    # the same result with the whole batch in one chunk
    op = op.double()
    outs = []
    for chunk in (1, None):
        torch.manual_seed(0)
        model = LUSER(op, iterations=2, channels=4, chunk=chunk, spatial_dims=3,
                      solver_kwargs=TIGHT, backward_kwargs=TIGHT).double()
        excite(model, 5.0)
        out = model(y.double())
        mse(out, x.double()).backward()
        outs.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-9, atol=1e-11)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)


def _map_args(f):
    gn = isinstance(f.norms[0], torch.nn.GroupNorm)
    return ([f.conv_in.weight, *(c.weight for c in f.hidden), f.conv_out.weight],
            [f.conv_in.bias, *(c.bias for c in f.hidden), f.conv_out.bias],
            [n.weight for n in f.norms] if gn else [], [n.bias for n in f.norms] if gn else [],
            f.norms[0].num_groups if gn else 1, f.act_name, 1e-5)


@pytest.mark.parametrize("act", ["gelu", "relu", "silu", "elu"])
@pytest.mark.parametrize("norm", ["group", "none"])
def test_lean_map_equals_the_reference(act, norm):
    """Where autograd records a volume's map, it keeps only the pre-norm outputs and
    recomputes GroupNorm + activation: the same values, the same gradients (float64)."""
    torch.manual_seed(1)
    f, z, v, u = _strong_map_and_inputs((2, 2, 5, 6, 7), in_channels=2, channels=8, depth=4,
                                        groups=4, act=act, norm=norm)
    inj = S.shallow_inject(v, f.inject.weight)
    args = _map_args(f)
    params = list(f.parameters())[1:]                       # all but inject (not in the map)
    ref = S.shallow_map_ref(z, inj, v, *args)
    lean = S.shallow_map(z, inj, v, *args[:4], groups=args[4], act=act)
    assert torch.equal(lean, ref)
    g_ref = torch.autograd.grad(ref, [z, v, *params], u, retain_graph=True)
    g_lean = torch.autograd.grad(lean, [z, v, *params], u, retain_graph=True)
    for a, b in zip(g_lean, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
    # a second VJP on the same graph (the adjoint solve's use) recomputes the same
    g_again = torch.autograd.grad(lean, [z], 2 * u)[0]
    torch.testing.assert_close(g_again, 2 * g_ref[0], rtol=1e-11, atol=1e-13)


def test_lean_map_keeps_the_pre_norm_outputs_only():
    """The graph of a volume's map holds the L - 1 pre-norm outputs (and its small
    inputs), not 3 (L - 1) C-channel volumes; the reference backend keeps the plain graph."""
    from luser_fast.profile import SavedTensorBytes

    torch.manual_seed(0)
    f = ShallowEquilibrium(1, 16, depth=4, spatial_dims=3)
    z = torch.randn(1, 1, 12, 12, 12, requires_grad=True)
    volume = 16 * 12 ** 3 * 4                                   # one C-channel volume
    saved = {}
    for backend in (None, "reference"):
        f.backend = backend
        with SavedTensorBytes() as s:
            out = f(z, z)
        saved[backend] = s.bytes
        out.sum().backward()
    f.backend = None
    small = sum(p.numel() * 4 for p in f.parameters()) + 3 * z.numel() * 4
    assert 3 * volume <= saved[None] <= 3 * volume + small, saved
    assert saved["reference"] >= 9 * volume, saved
