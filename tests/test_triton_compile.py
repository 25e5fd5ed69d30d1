"""The Triton kernels compile, as a real launch specialises them, for sm_80 and sm_90
without a GPU, with no register spills.

What is compiled is what the launchers would launch: a subprocess (TRITON_INTERPRET unset:
the interpreter replaces ``@triton.jit`` functions when they are decorated) runs the real
launchers (``shallow_inject_fwd``, ``shallow_map_fwd``, ``shallow_map_bwd``,
``anderson_step_fwd``, ``anderson_mix_fwd``) on meta tensors with
``triton_common.launch`` replaced by a recorder, then hands each recorded launch to
Triton's own launch-time binder (``create_function_from_signature`` and
``JITFunction._pack_args``, the code ``JITFunction.run`` runs before compiling) for the
target: pointers 16-byte aligned (as the CUDA caching allocator returns them; batch-chunk
slices keep it) get ``tt.divisibility = 16``, integers divisible by 16 too, integers equal
to 1 become constants, ``do_not_specialize`` arguments are left alone. Each distinct
specialisation is compiled with ``triton.compile`` and its PTX run through ``ptxas -v``
(sm_80, and sm_90a which Triton emits for target 90): registers and spill bytes. A second
variant compiles the same configurations with no pointer alignment known (a caller's
tensor at an odd offset) for the bounding subset.

The configurations a user hits (``GRID``): the LUSER map with 1-3 image channels,
hidden widths 1, 2, 3, 8, 16, 24, 32, 64, 96, 128 (every class of channel count the
specialisation tells apart: 1, a multiple of 16 or not, with each tile width the
launchers pick, so any width is covered), depth 3 (conv_in, hidden, conv_out: every
IN_MODE and epilogue), GroupNorm or none, all four activations, float32, float16 and
bfloat16, images 64x64, 256x256, 100x100 and 17x23 (H and W multiples of 16 or not;
H or W equal to 1 is not covered), forward, injection and VJP; Anderson step and mix
for float32/float64 histories, m 1..8, D 1, 1000, 1037, 4096, 32768, with and without
damping and a freeze mask. Distinct specialisations only are compiled: 1751, 3502
compiles with the two targets, 0 spill bytes (Triton 3.7.1, its ptxas 12.8; about 40
minutes on 2 cores with a cold Triton cache).

``make test`` compiles the bounding subset (``BOUNDING_PROBLEMS``: the layers that needed
the most registers over the full grid, per dtype, two of them also unaligned, and the
Anderson kernels; 24 specialisations, well under a minute on 2 cores). The full grid
runs with ``LUSER_FAST_COMPILE_ALL=1 pytest tests/test_triton_compile.py`` or
``python tests/test_triton_compile.py --all [--summary]`` (prints a JSON report; the
summary, max registers and spills per kernel, dtype and target, goes to stderr).

The supported Triton range is ``luser_fast.ops.triton_common.SUPPORTED_TRITON``.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

#: per-block shared memory limits (opt-in) in bytes
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
TARGETS = (80, 90)

#: the configurations a user hits (module docstring)
GRID = {
    "dtypes": ("float32", "float16", "bfloat16"),
    "image_channels": (1, 2, 3),
    "channels": (1, 2, 3, 8, 16, 24, 32, 64, 96, 128),
    "norm": (True, False),
    "acts": ("gelu", "relu", "silu", "elu"),
    "sizes": ((64, 64), (256, 256), (100, 100), (17, 23)),
    "anderson_dtypes": ("float32", "float64"),
    "anderson_m": (1, 2, 5, 8),
    "anderson_d": (1, 1000, 1037, 4096, 32768),
}


def _ptxas():
    import triton
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    return bundled if os.path.exists(bundled) else shutil.which("ptxas")


def _ptxas_v(ptx: str, arch: str, fp_fusion: bool = True) -> dict:
    """Registers and spill bytes of ``ptx`` for ``arch``, from ``ptxas -v`` run with the
    flags Triton 3.7's ``make_cubin`` uses (-lineinfo --regAllocOptLevel=2, --fmad=false
    without fp fusion), so the figures are those of the cubin a launch loads."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as fh:
            fh.write(ptx)
        cmd = [_ptxas(), "-lineinfo", *([] if fp_fusion else ["--fmad=false"]), "-v",
               "--regAllocOptLevel=2", f"--gpu-name={arch}", src, "-o", os.path.join(tmp, "k.o")]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"ptxas failed for {arch}:\n{r.stderr}")
    regs = re.search(r"Used (\d+) registers", r.stderr)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", r.stderr)
    return {"registers": int(regs.group(1)) if regs else 0,
            "spill_bytes": int(spill.group(1)) + int(spill.group(2)) if spill else 0}


