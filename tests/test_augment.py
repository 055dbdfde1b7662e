"""data.augment: RandAugment on training images, drawn by (train.seed, epoch, sample) whatever the workers, processes
and restarts; never on evaluation images; `none` is today's pipeline."""

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from meter.config import AugmentConfig, Config, VqaConfig, load_config
from meter.data.augment import Draw, build_augmentation
from meter.data.bad_samples import BadSample
from meter.data.datasets import CaptionPairs, ImageReader, VqaQuestions
from meter.data.formats.captions import coco_source, read_karpathy
from meter.data.formats.vqa import read_vqa
from meter.data.images import image_transform
from meter.data.labelled import Example, LabelledExamples, image_batches
from meter.data.ordered_batches import EvalReading
from meter.data.shard_manifest import read_manifest
from meter.data.shard_stream import Pair, ShardCorpus, ShardStream, to_sample
from meter.data.shard_writer import write_shards
from meter.data.stream import BatchStream
from meter.errors import ConfigError
from meter.runs import run_pretrain
from meter.tasks.build import build_model, image_reader, task_tokenizer
from meter.train.metrics_log import read_metrics
from meter.validate import validate

SEED = 5
SIZE = 64
TRANSFORM = image_transform(SIZE, (0.5,) * 3, (0.5,) * 3)
RANDAUGMENT = AugmentConfig("randaugment-official", num_ops=2, magnitude=9)  # the recipes'


def augmenting(seed: int = SEED, **options: Any) -> ImageReader:
    return ImageReader(TRANSFORM, SIZE, augment=build_augmentation(RANDAUGMENT, seed), **options)


def caption_pairs(world: Path, images: ImageReader) -> CaptionPairs:
    return CaptionPairs(read_karpathy(world / "karpathy/dataset_coco.json", world / "images", ("train",)), images)


def pixels_of(samples: list[dict[str, Any] | BadSample]) -> dict[str, Any]:
    assert all(isinstance(s, dict) for s in samples)
    return {"pixels": torch.stack([s["pixels"] for s in samples]), "ids": [s["image_id"] for s in samples]}


def take(dataset: Any, batches: int, batch_size: int = 40, **stream: Any) -> list[dict[str, Any]]:
    iterator = iter(BatchStream(dataset, batch_size, pixels_of, seed=SEED, **stream))
    return [next(iterator) for _ in range(batches)]


def fraction_changed(a: torch.Tensor, b: torch.Tensor) -> float:
    """The fraction of images (first dimension) whose pixels differ at all."""
    return (a != b).flatten(1).any(dim=1).float().mean().item()


def test_a_sample_gets_the_same_augmented_pixels_with_0_and_2_workers_and_after_a_restart(shapes_world: Path):
    pairs = caption_pairs(shapes_world, augmenting())
    assert len(pairs) // 40 == 6  # batches per epoch: the 7th is of the second epoch
    alone = take(pairs, 7, num_workers=0)
    with_workers = take(pairs, 7, num_workers=2)
    restarted = take(caption_pairs(shapes_world, augmenting()), 2, num_workers=2, start_batch=5)
    for a, b in zip(alone, with_workers, strict=True):
        assert a["ids"] == b["ids"] and torch.equal(a["pixels"], b["pixels"])
    for a, b in zip(alone[5:], restarted, strict=True):
        assert a["ids"] == b["ids"] and torch.equal(a["pixels"], b["pixels"])
    plain = take(caption_pairs(shapes_world, ImageReader(TRANSFORM, SIZE)), 7)
    changed = [fraction_changed(a["pixels"], p["pixels"]) for a, p in zip(alone, plain, strict=True)]
    assert min(changed) > 0.8, changed  # augmented: (almost) every image differs from its plain transform


def test_the_same_sample_draws_different_pixels_in_another_epoch_or_with_another_seed(shapes_world: Path):
    pairs = caption_pairs(shapes_world, augmenting())
    epochs = take(pairs, 12, shuffle=False)  # the same order each epoch: batch k and k + 6 hold the same samples
    for first, second in zip(epochs[:6], epochs[6:], strict=True):
        assert first["ids"] == second["ids"]
        assert fraction_changed(first["pixels"], second["pixels"]) > 0.8
    other_seed = take(caption_pairs(shapes_world, augmenting(seed=SEED + 1)), 1, shuffle=False)
    assert fraction_changed(epochs[0]["pixels"], other_seed[0]["pixels"]) > 0.8
    assert torch.equal(take(pairs, 1, shuffle=False)[0]["pixels"], epochs[0]["pixels"])  # and repeats itself


