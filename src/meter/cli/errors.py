"""How the command line ends on an error: one line for a user's mistake (a MeterError, an OSError on a path), one
line for a bug of ours that says how to see it; the Python traceback only when asked for, with `--debug` anywhere
on the command line or METER_DEBUG=1 in the environment."""

from __future__ import annotations

import os
import sys

from meter.errors import first_line

DEBUG_ENV = "METER_DEBUG"
DEBUG_HELP = f"show the Python traceback of an error (or set {DEBUG_ENV}=1)"


def debug_requested(argv: list[str]) -> tuple[list[str], bool]:
    """`argv` without `--debug` (taken anywhere before a `--`, so that it also follows the subcommand), and whether
    tracebacks are asked for by it or by the environment."""
    cut = argv.index("--") if "--" in argv else len(argv)
    flag = "--debug" in argv[:cut]
    rest = [a for a in argv[:cut] if a != "--debug"] + argv[cut:]
    return rest, flag or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def describe_os_error(error: OSError) -> str:
    """`path: reason`, as a shell says it ("runs/x/model: No space left on device")."""
    if error.filename is None:
        return str(error)
    names = str(error.filename) + (f" -> {error.filename2}" if error.filename2 is not None else "")
    return f"{names}: {error.strerror or error}"


PEER_GONE = ("closed by peer", "reset by peer", "Connection refused", "connectFullMesh")  # gloo's words for it


def from_a_peer(error: Exception) -> bool:
    """A collective of a process group failed because another process of it ended (killed, out of memory, failed):
    not this process's bug."""
    if "torch.distributed" not in sys.modules:  # never imports torch for a command that did not
        return False
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    gone = (dist.DistNetworkError, dist.DistStoreError)  # not every DistBackendError: NCCL misuse is one too
    return isinstance(error, gone) or any(mark in str(error) for mark in PEER_GONE)


def report_unexpected(error: Exception) -> int:
    """Prints one line for an error that is not a MeterError; returns the exit status."""
    if isinstance(error, BrokenPipeError):  # the reader of our output has gone (`meter models | head -1`): say nothing
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit would otherwise fail again
        return 1
    if isinstance(error, OSError):  # a file or folder of the user's: missing, not readable, disk full
        print(f"meter: {describe_os_error(error)}", file=sys.stderr)
        return 2
    if isinstance(error, MemoryError):
        print("meter: out of memory; use a smaller batch (train.batch_size, train.eval_batch_size)", file=sys.stderr)
        return 1
    first = first_line(error)
    if from_a_peer(error):
        print(f"meter: another process of this run stopped or failed ({type(error).__name__}: {first}); its own "
              "messages, or the launcher's, say why. This one stops too; the run resumes from its last checkpoint "
              "(--resume latest)", file=sys.stderr)  # fmt: skip
        return 1
    print(
        f"meter: internal error: {type(error).__name__}{': ' + first if first else ''} (a bug in meter: run the same "
        f"command with --debug, or {DEBUG_ENV}=1, to see where, and please report it)",
        file=sys.stderr,
    )
    return 1
