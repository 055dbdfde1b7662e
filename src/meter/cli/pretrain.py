"""`meter pretrain --config X [key=value ...] [--resume latest]`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from meter.cli.common import add_config_arguments, config_from_args
from meter.train.stop_signals import EXIT_STATUSES, stopped_outside_training


def add_command(subparsers: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = subparsers.add_parser("pretrain", help="pretrain a model (MLM, ITM, ...)", epilog=EXIT_STATUSES)
    add_config_arguments(parser)
    return run


def run(args: argparse.Namespace) -> int:
    from meter.runs import run_pretrain

    with stopped_outside_training():
        checkpoint = run_pretrain(config_from_args(args, task="pretrain"), resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once
        print(f"final checkpoint: {checkpoint}")
    return 0