# --------------------------------------------------------------------------- recording


def _record(run):
    """The launches ``run()`` makes: [(kernel, grid, args, meta)], nothing launched."""
    from luser_fast.ops import triton_common

    launches = []
    saved = triton_common.launch
    triton_common.launch = lambda kernel, grid, device, *args, **meta: launches.append(
        (kernel, triton_common.check_grid(grid), args, meta))
    try:
        run()
    finally:
        triton_common.launch = saved
    return launches


def _shallow_launches(dtype, c_img, c, norm, act, size, depth=3, off64=False):
    """The launches of one LUSER map (injection, forward, VJP); ``off64``: as if every
    tile needed 64-bit lane offsets (images of 8192 x 8192 and more)."""
    import torch

    from luser_fast.ops import shallow as S
    from luser_fast.ops import triton_common

    dt = getattr(torch, dtype)
    meta = {"device": "meta"}
    b, (h, w) = 2, size
    z = torch.empty(b, c_img, h, w, dtype=dt, **meta)
    chans = [c_img] + [c] * (depth - 1) + [c_img]
    ws = [torch.empty(co, ci, 3, 3, dtype=dt, **meta) for ci, co in zip(chans, chans[1:])]
    bs = [torch.empty(co, dtype=dt, **meta) for co in chans[1:]]
    gs = [torch.empty(c, dtype=dt, **meta) for _ in range(depth - 1)] if norm else []
    be = [torch.empty(c, dtype=dt, **meta) for _ in range(depth - 1)] if norm else []
    inj = torch.empty(b, c, h, w, dtype=dt, **meta)
    args = (ws, bs, gs, be, 1, act, 1e-5)

    def run():
        saved = triton_common.needs_int64
        if off64:
            triton_common.needs_int64 = lambda *sizes: True
        try:
            S.shallow_inject_fwd(z, ws[0])
            S.shallow_map_fwd(z, inj, z, *args)
            S.shallow_map_bwd(z, z, inj, z, *args, param_grads=False)
        finally:
            triton_common.needs_int64 = saved
    return _record(run)


def _anderson_launches(dtype, m, d):
    import torch

    from luser_fast.ops import anderson as A

    dt = getattr(torch, dtype)
    meta = {"device": "meta"}
    b = 2
    hf = torch.empty(b, m, d, dtype=dt, **meta)
    x = torch.empty(b, d, dtype=dt, **meta)
    act = torch.empty(b, dtype=torch.bool, **meta)

    def run():
        A.anderson_step_fwd(x, x, hf, hf, act, m - 1, m)
        for beta, best in ((1.0, None), (0.5, x)):
            A.anderson_mix_fwd(hf, hf, torch.empty(b, m, dtype=dt, **meta), act, best, beta)
    return _record(run)


