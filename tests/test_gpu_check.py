"""The GPU check (``make gpu-check``, ``luser-fast bench --suite gpu``) and the GPU part of the
report, without a GPU.

* With CUDA absent, ``make gpu-check`` says what it would run and exits 0, installing and
  running nothing.
* BENCHMARKS.md rendered from a recorded GPU run (``tests/fixtures/gpu_run.json``, a
  hand-written synthetic run) has each GPU verdict computed from its number: a figure below
  its goal reads "missed", one above "met", one the run lacks "not measured" with the
  reason the run records; no GPU goal is dropped, with or without a GPU run.
* The check's real-run path, with the GPU, CuPy and the commands it runs replaced: CuPy for
  the driver's CUDA major, the CuPy-backed benchmarks recorded as not measured when no
  CuPy works, the run keyed by GPU name, driver, CUDA and torch versions.
* The wall-clock budget: a step past it is stopped, and the benchmark cases skip once the
  deadline has passed.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import bench_report

from luser_fast.profile import bench, harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "gpu_run.json")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(),
                             reason="a CUDA device is present: the check would really run")


def goal_rows(text: str) -> dict:
    """The goal table's rows: figure -> (goal, measured, verdict)."""
    head = text.split("## Goal figures", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in head.splitlines():
        if line.startswith("| #"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[1]] = tuple(cells[2:])
    return rows


def gpu_rows(text: str) -> dict:
    return {k: v for k, v in goal_rows(text).items() if k.startswith("GPU")}


def verdict(rows: dict, part: str) -> str:
    (key,) = [k for k in rows if part in k]
    return rows[key][2]


def render(folder) -> str:
    return bench_report().render(str(folder), None)


# --- the report --------------------------------------------------------------------------------

@pytest.fixture
def fixture_results(tmp_path):
    shutil.copyfile(FIXTURE, tmp_path / "gpu_synthetic_test_gpu.json")
    return tmp_path


def test_verdicts_follow_the_recorded_numbers(fixture_results):
    text = render(fixture_results)
    rows = gpu_rows(text)
    # above the goal: met; below: missed (never "met" whatever was measured)
    assert rows_value(rows, "Radon CUDA forward") == ("50,000", "met")
    assert rows_value(rows, "Radon CUDA adjoint") == ("12,000", "**missed**")
    assert rows_value(rows, "NUFFT CUDA type2") == ("7e+08", "met")
    assert verdict(rows, "Triton shallow map forward") == "met (of 2 cases)"
    assert verdict(rows, "Triton shallow map VJP") == "**missed** (of 2 cases)"  # slowest 0.8x
    assert verdict(rows, "Triton Anderson step + mix /") == "met (of 2 cases)"
    assert rows_value(rows, "fraction of peak DRAM bandwidth") == ("0.31", "**missed**")
    assert rows_value(rows, "peak training memory") == ("9.5x", "met")
    # a figure the run lacks: not measured, with the reason the run records
    assert rows_value(rows, "NUFFT CUDA type1") == (
        "not measured", "not measured: stopped by the wall-clock budget")
    assert "**Not a measurement**" in text and "### SYNTHETIC GPU (test fixture)" in text
    assert "| forward | 2.5 / **2.56** / 2.7 | 50,000 |" in text       # its section's tables


def rows_value(rows, part):
    (key,) = [k for k in rows if part in k]
    return rows[key][1], rows[key][2]


def test_every_gpu_goal_is_in_the_table_with_or_without_a_gpu_run(fixture_results, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    without = gpu_rows(render(empty))
    with_run = gpu_rows(render(fixture_results))
    assert len(without) == len(with_run) == 9
    assert all(v[2] == "not measured: no GPU run" for v in without.values())
    strip = lambda k: k.split(": ", 1)[1]                                  # noqa: E731
    assert sorted(map(strip, without)) == sorted(map(strip, with_run))


def test_a_run_without_cupy_says_so_and_still_judges_the_rest(fixture_results):
    path = fixture_results / "gpu_synthetic_test_gpu.json"
    runs = json.loads(path.read_text())
    (run,) = runs.values()
    run["check"]["cupy"].update(available=False, reason="CuPy unavailable: pip install failed")
    del run["sections"]["radon"], run["sections"]["nufft"]
    for f in ("test_bench_radon.py", "test_bench_nufft.py"):
        run["check"]["suites"][f] = {"returncode": None, "not_run": "CuPy unavailable"}
    path.write_text(json.dumps(runs))
    rows = gpu_rows(render(fixture_results))
    for part in ("Radon CUDA forward", "Radon CUDA adjoint", "NUFFT CUDA type2",
                 "NUFFT CUDA type1"):
        assert verdict(rows, part) == "not measured: CuPy unavailable"
    assert verdict(rows, "fraction of peak DRAM bandwidth") == "**missed**"
    assert verdict(rows, "peak training memory") == "met"


def test_unknown_bandwidth_and_a_mocked_tiny_fraction(fixture_results):
    path = fixture_results / "gpu_synthetic_test_gpu.json"
    runs = json.loads(path.read_text())
    (run,) = runs.values()
    case = run["sections"]["triton"]["cases"]["anderson_d4194304"]
    case["fraction_of_bandwidth"] = 3.85e-07                # what a mocked run once showed
    path.write_text(json.dumps(runs))
    assert verdict(gpu_rows(render(fixture_results)), "fraction of peak") == "**missed**"
    case["fraction_of_bandwidth"] = None
    run["gpu"]["bandwidth_B_s"], run["gpu"]["bandwidth_source"] = None, "unknown: no source"
    path.write_text(json.dumps(runs))
    assert verdict(gpu_rows(render(fixture_results)), "fraction of peak").startswith(
        "not measured: the device's peak bandwidth is unknown")


def test_the_fixture_is_not_among_the_recorded_results():
    assert not any(n.startswith("gpu_synthetic") for n in os.listdir(
        os.path.join(ROOT, "bench", "results")))


# --- the check without CUDA --------------------------------------------------------------------

@no_cuda
@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_gpu_check_without_cuda_prints_the_plan_and_exits_0():
    before = sorted(os.listdir(os.path.join(ROOT, "bench", "results")))
    report_mtime = os.path.getmtime(os.path.join(ROOT, "BENCHMARKS.md"))
    r = subprocess.run(["make", "-s", "gpu-check", f"GPU_PYTHON={sys.executable}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, GPU_PYTHON=sys.executable))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "no CUDA device on this machine" in out and "nothing is installed or run" in out
    for what in ("pip install", "cupy-cuda12x", "-m pytest", "tests", "test_bench_radon.py",
                 "test_bench_nufft.py", "test_bench_triton.py", "test_bench_solver.py",
                 "test_bench_deq_memory.py", "--benchmark-only", "bench/report.py"):
        assert what in out, what
    assert sorted(os.listdir(os.path.join(ROOT, "bench", "results"))) == before
    assert os.path.getmtime(os.path.join(ROOT, "BENCHMARKS.md")) == report_mtime


@pytest.fixture
def nothing_runs(monkeypatch):
    """No subprocess may start."""
    def refuse(*a, **k):
        raise AssertionError(f"ran {a[0] if a else k}")
    monkeypatch.setattr(bench.subprocess, "run", refuse)
    monkeypatch.setattr(bench.subprocess, "Popen", refuse)


def test_dry_run_runs_nothing(monkeypatch, tmp_path, nothing_runs):
    monkeypatch.setattr(bench, "_nvidia_smi", lambda: {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lines = []
    out = bench.run_gpu_check(results=str(tmp_path), log=lines.append)
    assert out["returncode"] == 0 and out["dry_run"] and "no CUDA device" in out["reason"]
    assert list(tmp_path.iterdir()) == []
    text = "\n".join(lines)
    assert text.count("-m pytest") == 1 + len(bench.BENCH_SUITES["gpu"][0])


def test_a_gpu_with_a_cpu_torch_says_so(monkeypatch, tmp_path, nothing_runs):
    monkeypatch.setattr(bench, "_nvidia_smi",
                        lambda: {"gpus": ["NVIDIA H200"], "driver": "580.1", "cuda": "13.0"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "_cuda_pythons", lambda: [])
    monkeypatch.delenv("LUSER_FAST_GPU_CHECK_REEXEC", raising=False)
    lines = []
    out = bench.run_gpu_check(results=str(tmp_path), log=lines.append)
    assert out["returncode"] == 2 and not out["dry_run"]
    assert "NVIDIA H200" in lines[0] and "has no CUDA" in lines[0] and "GPU_PYTHON" in lines[0]


def test_a_gpu_with_a_cpu_torch_reruns_with_a_cuda_python(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "_nvidia_smi",
                        lambda: {"gpus": ["NVIDIA H200"], "driver": "580.1", "cuda": "13.0"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "_cuda_pythons", lambda: ["/opt/cuda/bin/python3"])
    monkeypatch.delenv("LUSER_FAST_GPU_CHECK_REEXEC", raising=False)
    calls = []
    monkeypatch.setattr(bench.subprocess, "run",
                        lambda cmd, **k: calls.append((cmd, k)) or subprocess.CompletedProcess(cmd, 0))
    out = bench.run_gpu_check(results=str(tmp_path), log=lambda *a: None)
    (cmd, kw), = calls
    assert out["returncode"] == 0 and out["python"] == "/opt/cuda/bin/python3"
    assert cmd[:6] == ["/opt/cuda/bin/python3", "-m", "luser_fast.cli", "bench", "--suite", "gpu"]
    assert kw["env"]["LUSER_FAST_GPU_CHECK_REEXEC"] == "1"
    assert harness.CHECKOUT in kw["env"]["PYTHONPATH"].split(os.pathsep)


def test_the_cupy_package_follows_the_cuda_major():
    assert bench.cuda_major("12.4") == 12 and bench.cuda_major(None, "13.0") == 13
    assert bench.cuda_major("11.8", "13.0") == 11 and bench.cuda_major(None, None) is None
    assert [bench.cupy_package(m) for m in (11, 12, 13, None)] == [
        "cupy-cuda11x", "cupy-cuda12x", "cupy-cuda13x", "cupy-cuda12x"]


# --- the check's real-run path, the GPU replaced ---------------------------------------------

FAKE_GPU = {"name": "Fake GPU 9000", "driver": "580.1", "cuda": None, "capability": "9.0",
            "memory_bytes": 2 ** 37, "multiprocessors": 132, "count": 1,
            "bandwidth_B_s": 4.8e12, "bandwidth_source": "test"}


def test_real_run_path_records_the_run_and_what_it_could_not_measure(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(harness, "gpu_info", lambda index=None: dict(FAKE_GPU))
    monkeypatch.setattr(bench, "_nvidia_smi",
                        lambda: {"gpus": ["Fake GPU 9000"], "driver": "580.1", "cuda": "13.0"})
    monkeypatch.setattr(bench, "_probe", lambda python, code, timeout=120: (
        False, "ModuleNotFoundError: No module named 'cupy'"))
    monkeypatch.setattr(bench, "_cuda_code", lambda *a, **k: {"kind": "fatbin"})
    ran, reports = [], []

    def fake_step(cmd, timeout, env, log, junit=None):
        ran.append((cmd, timeout, env))
        if "pip" in cmd:
            return {"command": " ".join(cmd), "returncode": 1, "wall_seconds": 1.0,
                    "timed_out": False}
        if "test_bench_deq_memory.py" in " ".join(cmd):       # a suite records a case
            monkeypatch.setenv("LUSER_FAST_GPU_RUN_KEY", env["LUSER_FAST_GPU_RUN_KEY"])
            harness.record_gpu_case("memory", "fast_luser", {"peak_MiB": 10.0, "saved_MiB": 1.0,
                                                             "params_MiB": 0.1, "seconds": 0.1},
                                    folder=env["LUSER_FAST_BENCH_RESULTS"])
        return {"command": " ".join(cmd), "returncode": 0, "wall_seconds": 1.0,
                "timed_out": False, "passed": 1, "failed": 0, "errors": 0, "skipped": 0,
                "failures": [], "skip_reasons": {}}

    monkeypatch.setattr(bench, "_run_step", fake_step)
    monkeypatch.setattr(bench, "_report", lambda *a, **k: reports.append(a) or 0)
    lines = []
    out = bench.run_gpu_check(results=str(tmp_path), budget_s=540, log=lines.append)
    text = "\n".join(lines)
    assert out["returncode"] == 0, text
    # CuPy for the driver's CUDA 13 (torch's CUDA unknown here), tried once, said to fail
    assert ran[0][0][-1] == "cupy-cuda13x" and "CuPy unavailable" in text
    commands = [" ".join(c) for c, _, _ in ran[1:]]
    assert "-k" in ran[1][0] and bench.GPU_TESTS_K in ran[1][0] and ran[1][1] <= bench.TESTS_MAX_S
    assert not any("test_bench_radon.py" in c or "test_bench_nufft.py" in c for c in commands)
    assert sum("bench/test_bench_" in c for c in commands) == 3
    assert all(float(env["LUSER_FAST_BENCH_DEADLINE"]) > 0 for c, _, env in ran[2:])
    assert reports, "the report was not regenerated"
    # one GPU run, keyed by GPU name, driver, CUDA and torch, holding the check and the case
    runs = json.loads((tmp_path / "gpu_fake_gpu_9000.json").read_text())
    (key, run), = runs.items()
    assert key.startswith(f"Fake GPU 9000 | driver 580.1 | CUDA None | torch {torch.__version__} |")
    assert run["sections"]["memory"]["cases"]["fast_luser"]["peak_MiB"] == 10.0
    check = run["check"]
    assert check["status"] == "done" and check["cupy"]["available"] is False
    assert check["suites"]["test_bench_radon.py"]["not_run"] == "CuPy unavailable"
    assert check["environment"]["driver_cuda"] == "13.0"
    rows = gpu_rows(render(tmp_path))
    assert verdict(rows, "Radon CUDA forward") == "not measured: CuPy unavailable"
    assert verdict(rows, "Triton shallow map forward") == "not measured: not recorded in this run"
    # a second check replaces the run (no section of the first survives)
    out = bench.run_gpu_check(results=str(tmp_path), budget_s=540, log=lines.append)
    assert len(json.loads((tmp_path / "gpu_fake_gpu_9000.json").read_text())) == 1


def test_a_gpu_run_is_built_case_by_case_under_one_key(monkeypatch, tmp_path):
    monkeypatch.setattr(harness, "gpu_info", lambda index=None: dict(FAKE_GPU, cuda="12.4"))
    key = harness.begin_gpu_run(str(tmp_path), check={"status": "running"})
    assert key == (f"Fake GPU 9000 | driver 580.1 | CUDA 12.4 | torch {torch.__version__} | "
                   f"{harness.git_sha()}")
    harness.record_gpu_case("radon", "forward", {"images_per_second": 1.0}, setup={"batch": 2},
                            folder=str(tmp_path))
    harness.record_gpu_case("radon", "adjoint", {"images_per_second": 2.0}, folder=str(tmp_path))
    harness.save_gpu_section("extra", {"x": 1}, folder=str(tmp_path))
    harness.update_gpu_run({"check": {"status": "done"}}, folder=str(tmp_path))
    (run,) = json.loads((tmp_path / "gpu_fake_gpu_9000.json").read_text()).values()
    assert set(run["sections"]["radon"]["cases"]) == {"forward", "adjoint"}
    assert run["sections"]["radon"]["setup"] == {"batch": 2} and run["sections"]["extra"]["x"] == 1
    assert run["check"] == {"status": "done"} and run["gpu"]["name"] == "Fake GPU 9000"
    harness.begin_gpu_run(str(tmp_path))
    (run,) = json.loads((tmp_path / "gpu_fake_gpu_9000.json").read_text()).values()
    assert run["sections"] == {}
    # the suites of one check add to the run it started, even if the SHA has moved since
    monkeypatch.setenv("LUSER_FAST_GPU_RUN_KEY", key)
    monkeypatch.setattr(harness, "git_sha", lambda: "moved")
    harness.record_gpu_case("nufft", "type2", {"points_per_second": 1.0}, folder=str(tmp_path))
    (k, run), = json.loads((tmp_path / "gpu_fake_gpu_9000.json").read_text()).items()
    assert k == key and "nufft" in run["sections"]


# --- the budget -------------------------------------------------------------------------------

def test_a_step_past_its_time_is_stopped():
    out = bench._run_step([sys.executable, "-c", "import time; time.sleep(60)"], 1.0,
                          dict(os.environ), lambda *a: None)
    assert out["timed_out"] and out["wall_seconds"] < 30
    out = bench._run_step([sys.executable, "-c", "pass"], 0, dict(os.environ), lambda *a: None)
    assert out["timed_out"] and out["returncode"] is None and "budget" in out["note"]


def test_benchmark_cases_skip_once_the_deadline_has_passed(tmp_path):
    xml = tmp_path / "out.xml"
    r = subprocess.run([sys.executable, "-m", "pytest", os.path.join(ROOT, "bench",
                        "test_bench_solver.py"), "-q", "-p", "no:cacheprovider",
                        "--benchmark-only", "-k", "test_f_alone", f"--junitxml={xml}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, LUSER_FAST_BENCH_DEADLINE="1",
                                LUSER_FAST_BENCH_TINY="1",
                                LUSER_FAST_BENCH_RESULTS=str(tmp_path)))
    counts = bench._junit(str(xml))
    assert r.returncode == 0 and counts["passed"] == 0 and counts["skipped"] == 2, r.stdout
    assert all("budget" in why for why in counts["skip_reasons"])
    assert not (tmp_path / "solver_cpu.json").exists()
