"""Visual Genome as published: `region_descriptions.json` and the images in `VG_100K/` and `VG_100K_2/`.

region_descriptions.json is a list with one entry per image, `{"id": image_id, "regions": [{"phrase": ...,
"image_id", "region_id", "x", "y", "width", "height"}, ...]}`; the image is `VG_100K*/{image_id}.jpg`. As in
ViLT and METER, every region phrase is a caption of the whole image (about 50 per image, 5.4M in all).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from meter.data.formats.captions import CaptionRecord, CaptionRecordSource, listed_once
from meter.data.formats.common import RawSample, Unusable, clean_captions, iter_json_array
from meter.errors import DataError

REGIONS = "region_descriptions.json"
IMAGE_DIRS = ("VG_100K", "VG_100K_2")


def find_vg_image(image_id: int, folders: list[Path]) -> Path:
    """The image's file in the first folder that has it; the first folder's path when none has it."""
    name = f"{image_id}.jpg"
    for folder in folders:
        path = folder / name
        if path.is_file():
            return path
    return folders[0] / name


def read_visual_genome(
    root: str | Path, regions: str = REGIONS, image_dirs: tuple[str, ...] = IMAGE_DIRS
) -> list[CaptionRecord]:
    """One record per image with its region phrases as captions (empty phrases dropped, order kept)."""
    root = Path(root)
    folders = [root / d for d in image_dirs]
    if not any(f.is_dir() for f in folders):
        raise DataError(f"{root}: no Visual Genome image folder ({', '.join(image_dirs)})")
    records = []
    first_index: dict[int, int] = {}
    for index, entry in enumerate(iter_json_array(root / regions, "Visual Genome region descriptions")):
        where = f"{root / regions}: [{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("regions"), list):
            raise DataError(f"{where}: each entry has 'id' and a list 'regions'; found {str(entry)[:80]}")
        regions_of_image = [region for region in entry["regions"] if isinstance(region, dict)]
        image_id = _image_id(entry, regions_of_image, where)
        listed_once(image_id, index, first_index, where, listing="")  # its sample key would be the first one's
        phrases = clean_captions(str(region.get("phrase") or "") for region in regions_of_image)
        records.append(CaptionRecord(find_vg_image(image_id, folders), phrases, image_id, "train"))
    return records


def _image_id(entry: dict, regions: list[dict], where: str) -> int:
    """The entry's `id`; entries without one (some releases) are named by their regions' `image_id`."""
    found = entry["id"] if "id" in entry else regions[0].get("image_id") if regions else None
    if isinstance(found, bool) or not isinstance(found, int):
        raise DataError(f"{where}: no integer image id ('id', or its regions' 'image_id'); found {found!r}")
    return found


class VisualGenomeSource(CaptionRecordSource):
    """Visual Genome's records; an image found in none of the folders is a bad sample that names them all (the
    record's path is only the first folder's)."""

    def __init__(self, records: list[CaptionRecord], description: dict[str, object], files: tuple[Path, ...],
                 folders: list[Path]) -> None:  # fmt: skip
        super().__init__("vg", records, description, files)
        self.folders = folders

    def samples(self, start: int = 0) -> Iterator[RawSample | Unusable]:
        for record, sample in zip(self.records[start:], super().samples(start), strict=True):
            if isinstance(sample, RawSample) and not record.image.is_file():
                looked = ", ".join(str(folder) for folder in self.folders)
                yield Unusable(sample.name, f"image {record.image.name} (image id {record.image_id}) not found in "
                                            f"any image folder: looked in {looked} (--image-dirs names the "
                                            "folders)")  # fmt: skip
            else:
                yield sample


def visual_genome_source(
    root: str | Path, regions: str = REGIONS, image_dirs: tuple[str, ...] = IMAGE_DIRS
) -> CaptionRecordSource:
    records = read_visual_genome(root, regions, image_dirs)
    description = {"root": str(root), "regions": regions, "images": list(image_dirs)}
    return VisualGenomeSource(records, description, (Path(root) / regions,), [Path(root) / d for d in image_dirs])
