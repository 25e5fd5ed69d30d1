"""Bad input and faults (issue #14, items 6-9 and the unclear errors): each is refused with a
clear error naming the argument, or works.

Small and fast: every test runs in well under a second on a CPU.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from luser_fast import LU, LUSER, MRI, NUFFT, Blur, Radon, ops
from luser_fast.core import radon_geometry as geo
from luser_fast.core import validate
from luser_fast.ops import nufft as nufft_ops
from luser_fast.ops import radon as radon_ops
from luser_fast.physics.nufft import pipe_density
from luser_fast.reference import radon_adjoint_ref, radon_fbp_ref, radon_forward_ref
from luser_fast.reference.nufft import NufftPlan, nudft_type1, nufft_type1_ref

LF = torch.ops.luser_fast
ANGLES = torch.tensor([0.1, 0.9, 2.0], dtype=torch.float64)


def _raises(exc, *words):
    """pytest.raises for ``exc`` whose message holds every word of ``words``."""
    return pytest.raises(exc, match=".*".join(re.escape(w) for w in words))


# --- 6. mixed devices -----------------------------------------------------------------------

def test_same_device_names_the_argument():
    cpu, meta = torch.zeros(2), torch.zeros(2, device="meta")
    assert validate.same_device("f", a=cpu, b=None, c=cpu) == torch.device("cpu")
    with _raises(ValueError, "f: c is on meta but a is on cpu"):
        validate.same_device("f", a=cpu, b=None, c=meta)
    with _raises(TypeError, "f: b must be a torch.Tensor"):
        validate.same_device("f", a=cpu, b=3)


@pytest.mark.parametrize("raw", [False, True], ids=["public", "raw"])
def test_radon_meta_angles_beside_cpu_data_are_refused(raw):
    x, sino = torch.ones(1, 8, 8), torch.ones(1, 3, 12)
    meta = ANGLES.to("meta")
    if raw:
        fwd = lambda: LF.radon_forward(x, meta, 12, 1.0, None, None)
        adj = lambda: LF.radon_adjoint(sino, meta, 8, 8, 1.0, None, None)
    else:
        fwd = lambda: ops.radon_forward(x, meta)
        adj = lambda: ops.radon_adjoint(sino, meta, 8)
    with _raises(ValueError, "radon_forward: angles is on meta but x is on cpu"):
        fwd()
    with _raises(ValueError, "radon_adjoint: angles is on meta but sino is on cpu"):
        adj()
    # and the reverse: meta data, CPU angles
    with _raises(ValueError, "angles is on cpu but x is on meta"):
        (LF.radon_forward(x.to("meta"), ANGLES, 12, 1.0, None, None) if raw
         else ops.radon_forward(x.to("meta"), ANGLES))


def test_radon_all_meta_gives_shapes():
    x, a = torch.ones(2, 1, 8, 8, device="meta"), ANGLES.to("meta")
    assert ops.radon_forward(x, a).shape == (2, 1, 3, 12)
    assert LF.radon_forward(x, a, 12, 1.0, None, None).shape == (2, 1, 3, 12)
    assert ops.radon_adjoint(torch.ones(2, 3, 12, device="meta"), a, 8).shape == (2, 8, 8)


def test_radon_operator_names_the_device_mismatch():
    op = Radon(8, angles=3).to("meta")
    with _raises(ValueError, "Radon.forward: x is on cpu but the operator is on meta"):
        op(torch.ones(1, 8, 8))
    with _raises(ValueError, "Radon.fbp: y is on cpu but the operator is on meta"):
        op.fbp(torch.ones(1, 3, op.n_detectors))


@pytest.mark.parametrize("raw", [False, True], ids=["public", "raw"])
def test_nufft_meta_trajectory_beside_cpu_data_is_refused(raw):
    image = torch.ones(1, 8, 8, dtype=torch.complex64)
    values = torch.ones(1, 5, dtype=torch.complex64)
    k = torch.zeros(5, 2, device="meta")
    if raw:
        t2 = lambda: LF.nufft_type2(image, k, 1e-3, 2.0)
        t1 = lambda: LF.nufft_type1(values, k, (8, 8), 1e-3, 2.0)
    else:
        t2 = lambda: ops.nufft_type2(image, k, 1e-3)
        t1 = lambda: ops.nufft_type1(values, k, 8, 1e-3)
    with _raises(ValueError, "nufft_type2", "ktraj is on meta", "cpu"):
        t2()
    with _raises(ValueError, "nufft_type1", "ktraj is on meta", "cpu"):
        t1()


# --- 8. fan-beam range ----------------------------------------------------------------------

@pytest.mark.parametrize("kw, name", [
    (dict(source_distance=1e15), "source_distance"),
    (dict(source_distance=1e155), "source_distance"),
    (dict(source_distance=40.0, detector_distance=1e12), "detector_distance"),
    (dict(source_distance=40.0, det_spacing=1e200), "det_spacing"),
])
def test_fan_geometry_beyond_float64_accuracy_is_refused(kw, name):
    with _raises(ValueError, f"Radon: {name}", "exceeds"):
        Radon(16, angles=8, geometry="fan", **kw)
    x = torch.ones(1, 16, 16, dtype=torch.float64)
    with _raises(ValueError, f"radon_forward: {name}"):
        ops.radon_forward(x, ANGLES, **kw)
    with _raises(ValueError, f"radon_forward_ref: {name}"):
        radon_forward_ref(x, ANGLES, **kw)


def test_largest_accepted_fan_matches_parallel_beam():
    """At the bound (FAN_RANGE * max(H, W)), fan beam is parallel beam up to its geometric
    departure ~ N / FAN_RANGE pixel: the relative difference is below 1e-6 for a smooth
    image, the float64 rounding ~ 1e-9 N pixel invisible; and the compiled kernel matches
    the reference to 1e-12."""
    n = 16
    t = torch.linspace(-1, 1, n, dtype=torch.float64)
    x = torch.exp(-4 * (t[:, None] ** 2 + t[None, :] ** 2))[None]
    angles = torch.arange(12, dtype=torch.float64) * (2 * math.pi / 12)
    src = float(geo.FAN_RANGE * n)
    par = ops.radon_forward(x, angles)
    fan = ops.radon_forward(x, angles, source_distance=src)
    assert (fan - par).abs().max() <= 1e-6 * par.abs().max()
    ref = radon_forward_ref(x, angles, source_distance=src)
    assert (fan - ref).abs().max() <= 1e-12 * par.abs().max()
    Radon(n, angles=angles, geometry="fan", source_distance=src, detector_distance=src)
    with _raises(ValueError, "source_distance"):
        Radon(n, angles=angles, geometry="fan", source_distance=src * (1 + 1e-9))


# --- 9. raw Radon ops and non-finite angles -------------------------------------------------

def test_raw_radon_python_kernels_refuse_nan_angles_in_both_directions(monkeypatch):
    """The Python kernels (reference fallback, CUDA launchers) refuse NaN angles in the
    forward and the adjoint alike; checked here through ``_check_raw``, which all of them
    call first."""
    bad = torch.tensor([math.nan, 0.0], dtype=torch.float64)
    x, sino = torch.ones(1, 8, 8), torch.ones(1, 2, 12)
    with _raises(ValueError, "radon_forward: angles must be finite"):
        radon_ops._check_raw("radon_forward", "x", x, bad)
    with _raises(ValueError, "radon_adjoint: angles must be finite"):
        radon_ops._check_raw("radon_adjoint", "sino", sino, bad)
    # the reference fallback kernels are the reference functions: same refusal
    with _raises(ValueError, "angles must be finite"):
        radon_forward_ref(x, bad, 12)
    with _raises(ValueError, "angles must be finite"):
        radon_adjoint_ref(sino, bad, 8)


def test_raw_radon_cpu_forward_and_adjoint_agree_on_nan_angles():
    bad = torch.tensor([math.nan, 0.0], dtype=torch.float64)
    x, sino = torch.ones(1, 8, 8), torch.ones(1, 2, 12)
    outcomes = []
    for call in (lambda: LF.radon_forward(x, bad, 12, 1.0, None, None),
                 lambda: LF.radon_adjoint(sino, bad, 8, 8, 1.0, None, None)):
        try:
            out = call()
        except (RuntimeError, ValueError):
            outcomes.append("refused")
        else:
            outcomes.append("nan" if torch.isnan(out).any() else "finite")
    assert outcomes[0] == outcomes[1], outcomes


def test_raw_nufft_refuses_a_trajectory_not_m_by_2():
    k3 = torch.zeros(5, 3)
    with _raises(ValueError, "nufft_type2: ktraj must have shape [M, 2], got (5, 3)"):
        LF.nufft_type2(torch.ones(1, 8, 8, dtype=torch.complex64), k3, 1e-3, 2.0)
    with _raises(ValueError, "nufft_type1: ktraj must have shape [M, 2], got (5, 3)"):
        LF.nufft_type1(torch.ones(1, 5, dtype=torch.complex64), k3, (8, 8), 1e-3, 2.0)


# --- sizes that cannot be allocated ---------------------------------------------------------

def test_allocation_says_how_much_was_asked():
    with _raises(ValueError, "f: the image would need 256.0 TiB", "8388608x8388608 float32",
                 "more than"):
        validate.allocation("f", "the image", (2 ** 23, 2 ** 23), torch.float32, "cpu")
    assert validate.allocation("f", "x", (4, 4), torch.float64, "cpu") == 128
    assert validate.allocation("f", "x", (2 ** 40, 2 ** 40), torch.float32, "meta") == 0
    assert validate.format_bytes(1536) == "1.5 KiB"


def test_radon_sizes_beyond_memory_are_refused_before_allocating():
    with _raises(ValueError, "radon_adjoint: the image would need 256.0 TiB"):
        ops.radon_adjoint(torch.zeros(1, 3, 4), ANGLES, (2 ** 23, 2 ** 23), 4)
    with _raises(ValueError, "Radon: angles=1099511627776 would need 8.0 TiB"):
        Radon(8, angles=2 ** 40)
    with _raises(ValueError, "radon_forward: the sinogram would need"):
        ops.radon_forward(torch.zeros(1, 8, 8), ANGLES, 2 ** 50)
    with _raises(ValueError, "Blur: the transfer function of image_size", "would need"):
        Blur(sigma=1.0, image_size=2 ** 24)


# --- image_size -----------------------------------------------------------------------------

IMAGE_SIZE_USERS = {
    "Radon": lambda s: Radon(s, angles=3),
    "Blur": lambda s: Blur(sigma=1.0, image_size=s),
    "NUFFT": lambda s: NUFFT(torch.zeros(3, 2), s),
    "radon_adjoint": lambda s: ops.radon_adjoint(torch.zeros(1, 3, 4), ANGLES, s, 4),
    "radon_adjoint_ref": lambda s: radon_adjoint_ref(torch.zeros(1, 3, 4), ANGLES, s, 4),
    "nufft_type1": lambda s: ops.nufft_type1(torch.zeros(1, 3, dtype=torch.complex64),
                                             torch.zeros(3, 2), s),
    "radon_fbp_ref": lambda s: radon_fbp_ref(torch.zeros(1, 3, 4), ANGLES, s, 4),
    "pipe_density": lambda s: pipe_density(torch.zeros(3, 2), s),
    "NufftPlan": lambda s: NufftPlan(torch.zeros(3, 2), s),
    "nufft_type1_ref": lambda s: nufft_type1_ref(torch.zeros(1, 3, dtype=torch.complex64),
                                                 torch.zeros(3, 2), s),
    "nudft_type1": lambda s: nudft_type1(torch.zeros(1, 3, dtype=torch.complex64),
                                         torch.zeros(3, 2), s),
    "plan_for": lambda s: nufft_ops.plan_for(torch.zeros(3, 2), s),
    "gridding_plan": lambda s: nufft_ops.gridding_plan(torch.zeros(3, 2), s),
}
@pytest.mark.parametrize("name", sorted(IMAGE_SIZE_USERS))
@pytest.mark.parametrize("size, exc", [(2.5, TypeError), (None, TypeError), ("8", TypeError),
                                       ((8, 2.0), TypeError), ((8,), TypeError),
                                       (0, ValueError), ((8, -1), ValueError)])
def test_bad_image_size_names_image_size(name, size, exc):
    if name == "Blur" and size is None:
        pytest.skip("Blur's image_size is optional: None is no image size")
    with _raises(exc, "image_size"):
        IMAGE_SIZE_USERS[name](size)


# --- batch size 0 and half precision --------------------------------------------------------

def _fan(n=16):
    return Radon(n, angles=10, geometry="fan", source_distance=2.0 * n)


@pytest.mark.parametrize("op", [Radon(16, angles=10), _fan()], ids=["parallel", "fan"])
def test_radon_empty_batch(op):
    y = torch.zeros(0, 1, 10, op.n_detectors)
    assert op.fbp(y).shape == (0, 1, 16, 16)
    assert op.adjoint(y).shape == (0, 1, 16, 16)
    assert op(torch.zeros(0, 1, 16, 16)).shape == y.shape


@pytest.mark.parametrize("padding", ["circular", "zero"])
def test_blur_empty_batch_and_half(padding):
    op = Blur(sigma=1.0, padding=padding)
    assert op(torch.zeros(0, 1, 16, 16)).shape == (0, 1, 16, 16)
    assert op.adjoint(torch.zeros(0, 1, 16, 16)).shape == (0, 1, 16, 16)
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float16, torch.bfloat16):
        for apply in (op, op.adjoint):
            out = apply(x.to(dtype))
            assert out.dtype == dtype
            torch.testing.assert_close(out.float(), apply(x), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("coils", [False, True])
def test_mri_empty_batch(coils):
    maps = torch.ones(2, 8, 8, dtype=torch.complex64) if coils else None
    op = MRI(torch.ones(8, 8), maps)
    y = op(torch.zeros(0, 1, 8, 8, dtype=torch.complex64))
    assert y.shape == (0, op.n_coils, 8, 8)
    assert op.adjoint(y).shape == (0, 1, 8, 8)


@pytest.mark.parametrize("op", [Radon(16, angles=10), _fan()], ids=["parallel", "fan"])
def test_radon_fbp_half_computes_in_float32(op):
    x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = op(x)
    want = op.fbp(y)
    for dtype in (torch.float16, torch.bfloat16):
        got = op.fbp(y.to(dtype))
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want, atol=0.05 * want.abs().max().item(),
                                   rtol=0.05)


# --- 9. Anderson ops: dtypes of every tensor argument ---------------------------------------

def _anderson_args(b=2, m=3, d=4, **override):
    args = dict(fz=torch.ones(b, d), z=torch.zeros(b, d), hist_f=torch.zeros(b, m, d),
                hist_g=torch.zeros(b, m, d), active=torch.ones(b, dtype=torch.bool))
    args.update(override)
    return args


@pytest.mark.parametrize("name, value", [
    ("hist_f", torch.zeros(2, 3, 4, dtype=torch.int64)),
    ("hist_g", torch.zeros(2, 3, 4, dtype=torch.float64)),
    ("fz", torch.ones(2, 4, dtype=torch.int64)),
    ("z", torch.zeros(2, 4, dtype=torch.complex64)),
    ("active", torch.ones(2, dtype=torch.int64)),
])
def test_anderson_step_names_a_tensor_of_the_wrong_dtype(name, value):
    args = _anderson_args(**{name: value})
    if name == "hist_f":
        args["hist_g"] = value.clone()
    with _raises(TypeError, f"anderson_step: {name} must"):
        ops.anderson_step(**args, slot=0, n=1)
    assert not args["hist_f"].any()     # nothing was written


def test_anderson_step_and_mix_check_shapes_and_take_good_input():
    with _raises(ValueError, "anderson_step: fz must have shape (2, 4)"):
        ops.anderson_step(**_anderson_args(fz=torch.ones(2, 5)), slot=0, n=1)
    args = _anderson_args()
    row = ops.anderson_step(**args, slot=0, n=1)
    assert row[0].tolist() == [4.0, 0.0, 0.0, 4.0]
    hf, hg, act = args["hist_f"], args["hist_g"], args["active"]
    torch.testing.assert_close(ops.anderson_mix(hf, hg, torch.ones(2, 1), act), args["fz"])
    with _raises(TypeError, "anderson_mix: alpha must be a real floating tensor"):
        ops.anderson_mix(hf, hg, torch.ones(2, 1, dtype=torch.int64), act)
    with _raises(TypeError, "anderson_mix: best must be a real floating tensor"):
        ops.anderson_mix(hf, hg, torch.ones(2, 1), act, best=torch.zeros(2, 4, dtype=torch.int32))
    with _raises(TypeError, "anderson_mix: hist_f must be float32 or float64"):
        ops.anderson_mix(hf.long(), hg.long(), torch.ones(2, 1), act)
    with _raises(ValueError, "anderson_mix: alpha must be [B, n]"):
        ops.anderson_mix(hf, hg, torch.ones(2, 4), act)


# --- model and solver misuse ----------------------------------------------------------------

def _ct_model(cls=LUSER):
    torch.manual_seed(0)
    op = Radon(16, angles=10)
    return op, cls(op, iterations=2, channels=8)


@pytest.mark.parametrize("cls", [LUSER, LU])
def test_model_names_y_and_x0(cls):
    op, model = _ct_model(cls)
    name = cls.__name__
    y = op(torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    with _raises(TypeError, f"{name}: y is torch.float64 but the model's parameters are "
                            "torch.float32"):
        model(y.double())
    with _raises(TypeError, f"{name}: y must be a torch.Tensor"):
        model(y.numpy())
    with _raises(ValueError, f"{name}: x0 must have shape (2, 1, 16, 16)", "got (2, 1, 8, 8)"):
        model(y, x0=torch.zeros(2, 1, 8, 8))
    with _raises(TypeError, f"{name}: x0 must be torch.float32"):
        model(y, x0=torch.zeros(2, 1, 16, 16, dtype=torch.float64))
    assert model(y, x0=op.fbp(y)).shape == (2, 1, 16, 16)
    assert model.double()(y.double()).dtype == torch.float64


@pytest.mark.parametrize("cls", [LUSER, LU])
def test_model_empty_batch(cls):
    op, model = _ct_model(cls)
    y = torch.zeros(0, 1, 10, op.n_detectors)
    assert model(y).shape == (0, 1, 16, 16)


def test_mri_model_empty_batch_and_complex_y():
    mask = torch.ones(8, 8)
    model = LUSER(MRI(mask), iterations=1, in_channels=2, channels=8)
    assert model(torch.zeros(0, 1, 8, 8, dtype=torch.complex64)).shape == (0, 1, 8, 8)
    with _raises(TypeError, "LUSER: y is torch.complex128"):
        model(torch.zeros(1, 1, 8, 8, dtype=torch.complex128))


def test_deq_names_a_wrong_z0():
    from luser_fast import DEQ
    from luser_fast.models import ShallowEquilibrium

    layer = DEQ(ShallowEquilibrium(channels=8))
    v = torch.zeros(2, 1, 8, 8)
    with _raises(ValueError, "DEQ: z0 must have shape (2, 1, 8, 8) (v's), got (2, 1, 4, 4)"):
        layer(v, z0=torch.zeros(2, 1, 4, 4))
    with _raises(TypeError, "DEQ: z0 must be torch.float32"):
        layer(v, z0=torch.zeros(2, 1, 8, 8, dtype=torch.float64))
    assert layer(v, z0=torch.zeros_like(v)).shape == v.shape


def test_training_memory_names_x_true():
    from luser_fast import training_memory

    op, model = _ct_model()
    y = op(torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    with _raises(ValueError, "training_memory: x_true must have the reconstruction's shape "
                             "(2, 1, 16, 16)", "got (1, 1, 16, 16)"):
        training_memory(model, y, torch.zeros(1, 1, 16, 16))
    with _raises(TypeError, "training_memory: x_true must be a torch.Tensor"):
        training_memory(model, y, None)


# --- 7. readers reject non-finite data; a diverging run stops -------------------------------

def _h5(path, **datasets):
    import h5py

    with h5py.File(path, "w") as fh:
        for name, value in datasets.items():
            fh.create_dataset(name, data=value)
    return str(path)


def _with_nan(shape, dtype=float):
    arr = np.random.default_rng(0).random(shape).astype(dtype)
    arr[(-1,) + (1,) * (len(shape) - 1)] = np.nan
    return arr


@pytest.mark.parametrize("layout", ["fastmri-target", "fastmri-kspace", "lodopab", "generic"])
def test_hdf5_readers_reject_non_finite_data(tmp_path, layout):
    from luser_fast.data import FastMRISlices, read_h5, read_images

    ok = np.random.default_rng(1).random((2, 8, 8))
    if layout.startswith("fastmri"):
        kspace = (ok + 1j * ok).astype(np.complex64)
        target = ok.astype(np.float32)
        if layout == "fastmri-target":
            target = _with_nan((2, 8, 8), np.float32)
            where = "'reconstruction_esc' slice 1"
        else:
            kspace = kspace.copy()
            kspace[1, 3, 3] = np.inf
            where = "'kspace' slice 1"
        path = _h5(tmp_path / "knee.h5", kspace=kspace, reconstruction_esc=target)
        with _raises(ValueError, f"{path}: dataset {where} has non-finite values"):
            FastMRISlices(path)[1]
    elif layout == "lodopab":
        path = _h5(tmp_path / "ground_truth_train_000.hdf5", data=_with_nan((2, 8, 8)))
        where = "'data' slice 1"
    else:
        path = _h5(tmp_path / "images.h5", stack=_with_nan((2, 8, 8)))
        where = "'stack' image 1"
    for read in (read_h5, lambda p: read_images(p, size=8)):
        with _raises(ValueError, f"{path}: ", where.split()[0], "non-finite"):
            read(path)


def test_readers_reject_a_range_beyond_float64_but_take_its_finite_values(tmp_path):
    from luser_fast.data import read_image

    np.save(tmp_path / "wide.npy", np.array([[-1e308, 1e308], [0.0, 0.0]]))
    img = read_image(str(tmp_path / "wide.npy"))
    assert torch.isfinite(img).all() and img.min() == 0 and img.max() == 1


def _cli(capsys, *argv):
    """(exit status, stderr) of ``luser-fast argv``: 0 or the SystemExit code."""
    from luser_fast.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _one_error_line(err, command):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"luser-fast {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


TINY = ["--size", "16", "--K", "2", "--channels", "4", "--batch", "2", "--n-train", "6",
        "--threads", "1"]


def test_train_on_an_hdf5_file_with_nan_stops_before_training(tmp_path, capsys):
    path = _h5(tmp_path / "ground_truth_train_000.hdf5", data=_with_nan((8, 20, 20)))
    code, err = _cli(capsys, "train", "--task", "ct", "--data", path, "--out",
                     tmp_path / "run", *TINY, "--steps", "2")
    assert code == 2
    assert "non-finite" in _one_error_line(err, "train") and path in err
    assert not (tmp_path / "run" / "last.pt").exists()


class _Flaky(torch.nn.Module):
    """y -> w * y; on call ``nan_at`` the output is NaN, on call ``inf_grad_at`` the
    gradient of w is inf (the loss stays finite, the weights turn non-finite)."""

    def __init__(self, nan_at=None, inf_grad_at=None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.calls, self.nan_at, self.inf_grad_at = 0, nan_at, inf_grad_at

    def forward(self, y):
        self.calls += 1
        w = self.w
        if self.calls == self.inf_grad_at:
            w = w * 1.0
            w.register_hook(lambda g: torch.full_like(g, math.inf))
        out = w * y
        return out * math.nan if self.calls == self.nan_at else out


@pytest.mark.parametrize("fault, step", [("nan_at", 3), ("inf_grad_at", 3)])
def test_fit_stops_when_training_diverges_and_keeps_the_last_good_checkpoint(
        tmp_path, fault, step):
    from luser_fast.errors import TrainingDivergedError
    from luser_fast.train import CHECKPOINT_FORMAT, fit, load_checkpoint

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 4, 4, generator=g)
    ckpt = str(tmp_path / "last.pt")
    model = _Flaky(**{fault: step})
    with _raises(TrainingDivergedError, f"training stopped at step {step}:",
                 "the last good checkpoint, step 2, is kept in", ckpt):
        fit(model, 0.5 * x, x, 6, 2, 0.01, 0, checkpoint=ckpt, ckpt_every=1,
            meta={"format": CHECKPOINT_FORMAT})
    state = load_checkpoint(ckpt)
    assert state["step"] == 2 and torch.isfinite(state["model"]["w"])
    # no checkpoint yet: says so
    with _raises(TrainingDivergedError, "at step 1", "no checkpoint was written"):
        fit(_Flaky(nan_at=1), 0.5 * x, x, 6, 2, 0.01, 0,
            checkpoint=str(tmp_path / "other" / "last.pt"), ckpt_every=1)
    assert not (tmp_path / "other" / "last.pt").exists()


# --- 9. checkpoints: step, missing entries, spliced weights; the CLI's user errors ----------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny runs (LU and LUSER on CT, 2 steps) and their checkpoints."""
    from luser_fast.cli import main

    root = tmp_path_factory.mktemp("runs")
    for model in ("lu", "luser"):
        assert main(["train", "--task", "ct", "--model", model, "--out", str(root / model),
                     *TINY, "--steps", "2"]) == 0
    return root


