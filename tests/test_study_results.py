"""The tables' arithmetic on result files: the tuned table follows the selection split, never the reported one;
entries are mean, sample std and count over seeds; differences from the base row; best marked; missing is missing."""

import json
import statistics
from pathlib import Path

import pytest

from meter.errors import ConfigError, DataError
from meter.study.cells import plan_study
from meter.study.report_text import csv_report, entry
from meter.study.results import build_tables, metric_value
from meter.study.spec import study_from_dict
from tests.studies import micro_study


def _result(run, reported: float, selected: float | None = None) -> None:
    record = {"metrics": {"overall": reported, "per_question_type": {"what color is the": reported / 2}}}
    if selected is not None:
        record |= {"select": {"overall": selected}, "select_overrides": run.select}
    Path(run.folder, "result.json").write_text(json.dumps(record))


@pytest.fixture
def searched_plan(shapes_world, tmp_path):
    study = micro_study(shapes_world, seeds=[0, 1], search={"train.lr": [3.0e-4]})
    study["base"]["tasks"]["vqa"]["select"] = {"holdout": 0.2}
    return plan_study(study_from_dict(study), tmp_path / "out")


def test_the_tuned_table_picks_each_rows_point_by_the_selection_split(searched_plan):
    # base row: the recipe's lr is better on the reported split, lr=3e-4 on the selection split
    for cell in searched_plan.cells:
        runs = {run.name: run for run in cell.runs}
        if cell.row == "co-attention":
            _result(runs["vqa"], reported=80.0 + cell.seed, selected=50.0)
            _result(runs["vqa@lr=0.0003"], reported=70.0 + cell.seed, selected=60.0 + cell.seed)
        else:
            _result(runs["vqa"], reported=40.0, selected=55.0)
            _result(runs["vqa@lr=0.0003"], reported=90.0, selected=54.0)
    tables = {t.kind: t for t in build_tables(searched_plan)}
    tuned = {row.name: row for row in tables["tuned"].rows}
    assert tuned["co-attention"].chosen == {"vqa": "lr=0.0003"} and tuned["merged"].chosen == {"vqa": "recipe"}
    assert tuned["co-attention"].stats["vqa overall"].values == [70.0, 71.0]
    assert tuned["merged"].stats["vqa overall"].values == [40.0, 40.0]
    uniform = {row.name: row for row in tables["uniform"].rows}
    assert uniform["co-attention"].stats["vqa overall"].values == [80.0, 81.0]
    selection = {row.name: row for row in tables["selection"].rows}
    assert selection["co-attention"].stats["vqa selection @ lr=0.0003"].mean == 60.5


def test_retrieval_points_are_chosen_by_both_recalls_as_its_best_checkpoint_is(shapes_tasks_world, tmp_path):
    """The tuned table chose by the first column (IR@1) alone: points tied on IR@1 were not told apart by TR@1, and
    reordering `metrics:` changed the pick. It now chooses by IR@1 + TR@1, as train.best_on does."""
    study = micro_study(shapes_tasks_world, variants=[], search={"train.lr": [3.0e-4]})
    study["base"]["tasks"] = {"f30k": {"recipe": "shapes-retrieval.yaml", "steps": 2,
                                       "select": {"overrides": ["retrieval.eval_split=val"]}}}  # fmt: skip
    plan = plan_study(study_from_dict(study), tmp_path / "out")
    for cell in plan.cells:
        for run in cell.runs:
            if run.kind == "finetune":
                text = 40.0 if run.point else 20.0  # the same IR@1, a better TR@1 at lr=3e-4
                select = {"t2i_r1": 20.0, "i2t_r1": text}
                record = {"metrics": {"t2i_r1": 10.0, "i2t_r1": 10.0}, "select": select, "select_overrides": run.select}
                Path(run.folder, "result.json").write_text(json.dumps(record))
    tables = {t.kind: t for t in build_tables(plan)}
    assert tables["tuned"].rows[0].chosen == {"f30k": "lr=0.0003"}
    assert tables["selection"].rows[0].stats["f30k selection @ lr=0.0003"].mean == 60.0


