"""The `meter` command. Each subcommand lives in its own module and registers itself in COMMANDS below."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from meter import __version__
from meter.cli.errors import DEBUG_HELP, debug_requested, report_unexpected
from meter.errors import MeterError
from meter.train.stop_signals import PREEMPTED  # no torch: a command that needs none imports none

# module name -> adds its subparser and returns the function that runs it; the command is the module's name,
# or its COMMAND when that differs (`import` is a Python keyword)
COMMAND_MODULES = (
    "prepare",
    "pretrain",
    "finetune",
    "evaluate",
    "predict",
    "explain",
    "serve",
    "demo",
    "study",
    "models",
    "import_checkpoint",
    "plan",
)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    import importlib

    parser = argparse.ArgumentParser(prog="meter", description="Train and evaluate METER vision-and-language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runners = {}
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"meter.cli.{name}")
        runners[getattr(module, "COMMAND", name)] = module.add_command(subparsers)
    return parser, runners


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # data workers fork after tokenizing
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything loads from local paths
    # read by cuBLAS once, at the process's first matrix product on CUDA: set before any, so that a deterministic
    # run after another in one process (a study's cell) is deterministic; the default workspace size on H100/H200
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    parser, runners = build_parser()
    argv, debug = debug_requested(sys.argv[1:] if argv is None else list(argv))
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE settings after an option (`--config X a=1 --resume latest b=2`): argparse takes a positional list
    # only once; the rest are settings too, in the order given
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # under a launcher the first process says what every process would say alike (the data, the groups); the others
    # only warn
    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.basicConfig(level=logging.DEBUG if args.verbose else level, format="%(message)s", stream=sys.stderr)
    for noisy in ("matplotlib", "PIL", "httpx", "urllib3", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        status = runners[args.command](args) or 0
    except MeterError as error:
        if debug:
            raise
        print(f"meter: {error}", file=sys.stderr)
        status = getattr(error, "exit_status", 2)  # a run stopped by a signal has its own (meter.train.stop_signals)
        if status == PREEMPTED:  # its requeue status must hold; the others are waited for where they stop too
            release_process_groups(wait_for_others=not getattr(error, "alone", False))
        return status
    except KeyboardInterrupt:  # Ctrl-C outside training (training says where its last checkpoint is)
        print("meter: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # an OSError on a user's path, or a bug of ours: one line unless --debug
        if debug:
            raise
        return report_unexpected(error)
    release_process_groups()
    return status


def release_process_groups(wait_for_others: bool = True) -> None:
    """Destroys a launcher's process groups once every process has ended its command well, or stopped (PREEMPTED):
    left to the interpreter's exit, gloo's threads now and then abort it (SIGABRT, "terminate called without an
    active exception"). Not on an error: the others may be inside a collective. `wait_for_others` False: this
    process stopped alone, outside training (the others wait for it in a collective; with gloo the group goes at
    once and they stop on the closed connection; NCCL's teardown here is untested)."""
    if "torch.distributed" in sys.modules:  # never imports torch for a command that did not
        from meter.train.runtime import teardown_runtime

        teardown_runtime(wait_for_others)
