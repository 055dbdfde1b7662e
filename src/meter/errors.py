"""Errors a user can act on: each says what was wrong and what is allowed."""


class MeterError(Exception):
    """Base of the errors the CLI prints as one line instead of a traceback."""


class ConfigError(MeterError):
    """A config key, value or override is wrong; the message names the key and what is allowed."""

    def __str__(self) -> str:
        return f"config error: {super().__str__()}"


class DataError(MeterError):
    """Input data is missing or unreadable; the message names the path."""

    def __str__(self) -> str:
        return f"data: {super().__str__()}"


def first_line(error: BaseException) -> str:
    """The first line of an error's message ("" when it has none): the reason a one-line message quotes."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
