"""Arguments shared by the commands, and the checks that refuse a bad one before any work starts."""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from meter.config import Config, load_config
from meter.data.blank_text import is_blank
from meter.errors import ConfigError
from meter.output_folder import WRITE_PROBE

log = logging.getLogger(__name__)

# the config's sections each read by one task alone
TASK_SECTIONS = ("vqa", "nlvr2", "snli_ve", "retrieval", "captioning")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a YAML recipe (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings, e.g. train.max_steps=100")
    parser.add_argument("--resume", metavar="latest|PATH", help="continue from a checkpoint of train.out")


def config_from_args(args: argparse.Namespace, task: str | None = None) -> Config:
    """The run's config; its run folder (train.out) must be a folder this process can write in."""
    cfg = load_config(args.config, args.overrides)
    if task == "pretrain" and cfg.task != task:  # pretraining on captions a recipe or override says is a task's
        raise ConfigError(f"task = {cfg.task!r}: `meter pretrain` pretrains (task=pretrain); fine-tune with "
                          f"`meter finetune --config ...`")  # fmt: skip
    if task is not None and cfg.task != task:
        cfg.task = task
    warn_unread_overrides(cfg, args.overrides)
    check_output_folder(cfg.train.out, "train.out")
    return cfg


def override_keys(overrides: list[str]) -> set[str]:
    """The dotted keys `key=value` overrides set."""
    return {override.split("=", 1)[0].strip() for override in overrides}


def warn_unread_overrides(cfg: Config, overrides: list[str]) -> None:
    """A setting of another task's section given on the command line is never read (`captioning.beam_size=5` in a
    retrieval run): said, not dropped without a word. A recipe may set several tasks' sections (a project's shared
    base), so only what the command line names is warned of."""
    for key in sorted(override_keys(overrides)):
        section = key.split(".", 1)[0]
        if section in TASK_SECTIONS and section != cfg.task:
            log.warning("%s is not applied: it is read by task = %s, and this run's task is %s", key, section,
                        cfg.task)  # fmt: skip


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and --precision of the commands that run a trained model (predict, serve, explain)."""
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, or cuda:N for the GPU numbered N")
    parser.add_argument(
        "--precision", default="auto", choices=("auto", "bf16", "fp32"),
        help="auto (default): bf16 autocast on a GPU, fp32 on the CPU; the heads score in fp32",
    )  # fmt: skip


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `low` (argparse reports any other as a usage error)."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be at least {low}")
        return value

    return integer


def fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise argparse.ArgumentTypeError(f"{text} must be from 0 to 1")
    return value


def finite_number(low: float, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number of at least `low` (`above`: more than it); nan and inf are not sizes or
    waits."""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low or (above and value == low):
            raise argparse.ArgumentTypeError(f"{text} must be a finite number {'above' if above else 'of at least'} "
                                             f"{low:g}")  # fmt: skip
        return value

    return number


def text_option(value: str | None, option: str) -> str | None:
    """A text option as given, refused when empty or not UTF-8: Python hands over the bytes of an argument that does
    not decode as lone surrogates, which no tokenizer takes."""
    if value is None:
        return None
    try:  # first: a lone undecodable byte is a character of category Cs, which is_blank takes for nothing
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raw = value.encode("utf-8", "surrogateescape")
        first = ord(value[error.start]) - 0xDC00  # the byte that does not decode, as surrogateescape keeps it
        raise ConfigError(
            f"{option} {raw!r} is not UTF-8 text (byte {first:#04x}); give it in UTF-8 (check the terminal's encoding)"
        ) from None
    if is_blank(value):
        raise ConfigError(f"{option} is empty; give the text to use")
    return value


def check_output_folder(path: str | Path, option: str) -> None:
    """Refuses an output folder that is a file, or lies below one, or that cannot be written: the nearest folder of
    its path that exists must take a new entry (a probe file, removed at once; under torchrun only the first process
    of each machine probes, so that no other process meets the probe in the run folder). Nothing is created."""
    path = Path(path)
    existing = path
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    if not existing.is_dir():
        what = "a file" if existing.is_file() else "not a folder"
        where = f"is {what}" if existing == path else f"lies below {existing}, which is {what}"
        raise ConfigError(f"{option} = {path} {where}; give a folder to write to")
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=WRITE_PROBE):
            pass
    except OSError as error:
        place = "in it" if existing == path else f"in {existing}, where it would be created"
        raise ConfigError(f"{option} = {path}: cannot write {place} ({error.strerror})") from None
