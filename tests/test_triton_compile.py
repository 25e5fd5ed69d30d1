"""Every shipped Triton kernel configuration compiles for sm_80 and sm_90 without a GPU.

``triton.compile`` runs in a subprocess with TRITON_INTERPRET unset (the interpreter
replaces ``@triton.jit`` functions when they are decorated, so a process that imported the
kernels for the interpreter cannot compile them). For each (kernel, configuration,
target) the subprocess reports the cubin size, the shared memory Triton allocated, and
``ptxas -v`` on the emitted PTX (sm_80, and sm_90a which Triton emits for target 90):
registers and spill bytes. The tests require a cubin, shared memory under the device's
per-block opt-in limit and 0 spill bytes.

Compiling is slow on a small CPU (several seconds per kernel and target), so the test
compiles the configurations that bound the others: for each kernel its largest tile
(64 pixels x 32 x 16 channels in float32, 64 x 32 x 32 in bfloat16) with every optional input and
epilogue enabled, in float32 (IEEE dot) and bfloat16 (tensor-core dot). Run
``python tests/test_triton_compile.py --all`` to compile and print every shipped
configuration (all tiles, modes and dtypes) as JSON.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

#: Triton versions the kernels are written for: 3.6 (GPU machines), 3.7.1 (CI); they avoid
#: ``tl.make_block_ptr`` (removed in 3.9) and use only loads/stores with masks, tl.dot with
#: ``input_precision``, tl.math.erf, tl.sigmoid, tl.static_range
SUPPORTED = ((3, 6), (3, 9))          # [low, high)
#: per-block shared memory limits (opt-in) in bytes
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
TARGETS = (80, 90)


def _ptxas():
    import triton
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    return bundled if os.path.exists(bundled) else shutil.which("ptxas")


def _ptxas_v(ptx: str, arch: str) -> dict:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as fh:
            fh.write(ptx)
        r = subprocess.run([_ptxas(), "-v", f"-arch={arch}", src, "-o", os.path.join(tmp, "k.o")],
                           capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"ptxas failed for {arch}:\n{r.stderr}")
    regs = re.search(r"Used (\d+) registers", r.stderr)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", r.stderr)
    return {"registers": int(regs.group(1)) if regs else 0,
            "spill_bytes": int(spill.group(1)) + int(spill.group(2)) if spill else 0}


#: the configurations compiled by the test (see the module docstring)
BOUNDING = ("anderson_step_fp64_m5", "anderson_mix_fp64_m5_g1",
            "shallow_fwd_fp32_co32_ci16_mode2_stats1", "shallow_fwd_bf16_co32_ci32_mode2_stats1",
            "shallow_bwd_fp32_co32_ci16_gn1_epi1", "shallow_bwd_bf16_co32_ci32_gn1_epi1")


def _configs():
    """(name, kernel, signature, constexprs, num_warps) of every shipped configuration."""
    from luser_fast.ops import anderson as A
    from luser_fast.ops import shallow as S

    out = []
    for t in ("fp32", "fp64"):
        p = f"*{t}"
        sig = {"fz_ptr": p, "z_ptr": p, "hf_ptr": p, "hg_ptr": p, "active_ptr": "*i8",
               "part_ptr": p, "D": "i32", "slot": "i32", "n": "i32", "n_tiles": "i32",
               "M": "constexpr", "BLOCK_D": "constexpr"}
        out.append((f"anderson_step_{t}_m5", A._anderson_step_fwd_kernel, sig,
                    {"M": 5, "BLOCK_D": A._BLOCK_D}, A._NUM_WARPS))
        for has_g in (False, True):
            sig = {"hf_ptr": p, "hg_ptr": p, "alpha_ptr": p, "active_ptr": "*i8",
                   "best_ptr": p, "out_ptr": p, "D": "i32", "n": "i32", "damp": "fp32",
                   "M": "constexpr", "HAS_G": "constexpr", "HAS_BEST": "constexpr",
                   "BLOCK_D": "constexpr"}
            out.append((f"anderson_mix_{t}_m5_g{int(has_g)}", A._anderson_mix_fwd_kernel, sig,
                        {"M": 5, "HAS_G": has_g, "HAS_BEST": True, "BLOCK_D": A._BLOCK_D},
                        A._NUM_WARPS))
    ints = {"C_in": "i32", "C_out": "i32", "H": "i32", "W": "i32", "n_ptiles": "i32"}
    # the largest tiles the launchers pick per dtype and the narrow ones of conv_in /
    # conv_out (C_in or C_out <= 16)
    for t in ("fp32", "fp16", "bf16"):
        p = f"*{t}"
        max_co, max_ci = S._MAX_BLOCKS[4 if t == "fp32" else 2]
        warps = S._NUM_WARPS[4 if t == "fp32" else 2]
        tiles = ((max_co, max_ci), (max_co, 16), (16, max_ci))
        for (bco, bci) in tiles:
            for mode, add, stats in ((0, True, True), (2, False, True), (2, True, False)):
                sig = {"x_ptr": p, "w_ptr": p, "bias_ptr": "*fp32", "scale_ptr": "*fp32",
                       "shift_ptr": "*fp32", "add_ptr": p, "out_ptr": p, "psum_ptr": "*fp32",
                       "psq_ptr": "*fp32", **ints}
                const = {"IN_MODE": mode, "ACT": 0, "HAS_BIAS": True, "HAS_ADD": add,
                         "STATS": stats, "IEEE": t == "fp32", "BLOCK_P": S._BLOCK_P,
                         "BLOCK_CO": bco, "BLOCK_CI": bci}
                sig.update({k: "constexpr" for k in const})
                out.append((f"shallow_fwd_{t}_co{bco}_ci{bci}_mode{mode}_stats{int(stats)}",
                            S._shallow_map_fwd_kernel, sig, const, warps))
            for in_gn, epi, stats in ((True, True, True), (False, True, True), (True, False, False)):
                sig = {"g_ptr": p, "y_in_ptr": p, "w_ptr": p, "p_ptr": "*fp32", "q_ptr": "*fp32",
                       "r_ptr": "*fp32", "y_out_ptr": p, "scale_ptr": "*fp32",
                       "shift_ptr": "*fp32", "out_ptr": p, "psum_ptr": "*fp32",
                       "pdot_ptr": "*fp32", **ints}
                const = {"IN_GN": in_gn, "EPI_ACT": epi, "EPI_NORM": epi, "ACT": 0,
                         "STATS": stats, "IEEE": t == "fp32", "BLOCK_P": S._BLOCK_P,
                         "BLOCK_CO": bco, "BLOCK_CI": bci}
                sig.update({k: "constexpr" for k in const})
                out.append((f"shallow_bwd_{t}_co{bco}_ci{bci}_gn{int(in_gn)}_epi{int(epi)}",
                            S._shallow_map_bwd_kernel, sig, const, warps))
    return out


def _compile_one(job):
    name, cc = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    _, kernel, sig, const, warps = next(c for c in _configs() if c[0] == name)
    c = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=const),
                       target=GPUTarget("cuda", cc, 32), options={"num_warps": warps})
    arch = "sm_90a" if cc == 90 else f"sm_{cc}"
    return name, cc, {"cubin_bytes": len(c.asm["cubin"]), "shared": c.metadata.shared,
                      **_ptxas_v(c.asm["ptx"], arch)}


def compile_report(names=None) -> dict:
    """{config name: {target: {cubin_bytes, shared, registers, spill_bytes}}} for ``names``
    (default: all), compiled in a pool of worker processes (one per core, at most 4)."""
    import concurrent.futures
    import multiprocessing

    import triton

    names = [c[0] for c in _configs()] if names is None else list(names)
    jobs = [(n, cc) for n in names for cc in TARGETS]
    workers = max(1, min(4, os.cpu_count() or 1))
    report = {"triton": triton.__version__}
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        for name, cc, info in pool.map(_compile_one, jobs):
            report.setdefault(name, {})[cc] = info
    return report


triton = pytest.importorskip("triton", reason="the triton extra is not installed")


def test_supported_triton_range():
    """The installed Triton is in the range the kernels are written for."""
    version = tuple(int(x) for x in re.findall(r"\d+", triton.__version__)[:2])
    assert SUPPORTED[0] <= version < SUPPORTED[1], (triton.__version__, SUPPORTED)
    import triton.language as tl
    for api in ("dot", "sigmoid", "static_range", "where", "cdiv"):
        assert hasattr(tl, api), api
    assert hasattr(tl.math, "erf")


@pytest.fixture(scope="module")
def report():
    if _ptxas() is None:
        pytest.skip("no ptxas (neither triton's bundled one nor nvcc's)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_kernel_compiles_without_spills(report):
    names = [k for k in report if k != "triton"]
    assert sorted(names) == sorted(BOUNDING)
    assert {c[0] for c in _configs()} >= set(BOUNDING)
    for name in names:
        for cc in TARGETS:
            info = report[name][str(cc)]
            assert info["cubin_bytes"] > 0, (name, cc)
            assert info["shared"] <= SMEM_LIMIT[cc], (name, cc, info)
            assert info["spill_bytes"] == 0, (name, cc, info)
            assert 0 < info["registers"] <= 255, (name, cc, info)


if __name__ == "__main__":
    print(json.dumps(compile_report(None if "--all" in sys.argv else BOUNDING)))
