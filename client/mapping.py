"""``table[key]``, ``table[key] = value``, ``del table[key]``, ``key in table`` for the blocking clients."""

from __future__ import annotations

from client.commands import Commands


class MappingSugar(Commands):
    """Dict-style access on top of ``get``/``set``/``delete``/``exists``.

    A missing key raises ``KeyError`` where a dict would; every other error
    is the client's own. (The asyncio clients have none: ``table[key] = value``
    cannot be awaited.)
    """

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: str) -> None:
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.exists(key)
