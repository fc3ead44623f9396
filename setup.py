"""Build steps pyproject.toml cannot say: install the checkout's packages under ``memlookup.``.

In a checkout the packages are the top-level folders ``common``, ``client``,
``server`` and ``bench`` (``python -m server``), and they import each other by
those names. Installed, those names would belong to everyone: a user's own
``client.py`` would shadow the library, or the library theirs. So
pyproject.toml maps each folder to ``memlookup.NAME`` (package-dir), and:

* ``pip install .`` (a wheel): :class:`BuildPy` rewrites every absolute import
  of the four names to ``memlookup.NAME`` as it copies the files, the way pip
  rewrites its vendored packages. The source stays as it is; the wheel has
  the one top-level name ``memlookup``. Of ``bench`` only the load generator
  (``memlookup-benchmark``) is installed; the other scripts there start
  servers from a checkout.
* ``pip install -e .`` (editable) cannot rewrite: the files run where they are.
  :class:`EditableWheel` installs the checkout itself: its four top-level
  names, and ``memlookup.NAME`` as the very same modules, so the programs
  (whose entry points name ``memlookup.*``) and code written against the
  installed names both work, and an edit shows without reinstalling.
  Extensions are built in place, next to their sources, as setuptools always
  does for editable installs.

The server's compiled loop, ``server/_cloop.pyx``, and its compact table,
``server/_cstore.pyx``, are built with Cython (a build requirement in
pyproject.toml) as optional extensions: where they cannot be compiled (no C
compiler), the install goes on without them and the server runs its
pure-Python core and table (server/core.py). It needs neither zmq.h
nor linking: it finds libzmq's functions in the library pyzmq loaded.
``python setup.py build_ext --inplace`` builds it in a checkout (.ci/run
does).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from pathlib import Path
from string import Template
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

NAMESPACE = "memlookup"
#: The modules of ``bench`` that ``memlookup-benchmark`` needs; the rest are checkout-only scripts.
INSTALLED_BENCH_MODULES = frozenset({"__init__", "__main__", "drivers"})


def rewrite_imports(source: str, names: frozenset[str], path: str = "<source>") -> str:
    """``from client.x import y`` -> ``from memlookup.client.x import y``, for each top-level name in ``names``.

    Whole lines that start (after indentation) with such an import are
    rewritten, in docstring examples too, so installed help shows the
    installed names. Only ``from NAME... import`` and ``import NAME[.x] as z``
    keep their meaning when rewritten; any other import of the names is refused,
    so the build fails instead of installing code that cannot import.
    """
    alternatives = "|".join(sorted(names))
    rewritten = re.sub(rf"^(\s*)from ({alternatives})([.\s])", rf"\1from {NAMESPACE}.\2\3", source, flags=re.M)
    rewritten = re.sub(rf"^(\s*)import ({alternatives})((?:\.\w+)*) as ", rf"\1import {NAMESPACE}.\2\3 as ",
                       rewritten, flags=re.M)
    for node in ast.walk(ast.parse(rewritten, path)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            left = [node.module]
        elif isinstance(node, ast.Import):
            left = [alias.name for alias in node.names]
        else:
            continue
        for module in left:
            if module.split(".")[0] in names:
                raise ValueError(f"{path}:{node.lineno}: cannot rewrite this import of {module!r} for the "
                                 f"installed {NAMESPACE}.{module}: write 'from {module} import ...' on a line of "
                                 "its own")
    return rewritten


def checkout_names(distribution: Any) -> frozenset[str]:
    """The checkout's folders that pyproject.toml maps to ``memlookup.NAME``: ``common``, ``client``..."""
    return frozenset(folder for package, folder in distribution.package_dir.items()
                     if package.startswith(NAMESPACE + "."))


class BuildPy(build_py):
    """Copies the packages into ``memlookup/`` with their imports rewritten (see the module docstring)."""

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules: list[tuple[str, str, str]] = super().find_package_modules(package, package_dir)
        if package == f"{NAMESPACE}.bench":
            modules = [entry for entry in modules if entry[1] in INSTALLED_BENCH_MODULES]
        return modules

    def build_module(self, module: str, module_file: str, package: str | list[str]) -> tuple[str, int]:
        outfile, copied = super().build_module(module, module_file, package)
        target = Path(outfile)
        text = rewrite_imports(target.read_text(encoding="utf-8"), checkout_names(self.distribution), module_file)
        target.unlink()  # a new file: never write through a link to the source
        target.write_text(text, encoding="utf-8")
        return outfile, copied


