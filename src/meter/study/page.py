"""The report as one self-contained HTML page: no scripts, no outside files; figures are PNGs inside the page."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import yaml

from meter.atomic_files import write_text_atomically
from meter.run_folders import finished_checkpoint
from meter.study.cells import RUN, RunPlan, StudyPlan
from meter.study.records import read_json, run_done
from meter.study.report_text import NOTE, entry, not_run, reported_splits
from meter.study.results import Table
from meter.study.spec import PROTOCOLS
from meter.study.status import cell_state
from meter.tasks.best_checkpoint import evaluated_weights

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
thead th { background: #f2f2f2; }
td.best { background: #e6f4e6; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 12px; white-space: pre-wrap; }
details { margin: 0.3em 0; }
summary { cursor: pointer; }
.state-done { color: #26734d; } .state-failed, .state-interrupted { color: #b3261e; }
.state-running, .state-queued { color: #8a6d00; }
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _image(figures: dict[str, bytes], name: str, alt: str) -> str:
    if name not in figures:
        return ""
    data = base64.b64encode(figures[name]).decode()
    return f'<p><img src="data:image/png;base64,{data}" alt="{_e(alt)}"></p>'


def _table(table: Table) -> str:
    labels = [c.label for c in table.columns]
    chosen = table.kind == "tuned"
    head = "".join(f"<th>{_e(x)}</th>" for x in ["row", *labels, *(["chosen"] if chosen else [])])
    body = []
    for row in table.rows:
        cells = [f'<td class="text">{_e(row.name)}</td>']
        for label in labels:
            text = _e(entry(row, label))
            cells.append(f'<td class="best"><strong>{text}</strong></td>' if label in row.best else f"<td>{text}</td>")
        if chosen:
            cells.append(f'<td class="text">{_e(", ".join(f"{t}: {p}" for t, p in row.chosen.items()))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="results" id="table-{_e(table.key)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")  # fmt: skip


def _run_details(run: RunPlan) -> str:
    stored = read_json(Path(run.folder) / RUN) or {}
    result = read_json(Path(run.folder) / "result.json")
    state = "done" if run_done(run) else "not done"
    parts = [f"<p><strong>{_e(run.name)}</strong> ({state}) in <code>{_e(run.folder)}</code></p>",
             f"<pre>{_e(run.command())}</pre>"]  # fmt: skip
    if run.select:
        final = finished_checkpoint(run.config())  # the weights the worker scored: the best of train.best_on's
        checkpoint = evaluated_weights(run.config(), final) if final else Path(run.folder) / "checkpoints" / "step_N"
        parts.append(f"<p>selection split:</p><pre>{_e(run.select_command(str(checkpoint)))}</pre>")
    if result is not None:
        shown = {k: v for k, v in result.items() if k in ("metrics", "select", "seconds")}
        parts.append(f"<details><summary>scores</summary><pre>{_e(json.dumps(shown, indent=1))}</pre></details>")
    if stored.get("config"):
        config = yaml.safe_dump(stored["config"], sort_keys=False)
        parts.append(f"<details><summary>config</summary><pre>{_e(config)}</pre></details>")
    return "".join(parts)


def _cells(plan: StudyPlan) -> str:
    parts = []
    for cell in plan.cells:
        state = cell_state(plan, cell)
        detail = f": {state.detail}" if state.detail else ""
        summary = (f'{_e(cell.name)} <span class="state-{state.state.replace(" ", "-")}">{_e(state.state)}'
                   f"{_e(detail)}</span> ({state.runs_done}/{state.runs} runs)")  # fmt: skip
        runs = "".join(_run_details(run) for run in cell.runs)
        parts.append(f'<details class="cell"><summary>{summary}</summary>{runs}</details>')
    return "".join(parts)


def write_page(
    out: Path, plan: StudyPlan, tables: list[Table], figures: dict[str, bytes], path: Path, mixed: list[str]
) -> None:
    protocols = "; ".join(f"<strong>{_e(p)}</strong>: {_e(PROTOCOLS[p])}" for p in plan.protocols)
    parts = [f"<h1>{_e(plan.title)}</h1>"]
    if plan.description:
        parts.append(f"<p>{_e(plan.description.strip())}</p>")
    parts.append(f"<p>Protocols: {protocols}. Seeds: {_e(', '.join(map(str, plan.seeds)))}. {_e(NOTE)}.</p>")
    parts.append(f"<p>{_e(reported_splits(plan))}.</p>")
    parts += [f"<p>{_e(line)}.</p>" for line in not_run(plan)]
    if mixed:
        items = "".join(f"<li>{_e(line)}</li>" for line in mixed)
        parts.append(f'<h2>Not comparable</h2><ul class="warning">{items}</ul>')
    for table in tables:
        parts += [f"<h2>{_e(table.title)}</h2>", _table(table)]
        parts.append(_image(figures, f"bars-{table.key}.png", f"bar chart: {table.title}"))
    if "pretraining-loss.png" in figures:
        parts += ["<h2>Pretraining losses</h2>", _image(figures, "pretraining-loss.png", "pretraining loss curves")]
    parts += ["<h2>Cells</h2>", "<p>Each cell's runs: the command that reproduces each (a `meter pretrain`, "
              "`meter finetune` or, zero-shot, `meter evaluate` of the recipe with the study's overrides) and the "
              "config it ran with.</p>",
              _cells(plan)]  # fmt: skip
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(plan.title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n")  # fmt: skip
    write_text_atomically(path, page)
