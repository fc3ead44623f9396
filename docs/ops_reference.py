"""Write docs/PROTOCOL.md's operation tables from the table of operations (common/ops.py).

    python3 docs/ops_reference.py            # rewrite the generated parts
    python3 docs/ops_reference.py --check    # exit 1 if they are stale

Each generated part sits between ``<!-- ops:NAME -->`` and ``<!-- /ops:NAME -->``
(NAME: ``table``, section 4.2's table and arities; ``options``, section 4.3's
allowed option keys); the rest of the document is written by hand.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.ops import COMMON_OPTIONS, OPS_TABLE, REC_OPTION, Kind, Op, Param  # noqa: E402

PROTOCOL = ROOT / "docs" / "PROTOCOL.md"

#: How each kind of parameter reads in the Arguments column.
_ARGUMENT = {
    Kind.KEYS: "array of keys",
    Kind.PAIRS: "map key → value",
    Kind.REQUESTS: "array of requests",
    Kind.ENTRIES: "map name → member entry",
    Kind.RECORDS: "array of records",
}


def _argument(param: Param) -> str:
    if param.kind in _ARGUMENT:
        return _ARGUMENT[param.kind]
    if param.kind in (Kind.INT, Kind.CURSOR, Kind.COUNT):
        return f"{param.name} (int)"
    return param.name


def _writes(op: Op) -> str:
    if any(param.kind is Kind.REQUESTS for param in op.params):
        return "per element"
    return "yes" if op.writes else "no"


def _code(names: list[str]) -> str:
    return ", ".join(f"`{name}`" for name in names) or "—"


def _option_names(op: Op) -> list[str]:
    """The op's own options, then ``rec`` if it takes it."""
    return [o.name for o in op.options] + ([REC_OPTION] if op.rec else [])


def table() -> str:
    """Section 4.2: every op's arguments, options, payload, and whether it writes; then the arities."""
    rows = ["| op | Arguments (in order) | Options used | Success payload | Write |", "|---|---|---|---|---|"]
    for op in OPS_TABLE:
        arguments = ", ".join(_argument(param) for param in op.params) or "—"
        rows.append(f"| `{op.name}` | {arguments} | {_code(_option_names(op))} | {op.reply} "
                    f"| {_writes(op)} |")
    arities = ", ".join(f"`{op.name}` {op.arity}" for op in OPS_TABLE)
    return "\n".join(rows) + f"\n\nArities: {arities}."


def options() -> str:
    """Section 4.3: the option keys each op accepts (indented: it sits in a list item)."""
    common = sorted(COMMON_OPTIONS, reverse=True)  # v, rid: the order the text gives them
    groups: dict[tuple[str, ...], list[str]] = {}
    for op in OPS_TABLE:
        if op.options or op.rec:
            groups.setdefault(tuple(_option_names(op)), []).append(op.name)
    rows = ["| op | Allowed option keys |", "|---|---|"]
    for names, ops in groups.items():
        rows.append(f"| {_code(ops)} | {_code([*common, *names])} |")
    rows.append(f"| every other op | {_code(common)} |")
    return "\n".join("  " + row for row in rows)


PARTS = {"table": table, "options": options}


def render(text: str) -> str:
    """``text`` (PROTOCOL.md) with every generated part rewritten."""
    for name, make in PARTS.items():
        part = re.search(rf"(<!-- ops:{name} -->\n).*?(\n\s*<!-- /ops:{name} -->)", text, re.S)
        if part is None:
            raise ValueError(f"PROTOCOL.md has no <!-- ops:{name} --> ... <!-- /ops:{name} --> part")
        text = text[:part.end(1)] + make() + text[part.start(2):]
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the generated parts are stale")
    check = parser.parse_args().check
    text = PROTOCOL.read_text()
    current = render(text)
    if current == text:
        return 0
    if check:
        print("docs/PROTOCOL.md's operation tables are stale (run python3 docs/ops_reference.py)", file=sys.stderr)
        return 1
    PROTOCOL.write_text(current)
    return 0


if __name__ == "__main__":
    sys.exit(main())
