"""Model parts. Importing this package fills the registries (`meter models` lists them)."""

from meter.models import fusion, text, vision  # noqa: F401  (explicit list: each module registers its parts)
