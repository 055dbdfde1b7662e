"""Imports every downstream task module, so each registers itself in DOWNSTREAM (an explicit list, no scanning)."""

from meter.tasks import captioning, nlvr2, retrieval, snli_ve, vqa  # noqa: F401
from meter.tasks.downstream import DOWNSTREAM

__all__ = ["DOWNSTREAM"]
