"""One name-to-entry registry for methods, datasets and detectors.

Each is extended the same way (a decorator registers an entry under a unique name) and asked
the same way (an unknown name is an error listing the choices). Built-in entries that live in
modules of their own are imported on first use (``builtins``), so importing a package stays
cheap and a user's ``@register_...`` works the same as the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from dva.errors import DvaError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one ``kind`` by name, in registration order."""

    def __init__(self, kind: str, error: type[DvaError], builtins: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self.error = error
        self._builtins = builtins
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> None:
        """Register ``entry``; a second entry under one name is a programming error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        """The entry of ``name``; an unknown name raises ``error`` naming the choices."""
        self._load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise self.error(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        self._load_builtins()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _load_builtins(self) -> None:
        if self._builtins is not None:
            load, self._builtins = self._builtins, None  # once, and not again while it runs
            load()
