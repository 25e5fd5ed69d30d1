"""The benchmark harness cannot rot: every CPU suite runs end to end on a tiny problem
(``luser-fast bench --tiny``), records through ``luser_fast.profile.harness``, and the report
renders from what it wrote."""
import json
import os

import pytest
import torch
from helpers import bench_report

from luser_fast.cli import main
from luser_fast.profile import harness
from luser_fast.profile.bench import BENCH_SUITES, run_bench

CPU_SUITES = ("ops", "solver", "train")
#: result files each suite writes (the peers' cases skip when a peer is not installed)
FILES = {"ops": ("radon_cpu", "nufft_cpu", "nufft3d_cpu", "conebeam_cpu"), "solver": ("solver_cpu",),
         "train": ("deq_memory_cpu", "memprofile_cpu")}


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    run = run_bench(suites=CPU_SUITES + ("gpu",), results=str(out), tiny=True,
                    json_path=str(out / "all.json"), log=lambda *a: None)
    return out, run


def _runs(folder, name):
    with open(os.path.join(folder, f"{name}.json")) as fh:
        return json.load(fh)


@pytest.mark.parametrize("suite", CPU_SUITES)
def test_each_suite_runs_tiny_and_records(tiny_results, suite):
    folder, run = tiny_results
    assert run["suites"][suite]["returncode"] == 0, run["suites"][suite]
    for name in FILES[suite]:
        runs = _runs(folder, name)
        (key, r), = runs.items()
        assert key.endswith("| tiny") and r["tiny"] is True
        assert r["machine"]["cores"] == os.cpu_count() and r["versions"]["torch"] == torch.__version__
        assert len(r["git_sha"]) >= 7 or r["git_sha"] == "unknown"


def test_timings_carry_min_median_max_and_ratio_bands(tiny_results):
    folder, _ = tiny_results
    (radon,) = _runs(folder, "radon_cpu").values()
    for t in radon["ms_per_image"].values():
        assert 0 < t["min"] <= t["median"] <= t["max"]
    ratio = radon["ratios"]["skimage radon / luser_fast forward (b8)"]
    assert ratio["low"] <= ratio["median"] <= ratio["high"]
    (solver,) = _runs(folder, "solver_cpu").values()
    assert set(solver["problems"]) == {"light", "shallow"}


def test_gpu_suite_is_skipped_with_a_reason_without_cuda(tiny_results):
    _, run = tiny_results
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the GPU suite ran")
    assert "gpu" not in run["suites"] and "CUDA" in run["skipped"]["gpu"]


def test_json_holds_the_invocation_and_its_runs(tiny_results):
    folder, run = tiny_results
    with open(folder / "all.json") as fh:
        doc = json.load(fh)
    assert doc["invocation"]["suites"] == run["suites"]
    assert set(doc["runs"]) >= {n for s in CPU_SUITES for n in FILES[s]}


def test_report_renders_from_the_recorded_json(tiny_results, tmp_path):
    folder, _ = tiny_results
    report = bench_report()
    out = tmp_path / "BENCHMARKS.md"
    assert report.main(["--results", str(folder), "--out", str(out), "--plots",
                        str(tmp_path / "plots"), "--include-tiny", "--repeat", str(folder)]) == 0
    text = out.read_text()
    # a run compared with itself: every ratio within its own band
    assert "## Repeatability" in text and "**no**" not in text.split("## Repeatability")[1]
    for heading in ("## Goal figures", "## Radon transform (CPU)", "## NUFFT (CPU)",
                    "## 3-D NUFFT (CPU)", "## Cone-beam CT (CPU)",
                    "## Anderson solver (CPU)", "## Training memory of one step (CPU)", "## GPU"):
        assert heading in text
    assert "not measured" in text                     # no GPU figure without a GPU run
    assert (tmp_path / "plots" / "radon_throughput_vs_size.png").stat().st_size > 5000
    assert (tmp_path / "plots" / "memory_vs_iterations.png").stat().st_size > 5000
    # without --include-tiny the tiny runs are not shown: nothing measured at all
    assert report.main(["--results", str(folder), "--out", str(out), "--plots", "",
                        "--repeat", ""]) == 0
    assert "No full run recorded" in out.read_text()


def test_bad_suite_is_rejected():
    with pytest.raises(ValueError, match="suite"):
        run_bench(suites=("nope",), tiny=True)
    with pytest.raises(SystemExit):
        main(["bench", "--suite", "nope"])
    assert set(BENCH_SUITES) == {"ops", "solver", "train", "gpu"}


def test_without_the_bench_folder_it_says_what_it_needs(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(harness, "BENCH_DIR", str(tmp_path / "bench"))
    with pytest.raises(FileNotFoundError, match="needs the repository's bench/ folder"):
        run_bench(suites=("solver",), tiny=True)
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--suite", "solver", "--tiny"])
    assert exc.value.code == 2 and "bench/ folder" in capsys.readouterr().err


def test_gpu_suite_alone_without_cuda_is_a_dry_run_that_records_nothing(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the GPU check would really run")
    lines = []
    run = run_bench(suites=("gpu",), results=str(tmp_path), tiny=True, log=lines.append)
    assert run["suites"] == {} and "no CUDA device" in run["skipped"]["gpu"]
    assert list(tmp_path.iterdir()) == []                     # not even bench_runs.json
    assert any("bench/test_bench_triton.py" in ln for ln in lines)
    assert BENCH_SUITES["gpu"][0] == ("test_bench_radon.py", "test_bench_nufft.py",
                                      "test_bench_deq_memory.py", "test_bench_triton.py",
                                      "test_bench_solver.py")
