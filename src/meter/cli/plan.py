"""`meter plan --config X [key=value ...] [--processes N] [--json]`: what the run will do, without running it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable


def add_command(subparsers: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = subparsers.add_parser(
        "plan", help="show what a recipe will do (parameters, groups, schedule, paths, memory) without training"
    )
    parser.add_argument("--config", help="a YAML recipe (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings, e.g. train.max_steps=100")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="processes of the run (torchrun's nproc_per_node x nodes); default 1",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    return run


def run(args: argparse.Namespace) -> int:
    from meter.cli.common import warn_unread_overrides
    from meter.config import load_config
    from meter.plan import make_plan, render

    cfg = load_config(args.config, args.overrides)
    warn_unread_overrides(cfg, args.overrides)
    plan = make_plan(cfg, processes=args.processes)
    print(json.dumps(plan.to_json(), indent=1) if args.json else render(plan), end="" if not args.json else "\n")
    return 0
