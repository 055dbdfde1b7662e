"""`meter study run` end to end on micro studies (real runs, real worker processes): the report equals the runs' own
score files, a second run runs nothing, an edited study adds only its new cells, a changed row is refused, a killed
worker's cell resumes on the next run, a failing cell is recorded while the others finish, the tuned table selects
on the held-out split, submitit's executor runs a cell under torchrun, and the HTML page renders in Chromium."""

import csv
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meter.cli import main
from meter.errors import ConfigError
from meter.study.cells import load_plan, plan_study
from meter.study.execute import run_study
from meter.study.records import read_status
from meter.study.spec import SlurmSpec, study_from_dict
from meter.study.status import study_states
from tests.browser import chromium_page, needs_chromium
from tests.studies import micro_study, write_study

pytestmark = pytest.mark.slow


def _accuracy(cell_folder: Path, run: str = "vqa", name: str = "vqa_accuracy_val2014.json") -> float:
    """A run's own score file, as the VQA evaluation wrote it."""
    return json.loads((cell_folder / run / name).read_text())["overall"]


def _report_rows(out: Path, table: str) -> dict[str, dict[str, str]]:
    with (out / "report.csv").open() as f:
        return {row["row"]: row for row in csv.DictReader(f) if row["table"] == table and row["metric"] == "overall"}


def _result_times(out: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in out.glob("cells/**/result.json")}


@pytest.fixture(scope="module")
def finished(shapes_world, tmp_path_factory):
    """A micro study run to the end: 2 rows x 2 seeds, pretraining + VQA, two workers at a time."""
    root = tmp_path_factory.mktemp("study")
    study = micro_study(shapes_world, seeds=[0, 1])
    outcome = run_study(study_from_dict(study), root / "out", jobs=2)
    return root / "out", study, outcome


def test_the_report_equals_the_runs_own_score_files(finished):
    out, _, outcome = finished
    assert sorted(outcome.ran) == ["vlp/co-attention/seed-0", "vlp/co-attention/seed-1", "vlp/merged/seed-0",
                                   "vlp/merged/seed-1"] and not outcome.failed  # fmt: skip
    rows = _report_rows(out, "vlp-uniform")
    means = {}
    for row in ("co-attention", "merged"):
        scores = [_accuracy(out / "cells/vlp" / row / f"seed-{seed}") for seed in (0, 1)]
        means[row] = statistics.mean(scores)
        assert float(rows[row]["mean"]) == pytest.approx(means[row], abs=1e-9)
        assert float(rows[row]["std"]) == pytest.approx(statistics.stdev(scores), abs=1e-9)
        assert rows[row]["n"] == "2" and rows[row]["values"] == ";".join(repr(s) for s in scores)
    assert float(rows["merged"]["delta"]) == pytest.approx(means["merged"] - means["co-attention"], abs=1e-9)
    best = max(means, key=means.get)
    assert rows[best]["best"] == "1" and (means["merged"] == means["co-attention"] or rows[min(means, key=means.get)][
        "best"] == "0")  # fmt: skip
    markdown = (out / "report.md").read_text()
    assert f"| merged | {'**' if rows['merged']['best'] == '1' else ''}{means['merged']:.2f}" in markdown
    assert "\nReported on: vqa val2014.\n" in markdown


def test_status_shows_every_cell_done_with_its_scores(finished, capsys):
    out, _, _ = finished
    assert main(["study", "status", str(out)]) == 0
    shown = capsys.readouterr().out
    score = _accuracy(out / "cells/vlp/merged/seed-1")
    assert re.search(rf"vlp/merged/seed-1 +done +2/2 +vqa overall {score:.2f}\n", shown) and "\n4 done\n" in shown


def test_a_second_run_runs_nothing(finished):
    out, study, _ = finished
    before = _result_times(out)
    outcome = run_study(study_from_dict(study), out, jobs=2)
    assert outcome.ran == [] and len(outcome.skipped_done) == 4 and _result_times(out) == before


def test_a_changed_row_is_refused_naming_its_folder(finished):
    out, study, _ = finished
    changed = dict(study, variants=[{"name": "merged", "overrides": ["model.fusion=merged", "model.fusion.heads=4"]}])
    plan_before = (out / "plan.json").read_text()
    with pytest.raises(ConfigError, match=r"cells/vlp/merged/seed-0/pretrain \(model\.fusion\.heads: 2 -> 4"):
        plan_study(study_from_dict(changed), out)
    assert (out / "plan.json").read_text() == plan_before


