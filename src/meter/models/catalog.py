"""What `meter models` lists: the registries, read, never duplicated."""

from __future__ import annotations

from meter.models.fusion import FUSIONS
from meter.models.meter import ARCHITECTURES
from meter.models.text import TEXT
from meter.models.vision import VISION


def catalog() -> dict[str, list[tuple[str, str]]]:
    return {
        "vision encoders (model.vision)": [(e.name, e.help) for e in VISION.entries()]
        + [("timm:<name>", "any other timm model that yields tokens or a feature grid")],
        "text encoders (model.text)": [(e.name, e.help) for e in TEXT.entries()],
        "fusion (model.fusion)": [(e.name, e.help) for e in FUSIONS.entries()],
        "architectures (model.architecture)": list(ARCHITECTURES.items()),
    }
