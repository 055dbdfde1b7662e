"""Micro studies for the study tests: the tiny model of conftest's MICRO on the small shapes world, a few steps
per run."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from meter.study.cells import StudyPlan
from meter.study.records import RESULT
from tests.conftest import MICRO

MICRO_STUDY_OVERRIDES = [*MICRO, "data.image_cache_mb=0", "vqa.min_answer_count=1", "train.eval_batch_size=32"]


def micro_study(world: Path, **fields: Any) -> dict[str, Any]:
    """A study of the micro model on `world`: MLM + ITM pretraining (2 steps) then VQA (2 steps); two rows (the
    base, merged fusion), one seed; `fields` replace top-level settings."""
    study: dict[str, Any] = {
        "name": "micro",
        "title": "Micro study",
        "protocol": "vlp",
        "data": {"root": str(world)},
        "base": {
            "name": "co-attention",
            "overrides": list(MICRO_STUDY_OVERRIDES),
            "pretrain": {"recipe": "shapes-tiny.yaml", "steps": 2},
            "tasks": {"vqa": {"recipe": "shapes-vqa.yaml", "steps": 2}},
        },
        "variants": [{"name": "merged", "overrides": ["model.fusion=merged"]}],
        "seeds": [0],
    }
    study.update(copy.deepcopy(fields))
    return study


def write_study(path: Path, study: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def as_if_ran(plan: StudyPlan) -> None:
    """Every run of the plan as if it had finished: a result in each folder."""
    for cell in plan.cells:
        for run in cell.own_runs():
            record = {"metrics": {"overall": 50.0}, "select": {"overall": 40.0}, "select_overrides": run.select}
            Path(run.folder, RESULT).write_text(json.dumps(record))
