"""A run resumed with its data read elsewhere (data.root moved: a requeued job's data copied to a node's own disk)
goes on as it would have in place; the resume checks the data is the same samples (files relative to data.root, texts,
labels) and the tokenizer the same vocabulary, and a bad sample met at either place counts once. Real micro runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from meter.config import Config, load_config
from meter.data.bad_samples import BadSample, BadSampleBudget, continued_list
from meter.data.datasets import ImageReader, VqaQuestions
from meter.data.fingerprint import samples_fingerprint
from meter.data.formats.captions import coco_source
from meter.data.formats.vqa import VqaRecord
from meter.data.labelled import Example, LabelledExamples
from meter.data.shard_writer import write_shards
from meter.errors import DataError
from meter.models.checksums import record_checksums
from meter.runs import run_pretrain
from meter.train.resumed_data import check_same_corpus

STEPS = ["train.max_steps=4", "train.checkpoint_every=2", "train.keep_last=1"]


def pretrain(cfg: Config, out: Path, *overrides: str, resume: str | None = None) -> Path:
    return run_pretrain(load_config(None, [f"train.out={out}", *STEPS, *overrides], base=cfg), resume=resume)


def world_copy(shapes_world: Path, to: Path) -> Path:
    shutil.copytree(shapes_world, to)
    return to


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_resume_at_a_moved_data_root_ends_as_the_run_in_place(micro_config, shapes_world, tmp_path, caplog):
    straight = pretrain(micro_config, tmp_path / "straight")
    pretrain(micro_config, tmp_path / "run", "train.stop_at=2")
    moved = world_copy(shapes_world, tmp_path / "scratch" / "shapes")
    final = pretrain(micro_config, tmp_path / "run", f"data.root={moved}", resume="latest")
    assert f"data.root: '{shapes_world}' -> '{moved}': the run goes on reading its data there" in caplog.text
    assert same_weights(straight, final)


def test_a_moved_data_root_with_other_captions_or_another_tokenizer_is_refused(micro_config, shapes_world, tmp_path):
    """As many samples but another caption: the epoch's order would be drawn over other samples; another tokenizer
    of the same size: the embeddings' rows would be other words'. Both went on silently."""
    pretrain(micro_config, tmp_path / "run", "train.stop_at=2")
    other = world_copy(shapes_world, tmp_path / "other")
    karpathy = other / micro_config.data.karpathy
    data = json.loads(karpathy.read_text())
    train = next(image for image in data["images"] if image["split"] == "train")
    train["sentences"][0]["raw"] = "a picture of nothing at all"
    karpathy.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"written on other training data: this run's \(data.root = {other}\) holds "
                                        rf"as many samples \(\d+\), but other files, texts or labels"):  # fmt: skip
        pretrain(micro_config, tmp_path / "run", f"data.root={other}", resume="latest")
    retrained = world_copy(shapes_world, tmp_path / "retrained")
    tokenizer_file = retrained / "tokenizers" / "wordpiece" / "tokenizer.json"
    tokenizer = json.loads(tokenizer_file.read_text())
    vocab = tokenizer["model"]["vocab"]
    red, blue = vocab["red"], vocab["blue"]
    vocab["red"], vocab["blue"] = blue, red  # the same words, other ids
    tokenizer_file.write_text(json.dumps(tokenizer))
    with pytest.raises(DataError, match=r"trained with another tokenizer than this run's \([\d,]+ tokens saved, [\d,]+ "
                                        r"now, 2 of them with another id or new\)"):  # fmt: skip
        pretrain(micro_config, tmp_path / "run", f"data.root={retrained}", resume="latest")


def test_a_checkpoint_recording_only_its_datas_size_resumes_only_in_place(micro_config, shapes_world, tmp_path):
    """An earlier meter's checkpoint holds the data's size alone: no proof that data elsewhere is the run's."""
    pretrain(micro_config, tmp_path / "run", "train.stop_at=2")
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000002"
    progress = json.loads((checkpoint / "progress.json").read_text())
    assert progress["corpus"].startswith("records:")
    progress["corpus"] = "samples:" + progress["corpus"].split(":")[1]  # as an earlier meter wrote it
    (checkpoint / "progress.json").write_text(json.dumps(progress))
    record_checksums(checkpoint, "training")
    moved = world_copy(shapes_world, tmp_path / "scratch")
    with pytest.raises(DataError, match=rf"records only the size of its training data .* resume with "
                                        rf"data.root={shapes_world}"):  # fmt: skip
        pretrain(micro_config, tmp_path / "run", f"data.root={moved}", resume="latest")
    pretrain(micro_config, tmp_path / "run", resume="latest")  # in place it goes on


def few_images(root: Path, karpathy: str, keep: int) -> Path:
    """The world at `root` with `keep` training images (each with its captions); returns the first one's file."""
    path = root / karpathy
    data = json.loads(path.read_text())
    train = [image for image in data["images"] if image["split"] == "train"][:keep]
    data["images"] = train + [image for image in data["images"] if image["split"] != "train"]
    path.write_text(json.dumps(data))
    return root / "images" / train[0]["filepath"] / train[0]["filename"]


