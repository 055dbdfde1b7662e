"""`meter evaluate vqa ...`: score a predictions file like the official tool, or predict with a checkpoint."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def add_command(subparsers: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = subparsers.add_parser("evaluate", help="evaluate predictions or a checkpoint")
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    vqa = tasks.add_parser("vqa", help="VQAv2 accuracy (official algorithm)")
    vqa.add_argument("--annotations", help="VQAv2 annotation JSON (scores --predictions against it)")
    vqa.add_argument("--questions", help="VQAv2 question JSON (checked against the predictions)")
    vqa.add_argument("--predictions", help='[{"question_id": .., "answer": ..}] as the leaderboard takes')
    vqa.add_argument("--checkpoint", help="a model folder: predict the config's vqa.eval_split with it")
    vqa.add_argument("--config", help="YAML recipe for data paths (with --checkpoint)")
    vqa.add_argument("--out", help="where to write predictions (with --checkpoint)")
    vqa.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return run


def run(args: argparse.Namespace) -> int:
    from meter.errors import MeterError

    if args.task == "vqa":
        if args.checkpoint:
            from meter.config import load_config
            from meter.runs import evaluate_vqa_run

            cfg = load_config(args.config, args.overrides)
            out = Path(args.out or Path(args.checkpoint) / "eval")
            print(json.dumps(evaluate_vqa_run(cfg, args.checkpoint, out), indent=1))
            return 0
        if not (args.annotations and args.predictions):
            raise MeterError("evaluate vqa needs --annotations and --predictions, or --checkpoint")
        from meter.metrics.vqa_files import score_files

        print(json.dumps(score_files(args.questions, args.annotations, args.predictions).to_dict(), indent=1))
    return 0
