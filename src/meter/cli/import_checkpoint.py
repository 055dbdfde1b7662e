"""`meter import meter-official --ckpt FILE --text-encoder DIR --out DIR`: another code base's checkpoint as a
meter model folder."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from meter.cli.common import at_least, check_output_folder

COMMAND = "import"  # `import` is a Python keyword: the module has another name


def add_command(subparsers: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = subparsers.add_parser(COMMAND, help="import a checkpoint of another code base as a model folder")
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    official = sources.add_parser(
        "meter-official", help="a checkpoint of the official METER code (zdou0830/METER, PyTorch Lightning .ckpt)"
    )
    official.add_argument("--ckpt", required=True, help="the official .ckpt file (read with weights_only=True)")
    official.add_argument(
        "--text-encoder", required=True, metavar="DIR",
        help="the Hugging Face folder of its text encoder (roberta-base for the released checkpoints); its"
        " config.json is enough, its tokenizer files are used when present",
    )  # fmt: skip
    official.add_argument("--out", required=True, help="the model folder to write")
    official.add_argument(
        "--vision", metavar="NAME", help="our vision encoder name (default: from the checkpoint: clip-vit, ...)"
    )
    official.add_argument(
        "--image-size", type=at_least(1), help="run at another resolution (position embeddings are resampled)"
    )
    official.add_argument("--tokenizer", metavar="DIR", help="a tokenizer folder, if --text-encoder has none")
    official.add_argument(
        "--vqa-answers",
        metavar="DIR|FILE",
        help="names the VQA classifier rows: the folder of the VQAv2 train2014/val2014 annotations (the official"
        " numbering is rebuilt from them), or an answer-to-label JSON / a list of answers in row order",
    )
    return run


def run(args: argparse.Namespace) -> int:
    from meter.importers.meter_official import import_meter_official
    from meter.models.folder import check_replaceable

    check_output_folder(args.out, "--out")
    check_replaceable(args.out)  # before the import's work: a folder of the user's is refused, never deleted
    report = import_meter_official(
        args.ckpt, args.text_encoder, args.out, vision=args.vision, image_size=args.image_size,
        tokenizer=args.tokenizer, vqa_answers=args.vqa_answers,
    )  # fmt: skip
    for line in report.lines():
        print(line)
    print(f"wrote {report.out} (model card: {report.out / 'README.md'})")
    return 0