def test_evaluation_images_are_never_augmented(shapes_world: Path):
    """A dataset the training stream never gave an epoch reads plain images through an augmenting reader."""
    reader, plain = augmenting(cache_mb=4), ImageReader(TRANSFORM, SIZE)
    records = read_vqa(shapes_world / "vqa/v2_OpenEnded_mscoco_val2014_questions.json", None, shapes_world / "images",
                       VqaConfig().image_pattern, "val2014")[:10]  # fmt: skip
    questions = VqaQuestions(records, reader)
    for index in range(len(questions)):
        assert torch.equal(questions[index]["pixels"], plain(records[index].image))
    paths = [r.image for r in records]
    for indices, pixels in image_batches(paths, reader, EvalReading(batch_size=4), "eval"):
        assert torch.equal(pixels, torch.stack([plain(paths[i]) for i in indices]))
    questions.set_epoch(0)  # what the training stream does: now the same reader augments
    assert any(not torch.equal(questions[i]["pixels"], plain(records[i].image)) for i in range(len(questions)))


def test_with_a_cache_the_decoded_image_is_kept_and_every_read_draws_afresh(shapes_world: Path):
    cached, uncached = augmenting(cache_mb=1), augmenting()
    first, second = caption_pairs(shapes_world, cached), caption_pairs(shapes_world, uncached)
    for dataset in (first, second):
        dataset.set_epoch(3)
    for index in (0, 1, 5, 0, 1, 5):  # pairs 0..4 share an image: 1 and 5 are two images, 0 and 1 one
        assert torch.equal(first[index]["pixels"], second[index]["pixels"])
    assert len(cached.cache) == 2
    assert all(image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE) for image in cached.cache.values())
    assert not torch.equal(first[0]["pixels"], first[1]["pixels"])  # one image, two samples: two draws


def test_each_image_of_an_nlvr2_pair_draws_its_own_augmentation(shapes_world: Path):
    image = next((shapes_world / "images/train2014").iterdir())
    examples = LabelledExamples([Example((image, image), "the same scene twice", 1)], augmenting())
    assert torch.equal(examples[0]["pixels"][0], examples[0]["pixels"][1])  # evaluation: the plain image twice
    examples.set_epoch(0)
    left, right = examples[0]["pixels"]
    assert not torch.equal(left, right)


@pytest.mark.parametrize("name", ["randaugment-official", "randaugment"])
def test_augment_none_is_todays_pipeline_and_randaugment_reaches_the_training_reader(micro_config: Config, name):
    cfg = load_config(None, ["data.augment=none"], base=micro_config)  # `none` on the command line reads as null
    validate(cfg)
    model = build_model(cfg, task_tokenizer(cfg), {})
    reader = image_reader(cfg, model)
    assert reader.augment is None
    today = ImageReader(image_transform(SIZE, model.vision.mean, model.vision.std), SIZE)
    world = Path(cfg.data.root)
    for a, b in zip(take(caption_pairs(world, reader), 3), take(caption_pairs(world, today), 3), strict=True):
        assert torch.equal(a["pixels"], b["pixels"])
    augmented = image_reader(load_config(None, [f"data.augment={name}"], base=cfg), model)
    for a, b in zip(take(caption_pairs(world, augmented), 3), take(caption_pairs(world, today), 3), strict=True):
        assert fraction_changed(a["pixels"], b["pixels"]) > 0.8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.augment=autoaugment"],
            "data.augment = 'autoaugment'; choose one of: none, randaugment-official, randaugment",
        ),
        (["data.augment=randaugment", "data.augment.num_ops=0"], "data.augment.num_ops = 0 must be at least 1"),
        (["data.augment=randaugment", "data.augment.magnitude=31"], r"data.augment.magnitude = 31 must be in 0\.\.30"),
        (["data.augment.magnitude=-1"], r"data.augment.magnitude = -1 must be in 0\.\.30"),
    ],
)
def test_a_bad_augmentation_is_a_config_error_naming_the_key_and_what_is_allowed(overrides: list[str], message: str):
    with pytest.raises(ConfigError, match=message):
        validate(load_config(None, overrides))


def _shards(world: Path, out: Path) -> ShardCorpus:
    """The 60 pairs of the world's 12 val and test images, in shards of 4 images."""
    source = coco_source(world, "karpathy/dataset_coco.json", splits=("val", "test"), images="images")
    write_shards(source, out, shard_size=4, progress=False)
    return ShardCorpus([(read_manifest(out), 1.0)], augmenting(), shuffle_buffer=8, open_shards=2, streams_per_rank=2)


def _pair_pixels(corpus: ShardCorpus, batches: int, **stream: Any) -> dict[str, torch.Tensor]:
    def keyed(samples: list[dict[str, Any] | BadSample]) -> dict[str, torch.Tensor]:
        return {s["pair"]: s["pixels"] for s in samples}  # type: ignore[index]

    iterator = iter(ShardStream(corpus, 5, keyed, seed=SEED, **stream))
    return {k: v for _ in range(batches) for k, v in next(iterator).items()}


