"""The shapes world: meter's embedded, seeded dataset of coloured shapes in every real format."""

from meter.data.shapes.world import WorldSpec, generate, is_generated

__all__ = ["WorldSpec", "generate", "is_generated"]
