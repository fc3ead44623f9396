"""Write the man pages from the real argparse parsers.

    python man/generate.py            # rewrite man/*.1
    python man/generate.py --check    # exit 1 if a page is stale

The date in the footer is fixed (SOURCE_DATE_EPOCH, default: the release
date below) so that the same parsers always give the same bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RELEASE_EPOCH = "1795564800"  # 2026-11-25


def pages() -> dict[str, str]:
    """Map of file name to man page text, built from the live parsers."""
    os.environ.setdefault("SOURCE_DATE_EPOCH", RELEASE_EPOCH)
    from argparse_manpage.manpage import Manpage

    from bench.__main__ import build_parser as bench_parser
    from client.cli import build_parser as client_parser
    from client.keygen import build_parser as keygen_parser
    from common import __version__
    from server.config import build_parser as server_parser

    out = {}
    programs = (
        ("memlookup.1", client_parser(), "store and fetch strings in a memlookup server"),
        ("memlookup-server.1", server_parser(), "serve an in-memory key-value lookup table"),
        ("memlookup-keygen.1", keygen_parser(), "create a CurveZMQ key pair for memlookup"),
        ("memlookup-benchmark.1", bench_parser(), "load a memlookup server and report its speed"),
    )
    for name, parser, summary in programs:
        data = {"project_name": "memlookup", "version": __version__, "manual_title": "memlookup manual",
                "description": summary}
        out[name] = str(Manpage(parser, _data=data))
    return out


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
