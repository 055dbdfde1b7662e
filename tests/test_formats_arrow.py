import json
import logging
import re
from pathlib import Path

import pyarrow as pa
import pytest

from meter.data.formats.arrow import ArrowSource, iter_rows
from meter.data.shard_writer import write_shards
from meter.errors import DataError
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
    write_vilt_arrow(tmp_path / "arrows/coco_caption_karpathy_test.arrow", _rows(8, 3), split="test")
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


def _vilt_coco(folder: Path) -> None:
    """ViLT's COCO files: one per Karpathy split, each row naming its split."""
    for first, split in ((0, "train"), (4, "restval"), (7, "val"), (9, "test")):
        write_vilt_arrow(folder / f"coco_caption_karpathy_{split}.arrow", _rows(first, 2 + (split == "train")),
                         split=split)  # fmt: skip


def test_files_of_the_evaluation_splits_are_left_out_of_a_pretraining_corpus(tmp_path: Path, caplog):
    """`--files "*.arrow"` over ViLT's folder: the val and test images (the retrieval and captioning evaluation
    sets) were shards like the others; the official pretraining reads only train and restval."""
    _vilt_coco(tmp_path / "arrows")
    with caplog.at_level(logging.WARNING):
        source = ArrowSource(tmp_path / "arrows")
    kept = [p.name for p in source.files]
    assert kept == ["coco_caption_karpathy_restval.arrow", "coco_caption_karpathy_train.arrow"]
    assert "coco_caption_karpathy_test.arrow, coco_caption_karpathy_val.arrow" in caplog.text
    manifest = write_shards(source, tmp_path / "out", progress=False)
    assert (manifest["samples"], manifest["pairs"]) == (5, 10)
    members = shard_members(tmp_path / "out/00000.tar")
    splits = {json.loads(value)["split"] for name, value in members.items() if name.endswith(".json")}
    assert splits == {"train", "restval"}
    assert len(ArrowSource(tmp_path / "arrows", held_out=())) == 9, "--held-out '' keeps every file"


def test_flickr30k_files_are_left_out_of_a_pretraining_corpus_unless_named(tmp_path: Path, caplog):
    """The official folder's f30k_caption_karpathy_train.arrow (split `train`) was pretrained on by the default
    `--files "*.arrow"`: Flickr30k is in none of the paper's four corpora, and its images are the Flickr30k zero-shot
    retrieval's and SNLI-VE's."""
    _vilt_coco(tmp_path / "arrows")
    write_vilt_arrow(tmp_path / "arrows/f30k_caption_karpathy_train.arrow", _rows(20, 2))
    with caplog.at_level(logging.WARNING):
        source = ArrowSource(tmp_path / "arrows")
    assert [p.name for p in source.files] == [
        "coco_caption_karpathy_restval.arrow",
        "coco_caption_karpathy_train.arrow",
    ]
    assert "left out 1 arrow file(s) of Flickr30k" in caplog.text and "f30k_caption_karpathy_train.arrow" in caplog.text
    named = ArrowSource(tmp_path / "arrows", ("coco_caption_karpathy_train.arrow", "f30k_caption_karpathy_train.arrow"))
    assert [p.name for p in named.files] == ["coco_caption_karpathy_train.arrow", "f30k_caption_karpathy_train.arrow"]
    assert [p.name for p in ArrowSource(tmp_path / "arrows", ("f30k_*.arrow",)).files] == [
        "f30k_caption_karpathy_train.arrow"
    ]


def test_a_file_mixing_an_evaluation_split_with_training_rows_is_refused(tmp_path: Path):
    write_vilt_arrow(tmp_path / "mixed.arrow", _rows(0, 3), split=["train", "test", "train"])
    with pytest.raises(DataError, match=r"mixed.arrow: rows of the held-out split\(s\) test .* with rows of train"):
        ArrowSource(tmp_path)
    with pytest.raises(DataError, match=r"every arrow file matching \*test.arrow .* holds a held-out split"):
        write_vilt_arrow(tmp_path / "only_test.arrow", _rows(3, 1), split="test")
        ArrowSource(tmp_path, ("*test.arrow",))


def test_the_task_files_of_an_official_arrow_folder_are_left_out_with_a_warning(tmp_path: Path, caplog):
    """The official folder holds vqav2_*.arrow, nlvr2_*.arrow, snli_*.arrow beside the captions: the default
    `--files "*.arrow"` stopped at the first of them ("caption missing")."""
    _vilt_coco(tmp_path / "arrows")
    table = pa.table({"image": pa.array([image_bytes(1)]), "questions": pa.array([["what is it?"]])})
    pair = pa.table({"image_0": pa.array([image_bytes(2)]), "image_1": pa.array([image_bytes(3)]),
                     "questions": pa.array([["two dogs."]])})  # NLVR2's: two image columns  # fmt: skip
    for name, written in (("vqav2_train", table), ("nlvr2_train", pair)):
        path = str(tmp_path / f"arrows/{name}.arrow")
        with pa.OSFile(path, "wb") as sink, pa.RecordBatchFileWriter(sink, written.schema) as writer:
            writer.write_table(written)
    with caplog.at_level(logging.WARNING):
        source = ArrowSource(tmp_path / "arrows")
    assert [p.name for p in source.files] == [
        "coco_caption_karpathy_restval.arrow",
        "coco_caption_karpathy_train.arrow",
    ]
    assert "without a caption column (a task's, not captions): nlvr2_train.arrow, vqav2_train.arrow" in caplog.text
    with pytest.raises(DataError, match=r"no arrow file matching vqa\* in .* holds captions .*: vqav2_train.arrow"):
        ArrowSource(tmp_path / "arrows", ("vqa*",))


def _write_table(path: Path, columns: dict[str, pa.Array]) -> None:
    table = pa.table(columns)
    with pa.OSFile(str(path), "wb") as sink, pa.RecordBatchFileWriter(sink, table.schema) as writer:
        writer.write_table(table)


@pytest.mark.parametrize(
    ("captions", "arrow_type"),
    [
        (pa.array([[101, 2023], [101, 7]]), "list<item: int64>"),  # token ids: were the captions "101", "2023"
        (pa.array([{"raw": "a cat"}, {"raw": "a dog"}]), "struct<raw: string>"),  # was the caption "raw"
        (pa.array([1, 2]), "int64"),  # was an internal TypeError
    ],
)
def test_a_caption_column_of_another_type_than_text_is_refused_naming_file_column_and_type(
    tmp_path: Path, captions: pa.Array, arrow_type: str
):
    _write_table(tmp_path / "x.arrow", {"image": pa.array([image_bytes(0), image_bytes(1)]), "caption": captions})
    said = rf"x.arrow: its caption column is of the Arrow type {re.escape(arrow_type)}; meter reads captions of the "
    with pytest.raises(DataError, match=said + "type string or large_string, or a list"):
        ArrowSource(tmp_path)


def test_captions_as_large_strings_or_large_lists_of_them_are_read(tmp_path: Path):
    images = pa.array([image_bytes(0), image_bytes(1)])
    _write_table(tmp_path / "a.arrow", {"image": images, "caption": pa.array(["one", "two"], pa.large_string())})
    many = pa.array([["three", "four"], ["five"]], pa.large_list(pa.large_string()))
    _write_table(tmp_path / "b.arrow", {"image": images, "caption": many})
    manifest = write_shards(ArrowSource(tmp_path), tmp_path / "out", progress=False)
    assert (manifest["samples"], manifest["pairs"]) == (4, 5)
