"""`meter predict --checkpoint C ...`: one prediction from a trained model, printed as JSON.

--image I --question Q     VQA: the best answers with their scores
--image I --text T         the match score of the pair (and SNLI-VE's probabilities if the model has that head)
--images A B --text T      NLVR2: is the sentence true of the pair (left A, right B)
--image I --caption        a caption (encoder-decoder; --beam N)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from meter.cli.common import add_device_arguments, at_least, text_option
from meter.setting_ranges import MAX_BEAM

if TYPE_CHECKING:
    from meter.predictor import Predictor


def add_command(subparsers: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = subparsers.add_parser("predict", help="predict on one input with a trained model")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a model folder, or a run folder (finished: its best/ or model/; else its newest checkpoint)",
    )
    images = parser.add_mutually_exclusive_group(required=True)
    images.add_argument("--image", help="an image file")
    images.add_argument("--images", nargs=2, metavar=("LEFT", "RIGHT"), help="two image files (NLVR2)")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--question", help="a question about --image (VQA)")
    query.add_argument("--text", help="a sentence to match with --image, or to judge against --images")
    query.add_argument("--caption", action="store_true", help="write a caption of --image (encoder-decoder)")
    parser.add_argument("--top", type=at_least(1), help="answers to list for --question (default 5)")
    parser.add_argument(
        "--beam",
        type=at_least(1),
        help=f"beam size for --caption, 1 (greedy) to {MAX_BEAM} (default: the one the model was evaluated with)",
    )
    add_device_arguments(parser)
    return run


def run(args: argparse.Namespace) -> int:
    from meter.errors import ConfigError
    from meter.predictor import Predictor

    if args.images and args.text is None:
        raise ConfigError("--images A B goes with --text (NLVR2); --question and --caption take one --image")
    for option in ("question", "text"):
        text_option(getattr(args, option), f"--{option}")
    if args.top is not None and args.question is None:  # given and ignored, the user would think it applied
        raise ConfigError("--top lists VQA answers; it goes with --question")
    if args.beam is not None and not args.caption:
        raise ConfigError("--beam is the beam size of --caption; it goes with --caption")
    predictor = Predictor(args.checkpoint, args.device, precision=args.precision)
    for option in ("question", "text"):
        if getattr(args, option):
            note_length(predictor, getattr(args, option), f"--{option}")
    if args.images:
        result = predictor.judge_pair(args.images[0], args.images[1], args.text)
    elif args.question is not None:
        result = {"answers": predictor.answer(args.image, args.question, args.top or 5)}
    elif args.caption:
        result = {"caption": predictor.caption(args.image, args.beam)}  # None: the beam its evaluation used
    else:
        result = predictor.match(args.image, args.text)
    print(json.dumps(result, indent=1))
    return 0


def note_length(predictor: Predictor, text: str, option: str) -> None:
    """Says on stderr when `text` is longer than the model reads (cut to its max_length), as serve's notes say."""
    note = predictor.length_note(text, option)
    if note:
        print(f"meter: note: {note}", file=sys.stderr)