def test_an_edited_study_in_a_moved_folder_runs_only_its_new_cells(finished, tmp_path):
    out, study, _ = finished
    moved = tmp_path / "moved"
    shutil.copytree(out, moved, symlinks=True)
    before = _result_times(moved)
    edited = dict(study, seeds=[0, 1, 2])
    outcome = run_study(study_from_dict(edited), moved, jobs=2)
    assert sorted(outcome.ran) == ["vlp/co-attention/seed-2", "vlp/merged/seed-2"] and not outcome.failed
    assert all(_result_times(moved)[path] == time for path, time in before.items())
    assert _report_rows(moved, "vlp-uniform")["merged"]["n"] == "3"


@needs_chromium
def test_the_report_page_renders_in_a_real_browser(finished, tmp_path):
    out, _, _ = finished
    with chromium_page() as (page, errors):
        page.goto((out / "report.html").as_uri())
        page.wait_for_load_state("load")
        tables = page.locator("table.results")
        images = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        rows = page.locator("#table-vlp-uniform tbody tr").all_inner_texts()
        page.locator("details.cell > summary").first.click()
        command = page.locator("details.cell pre").first.inner_text()
        table_count = tables.count()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert errors == [] and table_count == 1
    assert len(rows) == 2 and rows[0].startswith("co-attention") and "(n=2)" in rows[1]
    assert len(images) == 2 and all(complete and width > 100 and height > 100 for complete, width, height in images)
    assert command.startswith("meter pretrain --config ") and "train.seed=0" in command


