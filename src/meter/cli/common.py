"""Arguments shared by the training commands."""

from __future__ import annotations

import argparse

from meter.config import Config, load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a YAML recipe (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings, e.g. train.max_steps=100")
    parser.add_argument("--resume", metavar="latest|PATH", help="continue from a checkpoint of train.out")


def config_from_args(args: argparse.Namespace, task: str | None = None) -> Config:
    cfg = load_config(args.config, args.overrides)
    if task is not None and cfg.task != task:
        cfg.task = task
    return cfg
