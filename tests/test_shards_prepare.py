import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meter.data.formats.captions import coco_source
from meter.data.formats.common import RawSample
from meter.data.formats.conceptual_captions import ConceptualCaptionsSource
from meter.data.shard_writer import write_shards
from meter.errors import DataError
from tests.corpora import (
    cc_file,
    image_bytes,
    shard_members,
    write_coco,
    write_conceptual_captions,
    write_visual_genome,
)


def prepare(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "meter", "prepare", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def shard_set(out: Path) -> dict[str, bytes]:
    names = ["manifest.json", "bad_samples.jsonl", *sorted(p.name for p in out.glob("*.tar"))]
    return {name: (out / name).read_bytes() for name in names}


def broken_cc(root: Path, rows: int) -> None:
    urls = write_conceptual_captions(root, rows)
    for row in range(7, rows, 50):
        (root / "training" / cc_file(urls[row])).write_bytes(b"\xff\xd8 not really a jpeg")


@pytest.mark.slow
def test_killed_preparation_resumes_to_the_same_shards_as_an_uninterrupted_one(tmp_path: Path):
    broken_cc(tmp_path / "cc", rows=1500)
    options = ["--root", str(tmp_path / "cc"), "--shard-size", "10", "--decode", "--no-progress", "--max-bad", "0.05"]
    straight = prepare("cc", *options, "--out", str(tmp_path / "straight"))
    assert straight.wait(timeout=120) == 0, straight.stderr.read()
    killed = prepare("cc", *options, "--out", str(tmp_path / "killed"))
    progress = tmp_path / "killed/progress"
    deadline = time.monotonic() + 60
    while len(list(progress.glob("*.json"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    finished = len(list(progress.glob("*.json")))
    assert 3 <= finished < 150 and not (tmp_path / "killed/manifest.json").exists()
    resumed = prepare("cc", *options, "--out", str(tmp_path / "killed"))
    assert resumed.wait(timeout=120) == 0, resumed.stderr.read()
    assert shard_set(tmp_path / "killed") == shard_set(tmp_path / "straight")
    manifest = json.loads((tmp_path / "straight/manifest.json").read_text())
    assert (manifest["samples"], manifest["bad"], len(manifest["shards"])) == (1470, 30, 150)
    assert not list((tmp_path / "killed").glob(".*.tmp"))


def test_preparation_refuses_to_resume_with_other_settings(tmp_path: Path):
    write_conceptual_captions(tmp_path / "cc", rows=6)
    write_shards(ConceptualCaptionsSource(tmp_path / "cc"), tmp_path / "out", shard_size=4, progress=False)
    with pytest.raises(DataError, match="other settings .*shard_size"):
        write_shards(ConceptualCaptionsSource(tmp_path / "cc"), tmp_path / "out", shard_size=3, progress=False)


def test_prepare_command_over_its_budget_stops_with_a_message_naming_the_option_and_the_file(tmp_path: Path):
    broken_cc(tmp_path / "cc", rows=20)
    result = prepare("cc", "--root", str(tmp_path / "cc"), "--out", str(tmp_path / "out"), "--max-bad", "0.01")
    _, stderr = result.communicate(timeout=120)
    assert result.returncode == 2
    bad = tmp_path / "cc/training" / cc_file("http://example.com/photos/7/picture.jpg?size=large")
    assert f"meter: data: skipped 1 of 20 samples, more than the budget of 0 (1.0%, --max-bad): first: {bad}" in stderr
    assert "bad_samples.jsonl" in stderr
    assert not list((tmp_path / "out").glob(".*.tmp")), "the shard it stopped in is not left half-written"


def test_a_rerun_over_an_edited_source_file_is_refused_naming_it_and_another_directory_is_the_same_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Shards of the old captions were reused without a word by a rerun (or mixed with new ones by a resume) after
    the TSV was edited; a resume from another working directory was refused as 'other settings (description)'."""
    write_conceptual_captions(tmp_path / "cc", rows=6)
    write_shards(ConceptualCaptionsSource(tmp_path / "cc"), tmp_path / "out", shard_size=4, progress=False)
    monkeypatch.chdir(tmp_path)
    again = write_shards(ConceptualCaptionsSource("cc"), "out", shard_size=4, progress=False)  # a relative root
    assert again["pairs"] == 6
    tsv = tmp_path / "cc/Train_GCC-training.tsv"
    tsv.write_text(tsv.read_text().replace("a photo number 2", "a picture number 2"))
    digest = r"\"[0-9a-f]{64}\""
    with pytest.raises(DataError, match=rf"another source .*\(source_files\[0\]\.bytes: 486 then, 488 now; "
                                        rf"source_files\[0\]\.sha256: {digest} then, {digest} now\)"):  # fmt: skip
        write_shards(ConceptualCaptionsSource("cc"), "out", shard_size=4, progress=False)


def test_an_output_folder_holding_a_prepare_json_of_its_own_is_refused_by_name(tmp_path: Path):
    write_conceptual_captions(tmp_path / "cc", rows=2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out/prepare.json").write_text("my own notes, not JSON")
    with pytest.raises(DataError, match=r"out/prepare.json is not the record of a `meter prepare` .*another --out"):
        write_shards(ConceptualCaptionsSource(tmp_path / "cc"), tmp_path / "out", progress=False)
    assert (tmp_path / "out/prepare.json").read_text() == "my own notes, not JSON"


class RepeatedKeys:
    """A source whose records 0 and 2 have one key (the webdataset copy of `a.b` and `a_b`)."""

    name, description, missing_images_expected, files = "repeated", {}, False, ()

    def __len__(self) -> int:
        return 3

    def samples(self, start: int = 0):
        for i, key in list(enumerate(["a_b", "c", "a.b"]))[start:]:
            yield RawSample(key, image_bytes(i), (f"caption {i}",), f"record {i}")


def test_a_sample_key_repeated_within_a_shard_is_a_counted_bad_sample_not_a_merged_one(tmp_path: Path):
    manifest = write_shards(RepeatedKeys(), tmp_path / "out", max_bad=0.5, progress=False)
    assert (manifest["samples"], manifest["bad"]) == (2, 1)
    assert sorted(shard_members(tmp_path / "out/00000.tar")) == ["a_b.jpg", "a_b.json", "a_b.txt", "c.jpg", "c.json",
                                                                 "c.txt"]  # fmt: skip
    assert "record 2: its sample key 'a_b' is an earlier sample's" in (tmp_path / "out/bad_samples.jsonl").read_text()


def test_a_preparation_by_an_older_meter_gets_its_fingerprint_recorded_and_is_guarded_from_then_on(tmp_path: Path):
    """prepare.json without source_files (an older meter's) was never fingerprinted: every later edit passed."""
    write_conceptual_captions(tmp_path / "cc", rows=6)
    write_shards(ConceptualCaptionsSource(tmp_path / "cc"), tmp_path / "out", shard_size=4, progress=False)
    record = tmp_path / "out/prepare.json"
    older = {k: v for k, v in json.loads(record.read_text()).items() if k != "source_files"}
    record.write_text(json.dumps(older))
    write_shards(ConceptualCaptionsSource(tmp_path / "cc"), tmp_path / "out", shard_size=4, progress=False)
    assert "source_files" in json.loads(record.read_text())
    tsv = tmp_path / "cc/Train_GCC-training.tsv"
    tsv.write_text(tsv.read_text().replace("a photo number 2", "a picture number 2"))
    with pytest.raises(DataError, match=r"source_files\[0\]"):
        write_shards(ConceptualCaptionsSource(tmp_path / "cc"), tmp_path / "out", shard_size=4, progress=False)


class HalfCharacter:
    """A source whose second record's caption holds half of an emoji (a lone surrogate, as a bad decode leaves)."""

    name, description, missing_images_expected, files = "half-character", {}, False, ()

    def __len__(self) -> int:
        return 3

    def samples(self, start: int = 0):
        for i, text in list(enumerate(["a cat", "a smiling \ud83d dog", "a bird"]))[start:]:
            yield RawSample(f"k{i}", image_bytes(i), (text,), f"record {i}")


def test_a_caption_that_utf8_cannot_hold_is_a_counted_bad_sample(tmp_path: Path):
    """It raised UnicodeEncodeError while its shard was written, and every rerun stopped at the same record."""
    manifest = write_shards(HalfCharacter(), tmp_path / "out", max_bad=0.5, progress=False)
    assert (manifest["samples"], manifest["bad"]) == (2, 1)
    assert "record 1: a caption is not text that UTF-8 can hold" in (tmp_path / "out/bad_samples.jsonl").read_text()


def test_a_rerun_writes_again_the_shards_deleted_or_cut_short_since(tmp_path: Path):
    """A finished shard's record was trusted: the rerun listed a deleted shard in the manifest, and training skipped
    its pairs as bad samples."""
    write_conceptual_captions(tmp_path / "cc", rows=12)
    straight = write_shards(ConceptualCaptionsSource(tmp_path / "cc"), tmp_path / "out", shard_size=4, progress=False)
    written = {path.name: path.read_bytes() for path in (tmp_path / "out").glob("*.tar")}
    (tmp_path / "out/00001.tar").unlink()
    with (tmp_path / "out/00002.tar").open("r+b") as shard:
        shard.truncate(1024)
    again = write_shards(ConceptualCaptionsSource(tmp_path / "cc"), tmp_path / "out", shard_size=4, progress=False)
    assert again == straight and {path.name: path.read_bytes() for path in (tmp_path / "out").glob("*.tar")} == written
    assert len(written) == 3


def test_a_shard_record_left_empty_by_a_crash_is_written_again(tmp_path: Path):
    """A crash of the machine could leave a renamed record empty (it was not on disk before the rename): the rerun
    failed with an internal JSONDecodeError instead of writing that shard again."""
    write_conceptual_captions(tmp_path / "cc", rows=12)
    straight = write_shards(ConceptualCaptionsSource(tmp_path / "cc"), tmp_path / "out", shard_size=4, progress=False)
    (tmp_path / "out/progress/00001.json").write_text("")
    (tmp_path / "out/progress/00002.json").write_text('{"not": "a record"}')
    again = write_shards(ConceptualCaptionsSource(tmp_path / "cc"), tmp_path / "out", shard_size=4, progress=False)
    assert again == straight
    assert json.loads((tmp_path / "out/progress/00001.json").read_text())["path"] == "00001.tar"


def test_a_preparation_stopped_by_its_budget_and_run_again_with_the_images_in_place_reads_them(tmp_path: Path):
    """Visual Genome prepared before VG_100K_2 was unzipped stops at its budget; unzipped, the same command was
    refused again: the list kept the unfinished shard's missing images, which the rerun reads fine."""
    import shutil

    from meter.data.formats.visual_genome import visual_genome_source

    write_visual_genome(tmp_path / "vg", 40)  # odd ids in VG_100K, even ones in VG_100K_2
    (tmp_path / "vg/VG_100K/39.jpg").write_bytes(b"not a jpeg")  # one image that is really bad
    shutil.move(tmp_path / "vg/VG_100K_2", tmp_path / "later")
    options = {"shard_size": 10, "max_bad": 0.2, "progress": False}  # a budget of 8: the second shard spends it
    with pytest.raises(DataError, match=r"skipped 9 of 40"):
        write_shards(visual_genome_source(tmp_path / "vg"), tmp_path / "out", **options)
    shutil.move(tmp_path / "later", tmp_path / "vg/VG_100K_2")
    manifest = write_shards(visual_genome_source(tmp_path / "vg"), tmp_path / "out", **options)
    # the first shard is kept as written (its 5 missing images stay bad); the others read every image but 39's
    assert (manifest["samples"], manifest["bad"]) == (34, 6)
    assert len((tmp_path / "out/bad_samples.jsonl").read_text().splitlines()) == 6


def test_the_bad_sample_list_keeps_every_line_after_a_shard_is_written_again_and_the_command_run_once_more(
    tmp_path: Path,
):
    """A shard written again while the whole list was restored counted none of its own bad samples: the next rerun
    of the same command kept that many fewer of the list's first lines, losing the last shards' (for good, and the
    budget counted fewer from then on)."""
    from meter.data.formats.visual_genome import visual_genome_source

    write_visual_genome(tmp_path / "vg", 40)
    for image in ("VG_100K/3.jpg", "VG_100K/15.jpg", "VG_100K_2/26.jpg", "VG_100K/37.jpg"):  # shards 0, 1, 2, 3
        (tmp_path / "vg" / image).write_bytes(b"not a jpeg")
    options = {"shard_size": 10, "max_bad": 0.2, "progress": False}
    listed = tmp_path / "out/bad_samples.jsonl"
    first = write_shards(visual_genome_source(tmp_path / "vg"), tmp_path / "out", **options)
    lines = sorted(listed.read_text().splitlines())
    assert first["bad"] == len(lines) == 4
    (tmp_path / "out/00001.tar").unlink()
    for _ in range(2):  # the shard written again, then the same command once more
        again = write_shards(visual_genome_source(tmp_path / "vg"), tmp_path / "out", **options)
        assert again == first and sorted(listed.read_text().splitlines()) == lines


def test_a_source_in_a_folder_named_in_latin1_is_prepared_and_prepared_again(tmp_path: Path):
    """The folder's undecodable byte reached prepare.json as half of a character: UnicodeEncodeError, and the
    temporary file left behind made the folder refused from then on as not meter's."""
    root = tmp_path / os.fsdecode(b"caf\xe9")
    write_conceptual_captions(root, rows=6)
    first = write_shards(ConceptualCaptionsSource(root), tmp_path / "out", shard_size=4, progress=False)
    assert first["samples"] == 6 and first["description"]["root"] == str(root)
    assert write_shards(ConceptualCaptionsSource(root), tmp_path / "out", shard_size=4, progress=False) == first
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_a_rerun_that_finds_the_coco_images_elsewhere_is_another_preparation(tmp_path: Path):
    """--images was not recorded: a run that had found no image (its shards kept, empty) was resumed by one that
    found them, and the kept shards stayed empty."""
    write_coco(tmp_path / "coco", 8)
    (tmp_path / "coco/images").mkdir()
    (tmp_path / "coco/train2014").rename(tmp_path / "coco/images/train2014")
    with pytest.raises(DataError, match="image not found"):
        write_shards(coco_source(tmp_path / "coco", "karpathy/dataset_coco.json"), tmp_path / "out", progress=False)
    with pytest.raises(DataError, match=r"other settings \(description\.images: "):
        write_shards(coco_source(tmp_path / "coco", "karpathy/dataset_coco.json", images="images"), tmp_path / "out",
                     progress=False)  # fmt: skip


def test_an_image_listed_without_a_caption_is_a_bad_sample_counted_and_listed(tmp_path: Path):
    """COCO images listed with no caption (annotations filtered), or Karpathy images whose every sentence is blank,
    were left out silently: not in the manifest's bad count, the list or the --max-bad budget."""
    write_coco(tmp_path / "coco", 8)
    captions = tmp_path / "coco/annotations/captions_train2014.json"
    data = json.loads(captions.read_text())
    captions.write_text(json.dumps(data | {"annotations": [a for a in data["annotations"] if a["image_id"] > 2]}))
    karpathy = tmp_path / "coco/karpathy/dataset_coco.json"
    data = json.loads(karpathy.read_text())
    for entry in data["images"][:2]:  # image 1 (restval) and 2 (val, not prepared): every sentence blank
        entry["sentences"] = [{"raw": "  ", "tokens": []} for _ in entry["sentences"]]
    data["images"][4]["sentences"] = []  # image 5 (restval): none at all
    karpathy.write_text(json.dumps(data))
    for source, bad in ((coco_source(tmp_path / "coco"), {"COCO_train2014_000000000001.jpg",
                                                          "COCO_train2014_000000000002.jpg"}),
                        (coco_source(tmp_path / "coco", "karpathy/dataset_coco.json"),
                         {"COCO_train2014_000000000001.jpg", "COCO_train2014_000000000005.jpg"})):  # fmt: skip
        out = tmp_path / f"out-{len(source)}"
        manifest = write_shards(source, out, max_bad=0.5, progress=False)
        assert (manifest["records"], manifest["bad"]) == (len(source), 2) and manifest["samples"] == len(source) - 2
        listed = [json.loads(line) for line in (out / "bad_samples.jsonl").read_text().splitlines()]
        assert {Path(entry["path"]).name for entry in listed} == bad
        assert all("no caption in" in entry["reason"] for entry in listed)
    with pytest.raises(DataError, match="skipped 1 of 8 samples, more than the budget of 0"):  # the budget sees them
        write_shards(coco_source(tmp_path / "coco"), tmp_path / "strict", max_bad=0.1, progress=False)
