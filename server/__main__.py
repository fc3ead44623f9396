"""``python -m server`` / ``memlookup-server``: run one memlookup node (assembled by server/app.py)."""

from __future__ import annotations

import logging
import sys

from server.app import StartupError, build_server
from server.config import parse_config

log = logging.getLogger("server")


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        app = build_server(config)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    with app:
        app.serve_forever()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
