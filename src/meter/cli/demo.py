"""`meter demo --out DIR`: the shapes world end to end."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from meter.cli.common import at_least, check_output_folder


def add_command(subparsers: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = subparsers.add_parser("demo", help="prepare, pretrain, fine-tune and evaluate on the shapes world")
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--tasks", default="vqa", choices=["vqa", "all"],
                        help="vqa, or all (adds nlvr2, snli_ve, retrieval, captioning)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a smoke-test budget (seconds, learns nothing)")
    parser.add_argument("--seed", type=at_least(0), default=0,
                        help="seed of the shapes world and of every run (default 0)")  # fmt: skip
    return run


def run(args: argparse.Namespace) -> int:
    from meter.demo import DemoPlan, run_demo

    check_output_folder(args.out, "--out")
    plan = DemoPlan.quick() if args.quick else DemoPlan()
    run_demo(args.out, DemoPlan(**{**plan.__dict__, "seed": args.seed}), tasks=args.tasks)
    print(f"report: {args.out}/report.json")
    return 0
