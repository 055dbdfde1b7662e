"""`meter prepare SOURCE` for each corpus, in process (the subprocess tests are in test_shards_prepare.py)."""

import json
from pathlib import Path

import pytest

from meter.cli import main
from tests.corpora import (
    image_bytes,
    write_coco,
    write_conceptual_captions,
    write_img2dataset,
    write_sbu,
    write_vilt_arrow,
    write_visual_genome,
)


def _layout(source: str, root: Path) -> list[str]:
    """Writes the source's published layout; returns the extra options it needs."""
    if source == "coco":
        write_coco(root, images=8)
        return ["--karpathy", "karpathy/dataset_coco.json"]
    if source == "vg":
        write_visual_genome(root, images=4, regions=2)
    elif source == "cc":
        write_conceptual_captions(root, rows=4)
    elif source == "sbu":
        write_sbu(root, rows=4)
    elif source == "webdataset":
        write_img2dataset(root, shards=2, per_shard=2)
    else:
        write_vilt_arrow(root / "vg.arrow", [(image_bytes(i), [f"a {i}", f"b {i}"], str(i)) for i in range(4)])
    return []


@pytest.mark.parametrize(
    ("source", "samples", "pairs"),
    [("coco", 4, 20), ("vg", 4, 8), ("cc", 4, 4), ("sbu", 4, 4), ("webdataset", 4, 4), ("arrow", 4, 8)],
)
def test_prepare_command_writes_a_manifest_for_each_source(
    source: str, samples: int, pairs: int, tmp_path: Path, capsys: pytest.CaptureFixture
):
    options = _layout(source, tmp_path / "raw")
    assert main(["prepare", source, "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "out"),
                 "--no-progress", *options]) == 0  # fmt: skip
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert (manifest["source"], manifest["samples"], manifest["pairs"]) == (source, samples, pairs)
    said = f"{samples:,} samples indexed in place, {pairs:,} image-caption pairs" if source == "webdataset" else \
        f"{samples:,} images, {pairs:,} image-caption pairs"  # fmt: skip
    assert said in capsys.readouterr().out


def test_indexing_in_place_says_its_counts_are_places_with_the_bad_samples_among_them(tmp_path, capsys):
    """Indexed in place the shards keep their bad samples (skipped when read): '8 images ... 4 bad' read as 12
    records, where --copy of the same shard says 3 images and 5 bad."""
    from tests.corpora import write_damaged_shard

    write_damaged_shard(tmp_path / "wds/00000.tar")
    assert main(["prepare", "webdataset", "--root", str(tmp_path / "wds"), "--out", str(tmp_path / "index"),
                 "--max-bad", "0.9", "--no-progress"]) == 0  # fmt: skip
    assert "8 samples indexed in place, 8 image-caption pairs, in 1 shards; 4 of the samples bad" in \
        capsys.readouterr().out  # fmt: skip


def test_an_empty_shard_that_img2dataset_is_still_creating_is_a_bad_sample_not_the_end_of_indexing(tmp_path, capsys):
    """A 0-byte `*.tar` (img2dataset creating it) stopped indexing the whole folder: "not a tar file (empty file)"."""
    write_img2dataset(tmp_path / "wds", shards=2, per_shard=2)
    (tmp_path / "wds/00002.tar").write_bytes(b"")
    assert main(["prepare", "webdataset", "--root", str(tmp_path / "wds"), "--out", str(tmp_path / "index"),
                 "--max-bad", "0.5", "--no-progress"]) == 0  # fmt: skip
    manifest = json.loads((tmp_path / "index/manifest.json").read_text())
    assert (manifest["samples"], manifest["bad"]) == (4, 1)
    assert "00002.tar: 0 bytes, no sample yet" in (tmp_path / "index/bad_samples.jsonl").read_text()


def test_prepare_command_names_a_missing_layout_file(tmp_path: Path, capsys: pytest.CaptureFixture):
    (tmp_path / "cc/training").mkdir(parents=True)
    assert main(["prepare", "cc", "--root", str(tmp_path / "cc"), "--out", str(tmp_path / "out")]) == 2
    assert f"caption file not found: {tmp_path / 'cc/Train_GCC-training.tsv'}" in capsys.readouterr().err


def test_a_files_pattern_written_as_a_path_under_root_is_taken_and_an_empty_or_outside_one_is_named(tmp_path, capsys):
    """An absolute path in --pattern / --files was an internal error (pathlib refuses a non-relative pattern), and so
    was an empty one."""
    write_img2dataset(tmp_path / "wds", shards=2, per_shard=2)
    write_vilt_arrow(tmp_path / "ar/vg.arrow", [(image_bytes(i), [f"a {i}"], str(i)) for i in range(4)])
    taken = [
        ("webdataset", "--pattern", str(tmp_path / "wds/00000.tar"), 2),
        ("webdataset", "--pattern", "**/*.tar", 4),
        ("arrow", "--files", str(tmp_path / "ar/vg.arrow"), 4),
    ]
    for source, option, value, samples in taken:
        root = tmp_path / ("wds" if source == "webdataset" else "ar")
        out = tmp_path / f"out-{source}-{samples}"
        assert main(["prepare", source, "--root", str(root), option, value, "--out", str(out), "--no-progress"]) == 0
        assert json.loads((out / "manifest.json").read_text())["samples"] == samples
    capsys.readouterr()
    refused = [("--pattern", "", "--pattern is empty: give file names or patterns under --root"),
               ("--pattern", str(tmp_path / "ar/vg.arrow"), f"--pattern {tmp_path / 'ar/vg.arrow'} is not under "
                                                            f"--root {tmp_path / 'wds'}")]  # fmt: skip
    for option, value, said in refused:
        assert main(["prepare", "webdataset", "--root", str(tmp_path / "wds"), option, value, "--out",
                     str(tmp_path / "refused"), "--no-progress"]) == 2  # fmt: skip
        assert said in capsys.readouterr().err
