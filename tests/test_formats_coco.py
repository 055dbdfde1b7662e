import json
import logging
from pathlib import Path

import pytest

from meter.data.datasets import CaptionPairs, ImageReader
from meter.data.formats.captions import coco_source, read_coco_captions, read_karpathy
from meter.data.images import image_transform
from meter.data.shard_writer import check_image, write_shards
from meter.errors import DataError
from tests.corpora import image_bytes, shard_members, truncated, write_coco


def test_coco_with_karpathy_split_keeps_train_and_restval_images_with_all_their_captions(tmp_path: Path):
    write_coco(tmp_path / "coco", images=12)
    manifest = write_shards(coco_source(tmp_path / "coco", "karpathy/dataset_coco.json"), tmp_path / "out",
                            shard_size=4, progress=False)  # fmt: skip
    kept = [i for i in range(1, 13) if i % 4 in (0, 1)]  # train and restval
    assert manifest["samples"] == len(kept) and manifest["pairs"] == 5 * len(kept)
    assert manifest["captions"]["captions_per_sample"] == {"min": 5, "mean": 5.0, "p50": 5, "p95": 5, "max": 5}
    assert manifest["captions"]["words"]["min"] == 7
    members = {}
    for shard in manifest["shards"]:
        members |= shard_members(tmp_path / "out" / shard["path"])
    for i in kept:
        meta = json.loads(members[f"{i:012d}.json"])
        assert meta["captions"] == [f"image {i} caption {j} of a scene" for j in range(5)]
        assert meta["image_id"] == i and meta["split"] in ("train", "restval")
        assert members[f"{i:012d}.jpg"] == image_bytes(i)  # the published bytes, unchanged
        assert members[f"{i:012d}.txt"].decode() == meta["captions"][0]


def test_a_misspelt_split_is_an_error_naming_the_splits_of_the_file(tmp_path: Path):
    """`--splits train,rest` (for restval) wrote half the corpus and said nothing; a split of Karpathy's that a file
    lacks (Flickr30k's has no restval) is still fine."""
    write_coco(tmp_path / "coco", images=8)
    with pytest.raises(DataError, match=r"dataset_coco.json: no image of the split\(s\) rest; the file has the splits "
                                        r"restval, test, train, val"):  # fmt: skip
        coco_source(tmp_path / "coco", "karpathy/dataset_coco.json", ("train", "rest"))
    karpathy = tmp_path / "coco/karpathy/dataset_coco.json"
    data = json.loads(karpathy.read_text())
    data["images"] = [image for image in data["images"] if image["split"] != "restval"]
    karpathy.write_text(json.dumps(data))
    assert len(coco_source(tmp_path / "coco", "karpathy/dataset_coco.json", ("train", "restval"))) == 2


def test_coco_caption_files_without_karpathy_give_every_image(tmp_path: Path):
    write_coco(tmp_path / "coco", images=6, captions=3)
    manifest = write_shards(coco_source(tmp_path / "coco"), tmp_path / "out", progress=False)
    assert (manifest["samples"], manifest["pairs"], len(manifest["shards"])) == (6, 18, 1)


def test_missing_and_truncated_coco_images_are_skipped_and_named(tmp_path: Path):
    write_coco(tmp_path / "coco", images=8)
    images = tmp_path / "coco/train2014"
    (images / "COCO_train2014_000000000001.jpg").unlink()
    (images / "COCO_train2014_000000000004.jpg").write_bytes(truncated(image_bytes(4)))
    manifest = write_shards(coco_source(tmp_path / "coco", "karpathy/dataset_coco.json"), tmp_path / "out",
                            max_bad=0.5, progress=False)  # fmt: skip
    assert manifest["bad"] == 2 and manifest["samples"] == 2  # of images 1, 4, 5, 8
    bad = {json.loads(line)["path"]: json.loads(line)["reason"]
           for line in (tmp_path / "out/bad_samples.jsonl").read_text().splitlines()}  # fmt: skip
    assert set(bad) == {
        str(images / "COCO_train2014_000000000001.jpg"),
        str(images / "COCO_train2014_000000000004.jpg"),
    }
    assert "image not found" in bad[str(images / "COCO_train2014_000000000001.jpg")]
    assert "truncated" in bad[str(images / "COCO_train2014_000000000004.jpg")].lower()


def test_preparation_over_its_bad_sample_budget_stops_with_a_clear_message(tmp_path: Path):
    write_coco(tmp_path / "coco", images=8)
    (tmp_path / "coco/train2014/COCO_train2014_000000000001.jpg").unlink()
    with pytest.raises(DataError, match=r"skipped 1 of 4 samples, more than the budget of 0 .*image not found"):
        write_shards(coco_source(tmp_path / "coco", "karpathy/dataset_coco.json"), tmp_path / "out", max_bad=0.1,
                     progress=False)  # fmt: skip


