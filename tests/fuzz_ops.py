"""Fuzz driver for the C++-backed ops and the public operator classes (run by test_fuzz.py
in a subprocess, so that a crash in compiled code is counted, not fatal to pytest).

Every case starts from valid arguments drawn by hypothesis and replaces none, one or two
of them by a value from that argument's catalogue of invalid values. The contract:

* no invalid argument: the call succeeds and matches the reference (the same call on the
  reference backend, or the reference-bound class) to float rounding;
* invalid arguments: the call raises TypeError or ValueError whose message names one of
  the replaced arguments.

Usage: python fuzz_ops.py N_EXAMPLES SEED -> prints one JSON line of counts per target.
"""
from __future__ import annotations

import json
import math
import sys

import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import luser_fast
from luser_fast import reference
from luser_fast.ops import nufft_type1, nufft_type2, radon_adjoint, radon_forward

torch.set_num_threads(1)

COUNTS: dict = {}
NOT_A_TENSOR = [[1.0, 2.0], 3.0, "x", None]


def _record(target, outcome):
    COUNTS.setdefault(target, {}).setdefault(outcome, 0)
    COUNTS[target][outcome] += 1


def _close(a, b, dtype):
    tol = 1e-4 if dtype in (torch.float32, torch.complex64) else 1e-9
    scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
    return a.shape == b.shape and (a.numel() == 0 or (a - b).abs().max().item() <= tol * scale)


def check(target, call, reference_call, bad, dtype, raw=False):
    """Run one case; ``bad`` names the arguments replaced by invalid values. ``raw``: a
    ``torch.ops`` call, whose C++ checks raise RuntimeError (still naming the argument)."""
    rejections = (TypeError, ValueError, RuntimeError) if raw else (TypeError, ValueError)
    try:
        out = call()
    except rejections as exc:
        if not bad:
            raise AssertionError(f"{target}: valid arguments refused: {exc}") from exc
        msg = str(exc)
        assert any(name in msg for name in bad), f"{target}: {msg!r} names none of {bad}"
        _record(target, "rejected")
        return
    except Exception as exc:   # anything else (RuntimeError from C++, IndexError...) fails
        raise AssertionError(f"{target}: {type(exc).__name__}: {exc} (bad={bad})") from exc
    assert not bad, f"{target}: invalid {bad} accepted"
    want = reference_call()
    assert _close(out, want, dtype), f"{target}: differs from the reference"
    _record(target, "accepted")


def _cat(*outs):
    """One flat tensor of several results (compared in one go)."""
    return torch.cat([o.reshape(-1) for o in outs])


def _forward_adjoint(cls, args: dict, x):
    """A x and A^H A x of the operator ``cls(**args)``, flattened together."""
    op = cls(**args)
    y = op(x)
    return _cat(y, op.adjoint(y))


def corrupt(draw, args: dict, catalogue: dict):
    """Replace up to two arguments by invalid values; return the names replaced."""
    names = draw(st.lists(st.sampled_from(sorted(catalogue)), max_size=2, unique=True))
    for name in names:
        args[name] = draw(st.sampled_from(catalogue[name]))
    return names


# --- Radon ----------------------------------------------------------------------------------

