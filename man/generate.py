"""Write the man pages from the real argparse parsers.

    python man/generate.py            # rewrite man/*.1
    python man/generate.py --check    # exit 1 if a page is stale

Besides what argparse knows, each page gets an EXIT STATUS and an EXAMPLES
section from its program's module (``EXIT_STATUS`` and ``EXAMPLES``), and an
ENVIRONMENT section from the ``(env NAME ...)`` notes of its options' help.
The date in the footer is fixed (SOURCE_DATE_EPOCH, default: the release
date below) so that the same parsers always give the same bytes.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RELEASE_EPOCH = "1795564800"  # 2026-11-25

#: An option's environment variables, in its help: ``(env NAME, default: ...)``.
_ENV_NOTE = re.compile(r"\(env ([^)]*)\)")
_ENV_NAME = re.compile(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b")


def _roff(text: str) -> str:
    """``text`` as one line of roff (argparse-manpage's escaping, and no line that starts a request)."""
    escaped = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\\&" + escaped if escaped[:1] in (".", "'") else escaped


def _items(pairs: tuple[tuple[object, str], ...]) -> str:
    return "\n".join(f".TP\n.B {_roff(str(term))}\n{_roff(text)}" for term, text in pairs)


def _environment(parser: argparse.ArgumentParser) -> tuple[tuple[str, str], ...]:
    """Each environment variable named in an option's help, with the option it sets."""
    entries = []
    for action in parser._actions:
        note = _ENV_NOTE.search(action.help or "")
        if note is None or not action.option_strings:
            continue
        what = (action.help or "")[:note.start()].strip()
        names = _ENV_NAME.findall(note.group(1))
        for index, name in enumerate(names):
            after = f" when {names[0]} is not set" if index else ""
            entries.append((name, f"sets {action.option_strings[-1]}{after}: {what}"))
    return tuple(entries)


def _page(parser: argparse.ArgumentParser, summary: str, module: ModuleType, comments: str | None = None,
          page_format: str = "pretty") -> str:
    from argparse_manpage.manpage import Manpage

    from common import __version__

    data = {"project_name": "memlookup", "version": __version__, "manual_title": "memlookup manual",
            "description": summary}
    page = Manpage(parser, _data=data, format=page_format)
    if comments is not None:
        page.add_section("comments", "=", "\n".join(_roff(line) for line in comments.splitlines()))
    page.add_section("exit status", ">", _items(module.EXIT_STATUS))
    environment = _environment(parser)
    if environment:
        page.add_section("environment", ">", _items(environment))
    page.add_section("examples", ">", _items(module.EXAMPLES))
    return str(page)


def pages() -> dict[str, str]:
    """Map of file name to man page text, built from the live parsers."""
    os.environ.setdefault("SOURCE_DATE_EPOCH", RELEASE_EPOCH)
    import bench.__main__ as bench
    import client.cli_parser as cli
    import client.keygen as keygen
    import server.config as server

    return {
        # One COMMANDS section for the commands (not a section each), and the
        # NODE notes without the examples and statuses the epilog also holds.
        "memlookup.1": _page(cli.build_parser(), "store and fetch strings in a memlookup server", cli,
                             comments=cli.NODE_NOTES, page_format="single-commands-section"),
        "memlookup-server.1": _page(server.build_parser(), "serve an in-memory key-value lookup table", server),
        "memlookup-keygen.1": _page(keygen.build_parser(), "create a CurveZMQ key pair for memlookup", keygen),
        "memlookup-benchmark.1": _page(bench.build_parser(), "load a memlookup server and report its speed", bench),
    }


def main() -> int:
    options = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    options.add_argument("--check", action="store_true", help="only report stale pages")
    check = options.parse_args().check
    stale = []
    for name, text in pages().items():
        path = ROOT / "man" / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not check:
            path.write_text(text)
    if check and stale:
        print("stale man pages: " + ", ".join(stale) + " (run python man/generate.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
