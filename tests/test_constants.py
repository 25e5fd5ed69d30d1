"""The constants C++ / CUDA and Python share have one definition, csrc/common/constants.h:
the extension's export, the headers (source and shipped copy, parsed) and
luser_fast.constants agree, and the struct layouts Python relies on match them."""
from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys

import pytest

import luser_fast.constants as K
from luser_fast import _ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = os.path.join(ROOT, "csrc", "common", "constants.h")
SHIPPED = os.path.join(ROOT, "luser_fast", "_cuda", "src", "common", "constants.h")
EXT = _ext.extension()
needs_ext = pytest.mark.skipif(EXT is None or not hasattr(EXT, "constants"),
                               reason="the C++ extension is not built (or predates constants())")


def test_header_lists_the_shared_constants():
    parsed = K.parse_header(HEADER)
    assert set(parsed) == {"kRadonRayBytes", "kRadonImagesPerThread", "kConeImagesPerThread",
                           "kNufftMaxWidth", "kNufftRangeSlack", "kNufftMaxAbsK",
                           "kNufft3SortTile"}
    assert type(parsed["kRadonRayBytes"]) is int and type(parsed["kNufftMaxAbsK"]) is float
    # the reference's range check, math.pi * (1 + slack), to the bit
    assert parsed["kNufftMaxAbsK"] == math.pi * (1 + parsed["kNufftRangeSlack"])


@pytest.mark.skipif(not os.path.exists(SHIPPED), reason="no shipped CUDA sources (not built)")
def test_shipped_header_is_the_source_header():
    assert K.parse_header(SHIPPED) == K.parse_header(HEADER)


@needs_ext
def test_extension_exports_what_the_header_says():
    assert EXT.constants() == K.parse_header(HEADER)
    assert K.SOURCE == "extension"


@needs_ext
def test_struct_sizes_match_the_constants():
    assert EXT.struct_sizes() == {"JosephRay": K.RADON_RAY_BYTES}


def test_python_module_holds_every_constant():
    parsed = K.parse_header(HEADER)
    want = {K.python_name(name): value for name, value in parsed.items()}
    assert K.values() == want
    for name, value in want.items():
        assert getattr(K, name) == value and type(getattr(K, name)) is type(value), name
        assert name in K.__all__
    assert K.python_name("kNufftMaxAbsK") == "NUFFT_MAX_ABS_K"


def test_without_the_extension_the_header_serves(monkeypatch):
    try:
        monkeypatch.setattr(_ext, "extension", lambda: None)
        mod = importlib.reload(K)
        assert mod.SOURCE in K.header_paths()
        assert mod.values() == {K.python_name(k): v for k, v in K.parse_header(HEADER).items()}
    finally:
        monkeypatch.undo()
        importlib.reload(K)


def test_import_touches_no_cuda():
    code = ("import sys, torch, luser_fast.constants as K; "
            "assert 'cupy' not in sys.modules; assert not torch.cuda.is_initialized(); "
            "print(K.RADON_RAY_BYTES)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(K.RADON_RAY_BYTES)


@pytest.mark.parametrize("module, name, constant", [
    ("luser_fast.ops.radon", "_RAY_BYTES", "RADON_RAY_BYTES"),
    ("luser_fast.ops.radon", "_IMAGES_PER_THREAD", "RADON_IMAGES_PER_THREAD"),
    ("luser_fast.ops.nufft", "MAX_WIDTH", "NUFFT_MAX_WIDTH"),
    ("luser_fast.core.validate", "RANGE_SLACK", "NUFFT_RANGE_SLACK"),
    ("luser_fast.reference.nufft", "_RANGE_SLACK", "NUFFT_RANGE_SLACK"),
])
def test_hand_kept_copies_agree(module, name, constant):
    """A copy the Python side still keeps by hand (until it imports luser_fast.constants)
    holds the header's value; one that is gone (or a module that moved) passes."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} is gone")
    want = getattr(K, constant)
    assert getattr(mod, name, want) == want


# --- the header parser --------------------------------------------------------------------

def _header(tmp_path, body: str) -> str:
    path = tmp_path / "constants.h"
    lines = body.strip().splitlines()
    path.write_text("#define LF_CONSTANTS(X) \\\n"
                    + "".join(f"  {line} \\\n" for line in lines[:-1]) + f"  {lines[-1]}\n")
    return str(path)


def test_parser_evaluates_as_cpp(tmp_path):
    path = _header(tmp_path, """
        /* a comment, with (parentheses), commas \
           and a continuation */
        X(int, kA, 7)
        X(int, kB, -7 / 2)
        X(double, kC, kA / 2)
        X(double, kD, 3.0 * (1.0 + 1e-5))
        X(double, kE, kA * 0.5 + kD)
    """)
    got = K.parse_header(path)
    assert got == {"kA": 7, "kB": -3, "kC": 3.0, "kD": 3.0 * (1.0 + 1e-5), "kE": 3.5 + got["kD"]}
    assert type(got["kC"]) is float


@pytest.mark.parametrize("body, message", [
    ("X(float, kA, 1)", "type must be int or double"),
    ("X(int, kA, 1.5)", "not integral"),
    ("X(int, kA, kB)", "not an expression"),
    ("X(int, kA, 1)\nX(int, kA, 2)", "defined twice"),
    ("X(int, kA, 1 << 3)", "not an expression"),
    ("X(int, A, 1)", "kCamelCase"),
    ("X(int, kA)", "X(type, kName, value)"),
])
def test_parser_rejects_what_it_cannot_read(tmp_path, body, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        K.parse_header(_header(tmp_path, body))


def test_parser_needs_the_list(tmp_path):
    path = tmp_path / "other.h"
    path.write_text("constexpr int kA = 1;\n")
    with pytest.raises(ValueError, match="LF_CONSTANTS"):
        K.parse_header(str(path))
