import json
from pathlib import Path

import pytest

from meter.data.formats.common import iter_json_array
from meter.data.formats.visual_genome import read_visual_genome, visual_genome_source
from meter.data.shard_writer import write_shards
from meter.errors import DataError
from tests.corpora import image_bytes, shard_members, write_visual_genome


def test_visual_genome_regions_become_captions_of_images_in_both_folders(tmp_path: Path):
    write_visual_genome(tmp_path / "vg", images=5, regions=4)
    records = read_visual_genome(tmp_path / "vg")
    assert [r.image_id for r in records] == [1, 2, 3, 4, 5]
    assert records[0].image == tmp_path / "vg/VG_100K/1.jpg" and records[1].image == tmp_path / "vg/VG_100K_2/2.jpg"
    assert records[2].captions == tuple(f"region {r} of image 3" for r in range(4))


def test_visual_genome_prepares_every_region_phrase_and_skips_images_without_phrases(tmp_path: Path):
    write_visual_genome(tmp_path / "vg", images=4, regions=3)
    regions = tmp_path / "vg/region_descriptions.json"
    entries = json.loads(regions.read_text())
    entries[2]["regions"] = [{**r, "phrase": "  "} for r in entries[2]["regions"]]  # image 3: empty phrases
    regions.write_text(json.dumps(entries))
    manifest = write_shards(visual_genome_source(tmp_path / "vg"), tmp_path / "out", max_bad=0.5, progress=False)
    assert (manifest["samples"], manifest["pairs"], manifest["bad"]) == (3, 9, 1)
    members = shard_members(tmp_path / "out/00000.tar")
    assert members["000000000002.jpg"] == image_bytes(102)
    assert json.loads(members["000000000002.json"])["captions"] == [f"region {r} of image 2" for r in range(3)]
    assert "(image id 3): no caption in" in (tmp_path / "out/bad_samples.jsonl").read_text()


def test_the_json_list_is_parsed_one_element_at_a_time_across_chunk_boundaries(tmp_path: Path):
    path = tmp_path / "list.json"
    elements = [{"id": i, "text": "é" * (i % 7), "nested": [i, {"x": "]"}]} for i in range(300)]
    path.write_text(json.dumps(elements, ensure_ascii=False))
    assert list(iter_json_array(path, "a list", chunk_size=37)) == elements
    path.write_text(json.dumps(elements)[:-10])
    with pytest.raises(DataError, match="list.json"):
        list(iter_json_array(path, "a list", chunk_size=64))


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5])
def test_a_bare_number_split_across_chunks_is_read_whole(tmp_path: Path, chunk_size: int):
    """A number that a chunk ends in may go on in the next chunk: `[12345, 2]` read 1, 23, 45, 2."""
    path = tmp_path / "numbers.json"
    path.write_text("[12345, 2, -0.75, true, 67]")
    assert list(iter_json_array(path, "a list", chunk_size=chunk_size)) == [12345, 2, -0.75, True, 67]
    path.write_text("[12, 3x4]")
    with pytest.raises(DataError, match="'x' after an element"):
        list(iter_json_array(path, "a list", chunk_size=chunk_size))


def test_a_phrase_repeated_within_an_image_is_one_pair_as_official_meter_trains(tmp_path: Path):
    """Official METER keeps `set(texts)` of each image (base_dataset.py:64-69); Visual Genome repeats phrases
    within an image, and meter wrote each repeat as a pair (more pairs, and more weight, than official)."""
    write_visual_genome(tmp_path / "vg", images=2, regions=2)
    regions = tmp_path / "vg/region_descriptions.json"
    entries = json.loads(regions.read_text())
    entries[0]["regions"] += [{**entries[0]["regions"][0], "phrase": phrase} for phrase in ("white  clouds",) * 3]
    regions.write_text(json.dumps(entries))
    manifest = write_shards(visual_genome_source(tmp_path / "vg"), tmp_path / "out", progress=False)
    assert (manifest["samples"], manifest["pairs"]) == (2, 5)
    captions = json.loads(shard_members(tmp_path / "out/00000.tar")["000000000001.json"])["captions"]
    assert captions == ["region 0 of image 1", "region 1 of image 1", "white clouds"]


def test_an_image_listed_twice_is_refused_and_an_entry_without_an_id_takes_its_regions(tmp_path: Path):
    """Listed twice, its two samples shared a key in the shard: read back as one damaged sample, two bad pairs."""
    write_visual_genome(tmp_path / "vg", images=3, regions=2)
    regions = tmp_path / "vg/region_descriptions.json"
    entries = json.loads(regions.read_text())
    del entries[1]["id"]  # some releases: the id is the regions' image_id
    entries[2]["regions"] = [{k: v for k, v in r.items() if k != "image_id"} for r in entries[2]["regions"]]
    regions.write_text(json.dumps(entries))
    assert [r.image_id for r in read_visual_genome(tmp_path / "vg")] == [1, 2, 3]
    regions.write_text(json.dumps([*entries, {**entries[0], "regions": entries[0]["regions"][:1]}]))
    with pytest.raises(DataError, match=r"region_descriptions.json: \[3\]: image id 1 is listed again \(first at "
                                        r"\[0\]\)"):  # fmt: skip
        read_visual_genome(tmp_path / "vg")
    regions.write_text(json.dumps([{"regions": [{"phrase": "a cat"}]}]))
    with pytest.raises(DataError, match=r"\[0\]: no integer image id"):
        read_visual_genome(tmp_path / "vg")


def test_an_image_in_no_folder_is_a_bad_sample_naming_every_folder_looked_in(tmp_path: Path):
    write_visual_genome(tmp_path / "vg", images=3, regions=2)
    (tmp_path / "vg/VG_100K_2/2.jpg").unlink()
    manifest = write_shards(visual_genome_source(tmp_path / "vg"), tmp_path / "out", max_bad=0.5, progress=False)
    assert (manifest["samples"], manifest["bad"]) == (2, 1)
    reason = json.loads((tmp_path / "out/bad_samples.jsonl").read_text())["reason"]
    vg = tmp_path / "vg"
    assert "image 2.jpg" in reason and f"looked in {vg / 'VG_100K'}, {vg / 'VG_100K_2'}" in reason, reason