def _altered(trained, tmp_path, run_of="lu", **changes):
    """A copy of a run whose checkpoint has ``changes`` (None deletes an entry), re-saved
    with a valid digest (what a careless or crafted edit gives)."""
    import shutil

    from luser_fast.train import load_checkpoint, save_checkpoint

    run = tmp_path / f"{run_of}-altered"
    shutil.copytree(trained / run_of, run)
    state = load_checkpoint(str(run / "last.pt"))
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    save_checkpoint(str(run / "last.pt"), {k: v for k, v in state.items() if k != "sha256"})
    return run


def _resume(capsys, run, model="lu"):
    return _cli(capsys, "train", "--task", "ct", "--model", model, "--out", run, *TINY,
                "--steps", "2", "--resume")


@pytest.mark.parametrize("step", [-1, 10 ** 15, 3, True, 2.0])
def test_checkpoint_with_a_bad_step_is_refused(trained, tmp_path, capsys, step):
    run = _altered(trained, tmp_path, step=step)
    for code, err, command in ((*_cli(capsys, "eval", run / "last.pt", "--n", "1"), "eval"),
                               (*_resume(capsys, run), "train")):
        assert code == 2
        line = _one_error_line(err, command)
        assert str(run / "last.pt") in line and "step" in line


@pytest.mark.parametrize("missing", ["rng", "model", "optimizer", "history", "task"])
def test_checkpoint_missing_an_entry_is_refused(trained, tmp_path, capsys, missing):
    run = _altered(trained, tmp_path, **{missing: None})
    code, err = _resume(capsys, run)
    assert code == 2
    assert f"the checkpoint's {missing!r} entry is missing" in _one_error_line(err, "train")


