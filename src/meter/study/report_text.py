"""The tables as text: one entry (mean ± std (n) [difference from the first row]), a Markdown table, and the CSV."""

from __future__ import annotations

import csv
import io
import re

from meter.study.cells import StudyPlan
from meter.study.results import Stat, Table, TableRow
from meter.study.unseen import UNSEEN

NOTE = ("mean ± sample standard deviation over seeds (n: seeds that finished; skipped: evaluation samples whose image "
        "could not be read, scored as the leaderboard file answers them, over those seeds; not finite: seeds whose "
        "score was NaN or infinite, left out); in brackets the difference from the first row over the seeds both "
        "finished; bold: the best of its column among the entries every seed of their row finished (none in a column "
        "of counts, such as skipped; in a selection table: the search point the tuned table shows)")  # fmt: skip


def reported_splits(plan: StudyPlan) -> str:
    """The split each task's column is read on (its runs' evaluation split)."""
    splits: dict[str, str] = {}
    for run in (run for cell in plan.cells for run in cell.runs if run.task and run.task not in splits):
        cfg = run.config()
        splits[run.task] = getattr(getattr(cfg, cfg.task), "eval_split", "")
    text = "Reported on: " + ", ".join(f"{task} {split}" for task, split in splits.items() if split)
    if any(split.endswith(f"-{UNSEEN}") for split in splits.values()):
        text += f" (-{UNSEEN}: its questions on the images that no pretraining of the study saw)"
    return text


def not_run(plan: StudyPlan) -> list[str]:
    """The zero-shot columns a row shows a dash in because nothing was run, not because a run failed: its
    pretraining has no ITM head to rank pairs with (the MLM-only row)."""
    lines = []
    for task, spec in plan.tasks.items():
        if not spec.zero_shot:
            continue
        rows = [
            row for row in plan.rows if not any(run.task == task for c in plan.cells if c.row == row for run in c.runs)
        ]
        if rows:
            lines.append(f"{task}: not run for {', '.join(rows)} (– in its columns): pretrained without ITM, the "
                         "model has no head that scores a pair without fine-tuning")  # fmt: skip
    return lines


def entry(row: TableRow, label: str, digits: int = 2) -> str:
    stat: Stat | None = row.stats.get(label)
    if stat is None:
        return "–"
    counts = f"n={stat.n}" + (f", {stat.skipped:,} skipped" if stat.skipped else "") + \
        (f", {stat.not_finite} not finite" if stat.not_finite else "")  # fmt: skip
    mean = f"{stat.mean:.{digits}f}" if stat.n else "–"
    text = mean + (f" ± {stat.std:.{digits}f}" if stat.std is not None else "") + f" ({counts})"
    delta = row.delta.get(label)
    return text + (f" [{delta:+.{digits}f}]" if delta is not None else "")


def markdown_table(table: Table) -> str:
    labels = [c.label for c in table.columns]
    chosen = table.kind == "tuned"
    header = ["row", *map(markdown_cell, labels), *(["chosen"] if chosen else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(labels) +
                                                              (["---"] if chosen else [])) + "|"]  # fmt: skip
    for row in table.rows:
        cells = [f"**{entry(row, label)}**" if label in row.best else entry(row, label) for label in labels]
        extra = [", ".join(f"{task}: {point}" for task, point in row.chosen.items())] if chosen else []
        lines.append("| " + " | ".join([markdown_cell(row.name), *cells, *map(markdown_cell, extra)]) + " |")
    return "\n".join(lines)


# what formats text inside a table cell: an `_` only at a word's edge (t2i_r1 stays as it is)
MARKDOWN = re.compile(r"[\\`*\[\]<>|~&$]|(?<![^\W_])_|_(?![^\W_])")  # $: math where a viewer renders it


def markdown_cell(text: str) -> str:
    """A name as a markdown table cell, as written: a `|` in it would start another column, `*` or `<b>` format it,
    `<img ...>` run as HTML (names are printable: the study file refuses others)."""
    return MARKDOWN.sub(lambda found: "\\" + found.group(), text)


def csv_report(tables: list[Table]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["table", "protocol", "kind", "row", "task", "metric", "mean", "std", "n", "delta", "best",
                     "chosen", "values", "skipped", "seeds", "not_finite"])  # fmt: skip
    for table in tables:
        for row in table.rows:
            for column in table.columns:
                stat = row.stats.get(column.label)
                delta = row.delta.get(column.label)
                writer.writerow([
                    table.key, table.protocol, table.kind, row.name, column.task, column.metric,
                    "" if stat is None or not stat.n else repr(stat.mean),
                    "" if stat is None or stat.std is None else repr(stat.std),
                    0 if stat is None else stat.n, "" if delta is None else repr(delta),
                    int(column.label in row.best), row.chosen.get(column.task, ""),
                    "" if stat is None else ";".join(repr(v) for v in stat.values), 0 if stat is None else stat.skipped,
                    "" if stat is None else ";".join(stat.seeds), 0 if stat is None else stat.not_finite,
                ])  # fmt: skip
    return buffer.getvalue()
