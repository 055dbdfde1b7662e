"""`meter models`: every vision encoder, text encoder, fusion and architecture, one line each."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_command(subparsers: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    subparsers.add_parser("models", help="list the swappable parts")
    return run


def run(args: argparse.Namespace) -> int:
    from meter.models.catalog import catalog

    for section, entries in catalog().items():
        print(f"{section}:")
        for name, help_text in entries:
            print(f"  {name:<16} {help_text}")
    return 0