def test_a_bad_sample_met_before_and_after_a_move_counts_once(micro_config, shapes_world, tmp_path):
    """Its key names its file: met again at the new data.root, it was a new sample (a budget spent twice as fast)."""
    first, moved = tmp_path / "first", tmp_path / "scratch" / "first"
    world_copy(shapes_world, first)
    missing = few_images(first, micro_config.data.karpathy, keep=3)  # 3 images' pairs: under 2 batches an epoch
    missing.unlink()
    shutil.copytree(first, moved)
    budget = ["data.max_bad_samples=0.5"]  # of the pairs; the missing image's are a third of them
    cfg = load_config(None, [f"data.root={first}", *budget], base=micro_config)
    pretrain(cfg, tmp_path / "run", "train.max_steps=8", "train.stop_at=3")
    before = continued_list(tmp_path / "run" / "bad_samples.jsonl", resumed=True)
    assert before and all(sample.startswith(f"{missing}#") for sample in before)
    pretrain(cfg, tmp_path / "run", "train.max_steps=8", f"data.root={moved}", resume="latest")
    # every pair of the missing image, met again at the new place each epoch: counted once (10 of a budget of 7 was
    # the run stopped), the list unchanged
    listed = [json.loads(line) for line in (tmp_path / "run" / "bad_samples.jsonl").read_text().splitlines()]
    assert [row.get("sample") or row["path"] for row in listed] == list(before) and len(before) == 5


def test_the_budget_names_a_sample_at_the_runs_first_root(tmp_path: Path):
    budget = BadSampleBudget(1.0, 10, tmp_path / "bad.jsonl", moved=(tmp_path / "new", tmp_path / "old"))
    budget.restore({f"{tmp_path}/old/images/a.png#0": "gone"})
    budget.record(BadSample(f"{tmp_path}/new/images/a.png", "gone", key=f"{tmp_path}/new/images/a.png#0"))
    budget.record(BadSample(f"{tmp_path}/new/images/a.png", "gone", key="question 7"))  # not named by its file
    budget.record(BadSample(f"{tmp_path}/newer/b.png", "gone"))  # another folder that only begins alike
    assert sorted(budget.bad) == [f"{tmp_path}/newer/b.png", f"{tmp_path}/old/images/a.png#0", "question 7"]


def test_the_fingerprint_is_of_the_samples_relative_to_data_root(tmp_path: Path):
    def vqa(root: Path, question: str = "what color?", targets: float = 1.0) -> str | None:
        records = [VqaRecord(7, 1, question, root / "images" / "a.png", ({"answer": "red"},))]
        return samples_fingerprint(VqaQuestions(records, ImageReader(lambda image: image, 8), [[(0, targets)]]), root)

    def nlvr2(root: Path, label: int = 1) -> str | None:
        examples = [Example((root / "left.png", root / "right.png"), "two dogs", label)]
        return samples_fingerprint(LabelledExamples(examples, ImageReader(lambda image: image, 8)), root)

    here, there = tmp_path / "here", tmp_path / "there" / "copy"
    assert vqa(here) == vqa(there) and vqa(here).startswith("records:1:")
    assert len({vqa(here), vqa(here, "what shape?"), vqa(here, targets=0.3)}) == 3
    assert nlvr2(here) == nlvr2(there) != nlvr2(here, label=0)


def test_a_refused_resume_leaves_the_newer_checkpoints_where_they_were(micro_config, shapes_world, tmp_path):
    """`--resume step_2` refused (other data) had set step_4 aside first: the next `--resume latest` went back."""
    steps = ["train.max_steps=6", "train.keep_last=2", "train.stop_at=4"]
    pretrain(micro_config, tmp_path / "run", *steps)
    other = world_copy(shapes_world, tmp_path / "other")
    few_images(other, micro_config.data.karpathy, keep=47)
    checkpoints = tmp_path / "run" / "checkpoints"
    with pytest.raises(DataError, match="held 2\\d\\d samples"):
        pretrain(
            micro_config, tmp_path / "run", *steps[:2], f"data.root={other}", resume=str(checkpoints / "step_00000002")
        )
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000002", "step_00000004"]


def test_a_shard_corpus_does_not_move_with_data_root(micro_config, shapes_world, tmp_path):
    """A shard corpus is known by its shards' names and counts (captions prepared again pass), and shards indexed
    in place are read where their manifest names them: at a moved root it is refused, not read at the old place."""
    first = tmp_path / "first"
    shutil.copytree(shapes_world / "tokenizers", first / "tokenizers")
    write_shards(coco_source(shapes_world, "karpathy/dataset_coco.json", images="images"), first / "shards",
                 shard_size=10, progress=False)  # fmt: skip
    cfg = load_config(None, [f"data.root={first}", "data.sources=[{path: shards}]"], base=micro_config)
    pretrain(cfg, tmp_path / "run", "train.stop_at=2")
    moved = tmp_path / "scratch"
    shutil.copytree(first, moved)
    with pytest.raises(DataError, match=rf"trained on shards .* a shard corpus does not move; resume with "
                                        rf"data.root={first}"):  # fmt: skip
        pretrain(cfg, tmp_path / "run", f"data.root={moved}", resume="latest")
    assert pretrain(cfg, tmp_path / "run", resume="latest").name == "step_00000004"


def test_data_root_spelled_another_way_is_the_same_place(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spelling in ("./data", "data/", str(tmp_path / "data")):
        check_same_corpus(tmp_path / "step_2", "samples:10", "records:10:abc", spelling, "data")  # no refusal
    with pytest.raises(DataError, match="records only the size"):
        check_same_corpus(tmp_path / "step_2", "samples:10", "records:10:abc", "elsewhere", "data")
