"""Lookup by string name: one small registry class for models, variants, data sets, activations,
augmentations and loggers.

A registry maps each current name to its item, in registration order. A renamed item keeps
its old name as a deprecation alias (`register(name, aliases=(...))` or `alias(old, new,
since=...)`): looking the old name up returns the item and says once, in one warning line on
stderr, what the name is now. Only current names are listed (`names()`, iteration, `in`), so
`list`, suggestions and error messages teach the new names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from biasbench.errors import UserError, did_you_mean, warn

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, tuple[str, str | None]] = {}  # old name -> (current name, since)
        self._warned: set[str] = set()

    def register(self, name: str, aliases: Iterable[str] = ()) -> Callable[[T], T]:
        """A decorator that registers its argument under `name` (and `aliases`, old names)."""
        def add(item: T) -> T:
            if name in self._items or name in self._aliases:
                raise ValueError(f"{self.kind} `{name}` is registered twice")
            self._items[name] = item
            for old in aliases:
                self.alias(old, name)
            return item

        return add

    def alias(self, old: str, new: str, since: str | None = None) -> None:
        """Let the old name `old` find the item now called `new` (renamed in version `since`)."""
        if new not in self._items:
            raise ValueError(f"alias `{old}` of {self.kind} `{new}`: no {self.kind} `{new}` is registered")
        if old in self._items or old in self._aliases:
            raise ValueError(f"{self.kind} `{old}` is registered twice")
        self._aliases[old] = (new, since)

    def current(self, name: str) -> str:
        """The current name for `name` (itself unless it is an old one, which is warned about once)."""
        if name in self._aliases:
            new, since = self._aliases[name]
            if name not in self._warned:
                self._warned.add(name)
                when = f" in biasbench {since}" if since else ""
                warn(f"{self.kind} `{name}` was renamed `{new}`{when}; write `{new}` (the old name will go)")
            return new
        if name not in self._items:
            raise UserError(
                f"unknown {self.kind} `{name}`{did_you_mean(name, self._items)}; "
                f"known: {', '.join(sorted(self._items))}"
            )
        return name

    def get(self, name: str) -> T:
        return self._items[self.current(name)]

    __getitem__ = get

    def names(self) -> list[str]:
        """The current names, sorted (old names are not listed)."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        """(current name, item) in registration order."""
        return list(self._items.items())

    def values(self) -> list[T]:
        return list(self._items.values())
