"""Image-caption readers: COCO captions JSON and Karpathy's split files (dataset_coco.json, dataset_flickr30k.json)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from meter.data.bad_samples import BadSample, warn_skipped
from meter.data.formats.common import RawSample, Unusable, caption_sample, json_field, listed, read_json
from meter.errors import DataError


@dataclass(frozen=True)
class CaptionRecord:
    image: Path
    captions: tuple[str, ...]
    image_id: int
    split: str
    # each caption's index among its image's sentences in the file, where the reader left an empty one out (a
    # retrieval ranking names a caption by it); empty: the captions are the file's, in order
    numbers: tuple[int, ...] = ()
    empty: int = 0  # the image's captions the reader left out as empty (the COCO evaluation scores them as such)
    # each caption as the file writes it, where one differs from its stripped form; empty: the captions are as written
    # (the official retrieval evaluation ranks each distinct written caption: "a dog" and "a dog " are two queries)
    written: tuple[str, ...] = ()

    def number(self, index: int) -> int:
        """The file's index of `captions[index]`."""
        return self.numbers[index] if self.numbers else index


KARPATHY_SPLITS = ("train", "restval", "val", "test")
PRETRAIN_SPLITS = ("train", "restval")  # METER pretrains on these; val and test are the retrieval evaluation
log = logging.getLogger(__name__)


def read_karpathy(
    path: str | Path,
    image_root: str | Path,
    splits: tuple[str, ...] | None = None,
    keep_uncaptioned: bool = False,
    every_image: bool = False,
) -> list[CaptionRecord]:
    """Karpathy's split file: one entry per image with `split` (train/restval/val/test) and its sentences.

    Images are found at `image_root/filepath/filename` (COCO) or `image_root/filename` (Flickr30k has no filepath).
    Every entry is checked (a DataError names the file, the entry and the field); empty captions are skipped and
    counted in one warning (each record counts its own in `empty`), and so are images left without a caption, or
    kept with `keep_uncaptioned` where every caption they have is empty (the COCO evaluation scores them).
    `every_image`: an image left without a caption is kept, without one (`meter prepare` counts it as a bad sample).
    """
    entries = listed(read_json(path, "Karpathy split file"), "images", path, "Karpathy split file")
    image_root = Path(image_root)
    records, skipped = [], []
    first_index: dict[int, int] = {}
    first_file: dict[Path, tuple[int, str]] = {}
    in_file: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{path}: images[{index}]"
        filename = json_field(entry, "filename", str, where)
        where += f" ({filename})"
        split = json_field(entry, "split", str, where)
        in_file.add(split)
        filepath = json_field(entry, "filepath", str, where, optional=True) or ""
        image_id = json_field(entry, "cocoid" if "cocoid" in entry else "imgid", int, where)
        listed_once(image_id, index, first_index, where)
        image = image_root / filepath / filename
        if image in first_file:  # under another id: one split's image would train another split's model
            first, its_split = first_file[image]
            raise DataError(f"{where}: the image of images[{first}] (split {its_split}) is listed again, split {split}")
        first_file[image] = (index, split)
        captions, numbers, empty, written = [], [], [], []
        for number, sentence in enumerate(json_field(entry, "sentences", list, where)):
            raw = json_field(sentence, "raw", str, f"{where}: sentences[{number}]")
            caption = raw.strip()
            if caption:
                captions.append(caption)
                numbers.append(number)
                written.append(raw)
            else:
                empty.append(BadSample(f"{path}#{index}.{number}", f"{where}: sentences[{number}] is empty"))
        if splits is not None and split not in splits:
            continue  # checked all the same: a damaged file is damaged whichever split is read
        skipped += empty
        if captions or (keep_uncaptioned and empty) or every_image:
            numbered = tuple(numbers) if empty else ()
            as_written = tuple(written) if written != captions else ()
            records.append(CaptionRecord(image, tuple(captions), image_id, split, numbered, len(empty), as_written))
        else:
            skipped.append(BadSample(f"{path}#{index}", f"{where}: no caption left; the image is left out"))
    # a misspelt split (`rest` for `restval`) would quietly leave its images out; a split of Karpathy's that a file
    # lacks is fine (Flickr30k's has no restval)
    unknown = [split for split in splits or () if split not in in_file and split not in KARPATHY_SPLITS]
    if unknown:
        raise DataError(f"{path}: no image of the split(s) {', '.join(unknown)}; the file has the splits "
                        f"{', '.join(sorted(in_file))}")  # fmt: skip
    warn_skipped(f"empty captions and images without one in {path}", skipped)
    return records


