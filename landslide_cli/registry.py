"""A small registry of named builders (the pattern timm and torchgeo use)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from landslide_cli.errors import LandslideError

T = TypeVar("T", bound=Callable[..., Any])


def canonical(name: str) -> str:
    """Normalise a user-typed name: case-insensitive, '-' and '_' equivalent."""
    return name.strip().lower().replace("-", "_")


@dataclass
class Entry(Generic[T]):
    name: str
    builder: T
    info: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Maps names (and aliases) to builders plus a little descriptive info."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self, name: str, *, aliases: tuple[str, ...] = (), **info: Any
    ) -> Callable[[T], T]:
        def decorator(builder: T) -> T:
            self.add(name, builder, aliases=aliases, **info)
            return builder

        return decorator

    def add(self, name: str, builder: T, *, aliases: tuple[str, ...] = (), **info: Any) -> None:
        key = canonical(name)
        if key in self._entries or key in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[key] = Entry(name, builder, dict(info))
        for alias in aliases:
            self._aliases[canonical(alias)] = key

    def resolve(self, name: str) -> str:
        """Return the registered name for ``name`` or raise a one-line error listing choices."""
        key = canonical(name)
        key = self._aliases.get(key, key)
        if key not in self._entries:
            choices = ", ".join(self.names())
            raise LandslideError(f"unknown {self.kind} {name!r}; choose one of: {choices}")
        return self._entries[key].name

    def entry(self, name: str) -> Entry[T]:
        return self._entries[canonical(self.resolve(name))]

    def get(self, name: str) -> T:
        return self.entry(name).builder

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return [e.name for e in self._entries.values()]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = canonical(name)
        return key in self._entries or key in self._aliases

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
