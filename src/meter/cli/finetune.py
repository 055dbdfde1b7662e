"""`meter finetune --config X [key=value ...]`: fine-tune on a downstream task, then evaluate."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from meter.cli.common import add_config_arguments, config_from_args
from meter.train.stop_signals import EXIT_STATUSES, ending_with_its_evaluation, stopped_outside_training


def add_command(subparsers: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune on a downstream task (the config's `task`)", epilog=EXIT_STATUSES
    )
    add_config_arguments(parser)
    return run


def run(args: argparse.Namespace) -> int:
    from meter.run_folders import finetune_once
    from meter.runs import evaluate_run, run_finetune
    from meter.train.runtime import is_main_process

    cfg = config_from_args(args)
    # --resume latest (a requeued job): a run whose training finished is evaluated (stopped while it evaluated)
    latest = args.resume == "latest"
    with stopped_outside_training(), ending_with_its_evaluation():
        metrics = finetune_once(cfg, evaluate_run, "latest") if latest else run_finetune(cfg, resume=args.resume)
    if is_main_process():  # under torchrun, the one that evaluated
        print(json.dumps(metrics, indent=1))
        print(f"meter finetune: predictions and scores in {cfg.train.out}", file=sys.stderr)
    return 0
