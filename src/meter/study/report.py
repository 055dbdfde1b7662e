"""`meter study report DIR` (also written at the end of `meter study run`): the study's tables as Markdown
(report.md), CSV (report.csv, one line per table entry, with each seed's value) and a self-contained HTML page
(report.html: the tables, bar charts with error bars, the pretraining loss curves overlaid, and for each cell its
state, the command that reproduces each of its runs and the config it ran with)."""

from __future__ import annotations

import logging
from pathlib import Path

from meter.atomic_files import write_bytes_atomically, write_text_atomically
from meter.study.cells import load_plan
from meter.study.page import write_page
from meter.study.plots import bar_chart, pretraining_curves
from meter.study.report_text import NOTE, csv_report, markdown_cell, markdown_table, not_run, reported_splits
from meter.study.results import Table, build_tables
from meter.study.scorers import mixed_scorers
from meter.study.spec import PROTOCOLS
from meter.study.status import study_states

log = logging.getLogger(__name__)


def markdown_report(out: Path, tables: list[Table], mixed: list[str]) -> str:
    plan = load_plan(out)
    parts = [f"# {markdown_cell(plan.title)}", ""]
    if plan.description:
        parts += [plan.description.strip(), ""]
    parts += ["Protocols: " + "; ".join(f"**{p}**: {PROTOCOLS[p]}" for p in plan.protocols) + ".", "",
              f"Seeds: {', '.join(map(str, plan.seeds))}. {NOTE}.", "", f"{reported_splits(plan)}.", ""]  # fmt: skip
    notes = not_run(plan)
    parts += [f"{markdown_cell(line)}." for line in notes] + ([""] if notes else [])
    if mixed:
        parts += ["## Not comparable", "", *(f"- {markdown_cell(line)}" for line in mixed), ""]
    for table in tables:
        parts += [f"## {markdown_cell(table.title)}", "", markdown_table(table), ""]
    states = study_states(out)
    unfinished = [s for s in states if s.state != "done"]
    if unfinished:
        parts += ["## Cells not done", ""]
        parts += [f"- `{s.name}`: {s.state}" + (f" ({markdown_cell(s.detail)})" if s.detail else "")
                  for s in unfinished]  # fmt: skip
        parts.append("")
    return "\n".join(parts)


def write_report(out: str | Path) -> dict[str, Path]:
    """Writes report.md, report.csv, report.html and the figures (PNG) into OUT; returns their paths."""
    out = Path(out)
    plan = load_plan(out)
    tables = build_tables(plan)
    mixed = mixed_scorers(plan)
    for line in mixed:
        log.warning("study report: %s", line)
    figures: dict[str, bytes] = {}
    for table in tables:
        if table.kind != "selection":
            figures[f"bars-{table.key}.png"] = bar_chart(table)
    curves = pretraining_curves(plan)
    if curves:
        figures["pretraining-loss.png"] = curves
    ours = [f"bars-{protocol}-{kind}.png" for protocol in PROTOCOLS for kind in ("uniform", "tuned")]
    for stale in [*ours, "pretraining-loss.png"]:
        if stale not in figures:  # an earlier report's figure of a table (or curves) this one no longer has
            (out / stale).unlink(missing_ok=True)
    for name, data in figures.items():
        write_bytes_atomically(out / name, data)
    paths = {"markdown": out / "report.md", "csv": out / "report.csv", "html": out / "report.html"}
    write_text_atomically(paths["markdown"], markdown_report(out, tables, mixed))
    write_text_atomically(paths["csv"], csv_report(tables))
    write_page(out, plan, tables, figures, paths["html"], mixed)
    return paths
