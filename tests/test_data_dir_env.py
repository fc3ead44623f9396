"""``--data-dir`` from the environment: MEMLOOKUP_DATA_DIR, or the older SERVER_DATA_DIR."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from client import Client
from tests.servers import ServerProcess


def test_memlookup_data_dir_keeps_the_table_across_a_restart(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    env = {"MEMLOOKUP_DATA_DIR": str(tmp_path)}
    first = start_server(env=env)
    with Client(first.node, timeout_s=5) as table:
        assert table.set("norway", "oslo")
        assert table.stats()["persistence"]["enabled"] is True
    assert first.stop() == 0
    second = start_server(env=env)
    with Client(second.node, timeout_s=5) as table:
        assert table.get("norway") == "oslo"


def test_memlookup_data_dir_wins_over_server_data_dir_and_the_flag_over_both(
        start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    new, old, flag = (tmp_path / name for name in ("new", "old", "flag"))
    for directory in (new, old, flag):
        directory.mkdir()
    server = start_server(env={"MEMLOOKUP_DATA_DIR": str(new), "SERVER_DATA_DIR": str(old)})
    with Client(server.node, timeout_s=5) as table:
        table.set("k", "v")
    assert server.stop() == 0
    assert any(new.iterdir()) and not any(old.iterdir())
    old_only = start_server(env={"SERVER_DATA_DIR": str(old)})
    with Client(old_only.node, timeout_s=5) as table:
        table.set("k", "v")
    assert old_only.stop() == 0
    assert any(old.iterdir())
    flagged = start_server("--data-dir", str(flag), env={"MEMLOOKUP_DATA_DIR": str(new)})
    with Client(flagged.node, timeout_s=5) as table:
        assert table.get("k") is None
    assert flagged.stop() == 0 and any(flag.iterdir())
