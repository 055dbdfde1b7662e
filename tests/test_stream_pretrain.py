import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from meter.config import Config, load_config
from meter.data.formats.captions import coco_source
from meter.data.shard_writer import index_shards, write_shards
from meter.errors import ConfigError, DataError
from meter.runs import run_pretrain
from tests.corpora import write_damaged_shard, write_img2dataset


def _pretrain(cfg: Config, out: Path, *overrides: str, resume: str | None = None) -> Path:
    return run_pretrain(load_config(None, [f"train.out={out}", *overrides], base=cfg), resume=resume)


def test_pretraining_from_shards_stopped_and_resumed_matches_a_straight_run(
    micro_config: Config, shapes_world: Path, tmp_path: Path
):
    source = coco_source(shapes_world, "karpathy/dataset_coco.json", images="images")
    write_shards(source, tmp_path / "shards", shard_size=10, progress=False)
    sources = f"data.sources=[{{path: {tmp_path / 'shards'}}}]"
    steps = ["train.max_steps=6", "train.checkpoint_every=3", "train.deterministic=true", sources,
             "data.num_workers=2", "data.streams_per_rank=4"]  # fmt: skip
    straight = _pretrain(micro_config, tmp_path / "straight", *steps)
    _pretrain(micro_config, tmp_path / "split", *steps, "train.stop_at=3")
    resumed = _pretrain(micro_config, tmp_path / "split", *steps, resume="latest")
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def test_a_shard_corpus_run_is_not_resumed_with_its_step_split_another_way(micro_config, shapes_world, tmp_path):
    """The same samples a step in other micro-batches (4 x 1 -> 2 x 2, a requeue onto smaller GPUs) moved the
    streams to other places in the epoch: pairs read twice, others never. Refused, naming the split to resume with."""
    source = coco_source(shapes_world, "karpathy/dataset_coco.json", images="images")
    write_shards(source, tmp_path / "shards", shard_size=10, progress=False)
    steps = ["train.max_steps=6", "train.batch_size=4", f"data.sources=[{{path: {tmp_path / 'shards'}}}]"]
    _pretrain(micro_config, tmp_path / "run", *steps, "train.stop_at=3")
    with pytest.raises(
        ConfigError,
        match=r"written with train.batch_size = 4 \(train.grad_accum = 1\), this run has "
        r"2 \(2\): a shard corpus.*resume with train.batch_size=4 train.grad_accum=1",
    ):
        _pretrain(micro_config, tmp_path / "run", *steps, "train.batch_size=2", "train.grad_accum=2", resume="latest")


@pytest.mark.parametrize("weight", [1, 2])
def test_pretraining_from_damaged_shards_over_the_budget_stops_with_a_clear_message(
    micro_config: Config, tmp_path: Path, weight: int
):
    """The budget is a share of the distinct pairs: a weight of 2 reads each twice an epoch, but a bad one counts
    once, so it must not double the budget (it was 4 of 40: the same 3 bad pairs went on unnoticed)."""
    write_img2dataset(tmp_path / "web", shards=1, per_shard=12)
    write_damaged_shard(tmp_path / "web/00001.tar")
    index_shards(tmp_path / "web", tmp_path / "index", max_bad=1.0, progress=False)
    overrides = ["train.max_steps=4", f"data.sources=[{{path: {tmp_path / 'index'}, weight: {weight}}}]",
                 "data.streams_per_rank=1", "data.max_bad_samples=0.1"]  # fmt: skip
    with pytest.raises(DataError, match=r"skipped 3 of 20 samples, more than the budget of 2 \(10.0%, data.max_bad"):
        _pretrain(micro_config, tmp_path / "run", *overrides)
    assert len((tmp_path / "run/bad_samples.jsonl").read_text().splitlines()) == 3


def test_a_shard_corpus_of_fewer_distinct_pairs_than_a_step_is_refused_before_a_run_folder_is_taken(
    micro_config: Config, tmp_path: Path
):
    """A weight of 2 makes an epoch of 40 pairs out of 20: a step of 32 would hold pairs twice. Counted as distinct
    pairs, it is refused naming the batch settings, and leaves no run folder behind."""
    write_img2dataset(tmp_path / "web", shards=2, per_shard=10)
    index_shards(tmp_path / "web", tmp_path / "index", progress=False)
    overrides = ["train.max_steps=1", "train.batch_size=32", "data.streams_per_rank=1",
                 f"data.sources=[{{path: {tmp_path / 'index'}, weight: 2}}]"]  # fmt: skip
    with pytest.raises(ConfigError, match=r"holds 20 samples, fewer than one optimizer step takes \(32: "
                                          r"train\.batch_size = 32 x train\.grad_accum = 1\)"):  # fmt: skip
        _pretrain(micro_config, tmp_path / "run", *overrides)
    assert not (tmp_path / "run").exists()


def test_a_shard_corpus_of_fewer_pairs_than_a_batch_for_each_stream_is_refused_before_a_run_folder_is_taken(
    micro_config: Config, tmp_path: Path
):
    """20 pairs make a step of 8 but not 8 streams of 8: refused naming data.streams_per_rank, before the run folder
    is taken (the stream refused it after, leaving the folder behind)."""
    write_img2dataset(tmp_path / "web", shards=2, per_shard=10)
    index_shards(tmp_path / "web", tmp_path / "index", progress=False)
    overrides = ["train.max_steps=1", "train.batch_size=8", f"data.sources=[{{path: {tmp_path / 'index'}}}]"]
    refused = r"hold 20 pairs an epoch, fewer than one batch for each stream \(train\.batch_size = 8 x data\.streams"
    with pytest.raises(ConfigError, match=refused + r"_per_rank = 8\); lower data\.streams_per_rank"):
        _pretrain(micro_config, tmp_path / "run", *overrides)
    assert not (tmp_path / "run").exists()


def test_a_run_is_not_resumed_on_a_corpus_prepared_again_with_other_shards(micro_config, shapes_world, tmp_path):
    """The streams' places are counted on the manifest: a source prepared again (more images downloaded since) moved
    them, and the resumed epoch read pairs twice and others never, without a word."""
    steps = ["train.max_steps=6", "train.batch_size=4", f"data.sources=[{{path: {tmp_path / 'shards'}}}]"]
    write_shards(coco_source(shapes_world, "karpathy/dataset_coco.json", ("train",), images="images"),
                 tmp_path / "shards", shard_size=10, progress=False)  # fmt: skip
    _pretrain(micro_config, tmp_path / "run", *steps, "train.stop_at=3")
    shutil.rmtree(tmp_path / "shards")
    write_shards(coco_source(shapes_world, "karpathy/dataset_coco.json", ("train", "val"), images="images"),
                 tmp_path / "shards", shard_size=10, progress=False)  # fmt: skip
    with pytest.raises(DataError, match=r"step_00000003 was written while data.sources held other shards"):
        _pretrain(micro_config, tmp_path / "run", *steps, resume="latest")
    _pretrain(micro_config, tmp_path / "again", *steps, "train.stop_at=3")  # the same shards: it goes on
    assert _pretrain(micro_config, tmp_path / "again", *steps, resume="latest").name == "step_00000006"
