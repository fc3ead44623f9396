"""What a user gets from ``pip install``: the programs, their man pages, and the library as ``memlookup.*``.

Every install goes into a new virtual environment that sees nothing of the
Python running the tests (no system site packages), with the dependencies
from the package index at requirements.txt's pins, as a user gets them; and
every program runs without PYTHONPATH, from a directory outside the checkout.
Installed, the checkout's packages are ``memlookup.client`` etc. and
``memlookup`` is the one top-level name; ``pip install -e .`` is the checkout
itself (setup.py says how and why).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ROOT, ServerProcess

#: An install compiles the server's core (server/_cloop.pyx): half a minute or more on a loaded machine.
pytestmark = pytest.mark.timeout(300)

PROGRAMS = ("memlookup", "memlookup-server", "memlookup-keygen", "memlookup-benchmark")
#: The checkout's top-level packages: names an installed copy must leave to the user.
CHECKOUT_NAMES = ("bench", "client", "common", "server")
NO_PYTHONPATH = {"PYTHONPATH": ""}  # empty: Python ignores it


def copy_of_the_tree(to: Path) -> Path:
    # As a fresh clone: without the compiled core a checkout's build_ext --inplace made.
    shutil.copytree(ROOT, to, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                                            ".pytest_cache", ".hypothesis", ".venv", ".mypy_cache",
                                                            ".ruff_cache", "*.so", "_cloop.c"))
    return to


def run(command: list[str | Path], cwd: Path, timeout_s: float = 60,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                          stdin=subprocess.DEVNULL, env={**os.environ, **NO_PYTHONPATH, **(env or {})})


def new_venv(where: Path, *install: str, env: dict[str, str] | None = None) -> Path:
    """A virtual environment of its own with ``pip install INSTALL...`` done in it (``env`` added to pip's)."""
    venv.create(where, with_pip=True)
    pip = run([where / "bin" / "python", "-m", "pip", "install", "-q", "-c", ROOT / "requirements.txt", *install],
              cwd=where, timeout_s=300, env=env)
    assert pip.returncode == 0, pip.stderr
    return where


def start_server(env_dir: Path) -> ServerProcess:
    return ServerProcess(program=[str(env_dir / "bin" / "memlookup-server")], env=NO_PYTHONPATH)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with ``pip install SOURCE`` done, SOURCE a copy of the tree."""
    top = tmp_path_factory.mktemp("install")
    return new_venv(top / "venv", str(copy_of_the_tree(top / "src")))


@pytest.fixture(scope="module")
def installed_server(installed: Path) -> Iterator[ServerProcess]:
    server = start_server(installed)
    yield server
    server.stop()


def test_the_programs_run_and_have_man_pages(installed: Path, installed_server: ServerProcess,
                                             tmp_path: Path) -> None:
    bin_dir, node = installed / "bin", installed_server.node
    for program in PROGRAMS:
        assert (bin_dir / program).exists(), program
        assert (installed / "share" / "man" / "man1" / f"{program}.1").exists(), program

    set_ = run([bin_dir / "memlookup", node, "set", "norway", "oslo"], cwd=tmp_path)
    get = run([bin_dir / "memlookup", node, "get", "norway"], cwd=tmp_path)
    assert (set_.returncode, get.returncode, get.stdout) == (0, 0, "oslo\n"), set_.stderr + get.stderr

    load = run([bin_dir / "memlookup-benchmark", node, "-c", "1", "-n", "200", "-q", "--json"], cwd=tmp_path)
    assert load.returncode == 0, load.stderr
    assert (json.loads(load.stdout)["requests"], json.loads(load.stdout)["errors"]) == (200, 0)

    keygen = run([bin_dir / "memlookup-keygen", tmp_path / "keys", "web1"], cwd=tmp_path)
    assert keygen.returncode == 0, keygen.stderr
    assert sorted(path.name for path in (tmp_path / "keys").iterdir()) == ["web1.key", "web1.key_secret"]


def test_pip_install_compiles_the_core(installed: Path, installed_server: ServerProcess) -> None:
    assert "compiled core" in installed_server.log, installed_server.log
    assert list(installed.glob("lib/python3*/site-packages/memlookup/server/_cloop.*.so"))


def test_without_a_c_compiler_the_install_runs_the_pure_python_core(tmp_path: Path) -> None:
    env_dir = new_venv(tmp_path / "venv", str(copy_of_the_tree(tmp_path / "src")), env={"CC": "false"})
    assert not list(env_dir.glob("lib/python3*/site-packages/memlookup/server/_cloop.*.so"))
    server = start_server(env_dir)
    try:
        assert "pure-Python core (no compiled core:" in server.log, server.log
        bin_dir = env_dir / "bin"
        set_ = run([bin_dir / "memlookup", server.node, "set", "norway", "oslo"], cwd=tmp_path)
        get = run([bin_dir / "memlookup", server.node, "get", "norway"], cwd=tmp_path)
        assert (set_.returncode, get.returncode, get.stdout) == (0, 0, "oslo\n"), set_.stderr + get.stderr
    finally:
        server.stop()


def test_memlookup_is_the_only_top_level_name_installed(installed: Path) -> None:
    (record,) = installed.glob("lib/python3*/site-packages/memlookup-*.dist-info/RECORD")
    paths = [line.split(",")[0] for line in record.read_text().splitlines()]
    in_site_packages = {path.split("/")[0] for path in paths if not path.startswith("../")}
    assert in_site_packages == {"memlookup", record.parent.name}
    # The typed packages say so (PEP 561).
    for package in ("client", "common", "server"):
        assert f"memlookup/{package}/py.typed" in paths


def test_a_users_own_modules_and_the_library_leave_each_other_alone(
        installed: Path, installed_server: ServerProcess, tmp_path: Path) -> None:
    for name in CHECKOUT_NAMES:
        (tmp_path / f"{name}.py").write_text("OWNER = 'the user'\n")
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent("""\
        import sys

        import bench, client, common, server
        from memlookup.client import Client, NodeUnavailableError
        from memlookup.common.errors import NodeUnavailableError as FromCommon

        print(client.OWNER, common.OWNER, server.OWNER, bench.OWNER)
        print(NodeUnavailableError is FromCommon)
        with Client(sys.argv[1]) as table:
            table.set("norway", "oslo")
            print(table.get("norway"))
        """))
    done = run([installed / "bin" / "python", script, installed_server.node], cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "the user the user the user the user\nTrue\noslo\n"), done.stderr


def test_type_checkers_see_the_installed_types(installed: Path, tmp_path: Path) -> None:
    script = tmp_path / "typed.py"
    script.write_text(textwrap.dedent("""\
        from memlookup.client import AsyncClient, AsyncClusterClient, Client, ClusterClient, Pipeline


        def capital(table: Client | ClusterClient) -> str | None:
            return table.get("norway")


        def count(table: Client) -> int:
            return table.get("norway")


        def count_in_cluster(table: ClusterClient) -> int:
            return table.get("norway")


        async def capital_async(table: AsyncClient | AsyncClusterClient) -> str | None:
            return await table.get("norway")


        async def count_async(table: AsyncClient) -> int:
            return await table.get("norway")


        def queued(table: Client) -> Pipeline:
            return table.pipeline().set("a", "1").get("a")


        def not_a_number(table: Client) -> int:
            return table.pipeline().get("a")
        """))
    (tmp_path / "mypy.ini").write_text("[mypy]\n")
    checked = run([sys.executable, "-m", "mypy", "--strict", "--config-file", "mypy.ini", "--python-executable",
                   installed / "bin" / "python", "--cache-dir", tmp_path / "cache", script.name], cwd=tmp_path,
                  timeout_s=180)
    errors = [line for line in checked.stdout.splitlines() if ": error:" in line]
    wrong = 'error: Incompatible return value type (got "str | None", expected "int")  [return-value]'
    not_pipeline = 'error: Incompatible return value type (got "Pipeline", expected "int")  [return-value]'
    assert errors == [f"typed.py:9: {wrong}", f"typed.py:13: {wrong}", f"typed.py:21: {wrong}",
                      f"typed.py:29: {not_pipeline}"], checked.stdout + checked.stderr


def test_an_editable_install_is_the_checkout_itself(tmp_path: Path) -> None:
    source = copy_of_the_tree(tmp_path / "src")
    env_dir = new_venv(tmp_path / "venv", "-e", str(source))
    python, bin_dir = env_dir / "bin" / "python", env_dir / "bin"

    server = start_server(env_dir)
    try:
        assert "compiled core" in server.log, server.log  # built next to its source
        set_ = run([bin_dir / "memlookup", server.node, "set", "norway", "oslo"], cwd=tmp_path)
        get = run([python, "-m", "memlookup.client", server.node, "get", "norway"], cwd=tmp_path)
        assert (set_.returncode, get.returncode, get.stdout) == (0, 0, "oslo\n"), set_.stderr + get.stderr
    finally:
        server.stop()

    # Under both names one module, not two copies: an error raised is the error caught.
    same = run([python, "-c", "import client.cli, common.errors, memlookup.client.cli, memlookup.common.errors; "
                "print(memlookup.client.cli is client.cli, memlookup.common.errors is common.errors, "
                "client.cli.__file__)"], cwd=tmp_path)
    assert same.stdout == f"True True {source / 'client' / 'cli.py'}\n", same.stderr

    # An edit in the checkout shows without installing again.
    with (source / "common" / "__init__.py").open("a") as init:
        init.write("EDITED = 'yes'\n")
    edited = run([python, "-c", "import memlookup.common; print(memlookup.common.EDITED)"], cwd=tmp_path)
    assert edited.stdout == "yes\n", edited.stderr

    # It takes the checkout's names: a client.py of the user's in the way is an error that says so.
    user = tmp_path / "user"
    user.mkdir()
    (user / "client.py").write_text("OWNER = 'the user'\n")
    clash = run([python, "-c", "import memlookup.client"], cwd=user)
    assert clash.returncode == 1
    assert clash.stderr.splitlines()[-1] == (f"ImportError: memlookup.client: the name 'client' is "
                                             f"{user / 'client.py'}, not the editable memlookup checkout {source}")


def test_the_build_rewrites_each_import_of_the_checkout_names_or_refuses() -> None:
    from setup import rewrite_imports

    names = frozenset(CHECKOUT_NAMES)
    source = textwrap.dedent('''\
        """Use it like this:

            from client import Client
        """
        import clientele
        from common.errors import (
            MemlookupError,
        )
        from commonplace import x


        def f():
            from client import bulk
            import server.store as store
        ''')
    assert rewrite_imports(source, names) == textwrap.dedent('''\
        """Use it like this:

            from memlookup.client import Client
        """
        import clientele
        from memlookup.common.errors import (
            MemlookupError,
        )
        from commonplace import x


        def f():
            from memlookup.client import bulk
            import memlookup.server.store as store
        ''')
    # `import client.cli` binds the name `client`, which the installed copy does not have.
    for cannot in ("import client.cli\n", "import os, common\n", "if True: from server import loop\n"):
        with pytest.raises(ValueError, match="cannot rewrite this import"):
            rewrite_imports(cannot, names)
