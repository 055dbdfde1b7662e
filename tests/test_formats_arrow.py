import json
from pathlib import Path

from meter.data.formats.arrow import ArrowSource, iter_rows
from meter.data.shard_writer import write_shards
from tests.corpora import image_bytes, shard_members, write_vilt_arrow


def _rows(first: int, count: int) -> list[tuple[bytes, list[str], str]]:
    return [(image_bytes(first + i), [f"arrow caption {first + i} a", f"arrow caption {first + i} b"],
             f"COCO_train2014_{first + i:012d}.jpg") for i in range(count)]  # fmt: skip


def test_vilt_arrow_files_are_read_a_slice_at_a_time_from_any_row(tmp_path: Path):
    write_vilt_arrow(tmp_path / "coco_caption_karpathy_train.arrow", _rows(0, 150), batch_rows=70)
    rows = list(iter_rows(tmp_path / "coco_caption_karpathy_train.arrow", start=65))
    assert [r for r, _ in rows] == list(range(65, 150))
    assert rows[10][1]["image"] == image_bytes(75) and rows[10][1]["caption"] == ["arrow caption 75 a",
                                                                                   "arrow caption 75 b"]  # fmt: skip


def test_arrow_files_become_shards_with_every_caption_and_base64_images_decoded(tmp_path: Path):
    write_vilt_arrow(tmp_path / "arrows/coco_caption_karpathy_train.arrow", _rows(0, 5))
    write_vilt_arrow(tmp_path / "arrows/coco_caption_karpathy_restval.arrow", _rows(5, 3), base64_images=True)
    write_vilt_arrow(tmp_path / "arrows/coco_caption_karpathy_test.arrow", _rows(8, 3))
    source = ArrowSource(tmp_path / "arrows", ("coco_caption_karpathy_train.arrow", "*restval.arrow"))
    manifest = write_shards(source, tmp_path / "out", progress=False)
    assert (manifest["samples"], manifest["pairs"]) == (8, 16)
    members = shard_members(tmp_path / "out/00000.tar")
    # files in name order: restval (000_...) then train (001_...)
    assert members["000_000000001.jpg"] == image_bytes(6)
    assert members["001_000000004.jpg"] == image_bytes(4)
    meta = json.loads(members["001_000000004.json"])
    assert meta["captions"] == ["arrow caption 4 a", "arrow caption 4 b"]
    assert meta["image_id"] == "COCO_train2014_000000000004.jpg" and meta["split"] == "train"