def test_points_are_compared_over_the_seeds_all_of_them_finished(searched_plan):
    """The recipe scores 72 and 70 on selection; lr=3e-4 72 on seed 0, and its seed 1 failed: it was chosen on its
    one seed's 72 against the recipe's mean of 71, though on the seed both have they tie (the recipe wins ties)."""
    for cell in searched_plan.cells:
        runs = {run.name: run for run in cell.runs}
        _result(runs["vqa"], reported=60.0, selected=72.0 - 2 * cell.seed)
        if cell.seed == 0:
            _result(runs["vqa@lr=0.0003"], reported=75.0, selected=72.0)
    tables = {t.kind: t for t in build_tables(searched_plan)}
    assert all(row.chosen == {"vqa": "recipe"} for row in tables["tuned"].rows)
    selection = tables["selection"].rows[0].stats
    assert (selection["vqa selection @ recipe"].n, selection["vqa selection @ lr=0.0003"].n) == (2, 1), "shown as found"


def test_entries_are_mean_sample_std_and_count_with_the_difference_from_the_base(searched_plan):
    values = {("co-attention", 0): 61.0, ("co-attention", 1): 64.5, ("merged", 0): 70.25}  # merged seed 1: unfinished
    for cell in searched_plan.cells:
        if (cell.row, cell.seed) in values:
            _result(next(r for r in cell.runs if r.name == "vqa"), reported=values[cell.row, cell.seed])
    uniform = next(t for t in build_tables(searched_plan) if t.kind == "uniform")
    base, merged = uniform.rows
    stat = base.stats["vqa overall"]
    assert (stat.mean, stat.std, stat.n) == (statistics.mean([61.0, 64.5]), statistics.stdev([61.0, 64.5]), 2)
    # the difference is over the seed both finished (seed 0: 70.25 against 61.0, not against the base's two-seed
    # mean), and a row missing a seed is not ranked against complete ones: it is not bold
    assert merged.stats["vqa overall"].std is None and merged.delta["vqa overall"] == 70.25 - 61.0
    assert "vqa overall" not in merged.best and "vqa overall" in base.best
    assert entry(base, "vqa overall") == f"62.75 ± {statistics.stdev([61.0, 64.5]):.2f} (n=2)"
    assert entry(merged, "vqa overall") == "70.25 (n=1) [+9.25]"
    lines = [line.split(",") for line in csv_report([uniform]).splitlines()]
    assert lines[1][3:] == ["co-attention", "vqa", "overall", "62.75", repr(statistics.stdev([61.0, 64.5])), "2", "",
                            "1", "", "61.0;64.5", "0", "seed-0;seed-1", "0"]  # fmt: skip


def test_an_evaluation_that_left_samples_out_says_so_in_its_entry(searched_plan):
    """3 of 36 questions skipped (an unreadable image, within data.max_bad_samples): the table showed 15.76 (n=1) as
    if every question had been scored, next to rows scored on all of them."""
    run = next(r for r in searched_plan.cells[0].runs if r.name == "vqa")
    Path(run.folder, "result.json").write_text(json.dumps({"metrics": {"overall": 15.76, "skipped": 3}}))
    uniform = next(t for t in build_tables(searched_plan) if t.kind == "uniform")
    assert entry(uniform.rows[0], "vqa overall") == "15.76 (n=1, 3 skipped)"
    assert csv_report([uniform]).splitlines()[1].endswith(",15.76,3,seed-0,0")


def test_a_row_with_no_finished_seed_shows_nothing(searched_plan):
    uniform = next(t for t in build_tables(searched_plan) if t.kind == "uniform")
    assert all(row.stats["vqa overall"] is None and not row.best for row in uniform.rows)
    assert entry(uniform.rows[0], "vqa overall") == "–"


def test_a_metric_is_found_by_its_key_or_a_dotted_path_into_nested_scores():
    scores = {"overall": 71.5, "per_question_type": {"what color is the": 90.0, "how many": 60}, "metric": "x"}
    assert metric_value(scores, "overall") == 71.5
    assert metric_value(scores, "per_question_type.what color is the") == 90.0
    assert metric_value(scores, "per_question_type.how many") == 60.0
    assert metric_value(scores, "metric") is None and metric_value(scores, "accuracy") is None


