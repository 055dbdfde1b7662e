"""A study with VLP reports VQA on the images its pretraining never saw (a task's `unseen: true`): the corpus's COCO
images and Visual Genome's COCO images are left out of the reported split, for every cell."""

import json
import os
import shutil
from pathlib import Path

import pytest

from meter.config import load_config
from meter.data.formats.arrow import ArrowSource
from meter.data.formats.captions import coco_source
from meter.data.formats.visual_genome import visual_genome_source
from meter.data.seen_images import coco_images_seen
from meter.data.shard_writer import index_shards, write_shards
from meter.errors import ConfigError, DataError
from meter.study.cells import plan_study
from meter.study.report_text import reported_splits
from meter.study.spec import study_from_dict
from meter.tasks.vqa import read_vqa_split
from tests.corpora import image_bytes, write_coco, write_img2dataset, write_vilt_arrow, write_visual_genome
from tests.studies import as_if_ran, micro_study


def _karpathy_ids(world: Path, split: str) -> set[int]:
    entries = json.loads((world / "karpathy/dataset_coco.json").read_text())["images"]
    return {entry["cocoid"] for entry in entries if entry["split"] == split}


def _coco_shards(world: Path, out: Path, splits: tuple[str, ...]) -> Path:
    source = coco_source(world, "karpathy/dataset_coco.json", splits, images="images")
    write_shards(source, out, shard_size=16, progress=False)
    return out


def _vg_shards(root: Path, coco_ids: list[int | None]) -> Path:
    """A Visual Genome of len(coco_ids) images, image i + 1 being COCO's coco_ids[i] (None: not COCO's)."""
    write_visual_genome(root, len(coco_ids))
    metadata = [{"image_id": i + 1, "coco_id": coco_id, "width": 40} for i, coco_id in enumerate(coco_ids)]
    (root / "image_data.json").write_text(json.dumps(metadata))
    write_shards(visual_genome_source(root), root / "shards", progress=False)
    return root / "shards"


def _unseen_study(world: Path, sources: list[Path]) -> dict:
    study = micro_study(world)
    study["base"]["tasks"]["vqa"]["unseen"] = True
    if sources:
        study["base"]["pretrain"]["overrides"] = [f"data.sources={json.dumps([{'path': str(s)} for s in sources])}"]
    return study


def _reported(run) -> tuple[str, list]:
    cfg = run.config()
    return cfg.vqa.eval_split, read_vqa_split(cfg, cfg.vqa.eval_split)


def test_every_cell_reports_vqa_on_the_images_no_pretraining_corpus_holds(shapes_world, tmp_path):
    test_images = sorted(_karpathy_ids(shapes_world, "test"))
    coco = _coco_shards(shapes_world, tmp_path / "coco", ("train", "val"))  # val2014 holds Karpathy's val and test
    vg = _vg_shards(tmp_path / "vg", [test_images[0], None, test_images[1]])
    plan = plan_study(study_from_dict(_unseen_study(shapes_world, [coco, vg])), tmp_path / "out")
    val2014 = read_vqa_split(load_config("shapes-vqa.yaml", [f"data.root={shapes_world}"]), "val2014")
    expected = set(test_images[2:])
    kept = [r for r in val2014 if r.image_id in expected]
    assert expected and {r.image_id for r in val2014} > expected  # some of val2014 is seen, some is not
    for cell in plan.cells:
        split, reported = _reported(cell.runs[1])
        assert split == "val2014-unseen"
        assert [r.question_id for r in reported] == [r.question_id for r in kept]
        assert all(r.image.is_file() for r in reported)  # read from val2014's images
        assert [r.answers for r in reported] == [r.answers for r in kept]
    assert reported_splits(plan).startswith("Reported on: vqa val2014-unseen (-unseen: its questions on the images")


def test_a_pretraining_on_the_karpathy_training_captions_leaves_all_of_val2014_unseen(shapes_world, tmp_path):
    plan = plan_study(study_from_dict(_unseen_study(shapes_world, [])), tmp_path / "out")
    val2014 = read_vqa_split(load_config("shapes-vqa.yaml", [f"data.root={shapes_world}"]), "val2014")
    split, reported = _reported(plan.cells[0].runs[1])
    assert split == "val2014-unseen" and [r.question_id for r in reported] == [r.question_id for r in val2014]


def test_the_selection_split_held_out_of_training_is_read_beside_the_unseen_split(shapes_world, tmp_path):
    coco = _coco_shards(shapes_world, tmp_path / "coco", ("train", "val"))
    study = _unseen_study(shapes_world, [coco])
    study["search"] = {"train.lr": [3.0e-4]}
    study["base"]["tasks"]["vqa"]["select"] = {"holdout": 0.25}
    run = plan_study(study_from_dict(study), tmp_path / "out").cells[0].runs[1]
    selected = load_config(run.recipe, [*run.overrides, *run.select])
    held = read_vqa_split(selected, selected.vqa.eval_split)
    trained = run.config()
    fit = read_vqa_split(trained, trained.vqa.train_splits[0])
    assert selected.vqa.eval_split == "train2014-select" and held and fit
    assert not {r.image_id for r in held} & {r.image_id for r in fit}
    split, reported = _reported(run)
    assert split == "val2014-unseen" and {r.image_id for r in reported} == _karpathy_ids(shapes_world, "test")


