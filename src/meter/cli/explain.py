"""`meter explain --checkpoint C --image I --question Q --out map.png`: where the answer came from, as a heat map over
the image (the same map `meter serve`'s page shows); prints the answers and the map as JSON.

--question Q       explain a VQA answer (the best one, or --answer A)
--text T           explain a match score (rank or ITM head) or an SNLI-VE judgement (--task snli_ve)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from meter.cli.common import add_device_arguments, at_least, check_output_folder, text_option

TOP = 5  # answers listed by default


def add_command(subparsers: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = subparsers.add_parser("explain", help="write a heat map of where a model's answer came from")
    parser.add_argument("--checkpoint", required=True, help="a model folder, or a run folder (a finished run's best/ "
                        "or model/, else its newest checkpoint)")  # fmt: skip
    parser.add_argument("--image", required=True, help="an image file")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--question", help="a question about --image (VQA)")
    query.add_argument("--text", help="a caption or hypothesis about --image (match, snli_ve)")
    parser.add_argument("--out", required=True, help="the image to write (.png, .jpg, .webp, .tif): the heat map")
    parser.add_argument("--method", help="gradcam or attention (default: gradcam; see the README)")
    parser.add_argument("--layer", default="mean", help="mean (default), or a fusion layer counted from 1")
    parser.add_argument("--task", help="what --text asks: match or snli_ve (default: the first the model has)")
    parser.add_argument("--answer", help="the VQA answer to explain (default: the model's best)")
    parser.add_argument("--top", type=at_least(1), help=f"answers to list for --question (default {TOP})")
    parser.add_argument("--size", type=int, default=384, help="side of the written image in pixels (default 384)")
    add_device_arguments(parser)
    return run


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from meter.cli.predict import note_length
    from meter.data.images import load_image
    from meter.errors import ConfigError
    from meter.explain import DEFAULT_METHOD, check_method, explain_batch, explainable_tasks, overlay
    from meter.heat_map_file import MAX_SIDE, check_heat_map_path, save_heat_map
    from meter.predictor import Predictor

    option = "--question" if args.question is not None else "--text"
    text = text_option(args.question if args.question is not None else args.text, option)  # as `meter predict`
    answer = text_option(args.answer, "--answer")
    answer = answer and answer.strip()  # as serve takes it: " red" is the answer red
    method = check_method(args.method or DEFAULT_METHOD)
    if args.question is not None and args.task not in (None, "vqa"):
        raise ConfigError(f"--question goes with --task vqa, not {args.task}; use --text for {args.task}")
    if args.task not in (None, "match", "snli_ve") and args.question is None:
        raise ConfigError(f"--task {args.task!r}: choose match or snli_ve for --text (or use --question for vqa)")
    if args.layer != "mean" and not (args.layer.isdecimal() and int(args.layer) >= 1):
        raise ConfigError(f"--layer {args.layer!r}: choose mean or a fusion layer counted from 1")
    if args.answer is not None and args.question is None:
        raise ConfigError("--answer picks a VQA answer; it goes with --question")
    if args.top is not None and args.question is None:
        raise ConfigError("--top lists VQA answers; it goes with --question")
    if not 16 <= args.size <= MAX_SIDE:
        raise ConfigError(f"--size {args.size} must be from 16 to {MAX_SIDE} pixels")
    out = Path(args.out)
    check_output_folder(out.parent, "the folder of --out")
    image_format = check_heat_map_path(out, Path(args.image))
    predictor = Predictor(args.checkpoint, args.device, precision=args.precision)
    note_length(predictor, text, option)
    task = "vqa" if args.question is not None else args.task
    if task is None:  # --text: what the model can say about a text
        task = next((t for t in explainable_tasks(predictor) if t != "vqa"), None)
        if task is None:
            raise ConfigError(
                f"{predictor.checkpoint}: --text needs a rank, itm or snli_ve head to explain; this model has:"
                f" {', '.join(predictor.heads) or 'no heads'} (use --question for a vqa head)"
            )
    # decoded as `meter predict` and serve decode it (a large JPEG at a reduced scale, the model's pixel limit):
    # the same pixels, the same scores
    reader = predictor.images
    image = load_image(args.image, at_least=reader.image_size, max_pixels=reader.max_pixels, upright=True)
    heat = explain_batch(predictor, [image], [text.strip()], task, method, [answer], args.top or TOP)[0]
    grid = heat.select(args.layer, "--layer")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_heat_map(overlay(image, grid, args.size), out, image_format)
    result = {**heat.prediction, "method": heat.method, "layer": args.layer, "grid": "GRID", "out": str(out)}
    rows = ",\n  ".join(json.dumps([round(v, 4) for v in row]) for row in grid.tolist())
    print(json.dumps(result, indent=1).replace('"GRID"', f"[\n  {rows}\n ]"))  # one line per row of patches
    return 0