def _specialise(kernel, args, meta, cc, aligned=True):
    """(signature, constexprs, attrs, options) Triton's launch would compile for ``cc``.
    ``aligned=False``: no pointer is known to be 16-byte aligned."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", cc, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **meta)
    if not aligned:
        specialization = [(t, "" if t.startswith("*") and a == "D" else a)
                          for t, a in specialization]
    options, signature, constexprs, attrs = kernel._pack_args(backend, dict(meta), bound,
                                                              specialization, options)
    return signature, constexprs, attrs, options


def _key(kernel, spec):
    signature, constexprs, attrs, options = spec
    return json.dumps([kernel.fn.__name__, signature, sorted((str(k), repr(v)) for k, v in
                                                             constexprs.items()),
                       sorted((str(k), v) for k, v in attrs.items()), options.num_warps,
                       options.num_stages], sort_keys=True)


def _label(kernel, spec):
    """A readable name: kernel, pointer dtype, constexprs, specialised ints."""
    signature, constexprs, attrs, options = spec
    names = list(signature)
    ptr = next(v for v in signature.values() if v.startswith("*f") or v.startswith("*b"))
    consts = ",".join(f"{names[k[0]]}={v}" for k, v in constexprs.items()
                      if names[k[0]].isupper())
    ones = ",".join(f"{names[k[0]]}={v}" for k, v in constexprs.items()
                    if not names[k[0]].isupper() and not names[k[0]].endswith("_ptr"))
    div = ",".join(names[k[0]] for k, v in attrs.items()
                   if v and not signature[names[k[0]]].startswith("*"))
    unaligned = all(not v for k, v in attrs.items() if signature[names[k[0]]].startswith("*"))
    return (f"{kernel.fn.__name__.strip('_')}[{ptr[1:]} {consts} const:{ones or '-'} "
            f"div16:{div or '-'} w{options.num_warps}{' unaligned' if unaligned else ''}]")


def configurations(full: bool = True):
    """{key: (label, kernel, args, meta, aligned)} over ``GRID`` (``full``) or over the
    bounding subset, distinct launch specialisations only (judged for sm_90; sm_80 gets
    the same ones)."""
    out = {}

    def add(launches, aligned=True):
        for kernel, _, args, meta in launches:
            spec = _specialise(kernel, args, meta, 90, aligned)
            key = _key(kernel, spec)
            if key not in out:
                out[key] = (_label(kernel, spec), kernel, args, meta, aligned)
                labels = [v[0] for v in out.values()]
                assert len(set(labels)) == len(labels), f"label {labels[-1]} is not unique"

    g = GRID
    if full:
        for dtype, c_img, c, norm, act, size in itertools.product(
                g["dtypes"], g["image_channels"], g["channels"], g["norm"], g["acts"],
                g["sizes"]):
            add(_shallow_launches(dtype, c_img, c, norm, act, size))
        for dtype, m, d in itertools.product(g["anderson_dtypes"], g["anderson_m"],
                                             g["anderson_d"]):
            add(_anderson_launches(dtype, m, d))
    for problem, variants in BOUNDING_PROBLEMS:
        for aligned, off64 in ((True, False),) + variants:
            add([launch for launch in _shallow_launches(*problem, off64=off64)
                 if _heaviest(_label(launch[0], _specialise(*launch[:1], *launch[2:], 90)))],
                aligned)
    for dtype in g["anderson_dtypes"]:
        add(_anderson_launches(dtype, 5, 1037))
    return out


#: the bounding subset compiled by ``make test``: per storage dtype the LUSER maps whose
#: layers needed the most registers over ``GRID`` (Triton 3.7.1, ptxas 12.8: the float32
#: hidden conv with GroupNorm statistics, 202-206 registers; its VJP, up to 168 with no
#: alignment known; the 16-bit hidden conv and conv_out VJP, 128 = maxnreg), only those
#: layers (``_heaviest``); the
#: first and third also with no pointer alignment known and with 64-bit lane offsets
#: (OFF64, not reached by GRID's sizes); and every Anderson kernel
_ALSO = ((False, False), (True, True))            # (aligned, off64) variants
BOUNDING_PROBLEMS = ((("float32", 3, 24, True, "gelu", (64, 64)), _ALSO),
                     (("float32", 3, 24, True, "elu", (100, 100)), ()),
                     (("bfloat16", 3, 24, True, "gelu", (100, 100)), _ALSO),
                     (("float16", 1, 64, True, "gelu", (100, 100)), ()))


def _heaviest(label: str) -> bool:
    """The layers that bound the others: a forward conv applying GroupNorm-activation on
    its input and computing statistics, a VJP with the GroupNorm-activation epilogue."""
    return ("IN_MODE=2" in label and "STATS=True" in label) or "EPI_NORM=True" in label


def _compile_one(job):
    """Compile one specialisation for one target; its ptxas figures."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    label, (module, name), cc, signature, constexprs, attrs, options = job
    kernel = getattr(importlib.import_module(module), name)
    c = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                       target=GPUTarget("cuda", cc, 32), options=options)
    arch = "sm_90a" if cc == 90 else f"sm_{cc}"
    return label, cc, {"cubin_bytes": len(c.asm["cubin"]), "shared": c.metadata.shared,
                       **_ptxas_v(c.asm["ptx"], arch, options.get("enable_fp_fusion", True)),
                       "ptx_f64_params": len(re.findall(r"\.param \.f64", c.asm["ptx"])),
                       "ptx_f32_params": len(re.findall(r"\.param \.f32", c.asm["ptx"])),
                       "i32_scalar_products": _i32_scalar_products(c.asm["ttir"])}


