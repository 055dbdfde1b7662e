import json
import logging
from pathlib import Path

import pytest

from meter.data.formats.sbu import SbuSource
from meter.data.shard_writer import write_shards
from meter.errors import DataError
from tests.corpora import image_bytes, shard_members, write_sbu


def test_sbu_photos_are_found_by_their_url_file_name(tmp_path: Path):
    urls = write_sbu(tmp_path / "sbu", rows=6)
    (tmp_path / "sbu/images/4000005_abc5.jpg").unlink()
    manifest = write_shards(SbuSource(tmp_path / "sbu"), tmp_path / "out", progress=False)
    assert (manifest["samples"], manifest["pairs"], manifest["not_downloaded"]) == (5, 5, 1)
    members = shard_members(tmp_path / "out/00000.tar")
    assert members["0000001.jpg"] == image_bytes(301)
    assert json.loads(members["0000001.json"]) == {"captions": ["sbu caption 1 by a user"], "url": urls[1], "row": 1}


def test_sbu_files_of_different_lengths_are_refused(tmp_path: Path):
    write_sbu(tmp_path / "sbu", rows=3)
    urls = tmp_path / "sbu/SBU_captioned_photo_dataset_urls.txt"
    urls.write_text(urls.read_text() + "http://static.flickr.com/1/extra.jpg\n")
    with pytest.raises(DataError, match="one line per photo"):
        SbuSource(tmp_path / "sbu")


def test_an_sbu_caption_that_is_not_utf8_is_skipped_and_named(tmp_path: Path):
    write_sbu(tmp_path / "sbu", rows=4)
    captions = tmp_path / "sbu/SBU_captioned_photo_dataset_captions.txt"
    captions.write_bytes(captions.read_bytes().replace(b"sbu caption 2", b"sbu \xff\xfe caption"))
    manifest = write_shards(SbuSource(tmp_path / "sbu"), tmp_path / "out", max_bad=0.5, progress=False)
    assert (manifest["samples"], manifest["bad"]) == (3, 1)
    assert f"{captions}:3" in (tmp_path / "out/bad_samples.jsonl").read_text()


def test_most_photos_missing_is_warned_of_naming_the_file_looked_for_while_the_rest_are_prepared(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """A partial download stays a preparation of what is there; past half of it missing a layout mismatch is
    likelier than dead links, and the log names the first file not found."""
    write_sbu(tmp_path / "sbu", rows=5)
    for row in (1, 2, 4):
        (tmp_path / f"sbu/images/{4000000 + row}_abc{row}.jpg").unlink()
    with caplog.at_level(logging.WARNING):
        manifest = write_shards(SbuSource(tmp_path / "sbu"), tmp_path / "out", progress=False)
    assert (manifest["samples"], manifest["not_downloaded"]) == (2, 3)
    looked = tmp_path / "sbu/images/4000001_abc1.jpg"
    assert f"sbu: 3 of 5 records not downloaded (their image file not found); the first image not found was looked " \
           f"for at {looked}: are the images where and as meter looks for them?" in caplog.text  # fmt: skip