@pytest.mark.parametrize("kind", ["JPEG", "PNG"])
@pytest.mark.parametrize("decode", [False, True])
def test_an_image_with_bytes_after_its_end_marker_is_kept_and_a_truncated_one_is_not(kind, decode):
    """Web and phone JPEGs often carry bytes after the end-of-image marker (a motion photo's video, padding): PIL
    decodes them whole, and they were called truncated and left out of the shards."""
    data = image_bytes(3, kind=kind)
    extension = "png" if kind == "PNG" else "jpg"
    assert check_image(data + b"\0" * 2048, "padded", decode) == (extension, None)
    assert check_image(data + b"ftypmp42" + bytes(range(256)) * 8, "motion photo", decode) == (extension, None)
    found, problem = check_image(truncated(data), "cut", decode)
    assert found is None and problem.startswith("cut: unreadable image (OSError"), problem


def test_a_preparation_whose_bad_sample_list_was_cut_short_by_a_kill_goes_on(tmp_path: Path):
    """The last line of bad_samples.jsonl cut short (a kill or a full disk while it was appended) stopped every later
    `meter prepare` with an internal JSONDecodeError until the file was edited by hand."""
    write_coco(tmp_path / "coco", images=8)
    image = tmp_path / "coco/train2014/COCO_train2014_000000000004.jpg"
    image.write_bytes(truncated(image_bytes(4)))
    source = coco_source(tmp_path / "coco", "karpathy/dataset_coco.json")
    first = write_shards(source, tmp_path / "out", shard_size=2, max_bad=0.5, progress=False)
    listed = tmp_path / "out/bad_samples.jsonl"
    whole = listed.read_text()
    listed.write_text(whole + '{"path": "/cut')
    again = write_shards(source, tmp_path / "out", shard_size=2, max_bad=0.5, progress=False)
    assert again["bad"] == first["bad"] == 1 and listed.read_text() == whole


def test_an_evaluation_image_listed_again_under_a_training_split_is_refused(tmp_path: Path):
    """A Karpathy file naming a test image's file again as train (another cocoid) wrote it into the pretraining
    shards without a word."""
    write_coco(tmp_path / "coco", images=8)
    karpathy = tmp_path / "coco/karpathy/dataset_coco.json"
    data = json.loads(karpathy.read_text())
    test_image = next(image for image in data["images"] if image["split"] == "test")
    data["images"].append({**test_image, "cocoid": 99, "imgid": 99, "split": "train"})
    karpathy.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"images\[8\] \({test_image['filename']}\): the image of images\[2\] "
                                        r"\(split test\) is listed again, split train"):  # fmt: skip
        coco_source(tmp_path / "coco", "karpathy/dataset_coco.json")


def test_caption_files_listing_one_image_twice_are_refused_and_val2014_is_warned_about(tmp_path: Path, caplog):
    write_coco(tmp_path / "coco", images=4)
    annotations = tmp_path / "coco/annotations"
    (annotations / "captions_val2014.json").write_text((annotations / "captions_train2014.json").read_text())
    both = ("annotations/captions_train2014.json", "annotations/captions_val2014.json")
    with pytest.raises(DataError, match=r"captions_val2014.json: image id 1 is listed again \(also in "
                                        r"annotations/captions_train2014.json\)"):  # fmt: skip
        coco_source(tmp_path / "coco", annotations=both)
    with pytest.raises(DataError, match=r"--annotations names annotations/captions_train2014.json twice"):
        coco_source(tmp_path / "coco", annotations=(both[0], both[0]))
    with caplog.at_level(logging.WARNING):
        coco_source(tmp_path / "coco", annotations=("annotations/captions_val2014.json",), images="..")
    assert "Karpathy's val and test images" in caplog.text and "--karpathy dataset_coco.json" in caplog.text


def test_a_caption_file_listing_one_photo_under_two_ids_is_refused(tmp_path: Path):
    """The Karpathy reader refused it; the COCO one read the photo as two images (two samples, two ITM identities)."""
    write_coco(tmp_path / "coco", images=4)
    annotations = tmp_path / "coco/annotations/captions_train2014.json"
    data = json.loads(annotations.read_text())
    data["images"][2]["file_name"] = data["images"][0]["file_name"]
    annotations.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"images\[2\] \(id \d+\): its file .* is the one of images\[0\], listed again"):
        read_coco_captions(annotations, tmp_path / "coco/images")


def test_an_images_repeated_caption_trains_as_one_pair_as_in_official_meter(tmp_path: Path):
    """Official METER's caption datasets keep `set(texts)` of each image: the repeat was a second, identical pair
    for pretraining, retrieval and captioning read from Karpathy's file, and counted twice by `meter plan`."""
    write_coco(tmp_path / "coco", images=4, captions=3)
    karpathy = tmp_path / "coco/karpathy/dataset_coco.json"
    data = json.loads(karpathy.read_text())
    data["images"][0]["sentences"].append(data["images"][0]["sentences"][1])
    karpathy.write_text(json.dumps(data))
    records = read_karpathy(karpathy, tmp_path / "coco", ("train", "restval", "val", "test"))
    assert len(records[0].captions) == 4, "the references of an evaluation keep every caption"
    pairs = CaptionPairs(records, ImageReader(image_transform(16, (0.5,) * 3, (0.5,) * 3), 16))
    assert len(pairs) == 12
    assert [pairs[index]["text"] for index in range(3)] == [f"image 1 caption {j} of a scene" for j in range(3)]
