import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from meter.data.formats.webdataset import TarShard, WebdatasetSource, split_member_name
from meter.data.shard_manifest import read_manifest
from meter.data.shard_writer import index_shards, write_shards
from meter.errors import DataError
from tests.corpora import DAMAGED, add_member, image_bytes, shard_members, write_damaged_shard, write_img2dataset


def test_member_names_split_at_the_first_dot_of_the_file_name_like_webdataset():
    assert split_member_name("000010005.jpg") == ("000010005", "jpg")
    assert split_member_name("a.b/000010005.seg.png") == ("a.b/000010005", "seg.png")


def test_img2dataset_shards_are_indexed_in_place_with_their_counts(tmp_path: Path):
    captions = write_img2dataset(tmp_path / "cc12m", shards=3, per_shard=5)
    manifest = index_shards(tmp_path / "cc12m", tmp_path / "index", progress=False)
    assert (manifest["samples"], manifest["pairs"], manifest["bad"]) == (15, 15, 0)
    read = read_manifest(tmp_path / "index")
    assert [s.path for s in read.shards] == [(tmp_path / f"cc12m/{i:05d}.tar").resolve() for i in range(3)]
    assert manifest["captions"]["words"]["mean"] == 4.0
    assert not list((tmp_path / "index").glob("*.tar"))  # nothing copied
    with TarShard(read.shards[1].path) as shard:
        assert [shard.text(s).captions for s in shard.samples()] == [(c,) for c in captions[5:10]]


def test_img2dataset_shards_can_be_rewritten_keeping_their_metadata(tmp_path: Path):
    write_img2dataset(tmp_path / "web", shards=2, per_shard=3)
    manifest = write_shards(WebdatasetSource(tmp_path / "web"), tmp_path / "out", shard_size=4, progress=False)
    assert [s["samples"] for s in manifest["shards"]] == [4, 2]
    members = shard_members(tmp_path / "out/00001.tar")
    meta = json.loads(members["00001_000010001.json"])
    assert meta["captions"] == ["web caption 1 1"] and meta["url"] == "http://x/000010001.jpg"
    assert members["00001_000010001.jpg"] == image_bytes(1001)


def test_indexing_counts_and_names_each_kind_of_damaged_sample(tmp_path: Path):
    write_damaged_shard(tmp_path / "web/00000.tar")
    manifest = index_shards(tmp_path / "web", tmp_path / "index", max_bad=1.0, progress=False)
    # the truncated image is only found by decoding (the loader does); the others are found from headers and text
    assert (manifest["samples"], manifest["pairs"], manifest["bad"]) == (8, 8, 4)
    bad = [json.loads(line) for line in (tmp_path / "index/bad_samples.jsonl").read_text().splitlines()]
    for entry in bad:
        key = entry["path"].rpartition("/")[2]
        assert DAMAGED[key] in entry["reason"].lower(), entry
    assert {b["path"].rpartition("/")[2] for b in bad} == set(DAMAGED) - {"000000001"}


def _written_again(root: Path, per_shard: int, caption_text: str) -> None:
    """img2dataset run again into its folder: the same shard names, other samples, written later."""
    later = max(path.stat().st_mtime_ns for path in root.glob("*.tar")) + 10**9  # a file system's clock ticks coarser
    shutil.rmtree(root)
    write_img2dataset(root, shards=2, per_shard=per_shard, caption_text=caption_text)
    for path in root.glob("*.tar"):
        os.utime(path, ns=(later, later))


def test_shards_written_again_since_they_were_indexed_are_refused_naming_them(tmp_path: Path):
    """The index kept its counts of 3 samples a shard for shards of 5: 4 of 10 samples were never trained on."""
    write_img2dataset(tmp_path / "web", shards=2, per_shard=3)
    index_shards(tmp_path / "web", tmp_path / "index", progress=False)
    assert index_shards(tmp_path / "web", tmp_path / "index", progress=False)["samples"] == 6  # unchanged: reused
    _written_again(tmp_path / "web", per_shard=5, caption_text="web caption")
    with pytest.raises(DataError, match=r"index holds a preparation of another source .*\(source_files\[0\]\.mtime_ns: "
                                        r"\d+ then, \d+ now; .*source_files\[1\]\.mtime_ns"):  # fmt: skip
        index_shards(tmp_path / "web", tmp_path / "index", progress=False)


