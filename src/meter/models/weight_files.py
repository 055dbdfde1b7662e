"""What a weight file someone else wrote is, when meter refuses it: the reason torch's weights-only unpickler gave,
and TorchScript archives (OpenAI's CLIP `ViT-B-16.pt` is one), which hold code that loading would run.

Shared by the readers of pretrained weights (models/) and of official checkpoints (importers/, which imports this,
never the other way round).
"""

from __future__ import annotations

import zipfile
from pathlib import Path


def unpickler_reason(error: Exception) -> str:
    """The unpickler's own complaint, without torch's advice to turn weights_only off."""
    text = str(error)
    for advice_ends in ("WeightsUnpickler error:", "from a trusted source."):
        text = text.split(advice_ends, 1)[-1]
    text = text.split("Check the documentation", 1)[0]
    return " ".join(text.split()) or type(error).__name__


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether the file is a TorchScript archive (torch.jit.save): a zip whose record holds `constants.pkl` or a
    `code/` folder beside the weights; a state dict saved with torch.save has neither."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):  # not a zip: safetensors, the legacy pickle format, a damaged file
        return False
    # every member sits in one top folder named after the archive (`ViT-B-16/constants.pkl`)
    members = [name.split("/", 1)[-1] for name in names]
    return any(member == "constants.pkl" or member.startswith("code/") for member in members)


def torchscript_refused(path: str | Path) -> str:
    """Why a TorchScript archive is refused, and the command that turns it into a state dict meter reads."""
    return (
        f"{path}: a TorchScript archive (a compiled model, such as OpenAI's CLIP ViT-B-16.pt), not a state dict:"
        " loading it would run the code it holds, and meter only reads weights. Convert it once, in a Python you"
        " trust with the file: python -c \"import torch; torch.save(torch.jit.load('"
        f"{path}', map_location='cpu').state_dict(), 'state_dict.pt')\" (or write that state dict with"
        " safetensors.torch.save_file), then give state_dict.pt instead"
    )
