"""`meter prepare shapes --out DIR`: write the shapes world."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_command(subparsers: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = subparsers.add_parser("prepare", help="write a dataset in the layout meter reads")
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    shapes = sources.add_parser(
        "shapes", help="generate the shapes world (captions, VQA, NLVR2, SNLI-VE, Flickr30k split, tokenizers)"
    )
    shapes.add_argument("--out", required=True, help="output folder")
    shapes.add_argument("--images", type=int, default=4000, help="number of images (default 4000)")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--image-size", type=int, default=64)
    shapes.add_argument("--questions-per-image", type=int, default=5)
    return run


def run(args: argparse.Namespace) -> int:
    if args.source == "shapes":
        from meter.data.shapes import WorldSpec, generate, generate_tasks

        spec = WorldSpec(
            images=args.images, seed=args.seed, image_size=args.image_size,
            questions_per_image=args.questions_per_image,
        )  # fmt: skip
        manifest = generate(args.out, spec)
        print(f"shapes world in {args.out}: {manifest['images']} images, {manifest['questions']} questions")
        counts = generate_tasks(args.out, spec)["counts"]
        print("task files: " + ", ".join(f"{name} {n}" for name, n in counts.items()))
    return 0
