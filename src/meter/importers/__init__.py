"""Importers: checkpoints of other code bases as meter model folders (`meter import SOURCE ...`)."""