def _i32_scalar_products(ttir: str) -> list:
    """Names (the kernel's variables) of the scalar 32-bit multiplications in the
    optimised TTIR: offsets that could reach 2**31 must not be among them."""
    names = re.findall(r"%([A-Za-z_]\w*?)(?:_\d+)? = arith\.muli [^\n]*: i32\b", ttir)
    return sorted(set(names))


def jobs(full: bool = False) -> list:
    """(label, kernel reference, target, signature, constexprs, attrs, options) of every
    distinct specialisation (``configurations``) and target."""
    out = []
    for label, kernel, args, meta, aligned in configurations(full).values():
        ref = (kernel.fn.__module__, kernel.fn.__name__)
        for cc in TARGETS:
            signature, constexprs, attrs, options = _specialise(kernel, args, meta, cc, aligned)
            out.append((label, ref, cc, signature, constexprs, attrs, dict(options.__dict__)))
    return out


def compile_report(full: bool = False) -> dict:
    """{"triton": version, "configs": {label: {target: {cubin_bytes, shared, registers,
    spill_bytes, ptx_f64_params, ptx_f32_params}}}} of every distinct specialisation,
    compiled in a pool of worker processes (one per core)."""
    import concurrent.futures
    import multiprocessing

    import triton

    work = jobs(full)
    workers = max(1, min(8, len(os.sched_getaffinity(0))))
    report = {"triton": triton.__version__, "configs": {}}
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        for label, cc, info in pool.map(_compile_one, work, chunksize=1):
            report["configs"].setdefault(label, {})[cc] = info
    return report


def summary(report: dict) -> dict:
    """Max registers and total spill bytes per (kernel, pointer dtype, target)."""
    out = {}
    for label, per_cc in report["configs"].items():
        group = " ".join(label.split(" ")[:1]) + "]"
        for cc, info in per_cc.items():
            s = out.setdefault(f"{group} sm_{cc}", {"configs": 0, "max_registers": 0,
                                                    "spill_bytes": 0})
            s["configs"] += 1
            s["max_registers"] = max(s["max_registers"], info["registers"])
            s["spill_bytes"] += info["spill_bytes"]
    return out


# --------------------------------------------------------------------------- tests

triton = pytest.importorskip("triton", reason="the triton extra is not installed")


def test_supported_triton_range():
    """The installed Triton is in the one supported range (triton_common.SUPPORTED_TRITON),
    which setup.py's extra states too."""
    from luser_fast.ops import triton_common as tc

    assert tc.version_supported(), (triton.__version__, tc.SUPPORTED_TRITON)
    assert tc.TRITON_RANGE[0] < tc.TRITON_RANGE[1]
    assert tc.version_supported("3.7.1") and not tc.version_supported("3.9.0")
    setup = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")
    if os.path.exists(setup):                      # the extra reads the constant
        with open(setup) as fh:
            text = fh.read()
        assert ("SUPPORTED_TRITON" in text
                or f"triton{tc.SUPPORTED_TRITON}" in text.replace(" ", "")), \
            f"setup.py's triton extra must be triton{tc.SUPPORTED_TRITON}"
    import triton.language as tl
    for api in ("dot", "sigmoid", "where", "cdiv", "full", "cast"):
        assert hasattr(tl, api), api
    assert hasattr(tl.math, "erf")


