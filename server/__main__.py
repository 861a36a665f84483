"""`python -m seedstream.server [options]` is `seedstream serve [options]`."""

import sys

from seedstream.server.cli import main

if __name__ == "__main__":
    sys.exit(main())
