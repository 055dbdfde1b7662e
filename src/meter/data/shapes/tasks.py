"""The shapes world's downstream-task files: Flickr30k-style images and split, SNLI-VE, NLVR2, in the real formats.

Written next to a world from `world.generate` (same seed and image size), without touching its files. Layout:
    images/flickr30k-images/{Flickr30K_ID}.jpg      Flickr30k-style images (JPEG, as the real set)
    karpathy/dataset_flickr30k.json                Karpathy split of them (train / val / test), 5 captions each
    snli_ve/snli_ve_{train,dev,test}.jsonl         SNLI-VE: premise image + hypothesis -> gold_label
    nlvr2/data/{train,dev,test1}.json              NLVR2 JSON lines: identifier, sentence, label "True"/"False"
    nlvr2/images/train/{directory}/{split}-{set}-{pair}-img{0,1}.png    the pairs (train in numbered folders,
    nlvr2/{dev,test1}/{split}-{set}-{pair}-img{0,1}.png                  dev and test1 flat, as the real set)
    shapes_tasks.json                              what was generated (written last)

Every image and text comes from a generator seeded by (seed, index, task tag): the files of each task are fixed by
the seed alone, and a bigger world extends a smaller one.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from meter.data.shapes.language import captions
from meter.data.shapes.scene import Scene, render, sample_scene
from meter.data.shapes.statements import HYPOTHESIS_ORDER, pick_nlvr2_statement, snli_ve_hypothesis
from meter.data.shapes.world import TASKS_MANIFEST, WorldSpec, dump_json, karpathy_tokens, writing_world

TASKS_VERSION = 1
FLICKR_TAG, SNLI_VE_TAG, NLVR2_TAG = 30, 31, 32  # separate random streams per task
FIRST_FLICKR_ID = 1_000_000_001
PAIRS_PER_SET = 4  # NLVR2: image pairs per set; each sentence of the set is judged against all of them
SENTENCES_PER_SET = 2
PREMISES_PER_IMAGE = 2  # SNLI-VE: captions used as premises; each gets one hypothesis per label
NLVR2_SPLITS = ("train", "dev", "test1")
SNLI_VE_SPLITS = {"train": "train", "val": "dev", "test": "test"}  # Karpathy split -> SNLI-VE file
DEFAULT_SPEC = WorldSpec()


def flickr_image_count(spec: WorldSpec) -> int:
    return max(10, spec.images // 4)


def nlvr2_set_count(spec: WorldSpec) -> int:
    return max(6, spec.images // 4)


def three_way_split(index: int, total: int, names: tuple[str, str, str]) -> str:
    """The first 80% train, then 10% each (at least one item each when total >= 3)."""
    held = max(1, round(total * 0.1))
    if index < total - 2 * held:
        return names[0]
    return names[1] if index < total - held else names[2]


def _write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _save(image_path: Path, scene: Scene, spec: WorldSpec, format: str) -> None:
    image_path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if format == "JPEG" else {}
    render(scene, spec.image_size).save(image_path, format=format, **options)


def write_flickr_and_snli_ve(out: Path, spec: WorldSpec, progress: bool) -> dict[str, int]:
    images, entries = flickr_image_count(spec), []
    snli_ve: dict[str, list[dict[str, Any]]] = {name: [] for name in SNLI_VE_SPLITS.values()}
    for index in tqdm(range(images), desc="flickr30k + snli-ve", disable=not progress, unit="img"):
        flickr_id = FIRST_FLICKR_ID + index
        rng = np.random.default_rng([spec.seed, index, FLICKR_TAG])
        scene = sample_scene(rng, flickr_id, spec.layout)
        filename = f"{flickr_id}.jpg"
        _save(out / "images" / "flickr30k-images" / filename, scene, spec, "JPEG")
        split = three_way_split(index, images, ("train", "val", "test"))
        texts = captions(scene, rng)
        sentences = [
            {"tokens": karpathy_tokens(t), "raw": t, "imgid": index, "sentid": index * 5 + k}
            for k, t in enumerate(texts)
        ]
        entries.append({"sentids": [s["sentid"] for s in sentences], "imgid": index, "sentences": sentences,
                        "split": split, "filename": filename})  # fmt: skip

        hypotheses = np.random.default_rng([spec.seed, index, SNLI_VE_TAG])
        for premise in sorted(hypotheses.choice(len(texts), size=PREMISES_PER_IMAGE, replace=False).tolist()):
            for label in HYPOTHESIS_ORDER:
                snli_ve[SNLI_VE_SPLITS[split]].append(
                    {
                        "Flickr30K_ID": str(flickr_id),
                        "captionID": f"{filename}#{premise}",
                        "pairID": f"{filename}#{premise}r1{label[0]}",
                        "sentence1": texts[premise],
                        "sentence2": snli_ve_hypothesis(scene, label, hypotheses),
                        "gold_label": label,
                        "annotator_labels": [label],
                    }
                )
    dump_json(out / "karpathy" / "dataset_flickr30k.json", {"images": entries, "dataset": "flickr30k"})
    for name, rows in snli_ve.items():
        _write_lines(out / "snli_ve" / f"snli_ve_{name}.jsonl", rows)
    return {f"snli_ve_{name}": len(rows) for name, rows in snli_ve.items()} | {"flickr30k_images": images}


def nlvr2_image_dir(split: str) -> str:
    """Where the real NLVR2 release keeps a split's images, relative to its root."""
    return "images/train" if split == "train" else split


