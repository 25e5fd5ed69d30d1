"""Constants that the C++ / CUDA kernels and the Python launchers share.

Their one definition is ``csrc/common/constants.h`` (the ``LF_CONSTANTS`` list). The values
here come from the compiled extension (``luser_fast._C.constants()``: what the compiler
made of that list) or, when the extension is not built, from that header as shipped in
the package (``luser_fast/_cuda/src/common/constants.h``; in a source checkout without a
build, ``csrc/common/constants.h``), parsed. Python names are the C++ names without the
leading ``k``, in upper snake case (``kRadonRayBytes``: ``RADON_RAY_BYTES``).

Importing this module never fails for a missing extension and never touches CUDA.
"""
from __future__ import annotations

import ast
import logging
import os
import re

from . import _ext

__all__ = [
    "RADON_RAY_BYTES", "RADON_IMAGES_PER_THREAD", "CONE_IMAGES_PER_THREAD",
    "NUFFT_MAX_WIDTH", "NUFFT_RANGE_SLACK", "NUFFT_MAX_ABS_K", "NUFFT3_SORT_TILE",
    "SOURCE", "values", "parse_header", "header_paths", "python_name",
]

_log = logging.getLogger("luser_fast")
_HERE = os.path.dirname(os.path.abspath(__file__))


def header_paths() -> list[str]:
    """Where the constants header may be, in the order it is looked for: as shipped in the
    package, then in the source checkout the package sits in."""
    return [os.path.join(_HERE, "_cuda", "src", "common", "constants.h"),
            os.path.join(os.path.dirname(_HERE), "csrc", "common", "constants.h")]


def python_name(cpp_name: str) -> str:
    """``kRadonRayBytes`` -> ``RADON_RAY_BYTES``."""
    if not re.fullmatch(r"k[A-Z]\w*", cpp_name):
        raise ValueError(f"constant names are kCamelCase, got {cpp_name!r}")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cpp_name[1:]).upper()


def _entries(text: str) -> list[tuple[str, str, str]]:
    """(type, name, value expression) of every X(...) entry of LF_CONSTANTS in ``text``."""
    m = re.search(r"#define\s+LF_CONSTANTS\(X\)((?:[^\n]*\\\n)*[^\n]*)", text)
    if m is None:
        raise ValueError("no '#define LF_CONSTANTS(X)' list")
    body = re.sub(r"/\*.*?\*/", " ", m.group(1).replace("\\\n", " "), flags=re.S)
    entries, pos = [], 0
    while (start := body.find("X(", pos)) >= 0:
        depth, end = 0, start + 1
        for end in range(start + 1, len(body)):
            depth += {"(": 1, ")": -1}.get(body[end], 0)
            if depth == 0:
                break
        else:
            raise ValueError(f"unbalanced parentheses in {body[start:start + 60]!r}")
        parts = body[start + 2:end].split(",", 2)
        if len(parts) != 3:
            raise ValueError(f"an entry is X(type, kName, value), got {body[start:end + 1]!r}")
        entries.append(tuple(p.strip() for p in parts))
        pos = end + 1
    if body[pos:].strip():
        raise ValueError(f"text after the last entry: {body[pos:].strip()!r}")
    return entries


def _evaluate(expr: str, known: dict, cpp_name: str):
    """Value of a C++ arithmetic expression of int / double literals and earlier entries,
    with C++'s arithmetic (int / int truncates; int op double is double)."""
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.Name) and node.id in known:
            return known[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            v = ev(node.operand)
            return v if isinstance(node.op, ast.UAdd) else -v
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult,
                                                                ast.Div)):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if isinstance(a, int) and isinstance(b, int):      # C++: truncates toward zero
                q = abs(a) // abs(b)
                return q if (a < 0) == (b < 0) else -q
            return a / b
        raise ValueError(f"{cpp_name}: {expr!r} is not an expression of int / double literals "
                         "and earlier constants with + - * / and parentheses")

    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"{cpp_name}: cannot read {expr!r}") from exc
    return ev(tree)


def parse_header(path: str) -> dict:
    """{C++ name: value} of the LF_CONSTANTS list in the header at ``path``, evaluated as the
    C++ compiler does (each value converted to its declared type, int or double).

    Raises:
        ValueError: the file holds no such list, or an entry it cannot read.
    """
    with open(path) as fh:
        text = fh.read()
    out: dict = {}
    for ctype, name, expr in _entries(text):
        if ctype not in ("int", "double"):
            raise ValueError(f"{path}: {name}: type must be int or double, got {ctype!r}")
        python_name(name)
        if name in out:
            raise ValueError(f"{path}: {name} is defined twice")
        value = _evaluate(expr, out, name)
        if ctype == "int":
            if not isinstance(value, int):
                raise ValueError(f"{path}: {name} is an int but {expr!r} is not integral")
        else:
            value = float(value)
        out[name] = value
    return out


def _load() -> tuple[dict, str]:
    mod = _ext.extension()
    exported = getattr(mod, "constants", None) if mod is not None else None
    headers = [p for p in header_paths() if os.path.exists(p)]
    if exported is not None:
        got = dict(exported())
        if headers:
            parsed = parse_header(headers[0])
            if parsed != got:
                _log.warning("luser_fast: the C++ extension was built with other constants "
                             "(%s) than %s holds (%s); rebuild the extension", got,
                             headers[0], parsed)
        return got, "extension"
    if not headers:
        raise ImportError("luser_fast.constants: neither the C++ extension nor the shared "
                          "header (common/constants.h) is present; looked in "
                          + ", ".join(header_paths()))
    return parse_header(headers[0]), headers[0]


_CPP, SOURCE = _load()
#: {Python name: value} of every shared constant
_VALUES = {python_name(k): v for k, v in _CPP.items()}


def values() -> dict:
    """{Python name: value} of every shared constant."""
    return dict(_VALUES)


#: bytes of one Radon ray: sizeof(JosephRay), csrc/radon/joseph.h (the CUDA ray table is
#: allocated as raw bytes)
RADON_RAY_BYTES: int = _VALUES["RADON_RAY_BYTES"]
#: images per thread of the Radon CUDA kernels (the launch grid's y extent is sized from it)
RADON_IMAGES_PER_THREAD: int = _VALUES["RADON_IMAGES_PER_THREAD"]
#: volumes per thread of the cone-beam CUDA kernels (the launch grid's y extent is sized
#: from it)
CONE_IMAGES_PER_THREAD: int = _VALUES["CONE_IMAGES_PER_THREAD"]
#: widest NUFFT kernel (cells per dimension) the compiled kernels take
NUFFT_MAX_WIDTH: int = _VALUES["NUFFT_MAX_WIDTH"]
#: relative slack on the NUFFT's [-pi, pi] range (float32 pi is slightly above pi)
NUFFT_RANGE_SLACK: float = _VALUES["NUFFT_RANGE_SLACK"]
#: largest |k| (radians) a NUFFT trajectory may hold: pi (1 + NUFFT_RANGE_SLACK)
NUFFT_MAX_ABS_K: float = _VALUES["NUFFT_MAX_ABS_K"]
#: side of the cell tiles that order a 3-D NUFFT plan's points within a bin (the C++ plan
#: and the CUDA plan's sort key)
NUFFT3_SORT_TILE: int = _VALUES["NUFFT3_SORT_TILE"]
