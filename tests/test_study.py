"""``luser-fast study``: a tiny sweep writes each run at once, a rerun skips what is done,
subsets and new settings add only their runs, the plots and the report's study section are
written from the JSON, and the goal verdicts follow the measured numbers."""
import json
import os
import shutil

import pytest
import torch
from helpers import bench_report

from luser_fast import study
from luser_fast.cli import main
from luser_fast.study import (CONFIGS, DEFAULT_LUSER, GOALS, LU_BASELINE, build_model, goal_rows,
                              pareto_front, run_key, run_study, verdict)

#: a tiny study: the two configurations the goals compare, 16 x 16, 2 steps, 8 channels
TINY = dict(tasks=("ct",), configs=(LU_BASELINE, DEFAULT_LUSER), seeds=(0, 1), steps=2,
            size=16, channels=8, n_train=8, n_test=4, log=lambda *a: None)


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("study")
    results = out / "study.json"
    first = run_study(out=str(out), results=str(results), **TINY)
    return out, results, first


def _records(path):
    with open(path) as fh:
        return json.load(fh)


def test_each_run_is_recorded_with_its_provenance(tiny):
    _, results, first = tiny
    runs = _records(results)
    assert len(first["ran"]) == 4 and not first["skipped"] and set(runs) == set(first["ran"])
    for key, r in runs.items():
        assert key == run_key(r["task"], r["name"], r["config"], r["seed"], r["settings"],
                              r["data_sha256"])
        assert r["config"] == CONFIGS[r["name"]] and r["settings"]["steps"] == 2
        assert r["machine"]["cpu"] and r["versions"]["torch"] == torch.__version__
        assert r["git_sha"] and r["date"] and r["wall_seconds"] > 0
        m = r["metrics"]
        assert m["peak_bytes"] > 0 and m["saved_bytes"] > 0 and m["sec_per_step"] > 0
        assert m["params"] > 0 and m["psnr"] > 0 and m["psnr_x0"] > 0
        assert ("solver_iterations" in m) == (r["config"]["model"] == "luser")
        # luser_fast.data.real: the real scans of the task
        assert m["real_psnr"] > 0 and m["real_psnr_x0"] > 0 and m["real_ssim"] <= 1
        assert r["real"]["n"] == len(r["real"]["files"]) > 0
    # the seeds vary the initialisation: LU's two seeds give different test PSNRs
    lu = [r["metrics"]["psnr"] for r in runs.values() if r["name"] == LU_BASELINE]
    assert lu[0] != lu[1]


def test_rerun_skips_the_done_runs(tiny):
    out, results, _ = tiny
    before, mtime = _records(results), os.path.getmtime(results)
    again = run_study(out=str(out), results=str(results), **TINY)
    assert not again["ran"] and len(again["skipped"]) == 4
    assert os.path.getmtime(results) == mtime and _records(results) == before
    assert [r["date"] for r in again["records"]] == [r["date"] for r in before.values()]


def test_subset_and_new_settings_add_only_their_runs(tiny, tmp_path, one_thread):
    _, results, _ = tiny
    copy = tmp_path / "study.json"
    shutil.copyfile(results, copy)
    kw = dict(TINY, configs=(DEFAULT_LUSER,), seeds=(1, 2))
    r = run_study(out=str(tmp_path), results=str(copy), **kw)
    assert len(r["skipped"]) == 1 and len(r["ran"]) == 1 and "seed 2" in r["ran"][0]
    assert {x["name"] for x in r["records"]} == {DEFAULT_LUSER}
    assert len(_records(copy)) == 5
    # other settings are other runs
    assert run_key("ct", "a", {"model": "lu"}, 0, {"steps": 2}) != \
        run_key("ct", "a", {"model": "lu"}, 0, {"steps": 3})


def test_plots_and_table(tiny):
    out, _, first = tiny
    assert first["plots"] == [str(out / "study_ct.png")]
    assert os.path.getsize(out / "study_ct.png") > 5_000
    lines = study.format_tables(study.summarize(first["records"]), first["records"])
    text = "\n".join(lines)
    assert LU_BASELINE in text and DEFAULT_LUSER in text and "±" in text


def test_report_renders_the_study_section(tiny, tmp_path):
    _, results, _ = tiny
    folder = tmp_path / "results"
    folder.mkdir()
    shutil.copyfile(results, folder / "study_cpu.json")
    report = bench_report()
    out = tmp_path / "BENCHMARKS.md"
    assert report.main(["--results", str(folder), "--out", str(out), "--plots",
                        str(tmp_path / "plots"), "--repeat", ""]) == 0
    text = out.read_text().split("## Design-space study")[1]
    assert "### ct" in text and f"| {LU_BASELINE} | lu | 2 |" in text
    missing = [n for n in CONFIGS if n not in (LU_BASELINE, DEFAULT_LUSER)]
    assert all(f"`{n}`" in text.split("did not run")[1].split("\n")[0] for n in missing)
    goals = text.split("### Goals")[1]
    rows = [line for line in goals.splitlines() if line.startswith("| ct |")]
    assert len(rows) == len(GOALS)
    for row in rows:
        assert "not measured" not in row and ("met" in row or "MISSED by" in row)
    headline = out.read_text().split("## Goal figures")[1].split("\n## ")[0]
    assert sum(line.startswith("| #11 | ct: ") for line in headline.splitlines()) == len(GOALS)
    assert (tmp_path / "plots" / "study_ct.png").stat().st_size > 5_000
    # no study file, no section
    os.remove(folder / "study_cpu.json")
    report.main(["--results", str(folder), "--out", str(out), "--plots", "", "--repeat", ""])
    assert "Design-space study" not in out.read_text()


