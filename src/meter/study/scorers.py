"""Results of one task scored in different ways, which a table would otherwise set side by side as if comparable.

The same config can score differently on different machines: `captioning.tokenizer=auto` runs Stanford's
PTBTokenizer where a java runs and meter's Python restatement where none does (and before 2026-11-30 the Python one
was the default), so a study whose cells ran on several hosts, or over that change, can mix them. Each result
records how it was scored; the report names a mix rather than ranking rows by their tokenizer.
"""

from __future__ import annotations

from collections import defaultdict

from meter.study.cells import StudyPlan
from meter.study.records import run_result

SCORED_BY = {"tokenizer": "caption tokenizer"}  # a result's key naming how it was scored -> what the key is
UNRECORDED = "not recorded (scored before results named it: Python's, unless the run set captioning.tokenizer=ptb)"
PARTS = {"metrics": "reported split", "select": "selection split"}


def mixed_scorers(plan: StudyPlan) -> list[str]:
    """One line per task and split whose finished results were scored in more than one way, naming the runs of
    each way and how to score them alike."""
    lines = []
    for task in plan.tasks:
        for part, split in PARTS.items():
            for key, what in SCORED_BY.items():
                ways = _ways(plan, task, part, key)
                if len(ways) > 1:
                    listed = "; ".join(f"{way}: {', '.join(runs)}" for way, runs in sorted(ways.items()))
                    lines.append(
                        f"{task} ({split}): scored with different {what}s, so its numbers are not comparable "
                        f"across rows ({listed}). Score them alike: evaluate the odd ones out again with "
                        f"`meter evaluate {_kind(plan, task)} --checkpoint ...` and the setting that matches"
                    )
    return lines


def _ways(plan: StudyPlan, task: str, part: str, key: str) -> dict[str, list[str]]:
    """How each finished run of `task` was scored in `part` (by `key`) -> those runs' names (cell/run)."""
    ways: dict[str, list[str]] = defaultdict(list)
    recorded = False
    for cell in plan.cells:
        for run in cell.runs:
            result = run_result(run) if run.task == task else None
            scores = (result or {}).get(part)
            if not isinstance(scores, dict) or not scores.get("scored", scores.get("labelled", True)):
                continue
            recorded |= key in scores
            ways[str(scores.get(key, UNRECORDED))].append(f"{cell.name}/{run.name}")
    return ways if recorded else {}


def _kind(plan: StudyPlan, task: str) -> str:
    return next(run.task_kind for cell in plan.cells for run in cell.runs if run.task == task)