def test_a_corpus_that_holds_every_reported_image_leaves_nothing_to_report_and_says_so(shapes_world, tmp_path):
    coco = _coco_shards(shapes_world, tmp_path / "coco", ("train", "val", "test"))
    with pytest.raises(DataError, match=r"every one of the 12 images of VQA val2014 .* is in the study's pretraining"):
        plan_study(study_from_dict(_unseen_study(shapes_world, [coco])), tmp_path / "out")


def test_visual_genome_without_its_image_metadata_is_named(shapes_world, tmp_path):
    vg = _vg_shards(tmp_path / "vg", [None])
    (tmp_path / "vg" / "image_data.json").unlink()
    with pytest.raises(DataError, match=r"vg/image_data\.json not found: Visual Genome's image metadata"):
        plan_study(study_from_dict(_unseen_study(shapes_world, [vg])), tmp_path / "out")


def test_visual_genome_image_metadata_is_read_beside_its_region_descriptions(shapes_world, tmp_path):
    """With the official layout (`--regions annotations/region_descriptions.json`, image_data.json beside it) the
    metadata was looked for at the root, and its absence named there."""
    test_images = sorted(_karpathy_ids(shapes_world, "test"))
    root = tmp_path / "vg"
    write_visual_genome(root, 2)
    (root / "annotations").mkdir()
    (root / "region_descriptions.json").rename(root / "annotations/region_descriptions.json")
    metadata = [{"image_id": 1, "coco_id": test_images[0]}, {"image_id": 2, "coco_id": None}]
    (root / "annotations/image_data.json").write_text(json.dumps(metadata))
    write_shards(visual_genome_source(root, "annotations/region_descriptions.json"), root / "shards", progress=False)
    plan = plan_study(study_from_dict(_unseen_study(shapes_world, [root / "shards"])), tmp_path / "out")
    _, reported = _reported(plan.cells[0].runs[1])
    assert test_images[0] not in {r.image_id for r in reported} and test_images[1] in {r.image_id for r in reported}


def test_the_coco_images_of_official_arrow_files_are_read_from_their_file_names(shapes_world, tmp_path):
    """ViLT's coco_caption_karpathy_*.arrow name each image by its COCO file name; vg.arrow by Visual Genome's id."""
    test_images = sorted(_karpathy_ids(shapes_world, "test"))
    names = [f"COCO_val2014_{image:012d}.jpg" for image in test_images[:2]]
    rows = [(image_bytes(i), ["a caption"], name) for i, name in enumerate(names)]
    write_vilt_arrow(tmp_path / "arrows/coco_caption_karpathy_restval.arrow", rows, split="restval")
    write_vilt_arrow(tmp_path / "arrows/vg.arrow", [(image_bytes(7), ["a region"], "1")], split="train")
    (tmp_path / "arrows/image_data.json").write_text(json.dumps([{"image_id": 1, "coco_id": test_images[2]}]))
    write_shards(ArrowSource(tmp_path / "arrows"), tmp_path / "arrow-shards", progress=False)
    plan = plan_study(study_from_dict(_unseen_study(shapes_world, [tmp_path / "arrow-shards"])), tmp_path / "out")
    _, reported = _reported(plan.cells[0].runs[1])
    val2014 = read_vqa_split(load_config("shapes-vqa.yaml", [f"data.root={shapes_world}"]), "val2014")
    assert {r.image_id for r in reported} == {r.image_id for r in val2014} - set(test_images[:3])


def test_a_corpus_whose_coco_images_are_unknown_is_refused(shapes_world, tmp_path):
    write_img2dataset(tmp_path / "web", shards=1, per_shard=3)
    index_shards(tmp_path / "web", tmp_path / "index", progress=False)
    with pytest.raises(DataError, match=r"index: shards of the 'webdataset' source; which of their images are COCO"):
        plan_study(study_from_dict(_unseen_study(shapes_world, [tmp_path / "index"])), tmp_path / "out")
    write_vilt_arrow(tmp_path / "arrows/visual_genome.arrow", [(image_bytes(1), ["a region"], "1")], split="train")
    write_shards(ArrowSource(tmp_path / "arrows"), tmp_path / "arrow-shards", progress=False)
    with pytest.raises(DataError, match=r"visual_genome.arrow: which of its images are COCO's is known for the files"):
        plan_study(study_from_dict(_unseen_study(shapes_world, [tmp_path / "arrow-shards"])), tmp_path / "out")


