import json
from pathlib import Path

import pytest

from meter.cli import main
from meter.data.formats.conceptual_captions import ConceptualCaptionsSource, url_file_name
from meter.data.shard_writer import write_shards
from tests.corpora import cc_file, image_bytes, shard_members, write_conceptual_captions


def _bad_lines(out: Path) -> dict[str, str]:
    return {
        json.loads(x)["path"]: json.loads(x)["reason"] for x in (out / "bad_samples.jsonl").read_text().splitlines()
    }


def test_conceptual_captions_images_are_found_by_the_crc32_of_their_url():
    # the published CRC-32 check value of this sentence is 0x414FA339
    assert url_file_name("The quick brown fox jumps over the lazy dog") == str(0x414FA339)
    url = "http://example.com/photos/1/picture.jpg?size=large"
    assert url_file_name(url) == cc_file(url) and url_file_name(url).isdigit()


def test_conceptual_captions_rows_become_samples_and_undownloaded_urls_are_counted_apart(tmp_path: Path):
    urls = write_conceptual_captions(tmp_path / "cc", rows=10)
    (tmp_path / "cc/training" / cc_file(urls[3])).unlink()  # never downloaded
    manifest = write_shards(ConceptualCaptionsSource(tmp_path / "cc"), tmp_path / "out", shard_size=4, progress=False)
    assert (manifest["samples"], manifest["pairs"], manifest["not_downloaded"], manifest["bad"]) == (9, 9, 1, 0)
    assert [s["samples"] for s in manifest["shards"]] == [3, 4, 2]
    members = shard_members(tmp_path / "out/00000.tar")
    assert json.loads(members["000000002.json"]) == {"captions": ["a photo number 2 of something"], "url": urls[2],
                                                      "row": 2}  # fmt: skip
    assert members["000000002.jpg"] == image_bytes(202)


def test_bad_conceptual_captions_lines_are_skipped_and_named_by_line(tmp_path: Path):
    urls = write_conceptual_captions(tmp_path / "cc", rows=8)
    tsv = tmp_path / "cc/Train_GCC-training.tsv"
    lines = tsv.read_bytes().split(b"\n")
    lines[1] = b"\t" + urls[1].encode()  # empty caption
    lines[2] = b"caf\xe9 latte\t" + urls[2].encode()  # Latin-1, not UTF-8
    lines[3] = b"no url on this line"
    tsv.write_bytes(b"\n".join(lines))
    (tmp_path / "cc/training" / cc_file(urls[4])).write_bytes(b"<html>404 not found</html>")  # a web page
    manifest = write_shards(ConceptualCaptionsSource(tmp_path / "cc"), tmp_path / "out", max_bad=0.5, progress=False)
    assert (manifest["samples"], manifest["bad"]) == (4, 4)
    bad = _bad_lines(tmp_path / "out")
    assert "empty caption" in bad[f"{tsv}:2"]
    assert "not UTF-8" in bad[f"{tsv}:3"]
    assert "not a 'caption<TAB>url' line" in bad[f"{tsv}:4"]
    assert "unreadable image" in bad[f"{tsv}:5"]


def test_images_in_another_layout_than_meters_stop_the_run_naming_where_the_first_was_looked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture
):
    """Images named `{row}_{crc32}` (another downloader's layout) read as never downloaded: the run ended with 0
    samples, rc 0 and a manifest."""
    urls = write_conceptual_captions(tmp_path / "cc", rows=4)
    for row, url in enumerate(urls):
        (tmp_path / "cc/training" / cc_file(url)).rename(tmp_path / f"cc/training/{row}_{cc_file(url)}")
    command = ["prepare", "cc", "--root", str(tmp_path / "cc"), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(command) == 2
    expected = tmp_path / "cc/training" / cc_file(urls[0])
    assert f"no usable sample in 4 records (4 images not found, 0 bad); the first image not found was looked for " \
           f"at {expected}: nothing written" in capsys.readouterr().err  # fmt: skip
    assert not (tmp_path / "out/manifest.json").exists() and not list((tmp_path / "out").glob("*.tar"))
    for row, url in enumerate(urls):  # renamed as meter expects, the same command reads them all
        (tmp_path / f"cc/training/{row}_{cc_file(url)}").rename(tmp_path / "cc/training" / cc_file(url))
    assert main(command) == 0
    assert json.loads((tmp_path / "out/manifest.json").read_text())["samples"] == 4


def test_rows_of_urls_whose_crc32_file_names_collide_are_bad_samples_not_another_urls_image(tmp_path: Path):
    """CRC32 gives CC3M's 3.3 million URLs about 1,300 shared file names: the file holds one of the two images,
    and the other URL's caption was paired with it."""
    urls = write_conceptual_captions(tmp_path / "cc", rows=6)
    first, second = "http://example.com/a02552f76dbdf5fd.jpg", "http://example.com/670009b22c087272.jpg"
    assert cc_file(first) == cc_file(second)  # the downloader wrote both into one file
    tsv = tmp_path / "cc/Train_GCC-training.tsv"
    lines = tsv.read_text().splitlines()
    lines[1] = f"a cat on a sofa\t{first}"
    lines[4] = f"a ship at sea\t{second}"
    lines[2] = f"another caption of the same url\t{urls[3]}"  # a URL listed twice is one image: both rows are good
    tsv.write_text("\n".join(lines) + "\n")
    (tmp_path / "cc/training" / cc_file(first)).write_bytes(image_bytes(300))
    manifest = write_shards(ConceptualCaptionsSource(tmp_path / "cc"), tmp_path / "out", max_bad=0.5, progress=False)
    assert (manifest["samples"], manifest["bad"], manifest["not_downloaded"]) == (4, 2, 0)
    bad = _bad_lines(tmp_path / "out")
    assert set(bad) == {f"{tsv}:2", f"{tsv}:5"}
    assert "is the download of more than one URL (lines 2, 5 of the TSV" in bad[f"{tsv}:2"]
    members = shard_members(tmp_path / "out/00000.tar")
    assert json.loads(members["000000003.json"])["url"] == urls[3]
    assert json.loads(members["000000002.json"])["url"] == urls[3]