def test_command_resumes(tmp_path, one_thread):
    argv = ["study", "--out", str(tmp_path), "--tasks", "deblur", "--configs", DEFAULT_LUSER,
            "--seeds", "0", "--steps", "1", "--size", "16"]
    assert main(argv) == 0
    runs = _records(tmp_path / "study.json")
    (record,) = runs.values()
    assert record["command"].startswith("luser-fast study --out")
    assert main(argv) == 0
    assert _records(tmp_path / "study.json") == runs
    with pytest.raises(SystemExit):
        main(["study", "--configs", "nope"])


def test_verdicts_follow_the_numbers():
    assert verdict(-0.2, "at_least", -0.3, " dB") == "met"
    assert verdict(-0.3, "at_least", -0.3, " dB") == "met"
    assert verdict(-0.55, "at_least", -0.3, " dB") == "MISSED by 0.25 dB"
    assert verdict(9.0, "at_least", 8.0, "x") == "met"
    assert verdict(6.5, "at_least", 8.0, "x") == "MISSED by 1.50x"
    assert verdict(1.2, "at_most", 1.5, "x") == "met"
    assert verdict(1.8, "at_most", 1.5, "x") == "MISSED by 0.30x"
    assert verdict(None, "at_least", 8.0) == "not measured"
    with pytest.raises(ValueError, match="op"):
        verdict(1.0, "above", 1.0)


def _rec(task, name, seed, psnr, peak, sec):
    return {"task": task, "name": name, "seed": seed,
            "metrics": {"psnr": psnr, "peak_bytes": peak, "sec_per_step": sec}}


def test_goal_rows_pair_seeds_on_hand_made_numbers():
    records = [_rec("ct", "lu-5", 0, 30.0, 100, 1.0), _rec("ct", "lu-5", 1, 31.0, 100, 1.0),
               _rec("ct", "luser-2", 0, 29.9, 10, 2.0), _rec("ct", "luser-2", 1, 30.6, 20, 2.0),
               _rec("ct", "luser-2", 2, 10.0, 1, 9.0),            # no lu-5 at seed 2: unpaired
               _rec("mri", "luser-2", 0, 30.0, 10, 1.0)]          # no lu-5 on mri at all
    rows = {(g["task"], g["key"]): g for g in goal_rows(records, "luser-2", "lu-5")}
    psnr = rows["ct", "psnr_diff_db"]
    assert psnr["seeds"] == [0, 1] and psnr["mean"] == pytest.approx(-0.25)
    assert psnr["std"] == pytest.approx(0.3 / 2 ** 0.5) and psnr["verdict"] == "met"
    peak = rows["ct", "peak_ratio"]
    assert peak["mean"] == pytest.approx(7.5) and peak["verdict"] == "MISSED by 0.50x"
    time = rows["ct", "time_ratio"]
    assert time["mean"] == pytest.approx(2.0) and time["verdict"] == "MISSED by 0.50x"
    for key in ("psnr_diff_db", "peak_ratio", "time_ratio"):
        assert rows["mri", key]["mean"] is None and rows["mri", key]["verdict"] == "not measured"


def test_pareto_front():
    pts = [(1.0, 20.0), (2.0, 25.0), (3.0, 24.0), (4.0, 26.0), (1.5, 19.0)]
    assert pareto_front(pts) == [0, 1, 3]


def test_configs_pass_their_arguments_through():
    from luser_fast.data import TaskConfig, build_operator

    op = build_operator(TaskConfig(task="deblur", size=16))
    model = build_model({"model": "luser", "depth": 3, "share_weights": False}, op, 1, 4, 3)
    assert len(model.regularizers) == 3
    assert build_model({"model": "lu", "depth": 4}, op, 1, 4, 2).iterations == 2
    with pytest.raises(ValueError, match="config"):
        build_model({"model": "lu", "no_such_argument": 1}, op, 1, 4, 2)
    with pytest.raises(ValueError, match="config"):
        build_model({"model": "cnn"}, op, 1, 4, 2)
    with pytest.raises(ValueError, match="configs"):
        run_study(configs=("nope",))
    assert CONFIGS[LU_BASELINE] == {"model": "lu", "depth": 5}
    assert CONFIGS[DEFAULT_LUSER]["model"] == "luser"


def test_data_digest_changes_with_the_data():
    from luser_fast.data import TaskConfig, make_task
    from luser_fast.study import current_runs, data_digest

    cfg = TaskConfig(task="ct", size=16)
    a = make_task(cfg, "train", 4)
    b = make_task(cfg, "train", 4, operator=a.operator)
    assert data_digest(a) == data_digest(b)
    b.x[0, 0, 0, 0] += 1e-3
    assert data_digest(a) != data_digest(b)
    runs = [{"task": "ct", "date": "1", "data_sha256": "old"},
            {"task": "ct", "date": "2", "data_sha256": "new"},
            {"task": "mri", "date": "1"}]
    kept, dropped = current_runs(runs)
    assert kept == runs[1:] and dropped == runs[:1]