def test_unseen_needs_pretraining_and_a_vqa_task(shapes_tasks_world, tmp_path):
    study = _unseen_study(shapes_tasks_world, [])
    study["protocol"] = "no-vlp"
    with pytest.raises(ConfigError, match=r"base\.tasks\.vqa\.unseen .* needs protocol vlp"):
        study_from_dict(study)
    study = micro_study(shapes_tasks_world)
    study["base"]["tasks"] = {"nlvr2": {"recipe": "shapes-nlvr2.yaml", "steps": 2, "unseen": True}}
    with pytest.raises(ConfigError, match=r"base\.tasks\.nlvr2\.unseen is for VQA"):
        plan_study(study_from_dict(study), tmp_path / "out", prepare=False)


def test_the_coco_images_of_each_kind_of_pretraining_corpus(tmp_path):
    ids = write_coco(tmp_path / "coco", 12)  # image i is train, restval, val or test by i % 4
    by_split = {split: {i for i in ids if i % 4 == n} for n, split in enumerate(("train", "restval", "val", "test"))}
    karpathy = load_config("shapes-tiny.yaml", [f"data.root={tmp_path / 'coco'}", "data.images=."])
    assert coco_images_seen(karpathy) == by_split["train"] | by_split["restval"]
    write_shards(coco_source(tmp_path / "coco"), tmp_path / "captions", progress=False)  # captions_train2014.json
    _vg_shards(tmp_path / "vg", [by_split["val"].pop(), None])
    sources = json.dumps([{"path": str(tmp_path / "captions")}, {"path": str(tmp_path / "vg" / "shards")}])
    assert coco_images_seen(load_config("shapes-tiny.yaml", [f"data.sources={sources}"])) == set(ids)
    vg_alone = json.dumps([{"path": str(tmp_path / "vg" / "shards")}])
    assert len(coco_images_seen(load_config("shapes-tiny.yaml", [f"data.sources={vg_alone}"]))) == 1


def test_a_row_that_pretrains_on_more_images_refuses_the_vqa_runs_scored_on_the_old_split(shapes_world, tmp_path):
    """The split's files keep their paths: a new row pretraining on Karpathy's val too shrank val2014-unseen for
    every row, and the VQA runs that had been scored on the larger one counted as done. The refusal leaves the
    split as it was, and the study as it was plans again."""
    study = _unseen_study(shapes_world, [])
    study["variants"] = []
    as_if_ran(plan_study(study_from_dict(study), tmp_path / "out"))
    files = {path: path.read_bytes() for path in (tmp_path / "out/unseen/vqa").iterdir() if not path.is_symlink()}
    coco = _coco_shards(shapes_world, tmp_path / "coco", ("train", "val"))
    edited = {**study, "variants": [{"name": "more", "pretrain": [f"data.sources=[{{path: {coco}}}]"]}]}
    with pytest.raises(ConfigError, match=r"seed-0/vqa \(the pretraining corpora whose images the unseen split"):
        plan_study(study_from_dict(edited), tmp_path / "out")
    assert {path: path.read_bytes() for path in files} == files
    plan_study(study_from_dict(study), tmp_path / "out")


def test_a_study_whose_unseen_split_was_deleted_writes_it_again(shapes_world, tmp_path):
    study = _unseen_study(shapes_world, [])
    plan = plan_study(study_from_dict(study), tmp_path / "out")
    as_if_ran(plan)
    before = [r.question_id for r in _reported(plan.cells[0].runs[1])[1]]
    shutil.rmtree(tmp_path / "out/unseen")
    plan = plan_study(study_from_dict(study), tmp_path / "out")
    assert [r.question_id for r in _reported(plan.cells[0].runs[1])[1]] == before


def test_a_moved_study_folder_reads_its_held_out_and_unseen_splits(shapes_world, tmp_path):
    """The unseen split's folder linked the held-out split's files by their absolute paths: moved, the selection
    runs found no train2014-select."""
    study = _unseen_study(shapes_world, [])
    study["search"] = {"train.lr": [3.0e-4]}
    study["base"]["tasks"]["vqa"]["select"] = {"holdout": 0.25}
    plan_study(study_from_dict(study), tmp_path / "out")
    shutil.move(tmp_path / "out", tmp_path / "moved")
    select = next((tmp_path / "moved/unseen/vqa").glob("*train2014-select_annotations.json"))
    assert select.is_symlink() and not os.path.isabs(os.readlink(select)) and json.loads(select.read_text())
    run = plan_study(study_from_dict(study), tmp_path / "moved").cells[0].runs[1]
    selected = load_config(run.recipe, [*run.overrides, *run.select])
    assert read_vqa_split(selected, "train2014-select") and read_vqa_split(run.config(), "val2014-unseen")
