"""Named registries of swappable parts (vision encoders, text encoders, fusions, ...)."""

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from meter.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    target: T
    help: str


class Registry(Generic[T]):
    """A dict of named builders with `register`, `get`, `build` and `names`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        def add(target: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, target, help or (getattr(target, "__doc__", "") or "").strip())
            return target

        return add

    def add(self, name: str, target: T, help: str = "") -> None:
        self.register(name, help)(target)

    def get(self, name: str, key: str | None = None) -> T:
        if name not in self._entries:
            where = f"{key} = {name!r}" if key else repr(name)
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where} is not a {self.kind}{hint}; choose one of: {', '.join(self.names())}")
        return self._entries[name].target

    def build(self, name: str, *args: Any, key: str | None = None, **kwargs: Any) -> Any:
        return self.get(name, key)(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self) -> list[Entry[T]]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries
