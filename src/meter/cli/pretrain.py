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
    from meter.run_folders import finished_checkpoint
    from meter.runs import run_pretrain

    cfg = config_from_args(args, task="pretrain")
    # --resume latest (a requeued job) of a run that finished (killed in the second between its record and its exit)
    finished = finished_checkpoint(cfg) if args.resume == "latest" else None
    with stopped_outside_training():
        checkpoint = finished or run_pretrain(cfg, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once
        step, last = int(checkpoint.name.removeprefix("step_")), cfg.train.max_steps
        print(
            f"final checkpoint: {checkpoint}"
            if step >= last
            else f"stopped at step {step} of {last} (train.stop_at): {checkpoint}; continue with --resume latest"
        )
    return 0
