"""Name -> class registries filled by decorators where each class is defined (the timm pattern)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named registry. ``@registry.register("name")`` adds a class; ``registry.get(name)`` finds it.

    Unknown names raise a ``KeyError`` whose message lists the allowed names.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator that registers the class under ``name`` (lower case)."""

        def deco(cls: type[T]) -> type[T]:
            key = name.lower()
            if key in self._items and self._items[key] is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[key] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        """Sorted list of registered names."""
        return sorted(self._items)

    def get(self, name: str) -> type[T]:
        """The class registered under ``name``; ``KeyError`` naming the allowed ones otherwise."""
        key = str(name).lower()
        if key not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}")
        return self._items[key]

    def build(self, name: str, *args: Any, **kwargs: Any) -> T:
        """Instantiate the class registered under ``name``."""
        return self.get(name)(*args, **kwargs)

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._items
