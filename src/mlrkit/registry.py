"""Named entries of one kind (methods, losses, dataset readers), registered by a decorator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → entry table for one ``kind`` of thing; a name is registered once.

    Example:
        >>> shapes = Registry("shape")
        >>> @shapes.register("square")
        ... def square(side): return side * side
        >>> shapes.get("square")(3), shapes.names()
        (9, ['square'])
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator that registers its target under each of ``names``."""

        def decorate(entry: T) -> T:
            for name in names:
                if name in self._entries:
                    raise ValueError(f"{self.kind} name {name!r} registered twice")
                self._entries[name] = entry
            return entry

        return decorate

    def register_class(self, name: str) -> Callable[[T], T]:
        """Class decorator that registers its class under ``name`` and sets the class's
        ``registered_name`` to it."""

        def decorate(cls: T) -> T:
            cls.registered_name = name
            return self.register(name)(cls)

        return decorate

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name is a ``ValueError`` listing the
        known ones."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._entries[name]