def read_coco_captions(path: str | Path, image_dir: str | Path, every_image: bool = False) -> list[CaptionRecord]:
    """COCO captions JSON (`captions_train2014.json`): images, and annotations with one caption each. Every record is
    checked (a DataError names the file, the record and the field); empty captions are skipped and counted in one
    warning, and images without a caption left out (kept without one with `every_image`: `meter prepare` counts
    them as bad samples)."""
    data = read_json(path, "COCO captions file")
    images = listed(data, "images", path, "COCO captions file")
    by_image: dict[int, list[str]] = defaultdict(list)
    skipped = []
    for index, annotation in enumerate(listed(data, "annotations", path, "COCO captions file")):
        where = f"{path}: annotations[{index}]"
        image_id = json_field(annotation, "image_id", int, where)
        caption = json_field(annotation, "caption", str, f"{where} (image_id {image_id})").strip()
        if caption:
            by_image[image_id].append(caption)
        else:
            skipped.append(BadSample(f"{path}#{index}", f"{where} (image_id {image_id}): the caption is empty"))
    split = Path(path).stem.removeprefix("captions_")
    records = []
    first_index: dict[int, int] = {}
    first_file: dict[str, int] = {}
    for index, image in enumerate(images):
        image_id = json_field(image, "id", int, f"{path}: images[{index}]")
        file_name = json_field(image, "file_name", str, f"{path}: images[{index}] (id {image_id})")
        listed_once(image_id, index, first_index, f"{path}: images[{index}] ({file_name})")
        if file_name in first_file:  # under another id: one photo trained (and scored) as two
            raise DataError(f"{path}: images[{index}] (id {image_id}): its file {file_name} is the one of "
                            f"images[{first_file[file_name]}], listed again under another id")  # fmt: skip
        first_file[file_name] = index
        if by_image[image_id] or every_image:
            records.append(CaptionRecord(Path(image_dir) / file_name, tuple(by_image[image_id]), image_id, split))
    for image_id in sorted(set(by_image) - set(first_index)):  # captions of an image the file does not list
        skipped += [BadSample(f"{path}#image{image_id}.{n}", f"{path}: a caption of image_id {image_id}, which is not "
                              "among its images") for n in range(len(by_image[image_id]))]  # fmt: skip
    warn_skipped(f"empty captions and captions of unlisted images in {path}", skipped)
    return records


def listed_once(image_id: int, index: int, first_index: dict[int, int], where: str, listing: str = "images") -> None:
    """Refuses an image listed twice: scores, outputs and shard samples are keyed by image id, and would count it
    once."""
    if image_id in first_index:
        raise DataError(f"{where}: image id {image_id} is listed again (first at {listing}[{first_index[image_id]}])")
    first_index[image_id] = index


class CaptionRecordSource:
    """Caption records (COCO, Karpathy, Visual Genome) as a source for `meter prepare`: one sample per image."""

    missing_images_expected = False  # these corpora ship their images: a missing one is bad data

    def __init__(self, name: str, records: list[CaptionRecord], description: dict[str, object],
                 files: tuple[Path, ...]) -> None:  # fmt: skip
        self.name = name
        self.records = records
        self.description = description
        self.files = files  # what lists the records

    def __len__(self) -> int:
        return len(self.records)

    def samples(self, start: int = 0) -> Iterator[RawSample | Unusable]:
        for record in self.records[start:]:
            if not record.captions:  # listed, every caption of it empty or none at all: a bad sample, counted
                yield Unusable(str(record.image), f"{record.image} (image id {record.image_id}): no caption in "
                                                  f"{', '.join(str(file) for file in self.files)}")  # fmt: skip
                continue
            meta = {"image_id": record.image_id, "split": record.split, "file": record.image.name}
            yield caption_sample(f"{record.image_id:012d}", record.image, record.captions, str(record.image), meta)


def coco_source(
    root: str | Path,
    karpathy: str | None = None,
    splits: tuple[str, ...] = PRETRAIN_SPLITS,
    annotations: tuple[str, ...] = ("annotations/captions_train2014.json",),
    images: str = ".",
) -> CaptionRecordSource:
    """COCO as published: with `karpathy` (dataset_coco.json) the images of its `splits` (METER pretrains on train +
    restval, keeping val and test out for retrieval); without, every image of the COCO caption files."""
    root = Path(root)
    image_root = root / images
    # where the images are is a setting of the preparation (a rerun with another folder is refused, not taken for a
    # resume); the default stays unwritten, as preparations before it was recorded have it
    where = {"images": images} if images != "." else {}
    if karpathy:
        records = read_karpathy(root / karpathy, image_root, splits, every_image=True)
        description = {"root": str(root), "karpathy": karpathy, "splits": list(splits), **where}
        return CaptionRecordSource("coco", records, description, (root / karpathy,))
    records: list[CaptionRecord] = []
    repeated_files = sorted({a for a in annotations if annotations.count(a) > 1})
    if repeated_files:
        raise DataError(f"--annotations names {', '.join(repeated_files)} twice; name each caption file once")
    for annotation in annotations:
        split = Path(annotation).stem.removeprefix("captions_")
        read = read_coco_captions(root / annotation, image_root / split, every_image=True)
        repeated = {record.image_id for record in records} & {record.image_id for record in read}
        if repeated:
            raise DataError(f"{root / annotation}: image id {min(repeated)} is listed again (also in "
                            f"{', '.join(a for a in annotations[: annotations.index(annotation)])})")  # fmt: skip
        if "val" in split:
            log.warning("%s: the val2014 images hold Karpathy's val and test images (the retrieval and captioning "
                        "evaluation): pretraining on them inflates those scores; `--karpathy dataset_coco.json` "
                        "keeps them out", root / annotation)  # fmt: skip
        records += read
    if not any("val" in Path(annotation).stem for annotation in annotations):
        log.info(
            "coco: %d images from %s; the paper pretrains on Karpathy's train + restval (113,287 images, "
            "restval's from val2014): `--karpathy dataset_coco.json`",
            len(records),
            ", ".join(annotations),
        )
    files = tuple(root / annotation for annotation in annotations)
    return CaptionRecordSource("coco", records, {"root": str(root), "annotations": list(annotations), **where}, files)
