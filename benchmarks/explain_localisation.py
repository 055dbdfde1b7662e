"""Do the heat maps point at the asked object? On held-out shapes-world colour questions ("What color is the
triangle?": the colour of the only object of that shape), the fraction of each map's mass that lies on the asked
object, per method (gradcam, attention) and per fusion layer and averaged.

    python benchmarks/explain_localisation.py [--model runs/demo/vqa-model/model] [--world runs/demo/shapes]
                                              [--questions 100] [--out runs/benchmarks/explain_localisation.json]

Two measures, each against what a uniform map would score:
- cells: mass on the patches (grid cells) the object's box overlaps; in the grid layout an object lies inside one
  cell of the 4 x 4 grid, which is one 16-pixel patch at 64 px, so a uniform map scores about 1/16;
- box: mass inside the object's box itself, with each patch's mass spread evenly over its pixels.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from meter.config import VqaConfig
from meter.data.formats.vqa import read_vqa
from meter.data.shapes.scene import SHAPES, SIZES
from meter.explain import METHODS, explain_batch
from meter.predictor import Predictor


def colour_questions(world: Path, split: str, count: int) -> list[dict]:
    """The first `count` colour questions of `split` (by question id), each with its image and the asked object."""
    scenes = {scene["image_id"]: scene for scene in json.loads((world / "scenes.json").read_text())}
    records = read_vqa(
        world / f"vqa/v2_OpenEnded_mscoco_{split}_questions.json", world / f"vqa/v2_mscoco_{split}_annotations.json",
        world / "images", VqaConfig().image_pattern, split,
    )  # fmt: skip
    picked = []
    for record in sorted(records, key=lambda r: r.question_id):
        if record.question_type != "what color is the":
            continue
        shape = next(s for s in SHAPES if s in record.question.lower())
        (target,) = [o for o in scenes[record.image_id]["objects"] if o["shape"] == shape]  # the only one
        picked.append({"image": record.image, "question": record.question, "object": target,
                       "answer": record.multiple_choice_answer})  # fmt: skip
        if len(picked) == count:
            break
    return picked


def object_box(obj: dict) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) as fractions of the image side."""
    half = SIZES[obj["size"]] / 2
    return obj["x"] - half, obj["y"] - half, obj["x"] + half, obj["y"] + half


def overlap(box: tuple[float, float, float, float], side: int) -> np.ndarray:
    """(side, side): the fraction of each grid cell's area that the box covers."""
    edges = np.linspace(0, 1, side + 1)
    left, top, right, bottom = box
    across = np.clip(np.minimum(edges[1:], right) - np.maximum(edges[:-1], left), 0, None) * side
    down = np.clip(np.minimum(edges[1:], bottom) - np.maximum(edges[:-1], top), 0, None) * side
    return down[:, None] * across[None, :]


def scores(grid: np.ndarray, box: tuple[float, float, float, float]) -> dict[str, float]:
    covered = overlap(box, len(grid))
    return {"cells": float(grid[covered > 0].sum()), "box": float((grid * covered).sum())}


def measure(predictor: Predictor, questions: list[dict], method: str, batch: int) -> dict:
    per_map: dict[str, list[dict[str, float]]] = {}
    uniform, correct = [], 0
    for start in range(0, len(questions), batch):
        chunk = questions[start : start + batch]
        maps = explain_batch(predictor, [q["image"] for q in chunk], [q["question"] for q in chunk], "vqa", method)
        for question, heat in zip(chunk, maps, strict=True):
            box = object_box(question["object"])
            views = {"mean": heat.mean, **{f"layer {k}": g for k, g in enumerate(heat.layers, start=1)}}
            for name, grid in views.items():
                per_map.setdefault(name, []).append(scores(grid, box))
            side = len(heat.mean)
            uniform.append(scores(np.full((side, side), 1 / side**2), box))
            correct += heat.prediction["explained"]["answer"] == question["answer"]
    summary = {}
    for name, rows in per_map.items():
        cells = np.array([r["cells"] for r in rows])
        summary[name] = {
            "cells": round(float(cells.mean()), 4),
            "box": round(float(np.mean([r["box"] for r in rows])), 4),
            "most_on_object": round(float((cells > 0.5).mean()), 4),  # questions with over half the mass on it
        }
    summary["uniform map"] = {k: round(float(np.mean([u[k] for u in uniform])), 4) for k in ("cells", "box")}
    summary["mean map by shape (cells)"] = {
        shape: round(float(np.mean([r["cells"] for r, q in zip(per_map["mean"], questions, strict=True)
                                    if q["object"]["shape"] == shape])), 4)
        for shape in SHAPES if any(q["object"]["shape"] == shape for q in questions)
    }  # fmt: skip
    summary["answer accuracy"] = round(correct / len(questions), 4)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/demo/vqa-model/model")
    parser.add_argument("--world", default="runs/demo/shapes")
    parser.add_argument("--split", default="val2014", help="held out: the demo fine-tunes on train2014")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--out", default="runs/benchmarks/explain_localisation.json")
    args = parser.parse_args()

    predictor = Predictor(args.model, "cpu")
    questions = colour_questions(Path(args.world), args.split, args.questions)
    shapes = {s: sum(q["object"]["shape"] == s for q in questions) for s in SHAPES}
    print(f"{len(questions)} colour questions of {args.split} ({', '.join(f'{n} {s}' for s, n in shapes.items())})")
    results = {"model": str(predictor.checkpoint), "questions": len(questions), "shapes": shapes, "methods": {}}
    for method in METHODS:
        start = time.perf_counter()
        results["methods"][method] = measure(predictor, questions, method, args.batch)
        print(f"\n{method} ({time.perf_counter() - start:.1f} s): mass on the asked object")
        print(f"{'map':<14}{'cells':>8}{'box':>8}{'>50% on it':>12}")
        for name, row in results["methods"][method].items():
            if isinstance(row, dict) and "cells" in row:
                share = f"{row['most_on_object']:>12.0%}" if "most_on_object" in row else ""
                print(f"{name:<14}{row['cells']:>8.1%}{row['box']:>8.1%}{share}")
        by_shape = results["methods"][method]["mean map by shape (cells)"]
        print("mean map, cells, by shape: " + ", ".join(f"{s} {v:.1%}" for s, v in by_shape.items()))
        print(f"answer accuracy on these questions: {results['methods'][method]['answer accuracy']:.1%}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
