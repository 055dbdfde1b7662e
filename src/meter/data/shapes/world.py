"""Writes the shapes world as real dataset files (COCO captions, Karpathy split, VQAv2), byte-identical per seed.

Layout under `out` (the names of the real datasets, so the real readers read it unchanged):
    images/train2014/COCO_train2014_000000000001.png ...   images/val2014/COCO_val2014_...png
    annotations/captions_{train2014,val2014}.json          COCO captions
    karpathy/dataset_coco.json                             Karpathy split (train / val / test), 5 captions each
    vqa/v2_OpenEnded_mscoco_{split}_questions.json         VQAv2 questions
    vqa/v2_mscoco_{split}_annotations.json                 VQAv2 annotations, 10 answers each
    scenes.json                                            the ground-truth scenes
    tokenizers/{wordpiece,bpe}/                            tokenizers trained on the training text
    shapes_world.json                                      what was generated, and from which seed
    .shapes_world.started                                  written first: a world is written here (refused elsewhere)
    .shapes_world.lock                                     held while a world or its task files are written
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from meter.data.shapes.language import Question, captions, questions, written_form, wrong_answer
from meter.data.shapes.scene import Scene, render, sample_scene
from meter.data.tokenizers import TOKENIZER_KINDS, train_tokenizer
from meter.errors import ConfigError
from meter.output_folder import check_own_folder, holding_folder

MANIFEST = "shapes_world.json"
TASKS_MANIFEST = "shapes_tasks.json"  # the task files' (meter.data.shapes.tasks)
STARTED = ".shapes_world.started"
WORLD_LOCK = ".shapes_world.lock"
GENERATOR_VERSION = 2  # 2: shapes circle, square, triangle, cross, drawn larger
SPLITS = ("train2014", "val2014")


@dataclass(frozen=True)
class WorldSpec:
    images: int = 4000
    seed: int = 0
    image_size: int = 64
    questions_per_image: int = 5
    val_fraction: float = 0.2  # of the images go to val2014 (Karpathy val + test); the rest to train2014
    disagreement: float = 0.06  # chance that one annotator gives a wrong answer
    variant_rate: float = 0.06  # chance that one annotator writes the right answer in another form
    vocab_size: int = 1000  # of the tokenizers trained on the world's training text
    layout: str = "grid"  # where objects go: "grid" (one per cell of a 4 x 4 grid) or "free"


def image_file(split: str, image_id: int) -> str:
    return f"{split}/COCO_{split}_{image_id:012d}.png"


def karpathy_tokens(text: str) -> list[str]:
    """The `tokens` of a Karpathy sentence: lower-case words without punctuation."""
    return text.replace(".", "").replace(",", "").replace(":", "").split()


def dump_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")))


def _annotate(question: Question, rng: np.random.Generator, spec: WorldSpec) -> list[dict[str, Any]]:
    answers = []
    for answer_id in range(1, 11):
        roll = rng.random()
        if roll < spec.disagreement:
            answer, confidence = wrong_answer(question, rng), "maybe"
        elif roll < spec.disagreement + spec.variant_rate:
            answer, confidence = written_form(question.answer, rng), "yes"
        else:
            answer, confidence = question.answer, "yes"
        answers.append({"answer": answer, "answer_confidence": confidence, "answer_id": answer_id})
    return answers


def _info(split: str) -> dict[str, Any]:
    return {
        "description": "the shapes world: meter's embedded synthetic dataset",
        "version": str(GENERATOR_VERSION),
        "year": 2026,
        "data_subtype": split,
    }


def _has_every_split(images: int, val_fraction: float) -> bool:
    held_out = round(images * val_fraction)  # half Karpathy val, half test; the rest train
    return held_out >= 2 and images - held_out >= 1


def check_image_count(spec: WorldSpec) -> None:
    """What `meter prepare shapes` asks of a world: an image in each Karpathy split (train, val, test), so that every
    recipe can train and evaluate on it: 8 at least, with val_fraction 0.2. (`generate` itself makes smaller worlds
    for tests, not none.)"""
    if not _has_every_split(spec.images, spec.val_fraction):
        fewest = next((n for n in range(1, 10_000) if _has_every_split(n, spec.val_fraction)), None)
        least = f"at least {fewest}" if fewest else f"none with val_fraction {spec.val_fraction}"
        raise ConfigError(
            f"shapes world: images = {spec.images} (--images) is too few to give each split (train, val, test) an "
            f"image: {least}"
        )


def generate(out: str | Path, spec: WorldSpec = WorldSpec(), progress: bool = True) -> dict[str, Any]:
    """Generates the world into `out`; returns the manifest written to `out/shapes_world.json`."""
    if spec.images < 1:  # a world of no images: empty files and tokenizers trained on no text
        raise ConfigError(f"shapes world: images = {spec.images} must be at least 1")
    out = Path(out)
    with writing_world(out):
        return _generate(out, spec, progress)


@contextlib.contextmanager
def writing_world(out: str | Path) -> Iterator[None]:
    """One writer at a time in a world's folder: a second `meter prepare shapes` (or `meter demo`) into it would
    rewrite the files the first one is writing, and leave a manifest vouching for a mix of both worlds. (A world
    that a run trains on is not locked: the lock is held while the world is written.)"""
    out = Path(out)
    check_own_folder(
        out, (MANIFEST, STARTED), "meter prepare shapes", "the shapes world's folder", ignored=(WORLD_LOCK,)
    )
    with holding_folder(out, WORLD_LOCK, "another meter prepare shapes (one at a time in a folder)"):
        yield


def _generate(out: Path, spec: WorldSpec, progress: bool) -> dict[str, Any]:
    (out / STARTED).touch()
    # a world written again (another spec) over an old one: killed part-way, the old manifest would vouch for a mix
    # of both worlds' files; nor do the old task files belong to the new world
    (out / MANIFEST).unlink(missing_ok=True)
    (out / TASKS_MANIFEST).unlink(missing_ok=True)
    n_train = spec.images - round(spec.images * spec.val_fraction)
    coco = {split: {"images": [], "annotations": []} for split in SPLITS}
    vqa_questions = {split: [] for split in SPLITS}
    vqa_annotations = {split: [] for split in SPLITS}
    karpathy, scenes = [], []
    n_val = (spec.images - n_train) // 2
    for index in tqdm(range(spec.images), desc="shapes world", disable=not progress, unit="img"):
        image_id = index + 1
        rng = np.random.default_rng([spec.seed, image_id])  # per image: a world of N images extends one of fewer
        scene: Scene = sample_scene(rng, image_id, spec.layout)
        split = "train2014" if index < n_train else "val2014"
        karpathy_split = "train" if index < n_train else "val" if index < n_train + n_val else "test"
        file = image_file(split, image_id)
        path = out / "images" / file
        path.parent.mkdir(parents=True, exist_ok=True)
        render(scene, spec.image_size).save(path, format="PNG")
        scenes.append(scene.to_dict())

        texts = captions(scene, rng)
        coco[split]["images"].append(
            {"id": image_id, "file_name": Path(file).name, "width": spec.image_size, "height": spec.image_size}
        )
        sentences = []
        for k, text in enumerate(texts):
            sentence_id = image_id * 10 + k
            coco[split]["annotations"].append({"id": sentence_id, "image_id": image_id, "caption": text})
            sentences.append({"tokens": karpathy_tokens(text), "raw": text, "imgid": index, "sentid": sentence_id})
        karpathy.append(
            {
                "filepath": split,
                "filename": Path(file).name,
                "imgid": index,
                "split": karpathy_split,
                "sentences": sentences,
                "cocoid": image_id,
                "sentids": [s["sentid"] for s in sentences],
            }
        )

        for k, question in enumerate(questions(scene, rng, spec.questions_per_image)):
            question_id = image_id * 1000 + k
            answers = _annotate(question, rng, spec)
            consensus = Counter(a["answer"] for a in answers).most_common(1)[0][0]
            vqa_questions[split].append({"image_id": image_id, "question": question.text, "question_id": question_id})
            vqa_annotations[split].append(
                {
                    "question_type": question.question_type,
                    "multiple_choice_answer": consensus,
                    "answers": answers,
                    "image_id": image_id,
                    "answer_type": question.answer_type,
                    "question_id": question_id,
                }
            )

    for split in SPLITS:
        dump_json(out / "annotations" / f"captions_{split}.json", {"info": _info(split), "licenses": [], **coco[split]})
        common = {"info": _info(split), "license": {"name": "CC0"}, "data_subtype": split}
        dump_json(
            out / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json",
            {**common, "task_type": "Open-Ended", "data_type": "mscoco", "questions": vqa_questions[split]},
        )
        dump_json(
            out / "vqa" / f"v2_mscoco_{split}_annotations.json",
            {**common, "data_type": "mscoco", "annotations": vqa_annotations[split]},
        )
    dump_json(out / "karpathy" / "dataset_coco.json", {"images": karpathy, "dataset": "coco"})
    dump_json(out / "scenes.json", scenes)
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "spec": asdict(spec),
        "images": {split: len(coco[split]["images"]) for split in SPLITS},
        "questions": {split: len(vqa_questions[split]) for split in SPLITS},
        "captions": sum(len(coco[s]["annotations"]) for s in SPLITS),
    }
    texts = [s["raw"] for image in karpathy if image["split"] == "train" for s in image["sentences"]]
    texts += [q["question"] for q in vqa_questions["train2014"]]
    for kind in TOKENIZER_KINDS:
        train_tokenizer(kind, texts, out / "tokenizers" / kind, vocab_size=spec.vocab_size)
    dump_json(out / MANIFEST, manifest)  # written last: its presence marks a complete world
    return manifest


def is_generated(out: str | Path, spec: WorldSpec) -> bool:
    """True when `out` already holds a complete world generated from `spec`."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return False
    manifest = json.loads(path.read_text())
    return manifest.get("generator_version") == GENERATOR_VERSION and manifest.get("spec") == asdict(spec)