def write_nlvr2(out: Path, spec: WorldSpec, progress: bool) -> dict[str, int]:
    sets = nlvr2_set_count(spec)
    rows: dict[str, list[dict[str, Any]]] = {split: [] for split in NLVR2_SPLITS}
    for set_id in tqdm(range(sets), desc="nlvr2", disable=not progress, unit="set"):
        rng = np.random.default_rng([spec.seed, set_id, NLVR2_TAG])
        split = three_way_split(set_id, sets, NLVR2_SPLITS)
        directory = str(set_id % 100)
        folder = out / "nlvr2" / nlvr2_image_dir(split) / (directory if split == "train" else "")
        pairs = []
        for pair in range(PAIRS_PER_SET):
            left, right = sample_scene(rng, 2 * pair, spec.layout), sample_scene(rng, 2 * pair + 1, spec.layout)
            for side, scene in enumerate((left, right)):
                _save(folder / f"{split}-{set_id}-{pair}-img{side}.png", scene, spec, "PNG")
            pairs.append((left, right))
        for sentence in range(SENTENCES_PER_SET):
            text, labels = pick_nlvr2_statement(pairs, rng)
            for pair, label in enumerate(labels):
                row = {"identifier": f"{split}-{set_id}-{pair}-{sentence}", "sentence": text, "label": str(label),
                       "synset": "shapes"}  # fmt: skip
                if split == "train":
                    row["directory"] = directory
                rows[split].append(row)
    for split, lines in rows.items():
        _write_lines(out / "nlvr2" / "data" / f"{split}.json", lines)
    return {f"nlvr2_{split}": len(lines) for split, lines in rows.items()}


def generate_tasks(out: str | Path, spec: WorldSpec = DEFAULT_SPEC, progress: bool = True) -> dict[str, Any]:
    """Writes the task files into the world at `out`; returns the manifest written to `out/shapes_tasks.json`."""
    out = Path(out)
    with writing_world(out):
        (out / TASKS_MANIFEST).unlink(missing_ok=True)  # killed while writing over older ones: never taken as complete
        counts = write_flickr_and_snli_ve(out, spec, progress) | write_nlvr2(out, spec, progress)
        manifest = {"tasks_version": TASKS_VERSION, "spec": asdict(spec), "counts": counts}
        dump_json(out / TASKS_MANIFEST, manifest)  # written last: its presence marks complete task files
    return manifest


def tasks_generated(out: str | Path, spec: WorldSpec) -> bool:
    path = Path(out) / TASKS_MANIFEST
    if not path.is_file():
        return False
    manifest = json.loads(path.read_text())
    return manifest.get("tasks_version") == TASKS_VERSION and manifest.get("spec") == asdict(spec)
