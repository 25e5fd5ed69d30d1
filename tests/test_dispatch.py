"""One dispatch path: backend preference in eager and compiled code, announced fallbacks,
the reference binding, and the package's import structure (core / reference / fast)."""
import ast
import pathlib
import warnings

import pytest
import torch

import luser_fast
from luser_fast import backends, reference
from luser_fast.ops import nufft as nufft_ops
from luser_fast.ops import radon as radon_ops

PACKAGE = pathlib.Path(luser_fast.__file__).parent


def _imports(path):
    """(module the import is relative to or absolute name, imported names) of a file."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield node.level, node.module or "", [a.name for a in node.names]


def _resolve(path, level, module):
    """Absolute dotted module of a (possibly relative) import in ``path``."""
    if level == 0:
        return module
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    base = parts[:-level]
    return ".".join(base + ([module] if module else []))


def test_no_private_name_crosses_module_boundaries():
    """No module outside reference/ imports a private name from it; the reference imports
    only the core; no private name crosses between ops/ modules; the core imports nothing
    else of the package but ``luser_fast.constants`` (the C++ headers' values)."""
    problems = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        for level, module, names in _imports(path):
            target = _resolve(path, level, module)
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if target.startswith("luser_fast.reference") and not rel.startswith("reference/"):
                problems += [f"{rel}: {target}.{n}" for n in private]
            if rel.startswith("ops/") and target.startswith("luser_fast.ops"):
                problems += [f"{rel}: {target}.{n}" for n in private]
            if (rel.startswith("reference/") and rel != "reference/__init__.py"
                    and target.startswith("luser_fast.")
                    and not target.startswith(("luser_fast.core", "luser_fast.reference"))):
                problems.append(f"{rel} imports {target} (the reference imports only the core)")
            if (rel.startswith("core/") and target.startswith("luser_fast.")
                    and not target.startswith(("luser_fast.core", "luser_fast.constants"))):
                problems.append(f"{rel} imports {target} (the core imports only itself and "
                                "the constants read from the C++ headers)")
    assert not problems, problems


def test_compiled_code_honours_the_preference(monkeypatch):
    """backends.select runs while torch.compile traces: LUSER_FAST_BACKEND=reference puts
    the reference into the compiled graph, auto the custom op."""
    calls = []
    ref = radon_ops.radon_forward_ref

    def spy(*args, **kwargs):
        calls.append(1)
        return ref(*args, **kwargs)

    monkeypatch.setattr(radon_ops, "radon_forward_ref", spy)
    x = torch.rand(2, 8, 8, dtype=torch.float64)
    angles = torch.linspace(0, 3, 5, dtype=torch.float64)
    want = ref(x, angles)
    torch._dynamo.reset()
    monkeypatch.setenv("LUSER_FAST_BACKEND", "reference")
    got = torch.compile(lambda t: radon_ops.radon_forward(t, angles), backend="aot_eager")(x)
    assert calls and torch.equal(got, want)
    calls.clear()
    torch._dynamo.reset()
    monkeypatch.delenv("LUSER_FAST_BACKEND")
    got = torch.compile(lambda t: radon_ops.radon_forward(t, angles), backend="aot_eager")(x)
    assert bool(calls) == (not radon_ops.HAS_CPU_KERNELS)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch._dynamo.reset()


@pytest.mark.skipif(not nufft_ops.HAS_CPU_KERNELS, reason="needs the C++ extension")
def test_fallback_to_the_reference_is_announced_once(monkeypatch):
    """A kernel wider than the compiled kernels take (here: their limit lowered) runs the
    reference and says so once, naming the op and why."""
    monkeypatch.setattr(nufft_ops, "MAX_WIDTH", 4)
    k = (torch.rand(20, 2, dtype=torch.float64) * 2 - 1) * 3.0
    x = torch.randn(1, 6, 6, dtype=torch.complex128)
    backends._warned.clear()
    with pytest.warns(RuntimeWarning, match="nufft_type2 runs its reference: .*width"):
        y = nufft_ops.nufft_type2(x, k, tol=1e-6, oversamp=1.25)
    torch.testing.assert_close(y, reference.nufft_type2_ref(x, k, 1e-6, 1.25))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nufft_ops.nufft_type2(x, k, tol=1e-6, oversamp=1.25)


def test_reference_classes_run_the_reference():
    """The bound classes give the oracle's results bitwise, whatever the environment."""
    op = reference.Radon(10, angles=7)
    x = torch.rand(2, 1, 10, 10, dtype=torch.float64)
    assert torch.equal(op(x), reference.radon_forward_ref(x, op.angles))
    sino = op(x)
    assert torch.equal(op.adjoint(sino), reference.radon_adjoint_ref(sino, op.angles, 10))
    assert torch.equal(op.fbp(sino), reference.radon_fbp_ref(sino, op.angles, 10))
    k = (torch.rand(30, 2, dtype=torch.float64) * 2 - 1) * 3.0
    nop = reference.NUFFT(k, 8)
    z = torch.randn(2, 1, 8, 8, dtype=torch.complex128)
    assert torch.equal(nop(z)[:, 0], reference.nufft_type2_ref(z[:, 0], k))


def test_info_table_lists_every_op():
    for device in ("cpu", "cuda"):
        table = backends.table(device)
        assert set(table) == set(backends.OPS)
        assert {"anderson_mix", "shallow_inject"} <= set(table)
