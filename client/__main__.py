"""``python -m client`` runs the command-line client."""

import sys

from client.cli import main

if __name__ == "__main__":
    sys.exit(main())
