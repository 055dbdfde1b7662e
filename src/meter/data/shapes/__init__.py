"""The shapes world: meter's embedded, seeded dataset of coloured shapes in every real format."""

from meter.data.shapes.tasks import generate_tasks, tasks_generated
from meter.data.shapes.world import WorldSpec, generate, is_generated

__all__ = ["WorldSpec", "generate", "generate_tasks", "is_generated", "tasks_generated"]