def test_a_killed_worker_leaves_its_cell_to_resume_on_the_next_run(shapes_world, tmp_path):
    study = micro_study(shapes_world, variants=[], seeds=[0, 1])
    study["base"]["pretrain"] = {"recipe": "shapes-tiny.yaml", "steps": 24,
                                 "overrides": ["train.checkpoint_every=3", "train.log_every=3"]}  # fmt: skip
    path, out = write_study(tmp_path / "study.yaml", study), tmp_path / "out"
    orchestrator = subprocess.Popen([sys.executable, "-m", "meter", "study", "run", str(path), "--out", str(out)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    first = out / "cells/vlp/co-attention/seed-0"
    deadline = time.monotonic() + 240
    while not list((first / "pretrain/checkpoints").glob("step_*")) and time.monotonic() < deadline:
        assert orchestrator.poll() is None, orchestrator.communicate()[0]
        time.sleep(0.02)
    worker = read_status(first)["pid"]
    os.kill(worker, signal.SIGKILL)
    log, _ = orchestrator.communicate(timeout=600)
    assert orchestrator.returncode == 1, log
    states = {s.name: s for s in study_states(out)}
    assert states["vlp/co-attention/seed-0"].state == "failed" and "SIGKILL" in states["vlp/co-attention/seed-0"].detail
    assert states["vlp/co-attention/seed-1"].state == "done"
    done_before = _result_times(out)
    killed_at = max(int(p.name.split("_")[1]) for p in (first / "pretrain/checkpoints").glob("step_*"))
    assert 0 < killed_at < 24
    outcome = run_study(study_from_dict(study), out)
    assert outcome.ran == ["vlp/co-attention/seed-0"] and not outcome.failed
    assert all(_result_times(out)[p] == t for p, t in done_before.items())  # the finished cell was not touched
    assert (
        f"resumed from {first / 'pretrain/checkpoints'}/step_{killed_at:08d} at step {killed_at}"
        in (first / "worker.log").read_text()
    )
    steps = [json.loads(line)["step"] for line in (first / "pretrain/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(3, 25, 3))  # resumed, not restarted, and nothing logged twice
    assert all(s.state == "done" for s in study_states(out))


def test_a_failing_cell_is_recorded_with_its_error_and_the_study_goes_on(shapes_world, tmp_path):
    missing = tmp_path / "no-such-weights.safetensors"
    study = micro_study(shapes_world, variants=[{"name": "broken", "pretrain": [f"model.vision.weights={missing}"]}])
    out = tmp_path / "out"
    outcome = run_study(study_from_dict(study), out)
    assert list(outcome.failed) == ["vlp/broken/seed-0"] and str(missing) in outcome.failed["vlp/broken/seed-0"]
    states = {s.name: s for s in study_states(out)}
    assert states["vlp/co-attention/seed-0"].state == "done"
    assert states["vlp/broken/seed-0"].state == "failed"
    errors = read_status(out / "cells/vlp/broken/seed-0")["errors"]
    assert str(missing) in errors["pretrain"] and errors["vqa"].startswith("not run: its pretraining failed")
    rows = _report_rows(out, "vlp-uniform")
    assert rows["broken"]["n"] == "0" and rows["co-attention"]["n"] == "1"
    assert "`vlp/broken/seed-0`: failed (pretrain: " in (out / "report.md").read_text()


def test_a_cell_that_waits_for_a_failed_shared_pretraining_shows_as_failed_not_as_not_started(shapes_world,
                                                                                              tmp_path):  # fmt: skip
    """A row that changes only its fine-tuning shares the base's pretraining: when that failed, `meter study run`
    said the row was not run, and `status` and the report showed it "not started", waiting for nothing."""
    missing = tmp_path / "no-such-weights.safetensors"
    study = micro_study(shapes_world, variants=[{"name": "fast", "finetune": ["train.lr=1e-3"]}])
    study["base"]["pretrain"]["overrides"] = [f"model.vision.weights={missing}"]
    out = tmp_path / "out"
    outcome = run_study(study_from_dict(study), out)
    assert set(outcome.failed) == {"vlp/co-attention/seed-0", "vlp/fast/seed-0"}
    state = {s.name: s for s in study_states(out)}["vlp/fast/seed-0"]
    assert (state.state, state.detail) == ("failed", "not run: vlp/co-attention/seed-0, which runs its pretraining, "
                                                     "failed")  # fmt: skip


def test_a_worker_that_fails_outside_a_run_marks_its_cell_failed_with_the_reason(shapes_world, tmp_path):
    """An error outside a run (here the pretraining's result cannot be read) ended the worker, and its status said
    "done" with runs not done: `meter study status` showed the cell "not started", and the orchestrator's note of
    a lost worker was not taken over a done cell."""
    from meter.study.records import RESULT
    from meter.study.worker import run_cell

    cell = plan_study(study_from_dict(micro_study(shapes_world, variants=[])), tmp_path / "out").cells[0]
    pretraining = next(run for run in cell.runs if run.kind == "pretrain")
    (Path(pretraining.folder) / RESULT).mkdir(parents=True)  # a folder where the result file goes
    with pytest.raises(IsADirectoryError):
        run_cell(cell)
    status = read_status(cell.folder)
    assert status["state"] == "failed" and RESULT in status["errors"]["worker"]


def test_the_tuned_table_selects_each_rows_learning_rate_on_the_held_out_split(shapes_world, tmp_path):
    study = micro_study(shapes_world, seeds=[0, 1], search={"train.lr": [1.0e-3]})
    study["base"]["tasks"]["vqa"]["steps"] = 4
    study["base"]["tasks"]["vqa"]["select"] = {"holdout": 0.25}
    out = tmp_path / "out"
    outcome = run_study(study_from_dict(study), out, jobs=2)
    assert not outcome.failed
    tuned, uniform = _report_rows(out, "vlp-tuned"), _report_rows(out, "vlp-uniform")
    for row in ("co-attention", "merged"):
        cells = [out / "cells/vlp" / row / f"seed-{seed}" for seed in (0, 1)]
        held_out = "select/vqa_accuracy_train2014-select.json"  # each run's score on the held-out questions
        selection = {point: statistics.mean(_accuracy(cell, run, held_out) for cell in cells)
                     for point, run in (("recipe", "vqa"), ("lr=0.001", "vqa@lr=0.001"))}  # fmt: skip
        chosen = "lr=0.001" if selection["lr=0.001"] > selection["recipe"] else "recipe"
        run = "vqa" if chosen == "recipe" else "vqa@lr=0.001"
        assert tuned[row]["chosen"] == chosen
        assert float(tuned[row]["mean"]) == pytest.approx(statistics.mean(_accuracy(c, run) for c in cells), abs=1e-9)
        assert float(uniform[row]["mean"]) == pytest.approx(statistics.mean(_accuracy(c) for c in cells), abs=1e-9)
    trained = load_plan(out).cells[0].runs[1].config()
    assert trained.vqa.train_splits == ["train2014-fit"] and trained.vqa.eval_split == "val2014"


def test_the_submitit_executor_runs_a_cell_as_a_torchrun_job(shapes_world, tmp_path):
    study = micro_study(shapes_world, variants=[])
    out = tmp_path / "out"
    settings = SlurmSpec(gpus_per_node=0, cpus_per_task=2, time_min=20)
    outcome = run_study(study_from_dict(study), out, executor="submitit-local", slurm=settings, poll_s=0.5)
    assert outcome.ran == ["vlp/co-attention/seed-0"] and not outcome.failed
    cell = out / "cells/vlp/co-attention/seed-0"
    assert _report_rows(out, "vlp-uniform")["co-attention"]["mean"] == repr(_accuracy(cell))
    status = read_status(cell)
    assert status["state"] == "done" and status["launcher"] == "torchrun" and status["processes"] == 1
    assert status["job"] and list((out / "submitit").glob(f"{status['job']}_*result.pkl"))


def test_a_zero_shot_task_scores_each_cells_pretraining_as_meter_evaluate_does(shapes_tasks_world, tmp_path, capsys):
    """The paper's Flickr-ZS columns: each row's pretraining evaluated on the retrieval split, not fine-tuned; in a
    searched study it has nothing to tune, and the tuned table shows its one evaluation."""
    study = micro_study(shapes_tasks_world, search={"train.lr": [1.0e-3]})
    study["base"]["tasks"]["vqa"]["select"] = {"holdout": 0.25}
    study["base"]["tasks"]["zs"] = {"recipe": "shapes-retrieval.yaml", "zero_shot": True,
                                    "overrides": ["retrieval.max_eval_images=6"]}  # fmt: skip
    out = tmp_path / "out"
    outcome = run_study(study_from_dict(study), out, jobs=1)
    assert not outcome.failed
    plan = load_plan(out)
    assert [run.name for run in plan.cells[0].runs] == ["pretrain", "vqa", "vqa@lr=0.001", "zs"]
    with (out / "report.csv").open() as f:
        reported = {(r["table"], r["row"]): float(r["mean"]) for r in csv.DictReader(f) if r["task"] == "zs"
                    and r["metric"] == "t2i_r1"}  # fmt: skip
    for row in ("co-attention", "merged"):
        cell = out / "cells/vlp" / row / "seed-0"
        pretraining = load_plan(out).cell(f"vlp/{row}/seed-0").runs[3].config().train.init_from
        assert pretraining.startswith(str(cell / "pretrain/checkpoints/step_")), "the pretraining, as it is"
        settings = [f"data.root={shapes_tasks_world}", "retrieval.max_eval_images=6"]
        recipe = plan.cells[0].runs[3].recipe
        assert main(["evaluate", "retrieval", "--checkpoint", pretraining, "--config", recipe, "--out",
                     str(tmp_path / row), *settings]) == 0  # fmt: skip
        by_hand = json.loads(capsys.readouterr().out)["t2i_r1"]
        assert json.loads((cell / "zs/result.json").read_text())["metrics"]["t2i_r1"] == by_hand
        assert reported[("vlp-uniform", row)] == reported[("vlp-tuned", row)] == pytest.approx(by_hand, abs=1e-9)
    assert not (out / "cells/vlp/co-attention/seed-0/zs/checkpoints").exists(), "nothing trained"
    run = plan.cells[0].runs[3]  # the command the report prints reproduces it, in the folder the study planned
    studied = json.loads((Path(run.folder) / "result.json").read_text())["metrics"]
    for path in Path(run.folder).iterdir():
        if path.name != "study_run.json":
            path.unlink()
    assert main(shlex.split(run.command())[1:]) == 0
    assert json.loads(capsys.readouterr().out) == studied


def test_a_worker_killed_before_it_wrote_a_status_is_reported_not_the_earlier_attempts_end(
    shapes_world, tmp_path, monkeypatch
):
    """A worker killed while it starts (the out-of-memory killer, as torch is imported) left the earlier attempt's
    status: its old error was reported as this failure, and over a "done" (a task added since) none at all."""
    import meter.study.executors as executors
    from meter.study.records import write_json

    study = study_from_dict(micro_study(shapes_world, variants=[], seeds=[0]))
    cell = plan_study(study, tmp_path / "out").cells[0]
    monkeypatch.setattr(executors, "worker_command", lambda cell: ["sh", "-c", "kill -9 $$"])  # a real death
    for earlier in ({"state": "failed", "errors": {"pretrain": "DataError: no space left on device"}},
                    {"state": "done", "errors": {}}):  # fmt: skip
        write_json(Path(cell.folder) / "status.json", {"pid": 1, "host": "elsewhere", "run": "", **earlier})
        outcome = run_study(study, tmp_path / "out", report=False)
        assert "SIGKILL" in outcome.failed[cell.name] and "no space" not in outcome.failed[cell.name]
        status = read_status(cell.folder)
        assert status["state"] == "failed" and "SIGKILL" in status["errors"]["worker"]
