import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np

from meter.data.formats.captions import read_coco_captions, read_karpathy
from meter.data.formats.vqa import read_vqa
from meter.data.shapes import WorldSpec, generate
from meter.data.shapes.language import plural
from meter.data.shapes.scene import COLORS, SHAPES, Scene, ShapeObject, render
from meter.models.tokenizer_folder import load_tokenizer


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_byte_identical_files(tmp_path: Path):
    spec = WorldSpec(images=12, seed=5, questions_per_image=2, vocab_size=200)
    generate(tmp_path / "a", spec, progress=False)
    generate(tmp_path / "b", spec, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_another_seed_gives_other_images(tmp_path: Path):
    generate(tmp_path / "a", WorldSpec(images=4, seed=1, vocab_size=200), progress=False)
    generate(tmp_path / "b", WorldSpec(images=4, seed=2, vocab_size=200), progress=False)
    name = "images/train2014/COCO_train2014_000000000001.png"
    assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "b" / name).read_bytes()


def test_karpathy_and_coco_readers_agree_on_the_world(shapes_world: Path):
    karpathy = read_karpathy(shapes_world / "karpathy/dataset_coco.json", shapes_world / "images")
    coco = read_coco_captions(
        shapes_world / "annotations/captions_train2014.json", shapes_world / "images/train2014"
    ) + read_coco_captions(shapes_world / "annotations/captions_val2014.json", shapes_world / "images/val2014")
    assert {r.image_id: r.captions for r in karpathy} == {r.image_id: r.captions for r in coco}
    assert {r.image_id: r.image for r in karpathy} == {r.image_id: r.image for r in coco}
    assert Counter(r.split for r in karpathy) == {"train": 48, "val": 6, "test": 6}
    assert all(r.image.is_file() and len(set(r.captions)) == 5 for r in karpathy)


def test_vqa_files_follow_the_official_format(shapes_world: Path):
    records = read_vqa(
        shapes_world / "vqa/v2_OpenEnded_mscoco_train2014_questions.json",
        shapes_world / "vqa/v2_mscoco_train2014_annotations.json",
        shapes_world / "images",
        "{split}/COCO_{split}_{image_id:012d}.png",
        "train2014",
    )
    assert records and all(r.image.is_file() for r in records)
    for r in records:
        assert len(r.answers) == 10 and [a["answer_id"] for a in r.answers] == list(range(1, 11))
        assert r.answer_type in ("yes/no", "number", "other")
        assert r.multiple_choice_answer == Counter(a["answer"] for a in r.answers).most_common(1)[0][0]
    questions = json.loads((shapes_world / "vqa/v2_OpenEnded_mscoco_train2014_questions.json").read_text())
    assert questions["task_type"] == "Open-Ended" and questions["data_subtype"] == "train2014"


def test_question_types_cover_colour_shape_count_existence_and_space(tmp_path: Path):
    generate(tmp_path, WorldSpec(images=300, seed=0, vocab_size=200), progress=False)
    annotations = json.loads((tmp_path / "vqa/v2_mscoco_train2014_annotations.json").read_text())["annotations"]
    types = Counter(a["question_type"] for a in annotations)
    assert set(types) == {"what color is the", "what shape is the", "how many", "is there a", "is the"}
    # colour and shape answers are close to uniform, so a blind model is near chance on them
    colours = Counter(a["multiple_choice_answer"] for a in annotations if a["question_type"] == "what color is the")
    shapes = Counter(a["multiple_choice_answer"] for a in annotations if a["question_type"] == "what shape is the")
    assert set(colours) == set(COLORS) and max(colours.values()) / sum(colours.values()) < 0.3
    assert set(shapes) == set(SHAPES) and max(shapes.values()) / sum(shapes.values()) < 0.4
    # a small, seeded rate of annotator disagreement
    disagreeing = sum(len({x["answer"] for x in a["answers"]}) > 1 for a in annotations)
    assert 0.2 < disagreeing / len(annotations) < 0.9


def test_tokenizers_load_back_from_their_folders(shapes_world: Path):
    wordpiece = load_tokenizer(shapes_world / "tokenizers/wordpiece")
    bpe = load_tokenizer(shapes_world / "tokenizers/bpe")
    assert wordpiece.convert_ids_to_tokens(wordpiece("a red circle")["input_ids"])[0] == "[CLS]"
    assert bpe.convert_ids_to_tokens(bpe("a red circle")["input_ids"])[0] == "<s>"
    assert bpe.pad_token_id == 1 and wordpiece.mask_token is not None


def test_every_two_shapes_differ_in_at_least_ten_pixels_when_small():
    """A model trained from scratch in minutes must be able to tell the shapes apart at 64 px: drawn small at the
    same place, any two shapes differ clearly in at least 10 pixels (version 1's circle and square: in 4)."""

    def pixels(shape: str) -> np.ndarray:
        scene = Scene(image_id=0, background=0, objects=(ShapeObject(shape, "red", "small", 0.5, 0.5),))
        return np.asarray(render(scene, 64), dtype=np.int16)

    drawn = {shape: pixels(shape) for shape in SHAPES}
    for a, b in itertools.combinations(SHAPES, 2):
        differing = int((np.abs(drawn[a] - drawn[b]).max(axis=-1) > 48).sum())
        assert differing >= 10, (a, b, differing)


def test_plural_shape_names_are_english():
    assert [plural(shape) for shape in ("circle", "cross", "box")] == ["circles", "crosses", "boxes"]


def test_a_world_written_again_and_killed_part_way_is_neither_the_old_world_nor_the_new(tmp_path: Path):
    """The old manifest stayed while another spec's images were written over the old ones: killed part-way, the demo
    and the study took the mix for the old world (prepare: 0 s) and trained on it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from meter.data.shapes import is_generated

    old = WorldSpec(images=12, seed=3, questions_per_image=2, vocab_size=200)
    generate(tmp_path, old, progress=False)
    assert is_generated(tmp_path, old)
    first_image = next((tmp_path / "images" / "train2014").iterdir())
    before = first_image.stat().st_mtime_ns
    new = "WorldSpec(images=3000, seed=4, questions_per_image=2, vocab_size=200)"
    script = f"from meter.data.shapes import WorldSpec, generate; generate({str(tmp_path)!r}, {new}, progress=False)"
    writer = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(600):  # until it has written over an old image
            if first_image.stat().st_mtime_ns != before:
                break
            time.sleep(0.05)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.wait()
    assert first_image.stat().st_mtime_ns != before, "the new world never got to its first image"
    assert not is_generated(tmp_path, old)
