"""A small named registry: one per extension point (backbones, PEFT methods, heads, readers).

Modelled on timm's ``register_model`` registry and eva's namespaced registry: builders are registered
under a unique key with a decorator, a duplicate key is an error, and users call ``create_*(name)``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from domainfm.shared.errors import DomainfmError

T = TypeVar("T")


class RegistryError(DomainfmError, KeyError):
    """Raised for an unknown or duplicate registry key."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps unique names to entries of one kind.

    Args:
        kind: What the entries are, used in error messages (``"backbone"``, ``"PEFT method"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Registers ``entry`` under ``name``; a name already taken raises :class:`RegistryError`."""
        if name in self._entries:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def decorator(entry: T) -> T:
            return self.add(name, entry)

        return decorator

    def get(self, name: str) -> T:
        """Returns the entry for ``name``; an unknown name raises with the closest known names."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._entries))}"
            ) from None

    def remove(self, name: str) -> None:
        """Removes ``name`` if registered (tests add and remove toy entries)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
