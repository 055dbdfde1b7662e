"""`meter prepare SOURCE`: write the shapes world, or turn a corpus in its published layout into shards.

meter prepare shapes --out DIR
meter prepare coco --root COCO --karpathy dataset_coco.json --out shards/coco
meter prepare vg --root VG --out shards/vg
meter prepare cc --root CC --out shards/cc
meter prepare sbu --root SBU --out shards/sbu
meter prepare webdataset --root CC12M --out shards/cc12m        # img2dataset shards, indexed in place
meter prepare arrow --root ARROWS --files "coco_caption_karpathy_*.arrow" --out shards/coco  # val, test left out
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from meter.cli.common import at_least, check_output_folder, fraction
from meter.errors import ConfigError

if TYPE_CHECKING:
    from meter.data.shard_writer import RawSource


KARPATHY_DEFAULT = "train,restval"  # meter prepare coco --karpathy
ANNOTATIONS_DEFAULT = "annotations/captions_train2014.json"  # without it


def _shard_options(parser: argparse.ArgumentParser, shards: bool = True) -> None:
    parser.add_argument("--root", required=True, help="the corpus folder, in its published layout")
    parser.add_argument("--out", required=True, help="folder for the shards and manifest.json (resumes if present)")
    parser.add_argument("--max-bad", type=fraction, default=0.01,
                        help="fraction of records that may be unusable before it stops (default 0.01)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    if shards:
        parser.add_argument("--shard-size", type=at_least(1), default=1000,
                            help="source records per shard (default 1000)")  # fmt: skip
        parser.add_argument("--decode", action="store_true", help="decode every image to check it (slow)")


def add_command(subparsers: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = subparsers.add_parser("prepare", help="write a dataset in the layout meter reads")
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    shapes = sources.add_parser(
        "shapes", help="generate the shapes world (captions, VQA, NLVR2, SNLI-VE, Flickr30k split, tokenizers)"
    )
    shapes.add_argument("--out", required=True, help="output folder")
    shapes.add_argument("--images", type=int, default=4000, help="number of images (default 4000; at least 8)")
    shapes.add_argument("--seed", type=at_least(0), default=0, help="the world's seed (default 0): its images, texts")
    shapes.add_argument("--image-size", type=at_least(1), default=64, help="pixels a side (default 64)")
    shapes.add_argument("--questions-per-image", type=at_least(0), default=5, help="VQA questions (default 5)")

    coco = sources.add_parser("coco", help="COCO captions (annotation JSON or Karpathy split) + image folders")
    _shard_options(coco)
    coco.add_argument("--karpathy", help="Karpathy split file under --root (dataset_coco.json); takes --splits")
    coco.add_argument("--splits", help=f"with --karpathy: the splits to keep (default {KARPATHY_DEFAULT})")
    coco.add_argument("--annotations", help="without --karpathy: COCO caption files under --root, comma-separated "
                      f"(default {ANNOTATIONS_DEFAULT})")  # fmt: skip
    coco.add_argument("--images", default=".", help="folder under --root holding train2014/, val2014/")

    vg = sources.add_parser("vg", help="Visual Genome: region_descriptions.json + VG_100K/, VG_100K_2/")
    _shard_options(vg)
    vg.add_argument("--regions", default="region_descriptions.json")
    vg.add_argument("--image-dirs", default="VG_100K,VG_100K_2", help="comma-separated folders under --root")

    cc = sources.add_parser("cc", help="Conceptual Captions: caption<TAB>url TSV + images named crc32(url)")
    _shard_options(cc)
    cc.add_argument("--tsv", default="Train_GCC-training.tsv")
    cc.add_argument("--images", default="training")

    sbu = sources.add_parser("sbu", help="SBU: captions and urls files + images named by their URL's file name")
    _shard_options(sbu)
    sbu.add_argument("--captions", default="SBU_captioned_photo_dataset_captions.txt")
    sbu.add_argument("--urls", default="SBU_captioned_photo_dataset_urls.txt")
    sbu.add_argument("--images", default="images")

    wds = sources.add_parser("webdataset", help="img2dataset shards (key.jpg/.txt/.json): indexed in place")
    _shard_options(wds)
    wds.add_argument("--pattern", default="*.tar", help="shards under --root (default *.tar)")
    wds.add_argument("--copy", action="store_true", help="rewrite them into --out instead of indexing in place")

    arrow = sources.add_parser("arrow", help="the .arrow files of the official METER / ViLT code")
    _shard_options(arrow)
    arrow.add_argument("--files", default="*.arrow", help="comma-separated patterns under --root (default *.arrow)")
    arrow.add_argument("--held-out", default="val,test",
                       help="files of these splits are left out (default val,test: evaluation images)")  # fmt: skip
    return run


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _source(args: argparse.Namespace) -> RawSource:
    if args.source == "coco":
        from meter.data.formats.captions import coco_source

        if args.karpathy and args.annotations:  # both were read as given, and the annotations silently ignored
            raise ConfigError("--annotations names COCO's caption files; with --karpathy the split file holds the "
                              "captions: give one of them")  # fmt: skip
        if args.splits and not args.karpathy:
            raise ConfigError("--splits chooses splits of a Karpathy file: give it with --karpathy (COCO's own "
                              "caption files are read whole)")  # fmt: skip
        splits, annotations = args.splits or KARPATHY_DEFAULT, args.annotations or ANNOTATIONS_DEFAULT
        return coco_source(args.root, args.karpathy, _split(splits), _split(annotations), args.images)
    if args.source == "vg":
        from meter.data.formats.visual_genome import visual_genome_source

        return visual_genome_source(args.root, args.regions, _split(args.image_dirs))
    if args.source == "cc":
        from meter.data.formats.conceptual_captions import ConceptualCaptionsSource

        return ConceptualCaptionsSource(args.root, args.tsv, args.images)
    if args.source == "sbu":
        from meter.data.formats.sbu import SbuSource

        return SbuSource(args.root, args.captions, args.urls, args.images)
    if args.source == "webdataset":
        from meter.data.formats.webdataset import WebdatasetSource

        return WebdatasetSource(args.root, args.pattern)
    from meter.data.formats.arrow import ArrowSource

    return ArrowSource(args.root, _split(args.files), _split(args.held_out))


def run(args: argparse.Namespace) -> int:
    check_output_folder(args.out, "--out")
    if args.source == "shapes":
        from meter.data.shapes import WorldSpec, generate, generate_tasks
        from meter.data.shapes.world import check_image_count, writing_world

        spec = WorldSpec(
            images=args.images, seed=args.seed, image_size=args.image_size,
            questions_per_image=args.questions_per_image,
        )  # fmt: skip
        check_image_count(spec)
        with writing_world(args.out):  # both parts: a second preparation cannot come between them
            manifest = generate(args.out, spec)
            print(f"shapes world in {args.out}: {manifest['images']} images, {manifest['questions']} questions")
            counts = generate_tasks(args.out, spec)["counts"]
        print("task files: " + ", ".join(f"{name} {n}" for name, n in counts.items()))
        return 0
    from meter.data.shard_writer import index_shards, write_shards

    progress = not args.no_progress
    if args.source == "webdataset" and not args.copy:
        manifest = index_shards(args.root, args.out, args.pattern, args.max_bad, progress)
    else:
        manifest = write_shards(_source(args), args.out, args.shard_size, args.max_bad, args.decode, progress)
    words = manifest["captions"]["words"]
    if args.source == "webdataset" and not args.copy:  # positions of the shards as they are: bad ones among them
        counts = (f"{manifest['samples']:,} samples indexed in place, {manifest['pairs']:,} image-caption pairs, in "
                  f"{len(manifest['shards'])} shards; {manifest['bad']:,} of the samples bad (no caption or no image; "
                  f"an unreadable image is found when read), skipped in training")  # fmt: skip
    else:
        counts = (f"{manifest['samples']:,} images, {manifest['pairs']:,} image-caption pairs in "
                  f"{len(manifest['shards'])} shards; {manifest['bad']:,} bad, {manifest['not_downloaded']:,} not "
                  f"downloaded")  # fmt: skip
    print(f"{manifest['source']} in {args.out}: {counts}; {words.get('mean', 0)} words a caption on average")
    return 0
