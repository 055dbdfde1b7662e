"""Reading a PyTorch Lightning checkpoint from someone else without running their code.

`torch.load(weights_only=True)` rebuilds tensors, dicts, lists, numbers and strings only. Lightning checkpoints of
the METER era also name a few harmless classes: callback states are keyed by the callback's class, and hyper-
parameters may be an `AttributeDict` (a dict) or a sacred read-only dict/list. Those names, and only those, are
mapped to inert stand-ins (a placeholder class that is never called, a plain dict or list subclass); any other
Python object in the file is refused before a byte of it is unpickled.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from meter.errors import DataError
from meter.models.weight_files import is_torchscript_archive, torchscript_refused, unpickler_reason


class LightningClassName:
    """Stands in for a class a checkpoint names only as a dictionary key (Lightning's callback states)."""


class PlainDict:
    """Stands in for dict subclasses that carry hyper-parameters (AttributeDict, sacred's ReadOnlyDict): building
    one gives a plain dict, the only mapping the weights-only unpickler fills."""

    def __new__(cls, *args: Any) -> dict:  # type: ignore[misc]
        return dict(*args)


class PlainList:
    """Stands in for sacred's ReadOnlyList: building one gives a plain list."""

    def __new__(cls, *args: Any) -> list:  # type: ignore[misc]
        return list(*args)


CLASS_KEY_MODULES = ("pytorch_lightning.callbacks.", "lightning.pytorch.callbacks.")
CONTAINERS = {
    "pytorch_lightning.utilities.parsing.AttributeDict": PlainDict,
    "lightning.fabric.utilities.data.AttributeDict": PlainDict,
    "sacred.config.custom_containers.ReadOnlyDict": PlainDict,
    "sacred.config.custom_containers.ReadOnlyList": PlainList,
}


def stand_in(name: str) -> type | None:
    """The inert replacement of a global a checkpoint names, or None when it must be refused."""
    if name in CONTAINERS:
        return CONTAINERS[name]
    if name.startswith(CLASS_KEY_MODULES):
        return LightningClassName
    return None


def _unsafe_globals(path: Path) -> list[str] | None:
    """The globals a zip-format checkpoint names beyond torch's allowlist; None for the legacy format."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except ValueError:  # the legacy (pre-zip) format cannot be scanned; the weights-only unpickler still guards it
        return None
    except (RuntimeError, OSError, EOFError) as error:  # a zip archive cut short: released files are gigabytes
        raise DataError(
            f"{path}: not a complete PyTorch checkpoint ({unpickler_reason(error).split('. ')[0]}): a truncated or"
            " damaged file, e.g. an interrupted download; download it again"
        ) from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's top-level dictionary, loaded with `weights_only=True` on the CPU."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder: name the checkpoint file in it (e.g. its .ckpt)")
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    if is_torchscript_archive(path):  # torch.load would hand it to torch.jit.load, which weights_only refuses
        raise DataError(torchscript_refused(path))
    scanned = _unsafe_globals(path)
    names = scanned or []
    refused = sorted(name for name in names if stand_in(name) is None)
    if refused:
        raise DataError(
            f"{path}: refusing to load: the file pickles Python objects that are not plain data "
            f"({', '.join(refused)}); meter only reads tensors, dicts, lists, numbers and strings "
            "(torch.load with weights_only=True)"
        )
    try:
        with torch.serialization.safe_globals([(stand_in(name), name) for name in names]):
            # memory-mapped when possible: a file with optimizer states is several times the size of the weights
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=scanned is not None)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise DataError(f"{path}: not a PyTorch checkpoint meter can read safely ({unpickler_reason(error)})") from None
    # a damaged or odd file trips torch's reader itself: a text file (KeyError), a byte flipped in a legacy file
    # (IndexError, UnicodeDecodeError, a failed assert), an archive's entry that is not UTF-8 (UnicodeDecodeError)
    except (KeyError, IndexError, ValueError, TypeError, AssertionError) as error:
        raise DataError(
            f"{path}: not a PyTorch checkpoint, or a damaged one ({type(error).__name__}: {unpickler_reason(error)}); "
            "check that it is the checkpoint file, or download it again"
        ) from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dictionary at the top level, found {type(data).__name__}")
    return data


def state_dict_of(checkpoint: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a Lightning checkpoint (`state_dict`), or the file itself when it is a bare state dict."""
    weights = checkpoint.get("state_dict", checkpoint)
    if not isinstance(weights, dict):
        raise DataError(f"{path}: its `state_dict` is a {type(weights).__name__}, expected a dictionary of tensors")
    tensors = {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise DataError(f"{path}: no weights found (expected a `state_dict` of tensors)")
    return tensors
