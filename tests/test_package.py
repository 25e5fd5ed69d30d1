import json
import os
import subprocess
import sys

import pytest

from luser_fast import backends


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_import_is_quiet_and_never_touches_cuda():
    r = _run("import torch, luser_fast, luser_fast.reference; "
             "assert not torch.cuda.is_initialized(); print('ok')")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok" and "Traceback" not in r.stderr


def test_backend_env_validation(monkeypatch):
    monkeypatch.setenv("LUSER_FAST_BACKEND", "gpu")
    with pytest.raises(ValueError, match="LUSER_FAST_BACKEND"):
        backends.select("radon_forward")
    monkeypatch.setenv("LUSER_FAST_BACKEND", "reference")
    assert backends.select("radon_forward", "cpu") == "reference"
    # the global variable is a preference: where triton cannot serve, the op picks as auto
    monkeypatch.setenv("LUSER_FAST_BACKEND", "triton")
    auto = {op: backends.select(op, "cpu", "auto") for op in backends.OPS}
    assert {op: backends.select(op, "cpu") for op in backends.OPS} == auto
    # a per-op variable or a backend= argument is a request and raises naming the op
    monkeypatch.setenv("LUSER_FAST_BACKEND_SHALLOW_MAP", "cuda")
    with pytest.raises(RuntimeError, match="'cuda' was requested for shallow_map"):
        backends.select("shallow_map", "cpu")
    assert backends.select("radon_forward", "cpu") == auto["radon_forward"]
    with pytest.raises(RuntimeError, match="requested for anderson_mix"):
        backends.select("anderson_mix", "cpu", "cuda")
    monkeypatch.setenv("LUSER_FAST_BACKEND_SHALLOW_MAP", "gpu")
    with pytest.raises(ValueError, match="LUSER_FAST_BACKEND_SHALLOW_MAP"):
        backends.select("shallow_map", "cpu")
    monkeypatch.delenv("LUSER_FAST_BACKEND_SHALLOW_MAP")
    monkeypatch.delenv("LUSER_FAST_BACKEND")
    assert backends.select("anderson_step", "cpu") in ("cpu", "reference")
    with pytest.raises(ValueError, match="unknown op"):
        backends.select("fft")


def test_cli_info_json():
    r = subprocess.run([sys.executable, "-m", "luser_fast.cli", "info", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert set(info["ops_cpu"]) == set(backends.OPS)
    assert info["cpu_extension"] or info["cpu_extension_reason"]


def test_cli_rejects_unknown_command():
    r = subprocess.run([sys.executable, "-m", "luser_fast.cli", "frobnicate"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_pure_python_install_serves_the_reference(tmp_path):
    """``LUSER_FAST_BUILD_EXT=0 pip install .`` installs no compiled code; that install
    imports without a traceback and passes the reference adjoint tests."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--no-build-isolation", "--no-cache-dir", "--target", str(target), root],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "LUSER_FAST_BUILD_EXT": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    compiled = [p.name for p in (target / "luser_fast").rglob("*") if p.suffix in (".so", ".fatbin")]
    assert compiled == []
    env = {**os.environ, "PYTHONPATH": str(target)}
    # a development checkout's editable install resolves luser_fast._C by name, whatever
    # luser_fast.__path__ says: drop its finder so only the pure install is seen
    alone = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
             "if '__editable__' not in getattr(f, '__module__', '')]; ")
    r = subprocess.run([sys.executable, "-c", alone +
                        "import luser_fast, luser_fast._ext as e; print(luser_fast.__file__); "
                        "print(e.build_info()['cpu_extension'])"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    path, built = r.stdout.split()
    assert path.startswith(str(target)) and built == "False"
    tests = [os.path.join(root, "tests", f"test_reference_{n}.py") for n in ("radon", "blur_mri")]
    r = subprocess.run([sys.executable, "-c", alone + "import pytest; sys.exit(pytest.main("
                        f"{tests!r} + ['-q', '-p', 'no:cacheprovider', '-k', "
                        "'adjoint or analytic']))"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:]
    assert " passed" in r.stdout
