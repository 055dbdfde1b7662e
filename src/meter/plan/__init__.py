"""`meter plan`: what a recipe will do before it runs (config, parameters, heads, optimizer groups, schedule, batch,
paths, memory), worked out on the meta device without training, data or weight files."""

from meter.plan.make import Plan, make_plan
from meter.plan.report import render

__all__ = ["Plan", "make_plan", "render"]
