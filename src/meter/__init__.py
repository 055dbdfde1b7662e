"""meter: train end-to-end vision-and-language transformers the way the METER study does."""

__version__ = "0.1.0"
