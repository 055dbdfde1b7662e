"""The study's tables from its runs' results: one row per variant, one column per task metric, each entry the mean
and standard deviation over the seeds that finished (with their number), its difference from the base row over the
seeds both finished, and the best of each column marked among the entries every seed of the row finished (every
score here is higher-is-better; a column that counts things, such as skipped or images, has no best). Means that
differ only in their last bits (50.01 and the mean of 50.00 and 50.02) are ties: the bold marks, differences and
search choices go by the numbers, not by the order of a float sum.

The uniform table runs every row with the recipe's settings, as the paper does. With a search, the tuned table runs
every row at its own best: for each row and task, the search point (the recipe's settings among them) whose mean
selection score on the selection split, over seeds, is highest (the task's own, as train.best_on's: VQA score,
accuracy, IR@1 + TR@1, CIDEr; not the first column, which for retrieval was IR@1 alone); the table then shows that
point's scores on the reported split.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from meter.errors import ConfigError
from meter.study.cells import CellPlan, RunPlan, StudyPlan
from meter.study.records import run_result
from meter.study.spec import PROTOCOLS
from meter.tasks.downstream import DOWNSTREAM

RECIPE = "recipe"  # the name shown for the search point that is the recipe's own settings
MAX_LISTED = 20  # score keys a message lists (VQA has one per question type)
# the keys of a task's scores that count things rather than score the model (fewer skipped samples is not a higher
# score, and the chance recall is the split's, not the model's): shown in the tables, never marked best
COUNTS = {"skipped", "images", "texts", "questions", "examples", "sentences", "shortlist", "scored_pairs", "beam_size",
          "chance"}  # fmt: skip


def same(a: float, b: float) -> bool:
    """Equal but for the rounding of a float sum."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@dataclass
class Stat:
    values: list[float]
    skipped: int = 0  # evaluation samples whose image could not be read (scored as the file answers them), all seeds
    seeds: list[str] = field(default_factory=list)  # the seed (its cell's folder, seed-N) of each value, in order
    not_finite: int = 0  # seeds whose score was NaN or infinite: not in `values`, and the entry says so

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        """NaN where no seed gave a finite value."""
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float | None:
        """The sample standard deviation (n - 1); none from one seed."""
        return statistics.stdev(self.values) if self.n > 1 else None


@dataclass
class Column:
    task: str
    metric: str  # its key in the task's scores (a.b: nested)
    short: str = ""  # the name shown; "" : the key

    @property
    def label(self) -> str:
        return f"{self.task} {self.short or self.metric}"

    @property
    def ranked(self) -> bool:
        """A score (higher is better), not a count: its best entry is marked."""
        return self.metric.split(".", 1)[0] not in COUNTS


@dataclass
class TableRow:
    name: str
    stats: dict[str, Stat | None]  # column label -> the seeds' values (None: no finished seed)
    delta: dict[str, float | None] = field(default_factory=dict)  # mean minus the base row's
    best: set[str] = field(default_factory=set)  # the columns where this row is best
    chosen: dict[str, str] = field(default_factory=dict)  # tuned: task -> the chosen search point
    seeds: int = 0  # the row's cells (one per seed): an entry with fewer values is not ranked against complete ones


@dataclass
class Table:
    key: str  # e.g. vlp-uniform
    title: str
    protocol: str
    kind: str  # uniform, tuned, or selection
    columns: list[Column]
    rows: list[TableRow]


def metric_value(scores: dict[str, Any], path: str) -> float | None:
    """A number in a task's scores by its key; `a.b` reaches into a nested mapping (keys may hold spaces)."""
    if path in scores:
        value = scores[path]
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    head, dot, rest = path.partition(".")
    while dot:
        if head in scores and isinstance(scores[head], dict):
            return metric_value(scores[head], rest)
        more, dot, rest = rest.partition(".")
        head = f"{head}.{more}"
    return None


