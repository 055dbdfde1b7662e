"""`meter demo`: the shapes world end to end. Prepare, pretrain, fine-tune VQA, evaluate, and do the same for a
blind baseline (same model and budget, every image replaced by a constant); write report.json, plots, a table.

Re-running with the same --out continues where it stopped: the world is kept, finished runs are reused, an
interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meter.atomic_files import write_text_atomically
from meter.data.shapes import WorldSpec, generate, is_generated
from meter.data.shapes.world import GENERATOR_VERSION
from meter.data.shapes.world import MANIFEST as WORLD_MANIFEST
from meter.demo_tasks import run_task_demos, tasks_table
from meter.errors import ConfigError
from meter.output_folder import check_own_folder
from meter.run_folders import finetune_once, finished_checkpoint, recipe_config, resume_arg
from meter.runs import evaluate_vqa_run, run_pretrain
from meter.train.metrics_log import plot_curves, read_metrics
from meter.train.run_folder import RECORD as RUN_RECORD

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPlan:
    """The demo's budget; the defaults finish in under 10 minutes on 2 CPU cores."""

    images: int = 4000
    pretrain_steps: int = 400
    vqa_steps: int = 800
    seed: int = 0
    task_steps: int = 300  # each of the other downstream tasks (--tasks all)

    @classmethod
    def quick(cls) -> DemoPlan:
        """A smoke-test budget: every stage runs, nothing learns much."""
        return cls(images=120, pretrain_steps=4, vqa_steps=4, task_steps=4)


MARKER = ".meter-demo"  # written first into the demo's --out


def run_demo(out: str | Path, plan: DemoPlan = DemoPlan(), progress: bool = True, tasks: str = "vqa") -> dict[str, Any]:
    out = Path(out)
    check_own_folder(out, (MARKER, "report.json", "shapes/shapes_world.json"), "meter demo", "--out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()  # first: an interrupted demo's folder is taken again
    timings: dict[str, float] = {}
    start = time.perf_counter()
    common = [f"train.seed={plan.seed}", f"train.progress={str(progress).lower()}"]

    data = out / "shapes"
    spec = WorldSpec(images=plan.images, seed=plan.seed)
    if not is_generated(data, spec):
        check_no_runs_of_another_world(out, spec)
        generate(data, spec, progress=progress)
    timings["prepare"] = time.perf_counter() - start

    pretrain = recipe_config(
        "shapes-demo.yaml", out, data, "pretrain", [*common, f"train.max_steps={plan.pretrain_steps}"]
    )
    checkpoint = finished_checkpoint(pretrain) or run_pretrain(pretrain, resume=resume_arg(pretrain))
    timings["pretrain"] = time.perf_counter() - start - sum(timings.values())

    vqa_args = [*common, f"train.max_steps={plan.vqa_steps}", f"train.init_from={checkpoint}"]
    results = {}
    for name, extra in (("model", []), ("blind", ["data.blind=true"])):
        cfg = recipe_config("shapes-vqa.yaml", out, data, f"vqa-{name}", [*vqa_args, *extra])
        results[name] = finetune_once(cfg, evaluate_vqa_run)
        timings[f"vqa_{name}"] = time.perf_counter() - start - sum(timings.values())

    extra: dict[str, Any] = {}
    if tasks == "all":  # every other downstream task, after VQA (the VQA-only demo is unchanged)
        extra = run_task_demos(out, data, spec, checkpoint, plan.task_steps, common, timings, progress)

    _plot(out)
    report = {
        "vqa": results,
        **extra,
        "plan": plan.__dict__,
        "seconds": {k: round(v, 1) for k, v in timings.items()} | {"total": round(time.perf_counter() - start, 1)},
    }
    write_text_atomically(out / "report.json", json.dumps(report, indent=1))
    print(results_table(report))
    if extra:
        print(tasks_table(extra))
    return report


def check_no_runs_of_another_world(out: Path, spec: WorldSpec) -> None:
    """Refuses to write another world (another --seed, --quick's size) under the runs of the one there: it was
    rewritten before a run refused its other config, and the finished runs were left beside a world not theirs."""
    runs = sorted(path.parent.name for path in out.glob(f"*/{RUN_RECORD}"))
    if runs and (out / "shapes" / WORLD_MANIFEST).is_file():
        manifest = json.loads((out / "shapes" / WORLD_MANIFEST).read_text())
        there = manifest.get("spec", {})
        same = there.get("seed") == spec.seed and there.get("images") == spec.images
        other = (f"generator version {manifest.get('generator_version')}, this meter's {GENERATOR_VERSION}" if same
                 else f"seed {there.get('seed')}, {there.get('images')} images; this demo's: seed {spec.seed}, "
                      f"{spec.images} images")  # fmt: skip
        raise ConfigError(f"--out = {out} holds the runs ({', '.join(runs)}) of a demo on another shapes world "
                          f"({other}): give this demo another --out")  # fmt: skip


def _plot(out: Path) -> None:
    pretrain = read_metrics(out / "pretrain" / "metrics.jsonl")
    vqa = {name: read_metrics(out / f"vqa-{name}" / "metrics.jsonl") for name in ("model", "blind")}
    if pretrain:
        plot_curves({"pretrain": pretrain}, ["train/mlm_loss", "train/itm_loss"], out / "pretrain_loss.png")
    if any(vqa.values()):
        plot_curves(vqa, ["train/vqa_loss", "train/vqa_score"], out / "vqa_loss.png", title="VQA fine-tuning")


def results_table(report: dict[str, Any]) -> str:
    model, blind = report["vqa"]["model"], report["vqa"]["blind"]
    rows = [("overall", model["overall"], blind["overall"])]
    rows += [(k, v, blind["per_question_type"].get(k, float("nan"))) for k, v in model["per_question_type"].items()]
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'VQA accuracy (%)':<{width}} {'model':>7} {'blind':>7} {'gap':>7}"]
    lines += [f"{name:<{width}} {m:>7.2f} {b:>7.2f} {m - b:>+7.2f}" for name, m, b in rows]
    lines.append(f"total time: {report['seconds']['total']:.0f} s")
    return "\n".join(lines)