def test_a_selection_score_of_another_split_is_not_compared(searched_plan):
    """A study whose selection split changed (its re-evaluation not done yet, or failed) compared one row's new
    selection scores with another's old ones, and said nothing."""
    for cell in searched_plan.cells:
        runs = {run.name: run for run in cell.runs}
        _result(runs["vqa"], reported=80.0, selected=50.0)
        _result(runs["vqa@lr=0.0003"], reported=70.0, selected=60.0)  # better on the selection split
        old = json.loads(Path(runs["vqa@lr=0.0003"].folder, "result.json").read_text())
        if cell.row == "merged":  # its point was scored on a split the study no longer selects on
            Path(runs["vqa@lr=0.0003"].folder, "result.json").write_text(json.dumps(old | {"select_overrides": []}))
    tuned = {row.name: row for row in {t.kind: t for t in build_tables(searched_plan)}["tuned"].rows}
    assert tuned["co-attention"].chosen == {"vqa": "lr=0.0003"} and tuned["merged"].chosen == {"vqa": "recipe"}


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("co|attention", "co\\|attention"),
        ("*ViT*-B_16", "\\*ViT\\*-B_16"),
        ("<img src=x>", "\\<img src=x\\>"),
        ("a\\|b", "a\\\\\\|b"),
    ],
)
def test_a_row_name_shows_in_the_markdown_table_as_written(searched_plan, name: str, written: str):
    """A row named `a|b` shifted every later cell of report.md one column to the right (the page escaped it);
    `*ViT*` showed in italics, `<img ...>` ran as HTML in a viewer."""
    from meter.study.report_text import markdown_table

    for cell in searched_plan.cells:
        for run in cell.runs:
            if run.kind == "finetune":
                _result(run, 50.0, 40.0)
    table = build_tables(searched_plan)[0]
    table.rows[0].name = name
    lines = markdown_table(table).splitlines()
    columns = [line.replace("\\\\", "").replace("\\|", "").count("|") for line in lines]
    assert len(set(columns)) == 1 and lines[2].startswith(f"| {written} |")


def test_a_row_name_with_a_line_break_is_refused(shapes_world):
    study = micro_study(shapes_world, variants=[{"name": "two\nlines", "overrides": ["model.fusion=merged"]}])
    with pytest.raises(ConfigError, match="row name 'two\\\\nlines'.*printable"):
        study_from_dict(study)


def test_means_equal_but_for_the_floats_sum_order_tie(searched_plan):
    """fmean([50.0, 50.02]) is 50.010000000000005, fmean([50.01, 50.01]) 50.01: the first row alone was bold, the
    other shown [-0.00], and a search point chosen over the recipe it tied with."""
    for cell in searched_plan.cells:
        runs = {run.name: run for run in cell.runs}
        seeds = [50.0, 50.02] if cell.row == "co-attention" else [50.01, 50.01]
        _result(runs["vqa"], reported=seeds[cell.seed], selected=[50.01, 50.01][cell.seed])
        _result(runs["vqa@lr=0.0003"], reported=30.0, selected=[50.0, 50.02][cell.seed])
    tables = {t.kind: t for t in build_tables(searched_plan)}
    base, merged = tables["uniform"].rows
    assert base.stats["vqa overall"].mean != merged.stats["vqa overall"].mean, "the case: sums that differ in bits"
    assert "vqa overall" in base.best and "vqa overall" in merged.best and merged.delta["vqa overall"] == 0.0
    assert entry(merged, "vqa overall").endswith("[+0.00]")
    assert all(row.chosen == {"vqa": "recipe"} for row in tables["tuned"].rows), "a tie goes to the recipe"
    assert all(row.best == {"vqa selection @ recipe"} for row in tables["selection"].rows), "bold: the chosen point"


