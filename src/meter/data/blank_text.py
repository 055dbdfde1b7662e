"""Whether a text says anything: a question or a caption of only spaces, zero-width or control characters is empty."""

from __future__ import annotations

import unicodedata


def is_blank(text: str | None) -> bool:
    """True for None, "", and text of only separators (Z*: spaces), controls and format characters (C*: zero-width
    spaces and joiners, BOMs): what a tokenizer turns into no word."""
    return not text or all(unicodedata.category(character)[0] in "ZC" for character in text)