def test_a_shard_pair_draws_the_same_pixels_whatever_the_workers_ranks_and_restarts(shapes_world: Path, tmp_path):
    corpus = _shards(shapes_world, tmp_path / "shards")
    assert len(corpus) == 60  # one epoch: 12 batches of 5 on one rank, 6 on each of two
    one_rank = _pair_pixels(corpus, 12, num_workers=2)
    two_ranks = _pair_pixels(corpus, 6, rank=0, world=2) | _pair_pixels(corpus, 6, rank=1, world=2, num_workers=2)
    restarted = _pair_pixels(corpus, 8, start_batch=4) | _pair_pixels(corpus, 4)
    assert one_rank.keys() == two_ranks.keys() == restarted.keys() and len(one_rank) == 60
    for key, pixels in one_rank.items():
        assert torch.equal(pixels, two_ranks[key]) and torch.equal(pixels, restarted[key]), key
    plain = ShardCorpus(corpus.sources, ImageReader(TRANSFORM, SIZE), 8, 2, 2)
    unaugmented = _pair_pixels(plain, 12)
    changed = [not torch.equal(one_rank[k], unaugmented[k]) for k in one_rank]
    assert sum(changed) > 0.8 * len(changed)
    next_epoch = _pair_pixels(corpus, 12, start_batch=12)
    changed = [not torch.equal(one_rank[k], next_epoch[k]) for k in one_rank]
    assert sum(changed) > 0.8 * len(changed)


@pytest.mark.slow
def test_pretraining_with_augmentation_stopped_and_resumed_on_2_workers_matches_a_straight_run(
    micro_config: Config, tmp_path: Path
):
    """40 pairs a batch: 6 batches an epoch, so step 7 is of epoch 1, after the restart. MIM regresses the augmented
    pixels the model sees."""
    steps = ["data.augment=randaugment", "train.batch_size=40", "train.max_steps=7", "train.checkpoint_every=4",
             "train.deterministic=true", "model.fusion.dropout=0.1", "objectives.mim=1"]  # fmt: skip

    def pretrain(out: str, *overrides: str, resume: str | None = None) -> Path:
        return run_pretrain(load_config(None, [f"train.out={tmp_path / out}", *steps, *overrides], base=micro_config),
                            resume=resume)  # fmt: skip

    straight = pretrain("straight")
    pretrain("split", "train.stop_at=4")
    resumed = pretrain("split", "data.num_workers=2", resume="latest")
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    logged, relogged = read_metrics(tmp_path / "straight/metrics.jsonl"), read_metrics(tmp_path / "split/metrics.jsonl")
    assert [r["train/mim_loss"] for r in relogged] == [r["train/mim_loss"] for r in logged]


def test_a_large_photo_is_augmented_at_the_resolution_it_is_stored_as_official_randaugment_is(tmp_path: Path):
    """A photo 4x the training size was decoded reduced, then augmented: official RandAugment's shifts are in pixels
    of the stored photo (30), so the reduced copy moved 2-8x further."""
    from PIL import Image
    from torchvision.transforms import v2

    from meter.data.augment import Draw
    from tests.corpora import image_bytes

    path = tmp_path / "large.jpg"
    path.write_bytes(image_bytes(3, size=(8 * SIZE, 6 * SIZE)))
    reader, draw = augmenting(), Draw(epoch=0, sample=7)
    with Image.open(path) as stored:  # the whole photo, as the official pipeline decodes it
        expected = TRANSFORM(reader.augment(v2.functional.to_image(stored.convert("RGB")), draw))
    assert torch.equal(reader(path, draw), expected)


def test_an_augmenting_readers_evaluation_read_of_a_large_photo_equals_a_plain_readers(tmp_path: Path):
    """Reads without a draw (evaluation, prediction) decoded a large photo whole when the recipe augments: the run's
    own evaluation saw other pixels than `meter evaluate` with a config that does not augment."""
    from tests.corpora import image_bytes

    path = tmp_path / "large.jpg"
    path.write_bytes(image_bytes(3, size=(8 * SIZE, 6 * SIZE)))
    assert torch.equal(augmenting()(path), ImageReader(TRANSFORM, SIZE)(path))


def test_a_large_photo_in_a_shard_is_augmented_at_full_size_as_its_file_is(tmp_path: Path):
    """Official RandAugment shifts by pixels of the photo as stored: a shard's 1600 px JPEG was decoded at 1/8 scale
    first (as for a plain resize), so its shifts covered 8x more of the image than its file's."""
    ramp = torch.linspace(0, 255, 1600).round().to(torch.uint8)
    rows, columns = ramp[:1200, None].expand(1200, 1600), ramp[None, :].expand(1200, 1600)
    photo = Image.fromarray(torch.stack([columns, rows, columns.flip(1)], dim=-1).numpy())
    encoded = io.BytesIO()
    photo.save(encoded, format="JPEG", quality=95)
    (tmp_path / "photo.jpg").write_bytes(encoded.getvalue())
    reader = augmenting()
    from_file = reader(tmp_path / "photo.jpg", Draw(epoch=0, sample=3))
    pair = Pair("s/photo#0", "photo.jpg", encoded.getvalue(), "a caption", 1, epoch=0, position=3)
    assert torch.equal(to_sample(pair, reader)["pixels"], from_file)
