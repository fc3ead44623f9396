"""``memlookup-keygen`` / ``python -m client.keygen``: create a CurveZMQ key pair.

A program of its own rather than a ``memlookup`` command, because the
client's grammar is ``memlookup [options] NODE COMMAND``: a key is made before
there is any node to talk to.

    memlookup-keygen /etc/memlookup server      # server.key, server.key_secret
    memlookup-keygen ~/.memlookup alice         # alice.key, alice.key_secret

Copy the server's ``server.key`` to its clients (``--server-key``) and each
client's ``NAME.key`` into the server's ``--authorized-keys`` directory.
"""

from __future__ import annotations

import argparse
import sys

from common import __version__
from common.keys import create_key_pair

#: (status, meaning), for the man page.
EXIT_STATUS: tuple[tuple[int, str], ...] = (
    (0, "the key pair was written"),
    (1, "it was not: the files exist (without --force), a file is a symbolic link, or the directory "
        "cannot be written"),
    (2, "bad usage"),
)

#: (command line, what it does), for the man page.
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("memlookup-keygen /etc/memlookup server", "server.key and server.key_secret, for the server"),
    ("memlookup-keygen ~/.memlookup alice", "alice.key (copy it into the server's --authorized-keys) and "
                                            "alice.key_secret (--client-key)"),
)


def build_parser() -> argparse.ArgumentParser:
    """The ``memlookup-keygen`` argument parser (also the source of its man page)."""
    parser = argparse.ArgumentParser(
        prog="memlookup-keygen",
        description="Create a CurveZMQ key pair for a memlookup server or client.",
        epilog=(
            "Writes DIR/NAME.key (public: give it to the other side) and DIR/NAME.key_secret "
            "(secret, mode 0600: keep it). A server uses its pair with --curve-secret-key and "
            "accepts the clients whose NAME.key files are in its --authorized-keys directory; "
            "a client uses --client-key NAME.key_secret and --server-key server.key."
        ),
    )
    parser.add_argument("directory", metavar="DIR", help="where to write the files (created if missing)")
    parser.add_argument("name", metavar="NAME", nargs="?", default="memlookup",
                        help="base name of the files (default: memlookup)")
    parser.add_argument("--force", action="store_true", help="replace existing files of that name")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        public_path, secret_path = create_key_pair(args.directory, args.name, overwrite=args.force)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"public key: {public_path}")
    print(f"secret key: {secret_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
