"""`python -m sslpipe` is the `sslpipe` command."""

import sys

from sslpipe.cli import main

if __name__ == "__main__":
    sys.exit(main())
