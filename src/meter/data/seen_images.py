"""The COCO images a pretraining sees: its corpus's COCO part and Visual Genome's images that are COCO's.

VQAv2 asks its questions on COCO images, and the 4M corpus holds most of val2014: Karpathy's restval (in the COCO
part) and those of the rest that Visual Genome took from COCO (51K of its 108K images). A VQA score read on
those images measures, in part, what pretraining saw. These are the ids to leave out of such an evaluation, read
from what each source of `data.sources` was prepared from (its manifest's description), or from the Karpathy
splits a pretraining without sources reads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from meter.config import Config
from meter.data.formats.arrow import image_ids
from meter.data.formats.captions import PRETRAIN_SPLITS, read_coco_captions, read_karpathy
from meter.data.formats.common import iter_json_array, json_field
from meter.data.shard_manifest import read_manifest
from meter.errors import DataError

VG_IMAGE_DATA = "image_data.json"  # Visual Genome's image metadata: {"image_id", "coco_id", ...} per image
COCO_FILE = re.compile(r"COCO_(?:train|val)2014_(\d+)\.jpg")  # a COCO image's file name, its id in the digits
NO_COCO_IMAGES = ("sbu", "cc")  # web images (SBU from Flickr, Conceptual Captions from the web): none is COCO's
ARROW_WITHOUT_COCO = ("conceptual_caption", "sbu", "f30k")  # arrow files of the web's images and Flickr30k's


def coco_images_seen(cfg: Config) -> set[int]:
    """The COCO image ids of the pretraining that `cfg` describes."""
    root = Path(cfg.data.root)
    if not cfg.data.sources:
        return {r.image_id for r in read_karpathy(root / cfg.data.karpathy, root / cfg.data.images, PRETRAIN_SPLITS)}
    seen: set[int] = set()
    for source in cfg.data.sources:
        manifest = read_manifest(root / source.path)
        seen |= _source_images(manifest.source, manifest.data.get("description") or {}, manifest.folder)
    return seen


def _source_images(source: str, description: dict[str, Any], folder: Path) -> set[int]:
    if source in NO_COCO_IMAGES:
        return set()
    root = Path(str(description.get("root", "")))
    if source == "coco" and "karpathy" in description:
        splits = tuple(description.get("splits") or PRETRAIN_SPLITS)
        return {record.image_id for record in read_karpathy(root / str(description["karpathy"]), root, splits)}
    if source == "coco" and "annotations" in description:
        return {record.image_id for annotation in description["annotations"]
                for record in read_coco_captions(root / annotation, root)}  # fmt: skip
    if source == "vg":  # beside region_descriptions.json, wherever --regions put it under the root
        beside = root / Path(str(description.get("regions") or VG_IMAGE_DATA)).parent / VG_IMAGE_DATA
        return vg_coco_images(beside if beside.is_file() else root / VG_IMAGE_DATA)
    if source == "arrow":
        return arrow_coco_images(root, [str(name) for name in description.get("files") or []])
    raise DataError(
        f"{folder}: shards of the {source!r} source; which of their images are COCO's (and so which VQA questions "
        "its pretraining saw) is known for the coco, vg, sbu, cc and arrow sources alone: pretrain on those, or "
        "report VQA on the whole evaluation split"
    )


def arrow_coco_images(root: Path, files: list[str]) -> set[int]:
    """The COCO images of METER/ViLT arrow files, known by the file names their writers give: the rows of
    `coco_caption*` files (each image_id a COCO file name), Visual Genome's COCO images for `vg*` files (from its
    image_data.json put beside the files), none of the web's (`conceptual_caption*`, `sbu*`) or Flickr30k's."""
    seen: set[int] = set()
    for name in files:
        if name.startswith("coco_caption"):
            seen |= _coco_file_ids(root / name)
        elif name.startswith("vg"):
            seen |= vg_coco_images(root / VG_IMAGE_DATA)
        elif not name.startswith(ARROW_WITHOUT_COCO):
            raise DataError(
                f"{root / name}: which of its images are COCO's is known for the files of METER's "
                f"writers alone (coco_caption*, vg*, {', '.join(p + '*' for p in ARROW_WITHOUT_COCO)})"
            )
    return seen


def _coco_file_ids(path: Path) -> set[int]:
    ids = set()
    for row, image_id in enumerate(image_ids(path)):
        match = COCO_FILE.fullmatch(image_id)
        if match is None:
            raise DataError(f"{path}: row {row}'s image_id {image_id!r} is not a COCO file name "
                            "(COCO_train2014_000000000009.jpg): which image it is is not known")  # fmt: skip
        ids.add(int(match.group(1)))
    return ids


def vg_coco_images(path: Path) -> set[int]:
    """The COCO ids of the Visual Genome images that are COCO's (`coco_id`, null for the others)."""
    if not path.is_file():
        raise DataError(f"{path} not found: Visual Genome's image metadata (image_data.json, published beside "
                        "region_descriptions.json) tells which of its images are COCO's")  # fmt: skip
    seen = set()
    for index, entry in enumerate(iter_json_array(path, "Visual Genome image metadata")):
        coco_id = json_field(entry, "coco_id", int, f"{path}: [{index}]", optional=True)
        if coco_id is not None:
            seen.add(coco_id)
    return seen
