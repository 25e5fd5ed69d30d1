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
    monkeypatch.setenv("LUSER_FAST_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="cannot serve"):
        backends.select("shallow_map", "cpu")
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
