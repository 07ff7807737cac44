"""`python -m machine [QEMU-style options]`: see machine/cli.py."""

import sys

from machine.cli import main

if __name__ == "__main__":
    sys.exit(main())