@pytest.fixture(scope="module")
def report():
    if _ptxas() is None:
        pytest.skip("no ptxas (neither triton's bundled one nor nvcc's)")
    full = os.environ.get("LUSER_FAST_COMPILE_ALL") == "1"
    r = subprocess.run([sys.executable, __file__] + (["--all"] if full else []),
                       env=_compiled_env(),
                       capture_output=True, text=True, timeout=6 * 3600 if full else 900)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_kernel_compiles_without_spills(report):
    configs = report["configs"]
    kernels = {label.split("[")[0] for label in configs}
    assert kernels == {"shallow_map_fwd_kernel", "shallow_map_bwd_kernel",
                       "anderson_step_fwd_kernel", "anderson_mix_fwd_kernel"}, kernels
    assert any("unaligned" in label for label in configs)
    bad = {}
    for label, per_cc in configs.items():
        for cc in TARGETS:
            info = per_cc[str(cc)]
            assert info["cubin_bytes"] > 0, (label, cc)
            assert info["shared"] <= SMEM_LIMIT[cc], (label, cc, info)
            assert 0 < info["registers"] <= 255, (label, cc, info)
            if info["spill_bytes"]:
                bad[f"{label} sm_{cc}"] = info
    assert not bad, json.dumps(bad, indent=1)


def test_anderson_mix_takes_damping_in_float64(report):
    """1 - beta reaches the float64 mix kernel as a float64 parameter (a Python float
    argument would be passed as float32: 9.5e-9 relative error)."""
    for label, per_cc in report["configs"].items():
        if label.startswith("anderson_mix_fwd_kernel"):
            assert per_cc["90"]["ptx_f64_params"] == 1 and per_cc["90"]["ptx_f32_params"] == 0, \
                (label, per_cc["90"])


#: scalar 32-bit products the kernels may form (anything else is 64-bit): H W and a
#: weight offset 9 C_in C_out (below 2**31 by ``shallow.size_reason``), a pixel tile's
#: start and a channel block's start (below H W and C_out)
I32_PRODUCTS = {"shallow_map_fwd_kernel": {"hw", "offs_p", "co0", "wt"},
                "shallow_map_bwd_kernel": {"hw", "offs_p", "co0", "wt"},
                "anderson_step_fwd_kernel": set(), "anderson_mix_fwd_kernel": set()}


def test_offsets_that_reach_2_31_are_64_bit(report):
    """Sample, slot, channel-block and tile base offsets are 64-bit products in every
    compiled kernel (m D >= 2**31 in the Anderson history, C H W >= 2**31 in a conv)."""
    for label, per_cc in report["configs"].items():
        kernel = label.split("[")[0]
        extra = set(per_cc["90"]["i32_scalar_products"]) - I32_PRODUCTS[kernel]
        assert not extra, (label, extra)


def _compiled_env():
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def test_specialisation_matches_a_launch():
    """The recorder sees what a launch passes (run in a process whose kernels are not
    built for the interpreter): integers equal to 1 become constants, multiples of 16 and
    aligned pointers get divisibility 16, do_not_specialize arguments (Anderson's slot,
    n) neither, the damping is a float64 argument."""
    r = subprocess.run([sys.executable, __file__, "--check-specialisation"],
                       env=_compiled_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def check_specialisation():
    """The assertions of ``test_specialisation_matches_a_launch``."""
    step, mix, _ = _anderson_launches("float64", 5, 4096)
    kernel, grid, args, meta = step
    assert grid == (4, 2, 1)
    signature, constexprs, attrs, _ = _specialise(kernel, args, meta, 90)
    names = list(signature)
    div = {names[k[0]] for k, v in attrs.items() if v}
    assert {"fz_ptr", "hf_ptr", "D"} <= div and not {"slot", "n"} & div
    assert signature["slot"] == signature["n"] == "i32"
    signature = _specialise(mix[0], mix[2], mix[3], 90)[0]
    assert signature["damp"] == "fp64" and signature["n"] == "i32"
    kernel, _, args, meta = _shallow_launches("float32", 1, 3, True, "gelu", (17, 23))[0]
    signature, constexprs, attrs, _ = _specialise(kernel, args, meta, 90)   # injection
    assert signature["C_in"] == "constexpr" and signature["C_out"] == "i32"
    assert not any(v for k, v in attrs.items() if list(signature)[k[0]] in ("H", "W"))
    signature, _, attrs, _ = _specialise(kernel, args, meta, 90, aligned=False)
    assert not any(v for k, v in attrs.items() if list(signature)[k[0]].endswith("_ptr"))


if __name__ == "__main__":
    if "--check-specialisation" in sys.argv:
        check_specialisation()
        sys.exit(0)
    rep = compile_report(full="--all" in sys.argv)
    if "--summary" in sys.argv:
        print(json.dumps(summary(rep), indent=1), file=sys.stderr)
    print(json.dumps(rep))
