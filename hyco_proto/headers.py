"""HTTP header maps whose names compare case-insensitively (RFC 9110 §5.1)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

__all__ = ["Headers"]


class Headers(Mapping[str, str]):
    """Read-only HTTP headers: names compare case-insensitively, original spelling is kept.

    A name given more than once (two ``Set-Cookie`` lines) maps to its last value; every value
    is kept, in order, for :meth:`get_all` and :meth:`raw_items`.
    """

    __slots__ = ("_items", "_raw")

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] | None = None
                 ) -> None:
        # A dict first: isinstance against the Mapping ABC costs more than the rest (the relay
        # builds one per sender).
        pairs = (items.items() if type(items) is dict or isinstance(items, Mapping)
                 else (items or ()))
        self._raw: tuple[tuple[str, str], ...] = tuple(pairs)
        self._items: dict[str, tuple[str, str]] = {k.lower(): (k, v) for k, v in self._raw}

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` (any case), in the order received; ``[]`` when absent."""
        lower = name.lower()
        return [v for k, v in self._raw if k.lower() == lower]

    def last_items(self) -> list[tuple[str, str]]:
        """One (name, value) pair per name, the last given of each: ``dict(headers)``'s items,
        without a lookup per name."""
        return list(self._items.values())

    def raw_items(self) -> tuple[tuple[str, str], ...]:
        """Every (name, value) pair as given, repeated names included, in order."""
        return self._raw

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"