def test_a_seed_whose_score_is_not_finite_is_named_and_its_row_not_ranked(searched_plan):
    for cell in searched_plan.cells:
        value = float("nan") if (cell.row, cell.seed) == ("merged", 1) else 60.0 + 10 * (cell.row == "merged")
        (Path(next(r for r in cell.runs if r.name == "vqa").folder) / "result.json").write_text(
            json.dumps({"metrics": {"overall": value}})
        )  # fmt: skip  (json writes NaN)
    base, merged = next(t for t in build_tables(searched_plan) if t.kind == "uniform").rows
    assert entry(merged, "vqa overall") == "70.00 (n=1, 1 not finite) [+10.00]"
    assert "vqa overall" not in merged.best and "vqa overall" in base.best
    assert csv_report([next(t for t in build_tables(searched_plan) if t.kind == "uniform")]).splitlines()[2].endswith(
        ",70.0,0,seed-0,1")  # fmt: skip


def test_a_misspelt_metric_is_refused_naming_the_scores_the_runs_have(shapes_world, tmp_path):
    """`metrics: [overal]` showed a dash in every row, as if no run had finished."""
    study = micro_study(shapes_world, seeds=[0])
    study["base"]["tasks"]["vqa"]["metrics"] = ["overall", "overal"]
    plan = plan_study(study_from_dict(study), tmp_path / "out")
    assert next(t for t in build_tables(plan) if t.kind == "uniform").rows, "no run finished: nothing to check yet"
    for cell in plan.cells:
        _result(next(run for run in cell.runs if run.task == "vqa"), reported=70.0)
    with pytest.raises(ConfigError, match=r"tasks.vqa.metrics: 'overal' is a score of none of the task's 2 finished "
                                          r"runs; their scores: overall, per_question_type.what color is the\. "
                                          r"Correct it in the study file"):  # fmt: skip
        build_tables(plan)
    unscored = {"metrics": {"scored": False, "questions": 10}}  # a split without answers: nothing to check by
    for cell in plan.cells:
        Path(next(run for run in cell.runs if run.task == "vqa").folder, "result.json").write_text(json.dumps(unscored))
    assert build_tables(plan)


def test_a_moved_study_folder_reports_the_results_it_holds(shapes_world, tmp_path):
    """plan.json names its folders absolutely: a study copied off the cluster to write its report showed dashes."""
    import shutil

    from meter.study.cells import load_plan

    plan = plan_study(study_from_dict(micro_study(shapes_world, seeds=[0])), tmp_path / "out")
    for cell in plan.cells:
        _result(next(run for run in cell.runs if run.task == "vqa"), reported=70.0 + cell.row.startswith("m"))
    shutil.move(tmp_path / "out", tmp_path / "moved")
    moved = load_plan(tmp_path / "moved")
    assert all(cell.folder.startswith(f"{tmp_path / 'moved'}/") for cell in moved.cells)
    uniform = next(t for t in build_tables(moved) if t.kind == "uniform")
    assert [row.stats["vqa overall"].values for row in uniform.rows] == [[70.0], [71.0]]


