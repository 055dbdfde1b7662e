"""What a model folder's `meter-model.json` says: the config, the heads and what their rows mean, where the
weights came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meter.config import Config, to_dict
from meter.models.class_rows import current_classes


@dataclass
class ModelFolder:
    config: Config
    heads: dict[str, int]
    answers: list[str] = field(default_factory=list)  # VQA: the answer of each classifier row
    token_types: int = 2
    source: str = ""  # where the weights came from, for the model card
    notes: list[str] = field(default_factory=list)  # what a reader of the card should know (import reports)
    classes: dict[str, list[str]] = field(default_factory=dict)  # the class of each classifier row (default: today's)
    # heads the run that wrote the folder kept frozen (official retrieval's pretrained ITM head), for its resume to
    # freeze them again; None: written by an earlier meter, or not a run's
    frozen: list[str] | None = None

    def __post_init__(self) -> None:
        self.classes = self.classes or current_classes(self.heads)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "meter-model",
            "config": to_dict(self.config),
            "heads": self.heads,
            "answers": self.answers,
            "token_types": self.token_types,
            "source": self.source,
            "notes": self.notes,
            "classes": self.classes,
            **({"frozen": self.frozen} if self.frozen is not None else {}),
        }