def metric_paths(scores: dict[str, Any], prefix: str = "") -> list[str]:
    """The keys of every number in a task's scores (`a.b` for nested ones), as `metric_value` reads them."""
    paths = []
    for key, value in scores.items():
        if isinstance(value, dict):
            paths += metric_paths(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            paths.append(f"{prefix}{key}")
    return paths


def check_metrics(plan: StudyPlan) -> None:
    """Refuses a task metric that none of the task's scored runs has (a misspelt key showed dashes in every row, as
    if no run had finished), naming the keys they have."""
    for task, spec in plan.tasks.items():
        results = [run_result(run) for cell in plan.cells for run in cell.runs if run.task == task]
        scored = [
            scores
            for result in results
            if result
            for scores in [result.get("metrics") or {}]
            if scores.get("scored", scores.get("labelled", True))
        ]
        if not scored:
            continue
        for metric in spec.metrics:
            if all(metric_value(scores, metric) is None for scores in scored):
                keys = sorted({path for scores in scored for path in metric_paths(scores)})
                more = f", ... ({len(keys)} in all)" if len(keys) > MAX_LISTED else ""
                listed = ", ".join(keys[:MAX_LISTED]) + more
                raise ConfigError(
                    f"tasks.{task}.metrics: {metric!r} is a score of none of the task's {len(scored)} finished runs; "
                    f"their scores: {listed}. Correct it in the study file and run `meter study run` again (finished "
                    "runs are kept, not run again)"
                )


def _cells(plan: StudyPlan, protocol: str, row: str) -> list[CellPlan]:
    return [cell for cell in plan.cells if cell.protocol == protocol and cell.row == row]


def _runs(cell: CellPlan, task: str) -> dict[str, RunPlan]:
    return {run.point: run for run in cell.runs if run.task == task}


SELECTION = "selection"  # a column of the selection score: the number a run's best checkpoint is chosen by


def selection_value(kind: str, scores: dict[str, Any]) -> float | None:
    """The task kind's selection score (train.best_on's: VQA score, accuracy, IR@1 + TR@1, CIDEr) of `scores`."""
    try:
        return float(DOWNSTREAM.get(kind, key="task").selection_score(scores))
    except (KeyError, TypeError, ValueError, ConfigError):  # not scored (yet), or not a task with one
        return None


def _by_cell(cells: list[CellPlan], task: str, point: str, metric: str, part: str) -> dict[str, tuple[float, int]]:
    """Each cell's (seed's) value of `metric` in its result's `part` (metrics, select), and the number of samples
    whose image its evaluation could not read (within data.max_bad_samples). `metric` SELECTION: the task's
    selection score. A value that is not finite is kept, for `_stat` to count apart."""
    values = {}
    for cell in cells:
        run = _runs(cell, task).get(point)
        result = run_result(run) if run else None
        if result and part == "select" and result.get("select_overrides") != run.select:  # scored on another split
            result = None  # (a study whose selection changed, its re-evaluation not yet done): not this table's
        scores = (result.get(part) or {}) if result else {}
        value = selection_value(run.task_kind, scores) if metric == SELECTION and run else metric_value(scores, metric)
        if value is not None:
            skipped = scores.get("skipped", 0)
            values[cell.name] = (value, skipped if isinstance(skipped, int) else 0)
    return values


def _finite(found: dict[str, tuple[float, int]]) -> dict[str, tuple[float, int]]:
    return {cell: pair for cell, pair in found.items() if math.isfinite(pair[0])}


def _stat(found: dict[str, tuple[float, int]]) -> Stat | None:
    finite = _finite(found)
    if not found:
        return None
    return Stat([value for value, _ in finite.values()], sum(skipped for _, skipped in finite.values()),
                [cell.rsplit("/", 1)[-1] for cell in finite], len(found) - len(finite))  # fmt: skip


def _column_stat(cells: list[CellPlan], task: str, point: str, metric: str, part: str) -> Stat | None:
    return _stat(_by_cell(cells, task, point, metric, part))


def columns(plan: StudyPlan) -> list[Column]:
    """One per task metric, shown by the last part of its key (`per_question_type.how many`: `how many`) unless
    two of the task's would then look alike."""
    out = []
    for task, spec in plan.tasks.items():
        shorts = [metric.rsplit(".", 1)[-1] for metric in spec.metrics]
        unique = len(set(shorts)) == len(shorts)
        pairs = zip(spec.metrics, shorts, strict=True)
        out += [Column(task, metric, short if unique else "") for metric, short in pairs]
    return out


def candidate_points(plan: StudyPlan, cells: list[CellPlan], task: str) -> list[str]:
    """The row's search points for `task`, the recipe's settings ("") first; a search value equal to the recipe's
    is the same run, so it appears once."""
    found = {point for cell in cells for point in _runs(cell, task)}
    return [point for point in ["", *plan.points] if point in found]


def choose(plan: StudyPlan, cells: list[CellPlan], task: str) -> tuple[str | None, dict[str, Stat | None]]:
    """The point with the best mean selection score (ties: the earlier, the recipe's first), and every point's. The
    points are compared over the seeds every one of them finished (a point whose second seed failed is not ranked
    by its first seed alone against the others' two); without such a seed, over each point's own."""
    points = candidate_points(plan, cells, task)
    every = {p: _by_cell(cells, task, p, SELECTION, "select") for p in points}
    scores = {point: _stat(values) for point, values in every.items()}
    found = {point: _finite(values) for point, values in every.items()}
    shared = set.intersection(*(set(values) for values in found.values() if values)) if any(found.values()) else set()
    means = {point: statistics.fmean(values[cell][0] for cell in shared or values)
             for point, values in found.items() if values}  # fmt: skip
    if not means:
        return None, scores
    top = max(means.values())
    return next(point for point, mean in means.items() if same(mean, top)), scores  # ties: the earlier


def complete(row: TableRow, stat: Stat | None) -> bool:
    """Every seed of the row gave a finite value: the entry is ranked against the others."""
    return stat is not None and stat.n == row.seeds and not stat.not_finite


def _difference(stat: Stat, base: Stat) -> float | None:
    """The mean difference over the seeds both finished (None: none); 0 where the means are the same number."""
    ours, theirs = dict(zip(stat.seeds, stat.values, strict=True)), dict(zip(base.seeds, base.values, strict=True))
    shared = [seed for seed in ours if seed in theirs]
    if not shared:
        return None
    mine, other = statistics.fmean(ours[s] for s in shared), statistics.fmean(theirs[s] for s in shared)
    return 0.0 if same(mine, other) else mine - other


def _deltas(rows: list[TableRow], labels: list[str]) -> None:
    base = rows[0] if rows else None
    for label in labels:
        base_stat = base.stats.get(label) if base else None
        for row in rows:
            stat = row.stats.get(label)
            row.delta[label] = _difference(stat, base_stat) if stat and base_stat and row is not base else None


def _mark(rows: list[TableRow], labels: list[str]) -> None:
    """The best complete entry of each column in bold (ties: each of them)."""
    for label in labels:
        means = [row.stats[label].mean for row in rows if complete(row, row.stats.get(label))]
        top = max(means) if means else None
        for row in rows:
            stat = row.stats.get(label)
            if top is not None and complete(row, stat) and same(stat.mean, top):
                row.best.add(label)


def point_label(point: str) -> str:
    return point or RECIPE


def build_tables(plan: StudyPlan) -> list[Table]:
    """Per protocol: the uniform table, and with a search the tuned table and the selection scores behind it."""
    check_metrics(plan)
    cols = columns(plan)
    labels = [c.label for c in cols]
    tables = []
    for protocol in plan.protocols:
        name = PROTOCOLS[protocol].split(":")[0]
        uniform, tuned, selection = [], [], []
        select_cols: list[Column] = []
        for row in plan.rows:
            cells = _cells(plan, protocol, row)
            stats = {c.label: _column_stat(cells, c.task, "", c.metric, "metrics") for c in cols}
            uniform.append(TableRow(row, stats, seeds=len(cells)))
            if not plan.points:
                continue
            tuned_row, select_row = TableRow(row, {}, seeds=len(cells)), TableRow(row, {}, seeds=len(cells))
            for task in plan.tasks:
                # a zero-shot task has nothing to tune: the tuned table shows its one evaluation
                point, scores = ("", {}) if plan.tasks[task].zero_shot else choose(plan, cells, task)
                if point is not None and not plan.tasks[task].zero_shot:  # nothing chosen: one evaluation
                    tuned_row.chosen[task] = point_label(point)
                for c in cols:
                    if c.task == task:
                        tuned_row.stats[c.label] = _column_stat(cells, task, point, c.metric, "metrics") \
                            if point is not None else None  # fmt: skip
                for candidate, stat in scores.items():
                    at = point_label(candidate)
                    column = Column(task, f"{SELECTION} @ {at}", f"{SELECTION} @ {at}")
                    if column.label not in [s.label for s in select_cols]:
                        select_cols.append(column)
                    select_row.stats[column.label] = stat
                    if candidate == point:  # bold in the selection table: the point the tuned table shows
                        select_row.best.add(column.label)
                        select_row.chosen[task] = point_label(point)
            tuned.append(tuned_row)
            selection.append(select_row)
        ranked = [c.label for c in cols if c.ranked]
        _deltas(uniform, labels)
        _mark(uniform, ranked)
        tables.append(Table(f"{protocol}-uniform", f"{plan.title}: {name}, the recipe's settings for every row",
                            protocol, "uniform", cols, uniform))  # fmt: skip
        if plan.points:
            _deltas(tuned, labels)
            _mark(tuned, ranked)
            _deltas(selection, [c.label for c in select_cols])
            tables.append(Table(f"{protocol}-tuned", f"{plan.title}: {name}, each row at its best search point",
                                protocol, "tuned", cols, tuned))  # fmt: skip
            title = (f"{plan.title}: {name}, selection-split scores of each search point (bold: the one the tuned "
                     "table shows, the best mean over the seeds every point finished)")  # fmt: skip
            tables.append(Table(f"{protocol}-selection", title, protocol, "selection", select_cols, selection))
    return tables
