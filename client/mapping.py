"""``table[key]``, ``table[key] = value``, ``del table[key]``, ``key in table`` for any client."""

from __future__ import annotations


class MappingSugar:
    """Dict-style access on top of ``get``/``set``/``delete``/``exists``.

    A missing key raises ``KeyError`` where a dict would; every other error
    is the client's own.
    """

    def __getitem__(self, key: str) -> str:
        value = self.get(key)  # type: ignore[attr-defined]
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: str) -> None:
        self.set(key, value)  # type: ignore[attr-defined]

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):  # type: ignore[attr-defined]
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.exists(key)  # type: ignore[attr-defined]