@st.composite
def radon_case(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    batch = draw(st.lists(st.integers(0, 2), max_size=2))
    a = draw(st.integers(1, 6))
    angles = torch.tensor(draw(st.lists(st.floats(-7, 7), min_size=a, max_size=a)),
                          dtype=torch.float64)
    n_det = draw(st.one_of(st.none(), st.integers(1, 20)))
    spacing = draw(st.floats(0.3, 3.0))
    if draw(st.booleans()):
        src, det = None, None
    else:
        src = 0.5 * math.hypot(h, w) * draw(st.floats(1.1, 5.0))
        det = draw(st.one_of(st.none(), st.floats(0.0, 10.0)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.rand(*batch, h, w, generator=g, dtype=torch.float64).to(dtype)
    return dtype, x, angles, n_det, spacing, src, det, g


RADON_BAD = {
    "angles": NOT_A_TENSOR + [torch.zeros(2, 2), torch.zeros(0),
                              torch.tensor([math.nan]), torch.tensor([1j])],
    "n_detectors": [0, -1, 2.5, "3", True],
    "det_spacing": [0.0, -1.0, math.nan, math.inf, "1"],
    "source_distance": [0.1, math.nan, -5.0, "x", 1e300],
}


@given(case=radon_case(), data=st.data())
def fuzz_radon_forward(case, data):
    dtype, x, angles, n_det, spacing, src, det, _ = case
    args = dict(x=x, angles=angles, n_detectors=n_det, det_spacing=spacing,
                source_distance=src, detector_distance=det)
    bad = corrupt(data.draw, args, {**RADON_BAD, "x": NOT_A_TENSOR + [
        x.to(torch.int64), x.to(torch.complex64), x.reshape(-1)[:3]]})
    check("radon_forward", lambda: radon_forward(**args),
          lambda: radon_forward(**args, backend="reference"), bad, dtype)


@given(case=radon_case(), data=st.data())
def fuzz_radon_adjoint(case, data):
    dtype, x, angles, n_det, spacing, src, det, g = case
    h, w = x.shape[-2:]
    d = n_det if n_det is not None else math.ceil(math.sqrt(2) * max(h, w))
    sino = torch.rand(*x.shape[:-2], angles.numel(), d, generator=g,
                      dtype=torch.float64).to(dtype)
    args = dict(sino=sino, angles=angles, image_size=(h, w), n_detectors=n_det,
                det_spacing=spacing, source_distance=src, detector_distance=det)
    bad = corrupt(data.draw, args, {
        **RADON_BAD, "image_size": [0, 2.5, None, (3,), (2, -1), "8"],
        "sino": NOT_A_TENSOR + [sino.to(torch.complex64), sino[..., :0, :]
                                if angles.numel() else sino[..., None]]})
    if "n_detectors" in bad and "sino" not in bad:
        bad.append("sino")         # a wrong D may be reported as a sino of the wrong shape
    check("radon_adjoint", lambda: radon_adjoint(**args),
          lambda: radon_adjoint(**args, backend="reference"), bad, dtype)


@given(case=radon_case(), data=st.data())
def fuzz_radon_operator(case, data):
    dtype, x, angles, n_det, spacing, src, det, _ = case
    h, w = x.shape[-2:]
    args = dict(image_size=(h, w), angles=angles, n_detectors=n_det,
                geometry="parallel" if src is None else "fan", det_spacing=spacing,
                source_distance=src, detector_distance=det)
    bad = corrupt(data.draw, args, {
        **RADON_BAD, "image_size": [0, 2.5, None, (3,), (2, -1)],
        "angles": RADON_BAD["angles"][4:] + [0, -3, 2.5],
        "geometry": ["cone", 3, None]})

    check("Radon", lambda: _forward_adjoint(luser_fast.Radon, args, x),
          lambda: _forward_adjoint(reference.Radon, args, x), bad, dtype)


@given(case=radon_case(), data=st.data())
def fuzz_raw_radon(case, data):
    """``torch.ops.luser_fast.radon_forward`` / ``radon_adjoint`` (the C++ kernels on the
    CPU) with type-correct but invalid values."""
    dtype, x, angles, n_det, spacing, src, det, g = case
    h, w = x.shape[-2:]
    d = n_det if n_det is not None else math.ceil(math.sqrt(2) * max(h, w))
    sino = torch.rand(*x.shape[:-2], angles.numel(), d, generator=g,
                      dtype=torch.float64).to(dtype)
    det = None if src is None else (det or 0.0)
    args = dict(x=x, sino=sino, angles=angles, n_detectors=d, det_spacing=spacing,
                source_distance=src, detector_distance=det)
    bad = corrupt(data.draw, args, {
        "x": [x.reshape(-1)[:0], x.to(torch.complex64), x.to(torch.int32)],
        "sino": [sino.to(torch.complex64), sino[..., :0], sino.reshape(-1)],
        "angles": [torch.zeros(2, 2, dtype=torch.float64), torch.tensor([math.nan],
                                                                        dtype=torch.float64)],
        "n_detectors": [0, -3], "det_spacing": [0.0, -1.0, math.nan]})
    if "angles" in bad or "n_detectors" in bad:
        bad += ["sino"]            # a geometry unlike the sinogram's may be reported on sino
    lf, ref = torch.ops.luser_fast, reference
    geom = (args["det_spacing"], args["source_distance"], args["detector_distance"])
    x, sino, angles, d = args["x"], args["sino"], args["angles"], args["n_detectors"]
    check("raw radon",
          lambda: _cat(lf.radon_forward(x, angles, d, *geom),
                       lf.radon_adjoint(sino, angles, h, w, *geom)),
          lambda: _cat(ref.radon_forward_ref(x, angles, d, *geom),
                       ref.radon_adjoint_ref(sino, angles, (h, w), d, *geom)),
          bad, dtype, raw=True)


# --- NUFFT ----------------------------------------------------------------------------------

@st.composite
def nufft_case(draw):
    dtype = draw(st.sampled_from([torch.complex64, torch.complex128]))
    h, w = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    batch = draw(st.lists(st.integers(0, 2), max_size=2))
    m = draw(st.integers(0, 30))
    kdtype = draw(st.sampled_from([torch.float32, torch.float64]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    k = ((torch.rand(m, 2, generator=g, dtype=torch.float64) * 2 - 1) * math.pi).to(kdtype)
    tol = draw(st.sampled_from([1e-2, 1e-3, 1e-4] + ([1e-6, 1e-9] if dtype == torch.complex128
                                                     else [])))
    oversamp = draw(st.sampled_from([None, 1.25, 2.0]))
    x = torch.randn(*batch, h, w, generator=g, dtype=dtype)
    y = torch.randn(*batch, m, generator=g, dtype=dtype)
    return dtype, x, y, k, tol, oversamp


NUFFT_BAD = {
    "ktraj": NOT_A_TENSOR + [torch.zeros(3, 4), torch.zeros(3), torch.full((2, 2), math.nan),
                             torch.full((2, 2), 4.0), torch.zeros(2, 2, dtype=torch.int64)],
    "tol": [0.0, 0.5, -1e-3, True, "x", math.nan],
    "oversamp": [1.0, 0.5, math.nan, math.inf, "2"],
}


@given(case=nufft_case(), data=st.data())
def fuzz_nufft_type2(case, data):
    dtype, x, _, k, tol, oversamp = case
    args = dict(image=x, ktraj=k, tol=tol, oversamp=oversamp)
    bad = corrupt(data.draw, args, {**NUFFT_BAD, "image": NOT_A_TENSOR + [
        x.real, torch.zeros(3, dtype=dtype), x.to(torch.complex32)]})
    check("nufft_type2", lambda: nufft_type2(**args),
          lambda: nufft_type2(**args, backend="reference"), bad, dtype)


@given(case=nufft_case(), data=st.data())
def fuzz_nufft_type1(case, data):
    dtype, x, y, k, tol, oversamp = case
    args = dict(values=y, ktraj=k, image_size=tuple(x.shape[-2:]), tol=tol, oversamp=oversamp)
    bad = corrupt(data.draw, args, {
        **NUFFT_BAD, "image_size": [0, 2.5, None, (3,), (2, -1)],
        "values": NOT_A_TENSOR + [y.real, torch.zeros(*y.shape[:-1], y.shape[-1] + 1,
                                                      dtype=dtype)]})
    if "ktraj" in bad and "values" not in bad:
        bad.append("values")       # a ktraj of another M may be reported against values
    check("nufft_type1", lambda: nufft_type1(**args),
          lambda: nufft_type1(**args, backend="reference"), bad, dtype)


@given(case=nufft_case(), data=st.data())
def fuzz_nufft_operator(case, data):
    dtype, x, _, k, tol, oversamp = case
    h, w = x.shape[-2:]
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(2, h, w, generator=g, dtype=dtype) if data.draw(st.booleans()) else None
    dens = (torch.rand(k.shape[0], generator=g, dtype=torch.float64)
            if data.draw(st.booleans()) else None)
    args = dict(ktraj=k, image_size=(h, w), coil_maps=maps, density=dens, tol=tol,
                oversamp=oversamp)
    bad = corrupt(data.draw, args, {
        **NUFFT_BAD, "image_size": [0, 2.5, None, (3,), (2, -1)],
        "coil_maps": [torch.zeros(2, h + 1, w, dtype=dtype), torch.zeros(h, w, dtype=dtype),
                      torch.zeros(2, h, w, dtype=torch.int64)],
        "density": [torch.ones(k.shape[0] + 1), -torch.ones(max(1, k.shape[0])),
                    torch.full((max(1, k.shape[0]),), math.nan), "none"]})
    if "ktraj" in bad:
        bad += ["density"]         # a ktraj of another M may be reported against density
    xin = x.reshape(-1, 1, h, w)

    check("NUFFT", lambda: _forward_adjoint(luser_fast.NUFFT, args, xin),
          lambda: _forward_adjoint(reference.NUFFT, args, xin), bad, dtype)


@given(case=nufft_case(), data=st.data())
def fuzz_raw_nufft(case, data):
    """``torch.ops.luser_fast.nufft_type2`` / ``nufft_type1`` with type-correct but invalid
    values."""
    dtype, x, y, k, tol, oversamp = case
    args = dict(image=x, values=y, ktraj=k, tol=tol, oversamp=oversamp or 2.0)
    bad = corrupt(data.draw, args, {
        "image": [x.real, torch.zeros(3, dtype=dtype)],
        "values": [y.real, torch.zeros(*y.shape[:-1], y.shape[-1] + 1, dtype=dtype)],
        "ktraj": [torch.zeros(3, 3), torch.full((2, 2), math.nan), torch.full((2, 2), 4.0)],
        "tol": [0.0, 0.5, -1.0], "oversamp": [1.0, 0.5]})
    if "ktraj" in bad:
        bad += ["values"]          # a ktraj of another M may be reported against values
    lf, ref = torch.ops.luser_fast, reference
    size = tuple(x.shape[-2:])
    image, values, k, acc = args["image"], args["values"], args["ktraj"], (args["tol"],
                                                                           args["oversamp"])
    check("raw nufft",
          lambda: _cat(lf.nufft_type2(image, k, *acc), lf.nufft_type1(values, k, size, *acc)),
          lambda: _cat(ref.nufft_type2_ref(image, k, *acc),
                       ref.nufft_type1_ref(values, k, size, *acc)),
          bad, dtype, raw=True)


# --- Blur, MRI (one class each, no op: checked against their own adjoint) ---------------------

@st.composite
def image_case(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    batch = draw(st.lists(st.integers(0, 2), max_size=2))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    return dtype, torch.rand(*batch, h, w, generator=g, dtype=torch.float64).to(dtype), g


def _adjoint_gap(op, x, y):
    """|<A x, y> - <x, A^H y>| relative to the norms (a linear operator's own check)."""
    ax, aty = op(x), op.adjoint(y)
    lhs = torch.vdot(ax.reshape(-1), y.reshape(-1))
    rhs = torch.vdot(x.reshape(-1), aty.reshape(-1))
    scale = ax.norm() * y.norm() + x.norm() * aty.norm() + 1e-30
    return (lhs - rhs).abs().item() / scale.item()


@given(case=image_case(), data=st.data())
def fuzz_blur(case, data):
    dtype, x, g = case
    h, w = x.shape[-2:]
    args = dict(sigma=data.draw(st.floats(0.3, 3.0)), image_size=None,
                padding=data.draw(st.sampled_from(["circular", "zero"])))
    bad = corrupt(data.draw, args, {"sigma": [0.0, -1.0, math.nan, "1", True],
                                    "padding": ["reflect", 3, None],
                                    "image_size": [0, 2.5, (3,), (2, -1)]})

    def run(_cls=None):
        op = luser_fast.Blur(**args)
        gap = _adjoint_gap(op, x, torch.rand(x.shape, generator=g, dtype=x.dtype))
        assert gap < (1e-5 if dtype == torch.float32 else 1e-12), gap
        return op(x)

    check("Blur", run, run, bad, dtype)


@given(case=image_case(), data=st.data())
def fuzz_mri(case, data):
    dtype, x, g = case
    h, w = x.shape[-2:]
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    z = x.to(cdtype).reshape(-1, 1, h, w)
    mask = torch.rand(h, w, generator=g) > 0.5
    maps = torch.randn(2, h, w, generator=g, dtype=cdtype) if data.draw(st.booleans()) else None
    args = dict(mask=mask, coil_maps=maps)
    bad = corrupt(data.draw, args, {
        "mask": [torch.zeros(h), torch.zeros(0, 0), torch.zeros(2, h, w), "m"],
        "coil_maps": [torch.zeros(2, h + 1, w, dtype=cdtype), torch.zeros(h, w, dtype=cdtype)]})

    def run(_cls=None):
        op = luser_fast.MRI(**args)
        y = op(z)
        gap = _adjoint_gap(op, z, torch.randn(y.shape, generator=g, dtype=cdtype))
        assert gap < (1e-5 if dtype == torch.float32 else 1e-12), gap
        return y

    check("MRI", run, run, bad, cdtype)


TARGETS = [fuzz_radon_forward, fuzz_radon_adjoint, fuzz_raw_radon, fuzz_radon_operator,
           fuzz_nufft_type2, fuzz_nufft_type1, fuzz_raw_nufft, fuzz_nufft_operator, fuzz_blur,
           fuzz_mri]


def main(n_examples: int, seed_value: int) -> None:
    import warnings

    warnings.simplefilter("ignore")      # fallbacks and accuracy floors warn by design
    for target in TARGETS:
        run = settings(max_examples=n_examples, deadline=None, database=None,
                       suppress_health_check=list(HealthCheck))(target)
        seed(seed_value)(run)()
    print(json.dumps(COUNTS, sort_keys=True))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
