"""`meter demo --tasks all`: after VQA, every other downstream task on the shapes world, each against a baseline.

NLVR2, SNLI-VE and captioning are fine-tuned twice from the same pretrained checkpoint, as VQA is: the model, and a
blind model (same budget, every image replaced by a constant: what the text alone gives; for captioning, the one
caption that fits all images best). Captioning adds a fresh decoder to the pretrained encoder. Retrieval's baseline
is chance (a blind model scores every image alike, so its ranking is the order of the list). Each task adds one
entry to report.json: {"model": metrics, "blind" or "chance": metrics, "baseline": which, "headline": the metric}.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from meter.data.shapes import WorldSpec, generate_tasks, tasks_generated
from meter.run_folders import finetune_once, recipe_config
from meter.runs import evaluate_run
from meter.train.metrics_log import plot_curves, read_metrics

# task -> (recipe, the number the table compares, the baseline)
TASKS = {
    "nlvr2": ("shapes-nlvr2.yaml", "accuracy", "blind"),
    "snli_ve": ("shapes-snli-ve.yaml", "accuracy", "blind"),
    "retrieval": ("shapes-retrieval.yaml", "rsum", "chance"),
    "captioning": ("shapes-captioning.yaml", "cider", "blind"),
}


def run_task_demos(
    out: Path, data: Path, spec: WorldSpec, checkpoint: Path, steps: int, common: list[str],
    timings: dict[str, float], progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Fine-tunes and evaluates each task of TASKS; adds each stage's seconds to `timings`."""
    start = time.perf_counter()
    if not tasks_generated(data, spec):
        generate_tasks(data, spec, progress=progress)
    timings["prepare_tasks"] = time.perf_counter() - start
    entries: dict[str, Any] = {}
    for task, (recipe, headline, baseline) in TASKS.items():
        args = [*common, f"train.max_steps={steps}", f"train.init_from={checkpoint}"]
        runs = [("model", [])] + ([("blind", ["data.blind=true"])] if baseline == "blind" else [])
        entry: dict[str, Any] = {"baseline": baseline, "headline": headline}
        for name, extra in runs:
            began = time.perf_counter()
            cfg = recipe_config(recipe, out, data, f"{task}-{name}", [*args, *extra])
            entry[name] = finetune_once(cfg, evaluate_run)
            timings[f"{task}_{name}"] = time.perf_counter() - began
        if baseline == "chance":
            entry["chance"] = entry["model"].pop("chance")
        entries[task] = entry
    _plot(out)
    return entries


def _plot(out: Path) -> None:
    curves = {task: read_metrics(out / f"{task}-model" / "metrics.jsonl") for task in TASKS}
    keys = sorted({k for records in curves.values() for r in records for k in r if k.endswith("_loss")})
    if keys:
        plot_curves({t: r for t, r in curves.items() if r}, keys, out / "tasks_loss.png", title="downstream tasks")


def tasks_table(entries: dict[str, Any]) -> str:
    """One line per task: the headline metric of the model, of its baseline, and the gap."""
    lines = [f"{'task (metric, baseline)':<32} {'model':>8} {'baseline':>9} {'gap':>8}"]
    for task, entry in entries.items():
        model, base = entry["model"][entry["headline"]], entry[entry["baseline"]][entry["headline"]]
        name = f"{task} ({entry['headline']}, {entry['baseline']})"
        lines.append(f"{name:<32} {model:>8.2f} {base:>9.2f} {model - base:>+8.2f}")
    return "\n".join(lines)