def test_spliced_checkpoint_is_refused(trained, tmp_path, capsys):
    from luser_fast.train import load_checkpoint

    luser = load_checkpoint(str(trained / "luser" / "last.pt"))
    run = _altered(trained, tmp_path, run_of="lu", model=luser["model"])
    code, err = _cli(capsys, "eval", run / "last.pt", "--n", "1")
    assert code == 2
    assert "weights do not fit the model its configuration describes (lu" in \
        _one_error_line(err, "eval")
    code, err = _resume(capsys, run)
    assert code == 2
    assert "'model' entry does not fit" in _one_error_line(err, "train")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["train", "eval", "reconstruct"])
def test_device_cuda_without_cuda_is_one_error_line(trained, tmp_path, capsys, command):
    ckpt = trained / "lu" / "last.pt"
    argv = {"train": ["train", "--task", "ct", "--out", tmp_path / "r", *TINY, "--steps", "1"],
            "eval": ["eval", ckpt],
            "reconstruct": ["reconstruct", ckpt, "--measurements", "y.npy", "--out", "x.npy"]}
    code, err = _cli(capsys, *argv[command], "--device", "cuda")
    assert code == 2
    assert "--device cuda: no CUDA device is available" in _one_error_line(err, command)


def test_negative_threads_is_an_argument_error(capsys):
    code, err = _cli(capsys, "train", "--task", "ct", "--threads", "-3")
    assert code == 2
    assert "argument --threads: must be an int >= 0, got -3" in err
    assert "Traceback" not in err


def test_disk_full_is_one_error_line_and_keeps_the_checkpoint(trained, tmp_path, capsys,
                                                              monkeypatch):
    import errno
    import shutil

    run = tmp_path / "full"
    shutil.copytree(trained / "lu", run)
    before = (run / "last.pt").read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    code, err = _cli(capsys, "train", "--task", "ct", "--model", "lu", "--out", run, *TINY,
                     "--steps", "2")
    assert code == 2
    line = _one_error_line(err, "train")
    assert "No space left on device" in line and str(run / "last.pt") in line
    assert (run / "last.pt").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
