"""Entry point of the frozen bundle: the same ``circuitdesk`` command as the installed one."""

import sys

from desktop.cli import main

if __name__ == "__main__":
    sys.exit(main())
