"""Visual Genome as published: `region_descriptions.json` and the images in `VG_100K/` and `VG_100K_2/`.

region_descriptions.json is a list with one entry per image, `{"id": image_id, "regions": [{"phrase": ...,
"image_id", "region_id", "x", "y", "width", "height"}, ...]}`; the image is `VG_100K*/{image_id}.jpg`. As in
ViLT and METER, every region phrase is a caption of the whole image (about 50 per image, 5.4M in all).
"""

from __future__ import annotations

from pathlib import Path

from meter.data.formats.captions import CaptionRecord, CaptionRecordSource
from meter.data.formats.common import clean_captions, iter_json_array
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
    for entry in iter_json_array(root / regions, "Visual Genome region descriptions"):
        if not isinstance(entry, dict) or "regions" not in entry:
            raise DataError(f"{root / regions}: each entry has 'id' and 'regions'; found {str(entry)[:80]}")
        regions_of_image = entry["regions"]
        image_id = int(entry.get("id", regions_of_image[0]["image_id"] if regions_of_image else -1))
        phrases = clean_captions(region.get("phrase", "") for region in regions_of_image)
        records.append(CaptionRecord(find_vg_image(image_id, folders), phrases, image_id, "train"))
    return records


def visual_genome_source(
    root: str | Path, regions: str = REGIONS, image_dirs: tuple[str, ...] = IMAGE_DIRS
) -> CaptionRecordSource:
    records = read_visual_genome(root, regions, image_dirs)
    return CaptionRecordSource("vg", records, {"root": str(root), "regions": regions, "images": list(image_dirs)})