#: The module an editable install puts in site-packages, with a ``.pth`` file that calls its ``install()``.
_EDITABLE_FINDER = Template('''\
"""memlookup installed editable: the checkout at $checkout (written by its setup.py).

Its top-level packages import as in the checkout, and memlookup.NAME is the
same module object as NAME: never a second copy, so an error raised is the
error caught.
"""

import importlib
import importlib.util
import sys
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path

CHECKOUT = $checkout
NAMES = $names
NAMESPACE = $namespace


class CheckoutFinder:
    """The checkout's packages, after every other finder (as a checkout on sys.path would be)."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        return PathFinder.find_spec(fullname, [CHECKOUT]) if fullname in NAMES else None


class AliasFinder:
    """memlookup.NAME as NAME, before every other finder.

    First, so that the path finder never finds memlookup.client.cli in
    client's __path__ and loads it a second time.
    """

    _specs = {}

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname == NAMESPACE:
            spec = ModuleSpec(fullname, None, is_package=True)
            spec.submodule_search_locations = []
            return spec
        prefix, _, name = fullname.partition(".")
        if prefix != NAMESPACE or name.split(".")[0] not in NAMES:
            return None
        real = importlib.util.find_spec(name)
        if real is None:
            return None
        return ModuleSpec(fullname, cls, origin=real.origin, is_package=real.parent == name)

    @classmethod
    def create_module(cls, spec):
        name = spec.name.partition(".")[2]
        module = importlib.import_module(name)
        where = getattr(module, "__file__", None) or ""
        if not Path(where).resolve().is_relative_to(CHECKOUT):
            raise ImportError(f"{spec.name}: the name {name!r} is {where or module}, not the editable "
                              f"memlookup checkout {CHECKOUT}", name=spec.name)
        cls._specs[spec.name] = module.__spec__
        return module

    @classmethod
    def exec_module(cls, module):
        module.__spec__ = cls._specs.pop(module.__spec__.name)  # the import system set it to the alias's

    @classmethod
    def get_code(cls, fullname):
        """For python -m memlookup.NAME: runpy runs the checkout's code as __main__."""
        name = fullname.partition(".")[2]
        return importlib.util.find_spec(name).loader.get_code(name)


def install():
    if AliasFinder not in sys.meta_path:
        sys.meta_path.insert(0, AliasFinder)
    if CheckoutFinder not in sys.meta_path:
        sys.meta_path.append(CheckoutFinder)
''')


class _CheckoutStrategy:
    """setuptools' EditableStrategy: an editable wheel whose ``.pth`` installs :data:`_EDITABLE_FINDER`."""

    def __init__(self, name: str, checkout: Path, names: frozenset[str]) -> None:
        self.name, self.checkout, self.names = name, checkout, names

    def __call__(self, wheel: Any, files: list[str], mapping: Mapping[str, str]) -> None:
        finder = re.sub(r"\W", "_", f"__editable___{self.name}_finder")
        source = _EDITABLE_FINDER.substitute(checkout=repr(str(self.checkout)), names=repr(tuple(sorted(self.names))),
                                             namespace=repr(NAMESPACE))
        wheel.writestr(f"{finder}.py", source.encode())
        wheel.writestr(f"__editable__.{self.name}.pth", f"import {finder}; {finder}.install()\n".encode())

    def __enter__(self) -> _CheckoutStrategy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


class EditableWheel(editable_wheel):
    """``pip install -e .``: the checkout itself, its packages also as ``memlookup.*`` (see the module docstring)."""

    def run(self) -> None:
        if not callable(getattr(editable_wheel, "_select_strategy", None)):
            raise RuntimeError("this setuptools has no editable_wheel._select_strategy to replace; memlookup's "
                               "editable install replaces it (setuptools 64 to at least 84.2 have it)")
        super().run()

    def _select_strategy(self, name: str, tag: str, build_lib: str) -> _CheckoutStrategy:
        return _CheckoutStrategy(name, Path(self.project_dir).resolve(), checkout_names(self.distribution))


def compiled_extensions() -> list[Extension]:
    """The compiled core as an optional extension, or none where Cython is missing (the pure-Python core runs)."""
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    loop = Extension(f"{NAMESPACE}.server._cloop", ["server/_cloop.pyx"])
    table = Extension(f"{NAMESPACE}.server._cstore", ["server/_cstore.pyx"])
    extensions: list[Extension] = cythonize([loop, table], quiet=True)  # type: ignore[no-untyped-call]
    for extension in extensions:
        extension.optional = True  # set after cythonize, which makes new Extensions without it
    return extensions


if __name__ == "__main__":  # as setuptools runs it; tests import rewrite_imports
    setup(cmdclass={"build_py": BuildPy, "editable_wheel": EditableWheel}, ext_modules=compiled_extensions())