def test_a_study_run_whose_metric_is_misspelt_reports_its_cells_and_says_why_there_is_no_report(
    shapes_world, tmp_path, capsys
):
    """The refusal replaced the run's summary (which cells ran, failed, stopped) at the end of `meter study run`."""
    from meter.cli import main
    from tests.studies import write_study

    study = micro_study(shapes_world, seeds=[0])
    study["base"]["tasks"]["vqa"]["metrics"] = ["overal"]
    plan = plan_study(study_from_dict(study), tmp_path / "out")
    for cell in plan.cells:  # every run done: nothing to run, only the report to write
        for run in cell.own_runs():
            Path(run.folder, "result.json").write_text(json.dumps({"metrics": {"overall": 70.0}}))
    code = main(["study", "run", str(write_study(tmp_path / "study.yaml", study)), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 2 and "cells ran, 2 were done, 0 failed; no report (config error: tasks.vqa.metrics: 'overal'" in out


def test_a_captioning_column_scored_with_two_tokenizers_is_named_not_comparable(shapes_tasks_world, tmp_path):
    """`captioning.tokenizer=auto` is Java's PTBTokenizer where a java runs and the Python one where none does: cells
    run on two hosts sat side by side in one column, CIDEr from two tokenizers ranked as if comparable."""
    from meter.study.report import write_report

    study = micro_study(shapes_tasks_world, seeds=[0])
    study["base"]["tasks"] = {"coco": {"recipe": "shapes-captioning.yaml", "steps": 2, "metrics": ["cider"]}}
    plan = plan_study(study_from_dict(study), tmp_path / "out")
    runs = {cell.row: next(run for run in cell.runs if run.task == "coco") for cell in plan.cells}

    def scored(row: str, **metrics) -> dict[str, str]:
        Path(runs[row].folder, "result.json").write_text(json.dumps({"metrics": {"cider": 50.0, **metrics}}))
        return {kind: path.read_text() for kind, path in write_report(tmp_path / "out").items()}

    scored("co-attention", tokenizer="ptb")
    assert "Not comparable" not in scored("merged", tokenizer="ptb")["markdown"]
    report = scored("merged", tokenizer="python")
    mixed = next(line for line in report["markdown"].splitlines() if "different caption tokenizers" in line)
    assert "coco (reported split)" in mixed and "ptb: vlp/co-attention/seed-0/coco" in mixed
    assert "python: vlp/merged/seed-0/coco" in mixed and "meter evaluate captioning --checkpoint" in mixed
    assert "different caption tokenizers" in report["html"]
    assert "not recorded (scored before results named it: Python's" in scored("merged")["markdown"]  # an older result


def test_a_column_that_counts_things_has_no_best_entry(searched_plan):
    """`metrics: [overall, skipped]` bolded the row that skipped the most samples, as if it scored higher."""
    searched_plan.tasks["vqa"].metrics = ["overall", "skipped"]
    for cell in searched_plan.cells:
        for run in cell.runs:
            merged = cell.row == "merged"
            Path(run.folder, "result.json").write_text(json.dumps({"metrics": {"overall": 60.0 + merged,
                                                                               "skipped": 3 * merged}}))  # fmt: skip
    uniform = next(t for t in build_tables(searched_plan) if t.kind == "uniform")
    base, merged = uniform.rows
    assert merged.best == {"vqa overall"} and not base.best
    assert merged.delta["vqa skipped"] == 3.0, "a count still shows its difference from the base row"


def test_the_report_shows_the_title_and_row_names_as_written_and_drops_figures_it_no_longer_draws(
    shapes_world, tmp_path
):
    """A row named with `$...$` failed the report (matplotlib read it as math); a title's `*` or `<b>` formatted
    report.md; a bar chart of a protocol the study no longer has stayed beside the report."""
    from meter.study.report import write_report

    study = micro_study(shapes_world, seeds=[0], title="<b>Fusion</b> *study*",
                        variants=[{"name": r"cost $\frac$", "overrides": ["model.fusion=merged"]}])  # fmt: skip
    plan = plan_study(study_from_dict(study), tmp_path / "out")
    for cell in plan.cells:
        _result(next(run for run in cell.runs if run.task == "vqa"), reported=70.0)
    stale, users = tmp_path / "out" / "bars-no-vlp-uniform.png", tmp_path / "out" / "bars-mine.png"
    stale.write_bytes(b"an earlier report's chart")
    users.write_bytes(b"not the report's")
    report = write_report(tmp_path / "out")["markdown"].read_text()
    assert report.startswith("# \\<b\\>Fusion\\</b\\> \\*study\\*\n")
    assert "## \\<b\\>Fusion\\</b\\> \\*study\\*: with VLP" in report and "| cost \\$\\\\frac\\$ |" in report
    assert (tmp_path / "out" / "bars-vlp-uniform.png").stat().st_size > 1000
    assert not stale.exists() and users.read_bytes() == b"not the report's"


def test_a_study_file_cut_short_is_named_not_an_internal_error(shapes_world, tmp_path):
    """plan.json, pretraining.json, cell.json and study_run.json were written in place: a full disk left one cut
    short, and every later `meter study` command failed with an internal JSONDecodeError."""
    from meter.study.cells import load_plan

    plan_study(study_from_dict(micro_study(shapes_world, seeds=[0])), tmp_path / "out")
    assert not list((tmp_path / "out").rglob(".*.tmp")), "each written whole, then renamed"
    plan_file = tmp_path / "out/plan.json"
    plan_file.write_text(plan_file.read_text()[:100])
    with pytest.raises(DataError, match=rf"{plan_file} is damaged .*: delete it and run `meter study run` again"):
        load_plan(tmp_path / "out")