def test_a_shard_indexed_while_it_was_still_written_is_named_and_a_run_refuses_it_once_finished(tmp_path: Path):
    """img2dataset writes a shard sample by sample under its final name: indexed while the download ran, it was
    taken as whole (no word), and once finished every epoch read it only as far as the manifest counted."""
    from meter.config import DataConfig, SourceConfig
    from meter.data.shard_stream import open_corpus

    write_img2dataset(tmp_path / "web", shards=2, per_shard=10)
    whole = (tmp_path / "web/00001.tar").read_bytes()
    with tarfile.open(tmp_path / "web/00001.tar") as tar:
        cut = tar.getmembers()[12].offset  # a sample's first header: the file ends where a sample begins
    (tmp_path / "web/00001.tar").write_bytes(whole[:cut])
    manifest = index_shards(tmp_path / "web", tmp_path / "index", max_bad=0.1, progress=False)
    assert manifest["bad"] == 1 and [s["samples"] for s in manifest["shards"]] == [10, 4]
    listed = (tmp_path / "index/bad_samples.jsonl").read_text()
    assert "00001.tar: ends without a tar's closing blocks (still being downloaded, or cut short)" in listed
    (tmp_path / "web/00001.tar").write_bytes(whole)  # the download finishes
    data = DataConfig(root=str(tmp_path), sources=[SourceConfig(path="index")])
    changed = rf"{tmp_path}/web/00001.tar \({len(whole):,} bytes, {cut:,} when prepared\) changed since `meter prepare`"
    with pytest.raises(DataError, match=rf"data.sources\[0\]: {changed} wrote or read it"):
        open_corpus(data, None)


def test_tars_made_by_hand_say_what_is_wrong_with_them_and_macos_metadata_is_no_sample(tmp_path: Path):
    """`tar cf x.tar *.jpg *.txt` was told "no caption member" with the caption right there; a macOS tar's `._*`
    resource forks were samples of their own."""
    (tmp_path / "bytype").mkdir()
    (tmp_path / "mac").mkdir()
    with tarfile.open(tmp_path / "bytype/00000.tar", "w") as tar:
        for extension in ("jpg", "txt"):
            for i in range(4):
                add_member(tar, f"{i:04d}.{extension}", image_bytes(i) if extension == "jpg" else b"a caption")
    with tarfile.open(tmp_path / "mac/00000.tar", "w") as tar:
        for i in range(4):
            for extension, data in (("jpg", image_bytes(i)), ("txt", f"caption {i}".encode())):
                add_member(tar, f"./._{i:04d}.{extension}", b"\x00\x05\x16\x07AppleDouble")
                add_member(tar, f"./{i:04d}.{extension}", data)
    index_shards(tmp_path / "bytype", tmp_path / "out_bytype", max_bad=1.0, progress=False)
    listed = (tmp_path / "out_bytype/bad_samples.jsonl").read_text()
    assert "0000 (again, after another key's): its members are not next to each other in the tar" in listed
    assert "tar --sort=name" in listed
    manifest = index_shards(tmp_path / "mac", tmp_path / "out_mac", max_bad=0.0, progress=False)
    assert (manifest["samples"], manifest["bad"]) == (4, 0)


def test_a_copy_rerun_over_shards_of_other_captions_is_refused_not_kept(tmp_path: Path):
    """As many samples as before, so the record count passed: the copy kept the old captions."""
    write_img2dataset(tmp_path / "web", shards=2, per_shard=3)
    write_shards(WebdatasetSource(tmp_path / "web"), tmp_path / "out", shard_size=4, progress=False)
    _written_again(tmp_path / "web", per_shard=3, caption_text="another caption")
    with pytest.raises(DataError, match=r"out holds a preparation of another source .*source_files\[0\]\.mtime_ns"):
        write_shards(WebdatasetSource(tmp_path / "web"), tmp_path / "out", shard_size=4, progress=False)


def test_captions_that_are_not_strings_make_the_sample_bad_and_null_ones_are_left_out(tmp_path: Path):
    # str() of each entry pretrained on the captions "None" and "7"
    path = tmp_path / "00000.tar"
    metas = [{"captions": [None, "a dog"]}, {"captions": [7, "a cat"]}, {"captions": [[101, 2023]]}]
    with tarfile.open(path, "w") as tar:
        for i, meta in enumerate(metas):
            add_member(tar, f"{i:09d}.jpg", image_bytes(9000 + i))
            add_member(tar, f"{i:09d}.json", json.dumps(meta).encode())
    with TarShard(path) as shard:
        texts = [shard.text(s) for s in shard.samples()]
    assert [(t.captions, t.problem) for t in texts] == [
        (("a dog",), None),
        ((), f"{path}/000000001.json: 'captions' holds a int (7), not a string"),
        ((), f"{path}/000000002.json: 'captions' holds a list ([101, 2023]), not a string"),
    ]
