"""Image-caption readers: COCO captions JSON and Karpathy's split files (dataset_coco.json, dataset_flickr30k.json)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from meter.data.formats.common import RawSample, Unusable, caption_sample, read_json
from meter.errors import DataError


@dataclass(frozen=True)
class CaptionRecord:
    image: Path
    captions: tuple[str, ...]
    image_id: int
    split: str


def read_karpathy(
    path: str | Path, image_root: str | Path, splits: tuple[str, ...] | None = None
) -> list[CaptionRecord]:
    """Karpathy's split file: one entry per image with `split` (train/restval/val/test) and its sentences.

    Images are found at `image_root/filepath/filename` (COCO) or `image_root/filename` (Flickr30k has no filepath).
    """
    data = read_json(path, "Karpathy split file")
    if "images" not in data:
        raise DataError(f"{path}: a Karpathy split file has an 'images' list")
    image_root = Path(image_root)
    records = []
    for entry in data["images"]:
        if splits is not None and entry["split"] not in splits:
            continue
        folder = image_root / entry["filepath"] if entry.get("filepath") else image_root
        image_id = entry.get("cocoid", entry.get("imgid"))
        captions = tuple(s["raw"].strip() for s in entry["sentences"])
        records.append(CaptionRecord(folder / entry["filename"], captions, int(image_id), entry["split"]))
    return records


def read_coco_captions(path: str | Path, image_dir: str | Path) -> list[CaptionRecord]:
    """COCO captions JSON (`captions_train2014.json`): images, and annotations with one caption each."""
    data = read_json(path, "COCO captions file")
    if "images" not in data or "annotations" not in data:
        raise DataError(f"{path}: a COCO captions file has 'images' and 'annotations'")
    by_image: dict[int, list[str]] = defaultdict(list)
    for annotation in data["annotations"]:
        by_image[annotation["image_id"]].append(annotation["caption"].strip())
    split = Path(path).stem.removeprefix("captions_")
    return [
        CaptionRecord(Path(image_dir) / image["file_name"], tuple(by_image[image["id"]]), int(image["id"]), split)
        for image in data["images"]
        if by_image[image["id"]]
    ]


class CaptionRecordSource:
    """Caption records (COCO, Karpathy, Visual Genome) as a source for `meter prepare`: one sample per image."""

    missing_images_expected = False  # these corpora ship their images: a missing one is bad data

    def __init__(self, name: str, records: list[CaptionRecord], description: dict[str, object]) -> None:
        self.name = name
        self.records = records
        self.description = description

    def __len__(self) -> int:
        return len(self.records)

    def samples(self, start: int = 0) -> Iterator[RawSample | Unusable]:
        for record in self.records[start:]:
            meta = {"image_id": record.image_id, "split": record.split, "file": record.image.name}
            yield caption_sample(f"{record.image_id:012d}", record.image, record.captions, str(record.image), meta)


def coco_source(
    root: str | Path,
    karpathy: str | None = None,
    splits: tuple[str, ...] = ("train", "restval"),
    annotations: tuple[str, ...] = ("annotations/captions_train2014.json",),
    images: str = ".",
) -> CaptionRecordSource:
    """COCO as published: with `karpathy` (dataset_coco.json) the images of its `splits` (METER pretrains on train +
    restval, keeping val and test out for retrieval); without, every image of the COCO caption files."""
    root = Path(root)
    image_root = root / images
    if karpathy:
        records = read_karpathy(root / karpathy, image_root, splits)
        return CaptionRecordSource("coco", records, {"root": str(root), "karpathy": karpathy, "splits": list(splits)})
    records = []
    for annotation in annotations:
        split = Path(annotation).stem.removeprefix("captions_")
        records += read_coco_captions(root / annotation, image_root / split)
    return CaptionRecordSource("coco", records, {"root": str(root), "annotations": list(annotations)})
